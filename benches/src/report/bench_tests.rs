//! Tests of the bench rows: parsing, aggregation and outputs.

use super::bench::{aggregate, parse_bench, spread};
use super::bench_output::{csv, json, markdown, run, unstable_baselines, CSV_HEADER};

const ROWS: &str = "\
lab: LAB-BENCH settings backing=anonymous place=0:1 secs=5
LAB-ROW bench=1 vmm=iovmm mode=strict workload=redis-set-64 rep=1 failed=0 unit=req/s throughput=100 p50_us=900 p99_us=4000 ops=1000 secs=10 l1_exits=20000 kvm_exits=19000 kvm_exit_mmio=8000 viommu_map=3000 viommu_unmap=3000 vfio_map_calls=3000 vfio_unmap_calls=3000 vfio_map_ns=6000000 vfio_unmap_ns=4000000 poll_cpu_ns=5000000000 vcpu_ticks=900 peak_mapped_bytes=65536
LAB-ROW bench=1 vmm=iovmm mode=off workload=redis-set-64 rep=1 failed=0 unit=req/s throughput=400 ops=1000 secs=2.5 l1_exits=5000 kvm_exits=4900
LAB-ROW bench=1 vmm=iovmm mode=strict workload=redis-set-64 rep=2 failed=0 unit=req/s throughput=120 p50_us=800 p99_us=3000 ops=1000 secs=8 l1_exits=22000 kvm_exits=21000 kvm_exit_mmio=9000 viommu_map=3100 viommu_unmap=3100 peak_mapped_bytes=131072
LAB-ROW bench=1 vmm=iovmm mode=off workload=redis-set-64 rep=2 failed=0 unit=req/s throughput=500 ops=1000 secs=2 l1_exits=6000
LAB-ROW bench=1 vmm=iovmm mode=strict workload=redis-set-64 rep=3 failed=1 why=no-numbers
LAB-ROW bench=1 vmm=qemu mode=strict workload=redis-set-64 rep=1 failed=0 unit=req/s throughput=50 ops=1000 secs=20 l1_exits=40000
LAB-ROW bench=1 vmm=qemu mode=off workload=redis-set-64 rep=1 failed=0 unit=req/s throughput=200 ops=1000 secs=5 l1_exits=8000
LAB-ROW mode=strict mib=8 l1_to_l2_s=1
";

#[test]
fn rows_and_settings_parse_and_other_lines_are_ignored() {
    let b = parse_bench(ROWS, "rows").unwrap();
    assert_eq!(
        b.rows.len(),
        7,
        "the per-mode LAB-ROW without bench=1 is not a bench row"
    );
    assert_eq!(b.settings[0], ("backing".into(), "anonymous".into()));
    let r = &b.rows[0];
    assert_eq!(
        (r.vmm.as_str(), r.mode.as_str(), r.workload.as_str(), r.rep),
        ("iovmm", "strict", "redis-set-64", 1)
    );
    assert_eq!(r.unit.as_deref(), Some("req/s"));
    assert_eq!(r.get("kvm_exit_mmio"), Some(8000.0));
    assert!(b.rows[4].failed);
    assert_eq!(
        b.rows[4].get("throughput"),
        None,
        "missing is absent, not zero"
    );
    assert_eq!(
        b.rows[4].get("why"),
        None,
        "non-numeric fields are not metrics"
    );
}

#[test]
fn bad_rows_name_the_line_and_the_problem() {
    let err = |t: &str| parse_bench(t, "f").unwrap_err().to_string();
    assert!(
        err("x\nLAB-ROW bench=1 vmm=iovmm mode=off rep=1 failed=0 throughput=1")
            .contains("f:2: missing workload=")
    );
    assert!(
        err("LAB-ROW bench=1 vmm=a mode=off workload=w rep=x failed=0 throughput=1")
            .contains("rep=x")
    );
    assert!(err("LAB-ROW bench=1 vmm=a mode=off workload=w rep=1 failed=2").contains("failed=2"));
    assert!(
        err("LAB-ROW bench=1 vmm=a mode=off workload=w rep=1 failed=0").contains("throughput > 0")
    );
    assert!(
        err("LAB-ROW bench=1 vmm=a mode=off workload=w rep=1 failed=0 junk").contains("'junk'")
    );
    assert!(err("nothing here").contains("no LAB-ROW lines in f"));
}

#[test]
fn spread_is_median_min_max() {
    assert_eq!(spread(&[]), None);
    let s = spread(&[3.0, 1.0, 2.0]).unwrap();
    assert_eq!((s.median, s.min, s.max), (2.0, 1.0, 3.0));
    assert_eq!(spread(&[4.0, 1.0, 2.0, 10.0]).unwrap().median, 3.0);
}

#[test]
fn cells_aggregate_ok_reps_and_compare_with_the_same_vmms_off() {
    let b = parse_bench(ROWS, "rows").unwrap();
    let cells = aggregate(&b.rows);
    let names: Vec<String> = cells
        .iter()
        .map(|c| format!("{}/{}", c.vmm, c.mode))
        .collect();
    assert_eq!(
        names,
        ["iovmm/off", "iovmm/strict", "qemu/off", "qemu/strict"],
        "off first, VMMs in input order"
    );
    let strict = &cells[1];
    assert_eq!((strict.ok, strict.failed), (2, 1));
    let t = strict.throughput.unwrap();
    assert_eq!((t.median, t.min, t.max), (110.0, 100.0, 120.0));
    // iovmm off: median of 400 and 500.
    assert!((strict.vs_off_pct.unwrap() - 110.0 * 100.0 / 450.0).abs() < 1e-9);
    // qemu strict against qemu's own off, not iovmm's.
    assert_eq!(cells[3].vs_off_pct, Some(25.0));
    assert_eq!(cells[0].vs_off_pct, Some(100.0));
    assert_eq!(strict.p50_us, Some(850.0));
    // Per operation: medians of (20, 22) L1 exits and (6, 6.2) requests per op.
    assert_eq!(strict.per_op["l1_exits"], 21.0);
    assert!((strict.per_op["viommu_requests"] - 6.1).abs() < 1e-9);
    assert_eq!(strict.per_op["kvm_exit_mmio"], 8.5);
    // Only rep 1 has VFIO counters: its values, not a zero from rep 2.
    assert_eq!(strict.per_op["vfio_calls"], 6.0);
    assert_eq!(strict.per_op["vfio_ns"], 10_000.0);
    assert_eq!(strict.poll_cpu_share, Some(0.5));
    assert_eq!(strict.vcpu_cpu_share, Some(0.9));
    assert_eq!(strict.peak_mapped_bytes, Some(131072.0));
    assert!(
        !cells[2].per_op.contains_key("viommu_requests"),
        "QEMU has no iovmm counters"
    );
}

#[test]
fn a_cell_whose_every_rep_failed_is_kept_and_marked() {
    let t = "LAB-ROW bench=1 vmm=iovmm mode=lazy workload=nginx-4k rep=1 failed=1\n";
    let b = parse_bench(t, "t").unwrap();
    let cells = aggregate(&b.rows);
    assert_eq!(cells.len(), 1);
    assert_eq!(
        (cells[0].ok, cells[0].failed, cells[0].throughput),
        (0, 1, None)
    );
    assert!(markdown(&b, &cells).contains("| iovmm | lazy | nginx-4k | 0/1 | FAILED |"));
    assert!(csv(&cells).contains("iovmm,lazy,nginx-4k,,0,1,,,,"));
}

#[test]
fn csv_json_and_markdown_carry_the_cells() {
    let b = parse_bench(ROWS, "rows").unwrap();
    let cells = aggregate(&b.rows);
    let c = csv(&cells);
    let lines: Vec<&str> = c.lines().collect();
    assert_eq!(lines[0], CSV_HEADER);
    assert_eq!(lines.len(), 5);
    let cols = CSV_HEADER.split(',').count();
    assert!(lines.iter().all(|l| l.split(',').count() == cols));
    assert!(lines[2]
        .starts_with("iovmm,strict,redis-set-64,req/s,2,1,110.000,100.000,120.000,24.4,850,"));
    let md = markdown(&b, &cells);
    assert!(md.starts_with("Settings: backing=anonymous, place=0:1, secs=5"));
    assert!(
        md.contains("| iovmm | strict | redis-set-64 | 2/1 | 110.0 req/s | 100.0–120.0 | 24% |")
    );
    let j = json(&b, &cells);
    assert!(j.contains("\"settings\": {\"backing\": \"anonymous\""));
    assert!(j.contains("\"throughput\": {\"median\": 110, \"min\": 100, \"max\": 120}"));
    assert!(j.contains("\"rep\": 3, \"failed\": true"));
    assert_eq!(j.matches('{').count(), j.matches('}').count());
}

#[test]
fn run_writes_every_file_and_the_charts_show_the_cells() {
    let dir = std::env::temp_dir().join(format!("iovmm-bench-report-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let mut out = Vec::new();
    run("-", &dir, &mut ROWS.as_bytes(), &mut out).unwrap();
    assert!(String::from_utf8(out)
        .unwrap()
        .contains("| qemu | strict |"));
    for f in [
        "bench.csv",
        "bench.json",
        "bench.md",
        "relative.svg",
        "exits.svg",
        "breakdown.svg",
    ] {
        assert!(dir.join(f).is_file(), "{f} written");
    }
    let rel = std::fs::read_to_string(dir.join("relative.svg")).unwrap();
    assert!(rel.contains("iovmm/strict") && rel.contains("qemu/strict"));
    assert!(!rel.contains("iovmm/off"), "off is the baseline, not a bar");
    assert!(rel.contains("24%") && rel.contains("25%"));
    let ex = std::fs::read_to_string(dir.join("exits.svg")).unwrap();
    assert!(ex.contains("21.00") && ex.contains("40.00"));
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_baseline_that_spreads_over_ten_times_is_unstable() {
    let rows = "\
LAB-ROW bench=1 vmm=iovmm mode=off workload=a rep=1 failed=0 throughput=100
LAB-ROW bench=1 vmm=iovmm mode=off workload=a rep=2 failed=0 throughput=5
LAB-ROW bench=1 vmm=iovmm mode=off workload=b rep=1 failed=0 throughput=100
LAB-ROW bench=1 vmm=iovmm mode=off workload=b rep=2 failed=0 throughput=11
LAB-ROW bench=1 vmm=iovmm mode=strict workload=b rep=1 failed=0 throughput=1
";
    let cells = aggregate(&parse_bench(rows, "t").unwrap().rows);
    assert_eq!(unstable_baselines(&cells), vec!["a".to_string()]);
}
