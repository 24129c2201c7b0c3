//! The virtual IOMMU's shared state: the tables, counters, queued fault
//! events and host-work order that the device worker, the host threads
//! and the emulated devices' translations ([`IommuState::endpoint`]) use.

use std::collections::VecDeque;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, RwLock};

use devices::dma::{DmaMapping, DmaTranslate};
use vm_memory::Permissions;
use vmm_sys_util::eventfd::EventFd;

use crate::host_sync::HostSync;
use crate::protocol as p;
use crate::stats::Stats;
use crate::tables::{FaultReason, Tables};

/// Faults kept while the driver has no event buffers.
const MAX_PENDING_FAULTS: usize = 64;

/// A fault waiting to be reported on the event queue.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Fault {
    pub(crate) reason: u8,
    pub(crate) flags: u32,
    pub(crate) endpoint: u32,
    pub(crate) address: u64,
}

/// State shared by the device worker and the endpoints' translations.
pub struct IommuState {
    /// Endpoints, domains, mappings.
    pub tables: RwLock<Tables>,
    /// Counters.
    pub stats: Arc<Stats>,
    pub(crate) faults: Mutex<VecDeque<Fault>>,
    pub(crate) fault_evt: EventFd,
    /// Faults queued so far (after the queue holds them): what a polling
    /// worker watches instead of `fault_evt`.
    pub(crate) faults_queued: std::sync::atomic::AtomicU64,
    /// Orders host backend work and runs what vCPU-side changes deferred
    /// ([`crate::host_sync`]).
    pub host: HostSync,
}

impl IommuState {
    /// Shared state over `tables`.
    pub fn new(tables: Tables) -> std::io::Result<Arc<Self>> {
        let mut stats = Stats::default().with_host(tables.host_errors());
        if let Some(c) = tables.coop() {
            stats = stats.with_coop(c.stats(), *c.config());
        }
        let host = HostSync::new(tables.has_backend());
        let state = Arc::new(IommuState {
            tables: RwLock::new(tables),
            stats: Arc::new(stats),
            faults: Mutex::new(VecDeque::new()),
            fault_evt: EventFd::new(libc::EFD_NONBLOCK)?,
            faults_queued: std::sync::atomic::AtomicU64::new(0),
            host,
        });
        HostSync::start(&state)?;
        Ok(state)
    }

    /// Starts the `viommu-coop` thread: an unpin scan every `interval`
    /// (docs/coop.md), ordered with the other host work. It ends when the
    /// state is dropped.
    pub fn start_coop_scans(
        self: &Arc<Self>,
        interval: std::time::Duration,
    ) -> std::io::Result<()> {
        let weak = Arc::downgrade(self);
        std::thread::Builder::new()
            .name("viommu-coop".into())
            .spawn(move || loop {
                std::thread::sleep(interval);
                let Some(state) = weak.upgrade() else { return };
                let _order = state.host.order();
                state.tables().coop_scan();
            })
            .map(|_| ())
    }

    pub(crate) fn tables(&self) -> std::sync::RwLockWriteGuard<'_, Tables> {
        self.tables.write().unwrap_or_else(|e| e.into_inner())
    }

    /// True while fault events wait for event-queue buffers.
    pub(crate) fn has_pending_faults(&self) -> bool {
        !self
            .faults
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .is_empty()
    }

    /// Records a refused device access and queues its fault event.
    pub fn report_fault(&self, endpoint: u32, iova: u64, access: Permissions, reason: FaultReason) {
        self.stats.faults.fetch_add(1, Ordering::Relaxed);
        let flags = p::FAULT_F_ADDRESS
            | if access.has_write() {
                p::FAULT_F_WRITE
            } else {
                p::FAULT_F_READ
            };
        let reason = match reason {
            FaultReason::Domain => p::FAULT_R_DOMAIN,
            FaultReason::Mapping => p::FAULT_R_MAPPING,
        };
        let mut q = self.faults.lock().unwrap_or_else(|e| e.into_inner());
        if q.len() >= MAX_PENDING_FAULTS {
            self.stats
                .fault_events_dropped
                .fetch_add(1, Ordering::Relaxed);
            return;
        }
        q.push_back(Fault {
            reason,
            flags,
            endpoint,
            address: iova,
        });
        drop(q);
        self.faults_queued.fetch_add(1, Ordering::Release);
        let _ = self.fault_evt.write(1);
    }

    /// The translation an emulated device behind endpoint `endpoint` uses.
    pub fn endpoint(self: &Arc<Self>, endpoint: u32) -> Arc<dyn DmaTranslate> {
        Arc::new(EndpointTranslation {
            state: self.clone(),
            endpoint,
        })
    }
}

/// Resolves IOVAs of one endpoint from the IOMMU's tables.
struct EndpointTranslation {
    state: Arc<IommuState>,
    endpoint: u32,
}

impl DmaTranslate for EndpointTranslation {
    fn translate(&self, iova: u64, access: Permissions) -> Option<DmaMapping> {
        let r = self
            .state
            .tables
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .translate(self.endpoint, iova);
        match r {
            Ok(m) => Some(m),
            Err(reason) => {
                self.state.report_fault(self.endpoint, iova, access, reason);
                None
            }
        }
    }

    fn permission_fault(&self, iova: u64, access: Permissions) {
        self.state
            .report_fault(self.endpoint, iova, access, FaultReason::Mapping);
    }
}
