package e2e

import (
	"bytes"
	"context"
	"net/url"
	"os"
	"os/exec"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/regclient/regclient/types/ref"

	"github.com/imgxfer/imgxfer/internal/testenv"
)

// interruptRate is the front proxy's rate limit in the interrupt tests: 16 MiB of layers
// then take about four seconds, long enough to interrupt in the middle.
const interruptRate = 4 << 20

// runningCommand is an imgxfer process started in the background.
type runningCommand struct {
	cmd     *exec.Cmd
	stderr  bytes.Buffer
	done    chan struct{}
	waitErr error
}

func (e *env) start(t *testing.T, args ...string) *runningCommand {
	t.Helper()
	r := &runningCommand{done: make(chan struct{})}
	r.cmd = exec.Command(imgxferBin, args...)
	r.cmd.Env = e.commandEnv()
	r.cmd.Stderr = &r.stderr
	if err := r.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() {
		r.waitErr = r.cmd.Wait()
		close(r.done)
	}()
	t.Cleanup(func() {
		select {
		case <-r.done:
		default:
			_ = r.cmd.Process.Kill()
			<-r.done
		}
	})
	return r
}

// signal sends sig to the process.
func (r *runningCommand) signal(t *testing.T, sig os.Signal) {
	t.Helper()
	if err := r.cmd.Process.Signal(sig); err != nil {
		t.Fatalf("sending %s: %v", sig, err)
	}
}

// wait waits up to timeout for the process to exit and returns its exit code.
func (r *runningCommand) wait(t *testing.T, timeout time.Duration) int {
	t.Helper()
	select {
	case <-r.done:
	case <-time.After(timeout):
		t.Fatalf("imgxfer still running %s after the signal\nstderr:\n%s", timeout, r.stderr.String())
	}
	if exitErr, ok := r.waitErr.(*exec.ExitError); ok {
		return exitErr.ExitCode()
	}
	if r.waitErr != nil {
		t.Fatal(r.waitErr)
	}
	return 0
}

// pushLargeImage puts a single-platform image of four 4 MiB layers into the source.
func (f *faultEnv) pushLargeImage(t *testing.T, repoTag string) testenv.Pushed {
	t.Helper()
	return f.pushImage(t, repoTag, 4, 4<<20)
}

// waitForUpload waits until the destination registry has stored at least one blob of
// repo and the front proxy has a blob upload of repo under way.
func (f *faultEnv) waitForUpload(t *testing.T, repo string) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for time.Now().Before(deadline) {
		stored := false
		for _, req := range f.prod.Requests() {
			if req.Method == "PUT" && req.Status == 201 && strings.HasPrefix(req.Path, "/v2/"+repo+"/blobs/uploads/") {
				stored = true
			}
		}
		uploading := false
		for _, req := range f.front.Requests() {
			if req.Method == "PUT" && strings.HasPrefix(req.Path, "/v2/"+repo+"/blobs/uploads/") {
				uploading = true
			}
		}
		if stored && uploading {
			return
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Fatal("no blob upload started within 30s")
}

// presentBlobs returns how many of pushed's blobs the destination registry has in repo.
func (f *faultEnv) presentBlobs(t *testing.T, repo string, pushed testenv.Pushed) int {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	target, err := ref.New(f.prod.Addr + "/" + repo)
	if err != nil {
		t.Fatal(err)
	}
	present := 0
	for _, blob := range pushed.Blobs {
		if head, err := f.dstClient.BlobHead(ctx, target, blob); err == nil {
			head.Close()
			present++
		}
	}
	return present
}

func TestInterruptKeepsPreviousImageAndResumes(t *testing.T) {
	f := newFaultEnv(t, interruptRate)
	old := f.pushRandomIndex(t, "s/app:old", "", "linux/amd64")
	f.copyJSON(t, "--rules", f.rulesFile, f.src.Addr+"/s/app:old", prodHost+"/s/app:1")
	large := f.pushLargeImage(t, "s/app:2")
	f.prod.ResetRequests()

	running := f.start(t, "copy", "--rules", f.rules, f.source.Addr+"/s/app:2", prodHost+"/s/app:1")
	f.waitForUpload(t, "s/app")
	interrupted := time.Now()
	running.signal(t, os.Interrupt)
	code := running.wait(t, 10*time.Second)
	stopTime := time.Since(interrupted)
	t.Logf("figures: stopped %s after SIGINT with exit %d", stopTime.Round(time.Millisecond), code)
	t.Logf("error line: %s", errorLines(running.stderr.String()))

	if code != 130 {
		t.Errorf("exit code %d, want 130", code)
	}
	if stopTime > 3*time.Second {
		t.Errorf("stopping took %s, want at most about 2s", stopTime)
	}
	errs := errorLines(running.stderr.String())
	if strings.Count(errs, "\n") != 1 {
		t.Errorf("want one error line, got:\n%s", running.stderr.String())
	}
	for _, want := range []string{"interrupted by SIGINT", "s/app:1", "left its tag as it was", "run the same command again"} {
		if !strings.Contains(errs, want) {
			t.Errorf("error line lacks %q:\n%s", want, errs)
		}
	}
	if tag := f.headManifest(t, f.prod, "s/app:1"); tag.GetDescriptor().Digest != old.Index.Digest {
		t.Errorf("destination tag moved to %s, want the previous image %s", tag.GetDescriptor().Digest, old.Index.Digest)
	}

	present := f.presentBlobs(t, "s/app", large)
	t.Logf("figures: %d of %d blobs of the new image stored before the interrupt", present, len(large.Blobs))
	if present == 0 || present == len(large.Blobs) {
		t.Fatal("the interrupt came before the first or after the last blob, so the rerun cannot show a partial resend")
	}

	f.prod.ResetRequests()
	out := f.copyJSON(t, "--rules", f.rulesFile, f.src.Addr+"/s/app:2", prodHost+"/s/app:1")
	if out.DestinationDigest != large.Index.Digest.String() {
		t.Errorf("rerun pushed %s, want %s", out.DestinationDigest, large.Index.Digest)
	}
	f.assertImage(t, f.prod, "s/app:1", large)

	// Uploads of the interrupted process that the rate-limited hop had already taken on
	// can still finish at the registry after the process exits, during the rerun. So the
	// test judges the rerun by its own requests. The rerun must start an upload for each
	// blob that its HEAD request found missing, and for no other.
	missing, started := rerunBlobs(f.prod.Requests(), "s/app")
	t.Logf("figures: the rerun found %d of %d blobs missing and started %d uploads", len(missing), len(large.Blobs), len(started))
	if len(missing) == len(large.Blobs) {
		t.Errorf("the rerun found all %d blobs missing, want it to find the ones stored before the interrupt", len(missing))
	}
	if !slices.Equal(started, missing) {
		t.Errorf("the rerun started uploads for %v, want only the missing %v", started, missing)
	}
}

// rerunBlobs returns, sorted, the digests of the blobs of repo that HEAD requests found
// missing, and those for which an upload started. regclient names the digest of an
// upload in the mount parameter of the POST request that starts it.
func rerunBlobs(requests []testenv.RequestRecord, repo string) (missing, started []string) {
	for _, req := range requests {
		if digest, ok := strings.CutPrefix(req.Path, "/v2/"+repo+"/blobs/sha256:"); ok && req.Method == "HEAD" && req.Status == 404 {
			missing = append(missing, "sha256:"+digest)
		}
		if req.Method == "POST" && req.Path == "/v2/"+repo+"/blobs/uploads/" {
			query, _ := url.ParseQuery(req.RawQuery)
			started = append(started, query.Get("mount"))
		}
	}
	slices.Sort(missing)
	slices.Sort(started)
	return slices.Compact(missing), started
}

func TestTerminateLeavesNoTag(t *testing.T) {
	f := newFaultEnv(t, interruptRate)
	f.pushLargeImage(t, "s/term:1")

	running := f.start(t, "copy", "--rules", f.rules, f.source.Addr+"/s/term:1", prodHost+"/s/term:1")
	f.waitForUpload(t, "s/term")
	terminated := time.Now()
	running.signal(t, syscall.SIGTERM)
	code := running.wait(t, 10*time.Second)
	t.Logf("figures: stopped %s after SIGTERM with exit %d", time.Since(terminated).Round(time.Millisecond), code)

	if code != 130 {
		t.Errorf("exit code %d, want 130", code)
	}
	if errs := errorLines(running.stderr.String()); !strings.Contains(errs, "interrupted by SIGTERM") {
		t.Errorf("error line does not name SIGTERM:\n%s", running.stderr.String())
	}
	f.assertNoTag(t, f.prod, "s/term:1")
}

func TestSecondInterruptExitsAtOnce(t *testing.T) {
	f := newFaultEnv(t, interruptRate)
	f.pushLargeImage(t, "s/twice:1")

	running := f.start(t, "copy", "--rules", f.rules, f.source.Addr+"/s/twice:1", prodHost+"/s/twice:1")
	f.waitForUpload(t, "s/twice")
	running.signal(t, os.Interrupt)
	// The second signal may find the process gone already, when the first stop was fast.
	_ = running.cmd.Process.Signal(os.Interrupt)
	if code := running.wait(t, 5*time.Second); code != 130 {
		t.Errorf("exit code %d, want 130\nstderr:\n%s", code, running.stderr.String())
	}
	stderr := running.stderr.String()
	if !strings.Contains(stderr, "received again, exiting at once") && !strings.Contains(stderr, "interrupted by SIGINT") {
		t.Errorf("stderr explains neither stop:\n%s", stderr)
	}
	f.assertNoTag(t, f.prod, "s/twice:1")
}
