use std::io::Write;
use std::sync::Mutex;

use super::*;
use crate::virtio::testing::TestQueue;
use crate::virtio::ActivateContext;

#[derive(Default)]
struct Irq(Mutex<Vec<u16>>);
impl VirtioInterrupt for Irq {
    fn signal_used_queue(&self, q: u16) -> io::Result<()> {
        self.0.lock().unwrap().push(q);
        Ok(())
    }
    fn signal_config_change(&self) -> io::Result<()> {
        Ok(())
    }
}

fn image(len: usize) -> tempfile::NamedTempFile {
    let mut f = tempfile::NamedTempFile::new().unwrap();
    let data: Vec<u8> = (0..len).map(|i| (i / 512) as u8 ^ (i as u8)).collect();
    f.write_all(&data).unwrap();
    f
}

struct Rig {
    tq: TestQueue,
    w: BlockWorker,
    _img: tempfile::NamedTempFile,
}

fn rig(readonly: bool) -> Rig {
    let img = image(64 * 1024);
    let dev = VirtioBlock::new(img.path(), readonly, "disk-serial-0123456789abcdef").unwrap();
    let tq = TestQueue::new(16);
    let w = BlockWorker {
        mem: tq.memory(),
        queue: tq.queue(),
        evt: EventFd::new(0).unwrap(),
        disk: Disk {
            file: dev.file.try_clone().unwrap(),
            capacity: dev.capacity,
            readonly,
            id: dev.id,
            buf: Vec::new(),
        },
        interrupt: Arc::new(Irq::default()),
        index: 0,
        stats: dev.stats(),
        segs: Vec::new(),
        health: QueueHealth::new("test"),
        needs_reset: NeedsReset::new(Arc::new(Irq::default())),
    };
    Rig { tq, w, _img: img }
}

fn header(tq: &TestQueue, at: u64, ty: u32, sector: u64) {
    tq.ram.write_obj(ty, GuestAddress(at)).unwrap();
    tq.ram.write_obj(0u32, GuestAddress(at + 4)).unwrap();
    tq.ram.write_obj(sector, GuestAddress(at + 8)).unwrap();
}

fn status_at(tq: &TestQueue, at: u64) -> u8 {
    tq.ram.read_obj(GuestAddress(at)).unwrap()
}

#[test]
fn read_spans_descriptors_and_returns_data() {
    let mut r = rig(false);
    header(&r.tq, 0x10000, req::IN, 2);
    r.tq.ram.write_obj(0xffu8, GuestAddress(0x30000)).unwrap();
    let head = r.tq.add_chain(&[
        (0x10000, 16, false),
        (0x20000, 512, true),
        (0x21000, 512, true),
        (0x30000, 1, true),
    ]);
    assert!(r.w.process());
    assert_eq!(r.tq.used_idx(), 1);
    assert_eq!(r.tq.used(0), (head, 1025));
    assert_eq!(status_at(&r.tq, 0x30000), status::OK);
    let mut got = [0u8; 4];
    r.tq.ram
        .read_slice(&mut got, GuestAddress(0x21000))
        .unwrap();
    let off = 3 * 512usize;
    let want: Vec<u8> = (off..off + 4)
        .map(|i| (i / 512) as u8 ^ (i as u8))
        .collect();
    assert_eq!(&got[..], &want[..]);
    assert_eq!(r.w.stats.read_bytes.load(Ordering::Relaxed), 1024);
}

#[test]
fn write_then_read_back_and_flush() {
    let mut r = rig(false);
    r.tq.ram
        .write_slice(&[0xa5; 512], GuestAddress(0x20000))
        .unwrap();
    header(&r.tq, 0x10000, req::OUT, 5);
    r.tq.add_chain(&[
        (0x10000, 16, false),
        (0x20000, 512, false),
        (0x30000, 1, true),
    ]);
    header(&r.tq, 0x11000, req::FLUSH, 0);
    r.tq.add_chain(&[(0x11000, 16, false), (0x30001, 1, true)]);
    r.w.process();
    assert_eq!(status_at(&r.tq, 0x30000), status::OK);
    assert_eq!(status_at(&r.tq, 0x30001), status::OK);
    let mut back = [0u8; 512];
    r.w.disk.file.read_exact_at(&mut back, 5 * 512).unwrap();
    assert_eq!(back, [0xa5; 512]);
}

#[test]
fn get_id_and_unsupported_types() {
    let mut r = rig(false);
    header(&r.tq, 0x10000, req::GET_ID, 0);
    r.tq.add_chain(&[
        (0x10000, 16, false),
        (0x20000, 20, true),
        (0x30000, 1, true),
    ]);
    header(&r.tq, 0x11000, 77, 0);
    r.tq.add_chain(&[(0x11000, 16, false), (0x30001, 1, true)]);
    r.w.process();
    let mut id = [0u8; 20];
    r.tq.ram.read_slice(&mut id, GuestAddress(0x20000)).unwrap();
    assert_eq!(&id, b"disk-serial-01234567");
    assert_eq!(r.tq.used(0).1, 21);
    assert_eq!(status_at(&r.tq, 0x30001), status::UNSUPP);
}

#[test]
fn read_only_and_out_of_range_requests_fail_with_ioerr() {
    let mut r = rig(true);
    r.tq.ram
        .write_slice(&[0x5a; 512], GuestAddress(0x20000))
        .unwrap();
    header(&r.tq, 0x10000, req::OUT, 0);
    r.tq.add_chain(&[
        (0x10000, 16, false),
        (0x20000, 512, false),
        (0x30000, 1, true),
    ]);
    header(&r.tq, 0x11000, req::IN, 127);
    r.tq.add_chain(&[
        (0x11000, 16, false),
        (0x21000, 1024, true),
        (0x30001, 1, true),
    ]);
    header(&r.tq, 0x12000, req::IN, u64::MAX / 2);
    r.tq.add_chain(&[
        (0x12000, 16, false),
        (0x22000, 512, true),
        (0x30002, 1, true),
    ]);
    r.w.process();
    assert_eq!(status_at(&r.tq, 0x30000), status::IOERR);
    assert_eq!(status_at(&r.tq, 0x30001), status::IOERR);
    assert_eq!(status_at(&r.tq, 0x30002), status::IOERR);
    let mut first = [0u8; 512];
    r.w.disk.file.read_exact_at(&mut first, 0).unwrap();
    assert_ne!(first, [0x5a; 512], "read-only image unchanged");
    assert_eq!(r.w.stats.errors.load(Ordering::Relaxed), 3);
}

#[test]
fn malformed_chains_are_consumed_without_panicking() {
    let mut r = rig(false);
    // No writable status descriptor.
    header(&r.tq, 0x10000, req::IN, 0);
    r.tq.add_chain(&[(0x10000, 16, false), (0x20000, 512, false)]);
    // Header too short; status still answerable.
    r.tq.add_chain(&[(0x10000, 4, false), (0x30000, 1, true)]);
    // Data direction wrong for IN.
    r.tq.add_chain(&[
        (0x10000, 16, false),
        (0x20000, 512, false),
        (0x30001, 1, true),
    ]);
    // Buffer outside guest memory.
    header(&r.tq, 0x11000, req::IN, 0);
    r.tq.add_chain(&[
        (0x11000, 16, false),
        (0xfff_0000, 512, true),
        (0x30002, 1, true),
    ]);
    // A single descriptor.
    r.tq.add_chain(&[(0x10000, 16, true)]);
    r.w.process();
    assert_eq!(r.tq.used_idx(), 5);
    assert_eq!(status_at(&r.tq, 0x30000), status::IOERR);
    assert_eq!(status_at(&r.tq, 0x30001), status::IOERR);
    assert_eq!(status_at(&r.tq, 0x30002), status::IOERR);
    assert_eq!(r.w.stats.malformed.load(Ordering::Relaxed), 2);
}

#[test]
fn config_and_features() {
    let img = image(4096 + 100);
    let d = VirtioBlock::new(img.path(), true, "x").unwrap();
    let mut cap = [0u8; 8];
    d.read_config(0, &mut cap);
    assert_eq!(u64::from_le_bytes(cap), 8);
    let mut bs = [0u8; 4];
    d.read_config(20, &mut bs);
    assert_eq!(u32::from_le_bytes(bs), 512);
    let mut beyond = [0xffu8; 4];
    d.read_config(100, &mut beyond);
    assert_eq!(beyond, [0; 4]);
    assert_ne!(d.avail_features() & F_RO, 0);
    assert!(VirtioBlock::new(Path::new("/nonexistent/img"), false, "x")
        .err()
        .unwrap()
        .to_string()
        .contains("/nonexistent/img"));
}

/// A raw descriptor: address, length, flags, next.
type Desc = (u64, u32, u16, u16);
const F_NEXT: u16 = 1;
const F_WRITE: u16 = 2;
const F_INDIRECT: u16 = 4;

#[test]
fn indirect_tables_are_followed_and_malformed_ones_refused() {
    let img = image(4096);
    let d = VirtioBlock::new(img.path(), false, "x").unwrap();
    assert_ne!(d.avail_features() & features::INDIRECT_DESC, 0);
    let mut r = rig(false);
    header(&r.tq, 0x10000, req::IN, 2);
    let hdr = (0x10000, 16, F_NEXT, 1);
    let data = (0x20000, 512, F_WRITE | F_NEXT, 2);
    let st = (0x30000, 1, F_WRITE, 0);
    r.tq.write_table(0x40000, &[hdr, data, st]);
    r.tq.write_desc(0, 0x40000, 48, F_INDIRECT, 0);
    r.tq.publish(0);
    assert!(r.w.process());
    assert_eq!(r.tq.used(0), (0, 513));
    assert_eq!(status_at(&r.tq, 0x30000), status::OK);
    let mut got = [0u8; 512];
    r.tq.ram
        .read_slice(&mut got, GuestAddress(0x20000))
        .unwrap();
    let mut want = [0u8; 512];
    r.w.disk.file.read_exact_at(&mut want, 1024).unwrap();
    assert_eq!(got, want);
    // Malformed tables: every chain is returned, none answered.
    let cases: [(u64, u32, &[Desc]); 5] = [
        (
            0x41000,
            32,
            &[(0x10000, 16, F_NEXT, 1), (0x20000, 512, F_NEXT, 0)],
        ),
        (0x41100, 32, &[(0x40000, 48, F_INDIRECT, 0), st]),
        (0x41200, 0x10_0000, &[]),
        (0x41300, 40, &[hdr, data, st]),
        (0xfff_0000, 48, &[]),
    ];
    for (i, (at, len, descs)) in cases.iter().enumerate() {
        r.tq.write_table(*at, descs);
        r.tq.write_desc(1 + i as u16, *at, *len, F_INDIRECT, 0);
        r.tq.publish(1 + i as u16);
    }
    r.w.process();
    assert_eq!(r.tq.used_idx(), 6);
    for i in 1..6 {
        assert_eq!(r.tq.used(i), (i, 0), "case {i}");
    }
    assert_eq!(r.w.stats.malformed.load(Ordering::Relaxed), 5);
}

#[test]
fn a_broken_ring_idles_the_worker_and_a_reset_brings_the_disk_back() {
    use crate::virtio::testing::{
        assert_idle, is_pending, wait_for, LeakOnPanic, RecordingInterrupt,
    };
    let img = image(64 * 1024);
    let mut dev = LeakOnPanic::new(VirtioBlock::new(img.path(), false, "x").unwrap());
    let irq = Arc::new(RecordingInterrupt::default());
    let mut tq = TestQueue::new(16);
    let activate = |dev: &mut VirtioBlock, tq: &TestQueue| {
        let evt = EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let needs_reset = NeedsReset::new(irq.clone());
        dev.activate(ActivateContext {
            mem: tq.memory(),
            interrupt: irq.clone(),
            queues: vec![(0, tq.queue())],
            queue_evts: vec![evt.try_clone().unwrap()],
            acked_features: features::VERSION_1,
            needs_reset: needs_reset.clone(),
        })
        .unwrap();
        (needs_reset, evt)
    };
    let (needs_reset, kick) = activate(&mut dev, &tq);
    let tid = dev.worker.as_ref().unwrap().tid();
    // One good request, then an index 300 entries ahead of the device.
    header(&tq, 0x10000, req::IN, 0);
    tq.add_chain(&[
        (0x10000, 16, false),
        (0x20000, 512, true),
        (0x30000, 1, true),
    ]);
    kick.write(1).unwrap();
    wait_for("the good request is answered", || tq.used_idx() == 1);
    tq.set_avail_idx(301);
    kick.write(1).unwrap();
    wait_for("DEVICE_NEEDS_RESET", || needs_reset.is_raised());
    kick.write(1).unwrap();
    wait_for("the second kick is consumed", || !is_pending(&kick));
    assert_idle(tid, 20);
    assert_eq!(irq.config_changes(), 1);
    assert_eq!(dev.stats().broken_rings.load(Ordering::Relaxed), 1);
    assert_eq!(dev.stats().requests.load(Ordering::Relaxed), 1);
    // Reset, rings set up again: the disk serves requests.
    dev.reset();
    tq.reinit();
    let (needs_reset, kick) = activate(&mut dev, &tq);
    header(&tq, 0x10000, req::GET_ID, 0);
    tq.add_chain(&[
        (0x10000, 16, false),
        (0x20000, 20, true),
        (0x30001, 1, true),
    ]);
    kick.write(1).unwrap();
    wait_for("the request is answered", || tq.used_idx() == 1);
    assert_eq!(status_at(&tq, 0x30001), status::OK);
    assert!(!needs_reset.is_raised());
    dev.reset();
}
