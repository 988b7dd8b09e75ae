//! Docker mode (k3s `--docker`, the paper's design): attach the pod's
//! sandbox container to a Docker user-defined network through the Docker
//! Engine API, with the pod name as a network alias so Docker's embedded DNS
//! (127.0.0.11) answers for it, and report the address Docker assigned.
//!
//! The API is spoken with a tiny HTTP/1.1 client over the Unix socket (see
//! `docs/decisions/0022-cni-docker-api-client.md`): the plugin makes at most four
//! requests per call, so a full async client stack would only cost build
//! time and binary size.

use std::io::{Read, Write};
use std::net::IpAddr;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use serde_json::{Value, json};

use crate::netconf::{Ipam, NetConf};
use crate::spec::{CniError, CniResult, Env, Interface, IpConfig, Route, code};

/// A Docker API failure.
#[derive(Debug, thiserror::Error)]
pub enum DockerError {
    /// Talking to the socket failed.
    #[error("docker socket {path}: {op}: {source}")]
    Io {
        /// Socket path.
        path: String,
        /// What we were doing.
        op: &'static str,
        /// The OS error.
        source: std::io::Error,
    },
    /// The daemon answered with an error status.
    #[error("docker {method} {target}: HTTP {status}: {message}")]
    Status {
        /// HTTP method.
        method: &'static str,
        /// Request path.
        target: String,
        /// HTTP status.
        status: u16,
        /// Docker's `message`.
        message: String,
    },
    /// The answer was not the HTTP the daemon speaks.
    #[error("docker {method} {target}: malformed HTTP response: {problem}")]
    Http {
        /// HTTP method.
        method: &'static str,
        /// Request path.
        target: String,
        /// What was wrong.
        problem: HttpProblem,
    },
    /// The body was not the JSON expected.
    #[error("docker {method} {target}: response is not JSON: {source}")]
    Json {
        /// HTTP method.
        method: &'static str,
        /// Request path.
        target: String,
        /// The parser's error.
        source: serde_json::Error,
    },
}

/// How an HTTP response was malformed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum HttpProblem {
    /// The connection closed before the end of the headers.
    #[error("no end of headers")]
    NoHeaderEnd,
    /// The status line has no numeric status.
    #[error("no status code")]
    NoStatus,
    /// `Transfer-Encoding: chunked` framing is broken.
    #[error("bad chunked encoding")]
    BadChunks,
}

impl DockerError {
    /// The HTTP status, if the daemon answered.
    pub fn status(&self) -> Option<u16> {
        match self {
            Self::Status { status, .. } => Some(*status),
            _ => None,
        }
    }
}

/// Minimal Docker Engine API client over a Unix socket.
#[derive(Debug, Clone)]
pub struct Docker {
    socket: std::path::PathBuf,
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// Decode a `Transfer-Encoding: chunked` body.
fn dechunk(mut body: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let line_end = find(body, b"\r\n")?;
        let size_str = std::str::from_utf8(&body[..line_end]).ok()?;
        let size = usize::from_str_radix(size_str.split(';').next()?.trim(), 16).ok()?;
        body = &body[line_end + 2..];
        if size == 0 {
            return Some(out);
        }
        out.extend_from_slice(body.get(..size)?);
        body = body.get(size + 2..)?;
    }
}

impl Docker {
    /// A client for the daemon at `socket`.
    pub fn new(socket: &Path) -> Self {
        Self {
            socket: socket.to_path_buf(),
        }
    }

    /// One request; returns the HTTP status and the (de-chunked) body.
    fn exchange(
        &self,
        method: &'static str,
        target: &str,
        body: Option<&Value>,
    ) -> Result<(u16, Vec<u8>), DockerError> {
        let io = |op| {
            let path = self.socket.display().to_string();
            move |source| DockerError::Io { path, op, source }
        };
        let mut s = UnixStream::connect(&self.socket).map_err(io("connect"))?;
        s.set_read_timeout(Some(Duration::from_secs(30)))
            .map_err(io("set timeout"))?;
        let payload = body.map(Value::to_string).unwrap_or_default();
        let mut req = format!(
            "{method} {target} HTTP/1.1\r\nHost: docker\r\nUser-Agent: smarter-cni\r\nConnection: close\r\n"
        );
        if body.is_some() {
            req.push_str(&format!(
                "Content-Type: application/json\r\nContent-Length: {}\r\n",
                payload.len()
            ));
        }
        req.push_str("\r\n");
        req.push_str(&payload);
        s.write_all(req.as_bytes()).map_err(io("write"))?;
        let mut raw = Vec::new();
        s.read_to_end(&mut raw).map_err(io("read"))?;
        let malformed = |problem| DockerError::Http {
            method,
            target: target.to_string(),
            problem,
        };
        let head_end = find(&raw, b"\r\n\r\n").ok_or(malformed(HttpProblem::NoHeaderEnd))?;
        let head = String::from_utf8_lossy(&raw[..head_end]).into_owned();
        let status: u16 = head
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or(malformed(HttpProblem::NoStatus))?;
        let chunked = head.lines().any(|l| {
            let l = l.to_ascii_lowercase();
            l.starts_with("transfer-encoding:") && l.contains("chunked")
        });
        let body = &raw[head_end + 4..];
        let body = if chunked {
            dechunk(body).ok_or(malformed(HttpProblem::BadChunks))?
        } else {
            body.to_vec()
        };
        Ok((status, body))
    }

    /// One request; returns the JSON body (`Null` when empty).
    pub fn request(
        &self,
        method: &'static str,
        target: &str,
        body: Option<&Value>,
    ) -> Result<Value, DockerError> {
        let (status, body) = self.exchange(method, target, body)?;
        let parsed = if body.iter().all(u8::is_ascii_whitespace) {
            Ok(Value::Null)
        } else {
            serde_json::from_slice(&body)
        };
        if (200..300).contains(&status) {
            parsed.map_err(|source| DockerError::Json {
                method,
                target: target.to_string(),
                source,
            })
        } else {
            // Docker's error bodies are `{"message": ...}`; anything else
            // still reports the status.
            Err(DockerError::Status {
                method,
                target: target.to_string(),
                status,
                message: parsed
                    .ok()
                    .as_ref()
                    .and_then(|v| v.get("message"))
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_string(),
            })
        }
    }

    /// `GET /_ping`: the daemon answers 200 (its body is plain `OK`).
    pub fn ping(&self) -> Result<(), DockerError> {
        let (status, body) = self.exchange("GET", "/_ping", None)?;
        if status == 200 {
            return Ok(());
        }
        Err(DockerError::Status {
            method: "GET",
            target: "/_ping".into(),
            status,
            message: String::from_utf8_lossy(&body).trim().to_string(),
        })
    }
}

fn docker_err(e: DockerError) -> CniError {
    let code = match e {
        DockerError::Io { .. } => code::TRY_AGAIN_LATER,
        DockerError::Status { status: 404, .. } => code::UNKNOWN_CONTAINER,
        _ => code::PLUGIN,
    };
    CniError::new(code, "Docker Engine API").with_details(e.to_string())
}

fn network_name(conf: &NetConf) -> &str {
    conf.docker.network.as_deref().unwrap_or(&conf.name)
}

fn client(conf: &NetConf) -> Docker {
    Docker::new(&conf.docker.socket)
}

/// Percent-encode a path segment (names are `[A-Za-z0-9_.-]`, ids hex, so
/// this only guards against surprises).
fn seg(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.') {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

fn ensure_network(d: &Docker, conf: &NetConf) -> Result<(), DockerError> {
    let name = network_name(conf);
    match d.request("GET", &format!("/networks/{}", seg(name)), None) {
        Ok(_) => return Ok(()),
        Err(e) if e.status() == Some(404) => {}
        Err(e) => return Err(e),
    }
    let mut body = json!({ "Name": name, "Driver": "bridge", "CheckDuplicate": true });
    if let Ipam::Builtin(b) = &conf.ipam {
        body["IPAM"] = json!({ "Config": [{ "Subnet": b.subnet.to_string(), "Gateway": b.gateway.to_string() }] });
    }
    match d.request("POST", "/networks/create", Some(&body)) {
        Ok(_) => Ok(()),
        Err(e) if e.status() == Some(409) => Ok(()), // created by a parallel ADD
        Err(e) => Err(e),
    }
}

fn endpoint(d: &Docker, conf: &NetConf, id: &str) -> Result<Option<Value>, DockerError> {
    let info = d.request("GET", &format!("/containers/{}/json", seg(id)), None)?;
    Ok(info["NetworkSettings"]["Networks"]
        .get(network_name(conf))
        .cloned()
        .filter(|v| v.is_object()))
}

/// ADD: connect the sandbox container with the pod name as alias.
pub fn add(conf: &NetConf, env: &Env) -> Result<CniResult, CniError> {
    let d = client(conf);
    ensure_network(&d, conf).map_err(docker_err)?;
    let id = &env.container_id;
    // A sandbox created with --network none cannot join another network.
    match d.request(
        "POST",
        "/networks/none/disconnect",
        Some(&json!({ "Container": id, "Force": true })),
    ) {
        Ok(_) => {}
        Err(e) if matches!(e.status(), Some(400..=499)) => {}
        Err(e) => return Err(docker_err(e)),
    }
    if endpoint(&d, conf, id).map_err(docker_err)?.is_none() {
        let mut aliases = Vec::new();
        if let Some(p) = env.pod_name() {
            aliases.push(p.to_string());
        }
        d.request(
            "POST",
            &format!("/networks/{}/connect", seg(network_name(conf))),
            Some(&json!({ "Container": id, "EndpointConfig": { "Aliases": aliases } })),
        )
        .map_err(docker_err)?;
    }
    let ep = endpoint(&d, conf, id).map_err(docker_err)?.ok_or_else(|| {
        CniError::new(
            code::PLUGIN,
            "container is not on the network after connect",
        )
    })?;
    let ip: IpAddr = ep["IPAddress"]
        .as_str()
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| CniError::new(code::PLUGIN, "Docker assigned no IPv4 address"))?;
    let prefix = ep["IPPrefixLen"].as_u64().unwrap_or(32);
    let gateway: Option<IpAddr> = ep["Gateway"].as_str().and_then(|s| s.parse().ok());
    let mut routes = Vec::new();
    if let Some(gw) = gateway {
        routes.push(Route {
            dst: "0.0.0.0/0".into(),
            gw: Some(gw),
        });
    }
    Ok(CniResult {
        interfaces: vec![Interface {
            name: env.ifname.clone(),
            mac: ep["MacAddress"]
                .as_str()
                .filter(|m| !m.is_empty())
                .map(str::to_string),
            sandbox: env.netns.as_ref().map(|p| p.display().to_string()),
            mtu: None,
        }],
        ips: vec![IpConfig {
            address: format!("{ip}/{prefix}"),
            gateway,
            interface: Some(0),
        }],
        routes,
        dns: conf.dns.clone(),
    })
}

/// DEL: disconnect; a container, network or attachment that is gone is
/// fine (Docker answers 500 for "not connected", so look first).
pub fn del(conf: &NetConf, env: &Env) -> Result<(), CniError> {
    let d = client(conf);
    match endpoint(&d, conf, &env.container_id) {
        Ok(Some(_)) => {}
        Ok(None) => return Ok(()),
        Err(e) if e.status() == Some(404) => return Ok(()),
        Err(e) => return Err(docker_err(e)),
    }
    match d.request(
        "POST",
        &format!("/networks/{}/disconnect", seg(network_name(conf))),
        Some(&json!({ "Container": env.container_id, "Force": true })),
    ) {
        Ok(_) => Ok(()),
        Err(e) if matches!(e.status(), Some(400..=499)) => Ok(()),
        Err(e) => Err(docker_err(e)),
    }
}

/// CHECK: the container is on the network with an address.
pub fn check(conf: &NetConf, env: &Env) -> Result<(), CniError> {
    let d = client(conf);
    let ep = endpoint(&d, conf, &env.container_id)
        .map_err(docker_err)?
        .ok_or_else(|| CniError::new(code::PLUGIN, "container is not on the network"))?;
    if ep["IPAddress"].as_str().is_none_or(str::is_empty) {
        return Err(CniError::new(
            code::PLUGIN,
            "container has no address on the network",
        ));
    }
    Ok(())
}

/// STATUS: the daemon answers.
pub fn status(conf: &NetConf) -> Result<(), CniError> {
    let d = client(conf);
    match d.ping() {
        Ok(()) => Ok(()),
        Err(e) => Err(
            CniError::new(code::NOT_AVAILABLE, "Docker is not reachable")
                .with_details(e.to_string()),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A daemon that answers every connection with `reply`.
    fn daemon(reply: &'static [u8]) -> (tempfile::TempDir, Docker) {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("docker.sock");
        let listener = std::os::unix::net::UnixListener::bind(&socket).unwrap();
        std::thread::spawn(move || {
            for mut conn in listener.incoming().flatten() {
                let mut buf = [0u8; 4096];
                let _ = conn.read(&mut buf);
                let _ = conn.write_all(reply);
            }
        });
        (dir, Docker::new(&socket))
    }

    #[test]
    fn errors_are_typed() {
        let (_d, ok) = daemon(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nOK");
        assert!(ok.ping().is_ok());
        assert!(matches!(
            ok.request("GET", "/containers/x/json", None),
            Err(DockerError::Json { .. })
        ));
        let (_d, gone) = daemon(
            b"HTTP/1.1 404 Not Found\r\nTransfer-Encoding: chunked\r\n\r\n14\r\n{\"message\":\"no x\"}\r\n\r\n0\r\n\r\n",
        );
        let e = gone.request("GET", "/containers/x/json", None).unwrap_err();
        assert_eq!(e.status(), Some(404));
        assert_eq!(
            e.to_string(),
            "docker GET /containers/x/json: HTTP 404: no x"
        );
        let (_d, cut) = daemon(b"HTTP/1.1 200 OK\r\n");
        assert!(matches!(
            cut.ping(),
            Err(DockerError::Http {
                problem: HttpProblem::NoHeaderEnd,
                ..
            })
        ));
        let missing = Docker::new(Path::new("/nonexistent/docker.sock"));
        let e = missing.ping().unwrap_err();
        assert!(e.to_string().contains("/nonexistent/docker.sock"), "{e}");
    }

    #[test]
    fn dechunks() {
        assert_eq!(
            dechunk(b"3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n").as_deref(),
            Some(&b"abcde"[..])
        );
        assert_eq!(dechunk(b"zz\r\n"), None);
    }

    #[test]
    fn segments_escape() {
        assert_eq!(seg("my net/x"), "my%20net%2Fx");
        assert_eq!(seg("abc-1.2_3"), "abc-1.2_3");
    }
}
