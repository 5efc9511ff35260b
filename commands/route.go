package commands

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"strings"

	"github.com/urfave/cli/v2"

	"github.com/imgxfer/imgxfer/internal/registry"
	"github.com/imgxfer/imgxfer/routing"
)

type routeOptions struct {
	target    string // image reference or registry host
	rulesPath string // empty: the default rules file, which must exist
	format    string
}

func (a *App) routeCommand() *cli.Command {
	return &cli.Command{
		Name:      "route",
		Usage:     "explain how requests for an image's registry are routed",
		ArgsUsage: "IMAGE|REGISTRY",
		Description: `Prints the registry host as requests name it, the route and hosts entry of the rules
file that match it (with file, line and column), the proxy URL and the header value the
proxy receives, and, from the rules' proxy section, the upstream that the proxy forwards
to. A registry that no route matches is reached directly. Nothing is sent over the network.

An argument without "/" is a registry host, such as registry.example.com:5000.

Examples:
  imgxfer route --rules rules.yaml registry.prod.example.com/team/app:1.4
  imgxfer route --rules rules.yaml --format json registry.prod.example.com`,
		Flags: []cli.Flag{
			&cli.StringFlag{
				Name:    flagRules,
				Usage:   "rules file that maps registry hosts to proxies (default: imgxfer/rules.yaml in the user config directory)",
				EnvVars: []string{routing.EnvRules},
			},
			&cli.StringFlag{
				Name:  flagFormat,
				Usage: "output format on stdout: text or json",
				Value: formatText,
			},
		},
		Action: func(c *cli.Context) error {
			if err := exactArgs(c, "IMAGE|REGISTRY"); err != nil {
				return err
			}
			return a.runRoute(c.Context, routeOptions{
				target:    c.Args().First(),
				rulesPath: c.String(flagRules),
				format:    c.String(flagFormat),
			})
		},
	}
}

// routeOutput is the JSON form of a routing decision.
type routeOutput struct {
	Registry     string `json:"registry"`
	Scheme       string `json:"scheme"`
	Routed       bool   `json:"routed"`
	Route        int    `json:"route"` // -1 when the requests go direct
	HostsEntry   string `json:"hostsEntry,omitempty"`
	RulePosition string `json:"rulePosition,omitempty"`
	Proxy        string `json:"proxy,omitempty"`
	Header       string `json:"header,omitempty"`
	HeaderValue  string `json:"headerValue,omitempty"`
	Upstream     string `json:"upstream,omitempty"`
	UpstreamFrom string `json:"upstreamFrom,omitempty"`
	ProxyProblem string `json:"proxyProblem,omitempty"`
}

func (a *App) runRoute(_ context.Context, opts routeOptions) error {
	if opts.format != formatText && opts.format != formatJSON {
		return usageErrorf("invalid --%s %q; use %s or %s", flagFormat, opts.format, formatText, formatJSON)
	}
	host, err := registryHost(opts.target)
	if err != nil {
		return usageErrorf("%w", err)
	}
	rules, err := loadRequiredRules(opts.rulesPath)
	if err != nil {
		return usageErrorf("%w", err)
	}
	decision, err := rules.Decide(host)
	if err != nil {
		return usageErrorf("%w", err)
	}

	out := routeOutput{Registry: decision.Host, Scheme: decision.Scheme, Route: decision.RouteIndex}
	if decision.Routed() {
		route := rules.Routes[decision.RouteIndex]
		field := fmt.Sprintf("routes[%d].hosts[%d]", decision.RouteIndex, decision.HostIndex)
		out.Routed = true
		out.HostsEntry = route.Hosts[decision.HostIndex]
		out.RulePosition = rules.Position(field)
		out.Proxy = decision.Proxy.String()
		out.Header = decision.Header
		out.HeaderValue = decision.Host

		allowlist, err := rules.ProxyAllowlist()
		if err != nil {
			out.ProxyProblem = err.Error()
		}
		for _, entry := range allowlist {
			if entry.HeaderValue == decision.Host {
				out.Upstream = entry.Upstream.String()
				out.UpstreamFrom = entry.Origin
			}
		}
	}
	return printRoute(a.stdout, opts.format, out)
}

// registryHost returns the registry of an image reference, or the argument itself when it
// has no "/" and so names a registry.
func registryHost(target string) (string, error) {
	if !strings.Contains(target, "/") {
		if _, err := routing.Empty().Decide(target); err != nil {
			return "", fmt.Errorf("invalid registry %q: expected host or host:port, such as registry.example.com:5000", target)
		}
		return target, nil
	}
	ref, err := registry.ParseReference(target)
	if err != nil {
		return "", err
	}
	if ref.Registry == "" {
		return "", fmt.Errorf("%q names no registry, so no request is routed; give an image reference such as registry.example.com/team/app:1.4", target)
	}
	return ref.Registry, nil
}

func printRoute(w io.Writer, format string, out routeOutput) error {
	if format == formatJSON {
		return json.NewEncoder(w).Encode(out)
	}

	var b strings.Builder
	fmt.Fprintf(&b, "registry:  %s (%s)\n", out.Registry, out.Scheme)
	if !out.Routed {
		b.WriteString("route:     none; requests go direct, without the routing header\n")
		_, err := io.WriteString(w, b.String())
		return err
	}
	fmt.Fprintf(&b, "route:     routes[%d], hosts entry %q (%s)\n", out.Route, out.HostsEntry, out.RulePosition)
	fmt.Fprintf(&b, "proxy:     %s\n", out.Proxy)
	fmt.Fprintf(&b, "header:    %s: %s\n", out.Header, out.HeaderValue)
	switch {
	case out.Upstream != "":
		fmt.Fprintf(&b, "upstream:  %s (%s), as the rules' proxy section generates it\n", out.Upstream, out.UpstreamFrom)
	case out.ProxyProblem != "":
		fmt.Fprintf(&b, "upstream:  unknown: %s\n", out.ProxyProblem)
	default:
		fmt.Fprintf(&b, "upstream:  none: the proxy that these rules generate answers 403 for %s; list it under proxy.upstreams\n", out.HeaderValue)
	}
	_, err := io.WriteString(w, b.String())
	return err
}
