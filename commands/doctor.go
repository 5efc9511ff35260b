package commands

import (
	"context"
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/imgxfer/imgxfer/internal/registry"
	"github.com/imgxfer/imgxfer/internal/version"
	"github.com/imgxfer/imgxfer/routing"
)

const flagTimeout = "timeout"

type doctorOptions struct {
	target    string // image reference or registry host
	rulesPath string // empty: the default rules file, if it exists
	timeout   time.Duration
}

func (a *App) doctorCommand() *cli.Command {
	return &cli.Command{
		Name:      "doctor",
		Usage:     "check the route to a registry step by step and say where it breaks",
		ArgsUsage: "IMAGE|REGISTRY",
		Description: `The steps, in order: the rules file is valid; the route; the proxy's address resolves
and accepts a connection; TLS to the proxy verifies; the proxy accepts the routing header;
the registry answers /v2/; the token realm of its challenge is reachable through the
routes; the credentials in docker's config.json, if any, are accepted. Each step prints
ok, FAIL with the likely fix, or skip. The exit status is 0 when the route works, and
otherwise the one a copy would fail with.

An argument without "/" is a registry host, such as registry.example.com:5000.

Examples:
  imgxfer doctor --rules rules.yaml registry.prod.example.com
  imgxfer doctor --rules rules.yaml registry.prod.example.com/team/app:1.4`,
		Flags: []cli.Flag{
			&cli.StringFlag{
				Name:    flagRules,
				Usage:   "rules file that maps registry hosts to proxies (default: imgxfer/rules.yaml in the user config directory, if present)",
				EnvVars: []string{routing.EnvRules},
			},
			&cli.DurationFlag{
				Name:  flagTimeout,
				Usage: "time limit of each step, such as 10s",
				Value: 10 * time.Second,
			},
		},
		Action: func(c *cli.Context) error {
			if err := exactArgs(c, "IMAGE|REGISTRY"); err != nil {
				return err
			}
			return a.runDoctor(c.Context, doctorOptions{
				target:    c.Args().First(),
				rulesPath: c.String(flagRules),
				timeout:   c.Duration(flagTimeout),
			})
		},
	}
}

func (a *App) runDoctor(ctx context.Context, opts doctorOptions) error {
	if opts.timeout <= 0 {
		return usageErrorf("invalid --%s %s; give a positive duration such as 10s", flagTimeout, opts.timeout)
	}
	host, err := registryHost(opts.target)
	if err != nil {
		return usageErrorf("%w", err)
	}

	rules, err := loadRules(opts.rulesPath)
	if err != nil {
		printCheck(a.stdout, registry.CheckResult{Step: "rules file", Status: registry.CheckFailed, Detail: err.Error(), Fix: "correct the field that the message names"})
		return usageErrorf("%w", err)
	}
	printCheck(a.stdout, registry.CheckResult{Step: "rules file", Status: registry.CheckOK, Detail: fmt.Sprintf("%s is valid: %d routes", rules.Source, len(rules.Routes))})

	client, err := registry.New(registry.Options{Rules: rules, Logger: a.log, UserAgent: version.UserAgent()})
	if err != nil {
		return usageErrorf("%w", err)
	}
	defer client.Close()

	err = client.Doctor(ctx, rules, host, opts.timeout, func(result registry.CheckResult) {
		printCheck(a.stdout, result)
	})
	if err != nil {
		return fmt.Errorf("the route to %s is broken: %w", host, err)
	}
	return nil
}

// printCheck writes one step: its status, its name and what was found, then the fix of a
// failure on an indented line.
func printCheck(w io.Writer, result registry.CheckResult) {
	var b strings.Builder
	fmt.Fprintf(&b, "%-4s  %-16s  %s\n", result.Status, result.Step, result.Detail)
	if result.Status == registry.CheckFailed && result.Fix != "" {
		fmt.Fprintf(&b, "%-4s  %-16s  fix: %s\n", "", "", result.Fix)
	}
	_, _ = io.WriteString(w, b.String())
}
