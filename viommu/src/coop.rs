//! Cooperative mode: the guest's DMA tracking table (DTT) and the pins
//! the host makes from it (docs/coop.md is the protocol).
//!
//! Reading order for one guest pin: [`crate::device`] decodes `COOP_PIN`
//! → [`crate::tables::Tables::coop_pin`] (no table yet? reset?) →
//! [`Coop::pin`] (range checks, budget, merged host maps, PINNED bits) →
//! [`HostIommu::map`]. Unpinning: the `viommu-coop` thread
//! ([`crate::device::IommuState::start_coop_scans`]) →
//! [`crate::tables::Tables::coop_scan`] → [`Coop::scan`].
//!
//! The host's own record of what it pinned is `runs` (one entry per host
//! mapping); the table's PINNED bit is only a hint for the guest. Every
//! change the host makes to an entry is an atomic read-modify-write, so a
//! guest racing or lying can only keep its own memory pinned (bounded by
//! the budget) or make its own device fault.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use vm_memory::{
    Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion,
    MemoryRegionAddress, Permissions,
};

use crate::backend::HostIommu;
use crate::protocol::status;

/// Bytes per guest page (one DTT entry).
pub const PAGE: u64 = 0x1000;
/// Entries per leaf (one 4 KiB leaf page of 32-bit entries).
pub const LEAF_ENTRIES: u64 = 1024;
/// Entry bits 0–15: live DMA mappings of the page (guest-owned).
pub const COUNT_MASK: u32 = 0xffff;
/// Entry bit 30: mapped since the host last aged it (guest sets).
pub const ACCESSED: u32 = 1 << 30;
/// Entry bit 31: the host has the page pinned (host-owned hint).
pub const PINNED: u32 = 1 << 31;
/// Largest directory accepted (4 TiB of guest RAM).
pub const MAX_LEAVES: u64 = 1 << 20;

/// Parameters of cooperative mode (`[iommu] coop_*`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CoopConfig {
    /// Most bytes pinned at once.
    pub budget: u64,
    /// Interval between unpin scans.
    pub scan: Duration,
    /// Pin granule in bytes: a power of two from 4 KiB to 2 MiB (the
    /// config's `auto` is 256 KiB).
    pub granule: u64,
}

impl Default for CoopConfig {
    fn default() -> Self {
        CoopConfig {
            budget: 64 << 20,
            scan: Duration::from_millis(100),
            granule: PAGE,
        }
    }
}

/// Counters of cooperative mode (stats JSON `coop`).
#[derive(Debug, Default)]
pub struct CoopStats {
    /// 1 while a table is registered.
    pub registered: AtomicU64,
    /// Leaves of the registered table.
    pub leaves: AtomicU64,
    /// Bytes pinned now.
    pub pinned_bytes: AtomicU64,
    /// Most bytes pinned at once.
    pub pinned_peak_bytes: AtomicU64,
    /// COOP_PIN requests handled (any status).
    pub pin_requests: AtomicU64,
    /// Chunks of the granule newly pinned.
    pub pinned_chunks: AtomicU64,
    /// Host map calls made by pins.
    pub host_maps: AtomicU64,
    /// Host unmap calls made by unpins.
    pub host_unmaps: AtomicU64,
    /// Chunks unpinned.
    pub unpinned_chunks: AtomicU64,
    /// Unpin scans (periodic and reclaims).
    pub scans: AtomicU64,
    /// Time spent scanning.
    pub scan_ns_total: AtomicU64,
    /// Longest scan.
    pub scan_ns_max: AtomicU64,
    /// Synchronous reclaims by pins over the budget.
    pub reclaims: AtomicU64,
    /// Refused registrations.
    pub refused_register: AtomicU64,
    /// Pins refused with RANGE.
    pub refused_range: AtomicU64,
    /// Pins refused with INVAL (no table, empty).
    pub refused_inval: AtomicU64,
    /// Pins refused because of the budget.
    pub refused_budget: AtomicU64,
    /// Pins whose host map failed.
    pub refused_host: AtomicU64,
}

impl CoopStats {
    /// The counters as a JSON object (`budget` and `granule` from `cfg`).
    pub fn to_json(&self, cfg: &CoopConfig) -> serde_json::Value {
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        serde_json::json!({
            "registered": get(&self.registered) != 0,
            "leaves": get(&self.leaves),
            "pinned_bytes": get(&self.pinned_bytes),
            "pinned_peak_bytes": get(&self.pinned_peak_bytes),
            "budget_bytes": cfg.budget,
            "granule": cfg.granule,
            "scan_ms": cfg.scan.as_millis() as u64,
            "pin_requests": get(&self.pin_requests),
            "pinned_chunks": get(&self.pinned_chunks),
            "host_maps": get(&self.host_maps),
            "host_unmaps": get(&self.host_unmaps),
            "unpinned_chunks": get(&self.unpinned_chunks),
            "scans": get(&self.scans),
            "scan_ns_total": get(&self.scan_ns_total),
            "scan_ns_max": get(&self.scan_ns_max),
            "reclaims": get(&self.reclaims),
            "refused": {
                "register": get(&self.refused_register),
                "range": get(&self.refused_range),
                "inval": get(&self.refused_inval),
                "budget": get(&self.refused_budget),
                "host": get(&self.refused_host),
            },
        })
    }
}

/// What a scan or a failed pin left for the tables: ranges to invalidate
/// in the endpoints' IOTLBs (before the host unmap) and host unmaps that
/// failed (residue), both inclusive `(first, last)`.
pub trait Unpinned {
    /// `[first, last]` is about to leave the host: drop cached translations.
    fn invalidate(&mut self, first: u64, last: u64);
    /// The host unmap of `[first, last]` failed.
    fn residue(&mut self, first: u64, last: u64);
}

/// The host side of cooperative mode: the registered table and the pins.
pub struct Coop {
    cfg: CoopConfig,
    mem: GuestMemoryMmap,
    /// Host address of each leaf page, 0 for none; empty: no table.
    leaves: Vec<usize>,
    registered: bool,
    /// Pinned runs, first GPA → bytes; one host mapping each (IOVA = GPA).
    runs: BTreeMap<u64, u64>,
    pinned: u64,
    /// New runs of the pin being handled (kept so a pin allocates nothing
    /// once warm).
    new_runs: Vec<(u64, u64)>,
    /// Runs a scan unpins.
    victims: Vec<(u64, u64)>,
    stats: std::sync::Arc<CoopStats>,
}

fn align_down(a: u64, g: u64) -> u64 {
    a & !(g - 1)
}

impl Coop {
    /// Cooperative mode over guest RAM `mem` with `cfg` (granule a power
    /// of two ≥ 4 KiB, checked by the config).
    pub fn new(mem: GuestMemoryMmap, cfg: CoopConfig) -> Self {
        Coop {
            cfg,
            mem,
            leaves: Vec::new(),
            registered: false,
            runs: BTreeMap::new(),
            pinned: 0,
            new_runs: Vec::new(),
            victims: Vec::new(),
            stats: Default::default(),
        }
    }

    /// The parameters.
    pub fn config(&self) -> &CoopConfig {
        &self.cfg
    }

    /// The counters (shared with the stats).
    pub fn stats(&self) -> std::sync::Arc<CoopStats> {
        self.stats.clone()
    }

    /// True once a table is registered.
    pub fn registered(&self) -> bool {
        self.registered
    }

    /// Bytes pinned now.
    pub fn pinned_bytes(&self) -> u64 {
        self.pinned
    }

    /// The pinned runs, `(first GPA, bytes)`.
    pub fn runs(&self) -> impl Iterator<Item = (u64, u64)> + '_ {
        self.runs.iter().map(|(&s, &l)| (s, l))
    }

    /// The pinned run holding `gpa`, as `(first GPA, bytes)`.
    pub fn run_of(&self, gpa: u64) -> Option<(u64, u64)> {
        let (&s, &l) = self.runs.range(..=gpa).next_back()?;
        (gpa - s < l).then_some((s, l))
    }

    fn ram_end(&self) -> u64 {
        self.mem.last_addr().0.saturating_add(1)
    }

    /// The entry of guest page `gfn`, if the table has a leaf for it.
    fn entry(&self, gfn: u64) -> Option<&AtomicU32> {
        let hva = *self.leaves.get(usize::try_from(gfn / LEAF_ENTRIES).ok()?)?;
        if hva == 0 {
            return None;
        }
        let idx = (gfn % LEAF_ENTRIES) as usize;
        // SAFETY: `hva` is the host address of a 4 KiB leaf page checked at
        // registration to lie inside one region of `self.mem`, which this
        // struct keeps mapped for as long as it lives (the borrow of
        // `self` bounds the reference). The page is 4 KiB aligned in guest
        // memory and regions are page aligned in the host, so entry `idx`
        // (< 1024) is a 4-byte-aligned u32 inside it; AtomicU32 has u32's
        // layout. The guest writes the same word concurrently; every host
        // access is atomic.
        Some(unsafe { &*(hva as *const AtomicU32).add(idx) })
    }

    /// True when all of `[gpa, gpa + len)` is guest RAM (possibly over
    /// several adjacent regions).
    fn in_ram(&self, gpa: u64, len: u64) -> bool {
        let Some(end) = gpa.checked_add(len) else {
            return false;
        };
        let mut a = gpa;
        while a < end {
            let Some(r) = self.mem.find_region(GuestAddress(a)) else {
                return false;
            };
            a = r.start_addr().0 + r.len();
        }
        true
    }

    /// The host address of the 4 KiB page at `gpa`, if all of it is RAM in
    /// one region.
    fn page_hva(&self, gpa: u64) -> Option<usize> {
        let r = self.mem.find_region(GuestAddress(gpa))?;
        let off = gpa - r.start_addr().0;
        if off.checked_add(PAGE)? > r.len() {
            return None;
        }
        r.get_host_address(MemoryRegionAddress(off))
            .ok()
            .map(|p| p as usize)
    }

    /// COOP_REGISTER: reads the directory once and keeps the leaves.
    pub fn register(&mut self, dir_gpa: u64, nr_leaves: u32) -> u8 {
        let st = self.try_register(dir_gpa, u64::from(nr_leaves));
        if st == status::OK {
            self.registered = true;
            self.stats.registered.store(1, Ordering::Relaxed);
            self.stats
                .leaves
                .store(self.leaves.len() as u64, Ordering::Relaxed);
            tracing::info!(
                "coop: DMA tracking table registered, {} leaves at {dir_gpa:#x}",
                self.leaves.len()
            );
        } else {
            if !self.registered {
                self.leaves.clear();
            }
            self.stats.refused_register.fetch_add(1, Ordering::Relaxed);
        }
        st
    }

    fn try_register(&mut self, dir_gpa: u64, n: u64) -> u8 {
        if self.registered || n == 0 || !dir_gpa.is_multiple_of(8) {
            return status::INVAL;
        }
        let cover = self.ram_end().div_ceil(PAGE * LEAF_ENTRIES);
        if n > cover.min(MAX_LEAVES) {
            return status::RANGE;
        }
        let mut dir = vec![0u8; (n * 8) as usize];
        if !self.in_ram(dir_gpa, n * 8)
            || self
                .mem
                .read_slice(&mut dir, GuestAddress(dir_gpa))
                .is_err()
        {
            return status::RANGE;
        }
        let mut leaves = Vec::with_capacity(n as usize);
        for w in dir.chunks_exact(8) {
            let gpa = u64::from_le_bytes(w.try_into().unwrap_or_default());
            if gpa == 0 {
                leaves.push(0);
                continue;
            }
            if gpa % PAGE != 0 {
                return status::INVAL;
            }
            match self.page_hva(gpa) {
                Some(h) => leaves.push(h),
                None => return status::RANGE,
            }
        }
        self.leaves = leaves;
        status::OK
    }

    /// COOP_PIN of `[gfn, gfn + nr_pages)`: pins the chunks not pinned
    /// yet, one host map per new contiguous run, then sets their PINNED
    /// bits. `msi` is the inclusive window never mapped.
    pub fn pin(
        &mut self,
        gfn: u64,
        nr_pages: u32,
        msi: (u64, u64),
        backend: &dyn HostIommu,
        out: &mut dyn Unpinned,
    ) -> u8 {
        self.stats.pin_requests.fetch_add(1, Ordering::Relaxed);
        let st = self.try_pin(gfn, u64::from(nr_pages), msi, backend, out);
        let counter = match st {
            status::OK => None,
            status::RANGE => Some(&self.stats.refused_range),
            status::NOMEM => Some(&self.stats.refused_budget),
            status::DEVERR => Some(&self.stats.refused_host),
            _ => Some(&self.stats.refused_inval),
        };
        if let Some(c) = counter {
            c.fetch_add(1, Ordering::Relaxed);
        }
        st
    }

    fn try_pin(
        &mut self,
        gfn: u64,
        n: u64,
        msi: (u64, u64),
        backend: &dyn HostIommu,
        out: &mut dyn Unpinned,
    ) -> u8 {
        if !self.registered || n == 0 {
            return status::INVAL;
        }
        let covered = self.leaves.len() as u64 * LEAF_ENTRIES;
        let Some(last_gfn) = gfn.checked_add(n - 1).filter(|&l| l < covered) else {
            return status::RANGE;
        };
        let (start, end) = (gfn * PAGE, (last_gfn + 1) * PAGE);
        let leafless =
            (gfn / LEAF_ENTRIES..=last_gfn / LEAF_ENTRIES).any(|l| self.leaves[l as usize] == 0);
        let in_ram = self.in_ram(start, end - start);
        if leafless || !in_ram || (start <= msi.1 && msi.0 < end) {
            return status::RANGE;
        }
        let mut new = self.plan(start, end, msi);
        let mut bytes: u64 = new.iter().map(|r| r.1).sum();
        if bytes > 0 && self.pinned + bytes > self.cfg.budget {
            self.stats.reclaims.fetch_add(1, Ordering::Relaxed);
            self.new_runs = new;
            self.scan(true, backend, out);
            new = self.plan(start, end, msi);
            bytes = new.iter().map(|r| r.1).sum();
            if self.pinned + bytes > self.cfg.budget {
                self.new_runs = new;
                return status::NOMEM;
            }
        }
        for (i, &(s, l)) in new.iter().enumerate() {
            self.stats.host_maps.fetch_add(1, Ordering::Relaxed);
            if let Err(e) = backend.map(s, s, l, Permissions::ReadWrite) {
                tracing::warn!("coop: host map of {s:#x}+{l:#x} failed: {e}");
                for &(s, l) in &new[..i] {
                    self.stats.host_unmaps.fetch_add(1, Ordering::Relaxed);
                    if backend.unmap(s, l).is_err() {
                        out.residue(s, s + l - 1);
                    }
                }
                self.new_runs = new;
                return status::DEVERR;
            }
        }
        for &(s, l) in &new {
            self.runs.insert(s, l);
            self.pinned += l;
            self.stats
                .pinned_chunks
                .fetch_add(l.div_ceil(self.cfg.granule), Ordering::Relaxed);
            for g in s / PAGE..(s + l) / PAGE {
                if let Some(e) = self.entry(g) {
                    e.fetch_or(PINNED, Ordering::SeqCst);
                }
            }
        }
        self.publish();
        self.new_runs = new;
        status::OK
    }

    /// The runs `[start, end)` needs that are not pinned: each chunk of the
    /// granule, clipped to its RAM region, to the pinned runs around it and
    /// to the MSI window; adjacent new chunks merged.
    fn plan(&mut self, start: u64, end: u64, msi: (u64, u64)) -> Vec<(u64, u64)> {
        let mut new = std::mem::take(&mut self.new_runs);
        new.clear();
        let g = self.cfg.granule;
        let mut a = start;
        while a < end {
            if let Some((s, l)) = self.run_of(a) {
                a = s + l;
                continue;
            }
            let Some(r) = self.mem.find_region(GuestAddress(a)) else {
                break; // checked by the caller: not reached
            };
            let (rs, re) = (r.start_addr().0, r.start_addr().0 + r.len());
            let mut cs = align_down(a, g).max(rs) & !(PAGE - 1);
            if let Some((&s, &l)) = self.runs.range(..a).next_back() {
                cs = cs.max(s + l);
            }
            if cs <= msi.1 && msi.1 < a {
                cs = msi.1 + 1;
            }
            let mut ce = align_down(a, g).saturating_add(g).min(re & !(PAGE - 1));
            if let Some((&s, _)) = self.runs.range(a..).next() {
                ce = ce.min(s);
            }
            if msi.0 > a && msi.0 < ce {
                ce = msi.0;
            }
            match new.last_mut() {
                Some((s, l)) if *s + *l == cs => *l = ce - *s,
                _ => new.push((cs, ce - cs)),
            }
            a = ce;
        }
        new
    }

    /// One unpin scan (docs/coop.md "Unpinning"); `force` ignores
    /// ACCESSED (a reclaim). Contiguous unpinned runs leave the host in
    /// one unmap.
    pub fn scan(&mut self, force: bool, backend: &dyn HostIommu, out: &mut dyn Unpinned) {
        let t0 = Instant::now();
        let mut victims = std::mem::take(&mut self.victims);
        victims.clear();
        for (&s, &l) in &self.runs {
            if self.try_unpin(s / PAGE, (s + l) / PAGE, force) {
                victims.push((s, l));
            }
        }
        let mut i = 0;
        while i < victims.len() {
            let (s, mut l) = victims[i];
            let mut j = i + 1;
            while j < victims.len() && victims[j].0 == s + l {
                l += victims[j].1;
                j += 1;
            }
            for &(vs, vl) in &victims[i..j] {
                self.runs.remove(&vs);
                self.pinned -= vl;
                self.stats
                    .unpinned_chunks
                    .fetch_add(vl.div_ceil(self.cfg.granule), Ordering::Relaxed);
            }
            out.invalidate(s, s + l - 1);
            self.stats.host_unmaps.fetch_add(1, Ordering::Relaxed);
            if let Err(e) = backend.unmap(s, l) {
                tracing::warn!("coop: host unmap of {s:#x}+{l:#x} failed: {e}");
                out.residue(s, s + l - 1);
            }
            i = j;
        }
        self.victims = victims;
        self.publish();
        let ns = t0.elapsed().as_nanos() as u64;
        self.stats.scans.fetch_add(1, Ordering::Relaxed);
        self.stats.scan_ns_total.fetch_add(ns, Ordering::Relaxed);
        self.stats.scan_ns_max.fetch_max(ns, Ordering::Relaxed);
    }

    /// Steps 1–3 of the scan for the pages `[g0, g1)` of one run: true
    /// when every entry's PINNED was cleared by an exchange that saw
    /// count 0 (and ACCESSED clear unless `force`).
    fn try_unpin(&self, g0: u64, g1: u64, force: bool) -> bool {
        let mut accessed = false;
        for g in g0..g1 {
            let v = self.entry(g).map_or(0, |e| e.load(Ordering::SeqCst));
            if v & COUNT_MASK != 0 {
                return false;
            }
            accessed |= v & ACCESSED != 0;
        }
        if accessed && !force {
            for g in g0..g1 {
                if let Some(e) = self.entry(g) {
                    e.fetch_and(!ACCESSED, Ordering::SeqCst);
                }
            }
            return false;
        }
        for g in g0..g1 {
            let Some(e) = self.entry(g) else { continue };
            let v = e.load(Ordering::SeqCst);
            let idle = v & COUNT_MASK == 0 && (force || v & ACCESSED == 0);
            if !idle
                || e.compare_exchange(v, v & !PINNED, Ordering::SeqCst, Ordering::SeqCst)
                    .is_err()
            {
                for h in g0..g {
                    if let Some(e) = self.entry(h) {
                        e.fetch_or(PINNED, Ordering::SeqCst);
                    }
                }
                return false;
            }
        }
        true
    }

    /// Device reset: forgets the table; returns the runs still pinned
    /// (the caller unmaps them as residue, off the vCPU thread).
    pub fn reset(&mut self) -> Vec<(u64, u64)> {
        self.leaves.clear();
        self.registered = false;
        self.stats.registered.store(0, Ordering::Relaxed);
        self.pinned = 0;
        self.publish();
        std::mem::take(&mut self.runs).into_iter().collect()
    }

    fn publish(&self) {
        self.stats
            .pinned_bytes
            .store(self.pinned, Ordering::Relaxed);
        self.stats
            .pinned_peak_bytes
            .fetch_max(self.pinned, Ordering::Relaxed);
    }
}

#[cfg(test)]
#[path = "coop_tests.rs"]
mod tests;
