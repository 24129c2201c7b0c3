//! The emulated MSI capability.
//!
//! The guest programs message address, data, the number of vectors and
//! (when the host capability has it) per-vector mask bits here; none of it
//! reaches the host capability, which VFIO programs itself when vectors
//! are enabled through VFIO_DEVICE_SET_IRQS. Setting the enable bit wires
//! `2^MME` vectors through the [`VectorRouter`]; mask bits park vectors.
//! Pending bits read as zero.

use std::sync::Arc;

use devices::interrupt::MsiMessage;

use crate::irq::VectorRouter;
use crate::region::IrqKind;

/// Message control: MSI enable.
const CTL_ENABLE: u16 = 1 << 0;
/// Message control: multiple message capable (log2), read-only.
const CTL_MMC_SHIFT: u16 = 1;
/// Message control: multiple message enable (log2), guest-writable.
const CTL_MME_SHIFT: u16 = 4;
/// Message control: 64-bit address capable.
const CTL_64BIT: u16 = 1 << 7;
/// Message control: per-vector masking capable.
const CTL_PVM: u16 = 1 << 8;
/// Longest MSI capability (64-bit with per-vector masking).
const MAX_LEN: usize = 0x18;

/// Length in bytes of an MSI capability whose message control is `ctl`.
pub fn cap_len(ctl: u16) -> usize {
    match (ctl & CTL_64BIT != 0, ctl & CTL_PVM != 0) {
        (false, false) => 0x0a,
        (true, false) => 0x0e,
        (false, true) => 0x14,
        (true, true) => 0x18,
    }
}

/// Guest-visible MSI state.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Regs {
    ctl: u16,
    addr_lo: u32,
    addr_hi: u32,
    data: u16,
    mask: u32,
}

/// The emulated MSI capability of one function.
pub struct MsiCap {
    regs: Regs,
    /// Read-only control bits from the host (64-bit, PVM, MMC).
    static_ctl: u16,
    /// Most vectors that can be wired (host count and router capacity).
    max_vectors: usize,
    router: Arc<VectorRouter>,
}

impl MsiCap {
    /// Emulates an MSI capability whose host message control is `host_ctl`;
    /// at most `max_vectors` vectors are ever wired (MMC is lowered to
    /// match, so the guest never asks for more).
    pub fn new(host_ctl: u16, max_vectors: usize, router: Arc<VectorRouter>) -> Self {
        let host_mmc = (host_ctl >> CTL_MMC_SHIFT) & 7;
        let mut mmc = host_mmc.min(5);
        while mmc > 0 && (1usize << mmc) > max_vectors {
            mmc -= 1;
        }
        let static_ctl = (host_ctl & (CTL_64BIT | CTL_PVM)) | (mmc << CTL_MMC_SHIFT);
        MsiCap {
            regs: Regs {
                ctl: static_ctl,
                addr_lo: 0,
                addr_hi: 0,
                data: 0,
                mask: 0,
            },
            static_ctl,
            max_vectors,
            router,
        }
    }

    fn is_64(&self) -> bool {
        self.static_ctl & CTL_64BIT != 0
    }

    fn pvm(&self) -> bool {
        self.static_ctl & CTL_PVM != 0
    }

    /// Length of the capability in bytes.
    pub fn len(&self) -> usize {
        cap_len(self.static_ctl)
    }

    /// Always false: a capability has at least its header.
    pub fn is_empty(&self) -> bool {
        false
    }

    /// Offsets of data and mask registers for this layout.
    fn data_off(&self) -> usize {
        if self.is_64() {
            0x0c
        } else {
            0x08
        }
    }

    fn mask_off(&self) -> usize {
        self.data_off() + 4
    }

    /// True when the guest enabled MSI.
    pub fn enabled(&self) -> bool {
        self.regs.ctl & CTL_ENABLE != 0
    }

    /// Vectors the guest enabled (2^MME, within what is wired).
    pub fn vectors(&self) -> usize {
        let mme = (self.regs.ctl >> CTL_MME_SHIFT) & 7;
        let mmc = (self.static_ctl >> CTL_MMC_SHIFT) & 7;
        (1usize << mme.min(mmc)).min(self.max_vectors.max(1))
    }

    /// The message of vector `i`: vector numbers replace the low bits of
    /// the data.
    pub fn message(&self, i: usize) -> MsiMessage {
        let n = self.vectors() as u16;
        MsiMessage {
            addr_lo: self.regs.addr_lo,
            addr_hi: if self.is_64() { self.regs.addr_hi } else { 0 },
            data: u32::from((self.regs.data & !(n - 1)) | (i as u16 & (n - 1))),
        }
    }

    fn masked(&self, i: usize) -> bool {
        self.pvm() && self.regs.mask & (1 << i) != 0
    }

    /// The capability's bytes as the guest reads them (ID included, next
    /// pointer zero: the caller fills it in).
    pub fn bytes(&self) -> [u8; MAX_LEN] {
        let mut b = [0u8; MAX_LEN];
        b[0] = crate::caps::CAP_ID_MSI;
        b[2..4].copy_from_slice(&self.regs.ctl.to_le_bytes());
        b[4..8].copy_from_slice(&self.regs.addr_lo.to_le_bytes());
        if self.is_64() {
            b[8..12].copy_from_slice(&self.regs.addr_hi.to_le_bytes());
        }
        let d = self.data_off();
        b[d..d + 2].copy_from_slice(&self.regs.data.to_le_bytes());
        if self.pvm() {
            let m = self.mask_off();
            b[m..m + 4].copy_from_slice(&self.regs.mask.to_le_bytes());
        }
        b
    }

    /// Which bits of each byte the guest may change.
    fn write_mask(&self) -> [u8; MAX_LEN] {
        let mut m = [0u8; MAX_LEN];
        // Enable and MME.
        m[2] = 0x71;
        m[4..8].copy_from_slice(&[0xfc, 0xff, 0xff, 0xff]);
        if self.is_64() {
            m[8..12].fill(0xff);
        }
        let d = self.data_off();
        m[d..d + 2].fill(0xff);
        if self.pvm() {
            let k = self.mask_off();
            m[k..k + 4].fill(0xff);
        }
        m
    }

    /// Applies a guest write of `data` at byte `offset` of the capability
    /// and rewires vectors whose state changed.
    pub fn write(&mut self, offset: usize, data: &[u8]) {
        let mut b = self.bytes();
        let m = self.write_mask();
        for (k, v) in data.iter().enumerate() {
            let Some(p) = offset.checked_add(k).filter(|p| *p < self.len()) else {
                break;
            };
            b[p] = (b[p] & !m[p]) | (v & m[p]);
        }
        let before = self.regs.clone();
        let d = self.data_off();
        let k = self.mask_off();
        self.regs = Regs {
            ctl: self.static_ctl | (u16::from_le_bytes([b[2], b[3]]) & 0x71),
            addr_lo: u32::from_le_bytes([b[4], b[5], b[6], b[7]]),
            addr_hi: u32::from_le_bytes([b[8], b[9], b[10], b[11]]),
            data: u16::from_le_bytes([b[d], b[d + 1]]),
            mask: u32::from_le_bytes([b[k], b[k + 1], b[k + 2], b[k + 3]]),
        };
        if !self.pvm() {
            self.regs.mask = 0;
        }
        if !self.is_64() {
            self.regs.addr_hi = 0;
        }
        self.apply(before);
    }

    fn apply(&mut self, before: Regs) {
        let now_regs = self.regs.clone();
        self.regs = before;
        let (was, n_before) = (self.enabled(), self.vectors());
        let old: Vec<(MsiMessage, bool)> = (0..n_before)
            .map(|i| (self.message(i), self.masked(i)))
            .collect();
        self.regs = now_regs;
        let (now, n) = (self.enabled(), self.vectors());
        if was && (!now || n != n_before) {
            self.router.deactivate(IrqKind::Msi);
        }
        let fresh = now && (!was || n != n_before);
        if fresh {
            if let Err(e) = self.router.activate(IrqKind::Msi, n) {
                tracing::error!("VFIO: cannot enable {n} MSI vectors: {e}");
                return;
            }
        }
        if !now {
            return;
        }
        for i in 0..n {
            let cur = (self.message(i), self.masked(i));
            if fresh || old.get(i) != Some(&cur) {
                if let Err(e) = self.router.update(IrqKind::Msi, i, cur.0, !cur.1) {
                    tracing::warn!("VFIO: MSI vector {i}: {e}");
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fake::{FakeDevice, IrqCall};
    use crate::irq::tests::TestGroup;

    fn setup(host_ctl: u16, vectors: usize) -> (Arc<FakeDevice>, Arc<TestGroup>, MsiCap) {
        let dev = Arc::new(FakeDevice::new());
        let g = TestGroup::new(vectors);
        let r = Arc::new(VectorRouter::new(g.clone(), dev.clone(), vectors).unwrap());
        (dev, g, MsiCap::new(host_ctl, vectors, r))
    }

    fn w16(m: &mut MsiCap, off: usize, v: u16) {
        m.write(off, &v.to_le_bytes());
    }

    fn w32(m: &mut MsiCap, off: usize, v: u32) {
        m.write(off, &v.to_le_bytes());
    }

    #[test]
    fn layouts_and_read_only_bits() {
        assert_eq!(cap_len(0), 0x0a);
        assert_eq!(cap_len(CTL_64BIT | CTL_PVM), 0x18);
        let (_, _, mut m) = setup(0x0184, 4);
        assert_eq!(m.len(), 0x18);
        let b = m.bytes();
        assert_eq!(u16::from_le_bytes([b[2], b[3]]), 0x0184);
        // Guest tries to clear 64-bit/PVM/MMC and set reserved bits.
        w16(&mut m, 2, 0xfe00);
        let b = m.bytes();
        assert_eq!(u16::from_le_bytes([b[2], b[3]]), 0x0184);
        w32(&mut m, 4, 0xfee0_0003);
        assert_eq!(m.message(0).addr_lo, 0xfee0_0000, "low bits read-only");
        // MMC is lowered when fewer vectors can be wired.
        let (_, _, m) = setup(0x0184 | (5 << 1), 2);
        assert_eq!((m.bytes()[2] >> 1) & 7, 1);
    }

    #[test]
    fn enable_wires_vectors_and_masks_park_them() {
        let (dev, g, mut m) = setup(0x0184, 4);
        w32(&mut m, 4, 0xfee0_1000);
        w32(&mut m, 8, 0);
        w16(&mut m, 0xc, 0x40);
        assert!(dev.take_irq_calls().is_empty(), "nothing before enable");
        // Enable with MME = 1 (2 vectors), vector 1 masked.
        w32(&mut m, 0x10, 0b10);
        w16(&mut m, 2, (1 << 4) | 1);
        assert_eq!(m.vectors(), 2);
        let calls = dev.take_irq_calls();
        assert!(
            matches!(&calls[..], [IrqCall::Enable(IrqKind::Msi, fds), IrqCall::Set(IrqKind::Msi, 0, _)] if fds.len() == 2),
            "{calls:?}"
        );
        assert_eq!(g.route(0).map(|r| r.data), Some(0x40));
        assert_eq!(g.route(1), None, "masked");
        // Unmask vector 1: its data carries the vector number.
        w32(&mut m, 0x10, 0);
        assert_eq!(g.route(1).map(|r| r.data), Some(0x41));
        // Retarget while enabled: routes only, no VFIO calls.
        dev.take_irq_calls();
        w32(&mut m, 4, 0xfee0_2000);
        assert!(dev.take_irq_calls().is_empty());
        assert_eq!(g.route(1).map(|r| r.addr_lo), Some(0xfee0_2000));
        // Changing MME while enabled re-enables with the new count.
        w16(&mut m, 2, (2 << 4) | 1);
        let calls = dev.take_irq_calls();
        assert!(matches!(&calls[0], IrqCall::Disable(IrqKind::Msi)));
        assert!(matches!(&calls[1], IrqCall::Enable(IrqKind::Msi, f) if f.len() == 4));
        // Disable.
        w16(&mut m, 2, 0);
        assert_eq!(dev.take_irq_calls(), vec![IrqCall::Disable(IrqKind::Msi)]);
        assert_eq!(g.route(0), None);
    }

    #[test]
    fn thirty_two_bit_without_masking_and_garbage_writes() {
        let (_, g, mut m) = setup(0x0000, 1);
        assert_eq!(m.len(), 0x0a);
        w32(&mut m, 4, 0xfee0_0000);
        w16(&mut m, 8, 0x55);
        m.write(0x0c, &[0xff; 4]);
        m.write(usize::MAX, &[1, 2]);
        m.write(0x09, &[1, 2, 3, 4, 5, 6, 7]);
        w16(&mut m, 2, 0x71);
        assert_eq!(m.vectors(), 1, "MME above MMC is clamped");
        assert!(m.enabled());
        let r = g.route(0).unwrap();
        assert_eq!((r.addr_hi, r.data & 0xff), (0, 0x55));
        assert_eq!(m.bytes()[0x0c..0x10], [0; 4], "no mask register");
    }
}
