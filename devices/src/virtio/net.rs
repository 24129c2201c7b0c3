//! virtio-net on a TAP interface (virtio 1.2, section 5.1): one receive
//! and one transmit queue, no offloads. Frames keep their 12-byte
//! `virtio_net_hdr_v1` on both sides, so they are copied as they are.

use std::io::{self, Read, Write};
use std::os::unix::io::AsRawFd;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use event_manager::{EventOps, Events, MutEventSubscriber};
use virtio_queue::Queue;
use vm_memory::Bytes;
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::eventfd::EventFd;

use super::ring::{self, NeedsReset, QueueHealth, RingError};
use super::tap::{Tap, VNET_HDR_LEN};
use super::worker::{watch, Worker};
use super::{device_type, features, ActivateContext, ActivateError, GuestMemory};
use super::{VirtioDevice, VirtioInterrupt};

const QUEUE_SIZE: u16 = 256;
const RX: u16 = 0;
const TX: u16 = 1;
const F_MAC: u64 = 1 << 5;
const F_STATUS: u64 = 1 << 16;
const S_LINK_UP: u16 = 1;
/// Largest frame (header included) moved in either direction.
pub const MAX_FRAME: usize = VNET_HDR_LEN + 65535;

/// Counters of one NIC.
#[derive(Debug, Default)]
pub struct NetStats {
    /// Frames delivered to the guest.
    pub rx_packets: AtomicU64,
    /// Bytes delivered to the guest (headers included).
    pub rx_bytes: AtomicU64,
    /// Frames sent by the guest.
    pub tx_packets: AtomicU64,
    /// Bytes sent by the guest (headers included).
    pub tx_bytes: AtomicU64,
    /// Frames dropped (backend full, frame larger than the guest buffer).
    pub dropped: AtomicU64,
    /// Malformed chains or memory faults.
    pub malformed: AtomicU64,
    /// Queues the driver broke (see [`super::ring`]); each one stopped
    /// being served and made the device ask for a reset.
    pub broken_rings: AtomicU64,
}

/// Where frames go and come from (a TAP, or a fake in tests).
pub trait NetBackend: Send {
    /// Reads one frame (with its virtio-net header); `WouldBlock` when none.
    fn read_frame(&mut self, buf: &mut [u8]) -> io::Result<usize>;
    /// Writes one frame (with its virtio-net header).
    fn write_frame(&mut self, frame: &[u8]) -> io::Result<()>;
}

impl NetBackend for Tap {
    fn read_frame(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.read(buf)
    }
    fn write_frame(&mut self, frame: &[u8]) -> io::Result<()> {
        self.write(frame).map(|_| ())
    }
}

/// A backend a device worker can run on: pollable (the worker waits for
/// its fd to become readable, edge-triggered) and cloned per activation.
pub trait NetPort: NetBackend + AsRawFd + Sized + 'static {
    /// Another handle to the same backend.
    fn clone_port(&self) -> io::Result<Self>;
}

impl NetPort for Tap {
    fn clone_port(&self) -> io::Result<Self> {
        self.try_clone()
    }
}

/// Queue processing shared by the worker and the tests.
struct NetQueues<B> {
    mem: GuestMemory,
    rx: Queue,
    tx: Queue,
    backend: B,
    stats: Arc<NetStats>,
    /// A frame read from the backend that found no receive buffer yet.
    pending: Option<usize>,
    rx_buf: Vec<u8>,
    tx_buf: Vec<u8>,
    rx_health: QueueHealth,
    tx_health: QueueHealth,
    needs_reset: NeedsReset,
}

impl<B: NetBackend> NetQueues<B> {
    fn new(
        mem: GuestMemory,
        rx: Queue,
        tx: Queue,
        backend: B,
        stats: Arc<NetStats>,
        needs_reset: NeedsReset,
    ) -> Self {
        NetQueues {
            mem,
            rx,
            tx,
            backend,
            stats,
            pending: None,
            rx_buf: vec![0; MAX_FRAME],
            tx_buf: Vec::with_capacity(MAX_FRAME),
            rx_health: QueueHealth::new("virtio-net rx"),
            tx_health: QueueHealth::new("virtio-net tx"),
            needs_reset,
        }
    }

    /// Sends every available transmit chain; returns whether to notify.
    /// A broken ring stops the queue until reset (see [`super::ring`]).
    fn process_tx(&mut self) -> bool {
        if self.tx_health.is_broken() {
            return false;
        }
        let mut used = false;
        let served = self.serve_tx(&mut used);
        let s = &self.stats.broken_rings;
        self.tx_health
            .settle(served, used, &mut self.tx, &self.mem, &self.needs_reset, s)
    }

    fn serve_tx(&mut self, used: &mut bool) -> Result<(), RingError> {
        loop {
            ring::disable_notification(&mut self.tx, &self.mem)?;
            while let Some(chain) = ring::pop_chain(&mut self.tx, &self.mem)? {
                let head = chain.head_index();
                self.tx_buf.clear();
                let mut ok = true;
                for d in chain {
                    let len = d.len() as usize;
                    let at = self.tx_buf.len();
                    if d.is_write_only() || at + len > MAX_FRAME {
                        ok = false;
                        break;
                    }
                    self.tx_buf.resize(at + len, 0);
                    if self
                        .mem
                        .read_slice(&mut self.tx_buf[at..], d.addr())
                        .is_err()
                    {
                        ok = false;
                        break;
                    }
                }
                if ok && self.tx_buf.len() > VNET_HDR_LEN {
                    match self.backend.write_frame(&self.tx_buf) {
                        Ok(()) => {
                            self.stats.tx_packets.fetch_add(1, Ordering::Relaxed);
                            self.stats
                                .tx_bytes
                                .fetch_add(self.tx_buf.len() as u64, Ordering::Relaxed);
                        }
                        Err(_) => {
                            self.stats.dropped.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                } else {
                    self.stats.malformed.fetch_add(1, Ordering::Relaxed);
                }
                ring::add_used(&mut self.tx, &self.mem, head, 0)?;
                *used = true;
            }
            if !ring::enable_notification(&mut self.tx, &self.mem)? {
                return Ok(());
            }
        }
    }

    /// Moves frames from the backend into receive buffers until one side
    /// runs dry; returns whether to notify. A broken ring stops the queue
    /// until reset; frames then stay in the backend.
    fn process_rx(&mut self) -> bool {
        if self.rx_health.is_broken() {
            return false;
        }
        let mut used = false;
        let served = self.serve_rx(&mut used);
        let s = &self.stats.broken_rings;
        self.rx_health
            .settle(served, used, &mut self.rx, &self.mem, &self.needs_reset, s)
    }

    fn serve_rx(&mut self, used: &mut bool) -> Result<(), RingError> {
        loop {
            let len = match self.pending.take() {
                Some(n) => n,
                None => {
                    self.rx_buf.resize(MAX_FRAME, 0);
                    match self.backend.read_frame(&mut self.rx_buf) {
                        Ok(n) if n > VNET_HDR_LEN => n,
                        Ok(_) => {
                            self.stats.malformed.fetch_add(1, Ordering::Relaxed);
                            continue;
                        }
                        Err(_) => return Ok(()),
                    }
                }
            };
            // num_buffers = 1: the whole frame goes into one chain.
            self.rx_buf[10..12].copy_from_slice(&1u16.to_le_bytes());
            // Kept for the next pass unless a buffer takes it.
            self.pending = Some(len);
            let Some(chain) = ring::pop_chain(&mut self.rx, &self.mem)? else {
                // Ask for a notification when buffers arrive, and re-check.
                if ring::enable_notification(&mut self.rx, &self.mem)? {
                    continue;
                }
                return Ok(());
            };
            self.pending = None;
            let head = chain.head_index();
            let mut done = 0usize;
            let mut fault = false;
            for d in chain {
                if done == len {
                    break;
                }
                if !d.is_write_only() {
                    fault = true;
                    break;
                }
                let n = (d.len() as usize).min(len - done);
                if self
                    .mem
                    .write_slice(&self.rx_buf[done..done + n], d.addr())
                    .is_err()
                {
                    fault = true;
                    break;
                }
                done += n;
            }
            let written = if fault || done < len {
                self.stats.dropped.fetch_add(1, Ordering::Relaxed);
                0
            } else {
                self.stats.rx_packets.fetch_add(1, Ordering::Relaxed);
                self.stats.rx_bytes.fetch_add(len as u64, Ordering::Relaxed);
                len as u32
            };
            ring::add_used(&mut self.rx, &self.mem, head, written)?;
            *used = true;
        }
    }
}

const EV_RX: u32 = 0;
const EV_TX: u32 = 1;
const EV_TAP: u32 = 2;

struct NetWorker<P> {
    q: NetQueues<P>,
    rx_evt: EventFd,
    tx_evt: EventFd,
    interrupt: Arc<dyn VirtioInterrupt>,
}

impl<P> NetWorker<P> {
    fn signal(&self, queue: u16) {
        if let Err(e) = self.interrupt.signal_used_queue(queue) {
            tracing::warn!("virtio-net: interrupt failed: {e}");
        }
    }
}

impl<P: NetPort> MutEventSubscriber for NetWorker<P> {
    fn process(&mut self, events: Events, _ops: &mut EventOps) {
        match events.data() {
            EV_TX => {
                let _ = self.tx_evt.read();
                if self.q.process_tx() {
                    self.signal(TX);
                }
            }
            EV_RX | EV_TAP => {
                if events.data() == EV_RX {
                    let _ = self.rx_evt.read();
                }
                if self.q.process_rx() {
                    self.signal(RX);
                }
            }
            _ => {}
        }
    }

    fn init(&mut self, ops: &mut EventOps) {
        watch(ops, &self.rx_evt, EV_RX, EventSet::IN);
        watch(ops, &self.tx_evt, EV_TX, EventSet::IN);
        // Edge-triggered: process_rx reads until the tap is empty or the
        // guest has no buffers; a new rx notification resumes it.
        let fd = self.q.backend.as_raw_fd();
        if let Err(e) = ops.add(Events::with_data_raw(
            fd,
            EV_TAP,
            EventSet::IN | EventSet::EDGE_TRIGGERED,
        )) {
            tracing::error!("virtio-net: cannot watch the tap: {e:?}");
        }
    }
}

/// The device configuration: MAC, then the status word (link up).
fn config_bytes(mac: &[u8; 6]) -> [u8; 8] {
    let mut c = [0u8; 8];
    c[..6].copy_from_slice(mac);
    c[6..8].copy_from_slice(&S_LINK_UP.to_le_bytes());
    c
}

/// A virtio-net device (on a TAP unless built over another [`NetPort`]).
pub struct VirtioNet<P = Tap> {
    tap: P,
    mac: [u8; 6],
    acked: u64,
    worker: Option<Worker>,
    stats: Arc<NetStats>,
}

/// What the device offers. Indirect descriptor tables are followed by
/// virtio-queue (malformed ones end the chain; see net_tests).
const AVAIL_FEATURES: u64 = features::VERSION_1 | features::INDIRECT_DESC | F_MAC | F_STATUS;

impl VirtioNet {
    /// Opens tap `name` and creates the device with `mac`.
    pub fn with_tap(name: &str, mac: [u8; 6]) -> io::Result<Self> {
        Ok(Self::new(Tap::open(name)?, mac))
    }

    /// A device on an already open tap.
    pub fn new(tap: Tap, mac: [u8; 6]) -> Self {
        Self::on_port(tap, mac)
    }
}

impl<P: NetPort> VirtioNet<P> {
    /// A device on `port` with `mac`.
    pub fn on_port(port: P, mac: [u8; 6]) -> Self {
        VirtioNet {
            tap: port,
            mac,
            acked: 0,
            worker: None,
            stats: Arc::new(NetStats::default()),
        }
    }

    /// The NIC's counters.
    pub fn stats(&self) -> Arc<NetStats> {
        self.stats.clone()
    }
}

impl<P: NetPort + Send> VirtioDevice for VirtioNet<P> {
    fn device_type(&self) -> u32 {
        device_type::NET
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &[QUEUE_SIZE, QUEUE_SIZE]
    }

    fn avail_features(&self) -> u64 {
        AVAIL_FEATURES
    }

    fn set_acked_features(&mut self, features: u64) {
        self.acked = features;
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        super::read_config_from(&config_bytes(&self.mac), offset, data);
    }

    fn write_config(&mut self, _offset: u64, _data: &[u8]) {}

    fn activate(&mut self, ctx: ActivateContext) -> Result<(), ActivateError> {
        let mut rx = None;
        let mut tx = None;
        for ((i, q), e) in ctx.queues.into_iter().zip(ctx.queue_evts) {
            match i {
                RX => rx = Some((q, e)),
                TX => tx = Some((q, e)),
                _ => {}
            }
        }
        let (Some((rxq, rx_evt)), Some((txq, tx_evt))) = (rx, tx) else {
            return Err(ActivateError::BadConfig(
                "rx and tx queues must be enabled".into(),
            ));
        };
        let port = self.tap.clone_port()?;
        let w = NetWorker {
            q: NetQueues::new(ctx.mem, rxq, txq, port, self.stats.clone(), ctx.needs_reset),
            rx_evt,
            tx_evt,
            interrupt: ctx.interrupt,
        };
        self.worker = Some(Worker::spawn("virtio-net", w)?);
        Ok(())
    }

    fn reset(&mut self) {
        if let Some(mut w) = self.worker.take() {
            w.stop();
        }
        self.acked = 0;
    }
}

#[cfg(test)]
#[path = "net_tests.rs"]
mod tests;
