package registry

import (
	"context"
	"errors"
	"fmt"
	"regexp"
	"slices"

	"golang.org/x/sync/errgroup"
)

// ErrNoTagMatched marks a batch entry whose tag patterns match no tag of the source.
var ErrNoTagMatched = errors.New("no tag matched")

// SyncEntry is one entry of a batch: a single copy, or one copy per selected tag of a
// source repository.
type SyncEntry struct {
	// Origin names where the entry was defined, such as "images.yaml:12", for messages.
	Origin string

	// Source is an image reference, or a repository when tags are selected.
	Source string

	// Destination is an image reference, or a repository when tags are selected. Each
	// selected tag is copied under the same tag.
	Destination string

	// Tags, TagPatterns and AllTags select tags of the Source repository. Tags are copied
	// whether or not a listing shows them. Patterns match whole tags. Listing tags costs a
	// request to the source registry per entry.
	Tags        []string
	TagPatterns []*regexp.Regexp
	AllTags     bool

	Platforms   []string
	Annotations map[string]string
}

// selectsTags reports whether the entry names a repository whose tags it selects.
func (e SyncEntry) selectsTags() bool {
	return len(e.Tags) > 0 || len(e.TagPatterns) > 0 || e.AllTags
}

// SyncOptions configures a batch.
type SyncOptions struct {
	CopyOptions

	// Parallel is the maximum number of copies, and of tag listings, running at once.
	// Values below 1 mean 1.
	Parallel int
}

// Sync runs the copies of a batch, at most opts.Parallel at a time. Every copy runs on its
// own: a failure stops that copy alone, and its result carries the error. It returns one
// result per copy, in the order of the entries and, within an entry, of its sorted tags.
// An entry whose tags cannot be listed, or whose patterns match no tag, gives one failed
// result. When ctx ends, copies not yet started fail with ctx's error.
//
// Blobs that one copy sends to a registry are mounted by the copies after it that need
// them in another repository of that registry.
func (c *Client) Sync(ctx context.Context, entries []SyncEntry, opts SyncOptions) []*CopyResult {
	parallel := max(opts.Parallel, 1)

	specs, expandFailures := c.expandAll(ctx, entries, parallel)

	ledger := newBlobLedger()
	results := make([]*CopyResult, len(specs))
	group := errgroup.Group{}
	group.SetLimit(parallel)
	for i, spec := range specs {
		if failure := expandFailures[i]; failure != nil {
			results[i] = failure
			if opts.Track != nil {
				opts.Track(spec).Finished(failure)
			}
			continue
		}
		group.Go(func() error {
			if err := ctx.Err(); err != nil {
				results[i] = &CopyResult{Origin: spec.Origin, Source: spec.Source, Destination: spec.Destination, Status: StatusFailed, Err: context.Cause(ctx)}
				return nil
			}
			results[i] = c.copyOne(ctx, spec, opts.CopyOptions, ledger)
			return nil
		})
	}
	_ = group.Wait()
	return results
}

// expandAll turns entries into copies, listing tags where entries select them. A failed
// entry keeps one place in the returned specs, with its failure at the same index in the
// returned map.
func (c *Client) expandAll(ctx context.Context, entries []SyncEntry, parallel int) ([]CopySpec, map[int]*CopyResult) {
	expanded := make([][]CopySpec, len(entries))
	failures := make([]error, len(entries))
	group := errgroup.Group{}
	group.SetLimit(parallel)
	for i, entry := range entries {
		group.Go(func() error {
			expanded[i], failures[i] = c.expand(ctx, entry)
			return nil
		})
	}
	_ = group.Wait()

	var specs []CopySpec
	failed := map[int]*CopyResult{}
	for i, entry := range entries {
		if failures[i] != nil {
			failed[len(specs)] = &CopyResult{
				Origin:      entry.Origin,
				Source:      entry.Source,
				Destination: entry.Destination,
				Status:      StatusFailed,
				Err:         failures[i],
			}
			specs = append(specs, CopySpec{Origin: entry.Origin, Source: entry.Source, Destination: entry.Destination})
			continue
		}
		specs = append(specs, expanded[i]...)
	}
	return specs, failed
}

// expand returns the copies of one entry.
func (c *Client) expand(ctx context.Context, entry SyncEntry) ([]CopySpec, error) {
	spec := func(source, destination string) CopySpec {
		return CopySpec{
			Origin:      entry.Origin,
			Source:      source,
			Destination: destination,
			Platforms:   entry.Platforms,
			Annotations: entry.Annotations,
		}
	}
	if !entry.selectsTags() {
		return []CopySpec{spec(entry.Source, entry.Destination)}, nil
	}

	srcRepo, err := ParseReference(entry.Source)
	if err != nil {
		return nil, fmt.Errorf("source: %w", err)
	}
	dstRepo, err := ParseReference(entry.Destination)
	if err != nil {
		return nil, fmt.Errorf("destination: %w", err)
	}

	tags := slices.Clone(entry.Tags)
	if entry.AllTags || len(entry.TagPatterns) > 0 {
		listed, err := c.listTags(ctx, entry.Source)
		if err != nil {
			return nil, err
		}
		matched := 0
		for _, tag := range listed {
			if entry.AllTags || slices.ContainsFunc(entry.TagPatterns, func(p *regexp.Regexp) bool { return p.MatchString(tag) }) {
				tags = append(tags, tag)
				matched++
			}
		}
		if matched == 0 && len(entry.Tags) == 0 {
			return nil, fmt.Errorf("%w: %s has %d tags and none matches %s; check the patterns, which must match whole tags", ErrNoTagMatched, srcRepo.SetTag("").CommonName(), len(listed), describePatterns(entry))
		}
	}
	slices.Sort(tags)
	tags = slices.Compact(tags)

	specs := make([]CopySpec, 0, len(tags))
	for _, tag := range tags {
		specs = append(specs, spec(srcRepo.SetTag(tag).CommonName(), dstRepo.SetTag(tag).CommonName()))
	}
	return specs, nil
}

func describePatterns(entry SyncEntry) string {
	if entry.AllTags {
		return "any tag"
	}
	text := ""
	for i, p := range entry.TagPatterns {
		if i > 0 {
			text += ", "
		}
		text += fmt.Sprintf("%q", p.String())
	}
	return text
}

// listTags lists the tags of the repository of source, with the same handling of proxy
// rejections and credentials as a copy.
func (c *Client) listTags(ctx context.Context, source string) ([]string, error) {
	repo, err := ParseReference(source)
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	ctx = withRejectionCancel(ctx, cancel)
	ctx, watch := c.watchAuth(ctx, cancel)

	list, err := c.rc.TagList(ctx, repo.SetTag(""))
	if err == nil {
		var tags []string
		tags, err = list.GetTags()
		if err == nil {
			return tags, nil
		}
	}
	if cause := rejectionCause(ctx); cause != nil {
		return nil, cause
	}
	return nil, c.explain(ctx, fmt.Errorf("listing the tags of %s: %w", repo.SetTag("").CommonName(), err), watch)
}
