# Lab assets: Debian packages, the 6.12 kernel package, the L1 and L2
# initramfs images. Sourced by lab/run; everything lands in $LAB_CACHE and
# is rebuilt only when its key (package version + script hash) changes.

log() { echo "lab: $*" >&2; }
die() { echo "lab: error: $*" >&2; exit 1; }

LAB_BUILT=""  # what this run had to (re)build; empty = all cached

sudo_if() { if [ "$(id -u)" = 0 ]; then "$@"; elif command -v sudo >/dev/null; then sudo "$@"; else "$@"; fi; }

# Installs missing Debian packages.
lab_packages() {
  local need=()
  # redis-tools: redis-benchmark for L1 and the server binary for L2
  # (redis-check-rdb is redis-server under another name; no service).
  # jq: the one JSON reader, here (result.json) and in L1 (iovmm's stats).
  # memcached, nginx-light, iperf3: L2's servers of lab/run bench;
  # libmemcached-tools (memcaslap), wrk, iperf3: its load in L1.
  for p in qemu-system-x86 busybox-static cpio xz-utils zstd iproute2 gzip coreutils redis-tools jq \
      memcached nginx-light iperf3 libmemcached-tools wrk; do
    dpkg -s "$p" >/dev/null 2>&1 || need+=("$p")
  done
  if [ ${#need[@]} -gt 0 ]; then
    log "installing ${need[*]}"; LAB_BUILT="$LAB_BUILT packages"
    sudo_if apt-get update -qq >/dev/null || die "apt-get update failed"
    sudo_if env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null \
      || die "apt-get install ${need[*]} failed"
    # The packages start their services; the lab only runs the binaries.
    for p in nginx memcached; do sudo_if service "$p" stop >/dev/null 2>&1; done
  fi
}

# Downloads and unpacks linux-image-6.12-amd64 into $LAB_CACHE/kernel-<ver>;
# sets KVER (package name) and KDIR.
lab_kernel() {
  KPKG=$(apt-cache depends linux-image-6.12-amd64 2>/dev/null | awk '/Depends: linux-image-6\.12/{print $2; exit}')
  if [ -z "$KPKG" ]; then
    sudo_if apt-get update -qq >/dev/null
    KPKG=$(apt-cache depends linux-image-6.12-amd64 2>/dev/null | awk '/Depends: linux-image-6\.12/{print $2; exit}')
  fi
  [ -n "$KPKG" ] || die "cannot find the linux-image-6.12-amd64 package (is bookworm-security in the apt sources?)"
  KDIR="$LAB_CACHE/$KPKG"
  if [ ! -f "$KDIR/.done" ]; then
    log "downloading $KPKG"; LAB_BUILT="$LAB_BUILT kernel"
    rm -rf "$KDIR"; mkdir -p "$KDIR"
    (cd "$KDIR" && apt-get download -qq "$KPKG" >/dev/null 2>&1) || die "apt-get download $KPKG failed"
    dpkg -x "$KDIR"/*.deb "$KDIR/root" || die "dpkg -x failed"
    rm -f "$KDIR"/*.deb
    touch "$KDIR/.done"
  fi
  BZIMAGE=$(echo "$KDIR"/root/boot/vmlinuz-*)
  [ -f "$BZIMAGE" ] || die "no vmlinuz in $KDIR"
  # Stable paths used by examples/*.toml.
  mkdir -p "$LAB_CACHE/kernel"
  ln -sf "$BZIMAGE" "$LAB_CACHE/kernel/bzImage"
}

# Copies module $1 (decompressed) into the image root $2.
lab_module() {
  local f
  f=$(find "$KDIR"/root/lib/modules/*/kernel -name "$1.ko.xz" | head -1)
  [ -n "$f" ] || die "module $1 not found in $KPKG"
  mkdir -p "$2/lib/modules"
  xz -dc "$f" > "$2/lib/modules/$1.ko"
}

# Builds a busybox initramfs from root dir $1 into $2.
lab_cpio() {
  mkdir -p "$1/bin" "$1/proc" "$1/sys" "$1/dev" "$1/tmp"
  cp /bin/busybox "$1/bin/busybox"
  (cd "$1" && find . | cpio -o -H newc 2>/dev/null | gzip -1 > "$2.tmp") && mv "$2.tmp" "$2"
}

L1_MODULES="irqbypass kvm ccp kvm-amd netfs 9pnet 9pnet_virtio 9p tun vfio vfio_iommu_type1 vfio-pci-core vfio-pci e1000e"

# Builds the L1 image (generic) and the L2 image of the resolved scenario
# (lab/lib/table.sh: S_base, S_l2_modules, S_l2_files, S_l2_bins).
lab_images() {
  local key l1 l2 m
  key=$(cat "$LAB_DIR"/lib/* | sha256sum | cut -c1-12)
  l1="$LAB_CACHE/l1-$KPKG-$key.cpio.gz"
  if [ ! -f "$l1" ]; then
    log "building L1 initramfs"; LAB_BUILT="$LAB_BUILT l1-image"
    rm -rf "$LAB_CACHE/l1root"; mkdir -p "$LAB_CACHE/l1root"
    for m in $L1_MODULES; do lab_module "$m" "$LAB_CACHE/l1root"; done
    cp "$LAB_DIR/lib/l1-init" "$LAB_CACHE/l1root/init"; chmod +x "$LAB_CACHE/l1root/init"
    lab_cpio "$LAB_CACHE/l1root" "$l1"
  fi
  L1_IMAGE=$l1
  # The key: the lab scripts, the scenario's environment and the extra
  # files' contents (a rebuilt out-of-tree module makes a new image).
  key=$({ cat "$LAB_DIR"/lib/*; lab_env; echo "$S_l2_files $S_l2_bins"; lab_files_key; } | sha256sum | cut -c1-12)
  l2="$LAB_CACHE/l2-$S_base-$KPKG-$key.cpio.gz"
  if [ ! -f "$l2" ]; then
    log "building L2 initramfs for $S_base"; LAB_BUILT="$LAB_BUILT l2-image"
    rm -rf "$LAB_CACHE/l2root"; mkdir -p "$LAB_CACHE/l2root/lib/lab"
    for m in $(lab_expand "$S_l2_modules"); do
      # Modules the scenario brings itself (l2_files) are not in the kernel package.
      [ -f "$LAB_CACHE/l2root/lib/modules/$m.ko" ] || [[ ",$S_l2_files," == *":/lib/modules/$m.ko,"* ]] \
        || lab_module "$m" "$LAB_CACHE/l2root"
    done
    cp "$LAB_DIR/lib/l2-init" "$LAB_CACHE/l2root/init"; chmod +x "$LAB_CACHE/l2root/init"
    cp "$LAB_DIR"/lib/l2-*.sh "$LAB_CACHE/l2root/lib/lab/"
    lab_env > "$LAB_CACHE/l2root/scenario.env"
    lab_files "$S_l2_files" "$LAB_CACHE/l2root"
    lab_files "$S_l2_bins" "$LAB_CACHE/l2root" bin
    lab_cpio "$LAB_CACHE/l2root" "$l2"
  fi
  L2_IMAGE=$l2
  mkdir -p "$LAB_CACHE/initramfs"
  ln -sf "$l2" "$LAB_CACHE/initramfs/initramfs.cpio.gz"
}

# Copies executable $1 and the shared libraries it links into root dir $2
# (same paths), so L1 can run it without the build machine's filesystem.
lab_copy_binary() {
  local f
  mkdir -p "$2$(dirname "$3")"; cp "$1" "$2$3"
  for f in $(ldd "$1" | grep -o '/[^ ]*'); do
    mkdir -p "$2$(dirname "$f")"; cp -L "$f" "$2$f"
  done
}

# Builds this run's L1 initrd: the cached L1 image followed by an
# uncompressed cpio with what the scenario needs (L2 kernel and image,
# the L1 scripts and the scenario's environment, iovmm, ip and jq with
# their libraries, the scenario's l1_bins). Linux unpacks concatenated
# archives, so L1 needs no 9p for iovmm scenarios.
# $1 = scenario name, $2 = iovmm binary (may be empty), $3 = output dir.
lab_stage() {
  local root="$3/stage-root"
  rm -rf "$root"; mkdir -p "$root/stage/lib"
  cp "$BZIMAGE" "$root/stage/bzImage"
  cp "$L2_IMAGE" "$root/stage/l2.cpio.gz"
  lab_env > "$root/stage/scenario.env"
  cp "$LAB_DIR"/lib/l1-*.sh "$root/stage/lib/"
  if [ -n "$2" ]; then
    lab_copy_binary "$2" "$root" /stage/iovmm
    strip --strip-debug "$root/stage/iovmm" 2>/dev/null || true  # smaller initrd; symbols stay
  fi
  lab_copy_binary "$(command -v ip)" "$root" /sbin/ip.full
  lab_copy_binary "$(command -v jq)" "$root" /sbin/jq
  lab_files "$S_l1_bins" "$root" bin
  (cd "$root" && find . | cpio -o -H newc 2>/dev/null) > "$3/stage.cpio" || die "cannot build the stage archive"
  # The kernel finds an uncompressed archive only at a 4-byte aligned
  # offset; zeros between archives are skipped.
  local pad=$(( (4 - $(stat -c %s "$L1_IMAGE") % 4) % 4 ))
  { cat "$L1_IMAGE"; head -c "$pad" /dev/zero; cat "$3/stage.cpio"; } > "$3/l1-initrd.img"
  rm -rf "$root" "$3/stage.cpio"
  L1_INITRD="$3/l1-initrd.img"
}
