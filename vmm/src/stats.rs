//! The VM's counters as one JSON document, written to `--stats-file` when
//! the VM stops and whenever the process receives SIGUSR1 (which also
//! makes every vCPU log its registers, for diagnosing a hung guest), and
//! the thread that serves the process's signals: SIGUSR1, and SIGTERM /
//! SIGINT, which stop the VM through the normal exit path (stats written,
//! VFIO DMA unmapped) instead of killing the process. Besides the device
//! counters it holds KVM's binary statistics (`kvm`) and iovmm's own
//! per-reason exit counts (`exits`); docs/viommu.md lists the keys.

use std::io;
use std::path::PathBuf;
use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::Arc;
use std::time::Instant;

use devices::legacy::{ExitReason, ExitSignal};
use serde_json::json;
use viommu::device::IommuState;

use crate::config::iommu::PollConfig;
use crate::config::IommuMode;
use crate::device_manager::vfio::VfioStats;
use crate::device_manager::DeviceStats;
use crate::vstate::exit_stats::{self, ExitStats};
use crate::vstate::kvm_stats::VmKvmStats;

/// The SIGTERM/SIGINT that stopped the VM (0: none yet).
static STOP_SIGNAL: AtomicI32 = AtomicI32::new(0);

/// Collects and writes the counters of one VM.
pub struct StatsWriter {
    path: PathBuf,
    mode: IommuMode,
    poll: PollConfig,
    viommu: Option<Arc<IommuState>>,
    devices: Vec<(String, DeviceStats)>,
    vfio: Option<VfioStats>,
    kvm: Option<VmKvmStats>,
    exits: Vec<Arc<ExitStats>>,
    started: Instant,
}

impl StatsWriter {
    /// A writer for `path`.
    pub fn new(
        path: PathBuf,
        (mode, poll): (IommuMode, PollConfig),
        viommu: Option<Arc<IommuState>>,
        devices: Vec<(String, DeviceStats)>,
        vfio: Option<VfioStats>,
    ) -> Self {
        StatsWriter {
            path,
            mode,
            poll,
            viommu,
            devices,
            vfio,
            kvm: None,
            exits: Vec::new(),
            started: Instant::now(),
        }
    }

    /// Adds KVM's binary statistics of the VM and its vCPUs and iovmm's
    /// exit counters of each vCPU (the `kvm` and `exits` keys).
    pub fn with_exits(mut self, kvm: VmKvmStats, exits: Vec<Arc<ExitStats>>) -> Self {
        self.kvm = Some(kvm);
        self.exits = exits;
        self
    }

    /// The current counters.
    pub fn snapshot(&self) -> serde_json::Value {
        let viommu = self.viommu.as_ref().map(|v| v.stats.to_json());
        let vfio = self.vfio.as_ref().map(VfioStats::to_json);
        json!({
            "uptime_s": self.started.elapsed().as_secs_f64(),
            "iommu_mode": self.mode.as_str(),
            "iommu_poll": {
                "mode": self.poll.mode.as_str(),
                "budget_us": self.poll.budget.as_micros() as u64,
                "cpu": self.poll.cpu,
            },
            "vfio_calls_per_request": calls_per_request(viommu.as_ref(), vfio.as_ref()),
            "viommu": viommu,
            "devices": self
                .devices
                .iter()
                .map(|(name, s)| (name.clone(), s.to_json()))
                .collect::<serde_json::Map<_, _>>(),
            "vfio": vfio,
            "kvm": self.kvm.as_ref().map(VmKvmStats::to_json),
            "exits": exit_stats::to_json(self.exits.iter().map(|e| e.as_ref())),
        })
    }

    /// Writes the counters (atomically: temporary file, then rename).
    pub fn write(&self) -> io::Result<()> {
        let tmp = self.path.with_extension("tmp");
        let text = serde_json::to_string_pretty(&self.snapshot()).map_err(io::Error::other)?;
        std::fs::write(&tmp, text + "\n")?;
        std::fs::rename(&tmp, &self.path)
    }
}

/// Host IOMMU (VFIO map + unmap) calls per virtio-iommu request, when a
/// device's DMA goes through the virtual IOMMU to VFIO.
fn calls_per_request(
    viommu: Option<&serde_json::Value>,
    vfio: Option<&serde_json::Value>,
) -> Option<f64> {
    let requests: u64 = viommu?["requests"]
        .as_object()?
        .values()
        .filter_map(|v| v.as_u64())
        .sum();
    let dma = &vfio?["dma"]["viommu"];
    let calls = dma["map"]["calls"].as_u64()? + dma["unmap"]["calls"].as_u64()?;
    (requests > 0).then(|| (calls as f64 / requests as f64 * 1000.0).round() / 1000.0)
}

/// The signals the signal thread serves.
fn served_set() -> libc::sigset_t {
    // SAFETY: sigset_t is plain data; sigemptyset/sigaddset initialise it
    // fully before use and only write to the local.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for sig in [libc::SIGUSR1, libc::SIGTERM, libc::SIGINT] {
            libc::sigaddset(&mut set, sig);
        }
        set
    }
}

/// Blocks SIGUSR1, SIGTERM and SIGINT in the calling thread (and the
/// threads it creates later), so that only the signal thread receives
/// them. Call before building the VM: a SIGTERM during the build then
/// waits for the signal thread and stops the VM cleanly.
pub fn block_signals() {
    let set = served_set();
    // SAFETY: `set` is a valid, initialised sigset; the old mask is not
    // requested (null).
    let r = unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) };
    if r != 0 {
        tracing::warn!("cannot block signals: {}", io::Error::from_raw_os_error(r));
    }
}

/// The SIGTERM or SIGINT that stopped the VM, if one did.
pub fn stop_signal() -> Option<i32> {
    Some(STOP_SIGNAL.load(Ordering::SeqCst)).filter(|&s| s != 0)
}

/// Starts the thread that serves the signals blocked by
/// [`block_signals`]. SIGUSR1: every vCPU in `vcpus` logs its registers,
/// then the stats (if a file is configured) are written. SIGTERM/SIGINT:
/// the VM stops with [`ExitReason::Terminated`] (a second one exits at
/// once, in case the teardown hangs).
pub fn spawn_signal_thread(
    writer: Option<Arc<StatsWriter>>,
    vcpus: Vec<libc::pthread_t>,
    exit: Arc<ExitSignal>,
) -> io::Result<()> {
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || loop {
            let set = served_set();
            let mut sig: libc::c_int = 0;
            // SAFETY: `set` is initialised and `sig` is a valid out pointer.
            let r = unsafe { libc::sigwait(&set, &mut sig) };
            if r != 0 {
                tracing::warn!("sigwait failed: {}", io::Error::from_raw_os_error(r));
                return;
            }
            if sig != libc::SIGUSR1 {
                if STOP_SIGNAL.swap(sig, Ordering::SeqCst) != 0 {
                    eprintln!("iovmm: second stop signal: exiting without teardown");
                    // SAFETY: _exit ends the process at once; nothing of
                    // this process is used afterwards.
                    unsafe { libc::_exit(128 + sig) };
                }
                tracing::warn!(signal = sig, "stop requested by signal: stopping the VM");
                exit.request(ExitReason::Terminated);
                continue;
            }
            crate::vstate::vcpu::request_state_dump(&vcpus);
            let Some(writer) = &writer else { continue };
            match writer.write() {
                Ok(()) => tracing::info!(path = %writer.path.display(), "stats written (SIGUSR1)"),
                Err(e) => tracing::warn!("cannot write stats: {e}"),
            }
        })?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_json_with_the_viommu_and_vfio_counters() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.json");
        let state = IommuState::new(viommu::tables::Tables::new(Default::default(), None)).unwrap();
        state.stats.record(2, 0, 0x2000, 0x2000, 10);
        let w = StatsWriter::new(
            path.clone(),
            (IommuMode::Strict, PollConfig::default()),
            Some(state),
            Vec::new(),
            None,
        );
        w.write().unwrap();
        let v: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        assert_eq!(v["iommu_mode"], "strict");
        assert_eq!(v["viommu"]["requests"]["map"], 1);
        assert_eq!(v["viommu"]["pages_mapped"], 2);
        assert_eq!(v["viommu"]["host_errors"]["unmap"], 0);
        assert_eq!(v["viommu"]["host_errors"]["residue_bytes"], 0);
        assert!(v["vfio"].is_null(), "no assigned functions");
        struct Nop;
        impl vfio_passthrough::dma::DmaMapper for Nop {
            unsafe fn map_dma(&self, _: u64, _: u64, _: u64, _: bool, _: bool) -> io::Result<()> {
                Ok(())
            }
            fn unmap_dma(&self, _: u64, len: u64) -> io::Result<u64> {
                Ok(len)
            }
        }
        let mem = vm_memory::GuestMemoryMmap::<()>::from_ranges(&[(
            vm_memory::GuestAddress(0),
            0x10_0000,
        )])
        .unwrap();
        let backend = Arc::new(vfio_passthrough::VfioBackend::new(
            Arc::new(Nop),
            Arc::new(mem),
        ));
        backend.map_all_guest_ram(|_, _| {}).unwrap();
        let vfio = VfioStats::new(
            vec![("0000:03:00.0".into(), false, 2)],
            vec![("identity", backend)],
        );
        let w = StatsWriter::new(
            path.clone(),
            (IommuMode::Off, PollConfig::default()),
            None,
            Vec::new(),
            Some(vfio),
        );
        w.write().unwrap();
        let v: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        assert_eq!(v["vfio"]["devices"][0]["host"], "0000:03:00.0");
        assert_eq!(v["vfio"]["dma"]["identity"]["map"]["calls"], 1);
        assert_eq!(v["vfio"]["dma"]["identity"]["map"]["bytes"], 0x10_0000);
        assert_eq!(v["vfio"]["dma"]["identity"]["mapped_bytes"], 0x10_0000);
        let off = StatsWriter::new(
            path.clone(),
            (IommuMode::Off, PollConfig::default()),
            None,
            Vec::new(),
            None,
        );
        off.write().unwrap();
        let v: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        assert!(v["viommu"].is_null());
        assert_eq!(v["iommu_poll"]["mode"], "off");
        assert!(v["kvm"].is_null(), "no KVM stats files given");
        assert_eq!(v["exits"]["total"]["count"], 0);
    }

    #[test]
    fn exits_of_every_vcpu_are_summed() {
        use crate::vstate::exit_stats::{ExitKind, ExitRegion};
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.json");
        let vcpus = vec![Arc::new(ExitStats::new()), Arc::new(ExitStats::new())];
        vcpus[0].record(ExitKind::MmioRead, Some(ExitRegion::MmioPciBar), 40);
        vcpus[1].record(ExitKind::MmioRead, Some(ExitRegion::MmioPciEcam), 60);
        let w = StatsWriter::new(
            path.clone(),
            (IommuMode::Off, PollConfig::default()),
            None,
            Vec::new(),
            None,
        )
        .with_exits(VmKvmStats::new(), vcpus);
        w.write().unwrap();
        let v: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        assert_eq!(
            v["exits"]["by_reason"]["mmio_read"],
            json!({"count": 2, "ns": 100})
        );
        assert_eq!(v["exits"]["by_region"]["mmio_pci_ecam"]["count"], 1);
        assert_eq!(v["kvm"]["vcpus"], json!([]));
        assert!(v["kvm"]["exits"]["total"].is_null());
    }

    #[test]
    fn host_calls_per_request() {
        let viommu = json!({"requests": {"map": 3, "unmap": 1, "attach": 0}});
        let vfio = json!({"dma": {"viommu": {"map": {"calls": 3}, "unmap": {"calls": 3}}}});
        assert_eq!(calls_per_request(Some(&viommu), Some(&vfio)), Some(1.5));
        assert_eq!(calls_per_request(Some(&viommu), None), None);
        let idle = json!({"requests": {"map": 0}});
        assert_eq!(calls_per_request(Some(&idle), Some(&vfio)), None);
    }
}
