//! Command-line interface of the `iovmm` binary.
//!
//! `iovmm run` takes a TOML file (`--config`) and/or flags; flags override
//! the file field by field and `--disk`/`--net`/`--vfio` replace the file's lists.
//! [`parse_and_build`] turns the arguments into a validated [`Command`];
//! every problem becomes a [`CliError`] whose [`CliError::exit`] prints one
//! line `iovmm: error: <problem>: <fix>` and exits with status 2 (help and
//! version are printed by clap as usual).

use std::ffi::OsString;
use std::fmt;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use crate::config::{
    self, parse_mac, parse_size, ConfigError, ConfigLayer, DiskSpec, IommuMode, MemoryBacking,
    NetSpec, SerialOutput, VfioSpec, VmConfig,
};

/// Exit status for bad usage or configuration.
pub const EXIT_USAGE: i32 = 2;

const CONFIG_HELP: &str = "\
CONFIGURATION FILE (--config FILE, TOML; every key is optional except
[kernel] path, which may come from --kernel instead; unknown keys are
errors; relative paths are relative to the file's directory):

  [machine]
  vcpus = 2                     # 1 to 16; default 1
  memory = \"512M\"               # K/M/G/T suffix or integer MiB; multiple of
                                # 2 MiB, 64M to 1T; default 512M
  memory_backing = \"anonymous\"  # anonymous | thp | hugetlbfs
  vcpu_cpus = \"0-1\"             # host CPUs of the vCPU threads (default: all)
  io_cpus = \"2\"                 # host CPUs of the device threads (default: all)
  [kernel]
  path = \"/path/to/bzImage\"     # bzImage or ELF vmlinux (PVH)
  initramfs = \"/path/to/initrd.cpio.gz\"
  cmdline = \"console=ttyS0\"     # default console=ttyS0
  [serial]
  output = \"stdout\"             # stdout | off | a file path (appended)
  stdin = false                 # feed stdin to the guest (stdout only)
  [iommu]
  mode = \"strict\"               # off | passthrough | strict | lazy; default
                                # strict if a device has iommu = true, else off
  poll = \"off\"                  # off | adaptive | always: poll the request
                                # queue (strict and lazy only)
  poll_budget_us = 200          # adaptive: idle time before notifications
  poll_cpu = 3                  # pin the virtio-iommu thread (default: none)
  [stats]
  file = \"stats.json\"           # counters as JSON at exit and on SIGUSR1
  [[disk]]                      # one section per virtio-blk disk
  path = \"disk.img\"             # raw image (must exist)
  readonly = false
  id = \"vda\"                    # GET_ID serial, <= 20 chars; default vda, vdb, ...
  iommu = false                 # behind the virtual IOMMU
  [[net]]                       # one section per virtio-net device
  tap = \"tap0\"                  # TAP interface, <= 15 chars
  mac = \"52:54:00:12:34:56\"     # default 52:54:00:12:34:56 + index
  iommu = false
  [[vfio]]                      # one section per assigned host PCI function
  device = \"0000:03:00.0\"       # PCI address or /sys/bus/pci/devices/ path;
                                # bound to vfio-pci, whole IOMMU group viable
  iommu = true                  # DMA through the virtual IOMMU; default true
                                # unless [iommu] mode is off; at most one
                                # device with iommu = true. iommu = false maps
                                # all guest RAM for the device (pinned) at start

Flags override the file field by field; --disk/--net/--vfio given on the
command line replace the file's [[disk]]/[[net]]/[[vfio]] lists. Examples:
examples/*.toml. VFIO assignment: docs/vfio.md.

EXIT STATUS: 0 guest powered off, 1 VMM failure, 2 bad usage or
configuration (including a host PCI function that cannot be assigned),
3 guest reset/reboot, 4 guest crash reported through KVM, 143/130 stopped
by SIGTERM/SIGINT (after a clean teardown; a second signal exits at once).";

/// The `iovmm` command line.
#[derive(Debug, Parser)]
#[command(
    name = "iovmm",
    version,
    about = "A KVM hypervisor for measuring and removing the cost of IO memory protection in VMs",
    subcommand_required = true,
    arg_required_else_help = true
)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: CliCommand,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum CliCommand {
    /// Boot a VM and run it until the guest powers off or resets.
    #[command(after_long_help = CONFIG_HELP)]
    Run(RunArgs),
}

/// Arguments of `iovmm run`. Values are kept as written and checked by
/// [`load_config`], so that every problem is reported as one line.
#[derive(Clone, Debug, Default, Args)]
pub struct RunArgs {
    /// TOML configuration file (format below); flags override its fields.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Guest kernel: bzImage or ELF vmlinux with a PVH note [file: kernel.path].
    #[arg(long, value_name = "PATH")]
    pub kernel: Option<PathBuf>,
    /// Initramfs image [file: kernel.initramfs; default: none].
    #[arg(long, value_name = "PATH")]
    pub initramfs: Option<PathBuf>,
    /// Kernel command line [file: kernel.cmdline; default: "console=ttyS0"].
    #[arg(long, value_name = "STR", allow_hyphen_values = true)]
    pub cmdline: Option<String>,
    /// Number of vCPUs, 1 to 16 [file: machine.vcpus; default: 1].
    #[arg(long, value_name = "N")]
    pub vcpus: Option<String>,
    /// Guest RAM: K/M/G/T suffix or an integer number of MiB; a multiple of
    /// 2 MiB, 64M to 1T [file: machine.memory; default: 512M].
    #[arg(long, value_name = "SIZE")]
    pub memory: Option<String>,
    /// Host backing of guest RAM: anonymous, thp (transparent huge pages) or
    /// hugetlbfs (reserve pages first: /proc/sys/vm/nr_hugepages)
    /// [file: machine.memory_backing; default: anonymous].
    #[arg(long, value_name = "anonymous|thp|hugetlbfs")]
    pub memory_backing: Option<String>,
    /// Host CPUs the vCPU threads run on, e.g. 0-1 [file: machine.vcpu_cpus;
    /// default: those iovmm was started with].
    #[arg(long, value_name = "LIST")]
    pub vcpu_cpus: Option<String>,
    /// Host CPUs of the other threads (device workers, the virtio-iommu host
    /// and poll threads), e.g. 2 [file: machine.io_cpus; default: those iovmm
    /// was started with].
    #[arg(long, value_name = "LIST")]
    pub io_cpus: Option<String>,
    /// Guest COM1 output: stdout, off, or a file path (appended)
    /// [file: serial.output; default: stdout].
    #[arg(long, value_name = "stdout|off|PATH")]
    pub serial: Option<String>,
    /// Feed stdin to the guest's COM1 (needs --serial stdout)
    /// [file: serial.stdin; default: off].
    #[arg(long)]
    pub serial_stdin: bool,
    /// A virtio-blk disk; repeat for more. path: raw image (must exist);
    /// readonly: on|off (default off); id: GET_ID serial, up to 20 chars
    /// (default vda, vdb, ...); iommu: on|off, behind the virtual IOMMU
    /// (default off). Replaces the file's [[disk]] list.
    #[arg(long, value_name = "path=P[,readonly=on|off][,id=ID][,iommu=on|off]")]
    pub disk: Vec<String>,
    /// A virtio-net device on a TAP interface; repeat for more. tap: up to 15
    /// chars; mac: default 52:54:00:12:34:56 plus the device index; iommu:
    /// on|off (default off). Replaces the file's [[net]] list.
    #[arg(long, value_name = "tap=NAME[,mac=MAC][,iommu=on|off]")]
    pub net: Vec<String>,
    /// Assign a host PCI function (bound to vfio-pci) to the guest; repeat
    /// for more. DEVICE: 0000:03:00.0, 03:00.0 or a /sys/bus/pci/devices/
    /// path. iommu: on|off, DMA through the virtual IOMMU (default on unless
    /// --iommu-mode is off; at most one device on); off maps and pins all
    /// guest RAM for the device at start. Replaces the file's [[vfio]] list.
    #[arg(long, value_name = "DEVICE[,iommu=on|off]")]
    pub vfio: Vec<String>,
    /// IOMMU policy: off (no virtual IOMMU), passthrough (identity domains),
    /// strict (unmap + invalidate after every DMA), lazy (batched
    /// invalidation) or coop (the guest's DMA tracking table says what to
    /// pin; docs/coop.md). Adds the matching guest kernel parameter unless the
    /// command line already sets iommu.strict= or iommu.passthrough=
    /// [file: iommu.mode; default: strict if a device has iommu=on, else off].
    #[arg(long, value_name = "off|passthrough|strict|lazy|coop")]
    pub iommu_mode: Option<String>,
    /// Poll the virtual IOMMU's request queue so that guest MAP/UNMAP
    /// requests need no VM exit: off, adaptive (after a notification,
    /// until --iommu-poll-budget-us pass without a request) or always (one
    /// host core). Only with strict or lazy [file: iommu.poll; default: off].
    #[arg(long, value_name = "off|adaptive|always")]
    pub iommu_poll: Option<String>,
    /// Adaptive polling's idle budget in µs [file: iommu.poll_budget_us;
    /// default: 200].
    #[arg(long, value_name = "MICROSECONDS")]
    pub iommu_poll_budget_us: Option<i64>,
    /// Cooperative mode's pinned-memory budget, e.g. 64M [file:
    /// iommu.coop_budget; default: 1/8 of guest RAM].
    #[arg(long, value_name = "SIZE")]
    pub coop_budget: Option<String>,
    /// Cooperative mode's unpin scan interval in ms [file:
    /// iommu.coop_scan_ms; default: 100].
    #[arg(long, value_name = "MILLISECONDS")]
    pub coop_scan_ms: Option<i64>,
    /// Cooperative mode's pin granule: a power of two from 4K to 2M (4K,
    /// 64K, 2M), or auto (256K) [file: iommu.coop_granule; default: auto].
    #[arg(long, value_name = "SIZE|auto")]
    pub coop_granule: Option<String>,
    /// Pin the virtual IOMMU's device (poll) thread to this host CPU
    /// [file: iommu.poll_cpu; default: not pinned].
    #[arg(long, value_name = "CPU")]
    pub iommu_poll_cpu: Option<i64>,
    /// Write the VMM's counters (JSON) to this file at exit and on SIGUSR1
    /// [file: stats.file; default: none].
    #[arg(long, value_name = "PATH")]
    pub stats_file: Option<PathBuf>,
    /// Log filter for the VMM's own messages on stderr: error, warn, info,
    /// debug, trace, or a tracing filter such as vmm=debug.
    #[arg(long, value_name = "LEVEL", default_value = "warn")]
    pub log_level: String,
}

/// A parsed and validated command.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Command {
    /// Boot a VM.
    Run {
        /// The validated VM configuration.
        config: VmConfig,
        /// The `--log-level` filter (a valid `tracing_subscriber` filter).
        log_level: String,
    },
}

/// Why the command line did not produce a [`Command`].
#[derive(Debug)]
pub enum CliError {
    /// Help or version was requested (or help is shown because no
    /// subcommand was given): clap prints it.
    Display(clap::Error),
    /// Bad usage caught by clap, as one line.
    Usage(ConfigError),
    /// A configuration or validation problem.
    Config(ConfigError),
}

impl CliError {
    /// The process exit status for this error.
    pub fn exit_code(&self) -> i32 {
        match self {
            CliError::Display(e) => e.exit_code(),
            CliError::Usage(_) | CliError::Config(_) => EXIT_USAGE,
        }
    }

    /// Prints the error (help/version to stdout, problems as one line on
    /// stderr) and exits.
    pub fn exit(&self) -> ! {
        match self {
            CliError::Display(e) => e.exit(),
            _ => {
                eprintln!("iovmm: error: {self}");
                std::process::exit(self.exit_code())
            }
        }
    }
}

impl fmt::Display for CliError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CliError::Display(e) => write!(f, "{}", e.render()),
            CliError::Usage(e) | CliError::Config(e) => write!(f, "{e}"),
        }
    }
}

impl std::error::Error for CliError {}

impl From<ConfigError> for CliError {
    fn from(e: ConfigError) -> Self {
        CliError::Config(e)
    }
}

/// Turns clap's multi-line usage error into one line: its first line, and
/// its tip (if any) as the fix.
fn usage_error(e: &clap::Error) -> ConfigError {
    let text = e.render().to_string();
    let mut lines = text.lines().map(str::trim).filter(|l| !l.is_empty());
    let problem = lines
        .next()
        .unwrap_or("invalid arguments")
        .trim_start_matches("error: ")
        .to_string();
    let fix = lines
        .find_map(|l| l.strip_prefix("tip: "))
        .map(str::to_string)
        .unwrap_or_else(|| "see `iovmm run --help`".to_string());
    ConfigError::new(problem, fix)
}

/// Parses the command line (including the program name) and validates the
/// configuration.
pub fn parse_and_build<I, T>(args: I) -> Result<Command, CliError>
where
    I: IntoIterator<Item = T>,
    T: Into<OsString> + Clone,
{
    let cli = Cli::try_parse_from(args).map_err(|e| {
        use clap::error::ErrorKind;
        match e.kind() {
            ErrorKind::DisplayHelp
            | ErrorKind::DisplayVersion
            | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand => CliError::Display(e),
            _ => CliError::Usage(usage_error(&e)),
        }
    })?;
    match cli.command {
        CliCommand::Run(args) => {
            check_log_level(&args.log_level)?;
            let config = load_config(&args)?;
            Ok(Command::Run {
                config,
                log_level: args.log_level,
            })
        }
    }
}

fn check_log_level(level: &str) -> Result<(), ConfigError> {
    let bad = || {
        ConfigError::new(
            format!("log level `{level}` is invalid"),
            "use error, warn, info, debug, trace or a filter like vmm=debug",
        )
    };
    if level.trim().is_empty() {
        return Err(bad());
    }
    tracing_subscriber::EnvFilter::builder()
        .parse(level)
        .map(|_| ())
        .map_err(|_| bad())
}

/// Builds the VM configuration from `--config` (if any) overridden by the
/// other flags, and validates it.
pub fn load_config(args: &RunArgs) -> Result<VmConfig, ConfigError> {
    let file = match &args.config {
        Some(p) => config::file::load(p)?,
        None => ConfigLayer::default(),
    };
    file.overlay(cli_layer(args)?).build()
}

/// The configuration layer set by flags.
fn cli_layer(args: &RunArgs) -> Result<ConfigLayer, ConfigError> {
    fn flag(name: &'static str) -> impl Fn(ConfigError) -> ConfigError {
        move |e| e.context(name)
    }
    let vcpus = args
        .vcpus
        .as_deref()
        .map(|v| {
            v.trim().parse::<i64>().map_err(|_| {
                ConfigError::new(
                    format!("--vcpus `{v}` is not a number"),
                    format!("use 1 to {}", config::MAX_VCPUS),
                )
            })
        })
        .transpose()?;
    let nonempty = |name: &str, p: &Option<PathBuf>| match p {
        Some(p) if p.as_os_str().is_empty() => Err(ConfigError::new(
            format!("{name} is empty"),
            format!("give a file path to {name}"),
        )),
        _ => Ok(p.clone()),
    };
    Ok(ConfigLayer {
        vcpus,
        memory: args
            .memory
            .as_deref()
            .map(parse_size)
            .transpose()
            .map_err(flag("--memory"))?,
        memory_backing: args
            .memory_backing
            .as_deref()
            .map(MemoryBacking::parse)
            .transpose()
            .map_err(flag("--memory-backing"))?,
        vcpu_cpus: args
            .vcpu_cpus
            .as_deref()
            .map(|v| config::placement::parse_cpus("--vcpu-cpus", v))
            .transpose()?,
        io_cpus: args
            .io_cpus
            .as_deref()
            .map(|v| config::placement::parse_cpus("--io-cpus", v))
            .transpose()?,
        kernel: nonempty("--kernel", &args.kernel)?,
        initramfs: nonempty("--initramfs", &args.initramfs)?,
        cmdline: args.cmdline.clone(),
        serial_output: args
            .serial
            .as_deref()
            .map(|s| SerialOutput::parse(s, None))
            .transpose()
            .map_err(flag("--serial"))?,
        serial_stdin: args.serial_stdin.then_some(true),
        disks: if args.disk.is_empty() {
            None
        } else {
            Some(
                args.disk
                    .iter()
                    .map(|d| parse_disk_arg(d))
                    .collect::<Result<_, _>>()?,
            )
        },
        nets: if args.net.is_empty() {
            None
        } else {
            Some(
                args.net
                    .iter()
                    .map(|n| parse_net_arg(n))
                    .collect::<Result<_, _>>()?,
            )
        },
        vfio: if args.vfio.is_empty() {
            None
        } else {
            Some(
                args.vfio
                    .iter()
                    .map(|v| parse_vfio_arg(v))
                    .collect::<Result<_, _>>()?,
            )
        },
        iommu_mode: args
            .iommu_mode
            .as_deref()
            .map(IommuMode::parse)
            .transpose()
            .map_err(flag("--iommu-mode"))?,
        iommu_poll: config::iommu::PollLayer {
            mode: args
                .iommu_poll
                .as_deref()
                .map(config::iommu::parse_poll_mode)
                .transpose()
                .map_err(flag("--iommu-poll"))?,
            budget_us: args.iommu_poll_budget_us,
            cpu: args.iommu_poll_cpu,
        },
        iommu_coop: config::iommu::CoopLayer {
            budget: args
                .coop_budget
                .as_deref()
                .map(config::parse_size)
                .transpose()
                .map_err(flag("--coop-budget"))?,
            scan_ms: args.coop_scan_ms,
            granule: args.coop_granule.clone(),
        },
        stats_file: nonempty("--stats-file", &args.stats_file)?,
    })
}

/// Splits `key=value,key=value`; a first item without `=` is
/// `<first_key>=item`. Rejects unknown and repeated keys.
fn split_opts<'a>(
    flag: &str,
    arg: &'a str,
    first_key: &'static str,
    valid: &[&'static str],
) -> Result<Vec<(&'static str, &'a str)>, ConfigError> {
    let mut out: Vec<(&'static str, &'a str)> = Vec::new();
    for (i, item) in arg.split(',').enumerate() {
        let (k, v) = match item.split_once('=') {
            Some(kv) => kv,
            None if i == 0 => (first_key, item),
            None => {
                return Err(ConfigError::new(
                    format!("{flag} `{arg}`: `{item}` is not key=value"),
                    format!(
                        "use {flag} {first_key}=...,key=value with keys {}",
                        valid.join(", ")
                    ),
                ))
            }
        };
        let key = valid.iter().copied().find(|&x| x == k).ok_or_else(|| {
            ConfigError::new(
                format!("{flag} `{arg}`: unknown option `{k}`"),
                format!("valid options are {}", valid.join(", ")),
            )
        })?;
        if out.iter().any(|(x, _)| *x == key) {
            return Err(ConfigError::new(
                format!("{flag} `{arg}`: option `{key}` given twice"),
                "give each option once",
            ));
        }
        out.push((key, v));
    }
    Ok(out)
}

fn parse_switch(flag: &str, key: &str, v: &str) -> Result<bool, ConfigError> {
    match v {
        "on" | "true" | "yes" | "1" => Ok(true),
        "off" | "false" | "no" | "0" => Ok(false),
        _ => Err(ConfigError::new(
            format!("{flag} {key}=`{v}` is not on or off"),
            format!("use {key}=on or {key}=off"),
        )),
    }
}

/// Parses a `--disk path=P[,readonly=on|off][,id=ID][,iommu=on|off]` value.
pub fn parse_disk_arg(arg: &str) -> Result<DiskSpec, ConfigError> {
    let mut d = DiskSpec::default();
    let mut path = None;
    for (k, v) in split_opts("--disk", arg, "path", &["path", "readonly", "id", "iommu"])? {
        match k {
            "path" => path = Some(v),
            "readonly" => d.readonly = parse_switch("--disk", k, v)?,
            "iommu" => d.iommu = parse_switch("--disk", k, v)?,
            _ => d.id = Some(v.to_string()),
        }
    }
    match path {
        Some(p) if !p.is_empty() => d.path = PathBuf::from(p),
        _ => {
            return Err(ConfigError::new(
                format!("--disk `{arg}` has no path"),
                "use --disk path=disk.img[,readonly=on]",
            ))
        }
    }
    Ok(d)
}

/// Parses a `--net tap=NAME[,mac=MAC][,iommu=on|off]` value.
pub fn parse_net_arg(arg: &str) -> Result<NetSpec, ConfigError> {
    let mut n = NetSpec::default();
    let mut tap = None;
    for (k, v) in split_opts("--net", arg, "tap", &["tap", "mac", "iommu"])? {
        match k {
            "tap" => tap = Some(v),
            "mac" => n.mac = Some(parse_mac(v).map_err(|e| e.context("--net"))?),
            _ => n.iommu = parse_switch("--net", k, v)?,
        }
    }
    n.tap = tap
        .ok_or_else(|| ConfigError::new(format!("--net `{arg}` has no tap"), "use --net tap=tap0"))?
        .to_string();
    Ok(n)
}

/// Parses a `--vfio DEVICE[,iommu=on|off]` value (`device=` may be
/// written out).
pub fn parse_vfio_arg(arg: &str) -> Result<VfioSpec, ConfigError> {
    let mut v = VfioSpec::default();
    let mut device = None;
    for (k, val) in split_opts("--vfio", arg, "device", &["device", "iommu"])? {
        match k {
            "device" => device = Some(val),
            _ => v.iommu = Some(parse_switch("--vfio", k, val)?),
        }
    }
    let device = device.ok_or_else(|| {
        ConfigError::new(
            format!("--vfio `{arg}` has no device"),
            "use --vfio 0000:03:00.0[,iommu=on|off]",
        )
    })?;
    config::vfio::parse_address(device).map_err(|e| e.context("--vfio"))?;
    v.device = device.to_string();
    Ok(v)
}

#[cfg(test)]
#[path = "cli_tests.rs"]
mod tests;
