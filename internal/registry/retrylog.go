package registry

import (
	"context"
	"log/slog"

	"github.com/sirupsen/logrus"
)

// regclient logs its retries at debug level. These are the messages of regclient v0.11.7
// that mean a request is about to be sent again.
// NOTE: they are regclient's internal wording; a regclient upgrade can change them, and
// then retries are logged at debug level only.
const (
	regclientBackoffMessage   = "Sleeping for backoff"
	regclientShortReadMessage = "EOF before reading all content, retrying"
)

// retryLogHandler passes regclient's log records to next, and also logs regclient's
// retries at info level, so that logs in CI show every retry without debug output.
type retryLogHandler struct {
	next slog.Handler
	log  *logrus.Logger
}

func newRetryLogHandler(next slog.Handler, log *logrus.Logger) slog.Handler {
	return &retryLogHandler{next: next, log: log}
}

func (h *retryLogHandler) Enabled(ctx context.Context, level slog.Level) bool {
	return level >= slog.LevelDebug || h.next.Enabled(ctx, level)
}

func (h *retryLogHandler) Handle(ctx context.Context, record slog.Record) error {
	if record.Message == regclientBackoffMessage || record.Message == regclientShortReadMessage {
		fields := logrus.Fields{}
		record.Attrs(func(attr slog.Attr) bool {
			switch attr.Key {
			case "Host", "Duration", "URL", "err":
				fields[attr.Key] = attr.Value.String()
			}
			return true
		})
		h.log.WithFields(fields).Info("retrying request")
	}
	if !h.next.Enabled(ctx, record.Level) {
		return nil
	}
	return h.next.Handle(ctx, record)
}

func (h *retryLogHandler) WithAttrs(attrs []slog.Attr) slog.Handler {
	return &retryLogHandler{next: h.next.WithAttrs(attrs), log: h.log}
}

func (h *retryLogHandler) WithGroup(name string) slog.Handler {
	return &retryLogHandler{next: h.next.WithGroup(name), log: h.log}
}
