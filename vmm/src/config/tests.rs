//! Tests of defaults, overlaying and validation (files in a temp dir).

use super::*;
use std::fs;
use tempfile::TempDir;

/// A temp dir with a fake bzImage, an initramfs and two disk images.
struct Fixture {
    dir: TempDir,
}

impl Fixture {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let f = Fixture { dir };
        f.bzimage("bzImage");
        fs::write(f.path("initrd"), b"070701").unwrap();
        fs::write(f.path("a.img"), vec![0u8; 4096]).unwrap();
        fs::write(f.path("b.img"), vec![0u8; 4096]).unwrap();
        f
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn bzimage(&self, name: &str) -> PathBuf {
        let mut img = vec![0u8; 0x400];
        img[0x202..0x206].copy_from_slice(b"HdrS");
        let p = self.path(name);
        fs::write(&p, img).unwrap();
        p
    }

    fn layer(&self) -> ConfigLayer {
        ConfigLayer {
            kernel: Some(self.path("bzImage")),
            ..Default::default()
        }
    }
}

fn disk(path: PathBuf) -> DiskSpec {
    DiskSpec {
        path,
        ..Default::default()
    }
}

fn net(tap: &str) -> NetSpec {
    NetSpec {
        tap: tap.into(),
        ..Default::default()
    }
}

/// Builds `layer` expecting an error; checks it is one line containing
/// every piece of `expect`.
fn fails(layer: ConfigLayer, expect: &[&str]) -> String {
    let e = layer.build().unwrap_err().to_string();
    assert!(!e.contains('\n'), "multi-line: {e:?}");
    for x in expect {
        assert!(e.contains(x), "{e:?} lacks {x:?}");
    }
    e
}

#[test]
fn defaults() {
    let f = Fixture::new();
    let c = f.layer().build().unwrap();
    assert_eq!(c.vcpus, 1);
    assert_eq!(c.memory, 512 << 20);
    assert_eq!(c.memory_backing, MemoryBacking::Anonymous);
    assert_eq!(c.cmdline, "console=ttyS0");
    assert_eq!(c.serial, SerialConfig::Stdout { stdin: false });
    assert_eq!(c.initramfs, None);
    assert!(c.disks.is_empty() && c.nets.is_empty() && c.vfio.is_empty());
}

#[test]
fn default_ids_and_macs() {
    let f = Fixture::new();
    let mut l = f.layer();
    let mut d1 = disk(f.path("b.img"));
    d1.readonly = true;
    l.disks = Some(vec![disk(f.path("a.img")), d1]);
    l.nets = Some(vec![net("tap0"), net("tap1")]);
    let c = l.build().unwrap();
    assert_eq!(c.disks[0].id, "vda");
    assert_eq!(c.disks[1].id, "vdb");
    assert!(c.disks[1].readonly);
    assert_eq!(c.nets[0].mac, [0x52, 0x54, 0, 0x12, 0x34, 0x56]);
    assert_eq!(c.nets[1].mac, [0x52, 0x54, 0, 0x12, 0x34, 0x57]);
    assert_eq!(default_disk_id(25), "vdz");
    assert_eq!(default_disk_id(26), "vdaa");
    assert_eq!(default_disk_id(27), "vdab");
    assert_eq!(default_mac(0x100)[4..], [0x35, 0x56]);
}

#[test]
fn overlay_replaces_fields_and_lists() {
    let bottom = ConfigLayer {
        vcpus: Some(2),
        memory: Some(1 << 30),
        cmdline: Some("a".into()),
        serial_output: Some(SerialOutput::Stdout),
        serial_stdin: Some(true),
        disks: Some(vec![disk("x".into()), disk("y".into())]),
        nets: Some(vec![net("t0")]),
        ..Default::default()
    };
    let top = ConfigLayer {
        vcpus: Some(4),
        disks: Some(vec![disk("z".into())]),
        ..Default::default()
    };
    let m = bottom.clone().overlay(top);
    assert_eq!(m.vcpus, Some(4));
    assert_eq!(m.memory, Some(1 << 30));
    assert_eq!(m.cmdline.as_deref(), Some("a"));
    assert_eq!(m.serial_stdin, Some(true));
    assert_eq!(m.disks.unwrap(), vec![disk("z".into())]);
    assert_eq!(m.nets.unwrap(), vec![net("t0")]);
    // A new serial output drops the lower layer's stdin.
    let m = bottom.overlay(ConfigLayer {
        serial_output: Some(SerialOutput::Off),
        ..Default::default()
    });
    assert_eq!(m.serial_stdin, None);
}

#[test]
fn vcpus_range() {
    let f = Fixture::new();
    for bad in [0, 17, -1, 300] {
        let mut l = f.layer();
        l.vcpus = Some(bad);
        fails(l, &[&format!("vcpus {bad} is out of range"), "use 1 to 16"]);
    }
    let mut l = f.layer();
    l.vcpus = Some(16);
    assert_eq!(l.build().unwrap().vcpus, 16);
}

#[test]
fn memory_checks() {
    let f = Fixture::new();
    let with = |m: u64| {
        let mut l = f.layer();
        l.memory = Some(m);
        l
    };
    let e = fails(
        with(101 << 20),
        &["memory 101M is not a multiple of 2 MiB", "use e.g. 102M"],
    );
    assert_eq!(e, "memory 101M is not a multiple of 2 MiB: use e.g. 102M");
    fails(with(32 << 20), &["memory 32M is too small", "at least 64M"]);
    fails(with(2 << 40), &["memory 2T is too large", "at most 1T"]);
    fails(
        with(12345),
        &[
            "memory 12345 bytes is not a multiple of 2 MiB",
            "use e.g. 2M",
        ],
    );
    assert_eq!(with(1 << 40).build().unwrap().memory, 1 << 40);
    assert_eq!(with(64 << 20).build().unwrap().memory, 64 << 20);
}

#[test]
fn size_parsing() {
    assert_eq!(parse_size("512M").unwrap(), 512 << 20);
    assert_eq!(parse_size("512").unwrap(), 512 << 20);
    assert_eq!(parse_size("2G").unwrap(), 2 << 30);
    assert_eq!(parse_size("2g").unwrap(), 2 << 30);
    assert_eq!(parse_size("2GiB").unwrap(), 2 << 30);
    assert_eq!(parse_size("4096K").unwrap(), 4 << 20);
    assert_eq!(parse_size("1T").unwrap(), 1 << 40);
    for bad in [
        "",
        "M",
        "1.5G",
        "12X",
        "-1",
        "1 G B",
        "99999999999999999999",
    ] {
        let e = parse_size(bad).unwrap_err().to_string();
        assert!(e.contains("is not a size"), "{bad}: {e}");
    }
    assert!(parse_size("99999999T")
        .unwrap_err()
        .to_string()
        .contains("too large"));
    assert_eq!(format_size(3 << 30), "3G");
    assert_eq!(format_size(1536 << 20), "1536M");
    assert_eq!(format_size(0), "0 bytes");
}

#[test]
fn kernel_checks() {
    let f = Fixture::new();
    let e = fails(
        ConfigLayer::default(),
        &[
            "no kernel given",
            "pass --kernel or set [kernel] path",
            "lab/run demo",
        ],
    );
    assert_eq!(e, format!("no kernel given: {KERNEL_FIX}"));
    let mut l = f.layer();
    l.kernel = Some(f.path("nope"));
    fails(l, &["kernel", "nope does not exist", "pass --kernel"]);
    let mut l = f.layer();
    l.kernel = Some(f.dir.path().to_path_buf());
    fails(l, &["is a directory"]);
    fs::write(f.path("junk"), b"not a kernel").unwrap();
    let mut l = f.layer();
    l.kernel = Some(f.path("junk"));
    fails(l, &["neither a bzImage nor an ELF vmlinux"]);
    fs::write(f.path("vmlinux"), b"\x7fELF\x02\x01\x01").unwrap();
    let mut l = f.layer();
    l.kernel = Some(f.path("vmlinux"));
    assert!(l.build().is_ok());
}

#[test]
fn initramfs_checks() {
    let f = Fixture::new();
    let mut l = f.layer();
    l.initramfs = Some(f.path("missing.cpio"));
    fails(
        l,
        &["initramfs", "missing.cpio does not exist", "--initramfs"],
    );
    let mut l = f.layer();
    l.initramfs = Some(f.path("initrd"));
    assert_eq!(l.build().unwrap().initramfs, Some(f.path("initrd")));
}

#[test]
fn cmdline_checks() {
    let f = Fixture::new();
    let mut l = f.layer();
    l.cmdline = Some("x".repeat(layout::CMDLINE_MAX_SIZE));
    fails(
        l,
        &[
            "kernel command line is 65536 bytes, the limit is 65535",
            "shorten",
        ],
    );
    let mut l = f.layer();
    l.cmdline = Some("a\0b".into());
    fails(l, &["NUL"]);
    let mut l = f.layer();
    l.cmdline = Some("x".repeat(layout::CMDLINE_MAX_SIZE - 1));
    assert!(l.build().is_ok());
}

#[test]
fn serial_checks() {
    let f = Fixture::new();
    let mut l = f.layer();
    l.serial_output = Some(SerialOutput::Off);
    l.serial_stdin = Some(true);
    fails(l, &["serial stdin needs the serial output on stdout"]);
    let mut l = f.layer();
    l.serial_output = Some(SerialOutput::File(f.path("no/such/dir/log")));
    fails(l, &["directory", "does not exist"]);
    let mut l = f.layer();
    l.serial_output = Some(SerialOutput::File(f.dir.path().to_path_buf()));
    fails(l, &["is a directory"]);
    let mut l = f.layer();
    l.serial_output = Some(SerialOutput::File(f.path("log")));
    assert_eq!(l.build().unwrap().serial, SerialConfig::File(f.path("log")));
    let mut l = f.layer();
    l.serial_stdin = Some(true);
    assert_eq!(
        l.build().unwrap().serial,
        SerialConfig::Stdout { stdin: true }
    );
}

#[test]
fn disk_checks() {
    let f = Fixture::new();
    let with = |d: Vec<DiskSpec>| {
        let mut l = f.layer();
        l.disks = Some(d);
        l
    };
    let mut ro = disk(f.path("missing.img"));
    ro.readonly = true;
    fails(
        with(vec![ro]),
        &["disk vda:", "missing.img does not exist", "truncate -s 1G"],
    );
    let mut a = disk(f.path("a.img"));
    a.id = Some("root".into());
    let mut b = disk(f.path("b.img"));
    b.id = Some("root".into());
    fails(
        with(vec![a, b]),
        &["two disks have the id `root`", "unique id"],
    );
    // An explicit id colliding with a default one.
    let mut b = disk(f.path("b.img"));
    b.id = Some("vda".into());
    fails(
        with(vec![disk(f.path("a.img")), b]),
        &["two disks have the id `vda`"],
    );
    let mut a = disk(f.path("a.img"));
    a.id = Some("x".repeat(21));
    fails(with(vec![a]), &["disk id", "is invalid", "1 to 20"]);
    let mut a = disk(f.path("a.img"));
    a.id = Some("has space".into());
    fails(with(vec![a]), &["is invalid"]);
    fails(
        with(vec![disk(f.path("a.img")), disk(f.path("a.img"))]),
        &["disks vda and vdb use the same image"],
    );
    let (mut a, mut b) = (disk(f.path("a.img")), disk(f.path("a.img")));
    a.readonly = true;
    b.readonly = true;
    assert_eq!(with(vec![a, b]).build().unwrap().disks.len(), 2);
    fails(
        with(vec![disk(f.dir.path().to_path_buf())]),
        &["is a directory"],
    );
}

#[test]
fn net_checks() {
    let f = Fixture::new();
    let with = |n: Vec<NetSpec>| {
        let mut l = f.layer();
        l.nets = Some(n);
        l
    };
    fails(with(vec![net("")]), &["tap name is empty", "e.g. tap0"]);
    fails(
        with(vec![net("a-very-long-tap-name")]),
        &["longer than 15 bytes"],
    );
    assert!(with(vec![net("exactly15chars_")]).build().is_ok());
    fails(with(vec![net("a/b")]), &["tap name `a/b` is invalid"]);
    fails(
        with(vec![net("t0"), net("t0")]),
        &["tap `t0` is used by two network devices"],
    );
    let mut a = net("t0");
    a.mac = Some(default_mac(1));
    fails(
        with(vec![a, net("t1")]),
        &["have the same MAC 52:54:00:12:34:57"],
    );
    let mut a = net("t0");
    a.mac = Some([1, 0, 0, 0, 0, 1]);
    fails(with(vec![a]), &["not a unicast address"]);
}

#[test]
fn too_many_devices() {
    let f = Fixture::new();
    let mut l = f.layer();
    l.nets = Some((0..32).map(|i| net(&format!("tap{i}"))).collect());
    fails(l, &["exceed the 31 PCI slots"]);
}

#[test]
fn vfio_entries_count_against_pci_slots_and_follow_the_mode() {
    let f = Fixture::new();
    let vfio = |d: &str, iommu: Option<bool>| VfioSpec {
        device: d.into(),
        iommu,
    };
    let mut l = f.layer();
    l.nets = Some((0..30).map(|i| net(&format!("tap{i}"))).collect());
    l.vfio = Some(vec![vfio("03:00.0", Some(true))]);
    // 30 NICs + 1 VFIO device + the virtual IOMMU its iommu=on implies.
    fails(
        l.clone(),
        &["0 disks, 30 network devices, 1 VFIO devices and 1 virtual IOMMU exceed the 31 PCI slots"],
    );
    l.vfio = Some(vec![vfio("03:00.0", None)]);
    let c = l.build().unwrap();
    assert_eq!(c.iommu_mode, IommuMode::Off);
    assert!(!c.vfio[0].iommu, "no virtual IOMMU: identity DMA");
    let mut l = f.layer();
    l.iommu_mode = Some(IommuMode::Lazy);
    l.vfio = Some(vec![vfio("03:00.0", None), vfio("03:00.1", Some(false))]);
    let c = l.clone().build().unwrap();
    assert_eq!(
        c.vfio.iter().map(|v| v.iommu).collect::<Vec<_>>(),
        vec![true, false]
    );
    l.vfio = Some(vec![vfio("0000:03:00.0", None), vfio("3:00.0", None)]);
    fails(l, &["VFIO device 0000:03:00.0 is given twice"]);
}

#[test]
fn mac_parsing() {
    assert_eq!(
        parse_mac("52:54:00:12:34:56").unwrap(),
        [0x52, 0x54, 0, 0x12, 0x34, 0x56]
    );
    assert_eq!(parse_mac("02-00-00-00-00-0A").unwrap(), [2, 0, 0, 0, 0, 10]);
    for bad in [
        "",
        "52:54:00:12:34",
        "52:54:00:12:34:56:78",
        "5:54:00:12:34:56",
        "01:00:00:00:00:00",
        "00:00:00:00:00:00",
        "zz:54:00:12:34:56",
        "+2:54:00:12:34:56",
    ] {
        let e = parse_mac(bad).unwrap_err().to_string();
        assert!(
            e.contains("is invalid") && e.contains("52:54:00:12:34:56"),
            "{bad}: {e}"
        );
    }
    assert_eq!(
        format_mac(&[0x52, 0x54, 0, 0xa, 0xbb, 0xc]),
        "52:54:00:0a:bb:0c"
    );
}

#[test]
fn errors_stay_on_one_line() {
    let e = ConfigError::new("file a\nb does not exist", "fix\r\nit");
    assert_eq!(e.to_string(), "file a\\nb does not exist: fix\\r\\nit");
    assert_eq!(e.problem(), "file a\nb does not exist");
    assert_eq!(e.fix(), "fix\r\nit");
}

#[test]
fn hints() {
    let e = kvm_open_hint(&std::io::Error::from_raw_os_error(libc::ENOENT)).to_string();
    assert!(
        e.starts_with("cannot open /dev/kvm") && e.contains("modprobe kvm_intel"),
        "{e}"
    );
    let e = kvm_open_hint(&std::io::Error::from_raw_os_error(libc::EACCES)).to_string();
    assert!(e.contains("kvm group"), "{e}");
    let e = tap_open_hint("tap0", &std::io::Error::from_raw_os_error(libc::EPERM)).to_string();
    assert!(e.contains("ip tuntap add tap0 mode tap user"), "{e}");
    assert!(!e.contains('\n'));
}

/// Every example file parses and validates once the files it names exist.
#[test]
fn examples_parse() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples");
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("examples");
    fs::create_dir(&dir).unwrap();
    let mut names = Vec::new();
    for entry in fs::read_dir(&src).unwrap() {
        let p = entry.unwrap().path();
        if p.extension().and_then(|e| e.to_str()) != Some("toml") {
            continue;
        }
        let name = p.file_name().unwrap().to_str().unwrap().to_string();
        fs::copy(&p, dir.join(&name)).unwrap();
        names.push(name);
    }
    names.sort();
    assert_eq!(
        names,
        [
            "boot.toml",
            "cx6-vf-lazy.toml",
            "cx6-vf-off.toml",
            "cx6-vf-passthrough.toml",
            "cx6-vf-strict-poll.toml",
            "cx6-vf-strict.toml",
            "minimal.toml",
            "readonly-disk.toml"
        ]
    );
    let fake_kernel = {
        let mut k = vec![0u8; 0x400];
        k[0x202..0x206].copy_from_slice(b"HdrS");
        k
    };
    for name in &names {
        let cfg_path = dir.join(name);
        let layer = file::load(&cfg_path).unwrap_or_else(|e| panic!("{name}: {e}"));
        // Create what the example points at, at its resolved location.
        let mut files: Vec<PathBuf> = layer.initramfs.iter().cloned().collect();
        files.extend(layer.disks.iter().flatten().map(|d| d.path.clone()));
        for p in files.iter().chain(layer.kernel.iter()) {
            assert!(
                p.starts_with(&dir),
                "{name}: {} is not relative to the file",
                p.display()
            );
            fs::create_dir_all(p.parent().unwrap()).unwrap();
        }
        for p in files {
            fs::write(p, [0u8; 512]).unwrap();
        }
        fs::write(layer.kernel.as_ref().unwrap(), &fake_kernel).unwrap();
        let c = layer.build().unwrap_or_else(|e| panic!("{name}: {e}"));
        match name.as_str() {
            "minimal.toml" => {
                assert_eq!(c.vcpus, 1);
                assert!(c.initramfs.is_some());
                assert!(c.disks.is_empty() && c.nets.is_empty());
            }
            "boot.toml" => {
                assert_eq!(c.vcpus, 2);
                assert_eq!(c.disks.len(), 1);
                assert_eq!(c.nets.len(), 1);
            }
            n if n.starts_with("cx6-vf-") => {
                assert_eq!(c.vfio.len(), 1);
                assert_eq!(c.vfio[0].iommu, c.iommu_mode != IommuMode::Off);
                assert_eq!(c.memory_backing, MemoryBacking::Hugetlbfs);
                let poll = n == "cx6-vf-strict-poll.toml";
                assert_eq!(c.iommu_poll.mode == iommu::PollMode::Adaptive, poll);
            }
            _ => assert!(c.disks.iter().any(|d| d.readonly)),
        }
    }
}
