package registry

import (
	"context"
	"errors"
	"fmt"
	"sync"

	"github.com/regclient/regclient/types/errs"

	"github.com/imgxfer/imgxfer/internal/credentials"
	"github.com/imgxfer/imgxfer/routing"
)

// AuthError reports which registry rejected which user. It wraps the registry client's
// error, so errors.Is still finds errs.ErrHTTPUnauthorized.
type AuthError struct {
	Registry string
	Username string // empty when no credentials were found for the registry
	message  string
	err      error
}

func (e *AuthError) Error() string { return e.message }

func (e *AuthError) Unwrap() error { return e.err }

// authWatch collects the authentication failures of one operation.
type authWatch struct {
	mu       sync.Mutex
	failures []routing.AuthFailure
}

// watchAuth returns a context whose requests report authentication failures to the
// returned watch. A rejected password, by the registry or its token service, also cancels
// ctx with an AuthError: every other request of the operation would be rejected too. A
// rejected bearer token does not, because an expired token is rejected the same way and
// the registry client then fetches a new one.
func (c *Client) watchAuth(ctx context.Context, cancel context.CancelCauseFunc) (context.Context, *authWatch) {
	watch := &authWatch{}
	ctx = routing.WithAuthFailureHandler(ctx, func(failure routing.AuthFailure) {
		watch.mu.Lock()
		watch.failures = append(watch.failures, failure)
		watch.mu.Unlock()
		if failure.TokenService || !failure.Bearer {
			cancel(c.authError(failure, errs.ErrHTTPUnauthorized))
		}
	})
	return ctx, watch
}

// explain returns the AuthError that cancelled ctx, or turns an unauthorized error into
// an AuthError naming the registry and the user of the last recorded failure. Other
// errors pass through unchanged.
func (c *Client) explain(ctx context.Context, err error, watch *authWatch) error {
	var cause *AuthError
	if errors.As(context.Cause(ctx), &cause) {
		return cause
	}
	if !errors.Is(err, errs.ErrHTTPUnauthorized) {
		return err
	}
	watch.mu.Lock()
	defer watch.mu.Unlock()
	if len(watch.failures) == 0 {
		return err
	}
	return c.authError(watch.failures[len(watch.failures)-1], err)
}

func (c *Client) authError(failure routing.AuthFailure, err error) *AuthError {
	user := c.username(failure.Registry)

	var message string
	switch {
	case user == "":
		message = fmt.Sprintf("%s requires credentials and none are stored for it; run 'imgxfer login %s' or give a username and password for this side of the copy",
			failure.Registry, failure.Registry)
	case failure.Bearer && !failure.TokenService:
		message = fmt.Sprintf("%s denied user %q this %s request: the token does not grant it, so the user likely lacks %s permission on the repository",
			failure.Registry, user, failure.Method, permissionFor(failure.Method))
	default:
		message = fmt.Sprintf("%s rejected user %q: check the username and password, or run 'imgxfer login %s'",
			failure.Registry, user, failure.Registry)
	}
	return &AuthError{Registry: failure.Registry, Username: user, message: message, err: err}
}

func permissionFor(method string) string {
	switch method {
	case "GET", "HEAD":
		return "pull"
	}
	return "push"
}

// username returns the user whose credentials the client sends to host: one given in
// Options, else one stored in docker's configuration, else "".
func (c *Client) username(host string) string {
	for name, cred := range c.credentials {
		if routing.SameHost(name, host) {
			return cred.Username
		}
	}
	return credentials.Username(host)
}
