//! The configuration space the guest sees for an assigned function.
//!
//! | bytes | guest view |
//! |---|---|
//! | 0x00–0x03 IDs, 0x08 class, 0x2c subsystem | the host's, read-only |
//! | 0x04 command | emulated; memory-enable and bus-master changes are forwarded to the host |
//! | 0x06 status | capability-list bit (when a capability is kept) plus the host's static bits (66 MHz, fast back-to-back, DEVSEL timing); error bits are not reported and writes are dropped |
//! | 0x0c cache line, latency, header type, BIST | zero: single-function type-0 header |
//! | 0x10–0x27 BARs | emulated: memory BARs at the addresses the VMM allocated, sizing works, reprogramming reports a [`BarMove`]; I/O BARs are hidden (read 0, the guest sees no I/O BAR) |
//! | 0x30 expansion ROM | 0: no ROM |
//! | 0x34 capability pointer | first kept capability |
//! | 0x3c interrupt line/pin | line is scratch, pin 0: INTx is not offered |
//! | 0x40–0xff | kept capabilities only ([`crate::caps`]): MSI and MSI-X emulated, PCI Express read and written through to the host (VFIO filters what the guest may change) |
//! | 0x100–0xfff extended space | 0: no extended capabilities (AER, SR-IOV, ... stay host-only) |

use std::sync::Arc;

use devices::pci::config::{ConfigError, PciConfiguration, PciIds, NUM_REGS};
use devices::pci::{BarInfo, BarKind, BarMove};

use crate::caps::{CapLayout, CAP_ID_MSI, CAP_ID_MSIX, CAP_ID_PCIE, CONFIG_SIZE, STATUS_CAP_LIST};
use crate::msi::MsiCap;
use crate::msix::MsixState;
use crate::region::{config_bytes, DeviceRegions, RegionInfo, BAR_COUNT, CONFIG_REGION};

/// Command bits forwarded to the host: memory space and bus master.
const COMMAND_FORWARDED: u16 =
    devices::pci::config::COMMAND_MEMORY | devices::pci::config::COMMAND_BUS_MASTER;
/// Status bits copied from the host: 66 MHz, fast back-to-back, DEVSEL.
const STATUS_STATIC: u16 = 0x06a0;
/// Register index of the first capability dword and one past the last.
const CAP_REGS: std::ops::Range<usize> = 16..64;

/// A memory BAR of the host function, as exposed to the guest.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BarSpec {
    /// BAR index (the low slot of a 64-bit BAR).
    pub index: usize,
    /// 32- or 64-bit memory.
    pub kind: BarKind,
    /// Size in bytes (a power of two; the host region's size).
    pub size: u64,
    /// The host BAR is prefetchable (the guest sees the same bit).
    pub prefetchable: bool,
    /// What VFIO says about the region (mmap-able areas).
    pub region: RegionInfo,
}

/// Finds the host's memory BARs in a configuration snapshot and VFIO's
/// region information. Returns the BARs to expose and the indices of the
/// hidden I/O BARs. BARs VFIO reports as empty, with a size that is not a
/// power of two of at least 16 bytes, or a 64-bit BAR in slot 5 are
/// skipped (logged).
pub fn probe_bars(
    cfg: &[u8; CONFIG_SIZE],
    regions: &dyn DeviceRegions,
) -> (Vec<BarSpec>, Vec<usize>) {
    let (mut bars, mut io) = (Vec::new(), Vec::new());
    let mut i = 0;
    while i < BAR_COUNT {
        let o = 0x10 + 4 * i;
        let lo = u32::from_le_bytes([cfg[o], cfg[o + 1], cfg[o + 2], cfg[o + 3]]);
        let info = regions.region_info(i as u32).unwrap_or_default();
        if lo & 1 == 1 {
            if info.size > 0 {
                io.push(i);
            }
            i += 1;
            continue;
        }
        let is64 = (lo >> 1) & 3 == 2;
        let slots = if is64 { 2 } else { 1 };
        let valid = info.size >= 16 && info.size.is_power_of_two() && i + slots <= BAR_COUNT;
        if info.size > 0 && !valid {
            tracing::warn!("VFIO: BAR {i} (size {:#x}) cannot be exposed", info.size);
        }
        if valid && (is64 || info.size <= 1 << 31) {
            bars.push(BarSpec {
                index: i,
                kind: if is64 {
                    BarKind::Mmio64
                } else {
                    BarKind::Mmio32
                },
                size: info.size,
                prefetchable: lo & 8 != 0,
                region: info,
            });
        }
        i += slots;
    }
    (bars, io)
}

/// The emulated configuration space of one assigned function.
pub struct VirtualConfig {
    header: PciConfiguration,
    caps: CapLayout,
    msi: Option<MsiCap>,
    msix: Option<MsixState>,
    regions: Arc<dyn DeviceRegions>,
}

impl VirtualConfig {
    /// Builds the guest view from a snapshot of the host's first 256
    /// bytes, its filtered capabilities, its memory BARs at their guest
    /// addresses, and the MSI/MSI-X emulation (present when `caps` keeps
    /// the capability).
    pub fn new(
        cfg: &[u8; CONFIG_SIZE],
        caps: CapLayout,
        bars: &[(BarSpec, u64)],
        msi: Option<MsiCap>,
        msix: Option<MsixState>,
        regions: Arc<dyn DeviceRegions>,
    ) -> Result<Self, (usize, ConfigError)> {
        let w16 = |o: usize| u16::from_le_bytes([cfg[o], cfg[o + 1]]);
        let mut header = PciConfiguration::new(PciIds {
            vendor: w16(0),
            device: w16(2),
            class: (cfg[0x0b], cfg[0x0a], cfg[0x09]),
            revision: cfg[0x08],
            subsystem_vendor: w16(0x2c),
            subsystem: w16(0x2e),
        });
        for (b, addr) in bars {
            header
                .add_bar(b.index, *addr, b.size, b.kind)
                .map_err(|e| (b.index, e))?;
            if b.prefetchable {
                let reg = 4 + b.index;
                header.set_reg(reg, header.read_reg(reg) | 0x8);
            }
        }
        let mut status = w16(6) & STATUS_STATIC;
        if !caps.kept().is_empty() {
            status |= STATUS_CAP_LIST;
        }
        header.set_reg(1, u32::from(status) << 16);
        header.set_reg(13, u32::from(caps.first()));
        Ok(VirtualConfig {
            header,
            caps,
            msi,
            msix,
            regions,
        })
    }

    /// The command register as the guest last wrote it.
    pub fn command(&self) -> u16 {
        self.header.command()
    }

    /// The exposed BARs at their current guest addresses.
    pub fn bars(&self) -> Vec<BarInfo> {
        self.header.bars()
    }

    /// The guest-visible capability chain.
    pub fn caps(&self) -> &CapLayout {
        &self.caps
    }

    /// The MSI-X emulation, when the function has MSI-X.
    pub fn msix(&self) -> Option<&MsixState> {
        self.msix.as_ref()
    }

    /// The MSI-X emulation, mutably (BAR accesses to the table).
    pub fn msix_mut(&mut self) -> Option<&mut MsixState> {
        self.msix.as_mut()
    }

    /// The MSI emulation, when the function has MSI.
    pub fn msi(&self) -> Option<&MsiCap> {
        self.msi.as_ref()
    }

    /// Reads dword register `reg` (0..1024); anything else reads 0.
    pub fn read(&self, reg: usize) -> u32 {
        match reg {
            0..=15 => self.header.read_reg(reg),
            r if CAP_REGS.contains(&r) => self.read_caps(r),
            _ => 0,
        }
    }

    fn read_caps(&self, reg: usize) -> u32 {
        let mut out = [0u8; 4];
        let mut host: Option<[u8; 4]> = None;
        for (k, byte) in out.iter_mut().enumerate() {
            let p = reg * 4 + k;
            let Some(c) = self.caps.at(p) else { continue };
            let i = p - c.offset;
            *byte = match (c.id, i) {
                (id, 0) => id,
                (_, 1) => self.caps.next_after(c.offset),
                (CAP_ID_MSI, _) => self.msi.as_ref().map_or(0, |m| m.bytes()[i]),
                (CAP_ID_MSIX, _) => self.msix.as_ref().map_or(0, |m| m.cap_bytes()[i]),
                (CAP_ID_PCIE, _) => {
                    host.get_or_insert_with(|| config_bytes(&*self.regions, (reg * 4) as u64))[k]
                }
                _ => 0,
            };
        }
        u32::from_le_bytes(out)
    }

    /// Applies a guest write of `data` at byte `offset` of register `reg`.
    /// Malformed accesses (length other than 1, 2 or 4, crossing the
    /// dword, register out of range) are dropped. Returns the BAR the
    /// write moved.
    pub fn write(&mut self, reg: usize, offset: u64, data: &[u8]) -> Option<BarMove> {
        let offset = usize::try_from(offset).ok()?;
        if reg >= NUM_REGS
            || !matches!(data.len(), 1 | 2 | 4)
            || offset.checked_add(data.len())? > 4
        {
            return None;
        }
        if reg < 16 {
            let before = self.header.command();
            let moved = self.header.write_reg(reg, offset as u64, data);
            let after = self.header.command();
            if (before ^ after) & COMMAND_FORWARDED != 0 {
                self.forward_command(after);
            }
            return moved;
        }
        if CAP_REGS.contains(&reg) {
            self.write_caps(reg * 4 + offset, data);
        }
        None
    }

    fn forward_command(&self, cmd: u16) {
        let host = u16::from_le_bytes(config_bytes(&*self.regions, 4));
        let v = (host & !COMMAND_FORWARDED) | (cmd & COMMAND_FORWARDED);
        self.regions.write(CONFIG_REGION, 4, &v.to_le_bytes());
    }

    fn write_caps(&mut self, start: usize, data: &[u8]) {
        let end = start + data.len();
        let caps = self.caps.kept().to_vec();
        for c in caps {
            let (s, e) = (start.max(c.offset), end.min(c.end()));
            if s >= e {
                continue;
            }
            let sub = &data[s - start..e - start];
            let off = s - c.offset;
            match c.id {
                CAP_ID_MSI => {
                    if let Some(m) = self.msi.as_mut() {
                        m.write(off, sub);
                    }
                }
                CAP_ID_MSIX => {
                    if let Some(m) = self.msix.as_mut() {
                        m.write_cap(off, sub);
                    }
                }
                CAP_ID_PCIE if matches!(sub.len(), 1 | 2 | 4) => {
                    self.regions.write(CONFIG_REGION, s as u64, sub);
                }
                _ => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fake::FakeDevice;

    fn snapshot(dev: &FakeDevice) -> [u8; CONFIG_SIZE] {
        config_bytes(dev, 0)
    }

    #[test]
    fn probe_finds_memory_bars_and_hides_io() {
        let dev = FakeDevice::new();
        let (bars, io) = probe_bars(&snapshot(&dev), &dev);
        let summary: Vec<(usize, BarKind, u64, bool)> = bars
            .iter()
            .map(|b| (b.index, b.kind, b.size, b.prefetchable))
            .collect();
        assert_eq!(
            summary,
            vec![
                (0, BarKind::Mmio32, 0x20000, false),
                (2, BarKind::Mmio64, 0x4000, false),
                (4, BarKind::Mmio64, 0x10_0000, true),
            ]
        );
        assert_eq!(io, vec![1]);
    }

    #[test]
    fn probe_skips_bad_sizes_and_a_64_bit_bar_in_slot_5() {
        let mut dev = FakeDevice::new();
        dev.edit_config(|c| {
            c[0x20..0x24].copy_from_slice(&0u32.to_le_bytes());
            c[0x24..0x28].copy_from_slice(&4u32.to_le_bytes());
        });
        dev.set_region(4, RegionInfo::default());
        let sized = |size| RegionInfo {
            size,
            ..Default::default()
        };
        dev.set_region(5, sized(0x1000));
        dev.set_region(0, sized(0x3000));
        let (bars, _) = probe_bars(&snapshot(&dev), &dev);
        let idx: Vec<usize> = bars.iter().map(|b| b.index).collect();
        assert_eq!(
            idx,
            vec![2],
            "BAR0: not a power of two; BAR5: 64-bit in the last slot"
        );
    }
}
