// Package progress shows how copies advance: progress bars on a terminal, drawn with
// github.com/vbauerster/mpb, or log lines at the start and the end of each copy where no
// one watches a terminal, as in CI or with output redirected.
package progress

import (
	"fmt"
	"io"
	"sync"
	"time"

	"github.com/dustin/go-humanize"
	"github.com/sirupsen/logrus"
	"github.com/vbauerster/mpb/v8"
	"github.com/vbauerster/mpb/v8/decor"

	"github.com/imgxfer/imgxfer/internal/registry"
)

// Settings decide between bars and log lines.
type Settings struct {
	StderrIsTerminal bool
	Quiet            bool
	LogFormat        string              // "text" or "json"
	Getenv           func(string) string // os.Getenv in production
}

// UseBars reports whether to draw progress bars: only on a terminal, with text logs, and
// neither in CI (the CI variable set, as CI services set it) nor with TERM=dumb nor when
// quiet.
func UseBars(s Settings) bool {
	if s.Quiet || !s.StderrIsTerminal || s.LogFormat == "json" {
		return false
	}
	if s.Getenv != nil {
		if ci := s.Getenv("CI"); ci != "" && ci != "false" && ci != "0" {
			return false
		}
		if s.Getenv("TERM") == "dumb" {
			return false
		}
	}
	return true
}

// Display follows the copies of one command.
type Display interface {
	// Track returns the tracker of one copy.
	Track(spec registry.CopySpec) registry.Tracker
	// Wait draws the last state and stops the display. Call it once, after the copies.
	Wait()
}

// NewLog returns a display that logs the start and the end of each copy at info level,
// with sizes and durations readable in text logs and exact in JSON logs. It logs failed
// copies at warning level when logFailures is set. A command that returns the only copy's
// error leaves it unset, so that the error is not printed twice.
func NewLog(log *logrus.Logger, jsonLogs, logFailures bool) Display {
	return &logDisplay{log: log, json: jsonLogs, failures: logFailures}
}

// NewNone returns a display that shows nothing.
func NewNone() Display { return noDisplay{} }

type noDisplay struct{}

func (noDisplay) Track(registry.CopySpec) registry.Tracker { return noTracker{} }
func (noDisplay) Wait()                                    {}

type noTracker struct{}

func (noTracker) Started(int, int64)            {}
func (noTracker) Progress(int, int64)           {}
func (noTracker) Finished(*registry.CopyResult) {}

type logDisplay struct {
	log      *logrus.Logger
	json     bool
	failures bool
}

func (d *logDisplay) Track(spec registry.CopySpec) registry.Tracker {
	fields := logrus.Fields{"source": spec.Source, "destination": spec.Destination}
	if spec.Origin != "" {
		fields["origin"] = spec.Origin
	}
	return &logTracker{display: d, fields: fields}
}

func (d *logDisplay) Wait() {}

type logTracker struct {
	display *logDisplay
	fields  logrus.Fields
}

func (t *logTracker) sizeFields(fields logrus.Fields, key string, bytes int64) {
	if t.display.json {
		fields[key] = bytes
	} else {
		fields[key] = humanize.IBytes(uint64(bytes))
	}
}

func (t *logTracker) Started(blobs int, bytes int64) {
	fields := logrus.Fields{"blobs": blobs}
	t.sizeFields(fields, "size", bytes)
	t.display.log.WithFields(t.fields).WithFields(fields).Info("copying image")
}

func (t *logTracker) Progress(int, int64) {}

func (t *logTracker) Finished(r *registry.CopyResult) {
	entry := t.display.log.WithFields(t.fields)
	duration := any(r.Duration.Round(time.Millisecond).String())
	if t.display.json {
		duration = r.Duration.Seconds()
	}
	switch r.Status {
	case registry.StatusCopied:
		fields := logrus.Fields{"digest": r.DestinationDigest, "blobs": r.BlobsCopied, "present": r.BlobsSkipped, "mounted": r.BlobsMounted, "duration": duration}
		t.sizeFields(fields, "size", r.BytesCopied)
		entry.WithFields(fields).Info("copied image")
	case registry.StatusSkipped:
		entry.WithFields(logrus.Fields{"digest": r.DestinationDigest}).Info("destination is up to date")
	case registry.StatusFailed:
		if t.display.failures {
			entry.WithError(r.Err).Warn("copy failed")
		}
	}
}

// NewBars returns a display that draws a bar per running copy on w, with the bytes and
// blobs done and the rate. It draws whether or not w is a terminal, so callers check that
// first, with UseBars. Lines written to the returned writer while bars are drawn appear above them;
// send logs there until Wait returns.
func NewBars(w io.Writer) (Display, io.Writer) {
	p := mpb.New(mpb.WithOutput(w), mpb.WithAutoRefresh(), mpb.WithWidth(32), mpb.WithRefreshRate(150*time.Millisecond))
	return &barDisplay{progress: p}, p
}

type barDisplay struct {
	progress *mpb.Progress
}

func (d *barDisplay) Track(spec registry.CopySpec) registry.Tracker {
	return &barTracker{display: d, name: spec.Destination}
}

func (d *barDisplay) Wait() { d.progress.Wait() }

type barTracker struct {
	display *barDisplay
	name    string

	mu        sync.Mutex
	bar       *mpb.Bar
	blobs     int
	blobsDone int
}

func (t *barTracker) Started(blobs int, bytes int64) {
	t.mu.Lock()
	t.blobs = blobs
	t.mu.Unlock()
	bar := t.display.progress.AddBar(bytes,
		mpb.PrependDecorators(
			decor.Name(t.name, decor.WCSyncSpaceR),
			decor.Any(t.blobCounter, decor.WCSyncSpace),
		),
		mpb.AppendDecorators(
			decor.CountersKibiByte("% .1f / % .1f", decor.WCSyncSpace),
			decor.OnComplete(decor.AverageSpeed(decor.SizeB1024(0), "% .1f", decor.WCSyncSpace), "done"),
		),
		mpb.BarFillerOnAbort("failed"),
	)
	t.mu.Lock()
	t.bar = bar
	t.mu.Unlock()
}

func (t *barTracker) blobCounter(decor.Statistics) string {
	t.mu.Lock()
	defer t.mu.Unlock()
	return fmt.Sprintf("%d/%d blobs", t.blobsDone, t.blobs)
}

func (t *barTracker) Progress(blobsDone int, bytesSent int64) {
	t.mu.Lock()
	t.blobsDone = blobsDone
	bar := t.bar
	t.mu.Unlock()
	if bar != nil {
		bar.SetCurrent(bytesSent)
	}
}

func (t *barTracker) Finished(r *registry.CopyResult) {
	t.mu.Lock()
	bar := t.bar
	t.mu.Unlock()
	if bar == nil {
		return
	}
	if r.Status == registry.StatusFailed {
		bar.Abort(false)
		return
	}
	// Blobs already present never add bytes, so the bar ends where the bytes sent end.
	bar.SetTotal(-1, true)
}
