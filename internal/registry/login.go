package registry

import (
	"context"
	"fmt"
	"strings"

	"github.com/regclient/regclient/types/ref"
)

// ParseRegistry parses a registry host as written in references ("docker.io",
// "registry.example.com:5000") and returns it as regclient names it.
func ParseRegistry(text string) (string, error) {
	// docker login accepts a URL such as https://registry.example.com/, so this does too.
	trimmed := strings.TrimSuffix(text, "/")
	if rest, ok := strings.CutPrefix(trimmed, "https://"); ok {
		trimmed = rest
	} else if rest, ok := strings.CutPrefix(trimmed, "http://"); ok {
		trimmed = rest
	}
	r, err := ref.NewHost(trimmed)
	if err != nil || r.Scheme != "reg" || r.Registry == "" || r.Repository != "" || strings.Contains(trimmed, "/") {
		return "", fmt.Errorf("%w %q: expected a registry host such as registry.example.com or registry.example.com:5000", ErrInvalidReference, text)
	}
	return r.Registry, nil
}

// CheckLogin verifies that the registry at host accepts the client's credentials for it,
// by requesting the registry's /v2/ endpoint through the routes, authenticating when the
// registry challenges.
func (c *Client) CheckLogin(ctx context.Context, host string) error {
	r, err := ref.NewHost(host)
	if err != nil {
		return fmt.Errorf("%w %q: %w", ErrInvalidReference, host, err)
	}

	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	ctx = withRejectionCancel(ctx, cancel)
	ctx, watch := c.watchAuth(ctx, cancel)

	_, err = c.rc.Ping(ctx, r)
	if err != nil {
		if cause := rejectionCause(ctx); cause != nil {
			return cause
		}
		return c.explain(ctx, fmt.Errorf("logging in to %s: %w", host, err), watch)
	}
	return nil
}
