package e2e

import (
	"context"
	"errors"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/regclient/regclient/types/errs"
	"github.com/regclient/regclient/types/manifest"
	"github.com/regclient/regclient/types/mediatype"
	"github.com/regclient/regclient/types/platform"
	"github.com/regclient/regclient/types/ref"

	"github.com/imgxfer/imgxfer/internal/testenv"
)

func TestCopyMultiArchThroughProxy(t *testing.T) {
	e := newEnv(t)
	pushed := e.pushRandomIndex(t, "team/app:1.4", mediatype.OCI1ManifestList, "linux/amd64", "linux/arm64")

	out := e.copyJSON(t, "--rules", e.rulesFile, e.src.Addr+"/team/app:1.4", prodHost+"/team/app:1.4")
	assertAllThroughProxy(t, e.prod.Requests(), prodHost)
	assertAllDirect(t, e.src)

	if out.SourceDigest != pushed.Index.Digest.String() {
		t.Errorf("sourceDigest = %s, want %s", out.SourceDigest, pushed.Index.Digest)
	}
	if out.DestinationDigest != pushed.Index.Digest.String() {
		t.Errorf("destinationDigest = %s, want the source index digest %s", out.DestinationDigest, pushed.Index.Digest)
	}
	if out.Destination != prodHost+"/team/app:1.4" {
		t.Errorf("destination = %q", out.Destination)
	}
	if out.BlobsCopied != len(pushed.Blobs) {
		t.Errorf("blobsCopied = %d, want %d", out.BlobsCopied, len(pushed.Blobs))
	}
	var wantBytes int64
	for _, b := range pushed.Blobs {
		wantBytes += b.Size
	}
	if out.BytesCopied != wantBytes {
		t.Errorf("bytesCopied = %d, want %d", out.BytesCopied, wantBytes)
	}

	e.assertImage(t, e.prod, "team/app:1.4", pushed)

	lines, err := e.nginx.AccessLogLines()
	if err != nil {
		t.Fatal(err)
	}
	if !containsLine(lines, prodHost, "PUT") || !containsLine(lines, prodHost, "/manifests/1.4") {
		t.Errorf("nginx access log lacks the proxied pushes for %s:\n%s", prodHost, strings.Join(lines, "\n"))
	}
}

func TestCopyHTTPSProxyToHTTPSUpstream(t *testing.T) {
	e := newEnv(t)
	pushed := e.pushRandomIndex(t, "team/db:2", mediatype.Docker2ManifestList, "linux/amd64", "linux/arm/v7", "windows/amd64")

	out := e.copyJSON(t, "--rules", e.rulesFile, e.src.Addr+"/team/db:2", secureHost+"/team/db:2")
	assertAllThroughProxy(t, e.secure.Requests(), secureHost)

	if out.DestinationDigest != pushed.Index.Digest.String() {
		t.Errorf("destinationDigest = %s, want %s", out.DestinationDigest, pushed.Index.Digest)
	}
	if out.MediaType != mediatype.Docker2ManifestList {
		t.Errorf("mediaType = %s, want the Docker manifest list type", out.MediaType)
	}
	e.assertImage(t, e.secure, "team/db:2", pushed)
}

func TestCopyWrongProxyCAFails(t *testing.T) {
	e := newEnv(t)
	e.pushRandomIndex(t, "team/app:1", "", "linux/amd64")

	otherCA, err := testenv.NewCA()
	if err != nil {
		t.Fatal(err)
	}
	wrongCA, err := testenv.WriteFile(e.dir, "wrong-ca.pem", otherCA.CertPEM())
	if err != nil {
		t.Fatal(err)
	}
	rules := e.writeRules(t, "wrong-ca.yaml", `routes:
  - hosts: [`+secureHost+`]
    proxy: https://`+e.nginx.HTTPSAddr+`
    tls: {ca_file: `+wrongCA+`}
registries:
  - host: "`+e.src.Addr+`"
    tls: disabled
`)
	res := e.run(t, "copy", "--rules", rules, e.src.Addr+"/team/app:1", secureHost+"/team/app:1")
	if res.code == 0 {
		t.Fatal("copy through a proxy with an untrusted certificate succeeded")
	}
	if !strings.Contains(res.stderr, "certificate") {
		t.Errorf("stderr does not explain the certificate failure:\n%s", res.stderr)
	}
	if n := len(e.secure.Requests()); n != 0 {
		t.Errorf("destination registry saw %d requests, want 0", n)
	}
}

func TestCopySinglePlatformImage(t *testing.T) {
	e := newEnv(t)
	amd64, err := platform.Parse("linux/amd64")
	if err != nil {
		t.Fatal(err)
	}
	spec := testenv.RandomImage(7, []platform.Platform{amd64}, 2, 32*1024)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	pushed, err := testenv.PushSingle(ctx, e.srcClient, e.src.Addr+"/team/tool:1", spec.Platforms[0], mediatype.OCI1Manifest)
	if err != nil {
		t.Fatal(err)
	}

	out := e.copyJSON(t, "--rules", e.rulesFile, e.src.Addr+"/team/tool:1", prodHost+"/team/tool:1")
	if out.DestinationDigest != pushed.Manifests[0].Digest.String() {
		t.Errorf("destinationDigest = %s, want the manifest digest %s", out.DestinationDigest, pushed.Manifests[0].Digest)
	}
	e.assertImage(t, e.prod, "team/tool:1", pushed)
}

func TestCopyPlatformSelection(t *testing.T) {
	e := newEnv(t)
	pushed := e.pushRandomIndex(t, "team/app:3", mediatype.OCI1ManifestList, "linux/amd64", "linux/arm64", "linux/arm/v7")
	src := e.src.Addr + "/team/app:3"

	t.Run("one platform copies its manifest", func(t *testing.T) {
		out := e.copyJSON(t, "--rules", e.rulesFile, "--platform", "linux/arm64", src, prodHost+"/team/app:3-arm64")
		arm64 := pushed.Manifests[1]
		if out.DestinationDigest != arm64.Digest.String() {
			t.Errorf("destinationDigest = %s, want the linux/arm64 manifest %s", out.DestinationDigest, arm64.Digest)
		}
		m := e.getManifest(t, e.prod, "team/app:3-arm64")
		if m.IsList() {
			t.Error("destination is an index, want a single manifest")
		}
	})

	t.Run("two platforms make a new index", func(t *testing.T) {
		out := e.copyJSON(t, "--rules", e.rulesFile, "--platform", "linux/amd64", "--platform", "linux/arm/v7", src, prodHost+"/team/app:3-two")
		if out.DestinationDigest == pushed.Index.Digest.String() {
			t.Error("destination kept the source index digest, want a new index")
		}
		m := e.getManifest(t, e.prod, "team/app:3-two")
		if m.GetDescriptor().Digest.String() != out.DestinationDigest {
			t.Errorf("reported digest %s, registry has %s", out.DestinationDigest, m.GetDescriptor().Digest)
		}
		index, ok := m.(manifest.Indexer)
		if !ok {
			t.Fatalf("destination is %s, want an index", m.GetDescriptor().MediaType)
		}
		list, err := index.GetManifestList()
		if err != nil {
			t.Fatal(err)
		}
		if len(list) != 2 || list[0].Digest != pushed.Manifests[0].Digest || list[1].Digest != pushed.Manifests[2].Digest {
			t.Errorf("new index lists %v, want linux/amd64 and linux/arm/v7", list)
		}
		for _, child := range list {
			e.headManifest(t, e.prod, "team/app@"+child.Digest.String())
		}
	})

	t.Run("unknown platform fails without writing", func(t *testing.T) {
		res := e.run(t, "copy", "--rules", e.rulesFile, "--platform", "linux/s390x", src, prodHost+"/team/app:3-none")
		if res.code != 2 {
			t.Errorf("exit code %d, want 2", res.code)
		}
		if !strings.Contains(res.stderr, "linux/s390x") || !strings.Contains(res.stderr, "linux/amd64") {
			t.Errorf("stderr should name the missing and the available platforms:\n%s", res.stderr)
		}
		e.assertNoTag(t, e.prod, "team/app:3-none")
	})
}

func TestCopyRejectedByProxyAllowlist(t *testing.T) {
	e := newEnv(t)
	e.pushRandomIndex(t, "team/app:1", "", "linux/amd64")
	rules := e.writeRules(t, "unlisted.yaml", `routes:
  - hosts: [unlisted.prod.test]
    proxy: http://`+e.nginx.HTTPAddr+`
registries:
  - host: "`+e.src.Addr+`"
    tls: disabled
`)
	before := len(e.prod.Requests()) + len(e.secure.Requests())

	started := time.Now()
	res := e.run(t, "copy", "--rules", rules, e.src.Addr+"/team/app:1", "unlisted.prod.test/team/app:1")
	if res.code != 6 {
		t.Errorf("exit code %d, want 6 (network or route failure)\n%s", res.code, res.stderr)
	}
	if !strings.Contains(res.stderr, "unlisted.prod.test") || !strings.Contains(res.stderr, "allowlist") {
		t.Errorf("stderr should name the rejected host and the allowlist:\n%s", res.stderr)
	}
	if lines := strings.Count(strings.TrimSpace(errorLines(res.stderr)), "\n"); lines != 0 {
		t.Errorf("want one error line, got:\n%s", errorLines(res.stderr))
	}
	if after := len(e.prod.Requests()) + len(e.secure.Requests()); after != before {
		t.Errorf("a rejected request reached a registry: %d requests before, %d after", before, after)
	}
	t.Logf("rejected copy failed after %s", time.Since(started))
}

func TestProxyRejectsRawRequests(t *testing.T) {
	e := newEnv(t)
	tests := []struct {
		name   string
		header string // "" sends no header
		want   int
	}{
		{"no header", "", http.StatusBadRequest},
		{"host outside the allowlist", "elsewhere.test", http.StatusForbidden},
		{"loopback address of an upstream", e.prod.Addr, http.StatusForbidden},
		{"allowlisted host with a path", prodHost + "/v2/", http.StatusForbidden},
		{"allowlisted host with userinfo", "user@" + prodHost, http.StatusForbidden},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			before := len(e.prod.Requests())
			req, err := http.NewRequest(http.MethodGet, "http://"+e.nginx.HTTPAddr+"/v2/", nil)
			if err != nil {
				t.Fatal(err)
			}
			if tt.header != "" {
				req.Header.Set("Mesh", tt.header)
			}
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			resp.Body.Close()
			if resp.StatusCode != tt.want {
				t.Errorf("status %d, want %d", resp.StatusCode, tt.want)
			}
			if resp.Header.Get("Mesh-Proxy-Error") == "" {
				t.Error("rejection lacks the Mesh-Proxy-Error header that the client reports")
			}
			if after := len(e.prod.Requests()); after != before {
				t.Errorf("the rejected request reached the registry")
			}
		})
	}
}

func TestCopyBadInput(t *testing.T) {
	e := newEnv(t)
	badRules := e.writeRules(t, "bad.yaml", "routes:\n  - hosts: [a.test]\n    proxy: a.test:1\n")
	// The references name 127.0.0.1:1, where nothing listens, so that a check that
	// wrongly runs after a network request fails fast and stays on loopback.
	src, dst := "127.0.0.1:1/a/b:1", "127.0.0.1:1/c/d:1"
	tests := []struct {
		name string
		args []string
		code int
		want []string
	}{
		{"missing DEST", []string{"copy", src}, 2, []string{"2 arguments"}},
		{"flag after arguments", []string{"copy", src, dst, "--platform", "linux/amd64"}, 2, []string{`"--platform"`, "before SRC"}},
		{"bad reference", []string{"copy", "Not A Ref", dst}, 2, []string{`"Not A Ref"`, "[registry/]repository"}},
		{"bad platform", []string{"copy", "--platform", "linux", src, dst}, 2, []string{`"linux"`, "os/arch"}},
		{"bad format", []string{"copy", "--format", "yaml", src, dst}, 2, []string{`"yaml"`, "text or json"}},
		{"bad rules file", []string{"copy", "--rules", badRules, src, dst}, 2, []string{badRules + ":3:", "routes[0].proxy"}},
		{"missing rules file", []string{"copy", "--rules", e.dir + "/none.yaml", src, dst}, 2, []string{"none.yaml"}},
		{"bad proxy flag", []string{"copy", "--proxy", "ftp://p:1", src, dst}, 2, []string{`--proxy "ftp://p:1"`}},
		{"bad log level", []string{"--log-level", "loud", "copy", src, dst}, 2, []string{`"loud"`}},
		{"missing source image", []string{"copy", "--rules", e.rulesFile, e.src.Addr + "/no/such:1", prodHost + "/no/such:1"}, 5, []string{"no/such"}},
		{"unreachable source registry", []string{"--log-level", "error", "copy", src, dst}, 6, []string{"127.0.0.1:1"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			res := e.run(t, tt.args...)
			if res.code != tt.code {
				t.Errorf("exit code %d, want %d\nstderr:\n%s", res.code, tt.code, res.stderr)
			}
			errs := errorLines(res.stderr)
			if strings.Count(errs, "\n") != 1 {
				t.Errorf("want exactly one error line, got:\n%s", res.stderr)
			}
			for _, want := range tt.want {
				if !strings.Contains(errs, want) {
					t.Errorf("error lacks %q:\n%s", want, errs)
				}
			}
			if res.stdout != "" {
				t.Errorf("stdout is not empty on failure: %q", res.stdout)
			}
		})
	}
}

func TestCopyTraceLogShowsRouting(t *testing.T) {
	e := newEnv(t)
	e.pushRandomIndex(t, "team/app:1", "", "linux/amd64")

	res := e.run(t, "--log-level", "trace", "copy", "--rules", e.rulesFile, e.src.Addr+"/team/app:1", prodHost+"/team/app:1")
	if res.code != 0 {
		t.Fatalf("copy failed: %s", res.stderr)
	}
	if !strings.Contains(res.stderr, "routing request through proxy") || !strings.Contains(res.stderr, "host="+prodHost) {
		t.Errorf("trace log lacks the routing decision for %s:\n%s", prodHost, res.stderr)
	}
	if !strings.Contains(res.stderr, "sending request direct") {
		t.Errorf("trace log lacks the direct decision for the source")
	}
	if !strings.Contains(res.stderr, "reg http request") {
		t.Errorf("trace log lacks regclient's request lines, so the slog bridge is broken")
	}
}

// assertImage checks that the registry holds the pushed image under repoTag, by its digest,
// with every manifest and blob.
func (e *env) assertImage(t *testing.T, r *testenv.Registry, repoTag string, pushed testenv.Pushed) {
	t.Helper()
	want := pushed.Index
	if want.Digest == "" {
		want = pushed.Manifests[0] // a single-platform image
	}
	top := e.headManifest(t, r, repoTag)
	if top.GetDescriptor().Digest != want.Digest {
		t.Errorf("%s has digest %s, want %s", repoTag, top.GetDescriptor().Digest, want.Digest)
	}
	repo := strings.SplitN(repoTag, ":", 2)[0]
	for _, m := range pushed.Manifests {
		e.headManifest(t, r, repo+"@"+m.Digest.String())
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	for _, b := range pushed.Blobs {
		rf, err := ref.New(r.Addr + "/" + repo)
		if err != nil {
			t.Fatal(err)
		}
		head, err := e.dstClient.BlobHead(ctx, rf, b)
		if err != nil {
			t.Errorf("blob %s missing in %s: %v", b.Digest, repo, err)
			continue
		}
		head.Close()
	}
}

func (e *env) headManifest(t *testing.T, r *testenv.Registry, repoRef string) manifest.Manifest {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	rf, err := ref.New(r.Addr + "/" + repoRef)
	if err != nil {
		t.Fatal(err)
	}
	m, err := e.dstClient.ManifestHead(ctx, rf)
	if err != nil {
		t.Fatalf("manifest %s missing: %v", repoRef, err)
	}
	return m
}

func (e *env) getManifest(t *testing.T, r *testenv.Registry, repoRef string) manifest.Manifest {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	rf, err := ref.New(r.Addr + "/" + repoRef)
	if err != nil {
		t.Fatal(err)
	}
	m, err := e.dstClient.ManifestGet(ctx, rf)
	if err != nil {
		t.Fatalf("manifest %s missing: %v", repoRef, err)
	}
	return m
}

func (e *env) assertNoTag(t *testing.T, r *testenv.Registry, repoTag string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	rf, err := ref.New(r.Addr + "/" + repoTag)
	if err != nil {
		t.Fatal(err)
	}
	_, err = e.dstClient.ManifestHead(ctx, rf)
	if !errors.Is(err, errs.ErrNotFound) {
		t.Errorf("%s exists or failed oddly (%v), want not found", repoTag, err)
	}
}

// assertAllThroughProxy checks that every request a registry served came from nginx,
// which sets Host to the name the client used. A direct request would carry the
// registry's loopback address.
func assertAllThroughProxy(t *testing.T, requests []testenv.RequestRecord, host string) {
	t.Helper()
	if len(requests) == 0 {
		t.Fatal("registry served no requests")
	}
	for _, req := range requests {
		if req.Host != host {
			t.Errorf("%s %s arrived with Host %q, want %q (through the proxy)", req.Method, req.Path, req.Host, host)
		}
	}
}

func assertAllDirect(t *testing.T, r *testenv.Registry) {
	t.Helper()
	for _, req := range r.Requests() {
		if req.Host != r.Addr {
			t.Errorf("source registry request %s %s arrived with Host %q, want its own address", req.Method, req.Path, req.Host)
		}
	}
}

func containsLine(lines []string, parts ...string) bool {
	for _, line := range lines {
		all := true
		for _, p := range parts {
			all = all && strings.Contains(line, p)
		}
		if all {
			return true
		}
	}
	return false
}

// errorLines returns the lines of stderr that imgxfer printed as its final error, leaving
// out log lines.
func errorLines(stderr string) string {
	var b strings.Builder
	for _, line := range strings.Split(stderr, "\n") {
		if strings.HasPrefix(line, "imgxfer: ") {
			b.WriteString(line + "\n")
		}
	}
	return b.String()
}

// TestCopyProxyFlagFromOCILayout copies into an OCI layout directory, then from it with
// --proxy and no rules file, which routes only the destination's registry.
func TestCopyProxyFlagFromOCILayout(t *testing.T) {
	e := newEnv(t)
	pushed := e.pushRandomIndex(t, "team/oci:1", mediatype.OCI1ManifestList, "linux/amd64", "linux/arm64")
	layout := "ocidir://" + e.dir + "/layout:1"

	toLayout := e.copyJSON(t, "--rules", e.rulesFile, e.src.Addr+"/team/oci:1", layout)
	if toLayout.DestinationDigest != pushed.Index.Digest.String() {
		t.Fatalf("layout digest %s, want %s", toLayout.DestinationDigest, pushed.Index.Digest)
	}

	out := e.copyJSON(t, "--proxy", "http://"+e.nginx.HTTPAddr, layout, prodHost+"/team/oci:1")
	assertAllThroughProxy(t, e.prod.Requests(), prodHost)
	if out.DestinationDigest != pushed.Index.Digest.String() {
		t.Errorf("destinationDigest = %s, want %s", out.DestinationDigest, pushed.Index.Digest)
	}
	e.assertImage(t, e.prod, "team/oci:1", pushed)
}
