//! SVG charts of a report, drawn with `plotters`' SVG backend.
//!
//! Grouped bar charts, one group of bars per mode present in the report:
//!
//! * [`write_throughput_svg`]: L1→L2 and L2→L1 throughput in MiB/s on a
//!   linear axis starting at zero, so bar heights compare directly;
//! * [`write_requests_svg`]: MAP and UNMAP requests, notifications and UNMAP
//!   passes on a **logarithmic** axis, because lazy mode's passes and
//!   passthrough's (near) zero MAP requests sit orders of magnitude below
//!   strict mode's counts. A zero count is drawn as a `0` label on the
//!   baseline, and a mode without counters (`off`) as `n/a`;
//! * [`write_exits_svg`] (when a row has `exits_per_packet`): L1 KVM exits
//!   per network packet on a linear axis;
//! * [`write_relative_svg`] (when a row has a Redis rate): L1→L2 and L2→L1
//!   throughput and Redis SET and GET requests per second, each as a
//!   percentage of mode `off`'s, on a linear axis.
//!
//! A mode without any value in a chart shows `n/a`. Every bar carries its
//! value as a label; charts with many bars are wider than [`SIZE`] so that
//! labels keep clear of each other. Text is left to the SVG viewer's fonts,
//! so no font library is needed.

use std::ops::Range;
use std::path::Path;

use plotters::coord::ranged1d::{DefaultFormatting, KeyPointHint};
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

use super::{ModeSummary, ReportError};

/// Width and height of each SVG, in pixels. A chart with too many bars
/// for [`PX_PER_BAR`] each is wider.
pub const SIZE: (u32, u32) = (900, 540);

/// The width each bar (with its share of the gaps) gets at least, in pixels.
pub const PX_PER_BAR: u32 = 50;

/// Pixels of a chart's width outside the bars: margins and the value axis.
const FRAME_PX: u32 = 112;

/// The width of a chart of `groups` groups of `bars` bars each.
fn chart_width(groups: usize, bars: usize) -> u32 {
    let bars = u32::try_from(groups * bars).unwrap_or(u32::MAX);
    SIZE.0
        .max(FRAME_PX.saturating_add(bars.saturating_mul(PX_PER_BAR)))
}

/// Bar colours, one per series.
const COLOURS: [RGBColor; 8] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(148, 103, 189),
    RGBColor(214, 39, 40),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(127, 127, 127),
];

/// One series of a grouped bar chart: a legend name and a value per mode.
pub(crate) struct Series {
    pub(crate) name: String,
    pub(crate) values: Vec<Option<f64>>,
}

/// How the value axis of a chart is scaled.
#[derive(Clone, Copy, PartialEq)]
pub(crate) enum Scale {
    /// From zero to the largest value times `headroom`.
    Linear { headroom: f64 },
    /// From 1 to two decades above the largest value.
    Log,
}

/// Everything about a chart but its data.
pub(crate) struct Chart {
    pub(crate) caption: String,
    pub(crate) y_desc: &'static str,
    pub(crate) scale: Scale,
    /// Formats the value label of a bar.
    pub(crate) value_label: fn(f64) -> String,
    pub(crate) legend: SeriesLabelPosition,
}

/// Headroom above the tallest bar on a linear axis, for labels and legend.
const HEADROOM: f64 = 1.3;

pub(crate) fn two_decimals(v: f64) -> String {
    format!("{v:.2}")
}

pub(crate) fn whole_percent(v: f64) -> String {
    format!("{v:.0}%")
}

/// The names of the modes of `modes`, in order: the chart groups.
fn mode_names(modes: &[ModeSummary]) -> Vec<&'static str> {
    modes.iter().map(|m| m.row.mode.name()).collect()
}

/// Writes the throughput chart of `modes` to `path`, titled `title`.
pub fn write_throughput_svg(
    path: &Path,
    title: &str,
    modes: &[ModeSummary],
) -> Result<(), ReportError> {
    let series = vec![
        Series {
            name: "L1\u{2192}L2".into(),
            values: modes.iter().map(|m| m.l1_to_l2_mib_s).collect(),
        },
        Series {
            name: "L2\u{2192}L1".into(),
            values: modes.iter().map(|m| m.l2_to_l1_mib_s).collect(),
        },
    ];
    let chart = Chart {
        caption: format!("{title}: throughput per mode"),
        y_desc: "MiB/s",
        scale: Scale::Linear { headroom: HEADROOM },
        value_label: two_decimals,
        // Mode off, the fastest, is on the left: the legend goes right.
        legend: SeriesLabelPosition::UpperRight,
    };
    draw(path, &chart, &mode_names(modes), &series)
}

/// Writes the vIOMMU request chart of `modes` to `path`, titled `title`.
pub fn write_requests_svg(
    path: &Path,
    title: &str,
    modes: &[ModeSummary],
) -> Result<(), ReportError> {
    let counts = |name: &str, get: fn(&ModeSummary) -> Option<u64>| Series {
        name: name.into(),
        values: modes.iter().map(|m| get(m).map(|v| v as f64)).collect(),
    };
    let series = vec![
        counts("MAP", |m| m.row.map),
        counts("UNMAP", |m| m.row.unmap),
        counts("notifications", |m| m.row.notifications),
        counts("UNMAP passes", |m| m.row.unmap_batches),
    ];
    let chart = Chart {
        caption: format!("{title}: vIOMMU requests per mode"),
        y_desc: "count (log scale)",
        scale: Scale::Log,
        value_label: compact_count,
        // Mode off, without counters, is on the left: the legend goes there.
        legend: SeriesLabelPosition::UpperLeft,
    };
    draw(path, &chart, &mode_names(modes), &series)
}

/// Writes the chart of L1 KVM exits per network packet of `modes` to
/// `path`, titled `title`. Meant for reports where some row has
/// `exits_per_packet`; modes without it show `n/a`.
pub fn write_exits_svg(path: &Path, title: &str, modes: &[ModeSummary]) -> Result<(), ReportError> {
    let series = vec![Series {
        name: "L1 KVM exits per packet".into(),
        values: modes.iter().map(|m| m.row.exits_per_packet).collect(),
    }];
    let chart = Chart {
        caption: format!("{title}: L1 KVM exits per network packet"),
        y_desc: "exits per packet",
        scale: Scale::Linear { headroom: HEADROOM },
        value_label: two_decimals,
        // Mode off, with the fewest exits, is on the left: the legend goes there.
        legend: SeriesLabelPosition::UpperLeft,
    };
    draw(path, &chart, &mode_names(modes), &series)
}

/// Writes the chart of throughput relative to mode `off` of `modes` to
/// `path`, titled `title`: L1→L2 and L2→L1 transfer throughput and Redis SET
/// and GET requests per second, each as a percentage of `off`'s (which is
/// 100% by definition). Meant for reports where some row has a Redis rate.
pub fn write_relative_svg(
    path: &Path,
    title: &str,
    modes: &[ModeSummary],
) -> Result<(), ReportError> {
    let pct = |name: &str, get: fn(&ModeSummary) -> Option<f64>| Series {
        name: name.into(),
        values: modes.iter().map(get).collect(),
    };
    let series = vec![
        pct("L1\u{2192}L2", |m| m.l1_to_l2_vs_off_pct),
        pct("L2\u{2192}L1", |m| m.l2_to_l1_vs_off_pct),
        pct("Redis SET", |m| m.redis_set_vs_off_pct),
        pct("Redis GET", |m| m.redis_get_vs_off_pct),
    ];
    let chart = Chart {
        caption: format!("{title}: throughput relative to off"),
        y_desc: "% of mode off",
        // Four legend entries need more room above the bars.
        scale: Scale::Linear { headroom: 1.6 },
        value_label: whole_percent,
        // Mode off, at 100%, is on the left: the legend goes right.
        legend: SeriesLabelPosition::UpperRight,
    };
    draw(path, &chart, &mode_names(modes), &series)
}

/// Draws one grouped bar chart (one group per name in `groups`, one bar per
/// series in each group) into a new SVG file at `path`.
pub(crate) fn draw(
    path: &Path,
    chart: &Chart,
    groups: &[&str],
    series: &[Series],
) -> Result<(), ReportError> {
    let fail = |e: &dyn std::fmt::Display| ReportError::Write {
        path: path.display().to_string(),
        message: e.to_string(),
    };
    let size = (chart_width(groups.len(), series.len()), SIZE.1);
    let root = SVGBackend::new(path, size).into_drawing_area();
    root.fill(&WHITE).map_err(|e| fail(&e))?;
    let max = series
        .iter()
        .flat_map(|s| s.values.iter().flatten())
        .fold(0.0f64, |a, &b| a.max(b));
    let x_range = GroupAxis(groups.len().max(1));
    let mut builder = ChartBuilder::on(&root);
    builder
        .caption(&chart.caption, ("sans-serif", 28))
        .margin(16)
        .x_label_area_size(48)
        .y_label_area_size(80);
    let label = |x: &f64| {
        let i = x.round();
        if (x - i).abs() < 1e-6 && i >= 0.0 {
            groups.get(i as usize).copied().unwrap_or("").to_string()
        } else {
            String::new()
        }
    };
    let bars = BarLayout {
        slots: series.len(),
        base: if chart.scale == Scale::Log { 1.0 } else { 0.0 },
        value_label: chart.value_label,
        legend: chart.legend.clone(),
    };
    let y_desc = chart.y_desc;
    if let Scale::Linear { headroom } = chart.scale {
        let top = if max > 0.0 { max * headroom } else { 1.0 };
        let mut chart = builder
            .build_cartesian_2d(x_range, 0.0..top)
            .map_err(|e| fail(&e))?;
        chart
            .configure_mesh()
            .disable_x_mesh()
            .max_light_lines(1)
            .x_desc("mode")
            .y_desc(y_desc)
            .x_label_formatter(&label)
            .label_style(("sans-serif", 18))
            .draw()
            .map_err(|e| fail(&e))?;
        bars.draw(&mut chart, series).map_err(|e| fail(&e))?;
    } else {
        // Two decades of headroom keep value labels clear of the legend.
        let top = (max * 100.0).max(100.0);
        let mut chart = builder
            .build_cartesian_2d(x_range, (1.0..top).log_scale())
            .map_err(|e| fail(&e))?;
        chart
            .configure_mesh()
            .disable_x_mesh()
            .max_light_lines(1)
            .x_desc("mode")
            .y_desc(y_desc)
            .x_label_formatter(&label)
            .y_label_formatter(&|v: &f64| compact_count(*v))
            .label_style(("sans-serif", 18))
            .draw()
            .map_err(|e| fail(&e))?;
        bars.draw(&mut chart, series).map_err(|e| fail(&e))?;
    }
    root.present().map_err(|e| fail(&e))
}

/// A count in at most about five characters, so neighbouring bar labels do
/// not run into each other: `950`, `9500`, `35.9k`, `1.2M` (exact figures are
/// in the CSV and the table).
pub fn compact_count(v: f64) -> String {
    let (scaled, suffix) = match v {
        v if v >= 1e9 => (v / 1e9, "G"),
        v if v >= 1e6 => (v / 1e6, "M"),
        v if v >= 1e4 => (v / 1e3, "k"),
        v => return format!("{v:.0}"),
    };
    let text = format!("{scaled:.1}");
    format!("{}{suffix}", text.strip_suffix(".0").unwrap_or(&text))
}

/// The x axis of a grouped chart: group `i` is centred on `x = i` and owns
/// `i - 0.5 .. i + 0.5`; ticks (and so labels) sit only at group centres.
#[derive(Clone)]
struct GroupAxis(usize);

impl Ranged for GroupAxis {
    type FormatOption = DefaultFormatting;
    type ValueType = f64;

    fn map(&self, value: &f64, (low, high): (i32, i32)) -> i32 {
        let fraction = (value + 0.5) / self.0 as f64;
        low + (f64::from(high - low) * fraction).round() as i32
    }

    fn key_points<Hint: KeyPointHint>(&self, _hint: Hint) -> Vec<f64> {
        (0..self.0).map(|i| i as f64).collect()
    }

    fn range(&self) -> Range<f64> {
        -0.5..self.0 as f64 - 0.5
    }
}

/// Where the bars of a grouped chart go: each group spans 0.8 of its slot.
struct BarLayout {
    /// Bars per group.
    slots: usize,
    /// The value bars grow from (1 on a log axis).
    base: f64,
    /// Formats the value label of a bar.
    value_label: fn(f64) -> String,
    /// Where the legend goes.
    legend: SeriesLabelPosition,
}

type DrawResult = Result<(), DrawingAreaErrorKind<std::io::Error>>;

impl BarLayout {
    fn draw<'a, X, Y>(
        &self,
        chart: &mut ChartContext<'a, SVGBackend<'a>, Cartesian2d<X, Y>>,
        series: &[Series],
    ) -> DrawResult
    where
        X: Ranged<ValueType = f64>,
        Y: Ranged<ValueType = f64>,
    {
        let width = 0.8 / self.slots as f64;
        let text = ("sans-serif", 15).into_font().color(&BLACK);
        let above = text.pos(Pos::new(HPos::Center, VPos::Bottom));
        for (k, s) in series.iter().enumerate() {
            let colour = COLOURS[k % COLOURS.len()];
            let left = |i: usize| i as f64 - 0.4 + k as f64 * width;
            let base = self.base;
            let rects = s.values.iter().enumerate().filter_map(|(i, v)| {
                let v = (*v)?;
                (v > base).then(|| {
                    let mut r =
                        Rectangle::new([(left(i), base), (left(i) + width, v)], colour.filled());
                    r.set_margin(0, 0, 1, 1);
                    r
                })
            });
            chart
                .draw_series(rects)?
                .label(s.name.as_str())
                .legend(move |(x, y)| {
                    Rectangle::new([(x, y - 6), (x + 14, y + 6)], colour.filled())
                });
            let labels = s.values.iter().enumerate().filter_map(|(i, v)| {
                let v = (*v)?;
                let shown = (self.value_label)(v);
                let at = (left(i) + width / 2.0, v.max(base));
                Some(EmptyElement::at(at) + Text::new(shown, (0, -3), above.clone()))
            });
            chart.draw_series(labels)?;
        }
        // A mode with no value in any series gets one `n/a` at its centre.
        let groups = series.first().map_or(0, |s| s.values.len());
        let missing = (0..groups)
            .filter(|&i| series.iter().all(|s| s.values[i].is_none()))
            .map(|i| {
                EmptyElement::at((i as f64, self.base)) + Text::new("n/a", (0, -3), above.clone())
            });
        chart.draw_series(missing)?;
        chart
            .configure_series_labels()
            .position(self.legend.clone())
            .background_style(WHITE.mix(0.9))
            .border_style(BLACK)
            .label_font(("sans-serif", 17))
            .draw()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::{parse_rows, summarize};

    fn temp_dir(name: &str) -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!("iovmm-plot-{name}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    /// Whether `svg` has a text element reading exactly `text`; the SVG
    /// backend puts the text on a line of its own.
    fn has_text(svg: &str, text: &str) -> bool {
        svg.lines().any(|line| line.trim() == text)
    }

    const INPUT: &str = "\
LAB-ROW mode=off mib=8 l1_to_l2_s=4 l2_to_l1_s=5
LAB-ROW mode=passthrough mib=8 l1_to_l2_s=4.2 l2_to_l1_s=5.1 map=0 unmap=0 notifications=3
LAB-ROW mode=lazy mib=8 l1_to_l2_s=6 l2_to_l1_s=7 map=35906 unmap=35650 unmap_batches=40
LAB-ROW mode=strict mib=8 l1_to_l2_s=8 l2_to_l1_s=10 map=35906 unmap=35650 unmap_batches=35000
";

    #[test]
    fn both_charts_are_written_and_name_every_mode() {
        let dir = temp_dir("both");
        let modes = summarize(&parse_rows(INPUT, "test").unwrap());
        let (a, b) = (dir.join("modes.svg"), dir.join("requests.svg"));
        write_throughput_svg(&a, "lab <1> & co", &modes).unwrap();
        write_requests_svg(&b, "lab", &modes).unwrap();
        for (file, words) in [
            (&a, &["MiB/s", "L1\u{2192}L2", "lab &lt;1&gt; &amp; co"][..]),
            (
                &b,
                &["MAP", "UNMAP passes", "log scale", "n/a", "35.9k"][..],
            ),
        ] {
            let svg = std::fs::read_to_string(file).unwrap();
            assert!(svg.starts_with("<svg"), "{svg:.80}");
            for mode in ["off", "passthrough", "lazy", "strict"] {
                assert!(has_text(&svg, mode), "{mode} missing");
            }
            for word in words {
                assert!(svg.contains(word), "{word} missing from {}", file.display());
            }
        }
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn counts_are_compact() {
        let cases = [
            (0.0, "0"),
            (950.0, "950"),
            (9999.0, "9999"),
            (10_000.0, "10k"),
        ];
        for (v, want) in cases {
            assert_eq!(compact_count(v), want);
        }
        assert_eq!(compact_count(35_906.0), "35.9k");
        assert_eq!(compact_count(1_000_000.0), "1M");
        assert_eq!(compact_count(2_345_678_901.0), "2.3G");
    }

    #[test]
    fn charts_without_values_still_render() {
        let dir = temp_dir("empty");
        let modes = summarize(&parse_rows("LAB-ROW mode=off", "test").unwrap());
        write_throughput_svg(&dir.join("t.svg"), "t", &modes).unwrap();
        write_requests_svg(&dir.join("r.svg"), "r", &modes).unwrap();
        let svg = std::fs::read_to_string(dir.join("r.svg")).unwrap();
        assert!(has_text(&svg, "off") && has_text(&svg, "n/a"));
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn unwritable_path_is_an_error_not_a_panic() {
        let modes = summarize(&parse_rows("LAB-ROW mode=off", "test").unwrap());
        let path = Path::new("/nonexistent-iovmm-dir/x.svg");
        let err = write_throughput_svg(path, "t", &modes).unwrap_err();
        assert!(
            err.to_string().contains("/nonexistent-iovmm-dir/x.svg"),
            "{err}"
        );
    }
}
