//! [`VfioPciDevice`]: an assigned host function on the guest's PCI bus.
//!
//! Wiring, in order:
//!
//! 1. [`VfioPciDevice::probe`] reads the function through the
//!    [`DeviceRegions`] seam and returns its [`DeviceLayout`]: the memory
//!    BARs to allocate guest addresses for and the number of interrupt
//!    vectors to allocate.
//! 2. [`VfioPciDevice::new`] takes the addresses, one
//!    [`MsiInterruptGroup`] of [`DeviceLayout::vectors`] vectors (KVM GSI
//!    routes + irqfds) and the VMM's [`MmioSlots`], and mmaps every BAR
//!    area that can be mapped into the guest ([`VfioPciDevice::mmio_areas`]).
//! 3. The device goes into the PCI root like any other [`PciDevice`].
//!
//! Mapped areas become KVM memory slots only while the guest has memory
//! decoding enabled in the command register, and follow BAR moves; the rest
//! of each BAR (MSI-X table and PBA pages, areas VFIO does not let us
//! mmap) traps into [`PciDevice::read_bar`]/[`PciDevice::write_bar`] and is
//! forwarded to the device, except the MSI-X table and PBA, which are
//! emulated.

use std::io;
use std::sync::Arc;

use devices::interrupt::MsiInterruptGroup;
use devices::pci::config::{ConfigError, COMMAND_MEMORY};
use devices::pci::{BarInfo, BarMove, PciDevice};

use crate::caps::{CapLayout, CAP_ID_MSI, CAP_ID_MSIX, CONFIG_SIZE};
use crate::config::{probe_bars, BarSpec, VirtualConfig};
use crate::irq::VectorRouter;
use crate::msi::MsiCap;
use crate::msix::{mmap_areas, MsixInfo, MsixState};
use crate::region::{config_bytes, DeviceRegions, IrqKind, BAR_COUNT};

/// Granularity of KVM memory slots (x86 host pages).
pub const PAGE_SIZE: u64 = 4096;

/// Errors assigning a probed function.
#[derive(Debug, thiserror::Error)]
pub enum DeviceError {
    /// Configuration reads return all ones.
    #[error("the device's configuration space reads as all ones: check that it is present, powered (not in D3cold) and bound to vfio-pci")]
    Unreadable,
    /// The function is a bridge, not an endpoint.
    #[error("the device has header type {0:#x}, not an endpoint: assign the endpoints behind a bridge, not the bridge")]
    NotEndpoint(u8),
    /// Neither MSI nor MSI-X is usable.
    #[error("the device offers neither MSI nor MSI-X vectors and INTx is not supported: assign a device with message-signalled interrupts")]
    NoInterrupts,
    /// The MSI-X table or PBA is in a BAR that is not exposed.
    #[error("the MSI-X table or PBA is in BAR {0}, which is not an exposed memory BAR: this device cannot be assigned")]
    MsixBar(usize),
    /// The interrupt group is too small.
    #[error("the interrupt group has {got} vectors, the device needs {needed}: allocate DeviceLayout::vectors() vectors")]
    Vectors {
        /// Vectors needed.
        needed: usize,
        /// Vectors given.
        got: usize,
    },
    /// No guest address was given for a BAR.
    #[error("no guest address for BAR {0}: allocate one for every BAR of DeviceLayout::bars")]
    MissingBarAddress(usize),
    /// A BAR address was rejected (not aligned to the BAR size).
    #[error("BAR {0}: {1}: the guest address must be aligned to the BAR size")]
    BadBarAddress(usize, ConfigError),
    /// Creating an eventfd failed.
    #[error("cannot create interrupt eventfds: {0}")]
    Io(#[from] io::Error),
}

/// What [`VfioPciDevice::probe`] found.
#[derive(Clone, Debug)]
pub struct DeviceLayout {
    /// Memory BARs the guest will see. Allocate a guest address for each,
    /// aligned to `max(size, PAGE_SIZE)` so mmap-able areas can be slots.
    pub bars: Vec<BarSpec>,
    /// I/O BARs of the host, hidden from the guest.
    pub hidden_io_bars: Vec<usize>,
    /// MSI-X table and PBA location, when MSI-X is usable.
    pub msix: Option<MsixInfo>,
    /// MSI-X vectors the guest will see (0: no MSI-X).
    pub msix_vectors: usize,
    /// MSI vectors the guest can enable (0: no MSI).
    pub msi_vectors: usize,
    /// The capability chain the guest will see.
    pub caps: CapLayout,
    snapshot: [u8; CONFIG_SIZE],
}

impl DeviceLayout {
    /// Size of the interrupt group the VMM must create (MSI and MSI-X
    /// share it; a function uses one at a time).
    pub fn vectors(&self) -> usize {
        self.msix_vectors.max(self.msi_vectors)
    }

    /// Offers the guest at most `max` vectors (at least 1): the MSI-X
    /// table size it sees shrinks (entries beyond stay masked in hardware)
    /// and MSI offers the largest power of two within `max`. Use it to
    /// keep GSIs and eventfds bounded for devices with huge tables.
    pub fn limit_vectors(&mut self, max: usize) {
        let max = max.max(1);
        self.msix_vectors = self.msix_vectors.min(max);
        let mut msi = self.msi_vectors;
        while msi > max {
            msi /= 2;
        }
        self.msi_vectors = msi;
    }
}

/// The VMM's KVM memory slots for mmapped BAR areas.
///
/// Called with the device's lock held (from config writes); must not call
/// back into the PCI root.
pub trait MmioSlots: Send + Sync {
    /// Makes `[guest_addr, guest_addr + size)` a memory slot backed by the
    /// host mapping at `host_addr`.
    fn map(&self, guest_addr: u64, size: u64, host_addr: u64) -> io::Result<()>;
    /// Removes the slot at `guest_addr` created by [`Self::map`].
    fn unmap(&self, guest_addr: u64, size: u64) -> io::Result<()>;
}

/// One mmapped area of a BAR.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MmioArea {
    /// BAR index.
    pub bar: usize,
    /// Offset of the area in the BAR (page aligned).
    pub offset: u64,
    /// Size in bytes (whole pages).
    pub size: u64,
    /// Where it is mapped in the VMM.
    pub host_addr: u64,
    /// Guest address of its memory slot, while one exists.
    pub guest_addr: Option<u64>,
}

/// A host PCI function assigned to the guest.
pub struct VfioPciDevice {
    config: VirtualConfig,
    regions: Arc<dyn DeviceRegions>,
    areas: Vec<MmioArea>,
    slots: Arc<dyn MmioSlots>,
    bar_sizes: [u64; BAR_COUNT],
}

impl VfioPciDevice {
    /// Reads the function's configuration, BARs and interrupt support.
    pub fn probe(regions: &dyn DeviceRegions) -> Result<DeviceLayout, DeviceError> {
        let snapshot: [u8; CONFIG_SIZE] = config_bytes(regions, 0);
        if snapshot[0..2] == [0xff, 0xff] {
            return Err(DeviceError::Unreadable);
        }
        if snapshot[0x0e] & 0x7f != 0 {
            return Err(DeviceError::NotEndpoint(snapshot[0x0e] & 0x7f));
        }
        let mut caps = CapLayout::from_config(&snapshot);
        let (bars, hidden_io_bars) = probe_bars(&snapshot, regions);
        let mut msix = caps
            .find_id(CAP_ID_MSIX)
            .map(|c| MsixInfo::parse(&snapshot, c.offset));
        let mut msix_vectors = msix.map_or(0, |m| {
            m.vectors.min(regions.irq_count(IrqKind::MsiX) as usize)
        });
        if let Some(m) = msix {
            for bar in [m.table_bar, m.pba_bar] {
                if !bars.iter().any(|b| b.index == bar) {
                    return Err(DeviceError::MsixBar(bar));
                }
            }
        }
        if msix_vectors == 0 {
            caps.hide(CAP_ID_MSIX);
            msix = None;
        }
        let msi_vectors = caps.find_id(CAP_ID_MSI).map_or(0, |c| {
            let mmc = (snapshot[c.offset + 2] >> 1) & 7;
            (1usize << mmc.min(5)).min(regions.irq_count(IrqKind::Msi) as usize)
        });
        if msi_vectors == 0 {
            caps.hide(CAP_ID_MSI);
        }
        if msix.is_none() {
            msix_vectors = 0;
        }
        if msix_vectors == 0 && msi_vectors == 0 {
            return Err(DeviceError::NoInterrupts);
        }
        for (id, off) in caps.hidden() {
            tracing::debug!("VFIO: hiding capability {id:#04x} at {off:#x}");
        }
        Ok(DeviceLayout {
            bars,
            hidden_io_bars,
            msix,
            msix_vectors,
            msi_vectors,
            caps,
            snapshot,
        })
    }

    /// Builds the device: `bar_addrs` holds `(BAR index, guest address)`
    /// for every BAR of `layout.bars`, `msi` has at least
    /// [`DeviceLayout::vectors`] vectors, `slots` receives the mmapped BAR
    /// areas. An area whose mmap fails stays trapped (slower, correct).
    pub fn new(
        regions: Arc<dyn DeviceRegions>,
        layout: DeviceLayout,
        bar_addrs: &[(usize, u64)],
        msi: Arc<dyn MsiInterruptGroup>,
        slots: Arc<dyn MmioSlots>,
    ) -> Result<Self, DeviceError> {
        let needed = layout.vectors();
        if msi.len() < needed {
            return Err(DeviceError::Vectors {
                needed,
                got: msi.len(),
            });
        }
        let router = Arc::new(VectorRouter::new(msi, regions.clone(), needed)?);
        let msix = layout
            .msix
            .map(|i| MsixState::new(i, layout.msix_vectors, router.clone()));
        let msi = layout.caps.find_id(CAP_ID_MSI).map(|c| {
            let ctl =
                u16::from_le_bytes([layout.snapshot[c.offset + 2], layout.snapshot[c.offset + 3]]);
            MsiCap::new(ctl, layout.msi_vectors, router.clone())
        });
        let mut placed = Vec::with_capacity(layout.bars.len());
        let mut bar_sizes = [0u64; BAR_COUNT];
        for b in &layout.bars {
            let addr = bar_addrs
                .iter()
                .find(|(i, _)| *i == b.index)
                .map(|(_, a)| *a)
                .ok_or(DeviceError::MissingBarAddress(b.index))?;
            placed.push((b.clone(), addr));
            bar_sizes[b.index] = b.size;
        }
        let config = VirtualConfig::new(
            &layout.snapshot,
            layout.caps.clone(),
            &placed,
            msi,
            msix,
            regions.clone(),
        )
        .map_err(|(i, e)| DeviceError::BadBarAddress(i, e))?;
        let mut areas = Vec::new();
        for b in &layout.bars {
            let trapped = layout.msix.map_or(Vec::new(), |m| m.trapped(b.index));
            for (offset, size) in mmap_areas(&b.region.mmap_areas(), &trapped, PAGE_SIZE) {
                match regions.mmap(b.index as u32, offset, size) {
                    Ok(host_addr) => areas.push(MmioArea {
                        bar: b.index,
                        offset,
                        size,
                        host_addr,
                        guest_addr: None,
                    }),
                    Err(e) => tracing::warn!(
                        "VFIO: cannot mmap BAR {} {offset:#x}+{size:#x} ({e}); it stays trapped",
                        b.index
                    ),
                }
            }
        }
        Ok(VfioPciDevice {
            config,
            regions,
            areas,
            slots,
            bar_sizes,
        })
    }

    /// The mmapped BAR areas and their current slots.
    pub fn mmio_areas(&self) -> &[MmioArea] {
        &self.areas
    }

    /// The emulated configuration space.
    pub fn config(&self) -> &VirtualConfig {
        &self.config
    }

    fn memory_enabled(&self) -> bool {
        self.config.command() & COMMAND_MEMORY != 0
    }

    fn unmap_area(slots: &dyn MmioSlots, a: &mut MmioArea) {
        if let Some(g) = a.guest_addr.take() {
            if let Err(e) = slots.unmap(g, a.size) {
                tracing::warn!(
                    "VFIO: cannot remove the slot of BAR {} at {g:#x}: {e}",
                    a.bar
                );
            }
        }
    }

    fn map_area(slots: &dyn MmioSlots, a: &mut MmioArea, bar_addr: u64) {
        let Some(g) = bar_addr.checked_add(a.offset) else {
            return;
        };
        match slots.map(g, a.size, a.host_addr) {
            Ok(()) => a.guest_addr = Some(g),
            Err(e) => tracing::warn!(
                "VFIO: cannot map BAR {} area at {g:#x}+{:#x} ({e}); it stays trapped",
                a.bar,
                a.size
            ),
        }
    }

    fn map_all(&mut self) {
        let bars = self.config.bars();
        for a in self.areas.iter_mut().filter(|a| a.guest_addr.is_none()) {
            if let Some(b) = bars.iter().find(|b| b.index == a.bar) {
                Self::map_area(&*self.slots, a, b.addr);
            }
        }
    }

    fn unmap_all(&mut self) {
        for a in &mut self.areas {
            Self::unmap_area(&*self.slots, a);
        }
    }

    fn move_bar(&mut self, m: &BarMove) {
        let enabled = self.memory_enabled();
        for a in self.areas.iter_mut().filter(|a| a.bar == m.old.index) {
            Self::unmap_area(&*self.slots, a);
            if enabled {
                Self::map_area(&*self.slots, a, m.new_addr);
            }
        }
    }

    fn in_bar(&self, bar: usize, offset: u64, len: usize) -> bool {
        let size = self.bar_sizes.get(bar).copied().unwrap_or(0);
        offset
            .checked_add(len as u64)
            .is_some_and(|end| end <= size)
    }
}

impl PciDevice for VfioPciDevice {
    fn read_config_register(&mut self, reg: usize) -> u32 {
        self.config.read(reg)
    }

    fn write_config_register(&mut self, reg: usize, offset: u64, data: &[u8]) -> Option<BarMove> {
        let was = self.memory_enabled();
        let moved = self.config.write(reg, offset, data);
        if let Some(m) = &moved {
            self.move_bar(m);
        }
        match (was, self.memory_enabled()) {
            (false, true) => self.map_all(),
            (true, false) => self.unmap_all(),
            _ => {}
        }
        moved
    }

    fn bars(&self) -> Vec<BarInfo> {
        self.config.bars()
    }

    fn read_bar(&mut self, bar: usize, offset: u64, data: &mut [u8]) {
        if let Some(m) = self.config.msix() {
            if m.read_bar(bar, offset, data) {
                return;
            }
        }
        if !self.in_bar(bar, offset, data.len()) {
            data.fill(0xff);
            return;
        }
        self.regions.read(bar as u32, offset, data);
    }

    fn write_bar(&mut self, bar: usize, offset: u64, data: &[u8]) {
        if let Some(m) = self.config.msix_mut() {
            if m.write_bar(bar, offset, data) {
                return;
            }
        }
        if self.in_bar(bar, offset, data.len()) {
            self.regions.write(bar as u32, offset, data);
        }
    }
}

impl Drop for VfioPciDevice {
    /// Removes the memory slots before the mappings behind them go away
    /// with the [`DeviceRegions`].
    fn drop(&mut self) {
        self.unmap_all();
    }
}
