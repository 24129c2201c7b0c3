//! Microbenchmarks and the application benchmark harness of iovmm.
//!
//! For now it holds [`report`], which turns the per-mode `LAB-ROW` lines of a
//! lab run into a CSV file, SVG charts and a text table (the `iovmm-report`
//! binary).

#![deny(clippy::undocumented_unsafe_blocks)]

pub mod report;
