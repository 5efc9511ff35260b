package registry

import (
	"errors"
	"strings"
	"testing"
)

// FuzzParseReference checks that reference parsing never panics and that every rejection
// names the value and wraps ErrInvalidReference.
func FuzzParseReference(f *testing.F) {
	for _, seed := range []string{
		"alpine", "registry.prod.test/team/app:1.4", "127.0.0.1:5000/a/b@sha256:" + strings.Repeat("a", 64),
		"[::1]:5000/a:b", "ocidir:///tmp/layout:1", "Bad Ref", "a//b", "a:b:c", "",
	} {
		f.Add(seed)
	}
	f.Fuzz(func(t *testing.T, text string) {
		r, err := ParseReference(text)
		if err != nil {
			if !errors.Is(err, ErrInvalidReference) {
				t.Fatalf("error does not wrap ErrInvalidReference: %v", err)
			}
			return
		}
		if r.CommonName() == "" {
			t.Fatalf("%q parsed to an empty reference", text)
		}
	})
}

func FuzzCheckPlatforms(f *testing.F) {
	for _, seed := range []string{"linux/amd64", "linux/arm/v7", "windows/amd64:10.0.17763", "linux", "", "/", "a/b/c/d"} {
		f.Add(seed)
	}
	f.Fuzz(func(t *testing.T, text string) {
		if err := CheckPlatforms([]string{text}); err != nil && !strings.Contains(err.Error(), "os/arch") {
			t.Fatalf("rejection of %q does not say the expected form: %v", text, err)
		}
	})
}
