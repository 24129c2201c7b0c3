# The protect workload, L1 half (one L2 run per mode; docs/protection.md):
# L2 gets the edu (prep=edu, assigned through VFIO: L1's VT-d translates
# for it) and a virtio-blk (iovmm's own translation), both behind iovmm's
# virtio-iommu in MODE (none under off). L2's modules edu_dma and vblk_dma
# make each device DMA into a page, unmap it and DMA again to the stale
# address (lab/lib/l2-protect.sh). Here: the verdict per mode, with L1's
# DMAR fault log for the edu and iovmm's fault counters for the
# virtio-blk, and one LAB-ROW line.
#   strict       protect-strict-edu, protect-strict-virtio: the DMA after
#                the unmap reached nothing, and the fault was seen
#   lazy         protect-lazy-window: the window after unmap in which DMA
#                still lands, measured (pass when measured)
#   passthrough, off  protect-<mode>: reported as unprotected (those modes
#                promise nothing; pass when the report is produced)
#   coop         protect-coop: what docs/coop.md states, with a 1 s unpin
#                scan and 4 KiB pins: a page never mapped faults, the stale
#                DMA right after an unmap lands (the window), the same DMA
#                3.5 scans later faults (unpinned); protect-coop-virtio:
#                the virtio-blk's stale read right after the unmap is
#                reported (it lands: the page is still pinned)
COOP_SCAN_MS=1000; LATE_MS=3500
VFIO_ARG=$EDU_BDF; [ "$MODE" = off ] && VFIO_ARG="$EDU_BDF,iommu=off"
COOP_ARGS=""; [ "$MODE" = coop ] && COOP_ARGS="--coop-scan-ms $COOP_SCAN_MS --coop-granule 4K"
rm -f /tmp/stats.json
# Sector 0 of the disk is 4 KiB of 'Z' (0x5a): what a read that lands writes.
head -c 1048576 /dev/zero | tr '\0' 'Z' > /tmp/disk.img
F0=$(edu_faults)
run_l2 "console=ttyS0 panic=-1 $L2_QUIET lab.mode=$MODE lab.edu_tries=${EDU_TRIES:-60} lab.vb_tries=${VB_TRIES:-100} lab.late_ms=$LATE_MS" \
  --disk /tmp/disk.img --iommu "$MODE" --extra "--vfio $VFIO_ARG $COOP_ARGS"
[ "$L2_EXIT" = 0 ]; check vmm-exit $((! $?)) "mode=$MODE exit=$L2_EXIT"
F1=$(edu_faults)
DMAR=$((F1 - F0))
dmesg | grep 'DMAR: \[DMA' | grep "device \[$EDU_SHORT\]" | tail -n 2 | sed 's/^/LAB-L1 dmar: /'
# kv PREFIX KEY: KEY= of L2's last "LAB-L2 PREFIX ..." line.
kv() { grep -a "LAB-L2 $1 " /tmp/l2.log | tail -1 | tr ' \r' '\n\n' | sed -n "s/^$2=//p"; }
EO1=$(kv "edu once" first); EO2=$(kv "edu once" second); EMS=$(kv "edu once" dma_after_unmap_ms)
ET=$(kv "edu window" tries); EL=$(kv "edu window" landed); EM=$(kv "edu window" missed)
EERR=$(kv "edu window" error)
EDIST="landed=${EL:-?}/${ET:-?} missed=${EM:-?} before_unmap=$(kv "edu window" before_unmap) landed_us[min/p50/p99/max]=$(kv "edu window" landed_min_us)/$(kv "edu window" landed_p50_us)/$(kv "edu window" landed_p99_us)/$(kv "edu window" landed_max_us) missed_min_us=$(kv "edu window" missed_min_us)"
VO1=$(kv "vb once" first); VO2=$(kv "vb once" second); VS2=$(kv "vb once" second_status)
VT=$(kv "vb window" tries); VERR=$(kv "vb window" error)
VDIST="tries=${VT:-?} closed=$(kv "vb window" closed) open=$(kv "vb window" open) none_after_unmap=$(kv "vb window" no_dma_after_unmap) us[min/p50/p99/max]=$(kv "vb window" min_us)/$(kv "vb window" p50_us)/$(kv "vb window" p99_us)/$(kv "vb window" max_us)"
FAULTS=$(jn .viommu.faults); FEV=$(jn .viommu.fault_events)
L2FAULT=$(sed -n 's/.*LAB-L2 viommu_fault_lines=\([0-9]*\).*/\1/p' /tmp/l2.log | tail -1)
echo "LAB-L1 protect mode=$MODE edu: once first=$EO1 second=$EO2 (${EMS}ms after unmap) window $EDIST dmar_lines=$DMAR; virtio: once first=$VO1 second=$VO2 status=$VS2 window $VDIST faults=$FAULTS fault_events=$FEV l2_fault_lines=${L2FAULT:-?}"
case "$MODE" in
  strict)
    [ "$EO1" = landed ] && [ "$EO2" = unchanged ] && [ "${EL:-1}" = 0 ] && [ "${ET:-0}" -gt 0 ] && [ "$EERR" = 0 ] && [ "$DMAR" -gt 0 ]
    check protect-strict-edu $((! $?)) "first=$EO1 second=$EO2 window: $EDIST; L1 DMAR fault lines for $EDU_SHORT: $DMAR"
    VCL=$(kv "vb window" closed)
    [ "$VO1" = landed ] && [ "$VO2" = unchanged ] && [ "$VS2" = ioerr ] && [ "$(kv "vb window" no_dma_after_unmap)" = "$VT" ] \
      && [ "${VT:-0}" -gt 0 ] && [ "$VERR" = 0 ] && [ "$FAULTS" -gt 0 ] && [ "$FEV" -gt 0 ] && [ "${L2FAULT:-0}" -gt 0 ]
    check protect-strict-virtio $((! $?)) "first=$VO1 second=$VO2 status=$VS2 window: $VDIST; viommu.faults=$FAULTS fault_events=$FEV L2 fault lines=${L2FAULT:-0}";;
  lazy)
    [ "${ET:-0}" -gt 0 ] && [ "$EERR" = 0 ] && [ -n "$EL" ]
    check protect-lazy-window $((! $?)) "edu (VFIO): $EDIST"
    [ "${VT:-0}" -gt 0 ] && [ "$VERR" = 0 ]
    check protect-lazy-virtio-window $((! $?)) "virtio-blk: $VDIST; viommu.faults=$FAULTS";;
  coop)
    NV=$(kv "edu never" result); LO1=$(kv "edu late" first); LO2=$(kv "edu late" second); LMS=$(kv "edu late" dma_after_unmap_ms)
    [ "$NV" = unchanged ] && [ "$EO1" = landed ] && [ "$EO2" = landed ] && [ "$LO1" = landed ] && [ "$LO2" = unchanged ] && [ "$DMAR" -gt 0 ]
    check protect-coop $((! $?)) "never-mapped page: $NV; right after unmap (${EMS}ms): $EO2 (the window); ${LMS:-?}ms after unmap (scan ${COOP_SCAN_MS}ms): $LO2; L1 DMAR fault lines: $DMAR; pinned_peak=$(jn .viommu.coop.pinned_peak_bytes) unpinned_chunks=$(jn .viommu.coop.unpinned_chunks)"
    [ "$VO1" = landed ] && [ -n "$VO2" ]
    check protect-coop-virtio $((! $?)) "virtio-blk stale read right after unmap: $VO2 status=$VS2 (pinned pages stay reachable until unpinned)";;
  *)
    V=unprotected; [ "$EO2" = landed ] || V="edu second=$EO2"; [ "$VO2" = landed ] || V="$V virtio second=$VO2"
    [ -n "$EO2" ] && [ -n "$VO2" ]
    check protect-$MODE $((! $?)) "$V (mode $MODE promises nothing after unmap): edu second=$EO2, window $EDIST; virtio second=$VO2 window $VDIST";;
esac
echo "LAB-ROW mode=$MODE edu_first=$EO1 edu_second=$EO2 edu_tries=$ET edu_landed_after_unmap=$EL edu_landed_max_us=$(kv "edu window" landed_max_us) edu_missed_min_us=$(kv "edu window" missed_min_us) dmar_faults=$DMAR virtio_first=$VO1 virtio_second=$VO2 virtio_status=$VS2 virtio_window_p50_us=$(kv "vb window" p50_us) virtio_window_max_us=$(kv "vb window" max_us) viommu_faults=$FAULTS fault_events=$FEV"
stats_dump
