# prep=vfio: L1 has two e1000e NICs on one QEMU hub (lab/run adds them,
# and VT-d is on): it keeps 52:54:00:12:00:01 as 10.99.1.1 and binds the
# other to vfio-pci for the vfio workload to assign to L2. Then, once per
# L1 boot, iovmm's errors for a misconfigured --vfio (check vfio-errors).
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
