package registry

import (
	"errors"
	"net/http"
	"strings"
	"testing"

	"github.com/opencontainers/go-digest"
	"github.com/regclient/regclient/types/descriptor"
	"github.com/regclient/regclient/types/platform"
)

func TestCheckPlatforms(t *testing.T) {
	for _, good := range []string{"linux/amd64", "linux/arm/v7", "windows/amd64"} {
		if err := CheckPlatforms([]string{good}); err != nil {
			t.Errorf("CheckPlatforms(%q) = %v, want nil", good, err)
		}
	}
	for _, bad := range []string{"linux", "", "/amd64", "linux/"} {
		err := CheckPlatforms([]string{"linux/amd64", bad})
		if err == nil {
			t.Errorf("CheckPlatforms(%q) succeeded, want an error", bad)
			continue
		}
		if !strings.Contains(err.Error(), `"`+bad+`"`) || !strings.Contains(err.Error(), "os/arch") {
			t.Errorf("CheckPlatforms(%q) error %q should name the value and the form", bad, err)
		}
	}
}

func TestSelectPlatforms(t *testing.T) {
	children := []descriptor.Descriptor{
		{Digest: digest.FromString("amd64"), Platform: &platform.Platform{OS: "linux", Architecture: "amd64"}},
		{Digest: digest.FromString("arm64"), Platform: &platform.Platform{OS: "linux", Architecture: "arm64", Variant: "v8"}},
		{Digest: digest.FromString("attestation")},
		{Digest: digest.FromString("armv7"), Platform: &platform.Platform{OS: "linux", Architecture: "arm", Variant: "v7"}},
	}
	requested, err := parsePlatforms([]string{"linux/arm/v7", "linux/amd64"})
	if err != nil {
		t.Fatal(err)
	}

	selected, names, err := selectPlatforms(children, requested, "r.test/app:1")
	if err != nil {
		t.Fatalf("selectPlatforms: %v", err)
	}
	if len(selected) != 2 || selected[0].Digest != children[0].Digest || selected[1].Digest != children[3].Digest {
		t.Errorf("selected %v, want amd64 then arm/v7 in index order", selected)
	}
	if strings.Join(names, ",") != "linux/amd64,linux/arm/v7" {
		t.Errorf("names = %v", names)
	}

	arm64, _ := parsePlatforms([]string{"linux/arm64"})
	selected, _, err = selectPlatforms(children, arm64, "r.test/app:1")
	if err != nil || len(selected) != 1 || selected[0].Digest != children[1].Digest {
		t.Errorf("linux/arm64 selected %v (%v), want the linux/arm64/v8 manifest", selected, err)
	}

	missing, _ := parsePlatforms([]string{"linux/s390x"})
	_, _, err = selectPlatforms(children, missing, "r.test/app:1")
	if !errors.Is(err, ErrPlatformNotFound) {
		t.Fatalf("error %v, want ErrPlatformNotFound", err)
	}
	for _, want := range []string{"r.test/app:1", "linux/s390x", "linux/amd64, linux/arm64, linux/arm/v7"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q lacks %q", err, want)
		}
	}
}

func TestParseReference(t *testing.T) {
	r, err := ParseReference("alpine")
	if err != nil {
		t.Fatal(err)
	}
	if r.CommonName() != "docker.io/library/alpine:latest" {
		t.Errorf("alpine parsed as %q, want docker.io/library/alpine:latest", r.CommonName())
	}

	_, err = ParseReference("Bad Ref")
	if !errors.Is(err, ErrInvalidReference) || !strings.Contains(err.Error(), `"Bad Ref"`) {
		t.Errorf("error %v, want ErrInvalidReference naming the value", err)
	}
}

func TestRedirectDropsCredentialsForOtherHosts(t *testing.T) {
	original, _ := http.NewRequest(http.MethodGet, "https://registry.example.com/v2/a/blobs/sha256:1", nil)
	tests := []struct {
		target string
		keep   bool
	}{
		{"https://registry.example.com/v2/a/blobs/other", true},
		{"https://blobs.registry.example.com/data/1", false},
		{"https://storage.example.net/data/1", false},
	}
	for _, tt := range tests {
		redirected, _ := http.NewRequest(http.MethodGet, tt.target, nil)
		redirected.Header.Set("Authorization", "Bearer token")
		if err := keepCredentialsOnHost(redirected, []*http.Request{original}); err != nil {
			t.Fatal(err)
		}
		kept := redirected.Header.Get("Authorization") != ""
		if kept != tt.keep {
			t.Errorf("redirect to %s: Authorization kept = %v, want %v", tt.target, kept, tt.keep)
		}
	}
}

func TestParseReferenceTrailingDot(t *testing.T) {
	_, err := ParseReference("registry.prod.test./team/app:1")
	if !errors.Is(err, ErrInvalidReference) {
		t.Fatalf("error %v, want ErrInvalidReference", err)
	}
	if !strings.Contains(err.Error(), "write registry.prod.test/team/app:1") {
		t.Errorf("error %q should give the reference without the dot", err)
	}
}
