package registry

import (
	"context"
	"slices"
	"sync"

	"github.com/regclient/regclient/types/descriptor"
	"github.com/regclient/regclient/types/ref"
	"github.com/sirupsen/logrus"
)

// blobLedger records, for one batch, which repositories of each destination registry hold
// which blobs. A copy then mounts a blob that another copy of the batch put into another
// repository of the same registry, instead of sending it again from the source registry.
// regclient mounts by itself only when the source and the destination share a registry.
//
// A blob that a running copy is sending is claimed by that copy. Later copies that need it
// wait until it is in the destination and then mount it. Every copy takes all its claims
// at once under the ledger's lock and waits only for claims taken before its own, so no two
// copies can wait for each other.
type blobLedger struct {
	mu    sync.Mutex
	blobs map[ledgerKey]*ledgerEntry
}

type ledgerKey struct {
	registry string
	digest   string
}

type ledgerEntry struct {
	repos   []string      // repositories of the registry known to hold the blob
	sending chan struct{} // closed when the claiming copy is done with the blob; nil when unclaimed
}

func newBlobLedger() *blobLedger {
	return &blobLedger{blobs: map[ledgerKey]*ledgerEntry{}}
}

// ledgerClaims are one copy's claims and planned mounts.
type ledgerClaims struct {
	ledger   *blobLedger
	registry string
	repo     string

	mu        sync.Mutex
	claimed   map[string]chan struct{}         // digests that this copy sends
	mountFrom map[string]string                // digest to the repository to mount it from
	blobs     map[string]descriptor.Descriptor // every blob of the copy
}

func (l *blobLedger) entry(key ledgerKey) *ledgerEntry {
	e := l.blobs[key]
	if e == nil {
		e = &ledgerEntry{}
		l.blobs[key] = e
	}
	return e
}

// reserve claims the blobs of a copy to dst that no other copy holds or sends, waits for
// those that another copy is sending, and plans a mount for each blob that another
// repository of dst's registry holds. It fails only when ctx ends while waiting.
func (l *blobLedger) reserve(ctx context.Context, dst ref.Ref, blobs []descriptor.Descriptor) (*ledgerClaims, error) {
	claims := &ledgerClaims{
		ledger:    l,
		registry:  dst.Registry,
		repo:      dst.Repository,
		claimed:   map[string]chan struct{}{},
		mountFrom: map[string]string{},
		blobs:     map[string]descriptor.Descriptor{},
	}
	type wait struct {
		digest string
		done   chan struct{}
	}
	var waits []wait

	l.mu.Lock()
	for _, blob := range blobs {
		digest := blob.Digest.String()
		claims.blobs[digest] = blob
		e := l.entry(ledgerKey{dst.Registry, digest})
		switch {
		case slices.Contains(e.repos, dst.Repository):
		case len(e.repos) > 0:
			claims.mountFrom[digest] = e.repos[0]
		case e.sending != nil:
			waits = append(waits, wait{digest, e.sending})
		default:
			e.sending = make(chan struct{})
			claims.claimed[digest] = e.sending
		}
	}
	l.mu.Unlock()

	for _, w := range waits {
		select {
		case <-w.done:
		case <-ctx.Done():
			claims.finish(false)
			return nil, context.Cause(ctx)
		}
		l.mu.Lock()
		e := l.entry(ledgerKey{dst.Registry, w.digest})
		if len(e.repos) > 0 && !slices.Contains(e.repos, dst.Repository) {
			claims.mountFrom[w.digest] = e.repos[0]
		}
		// When the other copy failed, no repository holds the blob and this copy sends
		// it without a claim.
		l.mu.Unlock()
	}
	return claims, nil
}

// release records that the copy's repository holds a blob, and ends the copy's claim on
// it, which lets waiting copies mount it.
func (c *ledgerClaims) release(digest string) {
	c.ledger.mu.Lock()
	defer c.ledger.mu.Unlock()
	e := c.ledger.entry(ledgerKey{c.registry, digest})
	if !slices.Contains(e.repos, c.repo) {
		e.repos = append(e.repos, c.repo)
	}
	c.mu.Lock()
	if done, ok := c.claimed[digest]; ok {
		close(done)
		e.sending = nil
		delete(c.claimed, digest)
	}
	c.mu.Unlock()
}

// finish ends the claims left when the copy ends. After a successful copy the repository
// holds every blob of the copy.
func (c *ledgerClaims) finish(ok bool) {
	c.ledger.mu.Lock()
	defer c.ledger.mu.Unlock()
	c.mu.Lock()
	defer c.mu.Unlock()
	for digest := range c.blobs {
		e := c.ledger.entry(ledgerKey{c.registry, digest})
		if ok && !slices.Contains(e.repos, c.repo) {
			e.repos = append(e.repos, c.repo)
		}
		if done, claimed := c.claimed[digest]; claimed {
			close(done)
			e.sending = nil
			delete(c.claimed, digest)
		}
	}
}

// mountFromLedger mounts the blobs that another repository of dst's registry holds. A
// failed mount is logged and left to the copy, which then sends the blob.
func (c *Client) mountFromLedger(ctx context.Context, dst ref.Ref, claims *ledgerClaims, progress *copyProgress) {
	for digest, repo := range claims.mountFrom {
		from := dst.SetTag("")
		from.Repository = repo
		from = from.SetTag("")
		err := c.rc.BlobMount(ctx, from, dst, claims.blobs[digest])
		fields := logrus.Fields{"digest": digest, "from": from.CommonName(), "to": dst.SetTag("").CommonName()}
		if err != nil {
			c.log.WithFields(fields).WithError(err).Debug("mounting blob failed; sending it instead")
			continue
		}
		c.log.WithFields(fields).Debug("mounted blob")
		progress.markMounted(digest)
		claims.release(digest)
	}
}
