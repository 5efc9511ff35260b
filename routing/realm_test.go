package routing

import (
	"io"
	"net/http"
	"strings"
	"testing"
)

func TestParseChallenge(t *testing.T) {
	tests := []struct {
		value  string
		scheme string
		params map[string]string
	}{
		{
			`Bearer realm="https://auth.example.com/token",service="registry.example.com",scope="repository:a/b:pull,push"`,
			"Bearer",
			map[string]string{"realm": "https://auth.example.com/token", "service": "registry.example.com", "scope": "repository:a/b:pull,push"},
		},
		{`Basic realm="Registry Realm"`, "Basic", map[string]string{"realm": "Registry Realm"}},
		{`bearer Realm=https://a.test/t, service=s`, "bearer", map[string]string{"realm": "https://a.test/t", "service": "s"}},
		{`Bearer realm="a\"b"`, "Bearer", map[string]string{"realm": `a"b`}},
		{`Bearer`, "Bearer", map[string]string{}},
	}
	for _, tt := range tests {
		scheme, params := parseChallenge(tt.value)
		if scheme != tt.scheme {
			t.Errorf("parseChallenge(%q) scheme = %q, want %q", tt.value, scheme, tt.scheme)
		}
		if len(params) != len(tt.params) {
			t.Errorf("parseChallenge(%q) params = %v, want %v", tt.value, params, tt.params)
		}
		for key, want := range tt.params {
			if params[key] != want {
				t.Errorf("parseChallenge(%q)[%s] = %q, want %q", tt.value, key, params[key], want)
			}
		}
	}
}

// TestTransportRealmOnProxy follows an older proxy configuration that rewrites the realm to
// the proxy's own address: the token request must reach the proxy with the header of the
// registry that was challenged.
func TestTransportRealmOnProxy(t *testing.T) {
	var proxyURL string
	proxy := newRecorder(t, func(w http.ResponseWriter, r *http.Request) {
		switch {
		case r.URL.Path == "/v2/":
			w.Header().Set("Www-Authenticate", `Bearer realm="`+proxyURL+`/service/token",service="harbor-registry"`)
			w.WriteHeader(http.StatusUnauthorized)
		case r.URL.Path == "/service/token":
			_, _ = io.WriteString(w, r.Header.Get("Mesh"))
		}
	})
	proxyURL = proxy.URL
	rules := rulesFor(t, "routes:\n  - hosts: [registry.prod.test]\n    proxy: "+proxy.URL+"\n")
	client := &http.Client{Transport: newTestTransport(t, rules)}

	before, err := client.Get(proxy.URL + "/service/token?service=harbor-registry")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(before.Body)
	before.Body.Close()
	if len(body) != 0 {
		t.Errorf("a token request before any challenge carried mesh %q, want none", body)
	}

	resp, err := client.Get("https://registry.prod.test/v2/")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusUnauthorized {
		t.Fatalf("status %d, want the 401 challenge", resp.StatusCode)
	}

	token, err := client.Get(proxy.URL + "/service/token?service=harbor-registry&scope=repository:a:pull")
	if err != nil {
		t.Fatal(err)
	}
	body, _ = io.ReadAll(token.Body)
	token.Body.Close()
	if string(body) != "registry.prod.test" {
		t.Errorf("token request reached the proxy with mesh %q, want registry.prod.test", body)
	}

	other, err := client.Get(proxy.URL + "/service/token?service=other")
	if err != nil {
		t.Fatal(err)
	}
	body, _ = io.ReadAll(other.Body)
	other.Body.Close()
	if strings.TrimSpace(string(body)) != "" {
		t.Errorf("a token request for another service carried mesh %q, want none", body)
	}
}
