package routing

import (
	"context"
	"net/http"
	"strings"

	"github.com/sirupsen/logrus"
)

// Older proxy configurations rewrite the realm of a registry's bearer challenge to the
// proxy's own address, such as realm="http://mesh-proxy:31080/service/token", and expect
// the client to send the token request there with the routing header of the registry
// that was challenged. The transport supports them by remembering which registry
// announced a realm on a proxy, and routing requests for that realm accordingly.

// realmKey identifies a realm announced on a proxy: its URL without query, and the
// service that the challenge named, which the token request repeats.
type realmKey struct {
	url     string
	service string
}

// learnRealms records the bearer realms that a registry's 401 response announces. Every
// realm host is recorded, so that a token service's rejection is reported as the
// registry's. Realms on a proxy are recorded too, so that their token requests carry the
// registry's header.
func (t *Transport) learnRealms(resp *http.Response, registryHost string) {
	for _, value := range resp.Header.Values("Www-Authenticate") {
		scheme, params := parseChallenge(value)
		if !strings.EqualFold(scheme, "bearer") || params["realm"] == "" {
			continue
		}
		realm, err := resp.Request.URL.Parse(params["realm"])
		if err != nil {
			continue
		}
		realmHost, err := canonicalHost(realm.Scheme, realm.Host)
		if err != nil {
			continue
		}
		if realmHost != registryHost {
			t.realmOwners.Store(realmHost, registryHost)
		}
		if _, onProxy := t.proxyRoutes[realmHost]; !onProxy {
			continue
		}

		key := realmKey{url: realm.Scheme + "://" + realmHost + realm.EscapedPath(), service: params["service"]}
		previous, loaded := t.realms.Swap(key, registryHost)
		if loaded && previous != registryHost {
			// NOTE: two registries behind one proxy that announce the same rewritten
			// realm and service cannot be distinguished, so the latest challenge wins.
			t.log.WithFields(logrus.Fields{"realm": key.url, "service": key.service, "previous": previous, "host": registryHost}).
				Warn("two registries share a realm on the proxy; token requests go to the latest")
		}
		t.log.WithFields(logrus.Fields{"realm": key.url, "service": key.service, "host": registryHost}).
			Debug("registry announced a realm on the proxy")
	}
}

// realmOnProxy returns the route and registry host for a request to a realm that a
// registry announced on a proxy, or -1 when req is not such a request.
func (t *Transport) realmOnProxy(req *http.Request, dest target) (int, string) {
	routeIndex, isProxy := t.proxyRoutes[dest.canonical]
	if !isProxy {
		return -1, ""
	}
	key := realmKey{url: req.URL.Scheme + "://" + dest.canonical + req.URL.EscapedPath(), service: req.URL.Query().Get("service")}
	registryHost, found := t.realms.Load(key)
	if !found {
		return -1, ""
	}
	return routeIndex, registryHost.(string)
}

// parseChallenge splits a WWW-Authenticate value such as
// `Bearer realm="https://auth.example.com/token",service="registry"` into its scheme and
// parameters. Quoted values may contain commas and backslash escapes.
func parseChallenge(value string) (string, map[string]string) {
	value = strings.TrimSpace(value)
	scheme, rest, _ := strings.Cut(value, " ")
	params := map[string]string{}

	for rest = strings.TrimSpace(rest); rest != ""; rest = strings.TrimLeft(strings.TrimSpace(rest), ",") {
		rest = strings.TrimSpace(rest)
		name, after, found := strings.Cut(rest, "=")
		if !found {
			break
		}
		name = strings.ToLower(strings.TrimSpace(name))
		if name == "" || strings.ContainsAny(name, " \t\",") {
			// Not an auth-param: the rest of the value is malformed, so stop here.
			break
		}
		after = strings.TrimSpace(after)

		var paramValue string
		if strings.HasPrefix(after, `"`) {
			var b strings.Builder
			i := 1
			for ; i < len(after) && after[i] != '"'; i++ {
				if after[i] == '\\' && i+1 < len(after) {
					i++
				}
				b.WriteByte(after[i])
			}
			paramValue = b.String()
			rest = after[min(i+1, len(after)):]
		} else {
			paramValue, rest, _ = strings.Cut(after, ",")
			paramValue = strings.TrimSpace(paramValue)
		}
		params[name] = paramValue
	}
	return scheme, params
}

// AuthFailure describes a 401 response to a request that carried credentials or a token, or
// to a token request: the credentials were wrong or missing, or the token did not grant
// the action.
type AuthFailure struct {
	// Registry is the registry host that the failure belongs to. For a token request it
	// is the registry that announced the realm.
	Registry string

	// TokenService is true when the registry's token service rejected the request, so the
	// credentials are wrong or missing. When false, the registry itself rejected them, or,
	// with a bearer token, the token lacked the scope for the request.
	TokenService bool

	// Bearer is true when the registry rejected a bearer token.
	Bearer bool

	// Method is the HTTP method of the rejected request.
	Method string
}

type authFailureHandlerKey struct{}

// WithAuthFailureHandler returns a context under which every authentication failure seen
// by the transport calls handle, before RoundTrip returns.
func WithAuthFailureHandler(ctx context.Context, handle func(AuthFailure)) context.Context {
	return context.WithValue(ctx, authFailureHandlerKey{}, handle)
}

// reportAuthFailure calls the context's handler when resp is a 401 that means the
// credentials or the token were not enough. The first 401 of a challenge, for a request
// sent without credentials, is the normal start of authentication and is not reported.
func (t *Transport) reportAuthFailure(req *http.Request, resp *http.Response, host string) {
	if resp.StatusCode != http.StatusUnauthorized {
		return
	}
	handle, ok := req.Context().Value(authFailureHandlerKey{}).(func(AuthFailure))
	if !ok {
		return
	}

	if owner, isRealm := t.realmOwners.Load(host); isRealm {
		handle(AuthFailure{Registry: owner.(string), TokenService: true, Method: req.Method})
		return
	}
	authorization := req.Header.Get("Authorization")
	if authorization == "" {
		return
	}
	bearer := strings.HasPrefix(strings.ToLower(authorization), "bearer ")
	handle(AuthFailure{Registry: host, Bearer: bearer, Method: req.Method})
}
