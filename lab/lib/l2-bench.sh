# The bench workload, inside L2: the assigned e1000e as 10.99.1.2 (behind
# the virtual IOMMU unless the mode is off) and the servers L1's load
# generators use (l1-bench.sh), started by l2-bench-servers.sh:
# redis-server, memcached, nginx, iperf3. Then
# L2 waits until L1 says the items are done (a connection to port 5005).
nic_up 10.99.1.2/24
echo "LAB-L2 bench link $IF carrier=$(cat /sys/class/net/$IF/carrier 2>/dev/null)"
. /lib/lab/l2-bench-servers.sh
bench_servers 10.99.1.2
mark bench-ready
# Any connection is the signal (stdin from /dev/null: no console input).
timeout "${BENCH_L2_WAIT:-1500}" nc -l -p 5005 < /dev/null > /dev/null
mark bench-end
# The link goes down while the virtual IOMMU still serves requests
# (l2-vfio.sh says why).
ip link set "$IF" down
