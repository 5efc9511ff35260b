package e2e

import (
	"bytes"
	"encoding/json"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/imgxfer/imgxfer/internal/testenv"
)

// TestSyncSurvivesProxyRestart restarts nginx while one `imgxfer sync` runs four copies in
// parallel. Each copy must finish, or fail alone with its reason and no destination tag,
// while the others go on.
func TestSyncSurvivesProxyRestart(t *testing.T) {
	f := newFaultEnv(t, 2<<20)
	repos := []string{"q/a", "q/b", "q/c", "q/d"}
	pushed := map[string]testenv.Pushed{}
	var batch strings.Builder
	batch.WriteString("version: 1\ncopies:\n")
	for _, repo := range repos {
		pushed[repo] = f.pushImage(t, repo+":1", 3, 512<<10)
		batch.WriteString("  - source: \"" + f.source.Addr + "/" + repo + ":1\"\n    destination: " + prodHost + "/" + repo + ":1\n")
	}
	batchFile, err := testenv.WriteFile(f.dir, "restart-sync.yaml", []byte(batch.String()))
	if err != nil {
		t.Fatal(err)
	}

	cmd := exec.Command(imgxferBin, "sync", "--rules", f.rules, "--parallel", "4", "--format", "json", "-f", batchFile)
	cmd.Env = f.commandEnv()
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	t.Cleanup(func() {
		if cmd.ProcessState == nil {
			_ = cmd.Process.Kill()
		}
	})

	f.restartProxyDuringUploads(t, repos, "fault-nginx-restarted-sync")

	select {
	case <-done:
	case <-time.After(90 * time.Second):
		t.Fatalf("sync did not finish within 90s after the restart\n%s", stderr.String())
	}
	code := cmd.ProcessState.ExitCode()

	var results []copyResultLine
	for _, line := range strings.Split(strings.TrimSpace(stdout.String()), "\n") {
		var r copyResultLine
		if err := json.Unmarshal([]byte(line), &r); err != nil {
			t.Fatalf("sync output line is not JSON: %v\n%s", err, line)
		}
		results = append(results, r)
	}
	if len(results) != len(repos) {
		t.Fatalf("sync reported %d copies, want %d:\n%s", len(results), len(repos), stdout.String())
	}

	failed := 0
	for _, r := range results {
		repoTag := strings.TrimPrefix(r.Destination, prodHost+"/")
		repo := strings.SplitN(repoTag, ":", 2)[0]
		switch r.Status {
		case "copied":
			f.assertImage(t, f.prod, repoTag, pushed[repo])
		case "failed":
			failed++
			if r.Error == "" || strings.Contains(r.Error, "\n") {
				t.Errorf("failed copy of %s has no one-line reason: %q", repo, r.Error)
			}
			f.assertNoTag(t, f.prod, repoTag)
		default:
			t.Errorf("copy of %s has status %q, want copied or failed", repo, r.Status)
		}
	}
	wantCode := 0
	if failed > 0 {
		wantCode = 3
		if failed == len(repos) {
			wantCode = code // every copy failed for one reason: that reason's code
		}
	}
	if code != wantCode {
		t.Errorf("exit code %d with %d of %d copies failed, want %d", code, failed, len(repos), wantCode)
	}
	retried := strings.Count(stderr.String(), "registry request failed; retrying")
	t.Logf("figures: proxy restart under sync --parallel 4: %d copies failed, %d retry warnings", failed, retried)
	if retried == 0 {
		t.Error("no copy met the restart, so the test showed nothing")
	}
}

// copyResultLine is the part of a `--format json` result line that this test reads.
type copyResultLine struct {
	Status      string `json:"status"`
	Destination string `json:"destination"`
	Error       string `json:"error"`
}

// restartProxyDuringUploads waits until blob uploads for at least two of repos pass the
// front hop, then stops nginx with SIGTERM, as a rollout would, and starts a new nginx
// in its place behind the hop.
func (f *faultEnv) restartProxyDuringUploads(t *testing.T, repos []string, name string) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for uploadsUnderWay(f.front, repos) < 2 {
		if time.Now().After(deadline) {
			t.Fatal("the copies did not start uploading within 30s")
		}
		time.Sleep(20 * time.Millisecond)
	}

	old := f.proxy
	if err := syscall.Kill(old.PID, syscall.SIGTERM); err != nil {
		t.Fatalf("stopping nginx: %v", err)
	}
	if err := old.Stop(); err != nil {
		t.Fatalf("stopping nginx: %v", err)
	}
	f.proxy = f.startProxy(t, name)
	if err := f.front.SetTarget("http://" + f.proxy.HTTPAddr); err != nil {
		t.Fatal(err)
	}
}
