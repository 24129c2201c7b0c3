# Shared L1 part of the vfio-<mode> scenarios; the scenario sets MODE.
# L1 has two e1000e NICs on one QEMU hub (lab/run adds them, and VT-d is
# on): it keeps 52:54:00:12:00:01 as 10.99.1.1 and binds the other to
# vfio-pci; iovmm assigns that one to L2, whose stock e1000e driver brings
# it up as 10.99.1.2. L2 runs twice in this L1 (teardown must leave the
# device reusable); each run moves $MIB MiB each way with checksums.
# POLL (vfio-poll): the viommu's request queue is polled (adaptive, with
# a budget scaled for emulation), L2 idles after the transfer, and
# poll_checks judges notifications and the idle poll thread.
MIB=$(arg mib); MIB=${MIB:-16}
ROUNDS=${ROUNDS:-1 2}
POLL_ARGS=""; [ -n "$POLL" ] && POLL_ARGS="--iommu-poll $POLL --iommu-poll-budget-us ${POLL_BUDGET_US:-20000}"
if [ -z "$VFIO_READY" ]; then  # once per L1 boot (the poll comparison sources this per mode)
  NICS=$(for d in /sys/bus/pci/devices/*; do
    [ "$(cat $d/vendor):$(cat $d/device)" = 0x8086:0x10d3 ] && basename $d; done | sort)
  HOSTBDF=$(echo "$NICS" | sed -n 1p); BDF=$(echo "$NICS" | sed -n 2p)
  [ -n "$BDF" ] || check vfio-bind 0 "two e1000e expected, found: $NICS"
  echo vfio-pci > /sys/bus/pci/devices/$BDF/driver_override
  echo "$BDF" > /sys/bus/pci/drivers_probe
  insmod /lib/modules/e1000e.ko || echo "LAB-L1 warning: insmod e1000e failed"
  sleep 1
  GROUP=$(basename "$(readlink /sys/bus/pci/devices/$BDF/iommu_group)")
  DRV=$(basename "$(readlink /sys/bus/pci/devices/$BDF/driver)")
  [ "$DRV" = vfio-pci ] && [ -c /dev/vfio/$GROUP ]
  check vfio-bind $((! $?)) "$BDF driver=$DRV group=$GROUP"
  IF=$(ls /sys/bus/pci/devices/$HOSTBDF/net 2>/dev/null | head -1)
  SAMPLE_IF=$IF
  ip addr add 10.99.1.1/24 dev "$IF" && ip link set "$IF" up || check net-setup 0 "L1 e1000e ($HOSTBDF) not up"
  # Misconfiguration on a real host: a BDF that does not exist and a NIC
  # still bound to e1000e each give one error line and exit 2.
  ERRS=""
  for dev in 0000:00:1f.7 "$HOSTBDF"; do
    /stage/iovmm run --kernel /stage/bzImage --memory 64M --vfio "$dev" > /tmp/err.out 2> /tmp/err.txt
    rc=$?; n=$(wc -l < /tmp/err.txt)
    echo "LAB-L1 --vfio $dev: exit $rc: $(head -c 200 /tmp/err.txt)"
    [ "$rc" = 2 ] && [ "$n" = 1 ] || ERRS="$ERRS $dev:exit=$rc,lines=$n"
  done
  grep -q "not vfio-pci" /tmp/err.txt || ERRS="$ERRS no-binding-hint"
  [ -z "$ERRS" ]; check vfio-errors $((! $?)) "wrong BDF and unbound NIC:${ERRS:- one line each, exit 2}"
  VFIO_READY=1
fi

# REDIS (the poll comparison): once L2 serves Redis, redis-benchmark runs
# here against it; the result goes to /tmp/redis.csv, then L2 is told.
redis_client() {
  local i=0
  rm -f /tmp/redis.csv
  until grep -q 'LAB-L2 mark redis-ready' /tmp/l2.log 2>/dev/null || [ $i -ge 1500 ]; do i=$((i + 1)); sleep 0.2; done
  timeout 240 redis-benchmark -h 10.99.1.2 -p 6379 -t set,get -n ${REDIS_N:-4000} -c 4 -d 64 --csv > /tmp/redis.csv 2>/dev/null
  nc -l -p 5004 -e echo done
}

VFIO_ARG=$BDF; [ "$MODE" = off ] && VFIO_ARG="$BDF,iommu=off"
for ROUND in $ROUNDS; do
  dd if=/dev/urandom of=/tmp/tx.bin bs=1M count=$MIB 2>/dev/null
  TX_SHA=$(sha256sum /tmp/tx.bin | cut -c1-64)
  killall nc redis-benchmark 2>/dev/null
  rm -f /tmp/rx.bin /tmp/stats.json /tmp/l2.log /tmp/redis.csv
  nc -l -p 5001 -e cat /tmp/tx.bin &
  ( nc -l -p 5002 > /tmp/rx.bin; nc -l -p 5003 -e echo received ) &
  [ -n "$REDIS" ] && redis_client &
  run_l2 "console=ttyS0 panic=-1 $L2_QUIET lab.mode=$MODE lab.mib=$MIB lab.round=$ROUND lab.tx_sha=$TX_SHA lab.idle=${POLL:+5} lab.redis=${REDIS:-0}" \
    --iommu "$MODE" --extra "--vfio $VFIO_ARG $POLL_ARGS"
  [ "$L2_EXIT" = 0 ]; check vmm-exit-$ROUND $((! $?)) "exit=$L2_EXIT"
  RX_BYTES=$(wc -c < /tmp/rx.bin 2>/dev/null || echo 0)
  RX_SHA=$(sha256sum /tmp/rx.bin 2>/dev/null | cut -c1-64)
  SENT=$(grep -o "LAB-L2 out_sha=[0-9a-f]*" /tmp/l2.log | head -1 | cut -d= -f2)
  [ -n "$SENT" ] && [ "$RX_SHA" = "$SENT" ] && [ "$RX_BYTES" = $((MIB << 20)) ]
  check net-l2-to-l1-$ROUND $((! $?)) "bytes=$RX_BYTES"
  emit_row
  if [ "$MODE" = off ]; then
    check stats-shape-$ROUND 1 "no viommu"
  elif [ -f /tmp/stats.json ]; then
    echo "LAB-STATS-BEGIN"; cat /tmp/stats.json; echo "LAB-STATS-END"
    UNMAPS=$(jpath viommu.requests.unmap); MAPS=$(jpath viommu.requests.map)
    VUNMAPS=$(jpath vfio.dma.viommu.unmap.calls); VMAPS=$(jpath vfio.dma.viommu.map.calls)
    echo "LAB-L1 stats round=$ROUND map=$MAPS unmap=$UNMAPS vfio_map=$VMAPS vfio_unmap=$VUNMAPS$(sample_fields)"
    [ -n "$POLL" ] && poll_checks "-$ROUND"
    case "$MODE" in
      strict)
        [ "${UNMAPS:-0}" -gt 0 ] && [ $((VUNMAPS * 10)) -ge $((UNMAPS * 8)) ] && [ $((VUNMAPS * 10)) -le $((UNMAPS * 12)) ]
        check stats-shape-$ROUND $((! $?)) "guest unmap=$UNMAPS vfio unmap=$VUNMAPS (strict: vfio unmaps ~ guest UNMAPs)";;
      lazy)
        [ "${UNMAPS:-0}" -gt 0 ] && [ "${VUNMAPS:-0}" -gt 0 ]
        check stats-shape-$ROUND $((! $?)) "guest unmap=$UNMAPS vfio unmap=$VUNMAPS";;
      passthrough)
        [ "${MAPS:-1}" = 0 ] && [ "${VMAPS:-0}" -gt 0 ]
        check stats-shape-$ROUND $((! $?)) "guest map=$MAPS vfio map=$VMAPS (identity)";;
    esac
  else
    check stats-shape-$ROUND 0 "no stats file"
  fi
done
