//! ACPI tables: RSDP, XSDT, FADT, DSDT, MADT, MCFG.
//!
//! The tables describe a hardware-reduced ACPI PC: no PM1/GPE blocks, sleep
//! control/status and reset registers in I/O space at
//! [`layout::ACPI_PM_PORT`], one IOAPIC plus one local APIC per vCPU, a PCIe
//! host bridge with ECAM (bus 0) and COM1. They are written into the legacy
//! BIOS area ([`layout::ACPI_START`]..[`layout::ACPI_END`]), RSDP first, so
//! that Linux finds the RSDP both through the boot protocol and by scanning.
//!
//! There is no `_PRT`: PCI devices interrupt through MSI-X only.

use acpi_tables::aml;
use acpi_tables::fadt::{FADTBuilder, Flags};
use acpi_tables::gas::{AccessSize, AddressSpace, GAS};
use acpi_tables::mcfg::MCFG;
use acpi_tables::rsdp::Rsdp;
use acpi_tables::sdt::Sdt;
use acpi_tables::viot::{PciDevice as ViotPciDevice, PciRange, VirtIoPciIommu, VIOT};
use acpi_tables::xsdt::XSDT;
use acpi_tables::{Aml, AmlSink};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use crate::layout::{self, MemoryLayout};

/// OEM id in every table header.
pub const OEM_ID: [u8; 6] = *b"IOVMM ";
/// OEM table id in every table header.
pub const OEM_TABLE_ID: [u8; 8] = *b"IOVMM   ";
/// OEM revision in every table header.
pub const OEM_REVISION: u32 = 1;

/// FADT IAPC_BOOT_ARCH: VGA not present.
const BOOT_ARCH_VGA_NOT_PRESENT: u16 = 1 << 2;
/// FADT IAPC_BOOT_ARCH: OSPM must not enable PCIe ASPM.
const BOOT_ARCH_PCIE_ASPM_CONTROLS: u16 = 1 << 4;
/// FADT IAPC_BOOT_ARCH: no CMOS RTC (iovmm emulates none).
const BOOT_ARCH_CMOS_RTC_NOT_PRESENT: u16 = 1 << 5;

/// MADT flag: the platform also has dual 8259 PICs (KVM emulates them).
const MADT_PCAT_COMPAT: u32 = 1;
/// MADT interrupt flags: active high, edge triggered.
const MPS_INTI_HIGH_EDGE: u16 = 0b01 | (0b01 << 2);
/// MADT interrupt flags: active high, level triggered.
const MPS_INTI_HIGH_LEVEL: u16 = 0b01 | (0b11 << 2);

// The DSDT and MADT describe these with 32-bit (or 16-bit) fields.
const _: () = assert!(layout::PCI_MMIO32_START + layout::PCI_MMIO32_SIZE <= 1 << 32);
const _: () = assert!(layout::PCI_ECAM_START + layout::PCI_ECAM_SIZE <= 1 << 32);
const _: () = assert!(layout::APIC_START < 1 << 32 && layout::IOAPIC_START < 1 << 32);
const _: () = assert!(layout::COM1_IRQ < 16 && layout::COM1_PORT < 0x1_0000);

/// Tables start on this alignment.
const TABLE_ALIGN: u64 = 16;

/// Errors writing the ACPI tables.
#[derive(Debug, thiserror::Error)]
pub enum AcpiError {
    /// The vCPU count cannot be described (must be 1..=255).
    #[error("cannot describe {0} vCPUs in the MADT")]
    Vcpus(u8),
    /// The tables do not fit in the ACPI area.
    #[error(
        "ACPI tables end at {end:#x}, past the end of the ACPI area {:#x}",
        layout::ACPI_END
    )]
    TooLarge {
        /// One past the last byte the tables would use.
        end: u64,
    },
    /// Writing guest memory failed (the ACPI area is not backed by RAM).
    #[error("writing ACPI table {table} at {addr:#x}: {err}")]
    Memory {
        /// Table signature.
        table: &'static str,
        /// Guest-physical address.
        addr: u64,
        /// The guest memory error.
        err: vm_memory::GuestMemoryError,
    },
}

/// Collects AML bytes.
fn bytes_of(t: &dyn Aml) -> Vec<u8> {
    let mut v = Vec::new();
    t.to_aml_bytes(&mut v);
    v
}

/// `IRQNoFlags () {irq}`: a small IRQ descriptor with only the mask
/// (edge triggered, active high, exclusive). `irq` must be below 16.
struct IrqNoFlags(u8);

impl Aml for IrqNoFlags {
    fn to_aml_bytes(&self, sink: &mut dyn AmlSink) {
        // Small resource type 0x04 (IRQ), length 2: the 16-bit IRQ mask.
        sink.byte(0x22);
        sink.word(1u16 << (self.0 & 0xf));
    }
}

/// The DSDT's AML: `\_S5_`, `\_SB.PCI0`, `\_SB.COM1`, `\_SB.MBRD`.
fn dsdt_aml(layout: &MemoryLayout) -> Vec<u8> {
    let slp_typ = layout::ACPI_S5_SLP_TYP;
    // \_S5_: SLP_TYPa, SLP_TYPb, reserved, reserved. With hardware-reduced
    // ACPI, Linux writes SLP_TYPa << 2 | SLP_EN to the sleep control register.
    let s5_pkg = aml::Package::new(vec![&slp_typ, &slp_typ, &0u8, &0u8]);
    let s5 = aml::Name::new("_S5_".into(), &s5_pkg);

    // PCIe host bridge. Word I/O ranges around the 0xcf8 config ports, which
    // the bridge consumes itself; the 32-bit and 64-bit BAR windows.
    let mmio32_end = layout::PCI_MMIO32_START + layout::PCI_MMIO32_SIZE - 1;
    let bus = aml::AddressSpace::new_bus_number(0u16, 0u16);
    let cfg_io = aml::IO::new(0xcf8, 0xcf8, 1, 8);
    let io_lo = aml::AddressSpace::new_io(0x0000u16, 0x0cf7u16, None);
    let io_hi = aml::AddressSpace::new_io(0x0d00u16, 0xffffu16, None);
    // The constants are below 4 GiB (asserted at compile time above), so
    // the narrowing casts are exact.
    let mmio32 = aml::AddressSpace::new_memory(
        aml::AddressSpaceCacheable::NotCacheable,
        true,
        layout::PCI_MMIO32_START as u32,
        mmio32_end as u32,
        None,
    );
    let mmio64 = aml::AddressSpace::new_memory(
        aml::AddressSpaceCacheable::NotCacheable,
        true,
        layout.mmio64.start,
        layout.mmio64.end() - 1,
        None,
    );
    let pci_crs = aml::ResourceTemplate::new(vec![&bus, &cfg_io, &io_lo, &io_hi, &mmio32, &mmio64]);
    let pci_hid = aml::EISAName::new("PNP0A08");
    let pci_cid = aml::EISAName::new("PNP0A03");
    let n_hid = aml::Name::new("_HID".into(), &pci_hid);
    let n_cid = aml::Name::new("_CID".into(), &pci_cid);
    let n_adr = aml::Name::new("_ADR".into(), &aml::ZERO);
    let n_seg = aml::Name::new("_SEG".into(), &aml::ZERO);
    let n_uid = aml::Name::new("_UID".into(), &aml::ZERO);
    let n_bbn = aml::Name::new("_BBN".into(), &aml::ZERO);
    let n_crs = aml::Name::new("_CRS".into(), &pci_crs);
    let pci0 = aml::Device::new(
        "PCI0".into(),
        vec![&n_hid, &n_cid, &n_adr, &n_seg, &n_uid, &n_bbn, &n_crs],
    );

    // COM1: 16550 at 0x3f8, ISA IRQ 4.
    let com_io = aml::IO::new(layout::COM1_PORT as u16, layout::COM1_PORT as u16, 1, 8);
    let com_irq = IrqNoFlags(layout::COM1_IRQ as u8);
    let com_crs = aml::ResourceTemplate::new(vec![&com_io, &com_irq]);
    let com_hid = aml::EISAName::new("PNP0501");
    let c_hid = aml::Name::new("_HID".into(), &com_hid);
    let c_uid = aml::Name::new("_UID".into(), &aml::ZERO);
    let c_crs = aml::Name::new("_CRS".into(), &com_crs);
    let com1 = aml::Device::new("COM1".into(), vec![&c_hid, &c_uid, &c_crs]);

    // Motherboard resources: the ECAM window, so that Linux trusts the MCFG.
    let ecam = aml::Memory32Fixed::new(
        true,
        layout::PCI_ECAM_START as u32,
        layout::PCI_ECAM_SIZE as u32,
    );
    let mb_crs = aml::ResourceTemplate::new(vec![&ecam]);
    let mb_hid = aml::EISAName::new("PNP0C02");
    let m_hid = aml::Name::new("_HID".into(), &mb_hid);
    let m_uid = aml::Name::new("_UID".into(), &aml::ZERO);
    let m_crs = aml::Name::new("_CRS".into(), &mb_crs);
    let mbrd = aml::Device::new("MBRD".into(), vec![&m_hid, &m_uid, &m_crs]);

    let sb = aml::Scope::new("\\_SB_".into(), vec![&pci0, &com1, &mbrd]);
    let mut out = bytes_of(&s5);
    sb.to_aml_bytes(&mut out);
    out
}

/// The MADT: local APICs 0..vcpus, the IOAPIC, ISA overrides, LINT1 NMI.
fn madt(vcpus: u8) -> Sdt {
    let mut madt = Sdt::new(*b"APIC", 44, 5, OEM_ID, OEM_TABLE_ID, OEM_REVISION);
    madt.write_u32(36, layout::APIC_START as u32);
    madt.write_u32(40, MADT_PCAT_COMPAT);
    for id in 0..vcpus {
        // Type 0, length 8: ACPI processor UID, APIC id, flags (enabled).
        let mut e = [0u8, 8, id, id, 0, 0, 0, 0];
        e[4..8].copy_from_slice(&1u32.to_le_bytes());
        madt.append_slice(&e);
    }
    // Type 1, length 12: IOAPIC id 0 (KVM's IOAPIC resets its id register
    // to 0), address, GSI base 0.
    let mut ioapic = [1u8, 12, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
    ioapic[4..8].copy_from_slice(&(layout::IOAPIC_START as u32).to_le_bytes());
    madt.append_slice(&ioapic);
    // Type 2, length 10: ISA interrupt source overrides. The PIT's IRQ 0 is
    // wired to IOAPIC pin 2; IRQ 9 (the SCI on a full-ACPI PC) is level.
    for (irq, gsi, flags) in [(0u8, 2u32, MPS_INTI_HIGH_EDGE), (9, 9, MPS_INTI_HIGH_LEVEL)] {
        let mut iso = [2u8, 10, 0, irq, 0, 0, 0, 0, 0, 0];
        iso[4..8].copy_from_slice(&gsi.to_le_bytes());
        iso[8..10].copy_from_slice(&flags.to_le_bytes());
        madt.append_slice(&iso);
    }
    // Type 4, length 6: LINT1 of every processor (UID 0xff) is the NMI.
    madt.append_slice(&[4u8, 6, 0xff, 0, 0, 1]);
    madt
}

/// The FADT: hardware-reduced, ACPI_PM_PORT sleep and reset registers.
fn fadt(dsdt_addr: u64) -> Vec<u8> {
    let io_reg = |port: u64| GAS::new(AddressSpace::SystemIo, 8, 0, AccessSize::ByteAccess, port);
    let mut f = FADTBuilder::new(OEM_ID, OEM_TABLE_ID, OEM_REVISION)
        .flag(Flags::HwReducedAcpi)
        .flag(Flags::ResetRegSup)
        .flag(Flags::PwrButton)
        .flag(Flags::SlpButton);
    // The DSDT lives below 1 MiB; both the 32-bit and the 64-bit pointer
    // are set to it.
    f.dsdt = (dsdt_addr as u32).into();
    f.x_dsdt = dsdt_addr.into();
    f.iapc_boot_arch =
        (BOOT_ARCH_VGA_NOT_PRESENT | BOOT_ARCH_PCIE_ASPM_CONTROLS | BOOT_ARCH_CMOS_RTC_NOT_PRESENT)
            .into();
    f.reset_reg = io_reg(layout::ACPI_PM_PORT + 2);
    f.reset_value = layout::ACPI_RESET_VALUE;
    f.sleep_control_reg = io_reg(layout::ACPI_PM_PORT);
    f.sleep_status_reg = io_reg(layout::ACPI_PM_PORT + 1);
    bytes_of(&f.finalize())
}

/// Lays tables out one after the other from a start address.
struct Writer<'a> {
    mem: &'a GuestMemoryMmap<()>,
    next: u64,
}

impl Writer<'_> {
    /// Reserves room for `len` bytes and returns their address.
    fn reserve(&mut self, len: usize) -> Result<u64, AcpiError> {
        let addr = self.next;
        let end = addr.saturating_add(len as u64);
        if end > layout::ACPI_END {
            return Err(AcpiError::TooLarge { end });
        }
        self.next = end.div_ceil(TABLE_ALIGN) * TABLE_ALIGN;
        Ok(addr)
    }

    fn write(&self, table: &'static str, addr: u64, bytes: &[u8]) -> Result<(), AcpiError> {
        self.mem
            .write_slice(bytes, GuestAddress(addr))
            .map_err(|err| AcpiError::Memory { table, addr, err })
    }

    /// Reserves room for `bytes` and writes them.
    fn place(&mut self, table: &'static str, bytes: &[u8]) -> Result<u64, AcpiError> {
        let addr = self.reserve(bytes.len())?;
        self.write(table, addr, bytes)?;
        Ok(addr)
    }
}

/// The virtual IOMMU as the VIOT describes it: the PCI slot of the
/// virtio-iommu function and the slots of the endpoints it translates
/// (all on bus 0, function 0).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ViotInfo {
    /// Slot of the virtio-iommu device.
    pub iommu_slot: u8,
    /// Slots of the endpoints behind it: virtio devices with `iommu = on`
    /// and the VFIO function behind the virtual IOMMU (a hardware
    /// endpoint; the guest cannot tell it apart, its endpoint ID is its
    /// BDF like any other).
    pub endpoint_slots: Vec<u8>,
}

fn viot(info: &ViotInfo) -> VIOT {
    let mut v = VIOT::new(OEM_ID, OEM_TABLE_ID, OEM_REVISION);
    let handle = v.add_virtio_pci_iommu(VirtIoPciIommu::new(ViotPciDevice::new(
        0,
        0,
        info.iommu_slot & 0x1f,
        0,
    )));
    for &slot in &info.endpoint_slots {
        let dev = || ViotPciDevice::new(0, 0, slot & 0x1f, 0);
        v.add_pci_range(PciRange::new(dev(), dev(), &handle));
    }
    v
}

/// Writes the ACPI tables for a VM with `vcpus` vCPUs and the given memory
/// layout into guest memory at [`layout::ACPI_START`] and returns the
/// address of the RSDP. With `iommu`, a VIOT describes the virtual IOMMU.
pub fn create_acpi_tables(
    mem: &GuestMemoryMmap<()>,
    vcpus: u8,
    layout: &MemoryLayout,
    iommu: Option<&ViotInfo>,
) -> Result<GuestAddress, AcpiError> {
    if vcpus == 0 || vcpus == u8::MAX {
        return Err(AcpiError::Vcpus(vcpus));
    }
    let mut w = Writer {
        mem,
        next: layout::ACPI_START,
    };
    // The RSDP goes first (16-byte aligned, in the BIOS scan area); it is
    // written last, once the XSDT address is known.
    let rsdp_addr = w.reserve(Rsdp::len())?;

    let mut dsdt = Sdt::new(*b"DSDT", 36, 6, OEM_ID, OEM_TABLE_ID, OEM_REVISION);
    dsdt.append_slice(&dsdt_aml(layout));
    let dsdt_addr = w.place("DSDT", dsdt.as_slice())?;
    let fadt_addr = w.place("FACP", &fadt(dsdt_addr))?;
    let madt_addr = w.place("APIC", madt(vcpus).as_slice())?;
    let mut mcfg = MCFG::new(OEM_ID, OEM_TABLE_ID, OEM_REVISION);
    mcfg.add_ecam(layout::PCI_ECAM_START, 0, 0, 0);
    let mcfg_addr = w.place("MCFG", &bytes_of(&mcfg))?;

    let mut xsdt = XSDT::new(OEM_ID, OEM_TABLE_ID, OEM_REVISION);
    for addr in [fadt_addr, madt_addr, mcfg_addr] {
        xsdt.add_entry(addr);
    }
    if let Some(info) = iommu {
        let viot_addr = w.place("VIOT", &bytes_of(&viot(info)))?;
        xsdt.add_entry(viot_addr);
    }
    let xsdt_addr = w.place("XSDT", &bytes_of(&xsdt))?;
    w.write("RSDP", rsdp_addr, &bytes_of(&Rsdp::new(OEM_ID, xsdt_addr)))?;
    tracing::debug!(rsdp = rsdp_addr, end = w.next, "ACPI tables written");
    Ok(GuestAddress(rsdp_addr))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mem() -> GuestMemoryMmap<()> {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 2 << 20)]).unwrap()
    }

    fn read(mem: &GuestMemoryMmap<()>, addr: u64, len: usize) -> Vec<u8> {
        let mut v = vec![0u8; len];
        mem.read_slice(&mut v, GuestAddress(addr)).unwrap();
        v
    }

    fn u16_at(b: &[u8], off: usize) -> u16 {
        u16::from_le_bytes(b[off..off + 2].try_into().unwrap())
    }

    fn u32_at(b: &[u8], off: usize) -> u32 {
        u32::from_le_bytes(b[off..off + 4].try_into().unwrap())
    }

    fn u64_at(b: &[u8], off: usize) -> u64 {
        u64::from_le_bytes(b[off..off + 8].try_into().unwrap())
    }

    fn sum(b: &[u8]) -> u8 {
        b.iter().fold(0u8, |a, x| a.wrapping_add(*x))
    }

    /// Reads the table at `addr`, checks its signature, length and checksum.
    fn table(mem: &GuestMemoryMmap<()>, addr: u64, sig: &[u8; 4]) -> Vec<u8> {
        assert!(
            (layout::ACPI_START..layout::ACPI_END).contains(&addr),
            "{addr:#x}"
        );
        let header = read(mem, addr, 36);
        assert_eq!(&header[0..4], sig);
        let len = u32_at(&header, 4) as usize;
        assert!(addr + len as u64 <= layout::ACPI_END);
        let t = read(mem, addr, len);
        assert_eq!(sum(&t), 0, "{} checksum", String::from_utf8_lossy(sig));
        assert_eq!(&t[10..16], &OEM_ID);
        t
    }

    struct Tables {
        rsdp: Vec<u8>,
        xsdt: Vec<u8>,
        fadt: Vec<u8>,
        madt: Vec<u8>,
        mcfg: Vec<u8>,
        dsdt: Vec<u8>,
        dsdt_addr: u64,
    }

    fn build(vcpus: u8, mem_size: u64) -> Tables {
        let m = mem();
        let l = MemoryLayout::new(mem_size);
        let rsdp_addr = create_acpi_tables(&m, vcpus, &l, None).unwrap();
        assert_eq!(rsdp_addr.0, layout::ACPI_START);
        let rsdp = read(&m, rsdp_addr.0, 36);
        let xsdt = table(&m, u64_at(&rsdp, 24), b"XSDT");
        let entries: Vec<u64> = (36..xsdt.len())
            .step_by(8)
            .map(|o| u64_at(&xsdt, o))
            .collect();
        assert_eq!(entries.len(), 3);
        let fadt = table(&m, entries[0], b"FACP");
        let madt = table(&m, entries[1], b"APIC");
        let mcfg = table(&m, entries[2], b"MCFG");
        let dsdt_addr = u64_at(&fadt, 140);
        let dsdt = table(&m, dsdt_addr, b"DSDT");
        Tables {
            rsdp,
            xsdt,
            fadt,
            madt,
            mcfg,
            dsdt,
            dsdt_addr,
        }
    }

    #[test]
    fn viot_lists_the_iommu_and_its_endpoints() {
        let m = mem();
        let l = MemoryLayout::new(512 << 20);
        let info = ViotInfo {
            iommu_slot: 1,
            endpoint_slots: vec![2, 3],
        };
        let rsdp = read(
            &m,
            create_acpi_tables(&m, 2, &l, Some(&info)).unwrap().0,
            36,
        );
        let xsdt = table(&m, u64_at(&rsdp, 24), b"XSDT");
        assert_eq!(xsdt.len(), 36 + 4 * 8);
        let v = table(&m, u64_at(&xsdt, 36 + 3 * 8), b"VIOT");
        assert_eq!(u16_at(&v, 36), 3, "node count: iommu + 2 ranges");
        let first = u16_at(&v, 38) as usize;
        // Walk the nodes: type, length; PCI ranges name BDF slot << 3.
        let mut off = first;
        let mut kinds = Vec::new();
        let mut bdfs = Vec::new();
        for _ in 0..3 {
            let ty = v[off];
            let len = u16_at(&v, off + 2) as usize;
            if ty == 1 {
                bdfs.push((
                    u32_at(&v, off + 4),
                    u16_at(&v, off + 12),
                    u16_at(&v, off + 14),
                ));
            }
            if ty == 3 {
                assert_eq!(u16_at(&v, off + 6), 1 << 3, "virtio-iommu at 00:01.0");
            }
            kinds.push(ty);
            off += len;
        }
        kinds.sort();
        assert_eq!(kinds, vec![1, 1, 3]);
        assert_eq!(bdfs, vec![(16, 16, 16), (24, 24, 24)]);
    }

    /// A VM with a virtio disk behind the IOMMU at slot 2, a NIC that
    /// bypasses it at slot 3 and an assigned VFIO function behind it at
    /// slot 5: the VIOT has one PCI range per endpoint, each naming exactly
    /// its BDF and pointing at the virtio-iommu node.
    #[test]
    fn viot_lists_a_vfio_endpoint() {
        let m = mem();
        let l = MemoryLayout::new(512 << 20);
        let info = ViotInfo {
            iommu_slot: 1,
            endpoint_slots: vec![2, 5],
        };
        let rsdp = read(
            &m,
            create_acpi_tables(&m, 1, &l, Some(&info)).unwrap().0,
            36,
        );
        let xsdt = table(&m, u64_at(&rsdp, 24), b"XSDT");
        let v = table(&m, u64_at(&xsdt, 36 + 3 * 8), b"VIOT");
        let mut off = u16_at(&v, 38) as usize;
        let mut iommu_node = None;
        let mut ranges = Vec::new();
        for _ in 0..u16_at(&v, 36) {
            match v[off] {
                3 => iommu_node = Some(off as u16),
                1 => ranges.push((
                    u32_at(&v, off + 4),
                    u16_at(&v, off + 8),
                    u16_at(&v, off + 12),
                    u16_at(&v, off + 14),
                    u16_at(&v, off + 16),
                )),
                t => panic!("unexpected VIOT node type {t}"),
            }
            off += u16_at(&v, off + 2) as usize;
        }
        let iommu = iommu_node.expect("virtio-pci IOMMU node");
        ranges.sort();
        assert_eq!(
            ranges,
            vec![
                (2 << 3, 0, 2 << 3, 2 << 3, iommu),
                (5 << 3, 0, 5 << 3, 5 << 3, iommu)
            ],
            "(endpoint ID, segment, first BDF, last BDF, output node)"
        );
        assert!(
            !ranges.iter().any(|r| r.2 == 3 << 3),
            "the bypassing NIC is not listed"
        );
    }

    #[test]
    fn rsdp() {
        let t = build(1, 512 << 20);
        assert_eq!(&t.rsdp[0..8], b"RSD PTR ");
        assert_eq!(sum(&t.rsdp[0..20]), 0, "ACPI 1.0 checksum");
        assert_eq!(sum(&t.rsdp), 0, "extended checksum");
        assert_eq!(t.rsdp[15], 2, "revision");
        assert_eq!(u32_at(&t.rsdp, 20), 36, "length");
        assert_eq!(&t.rsdp[9..15], &OEM_ID);
        assert_eq!(t.xsdt[8], 1);
    }

    #[test]
    fn fadt() {
        let t = build(2, 512 << 20);
        let f = &t.fadt;
        assert_eq!(f.len(), 276);
        assert_eq!(f[8], 6, "major revision");
        assert_eq!(u32_at(f, 40) as u64, t.dsdt_addr, "DSDT");
        let flags = u32_at(f, 112);
        assert_ne!(flags & (1 << 20), 0, "HW_REDUCED_ACPI");
        assert_ne!(flags & (1 << 10), 0, "RESET_REG_SUP");
        let boot_arch = u16_at(f, 109);
        assert_eq!(boot_arch & (1 << 3), 0, "MSI must be supported");
        assert_eq!(boot_arch & 0b11, 0, "no legacy devices, no 8042");
        assert_ne!(boot_arch & (1 << 2), 0, "no VGA");
        assert_ne!(boot_arch & (1 << 4), 0, "no ASPM");
        assert_ne!(boot_arch & (1 << 5), 0, "no CMOS RTC");
        // Reset register: system I/O, 8 bits, at ACPI_PM_PORT + 2.
        assert_eq!(&f[116..120], &[1, 8, 0, 1]);
        assert_eq!(u64_at(f, 120), layout::ACPI_PM_PORT + 2);
        assert_eq!(f[128], layout::ACPI_RESET_VALUE);
        // Sleep control and status registers.
        assert_eq!(&f[244..248], &[1, 8, 0, 1]);
        assert_eq!(u64_at(f, 248), layout::ACPI_PM_PORT);
        assert_eq!(&f[256..260], &[1, 8, 0, 1]);
        assert_eq!(u64_at(f, 260), layout::ACPI_PM_PORT + 1);
        // No PM1/GPE blocks on a hardware-reduced platform.
        assert!(f[56..88].iter().all(|&b| b == 0));
    }

    #[test]
    fn madt_lists_every_vcpu_once() {
        for vcpus in [1u8, 2, 16] {
            let t = build(vcpus, 512 << 20);
            let m = &t.madt;
            assert_eq!(u32_at(m, 36) as u64, layout::APIC_START);
            assert_eq!(u32_at(m, 40), MADT_PCAT_COMPAT);
            let (mut lapic_ids, mut ioapics, mut isos) = (Vec::new(), Vec::new(), Vec::new());
            let mut off = 44;
            while off < m.len() {
                let (ty, len) = (m[off], m[off + 1] as usize);
                assert!(len >= 2 && off + len <= m.len());
                let e = &m[off..off + len];
                match ty {
                    0 => {
                        assert_eq!(len, 8);
                        assert_eq!(u32_at(e, 4), 1, "enabled");
                        assert_eq!(e[2], e[3], "UID = APIC id");
                        lapic_ids.push(e[3]);
                    }
                    1 => ioapics.push((u32_at(e, 4), u32_at(e, 8))),
                    2 => isos.push((e[3], u32_at(e, 4), u16_at(e, 8))),
                    4 => assert_eq!(e, &[4, 6, 0xff, 0, 0, 1]),
                    _ => panic!("unexpected MADT entry type {ty}"),
                }
                off += len;
            }
            assert_eq!(lapic_ids, (0..vcpus).collect::<Vec<_>>());
            assert_eq!(ioapics, vec![(layout::IOAPIC_START as u32, 0)]);
            assert_eq!(isos, vec![(0, 2, 0x5), (9, 9, 0xd)]);
        }
    }

    #[test]
    fn mcfg_describes_bus_0() {
        let t = build(1, 512 << 20);
        let m = &t.mcfg;
        assert_eq!(m.len(), 36 + 8 + 16);
        assert_eq!(u64_at(m, 44), layout::PCI_ECAM_START);
        assert_eq!(u16_at(m, 52), 0, "segment");
        assert_eq!((m[54], m[55]), (0, 0), "buses 0..0");
    }

    fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
        hay.windows(needle.len()).position(|w| w == needle)
    }

    #[test]
    fn dsdt_contents() {
        let t = build(1, 6 << 30);
        let d = &t.dsdt;
        assert!(d[8] >= 2, "64-bit integers need revision 2");
        // Name(_S5_, Package(4) {5, 5, 0, 0})
        let s5 = find(d, b"_S5_").expect("_S5_");
        let slp = layout::ACPI_S5_SLP_TYP;
        assert_eq!(d[s5 + 4], 0x12, "PackageOp");
        assert_eq!(&d[s5 + 6..s5 + 11], &[4, 0x0a, slp, 0x0a, slp]);
        for name in [
            &b"_SB_"[..],
            b"PCI0",
            b"COM1",
            b"MBRD",
            b"_CRS",
            b"_SEG",
            b"_BBN",
        ] {
            assert!(find(d, name).is_some(), "{}", String::from_utf8_lossy(name));
        }
        // EISA ids PNP0A08, PNP0A03, PNP0501, PNP0C02.
        for id in [0x080a_d041u32, 0x030a_d041, 0x0105_d041, 0x020c_d041] {
            assert!(find(d, &id.to_le_bytes()).is_some(), "{id:#x}");
        }
        // Word I/O ranges 0..0xcf7 and 0xd00..0xffff (type 1, min, max).
        assert!(find(d, &[0x88, 0x0d, 0, 1, 0x0c, 3, 0, 0, 0, 0, 0xf7, 0x0c]).is_some());
        assert!(find(d, &[0x88, 0x0d, 0, 1, 0x0c, 3, 0, 0, 0, 0x0d, 0xff, 0xff]).is_some());
        // Bus numbers 0..0.
        assert!(find(d, &[0x88, 0x0d, 0, 2, 0x0c, 0, 0, 0, 0, 0, 0, 0]).is_some());
        // 32-bit window and the 64-bit window above 6 GiB of RAM.
        let mut mmio32 = layout::PCI_MMIO32_START.to_le_bytes()[..4].to_vec();
        mmio32.extend_from_slice(
            &((layout::PCI_MMIO32_START + layout::PCI_MMIO32_SIZE - 1) as u32).to_le_bytes(),
        );
        assert!(find(d, &mmio32).is_some());
        let l = MemoryLayout::new(6 << 30);
        let mut mmio64 = l.mmio64.start.to_le_bytes().to_vec();
        mmio64.extend_from_slice(&(l.mmio64.end() - 1).to_le_bytes());
        assert!(find(d, &mmio64).is_some());
        // COM1: IO(Decode16, 0x3f8, 0x3f8, 1, 8) and IRQNoFlags() {4}.
        assert!(find(d, &[0x47, 1, 0xf8, 3, 0xf8, 3, 1, 8, 0x22, 0x10, 0]).is_some());
        // ECAM reserved by the motherboard device.
        let mut ecam = vec![0x86, 9, 0, 1];
        ecam.extend_from_slice(&(layout::PCI_ECAM_START as u32).to_le_bytes());
        ecam.extend_from_slice(&(layout::PCI_ECAM_SIZE as u32).to_le_bytes());
        assert!(find(d, &ecam).is_some());
    }

    #[test]
    fn tables_fit_and_do_not_overlap() {
        let m = mem();
        let l = MemoryLayout::new(1 << 30);
        create_acpi_tables(&m, 16, &l, None).unwrap();
        let t = build(16, 1 << 30);
        let mut spans = vec![(layout::ACPI_START, 36u64)];
        for (i, _) in t.xsdt[36..].chunks(8).enumerate() {
            let a = u64_at(&t.xsdt, 36 + i * 8);
            spans.push((a, u32_at(&read(&m, a, 8), 4) as u64));
        }
        spans.push((u64_at(&t.rsdp, 24), t.xsdt.len() as u64));
        spans.push((t.dsdt_addr, t.dsdt.len() as u64));
        spans.sort();
        for w in spans.windows(2) {
            assert!(w[0].0 + w[0].1 <= w[1].0, "{spans:x?}");
        }
        let last = spans.last().unwrap();
        assert!(last.0 + last.1 <= layout::ACPI_END);
    }

    #[test]
    fn errors() {
        let m = mem();
        let l = MemoryLayout::new(512 << 20);
        assert!(matches!(
            create_acpi_tables(&m, 0, &l, None),
            Err(AcpiError::Vcpus(0))
        ));
        // Guest memory that does not cover the ACPI area.
        let small = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 0x1000)]).unwrap();
        let e = create_acpi_tables(&small, 1, &l, None).unwrap_err();
        assert!(matches!(e, AcpiError::Memory { .. }), "{e}");
    }

    /// The DSDT must disassemble cleanly with `iasl` (skipped visibly
    /// without it; mandatory under IOVMM_REQUIRE_IASL=1).
    #[test]
    fn dsdt_disassembles_with_iasl_if_available() {
        use crate::host_test::{skip, REQUIRE_IASL};
        let Ok(out) = std::process::Command::new("iasl").arg("-v").output() else {
            skip(
                REQUIRE_IASL,
                "dsdt_disassembles_with_iasl_if_available",
                "iasl is not installed (Debian: acpica-tools)",
            );
            return;
        };
        assert!(out.status.success());
        let t = build(2, 512 << 20);
        let dir = tempfile::tempdir().unwrap();
        let aml_path = dir.path().join("dsdt.aml");
        std::fs::write(&aml_path, &t.dsdt).unwrap();
        let out = std::process::Command::new("iasl")
            .arg("-d")
            .arg(&aml_path)
            .current_dir(dir.path())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let dsl = std::fs::read_to_string(dir.path().join("dsdt.dsl")).unwrap();
        for needle in [
            "PNP0A08",
            "PNP0501",
            "PNP0C02",
            "_S5_",
            "IRQNoFlags",
            "QWordMemory",
        ] {
            assert!(dsl.contains(needle), "{needle} missing in\n{dsl}");
        }
    }
}
