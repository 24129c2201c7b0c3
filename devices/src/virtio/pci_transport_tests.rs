use std::sync::Mutex;

use vm_memory::{GuestAddress, GuestMemoryMmap};

use super::*;
use crate::pci::msix::tests::RecordingGroup;
use crate::virtio::ActivateError;

#[derive(Default)]
struct Log {
    activations: Vec<(Vec<u16>, u64)>,
    resets: usize,
    acked: u64,
}

struct FakeDevice {
    log: Arc<Mutex<Log>>,
    interrupt: Arc<Mutex<Option<Arc<dyn VirtioInterrupt>>>>,
    needs_reset: Arc<Mutex<Option<NeedsReset>>>,
}

impl VirtioDevice for FakeDevice {
    fn device_type(&self) -> u32 {
        super::super::device_type::NET
    }
    fn queue_max_sizes(&self) -> &[u16] {
        &[256, 128]
    }
    fn avail_features(&self) -> u64 {
        features::VERSION_1 | 1 << 5
    }
    fn set_acked_features(&mut self, f: u64) {
        self.log.lock().unwrap().acked = f;
    }
    fn read_config(&self, offset: u64, data: &mut [u8]) {
        for (i, b) in data.iter_mut().enumerate() {
            *b = (offset as u8).wrapping_add(i as u8);
        }
    }
    fn write_config(&mut self, _offset: u64, _data: &[u8]) {}
    fn activate(&mut self, ctx: ActivateContext) -> Result<(), ActivateError> {
        let idx = ctx.queues.iter().map(|(i, _)| *i).collect();
        self.log
            .lock()
            .unwrap()
            .activations
            .push((idx, ctx.acked_features));
        *self.interrupt.lock().unwrap() = Some(ctx.interrupt);
        *self.needs_reset.lock().unwrap() = Some(ctx.needs_reset);
        Ok(())
    }
    fn reset(&mut self) {
        self.log.lock().unwrap().resets += 1;
    }
}

struct Rig {
    dev: VirtioPciDevice,
    log: Arc<Mutex<Log>>,
    msi: Arc<RecordingGroup>,
    interrupt: Arc<Mutex<Option<Arc<dyn VirtioInterrupt>>>>,
    needs_reset: Arc<Mutex<Option<NeedsReset>>>,
}

fn rig() -> Rig {
    let ram = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 0x10_0000)]).unwrap();
    let mem = crate::dma::untranslated(ram);
    let log = Arc::new(Mutex::new(Log::default()));
    let interrupt = Arc::new(Mutex::new(None));
    let needs_reset = Arc::new(Mutex::new(None));
    let fake = FakeDevice {
        log: log.clone(),
        interrupt: interrupt.clone(),
        needs_reset: needs_reset.clone(),
    };
    let msi = RecordingGroup::new(3);
    let dev = VirtioPciDevice::new(Box::new(fake), mem, msi.clone(), 0x1_0000_0000).unwrap();
    Rig {
        dev,
        log,
        msi,
        interrupt,
        needs_reset,
    }
}

fn w(d: &mut VirtioPciDevice, off: u64, v: u64, len: usize) {
    d.write_bar(0, off, &v.to_le_bytes()[..len]);
}

fn r(d: &mut VirtioPciDevice, off: u64, len: usize) -> u64 {
    let mut b = [0u8; 8];
    d.read_bar(0, off, &mut b[..len]);
    u64::from_le_bytes(b)
}

/// The steps of Linux's virtio_pci_modern probe up to FEATURES_OK.
fn negotiate(d: &mut VirtioPciDevice, driver_features: u64) -> u8 {
    w(d, 0x14, 0, 1);
    w(d, 0x14, u64::from(status::ACKNOWLEDGE | status::DRIVER), 1);
    w(d, 0x00, 1, 4);
    let hi = r(d, 0x04, 4);
    w(d, 0x00, 0, 4);
    let lo = r(d, 0x04, 4);
    assert_eq!(hi << 32 | lo, features::VERSION_1 | 1 << 5);
    w(d, 0x08, 0, 4);
    w(d, 0x0c, driver_features & 0xffff_ffff, 4);
    w(d, 0x08, 1, 4);
    w(d, 0x0c, driver_features >> 32, 4);
    w(d, 0x14, 0xb, 1);
    r(d, 0x14, 1) as u8
}

fn setup_queue(d: &mut VirtioPciDevice, q: u64, base: u64, vector: u64) {
    w(d, 0x16, q, 2);
    assert_eq!(r(d, 0x1e, 2), q, "notify offset");
    w(d, 0x18, 64, 2);
    w(d, 0x1a, vector, 2);
    w(d, 0x20, base, 4);
    w(d, 0x24, 0, 4);
    w(d, 0x28, base + 0x1000, 4);
    w(d, 0x2c, 0, 4);
    w(d, 0x30, base + 0x2000, 4);
    w(d, 0x34, 0, 4);
    w(d, 0x1c, 1, 2);
}

#[test]
fn linux_style_init_activates_the_enabled_queues() {
    let mut rg = rig();
    let d = &mut rg.dev;
    assert_eq!(r(d, 0x12, 2), 2);
    let st = negotiate(d, features::VERSION_1 | 1 << 5);
    assert_ne!(st & status::FEATURES_OK, 0);
    assert_eq!(rg.log.lock().unwrap().acked, features::VERSION_1 | 1 << 5);
    w(d, 0x10, 0, 2);
    assert_eq!(r(d, 0x10, 2), 0);
    setup_queue(d, 0, 0x10000, 1);
    assert_eq!(r(d, 0x18, 2), 64);
    assert_eq!(r(d, 0x28, 4), 0x11000);
    assert_eq!(r(d, 0x1a, 2), 1);
    w(d, 0x14, 0xf, 1);
    let log = rg.log.lock().unwrap();
    assert_eq!(
        log.activations,
        vec![(vec![0], features::VERSION_1 | 1 << 5)]
    );
}

#[test]
fn features_without_version_1_or_not_offered_are_refused() {
    let mut rg = rig();
    let st = negotiate(&mut rg.dev, 1 << 5);
    assert_eq!(st & status::FEATURES_OK, 0);
    let st = negotiate(&mut rg.dev, features::VERSION_1 | 1 << 6);
    assert_eq!(st & status::FEATURES_OK, 0);
    w(&mut rg.dev, 0x14, 0xf, 1);
    assert!(rg.log.lock().unwrap().activations.is_empty());
}

#[test]
fn invalid_vectors_read_back_as_no_vector() {
    let mut rg = rig();
    let d = &mut rg.dev;
    w(d, 0x10, 3, 2);
    assert_eq!(r(d, 0x10, 2), u64::from(NO_VECTOR));
    w(d, 0x16, 7, 2);
    w(d, 0x1a, 0, 2);
    assert_eq!(r(d, 0x1a, 2), u64::from(NO_VECTOR));
    assert_eq!(r(d, 0x18, 2), 0, "absent queue has size 0");
}

#[test]
fn invalid_queue_layout_sets_needs_reset_instead_of_activating() {
    let mut rg = rig();
    let d = &mut rg.dev;
    negotiate(d, features::VERSION_1);
    setup_queue(d, 0, 0xff000, 0);
    w(d, 0x14, 0xf, 1);
    assert!(rg.log.lock().unwrap().activations.is_empty());
    assert_ne!(r(d, 0x14, 1) as u8 & status::NEEDS_RESET, 0);
}

#[test]
fn interrupts_set_isr_and_use_the_queue_vector() {
    let mut rg = rig();
    let d = &mut rg.dev;
    negotiate(d, features::VERSION_1);
    setup_queue(d, 0, 0x10000, 2);
    // Enable MSI-X and unmask vector 2.
    let cap = d.msix_cap / 4;
    d.write_config_register(cap, 3, &[0x80]);
    assert_eq!(d.read_config_register(cap) >> 16, 0x8002);
    w(d, 0x4000 + 2 * 16 + 8, 0x41, 4);
    w(d, 0x4000 + 2 * 16 + 12, 0, 4);
    w(d, 0x14, 0xf, 1);
    let irq = rg.interrupt.lock().unwrap().clone().unwrap();
    irq.signal_used_queue(0).unwrap();
    assert_eq!(*rg.msi.fired.lock().unwrap(), vec![2]);
    assert_eq!(r(d, 0x1000, 1), 1);
    assert_eq!(r(d, 0x1000, 1), 0, "ISR clears on read");
    irq.signal_used_queue(9).unwrap();
    assert_eq!(
        rg.msi.fired.lock().unwrap().len(),
        1,
        "unknown queue: no vector"
    );
}

#[test]
fn reset_stops_the_device_and_clears_state() {
    let mut rg = rig();
    let d = &mut rg.dev;
    negotiate(d, features::VERSION_1);
    setup_queue(d, 0, 0x10000, 0);
    w(d, 0x14, 0xf, 1);
    w(d, 0x14, 0, 1);
    assert_eq!(rg.log.lock().unwrap().resets, 1);
    assert_eq!(r(d, 0x14, 1), 0);
    w(d, 0x16, 0, 2);
    assert_eq!(r(d, 0x1c, 2), 0);
    assert_eq!(r(d, 0x18, 2), 256, "size back to the maximum");
}

#[test]
fn queue_setup_is_frozen_after_driver_ok() {
    let mut rg = rig();
    let d = &mut rg.dev;
    negotiate(d, features::VERSION_1);
    setup_queue(d, 0, 0x10000, 0);
    w(d, 0x14, 0xf, 1);
    w(d, 0x16, 0, 2);
    w(d, 0x20, 0x50000, 4);
    assert_eq!(r(d, 0x20, 4), 0x10000);
}

#[test]
fn device_config_and_capabilities_are_visible() {
    let mut rg = rig();
    let d = &mut rg.dev;
    assert_eq!(r(d, 0x2005, 2), 0x0605);
    assert_eq!(d.read_config_register(0), 0x1041_1af4);
    // Walk the capability list: 5 vendor caps then MSI-X.
    let mut ptr = d.read_config_register(13) as usize & 0xff;
    let mut kinds = Vec::new();
    while ptr != 0 {
        let head = d.read_config_register(ptr / 4);
        kinds.push(((head & 0xff) as u8, (head >> 24) as u8));
        ptr = ((head >> 8) & 0xff) as usize;
    }
    assert_eq!(
        kinds.iter().map(|k| k.0).collect::<Vec<_>>(),
        vec![9, 9, 9, 9, 9, 0x11]
    );
    assert_eq!(
        kinds.iter().take(5).map(|k| k.1).collect::<Vec<_>>(),
        vec![1, 3, 4, 2, 5]
    );
    assert_eq!(
        d.ioeventfds().iter().map(|e| e.1).collect::<Vec<_>>(),
        vec![0x3000, 0x3004]
    );
}

#[test]
fn pci_cfg_window_reaches_the_bar() {
    let mut rg = rig();
    let d = &mut rg.dev;
    let base = d.pci_cfg_cap / 4;
    d.write_config_register(base + 1, 0, &[0]);
    d.write_config_register(base + 2, 0, &0x12u32.to_le_bytes());
    d.write_config_register(base + 3, 0, &2u32.to_le_bytes());
    assert_eq!(d.read_config_register(base + 4), 2, "num_queues via window");
    d.write_config_register(base + 3, 0, &3u32.to_le_bytes());
    assert_eq!(d.read_config_register(base + 4), 0, "bad length reads 0");
}

#[test]
fn garbage_bar_accesses_do_not_panic() {
    let mut rg = rig();
    let d = &mut rg.dev;
    for off in (0..0x8000u64).step_by(0x3f) {
        for len in [1usize, 2, 3, 4, 8] {
            let mut b = [0u8; 8];
            d.read_bar(0, off, &mut b[..len]);
            d.write_bar(0, off, &[0xff; 8][..len]);
        }
    }
}

#[test]
fn a_device_reset_request_shows_needs_reset_until_the_driver_resets() {
    let mut rg = rig();
    let d = &mut rg.dev;
    negotiate(d, features::VERSION_1);
    setup_queue(d, 0, 0x10000, 0);
    w(d, 0x10, 1, 2);
    // Enable MSI-X and unmask the config vector (1).
    let cap = d.msix_cap / 4;
    d.write_config_register(cap, 3, &[0x80]);
    w(d, 0x4000 + 16 + 8, 0x41, 4);
    w(d, 0x4000 + 16 + 12, 0, 4);
    w(d, 0x14, 0xf, 1);
    let first = rg.needs_reset.lock().unwrap().clone().unwrap();
    assert_eq!(r(d, 0x14, 1), 0xf);
    // The device worker finds a broken ring.
    assert!(first.raise());
    assert!(!first.raise());
    assert_eq!(r(d, 0x14, 1), 0xf | u64::from(status::NEEDS_RESET));
    assert_eq!(d.status() & status::NEEDS_RESET, status::NEEDS_RESET);
    assert_eq!(
        *rg.msi.fired.lock().unwrap(),
        vec![1],
        "one config interrupt"
    );
    assert_eq!(r(d, 0x1000, 1), 2, "ISR: configuration change");
    // The driver resets and initialises the device again.
    w(d, 0x14, 0, 1);
    assert_eq!(r(d, 0x14, 1), 0);
    assert_eq!(rg.log.lock().unwrap().resets, 1);
    negotiate(d, features::VERSION_1);
    setup_queue(d, 0, 0x10000, 0);
    w(d, 0x14, 0xf, 1);
    assert_eq!(r(d, 0x14, 1), 0xf, "fresh activation, no reset request");
    let second = rg.needs_reset.lock().unwrap().clone().unwrap();
    assert!(!second.is_raised());
    assert!(first.is_raised(), "the old handle is not the new one");
    assert_eq!(rg.log.lock().unwrap().activations.len(), 2);
}

/// The whole path with a real device: virtio-blk behind the transport, a
/// driver that publishes an index far ahead, the status byte the driver
/// reads, the config interrupt, and a reset that brings the disk back.
#[test]
fn a_broken_ring_in_a_real_device_reaches_the_driver_as_needs_reset() {
    use crate::virtio::block::VirtioBlock;
    use crate::virtio::testing::{wait_for, LeakOnPanic, TestQueue};
    use std::io::Write;
    use vm_memory::Bytes;

    let mut img = tempfile::NamedTempFile::new().unwrap();
    img.write_all(&[0u8; 4096]).unwrap();
    let disk = VirtioBlock::new(img.path(), false, "e2e").unwrap();
    let stats = disk.stats();
    let mut tq = TestQueue::new(16);
    let msi = RecordingGroup::new(2);
    let mut d = LeakOnPanic::new(
        VirtioPciDevice::new(Box::new(disk), tq.memory(), msi.clone(), 0x1_0000_0000).unwrap(),
    );
    let cap = d.msix_cap / 4;
    d.write_config_register(cap, 3, &[0x80]);
    let init = |d: &mut VirtioPciDevice| {
        w(d, 0x14, 0, 1);
        w(d, 0x14, u64::from(status::ACKNOWLEDGE | status::DRIVER), 1);
        w(d, 0x08, 1, 4);
        w(d, 0x0c, 1, 4); // VERSION_1
        w(d, 0x14, 0xb, 1);
        w(d, 0x10, 1, 2);
        w(d, 0x4000 + 16 + 8, 0x41, 4);
        w(d, 0x4000 + 16 + 12, 0, 4);
        w(d, 0x16, 0, 2);
        w(d, 0x18, 16, 2);
        w(d, 0x1a, 0, 2);
        w(d, 0x20, 0, 4);
        w(d, 0x28, 0x1000, 4);
        w(d, 0x30, 0x2000, 4);
        w(d, 0x1c, 1, 2);
        w(d, 0x14, 0xf, 1);
        assert_eq!(r(d, 0x14, 1), 0xf);
    };
    init(&mut d);
    tq.set_avail_idx(999);
    w(&mut d, 0x3000, 0, 2); // kick queue 0
    wait_for("NEEDS_RESET in the status byte", || {
        r(&mut d, 0x14, 1) as u8 & status::NEEDS_RESET != 0
    });
    assert_eq!(r(&mut d, 0x14, 1), 0xf | u64::from(status::NEEDS_RESET));
    assert_eq!(*msi.fired.lock().unwrap(), vec![1], "config vector");
    assert_eq!(r(&mut d, 0x1000, 1), 2, "ISR: configuration change");
    assert_eq!(
        stats
            .broken_rings
            .load(std::sync::atomic::Ordering::Relaxed),
        1
    );
    // The driver resets and initialises again: a GET_ID is answered.
    tq.reinit();
    init(&mut d);
    tq.ram.write_obj(8u32, GuestAddress(0x10000)).unwrap();
    tq.add_chain(&[
        (0x10000, 16, false),
        (0x20000, 20, true),
        (0x30000, 1, true),
    ]);
    w(&mut d, 0x3000, 0, 2);
    wait_for("the request is answered", || tq.used_idx() == 1);
    let id: [u8; 3] = tq.ram.read_obj(GuestAddress(0x20000)).unwrap();
    assert_eq!(&id, b"e2e");
    assert_eq!(r(&mut d, 0x14, 1), 0xf);
    w(&mut d, 0x14, 0, 1);
}
