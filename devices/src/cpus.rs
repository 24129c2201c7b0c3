//! Where iovmm's threads run: sets of host CPUs and the placement of the
//! device threads.
//!
//! A device's worker thread is started by the vCPU thread whose register
//! write activated the device, so without a placement it inherits that
//! vCPU's affinity, and the scheduler tends to wake it on the vCPU's CPU
//! (the vCPU is what signals it): measured in the lab, the virtio-iommu
//! worker then preempts the busy vCPU on every notification. The VMM sets
//! the device threads' CPUs once ([`set_io_cpus`]) and
//! [`crate::virtio::worker::Worker`] applies them to every thread it
//! starts.

use std::fmt;
use std::io;
use std::str::FromStr;
use std::sync::OnceLock;

/// The highest CPU number a set can hold, plus one (the size of libc's
/// `cpu_set_t`).
pub const MAX_CPUS: usize = 8 * std::mem::size_of::<libc::cpu_set_t>();

/// A non-empty set of host CPU numbers, each below [`MAX_CPUS`].
#[derive(Clone, PartialEq, Eq)]
pub struct CpuSet {
    cpus: Vec<usize>,
}

impl CpuSet {
    /// The set of `cpus` (sorted, duplicates removed); `None` if empty or a
    /// number is not below [`MAX_CPUS`].
    pub fn new(mut cpus: Vec<usize>) -> Option<Self> {
        cpus.sort_unstable();
        cpus.dedup();
        (!cpus.is_empty() && cpus.iter().all(|&c| c < MAX_CPUS)).then_some(CpuSet { cpus })
    }

    /// The CPUs, ascending.
    pub fn cpus(&self) -> &[usize] {
        &self.cpus
    }

    /// Whether every CPU of `self` is in `other`.
    pub fn is_subset(&self, other: &CpuSet) -> bool {
        self.cpus
            .iter()
            .all(|c| other.cpus.binary_search(c).is_ok())
    }

    /// The CPUs the calling thread may run on.
    pub fn of_current_thread() -> io::Result<CpuSet> {
        // SAFETY: an all-zero cpu_set_t is a valid empty set.
        let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
        // SAFETY: `set` is a valid, writable cpu_set_t of the size passed;
        // pid 0 is the calling thread.
        let rc = unsafe { libc::sched_getaffinity(0, std::mem::size_of_val(&set), &mut set) };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: every index is below the set's size.
        let cpus = (0..MAX_CPUS).filter(|&c| unsafe { libc::CPU_ISSET(c, &set) });
        CpuSet::new(cpus.collect()).ok_or_else(|| io::Error::other("empty CPU affinity"))
    }

    /// Restricts the calling thread to this set.
    pub fn pin_current_thread(&self) -> io::Result<()> {
        // SAFETY: an all-zero cpu_set_t is a valid empty set.
        let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
        for &c in &self.cpus {
            // SAFETY: `c` is below MAX_CPUS, the set's size (constructor).
            unsafe { libc::CPU_SET(c, &mut set) };
        }
        // SAFETY: `set` is a valid cpu_set_t of the size passed; pid 0 is
        // the calling thread.
        let rc = unsafe { libc::sched_setaffinity(0, std::mem::size_of_val(&set), &set) };
        if rc == 0 {
            Ok(())
        } else {
            Err(io::Error::last_os_error())
        }
    }
}

/// The list syntax of Linux's cpusets: `0-3,8,10-11`.
impl FromStr for CpuSet {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let num = |t: &str| -> Result<usize, String> {
            t.trim()
                .parse::<usize>()
                .map_err(|_| format!("`{}` is not a CPU number", t.trim()))
        };
        let mut cpus = Vec::new();
        for part in s.split(',') {
            let (lo, hi) = match part.split_once('-') {
                Some((a, b)) => (num(a)?, num(b)?),
                None => {
                    let c = num(part)?;
                    (c, c)
                }
            };
            if lo > hi || hi >= MAX_CPUS {
                return Err(format!(
                    "`{}` is not a range of CPUs below {MAX_CPUS}",
                    part.trim()
                ));
            }
            cpus.extend(lo..=hi);
        }
        CpuSet::new(cpus).ok_or_else(|| "no CPU given".to_string())
    }
}

impl fmt::Display for CpuSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut i = 0;
        while i < self.cpus.len() {
            let mut j = i;
            while j + 1 < self.cpus.len() && self.cpus[j + 1] == self.cpus[j] + 1 {
                j += 1;
            }
            if i > 0 {
                f.write_str(",")?;
            }
            if i == j {
                write!(f, "{}", self.cpus[i])?;
            } else {
                write!(f, "{}-{}", self.cpus[i], self.cpus[j])?;
            }
            i = j + 1;
        }
        Ok(())
    }
}

impl fmt::Debug for CpuSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "CpuSet({self})")
    }
}

static IO_CPUS: OnceLock<CpuSet> = OnceLock::new();

/// Sets the CPUs of every device thread started from now on (once per
/// process: the VMM's placement; a second call is ignored and returns
/// false).
pub fn set_io_cpus(set: CpuSet) -> bool {
    IO_CPUS.set(set).is_ok()
}

/// Restricts the calling (new device) thread to the device threads' CPUs,
/// if the VMM set them; a failure is logged, the thread runs anyway.
pub fn place_io_thread(name: &str) {
    if let Some(set) = IO_CPUS.get() {
        if let Err(e) = set.pin_current_thread() {
            tracing::warn!("{name}: cannot run on CPUs {set}: {e}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_parse_and_print_in_the_cpuset_syntax() {
        let s: CpuSet = "3, 0-1,1,7-9".parse().unwrap();
        assert_eq!(s.cpus(), &[0, 1, 3, 7, 8, 9]);
        assert_eq!(s.to_string(), "0-1,3,7-9");
        for bad in ["", "a", "3-1", "1-", "-", &format!("{MAX_CPUS}"), "0,,1"] {
            assert!(bad.parse::<CpuSet>().is_err(), "{bad:?} accepted");
        }
        assert!(CpuSet::new(vec![]).is_none());
        assert!(s.is_subset(&"0-9".parse().unwrap()));
        assert!(!s.is_subset(&"0-8".parse().unwrap()));
    }

    #[test]
    fn a_thread_runs_where_it_is_pinned() {
        let allowed = CpuSet::of_current_thread().unwrap();
        let one = CpuSet::new(vec![allowed.cpus()[0]]).unwrap();
        let seen = std::thread::spawn(move || {
            one.pin_current_thread().unwrap();
            CpuSet::of_current_thread().unwrap()
        })
        .join()
        .unwrap();
        assert_eq!(seen.cpus(), &allowed.cpus()[..1]);
        // CPUs this process may not use are refused by the kernel.
        let outside = (0..MAX_CPUS).find(|c| !allowed.cpus().contains(c)).unwrap();
        let t =
            std::thread::spawn(move || CpuSet::new(vec![outside]).unwrap().pin_current_thread());
        assert!(t.join().unwrap().is_err());
    }
}
