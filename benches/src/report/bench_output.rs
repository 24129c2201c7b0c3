//! Outputs of the application benchmark (`iovmm-bench-report`): the cells
//! of [`super::bench::aggregate`] as CSV, JSON and a markdown table, and
//! three SVG charts (throughput relative to `off` per workload and mode; L1
//! KVM exits per operation; the stacked time per operation of
//! [`super::breakdown`]), all under one output directory.

use std::fmt::Write as _;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use plotters::prelude::SeriesLabelPosition;

use super::bench::{aggregate, parse_bench, BenchInput, Cell};
use super::breakdown;
use super::plot::{draw, two_decimals, whole_percent, Chart, Scale, Series};
use super::ReportError;

fn num(v: Option<f64>, decimals: usize) -> String {
    v.map(|x| format!("{x:.decimals$}")).unwrap_or_default()
}

/// The CSV columns, in order (the per-operation ones are `<name>_per_op`).
pub const CSV_HEADER: &str = "vmm,mode,workload,unit,reps_ok,reps_failed,throughput_median,throughput_min,throughput_max,vs_off_pct,p50_us,p99_us,kvm_exits_per_op,vmm_exits_per_op,l1_exits_per_op,viommu_requests_per_op,notifications_per_op,vfio_calls_per_op,vfio_ns_per_op,vmm_exit_ns_per_op,viommu_handling_ns_per_op,wall_ns_per_op,poll_cpu_share,vcpu_cpu_share,peak_mapped_bytes";

/// One CSV line per cell, after [`CSV_HEADER`].
pub fn csv(cells: &[Cell]) -> String {
    let mut out = format!("{CSV_HEADER}\n");
    for c in cells {
        let t = c.throughput;
        let op = |k: &str| num(c.per_op.get(k).copied(), 4);
        let _ = writeln!(
            out,
            "{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{},{}",
            c.vmm,
            c.mode,
            c.workload,
            c.unit.as_deref().unwrap_or(""),
            c.ok,
            c.failed,
            num(t.map(|s| s.median), 3),
            num(t.map(|s| s.min), 3),
            num(t.map(|s| s.max), 3),
            num(c.vs_off_pct, 1),
            num(c.p50_us, 0),
            num(c.p99_us, 0),
            op("kvm_exits"),
            op("vmm_exits"),
            op("l1_exits"),
            op("viommu_requests"),
            op("notifications"),
            op("vfio_calls"),
            op("vfio_ns"),
            op("vmm_exit_ns"),
            op("viommu_handling_ns"),
            op("wall_ns"),
            num(c.poll_cpu_share, 4),
            num(c.vcpu_cpu_share, 4),
            num(c.peak_mapped_bytes, 0),
        );
    }
    out
}

fn json_str(s: &str) -> String {
    let mut o = String::from("\"");
    for ch in s.chars() {
        match ch {
            '"' => o.push_str("\\\""),
            '\\' => o.push_str("\\\\"),
            c if (c as u32) < 0x20 => {
                let _ = write!(o, "\\u{:04x}", c as u32);
            }
            c => o.push(c),
        }
    }
    o.push('"');
    o
}

fn json_num(v: Option<f64>) -> String {
    v.filter(|x| x.is_finite())
        .map(|x| format!("{x}"))
        .unwrap_or_else(|| "null".into())
}

/// The settings, the cells and every row as one JSON document.
pub fn json(input: &BenchInput, cells: &[Cell]) -> String {
    let settings: Vec<String> = input
        .settings
        .iter()
        .map(|(k, v)| format!("{}: {}", json_str(k), json_str(v)))
        .collect();
    let mut out = format!(
        "{{\"settings\": {{{}}},\n \"cells\": [\n",
        settings.join(", ")
    );
    for (i, c) in cells.iter().enumerate() {
        let per_op: Vec<String> = c
            .per_op
            .iter()
            .map(|(k, v)| format!("{}: {}", json_str(k), json_num(Some(*v))))
            .collect();
        let t = c.throughput;
        let _ = writeln!(
            out,
            "  {{\"vmm\": {}, \"mode\": {}, \"workload\": {}, \"unit\": {}, \"reps_ok\": {}, \"reps_failed\": {}, \
             \"throughput\": {{\"median\": {}, \"min\": {}, \"max\": {}}}, \"vs_off_pct\": {}, \"p50_us\": {}, \
             \"p99_us\": {}, \"per_op\": {{{}}}, \"poll_cpu_share\": {}, \"vcpu_cpu_share\": {}, \"peak_mapped_bytes\": {}}}{}",
            json_str(&c.vmm),
            json_str(&c.mode),
            json_str(&c.workload),
            c.unit.as_deref().map(json_str).unwrap_or_else(|| "null".into()),
            c.ok,
            c.failed,
            json_num(t.map(|s| s.median)),
            json_num(t.map(|s| s.min)),
            json_num(t.map(|s| s.max)),
            json_num(c.vs_off_pct),
            json_num(c.p50_us),
            json_num(c.p99_us),
            per_op.join(", "),
            json_num(c.poll_cpu_share),
            json_num(c.vcpu_cpu_share),
            json_num(c.peak_mapped_bytes),
            if i + 1 < cells.len() { "," } else { "" },
        );
    }
    out.push_str(" ],\n \"rows\": [\n");
    for (i, r) in input.rows.iter().enumerate() {
        let m: Vec<String> = r
            .metrics
            .iter()
            .map(|(k, v)| format!("{}: {}", json_str(k), json_num(Some(*v))))
            .collect();
        let _ = writeln!(
            out,
            "  {{\"vmm\": {}, \"mode\": {}, \"workload\": {}, \"rep\": {}, \"failed\": {}, \"metrics\": {{{}}}}}{}",
            json_str(&r.vmm),
            json_str(&r.mode),
            json_str(&r.workload),
            r.rep,
            r.failed,
            m.join(", "),
            if i + 1 < input.rows.len() { "," } else { "" },
        );
    }
    out.push_str(" ]}\n");
    out
}

/// The markdown table: one line per cell, medians with the spread (min to
/// max over the repetitions), relative throughput and per-operation costs.
pub fn markdown(input: &BenchInput, cells: &[Cell]) -> String {
    let mut out = String::new();
    if !input.settings.is_empty() {
        let s: Vec<String> = input
            .settings
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        let _ = writeln!(out, "Settings: {}\n", s.join(", "));
    }
    out.push_str(
        "| vmm | mode | workload | reps ok/failed | throughput (median) | spread | vs off | p50 µs | p99 µs \
         | KVM exits/op | L1 exits/op | vIOMMU req/op | notif/op | VFIO calls/op | VFIO µs/op | poll CPU | vCPU CPU | peak mapped KiB |\n",
    );
    out.push_str("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|\n");
    for c in cells {
        let op = |k: &str, d: usize| num(c.per_op.get(k).copied(), d);
        let t = c.throughput;
        let unit = c.unit.as_deref().unwrap_or("");
        let _ = writeln!(
            out,
            "| {} | {} | {} | {}/{} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            c.vmm,
            c.mode,
            c.workload,
            c.ok,
            c.failed,
            t.map(|s| format!("{:.1} {unit}", s.median)).unwrap_or_else(|| "FAILED".into()),
            t.map(|s| format!("{:.1}–{:.1}", s.min, s.max)).unwrap_or_default(),
            c.vs_off_pct.map(|p| format!("{p:.0}%")).unwrap_or_default(),
            num(c.p50_us, 0),
            num(c.p99_us, 0),
            op("kvm_exits", 2),
            op("l1_exits", 2),
            op("viommu_requests", 2),
            op("notifications", 3),
            op("vfio_calls", 2),
            num(c.per_op.get("vfio_ns").map(|n| n / 1000.0), 2),
            c.poll_cpu_share.map(|s| format!("{:.0}%", s * 100.0)).unwrap_or_default(),
            c.vcpu_cpu_share.map(|s| format!("{:.0}%", s * 100.0)).unwrap_or_default(),
            num(c.peak_mapped_bytes.map(|b| b / 1024.0), 0),
        );
    }
    out
}

/// The workloads of `cells` in order, and the (VMM/mode) series.
fn groups(cells: &[Cell]) -> (Vec<String>, Vec<String>) {
    let mut works = Vec::new();
    let mut series = Vec::new();
    for c in cells {
        if !works.contains(&c.workload) {
            works.push(c.workload.clone());
        }
        let s = format!("{}/{}", c.vmm, c.mode);
        if !series.contains(&s) {
            series.push(s);
        }
    }
    (works, series)
}

/// One chart of `cells`: a group per workload, a bar per VMM/mode (those
/// `keep` admits) with `value`.
fn chart(
    path: &Path,
    spec: &Chart,
    cells: &[Cell],
    keep: impl Fn(&Cell) -> bool,
    value: impl Fn(&Cell) -> Option<f64>,
) -> Result<(), ReportError> {
    let (works, names) = groups(cells);
    let series: Vec<Series> = names
        .iter()
        .filter(|n| {
            cells
                .iter()
                .any(|c| format!("{}/{}", c.vmm, c.mode) == **n && keep(c))
        })
        .map(|n| Series {
            name: n.clone(),
            values: works
                .iter()
                .map(|w| {
                    cells
                        .iter()
                        .find(|c| format!("{}/{}", c.vmm, c.mode) == *n && c.workload == *w)
                        .and_then(&value)
                })
                .collect(),
        })
        .collect();
    let groups: Vec<&str> = works.iter().map(String::as_str).collect();
    draw(path, spec, &groups, &series)
}

/// How far (max / min) the repetitions of an `off` cell may spread before
/// its workload's ratios are left out of `relative.svg`.
pub const UNSTABLE: f64 = 10.0;

/// The workloads whose `off` throughput, for some VMM, spread over more
/// than [`UNSTABLE`]× between repetitions.
pub fn unstable_baselines(cells: &[Cell]) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for c in cells.iter().filter(|c| c.mode == "off") {
        let Some(t) = c.throughput else { continue };
        if t.max > t.min * UNSTABLE && !out.contains(&c.workload) {
            out.push(c.workload.clone());
        }
    }
    out
}

/// Reads the rows (a file, or stdin for `-`), writes `bench.csv`,
/// `bench.json`, `bench.md` (the cells, then the time per operation of
/// [`breakdown`]), `relative.svg`, `exits.svg` and `breakdown.svg` into
/// `out_dir` and the markdown to `stdout`.
pub fn run(
    input: &str,
    out_dir: &Path,
    stdin: &mut dyn Read,
    stdout: &mut dyn Write,
) -> Result<(), ReportError> {
    let mut text = String::new();
    let read = if input == "-" {
        stdin.read_to_string(&mut text).map(|_| ())
    } else {
        std::fs::read_to_string(input).map(|t| text = t)
    };
    read.map_err(|source| ReportError::Read {
        input: input.to_string(),
        source,
    })?;
    let parsed = parse_bench(&text, input)?;
    let cells = aggregate(&parsed.rows);
    let fail = |p: &Path, e: std::io::Error| ReportError::Write {
        path: p.display().to_string(),
        message: e.to_string(),
    };
    std::fs::create_dir_all(out_dir).map_err(|e| fail(out_dir, e))?;
    let md = format!(
        "{}\nTime per operation (µs; parts from iovmm's counters, see breakdown.svg):\n\n{}",
        markdown(&parsed, &cells),
        breakdown::markdown(&cells)
    );
    for (name, body) in [
        ("bench.csv", csv(&cells)),
        ("bench.json", json(&parsed, &cells)),
        ("bench.md", md.clone()),
    ] {
        let p: PathBuf = out_dir.join(name);
        std::fs::write(&p, body).map_err(|e| fail(&p, e))?;
    }
    // A workload whose `off` baseline spread over more than UNSTABLE×
    // between repetitions (in the lab: L2→L1 TCP stuck in retransmission
    // timeouts in some runs) has no meaningful ratio: it stays in the
    // tables and is left out of this chart, which says so.
    let unstable = unstable_baselines(&cells);
    let rel_cells: Vec<Cell> = cells
        .iter()
        .filter(|c| !unstable.contains(&c.workload))
        .cloned()
        .collect();
    let left_out = if unstable.is_empty() {
        String::new()
    } else {
        format!(" (left out, off unstable: {})", unstable.join(", "))
    };
    let rel = Chart {
        caption: format!("bench: throughput relative to the same VMM's off{left_out}"),
        y_desc: "% of off",
        scale: Scale::Linear { headroom: 1.6 },
        value_label: whole_percent,
        legend: SeriesLabelPosition::UpperRight,
    };
    chart(
        &out_dir.join("relative.svg"),
        &rel,
        &rel_cells,
        |c| c.mode != "off",
        |c| c.vs_off_pct,
    )?;
    let exits = Chart {
        caption: "bench: L2's VM exits per operation (L1's KVM counter)".into(),
        y_desc: "exits per request or packet",
        scale: Scale::Linear { headroom: 1.6 },
        value_label: two_decimals,
        legend: SeriesLabelPosition::UpperRight,
    };
    chart(
        &out_dir.join("exits.svg"),
        &exits,
        &cells,
        |_| true,
        |c| c.per_op.get("l1_exits").copied(),
    )?;
    breakdown::write_svg(&out_dir.join("breakdown.svg"), &cells)?;
    stdout
        .write_all(md.as_bytes())
        .map_err(|e| fail(Path::new("stdout"), e))?;
    Ok(())
}

/// The `iovmm-bench-report ROWS [--out-dir DIR]` command line; returns the
/// exit code (0, 1 on a failure, 2 on a usage error).
pub fn main(
    args: impl IntoIterator<Item = std::ffi::OsString>,
    stdin: &mut dyn Read,
    stdout: &mut dyn Write,
    stderr: &mut dyn Write,
) -> i32 {
    let args: Vec<String> = args
        .into_iter()
        .map(|a| a.to_string_lossy().into_owned())
        .collect();
    let mut input = None;
    let mut out_dir = PathBuf::from(".");
    let mut i = 0;
    while i < args.len() {
        match args[i].as_str() {
            "--out-dir" if i + 1 < args.len() => {
                out_dir = PathBuf::from(&args[i + 1]);
                i += 1;
            }
            "--help" | "-h" => {
                let _ = writeln!(
                    stdout,
                    "usage: iovmm-bench-report ROWS|- [--out-dir DIR]\n\
                     Aggregates the LAB-ROW bench=1 lines of lab/run bench: bench.csv, bench.json,\n\
                     bench.md, relative.svg, exits.svg, breakdown.svg in DIR; the markdown tables on stdout."
                );
                return 0;
            }
            a if input.is_none() && !a.starts_with("--") => input = Some(a.to_string()),
            a => {
                let _ = writeln!(
                    stderr,
                    "iovmm-bench-report: unexpected argument '{a}' (try --help)"
                );
                return 2;
            }
        }
        i += 1;
    }
    let Some(input) = input else {
        let _ = writeln!(
            stderr,
            "iovmm-bench-report: no rows file given (try --help)"
        );
        return 2;
    };
    match run(&input, &out_dir, stdin, stdout) {
        Ok(()) => 0,
        Err(e) => {
            let _ = writeln!(stderr, "iovmm-bench-report: {e}");
            1
        }
    }
}
