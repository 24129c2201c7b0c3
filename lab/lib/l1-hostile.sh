# The hostile workload, L1 half (one L2 run): L2 gets a virtio-net behind
# the virtual IOMMU, only as the endpoint (its driver is not in L2's
# image), and runs the test module viommu_test (l2-hostile.sh). Here: the
# VMM, its CPU while L2 leaves the broken ring pending, and one LAB-ROW
# with the request rates (docs/performance.md). Under LAB_VMM=qemu the
# same L2 runs behind QEMU's virtio-iommu-pci.
SECS=$(arg flood_secs); SECS=${SECS:-3}
POLL_ARGS=""; [ -n "$POLL" ] && POLL_ARGS="--iommu-poll $POLL --iommu-poll-budget-us ${POLL_BUDGET_US:-20000}"
rm -f /tmp/stats.json
run_l2 "console=ttyS0 panic=-1 $L2_QUIET lab.flood_secs=$SECS" --net tap0 --iommu "$MODE" --extra "$POLL_ARGS"
[ "$L2_EXIT" = 0 ]; check vmm-exit $((! $?)) "exit=$L2_EXIT"

sed 's/^/LAB-L1 sample /' /tmp/samples.txt
# The CPU of where the VMM serves the virtio-iommu (l1-stats.sh
# dev_ticks: iovmm's device thread, QEMU's process) from broken-a to
# broken-b, 3 s in which L2 sleeps and only the broken ring is pending: a
# device that spins on it uses a whole core; an idle L2 costs the VMM
# process about 10% of one under the emulator.
T=$(sample_delta broken-a broken-b dev_ticks); S=$(sample_delta broken-a broken-b t)
PCT=""; [ -n "$T" ] && [ -n "$S" ] && PCT=$(echo "$T $S" | awk '$2 > 0 { printf "%.1f", $1 / $2 }')
[ -n "$PCT" ] && awk -v p="$PCT" 'BEGIN { exit !(p < 50) }'
check broken-no-spin $((! $?)) "$VMM CPU serving the virtio-iommu after the broken ring: ${PCT:-unmeasured}% of a core over ${S:-?}s (want < 50%)"

rate() { sed -n "s/.*LAB-L2 vt flood batch=$1 .* rate=\([0-9]*\) .*/\1/p" /tmp/l2.log | tail -1; }
echo "LAB-ROW mode=$MODE${POLL:++poll} flood_s=$SECS batched_rps=$(rate 128) single_rps=$(rate 1) broken_cpu_pct=$PCT l2_loop_ms=$(sed -n 's/.*LAB-L2 vt loop ms=\([0-9]*\).*/\1/p' /tmp/l2.log | tail -1)"
stats_dump
