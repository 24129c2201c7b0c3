//! `iovmm-report`: compare IOMMU modes from the `LAB-ROW` lines of a lab run.
//! See `iovmm-report --help`; the work is done by `iovmm_benches::report`.

#![deny(clippy::undocumented_unsafe_blocks)]

fn main() {
    let code = iovmm_benches::report::cli::main(
        std::env::args_os().skip(1),
        &mut std::io::stdin().lock(),
        &mut std::io::stdout().lock(),
        &mut std::io::stderr(),
    );
    std::process::exit(code);
}
