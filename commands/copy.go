package commands

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	"github.com/dustin/go-humanize"
	"github.com/urfave/cli/v2"

	"github.com/imgxfer/imgxfer/internal/registry"
	"github.com/imgxfer/imgxfer/internal/version"
	"github.com/imgxfer/imgxfer/routing"
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
		Flags: []cli.Flag{
			&cli.StringFlag{
				Name:    flagRules,
				Usage:   "rules file that maps registry hosts to proxies (default: imgxfer/rules.yaml in the user config directory, if present)",
				EnvVars: []string{routing.EnvRules},
			},
			&cli.StringFlag{
				Name:  flagProxy,
				Usage: "route DEST's registry through this proxy URL, ahead of any rule, such as http://mesh-proxy:31080",
			},
			&cli.StringSliceFlag{
				Name:  flagPlatform,
				Usage: "copy only this platform of an index, as os/arch[/variant]; repeat for several, which get a new index",
			},
			&cli.StringFlag{
				Name:  flagFormat,
				Usage: "result format on stdout: text or json",
				Value: formatText,
			},
		},
		Action: func(c *cli.Context) error {
			if err := exactArgs(c, "SRC", "DEST"); err != nil {
				return err
			}
			opts := copyOptions{
				source:      c.Args().Get(0),
				destination: c.Args().Get(1),
				rulesPath:   c.String(flagRules),
				proxy:       c.String(flagProxy),
				platforms:   c.StringSlice(flagPlatform),
				format:      c.String(flagFormat),
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

	rules, err := loadRules(opts.rulesPath)
	if err != nil {
		return usageErrorf("%w", err)
	}
	if opts.proxy != "" {
		destination, _ := registry.ParseReference(opts.destination)
		rules, err = rules.WithProxy(destination.Registry, opts.proxy)
		if err != nil {
			return usageErrorf("%w", err)
		}
	}

	client, err := registry.New(registry.Options{Rules: rules, Logger: a.log, UserAgent: version.UserAgent()})
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

// loadRules loads the rules file at path, or the default rules file when path is empty
// and that file exists, or no rules at all.
func loadRules(path string) (*routing.Rules, error) {
	if path != "" {
		return routing.Load(path)
	}
	defaultPath, err := routing.DefaultPath()
	if err != nil {
		return routing.Empty(), nil
	}
	if _, err := os.Stat(defaultPath); err != nil {
		return routing.Empty(), nil
	}
	return routing.Load(defaultPath)
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
