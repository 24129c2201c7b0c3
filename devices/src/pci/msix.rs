//! MSI-X: the capability, the vector table and the pending-bit array.
//!
//! [`Msix`] keeps the guest-visible table and PBA and programs each vector
//! into an [`MsiInterruptGroup`]. Devices raise vectors through
//! [`Msix::signal`], which delivers through the vector's irqfd when it is
//! unmasked and sets its pending bit otherwise; unmasking a pending vector
//! delivers it.

use std::sync::Arc;

use crate::interrupt::{MsiInterruptGroup, MsiMessage};

/// MSI-X capability ID.
pub const MSIX_CAP_ID: u8 = 0x11;
/// Size of one table entry in bytes.
pub const ENTRY_SIZE: u64 = 16;
/// Message control: MSI-X enable.
const CTL_ENABLE: u16 = 1 << 15;
/// Message control: function mask.
const CTL_FUNCTION_MASK: u16 = 1 << 14;
/// Vector control: per-vector mask.
const VECTOR_MASKED: u32 = 1;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Entry {
    msg: MsiMessage,
    ctl: u32,
}

impl Default for Entry {
    fn default() -> Self {
        // Vectors come out of reset masked.
        Entry {
            msg: MsiMessage::default(),
            ctl: VECTOR_MASKED,
        }
    }
}

/// The MSI-X state of one function.
pub struct Msix {
    entries: Vec<Entry>,
    pba: Vec<u64>,
    control: u16,
    group: Arc<dyn MsiInterruptGroup>,
}

impl Msix {
    /// MSI-X with one vector per vector of `group` (at most 2048).
    pub fn new(group: Arc<dyn MsiInterruptGroup>) -> Self {
        let n = group.len().clamp(1, 2048);
        Msix {
            entries: vec![Entry::default(); n],
            pba: vec![0; n.div_ceil(64)],
            control: 0,
            group,
        }
    }

    /// Number of vectors.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// True when there are no vectors (never: at least one is created).
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Size of the vector table in bytes.
    pub fn table_size(&self) -> u64 {
        self.entries.len() as u64 * ENTRY_SIZE
    }

    /// Size of the PBA in bytes.
    pub fn pba_size(&self) -> u64 {
        self.pba.len() as u64 * 8
    }

    /// The capability body (12 bytes) for a table at `table_offset` and a
    /// PBA at `pba_offset`, both in BAR `bar`. Byte 3 (the upper half of
    /// message control) is the guest-writable part.
    pub fn capability(&self, bar: u8, table_offset: u32, pba_offset: u32) -> [u8; 12] {
        let mut c = [0u8; 12];
        c[0] = MSIX_CAP_ID;
        c[2..4].copy_from_slice(&((self.entries.len() - 1) as u16).to_le_bytes());
        c[4..8].copy_from_slice(&(table_offset | u32::from(bar & 7)).to_le_bytes());
        c[8..12].copy_from_slice(&(pba_offset | u32::from(bar & 7)).to_le_bytes());
        c
    }

    /// True when MSI-X is enabled and the function is not masked.
    pub fn enabled(&self) -> bool {
        self.control & (CTL_ENABLE | CTL_FUNCTION_MASK) == CTL_ENABLE
    }

    /// Message control as the guest reads it (table size in the low bits).
    pub fn control(&self) -> u16 {
        self.control | (self.entries.len() - 1) as u16
    }

    /// Applies a guest write to the message control register (only the
    /// enable and function-mask bits are writable).
    pub fn set_control(&mut self, value: u16) {
        let was = self.enabled();
        self.control = value & (CTL_ENABLE | CTL_FUNCTION_MASK);
        if was != self.enabled() {
            for i in 0..self.entries.len() {
                self.program(i);
            }
        }
        if self.enabled() {
            for i in 0..self.entries.len() {
                self.deliver_if_pending(i);
            }
        }
    }

    fn vector_live(&self, i: usize) -> bool {
        self.enabled() && self.entries[i].ctl & VECTOR_MASKED == 0
    }

    fn program(&self, i: usize) {
        if let Err(e) = self
            .group
            .update(i, self.entries[i].msg, self.vector_live(i))
        {
            tracing::warn!("MSI-X vector {i}: cannot program route: {e}");
        }
    }

    fn pending(&self, i: usize) -> bool {
        self.pba[i / 64] & (1 << (i % 64)) != 0
    }

    fn set_pending(&mut self, i: usize, on: bool) {
        if on {
            self.pba[i / 64] |= 1 << (i % 64);
        } else {
            self.pba[i / 64] &= !(1 << (i % 64));
        }
    }

    fn deliver_if_pending(&mut self, i: usize) {
        if self.pending(i) && self.vector_live(i) {
            self.set_pending(i, false);
            if let Err(e) = self.group.trigger(i) {
                tracing::warn!("MSI-X vector {i}: delivery failed: {e}");
            }
        }
    }

    /// Raises vector `index`: delivered now when live, otherwise recorded
    /// in the PBA. Out-of-range vectors (guest-chosen) are ignored; returns
    /// whether the vector was delivered.
    pub fn signal(&mut self, index: usize) -> bool {
        if index >= self.entries.len() {
            return false;
        }
        if self.vector_live(index) {
            if let Err(e) = self.group.trigger(index) {
                tracing::warn!("MSI-X vector {index}: delivery failed: {e}");
            }
            true
        } else {
            self.set_pending(index, true);
            false
        }
    }

    /// Guest read of the vector table at `offset`.
    pub fn read_table(&self, offset: u64, data: &mut [u8]) {
        data.fill(0);
        if !matches!(data.len(), 4 | 8) {
            return;
        }
        let (i, field) = ((offset / ENTRY_SIZE) as usize, offset % ENTRY_SIZE);
        let Some(e) = self.entries.get(i) else { return };
        let words = [e.msg.addr_lo, e.msg.addr_hi, e.msg.data, e.ctl];
        for (k, chunk) in data.chunks_mut(4).enumerate() {
            if let Some(w) = words.get(field as usize / 4 + k) {
                chunk.copy_from_slice(&w.to_le_bytes());
            }
        }
    }

    /// Guest write to the vector table at `offset`.
    pub fn write_table(&mut self, offset: u64, data: &[u8]) {
        if !matches!(data.len(), 4 | 8) || !offset.is_multiple_of(4) {
            return;
        }
        let (i, field) = (
            (offset / ENTRY_SIZE) as usize,
            (offset % ENTRY_SIZE) as usize,
        );
        if i >= self.entries.len() {
            return;
        }
        let before = self.entries[i];
        for (k, chunk) in data.chunks(4).enumerate() {
            let mut w = [0u8; 4];
            w.copy_from_slice(chunk);
            let v = u32::from_le_bytes(w);
            match field / 4 + k {
                0 => self.entries[i].msg.addr_lo = v,
                1 => self.entries[i].msg.addr_hi = v,
                2 => self.entries[i].msg.data = v,
                3 => self.entries[i].ctl = v & VECTOR_MASKED,
                _ => {}
            }
        }
        if self.entries[i] != before {
            self.program(i);
            self.deliver_if_pending(i);
        }
    }

    /// Guest read of the PBA at `offset`.
    pub fn read_pba(&self, offset: u64, data: &mut [u8]) {
        data.fill(0);
        if !matches!(data.len(), 4 | 8) {
            return;
        }
        let word = self.pba.get((offset / 8) as usize).copied().unwrap_or(0);
        let bytes = word.to_le_bytes();
        let start = (offset % 8) as usize;
        let n = data.len().min(8 - start);
        data[..n].copy_from_slice(&bytes[start..start + n]);
    }

    /// Returns to the reset state: disabled, every vector masked, no
    /// pending bits.
    pub fn reset(&mut self) {
        self.control = 0;
        self.entries.fill(Entry::default());
        self.pba.fill(0);
        for i in 0..self.entries.len() {
            self.program(i);
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::io;
    use std::sync::Mutex;
    use vmm_sys_util::eventfd::EventFd;

    /// Records routes and deliveries.
    #[derive(Default)]
    pub(crate) struct RecordingGroup {
        pub(crate) routes: Mutex<Vec<Option<MsiMessage>>>,
        pub(crate) fired: Mutex<Vec<usize>>,
        pub(crate) n: usize,
    }

    impl RecordingGroup {
        pub(crate) fn new(n: usize) -> Arc<Self> {
            Arc::new(RecordingGroup {
                routes: Mutex::new(vec![None; n]),
                fired: Mutex::new(Vec::new()),
                n,
            })
        }
    }

    impl MsiInterruptGroup for RecordingGroup {
        fn len(&self) -> usize {
            self.n
        }
        fn update(&self, index: usize, msg: MsiMessage, enabled: bool) -> io::Result<()> {
            self.routes.lock().unwrap()[index] = enabled.then_some(msg);
            Ok(())
        }
        fn trigger(&self, index: usize) -> io::Result<()> {
            self.fired.lock().unwrap().push(index);
            Ok(())
        }
        fn notifier(&self, _index: usize) -> Option<&EventFd> {
            None
        }
    }

    fn program(m: &mut Msix, i: u64, addr: u32, data: u32, masked: bool) {
        m.write_table(i * 16, &addr.to_le_bytes());
        m.write_table(i * 16 + 4, &0u32.to_le_bytes());
        m.write_table(i * 16 + 8, &data.to_le_bytes());
        m.write_table(i * 16 + 12, &u32::from(masked).to_le_bytes());
    }

    #[test]
    fn capability_layout() {
        let m = Msix::new(RecordingGroup::new(3));
        let c = m.capability(0, 0x2000, 0x3000);
        assert_eq!(c[0], MSIX_CAP_ID);
        assert_eq!(u16::from_le_bytes([c[2], c[3]]), 2);
        assert_eq!(u32::from_le_bytes([c[4], c[5], c[6], c[7]]), 0x2000);
        assert_eq!(u32::from_le_bytes([c[8], c[9], c[10], c[11]]), 0x3000);
        assert_eq!(m.table_size(), 48);
        assert_eq!(m.pba_size(), 8);
    }

    #[test]
    fn table_reads_back_and_routes_follow_enable_and_masks() {
        let g = RecordingGroup::new(2);
        let mut m = Msix::new(g.clone());
        program(&mut m, 1, 0xfee0_0000, 0x41, false);
        let mut d = [0u8; 4];
        m.read_table(16 + 8, &mut d);
        assert_eq!(u32::from_le_bytes(d), 0x41);
        let mut q = [0u8; 8];
        m.read_table(16, &mut q);
        assert_eq!(u64::from_le_bytes(q), 0xfee0_0000);
        assert_eq!(g.routes.lock().unwrap()[1], None, "MSI-X still disabled");
        m.set_control(CTL_ENABLE);
        assert_eq!(g.routes.lock().unwrap()[1].map(|r| r.data), Some(0x41));
        m.set_control(CTL_ENABLE | CTL_FUNCTION_MASK);
        assert_eq!(g.routes.lock().unwrap()[1], None);
        assert_eq!(m.control() & 0x7ff, 1);
    }

    #[test]
    fn masked_vector_sets_pending_and_fires_on_unmask() {
        let g = RecordingGroup::new(2);
        let mut m = Msix::new(g.clone());
        m.set_control(CTL_ENABLE);
        program(&mut m, 0, 0xfee0_0000, 0x30, true);
        assert!(!m.signal(0));
        let mut pba = [0u8; 8];
        m.read_pba(0, &mut pba);
        assert_eq!(u64::from_le_bytes(pba), 1);
        assert!(g.fired.lock().unwrap().is_empty());
        m.write_table(12, &0u32.to_le_bytes());
        assert_eq!(*g.fired.lock().unwrap(), vec![0]);
        m.read_pba(0, &mut pba);
        assert_eq!(u64::from_le_bytes(pba), 0);
        assert!(m.signal(0));
        assert_eq!(*g.fired.lock().unwrap(), vec![0, 0]);
    }

    #[test]
    fn function_mask_holds_then_releases_pending() {
        let g = RecordingGroup::new(1);
        let mut m = Msix::new(g.clone());
        program(&mut m, 0, 0xfee0_0000, 0x30, false);
        m.set_control(CTL_ENABLE | CTL_FUNCTION_MASK);
        m.signal(0);
        assert!(g.fired.lock().unwrap().is_empty());
        m.set_control(CTL_ENABLE);
        assert_eq!(*g.fired.lock().unwrap(), vec![0]);
    }

    #[test]
    fn guest_garbage_is_ignored() {
        let g = RecordingGroup::new(1);
        let mut m = Msix::new(g);
        m.write_table(16 * 100, &[1, 2, 3, 4]);
        m.write_table(3, &[1, 2, 3, 4]);
        m.write_table(0, &[1, 2]);
        let mut d = [0xffu8; 4];
        m.read_table(16 * 100, &mut d);
        assert_eq!(d, [0; 4]);
        m.read_pba(800, &mut d);
        assert_eq!(d, [0; 4]);
        assert!(!m.signal(7));
        m.reset();
        assert!(!m.enabled());
    }
}
