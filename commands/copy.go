package commands

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"

	"github.com/sirupsen/logrus"
	"github.com/urfave/cli/v2"
	"golang.org/x/term"

	"github.com/imgxfer/imgxfer/internal/logging"
	"github.com/imgxfer/imgxfer/internal/progress"
	"github.com/imgxfer/imgxfer/internal/registry"
	"github.com/imgxfer/imgxfer/internal/version"
	"github.com/imgxfer/imgxfer/routing"
)

const (
	flagRules       = "rules"
	flagProxy       = "proxy"
	flagPlatform    = "platform"
	flagFormat      = "format"
	flagAnnotation  = "annotation"
	flagReferrers   = "referrers"
	flagForce       = "force"
	flagDryRun      = "dry-run"
	flagQuiet       = "quiet"
	flagMaxRequests = "max-requests"

	maxRequestsLimit = 256

	formatText = "text"
	formatJSON = "json"
)

type copyOptions struct {
	source      string
	destination string
	rulesPath   string               // empty: the default rules file, if it exists
	proxy       string               // one-off proxy URL for the destination registry
	srcCred     *registry.Credential // nil: docker's stored credentials
	destCred    *registry.Credential
	settings    copySettings
}

// copySettings are the options that every copy takes, from copy and sync alike.
type copySettings struct {
	platforms   []string
	annotations map[string]string
	referrers   bool
	force       bool
	dryRun      bool
	format      string
	quiet       bool
	logFormat   string
	logLevelSet bool // --log-level or $IMGXFER_LOG_LEVEL was given, so --quiet leaves the level alone
	batch       bool // sync runs the copies, and logs each failure as it happens
	maxRequests int  // 0: the registry package's default
}

// copySettingFlags are the flags behind copySettings.
func copySettingFlags(platformUsage string) []cli.Flag {
	return []cli.Flag{
		&cli.StringSliceFlag{
			Name:  flagPlatform,
			Usage: platformUsage,
		},
		&cli.StringSliceFlag{
			Name:  flagAnnotation,
			Usage: "set annotation KEY=VALUE on the destination's index, or manifest for a single-platform copy, which gets a new digest; repeat for several",
		},
		&cli.BoolFlag{
			Name:  flagReferrers,
			Usage: "also copy the OCI referrers of every manifest and the sha256-<digest>.* tags that cosign uses (signatures, attestations, SBOMs)",
		},
		&cli.BoolFlag{
			Name:  flagForce,
			Usage: "copy even when the destination already has the image, pushing every manifest again; blobs present are still not sent",
		},
		&cli.BoolFlag{
			Name:  flagDryRun,
			Usage: "print the routes and what each copy would transfer, reading the registries and writing nothing",
		},
		&cli.StringFlag{
			Name:  flagFormat,
			Usage: "result format on stdout: text, or json for one JSON object per copy with exact bytes and seconds",
			Value: formatText,
		},
		&cli.BoolFlag{
			Name:    flagQuiet,
			Aliases: []string{"q"},
			Usage:   "no progress display and no info logs; text output lists failures only",
		},
		&cli.IntFlag{
			Name:        flagMaxRequests,
			Usage:       "max HTTP requests in flight to one registry, from 1 to 256",
			DefaultText: fmt.Sprintf("%d; for sync, 4 per --parallel copy when that is more", registry.DefaultMaxRequests),
		},
	}
}

func readCopySettings(c *cli.Context) (copySettings, error) {
	s := copySettings{
		platforms:   c.StringSlice(flagPlatform),
		referrers:   c.Bool(flagReferrers),
		force:       c.Bool(flagForce),
		dryRun:      c.Bool(flagDryRun),
		format:      c.String(flagFormat),
		quiet:       c.Bool(flagQuiet),
		logFormat:   c.String(flagLogFormat),
		logLevelSet: c.IsSet(flagLogLevel),
		maxRequests: c.Int(flagMaxRequests),
	}
	if c.IsSet(flagMaxRequests) && (s.maxRequests < 1 || s.maxRequests > maxRequestsLimit) {
		return s, usageErrorf("invalid --%s %d: use 1 to %d", flagMaxRequests, s.maxRequests, maxRequestsLimit)
	}
	if s.format != formatText && s.format != formatJSON {
		return s, usageErrorf("invalid --%s %q; use %s or %s", flagFormat, s.format, formatText, formatJSON)
	}
	if err := registry.CheckPlatforms(s.platforms); err != nil {
		return s, usageErrorf("%w", err)
	}
	annotations, err := parseAnnotations(c.StringSlice(flagAnnotation))
	if err != nil {
		return s, err
	}
	s.annotations = annotations
	return s, nil
}

// parseAnnotations parses KEY=VALUE pairs. A later pair replaces an earlier one with the
// same key.
func parseAnnotations(pairs []string) (map[string]string, error) {
	if len(pairs) == 0 {
		return nil, nil
	}
	annotations := map[string]string{}
	for _, pair := range pairs {
		key, value, found := strings.Cut(pair, "=")
		if !found {
			return nil, usageErrorf("invalid --%s %q: expected KEY=VALUE, such as org.opencontainers.image.source=https://git.example.com/team/app", flagAnnotation, pair)
		}
		annotations[key] = value
	}
	if err := registry.CheckAnnotations(annotations); err != nil {
		return nil, usageErrorf("--%s: %w", flagAnnotation, err)
	}
	return annotations, nil
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

When DEST already has the digest that the copy would write, the copy is skipped after one
manifest HEAD request; --force copies anyway.

Examples:
  imgxfer copy --rules rules.yaml registry.dev.test:5000/team/app:1.4 registry.prod.test/team/app:1.4
  imgxfer copy --proxy http://mesh-proxy:31080 alpine:3.20 registry.prod.test/library/alpine:3.20
  imgxfer copy --platform linux/amd64 --platform linux/arm64 SRC DEST
  imgxfer copy --annotation org.opencontainers.image.source=https://git.example.com/app --referrers SRC DEST`,
		Flags: append(append(append(
			routeFlags("route DEST's registry through this proxy URL, ahead of any rule, such as http://mesh-proxy:31080"),
			credentialFlags("src", "source")...),
			credentialFlags("dest", "destination")...),
			copySettingFlags("copy only this platform of an index, as os/arch[/variant]; repeat or separate with commas for several, which get an index that lists only them")...,
		),
		Action: func(c *cli.Context) error {
			if err := exactArgs(c, "SRC", "DEST"); err != nil {
				return err
			}
			settings, err := readCopySettings(c)
			if err != nil {
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
				srcCred:     srcCred,
				destCred:    destCred,
				settings:    settings,
			}
			return a.runCopy(c.Context, opts)
		},
	}
}

func (a *App) runCopy(ctx context.Context, opts copyOptions) error {
	for _, ref := range []struct{ name, value string }{{"SRC", opts.source}, {"DEST", opts.destination}} {
		if _, err := registry.ParseReference(ref.value); err != nil {
			return usageErrorf("%s: %w", ref.name, err)
		}
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

	client, err := registry.New(registry.Options{
		Rules:       rules,
		Logger:      a.log,
		UserAgent:   version.UserAgent(),
		Credentials: credentials,
		MaxRequests: opts.settings.maxRequests,
	})
	if err != nil {
		return usageErrorf("%w", err)
	}
	defer client.Close()

	spec := registry.CopySpec{
		Source:      opts.source,
		Destination: opts.destination,
		Platforms:   opts.settings.platforms,
		Annotations: opts.settings.annotations,
	}
	display, stop := a.startDisplay(opts.settings)
	result := client.Copy(ctx, spec, opts.settings.copyOptions(display))
	stop()

	if result.Err != nil {
		return copyError(result.Err)
	}
	routes := &routeDescriber{rules: rules, added: map[string]string{}}
	if opts.proxy != "" {
		routes.added[destRef.Registry] = "--" + flagProxy
	}
	return printResults(a.stdout, opts.settings, []*registry.CopyResult{result}, routes)
}

// copyError marks the errors that the command line or the input can fix as usage errors.
func copyError(err error) error {
	if errors.Is(err, registry.ErrPlatformNotFound) || errors.Is(err, registry.ErrInvalidReference) || errors.Is(err, registry.ErrAnnotationUnsupported) {
		return usageErrorf("%w", err)
	}
	return err
}

func (s copySettings) copyOptions(display progress.Display) registry.CopyOptions {
	return registry.CopyOptions{
		Referrers: s.referrers,
		Force:     s.force,
		DryRun:    s.dryRun,
		Track:     display.Track,
	}
}

// startDisplay picks the progress display, quiets info logs for --quiet, and returns the
// function that ends both.
func (a *App) startDisplay(s copySettings) (progress.Display, func()) {
	oldLevel := a.log.GetLevel()
	if s.quiet && !s.logLevelSet && oldLevel < logrus.WarnLevel {
		a.log.SetLevel(logrus.WarnLevel)
	}
	restoreLevel := func() { a.log.SetLevel(oldLevel) }

	switch {
	case s.quiet || s.dryRun:
		return progress.NewNone(), restoreLevel
	case progress.UseBars(progress.Settings{
		StderrIsTerminal: isTerminal(a.stderr),
		Quiet:            s.quiet,
		LogFormat:        s.logFormat,
		Getenv:           os.Getenv,
	}):
		display, logOutput := progress.NewBars(a.stderr)
		oldOutput := a.log.Out
		a.log.SetOutput(logOutput)
		return display, func() {
			display.Wait()
			a.log.SetOutput(oldOutput)
			restoreLevel()
		}
	default:
		return progress.NewLog(a.log, s.logFormat == logging.FormatJSON, s.batch), restoreLevel
	}
}

func isTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	return ok && term.IsTerminal(int(f.Fd()))
}

// routeDescriber describes how the requests for a registry host are sent, for dry runs and
// JSON results.
type routeDescriber struct {
	rules *routing.Rules
	// added names, by host, the origin of each route placed ahead of the rules file's
	// routes: "--proxy" or a batch entry.
	added map[string]string
}

// routeInfo describes the route of one registry host in results.
type routeInfo struct {
	Registry string `json:"registry"`
	Proxy    string `json:"proxy,omitempty"`  // empty: direct
	Header   string `json:"header,omitempty"` // the routing header as sent, "mesh: registry.prod.example.com"
	Rule     string `json:"rule,omitempty"`   // the rule that sets the route: "rules.yaml routes[0]", "--proxy" or a batch entry
}

func (d *routeDescriber) describe(reference string) *routeInfo {
	r, err := registry.ParseReference(reference)
	if err != nil || r.Scheme != "reg" {
		return nil
	}
	host := r.Registry
	out := &routeInfo{Registry: host}

	scheme := "https"
	if reg := d.rules.RegistryFor(host); reg != nil && reg.TLS == routing.TLSDisabled {
		scheme = "http"
	}
	apiHost := host
	if host == "docker.io" {
		apiHost = "registry-1.docker.io"
	}
	route := d.rules.Match(scheme, apiHost)
	if route == nil {
		return out
	}

	out.Proxy = route.ProxyURL().String()
	out.Header = d.rules.Header + ": " + headerValue(scheme, apiHost)

	index := 0
	for i := range d.rules.Routes {
		if &d.rules.Routes[i] == route {
			index = i
		}
	}
	if index < len(d.added) {
		out.Rule = d.added[route.Hosts[0]]
	} else {
		out.Rule = fmt.Sprintf("%s routes[%d]", d.rules.Source, index-len(d.added))
	}
	return out
}

// headerValue returns the host as the routing header carries it: lowercase, with the port
// unless it is the scheme's default.
func headerValue(scheme, host string) string {
	host = strings.ToLower(host)
	if (scheme == "https" && strings.HasSuffix(host, ":443")) || (scheme == "http" && strings.HasSuffix(host, ":80")) {
		host = host[:strings.LastIndex(host, ":")]
	}
	return host
}
