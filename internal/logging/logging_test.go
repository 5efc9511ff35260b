package logging

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"log/slog"
	"net/http"
	"strings"
	"testing"

	"github.com/sirupsen/logrus"
)

func TestNewRejectsBadInput(t *testing.T) {
	_, err := New(&bytes.Buffer{}, "verbose", FormatText)
	if err == nil || !strings.Contains(err.Error(), `"verbose"`) || !strings.Contains(err.Error(), "trace, debug, info, warn, error") {
		t.Errorf("bad level: error %v, want one naming the value and the choices", err)
	}
	_, err = New(&bytes.Buffer{}, "info", "xml")
	if err == nil || !strings.Contains(err.Error(), `"xml"`) {
		t.Errorf("bad format: error %v, want one naming the value", err)
	}
}

func TestSlogBridgeLevelsAndFields(t *testing.T) {
	var out bytes.Buffer
	logger, err := New(&out, "trace", FormatJSON)
	if err != nil {
		t.Fatal(err)
	}
	log := NewSlog(logger).With(slog.String("host", "registry.prod.test")).WithGroup("req")

	log.Log(context.Background(), slog.LevelDebug-4, "reg http request", slog.String("method", "GET"))
	log.Warn("slow", slog.Int("ms", 1200))
	log.Info("Copy layer")

	lines := strings.Split(strings.TrimSpace(out.String()), "\n")
	if len(lines) != 3 {
		t.Fatalf("got %d log lines, want 3: %s", len(lines), out.String())
	}
	var first, second map[string]any
	if err := json.Unmarshal([]byte(lines[0]), &first); err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal([]byte(lines[1]), &second); err != nil {
		t.Fatal(err)
	}
	if first["level"] != "trace" {
		t.Errorf("regclient trace record logged at %v, want trace", first["level"])
	}
	if first["host"] != "registry.prod.test" || first["req.method"] != "GET" {
		t.Errorf("fields = %v, want host and req.method", first)
	}
	if second["level"] != "warning" || second["req.ms"] != float64(1200) {
		t.Errorf("second line = %v", second)
	}
	if !strings.Contains(lines[2], `"level":"debug"`) {
		t.Errorf("an slog info record was not lowered to debug: %s", lines[2])
	}
}

func TestSlogBridgeRespectsLevel(t *testing.T) {
	var out bytes.Buffer
	logger, err := New(&out, "info", FormatText)
	if err != nil {
		t.Fatal(err)
	}
	log := NewSlog(logger)
	log.Info("hidden info")
	log.Debug("hidden")
	log.Log(context.Background(), slog.LevelDebug-4, "hidden trace")
	if out.Len() != 0 {
		t.Errorf("slog info, debug and trace records written at info level: %q", out.String())
	}
}

func TestCensorsSecrets(t *testing.T) {
	var out bytes.Buffer
	logger, err := New(&out, "trace", FormatText)
	if err != nil {
		t.Fatal(err)
	}
	header := http.Header{"Authorization": {"Bearer s3cr3t-token-value"}, "Accept": {"application/json"}}
	NewSlog(logger).Log(context.Background(), slog.LevelDebug-4, "reg http request",
		slog.Any("req-headers", header),
		slog.String("password", "hunter2-password"),
		slog.String("req-url", "https://blobs.test/x?X-Amz-Signature=abcdef123&X-Amz-Credential=AKIDEXAMPLE&part=1"),
	)
	logger.WithError(errors.New("GET https://user:pa55word@r.test/v2/ failed: Authorization: Basic dXNlcjpwYTU1d29yZA==")).Error("failed")

	text := out.String()
	for _, secret := range []string{"s3cr3t-token-value", "hunter2-password", "abcdef123", "AKIDEXAMPLE", "pa55word", "dXNlcjpwYTU1d29yZA=="} {
		if strings.Contains(text, secret) {
			t.Errorf("log output contains secret %q:\n%s", secret, text)
		}
	}
	if !strings.Contains(text, "application/json") || !strings.Contains(text, "part=1") {
		t.Errorf("censoring removed ordinary values:\n%s", text)
	}
	if header.Get("Authorization") != "Bearer s3cr3t-token-value" {
		t.Error("censoring changed the caller's header map")
	}
}

func TestCensorsAtEveryLevel(t *testing.T) {
	for _, level := range []logrus.Level{logrus.TraceLevel, logrus.DebugLevel, logrus.InfoLevel, logrus.WarnLevel, logrus.ErrorLevel} {
		var out bytes.Buffer
		logger, err := New(&out, "trace", FormatJSON)
		if err != nil {
			t.Fatal(err)
		}
		logger.WithField("authorization", "Basic c2VjcmV0").Log(level, "request")
		if strings.Contains(out.String(), "c2VjcmV0") {
			t.Errorf("level %s: secret in output %s", level, out.String())
		}
	}
}
