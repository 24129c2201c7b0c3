//! PCI: configuration space, the root bus (ECAM + 0xCF8/0xCFC), BAR
//! allocation and MSI-X.
//!
//! Every PCI function implements [`PciDevice`]; the root dispatches config
//! accesses to it and BAR accesses arrive through the MMIO/PIO [`crate::bus::Bus`].

use vmm_sys_util::eventfd::EventFd;

/// Kind of a base address register.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BarKind {
    /// 32-bit memory BAR.
    Mmio32,
    /// 64-bit memory BAR (occupies two BAR slots).
    Mmio64,
    /// I/O port BAR.
    Io,
}

/// One BAR as currently decoded by a device.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BarInfo {
    /// BAR index (0..=5); a 64-bit BAR is named by its low slot.
    pub index: usize,
    /// Guest-physical (or port) address currently programmed.
    pub addr: u64,
    /// Size in bytes (power of two).
    pub size: u64,
    /// BAR kind.
    pub kind: BarKind,
}

/// A BAR whose address the guest reprogrammed with a config write.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BarMove {
    /// The BAR before the move.
    pub old: BarInfo,
    /// Its new address.
    pub new_addr: u64,
}

/// A PCI function.
pub trait PciDevice: Send {
    /// Reads the 32-bit configuration register `reg` (dword index, 0..1024).
    fn read_config_register(&mut self, reg: usize) -> u32;
    /// Writes `data` (1, 2 or 4 bytes) at byte `offset` within dword `reg`.
    /// Returns the BAR it moved, if the write programmed a new BAR address.
    fn write_config_register(&mut self, reg: usize, offset: u64, data: &[u8]) -> Option<BarMove>;
    /// The device's BARs (allocated addresses as currently programmed).
    fn bars(&self) -> Vec<BarInfo>;
    /// Reads from BAR `bar` at `offset`.
    fn read_bar(&mut self, bar: usize, offset: u64, data: &mut [u8]);
    /// Writes to BAR `bar` at `offset`.
    fn write_bar(&mut self, bar: usize, offset: u64, data: &[u8]);
    /// Eventfds the VMM should register as KVM ioeventfds: `(bar, offset
    /// within the BAR, eventfd)`; a write of any value there signals it.
    fn ioeventfds(&self) -> Vec<(usize, u64, &EventFd)> {
        Vec::new()
    }
}

pub mod allocator;
pub mod config;
pub mod msix;
pub mod root;
