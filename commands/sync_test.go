package commands

import (
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/regclient/regclient/types/errs"

	"github.com/imgxfer/imgxfer/internal/registry"
)

func TestParseAnnotations(t *testing.T) {
	got, err := parseAnnotations([]string{"a=1", "b=x=y", "a=2"})
	if err != nil {
		t.Fatal(err)
	}
	if got["a"] != "2" || got["b"] != "x=y" || len(got) != 2 {
		t.Errorf("annotations = %v, want a=2 (the later pair) and b=x=y", got)
	}
	for _, bad := range []string{"novalue", "=value", "key=", "a b=c"} {
		_, err := parseAnnotations([]string{bad})
		if !errors.Is(err, ErrUsage) {
			t.Errorf("parseAnnotations(%q) error %v, want a usage error", bad, err)
			continue
		}
		if !strings.Contains(err.Error(), "annotation") {
			t.Errorf("parseAnnotations(%q) error %q should name the flag", bad, err)
		}
	}
}

func TestBatchFailureExitCodes(t *testing.T) {
	copied := &registry.CopyResult{Status: registry.StatusCopied}
	notFound := &registry.CopyResult{Status: registry.StatusFailed, Origin: "images.yaml:3", Source: "a.test/x:1", Destination: "b.test/x:1", Err: errs.ErrNotFound}
	denied := &registry.CopyResult{Status: registry.StatusFailed, Err: errs.ErrHTTPUnauthorized}

	tests := []struct {
		name    string
		results []*registry.CopyResult
		want    int
	}{
		{"all copied", []*registry.CopyResult{copied, copied}, ExitOK},
		{"some failed", []*registry.CopyResult{copied, notFound}, ExitPartial},
		{"all failed for one reason", []*registry.CopyResult{notFound, notFound}, ExitNotFound},
		{"all failed for two reasons", []*registry.CopyResult{notFound, denied}, ExitPartial},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := ExitCode(batchFailure(tt.results)); got != tt.want {
				t.Errorf("exit code %d, want %d", got, tt.want)
			}
		})
	}

	err := batchFailure([]*registry.CopyResult{copied, notFound})
	for _, want := range []string{"1 of 2 copies failed", "images.yaml:3", "a.test/x:1 -> b.test/x:1"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q lacks %q", err, want)
		}
	}
}

func TestCompletionScripts(t *testing.T) {
	for _, shell := range completionShells {
		t.Run(shell, func(t *testing.T) {
			stdout, _, err := runApp("completion", shell)
			if err != nil {
				t.Fatal(err)
			}
			wants := []string{"sync", "copy", "--parallel", "--dry-run"}
			if shell == "fish" {
				wants = []string{"sync", "copy", "-l parallel", "-l dry-run"}
			}
			for _, want := range wants {
				if !strings.Contains(stdout, want) {
					t.Errorf("%s script lacks %q", shell, want)
				}
			}
			checker := map[string]string{"bash": "bash", "zsh": "zsh", "fish": "fish"}[shell]
			path, err := exec.LookPath(checker)
			if err != nil {
				t.Logf("%s is not installed; the script's syntax is not checked", checker)
				return
			}
			script := filepath.Join(t.TempDir(), "completion")
			if err := os.WriteFile(script, []byte(stdout), 0o644); err != nil {
				t.Fatal(err)
			}
			out, err := exec.Command(path, "-n", script).CombinedOutput()
			if err != nil {
				t.Errorf("%s -n rejects the script: %v\n%s", checker, err, out)
			}
		})
	}

	_, _, err := runApp("completion", "tcsh")
	if !errors.Is(err, ErrUsage) || !strings.Contains(err.Error(), `"tcsh"`) {
		t.Errorf("unknown shell error %v, want a usage error naming it", err)
	}
}

func TestBashCompletionCompletes(t *testing.T) {
	bash, err := exec.LookPath("bash")
	if err != nil {
		t.Skip("bash is not installed")
	}
	script, _, err := runApp("completion", "bash")
	if err != nil {
		t.Fatal(err)
	}
	complete := func(words ...string) string {
		t.Helper()
		program := script + "\nCOMP_WORDS=(" + strings.Join(words, " ") + ")\nCOMP_CWORD=" +
			strconv.Itoa(len(words)-1) + "\n_imgxfer\necho \"${COMPREPLY[*]}\"\n"
		out, err := exec.Command(bash, "-c", program).CombinedOutput()
		if err != nil {
			t.Fatalf("bash: %v\n%s", err, out)
		}
		return strings.TrimSpace(string(out))
	}
	if got := complete("imgxfer", "sy"); got != "sync" {
		t.Errorf("imgxfer sy<TAB> = %q, want sync", got)
	}
	if got := complete("imgxfer", "sync", "--par"); got != "--parallel" {
		t.Errorf("imgxfer sync --par<TAB> = %q, want --parallel", got)
	}
	if got := complete("imgxfer", "sync", "--file-format", "im"); got != "imgxfer image-syncer" {
		t.Errorf("imgxfer sync --file-format im<TAB> = %q, want imgxfer image-syncer", got)
	}
}
