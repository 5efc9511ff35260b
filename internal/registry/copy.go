package registry

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/regclient/regclient"
	"github.com/regclient/regclient/types/descriptor"
	"github.com/regclient/regclient/types/manifest"
	"github.com/regclient/regclient/types/platform"
	"github.com/regclient/regclient/types/ref"
	"github.com/sirupsen/logrus"

	"github.com/imgxfer/imgxfer/routing"
)

// ErrInvalidReference marks a source or destination that is not an image reference.
var ErrInvalidReference = errors.New("invalid reference")

// ErrPlatformNotFound marks a --platform that the source image does not contain.
var ErrPlatformNotFound = errors.New("platform not found")

// CopySpec is one copy: an image, where it goes, and what changes on the way.
type CopySpec struct {
	// Origin names where the copy was defined, such as "images.yaml:12", for messages.
	// It is empty for a copy given on the command line.
	Origin string

	// Source and Destination are image references, [registry/]repository[:tag][@digest].
	Source      string
	Destination string

	// Platforms limits an index to these platforms, such as "linux/amd64" or
	// "linux/arm/v7". One platform copies that platform's manifest alone; several make a
	// new index that lists only them. Empty copies everything.
	Platforms []string

	// Annotations are set on the manifest that the destination tag names: the index, or
	// the image manifest of a single-platform copy. They give it a new digest.
	Annotations map[string]string
}

// CopyOptions apply to every copy of a run.
type CopyOptions struct {
	// Referrers copies the OCI referrers of every manifest copied, and the
	// "sha256-<digest>.*" tags that cosign uses for signatures, attestations and SBOMs.
	Referrers bool

	// Force copies even when the destination already has the digest that the copy would
	// write, and pushes every manifest again. Blobs present in the destination are still
	// not sent, because a digest names their content.
	Force bool

	// DryRun reads the source and the destination and reports what a copy would write,
	// without writing anything.
	DryRun bool

	// Track, when set, returns the tracker that follows one copy.
	Track func(spec CopySpec) Tracker
}

// Status is the outcome of one copy.
type Status string

// Copy outcomes.
const (
	StatusCopied  Status = "copied"  // the destination now has the image
	StatusSkipped Status = "skipped" // the destination already had it, so nothing was written
	StatusPlanned Status = "planned" // dry run: the copy would write what Plan describes
	StatusFailed  Status = "failed"
)

// CopyResult describes a finished, skipped, planned or failed copy.
type CopyResult struct {
	Origin            string
	Source            string
	SourceDigest      string
	Destination       string
	DestinationDigest string
	MediaType         string
	Platforms         []string
	Annotations       map[string]string
	Status            Status

	BytesCopied  int64
	BlobsCopied  int // sent from the source
	BlobsSkipped int // already in the destination, or mounted by the registry client within one registry
	BlobsMounted int // mounted from another repository of the destination registry that this run filled

	// Plan describes what a dry run would copy. It is nil outside dry runs.
	Plan *PlanSummary

	Duration time.Duration

	// Err is the error that failed the copy, nil unless Status is StatusFailed.
	Err error
}

// PlanSummary describes what a copy would transfer.
type PlanSummary struct {
	Blobs        int   // configs and layers that the destination image references
	Bytes        int64 // their total size
	BlobsPresent int   // of those, already in the destination repository
	BytesPresent int64
	NewManifest  bool // the top-level manifest is new: narrowed to platforms or annotated
}

// ParseReference parses an image reference the way docker does: a name without registry
// is on Docker Hub, and one without tag or digest means the tag "latest". ocidir://
// references name an OCI layout directory.
func ParseReference(text string) (ref.Ref, error) {
	r, err := ref.New(text)
	if err != nil {
		return ref.Ref{}, fmt.Errorf("%w %q: expected [registry/]repository[:tag][@digest], such as registry.example.com/team/app:1.4", ErrInvalidReference, text)
	}
	if host, _, _ := strings.Cut(r.Registry, ":"); strings.HasSuffix(host, ".") {
		return ref.Ref{}, fmt.Errorf("%w %q: the registry host ends with a dot; write %s", ErrInvalidReference, text, strings.Replace(text, host, strings.TrimSuffix(host, "."), 1))
	}
	return r, nil
}

// Copy copies the image at spec.Source to spec.Destination with every manifest and blob
// it references, or the subset that spec selects. Blobs stream from source to destination.
// The destination tag is written last, after everything it points to, so it never names
// an incomplete image. A destination that already has the digest that the copy would
// write costs one manifest HEAD request and is skipped, unless opts.Force is set.
//
// The returned result has Status StatusFailed and Err set when the copy failed.
func (c *Client) Copy(ctx context.Context, spec CopySpec, opts CopyOptions) *CopyResult {
	return c.copyOne(ctx, spec, opts, nil)
}

// copyOne runs one copy with its own cancellation, so that a rejected password or a proxy
// rejection stops this copy and no other.
func (c *Client) copyOne(ctx context.Context, spec CopySpec, opts CopyOptions, ledger *blobLedger) *CopyResult {
	start := time.Now()
	var tracker Tracker = nopTracker{}
	if opts.Track != nil {
		tracker = opts.Track(spec)
	}

	// A proxy that rejects a route rejects every retry too, so the first rejection stops the
	// copy and becomes its error, rather than the failed request regclient reports.
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	ctx = withRejectionCancel(ctx, cancel)
	ctx, watch := c.watchAuth(ctx, cancel)

	result, err := c.runCopy(ctx, spec, opts, ledger, tracker)
	if result == nil {
		result = &CopyResult{}
	}
	result.Origin = spec.Origin
	if result.Source == "" {
		result.Source = spec.Source
	}
	if result.Destination == "" {
		result.Destination = spec.Destination
	}
	result.Duration = time.Since(start)
	if err != nil {
		if cause := rejectionCause(ctx); cause != nil {
			err = cause
		} else {
			err = c.explain(ctx, err, watch)
		}
		result.Status = StatusFailed
		result.Err = err
	}
	tracker.Finished(result)
	return result
}

func (c *Client) runCopy(ctx context.Context, spec CopySpec, opts CopyOptions, ledger *blobLedger, tracker Tracker) (*CopyResult, error) {
	p, err := c.buildPlan(ctx, spec)
	if err != nil {
		return nil, err
	}
	result := &CopyResult{
		Source:            p.src.CommonName(),
		SourceDigest:      p.srcDigest,
		Destination:       p.dst.CommonName(),
		DestinationDigest: p.digest(),
		MediaType:         p.top.GetDescriptor().MediaType,
		Platforms:         p.platforms,
		Annotations:       spec.Annotations,
	}
	logFields := logrus.Fields{"source": result.Source, "digest": p.srcDigest, "destination": result.Destination}

	if p.upToDate() && !opts.Force && (!opts.Referrers || opts.DryRun) {
		c.log.WithFields(logFields).Debug("destination is up to date")
		result.Status = StatusSkipped
		return result, nil
	}

	if opts.DryRun {
		summary, err := c.summarize(ctx, p)
		if err != nil {
			return nil, err
		}
		result.Plan = summary
		result.Status = StatusPlanned
		return result, nil
	}

	progress := newCopyProgress(tracker)
	if p.upToDate() && !opts.Force {
		// Only referrers can be missing: copy them, and nothing else.
		c.log.WithFields(logFields).Debug("destination is up to date; copying new referrers")
		if err := c.copyContent(ctx, p, opts, progress); err != nil {
			return nil, err
		}
		result.BytesCopied, result.BlobsCopied, result.BlobsSkipped, result.BlobsMounted = progress.totals()
		result.Status = StatusSkipped
		if progress.wroteAnything() {
			result.Status = StatusCopied
		}
		return result, nil
	}

	blobs, err := c.listBlobs(ctx, p)
	if err != nil {
		return nil, err
	}
	progress.start(blobs)
	c.log.WithFields(logFields).Debug("copying image")

	var claims *ledgerClaims
	if ledger != nil && p.dst.Scheme == "reg" && !ref.EqualRegistry(p.src, p.dst) {
		claims, err = ledger.reserve(ctx, p.dst, blobs)
		if err != nil {
			return nil, err
		}
		progress.onBlobDone = claims.release
		c.mountFromLedger(ctx, p.dst, claims, progress)
	}
	err = c.copyContent(ctx, p, opts, progress)
	if claims != nil {
		claims.finish(err == nil)
	}
	if err != nil {
		return nil, err
	}

	// No HEAD request confirms the destination digest, because regclient fails the
	// manifest upload when the registry returns another digest than the one sent.
	result.BytesCopied, result.BlobsCopied, result.BlobsSkipped, result.BlobsMounted = progress.totals()
	result.Status = StatusCopied
	c.log.WithFields(logFields).WithFields(logrus.Fields{
		"bytes":   result.BytesCopied,
		"blobs":   result.BlobsCopied,
		"skipped": result.BlobsSkipped,
		"mounted": result.BlobsMounted,
	}).Debug("copied image")
	return result, nil
}

// copyContent writes the plan's content to the destination, the destination tag last.
func (c *Client) copyContent(ctx context.Context, p *plan, opts CopyOptions, progress *copyProgress) error {
	imageOpts := []regclient.ImageOpts{regclient.ImageWithCallback(progress.callback)}
	if opts.Referrers {
		imageOpts = append(imageOpts, regclient.ImageWithReferrers(), regclient.ImageWithDigestTags())
	}
	if opts.Force {
		imageOpts = append(imageOpts, regclient.ImageWithForceRecursive())
	}

	if !p.rebuilt {
		err := c.rc.ImageCopy(ctx, p.topSource, p.dst, imageOpts...)
		if err != nil {
			return fmt.Errorf("copying %s to %s: %w", p.src.CommonName(), p.dst.CommonName(), err)
		}
		return nil
	}

	if index, ok := p.top.(manifest.Indexer); ok {
		children, err := index.GetManifestList()
		if err != nil {
			return err
		}
		for _, child := range children {
			digest := child.Digest.String()
			err := c.rc.ImageCopy(ctx, p.src.SetDigest(digest), p.dst.SetDigest(digest), imageOpts...)
			if err != nil {
				return fmt.Errorf("copying %s (%s) to %s: %w", p.src.CommonName(), describeChild(child), p.dst.CommonName(), err)
			}
		}
	} else {
		blobs, err := c.listBlobs(ctx, p)
		if err != nil {
			return err
		}
		for _, blob := range blobs {
			err := c.rc.BlobCopy(ctx, p.topSource, p.dst, blob, regclient.BlobWithCallback(progress.callback))
			if err != nil {
				return fmt.Errorf("copying blob %s of %s to %s: %w", blob.Digest, p.src.CommonName(), p.dst.CommonName(), err)
			}
		}
	}

	if p.upToDate() && !opts.Force {
		return nil
	}
	err := c.rc.ManifestPut(ctx, p.dst, p.top)
	if err != nil {
		return fmt.Errorf("pushing the new manifest of %s: %w", p.dst.CommonName(), err)
	}
	progress.manifestWritten()
	return nil
}

func describeChild(d descriptor.Descriptor) string {
	if d.Platform != nil {
		return d.Platform.String()
	}
	return d.Digest.String()
}

// summarize lists what a dry run would transfer, with a HEAD request per blob to the
// destination repository.
func (c *Client) summarize(ctx context.Context, p *plan) (*PlanSummary, error) {
	blobs, err := c.listBlobs(ctx, p)
	if err != nil {
		return nil, err
	}
	summary := &PlanSummary{Blobs: len(blobs), NewManifest: p.rebuilt}
	for _, blob := range blobs {
		summary.Bytes += blob.Size
		head, err := c.rc.BlobHead(ctx, p.dst, blob)
		if err == nil {
			_ = head.Close()
			summary.BlobsPresent++
			summary.BytesPresent += blob.Size
		}
	}
	return summary, nil
}

// withRejectionCancel makes a proxy's rejection of any request under ctx cancel it.
func withRejectionCancel(ctx context.Context, cancel context.CancelCauseFunc) context.Context {
	return routing.WithRejectionHandler(ctx, cancel)
}

// rejectionCause returns the proxy's rejection that cancelled ctx, or nil.
func rejectionCause(ctx context.Context) error {
	if cause := context.Cause(ctx); errors.Is(cause, routing.ErrProxyRejected) {
		return cause
	}
	return nil
}

// CheckPlatforms validates platform strings such as "linux/arm/v7" without contacting a
// registry.
func CheckPlatforms(texts []string) error {
	_, err := parsePlatforms(texts)
	return err
}

func parsePlatforms(texts []string) ([]platform.Platform, error) {
	var platforms []platform.Platform
	for _, text := range texts {
		p, err := platform.Parse(text)
		if err != nil || strings.Count(text, "/") < 1 || strings.Count(text, "/") > 2 || p.OS == "" || p.Architecture == "" {
			return nil, fmt.Errorf("invalid platform %q: expected os/arch[/variant], such as linux/amd64 or linux/arm/v7", text)
		}
		platforms = append(platforms, p)
	}
	return platforms, nil
}

// selectPlatforms returns the children of an index that match the requested platforms,
// in the index's order, and fails naming the first platform that none matches.
func selectPlatforms(children []descriptor.Descriptor, requested []platform.Platform, source string) ([]descriptor.Descriptor, []string, error) {
	var available []string
	for _, child := range children {
		if child.Platform != nil {
			available = append(available, child.Platform.String())
		}
	}
	for _, p := range requested {
		found := slices.ContainsFunc(children, func(d descriptor.Descriptor) bool {
			return d.Platform != nil && platform.Match(*d.Platform, p)
		})
		if !found {
			return nil, nil, fmt.Errorf("%w: %s has no %s; it has %s", ErrPlatformNotFound, source, p, strings.Join(available, ", "))
		}
	}

	var selected []descriptor.Descriptor
	var names []string
	for _, child := range children {
		if child.Platform == nil {
			continue
		}
		if slices.ContainsFunc(requested, func(p platform.Platform) bool { return platform.Match(*child.Platform, p) }) {
			selected = append(selected, child)
			names = append(names, child.Platform.String())
		}
	}
	return selected, names, nil
}
