package credentials

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func writeConfig(t *testing.T, content string) {
	t.Helper()
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "config.json"), []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	t.Setenv("DOCKER_CONFIG", dir)
}

func TestCheckReportsBrokenConfig(t *testing.T) {
	writeConfig(t, `{"auths": {`)
	_, err := Check()
	if err == nil || !strings.Contains(err.Error(), "config.json") || !strings.Contains(err.Error(), "DOCKER_CONFIG") {
		t.Errorf("Check on a broken config.json: %v, want an error naming the file and the fix", err)
	}
}

func TestCheckReportsMissingHelpers(t *testing.T) {
	writeConfig(t, `{"credsStore": "imgxfer-no-such-helper", "credHelpers": {"r.test": "imgxfer-no-such-helper"}}`)
	t.Setenv("PATH", t.TempDir())
	missing, err := Check()
	if err != nil {
		t.Fatal(err)
	}
	if len(missing) != 1 || missing[0] != "docker-credential-imgxfer-no-such-helper" {
		t.Errorf("missing helpers = %v, want the one helper once", missing)
	}
}

func TestStoreAndEraseInConfigFile(t *testing.T) {
	writeConfig(t, `{"auths": {}}`)
	where, err := Store("registry.prod.test:5000", "ci", "s3cret-pass")
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasSuffix(where, "config.json") {
		t.Errorf("stored in %q, want config.json", where)
	}
	if got := Username("registry.prod.test:5000"); got != "ci" {
		t.Errorf("Username after Store = %q, want ci", got)
	}
	removed, _, err := Erase("registry.prod.test:5000")
	if err != nil || !removed {
		t.Fatalf("Erase = %v, %v", removed, err)
	}
	if got := Username("registry.prod.test:5000"); got != "" {
		t.Errorf("Username after Erase = %q, want empty", got)
	}
}

func TestDockerHubKey(t *testing.T) {
	for _, name := range []string{"docker.io", "index.docker.io", "registry-1.docker.io"} {
		if got := serverKey(name); got != "https://index.docker.io/v1/" {
			t.Errorf("serverKey(%q) = %q, want docker's Hub key", name, got)
		}
	}
}
