package routing

import (
	"bytes"
	"errors"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"testing"
	"time"
)

// stallingServer responds to /slow after delay, and sends half of /gap's body, waits gap,
// then sends the rest.
func stallingServer(t *testing.T, delay, gap time.Duration) *httptest.Server {
	t.Helper()
	server := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/slow":
			sleepOrCancel(r, delay)
			_, _ = io.WriteString(w, "late")
		case "/gap":
			w.Header().Set("Content-Length", "8")
			_, _ = io.WriteString(w, "half")
			w.(http.Flusher).Flush()
			sleepOrCancel(r, gap)
			_, _ = io.WriteString(w, "rest")
		}
	}))
	t.Cleanup(server.Close)
	return server
}

// sleepOrCancel waits for d or until the client goes away.
func sleepOrCancel(r *http.Request, d time.Duration) {
	select {
	case <-time.After(d):
	case <-r.Context().Done():
	}
}

func idleTransport(t *testing.T, server *httptest.Server, timeout time.Duration) *Transport {
	t.Helper()
	rules := rulesFor(t, "registries:\n  - host: \""+strings.TrimPrefix(server.URL, "http://")+"\"\n    tls: disabled\n")
	transport, err := NewTransport(rules, WithIdleTimeout(timeout))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(transport.CloseIdleConnections)
	return transport
}

func TestIdleTimeoutFailsStalledResponse(t *testing.T) {
	server := stallingServer(t, 2*time.Second, 0)
	transport := idleTransport(t, server, 200*time.Millisecond)

	req, _ := http.NewRequest(http.MethodGet, server.URL+"/slow", nil)
	started := time.Now()
	resp, err := transport.RoundTrip(req)
	if err == nil {
		resp.Body.Close()
		t.Fatal("a response that stalled for 2s arrived through a 200ms idle timeout")
	}
	if elapsed := time.Since(started); elapsed > time.Second {
		t.Errorf("failed after %s, want about 200ms", elapsed)
	}
	var idle *IdleTimeoutError
	if !errors.As(err, &idle) {
		t.Fatalf("error %v is not an IdleTimeoutError", err)
	}
	var netErr net.Error
	if !errors.As(err, &netErr) || !netErr.Timeout() {
		t.Errorf("error %v is not a net.Error timeout", err)
	}
	if !strings.Contains(err.Error(), EnvIdleTimeout) || !strings.Contains(err.Error(), "200ms") {
		t.Errorf("error %q should give the timeout and the variable that raises it", err)
	}
}

func TestIdleTimeoutFailsStalledBody(t *testing.T) {
	server := stallingServer(t, 0, 2*time.Second)
	transport := idleTransport(t, server, 200*time.Millisecond)

	req, _ := http.NewRequest(http.MethodGet, server.URL+"/gap", nil)
	resp, err := transport.RoundTrip(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err == nil {
		t.Fatalf("read the whole body %q across a 2s gap", body)
	}
	if string(body) != "half" {
		t.Errorf("read %q before the gap, want %q", body, "half")
	}
	var idle *IdleTimeoutError
	if !errors.As(err, &idle) {
		t.Errorf("error %v is not an IdleTimeoutError", err)
	}
}

func TestIdleTimeoutAllowsSlowButSteadyPeer(t *testing.T) {
	server := stallingServer(t, 100*time.Millisecond, 100*time.Millisecond)
	transport := idleTransport(t, server, 500*time.Millisecond)

	for _, path := range []string{"/slow", "/gap"} {
		req, _ := http.NewRequest(http.MethodGet, server.URL+path, nil)
		resp, err := transport.RoundTrip(req)
		if err != nil {
			t.Fatalf("%s: %v", path, err)
		}
		body, err := io.ReadAll(resp.Body)
		resp.Body.Close()
		if err != nil {
			t.Errorf("%s: reading the body: %v", path, err)
		}
		if len(body) == 0 {
			t.Errorf("%s: empty body", path)
		}
	}

	// A pooled connection that outlives the idle timeout is replaced, not reported.
	time.Sleep(700 * time.Millisecond)
	req, _ := http.NewRequest(http.MethodGet, server.URL+"/slow", nil)
	resp, err := transport.RoundTrip(req)
	if err != nil {
		t.Fatalf("request after the pooled connection timed out: %v", err)
	}
	resp.Body.Close()
}

// recordingConn is a connection that accepts every write and records its size.
type recordingConn struct {
	net.Conn
	writes []int
}

func (c *recordingConn) Write(p []byte) (int, error) {
	c.writes = append(c.writes, len(p))
	return len(p), nil
}

func (c *recordingConn) SetDeadline(time.Time) error { return nil }

func TestIdleTimeoutConnReadFromWritesLargeChunks(t *testing.T) {
	recorder := &recordingConn{}
	conn := newIdleTimeoutConn(recorder, time.Minute)
	body := bytes.Repeat([]byte("x"), 4*bodyCopyBufferSize+1)

	// The struct hides bytes.Reader's WriteTo, as a registry client's blob reader has none.
	n, err := conn.(io.ReaderFrom).ReadFrom(struct{ io.Reader }{bytes.NewReader(body)})
	if err != nil {
		t.Fatal(err)
	}
	if n != int64(len(body)) {
		t.Errorf("ReadFrom sent %d bytes, want %d", n, len(body))
	}
	want := []int{bodyCopyBufferSize, bodyCopyBufferSize, bodyCopyBufferSize, bodyCopyBufferSize, 1}
	if !slices.Equal(recorder.writes, want) {
		t.Errorf("writes of %v bytes, want %v", recorder.writes, want)
	}
}
