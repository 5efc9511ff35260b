// Package registry is the one place where imgxfer talks to registries. It builds a
// regclient client from the routing rules and the user's docker credentials, and copies
// images with it.
package registry

import (
	"net/http"
	"strings"

	"github.com/regclient/regclient"
	"github.com/regclient/regclient/config"
	"github.com/regclient/regclient/scheme/reg"
	"github.com/sirupsen/logrus"

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

	transport, err := routing.NewTransport(rules, routing.WithLogger(log))
	if err != nil {
		return nil, err
	}

	// regclient applies its own per-host TLS settings only to an *http.Transport, so with
	// this RoundTripper the TLS of every host comes from the rules. The config hosts still
	// tell regclient which registries speak plain HTTP.
	hosts := map[string]*config.Host{}
	hostFor := func(name string) *config.Host {
		if hosts[name] == nil {
			hosts[name] = config.HostNewName(name)
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
		regclient.WithDockerCreds(),
		regclient.WithConfigHost(configHosts...),
		regclient.WithRegOpts(reg.WithHTTPClient(&http.Client{Transport: transport, CheckRedirect: keepCredentialsOnHost})),
		regclient.WithSlog(logging.NewSlog(log)),
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
