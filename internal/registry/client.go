// Package registry is the one place where imgxfer talks to registries. It builds a
// regclient client from the routing rules and the user's docker credentials, and copies
// images with it.
package registry

import (
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"net/url"
	"os"
	"strings"
	"time"

	"github.com/regclient/regclient"
	"github.com/regclient/regclient/config"
	"github.com/regclient/regclient/scheme/reg"
	"github.com/regclient/regclient/types/errs"
	"github.com/sirupsen/logrus"

	"github.com/imgxfer/imgxfer/internal/credentials"
	"github.com/imgxfer/imgxfer/internal/logging"
	"github.com/imgxfer/imgxfer/routing"
)

// Options configures a Client.
type Options struct {
	// Rules decide which hosts go through a proxy. Nil means every request goes direct.
	Rules *routing.Rules

	// Logger receives imgxfer's and regclient's log records. Nil means logrus's standard logger.
	Logger *logrus.Logger

	// UserAgent is sent with every request.
	UserAgent string

	// Credentials for registry hosts, as written in references ("docker.io" for Docker
	// Hub). They take precedence over docker's config.json for those hosts.
	Credentials map[string]Credential

	// IdleTimeout is how long a connection may send and receive nothing before it is
	// closed and the request fails. Zero means $IMGXFER_IDLE_TIMEOUT when that is set,
	// else routing.DefaultIdleTimeout.
	IdleTimeout time.Duration

	// MaxRequests is the maximum number of requests in flight to one registry, shared by
	// all copies of the client. Zero means DefaultMaxRequests.
	MaxRequests int
}

// DefaultMaxRequests is the default of Options.MaxRequests for one copy. regclient's own
// default is 3. In `make bench`, over a hop that adds 5 ms to every request, a copy of 51
// small blobs took 0.41 s with 3 and 0.21 s with 8. On loopback both took the same time.
const DefaultMaxRequests = 8

// MaxRequestsFor returns the default of Options.MaxRequests for parallel copies, which
// share the limit: DefaultMaxRequests, or 4 per copy when that is more.
func MaxRequestsFor(parallel int) int {
	return max(DefaultMaxRequests, 4*parallel)
}

// Credential is a username and password for one registry.
type Credential struct {
	Username string
	Password string
}

// Client copies images between registries, routing every request by the rules.
type Client struct {
	rc          *regclient.RegClient
	transport   *routing.Transport
	log         *logrus.Logger
	credentials map[string]Credential
}

// New builds a Client. Credentials come from docker's config.json and its credential
// helpers, looked up under the registry host named in each image reference, never under
// the host of a proxy.
func New(opts Options) (*Client, error) {
	rules := opts.Rules
	if rules == nil {
		rules = routing.Empty()
	}
	log := opts.Logger
	if log == nil {
		log = logrus.StandardLogger()
	}

	missingHelpers, err := credentials.Check()
	if err != nil {
		return nil, err
	}
	for _, helper := range missingHelpers {
		log.WithField("helper", helper).Warn("docker's config.json names a credential helper that is not on PATH; registries that use it get no credentials")
	}

	idleTimeout, err := idleTimeoutSetting(opts.IdleTimeout)
	if err != nil {
		return nil, err
	}
	transport, err := routing.NewTransport(rules, routing.WithLogger(log), routing.WithIdleTimeout(idleTimeout))
	if err != nil {
		return nil, err
	}
	httpClient := &http.Client{
		Transport:     newRetryTransport(transport, log),
		CheckRedirect: redirectPolicy{rules: rules}.check,
	}

	// regclient applies its own per-host TLS settings only to an *http.Transport, so with
	// this RoundTripper the TLS of every host comes from the rules. The config hosts still
	// tell regclient which registries speak plain HTTP.
	maxRequests := opts.MaxRequests
	if maxRequests <= 0 {
		maxRequests = DefaultMaxRequests
	}

	hosts := map[string]*config.Host{}
	hostFor := func(name string) *config.Host {
		if hosts[name] == nil {
			hosts[name] = config.HostNewName(name)
			hosts[name].ReqConcurrent = int64(maxRequests)
		}
		return hosts[name]
	}
	for _, r := range rules.Registries {
		host := hostFor(r.Host)
		switch r.TLS {
		case routing.TLSDisabled:
			host.TLS = config.TLSDisabled
		case routing.TLSInsecure:
			host.TLS = config.TLSInsecure
		default:
			host.TLS = config.TLSEnabled
		}
	}
	for name, cred := range opts.Credentials {
		host := hostFor(name)
		host.User = cred.Username
		host.Pass = cred.Password
	}
	configHosts := make([]config.Host, 0, len(hosts))
	for _, host := range hosts {
		configHosts = append(configHosts, *host)
	}

	rcOpts := []regclient.Opt{
		// regclient gives the default's settings to the hosts that it creates after this
		// option, from docker's config.json and from configHosts. It created Docker Hub's
		// before any option, so Docker Hub keeps regclient's limit of 3 requests.
		regclient.WithConfigHostDefault(config.Host{ReqConcurrent: int64(maxRequests)}),
		regclient.WithDockerCreds(),
		regclient.WithConfigHost(configHosts...),
		regclient.WithRegOpts(
			reg.WithHTTPClient(httpClient),
			reg.WithDelay(retryDelayInitial, retryDelayMax),
			reg.WithCache(manifestCacheAge, manifestCacheCount),
		),
		regclient.WithSlog(slog.New(newRetryLogHandler(logging.NewSlog(log).Handler(), log))),
	}
	if opts.UserAgent != "" {
		rcOpts = append(rcOpts, regclient.WithUserAgent(opts.UserAgent))
	}

	return &Client{
		rc:          regclient.New(rcOpts...),
		transport:   transport,
		log:         log,
		credentials: opts.Credentials,
	}, nil
}

// Close releases idle connections.
func (c *Client) Close() {
	c.transport.CloseIdleConnections()
}

// regclient's backoff between retries to one host starts at twice retryDelayInitial and
// doubles per failure, with at most retryDelayMax added per waiting request. regclient
// v0.11.7 defaults to a 30s maximum. Every request waiting for the same host adds its
// delay to the host's next release time, so with that maximum a few parallel blob copies
// to a failing registry waited more than a minute per retry in the fault tests.
const (
	retryDelayInitial = 100 * time.Millisecond
	retryDelayMax     = 2 * time.Second
)

// A copy reads each source manifest up to three times by digest: to plan, to list its
// blobs for the progress totals, and in regclient's copy. regclient's manifest cache,
// keyed by registry, repository and digest, serves the repeats. A digest names fixed
// content, so a cached manifest cannot go stale, but a manifest deleted during the run
// is still found. The limits match regctl's.
const (
	manifestCacheAge   = 5 * time.Minute
	manifestCacheCount = 500
)

// idleTimeoutSetting returns configured, else the duration in $IMGXFER_IDLE_TIMEOUT, else
// zero, which routing reads as its default.
func idleTimeoutSetting(configured time.Duration) (time.Duration, error) {
	if configured > 0 {
		return configured, nil
	}
	text := strings.TrimSpace(os.Getenv(routing.EnvIdleTimeout))
	if text == "" {
		return 0, nil
	}
	timeout, err := time.ParseDuration(text)
	if err != nil || timeout <= 0 {
		return 0, fmt.Errorf("invalid %s %q: use a positive duration such as 90s or 15m", routing.EnvIdleTimeout, text)
	}
	return timeout, nil
}

// ErrUnroutedRedirect marks a redirect from a routed registry to a host that no route
// covers.
var ErrUnroutedRedirect = errors.New("redirect leaves the proxy")

// redirectPolicy is the http.Client's CheckRedirect. regclient calls it after its own
// checks (at most 10 redirects, no https to http, no redirect from a remote host to a
// local one) and after it has added the credentials that the target host asked for.
type redirectPolicy struct {
	rules *routing.Rules
}

// check rejects redirect loops and redirects that would take a routed registry's
// request out of the proxy, and keeps credentials on their host. Its errors wrap
// regclient's ErrNotRetryable, because the same request gets the same redirect again.
func (p redirectPolicy) check(req *http.Request, via []*http.Request) error {
	_ = keepCredentialsOnHost(req, via)

	for _, previous := range via {
		if previous.URL.String() == req.URL.String() {
			return fmt.Errorf("redirect loop: %s %s led back to itself after %d redirects; the registry or its blob storage is misconfigured%.0w",
				via[0].Method, via[0].URL.Redacted(), len(via), errs.ErrNotRetryable)
		}
	}

	target := req.URL.Host
	if p.rules.Match(req.URL.Scheme, target) != nil || p.listedDirect(target) {
		return nil
	}
	for _, previous := range via {
		if p.rules.Match(previous.URL.Scheme, previous.URL.Host) == nil {
			continue
		}
		from := previous.URL.Host
		return fmt.Errorf("%w: %s redirected %s %s to %s, which no route covers, so the request would bypass the proxy; add %s to the hosts of the route for %s, or list it under registries to allow reaching it directly%.0w",
			ErrUnroutedRedirect, from, via[0].Method, via[0].URL.Path, target, req.URL.Hostname(), from, errs.ErrNotRetryable)
	}
	return nil
}

// listedDirect reports whether the rules list host under registries, which allows
// reaching it directly. An entry without a port allows every port.
func (p redirectPolicy) listedDirect(host string) bool {
	for _, entry := range p.rules.Registries {
		if routing.SameHost(entry.Host, host) {
			return true
		}
		if !strings.Contains(entry.Host, ":") && routing.SameHost(entry.Host, hostnameOf(host)) {
			return true
		}
	}
	return false
}

// hostnameOf returns host without its port. IPv6 literals keep their brackets.
func hostnameOf(host string) string {
	u := url.URL{Host: host}
	if u.Port() == "" {
		return host
	}
	return strings.TrimSuffix(host, ":"+u.Port())
}

// keepCredentialsOnHost removes the Authorization header from a redirect to another host.
// net/http already drops it for other domains, but keeps it for subdomains, and blob
// storage is often a subdomain of its registry. regclient calls this after adding the
// credentials that the target host itself asked for, which this leaves alone when the
// host is the same.
func keepCredentialsOnHost(req *http.Request, via []*http.Request) error {
	if len(via) > 0 && !strings.EqualFold(req.URL.Host, via[0].URL.Host) {
		req.Header.Del("Authorization")
	}
	return nil
}
