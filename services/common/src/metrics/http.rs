//! The `/metrics`, `/healthz` and `/readyz` server: just enough HTTP/1.x for
//! Prometheus and the kubelet's `httpGet` probes, on tokio alone.
//!
//! One request per connection (`Connection: close`), `GET` only, no body
//! read. The request head must fit in [`Limits::max_request_bytes`] (else
//! 431) and arrive within [`Limits::read_timeout`] (else 408); the answer
//! must be taken within [`Limits::write_timeout`]. At most
//! [`Limits::max_connections`] are served at once; further ones wait in the
//! listen backlog, so a flood of idle clients costs at most that many small
//! buffers and each is gone after its deadline.

use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;

use super::{CONTENT_TYPE, Exposition};

/// Whether the service is ready, and why (or why not): the `/readyz` body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Readiness {
    /// 200 when true, 503 when false.
    pub ready: bool,
    /// One line saying why.
    pub reason: String,
}

impl Readiness {
    /// Ready, because `reason`.
    pub fn ready(reason: impl Into<String>) -> Self {
        Self {
            ready: true,
            reason: reason.into(),
        }
    }

    /// Not ready, because `reason`.
    pub fn not_ready(reason: impl Into<String>) -> Self {
        Self {
            ready: false,
            reason: reason.into(),
        }
    }
}

/// What a service plugs into the server.
pub trait Endpoints: Send + Sync + 'static {
    /// Write the service's own series (the process metrics are added after
    /// them by the server).
    fn metrics(&self, out: &mut Exposition);

    /// What `/readyz` answers. `/healthz` always answers 200 while the
    /// process serves it.
    fn readiness(&self) -> Readiness;
}

/// Bounds on what one client may cost.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Longest request head (request line and headers) accepted.
    pub max_request_bytes: usize,
    /// Time for the whole request head to arrive.
    pub read_timeout: Duration,
    /// Time for the client to take the whole answer.
    pub write_timeout: Duration,
    /// Connections served at once.
    pub max_connections: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            // A probe or scrape sends a request line and a few headers.
            max_request_bytes: 4096,
            // The kubelet's probes time out after 1 s by default; a client
            // that needs more than 2 s for a few hundred bytes is not one.
            read_timeout: Duration::from_secs(2),
            write_timeout: Duration::from_secs(5),
            max_connections: 16,
        }
    }
}

/// A server started by [`start`]; dropping it stops it.
#[derive(Debug)]
pub struct Running {
    addr: std::net::SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl Running {
    /// The address it listens on.
    pub fn local_addr(&self) -> std::net::SocketAddr {
        self.addr
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The address given to [`start`] could not be listened on.
#[derive(Debug, thiserror::Error)]
#[error("cannot listen on {addr} for /metrics, /healthz and /readyz: {source}")]
pub struct ListenError {
    /// The address as configured.
    pub addr: String,
    /// The OS error.
    #[source]
    pub source: std::io::Error,
}

/// Bind `addr` (`ip:port`; empty: no server, `Ok(None)`) and serve there
/// with the default [`Limits`] until the returned handle is dropped.
pub async fn start<E: Endpoints>(
    addr: &str,
    endpoints: Arc<E>,
) -> Result<Option<Running>, ListenError> {
    if addr.is_empty() {
        return Ok(None);
    }
    let err = |source| ListenError {
        addr: addr.to_string(),
        source,
    };
    let listener = TcpListener::bind(addr).await.map_err(err)?;
    let addr = listener.local_addr().map_err(err)?;
    tracing::info!(%addr, "metrics, healthz and readyz listening");
    Ok(Some(Running {
        addr,
        task: tokio::spawn(serve(listener, endpoints)),
    }))
}

/// Serve on `listener` with the default [`Limits`] until the task is
/// dropped or aborted.
pub async fn serve<E: Endpoints>(listener: TcpListener, endpoints: Arc<E>) {
    serve_with(listener, endpoints, Limits::default()).await;
}

/// [`serve`] with explicit limits.
pub async fn serve_with<E: Endpoints>(listener: TcpListener, endpoints: Arc<E>, limits: Limits) {
    let slots = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    loop {
        // Wait for a free slot before accepting: excess clients queue in the
        // kernel's backlog instead of in our memory.
        let Ok(permit) = Arc::clone(&slots).acquire_owned().await else {
            return;
        };
        let stream = match listener.accept().await {
            Ok((s, _)) => s,
            Err(error) => {
                // EMFILE and friends: do not spin.
                tracing::warn!(%error, "metrics server: accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let endpoints = Arc::clone(&endpoints);
        tokio::spawn(async move {
            handle(stream, endpoints.as_ref(), limits).await;
            drop(permit);
        });
    }
}

/// What the request head said, as far as we care.
#[derive(Debug, PartialEq, Eq)]
enum Head<'a> {
    /// `METHOD PATH` (query string removed).
    Request { method: &'a str, path: &'a str },
    /// Not an HTTP request line.
    Malformed,
}

fn parse_head(head: &[u8]) -> Head<'_> {
    let line_end = head
        .windows(2)
        .position(|w| w == b"\r\n")
        .unwrap_or(head.len());
    let Ok(line) = std::str::from_utf8(&head[..line_end]) else {
        return Head::Malformed;
    };
    let mut parts = line.split(' ');
    match (parts.next(), parts.next(), parts.next(), parts.next()) {
        (Some(method), Some(target), Some(version), None)
            if !method.is_empty() && version.starts_with("HTTP/1.") =>
        {
            let path = target.split_once('?').map_or(target, |(p, _)| p);
            Head::Request { method, path }
        }
        _ => Head::Malformed,
    }
}

/// Read the request head: `Ok(len)` once `\r\n\r\n` arrived, else the
/// status to answer with (`None`: the client left, nobody to answer).
async fn read_head(
    stream: &mut TcpStream,
    buf: &mut [u8],
    limits: Limits,
) -> Result<usize, Option<&'static str>> {
    let mut len = 0;
    let read = async {
        loop {
            if len == buf.len() {
                return Err(Some("431 Request Header Fields Too Large"));
            }
            let n = match stream.read(&mut buf[len..]).await {
                // Closed or reset before a whole head: nobody to answer.
                Ok(0) | Err(_) => return Err(None),
                Ok(n) => n,
            };
            // Only the new bytes and the three before them can complete it.
            let from = len.saturating_sub(3);
            len += n;
            if buf[from..len].windows(4).any(|w| w == b"\r\n\r\n") {
                return Ok(len);
            }
        }
    };
    tokio::time::timeout(limits.read_timeout, read)
        .await
        .unwrap_or(Err(Some("408 Request Timeout")))
}

async fn handle<E: Endpoints + ?Sized>(mut stream: TcpStream, endpoints: &E, limits: Limits) {
    let mut buf = vec![0u8; limits.max_request_bytes.max(16)];
    let text = "text/plain; charset=utf-8";
    let (status, content_type, body, allow) = match read_head(&mut stream, &mut buf, limits).await {
        Ok(len) => match parse_head(&buf[..len]) {
            Head::Request {
                method: "GET",
                path: "/metrics",
            } => {
                let mut e = Exposition::new();
                endpoints.metrics(&mut e);
                e.process();
                ("200 OK", CONTENT_TYPE, e.finish(), false)
            }
            Head::Request {
                method: "GET",
                path: "/healthz",
            } => ("200 OK", text, "ok\n".to_string(), false),
            Head::Request {
                method: "GET",
                path: "/readyz",
            } => {
                let r = endpoints.readiness();
                let status = if r.ready {
                    "200 OK"
                } else {
                    "503 Service Unavailable"
                };
                (status, text, format!("{}\n", r.reason), false)
            }
            Head::Request { method: "GET", .. } => {
                ("404 Not Found", text, "not found\n".to_string(), false)
            }
            Head::Request { .. } => (
                "405 Method Not Allowed",
                text,
                "GET only\n".to_string(),
                true,
            ),
            Head::Malformed => ("400 Bad Request", text, "bad request\n".to_string(), false),
        },
        Err(None) => return,
        Err(Some(status)) => (status, text, format!("{status}\n"), false),
    };
    let response = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n{}Connection: close\r\n\r\n{body}",
        body.len(),
        if allow { "Allow: GET\r\n" } else { "" },
    );
    let unread = status != "200 OK" && !status.starts_with("404") && !status.starts_with("503");
    let write = async {
        stream.write_all(response.as_bytes()).await?;
        stream.shutdown().await?;
        if unread {
            // The client may still be sending (an oversized or trickled
            // head): closing with unread bytes resets the connection and can
            // destroy our answer before the client reads it. Take what it
            // sends for a moment first, then close.
            let mut sink = [0u8; 1024];
            let drain = async {
                let mut taken = 0usize;
                while taken < 64 * 1024 {
                    match stream.read(&mut sink).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => taken += n,
                    }
                }
            };
            let _ = tokio::time::timeout(Duration::from_millis(250), drain).await;
        }
        Ok::<(), std::io::Error>(())
    };
    if let Err(error) = tokio::time::timeout(limits.write_timeout, write)
        .await
        .unwrap_or_else(|_| Err(std::io::ErrorKind::TimedOut.into()))
    {
        tracing::debug!(%error, "metrics server: answer not delivered");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_lines_parse() {
        assert_eq!(
            parse_head(b"GET /metrics?x=1 HTTP/1.1\r\nHost: a\r\n\r\n"),
            Head::Request {
                method: "GET",
                path: "/metrics"
            }
        );
        assert_eq!(
            parse_head(b"POST /readyz HTTP/1.0\r\n\r\n"),
            Head::Request {
                method: "POST",
                path: "/readyz"
            }
        );
        assert_eq!(parse_head(b"GET /metrics\r\n\r\n"), Head::Malformed);
        assert_eq!(
            parse_head(b"GET  /metrics HTTP/1.1\r\n\r\n"),
            Head::Malformed
        );
        assert_eq!(parse_head(b"\xff\xfe HTTP/1.1\r\n\r\n"), Head::Malformed);
        assert_eq!(parse_head(b"GET / SSH-2.0\r\n\r\n"), Head::Malformed);
    }
}
