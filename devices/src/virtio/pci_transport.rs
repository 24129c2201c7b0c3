//! The virtio-pci modern transport (virtio 1.2, section 4.1).
//!
//! One 64-bit memory BAR holds every structure the driver uses:
//!
//! | offset   | structure                                        |
//! |----------|--------------------------------------------------|
//! | 0x0000   | common configuration                             |
//! | 0x1000   | ISR status                                       |
//! | 0x2000   | device-specific configuration                    |
//! | 0x3000   | notifications, 4 bytes per queue (KVM ioeventfd) |
//! | 0x4000   | MSI-X table                                      |
//! | 0x6000   | MSI-X pending-bit array                          |
//!
//! The transport owns the driver-visible state machine (status, features,
//! queue setup) and hands ready queues to the [`VirtioDevice`] on DRIVER_OK.

use std::io;
use std::sync::atomic::{AtomicU16, AtomicU8, Ordering};
use std::sync::{Arc, Mutex};

use virtio_queue::{Queue, QueueT};
use vmm_sys_util::eventfd::EventFd;

use super::{features, ActivateContext, GuestMemory, NeedsReset, VirtioDevice, VirtioInterrupt};
use crate::interrupt::MsiInterruptGroup;
use crate::pci::config::{PciConfiguration, PciIds};
use crate::pci::msix::Msix;
use crate::pci::{BarInfo, BarKind, BarMove, PciDevice};

const COMMON_OFFSET: u64 = 0x0000;
const COMMON_LEN: u64 = 0x38;
const ISR_OFFSET: u64 = 0x1000;
const DEVICE_CFG_OFFSET: u64 = 0x2000;
const DEVICE_CFG_LEN: u64 = 0x1000;
const NOTIFY_OFFSET: u64 = 0x3000;
const NOTIFY_MULTIPLIER: u32 = 4;
const MSIX_TABLE_OFFSET: u64 = 0x4000;
const MSIX_PBA_OFFSET: u64 = 0x6000;

/// "No MSI-X vector" as the driver writes it.
pub const NO_VECTOR: u16 = 0xffff;

/// Device status bits (virtio 1.2, 2.1).
pub mod status {
    /// ACKNOWLEDGE.
    pub const ACKNOWLEDGE: u8 = 1;
    /// DRIVER.
    pub const DRIVER: u8 = 2;
    /// DRIVER_OK.
    pub const DRIVER_OK: u8 = 4;
    /// FEATURES_OK.
    pub const FEATURES_OK: u8 = 8;
    /// DEVICE_NEEDS_RESET.
    pub const NEEDS_RESET: u8 = 0x40;
    /// FAILED.
    pub const FAILED: u8 = 0x80;
}

/// Virtio PCI capability types.
mod cap {
    pub const COMMON: u8 = 1;
    pub const NOTIFY: u8 = 2;
    pub const ISR: u8 = 3;
    pub const DEVICE: u8 = 4;
    pub const PCI_CFG: u8 = 5;
}

/// Errors creating the transport.
#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    /// Building the configuration space failed.
    #[error("PCI configuration: {0}")]
    Config(#[from] crate::pci::config::ConfigError),
    /// Creating an eventfd or queue failed.
    #[error("virtio transport: {0}")]
    Io(#[from] io::Error),
    /// The MSI group is too small for one vector per queue plus config.
    #[error("need {0} MSI-X vectors")]
    Vectors(usize),
}

/// Delivers a device's interrupts through MSI-X, setting ISR bits.
struct PciInterrupt {
    msix: Arc<Mutex<Msix>>,
    isr: Arc<AtomicU8>,
    config_vector: Arc<AtomicU16>,
    queue_vectors: Vec<u16>,
}

impl PciInterrupt {
    fn raise(&self, isr_bit: u8, vector: u16) -> io::Result<()> {
        self.isr.fetch_or(isr_bit, Ordering::SeqCst);
        if vector != NO_VECTOR {
            self.msix
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .signal(usize::from(vector));
        }
        Ok(())
    }
}

impl VirtioInterrupt for PciInterrupt {
    fn signal_used_queue(&self, queue_index: u16) -> io::Result<()> {
        let v = self
            .queue_vectors
            .get(usize::from(queue_index))
            .copied()
            .unwrap_or(NO_VECTOR);
        self.raise(1, v)
    }

    fn signal_config_change(&self) -> io::Result<()> {
        self.raise(2, self.config_vector.load(Ordering::SeqCst))
    }
}

/// A virtio device on the PCI bus.
pub struct VirtioPciDevice {
    cfg: PciConfiguration,
    device: Box<dyn VirtioDevice>,
    mem: GuestMemory,
    msix: Arc<Mutex<Msix>>,
    msix_cap: usize,
    pci_cfg_cap: usize,
    isr: Arc<AtomicU8>,
    config_vector: Arc<AtomicU16>,
    queues: Vec<Queue>,
    queue_vectors: Vec<u16>,
    queue_evts: Vec<EventFd>,
    device_feature_select: u32,
    driver_feature_select: u32,
    driver_features: u64,
    queue_select: u16,
    status: u8,
    config_generation: u8,
    activated: bool,
    /// The running device's reset request (set while activated).
    device_needs_reset: Option<NeedsReset>,
    access_platform: bool,
}

impl VirtioPciDevice {
    /// Size of BAR0.
    pub const BAR_SIZE: u64 = 0x8000;

    /// Wraps `device` with its BAR0 at `bar_addr` (aligned to
    /// [`Self::BAR_SIZE`]); `msi` needs one vector per queue plus one.
    pub fn new(
        device: Box<dyn VirtioDevice>,
        mem: GuestMemory,
        msi: Arc<dyn MsiInterruptGroup>,
        bar_addr: u64,
    ) -> Result<Self, TransportError> {
        let nq = device.queue_max_sizes().len();
        if msi.len() < nq + 1 || msi.len() > 256 {
            return Err(TransportError::Vectors(nq + 1));
        }
        let ty = device.device_type();
        let class = match ty {
            super::device_type::NET => (0x02, 0x00, 0x00),
            super::device_type::BLOCK => (0x01, 0x00, 0x00),
            super::device_type::IOMMU => (0x08, 0x06, 0x00),
            _ => (0xff, 0x00, 0x00),
        };
        let mut cfg = PciConfiguration::new(PciIds {
            vendor: 0x1af4,
            device: 0x1040 + ty as u16,
            class,
            revision: 1,
            subsystem_vendor: 0x1af4,
            subsystem: 0x40,
        });
        cfg.add_bar(0, bar_addr, Self::BAR_SIZE, BarKind::Mmio64)?;
        let msix = Msix::new(msi);
        let vcap = |ty: u8, off: u64, len: u64, extra: &[u8]| {
            let mut c = vec![0x09, 0, (16 + extra.len()) as u8, ty, 0, 0, 0, 0];
            c.extend_from_slice(&(off as u32).to_le_bytes());
            c.extend_from_slice(&(len as u32).to_le_bytes());
            c.extend_from_slice(extra);
            c
        };
        cfg.add_capability(&vcap(cap::COMMON, COMMON_OFFSET, COMMON_LEN, &[]), &[])?;
        cfg.add_capability(&vcap(cap::ISR, ISR_OFFSET, 1, &[]), &[])?;
        cfg.add_capability(
            &vcap(cap::DEVICE, DEVICE_CFG_OFFSET, DEVICE_CFG_LEN, &[]),
            &[],
        )?;
        let notify_len = (nq.max(1) as u64) * u64::from(NOTIFY_MULTIPLIER);
        cfg.add_capability(
            &vcap(
                cap::NOTIFY,
                NOTIFY_OFFSET,
                notify_len,
                &NOTIFY_MULTIPLIER.to_le_bytes(),
            ),
            &[],
        )?;
        // PCI configuration access: bar, offset, length and data writable.
        let pci_cfg_cap =
            cfg.add_capability(&vcap(cap::PCI_CFG, 0, 0, &[0; 4]), &[(4, 1), (8, 12)])?;
        let body = msix.capability(0, MSIX_TABLE_OFFSET as u32, MSIX_PBA_OFFSET as u32);
        let msix_cap = cfg.add_capability(&body, &[(3, 1)])?;
        let mut queues = Vec::with_capacity(nq);
        let mut queue_evts = Vec::with_capacity(nq);
        for &max in device.queue_max_sizes() {
            queues.push(Queue::new(max).map_err(|e| {
                io::Error::new(io::ErrorKind::InvalidInput, format!("queue: {e:?}"))
            })?);
            queue_evts.push(EventFd::new(libc::EFD_NONBLOCK)?);
        }
        Ok(VirtioPciDevice {
            cfg,
            device,
            mem,
            msix: Arc::new(Mutex::new(msix)),
            msix_cap,
            pci_cfg_cap,
            isr: Arc::new(AtomicU8::new(0)),
            config_vector: Arc::new(AtomicU16::new(NO_VECTOR)),
            queue_vectors: vec![NO_VECTOR; nq],
            queues,
            queue_evts,
            device_feature_select: 0,
            driver_feature_select: 0,
            driver_features: 0,
            queue_select: 0,
            status: 0,
            config_generation: 0,
            activated: false,
            device_needs_reset: None,
            access_platform: false,
        })
    }

    /// Puts the device behind the IOMMU that `mem` translates through: the
    /// device offers VIRTIO_F_ACCESS_PLATFORM and, when the driver accepts
    /// it, every ring and buffer address is an IOVA.
    pub fn with_access_platform(mut self) -> Self {
        self.access_platform = true;
        self
    }

    fn offered_features(&self) -> u64 {
        let ap = if self.access_platform {
            features::ACCESS_PLATFORM
        } else {
            0
        };
        self.device.avail_features() | ap
    }

    /// The device status byte as the driver reads it: what it wrote, plus
    /// DEVICE_NEEDS_RESET when the transport or the running device found
    /// an error only a reset clears.
    pub fn status(&self) -> u8 {
        let device = self
            .device_needs_reset
            .as_ref()
            .is_some_and(NeedsReset::is_raised);
        if device {
            self.status | status::NEEDS_RESET
        } else {
            self.status
        }
    }

    fn msix_lock(&self) -> std::sync::MutexGuard<'_, Msix> {
        self.msix.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn reset(&mut self) {
        if self.activated {
            // Stops the device's worker: nothing raises the old request
            // after this.
            self.device.reset();
            self.activated = false;
        }
        self.device_needs_reset = None;
        for q in &mut self.queues {
            q.reset();
        }
        self.queue_vectors.fill(NO_VECTOR);
        self.config_vector.store(NO_VECTOR, Ordering::SeqCst);
        self.isr.store(0, Ordering::SeqCst);
        self.driver_features = 0;
        self.device_feature_select = 0;
        self.driver_feature_select = 0;
        self.queue_select = 0;
        self.status = 0;
    }

    fn set_status(&mut self, val: u8) {
        if val == 0 {
            self.reset();
            return;
        }
        let mut val = val;
        if val & status::FEATURES_OK != 0 && self.status & status::FEATURES_OK == 0 {
            let offered = self.offered_features();
            let ok = self.driver_features & !offered == 0
                && self.driver_features & features::VERSION_1 != 0;
            if ok {
                let own = self.device.avail_features();
                self.device.set_acked_features(self.driver_features & own);
            } else {
                val &= !status::FEATURES_OK;
            }
        }
        let was_ok = self.status & status::DRIVER_OK != 0;
        self.status = val;
        if val & status::DRIVER_OK != 0 && !was_ok && val & status::FEATURES_OK != 0 {
            self.activate();
        }
    }

    fn activate(&mut self) {
        let mut queues = Vec::new();
        let mut evts = Vec::new();
        for (i, q) in self.queues.iter().enumerate() {
            if !q.ready() {
                continue;
            }
            if !q.is_valid(&self.mem) {
                tracing::warn!("virtio: queue {i} has an invalid layout; needs reset");
                self.needs_reset();
                return;
            }
            let evt = match self.queue_evts[i].try_clone() {
                Ok(e) => e,
                Err(e) => {
                    tracing::error!("virtio: cannot clone queue eventfd: {e}");
                    self.needs_reset();
                    return;
                }
            };
            let Ok(copy) = Queue::try_from(q.state()) else {
                self.needs_reset();
                return;
            };
            queues.push((i as u16, copy));
            evts.push(evt);
        }
        let interrupt: Arc<dyn VirtioInterrupt> = Arc::new(PciInterrupt {
            msix: self.msix.clone(),
            isr: self.isr.clone(),
            config_vector: self.config_vector.clone(),
            queue_vectors: self.queue_vectors.clone(),
        });
        let needs_reset = NeedsReset::new(interrupt.clone());
        let mut mem = self.mem.clone();
        mem.set_iommu_enabled(
            self.access_platform && self.driver_features & features::ACCESS_PLATFORM != 0,
        );
        let ctx = ActivateContext {
            mem,
            interrupt,
            queues,
            queue_evts: evts,
            acked_features: self.driver_features,
            needs_reset: needs_reset.clone(),
        };
        match self.device.activate(ctx) {
            Ok(()) => {
                self.activated = true;
                self.device_needs_reset = Some(needs_reset);
            }
            Err(e) => {
                tracing::error!("virtio device type {}: {e}", self.device.device_type());
                self.needs_reset();
            }
        }
    }

    fn needs_reset(&mut self) {
        self.status |= status::NEEDS_RESET;
        let v = self.config_vector.load(Ordering::SeqCst);
        self.isr.fetch_or(2, Ordering::SeqCst);
        if v != NO_VECTOR {
            self.msix_lock().signal(usize::from(v));
        }
    }

    fn selected_queue(&mut self) -> Option<&mut Queue> {
        self.queues.get_mut(usize::from(self.queue_select))
    }

    fn read_common(&mut self, offset: u64, data: &mut [u8]) {
        let q = usize::from(self.queue_select);
        let v: u64 = match (offset, data.len()) {
            (0x00, 4) => u64::from(self.device_feature_select),
            (0x04, 4) => match self.device_feature_select {
                0 => self.offered_features() & 0xffff_ffff,
                1 => self.offered_features() >> 32,
                _ => 0,
            },
            (0x08, 4) => u64::from(self.driver_feature_select),
            (0x0c, 4) => match self.driver_feature_select {
                0 => self.driver_features & 0xffff_ffff,
                1 => self.driver_features >> 32,
                _ => 0,
            },
            (0x10, 2) => u64::from(self.config_vector.load(Ordering::SeqCst)),
            (0x12, 2) => self.queues.len() as u64,
            (0x14, 1) => u64::from(self.status()),
            (0x15, 1) => u64::from(self.config_generation),
            (0x16, 2) => u64::from(self.queue_select),
            (0x18, 2) => self.queues.get(q).map_or(0, |q| u64::from(q.size())),
            (0x1a, 2) => self
                .queue_vectors
                .get(q)
                .map_or(u64::from(NO_VECTOR), |v| u64::from(*v)),
            (0x1c, 2) => self.queues.get(q).map_or(0, |q| u64::from(q.ready())),
            (0x1e, 2) => self.queue_select as u64,
            (0x20 | 0x24 | 0x28 | 0x2c | 0x30 | 0x34, 4) => {
                let Some(q) = self.queues.get(q) else {
                    data.fill(0);
                    return;
                };
                let full = match offset & !7 {
                    0x20 => q.desc_table(),
                    0x28 => q.avail_ring(),
                    _ => q.used_ring(),
                };
                if offset & 4 == 0 {
                    full & 0xffff_ffff
                } else {
                    full >> 32
                }
            }
            _ => 0,
        };
        let bytes = v.to_le_bytes();
        let n = data.len().min(8);
        data[..n].copy_from_slice(&bytes[..n]);
    }

    fn write_common(&mut self, offset: u64, data: &[u8]) {
        let mut b = [0u8; 8];
        let n = data.len().min(8);
        b[..n].copy_from_slice(&data[..n]);
        let v = u64::from_le_bytes(b);
        let live = self.status & status::DRIVER_OK != 0;
        let nvec = self.msix_lock().len();
        let vector = |v: u64| -> u16 {
            let v = v as u16;
            if usize::from(v) < nvec {
                v
            } else {
                NO_VECTOR
            }
        };
        match (offset, data.len()) {
            (0x00, 4) => self.device_feature_select = v as u32,
            (0x08, 4) => self.driver_feature_select = v as u32,
            (0x0c, 4) if self.status & status::FEATURES_OK == 0 => {
                match self.driver_feature_select {
                    0 => self.driver_features = (self.driver_features & !0xffff_ffff) | v,
                    1 => self.driver_features = (self.driver_features & 0xffff_ffff) | v << 32,
                    _ => {}
                }
            }
            (0x10, 2) => self.config_vector.store(vector(v), Ordering::SeqCst),
            (0x14, 1) => self.set_status(v as u8),
            (0x16, 2) => self.queue_select = v as u16,
            (0x18, 2) if !live => {
                if let Some(q) = self.selected_queue() {
                    // An invalid size leaves the queue unusable (is_valid fails).
                    if q.try_set_size(v as u16).is_err() {
                        tracing::debug!("virtio: driver chose invalid queue size {v}");
                    }
                }
            }
            (0x1a, 2) => {
                let vec = vector(v);
                if let Some(slot) = self.queue_vectors.get_mut(usize::from(self.queue_select)) {
                    *slot = vec;
                }
            }
            (0x1c, 2) if !live => {
                if let Some(q) = self.selected_queue() {
                    q.set_ready(v == 1);
                }
            }
            (0x20 | 0x24 | 0x28 | 0x2c | 0x30 | 0x34, 4) if !live => {
                let (lo, hi) = if offset & 4 == 0 {
                    (Some(v as u32), None)
                } else {
                    (None, Some(v as u32))
                };
                if let Some(q) = self.selected_queue() {
                    match offset & !7 {
                        0x20 => q.set_desc_table_address(lo, hi),
                        0x28 => q.set_avail_ring_address(lo, hi),
                        _ => q.set_used_ring_address(lo, hi),
                    }
                }
            }
            _ => tracing::trace!("virtio: ignored common config write at {offset:#x}"),
        }
    }

    /// Handles the VIRTIO_PCI_CAP_PCI_CFG window after a config write.
    fn pci_cfg_access(&mut self, reg: usize, write: Option<(u64, &[u8])>) -> Option<u32> {
        let base = self.pci_cfg_cap / 4;
        if reg != base + 4 {
            return None;
        }
        let bar = self.cfg.read_reg(base + 1) & 0xff;
        let off = u64::from(self.cfg.read_reg(base + 2));
        let len = self.cfg.read_reg(base + 3) as usize;
        if bar != 0 || !matches!(len, 1 | 2 | 4) || off + len as u64 > Self::BAR_SIZE {
            return Some(0);
        }
        match write {
            Some((byte, data)) => {
                if byte == 0 && data.len() >= len {
                    self.write_bar(0, off, &data[..len]);
                }
                None
            }
            None => {
                let mut buf = [0u8; 4];
                self.read_bar(0, off, &mut buf[..len]);
                Some(u32::from_le_bytes(buf))
            }
        }
    }
}

impl PciDevice for VirtioPciDevice {
    fn read_config_register(&mut self, reg: usize) -> u32 {
        if let Some(v) = self.pci_cfg_access(reg, None) {
            return v;
        }
        self.cfg.read_reg(reg)
    }

    fn write_config_register(&mut self, reg: usize, offset: u64, data: &[u8]) -> Option<BarMove> {
        let moved = self.cfg.write_reg(reg, offset, data);
        if reg == self.msix_cap / 4 {
            let written = (self.cfg.read_reg(reg) >> 16) as u16;
            let mut m = self.msix_lock();
            m.set_control(written);
            let ctl = m.control();
            drop(m);
            let low = self.cfg.read_reg(reg) & 0xffff;
            self.cfg.set_reg(reg, low | u32::from(ctl) << 16);
        }
        self.pci_cfg_access(reg, Some((offset, data)));
        moved
    }

    fn bars(&self) -> Vec<BarInfo> {
        self.cfg.bars()
    }

    fn read_bar(&mut self, _bar: usize, offset: u64, data: &mut [u8]) {
        match offset {
            o if o < COMMON_LEN => self.read_common(o, data),
            o if o == ISR_OFFSET && data.len() == 1 => {
                data[0] = self.isr.swap(0, Ordering::SeqCst);
            }
            o if (DEVICE_CFG_OFFSET..DEVICE_CFG_OFFSET + DEVICE_CFG_LEN).contains(&o) => {
                self.device.read_config(o - DEVICE_CFG_OFFSET, data)
            }
            o if (MSIX_TABLE_OFFSET..MSIX_PBA_OFFSET).contains(&o) => {
                self.msix_lock().read_table(o - MSIX_TABLE_OFFSET, data)
            }
            o if o >= MSIX_PBA_OFFSET => self.msix_lock().read_pba(o - MSIX_PBA_OFFSET, data),
            _ => data.fill(0),
        }
    }

    fn write_bar(&mut self, _bar: usize, offset: u64, data: &[u8]) {
        match offset {
            o if o < COMMON_LEN => self.write_common(o, data),
            o if (DEVICE_CFG_OFFSET..DEVICE_CFG_OFFSET + DEVICE_CFG_LEN).contains(&o) => {
                self.device.write_config(o - DEVICE_CFG_OFFSET, data)
            }
            o if (NOTIFY_OFFSET..MSIX_TABLE_OFFSET).contains(&o) => {
                // Only reached when the ioeventfd is not registered.
                let q = ((o - NOTIFY_OFFSET) / u64::from(NOTIFY_MULTIPLIER)) as usize;
                if let Some(evt) = self.queue_evts.get(q) {
                    let _ = evt.write(1);
                }
            }
            o if (MSIX_TABLE_OFFSET..MSIX_PBA_OFFSET).contains(&o) => {
                self.msix_lock().write_table(o - MSIX_TABLE_OFFSET, data)
            }
            _ => {}
        }
    }

    fn ioeventfds(&self) -> Vec<(usize, u64, &EventFd)> {
        self.queue_evts
            .iter()
            .enumerate()
            .map(|(i, e)| {
                (
                    0,
                    NOTIFY_OFFSET + i as u64 * u64::from(NOTIFY_MULTIPLIER),
                    e,
                )
            })
            .collect()
    }
}

#[cfg(test)]
#[path = "pci_transport_tests.rs"]
mod tests;
