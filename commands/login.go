package commands

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"os"
	"strings"

	"github.com/urfave/cli/v2"
	"golang.org/x/term"

	"github.com/imgxfer/imgxfer/internal/credentials"
	"github.com/imgxfer/imgxfer/internal/registry"
	"github.com/imgxfer/imgxfer/internal/version"
)

const (
	flagUsername      = "username"
	flagPasswordStdin = "password-stdin"
)

type loginOptions struct {
	registry      string
	rulesPath     string
	proxy         string
	username      string
	passwordStdin bool
}

func (a *App) loginCommand() *cli.Command {
	return &cli.Command{
		Name:      "login",
		Usage:     "check credentials for a registry through its route, then store them as docker does",
		ArgsUsage: "REGISTRY",
		Description: `REGISTRY is a host as written in image references, such as registry.example.com,
registry.example.com:5000 or docker.io.

The credentials are checked against the registry through the rules' route, so login works
for a registry that only the proxy reaches, where "docker login" cannot. They are stored
where docker keeps them, under the registry's own host: in the credential helper that
config.json names (credHelpers, credsStore), else in config.json ($DOCKER_CONFIG or
~/.docker). imgxfer and docker both find them there.

Examples:
  imgxfer login --rules rules.yaml -u ci-bot registry.prod.example.com
  echo "$TOKEN" | imgxfer login -u ci-bot --password-stdin registry.prod.example.com`,
		Flags: append(
			routeFlags("route REGISTRY through this proxy URL, ahead of any rule, such as http://mesh-proxy:31080"),
			&cli.StringFlag{
				Name:    flagUsername,
				Aliases: []string{"u"},
				Usage:   "username; asked for on a terminal when not given",
			},
			&cli.BoolFlag{
				Name:  flagPasswordStdin,
				Usage: "read the password from stdin instead of asking for it on the terminal",
			},
		),
		Action: func(c *cli.Context) error {
			if err := exactArgs(c, "REGISTRY"); err != nil {
				return err
			}
			return a.runLogin(c.Context, loginOptions{
				registry:      c.Args().First(),
				rulesPath:     c.String(flagRules),
				proxy:         c.String(flagProxy),
				username:      c.String(flagUsername),
				passwordStdin: c.Bool(flagPasswordStdin),
			})
		},
	}
}

func (a *App) runLogin(ctx context.Context, opts loginOptions) error {
	host, err := registry.ParseRegistry(opts.registry)
	if err != nil {
		return usageErrorf("REGISTRY: %w", err)
	}
	rules, err := loadRoutes(opts.rulesPath, opts.proxy, host)
	if err != nil {
		return err
	}

	cred, err := a.askCredential(host, opts)
	if err != nil {
		return err
	}

	client, err := registry.New(registry.Options{
		Rules:       rules,
		Logger:      a.log,
		UserAgent:   version.UserAgent(),
		Credentials: map[string]registry.Credential{host: cred},
	})
	if err != nil {
		return usageErrorf("%w", err)
	}
	defer client.Close()

	if err := client.CheckLogin(ctx, host); err != nil {
		var authErr *registry.AuthError
		if errors.As(err, &authErr) {
			return fmt.Errorf("login failed: %w", err)
		}
		return fmt.Errorf("checking the credentials of user %q for %s: %w", cred.Username, host, err)
	}

	where, err := credentials.Store(host, cred.Username, cred.Password)
	if err != nil {
		return err
	}
	_, err = fmt.Fprintf(a.stdout, "Login succeeded: %s as %s, stored in %s\n", host, cred.Username, where)
	return err
}

// askCredential collects the username and password from the flags, stdin or, on a
// terminal, prompts.
func (a *App) askCredential(host string, opts loginOptions) (registry.Credential, error) {
	cred := registry.Credential{Username: opts.username}
	stdinFile, stdinIsFile := a.stdin.(*os.File)
	interactive := stdinIsFile && term.IsTerminal(int(stdinFile.Fd()))

	if opts.passwordStdin {
		if cred.Username == "" {
			return cred, usageErrorf("--%s needs --%s", flagPasswordStdin, flagUsername)
		}
		password, err := readPassword(a.stdin)
		if err != nil {
			return cred, err
		}
		cred.Password = password
		return cred, nil
	}
	if !interactive {
		return cred, usageErrorf("stdin is not a terminal, so imgxfer cannot ask for the password; pipe it to --%s and give --%s", flagPasswordStdin, flagUsername)
	}

	if cred.Username == "" {
		fmt.Fprintf(a.stderr, "Username for %s: ", host)
		line, err := bufio.NewReader(a.stdin).ReadString('\n')
		if err != nil {
			return cred, fmt.Errorf("reading the username: %w", err)
		}
		cred.Username = strings.TrimSpace(line)
		if cred.Username == "" {
			return cred, usageErrorf("the username is empty")
		}
	}
	fmt.Fprintf(a.stderr, "Password for %s@%s: ", cred.Username, host)
	password, err := term.ReadPassword(int(stdinFile.Fd()))
	fmt.Fprintln(a.stderr)
	if err != nil {
		return cred, fmt.Errorf("reading the password: %w", err)
	}
	if len(password) == 0 {
		return cred, usageErrorf("the password is empty")
	}
	cred.Password = string(password)
	return cred, nil
}

func (a *App) logoutCommand() *cli.Command {
	return &cli.Command{
		Name:      "logout",
		Usage:     "remove the stored credentials for a registry",
		ArgsUsage: "REGISTRY",
		Action: func(c *cli.Context) error {
			if err := exactArgs(c, "REGISTRY"); err != nil {
				return err
			}
			return a.runLogout(c.Args().First())
		},
	}
}

func (a *App) runLogout(text string) error {
	host, err := registry.ParseRegistry(text)
	if err != nil {
		return usageErrorf("REGISTRY: %w", err)
	}
	removed, where, err := credentials.Erase(host)
	if err != nil {
		return err
	}
	if !removed {
		_, err = fmt.Fprintf(a.stdout, "No credentials stored for %s in %s\n", host, where)
		return err
	}
	_, err = fmt.Fprintf(a.stdout, "Removed the credentials for %s from %s\n", host, where)
	return err
}
