package routing

import (
	"crypto/tls"
	"fmt"
	"net/url"
	"strings"
)

// Decision is the route that a client takes for the requests to one registry host.
type Decision struct {
	// Host is the host as the routing header carries it: lowercase, with the port unless
	// it is the scheme's default.
	Host string

	// Scheme is the URL scheme that clients use for the host (SchemeFor).
	Scheme string

	// RouteIndex is the index of the first matching route in Rules.Routes, or -1 when the
	// requests go direct.
	RouteIndex int

	// HostIndex is the index of the matching entry in that route's hosts.
	HostIndex int

	// Proxy is the route's proxy URL, nil when the requests go direct.
	Proxy *url.URL

	// Header is the routing header's name. Requests that go direct do not carry it.
	Header string
}

// Routed reports whether the requests go through a proxy.
func (d Decision) Routed() bool {
	return d.RouteIndex >= 0
}

// Decide returns how a client sends the requests for host ("host" or "host:port", as in
// image references), with the route and the hosts entry that decide it. Docker Hub's
// reference name docker.io becomes its API host, which the requests name.
func (r *Rules) Decide(host string) (Decision, error) {
	if aliases := hostAliases[strings.ToLower(host)]; len(aliases) > 0 {
		host = aliases[0]
	}
	scheme := r.SchemeFor(host)
	dest, err := parseTarget(scheme, host)
	if err != nil {
		return Decision{}, fmt.Errorf("%w: %w", ErrInvalidRules, err)
	}
	decision := Decision{Host: dest.canonical, Scheme: scheme, RouteIndex: -1, HostIndex: -1, Header: r.Header}

	routeIndex := r.matchIndex(dest)
	if routeIndex < 0 {
		return decision, nil
	}
	route := &r.Routes[routeIndex]
	decision.RouteIndex = routeIndex
	decision.Proxy = route.ProxyURL()
	for i, entry := range route.Hosts {
		patterns, err := parsePattern(entry)
		if err != nil {
			continue
		}
		for _, pattern := range patterns {
			if pattern.matches(dest) {
				decision.HostIndex = i
				return decision, nil
			}
		}
	}
	return decision, nil
}

// TLSConfig returns the TLS settings that a client uses towards the route's proxy, or nil
// for the defaults. It reads the route's ca_file.
func (route *Route) TLSConfig() (*tls.Config, error) {
	return tlsConfigFor(route.TLS.CAFile, route.TLS.Insecure)
}
