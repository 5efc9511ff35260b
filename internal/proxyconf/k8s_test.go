package proxyconf_test

import (
	"net/netip"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/goccy/go-yaml"
	"k8s.io/kube-openapi/pkg/validation/spec"
	"k8s.io/kube-openapi/pkg/validation/strfmt"
	"k8s.io/kube-openapi/pkg/validation/validate"
	"sigs.k8s.io/kustomize/api/krusty"
	"sigs.k8s.io/kustomize/api/resmap"
	"sigs.k8s.io/kustomize/kyaml/filesys"
	"sigs.k8s.io/kustomize/kyaml/openapi"
	kyaml "sigs.k8s.io/kustomize/kyaml/yaml"

	"github.com/imgxfer/imgxfer/internal/proxyconf"
	"github.com/imgxfer/imgxfer/routing"
)

// k8sDir contains the kustomize base, its staging overlay and the sync example.
var k8sDir = filepath.Join(repoRoot, "k8s")

// kustomizations are every kustomization in k8s/, relative to k8sDir.
var kustomizations = []string{".", "base", "overlays/staging", "sync"}

// buildKustomization runs `kustomize build` on a directory of k8s/, offline.
func buildKustomization(t *testing.T, dir string) resmap.ResMap {
	t.Helper()
	kustomizer := krusty.MakeKustomizer(krusty.MakeDefaultOptions())
	resources, err := kustomizer.Run(filesys.MakeFsOnDisk(), filepath.Join(k8sDir, dir))
	if err != nil {
		t.Fatalf("kustomize build k8s/%s: %v", dir, err)
	}
	return resources
}

// findResource decodes the one resource of a kind into target and returns its name.
func findResource(t *testing.T, resources resmap.ResMap, kind string, target any) string {
	t.Helper()
	var found []string
	for _, resource := range resources.Resources() {
		if resource.GetKind() != kind {
			continue
		}
		found = append(found, resource.GetName())
		data, err := resource.AsYAML()
		if err != nil {
			t.Fatal(err)
		}
		if err := yaml.Unmarshal(data, target); err != nil {
			t.Fatalf("decode %s %s: %v", kind, resource.GetName(), err)
		}
	}
	if len(found) != 1 {
		t.Fatalf("build has %d resources of kind %s (%v), expected 1", len(found), kind, found)
	}
	return found[0]
}

type k8sMetadata struct {
	Name      string            `yaml:"name"`
	Namespace string            `yaml:"namespace"`
	Labels    map[string]string `yaml:"labels"`
}

type k8sProbe struct {
	HTTPGet struct {
		Path string `yaml:"path"`
		Port string `yaml:"port"`
	} `yaml:"httpGet"`
}

type k8sDeployment struct {
	Metadata k8sMetadata `yaml:"metadata"`
	Spec     struct {
		Replicas int `yaml:"replicas"`
		Selector struct {
			MatchLabels map[string]string `yaml:"matchLabels"`
		} `yaml:"selector"`
		Template struct {
			Metadata k8sMetadata `yaml:"metadata"`
			Spec     struct {
				SecurityContext struct {
					RunAsNonRoot bool `yaml:"runAsNonRoot"`
					RunAsUser    int  `yaml:"runAsUser"`
				} `yaml:"securityContext"`
				Containers []struct {
					Name           string    `yaml:"name"`
					Image          string    `yaml:"image"`
					Command        []string  `yaml:"command"`
					Args           []string  `yaml:"args"`
					ReadinessProbe *k8sProbe `yaml:"readinessProbe"`
					LivenessProbe  *k8sProbe `yaml:"livenessProbe"`
					Ports          []struct {
						Name          string `yaml:"name"`
						ContainerPort int    `yaml:"containerPort"`
					} `yaml:"ports"`
					Resources struct {
						Requests map[string]string `yaml:"requests"`
						Limits   map[string]string `yaml:"limits"`
					} `yaml:"resources"`
					SecurityContext struct {
						AllowPrivilegeEscalation *bool `yaml:"allowPrivilegeEscalation"`
						ReadOnlyRootFilesystem   bool  `yaml:"readOnlyRootFilesystem"`
						Capabilities             struct {
							Drop []string `yaml:"drop"`
						} `yaml:"capabilities"`
					} `yaml:"securityContext"`
					VolumeMounts []struct {
						Name      string `yaml:"name"`
						MountPath string `yaml:"mountPath"`
					} `yaml:"volumeMounts"`
				} `yaml:"containers"`
				Volumes []struct {
					Name      string `yaml:"name"`
					ConfigMap *struct {
						Name string `yaml:"name"`
					} `yaml:"configMap"`
					Secret *struct {
						SecretName string `yaml:"secretName"`
					} `yaml:"secret"`
					EmptyDir any `yaml:"emptyDir"`
				} `yaml:"volumes"`
			} `yaml:"spec"`
		} `yaml:"template"`
	} `yaml:"spec"`
}

type k8sService struct {
	Spec struct {
		Type     string            `yaml:"type"`
		Selector map[string]string `yaml:"selector"`
		Ports    []struct {
			Name       string `yaml:"name"`
			TargetPort string `yaml:"targetPort"`
			NodePort   int    `yaml:"nodePort"`
		} `yaml:"ports"`
	} `yaml:"spec"`
}

type k8sConfigMap struct {
	Metadata k8sMetadata       `yaml:"metadata"`
	Data     map[string]string `yaml:"data"`
}

func TestK8sConfigMatchesRules(t *testing.T) {
	for _, dir := range []string{filepath.Join(k8sDir, "base"), filepath.Join(k8sDir, "overlays", "staging")} {
		t.Run(dir, func(t *testing.T) {
			config, err := proxyconf.Generate(loadRules(t, filepath.Join(dir, "rules.yaml")), proxyconf.Options{})
			if err != nil {
				t.Fatal(err)
			}
			checkGolden(t, filepath.Join(dir, "nginx.conf"), config)
		})
	}
}

// checkProxyBuild checks what the base and the staging overlay share: the Deployment,
// the Service's NodePorts, the PodDisruptionBudget, and a ConfigMap with the
// configuration generated from rulesFile that the Deployment mounts.
func checkProxyBuild(t *testing.T, resources resmap.ResMap, rulesFile string, nodePorts map[string]int) {
	t.Helper()
	var deployment k8sDeployment
	findResource(t, resources, "Deployment", &deployment)
	var configMap k8sConfigMap
	configMapName := findResource(t, resources, "ConfigMap", &configMap)
	var service k8sService
	findResource(t, resources, "Service", &service)
	var budget struct {
		Spec struct {
			MinAvailable int `yaml:"minAvailable"`
			Selector     struct {
				MatchLabels map[string]string `yaml:"matchLabels"`
			} `yaml:"selector"`
		} `yaml:"spec"`
	}
	findResource(t, resources, "PodDisruptionBudget", &budget)

	config, err := proxyconf.Generate(loadRules(t, rulesFile), proxyconf.Options{})
	if err != nil {
		t.Fatal(err)
	}
	if configMap.Data[proxyconf.ConfigMapKey] != string(config) {
		t.Errorf("ConfigMap %s differs from the configuration generated from %s", configMapName, rulesFile)
	}
	if !strings.HasPrefix(configMapName, proxyconf.DefaultConfigMapName+"-") {
		t.Errorf("ConfigMap name %q lacks the content hash that rolls the Deployment", configMapName)
	}

	spec := deployment.Spec.Template.Spec
	if deployment.Spec.Replicas != 2 {
		t.Errorf("replicas = %d, expected 2", deployment.Spec.Replicas)
	}
	for key, value := range deployment.Spec.Selector.MatchLabels {
		if deployment.Spec.Template.Metadata.Labels[key] != value {
			t.Errorf("pod template lacks the selector label %s=%s", key, value)
		}
		if service.Spec.Selector[key] != value || budget.Spec.Selector.MatchLabels[key] != value {
			t.Errorf("Service or PodDisruptionBudget selector lacks %s=%s", key, value)
		}
	}
	if budget.Spec.MinAvailable != 1 {
		t.Errorf("PodDisruptionBudget minAvailable = %d, expected 1", budget.Spec.MinAvailable)
	}
	if !spec.SecurityContext.RunAsNonRoot || spec.SecurityContext.RunAsUser == 0 {
		t.Errorf("pod security context %+v, expected a non-root user", spec.SecurityContext)
	}

	if len(spec.Containers) != 1 {
		t.Fatalf("%d containers, expected 1", len(spec.Containers))
	}
	container := spec.Containers[0]
	if got := strings.Join(append(container.Command, container.Args...), " "); got != "nginx -e stderr -c /etc/nginx/mesh/"+proxyconf.ConfigMapKey {
		t.Errorf("container runs %q, expected nginx with the mounted configuration", got)
	}
	for name, probe := range map[string]*k8sProbe{"readiness": container.ReadinessProbe, "liveness": container.LivenessProbe} {
		if probe == nil || probe.HTTPGet.Path != "/healthz" || probe.HTTPGet.Port != "http" {
			t.Errorf("%s probe = %+v, expected GET /healthz on port http", name, probe)
		}
	}
	for _, resource := range []string{"cpu", "memory"} {
		if container.Resources.Requests[resource] == "" || container.Resources.Limits[resource] == "" {
			t.Errorf("container lacks a %s request or limit", resource)
		}
	}
	security := container.SecurityContext
	if !security.ReadOnlyRootFilesystem || security.AllowPrivilegeEscalation == nil || *security.AllowPrivilegeEscalation {
		t.Errorf("container security context %+v, expected a read-only root filesystem and no privilege escalation", security)
	}
	if len(security.Capabilities.Drop) != 1 || security.Capabilities.Drop[0] != "ALL" {
		t.Errorf("capabilities drop %v, expected ALL", security.Capabilities.Drop)
	}

	// Every path the configuration names must be on a volume: the configuration on the
	// ConfigMap, the TLS files on the secret, the pid file and temp paths on an emptyDir.
	rules := loadRules(t, rulesFile)
	volumeOf := func(path string) string {
		best := ""
		for _, mount := range container.VolumeMounts {
			if strings.HasPrefix(path, mount.MountPath+"/") && len(mount.MountPath) > len(best) {
				best = mount.MountPath
			}
		}
		for _, mount := range container.VolumeMounts {
			if mount.MountPath == best {
				for _, volume := range spec.Volumes {
					if volume.Name == mount.Name {
						switch {
						case volume.ConfigMap != nil:
							return "configMap " + volume.ConfigMap.Name
						case volume.Secret != nil:
							return "secret " + volume.Secret.SecretName
						case volume.EmptyDir != nil:
							return "emptyDir"
						}
					}
				}
			}
		}
		return ""
	}
	expectedVolumes := map[string]string{
		"/etc/nginx/mesh/" + proxyconf.ConfigMapKey:    "configMap " + configMapName,
		rules.Proxy.TLS.Cert:                           "secret mesh-proxy-tls",
		rules.Proxy.TLS.Key:                            "secret mesh-proxy-tls",
		proxyconf.DefaultPIDFile:                       "emptyDir",
		proxyconf.DefaultTempDir + "/client_body_temp": "emptyDir",
	}
	for path, want := range expectedVolumes {
		if got := volumeOf(path); got != want {
			t.Errorf("%s is on %q, expected %q", path, got, want)
		}
	}

	containerPorts := map[string]int{}
	for _, port := range container.Ports {
		containerPorts[port.Name] = port.ContainerPort
	}
	listens := map[string]string{"http": rules.Proxy.Listen.HTTP, "https": rules.Proxy.Listen.HTTPS}
	for name, listen := range listens {
		if listen != strconv.Itoa(containerPorts[name]) {
			t.Errorf("proxy.listen.%s = %q, but the %s containerPort is %d", name, listen, name, containerPorts[name])
		}
	}

	if service.Spec.Type != "NodePort" {
		t.Errorf("Service type %q, expected NodePort", service.Spec.Type)
	}
	for _, port := range service.Spec.Ports {
		if want, ok := nodePorts[port.Name]; !ok || port.NodePort != want || port.TargetPort != port.Name {
			t.Errorf("Service port %s: nodePort %d, targetPort %q, expected %d and %q", port.Name, port.NodePort, port.TargetPort, nodePorts[port.Name], port.Name)
		}
	}
	if len(service.Spec.Ports) != len(nodePorts) {
		t.Errorf("Service has %d ports, expected %d", len(service.Spec.Ports), len(nodePorts))
	}
}

func TestK8sRootAppliesBase(t *testing.T) {
	root := buildKustomization(t, ".")
	base := buildKustomization(t, "base")
	rootYAML, err := root.AsYaml()
	if err != nil {
		t.Fatal(err)
	}
	baseYAML, err := base.AsYaml()
	if err != nil {
		t.Fatal(err)
	}
	if string(rootYAML) != string(baseYAML) {
		t.Error("kubectl apply -k k8s/ would apply something other than k8s/base")
	}
}

func TestK8sBase(t *testing.T) {
	resources := buildKustomization(t, "base")
	checkProxyBuild(t, resources, filepath.Join(k8sDir, "base", "rules.yaml"), map[string]int{"http": 31080, "https": 31443})
}

func TestK8sStagingOverlay(t *testing.T) {
	resources := buildKustomization(t, "overlays/staging")
	rulesFile := filepath.Join(k8sDir, "overlays", "staging", "rules.yaml")
	checkProxyBuild(t, resources, rulesFile, map[string]int{"http": 32080, "https": 32443})

	for _, resource := range resources.Resources() {
		if resource.GetNamespace() != "mesh-staging" {
			t.Errorf("%s %s is in namespace %q, expected mesh-staging", resource.GetKind(), resource.GetName(), resource.GetNamespace())
		}
	}

	var policy struct {
		Spec struct {
			PolicyTypes []string `yaml:"policyTypes"`
			Egress      []struct {
				To []struct {
					IPBlock *struct {
						CIDR string `yaml:"cidr"`
					} `yaml:"ipBlock"`
				} `yaml:"to"`
				Ports []struct {
					Protocol string `yaml:"protocol"`
					Port     int    `yaml:"port"`
				} `yaml:"ports"`
			} `yaml:"egress"`
		} `yaml:"spec"`
	}
	findResource(t, resources, "NetworkPolicy", &policy)
	allows := func(addr netip.Addr, port int) bool {
		for _, rule := range policy.Spec.Egress {
			for _, peer := range rule.To {
				if peer.IPBlock == nil {
					continue
				}
				prefix, err := netip.ParsePrefix(peer.IPBlock.CIDR)
				if err != nil || !prefix.Contains(addr) {
					continue
				}
				for _, p := range rule.Ports {
					if p.Protocol == "TCP" && p.Port == port {
						return true
					}
				}
			}
		}
		return false
	}

	allowlist, err := loadRules(t, rulesFile).ProxyAllowlist()
	if err != nil {
		t.Fatal(err)
	}
	for _, entry := range allowlist {
		addr, err := netip.ParseAddr(entry.Upstream.Hostname())
		if err != nil {
			t.Errorf("upstream %s of %s is a name, which a NetworkPolicy cannot allow; give it by IP address", entry.Upstream, entry.HeaderValue)
			continue
		}
		port := 443
		if entry.Upstream.Scheme == "http" {
			port = 80
		}
		if entry.Upstream.Port() != "" {
			if port, err = strconv.Atoi(entry.Upstream.Port()); err != nil {
				t.Fatal(err)
			}
		}
		if !allows(addr, port) {
			t.Errorf("NetworkPolicy does not allow egress to %s (upstream of %s)", entry.Upstream, entry.HeaderValue)
		}
	}
}

func TestK8sSyncExample(t *testing.T) {
	resources := buildKustomization(t, "sync")
	var cronJob struct {
		Spec struct {
			Schedule    string `yaml:"schedule"`
			JobTemplate struct {
				Spec struct {
					Template struct {
						Spec struct {
							Containers []struct {
								Args []string `yaml:"args"`
							} `yaml:"containers"`
						} `yaml:"spec"`
					} `yaml:"template"`
				} `yaml:"spec"`
			} `yaml:"jobTemplate"`
		} `yaml:"spec"`
	}
	findResource(t, resources, "CronJob", &cronJob)
	if cronJob.Spec.Schedule == "" {
		t.Error("CronJob has no schedule")
	}
	containers := cronJob.Spec.JobTemplate.Spec.Template.Spec.Containers
	if len(containers) != 1 || !strings.Contains(strings.Join(containers[0].Args, " "), "sync --rules /etc/imgxfer/rules.yaml") {
		t.Errorf("CronJob containers %+v, expected one that runs imgxfer sync with the mounted rules", containers)
	}
	if _, err := routing.Load(filepath.Join(k8sDir, "sync", "rules.yaml")); err != nil {
		t.Errorf("the sync job's rules file: %v", err)
	}
}

// TestK8sManifestsMatchSchema validates every resource that the kustomizations build
// against the Kubernetes OpenAPI schema that kustomize embeds (Kubernetes 1.21), and
// rejects fields that the schema does not define, which the validator alone accepts.
func TestK8sManifestsMatchSchema(t *testing.T) {
	root := openapi.Schema()
	for _, dir := range kustomizations {
		for _, resource := range buildKustomization(t, dir).Resources() {
			name := dir + ": " + resource.GetKind() + " " + resource.GetName()
			schema := openapi.SchemaForResourceType(kyaml.TypeMeta{APIVersion: resource.GetApiVersion(), Kind: resource.GetKind()})
			if schema == nil || schema.Schema == nil {
				t.Errorf("%s: no schema for %s", name, resource.GetApiVersion())
				continue
			}
			object, err := resource.Map()
			if err != nil {
				t.Fatal(err)
			}
			expanded := expandSchema(t, schema.Schema, 0)
			result := validate.NewSchemaValidator(expanded, root, "", strfmt.Default).Validate(object)
			for _, problem := range result.Errors {
				t.Errorf("%s: %v", name, problem)
			}
			for _, field := range unknownFields(t, schema.Schema, object, "") {
				t.Errorf("%s: unknown field %s", name, field)
			}
		}
	}
}

// unknownFields returns the paths of the fields in value that schema does not define.
func unknownFields(t *testing.T, schema *spec.Schema, value any, path string) []string {
	t.Helper()
	schema = resolveSchema(t, schema)
	var unknown []string
	switch v := value.(type) {
	case map[string]any:
		if len(schema.Properties) == 0 {
			if schema.AdditionalProperties != nil && schema.AdditionalProperties.Schema != nil {
				for key, item := range v {
					unknown = append(unknown, unknownFields(t, schema.AdditionalProperties.Schema, item, path+"."+key)...)
				}
			}
			return unknown
		}
		for key, item := range v {
			property, ok := schema.Properties[key]
			if !ok {
				unknown = append(unknown, path+"."+key)
				continue
			}
			unknown = append(unknown, unknownFields(t, &property, item, path+"."+key)...)
		}
	case []any:
		if schema.Items != nil && schema.Items.Schema != nil {
			for i, item := range v {
				unknown = append(unknown, unknownFields(t, schema.Items.Schema, item, path+"["+strconv.Itoa(i)+"]")...)
			}
		}
	}
	return unknown
}

func resolveSchema(t *testing.T, schema *spec.Schema) *spec.Schema {
	t.Helper()
	for schema.Ref.String() != "" {
		resolved, err := openapi.Resolve(&schema.Ref, openapi.Schema())
		if err != nil {
			t.Fatalf("resolve %s: %v", schema.Ref.String(), err)
		}
		schema = resolved
	}
	return schema
}

// expandSchema returns a copy of schema with every $ref replaced by the definition it
// names, because the validator does not resolve references. The Kubernetes schemas of the
// kinds in k8s/ nest less than 40 levels deep.
func expandSchema(t *testing.T, schema *spec.Schema, depth int) *spec.Schema {
	t.Helper()
	if depth > 40 {
		t.Fatalf("schema nests more than 40 levels deep")
	}
	expanded := *resolveSchema(t, schema)
	if expanded.Format == "int-or-string" {
		// The schema declares type string, and the validator rejects the integers that
		// Kubernetes accepts for this format, such as a port number.
		return &spec.Schema{SchemaProps: spec.SchemaProps{Description: expanded.Description}}
	}
	if len(expanded.Properties) > 0 {
		properties := make(map[string]spec.Schema, len(expanded.Properties))
		for name, property := range expanded.Properties {
			properties[name] = *expandSchema(t, &property, depth+1)
		}
		expanded.Properties = properties
	}
	if expanded.Items != nil && expanded.Items.Schema != nil {
		items := *expanded.Items
		items.Schema = expandSchema(t, items.Schema, depth+1)
		expanded.Items = &items
	}
	if expanded.AdditionalProperties != nil && expanded.AdditionalProperties.Schema != nil {
		additional := *expanded.AdditionalProperties
		additional.Schema = expandSchema(t, additional.Schema, depth+1)
		expanded.AdditionalProperties = &additional
	}
	for i := range expanded.AllOf {
		expanded.AllOf[i] = *expandSchema(t, &expanded.AllOf[i], depth+1)
	}
	return &expanded
}
