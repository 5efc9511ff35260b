// Command imgxfer copies container images between registries, sending the requests for
// routed registries through a mesh proxy. The same binary runs standalone and, installed
// as docker-imgxfer in a cli-plugins folder, as "docker imgxfer".
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strings"
	"syscall"

	"github.com/imgxfer/imgxfer/commands"
	"github.com/imgxfer/imgxfer/internal/dockerplugin"
	"github.com/imgxfer/imgxfer/internal/version"
)

func main() {
	os.Exit(run(os.Args))
}

func run(args []string) int {
	// docker's metadata request gets its response before anything else is read or started.
	if dockerplugin.IsMetadataCall(args) {
		if err := dockerplugin.WriteMetadata(os.Stdout, version.Get().Version); err != nil {
			fmt.Fprintf(os.Stderr, "imgxfer: writing plugin metadata: %v\n", err)
			return commands.ExitFailure
		}
		return commands.ExitOK
	}

	ctx, cancel := context.WithCancelCause(context.Background())
	defer cancel(nil)
	signals := make(chan os.Signal, 2)
	signal.Notify(signals, os.Interrupt, syscall.SIGTERM)
	defer signal.Stop(signals)
	go stopOnSignals(signals, cancel, os.Stderr, os.Exit)

	name := "imgxfer"
	if dockerplugin.RunningAsPlugin() {
		name = "docker " + dockerplugin.Name
		args = dockerplugin.PluginArgs(args)
		ctx = dockerplugin.WatchSocket(ctx)
	}

	app := commands.NewApp(name, os.Stdin, os.Stdout, os.Stderr)
	err := app.Run(ctx, args)
	if err != nil {
		fmt.Fprintf(os.Stderr, "imgxfer: %s\n", errorMessage(ctx, err))
	}
	return commands.ExitCode(err)
}

// interruptError is the cause of the root context's cancellation by a signal.
type interruptError struct {
	signal os.Signal
}

func (e *interruptError) Error() string {
	return fmt.Sprintf("interrupted by %s", signalName(e.signal))
}

func (e *interruptError) Unwrap() error { return context.Canceled }

// stopOnSignals cancels the root context on the first SIGINT or SIGTERM, so the running
// command stops its requests and returns. A second signal exits at once with the
// interrupted exit code, for a stop that takes too long.
func stopOnSignals(signals <-chan os.Signal, cancel context.CancelCauseFunc, stderr io.Writer, exit func(int)) {
	first := <-signals
	cancel(&interruptError{signal: first})

	second := <-signals
	fmt.Fprintf(stderr, "imgxfer: %s received again, exiting at once; run the same command again to copy what is missing\n", signalName(second))
	exit(commands.ExitInterrupted)
}

// errorMessage returns the one line printed for err. For an interrupted command it
// states what stopped it, what did not finish and what state the destination is in.
func errorMessage(ctx context.Context, err error) string {
	var interrupt *interruptError
	if !errors.Is(err, context.Canceled) || !errors.As(context.Cause(ctx), &interrupt) {
		return oneLine(err.Error())
	}
	return fmt.Sprintf("%s before the work finished (%v); a destination tag is pushed only after all the content it names, so no tag names an incomplete image and an unfinished copy left its tag as it was; run the same command again to copy what is missing",
		interrupt, err)
}

// maxErrorLength bounds the printed error, because a registry's error body, such as an
// HTML page from a load balancer, can be long.
const maxErrorLength = 2000

// oneLine joins the lines of a message, such as a registry's JSON or HTML error body that
// an error quotes, into one line of at most maxErrorLength bytes.
func oneLine(message string) string {
	message = strings.Join(strings.Fields(message), " ")
	if len(message) > maxErrorLength {
		message = message[:maxErrorLength] + " [truncated]"
	}
	return message
}

func signalName(sig os.Signal) string {
	switch sig {
	case os.Interrupt:
		return "SIGINT"
	case syscall.SIGTERM:
		return "SIGTERM"
	}
	return sig.String()
}
