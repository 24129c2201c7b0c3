# The start workload (scenario coop-start), L1 half: one L2 of $L2_MEM
# with the NIC prep=vfio assigned, run once per mode (off before coop).
# Start time is L1's clock from the VMM's start to L2's mark net-up (its
# NIC up and a ping answered); pinned memory is what the host IOMMU held
# then: all of RAM under off (the identity container), the pinned set
# under coop. The last mode's run compares with the off run's figures.
#   start-pinned  off pinned all of L2's RAM; coop's peak <= 5% of it
#   start-time    both times and off's pinning, measured (not gated)
VFIO_ARG=$BDF; [ "$MODE" = off ] && VFIO_ARG="$BDF,iommu=off"
rm -f /tmp/stats.json
run_l2 "console=ttyS0 panic=-1 $L2_QUIET lab.mode=$MODE lab.round=$ROUND" --iommu "$MODE" --extra "--vfio $VFIO_ARG"
[ "$L2_EXIT" = 0 ]; check vmm-exit$SFX $((! $?)) "exit=$L2_EXIT"
RAM=$(l2_ram_bytes)
S=$(awk -v a="$(sample_at vmm-start t)" -v b="$(sample_at net-up t)" 'BEGIN { if (a != "" && b != "") printf "%.1f", b - a }')
case "$MODE" in
  off)
    PIN_MS=$(grep 'guest RAM mapped at IOVA' /tmp/vmm.log | grep -o 'ms=[0-9]*' | cut -d= -f2)
    echo "${S:-?} ${PIN_MS:-?} $(jn .vfio.dma.identity.mapped_bytes)" > /tmp/start-off
    echo "LAB-L1 start mode=off start_s=${S:-?} pin_ms=${PIN_MS:-?} pinned=$(jn .vfio.dma.identity.mapped_bytes)";;
  coop)
    read -r OFF_S OFF_PIN OFF_B < /tmp/start-off 2>/dev/null
    AT=$(sample_at net-up pinned); PEAK=$(jn .viommu.coop.pinned_peak_bytes)
    echo "LAB-L1 start mode=coop start_s=${S:-?} pinned_at_net_up=${AT:-?} peak=$PEAK"
    [ "${OFF_B:-0}" = "$RAM" ] && [ "$PEAK" -gt 0 ] && [ $((PEAK * 20)) -le "$RAM" ]
    check start-pinned $((! $?)) "pinned: off ${OFF_B:-?} B (all of $RAM), coop peak $PEAK B = $(awk -v p="$PEAK" -v r="$RAM" 'BEGIN { printf "%.2f", p * 100 / r }')% (want <= 5%)"
    skip start-time "measured: VMM start to NIC up: off ${OFF_S:-?} s (of which pinning all RAM ${OFF_PIN:-?} ms), coop ${S:-?} s";;
esac
