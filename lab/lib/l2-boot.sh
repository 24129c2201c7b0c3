# The boot workload, inside L2: CPUs, the disk, the NIC.
N=$(grep -c ^processor /proc/cpuinfo)
[ "$N" = "$(arg vcpus)" ]; check cpus$SFX $((! $?)) "$N"
sleep 1
SHA=$(head -c 4194304 /dev/vda | sha256sum | cut -c1-64)
[ "$SHA" = "$(arg disk_sha)" ]; check blk-read$SFX $((! $?)) "$SHA"
head -c 1048576 /dev/zero | tr '\0' 'L' | dd of=/dev/vda bs=1M seek=6 conv=fsync 2>/dev/null
IF=$(ls /sys/class/net | grep -v '^lo$' | head -1)
ip link set lo up; ip link set "$IF" up; ip addr add 10.99.0.2/24 dev "$IF"
ping -c 2 -W 3 10.99.0.1 >/dev/null; check net-ping$SFX $((! $?)) "$IF"
timeout 60 nc 10.99.0.1 5001 > /tmp/in.bin
SHA=$(sha256sum /tmp/in.bin | cut -c1-64)
[ "$SHA" = "$(arg tx_sha)" ]; check net-l1-to-l2$SFX $((! $?)) "bytes=$(wc -c < /tmp/in.bin)"
dd if=/dev/urandom of=/tmp/out.bin bs=1M count=1 2>/dev/null
echo "LAB-L2 sent_sha=$(sha256sum /tmp/out.bin | cut -c1-64)"
timeout 60 nc 10.99.0.1 5002 -e cat /tmp/out.bin
i=0
until [ "$(timeout 5 nc 10.99.0.1 5003 2>/dev/null)" = received ] || [ $i -ge 30 ]; do i=$((i + 1)); sleep 1; done
