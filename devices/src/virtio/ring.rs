//! Serving a virtqueue whose driver may be broken or hostile.
//!
//! virtio-queue's `pop_descriptor_chain` answers `None` both for an empty
//! ring and for a ring it refuses to read (an available index more than the
//! queue size ahead of the device, a ring it considers not ready, an entry
//! it cannot read), while `enable_notification` keeps reporting work as
//! long as the available index differs from the device's position. A
//! consumer looping on the two spins forever on such a ring. [`pop_chain`]
//! tells the cases apart, so a device can treat a ring the driver broke as
//! a device error (virtio 1.2, 2.1.2): stop serving the queue, and ask the
//! transport for a reset through [`NeedsReset`].

use std::fmt;
use std::num::Wrapping;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use virtio_queue::{DescriptorChain, Queue, QueueOwnedT, QueueT};
use vm_memory::GuestMemory;

use super::VirtioInterrupt;

/// Why a queue can no longer be served until the device is reset.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RingError {
    /// The available index is this far ahead of the device: more than the
    /// queue size, so entries would be consumed twice.
    AvailAhead(u16),
    /// virtio-queue refused to iterate the ring (not ready, or an available
    /// ring at address 0).
    Refused,
    /// The available index, an available entry or the notification
    /// fields could not be accessed.
    Memory,
    /// A used entry could not be written (head index out of range, or the
    /// used ring is not writable).
    Used,
}

impl fmt::Display for RingError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RingError::AvailAhead(n) => {
                write!(f, "available index {n} entries ahead of the device")
            }
            RingError::Refused => write!(f, "ring refused by virtio-queue"),
            RingError::Memory => write!(f, "ring memory not accessible"),
            RingError::Used => write!(f, "used entry not writable"),
        }
    }
}

/// Takes the next available chain of `q`: `Ok(None)` when the ring is
/// empty, an error when the driver broke it. Reads the available index
/// once when the ring is empty, twice otherwise.
pub fn pop_chain<'a, M: GuestMemory>(
    q: &mut Queue,
    mem: &'a M,
) -> Result<Option<DescriptorChain<&'a M>>, RingError> {
    let idx = q
        .avail_idx(mem, Ordering::Acquire)
        .map_err(|_| RingError::Memory)?;
    let ahead = (idx - Wrapping(q.next_avail())).0;
    if ahead == 0 {
        return Ok(None);
    }
    if ahead > q.size() {
        return Err(RingError::AvailAhead(ahead));
    }
    // The driver may only move the index forward, by at most the entries
    // the device returned; so from here a chain must come out, and `None`
    // means it moved the index illegally or the entry is unreadable.
    let mut it = q.iter(mem).map_err(|e| match e {
        virtio_queue::Error::InvalidAvailRingIndex => RingError::AvailAhead(ahead),
        virtio_queue::Error::QueueNotReady => RingError::Refused,
        _ => RingError::Memory,
    })?;
    it.next().map(Some).ok_or(RingError::Memory)
}

/// `Queue::add_used`, with a failure reported as a broken ring.
pub fn add_used<M: GuestMemory>(
    q: &mut Queue,
    mem: &M,
    head: u16,
    len: u32,
) -> Result<(), RingError> {
    q.add_used(mem, head, len).map_err(|_| RingError::Used)
}

/// `Queue::enable_notification`: whether chains arrived meanwhile, with a
/// failure reported as a broken ring.
pub fn enable_notification<M: GuestMemory>(q: &mut Queue, mem: &M) -> Result<bool, RingError> {
    q.enable_notification(mem).map_err(|_| RingError::Memory)
}

/// `Queue::disable_notification`, with a failure reported as a broken ring.
pub fn disable_notification<M: GuestMemory>(q: &mut Queue, mem: &M) -> Result<(), RingError> {
    q.disable_notification(mem).map_err(|_| RingError::Memory)
}

/// A device's request to its transport for a reset (virtio 1.2, 2.1.2):
/// once raised, the transport shows DEVICE_NEEDS_RESET in the device
/// status, and the driver got a configuration change notification. The
/// transport hands a fresh handle to every activation; clones share it.
#[derive(Clone)]
pub struct NeedsReset {
    raised: Arc<AtomicBool>,
    interrupt: Arc<dyn VirtioInterrupt>,
}

impl NeedsReset {
    /// A handle that notifies the driver through `interrupt`.
    pub fn new(interrupt: Arc<dyn VirtioInterrupt>) -> Self {
        NeedsReset {
            raised: Arc::new(AtomicBool::new(false)),
            interrupt,
        }
    }

    /// Raises the request; the first call sends the configuration change
    /// notification. Returns whether this call raised it.
    pub fn raise(&self) -> bool {
        if self.raised.swap(true, Ordering::SeqCst) {
            return false;
        }
        if let Err(e) = self.interrupt.signal_config_change() {
            tracing::warn!("virtio: config change interrupt failed: {e}");
        }
        true
    }

    /// Whether the request was raised.
    pub fn is_raised(&self) -> bool {
        self.raised.load(Ordering::SeqCst)
    }
}

impl fmt::Debug for NeedsReset {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NeedsReset")
            .field("raised", &self.is_raised())
            .finish()
    }
}

/// The served-or-broken state of one queue of a device: a device calls
/// [`QueueHealth::broken`] with the error, and skips the queue while
/// [`QueueHealth::is_broken`].
#[derive(Debug)]
pub struct QueueHealth {
    name: &'static str,
    broken: bool,
}

impl QueueHealth {
    /// A served queue, `name` for the logs ("virtio-net tx").
    pub fn new(name: &'static str) -> Self {
        QueueHealth {
            name,
            broken: false,
        }
    }

    /// Whether the queue stopped being served.
    pub fn is_broken(&self) -> bool {
        self.broken
    }

    /// Stops serving the queue because of `e` and asks for a reset through
    /// `reset`. Returns whether the queue was served until now (the caller
    /// counts the broken ring once).
    pub fn broken(&mut self, e: RingError, reset: &NeedsReset) -> bool {
        if self.broken {
            return false;
        }
        self.broken = true;
        tracing::warn!(
            "{}: the driver broke the queue ({e}); not served until the device is reset",
            self.name
        );
        reset.raise();
        true
    }

    /// Ends one pass over `queue` that returned `served` and used buffers
    /// if `used`: a ring error stops the queue (counted once in
    /// `broken_rings`); returns whether the driver must be interrupted
    /// (buffers were used and, on a healthy ring, the driver asked for it).
    pub fn settle<M: GuestMemory>(
        &mut self,
        served: Result<(), RingError>,
        used: bool,
        queue: &mut Queue,
        mem: &M,
        reset: &NeedsReset,
        broken_rings: &AtomicU64,
    ) -> bool {
        match served {
            Err(e) => {
                if self.broken(e, reset) {
                    broken_rings.fetch_add(1, Ordering::Relaxed);
                }
                used
            }
            Ok(()) => used && queue.needs_notification(mem).unwrap_or(true),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::virtio::testing::{RecordingInterrupt, TestQueue};

    #[test]
    fn empty_full_and_broken_rings_are_told_apart() {
        let mut tq = TestQueue::new(4);
        let mem = tq.memory();
        let mut q = tq.queue();
        assert!(matches!(pop_chain(&mut q, &mem), Ok(None)));
        for _ in 0..4 {
            tq.add_chain(&[(0x10000, 4, false)]);
        }
        for _ in 0..4 {
            assert!(pop_chain(&mut q, &mem).unwrap().is_some());
        }
        assert!(matches!(pop_chain(&mut q, &mem), Ok(None)));
        tq.set_avail_idx(q.next_avail().wrapping_add(5));
        assert_eq!(
            pop_chain(&mut q, &mem).err(),
            Some(RingError::AvailAhead(5))
        );
        // Wrapping backwards is "far ahead" too.
        tq.set_avail_idx(q.next_avail().wrapping_sub(1));
        assert_eq!(
            pop_chain(&mut q, &mem).err(),
            Some(RingError::AvailAhead(0xffff))
        );
        assert_eq!(
            add_used(&mut q, &mem, 4, 0),
            Err(RingError::Used),
            "head out of range"
        );
    }

    #[test]
    fn an_avail_ring_at_address_zero_is_refused_not_spun_on() {
        let tq = TestQueue::new(4);
        let mem = tq.memory();
        let mut q = tq.queue();
        q.set_avail_ring_address(Some(0), Some(0));
        vm_memory::Bytes::write_obj(&tq.ram, 1u16, vm_memory::GuestAddress(2)).unwrap();
        assert_eq!(pop_chain(&mut q, &mem).err(), Some(RingError::Refused));
        // What a naive consumer loops on: "more work" that is never handed out.
        assert!(q.enable_notification(&mem).unwrap());
        assert!(q.pop_descriptor_chain(&mem).is_none());
    }

    #[test]
    fn needs_reset_notifies_once() {
        let irq = Arc::new(RecordingInterrupt::default());
        let r = NeedsReset::new(irq.clone());
        let mut h = QueueHealth::new("test");
        assert!(!r.is_raised());
        assert!(h.broken(RingError::Memory, &r));
        assert!(!h.broken(RingError::Memory, &r), "counted once");
        assert!(h.is_broken());
        assert!(!r.raise());
        assert!(r.clone().is_raised());
        assert_eq!(irq.config_changes(), 1);
    }
}
