package testenv

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// echoUpstream is a loopback server that records what it receives. It responds to GET
// with a body of size bytes and to PUT with the number of body bytes it could read.
type echoUpstream struct {
	server *httptest.Server
	body   []byte

	mu       sync.Mutex
	hosts    []string
	received []int
}

func startEchoUpstream(t *testing.T, size int) *echoUpstream {
	t.Helper()
	u := &echoUpstream{body: bytes.Repeat([]byte("0123456789abcdef"), size/16)}
	u.server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		n, _ := io.Copy(io.Discard, r.Body)
		u.mu.Lock()
		u.hosts = append(u.hosts, r.Host)
		u.received = append(u.received, int(n))
		u.mu.Unlock()
		if r.Method == http.MethodPut {
			_, _ = io.WriteString(w, strconv.FormatInt(n, 10))
			return
		}
		w.Header().Set("Content-Length", strconv.Itoa(len(u.body)))
		_, _ = w.Write(u.body)
	}))
	t.Cleanup(u.server.Close)
	return u
}

func startFaultProxy(t *testing.T, target string, rules ...FaultRule) *FaultProxy {
	t.Helper()
	p, err := StartFaultProxy(FaultProxyOptions{Target: target, Rules: rules})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := p.Close(); err != nil {
			t.Errorf("closing the fault proxy: %v", err)
		}
	})
	return p
}

// plainClient connects without environment proxies and without connection reuse, so
// that every request meets the fault proxy's rules on a connection of its own.
func plainClient() *http.Client {
	return &http.Client{Transport: &http.Transport{Proxy: nil, DisableKeepAlives: true}, Timeout: 10 * time.Second}
}

func get(t *testing.T, client *http.Client, url, host string) (*http.Response, []byte, error) {
	t.Helper()
	req, err := http.NewRequest(http.MethodGet, url, nil)
	if err != nil {
		t.Fatal(err)
	}
	req.Host = host
	resp, err := client.Do(req)
	if err != nil {
		return nil, nil, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	return resp, body, err
}

func TestFaultProxyForwardsUnchanged(t *testing.T) {
	upstream := startEchoUpstream(t, 4096)
	p := startFaultProxy(t, upstream.server.URL)

	resp, body, err := get(t, plainClient(), p.URL+"/v2/a/blobs/x?q=1", "registry.prod.test")
	if err != nil {
		t.Fatal(err)
	}
	if resp.StatusCode != http.StatusOK {
		t.Errorf("status %d, want 200", resp.StatusCode)
	}
	if !bytes.Equal(body, upstream.body) {
		t.Errorf("body of %d bytes differs from the upstream's %d bytes", len(body), len(upstream.body))
	}
	upstream.mu.Lock()
	defer upstream.mu.Unlock()
	if len(upstream.hosts) != 1 || upstream.hosts[0] != "registry.prod.test" {
		t.Errorf("upstream saw Host %v, want the client's registry.prod.test", upstream.hosts)
	}
	if n := len(p.Injected()); n != 0 {
		t.Errorf("%d faults injected without rules", n)
	}
	if requests := p.Requests(); len(requests) != 1 || requests[0].Path != "/v2/a/blobs/x" {
		t.Errorf("requests = %+v, want one for /v2/a/blobs/x", requests)
	}
}

func TestFaultProxyStatusWindow(t *testing.T) {
	upstream := startEchoUpstream(t, 16)
	p := startFaultProxy(t, upstream.server.URL, FaultRule{
		Method: http.MethodGet, Path: "/blobs/", From: 2, Times: 2,
		Kind: FaultStatus, Status: http.StatusTooManyRequests, Header: http.Header{"Retry-After": {"1"}},
	})

	client := plainClient()
	var statuses []int
	for range 5 {
		resp, _, err := get(t, client, p.URL+"/v2/a/blobs/x", "")
		if err != nil {
			t.Fatal(err)
		}
		statuses = append(statuses, resp.StatusCode)
		if resp.StatusCode == http.StatusTooManyRequests && resp.Header.Get("Retry-After") != "1" {
			t.Errorf("Retry-After = %q, want 1", resp.Header.Get("Retry-After"))
		}
	}
	want := []int{200, 429, 429, 200, 200}
	for i := range want {
		if statuses[i] != want[i] {
			t.Fatalf("statuses = %v, want %v", statuses, want)
		}
	}
	if resp, _, err := get(t, client, p.URL+"/v2/a/manifests/x", ""); err != nil || resp.StatusCode != 200 {
		t.Errorf("a path outside the rule was not forwarded: %v", err)
	}
	if n := len(p.Injected()); n != 2 {
		t.Errorf("%d faults recorded, want 2", n)
	}
}

func TestFaultProxyResetsRequestBody(t *testing.T) {
	upstream := startEchoUpstream(t, 16)
	p := startFaultProxy(t, upstream.server.URL, FaultRule{Method: http.MethodPut, Kind: FaultResetRequest, AfterBytes: 100 << 10, Times: 1})

	body := bytes.Repeat([]byte{'x'}, 1<<20)
	put := func() (*http.Response, error) {
		req, err := http.NewRequest(http.MethodPut, p.URL+"/upload", bytes.NewReader(body))
		if err != nil {
			t.Fatal(err)
		}
		return plainClient().Do(req)
	}

	if resp, err := put(); err == nil {
		resp.Body.Close()
		t.Fatalf("upload through a reset succeeded with status %d", resp.StatusCode)
	}
	resp, err := put()
	if err != nil {
		t.Fatalf("second upload, after the fault, failed: %v", err)
	}
	reply, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if string(reply) != strconv.Itoa(len(body)) {
		t.Errorf("upstream read %s bytes of the second upload, want %d", reply, len(body))
	}

	// The upstream handler of the broken request may still be reading when the client
	// sees the reset.
	deadline := time.Now().Add(5 * time.Second)
	for {
		upstream.mu.Lock()
		received := append([]int(nil), upstream.received...)
		upstream.mu.Unlock()
		if len(received) == 2 {
			if received[0] >= len(body) {
				t.Errorf("upstream received all %d bytes of the reset upload", received[0])
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("upstream saw %d requests, want 2", len(received))
		}
		time.Sleep(20 * time.Millisecond)
	}
	if injected := p.Injected(); len(injected) != 1 || injected[0].Kind != FaultResetRequest {
		t.Errorf("injected = %+v, want one reset-request", injected)
	}
}

func TestFaultProxyResetsResponseBody(t *testing.T) {
	upstream := startEchoUpstream(t, 1<<20)
	p := startFaultProxy(t, upstream.server.URL, FaultRule{Kind: FaultResetResponse, AfterBytes: 64 << 10})

	_, body, err := get(t, plainClient(), p.URL+"/blob", "")
	if err == nil {
		t.Fatal("reading a reset response succeeded")
	}
	if !errors.Is(err, syscall.ECONNRESET) {
		t.Errorf("error %v, want a connection reset", err)
	}
	if len(body) == 0 || len(body) > 64<<10 {
		t.Errorf("client read %d bytes before the reset, want 1 to %d", len(body), 64<<10)
	}
	if !bytes.Equal(body, upstream.body[:len(body)]) {
		t.Error("bytes before the reset differ from the upstream's")
	}
}

func TestFaultProxyStalls(t *testing.T) {
	upstream := startEchoUpstream(t, 1<<16)
	p := startFaultProxy(t, upstream.server.URL,
		FaultRule{Path: "^/before$", Kind: FaultStall, Delay: 300 * time.Millisecond},
		FaultRule{Path: "^/forever$", Kind: FaultStall, AfterBytes: 1000},
	)

	started := time.Now()
	if _, body, err := get(t, plainClient(), p.URL+"/before", ""); err != nil || len(body) != len(upstream.body) {
		t.Fatalf("stalled request failed: %v (%d bytes)", err, len(body))
	}
	if elapsed := time.Since(started); elapsed < 300*time.Millisecond {
		t.Errorf("request returned after %s, before the 300ms stall ended", elapsed)
	}

	client := plainClient()
	client.Timeout = 500 * time.Millisecond
	_, body, err := get(t, client, p.URL+"/forever", "")
	if err == nil {
		t.Fatal("a response stalled forever completed")
	}
	if len(body) != 1000 {
		t.Errorf("client read %d bytes before the stall, want 1000", len(body))
	}
}

func TestFaultProxyCorruptsBody(t *testing.T) {
	upstream := startEchoUpstream(t, 1<<16)
	p := startFaultProxy(t, upstream.server.URL, FaultRule{Kind: FaultCorruptBody, AfterBytes: 40000})

	_, body, err := get(t, plainClient(), p.URL+"/blob", "")
	if err != nil {
		t.Fatal(err)
	}
	if len(body) != len(upstream.body) {
		t.Fatalf("body has %d bytes, want %d", len(body), len(upstream.body))
	}
	for i := range body {
		differs := body[i] != upstream.body[i]
		if differs != (i == 40000) {
			t.Errorf("byte %d differs: %t, want only byte 40000 changed", i, differs)
		}
	}
}

func TestFaultProxyWrongContentLength(t *testing.T) {
	upstream := startEchoUpstream(t, 4096)
	p := startFaultProxy(t, upstream.server.URL,
		FaultRule{Path: "^/short$", Kind: FaultContentLength, ContentLength: 1000},
		FaultRule{Path: "^/long$", Kind: FaultContentLength, ContentLength: 9000},
	)

	resp, body, err := get(t, plainClient(), p.URL+"/short", "")
	if err != nil {
		t.Fatal(err)
	}
	if resp.ContentLength != 1000 || len(body) != 1000 {
		t.Errorf("Content-Length %d and %d bytes, want 1000 and 1000", resp.ContentLength, len(body))
	}

	resp, body, err = get(t, plainClient(), p.URL+"/long", "")
	if !errors.Is(err, io.ErrUnexpectedEOF) {
		t.Errorf("reading a body shorter than its Content-Length: %v, want unexpected EOF", err)
	}
	if resp == nil || resp.ContentLength != 9000 || len(body) != len(upstream.body) {
		t.Errorf("got %d bytes, want all %d of the upstream's under a Content-Length of 9000", len(body), len(upstream.body))
	}
}

func TestFaultProxyThrottles(t *testing.T) {
	upstream := startEchoUpstream(t, 256<<10)
	p, err := StartFaultProxy(FaultProxyOptions{Target: upstream.server.URL, BytesPerSecond: 1 << 20})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = p.Close() })

	started := time.Now()
	if _, body, err := get(t, plainClient(), p.URL+"/blob", ""); err != nil || len(body) != 256<<10 {
		t.Fatalf("throttled download failed: %v", err)
	}
	// 256 KiB at 1 MiB/s takes 250ms, less the first buffer that goes out at once.
	if elapsed := time.Since(started); elapsed < 200*time.Millisecond {
		t.Errorf("256 KiB at 1 MiB/s took %s, want at least 200ms", elapsed)
	}
}

func TestFaultProxyTargetSwitch(t *testing.T) {
	first := startEchoUpstream(t, 16)
	second := startEchoUpstream(t, 32)
	p := startFaultProxy(t, first.server.URL)

	if err := p.SetTarget("http://192.0.2.1:80"); err == nil || !strings.Contains(err.Error(), "loopback") {
		t.Errorf("SetTarget accepted a non-loopback address: %v", err)
	}
	if err := p.SetTarget(second.server.URL); err != nil {
		t.Fatal(err)
	}
	if _, body, err := get(t, plainClient(), p.URL+"/x", ""); err != nil || len(body) != 32 {
		t.Errorf("request after the switch: %v, %d bytes, want the second upstream's 32", err, len(body))
	}

	// A target where nothing listens: the client's connection is reset.
	closed, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := closed.Addr().String()
	closed.Close()
	if err := p.SetTarget("http://" + addr); err != nil {
		t.Fatal(err)
	}
	if _, _, err := get(t, plainClient(), p.URL+"/x", ""); err == nil {
		t.Error("request to an unreachable target succeeded")
	}
}

func TestStartFaultProxyRejectsInvalidOptions(t *testing.T) {
	tests := []struct {
		name string
		opts FaultProxyOptions
		want string
	}{
		{"remote target", FaultProxyOptions{Target: "http://192.0.2.1:80"}, "loopback"},
		{"name target", FaultProxyOptions{Target: "http://localhost:80"}, "loopback"},
		{"https target", FaultProxyOptions{Target: "https://127.0.0.1:443"}, "http://IP:port"},
		{"bad path pattern", FaultProxyOptions{Target: "http://127.0.0.1:1", Rules: []FaultRule{{Kind: FaultStatus, Path: "("}}}, "path pattern"},
		{"missing kind", FaultProxyOptions{Target: "http://127.0.0.1:1", Rules: []FaultRule{{}}}, "invalid kind"},
		{"negative times", FaultProxyOptions{Target: "http://127.0.0.1:1", Rules: []FaultRule{{Kind: FaultStatus, Times: -1}}}, "negative"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p, err := StartFaultProxy(tt.opts)
			if err == nil {
				_ = p.Close()
				t.Fatal("accepted")
			}
			if !strings.Contains(err.Error(), tt.want) {
				t.Errorf("error %q lacks %q", err, tt.want)
			}
		})
	}
}

func TestFaultProxyCloseEndsStalls(t *testing.T) {
	upstream := startEchoUpstream(t, 16)
	p, err := StartFaultProxy(FaultProxyOptions{Target: upstream.server.URL, Rules: []FaultRule{{Kind: FaultStall}}})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	done := make(chan error, 1)
	go func() {
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, p.URL+"/x", nil)
		resp, err := plainClient().Do(req)
		if err == nil {
			resp.Body.Close()
		}
		done <- err
	}()
	for len(p.Injected()) == 0 {
		time.Sleep(10 * time.Millisecond)
	}

	started := time.Now()
	if err := p.Close(); err != nil {
		t.Errorf("Close: %v", err)
	}
	if elapsed := time.Since(started); elapsed > time.Second {
		t.Errorf("Close took %s with a stalled request", elapsed)
	}
	if err := <-done; err == nil {
		t.Error("the stalled request succeeded after Close")
	}
}
