//! Polling the request queue (`iommu.poll`): requests served with no
//! notification, hence no VM exit.
//!
//! The Linux driver kicks the request queue through `virtqueue_kick()`,
//! which skips the notification while the device has set
//! `VRING_USED_F_NO_NOTIFY`, and then busy-waits for the answer. So a
//! device thread that keeps notifications suppressed and watches the
//! available ring receives every MAP and UNMAP without an exit, and strict
//! semantics hold because the guest still waits for each completion.
//!
//! [`IommuWorker::poll`] runs after every notification-driven pass of the
//! request queue:
//!
//! - `off`: returns at once (notifications stay the only wake-up);
//! - `adaptive`: polls while requests keep arriving and stops after the
//!   idle budget; the handover re-enables notifications and re-checks the
//!   ring, so a request published in between is served, not stranded;
//! - `always`: polls until the device is reset or stopped.
//!
//! In every mode a request ring the driver broke ends polling at once
//! (the queue is not served until reset, see `devices::virtio::ring`).
//!
//! Fault events are delivered from the same loop, since the worker's event
//! loop does not run while it polls.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use virtio_queue::QueueT;

use crate::device::{IommuWorker, EVENT_QUEUE, REQ_QUEUE};

/// When the request queue is polled.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum PollMode {
    /// Never: every request batch arrives with a notification.
    #[default]
    Off,
    /// After a notification, while requests keep coming; back to
    /// notifications after [`PollConfig::budget`] without one.
    Adaptive,
    /// Continuously while the device is active (one host core).
    Always,
}

impl PollMode {
    /// The name used in configs and on the command line.
    pub fn as_str(self) -> &'static str {
        match self {
            PollMode::Off => "off",
            PollMode::Adaptive => "adaptive",
            PollMode::Always => "always",
        }
    }

    /// Parses `off|adaptive|always`.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "off" => Some(PollMode::Off),
            "adaptive" => Some(PollMode::Adaptive),
            "always" => Some(PollMode::Always),
            _ => None,
        }
    }
}

/// Default idle budget of adaptive polling.
pub const DEFAULT_BUDGET: Duration = Duration::from_micros(200);

/// How the device thread polls its request queue.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PollConfig {
    /// When to poll.
    pub mode: PollMode,
    /// Adaptive mode: how long to keep polling without a new request.
    pub budget: Duration,
    /// Host CPU the device thread is pinned to, if any.
    pub cpu: Option<usize>,
}

impl Default for PollConfig {
    fn default() -> Self {
        PollConfig {
            mode: PollMode::Off,
            budget: DEFAULT_BUDGET,
            cpu: None,
        }
    }
}

/// CPU time consumed by the calling thread, in nanoseconds.
pub fn thread_cpu_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec for the duration of the
    // call; the clock id is a constant the kernel knows.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    if rc != 0 {
        return 0;
    }
    (ts.tv_sec as u64).saturating_mul(1_000_000_000) + ts.tv_nsec as u64
}

/// Pins the calling thread to `cpu`.
pub fn pin_current_thread(cpu: usize) -> std::io::Result<()> {
    devices::cpus::CpuSet::new(vec![cpu])
        .ok_or_else(|| std::io::Error::from_raw_os_error(libc::EINVAL))?
        .pin_current_thread()
}

impl IommuWorker {
    /// Polls the request queue as [`PollConfig::mode`] says, after a
    /// notification-driven pass; returns when polling ends (idle budget,
    /// reset, or stop) with notifications enabled again.
    pub(crate) fn poll(&mut self) {
        let cfg = self.poll;
        if cfg.mode == PollMode::Off || self.req_health.is_broken() {
            return;
        }
        if let Some(cpu) = cfg.cpu.filter(|_| !self.pinned) {
            self.pinned = true;
            if let Err(e) = pin_current_thread(cpu) {
                tracing::warn!("virtio-iommu: cannot pin the poll thread to CPU {cpu}: {e}");
            }
        }
        let stats = self.state.stats.clone();
        let cpu0 = thread_cpu_ns();
        let wall0 = Instant::now();
        stats.poll.sessions.fetch_add(1, Ordering::Relaxed);
        let mut last_work = wall0;
        let mut faults_seen = self.state.faults_queued.load(Ordering::Acquire);
        let mut faults_waiting = self.state.has_pending_faults();
        let mut suppressed = self.req.disable_notification(&self.mem).is_ok();
        while suppressed && !self.stopping.load(Ordering::Relaxed) {
            let n = self.drain_requests(true);
            if self.req_health.is_broken() {
                // Not served until reset: leave the ring alone and let the
                // event loop (which blocks) take over.
                suppressed = false;
                if n > 0 {
                    self.signal(REQ_QUEUE);
                }
                break;
            }
            if n > 0 {
                // Each of these passes replaced one kick of the driver.
                stats.poll.kicks_avoided.fetch_add(1, Ordering::Relaxed);
                if self.req.needs_notification(&self.mem).unwrap_or(true) {
                    self.signal(REQ_QUEUE);
                }
                last_work = Instant::now();
                continue;
            }
            // Faults: new ones, or old ones still waiting for event
            // buffers the driver may have added since.
            let f = self.state.faults_queued.load(Ordering::Acquire);
            if f != faults_seen || faults_waiting {
                faults_seen = f;
                if self.deliver_faults() {
                    self.signal(EVENT_QUEUE);
                }
                faults_waiting = self.state.has_pending_faults();
            }
            if cfg.mode == PollMode::Adaptive && last_work.elapsed() >= cfg.budget {
                // Handover: notifications on, then one more look, for a
                // request published before the guest could see the flag.
                match self.req.enable_notification(&self.mem) {
                    Ok(true) => {
                        stats.poll.handover_rechecks.fetch_add(1, Ordering::Relaxed);
                        suppressed = self.req.disable_notification(&self.mem).is_ok();
                        last_work = Instant::now();
                    }
                    Ok(false) => {
                        // Notifications are on and the ring is empty.
                        suppressed = false;
                        break;
                    }
                    Err(_) => break,
                }
                continue;
            }
            std::hint::spin_loop();
        }
        if suppressed {
            // Stopped (or the handover failed) while polling: leave the
            // ring as a notified device.
            let _ = self.req.enable_notification(&self.mem);
        }
        stats
            .poll
            .cpu_ns
            .fetch_add(thread_cpu_ns().saturating_sub(cpu0), Ordering::Relaxed);
        stats
            .poll
            .wall_ns
            .fetch_add(wall0.elapsed().as_nanos() as u64, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modes_parse_and_round_trip() {
        for m in [PollMode::Off, PollMode::Adaptive, PollMode::Always] {
            assert_eq!(PollMode::parse(m.as_str()), Some(m));
        }
        assert_eq!(PollMode::parse("busy"), None);
        assert_eq!(PollConfig::default().mode, PollMode::Off);
    }

    #[test]
    fn thread_cpu_time_advances_with_work() {
        let a = thread_cpu_ns();
        let t0 = Instant::now();
        let mut x = 0u64;
        while t0.elapsed() < Duration::from_millis(20) {
            x = x.wrapping_mul(6364136223846793005).wrapping_add(1);
        }
        std::hint::black_box(x);
        let b = thread_cpu_ns();
        assert!(b > a + 5_000_000, "{a} -> {b}");
    }

    #[test]
    fn pinning_rejects_impossible_cpus() {
        assert!(pin_current_thread(1 << 20).is_err());
    }
}
