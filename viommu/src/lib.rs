//! The virtual IOMMU of iovmm.
//!
//! Empty on purpose for now: the virtio-iommu device, the translation
//! cache, the strict/lazy/passthrough policies and the host IOMMU backend
//! trait arrive with the virtio-iommu work (see the issue tracker). Nothing
//! here pretends to work yet.
