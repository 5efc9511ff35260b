package routing

import (
	"encoding/pem"
	"net/http/httptest"
	"os"
	"path/filepath"
	"testing"
)

// writeServerCA writes the certificate of an httptest TLS server as a PEM file and
// returns its path.
func writeServerCA(t *testing.T, server *httptest.Server) string {
	t.Helper()
	block := &pem.Block{Type: "CERTIFICATE", Bytes: server.Certificate().Raw}
	path := filepath.Join(t.TempDir(), "ca.pem")
	if err := writeFile(path, string(pem.EncodeToMemory(block))); err != nil {
		t.Fatal(err)
	}
	return path
}

func writeFile(path, content string) error {
	return os.WriteFile(path, []byte(content), 0o600)
}
