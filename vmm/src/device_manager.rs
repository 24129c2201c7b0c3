//! Creates the VM's devices and wires them to the buses, KVM interrupts
//! and the PCI root.
//!
//! PCI order: the virtio-iommu (when the IOMMU mode is not `off`), the
//! disks, the NICs, then the assigned VFIO functions ([`vfio`]).

pub mod vfio;

use std::fs::OpenOptions;
use std::io::{self, Read, Write};
use std::sync::{Arc, Mutex};

use vm_memory::GuestMemoryMmap;
use vmm_sys_util::eventfd::EventFd;

use devices::bus::Bus;
use devices::dma::{self, DmaIotlb};
use devices::legacy::{AcpiPm, ExitSignal, SerialDevice, I8042};
use devices::pci::allocator::AddressAllocator;
use devices::pci::root::{PciConfigIo, PciConfigMmio, PciRoot};
use devices::virtio::block::VirtioBlock;
use devices::virtio::net::VirtioNet;
use devices::virtio::pci_transport::VirtioPciDevice;
use devices::virtio::VirtioDevice;
use viommu::coop::Coop;
use viommu::device::{IommuState, VirtioIommu};
use viommu::tables::{Limits, Tables};

use self::vfio::{VfioDevices, VfioStats, Wiring};

use crate::acpi::ViotInfo;
use crate::config::IommuMode;

use crate::config::{SerialConfig, VmConfig};
use crate::layout::{self, MemoryLayout};
use crate::vstate::interrupts::GsiRouter;
use crate::vstate::vm::{KvmIoEvents, Vm};

/// Errors creating devices. Messages name the device and the fix.
#[derive(Debug, thiserror::Error)]
pub enum DeviceError {
    /// The serial output file could not be opened.
    #[error("cannot open serial output {0}: {1}: check the path and its directory")]
    SerialFile(String, io::Error),
    /// A disk image could not be opened.
    #[error("disk {id}: {err}")]
    Disk {
        /// Disk id.
        id: String,
        /// The error (already explains the fix).
        err: String,
    },
    /// A tap could not be opened.
    #[error("net {tap}: {err}")]
    Net {
        /// Tap name.
        tap: String,
        /// The error.
        err: String,
    },
    /// A host PCI function cannot be assigned (not bound to vfio-pci, group
    /// not viable or busy, no IOMMU, memory limits, ...).
    #[error("vfio {device}: {err}")]
    Vfio {
        /// The function's PCI address.
        device: String,
        /// The problem and its fix, one line.
        err: String,
    },
    /// Bus or PCI wiring failed (a VMM bug, not user input).
    #[error("device wiring: {0}")]
    Wiring(String),
}

impl DeviceError {
    /// True for errors the user can fix (bad paths, taps), false for VMM bugs.
    pub fn is_user_error(&self) -> bool {
        !matches!(self, DeviceError::Wiring(_))
    }
}

fn wiring<E: std::fmt::Display>(e: E) -> DeviceError {
    DeviceError::Wiring(e.to_string())
}

/// The devices of one VM, kept alive for its lifetime.
pub struct DeviceManager {
    /// Port I/O bus.
    pub pio: Arc<Bus>,
    /// MMIO bus.
    pub mmio: Arc<Bus>,
    /// COM1.
    pub serial: Arc<Mutex<SerialDevice>>,
    /// The PCI root bus.
    pub pci: Arc<Mutex<PciRoot>>,
    /// The virtual IOMMU, unless the mode is `off`.
    pub viommu: Option<Arc<IommuState>>,
    /// What the VIOT must describe, with the virtual IOMMU.
    pub viot: Option<ViotInfo>,
    /// Counters of the virtio devices, by name (vda…, net0…).
    pub device_stats: Vec<(String, DeviceStats)>,
    /// Assigned host PCI functions and their VFIO containers.
    pub vfio: VfioDevices,
}

/// Counters of one virtio device.
#[derive(Clone)]
pub enum DeviceStats {
    /// A disk.
    Block(Arc<devices::virtio::block::BlockStats>),
    /// A NIC.
    Net(Arc<devices::virtio::net::NetStats>),
}

impl DeviceStats {
    /// The counters as JSON.
    pub fn to_json(&self) -> serde_json::Value {
        use std::sync::atomic::Ordering::Relaxed;
        match self {
            DeviceStats::Block(s) => serde_json::json!({
                "requests": s.requests.load(Relaxed),
                "read_bytes": s.read_bytes.load(Relaxed),
                "write_bytes": s.write_bytes.load(Relaxed),
                "errors": s.errors.load(Relaxed),
                "malformed": s.malformed.load(Relaxed),
                "broken_rings": s.broken_rings.load(Relaxed),
            }),
            DeviceStats::Net(s) => serde_json::json!({
                "rx_packets": s.rx_packets.load(Relaxed),
                "rx_bytes": s.rx_bytes.load(Relaxed),
                "tx_packets": s.tx_packets.load(Relaxed),
                "tx_bytes": s.tx_bytes.load(Relaxed),
                "dropped": s.dropped.load(Relaxed),
                "malformed": s.malformed.load(Relaxed),
                "broken_rings": s.broken_rings.load(Relaxed),
            }),
        }
    }
}

impl DeviceManager {
    /// Creates legacy devices, the PCI root and every virtio device of `cfg`.
    pub fn new(
        vm: &Vm,
        cfg: &VmConfig,
        mem: &GuestMemoryMmap,
        layout: &MemoryLayout,
        router: &Arc<GsiRouter>,
        exit: &Arc<ExitSignal>,
    ) -> Result<Self, DeviceError> {
        let pio = Arc::new(Bus::new());
        let mmio = Arc::new(Bus::new());

        // COM1 on IRQ 4 through an irqfd.
        let irq = EventFd::new(libc::EFD_NONBLOCK).map_err(wiring)?;
        vm.fd()
            .register_irqfd(&irq, layout::COM1_IRQ)
            .map_err(wiring)?;
        let out: Box<dyn Write + Send> = match &cfg.serial {
            SerialConfig::Stdout { .. } => Box::new(io::stdout()),
            SerialConfig::File(p) => Box::new(
                OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(p)
                    .map_err(|e| DeviceError::SerialFile(p.display().to_string(), e))?,
            ),
            SerialConfig::Off => Box::new(io::sink()),
        };
        let serial = Arc::new(Mutex::new(SerialDevice::new(irq, out)));
        pio.insert(serial.clone(), layout::COM1_PORT, 8)
            .map_err(wiring)?;
        if let SerialConfig::Stdout { stdin: true } = cfg.serial {
            spawn_stdin_reader(serial.clone());
        }

        let i8042 = Arc::new(Mutex::new(I8042::new(exit.clone())));
        pio.insert(i8042.clone(), layout::I8042_PORT, 1)
            .map_err(wiring)?;
        pio.insert(i8042, layout::I8042_PORT + 4, 1)
            .map_err(wiring)?;
        let pm = AcpiPm::new(
            exit.clone(),
            layout::ACPI_S5_SLP_TYP,
            layout::ACPI_RESET_VALUE,
        );
        pio.insert(Arc::new(Mutex::new(pm)), layout::ACPI_PM_PORT, 3)
            .map_err(wiring)?;

        // PCI root: legacy config ports and ECAM.
        let ioevents = Arc::new(KvmIoEvents(vm.fd().clone()));
        let pci = Arc::new(Mutex::new(PciRoot::new(
            mmio.clone(),
            pio.clone(),
            ioevents,
        )));
        pio.insert(
            Arc::new(Mutex::new(PciConfigIo::new(pci.clone()))),
            0xcf8,
            8,
        )
        .map_err(wiring)?;
        mmio.insert(
            Arc::new(Mutex::new(PciConfigMmio::new(pci.clone()))),
            layout::PCI_ECAM_START,
            layout::PCI_ECAM_BUS0_SIZE,
        )
        .map_err(wiring)?;

        let mut mmio32 = AddressAllocator::new(layout::PCI_MMIO32_START, layout::PCI_MMIO32_SIZE);
        let mut mmio64 = AddressAllocator::new(layout.mmio64.start, layout.mmio64.len);
        // Assigned functions are checked and opened first: their problems
        // are the likeliest, and the viommu needs their DMA backend.
        let mut vfio = VfioDevices::open(vm, &cfg.vfio, mem)?;
        let viommu = match cfg.iommu_mode {
            IommuMode::Off => None,
            _ => {
                let limits = Limits::default()
                    .with_msi_window(layout::APIC_START, layout::APIC_START + 0xf_ffff)
                    .map_err(wiring)?;
                let backend = vfio.viommu_backend();
                let hardware = backend.is_some();
                let mut tables = Tables::new(limits, backend);
                if cfg.iommu_mode == IommuMode::Coop {
                    tables = tables.with_coop(Coop::new(mem.clone(), cfg.iommu_coop));
                }
                if hardware {
                    tables.set_guest_ram(layout.ram.iter().map(|r| (r.start, r.len)).collect());
                }
                let state = IommuState::new(tables).map_err(wiring)?;
                if cfg.iommu_mode == IommuMode::Coop {
                    state
                        .start_coop_scans(cfg.iommu_coop.scan)
                        .map_err(wiring)?;
                }
                Some(state)
            }
        };
        // Returns the slot and whether the device sits behind the viommu.
        let mut add_virtio =
            |dev: Box<dyn VirtioDevice>, iommu: bool| -> Result<(u8, bool), DeviceError> {
                let vectors = dev.queue_max_sizes().len() + 1;
                let msi = Arc::new(router.new_msi_group(vectors).map_err(wiring)?);
                let bar_size = VirtioPciDevice::BAR_SIZE;
                let bar = mmio64
                    .allocate(bar_size, bar_size)
                    .ok_or_else(|| wiring("64-bit PCI window exhausted"))?;
                let mut root = pci.lock().unwrap_or_else(|e| e.into_inner());
                let slot = root.next_slot().ok_or_else(|| wiring("no free PCI slot"))?;
                let translated = match (&viommu, iommu) {
                    (Some(state), true) => {
                        // Endpoint ID = bus 0 BDF of the device.
                        let endpoint = u32::from(slot) << 3;
                        let tlb = DmaIotlb::new(state.endpoint(endpoint));
                        state
                            .tables
                            .write()
                            .unwrap_or_else(|e| e.into_inner())
                            .add_endpoint(endpoint, Some(tlb.clone()), false);
                        Some(tlb)
                    }
                    _ => None,
                };
                let pdev = match &translated {
                    Some(tlb) => VirtioPciDevice::new(dev, tlb.memory(mem.clone(), true), msi, bar)
                        .map_err(wiring)?
                        .with_access_platform(),
                    None => VirtioPciDevice::new(dev, dma::untranslated(mem.clone()), msi, bar)
                        .map_err(wiring)?,
                };
                root.add_device(Arc::new(Mutex::new(pdev)))
                    .map_err(wiring)?;
                Ok((slot, translated.is_some()))
            };
        let mut iommu_slot = None;
        let mut endpoint_slots = Vec::new();
        let mut device_stats = Vec::new();
        if let Some(state) = &viommu {
            let dev = VirtioIommu::new(state.clone()).with_poll(cfg.iommu_poll);
            iommu_slot = Some(add_virtio(Box::new(dev), false)?.0);
        }
        for d in &cfg.disks {
            let blk =
                VirtioBlock::new(&d.path, d.readonly, &d.id).map_err(|e| DeviceError::Disk {
                    id: d.id.clone(),
                    err: e.to_string(),
                })?;
            device_stats.push((d.id.clone(), DeviceStats::Block(blk.stats())));
            if let (slot, true) = add_virtio(Box::new(blk), d.iommu)? {
                endpoint_slots.push(slot);
            }
        }
        for n in &cfg.nets {
            let net = VirtioNet::with_tap(&n.tap, n.mac).map_err(|e| DeviceError::Net {
                tap: n.tap.clone(),
                err: crate::config::tap_open_hint(&n.tap, &e).to_string(),
            })?;
            device_stats.push((n.tap.clone(), DeviceStats::Net(net.stats())));
            if let (slot, true) = add_virtio(Box::new(net), n.iommu)? {
                endpoint_slots.push(slot);
            }
        }
        endpoint_slots.extend(vfio.attach(Wiring {
            pci: &pci,
            mmio32: &mut mmio32,
            mmio64: &mut mmio64,
            router,
            slots: vm.mmio_slots(),
            viommu: viommu.as_ref(),
        })?);
        vfio.map_identity()?;
        let viot = iommu_slot.map(|iommu_slot| ViotInfo {
            iommu_slot,
            endpoint_slots,
        });
        Ok(DeviceManager {
            pio,
            mmio,
            serial,
            pci,
            viommu,
            viot,
            device_stats,
            vfio,
        })
    }

    /// The VFIO counters for the stats file (`None` without assigned
    /// functions).
    pub fn vfio_stats(&self) -> Option<VfioStats> {
        self.vfio.stats()
    }

    /// Teardown before the process exits (`std::process::exit` runs no
    /// destructors): removes every VFIO DMA mapping, then closes the
    /// assigned functions. Idempotent; also run on drop.
    pub fn shutdown(&mut self) {
        self.vfio.shutdown();
    }
}

impl Drop for DeviceManager {
    fn drop(&mut self) {
        self.shutdown();
    }
}

fn spawn_stdin_reader(serial: Arc<Mutex<SerialDevice>>) {
    let spawned = std::thread::Builder::new()
        .name("serial-stdin".into())
        .spawn(move || {
            let mut buf = [0u8; 64];
            let mut stdin = io::stdin();
            loop {
                match stdin.read(&mut buf) {
                    Ok(0) | Err(_) => return,
                    Ok(n) => {
                        let mut off = 0;
                        while off < n {
                            let q = serial
                                .lock()
                                .unwrap_or_else(|e| e.into_inner())
                                .enqueue_input(&buf[off..n])
                                .unwrap_or(0);
                            off += q;
                            if q == 0 {
                                std::thread::sleep(std::time::Duration::from_millis(5));
                            }
                        }
                    }
                }
            }
        });
    if let Err(e) = spawned {
        tracing::warn!("cannot start the serial input thread: {e}");
    }
}
