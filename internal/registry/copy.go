package registry

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/regclient/regclient"
	"github.com/regclient/regclient/types"
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

// CopyOptions narrows or changes a copy.
type CopyOptions struct {
	// Platforms limits an index to these platforms, such as "linux/amd64" or
	// "linux/arm/v7". One platform copies that platform's manifest alone; several make a
	// new index that lists only them. Empty copies everything.
	Platforms []string
}

// CopyResult describes a finished copy.
type CopyResult struct {
	Source            string        `json:"source"`
	SourceDigest      string        `json:"sourceDigest"`
	Destination       string        `json:"destination"`
	DestinationDigest string        `json:"destinationDigest"`
	MediaType         string        `json:"mediaType"`
	Platforms         []string      `json:"platforms,omitempty"`
	BytesCopied       int64         `json:"bytesCopied"`
	BlobsCopied       int           `json:"blobsCopied"`
	BlobsSkipped      int           `json:"blobsSkipped"`
	Duration          time.Duration `json:"duration"`
}

// ParseReference parses an image reference the way docker does: a name without registry
// is on Docker Hub, and one without tag or digest means the tag "latest". ocidir://
// references name an OCI layout directory.
func ParseReference(text string) (ref.Ref, error) {
	r, err := ref.New(text)
	if err != nil {
		return ref.Ref{}, fmt.Errorf("%w %q: expected [registry/]repository[:tag][@digest], such as registry.example.com/team/app:1.4", ErrInvalidReference, text)
	}
	return r, nil
}

// Copy copies the image at src to dst with every manifest and blob it references, or the
// subset that opts selects. Blobs stream from source to destination. The destination tag
// is written last, after everything it points to, so it never names an incomplete image.
func (c *Client) Copy(ctx context.Context, src, dst string, opts CopyOptions) (*CopyResult, error) {
	// A proxy that rejects a route rejects every retry too, so the first rejection stops the
	// copy and becomes its error, rather than the failed request regclient reports.
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	ctx = withRejectionCancel(ctx, cancel)
	ctx, watch := c.watchAuth(ctx, cancel)

	result, err := c.copy(ctx, src, dst, opts)
	if err != nil {
		if cause := rejectionCause(ctx); cause != nil {
			return nil, cause
		}
		return nil, c.explain(ctx, err, watch)
	}
	return result, nil
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

func (c *Client) copy(ctx context.Context, src, dst string, opts CopyOptions) (*CopyResult, error) {
	start := time.Now()
	srcRef, err := ParseReference(src)
	if err != nil {
		return nil, fmt.Errorf("source: %w", err)
	}
	dstRef, err := ParseReference(dst)
	if err != nil {
		return nil, fmt.Errorf("destination: %w", err)
	}
	platforms, err := parsePlatforms(opts.Platforms)
	if err != nil {
		return nil, err
	}

	srcManifest, err := c.rc.ManifestGet(ctx, srcRef)
	if err != nil {
		return nil, fmt.Errorf("reading source manifest %s: %w", srcRef.CommonName(), err)
	}
	srcDigest := srcManifest.GetDescriptor().Digest.String()
	// Copy by digest, so a tag that moves during the copy cannot mix two images.
	pinned := srcRef.SetDigest(srcDigest)

	if dstRef.Digest != "" && dstRef.Digest != srcDigest && len(platforms) == 0 {
		return nil, fmt.Errorf("%w %q: the destination digest differs from the source digest %s; give the destination a tag or the source digest", ErrInvalidReference, dst, srcDigest)
	}

	progress := &copyProgress{}
	logFields := logrus.Fields{"source": srcRef.CommonName(), "digest": srcDigest, "destination": dstRef.CommonName()}
	c.log.WithFields(logFields).Info("copying image")

	result := &CopyResult{
		Source:       srcRef.CommonName(),
		SourceDigest: srcDigest,
		Destination:  dstRef.CommonName(),
		MediaType:    srcManifest.GetDescriptor().MediaType,
	}

	if len(platforms) == 0 {
		err = c.rc.ImageCopy(ctx, pinned, dstRef, regclient.ImageWithCallback(progress.callback))
		if err != nil {
			return nil, fmt.Errorf("copying %s to %s: %w", srcRef.CommonName(), dstRef.CommonName(), err)
		}
	} else {
		mediaType, selected, err := c.copyPlatforms(ctx, srcManifest, pinned, dstRef, platforms, progress)
		if err != nil {
			return nil, err
		}
		result.MediaType = mediaType
		result.Platforms = selected
	}

	dstManifest, err := c.rc.ManifestHead(ctx, dstRef, regclient.WithManifestRequireDigest())
	if err != nil {
		return nil, fmt.Errorf("reading destination manifest %s after the copy: %w", dstRef.CommonName(), err)
	}

	result.DestinationDigest = dstManifest.GetDescriptor().Digest.String()
	result.BytesCopied, result.BlobsCopied, result.BlobsSkipped = progress.totals()
	result.Duration = time.Since(start)
	c.log.WithFields(logFields).WithFields(logrus.Fields{
		"bytes":    result.BytesCopied,
		"blobs":    result.BlobsCopied,
		"skipped":  result.BlobsSkipped,
		"duration": result.Duration.String(),
	}).Info("copied image")
	return result, nil
}

// copyPlatforms copies the selected platforms of srcManifest. A single platform is copied
// as its own manifest. Several are copied by digest, then a new index that lists only them
// is pushed to the destination tag. It returns the media type and the platforms written.
func (c *Client) copyPlatforms(ctx context.Context, srcManifest manifest.Manifest, src, dst ref.Ref, platforms []platform.Platform, progress *copyProgress) (string, []string, error) {
	index, isIndex := srcManifest.(manifest.Indexer)
	if !isIndex {
		return c.copySinglePlatform(ctx, srcManifest, src, dst, platforms, progress)
	}

	children, err := index.GetManifestList()
	if err != nil {
		return "", nil, fmt.Errorf("reading the manifest list of %s: %w", src.CommonName(), err)
	}
	selected, names, err := selectPlatforms(children, platforms, src.CommonName())
	if err != nil {
		return "", nil, err
	}

	if len(selected) == 1 {
		if dst.Digest != "" && dst.Digest != selected[0].Digest.String() {
			return "", nil, fmt.Errorf("%w %q: the %s manifest has digest %s; give the destination a tag or that digest", ErrInvalidReference, dst.CommonName(), names[0], selected[0].Digest)
		}
		child := src.SetDigest(selected[0].Digest.String())
		err = c.rc.ImageCopy(ctx, child, dst, regclient.ImageWithCallback(progress.callback))
		if err != nil {
			return "", nil, fmt.Errorf("copying %s (%s) to %s: %w", src.CommonName(), names[0], dst.CommonName(), err)
		}
		return selected[0].MediaType, names, nil
	}

	// The new index is built before anything is copied, so that a destination digest that
	// cannot match fails without writing.
	err = index.SetManifestList(selected)
	if err != nil {
		return "", nil, fmt.Errorf("building the index of %s for %s: %w", dst.CommonName(), strings.Join(names, ", "), err)
	}
	newDigest := srcManifest.GetDescriptor().Digest.String()
	if dst.Digest != "" && dst.Digest != newDigest {
		return "", nil, fmt.Errorf("%w %q: a new index for %s gets digest %s; give the destination a tag", ErrInvalidReference, dst.CommonName(), strings.Join(names, ", "), newDigest)
	}

	for i, d := range selected {
		child := src.SetDigest(d.Digest.String())
		err = c.rc.ImageCopy(ctx, child, dst.SetDigest(d.Digest.String()), regclient.ImageWithCallback(progress.callback))
		if err != nil {
			return "", nil, fmt.Errorf("copying %s (%s) to %s: %w", src.CommonName(), names[i], dst.CommonName(), err)
		}
	}

	err = c.rc.ManifestPut(ctx, dst, srcManifest)
	if err != nil {
		return "", nil, fmt.Errorf("pushing the index of %s: %w", dst.CommonName(), err)
	}
	return srcManifest.GetDescriptor().MediaType, names, nil
}

// copySinglePlatform copies an image that has one manifest, after checking that its
// platform is one of those requested.
func (c *Client) copySinglePlatform(ctx context.Context, srcManifest manifest.Manifest, src, dst ref.Ref, platforms []platform.Platform, progress *copyProgress) (string, []string, error) {
	config, err := c.rc.ImageConfig(ctx, src)
	if err != nil {
		return "", nil, fmt.Errorf("reading the image config of %s: %w", src.CommonName(), err)
	}
	own := config.GetConfig().Platform
	if !slices.ContainsFunc(platforms, func(p platform.Platform) bool { return platform.Match(own, p) }) {
		return "", nil, fmt.Errorf("%w: %s is a single-platform image for %s; drop --platform or request %s", ErrPlatformNotFound, src.CommonName(), own, own)
	}

	err = c.rc.ImageCopy(ctx, src, dst, regclient.ImageWithCallback(progress.callback))
	if err != nil {
		return "", nil, fmt.Errorf("copying %s to %s: %w", src.CommonName(), dst.CommonName(), err)
	}
	return srcManifest.GetDescriptor().MediaType, []string{own.String()}, nil
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
		if err != nil || strings.Count(text, "/") < 1 || p.OS == "" || p.Architecture == "" {
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

// copyProgress totals the blob callbacks of one or more ImageCopy calls, which may arrive
// from several goroutines.
type copyProgress struct {
	mu      sync.Mutex
	bytes   int64
	copied  int
	skipped int
}

func (p *copyProgress) callback(kind types.CallbackKind, _ string, state types.CallbackState, _, total int64) {
	if kind != types.CallbackBlob {
		return
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	switch state {
	case types.CallbackFinished:
		p.bytes += total
		p.copied++
	case types.CallbackSkipped:
		p.skipped++
	}
}

func (p *copyProgress) totals() (bytes int64, copied, skipped int) {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.bytes, p.copied, p.skipped
}
