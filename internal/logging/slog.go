package logging

import (
	"context"
	"log/slog"

	"github.com/sirupsen/logrus"
)

// NewSlog returns a slog.Logger whose records go to logger, so that a library logging
// through slog, such as regclient, shares imgxfer's stream, level and censoring.
//
// Info records are written at debug level, because regclient logs one per blob and
// manifest it copies, which would bury imgxfer's own info lines. Warnings and errors keep
// their level.
func NewSlog(logger *logrus.Logger) *slog.Logger {
	return slog.New(&slogHandler{logger: logger})
}

// slogHandler is a slog.Handler that forwards records to logrus. slog attributes become
// logrus fields, named "group.key" inside groups.
type slogHandler struct {
	logger *logrus.Logger
	fields logrus.Fields
	group  string
}

func (h *slogHandler) Enabled(_ context.Context, level slog.Level) bool {
	return h.logger.IsLevelEnabled(toLogrusLevel(level))
}

func (h *slogHandler) Handle(ctx context.Context, record slog.Record) error {
	fields := make(logrus.Fields, len(h.fields)+record.NumAttrs())
	for key, value := range h.fields {
		fields[key] = value
	}
	record.Attrs(func(attr slog.Attr) bool {
		addAttr(fields, h.group, attr)
		return true
	})

	entry := h.logger.WithContext(ctx).WithFields(fields)
	if !record.Time.IsZero() {
		entry = entry.WithTime(record.Time)
	}
	entry.Log(toLogrusLevel(record.Level), record.Message)
	return nil
}

func (h *slogHandler) WithAttrs(attrs []slog.Attr) slog.Handler {
	fields := make(logrus.Fields, len(h.fields)+len(attrs))
	for key, value := range h.fields {
		fields[key] = value
	}
	for _, attr := range attrs {
		addAttr(fields, h.group, attr)
	}
	return &slogHandler{logger: h.logger, fields: fields, group: h.group}
}

func (h *slogHandler) WithGroup(name string) slog.Handler {
	if name == "" {
		return h
	}
	return &slogHandler{logger: h.logger, fields: h.fields, group: joinKey(h.group, name)}
}

func addAttr(fields logrus.Fields, group string, attr slog.Attr) {
	attr.Value = attr.Value.Resolve()
	if attr.Equal(slog.Attr{}) {
		return
	}
	if attr.Value.Kind() == slog.KindGroup {
		prefix := joinKey(group, attr.Key)
		for _, member := range attr.Value.Group() {
			addAttr(fields, prefix, member)
		}
		return
	}
	fields[joinKey(group, attr.Key)] = attr.Value.Any()
}

func joinKey(group, key string) string {
	if group == "" {
		return key
	}
	if key == "" {
		return group
	}
	return group + "." + key
}

// toLogrusLevel maps slog levels onto logrus levels. Everything below debug becomes logrus
// trace, including regclient's trace level (types.LevelTrace, slog.LevelDebug-4), at which
// it logs every HTTP request and response. Info becomes debug, as NewSlog explains.
func toLogrusLevel(level slog.Level) logrus.Level {
	switch {
	case level < slog.LevelDebug:
		return logrus.TraceLevel
	case level < slog.LevelWarn:
		return logrus.DebugLevel
	case level < slog.LevelError:
		return logrus.WarnLevel
	default:
		return logrus.ErrorLevel
	}
}
