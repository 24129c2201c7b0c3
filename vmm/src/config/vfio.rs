//! Assigned host PCI functions (`[[vfio]]` / `--vfio`).
//!
//! The user names a function by PCI address (`0000:03:00.0`, `03:00.0`)
//! or sysfs path (`/sys/bus/pci/devices/0000:03:00.0`) and says whether
//! its DMA goes through the virtual IOMMU (`iommu`, default: yes unless
//! the IOMMU mode is `off`). Only the syntax is checked here; whether the
//! function exists, is bound to vfio-pci and has a viable IOMMU group is
//! checked against the host when the VM is built
//! ([`vfio_passthrough::sysfs::check`]), with the same one-line messages.
//!
//! Rules:
//!
//! - each function at most once;
//! - `iommu = true` needs a virtual IOMMU (mode not `off`);
//! - at most one function behind the virtual IOMMU: every function behind
//!   it shares one host IOMMU address space (one VFIO container mirrors
//!   the guest's mappings), so two guest domains could not both be
//!   mirrored. Functions with `iommu = false` share another container
//!   holding all of guest RAM at IOVA = guest-physical address.

use vfio_passthrough::sysfs::{self, PciAddress};

use super::{ConfigError, IommuMode};

/// An assigned function as written by the user, before defaults.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct VfioSpec {
    /// PCI address or sysfs path, as written.
    pub device: String,
    /// Behind the virtual IOMMU; `None` follows the IOMMU mode.
    pub iommu: Option<bool>,
}

/// One validated assigned function.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VfioConfig {
    /// Its host address (a sysfs path is reduced to it).
    pub address: PciAddress,
    /// Its DMA is translated by the virtual IOMMU (else all of guest RAM
    /// is mapped for it at IOVA = guest-physical address).
    pub iommu: bool,
}

const ADDRESS_FIX: &str =
    "write DDDD:BB:DD.F (e.g. 0000:03:00.0), BB:DD.F, or a /sys/bus/pci/devices/ path (see lspci -D)";

/// Parses what the user wrote as a PCI function address.
pub fn parse_address(device: &str) -> Result<PciAddress, ConfigError> {
    if device.trim().is_empty() {
        return Err(ConfigError::new("VFIO device is empty", ADDRESS_FIX));
    }
    sysfs::resolve(device).map_err(|_| {
        ConfigError::new(
            format!("VFIO device `{device}` is not a PCI function address"),
            ADDRESS_FIX,
        )
    })
}

/// True when an entry explicitly asks for the virtual IOMMU (which makes
/// `strict` the default mode, as for disks and NICs).
pub fn any_explicit_iommu(specs: &[VfioSpec]) -> bool {
    specs.iter().any(|s| s.iommu == Some(true))
}

/// Validates the entries for a VM whose IOMMU mode is `mode`.
pub fn build_vfio(specs: Vec<VfioSpec>, mode: IommuMode) -> Result<Vec<VfioConfig>, ConfigError> {
    let mut out: Vec<VfioConfig> = Vec::with_capacity(specs.len());
    for s in specs {
        let address = parse_address(&s.device)?;
        if out.iter().any(|o| o.address == address) {
            return Err(ConfigError::new(
                format!("VFIO device {address} is given twice"),
                "list each host function once (--vfio / [[vfio]])",
            ));
        }
        if s.iommu == Some(true) && mode == IommuMode::Off {
            return Err(ConfigError::new(
                format!("VFIO device {address} has iommu=on but the IOMMU mode is off"),
                "set --iommu-mode strict, lazy or passthrough ([iommu] mode), or iommu=off for the device",
            ));
        }
        let iommu = s.iommu.unwrap_or(mode != IommuMode::Off);
        if iommu {
            if let Some(o) = out.iter().find(|o| o.iommu) {
                return Err(ConfigError::new(
                    format!(
                        "VFIO devices {} and {address} are both behind the virtual IOMMU, which supports one assigned function",
                        o.address
                    ),
                    "set iommu=off on all but one of them (iommu=off maps all of guest RAM for that device)",
                ));
            }
        }
        out.push(VfioConfig { address, iommu });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(d: &str, iommu: Option<bool>) -> VfioSpec {
        VfioSpec {
            device: d.into(),
            iommu,
        }
    }

    fn err(specs: Vec<VfioSpec>, mode: IommuMode) -> String {
        let e = build_vfio(specs, mode).unwrap_err().to_string();
        assert!(!e.contains('\n'), "{e:?}");
        e
    }

    #[test]
    fn addresses_and_sysfs_paths_resolve() {
        let v = build_vfio(
            vec![
                spec("03:00.0", None),
                spec("/sys/bus/pci/devices/0000:04:00.1/", Some(false)),
            ],
            IommuMode::Strict,
        )
        .unwrap();
        assert_eq!(v[0].address.to_string(), "0000:03:00.0");
        assert!(v[0].iommu, "default follows the mode");
        assert_eq!(v[1].address.to_string(), "0000:04:00.1");
        assert!(!v[1].iommu);
        let v = build_vfio(vec![spec("0000:03:00.0", None)], IommuMode::Off).unwrap();
        assert!(!v[0].iommu, "no virtual IOMMU: identity DMA");
    }

    #[test]
    fn bad_addresses_name_the_syntax() {
        for bad in [
            "03:00",
            "0000:03:00.8",
            "eth0",
            "/sys/bus/pci/devices/03:00.0",
        ] {
            let e = err(vec![spec(bad, None)], IommuMode::Off);
            assert!(
                e.starts_with(&format!(
                    "VFIO device `{bad}` is not a PCI function address: write DDDD:BB:DD.F"
                )),
                "{e}"
            );
        }
        assert!(err(vec![spec(" ", None)], IommuMode::Off).starts_with("VFIO device is empty"));
    }

    #[test]
    fn duplicates_and_iommu_rules() {
        let e = err(
            vec![spec("03:00.0", None), spec("0000:03:00.0", None)],
            IommuMode::Off,
        );
        assert_eq!(
            e,
            "VFIO device 0000:03:00.0 is given twice: list each host function once (--vfio / [[vfio]])"
        );
        let e = err(vec![spec("03:00.0", Some(true))], IommuMode::Off);
        assert!(
            e.contains("has iommu=on but the IOMMU mode is off: set --iommu-mode strict"),
            "{e}"
        );
        let e = err(
            vec![spec("03:00.0", None), spec("04:00.0", None)],
            IommuMode::Lazy,
        );
        assert!(
            e.starts_with(
                "VFIO devices 0000:03:00.0 and 0000:04:00.0 are both behind the virtual IOMMU"
            ) && e.contains("set iommu=off on all but one"),
            "{e}"
        );
        let v = build_vfio(
            vec![spec("03:00.0", None), spec("04:00.0", Some(false))],
            IommuMode::Passthrough,
        )
        .unwrap();
        assert_eq!((v[0].iommu, v[1].iommu), (true, false));
        assert!(any_explicit_iommu(&[spec("x", Some(true))]));
        assert!(!any_explicit_iommu(&[spec("x", None)]));
    }
}
