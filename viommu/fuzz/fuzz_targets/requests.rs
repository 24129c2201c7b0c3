//! Arbitrary bytes as guest memory plus descriptor records, processed by
//! the virtio-iommu request queue (see `viommu::fuzzing::run`).
#![no_main]
#![deny(clippy::undocumented_unsafe_blocks)]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    viommu::fuzzing::run(data);
});
