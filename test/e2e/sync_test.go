package e2e

import (
	"encoding/json"
	"fmt"
	"net/http"
	"sort"
	"strings"
	"testing"

	"github.com/regclient/regclient/types/manifest"
	"github.com/regclient/regclient/types/mediatype"

	"github.com/imgxfer/imgxfer/internal/testenv"
)

// syncOutput mirrors one JSON line of `imgxfer sync --format json`.
type syncOutput struct {
	Origin            string            `json:"origin"`
	Status            string            `json:"status"`
	Source            string            `json:"source"`
	SourceDigest      string            `json:"sourceDigest"`
	Destination       string            `json:"destination"`
	DestinationDigest string            `json:"destinationDigest"`
	Platforms         []string          `json:"platforms"`
	Annotations       map[string]string `json:"annotations"`
	BytesCopied       int64             `json:"bytesCopied"`
	BlobsCopied       int               `json:"blobsCopied"`
	BlobsSkipped      int               `json:"blobsSkipped"`
	BlobsMounted      int               `json:"blobsMounted"`
	Error             string            `json:"error"`
	ExitCode          int               `json:"exitCode"`
	Plan              *struct {
		Blobs        int   `json:"blobs"`
		Bytes        int64 `json:"bytes"`
		BlobsPresent int   `json:"blobsPresent"`
	} `json:"plan"`
	Routes struct {
		Source      *syncRoute `json:"source"`
		Destination *syncRoute `json:"destination"`
	} `json:"routes"`
}

type syncRoute struct {
	Registry string `json:"registry"`
	Proxy    string `json:"proxy"`
	Header   string `json:"header"`
	Rule     string `json:"rule"`
}

// syncJSON runs `imgxfer sync --format json` and parses its lines by destination.
func (e *env) syncJSON(t *testing.T, args ...string) (result, map[string]syncOutput) {
	t.Helper()
	args = append([]string{"sync", "--format", "json"}, args...)
	res := e.run(t, args...)
	outputs := map[string]syncOutput{}
	for _, line := range strings.Split(strings.TrimSpace(res.stdout), "\n") {
		if line == "" {
			continue
		}
		var out syncOutput
		if err := json.Unmarshal([]byte(line), &out); err != nil {
			t.Fatalf("sync output line is not JSON: %v\n%s\nstderr:\n%s", err, line, res.stderr)
		}
		if _, dup := outputs[out.Destination]; dup {
			t.Fatalf("two results for %s", out.Destination)
		}
		outputs[out.Destination] = out
	}
	return res, outputs
}

// writesTo returns the requests that changed a registry's content.
func writesTo(requests []testenv.RequestRecord) []string {
	var writes []string
	for _, r := range requests {
		switch r.Method {
		case http.MethodPost, http.MethodPut, http.MethodPatch, http.MethodDelete:
			writes = append(writes, r.Method+" "+r.Path)
		}
	}
	return writes
}

func TestSyncMixedRoutes(t *testing.T) {
	e := newEnv(t)
	app10 := e.pushRandomIndex(t, "team/app:1.0", mediatype.OCI1ManifestList, "linux/amd64")
	app11 := e.pushRandomIndex(t, "team/app:1.1", mediatype.OCI1ManifestList, "linux/amd64")
	app20 := e.pushRandomIndex(t, "team/app:2.0", mediatype.OCI1ManifestList, "linux/amd64")
	base := e.pushRandomIndex(t, "team/base:3", mediatype.OCI1ManifestList, "linux/amd64", "linux/arm64")
	db := e.pushRandomIndex(t, "team/db:2", mediatype.Docker2ManifestList, "linux/amd64", "linux/arm/v7")
	tool := e.pushRandomIndex(t, "team/tool:1", mediatype.OCI1ManifestList, "linux/amd64")
	multi := e.pushRandomIndex(t, "team/multi:5", mediatype.OCI1ManifestList, "linux/amd64", "linux/arm64", "linux/arm/v7")

	src := e.src.Addr
	batchFile := e.writeRules(t, "images.yaml", fmt.Sprintf(`version: 1
defaults:
  destination_prefix: %[2]s/mirror
copies:
  # two tags through the HTTP route, chosen by pattern
  - source: %[1]s/team/app
    destination: %[2]s/team/app
    tag_patterns: ['1\..*']
  # the same image into two repositories of one registry: the second mounts
  - source: %[1]s/team/base:3
    destination: %[2]s/mirror/base
  - source: %[1]s/team/base:3
    destination: %[2]s/other/base:3
  # through the HTTPS route to an HTTPS upstream
  - source: %[1]s/team/db:2
    destination: %[3]s/team/db:2
  # destination from the default prefix: %[2]s/mirror/team/db:2
  - source: %[1]s/team/db:2
  # direct, within the source registry
  - source: %[1]s/team/tool:1
    destination: %[1]s/copies/tool:1
  - source: %[1]s/team/app
    destination: %[1]s/copies/app
    tags: ["2.0"]
  # two of three platforms, annotated: a new index
  - source: %[1]s/team/multi:5
    destination: %[2]s/team/multi:5
    platforms: [linux/amd64, linux/arm64]
    annotations: {org.opencontainers.image.source: "https://git.example.test/multi"}
  # fails: the source does not exist
  - source: %[1]s/team/nosuch:1
    destination: %[2]s/team/nosuch:1
`, src, prodHost, secureHost))

	// A dry run reads both sides, reports the routes and the plan, and writes nothing.
	for _, r := range []*testenv.Registry{e.src, e.prod, e.secure} {
		r.ResetRequests()
	}
	dry, planned := e.syncJSON(t, "--rules", e.rulesFile, "-f", batchFile, "--dry-run")
	if dry.code != 3 {
		t.Errorf("dry run exit code %d, want 3 for the missing source\nstderr:\n%s", dry.code, dry.stderr)
	}
	for _, r := range []*testenv.Registry{e.src, e.prod, e.secure} {
		if writes := writesTo(r.Requests()); len(writes) > 0 {
			t.Errorf("dry run wrote to registry %s: %v", r.Addr, writes)
		}
	}
	appPlan := planned[prodHost+"/team/app:1.0"]
	if appPlan.Status != "planned" || appPlan.Plan == nil || appPlan.Plan.Blobs != len(app10.Blobs) {
		t.Errorf("dry run result for team/app:1.0 = %+v, want planned with %d blobs", appPlan, len(app10.Blobs))
	}
	if route := appPlan.Routes.Destination; route == nil || route.Proxy != "http://"+e.nginx.HTTPAddr || route.Header != "mesh: "+prodHost {
		t.Errorf("dry run destination route = %+v, want the HTTP proxy with header mesh: %s", route, prodHost)
	}
	if route := appPlan.Routes.Source; route == nil || route.Proxy != "" {
		t.Errorf("dry run source route = %+v, want direct", route)
	}

	// The real run.
	for _, r := range []*testenv.Registry{e.src, e.prod, e.secure} {
		r.ResetRequests()
	}
	first, copied := e.syncJSON(t, "--rules", e.rulesFile, "-f", batchFile, "--parallel", "4")
	if first.code != 3 {
		t.Errorf("exit code %d, want 3 (some copies failed)\nstderr:\n%s", first.code, first.stderr)
	}
	if len(copied) != 10 {
		t.Fatalf("got %d results, want 10:\n%s", len(copied), first.stdout)
	}
	failed := copied[prodHost+"/team/nosuch:1"]
	if failed.Status != "failed" || failed.ExitCode != 5 || !strings.Contains(failed.Error, "team/nosuch") {
		t.Errorf("missing source result = %+v, want failed with exit code 5 naming the image", failed)
	}
	if !strings.HasSuffix(failed.Origin, "images.yaml:31") {
		t.Errorf("missing source origin = %q, want images.yaml:31", failed.Origin)
	}
	for dest, out := range copied {
		if dest != failed.Destination && out.Status != "copied" {
			t.Errorf("%s: status %q (%s), want copied", dest, out.Status, out.Error)
		}
	}
	if !strings.Contains(first.stderr, "copying image") || !strings.Contains(first.stderr, "copied image") {
		t.Errorf("without a terminal, stderr should log the start and end of each copy:\n%s", first.stderr)
	}
	if lines := errorLines(first.stderr); !strings.Contains(lines, "1 of 10 copies failed") {
		t.Errorf("final error should count the failures, got:\n%s", lines)
	}

	assertAllThroughProxy(t, e.prod.Requests(), prodHost)
	assertAllThroughProxy(t, e.secure.Requests(), secureHost)
	prodRequests := e.prod.Requests()
	e.assertImage(t, e.prod, "team/app:1.0", app10)
	e.assertImage(t, e.prod, "team/app:1.1", app11)
	e.assertNoTag(t, e.prod, "team/app:2.0")
	e.assertImage(t, e.prod, "mirror/base:3", base)
	e.assertImage(t, e.prod, "other/base:3", base)
	e.assertImage(t, e.secure, "team/db:2", db)
	e.assertImage(t, e.prod, "mirror/team/db:2", db)
	inSource := e.withSourceClient()
	inSource.assertImage(t, e.src, "copies/tool:1", tool)
	inSource.assertImage(t, e.src, "copies/app:2.0", app20)

	// Two platforms of three with an annotation make a new index, reported with its digest.
	multiOut := copied[prodHost+"/team/multi:5"]
	m := e.getManifest(t, e.prod, "team/multi:5")
	if multiOut.DestinationDigest == multi.Index.Digest.String() || m.GetDescriptor().Digest.String() != multiOut.DestinationDigest {
		t.Errorf("team/multi:5 digest %s (registry has %s), want a new index digest", multiOut.DestinationDigest, m.GetDescriptor().Digest)
	}
	annotator, ok := m.(manifest.Annotator)
	if !ok {
		t.Fatalf("team/multi:5 is %s, want an annotated index", m.GetDescriptor().MediaType)
	}
	annotations, _ := annotator.GetAnnotations()
	if annotations["org.opencontainers.image.source"] != "https://git.example.test/multi" {
		t.Errorf("team/multi:5 annotations = %v", annotations)
	}
	if index, ok := m.(manifest.Indexer); ok {
		list, _ := index.GetManifestList()
		if len(list) != 2 {
			t.Errorf("team/multi:5 lists %d manifests, want 2", len(list))
		}
	}

	// The base image went to two repositories of one registry: every blob was sent once,
	// and the other repository mounted it.
	uniqueBlobs := len(base.Blobs)
	var uploads, mounts int
	for _, r := range prodRequests {
		inBase := strings.HasPrefix(r.Path, "/v2/mirror/base/") || strings.HasPrefix(r.Path, "/v2/other/base/")
		switch {
		case inBase && r.Method == http.MethodPut && strings.Contains(r.Path, "/blobs/uploads/"):
			uploads++
		case inBase && r.Method == http.MethodPost && strings.Contains(r.RawQuery, "from=") && r.Status == http.StatusCreated:
			mounts++
		}
	}
	if uploads != uniqueBlobs || mounts != uniqueBlobs {
		t.Errorf("base image: %d blob uploads and %d mounts, want %d of each", uploads, mounts, uniqueBlobs)
	}
	baseMounted := copied[prodHost+"/mirror/base:3"].BlobsMounted + copied[prodHost+"/other/base:3"].BlobsMounted
	if baseMounted != uniqueBlobs {
		t.Errorf("results report %d mounted blobs for the base image, want %d", baseMounted, uniqueBlobs)
	}

	// Within the source registry, regclient mounts from the source repository.
	for _, r := range e.src.Requests() {
		if strings.HasPrefix(r.Path, "/v2/copies/") && r.Method == http.MethodPut && strings.Contains(r.Path, "/blobs/uploads/") {
			t.Errorf("a blob was uploaded within the source registry instead of mounted: %s %s", r.Method, r.Path)
		}
	}

	// A second run finds every destination up to date with one manifest HEAD per image.
	for _, r := range []*testenv.Registry{e.src, e.prod, e.secure} {
		r.ResetRequests()
	}
	logBefore, err := e.nginx.AccessLogLines()
	if err != nil {
		t.Fatal(err)
	}
	second, again := e.syncJSON(t, "--rules", e.rulesFile, "-f", batchFile)
	if second.code != 3 {
		t.Errorf("second run exit code %d, want 3\nstderr:\n%s", second.code, second.stderr)
	}
	for dest, out := range again {
		if dest != failed.Destination && (out.Status != "skipped" || out.BytesCopied != 0) {
			t.Errorf("second run: %s status %q with %d bytes, want skipped", dest, out.Status, out.BytesCopied)
		}
	}
	// The copy whose source is missing sends its destination HEAD too, because a copy
	// reads the destination's digest and the source's manifest at once.
	prodImages := []string{"team/app:1.0", "team/app:1.1", "mirror/base:3", "other/base:3", "mirror/team/db:2", "team/multi:5", "team/nosuch:1"}
	assertOneHeadPerImage(t, e.prod.Requests(), prodImages)
	assertOneHeadPerImage(t, e.secure.Requests(), []string{"team/db:2"})

	logAfter, err := e.nginx.AccessLogLines()
	if err != nil {
		t.Fatal(err)
	}
	proxied := logAfter[len(logBefore):]
	if len(proxied) != len(prodImages)+1 {
		t.Errorf("nginx logged %d requests on the second run, want %d manifest HEADs:\n%s", len(proxied), len(prodImages)+1, strings.Join(proxied, "\n"))
	}
	for _, line := range proxied {
		if !strings.Contains(line, "HEAD") {
			t.Errorf("nginx logged a request other than HEAD on the second run: %s", line)
		}
	}
}

// withSourceClient returns a copy of e whose assertions read the source registry.
func (e *env) withSourceClient() *env {
	copied := *e
	copied.dstClient = e.srcClient
	return &copied
}

// assertOneHeadPerImage checks that a registry served exactly one manifest HEAD for each
// image and nothing else.
func assertOneHeadPerImage(t *testing.T, requests []testenv.RequestRecord, images []string) {
	t.Helper()
	var want, got []string
	for _, image := range images {
		repo, tag, _ := strings.Cut(image, ":")
		want = append(want, "HEAD /v2/"+repo+"/manifests/"+tag)
	}
	for _, r := range requests {
		got = append(got, r.Method+" "+r.Path)
	}
	sort.Strings(want)
	sort.Strings(got)
	if strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Errorf("requests:\n%s\nwant one manifest HEAD per image:\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
}

// TestSyncTransferJSON runs the in-house tool's JSON form, where proxy_domain routes a
// destination registry that no rule names.
func TestSyncTransferJSON(t *testing.T) {
	e := newEnv(t)
	app := e.pushRandomIndex(t, "team/app:7", mediatype.OCI1ManifestList, "linux/amd64", "linux/arm64")
	worker := e.pushRandomIndex(t, "team/worker:7", mediatype.OCI1ManifestList, "linux/amd64")

	// Rules with no route: only proxy_domain sends requests through nginx.
	rules := e.writeRules(t, "direct.yaml", fmt.Sprintf("registries:\n  - host: %q\n    tls: disabled\n", e.src.Addr))
	transfer := e.writeRules(t, "transfer.json", fmt.Sprintf(`[
  {"src": {"image": "%[1]s/team/app:7"}, "dest": {"image": "%[2]s/team/app:7"}, "proxy_domain": "%[3]s"},
  {"src": {"image": "%[1]s/team/worker:7"}, "dest": {"image": "%[2]s/team/worker"}, "proxy_domain": "%[3]s",
   "annotations": {"org.example.team": "platform"}},
  {"src": {"image": "%[1]s/team/app:7"}, "dest": {"image": "%[1]s/copies/app:7"}, "proxy_domain": ""}
]
`, e.src.Addr, prodHost, e.nginx.HTTPAddr))

	res, outputs := e.syncJSON(t, "--rules", rules, "-f", transfer)
	if res.code != 0 {
		t.Fatalf("exit code %d\nstdout:\n%s\nstderr:\n%s", res.code, res.stdout, res.stderr)
	}
	if len(outputs) != 3 {
		t.Fatalf("got %d results, want 3:\n%s", len(outputs), res.stdout)
	}
	assertAllThroughProxy(t, e.prod.Requests(), prodHost)
	e.assertImage(t, e.prod, "team/app:7", app)
	e.withSourceClient().assertImage(t, e.src, "copies/app:7", app)

	workerOut := outputs[prodHost+"/team/worker:7"]
	if workerOut.Status != "copied" || workerOut.DestinationDigest == worker.Index.Digest.String() {
		t.Errorf("annotated worker result = %+v, want copied under a new digest", workerOut)
	}
	route := workerOut.Routes.Destination
	if route == nil || route.Proxy != "http://"+e.nginx.HTTPAddr || !strings.HasSuffix(route.Rule, "transfer.json:2") {
		t.Errorf("worker destination route = %+v, want the proxy_domain route that transfer.json:2 added first", route)
	}
	if direct := outputs[e.src.Addr+"/copies/app:7"].Routes.Destination; direct == nil || direct.Proxy != "" {
		t.Errorf("empty proxy_domain route = %+v, want direct", direct)
	}
}

// TestSyncImageSyncerFiles runs image-syncer's images and auth files: a list of
// destinations, a comma-separated tag list, and credentials for a locked registry.
func TestSyncImageSyncerFiles(t *testing.T) {
	e := newEnv(t)
	one := e.pushRandomIndex(t, "team/api:1", mediatype.OCI1ManifestList, "linux/amd64")
	two := e.pushRandomIndex(t, "team/api:2", mediatype.OCI1ManifestList, "linux/amd64")

	images := e.writeRules(t, "images.yaml", fmt.Sprintf(`%[1]s/team/api:1,2:
  - %[2]s/team/api
  - %[3]s/mirror/api
`, e.src.Addr, prodHost, lockedHost))
	auth := e.writeRules(t, "auth.yaml", fmt.Sprintf(`%s:
  username: %s
  password: ${LOCKED_PASSWORD}
`, lockedHost, lockedUser))

	environ := append(e.commandEnv(), "LOCKED_PASSWORD="+lockedPassword)
	res := runCommand(t, environ, imgxferBin, "sync", "--rules", e.rulesFile, "-f", images, "--auth", auth)
	if res.code != 0 {
		t.Fatalf("exit code %d\nstdout:\n%s\nstderr:\n%s", res.code, res.stdout, res.stderr)
	}
	if !strings.Contains(res.stdout, "4 copies") || !strings.Contains(res.stdout, "4 copied") {
		t.Errorf("summary should count 4 copies, all copied:\n%s", res.stdout)
	}
	e.assertImage(t, e.prod, "team/api:1", one)
	e.assertImage(t, e.prod, "team/api:2", two)
	for _, tag := range []string{"1", "2"} {
		found := false
		for _, r := range e.locked.Requests() {
			if r.Method == http.MethodPut && r.Path == "/v2/mirror/api/manifests/"+tag && r.Status == http.StatusCreated {
				found = true
			}
		}
		if !found {
			t.Errorf("the locked registry did not receive mirror/api:%s", tag)
		}
	}

	// Without the auth file, the locked registry rejects the copies: all failed for one
	// reason, so the exit code is that reason's.
	res = e.run(t, "sync", "--rules", e.rulesFile, "-f", e.writeRules(t, "locked.yaml",
		fmt.Sprintf("%s/team/api:1: %s/other/api\n", e.src.Addr, lockedHost)))
	if res.code != 4 {
		t.Errorf("exit code %d without credentials, want 4\nstdout:\n%s\nstderr:\n%s", res.code, res.stdout, res.stderr)
	}
}

func TestSyncBadInput(t *testing.T) {
	e := newEnv(t)
	unknownField := e.writeRules(t, "unknown.yaml", "copies:\n  - source: 127.0.0.1:1/a:1\n    destinaton: 127.0.0.1:1/b:1\n")
	badPattern := e.writeRules(t, "pattern.yaml", "copies:\n  - source: 127.0.0.1:1/a\n    destination: 127.0.0.1:1/b\n    tag_patterns: ['(']\n")
	tests := []struct {
		name string
		args []string
		want []string
	}{
		{"missing file flag", []string{"sync"}, []string{"file"}},
		{"unknown field", []string{"sync", "-f", unknownField}, []string{"unknown.yaml:3:5", "destinaton"}},
		{"bad pattern", []string{"sync", "-f", badPattern}, []string{"pattern.yaml:4:", "tag_patterns[0]"}},
		{"bad parallel", []string{"sync", "-f", badPattern, "--parallel", "0"}, []string{"--parallel 0"}},
		{"bad file format", []string{"sync", "-f", badPattern, "--file-format", "xml"}, []string{`"xml"`, "image-syncer"}},
		{"bad annotation", []string{"sync", "-f", badPattern, "--annotation", "novalue"}, []string{`"novalue"`, "KEY=VALUE"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			res := e.run(t, tt.args...)
			if res.code != 2 {
				t.Errorf("exit code %d, want 2\nstderr:\n%s", res.code, res.stderr)
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
		})
	}
}
