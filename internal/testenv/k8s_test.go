package testenv

import (
	"bytes"
	"os"
	"path"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/goccy/go-yaml"
)

// The structs below declare only the manifest fields these tests check.

type k8sKustomization struct {
	APIVersion         string   `yaml:"apiVersion"`
	Kind               string   `yaml:"kind"`
	Resources          []string `yaml:"resources"`
	ConfigMapGenerator []struct {
		Name  string   `yaml:"name"`
		Files []string `yaml:"files"`
	} `yaml:"configMapGenerator"`
}

type k8sProbe struct {
	HTTPGet struct {
		Path string `yaml:"path"`
		Port string `yaml:"port"`
	} `yaml:"httpGet"`
}

type k8sContainer struct {
	Name  string `yaml:"name"`
	Image string `yaml:"image"`
	Ports []struct {
		Name          string `yaml:"name"`
		ContainerPort int    `yaml:"containerPort"`
	} `yaml:"ports"`
	Env []struct {
		Name  string `yaml:"name"`
		Value string `yaml:"value"`
	} `yaml:"env"`
	ReadinessProbe *k8sProbe `yaml:"readinessProbe"`
	LivenessProbe  *k8sProbe `yaml:"livenessProbe"`
	Resources      struct {
		Requests map[string]string `yaml:"requests"`
		Limits   map[string]string `yaml:"limits"`
	} `yaml:"resources"`
	VolumeMounts []struct {
		Name      string `yaml:"name"`
		MountPath string `yaml:"mountPath"`
		SubPath   string `yaml:"subPath"`
	} `yaml:"volumeMounts"`
}

type k8sVolume struct {
	Name      string `yaml:"name"`
	ConfigMap *struct {
		Name string `yaml:"name"`
	} `yaml:"configMap"`
	Secret *struct {
		SecretName string `yaml:"secretName"`
	} `yaml:"secret"`
}

type k8sDeployment struct {
	APIVersion string `yaml:"apiVersion"`
	Kind       string `yaml:"kind"`
	Metadata   struct {
		Name string `yaml:"name"`
	} `yaml:"metadata"`
	Spec struct {
		Selector struct {
			MatchLabels map[string]string `yaml:"matchLabels"`
		} `yaml:"selector"`
		Template struct {
			Metadata struct {
				Labels map[string]string `yaml:"labels"`
			} `yaml:"metadata"`
			Spec struct {
				Containers []k8sContainer `yaml:"containers"`
				Volumes    []k8sVolume    `yaml:"volumes"`
			} `yaml:"spec"`
		} `yaml:"template"`
	} `yaml:"spec"`
}

type k8sService struct {
	APIVersion string `yaml:"apiVersion"`
	Kind       string `yaml:"kind"`
	Spec       struct {
		Type     string            `yaml:"type"`
		Selector map[string]string `yaml:"selector"`
		Ports    []struct {
			Name       string `yaml:"name"`
			Port       int    `yaml:"port"`
			TargetPort string `yaml:"targetPort"`
			NodePort   int    `yaml:"nodePort"`
		} `yaml:"ports"`
	} `yaml:"spec"`
}

func readK8sFile(t *testing.T, name string) []byte {
	t.Helper()
	data, err := os.ReadFile(filepath.Join(meshRepoDir(t), "k8s", name))
	if err != nil {
		t.Fatal(err)
	}
	return data
}

func unmarshalK8sFile(t *testing.T, name string, target any) {
	t.Helper()
	if err := yaml.Unmarshal(readK8sFile(t, name), target); err != nil {
		t.Fatalf("parse k8s/%s: %v", name, err)
	}
}

func TestK8sTemplateCopyMatchesNginxTemplate(t *testing.T) {
	original, err := os.ReadFile(filepath.Join(meshRepoDir(t), MeshTemplatePath))
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(readK8sFile(t, "mesh-proxy.conf.template"), original) {
		t.Errorf("k8s/mesh-proxy.conf.template differs from %s: copy it again with\n  cp %s k8s/", MeshTemplatePath, MeshTemplatePath)
	}
}

func TestK8sKustomization(t *testing.T) {
	var kustomization k8sKustomization
	unmarshalK8sFile(t, "kustomization.yaml", &kustomization)

	if kustomization.Kind != "Kustomization" || kustomization.APIVersion != "kustomize.config.k8s.io/v1beta1" {
		t.Errorf("kind %q, apiVersion %q, expected Kustomization, kustomize.config.k8s.io/v1beta1", kustomization.Kind, kustomization.APIVersion)
	}
	var files []string
	files = append(files, kustomization.Resources...)
	for _, generator := range kustomization.ConfigMapGenerator {
		files = append(files, generator.Files...)
	}
	if len(files) == 0 {
		t.Fatal("kustomization lists no resources or generator files")
	}
	for _, name := range files {
		if strings.Contains(name, "..") || filepath.IsAbs(name) {
			t.Errorf("kustomization references %q outside k8s/, which kustomize's load restrictor rejects", name)
			continue
		}
		if _, err := os.Stat(filepath.Join(meshRepoDir(t), "k8s", name)); err != nil {
			t.Errorf("kustomization references a missing file: %v", err)
		}
	}
}

// k8sGeneratedFiles maps each generated ConfigMap's name to its file names.
func k8sGeneratedFiles(t *testing.T) map[string][]string {
	t.Helper()
	var kustomization k8sKustomization
	unmarshalK8sFile(t, "kustomization.yaml", &kustomization)
	files := map[string][]string{}
	for _, generator := range kustomization.ConfigMapGenerator {
		files[generator.Name] = generator.Files
	}
	return files
}

func TestK8sDeployment(t *testing.T) {
	var deployment k8sDeployment
	unmarshalK8sFile(t, "deployment.yaml", &deployment)
	generated := k8sGeneratedFiles(t)

	if deployment.Kind != "Deployment" || deployment.APIVersion != "apps/v1" {
		t.Fatalf("kind %q, apiVersion %q, expected Deployment, apps/v1", deployment.Kind, deployment.APIVersion)
	}
	for key, value := range deployment.Spec.Selector.MatchLabels {
		if deployment.Spec.Template.Metadata.Labels[key] != value {
			t.Errorf("pod template lacks the selector label %s=%s", key, value)
		}
	}
	containers := deployment.Spec.Template.Spec.Containers
	if len(containers) != 1 {
		t.Fatalf("deployment has %d containers, expected 1", len(containers))
	}
	container := containers[0]
	if container.Image != "nginx:1.27" {
		t.Errorf("image = %q, expected nginx:1.27", container.Image)
	}

	env := map[string]string{}
	for _, variable := range container.Env {
		env[variable.Name] = variable.Value
	}
	for _, name := range templateVariables(string(readK8sFile(t, "mesh-proxy.conf.template"))) {
		if name == "NGINX_LOCAL_RESOLVERS" {
			// The image's entrypoint sets it when this variable is set.
			name = "NGINX_ENTRYPOINT_LOCAL_RESOLVERS"
		}
		if env[name] == "" {
			t.Errorf("container sets no value for %s, which the template needs", name)
		}
	}

	ports := map[string]int{}
	for _, port := range container.Ports {
		ports[port.Name] = port.ContainerPort
	}
	for name, variable := range map[string]string{"http": "MESH_LISTEN_HTTP", "https": "MESH_LISTEN_HTTPS"} {
		if got := env[variable]; got == "" || got != strconv.Itoa(ports[name]) {
			t.Errorf("%s = %q, expected the %s containerPort %d", variable, got, name, ports[name])
		}
	}

	for name, probe := range map[string]*k8sProbe{"readiness": container.ReadinessProbe, "liveness": container.LivenessProbe} {
		if probe == nil {
			t.Errorf("container has no %s probe", name)
			continue
		}
		if probe.HTTPGet.Path != "/healthz" || probe.HTTPGet.Port != "http" {
			t.Errorf("%s probe = GET %s on port %q, expected /healthz on port http", name, probe.HTTPGet.Path, probe.HTTPGet.Port)
		}
	}
	for _, resource := range []string{"cpu", "memory"} {
		if container.Resources.Requests[resource] == "" || container.Resources.Limits[resource] == "" {
			t.Errorf("container lacks a %s request or limit", resource)
		}
	}

	volumes := map[string]k8sVolume{}
	for _, volume := range deployment.Spec.Template.Spec.Volumes {
		volumes[volume.Name] = volume
	}
	// fileSource returns the volume that contains file, a path inside the
	// container, and the file's path relative to the volume's root.
	fileSource := func(file string) (k8sVolume, string) {
		for _, mount := range container.VolumeMounts {
			if mount.SubPath != "" && file == mount.MountPath {
				return volumes[mount.Name], mount.SubPath
			}
			if mount.SubPath == "" && strings.HasPrefix(file, mount.MountPath+"/") {
				return volumes[mount.Name], strings.TrimPrefix(file, mount.MountPath+"/")
			}
		}
		return k8sVolume{}, ""
	}

	templateVolume, templateFile := fileSource("/etc/nginx/templates/mesh-proxy.conf.template")
	checkGeneratedFile(t, "template", templateVolume, templateFile, generated)
	mapVolume, mapFile := fileSource(env["MESH_REGISTRIES_MAP"])
	checkGeneratedFile(t, "MESH_REGISTRIES_MAP", mapVolume, mapFile, generated)

	for _, variable := range []string{"MESH_TLS_CERT", "MESH_TLS_KEY"} {
		volume, file := fileSource(env[variable])
		if volume.Secret == nil || volume.Secret.SecretName != "mesh-proxy-tls" {
			t.Errorf("%s = %q is not inside a mount of the secret mesh-proxy-tls", variable, env[variable])
			continue
		}
		if file != "tls.crt" && file != "tls.key" {
			t.Errorf("%s names %q, expected tls.crt or tls.key of a kubernetes.io/tls secret", variable, file)
		}
	}
}

// checkGeneratedFile checks that volume is a ConfigMap from the
// kustomization's configMapGenerator that contains file.
func checkGeneratedFile(t *testing.T, description string, volume k8sVolume, file string, generated map[string][]string) {
	t.Helper()
	if volume.ConfigMap == nil {
		t.Errorf("%s is not mounted from a ConfigMap", description)
		return
	}
	files, ok := generated[volume.ConfigMap.Name]
	if !ok {
		t.Errorf("%s comes from ConfigMap %q, which configMapGenerator does not create", description, volume.ConfigMap.Name)
		return
	}
	for _, name := range files {
		if path.Base(name) == file {
			return
		}
	}
	t.Errorf("%s is %q, but ConfigMap %q has only %q", description, file, volume.ConfigMap.Name, files)
}

func TestK8sService(t *testing.T) {
	var service k8sService
	unmarshalK8sFile(t, "service.yaml", &service)
	var deployment k8sDeployment
	unmarshalK8sFile(t, "deployment.yaml", &deployment)

	if service.Kind != "Service" || service.APIVersion != "v1" {
		t.Fatalf("kind %q, apiVersion %q, expected Service, v1", service.Kind, service.APIVersion)
	}
	if service.Spec.Type != "NodePort" {
		t.Errorf("type = %q, expected NodePort", service.Spec.Type)
	}
	if len(service.Spec.Selector) == 0 {
		t.Error("service has no selector")
	}
	for key, value := range service.Spec.Selector {
		if deployment.Spec.Template.Metadata.Labels[key] != value {
			t.Errorf("service selector %s=%s matches no pod label of the deployment", key, value)
		}
	}

	expected := map[string]int{"http": 31080, "https": 31443}
	for _, port := range service.Spec.Ports {
		want, ok := expected[port.Name]
		if !ok {
			t.Errorf("unexpected service port %q", port.Name)
			continue
		}
		delete(expected, port.Name)
		if port.NodePort != want || port.TargetPort != port.Name {
			t.Errorf("port %s: nodePort %d, targetPort %q, expected %d and %q", port.Name, port.NodePort, port.TargetPort, want, port.Name)
		}
	}
	for name := range expected {
		t.Errorf("service lacks the %s port", name)
	}
}

func TestK8sRegistriesMapExample(t *testing.T) {
	entries := 0
	for number, line := range strings.Split(string(readK8sFile(t, "registries.map")), "\n") {
		line = strings.TrimSpace(line)
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		entries++
		fields := strings.Fields(strings.TrimSuffix(line, ";"))
		if !strings.HasSuffix(line, ";") || len(fields) != 2 {
			t.Errorf("registries.map:%d: %q, expected \"host[:port] upstream-URL;\"", number+1, line)
			continue
		}
		if _, err := checkAllowlistEntry(fields[0], fields[1]); err != nil {
			t.Errorf("registries.map:%d: %v", number+1, err)
		}
	}
	if entries == 0 {
		t.Error("registries.map has no example entries")
	}
}
