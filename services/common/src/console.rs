//! Messages an operator must see at boot: one line to the system console
//! (`/dev/console` by default, any path in tests) besides the journal.
//!
//! Boot-time units (first-boot provisioning, the health gate) print what went
//! wrong where a person at a serial console looks. Writing is best effort: a
//! console that cannot be opened is reported in the log, never fatal.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

/// Default console device.
pub const DEFAULT_CONSOLE: &str = "/dev/console";

/// Append `program: line` plus a newline to `console`; an empty path means
/// no console. Returns whether the line was written.
pub fn write_line(console: &Path, program: &str, line: &str) -> bool {
    if console.as_os_str().is_empty() {
        return false;
    }
    let opened = std::fs::OpenOptions::new()
        .append(true)
        // Opening a terminal must not make it our controlling terminal.
        .custom_flags(libc::O_NOCTTY)
        .open(console);
    let result = opened.and_then(|mut f| f.write_all(format!("{program}: {line}\n").as_bytes()));
    match result {
        Ok(()) => true,
        Err(e) => {
            tracing::warn!(console = %console.display(), error = %e, "cannot write to the console");
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn appends_lines_and_tolerates_missing_console() {
        let dir = tempfile::tempdir().map_err(|e| e.to_string());
        let Ok(dir) = dir else { return };
        let path = dir.path().join("console");
        assert!(!write_line(&dir.path().join("no/such/dir"), "p", "x"));
        assert!(!write_line(Path::new(""), "p", "x"));
        std::fs::write(&path, "").ok();
        assert!(write_line(&path, "p", "one"));
        assert!(write_line(&path, "p", "two"));
        assert_eq!(
            std::fs::read_to_string(&path).ok().as_deref(),
            Some("p: one\np: two\n")
        );
    }
}
