// Package e2e runs the imgxfer binary against real distribution registries behind the
// repository's own nginx configuration, all on 127.0.0.1.
//
// The destination registries are known to the client only by names that do not resolve
// (registry.prod.test, secure.prod.test). Only nginx's allowlist maps them to loopback
// ports, so a copy into them succeeds only through the proxy.
package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/regclient/regclient"
	"github.com/regclient/regclient/types/platform"

	"github.com/imgxfer/imgxfer/internal/testenv"
)

// Names under which the client knows the registries behind the proxy.
const (
	prodHost   = "registry.prod.test" // plain-HTTP upstream
	secureHost = "secure.prod.test"   // HTTPS upstream, verified by nginx
	lockedHost = "locked.prod.test"   // plain-HTTP upstream that requires basic auth
)

// Credentials that the locked registry accepts.
const (
	lockedUser     = "ci-pusher"
	lockedPassword = "pa55-Locked-Registry-9f2c"
)

// imgxferBin is the binary under test, built once by TestMain with the race detector.
var imgxferBin string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "imgxfer-e2e-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	imgxferBin = filepath.Join(dir, "imgxfer")
	build := exec.Command("go", "build", "-race", "-o", imgxferBin, ".")
	build.Dir = repoRoot()
	build.Stdout, build.Stderr = os.Stderr, os.Stderr
	if err := build.Run(); err != nil {
		fmt.Fprintf(os.Stderr, "building imgxfer: %v\n", err)
		os.Exit(1)
	}

	code := m.Run()
	_ = os.RemoveAll(dir)
	os.Exit(code)
}

func repoRoot() string {
	_, file, _, _ := runtime.Caller(0)
	return filepath.Join(filepath.Dir(file), "..", "..")
}

// env is one test's set of servers: a source registry reached directly, two destination
// registries behind nginx, and the rules file that routes to them.
type env struct {
	dir       string
	ca        *testenv.CA
	caFile    string
	src       *testenv.Registry
	prod      *testenv.Registry
	secure    *testenv.Registry
	locked    *testenv.Registry
	nginx     *testenv.Nginx
	rulesFile string
	srcClient *regclient.RegClient // direct, for seeding the source
	dstClient *regclient.RegClient // direct to the destinations' loopback ports, for assertions
}

func newEnv(t *testing.T) *env {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	e := &env{dir: t.TempDir()}

	var err error
	e.ca, err = testenv.NewCA()
	if err != nil {
		t.Fatal(err)
	}
	e.caFile, err = testenv.WriteFile(e.dir, "ca.pem", e.ca.CertPEM())
	if err != nil {
		t.Fatal(err)
	}

	e.src = startRegistry(t, ctx, testenv.RegistryOptions{})
	e.prod = startRegistry(t, ctx, testenv.RegistryOptions{})
	secureCert, secureKey, err := e.ca.Issue("127.0.0.1", secureHost)
	if err != nil {
		t.Fatal(err)
	}
	e.secure = startRegistry(t, ctx, testenv.RegistryOptions{TLSCertPEM: secureCert, TLSKeyPEM: secureKey})
	auth, err := testenv.HtpasswdAuth(e.dir, lockedUser, lockedPassword)
	if err != nil {
		t.Fatal(err)
	}
	e.locked = startRegistry(t, ctx, testenv.RegistryOptions{Auth: auth})

	proxyCert, proxyKey, err := e.ca.Issue("127.0.0.1", "mesh-proxy.test")
	if err != nil {
		t.Fatal(err)
	}
	certFile, err := testenv.WriteFile(e.dir, "proxy.pem", proxyCert)
	if err != nil {
		t.Fatal(err)
	}
	keyFile, err := testenv.WriteFile(e.dir, "proxy-key.pem", proxyKey)
	if err != nil {
		t.Fatal(err)
	}
	e.nginx, err = testenv.StartNginx(ctx, testenv.NginxOptions{
		RepoDir: repoRoot(),
		Dir:     filepath.Join(e.dir, "nginx"),
		Upstreams: map[string]string{
			prodHost:   e.prod.URL,
			secureHost: "https://" + e.secure.Addr,
			lockedHost: e.locked.URL,
		},
		TLSCertFile:    certFile,
		TLSKeyFile:     keyFile,
		UpstreamCAFile: e.caFile,
	})
	if err != nil {
		t.Fatalf("starting nginx: %v", err)
	}
	t.Cleanup(func() {
		if t.Failed() {
			e.logNginx(t)
		}
		if err := e.nginx.Stop(); err != nil {
			t.Errorf("stopping nginx: %v", err)
		}
	})

	e.rulesFile = e.writeRules(t, "rules.yaml", fmt.Sprintf(`version: 1
routes:
  - hosts: [%s, %s]
    proxy: http://%s
  - hosts: [%s]
    proxy: https://%s
    tls:
      ca_file: %s
registries:
  - host: "%s"
    tls: disabled
`, prodHost, lockedHost, e.nginx.HTTPAddr, secureHost, e.nginx.HTTPSAddr, e.caFile, e.src.Addr))

	e.srcClient = testenv.NewClient(e.src)
	e.dstClient = testenv.NewClient(e.prod, e.secure)
	return e
}

// logNginx adds the end of nginx's logs to a failed test's output.
func (e *env) logNginx(t *testing.T) {
	t.Helper()
	for _, path := range []string{e.nginx.ErrorLog, e.nginx.AccessLog} {
		data, err := os.ReadFile(path)
		if err != nil {
			t.Logf("reading %s: %v", path, err)
			continue
		}
		if len(data) > 8000 {
			data = data[len(data)-8000:]
		}
		t.Logf("%s:\n%s", path, data)
	}
}

func startRegistry(t *testing.T, ctx context.Context, opts testenv.RegistryOptions) *testenv.Registry {
	t.Helper()
	r, err := testenv.StartRegistry(ctx, opts)
	if err != nil {
		t.Fatalf("starting registry: %v", err)
	}
	t.Cleanup(func() { _ = r.Close() })
	return r
}

func (e *env) writeRules(t *testing.T, name, content string) string {
	t.Helper()
	path, err := testenv.WriteFile(e.dir, name, []byte(content))
	if err != nil {
		t.Fatal(err)
	}
	return path
}

// randomSpec returns an image of three small random layers per platform.
func (e *env) randomSpec(t *testing.T, platforms ...string) testenv.ImageSpec {
	t.Helper()
	var parsed []platform.Platform
	for _, p := range platforms {
		pl, err := platform.Parse(p)
		if err != nil {
			t.Fatal(err)
		}
		parsed = append(parsed, pl)
	}
	return testenv.RandomImage(time.Now().UnixNano(), parsed, 3, 64*1024)
}

// pushRandomIndex puts a multi-platform image of small random layers into the source.
func (e *env) pushRandomIndex(t *testing.T, repoTag string, mediaType string, platforms ...string) testenv.Pushed {
	t.Helper()
	spec := e.randomSpec(t, platforms...)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	pushed, err := testenv.PushIndex(ctx, e.srcClient, e.src.Addr+"/"+repoTag, spec, mediaType)
	if err != nil {
		t.Fatalf("pushing the source image: %v", err)
	}
	return pushed
}

// result is the outcome of one imgxfer run.
type result struct {
	code   int
	stdout string
	stderr string
}

// run executes the imgxfer binary with args and a private docker config directory.
func (e *env) run(t *testing.T, args ...string) result {
	t.Helper()
	return runCommand(t, e.commandEnv(), imgxferBin, args...)
}

// unusedProxy is an environment proxy on a loopback port where nothing listens.
const unusedProxy = "http://127.0.0.1:9"

// commandEnv returns the environment for imgxfer runs: a private docker configuration and
// home, and no rules file unless a test names one.
//
// HTTP_PROXY and HTTPS_PROXY name unusedProxy, with NO_PROXY empty. regclient decides
// whether a token realm or redirect target is "local" by resolving the registry's host
// name, unless an environment proxy applies to that host. With these settings no made-up
// name such as registry.prod.test is ever looked up in DNS, which would leave the machine.
// Loopback addresses bypass environment proxies, so every real connection still goes
// straight to the servers on 127.0.0.1, and anything that tried the proxy would fail.
func (e *env) commandEnv() []string {
	var environ []string
	for _, kv := range os.Environ() {
		name, _, _ := strings.Cut(kv, "=")
		switch strings.ToUpper(name) {
		case "HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY", "ALL_PROXY":
			continue
		}
		environ = append(environ, kv)
	}
	return append(environ,
		"DOCKER_CONFIG="+filepath.Join(e.dir, "docker"),
		"IMGXFER_RULES=",
		"XDG_CONFIG_HOME="+filepath.Join(e.dir, "config"),
		"HOME="+e.dir,
		"HTTP_PROXY="+unusedProxy,
		"HTTPS_PROXY="+unusedProxy,
		"NO_PROXY=",
	)
}

func runCommand(t *testing.T, environ []string, name string, args ...string) result {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Env = environ
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	res := result{stdout: stdout.String(), stderr: stderr.String()}
	if exitErr, ok := err.(*exec.ExitError); ok {
		res.code = exitErr.ExitCode()
	} else if err != nil {
		t.Fatalf("running %s: %v", name, err)
	}
	return res
}

// copyOutput mirrors the JSON that `imgxfer copy --format json` prints.
type copyOutput struct {
	Source            string   `json:"source"`
	SourceDigest      string   `json:"sourceDigest"`
	Destination       string   `json:"destination"`
	DestinationDigest string   `json:"destinationDigest"`
	MediaType         string   `json:"mediaType"`
	Platforms         []string `json:"platforms"`
	BytesCopied       int64    `json:"bytesCopied"`
	BlobsCopied       int      `json:"blobsCopied"`
	BlobsSkipped      int      `json:"blobsSkipped"`
	DurationSeconds   float64  `json:"durationSeconds"`
}

func (e *env) copyJSON(t *testing.T, args ...string) copyOutput {
	t.Helper()
	args = append([]string{"copy", "--format", "json"}, args...)
	res := e.run(t, args...)
	if res.code != 0 {
		t.Fatalf("imgxfer %s: exit %d\nstderr:\n%s", strings.Join(args, " "), res.code, res.stderr)
	}
	var out copyOutput
	if err := json.Unmarshal([]byte(res.stdout), &out); err != nil {
		t.Fatalf("copy output is not JSON: %v\n%s", err, res.stdout)
	}
	return out
}
