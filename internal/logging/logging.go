// Package logging sets up imgxfer's single log stream: a logrus logger on stderr that
// also carries regclient's slog records, with secrets censored before anything is written.
package logging

import (
	"fmt"
	"io"
	"strings"

	"github.com/sirupsen/logrus"
)

// Formats accepted by New.
const (
	FormatText = "text"
	FormatJSON = "json"
)

// Levels lists the accepted log levels, most verbose first.
var Levels = []string{"trace", "debug", "info", "warn", "error"}

// New returns a logger writing to w at the named level ("trace" to "error") in the named
// format (FormatText or FormatJSON). Every entry passes through a censoring formatter.
func New(w io.Writer, level, format string) (*logrus.Logger, error) {
	parsed, err := parseLevel(level)
	if err != nil {
		return nil, err
	}

	var inner logrus.Formatter
	switch format {
	case FormatText, "":
		inner = &logrus.TextFormatter{FullTimestamp: true, DisableQuote: false}
	case FormatJSON:
		inner = &logrus.JSONFormatter{}
	default:
		return nil, fmt.Errorf("invalid log format %q; use %s or %s", format, FormatText, FormatJSON)
	}

	logger := logrus.New()
	logger.SetOutput(w)
	logger.SetLevel(parsed)
	logger.SetFormatter(&censoringFormatter{inner: inner})
	return logger, nil
}

func parseLevel(level string) (logrus.Level, error) {
	switch strings.ToLower(level) {
	case "trace":
		return logrus.TraceLevel, nil
	case "debug":
		return logrus.DebugLevel, nil
	case "info":
		return logrus.InfoLevel, nil
	case "warn", "warning":
		return logrus.WarnLevel, nil
	case "error":
		return logrus.ErrorLevel, nil
	}
	return 0, fmt.Errorf("invalid log level %q; use one of %s", level, strings.Join(Levels, ", "))
}
