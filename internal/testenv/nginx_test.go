package testenv

import (
	"bufio"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// meshTestTimeout bounds every request and wait in these tests.
const meshTestTimeout = 30 * time.Second

// upstreamRequest is what a recording upstream saw of one request.
type upstreamRequest struct {
	Method     string
	Host       string
	RequestURI string
	Header     http.Header
	Body       string
}

// recordingUpstream is an httptest server on 127.0.0.1 that records every
// request before its handler runs.
type recordingUpstream struct {
	*httptest.Server
	mu       sync.Mutex
	requests []upstreamRequest
}

// newRecordingUpstream starts a plain-HTTP upstream. With a nil handler it
// returns 200 and the body "upstream".
func newRecordingUpstream(t *testing.T, handler http.HandlerFunc) *recordingUpstream {
	t.Helper()
	upstream := &recordingUpstream{}
	upstream.Server = httptest.NewServer(upstream.wrap(handler))
	t.Cleanup(upstream.Close)
	return upstream
}

// newRecordingTLSUpstream starts an HTTPS upstream that presents cert and
// stores the SNI name of every handshake in serverNames.
func newRecordingTLSUpstream(t *testing.T, cert tls.Certificate, serverNames *syncStrings) *recordingUpstream {
	t.Helper()
	upstream := &recordingUpstream{}
	upstream.Server = httptest.NewUnstartedServer(upstream.wrap(nil))
	upstream.TLS = &tls.Config{
		Certificates: []tls.Certificate{cert},
		GetConfigForClient: func(hello *tls.ClientHelloInfo) (*tls.Config, error) {
			serverNames.add(hello.ServerName)
			return nil, nil
		},
	}
	upstream.StartTLS()
	t.Cleanup(upstream.Close)
	return upstream
}

func (u *recordingUpstream) wrap(handler http.HandlerFunc) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		record := upstreamRequest{
			Method:     r.Method,
			Host:       r.Host,
			RequestURI: r.RequestURI,
			Header:     r.Header.Clone(),
		}
		u.mu.Lock()
		u.requests = append(u.requests, record)
		u.mu.Unlock()

		if handler == nil {
			_, _ = io.WriteString(w, "upstream")
			return
		}
		handler(w, r)
	}
}

func (u *recordingUpstream) Requests() []upstreamRequest {
	u.mu.Lock()
	defer u.mu.Unlock()
	return append([]upstreamRequest(nil), u.requests...)
}

// syncStrings is a list of strings that several goroutines append to.
type syncStrings struct {
	mu     sync.Mutex
	values []string
}

func (s *syncStrings) add(value string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.values = append(s.values, value)
}

func (s *syncStrings) list() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]string(nil), s.values...)
}

// meshTestEnv is a started nginx with the CA that signed its certificate.
type meshTestEnv struct {
	nginx *Nginx
	ca    *CA
}

// meshRepoDir returns the repository root, two levels above this package.
func meshRepoDir(t *testing.T) string {
	t.Helper()
	dir, err := filepath.Abs(filepath.Join("..", ".."))
	if err != nil {
		t.Fatalf("resolve repository root: %v", err)
	}
	return dir
}

// startMeshNginx starts nginx with the given allowlist and a TLS listener
// certificate for 127.0.0.1, and stops it when the test ends. If ca is nil,
// a new CA signs the listener certificate and verifies HTTPS upstreams.
func startMeshNginx(t *testing.T, ca *CA, upstreams map[string]string) meshTestEnv {
	t.Helper()
	if ca == nil {
		var err error
		if ca, err = NewCA(); err != nil {
			t.Fatalf("NewCA: %v", err)
		}
	}
	dir := t.TempDir()
	certPEM, keyPEM, err := ca.Issue("127.0.0.1", "localhost")
	if err != nil {
		t.Fatalf("issue listener certificate: %v", err)
	}
	opts := NginxOptions{
		RepoDir:   meshRepoDir(t),
		Dir:       filepath.Join(dir, "nginx"),
		Upstreams: upstreams,
	}
	for _, file := range []struct {
		target *string
		name   string
		data   []byte
	}{
		{&opts.TLSCertFile, "proxy.crt", certPEM},
		{&opts.TLSKeyFile, "proxy.key", keyPEM},
		{&opts.UpstreamCAFile, "upstream-ca.crt", ca.CertPEM()},
	} {
		if *file.target, err = WriteFile(dir, file.name, file.data); err != nil {
			t.Fatal(err)
		}
	}

	ctx, cancel := context.WithTimeout(context.Background(), meshTestTimeout)
	defer cancel()
	n, err := StartNginx(ctx, opts)
	if err != nil {
		t.Fatalf("StartNginx: %v", err)
	}
	t.Cleanup(func() {
		if err := n.Stop(); err != nil {
			t.Errorf("stop nginx: %v", err)
		}
	})
	return meshTestEnv{nginx: n, ca: ca}
}

// newMeshClient returns a client that ignores proxy variables and does not
// follow redirects. For HTTPS it trusts only ca, or the system roots if ca is
// nil.
func newMeshClient(ca *CA) *http.Client {
	transport := &http.Transport{Proxy: nil}
	if ca != nil {
		transport.TLSClientConfig = &tls.Config{RootCAs: ca.CertPool()}
	}
	return &http.Client{
		Transport: transport,
		Timeout:   meshTestTimeout,
		CheckRedirect: func(*http.Request, []*http.Request) error {
			return http.ErrUseLastResponse
		},
	}
}

// meshResponse is a response with its body read.
type meshResponse struct {
	Status int
	Header http.Header
	Body   string
}

// doMeshRequest sends a request with the given headers and reads the whole
// response.
func doMeshRequest(t *testing.T, client *http.Client, method, url string, header http.Header, body io.Reader) meshResponse {
	t.Helper()
	req, err := http.NewRequest(method, url, body)
	if err != nil {
		t.Fatalf("build request: %v", err)
	}
	for name, values := range header {
		req.Header[name] = values
	}
	resp, err := client.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, url, err)
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("read response body of %s %s: %v", method, url, err)
	}
	return meshResponse{Status: resp.StatusCode, Header: resp.Header, Body: string(data)}
}

// sendRawRequest writes request to addr byte for byte and reads one
// response. It covers requests that net/http refuses to send.
func sendRawRequest(t *testing.T, addr, request string) meshResponse {
	t.Helper()
	conn, err := net.DialTimeout("tcp", addr, meshTestTimeout)
	if err != nil {
		t.Fatalf("dial %s: %v", addr, err)
	}
	defer conn.Close()
	if err := conn.SetDeadline(time.Now().Add(meshTestTimeout)); err != nil {
		t.Fatal(err)
	}
	if _, err := io.WriteString(conn, request); err != nil {
		t.Fatalf("write raw request: %v", err)
	}
	resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
	if err != nil {
		t.Fatalf("read response to raw request %q: %v", request, err)
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("read response body to raw request %q: %v", request, err)
	}
	return meshResponse{Status: resp.StatusCode, Header: resp.Header, Body: string(data)}
}

func meshHeader(value string) http.Header {
	return http.Header{"Mesh": {value}}
}

func TestNginxForwardsAllowlistedHost(t *testing.T) {
	var upstreamURL string
	upstream := newRecordingUpstream(t, func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Location", upstreamURL+"/v2/library/alpine/blobs/uploads/abc?_state=xyz")
		w.Header().Set("Docker-Distribution-Api-Version", "registry/2.0")
		w.WriteHeader(http.StatusAccepted)
		_, _ = io.WriteString(w, "accepted")
	})
	upstreamURL = upstream.URL
	env := startMeshNginx(t, nil, map[string]string{"registry.prod.test": upstream.URL})
	client := newMeshClient(nil)

	requestURI := "/v2/library%2Falpine/blobs/uploads/?mount=sha256:abc&from=library/base"
	header := meshHeader("registry.prod.test")
	header.Set("Authorization", "Bearer test-token")
	header.Set("X-Forwarded-Host", "attacker.test")
	header.Set("X-Forwarded-Proto", "https")
	resp := doMeshRequest(t, client, http.MethodPost, "http://"+env.nginx.HTTPAddr+requestURI, header, strings.NewReader("{}"))

	if resp.Status != http.StatusAccepted {
		t.Fatalf("status = %d, expected 202; body %q", resp.Status, resp.Body)
	}
	if resp.Body != "accepted" {
		t.Errorf("body = %q, expected the upstream's body", resp.Body)
	}
	if got, want := resp.Header.Get("Location"), upstream.URL+"/v2/library/alpine/blobs/uploads/abc?_state=xyz"; got != want {
		t.Errorf("Location = %q, expected it unchanged: %q", got, want)
	}
	if got := resp.Header.Get("Docker-Distribution-Api-Version"); got != "registry/2.0" {
		t.Errorf("Docker-Distribution-Api-Version = %q, expected the upstream's value", got)
	}

	requests := upstream.Requests()
	if len(requests) != 1 {
		t.Fatalf("upstream received %d requests, expected 1", len(requests))
	}
	got := requests[0]
	if got.Host != "registry.prod.test" {
		t.Errorf("upstream Host = %q, expected the mesh header value", got.Host)
	}
	if got.RequestURI != requestURI {
		t.Errorf("upstream request URI = %q, expected it unchanged: %q", got.RequestURI, requestURI)
	}
	if got.Method != http.MethodPost {
		t.Errorf("upstream method = %q, expected POST", got.Method)
	}
	if values := got.Header.Values("Mesh"); len(values) != 0 {
		t.Errorf("upstream received mesh header %q, expected it removed", values)
	}
	if value := got.Header.Get("Authorization"); value != "Bearer test-token" {
		t.Errorf("upstream Authorization = %q, expected it forwarded", value)
	}
	if value := got.Header.Get("X-Forwarded-For"); value != "127.0.0.1" {
		t.Errorf("upstream X-Forwarded-For = %q, expected 127.0.0.1", value)
	}
	if values := got.Header.Values("X-Forwarded-Host"); len(values) != 1 || values[0] != "registry.prod.test" {
		t.Errorf("upstream X-Forwarded-Host = %q, expected the mesh header value instead of the client's", values)
	}
	if values := got.Header.Values("X-Forwarded-Proto"); len(values) != 1 || values[0] != "http" {
		t.Errorf("upstream X-Forwarded-Proto = %q, expected the upstream's scheme http instead of the client's", values)
	}
	if values := got.Header.Values("Forwarded"); len(values) != 0 {
		t.Errorf("upstream received Forwarded %q, expected it cleared", values)
	}
}

func TestNginxMatchesHeaderIgnoringCase(t *testing.T) {
	upstream := newRecordingUpstream(t, nil)
	env := startMeshNginx(t, nil, map[string]string{"registry.prod.test": upstream.URL})

	resp := doMeshRequest(t, newMeshClient(nil), http.MethodGet, "http://"+env.nginx.HTTPAddr+"/v2/", meshHeader("Registry.PROD.test"), nil)

	if resp.Status != http.StatusOK {
		t.Fatalf("status = %d, expected 200; body %q", resp.Status, resp.Body)
	}
	requests := upstream.Requests()
	if len(requests) != 1 {
		t.Fatalf("upstream received %d requests, expected 1", len(requests))
	}
	if requests[0].Host != "Registry.PROD.test" {
		t.Errorf("upstream Host = %q, expected the header value as sent", requests[0].Host)
	}
}

func TestNginxForwardsHostWithPort(t *testing.T) {
	upstream := newRecordingUpstream(t, nil)
	env := startMeshNginx(t, nil, map[string]string{"registry.prod.test:5000": upstream.URL})
	client := newMeshClient(nil)

	resp := doMeshRequest(t, client, http.MethodGet, "http://"+env.nginx.HTTPAddr+"/v2/", meshHeader("registry.prod.test:5000"), nil)
	if resp.Status != http.StatusOK {
		t.Fatalf("status = %d, expected 200; body %q", resp.Status, resp.Body)
	}
	requests := upstream.Requests()
	if len(requests) != 1 || requests[0].Host != "registry.prod.test:5000" {
		t.Fatalf("upstream requests = %+v, expected one with Host registry.prod.test:5000", requests)
	}

	// The same host without the listed port is another key.
	resp = doMeshRequest(t, client, http.MethodGet, "http://"+env.nginx.HTTPAddr+"/v2/", meshHeader("registry.prod.test"), nil)
	if resp.Status != http.StatusForbidden {
		t.Errorf("status without port = %d, expected 403", resp.Status)
	}
	if n := len(upstream.Requests()); n != 1 {
		t.Errorf("upstream received %d requests, expected still 1", n)
	}
}

func TestNginxRejectsUnroutableHeaders(t *testing.T) {
	upstream := newRecordingUpstream(t, nil)
	env := startMeshNginx(t, nil, map[string]string{"registry.prod.test": upstream.URL})
	client := newMeshClient(nil)

	tests := []struct {
		name   string
		header http.Header
		status int
		body   string
	}{
		{"missing header", nil, http.StatusBadRequest, "missing mesh header"},
		{"not allowlisted", meshHeader("registry.other.test"), http.StatusForbidden, "not on this proxy's allowlist"},
		{"upstream loopback address", meshHeader(upstream.Listener.Addr().String()), http.StatusForbidden, "not on this proxy's allowlist"},
		{"unlisted port", meshHeader("registry.prod.test:443"), http.StatusForbidden, "not on this proxy's allowlist"},
		{"path", meshHeader("registry.prod.test/v2/"), http.StatusForbidden, "not on this proxy's allowlist"},
		{"userinfo", meshHeader("user@registry.prod.test"), http.StatusForbidden, "not on this proxy's allowlist"},
		{"userinfo with password", meshHeader("user:secret@registry.prod.test"), http.StatusForbidden, "not on this proxy's allowlist"},
		{"scheme", meshHeader("http://registry.prod.test"), http.StatusForbidden, "not on this proxy's allowlist"},
		{"trailing dot", meshHeader("registry.prod.test."), http.StatusForbidden, "not on this proxy's allowlist"},
		{"longer name", meshHeader("registry.prod.test.attacker.test"), http.StatusForbidden, "not on this proxy's allowlist"},
		{"inner space", meshHeader("registry.prod.test x"), http.StatusForbidden, "not on this proxy's allowlist"},
		{"list", meshHeader("registry.prod.test, registry.prod.test"), http.StatusForbidden, "not on this proxy's allowlist"},
		{"regex syntax", meshHeader("~.*"), http.StatusForbidden, "not on this proxy's allowlist"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			resp := doMeshRequest(t, client, http.MethodGet, "http://"+env.nginx.HTTPAddr+"/v2/", tt.header, nil)
			if resp.Status != tt.status {
				t.Errorf("status = %d, expected %d; body %q", resp.Status, tt.status, resp.Body)
			}
			if !strings.Contains(resp.Body, tt.body) {
				t.Errorf("body = %q, expected it to contain %q", resp.Body, tt.body)
			}
			if got := resp.Header.Get("Content-Type"); got != "text/plain" {
				t.Errorf("Content-Type = %q, expected text/plain", got)
			}
		})
	}

	if requests := upstream.Requests(); len(requests) != 0 {
		t.Errorf("upstream received %d rejected requests, expected none: %+v", len(requests), requests)
	}
}

func TestNginxRejectsMalformedHeaders(t *testing.T) {
	upstream := newRecordingUpstream(t, nil)
	env := startMeshNginx(t, nil, map[string]string{"registry.prod.test": upstream.URL})

	const requestLine = "GET /v2/ HTTP/1.1\r\nHost: proxy.test\r\nConnection: close\r\n"
	tests := []struct {
		name    string
		headers string
		status  int
	}{
		{"empty value", "mesh: \r\n", http.StatusBadRequest},
		{"CR inside value", "mesh: registry.prod.test\rX-Injected: 1\r\n", http.StatusBadRequest},
		{"NUL inside value", "mesh: registry.prod.test\x00\r\n", http.StatusBadRequest},
		{"folded continuation line", "mesh: registry.other.test\r\n registry.prod.test\r\n", http.StatusBadRequest},
		{"repeated, first not allowlisted", "mesh: registry.other.test\r\nmesh: registry.prod.test\r\n", http.StatusForbidden},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			resp := sendRawRequest(t, env.nginx.HTTPAddr, requestLine+tt.headers+"\r\n")
			if resp.Status != tt.status {
				t.Errorf("status = %d, expected %d; body %q", resp.Status, tt.status, resp.Body)
			}
		})
	}

	if requests := upstream.Requests(); len(requests) != 0 {
		t.Errorf("upstream received %d malformed requests, expected none: %+v", len(requests), requests)
	}
}

func TestNginxRoutesOnlyByMeshHeader(t *testing.T) {
	allowed := newRecordingUpstream(t, nil)
	other := newRecordingUpstream(t, nil)
	env := startMeshNginx(t, nil, map[string]string{"registry.prod.test": allowed.URL})

	t.Run("absolute-form request target", func(t *testing.T) {
		request := "GET " + other.URL + "/v2/ HTTP/1.1\r\nHost: " + other.Listener.Addr().String() +
			"\r\nmesh: registry.prod.test\r\nConnection: close\r\n\r\n"
		resp := sendRawRequest(t, env.nginx.HTTPAddr, request)
		if resp.Status != http.StatusOK {
			t.Fatalf("status = %d, expected 200; body %q", resp.Status, resp.Body)
		}
		requests := allowed.Requests()
		if len(requests) == 0 {
			t.Fatal("the allowlisted upstream received no request")
		}
		last := requests[len(requests)-1]
		if last.RequestURI != "/v2/" || last.Host != "registry.prod.test" {
			t.Errorf("allowlisted upstream saw URI %q and Host %q, expected /v2/ and registry.prod.test", last.RequestURI, last.Host)
		}
	})

	t.Run("Host header", func(t *testing.T) {
		req, err := http.NewRequest(http.MethodGet, "http://"+env.nginx.HTTPAddr+"/v2/", nil)
		if err != nil {
			t.Fatal(err)
		}
		req.Host = other.Listener.Addr().String()
		req.Header.Set("mesh", "registry.prod.test")
		resp, err := newMeshClient(nil).Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			t.Fatalf("status = %d, expected 200", resp.StatusCode)
		}
	})

	// nginx 1.22 routes by the first of repeated headers, and nginx 1.23 and
	// later join them and reject the request. Either way the second value
	// must never choose the upstream.
	t.Run("repeated header, first allowlisted", func(t *testing.T) {
		before := len(allowed.Requests())
		request := "GET /v2/ HTTP/1.1\r\nHost: proxy.test\r\nmesh: registry.prod.test\r\nmesh: " +
			other.Listener.Addr().String() + "\r\nConnection: close\r\n\r\n"
		resp := sendRawRequest(t, env.nginx.HTTPAddr, request)
		switch resp.Status {
		case http.StatusOK:
			requests := allowed.Requests()
			if len(requests) != before+1 {
				t.Fatalf("allowlisted upstream received %d new requests, expected 1", len(requests)-before)
			}
			last := requests[len(requests)-1]
			if last.Host != "registry.prod.test" || len(last.Header.Values("Mesh")) != 0 {
				t.Errorf("upstream saw Host %q and mesh %q, expected registry.prod.test and no mesh header", last.Host, last.Header.Values("Mesh"))
			}
		case http.StatusForbidden:
		default:
			t.Errorf("status = %d, expected 200 (nginx 1.22) or 403 (nginx 1.23 and later)", resp.Status)
		}
	})

	if requests := other.Requests(); len(requests) != 0 {
		t.Errorf("the upstream that is not allowlisted received %d requests, expected none", len(requests))
	}
}

func TestNginxStreamsBodies(t *testing.T) {
	requestChunkSeen := make(chan struct{})
	responseChunkSeen := make(chan struct{})
	upstream := newRecordingUpstream(t, func(w http.ResponseWriter, r *http.Request) {
		first := make([]byte, len("part1"))
		if _, err := io.ReadFull(r.Body, first); err != nil {
			t.Errorf("upstream: read first request chunk: %v", err)
			return
		}
		close(requestChunkSeen)
		rest, err := io.ReadAll(r.Body)
		if err != nil {
			t.Errorf("upstream: read rest of request body: %v", err)
			return
		}
		if got := string(first) + string(rest); got != "part1part2" {
			t.Errorf("upstream: request body = %q, expected part1part2", got)
		}

		_, _ = io.WriteString(w, "first")
		w.(http.Flusher).Flush()
		select {
		case <-responseChunkSeen:
		case <-time.After(10 * time.Second):
			t.Errorf("client did not receive the first response chunk while the upstream held the rest: is proxy_buffering on?")
		}
		_, _ = io.WriteString(w, "second")
	})
	env := startMeshNginx(t, nil, map[string]string{"registry.prod.test": upstream.URL})

	bodyReader, bodyWriter := io.Pipe()
	go func() {
		_, _ = io.WriteString(bodyWriter, "part1")
		select {
		case <-requestChunkSeen:
		case <-time.After(10 * time.Second):
			t.Errorf("upstream did not receive the first request chunk while the client held the rest: is proxy_request_buffering on?")
		}
		_, _ = io.WriteString(bodyWriter, "part2")
		bodyWriter.Close()
	}()

	req, err := http.NewRequest(http.MethodPatch, "http://"+env.nginx.HTTPAddr+"/v2/library/alpine/blobs/uploads/abc", bodyReader)
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("mesh", "registry.prod.test")
	resp, err := newMeshClient(nil).Do(req)
	if err != nil {
		t.Fatalf("PATCH through nginx: %v", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("status = %d, expected 200", resp.StatusCode)
	}

	first := make([]byte, len("first"))
	if _, err := io.ReadFull(resp.Body, first); err != nil {
		t.Fatalf("read first response chunk: %v", err)
	}
	close(responseChunkSeen)
	rest, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("read rest of response: %v", err)
	}
	if got := string(first) + string(rest); got != "firstsecond" {
		t.Errorf("response body = %q, expected firstsecond", got)
	}
}

// TestNginxDoesNotSpoolResponses checks that a client which stops reading
// also stops the upstream. A buffering nginx would keep reading the upstream
// into temp files, so the upstream would finish writing.
func TestNginxDoesNotSpoolResponses(t *testing.T) {
	// Larger than the socket buffers on both sides of nginx can hold. Linux
	// loopback sockets grow to a few MiB each by default (tcp_rmem and
	// tcp_wmem maximums of 6 MiB and 4 MiB).
	const responseSize = 64 << 20
	var written atomic.Int64
	upstreamDone := make(chan struct{})
	upstream := newRecordingUpstream(t, func(w http.ResponseWriter, r *http.Request) {
		defer close(upstreamDone)
		w.Header().Set("Content-Length", strconv.Itoa(responseSize))
		chunk := make([]byte, 32<<10)
		for written.Load() < responseSize {
			n, err := w.Write(chunk)
			written.Add(int64(n))
			if err != nil {
				return
			}
		}
	})
	env := startMeshNginx(t, nil, map[string]string{"registry.prod.test": upstream.URL})

	req, err := http.NewRequest(http.MethodGet, "http://"+env.nginx.HTTPAddr+"/v2/library/alpine/blobs/sha256:abc", nil)
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("mesh", "registry.prod.test")
	resp, err := newMeshClient(nil).Do(req)
	if err != nil {
		t.Fatalf("GET through nginx: %v", err)
	}
	defer resp.Body.Close()

	// Wait until the upstream finishes (a failure) or its progress stalls
	// for half a second while the client reads nothing.
	ticker := time.NewTicker(100 * time.Millisecond)
	defer ticker.Stop()
	deadline := time.After(meshTestTimeout)
	last, unchanged := int64(-1), 0
	for unchanged < 5 {
		select {
		case <-upstreamDone:
			t.Fatalf("upstream wrote all %d bytes while the client read none: nginx buffers responses", responseSize)
		case <-deadline:
			t.Fatalf("upstream kept writing for %v (%d bytes) while the client read none", meshTestTimeout, written.Load())
		case <-ticker.C:
		}
		if current := written.Load(); current == last {
			unchanged++
		} else {
			last, unchanged = current, 0
		}
	}

	received, err := io.Copy(io.Discard, resp.Body)
	if err != nil {
		t.Fatalf("read response: %v", err)
	}
	if received != responseSize {
		t.Errorf("received %d bytes, expected %d", received, responseSize)
	}
}

func TestNginxHealthEndpoint(t *testing.T) {
	upstream := newRecordingUpstream(t, nil)
	env := startMeshNginx(t, nil, map[string]string{"registry.prod.test": upstream.URL})
	client := newMeshClient(nil)
	healthURL := "http://" + env.nginx.HTTPAddr + "/healthz"

	resp := doMeshRequest(t, client, http.MethodGet, healthURL, nil, nil)
	if resp.Status != http.StatusOK || resp.Body != "ok\n" {
		t.Errorf("GET /healthz without header = %d %q, expected 200 \"ok\\n\"", resp.Status, resp.Body)
	}
	if n := len(upstream.Requests()); n != 0 {
		t.Errorf("upstream received %d requests for the local health check, expected none", n)
	}

	resp = doMeshRequest(t, client, http.MethodGet, healthURL, meshHeader("registry.prod.test"), nil)
	if resp.Status != http.StatusOK || resp.Body != "upstream" {
		t.Errorf("GET /healthz with an allowlisted header = %d %q, expected the upstream's 200 \"upstream\"", resp.Status, resp.Body)
	}
	if requests := upstream.Requests(); len(requests) != 1 || requests[0].RequestURI != "/healthz" {
		t.Errorf("upstream requests = %+v, expected one for /healthz", requests)
	}

	resp = doMeshRequest(t, client, http.MethodGet, healthURL, meshHeader("registry.other.test"), nil)
	if resp.Status != http.StatusForbidden {
		t.Errorf("GET /healthz with a header not on the allowlist = %d, expected 403", resp.Status)
	}

	// Probes are left out of the access log, the other two requests are not.
	ctx, cancel := context.WithTimeout(context.Background(), meshTestTimeout)
	defer cancel()
	if _, err := env.nginx.WaitAccessLog(ctx, `mesh="registry.other.test"`); err != nil {
		t.Fatal(err)
	}
	lines, err := env.nginx.AccessLogLines()
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range lines {
		if strings.Contains(line, `mesh=""`) {
			t.Errorf("access log contains a health probe: %s", line)
		}
	}
	if len(lines) != 2 {
		t.Errorf("access log has %d lines, expected 2: %q", len(lines), lines)
	}
}

func TestNginxAccessLogFormat(t *testing.T) {
	upstream := newRecordingUpstream(t, nil)
	env := startMeshNginx(t, nil, map[string]string{"registry.prod.test": upstream.URL})
	client := newMeshClient(nil)

	doMeshRequest(t, client, http.MethodGet, "http://"+env.nginx.HTTPAddr+"/v2/tags/list?X-Amz-Signature=secret", meshHeader("registry.prod.test"), nil)
	doMeshRequest(t, client, http.MethodGet, "http://"+env.nginx.HTTPAddr+"/v2/", meshHeader("registry.other.test"), nil)

	ctx, cancel := context.WithTimeout(context.Background(), meshTestTimeout)
	defer cancel()
	forwarded, err := env.nginx.WaitAccessLog(ctx, `mesh="registry.prod.test"`)
	if err != nil {
		t.Fatal(err)
	}
	for _, field := range []string{
		"client=127.0.0.1",
		"scheme=http",
		"method=GET",
		`uri="/v2/tags/list"`,
		"status=200",
		"bytes_sent=",
		"request_length=",
		"request_time=",
		`upstream_addr="` + upstream.Listener.Addr().String() + `"`,
		`upstream_status="200"`,
	} {
		if !strings.Contains(forwarded, field) {
			t.Errorf("access log line lacks %s: %s", field, forwarded)
		}
	}
	if strings.Contains(forwarded, "secret") {
		t.Errorf("access log line contains the query string: %s", forwarded)
	}

	rejected, err := env.nginx.WaitAccessLog(ctx, `mesh="registry.other.test"`)
	if err != nil {
		t.Fatal(err)
	}
	for _, field := range []string{"status=403", `upstream_addr="-"`} {
		if !strings.Contains(rejected, field) {
			t.Errorf("access log line for a rejected request lacks %s: %s", field, rejected)
		}
	}
}

func TestNginxTLSListener(t *testing.T) {
	upstream := newRecordingUpstream(t, nil)
	env := startMeshNginx(t, nil, map[string]string{"registry.prod.test": upstream.URL})

	resp := doMeshRequest(t, newMeshClient(env.ca), http.MethodGet, "https://"+env.nginx.HTTPSAddr+"/v2/", meshHeader("registry.prod.test"), nil)
	if resp.Status != http.StatusOK || resp.Body != "upstream" {
		t.Fatalf("GET over TLS = %d %q, expected the upstream's 200 \"upstream\"", resp.Status, resp.Body)
	}
	if requests := upstream.Requests(); len(requests) != 1 || requests[0].Host != "registry.prod.test" {
		t.Errorf("upstream requests = %+v, expected one with Host registry.prod.test", requests)
	}

	ctx, cancel := context.WithTimeout(context.Background(), meshTestTimeout)
	defer cancel()
	if _, err := env.nginx.WaitAccessLog(ctx, "scheme=https"); err != nil {
		t.Error(err)
	}

	// A client that does not trust the test CA must fail the handshake.
	_, err := newMeshClient(nil).Get("https://" + env.nginx.HTTPSAddr + "/healthz")
	var unknownAuthority x509.UnknownAuthorityError
	if err == nil || !errors.As(err, &unknownAuthority) {
		t.Errorf("GET over TLS without the test CA: error %v, expected an unknown-authority error", err)
	}
}

func TestNginxHTTPSUpstream(t *testing.T) {
	ca, err := NewCA()
	if err != nil {
		t.Fatal(err)
	}
	cert, err := ca.TLSCertificate("registry.tls.test")
	if err != nil {
		t.Fatal(err)
	}
	var serverNames syncStrings
	trusted := newRecordingTLSUpstream(t, cert, &serverNames)

	otherCA, err := NewCA()
	if err != nil {
		t.Fatal(err)
	}
	untrustedCert, err := otherCA.TLSCertificate("registry.untrusted.test")
	if err != nil {
		t.Fatal(err)
	}
	var untrustedNames syncStrings
	untrusted := newRecordingTLSUpstream(t, untrustedCert, &untrustedNames)

	env := startMeshNginx(t, ca, map[string]string{
		"registry.tls.test":       trusted.URL,
		"registry.tls.test:8443":  trusted.URL,
		"registry.wrongname.test": trusted.URL,
		"registry.untrusted.test": untrusted.URL,
	})
	client := newMeshClient(nil)
	proxyURL := "http://" + env.nginx.HTTPAddr + "/v2/"

	t.Run("verified", func(t *testing.T) {
		for _, host := range []string{"registry.tls.test", "registry.tls.test:8443"} {
			resp := doMeshRequest(t, client, http.MethodGet, proxyURL, meshHeader(host), nil)
			if resp.Status != http.StatusOK || resp.Body != "upstream" {
				t.Errorf("mesh %s: %d %q, expected the upstream's 200 \"upstream\"", host, resp.Status, resp.Body)
			}
		}
		requests := trusted.Requests()
		if len(requests) != 2 {
			t.Fatalf("HTTPS upstream received %d requests, expected 2", len(requests))
		}
		if requests[0].Host != "registry.tls.test" || requests[1].Host != "registry.tls.test:8443" {
			t.Errorf("upstream Host values = %q and %q, expected the mesh header values", requests[0].Host, requests[1].Host)
		}
		for _, name := range serverNames.list() {
			if name != "registry.tls.test" {
				t.Errorf("upstream TLS server name = %q, expected registry.tls.test", name)
			}
		}
		if len(serverNames.list()) == 0 {
			t.Error("upstream saw no TLS handshake")
		}
	})

	t.Run("name mismatch", func(t *testing.T) {
		before := len(trusted.Requests())
		resp := doMeshRequest(t, client, http.MethodGet, proxyURL, meshHeader("registry.wrongname.test"), nil)
		if resp.Status != http.StatusBadGateway {
			t.Errorf("status = %d, expected 502", resp.Status)
		}
		if n := len(trusted.Requests()) - before; n != 0 {
			t.Errorf("upstream received %d requests over an unverified connection", n)
		}
		waitForErrorLog(t, env.nginx, `upstream SSL certificate does not match "registry.wrongname.test"`)
	})

	t.Run("untrusted CA", func(t *testing.T) {
		resp := doMeshRequest(t, client, http.MethodGet, proxyURL, meshHeader("registry.untrusted.test"), nil)
		if resp.Status != http.StatusBadGateway {
			t.Errorf("status = %d, expected 502", resp.Status)
		}
		if n := len(untrusted.Requests()); n != 0 {
			t.Errorf("upstream received %d requests over an unverified connection", n)
		}
		waitForErrorLog(t, env.nginx, "upstream SSL certificate verify error")
	})
}

// waitForErrorLog polls nginx's error log until it contains substr.
func waitForErrorLog(t *testing.T, n *Nginx, substr string) {
	t.Helper()
	deadline := time.Now().Add(meshTestTimeout)
	for {
		data, err := os.ReadFile(n.ErrorLog)
		if err != nil {
			t.Fatalf("read nginx error log: %v", err)
		}
		if strings.Contains(string(data), substr) {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("nginx error log lacks %q:\n%s", substr, data)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func TestNginxStopIsIdempotent(t *testing.T) {
	env := startMeshNginx(t, nil, nil)

	if err := env.nginx.Stop(); err != nil {
		t.Fatalf("first Stop: %v", err)
	}
	if err := env.nginx.Stop(); err != nil {
		t.Errorf("second Stop: %v", err)
	}
	if conn, err := net.DialTimeout("tcp", env.nginx.HTTPAddr, time.Second); err == nil {
		conn.Close()
		t.Errorf("%s still accepts connections after Stop", env.nginx.HTTPAddr)
	}
	if workers := childPIDs(env.nginx.PID); len(workers) != 0 {
		t.Errorf("nginx workers %v still run after Stop", workers)
	}
}

func TestStartNginxRejectsInvalidOptions(t *testing.T) {
	valid := func() NginxOptions {
		return NginxOptions{
			RepoDir:        meshRepoDir(t),
			Dir:            t.TempDir(),
			TLSCertFile:    "/nonexistent/proxy.crt",
			TLSKeyFile:     "/nonexistent/proxy.key",
			UpstreamCAFile: "/nonexistent/ca.crt",
		}
	}
	tests := []struct {
		name    string
		change  func(*NginxOptions)
		message string
	}{
		{"missing TLS certificate", func(o *NginxOptions) { o.TLSCertFile = "" }, "NginxOptions.TLSCertFile is required"},
		{"missing upstream CA", func(o *NginxOptions) { o.UpstreamCAFile = "" }, "NginxOptions.UpstreamCAFile is required"},
		{"dollar in path", func(o *NginxOptions) { o.TLSKeyFile = "/tmp/$key" }, "must not contain"},
		{"upstream with path", func(o *NginxOptions) { o.Upstreams = map[string]string{"r.test": "http://127.0.0.1:5000/v2"} }, "invalid upstream URL"},
		{"upstream with trailing slash", func(o *NginxOptions) { o.Upstreams = map[string]string{"r.test": "http://127.0.0.1:5000/"} }, "invalid upstream URL"},
		{"upstream with userinfo", func(o *NginxOptions) { o.Upstreams = map[string]string{"r.test": "http://u:p@127.0.0.1:5000"} }, "invalid upstream URL"},
		{"upstream scheme", func(o *NginxOptions) { o.Upstreams = map[string]string{"r.test": "ftp://127.0.0.1:5000"} }, "invalid upstream URL"},
		{"upstream not loopback", func(o *NginxOptions) { o.Upstreams = map[string]string{"r.test": "http://10.0.0.5:5000"} }, "loopback IP address"},
		{"upstream name", func(o *NginxOptions) { o.Upstreams = map[string]string{"r.test": "http://localhost:5000"} }, "loopback IP address"},
		{"regex key", func(o *NginxOptions) { o.Upstreams = map[string]string{"~.*": "http://127.0.0.1:5000"} }, "invalid allowlist key"},
		{"keyword key", func(o *NginxOptions) { o.Upstreams = map[string]string{"default": "http://127.0.0.1:5000"} }, "invalid allowlist key"},
		{"key with path", func(o *NginxOptions) { o.Upstreams = map[string]string{"r.test/v2": "http://127.0.0.1:5000"} }, "invalid allowlist key"},
		{"keys differing in case", func(o *NginxOptions) {
			o.Upstreams = map[string]string{"r.test": "http://127.0.0.1:5000", "R.test": "http://127.0.0.1:5001"}
		}, "differ only in case"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			opts := valid()
			tt.change(&opts)
			n, err := StartNginx(context.Background(), opts)
			if err == nil {
				n.Stop()
				t.Fatal("StartNginx succeeded, expected an error")
			}
			if !strings.Contains(err.Error(), tt.message) {
				t.Errorf("error = %q, expected it to contain %q", err, tt.message)
			}
		})
	}
}

func TestStartNginxReportsConfigTestOutput(t *testing.T) {
	dir := t.TempDir()
	// An empty certificate file passes the option checks but not nginx -t.
	empty, err := WriteFile(dir, "empty.pem", nil)
	if err != nil {
		t.Fatal(err)
	}
	_, err = StartNginx(context.Background(), NginxOptions{
		RepoDir:        meshRepoDir(t),
		Dir:            filepath.Join(dir, "nginx"),
		TLSCertFile:    empty,
		TLSKeyFile:     empty,
		UpstreamCAFile: empty,
	})
	if err == nil {
		t.Fatal("StartNginx succeeded with an empty certificate, expected an error")
	}
	if !strings.Contains(err.Error(), "nginx -t rejected") || !strings.Contains(err.Error(), "empty.pem") {
		t.Errorf("error = %q, expected the nginx -t output naming empty.pem", err)
	}
}

func TestNginxFailureMarksTakenPort(t *testing.T) {
	exitErr := errors.New("exit status 1")
	portTaken := nginxFailure("nginx -t rejected nginx.conf", exitErr,
		`nginx: [emerg] bind() to 127.0.0.1:41000 failed (98: Address already in use)`)
	if !errors.Is(portTaken, errAddressInUse) {
		t.Errorf("error %q should wrap errAddressInUse", portTaken)
	}
	if !errors.Is(portTaken, exitErr) {
		t.Errorf("error %q should wrap the exit error", portTaken)
	}
	if !strings.Contains(portTaken.Error(), "127.0.0.1:41000") {
		t.Errorf("error %q lacks the nginx output", portTaken)
	}

	other := nginxFailure("nginx -t rejected nginx.conf", exitErr, `nginx: [emerg] unknown directive "foo"`)
	if errors.Is(other, errAddressInUse) {
		t.Errorf("error %q should not wrap errAddressInUse", other)
	}
}
