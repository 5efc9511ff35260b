#!/usr/bin/env bash
# Checks .goreleaser.yaml without the network and without goreleaser: every goos/goarch
# pair of its build compiles with the release flags, the files its archives include
# exist, and a binary built with its -X flags reports the injected version, commit and date.
# When a goreleaser binary is on PATH, `goreleaser check` runs too.
#
# Usage: scripts/release-check.sh [output-dir]
set -euo pipefail
cd "$(dirname "$0")/.."

config=.goreleaser.yaml
out=${1:-$(mktemp -d)}
go=${GO:-go}

# The build's goos and goarch are flow lists on one line each, as .goreleaser.yaml
# writes them: "goos: [linux, darwin, windows]".
list() {
	sed -n "s/^[[:space:]]*$1:[[:space:]]*\[\(.*\)\][[:space:]]*$/\1/p" "$config" | tr -d ' ' | tr ',' ' '
}
goos=$(list goos)
goarch=$(list goarch)
if [ -z "$goos" ] || [ -z "$goarch" ]; then
	echo "release-check: cannot read goos and goarch from $config; keep them as one-line lists such as goos: [linux, darwin]" >&2
	exit 1
fi

# Every file that the archives include must exist.
missing=0
for file in $(sed -n '/^[[:space:]]*files:/,/^[[:space:]]*[a-z_]*:[^-]*$/s/^[[:space:]]*-[[:space:]]*\(.*\)$/\1/p' "$config"); do
	if [ ! -f "$file" ]; then
		echo "release-check: $config archives $file, which does not exist" >&2
		missing=1
	fi
done
[ "$missing" = 0 ] || exit 1

pkg=github.com/imgxfer/imgxfer/internal/version
ldflags="-s -w -X $pkg.Version=0.0.0-check -X $pkg.Commit=0123456789abcdef -X $pkg.Date=2000-01-01T00:00:00Z"
for os in $goos; do
	for arch in $goarch; do
		binary="$out/docker-imgxfer_${os}_${arch}"
		[ "$os" = windows ] && binary="$binary.exe"
		echo "release-check: building $os/$arch"
		CGO_ENABLED=0 GOOS=$os GOARCH=$arch "$go" build -trimpath -ldflags "$ldflags" -o "$binary" .
	done
done

# The binary for this machine, if the release builds one, reports what -X injected.
native="$out/docker-imgxfer_$("$go" env GOOS)_$("$go" env GOARCH)"
if [ -x "$native" ]; then
	reported=$("$native" version)
	for want in 0.0.0-check 0123456789abcdef 2000-01-01T00:00:00Z; do
		if ! grep -q -- "$want" <<<"$reported"; then
			echo "release-check: '$native version' does not report $want; check the -X flags in $config:" >&2
			echo "$reported" >&2
			exit 1
		fi
	done
fi

if command -v goreleaser >/dev/null; then
	goreleaser check --config "$config"
else
	echo "release-check: goreleaser is not installed; its own check of $config did not run"
fi
echo "release-check: $(wc -w <<<"$goos") systems x $(wc -w <<<"$goarch") architectures built in $out"
