//! The health checks: systemd units (`systemctl is-active`), HTTP endpoints
//! (plain HTTP/1.0 GET, 200 expected) and the container runtime's socket.
//! Each failing check becomes one [`Failure`] that says exactly what was
//! wrong; the gate prints them.

use std::fmt;
use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use crate::config::{Config, RuntimeKind};

/// One thing that was not healthy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Failure {
    /// A unit was not `active`.
    Unit {
        /// The unit.
        name: String,
        /// What systemctl said instead (`failed`, `activating`...), or why it
        /// could not be asked.
        state: String,
    },
    /// An endpoint did not answer 200.
    Http {
        /// The URL.
        url: String,
        /// The status it gave, or the connection error.
        detail: String,
    },
    /// Every check passed, but not for `stable_s` without a break before the
    /// deadline (the failures that broke the run are reported beside it).
    Unstable {
        /// How long the checks had been passing without a break.
        passing_ms: u64,
        /// How long they must.
        required_s: u64,
    },
    /// The container runtime did not answer.
    Runtime {
        /// `docker` or `containerd`.
        kind: &'static str,
        /// Its socket.
        socket: String,
        /// What went wrong.
        detail: String,
    },
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Failure::Unit { name, state } => write!(f, "unit {name} is {state}, not active"),
            Failure::Http { url, detail } => write!(f, "endpoint {url}: {detail}, not 200"),
            Failure::Unstable {
                passing_ms,
                required_s,
            } => write!(
                f,
                "checks passing for only {:.1} s without a break, {required_s} s required \
                 (a unit restarting?)",
                *passing_ms as f64 / 1000.0
            ),
            Failure::Runtime {
                kind,
                socket,
                detail,
            } => write!(f, "container runtime {kind} at {socket}: {detail}"),
        }
    }
}

/// Run every configured check once; empty = healthy.
pub fn run_all(config: &Config) -> Vec<Failure> {
    let timeout = Duration::from_millis(config.check_timeout_ms);
    let mut failures = units(&config.systemctl, &config.units);
    for url in &config.http {
        if let Err(detail) = http_status(url, timeout) {
            failures.push(Failure::Http {
                url: url.clone(),
                detail,
            });
        }
    }
    if let Some(f) = runtime(
        config.container_runtime.kind,
        &config.container_runtime.socket,
        timeout,
    ) {
        failures.push(f);
    }
    failures
}

/// `systemctl is-active UNIT...` prints one state per unit, in order.
pub fn units(systemctl: &str, units: &[String]) -> Vec<Failure> {
    if units.is_empty() {
        return Vec::new();
    }
    let out = Command::new(systemctl)
        .arg("is-active")
        .arg("--")
        .args(units)
        .output();
    let all_failed = |state: String| {
        units
            .iter()
            .map(|name| Failure::Unit {
                name: name.clone(),
                state: state.clone(),
            })
            .collect()
    };
    let out = match out {
        Ok(o) => o,
        Err(e) => return all_failed(format!("unknown (cannot run {systemctl}: {e})")),
    };
    let stdout = String::from_utf8_lossy(&out.stdout);
    let states: Vec<&str> = stdout.lines().map(str::trim).collect();
    if states.len() != units.len() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        return all_failed(format!(
            "unknown ({systemctl} is-active gave {} answers for {} units, {}: {})",
            states.len(),
            units.len(),
            out.status,
            stderr.trim()
        ));
    }
    units
        .iter()
        .zip(states)
        .filter(|(_, state)| *state != "active")
        .map(|(name, state)| Failure::Unit {
            name: name.clone(),
            state: state.to_string(),
        })
        .collect()
}

/// A parsed `http://host:port/path`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpUrl {
    /// Host (name or address, IPv6 in brackets).
    pub host: String,
    /// Port (80 when absent).
    pub port: u16,
    /// Path and query, starting with `/`.
    pub path: String,
}

impl HttpUrl {
    /// Parse; the error says what is accepted.
    pub fn parse(url: &str) -> Result<Self, String> {
        let rest = url
            .strip_prefix("http://")
            .ok_or("only http://host:port/path URLs are supported")?;
        let (authority, path) = match rest.find('/') {
            Some(i) => rest.split_at(i),
            None => (rest, "/"),
        };
        let bracketed = authority.starts_with('[') && authority.ends_with(']');
        let (host, port) = match authority.rsplit_once(':') {
            Some((h, p)) if !bracketed => {
                let port = p
                    .parse::<u16>()
                    .ok()
                    .filter(|p| *p > 0)
                    .ok_or_else(|| format!("port {p:?} is not a number from 1 to 65535"))?;
                (h, port)
            }
            _ => (authority, 80),
        };
        if host.is_empty() || host.contains(char::is_whitespace) {
            return Err("has no host".into());
        }
        Ok(Self {
            host: host.to_string(),
            port,
            path: path.to_string(),
        })
    }
}

/// GET `url`; Ok when it answers 200, else what it did.
pub fn http_status(url: &str, timeout: Duration) -> Result<(), String> {
    let u = HttpUrl::parse(url)?;
    let host = u.host.trim_start_matches('[').trim_end_matches(']');
    let addrs = (host, u.port)
        .to_socket_addrs()
        .map_err(|e| format!("cannot resolve {}: {e}", u.host))?;
    let mut last = String::from("no address");
    for addr in addrs {
        match TcpStream::connect_timeout(&addr, timeout) {
            Ok(mut s) => {
                let request = format!(
                    "GET {} HTTP/1.0\r\nHost: {}\r\nUser-Agent: smarter-health-gate\r\nConnection: close\r\n\r\n",
                    u.path, u.host
                );
                return exchange(&mut s, timeout, &request, |s, t| {
                    s.set_read_timeout(Some(t))?;
                    s.set_write_timeout(Some(t))
                });
            }
            Err(e) => last = format!("cannot connect to {addr}: {e}"),
        }
    }
    Err(last)
}

/// Send `request`, read the status line, Ok on 200.
fn exchange<S: Read + Write>(
    s: &mut S,
    timeout: Duration,
    request: &str,
    set_timeouts: impl FnOnce(&S, Duration) -> std::io::Result<()>,
) -> Result<(), String> {
    set_timeouts(s, timeout).map_err(|e| format!("cannot set timeouts: {e}"))?;
    s.write_all(request.as_bytes())
        .map_err(|e| format!("cannot send request: {e}"))?;
    let mut head = Vec::new();
    let mut buf = [0u8; 256];
    while !head.contains(&b'\n') && head.len() < 4096 {
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => head.extend_from_slice(buf.get(..n).unwrap_or_default()),
            Err(e) => return Err(format!("no answer: {e}")),
        }
    }
    let line = String::from_utf8_lossy(&head);
    let status = line.lines().next().unwrap_or_default();
    let code = status.split_whitespace().nth(1).unwrap_or_default();
    match code {
        "200" => Ok(()),
        "" => Err("no HTTP status line in the answer".into()),
        c => Err(format!("HTTP {c}")),
    }
}

/// The container runtime check; `None` when healthy or not configured.
pub fn runtime(kind: RuntimeKind, socket: &Path, timeout: Duration) -> Option<Failure> {
    let (name, result) = match kind {
        RuntimeKind::None => return None,
        RuntimeKind::Docker => ("docker", docker_ping(socket, timeout)),
        RuntimeKind::Containerd => (
            "containerd",
            UnixStream::connect(socket)
                .map(drop)
                .map_err(|e| format!("cannot connect: {e}")),
        ),
    };
    result.err().map(|detail| Failure::Runtime {
        kind: name,
        socket: socket.display().to_string(),
        detail,
    })
}

fn docker_ping(socket: &Path, timeout: Duration) -> Result<(), String> {
    let mut s = UnixStream::connect(socket).map_err(|e| format!("cannot connect: {e}"))?;
    exchange(
        &mut s,
        timeout,
        "GET /_ping HTTP/1.0\r\nHost: docker\r\n\r\n",
        |s, t| {
            s.set_read_timeout(Some(t))?;
            s.set_write_timeout(Some(t))
        },
    )
    .map_err(|e| format!("GET /_ping: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        assert_eq!(
            HttpUrl::parse("http://127.0.0.1:9153/metrics"),
            Ok(HttpUrl {
                host: "127.0.0.1".into(),
                port: 9153,
                path: "/metrics".into()
            })
        );
        assert_eq!(
            HttpUrl::parse("http://localhost").map(|u| (u.port, u.path)),
            Ok((80, "/".into()))
        );
        assert_eq!(
            HttpUrl::parse("http://[::1]:8080/x").map(|u| (u.host, u.port)),
            Ok(("[::1]".into(), 8080))
        );
        assert!(HttpUrl::parse("https://x/").is_err());
        assert!(HttpUrl::parse("http://x:0/").is_err());
        assert!(HttpUrl::parse("http://:80/").is_err());
    }

    #[test]
    fn failure_messages() {
        assert_eq!(
            Failure::Unit {
                name: "smarter-dns.service".into(),
                state: "failed".into()
            }
            .to_string(),
            "unit smarter-dns.service is failed, not active"
        );
        assert_eq!(
            Failure::Http {
                url: "http://127.0.0.1:1/".into(),
                detail: "HTTP 503".into()
            }
            .to_string(),
            "endpoint http://127.0.0.1:1/: HTTP 503, not 200"
        );
    }

    #[test]
    fn missing_systemctl_fails_every_unit() {
        let f = units(
            "/nonexistent/systemctl",
            &["a.service".into(), "b.service".into()],
        );
        assert_eq!(f.len(), 2);
        // Natively the spawn fails; under qemu-user the child exits 127.
        assert!(
            f.iter().all(
                |f| matches!(f, Failure::Unit { state, .. } if state.starts_with("unknown ("))
            ),
            "{f:?}"
        );
    }

    #[test]
    fn missing_runtime_socket_fails() {
        let f = runtime(
            RuntimeKind::Docker,
            Path::new("/nonexistent/docker.sock"),
            Duration::from_millis(100),
        );
        assert!(
            f.is_some_and(|f| f.to_string().starts_with(
                "container runtime docker at /nonexistent/docker.sock: cannot connect"
            ))
        );
        assert_eq!(
            runtime(RuntimeKind::None, Path::new("/x"), Duration::from_millis(1)),
            None
        );
    }
}
