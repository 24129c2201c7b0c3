//! `[machine] vcpu_cpus` / `io_cpus` (`--vcpu-cpus`, `--io-cpus`): the
//! host CPUs of the vCPU threads and of the device threads.
//!
//! Benchmarks need placement to be a setting, not the scheduler's choice:
//! a device worker woken by a vCPU tends to be woken on that vCPU's CPU
//! and preempt it on every notification (devices/src/cpus.rs). With
//! `vcpu_cpus` every vCPU thread may run on those CPUs; with `io_cpus`
//! every other thread of iovmm (device workers, the virtio-iommu host
//! thread, the poll loop unless `iommu.poll_cpu` pins it) runs on those.
//! Unset, threads keep the CPUs iovmm was started with.

use devices::cpus::CpuSet;

use super::ConfigError;

/// The validated placement of iovmm's threads.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Placement {
    /// CPUs of every vCPU thread.
    pub vcpus: Option<CpuSet>,
    /// CPUs of every other thread.
    pub io: Option<CpuSet>,
}

/// Parses a CPU list given as `what` (a flag or a file key).
pub fn parse_cpus(what: &str, s: &str) -> Result<CpuSet, ConfigError> {
    s.parse::<CpuSet>().map_err(|e| {
        ConfigError::new(
            format!("{what} `{s}`: {e}"),
            format!("give a list of host CPUs such as 0-3,6 to {what}"),
        )
    })
}

impl Placement {
    /// Checks both sets against the CPUs this process may use.
    pub fn build(vcpus: Option<CpuSet>, io: Option<CpuSet>) -> Result<Placement, ConfigError> {
        if vcpus.is_none() && io.is_none() {
            return Ok(Placement::default());
        }
        let allowed = CpuSet::of_current_thread().map_err(|e| {
            ConfigError::new(
                format!("cannot read iovmm's CPU affinity: {e}"),
                "remove vcpu_cpus and io_cpus",
            )
        })?;
        Self::check(vcpus, io, &allowed)
    }

    fn check(
        vcpus: Option<CpuSet>,
        io: Option<CpuSet>,
        allowed: &CpuSet,
    ) -> Result<Placement, ConfigError> {
        for (what, set) in [("vcpu_cpus", &vcpus), ("io_cpus", &io)] {
            if let Some(set) = set {
                if !set.is_subset(allowed) {
                    return Err(ConfigError::new(
                        format!("{what} {set}: iovmm may only run on CPUs {allowed}"),
                        format!(
                            "choose {what} (--{}) among {allowed}",
                            what.replace('_', "-")
                        ),
                    ));
                }
            }
        }
        Ok(Placement { vcpus, io })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sets_outside_the_allowed_cpus_are_refused() {
        let allowed: CpuSet = "0-3".parse().unwrap();
        let p = Placement::check(
            Some("0".parse().unwrap()),
            Some("1-3".parse().unwrap()),
            &allowed,
        )
        .unwrap();
        assert_eq!(p.io.unwrap().cpus(), &[1, 2, 3]);
        let e = Placement::check(None, Some("2-4".parse().unwrap()), &allowed).unwrap_err();
        assert_eq!(e.problem(), "io_cpus 2-4: iovmm may only run on CPUs 0-3");
        assert_eq!(e.fix(), "choose io_cpus (--io-cpus) among 0-3");
        let e = parse_cpus("--vcpu-cpus", "0-x").unwrap_err();
        assert_eq!(e.problem(), "--vcpu-cpus `0-x`: `x` is not a CPU number");
        assert!(Placement::build(None, None).unwrap() == Placement::default());
    }
}
