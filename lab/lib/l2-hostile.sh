# The hostile workload, inside L2: the project's test module viommu_test
# (guest-kernel-patches/, loaded by l2-init from L2_MODULES) drives the
# virtual IOMMU in place of the stock driver, which is not in the image.
# Its results come from its debugfs file as "LAB-L2 vt ..." lines; L1
# (l1-hostile.sh) turns the rates into a LAB-ROW and measures the VMM's
# CPU between the marks broken-a and broken-b.
SECS=$(arg flood_secs); SECS=${SECS:-3}
mount -t debugfs debugfs /sys/kernel/debug 2>/dev/null
CMD=/sys/kernel/debug/viommu_test/cmd
# vt COMMAND...: runs one viommu_test command and prints its result lines.
vt() {
  echo "$*" > $CMD || echo "LAB-L2 vt error=command-failed cmd=$1"
  sed 's/^/LAB-L2 vt /' $CMD | tee /tmp/vt.out
}
# field KEY: the value of KEY= in the last command's result.
field() { sed -n "s/.* $1=\([^ ]*\).*/\1/p" /tmp/vt.out | head -1; }
[ -e $CMD ] && vt info && [ -n "$(field endpoint)" ] && [ "$(field endpoint)" != none ]
check vt-bound $((! $?)) "endpoint=$(field endpoint) ep_id=$(field ep_id) domains=$(field domains) probe_size=$(field probe_size)"

# L2's own speed under this VMM (a shell loop: no device, no exit), to
# tell the guest's share of the flood's time from the device's.
T0=$(cut -d' ' -f1 /proc/uptime); i=0; while [ $i -lt 20000 ]; do i=$((i + 1)); done
echo "LAB-L2 vt loop ms=$(echo "$(cut -d' ' -f1 /proc/uptime) $T0" | awk '{printf "%d", ($1 - $2) * 1000}')"

# 1. The flood: valid 4 KiB MAP/UNMAP pairs, 128 per notification, then one.
for b in 128 1; do
  n=batched; [ $b = 1 ] && n=single
  mark flood-$n
  vt flood $b "$SECS"
  [ "$(field result)" = done ] && [ "$(field errors)" = 0 ] && [ "$(field rate)" -gt 0 ] 2>/dev/null
  check flood-$n $((! $?)) "$(field rate) req/s ($(field requests) requests, errors=$(field errors) first=$(field first_error))"
done

mark flood-done

# 2. The spec probes (virtio 1.2 5.13.6): one line per probe, expected
# status against the one the device gave.
vt spec
for n in attach-reserved unmap-reserved map-msi truncated empty no-request no-status alive; do
  l=$(grep " name=$n " /tmp/vt.out)
  ok=$(echo "$l" | sed -n 's/.* ok=\([01]\).*/\1/p')
  check spec-$n "${ok:-0}" "$(echo "${l:-missing}" | sed 's/.* expect=/expect=/; s/ ok=.*//')"
done

# 3. The broken ring, last (it breaks the device), on a freshly reset
# device: a probe above may have left it waiting for a reset (QEMU marks
# itself broken on the empty request). A device that never finishes the
# reset holds L2's vCPU; L1's stall detector then ends the run.
vt reset
vt broken 3000
check broken-needs-reset "$(field needs_reset | grep -x 1 || echo 0)" "status=$(field status) avail_idx=$(field avail_idx) qsize=$(field qsize)"
check broken-config-irq "$(field config_irq | grep -x 1 || echo 0)" "config interrupt after $(field config_irq_ms) ms (waited 3000)"
mark broken-a; sleep 3; mark broken-b; sleep 1  # L1 samples the mark before the reset
vt reset
[ "$(field served)" = 1 ]; check broken-recover $((! $?)) "reset_ms=$(field reset_ms) attach=$(field attach) map=$(field map) unmap=$(field unmap)"
