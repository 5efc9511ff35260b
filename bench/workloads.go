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
	seconds    float64
	maxRSSKiB  int64
	cpuSeconds float64
	requests   int // requests that reached the destination registry
}

// seededImage is an image in the source registry.
type seededImage struct {
	repo, tag, digest string
}

// tools returns every tool, copying to the destination directly and through nginx.
func (b *bench) tools() []tool {
	return b.toolsTo(b.dst.Addr, true)
}

// slowTools returns the tools that copy to the destination through the delaying hop.
func (b *bench) slowTools() []tool {
	return b.toolsTo(b.slow.Addr, false)
}

// toolsTo returns the tools that copy to the destination at dstAddr, a loopback address
// of the registry itself or of a hop in front of it, and with withNginx also the tools
// that copy through nginx.
func (b *bench) toolsTo(dstAddr string, withNginx bool) []tool {
	direct := endpoint{base: "http://" + dstAddr}
	viaNginx := endpoint{base: "http://" + b.nginx.HTTPAddr, host: meshHost}
	source := endpoint{base: b.src.URL}
	sourceViaNginx := endpoint{base: "http://" + b.nginx.HTTPAddr, host: meshSourceHost}
	env := toolEnv(b.toolHome)

	rawTool := func(copier *rawCopier, src, dst endpoint) func(context.Context, string, string, string, bool) (runResult, error) {
		return func(ctx context.Context, srcRepo, dstRepo, tag string, recopy bool) (runResult, error) {
			// Each run opens new connections, as a new process of the other tools does.
			copier.client.CloseIdleConnections()
			start := time.Now()
			err := copier.copyImage(ctx, src, srcRepo, dst, dstRepo, tag, recopy)
			return runResult{seconds: time.Since(start).Seconds()}, err
		}
	}
	external := func(bin string, args func(src, dst string) []string, srcHost, dstHost string) func(context.Context, string, string, string, bool) (runResult, error) {
		return func(ctx context.Context, srcRepo, dstRepo, tag string, _ bool) (runResult, error) {
			return runTool(ctx, env, bin, args(srcHost+"/"+srcRepo+":"+tag, dstHost+"/"+dstRepo+":"+tag)...)
		}
	}
	imgxferArgs := func(src, dst string) []string {
		return []string{"copy", "--quiet", "--rules", b.rulesFile, src, dst}
	}

	tools := []tool{
		{name: "raw", copy: rawTool(b.raw, source, direct)},
		{name: "raw +verify", copy: rawTool(b.raw.withClientChecks(false), source, direct)},
		{name: "raw +verify +HEAD", copy: rawTool(b.raw.withClientChecks(true), source, direct)},
		{name: "raw +verify +HEAD, own process", external: true, copy: func(ctx context.Context, srcRepo, dstRepo, tag string, recopy bool) (runResult, error) {
			return runTool(ctx, env, b.self, "-raw-copy", fmt.Sprintf("-skip-present=%t", recopy), source.base, srcRepo, direct.base, dstRepo, tag)
		}},
		{name: "imgxfer", copy: external(b.imgxfer, imgxferArgs, b.src.Addr, dstAddr), external: true},
	}
	if b.crane != "" {
		tools = append(tools, tool{name: "crane", external: true, copy: external(b.crane, func(src, dst string) []string {
			return []string{"copy", "--insecure", src, dst}
		}, b.src.Addr, dstAddr)})
	}
	if b.regctl != "" {
		tools = append(tools, tool{name: "regctl", external: true, copy: external(b.regctl, func(src, dst string) []string {
			return []string{"image", "copy", src, dst}
		}, b.src.Addr, dstAddr)})
	}
	if withNginx {
		tools = append(tools,
			tool{name: "raw via nginx", copy: rawTool(b.raw, source, viaNginx)},
			tool{name: "raw +verify +HEAD via nginx", copy: rawTool(b.raw.withClientChecks(true), source, viaNginx)},
			tool{name: "imgxfer via nginx", copy: external(b.imgxfer, imgxferArgs, b.src.Addr, meshHost), external: true},
			tool{name: "raw, source via nginx", copy: rawTool(b.raw, sourceViaNginx, direct)},
			tool{name: "imgxfer, source via nginx", copy: external(b.imgxfer, imgxferArgs, meshSourceHost, dstAddr), external: true},
		)
	}
	return tools
}

// requestKinds summarises requests by method and kind, such as "HEAD blob 8, PUT upload 8".
func requestKinds(records []testenv.RequestRecord) string {
	counts := map[string]int{}
	var order []string
	for _, record := range records {
		kind := "other"
		switch {
		case strings.Contains(record.Path, "/blobs/uploads/"):
			kind = "upload"
		case strings.Contains(record.Path, "/blobs/"):
			kind = "blob"
		case strings.Contains(record.Path, "/manifests/"):
			kind = "manifest"
		}
		key := record.Method + " " + kind
		if counts[key] == 0 {
			order = append(order, key)
		}
		counts[key]++
	}
	parts := make([]string, 0, len(order))
	for _, key := range order {
		parts = append(parts, fmt.Sprintf("%s %d", key, counts[key]))
	}
	return strings.Join(parts, ", ")
}

// slug turns a tool name into a repository path component: lowercase letters and digits,
// with one dash for each run of other characters.
func slug(name string) string {
	var out strings.Builder
	dash := false
	for _, r := range strings.ToLower(name) {
		if ('a' <= r && r <= 'z') || ('0' <= r && r <= '9') {
			if dash && out.Len() > 0 {
				out.WriteByte('-')
			}
			out.WriteRune(r)
			dash = false
			continue
		}
		dash = true
	}
	return out.String()
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
			records := b.dst.Requests()
			if err := b.verify(ctx, repo, image.tag, image.digest); err != nil {
				return nil, fmt.Errorf("%s, %s: %w", label, t.name, err)
			}
			samples[t.name] = append(samples[t.name], sample{seconds: result.seconds, maxRSSKiB: result.maxRSSKiB, cpuSeconds: result.cpuSeconds, requests: len(records)})
			fmt.Fprintf(os.Stderr, "%s round %d: %-26s %.3f s, CPU %.3f s, peak RSS %d KiB, %d destination requests (%s)\n",
				label, round+1, t.name, result.seconds, result.cpuSeconds, result.maxRSSKiB, len(records), requestKinds(records))
		}
	}
	return samples, nil
}

// run seeds the source, runs every workload and returns the report.
func (b *bench) run(ctx context.Context, rounds int, withSync, withLarge bool) (*report, error) {
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

	if withLarge {
		rows, err := b.runLayerSizes(ctx, tools, rounds)
		if err != nil {
			return nil, err
		}
		rep.layerRSS = rows
	}

	slowSamples, err := b.measure(ctx, "small-layers, slow link", b.slowTools(), rounds, smallImage, func(t tool, round int) string {
		return fmt.Sprintf("slow/%s-%d", slug(t.name), round)
	}, false)
	if err != nil {
		return nil, err
	}
	rep.add(table{title: fmt.Sprintf("Fresh copy over a slow link, %d ms per request: the 51 blobs of about 64 KiB", linkDelay.Milliseconds()), tools: b.slowTools(), samples: slowSamples})

	if withSync {
		images, err := b.seedSyncImages(ctx)
		if err != nil {
			return nil, err
		}
		for _, dst := range []struct{ addr, title string }{
			{b.dst.Addr, fmt.Sprintf("Sync: %d images of 3 layers of 1 MiB, direct", syncImages)},
			{b.slow.Addr, fmt.Sprintf("Sync over the slow link, %d ms per request: the same %d images", linkDelay.Milliseconds(), syncImages)},
		} {
			syncTable, err := b.runSync(ctx, rounds, images, dst.addr, dst.title)
			if err != nil {
				return nil, err
			}
			rep.add(syncTable)
		}
	}

	return rep, nil
}

// largeRounds caps the rounds of the 1 GiB workload, whose copies take seconds each.
const largeRounds = 3

// runLayerSizes copies a one-layer image with a 16 MiB layer and one with a 1 GiB layer
// with every external tool, and returns table rows of their peak RSS and the 1 GiB copy's
// CPU time. Only external tools run in a process of their own, so only they have a peak RSS.
func (b *bench) runLayerSizes(ctx context.Context, tools []tool, rounds int) ([]string, error) {
	amd64 := platform.Platform{OS: "linux", Architecture: "amd64"}
	var external []tool
	for _, t := range tools {
		if t.external {
			external = append(external, t)
		}
	}
	rounds = min(rounds, largeRounds)

	perSize := map[string]map[string][]sample{}
	for i, size := range []int64{16 * mib, 1024 * mib} {
		label := fmt.Sprintf("layer-%dmib", size/mib)
		fmt.Fprintf(os.Stderr, "seeding a one-layer image of %d MiB\n", size/mib)
		image, err := b.seed(ctx, "bench/"+label, testenv.RandomImage(int64(10+i), []platform.Platform{amd64}, 1, size))
		if err != nil {
			return nil, err
		}
		// A first copy stores the layer in the destination, so that no measured run pays
		// for allocating its storage.
		if err := b.raw.copyImage(ctx, endpoint{base: b.src.URL}, image.repo, endpoint{base: b.dst.URL}, label+"/warm-up", image.tag, false); err != nil {
			return nil, fmt.Errorf("warm-up copy of %s: %w", label, err)
		}
		samples, err := b.measure(ctx, label, external, rounds, image, func(t tool, round int) string {
			return fmt.Sprintf("%s/%s-%d", label, slug(t.name), round)
		}, false)
		if err != nil {
			return nil, err
		}
		perSize[label] = samples
	}

	var rows []string
	for _, t := range external {
		small, large := perSize["layer-16mib"][t.name], perSize["layer-1024mib"][t.name]
		rssMiB := func(s sample) float64 { return float64(s.maxRSSKiB) / 1024 }
		smallRSS, largeRSS := medianOf(small, rssMiB), medianOf(large, rssMiB)
		change := 0.0
		if smallRSS > 0 {
			change = (largeRSS/smallRSS - 1) * 100
		}
		rows = append(rows, fmt.Sprintf("| %s | %.1f | %.1f | %+.0f%% | %.2f |", t.name, smallRSS, largeRSS, change, medianOf(large, func(s sample) float64 { return s.cpuSeconds })))
	}
	return rows, nil
}

// medianOf returns the median of one value of every sample.
func medianOf(samples []sample, value func(sample) float64) float64 {
	values := make([]float64, 0, len(samples))
	for _, s := range samples {
		values = append(values, value(s))
	}
	return median(values)
}

// syncImages is the number of images in the sync workload.
const syncImages = 20

// seedSyncImages pushes the 20 single-platform images of 3 layers of 1 MiB that the sync
// workloads copy.
func (b *bench) seedSyncImages(ctx context.Context) ([]seededImage, error) {
	amd64 := platform.Platform{OS: "linux", Architecture: "amd64"}
	images := make([]seededImage, 0, syncImages)
	for i := range syncImages {
		image, err := b.seed(ctx, fmt.Sprintf("sync/img%02d", i), testenv.RandomImage(int64(100+i), []platform.Platform{amd64}, 3, mib))
		if err != nil {
			return nil, err
		}
		images = append(images, image)
	}
	return images, nil
}

// runSync copies images to the destination at dstAddr with `imgxfer sync` at --parallel
// 1, 2 and 4, against the raw copier copying them one image after another.
func (b *bench) runSync(ctx context.Context, rounds int, images []seededImage, dstAddr, title string) (table, error) {
	source := endpoint{base: b.src.URL}
	direct := endpoint{base: "http://" + dstAddr}
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
						b.src.Addr, image.repo, image.tag, dstAddr, prefix, filepath.Base(image.repo))
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
			prefix := fmt.Sprintf("sync-%s-%s-%d", slug(title), slug(t.name), round)
			result, err := t.copy(ctx, "", prefix, "", false)
			if err != nil {
				return table{}, fmt.Errorf("sync, %s: %w", t.name, err)
			}
			for _, image := range images {
				if err := b.verify(ctx, prefix+"/"+filepath.Base(image.repo), image.tag, image.digest); err != nil {
					return table{}, fmt.Errorf("sync, %s: %w", t.name, err)
				}
			}
			samples[t.name] = append(samples[t.name], sample{seconds: result.seconds, maxRSSKiB: result.maxRSSKiB, cpuSeconds: result.cpuSeconds})
			fmt.Fprintf(os.Stderr, "sync round %d: %-28s %.3f s\n", round+1, t.name, result.seconds)
		}
	}
	return table{title: title, tools: tools, samples: samples}, nil
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
