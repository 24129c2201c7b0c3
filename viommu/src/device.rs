//! The virtio-iommu device: request queue, event queue and config space
//! (the state it shares with the translations of emulated devices is
//! [`IommuState`]).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use devices::virtio::ring::{self, QueueHealth, RingError};
use devices::virtio::worker::{watch, Worker};
use devices::virtio::{
    device_type, features, read_config_from, ActivateContext, ActivateError, GuestMemory,
    NeedsReset, VirtioDevice, VirtioInterrupt,
};
use event_manager::{EventOps, Events, MutEventSubscriber};
use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::eventfd::EventFd;

use crate::poll::PollConfig;
use crate::protocol::{self as p, status, Request};
use crate::stats::{Completed, PassClock, Stats};

/// Size of the PROBE property buffer offered in the config space.
pub const PROBE_SIZE: u32 = 512;
const QUEUE_SIZE: u16 = 256;
pub(crate) const REQ_QUEUE: u16 = 0;
pub(crate) const EVENT_QUEUE: u16 = 1;
/// Bytes of a request read from the device-readable descriptors.
const MAX_REQUEST: usize = p::HEAD_LEN + p::PROBE_BODY_LEN;

pub use crate::state::IommuState;

/// One descriptor of a request chain.
#[derive(Clone, Copy)]
pub(crate) struct Seg {
    pub(crate) addr: u64,
    pub(crate) len: u32,
}

/// Writes `data` at byte `offset` of the writable area `segs`.
fn write_area<M: Bytes<GuestAddress>>(mem: &M, segs: &[Seg], offset: u64, data: &[u8]) -> bool {
    let mut skip = offset;
    let mut done = 0usize;
    for s in segs {
        let len = u64::from(s.len);
        if skip >= len {
            skip -= len;
            continue;
        }
        let n = ((len - skip) as usize).min(data.len() - done);
        let Some(at) = s.addr.checked_add(skip) else {
            return false;
        };
        if mem
            .write_slice(&data[done..done + n], GuestAddress(at))
            .is_err()
        {
            return false;
        }
        done += n;
        skip = 0;
        if done == data.len() {
            return true;
        }
    }
    done == data.len()
}

/// Handles one request chain given as its readable and writable
/// descriptors. Returns the used length (0 when no status could be
/// written); `done` receives what a decoded request did, for the
/// counters the caller records once the chain is used.
pub(crate) fn handle_request<M: Bytes<GuestAddress>>(
    state: &IommuState,
    mem: &M,
    readable: &[Seg],
    writable: &[Seg],
    done: &mut Option<Completed>,
) -> u32 {
    let stats = &state.stats;
    let wlen: u64 = writable.iter().map(|s| u64::from(s.len)).sum();
    if wlen < p::TAIL_LEN as u64 {
        stats.malformed.fetch_add(1, Ordering::Relaxed);
        return 0;
    }
    let mut buf = [0u8; MAX_REQUEST];
    let mut got = 0usize;
    let mut fault = false;
    for s in readable {
        if got == MAX_REQUEST {
            break;
        }
        let n = (s.len as usize).min(MAX_REQUEST - got);
        if mem
            .read_slice(&mut buf[got..got + n], GuestAddress(s.addr))
            .is_err()
        {
            fault = true;
            break;
        }
        got += n;
    }
    let mut probe_len = 0u64;
    // Statuses and unwritten returns per virtio 1.2, 5.13.6.
    let mut mapped = None;
    let (kind, st, bytes) = if fault {
        stats.malformed.fetch_add(1, Ordering::Relaxed);
        (None, status::FAULT, 0)
    } else if got < p::HEAD_LEN {
        // Empty: no type to answer for; returned unwritten.
        stats.malformed.fetch_add(1, Ordering::Relaxed);
        return 0;
    } else {
        let body = &buf[p::HEAD_LEN..got];
        match (p::body_len(buf[0]), Request::decode(buf[0], body)) {
            (None, _) => {
                // Unknown type: the device SHOULD NOT write the buffer
                // and SHOULD set the used length to zero.
                stats.malformed.fetch_add(1, Ordering::Relaxed);
                return 0;
            }
            (Some(_), None) => {
                // Truncated body; the tail is there: INVAL.
                stats.malformed.fetch_add(1, Ordering::Relaxed);
                (None, status::INVAL, 0)
            }
            (Some(_), Some(req)) if !p::reserved_is_zero(buf[0], body) => {
                stats.malformed.fetch_add(1, Ordering::Relaxed);
                (Some(req.kind()), status::INVAL, 0)
            }
            (Some(_), Some(req)) => {
                let (st, bytes) =
                    execute(state, mem, req, writable, wlen, &mut probe_len, &mut mapped);
                (Some(req.kind()), st, bytes)
            }
        }
    };
    let tail = [st, 0, 0, 0];
    if !write_area(mem, writable, wlen - p::TAIL_LEN as u64, &tail) {
        stats.malformed.fetch_add(1, Ordering::Relaxed);
        return 0;
    }
    if let Some(k) = kind {
        // Read under the request's own write lock, except for PROBE.
        let mapped = mapped.unwrap_or_else(|| {
            state
                .tables
                .read()
                .unwrap_or_else(|e| e.into_inner())
                .mapped_bytes()
        });
        *done = Some(Completed {
            kind: k,
            status: st,
            bytes,
            mapped_now: mapped,
        });
    }
    (probe_len + p::TAIL_LEN as u64) as u32
}

fn execute<M: Bytes<GuestAddress>>(
    state: &IommuState,
    mem: &M,
    req: Request,
    writable: &[Seg],
    wlen: u64,
    probe_len: &mut u64,
    mapped: &mut Option<u64>,
) -> (u8, u64) {
    // Host calls are ordered (crate::host_sync); work a vCPU deferred is
    // done before this request is answered.
    let _order = state.host.order();
    let mut t = state.tables();
    if t.host_pending() {
        drop(t);
        state.sync_host_ordered();
        t = state.tables();
    }
    let mut o = match req {
        Request::Attach {
            domain,
            endpoint,
            flags,
        } => t.attach(domain, endpoint, flags),
        Request::Detach { domain, endpoint } => t.detach(domain, endpoint),
        Request::Map {
            domain,
            virt_start,
            virt_end,
            phys_start,
            flags,
        } => t.map(domain, virt_start, virt_end, phys_start, flags),
        Request::Unmap {
            domain,
            virt_start,
            virt_end,
        } => t.unmap(domain, virt_start, virt_end),
        Request::CoopRegister { dir_gpa, nr_leaves } => t.coop_register(dir_gpa, nr_leaves),
        Request::CoopPin { gfn, nr_pages } => t.coop_pin(gfn, nr_pages),
        Request::Probe { endpoint } => {
            if !t.has_endpoint(endpoint) {
                return (status::NOENT, 0);
            }
            let size = u64::from(PROBE_SIZE);
            if wlen < size + p::TAIL_LEN as u64 {
                return (status::INVAL, 0);
            }
            let (lo, hi) = t.limits().msi_window();
            drop(t);
            let mut props = vec![0u8; PROBE_SIZE as usize];
            props[..24].copy_from_slice(&p::encode_resv_mem(p::RESV_MEM_T_MSI, lo, hi));
            if !write_area(mem, writable, 0, &props) {
                return (status::FAULT, 0);
            }
            *probe_len = size;
            return (status::OK, 0);
        }
    };
    // An identity map the request made necessary (a hardware endpoint
    // now bypasses) was deferred: done here with the tables unlocked, and
    // the answer says whether it succeeded.
    if t.host_pending() {
        drop(t);
        state.sync_host_ordered();
        t = state.tables();
        let changes_bypass = matches!(req, Request::Attach { .. } | Request::Detach { .. });
        if changes_bypass && o.status == status::OK && !t.identity_settled() {
            o.status = status::DEVERR;
        }
    }
    *mapped = Some(t.mapped_bytes());
    (o.status, o.bytes)
}

/// The guest RAM behind a device's memory when translation is off. The
/// virtio-iommu is never behind an IOMMU (its rings and requests are
/// guest-physical), so its worker accesses RAM directly: through the
/// disabled translation layer of [`GuestMemory`] the ring and request
/// accesses cost about twice as many instructions (docs/performance.md).
fn untranslated_ram(mem: &GuestMemory) -> Option<GuestMemoryMmap> {
    (!mem.get_iommu_enabled()).then(|| mem.get_backend().clone())
}

/// Serves the request and event queues.
pub(crate) struct IommuWorker {
    pub(crate) state: Arc<IommuState>,
    /// Guest RAM (see [`untranslated_ram`]).
    pub(crate) mem: GuestMemoryMmap,
    pub(crate) req: Queue,
    req_evt: EventFd,
    event: Option<(Queue, EventFd)>,
    interrupt: Arc<dyn VirtioInterrupt>,
    readable: Vec<Seg>,
    writable: Vec<Seg>,
    /// Request-queue polling ([`crate::poll`]).
    pub(crate) poll: PollConfig,
    /// The poll thread has been pinned (once, on its first poll).
    pub(crate) pinned: bool,
    /// Set before the worker is stopped, so a polling loop returns.
    pub(crate) stopping: Arc<AtomicBool>,
    /// Whether the request queue is still served (see
    /// [`devices::virtio::ring`]).
    pub(crate) req_health: QueueHealth,
    event_health: QueueHealth,
    needs_reset: NeedsReset,
}

/// Stops serving a queue the driver broke, asks for a reset, counts it.
fn ring_broken(health: &mut QueueHealth, e: RingError, reset: &NeedsReset, stats: &Stats) {
    if health.broken(e, reset) {
        stats.broken_rings.fetch_add(1, Ordering::Relaxed);
    }
}

const EV_REQ: u32 = 0;
const EV_EVENTQ: u32 = 1;
const EV_FAULT: u32 = 2;

impl IommuWorker {
    /// A worker with only a request queue, for tests and fuzzing.
    #[cfg(any(test, feature = "fuzzing"))]
    pub(crate) fn for_test(
        state: Arc<IommuState>,
        mem: GuestMemory,
        req: Queue,
        interrupt: Arc<dyn VirtioInterrupt>,
    ) -> std::io::Result<Self> {
        let mem = untranslated_ram(&mem).ok_or(std::io::ErrorKind::InvalidInput)?;
        Ok(IommuWorker {
            state,
            mem,
            req,
            req_evt: EventFd::new(libc::EFD_NONBLOCK)?,
            event: None,
            needs_reset: NeedsReset::new(interrupt.clone()),
            interrupt,
            readable: Vec::new(),
            writable: Vec::new(),
            poll: PollConfig::default(),
            pinned: false,
            stopping: Arc::new(AtomicBool::new(false)),
            req_health: QueueHealth::new("virtio-iommu request queue"),
            event_health: QueueHealth::new("virtio-iommu event queue"),
        })
    }

    /// Processes the request queue once (see [`Self::process_requests`]).
    #[cfg(any(test, feature = "fuzzing"))]
    pub(crate) fn run_requests(&mut self) -> bool {
        self.process_requests()
    }

    /// A notification-driven pass: serves the request queue until it is
    /// empty with notifications enabled; returns whether to interrupt. A
    /// ring the driver broke is not served until reset.
    fn process_requests(&mut self) -> bool {
        if self.req_health.is_broken() {
            return false;
        }
        let stats = self.state.stats.clone();
        stats.batches.fetch_add(1, Ordering::Relaxed);
        let unmaps_before = stats.requests[3].load(Ordering::Relaxed);
        let mut used = false;
        loop {
            if let Err(e) = ring::disable_notification(&mut self.req, &self.mem) {
                ring_broken(&mut self.req_health, e, &self.needs_reset, &stats);
                break;
            }
            used |= self.drain_requests(false) > 0;
            if self.req_health.is_broken() {
                break;
            }
            match ring::enable_notification(&mut self.req, &self.mem) {
                Ok(true) => continue,
                Ok(false) => break,
                Err(e) => {
                    ring_broken(&mut self.req_health, e, &self.needs_reset, &stats);
                    break;
                }
            }
        }
        if stats.requests[3].load(Ordering::Relaxed) != unmaps_before {
            stats.unmap_batches.fetch_add(1, Ordering::Relaxed);
        }
        if self.req_health.is_broken() {
            return used;
        }
        used && self.req.needs_notification(&self.mem).unwrap_or(true)
    }

    /// Handles every available request chain; returns how many. `polled`:
    /// found by the poll loop rather than after a notification. A broken
    /// ring marks the queue broken (`req_health`) and ends the pass.
    pub(crate) fn drain_requests(&mut self, polled: bool) -> u64 {
        // No allocation, lock or clock read when the ring is empty (the
        // poll loop calls this continuously).
        let stats = &*self.state.stats;
        let mut clock = None;
        let mut n = 0;
        while !self.req_health.is_broken() {
            let chain = match ring::pop_chain(&mut self.req, &self.mem) {
                Ok(Some(chain)) => chain,
                Ok(None) => break,
                Err(e) => {
                    ring_broken(&mut self.req_health, e, &self.needs_reset, stats);
                    break;
                }
            };
            let clock = clock.get_or_insert_with(PassClock::start);
            let head = chain.head_index();
            self.readable.clear();
            self.writable.clear();
            for d in chain {
                let seg = Seg {
                    addr: d.addr().0,
                    len: d.len(),
                };
                if d.is_write_only() {
                    self.writable.push(seg);
                } else if self.writable.is_empty() {
                    self.readable.push(seg);
                } else {
                    // Readable after writable: malformed; ignore it.
                    stats.malformed.fetch_add(1, Ordering::Relaxed);
                }
            }
            let mut done = None;
            let len = handle_request(
                &self.state,
                &self.mem,
                &self.readable,
                &self.writable,
                &mut done,
            );
            if let Err(e) = ring::add_used(&mut self.req, &self.mem, head, len) {
                ring_broken(&mut self.req_health, e, &self.needs_reset, stats);
                break;
            }
            clock.complete(stats, done);
            n += 1;
        }
        if polled && n > 0 {
            stats.poll.polled_requests.fetch_add(n, Ordering::Relaxed);
        }
        n
    }

    /// Moves pending faults into event buffers; returns whether to notify.
    /// A ring the driver broke is not served until reset (faults then stay
    /// queued, up to the limit, and are counted as dropped beyond it).
    pub(crate) fn deliver_faults(&mut self) -> bool {
        let Some((q, _)) = self.event.as_mut() else {
            return false;
        };
        if self.event_health.is_broken() {
            return false;
        }
        let stats = &*self.state.stats;
        let mut used = false;
        loop {
            let next = self
                .state
                .faults
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .front()
                .copied();
            let Some(f) = next else { break };
            let chain = match ring::pop_chain(q, &self.mem) {
                Ok(Some(chain)) => chain,
                Ok(None) => break,
                Err(e) => {
                    ring_broken(&mut self.event_health, e, &self.needs_reset, stats);
                    return used;
                }
            };
            let head = chain.head_index();
            let segs: Vec<Seg> = chain
                .filter(|d| d.is_write_only())
                .map(|d| Seg {
                    addr: d.addr().0,
                    len: d.len(),
                })
                .collect();
            let ev = p::encode_fault(f.reason, f.flags, f.endpoint, f.address);
            let ok = write_area(&self.mem, &segs, 0, &ev);
            self.state
                .faults
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .pop_front();
            let len = if ok {
                stats.fault_events.fetch_add(1, Ordering::Relaxed);
                p::FAULT_LEN as u32
            } else {
                stats.fault_events_dropped.fetch_add(1, Ordering::Relaxed);
                0
            };
            if let Err(e) = ring::add_used(q, &self.mem, head, len) {
                ring_broken(&mut self.event_health, e, &self.needs_reset, stats);
                return used;
            }
            used = true;
        }
        used && q.needs_notification(&self.mem).unwrap_or(true)
    }

    pub(crate) fn signal(&self, queue: u16) {
        if let Err(e) = self.interrupt.signal_used_queue(queue) {
            tracing::warn!("virtio-iommu: interrupt failed: {e}");
        }
    }
}

impl MutEventSubscriber for IommuWorker {
    fn process(&mut self, events: Events, _ops: &mut EventOps) {
        match events.data() {
            EV_REQ => {
                if let Ok(n) = self.req_evt.read() {
                    self.state
                        .stats
                        .notifications
                        .fetch_add(n, Ordering::Relaxed);
                }
                if self.process_requests() {
                    self.signal(REQ_QUEUE);
                }
                self.poll();
            }
            EV_EVENTQ | EV_FAULT => {
                if events.data() == EV_EVENTQ {
                    if let Some((_, e)) = &self.event {
                        let _ = e.read();
                    }
                } else {
                    let _ = self.state.fault_evt.read();
                }
                if self.deliver_faults() {
                    self.signal(EVENT_QUEUE);
                }
            }
            _ => {}
        }
    }

    fn init(&mut self, ops: &mut EventOps) {
        watch(ops, &self.req_evt, EV_REQ, EventSet::IN);
        if let Some((_, e)) = &self.event {
            watch(ops, e, EV_EVENTQ, EventSet::IN);
        }
        watch(ops, &self.state.fault_evt, EV_FAULT, EventSet::IN);
    }
}

/// The virtio-iommu device model.
pub struct VirtioIommu {
    state: Arc<IommuState>,
    worker: Option<Worker>,
    poll: PollConfig,
    stopping: Arc<AtomicBool>,
}

impl VirtioIommu {
    /// A device over `state`.
    pub fn new(state: Arc<IommuState>) -> Self {
        VirtioIommu {
            state,
            worker: None,
            poll: PollConfig::default(),
            stopping: Arc::new(AtomicBool::new(false)),
        }
    }

    /// The same device polling its request queue as `poll` says.
    pub fn with_poll(mut self, poll: PollConfig) -> Self {
        self.poll = poll;
        self
    }

    /// Stops the device thread (ending a polling loop first).
    fn stop_worker(&mut self) {
        if let Some(mut w) = self.worker.take() {
            self.stopping.store(true, Ordering::Relaxed);
            w.stop();
        }
    }

    fn config(&self) -> [u8; 40] {
        let t = self.state.tables.read().unwrap_or_else(|e| e.into_inner());
        let l = t.limits();
        let mut c = [0u8; 40];
        let page_mask: u64 = !(crate::tables::GRANULE - 1);
        c[0..8].copy_from_slice(&page_mask.to_le_bytes());
        c[8..16].copy_from_slice(&l.input_start().to_le_bytes());
        c[16..24].copy_from_slice(&l.input_end().to_le_bytes());
        c[24..28].copy_from_slice(&l.domain_start().to_le_bytes());
        c[28..32].copy_from_slice(&l.domain_end().to_le_bytes());
        c[32..36].copy_from_slice(&PROBE_SIZE.to_le_bytes());
        c[36] = u8::from(t.bypass());
        c
    }
}

impl VirtioDevice for VirtioIommu {
    fn device_type(&self) -> u32 {
        device_type::IOMMU
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &[QUEUE_SIZE, QUEUE_SIZE]
    }

    fn avail_features(&self) -> u64 {
        let coop = match self.state.tables.read() {
            Ok(t) if t.coop().is_some() => p::F_IOVMM_COOP,
            _ => 0,
        };
        // Indirect descriptor tables are followed by virtio-queue (nested
        // tables, bad lengths and loops end the chain; see device_tests).
        features::VERSION_1
            | features::INDIRECT_DESC
            | p::F_INPUT_RANGE
            | p::F_DOMAIN_RANGE
            | p::F_MAP_UNMAP
            | p::F_PROBE
            | p::F_MMIO
            | p::F_BYPASS_CONFIG
            | coop
    }

    fn set_acked_features(&mut self, f: u64) {
        let mut t = self.state.tables();
        t.bypass_config = f & p::F_BYPASS_CONFIG != 0;
        t.mmio = f & p::F_MMIO != 0;
        t.coop_acked = t.coop().is_some() && f & p::F_IOVMM_COOP != 0;
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        read_config_from(&self.config(), offset, data);
    }

    fn write_config(&mut self, offset: u64, data: &[u8]) {
        // Only `bypass` is writable, and only with BYPASS_CONFIG.
        // No host call here (a vCPU thread): the identity map follows on
        // the viommu-host thread, before the next request is answered.
        if offset == 36 && data.len() == 1 {
            let mut t = self.state.tables();
            if t.bypass_config {
                t.set_bypass(data[0] & 1 != 0);
                drop(t);
                self.state.host.request();
            }
        }
    }

    fn activate(&mut self, ctx: ActivateContext) -> Result<(), ActivateError> {
        let mut req = None;
        let mut event = None;
        for ((i, q), e) in ctx.queues.into_iter().zip(ctx.queue_evts) {
            match i {
                REQ_QUEUE => req = Some((q, e)),
                EVENT_QUEUE => event = Some((q, e)),
                _ => {}
            }
        }
        let Some((req, req_evt)) = req else {
            return Err(ActivateError::BadConfig("request queue not enabled".into()));
        };
        let Some(mem) = untranslated_ram(&ctx.mem) else {
            return Err(ActivateError::BadConfig(
                "the virtio-iommu cannot be behind an IOMMU".into(),
            ));
        };
        let w = IommuWorker {
            state: self.state.clone(),
            mem,
            req,
            req_evt,
            event,
            interrupt: ctx.interrupt,
            readable: Vec::with_capacity(8),
            writable: Vec::with_capacity(8),
            poll: self.poll,
            pinned: false,
            stopping: self.stopping.clone(),
            req_health: QueueHealth::new("virtio-iommu request queue"),
            event_health: QueueHealth::new("virtio-iommu event queue"),
            needs_reset: ctx.needs_reset,
        };
        self.stopping.store(false, Ordering::Relaxed);
        self.worker = Some(Worker::spawn("virtio-iommu", w)?);
        Ok(())
    }

    fn reset(&mut self) {
        self.stop_worker();
        self.state.tables().reset();
        self.state.host.request();
    }
}

impl Drop for VirtioIommu {
    fn drop(&mut self) {
        self.stop_worker();
    }
}

#[cfg(test)]
#[path = "device_tests.rs"]
mod tests;

#[cfg(test)]
#[path = "device_ring_tests.rs"]
mod ring_tests;
