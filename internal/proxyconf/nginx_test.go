package proxyconf_test

import (
	"context"
	"crypto/tls"
	"io"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/imgxfer/imgxfer/internal/testenv"
	"github.com/imgxfer/imgxfer/routing"
)

// These tests run real nginx with generated configurations on 127.0.0.1.

// startNginx starts nginx for the proxy side of rules and stops it when the test ends.
func startNginx(t *testing.T, rules *routing.Rules) (*testenv.Nginx, *testenv.CA) {
	t.Helper()
	ca, err := testenv.NewCA()
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	opts := testenv.NginxOptions{Dir: filepath.Join(dir, "nginx"), Rules: rules}
	if err := ca.WriteListenerFiles(dir, &opts, "127.0.0.1"); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	n, err := testenv.StartNginx(ctx, opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := n.Stop(); err != nil {
			t.Errorf("stop nginx: %v", err)
		}
	})
	return n, ca
}

func parseRules(t *testing.T, content string) *routing.Rules {
	t.Helper()
	rules, err := routing.Parse("rules.yaml", []byte(content))
	if err != nil {
		t.Fatal(err)
	}
	return rules
}

func get(t *testing.T, url string, header http.Header) (*http.Response, string) {
	t.Helper()
	req, err := http.NewRequest(http.MethodGet, url, nil)
	if err != nil {
		t.Fatal(err)
	}
	req.Header = header
	client := &http.Client{Transport: &http.Transport{Proxy: nil}, Timeout: 30 * time.Second}
	resp, err := client.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp, string(body)
}

func TestNginxKeepsUpstreamConnectionsAlive(t *testing.T) {
	var mu sync.Mutex
	peers := map[string]int{}
	upstream := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		peers[r.RemoteAddr]++
		mu.Unlock()
		_, _ = io.WriteString(w, "upstream")
	}))
	t.Cleanup(upstream.Close)

	n, _ := startNginx(t, parseRules(t, `routes:
  - hosts: [registry.prod.test]
    proxy: http://127.0.0.1:1
proxy:
  upstreams:
    - {host: registry.prod.test, url: "`+upstream.URL+`"}
`))
	const requests = 10
	for range requests {
		resp, body := get(t, "http://"+n.HTTPAddr+"/v2/", http.Header{"Mesh": {"registry.prod.test"}})
		if resp.StatusCode != http.StatusOK || body != "upstream" {
			t.Fatalf("GET through nginx = %d %q, expected the upstream's 200", resp.StatusCode, body)
		}
	}

	mu.Lock()
	defer mu.Unlock()
	// testenv runs one worker, and the requests come one after another, so one kept-alive
	// connection carries them all.
	if len(peers) != 1 {
		t.Errorf("upstream saw %d connections for %d requests, expected 1 kept alive: %v", len(peers), requests, peers)
	}
}

func TestNginxCustomHeaderName(t *testing.T) {
	var seen http.Header
	upstream := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		seen = r.Header.Clone()
		_, _ = io.WriteString(w, "upstream")
	}))
	t.Cleanup(upstream.Close)
	n, _ := startNginx(t, parseRules(t, `header: X-Mesh-Host
routes:
  - hosts: [registry.prod.test]
    proxy: http://127.0.0.1:1
proxy:
  upstreams:
    - {host: registry.prod.test, url: "`+upstream.URL+`"}
`))

	resp, body := get(t, "http://"+n.HTTPAddr+"/v2/", http.Header{"X-Mesh-Host": {"registry.prod.test"}})
	if resp.StatusCode != http.StatusOK || body != "upstream" {
		t.Fatalf("GET with X-Mesh-Host = %d %q, expected the upstream's 200", resp.StatusCode, body)
	}
	if values := seen.Values("X-Mesh-Host"); len(values) != 0 {
		t.Errorf("upstream received X-Mesh-Host %q, expected it removed", values)
	}

	resp, body = get(t, "http://"+n.HTTPAddr+"/v2/", http.Header{"Mesh": {"registry.prod.test"}})
	if resp.StatusCode != http.StatusBadRequest || !strings.Contains(body, "missing x-mesh-host header") {
		t.Errorf("GET with the default header only = %d %q, expected 400 naming x-mesh-host", resp.StatusCode, body)
	}
	if got := resp.Header.Get(routing.ProxyErrorHeader); got != "missing x-mesh-host header" {
		t.Errorf("%s = %q, expected the missing header's name", routing.ProxyErrorHeader, got)
	}
}

func TestNginxRealmRewrite(t *testing.T) {
	upstream := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/v2/":
			w.Header().Set("Www-Authenticate", `Bearer realm="https://`+r.Host+`/service/token",service="harbor-registry"`)
		case "/v2/other/":
			w.Header().Set("Www-Authenticate", `Bearer realm="https://auth.prod.test/token",service="registry"`)
		case "/v2/basic/":
			w.Header().Set("Www-Authenticate", `Basic realm="registry"`)
		default:
			_, _ = io.WriteString(w, "no challenge")
			return
		}
		w.WriteHeader(http.StatusUnauthorized)
	}))
	t.Cleanup(upstream.Close)
	rulesText := func(rewrite bool) string {
		value := "false"
		if rewrite {
			value = "true"
		}
		return `routes:
  - hosts: [registry.prod.test, "registry.port.test:5000"]
    proxy: http://127.0.0.1:1
proxy:
  realm_rewrite: ` + value + `
  upstreams:
    - {host: registry.prod.test, url: "` + upstream.URL + `"}
    - {host: "registry.port.test:5000", url: "` + upstream.URL + `"}
`
	}

	rewriting, ca := startNginx(t, parseRules(t, rulesText(true)))
	plain, _ := startNginx(t, parseRules(t, rulesText(false)))
	header := func(host string) http.Header { return http.Header{"Mesh": {host}} }

	tests := []struct {
		name     string
		nginx    *testenv.Nginx
		url      string
		host     string
		expected string
	}{
		{"registry's own realm", rewriting, "http://" + rewriting.HTTPAddr + "/v2/", "registry.prod.test",
			`Bearer realm="http://` + rewriting.HTTPAddr + `/service/token",service="harbor-registry"`},
		{"host with port, any case", rewriting, "http://" + rewriting.HTTPAddr + "/v2/", "Registry.Port.test:5000",
			`Bearer realm="http://` + rewriting.HTTPAddr + `/service/token",service="harbor-registry"`},
		{"realm on another host", rewriting, "http://" + rewriting.HTTPAddr + "/v2/other/", "registry.prod.test",
			`Bearer realm="https://auth.prod.test/token",service="registry"`},
		{"basic challenge", rewriting, "http://" + rewriting.HTTPAddr + "/v2/basic/", "registry.prod.test", `Basic realm="registry"`},
		{"switch off", plain, "http://" + plain.HTTPAddr + "/v2/", "registry.prod.test",
			`Bearer realm="https://registry.prod.test/service/token",service="harbor-registry"`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			resp, _ := get(t, tt.url, header(tt.host))
			if resp.StatusCode != http.StatusUnauthorized {
				t.Fatalf("status = %d, expected the upstream's 401", resp.StatusCode)
			}
			if values := resp.Header.Values("Www-Authenticate"); len(values) != 1 || values[0] != tt.expected {
				t.Errorf("Www-Authenticate = %q, expected %q", values, tt.expected)
			}
		})
	}

	t.Run("TLS listener", func(t *testing.T) {
		client := &http.Client{Transport: &http.Transport{Proxy: nil, TLSClientConfig: &tls.Config{RootCAs: ca.CertPool()}}, Timeout: 30 * time.Second}
		req, err := http.NewRequest(http.MethodGet, "https://"+rewriting.HTTPSAddr+"/v2/", nil)
		if err != nil {
			t.Fatal(err)
		}
		req.Header.Set("Mesh", "registry.prod.test")
		resp, err := client.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		expected := `Bearer realm="https://` + rewriting.HTTPSAddr + `/service/token",service="harbor-registry"`
		if got := resp.Header.Get("Www-Authenticate"); got != expected {
			t.Errorf("Www-Authenticate = %q, expected %q", got, expected)
		}
	})

	t.Run("response without challenge", func(t *testing.T) {
		resp, body := get(t, "http://"+rewriting.HTTPAddr+"/v2/library/", header("registry.prod.test"))
		if resp.StatusCode != http.StatusOK || body != "no challenge" {
			t.Fatalf("GET = %d %q, expected the upstream's 200", resp.StatusCode, body)
		}
		if values := resp.Header.Values("Www-Authenticate"); len(values) != 0 {
			t.Errorf("Www-Authenticate = %q, expected none", values)
		}
	})
}
