package routing

import (
	"errors"
	"strings"
	"testing"
)

func TestParseFullFile(t *testing.T) {
	rules, err := Load("testdata/full.yaml")
	if err != nil {
		t.Fatalf("Load: %v", err)
	}

	if rules.Header != "x-mesh-host" {
		t.Errorf("Header = %q, want x-mesh-host", rules.Header)
	}
	if len(rules.Routes) != 2 {
		t.Fatalf("got %d routes, want 2", len(rules.Routes))
	}
	if got := rules.Routes[0].ProxyURL().String(); got != "https://mesh-proxy.example.com:31443" {
		t.Errorf("routes[0] proxy = %q", got)
	}
	if got := rules.Routes[0].TLS.CAFile; got != "testdata/ca.pem" {
		t.Errorf("routes[0].tls.ca_file = %q", got)
	}
	if reg := rules.RegistryFor("REGISTRY.dev.test:5000"); reg == nil || reg.TLS != TLSDisabled {
		t.Errorf("RegistryFor(registry.dev.test:5000) = %+v, want tls disabled", reg)
	}
	if reg := rules.RegistryFor("registry.lab.test"); reg == nil || reg.TLS != TLSInsecure {
		t.Errorf("RegistryFor(registry.lab.test) = %+v, want tls insecure", reg)
	}
	if reg := rules.RegistryFor("elsewhere.test"); reg != nil {
		t.Errorf("RegistryFor(elsewhere.test) = %+v, want nil", reg)
	}
}

func TestParseDefaults(t *testing.T) {
	rules, err := Parse("min.yaml", []byte("routes:\n  - hosts: [a.test]\n    proxy: http://p.test:8080\n"))
	if err != nil {
		t.Fatalf("Parse: %v", err)
	}
	if rules.Header != DefaultHeader {
		t.Errorf("Header = %q, want %q", rules.Header, DefaultHeader)
	}
	if rules.Version != Version {
		t.Errorf("Version = %d, want %d", rules.Version, Version)
	}
}

func TestParseEmptyFile(t *testing.T) {
	rules, err := Parse("empty.yaml", []byte("# nothing routed yet\n"))
	if err != nil {
		t.Fatalf("Parse: %v", err)
	}
	if len(rules.Routes) != 0 {
		t.Errorf("got %d routes, want 0", len(rules.Routes))
	}
}

func TestParseErrors(t *testing.T) {
	tests := []struct {
		name string
		yaml string
		want []string // substrings of the error, in order
	}{
		{
			name: "unknown top-level field",
			yaml: "version: 1\nrouts: []\n",
			want: []string{"bad.yaml:2:1:", `unknown field "routs"`, "allowed fields here: version, header, routes, registries"},
		},
		{
			name: "unknown route field",
			yaml: "routes:\n  - hosts: [a.test]\n    prox: http://p.test:1\n",
			want: []string{"bad.yaml:3:5:", `unknown field "prox"`, "allowed fields here: hosts, proxy, address, tls"},
		},
		{
			name: "unknown tls field",
			yaml: "routes:\n  - hosts: [a.test]\n    proxy: https://p.test:1\n    tls:\n      verify: false\n",
			want: []string{"bad.yaml:5:7:", `unknown field "verify"`, "allowed fields here: ca_file, insecure"},
		},
		{
			name: "missing proxy",
			yaml: "routes:\n  - hosts: [a.test]\n",
			want: []string{"bad.yaml:2:", "routes[0].proxy: missing"},
		},
		{
			name: "proxy without scheme",
			yaml: "routes:\n  - hosts: [a.test]\n    proxy: p.test:31080\n",
			want: []string{"bad.yaml:3:12:", "routes[0].proxy:", `"p.test:31080"`, "missing scheme; write http://p.test:31080"},
		},
		{
			name: "proxy with other scheme",
			yaml: "routes:\n  - hosts: [a.test]\n    proxy: ftp://p.test:31080\n",
			want: []string{"routes[0].proxy:", "scheme must be http or https"},
		},
		{
			name: "proxy with credentials",
			yaml: "routes:\n  - hosts: [a.test]\n    proxy: http://user:secret@p.test:1\n",
			want: []string{"routes[0].proxy:", "credentials in the URL are not supported"},
		},
		{
			name: "reserved header",
			yaml: "header: Host\n",
			want: []string{"bad.yaml:1:9:", "header:", `header "Host" is a standard HTTP header`},
		},
		{
			name: "host in two routes",
			yaml: "routes:\n  - hosts: [a.test]\n    proxy: http://p.test:1\n  - hosts: [b.test, A.test]\n    proxy: http://q.test:1\n",
			want: []string{"bad.yaml:4:21:", "routes[1].hosts[1]:", "already routed by routes[0]"},
		},
		{
			name: "proxy with path",
			yaml: "routes:\n  - hosts: [a.test]\n    proxy: http://p.test:1/v2\n",
			want: []string{"routes[0].proxy:", "path, query or fragment"},
		},
		{
			name: "host with scheme",
			yaml: "routes:\n  - hosts: [a.test, https://b.test]\n    proxy: http://p.test:1\n",
			want: []string{"bad.yaml:2:21:", "routes[0].hosts[1]:", `"https://b.test"`},
		},
		{
			name: "host with bad port",
			yaml: "routes:\n  - hosts: [a.test:99999]\n    proxy: http://p.test:1\n",
			want: []string{"routes[0].hosts[0]:", `invalid port "99999"`},
		},
		{
			name: "wildcard in the middle",
			yaml: "routes:\n  - hosts: [a.*.test]\n    proxy: http://p.test:1\n",
			want: []string{"routes[0].hosts[0]:", `only as a leading "*."`},
		},
		{
			name: "address without port",
			yaml: "routes:\n  - hosts: [a.test]\n    proxy: http://p.test:1\n    address: 10.0.0.7\n",
			want: []string{"bad.yaml:4:14:", "routes[0].address:", `invalid address "10.0.0.7"`, "host:port"},
		},
		{
			name: "no hosts",
			yaml: "routes:\n  - proxy: http://p.test:1\n",
			want: []string{"routes[0].hosts: missing"},
		},
		{
			name: "tls on http proxy",
			yaml: "routes:\n  - hosts: [a.test]\n    proxy: http://p.test:1\n    tls: {insecure: true}\n",
			want: []string{"routes[0].tls:", "need an https proxy"},
		},
		{
			name: "newer version",
			yaml: "version: 2\n",
			want: []string{"bad.yaml:1:10:", "version: version 2 is newer", "upgrade imgxfer"},
		},
		{
			name: "bad header name",
			yaml: "header: \"x mesh\"\n",
			want: []string{"header:", `invalid header name "x mesh"`},
		},
		{
			name: "bad registry tls",
			yaml: "registries:\n  - host: r.test\n    tls: off\n",
			want: []string{"bad.yaml:3:10:", "registries[0].tls:", `invalid value "off"`, "enabled, insecure or disabled"},
		},
		{
			name: "duplicate registry",
			yaml: "registries:\n  - host: r.test\n  - host: R.test\n",
			want: []string{"registries[1].host:", "already listed in registries[0]"},
		},
		{
			name: "wrong type",
			yaml: "routes: yes\n",
			want: []string{"bad.yaml:1:9:", "routes: expected a list of mappings with fields hosts, proxy"},
		},
		{
			name: "string where tls mapping belongs",
			yaml: "routes:\n  - hosts: [a.test]\n    proxy: http://p.test:1\n    tls: disabled\n",
			want: []string{"bad.yaml:4:10:", "routes[0].tls: expected a mapping with fields ca_file, insecure"},
		},
		{
			name: "mapping where registry tls string belongs",
			yaml: "registries:\n  - host: a.test\n    tls: {ca_file: /x}\n",
			want: []string{"bad.yaml:3:10:", "registries[0].tls: expected a string"},
		},
		{
			name: "version not a number",
			yaml: "version: \"one\"\n",
			want: []string{"bad.yaml:1:10:", "version: expected a whole number"},
		},
		{
			name: "insecure not a boolean",
			yaml: "routes:\n  - hosts: [a.test]\n    proxy: https://p:1\n    tls: {insecure: maybe}\n",
			want: []string{"routes[0].tls.insecure: expected true or false"},
		},
		{
			name: "syntax error",
			yaml: "routes:\n  - hosts: [a.test\n",
			want: []string{"bad.yaml:"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := Parse("bad.yaml", []byte(tt.yaml))
			if err == nil {
				t.Fatal("Parse succeeded, want an error")
			}
			if !errors.Is(err, ErrInvalidRules) {
				t.Errorf("error %q does not wrap ErrInvalidRules", err)
			}
			msg := err.Error()
			if strings.Contains(msg, "\n") {
				t.Errorf("error spans several lines: %q", msg)
			}
			rest := msg
			for _, want := range tt.want {
				i := strings.Index(rest, want)
				if i < 0 {
					t.Fatalf("error %q lacks %q (in order)", msg, want)
				}
				rest = rest[i+len(want):]
			}
		})
	}
}

func TestLoadMissingFile(t *testing.T) {
	_, err := Load("testdata/does-not-exist.yaml")
	if err == nil {
		t.Fatal("Load succeeded on a missing file")
	}
	if !strings.Contains(err.Error(), "testdata/does-not-exist.yaml") {
		t.Errorf("error %q does not name the file", err)
	}
}

func TestWithProxy(t *testing.T) {
	base, err := Parse("r.yaml", []byte("routes:\n  - hosts: [registry.prod.test]\n    proxy: http://old.test:1\n"))
	if err != nil {
		t.Fatal(err)
	}

	rules, err := base.WithProxy("registry.prod.test", "http://mesh-proxy:31080")
	if err != nil {
		t.Fatalf("WithProxy: %v", err)
	}
	route := rules.Match("https", "registry.prod.test")
	if route == nil || route.ProxyURL().Host != "mesh-proxy:31080" {
		t.Errorf("Match after WithProxy = %+v, want the --proxy route first", route)
	}
	if len(base.Routes) != 1 {
		t.Errorf("WithProxy changed the original rules: %d routes", len(base.Routes))
	}

	_, err = base.WithProxy("registry.prod.test", "mesh-proxy:31080")
	if err == nil || !strings.Contains(err.Error(), `--proxy "mesh-proxy:31080"`) {
		t.Errorf("WithProxy with a bad URL: error %v, want one naming --proxy and the value", err)
	}
}

func TestExampleRulesFileParses(t *testing.T) {
	rules, err := Load("../rules.yaml.example")
	if err != nil {
		t.Fatalf("rules.yaml.example: %v", err)
	}
	if len(rules.Routes) == 0 || len(rules.Registries) == 0 {
		t.Errorf("rules.yaml.example should show routes and registries, got %d and %d", len(rules.Routes), len(rules.Registries))
	}
	if route := rules.Match("https", "registry-1.docker.io"); route == nil {
		t.Error("the Docker Hub route of rules.yaml.example does not match registry-1.docker.io")
	}
}

func TestProxyURLErrorsHideCredentials(t *testing.T) {
	for _, raw := range []string{"http://bob:S3CRETpw@127.0.0.1:9", "bob:S3CRETpw@127.0.0.1:9", "ftp://bob:S3CRETpw@p.test:1", "http://bob:S3CRETpw@p.test:1/path"} {
		_, err := Empty().WithProxy("registry.prod.test", raw)
		if err == nil {
			t.Errorf("WithProxy(%q) succeeded", raw)
			continue
		}
		if strings.Contains(err.Error(), "S3CRETpw") {
			t.Errorf("WithProxy(%q) error shows the password: %v", raw, err)
		}
		_, err = Parse("r.yaml", []byte("routes:\n  - hosts: [a.test]\n    proxy: \""+raw+"\"\n"))
		if err == nil || strings.Contains(err.Error(), "S3CRETpw") {
			t.Errorf("Parse with proxy %q: error %v, want one without the password", raw, err)
		}
	}
}
