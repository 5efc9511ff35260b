package commands

import (
	"fmt"
	"io"
	"sort"
	"strings"

	"github.com/urfave/cli/v2"

	"github.com/imgxfer/imgxfer/internal/batch"
	"github.com/imgxfer/imgxfer/internal/logging"
)

// completionShells lists the shells that `imgxfer completion` writes scripts for.
var completionShells = []string{"bash", "zsh", "fish"}

func (a *App) completionCommand() *cli.Command {
	return &cli.Command{
		Name:      "completion",
		Usage:     "print a shell completion script for bash, zsh or fish",
		ArgsUsage: "SHELL",
		Description: `The script completes command names, flags, and the values of flags that take a
fixed set of values. Load it in the current shell, or install it where the shell loads
completions:

  source <(imgxfer completion bash)                      # bash, this shell
  imgxfer completion bash > /etc/bash_completion.d/imgxfer
  imgxfer completion zsh > "${fpath[1]}/_imgxfer"        # zsh, with compinit
  imgxfer completion fish > ~/.config/fish/completions/imgxfer.fish`,
		Action: func(c *cli.Context) error {
			if err := exactArgs(c, "SHELL"); err != nil {
				return err
			}
			return a.runCompletion(c.Args().First())
		},
	}
}

func (a *App) runCompletion(shell string) error {
	// Scripts always name the standalone command, whatever name this process runs under.
	app := (&App{name: "imgxfer", stdin: a.stdin, stdout: a.stdout, stderr: a.stderr}).cliApp()
	switch shell {
	case "bash":
		return writeBashCompletion(a.stdout, app, false)
	case "zsh":
		return writeBashCompletion(a.stdout, app, true)
	case "fish":
		script, err := app.ToFishCompletion()
		if err != nil {
			return fmt.Errorf("generating the fish completion script: %w", err)
		}
		_, err = io.WriteString(a.stdout, script)
		return err
	}
	return usageErrorf("unknown shell %q; use %s", shell, strings.Join(completionShells, ", "))
}

// flagValues lists the values of flags that take a fixed set of them.
func flagValues() map[string][]string {
	formats := make([]string, len(batch.Formats))
	for i, f := range batch.Formats {
		formats[i] = string(f)
	}
	return map[string][]string{
		flagLogLevel:   logging.Levels,
		flagLogFormat:  {logging.FormatText, logging.FormatJSON},
		flagFormat:     {formatText, formatJSON},
		flagFileFormat: formats,
	}
}

// writeBashCompletion writes a completion function for bash. zsh runs the same function
// through its bashcompinit module.
func writeBashCompletion(w io.Writer, app *cli.App, zsh bool) error {
	var b strings.Builder
	if zsh {
		b.WriteString("#compdef imgxfer docker-imgxfer\n")
		b.WriteString("# zsh completion for imgxfer, written by `imgxfer completion zsh`.\n")
		b.WriteString("autoload -U +X bashcompinit && bashcompinit\n\n")
	} else {
		b.WriteString("# bash completion for imgxfer, written by `imgxfer completion bash`.\n\n")
	}

	b.WriteString("_imgxfer() {\n")
	b.WriteString("\tlocal cur=${COMP_WORDS[COMP_CWORD]} prev=${COMP_WORDS[COMP_CWORD-1]} command= i\n")
	b.WriteString("\tfor ((i = 1; i < COMP_CWORD; i++)); do\n")
	b.WriteString("\t\tcase ${COMP_WORDS[i]} in\n")
	b.WriteString("\t\t-*) ;;\n")
	b.WriteString("\t\t*) command=${COMP_WORDS[i]}; break ;;\n")
	b.WriteString("\t\tesac\n")
	b.WriteString("\tdone\n\n")

	b.WriteString("\tcase $prev in\n")
	values := flagValues()
	names := make([]string, 0, len(values))
	for name := range values {
		names = append(names, name)
	}
	sort.Strings(names)
	for _, name := range names {
		fmt.Fprintf(&b, "\t--%s) COMPREPLY=($(compgen -W %q -- \"$cur\")); return ;;\n", name, strings.Join(values[name], " "))
	}
	b.WriteString("\tesac\n\n")

	var globalWords []string
	for _, command := range app.Commands {
		if !command.Hidden {
			globalWords = append(globalWords, command.Names()...)
		}
	}
	globalWords = append(globalWords, flagWords(app.Flags)...)
	globalWords = append(globalWords, "--help")

	b.WriteString("\tlocal words\n")
	b.WriteString("\tcase $command in\n")
	fmt.Fprintf(&b, "\t\"\") words=%q ;;\n", strings.Join(globalWords, " "))
	for _, command := range app.Commands {
		if command.Hidden {
			continue
		}
		var words []string
		for _, sub := range command.Subcommands {
			words = append(words, sub.Names()...)
		}
		words = append(append(words, flagWords(command.Flags)...), "--help")
		fmt.Fprintf(&b, "\t%s) words=%q ;;\n", strings.Join(command.Names(), "|"), strings.Join(words, " "))
	}
	b.WriteString("\tesac\n")
	b.WriteString("\tif [[ -z $command || $cur == -* ]]; then\n")
	b.WriteString("\t\tCOMPREPLY=($(compgen -W \"$words\" -- \"$cur\"))\n")
	b.WriteString("\tfi\n")
	b.WriteString("}\n")
	b.WriteString("complete -o default -F _imgxfer imgxfer docker-imgxfer\n")

	_, err := io.WriteString(w, b.String())
	return err
}

func flagWords(flags []cli.Flag) []string {
	var words []string
	for _, flag := range flags {
		for _, name := range flag.Names() {
			if len(name) == 1 {
				words = append(words, "-"+name)
			} else {
				words = append(words, "--"+name)
			}
		}
	}
	return words
}
