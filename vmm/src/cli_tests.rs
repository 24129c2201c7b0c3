//! Tests of the command line: parsing, file + flag layering, one-line errors.

use super::*;
use crate::config::{DiskConfig, SerialConfig};
use std::fs;
use std::path::Path;

fn run(args: &[&str]) -> Result<Command, CliError> {
    parse_and_build(std::iter::once("iovmm").chain(args.iter().copied()))
}

fn run_err(args: &[&str]) -> String {
    let e = run(args).unwrap_err();
    assert_eq!(e.exit_code(), EXIT_USAGE);
    let s = e.to_string();
    assert!(!s.contains('\n'), "multi-line: {s:?}");
    s
}

fn config(cmd: Command) -> VmConfig {
    let Command::Run { config, .. } = cmd;
    config
}

/// A temp dir holding `vm.toml`, a fake bzImage and two images.
fn fixture(toml: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let mut k = vec![0u8; 0x400];
    k[0x202..0x206].copy_from_slice(b"HdrS");
    fs::write(dir.path().join("bzImage"), k).unwrap();
    fs::write(dir.path().join("a.img"), [0u8; 512]).unwrap();
    fs::write(dir.path().join("b.img"), [0u8; 512]).unwrap();
    fs::write(dir.path().join("vm.toml"), toml).unwrap();
    dir
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

#[test]
fn help_and_version_are_displayed_by_clap() {
    for args in [&["--help"][..], &["run", "--help"], &["--version"]] {
        let e = run(args).unwrap_err();
        assert!(matches!(e, CliError::Display(_)), "{args:?}");
        assert_eq!(e.exit_code(), 0);
    }
    let help = run(&["run", "--help"]).unwrap_err().to_string();
    for needle in [
        "--memory-backing",
        "--serial-stdin",
        "[machine]",
        "[[disk]]",
        "memory_backing",
        "default: 512M",
        "EXIT STATUS",
    ] {
        assert!(help.contains(needle), "help lacks {needle}");
    }
    let version = run(&["--version"]).unwrap_err().to_string();
    assert!(version.contains(env!("CARGO_PKG_VERSION")));
    // No subcommand: help on stderr, usage exit status.
    assert_eq!(run(&[]).unwrap_err().exit_code(), EXIT_USAGE);
}

#[test]
fn clap_usage_errors_are_one_line() {
    let e = run_err(&["run", "--vcpu", "2"]);
    assert!(e.contains("unexpected argument '--vcpu'"), "{e}");
    assert!(e.contains("--vcpus"), "{e}");
    let e = run_err(&["boot"]);
    assert!(e.contains("unrecognized subcommand 'boot'"), "{e}");
}

#[test]
fn flags_alone() {
    let dir = fixture("");
    let k = dir.path().join("bzImage");
    let a = dir.path().join("a.img");
    let c = config(
        run(&[
            "run",
            "--kernel",
            s(&k),
            "--vcpus",
            "3",
            "--memory",
            "1G",
            "--memory-backing",
            "hugetlbfs",
            "--cmdline",
            "console=ttyS0 quiet",
            "--serial",
            "off",
            "--disk",
            &format!("path={},readonly=on,id=root,iommu=on", s(&a)),
            "--net",
            "tap=tap7,mac=52:54:00:00:00:07",
            "--net",
            "tap8",
        ])
        .unwrap(),
    );
    assert_eq!(c.vcpus, 3);
    assert_eq!(c.memory, 1 << 30);
    assert_eq!(c.memory_backing, MemoryBacking::Hugetlbfs);
    assert_eq!(c.cmdline, "console=ttyS0 quiet");
    assert_eq!(c.serial, SerialConfig::Off);
    assert_eq!(
        c.disks,
        vec![DiskConfig {
            path: a,
            readonly: true,
            id: "root".into(),
            iommu: true
        }]
    );
    assert_eq!(c.nets[0].mac, [0x52, 0x54, 0, 0, 0, 7]);
    assert_eq!(c.nets[1].tap, "tap8");
    assert_eq!(c.nets[1].mac, config::default_mac(1));
}

#[test]
fn flags_override_file_field_by_field() {
    let dir = fixture(
        r#"
[machine]
vcpus = 2
memory = "256M"
[kernel]
path = "bzImage"
cmdline = "from-file"
[serial]
stdin = true
[[disk]]
path = "a.img"
[[net]]
tap = "tap0"
"#,
    );
    let cfg = dir.path().join("vm.toml");
    let c = config(run(&["run", "--config", s(&cfg)]).unwrap());
    assert_eq!(c.vcpus, 2);
    assert_eq!(c.kernel, dir.path().join("bzImage"));
    assert_eq!(c.disks[0].path, dir.path().join("a.img"));
    assert_eq!(c.serial, SerialConfig::Stdout { stdin: true });

    let b = dir.path().join("b.img");
    let c = config(
        run(&[
            "run",
            "--config",
            s(&cfg),
            "--vcpus",
            "4",
            "--disk",
            &format!("{},readonly=on", s(&b)),
            "--serial",
            "off",
        ])
        .unwrap(),
    );
    assert_eq!(c.vcpus, 4);
    assert_eq!(c.memory, 256 << 20);
    assert_eq!(c.cmdline, "from-file");
    assert_eq!(
        c.serial,
        SerialConfig::Off,
        "a new output drops the file's stdin"
    );
    assert_eq!(c.disks.len(), 1, "--disk replaces the file's list");
    assert_eq!(c.disks[0].path, b);
    assert!(c.disks[0].readonly);
    assert_eq!(c.nets[0].tap, "tap0", "the file's nets stay");

    // The file's error carries its name.
    fs::write(&cfg, "[machine]\nvcpu = 2\n").unwrap();
    let e = run_err(&["run", "--config", s(&cfg)]);
    assert!(
        e.starts_with(&format!(
            "config {}: unknown key `vcpu` in [machine]",
            s(&cfg)
        )),
        "{e}"
    );
    let e = run_err(&["run", "--config", s(&dir.path().join("nope.toml"))]);
    assert!(
        e.contains("cannot read config") && e.contains("--config"),
        "{e}"
    );
}

#[test]
fn cli_paths_stay_relative_to_cwd() {
    let l = cli_layer(&RunArgs {
        kernel: Some("k/bzImage".into()),
        serial: Some("log.txt".into()),
        disk: vec!["d.img".into()],
        ..Default::default()
    })
    .unwrap();
    assert_eq!(l.kernel, Some(PathBuf::from("k/bzImage")));
    assert_eq!(l.serial_output, Some(SerialOutput::File("log.txt".into())));
    assert_eq!(l.disks.unwrap()[0].path, PathBuf::from("d.img"));
}

#[test]
fn flag_value_errors() {
    let dir = fixture("");
    let k = dir.path().join("bzImage");
    let kernel = ["run", "--kernel", s(&k)];
    let with = |extra: &[&str]| run_err(&[&kernel[..], extra].concat());
    assert_eq!(
        with(&["--vcpus", "two"]),
        "--vcpus `two` is not a number: use 1 to 16"
    );
    assert!(with(&["--vcpus", "0"]).contains("vcpus 0 is out of range"));
    assert!(with(&["--memory", "1.5G"]).starts_with("--memory: memory size `1.5G` is not a size"));
    assert!(with(&["--memory", "99M"]).contains("not a multiple of 2 MiB: use e.g. 100M"));
    assert!(with(&["--memory-backing", "huge"]).contains("use anonymous, thp or hugetlbfs"));
    assert_eq!(
        with(&["--io-cpus", "1,x"]),
        "--io-cpus `1,x`: `x` is not a CPU number: give a list of host CPUs such as 0-3,6 to --io-cpus"
    );
    assert!(with(&["--vcpu-cpus", "1000"]).contains("iovmm may only run on CPUs"));
    assert!(with(&["--serial", ""]).contains("serial output is empty"));
    assert!(with(&["--serial", "off", "--serial-stdin"]).contains("serial stdin needs"));
    assert!(with(&["--kernel", ""]).contains("--kernel <PATH>"));
    assert!(with(&["--log-level", "vmm=loud"]).contains("log level `vmm=loud` is invalid"));
    let e = run_err(&["run", "--kernel", s(&dir.path().join("missing"))]);
    assert!(
        e.contains("does not exist: pass --kernel or set [kernel] path"),
        "{e}"
    );
    assert!(run_err(&["run"]).starts_with("no kernel given"));
}

#[test]
fn disk_and_net_args() {
    let d = parse_disk_arg("path=x.img,readonly=on,id=vdz,iommu=true").unwrap();
    assert_eq!(d.path, PathBuf::from("x.img"));
    assert!(d.readonly && d.iommu);
    assert_eq!(d.id.as_deref(), Some("vdz"));
    let d = parse_disk_arg("x.img").unwrap();
    assert!(!d.readonly && !d.iommu && d.id.is_none());
    let err = |r: Result<DiskSpec, ConfigError>| r.unwrap_err().to_string();
    assert!(err(parse_disk_arg("")).contains("has no path"));
    assert!(err(parse_disk_arg("readonly=on")).contains("has no path"));
    assert!(err(parse_disk_arg("path=")).contains("has no path"));
    assert!(err(parse_disk_arg("x,ro=on"))
        .contains("unknown option `ro`: valid options are path, readonly, id, iommu"));
    assert!(err(parse_disk_arg("x,readonly=maybe")).contains("readonly=`maybe` is not on or off"));
    assert!(err(parse_disk_arg("x,id=a,id=b")).contains("option `id` given twice"));
    assert!(err(parse_disk_arg("x,readonly")).contains("`readonly` is not key=value"));
    let n = parse_net_arg("tap=tap0,mac=52:54:00:00:00:01,iommu=on").unwrap();
    assert_eq!(n.tap, "tap0");
    assert_eq!(n.mac, Some([0x52, 0x54, 0, 0, 0, 1]));
    assert!(n.iommu);
    assert!(parse_net_arg("mac=52:54:00:00:00:01")
        .unwrap_err()
        .to_string()
        .contains("has no tap"));
    assert!(parse_net_arg("tap0,mac=1")
        .unwrap_err()
        .to_string()
        .starts_with("--net: MAC address `1` is invalid"));
}

#[test]
fn vfio_args() {
    let v = parse_vfio_arg("0000:03:00.0").unwrap();
    assert_eq!((v.device.as_str(), v.iommu), ("0000:03:00.0", None));
    let v = parse_vfio_arg("device=/sys/bus/pci/devices/0000:03:00.0,iommu=off").unwrap();
    assert_eq!(v.device, "/sys/bus/pci/devices/0000:03:00.0");
    assert_eq!(v.iommu, Some(false));
    assert_eq!(
        parse_vfio_arg("03:00.0,iommu=on").unwrap().iommu,
        Some(true)
    );
    let err = |a: &str| parse_vfio_arg(a).unwrap_err().to_string();
    assert_eq!(
        err("03:00"),
        "--vfio: VFIO device `03:00` is not a PCI function address: write DDDD:BB:DD.F \
         (e.g. 0000:03:00.0), BB:DD.F, or a /sys/bus/pci/devices/ path (see lspci -D)"
    );
    assert!(err("iommu=on").contains("--vfio `iommu=on` has no device"));
    assert!(err("03:00.0,iommu=maybe").contains("--vfio iommu=`maybe` is not on or off"));
    assert!(err("03:00.0,bar=1").contains("unknown option `bar`: valid options are device, iommu"));
    assert!(err("").contains("VFIO device is empty"));
}

#[test]
fn vfio_flags_validate_and_replace_the_files_list() {
    let dir = fixture(
        "[kernel]\npath = \"bzImage\"\n[[vfio]]\ndevice = \"0000:05:00.0\"\niommu = false\n",
    );
    let cfg = dir.path().join("vm.toml");
    let c = config(run(&["run", "--config", s(&cfg)]).unwrap());
    assert_eq!(c.vfio.len(), 1);
    assert_eq!(c.vfio[0].address.to_string(), "0000:05:00.0");
    assert_eq!(c.iommu_mode, IommuMode::Off);
    let c = config(
        run(&[
            "run",
            "--config",
            s(&cfg),
            "--vfio",
            "03:00.0,iommu=on",
            "--vfio",
            "/sys/bus/pci/devices/0000:04:00.0,iommu=off",
        ])
        .unwrap(),
    );
    assert_eq!(c.vfio.len(), 2, "--vfio replaces the file's list");
    assert_eq!(c.vfio[0].address.to_string(), "0000:03:00.0");
    assert!(c.vfio[0].iommu && !c.vfio[1].iommu);
    assert_eq!(
        c.iommu_mode,
        IommuMode::Strict,
        "iommu=on makes strict the default"
    );
    let c = config(
        run(&[
            "run",
            "--config",
            s(&cfg),
            "--vfio",
            "03:00.0",
            "--iommu-mode",
            "passthrough",
        ])
        .unwrap(),
    );
    assert!(c.vfio[0].iommu, "default on with a virtual IOMMU");
    let base = ["run", "--config", s(&cfg)];
    let with = |extra: &[&str]| run_err(&[&base[..], extra].concat());
    assert!(with(&["--vfio", "3:0:0"]).starts_with("--vfio: VFIO device `3:0:0` is not"));
    assert!(with(&["--vfio", "03:00.0,iommu=on", "--iommu-mode", "off"])
        .contains("has iommu=on but the IOMMU mode is off"));
    assert!(with(&["--vfio", "03:00.0", "--vfio", "3:00.0"]).contains("is given twice"));
    assert!(with(&[
        "--iommu-mode",
        "strict",
        "--vfio",
        "03:00.0",
        "--vfio",
        "04:00.0"
    ])
    .contains("are both behind the virtual IOMMU"));
    let help = run(&["run", "--help"]).unwrap_err().to_string();
    for needle in [
        "--vfio <DEVICE[,iommu=on|off]>",
        "[[vfio]]",
        "vfio-pci",
        "docs/vfio.md",
    ] {
        assert!(help.contains(needle), "help lacks {needle}");
    }
}

#[test]
fn poll_flags_override_the_file() {
    use crate::config::iommu::PollMode;
    let dir = fixture(
        "[kernel]\npath = \"bzImage\"\n[iommu]\nmode = \"strict\"\npoll = \"always\"\npoll_budget_us = 50\n",
    );
    let cfg = dir.path().join("vm.toml");
    let c = config(run(&["run", "--config", s(&cfg)]).unwrap());
    assert_eq!(c.iommu_poll.mode, PollMode::Always);
    assert_eq!(c.iommu_poll.budget.as_micros(), 50);
    let c = config(
        run(&[
            "run",
            "--config",
            s(&cfg),
            "--iommu-poll",
            "adaptive",
            "--iommu-poll-budget-us",
            "1000",
            "--iommu-poll-cpu",
            "0",
        ])
        .unwrap(),
    );
    assert_eq!(c.iommu_poll.mode, PollMode::Adaptive);
    assert_eq!(c.iommu_poll.budget.as_micros(), 1000);
    assert_eq!(c.iommu_poll.cpu, Some(0));
    let e = run(&["run", "--config", s(&cfg), "--iommu-poll", "sometimes"])
        .unwrap_err()
        .to_string();
    assert!(e.contains("--iommu-poll") && e.contains("sometimes"), "{e}");
    assert!(!e.contains('\n'), "{e}");
    let e = run(&["run", "--config", s(&cfg), "--iommu-poll-budget-us", "0"])
        .unwrap_err()
        .to_string();
    assert!(e.contains("budget"), "{e}");
}
