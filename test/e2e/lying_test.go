package e2e

import (
	"bytes"
	"context"
	"fmt"
	"net/http"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/imgxfer/imgxfer/internal/testenv"
)

// liarHost is a routed source registry whose responses a fault proxy falsifies. nginx
// forwards it to the fault proxy, which forwards to the real source registry.
const liarHost = "liar.prod.test"

// oversizedManifest is larger than regclient v0.11.7's 8 MiB limit for pulled manifests.
var oversizedManifest = bytes.Repeat([]byte(" "), 9<<20)

func TestLyingRegistryIsRejected(t *testing.T) {
	e := newEnv(t)
	liar := startFaultHop(t, testenv.FaultProxyOptions{Target: e.src.URL})
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	certFile, keyFile := e.proxyCertificate(t)
	proxy, err := testenv.StartNginx(ctx, testenv.NginxOptions{
		Dir:            filepath.Join(e.dir, "liar-nginx"),
		Upstreams:      map[string]string{liarHost: liar.URL, prodHost: e.prod.URL},
		TLSCertFile:    certFile,
		TLSKeyFile:     keyFile,
		UpstreamCAFile: e.caFile,
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = proxy.Stop() })
	rules := e.writeRules(t, "liar-rules.yaml", fmt.Sprintf("routes:\n  - hosts: [%s, %s]\n    proxy: http://%s\n", liarHost, prodHost, proxy.HTTPAddr))

	manifestHeader := http.Header{"Content-Type": {"application/vnd.oci.image.manifest.v1+json"}}
	withLength := manifestHeader.Clone()
	withLength.Set("Content-Length", strconv.Itoa(len(oversizedManifest)))
	cases := []faultCase{
		{name: "blob that does not match its digest", repo: "l/digest",
			rule:      testenv.FaultRule{Method: http.MethodGet, Path: "blobs/sha256:", Kind: testenv.FaultCorruptBody, AfterBytes: 1000},
			wantError: []string{"digest mismatch"}},
		{name: "Content-Length shorter than the blob", repo: "l/short",
			rule:      testenv.FaultRule{Method: http.MethodGet, Path: "blobs/sha256:", Kind: testenv.FaultContentLength, ContentLength: 1000},
			wantError: []string{"failed to get blob", liarHost}},
		{name: "Content-Length longer than the blob", repo: "l/long",
			rule:      testenv.FaultRule{Method: http.MethodGet, Path: "blobs/sha256:", Kind: testenv.FaultContentLength, ContentLength: 1 << 20},
			wantError: []string{"failed to get blob", liarHost}},
		{name: "manifest over the size limit", repo: "l/huge",
			rule:      testenv.FaultRule{Method: http.MethodGet, Path: "manifests/1$", Kind: testenv.FaultStatus, Status: http.StatusOK, Header: withLength, Body: oversizedManifest},
			wantError: []string{"manifest too large", "limit 8388608"}},
		{name: "manifest over the size limit without Content-Length", repo: "l/huge-chunked",
			rule:      testenv.FaultRule{Method: http.MethodGet, Path: "manifests/1$", Kind: testenv.FaultStatus, Status: http.StatusOK, Header: manifestHeader, Body: oversizedManifest},
			wantError: []string{"read limit exceeded", liarHost}},
		{name: "redirect loop", repo: "l/loop",
			rule:      testenv.FaultRule{Method: http.MethodGet, Path: "blobs/", Kind: testenv.FaultStatus, Status: http.StatusTemporaryRedirect, Header: http.Header{"Location": {"./loop"}}},
			wantError: []string{"redirect loop", liarHost}},
		{name: "redirect to a host no route covers", repo: "l/unrouted",
			rule:      testenv.FaultRule{Method: http.MethodGet, Path: "blobs/sha256:", Kind: testenv.FaultStatus, Status: http.StatusTemporaryRedirect, Header: http.Header{"Location": {"https://storage.unrouted.test/blob"}}},
			wantError: []string{liarHost + " redirected GET", "storage.unrouted.test, which no route covers", "add storage.unrouted.test to the hosts of the route"}},
	}
	var scoped []testenv.FaultRule
	for _, c := range cases {
		e.pushRandomIndex(t, c.repo+":1", "", "linux/amd64")
		scoped = append(scoped, c.scopedRule())
	}
	if err := liar.SetRules(scoped...); err != nil {
		t.Fatal(err)
	}

	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			started := time.Now()
			res := e.run(t, "copy", "--rules", rules, liarHost+"/"+c.repo+":1", prodHost+"/"+c.repo+":1")
			elapsed := time.Since(started)
			errs := errorLines(res.stderr)
			t.Logf("figures: lie=%q injected=%d exit=%d seconds=%.1f", c.name, injectedFor(liar, c.repo), res.code, elapsed.Seconds())
			t.Logf("error line: %s", errs)

			if res.code == 0 {
				t.Fatalf("copy from a lying registry succeeded:\n%s", res.stderr)
			}
			if injectedFor(liar, c.repo) == 0 {
				t.Fatal("the lie was never told, so the case tested nothing")
			}
			if elapsed > 30*time.Second {
				t.Errorf("rejecting the lie took %s", elapsed)
			}
			if strings.Count(errs, "\n") != 1 {
				t.Errorf("want one error line, got:\n%s", res.stderr)
			}
			for _, want := range c.wantError {
				if !strings.Contains(errs, want) {
					t.Errorf("error line lacks %q", want)
				}
			}
			e.assertNoTag(t, e.prod, c.repo+":1")
		})
	}
}
