package main

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"time"
)

// Versions of the comparison tools that the harness installs with `go install`.
const (
	craneModule  = "github.com/google/go-containerregistry/cmd/crane@v0.22.1"
	regctlModule = "github.com/regclient/regclient/cmd/regctl@v0.11.7"
)

// commandTimeout bounds one run of an external command.
const commandTimeout = 5 * time.Minute

// unusedProxy is an environment proxy on a loopback port where nothing listens. With it,
// and NO_PROXY empty, regclient-based tools never resolve a made-up host name in DNS,
// while loopback addresses bypass the proxy and reach the servers directly.
const unusedProxy = "http://127.0.0.1:9"

// runResult is one external command's wall time, peak resident set size and CPU time.
type runResult struct {
	seconds    float64
	maxRSSKiB  int64
	cpuSeconds float64 // user plus system time of the command
}

// toolEnv returns the environment for the copy tools: a private home, docker and XDG
// configuration under dir, no imgxfer rules unless named by flag, and the unused proxy.
func toolEnv(dir string) []string {
	var environ []string
	for _, kv := range os.Environ() {
		name, _, _ := strings.Cut(kv, "=")
		switch strings.ToUpper(name) {
		case "HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY", "ALL_PROXY", "HOME", "DOCKER_CONFIG", "XDG_CONFIG_HOME", "IMGXFER_RULES":
			continue
		}
		environ = append(environ, kv)
	}
	return append(environ,
		"HOME="+dir,
		"DOCKER_CONFIG="+filepath.Join(dir, "docker"),
		"XDG_CONFIG_HOME="+filepath.Join(dir, "config"),
		"IMGXFER_RULES=",
		"HTTP_PROXY="+unusedProxy,
		"HTTPS_PROXY="+unusedProxy,
		"NO_PROXY=",
	)
}

// timeCommand is GNU time, which reports the peak RSS of the command it runs. The rusage
// that os/exec returns is not used, because on Linux its ru_maxrss proved to be the
// largest of all children waited for so far, not the one command's.
const timeCommand = "/usr/bin/time"

// runTool runs name with args and returns its wall time, its CPU time and, when GNU time
// is installed, its peak RSS (GNU time's %M, in KiB). A non-zero exit is an error that
// includes the end of stderr. The wall time includes starting GNU time, about a millisecond.
func runTool(ctx context.Context, environ []string, name string, args ...string) (runResult, error) {
	ctx, cancel := context.WithTimeout(ctx, commandTimeout)
	defer cancel()

	var rssFile string
	cmd := exec.CommandContext(ctx, name, args...)
	if _, err := os.Stat(timeCommand); err == nil {
		file, err := os.CreateTemp("", "imgxfer-bench-rss-")
		if err != nil {
			return runResult{}, err
		}
		rssFile = file.Name()
		file.Close()
		defer os.Remove(rssFile)
		cmd = exec.CommandContext(ctx, timeCommand, append([]string{"-f", "%M", "-o", rssFile, name}, args...)...)
	}
	cmd.Env = environ
	var stderr bytes.Buffer
	cmd.Stderr = &stderr

	start := time.Now()
	err := cmd.Run()
	elapsed := time.Since(start).Seconds()
	if err != nil {
		tail := stderr.String()
		if len(tail) > 2000 {
			tail = tail[len(tail)-2000:]
		}
		return runResult{}, fmt.Errorf("%s %s: %w\n%s", filepath.Base(name), strings.Join(args, " "), err, tail)
	}

	// The CPU time of the waited-for process includes that of the children it waited for,
	// so under GNU time it is the tool's plus GNU time's own, about a millisecond.
	result := runResult{seconds: elapsed, cpuSeconds: (cmd.ProcessState.UserTime() + cmd.ProcessState.SystemTime()).Seconds()}
	if rssFile != "" {
		data, err := os.ReadFile(rssFile)
		if err != nil {
			return runResult{}, fmt.Errorf("read peak RSS of %s: %w", filepath.Base(name), err)
		}
		if result.maxRSSKiB, err = strconv.ParseInt(strings.TrimSpace(string(data)), 10, 64); err != nil {
			return runResult{}, fmt.Errorf("invalid peak RSS %q from %s: %w", data, timeCommand, err)
		}
	}
	return result, nil
}

// installTool runs `go install module` with GOBIN=dir from outside the repository, so the
// tool's dependencies do not touch this module's go.mod, and returns the binary's path.
func installTool(ctx context.Context, dir, module string) (string, error) {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, "go", "install", module)
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), "GOBIN="+dir, "GOFLAGS=")
	output, err := cmd.CombinedOutput()
	if err != nil {
		return "", fmt.Errorf("go install %s: %w\n%s", module, err, output)
	}
	name, _, _ := strings.Cut(filepath.Base(module), "@")
	return filepath.Join(dir, name), nil
}

// buildImgxfer builds the imgxfer binary from the repository without the race detector.
func buildImgxfer(ctx context.Context, repoDir, dir string) (string, error) {
	bin := filepath.Join(dir, "imgxfer")
	cmd := exec.CommandContext(ctx, "go", "build", "-trimpath", "-o", bin, ".")
	cmd.Dir = repoDir
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	output, err := cmd.CombinedOutput()
	if err != nil {
		return "", fmt.Errorf("go build imgxfer: %w\n%s", err, output)
	}
	return bin, nil
}
