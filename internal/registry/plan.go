package registry

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"maps"
	"slices"
	"strings"

	"github.com/regclient/regclient"
	"github.com/regclient/regclient/types/descriptor"
	"github.com/regclient/regclient/types/errs"
	"github.com/regclient/regclient/types/manifest"
	"github.com/regclient/regclient/types/mediatype"
	v1 "github.com/regclient/regclient/types/oci/v1"
	"github.com/regclient/regclient/types/platform"
	"github.com/regclient/regclient/types/ref"
	"golang.org/x/sync/errgroup"
)

// ErrAnnotationUnsupported marks --annotation on a manifest format that has no annotations.
var ErrAnnotationUnsupported = errors.New("annotations not supported")

// plan is the content that one copy will write and the destination's current digest,
// worked out from the source and a HEAD request before anything is written.
type plan struct {
	src       ref.Ref // the source as given
	dst       ref.Ref
	srcDigest string // digest of the source's top-level manifest

	// top is the manifest that the destination tag will name. It is a source manifest
	// unless rebuilt is set.
	top manifest.Manifest
	// topSource is the source pinned to top's digest, for a top that is not rebuilt.
	topSource ref.Ref
	// rebuilt is set when top is new: an index narrowed to some platforms, or a manifest
	// with annotations set. Its children and blobs are copied first, then top is pushed.
	rebuilt bool

	// platforms are the platforms selected by CopyOptions.Platforms, as os/arch[/variant].
	platforms []string

	// destDigest is the digest that the destination reference had before the copy, or ""
	// when it did not exist.
	destDigest string
}

// digest returns the digest that the destination reference will have after the copy.
func (p *plan) digest() string {
	return p.top.GetDescriptor().Digest.String()
}

// upToDate reports whether the destination already holds what the copy would write.
func (p *plan) upToDate() bool {
	return p.destDigest != "" && p.destDigest == p.digest()
}

// buildPlan reads the source, selects platforms, sets annotations and reads the
// destination's current digest. It writes nothing.
func (c *Client) buildPlan(ctx context.Context, spec CopySpec) (*plan, error) {
	srcRef, err := ParseReference(spec.Source)
	if err != nil {
		return nil, fmt.Errorf("source: %w", err)
	}
	dstRef, err := ParseReference(spec.Destination)
	if err != nil {
		return nil, fmt.Errorf("destination: %w", err)
	}
	platforms, err := parsePlatforms(spec.Platforms)
	if err != nil {
		return nil, err
	}
	if err := CheckAnnotations(spec.Annotations); err != nil {
		return nil, err
	}

	// The destination's current digest does not depend on the source, so both requests
	// go out at once, which saves a round trip on every copy, up-to-date or not.
	destHead := make(chan destinationHead, 1)
	go func() {
		digest, err := c.destinationDigest(ctx, dstRef)
		destHead <- destinationHead{digest, err}
	}()
	srcManifest, err := c.rc.ManifestGet(ctx, srcRef)
	head := <-destHead
	if err != nil {
		return nil, fmt.Errorf("reading source manifest %s: %w", srcRef.CommonName(), err)
	}
	if head.err != nil {
		return nil, head.err
	}
	p := &plan{
		src:        srcRef,
		dst:        dstRef,
		srcDigest:  srcManifest.GetDescriptor().Digest.String(),
		top:        srcManifest,
		destDigest: head.digest,
	}
	// Everything is read by digest from here on, so a tag that moves during the copy
	// cannot mix two images.
	p.topSource = srcRef.SetDigest(p.srcDigest)

	if len(platforms) > 0 {
		if err := c.selectTop(ctx, p, platforms); err != nil {
			return nil, err
		}
	}
	if len(spec.Annotations) > 0 {
		if err := annotate(p, spec.Annotations); err != nil {
			return nil, err
		}
	}

	if dstRef.Digest != "" && dstRef.Digest != p.digest() {
		return nil, fmt.Errorf("%w %q: the copy would write digest %s; give the destination a tag or that digest", ErrInvalidReference, spec.Destination, p.digest())
	}
	return p, nil
}

// destinationHead is the result of destinationDigest.
type destinationHead struct {
	digest string
	err    error
}

// destinationDigest returns the digest that dst names now, or "" when the tag, the
// repository or the OCI layout directory does not exist.
func (c *Client) destinationDigest(ctx context.Context, dst ref.Ref) (string, error) {
	head, err := c.rc.ManifestHead(ctx, dst, regclient.WithManifestRequireDigest())
	switch {
	case err == nil:
		return head.GetDescriptor().Digest.String(), nil
	case errors.Is(err, errs.ErrNotFound), errors.Is(err, fs.ErrNotExist):
		return "", nil
	default:
		return "", fmt.Errorf("reading destination manifest %s: %w", dst.CommonName(), err)
	}
}

// selectTop narrows the plan to the requested platforms. One platform of an index makes
// that platform's manifest the top. Several make a new index that lists only them. A
// single-platform source must be one of the requested platforms.
func (c *Client) selectTop(ctx context.Context, p *plan, platforms []platform.Platform) error {
	index, isIndex := p.top.(manifest.Indexer)
	if !isIndex {
		config, err := c.rc.ImageConfig(ctx, p.topSource)
		if err != nil {
			return fmt.Errorf("reading the image config of %s: %w", p.src.CommonName(), err)
		}
		own := config.GetConfig().Platform
		if !slices.ContainsFunc(platforms, func(want platform.Platform) bool { return platform.Match(own, want) }) {
			return fmt.Errorf("%w: %s is a single-platform image for %s; drop --platform or request %s", ErrPlatformNotFound, p.src.CommonName(), own, own)
		}
		p.platforms = []string{own.String()}
		return nil
	}

	children, err := index.GetManifestList()
	if err != nil {
		return fmt.Errorf("reading the manifest list of %s: %w", p.src.CommonName(), err)
	}
	selected, names, err := selectPlatforms(children, platforms, p.src.CommonName())
	if err != nil {
		return err
	}
	p.platforms = names

	if len(selected) == 1 {
		child := p.src.SetDigest(selected[0].Digest.String())
		m, err := c.rc.ManifestGet(ctx, child, regclient.WithManifestDesc(selected[0]))
		if err != nil {
			return fmt.Errorf("reading the %s manifest of %s: %w", names[0], p.src.CommonName(), err)
		}
		p.top = m
		p.topSource = child
		return nil
	}

	if err := index.SetManifestList(selected); err != nil {
		return fmt.Errorf("building an index of %s for %s: %w", p.src.CommonName(), strings.Join(names, ", "), err)
	}
	p.rebuilt = true
	return nil
}

// annotate sets annotations on the plan's top manifest, as `docker buildx imagetools
// create --annotation` sets them on the index it writes. A Docker manifest list becomes an
// OCI index with the same children, because Docker's schema has no annotations field.
func annotate(p *plan, annotations map[string]string) error {
	top := p.top
	if top.GetDescriptor().MediaType == mediatype.Docker2ManifestList {
		converted, err := toOCIIndex(top)
		if err != nil {
			return err
		}
		top = converted
	}

	annotator, ok := top.(manifest.Annotator)
	mediaType := top.GetDescriptor().MediaType
	if !ok || mediaType == mediatype.Docker2Manifest || mediaType == mediatype.Docker1Manifest || mediaType == mediatype.Docker1ManifestSigned {
		return fmt.Errorf("%w: %s is a %s, whose format has no annotations; copy it without --annotation, or select several platforms of an index", ErrAnnotationUnsupported, p.src.CommonName(), mediaType)
	}
	for _, key := range slices.Sorted(maps.Keys(annotations)) {
		if err := annotator.SetAnnotation(key, annotations[key]); err != nil {
			return fmt.Errorf("setting annotation %q on %s: %w", key, p.src.CommonName(), err)
		}
	}
	p.top = top
	p.rebuilt = true
	return nil
}

// toOCIIndex returns an OCI index that lists the children of a Docker manifest list.
func toOCIIndex(list manifest.Manifest) (manifest.Manifest, error) {
	indexer, ok := list.(manifest.Indexer)
	if !ok {
		return nil, fmt.Errorf("%s is not an index", list.GetDescriptor().MediaType)
	}
	children, err := indexer.GetManifestList()
	if err != nil {
		return nil, err
	}
	index := v1.Index{
		Versioned: v1.IndexSchemaVersion,
		MediaType: mediatype.OCI1ManifestList,
		Manifests: children,
	}
	return manifest.New(manifest.WithOrig(index))
}

// CheckAnnotations validates annotation keys without contacting a registry.
func CheckAnnotations(annotations map[string]string) error {
	for key, value := range annotations {
		if key == "" || strings.ContainsAny(key, " \t\n=") {
			return fmt.Errorf("invalid annotation key %q: use a key without spaces or '=', such as org.opencontainers.image.source", key)
		}
		if value == "" {
			return fmt.Errorf("invalid annotation %q: the value is empty; give KEY=VALUE", key)
		}
	}
	return nil
}

// manifestFetchParallel is how many child manifests getManifests requests at once.
const manifestFetchParallel = 8

// getManifests reads the manifests that descriptors name in the repository of src, several
// at once, so that an index of many platforms costs about one round trip rather than one
// per platform. The result is in the order of descriptors.
func (c *Client) getManifests(ctx context.Context, src ref.Ref, descriptors []descriptor.Descriptor) ([]manifest.Manifest, error) {
	manifests := make([]manifest.Manifest, len(descriptors))
	group, groupCtx := errgroup.WithContext(ctx)
	group.SetLimit(manifestFetchParallel)
	for i, d := range descriptors {
		group.Go(func() error {
			m, err := c.rc.ManifestGet(groupCtx, src.SetDigest(d.Digest.String()), regclient.WithManifestDesc(d))
			if err != nil {
				return fmt.Errorf("reading manifest %s of %s: %w", d.Digest, src.CommonName(), err)
			}
			manifests[i] = m
			return nil
		})
	}
	if err := group.Wait(); err != nil {
		return nil, err
	}
	return manifests, nil
}

// listBlobs returns the configs and layers that the copy transfers, each digest once,
// reading the child manifests of an index from the source. Referrers are not included.
func (c *Client) listBlobs(ctx context.Context, p *plan) ([]descriptor.Descriptor, error) {
	seen := map[string]bool{}
	var blobs []descriptor.Descriptor
	add := func(d descriptor.Descriptor) {
		if !seen[d.Digest.String()] && len(d.URLs) == 0 {
			seen[d.Digest.String()] = true
			blobs = append(blobs, d)
		}
	}

	var walk func(m manifest.Manifest, depth int) error
	walk = func(m manifest.Manifest, depth int) error {
		if image, ok := m.(manifest.Imager); ok {
			config, err := image.GetConfig()
			if err == nil {
				add(config)
			}
			layers, err := image.GetLayers()
			if err != nil {
				return err
			}
			for _, layer := range layers {
				add(layer)
			}
			return nil
		}
		index, ok := m.(manifest.Indexer)
		if !ok {
			return nil
		}
		if depth > 2 {
			return fmt.Errorf("%s nests indexes more than two levels deep", p.src.CommonName())
		}
		children, err := index.GetManifestList()
		if err != nil {
			return err
		}
		childManifests, err := c.getManifests(ctx, p.src, children)
		if err != nil {
			return err
		}
		for _, childManifest := range childManifests {
			if err := walk(childManifest, depth+1); err != nil {
				return err
			}
		}
		return nil
	}

	if err := walk(p.top, 0); err != nil {
		return nil, fmt.Errorf("listing the blobs of %s: %w", p.src.CommonName(), err)
	}
	return blobs, nil
}
