//! The IOMMU policy of a VM (`[iommu]` / `--iommu-mode`) and the guest
//! kernel parameters that go with it.

use super::ConfigError;

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
}

impl IommuMode {
    /// The name used in configs and on the command line.
    pub fn as_str(self) -> &'static str {
        match self {
            IommuMode::Off => "off",
            IommuMode::Passthrough => "passthrough",
            IommuMode::Strict => "strict",
            IommuMode::Lazy => "lazy",
        }
    }

    /// Parses `off|passthrough|strict|lazy`.
    pub fn parse(s: &str) -> Result<Self, ConfigError> {
        match s {
            "off" => Ok(IommuMode::Off),
            "passthrough" => Ok(IommuMode::Passthrough),
            "strict" => Ok(IommuMode::Strict),
            "lazy" => Ok(IommuMode::Lazy),
            _ => Err(ConfigError::new(
                format!("unknown IOMMU mode `{s}`"),
                "use off, passthrough, strict or lazy",
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
        }
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
        ] {
            assert_eq!(IommuMode::parse(m.as_str()).unwrap(), m);
        }
        let e = IommuMode::parse("strcit").unwrap_err().to_string();
        assert!(
            e.contains("strcit") && e.contains("off, passthrough, strict or lazy"),
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
        let e = super::super::file::parse("[iommu]\nmodes = \"lazy\"\n", "t.toml", base)
            .unwrap_err()
            .to_string();
        assert!(e.contains("modes"), "{e}");
    }
}
