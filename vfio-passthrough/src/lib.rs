//! VFIO PCI device assignment for iovmm.
//!
//! A host PCI function bound to `vfio-pci` is given to the guest as a
//! [`device::VfioPciDevice`] on the emulated PCI root. Reading order:
//!
//! - [`sysfs`]: parse a BDF or sysfs path and check that the function and
//!   its IOMMU group can be assigned (clear errors naming the fix).
//! - [`region`]: the seam to the host function ([`region::DeviceRegions`]);
//!   [`vfio`] implements it with VFIO ioctls, `fake` (feature `test-utils`) for tests.
//! - [`config`] (with [`caps`], [`msi`], [`msix`]): the guest's view of the
//!   configuration space, BARs, capabilities and interrupts.
//! - [`irq`]: MSI/MSI-X vectors as VFIO eventfds routed to KVM irqfds, with
//!   per-vector masking.
//! - [`device`]: the [`devices::pci::PciDevice`] and its mmapped BAR areas.
//! - [`dma`]: the host IOMMU backend ([`viommu::backend::HostIommu`]) that
//!   turns the guest's MAP/UNMAP into VFIO_IOMMU_MAP_DMA/UNMAP_DMA, with
//!   call counts and latency.
//!
//! Nothing here touches KVM: interrupt routes come from the VMM's
//! [`devices::interrupt::MsiInterruptGroup`] and memory slots from its
//! [`device::MmioSlots`].

#![deny(missing_docs)]
#![deny(clippy::undocumented_unsafe_blocks)]

pub mod caps;
pub mod config;
pub mod device;
pub mod dma;
#[cfg(any(test, feature = "test-utils"))]
pub mod fake;
pub mod irq;
pub mod msi;
pub mod msix;
pub mod region;
pub mod sysfs;
pub mod vfio;

#[cfg(test)]
mod device_tests;

pub use device::{DeviceLayout, MmioArea, MmioSlots, VfioPciDevice};
pub use dma::VfioBackend;
pub use region::DeviceRegions;
