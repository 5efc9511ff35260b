package commands

import (
	"fmt"
	"io"
	"os"
	"strings"

	"github.com/urfave/cli/v2"

	"github.com/imgxfer/imgxfer/internal/registry"
	"github.com/imgxfer/imgxfer/routing"
)

// routeFlags are the flags that choose routes: a rules file and a one-off proxy.
func routeFlags(proxyUsage string) []cli.Flag {
	return []cli.Flag{
		&cli.StringFlag{
			Name:    flagRules,
			Usage:   "rules file that maps registry hosts to proxies (default: imgxfer/rules.yaml in the user config directory, if present)",
			EnvVars: []string{routing.EnvRules},
		},
		&cli.StringFlag{
			Name:  flagProxy,
			Usage: proxyUsage,
		},
	}
}

// loadRoutes loads the rules file at rulesPath (or the default one) and, when proxyURL is
// set, puts a route for host through it ahead of the others.
func loadRoutes(rulesPath, proxyURL, host string) (*routing.Rules, error) {
	rules, err := loadRules(rulesPath)
	if err != nil {
		return nil, usageErrorf("%w", err)
	}
	if proxyURL == "" {
		return rules, nil
	}
	rules, err = rules.WithProxy(host, proxyURL)
	if err != nil {
		return nil, usageErrorf("%w", err)
	}
	return rules, nil
}

// loadRules loads the rules file at path, or the default rules file when path is empty
// and that file exists, or no rules at all.
func loadRules(path string) (*routing.Rules, error) {
	if path != "" {
		return routing.Load(path)
	}
	defaultPath, err := routing.DefaultPath()
	if err != nil {
		return routing.Empty(), nil
	}
	if _, err := os.Stat(defaultPath); err != nil {
		return routing.Empty(), nil
	}
	return routing.Load(defaultPath)
}

// credentialFlags are the username and password-from-stdin flags for one side of a copy,
// such as "src" or "dest". Passwords come from stdin or the environment, never from argv,
// where other users of the machine can read them.
func credentialFlags(side, description string) []cli.Flag {
	upper := strings.ToUpper(side)
	return []cli.Flag{
		&cli.StringFlag{
			Name:    side + "-user",
			Usage:   "username for the " + description + " registry, instead of docker's stored credentials; the password comes from --" + side + "-password-stdin or $IMGXFER_" + upper + "_PASSWORD",
			EnvVars: []string{"IMGXFER_" + upper + "_USER"},
		},
		&cli.BoolFlag{
			Name:  side + "-password-stdin",
			Usage: "read the " + description + " registry's password from stdin",
		},
	}
}

// sideCredential returns the credential given for one side of a copy, or nil when no
// username was given.
func (a *App) sideCredential(c *cli.Context, side string) (*registry.Credential, error) {
	user := c.String(side + "-user")
	fromStdin := c.Bool(side + "-password-stdin")
	envName := "IMGXFER_" + strings.ToUpper(side) + "_PASSWORD"

	if user == "" {
		if fromStdin {
			return nil, usageErrorf("--%s-password-stdin needs --%s-user", side, side)
		}
		return nil, nil
	}

	password := os.Getenv(envName)
	if fromStdin {
		var err error
		password, err = readPassword(a.stdin)
		if err != nil {
			return nil, err
		}
	}
	if password == "" {
		return nil, usageErrorf("--%s-user %q has no password; pipe it to --%s-password-stdin or set $%s", side, user, side, envName)
	}
	return &registry.Credential{Username: user, Password: password}, nil
}

// readPassword reads a password from r up to EOF, as docker login --password-stdin does,
// and removes the trailing line break.
func readPassword(r io.Reader) (string, error) {
	data, err := io.ReadAll(io.LimitReader(r, 64*1024))
	if err != nil {
		return "", fmt.Errorf("reading the password from stdin: %w", err)
	}
	password := strings.TrimSuffix(strings.TrimSuffix(string(data), "\n"), "\r")
	if password == "" {
		return "", usageErrorf("the password on stdin is empty")
	}
	return password, nil
}
