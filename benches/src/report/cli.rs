//! The `iovmm-report` command line: argument parsing and the whole run, kept
//! here (not in the binary) so tests can drive it with in-memory streams.

use std::ffi::OsString;
use std::io::{Read, Write};
use std::path::PathBuf;

use super::{output, parse_rows, plot, summarize, ModeSummary, ReportError};

/// The help text printed by `--help`.
pub const USAGE: &str = "\
usage: iovmm-report ROWS_FILE --out-dir DIR [--title T]

Reads the LAB-ROW lines of a lab run from ROWS_FILE (- for stdin), keeps the
last row of each mode (off, passthrough, lazy, lazy+poll, strict, strict+poll;
only modes present are reported) and writes
  DIR/modes.csv      every figure, one line per mode
  DIR/modes.svg      L1->L2 and L2->L1 throughput in MiB/s
  DIR/requests.svg   MAP, UNMAP, notifications and UNMAP passes (log scale)
  DIR/exits.svg      L1 KVM exits per packet (if a row has exits_per_packet)
  DIR/relative.svg   transfer and Redis SET/GET throughput as % of off
                     (if a row has redis_set_rps or redis_get_rps)
then prints a table comparing the modes, throughput relative to off included.
Columns for exits, polling and Redis appear only when a row has those fields.
DIR is created if needed. T titles the charts (default: \"iovmm IOMMU modes\").
Exit status: 0 on success, 2 on any error.
";

/// The title used when `--title` is not given.
pub const DEFAULT_TITLE: &str = "iovmm IOMMU modes";

/// What the command line asks for.
#[derive(Debug, Clone, PartialEq)]
pub enum Command {
    /// Print [`USAGE`] and stop.
    Help,
    /// Produce a report.
    Report(Args),
}

/// The arguments of a report run.
#[derive(Debug, Clone, PartialEq)]
pub struct Args {
    /// The rows file; `None` reads standard input (`-`).
    pub input: Option<PathBuf>,
    /// Where the CSV and SVG files go.
    pub out_dir: PathBuf,
    /// The chart title.
    pub title: String,
}

/// Parses the arguments that follow the program name.
pub fn parse_args(args: impl IntoIterator<Item = OsString>) -> Result<Command, ReportError> {
    let usage = |m: String| ReportError::Usage(m);
    let mut input: Option<OsString> = None;
    let mut out_dir: Option<OsString> = None;
    let mut title: Option<OsString> = None;
    let mut args = args.into_iter();
    while let Some(arg) = args.next() {
        let text = arg.to_string_lossy().into_owned();
        let (flag, inline) = match text.split_once('=') {
            Some((f, v)) if f.starts_with("--") => (f.to_string(), Some(OsString::from(v))),
            _ => (text.clone(), None),
        };
        let slot = match flag.as_str() {
            "-h" | "--help" => return Ok(Command::Help),
            "--out-dir" => &mut out_dir,
            "--title" => &mut title,
            _ if text.starts_with('-') && text != "-" => {
                return Err(usage(format!("unknown option `{text}`")))
            }
            _ if input.is_some() => return Err(usage(format!("unexpected argument `{text}`"))),
            _ => {
                input = Some(arg);
                continue;
            }
        };
        if slot.is_some() {
            return Err(usage(format!("{flag} given twice")));
        }
        let value = match inline {
            Some(v) => v,
            None => args
                .next()
                .ok_or_else(|| usage(format!("{flag} needs a value")))?,
        };
        *slot = Some(value);
    }
    let input = input.ok_or_else(|| usage("missing ROWS_FILE (or - for stdin)".into()))?;
    let out_dir = out_dir.ok_or_else(|| usage("missing --out-dir DIR".into()))?;
    Ok(Command::Report(Args {
        input: (input != "-").then(|| PathBuf::from(input)),
        out_dir: PathBuf::from(out_dir),
        title: title.map_or_else(
            || DEFAULT_TITLE.to_string(),
            |t| t.to_string_lossy().into_owned(),
        ),
    }))
}

/// Whether some row of `modes` has `exits_per_packet`: then `exits.svg` is
/// written.
pub fn wants_exits_chart(modes: &[ModeSummary]) -> bool {
    modes.iter().any(|m| m.row.exits_per_packet.is_some())
}

/// Whether some row of `modes` has a Redis rate: then `relative.svg` is
/// written.
pub fn wants_relative_chart(modes: &[ModeSummary]) -> bool {
    modes
        .iter()
        .any(|m| m.row.redis_set_rps.is_some() || m.row.redis_get_rps.is_some())
}

/// Runs a report: reads the rows, writes the CSV file and the charts (three
/// files always, `exits.svg` and `relative.svg` when [`wants_exits_chart`]
/// and [`wants_relative_chart`] say so) and prints the table and the paths
/// written to `stdout`. Input bytes that are not UTF-8 (serial
/// console noise, say) are replaced, not rejected.
pub fn run(args: &Args, stdin: &mut dyn Read, stdout: &mut dyn Write) -> Result<(), ReportError> {
    let name = args
        .input
        .as_ref()
        .map_or_else(|| "stdin".to_string(), |p| p.display().to_string());
    let read_error = |source| ReportError::Read {
        input: name.clone(),
        source,
    };
    let bytes = match &args.input {
        Some(path) => std::fs::read(path).map_err(read_error)?,
        None => {
            let mut bytes = Vec::new();
            stdin.read_to_end(&mut bytes).map_err(read_error)?;
            bytes
        }
    };
    let modes = summarize(&parse_rows(&String::from_utf8_lossy(&bytes), &name)?);

    let write_error = |path: &std::path::Path, e: std::io::Error| ReportError::Write {
        path: path.display().to_string(),
        message: e.to_string(),
    };
    std::fs::create_dir_all(&args.out_dir).map_err(|e| write_error(&args.out_dir, e))?;
    let csv = args.out_dir.join("modes.csv");
    std::fs::write(&csv, output::csv(&modes)).map_err(|e| write_error(&csv, e))?;
    let throughput = args.out_dir.join("modes.svg");
    plot::write_throughput_svg(&throughput, &args.title, &modes)?;
    let requests = args.out_dir.join("requests.svg");
    plot::write_requests_svg(&requests, &args.title, &modes)?;
    let mut written = vec![csv, throughput, requests];
    if wants_exits_chart(&modes) {
        let exits = args.out_dir.join("exits.svg");
        plot::write_exits_svg(&exits, &args.title, &modes)?;
        written.push(exits);
    }
    if wants_relative_chart(&modes) {
        let relative = args.out_dir.join("relative.svg");
        plot::write_relative_svg(&relative, &args.title, &modes)?;
        written.push(relative);
    }

    let mut text = output::table(&modes);
    text.push('\n');
    for path in &written {
        text.push_str(&format!("wrote {}\n", path.display()));
    }
    stdout
        .write_all(text.as_bytes())
        .and_then(|()| stdout.flush())
        .map_err(|e| write_error(std::path::Path::new("stdout"), e))
}

/// The whole program: parses `args`, runs, and reports any error as one
/// `iovmm-report: error: ...` line on `stderr`. Returns the exit status.
pub fn main(
    args: impl IntoIterator<Item = OsString>,
    stdin: &mut dyn Read,
    stdout: &mut dyn Write,
    stderr: &mut dyn Write,
) -> i32 {
    let result = parse_args(args).and_then(|command| match command {
        Command::Help => stdout
            .write_all(USAGE.as_bytes())
            .map_err(|e| ReportError::Write {
                path: "stdout".into(),
                message: e.to_string(),
            }),
        Command::Report(args) => run(&args, stdin, stdout),
    });
    match result {
        Ok(()) => 0,
        Err(e) => {
            // Nothing sensible is left to do if stderr itself fails.
            let _ = writeln!(stderr, "iovmm-report: error: {e}");
            2
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn os(args: &[&str]) -> Vec<OsString> {
        args.iter().map(OsString::from).collect()
    }

    fn call(args: &[&str], stdin: &str) -> (i32, String, String) {
        let (mut out, mut err) = (Vec::new(), Vec::new());
        let code = main(os(args), &mut stdin.as_bytes(), &mut out, &mut err);
        let text = |v: Vec<u8>| String::from_utf8(v).unwrap();
        (code, text(out), text(err))
    }

    #[test]
    fn arguments_parse_in_any_order_and_both_flag_forms() {
        let want = Command::Report(Args {
            input: Some("rows.txt".into()),
            out_dir: "out".into(),
            title: "T x".into(),
        });
        let a = parse_args(os(&["rows.txt", "--out-dir", "out", "--title", "T x"])).unwrap();
        let b = parse_args(os(&["--title=T x", "--out-dir=out", "rows.txt"])).unwrap();
        assert_eq!((a, b), (want.clone(), want));
        match parse_args(os(&["-", "--out-dir", "o"])).unwrap() {
            Command::Report(a) => assert_eq!((a.input, a.title.as_str()), (None, DEFAULT_TITLE)),
            c => panic!("{c:?}"),
        }
        assert_eq!(parse_args(os(&["--help"])).unwrap(), Command::Help);
    }

    #[test]
    fn bad_arguments_are_usage_errors() {
        for (args, want) in [
            (&["--out-dir", "o"][..], "missing ROWS_FILE"),
            (&["rows"][..], "missing --out-dir"),
            (&["rows", "--out-dir"][..], "--out-dir needs a value"),
            (&["a", "b", "--out-dir", "o"][..], "unexpected argument `b`"),
            (&["a", "--bogus"][..], "unknown option `--bogus`"),
            (
                &["a", "--title", "x", "--title=y"][..],
                "--title given twice",
            ),
        ] {
            let err = parse_args(os(args)).unwrap_err().to_string();
            assert!(err.contains(want), "{args:?}: {err}");
        }
    }

    #[test]
    fn a_full_run_from_stdin_writes_three_files_and_prints_the_table() {
        let dir = std::env::temp_dir().join(format!("iovmm-report-cli-{}", std::process::id()));
        let out_dir = dir.join("nested");
        let input = "noise\nlab: LAB-ROW mode=off mib=8 l1_to_l2_s=4 l2_to_l1_s=4\n\
                     LAB-ROW mode=strict mib=8 l1_to_l2_s=8 l2_to_l1_s=5 map=10\n";
        let (code, out, err) = call(&["-", "--out-dir", out_dir.to_str().unwrap()], input);
        assert_eq!((code, err.as_str()), (0, ""));
        assert!(out.starts_with("mode "), "{out}");
        assert!(out.contains("\nstrict "), "{out}");
        for file in ["modes.csv", "modes.svg", "requests.svg"] {
            let path = out_dir.join(file);
            assert!(
                out.contains(&format!("wrote {}\n", path.display())),
                "{out}"
            );
            assert!(std::fs::metadata(&path).unwrap().len() > 0);
        }
        // Without exits or Redis fields there are no charts of them.
        for file in ["exits.svg", "relative.svg"] {
            assert!(!out.contains(file), "{out}");
            assert!(!out_dir.join(file).exists(), "{file}");
        }
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn exits_and_redis_fields_add_two_charts_and_their_columns() {
        let dir = std::env::temp_dir().join(format!("iovmm-report-poll-{}", std::process::id()));
        let input =
            "LAB-ROW mode=off mib=8 l1_to_l2_s=2 exits_per_packet=0.25 redis_set_rps=2000\n\
                     LAB-ROW mode=strict+poll mib=8 l1_to_l2_s=8 exits_per_packet=1.25 \
                     polled=59800 redis_set_rps=900\n";
        let (code, out, err) = call(&["-", "--out-dir", dir.to_str().unwrap()], input);
        assert_eq!((code, err.as_str()), (0, ""));
        assert!(
            out.lines().next().unwrap().ends_with("SET req/s  vs off"),
            "{out}"
        );
        assert!(out.contains("\nstrict+poll "), "{out}");
        let files = [
            "modes.csv",
            "modes.svg",
            "requests.svg",
            "exits.svg",
            "relative.svg",
        ];
        for file in files {
            let path = dir.join(file);
            assert!(
                out.contains(&format!("wrote {}\n", path.display())),
                "{out}"
            );
            assert!(std::fs::metadata(&path).unwrap().len() > 0);
        }
        let csv = std::fs::read_to_string(dir.join("modes.csv")).unwrap();
        assert!(csv
            .lines()
            .next()
            .unwrap()
            .ends_with(",exits_per_packet,polled,redis_set_rps,redis_set_vs_off_pct"));
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn errors_are_one_line_with_exit_status_2() {
        let missing = "/nonexistent-iovmm/rows.txt";
        for (args, stdin, want) in [
            (
                &[missing, "--out-dir", "o"][..],
                "",
                "cannot read /nonexistent-iovmm/rows.txt",
            ),
            (
                &["-", "--out-dir", "o"][..],
                "nothing here\n",
                "no LAB-ROW lines in stdin",
            ),
            (
                &["-", "--out-dir", "o"][..],
                "\nLAB-ROW mode=lazy map=x\n",
                "stdin:2: map=x",
            ),
            (&["-"][..], "", "missing --out-dir"),
        ] {
            let (code, out, err) = call(args, stdin);
            assert_eq!(code, 2, "{args:?}");
            assert_eq!(out, "");
            assert!(err.starts_with("iovmm-report: error: "), "{err}");
            assert!(err.contains(want), "{err}");
            assert_eq!(err.lines().count(), 1, "{err}");
        }
    }
}
