//! What every service's tests share about missing peers and privileges.
//!
//! A test that needs root, a network namespace, dockerd, dnsmasq, OpenSSH...
//! and cannot have it here says so and skips, so `cargo test` still works on
//! a laptop without root. In CI a skip would be a test that cannot fail, so
//! when `CI` or `SMARTER_REQUIRE_PEERS` is set (non-empty, not `0`) the same
//! call fails the test with the same reason instead.

use std::fmt::Display;

/// Whether a missing peer or privilege must fail the test (CI) instead of
/// skipping it.
pub fn peers_required() -> bool {
    ["CI", "SMARTER_REQUIRE_PEERS"]
        .iter()
        .any(|v| std::env::var(v).is_ok_and(|s| !s.is_empty() && s != "0" && s != "false"))
}

/// The test cannot run here because of `why`: print `SKIP: why` and return,
/// so the caller returns early; or, when [`peers_required`], fail the test.
#[track_caller]
#[allow(clippy::panic, reason = "failing the calling test is the point")]
pub fn skip(why: impl Display) {
    if peers_required() {
        panic!("required peer or privilege missing (CI or SMARTER_REQUIRE_PEERS is set): {why}");
    }
    eprintln!("SKIP: {why}");
}

/// Whether this process runs as root (network namespaces, mknod, setns).
pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn skip_fails_when_peers_are_required_and_returns_otherwise() {
        let required = peers_required();
        let outcome = std::panic::catch_unwind(|| skip("a peer this test lacks"));
        assert_eq!(outcome.is_err(), required);
    }
}
