package routing

import (
	"errors"
	"strings"
	"testing"
)

// checkErrorParts fails unless err wraps ErrInvalidRules, is one line and contains the
// parts in order.
func checkErrorParts(t *testing.T, err error, parts []string) {
	t.Helper()
	if err == nil {
		t.Fatal("no error, expected one")
	}
	if !errors.Is(err, ErrInvalidRules) {
		t.Errorf("error %q does not wrap ErrInvalidRules", err)
	}
	msg := err.Error()
	if strings.Contains(msg, "\n") {
		t.Errorf("error spans several lines: %q", msg)
	}
	rest := msg
	for _, part := range parts {
		i := strings.Index(rest, part)
		if i < 0 {
			t.Fatalf("error %q lacks %q (in order)", msg, part)
		}
		rest = rest[i+len(part):]
	}
}

func TestProxySettingsDefaults(t *testing.T) {
	rules, err := Parse("r.yaml", []byte("routes:\n  - hosts: [registry.prod.test]\n    proxy: http://p.test:1\n"))
	if err != nil {
		t.Fatal(err)
	}
	proxy := rules.Proxy
	if proxy.Listen.HTTP != DefaultProxyHTTPListen || proxy.Listen.HTTPS != DefaultProxyHTTPSListen {
		t.Errorf("listen = %+v, expected %s and %s", proxy.Listen, DefaultProxyHTTPListen, DefaultProxyHTTPSListen)
	}
	if proxy.TLS.Cert != DefaultProxyTLSCert || proxy.TLS.Key != DefaultProxyTLSKey {
		t.Errorf("tls = %+v, expected the defaults", proxy.TLS)
	}
	if proxy.UpstreamCA != DefaultProxyUpstreamCA {
		t.Errorf("upstream_ca = %q, expected %q", proxy.UpstreamCA, DefaultProxyUpstreamCA)
	}
	if proxy.RealmRewrite {
		t.Error("realm_rewrite is on by default, expected off")
	}
}

func TestProxySettingsParse(t *testing.T) {
	rules, err := Parse("r.yaml", []byte(`routes:
  - hosts: [registry.prod.test]
    proxy: http://p.test:1
proxy:
  listen: {http: "127.0.0.1:18080", https: "off"}
  resolver: [10.96.0.10, "10.96.0.11:53"]
  realm_rewrite: true
  upstreams:
    - host: registry.prod.test
      url: https://10.0.0.5:443/
`))
	if err != nil {
		t.Fatal(err)
	}
	proxy := rules.Proxy
	if proxy.Listen.HTTP != "127.0.0.1:18080" || proxy.Listen.HTTPS != ListenOff {
		t.Errorf("listen = %+v", proxy.Listen)
	}
	if proxy.TLS.Cert != "" {
		t.Errorf("tls.cert = %q with the TLS listener off, expected no default", proxy.TLS.Cert)
	}
	if len(proxy.Resolver) != 2 || !proxy.RealmRewrite {
		t.Errorf("resolver %v, realm_rewrite %t", proxy.Resolver, proxy.RealmRewrite)
	}
	if got := proxy.Upstreams[0].upstreamURL.String(); got != "https://10.0.0.5:443" {
		t.Errorf("upstream URL = %q, expected the trailing slash removed", got)
	}
}

func TestProxySettingsErrors(t *testing.T) {
	const route = "routes:\n  - hosts: [r.test]\n    proxy: http://p.test:1\n"
	tests := []struct {
		name string
		yaml string
		want []string
	}{
		{"unknown field", "proxy:\n  listens: {}\n", []string{"bad.yaml:2:3:", `unknown field "listens"`, "allowed fields here: listen, tls, resolver, upstream_ca, realm_rewrite, upstreams, worker_processes"}},
		{"bad listen port", "proxy:\n  listen: {http: 99999}\n", []string{"bad.yaml:2:18:", "proxy.listen.http:", `"99999"`, "1 to 65535"}},
		{"listen host name", "proxy:\n  listen: {http: \"proxy.test:80\"}\n", []string{"proxy.listen.http:", "IP address and port"}},
		{"listen IPv6 without brackets", "proxy:\n  listen: {https: \"::1:8443\"}\n", []string{"proxy.listen.https:", `"::1:8443"`}},
		{"both listeners off", "proxy:\n  listen: {http: \"off\", https: \"off\"}\n", []string{"bad.yaml:2:", "proxy.listen:", "both listeners are off"}},
		{"relative cert", "proxy:\n  tls: {cert: proxy.pem}\n", []string{"bad.yaml:2:15:", "proxy.tls.cert:", "relative"}},
		{"dollar in key", "proxy:\n  tls: {key: /etc/$key.pem}\n", []string{"proxy.tls.key:", "'$'"}},
		{"bad resolver", "proxy:\n  resolver: [\"dns.test:0\"]\n", []string{"bad.yaml:2:", "proxy.resolver[0]:", "invalid resolver"}},
		{"upstream without url", route + "proxy:\n  upstreams:\n    - host: r.test\n", []string{"bad.yaml:6:", "proxy.upstreams[0].url: missing"}},
		{"upstream wildcard", route + "proxy:\n  upstreams:\n    - {host: \"*.r.test\", url: \"http://10.0.0.1\"}\n", []string{"bad.yaml:6:", "proxy.upstreams[0].host:", "wildcard"}},
		{"upstream with path", route + "proxy:\n  upstreams:\n    - {host: r.test, url: \"http://10.0.0.1/v2\"}\n", []string{"proxy.upstreams[0].url:", "path, query or fragment"}},
		{"upstream scheme", route + "proxy:\n  upstreams:\n    - {host: r.test, url: \"ftp://10.0.0.1\"}\n", []string{"proxy.upstreams[0].url:", "http or https"}},
		{"upstream credentials", route + "proxy:\n  upstreams:\n    - {host: r.test, url: \"http://u:secret@10.0.0.1\"}\n", []string{"proxy.upstreams[0].url:", "credentials"}},
		{"upstream reserved name", route + "proxy:\n  upstreams:\n    - {host: r.test, url: \"http://mesh-upstream-0.invalid\"}\n", []string{"proxy.upstreams[0].url:", "reserved"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := Parse("bad.yaml", []byte(tt.yaml))
			checkErrorParts(t, err, tt.want)
			if err != nil && strings.Contains(err.Error(), "secret") {
				t.Errorf("error %q shows the password", err)
			}
		})
	}
}

func TestProxyAllowlistDefaults(t *testing.T) {
	rules, err := Parse("r.yaml", []byte(`routes:
  - hosts: [registry.prod.test, "Registry.Port.test:5000", docker.io, "[fd00::5]:5000", "registry.tls.test:443"]
    proxy: http://p.test:1
  - hosts: [plain.prod.test]
    proxy: http://other.test:1
registries:
  - host: plain.prod.test
    tls: disabled
proxy:
  resolver: [10.96.0.10]
  upstreams:
    - host: registry.prod.test
      url: http://10.0.0.5:5000
`))
	if err != nil {
		t.Fatal(err)
	}
	allowlist, err := rules.ProxyAllowlist()
	if err != nil {
		t.Fatal(err)
	}

	expected := []struct{ header, upstream, serverName, origin string }{
		{"[fd00::5]:5000", "https://[fd00::5]:5000", "fd00::5", "routes[0].hosts[3]"},
		{"docker.io", "https://docker.io", "docker.io", "routes[0].hosts[2]"},
		{"plain.prod.test", "http://plain.prod.test", "plain.prod.test", "routes[1].hosts[0]"},
		{"registry-1.docker.io", "https://registry-1.docker.io", "registry-1.docker.io", "routes[0].hosts[2]"},
		{"registry.port.test:5000", "https://registry.port.test:5000", "registry.port.test", "routes[0].hosts[1]"},
		{"registry.prod.test", "http://10.0.0.5:5000", "registry.prod.test", "proxy.upstreams[0]"},
		{"registry.tls.test", "https://registry.tls.test", "registry.tls.test", "routes[0].hosts[4]"},
	}
	if len(allowlist) != len(expected) {
		t.Fatalf("allowlist has %d entries, expected %d: %+v", len(allowlist), len(expected), allowlist)
	}
	for i, want := range expected {
		got := allowlist[i]
		if got.HeaderValue != want.header || got.Upstream.String() != want.upstream || got.ServerName != want.serverName || got.Origin != want.origin {
			t.Errorf("entry %d = {%s %s %s %s}, expected %+v", i, got.HeaderValue, got.Upstream, got.ServerName, got.Origin, want)
		}
	}
}

func TestProxyAllowlistWildcardNeedsUpstreams(t *testing.T) {
	const routes = "routes:\n  - hosts: [a.test, \"*.prod.test\"]\n    proxy: http://p.test:1\n"
	rules, err := Parse("r.yaml", []byte(routes))
	if err != nil {
		t.Fatalf("a client must accept a wildcard without proxy settings: %v", err)
	}
	_, err = rules.ProxyAllowlist()
	checkErrorParts(t, err, []string{"r.yaml:2:21:", "routes[0].hosts[1]:", `wildcard "*.prod.test"`, "nginx matches header values exactly", "proxy.upstreams"})

	covered, err := Parse("r.yaml", []byte(routes+"proxy:\n  upstreams:\n    - {host: harbor.prod.test, url: \"https://10.0.0.7\"}\n    - {host: a.test, url: \"http://10.0.0.8:5000\"}\n"))
	if err != nil {
		t.Fatal(err)
	}
	allowlist, err := covered.ProxyAllowlist()
	if err != nil {
		t.Fatal(err)
	}
	if len(allowlist) != 2 || allowlist[0].HeaderValue != "a.test" || allowlist[1].HeaderValue != "harbor.prod.test" {
		t.Errorf("allowlist = %+v, expected a.test and harbor.prod.test only", allowlist)
	}
}

func TestProxyAllowlistErrors(t *testing.T) {
	const route = "routes:\n  - hosts: [r.test, default]\n    proxy: http://p.test:1\n"
	tests := []struct {
		name string
		yaml string
		want []string
	}{
		{"upstream outside routes", "routes:\n  - hosts: [r.test]\n    proxy: http://p.test:1\nproxy:\n  upstreams:\n    - {host: elsewhere.test, url: \"http://10.0.0.1\"}\n",
			[]string{"r.yaml:6:14:", "proxy.upstreams[0].host:", `"elsewhere.test" matches no route`}},
		{"duplicate upstream", "routes:\n  - hosts: [r.test]\n    proxy: http://p.test:1\nproxy:\n  upstreams:\n    - {host: r.test, url: \"http://10.0.0.1\"}\n    - {host: R.test, url: \"http://10.0.0.2\"}\n",
			[]string{"r.yaml:7:", "proxy.upstreams[1].host:", "already listed in proxy.upstreams[0]"}},
		{"map keyword", route + "proxy:\n  resolver: [10.0.0.1]\n",
			[]string{"r.yaml:2:21:", "routes[0].hosts[1]:", "nginx map keyword"}},
		{"resolver missing", "routes:\n  - hosts: [r.test]\n    proxy: http://p.test:1\n",
			[]string{"r.yaml:1:", "proxy.resolver: missing", "https://r.test", "routes[0].hosts[0]", "IP address"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			rules, err := Parse("r.yaml", []byte(tt.yaml))
			if err != nil {
				t.Fatalf("Parse: %v", err)
			}
			_, err = rules.ProxyAllowlist()
			checkErrorParts(t, err, tt.want)
		})
	}
}

func TestProxyAllowlistEmptyRules(t *testing.T) {
	allowlist, err := Empty().ProxyAllowlist()
	if err != nil {
		t.Fatal(err)
	}
	if len(allowlist) != 0 {
		t.Errorf("allowlist = %+v, expected none", allowlist)
	}
}

func TestDecide(t *testing.T) {
	rules, err := Parse("r.yaml", []byte(`routes:
  - hosts: [registry.prod.test, "*.prod.example.com"]
    proxy: https://mesh.test:31443
registries:
  - host: registry.dev.test:5000
    tls: disabled
`))
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		host      string
		canonical string
		scheme    string
		route     int
		hostIndex int
	}{
		{"registry.prod.test", "registry.prod.test", "https", 0, 0},
		{"REGISTRY.prod.test:443", "registry.prod.test", "https", 0, 0},
		{"harbor.prod.example.com:8443", "harbor.prod.example.com:8443", "https", 0, 1},
		{"registry.dev.test:5000", "registry.dev.test:5000", "http", -1, -1},
		{"docker.io", "registry-1.docker.io", "https", -1, -1},
	}
	for _, tt := range tests {
		decision, err := rules.Decide(tt.host)
		if err != nil {
			t.Errorf("Decide(%q): %v", tt.host, err)
			continue
		}
		if decision.Host != tt.canonical || decision.Scheme != tt.scheme || decision.RouteIndex != tt.route || decision.HostIndex != tt.hostIndex {
			t.Errorf("Decide(%q) = %+v, expected host %s, scheme %s, route %d, hosts entry %d", tt.host, decision, tt.canonical, tt.scheme, tt.route, tt.hostIndex)
		}
		if decision.Routed() != (tt.route >= 0) {
			t.Errorf("Decide(%q).Routed() = %t", tt.host, decision.Routed())
		}
	}

	if _, err := rules.Decide("bad host"); err == nil {
		t.Error("Decide accepted an invalid host")
	}
	if got := rules.Position("routes[0].hosts[1]"); got != "r.yaml:2:33" {
		t.Errorf("Position = %q, expected r.yaml:2:33", got)
	}
}
