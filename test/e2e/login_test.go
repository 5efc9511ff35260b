package e2e

import (
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/regclient/regclient/types/mediatype"
)

// runWithStdin runs imgxfer with input on stdin and extra environment variables.
func (e *env) runWithStdin(t *testing.T, stdin string, extraEnv []string, args ...string) result {
	t.Helper()
	cmd := exec.Command(imgxferBin, args...)
	cmd.Env = append(e.commandEnv(), extraEnv...)
	cmd.Stdin = strings.NewReader(stdin)
	var stdout, stderr strings.Builder
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	res := result{stdout: stdout.String(), stderr: stderr.String()}
	if exitErr, ok := err.(*exec.ExitError); ok {
		res.code = exitErr.ExitCode()
	} else if err != nil {
		t.Fatalf("running imgxfer: %v", err)
	}
	return res
}

func (e *env) dockerConfig(t *testing.T) map[string]any {
	t.Helper()
	data, err := os.ReadFile(filepath.Join(e.dir, "docker", "config.json"))
	if err != nil {
		t.Fatalf("reading config.json: %v", err)
	}
	var config map[string]any
	if err := json.Unmarshal(data, &config); err != nil {
		t.Fatalf("config.json is not JSON: %v\n%s", err, data)
	}
	return config
}

func TestLoginStoresUnderRealHost(t *testing.T) {
	e := newEnv(t)
	pushed := e.pushRandomIndex(t, "team/app:1", mediatype.OCI1ManifestList, "linux/amd64", "linux/arm64")

	res := e.runWithStdin(t, lockedPassword+"\n", nil, "login", "--rules", e.rulesFile, "-u", lockedUser, "--password-stdin", lockedHost)
	if res.code != 0 {
		t.Fatalf("login: exit %d\n%s", res.code, res.stderr)
	}
	if !strings.Contains(res.stdout, "Login succeeded") || !strings.Contains(res.stdout, lockedHost) {
		t.Errorf("login output: %q", res.stdout)
	}
	auths, _ := e.dockerConfig(t)["auths"].(map[string]any)
	if _, ok := auths[lockedHost]; !ok {
		t.Errorf("config.json auths has no entry for %s: %v", lockedHost, auths)
	}
	if len(auths) != 1 {
		t.Errorf("config.json auths = %v, want only %s (never the proxy's address)", auths, lockedHost)
	}

	out := e.copyJSON(t, "--rules", e.rulesFile, e.src.Addr+"/team/app:1", lockedHost+"/team/app:1")
	if out.DestinationDigest != pushed.Index.Digest.String() {
		t.Errorf("copy after login: digest %s, want %s", out.DestinationDigest, pushed.Index.Digest)
	}

	res = e.run(t, "logout", lockedHost)
	if res.code != 0 || !strings.Contains(res.stdout, "Removed") {
		t.Fatalf("logout: exit %d\n%s%s", res.code, res.stdout, res.stderr)
	}
	auths, _ = e.dockerConfig(t)["auths"].(map[string]any)
	if _, ok := auths[lockedHost]; ok {
		t.Errorf("config.json still has %s after logout", lockedHost)
	}
	res = e.run(t, "copy", "--rules", e.rulesFile, e.src.Addr+"/team/app:1", lockedHost+"/team/app:2")
	if res.code != 4 {
		t.Errorf("copy after logout: exit %d, want 4\n%s", res.code, res.stderr)
	}
	res = e.run(t, "logout", lockedHost)
	if res.code != 0 || !strings.Contains(res.stdout, "No credentials") {
		t.Errorf("second logout: exit %d, %q", res.code, res.stdout)
	}
}

func TestLoginWrongPasswordStoresNothing(t *testing.T) {
	e := newEnv(t)
	res := e.runWithStdin(t, "not-the-password", nil, "login", "--rules", e.rulesFile, "-u", lockedUser, "--password-stdin", lockedHost)
	if res.code != 4 {
		t.Errorf("exit %d, want 4\n%s", res.code, res.stderr)
	}
	errs := errorLines(res.stderr)
	if !strings.Contains(errs, lockedHost) || !strings.Contains(errs, lockedUser) {
		t.Errorf("error should name the registry and the user:\n%s", res.stderr)
	}
	if strings.Count(errs, "\n") != 1 {
		t.Errorf("want one error line:\n%s", res.stderr)
	}
	if _, err := os.Stat(filepath.Join(e.dir, "docker", "config.json")); err == nil {
		if auths, _ := e.dockerConfig(t)["auths"].(map[string]any); len(auths) != 0 {
			t.Errorf("a rejected login stored credentials: %v", auths)
		}
	}
	if strings.Contains(res.stderr+res.stdout, "not-the-password") {
		t.Error("the password appears in the output")
	}
}

// helperScript is a docker credential helper that keeps one file per server in the
// folder named by $IMGXFER_TEST_CREDS.
const helperScript = `#!/bin/sh
set -eu
dir="$IMGXFER_TEST_CREDS"
mkdir -p "$dir"
case "$1" in
store)
	data=$(cat)
	server=$(printf '%s' "$data" | sed -n 's/.*"ServerURL":"\([^"]*\)".*/\1/p')
	printf '%s' "$data" > "$dir/$(printf '%s' "$server" | tr '/:' '__')"
	;;
get)
	server=$(cat)
	file="$dir/$(printf '%s' "$server" | tr '/:' '__')"
	if [ -f "$file" ]; then cat "$file"; else echo "credentials not found in native keychain"; exit 1; fi
	;;
erase)
	server=$(cat)
	rm -f "$dir/$(printf '%s' "$server" | tr '/:' '__')"
	;;
list)
	echo '{}'
	;;
esac
`

func TestLoginWithCredentialHelper(t *testing.T) {
	e := newEnv(t)
	pushed := e.pushRandomIndex(t, "team/app:1", "", "linux/amd64")

	binDir := filepath.Join(e.dir, "bin")
	credsDir := filepath.Join(e.dir, "helper-store")
	if err := os.MkdirAll(binDir, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(binDir, "docker-credential-imgxfertest"), []byte(helperScript), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(filepath.Join(e.dir, "docker"), 0o700); err != nil {
		t.Fatal(err)
	}
	config := `{"credHelpers": {"` + lockedHost + `": "imgxfertest"}}`
	if err := os.WriteFile(filepath.Join(e.dir, "docker", "config.json"), []byte(config), 0o600); err != nil {
		t.Fatal(err)
	}
	extraEnv := []string{"PATH=" + binDir + ":" + os.Getenv("PATH"), "IMGXFER_TEST_CREDS=" + credsDir}

	res := e.runWithStdin(t, lockedPassword, extraEnv, "login", "--rules", e.rulesFile, "-u", lockedUser, "--password-stdin", lockedHost)
	if res.code != 0 {
		t.Fatalf("login: exit %d\n%s", res.code, res.stderr)
	}
	if !strings.Contains(res.stdout, "docker-credential-imgxfertest") {
		t.Errorf("login should say it used the helper: %q", res.stdout)
	}
	stored, err := os.ReadFile(filepath.Join(credsDir, lockedHost))
	if err != nil {
		t.Fatalf("the helper stored nothing for %s: %v", lockedHost, err)
	}
	if !strings.Contains(string(stored), lockedUser) {
		t.Errorf("helper entry %q lacks the user", stored)
	}
	if auths, _ := e.dockerConfig(t)["auths"].(map[string]any); len(auths) != 0 {
		if entry, ok := auths[lockedHost].(map[string]any); ok && entry["auth"] != nil {
			t.Errorf("credentials went into config.json despite the helper: %v", auths)
		}
	}

	res = e.runWithStdin(t, "", extraEnv, "copy", "--format", "json", "--rules", e.rulesFile, e.src.Addr+"/team/app:1", lockedHost+"/team/app:1")
	if res.code != 0 {
		t.Fatalf("copy with helper credentials: exit %d\n%s", res.code, res.stderr)
	}
	if !strings.Contains(res.stdout, pushed.Index.Digest.String()) {
		t.Errorf("copy output lacks the digest: %s", res.stdout)
	}

	res = e.runWithStdin(t, "", extraEnv, "logout", lockedHost)
	if res.code != 0 {
		t.Fatalf("logout: exit %d\n%s", res.code, res.stderr)
	}
	if _, err := os.Stat(filepath.Join(credsDir, lockedHost)); !os.IsNotExist(err) {
		t.Errorf("the helper still has %s after logout (%v)", lockedHost, err)
	}
}

func TestCopyCredentialFlags(t *testing.T) {
	e := newEnv(t)
	e.pushRandomIndex(t, "team/app:1", "", "linux/amd64")

	res := e.runWithStdin(t, lockedPassword+"\n", nil, "copy", "--rules", e.rulesFile,
		"--dest-user", lockedUser, "--dest-password-stdin", e.src.Addr+"/team/app:1", lockedHost+"/team/app:stdin")
	if res.code != 0 {
		t.Errorf("copy with --dest-password-stdin: exit %d\n%s", res.code, res.stderr)
	}

	res = e.runWithStdin(t, "", []string{"IMGXFER_DEST_USER=" + lockedUser, "IMGXFER_DEST_PASSWORD=" + lockedPassword},
		"copy", "--rules", e.rulesFile, e.src.Addr+"/team/app:1", lockedHost+"/team/app:env")
	if res.code != 0 {
		t.Errorf("copy with IMGXFER_DEST_USER and IMGXFER_DEST_PASSWORD: exit %d\n%s", res.code, res.stderr)
	}

	res = e.runWithStdin(t, "", []string{"IMGXFER_DEST_PASSWORD=" + lockedPassword},
		"copy", "--rules", e.rulesFile, "--dest-user", "someone-else", e.src.Addr+"/team/app:1", lockedHost+"/team/app:wrong")
	if res.code != 4 {
		t.Errorf("copy with a wrong user: exit %d, want 4\n%s", res.code, res.stderr)
	}
	e.dstClient = newLockedClient(e)
	e.assertNoTag(t, e.locked, "team/app:wrong")
}
