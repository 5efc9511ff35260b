package registry

import (
	"errors"
	"net/http"
	"strings"
	"testing"

	"github.com/regclient/regclient/types/errs"

	"github.com/imgxfer/imgxfer/routing"
)

func redirectRules(t *testing.T) *routing.Rules {
	t.Helper()
	rules, err := routing.Parse("rules.yaml", []byte(`routes:
  - hosts: [registry.prod.test, "*.blobs.prod.test"]
    proxy: http://127.0.0.1:1
registries:
  - host: cdn.allowed.test
  - host: "pinned.allowed.test:8443"
`))
	if err != nil {
		t.Fatal(err)
	}
	return rules
}

func redirectChain(t *testing.T, urls ...string) (*http.Request, []*http.Request) {
	t.Helper()
	var via []*http.Request
	for _, u := range urls[:len(urls)-1] {
		req, err := http.NewRequest(http.MethodGet, u, nil)
		if err != nil {
			t.Fatal(err)
		}
		via = append(via, req)
	}
	next, err := http.NewRequest(http.MethodGet, urls[len(urls)-1], nil)
	if err != nil {
		t.Fatal(err)
	}
	return next, via
}

func TestRedirectPolicyRejectsUnroutedTarget(t *testing.T) {
	policy := redirectPolicy{rules: redirectRules(t)}
	req, via := redirectChain(t, "https://registry.prod.test/v2/team/app/blobs/sha256:1", "https://storage.elsewhere.test/data?sig=1")

	err := policy.check(req, via)
	if !errors.Is(err, ErrUnroutedRedirect) {
		t.Fatalf("error %v, want ErrUnroutedRedirect", err)
	}
	if !errors.Is(err, errs.ErrNotRetryable) {
		t.Error("the error lets regclient retry a redirect that will come again")
	}
	for _, want := range []string{"registry.prod.test redirected GET /v2/team/app/blobs/sha256:1", "storage.elsewhere.test", "add storage.elsewhere.test to the hosts of the route", "list it under registries"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q lacks %q", err, want)
		}
	}
	if strings.Contains(err.Error(), "sig=1") {
		t.Errorf("error %q shows the redirect's query, which may carry a signature", err)
	}
}

func TestRedirectPolicyAllows(t *testing.T) {
	policy := redirectPolicy{rules: redirectRules(t)}
	tests := []struct {
		name string
		urls []string
	}{
		{"routed to routed", []string{"https://registry.prod.test/v2/a/blobs/sha256:1", "https://eu.blobs.prod.test/data"}},
		{"routed to a host listed under registries", []string{"https://registry.prod.test/v2/a/blobs/sha256:1", "https://cdn.allowed.test/data"}},
		{"registries entry without port allows every port", []string{"https://registry.prod.test/v2/a/blobs/sha256:1", "https://cdn.allowed.test:9443/data"}},
		{"registries entry with its port", []string{"https://registry.prod.test/v2/a/blobs/sha256:1", "https://pinned.allowed.test:8443/data"}},
		{"direct to direct", []string{"https://registry.dev.test/v2/a/blobs/sha256:1", "https://storage.elsewhere.test/data"}},
		{"direct to routed", []string{"https://registry.dev.test/v2/a/blobs/sha256:1", "https://eu.blobs.prod.test/data"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			req, via := redirectChain(t, tt.urls...)
			if err := policy.check(req, via); err != nil {
				t.Errorf("rejected: %v", err)
			}
		})
	}

	req, via := redirectChain(t, "https://registry.prod.test/v2/a/blobs/sha256:1", "https://pinned.allowed.test:9443/data")
	if err := policy.check(req, via); !errors.Is(err, ErrUnroutedRedirect) {
		t.Errorf("a registries entry with port 8443 allowed port 9443: %v", err)
	}
}

func TestRedirectPolicyRejectsLoop(t *testing.T) {
	policy := redirectPolicy{rules: redirectRules(t)}
	req, via := redirectChain(t,
		"https://registry.prod.test/v2/a/blobs/sha256:1",
		"https://eu.blobs.prod.test/a",
		"https://eu.blobs.prod.test/b",
		"https://eu.blobs.prod.test/a",
	)
	err := policy.check(req, via)
	if err == nil || !strings.Contains(err.Error(), "redirect loop") {
		t.Fatalf("error %v, want a redirect loop", err)
	}
	if !errors.Is(err, errs.ErrNotRetryable) {
		t.Error("the loop error lets regclient retry")
	}
}

func TestRedirectPolicyDropsCredentialsOnOtherHost(t *testing.T) {
	policy := redirectPolicy{rules: redirectRules(t)}
	req, via := redirectChain(t, "https://registry.prod.test/v2/a/blobs/sha256:1", "https://eu.blobs.prod.test/data")
	req.Header.Set("Authorization", "Bearer secret")
	if err := policy.check(req, via); err != nil {
		t.Fatal(err)
	}
	if req.Header.Get("Authorization") != "" {
		t.Error("the redirect to blob storage kept the Authorization header")
	}
}
