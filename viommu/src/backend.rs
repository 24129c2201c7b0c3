//! The host IOMMU backend: where mappings of endpoints whose DMA is done
//! by hardware (VFIO-assigned devices) must be mirrored.
//!
//! The virtual IOMMU calls [`HostIommu::map`] and [`HostIommu::unmap`]
//! while it handles a guest request and answers the guest only after they
//! returned, so an UNMAP is complete (strict semantics) once the guest
//! sees OK. Ranges are byte ranges, page aligned by the caller.
//!
//! A backend may fail. What the tables then do (keep the range as host
//! *residue*, fence the domain) is described in [`crate::tables`]; the
//! failures are counted in [`HostErrors`], which reaches the stats JSON.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use vm_memory::Permissions;

/// Errors from a host backend.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BackendError {
    /// The range overlaps an existing host mapping.
    #[error("range {0:#x}+{1:#x} is already mapped")]
    Exists(u64, u64),
    /// The host refused (ioctl failure), with the OS error.
    #[error("host IOMMU: {0}")]
    Host(String),
}

/// A host IOMMU address space (a VFIO container, or a simulation).
pub trait HostIommu: Send + Sync {
    /// Maps `[iova, iova + len)` to guest-physical `gpa` with `perm`.
    fn map(&self, iova: u64, gpa: u64, len: u64, perm: Permissions) -> Result<(), BackendError>;
    /// Unmaps every host mapping inside `[iova, iova + len)`; returns the
    /// bytes unmapped. When it returns, the host IOTLB holds no entry for
    /// the range.
    fn unmap(&self, iova: u64, len: u64) -> Result<u64, BackendError>;
}

/// Host backend failures and their consequences, as counted by the
/// tables (shared with [`crate::stats::Stats`], written as `host_errors`).
#[derive(Debug, Default)]
pub struct HostErrors {
    /// Host maps refused (MAP mirroring, ATTACH replay, identity map).
    pub map: AtomicU64,
    /// Host unmaps refused (UNMAP, DETACH, domain destruction, reset,
    /// identity unmap, retries of residue).
    pub unmap: AtomicU64,
    /// ATTACHes whose replay of the domain's mappings failed.
    pub replay: AtomicU64,
    /// Domains fenced because host and tables disagreed.
    pub fenced_domains: AtomicU64,
    /// Bytes the host still maps although the tables removed them (the
    /// residue of failed unmaps), now.
    pub residue_bytes: AtomicU64,
}

impl HostErrors {
    /// The counters as a JSON object.
    pub fn to_json(&self) -> serde_json::Value {
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        serde_json::json!({
            "map": get(&self.map),
            "unmap": get(&self.unmap),
            "replay": get(&self.replay),
            "fenced_domains": get(&self.fenced_domains),
            "residue_bytes": get(&self.residue_bytes),
        })
    }
}

/// The backend of a virtual IOMMU with no hardware endpoint: every call
/// succeeds and nothing is mapped anywhere.
pub struct NoBackend;

impl HostIommu for NoBackend {
    fn map(&self, _: u64, _: u64, _: u64, _: Permissions) -> Result<(), BackendError> {
        Ok(())
    }

    fn unmap(&self, _: u64, len: u64) -> Result<u64, BackendError> {
        Ok(len)
    }
}

/// A backend that records mappings and lets tests perform "DMA" through
/// them, refusing what is not mapped.
#[derive(Default)]
pub struct SimulatedBackend {
    maps: Mutex<BTreeMap<u64, (u64, u64, Permissions)>>,
    /// map() calls.
    pub map_calls: AtomicU64,
    /// unmap() calls.
    pub unmap_calls: AtomicU64,
}

impl SimulatedBackend {
    /// Translates a device access of `len` bytes at `iova`, as the host
    /// IOMMU would: `Some(gpa)` when one mapping covers it with `access`.
    pub fn dma(&self, iova: u64, len: u64, access: Permissions) -> Option<u64> {
        let maps = self.maps.lock().unwrap_or_else(|e| e.into_inner());
        let (&start, &(l, gpa, perm)) = maps.range(..=iova).next_back()?;
        let end = iova.checked_add(len)?;
        (end <= start + l && perm.allow(access)).then_some(gpa + (iova - start))
    }

    /// The live host mappings as `(iova, len)`, in IOVA order.
    pub fn ranges(&self) -> Vec<(u64, u64)> {
        let maps = self.maps.lock().unwrap_or_else(|e| e.into_inner());
        maps.iter().map(|(&s, &(l, _, _))| (s, l)).collect()
    }

    /// Number of live host mappings.
    pub fn len(&self) -> usize {
        self.maps.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    /// True when nothing is mapped.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl HostIommu for SimulatedBackend {
    fn map(&self, iova: u64, gpa: u64, len: u64, perm: Permissions) -> Result<(), BackendError> {
        self.map_calls.fetch_add(1, Ordering::Relaxed);
        let mut maps = self.maps.lock().unwrap_or_else(|e| e.into_inner());
        let end = iova.saturating_add(len);
        let clash = maps
            .range(..end)
            .next_back()
            .is_some_and(|(&s, &(l, _, _))| s + l > iova);
        if clash {
            return Err(BackendError::Exists(iova, len));
        }
        maps.insert(iova, (len, gpa, perm));
        Ok(())
    }

    fn unmap(&self, iova: u64, len: u64) -> Result<u64, BackendError> {
        self.unmap_calls.fetch_add(1, Ordering::Relaxed);
        let mut maps = self.maps.lock().unwrap_or_else(|e| e.into_inner());
        let end = iova.saturating_add(len);
        let inside: Vec<u64> = maps
            .range(iova..end)
            .filter(|(&s, &(l, _, _))| s + l <= end)
            .map(|(&s, _)| s)
            .collect();
        let mut bytes = 0;
        for s in inside {
            if let Some((l, _, _)) = maps.remove(&s) {
                bytes += l;
            }
        }
        Ok(bytes)
    }
}

/// Which backend call a [`FailingBackend`] rule applies to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CallKind {
    /// [`HostIommu::map`].
    Map,
    /// [`HostIommu::unmap`].
    Unmap,
}

/// A [`SimulatedBackend`] that fails chosen calls, for tests of the error
/// paths: a failed call changes nothing in the simulated host (a failed
/// unmap leaves the mapping reachable, as VFIO does).
#[derive(Default)]
pub struct FailingBackend {
    /// The host address space.
    pub sim: SimulatedBackend,
    /// Calls of each kind so far: `[map, unmap]`.
    calls: [AtomicU64; 2],
    /// Per kind: fail calls whose 1-based number is in the set.
    nth: Mutex<[Vec<u64>; 2]>,
    /// Per kind: fail every call while set.
    always: [std::sync::atomic::AtomicBool; 2],
}

impl FailingBackend {
    fn idx(kind: CallKind) -> usize {
        match kind {
            CallKind::Map => 0,
            CallKind::Unmap => 1,
        }
    }

    /// Makes the `n`-th call of `kind` from now on fail (1 = the next).
    pub fn fail_nth(&self, kind: CallKind, n: u64) {
        let i = Self::idx(kind);
        let at = self.calls[i].load(Ordering::SeqCst) + n;
        self.nth.lock().unwrap_or_else(|e| e.into_inner())[i].push(at);
    }

    /// Makes every call of `kind` fail (`true`) or succeed again.
    pub fn fail_always(&self, kind: CallKind, on: bool) {
        self.always[Self::idx(kind)].store(on, Ordering::SeqCst);
    }

    /// Calls of `kind` so far (failed ones included).
    pub fn calls(&self, kind: CallKind) -> u64 {
        self.calls[Self::idx(kind)].load(Ordering::SeqCst)
    }

    fn fails(&self, kind: CallKind) -> bool {
        let i = Self::idx(kind);
        let n = self.calls[i].fetch_add(1, Ordering::SeqCst) + 1;
        let mut nth = self.nth.lock().unwrap_or_else(|e| e.into_inner());
        let hit = nth[i].iter().position(|&k| k == n);
        if let Some(at) = hit {
            nth[i].swap_remove(at);
        }
        hit.is_some() || self.always[i].load(Ordering::SeqCst)
    }
}

impl HostIommu for FailingBackend {
    fn map(&self, iova: u64, gpa: u64, len: u64, perm: Permissions) -> Result<(), BackendError> {
        if self.fails(CallKind::Map) {
            return Err(BackendError::Host("injected map failure".into()));
        }
        self.sim.map(iova, gpa, len, perm)
    }

    fn unmap(&self, iova: u64, len: u64) -> Result<u64, BackendError> {
        if self.fails(CallKind::Unmap) {
            return Err(BackendError::Host("injected unmap failure".into()));
        }
        self.sim.unmap(iova, len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dma_succeeds_only_while_mapped_and_permitted() {
        let b = SimulatedBackend::default();
        b.map(0x10000, 0x8000, 0x2000, Permissions::Read).unwrap();
        assert_eq!(b.dma(0x11000, 0x100, Permissions::Read), Some(0x9000));
        assert_eq!(b.dma(0x11000, 0x100, Permissions::Write), None);
        assert_eq!(
            b.dma(0x11f00, 0x200, Permissions::Read),
            None,
            "runs past the end"
        );
        assert_eq!(
            b.map(0x11000, 0, 0x1000, Permissions::Read),
            Err(BackendError::Exists(0x11000, 0x1000))
        );
        assert_eq!(b.unmap(0x10000, 0x2000), Ok(0x2000));
        assert_eq!(b.dma(0x11000, 0x100, Permissions::Read), None);
        assert!(b.is_empty());
        assert_eq!(b.map_calls.load(Ordering::Relaxed), 2);
    }

    #[test]
    fn failing_backend_fails_the_chosen_calls_only() {
        let b = FailingBackend::default();
        b.fail_nth(CallKind::Map, 2);
        assert!(b.map(0, 0, 0x1000, Permissions::Read).is_ok());
        assert!(b.map(0x1000, 0, 0x1000, Permissions::Read).is_err());
        assert!(b.map(0x1000, 0, 0x1000, Permissions::Read).is_ok());
        b.fail_always(CallKind::Unmap, true);
        assert!(b.unmap(0, 0x2000).is_err());
        assert_eq!(b.sim.len(), 2, "a failed unmap leaves the host mapping");
        b.fail_always(CallKind::Unmap, false);
        assert_eq!(b.unmap(0, 0x2000), Ok(0x2000));
        assert_eq!((b.calls(CallKind::Map), b.calls(CallKind::Unmap)), (3, 2));
    }
}
