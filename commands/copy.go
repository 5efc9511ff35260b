package commands

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/dustin/go-humanize"
	"github.com/urfave/cli/v2"

	"github.com/imgxfer/imgxfer/internal/registry"
	"github.com/imgxfer/imgxfer/internal/version"
)

const (
	flagRules    = "rules"
	flagProxy    = "proxy"
	flagPlatform = "platform"
	flagFormat   = "format"

	formatText = "text"
	formatJSON = "json"
)

type copyOptions struct {
	source      string
	destination string
	rulesPath   string // empty: the default rules file, if it exists
	proxy       string // one-off proxy URL for the destination registry
	platforms   []string
	format      string
	srcCred     *registry.Credential // nil: docker's stored credentials
	destCred    *registry.Credential
}

func (a *App) copyCommand() *cli.Command {
	return &cli.Command{
		Name:      "copy",
		Aliases:   []string{"cp"},
		Usage:     "copy an image, with every platform of an index, from SRC to DEST",
		ArgsUsage: "SRC DEST",
		Description: `SRC and DEST are image references: [registry/]repository[:tag][@digest].
A name without registry is on Docker Hub, and one without tag or digest means "latest".

Requests for hosts that a route in the rules file names go through that route's proxy,
with a header naming the real host; all others go direct. Credentials come from docker's
config.json and credential helpers, under the real registry host.

Examples:
  imgxfer copy --rules rules.yaml registry.dev.test:5000/team/app:1.4 registry.prod.test/team/app:1.4
  imgxfer copy --proxy http://mesh-proxy:31080 alpine:3.20 registry.prod.test/library/alpine:3.20
  imgxfer copy --platform linux/amd64 --platform linux/arm64 SRC DEST`,
		Flags: append(append(append(
			routeFlags("route DEST's registry through this proxy URL, ahead of any rule, such as http://mesh-proxy:31080"),
			credentialFlags("src", "source")...),
			credentialFlags("dest", "destination")...),
			&cli.StringSliceFlag{
				Name:  flagPlatform,
				Usage: "copy only this platform of an index, as os/arch[/variant]; repeat for several, which get a new index",
			},
			&cli.StringFlag{
				Name:  flagFormat,
				Usage: "result format on stdout: text or json",
				Value: formatText,
			},
		),
		Action: func(c *cli.Context) error {
			if err := exactArgs(c, "SRC", "DEST"); err != nil {
				return err
			}
			if c.Bool("src-password-stdin") && c.Bool("dest-password-stdin") {
				return usageErrorf("--src-password-stdin and --dest-password-stdin both read stdin; give one password through $IMGXFER_SRC_PASSWORD or $IMGXFER_DEST_PASSWORD")
			}
			srcCred, err := a.sideCredential(c, "src")
			if err != nil {
				return err
			}
			destCred, err := a.sideCredential(c, "dest")
			if err != nil {
				return err
			}
			opts := copyOptions{
				source:      c.Args().Get(0),
				destination: c.Args().Get(1),
				rulesPath:   c.String(flagRules),
				proxy:       c.String(flagProxy),
				platforms:   c.StringSlice(flagPlatform),
				format:      c.String(flagFormat),
				srcCred:     srcCred,
				destCred:    destCred,
			}
			return a.runCopy(c.Context, opts)
		},
	}
}

func (a *App) runCopy(ctx context.Context, opts copyOptions) error {
	if opts.format != formatText && opts.format != formatJSON {
		return usageErrorf("invalid --%s %q; use %s or %s", flagFormat, opts.format, formatText, formatJSON)
	}
	for _, ref := range []struct{ name, value string }{{"SRC", opts.source}, {"DEST", opts.destination}} {
		if _, err := registry.ParseReference(ref.value); err != nil {
			return usageErrorf("%s: %w", ref.name, err)
		}
	}

	if err := registry.CheckPlatforms(opts.platforms); err != nil {
		return usageErrorf("%w", err)
	}

	srcRef, _ := registry.ParseReference(opts.source)
	destRef, _ := registry.ParseReference(opts.destination)
	rules, err := loadRoutes(opts.rulesPath, opts.proxy, destRef.Registry)
	if err != nil {
		return err
	}

	credentials := map[string]registry.Credential{}
	if opts.srcCred != nil {
		credentials[srcRef.Registry] = *opts.srcCred
	}
	if opts.destCred != nil {
		if opts.srcCred != nil && srcRef.Registry == destRef.Registry && *opts.srcCred != *opts.destCred {
			return usageErrorf("SRC and DEST are both on %s, which takes one set of credentials; give them once", destRef.Registry)
		}
		credentials[destRef.Registry] = *opts.destCred
	}

	client, err := registry.New(registry.Options{Rules: rules, Logger: a.log, UserAgent: version.UserAgent(), Credentials: credentials})
	if err != nil {
		return usageErrorf("%w", err)
	}
	defer client.Close()

	result, err := client.Copy(ctx, opts.source, opts.destination, registry.CopyOptions{Platforms: opts.platforms})
	if err != nil {
		if errors.Is(err, registry.ErrPlatformNotFound) || errors.Is(err, registry.ErrInvalidReference) {
			return usageErrorf("%w", err)
		}
		return err
	}
	return printCopyResult(a.stdout, opts.format, result)
}

// copyOutput is the JSON form of a copy result: exact numbers, durations in seconds.
type copyOutput struct {
	Source            string   `json:"source"`
	SourceDigest      string   `json:"sourceDigest"`
	Destination       string   `json:"destination"`
	DestinationDigest string   `json:"destinationDigest"`
	MediaType         string   `json:"mediaType"`
	Platforms         []string `json:"platforms,omitempty"`
	BytesCopied       int64    `json:"bytesCopied"`
	BlobsCopied       int      `json:"blobsCopied"`
	BlobsSkipped      int      `json:"blobsSkipped"`
	DurationSeconds   float64  `json:"durationSeconds"`
}

func printCopyResult(w io.Writer, format string, result *registry.CopyResult) error {
	if format == formatJSON {
		encoder := json.NewEncoder(w)
		return encoder.Encode(copyOutput{
			Source:            result.Source,
			SourceDigest:      result.SourceDigest,
			Destination:       result.Destination,
			DestinationDigest: result.DestinationDigest,
			MediaType:         result.MediaType,
			Platforms:         result.Platforms,
			BytesCopied:       result.BytesCopied,
			BlobsCopied:       result.BlobsCopied,
			BlobsSkipped:      result.BlobsSkipped,
			DurationSeconds:   result.Duration.Seconds(),
		})
	}

	var b strings.Builder
	fmt.Fprintf(&b, "source:       %s@%s\n", result.Source, result.SourceDigest)
	fmt.Fprintf(&b, "destination:  %s@%s\n", result.Destination, result.DestinationDigest)
	if len(result.Platforms) > 0 {
		fmt.Fprintf(&b, "platforms:    %s\n", strings.Join(result.Platforms, ", "))
	}
	fmt.Fprintf(&b, "copied:       %s in %d blobs, %d already present, in %s\n",
		humanize.IBytes(uint64(result.BytesCopied)), result.BlobsCopied, result.BlobsSkipped,
		result.Duration.Round(time.Millisecond))
	_, err := io.WriteString(w, b.String())
	return err
}
