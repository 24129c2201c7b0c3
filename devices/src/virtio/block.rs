//! virtio-blk over a raw image file (virtio 1.2, section 5.2): read,
//! write, flush and get-id, optionally read-only.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::{io, mem};

use event_manager::{EventOps, Events, MutEventSubscriber};
use virtio_queue::Queue;
use vm_memory::{Bytes, GuestAddress};
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::eventfd::EventFd;

use super::ring::{self, NeedsReset, QueueHealth, RingError};
use super::worker::{watch, Worker};
use super::{device_type, features, ActivateContext, ActivateError, GuestMemory};
use super::{VirtioDevice, VirtioInterrupt};

/// Sector size of the virtio-blk protocol.
pub const SECTOR: u64 = 512;
const QUEUE_SIZE: u16 = 256;

/// Request types.
pub mod req {
    /// Read.
    pub const IN: u32 = 0;
    /// Write.
    pub const OUT: u32 = 1;
    /// Flush.
    pub const FLUSH: u32 = 4;
    /// Device ID string.
    pub const GET_ID: u32 = 8;
}

/// Status codes.
pub mod status {
    /// Success.
    pub const OK: u8 = 0;
    /// I/O error (also: out of range, write to a read-only disk).
    pub const IOERR: u8 = 1;
    /// Unsupported request.
    pub const UNSUPP: u8 = 2;
}

const F_SEG_MAX: u64 = 1 << 2;
const F_RO: u64 = 1 << 5;
const F_BLK_SIZE: u64 = 1 << 6;
const F_FLUSH: u64 = 1 << 9;
/// Length of the GET_ID answer.
const ID_LEN: usize = 20;
/// Largest data transfer accepted in one request.
const MAX_REQUEST: u64 = 16 << 20;

/// Counters of one disk.
#[derive(Debug, Default)]
pub struct BlockStats {
    /// Requests completed (any status).
    pub requests: AtomicU64,
    /// Bytes read from the image.
    pub read_bytes: AtomicU64,
    /// Bytes written to the image.
    pub write_bytes: AtomicU64,
    /// Requests answered with IOERR or UNSUPP.
    pub errors: AtomicU64,
    /// Chains too malformed to answer (no status byte), or memory faults.
    pub malformed: AtomicU64,
    /// Times the driver broke the request queue (see [`super::ring`]): it
    /// stopped being served and the device asked for a reset.
    pub broken_rings: AtomicU64,
}

/// The image and its properties.
struct Disk {
    file: File,
    capacity: u64,
    readonly: bool,
    id: [u8; ID_LEN],
    buf: Vec<u8>,
}

/// One descriptor as the request parser sees it.
#[derive(Clone, Copy)]
struct Seg {
    addr: u64,
    len: u32,
    write: bool,
}

impl Disk {
    /// Handles one request given as its descriptors; returns the number
    /// of bytes written to the guest (for the used ring), or `None` when no
    /// status can be returned.
    fn handle<M: Bytes<GuestAddress>>(
        &mut self,
        mem: &M,
        segs: &[Seg],
        stats: &BlockStats,
    ) -> Option<u32> {
        let (first, rest) = segs.split_first()?;
        let (last, data) = rest.split_last()?;
        if !last.write || last.len == 0 {
            return None;
        }
        let status_addr = last.addr.checked_add(u64::from(last.len) - 1)?;
        let (st, written) = if first.write || first.len < 16 {
            (status::IOERR, 0)
        } else {
            let mut hdr = [0u8; 16];
            if mem.read_slice(&mut hdr, GuestAddress(first.addr)).is_err() {
                stats.malformed.fetch_add(1, Ordering::Relaxed);
                (status::IOERR, 0)
            } else {
                let ty = u32::from_le_bytes([hdr[0], hdr[1], hdr[2], hdr[3]]);
                let mut s = [0u8; 8];
                s.copy_from_slice(&hdr[8..16]);
                self.execute(mem, ty, u64::from_le_bytes(s), data, stats)
            }
        };
        if st != status::OK {
            stats.errors.fetch_add(1, Ordering::Relaxed);
        }
        // A status byte outside guest memory: the caller counts it malformed.
        mem.write_obj(st, GuestAddress(status_addr)).ok()?;
        Some(written.saturating_add(1))
    }

    fn execute<M: Bytes<GuestAddress>>(
        &mut self,
        mem: &M,
        ty: u32,
        sector: u64,
        data: &[Seg],
        stats: &BlockStats,
    ) -> (u8, u32) {
        let total: u64 = data.iter().map(|s| u64::from(s.len)).sum();
        match ty {
            req::IN | req::OUT => {
                let want_write = ty == req::IN;
                if data.iter().any(|s| s.write != want_write) || total > MAX_REQUEST {
                    return (status::IOERR, 0);
                }
                let Some(start) = sector.checked_mul(SECTOR) else {
                    return (status::IOERR, 0);
                };
                if start
                    .checked_add(total)
                    .is_none_or(|end| end > self.capacity)
                {
                    return (status::IOERR, 0);
                }
                if ty == req::OUT && self.readonly {
                    return (status::IOERR, 0);
                }
                let mut off = start;
                for s in data {
                    let ok = if ty == req::IN {
                        self.read_into(mem, off, s)
                    } else {
                        self.write_from(mem, off, s)
                    };
                    if !ok {
                        return (status::IOERR, 0);
                    }
                    off += u64::from(s.len);
                }
                if ty == req::IN {
                    stats.read_bytes.fetch_add(total, Ordering::Relaxed);
                    (status::OK, total as u32)
                } else {
                    stats.write_bytes.fetch_add(total, Ordering::Relaxed);
                    (status::OK, 0)
                }
            }
            req::FLUSH => match self.file.sync_data() {
                Ok(()) => (status::OK, 0),
                Err(_) => (status::IOERR, 0),
            },
            req::GET_ID => {
                let mut done = 0usize;
                for s in data.iter().filter(|s| s.write) {
                    let n = (s.len as usize).min(ID_LEN - done);
                    if mem
                        .write_slice(&self.id[done..done + n], GuestAddress(s.addr))
                        .is_err()
                    {
                        return (status::IOERR, 0);
                    }
                    done += n;
                    if done == ID_LEN {
                        break;
                    }
                }
                (status::OK, done as u32)
            }
            _ => (status::UNSUPP, 0),
        }
    }

    fn read_into<M: Bytes<GuestAddress>>(&mut self, mem: &M, off: u64, s: &Seg) -> bool {
        let len = s.len as usize;
        self.buf.resize(len, 0);
        if self.file.read_exact_at(&mut self.buf[..len], off).is_err() {
            return false;
        }
        mem.write_slice(&self.buf[..len], GuestAddress(s.addr))
            .is_ok()
    }

    fn write_from<M: Bytes<GuestAddress>>(&mut self, mem: &M, off: u64, s: &Seg) -> bool {
        let len = s.len as usize;
        self.buf.resize(len, 0);
        if mem
            .read_slice(&mut self.buf[..len], GuestAddress(s.addr))
            .is_err()
        {
            return false;
        }
        self.file.write_all_at(&self.buf[..len], off).is_ok()
    }
}

/// Serves the request queue of an activated disk.
struct BlockWorker {
    mem: GuestMemory,
    queue: Queue,
    evt: EventFd,
    disk: Disk,
    interrupt: Arc<dyn VirtioInterrupt>,
    index: u16,
    stats: Arc<BlockStats>,
    segs: Vec<Seg>,
    health: QueueHealth,
    needs_reset: NeedsReset,
}

impl BlockWorker {
    /// Drains the queue; returns whether the driver must be interrupted.
    /// A broken ring stops the queue until reset (see [`super::ring`]).
    fn process(&mut self) -> bool {
        if self.health.is_broken() {
            return false;
        }
        let mut used_any = false;
        let served = self.serve(&mut used_any);
        let s = &self.stats.broken_rings;
        self.health.settle(
            served,
            used_any,
            &mut self.queue,
            &self.mem,
            &self.needs_reset,
            s,
        )
    }

    fn serve(&mut self, used_any: &mut bool) -> Result<(), RingError> {
        loop {
            ring::disable_notification(&mut self.queue, &self.mem)?;
            while let Some(chain) = ring::pop_chain(&mut self.queue, &self.mem)? {
                let head = chain.head_index();
                self.segs.clear();
                for d in chain {
                    self.segs.push(Seg {
                        addr: d.addr().0,
                        len: d.len(),
                        write: d.is_write_only(),
                    });
                }
                let segs = mem::take(&mut self.segs);
                let len = match self.disk.handle(&self.mem, &segs, &self.stats) {
                    Some(n) => n,
                    None => {
                        self.stats.malformed.fetch_add(1, Ordering::Relaxed);
                        0
                    }
                };
                self.segs = segs;
                self.stats.requests.fetch_add(1, Ordering::Relaxed);
                ring::add_used(&mut self.queue, &self.mem, head, len)?;
                *used_any = true;
            }
            if !ring::enable_notification(&mut self.queue, &self.mem)? {
                return Ok(());
            }
        }
    }
}

impl MutEventSubscriber for BlockWorker {
    fn process(&mut self, _events: Events, _ops: &mut EventOps) {
        let _ = self.evt.read();
        if BlockWorker::process(self) {
            if let Err(e) = self.interrupt.signal_used_queue(self.index) {
                tracing::warn!("virtio-blk: interrupt failed: {e}");
            }
        }
    }

    fn init(&mut self, ops: &mut EventOps) {
        watch(ops, &self.evt, 0, EventSet::IN);
    }
}

/// A virtio-blk device.
pub struct VirtioBlock {
    file: File,
    capacity: u64,
    readonly: bool,
    id: [u8; ID_LEN],
    acked: u64,
    worker: Option<Worker>,
    stats: Arc<BlockStats>,
}

impl VirtioBlock {
    /// Opens the raw image at `path`; `id` is the GET_ID serial (up to 20
    /// bytes, truncated).
    pub fn new(path: &Path, readonly: bool, id: &str) -> io::Result<Self> {
        let name = path.display();
        let file = OpenOptions::new()
            .read(true)
            .write(!readonly)
            .open(path)
            .map_err(|e| {
                io::Error::new(
                    e.kind(),
                    format!("cannot open disk image {name}: {e}: check the path and permissions (or set readonly)"),
                )
            })?;
        let len = file.metadata()?.len();
        if len < SECTOR {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("disk image {name} is smaller than one 512-byte sector: resize it (truncate -s 64M {name})"),
            ));
        }
        let mut idb = [0u8; ID_LEN];
        let n = id.len().min(ID_LEN);
        idb[..n].copy_from_slice(&id.as_bytes()[..n]);
        Ok(VirtioBlock {
            file,
            capacity: len - len % SECTOR,
            readonly,
            id: idb,
            acked: 0,
            worker: None,
            stats: Arc::new(BlockStats::default()),
        })
    }

    /// The disk's counters.
    pub fn stats(&self) -> Arc<BlockStats> {
        self.stats.clone()
    }

    fn config(&self) -> [u8; 24] {
        let mut c = [0u8; 24];
        c[0..8].copy_from_slice(&(self.capacity / SECTOR).to_le_bytes());
        // size_max (8..12) unused; seg_max; geometry (16..20) unused; blk_size.
        c[12..16].copy_from_slice(&u32::from(QUEUE_SIZE - 2).to_le_bytes());
        c[20..24].copy_from_slice(&(SECTOR as u32).to_le_bytes());
        c
    }
}

impl VirtioDevice for VirtioBlock {
    fn device_type(&self) -> u32 {
        device_type::BLOCK
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &[QUEUE_SIZE]
    }

    fn avail_features(&self) -> u64 {
        let ro = if self.readonly { F_RO } else { 0 };
        // Indirect tables: followed by virtio-queue (see block_tests).
        features::VERSION_1 | features::INDIRECT_DESC | F_SEG_MAX | F_BLK_SIZE | F_FLUSH | ro
    }

    fn set_acked_features(&mut self, features: u64) {
        self.acked = features;
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        super::read_config_from(&self.config(), offset, data);
    }

    fn write_config(&mut self, _offset: u64, _data: &[u8]) {}

    fn activate(&mut self, mut ctx: ActivateContext) -> Result<(), ActivateError> {
        let (Some((index, queue)), Some(evt)) = (ctx.queues.pop(), ctx.queue_evts.pop()) else {
            return Err(ActivateError::BadConfig("request queue not enabled".into()));
        };
        let disk = Disk {
            file: self.file.try_clone()?,
            capacity: self.capacity,
            readonly: self.readonly,
            id: self.id,
            buf: Vec::new(),
        };
        let w = BlockWorker {
            mem: ctx.mem,
            queue,
            evt,
            disk,
            interrupt: ctx.interrupt,
            index,
            stats: self.stats.clone(),
            segs: Vec::with_capacity(usize::from(QUEUE_SIZE)),
            health: QueueHealth::new("virtio-blk"),
            needs_reset: ctx.needs_reset,
        };
        self.worker = Some(Worker::spawn("virtio-blk", w)?);
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
#[path = "block_tests.rs"]
mod tests;
