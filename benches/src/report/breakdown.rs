//! Where an operation's time goes, per bench cell: the wall time per
//! operation (the inverse of the throughput, in requests or packets)
//! split into what iovmm measures itself and the rest, as a markdown
//! table (`breakdown.md`) and a stacked bar chart (`breakdown.svg`, one
//! panel per workload, one bar per VMM/mode).
//!
//! The parts, each the median over the repetitions of a counter's
//! difference across the item divided by its operations:
//!
//! * **host IOMMU**: the time of the VFIO `MAP_DMA`/`UNMAP_DMA` ioctls
//!   (pinning, IO page-table update, IOTLB invalidation) — `vfio_ns`;
//! * **request handling**: virtio-iommu device time per request (decode,
//!   tables, answer) without the VFIO ioctls —
//!   `viommu_handling_ns - vfio_ns`;
//! * **exits in iovmm**: the handling time of the exits that reach
//!   iovmm's run loop (MMIO, port I/O) — `vmm_exit_ns`. Exits KVM handles
//!   itself (ioeventfd kicks, HLT, interrupt windows) are counted, not
//!   timed, so their cost is in the rest;
//! * **rest**: the wall time left — the guest's own work (its driver and
//!   DMA layer included), KVM's in-kernel exit handling, thread wake-ups,
//!   the network and the load generator.
//!
//! The first three are serial with the guest in strict mode (the guest
//! driver waits for each request), so their sum is a lower bound of what
//! the protection adds to an operation. A VMM with no counters (QEMU) has
//! only the whole. Medians of the parts are taken separately, so they may
//! not add up to the median whole: the rest is clamped at zero.

use std::fmt::Write as _;
use std::path::Path;

use plotters::prelude::*;

use super::bench::Cell;
use super::ReportError;

/// The names of the parts, in stacking order (bottom first).
pub const PARTS: [&str; 4] = [
    "host IOMMU (VFIO ioctls)",
    "virtio-iommu request handling",
    "exits handled in iovmm",
    "rest (guest, KVM, wake-ups, network)",
];

/// Part colours, in [`PARTS`] order.
const COLOURS: [RGBColor; 4] = [
    RGBColor(214, 39, 40),
    RGBColor(255, 127, 14),
    RGBColor(31, 119, 180),
    RGBColor(190, 190, 190),
];

/// The time of one operation of a cell, in ns.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Split {
    /// The wall time per operation (`secs / ops`).
    pub wall_ns: f64,
    /// The parts, in [`PARTS`] order; `None` where the VMM has no counter.
    pub parts: [Option<f64>; 4],
}

/// The split of `cell`, or `None` when it has no wall time per operation
/// (it failed every repetition, or its rows have no `secs`/`ops`).
pub fn split(cell: &Cell) -> Option<Split> {
    let get = |k: &str| cell.per_op.get(k).copied();
    let wall = get("wall_ns")?;
    let vfio = get("vfio_ns");
    let handling = get("viommu_handling_ns").map(|h| (h - vfio.unwrap_or(0.0)).max(0.0));
    let exits = get("vmm_exit_ns");
    let known: f64 = [vfio, handling, exits].iter().flatten().sum();
    Some(Split {
        wall_ns: wall,
        parts: [vfio, handling, exits, Some((wall - known).max(0.0))],
    })
}

fn us(v: Option<f64>) -> String {
    v.map(|n| format!("{:.1}", n / 1000.0)).unwrap_or_default()
}

/// The breakdown as a markdown table, µs per operation, one line per cell
/// that has a wall time.
pub fn markdown(cells: &[Cell]) -> String {
    let mut out = String::from(
        "| vmm | mode | workload | wall µs/op | host IOMMU µs/op | request handling µs/op \
         | exits in iovmm µs/op | rest µs/op | extra vs off µs/op |\n|---|---|---|---|---|---|---|---|---|\n",
    );
    for c in cells {
        let Some(s) = split(c) else { continue };
        let off = cells
            .iter()
            .find(|o| o.vmm == c.vmm && o.workload == c.workload && o.mode == "off")
            .and_then(split);
        let extra = off
            .filter(|_| c.mode != "off")
            .map(|o| s.wall_ns - o.wall_ns);
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            c.vmm,
            c.mode,
            c.workload,
            us(Some(s.wall_ns)),
            us(s.parts[0]),
            us(s.parts[1]),
            us(s.parts[2]),
            us(s.parts[3]),
            us(extra),
        );
    }
    out
}

/// A short bar label for a VMM/mode: iovmm's modes by name (`pt` for
/// passthrough, `s+poll` for strict+poll), other VMMs with their initial.
fn short(vmm: &str, mode: &str) -> String {
    let m = match mode {
        "passthrough" => "pt",
        "strict+poll" => "s+poll",
        "lazy+poll" => "l+poll",
        m => m,
    };
    match vmm {
        "iovmm" => m.to_string(),
        v => format!(
            "{}:{m}",
            v.chars().next().unwrap_or('?').to_ascii_uppercase()
        ),
    }
}

/// Panel size in pixels, and panels per row.
const PANEL: (u32, u32) = (520, 380);
const PER_ROW: usize = 3;
/// Pixels above the panels for the caption and the legend.
const HEADER: u32 = 80;

/// Draws `breakdown.svg` at `path`: one panel per workload of `cells`, a
/// stacked bar (µs per operation) per VMM/mode.
pub fn write_svg(path: &Path, cells: &[Cell]) -> Result<(), ReportError> {
    let fail = |e: &dyn std::fmt::Display| ReportError::Write {
        path: path.display().to_string(),
        message: e.to_string(),
    };
    let mut works: Vec<&str> = Vec::new();
    for c in cells {
        if !works.contains(&c.workload.as_str()) {
            works.push(&c.workload);
        }
    }
    let rows = works.len().div_ceil(PER_ROW).max(1);
    let cols = works.len().clamp(1, PER_ROW);
    let size = (
        PANEL.0 * cols as u32,
        HEADER + PANEL.1 * u32::try_from(rows).unwrap_or(1),
    );
    let root = SVGBackend::new(path, size).into_drawing_area();
    root.fill(&WHITE).map_err(|e| fail(&e))?;
    let (head, body) = root.split_vertically(HEADER);
    head.draw(&Text::new(
        "bench: time per operation (µs), split by iovmm's own counters",
        (16, 8),
        ("sans-serif", 26),
    ))
    .map_err(|e| fail(&e))?;
    for (i, (name, colour)) in PARTS.iter().zip(COLOURS).enumerate() {
        let x = 16 + 300 * i as i32;
        head.draw(&Rectangle::new([(x, 48), (x + 14, 62)], colour.filled()))
            .map_err(|e| fail(&e))?;
        head.draw(&Text::new(*name, (x + 20, 47), ("sans-serif", 16)))
            .map_err(|e| fail(&e))?;
    }
    let panels = body.split_evenly((rows, cols));
    for (work, area) in works.iter().zip(panels.iter()) {
        let bars: Vec<(String, Split)> = cells
            .iter()
            .filter(|c| c.workload == *work)
            .filter_map(|c| Some((short(&c.vmm, &c.mode), split(c)?)))
            .collect();
        let top = bars
            .iter()
            .map(|(_, s)| s.wall_ns / 1000.0)
            .fold(0.0, f64::max);
        let top = if top > 0.0 { top * 1.15 } else { 1.0 };
        let n = bars.len().max(1);
        let labels: Vec<String> = bars.iter().map(|(l, _)| l.clone()).collect();
        let mut chart = ChartBuilder::on(area)
            .caption(*work, ("sans-serif", 20))
            .margin(10)
            .x_label_area_size(30)
            .y_label_area_size(72)
            .build_cartesian_2d(-0.5..n as f64 - 0.5, 0.0..top)
            .map_err(|e| fail(&e))?;
        chart
            .configure_mesh()
            .disable_x_mesh()
            .x_labels(n)
            .x_label_formatter(&|x: &f64| {
                let i = x.round();
                if (x - i).abs() < 1e-6 && i >= 0.0 {
                    labels.get(i as usize).cloned().unwrap_or_default()
                } else {
                    String::new()
                }
            })
            .max_light_lines(1)
            .y_label_formatter(&|v: &f64| format!("{v:.0}"))
            .y_desc("µs per op")
            .label_style(("sans-serif", 14))
            .draw()
            .map_err(|e| fail(&e))?;
        for (k, (_, s)) in bars.iter().enumerate() {
            let x = k as f64;
            let mut base = 0.0;
            let mut rects = Vec::new();
            for (p, colour) in s.parts.iter().zip(COLOURS) {
                let Some(v) = p.map(|ns| ns / 1000.0).filter(|v| *v > 0.0) else {
                    continue;
                };
                rects.push(Rectangle::new(
                    [(x - 0.35, base), (x + 0.35, base + v)],
                    colour.filled(),
                ));
                base += v;
            }
            chart.draw_series(rects).map_err(|e| fail(&e))?;
            let label = format!("{:.0}", s.wall_ns / 1000.0);
            chart
                .draw_series(std::iter::once(Text::new(
                    label,
                    (x - 0.3, base.max(s.wall_ns / 1000.0) + top * 0.06),
                    ("sans-serif", 13),
                )))
                .map_err(|e| fail(&e))?;
        }
    }
    root.present().map_err(|e| fail(&e))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::bench::{aggregate, parse_bench};

    const ROWS: &str = "\
LAB-ROW bench=1 vmm=iovmm mode=off workload=w rep=1 failed=0 throughput=500 ops=1000 secs=2 vmm_exit_ns=1000000
LAB-ROW bench=1 vmm=iovmm mode=strict workload=w rep=1 failed=0 throughput=100 ops=1000 secs=10 vfio_map_ns=2000000 vfio_unmap_ns=1000000 viommu_handling_ns=5000000 vmm_exit_ns=1000000
LAB-ROW bench=1 vmm=qemu mode=strict workload=w rep=1 failed=0 throughput=50 ops=1000 secs=20
LAB-ROW bench=1 vmm=qemu mode=off workload=w rep=1 failed=1
LAB-ROW bench=1 vmm=iovmm mode=lazy workload=v rep=1 failed=0 throughput=50 ops=10 secs=0.0001 vfio_map_ns=900000
";

    fn cells() -> Vec<Cell> {
        aggregate(&parse_bench(ROWS, "t").unwrap().rows)
    }

    fn find<'a>(cells: &'a [Cell], vmm: &str, mode: &str, work: &str) -> &'a Cell {
        cells
            .iter()
            .find(|c| c.vmm == vmm && c.mode == mode && c.workload == work)
            .unwrap()
    }

    #[test]
    fn parts_come_from_the_counters_and_the_rest_fills_the_wall_time() {
        let cells = cells();
        let s = split(find(&cells, "iovmm", "strict", "w")).unwrap();
        assert_eq!(s.wall_ns, 10_000_000.0, "10 s / 1000 ops");
        assert_eq!(
            s.parts,
            [Some(3000.0), Some(2000.0), Some(1000.0), Some(9_994_000.0)]
        );
        let q = split(find(&cells, "qemu", "strict", "w")).unwrap();
        assert_eq!(q.parts, [None, None, None, Some(20_000_000.0)]);
        assert!(split(find(&cells, "qemu", "off", "w")).is_none(), "failed");
        // Parts above the wall time leave a rest of zero, never negative.
        let l = split(find(&cells, "iovmm", "lazy", "v")).unwrap();
        assert_eq!(l.parts[3], Some(0.0));
    }

    #[test]
    fn table_has_the_extra_time_against_the_same_vmms_off() {
        let md = markdown(&cells());
        let strict = md.lines().find(|l| l.contains("| strict | w |")).unwrap();
        assert!(strict.contains("| 10000.0 | 3.0 | 2.0 | 1.0 |"), "{strict}");
        assert!(strict.ends_with("| 8000.0 |"), "10 ms - 2 ms: {strict}");
        let q = md
            .lines()
            .find(|l| l.starts_with("| qemu | strict"))
            .unwrap();
        assert!(q.ends_with("| 20000.0 |  |"), "no QEMU off to compare: {q}");
        assert!(!md.contains("| qemu | off"), "a failed cell has no line");
    }

    #[test]
    fn chart_has_a_panel_per_workload_and_the_legend() {
        let dir = std::env::temp_dir().join(format!("iovmm-breakdown-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("breakdown.svg");
        write_svg(&p, &cells()).unwrap();
        let svg = std::fs::read_to_string(&p).unwrap();
        for word in [
            "w",
            "v",
            "strict",
            "Q:strict",
            "host IOMMU (VFIO ioctls)",
            "10000",
        ] {
            assert!(svg.lines().any(|l| l.trim() == word), "{word} missing");
        }
        std::fs::remove_dir_all(dir).unwrap();
        assert!(write_svg(Path::new("/nonexistent-iovmm/b.svg"), &cells()).is_err());
    }

    #[test]
    fn short_labels() {
        assert_eq!(short("iovmm", "strict+poll"), "s+poll");
        assert_eq!(short("iovmm", "passthrough"), "pt");
        assert_eq!(short("qemu", "off"), "Q:off");
        assert_eq!(short("iovmm", "coop"), "coop");
    }
}
