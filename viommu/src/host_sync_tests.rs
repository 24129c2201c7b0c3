//! vCPU-side changes make no host call and hold no lock across one; the
//! deferred work is done before the next request is answered.

use std::sync::mpsc;
use std::time::Duration;

use devices::virtio::testing::{NoInterrupt, TestQueue};
use devices::virtio::VirtioDevice;
use vm_memory::{Bytes, GuestAddress, Permissions};

use super::*;
use crate::backend::{BackendError, HostIommu, SimulatedBackend};
use crate::device::{IommuWorker, VirtioIommu};
use crate::protocol as p;
use crate::tables::{Limits, Tables};

/// Records the thread of every call; maps wait at a gate while one is set.
#[derive(Default)]
struct Recording {
    sim: SimulatedBackend,
    threads: Mutex<Vec<String>>,
    gate: Mutex<Option<(mpsc::Sender<()>, mpsc::Receiver<()>)>>,
    fail_maps: std::sync::atomic::AtomicBool,
}

impl Recording {
    fn note(&self) {
        let name = std::thread::current().name().unwrap_or("?").to_string();
        self.threads.lock().unwrap().push(name);
    }

    fn called_from(&self, name: &str) -> bool {
        self.threads.lock().unwrap().iter().any(|t| t == name)
    }
}

impl HostIommu for Recording {
    fn map(&self, iova: u64, gpa: u64, len: u64, perm: Permissions) -> Result<(), BackendError> {
        self.note();
        if let Some((entered, release)) = &*self.gate.lock().unwrap() {
            entered.send(()).unwrap();
            release.recv_timeout(Duration::from_secs(30)).unwrap();
        }
        if self.fail_maps.load(std::sync::atomic::Ordering::SeqCst) {
            return Err(BackendError::Host("refused".into()));
        }
        self.sim.map(iova, gpa, len, perm)
    }

    fn unmap(&self, iova: u64, len: u64) -> Result<u64, BackendError> {
        self.note();
        self.sim.unmap(iova, len)
    }
}

const RAM: [(u64, u64); 2] = [(0, 0xc000_0000), (0x1_0000_0000, 0x4000_0000)];

/// A device with hardware endpoint 8 and emulated 16, BYPASS_CONFIG
/// negotiated, the bypass byte as given.
fn device(b: &Arc<Recording>, bypass: bool) -> (Arc<IommuState>, VirtioIommu) {
    let mut t = Tables::new(Limits::default(), Some(b.clone()));
    t.set_guest_ram(RAM.to_vec());
    t.set_bypass(bypass);
    t.add_endpoint(8, None, true);
    t.add_endpoint(16, None, false);
    t.sync_host();
    let s = IommuState::new(t).unwrap();
    let mut d = VirtioIommu::new(s.clone());
    d.set_acked_features(d.avail_features());
    (s, d)
}

fn this_thread() -> String {
    std::thread::current().name().unwrap_or("?").to_string()
}

#[test]
fn a_bypass_write_maps_guest_ram_on_the_host_thread_with_the_tables_unlocked() {
    let b = Arc::new(Recording::default());
    let (s, mut d) = device(&b, false);
    assert!(b.sim.is_empty());
    let (entered_tx, entered) = mpsc::channel();
    let (release, release_rx) = mpsc::channel();
    *b.gate.lock().unwrap() = Some((entered_tx, release_rx));
    // The vCPU's config write returns with the host work still to do.
    d.write_config(36, &[1]);
    entered.recv_timeout(Duration::from_secs(30)).unwrap();
    assert!(b.called_from("viommu-host"));
    assert!(!b.called_from(&this_thread()), "no host call on the vCPU");
    // While the host maps, the tables are free: emulated DMA translates.
    assert!(s.tables.try_write().is_ok());
    let m = s.endpoint(16).translate(0x1000, Permissions::Read).unwrap();
    assert_eq!(m.gpa, m.iova, "bypassing at once");
    release.send(()).unwrap();
    release.send(()).unwrap();
    *b.gate.lock().unwrap() = None;
    s.sync_host(); // waits for the host thread's round
    assert_eq!(s.tables.read().unwrap().identity_bytes(), 4 << 30);
    assert!(!s.tables.read().unwrap().host_pending());
}

#[test]
fn a_request_after_a_bypass_write_is_answered_only_once_the_host_follows() {
    let b = Arc::new(Recording::default());
    let (s, _d) = device(&b, true);
    assert_eq!(b.sim.len(), 2, "identity map of both RAM ranges");
    // As a bypass=0 write does, without waking the host thread: only the
    // worker can do the work, and must before it answers.
    s.tables().set_bypass(false);
    let mut tq = TestQueue::new(16);
    let mut w =
        IommuWorker::for_test(s.clone(), tq.memory(), tq.queue(), Arc::new(NoInterrupt)).unwrap();
    let mut req = vec![p::req::ATTACH, 0, 0, 0];
    req.extend(1u32.to_le_bytes());
    req.extend(16u32.to_le_bytes());
    req.extend([0u8; 8]);
    tq.ram.write_slice(&req, GuestAddress(0x10000)).unwrap();
    tq.add_chain(&[(0x10000, req.len() as u32, false), (0x20000, 4, true)]);
    w.run_requests();
    assert_eq!(tq.used_idx(), 1);
    let st: u8 = tq.ram.read_obj(GuestAddress(0x20000)).unwrap();
    assert_eq!(st, p::status::OK);
    assert!(b.sim.is_empty(), "the hardware endpoint reaches nothing");
    assert!(!b.called_from("viommu-host"));
}

#[test]
fn reset_defers_its_host_unmaps_to_the_host_thread() {
    let b = Arc::new(Recording::default());
    let (s, mut d) = device(&b, false);
    {
        let mut t = s.tables();
        assert_eq!(t.attach(1, 8, 0).status, p::status::OK);
        assert_eq!(t.map(1, 0x10000, 0x10fff, 0x5000, 3).status, p::status::OK);
    }
    let before = b.threads.lock().unwrap().len();
    d.reset();
    let after: Vec<String> = b.threads.lock().unwrap()[before..].to_vec();
    assert!(!after.contains(&this_thread()), "no host call on the vCPU");
    s.sync_host();
    // After reset the byte is set: guest RAM identity-mapped, the old
    // domain mapping gone.
    assert_eq!(b.sim.dma(0x10000, 4, Permissions::Read), Some(0x10000));
    assert_eq!(s.tables.read().unwrap().residue_bytes(), 0);
    assert_eq!(s.tables.read().unwrap().identity_bytes(), 4 << 30);
}

fn attach_req(domain: u32, ep: u32, flags: u32) -> Vec<u8> {
    let mut req = vec![p::req::ATTACH, 0, 0, 0];
    req.extend(domain.to_le_bytes());
    req.extend(ep.to_le_bytes());
    req.extend(flags.to_le_bytes());
    req.extend([0u8; 4]);
    req
}

/// Sends one request through a worker on its own thread; returns the
/// status once answered.
fn answer_on_worker(s: &Arc<IommuState>, req: Vec<u8>) -> std::thread::JoinHandle<u8> {
    let s = s.clone();
    std::thread::spawn(move || {
        let mut tq = TestQueue::new(16);
        let mut w =
            IommuWorker::for_test(s, tq.memory(), tq.queue(), Arc::new(NoInterrupt)).unwrap();
        tq.ram.write_slice(&req, GuestAddress(0x10000)).unwrap();
        tq.add_chain(&[(0x10000, req.len() as u32, false), (0x20000, 4, true)]);
        w.run_requests();
        assert_eq!(tq.used_idx(), 1);
        tq.ram.read_obj(GuestAddress(0x20000)).unwrap()
    })
}

#[test]
fn a_bypass_attach_maps_guest_ram_with_the_tables_unlocked_then_answers() {
    let b = Arc::new(Recording::default());
    let (s, _d) = device(&b, false);
    let (entered_tx, entered) = mpsc::channel();
    let (release, release_rx) = mpsc::channel();
    *b.gate.lock().unwrap() = Some((entered_tx, release_rx));
    let worker = answer_on_worker(&s, attach_req(1, 8, p::ATTACH_F_BYPASS));
    entered.recv_timeout(Duration::from_secs(30)).unwrap();
    // The worker is inside the host map: the tables are not locked, so
    // emulated devices translate and a vCPU config write does not wait.
    assert!(s.tables.try_write().is_ok());
    assert!(!worker.is_finished(), "not answered before the host map");
    release.send(()).unwrap();
    release.send(()).unwrap();
    assert_eq!(worker.join().unwrap(), p::status::OK);
    *b.gate.lock().unwrap() = None;
    assert_eq!(s.tables.read().unwrap().identity_bytes(), 4 << 30);
    assert!(b.sim.dma(0x1234_0000, 8, Permissions::Write).is_some());
}

#[test]
fn a_bypass_attach_whose_identity_map_fails_is_not_answered_ok() {
    let b = Arc::new(Recording::default());
    let (s, _d) = device(&b, false);
    b.fail_maps.store(true, std::sync::atomic::Ordering::SeqCst);
    let st = answer_on_worker(&s, attach_req(1, 8, p::ATTACH_F_BYPASS))
        .join()
        .unwrap();
    assert_eq!(st, p::status::DEVERR);
    assert!(s.tables.read().unwrap().is_fenced(1));
    assert!(b.sim.is_empty());
    assert_eq!(s.stats.to_json()["host_errors"]["map"], 1);
    assert_eq!(s.stats.to_json()["host_errors"]["fenced_domains"], 1);
}
