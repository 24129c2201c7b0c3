//! A type-0 PCI configuration space: header, BARs and a capability list.
//!
//! Every register has a write mask; bits outside it keep their value, so
//! BAR sizing (write all ones, read back the size mask) falls out of the
//! masks. Writes that program a new BAR address are reported as a
//! [`BarMove`] so the owner can move the BAR on its bus.

use super::{BarInfo, BarKind, BarMove};

/// Number of 32-bit registers (4 KiB, PCIe extended configuration space).
pub const NUM_REGS: usize = 1024;
/// First byte of the capability area.
const CAP_START: usize = 0x40;
/// Register index of BAR0.
const BAR0_REG: usize = 4;
/// Command register bits the guest may change: I/O, memory, bus master,
/// INTx disable.
const COMMAND_WRITABLE: u32 = 0x0407;
/// Status bit: a capability list is present.
const STATUS_CAP_LIST: u32 = 1 << 20;

/// Command register bit: memory space decoding enabled.
pub const COMMAND_MEMORY: u16 = 1 << 1;
/// Command register bit: bus master enabled.
pub const COMMAND_BUS_MASTER: u16 = 1 << 2;

/// Identity of a PCI function.
#[derive(Clone, Copy, Debug, Default)]
pub struct PciIds {
    /// Vendor ID.
    pub vendor: u16,
    /// Device ID.
    pub device: u16,
    /// Class code (base class, sub class, programming interface).
    pub class: (u8, u8, u8),
    /// Revision ID.
    pub revision: u8,
    /// Subsystem vendor ID.
    pub subsystem_vendor: u16,
    /// Subsystem ID.
    pub subsystem: u16,
}

/// Errors adding BARs or capabilities.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConfigError {
    /// BAR index out of range, size not a power of two, or slot in use.
    #[error("invalid BAR {0}")]
    InvalidBar(usize),
    /// No room left for the capability.
    #[error("capability area full")]
    CapabilitySpace,
}

/// The configuration space of one function.
pub struct PciConfiguration {
    regs: [u32; NUM_REGS],
    wmask: [u32; NUM_REGS],
    bars: [Option<BarInfo>; 6],
    last_cap: Option<usize>,
    next_cap: usize,
}

impl PciConfiguration {
    /// A header-type-0 function with the given identity, no BARs and no
    /// capabilities.
    pub fn new(ids: PciIds) -> Self {
        let mut c = PciConfiguration {
            regs: [0; NUM_REGS],
            wmask: [0; NUM_REGS],
            bars: [None; 6],
            last_cap: None,
            next_cap: CAP_START,
        };
        c.regs[0] = u32::from(ids.device) << 16 | u32::from(ids.vendor);
        c.regs[2] = u32::from(ids.class.0) << 24
            | u32::from(ids.class.1) << 16
            | u32::from(ids.class.2) << 8
            | u32::from(ids.revision);
        c.regs[11] = u32::from(ids.subsystem) << 16 | u32::from(ids.subsystem_vendor);
        c.wmask[1] = COMMAND_WRITABLE;
        // Interrupt line is scratch space for the OS; interrupt pin stays 0.
        c.wmask[15] = 0xff;
        c
    }

    /// Declares BAR `index` of `size` bytes (a power of two, at least 16)
    /// at `addr`. A 64-bit BAR also takes slot `index + 1`.
    pub fn add_bar(
        &mut self,
        index: usize,
        addr: u64,
        size: u64,
        kind: BarKind,
    ) -> Result<(), ConfigError> {
        let slots = if kind == BarKind::Mmio64 { 2 } else { 1 };
        let min = if kind == BarKind::Io { 4 } else { 16 };
        if index + slots > 6
            || !size.is_power_of_two()
            || size < min
            || addr & (size - 1) != 0
            || self.bars[index..index + slots].iter().any(Option::is_some)
            || (kind != BarKind::Mmio64 && size > 1 << 31)
        {
            return Err(ConfigError::InvalidBar(index));
        }
        let info = BarInfo {
            index,
            addr,
            size,
            kind,
        };
        let reg = BAR0_REG + index;
        let mask = !(size - 1);
        match kind {
            BarKind::Io => {
                self.regs[reg] = (addr as u32) | 1;
                self.wmask[reg] = mask as u32 & !0x3;
            }
            BarKind::Mmio32 => {
                self.regs[reg] = addr as u32;
                self.wmask[reg] = mask as u32 & !0xf;
            }
            BarKind::Mmio64 => {
                self.regs[reg] = (addr as u32) | 0x4;
                self.wmask[reg] = mask as u32 & !0xf;
                self.regs[reg + 1] = (addr >> 32) as u32;
                self.wmask[reg + 1] = (mask >> 32) as u32;
            }
        }
        self.bars[index] = Some(info);
        Ok(())
    }

    /// The declared BARs with their current addresses.
    pub fn bars(&self) -> Vec<BarInfo> {
        self.bars.iter().flatten().copied().collect()
    }

    /// Appends a capability. `body` starts with the capability ID; its
    /// second byte (next pointer) is filled in here. `writable` lists byte
    /// ranges (relative to the capability start) the guest may change.
    /// Returns the capability's offset in configuration space.
    pub fn add_capability(
        &mut self,
        body: &[u8],
        writable: &[(usize, usize)],
    ) -> Result<usize, ConfigError> {
        if body.len() < 2 {
            return Err(ConfigError::CapabilitySpace);
        }
        let off = self.next_cap;
        let end = off + body.len();
        if end > 0x100 {
            return Err(ConfigError::CapabilitySpace);
        }
        for (i, b) in body.iter().enumerate() {
            let val = if i == 1 { 0 } else { *b };
            self.set_byte(off + i, val);
        }
        for &(start, len) in writable {
            for i in start..(start + len).min(body.len()) {
                let byte = off + i;
                self.wmask[byte / 4] |= 0xff << ((byte % 4) * 8);
            }
        }
        match self.last_cap {
            Some(prev) => self.set_byte(prev + 1, off as u8),
            None => {
                self.regs[13] = off as u32;
                self.regs[1] |= STATUS_CAP_LIST;
            }
        }
        self.last_cap = Some(off);
        self.next_cap = (end + 3) & !3;
        Ok(off)
    }

    fn set_byte(&mut self, byte: usize, val: u8) {
        let shift = (byte % 4) * 8;
        let r = &mut self.regs[byte / 4];
        *r = (*r & !(0xff << shift)) | (u32::from(val) << shift);
    }

    /// Reads register `reg`; out-of-range registers read as zero.
    pub fn read_reg(&self, reg: usize) -> u32 {
        self.regs.get(reg).copied().unwrap_or(0)
    }

    /// Sets register `reg` directly (device-side update, no mask applied).
    pub fn set_reg(&mut self, reg: usize, val: u32) {
        if let Some(r) = self.regs.get_mut(reg) {
            *r = val;
        }
    }

    /// The command register.
    pub fn command(&self) -> u16 {
        self.regs[1] as u16
    }

    /// Applies a guest write of `data` (1, 2 or 4 bytes) at byte `offset` of
    /// register `reg`. Returns the BAR the write moved, if any.
    pub fn write_reg(&mut self, reg: usize, offset: u64, data: &[u8]) -> Option<BarMove> {
        let offset = offset as usize;
        if reg >= NUM_REGS || offset + data.len() > 4 || !matches!(data.len(), 1 | 2 | 4) {
            return None;
        }
        let mut val = 0u32;
        for (i, b) in data.iter().enumerate() {
            val |= u32::from(*b) << ((offset + i) * 8);
        }
        let lanes = if data.len() == 4 {
            u32::MAX
        } else {
            ((1u32 << (data.len() * 8)) - 1) << (offset * 8)
        };
        let mask = self.wmask[reg] & lanes;
        self.regs[reg] = (self.regs[reg] & !mask) | (val & mask);
        if (BAR0_REG..BAR0_REG + 6).contains(&reg) {
            return self.bar_write(reg - BAR0_REG);
        }
        None
    }

    /// After a write to BAR slot `slot`, reports a move when the BAR's
    /// address registers hold a complete new address (not a sizing probe).
    fn bar_write(&mut self, slot: usize) -> Option<BarMove> {
        let index = match self.bars[slot] {
            Some(_) => slot,
            None if slot > 0 => match self.bars[slot - 1] {
                Some(b) if b.kind == BarKind::Mmio64 => slot - 1,
                _ => return None,
            },
            None => return None,
        };
        let old = self.bars[index]?;
        let reg = BAR0_REG + index;
        let lo_mask = self.wmask[reg];
        let lo = self.regs[reg] & lo_mask;
        let (new_addr, probing) = match old.kind {
            BarKind::Mmio64 => {
                let hi_mask = self.wmask[reg + 1];
                let hi = self.regs[reg + 1] & hi_mask;
                let probing = lo == lo_mask || (hi_mask != 0 && hi == hi_mask);
                (u64::from(hi) << 32 | u64::from(lo), probing)
            }
            _ => (u64::from(lo), lo == lo_mask),
        };
        if probing || new_addr == old.addr {
            return None;
        }
        self.bars[index] = Some(BarInfo {
            addr: new_addr,
            ..old
        });
        Some(BarMove { old, new_addr })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> PciConfiguration {
        PciConfiguration::new(PciIds {
            vendor: 0x1af4,
            device: 0x1041,
            class: (0x02, 0x00, 0x00),
            revision: 1,
            subsystem_vendor: 0x1af4,
            subsystem: 0x40,
        })
    }

    fn write32(c: &mut PciConfiguration, reg: usize, v: u32) -> Option<BarMove> {
        c.write_reg(reg, 0, &v.to_le_bytes())
    }

    #[test]
    fn header_identity_is_read_only() {
        let mut c = cfg();
        assert_eq!(c.read_reg(0), 0x1041_1af4);
        assert_eq!(c.read_reg(2), 0x0200_0001);
        write32(&mut c, 0, 0xffff_ffff);
        write32(&mut c, 2, 0);
        assert_eq!(c.read_reg(0), 0x1041_1af4);
        assert_eq!(c.read_reg(2), 0x0200_0001);
    }

    #[test]
    fn command_register_masks_reserved_bits() {
        let mut c = cfg();
        c.write_reg(1, 0, &0xffffu16.to_le_bytes());
        assert_eq!(c.command(), COMMAND_WRITABLE as u16);
        assert_eq!(c.read_reg(1) >> 16, 0, "status is not writable");
    }

    #[test]
    fn bar64_sizing_reads_back_size_and_restores_without_move() {
        let mut c = cfg();
        c.add_bar(0, 0x80_0000_0000, 0x8_0000, BarKind::Mmio64)
            .unwrap();
        assert_eq!(c.read_reg(4), 0x4);
        assert_eq!(c.read_reg(5), 0x80);
        assert_eq!(write32(&mut c, 4, 0xffff_ffff), None);
        assert_eq!(c.read_reg(4), 0xfff8_0004);
        assert_eq!(write32(&mut c, 5, 0xffff_ffff), None);
        assert_eq!(c.read_reg(5), 0xffff_ffff);
        assert_eq!(write32(&mut c, 4, 0x4), None);
        assert_eq!(write32(&mut c, 5, 0x80), None);
        assert_eq!(c.bars()[0].addr, 0x80_0000_0000);
    }

    #[test]
    fn bar32_and_io_sizing() {
        let mut c = cfg();
        c.add_bar(1, 0xc000_0000, 0x1000, BarKind::Mmio32).unwrap();
        c.add_bar(2, 0x1000, 0x20, BarKind::Io).unwrap();
        write32(&mut c, 5, 0xffff_ffff);
        assert_eq!(c.read_reg(5), 0xffff_f000);
        write32(&mut c, 6, 0xffff_ffff);
        assert_eq!(c.read_reg(6), 0xffff_ffe1);
    }

    #[test]
    fn bar_reprogramming_reports_a_move() {
        let mut c = cfg();
        c.add_bar(0, 0xc000_0000, 0x1000, BarKind::Mmio32).unwrap();
        let m = write32(&mut c, 4, 0xd000_0000).unwrap();
        assert_eq!(m.old.addr, 0xc000_0000);
        assert_eq!(m.new_addr, 0xd000_0000);
        assert_eq!(c.bars()[0].addr, 0xd000_0000);
        // Low bits below the size are not writable.
        let m = write32(&mut c, 4, 0xd000_0fff).unwrap_or(BarMove {
            old: c.bars()[0],
            new_addr: 0xd000_0000,
        });
        assert_eq!(m.new_addr, 0xd000_0000);
    }

    #[test]
    fn invalid_bars_are_rejected() {
        let mut c = cfg();
        assert!(c.add_bar(5, 0, 0x1000, BarKind::Mmio64).is_err());
        assert!(c.add_bar(0, 0, 0x1001, BarKind::Mmio32).is_err());
        assert!(c.add_bar(0, 0x800, 0x1000, BarKind::Mmio32).is_err());
        c.add_bar(0, 0, 0x1000, BarKind::Mmio32).unwrap();
        assert!(c.add_bar(0, 0, 0x1000, BarKind::Mmio32).is_err());
        assert!(c.add_bar(6, 0, 0x1000, BarKind::Mmio32).is_err());
    }

    #[test]
    fn capabilities_are_chained_with_write_masks() {
        let mut c = cfg();
        let a = c
            .add_capability(&[0x11, 0xaa, 0x03, 0x00], &[(3, 1)])
            .unwrap();
        let b = c.add_capability(&[0x09, 0, 5, 1, 2, 3], &[]).unwrap();
        assert_eq!(a, 0x40);
        assert_eq!(b, 0x44);
        assert_eq!(c.read_reg(13) & 0xff, 0x40);
        assert_ne!(c.read_reg(1) & STATUS_CAP_LIST, 0);
        assert_eq!(c.read_reg(0x40 / 4), 0x0003_4411);
        assert_eq!(c.read_reg(0x44 / 4), 0x0105_0009);
        c.write_reg(0x40 / 4, 3, &[0xc0]);
        c.write_reg(0x40 / 4, 2, &[0xff]);
        assert_eq!(c.read_reg(0x40 / 4), 0xc003_4411);
        assert!(c.add_capability(&[0; 200], &[]).is_err());
    }

    #[test]
    fn malformed_writes_are_ignored() {
        let mut c = cfg();
        let before = c.read_reg(1);
        assert_eq!(c.write_reg(1, 3, &[1, 2]), None);
        assert_eq!(c.write_reg(1, 0, &[1, 2, 3]), None);
        assert_eq!(c.write_reg(4096, 0, &[1]), None);
        assert_eq!(c.read_reg(1), before);
        assert_eq!(c.read_reg(5000), 0);
    }
}
