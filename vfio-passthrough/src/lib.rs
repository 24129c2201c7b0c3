//! VFIO PCI device assignment for iovmm.
//!
//! Empty on purpose for now: device assignment on vfio-ioctls arrives with
//! the VFIO passthrough work (see the issue tracker).
