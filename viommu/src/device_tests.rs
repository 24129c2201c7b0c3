use super::*;
use crate::tables::Tables;
use devices::dma::DmaIotlb;
use devices::virtio::testing::{NoInterrupt, TestQueue};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;
use vm_memory::Permissions;

fn state() -> Arc<IommuState> {
    let mut t = Tables::new(crate::tables::Limits::default(), None);
    t.add_endpoint(8, None, false);
    IommuState::new(t).unwrap()
}

/// Writes a request (head + body) at 0x10000 and queues it with a
/// writable area of `wlen` bytes at 0x20000; returns (status, used len).
fn send(tq: &mut TestQueue, w: &mut IommuWorker, req: &[u8], wlen: u32) -> (u8, u32) {
    tq.ram.write_slice(req, GuestAddress(0x10000)).unwrap();
    tq.add_chain(&[(0x10000, req.len() as u32, false), (0x20000, wlen, true)]);
    let before = tq.used_idx();
    w.process_requests();
    assert_eq!(tq.used_idx(), before.wrapping_add(1));
    let (_, len) = tq.used(before);
    let st: u8 = tq
        .ram
        .read_obj(GuestAddress(0x20000 + u64::from(wlen) - 4))
        .unwrap();
    (st, len)
}

fn attach(domain: u32, ep: u32, flags: u32) -> Vec<u8> {
    let mut r = vec![p::req::ATTACH, 0, 0, 0];
    r.extend(domain.to_le_bytes());
    r.extend(ep.to_le_bytes());
    r.extend(flags.to_le_bytes());
    r.extend([0u8; 4]);
    r
}

fn map(domain: u32, start: u64, end: u64, phys: u64, flags: u32) -> Vec<u8> {
    let mut r = vec![p::req::MAP, 0, 0, 0];
    r.extend(domain.to_le_bytes());
    r.extend(start.to_le_bytes());
    r.extend(end.to_le_bytes());
    r.extend(phys.to_le_bytes());
    r.extend(flags.to_le_bytes());
    r
}

fn worker(s: &Arc<IommuState>, tq: &TestQueue) -> IommuWorker {
    IommuWorker::for_test(s.clone(), tq.memory(), tq.queue(), Arc::new(NoInterrupt)).unwrap()
}

#[test]
fn requests_return_the_spec_statuses() {
    let s = state();
    let mut tq = TestQueue::new(16);
    let mut w = worker(&s, &tq);
    assert_eq!(
        send(&mut tq, &mut w, &attach(1, 8, 0), 4),
        (p::status::OK, 4)
    );
    assert_eq!(
        send(&mut tq, &mut w, &attach(1, 9, 0), 4).0,
        p::status::NOENT
    );
    assert_eq!(
        send(&mut tq, &mut w, &map(1, 0x1000, 0x1fff, 0x5000, 3), 4).0,
        p::status::OK
    );
    assert_eq!(
        send(&mut tq, &mut w, &map(1, 0x1000, 0x1fff, 0x5000, 3), 4).0,
        p::status::INVAL
    );
    // Unknown type, and no type at all: returned unwritten, used length 0.
    tq.ram.write_obj(0xffu8, GuestAddress(0x20000)).unwrap();
    assert_eq!(send(&mut tq, &mut w, &[9, 0, 0, 0, 1, 2, 3], 4), (0xff, 0));
    assert_eq!(send(&mut tq, &mut w, &[p::req::MAP, 0], 4), (0xff, 0));
    // Truncated body (the tail is found): INVAL.
    assert_eq!(
        send(&mut tq, &mut w, &map(1, 0, 0xfff, 0, 3)[..20], 4),
        (p::status::INVAL, 4)
    );
    let mut probe = vec![p::req::PROBE, 0, 0, 0];
    probe.extend(8u32.to_le_bytes());
    probe.extend([0u8; 64]);
    let (st, len) = send(&mut tq, &mut w, &probe, PROBE_SIZE + 4);
    assert_eq!((st, len), (p::status::OK, PROBE_SIZE + 4));
    let prop: [u8; 4] = tq.ram.read_obj(GuestAddress(0x20000)).unwrap();
    assert_eq!(prop, [1, 0, 20, 0], "RESV_MEM property");
    let start: u64 = tq.ram.read_obj(GuestAddress(0x20008)).unwrap();
    assert_eq!(start, 0xfee0_0000);
    assert_eq!(
        send(&mut tq, &mut w, &probe, 64).0,
        p::status::INVAL,
        "probe buffer too small"
    );
    assert_eq!(s.stats.requests[2].load(Ordering::Relaxed), 2);
    assert_eq!(s.stats.failed[2].load(Ordering::Relaxed), 1);
    assert_eq!(s.stats.pages_mapped.load(Ordering::Relaxed), 1);
}

#[test]
fn chains_without_room_for_a_status_are_returned_empty() {
    let s = state();
    let mut tq = TestQueue::new(16);
    let mut w = worker(&s, &tq);
    tq.add_chain(&[(0x10000, 20, false)]);
    tq.add_chain(&[(0x10000, 20, false), (0x20000, 2, true)]);
    tq.add_chain(&[(0x10000, 20, false), (0xfff_0000, 4, true)]);
    w.process_requests();
    assert_eq!(tq.used_idx(), 3);
    assert_eq!(tq.used(0).1, 0);
    assert_eq!(tq.used(1).1, 0);
    assert_eq!(tq.used(2).1, 0);
    // The third has room but an unknown (zero) type: returned unwritten.
    assert_eq!(s.stats.malformed.load(Ordering::Relaxed), 3);
}

#[test]
fn unreadable_request_gets_fault_status() {
    let s = state();
    let mut tq = TestQueue::new(16);
    let mut w = worker(&s, &tq);
    tq.add_chain(&[(0xfff_0000, 20, false), (0x20000, 4, true)]);
    w.process_requests();
    let st: u8 = tq.ram.read_obj(GuestAddress(0x20000)).unwrap();
    assert_eq!(st, p::status::FAULT);
}

#[test]
fn emulated_dma_follows_the_tables_and_faults_become_events() {
    let s = state();
    let tq = TestQueue::new(16);
    let tlb = DmaIotlb::new(s.endpoint(8));
    s.tables
        .write()
        .unwrap()
        .add_endpoint(8, Some(tlb.clone()), false);
    let dev_mem = tlb.memory(tq.ram.clone(), true);
    {
        let mut t = s.tables.write().unwrap();
        t.set_bypass(false);
        assert_eq!(t.attach(1, 8, 0).status, p::status::OK);
        assert_eq!(
            t.map(1, 0x4000_0000, 0x4000_0fff, 0x30000, p::MAP_F_READ)
                .status,
            p::status::OK
        );
    }
    tq.ram.write_obj(0x77u8, GuestAddress(0x30010)).unwrap();
    assert_eq!(
        dev_mem.read_obj::<u8>(GuestAddress(0x4000_0010)).unwrap(),
        0x77
    );
    // Read-only mapping: a write touches nothing and faults.
    assert!(dev_mem.write_obj(1u8, GuestAddress(0x4000_0010)).is_err());
    assert_eq!(tq.ram.read_obj::<u8>(GuestAddress(0x30010)).unwrap(), 0x77);
    // After UNMAP the cached translation is gone.
    assert_eq!(
        s.tables
            .write()
            .unwrap()
            .unmap(1, 0x4000_0000, 0x4000_0fff)
            .status,
        p::status::OK
    );
    assert!(dev_mem.read_obj::<u8>(GuestAddress(0x4000_0010)).is_err());
    assert_eq!(s.stats.faults.load(Ordering::Relaxed), 2);
    // Deliver the faults on an event queue.
    let mut evq = TestQueue::new(8);
    evq.add_chain(&[(0x40000, 24, true)]);
    let mut w = worker(&s, &tq);
    w.event = Some((evq.queue(), EventFd::new(0).unwrap()));
    w.mem = evq.ram.clone();
    assert!(w.deliver_faults());
    assert_eq!(evq.used(0).1, 24);
    let ev: [u8; 24] = evq.ram.read_obj(GuestAddress(0x40000)).unwrap();
    assert_eq!(ev[0], p::FAULT_R_MAPPING);
    assert_eq!(
        u32::from_le_bytes([ev[4], ev[5], ev[6], ev[7]]),
        p::FAULT_F_WRITE | p::FAULT_F_ADDRESS
    );
    assert_eq!(u32::from_le_bytes([ev[8], ev[9], ev[10], ev[11]]), 8);
    assert_eq!(s.stats.fault_events.load(Ordering::Relaxed), 1);
}

#[test]
fn config_space_and_bypass() {
    let s = state();
    let mut d = VirtioIommu::new(s.clone());
    let mut c = [0u8; 4];
    d.read_config(32, &mut c);
    assert_eq!(u32::from_le_bytes(c), PROBE_SIZE);
    let mut b = [0u8; 1];
    d.read_config(36, &mut b);
    assert_eq!(b[0], 1);
    d.write_config(36, &[0]);
    d.read_config(36, &mut b);
    assert_eq!(b[0], 1, "bypass is read-only without BYPASS_CONFIG");
    d.set_acked_features(d.avail_features());
    d.write_config(36, &[0]);
    d.read_config(36, &mut b);
    assert_eq!(b[0], 0);
    assert_ne!(d.avail_features() & p::F_BYPASS_CONFIG, 0);
}

/// The request-queue handshake as the Linux driver drives it: queue a
/// batch, kick only when the device has not suppressed notifications
/// (VRING_USED_F_NO_NOTIFY clear), then spin until every request is used;
/// bursts alternate with idle gaps. A device thread serves the queue from
/// its eventfd (and, with `poll`, by polling after it), so a request added
/// while the device was busy or handing over from polling to notifications
/// and never re-checked would strand the "guest" and fail the test.
/// Returns (requests sent, kicks sent).
fn stress_handshake(poll: PollConfig, rounds: u32) -> (Arc<IommuState>, u64, u64) {
    use std::os::unix::io::AsRawFd;
    use std::time::Duration;

    let s = state();
    let mut tq = TestQueue::new(64);
    let mut w = worker(&s, &tq);
    w.poll = poll;
    let kick = w.req_evt.try_clone().unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let stopping = w.stopping.clone();
    let device = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                let mut pfd = libc::pollfd {
                    fd: w.req_evt.as_raw_fd(),
                    events: libc::POLLIN,
                    revents: 0,
                };
                // SAFETY: `pfd` is one valid pollfd that outlives the call.
                unsafe { libc::poll(&mut pfd, 1, 10) };
                if let Ok(n) = w.req_evt.read() {
                    w.state.stats.notifications.fetch_add(n, Ordering::Relaxed);
                    w.process_requests();
                    w.poll();
                }
            }
        })
    };
    let req = attach(1, 8, 0);
    let mut seed = 0x9e37_79b9_u32;
    let (mut kicks, mut sent) = (0u64, 0u64);
    let mut done = tq.used_idx();
    let mut pending = 0u16;
    for round in 0..rounds {
        seed ^= seed << 13;
        seed ^= seed >> 17;
        seed ^= seed << 5;
        let n = 1 + (seed % 4) as u16;
        for i in 0..n {
            let slot = u64::from((done.wrapping_add(pending + i)) % 16);
            let at = 0x10000 + slot * 0x100;
            tq.ram.write_slice(&req, GuestAddress(at)).unwrap();
            tq.add_chain(&[
                (at, req.len() as u32, false),
                (0x20000 + slot * 0x100, 4, true),
            ]);
        }
        pending += n;
        sent += u64::from(n);
        std::sync::atomic::fence(Ordering::SeqCst);
        let used_flags: u16 = tq.ram.read_obj(GuestAddress(0x2000)).unwrap();
        if used_flags & 1 == 0 {
            kick.write(1).unwrap();
            kicks += 1;
        }
        // Like the Linux driver, usually wait for everything queued; but
        // sometimes publish the next batch while the device is still busy
        // with this one, which only the re-check after re-enabling
        // notifications can catch.
        if seed & 0x30 != 0 || pending > 12 {
            let t0 = Instant::now();
            while tq.used_idx() != done.wrapping_add(pending) {
                assert!(
                    t0.elapsed() < Duration::from_secs(10),
                    "round {round}: {} of {pending} requests never completed",
                    done.wrapping_add(pending).wrapping_sub(tq.used_idx())
                );
                std::hint::spin_loop();
            }
            done = done.wrapping_add(pending);
            pending = 0;
        }
        // Idle gaps: some shorter and some longer than a poll budget.
        if seed.is_multiple_of(64) {
            std::thread::sleep(Duration::from_micros(200));
        } else if seed % 512 == 1 {
            std::thread::sleep(Duration::from_millis(12));
        }
    }
    let t0 = Instant::now();
    while tq.used_idx() != done.wrapping_add(pending) {
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "last requests never completed"
        );
        std::hint::spin_loop();
    }
    stop.store(true, Ordering::Relaxed);
    stopping.store(true, Ordering::Relaxed);
    device.join().unwrap();
    // Exactly once each: no request lost, none served twice.
    assert_eq!(s.stats.requests[0].load(Ordering::Relaxed), sent);
    assert_eq!(tq.used_idx(), done.wrapping_add(pending));
    assert!(kicks > 0 && kicks <= sent);
    (s, sent, kicks)
}

#[test]
fn notification_handshake_never_strands_a_request() {
    let (s, sent, _) = stress_handshake(PollConfig::default(), 20_000);
    assert_eq!(s.stats.poll.polled_requests.load(Ordering::Relaxed), 0);
    assert_eq!(s.stats.poll.sessions.load(Ordering::Relaxed), 0);
    assert!(sent > 20_000);
}

/// Adaptive polling with a budget shorter than some idle gaps: requests
/// are served by polling with few kicks, and every handover back to
/// notifications loses nothing.
#[test]
fn adaptive_polling_hands_over_without_losing_requests() {
    use crate::poll::PollMode;
    let poll = PollConfig {
        mode: PollMode::Adaptive,
        // Longer than the scheduler usually keeps this test's sender off
        // a loaded CI core (which looks like an idle gap to the poller),
        // shorter than the 12 ms gaps that must end a session.
        budget: std::time::Duration::from_millis(3),
        cpu: None,
    };
    let (s, sent, kicks) = stress_handshake(poll, 20_000);
    let p = &s.stats.poll;
    let polled = p.polled_requests.load(Ordering::Relaxed);
    let sessions = p.sessions.load(Ordering::Relaxed);
    assert!(sessions > 1, "budget never expired: {sessions} sessions");
    // How many requests the poll loop finds before the worker's own pass
    // does depends on scheduling (42% on a loaded 2-core CI machine with
    // a debug build, most of them unloaded): only a share far from zero
    // is asserted, and far fewer kicks than requests.
    assert!(polled > sent / 10, "{polled} of {sent} polled");
    assert!(kicks < sent / 2, "{kicks} kicks for {sent} requests");
    assert!(p.kicks_avoided.load(Ordering::Relaxed) > 0);
    assert!(p.cpu_ns.load(Ordering::Relaxed) > 0);
}

/// `always` polls until the device stops, and stopping ends the loop.
#[test]
fn always_polling_stops_on_request() {
    use crate::poll::PollMode;
    let poll = PollConfig {
        mode: PollMode::Always,
        ..PollConfig::default()
    };
    let (s, sent, kicks) = stress_handshake(poll, 2_000);
    assert_eq!(s.stats.poll.sessions.load(Ordering::Relaxed), 1);
    assert!(kicks <= 2, "{kicks} kicks for {sent} requests");
}

/// While the worker polls (its event loop does not run), a fault reported
/// by a device still reaches the event queue.
#[test]
fn faults_are_delivered_while_polling() {
    use crate::poll::PollMode;
    use crate::tables::FaultReason;
    use std::time::Duration;

    let s = state();
    let tq = TestQueue::new(16);
    let mut w = worker(&s, &tq);
    w.poll = PollConfig {
        mode: PollMode::Always,
        ..PollConfig::default()
    };
    // An 8-entry event queue at 0x80000 in the same RAM, one 24-byte
    // device-writable buffer at 0x90000 made available.
    let ram = &tq.ram;
    ram.write_obj(0x90000u64, GuestAddress(0x80000)).unwrap();
    ram.write_obj(24u32, GuestAddress(0x80008)).unwrap();
    ram.write_obj(2u16, GuestAddress(0x8000c)).unwrap(); // VRING_DESC_F_WRITE
    ram.write_obj(0u16, GuestAddress(0x81004)).unwrap(); // avail.ring[0]
    ram.write_obj(1u16, GuestAddress(0x81002)).unwrap(); // avail.idx
    let mut q = Queue::new(8).unwrap();
    q.set_size(8);
    q.set_desc_table_address(Some(0x80000), Some(0));
    q.set_avail_ring_address(Some(0x81000), Some(0));
    q.set_used_ring_address(Some(0x82000), Some(0));
    q.set_ready(true);
    w.event = Some((q, EventFd::new(libc::EFD_NONBLOCK).unwrap()));
    let stopping = w.stopping.clone();
    let poller = std::thread::spawn(move || {
        w.poll();
        w
    });
    let t0 = Instant::now();
    while s.stats.poll.sessions.load(Ordering::Relaxed) == 0 {
        assert!(
            t0.elapsed() < Duration::from_secs(5),
            "polling never started"
        );
        std::thread::yield_now();
    }
    s.report_fault(8, 0x1234_5000, Permissions::Write, FaultReason::Mapping);
    let used_idx = || ram.read_obj::<u16>(GuestAddress(0x82002)).unwrap();
    while used_idx() != 1 {
        assert!(
            t0.elapsed() < Duration::from_secs(5),
            "the fault never reached the event queue"
        );
        std::thread::yield_now();
    }
    stopping.store(true, Ordering::Relaxed);
    poller.join().unwrap();
    let ev: [u8; 24] = ram.read_obj(GuestAddress(0x90000)).unwrap();
    assert_eq!(ev[0], p::FAULT_R_MAPPING);
    assert_eq!(
        u64::from_le_bytes(ev[16..24].try_into().unwrap()),
        0x1234_5000
    );
    assert_eq!(s.stats.fault_events.load(Ordering::Relaxed), 1);
}

#[test]
fn a_failed_host_unmap_is_answered_ioerr_and_blocks_emulated_dma() {
    use crate::backend::{CallKind, FailingBackend};
    let b = Arc::new(FailingBackend::default());
    let mut t = Tables::new(crate::tables::Limits::default(), Some(b.clone()));
    t.set_bypass(false);
    t.add_endpoint(8, None, true);
    t.add_endpoint(16, None, false);
    let s = IommuState::new(t).unwrap();
    let mut tq = TestQueue::new(16);
    let mut w = worker(&s, &tq);
    for ep in [8, 16] {
        assert_eq!(send(&mut tq, &mut w, &attach(1, ep, 0), 4).0, p::status::OK);
    }
    let m = map(1, 0x10000, 0x10fff, 0x5000, 3);
    assert_eq!(send(&mut tq, &mut w, &m, 4).0, p::status::OK);
    let mut unmap = vec![p::req::UNMAP, 0, 0, 0];
    unmap.extend(1u32.to_le_bytes());
    unmap.extend(0x10000u64.to_le_bytes());
    unmap.extend(0x10fffu64.to_le_bytes());
    unmap.extend([0u8; 4]);
    b.fail_nth(CallKind::Unmap, 1);
    assert_eq!(send(&mut tq, &mut w, &unmap, 4).0, p::status::DEVERR);
    assert!(s
        .endpoint(16)
        .translate(0x10000, Permissions::Read)
        .is_none());
    assert!(b.sim.dma(0x10000, 4, Permissions::Read).is_some());
    let j = s.stats.to_json();
    assert_eq!(j["host_errors"]["unmap"], 1);
    assert_eq!(j["host_errors"]["fenced_domains"], 1);
    assert_eq!(j["host_errors"]["residue_bytes"], 0x1000);
    assert_eq!(j["failed"]["unmap"], 1);
    // The guest retries and succeeds: nothing is left in the host.
    assert_eq!(send(&mut tq, &mut w, &unmap, 4).0, p::status::OK);
    assert!(b.sim.is_empty());
}

fn unmap_req(domain: u32, start: u64, end: u64, reserved: [u8; 4]) -> Vec<u8> {
    let mut r = vec![p::req::UNMAP, 0, 0, 0];
    r.extend(domain.to_le_bytes());
    r.extend(start.to_le_bytes());
    r.extend(end.to_le_bytes());
    r.extend(reserved);
    r
}

#[test]
fn reserved_fields_and_the_msi_region_follow_the_spec() {
    let s = state();
    let mut tq = TestQueue::new(16);
    let mut w = worker(&s, &tq);
    // ATTACH with a non-zero reserved field: MUST be INVAL, not attached.
    let mut a = attach(1, 8, 0);
    a[19] = 1;
    assert_eq!(send(&mut tq, &mut w, &a, 4).0, p::status::INVAL);
    assert_eq!(s.tables.read().unwrap().domain_of(8), None);
    // The head's reserved bytes are ignored.
    let mut a = attach(1, 8, 0);
    a[1..4].copy_from_slice(&[0xff; 3]);
    assert_eq!(send(&mut tq, &mut w, &a, 4).0, p::status::OK);
    // MAP over the PROBE-reported MSI region (0xfee00000..=0xfeefffff):
    // rejected, partly or wholly.
    let m = map(1, 0xfed0_0000, 0xfee0_0fff, 0x10_0000, 3);
    assert_eq!(send(&mut tq, &mut w, &m, 4).0, p::status::INVAL);
    let m = map(1, 0xfeef_f000, 0xfeef_ffff, 0x10_0000, 3);
    assert_eq!(send(&mut tq, &mut w, &m, 4).0, p::status::INVAL);
    let m = map(1, 0xfef0_0000, 0xfef0_0fff, 0x10_0000, 3);
    assert_eq!(send(&mut tq, &mut w, &m, 4).0, p::status::OK, "just after");
    // UNMAP with a non-zero reserved field: INVAL, nothing unmapped.
    let u = unmap_req(1, 0xfef0_0000, 0xfef0_0fff, [0, 0, 1, 0]);
    assert_eq!(send(&mut tq, &mut w, &u, 4).0, p::status::INVAL);
    assert_eq!(s.tables.read().unwrap().mapped_bytes(), 0x1000);
    let u = unmap_req(1, 0xfef0_0000, 0xfef0_0fff, [0; 4]);
    assert_eq!(send(&mut tq, &mut w, &u, 4).0, p::status::OK);
    // DETACH and PROBE reserved fields are ignored (MUST).
    let mut probe = vec![p::req::PROBE, 0, 0, 0];
    probe.extend(8u32.to_le_bytes());
    probe.extend([0xa5u8; 64]);
    assert_eq!(
        send(&mut tq, &mut w, &probe, PROBE_SIZE + 4).0,
        p::status::OK
    );
    let mut d = vec![p::req::DETACH, 0, 0, 0];
    d.extend(1u32.to_le_bytes());
    d.extend(8u32.to_le_bytes());
    d.extend([0xffu8; 8]);
    assert_eq!(send(&mut tq, &mut w, &d, 4).0, p::status::OK);
    // DETACH from a domain that does not exist: INVAL (5.13.6.4).
    assert_eq!(send(&mut tq, &mut w, &d, 4).0, p::status::INVAL);
    assert_eq!(s.stats.malformed.load(Ordering::Relaxed), 2);
    assert_eq!(s.stats.failed[0].load(Ordering::Relaxed), 1);
}

const F_NEXT: u16 = 1;
const F_WRITE: u16 = 2;
const F_INDIRECT: u16 = 4;

/// A raw descriptor: address, length, flags, next.
type Desc = (u64, u32, u16, u16);

#[test]
fn indirect_descriptors_are_offered_and_followed() {
    let s = state();
    let d = VirtioIommu::new(s.clone());
    assert_ne!(d.avail_features() & features::INDIRECT_DESC, 0);
    let mut tq = TestQueue::new(16);
    let mut w = worker(&s, &tq);
    tq.ram
        .write_slice(&attach(1, 8, 0), GuestAddress(0x10000))
        .unwrap();
    let req = (0x10000, 20, F_NEXT, 1);
    let tail = (0x20000, 4, F_WRITE, 0);
    tq.write_table(0x30000, &[req, tail]);
    // The head points at the table (NEXT on it is ignored, as the spec
    // forbids it); a second chain uses a table at an unaligned address.
    tq.write_desc(0, 0x30000, 32, F_INDIRECT | F_NEXT, 5);
    tq.publish(0);
    tq.write_table(0x30104, &[req, tail]);
    tq.write_desc(1, 0x30104, 32, F_INDIRECT, 0);
    tq.publish(1);
    w.process_requests();
    assert_eq!(tq.used_idx(), 2);
    assert_eq!(tq.used(0), (0, 4));
    assert_eq!(tq.used(1), (1, 4));
    assert_eq!(s.stats.requests[0].load(Ordering::Relaxed), 2);
    assert_eq!(s.tables.read().unwrap().domain_of(8), Some(1));
    assert_eq!(s.stats.malformed.load(Ordering::Relaxed), 0);
}

#[test]
fn malformed_indirect_tables_are_returned_unwritten_and_counted() {
    let s = state();
    let mut tq = TestQueue::new(16);
    let mut w = worker(&s, &tq);
    tq.ram
        .write_slice(&attach(1, 8, 0), GuestAddress(0x10000))
        .unwrap();
    let tail = (0x20000, 4, F_WRITE, 0);
    let cases: [(u64, u32, &[Desc]); 6] = [
        // A loop inside the table: bounded by its size, no tail reached.
        (
            0x30000,
            32,
            &[(0x10000, 20, F_NEXT, 1), (0x10000, 20, F_NEXT, 0)],
        ),
        // A nested table: the chain ends there.
        (0x30100, 32, &[(0x30000, 32, F_INDIRECT, 0), tail]),
        // More than 65535 entries.
        (0x30200, 0x10_0000, &[]),
        // Length not a multiple of 16.
        (0x30300, 20, &[(0x10000, 20, F_NEXT, 1), tail]),
        // Outside guest memory.
        (0xfff_0000, 32, &[]),
        // A `next` beyond the table.
        (0x30400, 32, &[(0x10000, 20, F_NEXT, 7), tail]),
    ];
    tq.ram.write_obj(0x5au8, GuestAddress(0x20000)).unwrap();
    for (i, (at, len, descs)) in cases.iter().enumerate() {
        tq.write_table(*at, descs);
        tq.write_desc(i as u16, *at, *len, F_INDIRECT, 0);
        tq.publish(i as u16);
    }
    w.process_requests();
    assert_eq!(tq.used_idx(), cases.len() as u16, "every chain returned");
    for i in 0..cases.len() as u16 {
        assert_eq!(tq.used(i), (i, 0), "case {i}");
    }
    let st: u8 = tq.ram.read_obj(GuestAddress(0x20000)).unwrap();
    assert_eq!(st, 0x5a, "no status written");
    assert_eq!(
        s.stats.malformed.load(Ordering::Relaxed),
        cases.len() as u64
    );
    assert_eq!(s.tables.read().unwrap().domain_of(8), None);
    // The queue still works.
    assert_eq!(send(&mut tq, &mut w, &attach(1, 8, 0), 4).0, p::status::OK);
}
