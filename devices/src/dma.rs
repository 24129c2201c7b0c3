//! DMA address translation for emulated devices.
//!
//! Devices never know which IOMMU (if any) sits in front of them. They
//! access memory through [`DmaMemory`], vm-memory's `IommuMemory` over
//! guest RAM with a [`DmaIotlb`]: with translation off it is plain guest
//! memory; with it on, every ring and buffer address is an IOVA looked up in
//! the IOTLB cache, and misses are resolved by the [`DmaTranslate`] object
//! the VMM handed in (the virtual IOMMU's view of this endpoint). The owner
//! of the translation invalidates the cache when mappings go away.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock, RwLockReadGuard};

use vm_memory::iommu::{Error as IommuError, Iommu, Iotlb, IotlbIterator, IovaRange};
use vm_memory::{GuestAddress, GuestMemoryMmap, IommuMemory, Permissions};

/// Guest memory as devices access it: IOVAs when translation is on.
pub type DmaMemory = IommuMemory<GuestMemoryMmap, DmaIotlb>;

/// One resolved translation: `[iova, iova + len)` maps to `gpa` with `perm`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DmaMapping {
    /// First IOVA of the mapping.
    pub iova: u64,
    /// Guest-physical address `iova` maps to.
    pub gpa: u64,
    /// Length in bytes (non-zero).
    pub len: u64,
    /// Allowed accesses.
    pub perm: Permissions,
}

/// Resolves IOVAs of one endpoint (implemented by the virtual IOMMU).
pub trait DmaTranslate: Send + Sync {
    /// The mapping containing `iova`, if any. A miss or a permission
    /// failure is a fault: the implementation counts and reports it.
    fn translate(&self, iova: u64, access: Permissions) -> Option<DmaMapping>;
    /// Called when an access to a mapped range was refused because of its
    /// permissions (the IOTLB found the mapping but not the right to
    /// `access`).
    fn permission_fault(&self, iova: u64, access: Permissions);
}

struct Inner {
    tlb: RwLock<Iotlb>,
    source: Arc<dyn DmaTranslate>,
    hits: AtomicU64,
    misses: AtomicU64,
    /// Bumped under the write lock by every invalidation, so that a
    /// translation fetched before an invalidation is never cached after it.
    generation: AtomicU64,
}

/// The per-endpoint IOTLB: a cache of [`DmaTranslate`] results that stays
/// valid until [`DmaIotlb::invalidate`] is called for a range. Cloning
/// gives another handle to the same cache.
#[derive(Clone)]
pub struct DmaIotlb(Arc<Inner>);

impl std::fmt::Debug for DmaIotlb {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DmaIotlb").finish_non_exhaustive()
    }
}

impl DmaIotlb {
    /// An empty cache in front of `source`.
    pub fn new(source: Arc<dyn DmaTranslate>) -> Self {
        DmaIotlb(Arc::new(Inner {
            tlb: RwLock::new(Iotlb::new()),
            source,
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
            generation: AtomicU64::new(0),
        }))
    }

    /// Drops cached translations overlapping `[iova, iova + len)`. Returns
    /// only when no device access that used them is still in progress.
    pub fn invalidate(&self, iova: u64, len: u64) {
        let len = len.min(u64::MAX - iova);
        if len == 0 {
            return;
        }
        let mut tlb = self.0.tlb.write().unwrap_or_else(|e| e.into_inner());
        self.0.generation.fetch_add(1, Ordering::SeqCst);
        // Iotlb takes usize lengths; split huge ranges.
        let mut start = iova;
        let end = iova + len;
        while start < end {
            let chunk = (end - start).min(usize::MAX as u64 >> 1);
            tlb.invalidate_mapping(GuestAddress(start), chunk as usize);
            start += chunk;
        }
    }

    /// Drops every cached translation.
    pub fn invalidate_all(&self) {
        let mut tlb = self.0.tlb.write().unwrap_or_else(|e| e.into_inner());
        self.0.generation.fetch_add(1, Ordering::SeqCst);
        tlb.invalidate_all();
    }

    /// (hits, misses) of the cache so far.
    pub fn counters(&self) -> (u64, u64) {
        (
            self.0.hits.load(Ordering::Relaxed),
            self.0.misses.load(Ordering::Relaxed),
        )
    }

    /// Memory for a device behind this IOTLB; `enabled == false` gives
    /// untranslated guest-physical access (no IOMMU in front).
    pub fn memory(&self, ram: GuestMemoryMmap, enabled: bool) -> DmaMemory {
        IommuMemory::new(ram, self.clone(), enabled, ())
    }

    fn fill(&self, iova: u64, end: u64, access: Permissions) -> Result<(), IommuError> {
        let mut at = iova;
        while at < end {
            let generation = self.0.generation.load(Ordering::SeqCst);
            let Some(m) = self.0.source.translate(at, access) else {
                return Err(cannot_resolve(at, end - at, "no mapping"));
            };
            let m_end = m.iova.saturating_add(m.len);
            if m.len == 0 || m.iova > at || m_end <= at {
                return Err(cannot_resolve(at, end - at, "bad translation"));
            }
            if !m.perm.allow(access) {
                self.0.source.permission_fault(at, access);
                return Err(cannot_resolve(at, end - at, "access not permitted"));
            }
            let len = usize::try_from(m.len).unwrap_or(usize::MAX >> 1);
            let mut tlb = self.0.tlb.write().unwrap_or_else(|e| e.into_inner());
            if self.0.generation.load(Ordering::SeqCst) != generation {
                // Invalidated meanwhile: look the address up again.
                continue;
            }
            tlb.set_mapping(GuestAddress(m.iova), GuestAddress(m.gpa), len, m.perm)?;
            at = m_end;
        }
        Ok(())
    }
}

fn cannot_resolve(iova: u64, len: u64, reason: &str) -> IommuError {
    IommuError::CannotResolve {
        iova_range: IovaRange {
            base: GuestAddress(iova),
            length: usize::try_from(len).unwrap_or(usize::MAX),
        },
        reason: reason.to_string(),
    }
}

impl Iommu for DmaIotlb {
    type IotlbGuard<'a> = RwLockReadGuard<'a, Iotlb>;

    fn translate(
        &self,
        iova: GuestAddress,
        length: usize,
        access: Permissions,
    ) -> Result<IotlbIterator<Self::IotlbGuard<'_>>, IommuError> {
        // Guest-chosen addresses: refuse wrapping or empty ranges before the
        // range map sees them.
        let end = match iova.0.checked_add(length as u64) {
            Some(e) if length > 0 => e,
            _ => return Err(cannot_resolve(iova.0, length as u64, "invalid range")),
        };
        {
            let guard = self.0.tlb.read().unwrap_or_else(|e| e.into_inner());
            if let Ok(it) = Iotlb::lookup(guard, iova, length, access) {
                self.0.hits.fetch_add(1, Ordering::Relaxed);
                return Ok(it);
            }
        }
        self.0.misses.fetch_add(1, Ordering::Relaxed);
        self.fill(iova.0, end, access)?;
        let guard = self.0.tlb.read().unwrap_or_else(|e| e.into_inner());
        Iotlb::lookup(guard, iova, length, access)
            .map_err(|_| cannot_resolve(iova.0, length as u64, "invalidated during lookup"))
    }
}

/// A translation that never resolves anything: for devices whose memory
/// is never translated (the IOMMU flag off).
pub struct NoTranslation;

impl DmaTranslate for NoTranslation {
    fn translate(&self, _iova: u64, _access: Permissions) -> Option<DmaMapping> {
        None
    }
    fn permission_fault(&self, _iova: u64, _access: Permissions) {}
}

/// Plain guest memory as [`DmaMemory`] (no IOMMU in front).
pub fn untranslated(ram: GuestMemoryMmap) -> DmaMemory {
    DmaIotlb::new(Arc::new(NoTranslation)).memory(ram, false)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;
    use vm_memory::Bytes;

    /// A fixed table of mappings; records faults.
    #[derive(Default)]
    struct Table {
        maps: Mutex<Vec<DmaMapping>>,
        faults: Mutex<Vec<u64>>,
        lookups: AtomicU64,
    }

    impl DmaTranslate for Table {
        fn translate(&self, iova: u64, _access: Permissions) -> Option<DmaMapping> {
            self.lookups.fetch_add(1, Ordering::Relaxed);
            let m = self
                .maps
                .lock()
                .unwrap()
                .iter()
                .find(|m| m.iova <= iova && iova - m.iova < m.len)
                .copied();
            if m.is_none() {
                self.faults.lock().unwrap().push(iova);
            }
            m
        }
        fn permission_fault(&self, iova: u64, _access: Permissions) {
            self.faults.lock().unwrap().push(iova);
        }
    }

    fn setup() -> (Arc<Table>, DmaIotlb, DmaMemory) {
        let ram = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 0x10_0000)]).unwrap();
        let t = Arc::new(Table::default());
        t.maps.lock().unwrap().extend([
            DmaMapping {
                iova: 0x1000_0000,
                gpa: 0x2000,
                len: 0x1000,
                perm: Permissions::ReadWrite,
            },
            DmaMapping {
                iova: 0x1000_1000,
                gpa: 0x8000,
                len: 0x1000,
                perm: Permissions::Read,
            },
        ]);
        let tlb = DmaIotlb::new(t.clone());
        let mem = tlb.memory(ram, true);
        (t, tlb, mem)
    }

    #[test]
    fn accesses_are_translated_across_discontiguous_mappings() {
        let (t, tlb, mem) = setup();
        mem.write_obj(0xabcdu16, GuestAddress(0x1000_0ffe)).unwrap();
        let ram = mem.get_backend();
        assert_eq!(ram.read_obj::<u16>(GuestAddress(0x2ffe)).unwrap(), 0xabcd);
        ram.write_obj(0x55u8, GuestAddress(0x8000)).unwrap();
        let v: u32 = mem.read_obj(GuestAddress(0x1000_0fff)).unwrap();
        assert_eq!(v >> 8 & 0xff, 0x55, "second page comes from gpa 0x8000");
        let before = t.lookups.load(Ordering::Relaxed);
        let _: u8 = mem.read_obj(GuestAddress(0x1000_0000)).unwrap();
        assert_eq!(
            t.lookups.load(Ordering::Relaxed),
            before,
            "served by the IOTLB"
        );
        assert!(tlb.counters().0 > 0);
    }

    #[test]
    fn large_accesses_split_over_many_mappings_land_in_each_page() {
        let ram = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 0x10_0000)]).unwrap();
        let t = Arc::new(Table::default());
        // IOVA pages 0..8 map to GPA pages in reverse order.
        t.maps.lock().unwrap().extend((0..8u64).map(|i| DmaMapping {
            iova: 0x4000_0000 + i * 0x1000,
            gpa: 0x8_0000 - i * 0x1000,
            len: 0x1000,
            perm: Permissions::ReadWrite,
        }));
        let tlb = DmaIotlb::new(t.clone());
        let mem = tlb.memory(ram, true);
        let data: Vec<u8> = (0..0x6800u32).map(|i| (i % 251) as u8).collect();
        for round in 0..2 {
            // Round 1 is served from the IOTLB filled by round 0.
            mem.write_slice(&data, GuestAddress(0x4000_0400)).unwrap();
            let ram = mem.get_backend();
            for (k, b) in data.iter().enumerate() {
                let iova_off = 0x400 + k as u64;
                let gpa = 0x8_0000 - (iova_off / 0x1000) * 0x1000 + iova_off % 0x1000;
                assert_eq!(
                    ram.read_obj::<u8>(GuestAddress(gpa)).unwrap(),
                    *b,
                    "round {round} byte {k}"
                );
            }
            let mut back = vec![0u8; data.len()];
            mem.read_slice(&mut back, GuestAddress(0x4000_0400))
                .unwrap();
            assert_eq!(back, data);
        }
    }

    #[test]
    fn unmapped_and_read_only_accesses_fault_without_touching_memory() {
        let (t, _tlb, mem) = setup();
        assert!(mem.write_obj(1u8, GuestAddress(0x3000_0000)).is_err());
        assert!(mem.write_obj(1u32, GuestAddress(0x1000_1000)).is_err());
        assert_eq!(
            mem.get_backend()
                .read_obj::<u32>(GuestAddress(0x8000))
                .unwrap(),
            0
        );
        assert_eq!(*t.faults.lock().unwrap(), vec![0x3000_0000, 0x1000_1000]);
        assert!(mem.read_obj::<u8>(GuestAddress(u64::MAX)).is_err());
    }

    #[test]
    fn invalidation_forces_a_new_lookup() {
        let (t, tlb, mem) = setup();
        let _: u8 = mem.read_obj(GuestAddress(0x1000_0000)).unwrap();
        t.maps.lock().unwrap().remove(0);
        let _: u8 = mem.read_obj(GuestAddress(0x1000_0000)).unwrap();
        tlb.invalidate(0x1000_0000, 0x1000);
        assert!(mem.read_obj::<u8>(GuestAddress(0x1000_0000)).is_err());
        tlb.invalidate(u64::MAX - 1, u64::MAX);
        tlb.invalidate_all();
    }

    #[test]
    fn untranslated_memory_is_guest_physical() {
        let ram = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 0x1000)]).unwrap();
        let mem = untranslated(ram);
        mem.write_obj(7u8, GuestAddress(0x10)).unwrap();
        assert_eq!(
            mem.get_backend()
                .read_obj::<u8>(GuestAddress(0x10))
                .unwrap(),
            7
        );
    }
}
