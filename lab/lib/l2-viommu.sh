# The viommu workload, inside L2: disk and NIC (behind the virtual IOMMU
# unless the mode is off), $MIB MiB each way over both.
echo "LAB-L2 cpu$(grep -m1 ^flags /proc/cpuinfo | cut -d: -f2)"
if [ "$MODE" = off ]; then
  skip viommu-bound$SFX "no virtual IOMMU (mode off)"
else
  ls /sys/bus/virtio/drivers/virtio_iommu/ 2>/dev/null | grep -q virtio; check viommu-bound$SFX $((! $?)) "virtio_iommu"
fi
sleep 1
# coop: the patched driver gives its endpoints identity domains.
case "$MODE" in strict) WANT=DMA;; lazy) WANT=DMA-FQ;; passthrough|coop) WANT=identity;; esac
TYPES=""
for dev in /sys/bus/pci/devices/*; do
  drv=$(basename "$(readlink "$dev/driver" 2>/dev/null)" 2>/dev/null)
  [ "$drv" = virtio-pci ] || continue
  [ -e "$dev/iommu_group" ] || continue
  TYPES="$TYPES $(basename "$dev"):$(cat "$dev/iommu_group/type")"
done
echo "LAB-L2 iommu groups:$TYPES"
if [ "$MODE" = off ]; then
  skip group-type$SFX "no virtual IOMMU (mode off)"
else
  N=$(echo "$TYPES" | tr ' ' '\n' | grep -c ":$WANT\$")
  [ "$N" -ge 2 ]; check group-type$SFX $((! $?)) "want $WANT:$TYPES"
fi
SHA=$(head -c $((MIB << 20)) /dev/vda | sha256sum | cut -c1-64)
[ "$SHA" = "$(arg disk_sha)" ]; check blk-read$SFX $((! $?)) "$MIB MiB"
IF=$(ls /sys/class/net | grep -v '^lo$' | head -1)
ip link set lo up; ip link set "$IF" up; ip addr add 10.99.0.2/24 dev "$IF"
ping -c 2 -W 3 10.99.0.1 >/dev/null; check net-ping$SFX $((! $?)) "$IF"
mark net-start
T0=$(cut -d' ' -f1 /proc/uptime)
timeout 300 nc 10.99.0.1 5001 > /tmp/in.bin
T1=$(cut -d' ' -f1 /proc/uptime)
SHA=$(sha256sum /tmp/in.bin | cut -c1-64)
[ "$SHA" = "$(arg tx_sha)" ]; check net-l1-to-l2$SFX $((! $?)) "bytes=$(wc -c < /tmp/in.bin) in $(echo "$T1 $T0" | awk '{print $1-$2}')s"
mark blk-write
dd if=/tmp/in.bin of=/dev/vda bs=1M seek=20 conv=fsync 2>/dev/null
rm -f /tmp/in.bin
mark blk-read
head -c $((MIB << 20)) /dev/vda > /tmp/out.bin
mark net-send
T2=$(cut -d' ' -f1 /proc/uptime)
timeout 300 nc 10.99.0.1 5002 -e cat /tmp/out.bin
T3=$(cut -d' ' -f1 /proc/uptime)
mark net-end
echo "LAB-L2 timing l1_to_l2_s=$(echo "$T1 $T0" | awk '{print $1-$2}') l2_to_l1_s=$(echo "$T3 $T2" | awk '{print $1-$2}')"
i=0
until [ "$(timeout 5 nc 10.99.0.1 5003 2>/dev/null)" = received ] || [ $i -ge 60 ]; do i=$((i + 1)); sleep 1; done
idle_phase
