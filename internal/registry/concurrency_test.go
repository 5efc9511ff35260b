package registry

import (
	"context"
	"net"
	"net/http"
	"net/http/httputil"
	"net/url"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/regclient/regclient/types/platform"

	"github.com/imgxfer/imgxfer/internal/testenv"
)

// inFlightHop forwards to a registry, holds every request for a while so that concurrent
// requests overlap, and records the maximum number of requests in flight and the
// connections accepted.
type inFlightHop struct {
	addr        string
	inFlight    atomic.Int64
	maxInFlight atomic.Int64
	connections atomic.Int64
}

func startInFlightHop(t *testing.T, target string, hold time.Duration) *inFlightHop {
	t.Helper()
	targetURL, err := url.Parse(target)
	if err != nil {
		t.Fatal(err)
	}
	listener, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	hop := &inFlightHop{addr: listener.Addr().String()}

	proxy := httputil.NewSingleHostReverseProxy(targetURL)
	upstream := &http.Transport{}
	proxy.Transport = upstream
	server := &http.Server{
		Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			current := hop.inFlight.Add(1)
			defer hop.inFlight.Add(-1)
			for {
				seen := hop.maxInFlight.Load()
				if current <= seen || hop.maxInFlight.CompareAndSwap(seen, current) {
					break
				}
			}
			time.Sleep(hold)
			proxy.ServeHTTP(w, r)
		}),
		ConnState: func(_ net.Conn, state http.ConnState) {
			if state == http.StateNew {
				hop.connections.Add(1)
			}
		},
	}

	var done sync.WaitGroup
	done.Add(1)
	go func() {
		defer done.Done()
		_ = server.Serve(listener)
	}()
	t.Cleanup(func() {
		_ = server.Close()
		done.Wait()
		upstream.CloseIdleConnections()
	})
	return hop
}

func TestCopyLimitsRequestsPerRegistry(t *testing.T) {
	ctx := context.Background()
	src, dst := startTestRegistry(t, ""), startTestRegistry(t, "")
	hop := startInFlightHop(t, dst.URL, 5*time.Millisecond)

	image := testenv.RandomImage(7, []platform.Platform{{OS: "linux", Architecture: "amd64"}}, 24, 4<<10)
	if _, err := testenv.PushIndex(ctx, testenv.NewClient(src), src.Addr+"/team/app:1", image, ""); err != nil {
		t.Fatal(err)
	}

	const limit = 5
	client, err := New(Options{Rules: plainHTTPRules(t, src.Addr, hop.addr), Logger: quietLogger(), MaxRequests: limit})
	if err != nil {
		t.Fatal(err)
	}
	defer client.Close()
	result := client.Copy(ctx, CopySpec{Source: src.Addr + "/team/app:1", Destination: hop.addr + "/team/app:1"}, CopyOptions{})
	if result.Err != nil {
		t.Fatalf("copy: %v", result.Err)
	}

	// regclient's own limit is 3, so more than 3 shows that the option took effect.
	if got := hop.maxInFlight.Load(); got > limit || got <= 3 {
		t.Errorf("at most %d requests were in flight to the destination, want 4 to %d", got, limit)
	}
	// Every request reuses one of the connections of the requests in flight, rather than
	// closing all but net/http's default of 2 idle connections after each request.
	if got := hop.connections.Load(); got > limit {
		t.Errorf("the copy opened %d connections to the destination, want at most %d", got, limit)
	}
}
