//! The IOMMU policy of a VM (`[iommu]` / `--iommu-mode`) and the guest
//! kernel parameters that go with it.

use std::time::Duration;

pub use viommu::poll::{PollConfig, PollMode};

use super::ConfigError;

/// Longest adaptive poll budget accepted, in µs (one second).
pub const MAX_POLL_BUDGET_US: i64 = 1_000_000;

/// Request-queue polling as one config layer sets it (`[iommu] poll`,
/// `poll_budget_us`, `poll_cpu`; `--iommu-poll*`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PollLayer {
    /// When to poll.
    pub mode: Option<PollMode>,
    /// Adaptive idle budget in µs.
    pub budget_us: Option<i64>,
    /// Host CPU for the device thread.
    pub cpu: Option<i64>,
}

impl PollLayer {
    /// This layer with every field `top` sets replaced by `top`'s.
    pub fn overlay(self, top: PollLayer) -> PollLayer {
        PollLayer {
            mode: top.mode.or(self.mode),
            budget_us: top.budget_us.or(self.budget_us),
            cpu: top.cpu.or(self.cpu),
        }
    }

    /// Validates the layer into the device's [`PollConfig`]. Polling only
    /// applies where the guest sends MAP/UNMAP requests (strict and lazy):
    /// with `off` or `passthrough` it is turned off.
    pub fn build(self, mode: IommuMode) -> Result<PollConfig, ConfigError> {
        let budget_us = self
            .budget_us
            .unwrap_or(viommu::poll::DEFAULT_BUDGET.as_micros() as i64);
        if !(1..=MAX_POLL_BUDGET_US).contains(&budget_us) {
            return Err(ConfigError::new(
                format!("poll budget {budget_us} µs is out of range"),
                format!("use 1 to {MAX_POLL_BUDGET_US} µs (--iommu-poll-budget-us, [iommu] poll_budget_us)"),
            ));
        }
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get()) as i64;
        let cpu = match self.cpu {
            Some(c) if !(0..cpus).contains(&c) => {
                return Err(ConfigError::new(
                    format!("poll CPU {c} does not exist (this host has {cpus})"),
                    format!("use 0 to {} (--iommu-poll-cpu, [iommu] poll_cpu)", cpus - 1),
                ))
            }
            c => c.map(|c| c as usize),
        };
        let mut poll_mode = self.mode.unwrap_or_default();
        if matches!(mode, IommuMode::Off | IommuMode::Passthrough) {
            poll_mode = PollMode::Off;
        }
        Ok(PollConfig {
            mode: poll_mode,
            budget: Duration::from_micros(budget_us as u64),
            cpu,
        })
    }
}

/// Parses a poll mode for `what` (a flag or config key).
pub fn parse_poll_mode(s: &str) -> Result<PollMode, ConfigError> {
    PollMode::parse(s).ok_or_else(|| {
        ConfigError::new(
            format!("unknown poll mode `{s}`"),
            "use off, adaptive or always",
        )
    })
}

/// How the guest's DMA is protected.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum IommuMode {
    /// No virtual IOMMU at all; devices use guest-physical addresses.
    #[default]
    Off,
    /// A virtual IOMMU whose domains are identity (bypass) domains.
    Passthrough,
    /// Unmap + IOTLB invalidation right after every DMA (`iommu.strict=1`).
    Strict,
    /// Deferred, batched invalidation (`iommu.strict=0`, Linux DMA-FQ).
    Lazy,
    /// Cooperative: the guest's DMA tracking table says what to pin
    /// (docs/coop.md); a guest without the patched driver gets strict.
    Coop,
}

impl IommuMode {
    /// The name used in configs and on the command line.
    pub fn as_str(self) -> &'static str {
        match self {
            IommuMode::Off => "off",
            IommuMode::Passthrough => "passthrough",
            IommuMode::Strict => "strict",
            IommuMode::Lazy => "lazy",
            IommuMode::Coop => "coop",
        }
    }

    /// Parses `off|passthrough|strict|lazy|coop`.
    pub fn parse(s: &str) -> Result<Self, ConfigError> {
        match s {
            "off" => Ok(IommuMode::Off),
            "passthrough" => Ok(IommuMode::Passthrough),
            "strict" => Ok(IommuMode::Strict),
            "lazy" => Ok(IommuMode::Lazy),
            "coop" => Ok(IommuMode::Coop),
            _ => Err(ConfigError::new(
                format!("unknown IOMMU mode `{s}`"),
                "use off, passthrough, strict, lazy or coop",
            )),
        }
    }

    /// The Linux parameter selecting this policy, if any.
    pub fn kernel_param(self) -> Option<&'static str> {
        match self {
            IommuMode::Off => None,
            IommuMode::Passthrough => Some("iommu.passthrough=1"),
            IommuMode::Strict => Some("iommu.strict=1"),
            IommuMode::Lazy => Some("iommu.strict=0"),
            // The stock driver's fallback; the patched one picks identity
            // domains for its endpoints itself.
            IommuMode::Coop => Some("iommu.strict=1"),
        }
    }
}

/// The pin granule of `auto`: 256 KiB. Measured in the lab (docs/coop.md,
/// "Status"): 4 KiB pins cost a request for most fresh TX pages, 2 MiB
/// pins hold over 5% of a 512 MiB guest; 64 KiB and 256 KiB meet both
/// goals, 256 KiB with more margin on requests per packet.
pub const DEFAULT_COOP_GRANULE: u64 = 256 << 10;

/// Longest unpin scan interval accepted, in ms (one minute).
pub const MAX_COOP_SCAN_MS: i64 = 60_000;

/// Cooperative mode's parameters as one config layer sets them
/// (`[iommu] coop_budget`, `coop_scan_ms`, `coop_granule`; `--coop-*`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CoopLayer {
    /// Pinned-memory budget in bytes.
    pub budget: Option<u64>,
    /// Unpin scan interval in ms.
    pub scan_ms: Option<i64>,
    /// Pin granule: a power of two from `4K` to `2M`, or `auto`.
    pub granule: Option<String>,
}

impl CoopLayer {
    /// This layer with every field `top` sets replaced by `top`'s.
    pub fn overlay(self, top: CoopLayer) -> CoopLayer {
        CoopLayer {
            budget: top.budget.or(self.budget),
            scan_ms: top.scan_ms.or(self.scan_ms),
            granule: top.granule.or(self.granule),
        }
    }

    /// Validates the layer for a guest of `memory` bytes (the default
    /// granule is [`DEFAULT_COOP_GRANULE`], the default budget 1/8 of
    /// guest RAM).
    pub fn build(self, memory: u64) -> Result<viommu::coop::CoopConfig, ConfigError> {
        const HUGE: u64 = 2 << 20;
        let granule = match self.granule.as_deref().unwrap_or("auto") {
            "auto" => DEFAULT_COOP_GRANULE,
            g => match super::parse_size(g) {
                Ok(b) if b.is_power_of_two() && (viommu::coop::PAGE..=HUGE).contains(&b) => b,
                _ => {
                    return Err(ConfigError::new(
                        format!("unknown pin granule `{g}`"),
                        "use a power of two from 4K to 2M (4K, 64K, 2M) or auto (--coop-granule, [iommu] coop_granule)",
                    ))
                }
            },
        };
        let budget = self.budget.unwrap_or((memory / 8).max(granule));
        if budget < granule || budget > memory {
            return Err(ConfigError::new(
                format!("pinned-memory budget {budget} bytes is out of range"),
                format!(
                    "use between the pin granule ({granule} bytes) and guest RAM ({memory} bytes) (--coop-budget, [iommu] coop_budget)"
                ),
            ));
        }
        let scan_ms = self.scan_ms.unwrap_or(100);
        if !(1..=MAX_COOP_SCAN_MS).contains(&scan_ms) {
            return Err(ConfigError::new(
                format!("unpin scan interval {scan_ms} ms is out of range"),
                format!("use 1 to {MAX_COOP_SCAN_MS} ms (--coop-scan-ms, [iommu] coop_scan_ms)"),
            ));
        }
        Ok(viommu::coop::CoopConfig {
            budget,
            scan: Duration::from_millis(scan_ms as u64),
            granule,
        })
    }
}

/// `cmdline` plus the mode's kernel parameter, unless the user already
/// chose an IOMMU policy (`iommu.strict=` or `iommu.passthrough=`).
pub fn cmdline_with_mode(cmdline: &str, mode: IommuMode) -> String {
    let user_chose = cmdline
        .split_whitespace()
        .any(|w| w.starts_with("iommu.strict=") || w.starts_with("iommu.passthrough="));
    match mode.kernel_param() {
        Some(p) if !user_chose => format!("{cmdline} {p}"),
        _ => cmdline.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modes_parse_and_round_trip() {
        for m in [
            IommuMode::Off,
            IommuMode::Passthrough,
            IommuMode::Strict,
            IommuMode::Lazy,
            IommuMode::Coop,
        ] {
            assert_eq!(IommuMode::parse(m.as_str()).unwrap(), m);
        }
        let e = IommuMode::parse("strcit").unwrap_err().to_string();
        assert!(
            e.contains("strcit") && e.contains("off, passthrough, strict, lazy or coop"),
            "{e}"
        );
    }

    #[test]
    fn kernel_parameters_respect_the_users_choice() {
        assert_eq!(
            cmdline_with_mode("console=ttyS0", IommuMode::Strict),
            "console=ttyS0 iommu.strict=1"
        );
        assert_eq!(cmdline_with_mode("a", IommuMode::Lazy), "a iommu.strict=0");
        assert_eq!(
            cmdline_with_mode("a", IommuMode::Passthrough),
            "a iommu.passthrough=1"
        );
        assert_eq!(cmdline_with_mode("a", IommuMode::Off), "a");
        assert_eq!(
            cmdline_with_mode("a iommu.strict=0", IommuMode::Strict),
            "a iommu.strict=0"
        );
        assert_eq!(
            cmdline_with_mode("iommu.passthrough=0 b", IommuMode::Passthrough),
            "iommu.passthrough=0 b"
        );
    }

    #[test]
    fn coop_layers_default_overlay_and_validate() {
        let gib = 1u64 << 30;
        let d = CoopLayer::default().build(4 * gib).unwrap();
        assert_eq!((d.budget, d.granule), (gib / 2, 256 << 10));
        assert_eq!(d.scan, Duration::from_millis(100));
        let file = CoopLayer {
            budget: Some(64 << 20),
            scan_ms: Some(50),
            granule: Some("2M".into()),
        };
        let cli = CoopLayer {
            granule: Some("4k".into()),
            ..CoopLayer::default()
        };
        let c = file.overlay(cli).build(gib).unwrap();
        assert_eq!((c.budget, c.granule), (64 << 20, 4096));
        assert_eq!(c.scan, Duration::from_millis(50));
        let err = |l: CoopLayer| l.build(gib).unwrap_err().to_string();
        let g = |s: &str| {
            CoopLayer {
                granule: Some(s.into()),
                ..Default::default()
            }
            .build(gib)
        };
        assert_eq!(g("64K").unwrap().granule, 64 << 10);
        assert_eq!(g("2MiB").unwrap().granule, 2 << 20);
        for bad in ["1G", "8M", "2K", "48K", "fast"] {
            assert!(
                g(bad)
                    .unwrap_err()
                    .to_string()
                    .contains(&format!("unknown pin granule `{bad}`")),
                "{bad}"
            );
        }
        assert!(err(CoopLayer {
            budget: Some(2 * gib),
            ..Default::default()
        })
        .contains("--coop-budget"));
        assert!(err(CoopLayer {
            scan_ms: Some(0),
            ..Default::default()
        })
        .contains("1 to 60000 ms"));
        assert_eq!(cmdline_with_mode("a", IommuMode::Coop), "a iommu.strict=1");
    }

    #[test]
    fn poll_layers_overlay_and_validate() {
        let file = PollLayer {
            mode: Some(PollMode::Always),
            budget_us: Some(50),
            cpu: None,
        };
        let cli = PollLayer {
            mode: Some(PollMode::Adaptive),
            ..PollLayer::default()
        };
        let p = file.overlay(cli).build(IommuMode::Strict).unwrap();
        assert_eq!(p.mode, PollMode::Adaptive);
        assert_eq!(p.budget, Duration::from_micros(50));
        assert_eq!(p.cpu, None);
        let d = PollLayer::default().build(IommuMode::Lazy).unwrap();
        assert_eq!(d, PollConfig::default());
        // No requests to poll for without translation.
        let adaptive = PollLayer {
            mode: Some(PollMode::Adaptive),
            ..PollLayer::default()
        };
        for m in [IommuMode::Off, IommuMode::Passthrough] {
            assert_eq!(adaptive.clone().build(m).unwrap().mode, PollMode::Off);
        }
        let e = PollLayer {
            budget_us: Some(0),
            ..PollLayer::default()
        }
        .build(IommuMode::Strict)
        .unwrap_err()
        .to_string();
        assert!(e.contains("budget 0") && e.contains("1 to 1000000"), "{e}");
        let e = PollLayer {
            cpu: Some(100_000),
            ..PollLayer::default()
        }
        .build(IommuMode::Strict)
        .unwrap_err()
        .to_string();
        assert!(e.contains("CPU 100000"), "{e}");
        let e = parse_poll_mode("busy").unwrap_err().to_string();
        assert!(e.contains("busy") && e.contains("adaptive"), "{e}");
    }

    #[test]
    fn file_sections_parse_and_validate() {
        let base = std::path::Path::new("/cfg");
        let l = super::super::file::parse(
            "[iommu]\nmode = \"lazy\"\n[stats]\nfile = \"s.json\"\n",
            "t.toml",
            base,
        )
        .unwrap();
        assert_eq!(l.iommu_mode, Some(IommuMode::Lazy));
        assert_eq!(
            l.stats_file.as_deref(),
            Some(std::path::Path::new("/cfg/s.json"))
        );
        let e = super::super::file::parse("[iommu]\nmode = \"fast\"\n", "t.toml", base)
            .unwrap_err()
            .to_string();
        assert!(e.contains("[iommu] mode") || e.contains("fast"), "{e}");
        let l = super::super::file::parse(
            "[iommu]\npoll = \"adaptive\"\npoll_budget_us = 300\npoll_cpu = 0\n",
            "t.toml",
            base,
        )
        .unwrap();
        assert_eq!(l.iommu_poll.mode, Some(PollMode::Adaptive));
        assert_eq!(l.iommu_poll.budget_us, Some(300));
        assert_eq!(l.iommu_poll.cpu, Some(0));
        let e = super::super::file::parse("[iommu]\npoll = \"fast\"\n", "t.toml", base)
            .unwrap_err()
            .to_string();
        assert!(e.contains("[iommu] poll") && e.contains("fast"), "{e}");
        let e = super::super::file::parse("[iommu]\nmodes = \"lazy\"\n", "t.toml", base)
            .unwrap_err()
            .to_string();
        assert!(e.contains("modes"), "{e}");
    }
}
