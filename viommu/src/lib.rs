//! The virtual IOMMU of iovmm: a virtio-iommu device whose domains and
//! mappings translate the DMA of emulated devices (through their IOTLB,
//! [`devices::dma::DmaIotlb`]) and are mirrored into a host IOMMU backend
//! for devices whose DMA is done by hardware.
//!
//! Reading order for one guest MAP request: [`device`] (request queue →
//! decoded [`protocol::Request`]) → [`tables::Tables::map`] (spec rules,
//! domain state) → [`backend::HostIommu::map`] (host mapping).

#![deny(missing_docs)]
#![deny(clippy::undocumented_unsafe_blocks)]

pub mod backend;
#[cfg(feature = "bench")]
pub mod bench;
pub mod coop;
pub mod device;
#[cfg(any(test, feature = "fuzzing"))]
pub mod fuzzing;
pub mod host_sync;
pub mod limits;
pub mod poll;
pub mod protocol;
mod state;
pub mod stats;
pub mod tables;
