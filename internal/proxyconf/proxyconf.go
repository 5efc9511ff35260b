// Package proxyconf generates the mesh proxy's nginx configuration from a rules file, so
// that the proxy's allowlist is the list of hosts that the clients' routes send to it.
//
// The output is a complete nginx.conf, or a Kubernetes ConfigMap that contains it. The
// configuration forwards a request only when its routing header names an allowlisted
// registry, streams bodies in both directions, and keeps upstream connections alive for
// registries given by IP address.
package proxyconf

import (
	"bytes"
	_ "embed"
	"fmt"
	"net/netip"
	"net/url"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"text/template"
	"time"

	"github.com/imgxfer/imgxfer/routing"
)

// Defaults of Options, for the nginx image that k8s/ runs: every file nginx writes is under
// /tmp, and both logs go to the container's output.
const (
	DefaultTempDir       = "/tmp"
	DefaultPIDFile       = "/tmp/nginx.pid"
	DefaultAccessLog     = "/dev/stdout"
	DefaultErrorLog      = "stderr"
	DefaultErrorLogLevel = "warn"
	DefaultKeepalive     = 16
)

//go:embed nginx.conf.tmpl
var nginxTemplateText string

// nginxTemplate is parsed on first use rather than at package init, which every command
// would pay for.
var nginxTemplate = sync.OnceValue(func() *template.Template {
	return template.Must(template.New("nginx.conf").
		Funcs(template.FuncMap{"quote": quote}).
		Parse(nginxTemplateText))
})

// Options are the settings that belong to where and how nginx runs rather than to the
// rules. The listener, TLS and upstream CA fields, when set, replace the rules' values.
type Options struct {
	// HTTPListen and HTTPSListen replace proxy.listen.http and proxy.listen.https.
	HTTPListen, HTTPSListen string

	// TLSCert and TLSKey replace proxy.tls.cert and proxy.tls.key.
	TLSCert, TLSKey string

	// UpstreamCA replaces proxy.upstream_ca.
	UpstreamCA string

	// TempDir contains nginx's temp directories. Default DefaultTempDir.
	TempDir string

	// PIDFile is nginx's pid file. Default DefaultPIDFile.
	PIDFile string

	// AccessLog is the access log's path. Default DefaultAccessLog.
	AccessLog string

	// ErrorLog is the error log's path, or "stderr". Default DefaultErrorLog.
	ErrorLog string

	// ErrorLogLevel is the error log's level, such as "warn" or "info". Default
	// DefaultErrorLogLevel.
	ErrorLogLevel string

	// User is the user that a root master process runs its workers as. Empty leaves the
	// directive out, which is right for a master that does not run as root.
	User string

	// WorkerProcesses replaces proxy.worker_processes.
	WorkerProcesses string

	// ShutdownTimeout bounds a graceful stop. Zero leaves worker_shutdown_timeout out, so
	// nginx waits for every open request.
	ShutdownTimeout time.Duration

	// Keepalive is the number of idle connections per upstream and worker. Default
	// DefaultKeepalive.
	Keepalive int
}

// entry is one line of the allowlist map.
type entry struct {
	HeaderValue string
	ProxyPass   string // value of $mesh_upstream: a base URL or an upstream block's URL
	Scheme      string
	HTTPS       bool
	ServerName  string
	Origin      string
}

// upstreamBlock is an nginx upstream block for a registry given by IP address.
type upstreamBlock struct {
	Name        string
	Server      string
	HeaderValue string
	Origin      string
}

// templateData contains the values that the template reads.
type templateData struct {
	Source          string
	Header          string
	HeaderVar       string
	HTTPListen      string
	HTTPSListen     string
	TLSCert         string
	TLSKey          string
	UpstreamCA      string
	UpstreamTLS     bool
	Resolver        []string
	RealmRewrite    bool
	Entries         []entry
	Upstreams       []upstreamBlock
	TempDir         string
	PIDFile         string
	AccessLog       string
	ErrorLog        string
	ErrorLogLevel   string
	User            string
	WorkerProcesses string
	ShutdownTimeout string
	Keepalive       int
}

// Generate returns the nginx.conf for the proxy side of rules. Its errors about the rules
// name the file, line and field to fix.
func Generate(rules *routing.Rules, opts Options) ([]byte, error) {
	data, err := newTemplateData(rules, opts)
	if err != nil {
		return nil, err
	}
	var out bytes.Buffer
	if err := nginxTemplate().Execute(&out, data); err != nil {
		return nil, fmt.Errorf("rendering the nginx configuration: %w", err)
	}
	return out.Bytes(), nil
}

func newTemplateData(rules *routing.Rules, opts Options) (*templateData, error) {
	allowlist, err := rules.ProxyAllowlist()
	if err != nil {
		return nil, err
	}

	proxy := rules.Proxy
	data := &templateData{
		Source:          filepath.Base(rules.Source),
		Header:          strings.ToLower(rules.Header),
		HeaderVar:       "http_" + strings.ReplaceAll(strings.ToLower(rules.Header), "-", "_"),
		HTTPListen:      pick(opts.HTTPListen, proxy.Listen.HTTP),
		HTTPSListen:     pick(opts.HTTPSListen, proxy.Listen.HTTPS),
		TLSCert:         pick(opts.TLSCert, proxy.TLS.Cert),
		TLSKey:          pick(opts.TLSKey, proxy.TLS.Key),
		UpstreamCA:      pick(opts.UpstreamCA, proxy.UpstreamCA),
		Resolver:        proxy.Resolver,
		RealmRewrite:    proxy.RealmRewrite,
		TempDir:         strings.TrimSuffix(pick(opts.TempDir, DefaultTempDir), "/"),
		PIDFile:         pick(opts.PIDFile, DefaultPIDFile),
		AccessLog:       pick(opts.AccessLog, DefaultAccessLog),
		ErrorLog:        pick(opts.ErrorLog, DefaultErrorLog),
		ErrorLogLevel:   pick(opts.ErrorLogLevel, DefaultErrorLogLevel),
		User:            opts.User,
		WorkerProcesses: pick(opts.WorkerProcesses, proxy.WorkerProcesses, "auto"),
		Keepalive:       opts.Keepalive,
	}
	if data.Keepalive <= 0 {
		data.Keepalive = DefaultKeepalive
	}
	if opts.ShutdownTimeout > 0 {
		data.ShutdownTimeout = strconv.Itoa(int(opts.ShutdownTimeout.Round(time.Second)/time.Second)) + "s"
	}
	if err := data.checkOptions(); err != nil {
		return nil, err
	}

	for _, allowed := range allowlist {
		e := entry{
			HeaderValue: allowed.HeaderValue,
			ProxyPass:   allowed.Upstream.String(),
			Scheme:      allowed.Upstream.Scheme,
			HTTPS:       allowed.Upstream.Scheme == "https",
			ServerName:  allowed.ServerName,
			Origin:      allowed.Origin,
		}
		if addr, err := netip.ParseAddr(strings.Trim(allowed.Upstream.Hostname(), "[]")); err == nil {
			block := upstreamBlock{
				Name:        fmt.Sprintf("mesh-upstream-%d.invalid", len(data.Upstreams)),
				Server:      serverAddress(addr, allowed.Upstream),
				HeaderValue: allowed.HeaderValue,
				Origin:      allowed.Origin,
			}
			data.Upstreams = append(data.Upstreams, block)
			e.ProxyPass = allowed.Upstream.Scheme + "://" + block.Name
		}
		data.UpstreamTLS = data.UpstreamTLS || e.HTTPS
		data.Entries = append(data.Entries, e)
	}
	return data, nil
}

// checkOptions checks the values that came from Options, which the rules' validation
// has not seen.
func (d *templateData) checkOptions() error {
	if d.HTTPListen == routing.ListenOff {
		d.HTTPListen = ""
	}
	if d.HTTPSListen == routing.ListenOff {
		d.HTTPSListen = ""
	}
	for _, listen := range []string{d.HTTPListen, d.HTTPSListen} {
		if listen == "" {
			continue
		}
		if err := routing.CheckListen(listen); err != nil {
			return err
		}
	}
	if d.HTTPListen == "" && d.HTTPSListen == "" {
		return fmt.Errorf("both listeners are off; keep proxy.listen.http or proxy.listen.https on")
	}

	files := []struct{ name, value string }{
		{"temp directory", d.TempDir},
		{"pid file", d.PIDFile},
		{"access log", d.AccessLog},
		{"upstream CA bundle", d.UpstreamCA},
	}
	if d.HTTPSListen != "" {
		files = append(files, struct{ name, value string }{"TLS certificate", d.TLSCert}, struct{ name, value string }{"TLS key", d.TLSKey})
	}
	if d.ErrorLog != "stderr" {
		files = append(files, struct{ name, value string }{"error log", d.ErrorLog})
	}
	for _, file := range files {
		if file.value == "" {
			return fmt.Errorf("missing %s path; set it in the rules' proxy section or with a flag", file.name)
		}
		if err := routing.CheckNginxPath(file.value); err != nil {
			return fmt.Errorf("invalid %s: %w", file.name, err)
		}
	}
	for _, word := range []struct{ name, value string }{
		{"error log level", d.ErrorLogLevel},
		{"user", d.User},
		{"worker processes", d.WorkerProcesses},
	} {
		if strings.ContainsFunc(word.value, func(r rune) bool {
			return !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '_' || r == '-')
		}) {
			return fmt.Errorf("invalid %s %q: use letters, digits, '-' and '_' only", word.name, word.value)
		}
	}
	return nil
}

// serverAddress returns the address of an upstream block's server: the IP address and the
// port, which defaults to the scheme's.
func serverAddress(addr netip.Addr, upstream *url.URL) string {
	port := uint16(443)
	if upstream.Scheme == "http" {
		port = 80
	}
	if text := upstream.Port(); text != "" {
		n, _ := strconv.ParseUint(text, 10, 16)
		port = uint16(n)
	}
	return netip.AddrPortFrom(addr, port).String()
}

func pick(values ...string) string {
	for _, value := range values {
		if value != "" {
			return value
		}
	}
	return ""
}

// quote returns s as a double-quoted nginx string. The values come from validated rules
// and options, which contain no quote or backslash.
func quote(s string) string {
	return `"` + s + `"`
}
