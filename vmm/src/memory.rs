//! Guest RAM: anonymous, transparent-huge-page or hugetlbfs backing.

use vm_memory::{GuestAddress, GuestMemoryMmap, GuestRegionMmap, MmapRegion};

use crate::config::MemoryBacking;
use crate::layout::MemoryLayout;

/// Errors allocating guest memory.
#[derive(Debug, thiserror::Error)]
pub enum MemoryError {
    /// mmap failed.
    #[error("cannot allocate {size} MiB of guest memory ({backing}): {err}{hint}")]
    Mmap {
        /// Size in MiB.
        size: u64,
        /// Backing name.
        backing: &'static str,
        /// The OS error.
        err: String,
        /// How to fix it.
        hint: &'static str,
    },
    /// Building the region collection failed.
    #[error("guest memory layout: {0}")]
    Layout(String),
}

/// Allocates the RAM regions of `layout` with the requested backing.
pub fn create(
    layout: &MemoryLayout,
    backing: MemoryBacking,
) -> Result<GuestMemoryMmap, MemoryError> {
    let (name, extra_flags, hint) = match backing {
        MemoryBacking::Anonymous => ("anonymous", 0, ""),
        MemoryBacking::Thp => ("thp", 0, ""),
        MemoryBacking::Hugetlbfs => (
            "hugetlbfs",
            libc::MAP_HUGETLB,
            ": reserve 2 MiB huge pages first, e.g. echo 1024 > /proc/sys/vm/nr_hugepages",
        ),
    };
    let mut regions = Vec::new();
    for r in &layout.ram {
        let size = usize::try_from(r.len).map_err(|e| MemoryError::Layout(e.to_string()))?;
        let region = vm_memory::mmap::MmapRegionBuilder::new(size)
            .with_mmap_prot(libc::PROT_READ | libc::PROT_WRITE)
            .with_mmap_flags(
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE | extra_flags,
            )
            .with_hugetlbfs(backing == MemoryBacking::Hugetlbfs)
            .build()
            .map_err(|e| MemoryError::Mmap {
                size: r.len >> 20,
                backing: name,
                err: e.to_string(),
                hint,
            })?;
        if backing == MemoryBacking::Thp {
            // SAFETY: the range is exactly the mapping just created and owned
            // by `region`; madvise only changes paging advice.
            let ret = unsafe {
                libc::madvise(
                    region.as_ptr() as *mut libc::c_void,
                    size,
                    libc::MADV_HUGEPAGE,
                )
            };
            if ret != 0 {
                tracing::warn!(
                    "madvise(MADV_HUGEPAGE) failed: {}",
                    std::io::Error::last_os_error()
                );
            }
        }
        let region: MmapRegion<()> = region;
        regions.push(
            GuestRegionMmap::new(region, GuestAddress(r.start))
                .ok_or_else(|| MemoryError::Layout("region wraps the address space".into()))?,
        );
    }
    GuestMemoryMmap::from_regions(regions).map_err(|e| MemoryError::Layout(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::{Bytes, GuestMemoryBackend};

    #[test]
    fn regions_follow_layout() {
        let layout = MemoryLayout::new(64 << 20);
        let mem = create(&layout, MemoryBacking::Anonymous).unwrap();
        assert_eq!(mem.num_regions(), 1);
        mem.write_obj(0xdead_beefu32, GuestAddress((64 << 20) - 4))
            .unwrap();
        assert!(mem.write_obj(1u8, GuestAddress(64 << 20)).is_err());
        let thp = create(&layout, MemoryBacking::Thp).unwrap();
        assert_eq!(thp.num_regions(), 1);
    }
}
