// Command demo shows imgxfer's main job on one machine, with loopback traffic only. It
// packs imgxfer itself, cross-compiled for linux/amd64 and linux/arm64, as a two-platform
// image in a source registry, then copies it with the imgxfer binary through nginx, run
// from the configuration that imgxfer generates, into a registry that the client knows only by
// a name that does not resolve. It prints what arrived, runs the copied binary for this
// machine's platform, and stops everything it started.
//
// Run it from the repository root with `make demo` or `go run ./test/demo`.
package main

import (
	"archive/tar"
	"compress/gzip"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"runtime"
	"strings"
	"syscall"

	"github.com/dustin/go-humanize"
	"github.com/regclient/regclient"
	"github.com/regclient/regclient/types/descriptor"
	"github.com/regclient/regclient/types/manifest"
	"github.com/regclient/regclient/types/mediatype"
	"github.com/regclient/regclient/types/platform"
	"github.com/regclient/regclient/types/ref"

	"github.com/imgxfer/imgxfer/internal/testenv"
)

// prodHost is the destination registry's name. Nothing resolves it; only nginx's
// allowlist maps it to the registry's loopback port.
const prodHost = "registry.prod.test"

const imageRepo = "demo/imgxfer"

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := run(ctx)
	stop()
	if err != nil {
		fmt.Fprintf(os.Stderr, "demo: %v\n", err)
		os.Exit(1)
	}
}

func run(ctx context.Context) error {
	repoDir, err := os.Getwd()
	if err != nil {
		return err
	}
	if _, err := os.Stat(filepath.Join(repoDir, "rules.yaml.example")); err != nil {
		return fmt.Errorf("run the demo from the repository root: %w", err)
	}
	work, err := os.MkdirTemp("", "imgxfer-demo-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(work)

	step("Building imgxfer for this machine and, as image content, for linux/amd64 and linux/arm64")
	hostBinary := filepath.Join(work, "imgxfer")
	if err := goBuild(ctx, repoDir, hostBinary, runtime.GOOS, runtime.GOARCH); err != nil {
		return err
	}
	var contents []testenv.PlatformBinary
	for _, arch := range []string{"amd64", "arm64"} {
		out := filepath.Join(work, "linux-"+arch, "imgxfer")
		if err := goBuild(ctx, repoDir, out, "linux", arch); err != nil {
			return err
		}
		contents = append(contents, testenv.PlatformBinary{Platform: platform.Platform{OS: "linux", Architecture: arch}, Path: out})
	}

	step("Starting two registries and nginx on 127.0.0.1")
	src, err := testenv.StartRegistry(ctx, testenv.RegistryOptions{RootDir: filepath.Join(work, "src-storage")})
	if err != nil {
		return err
	}
	defer src.Close()
	dst, err := testenv.StartRegistry(ctx, testenv.RegistryOptions{RootDir: filepath.Join(work, "dst-storage")})
	if err != nil {
		return err
	}
	defer dst.Close()

	proxy, err := startProxy(ctx, repoDir, work, dst)
	if err != nil {
		return err
	}
	defer proxy.Stop()
	fmt.Printf("  source registry       %s (reached directly)\n", src.Addr)
	fmt.Printf("  destination registry  %s, known to the client only as %s\n", dst.Addr, prodHost)
	fmt.Printf("  nginx (PID %d)     http://%s, allowlist: %s -> %s\n", proxy.PID, proxy.HTTPAddr, prodHost, dst.URL)

	step("Pushing the two-platform image to the source registry")
	spec, err := testenv.BinaryImage(contents, "/usr/local/bin/imgxfer")
	if err != nil {
		return err
	}
	srcRef := src.Addr + "/" + imageRepo + ":v1"
	pushed, err := testenv.PushIndex(ctx, testenv.NewClient(src), srcRef, spec, mediatype.OCI1ManifestList)
	if err != nil {
		return err
	}
	fmt.Printf("  %s@%s\n", srcRef, pushed.Index.Digest)

	rulesFile := filepath.Join(work, "rules.yaml")
	rules := fmt.Sprintf("routes:\n  - hosts: [%s]\n    proxy: http://%s\nregistries:\n  - host: \"%s\"\n    tls: disabled\n",
		prodHost, proxy.HTTPAddr, src.Addr)
	if err := os.WriteFile(rulesFile, []byte(rules), 0o600); err != nil {
		return err
	}
	step("Rules file " + rulesFile)
	fmt.Print(indent(rules))

	dstRef := prodHost + "/" + imageRepo + ":v1"
	step("Copying: imgxfer copy --rules rules.yaml " + srcRef + " " + dstRef)
	copyCmd := exec.CommandContext(ctx, hostBinary, "copy", "--rules", rulesFile, srcRef, dstRef)
	// The environment proxy is a loopback port where nothing listens. Loopback traffic
	// bypasses it, and with it set regclient never resolves registry.prod.test in DNS
	// when it checks whether a host is local.
	copyCmd.Env = append(os.Environ(), "DOCKER_CONFIG="+filepath.Join(work, "docker"),
		"HTTP_PROXY=http://127.0.0.1:9", "HTTPS_PROXY=http://127.0.0.1:9", "NO_PROXY=")
	copyCmd.Stdout, copyCmd.Stderr = os.Stdout, os.Stderr
	if err := copyCmd.Run(); err != nil {
		return fmt.Errorf("imgxfer copy: %w", err)
	}

	step("What arrived in the destination registry (read directly from " + dst.Addr + ")")
	hostImage, err := showDestination(ctx, dst, pushed)
	if err != nil {
		return err
	}

	step("Requests that nginx forwarded, from its access log")
	if err := showAccessLog(proxy); err != nil {
		return err
	}

	step("A request naming a host outside the allowlist")
	if err := showRejection(ctx, proxy); err != nil {
		return err
	}

	if hostImage != nil {
		step("Running the copied imgxfer for " + runtime.GOOS + "/" + runtime.GOARCH + " from the destination registry")
		if err := runCopiedBinary(ctx, dst, *hostImage, work); err != nil {
			return err
		}
	}

	step("Stopping nginx and the registries")
	return nil
}

func step(title string) {
	fmt.Printf("\n==> %s\n", title)
}

func indent(text string) string {
	return "  " + strings.ReplaceAll(strings.TrimRight(text, "\n"), "\n", "\n  ") + "\n"
}

func goBuild(ctx context.Context, repoDir, out, goos, goarch string) error {
	cmd := exec.CommandContext(ctx, "go", "build", "-trimpath", "-ldflags", "-s -w", "-o", out, ".")
	cmd.Dir = repoDir
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0", "GOOS="+goos, "GOARCH="+goarch)
	cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("building imgxfer for %s/%s: %w", goos, goarch, err)
	}
	return nil
}

// startProxy starts nginx with a configuration generated for an allowlist that holds
// only the destination registry.
func startProxy(ctx context.Context, repoDir, work string, dst *testenv.Registry) (*testenv.Nginx, error) {
	ca, err := testenv.NewCA()
	if err != nil {
		return nil, err
	}
	certPEM, keyPEM, err := ca.Issue("127.0.0.1")
	if err != nil {
		return nil, err
	}
	certFile, err := testenv.WriteFile(work, "proxy.pem", certPEM)
	if err != nil {
		return nil, err
	}
	keyFile, err := testenv.WriteFile(work, "proxy-key.pem", keyPEM)
	if err != nil {
		return nil, err
	}
	caFile, err := testenv.WriteFile(work, "ca.pem", ca.CertPEM())
	if err != nil {
		return nil, err
	}
	return testenv.StartNginx(ctx, testenv.NginxOptions{
		RepoDir:        repoDir,
		Dir:            filepath.Join(work, "nginx"),
		Upstreams:      map[string]string{prodHost: dst.URL},
		TLSCertFile:    certFile,
		TLSKeyFile:     keyFile,
		UpstreamCAFile: caFile,
	})
}

// showDestination prints the index, platform manifests and layers found in the
// destination and returns the manifest descriptor for this machine's platform, if any.
func showDestination(ctx context.Context, dst *testenv.Registry, pushed testenv.Pushed) (*descriptor.Descriptor, error) {
	rc := testenv.NewClient(dst)
	indexRef, err := ref.New(dst.Addr + "/" + imageRepo + ":v1")
	if err != nil {
		return nil, err
	}
	index, err := rc.ManifestGet(ctx, indexRef)
	if err != nil {
		return nil, fmt.Errorf("reading the copied index: %w", err)
	}
	same := "same as the source"
	if index.GetDescriptor().Digest != pushed.Index.Digest {
		same = "DIFFERS from the source " + pushed.Index.Digest.String()
	}
	fmt.Printf("  %s:v1  %s\n  index %s (%s)\n", imageRepo, index.GetDescriptor().MediaType, index.GetDescriptor().Digest, same)

	indexer, ok := index.(manifest.Indexer)
	if !ok {
		return nil, fmt.Errorf("the copied image is not an index")
	}
	children, err := indexer.GetManifestList()
	if err != nil {
		return nil, err
	}

	var hostImage *descriptor.Descriptor
	for i := range children {
		child := children[i]
		m, err := rc.ManifestGet(ctx, indexRef.SetDigest(child.Digest.String()))
		if err != nil {
			return nil, fmt.Errorf("reading the %s manifest: %w", child.Platform, err)
		}
		fmt.Printf("  %-12s manifest %s\n", child.Platform, child.Digest)
		imager, ok := m.(manifest.Imager)
		if !ok {
			return nil, fmt.Errorf("the %s manifest has no layers", child.Platform)
		}
		config, err := imager.GetConfig()
		if err != nil {
			return nil, err
		}
		layers, err := imager.GetLayers()
		if err != nil {
			return nil, err
		}
		for _, blob := range append([]descriptor.Descriptor{config}, layers...) {
			head, err := rc.BlobHead(ctx, indexRef, blob)
			if err != nil {
				return nil, fmt.Errorf("blob %s of %s is missing: %w", blob.Digest, child.Platform, err)
			}
			head.Close()
			kind := "layer "
			if blob.Digest == config.Digest {
				kind = "config"
			}
			fmt.Printf("               %s %s %9s\n", kind, blob.Digest, humanize.IBytes(uint64(blob.Size)))
		}
		if child.Platform != nil && child.Platform.OS == runtime.GOOS && child.Platform.Architecture == runtime.GOARCH {
			hostImage = &children[i]
		}
	}
	return hostImage, nil
}

func showAccessLog(proxy *testenv.Nginx) error {
	lines, err := proxy.AccessLogLines()
	if err != nil {
		return err
	}
	counts := map[string]int{}
	for _, line := range lines {
		for _, method := range []string{"HEAD", "GET", "POST", "PUT", "PATCH"} {
			if strings.Contains(line, " method="+method+" ") {
				counts[method]++
				break
			}
		}
	}
	fmt.Printf("  %d requests for %s: %d HEAD, %d GET, %d POST, %d PUT, %d PATCH\n",
		len(lines), prodHost, counts["HEAD"], counts["GET"], counts["POST"], counts["PUT"], counts["PATCH"])
	if len(lines) > 0 {
		fmt.Printf("  last: %s\n", lines[len(lines)-1])
	}
	return nil
}

func showRejection(ctx context.Context, proxy *testenv.Nginx) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+proxy.HTTPAddr+"/v2/", nil)
	if err != nil {
		return err
	}
	req.Header.Set("mesh", "registry.elsewhere.test")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 512))
	fmt.Printf("  mesh: registry.elsewhere.test -> %s: %s", resp.Status, body)
	if resp.StatusCode != http.StatusForbidden {
		return fmt.Errorf("nginx answered %s for a host outside its allowlist, want 403", resp.Status)
	}
	return nil
}

// runCopiedBinary extracts the imgxfer executable from the copied image for this
// machine's platform and runs its version command.
func runCopiedBinary(ctx context.Context, dst *testenv.Registry, image descriptor.Descriptor, work string) error {
	rc := testenv.NewClient(dst)
	imageRef, err := ref.New(dst.Addr + "/" + imageRepo + "@" + image.Digest.String())
	if err != nil {
		return err
	}
	m, err := rc.ManifestGet(ctx, imageRef)
	if err != nil {
		return err
	}
	layers, err := m.(manifest.Imager).GetLayers()
	if err != nil || len(layers) == 0 {
		return fmt.Errorf("the %s image has no layers: %v", image.Platform, err)
	}

	out := filepath.Join(work, "from-registry", "imgxfer")
	if err := extractFile(ctx, rc, imageRef, layers[len(layers)-1], "usr/local/bin/imgxfer", out); err != nil {
		return err
	}
	cmd := exec.CommandContext(ctx, out, "version")
	cmd.Stdout, cmd.Stderr = os.Stdout, os.Stderr
	fmt.Printf("  $ %s version\n", out)
	return cmd.Run()
}

func extractFile(ctx context.Context, rc *regclient.RegClient, imageRef ref.Ref, layer descriptor.Descriptor, name, out string) error {
	blob, err := rc.BlobGet(ctx, imageRef, layer)
	if err != nil {
		return fmt.Errorf("downloading layer %s: %w", layer.Digest, err)
	}
	defer blob.Close()
	gz, err := gzip.NewReader(blob)
	if err != nil {
		return err
	}
	tr := tar.NewReader(gz)
	for {
		header, err := tr.Next()
		if errors.Is(err, io.EOF) {
			return fmt.Errorf("layer %s has no %s", layer.Digest, name)
		}
		if err != nil {
			return err
		}
		if strings.TrimPrefix(header.Name, "/") != name {
			continue
		}
		if err := os.MkdirAll(filepath.Dir(out), 0o755); err != nil {
			return err
		}
		f, err := os.OpenFile(out, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, 0o755)
		if err != nil {
			return err
		}
		if _, err := io.Copy(f, tr); err != nil {
			f.Close()
			return err
		}
		return f.Close()
	}
}
