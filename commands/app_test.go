package commands

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"net/url"
	"strings"
	"testing"

	"github.com/regclient/regclient/types/errs"
	"github.com/urfave/cli/v2"

	"github.com/imgxfer/imgxfer/routing"
)

// runApp runs the CLI with args and returns stdout, stderr and the error.
func runApp(args ...string) (string, string, error) {
	var stdout, stderr bytes.Buffer
	app := NewApp("imgxfer", strings.NewReader(""), &stdout, &stderr)
	err := app.Run(context.Background(), append([]string{"imgxfer"}, args...))
	return stdout.String(), stderr.String(), err
}

func TestCommandTreeIsDocumented(t *testing.T) {
	app := NewApp("imgxfer", nil, &bytes.Buffer{}, &bytes.Buffer{}).cliApp()
	var check func(prefix string, commands []*cli.Command)
	check = func(prefix string, commands []*cli.Command) {
		for _, command := range commands {
			name := prefix + command.Name
			if command.Usage == "" {
				t.Errorf("command %q has no Usage", name)
			}
			if command.Usage != strings.ToLower(command.Usage[:1])+command.Usage[1:] {
				t.Errorf("command %q: Usage should start in lower case like the others", name)
			}
			for _, flag := range command.Flags {
				if doc, ok := flag.(cli.DocGenerationFlag); ok && doc.GetUsage() == "" {
					t.Errorf("flag %v of %q has no Usage", flag.Names(), name)
				}
			}
			check(name+" ", command.Subcommands)
		}
	}
	check("", app.Commands)
	for _, flag := range app.Flags {
		if doc, ok := flag.(cli.DocGenerationFlag); ok && doc.GetUsage() == "" {
			t.Errorf("global flag %v has no Usage", flag.Names())
		}
	}
}

func TestVersionJSON(t *testing.T) {
	stdout, _, err := runApp("version", "--format", "json")
	if err != nil {
		t.Fatal(err)
	}
	var info map[string]string
	if err := json.Unmarshal([]byte(stdout), &info); err != nil {
		t.Fatalf("version --format json printed %q: %v", stdout, err)
	}
	for _, key := range []string{"version", "commit", "date", "goVersion", "platform"} {
		if info[key] == "" {
			t.Errorf("version JSON lacks %q: %v", key, info)
		}
	}
}

func TestUsageErrors(t *testing.T) {
	tests := []struct {
		args []string
		want string
	}{
		{[]string{"frob"}, `unknown command "frob"`},
		{[]string{"version", "extra"}, `version takes no arguments, got "extra"`},
		{[]string{"copy", "--nope", "a", "b"}, "flag provided but not defined: -nope; run 'imgxfer copy --help'"},
		{[]string{"copy", "a"}, "copy needs 2 arguments (SRC DEST), got 1"},
		{[]string{"--log-format", "xml", "version"}, `invalid log format "xml"`},
		{[]string{"copy", "--max-requests", "0", "a", "b"}, "invalid --max-requests 0: use 1 to 256"},
		{[]string{"copy", "--max-requests", "abc", "a", "b"}, `invalid --max-requests "abc": expected a whole number; run 'imgxfer copy --help'`},
		{[]string{"copy", "--quiet=maybe", "a", "b"}, `invalid --quiet "maybe": expected true or false`},
		{[]string{"--bogus", "version"}, "flag provided but not defined: -bogus; run 'imgxfer --help'"},
		{[]string{"sync", "--max-requests", "257", "-f", "images.yaml"}, "invalid --max-requests 257: use 1 to 256"},
	}
	for _, tt := range tests {
		t.Run(strings.Join(tt.args, " "), func(t *testing.T) {
			stdout, _, err := runApp(tt.args...)
			if !errors.Is(err, ErrUsage) {
				t.Fatalf("error %v, want a usage error", err)
			}
			if !strings.Contains(err.Error(), tt.want) {
				t.Errorf("error %q lacks %q", err, tt.want)
			}
			if ExitCode(err) != ExitUsage {
				t.Errorf("exit code %d, want %d", ExitCode(err), ExitUsage)
			}
			if stdout != "" {
				t.Errorf("stdout %q, want nothing on a usage error", stdout)
			}
		})
	}
}

func TestExitCode(t *testing.T) {
	tests := []struct {
		name string
		err  error
		want int
	}{
		{"nil", nil, ExitOK},
		{"cancelled", fmt.Errorf("copying: %w", context.Canceled), ExitInterrupted},
		{"usage", usageErrorf("bad"), ExitUsage},
		{"rules", fmt.Errorf("x: %w", routing.ErrInvalidRules), ExitUsage},
		{"proxy rejected", fmt.Errorf("x: %w", routing.ErrProxyRejected), ExitNetwork},
		{"unauthorized", fmt.Errorf("x: %w", errs.ErrHTTPUnauthorized), ExitAuth},
		{"not found", fmt.Errorf("x: %w", errs.ErrNotFound), ExitNotFound},
		{"missing layout", fmt.Errorf("x: %w", fs.ErrNotExist), ExitNotFound},
		{"network", fmt.Errorf("x: %w", &url.Error{Op: "Get", URL: "https://r.test", Err: &net.OpError{Op: "dial", Err: errors.New("refused")}}), ExitNetwork},
		{"other", errors.New("something else"), ExitFailure},
	}
	for _, tt := range tests {
		if got := ExitCode(tt.err); got != tt.want {
			t.Errorf("%s: ExitCode = %d, want %d", tt.name, got, tt.want)
		}
	}
}

func TestWithDigest(t *testing.T) {
	tests := []struct{ reference, digest, want string }{
		{"r.test/a:1", "sha256:abc", "r.test/a:1@sha256:abc"},
		{"r.test/a@sha256:abc", "sha256:abc", "r.test/a@sha256:abc"},
		{"r.test/a:1", "", "r.test/a:1"},
	}
	for _, tt := range tests {
		if got := withDigest(tt.reference, tt.digest); got != tt.want {
			t.Errorf("withDigest(%q, %q) = %q, want %q", tt.reference, tt.digest, got, tt.want)
		}
	}
}
