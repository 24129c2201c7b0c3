//! Tests of row parsing and of the derived figures.

use super::*;

fn parse(text: &str) -> Vec<LabRow> {
    parse_rows(text, "test").unwrap()
}

fn error(text: &str) -> String {
    parse_rows(text, "rows.txt").unwrap_err().to_string()
}

#[test]
fn full_row_parses_every_field() {
    let rows = parse(
        "LAB-ROW mode=strict l1_to_l2_s=12.3 l2_to_l1_s=10.1 mib=8 map=35906 unmap=35650 \
         notifications=35000 unmap_batches=35000 map_p50_ns=1200 unmap_p50_ns=1500 faults=0",
    );
    assert_eq!(
        rows,
        vec![LabRow {
            mode: Mode::Strict,
            mib: Some(8.0),
            l1_to_l2_s: Some(12.3),
            l2_to_l1_s: Some(10.1),
            map: Some(35906),
            unmap: Some(35650),
            notifications: Some(35000),
            unmap_batches: Some(35000),
            map_p50_ns: Some(1200),
            unmap_p50_ns: Some(1500),
            faults: Some(0),
            ..LabRow::empty(Mode::Strict)
        }]
    );
}

#[test]
fn poll_modes_and_their_fields_parse() {
    let rows = parse(
        "LAB-ROW mode=strict+poll mib=8 l1_to_l2_s=8.0 l2_to_l1_s=9.0 map=30000 unmap=30000 \
         notifications=200 polled=59800 poll_cpu_share=0.41 exits=5000 packets=4000 \
         exits_per_packet=1.25 idle_poll_cpu_pct=0.2 redis_set_rps=900 redis_get_rps=950.5\n\
         LAB-ROW mode=lazy+poll polled=0 poll_cpu_share=0",
    );
    assert_eq!(rows.len(), 2);
    assert_eq!(
        rows[0],
        LabRow {
            mode: Mode::LazyPoll,
            polled: Some(0),
            poll_cpu_share: Some(0.0),
            ..LabRow::empty(Mode::LazyPoll)
        }
    );
    assert_eq!(
        rows[1],
        LabRow {
            mode: Mode::StrictPoll,
            mib: Some(8.0),
            l1_to_l2_s: Some(8.0),
            l2_to_l1_s: Some(9.0),
            map: Some(30000),
            unmap: Some(30000),
            notifications: Some(200),
            exits: Some(5000),
            packets: Some(4000),
            exits_per_packet: Some(1.25),
            polled: Some(59800),
            poll_cpu_share: Some(0.41),
            idle_poll_cpu_pct: Some(0.2),
            redis_set_rps: Some(900.0),
            redis_get_rps: Some(950.5),
            ..LabRow::empty(Mode::StrictPoll)
        }
    );
}

#[test]
fn new_fields_are_absent_when_missing_or_empty_and_checked_when_given() {
    let rows = parse("LAB-ROW mode=lazy+poll exits= exits_per_packet= redis_set_rps=");
    assert_eq!(rows, vec![LabRow::empty(Mode::LazyPoll)]);
    for (text, want) in [
        ("LAB-ROW mode=lazy exits=1.5", "exits=1.5 is not a number"),
        ("LAB-ROW mode=lazy polled=-3", "polled=-3 is not a number"),
        (
            "LAB-ROW mode=lazy poll_cpu_share=-0.1",
            "poll_cpu_share=-0.1 is not a number",
        ),
        (
            "LAB-ROW mode=lazy redis_get_rps=fast",
            "redis_get_rps=fast is not a number",
        ),
        (
            "LAB-ROW mode=lazy exits_per_packet=inf",
            "exits_per_packet=inf is not a number",
        ),
    ] {
        let got = error(text);
        assert!(got.contains(want), "{text:?}: {got}");
    }
}

#[test]
fn prefixes_odd_order_and_other_lines_are_handled() {
    let text = "\
booting...
lab: LAB-ROW faults=0 mib=4 mode=lazy l2_to_l1_s=2 l1_to_l2_s=1
[2024-05-01T10:00:00Z] LAB-ROW\tmode=passthrough mib=4 l1_to_l2_s=1 l2_to_l1_s=1 extra=ignored
LAB-ROWS mode=garbage are not rows, nor is XLAB-ROW mode=garbage
done";
    let rows = parse(text);
    let modes: Vec<Mode> = rows.iter().map(|r| r.mode).collect();
    assert_eq!(modes, vec![Mode::Passthrough, Mode::Lazy]);
    assert_eq!(rows[1].l1_to_l2_s, Some(1.0));
    assert_eq!(rows[1].faults, Some(0));
}

#[test]
fn missing_and_empty_fields_are_absent_not_zero() {
    // lab/lib/l1-viommu.sh prints `l1_to_l2_s=` when the guest gave no timing.
    let rows = parse("LAB-ROW mode=off mib=8 l1_to_l2_s= l2_to_l1_s=3");
    let row = &rows[0];
    assert_eq!(row.l1_to_l2_s, None);
    assert_eq!(row.l2_to_l1_s, Some(3.0));
    assert_eq!(
        (row.map, row.unmap, row.notifications, row.faults),
        (None, None, None, None)
    );
    assert_eq!(
        (row.unmap_batches, row.map_p50_ns, row.unmap_p50_ns),
        (None, None, None)
    );
}

#[test]
fn later_rows_replace_earlier_ones_and_order_is_fixed() {
    let rows = parse(
        "LAB-ROW mode=strict map=1\nLAB-ROW mode=off\nLAB-ROW mode=lazy\n\
         LAB-ROW mode=strict map=2\nLAB-ROW mode=passthrough",
    );
    let modes: Vec<Mode> = rows.iter().map(|r| r.mode).collect();
    assert_eq!(
        modes,
        vec![Mode::Off, Mode::Passthrough, Mode::Lazy, Mode::Strict]
    );
    assert_eq!(rows[3].map, Some(2));

    let rows = parse(
        "LAB-ROW mode=strict+poll\nLAB-ROW mode=strict\nLAB-ROW mode=lazy+poll\n\
         LAB-ROW mode=off\nLAB-ROW mode=lazy\nLAB-ROW mode=passthrough\n\
         LAB-ROW mode=coop\nLAB-ROW mode=lazy+poll polled=7",
    );
    let modes: Vec<Mode> = rows.iter().map(|r| r.mode).collect();
    assert_eq!(modes, Mode::ALL.to_vec());
    let names: Vec<&str> = modes.iter().map(|m| m.name()).collect();
    assert_eq!(
        names,
        [
            "off",
            "passthrough",
            "coop",
            "lazy",
            "lazy+poll",
            "strict",
            "strict+poll"
        ]
    );
    assert_eq!(rows[4].polled, Some(7));
}

#[test]
fn no_rows_is_an_error_naming_the_input() {
    assert_eq!(error("hello\nLAB-ROWS\n"), "no LAB-ROW lines in rows.txt");
    assert_eq!(error(""), "no LAB-ROW lines in rows.txt");
}

#[test]
fn bad_rows_name_line_and_problem() {
    let cases = [
        (
            "\n\nLAB-ROW mode=strict map=12x",
            "rows.txt:3: map=12x is not a number",
        ),
        (
            "LAB-ROW mode=lazy mib=-1",
            "rows.txt:1: mib=-1 is not a number",
        ),
        (
            "LAB-ROW mode=lazy mib=nan",
            "rows.txt:1: mib=nan is not a number",
        ),
        (
            "LAB-ROW mode=lazy faults=1.5",
            "rows.txt:1: faults=1.5 is not a number",
        ),
        (
            "LAB-ROW mode=fast",
            "rows.txt:1: unknown mode `fast` (expected off, passthrough, coop, \
             lazy, lazy+poll, strict or strict+poll)",
        ),
        (
            "LAB-ROW mode=strict+polled",
            "rows.txt:1: unknown mode `strict+polled`",
        ),
        ("LAB-ROW mib=8", "rows.txt:1: row has no mode= field"),
        (
            "LAB-ROW mode=off junk",
            "rows.txt:1: field `junk` is not key=value",
        ),
    ];
    for (text, want) in cases {
        let got = error(text);
        assert!(got.starts_with(want), "{text:?}: {got}");
    }
}

#[test]
fn throughput_and_relative_throughput() {
    assert_eq!(throughput_mib_s(Some(8.0), Some(4.0)), Some(2.0));
    assert_eq!(throughput_mib_s(Some(8.0), Some(0.0)), None);
    assert_eq!(throughput_mib_s(None, Some(4.0)), None);
    assert_eq!(relative_pct(Some(1.0), Some(4.0)), Some(25.0));
    assert_eq!(relative_pct(Some(1.0), None), None);

    let rows = parse(
        "LAB-ROW mode=strict mib=8 l1_to_l2_s=8 l2_to_l1_s=16\n\
         LAB-ROW mode=off mib=8 l1_to_l2_s=4 l2_to_l1_s=4\n\
         LAB-ROW mode=lazy mib=8 l1_to_l2_s=5",
    );
    let s = summarize(&rows);
    assert_eq!(s[0].row.mode, Mode::Off);
    assert_eq!(s[0].l1_to_l2_vs_off_pct, Some(100.0));
    assert_eq!(s[1].row.mode, Mode::Lazy);
    assert_eq!(s[1].l1_to_l2_mib_s, Some(1.6));
    assert_eq!(s[1].l1_to_l2_vs_off_pct, Some(80.0));
    assert_eq!(s[1].l2_to_l1_mib_s, None);
    assert_eq!(s[1].l2_to_l1_vs_off_pct, None);
    assert_eq!(
        (s[2].l1_to_l2_mib_s, s[2].l2_to_l1_mib_s),
        (Some(1.0), Some(0.5))
    );
    assert_eq!(
        (s[2].l1_to_l2_vs_off_pct, s[2].l2_to_l1_vs_off_pct),
        (Some(50.0), Some(25.0))
    );
}

#[test]
fn without_off_there_is_no_relative_throughput() {
    let s = summarize(&parse(
        "LAB-ROW mode=strict mib=8 l1_to_l2_s=8 l2_to_l1_s=16",
    ));
    assert_eq!(s[0].l1_to_l2_mib_s, Some(1.0));
    assert_eq!(
        (s[0].l1_to_l2_vs_off_pct, s[0].l2_to_l1_vs_off_pct),
        (None, None)
    );
}

#[test]
fn mode_names_round_trip() {
    for mode in Mode::ALL {
        assert_eq!(Mode::from_name(mode.name()), Some(mode));
        assert_eq!(mode.to_string(), mode.name());
    }
    assert_eq!(Mode::from_name("Strict"), None);
}

#[test]
fn redis_is_compared_with_off_set_and_get_separately() {
    let s = summarize(&parse(
        "LAB-ROW mode=strict+poll redis_set_rps=900 redis_get_rps=950\n\
         LAB-ROW mode=off redis_set_rps=2000 redis_get_rps=2500\n\
         LAB-ROW mode=strict redis_set_rps=300\n\
         LAB-ROW mode=lazy",
    ));
    let pcts: Vec<(Mode, Option<f64>, Option<f64>)> = s
        .iter()
        .map(|m| (m.row.mode, m.redis_set_vs_off_pct, m.redis_get_vs_off_pct))
        .collect();
    assert_eq!(
        pcts,
        vec![
            (Mode::Off, Some(100.0), Some(100.0)),
            (Mode::Lazy, None, None),
            (Mode::Strict, Some(15.0), None),
            (Mode::StrictPoll, Some(45.0), Some(38.0)),
        ]
    );
    // Redis does not disturb the transfer comparison, nor the reverse.
    assert!(s.iter().all(|m| m.l1_to_l2_vs_off_pct.is_none()));

    // Without an off rate (no off row, or off without Redis) there is no %.
    for text in [
        "LAB-ROW mode=strict redis_set_rps=300 redis_get_rps=320",
        "LAB-ROW mode=off mib=8 l1_to_l2_s=1\nLAB-ROW mode=strict redis_set_rps=300",
        "LAB-ROW mode=off redis_set_rps=0\nLAB-ROW mode=strict redis_set_rps=300",
    ] {
        let s = summarize(&parse(text));
        let last = s.last().unwrap();
        assert_eq!(last.row.redis_set_rps, Some(300.0), "{text}");
        assert_eq!(last.redis_set_vs_off_pct, None, "{text}");
        assert_eq!(last.redis_get_vs_off_pct, None, "{text}");
    }
}

/// The sample of the request-queue polling comparison.
const POLL_INPUT: &str = "\
LAB-ROW mode=off mib=8 l1_to_l2_s=2.0 l2_to_l1_s=2.5 exits=1000 packets=4000 exits_per_packet=0.25 \
redis_set_rps=2000 redis_get_rps=2200
LAB-ROW mode=strict mib=8 l1_to_l2_s=20.0 l2_to_l1_s=25.0 map=30000 unmap=30000 \
notifications=60000 exits=70000 packets=4000 exits_per_packet=17.50 redis_set_rps=300 \
redis_get_rps=320
LAB-ROW mode=strict+poll mib=8 l1_to_l2_s=8.0 l2_to_l1_s=9.0 map=30000 unmap=30000 \
notifications=200 polled=59800 poll_cpu_share=0.41 exits=5000 packets=4000 \
exits_per_packet=1.25 idle_poll_cpu_pct=0.2 redis_set_rps=900 redis_get_rps=950
";

/// The rows of the table `text`, each split into its cells (no cell has
/// spaces but the headings, which are checked as whole lines).
fn cells(text: &str) -> Vec<Vec<&str>> {
    text.lines()
        .skip(1)
        .map(|l| l.split_whitespace().collect())
        .collect()
}

#[test]
fn table_has_the_new_columns_with_values_only_when_present() {
    let text = output::table(&summarize(&parse(POLL_INPUT)));
    let head = text.lines().next().unwrap();
    assert!(
        head.ends_with(
            "faults  exits/packet  polled  poll CPU  idle poll CPU  \
             SET req/s  vs off  GET req/s  vs off"
        ),
        "{head}"
    );
    let rows = cells(&text);
    let tail = |row: &[&str]| row[row.len() - 8..].join(" ");
    assert_eq!(rows.len(), 3, "{text}");
    assert_eq!(rows[0][0], "off");
    assert_eq!(tail(&rows[0]), "0.25 - - - 2000 100% 2200 100%");
    assert_eq!(rows[1][0], "strict");
    assert_eq!(tail(&rows[1]), "17.50 - - - 300 15% 320 15%");
    assert_eq!(rows[2][0], "strict+poll");
    assert_eq!(tail(&rows[2]), "1.25 59800 41.0% 0.2% 900 45% 950 43%");
    // The poll modes' transfer comparison is there as before.
    assert_eq!(rows[2][1..5].join(" "), "1.00 25% 0.89 28%");
    // Every line is as long as the heading: the new columns are aligned too.
    assert!(text.lines().all(|l| l.len() == head.len()), "{text}");
    // exits and packets are in the CSV only.
    assert!(!head.contains("exits ") && !head.contains("packets"));
}

#[test]
fn table_and_csv_leave_out_new_columns_and_absent_modes() {
    let old = "LAB-ROW mode=off mib=8 l1_to_l2_s=4 l2_to_l1_s=5\n\
               LAB-ROW mode=strict mib=8 l1_to_l2_s=8 l2_to_l1_s=10 map=3";
    let modes = summarize(&parse(old));
    let table = output::table(&modes);
    assert!(table
        .lines()
        .next()
        .unwrap()
        .ends_with("UNMAP p50 us  faults"));
    assert_eq!(table.lines().count(), 3, "{table}");
    assert!(!table.contains("poll"), "{table}");
    let csv = output::csv(&modes);
    assert_eq!(csv.lines().next(), Some(output::CSV_HEADER));
    assert_eq!(csv.lines().count(), 3);
    assert!(!csv.contains("poll"), "{csv}");

    // One field of one row brings in exactly its own column.
    let modes = summarize(&parse(&format!("{old}\nLAB-ROW mode=lazy+poll polled=5")));
    let table = output::table(&modes);
    let head = table.lines().next().unwrap();
    assert!(head.ends_with("faults  polled"), "{head}");
    let rows = cells(&table);
    let last = |i: usize| *rows[i].last().unwrap();
    // lazy+poll comes between off and strict.
    assert_eq!((last(0), last(1), last(2)), ("-", "5", "-"));
    assert_eq!(rows[1][0], "lazy+poll");
    let csv = output::csv(&modes);
    let lines: Vec<&str> = csv.lines().collect();
    assert_eq!(lines[0], format!("{},polled", output::CSV_HEADER));
    assert!(
        lines[1].ends_with(",,") && lines[2].ends_with(",5"),
        "{csv}"
    );
    assert!(lines[3].ends_with(",,"), "{csv}");
}

#[test]
fn csv_has_every_new_column_in_order_with_exact_values() {
    let csv = output::csv(&summarize(&parse(POLL_INPUT)));
    let lines: Vec<&str> = csv.lines().collect();
    let extra = output::OPTIONAL_CSV_COLUMNS.join(",");
    assert_eq!(lines[0], format!("{},{extra}", output::CSV_HEADER));
    let tail = |line: &str| line.split(',').skip(15).collect::<Vec<_>>().join(",");
    assert_eq!(tail(lines[1]), "1000,4000,0.25,,,,2000,100.0,2200,100.0");
    assert_eq!(tail(lines[2]), "70000,4000,17.5,,,,300,15.0,320,14.5");
    assert_eq!(
        tail(lines[3]),
        "5000,4000,1.25,59800,0.41,0.2,900,45.0,950,43.2"
    );
    let columns = lines[0].split(',').count();
    assert!(lines.iter().all(|l| l.split(',').count() == columns));
}

#[test]
fn optional_heading_lists_match_what_is_shown() {
    let modes = summarize(&parse(POLL_INPUT));
    let table = output::table(&modes);
    let head = table.lines().next().unwrap();
    let fixed = output::TABLE_HEADINGS.join("  ");
    let extra = output::OPTIONAL_TABLE_HEADINGS.join("  ");
    let squeeze = |s: &str| s.split_whitespace().collect::<Vec<_>>().join(" ");
    assert_eq!(squeeze(head), squeeze(&format!("{fixed}  {extra}")));
}

/// A fresh directory for chart files.
fn chart_dir(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("iovmm-report-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Whether `svg` has a text element reading exactly `text` (the SVG backend
/// puts the text on a line of its own).
fn has_text(svg: &str, text: &str) -> bool {
    svg.lines().any(|line| line.trim() == text)
}

#[test]
fn exits_chart_is_written_with_every_mode_and_value() {
    let dir = chart_dir("exits");
    let path = dir.join("exits.svg");
    let modes = summarize(&parse(&format!("{POLL_INPUT}LAB-ROW mode=lazy mib=8\n")));
    plot::write_exits_svg(&path, "poll", &modes).unwrap();
    let svg = std::fs::read_to_string(&path).unwrap();
    assert!(svg.starts_with("<svg"), "{svg:.80}");
    assert!(svg.contains("exits per packet"));
    for mode in ["off", "lazy", "strict", "strict+poll"] {
        assert!(has_text(&svg, mode), "{mode} missing");
    }
    for value in ["0.25", "17.50", "1.25", "n/a"] {
        assert!(has_text(&svg, value), "{value} missing");
    }
    assert!(!has_text(&svg, "lazy+poll") && !has_text(&svg, "passthrough"));
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn relative_chart_shows_transfer_and_redis_as_percent_of_off() {
    let dir = chart_dir("relative");
    let path = dir.join("relative.svg");
    let modes = summarize(&parse(POLL_INPUT));
    plot::write_relative_svg(&path, "poll", &modes).unwrap();
    let svg = std::fs::read_to_string(&path).unwrap();
    for word in ["Redis SET", "Redis GET", "L1\u{2192}L2", "% of mode off"] {
        assert!(svg.contains(word), "{word} missing");
    }
    // off is 100% four times; strict+poll: 25%, 28%, 45% and 43%.
    let count = |text: &str| svg.lines().filter(|l| l.trim() == text).count();
    assert_eq!(count("100%"), 4);
    for value in ["25%", "28%", "45%", "43%", "15%"] {
        assert!(has_text(&svg, value), "{value} missing");
    }
    assert!(has_text(&svg, "strict+poll"));
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn charts_of_all_six_modes_widen_to_keep_labels_apart() {
    let dir = chart_dir("wide");
    let rows: String = Mode::ALL
        .iter()
        .map(|m| format!("LAB-ROW mode={m} mib=8 l1_to_l2_s=2 map=35906 unmap=35650\n"))
        .collect();
    let modes = summarize(&parse(&rows));
    let (requests, throughput) = (dir.join("r.svg"), dir.join("t.svg"));
    plot::write_requests_svg(&requests, "t", &modes).unwrap();
    plot::write_throughput_svg(&throughput, "t", &modes).unwrap();
    let width = |path: &std::path::Path| {
        let svg = std::fs::read_to_string(path).unwrap();
        let at = svg.find("width=\"").unwrap() + 7;
        svg[at..].split('"').next().unwrap().parse::<u32>().unwrap()
    };
    // 6 modes of 4 bars need more than the default width; 6 of 2 do not.
    assert!(
        width(&requests) >= 6 * 4 * plot::PX_PER_BAR,
        "{}",
        width(&requests)
    );
    assert_eq!(width(&throughput), plot::SIZE.0);
    let svg = std::fs::read_to_string(&requests).unwrap();
    for mode in Mode::ALL {
        assert!(has_text(&svg, mode.name()), "{mode} missing");
    }
    std::fs::remove_dir_all(dir).unwrap();
}
