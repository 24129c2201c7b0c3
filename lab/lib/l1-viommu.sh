# Shared L1 part of the viommu-<mode> scenarios (and of the `modes` demo,
# which runs it once per mode); the caller sets MODE.
# L2 gets virtio-blk and virtio-net behind the virtual IOMMU (none for
# MODE=off); 16 MiB move each way over the network and through the disk;
# the VMM's stats are checked for the shape the mode implies, and one
# LAB-ROW line sums the run up for the demo's table.
# POLL (viommu-poll, the poll comparison): the request queue is polled
# (--iommu-poll $POLL, budget scaled for emulation) and L2 idles after the
# transfers so that the idle poll thread can be measured.
POLL_ARGS=""; [ -n "$POLL" ] && POLL_ARGS="--iommu-poll $POLL --iommu-poll-budget-us ${POLL_BUDGET_US:-20000}"
SAMPLE_IF=tap0
[ -e /sys/class/net/tap0 ] || make_tap tap0 10.99.0.1/24 || check net-setup 0 "cannot create tap0"
killall nc 2>/dev/null
rm -f /tmp/stats.json /tmp/rx.bin
MIB=$(arg mib); MIB=${MIB:-16}
# Disk: $MIB MiB of random data, then room for L2 to write $MIB MiB at 20 MiB.
dd if=/dev/urandom of=/tmp/disk.img bs=1M count=$MIB 2>/dev/null
dd if=/dev/zero bs=1M count=$((20 + MIB)) 2>/dev/null >> /tmp/disk.img
DISK_SHA=$(head -c $((MIB << 20)) /tmp/disk.img | sha256sum | cut -c1-64)
dd if=/dev/urandom of=/tmp/tx.bin bs=1M count=$MIB 2>/dev/null
TX_SHA=$(sha256sum /tmp/tx.bin | cut -c1-64)
nc -l -p 5001 -e cat /tmp/tx.bin &
( nc -l -p 5002 > /tmp/rx.bin; nc -l -p 5003 -e echo received ) &
T0=$(cut -d' ' -f1 /proc/uptime)
run_l2 "console=ttyS0 panic=-1 $L2_QUIET lab.mode=$MODE lab.mib=$MIB lab.disk_sha=$DISK_SHA lab.tx_sha=$TX_SHA lab.idle=${POLL:+5}" \
  --disk /tmp/disk.img --net tap0 --iommu "$MODE" --extra "$POLL_ARGS"
echo "LAB-L1 l2 run took $(echo "$(cut -d' ' -f1 /proc/uptime) $T0" | awk '{print $1-$2}')s"
[ "$L2_EXIT" = 0 ]; check vmm-exit $((! $?)) "exit=$L2_EXIT"
W=$(dd if=/tmp/disk.img bs=1M skip=20 count=$MIB 2>/dev/null | sha256sum | cut -c1-64)
[ "$W" = "$TX_SHA" ]; check blk-write $((! $?)) "sha at 20MiB=${W%${W#????????????}}"
RX_SHA=$(sha256sum /tmp/rx.bin | cut -c1-64)
[ "$RX_SHA" = "$DISK_SHA" ]; check net-l2-to-l1-data $((! $?)) "bytes=$(wc -c < /tmp/rx.bin)"
echo "LAB-L1 received sha=$RX_SHA bytes=$(wc -c < /tmp/rx.bin)"

# stat SECTION KEY: a number from the stats JSON ("" for top-level keys).
stat() {
  awk -v sec="\"$1\"" -v key="\"$2\"" '
    $1 == sec":" { insec = 1; next }
    insec && /}/ { insec = 0 }
    (sec == "\"\"" || insec) && $1 == key":" { gsub(/[,]/, "", $2); print $2; exit }
  ' /tmp/stats.json
}
rm -f /tmp/redis.csv
emit_row
if [ "$MODE" = off ]; then
  check stats-shape 1 "not applicable: no virtual IOMMU"
elif [ "$VMM" = qemu ]; then
  check stats-shape 1 "not applicable: QEMU writes no iovmm stats"
elif [ -f /tmp/stats.json ]; then
  echo "LAB-STATS-BEGIN"; cat /tmp/stats.json; echo "LAB-STATS-END"
  MAPS=$(stat requests map); UNMAPS=$(stat requests unmap); ATT=$(stat requests attach)
  UB=$(stat "" unmap_batches); FAULTS=$(stat "" faults)
  echo "LAB-L1 stats map=$MAPS unmap=$UNMAPS attach=$ATT unmap_batches=$UB faults=$FAULTS"
  case "$MODE" in
    strict)
      [ "${MAPS:-0}" -gt 0 ] && [ $((UNMAPS * 10)) -ge $((MAPS * 8)) ] && [ $((UNMAPS * 10)) -le $((MAPS * 12)) ]
      check stats-shape $((! $?)) "map=$MAPS unmap=$UNMAPS (strict: both >0, unmap ~ map)"
      [ -n "$POLL" ] && poll_checks "";;
    lazy)
      [ "${UNMAPS:-0}" -gt 0 ] && [ $((UB * 2)) -lt "$UNMAPS" ]
      check stats-shape $((! $?)) "unmap=$UNMAPS in $UB batches (lazy: batched)";;
    passthrough)
      [ "${MAPS:-1}" = 0 ] && [ "${ATT:-0}" -gt 0 ]
      check stats-shape $((! $?)) "map=$MAPS attach=$ATT (passthrough: no maps)";;
  esac
else
  check stats-shape 0 "no stats file"
fi
