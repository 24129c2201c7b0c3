//! The state of the virtual IOMMU: endpoints, domains and their mappings,
//! and the request semantics of the virtio-iommu spec applied to them.
//!
//! Every guest request ends up in one method here, which returns the
//! spec's status code. Changes that shrink what an endpoint may reach
//! (UNMAP, DETACH, re-ATTACH) invalidate the endpoints' IOTLBs and the host
//! backend before the method returns, so the answer to the guest is only
//! sent once no device can use the old translation any more.
//!
//! Hardware endpoints (VFIO-assigned functions) cannot ask for
//! translations: their DMA goes through the host IOMMU, so the tables keep
//! the [`HostIommu`] backend equal to what the guest asked for them:
//!
//! - in a translated domain, the domain's mappings (MAP/UNMAP mirrored
//!   synchronously, so an UNMAP is answered only after the host unmap
//!   returned);
//! - while bypassing (unattached with the config `bypass` set, or in a
//!   bypass domain), an identity map of guest RAM ([`Tables::set_guest_ram`]),
//!   made once when the first hardware endpoint starts bypassing and removed
//!   when none does any more.
//!
//! # When the host fails
//!
//! A failed host call must never look like success: the guest is told
//! (DEVERR) and the device must not keep reaching what the guest believes
//! protected. The policy:
//!
//! - a range whose host **unmap** fails leaves the tables at once (the
//!   emulated endpoints' IOTLBs are invalidated, their translation faults)
//!   but is kept as host *residue*: accounted as still mapped in the host
//!   ([`Tables::residue_bytes`]), retried by a later UNMAP covering it, by
//!   every ATTACH of a hardware endpoint and by the deferred host work
//!   after a reset or bypass write, and dropped only once the host unmap
//!   succeeded;
//! - whenever the host holds a mapping the guest did not (or no longer)
//!   ask for, or lacks one the guest was told is there, the domain
//!   concerned is **fenced** until it is destroyed or the device reset:
//!   its endpoints' translation faults (FaultReason::Domain), its other
//!   host mappings are torn down (failures become residue), MAP and
//!   ATTACH to it answer DEVERR, UNMAP and DETACH still work (UNMAP
//!   retries the residue in its range and answers OK only once none is
//!   left there). This covers a failed UNMAP, a DETACH/domain destruction
//!   whose unmaps fail, a failed MAP whose rollback fails, an ATTACH whose
//!   replay of the domain's mappings fails (rolled back; the endpoint stays
//!   in the fenced domain rather than falling back to bypass) and an
//!   ATTACH of a hardware endpoint while residue is left after a retry
//!   (its one host address space is not clean);
//! - the identity map is all or nothing: a failed identity map is rolled
//!   back (and retried at the next change), a failed identity unmap
//!   becomes residue.
//!
//! Every failure is counted in [`HostErrors`] (stats JSON `host_errors`).
//!
//! # No host calls on a vCPU thread
//!
//! [`Tables::set_bypass`] and [`Tables::reset`] run on a vCPU thread
//! under the tables' write lock, so they make no host call: they mark
//! host work pending, which [`Tables::take_host_work`] /
//! [`HostWork::run`] / [`Tables::finish_host_work`] do later with the
//! tables unlocked; [`crate::host_sync`] says where and why that stays
//! correct. The identity map a request needs is deferred the same way
//! (the device runs it unlocked before answering, then asks
//! [`Tables::identity_settled`]). Every other host call happens while a
//! request is handled, on the device worker.
//!
//! The MSI window ([`Limits::msi_window`]) is never mapped in the backend:
//! host interrupt remapping owns it. Every hardware endpoint shares the one
//! backend (one host address space), so only one of them may be behind the
//! IOMMU; the VMM enforces that.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::Ordering;
use std::sync::Arc;

use devices::dma::{DmaIotlb, DmaMapping};
use vm_memory::Permissions;

use crate::backend::{HostErrors, HostIommu};
use crate::coop::Coop;
use crate::protocol::{self, status};

pub use crate::limits::{Limits, LimitsError};

#[path = "tables_coop.rs"]
mod coop;
#[path = "tables_host.rs"]
mod host;
pub use host::{HostDone, HostWork};

/// Granule of mappings (4 KiB).
pub const GRANULE: u64 = 0x1000;
/// Size of the identity translation handed out for bypassed endpoints.
const IDENTITY_CHUNK: u64 = 2 << 20;

/// One mapping of a domain, keyed by its first IOVA.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Mapping {
    /// Last IOVA (inclusive).
    pub end: u64,
    /// Guest-physical address of the first IOVA.
    pub phys: u64,
    /// `MAP_F_*` flags.
    pub flags: u32,
}

#[derive(Default)]
struct Domain {
    bypass: bool,
    /// Host and tables disagreed: no DMA until destroyed or reset.
    fenced: bool,
    mappings: BTreeMap<u64, Mapping>,
    endpoints: BTreeSet<u32>,
}

/// An endpoint the IOMMU manages.
#[derive(Default)]
struct Endpoint {
    domain: Option<u32>,
    iotlb: Option<DmaIotlb>,
    /// DMA done by hardware through the host backend.
    hardware: bool,
}

/// Why a translation failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FaultReason {
    /// The endpoint has no domain and bypass is off (or it is unknown).
    Domain,
    /// No mapping covers the address.
    Mapping,
}

/// What a request changed, for the counters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Outcome {
    /// The status to return.
    pub status: u8,
    /// Bytes mapped (MAP) or unmapped (UNMAP, DETACH of the last endpoint).
    pub bytes: u64,
}

impl Outcome {
    fn status(status: u8) -> Self {
        Outcome { status, bytes: 0 }
    }
}

/// Endpoints, domains and mappings.
pub struct Tables {
    limits: Limits,
    domains: BTreeMap<u32, Domain>,
    endpoints: BTreeMap<u32, Endpoint>,
    backend: Option<Arc<dyn HostIommu>>,
    /// The config `bypass` byte: unattached endpoints bypass translation.
    bypass: bool,
    /// Driver accepted BYPASS_CONFIG (ATTACH may carry the bypass flag).
    pub bypass_config: bool,
    /// Driver accepted the MMIO map flag.
    pub mmio: bool,
    mapped_bytes: u128,
    /// Guest RAM as `(gpa, len)`: what a bypassing hardware endpoint reaches.
    guest_ram: Vec<(u64, u64)>,
    /// Identity ranges `(start, last)` currently mapped in the backend.
    identity: Vec<(u64, u64)>,
    /// Host residue: first IOVA → last IOVA of ranges the host still maps
    /// although the tables removed them (failed unmaps).
    residue: BTreeMap<u64, u64>,
    errors: Arc<HostErrors>,
    /// Host work deferred by [`Tables::set_bypass`] or [`Tables::reset`]
    /// waits ([`Tables::take_host_work`]).
    host_pending: bool,
    /// Bumped by every deferring change, so host work planned before one
    /// is redone.
    host_gen: u64,
    /// UNMAP's list of removed mappings, kept so a request allocates nothing.
    victims: Vec<(u64, u64)>,
    /// Cooperative mode, when configured ([`Tables::with_coop`]).
    coop: Option<Coop>,
    /// Driver accepted [`protocol::F_IOVMM_COOP`].
    pub coop_acked: bool,
}

/// The parts of `[start, last]` outside the inclusive `window`, as
/// inclusive ranges (at most two). Never overflows.
fn outside(start: u64, last: u64, window: (u64, u64)) -> impl Iterator<Item = (u64, u64)> {
    let (lo, hi) = window;
    let (left, right) = if last < lo || start > hi || hi < lo {
        (Some((start, last)), None)
    } else {
        (
            (start < lo).then(|| (start, lo - 1)),
            (last > hi).then(|| (hi + 1, last)),
        )
    };
    left.into_iter().chain(right)
}

fn perm(flags: u32) -> Permissions {
    match (
        flags & protocol::MAP_F_READ != 0,
        flags & protocol::MAP_F_WRITE != 0,
    ) {
        (true, true) => Permissions::ReadWrite,
        (true, false) => Permissions::Read,
        (false, true) => Permissions::Write,
        (false, false) => Permissions::No,
    }
}

impl Tables {
    /// Empty tables (no endpoints, global bypass on as at reset).
    pub fn new(limits: Limits, backend: Option<Arc<dyn HostIommu>>) -> Self {
        Tables {
            limits,
            domains: BTreeMap::new(),
            endpoints: BTreeMap::new(),
            backend,
            bypass: true,
            bypass_config: false,
            mmio: false,
            mapped_bytes: 0,
            guest_ram: Vec::new(),
            identity: Vec::new(),
            residue: BTreeMap::new(),
            errors: Arc::new(HostErrors::default()),
            host_pending: false,
            host_gen: 0,
            victims: Vec::new(),
            coop: None,
            coop_acked: false,
        }
    }

    /// Declares guest RAM as `(gpa, len)` ranges: while a hardware endpoint
    /// bypasses translation, the backend holds an identity map of them
    /// (granule aligned, minus the MSI window). Without it, bypassing
    /// hardware endpoints reach nothing.
    ///
    /// Setup time only: the host calls run here and now.
    pub fn set_guest_ram(&mut self, ranges: Vec<(u64, u64)>) {
        self.unmap_identity();
        self.guest_ram = ranges;
        self.sync_identity();
        self.sync_host();
    }

    /// The config `bypass` byte.
    pub fn bypass(&self) -> bool {
        self.bypass
    }

    /// Sets the config `bypass` byte (driver write with BYPASS_CONFIG):
    /// unattached emulated endpoints bypass translation while it is set,
    /// from now on. Makes no host call (it runs on a vCPU thread): the
    /// identity map of hardware endpoints follows by the deferred host
    /// work ([`Tables::take_host_work`]), which the device does before it
    /// answers its next request.
    pub fn set_bypass(&mut self, on: bool) {
        self.bypass = on;
        self.defer_host();
    }

    /// The fixed limits.
    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// Declares endpoint `id` with the IOTLB of its emulated device (if
    /// any) and whether its DMA is done by hardware through the backend.
    pub fn add_endpoint(&mut self, id: u32, iotlb: Option<DmaIotlb>, hardware: bool) {
        self.endpoints.insert(
            id,
            Endpoint {
                domain: None,
                iotlb,
                hardware,
            },
        );
        // Setup time only: the host calls run here and now.
        self.sync_identity();
        self.sync_host();
    }

    /// Bytes currently mapped over all domains (capped at `u64::MAX`: the
    /// sum over many domains can exceed 64 bits).
    pub fn mapped_bytes(&self) -> u64 {
        u64::try_from(self.mapped_bytes).unwrap_or(u64::MAX)
    }

    /// Number of domains.
    pub fn domain_count(&self) -> usize {
        self.domains.len()
    }

    /// The domain `endpoint` is attached to.
    pub fn domain_of(&self, endpoint: u32) -> Option<u32> {
        self.endpoints.get(&endpoint)?.domain
    }

    /// Back to the reset state: every endpoint detached, every domain gone.
    /// Makes no host call (it runs on a vCPU thread): what the host still
    /// maps of the domains becomes residue, removed with the identity map
    /// update by the deferred host work ([`Tables::take_host_work`]).
    /// Removing it later loses no protection: after reset the bypass byte
    /// is set and every endpoint reaches all guest RAM.
    pub fn reset(&mut self) {
        let mut held = Vec::new();
        for d in self.domains.values() {
            if !d.fenced && self.domain_has_hardware(d) {
                held.extend(d.mappings.iter().map(|(&s, m)| (s, m.end)));
            }
        }
        for (s, l) in held {
            self.add_residue(s, l);
        }
        self.update_residue_gauge();
        self.domains.clear();
        let ids: Vec<u32> = self.endpoints.keys().copied().collect();
        for ep in ids {
            if let Some(e) = self.endpoints.get_mut(&ep) {
                e.domain = None;
            }
            self.invalidate(ep, None);
        }
        self.mapped_bytes = 0;
        self.bypass = true;
        self.bypass_config = false;
        self.mmio = false;
        self.coop_reset();
        self.defer_host();
    }

    fn invalidate(&self, endpoint: u32, range: Option<(u64, u64)>) {
        if let Some(tlb) = self.endpoints.get(&endpoint).and_then(|e| e.iotlb.as_ref()) {
            match range {
                Some((start, end)) => tlb.invalidate(start, end - start + 1),
                None => tlb.invalidate_all(),
            }
        }
    }

    fn domain_has_hardware(&self, d: &Domain) -> bool {
        d.endpoints
            .iter()
            .any(|e| self.endpoints.get(e).is_some_and(|e| e.hardware))
    }

    /// Detaches `ep` from domain `d`, destroying `d` when it empties; the
    /// domain's mappings leave the backend with its last hardware
    /// endpoint (unless fenced: then they already left). Returns the bytes
    /// unmapped by destroying it and whether the host unmapped everything
    /// (failures are residue; a surviving domain is fenced). Does not
    /// touch the identity map (callers sync it).
    fn remove_from_domain(&mut self, ep: u32, d: u32) -> (u64, bool) {
        if let Some(e) = self.endpoints.get_mut(&ep) {
            e.domain = None;
        }
        self.invalidate(ep, None);
        let Some(dom) = self.domains.get(&d) else {
            return (0, true);
        };
        let had_hw = !dom.fenced && self.domain_has_hardware(dom);
        let Some(dom) = self.domains.get_mut(&d) else {
            return (0, true);
        };
        dom.endpoints.remove(&ep);
        let mut ok = true;
        let dom = &self.domains[&d];
        if had_hw && !self.domain_has_hardware(dom) {
            let ranges: Vec<(u64, u64)> = dom.mappings.iter().map(|(&s, m)| (s, m.end)).collect();
            for (s, l) in ranges {
                ok &= self.host_unmap(s, l, "detach");
            }
        }
        let dom = &self.domains[&d];
        if dom.endpoints.is_empty() {
            let freed: u64 = dom.mappings.iter().map(|(s, m)| m.end - s + 1).sum();
            self.domains.remove(&d);
            self.mapped_bytes -= u128::from(freed);
            return (freed, ok);
        }
        if !ok {
            self.fence(d);
        }
        (0, ok)
    }

    /// ATTACH.
    pub fn attach(&mut self, domain: u32, endpoint: u32, flags: u32) -> Outcome {
        if !self.endpoints.contains_key(&endpoint) {
            return Outcome::status(status::NOENT);
        }
        let bypass = flags & protocol::ATTACH_F_BYPASS != 0;
        if flags & !protocol::ATTACH_F_BYPASS != 0 || (bypass && !self.bypass_config) {
            return Outcome::status(status::INVAL);
        }
        if domain < self.limits.domain_start() || domain > self.limits.domain_end() {
            return Outcome::status(status::RANGE);
        }
        if let Some(d) = self.domains.get(&domain) {
            if d.bypass != bypass {
                return Outcome::status(status::INVAL);
            }
            if d.fenced {
                return Outcome::status(status::DEVERR);
            }
        }
        let mut freed = 0;
        match self.endpoints[&endpoint].domain {
            Some(cur) if cur == domain => return Outcome::status(status::OK),
            // Host failures of leaving `cur` are residue, retried below.
            Some(cur) => freed = self.remove_from_domain(endpoint, cur).0,
            None => self.invalidate(endpoint, None),
        }
        let hw = self.endpoints[&endpoint].hardware;
        let had_hw = self
            .domains
            .get(&domain)
            .is_some_and(|d| self.domain_has_hardware(d));
        let dom = self.domains.entry(domain).or_insert_with(|| Domain {
            bypass,
            ..Default::default()
        });
        dom.endpoints.insert(endpoint);
        if let Some(e) = self.endpoints.get_mut(&endpoint) {
            e.domain = Some(domain);
        }
        // Identity first: leaving bypass must clear the address space
        // before the domain's mappings go in (and entering it maps RAM).
        let mut ok = self.sync_identity();
        if hw {
            // The one host address space must be clean of residue.
            ok &= self.retry_residue(0, u64::MAX);
        }
        if ok && hw && !had_hw {
            if let Some(b) = self.backend.clone() {
                let ranges: Vec<(u64, Mapping)> = self.domains[&domain]
                    .mappings
                    .iter()
                    .map(|(&s, m)| (s, *m))
                    .collect();
                let mut done = Vec::new();
                for (start, m) in ranges {
                    if self
                        .backend_map(&*b, start, m.end, m.phys, m.flags)
                        .is_err()
                    {
                        tracing::error!("host IOMMU: replay of domain {domain} failed on attach");
                        self.errors.replay.fetch_add(1, Ordering::Relaxed);
                        for (s, l) in done {
                            self.host_unmap(s, l, "replay rollback");
                        }
                        ok = false;
                        break;
                    }
                    done.push((start, m.end));
                }
            }
        }
        if !ok {
            // Rolled back: fencing finds nothing of the domain in the host.
            if let Some(d) = self.domains.get_mut(&domain) {
                if hw && !had_hw {
                    d.fenced = true;
                    self.errors.fenced_domains.fetch_add(1, Ordering::Relaxed);
                    let eps: Vec<u32> = d.endpoints.iter().copied().collect();
                    for ep in eps {
                        self.invalidate(ep, None);
                    }
                } else {
                    self.fence(domain);
                }
            }
            // A fenced bypass domain wants no identity map.
            self.sync_identity();
            return Outcome {
                status: status::DEVERR,
                bytes: freed,
            };
        }
        Outcome {
            status: status::OK,
            bytes: freed,
        }
    }

    /// DETACH. The endpoint leaves the domain even when the host fails to
    /// unmap (answered DEVERR; the failures are residue).
    pub fn detach(&mut self, domain: u32, endpoint: u32) -> Outcome {
        let Some(ep) = self.endpoints.get(&endpoint) else {
            return Outcome::status(status::NOENT);
        };
        // An unknown domain, or not this endpoint's: INVAL (5.13.6.4).
        if !self.domains.contains_key(&domain) || ep.domain != Some(domain) {
            return Outcome::status(status::INVAL);
        }
        let (freed, ok) = self.remove_from_domain(endpoint, domain);
        let ok = self.sync_identity() && ok;
        Outcome {
            status: if ok { status::OK } else { status::DEVERR },
            bytes: freed,
        }
    }

    /// MAP `[virt_start, virt_end]` to `phys_start`.
    pub fn map(
        &mut self,
        domain: u32,
        virt_start: u64,
        virt_end: u64,
        phys: u64,
        flags: u32,
    ) -> Outcome {
        let known = protocol::MAP_F_READ | protocol::MAP_F_WRITE | protocol::MAP_F_MMIO;
        if flags & !known != 0 || (flags & protocol::MAP_F_MMIO != 0 && !self.mmio) {
            return Outcome::status(status::INVAL);
        }
        let Some(dom) = self.domains.get(&domain) else {
            return Outcome::status(status::NOENT);
        };
        if dom.bypass || virt_end < virt_start {
            return Outcome::status(status::INVAL);
        }
        if virt_start < self.limits.input_start() || virt_end > self.limits.input_end() {
            return Outcome::status(status::RANGE);
        }
        // input_end < 2^64 - 1, so this cannot overflow.
        let len = virt_end - virt_start + 1;
        let aligned = (virt_start | phys).is_multiple_of(GRANULE) && len.is_multiple_of(GRANULE);
        if !aligned || phys.checked_add(len - 1).is_none() {
            return Outcome::status(status::RANGE);
        }
        // The MSI window is a reserved region (PROBE RESV_MEM): 5.13.6.8
        // says the device SHOULD reject a MAP over it; INVAL.
        let (lo, hi) = self.limits.msi_window();
        if virt_start <= hi && lo <= virt_end {
            return Outcome::status(status::INVAL);
        }
        let overlaps = dom
            .mappings
            .range(..=virt_end)
            .next_back()
            .is_some_and(|(_, m)| m.end >= virt_start);
        if overlaps {
            return Outcome::status(status::INVAL);
        }
        if dom.fenced {
            return Outcome::status(status::DEVERR);
        }
        if dom.mappings.len() >= self.limits.max_mappings() {
            return Outcome::status(status::NOMEM);
        }
        if self.domain_has_hardware(dom) {
            if let Some(b) = self.backend.clone() {
                if let Err(residue) = self.backend_map(&*b, virt_start, virt_end, phys, flags) {
                    if residue {
                        self.fence(domain);
                    }
                    return Outcome::status(status::DEVERR);
                }
            }
        }
        let Some(dom) = self.domains.get_mut(&domain) else {
            return Outcome::status(status::NOENT);
        };
        dom.mappings.insert(
            virt_start,
            Mapping {
                end: virt_end,
                phys,
                flags,
            },
        );
        self.mapped_bytes += u128::from(len);
        Outcome {
            status: status::OK,
            bytes: len,
        }
    }

    /// UNMAP `[virt_start, virt_end]`: removes every mapping inside the
    /// range; a mapping that would be split makes the request fail with
    /// RANGE and nothing is removed. A failed host unmap answers DEVERR:
    /// the mappings still leave the tables, the host ranges stay residue
    /// and the domain is fenced; an UNMAP in a fenced domain retries the
    /// residue in its range.
    pub fn unmap(&mut self, domain: u32, virt_start: u64, virt_end: u64) -> Outcome {
        let mut victims = std::mem::take(&mut self.victims);
        victims.clear();
        let o = self.unmap_into(domain, virt_start, virt_end, &mut victims);
        self.victims = victims;
        o
    }

    fn unmap_into(
        &mut self,
        domain: u32,
        virt_start: u64,
        virt_end: u64,
        victims: &mut Vec<(u64, u64)>,
    ) -> Outcome {
        let Some(dom) = self.domains.get(&domain) else {
            return Outcome::status(status::NOENT);
        };
        if dom.bypass || virt_end < virt_start {
            return Outcome::status(status::INVAL);
        }
        // A mapping starting before the range may reach into it.
        if let Some((_, m)) = dom.mappings.range(..virt_start).next_back() {
            if m.end >= virt_start {
                return Outcome::status(status::RANGE);
            }
        }
        for (&s, m) in dom.mappings.range(virt_start..=virt_end) {
            if m.end > virt_end {
                return Outcome::status(status::RANGE);
            }
            victims.push((s, m.end));
        }
        let fenced = dom.fenced;
        let hw = !fenced && self.domain_has_hardware(dom);
        if let Some(dom) = self.domains.get_mut(&domain) {
            for (s, _) in victims.iter() {
                dom.mappings.remove(s);
            }
        }
        if let Some(dom) = self.domains.get(&domain) {
            for &ep in &dom.endpoints {
                for &(s, e) in victims.iter() {
                    self.invalidate(ep, Some((s, e)));
                }
            }
        }
        let mut freed = 0;
        let mut ok = true;
        for &(s, e) in victims.iter() {
            freed += e - s + 1;
            if hw {
                ok &= self.host_unmap(s, e, "unmap");
            }
        }
        self.mapped_bytes -= u128::from(freed);
        if !ok {
            self.fence(domain);
        } else if fenced {
            ok = self.retry_residue(virt_start, virt_end);
        }
        Outcome {
            status: if ok { status::OK } else { status::DEVERR },
            bytes: freed,
        }
    }

    /// True when `endpoint` is managed by this IOMMU (PROBE).
    pub fn has_endpoint(&self, endpoint: u32) -> bool {
        self.endpoints.contains_key(&endpoint)
    }

    /// Translates `iova` for `endpoint`: the mapping (or identity chunk)
    /// that contains it. Permissions are checked by the caller's IOTLB.
    pub fn translate(&self, endpoint: u32, iova: u64) -> Result<DmaMapping, FaultReason> {
        let ep = self.endpoints.get(&endpoint).ok_or(FaultReason::Domain)?;
        let identity = || {
            // Cooperative mode with a table: only the pinned set.
            if let Some(c) = self.coop.as_ref().filter(|c| c.registered()) {
                let (s, l) = c.run_of(iova).ok_or(FaultReason::Mapping)?;
                return Ok(DmaMapping {
                    iova: s,
                    gpa: s,
                    len: l,
                    perm: Permissions::ReadWrite,
                });
            }
            let start = iova & !(IDENTITY_CHUNK - 1);
            Ok(DmaMapping {
                iova: start,
                gpa: start,
                len: IDENTITY_CHUNK.min(u64::MAX - start),
                perm: Permissions::ReadWrite,
            })
        };
        let Some(d) = ep.domain else {
            return if self.bypass {
                identity()
            } else {
                Err(FaultReason::Domain)
            };
        };
        let dom = self.domains.get(&d).ok_or(FaultReason::Domain)?;
        if dom.fenced {
            return Err(FaultReason::Domain);
        }
        if dom.bypass {
            return identity();
        }
        match dom.mappings.range(..=iova).next_back() {
            Some((&s, m)) if iova <= m.end => Ok(DmaMapping {
                iova: s,
                gpa: m.phys,
                len: m.end - s + 1,
                perm: perm(m.flags),
            }),
            _ => Err(FaultReason::Mapping),
        }
    }
}

#[cfg(test)]
#[path = "tables_tests.rs"]
mod tests;

#[cfg(test)]
#[path = "tables_failure_tests.rs"]
mod failure_tests;
