//! The x86_64 guest-physical address map of an iovmm VM.
//!
//! ```text
//! 0x0000_0000  low RAM: boot structures (GDT, page tables, zero page, cmdline)
//! 0x0009_fc00  reserved: EBDA, ACPI tables (0xe_0000..0x10_0000), BIOS area
//! 0x0010_0000  RAM (kernel loaded here) ... up to min(mem, 3 GiB)
//! 0xc000_0000  32-bit PCI MMIO window (512 MiB), BARs of 32-bit devices
//! 0xe000_0000  PCI ECAM (bus 0 only: 1 MiB used, 256 MiB reserved)
//! 0xfec0_0000  IOAPIC
//! 0xfee0_0000  local APIC
//! 0x1_0000_0000 RAM above 4 GiB (the part of guest memory beyond 3 GiB)
//! align_up(top of RAM, 1 GiB): 64-bit PCI MMIO window (64 GiB)
//! ```
//! Port I/O: COM1 0x3f8, i8042 0x60/0x64, PCI config 0xcf8..0xcff,
//! ACPI sleep control/status and reset registers at [`ACPI_PM_PORT`].

/// Start of the kernel load area (1 MiB).
pub const HIMEM_START: u64 = 0x10_0000;
/// GDT used for the 64-bit boot.
pub const BOOT_GDT_START: u64 = 0x500;
/// IDT (empty) used for the 64-bit boot.
pub const BOOT_IDT_START: u64 = 0x520;
/// PVH `hvm_start_info` structure.
pub const PVH_INFO_START: u64 = 0x6000;
/// PVH memory map entries, right after the start info.
pub const PVH_MEMMAP_START: u64 = 0x6040;
/// Linux zero page (`boot_params`).
pub const ZERO_PAGE_START: u64 = 0x7000;
/// Top of the boot stack.
pub const BOOT_STACK_POINTER: u64 = 0x8ff0;
/// Identity page tables: PML4, PDPT, PD.
pub const PML4_START: u64 = 0x9000;
/// Page directory pointer table.
pub const PDPTE_START: u64 = 0xa000;
/// Page directory (2 MiB pages mapping the first 1 GiB).
pub const PDE_START: u64 = 0xb000;
/// Kernel command line.
pub const CMDLINE_START: u64 = 0x2_0000;
/// Maximum command line size, including the NUL.
pub const CMDLINE_MAX_SIZE: usize = 0x1_0000;
/// Start of the EBDA; low RAM ends here.
pub const EBDA_START: u64 = 0x9_fc00;
/// ACPI tables area (RSDP first), inside the legacy BIOS range.
pub const ACPI_START: u64 = 0xe_0000;
/// End (exclusive) of the ACPI tables area.
pub const ACPI_END: u64 = 0x10_0000;
/// Start of the 32-bit MMIO hole.
pub const MMIO32_HOLE_START: u64 = 0xc000_0000;
/// Size of the 32-bit MMIO hole (up to 4 GiB).
pub const MMIO32_HOLE_SIZE: u64 = 0x4000_0000;
/// 32-bit PCI BAR window.
pub const PCI_MMIO32_START: u64 = 0xc000_0000;
/// Size of the 32-bit PCI BAR window.
pub const PCI_MMIO32_SIZE: u64 = 0x2000_0000;
/// PCI ECAM base (segment 0).
pub const PCI_ECAM_START: u64 = 0xe000_0000;
/// ECAM size reserved in the map (256 buses); iovmm decodes bus 0 only.
pub const PCI_ECAM_SIZE: u64 = 0x1000_0000;
/// ECAM size actually decoded (bus 0: 32 devices x 8 functions x 4 KiB).
pub const PCI_ECAM_BUS0_SIZE: u64 = 0x10_0000;
/// IOAPIC base.
pub const IOAPIC_START: u64 = 0xfec0_0000;
/// Local APIC base.
pub const APIC_START: u64 = 0xfee0_0000;
/// Start of RAM above the hole.
pub const RAM_64BIT_START: u64 = 0x1_0000_0000;
/// Size of the 64-bit PCI BAR window.
pub const PCI_MMIO64_SIZE: u64 = 0x10_0000_0000;
/// PCI I/O port window for BARs.
pub const PCI_IO_START: u64 = 0x1000;
/// Size of the PCI I/O port window.
pub const PCI_IO_SIZE: u64 = 0xc000;
/// COM1.
pub const COM1_PORT: u64 = 0x3f8;
/// COM1 IRQ (ISA).
pub const COM1_IRQ: u32 = 4;
/// i8042 data port (and 0x64 command port).
pub const I8042_PORT: u64 = 0x60;
/// ACPI registers: +0 sleep control, +1 sleep status, +2 reset.
pub const ACPI_PM_PORT: u64 = 0x600;
/// Value written to the ACPI reset register to reset.
pub const ACPI_RESET_VALUE: u8 = 0xfe;
/// SLP_TYP announced in `\_S5_` for power-off.
pub const ACPI_S5_SLP_TYP: u8 = 5;

/// Smallest supported guest memory (the kernel, initramfs and page tables
/// need room).
pub const MIN_MEMORY: u64 = 64 << 20;

/// One range of the guest-physical map.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Range {
    /// First address.
    pub start: u64,
    /// Length in bytes.
    pub len: u64,
}

impl Range {
    /// One past the last address.
    pub fn end(&self) -> u64 {
        self.start + self.len
    }
}

/// Kind of an e820 entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum E820Kind {
    /// Usable RAM (type 1).
    Ram = 1,
    /// Reserved (type 2).
    Reserved = 2,
}

/// The map of one VM, computed from its memory size.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MemoryLayout {
    /// RAM regions backed by guest memory, ascending.
    pub ram: Vec<Range>,
    /// 64-bit PCI BAR window.
    pub mmio64: Range,
}

impl MemoryLayout {
    /// Computes the layout for `mem_size` bytes of RAM. RAM fills
    /// `[0, 3 GiB)` first and continues at 4 GiB.
    pub fn new(mem_size: u64) -> Self {
        let low = mem_size.min(MMIO32_HOLE_START);
        let mut ram = vec![Range { start: 0, len: low }];
        let high = mem_size - low;
        if high > 0 {
            ram.push(Range {
                start: RAM_64BIT_START,
                len: high,
            });
        }
        let top = ram
            .last()
            .map(|r| r.end())
            .unwrap_or(0)
            .max(RAM_64BIT_START);
        let gib = 1u64 << 30;
        let mmio64_start = top.div_ceil(gib) * gib;
        MemoryLayout {
            ram,
            mmio64: Range {
                start: mmio64_start,
                len: PCI_MMIO64_SIZE,
            },
        }
    }

    /// Total RAM in bytes.
    pub fn ram_size(&self) -> u64 {
        self.ram.iter().map(|r| r.len).sum()
    }

    /// The e820 map handed to the guest: RAM minus the legacy BIOS area, the
    /// BIOS area and the ECAM window as reserved.
    pub fn e820(&self) -> Vec<(u64, u64, E820Kind)> {
        let mut map = Vec::new();
        for r in &self.ram {
            if r.start == 0 {
                map.push((0, EBDA_START.min(r.len), E820Kind::Ram));
                map.push((EBDA_START, HIMEM_START - EBDA_START, E820Kind::Reserved));
                if r.len > HIMEM_START {
                    map.push((HIMEM_START, r.len - HIMEM_START, E820Kind::Ram));
                }
            } else {
                map.push((r.start, r.len, E820Kind::Ram));
            }
        }
        map.push((PCI_ECAM_START, PCI_ECAM_SIZE, E820Kind::Reserved));
        map.sort_by_key(|e| e.0);
        map
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_vm_fits_below_hole() {
        let l = MemoryLayout::new(512 << 20);
        assert_eq!(
            l.ram,
            vec![Range {
                start: 0,
                len: 512 << 20
            }]
        );
        assert_eq!(l.mmio64.start, RAM_64BIT_START);
        let e = l.e820();
        assert_eq!(e[0], (0, EBDA_START, E820Kind::Ram));
        assert_eq!(
            e[1],
            (EBDA_START, HIMEM_START - EBDA_START, E820Kind::Reserved)
        );
        assert_eq!(
            e[2],
            (HIMEM_START, (512 << 20) - HIMEM_START, E820Kind::Ram)
        );
        assert_eq!(e[3], (PCI_ECAM_START, PCI_ECAM_SIZE, E820Kind::Reserved));
    }

    #[test]
    fn large_vm_splits_around_hole() {
        let l = MemoryLayout::new(6 << 30);
        assert_eq!(l.ram.len(), 2);
        assert_eq!(
            l.ram[0],
            Range {
                start: 0,
                len: 3 << 30
            }
        );
        assert_eq!(
            l.ram[1],
            Range {
                start: 4 << 30,
                len: 3 << 30
            }
        );
        assert_eq!(l.ram_size(), 6 << 30);
        assert_eq!(l.mmio64.start, 7 << 30);
        // No RAM entry overlaps the 32-bit hole or another entry.
        let e = l.e820();
        for w in e.windows(2) {
            assert!(w[0].0 + w[0].1 <= w[1].0, "{e:x?}");
        }
        for (s, len, k) in &e {
            if *k == E820Kind::Ram {
                assert!(s + len <= MMIO32_HOLE_START || *s >= RAM_64BIT_START);
            }
        }
    }

    #[test]
    fn odd_size_rounds_mmio64_to_gib() {
        let l = MemoryLayout::new((3 << 30) + (2 << 20));
        assert_eq!(
            l.ram[1],
            Range {
                start: 4 << 30,
                len: 2 << 20
            }
        );
        assert_eq!(l.mmio64.start, 5 << 30);
    }
}
