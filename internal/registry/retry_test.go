package registry

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/regclient/regclient/types/errs"
	"github.com/sirupsen/logrus"
	logtest "github.com/sirupsen/logrus/hooks/test"

	"github.com/imgxfer/imgxfer/routing"
)

// scriptedInner responds to each request with the next response of its script, and records
// the bodies it received.
type scriptedInner struct {
	mu      sync.Mutex
	script  []func(req *http.Request) (*http.Response, error)
	calls   int
	bodies  []string
	respond func(req *http.Request) (*http.Response, error) // used once the script is done
}

func (s *scriptedInner) RoundTrip(req *http.Request) (*http.Response, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if req.Body != nil {
		body, _ := io.ReadAll(req.Body)
		s.bodies = append(s.bodies, string(body))
	}
	s.calls++
	if s.calls <= len(s.script) {
		return s.script[s.calls-1](req)
	}
	return s.respond(req)
}

func status(code int, header http.Header, body string) func(*http.Request) (*http.Response, error) {
	return func(req *http.Request) (*http.Response, error) {
		if header == nil {
			header = http.Header{}
		}
		return &http.Response{
			StatusCode:    code,
			Status:        http.StatusText(code),
			Header:        header.Clone(),
			Body:          io.NopCloser(strings.NewReader(body)),
			ContentLength: int64(len(body)),
			Request:       req,
		}, nil
	}
}

// fakeClock is a clock for retryTransport whose sleeps only advance it.
type fakeClock struct {
	mu     sync.Mutex
	now    time.Time
	sleeps []time.Duration
}

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *fakeClock) Sleep(_ context.Context, d time.Duration) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.sleeps = append(c.sleeps, d)
	c.now = c.now.Add(d)
	return nil
}

func (c *fakeClock) Advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now = c.now.Add(d)
}

func newTestRetryTransport(inner http.RoundTripper) (*retryTransport, *fakeClock, *logtest.Hook) {
	logger, hook := logtest.NewNullLogger()
	logger.SetLevel(logrus.DebugLevel)
	clock := &fakeClock{now: time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)}
	transport := newRetryTransport(inner, logger)
	transport.now = clock.Now
	transport.sleep = clock.Sleep
	return transport, clock, hook
}

func uploadRequest(t *testing.T, body string) *http.Request {
	t.Helper()
	req, err := http.NewRequest(http.MethodPut, "http://registry.prod.test/v2/team/app/blobs/uploads/abc?digest=sha256:1", strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	return req
}

func TestRetryTransportRetries503WithBody(t *testing.T) {
	inner := &scriptedInner{
		script: []func(*http.Request) (*http.Response, error){
			status(http.StatusServiceUnavailable, nil, "busy"),
			status(http.StatusServiceUnavailable, http.Header{"Retry-After": {"3"}}, "busy"),
		},
		respond: status(http.StatusCreated, nil, ""),
	}
	transport, clock, hook := newTestRetryTransport(inner)

	resp, err := transport.RoundTrip(uploadRequest(t, "layer bytes"))
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusCreated {
		t.Errorf("status %d, want 201 after two 503s", resp.StatusCode)
	}
	if inner.calls != 3 {
		t.Errorf("inner transport saw %d requests, want 3", inner.calls)
	}
	for i, body := range inner.bodies {
		if body != "layer bytes" {
			t.Errorf("attempt %d sent body %q, want the whole body again", i+1, body)
		}
	}
	if len(clock.sleeps) != 2 || clock.sleeps[0] != unavailableDelay || clock.sleeps[1] != 3*time.Second {
		t.Errorf("waits %v, want %s then the Retry-After of 3s", clock.sleeps, unavailableDelay)
	}
	warnings := 0
	for _, entry := range hook.AllEntries() {
		if entry.Level == logrus.WarnLevel {
			warnings++
			if entry.Data["host"] != "registry.prod.test" || entry.Data["step"] != "blob upload" || entry.Data["problem"] != "Service Unavailable" {
				t.Errorf("warning fields %v, want host, step and problem", entry.Data)
			}
		}
	}
	if warnings != 2 {
		t.Errorf("%d warnings, want one per 503", warnings)
	}
	if hook.LastEntry().Message != "registry request succeeded after failures" {
		t.Errorf("last log line %q, want the recovery", hook.LastEntry().Message)
	}
}

func TestRetryTransportGivesUp503(t *testing.T) {
	inner := &scriptedInner{respond: status(http.StatusServiceUnavailable, nil, "down")}
	transport, clock, _ := newTestRetryTransport(inner)

	resp, err := transport.RoundTrip(uploadRequest(t, "x"))
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusServiceUnavailable {
		t.Errorf("status %d, want the last 503", resp.StatusCode)
	}
	if inner.calls != 1+unavailableRetries {
		t.Errorf("inner transport saw %d requests, want %d", inner.calls, 1+unavailableRetries)
	}
	var total time.Duration
	for _, d := range clock.sleeps {
		if d > maxRetryDelay {
			t.Errorf("waited %s, more than %s", d, maxRetryDelay)
		}
		total += d
	}
	if total > 10*time.Second {
		t.Errorf("waited %s in total for one request", total)
	}
}

func TestRetryTransportKeepsUnreplayable503(t *testing.T) {
	inner := &scriptedInner{respond: status(http.StatusServiceUnavailable, nil, "")}
	transport, _, _ := newTestRetryTransport(inner)
	req := uploadRequest(t, "once")
	req.GetBody = nil

	resp, err := transport.RoundTrip(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if inner.calls != 1 {
		t.Errorf("a body without GetBody was sent %d times", inner.calls)
	}
}

func TestRetryTransportStopsFailingStep(t *testing.T) {
	inner := &scriptedInner{respond: func(*http.Request) (*http.Response, error) {
		return nil, errors.New("connection reset by peer")
	}}
	transport, clock, _ := newTestRetryTransport(inner)

	for i := range failureStreakMin {
		if _, err := transport.RoundTrip(uploadRequest(t, "x")); err == nil || errors.Is(err, ErrRetriesExhausted) {
			t.Fatalf("attempt %d: %v, want the inner error", i+1, err)
		}
		clock.Advance(failureStreakWindow / (failureStreakMin - 1))
	}
	calls := inner.calls

	_, err := transport.RoundTrip(uploadRequest(t, "x"))
	if !errors.Is(err, ErrRetriesExhausted) || !errors.Is(err, errs.ErrNotRetryable) {
		t.Fatalf("error %v, want ErrRetriesExhausted that regclient does not retry", err)
	}
	for _, want := range []string{"blob upload", "registry.prod.test", "5 times", "connection reset by peer"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q lacks %q", err, want)
		}
	}
	if inner.calls != calls {
		t.Error("a request of the stopped step reached the network")
	}

	// Other steps and hosts go on.
	head, _ := http.NewRequest(http.MethodHead, "http://registry.prod.test/v2/team/app/blobs/sha256:1", nil)
	if _, err := transport.RoundTrip(head); errors.Is(err, ErrRetriesExhausted) {
		t.Error("a blob check was stopped with the blob uploads")
	}

	// Once the window has passed since the last failure, one request is tried again.
	clock.Advance(failureStreakWindow)
	inner.respond = status(http.StatusCreated, nil, "")
	resp, err := transport.RoundTrip(uploadRequest(t, "x"))
	if err != nil {
		t.Fatalf("request after the window: %v", err)
	}
	resp.Body.Close()
	if _, err := transport.RoundTrip(uploadRequest(t, "x")); err != nil {
		t.Errorf("request after the step recovered: %v", err)
	}
}

func TestRetryTransportBriefOutageDoesNotStop(t *testing.T) {
	inner := &scriptedInner{respond: status(http.StatusBadGateway, nil, "")}
	transport, clock, _ := newTestRetryTransport(inner)

	// Many failures within a short time, as when a proxy restarts under parallel copies.
	for range 3 * failureStreakMin {
		resp, err := transport.RoundTrip(uploadRequest(t, "x"))
		if err != nil {
			t.Fatalf("a failure within the window was stopped: %v", err)
		}
		resp.Body.Close()
		clock.Advance(100 * time.Millisecond)
	}
}

func TestRetryTransportBodyEndsStreak(t *testing.T) {
	cut := func(req *http.Request) (*http.Response, error) {
		return &http.Response{
			StatusCode:    http.StatusOK,
			Header:        http.Header{},
			Body:          io.NopCloser(io.MultiReader(strings.NewReader("part"), errReader{io.ErrUnexpectedEOF})),
			ContentLength: 100,
			Request:       req,
		}, nil
	}
	inner := &scriptedInner{respond: cut}
	transport, clock, _ := newTestRetryTransport(inner)
	get := func() error {
		req, _ := http.NewRequest(http.MethodGet, "http://src.test/v2/a/blobs/sha256:1", nil)
		resp, err := transport.RoundTrip(req)
		if err != nil {
			return err
		}
		defer resp.Body.Close()
		_, err = io.ReadAll(resp.Body)
		return err
	}

	for range failureStreakMin {
		if err := get(); !errors.Is(err, io.ErrUnexpectedEOF) {
			t.Fatalf("reading a cut body: %v, want io.ErrUnexpectedEOF unchanged", err)
		}
		clock.Advance(2 * time.Second)
	}
	if err := get(); !errors.Is(err, ErrRetriesExhausted) {
		t.Fatalf("after %d cut bodies: %v, want the step stopped", failureStreakMin, err)
	}

	clock.Advance(failureStreakWindow)
	inner.respond = status(http.StatusOK, nil, "whole")
	if err := get(); err != nil {
		t.Fatal(err)
	}
	transport.mu.Lock()
	defer transport.mu.Unlock()
	if len(transport.streaks) != 0 {
		t.Errorf("a body read to the end left streaks %v", transport.streaks)
	}
}

type errReader struct{ err error }

func (r errReader) Read([]byte) (int, error) { return 0, r.err }

func TestRetryTransportIgnoresProxyRejection(t *testing.T) {
	inner := &scriptedInner{respond: status(http.StatusForbidden, http.Header{routing.ProxyErrorHeader: {"host not on the allowlist"}}, "")}
	transport, _, hook := newTestRetryTransport(inner)
	resp, err := transport.RoundTrip(uploadRequest(t, "x"))
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if inner.calls != 1 || len(hook.AllEntries()) != 0 {
		t.Errorf("a proxy rejection was retried or logged: %d calls, %d log lines", inner.calls, len(hook.AllEntries()))
	}
}

func TestRetryTransportCapsRetryAfter(t *testing.T) {
	transport, clock, _ := newTestRetryTransport(nil)
	tests := []struct {
		value, want string
	}{
		{"5", "5"},
		{"3600", "60"},
		{clock.Now().Add(10 * time.Second).Format(http.TimeFormat), "10"},
		{clock.Now().Add(-time.Minute).Format(http.TimeFormat), "0"},
		{"soon", "0"},
	}
	for _, tt := range tests {
		inner := &scriptedInner{respond: status(http.StatusTooManyRequests, http.Header{"Retry-After": {tt.value}}, "")}
		transport.inner = inner
		resp, err := transport.RoundTrip(uploadRequest(t, "x"))
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if got := resp.Header.Get("Retry-After"); got != tt.want {
			t.Errorf("Retry-After %q became %q, want %q", tt.value, got, tt.want)
		}
		if inner.calls != 1 {
			t.Errorf("a 429 was retried here %d times; regclient retries it", inner.calls-1)
		}
	}
}

func TestStepOf(t *testing.T) {
	tests := []struct {
		method, url, want string
	}{
		{"GET", "https://r.test/v2/", "API version check"},
		{"GET", "https://auth.test/token?service=r.test&scope=repository:a:pull", "token request"},
		{"HEAD", "https://r.test/v2/a/b/manifests/1", "manifest read"},
		{"GET", "https://r.test/v2/a/manifests/sha256:1", "manifest read"},
		{"PUT", "https://r.test/v2/a/manifests/1", "manifest push"},
		{"HEAD", "https://r.test/v2/a/blobs/sha256:1", "blob check"},
		{"GET", "https://r.test/v2/a/blobs/sha256:1", "blob download"},
		{"POST", "https://r.test/v2/a/blobs/uploads/", "blob upload start"},
		{"PUT", "https://r.test/v2/a/blobs/uploads/u1?digest=sha256:1", "blob upload"},
		{"PATCH", "https://r.test/v2/a/blobs/uploads/u1", "blob upload"},
		{"GET", "https://r.test/v2/a/blobs/uploads/u1", "blob upload status"},
		{"GET", "https://r.test/v2/a/tags/list", "tag list"},
		{"GET", "https://storage.test/docker/registry/v2/blobs/sha256/aa/data", "get request"},
	}
	for _, tt := range tests {
		req, err := http.NewRequest(tt.method, tt.url, bytes.NewReader(nil))
		if err != nil {
			t.Fatal(err)
		}
		if got := stepOf(req); got != tt.want {
			t.Errorf("stepOf(%s %s) = %q, want %q", tt.method, tt.url, got, tt.want)
		}
	}
}
