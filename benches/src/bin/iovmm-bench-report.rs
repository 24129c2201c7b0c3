//! `iovmm-bench-report`: the tables and charts of `lab/run bench` from its
//! `LAB-ROW bench=1` lines. See `iovmm-bench-report --help`; the work is
//! done by `iovmm_benches::report::bench_output`.

#![deny(clippy::undocumented_unsafe_blocks)]

fn main() {
    let code = iovmm_benches::report::bench_output::main(
        std::env::args_os().skip(1),
        &mut std::io::stdin().lock(),
        &mut std::io::stdout().lock(),
        &mut std::io::stderr(),
    );
    std::process::exit(code);
}
