//! Devices of the iovmm hypervisor.
//!
//! This crate knows nothing about KVM or IOMMUs: devices are driven through
//! the [`bus::BusDevice`] trait by whoever owns the vCPUs, raise interrupts
//! through the [`interrupt::MsiInterruptGroup`] trait, and (for DMA) are handed
//! guest memory plus, later, a translation object by the VMM.

#![deny(missing_docs)]
#![deny(clippy::undocumented_unsafe_blocks)]

pub mod bus;
pub mod cpus;
pub mod dma;
pub mod interrupt;
pub mod legacy;
pub mod pci;
pub mod virtio;
