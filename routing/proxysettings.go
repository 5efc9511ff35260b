package routing

import (
	"fmt"
	"net/netip"
	"net/url"
	"path"
	"slices"
	"strconv"
	"strings"
)

// Defaults of the proxy section. The paths fit the Kubernetes manifests in k8s/: the TLS
// files are the keys of a kubernetes.io/tls secret, and the CA bundle is the system bundle
// of the Debian-based nginx image.
const (
	DefaultProxyHTTPListen  = "8080"
	DefaultProxyHTTPSListen = "8443"
	DefaultProxyTLSCert     = "/etc/nginx/tls/tls.crt"
	DefaultProxyTLSKey      = "/etc/nginx/tls/tls.key"
	DefaultProxyUpstreamCA  = "/etc/ssl/certs/ca-certificates.crt"
)

// ListenOff turns a proxy listener off.
const ListenOff = "off"

// ProxySettings configures the proxy side: what `imgxfer proxy nginx` generates. Clients
// ignore it, and the proxy ignores the client-only fields (routes' proxy and tls, and
// registries' ca_file).
type ProxySettings struct {
	// Listen contains the addresses of the plain-HTTP and TLS listeners.
	Listen ProxyListen `yaml:"listen"`

	// TLS contains the certificate and key of the TLS listener.
	TLS ProxyServerTLS `yaml:"tls"`

	// Resolver lists the DNS servers that nginx queries, at request time, for upstreams named
	// by a DNS name: "address" or "address:port".
	Resolver []string `yaml:"resolver"`

	// UpstreamCA is a PEM bundle that verifies HTTPS upstreams.
	UpstreamCA string `yaml:"upstream_ca"`

	// RealmRewrite makes the proxy rewrite bearer realms on the registry's own host to the
	// proxy's address, for clients that cannot route realm hosts themselves.
	RealmRewrite bool `yaml:"realm_rewrite"`

	// Upstreams set how nginx reaches registries whose address differs from their name.
	Upstreams []ProxyUpstream `yaml:"upstreams"`

	// WorkerProcesses is nginx's number of worker processes, or "auto" for one per CPU
	// that nginx detects, which in a container is every CPU of the node.
	WorkerProcesses string `yaml:"worker_processes"`
}

// ProxyListen contains the listener addresses: a port such as "8080", an address and port such
// as "127.0.0.1:8080" or "[::]:8080", or ListenOff.
type ProxyListen struct {
	HTTP  string `yaml:"http"`
	HTTPS string `yaml:"https"`
}

// ProxyServerTLS contains the paths of the TLS listener's PEM certificate chain and key.
type ProxyServerTLS struct {
	Cert string `yaml:"cert"`
	Key  string `yaml:"key"`
}

// ProxyUpstream is the address that nginx sends the requests for one registry host to.
type ProxyUpstream struct {
	// Host is the registry host as clients address it: "host" or "host:port".
	Host string `yaml:"host"`

	// URL is the base URL that nginx connects to: http:// or https://, a host and an
	// optional port, without path.
	URL string `yaml:"url"`

	upstreamURL *url.URL
}

// AllowlistEntry is one registry that the proxy forwards to.
type AllowlistEntry struct {
	// HeaderValue is the routing header's value that selects this registry: the host as
	// clients send it, lowercase, with the port unless it is the scheme's default.
	HeaderValue string

	// Upstream is the base URL that nginx connects to, without path.
	Upstream *url.URL

	// ServerName is the name that nginx sends as SNI to an HTTPS upstream and checks its
	// certificate against: the registry's host name without port.
	ServerName string

	// Origin names the field that put this entry on the allowlist, such as
	// "routes[0].hosts[1]" or "proxy.upstreams[0]".
	Origin string
}

// nginxMapKeywords are the words that an nginx map block reads as parameters rather than as
// keys. A host named "default" would make every header value pass.
var nginxMapKeywords = map[string]bool{"default": true, "hostnames": true, "include": true, "volatile": true}

// upstreamReservedDomain names the upstream blocks that imgxfer's nginx configuration
// generates. The .invalid top-level domain never resolves (RFC 6761), so these names
// cannot collide with a registry.
const upstreamReservedDomain = ".invalid"

func (p *ProxySettings) validate(_ *Rules) error {
	listeners := []struct {
		path     string
		value    *string
		fallback string
	}{
		{"$.proxy.listen.http", &p.Listen.HTTP, DefaultProxyHTTPListen},
		{"$.proxy.listen.https", &p.Listen.HTTPS, DefaultProxyHTTPSListen},
	}
	for _, listener := range listeners {
		if *listener.value == "" {
			*listener.value = listener.fallback
		}
		if err := CheckListen(*listener.value); err != nil {
			return &fieldError{path: listener.path, message: err.Error()}
		}
	}
	if p.Listen.HTTP == ListenOff && p.Listen.HTTPS == ListenOff {
		return &fieldError{path: "$.proxy.listen", message: "both listeners are off; keep http or https on"}
	}

	if p.Listen.HTTPS != ListenOff {
		if p.TLS.Cert == "" {
			p.TLS.Cert = DefaultProxyTLSCert
		}
		if p.TLS.Key == "" {
			p.TLS.Key = DefaultProxyTLSKey
		}
	}
	if p.UpstreamCA == "" {
		p.UpstreamCA = DefaultProxyUpstreamCA
	}
	files := []struct{ path, value string }{
		{"$.proxy.tls.cert", p.TLS.Cert},
		{"$.proxy.tls.key", p.TLS.Key},
		{"$.proxy.upstream_ca", p.UpstreamCA},
	}
	for _, file := range files {
		if file.value == "" {
			continue
		}
		if err := CheckNginxPath(file.value); err != nil {
			return &fieldError{path: file.path, message: err.Error()}
		}
	}

	if p.WorkerProcesses == "" {
		p.WorkerProcesses = "auto"
	}
	if workers, err := strconv.Atoi(p.WorkerProcesses); p.WorkerProcesses != "auto" && (err != nil || workers < 1) {
		return &fieldError{path: "$.proxy.worker_processes", message: fmt.Sprintf("invalid value %q; use a number such as 2, or auto", p.WorkerProcesses)}
	}

	for i, server := range p.Resolver {
		if err := checkResolver(server); err != nil {
			return &fieldError{path: fmt.Sprintf("$.proxy.resolver[%d]", i), message: err.Error()}
		}
	}

	for i := range p.Upstreams {
		if err := p.Upstreams[i].validate(); err != nil {
			if fieldErr, ok := err.(*fieldError); ok {
				fieldErr.path = fmt.Sprintf("$.proxy.upstreams[%d]%s", i, strings.TrimPrefix(fieldErr.path, "$"))
			}
			return err
		}
	}
	return nil
}

func (u *ProxyUpstream) validate() error {
	if u.Host == "" {
		return &fieldError{path: "$.host", message: "missing; set the registry host as clients address it, such as registry.example.com"}
	}
	patterns, err := parsePattern(u.Host)
	if err != nil {
		return &fieldError{path: "$.host", message: err.Error()}
	}
	if patterns[0].wildcard {
		return &fieldError{path: "$.host", message: fmt.Sprintf("wildcard %q is not allowed here; name one registry host", u.Host)}
	}

	if u.URL == "" {
		return &fieldError{path: "$.url", message: "missing; set how nginx reaches the registry, such as https://10.0.0.5:443"}
	}
	upstreamURL, err := parseUpstreamURL(u.URL)
	if err != nil {
		return &fieldError{path: "$.url", message: err.Error()}
	}
	u.upstreamURL = upstreamURL
	return nil
}

// parseUpstreamURL parses an upstream base URL: http or https, a host, an optional port,
// and at most a "/" as path.
func parseUpstreamURL(raw string) (*url.URL, error) {
	u, err := url.Parse(raw)
	if err != nil {
		return nil, fmt.Errorf("invalid upstream URL %q: %w", raw, err)
	}
	if u.Scheme != "http" && u.Scheme != "https" {
		return nil, fmt.Errorf("invalid upstream URL %q: the scheme must be http or https, such as https://10.0.0.5:443", raw)
	}
	if u.User != nil {
		return nil, fmt.Errorf("invalid upstream URL %q: credentials in the URL are not supported; remove them", u.Redacted())
	}
	if (u.Path != "" && u.Path != "/") || u.RawQuery != "" || u.Fragment != "" || u.Opaque != "" {
		return nil, fmt.Errorf("invalid upstream URL %q: a path, query or fragment is not supported; give scheme, host and port only", raw)
	}
	name, port, err := splitHostPort(strings.ToLower(u.Host))
	if err != nil || u.Host == "" {
		return nil, fmt.Errorf("invalid upstream URL %q: expected a host name or IP address and an optional port", raw)
	}
	if strings.Contains(name, "*") {
		return nil, fmt.Errorf("invalid upstream URL %q: '*' is not allowed in a host name", raw)
	}
	if strings.HasSuffix(name, upstreamReservedDomain) {
		return nil, fmt.Errorf("invalid upstream URL %q: the %s domain is reserved for the generated upstream names", raw, upstreamReservedDomain)
	}

	host := name
	if strings.Contains(name, ":") {
		host = "[" + name + "]"
	}
	if port != 0 {
		host += ":" + strconv.Itoa(port)
	}
	return &url.URL{Scheme: u.Scheme, Host: host}, nil
}

// CheckListen accepts a listen address of the proxy section: a port, an IP address and
// port, or ListenOff.
func CheckListen(value string) error {
	if value == ListenOff {
		return nil
	}
	portText := value
	if i := strings.LastIndex(value, ":"); i >= 0 {
		address := value[:i]
		portText = value[i+1:]
		if address != "*" {
			addr, err := netip.ParseAddr(strings.TrimSuffix(strings.TrimPrefix(address, "["), "]"))
			bracketed := strings.HasPrefix(address, "[") && strings.HasSuffix(address, "]")
			if err != nil || addr.Is6() != bracketed {
				return fmt.Errorf("invalid listen address %q; use a port such as 8080, an IP address and port such as 127.0.0.1:8080 or [::]:8080, or %s", value, ListenOff)
			}
		}
	}
	port, err := strconv.Atoi(portText)
	if err != nil || port < 1 || port > 65535 {
		return fmt.Errorf("invalid listen address %q: the port must be 1 to 65535, such as 8080", value)
	}
	return nil
}

// checkResolver accepts a DNS server as nginx's resolver directive takes it.
func checkResolver(server string) error {
	name, _, err := splitHostPort(strings.ToLower(server))
	if err != nil {
		return fmt.Errorf("invalid resolver %q: %w; use an address such as 10.96.0.10 or 10.96.0.10:53", server, err)
	}
	if strings.Contains(name, "*") {
		return fmt.Errorf("invalid resolver %q: use an address such as 10.96.0.10", server)
	}
	return nil
}

// CheckNginxPath rejects file paths that an nginx configuration cannot carry as written:
// relative paths, which nginx reads against its prefix, and characters that end or change
// a quoted string. A "$" would start an nginx variable.
func CheckNginxPath(file string) error {
	if !path.IsAbs(file) {
		return fmt.Errorf("path %q is relative; give an absolute path, which nginx reads the same from any directory", file)
	}
	if strings.ContainsAny(file, "\"'\\$;{}") || strings.ContainsFunc(file, func(r rune) bool { return r < 0x20 || r == 0x7f }) {
		return fmt.Errorf("path %q contains a quote, backslash, '$', ';', brace or control character, which nginx would misread; rename the file", file)
	}
	return nil
}

// SchemeFor returns the URL scheme that clients use for a registry host: "http" when its
// registries entry sets tls: disabled, else "https". The routing header omits the port
// when it is this scheme's default.
func (r *Rules) SchemeFor(host string) string {
	if reg := r.RegistryFor(host); reg != nil && reg.TLS == TLSDisabled {
		return "http"
	}
	return "https"
}

// ProxyAllowlist returns the registries that the proxy forwards to, sorted by header value.
//
// Every host of every route is on it, including Docker Hub's API host for docker.io, with
// the upstream scheme://host[:port], where scheme is the one clients use for that host
// (SchemeFor). An entry in proxy.upstreams replaces that upstream, and a wildcard host
// needs such entries, because nginx matches header values exactly. The errors carry the
// file, line and column of the field to fix.
func (r *Rules) ProxyAllowlist() ([]AllowlistEntry, error) {
	entries := map[string]AllowlistEntry{}
	var keys []string
	add := func(entry AllowlistEntry) {
		keys = append(keys, entry.HeaderValue)
		entries[entry.HeaderValue] = entry
	}

	for i, upstream := range r.Proxy.Upstreams {
		fieldPath := fmt.Sprintf("$.proxy.upstreams[%d].host", i)
		key, err := canonicalHost(r.SchemeFor(upstream.Host), strings.ToLower(upstream.Host))
		if err != nil {
			return nil, r.errorAt(fieldPath, err.Error())
		}
		if nginxMapKeywords[key] {
			return nil, r.errorAt(fieldPath, fmt.Sprintf("host %q is an nginx map keyword and cannot be allowlisted; use the registry's fully qualified name", upstream.Host))
		}
		if previous, dup := entries[key]; dup {
			return nil, r.errorAt(fieldPath, fmt.Sprintf("host %q is already listed in %s; keep one entry per host", upstream.Host, previous.Origin))
		}
		if r.Match(r.SchemeFor(upstream.Host), key) == nil {
			return nil, r.errorAt(fieldPath, fmt.Sprintf("host %q matches no route, so no client sends it to the proxy; add it to a route's hosts or remove this entry", upstream.Host))
		}
		add(AllowlistEntry{
			HeaderValue: key,
			Upstream:    upstream.upstreamURL,
			ServerName:  serverName(key),
			Origin:      fmt.Sprintf("proxy.upstreams[%d]", i),
		})
	}

	for i, route := range r.Routes {
		for j, host := range route.Hosts {
			fieldPath := fmt.Sprintf("$.routes[%d].hosts[%d]", i, j)
			patterns, err := parsePattern(host)
			if err != nil {
				return nil, r.errorAt(fieldPath, err.Error())
			}
			for _, pattern := range patterns {
				if pattern.wildcard {
					if !r.upstreamsCover(pattern) {
						return nil, r.errorAt(fieldPath, fmt.Sprintf(
							"wildcard %q cannot go on the proxy's allowlist, because nginx matches header values exactly; list each host it should reach under proxy.upstreams, such as {host: registry.%s, url: https://registry.%s}",
							host, pattern.name, pattern.name))
					}
					continue
				}
				if err := r.addRouteHost(pattern, fmt.Sprintf("routes[%d].hosts[%d]", i, j), entries, add); err != nil {
					return nil, r.errorAt(fieldPath, err.Error())
				}
			}
		}
	}

	result := make([]AllowlistEntry, 0, len(keys))
	for _, key := range sortedUnique(keys) {
		result = append(result, entries[key])
	}

	if len(r.Proxy.Resolver) == 0 {
		for _, entry := range result {
			if _, err := netip.ParseAddr(strings.Trim(entry.Upstream.Hostname(), "[]")); err != nil {
				return nil, r.errorAt("$.proxy.resolver", fmt.Sprintf(
					"missing; nginx looks up the upstream %s of %s (%s) when a request arrives and needs a DNS server for it: set resolver, such as [10.96.0.10] for a cluster's DNS service, or give the upstream by IP address under proxy.upstreams",
					entry.Upstream, entry.HeaderValue, entry.Origin))
			}
		}
	}
	return result, nil
}

// addRouteHost puts a route's exact host on the allowlist with its default upstream,
// unless an entry for it exists.
func (r *Rules) addRouteHost(pattern hostPattern, origin string, entries map[string]AllowlistEntry, add func(AllowlistEntry)) error {
	hostport := pattern.name
	if strings.Contains(hostport, ":") {
		hostport = "[" + hostport + "]"
	}
	if pattern.port != 0 {
		hostport += ":" + strconv.Itoa(pattern.port)
	}
	scheme := r.SchemeFor(hostport)
	key, err := canonicalHost(scheme, hostport)
	if err != nil {
		return err
	}
	if _, listed := entries[key]; listed {
		return nil
	}
	if nginxMapKeywords[key] {
		return fmt.Errorf("host %q is an nginx map keyword and cannot be allowlisted; use the registry's fully qualified name", key)
	}
	if strings.HasSuffix(pattern.name, upstreamReservedDomain) {
		return fmt.Errorf("host %q is in the %s domain, which is reserved for the generated upstream names", key, upstreamReservedDomain)
	}
	add(AllowlistEntry{
		HeaderValue: key,
		Upstream:    &url.URL{Scheme: scheme, Host: key},
		ServerName:  serverName(key),
		Origin:      origin,
	})
	return nil
}

// upstreamsCover reports whether proxy.upstreams names a host that a wildcard matches.
func (r *Rules) upstreamsCover(wildcard hostPattern) bool {
	for _, upstream := range r.Proxy.Upstreams {
		dest, err := parseTarget(r.SchemeFor(upstream.Host), upstream.Host)
		if err == nil && wildcard.matches(dest) {
			return true
		}
	}
	return false
}

// serverName returns the host of a header value without port and brackets.
func serverName(headerValue string) string {
	name, _, err := splitHostPort(headerValue)
	if err != nil {
		return headerValue
	}
	return name
}

// errorAt returns an ErrInvalidRules error located at a YAML path of the rules file, in the
// form Parse uses.
func (r *Rules) errorAt(yamlPath, message string) error {
	fieldErr := &fieldError{path: yamlPath, message: message}
	if r.data == nil {
		return fmt.Errorf("%w: %s: %s: %s", ErrInvalidRules, r.Source, fieldErr.field(), message)
	}
	line, column := position(r.data, yamlPath)
	return fmt.Errorf("%w: %s:%d:%d: %s: %s", ErrInvalidRules, r.Source, line, column, fieldErr.field(), message)
}

// Position returns "file:line:column" of a field of the rules file, such as
// "routes[0].hosts[1]", or the file name alone when the rules were not parsed from a file.
func (r *Rules) Position(field string) string {
	if r.data == nil {
		return r.Source
	}
	line, column := position(r.data, "$."+field)
	return fmt.Sprintf("%s:%d:%d", r.Source, line, column)
}

func sortedUnique(values []string) []string {
	seen := map[string]bool{}
	var out []string
	for _, value := range values {
		if !seen[value] {
			seen[value] = true
			out = append(out, value)
		}
	}
	slices.Sort(out)
	return out
}
