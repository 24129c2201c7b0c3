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

# The settings every number of this run holds under, once per boot.
if [ ! -f /tmp/bench-settings ]; then
  echo "LAB-BENCH settings backing=$BACKING l1_npt=$(arg npt) l2_vcpus=$L2_VCPUS l2_mem_mib=512 place=${PLACE:-none} poll_budget_us=${POLL_BUDGET_US:-20000} secs=$BENCH_SECS redis_n=$BENCH_REDIS_N reps=${REPS:-1} nic=e1000e-vfio" | tee /tmp/bench-settings
fi

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
      case "$c" in $p) n=$((n + $(awk '{print $14 + $15}' $th/stat 2>/dev/null || echo 0))); break;; esac
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
# stat_fields: iovmm's counters between the snapshots before and after
# (deltas; peaks and current sizes as of after), as row fields. A counter
# the stats do not have (no virtual IOMMU under mode off) is left out.
stat_fields() {
  [ -f /tmp/snap-before.json ] && [ -f /tmp/snap-after.json ] || return 0
  jq -rn --slurpfile a /tmp/snap-before.json --slurpfile b /tmp/snap-after.json '
    def d(k; p): ($b[0] | p) as $y | ($a[0] | p) as $x
      | if $y == null then empty else "\(k)=\($y - ($x // 0))" end;
    def v(k; p): ($b[0] | p) as $y | if $y == null then empty else "\(k)=\($y)" end;
    [d("kvm_exits"; .kvm.exits.total),
     ($b[0].kvm.exits.by_reason // {} | to_entries[]
       | "kvm_exit_\(.key)=\(.value - ($a[0].kvm.exits.by_reason[.key] // 0))"),
     d("vmm_exits"; .exits.total.count), d("vmm_exit_ns"; .exits.total.ns),
     d("viommu_map"; .viommu.requests.map), d("viommu_unmap"; .viommu.requests.unmap),
     d("notifications"; .viommu.notifications), d("polled"; .viommu.poll.polled_requests),
     d("poll_cpu_ns"; .viommu.poll.cpu_ns),
     d("vfio_map_calls"; .vfio.dma.viommu.map.calls), d("vfio_unmap_calls"; .vfio.dma.viommu.unmap.calls),
     d("vfio_map_ns"; .vfio.dma.viommu.map.total_ns), d("vfio_unmap_ns"; .vfio.dma.viommu.unmap.total_ns),
     v("peak_mapped_bytes"; .viommu.peak_mapped_bytes), v("vfio_mapped_bytes"; .vfio.dma.viommu.mapped_bytes)]
    | join(" ")' 2>/dev/null
}
# us VALUE: a latency with its unit (wrk: 812.00us, 1.20ms, 2.00s) in µs.
us() { echo "$1" | awk '{ v = $1 + 0; if ($1 ~ /us$/) print v; else if ($1 ~ /ms$/) print v * 1000; else if ($1 ~ /s$/) print v * 1000000; else print v }'; }

# run_item ITEM: the load of one item; sets R (row fields: throughput,
# unit, p50_us, p99_us, ops where the tool gives them) or leaves it empty.
run_item() {
  local t d out
  R=""
  case "$1" in
    redis-set-*|redis-get-*)
      t=${1#redis-}; t=${t%%-*}; d=${1##*-}; [ "$d" = 1k ] && d=1024
      timeout 180 redis-benchmark -h $L2_IP -p 6379 -t "$t" -n "$BENCH_REDIS_N" -c 4 -d "$d" --csv > /tmp/item.out 2>/dev/null
      # "test","rps","avg_latency_ms","min_latency_ms","p50_latency_ms","p95_latency_ms","p99_latency_ms","max_latency_ms"
      R=$(awk -F'"' -v n="$BENCH_REDIS_N" '$2 ~ /^(SET|GET)$/ && $4 + 0 > 0 {
        printf "unit=req/s throughput=%s p50_us=%.0f p99_us=%.0f ops=%d", $4, $10 * 1000, $14 * 1000, n }' /tmp/item.out);;
    memcached-*)
      d=${1#memcached-}; [ "$d" = 1k ] && d=1024
      # memcaslap: 90% get / 10% set of $d-byte values, 4 connections;
      # -S: the latency statistics (printed once per interval and at the end).
      HOME=/tmp timeout $((BENCH_SECS + 60)) memcaslap -s $L2_IP:11211 -t "${BENCH_SECS}s" -S "${BENCH_SECS}s" -c 4 -T 1 -X "$d" > /tmp/item.out 2>&1
      # Throughput: the last "Global" line after "Total Statistics";
      # percentiles: the upper bound of the power-of-two bucket (µs) of
      # the get and set latency histograms ("Log2 Dist") together.
      R=$(awk '
        /Statistics/ { tot = ($1 == "Total") } tot && $1 == "Global" { ops = $3; tps = $4; avg = $9 }
        /Log2 Dist:/ { h = 1; next } h && /^ *[0-9]+:/ { b = $1 + 0; for (i = 2; i <= NF; i++) c[b + i - 2] += $i; next } { h = 0 }
        END {
          if (tps + 0 <= 0) exit
          n = 0; for (k in c) n += c[k]
          s = 0; p50 = ""; p99 = ""
          u = 1
          for (k = 0; k < 40; k++) { u *= 2; s += c[k]; if (p50 == "" && s >= n * 0.5) p50 = u; if (p99 == "" && s >= n * 0.99) p99 = u }
          printf "unit=req/s throughput=%s avg_us=%s ops=%s", tps, avg, ops
          if (n > 0) printf " p50_us=%d p99_us=%d", p50, p99
        }' /tmp/item.out)
      # memcaslap has crashed inside L1 (a segfault at start, not seen on
      # the build machine): then memcslap's get test, 4 threads, which
      # gives throughput only (tool=memcslap).
      if [ -z "$R" ]; then
        timeout $((BENCH_SECS + 120)) memcslap --servers=$L2_IP:11211 --concurrency=4 --execute-number="$BENCH_REDIS_N" --test=get > /tmp/item2.out 2>&1
        R=$(awk '/^Time to get/ { n = $4; t = $(NF - 1) } END { if (n > 0 && t > 0) printf "unit=req/s throughput=%.2f ops=%d tool=memcslap", n / t, n }' /tmp/item2.out)
        cat /tmp/item2.out >> /tmp/item.out
      fi;;
    nginx-*)
      timeout $((BENCH_SECS + 60)) wrk -t1 -c4 -d"${BENCH_SECS}s" --latency "http://$L2_IP:80/${1#nginx-}" > /tmp/item.out 2>&1
      # A run with error responses ("Non-2xx or 3xx responses") or socket
      # errors gives no numbers.
      out=$(awk '/^ +50%/ { p50 = $2 } /^ +99%/ { p99 = $2 } /requests in/ { ops = $1 } /^Requests\/sec:/ { rps = $2 }
        /Non-2xx|Socket errors/ { bad = 1 }
        END { if (!bad && rps + 0 > 0 && ops + 0 > 0) print rps, ops, p50, p99 }' /tmp/item.out)
      # shellcheck disable=SC2086
      [ -n "$out" ] && set -- $out && R="unit=req/s throughput=$1 p50_us=$(us "$3") p99_us=$(us "$4") ops=$2";;
    iperf3-tx|iperf3-rx)
      d=""; [ "$1" = iperf3-rx ] && d=-R  # tx: L1 -> L2; rx: L2 -> L1
      timeout $((BENCH_SECS + 60)) iperf3 -c $L2_IP -p 5201 -t "$BENCH_SECS" $d -J > /tmp/item.out 2>/dev/null
      # ops: the packets of L1's NIC during the item (filled in below).
      R=$(jq -r 'select(.end.sum_received.bits_per_second > 0)
        | "unit=Mbit/s throughput=\(.end.sum_received.bits_per_second / 1e6 * 1000 | floor / 1000) retransmits=\(.end.sum_sent.retransmits // 0)"' /tmp/item.out 2>/dev/null);;
  esac
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
    row="$row vcpu_ticks=$((SNAP_VCPU - V_BEFORE)) dev_ticks=$((SNAP_DEV - D_BEFORE)) $(stat_fields)"
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
