//! Child processes that do not outlive their test.

use std::process::{Child, ExitStatus};
use std::time::Duration;

use crate::wait::{Timeout, wait_until};

/// A child process killed (and reaped) on drop, also when the test panics.
#[derive(Debug)]
pub struct ChildGuard(pub Child);

impl ChildGuard {
    /// The child's pid, as `kill(2)` takes it.
    pub fn pid(&self) -> libc::pid_t {
        // A pid always fits pid_t; 0 would only signal our own group, and
        // cannot be a child's pid.
        libc::pid_t::try_from(self.0.id()).unwrap_or(0)
    }

    /// Send `sig` to the child.
    pub fn signal(&self, sig: libc::c_int) -> std::io::Result<()> {
        let pid = self.pid();
        if pid <= 0 {
            return Err(std::io::Error::other("no pid to signal"));
        }
        // SAFETY: kill(2) on our own child's pid with a caller's signal
        // number; it has no memory effects.
        if unsafe { libc::kill(pid, sig) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(())
    }

    /// Wait for the child to exit, at most `limit` ([`wait_exit`]).
    pub fn wait_exit(&mut self, limit: Duration) -> Result<ExitStatus, Timeout> {
        wait_exit(&mut self.0, limit)
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        // It may have exited already: nothing to report then.
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Wait for `child` to exit, at most `limit`; the error names the child.
pub fn wait_exit(child: &mut Child, limit: Duration) -> Result<ExitStatus, Timeout> {
    let pid = child.id();
    wait_until(
        format_args!("process {pid} to exit"),
        limit,
        Duration::from_millis(5),
        || child.try_wait().ok().flatten(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;

    #[test]
    fn kills_on_drop_and_waits_for_exit() {
        let child = Command::new("sleep").arg("600").spawn();
        let child = child.unwrap_or_else(|e| panic!("spawn sleep: {e}"));
        let pid = child.id();
        drop(ChildGuard(child));
        // Reaped: no such process any more.
        assert!(!std::path::Path::new(&format!("/proc/{pid}")).exists());

        let mut g = ChildGuard(
            Command::new("sleep")
                .arg("600")
                .spawn()
                .unwrap_or_else(|e| panic!("{e}")),
        );
        assert!(g.wait_exit(Duration::from_millis(30)).is_err());
        g.signal(libc::SIGTERM).unwrap_or_else(|e| panic!("{e}"));
        let st = g
            .wait_exit(Duration::from_secs(5))
            .unwrap_or_else(|e| panic!("{e}"));
        assert!(!st.success());
    }
}
