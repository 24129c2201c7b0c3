# L1 helpers for what a run measures: iovmm's stats (jq), the counters
# sampled at L2's marks, the LAB-ROW line of the per-mode tables, and the
# poll scenarios' checks.

# jv FILTER: one value of iovmm's stats (/tmp/stats.json), e.g.
# `jv .viommu.requests.map`; empty when the file or the value is missing.
jv() { jq -r "($1) // empty" /tmp/stats.json 2>/dev/null; }
# jn FILTER: the same as a number, 0 when missing.
jn() { local v; v=$(jv "$1"); echo "${v:-0}"; }

# The counters the sampler (l1-vm.sh) records at every "LAB-L2 mark NAME":
# L1's KVM exit count, the packets of L1's interface $SAMPLE_IF, the CPU
# ticks (1/100 s) of iovmm's virtio-iommu thread (poll_ticks: 0 under
# QEMU), and those of where each VMM serves the virtio-iommu (dev_ticks:
# iovmm's virtio-iommu thread; QEMU's whole process, because QEMU 7.2
# serves the request queue in the vCPU thread that wrote the notification
# (its main loop stays idle during a flood), and its threads have no names
# to tell them apart).
kvm_exits() { cat /sys/kernel/debug/kvm/exits 2>/dev/null || echo 0; }
if_packets() {
  [ -n "$1" ] && [ -e "/sys/class/net/$1" ] || { echo 0; return; }
  echo $(( $(cat /sys/class/net/$1/statistics/rx_packets) + $(cat /sys/class/net/$1/statistics/tx_packets) ))
}
# ticks_of STAT: user + system CPU ticks (1/100 s) from a /proc stat
# file; fields counted after the name's closing parenthesis, because a
# name may hold spaces (QEMU's "CPU 0/KVM").
ticks_of() { sed 's/.*) //' "$1" 2>/dev/null | awk '{ t = $12 + $13 } END { print t + 0 }'; }
poll_ticks() {
  # The newest thread of that name: a device reset starts a new worker,
  # and the old one may still be exiting.
  local th n=0 v=0 t
  for th in /proc/$1/task/*; do
    [ "$(cat $th/comm 2>/dev/null)" = virtio-iommu ] && [ "${th##*/}" -gt "$n" ] || continue
    t=$(ticks_of $th/stat) && [ -n "$t" ] && { n=${th##*/}; v=$t; }
  done
  echo "$v"
}
# thread_cpus PID: where the VMM's vCPU and virtio-iommu threads run, as
# name@cpu/nonvoluntary-switches,... (a device thread sharing the busy vCPU's
# CPU preempts it on every request).
thread_cpus() {
  local th c out=""
  for th in /proc/$1/task/*; do
    c=$(cat $th/comm 2>/dev/null)
    case "$c" in vcpu*|virtio-iommu|qemu-system-x86|CPU*) ;; *) continue;; esac
    out="$out${out:+,}${c// /_}:${th##*/}:$(ticks_of $th/stat)@$(sed 's/.*) //' $th/stat | awk '{print $37}')/$(sed -n 's/^nonvoluntary_ctxt_switches:[[:space:]]*//p' $th/status)"
  done
  echo "$out"
}
dev_ticks() {
  if [ "$VMM" = qemu ]; then ticks_of /proc/$1/stat; else poll_ticks "$1"; fi
}
# coop_sample PID: in cooperative mode, iovmm's pin counters now (a
# SIGUSR1 snapshot of /tmp/stats.json) as sample fields: pins (COOP_PIN
# requests), registered (a table is), coop_vfio (host maps + unmaps of pins), pinned and peak
# (bytes), unpinned (chunks); nothing in other modes.
coop_sample() {
  [ "$VMM" = iovmm ] && [ "${MODE%%+*}" = coop ] || return 0
  local before i=0
  before=$(stat -c %Y.%s /tmp/stats.json 2>/dev/null)
  kill -USR1 "$1" 2>/dev/null || return 0
  while [ "$(stat -c %Y.%s /tmp/stats.json 2>/dev/null)" = "$before" ] && [ $i -lt 20 ]; do sleep 0.1; i=$((i + 1)); done
  jq -r '.viommu.coop // empty | " registered=\(.registered) pins=\(.pin_requests) coop_vfio=\(.host_maps + .host_unmaps) pinned=\(.pinned_bytes) peak=\(.pinned_peak_bytes) unpinned=\(.unpinned_chunks)"' /tmp/stats.json 2>/dev/null | tr -d '\n'
}

# sample_at MARK FIELD: FIELD at mark MARK.
sample_at() { awk -v m="$1" -v f="$2" '$1 == m { for (i = 2; i <= NF; i++) { split($i, kv, "="); if (kv[1] == f) print kv[2] } }' /tmp/samples.txt | tail -1; }

# sample_delta FROM TO FIELD: FIELD at mark TO minus at mark FROM.
sample_delta() {
  awk -v a="$1" -v b="$2" -v f="$3" '
    { for (i = 2; i <= NF; i++) { split($i, kv, "="); if (kv[1] == f) v[$1] = kv[2] } }
    END { if ((a in v) && (b in v)) print v[b] - v[a] }' /tmp/samples.txt
}

# The samples of one L2 run as row fields: KVM exits and packets of the
# transfer (marks net-start..net-end), exits per packet, and the share of
# a core the virtio-iommu thread used while L2 sat idle (idle-a..idle-b).
sample_fields() {
  local e p t s
  e=$(sample_delta net-start net-end exits); p=$(sample_delta net-start net-end pkts)
  [ -n "$e" ] && [ -n "$p" ] && [ "$p" -gt 0 ] && echo -n " exits=$e packets=$p exits_per_packet=$(echo "$e $p" | awk '{printf "%.2f", $1 / $2}')"
  t=$(sample_delta idle-a idle-b poll_ticks); s=$(sample_delta idle-a idle-b t)
  [ -n "$t" ] && [ -n "$s" ] && echo -n " idle_poll_cpu_pct=$(echo "$t $s" | awk '{printf "%.1f", $1 / $2}')"
}

# One LAB-ROW line (the per-mode tables of `lab/run demo` and `lab/run
# poll`) for the L2 run just ended: timings from L2's console, the VMM's
# request counters, its exit counts over the whole run (kvm_*: KVM's
# statistics; vmm_exits, vmm_exit_ns: exits handled by iovmm's run loop
# and their time), the samples, and Redis results if any.
emit_row() {
  local row f v
  row="LAB-ROW mode=$MODE${POLL:++poll} mib=$MIB"
  row="$row l1_to_l2_s=$(sed -n 's/.*LAB-L2 timing l1_to_l2_s=\([0-9.]*\).*/\1/p' /tmp/l2.log | tail -1)"
  row="$row l2_to_l1_s=$(sed -n 's/.*LAB-L2 timing.* l2_to_l1_s=\([0-9.]*\).*/\1/p' /tmp/l2.log | tail -1)"
  for f in map:.viommu.requests.map unmap:.viommu.requests.unmap notifications:.viommu.notifications \
      unmap_batches:.viommu.unmap_batches map_p50_ns:.viommu.latency.map.p50_ns \
      unmap_p50_ns:.viommu.latency.unmap.p50_ns faults:.viommu.faults \
      polled:.viommu.poll.polled_requests poll_cpu_share:.viommu.poll.cpu_share_of_one_core \
      kvm_exits:.kvm.exits.total kvm_io_exits:.kvm.exits.by_reason.io \
      kvm_mmio_exits:.kvm.exits.by_reason.mmio vmm_exits:.exits.total.count \
      vmm_exit_ns:.exits.total.ns; do
    v=$(jv "${f#*:}"); [ -n "$v" ] && row="$row ${f%%:*}=$v"
  done
  row="$row$(sample_fields)"
  if [ -s /tmp/redis.csv ]; then
    for f in SET GET; do
      v=$(awk -F'"' -v t="$f" '$2 == t { print $4 }' /tmp/redis.csv)
      [ -n "$v" ] && row="$row redis_$(echo $f | tr A-Z a-z)_rps=$v"
    done
  fi
  [ "$L2_EXIT" = 0 ] && echo "$row"
}

# The poll scenarios' checks on one run's stats and samples (names with
# $SFX): request-queue notifications under 5% of requests, and an idle
# poll thread under 5% of a core once the budget has expired.
poll_checks() {
  local req notif pct samples
  if [ "$VMM" = qemu ]; then
    skip poll-notify$SFX "QEMU writes no iovmm stats"; skip poll-idle$SFX "QEMU has no poll thread"; return
  fi
  req=$(( $(jn .viommu.requests.map) + $(jn .viommu.requests.unmap) ))
  notif=$(jn .viommu.notifications)
  samples=$(sample_fields)
  echo "LAB-L1 poll requests=$req notifications=$notif polled=$(jv .viommu.poll.polled_requests) kicks_avoided=$(jv .viommu.poll.kicks_avoided) poll_cpu_share=$(jv .viommu.poll.cpu_share_of_one_core) vfio_calls_per_request=$(jv .vfio_calls_per_request)$samples"
  [ "$req" -gt 0 ] && [ $((notif * 100)) -lt $((req * 5)) ]
  check poll-notify$SFX $((! $?)) "notifications=$notif requests=$req (want < 5%)"
  pct=$(echo "$samples" | sed -n 's/.*idle_poll_cpu_pct=\([0-9.]*\).*/\1/p')
  [ -n "$pct" ] && awk -v p="$pct" 'BEGIN { exit !(p < 5) }'
  check poll-idle$SFX $((! $?)) "idle poll thread: ${pct:-unmeasured}% of a core (want < 5%)"
}

# stats_applies: whether this run has iovmm stats for the stats-shape
# check (and the poll checks) to read; reports those checks as skipped,
# or stats-shape failed when iovmm wrote no file, otherwise.
stats_applies() {
  if [ "$MODE" = off ]; then
    skip stats-shape$SFX "no virtual IOMMU (mode off)"
    [ -n "$POLL" ] && { skip poll-notify$SFX "no virtual IOMMU"; skip poll-idle$SFX "no virtual IOMMU"; }
  elif [ "$VMM" = qemu ]; then
    skip stats-shape$SFX "QEMU writes no iovmm stats"
    [ -n "$POLL" ] && poll_checks
  elif [ ! -f /tmp/stats.json ]; then
    check stats-shape$SFX 0 "no stats file"
  else
    return 0
  fi
  return 1
}

# stats_dump: iovmm's stats file between markers (lab/run keeps L1's log).
stats_dump() { [ -f /tmp/stats.json ] && { echo "LAB-STATS-BEGIN"; cat /tmp/stats.json; echo "LAB-STATS-END"; }; }

# kvm-exits$SFX: iovmm's VM exits from KVM's binary statistics (the sum of
# its vCPUs' `exits`, .kvm.exits.total in the stats) against L1's KVM
# counter over the VMM's life (samples vmm-start..vmm-exit; only L2 runs
# in L1's KVM, so that delta is L2's exits). Pass within 5%.
kvm_exits_check() {
  local own l1 d
  if [ "$VMM" = qemu ]; then skip kvm-exits$SFX "QEMU writes no iovmm stats"; return; fi
  own=$(jv .kvm.exits.total); l1=$(sample_delta vmm-start vmm-exit exits)
  echo "LAB-L1 kvm-exits iovmm_kvm=${own:-none} l1=${l1:-none} by_reason=$(jq -c '.kvm.exits.by_reason' /tmp/stats.json 2>/dev/null) iovmm_own=$(jq -c '.exits | {total, by_reason: (.by_reason | with_entries(select(.value.count > 0)))}' /tmp/stats.json 2>/dev/null)"
  d=$(awk -v a="${own:-0}" -v b="${l1:-0}" 'BEGIN { if (b > 0) printf "%.2f", (a - b) * 100 / b }')
  [ -n "$own" ] && [ -n "$d" ] && awk -v d="$d" 'BEGIN { exit !(d <= 5 && d >= -5) }'
  check kvm-exits$SFX $((! $?)) "iovmm=${own:-none} l1=${l1:-none} diff_pct=${d:-none} (want within 5%)"
}
