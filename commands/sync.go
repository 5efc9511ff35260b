package commands

import (
	"context"
	"fmt"
	"io"
	"maps"
	"slices"
	"strings"
	"time"

	"github.com/dustin/go-humanize"
	"github.com/urfave/cli/v2"

	"github.com/imgxfer/imgxfer/internal/batch"
	"github.com/imgxfer/imgxfer/internal/registry"
	"github.com/imgxfer/imgxfer/internal/version"
	"github.com/imgxfer/imgxfer/routing"
)

const (
	flagFile       = "file"
	flagFileFormat = "file-format"
	flagAuth       = "auth"
	flagParallel   = "parallel"

	defaultParallel = 4
	maxParallel     = 64
)

type syncOptions struct {
	file       string
	fileFormat batch.Format
	authFile   string // image-syncer auth file; empty for none
	rulesPath  string
	parallel   int
	settings   copySettings
}

func (a *App) syncCommand() *cli.Command {
	formats := make([]string, len(batch.Formats))
	for i, f := range batch.Formats {
		formats[i] = string(f)
	}
	return &cli.Command{
		Name:  "sync",
		Usage: "run the copies that a batch file lists, several at a time",
		Description: `The batch file lists copies in one of three formats, YAML or JSON, told apart by
their structure unless --file-format names one:

  imgxfer       version, defaults and copies: source, destination or destination_prefix,
                tags, tag_patterns, all_tags, platforms, annotations, proxy
  transfer      the in-house transfer tool's list (or single object) of
                {"src": {"image": ...}, "dest": {"image": ...}, "proxy_domain": ...}
  image-syncer  image-syncer's images file: source to destination or list of destinations

Each copy runs on its own: a failure stops that copy only, and the summary lists every
failure with its reason. A destination that already has the digest that its copy would
write costs one manifest HEAD request. Blobs that one copy sent to a registry are mounted,
not sent again, by the copies that need them in other repositories of that registry.

The exit code is 0 when every copy succeeded, 3 when some failed, and, when all failed for
the same reason, that reason's code (4 credentials, 5 not found, 6 network or route).

Examples:
  imgxfer sync -f images.yaml --rules rules.yaml
  imgxfer sync -f transfer.json --parallel 8 --format json > results.jsonl
  imgxfer sync -f images.yaml --auth auth.yaml --dry-run`,
		Flags: append([]cli.Flag{
			&cli.StringFlag{
				Name:    flagFile,
				Aliases: []string{"f"},
				Usage:   "batch file that lists the copies, YAML or JSON; - reads stdin",
			},
			&cli.StringFlag{
				Name:  flagFileFormat,
				Usage: "format of the batch file: " + strings.Join(formats, ", "),
				Value: string(batch.FormatAuto),
			},
			&cli.StringFlag{
				Name:  flagAuth,
				Usage: "image-syncer auth file: registry or registry/namespace to username, password and insecure (plain HTTP)",
			},
			&cli.StringFlag{
				Name:    flagRules,
				Usage:   "rules file that maps registry hosts to proxies (default: imgxfer/rules.yaml in the user config directory, if present)",
				EnvVars: []string{routing.EnvRules},
			},
			&cli.IntFlag{
				Name:  flagParallel,
				Usage: fmt.Sprintf("number of copies that run at once, 1 to %d", maxParallel),
				Value: defaultParallel,
			},
		}, copySettingFlags("copy only this platform of every copy that names no platforms of its own; repeat or separate with commas for several")...),
		Action: func(c *cli.Context) error {
			if err := exactArgs(c); err != nil {
				return err
			}
			if c.String(flagFile) == "" {
				return usageErrorf("--%s is missing; name the batch file, such as --%s images.yaml", flagFile, flagFile)
			}
			settings, err := readCopySettings(c)
			if err != nil {
				return err
			}
			settings.batch = true
			format, err := batch.ParseFormat(c.String(flagFileFormat))
			if err != nil {
				return usageErrorf("--%s: %w", flagFileFormat, err)
			}
			parallel := c.Int(flagParallel)
			if parallel < 1 || parallel > maxParallel {
				return usageErrorf("invalid --%s %d; use 1 to %d", flagParallel, parallel, maxParallel)
			}
			return a.runSync(c.Context, syncOptions{
				file:       c.String(flagFile),
				fileFormat: format,
				authFile:   c.String(flagAuth),
				rulesPath:  c.String(flagRules),
				parallel:   parallel,
				settings:   settings,
			})
		},
	}
}

func (a *App) runSync(ctx context.Context, opts syncOptions) error {
	file, err := batch.Load(opts.file, opts.fileFormat)
	if err != nil {
		return usageErrorf("%w", err)
	}
	auth := file.Auth
	if opts.authFile != "" {
		if auth, err = batch.LoadAuth(opts.authFile); err != nil {
			return usageErrorf("%w", err)
		}
	}

	rules, err := loadRules(opts.rulesPath)
	if err != nil {
		return usageErrorf("%w", err)
	}
	credentials := map[string]registry.Credential{}
	if auth != nil {
		creds, err := auth.Credentials()
		if err != nil {
			return usageErrorf("%w", err)
		}
		for host, cred := range creds {
			credentials[host] = registry.Credential{Username: cred.Username, Password: cred.Password}
		}
		rules = withPlainHTTP(rules, auth.InsecureRegistries())
	}
	rules, routes, err := withEntryProxies(rules, file.Entries)
	if err != nil {
		return err
	}

	maxRequests := opts.settings.maxRequests
	if maxRequests == 0 {
		maxRequests = registry.MaxRequestsFor(opts.parallel)
	}
	client, err := registry.New(registry.Options{
		Rules:       rules,
		Logger:      a.log,
		UserAgent:   version.UserAgent(),
		Credentials: credentials,
		MaxRequests: maxRequests,
	})
	if err != nil {
		return usageErrorf("%w", err)
	}
	defer client.Close()

	entries := applyDefaults(file.Entries, opts.settings)
	a.log.WithField("file", opts.file).WithField("format", file.Format).WithField("entries", len(entries)).Debug("read batch file")

	start := time.Now()
	display, stop := a.startDisplay(opts.settings)
	results := client.Sync(ctx, entries, registry.SyncOptions{
		CopyOptions: opts.settings.copyOptions(display),
		Parallel:    opts.parallel,
	})
	stop()
	elapsed := time.Since(start)

	if err := printSyncResults(a.stdout, opts.settings, results, routes, elapsed); err != nil {
		return err
	}
	if opts.settings.format == formatJSON {
		a.logSummary(results, elapsed)
	}
	if ctx.Err() != nil {
		return fmt.Errorf("interrupted after %d of %d copies: %w", countStatus(results, registry.StatusCopied, registry.StatusSkipped, registry.StatusPlanned), len(results), context.Cause(ctx))
	}
	return batchFailure(results)
}

// withPlainHTTP returns the rules with a plain-HTTP entry for each host that the rules do
// not list, because image-syncer's insecure: true means plain HTTP. The rules file's own entries win.
func withPlainHTTP(rules *routing.Rules, hosts []string) *routing.Rules {
	var added []routing.Registry
	for _, host := range hosts {
		if rules.RegistryFor(host) == nil {
			added = append(added, routing.Registry{Host: host, TLS: routing.TLSDisabled})
		}
	}
	if len(added) == 0 {
		return rules
	}
	copied := *rules
	copied.Registries = append(slices.Clone(rules.Registries), added...)
	return &copied
}

// withEntryProxies puts a route ahead of the rules for each destination registry that an
// entry routes through a proxy. Two entries that name different proxies for one registry
// are an error, because routes apply to a registry as a whole.
func withEntryProxies(rules *routing.Rules, entries []batch.Entry) (*routing.Rules, *routeDescriber, error) {
	type proxyFor struct{ proxy, origin string }
	byHost := map[string]proxyFor{}
	var hosts []string
	for _, e := range entries {
		if e.Proxy == "" {
			continue
		}
		dst, err := registry.ParseReference(e.Destination)
		if err != nil {
			return nil, nil, usageErrorf("%s: destination: %w", e.Origin, err)
		}
		host := dst.Registry
		if first, seen := byHost[host]; seen {
			if first.proxy != e.Proxy {
				return nil, nil, usageErrorf("%s: proxy %s for %s differs from %s given at %s; route one registry through one proxy", e.Origin, e.Proxy, host, first.proxy, first.origin)
			}
			continue
		}
		byHost[host] = proxyFor{e.Proxy, e.Origin}
		hosts = append(hosts, host)
	}

	describer := &routeDescriber{added: map[string]string{}}
	for _, host := range slices.Backward(hosts) {
		var err error
		rules, err = rules.WithProxy(host, byHost[host].proxy)
		if err != nil {
			return nil, nil, usageErrorf("%s: %w", byHost[host].origin, err)
		}
		describer.added[host] = byHost[host].origin
	}
	describer.rules = rules
	return rules, describer, nil
}

// applyDefaults gives the flags' platforms to entries that name none, and merges the
// flags' annotations under each entry's own.
func applyDefaults(entries []batch.Entry, s copySettings) []registry.SyncEntry {
	out := make([]registry.SyncEntry, len(entries))
	for i, e := range entries {
		entry := e.SyncEntry
		if len(entry.Platforms) == 0 {
			entry.Platforms = s.platforms
		}
		if len(s.annotations) > 0 {
			merged := maps.Clone(s.annotations)
			maps.Copy(merged, entry.Annotations)
			entry.Annotations = merged
		}
		out[i] = entry
	}
	return out
}

// batchError reports the failed copies of a batch. Its exit code is ExitPartial, or, when
// every copy failed with the same exit code, that code.
type batchError struct {
	failed int
	total  int
	first  *registry.CopyResult
	code   int
}

func (e *batchError) Error() string {
	return fmt.Sprintf("%d of %d copies failed; the first: %s: %v", e.failed, e.total, describeCopy(e.first), e.first.Err)
}

func (e *batchError) ExitCode() int { return e.code }

func batchFailure(results []*registry.CopyResult) error {
	var failed []*registry.CopyResult
	codes := map[int]bool{}
	for _, r := range results {
		if r.Status == registry.StatusFailed {
			failed = append(failed, r)
			codes[ExitCode(copyError(r.Err))] = true
		}
	}
	if len(failed) == 0 {
		return nil
	}
	code := ExitPartial
	if len(failed) == len(results) && len(codes) == 1 {
		for c := range codes {
			code = c
		}
	}
	return &batchError{failed: len(failed), total: len(results), first: failed[0], code: code}
}

func describeCopy(r *registry.CopyResult) string {
	text := r.Source + " -> " + r.Destination
	if r.Origin != "" {
		text = r.Origin + " " + text
	}
	return text
}

func countStatus(results []*registry.CopyResult, statuses ...registry.Status) int {
	n := 0
	for _, r := range results {
		if slices.Contains(statuses, r.Status) {
			n++
		}
	}
	return n
}

// printSyncResults writes JSON lines, or a line per copy, the failures and a summary.
func printSyncResults(w io.Writer, s copySettings, results []*registry.CopyResult, routes *routeDescriber, elapsed time.Duration) error {
	if s.format == formatJSON {
		return writeJSONLines(w, results, routes)
	}

	var b strings.Builder
	if s.dryRun && !s.quiet {
		writeRoutes(&b, results, routes)
	}
	if !s.quiet {
		for _, r := range results {
			writeCopyLine(&b, r)
		}
	}

	failed := countStatus(results, registry.StatusFailed)
	if failed > 0 {
		fmt.Fprintf(&b, "failed copies:\n")
		for _, r := range results {
			if r.Status == registry.StatusFailed {
				fmt.Fprintf(&b, "  %s: %v\n", describeCopy(r), r.Err)
			}
		}
	}
	if !s.quiet {
		b.WriteString(summaryLine(results, elapsed) + "\n")
	}
	_, err := io.WriteString(w, b.String())
	return err
}

// writeCopyLine writes one copy's outcome on one line.
func writeCopyLine(b *strings.Builder, r *registry.CopyResult) {
	var detail string
	switch r.Status {
	case registry.StatusCopied:
		detail = describeTransfer(r)
	case registry.StatusSkipped:
		detail = "up to date"
	case registry.StatusPlanned:
		detail = "would copy " + describePlan(r.Plan)
	case registry.StatusFailed:
		detail = "listed under failed copies"
	}
	if len(r.Platforms) > 0 {
		detail += "; " + strings.Join(r.Platforms, ", ")
	}
	fmt.Fprintf(b, "%-8s %s  %s\n", r.Status, describeCopy(r), detail)
}

func summaryLine(results []*registry.CopyResult, elapsed time.Duration) string {
	var bytes int64
	for _, r := range results {
		bytes += r.BytesCopied
	}
	parts := []string{}
	for _, status := range []registry.Status{registry.StatusCopied, registry.StatusSkipped, registry.StatusPlanned, registry.StatusFailed} {
		if n := countStatus(results, status); n > 0 {
			parts = append(parts, fmt.Sprintf("%d %s", n, status))
		}
	}
	return fmt.Sprintf("%d copies in %s: %s; %s sent", len(results), formatDuration(elapsed), strings.Join(parts, ", "), humanize.IBytes(uint64(bytes)))
}

// logSummary logs the batch's totals, for JSON output, which has a line per copy only.
func (a *App) logSummary(results []*registry.CopyResult, elapsed time.Duration) {
	var bytes int64
	for _, r := range results {
		bytes += r.BytesCopied
	}
	a.log.WithFields(map[string]any{
		"copies":  len(results),
		"copied":  countStatus(results, registry.StatusCopied),
		"skipped": countStatus(results, registry.StatusSkipped),
		"planned": countStatus(results, registry.StatusPlanned),
		"failed":  countStatus(results, registry.StatusFailed),
		"bytes":   bytes,
		"seconds": elapsed.Seconds(),
	}).Info("sync finished")
}
