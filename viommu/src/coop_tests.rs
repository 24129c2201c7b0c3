//! Tests of the DTT reader and the pins against the protocol of
//! docs/coop.md, with a guest played by the test (and by racing threads).

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};

use proptest::prelude::*;
use vm_memory::{Bytes, GuestAddress, GuestMemory, GuestMemoryMmap, Permissions};

use super::*;
use crate::backend::{CallKind, FailingBackend, SimulatedBackend};

const MIB: u64 = 1 << 20;
/// Guest RAM: [0, 16M) and [32M, 48M), a hole between.
const RAM: [(u64, u64); 2] = [(0, 16 * MIB), (32 * MIB, 16 * MIB)];
const DIR: u64 = MIB;
const LEAF0: u64 = 2 * MIB;
/// Leaves for 48 MiB of address space.
const LEAVES: u32 = 12;
const NO_MSI: (u64, u64) = (u64::MAX, 0);
const MSI: (u64, u64) = (0xfee0_0000, 0xfeef_ffff);

fn ram() -> GuestMemoryMmap {
    let r: Vec<_> = RAM
        .iter()
        .map(|&(s, l)| (GuestAddress(s), l as usize))
        .collect();
    GuestMemoryMmap::from_ranges(&r).unwrap()
}

/// Writes a directory whose leaf `i` is at `LEAF0 + i * 4K` (0 where
/// `hole(i)`).
fn write_dir(mem: &GuestMemoryMmap, hole: impl Fn(u64) -> bool) {
    for i in 0..u64::from(LEAVES) {
        let gpa = if hole(i) { 0 } else { LEAF0 + i * PAGE };
        mem.write_obj(gpa, GuestAddress(DIR + i * 8)).unwrap();
    }
}

#[derive(Default)]
struct Sink {
    invalidated: Vec<(u64, u64)>,
    residue: Vec<(u64, u64)>,
}

impl Unpinned for Sink {
    fn invalidate(&mut self, first: u64, last: u64) {
        self.invalidated.push((first, last));
    }
    fn residue(&mut self, first: u64, last: u64) {
        self.residue.push((first, last));
    }
}

fn coop(mem: &GuestMemoryMmap, cfg: CoopConfig) -> Coop {
    let mut c = Coop::new(mem.clone(), cfg);
    write_dir(mem, |_| false);
    assert_eq!(c.register(DIR, LEAVES), status::OK);
    c
}

/// The guest's entry for `gfn` (leaves at LEAF0 + i * 4K).
fn entry(mem: &GuestMemoryMmap, gfn: u64) -> &AtomicU32 {
    let gpa = LEAF0 + (gfn / LEAF_ENTRIES) * PAGE + (gfn % LEAF_ENTRIES) * 4;
    let p = mem.get_host_address(GuestAddress(gpa)).unwrap();
    // SAFETY: a 4-byte-aligned address inside `mem`, which outlives the
    // reference in every test.
    unsafe { &*(p as *const AtomicU32) }
}

/// The guest's map of one page: true when it must ask for a pin.
fn guest_map(mem: &GuestMemoryMmap, gfn: u64) -> bool {
    let e = entry(mem, gfn);
    let old = e
        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |v| {
            Some((v + 1) | ACCESSED)
        })
        .unwrap();
    old & PINNED == 0
}

fn guest_unmap(mem: &GuestMemoryMmap, gfn: u64) {
    entry(mem, gfn).fetch_sub(1, Ordering::SeqCst);
}

#[test]
fn registration_checks_the_directory() {
    let mem = ram();
    let mut c = Coop::new(mem.clone(), CoopConfig::default());
    write_dir(&mem, |_| false);
    assert_eq!(c.register(DIR, 0), status::INVAL);
    assert_eq!(c.register(DIR + 4, LEAVES), status::INVAL, "misaligned");
    assert_eq!(c.register(DIR, LEAVES + 1), status::RANGE, "beyond RAM");
    assert_eq!(
        c.register(20 * MIB, 1),
        status::RANGE,
        "directory in the hole"
    );
    mem.write_obj(LEAF0 + 8, GuestAddress(DIR)).unwrap();
    assert_eq!(
        c.register(DIR, LEAVES),
        status::INVAL,
        "leaf not page aligned"
    );
    mem.write_obj(20 * MIB, GuestAddress(DIR)).unwrap();
    assert_eq!(c.register(DIR, LEAVES), status::RANGE, "leaf in the hole");
    mem.write_obj(48 * MIB, GuestAddress(DIR)).unwrap();
    assert_eq!(
        c.register(DIR, LEAVES),
        status::RANGE,
        "leaf past RAM's end"
    );
    assert!(!c.registered());
    assert_eq!(c.stats().refused_register.load(Ordering::Relaxed), 7);
    write_dir(&mem, |i| i == 5);
    assert_eq!(c.register(DIR, LEAVES), status::OK);
    assert_eq!(c.register(DIR, LEAVES), status::INVAL, "already registered");
    // Changing the directory afterwards changes nothing.
    mem.write_obj(0xdead_0000u64, GuestAddress(DIR)).unwrap();
    let (b, mut s) = (SimulatedBackend::default(), Sink::default());
    assert_eq!(c.pin(3, 1, NO_MSI, &b, &mut s), status::OK);
    assert_ne!(entry(&mem, 3).load(Ordering::SeqCst) & PINNED, 0);
    // Leaf 5 is absent: its pages cannot be pinned.
    assert_eq!(c.pin(5 * 1024, 1, NO_MSI, &b, &mut s), status::RANGE);
}

#[test]
fn a_pin_maps_once_and_sets_pinned() {
    let mem = ram();
    let mut c = coop(&mem, CoopConfig::default());
    let (b, mut s) = (SimulatedBackend::default(), Sink::default());
    assert!(guest_map(&mem, 10));
    assert_eq!(c.pin(10, 4, NO_MSI, &b, &mut s), status::OK);
    assert_eq!(
        b.ranges(),
        vec![(10 * PAGE, 4 * PAGE)],
        "one host map, IOVA = GPA"
    );
    assert_eq!(b.dma(10 * PAGE, 8, Permissions::ReadWrite), Some(10 * PAGE));
    for g in 10..14 {
        assert_ne!(entry(&mem, g).load(Ordering::SeqCst) & PINNED, 0);
    }
    assert!(!guest_map(&mem, 11), "pinned: no request needed");
    assert_eq!(c.pin(8, 8, NO_MSI, &b, &mut s), status::OK);
    assert_eq!(
        b.ranges(),
        vec![
            (8 * PAGE, 2 * PAGE),
            (10 * PAGE, 4 * PAGE),
            (14 * PAGE, 2 * PAGE)
        ],
        "only the missing chunks"
    );
    assert_eq!(c.pinned_bytes(), 8 * PAGE);
    assert_eq!(c.pin(8, 8, NO_MSI, &b, &mut s), status::OK);
    assert_eq!(
        b.map_calls.load(Ordering::Relaxed),
        3,
        "all pinned: no host call"
    );
    let st = c.stats();
    assert_eq!(st.pin_requests.load(Ordering::Relaxed), 3);
    assert_eq!(st.pinned_chunks.load(Ordering::Relaxed), 8);
}

#[test]
fn pins_are_checked_against_ram_and_the_table() {
    let mem = ram();
    let mut c = coop(&mem, CoopConfig::default());
    let (b, mut s) = (SimulatedBackend::default(), Sink::default());
    assert_eq!(c.pin(0, 0, NO_MSI, &b, &mut s), status::INVAL);
    let hole = 20 * MIB / PAGE;
    assert_eq!(c.pin(hole, 1, NO_MSI, &b, &mut s), status::RANGE);
    assert_eq!(
        c.pin(16 * MIB / PAGE - 1, 2, NO_MSI, &b, &mut s),
        status::RANGE,
        "into the hole"
    );
    assert_eq!(
        c.pin(u64::from(LEAVES) * 1024, 1, NO_MSI, &b, &mut s),
        status::RANGE
    );
    assert_eq!(
        c.pin(u64::MAX, u32::MAX, NO_MSI, &b, &mut s),
        status::RANGE,
        "overflow"
    );
    let msi = (4 * MIB, 4 * MIB + 0xfff);
    assert_eq!(c.pin(4 * MIB / PAGE, 1, msi, &b, &mut s), status::RANGE);
    assert!(b.is_empty());
    let mut fresh = Coop::new(mem.clone(), CoopConfig::default());
    assert_eq!(
        fresh.pin(1, 1, NO_MSI, &b, &mut s),
        status::INVAL,
        "no table"
    );
    assert_eq!(c.stats().refused_range.load(Ordering::Relaxed), 5);
}

#[test]
fn huge_granule_pins_whole_chunks_clipped_to_ram_and_msi() {
    let mem = ram();
    let cfg = CoopConfig {
        granule: 2 * MIB,
        ..CoopConfig::default()
    };
    let mut c = coop(&mem, cfg);
    let (b, mut s) = (SimulatedBackend::default(), Sink::default());
    assert_eq!(c.pin(3 * MIB / PAGE, 1, NO_MSI, &b, &mut s), status::OK);
    assert_eq!(b.ranges(), vec![(2 * MIB, 2 * MIB)]);
    // Two requested pages in adjacent chunks: one merged host map.
    assert_eq!(c.pin(6 * MIB / PAGE - 1, 2, NO_MSI, &b, &mut s), status::OK);
    assert_eq!(b.ranges(), vec![(2 * MIB, 2 * MIB), (4 * MIB, 4 * MIB)]);
    // A chunk holding an MSI window is cut around it.
    let msi = (9 * MIB, 9 * MIB + 0xfff);
    assert_eq!(c.pin(8 * MIB / PAGE, 1, msi, &b, &mut s), status::OK);
    assert_eq!(c.pin(9 * MIB / PAGE + 1, 1, msi, &b, &mut s), status::OK);
    assert!(b.dma(9 * MIB, 4, Permissions::Read).is_none());
    assert!(b.dma(9 * MIB - 4, 4, Permissions::Read).is_some());
    assert!(b.dma(9 * MIB + PAGE, 4, Permissions::Read).is_some());
    assert_eq!(c.pinned_bytes(), 8 * MIB - PAGE);
}

#[test]
fn a_mid_granule_pins_its_chunk_and_keeps_it_while_one_page_is_mapped() {
    let mem = ram();
    let k64 = 64 << 10;
    let cfg = CoopConfig {
        granule: k64,
        ..CoopConfig::default()
    };
    let mut c = coop(&mem, cfg);
    let (b, mut s) = (SimulatedBackend::default(), Sink::default());
    // Page 37 lies in the chunk of pages 32..48.
    assert!(guest_map(&mem, 37));
    assert_eq!(c.pin(37, 1, NO_MSI, &b, &mut s), status::OK);
    assert_eq!(b.ranges(), vec![(32 * PAGE, k64)]);
    for g in 32..48 {
        assert_ne!(entry(&mem, g).load(Ordering::SeqCst) & PINNED, 0, "{g}");
    }
    assert!(!guest_map(&mem, 40), "a neighbour in the chunk: no request");
    guest_unmap(&mem, 37);
    for _ in 0..3 {
        c.scan(false, &b, &mut s);
    }
    assert_eq!(b.len(), 1, "page 40 is still mapped: the chunk stays");
    guest_unmap(&mem, 40);
    for _ in 0..2 {
        c.scan(false, &b, &mut s);
    }
    assert!(b.is_empty());
    assert_eq!(s.invalidated, vec![(32 * PAGE, 48 * PAGE - 1)]);
    assert_eq!(c.stats().pinned_chunks.load(Ordering::Relaxed), 1);
}

#[test]
fn idle_pages_are_unpinned_after_two_scans_and_mapped_ones_never() {
    let mem = ram();
    let mut c = coop(&mem, CoopConfig::default());
    let (b, mut s) = (SimulatedBackend::default(), Sink::default());
    for g in [100, 200] {
        assert!(guest_map(&mem, g));
        assert_eq!(c.pin(g, 1, NO_MSI, &b, &mut s), status::OK);
    }
    guest_unmap(&mem, 100);
    c.scan(false, &b, &mut s);
    assert_eq!(b.len(), 2, "accessed: aged, kept");
    assert_eq!(entry(&mem, 100).load(Ordering::SeqCst) & ACCESSED, 0);
    c.scan(false, &b, &mut s);
    assert_eq!(b.ranges(), vec![(200 * PAGE, PAGE)], "idle page unpinned");
    assert_eq!(entry(&mem, 100).load(Ordering::SeqCst), 0, "PINNED cleared");
    assert_eq!(s.invalidated, vec![(100 * PAGE, 101 * PAGE - 1)]);
    for _ in 0..5 {
        c.scan(false, &b, &mut s);
    }
    assert_eq!(b.len(), 1, "a mapped page is never unpinned");
    assert!(guest_map(&mem, 100), "unpinned: the guest must ask again");
    assert_eq!(c.pin(100, 1, NO_MSI, &b, &mut s), status::OK);
    assert_eq!(c.stats().unpinned_chunks.load(Ordering::Relaxed), 1);
}

#[test]
fn contiguous_idle_runs_leave_the_host_in_one_unmap() {
    let mem = ram();
    let mut c = coop(&mem, CoopConfig::default());
    let (b, mut s) = (SimulatedBackend::default(), Sink::default());
    for g in [40, 41, 42, 50] {
        assert_eq!(c.pin(g, 1, NO_MSI, &b, &mut s), status::OK);
    }
    c.scan(false, &b, &mut s);
    assert!(b.is_empty());
    assert_eq!(b.unmap_calls.load(Ordering::Relaxed), 2);
    assert_eq!(c.pinned_bytes(), 0);
}

#[test]
fn the_budget_reclaims_idle_pins_then_refuses() {
    let mem = ram();
    let cfg = CoopConfig {
        budget: 4 * PAGE,
        ..CoopConfig::default()
    };
    let mut c = coop(&mem, cfg);
    let (b, mut s) = (SimulatedBackend::default(), Sink::default());
    for g in 0..4 {
        assert!(guest_map(&mem, g));
    }
    assert_eq!(c.pin(0, 2, NO_MSI, &b, &mut s), status::OK);
    assert_eq!(c.pin(2, 2, NO_MSI, &b, &mut s), status::OK);
    guest_unmap(&mem, 0);
    guest_unmap(&mem, 1);
    // Pages 0 and 1 (one host mapping) are idle, though ACCESSED: a
    // reclaim takes them; 2 and 3 are mapped and stay.
    assert_eq!(c.pin(10, 2, NO_MSI, &b, &mut s), status::OK);
    assert_eq!(c.pinned_bytes(), 4 * PAGE);
    assert_eq!(c.run_of(0), None);
    // Everything mapped now: refused, nothing changes.
    guest_map(&mem, 10);
    guest_map(&mem, 11);
    assert_eq!(c.pin(20, 1, NO_MSI, &b, &mut s), status::NOMEM);
    assert_eq!(b.ranges().len(), 2);
    let st = c.stats();
    assert_eq!(st.refused_budget.load(Ordering::Relaxed), 1);
    assert_eq!(st.reclaims.load(Ordering::Relaxed), 2);
    assert_eq!(st.pinned_peak_bytes.load(Ordering::Relaxed), 4 * PAGE);
}

#[test]
fn host_failures_are_answered_and_leave_nothing_pinned() {
    let mem = ram();
    let mut c = coop(
        &mem,
        CoopConfig {
            granule: 2 * MIB,
            ..CoopConfig::default()
        },
    );
    let b = FailingBackend::default();
    let mut s = Sink::default();
    b.fail_nth(CallKind::Map, 2);
    // Two new runs (split by a pinned chunk); the second map fails.
    assert_eq!(c.pin(2 * MIB / PAGE, 1, NO_MSI, &b, &mut s), status::OK);
    assert_eq!(c.pin(0, 1024, NO_MSI, &b, &mut s), status::DEVERR);
    assert_eq!(c.pinned_bytes(), 2 * MIB);
    b.fail_always(CallKind::Unmap, true);
    c.scan(false, &b, &mut s);
    assert_eq!(
        s.residue,
        vec![(2 * MIB, 4 * MIB - 1)],
        "a failed unmap is residue"
    );
    assert_eq!(c.pinned_bytes(), 0);
}

#[test]
fn reset_hands_every_pin_back_and_forgets_the_table() {
    let mem = ram();
    let mut c = coop(&mem, CoopConfig::default());
    let (b, mut s) = (SimulatedBackend::default(), Sink::default());
    assert_eq!(c.pin(7, 3, NO_MSI, &b, &mut s), status::OK);
    assert_eq!(c.reset(), vec![(7 * PAGE, 3 * PAGE)]);
    assert!(!c.registered());
    assert_eq!(c.pin(7, 1, NO_MSI, &b, &mut s), status::INVAL);
    assert_eq!(
        c.register(DIR, LEAVES),
        status::OK,
        "a new table after reset"
    );
}

/// Racing guest CPUs and the host's scans and reclaims: whenever a guest
/// CPU holds a page mapped after seeing PINNED (or a pin's OK), the host
/// maps it.
#[test]
fn racing_guest_maps_never_lose_their_pin() {
    let mem = ram();
    let cfg = CoopConfig {
        budget: 24 * PAGE,
        ..CoopConfig::default()
    };
    let c = Arc::new(Mutex::new(coop(&mem, cfg)));
    let b = Arc::new(SimulatedBackend::default());
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let host = {
        let (c, b, stop) = (c.clone(), b.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut s = Sink::default();
            while !stop.load(Ordering::Relaxed) {
                c.lock().unwrap().scan(false, &*b, &mut s);
            }
        })
    };
    let guests: Vec<_> = (0..3u64)
        .map(|cpu| {
            let (c, b, mem) = (c.clone(), b.clone(), mem.clone());
            std::thread::spawn(move || {
                let mut x = cpu * 7 + 1;
                let mut s = Sink::default();
                for _ in 0..4000 {
                    x = x
                        .wrapping_mul(6364136223846793005)
                        .wrapping_add(1442695040888963407);
                    let g = 64 + (x >> 33) % 16;
                    if guest_map(&mem, g) {
                        let st = c.lock().unwrap().pin(g, 1, NO_MSI, &*b, &mut s);
                        if st != status::OK {
                            guest_unmap(&mem, g);
                            continue;
                        }
                    }
                    assert!(
                        b.dma(g * PAGE, 8, Permissions::ReadWrite).is_some(),
                        "page {g} mapped by the guest but not in the host"
                    );
                    guest_unmap(&mem, g);
                }
            })
        })
        .collect();
    for g in guests {
        g.join().unwrap();
    }
    stop.store(true, Ordering::Relaxed);
    host.join().unwrap();
    let c = c.lock().unwrap();
    let runs: Vec<_> = c.runs().collect();
    assert_eq!(b.ranges(), runs, "host and record agree");
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// A hostile guest: random directory words, random entry values
    /// written at random times, random pins and scans. The host never
    /// maps outside guest RAM or the MSI window, never exceeds the
    /// budget, and its record always equals the host address space.
    #[test]
    fn hostile_tables_never_reach_outside_ram(
        dir in proptest::collection::vec(any::<u16>(), 12),
        ops in proptest::collection::vec((0u8..4, any::<u32>(), 0u32..600, any::<u32>()), 1..60),
        granule_shift in 12u32..=21,
    ) {
        let mem = ram();
        for (i, w) in dir.iter().enumerate() {
            // Mostly real leaves, sometimes 0, misaligned or out of RAM.
            let gpa = match w % 8 {
                0 => 0,
                1 => u64::from(*w) << 12,
                2 => 20 * MIB + u64::from(*w),
                _ => LEAF0 + i as u64 * PAGE,
            };
            mem.write_obj(gpa, GuestAddress(DIR + i as u64 * 8)).unwrap();
        }
        let cfg = CoopConfig {
            budget: 3 * MIB,
            // Every granule the config accepts, 4 KiB to 2 MiB.
            granule: 1 << granule_shift,
            ..CoopConfig::default()
        };
        let mut c = Coop::new(mem.clone(), cfg);
        let st = c.register(DIR, LEAVES);
        prop_assert!(st == status::OK || st == status::INVAL || st == status::RANGE);
        let (b, mut s) = (SimulatedBackend::default(), Sink::default());
        for (op, a, n, v) in ops {
            let gfn = u64::from(a) % (52 * MIB / PAGE);
            match op {
                0 => { c.pin(gfn, n, MSI, &b, &mut s); }
                1 => c.scan(n % 2 == 0, &b, &mut s),
                _ => {
                    // The guest scribbles on its table (real leaves only).
                    if gfn < u64::from(LEAVES) * 1024 {
                        entry(&mem, gfn).store(v, Ordering::SeqCst);
                    }
                }
            }
            let mapped = b.ranges();
            let runs: Vec<_> = c.runs().collect();
            prop_assert_eq!(&mapped, &runs);
            prop_assert!(c.pinned_bytes() <= 3 * MIB);
            prop_assert_eq!(c.pinned_bytes(), mapped.iter().map(|r| r.1).sum::<u64>());
            for (s, l) in mapped {
                prop_assert!(GuestMemory::check_range(&mem, GuestAddress(s), l as usize, Permissions::ReadWrite));
                prop_assert!(s + l <= MSI.0 || s > MSI.1);
            }
        }
    }
}

/// The tables in coop mode: no identity map for a bypassing hardware
/// endpoint, the vendor requests only once negotiated, emulated
/// endpoints held to the pinned set, pins handed back at reset.
#[test]
fn tables_in_coop_mode() {
    use crate::tables::{FaultReason, Limits, Tables};
    let mem = ram();
    write_dir(&mem, |_| false);
    let b = Arc::new(SimulatedBackend::default());
    let mut t = Tables::new(Limits::default(), Some(b.clone()))
        .with_coop(Coop::new(mem.clone(), CoopConfig::default()));
    t.add_endpoint(8, None, true);
    t.add_endpoint(16, None, false);
    t.set_guest_ram(RAM.to_vec());
    assert!(b.is_empty(), "bypassing, but nothing identity-mapped");
    assert_eq!(t.coop_register(DIR, LEAVES).status, status::UNSUPP);
    assert_eq!(t.coop_pin(10, 1).status, status::UNSUPP);
    t.coop_acked = true;
    t.bypass_config = true;
    assert_eq!(
        t.attach(1, 8, crate::protocol::ATTACH_F_BYPASS).status,
        status::OK
    );
    assert_eq!(
        t.attach(1, 16, crate::protocol::ATTACH_F_BYPASS).status,
        status::OK
    );
    t.sync_host();
    assert!(b.is_empty());
    // Before a table, an emulated endpoint in bypass has the spec's identity.
    assert!(t.translate(16, 30 * PAGE).is_ok());
    assert_eq!(t.coop_register(DIR, LEAVES).status, status::OK);
    assert_eq!(t.coop_pin(10, 1).status, status::OK);
    assert_eq!(b.ranges(), vec![(10 * PAGE, PAGE)]);
    let m = t.translate(16, 10 * PAGE + 8).unwrap();
    assert_eq!((m.iova, m.gpa, m.len), (10 * PAGE, 10 * PAGE, PAGE));
    assert_eq!(t.translate(16, 30 * PAGE), Err(FaultReason::Mapping));
    // Idle for two scans: unpinned, and the emulated endpoint loses it.
    t.coop_scan();
    t.coop_scan();
    assert!(b.is_empty());
    assert_eq!(t.translate(16, 10 * PAGE), Err(FaultReason::Mapping));
    assert_eq!(t.coop_pin(12, 2).status, status::OK);
    t.reset();
    assert_eq!(b.len(), 1, "reset makes no host call");
    t.sync_host();
    assert!(b.is_empty(), "the deferred host work unmapped the pins");
    assert_eq!(t.residue_bytes(), 0);
    assert!(!t.coop_acked);
}
