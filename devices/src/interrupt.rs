//! Message-signalled interrupts as seen by devices.
//!
//! Devices never touch KVM: the VMM hands each device an
//! [`MsiInterruptGroup`] (backed by KVM GSI routing + irqfd in `vmm`, by a
//! recorder in tests).

use std::io;

use vmm_sys_util::eventfd::EventFd;

/// One MSI message as programmed by the guest (MSI-X table entry or MSI capability).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MsiMessage {
    /// Message address, low 32 bits.
    pub addr_lo: u32,
    /// Message address, high 32 bits.
    pub addr_hi: u32,
    /// Message data.
    pub data: u32,
}

/// A group of MSI vectors owned by one device.
pub trait MsiInterruptGroup: Send + Sync {
    /// Number of vectors in the group.
    fn len(&self) -> usize;
    /// True when the group has no vectors.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Programs vector `index` with `msg`; `enabled == false` keeps it from
    /// being delivered (masked or MSI-X disabled) until updated again.
    fn update(&self, index: usize, msg: MsiMessage, enabled: bool) -> io::Result<()>;
    /// Delivers vector `index` now (used when a pending vector is unmasked).
    fn trigger(&self, index: usize) -> io::Result<()>;
    /// The eventfd that delivers vector `index` when written (irqfd), if any.
    /// Device workers write it directly from their threads.
    fn notifier(&self, index: usize) -> Option<&EventFd>;
}
