//! Routing the device's MSI/MSI-X vectors to the guest.
//!
//! The VMM hands the device one [`MsiInterruptGroup`] (KVM GSI routes and
//! irqfds in `vmm`). While a vector is live (enabled and unmasked), VFIO
//! signals the vector's irqfd directly, so an interrupt of the device
//! reaches the guest without leaving the kernel. While it is masked, VFIO
//! signals a private "parked" eventfd of this crate instead and the route
//! is removed; unmasking re-points VFIO at the irqfd and, if the parked
//! eventfd was signalled in between, delivers the interrupt then, which is
//! the pending-bit semantics of MSI-X and MSI per-vector masking.
//!
//! MSI and MSI-X share the group's vectors (a function uses at most one of
//! them at a time); [`VectorRouter`] tracks which one VFIO has enabled and
//! ignores route updates of the other.

use std::io;
use std::sync::{Arc, Mutex, MutexGuard};

use devices::interrupt::{MsiInterruptGroup, MsiMessage};
use vmm_sys_util::eventfd::EventFd;

use crate::region::{DeviceRegions, IrqKind};

struct State {
    /// The kind VFIO has enabled, if any.
    active: Option<IrqKind>,
    /// For each enabled vector: true when VFIO signals the irqfd, false
    /// when it signals the parked eventfd.
    live: Vec<bool>,
}

/// Wires the device's vectors (through the [`DeviceRegions`] seam) to the
/// VMM's interrupt group.
pub struct VectorRouter {
    group: Arc<dyn MsiInterruptGroup>,
    regions: Arc<dyn DeviceRegions>,
    parked: Vec<EventFd>,
    state: Mutex<State>,
}

impl VectorRouter {
    /// A router for up to `vectors` vectors of `group` (`vectors` is
    /// clamped to the group's size).
    pub fn new(
        group: Arc<dyn MsiInterruptGroup>,
        regions: Arc<dyn DeviceRegions>,
        vectors: usize,
    ) -> io::Result<Self> {
        let n = vectors.min(group.len());
        let parked = (0..n)
            .map(|_| EventFd::new(libc::EFD_NONBLOCK))
            .collect::<io::Result<Vec<_>>>()?;
        Ok(VectorRouter {
            group,
            regions,
            parked,
            state: Mutex::new(State {
                active: None,
                live: Vec::new(),
            }),
        })
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Number of vectors the router can wire.
    pub fn capacity(&self) -> usize {
        self.parked.len()
    }

    /// The kind VFIO currently has enabled.
    pub fn active(&self) -> Option<IrqKind> {
        self.lock().active
    }

    /// Enables `n` vectors of `kind` in VFIO, all parked (masked) until
    /// [`Self::update`] makes them live. Disables the other kind first if
    /// the guest left it enabled.
    pub fn activate(&self, kind: IrqKind, n: usize) -> io::Result<()> {
        let other = match kind {
            IrqKind::Msi => IrqKind::MsiX,
            IrqKind::MsiX => IrqKind::Msi,
        };
        self.deactivate(other);
        self.deactivate(kind);
        if n == 0 || n > self.parked.len() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "{kind:?}: {n} vectors requested, {} wired",
                    self.parked.len()
                ),
            ));
        }
        let fds: Vec<&EventFd> = self.parked[..n].iter().collect();
        self.regions.enable_irqs(kind, &fds)?;
        let mut st = self.lock();
        st.active = Some(kind);
        st.live = vec![false; n];
        Ok(())
    }

    /// Disables `kind` in VFIO (if enabled) and removes its routes.
    pub fn deactivate(&self, kind: IrqKind) {
        let mut st = self.lock();
        if st.active != Some(kind) {
            return;
        }
        if let Err(e) = self.regions.disable_irqs(kind) {
            tracing::warn!("VFIO: cannot disable {kind:?}: {e}");
        }
        for i in 0..st.live.len() {
            if let Err(e) = self.group.update(i, MsiMessage::default(), false) {
                tracing::warn!("VFIO: cannot remove the route of vector {i}: {e}");
            }
            // Drop what arrived while parked: the vector is gone.
            let _ = self.parked[i].read();
        }
        st.active = None;
        st.live.clear();
    }

    /// Programs vector `index` of `kind` with `msg`: `live` routes it to
    /// the guest, `!live` parks it. Ignored unless `kind` is enabled.
    pub fn update(
        &self,
        kind: IrqKind,
        index: usize,
        msg: MsiMessage,
        live: bool,
    ) -> io::Result<()> {
        let mut st = self.lock();
        if st.active != Some(kind) || index >= st.live.len() {
            return Ok(());
        }
        if !live {
            if st.live[index] {
                self.regions
                    .set_irq(kind, index as u32, &self.parked[index])?;
                st.live[index] = false;
            }
            return self.group.update(index, msg, false);
        }
        self.group.update(index, msg, true)?;
        if !st.live[index] {
            let irqfd = self.group.notifier(index).ok_or_else(|| {
                io::Error::new(io::ErrorKind::Unsupported, "interrupt group has no irqfd")
            })?;
            self.regions.set_irq(kind, index as u32, irqfd)?;
            st.live[index] = true;
            // Anything the device raised while the vector was masked is
            // delivered now, like a pending bit.
            if self.parked[index].read().is_ok() {
                self.group.trigger(index)?;
            }
        }
        Ok(())
    }

    /// True when vector `index` of `kind` is enabled and signals its irqfd.
    pub fn is_live(&self, kind: IrqKind, index: usize) -> bool {
        let st = self.lock();
        st.active == Some(kind) && st.live.get(index).copied().unwrap_or(false)
    }

    /// The interrupt group the device's MSI-X emulation programs: its
    /// first `n` vectors, routed through this router as MSI-X.
    pub fn msix_view(self: &Arc<Self>, n: usize) -> Arc<dyn MsiInterruptGroup> {
        Arc::new(MsixView {
            router: self.clone(),
            n: n.min(self.parked.len()),
        })
    }
}

/// The group seen by [`devices::pci::msix::Msix`].
struct MsixView {
    router: Arc<VectorRouter>,
    n: usize,
}

impl MsiInterruptGroup for MsixView {
    fn len(&self) -> usize {
        self.n
    }

    fn update(&self, index: usize, msg: MsiMessage, enabled: bool) -> io::Result<()> {
        self.router.update(IrqKind::MsiX, index, msg, enabled)
    }

    fn trigger(&self, index: usize) -> io::Result<()> {
        self.router.group.trigger(index)
    }

    fn notifier(&self, index: usize) -> Option<&EventFd> {
        self.router.group.notifier(index)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::fake::{FakeDevice, IrqCall};
    use std::os::fd::AsRawFd;

    /// A group with real eventfds that records routes and triggers.
    pub(crate) struct TestGroup {
        pub(crate) fds: Vec<EventFd>,
        pub(crate) routes: Mutex<Vec<Option<MsiMessage>>>,
        pub(crate) triggered: Mutex<Vec<usize>>,
    }

    impl TestGroup {
        pub(crate) fn new(n: usize) -> Arc<Self> {
            Arc::new(TestGroup {
                fds: (0..n)
                    .map(|_| EventFd::new(libc::EFD_NONBLOCK).unwrap())
                    .collect(),
                routes: Mutex::new(vec![None; n]),
                triggered: Mutex::new(Vec::new()),
            })
        }

        pub(crate) fn route(&self, i: usize) -> Option<MsiMessage> {
            self.routes.lock().unwrap()[i]
        }
    }

    impl MsiInterruptGroup for TestGroup {
        fn len(&self) -> usize {
            self.fds.len()
        }
        fn update(&self, index: usize, msg: MsiMessage, enabled: bool) -> io::Result<()> {
            self.routes.lock().unwrap()[index] = enabled.then_some(msg);
            Ok(())
        }
        fn trigger(&self, index: usize) -> io::Result<()> {
            self.triggered.lock().unwrap().push(index);
            Ok(())
        }
        fn notifier(&self, index: usize) -> Option<&EventFd> {
            self.fds.get(index)
        }
    }

    fn msg(data: u32) -> MsiMessage {
        MsiMessage {
            addr_lo: 0xfee0_0000,
            addr_hi: 0,
            data,
        }
    }

    #[test]
    fn unmask_points_vfio_at_the_irqfd_and_delivers_parked_interrupts() {
        let dev = Arc::new(FakeDevice::new());
        let g = TestGroup::new(4);
        let r = VectorRouter::new(g.clone(), dev.clone(), 4).unwrap();
        r.activate(IrqKind::MsiX, 3).unwrap();
        let calls = dev.take_irq_calls();
        assert!(matches!(&calls[..], [IrqCall::Enable(IrqKind::MsiX, fds)] if fds.len() == 3));
        // The device fires vector 1 while it is masked: nothing reaches the
        // guest, the interrupt waits on the parked eventfd.
        dev.fire(IrqKind::MsiX, 1);
        assert!(g.triggered.lock().unwrap().is_empty());
        r.update(IrqKind::MsiX, 1, msg(0x31), true).unwrap();
        assert_eq!(g.route(1), Some(msg(0x31)));
        assert_eq!(
            dev.take_irq_calls(),
            vec![IrqCall::Set(IrqKind::MsiX, 1, g.fds[1].as_raw_fd())]
        );
        assert_eq!(*g.triggered.lock().unwrap(), vec![1], "pending delivered");
        assert!(r.is_live(IrqKind::MsiX, 1));
        // Re-programming a live vector only changes the route.
        r.update(IrqKind::MsiX, 1, msg(0x32), true).unwrap();
        assert!(dev.take_irq_calls().is_empty());
        assert_eq!(g.route(1), Some(msg(0x32)));
        // Masking parks it again.
        r.update(IrqKind::MsiX, 1, msg(0x32), false).unwrap();
        assert_eq!(g.route(1), None);
        assert!(matches!(
            &dev.take_irq_calls()[..],
            [IrqCall::Set(IrqKind::MsiX, 1, _)]
        ));
        assert!(!r.is_live(IrqKind::MsiX, 1));
    }

    #[test]
    fn inactive_kind_and_out_of_range_vectors_are_ignored() {
        let dev = Arc::new(FakeDevice::new());
        let g = TestGroup::new(2);
        let r = VectorRouter::new(g.clone(), dev.clone(), 8).unwrap();
        assert_eq!(r.capacity(), 2, "clamped to the group");
        r.update(IrqKind::MsiX, 0, msg(1), true).unwrap();
        assert_eq!(g.route(0), None);
        assert!(r.activate(IrqKind::Msi, 3).is_err());
        assert!(r.activate(IrqKind::Msi, 0).is_err());
        r.activate(IrqKind::Msi, 2).unwrap();
        r.update(IrqKind::MsiX, 0, msg(1), true).unwrap();
        r.update(IrqKind::Msi, 9, msg(1), true).unwrap();
        assert_eq!(g.route(0), None);
        r.update(IrqKind::Msi, 0, msg(1), true).unwrap();
        assert_eq!(g.route(0), Some(msg(1)));
        // Enabling MSI-X while MSI is on turns MSI off and clears its routes.
        dev.take_irq_calls();
        r.activate(IrqKind::MsiX, 1).unwrap();
        assert!(matches!(
            &dev.take_irq_calls()[..],
            [
                IrqCall::Disable(IrqKind::Msi),
                IrqCall::Enable(IrqKind::MsiX, _)
            ]
        ));
        assert_eq!(g.route(0), None);
        assert_eq!(r.active(), Some(IrqKind::MsiX));
        r.deactivate(IrqKind::MsiX);
        assert_eq!(r.active(), None);
    }
}
