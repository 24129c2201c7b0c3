//! Command-line interface of the `iovmm` binary.
