package testenv

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// MeshTemplatePath is the mesh proxy's nginx template, relative to the
// repository root.
const MeshTemplatePath = "nginx/mesh-proxy.conf.template"

const (
	// nginxStartAttempts bounds the retries when another process takes one of
	// the chosen ports between choosing it and nginx binding it.
	nginxStartAttempts = 5
	// nginxStartTimeout applies when the caller's context has no deadline.
	nginxStartTimeout = 20 * time.Second
	// nginxShutdownTimeout is also written as worker_shutdown_timeout, so a
	// graceful stop closes open connections after this long.
	nginxShutdownTimeout = 5 * time.Second
	// nginxFastStopTimeout is how long Stop waits after SIGTERM before it
	// kills the processes.
	nginxFastStopTimeout = 5 * time.Second
)

// errAddressInUse marks a start that failed because a listen port was taken.
var errAddressInUse = errors.New("listen address already in use")

// NginxOptions configures StartNginx.
type NginxOptions struct {
	// RepoDir is the repository root. StartNginx reads the template at
	// MeshTemplatePath inside it.
	RepoDir string
	// Dir is a private work directory for the configuration, logs, pid file
	// and temp paths, usually t.TempDir(). StartNginx creates it if needed.
	Dir string
	// Upstreams maps each allowed mesh header value (host or host:port) to
	// its upstream base URL, such as http://127.0.0.1:5000. The URL has no
	// path, and its host must be a loopback IP address. StartNginx writes
	// the entries to the allowlist file.
	Upstreams map[string]string
	// TLSCertFile and TLSKeyFile are the PEM certificate and key of the TLS
	// listener. Both are required.
	TLSCertFile, TLSKeyFile string
	// UpstreamCAFile is the PEM CA bundle that verifies HTTPS upstreams. It is
	// required because the template always sets proxy_ssl_trusted_certificate.
	UpstreamCAFile string
}

// Nginx is a running nginx master process with the mesh proxy configuration.
type Nginx struct {
	HTTPAddr   string // plain-HTTP listener, 127.0.0.1:port
	HTTPSAddr  string // TLS listener, 127.0.0.1:port
	AccessLog  string // access log in the template's "mesh" format
	ErrorLog   string // nginx error log, at level info
	ConfigFile string // generated main nginx.conf
	MapFile    string // generated allowlist file
	PID        int    // process id of the nginx master

	cmd      *exec.Cmd
	exited   chan struct{} // closed once the master process has been reaped
	waitErr  error         // result of cmd.Wait, valid after exited is closed
	stopOnce sync.Once
	stopErr  error
}

// StartNginx renders the repository's mesh proxy template for loopback
// ports, checks the configuration with `nginx -t`, runs nginx as a child
// process with `daemon off` and waits until its health endpoint returns 200.
//
// ctx bounds the start only. Cancelling it later does not stop nginx, so
// call Stop, for example from t.Cleanup. A missing nginx binary is an error.
func StartNginx(ctx context.Context, opts NginxOptions) (*Nginx, error) {
	if err := opts.validate(); err != nil {
		return nil, err
	}
	nginxPath, err := findNginx()
	if err != nil {
		return nil, err
	}
	template, err := os.ReadFile(filepath.Join(opts.RepoDir, MeshTemplatePath))
	if err != nil {
		return nil, fmt.Errorf("read nginx template: %w", err)
	}

	dir, err := filepath.Abs(opts.Dir)
	if err != nil {
		return nil, fmt.Errorf("resolve nginx work directory %q: %w", opts.Dir, err)
	}
	if err := checkConfigPath("NginxOptions.Dir", dir); err != nil {
		return nil, err
	}
	if err := prepareNginxDir(dir); err != nil {
		return nil, err
	}
	mapFile := filepath.Join(dir, "registries.map")
	if err := os.WriteFile(mapFile, []byte(registriesMap(opts.Upstreams)), 0o600); err != nil {
		return nil, fmt.Errorf("write nginx allowlist: %w", err)
	}

	files := nginxFiles{
		dir:      dir,
		mapFile:  mapFile,
		template: string(template),
	}
	for _, input := range []struct {
		target *string
		path   string
	}{
		{&files.tlsCert, opts.TLSCertFile},
		{&files.tlsKey, opts.TLSKeyFile},
		{&files.upstreamCA, opts.UpstreamCAFile},
	} {
		if *input.target, err = filepath.Abs(input.path); err != nil {
			return nil, fmt.Errorf("resolve %q: %w", input.path, err)
		}
	}

	var lastErr error
	for range nginxStartAttempts {
		n, err := startNginxOnce(ctx, nginxPath, files)
		if err == nil {
			return n, nil
		}
		if !errors.Is(err, errAddressInUse) {
			return nil, err
		}
		lastErr = err
	}
	return nil, fmt.Errorf("start nginx: gave up after %d attempts: %w", nginxStartAttempts, lastErr)
}

// nginxFiles are the absolute paths and the template that every start
// attempt shares.
type nginxFiles struct {
	dir        string
	mapFile    string
	template   string
	tlsCert    string
	tlsKey     string
	upstreamCA string
}

// startNginxOnce picks two free ports and starts nginx on them. Its error
// wraps errAddressInUse when one of the ports was taken in the meantime.
func startNginxOnce(ctx context.Context, nginxPath string, files nginxFiles) (*Nginx, error) {
	addrs, err := pickLoopbackAddrs(2)
	if err != nil {
		return nil, err
	}
	n := &Nginx{
		HTTPAddr:   addrs[0],
		HTTPSAddr:  addrs[1],
		AccessLog:  filepath.Join(files.dir, "access.log"),
		ErrorLog:   filepath.Join(files.dir, "error.log"),
		ConfigFile: filepath.Join(files.dir, "nginx.conf"),
		MapFile:    files.mapFile,
		exited:     make(chan struct{}),
	}

	values := map[string]string{
		"MESH_LISTEN_HTTP":      n.HTTPAddr,
		"MESH_LISTEN_HTTPS":     n.HTTPSAddr,
		"MESH_TLS_CERT":         files.tlsCert,
		"MESH_TLS_KEY":          files.tlsKey,
		"MESH_UPSTREAM_CA":      files.upstreamCA,
		"MESH_REGISTRIES_MAP":   files.mapFile,
		"MESH_ACCESS_LOG":       n.AccessLog,
		"NGINX_LOCAL_RESOLVERS": "127.0.0.1",
	}
	rendered, err := renderMeshTemplate(files.template, values)
	if err != nil {
		return nil, err
	}
	renderedPath := filepath.Join(files.dir, "mesh-proxy.conf")
	if err := os.WriteFile(renderedPath, []byte(rendered), 0o600); err != nil {
		return nil, fmt.Errorf("write rendered nginx template: %w", err)
	}
	mainConf := nginxMainConfig(files.dir, renderedPath, os.Geteuid() == 0)
	if err := os.WriteFile(n.ConfigFile, []byte(mainConf), 0o600); err != nil {
		return nil, fmt.Errorf("write nginx.conf: %w", err)
	}

	args := []string{"-p", files.dir + string(filepath.Separator), "-c", n.ConfigFile, "-e", n.ErrorLog}
	testOutput, err := exec.CommandContext(ctx, nginxPath, append([]string{"-t"}, args...)...).CombinedOutput()
	if err != nil {
		return nil, nginxFailure("nginx -t rejected "+n.ConfigFile, err, string(testOutput))
	}

	if err := n.launch(nginxPath, args, files.dir); err != nil {
		return nil, err
	}
	if err := n.waitReady(ctx); err != nil {
		stopErr := n.Stop()
		output := readFileTail(filepath.Join(files.dir, "nginx.stderr")) + readFileTail(n.ErrorLog)
		return nil, nginxFailure("nginx did not become ready", errors.Join(err, stopErr), output)
	}
	return n, nil
}

// launch starts the nginx master in the foreground and reaps it in the
// background. The process is not bound to a context, because it has to
// outlive StartNginx.
func (n *Nginx) launch(nginxPath string, args []string, dir string) error {
	output, err := os.OpenFile(filepath.Join(dir, "nginx.stderr"), os.O_CREATE|os.O_WRONLY|os.O_TRUNC, 0o600)
	if err != nil {
		return fmt.Errorf("create nginx output file: %w", err)
	}
	defer output.Close()

	n.cmd = exec.Command(nginxPath, args...)
	n.cmd.Stdout = output
	n.cmd.Stderr = output
	if err := n.cmd.Start(); err != nil {
		return fmt.Errorf("start %s: %w", nginxPath, err)
	}
	n.PID = n.cmd.Process.Pid
	go func() {
		n.waitErr = n.cmd.Wait()
		close(n.exited)
	}()
	return nil
}

// waitReady polls the health endpoint on the HTTP listener and dials the
// TLS listener until both respond, nginx exits or the start times out.
func (n *Nginx) waitReady(ctx context.Context) error {
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, nginxStartTimeout)
		defer cancel()
	}
	client := &http.Client{
		Transport: &http.Transport{Proxy: nil, DisableKeepAlives: true},
		Timeout:   time.Second,
	}
	healthURL := "http://" + n.HTTPAddr + "/healthz"

	ticker := time.NewTicker(25 * time.Millisecond)
	defer ticker.Stop()
	var lastErr error
	for {
		lastErr = n.probe(ctx, client, healthURL)
		if lastErr == nil {
			return nil
		}
		select {
		case <-n.exited:
			return fmt.Errorf("nginx (pid %d) exited during start: %v", n.PID, n.waitErr)
		case <-ctx.Done():
			return fmt.Errorf("timed out waiting for nginx (pid %d) on %s: %w", n.PID, n.HTTPAddr, lastErr)
		case <-ticker.C:
		}
	}
}

// probe checks once that this nginx serves both listeners. nginx writes its
// pid file only after it has bound every listen address, so a matching pid
// file rules out another server that took one of the ports.
func (n *Nginx) probe(ctx context.Context, client *http.Client, healthURL string) error {
	pidFile := filepath.Join(filepath.Dir(n.ConfigFile), "nginx.pid")
	pidText, err := os.ReadFile(pidFile)
	if err != nil {
		return fmt.Errorf("nginx has not written its pid file yet: %w", err)
	}
	if strings.TrimSpace(string(pidText)) != strconv.Itoa(n.PID) {
		return fmt.Errorf("pid file %s does not contain pid %d yet", pidFile, n.PID)
	}

	req, err := http.NewRequestWithContext(ctx, http.MethodGet, healthURL, nil)
	if err != nil {
		return err
	}
	resp, err := client.Do(req)
	if err != nil {
		return err
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("GET %s: status %s, expected 200", healthURL, resp.Status)
	}

	var dialer net.Dialer
	conn, err := dialer.DialContext(ctx, "tcp", n.HTTPSAddr)
	if err != nil {
		return err
	}
	return conn.Close()
}

// Stop sends SIGQUIT for a graceful stop, then SIGTERM, and kills the master
// and its workers if nginx ignores both. Later calls return the first call's
// result. The error is nil unless nginx had already exited with a failure or
// had to be killed.
func (n *Nginx) Stop() error {
	n.stopOnce.Do(func() {
		n.stopErr = n.stop()
	})
	return n.stopErr
}

func (n *Nginx) stop() error {
	select {
	case <-n.exited:
		if n.waitErr != nil {
			return fmt.Errorf("nginx (pid %d) had already exited: %w", n.PID, n.waitErr)
		}
		return nil
	default:
	}

	steps := []struct {
		signal  os.Signal
		timeout time.Duration
	}{
		// worker_shutdown_timeout bounds the graceful stop, so this waits a
		// little longer than that.
		{syscall.SIGQUIT, nginxShutdownTimeout + 2*time.Second},
		{syscall.SIGTERM, nginxFastStopTimeout},
	}
	for _, step := range steps {
		if err := n.cmd.Process.Signal(step.signal); err != nil && !errors.Is(err, os.ErrProcessDone) {
			continue
		}
		timer := time.NewTimer(step.timeout)
		select {
		case <-n.exited:
			timer.Stop()
			return nil
		case <-timer.C:
		}
	}

	// Workers whose master dies keep running, so they are found and killed
	// first.
	for _, pid := range childPIDs(n.PID) {
		if process, err := os.FindProcess(pid); err == nil {
			_ = process.Kill()
		}
	}
	if err := n.cmd.Process.Kill(); err != nil && !errors.Is(err, os.ErrProcessDone) {
		return fmt.Errorf("kill nginx (pid %d): %w", n.PID, err)
	}
	<-n.exited
	return fmt.Errorf("nginx (pid %d) ignored SIGQUIT and SIGTERM and was killed", n.PID)
}

// AccessLogLines returns the access log's lines in the template's "mesh"
// format. nginx writes a line after it has sent the response, so a client
// can see a response before its line exists. WaitAccessLog polls for a line.
func (n *Nginx) AccessLogLines() ([]string, error) {
	data, err := os.ReadFile(n.AccessLog)
	if err != nil {
		return nil, fmt.Errorf("read nginx access log: %w", err)
	}
	text := strings.TrimSuffix(string(data), "\n")
	if text == "" {
		return nil, nil
	}
	return strings.Split(text, "\n"), nil
}

// WaitAccessLog polls the access log every 20 ms until a line contains
// substr and returns that line. It fails when ctx ends first.
func (n *Nginx) WaitAccessLog(ctx context.Context, substr string) (string, error) {
	ticker := time.NewTicker(20 * time.Millisecond)
	defer ticker.Stop()
	for {
		lines, err := n.AccessLogLines()
		if err != nil {
			return "", err
		}
		for _, line := range lines {
			if strings.Contains(line, substr) {
				return line, nil
			}
		}
		select {
		case <-ctx.Done():
			return "", fmt.Errorf("no access log line contains %q (%d lines): %w", substr, len(lines), ctx.Err())
		case <-ticker.C:
		}
	}
}

// validate checks the options before anything is written or started.
func (opts NginxOptions) validate() error {
	fields := []struct {
		name, value string
		inConfig    bool // written into the nginx configuration
	}{
		{"RepoDir", opts.RepoDir, false},
		{"Dir", opts.Dir, false},
		{"TLSCertFile", opts.TLSCertFile, true},
		{"TLSKeyFile", opts.TLSKeyFile, true},
		{"UpstreamCAFile", opts.UpstreamCAFile, true},
	}
	for _, field := range fields {
		if field.value == "" {
			return fmt.Errorf("start nginx: NginxOptions.%s is required", field.name)
		}
		if !field.inConfig {
			continue
		}
		if err := checkConfigPath("NginxOptions."+field.name, field.value); err != nil {
			return err
		}
	}
	return validateUpstreams(opts.Upstreams)
}

// meshHostPattern matches the values a mesh header may carry: a DNS name,
// an IPv4 address or a bracketed IPv6 address, with an optional port.
var meshHostPattern = regexp.MustCompile(`^([A-Za-z0-9]([A-Za-z0-9.-]*[A-Za-z0-9])?|\[[0-9A-Fa-f:.]+\])(:[0-9]{1,5})?$`)

// nginxMapKeywords are words that an nginx map block reads as parameters
// rather than as keys.
var nginxMapKeywords = map[string]bool{"default": true, "hostnames": true, "include": true, "volatile": true}

// validateUpstreams checks every allowlist entry with checkAllowlistEntry
// and also requires loopback upstreams, so that nginx never contacts another
// address. Keys that differ only in case are rejected, because nginx would
// fail on them.
func validateUpstreams(upstreams map[string]string) error {
	lowered := make(map[string]string, len(upstreams))
	for key, upstream := range upstreams {
		u, err := checkAllowlistEntry(key, upstream)
		if err != nil {
			return err
		}
		if other, ok := lowered[strings.ToLower(key)]; ok {
			return fmt.Errorf("allowlist keys %q and %q differ only in case, and nginx compares them ignoring case", other, key)
		}
		lowered[strings.ToLower(key)] = key

		ip := net.ParseIP(u.Hostname())
		if ip == nil || !ip.IsLoopback() {
			return fmt.Errorf("invalid upstream URL %q for %q: the host must be a loopback IP address, because testenv's nginx resolves no names and contacts only loopback addresses", upstream, key)
		}
	}
	return nil
}

// checkAllowlistEntry checks one allowlist entry as the template documents
// it: the key is an exact host or host:port, so it cannot widen the map, and
// the upstream is a base URL that nginx can put in front of $request_uri.
func checkAllowlistEntry(key, upstream string) (*url.URL, error) {
	if !meshHostPattern.MatchString(key) || nginxMapKeywords[strings.ToLower(key)] {
		return nil, fmt.Errorf("invalid allowlist key %q: expected host or host:port", key)
	}
	u, err := url.Parse(upstream)
	if err != nil {
		return nil, fmt.Errorf("invalid upstream URL %q for %q: %w", upstream, key, err)
	}
	if (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" || u.User != nil ||
		u.Path != "" || u.RawQuery != "" || u.Fragment != "" || u.Opaque != "" {
		return nil, fmt.Errorf("invalid upstream URL %q for %q: expected http:// or https:// with a host, an optional port and nothing else", upstream, key)
	}
	return u, nil
}

// registriesMap formats the allowlist file: one "key upstream;" line per
// entry, sorted so that the file is the same on every run.
func registriesMap(upstreams map[string]string) string {
	keys := make([]string, 0, len(upstreams))
	for key := range upstreams {
		keys = append(keys, key)
	}
	sort.Strings(keys)

	var b strings.Builder
	b.WriteString("# Written by testenv.StartNginx: mesh header value, then upstream base URL.\n")
	for _, key := range keys {
		fmt.Fprintf(&b, "%s %s;\n", key, upstreams[key])
	}
	return b.String()
}

// checkConfigPath rejects paths that nginx would not read back as written
// inside a double-quoted string. A "$" would start an nginx variable.
func checkConfigPath(name, path string) error {
	if strings.ContainsAny(path, "\"\\$;{}") || strings.ContainsFunc(path, func(r rune) bool { return r < 0x20 }) {
		return fmt.Errorf("%s %q: nginx configuration paths must not contain quotes, backslashes, '$', ';', braces or control characters", name, path)
	}
	return nil
}

// templateReferencePattern matches $NAME and ${NAME}, the two forms that
// envsubst replaces.
var templateReferencePattern = regexp.MustCompile(`\$\{([A-Za-z_][A-Za-z0-9_]*)\}|\$([A-Za-z_][A-Za-z0-9_]*)`)

// templateVariablePattern matches the ${NAME} references with an upper-case
// NAME, which the template uses for its environment variables.
var templateVariablePattern = regexp.MustCompile(`\$\{([A-Z][A-Z0-9_]*)\}`)

// renderMeshTemplate replaces $NAME and ${NAME} for each NAME in values and
// leaves every other reference alone, as the official nginx image does for
// the variables set in its environment. It fails when an upper-case
// ${NAME} is left over, because nginx would read it as literal text.
func renderMeshTemplate(template string, values map[string]string) (string, error) {
	rendered := templateReferencePattern.ReplaceAllStringFunc(template, func(reference string) string {
		name := strings.TrimSuffix(strings.TrimPrefix(strings.TrimPrefix(reference, "$"), "{"), "}")
		if value, ok := values[name]; ok {
			return value
		}
		return reference
	})
	if missing := templateVariables(rendered); len(missing) > 0 {
		return "", fmt.Errorf("render nginx template: no value for %s", strings.Join(missing, ", "))
	}
	return rendered, nil
}

// templateVariables returns the sorted, distinct NAMEs of the ${NAME}
// references with an upper-case NAME in an nginx template: the environment
// variables it needs.
func templateVariables(template string) []string {
	seen := map[string]bool{}
	var names []string
	for _, match := range templateVariablePattern.FindAllStringSubmatch(template, -1) {
		if !seen[match[1]] {
			seen[match[1]] = true
			names = append(names, match[1])
		}
	}
	sort.Strings(names)
	return names
}

// nginxMainConfig returns a main configuration that keeps every file nginx
// writes inside dir and includes the rendered template in its http block.
func nginxMainConfig(dir, renderedPath string, asRoot bool) string {
	quote := func(parts ...string) string {
		return `"` + filepath.Join(parts...) + `"`
	}
	var b strings.Builder
	b.WriteString("# Written by testenv.StartNginx for one test run.\n")
	b.WriteString("daemon off;\n")
	b.WriteString("worker_processes 1;\n")
	fmt.Fprintf(&b, "worker_shutdown_timeout %ds;\n", int(nginxShutdownTimeout/time.Second))
	fmt.Fprintf(&b, "pid %s;\n", quote(dir, "nginx.pid"))
	fmt.Fprintf(&b, "error_log %s info;\n", quote(dir, "error.log"))
	if asRoot {
		// A root master otherwise runs its workers as an unprivileged user
		// (nobody in Debian's build), which cannot use the temp paths in
		// the private work directory.
		b.WriteString("user root;\n")
	}
	b.WriteString("events {\n    worker_connections 512;\n}\n")
	b.WriteString("http {\n")
	for _, kind := range []string{"client_body", "proxy", "fastcgi", "uwsgi", "scgi"} {
		fmt.Fprintf(&b, "    %s_temp_path %s;\n", kind, quote(dir, "temp", kind))
	}
	fmt.Fprintf(&b, "    include %s;\n", quote(renderedPath))
	b.WriteString("}\n")
	return b.String()
}

// prepareNginxDir creates the work directory and its temp directories.
func prepareNginxDir(dir string) error {
	for _, kind := range []string{"client_body", "proxy", "fastcgi", "uwsgi", "scgi"} {
		if err := os.MkdirAll(filepath.Join(dir, "temp", kind), 0o700); err != nil {
			return fmt.Errorf("create nginx temp directory: %w", err)
		}
	}
	return nil
}

// findNginx looks nginx up in PATH, then at /usr/sbin/nginx, which PATH
// often leaves out for non-root users.
func findNginx() (string, error) {
	if path, err := exec.LookPath("nginx"); err == nil {
		return path, nil
	}
	const debianPath = "/usr/sbin/nginx"
	if _, err := os.Stat(debianPath); err == nil {
		return debianPath, nil
	}
	return "", errors.New("nginx not found in PATH or at /usr/sbin/nginx: install nginx (Debian package nginx) to run these tests")
}

// pickLoopbackAddrs returns count distinct free 127.0.0.1 addresses. The
// ports are released before returning, so another process may take one
// before nginx binds it. StartNginx retries in that case.
func pickLoopbackAddrs(count int) ([]string, error) {
	addrs := make([]string, 0, count)
	for range count {
		listener, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return nil, fmt.Errorf("find a free loopback port: %w", err)
		}
		defer listener.Close()
		addrs = append(addrs, listener.Addr().String())
	}
	return addrs, nil
}

// nginxFailure prefixes err with summary and appends nginx's output. It also
// wraps errAddressInUse when the output shows a taken port.
func nginxFailure(summary string, err error, output string) error {
	output = strings.TrimSpace(output)
	if strings.Contains(output, "Address already in use") {
		err = errors.Join(errAddressInUse, err)
	}
	if output == "" {
		return fmt.Errorf("%s: %w", summary, err)
	}
	return fmt.Errorf("%s: %w\nnginx output:\n%s", summary, err, output)
}

// readFileTail returns up to the last 4 KiB of a file, or "" when it cannot
// be read, for error messages.
func readFileTail(path string) string {
	data, err := os.ReadFile(path)
	if err != nil {
		return ""
	}
	const maxTail = 4 << 10
	if len(data) > maxTail {
		data = data[len(data)-maxTail:]
	}
	return string(data)
}

// childPIDs returns the ids of the processes whose parent is parent, read
// from /proc. It returns nil where /proc is not available.
func childPIDs(parent int) []int {
	entries, err := os.ReadDir("/proc")
	if err != nil {
		return nil
	}
	parentID := strconv.Itoa(parent)
	var pids []int
	for _, entry := range entries {
		pid, err := strconv.Atoi(entry.Name())
		if err != nil {
			continue
		}
		stat, err := os.ReadFile(filepath.Join("/proc", entry.Name(), "stat"))
		if err != nil {
			continue
		}
		// The format is "pid (comm) state ppid ...". comm may contain spaces
		// and parentheses, so the fields are read after the last ")".
		end := bytes.LastIndexByte(stat, ')')
		if end < 0 {
			continue
		}
		fields := strings.Fields(string(stat[end+1:]))
		if len(fields) >= 2 && fields[1] == parentID {
			pids = append(pids, pid)
		}
	}
	return pids
}
