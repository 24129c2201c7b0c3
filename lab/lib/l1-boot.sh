# The boot workload, L1 half: an 8 MiB disk (4 MiB of known data, then
# zeros; L2 writes 1 MiB at 6 MiB) and 1 MiB each way over tap0.
dd if=/dev/urandom of=/tmp/disk.img bs=1M count=4 2>/dev/null
dd if=/dev/zero bs=1M count=4 2>/dev/null >> /tmp/disk.img
DISK_SHA=$(head -c 4194304 /tmp/disk.img | sha256sum | cut -c1-64)
# Network: L1 serves 1 MiB on port 5001 and receives on 5002.
dd if=/dev/urandom of=/tmp/tx.bin bs=1M count=1 2>/dev/null
TX_SHA=$(sha256sum /tmp/tx.bin | cut -c1-64)
killall nc 2>/dev/null
nc -l -p 5001 -e cat /tmp/tx.bin &
# After receiving on 5002, acknowledge on 5003 so L2 powers off only then.
( nc -l -p 5002 > /tmp/rx.bin; nc -l -p 5003 -e echo received ) &
run_l2 "console=ttyS0 panic=-1 $L2_QUIET lab.mode=$MODE lab.round=$ROUND lab.vcpus=$L2_VCPUS lab.disk_sha=$DISK_SHA lab.tx_sha=$TX_SHA" \
  --disk /tmp/disk.img --net tap0 --iommu "$MODE"
[ "$L2_EXIT" = 0 ]; check vmm-exit$SFX $((! $?)) "exit=$L2_EXIT"
W=$(dd if=/tmp/disk.img bs=1M skip=6 count=1 2>/dev/null | tr -d 'L' | wc -c)
[ "$W" = 0 ]; check blk-write$SFX $((! $?)) "non-L bytes at 6MiB=$W"
RX_SHA=$(sha256sum /tmp/rx.bin | cut -c1-64)
echo "LAB-L1 rx_sha=$RX_SHA bytes=$(wc -c < /tmp/rx.bin)"
