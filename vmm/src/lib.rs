//! iovmm: the VMM library behind the `iovmm` binary.
//!
//! Reading order: [`builder`] assembles a VM from a [`config::VmConfig`]:
//! [`memory`] and [`layout`] for guest RAM, [`vstate`] for KVM objects,
//! [`device_manager`] for devices, [`acpi`] and [`boot`] for what the guest
//! finds at start.

#![deny(clippy::undocumented_unsafe_blocks)]

pub mod acpi;
pub mod boot;
pub mod builder;
pub mod cli;
pub mod config;
pub mod device_manager;
pub mod host_test;
pub mod layout;
pub mod memory;
pub mod stats;
pub mod vstate;
