//! The request path below the virtqueue, opened for the microbenchmarks in
//! `benches/` (feature `bench`).
//!
//! [`place`] writes a request into guest memory the way the Linux driver
//! lays it out (one buffer: head and body read by the device, the 4-byte
//! tail written by it, handed over as two descriptors); [`handle`] runs it
//! through the worker's per-chain code (decode, tables, status, counters)
//! without a virtqueue; [`RequestQueue`] publishes placed requests on a
//! real split virtqueue in guest memory and drains it with the worker's
//! notification-driven pass.

use std::sync::Arc;

use devices::virtio::testing::{NoInterrupt, TestQueue};
use vm_memory::{Bytes, GuestAddress, GuestMemoryError, GuestMemoryMmap};

use crate::device::{handle_request, IommuState, IommuWorker, Seg};
use crate::protocol::{self as p, Request};
use crate::stats::PassClock;

/// A request the driver placed in guest memory: `len` bytes at `addr`,
/// the last [`p::TAIL_LEN`] of them device-writable.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PlacedRequest {
    /// Guest-physical address of the request's head.
    pub addr: u64,
    /// Length including the tail.
    pub len: u32,
}

impl PlacedRequest {
    /// The device-readable descriptor `(addr, len)`: head and body.
    pub fn readable(&self) -> (u64, u32) {
        (self.addr, self.len - p::TAIL_LEN as u32)
    }

    /// The device-writable descriptor `(addr, len)`: the tail.
    pub fn writable(&self) -> (u64, u32) {
        (
            self.addr + u64::from(self.len) - p::TAIL_LEN as u64,
            p::TAIL_LEN as u32,
        )
    }
}

/// The bytes the driver sends for `req`: head, body (reserved fields
/// zero) and a zeroed tail.
pub fn encode(req: &Request) -> Vec<u8> {
    let mut b = Vec::with_capacity(p::HEAD_LEN + 32 + p::TAIL_LEN);
    let ty = match *req {
        Request::Attach { .. } => p::req::ATTACH,
        Request::Detach { .. } => p::req::DETACH,
        Request::Map { .. } => p::req::MAP,
        Request::Unmap { .. } => p::req::UNMAP,
        Request::Probe { .. } => p::req::PROBE,
        Request::CoopRegister { .. } => p::req::COOP_REGISTER,
        Request::CoopPin { .. } => p::req::COOP_PIN,
    };
    b.extend([ty, 0, 0, 0]);
    match *req {
        Request::Attach {
            domain,
            endpoint,
            flags,
        } => {
            b.extend(domain.to_le_bytes());
            b.extend(endpoint.to_le_bytes());
            b.extend(flags.to_le_bytes());
        }
        Request::Detach { domain, endpoint } => {
            b.extend(domain.to_le_bytes());
            b.extend(endpoint.to_le_bytes());
        }
        Request::Map {
            domain,
            virt_start,
            virt_end,
            phys_start,
            flags,
        } => {
            b.extend(domain.to_le_bytes());
            b.extend(virt_start.to_le_bytes());
            b.extend(virt_end.to_le_bytes());
            b.extend(phys_start.to_le_bytes());
            b.extend(flags.to_le_bytes());
        }
        Request::Unmap {
            domain,
            virt_start,
            virt_end,
        } => {
            b.extend(domain.to_le_bytes());
            b.extend(virt_start.to_le_bytes());
            b.extend(virt_end.to_le_bytes());
        }
        Request::Probe { endpoint } => b.extend(endpoint.to_le_bytes()),
        Request::CoopRegister { dir_gpa, nr_leaves } => {
            b.extend(dir_gpa.to_le_bytes());
            b.extend(nr_leaves.to_le_bytes());
        }
        Request::CoopPin { gfn, nr_pages } => {
            b.extend(gfn.to_le_bytes());
            b.extend(nr_pages.to_le_bytes());
        }
    }
    // Every body_len is known for the types above.
    let body = p::body_len(ty).unwrap_or(0);
    b.resize(p::HEAD_LEN + body + p::TAIL_LEN, 0);
    b
}

/// Writes `req` at guest-physical `addr` (see [`encode`]).
pub fn place<M: Bytes<GuestAddress, E = GuestMemoryError>>(
    mem: &M,
    addr: u64,
    req: &Request,
) -> Result<PlacedRequest, GuestMemoryError> {
    let bytes = encode(req);
    mem.write_slice(&bytes, GuestAddress(addr))?;
    Ok(PlacedRequest {
        addr,
        len: bytes.len() as u32,
    })
}

/// Handles `req` as the worker handles a popped chain of its two
/// descriptors, as the only request of its pass (the pass's clock is
/// started and read once more at the end), counters included; returns
/// the used length.
pub fn handle<M: Bytes<GuestAddress>>(state: &IommuState, mem: &M, req: &PlacedRequest) -> u32 {
    let (ra, rl) = req.readable();
    let (wa, wl) = req.writable();
    let mut clock = PassClock::start();
    let mut done = None;
    let len = handle_request(
        state,
        mem,
        &[Seg { addr: ra, len: rl }],
        &[Seg { addr: wa, len: wl }],
        &mut done,
    );
    clock.complete(&state.stats, done);
    len
}

/// The status the device wrote in `req`'s tail.
pub fn status<M: Bytes<GuestAddress>>(mem: &M, req: &PlacedRequest) -> Option<u8> {
    mem.read_obj(GuestAddress(req.writable().0)).ok()
}

/// A request virtqueue in 1 MiB of guest RAM (rings below 0x3000, request
/// buffers from 0x10000 on) and the device worker serving it.
pub struct RequestQueue {
    tq: TestQueue,
    worker: IommuWorker,
}

impl RequestQueue {
    /// A queue of `size` entries (at most 256) served for `state`.
    pub fn new(state: Arc<IommuState>, size: u16) -> std::io::Result<Self> {
        let tq = TestQueue::new(size);
        let worker = IommuWorker::for_test(state, tq.memory(), tq.queue(), Arc::new(NoInterrupt))?;
        Ok(RequestQueue { tq, worker })
    }

    /// The guest RAM the queue and the requests live in.
    pub fn ram(&self) -> &GuestMemoryMmap {
        &self.tq.ram
    }

    /// Makes `req` available as a chain of its two descriptors (the
    /// driver's side; no notification).
    pub fn publish(&mut self, req: &PlacedRequest) {
        let (ra, rl) = req.readable();
        let (wa, wl) = req.writable();
        self.tq.add_chain(&[(ra, rl, false), (wa, wl, true)]);
    }

    /// One notification-driven pass of the worker: serves every available
    /// request; returns whether the driver would be interrupted.
    pub fn process(&mut self) -> bool {
        self.worker.run_requests()
    }

    /// Used entries published by the device so far (wrapping).
    pub fn used_idx(&self) -> u16 {
        self.tq.used_idx()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tables::{Limits, Tables};
    use std::sync::atomic::Ordering;

    fn state() -> Arc<IommuState> {
        let mut t = Tables::new(Limits::default(), None);
        t.add_endpoint(8, None, false);
        IommuState::new(t).unwrap()
    }

    #[test]
    fn encoded_requests_decode_to_themselves() {
        let reqs = [
            Request::Attach {
                domain: 1,
                endpoint: 8,
                flags: 0,
            },
            Request::Detach {
                domain: 1,
                endpoint: 8,
            },
            Request::Map {
                domain: 1,
                virt_start: 0x1000,
                virt_end: 0x1fff,
                phys_start: 0x8000,
                flags: 3,
            },
            Request::Unmap {
                domain: 1,
                virt_start: 0x1000,
                virt_end: 0x1fff,
            },
            Request::Probe { endpoint: 8 },
        ];
        for r in reqs {
            let b = encode(&r);
            let body = &b[p::HEAD_LEN..b.len() - p::TAIL_LEN];
            assert_eq!(body.len(), p::body_len(b[0]).unwrap());
            assert_eq!(Request::decode(b[0], body), Some(r));
        }
    }

    #[test]
    fn placed_requests_are_handled_directly_and_through_the_queue() {
        let s = state();
        let mut q = RequestQueue::new(s.clone(), 16).unwrap();
        let attach = Request::Attach {
            domain: 1,
            endpoint: 8,
            flags: 0,
        };
        let map = Request::Map {
            domain: 1,
            virt_start: 0x1000,
            virt_end: 0x1fff,
            phys_start: 0x8000,
            flags: 3,
        };
        let a = place(q.ram(), 0x10000, &attach).unwrap();
        let m = place(q.ram(), 0x10040, &map).unwrap();
        assert_eq!(handle(&s, q.ram(), &a), p::TAIL_LEN as u32);
        assert_eq!(status(q.ram(), &a), Some(p::status::OK));
        q.publish(&m);
        q.publish(&m);
        q.process();
        assert_eq!(q.used_idx(), 2);
        // The second MAP of the same range overlaps the first.
        assert_eq!(status(q.ram(), &m), Some(p::status::INVAL));
        assert_eq!(s.stats.requests[2].load(Ordering::Relaxed), 2);
        assert_eq!(s.stats.failed[2].load(Ordering::Relaxed), 1);
        assert_eq!(s.tables.read().unwrap().mapped_bytes(), 0x1000);
    }
}
