//! The seam between the PCI emulation and the host: [`DeviceRegions`].
//!
//! Everything this crate needs from an assigned function goes through this
//! trait: its configuration space, its BAR regions (information, trapped
//! reads and writes, mmap), and its MSI/MSI-X trigger eventfds. The real
//! implementation is [`crate::vfio::VfioRegions`] (VFIO ioctls on a device
//! fd); tests use `fake::FakeDevice`. Region indices follow VFIO's
//! numbering for PCI: BARs 0..=5, expansion ROM 6, configuration space 7.

use std::io;

use vmm_sys_util::eventfd::EventFd;

/// Number of BAR regions.
pub const BAR_COUNT: usize = 6;
/// Region index of the expansion ROM (never exposed to the guest).
pub const ROM_REGION: u32 = 6;
/// Region index of the configuration space.
pub const CONFIG_REGION: u32 = 7;

/// What the host says about one region.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RegionInfo {
    /// Size in bytes (0: the region does not exist, e.g. the upper half of
    /// a 64-bit BAR).
    pub size: u64,
    /// The region may be read.
    pub readable: bool,
    /// The region may be written.
    pub writable: bool,
    /// The region (or its `sparse_mmap` areas) may be mmapped.
    pub mmap: bool,
    /// When non-empty, only these `(offset, size)` areas may be mmapped;
    /// when empty and `mmap` is set, the whole region may.
    pub sparse_mmap: Vec<(u64, u64)>,
}

impl RegionInfo {
    /// The `(offset, size)` areas that may be mmapped, as the host allows.
    pub fn mmap_areas(&self) -> Vec<(u64, u64)> {
        if !self.mmap || self.size == 0 {
            return Vec::new();
        }
        if self.sparse_mmap.is_empty() {
            return vec![(0, self.size)];
        }
        self.sparse_mmap
            .iter()
            .filter(|(o, s)| *s > 0 && o.checked_add(*s).is_some_and(|e| e <= self.size))
            .copied()
            .collect()
    }
}

/// The two message-signalled interrupt types VFIO can wire to eventfds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum IrqKind {
    /// MSI (up to 32 vectors, configured in the capability).
    Msi,
    /// MSI-X (up to 2048 vectors, configured in a table in a BAR).
    MsiX,
}

/// Access to one host PCI function. Methods take `&self`: the real device
/// fd is shared between the vCPU threads that trap into it.
///
/// Reads that fail fill `data` with all ones (what a read from a function
/// that does not answer returns on real hardware) and writes that fail are
/// dropped; both are logged by the implementation. Errors are only
/// reported where the caller can do something else instead (mmap: trap;
/// interrupts: log and keep the guest-visible state).
pub trait DeviceRegions: Send + Sync {
    /// Information about region `index`; `None` when it does not exist.
    fn region_info(&self, index: u32) -> Option<RegionInfo>;
    /// Reads `data.len()` bytes at `offset` of region `index`.
    fn read(&self, index: u32, offset: u64, data: &mut [u8]);
    /// Writes `data` at `offset` of region `index`.
    fn write(&self, index: u32, offset: u64, data: &[u8]);
    /// Maps `[offset, offset + size)` of region `index` into the VMM's
    /// address space and returns the host virtual address. The mapping
    /// stays valid as long as `self` lives.
    fn mmap(&self, index: u32, offset: u64, size: u64) -> io::Result<u64>;
    /// Number of vectors the host supports for `kind` (0: none).
    fn irq_count(&self, kind: IrqKind) -> u32;
    /// Enables `kind` with `fds.len()` vectors, vector `i` signalling
    /// `fds[i]` (VFIO_DEVICE_SET_IRQS, DATA_EVENTFD | ACTION_TRIGGER).
    fn enable_irqs(&self, kind: IrqKind, fds: &[&EventFd]) -> io::Result<()>;
    /// Makes vector `vector` of the enabled `kind` signal `fd` instead.
    fn set_irq(&self, kind: IrqKind, vector: u32, fd: &EventFd) -> io::Result<()>;
    /// Disables every vector of `kind`.
    fn disable_irqs(&self, kind: IrqKind) -> io::Result<()>;
}

/// Reads `N` bytes of configuration space at `offset`.
pub(crate) fn config_bytes<const N: usize>(r: &dyn DeviceRegions, offset: u64) -> [u8; N] {
    let mut b = [0u8; N];
    r.read(CONFIG_REGION, offset, &mut b);
    b
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mmap_areas_follow_flags_and_sparse_list() {
        let mut r = RegionInfo {
            size: 0x4000,
            readable: true,
            writable: true,
            mmap: false,
            sparse_mmap: vec![],
        };
        assert!(r.mmap_areas().is_empty());
        r.mmap = true;
        assert_eq!(r.mmap_areas(), vec![(0, 0x4000)]);
        r.sparse_mmap = vec![(0x1000, 0x1000), (0x3000, 0x2000), (0x2000, 0)];
        assert_eq!(
            r.mmap_areas(),
            vec![(0x1000, 0x1000)],
            "areas past the end or empty are dropped"
        );
        r.sparse_mmap = vec![(u64::MAX, 2)];
        assert!(r.mmap_areas().is_empty());
    }
}
