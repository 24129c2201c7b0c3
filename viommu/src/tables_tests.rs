use super::*;
use crate::backend::{BackendError, HostIommu, SimulatedBackend};
use proptest::prelude::*;

const RW: u32 = protocol::MAP_F_READ | protocol::MAP_F_WRITE;

fn tables() -> Tables {
    let mut t = Tables::new(Limits::default(), None);
    t.add_endpoint(8, None, false);
    t.add_endpoint(16, None, false);
    t
}

#[test]
fn attach_rules() {
    let mut t = tables();
    assert_eq!(t.attach(1, 99, 0).status, status::NOENT);
    assert_eq!(t.attach(0x10000, 8, 0).status, status::RANGE);
    assert_eq!(t.attach(1, 8, 2).status, status::INVAL, "unknown flag");
    assert_eq!(
        t.attach(1, 8, protocol::ATTACH_F_BYPASS).status,
        status::INVAL,
        "bypass not negotiated"
    );
    assert_eq!(t.attach(1, 8, 0).status, status::OK);
    assert_eq!(t.attach(1, 8, 0).status, status::OK, "idempotent");
    t.bypass_config = true;
    assert_eq!(
        t.attach(1, 16, protocol::ATTACH_F_BYPASS).status,
        status::INVAL,
        "type mismatch"
    );
    assert_eq!(
        t.attach(2, 16, protocol::ATTACH_F_BYPASS).status,
        status::OK
    );
    assert_eq!(
        t.translate(16, 0x1234_5678)
            .map(|m| m.gpa + (0x1234_5678 - m.iova)),
        Ok(0x1234_5678)
    );
    // Moving endpoint 8 to domain 3 destroys domain 1 and its mappings.
    assert_eq!(t.map(1, 0, 0xfff, 0x1000, RW).status, status::OK);
    let o = t.attach(3, 8, 0);
    assert_eq!(
        o,
        Outcome {
            status: status::OK,
            bytes: 0x1000
        }
    );
    assert_eq!(t.map(1, 0, 0xfff, 0, RW).status, status::NOENT);
    assert_eq!(t.domain_count(), 2);
}

#[test]
fn detach_rules() {
    let mut t = tables();
    t.attach(1, 8, 0);
    assert_eq!(t.detach(1, 99).status, status::NOENT);
    assert_eq!(t.detach(5, 8).status, status::INVAL, "no such domain");
    t.attach(2, 16, 0);
    assert_eq!(t.detach(2, 8).status, status::INVAL, "not attached there");
    assert_eq!(t.detach(1, 8).status, status::OK);
    assert_eq!(t.domain_of(8), None);
    t.set_bypass(false);
    assert_eq!(t.translate(8, 0x1000), Err(FaultReason::Domain));
    t.set_bypass(true);
    assert!(t.translate(8, 0x1000).is_ok(), "global bypass");
}

#[test]
fn map_rules() {
    let mut t = tables();
    t.attach(1, 8, 0);
    assert_eq!(t.map(7, 0, 0xfff, 0, RW).status, status::NOENT);
    assert_eq!(
        t.map(1, 0, 0xfff, 0, 8).status,
        status::INVAL,
        "unknown flag"
    );
    assert_eq!(
        t.map(1, 0, 0xfff, 0, protocol::MAP_F_MMIO).status,
        status::INVAL,
        "MMIO not negotiated"
    );
    assert_eq!(
        t.map(1, 0x2000, 0x1fff, 0, RW).status,
        status::INVAL,
        "end before start"
    );
    assert_eq!(
        t.map(1, 0x800, 0x17ff, 0, RW).status,
        status::RANGE,
        "unaligned"
    );
    assert_eq!(
        t.map(1, 0, 0xfff, 0x800, RW).status,
        status::RANGE,
        "unaligned phys"
    );
    assert_eq!(
        t.map(1, 1 << 48, (1 << 48) + 0xfff, 0, RW).status,
        status::RANGE,
        "beyond input range"
    );
    assert_eq!(t.map(1, 0, u64::MAX, 0, RW).status, status::RANGE);
    assert_eq!(
        t.map(1, 0, 0x1fff, !0xfff, RW).status,
        status::RANGE,
        "phys wraps"
    );
    assert_eq!(
        t.map(1, 0x1000, 0x2fff, 0x10000, protocol::MAP_F_READ)
            .status,
        status::OK
    );
    assert_eq!(
        t.map(1, 0x2000, 0x3fff, 0, RW).status,
        status::INVAL,
        "overlap"
    );
    let m = t.translate(8, 0x2345).unwrap();
    assert_eq!(
        (m.iova, m.gpa, m.len, m.perm),
        (0x1000, 0x10000, 0x2000, Permissions::Read)
    );
    assert_eq!(t.translate(8, 0x3000), Err(FaultReason::Mapping));
    assert_eq!(t.mapped_bytes(), 0x2000);
}

#[test]
fn unmap_rules() {
    let mut t = tables();
    t.attach(1, 8, 0);
    t.map(1, 0x1000, 0x1fff, 0, RW);
    t.map(1, 0x2000, 0x3fff, 0, RW);
    t.map(1, 0x8000, 0x8fff, 0, RW);
    assert_eq!(t.unmap(9, 0, 0xfff).status, status::NOENT);
    assert_eq!(
        t.unmap(1, 0x3000, 0x3fff).status,
        status::RANGE,
        "would split"
    );
    assert_eq!(
        t.unmap(1, 0x1000, 0x2fff).status,
        status::RANGE,
        "would split the second"
    );
    assert_eq!(t.mapped_bytes(), 0x4000, "nothing removed on RANGE");
    assert_eq!(
        t.unmap(1, 0x10000, 0x20fff),
        Outcome {
            status: status::OK,
            bytes: 0
        }
    );
    assert_eq!(
        t.unmap(1, 0, 0x7fff),
        Outcome {
            status: status::OK,
            bytes: 0x3000
        }
    );
    assert_eq!(
        t.unmap(1, 0, u64::MAX),
        Outcome {
            status: status::OK,
            bytes: 0x1000
        }
    );
    assert_eq!(t.mapped_bytes(), 0);
}

#[test]
fn hardware_endpoints_mirror_into_the_backend() {
    let b = Arc::new(SimulatedBackend::default());
    let mut t = Tables::new(Limits::default(), Some(b.clone()));
    t.add_endpoint(8, None, true);
    t.attach(1, 8, 0);
    assert_eq!(t.map(1, 0x10000, 0x11fff, 0x40000, RW).status, status::OK);
    assert_eq!(b.dma(0x11000, 64, Permissions::Write), Some(0x41000));
    assert_eq!(t.unmap(1, 0x10000, 0x11fff).status, status::OK);
    assert_eq!(
        b.dma(0x11000, 64, Permissions::Read),
        None,
        "device DMA fails after unmap"
    );
    t.map(1, 0x10000, 0x10fff, 0x40000, RW);
    t.detach(1, 8);
    assert!(b.is_empty(), "detach removes host mappings");
    // Host refuses: the guest gets DEVERR and nothing is recorded.
    b.map(0x20000, 0, 0x1000, Permissions::Read).unwrap();
    t.attach(2, 8, 0);
    assert_eq!(t.map(2, 0x20000, 0x20fff, 0, RW).status, status::DEVERR);
    assert_eq!(t.translate(8, 0x20000), Err(FaultReason::Mapping));
}

/// Guest RAM of a 4 GiB VM: 3 GiB below the PCI hole, 1 GiB above 4 GiB.
const RAM: [(u64, u64); 2] = [(0, 0xc000_0000), (0x1_0000_0000, 0x4000_0000)];

fn hw_tables(b: &Arc<SimulatedBackend>) -> Tables {
    let mut t = Tables::new(Limits::default(), Some(b.clone()));
    t.set_guest_ram(RAM.to_vec());
    t.bypass_config = true;
    t
}

/// Runs a request's deferred host work and its check, as the device
/// does before answering (`device::execute`).
pub(super) fn settle(t: &mut Tables, st: u8) -> u8 {
    t.sync_host();
    if !t.identity_settled() && st == status::OK {
        status::DEVERR
    } else {
        st
    }
}

/// ATTACH as the device answers it.
pub(super) fn attach_now(t: &mut Tables, d: u32, e: u32, f: u32) -> u8 {
    let st = t.attach(d, e, f).status;
    settle(t, st)
}

/// DETACH as the device answers it.
pub(super) fn detach_now(t: &mut Tables, d: u32, e: u32) -> u8 {
    let st = t.detach(d, e).status;
    settle(t, st)
}

fn map_calls(b: &SimulatedBackend) -> u64 {
    b.map_calls.load(std::sync::atomic::Ordering::Relaxed)
}

#[test]
fn bypass_attach_of_a_hardware_endpoint_maps_guest_ram_identity_once() {
    let b = Arc::new(SimulatedBackend::default());
    let mut t = hw_tables(&b);
    t.set_bypass(false);
    t.add_endpoint(8, None, true);
    t.add_endpoint(16, None, false);
    assert!(b.is_empty(), "unattached without global bypass: no DMA");
    let bypass = protocol::ATTACH_F_BYPASS;
    let calls = b.map_calls.load(std::sync::atomic::Ordering::Relaxed);
    assert_eq!(t.attach(1, 8, bypass).status, status::OK);
    assert_eq!(map_calls(&b), calls, "deferred: not under the lock");
    assert!(t.host_pending());
    assert_eq!(settle(&mut t, status::OK), status::OK);
    assert_eq!(
        b.dma(0x1234_5000, 64, Permissions::Write),
        Some(0x1234_5000)
    );
    assert_eq!(
        b.dma(0x1_3fff_f000, 0x1000, Permissions::Read),
        Some(0x1_3fff_f000)
    );
    assert_eq!(b.dma(0xc000_0000, 4, Permissions::Read), None, "not RAM");
    assert_eq!(t.identity_bytes(), 4 << 30);
    assert_eq!(map_calls(&b), 2, "one host map per RAM range");
    // Idempotent re-attach, an emulated endpoint joining, MAP refused in
    // a bypass domain: the host sees nothing new.
    assert_eq!(t.attach(1, 8, bypass).status, status::OK);
    assert_eq!(t.attach(1, 16, bypass).status, status::OK);
    assert_eq!(t.map(1, 0, 0xfff, 0, RW).status, status::INVAL);
    assert_eq!(map_calls(&b), 2);
    assert_eq!(t.detach(1, 8).status, status::OK);
    assert!(b.is_empty(), "detach removes the identity map");
    assert_eq!(t.identity_bytes(), 0);
    assert_eq!(
        b.dma(0x1000, 4, Permissions::Read),
        None,
        "device DMA fails once DETACH is answered"
    );
}

#[test]
fn global_bypass_and_domain_moves_keep_the_host_in_step() {
    let b = Arc::new(SimulatedBackend::default());
    let mut t = hw_tables(&b);
    // At reset the config bypass byte is 1: an unattached hardware
    // endpoint reaches all of RAM, as an emulated one would.
    t.add_endpoint(8, None, true);
    assert_eq!(b.dma(0x1000, 8, Permissions::ReadWrite), Some(0x1000));
    // Into a DMA domain: the identity map goes before the domain's
    // mappings come in (no clash).
    assert_eq!(t.attach(2, 8, 0).status, status::OK);
    assert!(b.is_empty());
    assert_eq!(t.map(2, 0x10000, 0x10fff, 0x5000, RW).status, status::OK);
    assert_eq!(b.dma(0x10000, 8, Permissions::Write), Some(0x5000));
    assert_eq!(b.dma(0x5000, 8, Permissions::Write), None);
    // Into a bypass domain: domain 2 dies, identity comes back.
    let calls = map_calls(&b);
    assert_eq!(
        attach_now(&mut t, 3, 8, protocol::ATTACH_F_BYPASS),
        status::OK
    );
    assert_eq!(b.dma(0x10000, 8, Permissions::Write), Some(0x10000));
    assert_eq!(map_calls(&b), calls + 2);
    // Detached with global bypass on: still identity, not remapped.
    assert_eq!(t.detach(3, 8).status, status::OK);
    assert_eq!(map_calls(&b), calls + 2);
    assert_eq!(t.identity_bytes(), 4 << 30);
    // The driver clears the bypass byte: nothing reachable once the
    // deferred host work ran (the device does it before its next answer).
    let calls = b.unmap_calls.load(std::sync::atomic::Ordering::Relaxed);
    t.set_bypass(false);
    assert!(t.host_pending());
    let after = b.unmap_calls.load(std::sync::atomic::Ordering::Relaxed);
    assert_eq!(after, calls, "no host call on the vCPU path");
    t.sync_host();
    assert!(b.is_empty());
    // A device reset sets it again.
    t.reset();
    t.sync_host();
    assert!(t.bypass());
    assert_eq!(t.identity_bytes(), 4 << 30);
    // An emulated-only VM never touches the backend.
    let b2 = Arc::new(SimulatedBackend::default());
    let mut t2 = hw_tables(&b2);
    t2.add_endpoint(8, None, false);
    assert_eq!(
        t2.attach(1, 8, protocol::ATTACH_F_BYPASS).status,
        status::OK
    );
    assert_eq!(map_calls(&b2), 0);
}

#[test]
fn the_msi_window_never_reaches_the_backend() {
    let b = Arc::new(SimulatedBackend::default());
    let mut t = Tables::new(Limits::default(), Some(b.clone()));
    // RAM across the window (not iovmm's layout, but nothing may rely on it).
    t.set_guest_ram(vec![(0xfe00_0000, 0x200_0000)]);
    t.add_endpoint(8, None, true);
    assert_eq!(
        b.dma(0xfedf_f000, 0x1000, Permissions::Read),
        Some(0xfedf_f000)
    );
    assert_eq!(b.dma(0xfee0_0000, 4, Permissions::Write), None);
    assert_eq!(b.dma(0xfeef_fffc, 4, Permissions::Write), None);
    assert_eq!(b.dma(0xfef0_0000, 4, Permissions::Write), Some(0xfef0_0000));
    assert_eq!(t.identity_bytes(), 0x200_0000 - 0x10_0000);
    // A guest MAP over the window (a reserved region) is refused, partly
    // or wholly inside; nothing reaches the host.
    t.set_bypass(false);
    assert_eq!(t.attach(1, 8, 0).status, status::OK);
    assert!(b.is_empty());
    let calls = map_calls(&b);
    assert_eq!(
        t.map(1, 0xfed0_0000, 0xfeff_ffff, 0x100_0000, RW).status,
        status::INVAL
    );
    assert_eq!(
        t.map(1, 0xfee0_0000, 0xfee0_0fff, 0, RW).status,
        status::INVAL
    );
    assert_eq!(t.map(1, 0xfedf_f000, 0xfedf_ffff, 0, RW).status, status::OK);
    assert_eq!(t.map(1, 0xfef0_0000, 0xfef0_0fff, 0, RW).status, status::OK);
    assert_eq!(map_calls(&b), calls + 2);
    assert_eq!(t.mapped_bytes(), 0x2000);
}

/// A backend whose unmaps fail, to see the guest told so.
struct FailingUnmap(SimulatedBackend);

impl HostIommu for FailingUnmap {
    fn map(&self, iova: u64, gpa: u64, len: u64, p: Permissions) -> Result<(), BackendError> {
        self.0.map(iova, gpa, len, p)
    }
    fn unmap(&self, _iova: u64, _len: u64) -> Result<u64, BackendError> {
        Err(BackendError::Host("EIO".into()))
    }
}

#[test]
fn unmap_status_reflects_the_host_unmap() {
    let b = Arc::new(FailingUnmap(SimulatedBackend::default()));
    let mut t = Tables::new(Limits::default(), Some(b.clone()));
    t.set_bypass(false);
    t.add_endpoint(8, None, true);
    t.attach(1, 8, 0);
    assert_eq!(t.map(1, 0x1000, 0x1fff, 0x1000, RW).status, status::OK);
    assert_eq!(t.unmap(1, 0x1000, 0x1fff).status, status::DEVERR);
}

#[test]
fn reset_forgets_everything() {
    let mut t = tables();
    t.attach(1, 8, 0);
    t.map(1, 0, 0xfff, 0, RW);
    t.reset();
    assert_eq!(t.domain_count(), 0);
    assert_eq!(t.mapped_bytes(), 0);
    assert_eq!(t.domain_of(8), None);
}

/// The reference model: per endpoint, page → (gpa page, flags), rebuilt
/// naively from a list of domains.
#[derive(Default, Clone)]
struct Model {
    eps: std::collections::HashMap<u32, u32>,
    maps: std::collections::HashMap<u32, Vec<(u64, u64, u64, u32)>>,
}

impl Model {
    fn lookup(&self, ep: u32, iova: u64) -> Option<(u64, u32)> {
        let d = self.eps.get(&ep)?;
        self.maps
            .get(d)?
            .iter()
            .find(|(s, e, _, _)| *s <= iova && iova <= *e)
            .map(|(s, _, p, f)| (p + (iova - s), *f))
    }
}

#[derive(Debug, Clone)]
enum Op {
    Attach(u32, u32),
    Detach(u32, u32),
    Map(u32, u64, u64, u64, u32),
    Unmap(u32, u64, u64),
}

fn op() -> impl Strategy<Value = Op> {
    // 40 is not an endpoint of the IOMMU.
    let ep = prop_oneof![Just(8u32), Just(16u32), Just(24u32), Just(40u32)];
    let dom = 0u32..4;
    let page = 0u64..32;
    prop_oneof![
        (dom.clone(), ep.clone()).prop_map(|(d, e)| Op::Attach(d, e)),
        (dom.clone(), ep).prop_map(|(d, e)| Op::Detach(d, e)),
        (dom.clone(), page.clone(), 1u64..4, 0u64..64, 1u32..4).prop_map(
            |(d, p, n, g, f)| Op::Map(d, p * 0x1000, (p + n) * 0x1000 - 1, g * 0x1000, f)
        ),
        (dom, page, 1u64..8).prop_map(|(d, p, n)| Op::Unmap(d, p * 0x1000, (p + n) * 0x1000 - 1)),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]
    #[test]
    fn tables_translate_like_the_reference_model(ops in proptest::collection::vec(op(), 1..60)) {
        // An MSI window (reserved region) inside the pages the ops use.
        let limits = Limits::default().with_msi_window(0x14000, 0x15fff).unwrap();
        let mut t = Tables::new(limits, None);
        for ep in [8, 16, 24] {
            t.add_endpoint(ep, None, false);
        }
        t.set_bypass(false);
        let mut m = Model::default();
        for o in ops {
            match o {
                Op::Attach(d, e) => {
                    let st = t.attach(d, e, 0).status;
                    prop_assert_eq!(st, if e == 40 { status::NOENT } else { status::OK });
                    if st == status::OK {
                        if let Some(old) = m.eps.insert(e, d) {
                            if old != d && !m.eps.values().any(|v| *v == old) {
                                m.maps.remove(&old);
                            }
                        }
                        m.maps.entry(d).or_default();
                    }
                }
                Op::Detach(d, e) => {
                    let st = t.detach(d, e).status;
                    let expect = if e == 40 {
                        status::NOENT
                    } else if m.eps.get(&e) != Some(&d) {
                        status::INVAL
                    } else {
                        status::OK
                    };
                    prop_assert_eq!(st, expect);
                    if st == status::OK {
                        m.eps.remove(&e);
                        if !m.eps.values().any(|v| *v == d) {
                            m.maps.remove(&d);
                        }
                    }
                }
                Op::Map(d, s, e, p, f) => {
                    let st = t.map(d, s, e, p, f).status;
                    let overlap = m.maps.get(&d).is_some_and(|v| v.iter().any(|(a, b, _, _)| *a <= e && s <= *b));
                    let msi = s <= 0x15fff && 0x14000 <= e;
                    let expect = if !m.maps.contains_key(&d) { status::NOENT } else if overlap || msi { status::INVAL } else { status::OK };
                    prop_assert_eq!(st, expect);
                    if st == status::OK {
                        m.maps.get_mut(&d).unwrap().push((s, e, p, f));
                    }
                }
                Op::Unmap(d, s, e) => {
                    let st = t.unmap(d, s, e).status;
                    if let Some(v) = m.maps.get_mut(&d) {
                        let split = v.iter().any(|(a, b, _, _)| *a <= e && s <= *b && (*a < s || *b > e));
                        prop_assert_eq!(st, if split { status::RANGE } else { status::OK });
                        if !split {
                            v.retain(|(a, b, _, _)| !(s <= *a && *b <= e));
                        }
                    } else {
                        prop_assert_eq!(st, status::NOENT);
                    }
                }
            }
            for ep in [8u32, 16, 24] {
                for page in 0..40u64 {
                    let iova = page * 0x1000 + 0x123;
                    let got = t.translate(ep, iova).ok().map(|x| (x.gpa + (iova - x.iova), match x.perm {
                        Permissions::Read => 1, Permissions::Write => 2, Permissions::ReadWrite => 3, Permissions::No => 0,
                    }));
                    prop_assert_eq!(got, m.lookup(ep, iova), "ep {} iova {:#x}", ep, iova);
                }
            }
        }
    }
}

#[test]
fn extreme_limits_never_overflow() {
    let msi = (0x1000_0000, 0x1000_0fff);
    let l = Limits::new((0, u64::MAX - 1), (u32::MAX, u32::MAX), 1, msi).unwrap();
    let mut t = Tables::new(l, None);
    t.add_endpoint(8, None, false);
    assert_eq!(t.attach(u32::MAX, 8, 0).status, status::OK);
    assert_eq!(t.attach(0, 8, 0).status, status::RANGE);
    // The whole input range but for its last byte: not a granule multiple.
    assert_eq!(
        t.map(u32::MAX, 0, u64::MAX - 1, 0, RW).status,
        status::RANGE
    );
    assert_eq!(t.map(u32::MAX, 0, u64::MAX, 0, RW).status, status::RANGE);
    let top = (u64::MAX - 1) & !0xfff;
    assert_eq!(
        t.map(u32::MAX, top - 0x1000, top - 1, 0, RW).status,
        status::OK
    );
    assert_eq!(
        t.map(u32::MAX, 0, 0xfff, 0, RW).status,
        status::NOMEM,
        "max 1"
    );
    assert_eq!(t.unmap(u32::MAX, 0, u64::MAX).status, status::OK);
    assert_eq!(t.mapped_bytes(), 0);
}
