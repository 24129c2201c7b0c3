//! Assigned host PCI functions (VFIO): opening them, their DMA policy,
//! wiring into the PCI root, KVM slots and interrupts, and teardown.
//!
//! Order in [`super::DeviceManager::new`]:
//!
//! 1. [`VfioDevices::open`] (before the virtual IOMMU exists): checks every
//!    function against sysfs (one-line
//!    [`vfio_passthrough::sysfs::AssignError`]s), checks the
//!    locked-memory limit, creates the KVM VFIO device and one VFIO
//!    container per DMA policy, opens the functions into them and creates
//!    each container's [`VfioBackend`].
//!    - `iommu = false`: the *identity* container, all of guest RAM mapped
//!      at IOVA = guest-physical address ([`VfioDevices::map_identity`]).
//!    - `iommu = true`: the *translated* container, whose backend the
//!      virtual IOMMU's tables mirror the guest's mappings into
//!      ([`VfioDevices::viommu_backend`]).
//! 2. [`VfioDevices::attach`] (after the virtio devices): probes each
//!    function, allocates its BARs, its MSI group and its KVM slots, puts
//!    it on the PCI root and, behind the viommu, registers it as a
//!    hardware endpoint (ID = its BDF) for the VIOT.
//! 3. [`VfioDevices::map_identity`] pins guest RAM for the identity
//!    container, with progress.
//! 4. [`VfioDevices::shutdown`] at exit (and on drop): DMA unmapped first,
//!    then each function leaves the PCI root and is dropped (KVM slots,
//!    BAR mmaps, device fd, group), then the containers.

use std::io::{IsTerminal, Write};
use std::sync::{Arc, Mutex};

use devices::pci::allocator::AddressAllocator;
use devices::pci::root::PciRoot;
use devices::pci::BarKind;
use serde_json::json;
use vfio_ioctls::VfioDeviceFd;
use vfio_passthrough::config::BarSpec;
use vfio_passthrough::device::{DeviceError as AssignedError, PAGE_SIZE};
use vfio_passthrough::sysfs::{self, HostDevice, HostPaths, PciAddress};
use vfio_passthrough::vfio::{VfioHost, VfioRegions};
use vfio_passthrough::{MmioSlots, VfioBackend, VfioPciDevice};
use viommu::backend::HostIommu;
use viommu::device::IommuState;
use vm_memory::{GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion};

use super::{wiring, DeviceError};
use crate::config::{format_size, VfioConfig};
use crate::vstate::interrupts::GsiRouter;
use crate::vstate::vm::Vm;

/// Most interrupt vectors offered to the guest per function (GSIs and
/// eventfds stay bounded for devices with huge MSI-X tables).
pub const MAX_VECTORS: usize = 64;

/// `CAP_IPC_LOCK`: pinning memory without the locked-memory limit.
const CAP_IPC_LOCK: u32 = 14;

fn user(address: PciAddress, err: impl ToString) -> DeviceError {
    DeviceError::Vfio {
        device: address.to_string(),
        err: err.to_string(),
    }
}

/// A function opened in its container, waiting to be wired.
struct Opened {
    cfg: VfioConfig,
    regions: Arc<VfioRegions>,
}

/// One VFIO container and the DMA backend over it.
struct Container {
    /// `identity` or `viommu` (stats key).
    name: &'static str,
    backend: Arc<VfioBackend>,
    // Dropped after the backend's last mapping is gone (see shutdown).
    _host: VfioHost,
}

/// One assigned function on the guest's PCI bus.
struct Assigned {
    address: PciAddress,
    iommu: bool,
    slot: u8,
    dev: Option<Arc<Mutex<VfioPciDevice>>>,
}

/// What the PCI wiring of [`VfioDevices::attach`] needs from the device
/// manager.
pub struct Wiring<'a> {
    /// The root bus the functions go on.
    pub pci: &'a Arc<Mutex<PciRoot>>,
    /// 32-bit BAR window.
    pub mmio32: &'a mut AddressAllocator,
    /// 64-bit BAR window.
    pub mmio64: &'a mut AddressAllocator,
    /// MSI routes and irqfds.
    pub router: &'a Arc<GsiRouter>,
    /// KVM slots for mmapped BAR areas.
    pub slots: Arc<dyn MmioSlots>,
    /// The virtual IOMMU, if any.
    pub viommu: Option<&'a Arc<IommuState>>,
}

/// The VM's assigned functions and their VFIO containers.
#[derive(Default)]
pub struct VfioDevices {
    identity: Option<Container>,
    translated: Option<Container>,
    pending: Vec<Opened>,
    devices: Vec<Assigned>,
    pci: Option<Arc<Mutex<PciRoot>>>,
}

impl VfioDevices {
    /// Checks and opens the functions of `cfg` (see the module docs).
    pub fn open(vm: &Vm, cfg: &[VfioConfig], mem: &GuestMemoryMmap) -> Result<Self, DeviceError> {
        let mut me = VfioDevices::default();
        if cfg.is_empty() {
            return Ok(me);
        }
        let paths = HostPaths::default();
        let mut checked = Vec::with_capacity(cfg.len());
        for c in cfg {
            let dev =
                sysfs::check(&c.address.to_string(), &paths).map_err(|e| user(c.address, e))?;
            checked.push((*c, dev));
        }
        check_groups(&checked)?;
        let containers = usize::from(checked.iter().any(|(c, _)| c.iommu))
            + usize::from(checked.iter().any(|(c, _)| !c.iommu));
        let ram: u64 = mem.iter().map(|r| r.len()).sum();
        check_memlock(ram.saturating_mul(containers as u64), checked[0].0.address)?;
        let kvm_vfio = match vm.create_vfio_device() {
            Ok(fd) => Some(Arc::new(VfioDeviceFd::new_from_kvm(fd))),
            Err(e) => {
                tracing::warn!("{e}: VFIO groups are not registered with KVM");
                None
            }
        };
        for translated in [false, true] {
            let mine: Vec<&(VfioConfig, HostDevice)> = checked
                .iter()
                .filter(|(c, _)| c.iommu == translated)
                .collect();
            let Some((first, _)) = mine.first() else {
                continue;
            };
            let host = VfioHost::open(kvm_vfio.clone()).map_err(|e| user(first.address, e))?;
            for (c, dev) in mine {
                let regions = host.open_device(dev).map_err(|e| user(c.address, e))?;
                me.pending.push(Opened { cfg: *c, regions });
            }
            // The container has its IOMMU once a group joined it.
            let backend = Arc::new(VfioBackend::new(host.dma_mapper(), Arc::new(mem.clone())));
            let c = Container {
                name: if translated { "viommu" } else { "identity" },
                backend,
                _host: host,
            };
            if translated {
                me.translated = Some(c);
            } else {
                me.identity = Some(c);
            }
        }
        Ok(me)
    }

    /// The backend the virtual IOMMU must mirror hardware endpoints into.
    pub fn viommu_backend(&self) -> Option<Arc<dyn HostIommu>> {
        self.translated
            .as_ref()
            .map(|c| c.backend.clone() as Arc<dyn HostIommu>)
    }

    /// Wires every opened function (see the module docs); returns the PCI
    /// slots of those behind the virtual IOMMU, for the VIOT.
    pub fn attach(&mut self, w: Wiring<'_>) -> Result<Vec<u8>, DeviceError> {
        self.pci = Some(w.pci.clone());
        let mut endpoints = Vec::new();
        for o in std::mem::take(&mut self.pending) {
            let a = o.cfg.address;
            let mut layout = VfioPciDevice::probe(&*o.regions).map_err(|e| probe_error(a, e))?;
            layout.limit_vectors(MAX_VECTORS);
            let bar_addrs =
                allocate_bars(&layout.bars, w.mmio32, w.mmio64).map_err(|e| user(a, e))?;
            let msi = Arc::new(w.router.new_msi_group(layout.vectors()).map_err(wiring)?);
            let vectors = layout.vectors();
            let dev = VfioPciDevice::new(o.regions, layout, &bar_addrs, msi, w.slots.clone())
                .map_err(|e| probe_error(a, e))?;
            let areas = dev.mmio_areas().len();
            let dev = Arc::new(Mutex::new(dev));
            let slot = {
                let mut root = w.pci.lock().unwrap_or_else(|e| e.into_inner());
                root.add_device(dev.clone()).map_err(wiring)?
            };
            let behind = match (w.viommu, o.cfg.iommu) {
                (Some(state), true) => {
                    let endpoint = u32::from(slot) << 3;
                    tracing::info!(
                        "VFIO {a}: hardware endpoint {endpoint:#x}; guest RAM is identity-mapped while it bypasses the virtual IOMMU"
                    );
                    state
                        .tables
                        .write()
                        .unwrap_or_else(|e| e.into_inner())
                        .add_endpoint(endpoint, None, true);
                    endpoints.push(slot);
                    true
                }
                _ => false,
            };
            tracing::info!(
                "VFIO {a} -> 00:{slot:02x}.0 ({}), BARs {bar_addrs:x?}, {vectors} vectors, {areas} mmapped areas",
                if behind {
                    "behind the virtual IOMMU"
                } else {
                    "DMA to guest-physical addresses"
                }
            );
            self.devices.push(Assigned {
                address: a,
                iommu: behind,
                slot,
                dev: Some(dev),
            });
        }
        Ok(endpoints)
    }

    /// Maps all of guest RAM for the identity container (IOVA = GPA),
    /// showing progress: a line on stderr when it is a terminal, and an
    /// info log every 10%.
    pub fn map_identity(&self) -> Result<(), DeviceError> {
        let (Some(c), Some(first)) = (&self.identity, self.devices.iter().find(|d| !d.iommu))
        else {
            return Ok(());
        };
        let tty = std::io::stderr().is_terminal();
        let mut p = Progress::default();
        let started = std::time::Instant::now();
        let r = c.backend.map_all_guest_ram(|done, total| {
            let Some(pct) = p.step(done, total) else {
                return;
            };
            if tty {
                let mut e = std::io::stderr().lock();
                let _ = write!(
                    e,
                    "\riovmm: pinning guest RAM for VFIO DMA: {pct:3}% of {}",
                    format_size(total)
                );
                let _ = e.flush();
            }
            tracing::info!(
                "VFIO: guest RAM pinned for DMA: {pct}% of {}",
                format_size(total)
            );
        });
        if tty {
            eprintln!();
        }
        r.map_err(|e| {
            user(
                first.address,
                format!("cannot map guest RAM for DMA ({e}): raise the locked-memory limit (ulimit -l) or run as root, and check dmesg"),
            )
        })?;
        tracing::info!(
            ms = started.elapsed().as_millis() as u64,
            "VFIO: guest RAM mapped at IOVA = guest-physical address"
        );
        Ok(())
    }

    /// The counters for the stats file, or `None` without assigned
    /// functions.
    pub fn stats(&self) -> Option<VfioStats> {
        if self.devices.is_empty() && self.pending.is_empty() {
            return None;
        }
        Some(VfioStats {
            devices: self
                .devices
                .iter()
                .map(|d| (d.address.to_string(), d.iommu, d.slot))
                .collect(),
            backends: [&self.identity, &self.translated]
                .into_iter()
                .flatten()
                .map(|c| (c.name, c.backend.clone()))
                .collect(),
        })
    }

    /// Teardown, safe to call more than once: every DMA mapping is
    /// removed (and later maps refused) first, then every function leaves
    /// the PCI root and is dropped (KVM slots removed, BARs unmapped,
    /// device fd closed so vfio-pci resets it, group released).
    pub fn shutdown(&mut self) {
        for c in [&self.identity, &self.translated].into_iter().flatten() {
            match c.backend.shutdown() {
                Ok(0) => {}
                Ok(n) => tracing::info!("VFIO: {} DMA unmapped: {}", c.name, format_size(n)),
                Err(e) => tracing::error!("VFIO: {} DMA teardown: {e}", c.name),
            }
        }
        for d in &mut self.devices {
            let Some(dev) = d.dev.take() else {
                continue;
            };
            if let Some(pci) = &self.pci {
                pci.lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .remove_device(d.slot);
            }
            if Arc::strong_count(&dev) > 1 {
                tracing::warn!("VFIO {}: still referenced at teardown", d.address);
            }
            drop(dev);
        }
        self.pending.clear();
    }
}

impl Drop for VfioDevices {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// Counters of the VFIO containers, for the stats file.
#[derive(Clone)]
pub struct VfioStats {
    devices: Vec<(String, bool, u8)>,
    backends: Vec<(&'static str, Arc<VfioBackend>)>,
}

impl VfioStats {
    /// Counters of `devices` (`(host address, behind the viommu, guest
    /// slot)`) and of the named container `backends`.
    pub fn new(
        devices: Vec<(String, bool, u8)>,
        backends: Vec<(&'static str, Arc<VfioBackend>)>,
    ) -> Self {
        VfioStats { devices, backends }
    }

    /// `{"devices": [...], "dma": {"identity"|"viommu": {map, unmap,
    /// mapped_bytes}}}`.
    pub fn to_json(&self) -> serde_json::Value {
        let dma: serde_json::Map<String, serde_json::Value> = self
            .backends
            .iter()
            .map(|(name, b)| {
                let mut j = b.stats().to_json();
                j["mapped_bytes"] = json!(b.mapped_bytes());
                (name.to_string(), j)
            })
            .collect();
        json!({
            "devices": self
                .devices
                .iter()
                .map(|(a, iommu, slot)| json!({"host": a, "guest_slot": slot, "iommu": iommu}))
                .collect::<Vec<_>>(),
            "dma": dma,
        })
    }
}

fn probe_error(a: PciAddress, e: AssignedError) -> DeviceError {
    match e {
        AssignedError::Unreadable
        | AssignedError::NotEndpoint(_)
        | AssignedError::NoInterrupts
        | AssignedError::MsixBar(_) => user(a, e),
        e => DeviceError::Wiring(format!("VFIO {a}: {e}")),
    }
}

/// A group can only be in one container: functions of one IOMMU group
/// must share their DMA policy.
fn check_groups(devs: &[(VfioConfig, HostDevice)]) -> Result<(), DeviceError> {
    for (i, (a, da)) in devs.iter().enumerate() {
        for (b, db) in &devs[i + 1..] {
            if da.group == db.group && a.iommu != b.iommu {
                return Err(user(
                    a.address,
                    format!(
                        "it shares IOMMU group {} with {}, but only one of them is behind the virtual IOMMU: a group has one DMA address space; set iommu=off on both",
                        da.group, b.address
                    ),
                ));
            }
        }
    }
    Ok(())
}

/// True when the `CapEff:` line of `/proc/self/status` text has
/// CAP_IPC_LOCK.
fn has_ipc_lock(status: &str) -> bool {
    status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        .is_some_and(|caps| caps & (1 << CAP_IPC_LOCK) != 0)
}

/// Fails early, in one line, when VFIO could not pin `needed` bytes.
fn check_memlock(needed: u64, address: PciAddress) -> Result<(), DeviceError> {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    if has_ipc_lock(&status) {
        return Ok(());
    }
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes one rlimit into `lim`, a valid local.
    if unsafe { libc::getrlimit(libc::RLIMIT_MEMLOCK, &mut lim) } != 0 {
        return Ok(());
    }
    match memlock_problem(lim.rlim_cur, needed) {
        None => Ok(()),
        Some(p) => Err(user(address, p)),
    }
}

/// The problem with a locked-memory limit of `limit` bytes when `needed`
/// must be pinned, if any.
fn memlock_problem(limit: libc::rlim_t, needed: u64) -> Option<String> {
    if limit == libc::RLIM_INFINITY || limit >= needed {
        return None;
    }
    Some(format!(
        "the locked-memory limit ({}) is below the {} of guest RAM VFIO must pin for DMA: run iovmm as root, or raise it (ulimit -l unlimited, LimitMEMLOCK=infinity)",
        format_size(limit),
        format_size(needed)
    ))
}

/// Guest addresses for every BAR: 32-bit BARs in the 32-bit window, 64-bit
/// ones in the 64-bit window, largest first, each aligned to its size (at
/// least a page, so mmapped areas can be KVM slots and no two BARs share
/// a page).
pub fn allocate_bars(
    bars: &[BarSpec],
    mmio32: &mut AddressAllocator,
    mmio64: &mut AddressAllocator,
) -> Result<Vec<(usize, u64)>, String> {
    let mut order: Vec<&BarSpec> = bars.iter().collect();
    order.sort_by(|a, b| b.size.cmp(&a.size).then(a.index.cmp(&b.index)));
    let mut out = Vec::with_capacity(bars.len());
    for b in order {
        let size = b.size.max(PAGE_SIZE);
        let (window, name) = match b.kind {
            BarKind::Mmio64 => (&mut *mmio64, "64-bit"),
            _ => (&mut *mmio32, "32-bit"),
        };
        let addr = window.allocate(size, size).ok_or_else(|| {
            format!(
                "BAR {} ({}) does not fit in what is left of the guest's {name} PCI window: assign fewer or smaller devices",
                b.index,
                format_size(b.size)
            )
        })?;
        out.push((b.index, addr));
    }
    out.sort();
    Ok(out)
}

/// When to report [`VfioBackend::map_all_guest_ram`] progress: every 10%.
#[derive(Default)]
struct Progress {
    next: u64,
}

impl Progress {
    /// The percentage to report after `done` of `total`, if a new 10% step
    /// was crossed.
    fn step(&mut self, done: u64, total: u64) -> Option<u64> {
        let pct = (u128::from(done) * 100 / u128::from(total.max(1))).min(100) as u64;
        if pct < self.next {
            return None;
        }
        self.next = (pct / 10 + 1) * 10;
        Some(pct)
    }
}

#[cfg(test)]
#[path = "vfio_tests.rs"]
mod tests;
