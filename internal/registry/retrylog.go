package registry

import (
	"context"
	"log/slog"

	"github.com/sirupsen/logrus"
)

// regclientShortReadMessage is regclient v0.11.7's debug message when a blob download
// ends early and it resumes the download with a range request. The retry transport logs
// failed requests itself, but a short read happens inside a successful response, so only
// regclient detects it. regclient's "Sleeping for backoff" is not used: it fires for every
// request that waits on a host, retried or not.
// NOTE: this is regclient's internal wording; a regclient upgrade can change it, and then
// resumed downloads are logged at debug level only.
const regclientShortReadMessage = "EOF before reading all content, retrying"

// retryLogHandler passes regclient's log records to next, and also logs resumed blob
// downloads at info level, so that logs in CI show them without debug output.
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
	if record.Message == regclientShortReadMessage {
		fields := logrus.Fields{}
		record.Attrs(func(attr slog.Attr) bool {
			switch attr.Key {
			case "Host", "Duration", "URL", "err":
				fields[attr.Key] = attr.Value.String()
			}
			return true
		})
		h.log.WithFields(fields).Info("resuming a blob download that ended early")
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
