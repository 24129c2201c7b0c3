//! virtio-pci modern (virtio 1.x) transport.
