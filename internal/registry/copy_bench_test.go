package registry

import (
	"context"
	"fmt"
	"os"
	"testing"

	"github.com/regclient/regclient/types/platform"

	"github.com/imgxfer/imgxfer/internal/testenv"
)

// BenchmarkCopy copies an image between two registries served in the test process, with
// filesystem storage under /dev/shm when it exists. The registries share the CPUs with
// the copy, so the figures show the whole loopback pipeline. A CPU profile shows the
// client's own share:
//
//	go test ./internal/registry -run '^$' -bench Copy -cpuprofile cpu.out
func BenchmarkCopy(b *testing.B) {
	amd64, arm64 := platform.Platform{OS: "linux", Architecture: "amd64"}, platform.Platform{OS: "linux", Architecture: "arm64"}
	multi := testenv.RandomImage(1, []platform.Platform{amd64, arm64}, 4, 16<<20)
	multi.Platforms[1].Layers = multi.Platforms[1].Layers[:3]

	cases := []struct {
		name  string
		image testenv.ImageSpec
		bytes int64
	}{
		{"multi-arch-96MiB", multi, 6 * 16 << 20},
		{"small-layers-51x64KiB", testenv.RandomImage(2, []platform.Platform{amd64}, 50, 64<<10), 50 * 64 << 10},
		{"one-layer-256MiB", testenv.RandomImage(3, []platform.Platform{amd64}, 1, 256<<20), 256 << 20},
	}
	for _, bc := range cases {
		b.Run(bc.name, func(b *testing.B) {
			ctx := context.Background()
			src, dst := startBenchRegistry(b), startBenchRegistry(b)
			if _, err := testenv.PushIndex(ctx, testenv.NewClient(src), src.Addr+"/bench/app:v1", bc.image, ""); err != nil {
				b.Fatal(err)
			}
			rules, logger := plainHTTPRules(b, src.Addr, dst.Addr), quietLogger()

			b.SetBytes(bc.bytes)
			b.ResetTimer()
			for i := range b.N {
				// A client per copy, as each run of the command builds one.
				client, err := New(Options{Rules: rules, Logger: logger})
				if err != nil {
					b.Fatal(err)
				}
				result := client.Copy(ctx, CopySpec{Source: src.Addr + "/bench/app:v1", Destination: fmt.Sprintf("%s/bench/copy-%d:v1", dst.Addr, i)}, CopyOptions{})
				client.Close()
				if result.Err != nil {
					b.Fatal(result.Err)
				}
			}
		})
	}
}

func startBenchRegistry(b *testing.B) *testenv.Registry {
	b.Helper()
	parent := ""
	if info, err := os.Stat("/dev/shm"); err == nil && info.IsDir() {
		parent = "/dev/shm"
	}
	dir, err := os.MkdirTemp(parent, "imgxfer-bench-")
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { os.RemoveAll(dir) })
	return startTestRegistry(b, dir)
}
