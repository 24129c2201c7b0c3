# The lab's scenarios: one `scenario` entry each (sourced by lab/run
# through lab/lib/table.sh; the fields are described in lab/README.md,
# "Scenarios as data"). An entry is
#   scenario NAME key=value ...
# where a list value is comma-separated and may name a group (`@name`),
# defined once by
#   group @name item ...
# In a check name, `#` stands for the round: `-1`, `-2`, ... when the entry
# has `rounds=`, nothing otherwise.

# L2 kernel modules (loaded in this order; virtio-iommu is skipped when
# the run's mode is off).
group @virtio-devs  failover net_failover virtio_net virtio_blk
group @viommu-devs  virtio-iommu @virtio-devs
group @vfio-devs    virtio-iommu e1000e

# Checks.
group @boot    cpus blk-read net-ping net-l1-to-l2 net-l2-to-l1 vmm-exit blk-write
group @viommu  viommu-bound group-type blk-read net-ping net-l1-to-l2 net-l2-to-l1-data blk-write vmm-exit stats-shape kvm-exits
group @vfio-l1 vfio-bind vfio-errors
group @vfio    link-up# group-type# net-ping# net-l1-to-l2# net-l2-to-l1# vmm-exit# stats-shape#
group @poll    poll-notify# poll-idle#
group @spec    spec-attach-reserved spec-unmap-reserved spec-map-msi spec-truncated spec-empty spec-no-request spec-no-status spec-alive
group @broken  broken-needs-reset broken-config-irq broken-no-spin broken-recover

# boot: L2 with virtio-blk and virtio-net on tap0, no virtual IOMMU.
scenario boot prep=tap work=boot modes=off npt=1 \
  l2_modules=@virtio-devs checks=@boot

# viommu-<mode>: disk and NIC behind iovmm's virtio-iommu. npt=0: L1's
# KVM shadows L2's page tables (docs/viommu.md, "Reliability").
scenario viommu-passthrough prep=tap work=viommu modes=passthrough npt=0 \
  l2_modules=@viommu-devs checks=@viommu
scenario viommu-strict prep=tap work=viommu modes=strict npt=0 \
  l2_modules=@viommu-devs checks=@viommu
scenario viommu-lazy prep=tap work=viommu modes=lazy npt=0 \
  l2_modules=@viommu-devs checks=@viommu
scenario viommu-poll prep=tap work=viommu modes=strict+poll npt=0 \
  l2_modules=@viommu-devs checks=@viommu,@poll
# viommu-coop: the same under cooperative mode, L2 with the patched
# virtio-iommu driver (guest-kernel-patches): virtio-net and virtio-blk
# DMA through the tracking table, iovmm's emulated devices held to the
# pinned set.
scenario viommu-coop prep=tap work=viommu modes=coop npt=0 \
  prebuild='ko=$(guest-kernel-patches/build.sh "$KPKG" "$LAB_CACHE/guest-modules" virtio_iommu_coop) && cp "$ko" "$LAB_CACHE/guest-modules/virtio-iommu-coop.ko"' \
  l2_files="$LAB_CACHE/guest-modules/virtio-iommu-coop.ko:/lib/modules/virtio-iommu-coop.ko" \
  l2_modules=@viommu-devs checks=@viommu

# vfio-<mode>: L1's second e1000e bound to vfio-pci and assigned to L2,
# twice per L1 boot (the second round proves the teardown).
scenario vfio-off prep=vfio work=vfio modes=off rounds=1,2 npt=0 \
  l2_modules=@vfio-devs checks=@vfio-l1,@vfio
scenario vfio-strict prep=vfio work=vfio modes=strict rounds=1,2 npt=0 \
  l2_modules=@vfio-devs checks=@vfio-l1,@vfio
scenario vfio-lazy prep=vfio work=vfio modes=lazy rounds=1,2 npt=0 \
  l2_modules=@vfio-devs checks=@vfio-l1,@vfio
scenario vfio-passthrough prep=vfio work=vfio modes=passthrough rounds=1,2 npt=0 \
  l2_modules=@vfio-devs checks=@vfio-l1,@vfio
scenario vfio-poll prep=vfio work=vfio modes=strict+poll rounds=1 npt=0 \
  l2_modules=@vfio-devs checks=@vfio-l1,@vfio,@poll

# coop: cooperative mode (docs/coop.md) on the assigned e1000e. L2 loads
# the project's patched virtio-iommu driver in place of the stock one
# (guest-kernel-patches/patches/virtio-iommu-coop.patch, built for the
# lab kernel and cached) and dma_flood for the budget check. One L1 boot:
# off (exits per packet to compare with), strict (the patched driver on a
# device without the feature: stock behaviour), then coop with its
# default pin granule (256 KiB), every goal gated (lab/lib/l1-coop.sh).
group @coop-files $LAB_CACHE/guest-modules/virtio-iommu-coop.ko:/lib/modules/virtio-iommu.ko $LAB_CACHE/guest-modules/dma_flood.ko:/lib/modules/dma_flood.ko
group @coop coop-registered# coop-peak# coop-steady# coop-idle# coop-exits# coop-budget# net-ping-after-flood
scenario coop prep=vfio work=vfio modes=off,strict,coop rounds=1 npt=0 timeout=2400 \
  prebuild='ko=$(guest-kernel-patches/build.sh "$KPKG" "$LAB_CACHE/guest-modules" virtio_iommu_coop) && cp "$ko" "$LAB_CACHE/guest-modules/virtio-iommu-coop.ko" && ko=$(guest-kernel-patches/build.sh "$KPKG" "$LAB_CACHE/guest-modules" dma_flood) && cp "$ko" "$LAB_CACHE/guest-modules/dma_flood.ko"' \
  l2_modules=@vfio-devs l2_files=@coop-files \
  checks=@vfio-l1,@vfio,@coop

# coop-granules: the coop scenario's measurements at pin granules from 4
# KiB to 2 MiB (mode items coop:G: --coop-granule G, check names end in
# -G), nothing gated but the transfers (COOP_MEASURED=all): the
# trade-off that chose the default (docs/coop.md, "Status"). Not in CI.
group @coop-4K coop-registered-4K# coop-peak-4K# coop-steady-4K# coop-idle-4K# coop-exits-4K# coop-budget-4K#
group @coop-16K coop-registered-16K# coop-peak-16K# coop-steady-16K# coop-idle-16K# coop-exits-16K# coop-budget-16K#
group @coop-64K coop-registered-64K# coop-peak-64K# coop-steady-64K# coop-idle-64K# coop-exits-64K# coop-budget-64K#
group @coop-256K coop-registered-256K# coop-peak-256K# coop-steady-256K# coop-idle-256K# coop-exits-256K# coop-budget-256K#
group @coop-2M coop-registered-2M# coop-peak-2M# coop-steady-2M# coop-idle-2M# coop-exits-2M# coop-budget-2M#
scenario coop-granules alias=coop modes=off,coop:4K,coop:16K,coop:64K,coop:256K,coop:2M timeout=3000 \
  env=COOP_MEASURED=all \
  checks=@vfio-l1,@vfio,@coop-4K,@coop-16K,@coop-64K,@coop-256K,@coop-2M,net-ping-after-flood

# coop-start: CoIOMMU's headline, a 4 GiB L2 with the assigned e1000e:
# off pins and maps all of its RAM before the first instruction, coop
# pins on first use. Start time (VMM start to the NIC up) and pinned
# memory, off then coop (lab/lib/l1-start.sh). L2's RAM is anonymous
# memory in an L1 of 7 GiB. Not in CI: it measures, and off's pinning
# of 4 GiB under the emulator takes minutes.
scenario coop-start prep=vfio work=start modes=off,coop npt=0 backing=anonymous l1_mem=7168 timeout=2400 l2_timeout=1200 \
  env=L2_MEM=4G,STALL_BOOT=900 \
  prebuild='ko=$(guest-kernel-patches/build.sh "$KPKG" "$LAB_CACHE/guest-modules" virtio_iommu_coop) && cp "$ko" "$LAB_CACHE/guest-modules/virtio-iommu-coop.ko"' \
  l2_modules=@vfio-devs l2_files="$LAB_CACHE/guest-modules/virtio-iommu-coop.ko:/lib/modules/virtio-iommu.ko" \
  checks=@vfio-l1,link-up,net-ping,vmm-exit,start-pinned,start-time

# viommu-hostile: the project's guest module viommu_test drives the
# virtual IOMMU in place of the stock driver (not in the image): request
# rates, the spec probes, a broken ring. The virtio-net is only the
# endpoint. The module is built for the lab kernel and cached
# (guest-kernel-patches/build.sh). One L2 vCPU: the flood busy-waits on it,
# and L1's other vCPU serves it: the vCPU thread runs on L1's CPU 0 and
# every other VMM thread on CPU 1 (PLACE, lab/lib/l1-vm.sh). L2's RAM is
# anonymous memory in L1, as QEMU's is: on hugetlbfs L2 itself runs ~1.5x
# slower under the emulator (lab/README.md, LAB_L2_BACKING).
scenario viommu-hostile prep=tap work=hostile modes=strict vcpus=1 npt=1 backing=anonymous timeout=1200 l2_timeout=400 env=PLACE=0:1 \
  prebuild='ko=$(guest-kernel-patches/build.sh "$KPKG" "$LAB_CACHE/guest-modules" viommu_test) && cp "$ko" "$LAB_CACHE/guest-modules/viommu_test.ko"' \
  l2_modules=viommu_test l2_files="$LAB_CACHE/guest-modules/viommu_test.ko:/lib/modules/viommu_test.ko" \
  checks=vt-bound,flood-batched,flood-single,@spec,@broken,vmm-exit

# protect: the protection proof (docs/protection.md). L1 gets QEMU's edu
# (prep=edu: bound to vfio-pci, assigned to L2); L2 gets it and a
# virtio-blk behind iovmm's virtio-iommu, and the project's modules
# edu_dma and vblk_dma make each DMA into a page, unmap it and DMA to the
# stale address again, once per mode in one L1 boot; coop (L2 loads the
# patched virtio-iommu driver in that mode) adds a never-mapped page and
# the stale DMA after the host's unpin. protect-ci: strict, lazy and coop
# (CI).
group @protect-mods virtio-iommu edu_dma vblk_dma
group @protect-l2   edu-bind edu-bound vmm-exit
scenario protect prep=edu work=protect modes=strict,lazy,coop,passthrough,off npt=0 timeout=3000 l2_timeout=900 \
  prebuild='for m in edu_dma vblk_dma virtio_iommu_coop; do ko=$(guest-kernel-patches/build.sh "$KPKG" "$LAB_CACHE/guest-modules" $m) && cp "$ko" "$LAB_CACHE/guest-modules/$m.ko" || exit 1; done' \
  l2_modules=@protect-mods \
  l2_files="$LAB_CACHE/guest-modules/edu_dma.ko:/lib/modules/edu_dma.ko,$LAB_CACHE/guest-modules/vblk_dma.ko:/lib/modules/vblk_dma.ko,$LAB_CACHE/guest-modules/virtio_iommu_coop.ko:/lib/modules/virtio-iommu-coop.ko" \
  checks=@protect-l2,protect-strict-edu,protect-strict-virtio,protect-lazy-window,protect-lazy-virtio-window,protect-coop,protect-coop-virtio,protect-passthrough,protect-off
scenario protect-ci alias=protect modes=strict,lazy,coop timeout=2000 \
  checks=@protect-l2,protect-strict-edu,protect-strict-virtio,protect-lazy-window,protect-lazy-virtio-window,protect-coop,protect-coop-virtio

# modes (`lab/run demo`): the viommu workload under every policy in one
# L1 boot, one LAB-ROW line per L2 run.
scenario modes prep=tap work=viommu modes=off,passthrough,lazy,strict,strict+poll npt=0 \
  l2_modules=@viommu-devs checks=vmm-exit,net-l1-to-l2,blk-write,kvm-exits

# vfio-compare (`lab/run poll`): TCP, then Redis served by L2 to
# redis-benchmark in L1, over the assigned NIC, notified and polled.
scenario vfio-compare prep=vfio work=vfio modes=off,strict,strict+poll,lazy,lazy+poll rounds=1 npt=0 \
  l2_modules=@vfio-devs env=REDIS=1 \
  l2_bins=/usr/bin/redis-check-rdb:/bin/redis-server l1_bins=/usr/bin/redis-benchmark:/sbin/redis-benchmark \
  checks=@vfio-l1,link-up#,net-l1-to-l2#,net-l2-to-l1#,vmm-exit#

# Aliases: another name for a scenario with some fields changed (the
# output goes to lab/.out/<alias>). L2 gets one vCPU in the tables so that
# L1's second vCPU is left for the poll thread (docs/performance.md).
scenario demo alias=modes display=table mib=8 vcpus=1 timeout=2400 \
  what="L2 with virtio-net and virtio-blk, MIB MiB each way"
scenario poll alias=vfio-compare display=table mib=8 vcpus=1 timeout=3600 \
  what="L2 with the assigned e1000e (VFIO): TCP MIB MiB each way, then redis-benchmark SET/GET from L1"
scenario console alias=boot display=console
# The hostile workload with the request queue polled (adaptive).
scenario viommu-hostile-poll alias=viommu-hostile modes=strict+poll

# bench (issue 10): the application benchmark. One L1 boot, the assigned
# e1000e (prep=vfio); the cells are the mode items (VMM/MODE) x the
# items of BENCH_ITEMS (Redis SET/GET 64 B and 1 KiB, Memcached, nginx 4
# KiB and 64 KiB, iperf3 both ways) x reps (LAB_BENCH_REPS, default 3),
# interleaved: each repetition goes round every mode item before the
# next; one L2 boot per (VMM, mode, repetition) runs every item. One L2
# vCPU on L1's CPU 0, the VMM's other threads on CPU 1 (PLACE), L2's RAM
# anonymous. iovmm/coop: L2 loads the patched virtio-iommu driver
# (guest-kernel-patches, virtio-iommu-coop.ko) in that mode only; the
# other modes keep the stock one. Output: lab/.out/bench/
# (iovmm-bench-report).
group @bench-l2bins /usr/bin/redis-check-rdb:/bin/redis-server /usr/bin/memcached:/bin/memcached /usr/sbin/nginx:/bin/nginx /usr/bin/iperf3:/bin/iperf3
group @bench-l1bins /usr/bin/redis-benchmark:/sbin/redis-benchmark /usr/bin/memcaslap:/sbin/memcaslap /usr/bin/memcslap:/sbin/memcslap /usr/bin/wrk:/sbin/wrk /usr/bin/iperf3:/sbin/iperf3
scenario bench prep=vfio work=bench reps=3 npt=0 vcpus=1 backing=anonymous display=table timeout=6600 l2_timeout=900 \
  modes=iovmm/off,iovmm/passthrough,iovmm/coop,iovmm/lazy,iovmm/strict,iovmm/strict+poll,qemu/off,qemu/strict \
  env=PLACE=0:1,BENCH_SECS=5,BENCH_REDIS_N=2000 \
  prebuild='ko=$(guest-kernel-patches/build.sh "$KPKG" "$LAB_CACHE/guest-modules" virtio_iommu_coop) && cp "$ko" "$LAB_CACHE/guest-modules/virtio-iommu-coop.ko"' \
  l2_files="$LAB_CACHE/guest-modules/virtio-iommu-coop.ko:/lib/modules/virtio-iommu-coop.ko" \
  l2_modules=@vfio-devs l2_bins=@bench-l2bins l1_bins=@bench-l1bins \
  checks=vfio-bind,vfio-errors,bench-complete what="L2 with the assigned e1000e (VFIO): Redis, Memcached, nginx, iperf3 from L1"
# bench-coop: the bench's comparison for cooperative mode (issue 11's
# goal: coop >= 0.95x passthrough on every workload): iovmm off,
# passthrough and coop only, 3 interleaved repetitions. Not in CI.
scenario bench-coop alias=bench modes=iovmm/off,iovmm/passthrough,iovmm/coop timeout=3600
# bench-coop-5: bench-coop's three workloads below 0.95x (nginx 4 KiB and
# 64 KiB, iperf3 L1->L2) again with 5 repetitions. Not in CI.
scenario bench-coop-5 alias=bench modes=iovmm/off,iovmm/passthrough,iovmm/coop reps=5 timeout=3600 \
  env=PLACE=0:1,BENCH_SECS=5,BENCH_REDIS_N=2000,BENCH_ITEMS=nginx-4k+nginx-64k+iperf3-tx
# bench-smoke: one short cell per workload, iovmm strict only; checks
# that each workload gave numbers and the counters have the expected shape.
scenario bench-smoke alias=bench reps=1 modes=iovmm/strict timeout=1800 l2_timeout=600 \
  env=PLACE=0:1,BENCH_SECS=2,BENCH_REDIS_N=300,BENCH_ITEMS=redis-set-64+memcached-64+nginx-4k+iperf3-tx,BENCH_CHECKS=1 \
  checks=vfio-bind,vfio-errors,bench-complete,bench-redis,bench-memcached,bench-nginx,bench-iperf3,bench-stats-shape,kvm-exits,vmm-exit
