package e2e

import (
	"context"
	"fmt"
	"net/http"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/regclient/regclient/types/platform"

	"github.com/imgxfer/imgxfer/internal/testenv"
)

// faultEnv adds fault proxies to env. A copy's source requests go through the source
// proxy to the source registry. Its destination requests go through the front proxy to a
// dedicated nginx, whose upstream for prodHost is the back proxy in front of the
// destination registry:
//
//	imgxfer ─► source ─► src registry
//	imgxfer ─► front ─► nginx ─► back ─► prod registry
type faultEnv struct {
	*env
	front  *testenv.FaultProxy
	back   *testenv.FaultProxy
	source *testenv.FaultProxy
	proxy  *testenv.Nginx
	rules  string
}

func newFaultEnv(t *testing.T, frontRate int64) *faultEnv {
	t.Helper()
	f := &faultEnv{env: newEnv(t)}
	f.back = startFaultHop(t, testenv.FaultProxyOptions{Target: f.prod.URL})
	f.source = startFaultHop(t, testenv.FaultProxyOptions{Target: f.src.URL})
	f.proxy = f.startProxy(t, "fault-nginx")
	f.front = startFaultHop(t, testenv.FaultProxyOptions{Target: "http://" + f.proxy.HTTPAddr, BytesPerSecond: frontRate})
	f.rules = f.writeRules(t, "fault-rules.yaml", fmt.Sprintf(`routes:
  - hosts: [%s]
    proxy: %s
registries:
  - host: "%s"
    tls: disabled
`, prodHost, f.front.URL, f.source.Addr))
	return f
}

// startProxy starts an nginx whose only upstream, for prodHost, is the back proxy.
func (f *faultEnv) startProxy(t *testing.T, dirName string) *testenv.Nginx {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	certFile, keyFile := f.proxyCertificate(t)
	proxy, err := testenv.StartNginx(ctx, testenv.NginxOptions{
		Dir:            filepath.Join(f.dir, dirName),
		Upstreams:      map[string]string{prodHost: f.back.URL},
		TLSCertFile:    certFile,
		TLSKeyFile:     keyFile,
		UpstreamCAFile: f.caFile,
	})
	if err != nil {
		t.Fatalf("starting nginx: %v", err)
	}
	t.Cleanup(func() { _ = proxy.Stop() })
	return proxy
}

func startFaultHop(t *testing.T, opts testenv.FaultProxyOptions) *testenv.FaultProxy {
	t.Helper()
	hop, err := testenv.StartFaultProxy(opts)
	if err != nil {
		t.Fatalf("starting a fault proxy: %v", err)
	}
	t.Cleanup(func() {
		if err := hop.Close(); err != nil {
			t.Errorf("closing the fault proxy: %v", err)
		}
	})
	return hop
}

// runWith executes imgxfer like env.run, with extra environment variables.
func (e *env) runWith(t *testing.T, extraEnv []string, args ...string) result {
	t.Helper()
	return runCommand(t, append(e.commandEnv(), extraEnv...), imgxferBin, args...)
}

// injectedFor counts the faults that hop applied to requests for repo.
func injectedFor(hop *testenv.FaultProxy, repo string) int {
	n := 0
	for _, fault := range hop.Injected() {
		if strings.HasPrefix(fault.Path, "/v2/"+repo+"/") {
			n++
		}
	}
	return n
}

// faultCase is one scripted fault during a copy of a small image from SRC/repo:1 to
// prodHost/repo:1. The rule's Path is a pattern below /v2/repo/, so that cases running
// in parallel never share a rule.
type faultCase struct {
	name string
	repo string
	hop  func(f *faultEnv) *testenv.FaultProxy
	rule testenv.FaultRule
	env  []string
	// minSeconds is a lower bound on the copy's duration that shows a wait was honoured.
	minSeconds float64
	// wantError lists what the error line of a failed copy must contain.
	wantError []string
}

// copyWithFault copies the case's image through its fault and logs the figures.
func (f *faultEnv) copyWithFault(t *testing.T, c faultCase) (result, time.Duration, int) {
	t.Helper()
	started := time.Now()
	res := f.runWith(t, c.env, "copy", "--rules", f.rules, f.source.Addr+"/"+c.repo+":1", prodHost+"/"+c.repo+":1")
	elapsed := time.Since(started)
	injected := injectedFor(c.hop(f), c.repo)
	t.Logf("figures: fault=%q injected=%d exit=%d seconds=%.1f", c.name, injected, res.code, elapsed.Seconds())
	return res, elapsed, injected
}

func (c faultCase) scopedRule() testenv.FaultRule {
	rule := c.rule
	rule.Path = "^/v2/" + c.repo + "/" + rule.Path
	return rule
}

func front(f *faultEnv) *testenv.FaultProxy  { return f.front }
func back(f *faultEnv) *testenv.FaultProxy   { return f.back }
func source(f *faultEnv) *testenv.FaultProxy { return f.source }

// installRules gives every hop the rules of the cases that use it.
func (f *faultEnv) installRules(t *testing.T, cases []faultCase) {
	t.Helper()
	byHop := map[*testenv.FaultProxy][]testenv.FaultRule{}
	for _, c := range cases {
		hop := c.hop(f)
		byHop[hop] = append(byHop[hop], c.scopedRule())
	}
	for hop, rules := range byHop {
		if err := hop.SetRules(rules...); err != nil {
			t.Fatal(err)
		}
	}
}

func TestCopySurvivesTransientFaults(t *testing.T) {
	f := newFaultEnv(t, 0)
	cases := []faultCase{
		{name: "reset during blob upload to the proxy", repo: "t/upload-reset", hop: front,
			rule: testenv.FaultRule{Method: http.MethodPut, Path: "blobs/uploads/", Kind: testenv.FaultResetRequest, AfterBytes: 20000, Times: 1}},
		{name: "reset during blob upload behind the proxy", repo: "t/upload-reset-upstream", hop: back,
			rule: testenv.FaultRule{Method: http.MethodPut, Path: "blobs/uploads/", Kind: testenv.FaultResetRequest, AfterBytes: 20000, Times: 1}},
		{name: "reset during blob download", repo: "t/download-reset", hop: source,
			rule: testenv.FaultRule{Method: http.MethodGet, Path: "blobs/sha256:", Kind: testenv.FaultResetResponse, AfterBytes: 20000, Times: 1}},
		{name: "502 from the proxy", repo: "t/proxy-502", hop: front,
			rule: testenv.FaultRule{Method: http.MethodPut, Path: "manifests/", Kind: testenv.FaultStatus, Status: http.StatusBadGateway, Times: 2}},
		{name: "503 from the proxy", repo: "t/proxy-503", hop: front,
			rule: testenv.FaultRule{Method: http.MethodPut, Path: "manifests/", Kind: testenv.FaultStatus, Status: http.StatusServiceUnavailable, Times: 2}},
		{name: "503 from the registry", repo: "t/registry-503", hop: back,
			rule: testenv.FaultRule{Method: http.MethodHead, Path: "manifests/", Kind: testenv.FaultStatus, Status: http.StatusServiceUnavailable, Times: 1}},
		{name: "429 with Retry-After", repo: "t/rate-limit", hop: front, minSeconds: 1,
			rule: testenv.FaultRule{Method: http.MethodPut, Path: "manifests/", Kind: testenv.FaultStatus, Status: http.StatusTooManyRequests, Header: http.Header{"Retry-After": {"1"}}, Times: 1}},
		{name: "registry stalls before answering", repo: "t/stall-short", hop: back, minSeconds: 2,
			rule: testenv.FaultRule{Method: http.MethodPut, Path: "manifests/", Kind: testenv.FaultStall, Delay: 2 * time.Second, Times: 1}},
		{name: "download stalls past the idle timeout", repo: "t/stall-body", hop: source, env: []string{"IMGXFER_IDLE_TIMEOUT=1s"}, minSeconds: 1,
			rule: testenv.FaultRule{Method: http.MethodGet, Path: "blobs/sha256:", Kind: testenv.FaultStall, AfterBytes: 20000, Times: 1}},
	}
	pushed := map[string]testenv.Pushed{}
	for _, c := range cases {
		pushed[c.repo] = f.pushRandomIndex(t, c.repo+":1", "", "linux/amd64")
	}
	f.installRules(t, cases)

	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			res, elapsed, injected := f.copyWithFault(t, c)

			if res.code != 0 {
				t.Fatalf("copy failed with exit %d:\n%s", res.code, res.stderr)
			}
			if injected == 0 {
				for _, req := range c.hop(f).Requests() {
					if strings.HasPrefix(req.Path, "/v2/"+c.repo+"/") {
						t.Logf("the fault proxy saw %s %s", req.Method, req.Path)
					}
				}
				t.Fatal("the fault was never injected, so the case tested nothing")
			}
			if elapsed.Seconds() < c.minSeconds {
				t.Errorf("copy took %s, less than the %gs the fault makes it wait", elapsed, c.minSeconds)
			}
			if c.rule.Kind != testenv.FaultStall || c.rule.AfterBytes > 0 {
				if !strings.Contains(res.stderr, "registry request failed; retrying") {
					t.Errorf("the failure was not logged as a retry:\n%s", res.stderr)
				}
			}
			f.assertImage(t, f.prod, c.repo+":1", pushed[c.repo])
		})
	}
}

func TestCopyFailsCleanlyOnPersistentFaults(t *testing.T) {
	f := newFaultEnv(t, 0)
	cases := []faultCase{
		{name: "503 on every blob upload", repo: "p/upload-503", hop: front,
			rule:      testenv.FaultRule{Path: "blobs/uploads/.", Kind: testenv.FaultStatus, Status: http.StatusServiceUnavailable},
			wantError: []string{prodHost, "blob", "503"}},
		{name: "reset on every blob upload", repo: "p/upload-reset", hop: front,
			rule:      testenv.FaultRule{Path: "blobs/uploads/.", Kind: testenv.FaultResetRequest},
			wantError: []string{prodHost, "blob"}},
		{name: "502 on every manifest push behind the proxy", repo: "p/manifest-502", hop: back,
			rule:      testenv.FaultRule{Method: http.MethodPut, Path: "manifests/", Kind: testenv.FaultStatus, Status: http.StatusBadGateway},
			wantError: []string{prodHost, "manifest"}},
		{name: "429 on every manifest push", repo: "p/manifest-429", hop: front,
			rule:      testenv.FaultRule{Method: http.MethodPut, Path: "manifests/", Kind: testenv.FaultStatus, Status: http.StatusTooManyRequests, Header: http.Header{"Retry-After": {"1"}}},
			wantError: []string{prodHost, "manifest"}},
		{name: "stalled manifest push", repo: "p/manifest-stall", hop: back, env: []string{"IMGXFER_IDLE_TIMEOUT=1s"},
			rule:      testenv.FaultRule{Method: http.MethodPut, Path: "manifests/", Kind: testenv.FaultStall},
			wantError: []string{prodHost, "manifest", "sent and received nothing for 1s", "IMGXFER_IDLE_TIMEOUT"}},
		{name: "reset on every blob download", repo: "p/download-reset", hop: source,
			rule:      testenv.FaultRule{Method: http.MethodGet, Path: "blobs/sha256:", Kind: testenv.FaultResetResponse, AfterBytes: 1000},
			wantError: []string{"blob"}},
	}
	for _, c := range cases {
		f.pushRandomIndex(t, c.repo+":1", "", "linux/amd64")
	}
	f.installRules(t, cases)

	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			res, elapsed, injected := f.copyWithFault(t, c)

			if res.code == 0 {
				t.Fatalf("copy succeeded through a persistent fault:\n%s", res.stderr)
			}
			if injected < 2 {
				t.Errorf("%d faults injected, want the retries to meet the fault too", injected)
			}
			// Bounded retries: well under the 90s that runCommand allows.
			if elapsed > 45*time.Second {
				t.Errorf("copy took %s to give up", elapsed)
			}
			errs := errorLines(res.stderr)
			t.Logf("error line: %s", errs)
			if strings.Count(errs, "\n") != 1 {
				t.Errorf("want one error line, got:\n%s", res.stderr)
			}
			for _, want := range c.wantError {
				if !strings.Contains(errs, want) {
					t.Errorf("error line lacks %q:\n%s", want, errs)
				}
			}
			f.assertNoTag(t, f.prod, c.repo+":1")
		})
	}
}

// pushImage puts a single-platform image of layers random layers of size bytes each into
// the source.
func (f *faultEnv) pushImage(t *testing.T, repoTag string, layers int, size int64) testenv.Pushed {
	t.Helper()
	amd64, err := platform.Parse("linux/amd64")
	if err != nil {
		t.Fatal(err)
	}
	spec := testenv.RandomImage(time.Now().UnixNano(), []platform.Platform{amd64}, layers, size)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	pushed, err := testenv.PushIndex(ctx, f.srcClient, f.src.Addr+"/"+repoTag, spec, "")
	if err != nil {
		t.Fatal(err)
	}
	return pushed
}

// TestCopiesSurviveProxyRestart restarts nginx, as a rollout would, while four copies
// run through it: SIGTERM makes nginx close every connection at once, and a new nginx
// takes over behind the front proxy. Each copy must finish or fail with one error line
// and no destination tag.
func TestCopiesSurviveProxyRestart(t *testing.T) {
	f := newFaultEnv(t, 2<<20)
	repos := []string{"r/a", "r/b", "r/c", "r/d"}
	pushed := map[string]testenv.Pushed{}
	for _, repo := range repos {
		pushed[repo] = f.pushImage(t, repo+":1", 3, 512<<10)
	}

	running := map[string]*runningCommand{}
	for _, repo := range repos {
		running[repo] = f.start(t, "copy", "--rules", f.rules, f.source.Addr+"/"+repo+":1", prodHost+"/"+repo+":1")
	}
	f.restartProxyDuringUploads(t, repos, "fault-nginx-restarted")

	succeeded, retried := 0, 0
	for _, repo := range repos {
		code := running[repo].wait(t, 60*time.Second)
		stderr := running[repo].stderr.String()
		if strings.Contains(stderr, "registry request failed; retrying") {
			retried++
		}
		if code == 0 {
			succeeded++
			f.assertImage(t, f.prod, repo+":1", pushed[repo])
			continue
		}
		t.Logf("copy of %s failed with exit %d: %s", repo, code, errorLines(stderr))
		if strings.Count(errorLines(stderr), "\n") != 1 {
			t.Errorf("copy of %s: want one error line, got:\n%s", repo, stderr)
		}
		f.assertNoTag(t, f.prod, repo+":1")
	}
	t.Logf("figures: proxy restart under %d copies: %d retried, %d completed", len(repos), retried, succeeded)
	if retried == 0 {
		t.Error("no copy met the restart, so the test showed nothing")
	}
}

// uploadsUnderWay counts the repositories for which hop has seen a blob upload.
func uploadsUnderWay(hop *testenv.FaultProxy, repos []string) int {
	n := 0
	for _, repo := range repos {
		for _, req := range hop.Requests() {
			if req.Method == http.MethodPut && strings.HasPrefix(req.Path, "/v2/"+repo+"/blobs/uploads/") {
				n++
				break
			}
		}
	}
	return n
}
