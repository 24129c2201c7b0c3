//! Microbenchmarks and the application benchmark harness of iovmm.
//!
//! Empty on purpose for now: the harness arrives with the measurement work.
