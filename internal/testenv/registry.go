package testenv

import (
	"context"
	"crypto/rand"
	"crypto/tls"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/distribution/distribution/v3/configuration"
	"github.com/distribution/distribution/v3/registry/handlers"
	"github.com/regclient/regclient/config"
	"github.com/sirupsen/logrus"
	"golang.org/x/crypto/bcrypt"

	// The storage drivers register themselves with distribution's driver
	// factory when imported.
	_ "github.com/distribution/distribution/v3/registry/auth/htpasswd"
	_ "github.com/distribution/distribution/v3/registry/storage/driver/filesystem"
	_ "github.com/distribution/distribution/v3/registry/storage/driver/inmemory"
	_ "github.com/distribution/distribution/v3/registry/storage/driver/middleware/redirect"
)

// registryShutdownTimeout bounds how long Close waits for in-flight requests
// before it drops the remaining connections.
const registryShutdownTimeout = 5 * time.Second

// RegistryOptions configures a registry started by StartRegistry.
type RegistryOptions struct {
	// RootDir is the directory of the filesystem storage driver. When it is
	// empty, the registry stores content in memory and loses it on Close.
	RootDir string

	// TLSCertPEM and TLSKeyPEM make the registry serve HTTPS with this
	// certificate chain and private key. Both empty means plain HTTP. The
	// certificate must name 127.0.0.1 as an IP SAN for clients that connect
	// to Addr directly.
	TLSCertPEM []byte
	TLSKeyPEM  []byte

	// Auth is passed unchanged to distribution's configuration. The zero
	// value disables authentication.
	Auth configuration.Auth

	// StorageRedirect, when set, makes the registry answer blob GETs with a
	// redirect to this base URL plus the blob's storage path, as registries
	// backed by object storage do. It needs RootDir: a file server on RootDir
	// then serves the redirect targets.
	StorageRedirect string

	// ExtraHandlers maps a path prefix, such as "/service/token", to a
	// handler that serves it on the registry's listener in place of the
	// registry. A prefix matches the path itself and every path below it.
	// The longest matching prefix wins. Prefixes must start with "/" and
	// must not be "/" or lie under "/v2". Registry.Requests records these
	// requests too.
	ExtraHandlers map[string]http.Handler

	// Listener, when set, is the listener the registry serves on in place
	// of a new one. It must listen on a 127.0.0.1 TCP address. Use it when
	// the registry's configuration must contain its own address, such as a
	// token realm on the registry host. StartRegistry and Close close it.
	Listener net.Listener
}

// RequestRecord is one request that reached a registry's handler.
type RequestRecord struct {
	Method   string
	Path     string
	RawQuery string
	// Host is the Host header as the registry received it, so a request
	// that came through a proxy shows the name the proxy forwarded.
	Host   string
	Status int
}

// Registry is a distribution v3 registry served in this process on a
// 127.0.0.1 listener.
//
// The registry builds absolute Location URLs (upload sessions, manifest and
// blob locations) from each request. It takes the scheme from the Forwarded
// or X-Forwarded-Proto header, else from the connection. It takes the host
// from the Forwarded or X-Forwarded-Host header, else from the Host header.
// A request proxied with "Host: registry.prod.test" thus gets Location URLs
// that name registry.prod.test, not Addr.
type Registry struct {
	// Addr is the listener address, 127.0.0.1:port.
	Addr string
	// URL is "http://" or "https://" followed by Addr.
	URL string

	certPEM []byte
	server  *http.Server
	app     *handlers.App

	serveDone chan struct{}
	serveErr  error

	closeOnce sync.Once
	closeErr  error

	requestsMu sync.Mutex
	requests   []RequestRecord
}

var quietLogrusOnce sync.Once

// quietDistributionLogs silences logrus's standard logger, through which
// distribution's handlers log (its dcontext package offers no public way to
// pass another logger). Left alone, they write a line for every request and
// an error line for every expected 404, such as a blob HEAD before an upload.
// Set IMGXFER_TEST_REGISTRY_LOG to a logrus level, such as "debug", to see them.
func quietDistributionLogs() {
	quietLogrusOnce.Do(func() {
		level, err := logrus.ParseLevel(os.Getenv(registryLogEnv))
		if err != nil {
			level = logrus.PanicLevel
		}
		logrus.SetLevel(level)
	})
}

// registryLogEnv names the environment variable that sets the log level of
// the in-process registries.
const registryLogEnv = "IMGXFER_TEST_REGISTRY_LOG"

// StartRegistry starts a registry with delete enabled on a new 127.0.0.1
// listener and returns once it accepts connections. The caller must call
// Close. ctx bounds only the start, and the registry keeps running after ctx
// is canceled.
//
// The first call silences logrus's process-wide standard logger unless
// IMGXFER_TEST_REGISTRY_LOG names a level, because distribution logs every
// request there.
func StartRegistry(ctx context.Context, opts RegistryOptions) (*Registry, error) {
	registry, err := startRegistry(ctx, opts)
	if err != nil && opts.Listener != nil {
		_ = opts.Listener.Close()
	}
	return registry, err
}

func startRegistry(ctx context.Context, opts RegistryOptions) (*Registry, error) {
	if (len(opts.TLSCertPEM) == 0) != (len(opts.TLSKeyPEM) == 0) {
		return nil, errors.New("start registry: TLSCertPEM and TLSKeyPEM must be set together")
	}
	extra, err := newPrefixRouter(opts.ExtraHandlers)
	if err != nil {
		return nil, fmt.Errorf("start registry: %w", err)
	}
	if opts.Listener != nil {
		if err := checkLoopbackListener(opts.Listener); err != nil {
			return nil, fmt.Errorf("start registry: %w", err)
		}
	}
	quietDistributionLogs()

	cfg, err := registryConfiguration(opts)
	if err != nil {
		return nil, fmt.Errorf("start registry: %w", err)
	}
	app, err := newApp(context.WithoutCancel(ctx), cfg)
	if err != nil {
		return nil, fmt.Errorf("start registry: %w", err)
	}

	listener := opts.Listener
	if listener == nil {
		var listenConfig net.ListenConfig
		listener, err = listenConfig.Listen(ctx, "tcp", "127.0.0.1:0")
		if err != nil {
			_ = app.Shutdown()
			return nil, fmt.Errorf("start registry: listen on 127.0.0.1: %w", err)
		}
	}

	r := &Registry{
		Addr:      listener.Addr().String(),
		certPEM:   opts.TLSCertPEM,
		app:       app,
		serveDone: make(chan struct{}),
	}
	r.server = &http.Server{
		Handler:           r.recordRequests(extra.handler(app)),
		ReadHeaderTimeout: 30 * time.Second,
	}

	if len(opts.TLSCertPEM) == 0 {
		r.URL = "http://" + r.Addr
		go r.serve(func() error { return r.server.Serve(listener) })
		return r, nil
	}

	cert, err := tls.X509KeyPair(opts.TLSCertPEM, opts.TLSKeyPEM)
	if err != nil {
		_ = listener.Close()
		_ = app.Shutdown()
		return nil, fmt.Errorf("start registry: invalid TLS certificate or key: %w", err)
	}
	r.URL = "https://" + r.Addr
	r.server.TLSConfig = &tls.Config{
		Certificates: []tls.Certificate{cert},
		MinVersion:   tls.VersionTLS12,
	}
	go r.serve(func() error { return r.server.ServeTLS(listener, "", "") })
	return r, nil
}

func registryConfiguration(opts RegistryOptions) (*configuration.Configuration, error) {
	// The HTTP secret signs upload session state. Setting one avoids
	// distribution's warning about generating a random secret.
	var secret [32]byte
	if _, err := rand.Read(secret[:]); err != nil {
		return nil, fmt.Errorf("generate HTTP secret: %w", err)
	}

	storage := configuration.Storage{
		"delete": configuration.Parameters{"enabled": true},
		// The upload purger would start a goroutine that sleeps up to an
		// hour. distribution reads this setting only as a map[any]any.
		"maintenance": configuration.Parameters{
			"uploadpurging": map[any]any{"enabled": false},
		},
	}
	if opts.RootDir == "" {
		storage["inmemory"] = configuration.Parameters{}
	} else {
		storage["filesystem"] = configuration.Parameters{"rootdirectory": opts.RootDir}
	}

	cfg := &configuration.Configuration{
		Version: configuration.CurrentVersion,
		Storage: storage,
		Auth:    opts.Auth,
	}
	if opts.StorageRedirect != "" {
		if opts.RootDir == "" {
			return nil, fmt.Errorf("StorageRedirect needs RootDir, so that a file server can serve the redirect targets")
		}
		cfg.Middleware = map[string][]configuration.Middleware{
			"storage": {{Name: "redirect", Options: configuration.Parameters{"baseurl": opts.StorageRedirect}}},
		}
	}
	// handlers.NewApp ignores Log.Level and never writes an access log, so
	// these two settings only record the intent. quietDistributionLogs sets
	// the level that takes effect.
	cfg.Log.Level = "error"
	cfg.Log.AccessLog.Disabled = true
	cfg.HTTP.Secret = hex.EncodeToString(secret[:])
	return cfg, nil
}

// newApp calls handlers.NewApp, which reports configuration errors by
// panicking, and turns such a panic into an error.
func newApp(ctx context.Context, cfg *configuration.Configuration) (app *handlers.App, err error) {
	defer func() {
		if recovered := recover(); recovered != nil {
			err = fmt.Errorf("distribution rejected the configuration: %v", recovered)
		}
	}()
	return handlers.NewApp(ctx, cfg), nil
}

func (r *Registry) serve(run func() error) {
	defer close(r.serveDone)
	if err := run(); err != nil && !errors.Is(err, http.ErrServerClosed) {
		r.serveErr = err
	}
}

// Close stops the server, waiting up to 5 seconds for in-flight requests, and
// releases the registry's storage driver. In-memory content is lost. Calls
// after the first return the first call's result.
//
// With TLS, Close takes about a second when an HTTP/2 client is still
// connected, because net/http's HTTP/2 server waits that long for the client
// to act on its GOAWAY frame.
func (r *Registry) Close() error {
	r.closeOnce.Do(func() {
		err := shutdownServer(r.server, registryShutdownTimeout, r.serveDone, &r.serveErr, "registry "+r.Addr)
		if appErr := r.app.Shutdown(); appErr != nil {
			err = errors.Join(err, fmt.Errorf("shut down registry app %s: %w", r.Addr, appErr))
		}
		r.closeErr = err
	})
	return r.closeErr
}

// HostConfig returns regclient settings for reaching the registry at Addr:
// TLS disabled for a plain HTTP registry, else TLS verified against the
// registry's own certificate PEM. A leaf certificate in that PEM is trusted
// directly, so no CA is needed.
func (r *Registry) HostConfig() config.Host {
	host := config.Host{Name: r.Addr, TLS: config.TLSDisabled}
	if len(r.certPEM) > 0 {
		host.TLS = config.TLSEnabled
		host.RegCert = string(r.certPEM)
	}
	return host
}

// Requests returns a copy of the requests served so far, in the order their
// responses started. It includes requests served by
// RegistryOptions.ExtraHandlers, which a test can tell apart by Path.
func (r *Registry) Requests() []RequestRecord {
	r.requestsMu.Lock()
	defer r.requestsMu.Unlock()
	return append([]RequestRecord(nil), r.requests...)
}

// ResetRequests clears the request log, so a test can drop the requests of
// its setup before the part it checks.
func (r *Registry) ResetRequests() {
	r.requestsMu.Lock()
	defer r.requestsMu.Unlock()
	r.requests = nil
}

func (r *Registry) recordRequests(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		record := RequestRecord{
			Method:   req.Method,
			Path:     req.URL.Path,
			RawQuery: req.URL.RawQuery,
			Host:     req.Host,
		}
		recorder := &statusRecorder{ResponseWriter: w, onStatus: func(status int) {
			record.Status = status
			r.requestsMu.Lock()
			r.requests = append(r.requests, record)
			r.requestsMu.Unlock()
		}}
		next.ServeHTTP(recorder, req)
		// A handler that writes nothing gets an implicit 200 from net/http.
		recorder.setStatus(http.StatusOK)
	})
}

// statusRecorder reports the response status once, when the handler first
// writes the header or the body. That is before any byte reaches the client,
// so a client that has received a response finds its request in the log.
type statusRecorder struct {
	http.ResponseWriter
	onStatus func(status int)
	reported bool
}

func (s *statusRecorder) setStatus(status int) {
	if !s.reported {
		s.reported = true
		s.onStatus(status)
	}
}

func (s *statusRecorder) WriteHeader(status int) {
	// 1xx responses are informational and followed by the final status.
	if status >= 200 {
		s.setStatus(status)
	}
	s.ResponseWriter.WriteHeader(status)
}

func (s *statusRecorder) Write(p []byte) (int, error) {
	s.setStatus(http.StatusOK)
	return s.ResponseWriter.Write(p)
}

// Flush passes flushes through, because distribution checks its response
// writer for http.Flusher.
func (s *statusRecorder) Flush() {
	s.setStatus(http.StatusOK)
	if flusher, ok := s.ResponseWriter.(http.Flusher); ok {
		flusher.Flush()
	}
}

// Unwrap lets http.ResponseController reach the connection's writer.
func (s *statusRecorder) Unwrap() http.ResponseWriter {
	return s.ResponseWriter
}

// prefixRouter sends each request whose path lies under one of its prefixes
// to that prefix's handler. It matches by hand because http.ServeMux would
// also clean paths and redirect, which changes the paths the registry
// receives.
type prefixRouter struct {
	prefixes []string // longest first
	handlers map[string]http.Handler
}

func newPrefixRouter(handlers map[string]http.Handler) (*prefixRouter, error) {
	router := &prefixRouter{handlers: make(map[string]http.Handler, len(handlers))}
	for prefix, handler := range handlers {
		trimmed := strings.TrimSuffix(prefix, "/")
		switch {
		case !strings.HasPrefix(prefix, "/") || trimmed == "":
			return nil, fmt.Errorf("invalid extra handler prefix %q: expected a path such as /service/token", prefix)
		case trimmed == "/v2" || strings.HasPrefix(trimmed, "/v2/"):
			return nil, fmt.Errorf("invalid extra handler prefix %q: it would hide the registry API under /v2", prefix)
		case handler == nil:
			return nil, fmt.Errorf("invalid extra handler for prefix %q: the handler is nil", prefix)
		case router.handlers[trimmed] != nil:
			return nil, fmt.Errorf("invalid extra handler prefix %q: another prefix differs from it only by a trailing slash", prefix)
		}
		router.prefixes = append(router.prefixes, trimmed)
		router.handlers[trimmed] = handler
	}
	slices.SortFunc(router.prefixes, func(a, b string) int { return len(b) - len(a) })
	return router, nil
}

func (p *prefixRouter) handler(fallback http.Handler) http.Handler {
	if len(p.prefixes) == 0 {
		return fallback
	}
	return http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		for _, prefix := range p.prefixes {
			if req.URL.Path == prefix || strings.HasPrefix(req.URL.Path, prefix+"/") {
				p.handlers[prefix].ServeHTTP(w, req)
				return
			}
		}
		fallback.ServeHTTP(w, req)
	})
}

// checkLoopbackListener returns an error unless listener listens on TCP at
// 127.0.0.1.
func checkLoopbackListener(listener net.Listener) error {
	addr, ok := listener.Addr().(*net.TCPAddr)
	if !ok || !addr.IP.Equal(net.IPv4(127, 0, 0, 1)) {
		return fmt.Errorf("invalid listener address %s: expected a TCP address on 127.0.0.1", listener.Addr())
	}
	return nil
}

// HtpasswdAuth writes an htpasswd file for one user into dir and returns the registry
// authentication settings that use it.
func HtpasswdAuth(dir, user, password string) (configuration.Auth, error) {
	hash, err := bcrypt.GenerateFromPassword([]byte(password), bcrypt.MinCost)
	if err != nil {
		return nil, fmt.Errorf("hashing the password: %w", err)
	}
	path, err := WriteFile(dir, "htpasswd", []byte(user+":"+string(hash)+"\n"))
	if err != nil {
		return nil, err
	}
	return configuration.Auth{"htpasswd": configuration.Parameters{"realm": "imgxfer-test", "path": path}}, nil
}
