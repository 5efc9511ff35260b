package dockerplugin

import (
	"bytes"
	"context"
	"encoding/json"
	"net"
	"path/filepath"
	"slices"
	"testing"
	"time"
)

func TestIsMetadataCall(t *testing.T) {
	tests := []struct {
		args []string
		want bool
	}{
		{[]string{"docker-imgxfer", "docker-cli-plugin-metadata"}, true},
		{[]string{"docker-imgxfer", "docker-cli-plugin-metadata", "extra"}, false},
		{[]string{"docker-imgxfer", "imgxfer", "docker-cli-plugin-metadata"}, false},
		{[]string{"docker-imgxfer"}, false},
	}
	for _, tt := range tests {
		if got := IsMetadataCall(tt.args); got != tt.want {
			t.Errorf("IsMetadataCall(%q) = %v, want %v", tt.args, got, tt.want)
		}
	}
}

func TestWriteMetadata(t *testing.T) {
	var out bytes.Buffer
	if err := WriteMetadata(&out, "v1.2.3"); err != nil {
		t.Fatal(err)
	}
	var meta map[string]any
	if err := json.Unmarshal(out.Bytes(), &meta); err != nil {
		t.Fatalf("metadata is not JSON: %v\n%s", err, out.String())
	}
	if meta["SchemaVersion"] != "0.1.0" {
		t.Errorf("SchemaVersion = %v, want 0.1.0", meta["SchemaVersion"])
	}
	if meta["Vendor"] == "" || meta["Vendor"] == nil {
		t.Error("Vendor is empty; docker rejects a plugin without one")
	}
	if meta["Version"] != "v1.2.3" {
		t.Errorf("Version = %v, want v1.2.3", meta["Version"])
	}
}

func TestPluginArgs(t *testing.T) {
	tests := []struct {
		in   []string
		want []string
	}{
		{[]string{"docker-imgxfer", "imgxfer", "copy", "a", "b"}, []string{"docker-imgxfer", "copy", "a", "b"}},
		{[]string{"docker-imgxfer", "--debug", "--context", "x", "imgxfer", "version"}, []string{"docker-imgxfer", "version"}},
		{[]string{"docker-imgxfer", "imgxfer", "copy", "imgxfer", "b"}, []string{"docker-imgxfer", "copy", "imgxfer", "b"}},
		{[]string{"docker-imgxfer", "help", "imgxfer"}, []string{"docker-imgxfer", "--help"}},
		{[]string{"docker-imgxfer", "--debug", "help", "imgxfer"}, []string{"docker-imgxfer", "--help"}},
		{[]string{"docker-imgxfer", "version"}, []string{"docker-imgxfer", "version"}},
	}
	for _, tt := range tests {
		if got := PluginArgs(tt.in); !slices.Equal(got, tt.want) {
			t.Errorf("PluginArgs(%q) = %q, want %q", tt.in, got, tt.want)
		}
	}
}

func TestWatchSocketCancelsOnClose(t *testing.T) {
	address := filepath.Join(t.TempDir(), "plugin.sock")
	listener, err := net.Listen("unix", address)
	if err != nil {
		t.Fatal(err)
	}
	defer listener.Close()
	t.Setenv(EnvSocket, address)

	accepted := make(chan net.Conn, 1)
	go func() {
		conn, err := listener.Accept()
		if err == nil {
			accepted <- conn
		}
	}()

	ctx := WatchSocket(context.Background())
	conn := <-accepted
	select {
	case <-ctx.Done():
		t.Fatal("context cancelled while the socket is open")
	case <-time.After(50 * time.Millisecond):
	}

	conn.Close()
	select {
	case <-ctx.Done():
	case <-time.After(5 * time.Second):
		t.Fatal("context not cancelled after docker closed the socket")
	}
}

func TestWatchSocketWithoutVariable(t *testing.T) {
	t.Setenv(EnvSocket, "")
	parent := context.Background()
	if got := WatchSocket(parent); got != parent {
		t.Error("WatchSocket without a socket returned a new context")
	}
}
