package e2e

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/regclient/regclient/types/mediatype"
)

// pluginEnv installs the binary under test as docker-imgxfer in a private docker
// configuration folder and returns the environment that makes docker find it.
func pluginEnv(t *testing.T, e *env) []string {
	t.Helper()
	if _, err := exec.LookPath("docker"); err != nil {
		t.Fatalf("the docker client is required for the plugin tests (Debian package docker.io): %v", err)
	}
	pluginDir := filepath.Join(e.dir, "docker", "cli-plugins")
	if err := os.MkdirAll(pluginDir, 0o755); err != nil {
		t.Fatal(err)
	}
	binary, err := os.ReadFile(imgxferBin)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(pluginDir, "docker-imgxfer"), binary, 0o755); err != nil {
		t.Fatal(err)
	}
	return e.commandEnv()
}

func TestDockerPluginProtocol(t *testing.T) {
	e := newEnv(t)
	environ := pluginEnv(t, e)

	t.Run("listed with its metadata", func(t *testing.T) {
		res := runCommand(t, environ, "docker", "--help")
		if !strings.Contains(res.stdout, "imgxfer") || !strings.Contains(res.stdout, "Copy images through a registry mesh proxy") {
			t.Errorf("docker --help does not list the plugin:\n%s\n%s", res.stdout, res.stderr)
		}
	})

	t.Run("version", func(t *testing.T) {
		res := runCommand(t, environ, "docker", "imgxfer", "version")
		if res.code != 0 || !strings.HasPrefix(res.stdout, "imgxfer ") {
			t.Errorf("docker imgxfer version: exit %d\n%s\n%s", res.code, res.stdout, res.stderr)
		}
	})

	t.Run("help matches --help", func(t *testing.T) {
		viaHelp := runCommand(t, environ, "docker", "help", "imgxfer")
		viaFlag := runCommand(t, environ, "docker", "imgxfer", "--help")
		if viaHelp.stdout == "" || viaHelp.stdout != viaFlag.stdout {
			t.Errorf("docker help imgxfer:\n%s\ndiffers from docker imgxfer --help:\n%s", viaHelp.stdout, viaFlag.stdout)
		}
		if !strings.Contains(viaFlag.stdout, "docker imgxfer [global options]") {
			t.Errorf("plugin help should name the command as docker imgxfer:\n%s", viaFlag.stdout)
		}
	})

	t.Run("exit code passes through", func(t *testing.T) {
		res := runCommand(t, environ, "docker", "imgxfer", "copy", "only-one-argument")
		if res.code != 2 {
			t.Errorf("exit code %d, want 2\n%s", res.code, res.stderr)
		}
		if !strings.Contains(res.stderr, "docker imgxfer copy --help") {
			t.Errorf("usage hint should name the plugin command:\n%s", res.stderr)
		}
	})

	t.Run("docker global flags before the plugin name", func(t *testing.T) {
		res := runCommand(t, environ, "docker", "--log-level", "error", "imgxfer", "version")
		if res.code != 0 || !strings.HasPrefix(res.stdout, "imgxfer ") {
			t.Errorf("docker --log-level error imgxfer version: exit %d\n%s\n%s", res.code, res.stdout, res.stderr)
		}
	})

	t.Run("copy through the proxy", func(t *testing.T) {
		pushed := e.pushRandomIndex(t, "team/plugin:1", mediatype.OCI1ManifestList, "linux/amd64", "linux/arm64")
		res := runCommand(t, environ, "docker", "imgxfer", "copy", "--rules", e.rulesFile,
			e.src.Addr+"/team/plugin:1", prodHost+"/team/plugin:1")
		if res.code != 0 {
			t.Fatalf("docker imgxfer copy: exit %d\n%s", res.code, res.stderr)
		}
		if !strings.Contains(res.stdout, pushed.Index.Digest.String()) {
			t.Errorf("output lacks the index digest %s:\n%s", pushed.Index.Digest, res.stdout)
		}
		e.assertImage(t, e.prod, "team/plugin:1", pushed)
	})
}

func TestDockerPluginLogin(t *testing.T) {
	e := newEnv(t)
	environ := pluginEnv(t, e)

	cmd := exec.Command("docker", "imgxfer", "login", "--rules", e.rulesFile, "-u", lockedUser, "--password-stdin", lockedHost)
	cmd.Env = environ
	cmd.Stdin = strings.NewReader(lockedPassword + "\n")
	output, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("docker imgxfer login: %v\n%s", err, output)
	}
	if !strings.Contains(string(output), "Login succeeded") {
		t.Errorf("docker imgxfer login output: %s", output)
	}
	if auths, _ := e.dockerConfig(t)["auths"].(map[string]any); auths[lockedHost] == nil {
		t.Errorf("docker's config.json has no credentials for %s after docker imgxfer login: %v", lockedHost, auths)
	}
}
