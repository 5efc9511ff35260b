package routing

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/sirupsen/logrus"
)

// ProxyErrorHeader is the response header that imgxfer's nginx configuration sets when the
// proxy itself rejects a request, with a short reason such as "host not on the allowlist".
const ProxyErrorHeader = "Mesh-Proxy-Error"

// ErrProxyRejected marks a request that the proxy rejected instead of forwarding it.
var ErrProxyRejected = errors.New("proxy rejected the request")

// Transport is an http.RoundTripper that sends each request either to the proxy of the
// first route matching the request URL's host, with the routing header naming that host,
// or direct to the host without the header.
//
// It decides per request, so token realms, upload locations and redirects to blob
// storage are routed by their own host. The caller's request is never modified.
//
// Because it is not an *http.Transport, a registry client's own per-host TLS settings do
// not apply to it. TLS for proxies and for directly reached registries comes from the
// rules instead.
type Transport struct {
	rules       *Rules
	header      string
	log         logrus.FieldLogger
	idleTimeout time.Duration

	direct       http.RoundTripper
	directByHost map[string]http.RoundTripper // by canonical host, for registries with TLS settings
	proxies      []http.RoundTripper          // by route index
	proxyRoutes  map[string]int               // canonical proxy host -> index of its first route
	realms       sync.Map                     // realmKey -> registry host, for realms on a proxy
	realmOwners  sync.Map                     // canonical realm host -> registry host that announced it
}

var _ http.RoundTripper = (*Transport)(nil)

// Option configures a Transport.
type Option func(*Transport)

// WithLogger sets the logger for routing decisions, which are logged at debug level.
func WithLogger(log logrus.FieldLogger) Option {
	return func(t *Transport) {
		t.log = log
	}
}

// DefaultIdleTimeout is how long a connection may go without sending or receiving a
// byte before the transport closes it, unless WithIdleTimeout sets another value. It is
// shorter than the 900s read and send timeouts of imgxfer's nginx configuration, and long
// enough for a registry that commits a large upload before it responds.
const DefaultIdleTimeout = 10 * time.Minute

// WithIdleTimeout sets how long a connection may go without sending or receiving a byte
// before the transport closes it, so that a stalled registry or proxy fails the request
// instead of holding it forever. Zero or less keeps DefaultIdleTimeout.
func WithIdleTimeout(timeout time.Duration) Option {
	return func(t *Transport) {
		if timeout > 0 {
			t.idleTimeout = timeout
		}
	}
}

// NewTransport builds the routing transport for validated rules. It reads the CA files
// that the rules name and fails when one cannot be used.
func NewTransport(rules *Rules, opts ...Option) (*Transport, error) {
	t := &Transport{
		rules:        rules,
		header:       http.CanonicalHeaderKey(rules.Header),
		log:          logrus.StandardLogger(),
		idleTimeout:  DefaultIdleTimeout,
		directByHost: map[string]http.RoundTripper{},
		proxyRoutes:  map[string]int{},
	}
	for _, opt := range opts {
		opt(t)
	}
	t.direct = t.newHTTPTransport(nil)

	for i := range rules.Routes {
		route := &rules.Routes[i]
		tlsConfig, err := tlsConfigFor(route.TLS.CAFile, route.TLS.Insecure)
		if err != nil {
			return nil, rules.locate(&fieldError{path: fmt.Sprintf("$.routes[%d].tls.ca_file", i), message: err.Error()})
		}
		inner := t.newHTTPTransport(tlsConfig)
		if route.Address != "" {
			t.dialAddress(inner, route.proxyURL, route.Address)
		}
		t.proxies = append(t.proxies, inner)

		proxyHost, err := canonicalHost(route.proxyURL.Scheme, route.proxyURL.Host)
		if err != nil {
			return nil, fmt.Errorf("%w: %s: routes[%d].proxy: %w", ErrInvalidRules, rules.Source, i, err)
		}
		if _, seen := t.proxyRoutes[proxyHost]; !seen {
			t.proxyRoutes[proxyHost] = i
		}
	}

	for i := range rules.Registries {
		reg := &rules.Registries[i]
		if reg.TLS != TLSInsecure && reg.CAFile == "" {
			continue
		}
		tlsConfig, err := tlsConfigFor(reg.CAFile, reg.TLS == TLSInsecure)
		if err != nil {
			return nil, rules.locate(&fieldError{path: fmt.Sprintf("$.registries[%d].ca_file", i), message: err.Error()})
		}
		host, err := canonicalHost("https", reg.Host)
		if err != nil {
			return nil, fmt.Errorf("%w: %s: registries[%d].host: %w", ErrInvalidRules, rules.Source, i, err)
		}
		t.directByHost[host] = t.newHTTPTransport(tlsConfig)
	}
	return t, nil
}

// RoundTrip sends req through the proxy of the matching route, or direct.
func (t *Transport) RoundTrip(req *http.Request) (*http.Response, error) {
	if req.URL == nil {
		closeBody(req)
		return nil, fmt.Errorf("routing: request without URL")
	}

	dest, err := parseTarget(req.URL.Scheme, req.URL.Host)
	if err != nil {
		closeBody(req)
		return nil, fmt.Errorf("routing %s %q: %w", req.Method, req.URL.Redacted(), err)
	}

	routeIndex := t.rules.matchIndex(dest)
	registryHost := dest.canonical
	if routeIndex < 0 {
		routeIndex, registryHost = t.realmOnProxy(req, dest)
	}
	if routeIndex < 0 {
		return t.roundTripDirect(req, dest)
	}

	route := &t.rules.Routes[routeIndex]
	proxied := req.Clone(req.Context())
	proxied.URL.Scheme = route.proxyURL.Scheme
	proxied.URL.Host = route.proxyURL.Host
	// The Host header names the proxy, as for any request addressed to it, so that a load
	// balancer or ingress in front of the proxy receives its own name. The routing header
	// carries the registry host, and the proxy sets Host to it towards the registry.
	proxied.Host = ""
	deleteHeader(proxied.Header, t.header)
	proxied.Header.Set(t.header, registryHost)

	t.log.WithFields(logrus.Fields{
		"method": req.Method,
		"host":   registryHost,
		"proxy":  route.proxyURL.Host,
		"route":  routeIndex,
	}).Debug("routing request through proxy")

	resp, err := t.proxies[routeIndex].RoundTrip(proxied)
	if err != nil {
		return nil, err
	}
	// The response belongs to the caller's request. Registry clients resolve a relative
	// Location against resp.Request.URL and release credentials only to challenges from
	// the registry's host, so the proxy's address must not show through.
	resp.Request = req

	if resp.StatusCode == http.StatusUnauthorized {
		t.reportAuthFailure(req, resp, registryHost)
		t.learnRealms(resp, registryHost)
	}
	if reason := resp.Header.Get(ProxyErrorHeader); reason != "" {
		return t.rejected(req, resp, route, registryHost, reason), nil
	}
	return resp, nil
}

// rejected returns the proxy's rejection with a body that explains it, and reports the
// rejection to the handler in the request's context, if any. The status stays as the proxy
// sent it, so that a registry client fails the request at once rather than retrying it as
// a network error.
func (t *Transport) rejected(req *http.Request, resp *http.Response, route *Route, registryHost, reason string) *http.Response {
	_ = resp.Body.Close()
	fix := fmt.Sprintf("add %s to the proxy's allowlist or route it to a proxy that has it", registryHost)
	if resp.StatusCode == http.StatusBadRequest {
		// The proxy found no routing header under the name it reads, although this
		// transport sent one: the two sides disagree on the header name.
		fix = fmt.Sprintf("the proxy did not find the %q header that imgxfer sent, so set header: in the rules to the name the proxy reads, or regenerate the proxy's configuration from the same rules", t.header)
	}
	err := fmt.Errorf("%w: proxy %s returned %s for %s (%s); %s",
		ErrProxyRejected, route.proxyURL.Host, resp.Status, registryHost, reason, fix)
	t.log.WithFields(logrus.Fields{
		"host":   registryHost,
		"proxy":  route.proxyURL.Host,
		"status": resp.StatusCode,
		"reason": reason,
	}).Debug("proxy rejected request")
	if handle, ok := req.Context().Value(rejectionHandlerKey{}).(func(error)); ok {
		handle(err)
	}

	message := err.Error()
	out := *resp
	out.Header = resp.Header.Clone()
	out.Header.Set("Content-Type", "text/plain; charset=utf-8")
	out.Header.Del("Content-Encoding")
	out.Body = io.NopCloser(strings.NewReader(message))
	out.ContentLength = int64(len(message))
	out.Header.Set("Content-Length", strconv.Itoa(len(message)))
	return &out
}

type rejectionHandlerKey struct{}

// WithRejectionHandler returns a context under which every request that a proxy rejects
// calls handle with an error wrapping ErrProxyRejected, before RoundTrip returns. A caller
// can cancel its work there, because a rejected route does not start working on retry.
func WithRejectionHandler(ctx context.Context, handle func(error)) context.Context {
	return context.WithValue(ctx, rejectionHandlerKey{}, handle)
}

func (t *Transport) roundTripDirect(req *http.Request, dest target) (*http.Response, error) {
	out := req
	if hasHeader(req.Header, t.header) {
		// A request for an unrouted host never leaves with the routing header, even when
		// the caller set one.
		out = req.Clone(req.Context())
		deleteHeader(out.Header, t.header)
	}

	t.log.WithFields(logrus.Fields{
		"method": req.Method,
		"host":   dest.canonical,
	}).Debug("sending request direct")

	inner := t.direct
	if byHost, ok := t.directByHost[dest.canonical]; ok {
		inner = byHost
	}
	resp, err := inner.RoundTrip(out)
	if err == nil && resp.StatusCode == http.StatusUnauthorized {
		t.reportAuthFailure(req, resp, dest.canonical)
		t.learnRealms(resp, dest.canonical)
	}
	return resp, err
}

// CloseIdleConnections closes the idle connections of every inner transport.
func (t *Transport) CloseIdleConnections() {
	type idleCloser interface{ CloseIdleConnections() }
	all := append([]http.RoundTripper{t.direct}, t.proxies...)
	for _, inner := range t.directByHost {
		all = append(all, inner)
	}
	for _, inner := range all {
		if c, ok := inner.(idleCloser); ok {
			c.CloseIdleConnections()
		}
	}
}

// newHTTPTransport clones http.DefaultTransport, which keeps its timeouts, HTTP/2 and
// HTTP(S)_PROXY handling, applies tlsConfig when it is not nil, and closes connections
// that stay idle for the transport's idle timeout.
func (t *Transport) newHTTPTransport(tlsConfig *tls.Config) *http.Transport {
	inner := http.DefaultTransport.(*http.Transport).Clone()
	if tlsConfig != nil {
		inner.TLSClientConfig = tlsConfig
	}
	// net/http keeps 2 idle connections per host by default, so a copy with more requests
	// in flight to one registry or proxy would close the others after each request and
	// open, and with TLS handshake, new ones.
	inner.MaxIdleConnsPerHost = MaxIdleConnsPerHost
	inner.DialContext = t.dialIdle(nil)
	return inner
}

// MaxIdleConnsPerHost is how many idle connections the transport keeps per registry or
// proxy, enough for every request in flight to reuse one.
const MaxIdleConnsPerHost = 64

// dialIdle returns a DialContext function that dials with http.DefaultTransport's dialer
// settings, after rewrite changes the address when it is not nil, and wraps every
// connection in the transport's idle timeout.
func (t *Transport) dialIdle(rewrite func(addr string) string) func(ctx context.Context, network, addr string) (net.Conn, error) {
	dialer := &net.Dialer{Timeout: 30 * time.Second, KeepAlive: 30 * time.Second}
	return func(ctx context.Context, network, addr string) (net.Conn, error) {
		if rewrite != nil {
			addr = rewrite(addr)
		}
		conn, err := dialer.DialContext(ctx, network, addr)
		if err != nil {
			return nil, err
		}
		return newIdleTimeoutConn(conn, t.idleTimeout), nil
	}
}

// dialAddress makes inner connect to address whenever it would dial the proxy URL's host,
// and turns off environment proxies for it, because the address is where to connect.
func (t *Transport) dialAddress(inner *http.Transport, proxyURL *url.URL, address string) {
	port := proxyURL.Port()
	if port == "" {
		port = strconv.Itoa(defaultPortFor(proxyURL.Scheme))
	}
	target := net.JoinHostPort(proxyURL.Hostname(), port)

	inner.Proxy = nil
	inner.DialContext = t.dialIdle(func(addr string) string {
		if strings.EqualFold(addr, target) {
			return address
		}
		return addr
	})
}

// tlsConfigFor returns nil when the defaults apply, else a config trusting caFile in
// addition to the system roots, or skipping verification when insecure is set.
func tlsConfigFor(caFile string, insecure bool) (*tls.Config, error) {
	if insecure {
		//#nosec G402 -- set only when the rules file sets insecure for this host.
		return &tls.Config{MinVersion: tls.VersionTLS12, InsecureSkipVerify: true}, nil
	}
	if caFile == "" {
		return nil, nil
	}

	pem, err := os.ReadFile(caFile)
	if err != nil {
		return nil, fmt.Errorf("reading ca_file: %w", err)
	}
	pool, err := x509.SystemCertPool()
	if err != nil {
		pool = x509.NewCertPool()
	}
	if !pool.AppendCertsFromPEM(pem) {
		return nil, fmt.Errorf("ca_file %q contains no PEM certificate; give a PEM-encoded CA bundle", caFile)
	}
	return &tls.Config{MinVersion: tls.VersionTLS12, RootCAs: pool}, nil
}

func closeBody(req *http.Request) {
	if req.Body != nil {
		_ = req.Body.Close()
	}
}

// hasHeader reports whether h has name under any letter case, because a header set by
// assigning to the map directly keeps its non-canonical key and is still sent.
func hasHeader(h http.Header, name string) bool {
	for key := range h {
		if strings.EqualFold(key, name) {
			return true
		}
	}
	return false
}

// deleteHeader removes name from h under any letter case.
func deleteHeader(h http.Header, name string) {
	for key := range h {
		if strings.EqualFold(key, name) {
			delete(h, key)
		}
	}
}
