# prep=edu: QEMU's edu device (1234:11e8, lab/run adds it; VT-d is on) is
# bound to vfio-pci for the protect workload to assign to L2 (check
# edu-bind). EDU_BDF names it; DMAR faults L1's kernel logs for it are
# counted by edu_faults.
EDU_BDF=$(for d in /sys/bus/pci/devices/*; do
  [ "$(cat $d/vendor):$(cat $d/device)" = 0x1234:0x11e8 ] && basename $d; done | head -1)
if [ -n "$EDU_BDF" ]; then
  echo vfio-pci > /sys/bus/pci/devices/$EDU_BDF/driver_override
  echo "$EDU_BDF" > /sys/bus/pci/drivers_probe
fi
EDU_GROUP=$(basename "$(readlink /sys/bus/pci/devices/$EDU_BDF/iommu_group 2>/dev/null)")
EDU_DRV=$(basename "$(readlink /sys/bus/pci/devices/$EDU_BDF/driver 2>/dev/null)")
[ -n "$EDU_BDF" ] && [ "$EDU_DRV" = vfio-pci ] && [ -c "/dev/vfio/$EDU_GROUP" ]
check edu-bind $((! $?)) "bdf=${EDU_BDF:-none} driver=$EDU_DRV group=$EDU_GROUP"
# edu_faults: DMAR fault lines for the edu in L1's kernel log so far
# ("DMAR: [DMA Write NO_PASID] Request device [00:03.0] fault addr ...").
EDU_SHORT=${EDU_BDF#0000:}
edu_faults() { dmesg | grep 'DMAR: \[DMA' | grep -c "device \[$EDU_SHORT\]"; }
