#!/usr/bin/env bash
# Install the Debian packages that the tests and the demo need, when they are missing.
# They are nginx, the proxy under test, and the docker client, for the CLI plugin tests,
# which use no daemon. Needs root or sudo, and runs apt-get only when something is missing.
set -euo pipefail

missing=()
command -v nginx >/dev/null || [ -x /usr/sbin/nginx ] || missing+=(nginx)
command -v docker >/dev/null || missing+=(docker.io)
[ ${#missing[@]} -eq 0 ] && exit 0

if ! command -v apt-get >/dev/null; then
	echo "missing: ${missing[*]}; install them with your package manager" >&2
	exit 1
fi
sudo=""
if [ "$(id -u)" -ne 0 ]; then
	if ! command -v sudo >/dev/null; then
		echo "missing: ${missing[*]}; run this script as root to install them" >&2
		exit 1
	fi
	sudo="sudo"
fi

echo "installing: ${missing[*]}"
# Keep the packages' scripts from starting services (nginx on port 80, dockerd): the
# tests and the demo start their own nginx on loopback.
policy=/usr/sbin/policy-rc.d
if [ ! -e "$policy" ]; then
	printf '#!/bin/sh\nexit 101\n' | $sudo tee "$policy" >/dev/null
	$sudo chmod +x "$policy"
	trap '$sudo rm -f "$policy"' EXIT
fi
$sudo apt-get update -qq
$sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}"
