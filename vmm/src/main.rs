//! The `iovmm` binary: parse the command line, build the VM, run it until
//! the guest powers off, and turn the outcome into an exit code.
//!
//! Exit codes: 0 guest powered off, 1 VMM failure, 2 usage or
//! configuration error, 3 guest reset/reboot, 4 guest crash, 128 + the
//! signal number when stopped by SIGTERM (143) or SIGINT (130).
//!
//! Every path out of a built VM goes through [`builder::RunningVm::shutdown`]
//! before `std::process::exit` (which runs no destructors): VFIO DMA
//! mappings are removed and assigned functions closed explicitly.

#![deny(clippy::undocumented_unsafe_blocks)]

use devices::legacy::ExitReason;
use vmm::builder;
use vmm::cli::{self, Command};

/// Exit code for usage and configuration errors.
const EXIT_USAGE: i32 = 2;

fn exit_code(reason: ExitReason) -> i32 {
    match reason {
        ExitReason::PowerOff => 0,
        ExitReason::Error => 1,
        ExitReason::Reset => 3,
        ExitReason::Crash => 4,
        ExitReason::Terminated => 128 + vmm::stats::stop_signal().unwrap_or(libc::SIGTERM),
    }
}

fn init_logging(filter: &str) {
    let filter = tracing_subscriber::EnvFilter::try_new(filter)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
}

fn main() {
    let Command::Run { config, log_level } =
        cli::parse_and_build(std::env::args_os()).unwrap_or_else(|e| e.exit());
    init_logging(&log_level);
    // Only the signal thread takes SIGUSR1 (stats, vCPU state dumps) and
    // SIGTERM/SIGINT (clean stop); every thread started from here on
    // inherits the blocked mask.
    vmm::stats::block_signals();
    let vm = match builder::build_and_start(&config) {
        Ok(vm) => vm,
        Err(e) => {
            eprintln!("iovmm: error: {e}");
            std::process::exit(if e.is_user_error() { EXIT_USAGE } else { 1 });
        }
    };
    let reason = vm.wait();
    tracing::info!(?reason, "guest stopped");
    vm.shutdown();
    std::process::exit(exit_code(reason));
}
