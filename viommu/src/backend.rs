//! The host IOMMU backend: where mappings of endpoints whose DMA is done
//! by hardware (VFIO-assigned devices) must be mirrored.
//!
//! The virtual IOMMU calls [`HostIommu::map`] and [`HostIommu::unmap`]
//! while it handles a guest request and answers the guest only after they
//! returned, so an UNMAP is complete (strict semantics) once the guest
//! sees OK. Ranges are byte ranges, page aligned by the caller.

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
}
