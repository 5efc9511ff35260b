package registry

import (
	"context"
	"strings"
	"testing"

	"github.com/regclient/regclient/types/platform"

	"github.com/imgxfer/imgxfer/internal/testenv"
)

func TestCopyManifestRequests(t *testing.T) {
	ctx := context.Background()
	src, dst := startTestRegistry(t, ""), startTestRegistry(t, "")

	platforms := []platform.Platform{{OS: "linux", Architecture: "amd64"}, {OS: "linux", Architecture: "arm64"}, {OS: "linux", Architecture: "s390x"}}
	pushed, err := testenv.PushIndex(ctx, testenv.NewClient(src), src.Addr+"/team/app:1", testenv.RandomImage(8, platforms, 2, 1<<10), "")
	if err != nil {
		t.Fatal(err)
	}
	client, err := New(Options{Rules: plainHTTPRules(t, src.Addr, dst.Addr), Logger: quietLogger()})
	if err != nil {
		t.Fatal(err)
	}
	defer client.Close()
	src.ResetRequests()

	result := client.Copy(ctx, CopySpec{Source: src.Addr + "/team/app:1", Destination: dst.Addr + "/team/app:1"}, CopyOptions{})
	if result.Err != nil {
		t.Fatalf("copy: %v", result.Err)
	}
	if result.DestinationDigest != pushed.Index.Digest.String() {
		t.Errorf("destination digest %s, want %s", result.DestinationDigest, pushed.Index.Digest)
	}

	// The plan, the blob listing for the progress totals and regclient's copy all read
	// the manifests, and the cache serves all but the first read of each.
	manifestReads := map[string]int{}
	for _, r := range src.Requests() {
		if r.Method == "GET" && strings.Contains(r.Path, "/manifests/") {
			manifestReads[r.Path]++
		}
	}
	if len(manifestReads) != 1+len(platforms) {
		t.Errorf("the source served %d distinct manifests, want the index and %d platform manifests: %v", len(manifestReads), len(platforms), manifestReads)
	}
	for path, reads := range manifestReads {
		if reads != 1 {
			t.Errorf("the source served %s %d times, want once", path, reads)
		}
	}

	// regclient checks the digest that the registry returns for the tag's manifest, so
	// no HEAD request follows it.
	requests := dst.Requests()
	last := requests[len(requests)-1]
	if last.Method != "PUT" || last.Path != "/v2/team/app/manifests/1" {
		t.Errorf("the last destination request was %s %s, want the PUT of the tag", last.Method, last.Path)
	}
}
