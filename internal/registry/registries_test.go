package registry

import (
	"context"
	"fmt"
	"strings"
	"testing"

	"github.com/sirupsen/logrus"

	"github.com/imgxfer/imgxfer/internal/testenv"
	"github.com/imgxfer/imgxfer/routing"
)

// startTestRegistry starts a registry in the test process, with filesystem storage in
// rootDir or, when rootDir is empty, in memory, and stops it when the test ends.
func startTestRegistry(tb testing.TB, rootDir string) *testenv.Registry {
	tb.Helper()
	registry, err := testenv.StartRegistry(context.Background(), testenv.RegistryOptions{RootDir: rootDir})
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { registry.Close() })
	return registry
}

// plainHTTPRules returns rules with no route that mark every host in hosts, such as
// "127.0.0.1:5000", as a plain HTTP registry.
func plainHTTPRules(tb testing.TB, hosts ...string) *routing.Rules {
	tb.Helper()
	var text strings.Builder
	text.WriteString("version: 1\nregistries:\n")
	for _, host := range hosts {
		fmt.Fprintf(&text, "  - host: %q\n    tls: disabled\n", host)
	}
	rules, err := routing.Parse("rules.yaml", []byte(text.String()))
	if err != nil {
		tb.Fatal(err)
	}
	return rules
}

// quietLogger returns a logger that drops everything below warnings.
func quietLogger() *logrus.Logger {
	logger := logrus.New()
	logger.SetLevel(logrus.WarnLevel)
	return logger
}
