package registry

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strings"
	"time"

	"github.com/regclient/regclient/config"
	"github.com/regclient/regclient/types/errs"
	"github.com/regclient/regclient/types/ref"

	"github.com/imgxfer/imgxfer/routing"
)

// CheckStatus is the outcome of one step of a route check.
type CheckStatus string

// Outcomes of a step. A step is skipped when an earlier step failed or when it does not
// apply, such as the proxy steps for a registry reached directly.
const (
	CheckOK      CheckStatus = "ok"
	CheckFailed  CheckStatus = "FAIL"
	CheckSkipped CheckStatus = "skip"
)

// CheckResult is one step of a route check.
type CheckResult struct {
	Step   string
	Status CheckStatus
	Detail string // the finding, or the failure
	Fix    string // the likely fix of a failure
	Err    error  // the failure, for the exit status
}

// maxDoctorBody bounds what the route check reads of a response body.
const maxDoctorBody = 64 << 10

// routeCheck holds what the steps of one route check share.
type routeCheck struct {
	ctx      context.Context
	client   *Client
	rules    *routing.Rules
	decision routing.Decision
	timeout  time.Duration
	report   func(CheckResult)
	failed   error

	challenge *http.Response // the registry's response to GET /v2/
}

// Doctor walks the route to the registry at host step by step and calls report for each
// step. It checks, in order, the routing decision, the proxy's address, a TCP connection
// and TLS to the proxy. Then it checks that the proxy accepts the routing header, that the
// registry answers /v2/, that the token realm of its challenge is reachable, and that the
// credentials work, if docker's config has any for host.
// Each step gets timeout. After the first failure the remaining steps are skipped. It
// returns the first failure's error, or nil when the route works.
func (c *Client) Doctor(ctx context.Context, rules *routing.Rules, host string, timeout time.Duration, report func(CheckResult)) error {
	decision, err := rules.Decide(host)
	if err != nil {
		report(CheckResult{Step: "route", Status: CheckFailed, Detail: err.Error(), Fix: "give a registry host such as registry.example.com:5000", Err: err})
		return err
	}
	check := &routeCheck{ctx: ctx, client: c, rules: rules, decision: decision, timeout: timeout, report: report}

	check.run("route", check.route)
	check.run("proxy address", check.proxyAddress)
	check.run("proxy connection", check.proxyConnection)
	check.run("proxy TLS", check.proxyTLS)
	check.run("proxy header", check.proxyHeader)
	check.run("registry", check.registry)
	check.run("auth realm", check.realm)
	check.run("credentials", check.credentials)
	return check.failed
}

// stepResult is the outcome of a step: ok with a detail, skipped with a reason, or a
// failure with its fix.
type stepResult struct {
	status CheckStatus
	detail string
	fix    string
	err    error
}

func ok(format string, args ...any) stepResult {
	return stepResult{status: CheckOK, detail: fmt.Sprintf(format, args...)}
}

func skipped(format string, args ...any) stepResult {
	return stepResult{status: CheckSkipped, detail: fmt.Sprintf(format, args...)}
}

func failed(err error, fix string) stepResult {
	return stepResult{status: CheckFailed, detail: err.Error(), fix: fix, err: err}
}

func (check *routeCheck) run(name string, step func(context.Context) stepResult) {
	if check.failed != nil {
		check.report(CheckResult{Step: name, Status: CheckSkipped, Detail: "an earlier step failed"})
		return
	}
	ctx, cancel := context.WithTimeout(check.ctx, check.timeout)
	defer cancel()
	result := step(ctx)
	if result.status == CheckFailed {
		check.failed = result.err
	}
	check.report(CheckResult{Step: name, Status: result.status, Detail: result.detail, Fix: result.fix, Err: result.err})
}

func (check *routeCheck) route(context.Context) stepResult {
	d := check.decision
	if !d.Routed() {
		return ok("%s goes direct over %s: no route matches it", d.Host, d.Scheme)
	}
	field := fmt.Sprintf("routes[%d].hosts[%d]", d.RouteIndex, d.HostIndex)
	return ok("%s goes through %s with %s: %s (%s, %s)", d.Host, d.Proxy, d.Header, d.Host, field, check.rules.Position(field))
}

func (check *routeCheck) proxyAddress(ctx context.Context) stepResult {
	d := check.decision
	if !d.Routed() {
		return skipped("no proxy on this route")
	}
	name := d.Proxy.Hostname()
	field := fmt.Sprintf("routes[%d].proxy", d.RouteIndex)
	if address := check.rules.Routes[d.RouteIndex].Address; address != "" {
		// The client connects to the route's address and never resolves the proxy's name.
		host, _, _ := net.SplitHostPort(address)
		if net.ParseIP(host) != nil {
			return ok("%s is reached at %s (routes[%d].address)", name, address, d.RouteIndex)
		}
		name, field = host, fmt.Sprintf("routes[%d].address", d.RouteIndex)
	}
	if ip := net.ParseIP(name); ip != nil {
		return ok("%s is an IP address", name)
	}
	addrs, err := net.DefaultResolver.LookupHost(ctx, name)
	if err != nil {
		return failed(err, fmt.Sprintf("check the name in %s and this machine's DNS settings", field))
	}
	return ok("%s resolves to %s", name, strings.Join(addrs, ", "))
}

// proxyDialAddress returns where the client connects for the route's proxy: the route's
// address when it has one, else the proxy URL's host and port.
func (check *routeCheck) proxyDialAddress() string {
	if address := check.rules.Routes[check.decision.RouteIndex].Address; address != "" {
		return address
	}
	return hostPort(check.decision.Proxy)
}

func (check *routeCheck) proxyConnection(ctx context.Context) stepResult {
	if !check.decision.Routed() {
		return skipped("no proxy on this route")
	}
	address := check.proxyDialAddress()
	var dialer net.Dialer
	conn, err := dialer.DialContext(ctx, "tcp", address)
	if err != nil {
		return failed(err, "check the proxy's port and that a firewall between here and the proxy lets the connection through")
	}
	_ = conn.Close()
	return ok("%s accepts connections", address)
}

// proxyTLS requests the proxy's health endpoint with the route's TLS settings.
func (check *routeCheck) proxyTLS(ctx context.Context) stepResult {
	d := check.decision
	if !d.Routed() {
		return skipped("no proxy on this route")
	}
	if d.Proxy.Scheme != "https" {
		return skipped("the proxy URL is plain http")
	}

	route := check.rules.Routes[d.RouteIndex]
	tlsConfig, err := route.TLSConfig()
	if err != nil {
		return failed(err, fmt.Sprintf("fix routes[%d].tls.ca_file", d.RouteIndex))
	}
	transport := &http.Transport{Proxy: nil, TLSClientConfig: tlsConfig, DisableKeepAlives: true}
	if tlsConfig == nil {
		transport.TLSClientConfig = &tls.Config{MinVersion: tls.VersionTLS12}
	}
	// The certificate is checked against the proxy's name, at the address the client uses.
	address := check.proxyDialAddress()
	transport.DialContext = func(ctx context.Context, network, _ string) (net.Conn, error) {
		var dialer net.Dialer
		return dialer.DialContext(ctx, network, address)
	}
	client := &http.Client{Transport: transport}

	req, err := http.NewRequestWithContext(ctx, http.MethodGet, d.Proxy.String()+"/healthz", nil)
	if err != nil {
		return failed(err, "")
	}
	resp, err := client.Do(req)
	if err != nil {
		fix := fmt.Sprintf("set routes[%d].tls.ca_file to the CA bundle that signed the proxy's certificate, and check that the certificate names %s", d.RouteIndex, d.Proxy.Hostname())
		if route.TLS.CAFile != "" {
			fix = fmt.Sprintf("check that %s (routes[%d].tls.ca_file) contains the CA that signed the proxy's certificate, and that the certificate names %s", route.TLS.CAFile, d.RouteIndex, d.Proxy.Hostname())
		}
		return failed(err, fix)
	}
	drain(resp)

	if route.TLS.Insecure {
		return ok("connected without verifying the certificate: routes[%d].tls.insecure is set", d.RouteIndex)
	}
	return ok("certificate verified for %s", d.Proxy.Hostname())
}

// proxyHeader sends GET /v2/ for the registry through the routing transport and checks
// that the proxy forwarded it.
func (check *routeCheck) proxyHeader(ctx context.Context) stepResult {
	d := check.decision
	resp, err := check.get(ctx, d.Scheme+"://"+d.Host+"/v2/")
	if err != nil {
		if !d.Routed() {
			return failed(err, fmt.Sprintf("check that %s is reachable from here, or route it through a proxy in the rules file", d.Host))
		}
		return failed(err, fmt.Sprintf("the proxy %s did not answer the request; check its error log", d.Proxy.Host))
	}
	check.challenge = resp
	if !d.Routed() {
		return skipped("the request went direct, without the header")
	}
	if reason := resp.Header.Get(routing.ProxyErrorHeader); reason != "" {
		err := fmt.Errorf("%w: %s returned %s (%s) for %s: %s", routing.ErrProxyRejected, d.Proxy.Host, resp.Status, reason, d.Header, d.Host)
		fix := fmt.Sprintf("add %s to the proxy's allowlist: route it in the rules file that generates the proxy's nginx.conf and run `imgxfer proxy nginx` again", d.Host)
		if resp.StatusCode == http.StatusBadRequest {
			fix = fmt.Sprintf("the proxy received no %s header: check that something in between, such as a load balancer, passes it, and that the proxy's configuration reads the header this rules file names", d.Header)
		}
		return failed(err, fix)
	}
	if resp.StatusCode == http.StatusBadGateway || resp.StatusCode == http.StatusGatewayTimeout {
		err := fmt.Errorf("the proxy %s returned %s for %s: it could not reach the registry", d.Proxy.Host, resp.Status, d.Host)
		return failed(err, fmt.Sprintf("check the upstream of %s in the proxy's proxy.upstreams and the proxy's error log", d.Host))
	}
	return ok("%s forwarded %s: %s", d.Proxy.Host, d.Header, d.Host)
}

// registry checks that the response to GET /v2/ came from a registry.
func (check *routeCheck) registry(context.Context) stepResult {
	resp := check.challenge
	apiVersion := resp.Header.Get("Docker-Distribution-Api-Version")
	switch {
	case resp.StatusCode == http.StatusOK, resp.StatusCode == http.StatusUnauthorized && resp.Header.Get("Www-Authenticate") != "":
		detail := fmt.Sprintf("GET /v2/ returned %s", resp.Status)
		if apiVersion != "" {
			detail += ", " + apiVersion
		}
		return ok("%s", detail)
	default:
		err := fmt.Errorf("GET %s://%s/v2/ returned %s, expected 200 or 401 from a registry", check.decision.Scheme, check.decision.Host, resp.Status)
		return failed(err, "check that the upstream is the registry's API and not a web page or another service")
	}
}

// realm requests the token realm of a bearer challenge through the routes, without
// credentials, and accepts any response that did not come from a rejecting proxy.
func (check *routeCheck) realm(ctx context.Context) stepResult {
	challenge := check.challenge.Header.Get("Www-Authenticate")
	if check.challenge.StatusCode != http.StatusUnauthorized || challenge == "" {
		return skipped("the registry asks for no authentication on /v2/")
	}
	scheme, params := parseChallengeParams(challenge)
	if !strings.EqualFold(scheme, "bearer") {
		return skipped("the registry uses %s authentication, without a token realm", scheme)
	}
	realm, err := check.challenge.Request.URL.Parse(params["realm"])
	if err != nil || params["realm"] == "" || (realm.Scheme != "http" && realm.Scheme != "https") {
		err := fmt.Errorf("invalid bearer realm %q in the registry's challenge", params["realm"])
		return failed(err, "check the registry's token service configuration")
	}

	query := realm.Query()
	if service := params["service"]; service != "" {
		query.Set("service", service)
	}
	realm.RawQuery = query.Encode()
	realmDecision, err := check.rules.Decide(realm.Host)
	if err != nil {
		return failed(err, "check the registry's token service configuration")
	}
	how := "direct"
	if realmDecision.Routed() {
		how = fmt.Sprintf("through %s (routes[%d])", realmDecision.Proxy.Host, realmDecision.RouteIndex)
	}

	resp, err := check.get(ctx, realm.String())
	if err != nil {
		fix := fmt.Sprintf("add %s to the hosts of the route for %s, so that token requests go through the proxy too", realm.Host, check.decision.Host)
		if realmDecision.Routed() {
			fix = fmt.Sprintf("the proxy %s did not answer; check its error log", realmDecision.Proxy.Host)
		}
		return failed(err, fix)
	}
	if reason := resp.Header.Get(routing.ProxyErrorHeader); reason != "" {
		err := fmt.Errorf("%w: %s returned %s (%s) for the realm host %s", routing.ErrProxyRejected, realmDecision.Proxy.Host, resp.Status, reason, realmDecision.Host)
		return failed(err, fmt.Sprintf("add %s to the proxy's allowlist: route it in the rules file that generates the proxy's nginx.conf and run `imgxfer proxy nginx` again", realmDecision.Host))
	}
	return ok("%s://%s%s returned %s, %s", realm.Scheme, realm.Host, realm.Path, resp.Status, how)
}

// credentials pings the registry with the credentials from docker's config, which
// authenticates through the realm when the registry challenges.
func (check *routeCheck) credentials(ctx context.Context) stepResult {
	host := check.decision.Host
	user, found := dockerUser(host)
	if !found {
		return skipped("docker's config.json has no credentials for %s, so copies are anonymous", host)
	}
	r, err := ref.NewHost(host)
	if err != nil {
		return failed(err, "")
	}
	if _, err := check.client.rc.Ping(ctx, r); err != nil {
		fix := fmt.Sprintf("log in again with `docker login %s`", host)
		if !errors.Is(err, errs.ErrHTTPUnauthorized) {
			fix = "check the registry's token service and its logs"
		}
		return failed(err, fix)
	}
	return ok("%s accepted the credentials of %s", host, user)
}

// get sends an unauthenticated GET through the routing transport and reads up to
// maxDoctorBody of the body, so that the connection can be reused.
func (check *routeCheck) get(ctx context.Context, target string) (*http.Response, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, target, nil)
	if err != nil {
		return nil, err
	}
	client := &http.Client{
		Transport: check.client.transport,
		CheckRedirect: func(*http.Request, []*http.Request) error {
			return http.ErrUseLastResponse
		},
	}
	resp, err := client.Do(req)
	if err != nil {
		return nil, err
	}
	drain(resp)
	return resp, nil
}

func drain(resp *http.Response) {
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, maxDoctorBody))
	_ = resp.Body.Close()
}

// dockerUser returns the user name that docker's config holds for host, and whether it
// holds credentials at all.
func dockerUser(host string) (string, bool) {
	hosts, err := config.DockerLoad()
	if err != nil {
		return "", false
	}
	for _, h := range hosts {
		if h.Name != host && h.Hostname != host {
			continue
		}
		cred := h.GetCred()
		if cred.User != "" || cred.Token != "" || h.CredHelper != "" {
			user := cred.User
			if user == "" {
				user = "a token"
			}
			return user, true
		}
	}
	return "", false
}

func hostPort(u *url.URL) string {
	if u.Port() != "" {
		return u.Host
	}
	port := "443"
	if u.Scheme == "http" {
		port = "80"
	}
	return net.JoinHostPort(u.Hostname(), port)
}

// parseChallengeParams splits a WWW-Authenticate value such as
// `Bearer realm="https://auth.example.com/token",service="registry"` into its scheme and
// parameters. It reads the first challenge only.
func parseChallengeParams(value string) (string, map[string]string) {
	scheme, rest, _ := strings.Cut(strings.TrimSpace(value), " ")
	params := map[string]string{}
	for rest != "" {
		rest = strings.TrimLeft(rest, " ,")
		name, after, found := strings.Cut(rest, "=")
		if !found {
			break
		}
		name = strings.ToLower(strings.TrimSpace(name))
		var val string
		if strings.HasPrefix(after, `"`) {
			end := strings.Index(after[1:], `"`)
			if end < 0 {
				val, rest = after[1:], ""
			} else {
				val, rest = after[1:end+1], after[end+2:]
			}
		} else {
			val, rest, _ = strings.Cut(after, ",")
		}
		params[name] = val
	}
	return scheme, params
}
