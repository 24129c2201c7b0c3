# The vfio workload, L1 half (one L2 run; lab/lib/l1-init's driver sets
# MODE, POLL, ROUND/SFX): iovmm assigns the NIC prep=vfio bound to
# vfio-pci to L2, whose stock e1000e driver brings it up as 10.99.1.2;
# $MIB MiB move each way with checksums, and the VMM's VFIO counters are
# checked for the shape the mode implies.
# POLL: the viommu's request queue is polled (budget scaled for
# emulation), L2 idles after the transfer, and poll_checks judges
# notifications and the idle poll thread.
# REDIS=1 (env= in lab/scenarios.sh): once L2 serves Redis,
# redis-benchmark runs here against it; the result goes to
# /tmp/redis.csv, then L2 is told.
POLL_ARGS=""; [ -n "$POLL" ] && POLL_ARGS="--iommu-poll $POLL --iommu-poll-budget-us ${POLL_BUDGET_US:-20000}"
redis_client() {
  local i=0
  rm -f /tmp/redis.csv
  until grep -q 'LAB-L2 mark redis-ready' /tmp/l2.log 2>/dev/null || [ $i -ge 1500 ]; do i=$((i + 1)); sleep 0.2; done
  timeout 240 redis-benchmark -h 10.99.1.2 -p 6379 -t set,get -n ${REDIS_N:-4000} -c 4 -d 64 --csv > /tmp/redis.csv 2>/dev/null
  nc -l -p 5004 -e echo done
}

VFIO_ARG=$BDF; [ "$MODE" = off ] && VFIO_ARG="$BDF,iommu=off"
# Cooperative mode: a budget (64 MiB, 12.5% of L2) that the L2 flood
# (dma_flood, 96 MiB) exceeds,
# and an idle phase of 5 s (50 scans) to see pins released.
COOP_ARGS=""; IDLE=${POLL:+5}
[ "$MODE" = coop ] && { COOP_ARGS="--coop-budget ${COOP_BUDGET:-64M} --coop-granule ${GRANULE:-auto} --coop-scan-ms ${COOP_SCAN_MS:-100}"; IDLE=5; }
dd if=/dev/urandom of=/tmp/tx.bin bs=1M count=$MIB 2>/dev/null
TX_SHA=$(sha256sum /tmp/tx.bin | cut -c1-64)
killall nc redis-benchmark 2>/dev/null
rm -f /tmp/rx.bin /tmp/stats.json /tmp/l2.log /tmp/redis.csv
nc -l -p 5001 -e cat /tmp/tx.bin &
( nc -l -p 5002 > /tmp/rx.bin; nc -l -p 5003 -e echo received ) &
[ "${REDIS:-0}" = 1 ] && redis_client &
run_l2 "console=ttyS0 panic=-1 $L2_QUIET lab.mode=$MODE lab.mib=$MIB lab.round=$ROUND lab.tx_sha=$TX_SHA lab.idle=$IDLE lab.redis=${REDIS:-0}" \
  --iommu "$MODE" --extra "--vfio $VFIO_ARG $POLL_ARGS $COOP_ARGS"
[ "$L2_EXIT" = 0 ]; check vmm-exit$SFX $((! $?)) "exit=$L2_EXIT"
RX_BYTES=$(wc -c < /tmp/rx.bin 2>/dev/null || echo 0)
RX_SHA=$(sha256sum /tmp/rx.bin 2>/dev/null | cut -c1-64)
SENT=$(grep -o "LAB-L2 out_sha=[0-9a-f]*" /tmp/l2.log | head -1 | cut -d= -f2)
[ -n "$SENT" ] && [ "$RX_SHA" = "$SENT" ] && [ "$RX_BYTES" = $((MIB << 20)) ]
check net-l2-to-l1$SFX $((! $?)) "bytes=$RX_BYTES"
emit_row
stats_dump
[ "$MODE" = off ] && coop_note_off
if stats_applies; then
  UNMAPS=$(jv .viommu.requests.unmap); MAPS=$(jv .viommu.requests.map)
  VUNMAPS=$(jv .vfio.dma.viommu.unmap.calls); VMAPS=$(jv .vfio.dma.viommu.map.calls)
  echo "LAB-L1 stats round=$ROUND map=$MAPS unmap=$UNMAPS vfio_map=$VMAPS vfio_unmap=$VUNMAPS$(sample_fields)"
  [ -n "$POLL" ] && poll_checks
  case "$MODE" in
    strict)
      [ "${UNMAPS:-0}" -gt 0 ] && [ $((VUNMAPS * 10)) -ge $((UNMAPS * 8)) ] && [ $((VUNMAPS * 10)) -le $((UNMAPS * 12)) ]
      check stats-shape$SFX $((! $?)) "guest unmap=$UNMAPS vfio unmap=$VUNMAPS (strict: vfio unmaps ~ guest UNMAPs)";;
    lazy)
      [ "${UNMAPS:-0}" -gt 0 ] && [ "${VUNMAPS:-0}" -gt 0 ]
      check stats-shape$SFX $((! $?)) "guest unmap=$UNMAPS vfio unmap=$VUNMAPS";;
    passthrough)
      [ "${MAPS:-1}" = 0 ] && [ "${VMAPS:-0}" -gt 0 ]
      check stats-shape$SFX $((! $?)) "guest map=$MAPS vfio map=$VMAPS (identity)";;
    coop)
      # Pins, not MAP requests, reach VFIO.
      PINS=$(jn .viommu.coop.pin_requests)
      [ "${MAPS:-1}" = 0 ] && [ "$PINS" -gt 0 ] && [ "${VMAPS:-0}" -gt 0 ]
      check stats-shape$SFX $((! $?)) "guest map=$MAPS pins=$PINS vfio map=$VMAPS"
      coop_checks;;
  esac
fi
