//! Helpers shared by the integration tests: a tiny DNS client, record
//! files, and guards for processes and network namespaces.
#![allow(dead_code, unreachable_pub)]

use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use hickory_proto::op::{Message, Query, ResponseCode};
use hickory_proto::rr::{Name, RData, RecordType};
use smarter_common::records::{self, Record};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};

pub type TestResult = Result<(), Box<dyn std::error::Error>>;

pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

pub fn have(cmd: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {cmd}")])
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

pub fn record(id: &str, pod: &str, ns: &str, ips: &[&str]) -> Record {
    Record {
        version: records::VERSION,
        container_id: id.into(),
        ifname: "eth0".into(),
        network: "smartnet".into(),
        pod_name: Some(pod.into()),
        namespace: Some(ns.into()),
        hostname: None,
        ips: ips.iter().filter_map(|s| s.parse().ok()).collect(),
    }
}

pub fn query_bytes(
    name: &str,
    t: RecordType,
) -> Result<(u16, Vec<u8>), Box<dyn std::error::Error>> {
    let mut m = Message::query();
    m.metadata.recursion_desired = true;
    m.add_query(Query::query(Name::from_ascii(name)?, t));
    Ok((m.metadata.id, m.to_vec()?))
}

/// One question over UDP; `None` when no answer came within `timeout`.
pub async fn udp_query(
    server: SocketAddr,
    name: &str,
    t: RecordType,
    timeout: Duration,
) -> Result<Option<Message>, Box<dyn std::error::Error>> {
    let (id, bytes) = query_bytes(name, t)?;
    let s = UdpSocket::bind("127.0.0.1:0").await?;
    s.send_to(&bytes, server).await?;
    let mut buf = vec![0u8; 4096];
    let deadline = Instant::now() + timeout;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, s.recv_from(&mut buf)).await {
            Err(_) => return Ok(None),
            Ok(r) => {
                let (n, _) = r?;
                let m = Message::from_vec(&buf[..n])?;
                if m.metadata.id == id {
                    return Ok(Some(m));
                }
            }
        }
    }
}

pub async fn tcp_query(
    server: SocketAddr,
    name: &str,
    t: RecordType,
) -> Result<Message, Box<dyn std::error::Error>> {
    let (_, bytes) = query_bytes(name, t)?;
    let mut s = tokio::time::timeout(Duration::from_secs(5), TcpStream::connect(server)).await??;
    let len = u16::try_from(bytes.len())?;
    s.write_all(&len.to_be_bytes()).await?;
    s.write_all(&bytes).await?;
    let mut l = [0u8; 2];
    tokio::time::timeout(Duration::from_secs(5), s.read_exact(&mut l)).await??;
    let mut buf = vec![0u8; usize::from(u16::from_be_bytes(l))];
    s.read_exact(&mut buf).await?;
    Ok(Message::from_vec(&buf)?)
}

pub fn addrs(m: &Message) -> Vec<IpAddr> {
    let mut v: Vec<IpAddr> = m
        .answers
        .iter()
        .filter_map(|r| match &r.data {
            RData::A(a) => Some(IpAddr::V4(a.0)),
            RData::AAAA(a) => Some(IpAddr::V6(a.0)),
            _ => None,
        })
        .collect();
    v.sort();
    v
}

pub fn rcode(m: &Option<Message>) -> Option<ResponseCode> {
    m.as_ref().map(|m| m.metadata.response_code)
}

/// A child process killed (and reaped) on drop.
pub struct ChildGuard(pub Child);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// dnsmasq answering `*.<domain>` with `answer`, listening on `addr`.
pub fn dnsmasq(
    addr: SocketAddr,
    domain: &str,
    answer: &str,
    netns: Option<&str>,
) -> std::io::Result<ChildGuard> {
    let mut cmd = match netns {
        Some(ns) => {
            let mut c = Command::new("ip");
            c.args(["netns", "exec", ns, "dnsmasq"]);
            c
        }
        None => Command::new("dnsmasq"),
    };
    cmd.args([
        "--keep-in-foreground",
        "--no-resolv",
        "--no-hosts",
        "--bind-interfaces",
        "--user=root",
        "--pid-file=",
        "--log-facility=-",
        "--local-ttl=300",
        &format!("--listen-address={}", addr.ip()),
        &format!("--port={}", addr.port()),
        &format!("--address=/{domain}/{answer}"),
    ]);
    if !is_root() {
        cmd.arg("--user=");
    }
    let child = cmd.stdout(Stdio::null()).stderr(Stdio::null()).spawn()?;
    Ok(ChildGuard(child))
}

/// Poll `f` every millisecond until it returns true or `limit` passes;
/// returns the time it took.
pub async fn wait_until<F, Fut>(limit: Duration, mut f: F) -> Option<Duration>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let start = Instant::now();
    while start.elapsed() < limit {
        if f().await {
            return Some(start.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    None
}

pub fn write_record(dir: &Path, r: &Record) -> Result<(), records::RecordError> {
    records::write(dir, r).map(|_| ())
}
