//! The host side of the tables: residue, fencing, the identity map, and
//! mirroring mappings into the backend (see the module docs of
//! [`crate::tables`]).

use std::sync::atomic::Ordering;
use std::sync::Arc;

use vm_memory::Permissions;

use super::{outside, perm, Tables, GRANULE};

/// Rounds of deferred host work one call does at most: each round is
/// redone only when a vCPU changed the wanted state meanwhile.
const MAX_ROUNDS: usize = 8;

/// Host calls deferred by a change made where none may run (a vCPU
/// thread, under the tables lock): taken from the tables with
/// [`Tables::take_host_work`], done by [`HostWork::run`] with the tables
/// unlocked, and recorded with [`Tables::finish_host_work`]. The caller
/// orders it with every other host call (the device's host-order lock).
pub struct HostWork {
    backend: Arc<dyn HostIommu>,
    gen: u64,
    unmaps: Vec<(u64, u64)>,
    maps: Vec<(u64, u64)>,
}

/// What [`HostWork::run`] did.
pub struct HostDone {
    gen: u64,
    unmapped: Vec<(u64, u64)>,
    unmap_failures: u64,
    map_failed: bool,
    /// The identity map, when one was planned and made in full.
    identity: Option<Vec<(u64, u64)>>,
    /// Identity pieces whose rollback failed.
    leftover: Vec<(u64, u64)>,
}

impl HostWork {
    /// Does the host calls: the residue's unmaps first, then the identity
    /// map (all or nothing).
    pub fn run(self) -> HostDone {
        let b = &*self.backend;
        let mut done = HostDone {
            gen: self.gen,
            unmapped: Vec::new(),
            unmap_failures: 0,
            map_failed: false,
            identity: None,
            leftover: Vec::new(),
        };
        for (s, l) in self.unmaps {
            match b.unmap(s, l - s + 1) {
                Ok(_) => done.unmapped.push((s, l)),
                Err(e) => {
                    tracing::error!("host IOMMU unmap of {s:#x}..={l:#x} failed (deferred): {e}");
                    done.unmap_failures += 1;
                }
            }
        }
        if self.maps.is_empty() {
            return done;
        }
        let started = std::time::Instant::now();
        let mut mapped = Vec::new();
        for (s, l) in self.maps {
            if let Err(e) = b.map(s, s, l - s + 1, Permissions::ReadWrite) {
                tracing::error!("host IOMMU identity map of {s:#x}..={l:#x} failed: {e}");
                done.map_failed = true;
                for (s, l) in mapped {
                    if b.unmap(s, l - s + 1).is_err() {
                        done.unmap_failures += 1;
                        done.leftover.push((s, l));
                    }
                }
                return done;
            }
            mapped.push((s, l));
        }
        tracing::info!(
            ms = started.elapsed().as_millis() as u64,
            "host IOMMU: guest RAM identity-mapped for a bypassing hardware endpoint"
        );
        done.identity = Some(mapped);
        done
    }
}
use crate::backend::{BackendError, HostErrors, HostIommu};

impl Tables {
    /// True when deferred host work waits.
    pub fn host_pending(&self) -> bool {
        self.host_pending
    }

    /// True when a host backend mirrors hardware endpoints.
    pub fn has_backend(&self) -> bool {
        self.backend.is_some()
    }

    pub(super) fn defer_host(&mut self) {
        if self.backend.is_some() {
            self.host_pending = true;
            self.host_gen = self.host_gen.wrapping_add(1);
        }
    }

    pub(super) fn add_residue(&mut self, s: u64, l: u64) {
        let e = self.residue.entry(s).or_insert(l);
        *e = (*e).max(l);
    }

    /// The deferred host work, if any: the identity map as the endpoints
    /// now want it (a map no longer wanted becomes residue at once) and
    /// the unmap of every residue range.
    pub fn take_host_work(&mut self) -> Option<HostWork> {
        if !self.host_pending {
            return None;
        }
        let Some(backend) = self.backend.clone() else {
            self.host_pending = false;
            return None;
        };
        let want = self.hardware_bypasses();
        if !want {
            for (s, l) in std::mem::take(&mut self.identity) {
                self.add_residue(s, l);
            }
            self.update_residue_gauge();
        }
        let maps = if want && self.identity.is_empty() {
            self.identity_ranges()
        } else {
            Vec::new()
        };
        let unmaps: Vec<(u64, u64)> = self.residue.iter().map(|(&s, &l)| (s, l)).collect();
        if maps.is_empty() && unmaps.is_empty() {
            self.host_pending = false;
            return None;
        }
        Some(HostWork {
            backend,
            gen: self.host_gen,
            unmaps,
            maps,
        })
    }

    /// Records what deferred host work did; it stays pending only when a
    /// deferring change came in meanwhile (failures are retried at the
    /// next change, ATTACH or UNMAP, never in a loop).
    pub fn finish_host_work(&mut self, d: HostDone) {
        for (s, l) in d.unmapped {
            if self.residue.get(&s) == Some(&l) {
                self.residue.remove(&s);
            }
        }
        self.errors
            .unmap
            .fetch_add(d.unmap_failures, Ordering::Relaxed);
        if d.map_failed {
            self.errors.map.fetch_add(1, Ordering::Relaxed);
        }
        for (s, l) in d.leftover {
            self.add_residue(s, l);
        }
        if let Some(ranges) = d.identity {
            if self.identity.is_empty() {
                self.identity = ranges;
            } else {
                // Not planned so; keep the host side accounted.
                for (s, l) in ranges {
                    self.add_residue(s, l);
                }
            }
        }
        self.update_residue_gauge();
        self.host_pending = self.host_gen != d.gen;
    }

    /// Does the deferred host work here and now (setup, tests, or a
    /// caller that already holds the device's host-order lock and the
    /// tables exclusively).
    pub fn sync_host(&mut self) {
        for _ in 0..MAX_ROUNDS {
            let Some(w) = self.take_host_work() else {
                return;
            };
            let d = w.run();
            self.finish_host_work(d);
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

    pub(super) fn update_residue_gauge(&self) {
        self.errors
            .residue_bytes
            .store(self.residue_bytes(), Ordering::Relaxed);
    }

    /// Host unmap of `[s, l]`; a failure is counted and the range kept as
    /// residue. Returns whether the host unmapped it.
    pub(super) fn host_unmap(&mut self, s: u64, l: u64, what: &str) -> bool {
        let Some(b) = self.backend.clone() else {
            return true;
        };
        match b.unmap(s, l - s + 1) {
            Ok(_) => true,
            Err(e) => {
                tracing::error!("host IOMMU unmap of {s:#x}..={l:#x} failed ({what}): {e}");
                self.errors.unmap.fetch_add(1, Ordering::Relaxed);
                self.add_residue(s, l);
                self.update_residue_gauge();
                false
            }
        }
    }

    /// Retries the host unmap of the residue inside `[lo, hi]`; returns
    /// whether none is left there.
    pub(super) fn retry_residue(&mut self, lo: u64, hi: u64) -> bool {
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
    pub(super) fn fence(&mut self, d: u32) {
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

    /// Bytes of guest RAM identity-mapped in the backend for bypassing
    /// hardware endpoints.
    pub fn identity_bytes(&self) -> u64 {
        self.identity.iter().map(|(s, l)| l - s + 1).sum()
    }

    /// True when some hardware endpoint bypasses translation and so
    /// wants the identity map (never in cooperative mode: there it reaches
    /// the pinned set).
    pub(super) fn hardware_bypasses(&self) -> bool {
        self.coop.is_none()
            && self.endpoints.values().any(|e| {
                e.hardware
                    && match e.domain {
                        None => self.bypass,
                        Some(d) => self.domains.get(&d).is_some_and(|d| d.bypass && !d.fenced),
                    }
            })
    }

    /// Guest RAM, granule aligned and without the MSI window, as inclusive
    /// ranges.
    pub(super) fn identity_ranges(&self) -> Vec<(u64, u64)> {
        let mut out = Vec::new();
        for &(gpa, len) in &self.guest_ram {
            let Some(start) = gpa.checked_next_multiple_of(GRANULE) else {
                continue;
            };
            let end = gpa.saturating_add(len) & !(GRANULE - 1);
            if end <= start {
                continue;
            }
            out.extend(outside(start, end - 1, self.limits.msi_window()));
        }
        out
    }

    /// Maps or unmaps the identity map so that it exists exactly while a
    /// hardware endpoint bypasses translation. Returns false when the host
    /// failed (a failed map is rolled back, a failed unmap left as
    /// residue).
    pub(super) fn sync_identity(&mut self) -> bool {
        if self.backend.is_none() {
            return true;
        }
        let want = self.hardware_bypasses();
        let mapped = !self.identity.is_empty();
        if want == mapped || (want && self.guest_ram.is_empty()) {
            return true;
        }
        if !want {
            return self.unmap_identity();
        }
        // Mapping guest RAM pins it (seconds for a large VM): deferred, so
        // it runs with the tables unlocked; the device does it before it
        // answers the request and then asks `identity_settled`.
        self.defer_host();
        true
    }

    /// After the deferred host work of a request: false when a hardware
    /// endpoint should bypass but its identity map could not be made; its
    /// bypass domain (if any) is then fenced, so nothing retries it
    /// behind the guest's back.
    pub fn identity_settled(&mut self) -> bool {
        if self.backend.is_none()
            || self.guest_ram.is_empty()
            || !self.identity.is_empty()
            || !self.hardware_bypasses()
        {
            return true;
        }
        let doms: Vec<u32> = self
            .endpoints
            .values()
            .filter(|e| e.hardware)
            .filter_map(|e| e.domain)
            .collect();
        for d in doms {
            if self.domains.get(&d).is_some_and(|d| d.bypass) {
                self.fence(d);
            }
        }
        false
    }

    /// Removes the identity map; failures become residue. Returns whether
    /// every unmap succeeded.
    pub(super) fn unmap_identity(&mut self) -> bool {
        let mut ok = true;
        for (s, l) in std::mem::take(&mut self.identity) {
            ok &= self.host_unmap(s, l, "identity");
        }
        ok
    }

    /// Mirrors one mapping into the backend (never over the MSI window:
    /// MAP refuses that). On failure nothing of it may stay mapped: after
    /// a host error (a backend may have mapped part of it) the range is
    /// unmapped again; what that cannot remove becomes residue
    /// (`Err(true)`), else `Err(false)`.
    pub(super) fn backend_map(
        &mut self,
        b: &dyn HostIommu,
        virt_start: u64,
        virt_end: u64,
        phys: u64,
        flags: u32,
    ) -> Result<(), bool> {
        let Err(e) = b.map(virt_start, phys, virt_end - virt_start + 1, perm(flags)) else {
            return Ok(());
        };
        tracing::warn!("host IOMMU map of {virt_start:#x}..={virt_end:#x} failed: {e}");
        self.errors.map.fetch_add(1, Ordering::Relaxed);
        if matches!(e, BackendError::Exists(..)) {
            // Refused before mapping anything.
            return Err(false);
        }
        Err(!self.host_unmap(virt_start, virt_end, "map cleanup"))
    }
}
