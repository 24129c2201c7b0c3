#!/usr/bin/env bash
# Builds the project's guest kernel modules out of tree against the Debian
# headers of exactly the lab's kernel, and caches them.
#
# Usage: guest-kernel-patches/build.sh KERNEL CACHE_DIR MODULE...
#   KERNEL     the kernel package (linux-image-6.12.117+deb12-amd64) or its
#              release (6.12.117+deb12-amd64); the lab passes its KPKG
#   CACHE_DIR  where built modules are kept
#   MODULE     a directory name under guest-kernel-patches/modules/
#              (one with a kernel-source file is made from Debian's
#              linux-source package of the kernel's version, patched;
#              LINUX_SOURCE_DEB=path.deb uses a local copy of it)
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

# ks_words MODDIR KIND: the words of the kernel-source lines of KIND.
ks_words() { awk -v k="$2" '$1 == k { print $2 }' "$1/kernel-source"; }

# kernel_files MODDIR DEST: the module's kernel-source files, extracted
# once per kernel version into $CACHE/linux-source-<version>/, patched in
# a copy and copied flat into DEST.
kernel_files() {
  local moddir=$1 dest=$2 ver series srcdir deb f p work missing=""
  ensure_headers
  ver=$(dpkg-query -W -f='${Version}' "$HDRPKG") || die "no version for $HDRPKG"
  series=$(echo "$KREL" | cut -d. -f1,2)
  srcdir="$CACHE/linux-source-$ver"
  for f in $(ks_words "$moddir" file); do [ -f "$srcdir/$f" ] || missing="$missing $f"; done
  if [ -n "$missing" ]; then
    deb=${LINUX_SOURCE_DEB:-}
    if [ -z "$deb" ]; then
      say "downloading linux-source-$series $ver (~150 MB, once per kernel version)"
      mkdir -p "$CACHE/dl"
      (cd "$CACHE/dl" && apt-get download -qq "linux-source-$series=$ver" >&2) \
        || die "apt-get download linux-source-$series=$ver failed (is bookworm-security in the apt sources?)"
      deb=$(ls "$CACHE"/dl/linux-source-"$series"_*.deb | head -1)
    fi
    [ "$(dpkg-deb -f "$deb" Version)" = "$ver" ] || die "$deb is not linux-source-$series $ver"
    say "extracting$missing"
    mkdir -p "$srcdir.tmp"
    dpkg-deb --fsys-tarfile "$deb" | tar -xO "./usr/src/linux-source-$series.tar.xz" \
      | tar -xJ -C "$srcdir.tmp" --strip-components=1 $(for f in $(ks_words "$moddir" file); do echo "linux-source-$series/$f"; done) \
      || die "extracting the sources from $deb failed"
    mkdir -p "$srcdir" && cp -r "$srcdir.tmp/." "$srcdir/" && rm -rf "$srcdir.tmp" "$CACHE/dl"
  fi
  work=$(mktemp -d)
  cp -r "$srcdir/." "$work/"
  for p in $(ks_words "$moddir" patch); do
    patch -s -p1 -d "$work" < "$HERE/patches/$p" >&2 || { rm -rf "$work"; die "patch $p does not apply to linux-source-$series $ver"; }
  done
  for f in $(ks_words "$moddir" file); do cp "$work/$f" "$dest/"; done
  rm -rf "$work"
}

mkdir -p "$CACHE"
for mod in "$@"; do
  src="$HERE/modules/$mod"
  [ -d "$src" ] || die "no module $mod in $HERE/modules"
  patches=""
  [ -f "$src/kernel-source" ] && patches=$(for p in $(ks_words "$src" patch); do echo "$HERE/patches/$p"; done)
  key=$( (cd "$src" && find . -type f | LC_ALL=C sort | xargs sha256sum; [ -z "$patches" ] || cat $patches; sha256sum < "$HERE/build.sh"; echo "$KREL") | sha256sum | cut -c1-12)
  out="$CACHE/$mod-$KREL-$key.ko"
  if [ ! -f "$out" ]; then
    ensure_headers
    say "building $mod for $KREL"
    tmp=$(mktemp -d)
    trap 'rm -rf "$tmp"' EXIT
    cp -r "$src/." "$tmp/"
    [ -f "$src/kernel-source" ] && kernel_files "$src" "$tmp"
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
