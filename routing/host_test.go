package routing

import (
	"strings"
	"testing"
)

func TestCanonicalHostNormalises(t *testing.T) {
	tests := []struct {
		scheme, host, want string
	}{
		{"https", "Registry.Prod.Test", "registry.prod.test"},
		{"https", "registry.prod.test:443", "registry.prod.test"},
		{"http", "registry.prod.test:80", "registry.prod.test"},
		{"http", "registry.prod.test:443", "registry.prod.test:443"},
		{"https", "registry.prod.test:0443", "registry.prod.test"},
		{"https", "[::1]:5000", "[::1]:5000"},
		{"https", "[0:0:0:0:0:0:0:1]:5000", "[::1]:5000"},
		{"https", "[2001:DB8::A]", "[2001:db8::a]"},
		{"https", "[2001:db8:0:0:0:0:0:a]:443", "[2001:db8::a]"},
		{"https", "[::ffff:127.0.0.1]:5000", "[::ffff:127.0.0.1]:5000"},
		{"https", "127.0.0.1:5000", "127.0.0.1:5000"},
	}
	for _, tt := range tests {
		got, err := canonicalHost(tt.scheme, tt.host)
		if err != nil {
			t.Errorf("canonicalHost(%s, %q): %v", tt.scheme, tt.host, err)
			continue
		}
		if got != tt.want {
			t.Errorf("canonicalHost(%s, %q) = %q, want %q", tt.scheme, tt.host, got, tt.want)
		}
	}
}

func TestCanonicalHostRejects(t *testing.T) {
	tests := []struct {
		host, want string
	}{
		{"[fe80::1%eth0]:5000", "zone"},
		{"registry.prod.test:+443", "invalid port"},
		{"registry.prod.test: 443", "invalid port"},
		{"registry.prod.test:0", "invalid port"},
		{"registry.prod.test:65536", "invalid port"},
		{"registry.prod.test:", "missing port"},
		{"::1", "brackets"},
		{"[::1", "missing ']'"},
		{"[127.0.0.1]", "not an IPv6 address"},
		{"user@registry.prod.test", "not a valid hostname"},
		{"registry.prod.test/v2", "not a valid hostname"},
		{"registry.prod.test\r\nX: y", "not a valid hostname"},
		{"registry .prod.test", "not a valid hostname"},
		{"registry.prod.test.", "not a valid hostname"},
	}
	for _, tt := range tests {
		_, err := canonicalHost("https", tt.host)
		if err == nil {
			t.Errorf("canonicalHost(%q) accepted it", tt.host)
			continue
		}
		if !strings.Contains(err.Error(), tt.want) || !strings.Contains(err.Error(), "invalid host") {
			t.Errorf("canonicalHost(%q) = %q, want an invalid host error about %q", tt.host, err, tt.want)
		}
	}
}

func TestPatternMatchesEverySpelling(t *testing.T) {
	rules := rulesFor(t, "routes:\n  - hosts: [\"[::1]:5000\", \"Registry.Prod.Test\"]\n    proxy: http://127.0.0.1:1\n")
	for _, host := range []string{"[::1]:5000", "[0:0::1]:5000", "[0000:0000:0000:0000:0000:0000:0000:0001]:5000", "registry.prod.test", "REGISTRY.PROD.TEST:443"} {
		if rules.Match("https", host) == nil {
			t.Errorf("no route matches %q", host)
		}
	}
	if rules.Match("https", "[::2]:5000") != nil {
		t.Error("a route matches [::2]:5000")
	}
}
