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
        }]
    );
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
    assert_eq!(modes, Mode::ALL.to_vec());
    assert_eq!(rows[3].map, Some(2));
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
        ("LAB-ROW mode=fast", "rows.txt:1: unknown mode `fast`"),
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
