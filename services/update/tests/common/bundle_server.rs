//! A bundle server for the tests: HTTP/1.1 on 127.0.0.1 port 0 with
//! std's TcpListener, supporting ranges and ETag/If-Range, and misbehaving on
//! request (cut connections, throttling, stalls, wrong bytes, ignored ranges,
//! error statuses).

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use sha2::{Digest, Sha256};
use smarter_update::desired::Sha256Digest;
use smarter_update::download::Target;

/// How the server misbehaves; changed by the test between requests.
#[derive(Debug, Clone, Default)]
pub struct Behaviour {
    /// Close the connection after this many body bytes of a response.
    pub cut_after: Option<u64>,
    /// Send at most this many bytes per second.
    pub throttle: Option<u64>,
    /// Pause this long after half the body.
    pub stall: Option<Duration>,
    /// Answer every request with 200 and the whole file.
    pub ignore_range: bool,
    /// Answer with this status and no body.
    pub status: Option<u16>,
    /// Serve these bytes instead of the bundle.
    pub body_override: Option<Vec<u8>>,
}

#[derive(Debug, Default)]
pub struct Seen {
    /// Range and If-Range headers of each request.
    pub requests: Vec<(Option<String>, Option<String>)>,
}

pub struct Server {
    pub addr: SocketAddr,
    pub behaviour: Arc<Mutex<Behaviour>>,
    pub seen: Arc<Mutex<Seen>>,
    pub body_bytes_sent: Arc<AtomicU64>,
}

pub const ETAG: &str = "\"bundle-v1\"";

impl Server {
    pub fn start(bundle: Vec<u8>) -> Server {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
        let addr = listener.local_addr().expect("local addr");
        let behaviour = Arc::new(Mutex::new(Behaviour::default()));
        let seen = Arc::new(Mutex::new(Seen::default()));
        let sent = Arc::new(AtomicU64::new(0));
        let bundle = Arc::new(bundle);
        let (b, s, n) = (behaviour.clone(), seen.clone(), sent.clone());
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let (b, s, n, bundle) = (b.clone(), s.clone(), n.clone(), bundle.clone());
                std::thread::spawn(move || {
                    let _ = serve(stream, &bundle, &b, &s, &n);
                });
            }
        });
        Server {
            addr,
            behaviour,
            seen,
            body_bytes_sent: sent,
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}/bundles/smarter-2026.12.1.raucb", self.addr)
    }

    pub fn set(&self, f: impl FnOnce(&mut Behaviour)) {
        f(&mut self.behaviour.lock().expect("lock"));
    }

    pub fn sent(&self) -> u64 {
        self.body_bytes_sent.load(Ordering::SeqCst)
    }

    pub fn requests(&self) -> Vec<(Option<String>, Option<String>)> {
        self.seen.lock().expect("lock").requests.clone()
    }
}

pub fn serve(
    stream: TcpStream,
    bundle: &[u8],
    behaviour: &Mutex<Behaviour>,
    seen: &Mutex<Seen>,
    sent: &AtomicU64,
) -> std::io::Result<()> {
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut range = None;
    let mut if_range = None;
    let mut line = String::new();
    reader.read_line(&mut line)?; // request line
    loop {
        line.clear();
        if reader.read_line(&mut line)? == 0 || line == "\r\n" {
            break;
        }
        if let Some((name, value)) = line.split_once(':') {
            let value = value.trim().to_string();
            match name.to_ascii_lowercase().as_str() {
                "range" => range = Some(value),
                "if-range" => if_range = Some(value),
                _ => {}
            }
        }
    }
    seen.lock()
        .expect("lock")
        .requests
        .push((range.clone(), if_range.clone()));
    let b = behaviour.lock().expect("lock").clone();
    let mut out = stream;
    if let Some(status) = b.status {
        write!(
            out,
            "HTTP/1.1 {status} Oops\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
        )?;
        return Ok(());
    }
    let body = b.body_override.as_deref().unwrap_or(bundle);
    let start = range
        .as_deref()
        .and_then(|r| r.strip_prefix("bytes="))
        .and_then(|r| r.strip_suffix('-'))
        .and_then(|r| r.parse::<usize>().ok())
        .filter(|_| !b.ignore_range && if_range.as_deref().is_none_or(|v| v == ETAG));
    let (head, part) = match start {
        Some(s) if s >= body.len() => {
            write!(
                out,
                "HTTP/1.1 416 Range Not Satisfiable\r\nContent-Range: bytes */{}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
                body.len()
            )?;
            return Ok(());
        }
        Some(s) => (
            format!(
                "HTTP/1.1 206 Partial Content\r\nContent-Range: bytes {s}-{}/{}\r\n",
                body.len() - 1,
                body.len()
            ),
            &body[s..],
        ),
        None => ("HTTP/1.1 200 OK\r\n".to_string(), body),
    };
    write!(
        out,
        "{head}Content-Length: {}\r\nETag: {ETAG}\r\nAccept-Ranges: bytes\r\nConnection: close\r\n\r\n",
        part.len()
    )?;
    let limit = b
        .cut_after
        .map_or(part.len(), |c| part.len().min(c as usize));
    let chunk = b.throttle.map_or(16 * 1024, |t| (t as usize / 10).max(1));
    let mut off = 0;
    let mut stalled = false;
    while off < limit {
        let end = limit.min(off + chunk);
        out.write_all(&part[off..end])?;
        sent.fetch_add((end - off) as u64, Ordering::SeqCst);
        off = end;
        if b.throttle.is_some() {
            std::thread::sleep(Duration::from_millis(100));
        }
        if let Some(pause) = b.stall.filter(|_| !stalled && off >= limit / 2) {
            stalled = true;
            std::thread::sleep(pause);
        }
    }
    out.flush()?;
    // Dropping the stream closes the connection (early when cut_after is set).
    Ok(())
}

pub fn bundle(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 7 % 251) as u8).collect()
}

pub fn target(server: &Server, bytes: &[u8]) -> Target {
    let mut sha = [0u8; 32];
    sha.copy_from_slice(&Sha256::digest(bytes));
    Target {
        url: server.url(),
        size: bytes.len() as u64,
        sha256: Sha256Digest(sha),
    }
}
