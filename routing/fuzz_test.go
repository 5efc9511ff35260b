package routing

import (
	"errors"
	"net/http"
	"strings"
	"testing"
)

// FuzzParse feeds arbitrary rules files to the parser: it must never panic, and every
// rejection must be one line wrapping ErrInvalidRules.
func FuzzParse(f *testing.F) {
	f.Add([]byte("routes:\n  - hosts: [registry.prod.test, \"*.prod.test\"]\n    proxy: http://p.test:31080\n"))
	f.Add([]byte("version: 1\nheader: x-mesh\nregistries:\n  - host: \"[::1]:5000\"\n    tls: disabled\n"))
	f.Add([]byte("routes:\n  - hosts: [a.test]\n    proxy: https://p.test:1\n    address: 10.0.0.7:1\n    tls: {insecure: true}\n"))
	f.Add([]byte("routes: yes\n"))
	f.Add([]byte("routes:\n  - hosts: [a.test\n"))
	f.Add([]byte("\x00\xff: ["))
	f.Fuzz(func(t *testing.T, data []byte) {
		rules, err := Parse("fuzz.yaml", data)
		if err != nil {
			if !errors.Is(err, ErrInvalidRules) {
				t.Fatalf("error does not wrap ErrInvalidRules: %v", err)
			}
			if strings.Contains(err.Error(), "\n") {
				t.Fatalf("error spans several lines: %q", err)
			}
			return
		}
		if rules.Header == "" {
			t.Fatal("accepted rules without a header name")
		}
		for _, route := range rules.Routes {
			if route.ProxyURL() == nil || route.ProxyURL().Host == "" {
				t.Fatalf("accepted a route without proxy host: %+v", route)
			}
		}
	})
}

// FuzzHeaderValue checks that whatever host a request names, the routing header that
// leaves carries a plain host[:port]: no CR/LF, spaces, path, userinfo or upper case.
func FuzzHeaderValue(f *testing.F) {
	for _, seed := range []string{"registry.prod.test", "REGISTRY.prod.test:443", "[::1]:5000", "a.prod.test:8443", "x\r\ny.prod.test", "user@a.prod.test", "a.prod.test/path", "a.prod.test:0", "a.prod.test:99999", "[::1", "a b.prod.test"} {
		f.Add("https", seed)
		f.Add("http", seed)
	}
	rules, err := Parse("fuzz.yaml", []byte("routes:\n  - hosts: [\"*.prod.test\", \"registry.prod.test\", \"[::1]:5000\"]\n    proxy: http://127.0.0.1:1\n"))
	if err != nil {
		f.Fatal(err)
	}
	f.Fuzz(func(t *testing.T, scheme, host string) {
		dest, err := parseTarget(scheme, host)
		if err != nil {
			return
		}
		if rules.matchIndex(dest) < 0 {
			return
		}
		value := dest.canonical
		if value == "" || strings.ContainsAny(value, "\r\n\t /@?#") || value != strings.ToLower(value) {
			t.Fatalf("host %q gives header value %q", host, value)
		}
		if strings.HasSuffix(value, ":") || strings.Contains(value, "::") && !strings.HasPrefix(value, "[") {
			t.Fatalf("host %q gives malformed header value %q", host, value)
		}
		header := http.Header{}
		header.Set("Mesh", value)
		if header.Get("Mesh") != value {
			t.Fatalf("header value %q does not survive http.Header", value)
		}
	})
}

// FuzzParseChallenge checks that WWW-Authenticate parsing never panics and never returns
// a parameter name with spaces or upper case.
func FuzzParseChallenge(f *testing.F) {
	f.Add(`Bearer realm="https://auth.example.com/token",service="registry",scope="repository:a:pull,push"`)
	f.Add(`Basic realm="x"`)
	f.Add(`Bearer realm="a\"b`)
	f.Add(`Bearer ,,,=,"`)
	f.Fuzz(func(t *testing.T, value string) {
		_, params := parseChallenge(value)
		for name := range params {
			if name != strings.ToLower(name) || strings.ContainsAny(name, " \t") {
				t.Fatalf("parameter name %q from %q", name, value)
			}
		}
	})
}
