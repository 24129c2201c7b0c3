//! Tests of the VFIO DMA backend against a recording mapper.

use super::*;
use vm_memory::Permissions;

/// Records ioctls; refuses what the kernel would (overlaps, splits) and
/// fails on request.
#[derive(Default)]
struct FakeMapper {
    live: Mutex<BTreeMap<u64, (u64, u64, bool, bool)>>,
    log: Mutex<Vec<String>>,
    fail_map_at: Mutex<Option<u64>>,
    fail_unmaps: std::sync::atomic::AtomicBool,
}

impl DmaMapper for FakeMapper {
    unsafe fn map_dma(
        &self,
        iova: u64,
        hva: u64,
        len: u64,
        read: bool,
        write: bool,
    ) -> io::Result<()> {
        self.log
            .lock()
            .unwrap()
            .push(format!("map {iova:#x} {hva:#x} {len:#x} {read} {write}"));
        if *self.fail_map_at.lock().unwrap() == Some(iova) {
            return Err(io::Error::from_raw_os_error(libc::ENOMEM));
        }
        self.live
            .lock()
            .unwrap()
            .insert(iova, (len, hva, read, write));
        Ok(())
    }

    fn unmap_dma(&self, iova: u64, len: u64) -> io::Result<u64> {
        self.log
            .lock()
            .unwrap()
            .push(format!("unmap {iova:#x} {len:#x}"));
        if self.fail_unmaps.load(Ordering::SeqCst) {
            return Err(io::Error::from_raw_os_error(libc::EIO));
        }
        let end = iova + len;
        let mut live = self.live.lock().unwrap();
        let split = live
            .iter()
            .any(|(&s, &(l, ..))| s < end && s + l > iova && (s < iova || s + l > end));
        if split {
            return Err(io::Error::from_raw_os_error(libc::EINVAL));
        }
        let inside: Vec<u64> = live.range(iova..end).map(|(&s, _)| s).collect();
        Ok(inside.iter().map(|s| live.remove(s).unwrap().0).sum())
    }
}

impl FakeMapper {
    fn take_log(&self) -> Vec<String> {
        std::mem::take(&mut self.log.lock().unwrap())
    }
}

/// Two RAM regions, contiguous in guest-physical space but not in the
/// VMM: [0, 64K) at 0x1000_0000 and [64K, 128K) at 0x5000_0000; then a hole
/// and [1M, 1M + 64K) at 0x9000_0000.
struct FakeRam;

// SAFETY: nothing is ever accessed at these addresses: the fake mapper
// only records them.
unsafe impl GuestRam for FakeRam {
    fn host_range(&self, gpa: u64) -> Option<(u64, u64)> {
        for (start, len, hva) in [
            (0, 0x10000, 0x1000_0000),
            (0x10000, 0x10000, 0x5000_0000),
            (0x10_0000, 0x10000, 0x9000_0000),
        ] {
            if gpa >= start && gpa < start + len {
                return Some((hva + gpa - start, start + len - gpa));
            }
        }
        None
    }

    fn regions(&self) -> Vec<(u64, u64)> {
        vec![(0, 0x20000), (0x10_0000, 0x10000)]
    }
}

fn backend() -> (Arc<FakeMapper>, VfioBackend) {
    let m = Arc::new(FakeMapper::default());
    (m.clone(), VfioBackend::new(m, Arc::new(FakeRam)))
}

#[test]
fn map_translates_and_splits_at_region_boundaries() {
    let (m, b) = backend();
    b.map(0x4000_0000, 0x8000, 0x1000, Permissions::Read)
        .unwrap();
    assert_eq!(
        m.take_log(),
        vec!["map 0x40000000 0x10008000 0x1000 true false"]
    );
    b.map(0x5000_0000, 0xf000, 0x2000, Permissions::ReadWrite)
        .unwrap();
    assert_eq!(
        m.take_log(),
        vec![
            "map 0x50000000 0x1000f000 0x1000 true true",
            "map 0x50001000 0x50000000 0x1000 true true",
        ]
    );
    assert_eq!(b.mapped_bytes(), 0x3000);
    assert_eq!(b.stats().map.calls.load(Ordering::Relaxed), 3);
    assert_eq!(b.stats().map.bytes.load(Ordering::Relaxed), 0x3000);
    // One UNMAP of the whole guest range removes both pieces.
    assert_eq!(b.unmap(0x5000_0000, 0x2000), Ok(0x2000));
    assert_eq!(m.take_log(), vec!["unmap 0x50000000 0x2000"]);
    assert_eq!(b.mapped_bytes(), 0x1000);
    assert_eq!(b.stats().unmap.calls.load(Ordering::Relaxed), 1);
}

#[test]
fn overlaps_non_ram_and_failures_leave_nothing_behind() {
    let (m, b) = backend();
    b.map(0x1000, 0, 0x2000, Permissions::ReadWrite).unwrap();
    m.take_log();
    assert_eq!(
        b.map(0x2000, 0, 0x1000, Permissions::Read),
        Err(BackendError::Exists(0x2000, 0x1000))
    );
    assert!(m.take_log().is_empty(), "refused before any ioctl");
    // Runs from RAM into the hole: the first piece is rolled back.
    let e = b
        .map(0x10_0000, 0x1f000, 0x2000, Permissions::Read)
        .unwrap_err();
    assert!(
        matches!(&e, BackendError::Host(s) if s.contains("0x20000 is not RAM")),
        "{e}"
    );
    assert_eq!(
        m.take_log(),
        vec![
            "map 0x100000 0x5000f000 0x1000 true false",
            "unmap 0x100000 0x1000"
        ]
    );
    // The kernel refuses the second piece.
    *m.fail_map_at.lock().unwrap() = Some(0x20_1000);
    assert!(b
        .map(0x20_0000, 0xf000, 0x2000, Permissions::Write)
        .is_err());
    assert_eq!(b.stats().map.errors.load(Ordering::Relaxed), 1);
    assert_eq!(b.mapped_bytes(), 0x2000, "only the first mapping remains");
    assert_eq!(m.live.lock().unwrap().len(), 1);
}

#[test]
fn degenerate_requests_issue_no_ioctl() {
    let (m, b) = backend();
    b.map(0x1000, 0, 0x1000, Permissions::No).unwrap();
    b.map(0x1000, 0, 0, Permissions::Read).unwrap();
    assert_eq!(b.unmap(0x1000, 0x1000), Ok(0));
    assert_eq!(b.unmap(0x1000, 0), Ok(0));
    assert!(b
        .map(u64::MAX - 0xfff, 0, 0x2000, Permissions::Read)
        .is_err());
    assert!(b
        .map(0, u64::MAX - 0xfff, 0x2000, Permissions::Read)
        .is_err());
    assert!(m.take_log().is_empty());
    // Splitting a mapping is the kernel's call: it refuses, we report.
    b.map(0x1000, 0, 0x2000, Permissions::Read).unwrap();
    assert!(b.unmap(0x1000, 0x1000).is_err());
    assert_eq!(b.stats().unmap.errors.load(Ordering::Relaxed), 1);
    assert_eq!(b.mapped_bytes(), 0x2000);
    assert_eq!(b.unmap(u64::MAX - 1, 10), Ok(0));
}

#[test]
fn map_all_reports_progress_and_unmap_all_and_drop_clean_up() {
    let (m, b) = backend();
    let mut seen = Vec::new();
    b.map_all_guest_ram(|d, t| seen.push((d, t))).unwrap();
    assert_eq!(seen, vec![(0x20000, 0x30000), (0x30000, 0x30000)]);
    let log = m.take_log();
    assert_eq!(log.len(), 3, "{log:?}: region 0 is two host mappings");
    assert_eq!(b.mapped_bytes(), 0x30000);
    assert_eq!(b.unmap_all(), Ok(0x30000));
    assert_eq!(m.take_log(), vec!["unmap 0x0 0x110000"]);
    assert_eq!(b.unmap_all(), Ok(0));
    b.map(0x1000, 0, 0x1000, Permissions::Read).unwrap();
    drop(b);
    assert!(m.live.lock().unwrap().is_empty(), "drop unmaps");
    let j = DmaStats::default().to_json();
    assert_eq!(j["map"]["mean_ns"], 0);
}

#[test]
fn shutdown_unmaps_and_refuses_later_maps() {
    let (m, b) = backend();
    b.map(0x1000, 0, 0x2000, Permissions::ReadWrite).unwrap();
    assert_eq!(b.shutdown(), Ok(0x2000));
    assert!(m.live.lock().unwrap().is_empty());
    let e = b.map(0x1000, 0, 0x1000, Permissions::Read).unwrap_err();
    assert!(e.to_string().contains("shutting down"), "{e}");
    assert_eq!(b.mapped_bytes(), 0);
    assert_eq!(b.shutdown(), Ok(0), "idempotent");
}

#[test]
fn guest_memory_mmap_is_guest_ram() {
    let mem = GuestMemoryMmap::<()>::from_ranges(&[
        (GuestAddress(0), 0x4000),
        (GuestAddress(0x10000), 0x2000),
    ])
    .unwrap();
    let (hva, avail) = mem.host_range(0x1000).unwrap();
    assert_eq!(avail, 0x3000);
    let base = mem.get_host_address(GuestAddress(0)).unwrap() as u64;
    assert_eq!(hva, base + 0x1000);
    assert_eq!(mem.host_range(0x8000), None);
    assert_eq!(mem.regions(), vec![(0, 0x4000), (0x10000, 0x2000)]);
}

#[test]
fn a_failed_vfio_unmap_keeps_the_mapping_accounted_and_the_guest_gets_ioerr() {
    use viommu::protocol::status;
    use viommu::tables::{Limits, Tables};
    let (m, b) = backend();
    let b = Arc::new(b);
    let mut t = Tables::new(Limits::default(), Some(b.clone()));
    t.set_bypass(false);
    t.add_endpoint(8, None, true);
    assert_eq!(t.attach(1, 8, 0).status, status::OK);
    assert_eq!(
        t.map(1, 0x4000_0000, 0x4000_1fff, 0x2000, 3).status,
        status::OK
    );
    m.fail_unmaps.store(true, Ordering::SeqCst);
    assert_eq!(t.unmap(1, 0x4000_0000, 0x4000_1fff).status, status::DEVERR);
    // The container still maps it, and both sides say so.
    assert_eq!(m.live.lock().unwrap().len(), 1);
    assert_eq!(b.mapped_bytes(), 0x2000);
    assert_eq!(t.residue_bytes(), 0x2000);
    assert!(t.is_fenced(1));
    m.fail_unmaps.store(false, Ordering::SeqCst);
    assert_eq!(t.unmap(1, 0x4000_0000, 0x4000_1fff).status, status::OK);
    assert!(m.live.lock().unwrap().is_empty());
    assert_eq!((b.mapped_bytes(), t.residue_bytes()), (0, 0));
}

#[test]
fn a_half_done_vfio_map_whose_rollback_fails_is_residue_in_a_fenced_domain() {
    use viommu::protocol::status;
    use viommu::tables::{Limits, Tables};
    let (m, b) = backend();
    let b = Arc::new(b);
    let mut t = Tables::new(Limits::default(), Some(b.clone()));
    t.set_bypass(false);
    t.add_endpoint(8, None, true);
    assert_eq!(t.attach(1, 8, 0).status, status::OK);
    // Guest-physical 0xf000..0x11000 spans two RAM regions: two ioctls;
    // the second fails, and so does every unmap (rollback, cleanup).
    *m.fail_map_at.lock().unwrap() = Some(0x4000_1000);
    m.fail_unmaps.store(true, Ordering::SeqCst);
    let st = t.map(1, 0x4000_0000, 0x4000_1fff, 0xf000, 3).status;
    assert_eq!(st, status::DEVERR);
    assert_eq!(m.live.lock().unwrap().len(), 1, "the first half stays");
    assert_eq!(b.mapped_bytes(), 0x1000);
    assert!(t.is_fenced(1));
    assert_eq!(t.residue_bytes(), 0x2000);
    assert_eq!(t.mapped_bytes(), 0);
    // The host recovers; the guest's UNMAP of the range cleans it.
    m.fail_unmaps.store(false, Ordering::SeqCst);
    assert_eq!(t.unmap(1, 0x4000_0000, 0x4000_1fff).status, status::OK);
    assert!(m.live.lock().unwrap().is_empty());
    assert_eq!((b.mapped_bytes(), t.residue_bytes()), (0, 0));
}
