//! Virtio: the device model trait, the virtio-pci transport and the
//! virtio-net / virtio-blk devices.
//!
//! A device implements [`VirtioDevice`]; the PCI transport owns the
//! virtio 1.x register state machine and calls [`VirtioDevice::activate`]
//! when the driver sets DRIVER_OK. Activated devices process their queues on
//! a worker thread running an `event_manager::EventManager`. A queue the
//! driver broke is not served until reset, and the device asks for one
//! ([`ring`]).

use std::io;
use std::sync::Arc;

use virtio_queue::Queue;
use vmm_sys_util::eventfd::EventFd;

pub use ring::NeedsReset;

/// Guest memory as seen by devices: IOVAs when the device sits behind the
/// virtual IOMMU, guest-physical addresses otherwise (see [`crate::dma`]).
pub type GuestMemory = crate::dma::DmaMemory;

/// Virtio device type IDs used by iovmm (virtio spec 1.2, section 5).
pub mod device_type {
    /// Network card.
    pub const NET: u32 = 1;
    /// Block device.
    pub const BLOCK: u32 = 2;
    /// IOMMU device.
    pub const IOMMU: u32 = 23;
}

/// Feature bits defined by the virtio spec for every device (section 6).
pub mod features {
    /// VIRTIO_F_INDIRECT_DESC.
    pub const INDIRECT_DESC: u64 = 1 << 28;
    /// VIRTIO_F_EVENT_IDX.
    pub const EVENT_IDX: u64 = 1 << 29;
    /// VIRTIO_F_VERSION_1.
    pub const VERSION_1: u64 = 1 << 32;
    /// VIRTIO_F_ACCESS_PLATFORM.
    pub const ACCESS_PLATFORM: u64 = 1 << 33;
}

/// How a device tells the driver that it used buffers or changed its config.
pub trait VirtioInterrupt: Send + Sync {
    /// Signals that queue `queue_index` has new used buffers.
    fn signal_used_queue(&self, queue_index: u16) -> io::Result<()>;
    /// Signals a device configuration change.
    fn signal_config_change(&self) -> io::Result<()>;
}

/// Everything a device needs to start processing its queues.
pub struct ActivateContext {
    /// Guest memory.
    pub mem: GuestMemory,
    /// Interrupt delivery.
    pub interrupt: Arc<dyn VirtioInterrupt>,
    /// The queues the driver enabled, with their index, configured and ready.
    pub queues: Vec<(u16, Queue)>,
    /// The notification eventfd of each queue in `queues` (same order).
    pub queue_evts: Vec<EventFd>,
    /// Features the driver accepted.
    pub acked_features: u64,
    /// How the device asks for a reset when the driver broke a queue
    /// (see [`ring`]): the transport then shows DEVICE_NEEDS_RESET.
    pub needs_reset: NeedsReset,
}

/// Errors from [`VirtioDevice::activate`].
#[derive(Debug, thiserror::Error)]
pub enum ActivateError {
    /// The driver set up a configuration the device cannot run with.
    #[error("invalid device configuration: {0}")]
    BadConfig(String),
    /// The backend (tap, file, thread) failed.
    #[error("device backend failed: {0}")]
    Backend(#[from] io::Error),
}

/// A virtio device model, independent of the transport.
pub trait VirtioDevice: Send {
    /// The virtio device type (see [`device_type`]).
    fn device_type(&self) -> u32;
    /// Maximum size of each queue; the length is the number of queues.
    fn queue_max_sizes(&self) -> &[u16];
    /// Feature bits the device offers.
    fn avail_features(&self) -> u64;
    /// Records the features the driver accepted (a subset of the offered ones).
    fn set_acked_features(&mut self, features: u64);
    /// Reads the device-specific configuration space at `offset`. Reads beyond
    /// its end return zeros.
    fn read_config(&self, offset: u64, data: &mut [u8]);
    /// Writes the device-specific configuration space. Writes to read-only
    /// fields are ignored.
    fn write_config(&mut self, offset: u64, data: &[u8]);
    /// Starts the device (the driver set DRIVER_OK).
    fn activate(&mut self, ctx: ActivateContext) -> Result<(), ActivateError>;
    /// Stops the device's worker and returns it to its initial state, so it
    /// can be activated again.
    fn reset(&mut self);
}

/// Copies the part of a device configuration `config` that a driver read
/// of `data.len()` bytes at `offset` covers; bytes beyond it read as zero.
pub fn read_config_from(config: &[u8], offset: u64, data: &mut [u8]) {
    data.fill(0);
    let Ok(start) = usize::try_from(offset) else {
        return;
    };
    if start < config.len() {
        let n = data.len().min(config.len() - start);
        data[..n].copy_from_slice(&config[start..start + n]);
    }
}

pub mod block;
pub mod net;
pub mod pci_transport;
pub mod ring;
pub mod tap;
#[cfg(any(test, feature = "test-utils"))]
pub mod testing;
pub mod worker;
