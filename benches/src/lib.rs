//! Microbenchmarks and the application benchmark harness of iovmm.
//!
//! The criterion microbenchmarks of the per-request host path are in
//! `benches/request_path.rs` (`cargo bench -p iovmm-benches`, see
//! docs/performance.md). The library holds [`report`], which turns the
//! per-mode `LAB-ROW` lines of a lab run into a CSV file, SVG charts and a
//! text table (the `iovmm-report` binary).

#![deny(clippy::undocumented_unsafe_blocks)]

pub mod report;
