package commands

import (
	"context"
	"fmt"
	"os"
	"path/filepath"

	"github.com/urfave/cli/v2"

	"github.com/imgxfer/imgxfer/internal/proxyconf"
	"github.com/imgxfer/imgxfer/routing"
)

const (
	flagOutput  = "output"
	flagName    = "name"
	flagTLSCert = "tls-cert"
	flagTLSKey  = "tls-key"

	formatConf      = "conf"
	formatConfigMap = "configmap"
)

type proxyNginxOptions struct {
	rulesPath string // empty: the default rules file, which must exist
	output    string // empty or "-": stdout
	format    string
	name      string // ConfigMap name
	tlsCert   string // replaces proxy.tls.cert
	tlsKey    string // replaces proxy.tls.key
}

func (a *App) proxyCommand() *cli.Command {
	return &cli.Command{
		Name:  "proxy",
		Usage: "generate the mesh proxy's configuration from the rules file",
		Description: `The proxy forwards a request only when the routing header names a registry that
the rules route to it. Its configuration comes from the same rules file as the clients'.`,
		Subcommands: []*cli.Command{a.proxyNginxCommand()},
		Action: func(c *cli.Context) error {
			if c.Args().Present() {
				return usageErrorf("unknown proxy kind %q; run '%s proxy --help' for the list", c.Args().First(), a.name)
			}
			return cli.ShowSubcommandHelp(c)
		},
	}
}

func (a *App) proxyNginxCommand() *cli.Command {
	return &cli.Command{
		Name:  "nginx",
		Usage: "write the proxy's nginx.conf, or a Kubernetes ConfigMap that contains it",
		Description: `Every host of every route is allowlisted, with the upstream https://HOST (http:// when
the host's registries entry sets tls: disabled) unless proxy.upstreams gives another. A
wildcard host needs proxy.upstreams entries for the hosts it should reach. The proxy
answers 400 without the header and 403 for any host not on the allowlist.

The output is a complete nginx.conf that runs nginx in the foreground: nginx -c FILE.

Examples:
  imgxfer proxy nginx --rules rules.yaml > nginx.conf
  imgxfer proxy nginx --rules rules.yaml --tls-cert /etc/tls/proxy.crt --tls-key /etc/tls/proxy.key -o nginx.conf
  imgxfer proxy nginx --rules rules.yaml --format configmap -o mesh-proxy-nginx.yaml`,
		Flags: []cli.Flag{
			&cli.StringFlag{
				Name:    flagRules,
				Usage:   "rules file with the routes and the proxy section (default: imgxfer/rules.yaml in the user config directory)",
				EnvVars: []string{routing.EnvRules},
			},
			&cli.StringFlag{
				Name:    flagOutput,
				Aliases: []string{"o"},
				Usage:   "write to this file instead of stdout",
			},
			&cli.StringFlag{
				Name:  flagFormat,
				Usage: "output format: conf (nginx.conf) or configmap (a Kubernetes ConfigMap with the key nginx.conf)",
				Value: formatConf,
			},
			&cli.StringFlag{
				Name:  flagName,
				Usage: "name of the ConfigMap, with --format configmap",
				Value: proxyconf.DefaultConfigMapName,
			},
			&cli.StringFlag{
				Name:  flagTLSCert,
				Usage: "PEM certificate chain of the TLS listener, in place of proxy.tls.cert",
			},
			&cli.StringFlag{
				Name:  flagTLSKey,
				Usage: "PEM private key of the TLS listener, in place of proxy.tls.key",
			},
		},
		Action: func(c *cli.Context) error {
			if err := exactArgs(c); err != nil {
				return err
			}
			return a.runProxyNginx(c.Context, proxyNginxOptions{
				rulesPath: c.String(flagRules),
				output:    c.String(flagOutput),
				format:    c.String(flagFormat),
				name:      c.String(flagName),
				tlsCert:   c.String(flagTLSCert),
				tlsKey:    c.String(flagTLSKey),
			})
		},
	}
}

func (a *App) runProxyNginx(_ context.Context, opts proxyNginxOptions) error {
	if opts.format != formatConf && opts.format != formatConfigMap {
		return usageErrorf("invalid --%s %q; use %s or %s", flagFormat, opts.format, formatConf, formatConfigMap)
	}
	rules, err := loadRequiredRules(opts.rulesPath)
	if err != nil {
		return usageErrorf("%w", err)
	}

	generatorOpts := proxyconf.Options{TLSCert: opts.tlsCert, TLSKey: opts.tlsKey}
	var output []byte
	if opts.format == formatConfigMap {
		output, err = proxyconf.ConfigMap(rules, generatorOpts, opts.name)
	} else {
		output, err = proxyconf.Generate(rules, generatorOpts)
	}
	if err != nil {
		return usageErrorf("%w", err)
	}

	if opts.output == "" || opts.output == "-" {
		_, err := a.stdout.Write(output)
		return err
	}
	return writeFileAtomic(opts.output, output)
}

// loadRequiredRules loads the rules file at path, or the default rules file when path is
// empty. Unlike loadRules, a missing default file is an error, because commands that
// explain or generate the routes have nothing to work on without one.
func loadRequiredRules(path string) (*routing.Rules, error) {
	if path != "" {
		return routing.Load(path)
	}
	defaultPath, err := routing.DefaultPath()
	if err != nil {
		return nil, fmt.Errorf("no rules file: pass --%s FILE or set %s", flagRules, routing.EnvRules)
	}
	if _, err := os.Stat(defaultPath); err != nil {
		return nil, fmt.Errorf("no rules file: pass --%s FILE or set %s; the default %s does not exist", flagRules, routing.EnvRules, defaultPath)
	}
	return routing.Load(defaultPath)
}

// writeFileAtomic writes data to a temporary file beside path and renames it into place,
// so that a reader such as a running nginx never reads half a file.
func writeFileAtomic(path string, data []byte) error {
	temp, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".*")
	if err != nil {
		return fmt.Errorf("writing %s: %w", path, err)
	}
	defer os.Remove(temp.Name())
	if _, err := temp.Write(data); err != nil {
		temp.Close()
		return fmt.Errorf("writing %s: %w", path, err)
	}
	if err := temp.Chmod(0o644); err != nil {
		temp.Close()
		return fmt.Errorf("writing %s: %w", path, err)
	}
	if err := temp.Close(); err != nil {
		return fmt.Errorf("writing %s: %w", path, err)
	}
	if err := os.Rename(temp.Name(), path); err != nil {
		return fmt.Errorf("writing %s: %w", path, err)
	}
	return nil
}
