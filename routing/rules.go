// Package routing decides, for each HTTP request a registry client makes, whether it goes
// straight to its host or through a mesh proxy, and provides the http.RoundTripper that
// carries out that decision.
//
// A rules file maps registry hosts to proxy URLs. A request whose host matches a route is
// sent to the route's proxy with a header (DefaultHeader unless the file names another)
// that carries the real host. Every other request goes direct, without that header.
package routing

import (
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"regexp"
	"strings"

	"github.com/goccy/go-yaml"
)

// DefaultHeader is the request header that names the real registry host when the rules
// file sets no other.
const DefaultHeader = "mesh"

// Version is the rules file format that this package reads. A file that declares a newer
// version is rejected rather than half understood.
const Version = 1

// EnvRules is the environment variable that names the rules file when no flag does.
const EnvRules = "IMGXFER_RULES"

// TLS modes for registries reached directly, with the values that regclient uses.
const (
	TLSEnabled  = "enabled"
	TLSInsecure = "insecure"
	TLSDisabled = "disabled"
)

// ErrInvalidRules marks every error about the content of a rules file or a proxy URL.
var ErrInvalidRules = errors.New("invalid rules")

// Rules is a parsed and validated rules file.
type Rules struct {
	// Version is the file format version. Zero means Version.
	Version int `yaml:"version"`

	// Header is the request header that names the real registry host on proxied requests.
	Header string `yaml:"header"`

	// Routes send the requests for their hosts through a proxy. The first match wins.
	Routes []Route `yaml:"routes"`

	// Registries holds the connection settings for registries reached directly.
	Registries []Registry `yaml:"registries"`

	// Proxy holds the settings of the proxy side, which clients ignore.
	Proxy ProxySettings `yaml:"proxy"`

	// Source is the file the rules came from, used in error messages.
	Source string `yaml:"-"`

	// data is the file's content, for the line and column of errors found after parsing.
	data []byte
}

// Route sends the requests for a set of hosts through one proxy.
type Route struct {
	// Hosts are registry, token-realm or blob-storage hosts: "host", "host:port", or
	// "*.domain" for any subdomain. A host without a port matches every port.
	Hosts []string `yaml:"hosts"`

	// Proxy is the proxy's base URL, http:// or https://, without path or credentials.
	Proxy string `yaml:"proxy"`

	// Address is "host:port" to connect to for the proxy instead of resolving the proxy
	// URL's host, for networks where that name does not resolve. The URL's host is still
	// the TLS server name and the Host header. Environment proxies do not apply to it.
	Address string `yaml:"address"`

	// TLS configures the connection to an https proxy.
	TLS ProxyTLS `yaml:"tls"`

	proxyURL *url.URL
	patterns []hostPattern
}

// ProxyTLS configures how the client verifies an https proxy.
type ProxyTLS struct {
	// CAFile is a PEM bundle trusted in addition to the system roots.
	CAFile string `yaml:"ca_file"`

	// Insecure skips certificate verification. Use it only for tests.
	Insecure bool `yaml:"insecure"`
}

// Registry holds the connection settings for one registry reached directly.
type Registry struct {
	// Host is "host" or "host:port", as written in image references.
	Host string `yaml:"host"`

	// TLS is TLSEnabled (the default), TLSInsecure or TLSDisabled (plain HTTP).
	TLS string `yaml:"tls"`

	// CAFile is a PEM bundle trusted in addition to the system roots.
	CAFile string `yaml:"ca_file"`
}

// ProxyURL returns the parsed proxy URL of a validated route.
func (r *Route) ProxyURL() *url.URL {
	u := *r.proxyURL
	return &u
}

// DefaultPath returns the rules file used when neither a flag nor EnvRules names one:
// imgxfer/rules.yaml under the user's configuration directory (os.UserConfigDir).
func DefaultPath() (string, error) {
	dir, err := os.UserConfigDir()
	if err != nil {
		return "", fmt.Errorf("locating the default rules file: %w", err)
	}
	return filepath.Join(dir, "imgxfer", "rules.yaml"), nil
}

// Load reads and validates the rules file at path.
func Load(path string) (*Rules, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("reading rules file: %w", err)
	}
	return Parse(path, data)
}

// Parse decodes and validates a rules file. The name is used in error messages, which
// take the form "name:line:column: problem".
func Parse(name string, data []byte) (*Rules, error) {
	rules := &Rules{}
	err := decodeYAML(data, rules)
	if err != nil {
		return nil, decodeError(name, data, err)
	}
	rules.Source = name
	rules.data = data

	err = rules.validate()
	if err != nil {
		return nil, rules.locate(err)
	}
	return rules, nil
}

// locate turns a validation error into one that names the rules file and, for a field
// error, the field's line and column.
func (r *Rules) locate(err error) error {
	var fieldErr *fieldError
	if !errors.As(err, &fieldErr) {
		return fmt.Errorf("%w: %s: %w", ErrInvalidRules, r.Source, err)
	}
	if r.data == nil {
		return fmt.Errorf("%w: %s: %s: %s", ErrInvalidRules, r.Source, fieldErr.field(), fieldErr.message)
	}
	line, column := position(r.data, fieldErr.path)
	return fmt.Errorf("%w: %s:%d:%d: %s: %s", ErrInvalidRules, r.Source, line, column, fieldErr.field(), fieldErr.message)
}

// decodeYAML decodes data strictly into v. go-yaml v1.19.2 panics on some malformed
// input, such as a tag in place of a sequence (found by FuzzParse), so a panic becomes an
// error here.
func decodeYAML(data []byte, v any) (err error) {
	defer func() {
		if recover() != nil {
			err = fmt.Errorf("the YAML parser failed on this input; check the syntax, such as tags (!name) and indentation")
		}
	}()
	return yaml.UnmarshalWithOptions(data, v, yaml.DisallowUnknownField())
}

// Empty returns rules with no routes, under which every request goes direct.
func Empty() *Rules {
	rules := &Rules{Version: Version, Header: DefaultHeader, Source: "(no rules file)"}
	return rules
}

// WithProxy returns a copy of the rules with a route for host through proxyURL placed
// before all others, as the --proxy flag of a copy requests.
func (r *Rules) WithProxy(host, proxyURL string) (*Rules, error) {
	if host == "" {
		return nil, fmt.Errorf("%w: --proxy routes the destination's registry, but the destination names no registry", ErrInvalidRules)
	}
	route := Route{Hosts: []string{host}, Proxy: proxyURL}
	err := route.validate()
	if err != nil {
		var fieldErr *fieldError
		if errors.As(err, &fieldErr) {
			return nil, fmt.Errorf("%w: --proxy %q: %s", ErrInvalidRules, redactURL(proxyURL), fieldErr.message)
		}
		return nil, fmt.Errorf("%w: --proxy %q: %w", ErrInvalidRules, redactURL(proxyURL), err)
	}

	copied := *r
	copied.Routes = append([]Route{route}, r.Routes...)
	return &copied, nil
}

// Match returns the first route whose hosts match host ("host" or "host:port", as in a
// URL) under the given URL scheme, or nil when the request goes direct.
func (r *Rules) Match(scheme, host string) *Route {
	dest, err := parseTarget(scheme, host)
	if err != nil {
		return nil
	}
	i := r.matchIndex(dest)
	if i < 0 {
		return nil
	}
	return &r.Routes[i]
}

func (r *Rules) matchIndex(dest target) int {
	for i := range r.Routes {
		if r.Routes[i].matches(dest) {
			return i
		}
	}
	return -1
}

// RegistryFor returns the direct connection settings for host, or nil when the rules
// name none.
func (r *Rules) RegistryFor(host string) *Registry {
	host = strings.ToLower(host)
	for i := range r.Registries {
		if strings.ToLower(r.Registries[i].Host) == host {
			return &r.Registries[i]
		}
	}
	return nil
}

func (r *Rules) validate() error {
	if r.Version == 0 {
		r.Version = Version
	}
	if r.Version > Version {
		return &fieldError{path: "$.version", message: fmt.Sprintf("version %d is newer than this imgxfer reads (%d); upgrade imgxfer", r.Version, Version)}
	}
	if r.Version < 0 {
		return &fieldError{path: "$.version", message: fmt.Sprintf("invalid version %d; use %d", r.Version, Version)}
	}

	if r.Header == "" {
		r.Header = DefaultHeader
	}
	if !validHeaderName(r.Header) {
		return &fieldError{path: "$.header", message: fmt.Sprintf("invalid header name %q; use letters, digits and '-', such as %q", r.Header, DefaultHeader)}
	}
	if reservedHeaders[http.CanonicalHeaderKey(r.Header)] {
		return &fieldError{path: "$.header", message: fmt.Sprintf("header %q is a standard HTTP header that clients or proxies set themselves; choose a name of your own, such as %q", r.Header, DefaultHeader)}
	}

	routed := map[string]string{}
	for i := range r.Routes {
		err := r.Routes[i].validate()
		if err != nil {
			var fieldErr *fieldError
			if errors.As(err, &fieldErr) {
				fieldErr.path = fmt.Sprintf("$.routes[%d]%s", i, strings.TrimPrefix(fieldErr.path, "$"))
			}
			return err
		}

		for j, host := range r.Routes[i].Hosts {
			key := strings.ToLower(strings.TrimSpace(host))
			if first, dup := routed[key]; dup {
				return &fieldError{path: fmt.Sprintf("$.routes[%d].hosts[%d]", i, j), message: fmt.Sprintf("host %q is already routed by %s, so this entry never matches; keep one", host, first)}
			}
			routed[key] = fmt.Sprintf("routes[%d]", i)
		}
	}

	seen := map[string]int{}
	for i := range r.Registries {
		path := fmt.Sprintf("$.registries[%d]", i)
		err := r.Registries[i].validate()
		if err != nil {
			var fieldErr *fieldError
			if errors.As(err, &fieldErr) {
				fieldErr.path = path + strings.TrimPrefix(fieldErr.path, "$")
			}
			return err
		}

		host := strings.ToLower(r.Registries[i].Host)
		if first, dup := seen[host]; dup {
			return &fieldError{path: path + ".host", message: fmt.Sprintf("host %q is already listed in registries[%d]; keep one entry per host", r.Registries[i].Host, first)}
		}
		seen[host] = i
	}

	return r.Proxy.validate(r)
}

func (route *Route) validate() error {
	if len(route.Hosts) == 0 {
		return &fieldError{path: "$.hosts", message: "missing; list at least one registry host, such as registry.example.com"}
	}
	route.patterns = route.patterns[:0]
	for i, host := range route.Hosts {
		pattern, err := parsePattern(host)
		if err != nil {
			return &fieldError{path: fmt.Sprintf("$.hosts[%d]", i), message: err.Error()}
		}
		route.patterns = append(route.patterns, pattern...)
	}

	if route.Proxy == "" {
		return &fieldError{path: "$.proxy", message: "missing; set the proxy URL, such as http://mesh-proxy.example.com:31080"}
	}
	proxyURL, err := parseProxyURL(route.Proxy)
	if err != nil {
		return &fieldError{path: "$.proxy", message: err.Error()}
	}
	route.proxyURL = proxyURL

	if route.Address != "" {
		name, port, err := splitHostPort(strings.ToLower(route.Address))
		if err != nil || port == 0 || strings.HasPrefix(name, "*") {
			return &fieldError{path: "$.address", message: fmt.Sprintf("invalid address %q; write host:port or ip:port, such as 10.0.0.7:31080", route.Address)}
		}
	}

	if route.TLS.Insecure && route.TLS.CAFile != "" {
		return &fieldError{path: "$.tls", message: "ca_file and insecure exclude each other; keep ca_file to verify the proxy"}
	}
	if (route.TLS.Insecure || route.TLS.CAFile != "") && proxyURL.Scheme != "https" {
		return &fieldError{path: "$.tls", message: fmt.Sprintf("TLS settings need an https proxy, but the proxy is %q", route.Proxy)}
	}
	return nil
}

func (reg *Registry) validate() error {
	if reg.Host == "" {
		return &fieldError{path: "$.host", message: "missing; set the registry host as written in image references, such as registry.example.com:5000"}
	}
	pattern, err := parsePattern(reg.Host)
	if err != nil {
		return &fieldError{path: "$.host", message: err.Error()}
	}
	if pattern[0].wildcard {
		return &fieldError{path: "$.host", message: fmt.Sprintf("wildcard %q is not allowed here; name one registry host", reg.Host)}
	}

	switch reg.TLS {
	case "":
		reg.TLS = TLSEnabled
	case TLSEnabled, TLSInsecure, TLSDisabled:
	default:
		return &fieldError{path: "$.tls", message: fmt.Sprintf("invalid value %q; use %s, %s or %s", reg.TLS, TLSEnabled, TLSInsecure, TLSDisabled)}
	}
	if reg.CAFile != "" && reg.TLS != TLSEnabled {
		return &fieldError{path: "$.ca_file", message: fmt.Sprintf("ca_file needs tls: %s, but tls is %s", TLSEnabled, reg.TLS)}
	}
	return nil
}

func parseProxyURL(raw string) (*url.URL, error) {
	shown := redactURL(raw)
	if !strings.Contains(raw, "://") {
		return nil, fmt.Errorf("invalid proxy URL %q: missing scheme; write http://%s or https://%s", shown, shown, shown)
	}
	proxyURL, err := url.Parse(raw)
	if err != nil {
		return nil, fmt.Errorf("invalid proxy URL %q; write scheme, host and port, such as http://mesh-proxy.example.com:31080", shown)
	}
	if proxyURL.Scheme != "http" && proxyURL.Scheme != "https" {
		return nil, fmt.Errorf("invalid proxy URL %q: the scheme must be http or https, such as http://mesh-proxy.example.com:31080", shown)
	}
	if proxyURL.Host == "" || proxyURL.Hostname() == "" {
		return nil, fmt.Errorf("invalid proxy URL %q: missing host, such as http://mesh-proxy.example.com:31080", shown)
	}
	if proxyURL.User != nil {
		return nil, fmt.Errorf("invalid proxy URL %q: credentials in the URL are not supported; remove them", shown)
	}
	if (proxyURL.Path != "" && proxyURL.Path != "/") || proxyURL.RawQuery != "" || proxyURL.Fragment != "" {
		return nil, fmt.Errorf("invalid proxy URL %q: a path, query or fragment is not supported; give scheme, host and port only", shown)
	}
	if _, err := canonicalHost(proxyURL.Scheme, proxyURL.Host); err != nil {
		return nil, fmt.Errorf("invalid proxy URL %q: %w", shown, err)
	}
	proxyURL.Path = ""
	return proxyURL, nil
}

// userinfo matches the credentials part of a URL-like string, even one that url.Parse
// rejects, such as "user:secret@host:1" without a scheme.
var userinfo = regexp.MustCompile(`^([A-Za-z][A-Za-z0-9+.-]*://)?[^/@]*@`)

// redactURL replaces any credentials in a URL-like string, so that errors can quote it.
func redactURL(raw string) string {
	return userinfo.ReplaceAllString(raw, "${1}xxxxx@")
}

// reservedHeaders are standard headers that the routing header must not replace.
var reservedHeaders = map[string]bool{
	"Host": true, "Authorization": true, "Proxy-Authorization": true, "Connection": true,
	"Content-Length": true, "Content-Type": true, "Transfer-Encoding": true, "Upgrade": true,
	"Te": true, "Trailer": true, "Keep-Alive": true, "Cookie": true, "Accept": true,
	"Accept-Encoding": true, "Range": true, "User-Agent": true, "Location": true,
	"Forwarded": true, "X-Forwarded-For": true, "X-Forwarded-Host": true, "X-Forwarded-Proto": true,
}

func validHeaderName(name string) bool {
	if name == "" {
		return false
	}
	for _, c := range name {
		isLetter := (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z')
		isDigit := c >= '0' && c <= '9'
		if !isLetter && !isDigit && c != '-' {
			return false
		}
	}
	return true
}
