//! Text renderings of a report: CSV for tools, a fixed-width table for people.
//!
//! Both have a fixed set of columns ([`CSV_HEADER`], [`TABLE_HEADINGS`])
//! followed by optional ones ([`OPTIONAL_CSV_COLUMNS`],
//! [`OPTIONAL_TABLE_HEADINGS`]), each shown only when at least one row has
//! the field behind it: the L1 KVM exits, the polling figures and the Redis
//! benchmark.

use super::{LabRow, Mode, ModeSummary};

/// The fixed part of the CSV header; one column per [`ModeSummary`] figure,
/// raw inputs first. [`OPTIONAL_CSV_COLUMNS`] may follow.
pub const CSV_HEADER: &str = "mode,mib,l1_to_l2_s,l2_to_l1_s,l1_to_l2_mib_s,l2_to_l1_mib_s,\
l1_to_l2_vs_off_pct,l2_to_l1_vs_off_pct,map,unmap,notifications,unmap_batches,\
map_p50_ns,unmap_p50_ns,faults";

fn cell<T>(value: Option<T>, show: impl Fn(T) -> String) -> String {
    value.map(show).unwrap_or_default()
}

/// A column of the CSV, the table or both that is shown only when at least
/// one row has the field it depends on.
struct OptionalColumn {
    /// The CSV column name; empty keeps the column out of the CSV.
    csv: &'static str,
    /// The table heading; empty keeps the column out of the table.
    heading: &'static str,
    /// Whether a row has the field that shows the column.
    present: fn(&LabRow) -> bool,
    /// The CSV cell, `None` when absent.
    csv_cell: fn(&ModeSummary) -> Option<String>,
    /// The table cell, `None` when absent.
    table_cell: fn(&ModeSummary) -> Option<String>,
}

/// Exact (shortest round-trip) form of a decimal, as the CSV shows inputs.
fn exact(v: Option<f64>) -> Option<String> {
    v.map(|v| v.to_string())
}

fn whole(v: Option<u64>) -> Option<String> {
    v.map(|v| v.to_string())
}

/// A percentage with `decimals` decimals and a `%` sign.
fn percent(v: Option<f64>, decimals: usize) -> Option<String> {
    v.map(|v| format!("{v:.decimals$}%"))
}

fn csv_pct(v: Option<f64>) -> Option<String> {
    v.map(|v| format!("{v:.1}"))
}

fn rps(v: Option<f64>) -> Option<String> {
    v.map(|v| format!("{v:.0}"))
}

/// Every optional column, in output order. `exits` and `packets` are in the
/// CSV only; the table shows their ratio.
const OPTIONAL: [OptionalColumn; 10] = [
    OptionalColumn {
        csv: "exits",
        heading: "",
        present: |r| r.exits.is_some(),
        csv_cell: |m| whole(m.row.exits),
        table_cell: |_| None,
    },
    OptionalColumn {
        csv: "packets",
        heading: "",
        present: |r| r.packets.is_some(),
        csv_cell: |m| whole(m.row.packets),
        table_cell: |_| None,
    },
    OptionalColumn {
        csv: "exits_per_packet",
        heading: "exits/packet",
        present: |r| r.exits_per_packet.is_some(),
        csv_cell: |m| exact(m.row.exits_per_packet),
        table_cell: |m| m.row.exits_per_packet.map(|v| format!("{v:.2}")),
    },
    OptionalColumn {
        csv: "polled",
        heading: "polled",
        present: |r| r.polled.is_some(),
        csv_cell: |m| whole(m.row.polled),
        table_cell: |m| whole(m.row.polled),
    },
    OptionalColumn {
        csv: "poll_cpu_share",
        heading: "poll CPU",
        present: |r| r.poll_cpu_share.is_some(),
        csv_cell: |m| exact(m.row.poll_cpu_share),
        table_cell: |m| percent(m.row.poll_cpu_share.map(|v| v * 100.0), 1),
    },
    OptionalColumn {
        csv: "idle_poll_cpu_pct",
        heading: "idle poll CPU",
        present: |r| r.idle_poll_cpu_pct.is_some(),
        csv_cell: |m| exact(m.row.idle_poll_cpu_pct),
        table_cell: |m| percent(m.row.idle_poll_cpu_pct, 1),
    },
    OptionalColumn {
        csv: "redis_set_rps",
        heading: "SET req/s",
        present: |r| r.redis_set_rps.is_some(),
        csv_cell: |m| exact(m.row.redis_set_rps),
        table_cell: |m| rps(m.row.redis_set_rps),
    },
    OptionalColumn {
        csv: "redis_set_vs_off_pct",
        heading: "vs off",
        present: |r| r.redis_set_rps.is_some(),
        csv_cell: |m| csv_pct(m.redis_set_vs_off_pct),
        table_cell: |m| percent(m.redis_set_vs_off_pct, 0),
    },
    OptionalColumn {
        csv: "redis_get_rps",
        heading: "GET req/s",
        present: |r| r.redis_get_rps.is_some(),
        csv_cell: |m| exact(m.row.redis_get_rps),
        table_cell: |m| rps(m.row.redis_get_rps),
    },
    OptionalColumn {
        csv: "redis_get_vs_off_pct",
        heading: "vs off",
        present: |r| r.redis_get_rps.is_some(),
        csv_cell: |m| csv_pct(m.redis_get_vs_off_pct),
        table_cell: |m| percent(m.redis_get_vs_off_pct, 0),
    },
];

/// The optional CSV columns, in order; each follows [`CSV_HEADER`] when at
/// least one row has its field (`redis_set_vs_off_pct` goes with
/// `redis_set_rps`, `redis_get_vs_off_pct` with `redis_get_rps`).
pub const OPTIONAL_CSV_COLUMNS: [&str; 10] = [
    "exits",
    "packets",
    "exits_per_packet",
    "polled",
    "poll_cpu_share",
    "idle_poll_cpu_pct",
    "redis_set_rps",
    "redis_set_vs_off_pct",
    "redis_get_rps",
    "redis_get_vs_off_pct",
];

/// The optional table headings, in order; each follows [`TABLE_HEADINGS`]
/// when at least one row has its field. "exits/packet" is L1 KVM exits per
/// network packet, "poll CPU" the poll thread's share of one core over the
/// run and "idle poll CPU" while the guest idled (both in percent), and
/// each Redis rate is followed by its "vs off" percentage.
pub const OPTIONAL_TABLE_HEADINGS: [&str; 8] = [
    "exits/packet",
    "polled",
    "poll CPU",
    "idle poll CPU",
    "SET req/s",
    "vs off",
    "GET req/s",
    "vs off",
];

/// The optional columns that some row of `modes` has a field for.
fn shown(modes: &[ModeSummary]) -> impl Iterator<Item = &'static OptionalColumn> + '_ {
    OPTIONAL
        .iter()
        .filter(|c| modes.iter().any(|m| (c.present)(&m.row)))
}

/// The CSV header for `modes`: [`CSV_HEADER`] and the
/// [`OPTIONAL_CSV_COLUMNS`] that some row has a field for.
pub fn csv_header(modes: &[ModeSummary]) -> String {
    let mut header = String::from(CSV_HEADER);
    for c in shown(modes).filter(|c| !c.csv.is_empty()) {
        header.push(',');
        header.push_str(c.csv);
    }
    header
}

/// Renders `modes` as CSV: [`csv_header`], then one line per mode. Absent
/// values are empty cells; inputs keep their shortest exact form, MiB/s has
/// three decimals and percentages one.
pub fn csv(modes: &[ModeSummary]) -> String {
    let mut out = csv_header(modes);
    out.push('\n');
    let extra: Vec<_> = shown(modes).filter(|c| !c.csv.is_empty()).collect();
    for m in modes {
        let r = &m.row;
        let real = |v: Option<f64>| cell(v, |v| v.to_string());
        let rate = |v: Option<f64>| cell(v, |v| format!("{v:.3}"));
        let pct = |v: Option<f64>| cell(v, |v| format!("{v:.1}"));
        let count = |v: Option<u64>| cell(v, |v| v.to_string());
        let cells = [
            r.mode.name().to_string(),
            real(r.mib),
            real(r.l1_to_l2_s),
            real(r.l2_to_l1_s),
            rate(m.l1_to_l2_mib_s),
            rate(m.l2_to_l1_mib_s),
            pct(m.l1_to_l2_vs_off_pct),
            pct(m.l2_to_l1_vs_off_pct),
            count(r.map),
            count(r.unmap),
            count(r.notifications),
            count(r.unmap_batches),
            count(r.map_p50_ns),
            count(r.unmap_p50_ns),
            count(r.faults),
        ];
        let extra = extra.iter().map(|c| (c.csv_cell)(m).unwrap_or_default());
        let cells: Vec<String> = cells.into_iter().chain(extra).collect();
        out.push_str(&cells.join(","));
        out.push('\n');
    }
    out
}

/// The table's fixed column headings, in order; [`OPTIONAL_TABLE_HEADINGS`]
/// may follow. The first column is left-aligned, all others right-aligned.
pub const TABLE_HEADINGS: [&str; 12] = [
    "mode",
    "L1->L2 MiB/s",
    "vs off",
    "L2->L1 MiB/s",
    "vs off",
    "MAP",
    "UNMAP",
    "notifications",
    "UNMAP passes",
    "MAP p50 us",
    "UNMAP p50 us",
    "faults",
];

/// Renders `modes` as a fixed-width table with [`TABLE_HEADINGS`] and the
/// [`OPTIONAL_TABLE_HEADINGS`] that some row has a field for: each column
/// is as wide as its widest cell (the mode column as the longest mode
/// name), columns are two spaces apart and
/// absent values show as `-`. Throughput has two decimals, "vs off" is a
/// whole percentage of mode `off`'s figure in the same direction (or of the
/// same Redis request), and median latencies are in microseconds with one
/// decimal.
pub fn table(modes: &[ModeSummary]) -> String {
    let dash = || "-".to_string();
    let rate = |v: Option<f64>| v.map_or_else(dash, |v| format!("{v:.2}"));
    let pct = |v: Option<f64>| v.map_or_else(dash, |v| format!("{v:.0}%"));
    let count = |v: Option<u64>| v.map_or_else(dash, |v| v.to_string());
    let micros = |v: Option<u64>| v.map_or_else(dash, |v| format!("{:.1}", v as f64 / 1000.0));
    let extra: Vec<_> = shown(modes).filter(|c| !c.heading.is_empty()).collect();
    let headings = TABLE_HEADINGS
        .into_iter()
        .chain(extra.iter().map(|c| c.heading));
    let mut rows: Vec<Vec<String>> = vec![headings.map(str::to_string).collect()];
    for m in modes {
        let r = &m.row;
        let fixed = [
            r.mode.name().to_string(),
            rate(m.l1_to_l2_mib_s),
            pct(m.l1_to_l2_vs_off_pct),
            rate(m.l2_to_l1_mib_s),
            pct(m.l2_to_l1_vs_off_pct),
            count(r.map),
            count(r.unmap),
            count(r.notifications),
            count(r.unmap_batches),
            micros(r.map_p50_ns),
            micros(r.unmap_p50_ns),
            count(r.faults),
        ];
        let extra = extra.iter().map(|c| (c.table_cell)(m).unwrap_or_else(dash));
        rows.push(fixed.into_iter().chain(extra).collect());
    }
    // The mode column fits every mode name, so tables of different runs line up.
    let mut widths = vec![0usize; rows[0].len()];
    widths[0] = Mode::ALL
        .map(|m| m.name().len())
        .into_iter()
        .max()
        .unwrap_or(0);
    for row in &rows {
        for (w, c) in widths.iter_mut().zip(row) {
            *w = (*w).max(c.chars().count());
        }
    }
    let mut out = String::new();
    for row in &rows {
        let mut line = format!("{:<w$}", row[0], w = widths[0]);
        for (c, w) in row.iter().zip(&widths).skip(1) {
            line.push_str(&format!("  {c:>w$}"));
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::{parse_rows, summarize};

    const INPUT: &str = "\
LAB-ROW mode=off mib=8 l1_to_l2_s=4 l2_to_l1_s=5
LAB-ROW mode=strict mib=8 l1_to_l2_s=8 l2_to_l1_s=10 map=35906 unmap=35650 \
notifications=35000 unmap_batches=35000 map_p50_ns=1200 unmap_p50_ns=1550 faults=0
";

    fn modes() -> Vec<ModeSummary> {
        summarize(&parse_rows(INPUT, "test").unwrap())
    }

    #[test]
    fn csv_has_header_and_empty_cells_for_absent_values() {
        let text = csv(&modes());
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 3);
        assert_eq!(lines[0], CSV_HEADER);
        assert_eq!(lines[1], "off,8,4,5,2.000,1.600,100.0,100.0,,,,,,,");
        assert_eq!(
            lines[2],
            "strict,8,8,10,1.000,0.800,50.0,50.0,35906,35650,35000,35000,1200,1550,0"
        );
        let columns = CSV_HEADER.split(',').count();
        assert!(lines.iter().all(|l| l.split(',').count() == columns));
    }

    #[test]
    fn csv_of_nothing_is_just_the_header() {
        assert_eq!(csv(&[]), format!("{CSV_HEADER}\n"));
    }

    #[test]
    fn table_is_aligned_and_shows_dashes_for_absent_values() {
        let text = table(&modes());
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 3);
        assert!(lines[0].starts_with("mode         L1->L2 MiB/s  vs off  L2->L1 MiB/s"));
        assert!(lines[0].ends_with("UNMAP p50 us  faults"));
        assert!(lines[1].starts_with("off                  2.00    100%          1.60    100%"));
        assert!(lines[1].ends_with("-"));
        assert!(lines[2].starts_with("strict               1.00     50%          0.80     50%"));
        assert!(lines[2].contains("  35906  35650"));
        assert!(lines[2].ends_with("1.2           1.6       0"));
        // Every right-aligned column ends at the same offset on each line.
        let end_of = |line: &str, cell: &str| line.find(cell).unwrap() + cell.len();
        assert_eq!(end_of(lines[0], "MAP p50 us"), end_of(lines[2], "1.2"));
        assert_eq!(end_of(lines[0], "notifications"), end_of(lines[2], "35000"));
        assert_eq!(lines[0].len(), lines[2].len());
    }

    #[test]
    fn table_widens_columns_for_large_values() {
        let mut m = modes();
        m[1].row.map = Some(123_456_789_012_345);
        let text = table(&m);
        let lines: Vec<&str> = text.lines().collect();
        let end = lines[2].find("123456789012345").unwrap() + 15;
        assert_eq!(lines[0].find("  MAP").unwrap() + 5, end);
    }
}
