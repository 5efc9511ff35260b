package e2e

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/regclient/regclient/types/mediatype"

	"github.com/imgxfer/imgxfer/internal/testenv"
)

// Registries with bearer-token authentication, each known to the client by a name that
// only nginx's allowlist maps to a loopback port.
const (
	harborHost = "harbor.prod.test" // realm on the registry host: https://harbor.prod.test/service/token
	hubHost    = "hub.prod.test"    // realm on another routed host: https://auth.prod.test/token
	authHost   = "auth.prod.test"
	legacyHost = "legacy.prod.test" // realm rewritten to the proxy's own address
	proxyName  = "mesh-proxy.test"  // the proxy's name in the rules, dialled by address
)

// Users of the token services.
const (
	pusherUser     = "pusher"
	pusherPassword = "Push-Secret-31b7"
	readerUser     = "reader"
	readerPassword = "Read-Secret-5c09"
)

// tokenEnv adds token-authenticated registries behind their own nginx to an env.
type tokenEnv struct {
	*env
	harbor, hub, legacy            *testenv.Registry
	harborIssuer, legacyIssuer     *testenv.TokenIssuer
	hubTokens                      *testenv.TokenServer
	tokenNginx                     *testenv.Nginx
	tokenRules                     string
	harborListener, legacyListener net.Listener
}

func tokenOptions(service string) testenv.TokenServerOptions {
	return testenv.TokenServerOptions{
		Service: service,
		Issuer:  "imgxfer-test-issuer",
		Users: map[string]testenv.TokenUser{
			pusherUser: {Password: pusherPassword, Access: map[string][]string{"*": {"pull", "push"}}},
			readerUser: {Password: readerPassword, Access: map[string][]string{"*": {"pull"}}},
		},
		AllowAnonymous: true,
	}
}

func newTokenEnv(t *testing.T) *tokenEnv {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	e := &tokenEnv{env: newEnv(t)}

	var err error
	// The registries' listeners open first, because nginx needs their addresses and the
	// legacy registry's realm needs nginx's address.
	for _, l := range []*net.Listener{&e.harborListener, &e.legacyListener} {
		*l, err = net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
	}

	e.hubTokens, err = testenv.StartTokenServer(ctx, tokenOptions("hub-registry"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = e.hubTokens.Close() })
	e.hub = startRegistry(t, ctx, testenv.RegistryOptions{Auth: e.hubTokens.Issuer.RegistryAuth("https://" + authHost + "/token")})

	certFile, keyFile := e.proxyCertificate(t)
	e.tokenNginx, err = testenv.StartNginx(ctx, testenv.NginxOptions{
		RepoDir: repoRoot(),
		Dir:     filepath.Join(e.dir, "token-nginx"),
		Upstreams: map[string]string{
			harborHost: "http://" + e.harborListener.Addr().String(),
			hubHost:    e.hub.URL,
			authHost:   e.hubTokens.URL,
			legacyHost: "http://" + e.legacyListener.Addr().String(),
		},
		TLSCertFile:    certFile,
		TLSKeyFile:     keyFile,
		UpstreamCAFile: e.caFile,
	})
	if err != nil {
		t.Fatalf("starting nginx: %v", err)
	}
	t.Cleanup(func() { _ = e.tokenNginx.Stop() })
	proxyURL := "http://" + proxyName + ":" + portOf(t, e.tokenNginx.HTTPAddr)

	e.harborIssuer = newIssuer(t, "harbor-registry")
	e.harbor = startRegistry(t, ctx, testenv.RegistryOptions{
		Listener:      e.harborListener,
		Auth:          e.harborIssuer.RegistryAuth("https://" + harborHost + "/service/token"),
		ExtraHandlers: map[string]http.Handler{"/service/token": e.harborIssuer},
	})

	// An older proxy configuration rewrites the realm to the proxy's own address. This
	// registry announces that address itself, which is what the client then receives.
	e.legacyIssuer = newIssuer(t, "harbor-registry")
	e.legacy = startRegistry(t, ctx, testenv.RegistryOptions{
		Listener:      e.legacyListener,
		Auth:          e.legacyIssuer.RegistryAuth(proxyURL + "/service/token"),
		ExtraHandlers: map[string]http.Handler{"/service/token": e.legacyIssuer},
	})

	e.tokenRules = e.writeRules(t, "token-rules.yaml", fmt.Sprintf(`routes:
  - hosts: [%s, %s, %s, %s]
    proxy: %s
    address: "%s"
registries:
  - host: "%s"
    tls: disabled
  - host: %s
    tls: disabled
`, harborHost, hubHost, authHost, legacyHost, proxyURL, e.tokenNginx.HTTPAddr, e.src.Addr, legacyHost))
	return e
}

func newIssuer(t *testing.T, service string) *testenv.TokenIssuer {
	t.Helper()
	issuer, err := testenv.NewTokenIssuer(tokenOptions(service))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = issuer.Close() })
	return issuer
}

func (e *env) proxyCertificate(t *testing.T) (string, string) {
	t.Helper()
	certPEM, keyPEM, err := e.ca.Issue("127.0.0.1", proxyName)
	if err != nil {
		t.Fatal(err)
	}
	certFile, err := testenv.WriteFile(e.dir, "token-proxy.pem", certPEM)
	if err != nil {
		t.Fatal(err)
	}
	keyFile, err := testenv.WriteFile(e.dir, "token-proxy-key.pem", keyPEM)
	if err != nil {
		t.Fatal(err)
	}
	return certFile, keyFile
}

func portOf(t *testing.T, addr string) string {
	t.Helper()
	_, port, err := net.SplitHostPort(addr)
	if err != nil {
		t.Fatal(err)
	}
	return port
}

// copyWithCreds copies the source image to dest with only the given docker credentials.
func (e *tokenEnv) copyWithCreds(t *testing.T, creds map[string]string, src, dest string, extraArgs ...string) result {
	t.Helper()
	e.writeDockerConfig(t, creds)
	args := append([]string{"copy", "--rules", e.tokenRules}, extraArgs...)
	return e.run(t, append(args, src, dest)...)
}

func issuedTo(requests []testenv.TokenRequest, user string) []testenv.TokenRequest {
	var matched []testenv.TokenRequest
	for _, r := range requests {
		if r.User == user {
			matched = append(matched, r)
		}
	}
	return matched
}

func TestTokenAuthRealmOnRegistryHost(t *testing.T) {
	e := newTokenEnv(t)
	pushed := e.pushRandomIndex(t, "team/app:1", mediatype.OCI1ManifestList, "linux/amd64", "linux/arm64")

	res := e.copyWithCreds(t, map[string]string{harborHost: pusherUser + ":" + pusherPassword},
		e.src.Addr+"/team/app:1", harborHost+"/team/app:1")
	if res.code != 0 {
		t.Fatalf("copy: exit %d\n%s", res.code, res.stderr)
	}
	if !strings.Contains(res.stdout, pushed.Index.Digest.String()) {
		t.Errorf("output lacks the index digest:\n%s", res.stdout)
	}

	granted := issuedTo(e.harborIssuer.Requests(), pusherUser)
	if len(granted) == 0 {
		t.Fatal("the token service on the registry host issued no token to the pusher")
	}
	for _, r := range granted {
		if r.Host != harborHost {
			t.Errorf("token request arrived with Host %q, want %q (through the proxy)", r.Host, harborHost)
		}
	}
	assertAllThroughProxy(t, e.harbor.Requests(), harborHost)
}

func TestTokenAuthRealmOnOtherHost(t *testing.T) {
	e := newTokenEnv(t)
	e.pushRandomIndex(t, "team/app:1", "", "linux/amd64")

	res := e.copyWithCreds(t, map[string]string{hubHost: pusherUser + ":" + pusherPassword},
		e.src.Addr+"/team/app:1", hubHost+"/team/app:1")
	if res.code != 0 {
		t.Fatalf("copy: exit %d\n%s", res.code, res.stderr)
	}
	granted := issuedTo(e.hubTokens.Issuer.Requests(), pusherUser)
	if len(granted) == 0 {
		t.Fatal("the realm host issued no token to the pusher")
	}
	for _, r := range granted {
		if r.Host != authHost {
			t.Errorf("token request arrived with Host %q, want %q (routed by its own host)", r.Host, authHost)
		}
	}
}

func TestTokenAuthRealmOnProxy(t *testing.T) {
	e := newTokenEnv(t)
	pushed := e.pushRandomIndex(t, "team/app:1", mediatype.OCI1ManifestList, "linux/amd64", "linux/arm64")

	res := e.copyWithCreds(t, map[string]string{legacyHost: pusherUser + ":" + pusherPassword},
		e.src.Addr+"/team/app:1", legacyHost+"/team/app:1", "--format", "json")
	if res.code != 0 {
		t.Fatalf("copy: exit %d\n%s", res.code, res.stderr)
	}
	if !strings.Contains(res.stdout, pushed.Index.Digest.String()) {
		t.Errorf("output lacks the index digest:\n%s", res.stdout)
	}
	granted := issuedTo(e.legacyIssuer.Requests(), pusherUser)
	if len(granted) == 0 {
		t.Fatal("the legacy registry's token service issued no token: the token request did not carry its header")
	}
	for _, r := range granted {
		if r.Host != legacyHost {
			t.Errorf("token request arrived with Host %q, want %q", r.Host, legacyHost)
		}
	}
}

func TestTokenScopeRejectsPush(t *testing.T) {
	e := newTokenEnv(t)
	e.pushRandomIndex(t, "team/app:1", "", "linux/amd64")

	res := e.copyWithCreds(t, map[string]string{harborHost: readerUser + ":" + readerPassword},
		e.src.Addr+"/team/app:1", harborHost+"/team/app:1")
	if res.code != 4 {
		t.Errorf("exit %d, want 4\n%s", res.code, res.stderr)
	}
	errs := errorLines(res.stderr)
	for _, want := range []string{harborHost, `"` + readerUser + `"`, "push"} {
		if !strings.Contains(errs, want) {
			t.Errorf("error lacks %q:\n%s", want, errs)
		}
	}
	t.Logf("error: %s", errs)
	for _, r := range e.harbor.Requests() {
		if r.Method == http.MethodPut && strings.Contains(r.Path, "/manifests/") && r.Status < 300 {
			t.Errorf("a manifest was written with a pull-only token: %s %s", r.Method, r.Path)
		}
	}
}

// TestCredentialsStayWithTheirRegistry gives credentials for harbor.prod.test only, plus a
// decoy entry under the proxy's address. A copy into hub.prod.test must not send either
// to hub's token service, and must fail naming the registry without credentials.
func TestCredentialsStayWithTheirRegistry(t *testing.T) {
	e := newTokenEnv(t)
	e.pushRandomIndex(t, "team/app:1", "", "linux/amd64")

	creds := map[string]string{
		harborHost: pusherUser + ":" + pusherPassword,
		proxyName + ":" + portOf(t, e.tokenNginx.HTTPAddr): readerUser + ":" + readerPassword,
		e.tokenNginx.HTTPAddr:                              readerUser + ":" + readerPassword,
	}
	res := e.copyWithCreds(t, creds, e.src.Addr+"/team/app:1", hubHost+"/team/app:1", "--log-level", "trace")
	if res.code != 4 {
		t.Errorf("exit %d, want 4\n%s", res.code, errorLines(res.stderr))
	}
	if !strings.Contains(errorLines(res.stderr), hubHost+" requires credentials") {
		t.Errorf("error should say that %s has no credentials:\n%s", hubHost, errorLines(res.stderr))
	}
	for _, r := range e.hubTokens.Issuer.Requests() {
		if r.User != "" {
			t.Errorf("hub's token service received user %q, want only anonymous requests", r.User)
		}
	}
	for _, r := range e.legacyIssuer.Requests() {
		t.Errorf("an unrelated token service received a request: %+v", r)
	}
	assertNoSecrets(t, res.stdout+res.stderr, pusherPassword, readerPassword)
}

func TestTokenTraceLogHasNoSecrets(t *testing.T) {
	e := newTokenEnv(t)
	e.pushRandomIndex(t, "team/app:1", "", "linux/amd64")

	res := e.copyWithCreds(t, map[string]string{harborHost: pusherUser + ":" + pusherPassword},
		e.src.Addr+"/team/app:1", harborHost+"/team/app:1", "--log-level", "trace")
	if res.code != 0 {
		t.Fatalf("copy: exit %d\n%s", res.code, res.stderr)
	}
	if !strings.Contains(res.stderr, "Authorization") {
		t.Fatal("trace output shows no request headers, so it proves nothing about secrets")
	}
	assertNoSecrets(t, res.stdout+res.stderr, pusherPassword)
	// Issued tokens are JWTs, which start with the base64 of `{"`.
	if strings.Contains(res.stderr, "eyJ") {
		t.Error("trace output contains what looks like a bearer token (eyJ...)")
	}
}

func assertNoSecrets(t *testing.T, output string, passwords ...string) {
	t.Helper()
	for _, password := range passwords {
		if strings.Contains(output, password) {
			t.Errorf("output contains the password %q", password)
		}
		for _, user := range []string{pusherUser, readerUser} {
			encoded := basicAuth(user, password)
			if strings.Contains(output, encoded) {
				t.Errorf("output contains the basic credentials of %s", user)
			}
		}
	}
}
