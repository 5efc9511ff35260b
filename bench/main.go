// Command bench measures imgxfer against a raw HTTP copy, crane and regctl on loopback.
//
// It starts two distribution registries with filesystem storage (under /dev/shm when it
// exists) and nginx with the mesh proxy configuration that imgxfer generates, all on
// 127.0.0.1. It seeds the source, runs every tool -n times per workload and prints one
// markdown table per workload to stdout. Progress and errors go to stderr. Before it exits,
// it stops every server it started and removes its directories.
//
//	go run ./bench -n 5
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"runtime"
	"syscall"
)

func main() {
	rounds := flag.Int("n", 5, "number of paired rounds; each tool runs once per round and workload")
	withSync := flag.Bool("sync", true, "also run the sync workloads of 20 images at --parallel 1, 2 and 4")
	withLarge := flag.Bool("large", true, "also copy a one-layer image of 1 GiB with each external tool, to compare peak RSS with a 16 MiB layer")
	toolsDir := flag.String("tools-dir", "", "directory that already contains crane and regctl; empty installs them into a temporary directory with go install")
	rawCopy := flag.Bool("raw-copy", false, "internal: copy SRC_URL SRC_REPO DST_URL DST_REPO TAG with the verifying raw copier and exit, so that the harness can time it as a process of its own")
	skipPresent := flag.Bool("skip-present", false, "internal: with -raw-copy, write nothing when the destination tag already has the source's digest")
	flag.Parse()
	if *rawCopy {
		os.Exit(runRawCopy(flag.Args(), *skipPresent))
	}
	if *rounds < 1 || *rounds > 100 {
		fmt.Fprintf(os.Stderr, "bench: invalid -n %d: expected 1 to 100\n", *rounds)
		os.Exit(2)
	}

	// With SIGPIPE ignored, a write to a closed pipe, as with `2>&1 | head`, fails instead
	// of ending the process before it stops nginx and removes its storage. The run goes on
	// without output.
	signal.Ignore(syscall.SIGPIPE)
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()

	_, file, _, _ := runtime.Caller(0)
	repoDir := filepath.Join(filepath.Dir(file), "..")

	b, err := setup(ctx, repoDir, *toolsDir)
	if err != nil {
		fmt.Fprintf(os.Stderr, "bench: %v\n", err)
		if b != nil {
			b.close()
		}
		os.Exit(1)
	}
	rep, err := b.run(ctx, *rounds, *withSync, *withLarge)
	b.close()
	if err != nil {
		fmt.Fprintf(os.Stderr, "bench: %v\n", err)
		os.Exit(1)
	}
	rep.write(os.Stdout)
}

// runRawCopy copies one image with the raw copier, verifying digests and checking for
// each blob first, and returns the exit code.
func runRawCopy(args []string, skipPresent bool) int {
	if len(args) != 5 {
		fmt.Fprintf(os.Stderr, "bench -raw-copy: expected 5 arguments, SRC_URL SRC_REPO DST_URL DST_REPO TAG, got %d\n", len(args))
		return 2
	}
	copier := newRawCopier().withClientChecks(true)
	err := copier.copyImage(context.Background(), endpoint{base: args[0]}, args[1], endpoint{base: args[2]}, args[3], args[4], skipPresent)
	if err != nil {
		fmt.Fprintf(os.Stderr, "bench -raw-copy: %v\n", err)
		return 1
	}
	return 0
}
