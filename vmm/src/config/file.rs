//! The TOML configuration file.
//!
//! ```toml
//! [machine]
//! vcpus = 2
//! memory = "512M"              # K/M/G/T suffix, or an integer number of MiB
//! memory_backing = "anonymous" # "anonymous" | "thp" | "hugetlbfs"
//! [kernel]
//! path = "/path/to/bzImage"
//! initramfs = "/path/to/initrd.cpio.gz"
//! cmdline = "console=ttyS0"
//! [serial]
//! output = "stdout"            # "stdout" | "off" | a file path
//! stdin = false
//! [[disk]]
//! path = "disk.img"
//! readonly = false
//! id = "vda"
//! iommu = false
//! [[net]]
//! tap = "tap0"
//! mac = "52:54:00:12:34:56"
//! iommu = false
//! [[vfio]]
//! device = "0000:03:00.0"      # or "/sys/bus/pci/devices/0000:03:00.0"
//! iommu = true                 # default: true unless [iommu] mode = "off"
//! ```
//!
//! The file is parsed into a generic TOML table and then walked section by
//! section, so that every error names its section and key on one line.
//! Relative paths are relative to the file's directory.

use std::path::{Path, PathBuf};

use toml::{Table, Value};

use super::{
    parse_mac, parse_size, resolve, ConfigError, ConfigLayer, DiskSpec, IommuMode, MemoryBacking,
    NetSpec, SerialOutput, VfioSpec,
};

const MACHINE_KEYS: &[&str] = &["vcpus", "memory", "memory_backing", "vcpu_cpus", "io_cpus"];
const KERNEL_KEYS: &[&str] = &["path", "initramfs", "cmdline"];
const SERIAL_KEYS: &[&str] = &["output", "stdin"];
const DISK_KEYS: &[&str] = &["path", "readonly", "id", "iommu"];
const NET_KEYS: &[&str] = &["tap", "mac", "iommu"];
const VFIO_KEYS: &[&str] = &["device", "iommu"];
const IOMMU_KEYS: &[&str] = &[
    "mode",
    "poll",
    "poll_budget_us",
    "poll_cpu",
    "coop_budget",
    "coop_scan_ms",
    "coop_granule",
];
const STATS_KEYS: &[&str] = &["file"];

/// Reads and parses the configuration file at `path`.
pub fn load(path: &Path) -> Result<ConfigLayer, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        ConfigError::new(
            format!("cannot read config {} ({e})", path.display()),
            "check the path given to --config",
        )
    })?;
    let base = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    };
    parse(&text, &path.display().to_string(), &base)
}

/// Parses configuration `text`; `label` names the file in messages and
/// relative paths are joined to `base`.
pub fn parse(text: &str, label: &str, base: &Path) -> Result<ConfigLayer, ConfigError> {
    let ctx = format!("config {label}");
    let table: Table = toml::from_str(text).map_err(|e| syntax_error(text, &e).context(&ctx))?;
    parse_table(&table, base).map_err(|e| e.context(&ctx))
}

/// A TOML syntax error as one line with its line number.
fn syntax_error(text: &str, e: &toml::de::Error) -> ConfigError {
    let msg = e
        .message()
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join("; ");
    let line = e
        .span()
        .map(|s| {
            let end = s.start.min(text.len());
            text.as_bytes()
                .get(..end)
                .map_or(0, |b| b.iter().filter(|&&c| c == b'\n').count())
                + 1
        })
        .map(|l| format!("line {l}: "))
        .unwrap_or_default();
    ConfigError::new(
        format!("{line}invalid TOML: {msg}"),
        "fix the syntax (see `iovmm run --help` for the file format)",
    )
}

fn parse_table(table: &Table, base: &Path) -> Result<ConfigLayer, ConfigError> {
    let mut layer = ConfigLayer::default();
    for (key, value) in table {
        match key.as_str() {
            "machine" => {
                parse_machine(&Section::new("[machine]", value, MACHINE_KEYS)?, &mut layer)?
            }
            "kernel" => parse_kernel(
                &Section::new("[kernel]", value, KERNEL_KEYS)?,
                base,
                &mut layer,
            )?,
            "serial" => parse_serial(
                &Section::new("[serial]", value, SERIAL_KEYS)?,
                base,
                &mut layer,
            )?,
            "disk" => {
                let mut disks = Vec::new();
                for (i, v) in array_of_tables("disk", value)?.iter().enumerate() {
                    let name = format!("[[disk]] #{}", i + 1);
                    disks.push(parse_disk(&Section::new(&name, v, DISK_KEYS)?, base)?);
                }
                layer.disks = Some(disks);
            }
            "net" => {
                let mut nets = Vec::new();
                for (i, v) in array_of_tables("net", value)?.iter().enumerate() {
                    let name = format!("[[net]] #{}", i + 1);
                    nets.push(parse_net(&Section::new(&name, v, NET_KEYS)?)?);
                }
                layer.nets = Some(nets);
            }
            "vfio" => {
                let mut vfio = Vec::new();
                for (i, v) in array_of_tables("vfio", value)?.iter().enumerate() {
                    let name = format!("[[vfio]] #{}", i + 1);
                    vfio.push(parse_vfio(&Section::new(&name, v, VFIO_KEYS)?)?);
                }
                layer.vfio = Some(vfio);
            }
            "iommu" => {
                let s = Section::new("[iommu]", value, IOMMU_KEYS)?;
                layer.iommu_mode = s
                    .string("mode", "\"strict\"")?
                    .map(IommuMode::parse)
                    .transpose()
                    .map_err(|e| s.wrap("mode", e))?;
                layer.iommu_poll = super::iommu::PollLayer {
                    mode: s
                        .string("poll", "\"adaptive\"")?
                        .map(super::iommu::parse_poll_mode)
                        .transpose()
                        .map_err(|e| s.wrap("poll", e))?,
                    budget_us: s.int("poll_budget_us", "200")?,
                    cpu: s.int("poll_cpu", "3")?,
                };
                layer.iommu_coop = super::iommu::CoopLayer {
                    budget: s
                        .string("coop_budget", "\"64M\"")?
                        .map(parse_size)
                        .transpose()
                        .map_err(|e| s.wrap("coop_budget", e))?,
                    scan_ms: s.int("coop_scan_ms", "100")?,
                    granule: s
                        .string("coop_granule", "\"auto\"")?
                        .map(str::to_string),
                };
            }
            "stats" => {
                let s = Section::new("[stats]", value, STATS_KEYS)?;
                layer.stats_file = s.path("file", base)?;
            }
            other => {
                return Err(ConfigError::new(
                    format!("unknown section `{other}`"),
                    "valid sections are [machine], [kernel], [serial], [iommu], [stats], [[disk]], [[net]], [[vfio]]",
                ))
            }
        }
    }
    Ok(layer)
}

fn array_of_tables<'a>(name: &str, value: &'a Value) -> Result<&'a [Value], ConfigError> {
    value.as_array().map(Vec::as_slice).ok_or_else(|| {
        ConfigError::new(
            format!("`{name}` must be an array of tables"),
            format!("write each entry as a [[{name}]] section"),
        )
    })
}

/// `integer` -> `an integer`, `string` -> `a string`.
fn article(type_name: &str) -> String {
    match type_name.chars().next() {
        Some('a' | 'e' | 'i' | 'o' | 'u') => format!("an {type_name}"),
        _ => format!("a {type_name}"),
    }
}

/// One table of the file, with its name for messages.
struct Section<'a> {
    name: &'a str,
    table: &'a Table,
}

impl<'a> Section<'a> {
    /// Checks that `value` is a table whose keys are all in `valid`.
    fn new(name: &'a str, value: &'a Value, valid: &[&str]) -> Result<Self, ConfigError> {
        let table = value.as_table().ok_or_else(|| {
            ConfigError::new(
                format!("{name} must be a table, not {}", article(value.type_str())),
                format!("write it as a {name} section header followed by key = value lines"),
            )
        })?;
        if let Some(k) = table.keys().find(|k| !valid.contains(&k.as_str())) {
            return Err(ConfigError::new(
                format!("unknown key `{k}` in {name}"),
                format!("valid keys are {}", valid.join(", ")),
            ));
        }
        Ok(Section { name, table })
    }

    fn type_error(&self, key: &str, want: &str, got: &Value, example: &str) -> ConfigError {
        ConfigError::new(
            format!(
                "{} {key} must be {want}, not {}",
                self.name,
                article(got.type_str())
            ),
            format!("write e.g. {key} = {example}"),
        )
    }

    fn int(&self, key: &str, example: &str) -> Result<Option<i64>, ConfigError> {
        match self.table.get(key) {
            None => Ok(None),
            Some(Value::Integer(i)) => Ok(Some(*i)),
            Some(v) => Err(self.type_error(key, "an integer", v, example)),
        }
    }

    fn string(&self, key: &str, example: &str) -> Result<Option<&'a str>, ConfigError> {
        match self.table.get(key) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.as_str())),
            Some(v) => Err(self.type_error(key, "a string", v, example)),
        }
    }

    fn boolean(&self, key: &str) -> Result<Option<bool>, ConfigError> {
        match self.table.get(key) {
            None => Ok(None),
            Some(Value::Boolean(b)) => Ok(Some(*b)),
            Some(v) => Err(self.type_error(key, "true or false", v, "true")),
        }
    }

    fn path(&self, key: &str, base: &Path) -> Result<Option<PathBuf>, ConfigError> {
        match self.string(key, "\"/path/to/file\"")? {
            None => Ok(None),
            Some("") => Err(ConfigError::new(
                format!("{} {key} is empty", self.name),
                format!("give a file path or remove {key}"),
            )),
            Some(p) => Ok(Some(resolve(Some(base), Path::new(p)))),
        }
    }

    fn required<T>(&self, key: &str, v: Option<T>, example: &str) -> Result<T, ConfigError> {
        v.ok_or_else(|| {
            ConfigError::new(
                format!("{} has no {key}", self.name),
                format!("add {key} = {example}"),
            )
        })
    }

    fn wrap(&self, key: &str, e: ConfigError) -> ConfigError {
        e.context(&format!("{} {key}", self.name))
    }
}

fn parse_machine(s: &Section<'_>, layer: &mut ConfigLayer) -> Result<(), ConfigError> {
    layer.vcpus = s.int("vcpus", "2")?;
    layer.memory = match s.table.get("memory") {
        None => None,
        Some(Value::String(m)) => Some(parse_size(m).map_err(|e| s.wrap("memory", e))?),
        Some(Value::Integer(mib)) => {
            let bytes = u64::try_from(*mib)
                .ok()
                .and_then(|m| m.checked_mul(1 << 20))
                .ok_or_else(|| {
                    ConfigError::new(
                        format!("[machine] memory {mib} MiB is out of range"),
                        "use e.g. memory = \"512M\"",
                    )
                })?;
            Some(bytes)
        }
        Some(v) => return Err(s.type_error("memory", "a size", v, "\"512M\"")),
    };
    layer.memory_backing = s
        .string("memory_backing", "\"anonymous\"")?
        .map(MemoryBacking::parse)
        .transpose()
        .map_err(|e| s.wrap("memory_backing", e))?;
    let cpus = |key: &str| -> Result<_, ConfigError> {
        s.string(key, "\"0-3\"")?
            .map(|v| super::placement::parse_cpus(&format!("[machine] {key}"), v))
            .transpose()
    };
    layer.vcpu_cpus = cpus("vcpu_cpus")?;
    layer.io_cpus = cpus("io_cpus")?;
    Ok(())
}

fn parse_kernel(s: &Section<'_>, base: &Path, layer: &mut ConfigLayer) -> Result<(), ConfigError> {
    layer.kernel = s.path("path", base)?;
    layer.initramfs = s.path("initramfs", base)?;
    layer.cmdline = s
        .string("cmdline", "\"console=ttyS0\"")?
        .map(str::to_string);
    Ok(())
}

fn parse_serial(s: &Section<'_>, base: &Path, layer: &mut ConfigLayer) -> Result<(), ConfigError> {
    layer.serial_output = s
        .string("output", "\"stdout\"")?
        .map(|o| SerialOutput::parse(o, Some(base)))
        .transpose()
        .map_err(|e| s.wrap("output", e))?;
    layer.serial_stdin = s.boolean("stdin")?;
    Ok(())
}

fn parse_disk(s: &Section<'_>, base: &Path) -> Result<DiskSpec, ConfigError> {
    let path = s.path("path", base)?;
    Ok(DiskSpec {
        path: s.required("path", path, "\"disk.img\"")?,
        readonly: s.boolean("readonly")?.unwrap_or(false),
        id: s.string("id", "\"vda\"")?.map(str::to_string),
        iommu: s.boolean("iommu")?.unwrap_or(false),
    })
}

fn parse_net(s: &Section<'_>) -> Result<NetSpec, ConfigError> {
    let tap = s.string("tap", "\"tap0\"")?;
    let mac = s
        .string("mac", "\"52:54:00:12:34:56\"")?
        .map(parse_mac)
        .transpose()
        .map_err(|e| s.wrap("mac", e))?;
    Ok(NetSpec {
        tap: s.required("tap", tap, "\"tap0\"")?.to_string(),
        mac,
        iommu: s.boolean("iommu")?.unwrap_or(false),
    })
}

fn parse_vfio(s: &Section<'_>) -> Result<VfioSpec, ConfigError> {
    let device = s.string("device", "\"0000:03:00.0\"")?;
    let device = s.required("device", device, "\"0000:03:00.0\"")?;
    super::vfio::parse_address(device).map_err(|e| s.wrap("device", e))?;
    Ok(VfioSpec {
        device: device.to_string(),
        iommu: s.boolean("iommu")?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(text: &str) -> String {
        let e = parse(text, "vm.toml", Path::new("/cfg"))
            .unwrap_err()
            .to_string();
        assert!(!e.contains('\n'), "multi-line error: {e:?}");
        e
    }

    #[test]
    fn full_file_parses() {
        let text = r#"
[machine]
vcpus = 2
memory = "1G"
memory_backing = "thp"
[kernel]
path = "bzImage"
initramfs = "/abs/initrd"
cmdline = "console=ttyS0 quiet"
[serial]
output = "log/serial.txt"
stdin = false
[[disk]]
path = "disk.img"
readonly = true
id = "root"
iommu = true
[[disk]]
path = "data.img"
[[net]]
tap = "tap0"
mac = "52:54:00:aa:bb:cc"
[[net]]
tap = "tap1"
iommu = true
"#;
        let l = parse(text, "vm.toml", Path::new("/cfg")).unwrap();
        assert_eq!(l.vcpus, Some(2));
        assert_eq!(l.memory, Some(1 << 30));
        assert_eq!(l.memory_backing, Some(MemoryBacking::Thp));
        assert_eq!(l.kernel, Some(PathBuf::from("/cfg/bzImage")));
        assert_eq!(l.initramfs, Some(PathBuf::from("/abs/initrd")));
        assert_eq!(l.cmdline.as_deref(), Some("console=ttyS0 quiet"));
        assert_eq!(
            l.serial_output,
            Some(SerialOutput::File(PathBuf::from("/cfg/log/serial.txt")))
        );
        assert_eq!(l.serial_stdin, Some(false));
        let disks = l.disks.unwrap();
        assert_eq!(disks.len(), 2);
        assert_eq!(disks[0].path, PathBuf::from("/cfg/disk.img"));
        assert!(disks[0].readonly && disks[0].iommu);
        assert_eq!(disks[0].id.as_deref(), Some("root"));
        assert_eq!(disks[1].id, None);
        assert!(!disks[1].readonly && !disks[1].iommu);
        let nets = l.nets.unwrap();
        assert_eq!(nets[0].mac, Some([0x52, 0x54, 0, 0xaa, 0xbb, 0xcc]));
        assert_eq!(nets[1].mac, None);
        assert!(nets[1].iommu);
    }

    #[test]
    fn vfio_sections() {
        let l = parse(
            "[[vfio]]\ndevice = \"0000:03:00.0\"\n[[vfio]]\ndevice = \"/sys/bus/pci/devices/0000:04:00.0\"\niommu = false\n",
            "vm.toml",
            Path::new("/cfg"),
        )
        .unwrap();
        let v = l.vfio.unwrap();
        assert_eq!(v[0].device, "0000:03:00.0");
        assert_eq!(v[0].iommu, None);
        assert_eq!(v[1].device, "/sys/bus/pci/devices/0000:04:00.0");
        assert_eq!(v[1].iommu, Some(false));
        assert_eq!(
            err("[[vfio]]\niommu = true\n"),
            "config vm.toml: [[vfio]] #1 has no device: add device = \"0000:03:00.0\""
        );
        let e = err("[[vfio]]\ndevice = \"03:00\"\n");
        assert!(
            e.starts_with("config vm.toml: [[vfio]] #1 device: VFIO device `03:00` is not a PCI function address: write DDDD:BB:DD.F"),
            "{e}"
        );
        assert!(err("[[vfio]]\ndevice = \"03:00.0\"\nbdf = 1\n")
            .contains("unknown key `bdf` in [[vfio]] #1: valid keys are device, iommu"));
        assert!(err("[[vfio]]\ndevice = \"03:00.0\"\niommu = \"on\"\n")
            .contains("[[vfio]] #1 iommu must be true or false, not a string"));
        assert!(err("[vfio]\ndevice = \"03:00.0\"\n").contains("`vfio` must be an array of tables"));
    }

    #[test]
    fn empty_file_sets_nothing() {
        assert_eq!(
            parse("", "x", Path::new(".")).unwrap(),
            ConfigLayer::default()
        );
    }

    #[test]
    fn memory_integer_is_mib() {
        let l = parse("[machine]\nmemory = 256\n", "x", Path::new(".")).unwrap();
        assert_eq!(l.memory, Some(256 << 20));
        assert!(err("[machine]\nmemory = -1\n").contains("[machine] memory -1 MiB is out of range"));
        assert!(err("[machine]\nmemory = \"lots\"\n")
            .contains("[machine] memory: memory size `lots` is not a size"));
        assert!(err("[machine]\nmemory = 1.5\n")
            .contains("[machine] memory must be a size, not a float"));
    }

    #[test]
    fn cpu_lists_are_read_and_checked() {
        let l = parse(
            "[machine]\nvcpu_cpus = \"0\"\nio_cpus = \"0-0\"\n",
            "vm.toml",
            Path::new("/cfg"),
        )
        .unwrap();
        assert_eq!(l.vcpu_cpus.unwrap().cpus(), &[0]);
        assert!(err("[machine]\nio_cpus = \"1-x\"\n")
            .contains("[machine] io_cpus `1-x`: `x` is not a CPU number"));
        assert!(err("[machine]\nio_cpus = 1\n").contains("[machine] io_cpus must be a string"));
    }

    #[test]
    fn unknown_key_names_key_and_section() {
        let e = err("[machine]\nvcpu = 2\n");
        assert_eq!(
            e,
            "config vm.toml: unknown key `vcpu` in [machine]: valid keys are vcpus, memory, memory_backing, vcpu_cpus, io_cpus"
        );
        let e = err("[[disk]]\npath = \"a\"\n[[disk]]\npath = \"b\"\nro = true\n");
        assert!(e.contains("unknown key `ro` in [[disk]] #2"), "{e}");
        assert!(
            e.contains("valid keys are path, readonly, id, iommu"),
            "{e}"
        );
        let e = err("[machin]\nvcpus = 2\n");
        assert!(e.contains("unknown section `machin`"), "{e}");
    }

    #[test]
    fn type_errors_name_the_key() {
        let e = err("[machine]\nvcpus = \"2\"\n");
        assert_eq!(
            e,
            "config vm.toml: [machine] vcpus must be an integer, not a string: write e.g. vcpus = 2"
        );
        assert!(err("[serial]\nstdin = 1\n")
            .contains("[serial] stdin must be true or false, not an integer"));
        assert!(err("[kernel]\npath = 3\n").contains("[kernel] path must be a string"));
        assert!(err("machine = 3\n").contains("[machine] must be a table, not an integer"));
        assert!(err("[disk]\npath = \"x\"\n").contains("`disk` must be an array of tables"));
        assert!(err("[[net]]\ntap = \"t\"\nmac = \"zz\"\n")
            .contains("[[net]] #1 mac: MAC address `zz` is invalid"));
        assert!(err("[machine]\nmemory_backing = \"huge\"\n")
            .contains("memory backing `huge` is unknown"));
    }

    #[test]
    fn required_keys() {
        assert!(err("[[disk]]\nreadonly = true\n")
            .contains("[[disk]] #1 has no path: add path = \"disk.img\""));
        assert!(err("[[net]]\nmac = \"52:54:00:00:00:01\"\n").contains("[[net]] #1 has no tap"));
        assert!(err("[kernel]\npath = \"\"\n").contains("[kernel] path is empty"));
    }

    #[test]
    fn syntax_error_is_one_line_with_line_number() {
        let e = err("[machine]\nvcpus = 2\n[kernel\n");
        assert!(
            e.starts_with("config vm.toml: line 3: invalid TOML: "),
            "{e}"
        );
        let e = err("[machine]\nvcpus = 2\nvcpus = 3\n");
        assert!(e.contains("line 3"), "{e}");
    }

    #[test]
    fn serial_output_forms() {
        let l = parse(
            "[serial]\noutput = \"off\"\nstdin = true\n",
            "x",
            Path::new("/b"),
        )
        .unwrap();
        assert_eq!(l.serial_output, Some(SerialOutput::Off));
        assert_eq!(l.serial_stdin, Some(true));
        let l = parse("[serial]\noutput = \"stdout\"\n", "x", Path::new("/b")).unwrap();
        assert_eq!(l.serial_output, Some(SerialOutput::Stdout));
        assert!(err("[serial]\noutput = \"\"\n").contains("serial output is empty"));
    }
}
