// Command imgxfer copies container images between registries, sending the requests for
// routed registries through a mesh proxy. The same binary runs standalone and, installed
// as docker-imgxfer in a cli-plugins folder, as "docker imgxfer".
package main

import (
	"context"
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"github.com/imgxfer/imgxfer/commands"
	"github.com/imgxfer/imgxfer/internal/dockerplugin"
	"github.com/imgxfer/imgxfer/internal/version"
)

func main() {
	os.Exit(run(os.Args))
}

func run(args []string) int {
	// docker's metadata request must be answered before anything else is read or started.
	if dockerplugin.IsMetadataCall(args) {
		if err := dockerplugin.WriteMetadata(os.Stdout, version.Get().Version); err != nil {
			fmt.Fprintf(os.Stderr, "imgxfer: writing plugin metadata: %v\n", err)
			return commands.ExitFailure
		}
		return commands.ExitOK
	}

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()

	name := "imgxfer"
	if dockerplugin.RunningAsPlugin() {
		name = "docker " + dockerplugin.Name
		args = dockerplugin.PluginArgs(args)
		ctx = dockerplugin.WatchSocket(ctx)
	}

	app := commands.NewApp(name, os.Stdin, os.Stdout, os.Stderr)
	err := app.Run(ctx, args)
	if err != nil {
		fmt.Fprintf(os.Stderr, "imgxfer: %v\n", err)
	}
	return commands.ExitCode(err)
}
