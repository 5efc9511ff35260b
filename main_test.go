package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/imgxfer/imgxfer/commands"
)

func TestStopOnSignalsCancelsThenExits(t *testing.T) {
	ctx, cancel := context.WithCancelCause(context.Background())
	defer cancel(nil)
	signals := make(chan os.Signal, 2)
	var stderr bytes.Buffer
	exited := make(chan int, 1)
	go stopOnSignals(signals, cancel, &stderr, func(code int) { exited <- code })

	signals <- os.Interrupt
	select {
	case <-ctx.Done():
	case <-time.After(5 * time.Second):
		t.Fatal("the first signal did not cancel the context")
	}
	var interrupt *interruptError
	if !errors.As(context.Cause(ctx), &interrupt) || interrupt.signal != os.Interrupt {
		t.Errorf("cause = %v, want an interrupt by SIGINT", context.Cause(ctx))
	}
	select {
	case code := <-exited:
		t.Fatalf("exited with %d after the first signal", code)
	case <-time.After(50 * time.Millisecond):
	}

	signals <- syscall.SIGTERM
	select {
	case code := <-exited:
		if code != commands.ExitInterrupted {
			t.Errorf("exit code %d, want %d", code, commands.ExitInterrupted)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("the second signal did not exit")
	}
	if !strings.Contains(stderr.String(), "SIGTERM received again") {
		t.Errorf("stderr %q does not explain the immediate exit", stderr.String())
	}
}

func TestErrorMessageAfterInterrupt(t *testing.T) {
	ctx, cancel := context.WithCancelCause(context.Background())
	cancel(&interruptError{signal: syscall.SIGTERM})
	err := fmt.Errorf("copying a to b: %w", context.Canceled)

	message := errorMessage(ctx, err)
	for _, want := range []string{"interrupted by SIGTERM", "copying a to b", "left its tag as it was", "run the same command again"} {
		if !strings.Contains(message, want) {
			t.Errorf("message %q lacks %q", message, want)
		}
	}
	if strings.Contains(message, "\n") {
		t.Errorf("message spans several lines: %q", message)
	}
	if !errors.Is(context.Cause(ctx), context.Canceled) {
		t.Error("the interrupt cause does not wrap context.Canceled")
	}
}

func TestErrorMessageWithoutInterrupt(t *testing.T) {
	err := fmt.Errorf("copying a to b: %w", context.Canceled)
	if got := errorMessage(context.Background(), err); got != err.Error() {
		t.Errorf("message %q, want the error unchanged", got)
	}
	other := errors.New("registry.prod.test rejected user")
	ctx, cancel := context.WithCancelCause(context.Background())
	cancel(&interruptError{signal: os.Interrupt})
	if got := errorMessage(ctx, other); got != other.Error() {
		t.Errorf("message %q, want an error that is not a cancellation unchanged", got)
	}
}

func TestOneLine(t *testing.T) {
	got := oneLine("request failed: not found [http 404]: {\"errors\":[]}\n\n<html>\n  <body>bad gateway</body>\n</html>\n")
	if strings.Contains(got, "\n") {
		t.Errorf("oneLine kept a line break: %q", got)
	}
	if got != `request failed: not found [http 404]: {"errors":[]} <html> <body>bad gateway</body> </html>` {
		t.Errorf("oneLine = %q", got)
	}
	long := oneLine(strings.Repeat("x ", maxErrorLength))
	if len(long) > maxErrorLength+len(" [truncated]") || !strings.HasSuffix(long, "[truncated]") {
		t.Errorf("a long message was not truncated: %d bytes", len(long))
	}
}
