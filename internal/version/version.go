// Package version holds the build's version, commit and date. Release builds set them with
// -ldflags "-X github.com/imgxfer/imgxfer/internal/version.Version=...", and builds
// without ldflags fall back to the module and VCS data that the Go toolchain records.
package version

import (
	"runtime"
	"runtime/debug"
)

// Set by the release build through -ldflags -X.
var (
	Version = ""
	Commit  = ""
	Date    = ""
)

// Info describes the running binary.
type Info struct {
	Version   string `json:"version"`
	Commit    string `json:"commit"`
	Date      string `json:"date"`
	GoVersion string `json:"goVersion"`
	Platform  string `json:"platform"`
}

// Get returns the build information, filling what ldflags left empty from the binary's
// embedded build info, and "unknown" where neither has it.
func Get() Info {
	info := Info{
		Version:   Version,
		Commit:    Commit,
		Date:      Date,
		GoVersion: runtime.Version(),
		Platform:  runtime.GOOS + "/" + runtime.GOARCH,
	}

	if build, ok := debug.ReadBuildInfo(); ok {
		if info.Version == "" && build.Main.Version != "" && build.Main.Version != "(devel)" {
			info.Version = build.Main.Version
		}
		for _, setting := range build.Settings {
			switch {
			case setting.Key == "vcs.revision" && info.Commit == "":
				info.Commit = setting.Value
			case setting.Key == "vcs.time" && info.Date == "":
				info.Date = setting.Value
			}
		}
	}

	if info.Version == "" {
		info.Version = "dev"
	}
	if info.Commit == "" {
		info.Commit = "unknown"
	}
	if info.Date == "" {
		info.Date = "unknown"
	}
	return info
}

// UserAgent returns the User-Agent that imgxfer sends to registries and proxies.
func UserAgent() string {
	return "imgxfer/" + Get().Version
}
