//! iovmm: the VMM library behind the `iovmm` binary.
//!
//! See `builder` (VM assembly) and [`config::VmConfig`].

pub mod acpi;
pub mod cli;
pub mod config;
pub mod layout;
