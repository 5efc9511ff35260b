package routing

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"sync"
	"testing"
)

// recorded is what a fake proxy or registry saw of one request.
type recorded struct {
	method string
	host   string // the Host header as received
	path   string
	mesh   []string
	body   string
}

// recorder is an httptest server that records every request it serves.
type recorder struct {
	*httptest.Server
	mu       sync.Mutex
	requests []recorded
}

func newRecorder(t *testing.T, handler http.HandlerFunc) *recorder {
	t.Helper()
	rec := &recorder{}
	rec.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		rec.mu.Lock()
		rec.requests = append(rec.requests, recorded{
			method: r.Method,
			host:   r.Host,
			path:   r.URL.RequestURI(),
			mesh:   r.Header.Values("Mesh"),
			body:   string(body),
		})
		rec.mu.Unlock()
		if handler != nil {
			handler(w, r)
		}
	}))
	t.Cleanup(rec.Close)
	return rec
}

func (rec *recorder) seen() []recorded {
	rec.mu.Lock()
	defer rec.mu.Unlock()
	return append([]recorded(nil), rec.requests...)
}

func rulesFor(t *testing.T, yamlText string) *Rules {
	t.Helper()
	rules, err := Parse("test.yaml", []byte(yamlText))
	if err != nil {
		t.Fatalf("Parse: %v", err)
	}
	return rules
}

func newTestTransport(t *testing.T, rules *Rules) *Transport {
	t.Helper()
	transport, err := NewTransport(rules)
	if err != nil {
		t.Fatalf("NewTransport: %v", err)
	}
	t.Cleanup(transport.CloseIdleConnections)
	return transport
}

func TestTransportProxiesMatchingHost(t *testing.T) {
	proxy := newRecorder(t, nil)
	rules := rulesFor(t, "routes:\n  - hosts: [registry.prod.test]\n    proxy: "+proxy.URL+"\n")
	client := &http.Client{Transport: newTestTransport(t, rules)}

	resp, err := client.Get("https://registry.prod.test/v2/team/app/manifests/1.4")
	if err != nil {
		t.Fatalf("GET: %v", err)
	}
	resp.Body.Close()

	got := proxy.seen()
	if len(got) != 1 {
		t.Fatalf("proxy saw %d requests, want 1", len(got))
	}
	if got[0].path != "/v2/team/app/manifests/1.4" {
		t.Errorf("path = %q", got[0].path)
	}
	if len(got[0].mesh) != 1 || got[0].mesh[0] != "registry.prod.test" {
		t.Errorf("mesh header = %q, want [registry.prod.test]", got[0].mesh)
	}
	proxyHost := strings.TrimPrefix(proxy.URL, "http://")
	if got[0].host != proxyHost {
		t.Errorf("Host header = %q, want the proxy's %q", got[0].host, proxyHost)
	}
}

func TestTransportDirectHasNoHeader(t *testing.T) {
	proxy := newRecorder(t, nil)
	direct := newRecorder(t, nil)
	rules := rulesFor(t, "routes:\n  - hosts: [registry.prod.test]\n    proxy: "+proxy.URL+"\n")
	client := &http.Client{Transport: newTestTransport(t, rules)}

	req, err := http.NewRequest(http.MethodGet, direct.URL+"/v2/", nil)
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Mesh", "registry.prod.test")
	req.Header["mesh"] = []string{"lowercase.test"}
	resp, err := client.Do(req)
	if err != nil {
		t.Fatalf("GET: %v", err)
	}
	resp.Body.Close()

	if n := len(proxy.seen()); n != 0 {
		t.Errorf("proxy saw %d requests for an unrouted host, want 0", n)
	}
	got := direct.seen()
	if len(got) != 1 {
		t.Fatalf("registry saw %d requests, want 1", len(got))
	}
	if len(got[0].mesh) != 0 {
		t.Errorf("direct request carried mesh header %q", got[0].mesh)
	}
	if req.Header.Get("Mesh") != "registry.prod.test" || req.Header["mesh"][0] != "lowercase.test" {
		t.Errorf("caller's headers changed: %v", req.Header)
	}
}

func TestTransportDoesNotMutateRequest(t *testing.T) {
	proxy := newRecorder(t, nil)
	rules := rulesFor(t, "routes:\n  - hosts: [registry.prod.test]\n    proxy: "+proxy.URL+"\n")
	transport := newTestTransport(t, rules)

	req, err := http.NewRequest(http.MethodPut, "https://registry.prod.test/v2/a/blobs/uploads/1?digest=sha256:0", strings.NewReader("layer"))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Authorization", "Bearer token")
	before := req.URL.String()
	beforeHost := req.Host

	resp, err := transport.RoundTrip(req)
	if err != nil {
		t.Fatalf("RoundTrip: %v", err)
	}
	resp.Body.Close()

	if resp.Request != req {
		t.Errorf("resp.Request is %v, want the caller's request, so relative locations and auth challenges resolve against the registry", resp.Request.URL)
	}
	if req.URL.String() != before {
		t.Errorf("URL changed to %q, want %q", req.URL, before)
	}
	if req.Host != beforeHost {
		t.Errorf("Host changed to %q, want %q", req.Host, beforeHost)
	}
	if v := req.Header.Values("Mesh"); len(v) != 0 {
		t.Errorf("caller's request gained mesh header %q", v)
	}
	got := proxy.seen()
	if len(got) != 1 || got[0].body != "layer" || got[0].method != http.MethodPut {
		t.Errorf("proxy saw %+v, want one PUT with the body", got)
	}
}

func TestTransportHeaderValue(t *testing.T) {
	proxy := newRecorder(t, nil)
	rules := rulesFor(t, `routes:
  - hosts: [registry.prod.test, "*.prod.example.com", "[::1]:5000", docker.io, "r.port.test:5000"]
    proxy: `+proxy.URL+"\n")
	transport := newTestTransport(t, rules)

	tests := []struct {
		url  string
		want string // mesh header, or "" when the request must not reach the proxy
	}{
		{"https://registry.prod.test/v2/", "registry.prod.test"},
		{"https://REGISTRY.Prod.Test:443/v2/", "registry.prod.test"},
		{"http://registry.prod.test:80/v2/", "registry.prod.test"},
		{"https://registry.prod.test:5000/v2/", "registry.prod.test:5000"},
		{"http://registry.prod.test:443/v2/", "registry.prod.test:443"},
		{"https://a.prod.example.com/v2/", "a.prod.example.com"},
		{"https://b.a.prod.example.com:8443/token", "b.a.prod.example.com:8443"},
		{"https://prod.example.com/v2/", ""},
		{"https://[::1]:5000/v2/", "[::1]:5000"},
		{"https://[0:0:0:0:0:0:0:1]:5000/v2/", "[::1]:5000"},
		{"https://registry-1.docker.io/v2/", "registry-1.docker.io"},
		{"https://r.port.test:5000/v2/", "r.port.test:5000"},
		{"https://r.port.test/v2/", ""},
	}
	for _, tt := range tests {
		t.Run(tt.url, func(t *testing.T) {
			before := len(proxy.seen())
			req, err := http.NewRequest(http.MethodGet, tt.url, nil)
			if err != nil {
				t.Fatal(err)
			}
			if tt.want == "" {
				u, _ := url.Parse(tt.url)
				if rules.Match(u.Scheme, u.Host) != nil {
					t.Errorf("Match(%s) found a route, want none", u.Host)
				}
				return
			}
			resp, err := transport.RoundTrip(req)
			if err != nil {
				t.Fatalf("RoundTrip: %v", err)
			}
			resp.Body.Close()
			got := proxy.seen()
			if len(got) != before+1 {
				t.Fatalf("proxy saw %d new requests, want 1", len(got)-before)
			}
			if last := got[len(got)-1].mesh; len(last) != 1 || last[0] != tt.want {
				t.Errorf("mesh header = %q, want %q", last, tt.want)
			}
		})
	}
}

// TestTransportRoutesEachHop follows a registry that responds with absolute URLs naming
// other hosts: a token realm, an upload Location and a redirect to blob storage. Each
// hop must reach the proxy with the header of its own host.
func TestTransportRoutesEachHop(t *testing.T) {
	var proxy *recorder
	proxy = newRecorder(t, func(w http.ResponseWriter, r *http.Request) {
		switch r.Header.Get("Mesh") + " " + r.URL.Path {
		case "registry.prod.test /v2/a/blobs/sha256:1":
			http.Redirect(w, r, "https://blobs.prod.test/storage/1", http.StatusTemporaryRedirect)
		case "blobs.prod.test /storage/1":
			_, _ = io.WriteString(w, "blob content")
		case "registry.prod.test /v2/a/blobs/uploads/":
			w.Header().Set("Location", "https://registry.prod.test/v2/a/blobs/uploads/uuid-1?state=x")
			w.WriteHeader(http.StatusAccepted)
		case "auth.prod.test /token":
			_, _ = io.WriteString(w, `{"token":"t"}`)
		default:
			w.WriteHeader(http.StatusCreated)
		}
	})
	rules := rulesFor(t, "routes:\n  - hosts: [registry.prod.test, auth.prod.test, blobs.prod.test]\n    proxy: "+proxy.URL+"\n")
	client := &http.Client{Transport: newTestTransport(t, rules)}

	resp, err := client.Get("https://registry.prod.test/v2/a/blobs/sha256:1")
	if err != nil {
		t.Fatalf("blob GET: %v", err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if string(body) != "blob content" {
		t.Errorf("redirected blob body = %q", body)
	}

	resp, err = client.Get("https://auth.prod.test/token?scope=repository:a:pull")
	if err != nil {
		t.Fatalf("token GET: %v", err)
	}
	resp.Body.Close()

	resp, err = client.Post("https://registry.prod.test/v2/a/blobs/uploads/", "", nil)
	if err != nil {
		t.Fatalf("upload POST: %v", err)
	}
	resp.Body.Close()
	location, err := resp.Location()
	if err != nil {
		t.Fatalf("upload Location: %v", err)
	}
	putReq, _ := http.NewRequest(http.MethodPut, location.String()+"&digest=sha256:1", bytes.NewReader([]byte("data")))
	resp, err = client.Do(putReq)
	if err != nil {
		t.Fatalf("upload PUT: %v", err)
	}
	resp.Body.Close()

	want := []string{
		"registry.prod.test GET /v2/a/blobs/sha256:1",
		"blobs.prod.test GET /storage/1",
		"auth.prod.test GET /token?scope=repository:a:pull",
		"registry.prod.test POST /v2/a/blobs/uploads/",
		"registry.prod.test PUT /v2/a/blobs/uploads/uuid-1?state=x&digest=sha256:1",
	}
	got := proxy.seen()
	if len(got) != len(want) {
		t.Fatalf("proxy saw %d requests, want %d: %+v", len(got), len(want), got)
	}
	for i, r := range got {
		line := strings.Join(r.mesh, ",") + " " + r.method + " " + r.path
		if line != want[i] {
			t.Errorf("request %d = %q, want %q", i, line, want[i])
		}
	}
}

func TestTransportRejectsBadHost(t *testing.T) {
	rules := rulesFor(t, "routes:\n  - hosts: [registry.prod.test]\n    proxy: http://127.0.0.1:1\n")
	transport := newTestTransport(t, rules)

	body := &closeTracker{Reader: strings.NewReader("x")}
	req := &http.Request{
		Method: http.MethodPut,
		URL:    &url.URL{Scheme: "https", Host: "bad host:1"},
		Header: http.Header{},
		Body:   body,
	}
	_, err := transport.RoundTrip(req)
	if err == nil || !strings.Contains(err.Error(), "bad host") {
		t.Errorf("RoundTrip error = %v, want one naming the host", err)
	}
	if !body.closed {
		t.Error("request body was not closed on error")
	}
}

func TestTransportProxyTLSWithCAFile(t *testing.T) {
	proxy := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.WriteString(w, r.Header.Get("Mesh"))
	}))
	defer proxy.Close()
	caFile := writeServerCA(t, proxy)

	verified := rulesFor(t, "routes:\n  - hosts: [registry.prod.test]\n    proxy: "+proxy.URL+"\n    tls: {ca_file: "+caFile+"}\n")
	client := &http.Client{Transport: newTestTransport(t, verified)}
	resp, err := client.Get("https://registry.prod.test/v2/")
	if err != nil {
		t.Fatalf("GET through https proxy with ca_file: %v", err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if string(body) != "registry.prod.test" {
		t.Errorf("proxy saw mesh %q", body)
	}

	unverified := rulesFor(t, "routes:\n  - hosts: [registry.prod.test]\n    proxy: "+proxy.URL+"\n")
	client = &http.Client{Transport: newTestTransport(t, unverified)}
	_, err = client.Get("https://registry.prod.test/v2/")
	if err == nil || !strings.Contains(err.Error(), "certificate") {
		t.Errorf("GET without ca_file: error %v, want a certificate error", err)
	}

	insecure := rulesFor(t, "routes:\n  - hosts: [registry.prod.test]\n    proxy: "+proxy.URL+"\n    tls: {insecure: true}\n")
	client = &http.Client{Transport: newTestTransport(t, insecure)}
	resp, err = client.Get("https://registry.prod.test/v2/")
	if err != nil {
		t.Fatalf("GET with insecure: %v", err)
	}
	resp.Body.Close()
}

func TestTransportDirectRegistryTLS(t *testing.T) {
	registry := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.WriteHeader(http.StatusOK)
	}))
	defer registry.Close()
	host := strings.TrimPrefix(registry.URL, "https://")

	plain := newTestTransport(t, Empty())
	_, err := (&http.Client{Transport: plain}).Get(registry.URL + "/v2/")
	if err == nil {
		t.Fatal("GET to a self-signed registry without settings succeeded")
	}

	caFile := writeServerCA(t, registry)
	withCA := newTestTransport(t, rulesFor(t, "registries:\n  - host: \""+host+"\"\n    ca_file: "+caFile+"\n"))
	resp, err := (&http.Client{Transport: withCA}).Get(registry.URL + "/v2/")
	if err != nil {
		t.Fatalf("GET with ca_file: %v", err)
	}
	resp.Body.Close()

	insecure := newTestTransport(t, rulesFor(t, "registries:\n  - host: \""+host+"\"\n    tls: insecure\n"))
	resp, err = (&http.Client{Transport: insecure}).Get(registry.URL + "/v2/")
	if err != nil {
		t.Fatalf("GET with tls insecure: %v", err)
	}
	resp.Body.Close()
}

func TestNewTransportBadCAFile(t *testing.T) {
	dir := t.TempDir()
	notPEM := dir + "/ca.pem"
	if err := writeFile(notPEM, "not a certificate"); err != nil {
		t.Fatal(err)
	}
	rules := rulesFor(t, "routes:\n  - hosts: [a.test]\n    proxy: https://p.test:1\n    tls: {ca_file: "+notPEM+"}\n")
	_, err := NewTransport(rules)
	if err == nil || !strings.Contains(err.Error(), "routes[0].tls") || !strings.Contains(err.Error(), "no PEM certificate") {
		t.Errorf("NewTransport error = %v, want one naming routes[0].tls and the problem", err)
	}
}

type closeTracker struct {
	io.Reader
	closed bool
}

func (c *closeTracker) Close() error {
	c.closed = true
	return nil
}

func TestTransportReportsProxyRejection(t *testing.T) {
	proxy := newRecorder(t, func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set(ProxyErrorHeader, "host not allowed")
		http.Error(w, "not on the allowlist", http.StatusForbidden)
	})
	rules := rulesFor(t, "routes:\n  - hosts: [registry.prod.test]\n    proxy: "+proxy.URL+"\n")
	transport := newTestTransport(t, rules)

	var rejections []error
	ctx := WithRejectionHandler(context.Background(), func(err error) { rejections = append(rejections, err) })
	req, _ := http.NewRequestWithContext(ctx, http.MethodHead, "https://registry.prod.test/v2/a/manifests/1", nil)
	resp, err := transport.RoundTrip(req)
	if err != nil {
		t.Fatalf("RoundTrip: %v", err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusForbidden {
		t.Errorf("status %d, want the proxy's 403", resp.StatusCode)
	}
	if !strings.Contains(string(body), "allowlist") || !strings.Contains(string(body), "registry.prod.test") {
		t.Errorf("body %q does not explain the rejection", body)
	}

	if len(rejections) != 1 {
		t.Fatalf("rejection handler called %d times, want 1", len(rejections))
	}
	rejection := rejections[0]
	if !errors.Is(rejection, ErrProxyRejected) {
		t.Fatalf("rejection = %v, want ErrProxyRejected", rejection)
	}
	for _, want := range []string{"registry.prod.test", "403", "host not allowed", strings.TrimPrefix(proxy.URL, "http://")} {
		if !strings.Contains(rejection.Error(), want) {
			t.Errorf("rejection %q lacks %q", rejection, want)
		}
	}
}

func TestTransportPassesRegistryForbidden(t *testing.T) {
	proxy := newRecorder(t, func(w http.ResponseWriter, r *http.Request) {
		http.Error(w, `{"errors":[{"code":"DENIED"}]}`, http.StatusForbidden)
	})
	rules := rulesFor(t, "routes:\n  - hosts: [registry.prod.test]\n    proxy: "+proxy.URL+"\n")
	transport := newTestTransport(t, rules)

	called := false
	ctx := WithRejectionHandler(context.Background(), func(error) { called = true })
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, "https://registry.prod.test/v2/", nil)
	resp, err := transport.RoundTrip(req)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if !strings.Contains(string(body), "DENIED") {
		t.Errorf("a registry's own 403 body was replaced: %q", body)
	}
	if called {
		t.Error("a registry's own 403 was reported as a proxy rejection")
	}
}

func TestTransportRelativeLocationStaysRouted(t *testing.T) {
	proxy := newRecorder(t, func(w http.ResponseWriter, r *http.Request) {
		if r.Method == http.MethodPost {
			w.Header().Set("Location", "/v2/a/blobs/uploads/uuid-2")
			w.WriteHeader(http.StatusAccepted)
			return
		}
		w.WriteHeader(http.StatusCreated)
	})
	rules := rulesFor(t, "routes:\n  - hosts: [registry.prod.test]\n    proxy: "+proxy.URL+"\n")
	client := &http.Client{Transport: newTestTransport(t, rules)}

	resp, err := client.Post("https://registry.prod.test/v2/a/blobs/uploads/", "", nil)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	location, err := resp.Location()
	if err != nil {
		t.Fatal(err)
	}
	if location.Host != "registry.prod.test" {
		t.Fatalf("relative Location resolved to %s, want a URL on registry.prod.test", location)
	}

	put, _ := http.NewRequest(http.MethodPut, location.String(), strings.NewReader("x"))
	resp, err = client.Do(put)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	got := proxy.seen()
	if len(got) != 2 || len(got[1].mesh) != 1 || got[1].mesh[0] != "registry.prod.test" {
		t.Errorf("PUT to the relative location reached the proxy as %+v, want mesh registry.prod.test", got)
	}
}

func TestTransportProxyAddress(t *testing.T) {
	proxy := newRecorder(t, nil)
	address := strings.TrimPrefix(proxy.URL, "http://")
	rules := rulesFor(t, "routes:\n  - hosts: [registry.prod.test]\n    proxy: http://mesh-proxy.invalid:31080\n    address: \""+address+"\"\n")
	client := &http.Client{Transport: newTestTransport(t, rules)}

	resp, err := client.Get("https://registry.prod.test/v2/")
	if err != nil {
		t.Fatalf("GET through a proxy given by address: %v", err)
	}
	resp.Body.Close()
	got := proxy.seen()
	if len(got) != 1 {
		t.Fatalf("proxy saw %d requests, want 1", len(got))
	}
	if got[0].host != "mesh-proxy.invalid:31080" {
		t.Errorf("Host header = %q, want the proxy URL's host", got[0].host)
	}
	if len(got[0].mesh) != 1 || got[0].mesh[0] != "registry.prod.test" {
		t.Errorf("mesh header = %q", got[0].mesh)
	}
}

func TestTransportRejectionForHeaderMismatch(t *testing.T) {
	proxy := newRecorder(t, func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set(ProxyErrorHeader, "missing mesh header")
		http.Error(w, "missing mesh header", http.StatusBadRequest)
	})
	rules := rulesFor(t, "header: x-route-to\nroutes:\n  - hosts: [registry.prod.test]\n    proxy: "+proxy.URL+"\n")
	transport := newTestTransport(t, rules)

	var rejection error
	ctx := WithRejectionHandler(context.Background(), func(err error) { rejection = err })
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, "https://registry.prod.test/v2/", nil)
	resp, err := transport.RoundTrip(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if rejection == nil {
		t.Fatal("the 400 with Mesh-Proxy-Error was not reported as a rejection")
	}
	for _, want := range []string{`"X-Route-To" header`, "header: in the rules"} {
		if !strings.Contains(rejection.Error(), want) {
			t.Errorf("rejection %q lacks %q", rejection, want)
		}
	}
	if strings.Contains(rejection.Error(), "allowlist") {
		t.Errorf("rejection %q blames the allowlist for a header mismatch", rejection)
	}
}
