//! Assembles a VM from its configuration and runs it to completion.

use std::os::unix::thread::JoinHandleExt;
use std::sync::Arc;

use devices::cpus::{self, CpuSet};
use devices::legacy::{ExitReason, ExitSignal};

use crate::boot::{self, BootError};
use crate::config::placement::Placement;
use crate::config::VmConfig;
use crate::device_manager::{DeviceError, DeviceManager};
use crate::layout::MemoryLayout;
use crate::memory::{self, MemoryError};
use crate::stats::StatsWriter;
use crate::vstate::interrupts::GsiRouter;
use crate::vstate::kvm_stats::VmKvmStats;
use crate::vstate::vcpu::{Vcpu, VcpuError};
use crate::vstate::vm::{Vm, VmError};

/// Errors building or starting a VM.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// KVM problem.
    #[error(transparent)]
    Vm(#[from] VmError),
    /// Guest memory.
    #[error(transparent)]
    Memory(#[from] MemoryError),
    /// Devices.
    #[error(transparent)]
    Device(#[from] DeviceError),
    /// Kernel loading.
    #[error(transparent)]
    Boot(#[from] BootError),
    /// ACPI tables.
    #[error("ACPI tables: {0}")]
    Acpi(String),
    /// vCPU setup.
    #[error(transparent)]
    Vcpu(#[from] VcpuError),
    /// Interrupt routing or threads.
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

impl BuildError {
    /// True when the user can fix the problem (paths, /dev/kvm, taps, memory).
    pub fn is_user_error(&self) -> bool {
        match self {
            BuildError::Vm(VmError::NoKvm(_)) | BuildError::Vm(VmError::MissingCap(_)) => true,
            BuildError::Memory(MemoryError::Mmap { .. }) => true,
            BuildError::Device(d) => d.is_user_error(),
            BuildError::Boot(BootError::Setup(_)) => false,
            BuildError::Boot(_) => true,
            _ => false,
        }
    }
}

/// A running VM. It owns everything the VM uses; fields drop in
/// declaration order, so the devices (VFIO DMA mappings, KVM slots of
/// assigned BARs) go before guest RAM and the VM fd.
pub struct RunningVm {
    exit: Arc<ExitSignal>,
    devices: DeviceManager,
    stats: Option<Arc<StatsWriter>>,
    // Kept (never joined) so that their pthread ids stay valid for
    // SIGUSR1's state dumps and the kick at shutdown.
    vcpu_threads: Vec<std::thread::JoinHandle<()>>,
    // Guest RAM must outlive the vCPUs: KVM's memory slots point into it.
    _mem: vm_memory::GuestMemoryMmap,
    _vm: Vm,
}

/// How long [`RunningVm::shutdown`] waits for the vCPUs to leave KVM_RUN.
const VCPU_STOP_WAIT: std::time::Duration = std::time::Duration::from_secs(1);

impl RunningVm {
    /// Blocks until the guest powers off, resets or the VMM fails.
    pub fn wait(&self) -> ExitReason {
        let r = self.exit.wait();
        self.devices
            .serial
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .flush();
        if let Some(w) = &self.stats {
            if let Err(e) = w.write() {
                tracing::warn!("cannot write stats: {e}");
            }
        }
        r
    }

    /// Stops the VM and releases what outlives the process otherwise:
    /// the vCPUs are kicked out of KVM_RUN (and waited for, briefly), then
    /// the devices are torn down (VFIO DMA unmapped, assigned functions
    /// closed). Call it on every exit path before `std::process::exit`,
    /// which runs no destructors; dropping the VM does the same.
    pub fn shutdown(mut self) {
        self.teardown();
    }

    fn teardown(&mut self) {
        // vCPUs return from their loop only once a stop was requested.
        self.exit.request(ExitReason::Error);
        let ids: Vec<libc::pthread_t> =
            self.vcpu_threads.iter().map(|t| t.as_pthread_t()).collect();
        crate::vstate::vcpu::kick(&ids);
        let deadline = std::time::Instant::now() + VCPU_STOP_WAIT;
        while self.vcpu_threads.iter().any(|t| !t.is_finished())
            && std::time::Instant::now() < deadline
        {
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        if self.vcpu_threads.iter().any(|t| !t.is_finished()) {
            tracing::warn!("a vCPU did not stop within {VCPU_STOP_WAIT:?}; tearing down anyway");
        }
        self.devices.shutdown();
    }
}

impl Drop for RunningVm {
    fn drop(&mut self) {
        self.teardown();
    }
}

/// Applies `p` before any thread is started: the calling thread (and so
/// every thread it starts: the virtio-iommu host thread, signals, serial)
/// and every device worker run on the I/O CPUs. Returns the CPUs each
/// vCPU thread must set for itself (`None`: keep the inherited ones).
fn place_threads(p: &Placement) -> Result<Option<CpuSet>, BuildError> {
    if p.vcpus.is_none() && p.io.is_none() {
        return Ok(None);
    }
    let started_with = CpuSet::of_current_thread()?;
    let io = p.io.clone().unwrap_or_else(|| started_with.clone());
    io.pin_current_thread()?;
    tracing::info!(
        vcpus = %p.vcpus.as_ref().unwrap_or(&started_with),
        io = %io,
        "thread placement (host CPUs)"
    );
    cpus::set_io_cpus(io);
    Ok(Some(p.vcpus.clone().unwrap_or(started_with)))
}

/// Builds the VM described by `cfg` and starts its vCPUs.
pub fn build_and_start(cfg: &VmConfig) -> Result<RunningVm, BuildError> {
    let vcpu_cpus = place_threads(&cfg.placement)?;
    let vm = Vm::new()?;
    let layout = MemoryLayout::new(cfg.memory);
    let mem = memory::create(&layout, cfg.memory_backing)?;
    vm.register_memory(&mem)?;
    let exit = Arc::new(ExitSignal::new()?);
    let router = GsiRouter::new(vm.fd().clone())?;
    let devices = DeviceManager::new(&vm, cfg, &mem, &layout, &router, &exit)?;
    let rsdp = crate::acpi::create_acpi_tables(&mem, cfg.vcpus, &layout, devices.viot.as_ref())
        .map_err(|e| BuildError::Acpi(e.to_string()))?;
    let cmdline = boot::cmdline_with_reboot(&crate::config::iommu::cmdline_with_mode(
        &cfg.cmdline,
        cfg.iommu_mode,
    ));
    let kernel = boot::load_kernel(
        &mem,
        &layout,
        &cfg.kernel,
        cfg.initramfs.as_deref(),
        &cmdline,
        rsdp,
    )?;
    let mut vcpus = Vec::with_capacity(usize::from(cfg.vcpus));
    for id in 0..cfg.vcpus {
        vcpus.push(Vcpu::new(&vm, id, cfg.vcpus)?);
    }
    if let Some(bsp) = vcpus.first() {
        bsp.setup_boot(&mem, kernel.entry)?;
    }
    let stats = cfg.stats_file.as_ref().map(|p| {
        let mut kvm = VmKvmStats::new();
        kvm.open_vm(vm.fd().as_ref());
        for (i, v) in vcpus.iter().enumerate() {
            kvm.open_vcpu(i, v.fd());
        }
        Arc::new(
            StatsWriter::new(
                p.clone(),
                (cfg.iommu_mode, cfg.iommu_poll),
                devices.viommu.clone(),
                devices.device_stats.clone(),
                devices.vfio_stats(),
            )
            .with_exits(kvm, vcpus.iter().map(Vcpu::exit_stats).collect()),
        )
    });
    tracing::info!(
        vcpus = cfg.vcpus,
        memory_mib = cfg.memory >> 20,
        disks = cfg.disks.len(),
        nets = cfg.nets.len(),
        vfio = cfg.vfio.len(),
        "starting guest"
    );
    crate::vstate::vcpu::install_kick_handler()?;
    let mut threads = Vec::with_capacity(vcpus.len());
    for (id, vcpu) in vcpus.into_iter().enumerate() {
        let (pio, mmio, exit) = (devices.pio.clone(), devices.mmio.clone(), exit.clone());
        let ram = mem.clone();
        let cpus = vcpu_cpus.clone();
        threads.push(
            std::thread::Builder::new()
                .name(format!("vcpu{id}"))
                .spawn(move || {
                    if let Some(Err(e)) = cpus.as_ref().map(CpuSet::pin_current_thread) {
                        tracing::warn!("vcpu{id}: cannot run on CPUs {cpus:?}: {e}");
                    }
                    vcpu.run(pio, mmio, exit, ram)
                })?,
        );
    }
    let ids = threads.iter().map(|t| t.as_pthread_t()).collect();
    crate::stats::spawn_signal_thread(stats.clone(), ids, exit.clone())?;
    Ok(RunningVm {
        exit,
        devices,
        stats,
        vcpu_threads: threads,
        _mem: mem,
        _vm: vm,
    })
}
