package e2e

import (
	"bufio"
	"context"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/imgxfer/imgxfer/internal/testenv"
)

// registryRequests returns how many requests each registry of the environment has
// received, from the registries' own request logs.
func (e *env) registryRequests() map[string]int {
	return map[string]int{
		"source":   len(e.src.Requests()),
		prodHost:   len(e.prod.Requests()),
		secureHost: len(e.secure.Requests()),
		lockedHost: len(e.locked.Requests()),
	}
}

// sendRaw writes request to addr byte for byte and reads one response. It covers
// requests that net/http refuses to send, such as a header with a carriage return.
func sendRaw(t *testing.T, addr, request string) *http.Response {
	t.Helper()
	conn, err := net.DialTimeout("tcp", addr, 10*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	if err := conn.SetDeadline(time.Now().Add(30 * time.Second)); err != nil {
		t.Fatal(err)
	}
	if _, err := io.WriteString(conn, request); err != nil {
		t.Fatal(err)
	}
	resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
	if err != nil {
		t.Fatalf("reading the response to %q: %v", request, err)
	}
	_, _ = io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	return resp
}

func TestProxyRefusesOutsideAllowlist(t *testing.T) {
	e := newEnv(t)
	const start = "GET /v2/ HTTP/1.1\r\nHost: mesh-proxy.test\r\nConnection: close\r\n"
	tests := []struct {
		name      string
		headers   string // raw header lines after the request line and Host
		status    int
		ownReject bool // rejected by the configuration, with Mesh-Proxy-Error
	}{
		{"no header", "", http.StatusBadRequest, true},
		{"empty header", "mesh: \r\n", http.StatusBadRequest, true},
		{"host outside the allowlist", "mesh: registry.elsewhere.test\r\n", http.StatusForbidden, true},
		{"loopback address of an upstream", "mesh: " + e.prod.Addr + "\r\n", http.StatusForbidden, true},
		{"loopback name", "mesh: localhost\r\n", http.StatusForbidden, true},
		{"IPv6 loopback", "mesh: [::1]:" + addrPort(t, e.prod.Addr) + "\r\n", http.StatusForbidden, true},
		{"link-local metadata address", "mesh: 169.254.169.254\r\n", http.StatusForbidden, true},
		{"IPv6 link-local address", "mesh: [fe80::1]\r\n", http.StatusForbidden, true},
		{"allowlisted host with a path", "mesh: " + prodHost + "/v2/\r\n", http.StatusForbidden, true},
		{"allowlisted host with another port", "mesh: " + prodHost + ":5000\r\n", http.StatusForbidden, true},
		{"allowlisted host with a trailing dot", "mesh: " + prodHost + ".\r\n", http.StatusForbidden, true},
		// nginx itself rejects a header line with a carriage return, before the
		// configuration runs.
		{"carriage return inside the value", "mesh: " + prodHost + "\rX-Injected: 1\r\n", http.StatusBadRequest, false},
		// nginx ends the header line at a bare line feed and ignores the invalid line
		// after it, so the value is the part before the line feed.
		{"line feed inside the value", "mesh: registry.elsewhere.test\n" + prodHost + "\r\n", http.StatusForbidden, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			before := e.registryRequests()
			resp := sendRaw(t, e.nginx.HTTPAddr, start+tt.headers+"\r\n")
			if resp.StatusCode != tt.status {
				t.Errorf("status %d, expected %d", resp.StatusCode, tt.status)
			}
			if got := resp.Header.Get("Mesh-Proxy-Error"); tt.ownReject && got == "" {
				t.Error("rejection lacks the Mesh-Proxy-Error header that imgxfer reports")
			}
			for name, count := range e.registryRequests() {
				if count != before[name] {
					t.Errorf("the rejected request reached the %s registry: %d requests before, %d after", name, before[name], count)
				}
			}
		})
	}
}

// addrPort returns the port of a host:port address.
func addrPort(t *testing.T, addr string) string {
	t.Helper()
	_, port, err := net.SplitHostPort(addr)
	if err != nil {
		t.Fatal(err)
	}
	return port
}

// patternReader returns size bytes that repeat one random block, generated as they are
// read, and hashes them on the way.
type patternReader struct {
	block     []byte
	remaining int64
	offset    int
}

func (r *patternReader) Read(p []byte) (int, error) {
	if r.remaining == 0 {
		return 0, io.EOF
	}
	if int64(len(p)) > r.remaining {
		p = p[:r.remaining]
	}
	n := 0
	for n < len(p) {
		copied := copy(p[n:], r.block[r.offset:])
		n += copied
		r.offset = (r.offset + copied) % len(r.block)
	}
	r.remaining -= int64(n)
	return n, nil
}

// TestProxyStreamsOneGiBUpload sends a 1 GiB blob upload through nginx to an upstream
// that hashes what arrives, and checks that nginx wrote no part of the body to a temp
// file. The upstream is a plain HTTP server rather than the test registry, whose
// filesystem storage takes minutes for a gigabyte under the race detector.
func TestProxyStreamsOneGiBUpload(t *testing.T) {
	if testing.Short() {
		t.Skip("uploads 1 GiB; skipped with -short")
	}
	const size = 1 << 30
	type arrival struct {
		bytes  int64
		digest string
		err    error
	}
	arrived := make(chan arrival, 1)
	sink := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		hash := sha256.New()
		n, err := io.Copy(hash, r.Body)
		digest := "sha256:" + hex.EncodeToString(hash.Sum(nil))
		arrived <- arrival{bytes: n, digest: digest, err: err}
		w.Header().Set("Docker-Content-Digest", digest)
		w.WriteHeader(http.StatusCreated)
	}))
	t.Cleanup(sink.Close)
	n := startSinkNginx(t, sink.URL)

	block := make([]byte, 1<<20)
	random := rand.New(rand.NewPCG(1, 2))
	for i := range block {
		block[i] = byte(random.Uint32())
	}
	hash := sha256.New()
	body := io.TeeReader(&patternReader{block: block, remaining: size}, hash)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodPut, "http://"+n.HTTPAddr+"/v2/big/blob/blobs/uploads/1?digest=sha256:0", body)
	if err != nil {
		t.Fatal(err)
	}
	req.ContentLength = size
	req.Header.Set("Mesh", prodHost)

	started := time.Now()
	resp, err := (&http.Client{Transport: &http.Transport{Proxy: nil}}).Do(req)
	if err != nil {
		t.Fatalf("PUT of 1 GiB through nginx: %v", err)
	}
	_, _ = io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	elapsed := time.Since(started)
	if resp.StatusCode != http.StatusCreated {
		t.Fatalf("PUT of 1 GiB: status %s, expected 201", resp.Status)
	}
	got := <-arrived
	want := "sha256:" + hex.EncodeToString(hash.Sum(nil))
	if got.err != nil || got.bytes != size || got.digest != want {
		t.Errorf("upstream received %d bytes with digest %s (error %v), expected %d bytes with %s", got.bytes, got.digest, got.err, int64(size), want)
	}
	t.Logf("1 GiB through nginx in %s (%.0f MiB/s)", elapsed.Round(time.Millisecond), float64(size>>20)/elapsed.Seconds())

	entries, err := os.ReadDir(filepath.Join(n.TempDir, "client_body_temp"))
	if err != nil {
		t.Fatal(err)
	}
	if len(entries) != 0 {
		t.Errorf("nginx left %d files in client_body_temp", len(entries))
	}
	errorLog, err := os.ReadFile(n.ErrorLog)
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(string(errorLog), "buffered to a temporary file") {
		t.Error("nginx buffered the request body to a temporary file")
	}
}

// startSinkNginx starts nginx with prodHost allowlisted to upstream, and a TLS listener
// certificate from a throwaway CA.
func startSinkNginx(t *testing.T, upstream string) *testenv.Nginx {
	t.Helper()
	dir := t.TempDir()
	ca, err := testenv.NewCA()
	if err != nil {
		t.Fatal(err)
	}
	opts := testenv.NginxOptions{Dir: filepath.Join(dir, "nginx"), Upstreams: map[string]string{prodHost: upstream}}
	if err := ca.WriteListenerFiles(dir, &opts, "127.0.0.1"); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	n, err := testenv.StartNginx(ctx, opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := n.Stop(); err != nil {
			t.Errorf("stopping nginx: %v", err)
		}
	})
	return n
}

// writeDockerAuth writes a docker config.json with basic credentials, "user:password"
// by registry host.
func (e *env) writeDockerAuth(t *testing.T, credentials map[string]string) {
	t.Helper()
	auths := map[string]map[string]string{}
	for host, userPassword := range credentials {
		auths[host] = map[string]string{"auth": base64.StdEncoding.EncodeToString([]byte(userPassword))}
	}
	data, err := json.Marshal(map[string]any{"auths": auths})
	if err != nil {
		t.Fatal(err)
	}
	dir := filepath.Join(e.dir, "docker")
	if err := os.MkdirAll(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "config.json"), data, 0o600); err != nil {
		t.Fatal(err)
	}
}

// doctorLines returns the status word of each step that `imgxfer doctor` printed.
func doctorLines(stdout string) map[string]string {
	steps := map[string]string{}
	for _, line := range strings.Split(stdout, "\n") {
		fields := strings.Fields(line)
		if len(fields) < 2 || (fields[0] != "ok" && fields[0] != "FAIL" && fields[0] != "skip") {
			continue
		}
		step := fields[1]
		if len(fields) > 2 && (fields[1] == "proxy" || fields[1] == "rules" || fields[1] == "auth") {
			step += " " + fields[2]
		}
		steps[step] = fields[0]
	}
	return steps
}

func TestDoctorTLSListener(t *testing.T) {
	e := newEnv(t)
	otherCA, err := testenv.NewCA()
	if err != nil {
		t.Fatal(err)
	}
	otherCAFile, err := testenv.WriteFile(e.dir, "other-ca.pem", otherCA.CertPEM())
	if err != nil {
		t.Fatal(err)
	}
	rules := func(name, tls string) string {
		return e.writeRules(t, name, fmt.Sprintf("routes:\n  - hosts: [%s]\n    proxy: https://%s\n    tls: %s\n", prodHost, e.nginx.HTTPSAddr, tls))
	}

	t.Run("CA from the rules", func(t *testing.T) {
		res := e.run(t, "doctor", "--rules", rules("ca.yaml", "{ca_file: "+e.caFile+"}"), prodHost)
		if res.code != 0 {
			t.Fatalf("exit %d, expected 0\n%s%s", res.code, res.stdout, res.stderr)
		}
		steps := doctorLines(res.stdout)
		for _, step := range []string{"rules file", "route", "proxy address", "proxy connection", "proxy TLS", "proxy header", "registry", "auth realm", "credentials"} {
			if steps[step] != "ok" && steps[step] != "skip" {
				t.Errorf("step %q = %q, expected ok or skip\n%s", step, steps[step], res.stdout)
			}
		}
		if steps["proxy TLS"] != "ok" || !strings.Contains(res.stdout, "certificate verified for 127.0.0.1") {
			t.Errorf("TLS step did not verify the certificate:\n%s", res.stdout)
		}
	})

	t.Run("wrong CA", func(t *testing.T) {
		res := e.run(t, "doctor", "--rules", rules("wrong-ca.yaml", "{ca_file: "+otherCAFile+"}"), prodHost)
		if res.code != 6 {
			t.Errorf("exit %d, expected 6 (network or route failure)\n%s%s", res.code, res.stdout, res.stderr)
		}
		steps := doctorLines(res.stdout)
		if steps["proxy TLS"] != "FAIL" || steps["proxy header"] != "skip" {
			t.Errorf("steps %v, expected the TLS step to fail and the next to be skipped\n%s", steps, res.stdout)
		}
		for _, want := range []string{"certificate signed by unknown authority", "fix: check that " + otherCAFile + " (routes[0].tls.ca_file) contains the CA"} {
			if !strings.Contains(res.stdout, want) {
				t.Errorf("output lacks %q:\n%s", want, res.stdout)
			}
		}
	})

	t.Run("no CA and not insecure", func(t *testing.T) {
		res := e.run(t, "doctor", "--rules", rules("no-ca.yaml", "{}"), prodHost)
		if res.code != 6 || doctorLines(res.stdout)["proxy TLS"] != "FAIL" {
			t.Errorf("exit %d, expected 6 with a failed TLS step\n%s", res.code, res.stdout)
		}
	})

	// The proxy's name does not resolve, so every step must use the route's address, as
	// copies do, and check the certificate against the name.
	t.Run("proxy name with an address", func(t *testing.T) {
		_, port, err := net.SplitHostPort(e.nginx.HTTPSAddr)
		if err != nil {
			t.Fatal(err)
		}
		named := e.writeRules(t, "address.yaml", fmt.Sprintf("routes:\n  - hosts: [%s]\n    proxy: https://mesh-proxy.test:%s\n    address: %q\n    tls: {ca_file: %s}\n",
			prodHost, port, e.nginx.HTTPSAddr, e.caFile))
		res := e.run(t, "doctor", "--rules", named, prodHost)
		if res.code != 0 {
			t.Fatalf("exit %d, expected 0\n%s%s", res.code, res.stdout, res.stderr)
		}
		steps := doctorLines(res.stdout)
		for _, step := range []string{"proxy address", "proxy connection", "proxy TLS", "proxy header"} {
			if steps[step] != "ok" {
				t.Errorf("step %q = %q, expected ok\n%s", step, steps[step], res.stdout)
			}
		}
		for _, want := range []string{"mesh-proxy.test is reached at " + e.nginx.HTTPSAddr, "certificate verified for mesh-proxy.test"} {
			if !strings.Contains(res.stdout, want) {
				t.Errorf("output lacks %q:\n%s", want, res.stdout)
			}
		}
	})

	t.Run("insecure", func(t *testing.T) {
		res := e.run(t, "doctor", "--rules", rules("insecure.yaml", "{insecure: true}"), prodHost)
		if res.code != 0 {
			t.Fatalf("exit %d, expected 0\n%s%s", res.code, res.stdout, res.stderr)
		}
		if !strings.Contains(res.stdout, "without verifying the certificate") {
			t.Errorf("output does not say that verification was skipped:\n%s", res.stdout)
		}
	})
}

func TestDoctorFindsBrokenRoutes(t *testing.T) {
	e := newEnv(t)

	t.Run("host outside the allowlist", func(t *testing.T) {
		rules := e.writeRules(t, "unlisted.yaml", "routes:\n  - hosts: [unlisted.prod.test]\n    proxy: http://"+e.nginx.HTTPAddr+"\n")
		res := e.run(t, "doctor", "--rules", rules, "unlisted.prod.test/team/app:1")
		if res.code != 6 {
			t.Errorf("exit %d, expected 6\n%s%s", res.code, res.stdout, res.stderr)
		}
		if doctorLines(res.stdout)["proxy header"] != "FAIL" || !strings.Contains(res.stdout, "fix: add unlisted.prod.test to the proxy's allowlist") {
			t.Errorf("output does not blame the allowlist:\n%s", res.stdout)
		}
	})

	t.Run("proxy not listening", func(t *testing.T) {
		listener, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		closed := listener.Addr().String()
		listener.Close()
		rules := e.writeRules(t, "down.yaml", "routes:\n  - hosts: ["+prodHost+"]\n    proxy: http://"+closed+"\n")
		res := e.run(t, "doctor", "--rules", rules, prodHost)
		if res.code != 6 || doctorLines(res.stdout)["proxy connection"] != "FAIL" {
			t.Errorf("exit %d, expected 6 with a failed connection step\n%s", res.code, res.stdout)
		}
	})

	t.Run("invalid rules file", func(t *testing.T) {
		rules := e.writeRules(t, "invalid.yaml", "routes:\n  - hosts: [a.test]\n    proxy: a.test:1\n")
		res := e.run(t, "doctor", "--rules", rules, prodHost)
		if res.code != 2 || doctorLines(res.stdout)["rules file"] != "FAIL" || !strings.Contains(res.stdout, "invalid.yaml:3:") {
			t.Errorf("exit %d, expected 2 with the rules file's position\n%s", res.code, res.stdout)
		}
	})

	t.Run("credentials", func(t *testing.T) {
		e.writeDockerAuth(t, map[string]string{lockedHost: lockedUser + ":" + lockedPassword})
		res := e.run(t, "doctor", "--rules", e.rulesFile, lockedHost)
		if res.code != 0 || doctorLines(res.stdout)["credentials"] != "ok" {
			t.Errorf("exit %d, expected 0 with accepted credentials\n%s%s", res.code, res.stdout, res.stderr)
		}
		if strings.Contains(res.stdout+res.stderr, lockedPassword) {
			t.Error("doctor's output contains the password")
		}

		e.writeDockerAuth(t, map[string]string{lockedHost: lockedUser + ":wrong-Password-1"})
		res = e.run(t, "doctor", "--rules", e.rulesFile, lockedHost)
		if res.code != 4 || doctorLines(res.stdout)["credentials"] != "FAIL" {
			t.Errorf("exit %d, expected 4 with rejected credentials\n%s%s", res.code, res.stdout, res.stderr)
		}
		if !strings.Contains(res.stdout, "docker login "+lockedHost) {
			t.Errorf("output does not suggest docker login:\n%s", res.stdout)
		}
	})
}

func TestRouteExplainsRule(t *testing.T) {
	e := newEnv(t)
	res := e.run(t, "route", "--rules", e.rulesFile, secureHost+"/team/app:1.4")
	if res.code != 0 {
		t.Fatalf("exit %d\n%s", res.code, res.stderr)
	}
	for _, want := range []string{
		"registry:  " + secureHost + " (https)",
		`route:     routes[1], hosts entry "` + secureHost + `" (` + e.rulesFile + ":5:",
		"proxy:     https://" + e.nginx.HTTPSAddr,
		"header:    mesh: " + secureHost,
	} {
		if !strings.Contains(res.stdout, want) {
			t.Errorf("output lacks %q:\n%s", want, res.stdout)
		}
	}

	res = e.run(t, "route", "--rules", e.rulesFile, "--format", "json", e.src.Addr)
	var out struct {
		Registry string `json:"registry"`
		Routed   bool   `json:"routed"`
		Scheme   string `json:"scheme"`
	}
	if err := json.Unmarshal([]byte(res.stdout), &out); err != nil {
		t.Fatalf("output is not JSON: %v\n%s", err, res.stdout)
	}
	if out.Routed || out.Registry != e.src.Addr || out.Scheme != "http" {
		t.Errorf("route for the source registry = %+v, expected direct over http", out)
	}
}

func TestProxyNginxCommand(t *testing.T) {
	e := newEnv(t)
	rules := e.writeRules(t, "proxy.yaml", `routes:
  - hosts: [registry.prod.test, "*.prod.example.com"]
    proxy: http://mesh-proxy.test:31080
proxy:
  upstreams:
    - {host: registry.prod.test, url: "http://10.0.0.5:5000"}
    - {host: harbor.prod.example.com, url: "https://10.0.0.6"}
`)
	output := filepath.Join(e.dir, "nginx.conf")
	res := e.run(t, "proxy", "nginx", "--rules", rules, "--tls-cert", "/run/tls/proxy.crt", "--tls-key", "/run/tls/proxy.key", "-o", output)
	if res.code != 0 || res.stdout != "" {
		t.Fatalf("exit %d, stdout %q, expected 0 and nothing\n%s", res.code, res.stdout, res.stderr)
	}
	config, err := os.ReadFile(output)
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{`"registry.prod.test" "http://mesh-upstream-1.invalid";`, "server 10.0.0.6:443;", `ssl_certificate "/run/tls/proxy.crt";`} {
		if !strings.Contains(string(config), want) {
			t.Errorf("nginx.conf lacks %q", want)
		}
	}

	res = e.run(t, "proxy", "nginx", "--rules", rules, "--format", "configmap", "--name", "edge-proxy")
	if res.code != 0 || !strings.Contains(res.stdout, "kind: ConfigMap") || !strings.Contains(res.stdout, "name: edge-proxy") {
		t.Errorf("configmap output: exit %d\n%s%s", res.code, res.stdout, res.stderr)
	}

	wildcard := e.writeRules(t, "wildcard.yaml", "routes:\n  - hosts: [\"*.prod.example.com\"]\n    proxy: http://mesh-proxy.test:31080\n")
	res = e.run(t, "proxy", "nginx", "--rules", wildcard)
	if res.code != 2 || !strings.Contains(res.stderr, "wildcard.yaml:2:") || !strings.Contains(res.stderr, "proxy.upstreams") {
		t.Errorf("exit %d, expected 2 and the wildcard's position\n%s", res.code, res.stderr)
	}
	if res.stdout != "" {
		t.Errorf("stdout is not empty on failure: %q", res.stdout)
	}
}
