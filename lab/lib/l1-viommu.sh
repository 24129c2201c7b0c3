# The viommu workload, L1 half (one L2 run; lab/lib/l1-init's driver sets
# MODE, POLL, ROUND/SFX): L2 gets virtio-blk and virtio-net behind the
# virtual IOMMU (none for MODE=off); $MIB MiB move each way over the
# network and through the disk; the VMM's stats are checked for the shape
# the mode implies, iovmm's KVM exit count is compared with L1's, and one
# LAB-ROW line sums the run up for the tables.
# POLL: the request queue is polled (--iommu-poll $POLL, budget scaled for
# emulation) and L2 idles after the transfers so that the idle poll
# thread can be measured.
POLL_ARGS=""; [ -n "$POLL" ] && POLL_ARGS="--iommu-poll $POLL --iommu-poll-budget-us ${POLL_BUDGET_US:-20000}"
killall nc 2>/dev/null
rm -f /tmp/stats.json /tmp/rx.bin /tmp/redis.csv
# Disk: $MIB MiB of random data, then room for L2 to write $MIB MiB at 20 MiB.
dd if=/dev/urandom of=/tmp/disk.img bs=1M count=$MIB 2>/dev/null
dd if=/dev/zero bs=1M count=$((20 + MIB)) 2>/dev/null >> /tmp/disk.img
DISK_SHA=$(head -c $((MIB << 20)) /tmp/disk.img | sha256sum | cut -c1-64)
dd if=/dev/urandom of=/tmp/tx.bin bs=1M count=$MIB 2>/dev/null
TX_SHA=$(sha256sum /tmp/tx.bin | cut -c1-64)
nc -l -p 5001 -e cat /tmp/tx.bin &
( nc -l -p 5002 > /tmp/rx.bin; nc -l -p 5003 -e echo received ) &
T0=$(cut -d' ' -f1 /proc/uptime)
run_l2 "console=ttyS0 panic=-1 $L2_QUIET lab.mode=$MODE lab.round=$ROUND lab.mib=$MIB lab.disk_sha=$DISK_SHA lab.tx_sha=$TX_SHA lab.idle=${POLL:+5}" \
  --disk /tmp/disk.img --net tap0 --iommu "$MODE" --extra "$POLL_ARGS"
echo "LAB-L1 l2 run took $(echo "$(cut -d' ' -f1 /proc/uptime) $T0" | awk '{print $1-$2}')s"
[ "$L2_EXIT" = 0 ]; check vmm-exit$SFX $((! $?)) "exit=$L2_EXIT"
W=$(dd if=/tmp/disk.img bs=1M skip=20 count=$MIB 2>/dev/null | sha256sum | cut -c1-64)
[ "$W" = "$TX_SHA" ]; check blk-write$SFX $((! $?)) "sha at 20MiB=${W%${W#????????????}}"
RX_SHA=$(sha256sum /tmp/rx.bin | cut -c1-64)
[ "$RX_SHA" = "$DISK_SHA" ]; check net-l2-to-l1-data$SFX $((! $?)) "bytes=$(wc -c < /tmp/rx.bin)"
echo "LAB-L1 received sha=$RX_SHA bytes=$(wc -c < /tmp/rx.bin)"

emit_row
stats_dump
kvm_exits_check
if stats_applies; then
  MAPS=$(jv .viommu.requests.map); UNMAPS=$(jv .viommu.requests.unmap); ATT=$(jv .viommu.requests.attach)
  UB=$(jv .viommu.unmap_batches); FAULTS=$(jv .viommu.faults)
  echo "LAB-L1 stats map=$MAPS unmap=$UNMAPS attach=$ATT unmap_batches=$UB faults=$FAULTS"
  case "$MODE" in
    strict)
      [ "${MAPS:-0}" -gt 0 ] && [ $((UNMAPS * 10)) -ge $((MAPS * 8)) ] && [ $((UNMAPS * 10)) -le $((MAPS * 12)) ]
      check stats-shape$SFX $((! $?)) "map=$MAPS unmap=$UNMAPS (strict: both >0, unmap ~ map)";;
    lazy)
      [ "${UNMAPS:-0}" -gt 0 ] && [ $((UB * 2)) -lt "$UNMAPS" ]
      check stats-shape$SFX $((! $?)) "unmap=$UNMAPS in $UB batches (lazy: batched)";;
    passthrough)
      [ "${MAPS:-1}" = 0 ] && [ "${ATT:-0}" -gt 0 ]
      check stats-shape$SFX $((! $?)) "map=$MAPS attach=$ATT (passthrough: no maps)";;
    coop)
      # The table registered, pins instead of maps, nothing faulted.
      PINS=$(jn .viommu.coop.pin_requests); LEAVES=$(jn .viommu.coop.leaves)
      echo "LAB-L1 coop $(jq -c '.viommu.coop' /tmp/stats.json 2>/dev/null)"
      [ "${MAPS:-1}" = 0 ] && [ "$PINS" -gt 0 ] && [ "$LEAVES" -gt 0 ] && [ "${FAULTS:-1}" = 0 ]
      check stats-shape$SFX $((! $?)) "map=$MAPS pins=$PINS leaves=$LEAVES faults=$FAULTS peak_pinned=$(jn .viommu.coop.pinned_peak_bytes) (coop: pins, no maps, no faults)";;
  esac
  [ -n "$POLL" ] && poll_checks
fi
