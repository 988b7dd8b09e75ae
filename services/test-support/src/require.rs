//! Skip a test whose peer or privilege is missing, or fail it when CI
//! requires every peer.
//!
//! A test that needs root, a network namespace, dockerd, dnsmasq, OpenSSH...
//! and cannot have it here says so and skips, so `cargo test` still works on
//! a laptop without root. In CI a skip would be a test that cannot fail, so
//! when `CI` or `SMARTER_REQUIRE_PEERS` is set (non-empty, not `0` or
//! `false`) the same call fails the test with the same reason instead.
//!
//! ```no_run
//! # fn t() {
//! if !smarter_test_support::require_root("network namespaces")
//!     || !smarter_test_support::require_peer("dnsmasq", "dnsmasq")
//! {
//!     return;
//! }
//! # }
//! ```

use std::fmt::Display;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

/// The variables that make a missing peer or privilege fail the test.
const REQUIRING: [&str; 2] = ["CI", "SMARTER_REQUIRE_PEERS"];

/// Whether a missing peer or privilege must fail the test (CI) instead of
/// skipping it.
pub fn peers_required() -> bool {
    REQUIRING
        .iter()
        .any(|v| std::env::var(v).is_ok_and(|s| requires(&s)))
}

/// Whether one variable's value asks for every peer.
fn requires(value: &str) -> bool {
    !value.is_empty() && value != "0" && !value.eq_ignore_ascii_case("false")
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

/// True when running as root; otherwise [`skip`]s (or fails under CI)
/// saying root is needed `for_what`, and returns false so the test returns.
#[track_caller]
pub fn require_root(for_what: &str) -> bool {
    if is_root() {
        return true;
    }
    skip(format!("needs root ({for_what})"));
    false
}

/// True when `program` is installed (found on `PATH`, or at that path when
/// it names one); otherwise [`skip`]s (or fails under CI) naming the Debian
/// `package` that provides it, and returns false so the test returns.
#[track_caller]
pub fn require_peer(program: &str, package: &str) -> bool {
    if have(program) {
        return true;
    }
    skip(format!(
        "{program} not installed (Debian package {package})"
    ));
    false
}

/// Whether `program` is an executable file on `PATH` (or at that path when
/// it contains a `/`). No shell is run.
pub fn have(program: &str) -> bool {
    find(program).is_some()
}

/// Where `program` is, as [`have`] looks for it.
pub fn find(program: &str) -> Option<PathBuf> {
    if program.contains('/') {
        let p = Path::new(program);
        return executable(p).then(|| p.to_path_buf());
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(program))
        .find(|p| executable(p))
}

fn executable(p: &Path) -> bool {
    std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;

    /// What the probe below requires: a program no machine has.
    const MISSING: &str = "smarter-test-support-no-such-peer";

    /// Run only by [`missing_peer_fails_under_the_variable_and_skips_without`],
    /// in a child test process whose environment it sets.
    #[test]
    #[ignore = "a probe run in a child process with a chosen environment"]
    fn probe_missing_peer() {
        assert!(!require_peer(MISSING, "none"));
        println!("probe returned");
    }

    fn run_probe(env: &[(&str, &str)]) -> std::process::Output {
        let exe = std::env::current_exe().unwrap_or_else(|e| panic!("current_exe: {e}"));
        let mut cmd = Command::new(exe);
        cmd.args([
            "--exact",
            "require::tests::probe_missing_peer",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ]);
        for v in REQUIRING {
            cmd.env_remove(v);
        }
        for (k, v) in env {
            cmd.env(k, v);
        }
        cmd.output()
            .unwrap_or_else(|e| panic!("running the probe: {e}"))
    }

    #[test]
    fn missing_peer_fails_under_the_variable_and_skips_without() {
        let skipped = run_probe(&[]);
        let out = String::from_utf8_lossy(&skipped.stdout);
        let err = String::from_utf8_lossy(&skipped.stderr);
        assert!(skipped.status.success(), "without the variable: {out}{err}");
        assert!(
            err.contains(&format!("SKIP: {MISSING} not installed")),
            "{err}"
        );
        assert!(out.contains("probe returned"), "{out}");

        for (var, value) in [("SMARTER_REQUIRE_PEERS", "1"), ("CI", "true")] {
            let failed = run_probe(&[(var, value)]);
            let out = String::from_utf8_lossy(&failed.stdout);
            let err = String::from_utf8_lossy(&failed.stderr);
            assert!(!failed.status.success(), "{var}={value}: {out}{err}");
            assert!(err.contains("required peer or privilege missing"), "{err}");
            assert!(err.contains(MISSING), "{err}");
            assert!(!out.contains("probe returned"), "{out}");
        }
        // "0" and "false" mean not required.
        let off = run_probe(&[("SMARTER_REQUIRE_PEERS", "0"), ("CI", "false")]);
        assert!(off.status.success());
    }

    #[test]
    fn variable_values() {
        assert!(requires("1"));
        assert!(requires("true"));
        assert!(!requires(""));
        assert!(!requires("0"));
        assert!(!requires("FALSE"));
    }

    #[test]
    fn finds_programs_without_a_shell() {
        assert!(have("sh"));
        assert!(have("/bin/sh"));
        assert!(!have(MISSING));
        assert!(!have("/etc/passwd"), "not executable");
    }
}
