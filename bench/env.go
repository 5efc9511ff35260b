package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/regclient/regclient"

	"github.com/imgxfer/imgxfer/internal/testenv"
)

// linkDelay is how long the slow link holds each request before forwarding it.
const linkDelay = 5 * time.Millisecond

// meshSourceHost is the name under which the clients reach the source through nginx.
const meshSourceHost = "source.bench.test"

// meshHost is the name under which the clients reach the destination through nginx. It
// does not resolve, so only nginx's allowlist maps it to the destination's loopback port.
const meshHost = "registry.bench.test"

// bench is the running environment: registries, nginx, binaries and their settings.
type bench struct {
	workDir    string // temporary directory for binaries, configuration and nginx
	storageDir string // parent of both registries' storage
	src, dst   *testenv.Registry
	nginx      *testenv.Nginx
	// slow forwards to dst after holding every request for linkDelay, as a distant
	// registry's round trip would.
	slow      *testenv.FaultProxy
	srcClient *regclient.RegClient
	raw       *rawCopier

	imgxfer   string
	self      string // this harness's executable, which -raw-copy runs as a process of its own
	crane     string // empty when the install failed
	regctl    string // empty when the install failed
	rulesFile string
	toolHome  string // HOME and configuration directories of the external tools
	skipped   []string
}

// setup builds imgxfer, installs the comparison tools and starts the servers. On error it
// returns what it has started so far, for close.
func setup(ctx context.Context, repoDir, toolsDir string) (*bench, error) {
	workDir, err := os.MkdirTemp("", "imgxfer-bench-")
	if err != nil {
		return nil, err
	}
	b := &bench{workDir: workDir, raw: newRawCopier(), toolHome: filepath.Join(workDir, "home")}
	if b.self, err = os.Executable(); err != nil {
		return b, err
	}

	storageParent := ""
	if info, err := os.Stat("/dev/shm"); err == nil && info.IsDir() {
		storageParent = "/dev/shm"
	}
	b.storageDir, err = os.MkdirTemp(storageParent, "imgxfer-bench-storage-")
	if err != nil {
		return b, err
	}

	fmt.Fprintln(os.Stderr, "building imgxfer")
	if b.imgxfer, err = buildImgxfer(ctx, repoDir, workDir); err != nil {
		return b, err
	}
	if err := b.findTools(ctx, toolsDir); err != nil {
		return b, err
	}

	startCtx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	if b.src, err = testenv.StartRegistry(startCtx, testenv.RegistryOptions{RootDir: filepath.Join(b.storageDir, "src")}); err != nil {
		return b, err
	}
	if b.dst, err = testenv.StartRegistry(startCtx, testenv.RegistryOptions{RootDir: filepath.Join(b.storageDir, "dst")}); err != nil {
		return b, err
	}
	if err := b.startNginx(startCtx); err != nil {
		return b, err
	}
	b.slow, err = testenv.StartFaultProxy(testenv.FaultProxyOptions{
		Target: b.dst.URL,
		Rules:  []testenv.FaultRule{{Kind: testenv.FaultStall, Delay: linkDelay}},
	})
	if err != nil {
		return b, fmt.Errorf("start the slow link: %w", err)
	}
	b.srcClient = testenv.NewClient(b.src)

	rules := fmt.Sprintf(`version: 1
routes:
  - hosts: [%s, %s]
    proxy: http://%s
registries:
  - host: "%s"
    tls: disabled
  - host: "%s"
    tls: disabled
  - host: "%s"
    tls: disabled
`, meshHost, meshSourceHost, b.nginx.HTTPAddr, b.src.Addr, b.dst.Addr, b.slow.Addr)
	if b.rulesFile, err = testenv.WriteFile(workDir, "rules.yaml", []byte(rules)); err != nil {
		return b, err
	}
	if err := b.configureRegctl(ctx); err != nil {
		return b, err
	}
	return b, nil
}

// findTools takes crane and regctl from toolsDir, or installs them. A tool that fails to
// install is skipped with its reason recorded, and the benchmark goes on without it.
func (b *bench) findTools(ctx context.Context, toolsDir string) error {
	if toolsDir != "" {
		for _, name := range []string{"crane", "regctl"} {
			path := filepath.Join(toolsDir, name)
			if _, err := os.Stat(path); err != nil {
				b.skipped = append(b.skipped, fmt.Sprintf("%s: not found in -tools-dir: %v", name, err))
				continue
			}
			if name == "crane" {
				b.crane = path
			} else {
				b.regctl = path
			}
		}
		return nil
	}

	binDir := filepath.Join(b.workDir, "tools")
	if err := os.MkdirAll(binDir, 0o755); err != nil {
		return err
	}
	for _, module := range []string{craneModule, regctlModule} {
		fmt.Fprintf(os.Stderr, "installing %s\n", module)
		path, err := installTool(ctx, binDir, module)
		if err != nil {
			fmt.Fprintf(os.Stderr, "skipping: %v\n", err)
			b.skipped = append(b.skipped, err.Error())
			continue
		}
		if module == craneModule {
			b.crane = path
		} else {
			b.regctl = path
		}
	}
	return nil
}

func (b *bench) startNginx(ctx context.Context) error {
	ca, err := testenv.NewCA()
	if err != nil {
		return err
	}
	caFile, err := testenv.WriteFile(b.workDir, "ca.pem", ca.CertPEM())
	if err != nil {
		return err
	}
	certPEM, keyPEM, err := ca.Issue("127.0.0.1", "mesh-proxy.test")
	if err != nil {
		return err
	}
	certFile, err := testenv.WriteFile(b.workDir, "proxy.pem", certPEM)
	if err != nil {
		return err
	}
	keyFile, err := testenv.WriteFile(b.workDir, "proxy-key.pem", keyPEM)
	if err != nil {
		return err
	}

	b.nginx, err = testenv.StartNginx(ctx, testenv.NginxOptions{
		Dir:            filepath.Join(b.workDir, "nginx"),
		Upstreams:      map[string]string{meshHost: b.dst.URL, meshSourceHost: b.src.URL},
		TLSCertFile:    certFile,
		TLSKeyFile:     keyFile,
		UpstreamCAFile: caFile,
	})
	if err != nil {
		return fmt.Errorf("start nginx: %w", err)
	}
	return nil
}

// configureRegctl marks both registries as plain HTTP in regctl's private configuration.
func (b *bench) configureRegctl(ctx context.Context) error {
	if b.regctl == "" {
		return nil
	}
	for _, addr := range []string{b.src.Addr, b.dst.Addr, b.slow.Addr} {
		if _, err := runTool(ctx, toolEnv(b.toolHome), b.regctl, "registry", "set", "--tls", "disabled", addr); err != nil {
			return err
		}
	}
	return nil
}

// close stops nginx and the registries and removes the work and storage directories.
func (b *bench) close() {
	var errs []error
	if b.slow != nil {
		errs = append(errs, b.slow.Close())
	}
	if b.nginx != nil {
		errs = append(errs, b.nginx.Stop())
	}
	for _, r := range []*testenv.Registry{b.src, b.dst} {
		if r != nil {
			errs = append(errs, r.Close())
		}
	}
	if b.storageDir != "" {
		errs = append(errs, os.RemoveAll(b.storageDir))
	}
	errs = append(errs, os.RemoveAll(b.workDir))
	if err := errors.Join(errs...); err != nil {
		fmt.Fprintf(os.Stderr, "bench: cleanup: %v\n", err)
	}
}
