package proxyconf_test

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/goccy/go-yaml"

	"github.com/imgxfer/imgxfer/internal/proxyconf"
	"github.com/imgxfer/imgxfer/internal/testenv"
	"github.com/imgxfer/imgxfer/routing"
)

// envUpdate names the environment variable that makes the golden tests rewrite the files
// they compare against: testdata/*.conf and the nginx.conf files in k8s/.
const envUpdate = "IMGXFER_UPDATE_GOLDEN"

// repoRoot is the repository root, two levels above this package.
const repoRoot = "../.."

// checkGolden compares got with the file at path, or rewrites the file when envUpdate is
// set.
func checkGolden(t *testing.T, path string, got []byte) {
	t.Helper()
	if os.Getenv(envUpdate) != "" {
		if err := os.WriteFile(path, got, 0o644); err != nil {
			t.Fatal(err)
		}
		return
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("%v; run the tests with %s=1 to create it", err, envUpdate)
	}
	if !bytes.Equal(got, want) {
		t.Errorf("generated output differs from %s; review the change and run the tests with %s=1 to update it\n%s",
			path, envUpdate, firstDifference(string(want), string(got)))
	}
}

// firstDifference describes the first line where got differs from want.
func firstDifference(want, got string) string {
	wantLines, gotLines := strings.Split(want, "\n"), strings.Split(got, "\n")
	for i := 0; i < len(wantLines) || i < len(gotLines); i++ {
		var w, g string
		if i < len(wantLines) {
			w = wantLines[i]
		}
		if i < len(gotLines) {
			g = gotLines[i]
		}
		if w != g {
			return "line " + strconv.Itoa(i+1) + ":\n  file:      " + w + "\n  generated: " + g
		}
	}
	return ""
}

func loadRules(t *testing.T, path string) *routing.Rules {
	t.Helper()
	rules, err := routing.Load(path)
	if err != nil {
		t.Fatal(err)
	}
	return rules
}

// goldenRules are the rules files with a golden nginx.conf beside them.
func goldenRules(t *testing.T) []string {
	t.Helper()
	files, err := filepath.Glob("testdata/*.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if len(files) == 0 {
		t.Fatal("no rules files in testdata")
	}
	return files
}

func TestGenerateGolden(t *testing.T) {
	for _, rulesFile := range goldenRules(t) {
		t.Run(filepath.Base(rulesFile), func(t *testing.T) {
			config, err := proxyconf.Generate(loadRules(t, rulesFile), proxyconf.Options{})
			if err != nil {
				t.Fatal(err)
			}
			checkGolden(t, strings.TrimSuffix(rulesFile, ".yaml")+".conf", config)
		})
	}
}

// TestGeneratedConfigsPassNginxTest runs `nginx -t` on the configuration of every rules
// file in the repository that describes a proxy, with the file paths moved into a
// temporary directory so that nginx can open them.
func TestGeneratedConfigsPassNginxTest(t *testing.T) {
	files := append(goldenRules(t),
		filepath.Join(repoRoot, "rules.yaml.example"),
		filepath.Join(repoRoot, "k8s", "base", "rules.yaml"),
		filepath.Join(repoRoot, "k8s", "overlays", "staging", "rules.yaml"),
	)
	ca, err := testenv.NewCA()
	if err != nil {
		t.Fatal(err)
	}
	certPEM, keyPEM, err := ca.Issue("mesh-proxy.test")
	if err != nil {
		t.Fatal(err)
	}

	for _, rulesFile := range files {
		t.Run(filepath.Base(filepath.Dir(rulesFile))+"/"+filepath.Base(rulesFile), func(t *testing.T) {
			dir := t.TempDir()
			opts := proxyconf.Options{
				TempDir:   dir,
				PIDFile:   filepath.Join(dir, "nginx.pid"),
				AccessLog: filepath.Join(dir, "access.log"),
				ErrorLog:  filepath.Join(dir, "error.log"),
			}
			for _, file := range []struct {
				target *string
				name   string
				data   []byte
			}{
				{&opts.TLSCert, "proxy.crt", certPEM},
				{&opts.TLSKey, "proxy.key", keyPEM},
				{&opts.UpstreamCA, "ca.crt", ca.CertPEM()},
			} {
				if *file.target, err = testenv.WriteFile(dir, file.name, file.data); err != nil {
					t.Fatal(err)
				}
			}

			config, err := proxyconf.Generate(loadRules(t, rulesFile), opts)
			if err != nil {
				t.Fatal(err)
			}
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			if err := testenv.CheckNginxConfig(ctx, dir, config); err != nil {
				t.Error(err)
			}
		})
	}
}

func TestGenerateHeaderName(t *testing.T) {
	config, err := proxyconf.Generate(loadRules(t, "testdata/full.yaml"), proxyconf.Options{})
	if err != nil {
		t.Fatal(err)
	}
	text := string(config)
	for _, want := range []string{
		"map $http_x_mesh_host $mesh_host {",
		"default $http_x_mesh_host;",
		`proxy_set_header x-mesh-host "";`,
		`add_header Mesh-Proxy-Error "missing x-mesh-host header" always;`,
	} {
		if !strings.Contains(text, want) {
			t.Errorf("configuration lacks %q", want)
		}
	}
	if strings.Contains(text, "$http_mesh ") {
		t.Error("configuration reads the default header $http_mesh, expected only the rules' header")
	}
}

func TestGenerateListeners(t *testing.T) {
	rules := loadRules(t, "testdata/minimal.yaml")
	tests := []struct {
		name        string
		opts        proxyconf.Options
		expected    []string
		notExpected []string
	}{
		{"defaults", proxyconf.Options{}, []string{"listen 8080;", "listen 8443 ssl;", `ssl_certificate "/etc/nginx/tls/tls.crt";`}, nil},
		{"overrides", proxyconf.Options{HTTPListen: "127.0.0.1:18080", HTTPSListen: "[::1]:18443", TLSCert: "/run/tls/cert.pem", TLSKey: "/run/tls/key.pem"},
			[]string{"listen 127.0.0.1:18080;", "listen [::1]:18443 ssl;", `ssl_certificate "/run/tls/cert.pem";`, `ssl_certificate_key "/run/tls/key.pem";`}, nil},
		{"TLS listener off", proxyconf.Options{HTTPSListen: routing.ListenOff}, []string{"listen 8080;"}, []string{" ssl;", "ssl_certificate"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			config, err := proxyconf.Generate(rules, tt.opts)
			if err != nil {
				t.Fatal(err)
			}
			for _, want := range tt.expected {
				if !strings.Contains(string(config), want) {
					t.Errorf("configuration lacks %q", want)
				}
			}
			for _, unwanted := range tt.notExpected {
				if strings.Contains(string(config), unwanted) {
					t.Errorf("configuration contains %q", unwanted)
				}
			}
		})
	}
}

func TestGenerateRejectsInvalidOptions(t *testing.T) {
	rules := loadRules(t, "testdata/minimal.yaml")
	tests := []struct {
		name    string
		opts    proxyconf.Options
		message string
	}{
		{"both listeners off", proxyconf.Options{HTTPListen: "off", HTTPSListen: "off"}, "both listeners are off"},
		{"bad listen", proxyconf.Options{HTTPListen: "localhost:80"}, `invalid listen address "localhost:80"`},
		{"relative certificate", proxyconf.Options{TLSCert: "proxy.crt"}, "relative"},
		{"quote in access log", proxyconf.Options{AccessLog: `/var/log/a"b`}, "quote"},
		{"directive in user", proxyconf.Options{User: "root; daemon on"}, "invalid user"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := proxyconf.Generate(rules, tt.opts)
			if err == nil || !strings.Contains(err.Error(), tt.message) {
				t.Errorf("error = %v, expected one containing %q", err, tt.message)
			}
		})
	}
}

func TestGenerateReportsRulesPosition(t *testing.T) {
	rules, err := routing.Parse("wild.yaml", []byte("routes:\n  - hosts: [\"*.prod.test\"]\n    proxy: http://p.test:1\n"))
	if err != nil {
		t.Fatal(err)
	}
	_, err = proxyconf.Generate(rules, proxyconf.Options{})
	if err == nil || !strings.Contains(err.Error(), "wild.yaml:2:") || !strings.Contains(err.Error(), "routes[0].hosts[0]") {
		t.Errorf("error = %v, expected the wildcard's file, line and field", err)
	}
}

func TestConfigMapHoldsGeneratedConfig(t *testing.T) {
	rules := loadRules(t, "testdata/full.yaml")
	config, err := proxyconf.Generate(rules, proxyconf.Options{})
	if err != nil {
		t.Fatal(err)
	}
	manifest, err := proxyconf.ConfigMap(rules, proxyconf.Options{}, "mesh-proxy-nginx")
	if err != nil {
		t.Fatal(err)
	}

	var configMap struct {
		APIVersion string `yaml:"apiVersion"`
		Kind       string `yaml:"kind"`
		Metadata   struct {
			Name string `yaml:"name"`
		} `yaml:"metadata"`
		Data map[string]string `yaml:"data"`
	}
	if err := yaml.Unmarshal(manifest, &configMap); err != nil {
		t.Fatalf("ConfigMap is not valid YAML: %v", err)
	}
	if configMap.APIVersion != "v1" || configMap.Kind != "ConfigMap" || configMap.Metadata.Name != "mesh-proxy-nginx" {
		t.Errorf("apiVersion %q, kind %q, name %q, expected v1, ConfigMap, mesh-proxy-nginx", configMap.APIVersion, configMap.Kind, configMap.Metadata.Name)
	}
	if got := configMap.Data[proxyconf.ConfigMapKey]; got != string(config) {
		t.Errorf("ConfigMap data differs from Generate's output:\n%s", firstDifference(string(config), got))
	}

	if _, err := proxyconf.ConfigMap(rules, proxyconf.Options{}, "Mesh_Proxy"); err == nil {
		t.Error("ConfigMap accepted the invalid name Mesh_Proxy")
	}
}
