# The bench workload, L1 half: one L2 boot for this cell (VMM, MODE,
# POLL, repetition ROUND; lab/lib/l1-init's driver), with the NIC prep=vfio
# bound to vfio-pci assigned to L2. L2 (l2-bench.sh) serves Redis,
# Memcached, nginx and iperf3 on 10.99.1.2; L1 runs the load generators
# one item after another, and around each item snapshots iovmm's stats
# (SIGUSR1), L1's KVM exit counter, the packets of its NIC and the CPU
# ticks of the VMM's vCPU and virtio-iommu threads. One LAB-ROW per item,
# `failed=1` when the item gave no numbers (lab/README.md, "bench").
# BENCH_ITEMS (env, `+`-separated): the items; BENCH_SECS: seconds per
# timed item; BENCH_REDIS_N: requests per redis-benchmark item.
BENCH_ITEMS=${BENCH_ITEMS:-redis-set-64+redis-get-64+redis-set-1k+redis-get-1k+memcached-64+nginx-4k+nginx-64k+iperf3-tx+iperf3-rx}
BENCH_SECS=${BENCH_SECS:-5}
BENCH_REDIS_N=${BENCH_REDIS_N:-2000}
L2_IP=10.99.1.2
POLL_ARGS=""; [ -n "$POLL" ] && POLL_ARGS="--iommu-poll $POLL --iommu-poll-budget-us ${POLL_BUDGET_US:-20000}"
# bcheck: checks only bench-smoke asks for (BENCH_CHECKS=1); a check L1
# reports outside a scenario's list can only fail it, and the full bench
# marks failed cells in its rows instead.
bcheck() { [ "${BENCH_CHECKS:-0}" = 1 ] && check "$@"; }
# run_item (the load of one item) and stat_fields (iovmm's counters as
# row fields), shared with lab/hw-bench.
. /stage/lib/l1-bench-items.sh

# The settings every number of this run holds under, once per boot.
if [ ! -f /tmp/bench-settings ]; then
  echo "LAB-BENCH settings backing=$BACKING l1_npt=$(arg npt) l2_vcpus=$L2_VCPUS l2_mem_mib=$(($(l2_ram_bytes) >> 20)) place=${PLACE:-none} poll_budget_us=${POLL_BUDGET_US:-20000} secs=$BENCH_SECS redis_n=$BENCH_REDIS_N reps=${REPS:-1} nic=e1000e-vfio" | tee /tmp/bench-settings
fi

# memcaslap looks up its user (getpwuid) and dereferences the answer
# unchecked: with no /etc/passwd, as in L1's initramfs, it segfaults at
# start.
[ -f /etc/passwd ] || { mkdir -p /etc; echo 'root:x:0:0:root:/tmp:/bin/sh' > /etc/passwd; }
vmm_pid() { cat /tmp/vmm.pid 2>/dev/null; }
vmm_alive() { local p; p=$(vmm_pid); [ -n "$p" ] && kill -0 "$p" 2>/dev/null; }
# thread_ticks PID PATTERN...: CPU ticks (1/100 s) of the threads whose
# name matches one of the PATTERNs (case patterns), summed.
thread_ticks() {
  local th n=0 c p pid=$1
  shift
  for th in /proc/$pid/task/*; do
    c=$(cat $th/comm 2>/dev/null)
    for p in "$@"; do
      # shellcheck disable=SC2254
      case "$c" in $p) n=$((n + $(ticks_of $th/stat) + 0)); break;; esac
    done
  done
  echo $n
}
# snap NAME: iovmm's stats now (SIGUSR1 writes /tmp/stats.json) into
# /tmp/snap-NAME.json, and L1's counters into SNAP_* variables.
snap() {
  local p i=0
  p=$(vmm_pid)
  SNAP_T=$(cut -d' ' -f1 /proc/uptime); SNAP_EXITS=$(kvm_exits); SNAP_PKTS=$(if_packets "$SAMPLE_IF")
  SNAP_VCPU=$(thread_ticks "$p" 'vcpu*' 'CPU *'); SNAP_DEV=$(thread_ticks "$p" virtio-iommu)
  rm -f "/tmp/snap-$1.json"
  [ "$VMM" = iovmm ] && [ -n "$p" ] || return 0
  rm -f /tmp/stats.json
  kill -USR1 "$p" 2>/dev/null || return 0
  while [ ! -f /tmp/stats.json ] && [ $i -lt 100 ]; do sleep 0.1; i=$((i + 1)); done
  cp /tmp/stats.json "/tmp/snap-$1.json" 2>/dev/null
}
# bench_client: waits for L2's servers (mark bench-ready), runs the items,
# one row each, then tells L2 to finish (port 5005 in L2). Every item
# gives a row: with failed=1 when L2 never got ready or the load tool
# gave no numbers.
bench_client() {
  local i=0 item row ready=0 fam pk secs e
  until grep -q 'LAB-L2 mark bench-ready' /tmp/l2.log 2>/dev/null; do
    if [ $i -ge 2000 ] || { [ $i -gt 50 ] && ! vmm_alive; }; then break; fi
    i=$((i + 1)); sleep 0.2
  done
  grep -q 'LAB-L2 mark bench-ready' /tmp/l2.log 2>/dev/null && ready=1
  : > /tmp/bench-rows.txt
  for item in $(echo "$BENCH_ITEMS" | tr '+' ' '); do
    row="LAB-ROW bench=1 vmm=$VMM mode=$MODE${POLL:++poll} workload=$item rep=${ROUND:-1}"
    if [ "$ready" = 0 ]; then echo "$row failed=1 why=l2-not-ready" | tee -a /tmp/bench-rows.txt; continue; fi
    snap_before
    run_item "$item"
    snap after
    e=$((SNAP_EXITS)); pk=$((SNAP_PKTS))
    secs=$(echo "$SNAP_T" | awk -v a="$T_BEFORE" '{ printf "%.2f", $1 - a }')
    if [ -z "$R" ]; then
      echo "$row failed=1 why=no-numbers tool_tail=$(tail -c 120 /tmp/item.out 2>/dev/null | tr -s ' \n\t' '___')" | tee -a /tmp/bench-rows.txt
      continue
    fi
    # shellcheck disable=SC2030
    case "$item" in iperf3-*) R="$R ops=$((pk - P_BEFORE))";; esac
    row="$row failed=0 $R secs=$secs l1_exits=$((e - E_BEFORE)) l1_packets=$((pk - P_BEFORE))"
    row="$row vcpu_ticks=$((SNAP_VCPU - V_BEFORE)) dev_ticks=$((SNAP_DEV - D_BEFORE)) $(stat_fields /tmp/snap-before.json /tmp/snap-after.json)"
    echo "$row" | tee -a /tmp/bench-rows.txt
  done
  [ "$ready" = 1 ] && timeout 10 nc $L2_IP 5005 < /dev/null > /dev/null 2>&1
  # bench-smoke's checks: each workload family gave numbers in this cell.
  for fam in redis memcached nginx iperf3; do
    grep -q " workload=$fam-" /tmp/bench-rows.txt || continue
    ! grep " workload=$fam-" /tmp/bench-rows.txt | grep -q ' failed=1'
    bcheck bench-$fam $((! $?)) "$VMM/$MODE${POLL:++poll}: $(grep " workload=$fam-" /tmp/bench-rows.txt | sed 's/.* workload=\([^ ]*\).* failed=\([01]\).*throughput=\([^ ]*\).*/\1=\3/; s/.* workload=\([^ ]*\).* failed=1.*/\1=FAILED/' | tr '\n' ' ')"
  done
}
# snap sets SNAP_*; the item's "before" values are kept by this wrapper.
snap_before() { snap before; T_BEFORE=$SNAP_T; E_BEFORE=$SNAP_EXITS; P_BEFORE=$SNAP_PKTS; V_BEFORE=$SNAP_VCPU; D_BEFORE=$SNAP_DEV; }

killall redis-benchmark memcaslap wrk iperf3 nc 2>/dev/null
rm -f /tmp/stats.json /tmp/l2.log /tmp/snap-*.json /tmp/bench-rows.txt
bench_client > /tmp/bench-client.log 2>&1 &
CLIENT=$!
run_l2 "console=ttyS0 panic=-1 $L2_QUIET lab.mode=$MODE lab.round=$ROUND" \
  --vmm "$VMM" --iommu "$MODE" --vfio "$BDF" --extra "$POLL_ARGS"
wait "$CLIENT"
grep '^LAB-CHECK \|^LAB-ROW ' /tmp/bench-client.log
[ "$L2_EXIT" = 0 ]; bcheck vmm-exit $((! $?)) "$VMM/$MODE${POLL:++poll} rep $ROUND: exit=$L2_EXIT"
# bench-smoke: the counters have the shape the cell implies (iovmm
# strict: KVM exits, MAP/UNMAP requests and VFIO calls in every row).
if [ "${BENCH_CHECKS:-0}" = 1 ] && [ "$VMM" = iovmm ]; then
  BAD=$(grep ' failed=0 ' /tmp/bench-rows.txt | awk -v m="$MODE" '{
      for (i = 2; i <= NF; i++) { split($i, kv, "="); f[kv[1]] = kv[2] }
      # iovmm'"'"'s own run loop may see no exit at all: the kicks are ioeventfds.
      bad = !(f["kvm_exits"] > 0 && f["ops"] > 0 && ("vmm_exits" in f))
      if (m == "strict") bad = bad || !(f["viommu_map"] > 0 && f["viommu_unmap"] > 0 && f["vfio_unmap_calls"] > 0)
      if (bad) printf "%s ", f["workload"] }')
  N=$(grep -c ' failed=0 ' /tmp/bench-rows.txt)
  [ "$N" -gt 0 ] && [ -z "$BAD" ]
  bcheck bench-stats-shape $((! $?)) "$N rows; rows without exits/requests/VFIO calls: ${BAD:-none}"
  kvm_exits_check
fi
stats_dump
