// Package registry is the one place where imgxfer talks to registries. It builds a
// regclient client from the routing rules and the user's docker credentials, and copies
// images with it.
package registry

import (
	"net/http"

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
}

// Client copies images between registries, routing every request by the rules.
type Client struct {
	rc        *regclient.RegClient
	transport *routing.Transport
	log       *logrus.Logger
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
	var hosts []config.Host
	for _, r := range rules.Registries {
		host := config.HostNewName(r.Host)
		switch r.TLS {
		case routing.TLSDisabled:
			host.TLS = config.TLSDisabled
		case routing.TLSInsecure:
			host.TLS = config.TLSInsecure
		default:
			host.TLS = config.TLSEnabled
		}
		hosts = append(hosts, *host)
	}

	rcOpts := []regclient.Opt{
		regclient.WithDockerCreds(),
		regclient.WithConfigHost(hosts...),
		regclient.WithRegOpts(reg.WithHTTPClient(&http.Client{Transport: transport})),
		regclient.WithSlog(logging.NewSlog(log)),
	}
	if opts.UserAgent != "" {
		rcOpts = append(rcOpts, regclient.WithUserAgent(opts.UserAgent))
	}

	return &Client{
		rc:        regclient.New(rcOpts...),
		transport: transport,
		log:       log,
	}, nil
}

// Close releases idle connections.
func (c *Client) Close() {
	c.transport.CloseIdleConnections()
}
