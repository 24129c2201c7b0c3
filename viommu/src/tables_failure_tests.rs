//! Tables and host backend agree on every error path (see the module
//! docs of `tables`): a backend that fails chosen calls.

use super::tests::{attach_now, detach_now};
use super::*;
use crate::backend::{CallKind, FailingBackend};
use proptest::prelude::Strategy;

const RW: u32 = protocol::MAP_F_READ | protocol::MAP_F_WRITE;
const RAM: [(u64, u64); 2] = [(0, 0xc000_0000), (0x1_0000_0000, 0x4000_0000)];

/// Strict tables (global bypass off): hardware endpoint 8, emulated 16.
fn strict() -> (Arc<FailingBackend>, Tables) {
    let b = Arc::new(FailingBackend::default());
    let mut t = Tables::new(Limits::default(), Some(b.clone()));
    t.set_bypass(false);
    t.add_endpoint(8, None, true);
    t.add_endpoint(16, None, false);
    (b, t)
}

fn reach(b: &FailingBackend, iova: u64) -> bool {
    b.sim.dma(iova, 8, Permissions::Read).is_some()
}

fn errors(t: &Tables) -> serde_json::Value {
    t.host_errors().to_json()
}

#[test]
fn failed_host_unmap_fences_the_domain_and_keeps_the_residue() {
    let (b, mut t) = strict();
    assert_eq!(t.attach(1, 8, 0).status, status::OK);
    assert_eq!(t.attach(1, 16, 0).status, status::OK);
    assert_eq!(t.map(1, 0x10000, 0x11fff, 0x40000, RW).status, status::OK);
    assert_eq!(t.map(1, 0x20000, 0x20fff, 0x50000, RW).status, status::OK);
    b.fail_nth(CallKind::Unmap, 1);
    assert_eq!(t.unmap(1, 0x10000, 0x11fff).status, status::DEVERR);
    // The guest cannot reach the range through the tables...
    assert_eq!(t.translate(16, 0x10000), Err(FaultReason::Domain));
    assert_eq!(t.translate(16, 0x20000), Err(FaultReason::Domain), "fenced");
    // ...the host still maps it, and the tables account for that.
    assert!(reach(&b, 0x10000));
    assert_eq!(t.residue_bytes(), 0x2000);
    assert!(t.is_fenced(1));
    assert!(!reach(&b, 0x20000), "the rest of the domain is torn down");
    let e = errors(&t);
    assert_eq!(
        (e["unmap"].as_u64(), e["fenced_domains"].as_u64()),
        (Some(1), Some(1))
    );
    assert_eq!(e["residue_bytes"], 0x2000);
    assert_eq!(t.map(1, 0x30000, 0x30fff, 0, RW).status, status::DEVERR);
    assert_eq!(t.attach(1, 24, 0).status, status::NOENT);
    // The guest retries: the host unmap succeeds, the residue is gone.
    assert_eq!(t.unmap(1, 0x10000, 0x11fff).status, status::OK);
    assert!(!reach(&b, 0x10000));
    assert_eq!(t.residue_bytes(), 0);
    assert_eq!(errors(&t)["residue_bytes"], 0);
    assert!(b.sim.is_empty());
    // Still fenced until destroyed: DETACH works, a new domain is clean.
    assert_eq!(t.detach(1, 8).status, status::OK);
    assert_eq!(t.detach(1, 16).status, status::OK);
    assert_eq!(t.attach(2, 8, 0).status, status::OK);
    assert_eq!(t.map(2, 0x10000, 0x10fff, 0x40000, RW).status, status::OK);
    assert!(reach(&b, 0x10000));
}

#[test]
fn a_retried_unmap_that_fails_again_stays_an_error() {
    let (b, mut t) = strict();
    t.attach(1, 8, 0);
    t.map(1, 0x10000, 0x10fff, 0, RW);
    b.fail_always(CallKind::Unmap, true);
    assert_eq!(t.unmap(1, 0x10000, 0x10fff).status, status::DEVERR);
    assert_eq!(t.unmap(1, 0x10000, 0x10fff).status, status::DEVERR);
    assert_eq!(t.unmap(1, 0, 0xffff).status, status::OK, "no residue there");
    assert!(reach(&b, 0x10000));
    assert_eq!(errors(&t)["unmap"], 2);
    b.fail_always(CallKind::Unmap, false);
    assert_eq!(t.unmap(1, 0, u64::MAX - 1).status, status::OK);
    assert!(b.sim.is_empty());
}

#[test]
fn failed_attach_replay_is_not_answered_ok() {
    let (b, mut t) = strict();
    // An emulated endpoint builds the domain; the hardware one joins.
    t.attach(1, 16, 0);
    t.map(1, 0x10000, 0x10fff, 0x1000, RW);
    t.map(1, 0x20000, 0x20fff, 0x2000, RW);
    t.map(1, 0x30000, 0x30fff, 0x3000, RW);
    b.fail_nth(CallKind::Map, 2);
    assert_eq!(t.attach(1, 8, 0).status, status::DEVERR);
    assert!(b.sim.is_empty(), "the replayed part is rolled back");
    assert!(t.is_fenced(1));
    assert_eq!(t.domain_of(8), Some(1), "fenced, not bypassing");
    assert_eq!(t.translate(16, 0x10000), Err(FaultReason::Domain));
    let e = errors(&t);
    assert_eq!(
        (e["replay"].as_u64(), e["map"].as_u64()),
        (Some(1), Some(1))
    );
    // The rollback itself fails: the replayed mapping is residue.
    let (b, mut t) = strict();
    t.attach(1, 16, 0);
    t.map(1, 0x10000, 0x10fff, 0x1000, RW);
    t.map(1, 0x20000, 0x20fff, 0x2000, RW);
    // Unmap 1 cleans up after the failed map (fine), 2 rolls back the
    // first replayed mapping (fails).
    b.fail_nth(CallKind::Map, 2);
    b.fail_nth(CallKind::Unmap, 2);
    assert_eq!(t.attach(1, 8, 0).status, status::DEVERR);
    assert!(reach(&b, 0x10000));
    assert_eq!(t.residue_bytes(), 0x1000);
    // Leaving for a new domain retries it before the new one is used.
    assert_eq!(t.attach(2, 8, 0).status, status::OK);
    assert!(b.sim.is_empty());
    assert_eq!(t.residue_bytes(), 0);
}

#[test]
fn detach_with_failing_unmaps_answers_ioerr_and_blocks_the_next_attach() {
    let (b, mut t) = strict();
    t.attach(1, 8, 0);
    t.attach(1, 16, 0);
    t.map(1, 0x10000, 0x10fff, 0x1000, RW);
    b.fail_always(CallKind::Unmap, true);
    // The last hardware endpoint leaves: the surviving domain is fenced.
    assert_eq!(t.detach(1, 8).status, status::DEVERR);
    assert_eq!(t.domain_of(8), None);
    assert!(t.is_fenced(1));
    assert_eq!(t.translate(16, 0x10000), Err(FaultReason::Domain));
    assert!(reach(&b, 0x10000));
    // The host address space is dirty: a new domain of 8 is fenced.
    assert_eq!(t.attach(2, 8, 0).status, status::DEVERR);
    assert!(t.is_fenced(2));
    assert_eq!(t.map(2, 0x50000, 0x50fff, 0, RW).status, status::DEVERR);
    b.fail_always(CallKind::Unmap, false);
    assert_eq!(t.attach(3, 8, 0).status, status::OK);
    assert_eq!(t.residue_bytes(), 0);
    assert_eq!(t.map(3, 0x50000, 0x50fff, 0, RW).status, status::OK);
    // Destroying a domain on detach: freed in the tables, residue in the host.
    b.fail_nth(CallKind::Unmap, 1);
    let o = t.detach(3, 8);
    assert_eq!((o.status, o.bytes), (status::DEVERR, 0x1000));
    assert_eq!(t.mapped_bytes(), 0x1000, "only domain 1's mapping is left");
    assert_eq!(t.residue_bytes(), 0x1000);
}

#[test]
fn reset_keeps_what_the_host_still_maps_and_retries_it() {
    let (b, mut t) = strict();
    t.attach(1, 8, 0);
    t.map(1, 0x10000, 0x10fff, 0x1000, RW);
    b.fail_always(CallKind::Unmap, true);
    t.reset();
    t.sync_host();
    assert_eq!(t.domain_count(), 0);
    assert_eq!(t.residue_bytes(), 0x1000);
    assert!(reach(&b, 0x10000));
    assert_eq!(errors(&t)["unmap"], 1);
    b.fail_always(CallKind::Unmap, false);
    t.reset();
    t.sync_host();
    assert_eq!(t.residue_bytes(), 0);
    assert!(b.sim.is_empty());
}

#[test]
fn identity_map_is_all_or_nothing_and_a_failed_unmap_is_residue() {
    let b = Arc::new(FailingBackend::default());
    let mut t = Tables::new(Limits::default(), Some(b.clone()));
    t.set_guest_ram(RAM.to_vec());
    t.bypass_config = true;
    // The second RAM range fails: the first is rolled back.
    b.fail_nth(CallKind::Map, 2);
    t.add_endpoint(8, None, true);
    assert!(b.sim.is_empty());
    assert_eq!(t.identity_bytes(), 0);
    assert_eq!(errors(&t)["map"], 1);
    // Retried at the next change.
    t.set_bypass(true);
    t.sync_host();
    assert_eq!(t.identity_bytes(), 4 << 30);
    // The driver clears bypass but the host keeps the identity map.
    b.fail_nth(CallKind::Unmap, 1);
    t.set_bypass(false);
    t.sync_host();
    assert_eq!(t.identity_bytes(), 0);
    assert_eq!(t.residue_bytes(), 3 << 30);
    assert!(reach(&b, 0x1000));
    // A DMA domain for the hardware endpoint first cleans it.
    assert_eq!(t.attach(1, 8, 0).status, status::OK);
    assert!(b.sim.is_empty());
    // Entering a bypass domain whose identity map fails: DEVERR, fenced.
    b.fail_nth(CallKind::Map, 1);
    assert_eq!(
        attach_now(&mut t, 2, 8, protocol::ATTACH_F_BYPASS),
        status::DEVERR
    );
    assert!(t.is_fenced(2));
    assert!(b.sim.is_empty());
    t.set_bypass(true);
    t.sync_host();
    assert!(
        b.sim.is_empty(),
        "a fenced bypass domain gets no identity map"
    );
    // New guest RAM: the old identity map's unmap fails.
    assert_eq!(detach_now(&mut t, 2, 8), status::OK);
    assert_eq!(t.identity_bytes(), 4 << 30);
    // (and its retry): residue; the new map clashes with it, rolled back.
    b.fail_nth(CallKind::Unmap, 1);
    b.fail_nth(CallKind::Unmap, 3);
    t.set_guest_ram(vec![(0, 0x1000_0000)]);
    assert_eq!(t.residue_bytes(), 3 << 30);
    assert_eq!(t.identity_bytes(), 0);
    // Once the host unmaps again, the next change settles both.
    t.set_bypass(true);
    t.sync_host();
    assert_eq!((t.residue_bytes(), t.identity_bytes()), (0, 0x1000_0000));
}

#[test]
fn a_failed_map_whose_cleanup_fails_fences_the_domain() {
    let (b, mut t) = strict();
    t.attach(1, 8, 0);
    // The host refuses the map and then the unmap that makes sure nothing
    // of it stayed (a backend may fail half-way).
    b.fail_nth(CallKind::Map, 1);
    b.fail_nth(CallKind::Unmap, 1);
    let st = t.map(1, 0x10_0000, 0x10_ffff, 0x100_0000, RW).status;
    assert_eq!(st, status::DEVERR);
    assert_eq!(t.mapped_bytes(), 0);
    assert!(t.is_fenced(1));
    assert_eq!(t.residue_bytes(), 0x1_0000);
    // A failure the cleanup settles is only an error.
    let (b, mut t) = strict();
    t.attach(1, 8, 0);
    b.fail_nth(CallKind::Map, 1);
    let st = t.map(1, 0x10_0000, 0x10_ffff, 0x100_0000, RW).status;
    assert_eq!(st, status::DEVERR);
    assert!(!t.is_fenced(1));
    assert!(b.sim.is_empty());
    assert_eq!(b.calls(CallKind::Unmap), 1, "the cleanup unmap");
    assert_eq!(t.map(1, 0x1000, 0x1fff, 0, RW).status, status::OK);
    assert_eq!(errors(&t)["map"], 1);
}

/// Random requests against a hardware endpoint (8) and an emulated one
/// (16) while the host fails random calls.
#[derive(Debug, Clone)]
enum Op {
    Attach(u32, u32),
    Detach(u32, u32),
    Map(u32, u64, u64, u64),
    Unmap(u32, u64, u64),
    Fail(bool, u64),
}

fn op() -> impl Strategy<Value = Op> {
    use proptest::prelude::*;
    let ep = prop_oneof![Just(8u32), Just(16u32)];
    let dom = 0u32..3;
    let page = 0u64..24;
    prop_oneof![
        (dom.clone(), ep.clone()).prop_map(|(d, e)| Op::Attach(d, e)),
        (dom.clone(), ep).prop_map(|(d, e)| Op::Detach(d, e)),
        (dom.clone(), page.clone(), 1u64..4, 0u64..64).prop_map(|(d, p, n, g)| Op::Map(
            d,
            p * 0x1000,
            (p + n) * 0x1000 - 1,
            g * 0x1000
        )),
        (dom, page, 1u64..8).prop_map(|(d, p, n)| Op::Unmap(d, p * 0x1000, (p + n) * 0x1000 - 1)),
        (any::<bool>(), 1u64..3).prop_map(|(m, n)| Op::Fail(m, n)),
    ]
}

/// What the host may map at `iova`: a mapping of a live (unfenced)
/// domain of the hardware endpoint, or accounted residue.
fn host_may_map(t: &Tables, iova: u64) -> Option<Option<u64>> {
    if t.residue
        .range(..=iova)
        .next_back()
        .is_some_and(|(_, &l)| l >= iova)
    {
        return Some(None); // anything: accounted as still mapped
    }
    let d = t.endpoints.get(&8)?.domain?;
    let dom = t.domains.get(&d)?;
    if dom.fenced {
        return None;
    }
    let (&s, m) = dom.mappings.range(..=iova).next_back()?;
    (iova <= m.end).then_some(Some(m.phys + (iova - s)))
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(256))]
    #[test]
    fn the_host_never_maps_what_the_tables_do_not_account_for(
        ops in proptest::collection::vec(op(), 1..60)
    ) {
        let (b, mut t) = strict();
        for o in ops {
            let st = match o {
                Op::Attach(d, e) => t.attach(d, e, 0).status,
                Op::Detach(d, e) => t.detach(d, e).status,
                Op::Map(d, s, e, p) => t.map(d, s, e, p, RW).status,
                Op::Unmap(d, s, e) => t.unmap(d, s, e).status,
                Op::Fail(map, n) => {
                    let kind = if map { CallKind::Map } else { CallKind::Unmap };
                    b.fail_nth(kind, n);
                    status::OK
                }
            };
            proptest::prop_assert!(st <= status::NOMEM);
            for page in 0..32u64 {
                let iova = page * 0x1000;
                let host = b
                    .sim
                    .dma(iova, 1, Permissions::Read)
                    .or_else(|| b.sim.dma(iova, 1, Permissions::Write));
                let allowed = host_may_map(&t, iova);
                match (host, allowed) {
                    (None, _) | (Some(_), Some(None)) => {}
                    (Some(g), Some(Some(want))) => proptest::prop_assert_eq!(g, want),
                    (Some(g), None) => proptest::prop_assert!(
                        false,
                        "host maps {:#x} -> {:#x}, unaccounted", iova, g
                    ),
                }
                // A live hardware domain's mapping is in the host.
                if let Some(Some(want)) = allowed {
                    proptest::prop_assert_eq!(host, Some(want), "iova {:#x}", iova);
                }
                // The emulated endpoint never translates through a fence.
                if let Some(d) = t.endpoints[&16].domain {
                    if t.domains[&d].fenced {
                        proptest::prop_assert!(t.translate(16, iova).is_err());
                    }
                }
            }
            proptest::prop_assert_eq!(
                t.host_errors().to_json()["residue_bytes"].as_u64(),
                Some(t.residue_bytes())
            );
        }
    }
}
