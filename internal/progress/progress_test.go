package progress

import (
	"bytes"
	"strings"
	"testing"
	"time"

	"github.com/sirupsen/logrus"

	"github.com/imgxfer/imgxfer/internal/registry"
)

func TestUseBars(t *testing.T) {
	env := func(vars map[string]string) func(string) string {
		return func(name string) string { return vars[name] }
	}
	tests := []struct {
		name     string
		settings Settings
		want     bool
	}{
		{"terminal", Settings{StderrIsTerminal: true, LogFormat: "text", Getenv: env(nil)}, true},
		{"not a terminal", Settings{StderrIsTerminal: false, LogFormat: "text", Getenv: env(nil)}, false},
		{"quiet", Settings{StderrIsTerminal: true, Quiet: true, Getenv: env(nil)}, false},
		{"json logs", Settings{StderrIsTerminal: true, LogFormat: "json", Getenv: env(nil)}, false},
		{"CI set", Settings{StderrIsTerminal: true, Getenv: env(map[string]string{"CI": "true"})}, false},
		{"CI false", Settings{StderrIsTerminal: true, Getenv: env(map[string]string{"CI": "false"})}, true},
		{"dumb terminal", Settings{StderrIsTerminal: true, Getenv: env(map[string]string{"TERM": "dumb"})}, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := UseBars(tt.settings); got != tt.want {
				t.Errorf("UseBars = %v, want %v", got, tt.want)
			}
		})
	}
}

func TestLogDisplayLines(t *testing.T) {
	var out bytes.Buffer
	log := logrus.New()
	log.SetOutput(&out)
	log.SetFormatter(&logrus.TextFormatter{DisableTimestamp: true})

	display := NewLog(log, false, true)
	tracker := display.Track(registry.CopySpec{Origin: "images.yaml:3", Source: "a.test/x:1", Destination: "b.test/x:1"})
	tracker.Started(4, 3<<20)
	tracker.Progress(2, 1<<20)
	tracker.Finished(&registry.CopyResult{Status: registry.StatusCopied, BytesCopied: 3 << 20, BlobsCopied: 4, Duration: 1500 * time.Millisecond})
	display.Wait()

	lines := strings.Split(strings.TrimSpace(out.String()), "\n")
	if len(lines) != 2 {
		t.Fatalf("got %d lines, want a start and an end line:\n%s", len(lines), out.String())
	}
	for _, want := range []string{`msg="copying image"`, "origin=\"images.yaml:3\"", "size=\"3.0 MiB\"", "blobs=4"} {
		if !strings.Contains(lines[0], want) {
			t.Errorf("start line lacks %s: %s", want, lines[0])
		}
	}
	for _, want := range []string{`msg="copied image"`, "duration=1.5s"} {
		if !strings.Contains(lines[1], want) {
			t.Errorf("end line lacks %s: %s", want, lines[1])
		}
	}
}

func TestBarsRender(t *testing.T) {
	var out bytes.Buffer
	display, logs := NewBars(&out)
	tracker := display.Track(registry.CopySpec{Source: "a.test/x:1", Destination: "b.test/x:1"})
	tracker.Started(2, 2048)
	tracker.Progress(1, 1024)
	if _, err := logs.Write([]byte("a log line\n")); err != nil {
		t.Fatal(err)
	}
	tracker.Progress(2, 2048)
	tracker.Finished(&registry.CopyResult{Status: registry.StatusCopied})
	display.Wait()

	text := out.String()
	for _, want := range []string{"b.test/x:1", "2/2 blobs", "a log line"} {
		if !strings.Contains(text, want) {
			t.Errorf("bar output lacks %q:\n%s", want, text)
		}
	}
}
