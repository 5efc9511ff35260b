// Package commands defines imgxfer's command-line interface: its commands, flags, output
// and exit codes. Commands parse their input and call routing and internal/registry,
// which do the work.
package commands

import (
	"context"
	"errors"
	"fmt"
	"io"
	"regexp"
	"slices"
	"strings"

	"github.com/sirupsen/logrus"
	"github.com/urfave/cli/v2"

	"github.com/imgxfer/imgxfer/internal/logging"
)

// Flag names shared by several commands.
const (
	flagLogLevel  = "log-level"
	flagLogFormat = "log-format"
)

// App builds and runs the command-line interface. It holds what the commands share: the
// output streams and, once the global flags are parsed, the logger.
type App struct {
	name   string
	stdin  io.Reader
	stdout io.Writer
	stderr io.Writer
	log    *logrus.Logger
}

// NewApp returns the CLI named name: "imgxfer" standalone, or "docker imgxfer" when docker
// runs it as a plugin, so that help text shows the command the user typed.
func NewApp(name string, stdin io.Reader, stdout, stderr io.Writer) *App {
	return &App{name: name, stdin: stdin, stdout: stdout, stderr: stderr}
}

// Run parses args, whose first element is the program name, and runs the command. It
// never exits the process and never prints the returned error; main does both.
func (a *App) Run(ctx context.Context, args []string) error {
	return a.cliApp().RunContext(ctx, args)
}

func (a *App) cliApp() *cli.App {
	app := &cli.App{
		Name:                   a.name,
		Usage:                  "copy container images through a registry mesh proxy",
		Reader:                 a.stdin,
		Writer:                 a.stdout,
		ErrWriter:              a.stderr,
		HideHelpCommand:        false,
		UseShortOptionHandling: false,
		Flags:                  logFlags(),
		Before:                 a.setUpLogging,
		Commands: []*cli.Command{
			a.copyCommand(),
			a.loginCommand(),
			a.logoutCommand(),
			a.proxyCommand(), a.routeCommand(), a.doctorCommand(),
			a.versionCommand(),
			a.syncCommand(), a.completionCommand(),
		},
		Action: func(c *cli.Context) error {
			if c.Args().Present() {
				return usageErrorf("unknown command %q; run '%s --help' for the list of commands", c.Args().First(), a.name)
			}
			return cli.ShowAppHelp(c)
		},
		OnUsageError:   a.onUsageError,
		ExitErrHandler: func(*cli.Context, error) {},
	}
	for _, command := range app.Commands {
		command.OnUsageError = a.onUsageError
		// The log flags work after the command name too, as users of tools with global
		// flags expect; there they override the values given before it.
		command.Flags = append(command.Flags, logFlags()...)
		command.Before = func(c *cli.Context) error {
			if c.IsSet(flagLogLevel) || c.IsSet(flagLogFormat) {
				return a.setUpLogging(c)
			}
			return nil
		}
	}
	return app
}

func logFlags() []cli.Flag {
	return []cli.Flag{
		&cli.StringFlag{
			Name:    flagLogLevel,
			Usage:   "log level on stderr: " + strings.Join(logging.Levels, ", "),
			Value:   "info",
			EnvVars: []string{"IMGXFER_LOG_LEVEL"},
		},
		&cli.StringFlag{
			Name:    flagLogFormat,
			Usage:   "log format on stderr: text or json",
			Value:   logging.FormatText,
			EnvVars: []string{"IMGXFER_LOG_FORMAT"},
		},
	}
}

func (a *App) setUpLogging(c *cli.Context) error {
	logger, err := logging.New(a.stderr, c.String(flagLogLevel), c.String(flagLogFormat))
	if err != nil {
		return usageErrorf("%w", err)
	}
	a.log = logger
	return nil
}

// onUsageError turns urfave/cli's flag parsing errors into one-line usage errors instead
// of the default message followed by the whole help text.
func (a *App) onUsageError(c *cli.Context, err error, _ bool) error {
	command := a.name
	// urfave/cli names the root command after the app, which is already in command.
	if c.Command != nil && c.Command.Name != "" && c.Command.Name != a.name {
		command += " " + c.Command.Name
	}
	if match := invalidFlagValue.FindStringSubmatch(err.Error()); match != nil {
		return usageErrorf("invalid --%s %q: expected %s; run '%s --help' for usage", match[2], match[1], expectedValue(c, match[2]), command)
	}
	return usageErrorf("%w; run '%s --help' for usage", err, command)
}

// invalidFlagValue matches the errors of Go's flag package for a value that does not parse,
// such as `invalid value "abc" for flag -max-requests: parse error` and
// `invalid boolean value "maybe" for -quiet: parse error`.
var invalidFlagValue = regexp.MustCompile(`^invalid (?:boolean )?value "(.*)" for (?:flag )?-([^:]+): `)

// expectedValue describes the values that the flag called name takes, by its type.
func expectedValue(c *cli.Context, name string) string {
	var flags []cli.Flag
	if c.Command != nil {
		flags = c.Command.Flags
	}
	for _, flag := range flags {
		if !slices.Contains(flag.Names(), name) {
			continue
		}
		switch flag.(type) {
		case *cli.IntFlag, *cli.Int64Flag, *cli.UintFlag, *cli.Uint64Flag:
			return "a whole number"
		case *cli.BoolFlag:
			return "true or false"
		case *cli.DurationFlag:
			return "a duration such as 90s or 15m"
		}
	}
	return "a valid value"
}

// ErrUsage marks errors in the command line or in configuration: the fix is in the
// command, its flags or the files they name.
var ErrUsage = errors.New("usage error")

type usageError struct {
	err error
}

func (e *usageError) Error() string { return e.err.Error() }

func (e *usageError) Unwrap() []error { return []error{e.err, ErrUsage} }

func usageErrorf(format string, args ...any) error {
	return &usageError{err: fmt.Errorf(format, args...)}
}

// exactArgs checks the number of positional arguments. urfave/cli stops parsing flags at
// the first positional argument, so a flag written after SRC arrives here as an argument
// and gets its own message.
func exactArgs(c *cli.Context, names ...string) error {
	args := c.Args().Slice()
	for _, arg := range args {
		if strings.HasPrefix(arg, "-") && len(arg) > 1 {
			if len(names) == 0 {
				return usageErrorf("flag %q is not defined for %s; run '%s --help' for usage", arg, c.Command.Name, c.Command.HelpName)
			}
			return usageErrorf("flag %q comes after the arguments; put flags before %s", arg, names[0])
		}
	}
	if len(names) == 0 && len(args) > 0 {
		return usageErrorf("%s takes no arguments, got %q", c.Command.Name, args[0])
	}
	if len(args) != len(names) {
		noun := "arguments"
		if len(names) == 1 {
			noun = "argument"
		}
		return usageErrorf("%s needs %d %s (%s), got %d; run '%s --help' for usage",
			c.Command.Name, len(names), noun, strings.Join(names, " "), len(args), c.Command.HelpName)
	}
	return nil
}
