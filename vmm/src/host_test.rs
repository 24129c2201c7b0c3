//! Tests that need something from the host (`/dev/kvm`, `iasl`): where it
//! is missing they skip visibly, and where CI says it is present
//! (`IOVMM_REQUIRE_KVM=1`, `IOVMM_REQUIRE_IASL=1`) a missing tool fails
//! the test instead of passing it silently.

use std::io::Write;

/// The variable that makes the KVM tests mandatory.
pub const REQUIRE_KVM: &str = "IOVMM_REQUIRE_KVM";
/// The variable that makes the `iasl` tests mandatory.
pub const REQUIRE_IASL: &str = "IOVMM_REQUIRE_IASL";

/// Whether `var` is set to `1`.
pub fn required(var: &str) -> bool {
    std::env::var(var).is_ok_and(|v| v == "1")
}

/// Called by test `test` when the host lacks what it needs (`reason`):
/// panics when `var` says the host must have it, otherwise prints a skip
/// line straight to stderr (past the test harness's output capture, so it
/// shows for a passing test too).
pub fn skip(var: &str, test: &str, reason: &str) {
    skip_or_fail(required(var), var, test, reason);
}

fn skip_or_fail(required: bool, var: &str, test: &str, reason: &str) {
    if required {
        panic!("{test}: {reason}, but {var}=1 says this host must run it");
    }
    let _ = writeln!(
        std::io::stderr(),
        "SKIPPED {test}: {reason} (set {var}=1 to make this a failure)"
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_required_tool_turns_the_skip_into_a_failure() {
        skip_or_fail(false, REQUIRE_IASL, "demo", "nothing is missing");
        let r = std::panic::catch_unwind(|| skip_or_fail(true, REQUIRE_KVM, "demo", "no kvm"));
        let msg = *r.unwrap_err().downcast::<String>().unwrap();
        assert!(msg.contains("IOVMM_REQUIRE_KVM=1"), "{msg}");
        assert!(!required("IOVMM_REQUIRE_A_VARIABLE_NOBODY_SETS"));
    }
}
