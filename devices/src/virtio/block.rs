//! virtio-blk device backed by a raw file.
