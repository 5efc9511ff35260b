// Package dockerplugin implements the Docker CLI plugin contract for the docker-imgxfer
// binary: the metadata handshake, the argument shape docker uses, and cancellation when
// docker closes the plugin socket.
//
// The contract is docker/cli's cli-plugins protocol. This package rebuilds the small part
// that imgxfer needs instead of importing docker/cli, which is built on cobra.
package dockerplugin

import (
	"context"
	"encoding/json"
	"io"
	"net"
	"os"
)

// Names and environment variables of the protocol, as docker/cli defines them.
const (
	// Name is the plugin name: docker runs it for "docker imgxfer".
	Name = "imgxfer"

	// MetadataSubcommand is the single argument with which docker requests Metadata.
	MetadataSubcommand = "docker-cli-plugin-metadata"

	// EnvOriginalCommand is set by docker when it runs a plugin.
	EnvOriginalCommand = "DOCKER_CLI_PLUGIN_ORIGINAL_CLI_COMMAND"

	// EnvSocket names the socket that docker closes to ask the plugin to stop.
	EnvSocket = "DOCKER_CLI_PLUGIN_SOCKET"
)

// Metadata is the JSON document that a plugin prints for MetadataSubcommand.
type Metadata struct {
	SchemaVersion    string `json:"SchemaVersion"`
	Vendor           string `json:"Vendor"`
	Version          string `json:"Version,omitempty"`
	ShortDescription string `json:"ShortDescription,omitempty"`
	URL              string `json:"URL,omitempty"`
}

// IsMetadataCall reports whether args (os.Args) are docker's metadata request.
func IsMetadataCall(args []string) bool {
	return len(args) == 2 && args[1] == MetadataSubcommand
}

// WriteMetadata writes the plugin metadata for version to w as indented JSON.
func WriteMetadata(w io.Writer, version string) error {
	encoder := json.NewEncoder(w)
	encoder.SetIndent("", "    ")
	encoder.SetEscapeHTML(false)
	return encoder.Encode(Metadata{
		SchemaVersion:    "0.1.0",
		Vendor:           "imgxfer",
		Version:          version,
		ShortDescription: "Copy images through a registry mesh proxy",
		URL:              "https://github.com/imgxfer/imgxfer",
	})
}

// RunningAsPlugin reports whether docker started this process as a plugin.
func RunningAsPlugin() bool {
	_, set := os.LookupEnv(EnvOriginalCommand)
	return set
}

// PluginArgs converts the arguments docker passes to a plugin, which are docker's global
// flags, then the plugin name, then the plugin's own arguments, into the arguments of the
// standalone command: the program name followed by the plugin's own arguments.
// "docker help imgxfer" arrives as "help imgxfer" and becomes "--help".
func PluginArgs(args []string) []string {
	if len(args) == 0 {
		return args
	}
	for i := 1; i < len(args); i++ {
		if args[i] != Name {
			continue
		}
		if i > 1 && args[i-1] == "help" {
			return []string{args[0], "--help"}
		}
		return append([]string{args[0]}, args[i+1:]...)
	}
	return args
}

// WatchSocket returns a context that is cancelled when docker closes the plugin socket
// named by EnvSocket, which docker does when the user interrupts it. Without the variable,
// or when the socket cannot be reached, it returns ctx unchanged.
func WatchSocket(ctx context.Context) context.Context {
	address := os.Getenv(EnvSocket)
	if address == "" {
		return ctx
	}
	var dialer net.Dialer
	conn, err := dialer.DialContext(ctx, "unix", address)
	if err != nil {
		return ctx
	}

	watched, cancel := context.WithCancel(ctx)
	go func() {
		defer cancel()
		defer conn.Close()
		// docker never writes to the socket, so any read result, EOF or another error,
		// means the connection is gone. Returning on every error avoids a busy loop.
		buf := make([]byte, 1)
		for {
			if _, err := conn.Read(buf); err != nil {
				return
			}
		}
	}()
	go func() {
		<-watched.Done()
		_ = conn.Close()
	}()
	return watched
}
