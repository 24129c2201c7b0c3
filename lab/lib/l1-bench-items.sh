# The bench's items, shared by the lab (lab/lib/l1-bench.sh, in L1) and
# two real machines (lab/hw-bench, on the load machine): run_item runs
# the load generator of one item against $L2_IP and sets R to the row's
# fields; stat_fields turns two iovmm stats snapshots into row fields.
# Settings: BENCH_SECS (seconds per timed item), BENCH_REDIS_N (requests
# per redis-benchmark item), BENCH_CONC (connections, default 4),
# BENCH_THREADS (load threads of memcaslap and wrk, default 1; set, also
# redis-benchmark's --threads). POSIX sh (L1 runs busybox's).

# stat_fields BEFORE AFTER: iovmm's counters between two stats files
# (deltas; peaks and current sizes as of AFTER), as row fields. A counter
# the stats do not have (no virtual IOMMU under mode off) is left out.
# Under coop, peak_mapped_bytes is the pinned peak (what the host IOMMU
# held), and coop_pins / coop_host_calls count COOP_PIN requests and the
# host maps + unmaps of pins (also in vfio_*_calls).
stat_fields() {
  [ -f "$1" ] && [ -f "$2" ] || return 0
  jq -rn --slurpfile a "$1" --slurpfile b "$2" '
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
     d("viommu_handling_ns"; [.viommu.latency[]? | .mean_ns * .count] | add),
     d("viommu_response_ns"; .viommu.poll.response | if . == null then null else .mean_ns * .count end),
     d("vfio_map_calls"; .vfio.dma.viommu.map.calls), d("vfio_unmap_calls"; .vfio.dma.viommu.unmap.calls),
     d("vfio_map_ns"; .vfio.dma.viommu.map.total_ns), d("vfio_unmap_ns"; .vfio.dma.viommu.unmap.total_ns),
     d("coop_pins"; .viommu.coop.pin_requests), d("coop_host_calls"; .viommu.coop | if . == null then null else .host_maps + .host_unmaps end),
     v("coop_pinned_bytes"; .viommu.coop.pinned_bytes),
     v("peak_mapped_bytes"; .viommu.coop.pinned_peak_bytes // .viommu.peak_mapped_bytes), v("vfio_mapped_bytes"; .vfio.dma.viommu.mapped_bytes)]
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
      timeout 180 redis-benchmark -h $L2_IP -p 6379 -t "$t" -n "$BENCH_REDIS_N" -c "${BENCH_CONC:-4}" ${BENCH_THREADS:+--threads $BENCH_THREADS} -d "$d" --csv > /tmp/item.out 2>/dev/null
      # "test","rps","avg_latency_ms","min_latency_ms","p50_latency_ms","p95_latency_ms","p99_latency_ms","max_latency_ms"
      R=$(awk -F'"' -v n="$BENCH_REDIS_N" '$2 ~ /^(SET|GET)$/ && $4 + 0 > 0 {
        printf "unit=req/s throughput=%s p50_us=%.0f p99_us=%.0f ops=%d", $4, $10 * 1000, $14 * 1000, n }' /tmp/item.out);;
    memcached-*)
      d=${1#memcached-}; [ "$d" = 1k ] && d=1024
      # memcaslap: 90% get / 10% set of $d-byte values, 4 connections;
      # -S: the latency statistics (printed once per interval and at the end).
      HOME=/tmp timeout $((BENCH_SECS + 60)) memcaslap -s $L2_IP:11211 -t "${BENCH_SECS}s" -S "${BENCH_SECS}s" -c "${BENCH_CONC:-4}" -T "${BENCH_THREADS:-1}" -X "$d" > /tmp/item.out 2>&1
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
      # Should memcaslap give nothing (it segfaults at start where the
      # user has no passwd entry: l1-bench.sh writes one), memcslap's get
      # test, which gives throughput only (tool=memcslap).
      if [ -z "$R" ]; then
        timeout $((BENCH_SECS + 120)) memcslap --servers=$L2_IP:11211 --concurrency="${BENCH_CONC:-4}" --execute-number="$BENCH_REDIS_N" --test=get > /tmp/item2.out 2>&1
        R=$(awk '/^Time to get/ { n = $4; t = $(NF - 1) } END { if (n > 0 && t > 0) printf "unit=req/s throughput=%.2f ops=%d tool=memcslap", n / t, n }' /tmp/item2.out)
        cat /tmp/item2.out >> /tmp/item.out
      fi;;
    nginx-*)
      timeout $((BENCH_SECS + 60)) wrk -t"${BENCH_THREADS:-1}" -c"${BENCH_CONC:-4}" -d"${BENCH_SECS}s" --latency "http://$L2_IP:80/${1#nginx-}" > /tmp/item.out 2>&1
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

