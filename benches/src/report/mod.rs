//! Per-mode lab results: parsing `LAB-ROW` lines and deriving throughput.
//!
//! A lab run prints one `LAB-ROW` line per IOMMU mode, for example
//!
//! ```text
//! lab: LAB-ROW mode=strict mib=8 l1_to_l2_s=12.3 l2_to_l1_s=10.1 map=35906 unmap=35650
//! ```
//!
//! Fields are `key=value` pairs in any order. Numeric fields may be missing
//! (mode `off` has no virtual IOMMU, so it has no request counters); a missing
//! or empty value is *absent*, never zero. Unknown keys are ignored so that
//! the lab can add fields without breaking older reports.
//!
//! [`parse_rows`] turns the text into one [`LabRow`] per mode and
//! [`summarize`] adds throughput in MiB/s and throughput relative to `off`.
//! The [`output`] module renders CSV and the text table, [`plot`] the SVG
//! charts and [`cli`] ties them together for the `iovmm-report` binary.

pub mod cli;
pub mod output;
pub mod plot;

use std::fmt;

/// The marker that introduces a result row; it may appear anywhere in a line.
pub const ROW_MARKER: &str = "LAB-ROW";

/// An IOMMU policy the lab measures, in report order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Mode {
    /// No virtual IOMMU at all: the baseline.
    Off,
    /// A virtual IOMMU whose domain passes DMA through untranslated.
    Passthrough,
    /// Translated DMA with batched (deferred) UNMAP requests.
    Lazy,
    /// Translated DMA with one UNMAP request per unmapped buffer.
    Strict,
}

impl Mode {
    /// Every mode, in the order reports list them.
    pub const ALL: [Mode; 4] = [Mode::Off, Mode::Passthrough, Mode::Lazy, Mode::Strict];

    /// The name used in `mode=` fields and in every output.
    pub fn name(self) -> &'static str {
        match self {
            Mode::Off => "off",
            Mode::Passthrough => "passthrough",
            Mode::Lazy => "lazy",
            Mode::Strict => "strict",
        }
    }

    /// The mode called `name` (exact, lower case), if there is one.
    pub fn from_name(name: &str) -> Option<Mode> {
        Mode::ALL.into_iter().find(|m| m.name() == name)
    }
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Everything that can stop a report; `Display` gives the one-line message.
#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    /// The command line is wrong; the text says how.
    #[error("{0} (try --help)")]
    Usage(String),
    /// The rows file (or stdin) could not be read.
    #[error("cannot read {input}: {source}")]
    Read {
        /// The path given, or `stdin`.
        input: String,
        /// The underlying I/O error.
        source: std::io::Error,
    },
    /// The input holds no `LAB-ROW` line at all.
    #[error("no {ROW_MARKER} lines in {input}")]
    NoRows {
        /// The path given, or `stdin`.
        input: String,
    },
    /// A `LAB-ROW` line could not be understood.
    #[error("{input}:{line}: {problem}")]
    BadRow {
        /// The path given, or `stdin`.
        input: String,
        /// The 1-based line number.
        line: usize,
        /// What is wrong with the line.
        problem: String,
    },
    /// An output file or directory could not be written.
    #[error("cannot write {path}: {message}")]
    Write {
        /// The file or directory concerned.
        path: String,
        /// What went wrong.
        message: String,
    },
}

/// One mode's raw results as printed by the lab; `None` means absent.
#[derive(Debug, Clone, PartialEq)]
pub struct LabRow {
    /// The IOMMU mode this row measures.
    pub mode: Mode,
    /// MiB copied in each direction.
    pub mib: Option<f64>,
    /// Seconds taken to copy `mib` from L1 to L2.
    pub l1_to_l2_s: Option<f64>,
    /// Seconds taken to copy `mib` from L2 to L1.
    pub l2_to_l1_s: Option<f64>,
    /// MAP requests the virtual IOMMU handled.
    pub map: Option<u64>,
    /// UNMAP requests the virtual IOMMU handled.
    pub unmap: Option<u64>,
    /// Notifications (interrupts) sent to the guest.
    pub notifications: Option<u64>,
    /// Queue passes that carried UNMAP requests ("UNMAP passes").
    pub unmap_batches: Option<u64>,
    /// Median MAP latency in nanoseconds.
    pub map_p50_ns: Option<u64>,
    /// Median UNMAP latency in nanoseconds.
    pub unmap_p50_ns: Option<u64>,
    /// Faults the virtual IOMMU reported.
    pub faults: Option<u64>,
}

impl LabRow {
    /// A row for `mode` with every measurement absent.
    pub fn empty(mode: Mode) -> LabRow {
        LabRow {
            mode,
            mib: None,
            l1_to_l2_s: None,
            l2_to_l1_s: None,
            map: None,
            unmap: None,
            notifications: None,
            unmap_batches: None,
            map_p50_ns: None,
            unmap_p50_ns: None,
            faults: None,
        }
    }

    /// Parses the text after [`ROW_MARKER`]: whitespace-separated `key=value`
    /// fields. Returns a description of the problem on failure.
    pub fn parse_fields(fields: &str) -> Result<LabRow, String> {
        let mut mode = None;
        let mut row = LabRow::empty(Mode::Off);
        for token in fields.split_whitespace() {
            let (key, value) = token
                .split_once('=')
                .ok_or_else(|| format!("field `{token}` is not key=value"))?;
            if key == "mode" {
                mode = Some(Mode::from_name(value).ok_or_else(|| {
                    format!("unknown mode `{value}` (expected off, passthrough, lazy or strict)")
                })?);
                continue;
            }
            if value.is_empty() {
                continue; // An empty value is absent, like a missing field.
            }
            let real = || parse_real(key, value).map(Some);
            let count = || {
                value
                    .parse::<u64>()
                    .map(Some)
                    .map_err(|_| format!("{key}={value} is not a number (expected a whole number)"))
            };
            match key {
                "mib" => row.mib = real()?,
                "l1_to_l2_s" => row.l1_to_l2_s = real()?,
                "l2_to_l1_s" => row.l2_to_l1_s = real()?,
                "map" => row.map = count()?,
                "unmap" => row.unmap = count()?,
                "notifications" => row.notifications = count()?,
                "unmap_batches" => row.unmap_batches = count()?,
                "map_p50_ns" => row.map_p50_ns = count()?,
                "unmap_p50_ns" => row.unmap_p50_ns = count()?,
                "faults" => row.faults = count()?,
                _ => {} // Unknown keys are for newer reports.
            }
        }
        row.mode = mode.ok_or("row has no mode= field")?;
        Ok(row)
    }
}

fn parse_real(key: &str, value: &str) -> Result<f64, String> {
    match value.parse::<f64>() {
        Ok(v) if v.is_finite() && v >= 0.0 => Ok(v),
        _ => Err(format!(
            "{key}={value} is not a number (expected a non-negative decimal)"
        )),
    }
}

/// Finds every `LAB-ROW` line of `text` and returns one row per mode, in
/// [`Mode::ALL`] order. A later row for a mode replaces an earlier one.
/// `input` names the source in error messages.
pub fn parse_rows(text: &str, input: &str) -> Result<Vec<LabRow>, ReportError> {
    let mut latest: [Option<LabRow>; 4] = Default::default();
    let mut found = false;
    for (index, line) in text.lines().enumerate() {
        let Some(fields) = row_fields(line) else {
            continue;
        };
        found = true;
        let row = LabRow::parse_fields(fields).map_err(|problem| ReportError::BadRow {
            input: input.to_string(),
            line: index + 1,
            problem,
        })?;
        let slot = row.mode as usize;
        latest[slot] = Some(row);
    }
    if !found {
        return Err(ReportError::NoRows {
            input: input.to_string(),
        });
    }
    Ok(latest.into_iter().flatten().collect())
}

/// The text after the first `LAB-ROW` marker of `line` that stands as a
/// word of its own (so `LAB-ROWS` or `XLAB-ROW` do not count).
fn row_fields(line: &str) -> Option<&str> {
    let mut from = 0;
    while let Some(at) = line[from..].find(ROW_MARKER) {
        let start = from + at;
        let end = start + ROW_MARKER.len();
        let before_ok = line[..start]
            .chars()
            .next_back()
            .is_none_or(|c| !c.is_alphanumeric() && c != '-' && c != '_');
        let rest = &line[end..];
        if before_ok && rest.chars().next().is_none_or(char::is_whitespace) {
            return Some(rest);
        }
        from = end;
    }
    None
}

/// `mib / seconds`, when both are present and the time is positive.
pub fn throughput_mib_s(mib: Option<f64>, seconds: Option<f64>) -> Option<f64> {
    match (mib, seconds) {
        (Some(mib), Some(s)) if s > 0.0 => Some(mib / s),
        _ => None,
    }
}

/// `value` as a percentage of `baseline`, when both are known and the
/// baseline is positive.
pub fn relative_pct(value: Option<f64>, baseline: Option<f64>) -> Option<f64> {
    match (value, baseline) {
        (Some(v), Some(b)) if b > 0.0 => Some(v / b * 100.0),
        _ => None,
    }
}

/// A row with its derived figures.
#[derive(Debug, Clone, PartialEq)]
pub struct ModeSummary {
    /// The raw row.
    pub row: LabRow,
    /// L1→L2 throughput in MiB/s.
    pub l1_to_l2_mib_s: Option<f64>,
    /// L2→L1 throughput in MiB/s.
    pub l2_to_l1_mib_s: Option<f64>,
    /// L1→L2 throughput as a percentage of mode `off`'s.
    pub l1_to_l2_vs_off_pct: Option<f64>,
    /// L2→L1 throughput as a percentage of mode `off`'s.
    pub l2_to_l1_vs_off_pct: Option<f64>,
}

/// Derives throughput and throughput relative to `off` (absent when there is
/// no `off` row or its throughput is unknown) for each row, keeping order.
pub fn summarize(rows: &[LabRow]) -> Vec<ModeSummary> {
    let rate = |r: &LabRow| {
        (
            throughput_mib_s(r.mib, r.l1_to_l2_s),
            throughput_mib_s(r.mib, r.l2_to_l1_s),
        )
    };
    let (off_up, off_down) = rows
        .iter()
        .find(|r| r.mode == Mode::Off)
        .map(rate)
        .unwrap_or((None, None));
    rows.iter()
        .map(|row| {
            let (up, down) = rate(row);
            ModeSummary {
                row: row.clone(),
                l1_to_l2_mib_s: up,
                l2_to_l1_mib_s: down,
                l1_to_l2_vs_off_pct: relative_pct(up, off_up),
                l2_to_l1_vs_off_pct: relative_pct(down, off_down),
            }
        })
        .collect()
}

#[cfg(test)]
mod tests;
