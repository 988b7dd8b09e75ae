//! Ports for servers under test, without a bind-then-release race.
//!
//! A server in the test's own process binds port 0 and reads its address
//! back; nothing here is needed for that. A peer in another process that
//! cannot report the port it bound (dnsmasq, sshd, a child binary given a
//! port in its config) is started by [`start_with_retry`]: it picks a port,
//! starts the peer on it, and when the peer reports "address in use" picks
//! another, a bounded number of times. Binding a port to learn a free one
//! and releasing it before the peer binds leaves a window in which another
//! test can take it; a retry closes that window.

use std::fmt::Display;
use std::io::Read;
use std::process::Child;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use crate::wait::wait_until;

/// Ports are picked below Linux's default ephemeral range (32768-60999),
/// so that outgoing connections of other tests never hold them.
const FIRST: u16 = 20_000;
const COUNT: u32 = 12_000;

/// Why one start attempt failed.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The port was taken: pick another and try again.
    #[error("address in use: {0}")]
    AddrInUse(String),
    /// Anything else: give up.
    #[error(transparent)]
    Other(Box<dyn std::error::Error + Send + Sync>),
}

impl StartError {
    /// `AddrInUse` when `text` (a peer's log or stderr) says the address is
    /// in use, else `Other` carrying `text`.
    pub fn from_output(text: &str) -> Self {
        if says_addr_in_use(text) {
            StartError::AddrInUse(text.trim().to_string())
        } else {
            StartError::Other(text.trim().to_string().into())
        }
    }
}

impl From<std::io::Error> for StartError {
    fn from(e: std::io::Error) -> Self {
        if e.kind() == std::io::ErrorKind::AddrInUse {
            StartError::AddrInUse(e.to_string())
        } else {
            StartError::Other(Box::new(e))
        }
    }
}

/// Whether a peer's output says its port was taken (the wording of
/// strerror(EADDRINUSE), as dnsmasq, sshd and Rust's io::Error print it).
pub fn says_addr_in_use(text: &str) -> bool {
    let t = text.to_ascii_lowercase();
    t.contains("address already in use") || t.contains("address in use")
}

/// Every start attempt failed.
#[derive(Debug, thiserror::Error)]
pub enum PortError {
    /// The peer failed for another reason than a taken port.
    #[error("starting {what} on port {port}: {source}")]
    Failed {
        what: String,
        port: u16,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// Every port tried was in use.
    #[error("starting {what}: {attempts} ports in a row were in use (last: {last})")]
    Exhausted {
        what: String,
        attempts: u32,
        last: String,
    },
}

/// Start `what` with `start(port)` on a picked port; on
/// [`StartError::AddrInUse`] pick another, at most `attempts` times.
/// Returns what `start` returned and the port it got.
pub fn start_with_retry<T>(
    what: impl Display,
    attempts: u32,
    mut start: impl FnMut(u16) -> Result<T, StartError>,
) -> Result<(T, u16), PortError> {
    let mut last = String::new();
    for _ in 0..attempts.max(1) {
        let port = pick();
        match start(port) {
            Ok(v) => return Ok((v, port)),
            Err(StartError::AddrInUse(why)) => last = format!("{port}: {why}"),
            Err(StartError::Other(source)) => {
                return Err(PortError::Failed {
                    what: what.to_string(),
                    port,
                    source,
                });
            }
        }
    }
    Err(PortError::Exhausted {
        what: what.to_string(),
        attempts: attempts.max(1),
        last,
    })
}

/// For a [`start_with_retry`] attempt: wait until `ready()` holds (the peer
/// answers), polling every 10 ms for at most `limit`. When the child exits
/// first, the attempt fails with [`StartError::from_output`] of what
/// `why(child)` reads (its stderr: [`stderr_text`], or its log), so a taken
/// port is retried and anything else is reported.
pub fn wait_started(
    child: &mut Child,
    what: impl Display,
    limit: Duration,
    mut ready: impl FnMut() -> bool,
    why: impl FnOnce(&mut Child) -> String,
) -> Result<(), StartError> {
    let up = wait_until(
        format_args!("{what} to start (or exit)"),
        limit,
        Duration::from_millis(10),
        || {
            if child.try_wait().ok().flatten().is_some() {
                return Some(false);
            }
            ready().then_some(true)
        },
    )
    .map_err(|e| StartError::Other(e.into()))?;
    if up {
        Ok(())
    } else {
        Err(StartError::from_output(&why(child)))
    }
}

/// A TCP port on 127.0.0.1 that nothing listens on, for a test of "the
/// server is unreachable": held bound (without listening, without
/// SO_REUSEADDR) as long as this lives, so no other test can take it and
/// every connection to it is refused.
#[derive(Debug)]
pub struct RefusedPort {
    port: u16,
    _socket: socket2::Socket,
}

impl RefusedPort {
    /// Bind a fresh port on 127.0.0.1 and hold it.
    pub fn new() -> std::io::Result<Self> {
        let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)?;
        socket.bind(&std::net::SocketAddr::from(([127, 0, 0, 1], 0)).into())?;
        let port = socket
            .local_addr()?
            .as_socket()
            .map(|a| a.port())
            .ok_or_else(|| std::io::Error::other("not an IP socket"))?;
        Ok(Self {
            port,
            _socket: socket,
        })
    }

    /// The port.
    pub fn port(&self) -> u16 {
        self.port
    }
}

/// Whether process `pid` holds a socket bound to local `port` (TCP
/// listening, or UDP), in this network namespace. A connection or an answer
/// alone cannot tell a peer from another test's peer that already had the
/// port; the socket's owner can.
pub fn listening(pid: u32, port: u16) -> bool {
    let inodes = bound_inodes(port);
    if inodes.is_empty() {
        return false;
    }
    let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return false;
    };
    fds.flatten().any(|fd| {
        std::fs::read_link(fd.path()).is_ok_and(|target| {
            let t = target.to_string_lossy();
            t.strip_prefix("socket:[")
                .and_then(|r| r.strip_suffix(']'))
                .is_some_and(|inode| inodes.iter().any(|i| i == inode))
        })
    })
}

/// The inodes of sockets bound to `port`: TCP ones listening (state 0A),
/// UDP ones (state 07), from /proc/net/{tcp,tcp6,udp,udp6}.
fn bound_inodes(port: u16) -> Vec<String> {
    let want = format!(":{port:04X}");
    let mut found = Vec::new();
    for (table, state) in [("tcp", "0A"), ("tcp6", "0A"), ("udp", "07"), ("udp6", "07")] {
        let Ok(text) = std::fs::read_to_string(format!("/proc/net/{table}")) else {
            continue;
        };
        for line in text.lines().skip(1) {
            let cols: Vec<&str> = line.split_whitespace().collect();
            if let (Some(local), Some(st), Some(inode)) = (cols.get(1), cols.get(3), cols.get(9))
                && local.ends_with(&want)
                && *st == state
            {
                found.push((*inode).to_string());
            }
        }
    }
    found
}

/// What an exited child wrote to its piped stderr (empty when not piped).
pub fn stderr_text(child: &mut Child) -> String {
    let mut text = String::new();
    if let Some(mut e) = child.stderr.take() {
        // A partial read still says what it can.
        let _ = e.read_to_string(&mut text);
    }
    text
}

/// A port in [FIRST, FIRST + COUNT): spread by process id and a counter so
/// that concurrent tests and test binaries rarely pick the same one (a
/// collision only costs a retry).
fn pick() -> u16 {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    let mix = std::process::id()
        .wrapping_mul(2_654_435_761)
        .wrapping_add(nanos)
        .wrapping_add(n.wrapping_mul(7_919));
    // COUNT fits u16 once reduced, and FIRST + COUNT < u16::MAX.
    FIRST + u16::try_from(mix % COUNT).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;

    #[test]
    fn retries_on_address_in_use_and_stops_on_other_errors() {
        // The first port picked is taken (held here), so the peer retries.
        let mut held = Vec::new();
        let mut tries = 0;
        let (listener, port) = start_with_retry("a listener", 5, |port| {
            tries += 1;
            if tries == 1 {
                held.push(TcpListener::bind(("127.0.0.1", port))?);
            }
            Ok(TcpListener::bind(("127.0.0.1", port))?)
        })
        .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(tries, 2);
        assert_eq!(listener.local_addr().map(|a| a.port()).ok(), Some(port));
        assert!(listening(std::process::id(), port));
        drop(listener);
        assert!(!listening(std::process::id(), port));
        assert!((FIRST..FIRST + 12_000).contains(&port));

        let e = start_with_retry("a taken port", 3, |_| {
            Err::<(), _>(StartError::from_output("bind: Address already in use"))
        });
        assert!(
            matches!(e, Err(PortError::Exhausted { attempts: 3, .. })),
            "{e:?}"
        );

        let mut calls = 0;
        let e = start_with_retry("a broken peer", 3, |_| {
            calls += 1;
            Err::<(), _>(StartError::from_output("no such option"))
        });
        assert!(matches!(e, Err(PortError::Failed { .. })), "{e:?}");
        assert_eq!(calls, 1);
    }

    #[test]
    fn a_refused_port_refuses_and_cannot_be_taken() {
        let r = RefusedPort::new().unwrap_or_else(|e| panic!("{e}"));
        let e = std::net::TcpStream::connect(("127.0.0.1", r.port()));
        assert_eq!(
            e.err().map(|e| e.kind()),
            Some(std::io::ErrorKind::ConnectionRefused)
        );
        let taken = TcpListener::bind(("127.0.0.1", r.port()));
        assert_eq!(
            taken.err().map(|e| e.kind()),
            Some(std::io::ErrorKind::AddrInUse)
        );
    }

    #[test]
    fn a_child_that_exits_saying_address_in_use_is_retried() {
        use std::process::{Command, Stdio};
        let spawn = |script: &str| {
            Command::new("sh")
                .args(["-c", script])
                .stderr(Stdio::piped())
                .spawn()
                .unwrap_or_else(|e| panic!("sh: {e}"))
        };
        let limit = Duration::from_secs(5);
        let mut c = spawn("echo 'bind: Address already in use' >&2; exit 1");
        let r = wait_started(&mut c, "a peer", limit, || false, stderr_text);
        assert!(matches!(r, Err(StartError::AddrInUse(_))), "{r:?}");
        let mut c = spawn("echo 'bad option' >&2; exit 2");
        let r = wait_started(&mut c, "a peer", limit, || false, stderr_text);
        assert!(matches!(r, Err(StartError::Other(_))), "{r:?}");
        let mut c = spawn("sleep 5");
        let r = wait_started(&mut c, "a peer", limit, || true, stderr_text);
        assert!(r.is_ok(), "{r:?}");
        let _ = c.kill();
        let _ = c.wait();
        let r = wait_started(
            &mut spawn("sleep 5"),
            "a peer",
            Duration::from_millis(30),
            || false,
            stderr_text,
        );
        assert!(matches!(r, Err(StartError::Other(_))), "{r:?}");
    }
}
