//! DMA of assigned functions: the host IOMMU backend.
//!
//! [`VfioBackend`] implements [`viommu::backend::HostIommu`]: each guest
//! MAP becomes VFIO_IOMMU_MAP_DMA of the guest RAM behind the guest-physical
//! range (split at RAM region boundaries, since host addresses are only
//! contiguous within a region), each UNMAP one VFIO_IOMMU_UNMAP_DMA.
//! Without a virtual IOMMU, [`VfioBackend::map_all_guest_ram`] maps all of
//! RAM once at its guest-physical addresses (IOVA = GPA).
//!
//! The ioctls are behind [`DmaMapper`] (implemented on the VFIO container
//! in [`crate::vfio`]) so the bookkeeping here is tested without VFIO.
//! Every ioctl is counted and timed in [`DmaStats`].

use std::collections::BTreeMap;
use std::io;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use serde_json::{json, Value};
use viommu::backend::{BackendError, HostIommu};
use vm_memory::{
    GuestAddress, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion, MemoryRegionAddress,
};

/// Largest chunk [`VfioBackend::map_all_guest_ram`] maps per ioctl, so
/// progress is reported while the kernel pins memory.
const MAP_ALL_CHUNK: u64 = 1 << 30;

/// Guest RAM as host virtual addresses.
///
/// # Safety
///
/// Implementations promise that every range they return stays mapped in
/// the VMM for as long as the implementing object lives, and is guest
/// memory (shared with the guest, never the backing of a Rust reference
/// held across a device's DMA), so a device may read and write it at any
/// time.
pub unsafe trait GuestRam: Send + Sync {
    /// The host address of guest-physical `gpa` and how many bytes from
    /// there are contiguous in the VMM (to the end of its RAM region);
    /// `None` when `gpa` is not RAM.
    fn host_range(&self, gpa: u64) -> Option<(u64, u64)>;
    /// Every RAM region as `(gpa, len)`.
    fn regions(&self) -> Vec<(u64, u64)>;
}

// SAFETY: a GuestMemoryMmap holds its regions by Arc: the mappings live as
// long as this clone does, and they are the guest's RAM.
unsafe impl GuestRam for GuestMemoryMmap {
    fn host_range(&self, gpa: u64) -> Option<(u64, u64)> {
        let r = self.find_region(GuestAddress(gpa))?;
        let off = gpa - r.start_addr().0;
        let hva = r.get_host_address(MemoryRegionAddress(off)).ok()?;
        Some((hva as u64, r.len() - off))
    }

    fn regions(&self) -> Vec<(u64, u64)> {
        self.iter().map(|r| (r.start_addr().0, r.len())).collect()
    }
}

/// The host IOMMU ioctls of one VFIO container.
pub trait DmaMapper: Send + Sync {
    /// VFIO_IOMMU_MAP_DMA: lets devices of the container reach
    /// `[hva, hva + len)` at `[iova, iova + len)`, reading and/or writing.
    ///
    /// # Safety
    ///
    /// Until unmapped, the device may access the range at any time: it must
    /// stay mapped and must only be memory that tolerates that (guest RAM).
    unsafe fn map_dma(
        &self,
        iova: u64,
        hva: u64,
        len: u64,
        read: bool,
        write: bool,
    ) -> io::Result<()>;
    /// VFIO_IOMMU_UNMAP_DMA: removes every mapping inside
    /// `[iova, iova + len)`; returns the bytes unmapped (fails if a mapping
    /// would be split).
    fn unmap_dma(&self, iova: u64, len: u64) -> io::Result<u64>;
}

/// Counts, bytes and time of one kind of ioctl.
#[derive(Debug, Default)]
pub struct OpStats {
    /// Ioctls issued.
    pub calls: AtomicU64,
    /// Ioctls that failed.
    pub errors: AtomicU64,
    /// Bytes mapped or unmapped by successful calls.
    pub bytes: AtomicU64,
    /// Total time in the ioctl, in nanoseconds.
    pub total_ns: AtomicU64,
    /// Longest single ioctl, in nanoseconds.
    pub max_ns: AtomicU64,
}

impl OpStats {
    fn record(&self, start: Instant, bytes: u64, ok: bool) {
        let ns = u64::try_from(start.elapsed().as_nanos()).unwrap_or(u64::MAX);
        self.calls.fetch_add(1, Ordering::Relaxed);
        self.total_ns.fetch_add(ns, Ordering::Relaxed);
        self.max_ns.fetch_max(ns, Ordering::Relaxed);
        if ok {
            self.bytes.fetch_add(bytes, Ordering::Relaxed);
        } else {
            self.errors.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// The counters as JSON (with the mean latency).
    pub fn to_json(&self) -> Value {
        let calls = self.calls.load(Ordering::Relaxed);
        let total = self.total_ns.load(Ordering::Relaxed);
        json!({
            "calls": calls,
            "errors": self.errors.load(Ordering::Relaxed),
            "bytes": self.bytes.load(Ordering::Relaxed),
            "total_ns": total,
            "mean_ns": total.checked_div(calls).unwrap_or(0),
            "max_ns": self.max_ns.load(Ordering::Relaxed),
        })
    }
}

/// VFIO DMA ioctl counters.
#[derive(Debug, Default)]
pub struct DmaStats {
    /// VFIO_IOMMU_MAP_DMA.
    pub map: OpStats,
    /// VFIO_IOMMU_UNMAP_DMA.
    pub unmap: OpStats,
}

impl DmaStats {
    /// `{"map": {...}, "unmap": {...}}`.
    pub fn to_json(&self) -> Value {
        json!({ "map": self.map.to_json(), "unmap": self.unmap.to_json() })
    }
}

/// The host IOMMU of assigned functions, over one VFIO container.
pub struct VfioBackend {
    mapper: Arc<dyn DmaMapper>,
    /// IOVA → length of every VFIO mapping made here.
    maps: Mutex<BTreeMap<u64, u64>>,
    stats: DmaStats,
    /// Set by [`VfioBackend::shutdown`]: maps are refused from then on.
    closed: AtomicBool,
    // Dropped last: the RAM must outlive the mappings (see Drop).
    ram: Arc<dyn GuestRam>,
}

fn host(what: &str, iova: u64, len: u64, e: impl std::fmt::Display) -> BackendError {
    BackendError::Host(format!("{what} {iova:#x}+{len:#x}: {e}"))
}

impl VfioBackend {
    /// A backend mapping `ram` through `mapper`. Map only after the first
    /// device is open: the container has no IOMMU before that.
    pub fn new(mapper: Arc<dyn DmaMapper>, ram: Arc<dyn GuestRam>) -> Self {
        VfioBackend {
            mapper,
            maps: Mutex::new(BTreeMap::new()),
            stats: DmaStats::default(),
            closed: AtomicBool::new(false),
            ram,
        }
    }

    /// The ioctl counters.
    pub fn stats(&self) -> &DmaStats {
        &self.stats
    }

    /// Bytes currently mapped.
    pub fn mapped_bytes(&self) -> u64 {
        self.lock().values().sum()
    }

    fn lock(&self) -> MutexGuard<'_, BTreeMap<u64, u64>> {
        self.maps.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn unmap_locked(&self, maps: &mut BTreeMap<u64, u64>, iova: u64, len: u64) -> io::Result<u64> {
        let t = Instant::now();
        let r = self.mapper.unmap_dma(iova, len);
        self.stats
            .unmap
            .record(t, *r.as_ref().unwrap_or(&0), r.is_ok());
        let end = iova.saturating_add(len);
        if r.is_ok() {
            maps.retain(|&s, &mut l| !(s >= iova && s.saturating_add(l) <= end));
        }
        r
    }

    /// Maps every RAM region at IOVA = GPA (no virtual IOMMU), calling
    /// `progress(bytes_done, bytes_total)` after each chunk.
    pub fn map_all_guest_ram(
        &self,
        mut progress: impl FnMut(u64, u64),
    ) -> Result<(), BackendError> {
        let regions = self.ram.regions();
        let total = regions.iter().map(|r| r.1).sum();
        let mut done = 0;
        for (gpa, len) in regions {
            let mut off = 0;
            while off < len {
                let n = (len - off).min(MAP_ALL_CHUNK);
                self.map(gpa + off, gpa + off, n, vm_memory::Permissions::ReadWrite)?;
                off += n;
                done += n;
                progress(done, total);
            }
        }
        Ok(())
    }

    /// Teardown: refuses every later map (a guest request racing with the
    /// VM's exit cannot re-create a mapping) and removes every mapping;
    /// returns the bytes unmapped. Call it before closing the devices and
    /// before the process exits (`std::process::exit` runs no `Drop`).
    pub fn shutdown(&self) -> Result<u64, BackendError> {
        self.closed.store(true, Ordering::SeqCst);
        self.unmap_all()
    }

    /// Removes every mapping made through this backend (teardown); returns
    /// the bytes unmapped.
    pub fn unmap_all(&self) -> Result<u64, BackendError> {
        let mut maps = self.lock();
        let (Some((&first, _)), Some((&last, &last_len))) =
            (maps.first_key_value(), maps.last_key_value())
        else {
            return Ok(0);
        };
        let len = (last + last_len) - first;
        self.unmap_locked(&mut maps, first, len)
            .map_err(|e| host("VFIO_IOMMU_UNMAP_DMA", first, len, e))
    }
}

impl HostIommu for VfioBackend {
    /// Maps `[iova, iova + len)` to the RAM behind `gpa`. A mapping
    /// without permissions is not made (the device could not use it);
    /// a range that is not entirely RAM fails and leaves nothing mapped.
    fn map(
        &self,
        iova: u64,
        gpa: u64,
        len: u64,
        perm: vm_memory::Permissions,
    ) -> Result<(), BackendError> {
        use vm_memory::Permissions::*;
        let (read, write) = match perm {
            No => return Ok(()),
            Read => (true, false),
            Write => (false, true),
            ReadWrite => (true, true),
        };
        if len == 0 {
            return Ok(());
        }
        let (Some(end), Some(_)) = (iova.checked_add(len), gpa.checked_add(len)) else {
            return Err(host("map", iova, len, "range wraps around"));
        };
        let mut maps = self.lock();
        // Checked under the lock: shutdown's unmap_all waits for this map.
        if self.closed.load(Ordering::SeqCst) {
            return Err(host("map", iova, len, "the VM is shutting down"));
        }
        if maps
            .range(..end)
            .next_back()
            .is_some_and(|(&s, &l)| s + l > iova)
        {
            return Err(BackendError::Exists(iova, len));
        }
        let mut done = 0u64;
        while done < len {
            let chunk = self
                .ram
                .host_range(gpa + done)
                .filter(|(_, avail)| *avail > 0)
                .map(|(hva, avail)| (hva, avail.min(len - done)));
            let result = match chunk {
                None => Err(host(
                    "map",
                    iova,
                    len,
                    format_args!(
                        "guest-physical {:#x} is not RAM (DMA to device memory is not supported)",
                        gpa + done
                    ),
                )),
                Some((hva, n)) => {
                    let t = Instant::now();
                    // SAFETY: `hva..hva + n` is guest RAM per the GuestRam
                    // contract and stays mapped while `self.ram` lives; Drop
                    // removes every mapping before `self.ram` is released.
                    let r = unsafe { self.mapper.map_dma(iova + done, hva, n, read, write) };
                    self.stats.map.record(t, n, r.is_ok());
                    r.map(|()| n)
                        .map_err(|e| host("VFIO_IOMMU_MAP_DMA", iova + done, n, e))
                }
            };
            match result {
                Ok(n) => {
                    maps.insert(iova + done, n);
                    done += n;
                }
                Err(e) => {
                    if done > 0 {
                        if let Err(u) = self.unmap_locked(&mut maps, iova, done) {
                            tracing::error!("VFIO: cannot roll back {iova:#x}+{done:#x}: {u}");
                        }
                    }
                    return Err(e);
                }
            }
        }
        Ok(())
    }

    fn unmap(&self, iova: u64, len: u64) -> Result<u64, BackendError> {
        let end = iova.saturating_add(len);
        let len = end - iova;
        let mut maps = self.lock();
        let touches = maps
            .range(..end)
            .next_back()
            .is_some_and(|(&s, &l)| s.saturating_add(l) > iova);
        if len == 0 || !touches {
            return Ok(0);
        }
        self.unmap_locked(&mut maps, iova, len)
            .map_err(|e| host("VFIO_IOMMU_UNMAP_DMA", iova, len, e))
    }
}

impl Drop for VfioBackend {
    fn drop(&mut self) {
        if let Err(e) = self.unmap_all() {
            tracing::error!("VFIO: teardown: {e}");
        }
    }
}

#[cfg(test)]
#[path = "dma_tests.rs"]
mod tests;
