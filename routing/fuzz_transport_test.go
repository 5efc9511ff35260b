package routing

import (
	"errors"
	"io"
	"net/http"
	"net/url"
	"strings"
	"testing"
)

// capturingRoundTripper records the last request it was given and responds with 401 and the
// challenge in its field, or 200 when that is empty.
type capturingRoundTripper struct {
	last      *http.Request
	challenge string
}

func (c *capturingRoundTripper) RoundTrip(req *http.Request) (*http.Response, error) {
	c.last = req
	resp := &http.Response{StatusCode: http.StatusOK, Header: http.Header{}, Body: io.NopCloser(strings.NewReader("")), Request: req}
	if c.challenge != "" {
		resp.StatusCode = http.StatusUnauthorized
		resp.Header.Set("Www-Authenticate", c.challenge)
	}
	return resp, nil
}

func fuzzTransport(t testing.TB) (*Transport, *capturingRoundTripper, *capturingRoundTripper) {
	rules, err := Parse("fuzz.yaml", []byte(`routes:
  - hosts: ["*.prod.test", "registry.prod.test", "[::1]:5000", "10.0.0.7"]
    proxy: http://mesh-proxy.test:31080
`))
	if err != nil {
		t.Fatal(err)
	}
	transport, err := NewTransport(rules)
	if err != nil {
		t.Fatal(err)
	}
	proxy := &capturingRoundTripper{}
	direct := &capturingRoundTripper{}
	transport.proxies[0] = proxy
	transport.direct = direct
	return transport, proxy, direct
}

// checkHeaderValue fails unless value is a bare host[:port] in canonical form.
func checkHeaderValue(t *testing.T, source, value string) {
	t.Helper()
	if value == "" || strings.ContainsAny(value, "\r\n\t /@?#%\\") || value != strings.ToLower(value) {
		t.Fatalf("%q gives header value %q", source, value)
	}
	again, err := canonicalHost("https", value)
	if err != nil {
		t.Fatalf("header value %q from %q does not parse again: %v", value, source, err)
	}
	if again != value && !strings.HasSuffix(value, ":443") {
		t.Fatalf("header value %q from %q is not canonical: it normalises to %q", value, source, again)
	}
}

// FuzzTransportHeader sends a request for an arbitrary scheme and host through the
// transport. A routed request must reach the proxy with exactly one routing header
// holding a canonical host, and a direct one must carry none, even when the caller set
// one.
func FuzzTransportHeader(f *testing.F) {
	for _, seed := range []string{"registry.prod.test", "REGISTRY.prod.test:443", "[::1]:5000", "[0:0::1]:5000", "a.prod.test:8443",
		"x\r\ny.prod.test", "user@a.prod.test", "a.prod.test/path", "a.prod.test:0", "[fe80::1%eth0]:5000", "10.0.0.7:80", "other.test"} {
		f.Add("https", seed, "forged.test")
		f.Add("http", seed, "")
	}
	f.Fuzz(func(t *testing.T, scheme, host, forged string) {
		transport, proxy, direct := fuzzTransport(t)
		req := &http.Request{Method: http.MethodGet, URL: &url.URL{Scheme: scheme, Host: host, Path: "/v2/"}, Header: http.Header{}}
		if forged != "" {
			req.Header["mesh"] = []string{forged}
		}
		resp, err := transport.RoundTrip(req)
		if err != nil {
			if proxy.last != nil || direct.last != nil {
				t.Fatalf("request for %q failed with %v after it was sent", host, err)
			}
			if strings.Contains(err.Error(), "\n") {
				t.Fatalf("error for %q spans several lines: %q", host, err)
			}
			return
		}
		resp.Body.Close()

		switch {
		case proxy.last != nil:
			values := []string{}
			for key, v := range proxy.last.Header {
				if strings.EqualFold(key, "mesh") {
					values = append(values, v...)
				}
			}
			if len(values) != 1 {
				t.Fatalf("proxied request for %q carries routing header values %q", host, values)
			}
			checkHeaderValue(t, host, values[0])
			if proxy.last.URL.Host != "mesh-proxy.test:31080" {
				t.Fatalf("proxied request for %q went to %q", host, proxy.last.URL.Host)
			}
		case direct.last != nil:
			if hasHeader(direct.last.Header, "mesh") {
				t.Fatalf("direct request for %q carries the routing header", host)
			}
		default:
			t.Fatalf("request for %q succeeded without being sent", host)
		}
	})
}

// FuzzRealmRouting feeds arbitrary challenges from a routed registry to the transport and
// then requests the realm they name. Nothing may panic, and a token request routed as
// the registry's must carry that registry's canonical host.
func FuzzRealmRouting(f *testing.F) {
	f.Add(`Bearer realm="http://mesh-proxy.test:31080/service/token",service="registry.prod.test"`, "/service/token", "registry.prod.test")
	f.Add(`Bearer realm="https://auth.prod.test/token",service="x"`, "/token", "x")
	f.Add(`Bearer realm="http://MESH-PROXY.test:31080/a b",service=""`, "/a%20b", "")
	f.Add(`Basic realm="x"`, "/", "")
	f.Add(`Bearer realm="//mesh-proxy.test:31080/t"`, "/t", "")
	f.Fuzz(func(t *testing.T, challenge, path, service string) {
		transport, proxy, _ := fuzzTransport(t)
		proxy.challenge = challenge
		req := &http.Request{Method: http.MethodGet, URL: &url.URL{Scheme: "https", Host: "registry.prod.test", Path: "/v2/"}, Header: http.Header{}}
		if resp, err := transport.RoundTrip(req); err == nil {
			resp.Body.Close()
		}

		proxy.last, proxy.challenge = nil, ""
		token := &http.Request{Method: http.MethodGet, URL: &url.URL{Scheme: "http", Host: "mesh-proxy.test:31080", Path: path, RawQuery: url.Values{"service": {service}}.Encode()}, Header: http.Header{}}
		resp, err := transport.RoundTrip(token)
		if err != nil {
			if errors.Is(err, ErrProxyRejected) {
				t.Fatalf("token request rejected as by the proxy: %v", err)
			}
			return
		}
		resp.Body.Close()
		if proxy.last != nil {
			if got := proxy.last.Header.Get("Mesh"); got != "registry.prod.test" {
				t.Fatalf("token request routed with header %q, want the registry that announced the realm", got)
			}
		}
	})
}
