#!/usr/bin/env bash
# Builds the project's guest kernel modules out of tree against the Debian
# headers of exactly the lab's kernel, and caches them.
#
# Usage: guest-kernel-patches/build.sh KERNEL CACHE_DIR MODULE...
#   KERNEL     the kernel package (linux-image-6.12.117+deb12-amd64) or its
#              release (6.12.117+deb12-amd64); the lab passes its KPKG
#   CACHE_DIR  where built modules are kept
#   MODULE     a directory name under guest-kernel-patches/modules/
# Prints the path of each built .ko, one per line (messages go to stderr).
# A module is rebuilt only when its sources, this script or the kernel
# release change: the cache name is <module>-<release>-<hash>.ko.
set -euo pipefail
HERE=$(cd "$(dirname "$0")" && pwd)
say() { echo "guest-kernel-patches: $*" >&2; }
die() { say "error: $*"; exit 1; }

[ $# -ge 3 ] || die "usage: $0 KERNEL CACHE_DIR MODULE..."
KREL=${1#linux-image-}
CACHE=$2
shift 2
HDRPKG=linux-headers-$KREL
HDR=/usr/src/$HDRPKG

# The headers of exactly this release (they pull linux-kbuild and the
# common headers; apt-get also installs the matching linux-image package,
# which is harmless here).
ensure_headers() {
  [ -f "$HDR/Makefile" ] && return 0
  say "installing $HDRPKG"
  local apt=(apt-get -o DPkg::Lock::Timeout=600)
  [ "$(id -u)" = 0 ] || apt=(sudo "${apt[@]}")
  if ! DEBIAN_FRONTEND=noninteractive "${apt[@]}" install -y -qq --no-install-recommends "$HDRPKG" >&2; then
    "${apt[@]}" update -qq >&2 || die "apt-get update failed"
    DEBIAN_FRONTEND=noninteractive "${apt[@]}" install -y -qq --no-install-recommends "$HDRPKG" >&2 \
      || die "apt-get install $HDRPKG failed"
  fi
  [ -f "$HDR/Makefile" ] || die "$HDRPKG installed but $HDR/Makefile is missing"
}

mkdir -p "$CACHE"
for mod in "$@"; do
  src="$HERE/modules/$mod"
  [ -d "$src" ] || die "no module $mod in $HERE/modules"
  key=$( (cd "$src" && find . -type f | LC_ALL=C sort | xargs sha256sum; sha256sum < "$HERE/build.sh"; echo "$KREL") | sha256sum | cut -c1-12)
  out="$CACHE/$mod-$KREL-$key.ko"
  if [ ! -f "$out" ]; then
    ensure_headers
    say "building $mod for $KREL"
    tmp=$(mktemp -d)
    trap 'rm -rf "$tmp"' EXIT
    cp -r "$src/." "$tmp/"
    make -s -C "$HDR" M="$tmp" modules >&2 || die "building $mod failed"
    ko=$(find "$tmp" -maxdepth 1 -name '*.ko' | head -1)
    [ -n "$ko" ] || die "no .ko from $mod"
    magic=$(modinfo -F vermagic "$ko" 2>/dev/null | cut -d' ' -f1)
    [ -z "$magic" ] || [ "$magic" = "$KREL" ] || die "$mod: vermagic $magic is not $KREL"
    cp "$ko" "$out.tmp" && mv "$out.tmp" "$out"
    rm -rf "$tmp"
    trap - EXIT
  fi
  echo "$out"
done
