package registry

import (
	"sync"

	"github.com/regclient/regclient/types"
	"github.com/regclient/regclient/types/descriptor"
)

// Tracker follows one copy, for a progress display or log lines. Its methods may be
// called from several goroutines.
type Tracker interface {
	// Started reports that the copy transfers content: this many blobs of this many bytes
	// in total. A copy whose destination is up to date does not start.
	Started(blobs int, bytes int64)

	// Progress reports the blobs done (sent, mounted or already present) and the bytes
	// sent so far.
	Progress(blobsDone int, bytesSent int64)

	// Finished reports the result of every copy, failed, skipped and planned ones included.
	Finished(result *CopyResult)
}

type nopTracker struct{}

func (nopTracker) Started(int, int64)   {}
func (nopTracker) Progress(int, int64)  {}
func (nopTracker) Finished(*CopyResult) {}

type blobPhase int

const (
	blobPending blobPhase = iota
	blobActive            // being sent
	blobSent              // sent from the source
	blobPresent           // already in the destination, or mounted by regclient from the source repository
	blobMounted           // mounted from another repository that this run filled
)

type blobProgress struct {
	size  int64
	sent  int64
	phase blobPhase
}

// copyProgress turns the blob callbacks of one or more regclient calls, which arrive from
// several goroutines, into totals per digest, so a blob that two platforms share counts once.
type copyProgress struct {
	tracker Tracker

	// onBlobDone, when set, is called once per digest when the blob is in the destination.
	onBlobDone func(digest string)

	mu        sync.Mutex
	blobs     map[string]*blobProgress
	manifests int // manifests pushed
}

func newCopyProgress(tracker Tracker) *copyProgress {
	return &copyProgress{tracker: tracker, blobs: map[string]*blobProgress{}}
}

// start registers the blobs that the copy transfers and reports them to the tracker.
func (p *copyProgress) start(blobs []descriptor.Descriptor) {
	var total int64
	p.mu.Lock()
	for _, blob := range blobs {
		p.entry(blob.Digest.String()).size = blob.Size
		total += blob.Size
	}
	p.mu.Unlock()
	p.tracker.Started(len(blobs), total)
}

// entry returns the state of a digest, adding it when it is new. The caller holds p.mu.
func (p *copyProgress) entry(digest string) *blobProgress {
	b := p.blobs[digest]
	if b == nil {
		b = &blobProgress{}
		p.blobs[digest] = b
	}
	return b
}

// markMounted records a blob that imgxfer mounted before the copy.
func (p *copyProgress) markMounted(digest string) {
	p.mu.Lock()
	p.entry(digest).phase = blobMounted
	p.mu.Unlock()
	p.report()
}

func (p *copyProgress) manifestWritten() {
	p.mu.Lock()
	p.manifests++
	p.mu.Unlock()
}

func (p *copyProgress) callback(kind types.CallbackKind, instance string, state types.CallbackState, cur, total int64) {
	if kind == types.CallbackManifest {
		if state == types.CallbackFinished {
			p.manifestWritten()
		}
		return
	}
	if kind != types.CallbackBlob {
		return
	}

	done := false
	p.mu.Lock()
	b := p.entry(instance)
	if total > 0 {
		b.size = total
	}
	switch state {
	case types.CallbackStarted:
		if b.phase == blobPending {
			b.phase = blobActive
		}
	case types.CallbackActive:
		if b.phase == blobActive {
			b.sent = cur
		}
	case types.CallbackFinished:
		done = b.phase != blobSent
		b.phase = blobSent
		b.sent = b.size
	case types.CallbackSkipped:
		if b.phase == blobPending || b.phase == blobActive {
			b.phase = blobPresent
			done = true
		}
	}
	p.mu.Unlock()

	if done && p.onBlobDone != nil {
		p.onBlobDone(instance)
	}
	p.report()
}

func (p *copyProgress) report() {
	p.mu.Lock()
	var blobsDone int
	var bytesSent int64
	for _, b := range p.blobs {
		switch b.phase {
		case blobSent, blobPresent, blobMounted:
			blobsDone++
		}
		if b.phase == blobActive || b.phase == blobSent {
			bytesSent += b.sent
		}
	}
	p.mu.Unlock()
	p.tracker.Progress(blobsDone, bytesSent)
}

// totals returns the bytes and blobs sent, the blobs found present and the blobs mounted.
func (p *copyProgress) totals() (bytes int64, sent, present, mounted int) {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, b := range p.blobs {
		switch b.phase {
		case blobSent:
			bytes += b.size
			sent++
		case blobPresent:
			present++
		case blobMounted:
			mounted++
		}
	}
	return bytes, sent, present, mounted
}

// wroteAnything reports whether a blob or manifest was written to the destination.
func (p *copyProgress) wroteAnything() bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.manifests > 0 {
		return true
	}
	for _, b := range p.blobs {
		if b.phase == blobSent {
			return true
		}
	}
	return false
}
