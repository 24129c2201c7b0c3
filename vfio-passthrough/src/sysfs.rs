//! Finding the host function to assign and checking that it can be.
//!
//! [`check`] takes what the user wrote (`0000:03:00.0`, `03:00.0` or a
//! sysfs path such as `/sys/bus/pci/devices/0000:03:00.0`) and verifies,
//! under a configurable sysfs root ([`HostPaths`], so tests use a temporary
//! tree), that:
//!
//! 1. the function exists;
//! 2. it has an IOMMU group (the host IOMMU is on);
//! 3. it is bound to `vfio-pci` (or a vendor variant driver named
//!    `*_vfio_pci`);
//! 4. every other member of its IOMMU group is harmless: bound to
//!    `vfio-pci`, to no driver, to `pci-stub`, or a PCI bridge (class
//!    06/04, usually bound to `pcieport`). The kernel refuses the group
//!    otherwise; bridges and `pci-stub` are accepted by the kernel because
//!    those drivers do no DMA;
//! 5. the group's character device exists and is not held by another
//!    process (it can be opened).
//!
//! Each failure is an [`AssignError`] whose message is one line naming the
//! problem and the command that fixes it.

use std::fmt;
use std::fs::OpenOptions;
use std::io;
use std::path::{Path, PathBuf};
use std::str::FromStr;

/// A PCI function address (domain:bus:device.function).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PciAddress {
    /// PCI domain (segment).
    pub domain: u32,
    /// Bus number.
    pub bus: u8,
    /// Device number (0..32).
    pub device: u8,
    /// Function number (0..8).
    pub function: u8,
}

impl fmt::Display for PciAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{:04x}:{:02x}:{:02x}.{:x}",
            self.domain, self.bus, self.device, self.function
        )
    }
}

impl FromStr for PciAddress {
    type Err = AssignError;

    /// Parses `DDDD:BB:DD.F` or `BB:DD.F` (hexadecimal, domain 0).
    fn from_str(s: &str) -> Result<Self, AssignError> {
        let bad = || AssignError::BadAddress(s.to_string());
        let hex = |t: &str, max_len: usize| {
            if t.is_empty() || t.len() > max_len || !t.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(bad());
            }
            u32::from_str_radix(t, 16).map_err(|_| bad())
        };
        let (rest, function) = s.rsplit_once('.').ok_or_else(bad)?;
        let parts: Vec<&str> = rest.split(':').collect();
        let (domain, bus, device) = match parts[..] {
            [d, b, dev] => (hex(d, 8)?, hex(b, 2)?, hex(dev, 2)?),
            [b, dev] => (0, hex(b, 2)?, hex(dev, 2)?),
            _ => return Err(bad()),
        };
        let function = hex(function, 1)?;
        if device > 0x1f || function > 7 {
            return Err(bad());
        }
        Ok(PciAddress {
            domain,
            bus: bus as u8,
            device: device as u8,
            function: function as u8,
        })
    }
}

/// Where the host's sysfs and device nodes are (`/sys` and `/dev`, or a
/// test tree).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HostPaths {
    /// The sysfs root.
    pub sysfs: PathBuf,
    /// The device-node root.
    pub dev: PathBuf,
}

impl Default for HostPaths {
    fn default() -> Self {
        HostPaths {
            sysfs: PathBuf::from("/sys"),
            dev: PathBuf::from("/dev"),
        }
    }
}

impl HostPaths {
    fn device_dir(&self, a: &PciAddress) -> PathBuf {
        self.sysfs.join("bus/pci/devices").join(a.to_string())
    }

    fn group_dir(&self, group: u32) -> PathBuf {
        self.sysfs
            .join("kernel/iommu_groups")
            .join(group.to_string())
    }

    /// The VFIO group character device of `group`.
    pub fn group_node(&self, group: u32) -> PathBuf {
        self.dev.join("vfio").join(group.to_string())
    }
}

/// A function that passed [`check`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HostDevice {
    /// Its address.
    pub address: PciAddress,
    /// Its sysfs directory (what VFIO opens the device by).
    pub sysfs_path: PathBuf,
    /// Its IOMMU group.
    pub group: u32,
    /// Every member of the group (itself included), by sysfs name.
    pub group_members: Vec<String>,
}

/// Why a function cannot be assigned. Every message names the fix.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AssignError {
    /// Not a PCI address or sysfs path.
    #[error("'{0}' is not a PCI function: write DDDD:BB:DD.F (e.g. 0000:03:00.0), BB:DD.F, or a /sys/bus/pci/devices/ path")]
    BadAddress(String),
    /// No such function.
    #[error("no PCI function {0} (no /sys/bus/pci/devices/{0}): list the host's functions with lspci -D")]
    NotFound(PciAddress),
    /// The host IOMMU is off.
    #[error("{0} has no IOMMU group: enable the IOMMU (VT-d/AMD-Vi in the firmware, intel_iommu=on or amd_iommu=on on the host kernel command line) and reboot")]
    NoIommuGroup(PciAddress),
    /// Bound to no driver.
    #[error("{0} is not bound to vfio-pci: modprobe vfio-pci && echo vfio-pci > /sys/bus/pci/devices/{0}/driver_override && echo {0} > /sys/bus/pci/drivers_probe")]
    NotBound(PciAddress),
    /// Bound to another driver.
    #[error("{0} is bound to {1}, not vfio-pci: modprobe vfio-pci && echo {0} > /sys/bus/pci/devices/{0}/driver/unbind && echo vfio-pci > /sys/bus/pci/devices/{0}/driver_override && echo {0} > /sys/bus/pci/drivers_probe")]
    WrongDriver(PciAddress, String),
    /// Another member of the group is bound to a driver that does DMA.
    #[error("IOMMU group {group} of {device} also holds {member}, bound to {driver}: bind it to vfio-pci too (echo {member} > /sys/bus/pci/devices/{member}/driver/unbind && echo vfio-pci > /sys/bus/pci/devices/{member}/driver_override && echo {member} > /sys/bus/pci/drivers_probe) or move {device} to a slot with its own group")]
    GroupNotViable {
        /// The function being assigned.
        device: PciAddress,
        /// Its group.
        group: u32,
        /// The offending member.
        member: String,
        /// The member's driver.
        driver: String,
    },
    /// The kernel says the group is not viable (found when opening it).
    #[error("IOMMU group {0} is not viable: bind every device in /sys/kernel/iommu_groups/{0}/devices to vfio-pci or unbind it")]
    GroupNotViableAtOpen(u32),
    /// The group device node is missing.
    #[error("{0} does not exist although the function is bound to vfio-pci: modprobe vfio-pci and check dmesg for VFIO errors")]
    NoGroupNode(PathBuf),
    /// Another process holds the group.
    #[error("IOMMU group {0} is busy: another process (another VM?) has /dev/vfio/{0} open; find it with fuser -v /dev/vfio/{0} and stop it")]
    GroupBusy(u32),
    /// No permission to open the group.
    #[error("cannot open /dev/vfio/{0}: permission denied: run iovmm as root (or chown the node to your user and raise ulimit -l for DMA pinning)")]
    GroupPermission(u32),
    /// The VFIO container cannot be opened.
    #[error("cannot open /dev/vfio/vfio ({0}): modprobe vfio-pci and run iovmm as root")]
    Container(String),
    /// Any other VFIO failure while opening.
    #[error("VFIO: {0}: check dmesg on the host")]
    Vfio(String),
}

/// Maps a failure to open the group node of `group` to its error.
pub fn open_error(group: u32, node: &Path, e: &io::Error) -> AssignError {
    match e.raw_os_error() {
        Some(libc::EBUSY) => AssignError::GroupBusy(group),
        Some(libc::ENOENT) => AssignError::NoGroupNode(node.to_path_buf()),
        Some(libc::EACCES) | Some(libc::EPERM) => AssignError::GroupPermission(group),
        _ => AssignError::Vfio(format!("cannot open {}: {e}", node.display())),
    }
}

/// Parses what the user wrote: a PCI address, or a sysfs path whose last
/// component is one.
pub fn resolve(spec: &str) -> Result<PciAddress, AssignError> {
    let spec = spec.trim();
    if !spec.contains('/') {
        return spec.parse();
    }
    let name = Path::new(spec.trim_end_matches('/'))
        .file_name()
        .and_then(|n| n.to_str())
        .ok_or_else(|| AssignError::BadAddress(spec.to_string()))?;
    // A sysfs name always carries the domain.
    if name.matches(':').count() != 2 {
        return Err(AssignError::BadAddress(spec.to_string()));
    }
    name.parse()
        .map_err(|_| AssignError::BadAddress(spec.to_string()))
}

/// The name of the driver `dir` is bound to, if any.
fn driver_of(dir: &Path) -> Option<String> {
    let link = std::fs::read_link(dir.join("driver")).ok()?;
    Some(link.file_name()?.to_string_lossy().into_owned())
}

/// True for vfio-pci and its vendor variants.
fn is_vfio(driver: &str) -> bool {
    driver == "vfio-pci" || driver.ends_with("_vfio_pci")
}

/// True when the function in `dir` is a PCI-to-PCI bridge (class 06/04).
fn is_bridge(dir: &Path) -> bool {
    std::fs::read_to_string(dir.join("class"))
        .ok()
        .and_then(|c| u32::from_str_radix(c.trim().trim_start_matches("0x"), 16).ok())
        .is_some_and(|c| c >> 8 == 0x0604)
}

/// Checks that the function named by `spec` can be assigned; see the
/// module documentation for the rules.
pub fn check(spec: &str, paths: &HostPaths) -> Result<HostDevice, AssignError> {
    let address = resolve(spec)?;
    let dir = paths.device_dir(&address);
    if !dir.is_dir() {
        return Err(AssignError::NotFound(address));
    }
    let group = std::fs::read_link(dir.join("iommu_group"))
        .ok()
        .and_then(|l| l.file_name()?.to_str()?.parse::<u32>().ok())
        .ok_or(AssignError::NoIommuGroup(address))?;
    match driver_of(&dir) {
        None => return Err(AssignError::NotBound(address)),
        Some(d) if !is_vfio(&d) => return Err(AssignError::WrongDriver(address, d)),
        Some(_) => {}
    }
    let members_dir = paths.group_dir(group).join("devices");
    let mut group_members: Vec<String> = std::fs::read_dir(&members_dir)
        .map_err(|_| AssignError::NoIommuGroup(address))?
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    group_members.sort();
    for member in &group_members {
        let mdir = members_dir.join(member);
        let Some(driver) = driver_of(&mdir) else {
            continue;
        };
        if is_vfio(&driver) || driver == "pci-stub" || is_bridge(&mdir) {
            continue;
        }
        return Err(AssignError::GroupNotViable {
            device: address,
            group,
            member: member.clone(),
            driver,
        });
    }
    let node = paths.group_node(group);
    if let Err(e) = OpenOptions::new().read(true).write(true).open(&node) {
        return Err(open_error(group, &node, &e));
    }
    Ok(HostDevice {
        address,
        sysfs_path: dir,
        group,
        group_members,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    /// A fake /sys + /dev with functions `(bdf, driver, class)` in group 7
    /// (or none when `group` is false for the first).
    struct Tree {
        tmp: tempfile::TempDir,
    }

    impl Tree {
        fn new() -> Self {
            Tree {
                tmp: tempfile::tempdir().unwrap(),
            }
        }

        fn paths(&self) -> HostPaths {
            HostPaths {
                sysfs: self.tmp.path().join("sys"),
                dev: self.tmp.path().join("dev"),
            }
        }

        fn add(&self, bdf: &str, driver: Option<&str>, class: &str, group: Option<u32>) {
            let p = self.paths();
            let dir = p.sysfs.join("bus/pci/devices").join(bdf);
            std::fs::create_dir_all(&dir).unwrap();
            std::fs::write(dir.join("class"), format!("{class}\n")).unwrap();
            if let Some(d) = driver {
                let ddir = p.sysfs.join("bus/pci/drivers").join(d);
                std::fs::create_dir_all(&ddir).unwrap();
                symlink(&ddir, dir.join("driver")).unwrap();
            }
            if let Some(g) = group {
                let gdir = p.group_dir(g);
                std::fs::create_dir_all(gdir.join("devices")).unwrap();
                symlink(&gdir, dir.join("iommu_group")).unwrap();
                symlink(&dir, gdir.join("devices").join(bdf)).unwrap();
                std::fs::create_dir_all(p.dev.join("vfio")).unwrap();
                std::fs::write(p.group_node(g), b"").unwrap();
            }
        }
    }

    #[test]
    fn addresses_parse_and_print() {
        let a: PciAddress = "0000:03:00.1".parse().unwrap();
        assert_eq!((a.domain, a.bus, a.device, a.function), (0, 3, 0, 1));
        assert_eq!(
            "03:1F.7".parse::<PciAddress>().unwrap().to_string(),
            "0000:03:1f.7"
        );
        assert_eq!(
            "10000:e1:00.0".parse::<PciAddress>().unwrap().domain,
            0x10000
        );
        for bad in [
            "",
            "03:00",
            "03:20.0",
            "03:00.8",
            "0:0:0:0.0",
            "zz:00.0",
            "003:00.0",
            "03:00.0x",
            ":00.0",
            "+3:00.0",
        ] {
            assert!(bad.parse::<PciAddress>().is_err(), "{bad}");
        }
        assert_eq!(
            resolve("/sys/bus/pci/devices/0000:03:00.0/")
                .unwrap()
                .to_string(),
            "0000:03:00.0"
        );
        assert_eq!(
            resolve("/sys/devices/pci0000:00/0000:00:1c.0/0000:03:00.0")
                .unwrap()
                .bus,
            3
        );
        assert!(
            resolve("/sys/bus/pci/devices/03:00.0").is_err(),
            "sysfs names carry a domain"
        );
        assert!(resolve("/").is_err());
    }

    #[test]
    fn a_vfio_bound_function_alone_in_its_group_passes() {
        let t = Tree::new();
        t.add("0000:03:00.0", Some("vfio-pci"), "0x020000", Some(7));
        let d = check("03:00.0", &t.paths()).unwrap();
        assert_eq!(d.group, 7);
        assert_eq!(d.group_members, vec!["0000:03:00.0".to_string()]);
        assert!(d.sysfs_path.ends_with("bus/pci/devices/0000:03:00.0"));
    }

    #[test]
    fn missing_unbound_and_wrongly_bound_functions_name_the_fix() {
        let t = Tree::new();
        let p = t.paths();
        assert_eq!(
            check("0000:03:00.0", &p),
            Err(AssignError::NotFound("0000:03:00.0".parse().unwrap()))
        );
        t.add("0000:03:00.0", None, "0x020000", None);
        let e = check("0000:03:00.0", &p).unwrap_err();
        assert!(matches!(e, AssignError::NoIommuGroup(_)));
        assert!(e.to_string().contains("intel_iommu=on"));
        t.add("0000:04:00.0", None, "0x020000", Some(8));
        let e = check("0000:04:00.0", &p).unwrap_err();
        assert!(matches!(e, AssignError::NotBound(_)));
        assert!(e
            .to_string()
            .contains("echo vfio-pci > /sys/bus/pci/devices/0000:04:00.0/driver_override"));
        t.add("0000:05:00.0", Some("e1000e"), "0x020000", Some(9));
        let e = check("0000:05:00.0", &p).unwrap_err();
        assert_eq!(
            e.to_string(),
            "0000:05:00.0 is bound to e1000e, not vfio-pci: modprobe vfio-pci && \
             echo 0000:05:00.0 > /sys/bus/pci/devices/0000:05:00.0/driver/unbind && \
             echo vfio-pci > /sys/bus/pci/devices/0000:05:00.0/driver_override && \
             echo 0000:05:00.0 > /sys/bus/pci/drivers_probe"
        );
        assert!(!e.to_string().contains('\n'));
    }

    #[test]
    fn group_members_must_not_do_dma_behind_our_back() {
        let t = Tree::new();
        let p = t.paths();
        t.add("0000:03:00.0", Some("vfio-pci"), "0x020000", Some(7));
        t.add("0000:00:1c.0", Some("pcieport"), "0x060400", Some(7));
        t.add("0000:03:00.2", None, "0x020000", Some(7));
        t.add("0000:03:00.3", Some("pci-stub"), "0x020000", Some(7));
        t.add("0000:03:00.4", Some("mlx5_vfio_pci"), "0x020000", Some(7));
        let d = check("0000:03:00.0", &p).unwrap();
        assert_eq!(d.group_members.len(), 5);
        t.add("0000:03:00.1", Some("e1000e"), "0x020000", Some(7));
        let e = check("0000:03:00.0", &p).unwrap_err();
        assert_eq!(
            e,
            AssignError::GroupNotViable {
                device: "0000:03:00.0".parse().unwrap(),
                group: 7,
                member: "0000:03:00.1".into(),
                driver: "e1000e".into(),
            }
        );
        assert!(e.to_string().starts_with("IOMMU group 7 of 0000:03:00.0 also holds 0000:03:00.1, bound to e1000e: bind it to vfio-pci"));
    }

    #[test]
    fn group_node_problems() {
        let t = Tree::new();
        let p = t.paths();
        t.add("0000:03:00.0", Some("vfio-pci"), "0x020000", Some(7));
        std::fs::remove_file(p.group_node(7)).unwrap();
        let e = check("0000:03:00.0", &p).unwrap_err();
        assert_eq!(e, AssignError::NoGroupNode(p.group_node(7)));
        let node = Path::new("/dev/vfio/7");
        let busy = open_error(7, node, &io::Error::from_raw_os_error(libc::EBUSY));
        assert_eq!(busy, AssignError::GroupBusy(7));
        assert!(busy.to_string().contains("fuser -v /dev/vfio/7"));
        assert_eq!(
            open_error(7, node, &io::Error::from_raw_os_error(libc::EACCES)),
            AssignError::GroupPermission(7)
        );
        assert!(matches!(
            open_error(7, node, &io::Error::from_raw_os_error(libc::EIO)),
            AssignError::Vfio(_)
        ));
    }
}
