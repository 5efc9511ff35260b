package main

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/regclient/regclient/types/platform"

	"github.com/imgxfer/imgxfer/internal/testenv"
)

const mib = 1 << 20

// tool is one way to copy an image from the source to the destination.
type tool struct {
	name string
	// copy copies srcRepo:tag to dstRepo:tag. With recopy set, the raw copier first checks
	// whether the destination already has the image. The other tools ignore it.
	copy func(ctx context.Context, srcRepo, dstRepo, tag string, recopy bool) (runResult, error)
	// external marks a separate process with a peak RSS. The raw copier runs inside the harness.
	external bool
}

// sample is one run of one tool.
type sample struct {
	seconds   float64
	maxRSSKiB int64
	requests  int // requests that reached the destination registry
}

// seededImage is an image in the source registry.
type seededImage struct {
	repo, tag, digest string
}

func (b *bench) tools() []tool {
	direct := endpoint{base: b.dst.URL}
	viaNginx := endpoint{base: "http://" + b.nginx.HTTPAddr, host: meshHost}
	source := endpoint{base: b.src.URL}
	env := toolEnv(b.toolHome)

	rawTool := func(dst endpoint) func(context.Context, string, string, string, bool) (runResult, error) {
		return func(ctx context.Context, srcRepo, dstRepo, tag string, recopy bool) (runResult, error) {
			// Each run opens new connections, as a new process of the other tools does.
			b.raw.client.CloseIdleConnections()
			start := time.Now()
			err := b.raw.copyImage(ctx, source, srcRepo, dst, dstRepo, tag, recopy)
			return runResult{seconds: time.Since(start).Seconds()}, err
		}
	}
	external := func(bin string, args func(src, dst string) []string, dstHost string) func(context.Context, string, string, string, bool) (runResult, error) {
		return func(ctx context.Context, srcRepo, dstRepo, tag string, _ bool) (runResult, error) {
			return runTool(ctx, env, bin, args(b.src.Addr+"/"+srcRepo+":"+tag, dstHost+"/"+dstRepo+":"+tag)...)
		}
	}
	imgxferArgs := func(src, dst string) []string {
		return []string{"copy", "--quiet", "--rules", b.rulesFile, src, dst}
	}

	tools := []tool{
		{name: "raw", copy: rawTool(direct)},
		{name: "raw via nginx", copy: rawTool(viaNginx)},
		{name: "imgxfer", copy: external(b.imgxfer, imgxferArgs, b.dst.Addr), external: true},
		{name: "imgxfer via nginx", copy: external(b.imgxfer, imgxferArgs, meshHost), external: true},
	}
	if b.crane != "" {
		tools = append(tools, tool{name: "crane", external: true, copy: external(b.crane, func(src, dst string) []string {
			return []string{"copy", "--insecure", src, dst}
		}, b.dst.Addr)})
	}
	if b.regctl != "" {
		tools = append(tools, tool{name: "regctl", external: true, copy: external(b.regctl, func(src, dst string) []string {
			return []string{"image", "copy", src, dst}
		}, b.dst.Addr)})
	}
	return tools
}

// slug turns a tool name into a repository path component.
func slug(name string) string {
	return strings.ReplaceAll(name, " ", "-")
}

func (b *bench) seed(ctx context.Context, repo string, spec testenv.ImageSpec) (seededImage, error) {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Minute)
	defer cancel()
	pushed, err := testenv.PushIndex(ctx, b.srcClient, b.src.Addr+"/"+repo+":v1", spec, "")
	if err != nil {
		return seededImage{}, fmt.Errorf("seed %s: %w", repo, err)
	}
	return seededImage{repo: repo, tag: "v1", digest: pushed.Index.Digest.String()}, nil
}

// verify checks that dstRepo:tag in the destination has the expected digest.
func (b *bench) verify(ctx context.Context, dstRepo, tag, want string) error {
	got, err := b.raw.headManifestDigest(ctx, endpoint{base: b.dst.URL}, dstRepo, tag)
	if err != nil {
		return err
	}
	if got != want {
		return fmt.Errorf("destination %s:%s has digest %q, expected %q", dstRepo, tag, got, want)
	}
	return nil
}

// measure runs every tool once per round, each round in a rotated order so that no tool
// always runs first. dstRepo names the destination repository of one run. When recopy is
// set, the destination already has the image and the request count is recorded.
func (b *bench) measure(ctx context.Context, label string, tools []tool, rounds int, image seededImage, dstRepo func(tool tool, round int) string, recopy bool) (map[string][]sample, error) {
	samples := map[string][]sample{}
	for round := range rounds {
		for i := range tools {
			t := tools[(i+round)%len(tools)]
			repo := dstRepo(t, round)
			b.dst.ResetRequests()
			result, err := t.copy(ctx, image.repo, repo, image.tag, recopy)
			if err != nil {
				return nil, fmt.Errorf("%s, %s: %w", label, t.name, err)
			}
			requests := len(b.dst.Requests())
			if err := b.verify(ctx, repo, image.tag, image.digest); err != nil {
				return nil, fmt.Errorf("%s, %s: %w", label, t.name, err)
			}
			samples[t.name] = append(samples[t.name], sample{seconds: result.seconds, maxRSSKiB: result.maxRSSKiB, requests: requests})
			fmt.Fprintf(os.Stderr, "%s round %d: %-18s %.3f s, peak RSS %d KiB, %d destination requests\n",
				label, round+1, t.name, result.seconds, result.maxRSSKiB, requests)
		}
	}
	return samples, nil
}

// run seeds the source, runs every workload and returns the report.
func (b *bench) run(ctx context.Context, rounds int, withSync bool) (*report, error) {
	amd64, arm64 := platform.Platform{OS: "linux", Architecture: "amd64"}, platform.Platform{OS: "linux", Architecture: "arm64"}

	// RandomImage shares the bottom layer across platforms, so 4 layers per platform
	// give 7 distinct layers. Dropping arm64's top layer leaves 6 distinct 16 MiB layers.
	multi := testenv.RandomImage(1, []platform.Platform{amd64, arm64}, 4, 16*mib)
	multi.Platforms[1].Layers = multi.Platforms[1].Layers[:3]
	// 50 layers and the config make 51 blobs.
	small := testenv.RandomImage(2, []platform.Platform{amd64}, 50, 64<<10)

	fmt.Fprintln(os.Stderr, "seeding the source registry")
	multiImage, err := b.seed(ctx, "bench/multi", multi)
	if err != nil {
		return nil, err
	}
	smallImage, err := b.seed(ctx, "bench/small", small)
	if err != nil {
		return nil, err
	}

	tools := b.tools()
	rep := &report{rounds: rounds, storage: b.storageDir, skipped: b.skipped}

	multiSamples, err := b.measure(ctx, "multi-arch", tools, rounds, multiImage, func(t tool, round int) string {
		return fmt.Sprintf("multi/%s-%d", slug(t.name), round)
	}, false)
	if err != nil {
		return nil, err
	}
	rep.add(table{title: "Fresh copy: two platforms, 6 distinct layers of 16 MiB (96 MiB)", tools: tools, samples: multiSamples})
	rep.addRSS(tools, multiSamples)

	smallSamples, err := b.measure(ctx, "small-layers", tools, rounds, smallImage, func(t tool, round int) string {
		return fmt.Sprintf("small/%s-%d", slug(t.name), round)
	}, false)
	if err != nil {
		return nil, err
	}
	rep.add(table{title: "Fresh copy: an index of one platform with 51 blobs of about 64 KiB", tools: tools, samples: smallSamples})

	// Each tool re-copies into its own repository, which the raw copier fills first.
	for _, t := range tools {
		if err := b.raw.copyImage(ctx, endpoint{base: b.src.URL}, multiImage.repo, endpoint{base: b.dst.URL}, "recopy/"+slug(t.name), multiImage.tag, false); err != nil {
			return nil, fmt.Errorf("prepare re-copy for %s: %w", t.name, err)
		}
	}
	recopySamples, err := b.measure(ctx, "re-copy", tools, rounds, multiImage, func(t tool, _ int) string {
		return "recopy/" + slug(t.name)
	}, true)
	if err != nil {
		return nil, err
	}
	rep.add(table{title: "Re-copy of the up-to-date 96 MiB image", tools: tools, samples: recopySamples, withRequests: true})

	rep.addStartup(b.measureStartup(ctx, rounds))

	if withSync {
		syncTable, err := b.runSync(ctx, rounds)
		if err != nil {
			return nil, err
		}
		rep.add(syncTable)
	}

	return rep, nil
}

// syncImages is the number of images in the sync workload.
const syncImages = 20

// runSync copies 20 single-platform images of 3 layers of 1 MiB with `imgxfer sync` at
// --parallel 1, 2 and 4, against the raw copier copying them one image after another.
func (b *bench) runSync(ctx context.Context, rounds int) (table, error) {
	amd64 := platform.Platform{OS: "linux", Architecture: "amd64"}
	images := make([]seededImage, 0, syncImages)
	for i := range syncImages {
		image, err := b.seed(ctx, fmt.Sprintf("sync/img%02d", i), testenv.RandomImage(int64(100+i), []platform.Platform{amd64}, 3, mib))
		if err != nil {
			return table{}, err
		}
		images = append(images, image)
	}

	source := endpoint{base: b.src.URL}
	direct := endpoint{base: b.dst.URL}
	env := toolEnv(b.toolHome)
	tools := []tool{{name: "raw, one image at a time", copy: func(ctx context.Context, _, prefix, _ string, _ bool) (runResult, error) {
		b.raw.client.CloseIdleConnections()
		start := time.Now()
		for _, image := range images {
			if err := b.raw.copyImage(ctx, source, image.repo, direct, prefix+"/"+filepath.Base(image.repo), image.tag, false); err != nil {
				return runResult{}, err
			}
		}
		return runResult{seconds: time.Since(start).Seconds()}, nil
	}}}
	for _, parallel := range []int{1, 2, 4} {
		tools = append(tools, tool{name: fmt.Sprintf("imgxfer sync --parallel %d", parallel), external: true,
			copy: func(ctx context.Context, _, prefix, _ string, _ bool) (runResult, error) {
				var file strings.Builder
				file.WriteString("version: 1\ncopies:\n")
				for _, image := range images {
					fmt.Fprintf(&file, "  - source: %s/%s:%s\n    destination: %s/%s/%s\n",
						b.src.Addr, image.repo, image.tag, b.dst.Addr, prefix, filepath.Base(image.repo))
				}
				path, err := testenv.WriteFile(b.workDir, "sync.yaml", []byte(file.String()))
				if err != nil {
					return runResult{}, err
				}
				return runTool(ctx, env, b.imgxfer, "sync", "--quiet", "--rules", b.rulesFile, "--parallel", fmt.Sprint(parallel), "-f", path)
			}})
	}

	samples := map[string][]sample{}
	for round := range rounds {
		for i := range tools {
			t := tools[(i+round)%len(tools)]
			prefix := fmt.Sprintf("sync-%s-%d", slug(strings.NewReplacer(",", "", "-", "").Replace(t.name)), round)
			result, err := t.copy(ctx, "", prefix, "", false)
			if err != nil {
				return table{}, fmt.Errorf("sync, %s: %w", t.name, err)
			}
			for _, image := range images {
				if err := b.verify(ctx, prefix+"/"+filepath.Base(image.repo), image.tag, image.digest); err != nil {
					return table{}, fmt.Errorf("sync, %s: %w", t.name, err)
				}
			}
			samples[t.name] = append(samples[t.name], sample{seconds: result.seconds, maxRSSKiB: result.maxRSSKiB})
			fmt.Fprintf(os.Stderr, "sync round %d: %-28s %.3f s\n", round+1, t.name, result.seconds)
		}
	}
	return table{title: fmt.Sprintf("Sync: %d images of 3 layers of 1 MiB, direct", syncImages), tools: tools, samples: samples}, nil
}

// measureStartup times `version` of each external tool, which contacts no registry, so a
// reader can subtract process start from the copy times.
func (b *bench) measureStartup(ctx context.Context, rounds int) map[string][]float64 {
	binaries := map[string]string{"imgxfer": b.imgxfer, "crane": b.crane, "regctl": b.regctl}
	seconds := map[string][]float64{}
	for range rounds {
		for _, name := range []string{"imgxfer", "crane", "regctl"} {
			if binaries[name] == "" {
				continue
			}
			result, err := runTool(ctx, toolEnv(b.toolHome), binaries[name], "version")
			if err != nil {
				fmt.Fprintf(os.Stderr, "startup of %s: %v\n", name, err)
				continue
			}
			seconds[name] = append(seconds[name], result.seconds)
		}
	}
	return seconds
}
