# The protect workload, inside L2: edu_dma drives the assigned edu, vblk_dma
# the virtio-blk (both guest-kernel-patches/, loaded by l2-init); their
# results go to L1 as "LAB-L2 edu ..." and "LAB-L2 vb ..." lines, which
# lab/lib/l1-protect.sh judges per mode.
mount -t debugfs debugfs /sys/kernel/debug 2>/dev/null
# run PREFIX FILE COMMAND...: one command, its result lines prefixed.
run() {
  local p=$1 f=$2; shift 2
  echo "$*" > "$f" || echo "LAB-L2 $p error=command-failed cmd=$1"
  sed "s/^/LAB-L2 $p /" "$f"
}
E=/sys/kernel/debug/edu_dma/cmd; V=/sys/kernel/debug/vblk_dma/cmd
[ -e $E ] && run edu $E info | tee /tmp/info.txt
grep -q ' live=1 ' /tmp/info.txt 2>/dev/null; check edu-bound $((! $?)) "$(cat /tmp/info.txt 2>/dev/null | head -1)"
# coop: first a page never mapped (before any page is freed and
# reused), then the window right after an unmap, then the same DMA after
# the host's unpin (lab.late_ms, several scan intervals).
[ "$MODE" = coop ] && { mark edu-never; run edu $E never; }
mark edu-once; run edu $E once
[ "$MODE" = coop ] && { mark edu-late; run edu $E late "$(arg late_ms)"; }
# Unmap up to 40 ms before the device's transfer (it runs 100 ms after
# the command): the lazy flush queue's 10 ms timeout lies inside.
[ "$MODE" = coop ] || { mark edu-window; run edu $E window "$(arg edu_tries)" 40; }
[ -e $V ] || echo "LAB-L2 vb error=not-bound"
mark vb-once; run vb $V once 90
[ "$MODE" = coop ] || { mark vb-window; run vb $V window "$(arg vb_tries)" 200 90; }
# The virtio-iommu driver's fault reports (the event queue's fault events).
echo "LAB-L2 viommu_fault_lines=$(dmesg | grep -c 'fault from EP')"
dmesg | grep 'fault from EP' | tail -n 2 | sed 's/^/LAB-L2 dmesg: /'
mark protect-end
