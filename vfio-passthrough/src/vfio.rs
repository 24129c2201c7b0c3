//! The real host side: VFIO ioctls through vfio-ioctls 0.10.
//!
//! This file is the thin seam that cannot be unit-tested without a VFIO
//! device; everything above it is tested against `crate::fake`.
//!
//! - [`VfioHost`]: the VM's VFIO container (`/dev/vfio/vfio`, type-1 v2
//!   IOMMU). One per VM: every assigned function's group joins it, so they
//!   share one IOMMU address space.
//! - [`VfioRegions`]: one opened function, implementing
//!   [`DeviceRegions`] (region info and sparse-mmap areas, pread/pwrite of
//!   config space and BARs, mmap of BAR areas, VFIO_DEVICE_SET_IRQS).
//! - [`ContainerDma`]: VFIO_IOMMU_MAP_DMA/UNMAP_DMA on the container, the
//!   [`DmaMapper`] under [`crate::dma::VfioBackend`].
//!
//! SET_IRQS and the DMA ioctls are issued here rather than through
//! vfio-ioctls because its wrappers cannot re-target one vector (needed for
//! per-vector masking), always map read-write, and hide the errno and the
//! byte count the unmap returns.

use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::{Arc, Mutex};

use vfio_bindings::bindings::vfio::{
    vfio_iommu_type1_dma_map, vfio_iommu_type1_dma_unmap, vfio_irq_set, VFIO_BASE,
    VFIO_DMA_MAP_FLAG_READ, VFIO_DMA_MAP_FLAG_WRITE, VFIO_IRQ_SET_ACTION_TRIGGER,
    VFIO_IRQ_SET_DATA_EVENTFD, VFIO_IRQ_SET_DATA_NONE, VFIO_PCI_MSIX_IRQ_INDEX,
    VFIO_PCI_MSI_IRQ_INDEX, VFIO_REGION_INFO_FLAG_MMAP, VFIO_REGION_INFO_FLAG_READ,
    VFIO_REGION_INFO_FLAG_WRITE, VFIO_TYPE,
};
use vfio_ioctls::{VfioContainer, VfioDevice, VfioDeviceFd, VfioError, VfioOps, VfioRegionInfoCap};
use vmm_sys_util::eventfd::EventFd;
use vmm_sys_util::ioctl::{ioctl_with_mut_ref, ioctl_with_ptr, ioctl_with_ref};
use vmm_sys_util::ioctl_io_nr;

use crate::dma::DmaMapper;
use crate::region::{DeviceRegions, IrqKind, RegionInfo};
use crate::sysfs::{open_error, AssignError, HostDevice, HostPaths};

/// The ioctl request numbers (include/uapi/linux/vfio.h).
mod nr {
    use super::{ioctl_io_nr, VFIO_BASE, VFIO_TYPE};
    ioctl_io_nr!(VFIO_DEVICE_SET_IRQS, VFIO_TYPE as u32, VFIO_BASE + 10);
    ioctl_io_nr!(VFIO_IOMMU_MAP_DMA, VFIO_TYPE as u32, VFIO_BASE + 13);
    ioctl_io_nr!(VFIO_IOMMU_UNMAP_DMA, VFIO_TYPE as u32, VFIO_BASE + 14);
}
use nr::{VFIO_DEVICE_SET_IRQS, VFIO_IOMMU_MAP_DMA, VFIO_IOMMU_UNMAP_DMA};

/// `vfio_irq_set` is five u32 words followed by the data.
const IRQ_SET_WORDS: usize = 5;
const _: () = assert!(std::mem::size_of::<vfio_irq_set>() == IRQ_SET_WORDS * 4);

fn vfio_error(e: VfioError) -> AssignError {
    AssignError::Vfio(e.to_string())
}

/// The VM's VFIO container.
pub struct VfioHost {
    container: Arc<VfioContainer>,
}

impl VfioHost {
    /// Opens `/dev/vfio/vfio`. `kvm_vfio` is the VM's KVM VFIO device
    /// (`KVM_CREATE_DEVICE` of `KVM_DEV_TYPE_VFIO`, wrapped with
    /// `VfioDeviceFd::new_from_kvm`); with it, KVM learns about each group
    /// (needed for non-coherent DMA and some platforms), without it the
    /// groups are only attached to the container.
    pub fn open(kvm_vfio: Option<Arc<VfioDeviceFd>>) -> Result<Self, AssignError> {
        let container = VfioContainer::new(kvm_vfio).map_err(|e| match e {
            VfioError::OpenContainer(io) => AssignError::Container(io.to_string()),
            e => vfio_error(e),
        })?;
        Ok(VfioHost {
            container: Arc::new(container),
        })
    }

    /// Opens a function that passed [`crate::sysfs::check`]: attaches its
    /// group to the container (the first group also selects the IOMMU
    /// type, so DMA can only be mapped after this) and opens the device.
    pub fn open_device(&self, dev: &HostDevice) -> Result<Arc<VfioRegions>, AssignError> {
        let ops: Arc<dyn VfioOps> = self.container.clone();
        let device = VfioDevice::new(&dev.sysfs_path, ops, false).map_err(|e| match e {
            VfioError::OpenGroup(io, _) => {
                open_error(dev.group, &HostPaths::default().group_node(dev.group), &io)
            }
            VfioError::GroupViable => AssignError::GroupNotViableAtOpen(dev.group),
            e => vfio_error(e),
        })?;
        Ok(Arc::new(VfioRegions {
            device,
            mmaps: Mutex::new(Vec::new()),
        }))
    }

    /// [`crate::sysfs::check`] on the real `/sys` and `/dev`, then
    /// [`Self::open_device`]: what `--vfio 0000:03:00.0` needs.
    pub fn assign(&self, spec: &str) -> Result<(HostDevice, Arc<VfioRegions>), AssignError> {
        let dev = crate::sysfs::check(spec, &HostPaths::default())?;
        let regions = self.open_device(&dev)?;
        Ok((dev, regions))
    }

    /// The container's DMA ioctls, for [`crate::dma::VfioBackend`].
    pub fn dma_mapper(&self) -> Arc<dyn DmaMapper> {
        Arc::new(ContainerDma {
            container: self.container.clone(),
        })
    }
}

/// One opened VFIO PCI function.
pub struct VfioRegions {
    device: VfioDevice,
    /// `(address, length)` of every mmap, unmapped on drop.
    mmaps: Mutex<Vec<(usize, usize)>>,
}

fn irq_index(kind: IrqKind) -> u32 {
    match kind {
        IrqKind::Msi => VFIO_PCI_MSI_IRQ_INDEX,
        IrqKind::MsiX => VFIO_PCI_MSIX_IRQ_INDEX,
    }
}

impl VfioRegions {
    /// VFIO_DEVICE_SET_IRQS with eventfds for vectors `start..start + n`,
    /// or (empty `fds`, `start` 0) disabling the whole index.
    fn set_irqs(&self, kind: IrqKind, start: u32, fds: &[RawFd]) -> io::Result<()> {
        let data = if fds.is_empty() {
            VFIO_IRQ_SET_DATA_NONE
        } else {
            VFIO_IRQ_SET_DATA_EVENTFD
        };
        let mut buf: Vec<u32> = vec![
            ((IRQ_SET_WORDS + fds.len()) * 4) as u32,
            data | VFIO_IRQ_SET_ACTION_TRIGGER,
            irq_index(kind),
            start,
            fds.len() as u32,
        ];
        buf.extend(fds.iter().map(|&fd| fd as u32));
        // SAFETY: `buf` is a vfio_irq_set header (argsz, flags, index,
        // start, count) followed by `count` eventfd numbers, argsz bytes in
        // all; the kernel only reads it, and it outlives the call.
        let ret = unsafe { ioctl_with_ptr(&self.device, VFIO_DEVICE_SET_IRQS(), buf.as_ptr()) };
        if ret < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }
}

impl DeviceRegions for VfioRegions {
    fn region_info(&self, index: u32) -> Option<RegionInfo> {
        let size = self.device.get_region_size(index);
        if size == 0 {
            return None;
        }
        let flags = self.device.get_region_flags(index);
        let sparse = self
            .device
            .get_region_caps(index)
            .into_iter()
            .find_map(|c| match c {
                VfioRegionInfoCap::SparseMmap(s) => Some(
                    s.areas
                        .iter()
                        .map(|a| (a.offset, a.size))
                        .collect::<Vec<_>>(),
                ),
                _ => None,
            });
        // A sparse-mmap capability without areas means nothing may be mapped.
        let mmap = flags & VFIO_REGION_INFO_FLAG_MMAP != 0
            && sparse.as_ref().is_none_or(|s| !s.is_empty());
        Some(RegionInfo {
            size,
            readable: flags & VFIO_REGION_INFO_FLAG_READ != 0,
            writable: flags & VFIO_REGION_INFO_FLAG_WRITE != 0,
            mmap,
            sparse_mmap: sparse.unwrap_or_default(),
        })
    }

    fn read(&self, index: u32, offset: u64, data: &mut [u8]) {
        // vfio-ioctls logs and leaves the buffer untouched on failure.
        data.fill(0xff);
        self.device.region_read(index, data, offset);
    }

    fn write(&self, index: u32, offset: u64, data: &[u8]) {
        self.device.region_write(index, data, offset);
    }

    fn mmap(&self, index: u32, offset: u64, size: u64) -> io::Result<u64> {
        let info = self
            .region_info(index)
            .filter(|i| i.mmap)
            .ok_or_else(|| io::Error::new(io::ErrorKind::Unsupported, "region is not mmap-able"))?;
        let bad = || io::Error::new(io::ErrorKind::InvalidInput, "area outside the region");
        if offset.checked_add(size).is_none_or(|e| e > info.size) {
            return Err(bad());
        }
        let file_off = self
            .device
            .get_region_offset(index)
            .checked_add(offset)
            .and_then(|o| libc::off_t::try_from(o).ok())
            .ok_or_else(bad)?;
        let len = usize::try_from(size).map_err(|_| bad())?;
        let mut prot = 0;
        if info.readable {
            prot |= libc::PROT_READ;
        }
        if info.writable {
            prot |= libc::PROT_WRITE;
        }
        // SAFETY: a new shared mapping at an address the kernel picks, of
        // the device fd at the region's offset; no existing memory is
        // affected. It is unmapped in Drop.
        let addr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                prot,
                libc::MAP_SHARED,
                self.device.as_raw_fd(),
                file_off,
            )
        };
        if addr == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        self.mmaps
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push((addr as usize, len));
        Ok(addr as u64)
    }

    fn irq_count(&self, kind: IrqKind) -> u32 {
        self.device
            .get_irq_info(irq_index(kind))
            .map_or(0, |i| i.count)
    }

    fn enable_irqs(&self, kind: IrqKind, fds: &[&EventFd]) -> io::Result<()> {
        let raw: Vec<RawFd> = fds.iter().map(|f| f.as_raw_fd()).collect();
        if raw.is_empty() {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, "no vectors"));
        }
        self.set_irqs(kind, 0, &raw)
    }

    fn set_irq(&self, kind: IrqKind, vector: u32, fd: &EventFd) -> io::Result<()> {
        self.set_irqs(kind, vector, &[fd.as_raw_fd()])
    }

    fn disable_irqs(&self, kind: IrqKind) -> io::Result<()> {
        self.set_irqs(kind, 0, &[])
    }
}

impl Drop for VfioRegions {
    fn drop(&mut self) {
        let maps = std::mem::take(self.mmaps.get_mut().unwrap_or_else(|e| e.into_inner()));
        for (addr, len) in maps {
            // SAFETY: `addr..addr + len` was returned by our mmap and is
            // unmapped once; the VMM removed its memory slots before
            // dropping the device (VfioPciDevice::drop).
            unsafe { libc::munmap(addr as *mut libc::c_void, len) };
        }
    }
}

/// VFIO_IOMMU_MAP_DMA/UNMAP_DMA on a container.
pub struct ContainerDma {
    container: Arc<VfioContainer>,
}

impl DmaMapper for ContainerDma {
    unsafe fn map_dma(
        &self,
        iova: u64,
        hva: u64,
        len: u64,
        read: bool,
        write: bool,
    ) -> io::Result<()> {
        let mut flags = 0;
        if read {
            flags |= VFIO_DMA_MAP_FLAG_READ;
        }
        if write {
            flags |= VFIO_DMA_MAP_FLAG_WRITE;
        }
        let map = vfio_iommu_type1_dma_map {
            argsz: std::mem::size_of::<vfio_iommu_type1_dma_map>() as u32,
            flags,
            vaddr: hva,
            iova,
            size: len,
        };
        // SAFETY: the kernel reads `map`, which lives across the call; the
        // caller upholds the contract on the host range (see DmaMapper).
        let ret = unsafe { ioctl_with_ref(&*self.container, VFIO_IOMMU_MAP_DMA(), &map) };
        if ret < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    fn unmap_dma(&self, iova: u64, len: u64) -> io::Result<u64> {
        let mut unmap = vfio_iommu_type1_dma_unmap {
            argsz: std::mem::size_of::<vfio_iommu_type1_dma_unmap>() as u32,
            flags: 0,
            iova,
            size: len,
            ..Default::default()
        };
        // SAFETY: the kernel reads and updates `unmap` (size = bytes
        // unmapped), which lives across the call; unmapping never makes
        // memory unsafe to use.
        let ret =
            unsafe { ioctl_with_mut_ref(&*self.container, VFIO_IOMMU_UNMAP_DMA(), &mut unmap) };
        if ret < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(unmap.size)
    }
}
