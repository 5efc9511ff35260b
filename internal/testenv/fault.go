package testenv

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"regexp"
	"strconv"
	"sync"
	"time"
)

// FaultKind is the kind of fault that a FaultRule injects.
type FaultKind int

const (
	// FaultStatus responds with Status, Header and Body without forwarding the request.
	FaultStatus FaultKind = iota + 1

	// FaultResetRequest forwards the request and, once AfterBytes of its body have
	// passed, aborts the upstream request and resets the client's TCP connection. A body
	// of AfterBytes or fewer passes unharmed, and nothing is injected.
	FaultResetRequest

	// FaultResetResponse forwards the request, passes the response header and AfterBytes
	// of the response body, then resets the client's TCP connection.
	FaultResetResponse

	// FaultStall holds the request for Delay before forwarding it or, when AfterBytes is
	// set, holds the response for Delay after AfterBytes of its body. A zero Delay holds
	// it until the client disconnects or the proxy closes.
	FaultStall

	// FaultCorruptBody forwards the request and inverts the bits of the response body's
	// byte at offset AfterBytes, so the body no longer matches its digest.
	FaultCorruptBody

	// FaultContentLength forwards the request and replaces the response's Content-Length
	// with ContentLength. A smaller value cuts the body to that length. A larger one sends
	// the whole body and closes the connection, as a server whose body ends early does.
	FaultContentLength
)

// String returns the kind's name, as used in test output and in reliability figures.
func (k FaultKind) String() string {
	switch k {
	case FaultStatus:
		return "status"
	case FaultResetRequest:
		return "reset-request"
	case FaultResetResponse:
		return "reset-response"
	case FaultStall:
		return "stall"
	case FaultCorruptBody:
		return "corrupt-body"
	case FaultContentLength:
		return "content-length"
	}
	return "kind" + strconv.Itoa(int(k))
}

// FaultRule selects requests by method, path and occurrence and applies one fault to them.
type FaultRule struct {
	// Method matches the request method exactly. Empty matches every method.
	Method string

	// Path is a regular expression matched against the URL path, such as
	// `/blobs/uploads/`. Empty matches every path.
	Path string

	// From is the first matching request, counted from 1, that gets the fault. Zero
	// means 1.
	From int

	// Times is how many faults the rule injects, into matching requests from the
	// From-th on. A request whose body ends before AfterBytes gets no fault and does not
	// count. Zero means every matching request from From on: a persistent fault.
	Times int

	Kind FaultKind

	// Status, Header and Body make up the response of FaultStatus. Header may set
	// Retry-After, Location or Content-Length. Status zero means 503.
	Status int
	Header http.Header
	Body   []byte

	// AfterBytes is the body offset at which a reset, stall or corruption happens.
	AfterBytes int64

	// Delay is how long FaultStall holds the request or response.
	Delay time.Duration

	// ContentLength is the value that FaultContentLength announces.
	ContentLength int64
}

// InjectedFault records one fault that the proxy applied.
type InjectedFault struct {
	Rule   int // index into the rules the proxy had when it applied the fault
	Kind   FaultKind
	Method string
	Path   string
}

// FaultRequest records one request that reached the proxy.
type FaultRequest struct {
	Method string
	Path   string
	// Header is a copy of the request header as the proxy received it.
	Header http.Header
}

// FaultProxyOptions configures StartFaultProxy.
type FaultProxyOptions struct {
	// Target is the base URL that requests are forwarded to, such as
	// http://127.0.0.1:5000 or the HTTP listener of a testenv nginx. Its host must be
	// a loopback IP address. Only plain HTTP is supported.
	Target string

	// Rules script the faults. SetRules replaces them later.
	Rules []FaultRule

	// BytesPerSecond, when positive, limits the request and response bodies of all
	// connections together to this rate, to make a copy slow enough to interrupt.
	BytesPerSecond int64
}

// FaultProxy is an HTTP/1.1 forwarding hop on 127.0.0.1 that a test places between two
// parties, such as imgxfer and nginx or nginx and a registry, to inject network and
// server faults by script. Requests are forwarded unchanged, Host header included, to
// the target; hop-by-hop headers are dropped. A request whose target cannot be reached
// gets its connection reset, as a client connecting through a dead path would see.
type FaultProxy struct {
	// Addr is the listener address, 127.0.0.1:port.
	Addr string
	// URL is "http://" followed by Addr.
	URL string

	server   *http.Server
	upstream *http.Transport
	limiter  *byteRate
	closing  chan struct{}
	handlers sync.WaitGroup

	closeOnce sync.Once
	closeErr  error

	mu       sync.Mutex
	target   *url.URL
	rules    []*faultRuleState
	injected []InjectedFault
	requests []FaultRequest
}

type faultRuleState struct {
	FaultRule
	index    int
	path     *regexp.Regexp
	seen     int // matching requests so far
	injected int // faults injected so far
}

// faultProxyShutdownTimeout bounds how long Close waits for handlers, such as one
// holding a stalled request, to return after their connections are closed.
const faultProxyShutdownTimeout = 5 * time.Second

// faultCopyBuffer is the size of each read and write when the proxy copies a body.
const faultCopyBuffer = 32 << 10

// errInjectedReset ends a forwarded request body where a FaultResetRequest applies.
var errInjectedReset = errors.New("fault proxy: injected connection reset")

// StartFaultProxy starts a fault proxy on a new 127.0.0.1 listener. The caller must
// call Close.
func StartFaultProxy(opts FaultProxyOptions) (*FaultProxy, error) {
	target, err := parseLoopbackTarget(opts.Target)
	if err != nil {
		return nil, fmt.Errorf("start fault proxy: %w", err)
	}
	rules, err := compileFaultRules(opts.Rules)
	if err != nil {
		return nil, fmt.Errorf("start fault proxy: %w", err)
	}
	listener, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, fmt.Errorf("start fault proxy: listen on 127.0.0.1: %w", err)
	}

	p := &FaultProxy{
		Addr:    listener.Addr().String(),
		closing: make(chan struct{}),
		target:  target,
		rules:   rules,
		upstream: &http.Transport{
			Proxy:               nil,
			DialContext:         (&net.Dialer{Timeout: 5 * time.Second}).DialContext,
			DisableCompression:  true,
			MaxIdleConnsPerHost: 32,
			IdleConnTimeout:     30 * time.Second,
		},
	}
	p.URL = "http://" + p.Addr
	if opts.BytesPerSecond > 0 {
		p.limiter = &byteRate{perSecond: opts.BytesPerSecond}
	}
	// The listener speaks plain HTTP/1.1 only, so a reset reaches the client as a TCP
	// reset of the connection that carried the request.
	p.server = &http.Server{Handler: p, ReadHeaderTimeout: 30 * time.Second}
	go func() { _ = p.server.Serve(listener) }()
	return p, nil
}

// parseLoopbackTarget accepts http://IP:port with a loopback IP and nothing else.
func parseLoopbackTarget(raw string) (*url.URL, error) {
	u, err := url.Parse(raw)
	if err != nil {
		return nil, fmt.Errorf("invalid target URL %q: %w", raw, err)
	}
	if u.Scheme != "http" || u.Port() == "" || u.User != nil || (u.Path != "" && u.Path != "/") || u.RawQuery != "" {
		return nil, fmt.Errorf("invalid target URL %q: expected http://IP:port with nothing else", raw)
	}
	ip := net.ParseIP(u.Hostname())
	if ip == nil || !ip.IsLoopback() {
		return nil, fmt.Errorf("invalid target URL %q: the host must be a loopback IP address, because the fault proxy contacts only loopback addresses", raw)
	}
	return &url.URL{Scheme: u.Scheme, Host: u.Host}, nil
}

func compileFaultRules(rules []FaultRule) ([]*faultRuleState, error) {
	states := make([]*faultRuleState, 0, len(rules))
	for i, rule := range rules {
		if rule.Kind < FaultStatus || rule.Kind > FaultContentLength {
			return nil, fmt.Errorf("fault rule %d: invalid kind %d", i, rule.Kind)
		}
		if rule.From < 0 || rule.Times < 0 || rule.AfterBytes < 0 || rule.Delay < 0 || rule.ContentLength < 0 {
			return nil, fmt.Errorf("fault rule %d: From, Times, AfterBytes, Delay and ContentLength must not be negative", i)
		}
		path, err := regexp.Compile(rule.Path)
		if err != nil {
			return nil, fmt.Errorf("fault rule %d: invalid path pattern %q: %w", i, rule.Path, err)
		}
		if rule.From == 0 {
			rule.From = 1
		}
		if rule.Kind == FaultStatus && rule.Status == 0 {
			rule.Status = http.StatusServiceUnavailable
		}
		states = append(states, &faultRuleState{FaultRule: rule, index: i, path: path})
	}
	return states, nil
}

// SetRules replaces the fault script and restarts the occurrence counts. The record of
// injected faults is kept.
func (p *FaultProxy) SetRules(rules ...FaultRule) error {
	states, err := compileFaultRules(rules)
	if err != nil {
		return err
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	p.rules = states
	return nil
}

// SetTarget makes later requests go to target, such as an nginx started anew on other
// ports. Requests in progress keep their connections.
func (p *FaultProxy) SetTarget(target string) error {
	u, err := parseLoopbackTarget(target)
	if err != nil {
		return err
	}
	p.mu.Lock()
	p.target = u
	p.mu.Unlock()
	p.upstream.CloseIdleConnections()
	return nil
}

// Injected returns the faults applied so far, in the order they happened.
func (p *FaultProxy) Injected() []InjectedFault {
	p.mu.Lock()
	defer p.mu.Unlock()
	return append([]InjectedFault(nil), p.injected...)
}

// Requests returns the requests received so far, in the order they arrived.
func (p *FaultProxy) Requests() []FaultRequest {
	p.mu.Lock()
	defer p.mu.Unlock()
	return append([]FaultRequest(nil), p.requests...)
}

// Close stops the listener, closes every connection, ends stalls and waits up to five
// seconds for the handlers to return. Later calls return the first call's result.
func (p *FaultProxy) Close() error {
	p.closeOnce.Do(func() {
		close(p.closing)
		p.closeErr = p.server.Close()
		p.upstream.CloseIdleConnections()

		done := make(chan struct{})
		go func() {
			p.handlers.Wait()
			close(done)
		}()
		select {
		case <-done:
		case <-time.After(faultProxyShutdownTimeout):
			p.closeErr = errors.Join(p.closeErr, fmt.Errorf("fault proxy %s: handlers still running after %s", p.Addr, faultProxyShutdownTimeout))
		}
	})
	return p.closeErr
}

// match records the request and returns the rule that may apply to it, or nil. Every
// rule whose method and path match counts the request; the first that has reached From
// and has faults left to inject applies. tryInject decides when the fault happens.
func (p *FaultProxy) match(r *http.Request) *faultRuleState {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.requests = append(p.requests, FaultRequest{Method: r.Method, Path: r.URL.Path, Header: r.Header.Clone()})

	var applied *faultRuleState
	for _, rule := range p.rules {
		if rule.Method != "" && rule.Method != r.Method {
			continue
		}
		if !rule.path.MatchString(r.URL.Path) {
			continue
		}
		rule.seen++
		armed := rule.seen >= rule.From && (rule.Times == 0 || rule.injected < rule.Times)
		if applied == nil && armed {
			applied = rule
		}
	}
	return applied
}

// tryInject counts and records one fault of rule, unless the rule has injected Times
// faults already, as when several requests it matched run at once. It reports whether
// the fault happens.
func (p *FaultProxy) tryInject(rule *faultRuleState, r *http.Request) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if rule.Times > 0 && rule.injected >= rule.Times {
		return false
	}
	rule.injected++
	p.injected = append(p.injected, InjectedFault{Rule: rule.index, Kind: rule.Kind, Method: r.Method, Path: r.URL.Path})
	return true
}

// ServeHTTP applies the matching rule, if any, and forwards the request.
func (p *FaultProxy) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	p.handlers.Add(1)
	defer p.handlers.Done()

	rule := p.match(r)
	if rule != nil && rule.Kind == FaultStatus && p.tryInject(rule, r) {
		p.writeStatus(w, rule)
		return
	}
	if rule != nil && rule.Kind == FaultStall && rule.AfterBytes == 0 && p.tryInject(rule, r) {
		if !p.hold(r.Context(), rule.Delay) {
			resetConnection(w, false)
			return
		}
	}
	p.forward(w, r, rule)
}

func (p *FaultProxy) writeStatus(w http.ResponseWriter, rule *faultRuleState) {
	for name, values := range rule.Header {
		w.Header()[http.CanonicalHeaderKey(name)] = append([]string(nil), values...)
	}
	w.WriteHeader(rule.Status)
	_, _ = w.Write(rule.Body)
}

// hold waits for delay, or until the request ends or the proxy closes when delay is
// zero. It reports whether the handler should go on.
func (p *FaultProxy) hold(ctx context.Context, delay time.Duration) bool {
	var timeout <-chan time.Time
	if delay > 0 {
		timer := time.NewTimer(delay)
		defer timer.Stop()
		timeout = timer.C
	}
	select {
	case <-timeout:
		return true
	case <-ctx.Done():
		return false
	case <-p.closing:
		return false
	}
}

// hopByHopHeaders are the headers that describe one connection and are not forwarded.
var hopByHopHeaders = []string{
	"Connection", "Keep-Alive", "Proxy-Authenticate", "Proxy-Authorization",
	"Proxy-Connection", "Te", "Trailer", "Transfer-Encoding", "Upgrade",
}

func forwardableHeader(h http.Header) http.Header {
	out := h.Clone()
	for _, name := range hopByHopHeaders {
		out.Del(name)
	}
	return out
}

// forward sends the request to the target and copies the response back, applying the
// body faults of rule.
func (p *FaultProxy) forward(w http.ResponseWriter, r *http.Request, rule *faultRuleState) {
	p.mu.Lock()
	target := *p.target
	p.mu.Unlock()

	body := &faultRequestBody{reader: r.Body, proxy: p, ctx: r.Context()}
	if rule != nil && rule.Kind == FaultResetRequest {
		body.resetAt = func(read int64) bool {
			return read >= rule.AfterBytes && p.tryInject(rule, r)
		}
	}
	var outBody io.Reader = body
	if r.ContentLength == 0 {
		outBody = nil
	}
	out, err := http.NewRequestWithContext(r.Context(), r.Method, target.String()+r.URL.RequestURI(), outBody)
	if err != nil {
		http.Error(w, err.Error(), http.StatusInternalServerError)
		return
	}
	out.Header = forwardableHeader(r.Header)
	out.Host = r.Host
	out.ContentLength = r.ContentLength

	resp, err := p.upstream.RoundTrip(out)
	if err != nil {
		resetConnection(w, false)
		return
	}
	defer resp.Body.Close()

	p.copyResponse(w, r, resp, rule)
}

// copyResponse writes resp to w, streaming its body and applying the response faults of
// rule.
func (p *FaultProxy) copyResponse(w http.ResponseWriter, r *http.Request, resp *http.Response, rule *faultRuleState) {
	kind := FaultKind(0)
	if rule != nil {
		kind = rule.Kind
	}
	header := forwardableHeader(resp.Header)
	limit := int64(-1) // body bytes to send, -1 for all
	faultAt := int64(-1)
	switch kind {
	case FaultContentLength:
		if p.tryInject(rule, r) {
			header.Set("Content-Length", strconv.FormatInt(rule.ContentLength, 10))
			limit = rule.ContentLength
		}
	case FaultResetResponse, FaultCorruptBody:
		faultAt = rule.AfterBytes
	case FaultStall:
		if rule.AfterBytes > 0 {
			faultAt = rule.AfterBytes
		}
	}
	for name, values := range header {
		w.Header()[name] = values
	}
	w.WriteHeader(resp.StatusCode)

	controller := http.NewResponseController(w)
	buf := make([]byte, faultCopyBuffer)
	var offset int64
	for limit < 0 || offset < limit {
		chunk := buf
		if limit >= 0 && int64(len(chunk)) > limit-offset {
			chunk = chunk[:limit-offset]
		}
		// A reset or stall happens between two writes, so a chunk ends at faultAt.
		if (kind == FaultResetResponse || kind == FaultStall) && faultAt > offset && int64(len(chunk)) > faultAt-offset {
			chunk = chunk[:faultAt-offset]
		}
		n, readErr := resp.Body.Read(chunk)
		if n > 0 {
			if kind == FaultCorruptBody && offset <= faultAt && faultAt < offset+int64(n) && p.tryInject(rule, r) {
				chunk[faultAt-offset] ^= 0xff
			}
			if !p.limiter.wait(r.Context(), p.closing, n) {
				return
			}
			if _, err := w.Write(chunk[:n]); err != nil {
				return
			}
			_ = controller.Flush()
			offset += int64(n)
		}
		if offset == faultAt && faultAt >= 0 && readErr == nil {
			switch {
			case kind == FaultResetResponse && p.tryInject(rule, r):
				resetConnection(w, true)
				return
			case kind == FaultStall && p.tryInject(rule, r):
				if !p.hold(r.Context(), rule.Delay) {
					resetConnection(w, true)
					return
				}
			}
			faultAt = -1
		}
		if readErr != nil {
			if !errors.Is(readErr, io.EOF) {
				// The upstream broke off its response: pass the break on.
				resetConnection(w, true)
			}
			return
		}
	}
}

// resetConnection sends a TCP reset to the client: it hijacks the connection, discards
// unsent data and closes it. When headerSent is set, the response written so far is
// flushed first and gets a moment to arrive, so the client sees those bytes before the
// reset. Otherwise the client gets no response at all.
func resetConnection(w http.ResponseWriter, headerSent bool) {
	controller := http.NewResponseController(w)
	if headerSent {
		_ = controller.Flush()
	}
	conn, _, err := controller.Hijack()
	if err != nil {
		// The connection cannot be taken over: make net/http drop it.
		panic(http.ErrAbortHandler)
	}
	if headerSent {
		time.Sleep(20 * time.Millisecond)
	}
	if tcp, ok := conn.(*net.TCPConn); ok {
		_ = tcp.SetLinger(0)
	}
	_ = conn.Close()
}

// faultRequestBody passes a request body to the upstream, throttled by the proxy's rate
// limit. When resetAt is set, it ends the body with errInjectedReset at the first read
// for which resetAt, given the bytes read so far, returns true.
type faultRequestBody struct {
	reader  io.Reader
	proxy   *FaultProxy
	ctx     context.Context
	resetAt func(read int64) bool
	read    int64
}

func (b *faultRequestBody) Read(buf []byte) (int, error) {
	if b.resetAt != nil && b.resetAt(b.read) {
		return 0, errInjectedReset
	}
	if len(buf) > faultCopyBuffer {
		buf = buf[:faultCopyBuffer]
	}
	n, err := b.reader.Read(buf)
	b.read += int64(n)
	if n > 0 && !b.proxy.limiter.wait(b.ctx, b.proxy.closing, n) {
		return n, context.Canceled
	}
	return n, err
}

// byteRate spaces out body bytes so that all connections together stay at perSecond.
type byteRate struct {
	perSecond int64
	mu        sync.Mutex
	next      time.Time
}

// wait blocks until n more bytes fit in the rate. It returns false when ctx ends or
// closing is closed first. A nil byteRate never waits.
func (l *byteRate) wait(ctx context.Context, closing <-chan struct{}, n int) bool {
	if l == nil {
		return true
	}
	l.mu.Lock()
	now := time.Now()
	if l.next.Before(now) {
		l.next = now
	}
	l.next = l.next.Add(time.Duration(int64(n) * int64(time.Second) / l.perSecond))
	until := l.next
	l.mu.Unlock()

	timer := time.NewTimer(time.Until(until))
	defer timer.Stop()
	select {
	case <-timer.C:
		return true
	case <-ctx.Done():
		return false
	case <-closing:
		return false
	}
}
