#!/usr/bin/env bash
# Build the vcsim simulator from Debian's govmomi source, offline, once; cached in .cache/vcsim/vcsim.
# Usage: tests/vcsim/build.sh [OUT]   (prints the binary's path)
# Needs: apt-get install golang-go golang-github-vmware-govmomi-dev   (scripts/setup.sh installs them)
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"
out="${1:-$root/.cache/vcsim/vcsim}"
src="$here/main.go"
if [ -x "$out" ] && [ "$out" -nt "$src" ]; then
  echo "$out"; exit 0
fi
command -v go >/dev/null || { echo "go is not installed (apt-get install golang-go)" >&2; exit 3; }
[ -d /usr/share/gocode/src/github.com/vmware/govmomi/simulator ] || {
  echo "govmomi source is not installed (apt-get install golang-github-vmware-govmomi-dev)" >&2; exit 3; }
cache="$(dirname "$out")"
mkdir -p "$cache/gopath/src/lifeboat-vcsim" "$cache/gocache"
cp "$src" "$cache/gopath/src/lifeboat-vcsim/main.go"
# GOPATH mode against the Debian source tree: no module download, no network.
( cd "$cache/gopath/src/lifeboat-vcsim" &&
  GOPATH="$cache/gopath:/usr/share/gocode" GO111MODULE=off GOPROXY=off CGO_ENABLED=0 \
  GOCACHE="$cache/gocache" go build -o "$out.tmp" . )
mv "$out.tmp" "$out"
echo "$out"
