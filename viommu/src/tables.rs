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
//! (IOERR) and the device must not keep reaching what the guest believes
//! protected. The policy:
//!
//! - a range whose host **unmap** fails leaves the tables at once (the
//!   emulated endpoints' IOTLBs are invalidated, their translation faults)
//!   but is kept as host *residue*: accounted as still mapped in the host
//!   ([`Tables::residue_bytes`]), retried by a later UNMAP covering it, by
//!   every ATTACH of a hardware endpoint and at reset, and dropped only
//!   once the host unmap succeeded;
//! - whenever the host holds a mapping the guest did not (or no longer)
//!   ask for, or lacks one the guest was told is there, the domain
//!   concerned is **fenced** until it is destroyed or the device reset:
//!   its endpoints' translation faults (FaultReason::Domain), its other
//!   host mappings are torn down (failures become residue), MAP and
//!   ATTACH to it answer IOERR, UNMAP and DETACH still work (UNMAP
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
//! The MSI window ([`Limits::msi_window`]) is never mapped in the backend:
//! host interrupt remapping owns it. Every hardware endpoint shares the one
//! backend (one host address space), so only one of them may be behind the
//! IOMMU; the VMM enforces that.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::Ordering;
use std::sync::Arc;

use devices::dma::{DmaIotlb, DmaMapping};
use vm_memory::Permissions;

use crate::backend::{BackendError, HostErrors, HostIommu};
use crate::protocol::{self, status};

/// Granule of mappings (4 KiB).
pub const GRANULE: u64 = 0x1000;
/// Size of the identity translation handed out for bypassed endpoints.
const IDENTITY_CHUNK: u64 = 2 << 20;

/// Fixed properties of the IOMMU (its config space).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// First valid IOVA.
    pub input_start: u64,
    /// Last valid IOVA.
    pub input_end: u64,
    /// First valid domain ID.
    pub domain_start: u32,
    /// Last valid domain ID.
    pub domain_end: u32,
    /// Most mappings per domain (beyond: NOMEM).
    pub max_mappings: usize,
    /// The MSI doorbell window `[start, end]`, reported by PROBE.
    pub msi_window: (u64, u64),
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            input_start: 0,
            input_end: (1 << 48) - 1,
            domain_start: 0,
            domain_end: 0xffff,
            max_mappings: 1 << 20,
            msi_window: (0xfee0_0000, 0xfeef_ffff),
        }
    }
}

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
    mapped_bytes: u64,
    /// Guest RAM as `(gpa, len)`: what a bypassing hardware endpoint reaches.
    guest_ram: Vec<(u64, u64)>,
    /// Identity ranges `(start, last)` currently mapped in the backend.
    identity: Vec<(u64, u64)>,
    /// Host residue: first IOVA → last IOVA of ranges the host still maps
    /// although the tables removed them (failed unmaps).
    residue: BTreeMap<u64, u64>,
    errors: Arc<HostErrors>,
    /// UNMAP's list of removed mappings, kept so a request allocates nothing.
    victims: Vec<(u64, u64)>,
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
            victims: Vec::new(),
        }
    }

    /// The host failure counters (shared with the stats).
    pub fn host_errors(&self) -> Arc<HostErrors> {
        self.errors.clone()
    }

    /// Bytes the host still maps although the tables removed them.
    pub fn residue_bytes(&self) -> u64 {
        self.residue.iter().map(|(s, l)| l - s + 1).sum()
    }

    /// True when domain `domain` exists and is fenced.
    pub fn is_fenced(&self, domain: u32) -> bool {
        self.domains.get(&domain).is_some_and(|d| d.fenced)
    }

    fn update_residue_gauge(&self) {
        self.errors
            .residue_bytes
            .store(self.residue_bytes(), Ordering::Relaxed);
    }

    /// Host unmap of `[s, l]`; a failure is counted and the range kept as
    /// residue. Returns whether the host unmapped it.
    fn host_unmap(&mut self, s: u64, l: u64, what: &str) -> bool {
        let Some(b) = self.backend.clone() else {
            return true;
        };
        match b.unmap(s, l - s + 1) {
            Ok(_) => true,
            Err(e) => {
                tracing::error!("host IOMMU unmap of {s:#x}..={l:#x} failed ({what}): {e}");
                self.errors.unmap.fetch_add(1, Ordering::Relaxed);
                self.residue.insert(s, l);
                self.update_residue_gauge();
                false
            }
        }
    }

    /// Retries the host unmap of the residue inside `[lo, hi]`; returns
    /// whether none is left there.
    fn retry_residue(&mut self, lo: u64, hi: u64) -> bool {
        let due: Vec<(u64, u64)> = self
            .residue
            .range(lo..=hi)
            .filter(|(_, &l)| l <= hi)
            .map(|(&s, &l)| (s, l))
            .collect();
        for (s, l) in due {
            self.residue.remove(&s);
            self.host_unmap(s, l, "residue retry");
        }
        self.update_residue_gauge();
        self.residue
            .range(..=hi)
            .next_back()
            .is_none_or(|(_, &l)| l < lo)
    }

    /// Fences domain `d` (see the module docs): its endpoints' translation
    /// faults and its host mappings are torn down.
    fn fence(&mut self, d: u32) {
        let Some(dom) = self.domains.get(&d) else {
            return;
        };
        if dom.fenced {
            return;
        }
        let in_host = self.domain_has_hardware(dom);
        let ranges: Vec<(u64, u64)> = dom.mappings.iter().map(|(&s, m)| (s, m.end)).collect();
        let eps: Vec<u32> = dom.endpoints.iter().copied().collect();
        if let Some(dom) = self.domains.get_mut(&d) {
            dom.fenced = true;
        }
        self.errors.fenced_domains.fetch_add(1, Ordering::Relaxed);
        tracing::error!("virtio-iommu: domain {d} fenced after a host IOMMU failure");
        for ep in eps {
            self.invalidate(ep, None);
        }
        if in_host {
            for (s, e) in ranges {
                self.host_unmap(s, e, "fence");
            }
        }
    }

    /// Declares guest RAM as `(gpa, len)` ranges: while a hardware endpoint
    /// bypasses translation, the backend holds an identity map of them
    /// (granule aligned, minus the MSI window). Without it, bypassing
    /// hardware endpoints reach nothing.
    pub fn set_guest_ram(&mut self, ranges: Vec<(u64, u64)>) {
        self.unmap_identity();
        self.guest_ram = ranges;
        self.sync_identity();
    }

    /// The config `bypass` byte.
    pub fn bypass(&self) -> bool {
        self.bypass
    }

    /// Sets the config `bypass` byte (driver write with BYPASS_CONFIG):
    /// unattached endpoints bypass translation while it is set.
    pub fn set_bypass(&mut self, on: bool) {
        self.bypass = on;
        self.sync_identity();
    }

    /// Bytes of guest RAM identity-mapped in the backend for bypassing
    /// hardware endpoints.
    pub fn identity_bytes(&self) -> u64 {
        self.identity.iter().map(|(s, l)| l - s + 1).sum()
    }

    /// True when some hardware endpoint bypasses translation.
    fn hardware_bypasses(&self) -> bool {
        self.endpoints.values().any(|e| {
            e.hardware
                && match e.domain {
                    None => self.bypass,
                    Some(d) => self.domains.get(&d).is_some_and(|d| d.bypass && !d.fenced),
                }
        })
    }

    /// Guest RAM, granule aligned and without the MSI window, as inclusive
    /// ranges.
    fn identity_ranges(&self) -> Vec<(u64, u64)> {
        let mut out = Vec::new();
        for &(gpa, len) in &self.guest_ram {
            let Some(start) = gpa.checked_next_multiple_of(GRANULE) else {
                continue;
            };
            let end = gpa.saturating_add(len) & !(GRANULE - 1);
            if end <= start {
                continue;
            }
            out.extend(outside(start, end - 1, self.limits.msi_window));
        }
        out
    }

    /// Maps or unmaps the identity map so that it exists exactly while a
    /// hardware endpoint bypasses translation. Returns false when the host
    /// failed (a failed map is rolled back, a failed unmap left as
    /// residue).
    fn sync_identity(&mut self) -> bool {
        let Some(b) = self.backend.clone() else {
            return true;
        };
        let want = self.hardware_bypasses();
        let mapped = !self.identity.is_empty();
        if want == mapped || (want && self.guest_ram.is_empty()) {
            return true;
        }
        if !want {
            return self.unmap_identity();
        }
        let started = std::time::Instant::now();
        for (s, l) in self.identity_ranges() {
            // Page-aligned, outside the MSI window: mapped in one piece.
            if let Err(e) = b.map(s, s, l - s + 1, Permissions::ReadWrite) {
                tracing::error!("host IOMMU identity map of {s:#x}..={l:#x} failed: {e}");
                self.errors.map.fetch_add(1, Ordering::Relaxed);
                self.unmap_identity();
                return false;
            }
            self.identity.push((s, l));
        }
        tracing::info!(
            bytes = self.identity_bytes(),
            ms = started.elapsed().as_millis() as u64,
            "host IOMMU: guest RAM identity-mapped for a bypassing hardware endpoint"
        );
        true
    }

    /// Removes the identity map; failures become residue. Returns whether
    /// every unmap succeeded.
    fn unmap_identity(&mut self) -> bool {
        let mut ok = true;
        for (s, l) in std::mem::take(&mut self.identity) {
            ok &= self.host_unmap(s, l, "identity");
        }
        ok
    }

    /// Mirrors one mapping into the backend, leaving out the MSI window.
    /// On failure, it is rolled back; what the rollback cannot remove
    /// becomes residue (`Err(true)`), else `Err(false)`.
    fn backend_map(
        &mut self,
        b: &dyn HostIommu,
        virt_start: u64,
        virt_end: u64,
        phys: u64,
        flags: u32,
    ) -> Result<(), bool> {
        let (mut done, mut n) = ([(0, 0); 2], 0);
        for (s, l) in outside(virt_start, virt_end, self.limits.msi_window) {
            if let Err(e) = b.map(s, phys + (s - virt_start), l - s + 1, perm(flags)) {
                let e: BackendError = e;
                tracing::warn!("host IOMMU map of {s:#x}..={l:#x} failed: {e}");
                self.errors.map.fetch_add(1, Ordering::Relaxed);
                let mut residue = false;
                for &(s, l) in &done[..n] {
                    residue |= !self.host_unmap(s, l, "map rollback");
                }
                return Err(residue);
            }
            done[n] = (s, l);
            n += 1;
        }
        Ok(())
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
        self.sync_identity();
    }

    /// Bytes currently mapped over all domains.
    pub fn mapped_bytes(&self) -> u64 {
        self.mapped_bytes
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
    /// Host unmaps that fail stay residue (retried once more here).
    pub fn reset(&mut self) {
        let ids: Vec<u32> = self.domains.keys().copied().collect();
        for d in ids {
            let eps: Vec<u32> = self.domains[&d].endpoints.iter().copied().collect();
            for ep in eps {
                self.remove_from_domain(ep, d);
            }
        }
        self.retry_residue(0, u64::MAX);
        self.bypass = true;
        self.bypass_config = false;
        self.mmio = false;
        self.sync_identity();
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
            self.mapped_bytes -= freed;
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
        if domain < self.limits.domain_start || domain > self.limits.domain_end {
            return Outcome::status(status::RANGE);
        }
        if let Some(d) = self.domains.get(&domain) {
            if d.bypass != bypass {
                return Outcome::status(status::INVAL);
            }
            if d.fenced {
                return Outcome::status(status::IOERR);
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
                status: status::IOERR,
                bytes: freed,
            };
        }
        Outcome {
            status: status::OK,
            bytes: freed,
        }
    }

    /// DETACH. The endpoint leaves the domain even when the host fails to
    /// unmap (answered IOERR; the failures are residue).
    pub fn detach(&mut self, domain: u32, endpoint: u32) -> Outcome {
        let Some(ep) = self.endpoints.get(&endpoint) else {
            return Outcome::status(status::NOENT);
        };
        if !self.domains.contains_key(&domain) {
            return Outcome::status(status::NOENT);
        }
        if ep.domain != Some(domain) {
            return Outcome::status(status::INVAL);
        }
        let (freed, ok) = self.remove_from_domain(endpoint, domain);
        let ok = self.sync_identity() && ok;
        Outcome {
            status: if ok { status::OK } else { status::IOERR },
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
        if virt_start < self.limits.input_start || virt_end > self.limits.input_end {
            return Outcome::status(status::RANGE);
        }
        // input_end < 2^64 - 1, so this cannot overflow.
        let len = virt_end - virt_start + 1;
        let aligned = (virt_start | phys).is_multiple_of(GRANULE) && len.is_multiple_of(GRANULE);
        if !aligned || phys.checked_add(len - 1).is_none() {
            return Outcome::status(status::RANGE);
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
            return Outcome::status(status::IOERR);
        }
        if dom.mappings.len() >= self.limits.max_mappings {
            return Outcome::status(status::NOMEM);
        }
        if self.domain_has_hardware(dom) {
            if let Some(b) = self.backend.clone() {
                if let Err(residue) = self.backend_map(&*b, virt_start, virt_end, phys, flags) {
                    if residue {
                        self.fence(domain);
                    }
                    return Outcome::status(status::IOERR);
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
        self.mapped_bytes += len;
        Outcome {
            status: status::OK,
            bytes: len,
        }
    }

    /// UNMAP `[virt_start, virt_end]`: removes every mapping inside the
    /// range; a mapping that would be split makes the request fail with
    /// RANGE and nothing is removed. A failed host unmap answers IOERR:
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
        self.mapped_bytes -= freed;
        if !ok {
            self.fence(domain);
        } else if fenced {
            ok = self.retry_residue(virt_start, virt_end);
        }
        Outcome {
            status: if ok { status::OK } else { status::IOERR },
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
