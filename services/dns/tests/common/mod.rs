//! Helpers shared by the integration tests: a tiny DNS client, record
//! files, and guards for processes and network namespaces.
#![allow(dead_code, unreachable_pub, unused_imports)]

use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use hickory_proto::op::{Message, Query, ResponseCode};
use hickory_proto::rr::{Name, RData, RecordType};
use smarter_common::records::{self, Record};
pub use smarter_test_support::{ChildGuard, have, is_root, require_peer, require_root, skip};
use smarter_test_support::{
    listening, port::PortError, start_with_retry, stderr_text, wait_started,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};

pub type TestResult = Result<(), Box<dyn std::error::Error>>;

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

/// dnsmasq answering `*.<domain>` with `answer`, listening on `addr`.
pub fn dnsmasq(
    addr: SocketAddr,
    domain: &str,
    answer: &str,
    netns: Option<&str>,
) -> std::io::Result<ChildGuard> {
    let child = dnsmasq_command(addr, domain, answer, netns)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()?;
    Ok(ChildGuard(child))
}

/// One dnsmasq per `(ip, answer)`, all on one port (a server's
/// `upstream_port` is one for all its upstreams), each answering
/// `*.<domain>` with its answer: started on a port dnsmasq binds itself,
/// picked again when one says the address is in use; returned once each
/// answers. No port is bound and released first.
pub fn dnsmasqs(
    upstreams: &[(IpAddr, &str)],
    domain: &str,
) -> Result<(Vec<ChildGuard>, u16), PortError> {
    start_with_retry(format_args!("dnsmasq for {domain}"), 20, |port| {
        let mut guards = Vec::new();
        for (ip, answer) in upstreams {
            let addr = SocketAddr::new(*ip, port);
            let mut g = ChildGuard(
                dnsmasq_command(addr, domain, answer, None)
                    .stdout(Stdio::null())
                    .stderr(Stdio::piped())
                    .spawn()?,
            );
            let probe = format!("x.{domain}.");
            let pid = g.0.id();
            wait_started(
                &mut g.0,
                format_args!("dnsmasq on {addr}"),
                Duration::from_secs(5),
                // Its own socket (another test's dnsmasq may hold the port),
                // and answering.
                || listening(pid, port) && answers_now(addr, &probe),
                stderr_text,
            )?;
            guards.push(g);
        }
        Ok(guards)
    })
}

/// Whether `server` answers an A question for `name` within 50 ms
/// (blocking: used while nothing else runs yet).
fn answers_now(server: SocketAddr, name: &str) -> bool {
    let Ok((id, bytes)) = query_bytes(name, RecordType::A) else {
        return false;
    };
    let bind = if server.is_ipv4() {
        "127.0.0.1:0"
    } else {
        "[::1]:0"
    };
    let Ok(s) = std::net::UdpSocket::bind(bind) else {
        return false;
    };
    if s.set_read_timeout(Some(Duration::from_millis(50))).is_err()
        || s.send_to(&bytes, server).is_err()
    {
        return false;
    }
    let mut buf = [0u8; 4096];
    s.recv_from(&mut buf)
        .ok()
        .and_then(|(n, _)| Message::from_vec(&buf[..n]).ok())
        .is_some_and(|m| m.metadata.id == id)
}

fn dnsmasq_command(addr: SocketAddr, domain: &str, answer: &str, netns: Option<&str>) -> Command {
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
    cmd
}

/// Poll `f` every millisecond until it returns true or `limit` passes;
/// returns the time it took (these tests assert on latencies), `None` on
/// timeout.
pub async fn wait_until<F, Fut>(limit: Duration, f: F) -> Option<Duration>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let start = Instant::now();
    smarter_test_support::wait_until_async("a condition", limit, Duration::from_millis(1), f)
        .await
        .ok()
        .map(|()| start.elapsed())
}

pub fn write_record(dir: &Path, r: &Record) -> Result<(), records::RecordError> {
    records::write(dir, r).map(|_| ())
}
