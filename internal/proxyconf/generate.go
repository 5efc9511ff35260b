package proxyconf

// The nginx.conf files of the Kubernetes manifests, generated from the rules files beside
// them. TestK8sConfigMatchesRules fails while they differ.
//go:generate go run ../.. proxy nginx --rules ../../k8s/base/rules.yaml -o ../../k8s/base/nginx.conf
//go:generate go run ../.. proxy nginx --rules ../../k8s/overlays/staging/rules.yaml -o ../../k8s/overlays/staging/nginx.conf
