# The start workload (scenario coop-start), inside L2: the assigned
# e1000e up (behind the virtual IOMMU unless the mode is off), one ping
# answered, and the mark L1 times the start by (net-up).
nic_up 10.99.1.2/24
[ "$(cat /sys/class/net/$IF/carrier 2>/dev/null)" = 1 ]; check link-up$SFX $((! $?)) "$IF"
ping -c 2 -W 5 10.99.1.1 >/dev/null; check net-ping$SFX $((! $?)) "$IF"
mark net-up
sleep 3  # L1 samples the mark while the VMM lives (coop: a stats snapshot)
echo "LAB-L2 memory $(grep MemTotal /proc/meminfo | tr -s ' ')"
ip link set "$IF" down
