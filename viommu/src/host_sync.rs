//! Where deferred host IOMMU work runs (issue: no host ioctls under the
//! tables' write lock on a vCPU thread).
//!
//! Changes a vCPU makes (the config `bypass` byte, device reset) only
//! update the tables and mark host work pending
//! ([`crate::tables::Tables::take_host_work`]); the identity map of guest
//! RAM (seconds for a large VM: VFIO pins it) and the unmaps are then done
//! by the `viommu-host` thread, with the tables unlocked so emulated
//! devices keep translating.
//!
//! Why this stays correct:
//!
//! - Every host call is ordered by one host-order mutex (lock order:
//!   host-order, then tables): the deferred work and every request
//!   handled by the device worker hold it, so no MAP/UNMAP mirror runs
//!   between a deferred plan and its record.
//! - The worker first finishes pending host work before it handles a
//!   request, so the answer to any request the guest sends after a bypass
//!   write or a reset is written only once the host address space
//!   reflects it; a device never reaches memory the guest protected with
//!   a request it saw answered.
//! - Emulated endpoints see a bypass write at once (the flag, under the
//!   tables lock). A hardware endpoint keeps the identity map a bypass=0
//!   write removes until the thread (or the next request) removed it: the
//!   config write has no completion the guest could wait for, and the
//!   guest protects memory only with requests, which wait for it.
//! - Reset makes the hardware endpoint bypass (the reset value of the
//!   byte), so removing its old domain mappings later loses nothing.
//! - A plan made before a vCPU changed the wanted state again is redone
//!   (a generation check), at most a few rounds per wake-up.
//!
//! What a vCPU may still wait for: a device reset stops the worker first,
//! and a worker waiting for the host-order lock finishes its request once
//! the thread's current round is done; the vCPU never makes the host call.
//!
//! A request that makes a hardware endpoint bypass (ATTACH to a bypass
//! domain, DETACH with the byte set) defers its identity map the same way:
//! the worker, still holding the host-order lock, does it with the tables
//! unlocked before it answers, and answers DEVERR (fencing the bypass
//! domain) when it failed. Identity *unmaps* a request needs (leaving
//! bypass) stay inline under the lock: they must be complete before the
//! domain's mappings are replayed and before the answer, and do not pin.

use std::sync::{Arc, Condvar, Mutex, MutexGuard, Weak};

use crate::device::IommuState;

/// The host-order lock and the wake-up of the `viommu-host` thread.
pub struct HostSync {
    order: Mutex<()>,
    signal: Arc<Signal>,
    enabled: bool,
}

#[derive(Default)]
struct Signal {
    /// (work requested, stop)
    state: Mutex<(bool, bool)>,
    cv: Condvar,
}

impl Signal {
    fn set(&self, work: bool, stop: bool) {
        let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
        s.0 |= work;
        s.1 |= stop;
        self.cv.notify_all();
    }
}

impl HostSync {
    /// Host ordering for tables with (`enabled`) or without a backend.
    pub fn new(enabled: bool) -> Self {
        HostSync {
            order: Mutex::new(()),
            signal: Arc::default(),
            enabled,
        }
    }

    /// The host-order lock, when there is a backend to order.
    pub fn order(&self) -> Option<MutexGuard<'_, ()>> {
        self.enabled
            .then(|| self.order.lock().unwrap_or_else(|e| e.into_inner()))
    }

    /// Wakes the `viommu-host` thread (after a change deferred host work).
    pub fn request(&self) {
        if self.enabled {
            self.signal.set(true, false);
        }
    }

    /// Starts the `viommu-host` thread of `state` (when it has a backend).
    pub(crate) fn start(state: &Arc<IommuState>) -> std::io::Result<()> {
        if !state.host.enabled {
            return Ok(());
        }
        let weak: Weak<IommuState> = Arc::downgrade(state);
        let signal = state.host.signal.clone();
        std::thread::Builder::new()
            .name("viommu-host".into())
            .spawn(move || loop {
                {
                    let mut s = signal.state.lock().unwrap_or_else(|e| e.into_inner());
                    while !s.0 && !s.1 {
                        s = signal.cv.wait(s).unwrap_or_else(|e| e.into_inner());
                    }
                    if s.1 {
                        return;
                    }
                    s.0 = false;
                }
                let Some(state) = weak.upgrade() else {
                    return;
                };
                state.sync_host();
            })?;
        Ok(())
    }
}

impl Drop for HostSync {
    fn drop(&mut self) {
        self.signal.set(false, true);
    }
}

impl IommuState {
    /// Does the pending host work now (waiting for the host-order lock):
    /// plans it under the tables lock, runs it unlocked, records it.
    pub fn sync_host(&self) {
        let _order = self.host.order();
        self.sync_host_ordered();
    }

    /// As [`Self::sync_host`], for a caller holding the host-order lock.
    pub(crate) fn sync_host_ordered(&self) {
        for _ in 0..8 {
            let Some(work) = self.tables().take_host_work() else {
                return;
            };
            let done = work.run();
            self.tables().finish_host_work(done);
        }
    }
}

#[cfg(test)]
#[path = "host_sync_tests.rs"]
mod tests;
