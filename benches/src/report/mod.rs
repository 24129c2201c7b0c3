//! Per-mode lab results: parsing `LAB-ROW` lines and deriving throughput.
//!
//! A lab run prints one `LAB-ROW` line per IOMMU mode, for example
//!
//! ```text
//! lab: LAB-ROW mode=strict mib=8 l1_to_l2_s=12.3 l2_to_l1_s=10.1 map=35906 unmap=35650
//! LAB-ROW mode=strict+poll mib=8 l1_to_l2_s=8.0 l2_to_l1_s=9.0 map=30000 unmap=30000 \
//!   notifications=200 polled=59800 poll_cpu_share=0.41 exits=5000 packets=4000 \
//!   exits_per_packet=1.25 idle_poll_cpu_pct=0.2 redis_set_rps=900 redis_get_rps=950
//! ```
//!
//! (one line each; the second is wrapped here). The modes, in report order,
//! are `off`, `passthrough`, `lazy`, `lazy+poll`, `strict` and `strict+poll`;
//! the `+poll` modes are the same policy with the virtual IOMMU's request
//! queue polled (see [`Mode`]). Only the modes present in the input are
//! reported.
//!
//! Fields are `key=value` pairs in any order. Numeric fields may be missing
//! (mode `off` has no virtual IOMMU, so it has no request counters); a missing
//! or empty value is *absent*, never zero. Unknown keys are ignored so that
//! the lab can add fields without breaking older reports. Besides the
//! transfer (`mib`, `l1_to_l2_s`, `l2_to_l1_s`) and the vIOMMU counters, a
//! row may carry the L1 KVM exits of the transfer (`exits`, `packets`,
//! `exits_per_packet`), the polling figures (`polled`, `poll_cpu_share`,
//! `idle_poll_cpu_pct`) and a Redis benchmark (`redis_set_rps`,
//! `redis_get_rps`); every field is documented on [`LabRow`].
//!
//! [`parse_rows`] turns the text into one [`LabRow`] per mode and
//! [`summarize`] adds throughput in MiB/s, and transfer and Redis throughput
//! relative to `off` (SET and GET separately).
//! The [`output`] module renders CSV and the text table, [`plot`] the SVG
//! charts and [`cli`] ties them together for the `iovmm-report` binary.

pub mod bench;
pub mod bench_output;
#[cfg(test)]
mod bench_tests;
pub mod breakdown;
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
    /// Cooperative: identity addresses over the set of pages the guest's
    /// DMA tracking table keeps pinned (docs/coop.md).
    Coop,
    /// Translated DMA with batched (deferred) UNMAP requests.
    Lazy,
    /// [`Mode::Lazy`] with the virtual IOMMU's request queue polled by a
    /// host thread instead of waiting for the guest's kicks.
    LazyPoll,
    /// Translated DMA with one UNMAP request per unmapped buffer.
    Strict,
    /// [`Mode::Strict`] with the virtual IOMMU's request queue polled by a
    /// host thread instead of waiting for the guest's kicks.
    StrictPoll,
}

impl Mode {
    /// Every mode, in the order reports list them.
    pub const ALL: [Mode; 7] = [
        Mode::Off,
        Mode::Passthrough,
        Mode::Coop,
        Mode::Lazy,
        Mode::LazyPoll,
        Mode::Strict,
        Mode::StrictPoll,
    ];

    /// The name used in `mode=` fields and in every output.
    pub fn name(self) -> &'static str {
        match self {
            Mode::Off => "off",
            Mode::Passthrough => "passthrough",
            Mode::Coop => "coop",
            Mode::Lazy => "lazy",
            Mode::LazyPoll => "lazy+poll",
            Mode::Strict => "strict",
            Mode::StrictPoll => "strict+poll",
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
    /// L1 KVM exits during the transfer (`exits`).
    pub exits: Option<u64>,
    /// Network packets during the transfer (`packets`).
    pub packets: Option<u64>,
    /// L1 KVM exits per network packet during the transfer
    /// (`exits_per_packet`, as the lab computed it from `exits / packets`).
    pub exits_per_packet: Option<f64>,
    /// Requests the virtual IOMMU served by polling its queue (`polled`).
    pub polled: Option<u64>,
    /// Share of one host core the poll thread used over the run
    /// (`poll_cpu_share`, normally 0 to 1).
    pub poll_cpu_share: Option<f64>,
    /// Percent of one host core the poll thread used while the guest was
    /// idle (`idle_poll_cpu_pct`).
    pub idle_poll_cpu_pct: Option<f64>,
    /// Redis SET requests per second (`redis_set_rps`), measured by
    /// redis-benchmark in L1 against a redis-server in L2.
    pub redis_set_rps: Option<f64>,
    /// Redis GET requests per second (`redis_get_rps`), measured like
    /// [`LabRow::redis_set_rps`].
    pub redis_get_rps: Option<f64>,
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
            exits: None,
            packets: None,
            exits_per_packet: None,
            polled: None,
            poll_cpu_share: None,
            idle_poll_cpu_pct: None,
            redis_set_rps: None,
            redis_get_rps: None,
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
                    let names = Mode::ALL.map(Mode::name);
                    let (last, rest) = names.split_last().expect("there are modes");
                    format!(
                        "unknown mode `{value}` (expected {} or {last})",
                        rest.join(", ")
                    )
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
                "exits" => row.exits = count()?,
                "packets" => row.packets = count()?,
                "exits_per_packet" => row.exits_per_packet = real()?,
                "polled" => row.polled = count()?,
                "poll_cpu_share" => row.poll_cpu_share = real()?,
                "idle_poll_cpu_pct" => row.idle_poll_cpu_pct = real()?,
                "redis_set_rps" => row.redis_set_rps = real()?,
                "redis_get_rps" => row.redis_get_rps = real()?,
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
    let mut latest: [Option<LabRow>; Mode::ALL.len()] = std::array::from_fn(|_| None);
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
    /// Redis SET requests per second as a percentage of mode `off`'s.
    pub redis_set_vs_off_pct: Option<f64>,
    /// Redis GET requests per second as a percentage of mode `off`'s.
    pub redis_get_vs_off_pct: Option<f64>,
}

/// Derives throughput and throughput relative to `off` (absent when there is
/// no `off` row or its figure is unknown) for each row, keeping order.
/// Redis SET and GET are each compared with `off`'s own SET and GET rate;
/// they are not averaged.
pub fn summarize(rows: &[LabRow]) -> Vec<ModeSummary> {
    let rate = |r: &LabRow| {
        (
            throughput_mib_s(r.mib, r.l1_to_l2_s),
            throughput_mib_s(r.mib, r.l2_to_l1_s),
        )
    };
    let off = rows.iter().find(|r| r.mode == Mode::Off);
    let (off_up, off_down) = off.map(rate).unwrap_or((None, None));
    let (off_set, off_get) = off.map_or((None, None), |r| (r.redis_set_rps, r.redis_get_rps));
    rows.iter()
        .map(|row| {
            let (up, down) = rate(row);
            ModeSummary {
                row: row.clone(),
                l1_to_l2_mib_s: up,
                l2_to_l1_mib_s: down,
                l1_to_l2_vs_off_pct: relative_pct(up, off_up),
                l2_to_l1_vs_off_pct: relative_pct(down, off_down),
                redis_set_vs_off_pct: relative_pct(row.redis_set_rps, off_set),
                redis_get_vs_off_pct: relative_pct(row.redis_get_rps, off_get),
            }
        })
        .collect()
}

#[cfg(test)]
mod tests;
