package registry

import (
	"context"
	"testing"
	"time"

	"github.com/opencontainers/go-digest"
	"github.com/regclient/regclient/types"
	"github.com/regclient/regclient/types/descriptor"
	"github.com/regclient/regclient/types/ref"
)

func testBlobs(names ...string) []descriptor.Descriptor {
	var blobs []descriptor.Descriptor
	for _, name := range names {
		blobs = append(blobs, descriptor.Descriptor{Digest: digest.FromString(name), Size: int64(len(name))})
	}
	return blobs
}

func mustRef(t *testing.T, text string) ref.Ref {
	t.Helper()
	r, err := ref.New(text)
	if err != nil {
		t.Fatal(err)
	}
	return r
}

func TestLedgerMountsAfterSender(t *testing.T) {
	ledger := newBlobLedger()
	blobs := testBlobs("layer-a", "layer-b")
	ctx := context.Background()

	first, err := ledger.reserve(ctx, mustRef(t, "registry.test/one/app:1"), blobs)
	if err != nil {
		t.Fatal(err)
	}
	if len(first.claimed) != 2 || len(first.mountFrom) != 0 {
		t.Fatalf("first copy claimed %d and mounts %d, want 2 claims", len(first.claimed), len(first.mountFrom))
	}

	// The second copy waits for the first one's blobs, then mounts them from its repository.
	done := make(chan *ledgerClaims)
	go func() {
		second, err := ledger.reserve(ctx, mustRef(t, "registry.test/two/app:1"), blobs)
		if err != nil {
			t.Error(err)
		}
		done <- second
	}()
	select {
	case <-done:
		t.Fatal("the second copy did not wait for the blobs being sent")
	case <-time.After(50 * time.Millisecond):
	}
	first.release(blobs[0].Digest.String())
	first.finish(true)

	second := <-done
	if len(second.claimed) != 0 || second.mountFrom[blobs[0].Digest.String()] != "one/app" || second.mountFrom[blobs[1].Digest.String()] != "one/app" {
		t.Errorf("second copy claims %v and mounts %v, want both mounted from one/app", second.claimed, second.mountFrom)
	}

	// A copy to the repository that already holds the blobs neither claims nor mounts.
	third, err := ledger.reserve(ctx, mustRef(t, "registry.test/one/app:2"), blobs)
	if err != nil {
		t.Fatal(err)
	}
	if len(third.claimed)+len(third.mountFrom) != 0 {
		t.Errorf("copy into the same repository claims %v and mounts %v, want neither", third.claimed, third.mountFrom)
	}
}

func TestLedgerFailedSenderLetsOthersSend(t *testing.T) {
	ledger := newBlobLedger()
	blobs := testBlobs("layer-a")
	first, err := ledger.reserve(context.Background(), mustRef(t, "registry.test/one/app:1"), blobs)
	if err != nil {
		t.Fatal(err)
	}
	go first.finish(false)

	second, err := ledger.reserve(context.Background(), mustRef(t, "registry.test/two/app:1"), blobs)
	if err != nil {
		t.Fatal(err)
	}
	if len(second.mountFrom) != 0 {
		t.Errorf("second copy mounts %v after the sender failed, want none", second.mountFrom)
	}
}

func TestLedgerWaitEndsWithContext(t *testing.T) {
	ledger := newBlobLedger()
	blobs := testBlobs("layer-a")
	if _, err := ledger.reserve(context.Background(), mustRef(t, "registry.test/one/app:1"), blobs); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Millisecond)
	defer cancel()
	if _, err := ledger.reserve(ctx, mustRef(t, "registry.test/two/app:1"), blobs); err == nil {
		t.Error("reserve returned without error while the sender never finished")
	}
}

type recordingTracker struct {
	blobs     int
	blobsDone int
	bytesSent int64
}

func (r *recordingTracker) Started(blobs int, _ int64) { r.blobs = blobs }
func (r *recordingTracker) Progress(done int, sent int64) {
	r.blobsDone, r.bytesSent = done, sent
}
func (r *recordingTracker) Finished(*CopyResult) {}

func TestCopyProgressCountsEachDigestOnce(t *testing.T) {
	tracker := &recordingTracker{}
	progress := newCopyProgress(tracker)
	blobs := testBlobs("config", "layer", "mounted", "present")
	progress.start(blobs)
	var doneCalls []string
	progress.onBlobDone = func(d string) { doneCalls = append(doneCalls, d) }

	config, layer, mounted, present := blobs[0].Digest.String(), blobs[1].Digest.String(), blobs[2].Digest.String(), blobs[3].Digest.String()
	progress.markMounted(mounted)
	progress.callback(types.CallbackBlob, config, types.CallbackStarted, 0, 6)
	progress.callback(types.CallbackBlob, config, types.CallbackActive, 3, 6)
	if tracker.bytesSent != 3 {
		t.Errorf("bytes sent mid-blob = %d, want 3", tracker.bytesSent)
	}
	progress.callback(types.CallbackBlob, config, types.CallbackFinished, 6, 6)
	progress.callback(types.CallbackBlob, layer, types.CallbackFinished, 5, 5)
	// A second platform sharing the layer reports it present: it stays sent.
	progress.callback(types.CallbackBlob, layer, types.CallbackSkipped, 0, 5)
	progress.callback(types.CallbackBlob, mounted, types.CallbackSkipped, 0, 7)
	progress.callback(types.CallbackBlob, present, types.CallbackSkipped, 0, 7)

	bytes, sent, skipped, mountedCount := progress.totals()
	if bytes != 11 || sent != 2 || skipped != 1 || mountedCount != 1 {
		t.Errorf("totals = %d bytes, %d sent, %d present, %d mounted; want 11, 2, 1, 1", bytes, sent, skipped, mountedCount)
	}
	if tracker.blobs != 4 || tracker.blobsDone != 4 {
		t.Errorf("tracker saw %d of %d blobs done, want 4 of 4", tracker.blobsDone, tracker.blobs)
	}
	if len(doneCalls) != 3 {
		t.Errorf("onBlobDone called for %v, want the config, the layer and the present blob once each", doneCalls)
	}
	if !progress.wroteAnything() {
		t.Error("wroteAnything = false after blobs were sent")
	}
}
