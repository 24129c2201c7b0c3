//! The VM configuration: TOML file + CLI flags, validated.
//!
//! A configuration is assembled from layers ([`ConfigLayer`]): the TOML file
//! (see [`file`]) and then the command line (see [`crate::cli`]), each field
//! of the upper layer replacing the lower one. [`ConfigLayer::build`] applies
//! the defaults and validates everything into a [`VmConfig`]; every problem
//! is a [`ConfigError`] whose text is one line naming the problem and the fix.

use std::fmt;
use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};

use crate::layout;

use disk_net::{build_disks, build_nets};
pub use disk_net::{check_tap_name, default_disk_id, default_mac, format_mac, parse_mac};

pub mod disk_net;
pub mod file;
pub mod iommu;
pub mod placement;
pub mod vfio;

pub use iommu::IommuMode;
pub use vfio::{VfioConfig, VfioSpec};

/// Most vCPUs a VM may have.
pub const MAX_VCPUS: u8 = 16;
/// vCPUs when none are configured.
pub const DEFAULT_VCPUS: u8 = 1;
/// Guest RAM when none is configured (512 MiB).
pub const DEFAULT_MEMORY: u64 = 512 << 20;
/// Guest RAM must be a multiple of this (2 MiB, the huge page size).
pub const MEMORY_ALIGN: u64 = 2 << 20;
/// Largest guest RAM (1 TiB).
pub const MAX_MEMORY: u64 = 1 << 40;
/// Kernel command line when none is configured.
pub const DEFAULT_CMDLINE: &str = "console=ttyS0";
/// Longest virtio-blk device id (`VIRTIO_BLK_ID_BYTES`).
pub const DISK_ID_MAX_LEN: usize = 20;
/// Linux `IFNAMSIZ`: interface names are at most `IFNAMSIZ - 1` bytes.
pub const IFNAMSIZ: usize = 16;
/// PCI devices iovmm can place on bus 0 (32 slots, slot 0 is the host bridge).
pub const MAX_PCI_DEVICES: usize = 31;

const KERNEL_FIX: &str = "pass --kernel or set [kernel] path; the lab builds one: lab/run demo";

/// A configuration problem: what is wrong and how to fix it. Displays as one
/// line, `<problem>: <fix>`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigError {
    problem: String,
    fix: String,
}

impl ConfigError {
    /// A problem and its fix.
    pub fn new(problem: impl Into<String>, fix: impl Into<String>) -> Self {
        ConfigError {
            problem: problem.into(),
            fix: fix.into(),
        }
    }

    /// What is wrong.
    pub fn problem(&self) -> &str {
        &self.problem
    }

    /// How to fix it.
    pub fn fix(&self) -> &str {
        &self.fix
    }

    /// Prefixes the problem with where it was found (e.g. `config vm.toml`).
    pub fn context(mut self, ctx: &str) -> Self {
        self.problem = format!("{ctx}: {}", self.problem);
        self
    }
}

/// Writes `s` with control characters (newlines in a file name, ...)
/// escaped so that the message stays on one line.
fn write_one_line(f: &mut fmt::Formatter<'_>, s: &str) -> fmt::Result {
    for c in s.chars() {
        if c.is_control() {
            write!(f, "{}", c.escape_default())?;
        } else {
            write!(f, "{c}")?;
        }
    }
    Ok(())
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write_one_line(f, &self.problem)?;
        f.write_str(": ")?;
        write_one_line(f, &self.fix)
    }
}

impl std::error::Error for ConfigError {}

/// How guest RAM is backed on the host.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum MemoryBacking {
    /// Private anonymous memory with 4 KiB pages.
    #[default]
    Anonymous,
    /// Anonymous memory advised for transparent huge pages.
    Thp,
    /// 2 MiB huge pages from the hugetlbfs pool (`MAP_HUGETLB`).
    Hugetlbfs,
}

impl MemoryBacking {
    /// All values, in the order shown to users.
    pub const ALL: [MemoryBacking; 3] = [
        MemoryBacking::Anonymous,
        MemoryBacking::Thp,
        MemoryBacking::Hugetlbfs,
    ];

    /// The name used in files and flags.
    pub fn as_str(self) -> &'static str {
        match self {
            MemoryBacking::Anonymous => "anonymous",
            MemoryBacking::Thp => "thp",
            MemoryBacking::Hugetlbfs => "hugetlbfs",
        }
    }

    /// Parses a name (`anonymous`, `thp`, `hugetlbfs`).
    pub fn parse(s: &str) -> Result<Self, ConfigError> {
        Self::ALL
            .into_iter()
            .find(|b| b.as_str() == s)
            .ok_or_else(|| {
                ConfigError::new(
                    format!("memory backing `{s}` is unknown"),
                    "use anonymous, thp or hugetlbfs",
                )
            })
    }
}

/// Where the guest's COM1 goes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SerialConfig {
    /// The VMM's stdout; with `stdin`, the VMM's stdin is fed to the guest.
    Stdout {
        /// Forward stdin to the guest.
        stdin: bool,
    },
    /// Appended to a file (created if missing).
    File(PathBuf),
    /// Discarded.
    Off,
}

impl Default for SerialConfig {
    fn default() -> Self {
        SerialConfig::Stdout { stdin: false }
    }
}

/// One virtio-blk disk.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DiskConfig {
    /// Raw image file or block device.
    pub path: PathBuf,
    /// Expose the disk read-only.
    pub readonly: bool,
    /// Device id returned by `VIRTIO_BLK_T_GET_ID` (default `vda`, `vdb`, ...).
    pub id: String,
    /// Put the device behind the virtual IOMMU.
    pub iommu: bool,
}

/// One virtio-net device backed by a TAP interface.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NetConfig {
    /// TAP interface name (at most `IFNAMSIZ - 1` bytes).
    pub tap: String,
    /// Guest MAC address.
    pub mac: [u8; 6],
    /// Put the device behind the virtual IOMMU.
    pub iommu: bool,
}

/// A complete, validated VM configuration.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VmConfig {
    /// Number of vCPUs, 1..=16.
    pub vcpus: u8,
    /// Guest RAM in bytes: a multiple of 2 MiB, at least
    /// [`layout::MIN_MEMORY`], at most 1 TiB.
    pub memory: u64,
    /// Host backing of guest RAM.
    pub memory_backing: MemoryBacking,
    /// Host CPUs of the vCPU and device threads.
    pub placement: placement::Placement,
    /// bzImage or ELF vmlinux; exists and is readable.
    pub kernel: PathBuf,
    /// Initramfs; exists and is readable if given.
    pub initramfs: Option<PathBuf>,
    /// Kernel command line, shorter than [`layout::CMDLINE_MAX_SIZE`].
    pub cmdline: String,
    /// COM1 output.
    pub serial: SerialConfig,
    /// virtio-blk disks, in PCI order.
    pub disks: Vec<DiskConfig>,
    /// virtio-net devices, in PCI order.
    pub nets: Vec<NetConfig>,
    /// Assigned host PCI functions, in PCI order after the virtio devices.
    pub vfio: Vec<VfioConfig>,
    /// IOMMU policy. The default is `strict` when a device has
    /// `iommu = true`, `off` otherwise.
    pub iommu_mode: IommuMode,
    /// Polling of the virtual IOMMU's request queue.
    pub iommu_poll: iommu::PollConfig,
    /// Cooperative mode's parameters (used when `iommu_mode` is coop).
    pub iommu_coop: viommu::coop::CoopConfig,
    /// Where the VMM's counters are written (JSON) at exit and on SIGUSR1.
    pub stats_file: Option<PathBuf>,
}

/// A disk as written by the user, before defaults are applied.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DiskSpec {
    /// Image path (already resolved against the config file's directory).
    pub path: PathBuf,
    /// Read-only.
    pub readonly: bool,
    /// Explicit id.
    pub id: Option<String>,
    /// Behind the virtual IOMMU.
    pub iommu: bool,
}

/// A network device as written by the user, before defaults are applied.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NetSpec {
    /// TAP name.
    pub tap: String,
    /// Explicit MAC.
    pub mac: Option<[u8; 6]>,
    /// Behind the virtual IOMMU.
    pub iommu: bool,
}

/// Serial output as written by the user.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SerialOutput {
    /// The VMM's stdout.
    Stdout,
    /// A file.
    File(PathBuf),
    /// Discarded.
    Off,
}

impl SerialOutput {
    /// Parses `stdout`, `off` or a path (relative paths joined to `base`).
    pub fn parse(s: &str, base: Option<&Path>) -> Result<Self, ConfigError> {
        match s {
            "stdout" => Ok(SerialOutput::Stdout),
            "off" => Ok(SerialOutput::Off),
            "" => Err(ConfigError::new(
                "serial output is empty",
                "use stdout, off or a file path",
            )),
            p => Ok(SerialOutput::File(resolve(base, Path::new(p)))),
        }
    }
}

/// One source of configuration (the file or the command line). `None`
/// leaves the field to the layer below or to the default.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ConfigLayer {
    /// vCPUs (range checked in [`ConfigLayer::build`]).
    pub vcpus: Option<i64>,
    /// RAM in bytes.
    pub memory: Option<u64>,
    /// RAM backing.
    pub memory_backing: Option<MemoryBacking>,
    /// CPUs of the vCPU threads.
    pub vcpu_cpus: Option<devices::cpus::CpuSet>,
    /// CPUs of the other threads.
    pub io_cpus: Option<devices::cpus::CpuSet>,
    /// Kernel image.
    pub kernel: Option<PathBuf>,
    /// Initramfs.
    pub initramfs: Option<PathBuf>,
    /// Kernel command line.
    pub cmdline: Option<String>,
    /// COM1 output.
    pub serial_output: Option<SerialOutput>,
    /// Feed stdin to COM1.
    pub serial_stdin: Option<bool>,
    /// Disks; a layer that sets them replaces the whole list.
    pub disks: Option<Vec<DiskSpec>>,
    /// Network devices; a layer that sets them replaces the whole list.
    pub nets: Option<Vec<NetSpec>>,
    /// Assigned host functions; a layer that sets them replaces the list.
    pub vfio: Option<Vec<VfioSpec>>,
    /// IOMMU policy.
    pub iommu_mode: Option<IommuMode>,
    /// Request-queue polling.
    pub iommu_poll: iommu::PollLayer,
    /// `[iommu] coop_*` / `--coop-*`.
    pub iommu_coop: iommu::CoopLayer,
    /// Stats output file.
    pub stats_file: Option<PathBuf>,
}

/// Joins a relative `p` to `base` (the config file's directory).
pub fn resolve(base: Option<&Path>, p: &Path) -> PathBuf {
    match base {
        Some(b) if p.is_relative() => b.join(p),
        _ => p.to_path_buf(),
    }
}

impl ConfigLayer {
    /// This layer with every field that `top` sets replaced by `top`'s.
    /// Setting the serial output without `stdin` also resets `stdin`.
    pub fn overlay(self, top: ConfigLayer) -> ConfigLayer {
        let serial_stdin = match (&top.serial_output, top.serial_stdin) {
            (_, Some(s)) => Some(s),
            (Some(_), None) => None,
            (None, None) => self.serial_stdin,
        };
        ConfigLayer {
            vcpus: top.vcpus.or(self.vcpus),
            memory: top.memory.or(self.memory),
            memory_backing: top.memory_backing.or(self.memory_backing),
            vcpu_cpus: top.vcpu_cpus.or(self.vcpu_cpus),
            io_cpus: top.io_cpus.or(self.io_cpus),
            kernel: top.kernel.or(self.kernel),
            initramfs: top.initramfs.or(self.initramfs),
            cmdline: top.cmdline.or(self.cmdline),
            serial_output: top.serial_output.or(self.serial_output),
            serial_stdin,
            disks: top.disks.or(self.disks),
            nets: top.nets.or(self.nets),
            vfio: top.vfio.or(self.vfio),
            iommu_mode: top.iommu_mode.or(self.iommu_mode),
            iommu_poll: self.iommu_poll.overlay(top.iommu_poll),
            iommu_coop: self.iommu_coop.overlay(top.iommu_coop),
            stats_file: top.stats_file.or(self.stats_file),
        }
    }

    /// Applies the defaults and validates everything.
    pub fn build(self) -> Result<VmConfig, ConfigError> {
        let vcpus = check_vcpus(self.vcpus.unwrap_or(i64::from(DEFAULT_VCPUS)))?;
        let memory = check_memory(self.memory.unwrap_or(DEFAULT_MEMORY))?;
        let kernel = self
            .kernel
            .ok_or_else(|| ConfigError::new("no kernel given", KERNEL_FIX))?;
        check_kernel(&kernel)?;
        if let Some(initrd) = &self.initramfs {
            check_readable_file(
                "initramfs",
                initrd,
                "pass --initramfs with an existing file or remove [kernel] initramfs",
            )?;
        }
        let cmdline = self.cmdline.unwrap_or_else(|| DEFAULT_CMDLINE.to_string());
        check_cmdline(&cmdline)?;
        let serial = build_serial(
            self.serial_output.unwrap_or(SerialOutput::Stdout),
            self.serial_stdin.unwrap_or(false),
        )?;
        let disks = build_disks(self.disks.unwrap_or_default())?;
        let nets = build_nets(self.nets.unwrap_or_default())?;
        let vfio_specs = self.vfio.unwrap_or_default();
        let any_iommu = disks.iter().any(|d| d.iommu)
            || nets.iter().any(|n| n.iommu)
            || vfio::any_explicit_iommu(&vfio_specs);
        let iommu_mode = self.iommu_mode.unwrap_or(if any_iommu {
            IommuMode::Strict
        } else {
            IommuMode::Off
        });
        let vfio = vfio::build_vfio(vfio_specs, iommu_mode)?;
        let viommu = usize::from(iommu_mode != IommuMode::Off);
        if disks.len() + nets.len() + vfio.len() + viommu > MAX_PCI_DEVICES {
            return Err(ConfigError::new(
                format!(
                    "{} disks, {} network devices, {} VFIO devices and {viommu} virtual IOMMU exceed the {MAX_PCI_DEVICES} PCI slots of bus 0",
                    disks.len(),
                    nets.len(),
                    vfio.len()
                ),
                "remove some [[disk]]/[[net]]/[[vfio]] entries",
            ));
        }
        let memory_backing = self.memory_backing.unwrap_or_default();
        let iommu_coop = self.iommu_coop.build(memory)?;
        Ok(VmConfig {
            vcpus,
            memory,
            memory_backing,
            placement: placement::Placement::build(self.vcpu_cpus, self.io_cpus)?,
            kernel,
            initramfs: self.initramfs,
            cmdline,
            serial,
            disks,
            nets,
            vfio,
            iommu_mode,
            iommu_poll: self.iommu_poll.build(iommu_mode)?,
            iommu_coop,
            stats_file: self.stats_file,
        })
    }
}

fn check_vcpus(n: i64) -> Result<u8, ConfigError> {
    match u8::try_from(n) {
        Ok(v) if (1..=MAX_VCPUS).contains(&v) => Ok(v),
        _ => Err(ConfigError::new(
            format!("vcpus {n} is out of range"),
            format!("use 1 to {MAX_VCPUS} (--vcpus or [machine] vcpus)"),
        )),
    }
}

fn check_memory(bytes: u64) -> Result<u64, ConfigError> {
    let shown = format_size(bytes);
    if !bytes.is_multiple_of(MEMORY_ALIGN) {
        let up = bytes.div_ceil(MEMORY_ALIGN).saturating_mul(MEMORY_ALIGN);
        return Err(ConfigError::new(
            format!("memory {shown} is not a multiple of 2 MiB"),
            format!("use e.g. {}", format_size(up)),
        ));
    }
    if bytes < layout::MIN_MEMORY {
        return Err(ConfigError::new(
            format!("memory {shown} is too small"),
            format!("use at least {}", format_size(layout::MIN_MEMORY)),
        ));
    }
    if bytes > MAX_MEMORY {
        return Err(ConfigError::new(
            format!("memory {shown} is too large"),
            format!("use at most {}", format_size(MAX_MEMORY)),
        ));
    }
    Ok(bytes)
}

/// Checks that `path` is an existing, readable regular file (or block
/// device); `what` names it in messages.
fn check_readable_file(what: &str, path: &Path, fix: &str) -> Result<File, ConfigError> {
    let shown = path.display();
    let meta = std::fs::metadata(path).map_err(|e| {
        if e.kind() == std::io::ErrorKind::NotFound {
            ConfigError::new(format!("{what} {shown} does not exist"), fix)
        } else {
            ConfigError::new(format!("{what} {shown} is not accessible ({e})"), fix)
        }
    })?;
    if meta.is_dir() {
        return Err(ConfigError::new(
            format!("{what} {shown} is a directory"),
            fix,
        ));
    }
    File::open(path)
        .map_err(|e| ConfigError::new(format!("{what} {shown} is not readable ({e})"), fix))
}

/// The kernel must be a bzImage (`HdrS` at 0x202) or an ELF file.
fn check_kernel(path: &Path) -> Result<(), ConfigError> {
    let f = check_readable_file("kernel", path, KERNEL_FIX)?;
    let mut head = Vec::with_capacity(0x206);
    f.take(0x206).read_to_end(&mut head).map_err(|e| {
        ConfigError::new(
            format!("kernel {} is not readable ({e})", path.display()),
            KERNEL_FIX,
        )
    })?;
    let elf = head.starts_with(b"\x7fELF");
    let bzimage = head.get(0x202..0x206) == Some(b"HdrS".as_slice());
    if !elf && !bzimage {
        return Err(ConfigError::new(
            format!(
                "kernel {} is neither a bzImage nor an ELF vmlinux",
                path.display()
            ),
            "point --kernel at arch/x86/boot/bzImage, /boot/vmlinuz-* or an uncompressed vmlinux",
        ));
    }
    Ok(())
}

fn check_cmdline(cmdline: &str) -> Result<(), ConfigError> {
    // The NUL terminator must fit too.
    if cmdline.len() >= layout::CMDLINE_MAX_SIZE {
        return Err(ConfigError::new(
            format!(
                "kernel command line is {} bytes, the limit is {}",
                cmdline.len(),
                layout::CMDLINE_MAX_SIZE - 1
            ),
            "shorten --cmdline / [kernel] cmdline",
        ));
    }
    if cmdline.contains('\0') {
        return Err(ConfigError::new(
            "kernel command line contains a NUL byte",
            "remove it from --cmdline / [kernel] cmdline",
        ));
    }
    Ok(())
}

fn build_serial(output: SerialOutput, stdin: bool) -> Result<SerialConfig, ConfigError> {
    match output {
        SerialOutput::Stdout => Ok(SerialConfig::Stdout { stdin }),
        _ if stdin => Err(ConfigError::new(
            "serial stdin needs the serial output on stdout",
            "drop --serial-stdin / [serial] stdin, or use --serial stdout",
        )),
        SerialOutput::Off => Ok(SerialConfig::Off),
        SerialOutput::File(p) => {
            if p.is_dir() {
                return Err(ConfigError::new(
                    format!("serial output {} is a directory", p.display()),
                    "give a file path to --serial / [serial] output",
                ));
            }
            let parent = match p.parent() {
                Some(d) if !d.as_os_str().is_empty() => d,
                _ => Path::new("."),
            };
            if !parent.is_dir() {
                return Err(ConfigError::new(
                    format!(
                        "serial output {}: directory {} does not exist",
                        p.display(),
                        parent.display()
                    ),
                    "create it or fix --serial / [serial] output",
                ));
            }
            Ok(SerialConfig::File(p))
        }
    }
}

/// Parses a size: an integer number of MiB, or a number with a `K`, `M`,
/// `G` or `T` suffix (binary units; `KiB`/`KB` spellings accepted).
pub fn parse_size(s: &str) -> Result<u64, ConfigError> {
    let bad = || {
        ConfigError::new(
            format!("memory size `{s}` is not a size"),
            "use e.g. 512M, 2G, or an integer number of MiB",
        )
    };
    let t = s.trim();
    let digits_end = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(digits_end);
    if num.is_empty() {
        return Err(bad());
    }
    let n: u64 = num.parse().map_err(|_| bad())?;
    let unit = unit.trim().to_ascii_uppercase();
    let unit = unit
        .strip_suffix("IB")
        .or_else(|| unit.strip_suffix('B'))
        .unwrap_or(&unit);
    let shift = match unit {
        "" | "M" => 20,
        "K" => 10,
        "G" => 30,
        "T" => 40,
        _ => return Err(bad()),
    };
    n.checked_mul(1u64 << shift).ok_or_else(|| {
        ConfigError::new(
            format!("memory size `{s}` is too large"),
            format!("use at most {}", format_size(MAX_MEMORY)),
        )
    })
}

/// Formats a byte count with the largest exact binary unit (`512M`, `3G`).
pub fn format_size(bytes: u64) -> String {
    for (shift, unit) in [(40, "T"), (30, "G"), (20, "M"), (10, "K")] {
        if bytes != 0 && bytes.is_multiple_of(1u64 << shift) {
            return format!("{}{unit}", bytes >> shift);
        }
    }
    format!("{bytes} bytes")
}

/// One-line message for a failure to open `/dev/kvm`.
pub fn kvm_open_hint(err: &std::io::Error) -> ConfigError {
    let fix = match err.raw_os_error() {
        Some(libc::ENOENT) => {
            "load kvm_intel or kvm_amd (modprobe kvm_intel) on a host with VT-x/SVM, or use the nested lab: lab/run demo"
        }
        Some(libc::EACCES) | Some(libc::EPERM) => {
            "run as root or add your user to the kvm group (usermod -aG kvm $USER)"
        }
        _ => "check that KVM works on this host (dmesg | grep -i kvm)",
    };
    ConfigError::new(format!("cannot open /dev/kvm ({err})"), fix)
}

/// One-line message for a failure to open the TAP interface `tap`.
pub fn tap_open_hint(tap: &str, err: &std::io::Error) -> ConfigError {
    let fix = match err.raw_os_error() {
        Some(libc::EPERM) | Some(libc::EACCES) => format!(
            "run as root, or create it for your user: ip tuntap add {tap} mode tap user $USER && ip link set {tap} up"
        ),
        Some(libc::EBUSY) => format!("{tap} is in use by another process; pick another tap"),
        Some(libc::ENOENT) | Some(libc::ENODEV) => {
            "load the tun module (modprobe tun) so that /dev/net/tun exists".to_string()
        }
        Some(libc::EINVAL) => format!("{tap} exists but is not a TAP interface; pick another name"),
        _ => format!("create it first: ip tuntap add {tap} mode tap && ip link set {tap} up"),
    };
    ConfigError::new(format!("cannot open tap {tap} ({err})"), fix)
}

#[cfg(test)]
mod tests;
