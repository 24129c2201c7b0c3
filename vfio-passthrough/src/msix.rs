//! MSI-X of an assigned function.
//!
//! The vector table and the pending-bit array are emulated by
//! [`devices::pci::msix::Msix`] (the same code as for virtio devices); its
//! interrupt group is a view of the [`VectorRouter`], so guest table writes
//! become KVM routes and VFIO eventfd switches. The pages holding the table
//! and the PBA are always trapped, even when the host lets the rest of the
//! BAR be mmapped: [`mmap_areas`] cuts them out of the mmap-able areas.
//! Accesses in those pages outside the table and the PBA go to the device.

use std::sync::Arc;

use devices::pci::msix::Msix;

use crate::caps::CONFIG_SIZE;
use crate::irq::VectorRouter;
use crate::region::IrqKind;

/// Message control: MSI-X enable.
const CTL_ENABLE: u16 = 1 << 15;
/// Bits of the upper control byte the guest may write (enable, function mask).
const CTL_HI_WRITABLE: u8 = 0xc0;
/// Bytes per table entry.
const ENTRY_SIZE: u64 = 16;

/// Where the host function keeps its MSI-X structures.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MsixInfo {
    /// Table size (vectors) of the host capability.
    pub vectors: usize,
    /// BAR holding the table.
    pub table_bar: usize,
    /// Offset of the table in that BAR.
    pub table_offset: u64,
    /// BAR holding the PBA.
    pub pba_bar: usize,
    /// Offset of the PBA in that BAR.
    pub pba_offset: u64,
    table_reg: u32,
    pba_reg: u32,
}

impl MsixInfo {
    /// Reads the capability at `offset` of a configuration snapshot.
    pub fn parse(cfg: &[u8; CONFIG_SIZE], offset: usize) -> Self {
        let b = |i: usize| cfg.get(offset + i).copied().unwrap_or(0);
        let ctl = u16::from_le_bytes([b(2), b(3)]);
        let table_reg = u32::from_le_bytes([b(4), b(5), b(6), b(7)]);
        let pba_reg = u32::from_le_bytes([b(8), b(9), b(10), b(11)]);
        MsixInfo {
            vectors: usize::from(ctl & 0x7ff) + 1,
            table_bar: (table_reg & 7) as usize,
            table_offset: u64::from(table_reg & !7),
            pba_bar: (pba_reg & 7) as usize,
            pba_offset: u64::from(pba_reg & !7),
            table_reg,
            pba_reg,
        }
    }

    /// Length of the host table in bytes.
    pub fn table_len(&self) -> u64 {
        self.vectors as u64 * ENTRY_SIZE
    }

    /// Length of the host PBA in bytes.
    pub fn pba_len(&self) -> u64 {
        self.vectors.div_ceil(64) as u64 * 8
    }

    /// The `(offset, len)` byte ranges of BAR `bar` that must be trapped.
    pub fn trapped(&self, bar: usize) -> Vec<(u64, u64)> {
        let mut out = Vec::new();
        if bar == self.table_bar {
            out.push((self.table_offset, self.table_len()));
        }
        if bar == self.pba_bar {
            out.push((self.pba_offset, self.pba_len()));
        }
        out
    }
}

/// The parts of the `allowed` `(offset, size)` areas of a BAR that can be
/// mapped into the guest: each area shrunk to whole pages of `page` bytes
/// (a power of two), minus every page that touches a `trapped` range.
/// Sorted, non-empty, page aligned.
pub fn mmap_areas(allowed: &[(u64, u64)], trapped: &[(u64, u64)], page: u64) -> Vec<(u64, u64)> {
    let down = |x: u64| x & !(page - 1);
    let up = |x: u64| x.checked_add(page - 1).map_or(down(u64::MAX), down);
    let holes: Vec<(u64, u64)> = trapped
        .iter()
        .filter(|(_, l)| *l > 0)
        .map(|&(s, l)| (down(s), up(s.saturating_add(l))))
        .collect();
    let mut out = Vec::new();
    for &(o, s) in allowed {
        let Some(end) = o.checked_add(s) else {
            continue;
        };
        let mut pieces: Vec<(u64, u64)> = vec![(up(o), down(end))];
        pieces.retain(|(a, b)| a < b);
        for &(hs, he) in &holes {
            pieces = pieces
                .into_iter()
                .flat_map(|(a, b)| [(a, b.min(hs)), (a.max(he), b)])
                .filter(|(a, b)| a < b)
                .collect();
        }
        out.extend(pieces.into_iter().map(|(a, b)| (a, b - a)));
    }
    out.sort_unstable();
    out
}

/// The emulated MSI-X capability, table and PBA.
pub struct MsixState {
    info: MsixInfo,
    msix: Msix,
    router: Arc<VectorRouter>,
}

impl MsixState {
    /// Emulates the host capability described by `info` with at most
    /// `max_vectors` vectors (and no more than `router` can wire); the
    /// guest sees the smaller table size.
    pub fn new(info: MsixInfo, max_vectors: usize, router: Arc<VectorRouter>) -> Self {
        let n = info.vectors.min(max_vectors).min(router.capacity()).max(1);
        let msix = Msix::new(router.msix_view(n));
        MsixState { info, msix, router }
    }

    /// Where the host keeps the table and PBA.
    pub fn info(&self) -> &MsixInfo {
        &self.info
    }

    /// Vectors the guest sees.
    pub fn len(&self) -> usize {
        self.msix.len()
    }

    /// Always false: MSI-X has at least one vector.
    pub fn is_empty(&self) -> bool {
        false
    }

    /// The capability's 12 bytes as the guest reads them (next pointer
    /// zero: the caller fills it in). Table and PBA locations are the
    /// host's.
    pub fn cap_bytes(&self) -> [u8; 12] {
        let mut b = [0u8; 12];
        b[0] = crate::caps::CAP_ID_MSIX;
        b[2..4].copy_from_slice(&self.msix.control().to_le_bytes());
        b[4..8].copy_from_slice(&self.info.table_reg.to_le_bytes());
        b[8..12].copy_from_slice(&self.info.pba_reg.to_le_bytes());
        b
    }

    /// Applies a guest write at byte `offset` of the capability: only the
    /// enable and function-mask bits change. Enabling wires the vectors
    /// through VFIO (all parked until unmasked); disabling unwires them.
    pub fn write_cap(&mut self, offset: usize, data: &[u8]) {
        let Some(k) = 3usize.checked_sub(offset).filter(|k| *k < data.len()) else {
            return;
        };
        let value = u16::from(data[k] & CTL_HI_WRITABLE) << 8;
        let was_on = self.msix.control() & CTL_ENABLE != 0;
        let now_on = value & CTL_ENABLE != 0;
        if !was_on && now_on {
            if let Err(e) = self.router.activate(IrqKind::MsiX, self.msix.len()) {
                tracing::error!("VFIO: cannot enable {} MSI-X vectors: {e}", self.msix.len());
            }
        }
        if was_on && !now_on {
            self.router.deactivate(IrqKind::MsiX);
        }
        self.msix.set_control(value);
    }

    fn in_table(&self, bar: usize, offset: u64) -> Option<u64> {
        let t = &self.info;
        (bar == t.table_bar && offset >= t.table_offset && offset - t.table_offset < t.table_len())
            .then(|| offset - t.table_offset)
    }

    fn in_pba(&self, bar: usize, offset: u64) -> Option<u64> {
        let t = &self.info;
        (bar == t.pba_bar && offset >= t.pba_offset && offset - t.pba_offset < t.pba_len())
            .then(|| offset - t.pba_offset)
    }

    /// Handles a guest read of BAR `bar` at `offset` when it hits the table
    /// or the PBA; false when the access belongs to the device.
    pub fn read_bar(&self, bar: usize, offset: u64, data: &mut [u8]) -> bool {
        if let Some(o) = self.in_table(bar, offset) {
            self.msix.read_table(o, data);
            return true;
        }
        if let Some(o) = self.in_pba(bar, offset) {
            self.msix.read_pba(o, data);
            return true;
        }
        false
    }

    /// Handles a guest write of BAR `bar` at `offset` when it hits the
    /// table or the PBA (PBA writes are dropped); false otherwise.
    pub fn write_bar(&mut self, bar: usize, offset: u64, data: &[u8]) -> bool {
        if let Some(o) = self.in_table(bar, offset) {
            self.msix.write_table(o, data);
            return true;
        }
        self.in_pba(bar, offset).is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fake::{FakeDevice, IrqCall};
    use crate::irq::tests::TestGroup;
    use crate::region::DeviceRegions;

    #[test]
    fn mmap_areas_exclude_trapped_pages() {
        let p = 0x1000;
        // Table at 0..0x50, PBA at 0x3000: the middle two pages remain.
        assert_eq!(
            mmap_areas(&[(0, 0x4000)], &[(0, 0x50), (0x3000, 8)], p),
            vec![(0x1000, 0x2000)]
        );
        // A table straddling a page boundary takes both pages.
        assert_eq!(
            mmap_areas(&[(0, 0x8000)], &[(0x1ff0, 0x20)], p),
            vec![(0, 0x1000), (0x3000, 0x5000)]
        );
        // Unaligned allowed areas shrink to whole pages; tiny ones vanish.
        assert_eq!(
            mmap_areas(&[(0x800, 0x2000), (0x5000, 0x800)], &[], p),
            vec![(0x1000, 0x1000)]
        );
        // Sparse areas and a trap in only one of them.
        assert_eq!(
            mmap_areas(&[(0x4000, 0x4000), (0, 0x2000)], &[(0x5000, 0x10)], p),
            vec![(0, 0x2000), (0x4000, 0x1000), (0x6000, 0x2000)]
        );
        // Hostile values do not overflow.
        assert_eq!(mmap_areas(&[(u64::MAX - 5, 10)], &[], p), vec![]);
        assert_eq!(
            mmap_areas(&[(0, 0x2000)], &[(u64::MAX - 5, 10), (0, 0)], p),
            vec![(0, 0x2000)]
        );
        assert_eq!(mmap_areas(&[(0, 0x2000)], &[(0, u64::MAX)], p), vec![]);
    }

    #[test]
    fn parse_and_traps() {
        let mut cfg = [0u8; CONFIG_SIZE];
        cfg[0xb0..0xbc].copy_from_slice(&[0x11, 0, 0x40, 0x00, 0x02, 0x20, 0, 0, 0x04, 0x30, 0, 0]);
        let i = MsixInfo::parse(&cfg, 0xb0);
        assert_eq!(i.vectors, 65);
        assert_eq!((i.table_bar, i.table_offset), (2, 0x2000));
        assert_eq!((i.pba_bar, i.pba_offset), (4, 0x3000));
        assert_eq!(i.table_len(), 65 * 16);
        assert_eq!(i.pba_len(), 16);
        assert_eq!(i.trapped(2), vec![(0x2000, 65 * 16)]);
        assert_eq!(i.trapped(4), vec![(0x3000, 16)]);
        assert!(i.trapped(0).is_empty());
        // Out of range offsets read as zero instead of panicking.
        let i = MsixInfo::parse(&cfg, 0xfc);
        assert_eq!(i.vectors, 1);
    }

    fn state() -> (Arc<FakeDevice>, Arc<TestGroup>, MsixState) {
        let dev = Arc::new(FakeDevice::new());
        let g = TestGroup::new(5);
        let r = Arc::new(VectorRouter::new(g.clone(), dev.clone(), 5).unwrap());
        let mut cfg = [0u8; CONFIG_SIZE];
        dev.read(crate::region::CONFIG_REGION, 0, &mut cfg);
        (dev, g, MsixState::new(MsixInfo::parse(&cfg, 0xb0), 5, r))
    }

    #[test]
    fn enable_mask_and_unmask_flow_through_vfio() {
        let (dev, g, mut m) = state();
        assert_eq!(u16::from_le_bytes([m.cap_bytes()[2], m.cap_bytes()[3]]), 4);
        // Program vector 2 while disabled: no route yet.
        assert!(m.write_bar(2, 2 * 16, &0xfee0_0000u32.to_le_bytes()));
        assert!(m.write_bar(2, 2 * 16 + 8, &0x45u32.to_le_bytes()));
        assert_eq!(g.route(2), None);
        // Enable with the function masked (what Linux does first).
        m.write_cap(3, &[0xc0]);
        assert!(
            matches!(&dev.take_irq_calls()[..], [IrqCall::Enable(IrqKind::MsiX, f)] if f.len() == 5)
        );
        m.write_cap(2, &[0x00, 0x80]);
        assert!(dev.take_irq_calls().is_empty(), "all vectors still masked");
        // Unmask vector 2.
        assert!(m.write_bar(2, 2 * 16 + 12, &0u32.to_le_bytes()));
        assert_eq!(g.route(2).map(|r| r.data), Some(0x45));
        assert!(matches!(
            &dev.take_irq_calls()[..],
            [IrqCall::Set(IrqKind::MsiX, 2, _)]
        ));
        let mut d = [0u8; 4];
        assert!(m.read_bar(2, 2 * 16 + 8, &mut d));
        assert_eq!(u32::from_le_bytes(d), 0x45);
        // Function mask parks the live vector.
        m.write_cap(3, &[0xc0]);
        assert_eq!(g.route(2), None);
        assert!(matches!(
            &dev.take_irq_calls()[..],
            [IrqCall::Set(IrqKind::MsiX, 2, _)]
        ));
        // Disable.
        m.write_cap(0, &[0x11, 0, 0, 0]);
        assert_eq!(dev.take_irq_calls(), vec![IrqCall::Disable(IrqKind::MsiX)]);
        assert_eq!(m.cap_bytes()[3], 0);
    }

    #[test]
    fn pba_and_outside_accesses() {
        let (_, _, mut m) = state();
        let mut d = [0xffu8; 8];
        assert!(m.read_bar(2, 0x3000, &mut d));
        assert_eq!(d, [0; 8]);
        assert!(m.write_bar(2, 0x3000, &[1; 8]), "PBA writes are swallowed");
        assert!(!m.read_bar(2, 0x50, &mut d), "past the table: the device's");
        assert!(!m.read_bar(0, 0, &mut d), "another BAR");
        assert!(!m.write_bar(2, 0x3008, &[0; 4]));
        // Odd sizes and offsets inside the table do not panic.
        assert!(m.write_bar(2, 3, &[1, 2, 3]));
        assert!(m.read_bar(2, 0x4f, &mut [0u8; 1]));
        m.write_cap(12, &[0xff]);
        m.write_cap(usize::MAX, &[0xff]);
        assert!(!m.is_empty());
        assert_eq!(m.len(), 5);
    }
}
