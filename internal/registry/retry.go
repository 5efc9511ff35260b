package registry

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/regclient/regclient/types/errs"
	"github.com/sirupsen/logrus"

	"github.com/imgxfer/imgxfer/routing"
)

// ErrRetriesExhausted marks a request that was not sent because earlier requests of the
// same step to the same host kept failing.
var ErrRetriesExhausted = errors.New("retries exhausted")

// Retry settings. regclient v0.11.7 retries transport errors and the statuses 408, 429,
// 500, 502 and 504 itself, with a backoff per host and its own limits, and honours a
// Retry-After in seconds. retryTransport adds what it lacks: retries of 503, a cap on
// Retry-After, a bound on how long one step may keep failing, and log lines.
const (
	// unavailableRetries is how many times one request is sent again after a 503.
	unavailableRetries = 3
	// unavailableDelay is the wait before the first of those retries. It doubles on each
	// retry, up to maxRetryDelay.
	unavailableDelay = 500 * time.Millisecond
	maxRetryDelay    = 4 * time.Second
	// maxRetryAfter caps the Retry-After of a 429 or 503, so that a registry cannot make
	// a copy wait for hours.
	maxRetryAfter = time.Minute
	// failureStreakMin and failureStreakWindow bound a streak of failures of one step on
	// one host. Once at least failureStreakMin requests in a row have failed and the
	// first of them is failureStreakWindow old, the step fails at once, without a
	// request, until failureStreakWindow has passed since the last failure. A brief
	// outage, such as a proxy restart, fails many requests at once but not for that
	// long, so the retries that follow it still run.
	failureStreakMin    = 5
	failureStreakWindow = 5 * time.Second
	// loggedFailures is how many failures of one streak are logged at warning level.
	// The rest are logged at debug level.
	loggedFailures = 3
)

// retryTransport wraps the routing transport. It retries 503 responses, caps Retry-After,
// stops a step that keeps failing, and logs failures.
type retryTransport struct {
	inner http.RoundTripper
	log   logrus.FieldLogger

	// now and sleep are replaced by tests.
	now   func() time.Time
	sleep func(ctx context.Context, d time.Duration) error

	mu      sync.Mutex
	streaks map[stepKey]*failureStreak
}

// stepKey names one kind of request to one host, such as blob uploads to
// registry.prod.test.
type stepKey struct {
	host string
	step string
}

// failureStreak is the run of failures of one step since its last success.
type failureStreak struct {
	failures int
	first    time.Time
	last     time.Time
	problem  string // the last failure, for the error that stops the step
}

func newRetryTransport(inner http.RoundTripper, log logrus.FieldLogger) *retryTransport {
	return &retryTransport{
		inner:   inner,
		log:     log,
		now:     time.Now,
		sleep:   sleepContext,
		streaks: map[stepKey]*failureStreak{},
	}
}

func sleepContext(ctx context.Context, d time.Duration) error {
	timer := time.NewTimer(d)
	defer timer.Stop()
	select {
	case <-timer.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// RoundTrip sends req through the inner transport, retrying a 503 while the request body
// can be sent again.
func (t *retryTransport) RoundTrip(req *http.Request) (*http.Response, error) {
	key := stepKey{host: strings.ToLower(req.URL.Host), step: stepOf(req)}
	if err := t.checkStreak(key, req); err != nil {
		if req.Body != nil {
			_ = req.Body.Close()
		}
		return nil, err
	}

	attempt := req
	for retry := 0; ; retry++ {
		resp, err := t.inner.RoundTrip(attempt)
		problem := failureOf(resp, err, req.Context())
		if problem == "" {
			if err == nil {
				t.watchBody(key, req, resp)
			}
			return resp, err
		}
		t.recordFailure(key, req, problem)

		if resp == nil || resp.StatusCode != http.StatusServiceUnavailable || retry >= unavailableRetries {
			if resp != nil {
				capRetryAfter(resp, t.now(), t.log)
			}
			return resp, err
		}
		next, ok := replay(req)
		if !ok {
			return resp, err
		}
		delay := retryAfter(resp, t.now())
		if delay <= 0 {
			delay = min(unavailableDelay<<retry, maxRetryDelay)
		}
		drainAndClose(resp)
		if err := t.sleep(req.Context(), delay); err != nil {
			return nil, err
		}
		if err := t.checkStreak(key, req); err != nil {
			return nil, err
		}
		attempt = next
	}
}

// checkStreak returns an error wrapping ErrRetriesExhausted when key's step has failed
// for too long to be tried again yet. The error also wraps regclient's ErrNotRetryable,
// so that regclient stops retrying the request.
func (t *retryTransport) checkStreak(key stepKey, req *http.Request) error {
	t.mu.Lock()
	defer t.mu.Unlock()
	streak := t.streaks[key]
	if streak == nil || streak.failures < failureStreakMin {
		return nil
	}
	now := t.now()
	if streak.last.Sub(streak.first) < failureStreakWindow || now.Sub(streak.last) >= failureStreakWindow {
		return nil
	}
	return fmt.Errorf("%w: %s to %s failed %d times in a row over %s, last with %s; giving up on this step for %s%.0w",
		ErrRetriesExhausted, key.step, key.host, streak.failures, streak.last.Sub(streak.first).Round(100*time.Millisecond),
		streak.problem, failureStreakWindow, errs.ErrNotRetryable)
}

// recordFailure adds a failure to key's streak and logs it.
func (t *retryTransport) recordFailure(key stepKey, req *http.Request, problem string) {
	t.mu.Lock()
	streak := t.streaks[key]
	if streak == nil {
		streak = &failureStreak{}
		t.streaks[key] = streak
	}
	now := t.now()
	if streak.failures == 0 {
		streak.first = now
	}
	streak.failures++
	streak.last = now
	streak.problem = problem
	failures := streak.failures
	t.mu.Unlock()

	entry := t.log.WithFields(logrus.Fields{
		"host":     key.host,
		"step":     key.step,
		"method":   req.Method,
		"problem":  problem,
		"failures": failures,
	})
	switch {
	case failures <= loggedFailures:
		entry.Warn("registry request failed; retrying")
	case failures == loggedFailures+1:
		entry.Warn("registry request failed again; further failures of this step are logged at debug level")
	default:
		entry.Debug("registry request failed; retrying")
	}
}

// recordSuccess ends key's streak.
func (t *retryTransport) recordSuccess(key stepKey) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if streak := t.streaks[key]; streak != nil && streak.failures > 0 {
		t.log.WithFields(logrus.Fields{"host": key.host, "step": key.step, "failures": streak.failures}).
			Info("registry request succeeded after failures")
		delete(t.streaks, key)
	}
}

// watchBody counts the response as a success once its body has been read to the end, or
// at once when it has none, and counts a body that breaks off as a failure.
func (t *retryTransport) watchBody(key stepKey, req *http.Request, resp *http.Response) {
	if req.Method == http.MethodHead || resp.ContentLength == 0 || resp.Body == nil || resp.Body == http.NoBody {
		t.recordSuccess(key)
		return
	}
	resp.Body = &watchedBody{ReadCloser: resp.Body, transport: t, key: key, req: req}
}

// watchedBody reports the end of a response body to its retryTransport. Errors pass
// through unchanged, because regclient compares them with io.EOF and
// io.ErrUnexpectedEOF to decide whether to resume a download.
type watchedBody struct {
	io.ReadCloser
	transport *retryTransport
	key       stepKey
	req       *http.Request
	read      int64
	done      bool
}

func (b *watchedBody) Read(p []byte) (int, error) {
	n, err := b.ReadCloser.Read(p)
	b.read += int64(n)
	if err != nil && !b.done {
		b.done = true
		switch {
		case errors.Is(err, io.EOF):
			b.transport.recordSuccess(b.key)
		case b.req.Context().Err() == nil:
			b.transport.recordFailure(b.key, b.req, fmt.Sprintf("response body broke off after %d bytes: %v", b.read, err))
		}
	}
	return n, err
}

// failureOf describes a transient failure: a transport error or a status that is worth
// retrying. It returns "" for success, for a definite response such as 404, for a proxy's
// rejection, which routing reports itself, and when ctx has ended.
//
// NOTE: a 2xx response that regclient rejects after it arrived, such as a blob whose
// Content-Length differs from its descriptor, counts as neither success nor failure, so
// only regclient's own retry limit ends those retries.
func failureOf(resp *http.Response, err error, ctx context.Context) string {
	if ctx.Err() != nil {
		return ""
	}
	if err != nil {
		return err.Error()
	}
	if resp.Header.Get(routing.ProxyErrorHeader) != "" {
		return ""
	}
	switch resp.StatusCode {
	case http.StatusRequestTimeout, http.StatusTooManyRequests, http.StatusInternalServerError,
		http.StatusBadGateway, http.StatusServiceUnavailable, http.StatusGatewayTimeout:
		return resp.Status
	}
	return ""
}

// replay returns a copy of req with a fresh body, or false when the body cannot be sent
// again.
func replay(req *http.Request) (*http.Request, bool) {
	next := req.Clone(req.Context())
	if req.Body == nil || req.Body == http.NoBody {
		return next, true
	}
	if req.GetBody == nil {
		return nil, false
	}
	body, err := req.GetBody()
	if err != nil {
		return nil, false
	}
	next.Body = body
	return next, true
}

// retryAfter returns the wait that resp's Retry-After requests, in seconds or as an HTTP
// date, capped at maxRetryAfter, or 0 when it has none.
func retryAfter(resp *http.Response, now time.Time) time.Duration {
	value := strings.TrimSpace(resp.Header.Get("Retry-After"))
	if value == "" {
		return 0
	}
	var wait time.Duration
	if seconds, err := strconv.Atoi(value); err == nil {
		wait = time.Duration(seconds) * time.Second
	} else if date, err := http.ParseTime(value); err == nil {
		wait = date.Sub(now)
	}
	return max(0, min(wait, maxRetryAfter))
}

// capRetryAfter rewrites a Retry-After that regclient would misread or wait too long for.
// regclient v0.11.7 reads only whole seconds and waits as long as the header requests, so an HTTP
// date becomes seconds and a long wait becomes maxRetryAfter.
func capRetryAfter(resp *http.Response, now time.Time, log logrus.FieldLogger) {
	value := strings.TrimSpace(resp.Header.Get("Retry-After"))
	if value == "" {
		return
	}
	wait := retryAfter(resp, now)
	seconds := strconv.Itoa(int((wait + time.Second - 1) / time.Second))
	if seconds == value {
		return
	}
	log.WithFields(logrus.Fields{"host": resp.Request.URL.Host, "retryAfter": value, "wait": seconds + "s"}).
		Debug("rewriting Retry-After to whole seconds of at most a minute")
	resp.Header.Set("Retry-After", seconds)
}

func drainAndClose(resp *http.Response) {
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10))
	_ = resp.Body.Close()
}

// stepOf names the registry API step that req belongs to, for logs, errors and the
// failure streaks.
func stepOf(req *http.Request) string {
	path := req.URL.Path
	method := req.Method
	switch {
	case path == "/v2/" || path == "/v2":
		return "API version check"
	case !strings.HasPrefix(path, "/v2/"):
		if req.URL.Query().Has("service") || req.URL.Query().Has("scope") {
			return "token request"
		}
		return strings.ToLower(method) + " request"
	case strings.Contains(path, "/blobs/uploads/") || strings.HasSuffix(path, "/blobs/uploads"):
		switch method {
		case http.MethodPost:
			return "blob upload start"
		case http.MethodGet:
			return "blob upload status"
		case http.MethodDelete:
			return "blob upload cancel"
		}
		return "blob upload"
	case strings.Contains(path, "/blobs/"):
		switch method {
		case http.MethodHead:
			return "blob check"
		case http.MethodDelete:
			return "blob delete"
		}
		return "blob download"
	case strings.Contains(path, "/manifests/"):
		switch method {
		case http.MethodPut:
			return "manifest push"
		case http.MethodDelete:
			return "manifest delete"
		}
		return "manifest read"
	case strings.HasSuffix(path, "/tags/list"):
		return "tag list"
	case strings.Contains(path, "/referrers/"):
		return "referrers read"
	}
	return strings.ToLower(method) + " request"
}
