package main

import (
	"fmt"
	"io"
	"math"
	"os"
	"runtime"
	"slices"
	"strings"
	"time"
)

// table is the result of one workload. The first tool is the baseline of the ratios.
type table struct {
	title        string
	tools        []tool
	samples      map[string][]sample
	withRequests bool
}

// noisyRatioLimit is how far the median of the per-round ratios may differ from the
// quotient of the medians before the report marks the ratio as noisy.
const noisyRatioLimit = 0.10

// report collects the tables and writes them as markdown.
type report struct {
	rounds  int
	storage string
	skipped []string
	tables  []table
	rss     []string // rows of the peak RSS table
	// layerRSS are the rows of the peak RSS table by layer size.
	layerRSS []string
	startup  map[string][]float64
}

func (r *report) addStartup(seconds map[string][]float64) {
	r.startup = seconds
}

func (r *report) add(t table) {
	r.tables = append(r.tables, t)
}

// addRSS records the median peak RSS of every external tool's runs.
func (r *report) addRSS(tools []tool, samples map[string][]sample) {
	for _, t := range tools {
		if !t.external {
			continue
		}
		var values []float64
		for _, s := range samples[t.name] {
			values = append(values, float64(s.maxRSSKiB)/1024)
		}
		r.rss = append(r.rss, fmt.Sprintf("| %s | %.1f | %.1f |", t.name, median(values), slices.Max(values)))
	}
}

// roundsText returns "1 round" or "N rounds".
func roundsText(n int) string {
	if n == 1 {
		return "1 round"
	}
	return fmt.Sprintf("%d rounds", n)
}

func median(values []float64) float64 {
	if len(values) == 0 {
		return 0
	}
	sorted := slices.Clone(values)
	slices.Sort(sorted)
	middle := len(sorted) / 2
	if len(sorted)%2 == 1 {
		return sorted[middle]
	}
	return (sorted[middle-1] + sorted[middle]) / 2
}

func (r *report) write(w io.Writer) {
	fmt.Fprintf(w, "Machine: %d CPUs, %s memory, %s %s/%s, registry storage in %s. %s.\n\n",
		runtime.NumCPU(), memTotal(), runtime.Version(), runtime.GOOS, runtime.GOARCH, r.storage, time.Now().UTC().Format("2006-01-02"))
	fmt.Fprintf(w, "Each figure is the median of %s. A ratio is the median of the per-round ratios to the first row's time in the same round.\n", roundsText(r.rounds))
	for _, reason := range r.skipped {
		fmt.Fprintf(w, "\nSkipped: %s\n", strings.SplitN(reason, "\n", 2)[0])
	}

	for _, t := range r.tables {
		baseline := t.samples[t.tools[0].name]
		fmt.Fprintf(w, "\n### %s\n\n", t.title)
		header := fmt.Sprintf("| tool | median s | ratio to %s | median CPU s |", t.tools[0].name)
		if t.withRequests {
			header += " destination requests |"
		}
		fmt.Fprintln(w, header)
		fmt.Fprintln(w, "|---"+strings.Repeat("|---:", strings.Count(header, "|")-2)+"|")
		baselineMedian := medianOf(baseline, func(s sample) float64 { return s.seconds })
		noisy := false
		for _, tl := range t.tools {
			runs := t.samples[tl.name]
			var seconds, ratios, cpu, requests []float64
			for i, s := range runs {
				seconds = append(seconds, s.seconds)
				ratios = append(ratios, s.seconds/baseline[i].seconds)
				cpu = append(cpu, s.cpuSeconds)
				requests = append(requests, float64(s.requests))
			}
			// The raw copier runs in the harness, whose CPU time includes the registries'.
			cpuCell := "-"
			if tl.external {
				cpuCell = fmt.Sprintf("%.3f", median(cpu))
			}
			ratioCell := fmt.Sprintf("%.2f", median(ratios))
			if quotient := median(seconds) / baselineMedian; math.Abs(median(ratios)/quotient-1) > noisyRatioLimit {
				ratioCell += " *"
				noisy = true
			}
			row := fmt.Sprintf("| %s | %.4f | %s | %s |", tl.name, median(seconds), ratioCell, cpuCell)
			if t.withRequests {
				row += fmt.Sprintf(" %.0f |", median(requests))
			}
			fmt.Fprintln(w, row)
		}
		if noisy {
			fmt.Fprintf(w, "\n\\* The median of the per-round ratios differs by more than %.0f%% from the quotient of the medians, so the rounds varied too much to trust this ratio. Rerun on an idle machine with more rounds.\n", noisyRatioLimit*100)
		}
	}

	if len(r.startup) > 0 {
		fmt.Fprintln(w, "\n### Process start: `TOOL version`, which contacts no registry")
		fmt.Fprintln(w, "\n| tool | median s |")
		fmt.Fprintln(w, "|---|---:|")
		for _, name := range []string{"imgxfer", "crane", "regctl"} {
			if values := r.startup[name]; len(values) > 0 {
				fmt.Fprintf(w, "| %s | %.4f |\n", name, median(values))
			}
		}
	}

	if len(r.rss) > 0 {
		fmt.Fprintln(w, "\n### Peak RSS on the 96 MiB fresh copy (GNU time %M; 0 when /usr/bin/time is missing)")
		fmt.Fprintln(w, "\n| tool | median MiB | max MiB |")
		fmt.Fprintln(w, "|---|---:|---:|")
		for _, row := range r.rss {
			fmt.Fprintln(w, row)
		}
	}

	if len(r.layerRSS) > 0 {
		fmt.Fprintf(w, "\n### Peak RSS by layer size: one-layer images of 16 MiB and 1 GiB (median of %s)\n", roundsText(min(r.rounds, largeRounds)))
		fmt.Fprintln(w, "\n| tool | 16 MiB layer, MiB | 1 GiB layer, MiB | change | 1 GiB copy, CPU s |")
		fmt.Fprintln(w, "|---|---:|---:|---:|---:|")
		for _, row := range r.layerRSS {
			fmt.Fprintln(w, row)
		}
	}
}

// memTotal returns MemTotal from /proc/meminfo, or "unknown".
func memTotal() string {
	data, err := os.ReadFile("/proc/meminfo")
	if err != nil {
		return "unknown"
	}
	for _, line := range strings.Split(string(data), "\n") {
		if rest, ok := strings.CutPrefix(line, "MemTotal:"); ok {
			var kib int64
			if _, err := fmt.Sscan(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(rest), "kB")), &kib); err == nil {
				return fmt.Sprintf("%.1f GiB", float64(kib)/(1<<20))
			}
		}
	}
	return "unknown"
}
