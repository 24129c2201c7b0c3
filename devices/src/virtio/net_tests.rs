use std::collections::VecDeque;

use super::*;
use crate::virtio::testing::{RecordingInterrupt, TestQueue};
use crate::virtio::ActivateContext;
use std::os::unix::io::AsRawFd;
use virtio_queue::QueueT;
use vm_memory::GuestAddress;

/// Frames in, frames out.
#[derive(Default)]
struct Fake {
    inbound: VecDeque<Vec<u8>>,
    sent: Vec<Vec<u8>>,
}

impl NetBackend for Fake {
    fn read_frame(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self.inbound.pop_front() {
            Some(f) => {
                buf[..f.len()].copy_from_slice(&f);
                Ok(f.len())
            }
            None => Err(io::ErrorKind::WouldBlock.into()),
        }
    }
    fn write_frame(&mut self, frame: &[u8]) -> io::Result<()> {
        self.sent.push(frame.to_vec());
        Ok(())
    }
}

/// rx ring at 0x0 (TestQueue layout), tx ring in a second TestQueue
/// sharing the RAM but placed at 0x4000 by copying the layout.
struct Rig {
    rxq: TestQueue,
    q: NetQueues<Fake>,
    irq: Arc<RecordingInterrupt>,
}

fn rig() -> Rig {
    let rxq = TestQueue::new(16);
    let mem = rxq.memory();
    let rx = rxq.queue();
    let mut tx = rxq.queue();
    // The tx queue uses descriptors 8.. of the same table in tests that
    // need it; here we only need a distinct, empty ring.
    tx.set_avail_ring_address(Some(0x5000), Some(0));
    tx.set_used_ring_address(Some(0x6000), Some(0));
    let irq = Arc::new(RecordingInterrupt::default());
    Rig {
        q: NetQueues::new(
            mem,
            rx,
            tx,
            Fake::default(),
            Arc::new(NetStats::default()),
            NeedsReset::new(irq.clone()),
        ),
        rxq,
        irq,
    }
}

fn frame(len: usize, seed: u8) -> Vec<u8> {
    let mut f: Vec<u8> = (0..len).map(|i| seed.wrapping_add(i as u8)).collect();
    f[..VNET_HDR_LEN].fill(0);
    f
}

#[test]
fn transmit_gathers_all_descriptors_of_a_chain() {
    // Use the rx TestQueue as the tx ring: same layout, so swap queues.
    let mut r = rig();
    std::mem::swap(&mut r.q.rx, &mut r.q.tx);
    let f = frame(1000, 3);
    r.rxq
        .ram
        .write_slice(&f[..12], GuestAddress(0x10000))
        .unwrap();
    r.rxq
        .ram
        .write_slice(&f[12..500], GuestAddress(0x20000))
        .unwrap();
    r.rxq
        .ram
        .write_slice(&f[500..], GuestAddress(0x30000))
        .unwrap();
    r.rxq.add_chain(&[
        (0x10000, 12, false),
        (0x20000, 488, false),
        (0x30000, 500, false),
    ]);
    assert!(r.q.process_tx());
    assert_eq!(r.q.backend.sent, vec![f]);
    assert_eq!(r.rxq.used(0).1, 0);
    assert_eq!(r.q.stats.tx_packets.load(Ordering::Relaxed), 1);
}

#[test]
fn receive_fills_a_buffer_and_sets_num_buffers() {
    let mut r = rig();
    let f = frame(600, 9);
    r.q.backend.inbound.push_back(f.clone());
    r.rxq.add_chain(&[(0x10000, 1526, true)]);
    assert!(r.q.process_rx());
    assert_eq!(r.rxq.used(0), (0, 600));
    let mut got = vec![0u8; 600];
    r.rxq
        .ram
        .read_slice(&mut got, GuestAddress(0x10000))
        .unwrap();
    assert_eq!(&got[10..12], &[1, 0], "num_buffers");
    assert_eq!(&got[12..], &f[12..]);
}

#[test]
fn frames_wait_for_buffers_in_order() {
    let mut r = rig();
    r.q.backend.inbound.push_back(frame(100, 1));
    r.q.backend.inbound.push_back(frame(200, 2));
    assert!(!r.q.process_rx(), "no buffers: nothing used");
    assert_eq!(r.q.pending, Some(100));
    r.rxq.add_chain(&[(0x10000, 1526, true)]);
    r.rxq.add_chain(&[(0x11000, 1526, true)]);
    assert!(r.q.process_rx());
    assert_eq!(r.rxq.used(0).1, 100);
    assert_eq!(r.rxq.used(1).1, 200);
    assert!(r.q.backend.inbound.is_empty());
}

#[test]
fn too_small_buffers_and_bad_chains_drop_the_frame_without_panicking() {
    let mut r = rig();
    r.q.backend.inbound.push_back(frame(1500, 1));
    r.q.backend.inbound.push_back(frame(100, 2));
    r.q.backend.inbound.push_back(frame(100, 3));
    r.rxq.add_chain(&[(0x10000, 64, true)]);
    r.rxq.add_chain(&[(0x11000, 1526, false)]);
    r.rxq.add_chain(&[(0xfff_0000, 1526, true)]);
    r.q.process_rx();
    assert_eq!(r.rxq.used_idx(), 3);
    assert_eq!(r.q.stats.dropped.load(Ordering::Relaxed), 3);
    assert_eq!(r.q.stats.rx_packets.load(Ordering::Relaxed), 0);
}

#[test]
fn transmit_rejects_writable_or_oversized_chains() {
    let mut r = rig();
    std::mem::swap(&mut r.q.rx, &mut r.q.tx);
    r.rxq.add_chain(&[(0x10000, 100, true)]);
    r.rxq.add_chain(&[(0x10000, 70000, false)]);
    r.rxq.add_chain(&[(0x10000, 8, false)]);
    r.q.process_tx();
    assert!(r.q.backend.sent.is_empty());
    assert_eq!(r.q.stats.malformed.load(Ordering::Relaxed), 3);
    assert_eq!(r.rxq.used_idx(), 3);
}

#[test]
fn config_space_has_mac_and_link_up() {
    let c = config_bytes(&[0x52, 0x54, 0, 1, 2, 3]);
    assert_eq!(c, [0x52, 0x54, 0, 1, 2, 3, 1, 0]);
}

/// A raw descriptor: address, length, flags, next.
type Desc = (u64, u32, u16, u16);
const F_NEXT: u16 = 1;
const F_WRITE: u16 = 2;
const F_INDIRECT: u16 = 4;

#[test]
fn indirect_tables_carry_frames_and_malformed_ones_are_refused() {
    assert_ne!(AVAIL_FEATURES & features::INDIRECT_DESC, 0);
    let mut r = rig();
    std::mem::swap(&mut r.q.rx, &mut r.q.tx);
    let f = frame(500, 7);
    r.rxq
        .ram
        .write_slice(&f[..12], GuestAddress(0x10000))
        .unwrap();
    r.rxq
        .ram
        .write_slice(&f[12..], GuestAddress(0x20000))
        .unwrap();
    r.rxq
        .write_table(0x40000, &[(0x10000, 12, F_NEXT, 1), (0x20000, 488, 0, 0)]);
    r.rxq.write_desc(0, 0x40000, 32, F_INDIRECT, 0);
    r.rxq.publish(0);
    let cases: [(u64, u32, &[Desc]); 4] = [
        (0x41100, 32, &[(0x40000, 32, F_INDIRECT, 0)]),
        (0x41200, 0x10_0000, &[]),
        (
            0x41300,
            24,
            &[(0x10000, 12, F_NEXT, 1), (0x20000, 488, 0, 0)],
        ),
        (0xfff_0000, 32, &[]),
    ];
    for (i, (at, len, descs)) in cases.iter().enumerate() {
        r.rxq.write_table(*at, descs);
        r.rxq.write_desc(1 + i as u16, *at, *len, F_INDIRECT, 0);
        r.rxq.publish(1 + i as u16);
    }
    // A loop inside a table ends after its size; the frame goes out.
    r.rxq.write_table(
        0x41400,
        &[(0x10000, 12, F_NEXT, 1), (0x20000, 488, F_NEXT, 0)],
    );
    r.rxq.write_desc(5, 0x41400, 32, F_INDIRECT, 0);
    r.rxq.publish(5);
    r.q.process_tx();
    assert_eq!(r.rxq.used_idx(), 6, "every chain returned");
    assert_eq!(r.q.backend.sent, vec![f.clone(), f]);
    assert_eq!(r.q.stats.malformed.load(Ordering::Relaxed), 4);
    // Receive into an indirect table; a nested one drops the frame.
    let mut r = rig();
    r.q.backend.inbound.push_back(frame(300, 1));
    r.q.backend.inbound.push_back(frame(300, 2));
    r.rxq.write_table(0x40000, &[(0x10000, 1526, F_WRITE, 0)]);
    r.rxq.write_desc(0, 0x40000, 16, F_INDIRECT, 0);
    r.rxq.publish(0);
    r.rxq.write_table(0x40100, &[(0x40000, 16, F_INDIRECT, 0)]);
    r.rxq.write_desc(1, 0x40100, 16, F_INDIRECT, 0);
    r.rxq.publish(1);
    r.q.process_rx();
    assert_eq!(r.rxq.used(0), (0, 300));
    assert_eq!(r.rxq.used(1), (1, 0));
    assert_eq!(r.q.stats.dropped.load(Ordering::Relaxed), 1);
}

/// Runs `f` on another thread and waits (bounded) for it to return, so a
/// consumer that spins fails the test instead of hanging it.
fn returns<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    rx.recv_timeout(std::time::Duration::from_secs(10))
        .expect("the queue consumer did not return: it spins on the broken ring")
}

#[test]
fn an_avail_index_far_ahead_stops_both_queues_without_spinning() {
    let mut r = rig();
    std::mem::swap(&mut r.q.rx, &mut r.q.tx);
    // TX: the driver claims 1000 new chains on a 16-entry ring.
    r.rxq.set_avail_idx(1000);
    let Rig { rxq, q, irq } = r;
    let mut q = returns(move || {
        let mut q = q;
        assert!(!q.process_tx());
        q
    });
    assert!(q.tx_health.is_broken());
    assert!(q.needs_reset.is_raised());
    assert_eq!(irq.config_changes(), 1);
    assert_eq!(q.stats.broken_rings.load(Ordering::Relaxed), 1);
    // Not served any more, even once the index looks sane again.
    let mut rxq = rxq;
    rxq.set_avail_idx(0);
    rxq.add_chain(&[(0x10000, 100, false)]);
    assert!(!q.process_tx());
    assert_eq!(rxq.used_idx(), 0);
    assert!(q.backend.sent.is_empty());
    // RX: a frame waits, and the ring is broken too (index behind the device).
    std::mem::swap(&mut q.rx, &mut q.tx);
    let mut q = NetQueues::new(
        q.mem.clone(),
        rxq.queue(),
        q.tx,
        Fake::default(),
        q.stats.clone(),
        q.needs_reset.clone(),
    );
    q.backend.inbound.push_back(frame(100, 1));
    rxq.set_avail_idx(0xffff);
    let q = returns(move || {
        let mut q = q;
        assert!(!q.process_rx());
        q
    });
    assert!(q.rx_health.is_broken());
    assert_eq!(q.pending, Some(100), "the frame stays with the device");
    assert_eq!(q.stats.broken_rings.load(Ordering::Relaxed), 2);
    assert_eq!(irq.config_changes(), 1, "one request for a reset");
}

/// A port whose fd is an eventfd: frames come from and go to shared lists.
#[derive(Clone)]
struct FakePort {
    evt: Arc<EventFd>,
    sent: Arc<std::sync::Mutex<Vec<Vec<u8>>>>,
}

impl NetBackend for FakePort {
    fn read_frame(&mut self, _buf: &mut [u8]) -> io::Result<usize> {
        Err(io::ErrorKind::WouldBlock.into())
    }
    fn write_frame(&mut self, frame: &[u8]) -> io::Result<()> {
        self.sent.lock().unwrap().push(frame.to_vec());
        Ok(())
    }
}

impl AsRawFd for FakePort {
    fn as_raw_fd(&self) -> std::os::unix::io::RawFd {
        self.evt.as_raw_fd()
    }
}

impl NetPort for FakePort {
    fn clone_port(&self) -> io::Result<Self> {
        Ok(self.clone())
    }
}

/// The device as the transport drives it: `tq` is the transmit ring, the
/// receive ring an empty one beside it. Returns the kick eventfds.
fn activate(
    dev: &mut VirtioNet<FakePort>,
    tq: &TestQueue,
    irq: &Arc<RecordingInterrupt>,
) -> (NeedsReset, EventFd, EventFd) {
    let mut rx = tq.queue();
    rx.set_avail_ring_address(Some(0x5000), Some(0));
    rx.set_used_ring_address(Some(0x6000), Some(0));
    let rx_evt = EventFd::new(libc::EFD_NONBLOCK).unwrap();
    let tx_evt = EventFd::new(libc::EFD_NONBLOCK).unwrap();
    let needs_reset = NeedsReset::new(irq.clone());
    dev.activate(ActivateContext {
        mem: tq.memory(),
        interrupt: irq.clone(),
        queues: vec![(RX, rx), (TX, tq.queue())],
        queue_evts: vec![rx_evt.try_clone().unwrap(), tx_evt.try_clone().unwrap()],
        acked_features: features::VERSION_1,
        needs_reset: needs_reset.clone(),
    })
    .unwrap();
    (needs_reset, rx_evt, tx_evt)
}

#[test]
fn a_broken_tx_ring_idles_the_worker_and_a_reset_brings_the_device_back() {
    use crate::virtio::testing::{assert_idle, is_pending, wait_for, LeakOnPanic};
    let port = FakePort {
        evt: Arc::new(EventFd::new(libc::EFD_NONBLOCK).unwrap()),
        sent: Default::default(),
    };
    let mut dev = LeakOnPanic::new(VirtioNet::on_port(port.clone(), [0x52, 0x54, 0, 0, 0, 1]));
    let irq = Arc::new(RecordingInterrupt::default());
    let mut tq = TestQueue::new(16);
    let (needs_reset, _rx_evt, tx_evt) = activate(&mut dev, &tq, &irq);
    let tid = dev.worker.as_ref().unwrap().tid();
    tq.set_avail_idx(0x8000);
    tx_evt.write(1).unwrap();
    wait_for("DEVICE_NEEDS_RESET", || needs_reset.is_raised());
    // A second kick is taken by the event loop (it is not stuck in the
    // first), and the thread then blocks.
    tx_evt.write(1).unwrap();
    wait_for("the second kick is consumed", || !is_pending(&tx_evt));
    assert_idle(tid, 20);
    assert_eq!(irq.config_changes(), 1);
    assert_eq!(dev.stats().broken_rings.load(Ordering::Relaxed), 1);
    // The driver resets the device and sets the rings up again.
    dev.reset();
    tq.reinit();
    let (needs_reset, _rx_evt, tx_evt) = activate(&mut dev, &tq, &irq);
    let f = frame(200, 7);
    tq.ram.write_slice(&f, GuestAddress(0x10000)).unwrap();
    tq.add_chain(&[(0x10000, 200, false)]);
    tx_evt.write(1).unwrap();
    wait_for("the frame is sent", || tq.used_idx() == 1);
    assert_eq!(*port.sent.lock().unwrap(), vec![f]);
    assert!(!needs_reset.is_raised());
    assert_eq!(dev.stats().broken_rings.load(Ordering::Relaxed), 1);
    dev.reset();
}
