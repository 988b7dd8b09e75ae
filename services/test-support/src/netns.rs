//! Named network namespaces for tests, deleted on drop.
//!
//! A namespace is made with `ip netns add` (so `ip netns exec` and the
//! `ip -n` commands a test prints for debugging work on it) and deleted by
//! `Drop`, which runs while a failing test unwinds too: a failed run leaves
//! nothing behind for the next one.

use std::ffi::OsStr;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};

/// Where `ip netns add` mounts a namespace.
const NETNS_DIR: &str = "/run/netns";

/// A namespace operation failed.
#[derive(Debug, thiserror::Error)]
pub enum NetnsError {
    /// A command could not be started (`ip` missing?).
    #[error("running {command}: {source}")]
    Spawn {
        command: String,
        #[source]
        source: std::io::Error,
    },
    /// A command ran and failed.
    #[error("{command} failed ({status}): {stderr}")]
    Failed {
        command: String,
        status: std::process::ExitStatus,
        stderr: String,
    },
    /// Entering the namespace failed.
    #[error("entering network namespace {name}: {source}")]
    Enter {
        name: String,
        #[source]
        source: std::io::Error,
    },
}

/// A network namespace named `name`, with `lo` up; deleted on drop.
#[derive(Debug)]
pub struct Netns {
    name: String,
    path: PathBuf,
}

impl Netns {
    /// Make namespace `name` (a stale one of that name from a killed run is
    /// deleted first) and bring its loopback up.
    pub fn new(name: &str) -> Result<Self, NetnsError> {
        let _ = Command::new("ip")
            .args(["netns", "del", name])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        run(Command::new("ip").args(["netns", "add", name]))?;
        let ns = Self {
            name: name.to_string(),
            path: Path::new(NETNS_DIR).join(name),
        };
        ns.ip(&["link", "set", "lo", "up"])?;
        Ok(ns)
    }

    /// [`Netns::new`] with a name no other test in any process uses now:
    /// `prefix`, this process id and a counter.
    pub fn unique(prefix: &str) -> Result<Self, NetnsError> {
        static N: AtomicU32 = AtomicU32::new(0);
        let n = N.fetch_add(1, Ordering::Relaxed);
        Self::new(&format!("{prefix}-{}-{n}", std::process::id()))
    }

    /// Its name, as `ip netns` knows it.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Its bind mount (`/run/netns/NAME`), what CNI calls `CNI_NETNS`.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// `program` to be run inside the namespace (`ip netns exec NAME
    /// program`); add arguments and spawn it as any `Command`.
    pub fn command(&self, program: impl AsRef<OsStr>) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.name]).arg(program);
        c
    }

    /// Run `args` (program first) inside the namespace and return its
    /// output, whatever its exit status.
    pub fn exec(&self, args: &[&str]) -> Result<Output, NetnsError> {
        let Some((program, rest)) = args.split_first() else {
            return Err(NetnsError::Spawn {
                command: format!("ip netns exec {}", self.name),
                source: std::io::Error::other("no program given"),
            });
        };
        let mut c = self.command(program);
        c.args(rest);
        c.output().map_err(|source| NetnsError::Spawn {
            command: describe(&c),
            source,
        })
    }

    /// `ip -n NAME args...`; its stdout, or an error with its stderr.
    pub fn ip(&self, args: &[&str]) -> Result<String, NetnsError> {
        run(Command::new("ip").args(["-n", &self.name]).args(args))
    }

    /// Run `f` on a thread that has entered the namespace (sockets it opens
    /// live there), and return what it returns. A panic in `f` goes on in
    /// the caller.
    pub fn run<T: Send>(&self, f: impl FnOnce() -> T + Send) -> Result<T, NetnsError> {
        std::thread::scope(|s| {
            let worker = s.spawn(|| {
                self.enter()?;
                Ok(f())
            });
            match worker.join() {
                Ok(r) => r,
                Err(panic) => std::panic::resume_unwind(panic),
            }
        })
    }

    /// Move the calling thread into the namespace.
    fn enter(&self) -> Result<(), NetnsError> {
        let err = |source| NetnsError::Enter {
            name: self.name.clone(),
            source,
        };
        let f = std::fs::File::open(&self.path).map_err(err)?;
        // SAFETY: setns(2) on a descriptor we hold open for the call; it
        // changes only this thread's network namespace.
        if unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
            return Err(err(std::io::Error::last_os_error()));
        }
        Ok(())
    }

    /// A veth pair: `host` in the caller's namespace, `inside` in this one,
    /// both up. The pair is deleted when the returned guard drops (or with
    /// the namespace).
    pub fn veth(&self, host: &str, inside: &str) -> Result<Veth, NetnsError> {
        run(Command::new("ip").args([
            "link", "add", host, "type", "veth", "peer", "name", inside, "netns", &self.name,
        ]))?;
        let v = Veth {
            host: host.to_string(),
        };
        run(Command::new("ip").args(["link", "set", host, "up"]))?;
        self.ip(&["link", "set", inside, "up"])?;
        Ok(v)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        // Processes still inside keep the namespace alive but not its
        // name; there is nobody to report a failure to during a drop.
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .stderr(Stdio::null())
            .status();
    }
}

/// The host end of a veth pair made by [`Netns::veth`]; deleting it deletes
/// both ends.
#[derive(Debug)]
pub struct Veth {
    host: String,
}

impl Veth {
    /// The host end's name.
    pub fn host(&self) -> &str {
        &self.host
    }
}

impl Drop for Veth {
    fn drop(&mut self) {
        // Gone already when its namespace went first.
        let _ = Command::new("ip")
            .args(["link", "del", &self.host])
            .stderr(Stdio::null())
            .status();
    }
}

fn describe(c: &Command) -> String {
    std::iter::once(c.get_program())
        .chain(c.get_args())
        .map(|a| a.to_string_lossy())
        .collect::<Vec<_>>()
        .join(" ")
}

/// Run `c`; its stdout, or an error naming it with its stderr.
fn run(c: &mut Command) -> Result<String, NetnsError> {
    let out = c.output().map_err(|source| NetnsError::Spawn {
        command: describe(c),
        source,
    })?;
    if !out.status.success() {
        return Err(NetnsError::Failed {
            command: describe(c),
            status: out.status,
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::require::{require_peer, require_root};

    fn can() -> bool {
        require_root("network namespaces") && require_peer("ip", "iproute2")
    }

    #[test]
    fn deleted_on_drop_even_when_the_test_panics() {
        if !can() {
            return;
        }
        let mut path = PathBuf::new();
        let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let ns = Netns::unique("ts-panic").unwrap_or_else(|e| panic!("{e}"));
            path = ns.path().to_path_buf();
            assert!(path.exists());
            panic!("the test fails");
        }));
        assert!(outcome.is_err());
        assert!(!path.as_os_str().is_empty());
        assert!(!path.exists(), "{} left behind", path.display());
    }

    #[test]
    fn code_and_commands_run_inside_and_a_veth_connects_it() {
        if !can() {
            return;
        }
        let ns = Netns::unique("ts-run").unwrap_or_else(|e| panic!("{e}"));
        // A link made inside is not on the host, and the reverse.
        ns.ip(&["link", "add", "tsbr0", "type", "bridge"])
            .unwrap_or_else(|e| panic!("{e}"));
        let inside = ns
            .run(|| std::path::Path::new("/proc/self/net/dev").exists())
            .unwrap_or_else(|e| panic!("{e}"));
        assert!(inside);
        let links = ns
            .exec(&["ip", "-o", "link"])
            .unwrap_or_else(|e| panic!("{e}"));
        assert!(String::from_utf8_lossy(&links.stdout).contains("tsbr0"));
        assert!(!Path::new("/sys/class/net/tsbr0").exists());

        // A socket opened by run() is inside: it can bind an address only
        // the namespace has.
        ns.ip(&["addr", "add", "192.0.2.77/32", "dev", "lo"])
            .unwrap_or_else(|e| panic!("{e}"));
        let bound = ns
            .run(|| std::net::UdpSocket::bind("192.0.2.77:0").is_ok())
            .unwrap_or_else(|e| panic!("{e}"));
        assert!(bound);

        let host = format!("tsv{}", std::process::id() % 100_000);
        {
            let v = ns.veth(&host, "eth0").unwrap_or_else(|e| panic!("{e}"));
            assert!(Path::new("/sys/class/net").join(v.host()).exists());
            ns.ip(&["link", "show", "eth0"])
                .unwrap_or_else(|e| panic!("{e}"));
        }
        assert!(!Path::new("/sys/class/net").join(&host).exists());

        let e = ns.ip(&["link", "show", "no-such-link"]);
        assert!(matches!(e, Err(NetnsError::Failed { .. })), "{e:?}");
    }
}
