//! The application benchmark's results (`lab/run bench`): parsing its
//! `LAB-ROW bench=1` lines and aggregating the repetitions of each cell.
//!
//! One row per (VMM, mode, workload, repetition), for example
//!
//! ```text
//! LAB-ROW bench=1 vmm=iovmm mode=strict workload=redis-set-64 rep=1 failed=0 \
//!   unit=req/s throughput=812.5 p50_us=4100 p99_us=9800 ops=2000 secs=2.6 \
//!   l1_exits=51234 kvm_exits=51200 viommu_map=4100 viommu_unmap=4090
//! LAB-ROW bench=1 vmm=qemu mode=off workload=nginx-4k rep=2 failed=1 why=no-numbers
//! ```
//!
//! (wrapped here). `vmm`, `mode`, `workload`, `rep` and `failed` are
//! required; every other `key=value` with a numeric value is a metric, a
//! missing one is absent (never zero), and `unit` names the throughput's
//! unit. A `LAB-BENCH settings k=v ...` line gives the settings the numbers
//! hold under. [`aggregate`] turns the rows into one [`Cell`] per (VMM,
//! mode, workload): medians and spread over the repetitions that did not
//! fail, per-operation counters, and throughput relative to the same VMM's
//! mode `off`. [`super::bench_output`] renders them.

use std::collections::BTreeMap;

use super::ReportError;

/// The marker of a bench row (a `LAB-ROW` line with `bench=1`).
pub const BENCH_ROW: &str = "LAB-ROW bench=1";
/// The marker of the settings line.
pub const SETTINGS: &str = "LAB-BENCH settings";

/// One `LAB-ROW bench=1` line.
#[derive(Debug, Clone, PartialEq)]
pub struct BenchRow {
    /// The VMM (`iovmm`, `qemu`).
    pub vmm: String,
    /// The IOMMU mode (`off`, `strict`, `strict+poll`, ...).
    pub mode: String,
    /// The workload item (`redis-set-64`, `nginx-4k`, `iperf3-tx`, ...).
    pub workload: String,
    /// The repetition, from 1.
    pub rep: u32,
    /// The cell gave no numbers (L2 not ready, or the load tool failed).
    pub failed: bool,
    /// The throughput's unit (`req/s`, `Mbit/s`), if given.
    pub unit: Option<String>,
    /// Every other numeric field.
    pub metrics: BTreeMap<String, f64>,
}

impl BenchRow {
    /// The metric `key`, if the row has it.
    pub fn get(&self, key: &str) -> Option<f64> {
        self.metrics.get(key).copied()
    }

    /// The sum of the metrics `keys`, if the row has at least one of them.
    fn sum(&self, keys: &[&str]) -> Option<f64> {
        let v: Vec<f64> = keys.iter().filter_map(|k| self.get(k)).collect();
        (!v.is_empty()).then(|| v.iter().sum())
    }
}

/// Everything a bench rows file holds.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct BenchInput {
    /// The rows, in input order.
    pub rows: Vec<BenchRow>,
    /// The settings line's `key=value` pairs (the last such line wins).
    pub settings: Vec<(String, String)>,
}

/// Parses the bench rows and the settings line out of `text` (other lines
/// are ignored; markers may follow a prefix). `input` names the source in
/// errors.
pub fn parse_bench(text: &str, input: &str) -> Result<BenchInput, ReportError> {
    let mut out = BenchInput::default();
    for (n, line) in text.lines().enumerate() {
        if let Some(at) = line.find(SETTINGS) {
            out.settings = line[at + SETTINGS.len()..]
                .split_whitespace()
                .filter_map(|kv| kv.split_once('='))
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect();
        } else if let Some(at) = line.find(BENCH_ROW) {
            let row = parse_row(&line[at + BENCH_ROW.len()..]).map_err(|problem| {
                ReportError::BadRow {
                    input: input.to_string(),
                    line: n + 1,
                    problem,
                }
            })?;
            out.rows.push(row);
        }
    }
    if out.rows.is_empty() {
        return Err(ReportError::NoRows {
            input: input.to_string(),
        });
    }
    Ok(out)
}

fn parse_row(fields: &str) -> Result<BenchRow, String> {
    let mut kv = BTreeMap::new();
    for f in fields.split_whitespace() {
        let (k, v) = f
            .split_once('=')
            .ok_or_else(|| format!("field '{f}' is not key=value"))?;
        kv.insert(k, v);
    }
    let text = |k: &str| match kv.get(k) {
        Some(v) if !v.is_empty() => Ok(v.to_string()),
        _ => Err(format!("missing {k}=")),
    };
    let (vmm, mode, workload) = (text("vmm")?, text("mode")?, text("workload")?);
    let rep = text("rep")?
        .parse::<u32>()
        .map_err(|_| format!("rep={} is not a repetition number", kv["rep"]))?;
    let failed = match text("failed")?.as_str() {
        "0" => false,
        "1" => true,
        v => return Err(format!("failed={v} (want 0 or 1)")),
    };
    let mut metrics = BTreeMap::new();
    for (k, v) in &kv {
        if ["vmm", "mode", "workload", "rep", "failed", "unit"].contains(k) {
            continue;
        }
        if let Ok(x) = v.parse::<f64>() {
            if x.is_finite() {
                metrics.insert(k.to_string(), x);
            }
        }
    }
    if !failed && !metrics.get("throughput").is_some_and(|t| *t > 0.0) {
        return Err("a row that did not fail needs throughput > 0".into());
    }
    Ok(BenchRow {
        vmm,
        mode,
        workload,
        rep,
        failed,
        unit: kv.get("unit").map(|u| u.to_string()),
        metrics,
    })
}

/// Median, smallest and largest of some values.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Spread {
    /// The median (the mean of the middle two for an even count).
    pub median: f64,
    /// The smallest value.
    pub min: f64,
    /// The largest value.
    pub max: f64,
}

/// The spread of `values`, or `None` when there are none.
pub fn spread(values: &[f64]) -> Option<Spread> {
    if values.is_empty() {
        return None;
    }
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    let n = v.len();
    let median = if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    };
    Some(Spread {
        median,
        min: v[0],
        max: v[n - 1],
    })
}

/// The per-operation counters of a cell: name, and the row keys summed
/// for it (divided by the row's `ops`).
pub const PER_OP: [(&str, &[&str]); 9] = [
    ("kvm_exits", &["kvm_exits"]),
    ("vmm_exits", &["vmm_exits"]),
    ("l1_exits", &["l1_exits"]),
    ("viommu_requests", &["viommu_map", "viommu_unmap"]),
    ("notifications", &["notifications"]),
    ("vfio_calls", &["vfio_map_calls", "vfio_unmap_calls"]),
    ("vfio_ns", &["vfio_map_ns", "vfio_unmap_ns"]),
    ("vmm_exit_ns", &["vmm_exit_ns"]),
    ("viommu_handling_ns", &["viommu_handling_ns"]),
];

/// One (VMM, mode, workload) over its repetitions.
#[derive(Debug, Clone, PartialEq)]
pub struct Cell {
    /// The VMM.
    pub vmm: String,
    /// The IOMMU mode.
    pub mode: String,
    /// The workload item.
    pub workload: String,
    /// The throughput's unit (of the first row that names one).
    pub unit: Option<String>,
    /// Repetitions that gave numbers.
    pub ok: usize,
    /// Repetitions marked `failed=1`.
    pub failed: usize,
    /// Throughput over the repetitions that gave numbers.
    pub throughput: Option<Spread>,
    /// Median throughput as a percentage of the same VMM's mode `off`
    /// (same workload).
    pub vs_off_pct: Option<f64>,
    /// Median p50 latency, µs.
    pub p50_us: Option<f64>,
    /// Median p99 latency, µs.
    pub p99_us: Option<f64>,
    /// Medians of the [`PER_OP`] counters per operation, of
    /// `kvm_exit_<reason>` per operation, and the wall time per operation
    /// (`wall_ns`: `secs` / `ops`), by name.
    pub per_op: BTreeMap<String, f64>,
    /// Median share of one core the poll thread used (its CPU time over
    /// the item's wall time), when polled.
    pub poll_cpu_share: Option<f64>,
    /// Median share of one core L2's vCPU threads used.
    pub vcpu_cpu_share: Option<f64>,
    /// The highest peak of guest memory mapped through the virtual IOMMU.
    pub peak_mapped_bytes: Option<f64>,
}

/// The known modes first in this order, then others as they come.
const MODE_ORDER: [&str; 7] = [
    "off",
    "passthrough",
    "coop",
    "lazy",
    "lazy+poll",
    "strict",
    "strict+poll",
];

fn median_of(rows: &[&BenchRow], f: impl Fn(&BenchRow) -> Option<f64>) -> Option<f64> {
    spread(&rows.iter().filter_map(|r| f(r)).collect::<Vec<_>>()).map(|s| s.median)
}

/// One [`Cell`] per (VMM, mode, workload) of `rows`: VMMs and workloads in
/// order of first appearance, modes in [`MODE_ORDER`] (others after).
pub fn aggregate(rows: &[BenchRow]) -> Vec<Cell> {
    let mut vmms: Vec<&str> = Vec::new();
    let mut works: Vec<&str> = Vec::new();
    let mut modes: Vec<&str> = Vec::new();
    for r in rows {
        for (list, v) in [
            (&mut vmms, &r.vmm),
            (&mut works, &r.workload),
            (&mut modes, &r.mode),
        ] {
            if !list.contains(&v.as_str()) {
                list.push(v);
            }
        }
    }
    let rank = |m: &str| {
        MODE_ORDER
            .iter()
            .position(|k| *k == m)
            .unwrap_or(MODE_ORDER.len())
    };
    modes.sort_by_key(|m| rank(m)); // stable: unknown modes keep input order
    let mut cells = Vec::new();
    for vmm in &vmms {
        for mode in &modes {
            for work in &works {
                let all: Vec<&BenchRow> = rows
                    .iter()
                    .filter(|r| r.vmm == *vmm && r.mode == *mode && r.workload == *work)
                    .collect();
                if all.is_empty() {
                    continue;
                }
                cells.push(cell(vmm, mode, work, &all));
            }
        }
    }
    let off: BTreeMap<(String, String), f64> = cells
        .iter()
        .filter(|c| c.mode == "off")
        .filter_map(|c| Some(((c.vmm.clone(), c.workload.clone()), c.throughput?.median)))
        .collect();
    for c in &mut cells {
        let base = off.get(&(c.vmm.clone(), c.workload.clone()));
        c.vs_off_pct = match (c.throughput, base) {
            (Some(t), Some(b)) if *b > 0.0 => Some(t.median * 100.0 / b),
            _ => None,
        };
    }
    cells
}

fn cell(vmm: &str, mode: &str, work: &str, all: &[&BenchRow]) -> Cell {
    let ok: Vec<&BenchRow> = all.iter().copied().filter(|r| !r.failed).collect();
    let per = |r: &BenchRow, keys: &[&str]| {
        let ops = r.get("ops").filter(|o| *o > 0.0)?;
        Some(r.sum(keys)? / ops)
    };
    let mut per_op = BTreeMap::new();
    for (name, keys) in PER_OP {
        if let Some(v) = median_of(&ok, |r| per(r, keys)) {
            per_op.insert(name.to_string(), v);
        }
    }
    // The wall time per operation: the inverse of the throughput in
    // operations (requests or packets), the whole that
    // [`super::breakdown`] splits.
    if let Some(v) = median_of(&ok, |r| {
        Some(r.get("secs")? * 1e9 / r.get("ops").filter(|o| *o > 0.0)?)
    }) {
        per_op.insert("wall_ns".to_string(), v);
    }
    let reasons: Vec<String> = ok
        .iter()
        .flat_map(|r| {
            r.metrics
                .keys()
                .filter(|k| k.starts_with("kvm_exit_"))
                .cloned()
        })
        .collect();
    for k in reasons {
        if let std::collections::btree_map::Entry::Vacant(e) = per_op.entry(k) {
            if let Some(v) = median_of(&ok, |r| per(r, &[e.key().as_str()])) {
                e.insert(v);
            }
        }
    }
    let share = |r: &BenchRow, key: &str, scale: f64| {
        let secs = r.get("secs").filter(|s| *s > 0.0)?;
        Some(r.get(key)? * scale / secs)
    };
    Cell {
        vmm: vmm.to_string(),
        mode: mode.to_string(),
        workload: work.to_string(),
        unit: all.iter().find_map(|r| r.unit.clone()),
        ok: ok.len(),
        failed: all.len() - ok.len(),
        throughput: spread(
            &ok.iter()
                .filter_map(|r| r.get("throughput"))
                .collect::<Vec<_>>(),
        ),
        vs_off_pct: None,
        p50_us: median_of(&ok, |r| r.get("p50_us")),
        p99_us: median_of(&ok, |r| r.get("p99_us")),
        per_op,
        poll_cpu_share: median_of(&ok, |r| share(r, "poll_cpu_ns", 1e-9)),
        // vcpu_ticks are 1/100 s of CPU time.
        vcpu_cpu_share: median_of(&ok, |r| share(r, "vcpu_ticks", 0.01)),
        peak_mapped_bytes: ok
            .iter()
            .filter_map(|r| r.get("peak_mapped_bytes"))
            .reduce(f64::max),
    }
}
