use std::io::Write;

use super::*;

const NAME_SIZE: usize = 48;

/// A descriptor of a hand-made file: flags, exponent, size, offset, name.
struct D(u32, i16, u16, u32, &'static str);

/// A stats file as the kernel lays it out: header, id, descriptors, data.
fn image(id: &str, descs: &[D], data: &[u64]) -> Vec<u8> {
    let id_offset = HEADER_LEN;
    let desc_offset = id_offset + NAME_SIZE;
    let data_offset = desc_offset + descs.len() * (DESC_LEN + NAME_SIZE);
    let mut b = Vec::new();
    for v in [
        0u32,
        NAME_SIZE as u32,
        descs.len() as u32,
        id_offset as u32,
        desc_offset as u32,
        data_offset as u32,
    ] {
        b.extend_from_slice(&v.to_ne_bytes());
    }
    let name = |s: &str, b: &mut Vec<u8>| {
        let mut n = [0u8; NAME_SIZE];
        n[..s.len()].copy_from_slice(s.as_bytes());
        b.extend_from_slice(&n);
    };
    name(id, &mut b);
    for d in descs {
        b.extend_from_slice(&d.0.to_ne_bytes());
        b.extend_from_slice(&d.1.to_ne_bytes());
        b.extend_from_slice(&d.2.to_ne_bytes());
        b.extend_from_slice(&d.3.to_ne_bytes());
        b.extend_from_slice(&0u32.to_ne_bytes());
        name(d.4, &mut b);
    }
    for v in data {
        b.extend_from_slice(&v.to_ne_bytes());
    }
    b
}

fn file(bytes: &[u8]) -> File {
    let mut f = tempfile::tempfile().unwrap();
    f.write_all(bytes).unwrap();
    f
}

const CUM: u32 = KVM_STATS_TYPE_CUMULATIVE;
const NS: u32 = KVM_STATS_TYPE_CUMULATIVE | KVM_STATS_UNIT_SECONDS;

fn vcpu_image(exits: u64, io: u64, halt: u64) -> Vec<u8> {
    image(
        "kvm-1/vcpu-0",
        &[
            D(CUM, 0, 1, 0, "exits"),
            D(CUM, 0, 1, 8, "io_exits"),
            D(CUM, 0, 1, 16, "halt_exits"),
            D(NS, -9, 1, 24, "halt_poll_success_ns"),
            D(
                KVM_STATS_TYPE_LOG_HIST | KVM_STATS_UNIT_SECONDS,
                -9,
                3,
                32,
                "halt_wait_hist",
            ),
        ],
        &[exits, io, halt, 777, 1, 2, 3],
    )
}

#[test]
fn parses_descriptors_and_reads_values() {
    let s = KvmStats::parse(file(&vcpu_image(100, 40, 7))).unwrap();
    assert_eq!(s.id(), "kvm-1/vcpu-0");
    assert_eq!(s.descs().len(), 5);
    let ns = &s.descs()[3];
    assert_eq!(
        (ns.kind, ns.unit, ns.base, ns.exponent),
        (StatKind::Cumulative, StatUnit::Seconds, 10, -9)
    );
    let h = &s.descs()[4];
    assert_eq!((h.kind, h.size), (StatKind::LogHist, 3));
    let snap = s.read().unwrap();
    assert_eq!(s.scalar(&snap, "exits"), Some(100));
    assert_eq!(
        s.scalar(&snap, "halt_wait_hist"),
        None,
        "a histogram is no scalar"
    );
    assert_eq!(s.scalar(&snap, "nonexistent"), None);
    let j = s.to_json(&snap);
    assert_eq!(j["io_exits"], 40);
    assert_eq!(j["halt_poll_success_ns"], 777);
    assert_eq!(j["halt_wait_hist"], serde_json::json!([1, 2, 3]));
    assert_eq!(s.values(&snap, 99).count(), 0);
}

#[test]
fn unknown_types_units_and_bases_stay_raw() {
    let f = 0xf | (0xe << 4) | (0x3 << 8);
    let s = KvmStats::parse(file(&image("kvm-9", &[D(f, 3, 1, 0, "future")], &[5]))).unwrap();
    let d = &s.descs()[0];
    assert_eq!(d.kind, StatKind::Unknown(0xf));
    assert_eq!(d.unit, StatUnit::Unknown(0xe));
    assert_eq!(d.base, 0);
    assert_eq!(s.to_json(&s.read().unwrap())["future"], 5);
}

#[test]
fn a_name_without_nul_and_a_zero_size_counter_are_handled() {
    let long: &'static str = "n".repeat(NAME_SIZE).leak();
    let s = KvmStats::parse(file(&image(
        "kvm-2",
        &[D(CUM, 0, 0, 0, long), D(CUM, 0, 1, 0, "a")],
        &[9],
    )))
    .unwrap();
    assert_eq!(s.descs()[0].name.len(), NAME_SIZE);
    let snap = s.read().unwrap();
    assert_eq!(s.to_json(&snap)[long], serde_json::json!([]));
    assert_eq!(s.scalar(&snap, "a"), Some(9));
}

#[test]
fn malformed_files_are_errors() {
    let good = vcpu_image(1, 2, 3);
    // Every truncation, from an empty file to one missing the last byte
    // of the data block, fails at parse or at read, and never panics.
    for len in 0..good.len() {
        let r = KvmStats::parse(file(&good[..len])).and_then(|s| s.read().map(|_| ()));
        assert!(r.is_err(), "truncated to {len} bytes");
    }
    let with = |at: usize, v: u32| {
        let mut b = good.clone();
        b[at..at + 4].copy_from_slice(&v.to_ne_bytes());
        KvmStats::parse(file(&b))
    };
    assert!(with(4, 0).is_err(), "name size 0");
    assert!(with(4, 1 << 20).is_err(), "huge name size");
    assert!(with(8, u32::MAX).is_err(), "too many descriptors");
    assert!(with(16, u32::MAX - 8).is_err(), "descriptors past the end");
    let first_desc = HEADER_LEN + NAME_SIZE;
    assert!(with(first_desc + 8, 4).is_err(), "misaligned offset");
    assert!(
        with(first_desc + 8, u32::MAX - 7).is_err(),
        "offset past any data"
    );
    let e = with(first_desc + 8, 1 << 21).unwrap_err();
    assert_eq!(e.kind(), io::ErrorKind::InvalidData);
    // A data offset past the file's end: parse succeeds, read fails.
    let s = with(20, 1 << 30).unwrap();
    assert!(s.read().is_err());
}

#[test]
fn vm_set_sums_exits_over_vcpus() {
    let mut set = VmKvmStats::new();
    set.vcpus
        .push(KvmStats::parse(file(&vcpu_image(100, 40, 7))).unwrap());
    set.vcpus
        .push(KvmStats::parse(file(&vcpu_image(50, 10, 3))).unwrap());
    set.vm = Some(
        KvmStats::parse(file(&image(
            "kvm-1",
            &[D(KVM_STATS_TYPE_INSTANT, 0, 1, 0, "pages_4k")],
            &[42],
        )))
        .unwrap(),
    );
    set.errors.push("vcpu2: test".into());
    let j = set.to_json();
    assert_eq!(j["vm"]["pages_4k"], 42);
    assert_eq!(j["vcpus"].as_array().unwrap().len(), 2);
    assert_eq!(j["vcpus"][1]["exits"], 50);
    assert_eq!(j["exits"]["total"], 150);
    assert_eq!(j["exits"]["by_reason"]["io"], 50);
    assert_eq!(j["exits"]["by_reason"]["halt"], 10);
    assert!(j["exits"]["by_reason"].get("").is_none());
    assert_eq!(j["errors"][0], "vcpu2: test");
    let none = VmKvmStats::new().to_json();
    assert!(none["exits"]["total"].is_null(), "no vCPU files: no total");
}

#[test]
fn opening_a_non_kvm_fd_is_an_error() {
    let f = tempfile::tempfile().unwrap();
    assert!(KvmStats::open(&f).is_err());
    let mut set = VmKvmStats::new();
    set.open_vm(&f);
    set.open_vcpu(0, &f);
    assert_eq!(set.to_json()["errors"].as_array().unwrap().len(), 2);
}

/// The real files of this host's /dev/kvm (skips visibly without KVM; the
/// PVM host of the build machines does offer them).
#[test]
fn host_kvm_stats_files() {
    use crate::host_test::{skip, REQUIRE_KVM};
    let name = "host_kvm_stats_files";
    let kvm = match kvm_ioctls::Kvm::new() {
        Ok(k) => k,
        Err(e) => return skip(REQUIRE_KVM, name, &format!("no /dev/kvm ({e})")),
    };
    let vm = kvm.create_vm().expect("KVM_CREATE_VM");
    let vm_stats = match KvmStats::open(&vm) {
        Ok(s) => s,
        Err(e)
            if e.raw_os_error() == Some(libc::ENOTTY) || e.raw_os_error() == Some(libc::EINVAL) =>
        {
            return skip(
                REQUIRE_KVM,
                name,
                &format!("this KVM has no KVM_GET_STATS_FD ({e})"),
            )
        }
        Err(e) => panic!("KVM_GET_STATS_FD on the VM: {e}"),
    };
    assert!(vm_stats.id().starts_with("kvm-"), "{}", vm_stats.id());
    assert!(!vm_stats.descs().is_empty());
    vm_stats.read().expect("VM stats data");
    let vcpu = vm.create_vcpu(0).expect("KVM_CREATE_VCPU");
    let mut set = VmKvmStats::new();
    set.open_vm(&vm);
    set.open_vcpu(0, &vcpu);
    let j = set.to_json();
    assert_eq!(j["errors"], serde_json::json!([]), "{j}");
    assert!(j["vcpus"][0].get("exits").is_some(), "{j}");
    assert!(j["exits"]["total"].is_u64(), "{j}");
}
