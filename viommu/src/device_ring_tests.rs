//! Rings the driver broke (avail index far ahead of the device): the
//! worker stops serving the queue without spinning, asks for a reset, and
//! serves again after one. Each test runs the device's real worker thread.

use super::*;
use crate::poll::PollMode;
use crate::tables::Tables;
use devices::virtio::testing::{
    assert_idle, is_pending, wait_for, wait_sleeping, LeakOnPanic, RecordingInterrupt, TestQueue,
};
use vm_memory::Permissions;

fn state() -> Arc<IommuState> {
    let mut t = Tables::new(crate::tables::Limits::default(), None);
    t.add_endpoint(8, None, false);
    IommuState::new(t).unwrap()
}

const ATTACH_OK: [u8; 20] = [1, 0, 0, 0, 1, 0, 0, 0, 8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];

/// An event ring of 8 entries in `tq`'s RAM (0x80000..0x83000) with
/// `buffers` 24-byte device-writable buffers at 0x90000 made available.
fn event_ring(tq: &TestQueue, buffers: u16) -> Queue {
    let ram = &tq.ram;
    for i in 0..buffers {
        let d = 0x80000 + 16 * u64::from(i);
        ram.write_obj(0x90000 + 0x100 * u64::from(i), GuestAddress(d))
            .unwrap();
        ram.write_obj(24u32, GuestAddress(d + 8)).unwrap();
        ram.write_obj(2u16, GuestAddress(d + 12)).unwrap(); // VRING_DESC_F_WRITE
        ram.write_obj(i, GuestAddress(0x81004 + 2 * u64::from(i)))
            .unwrap();
    }
    ram.write_obj(buffers, GuestAddress(0x81002)).unwrap();
    ram.write_obj(0u16, GuestAddress(0x82002)).unwrap();
    let mut q = Queue::new(8).unwrap();
    q.set_size(8);
    q.set_desc_table_address(Some(0x80000), Some(0));
    q.set_avail_ring_address(Some(0x81000), Some(0));
    q.set_used_ring_address(Some(0x82000), Some(0));
    q.set_ready(true);
    q
}

fn event_used(tq: &TestQueue) -> u16 {
    tq.ram.read_obj(GuestAddress(0x82002)).unwrap()
}

/// A running device as the transport starts it.
struct Rig {
    dev: LeakOnPanic<VirtioIommu>,
    s: Arc<IommuState>,
    tq: TestQueue,
    irq: Arc<RecordingInterrupt>,
    needs_reset: NeedsReset,
    req_kick: EventFd,
    event_kick: EventFd,
}

impl Rig {
    fn new(poll: PollMode) -> Rig {
        let s = state();
        let dev = LeakOnPanic::new(VirtioIommu::new(s.clone()).with_poll(PollConfig {
            mode: poll,
            ..PollConfig::default()
        }));
        let tq = TestQueue::new(16);
        let irq = Arc::new(RecordingInterrupt::default());
        let e = || EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let mut r = Rig {
            dev,
            s,
            tq,
            needs_reset: NeedsReset::new(irq.clone()),
            irq,
            req_kick: e(),
            event_kick: e(),
        };
        r.activate();
        r
    }

    /// (Re-)activates the device over the rings as they are now.
    fn activate(&mut self) {
        self.needs_reset = NeedsReset::new(self.irq.clone());
        let ctx = ActivateContext {
            mem: self.tq.memory(),
            interrupt: self.irq.clone(),
            queues: vec![
                (REQ_QUEUE, self.tq.queue()),
                (EVENT_QUEUE, event_ring(&self.tq, 1)),
            ],
            queue_evts: vec![
                self.req_kick.try_clone().unwrap(),
                self.event_kick.try_clone().unwrap(),
            ],
            acked_features: features::VERSION_1,
            needs_reset: self.needs_reset.clone(),
        };
        self.dev.activate(ctx).unwrap();
    }

    fn tid(&self) -> i32 {
        self.dev.worker.as_ref().unwrap().tid()
    }

    /// The driver resets the device and sets its rings up again.
    fn reset_and_reinit(&mut self) {
        self.dev.reset();
        self.tq.reinit();
        self.activate();
    }

    /// Queues an ATTACH(domain 1, endpoint 8) and kicks.
    fn attach(&mut self) {
        self.tq
            .ram
            .write_slice(&ATTACH_OK, GuestAddress(0x10000))
            .unwrap();
        self.tq
            .add_chain(&[(0x10000, 20, false), (0x20000, 4, true)]);
        self.req_kick.write(1).unwrap();
    }

    fn status(&self) -> u8 {
        self.tq.ram.read_obj(GuestAddress(0x20000)).unwrap()
    }
}

#[test]
fn request_queue_notified_far_ahead_index_idles_and_resets() {
    let mut r = Rig::new(PollMode::Off);
    let tid = r.tid();
    r.attach();
    wait_for("the first request is answered", || r.tq.used_idx() == 1);
    r.tq.set_avail_idx(1 + 1000);
    r.req_kick.write(1).unwrap();
    wait_for("DEVICE_NEEDS_RESET", || r.needs_reset.is_raised());
    // The event loop takes a later kick (it is not stuck in the earlier
    // one), does not touch the ring, and blocks.
    r.req_kick.write(1).unwrap();
    wait_for("the third kick is consumed", || !is_pending(&r.req_kick));
    assert_idle(tid, 20);
    let st = r.s.stats.clone();
    wait_for("three notifications counted", || {
        st.notifications.load(Ordering::Relaxed) == 3
    });
    assert_eq!(
        st.batches.load(Ordering::Relaxed),
        2,
        "no pass after the break"
    );
    assert_eq!(st.broken_rings.load(Ordering::Relaxed), 1);
    assert_eq!(r.irq.config_changes(), 1);
    assert_eq!(r.tq.used_idx(), 1);
    assert_eq!(st.to_json()["broken_rings"], 1);
    // After a reset the device answers again.
    r.reset_and_reinit();
    r.attach();
    wait_for("the request is answered", || r.tq.used_idx() == 1);
    assert_eq!(r.status(), p::status::OK);
    assert!(!r.needs_reset.is_raised());
}

#[test]
fn request_queue_polled_far_ahead_index_ends_polling_and_resets() {
    let mut r = Rig::new(PollMode::Always);
    let tid = r.tid();
    r.attach();
    wait_for("the first request is answered", || r.tq.used_idx() == 1);
    // The device polls now (no kick needed): it finds the bogus index.
    r.tq.set_avail_idx(0x7000);
    wait_for("DEVICE_NEEDS_RESET", || r.needs_reset.is_raised());
    // `always` polls forever on a good ring; on a broken one it returns to
    // the event loop and blocks.
    let polled_ticks = wait_sleeping(tid);
    r.req_kick.write(1).unwrap();
    wait_for("a later kick is consumed", || !is_pending(&r.req_kick));
    let ticks = wait_sleeping(tid);
    assert!(ticks - polled_ticks < 5, "{polled_ticks} -> {ticks} ticks");
    let st = r.s.stats.clone();
    assert_eq!(st.poll.sessions.load(Ordering::Relaxed), 1);
    assert_eq!(st.broken_rings.load(Ordering::Relaxed), 1);
    assert_eq!(r.irq.config_changes(), 1);
    r.reset_and_reinit();
    r.attach();
    wait_for("the request is answered", || r.tq.used_idx() == 1);
    assert_eq!(r.status(), p::status::OK);
    assert_eq!(st.poll.sessions.load(Ordering::Relaxed), 2);
    assert!(!r.needs_reset.is_raised());
}

#[test]
fn event_queue_far_ahead_index_idles_and_resets() {
    use crate::tables::FaultReason;
    let mut r = Rig::new(PollMode::Off);
    let tid = r.tid();
    // The event ring claims 200 buffers on 8 entries.
    r.tq.ram.write_obj(200u16, GuestAddress(0x81002)).unwrap();
    r.s.report_fault(8, 0x1000, Permissions::Write, FaultReason::Mapping);
    wait_for("DEVICE_NEEDS_RESET", || r.needs_reset.is_raised());
    r.s.report_fault(8, 0x2000, Permissions::Write, FaultReason::Mapping);
    r.event_kick.write(1).unwrap();
    wait_for("the later events are consumed", || {
        !is_pending(&r.s.fault_evt) && !is_pending(&r.event_kick)
    });
    assert_idle(tid, 20);
    assert_eq!(event_used(&r.tq), 0);
    assert_eq!(r.s.stats.broken_rings.load(Ordering::Relaxed), 1);
    assert_eq!(r.irq.config_changes(), 1);
    // Only the event queue stopped: requests are still answered.
    r.attach();
    wait_for("the request is answered", || r.tq.used_idx() == 1);
    // After a reset a fault reaches the (sane) event ring: the oldest one
    // still queued.
    r.reset_and_reinit();
    r.s.report_fault(8, 0x3000, Permissions::Read, FaultReason::Mapping);
    wait_for("a fault event is delivered", || event_used(&r.tq) == 1);
    let ev: [u8; 24] = r.tq.ram.read_obj(GuestAddress(0x90000)).unwrap();
    assert_eq!(u64::from_le_bytes(ev[16..24].try_into().unwrap()), 0x1000);
    assert!(!r.needs_reset.is_raised());
}
