# The vfio workload, inside L2: the assigned e1000e (behind the virtual
# IOMMU unless the mode is off), $MIB MiB each way, then Redis if asked.
nic_up 10.99.1.2/24
[ "$(cat /sys/class/net/$IF/carrier 2>/dev/null)" = 1 ]; check link-up$SFX $((! $?)) "$IF"
if [ "$MODE" != off ]; then
  # coop: the patched driver gives its endpoints identity domains.
  case "$MODE" in strict) WANT=DMA;; lazy) WANT=DMA-FQ;; passthrough|coop) WANT=identity;; esac
  DEV=$(readlink -f /sys/class/net/$IF/device)
  T=$(cat "$DEV/iommu_group/type" 2>/dev/null)
  [ "$T" = "$WANT" ]; check group-type$SFX $((! $?)) "want $WANT: $T"
else
  skip group-type$SFX "no virtual IOMMU (mode off)"
fi
ping -c 2 -W 5 10.99.1.1 >/dev/null; check net-ping$SFX $((! $?)) "$IF"
mark net-start
T0=$(cut -d' ' -f1 /proc/uptime)
timeout 300 nc 10.99.1.1 5001 > /tmp/in.bin
T1=$(cut -d' ' -f1 /proc/uptime)
SHA=$(sha256sum /tmp/in.bin | cut -c1-64)
[ "$SHA" = "$(arg tx_sha)" ]; check net-l1-to-l2$SFX $((! $?)) "bytes=$(wc -c < /tmp/in.bin) in $(echo "$T1 $T0" | awk '{print $1-$2}')s"
rm -f /tmp/in.bin
dd if=/dev/urandom of=/tmp/out.bin bs=1M count=$MIB 2>/dev/null
echo "LAB-L2 out_sha=$(sha256sum /tmp/out.bin | cut -c1-64)"
mark net-send
T2=$(cut -d' ' -f1 /proc/uptime)
timeout 300 nc 10.99.1.1 5002 -e cat /tmp/out.bin
T3=$(cut -d' ' -f1 /proc/uptime)
mark net-end
echo "LAB-L2 timing l1_to_l2_s=$(echo "$T1 $T0" | awk '{print $1-$2}') l2_to_l1_s=$(echo "$T3 $T2" | awk '{print $1-$2}')"
# lab.redis=1: serve Redis until L1's redis-benchmark is done (L1 answers
# "done" on port 5004).
if [ "$(arg redis)" = 1 ]; then
  redis-server --port 6379 --save '' --appendonly no --protected-mode no --daemonize yes --logfile /tmp/redis.log
  sleep 2
  mark redis-ready
  i=0; until [ "$(timeout 5 nc 10.99.1.1 5004 2>/dev/null)" = done ] || [ $i -ge 300 ]; do i=$((i + 1)); sleep 1; done
  mark redis-end
fi
idle_phase
# coop: a guest that maps more than the host's pin budget (dma_flood):
# its maps fail cleanly, and the NIC still works afterwards.
if [ "$MODE" = coop ] && [ -f /lib/modules/dma_flood.ko ]; then
  insmod /lib/modules/dma_flood.ko pages=${FLOOD_PAGES:-24576}
  echo "LAB-L2 flood $(dmesg | grep -o 'dma_flood: wanted=.*' | tail -1 | cut -c12-)"
  rmmod dma_flood 2>/dev/null
  ping -c 2 -W 5 10.99.1.1 >/dev/null; check net-ping-after-flood $((! $?)) "$IF"
fi
i=0
until [ "$(timeout 5 nc 10.99.1.1 5003 2>/dev/null)" = received ] || [ $i -ge 60 ]; do i=$((i + 1)); sleep 1; done
# Take the link down while the virtual IOMMU still serves requests: the
# kernel shuts the virtio-iommu device down before the e1000e at poweroff
# (reset, queues broken), so RX buffers unmapped later fail their UNMAP
# with a WARN each (~256 stack dumps on the console).
ip link set "$IF" down
