//! The VM's counters as one JSON document, written to `--stats-file` when
//! the VM stops and whenever the process receives SIGUSR1 (which also
//! makes every vCPU log its registers, for diagnosing a hung guest).

use std::io;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use serde_json::json;
use viommu::device::IommuState;

use crate::config::IommuMode;
use crate::device_manager::DeviceStats;

/// Collects and writes the counters of one VM.
pub struct StatsWriter {
    path: PathBuf,
    mode: IommuMode,
    viommu: Option<Arc<IommuState>>,
    devices: Vec<(String, DeviceStats)>,
    started: Instant,
}

impl StatsWriter {
    /// A writer for `path`.
    pub fn new(
        path: PathBuf,
        mode: IommuMode,
        viommu: Option<Arc<IommuState>>,
        devices: Vec<(String, DeviceStats)>,
    ) -> Self {
        StatsWriter {
            path,
            mode,
            viommu,
            devices,
            started: Instant::now(),
        }
    }

    /// The current counters.
    pub fn snapshot(&self) -> serde_json::Value {
        json!({
            "uptime_s": self.started.elapsed().as_secs_f64(),
            "iommu_mode": self.mode.as_str(),
            "viommu": self.viommu.as_ref().map(|v| v.stats.to_json()),
            "devices": self
                .devices
                .iter()
                .map(|(name, s)| (name.clone(), s.to_json()))
                .collect::<serde_json::Map<_, _>>(),
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

fn sigusr1_set() -> libc::sigset_t {
    // SAFETY: sigset_t is plain data; sigemptyset/sigaddset initialise it
    // fully before use and only write to the local.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGUSR1);
        set
    }
}

/// Blocks SIGUSR1 in the calling thread (and the threads it creates later),
/// so that only the stats thread receives it. Call before starting vCPUs.
pub fn block_sigusr1() {
    let set = sigusr1_set();
    // SAFETY: `set` is a valid, initialised sigset; the old mask is not
    // requested (null).
    let r = unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) };
    if r != 0 {
        tracing::warn!("cannot block SIGUSR1: {}", io::Error::from_raw_os_error(r));
    }
}

/// Starts the thread that serves SIGUSR1: every vCPU in `vcpus` logs its
/// registers, then the stats (if a file is configured) are written.
pub fn spawn_sigusr1_thread(
    writer: Option<Arc<StatsWriter>>,
    vcpus: Vec<libc::pthread_t>,
) -> io::Result<()> {
    std::thread::Builder::new()
        .name("sigusr1".into())
        .spawn(move || loop {
            let set = sigusr1_set();
            let mut sig: libc::c_int = 0;
            // SAFETY: `set` is initialised and `sig` is a valid out pointer.
            let r = unsafe { libc::sigwait(&set, &mut sig) };
            if r != 0 {
                tracing::warn!("sigwait failed: {}", io::Error::from_raw_os_error(r));
                return;
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
    fn writes_json_with_the_viommu_counters() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.json");
        let state = IommuState::new(viommu::tables::Tables::new(Default::default(), None)).unwrap();
        state.stats.record(2, 0, 0x2000, 0x2000, 10);
        let w = StatsWriter::new(path.clone(), IommuMode::Strict, Some(state), Vec::new());
        w.write().unwrap();
        let v: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        assert_eq!(v["iommu_mode"], "strict");
        assert_eq!(v["viommu"]["requests"]["map"], 1);
        assert_eq!(v["viommu"]["pages_mapped"], 2);
        let off = StatsWriter::new(path.clone(), IommuMode::Off, None, Vec::new());
        off.write().unwrap();
        let v: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        assert!(v["viommu"].is_null());
    }
}
