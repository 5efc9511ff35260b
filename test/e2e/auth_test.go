package e2e

import (
	"encoding/base64"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/regclient/regclient"
	"github.com/regclient/regclient/types/mediatype"

	"github.com/imgxfer/imgxfer/internal/testenv"
)

// writeDockerConfig writes config.json with basic credentials per host into the docker
// configuration folder that e.run uses.
func (e *env) writeDockerConfig(t *testing.T, creds map[string]string) {
	t.Helper()
	var entries []string
	for host, userPassword := range creds {
		encoded := base64.StdEncoding.EncodeToString([]byte(userPassword))
		entries = append(entries, `"`+host+`": {"auth": "`+encoded+`"}`)
	}
	dir := filepath.Join(e.dir, "docker")
	if err := os.MkdirAll(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	config := `{"auths": {` + strings.Join(entries, ", ") + `}}`
	if err := os.WriteFile(filepath.Join(dir, "config.json"), []byte(config), 0o600); err != nil {
		t.Fatal(err)
	}
}

// TestCopyCredentialsByRealHost stores the right credentials under the registry's real
// name and wrong ones under the proxy's address. The copy succeeds only if imgxfer looks
// them up by the real name, and no log line at trace level shows them.
func TestCopyCredentialsByRealHost(t *testing.T) {
	e := newEnv(t)
	pushed := e.pushRandomIndex(t, "team/app:1", mediatype.OCI1ManifestList, "linux/amd64", "linux/arm64")
	e.writeDockerConfig(t, map[string]string{
		lockedHost:       lockedUser + ":" + lockedPassword,
		e.nginx.HTTPAddr: "proxy-user:proxy-Secret-77aa",
	})

	res := e.run(t, "--log-level", "trace", "copy", "--rules", e.rulesFile, e.src.Addr+"/team/app:1", lockedHost+"/team/app:1")
	if res.code != 0 {
		t.Fatalf("copy into the locked registry: exit %d\n%s", res.code, res.stderr)
	}
	assertAllThroughProxy(t, e.locked.Requests(), lockedHost)

	for _, secret := range []string{
		lockedPassword,
		base64.StdEncoding.EncodeToString([]byte(lockedUser + ":" + lockedPassword)),
		"proxy-Secret-77aa",
	} {
		if strings.Contains(res.stderr+res.stdout, secret) {
			t.Errorf("output at trace level contains the secret %q", secret)
		}
	}
	if !strings.Contains(res.stderr, "[censored]") {
		t.Error("trace output shows no censored Authorization header, so the check above proves little")
	}

	e.dstClient = newLockedClient(e)
	e.assertImage(t, e.locked, "team/app:1", pushed)
}

func TestCopyWrongPasswordFails(t *testing.T) {
	e := newEnv(t)
	e.pushRandomIndex(t, "team/app:1", "", "linux/amd64")
	e.writeDockerConfig(t, map[string]string{lockedHost: lockedUser + ":wrong-password"})

	res := e.run(t, "copy", "--rules", e.rulesFile, e.src.Addr+"/team/app:1", lockedHost+"/team/app:1")
	if res.code != 4 {
		t.Errorf("exit code %d, want 4 (authentication failure)\n%s", res.code, res.stderr)
	}
	errs := errorLines(res.stderr)
	if !strings.Contains(errs, lockedHost+` rejected user "`+lockedUser+`"`) {
		t.Errorf("error should name the registry and the user:\n%s", res.stderr)
	}
	if strings.Count(errs, "\n") != 1 {
		t.Errorf("want one error line:\n%s", res.stderr)
	}
	if n := countStatus(e.locked.Requests(), 401); n > 4 {
		t.Errorf("the registry answered 401 %d times: retries should stop at the first rejected password", n)
	}
	t.Logf("error: %s", errs)
	if strings.Contains(res.stderr, "wrong-password") {
		t.Error("the password appears in the output")
	}
}

// newLockedClient returns a direct client for the destination registries that also holds
// the locked registry's credentials, for assertions.
func newLockedClient(e *env) *regclient.RegClient {
	locked := e.locked.HostConfig()
	locked.User = lockedUser
	locked.Pass = lockedPassword
	return regclient.New(regclient.WithConfigHost(e.prod.HostConfig(), e.secure.HostConfig(), locked))
}

func countStatus(requests []testenv.RequestRecord, status int) int {
	n := 0
	for _, r := range requests {
		if r.Status == status {
			n++
		}
	}
	return n
}

func basicAuth(user, password string) string {
	return base64.StdEncoding.EncodeToString([]byte(user + ":" + password))
}
