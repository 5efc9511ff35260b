package routing

import (
	"fmt"
	"net"
	"net/netip"
	"strconv"
	"strings"
)

// Docker Hub is written docker.io in references, but clients talk to its API on
// registry-1.docker.io (regclient's config.DockerRegistryDNS), so a rule for either
// name covers both.
var hostAliases = map[string][]string{
	"docker.io":       {"registry-1.docker.io"},
	"index.docker.io": {"registry-1.docker.io"},
}

// hostPattern is one entry of a route's hosts, normalised.
type hostPattern struct {
	name     string // lowercase hostname or IP, or the domain after "*." for a wildcard
	port     int    // 0 matches any port
	wildcard bool   // matches subdomains of name, not name itself
}

// target is the host of one request, normalised for matching and for the header.
type target struct {
	name string // lowercase hostname or IP without brackets
	port int    // explicit port, or the scheme's default
	// canonical is "host[:port]" with the port left out when it is the scheme's default
	// and IPv6 literals in brackets: the value of the routing header.
	canonical string
}

// parsePattern parses a hosts entry of a route or registry. Docker Hub names expand to
// the API host as well.
func parsePattern(raw string) ([]hostPattern, error) {
	entry := strings.ToLower(strings.TrimSpace(raw))
	if entry == "" {
		return nil, fmt.Errorf("empty host; write host or host:port, such as registry.example.com:5000")
	}
	if strings.ContainsAny(entry, "/@?# \t\r\n") {
		return nil, fmt.Errorf("invalid host %q; write host or host:port without scheme, path or credentials", raw)
	}

	pattern := hostPattern{}
	if rest, ok := strings.CutPrefix(entry, "*."); ok {
		pattern.wildcard = true
		entry = rest
	}

	name, port, err := splitHostPort(entry)
	if err != nil {
		return nil, fmt.Errorf("invalid host %q: %w", raw, err)
	}
	if pattern.wildcard && net.ParseIP(name) != nil {
		return nil, fmt.Errorf("invalid host %q: a wildcard needs a domain name, not an IP address", raw)
	}
	if strings.Contains(name, "*") {
		return nil, fmt.Errorf("invalid host %q: '*' is allowed only as a leading \"*.\"", raw)
	}
	pattern.name = name
	pattern.port = port

	patterns := []hostPattern{pattern}
	if !pattern.wildcard {
		for _, alias := range hostAliases[name] {
			patterns = append(patterns, hostPattern{name: alias, port: port})
		}
	}
	return patterns, nil
}

// parseTarget normalises the host of a request URL with the given scheme.
func parseTarget(scheme, host string) (target, error) {
	name, port, err := splitHostPort(strings.ToLower(host))
	if err != nil {
		return target{}, fmt.Errorf("invalid host %q: %w", host, err)
	}

	defaultPort := defaultPortFor(scheme)
	canonical := name
	if strings.Contains(name, ":") {
		canonical = "[" + name + "]"
	}
	if port != 0 && port != defaultPort {
		canonical += ":" + strconv.Itoa(port)
	}
	if port == 0 {
		port = defaultPort
	}
	return target{name: name, port: port, canonical: canonical}, nil
}

// canonicalHost returns host in the form that the routing header carries.
func canonicalHost(scheme, host string) (string, error) {
	t, err := parseTarget(scheme, host)
	if err != nil {
		return "", err
	}
	return t.canonical, nil
}

func (p hostPattern) matches(t target) bool {
	if p.port != 0 && p.port != t.port {
		return false
	}
	if p.wildcard {
		return strings.HasSuffix(t.name, "."+p.name)
	}
	return t.name == p.name
}

func (route *Route) matches(t target) bool {
	for _, pattern := range route.patterns {
		if pattern.matches(t) {
			return true
		}
	}
	return false
}

// splitHostPort splits "host", "host:port", "[v6]" or "[v6]:port" and validates both parts.
// The port is 0 when absent.
func splitHostPort(hostport string) (string, int, error) {
	name, portText := hostport, ""
	switch {
	case strings.HasPrefix(hostport, "["):
		end := strings.Index(hostport, "]")
		if end < 0 {
			return "", 0, fmt.Errorf("missing ']' after the IPv6 address")
		}
		name = hostport[1:end]
		rest := hostport[end+1:]
		if rest != "" {
			after, ok := strings.CutPrefix(rest, ":")
			if !ok {
				return "", 0, fmt.Errorf("unexpected %q after the IPv6 address", rest)
			}
			portText = after
		}
		addr, err := netip.ParseAddr(name)
		if err != nil || !addr.Is6() {
			return "", 0, fmt.Errorf("%q is not an IPv6 address", name)
		}
		if addr.Zone() != "" {
			return "", 0, fmt.Errorf("IPv6 address %q has a zone, which has no meaning to a registry or proxy; leave out the %%zone", name)
		}
		// One spelling per address, such as ::1 for 0:0:0:0:0:0:0:1, so that patterns
		// match every spelling and the header carries the shortest.
		name = addr.String()
	case strings.Count(hostport, ":") > 1:
		return "", 0, fmt.Errorf("write an IPv6 address in brackets, such as [::1]:5000")
	case strings.Contains(hostport, ":"):
		name, portText, _ = strings.Cut(hostport, ":")
	}

	if !strings.Contains(name, ":") && !validHostname(name) {
		return "", 0, fmt.Errorf("%q is not a valid hostname or IP address", name)
	}

	port := 0
	if hostport != name && portText == "" && strings.HasSuffix(hostport, ":") {
		return "", 0, fmt.Errorf("missing port after ':'")
	}
	if portText != "" {
		n, err := strconv.Atoi(portText)
		if err != nil || n < 1 || n > 65535 || strings.Trim(portText, "0123456789") != "" {
			return "", 0, fmt.Errorf("invalid port %q; use 1 to 65535", portText)
		}
		port = n
	}
	return name, port, nil
}

// validHostname accepts DNS names of letters, digits, '-' and '_' in dot-separated labels,
// and IPv4 addresses. A '*' label is accepted here so that the wildcard check can give a precise error.
func validHostname(name string) bool {
	if name == "" || len(name) > 253 {
		return false
	}
	for _, label := range strings.Split(name, ".") {
		if label == "" || len(label) > 63 {
			return false
		}
		for _, c := range label {
			ok := (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '-' || c == '_' || c == '*'
			if !ok {
				return false
			}
		}
	}
	return true
}

func defaultPortFor(scheme string) int {
	if strings.EqualFold(scheme, "http") {
		return 80
	}
	return 443
}

// SameHost reports whether two registry hosts ("host" or "host:port") name the same host
// once normalised, with Docker Hub's names counted as one.
func SameHost(a, b string) bool {
	canonical := func(host string) string {
		c, err := canonicalHost("https", host)
		if err != nil {
			return host
		}
		if aliases, ok := hostAliases[c]; ok {
			return aliases[0]
		}
		return c
	}
	return canonical(a) == canonical(b)
}
