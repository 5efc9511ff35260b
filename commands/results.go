package commands

import (
	"encoding/json"
	"fmt"
	"io"
	"maps"
	"slices"
	"strings"
	"time"

	"github.com/dustin/go-humanize"

	"github.com/imgxfer/imgxfer/internal/registry"
)

// copyOutput is the JSON form of one copy's result: exact numbers, durations in seconds.
type copyOutput struct {
	Origin            string            `json:"origin,omitempty"`
	Status            registry.Status   `json:"status"`
	Source            string            `json:"source"`
	SourceDigest      string            `json:"sourceDigest,omitempty"`
	Destination       string            `json:"destination"`
	DestinationDigest string            `json:"destinationDigest,omitempty"`
	MediaType         string            `json:"mediaType,omitempty"`
	Platforms         []string          `json:"platforms,omitempty"`
	Annotations       map[string]string `json:"annotations,omitempty"`
	BytesCopied       int64             `json:"bytesCopied"`
	BlobsCopied       int               `json:"blobsCopied"`
	BlobsSkipped      int               `json:"blobsSkipped"`
	BlobsMounted      int               `json:"blobsMounted"`
	DurationSeconds   float64           `json:"durationSeconds"`
	Plan              *planOutput       `json:"plan,omitempty"`
	Routes            *routesOutput     `json:"routes,omitempty"`
	Error             string            `json:"error,omitempty"`
	ExitCode          int               `json:"exitCode,omitempty"` // the exit code this failure alone would give
}

type planOutput struct {
	Blobs        int   `json:"blobs"`
	Bytes        int64 `json:"bytes"`
	BlobsPresent int   `json:"blobsPresent"`
	BytesPresent int64 `json:"bytesPresent"`
	NewManifest  bool  `json:"newManifest"`
}

type routesOutput struct {
	Source      *routeInfo `json:"source,omitempty"`
	Destination *routeInfo `json:"destination,omitempty"`
}

func toOutput(r *registry.CopyResult, routes *routeDescriber) copyOutput {
	out := copyOutput{
		Origin:            r.Origin,
		Status:            r.Status,
		Source:            r.Source,
		SourceDigest:      r.SourceDigest,
		Destination:       r.Destination,
		DestinationDigest: r.DestinationDigest,
		MediaType:         r.MediaType,
		Platforms:         r.Platforms,
		Annotations:       r.Annotations,
		BytesCopied:       r.BytesCopied,
		BlobsCopied:       r.BlobsCopied,
		BlobsSkipped:      r.BlobsSkipped,
		BlobsMounted:      r.BlobsMounted,
		DurationSeconds:   r.Duration.Seconds(),
	}
	if r.Plan != nil {
		out.Plan = &planOutput{
			Blobs:        r.Plan.Blobs,
			Bytes:        r.Plan.Bytes,
			BlobsPresent: r.Plan.BlobsPresent,
			BytesPresent: r.Plan.BytesPresent,
			NewManifest:  r.Plan.NewManifest,
		}
	}
	if routes != nil {
		out.Routes = &routesOutput{Source: routes.describe(r.Source), Destination: routes.describe(r.Destination)}
	}
	if r.Err != nil {
		out.Error = r.Err.Error()
		out.ExitCode = ExitCode(copyError(r.Err))
	}
	return out
}

// printResults writes the results of a copy command: JSON lines, or a text block.
func printResults(w io.Writer, s copySettings, results []*registry.CopyResult, routes *routeDescriber) error {
	if s.format == formatJSON {
		return writeJSONLines(w, results, routes)
	}
	if s.quiet {
		return nil
	}
	var b strings.Builder
	if s.dryRun {
		writeRoutes(&b, results, routes)
	}
	for _, r := range results {
		writeCopyBlock(&b, r)
	}
	_, err := io.WriteString(w, b.String())
	return err
}

func writeJSONLines(w io.Writer, results []*registry.CopyResult, routes *routeDescriber) error {
	encoder := json.NewEncoder(w)
	for _, r := range results {
		if err := encoder.Encode(toOutput(r, routes)); err != nil {
			return err
		}
	}
	return nil
}

// writeCopyBlock writes one copy's result as labelled lines.
func writeCopyBlock(b *strings.Builder, r *registry.CopyResult) {
	fmt.Fprintf(b, "source:       %s\n", withDigest(r.Source, r.SourceDigest))
	fmt.Fprintf(b, "destination:  %s\n", withDigest(r.Destination, r.DestinationDigest))
	if len(r.Platforms) > 0 {
		fmt.Fprintf(b, "platforms:    %s\n", strings.Join(r.Platforms, ", "))
	}
	if len(r.Annotations) > 0 {
		fmt.Fprintf(b, "annotations:  %s\n", formatAnnotations(r.Annotations))
	}
	switch r.Status {
	case registry.StatusSkipped:
		fmt.Fprintf(b, "skipped:      the destination is up to date, checked in %s\n", formatDuration(r.Duration))
	case registry.StatusPlanned:
		fmt.Fprintf(b, "would copy:   %s\n", describePlan(r.Plan))
	default:
		fmt.Fprintf(b, "copied:       %s\n", describeTransfer(r))
	}
}

// describeTransfer describes what a copy sent, such as "9.6 MiB in 4 blobs, 0 already present,
// in 69ms".
func describeTransfer(r *registry.CopyResult) string {
	text := fmt.Sprintf("%s in %d blobs, %d already present", humanize.IBytes(uint64(r.BytesCopied)), r.BlobsCopied, r.BlobsSkipped)
	if r.BlobsMounted > 0 {
		text += fmt.Sprintf(", %d mounted", r.BlobsMounted)
	}
	return text + ", in " + formatDuration(r.Duration)
}

func describePlan(p *registry.PlanSummary) string {
	if p == nil {
		return "unknown"
	}
	text := fmt.Sprintf("%s in %d blobs, %d already present (%s)", humanize.IBytes(uint64(p.Bytes-p.BytesPresent)), p.Blobs-p.BlobsPresent, p.BlobsPresent, humanize.IBytes(uint64(p.BytesPresent)))
	if p.NewManifest {
		text += "; a new top-level manifest"
	}
	return text
}

func formatAnnotations(annotations map[string]string) string {
	var pairs []string
	for _, key := range slices.Sorted(maps.Keys(annotations)) {
		pairs = append(pairs, key+"="+annotations[key])
	}
	return strings.Join(pairs, ", ")
}

func formatDuration(d time.Duration) string {
	switch {
	case d >= 10*time.Second:
		return d.Round(100 * time.Millisecond).String()
	case d >= time.Millisecond:
		return d.Round(time.Millisecond).String()
	}
	return d.String()
}

// writeRoutes lists how the requests for each registry of the results are sent.
func writeRoutes(b *strings.Builder, results []*registry.CopyResult, routes *routeDescriber) {
	seen := map[string]bool{}
	var lines [][2]string
	width := 0
	for _, r := range results {
		for _, reference := range []string{r.Source, r.Destination} {
			route := routes.describe(reference)
			if route == nil || seen[route.Registry] {
				continue
			}
			seen[route.Registry] = true
			how := "direct"
			if route.Proxy != "" {
				how = fmt.Sprintf("through %s with header %q (%s)", route.Proxy, route.Header, route.Rule)
			}
			lines = append(lines, [2]string{route.Registry, how})
			width = max(width, len(route.Registry))
		}
	}
	if len(lines) == 0 {
		return
	}
	b.WriteString("routes:\n")
	for _, line := range lines {
		fmt.Fprintf(b, "  %-*s  %s\n", width, line[0], line[1])
	}
}

// withDigest returns reference@digest, or reference alone when it already ends with that
// digest or the digest is unknown.
func withDigest(reference, digest string) string {
	if digest == "" || strings.HasSuffix(reference, "@"+digest) {
		return reference
	}
	return reference + "@" + digest
}
