//! virtio-net device.
