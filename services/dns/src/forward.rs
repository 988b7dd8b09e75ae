//! Forwarding of non-local names to the host's upstream resolvers.
//!
//! Upstreams come from the host's `resolv.conf` (`nameserver` lines) and are
//! replaced whenever it changes. Each question is tried on one upstream at a
//! time, starting with the one that answered last; a timeout, a network
//! error or SERVFAIL/REFUSED moves on to the next one (failover), and the
//! one that answers becomes the preferred one. Truncated UDP answers are
//! retried over TCP. Answers are cached for their TTL (bounded by
//! `cache_max_ttl`, negative answers by the SOA minimum) in a cache with a
//! fixed maximum number of entries, and the number of questions in flight
//! upstream at once is bounded: past it, questions fail fast with SERVFAIL
//! instead of piling up.

use std::collections::HashMap;
use std::io::ErrorKind;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use hickory_proto::op::{Edns, Message, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::{DNSClass, LowerName, RData, Record, RecordType};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};
use tokio::sync::Semaphore;

use crate::metrics::Metrics;

/// Why a question could not be forwarded.
#[derive(Debug, thiserror::Error)]
pub enum ForwardError {
    /// resolv.conf names no usable upstream.
    #[error("no upstream resolvers configured")]
    NoUpstreams,
    /// Too many questions are already in flight.
    #[error("too many upstream queries in flight")]
    Busy,
    /// Every upstream failed; the last failure is given.
    #[error("all upstreams failed, last: {0}")]
    AllFailed(String),
}

/// Parse the `nameserver` lines of a resolv.conf. Addresses in `exclude`
/// (our own listening sockets: forwarding to ourselves would loop) and
/// unparsable entries are skipped.
pub fn parse_resolv_conf(text: &str, port: u16, exclude: &[SocketAddr]) -> Vec<SocketAddr> {
    let mut out = Vec::new();
    for line in text.lines() {
        let mut words = line.split_whitespace();
        if words.next() != Some("nameserver") {
            continue;
        }
        let Some(addr) = words.next() else { continue };
        // Drop an IPv6 zone suffix (`fe80::1%eth0`): not routable for us.
        let Ok(ip) = addr.split('%').next().unwrap_or(addr).parse::<IpAddr>() else {
            continue;
        };
        let sa = SocketAddr::new(ip, port);
        if exclude.contains(&sa) || ip.is_unspecified() {
            continue;
        }
        if !out.contains(&sa) {
            out.push(sa);
        }
    }
    out
}

/// Read a resolv.conf file; a missing or unreadable file gives no upstreams.
pub fn read_resolv_conf(path: &Path, port: u16, exclude: &[SocketAddr]) -> Vec<SocketAddr> {
    match std::fs::read_to_string(path) {
        Ok(text) => parse_resolv_conf(&text, port, exclude),
        Err(error) => {
            tracing::warn!(path = %path.display(), %error, "cannot read resolv.conf");
            Vec::new()
        }
    }
}

/// A cached upstream answer.
#[derive(Debug, Clone)]
pub struct Cached {
    /// The upstream's response code (NOERROR or NXDOMAIN).
    pub rcode: ResponseCode,
    /// Answer section, TTLs as of `stored`.
    pub answers: Vec<Record>,
    /// Authority section, TTLs as of `stored`.
    pub authorities: Vec<Record>,
    stored: Instant,
    expires: Instant,
}

impl Cached {
    /// Whole seconds the answer has spent in the cache at `now`.
    pub fn age_at(&self, now: Instant) -> u32 {
        u32::try_from(now.saturating_duration_since(self.stored).as_secs()).unwrap_or(u32::MAX)
    }

    /// When the answer entered the cache.
    pub fn stored(&self) -> Instant {
        self.stored
    }

    /// When the answer leaves the cache.
    pub fn expires(&self) -> Instant {
        self.expires
    }

    /// The records with TTLs lowered by the time spent in the cache.
    pub fn aged(&self, now: Instant) -> (Vec<Record>, Vec<Record>) {
        let age = self.age_at(now);
        let age_all = |rs: &[Record]| {
            rs.iter()
                .map(|r| {
                    let mut r = r.clone();
                    r.ttl = r.ttl.saturating_sub(age);
                    r
                })
                .collect()
        };
        (age_all(&self.answers), age_all(&self.authorities))
    }
}

type CacheKey = (LowerName, RecordType, DNSClass);

/// Tunables of the forwarder.
#[derive(Debug, Clone)]
pub struct ForwarderConfig {
    /// Time to wait for one upstream before trying the next.
    pub timeout: Duration,
    /// Maximum cache entries.
    pub cache_size: usize,
    /// Longest time an answer is cached, seconds.
    pub cache_max_ttl: u32,
    /// Maximum questions in flight upstream.
    pub max_inflight: usize,
}

/// Forwards questions upstream, with a cache.
#[derive(Debug)]
pub struct Forwarder {
    config: ForwarderConfig,
    upstreams: RwLock<Arc<Vec<SocketAddr>>>,
    preferred: AtomicUsize,
    cache: Mutex<HashMap<CacheKey, Cached>>,
    inflight: Semaphore,
    metrics: Arc<Metrics>,
}

impl Forwarder {
    /// A forwarder with the given upstreams.
    pub fn new(config: ForwarderConfig, upstreams: Vec<SocketAddr>, metrics: Arc<Metrics>) -> Self {
        Self {
            inflight: Semaphore::new(config.max_inflight.max(1)),
            config,
            upstreams: RwLock::new(Arc::new(upstreams)),
            preferred: AtomicUsize::new(0),
            cache: Mutex::new(HashMap::new()),
            metrics,
        }
    }

    /// Replace the upstream list (resolv.conf changed). The cache is kept:
    /// its answers are still true.
    pub fn set_upstreams(&self, upstreams: Vec<SocketAddr>) {
        if let Ok(mut u) = self.upstreams.write() {
            if **u != upstreams {
                tracing::info!(?upstreams, "upstream resolvers changed");
            }
            *u = Arc::new(upstreams);
        }
        self.preferred.store(0, Ordering::Relaxed);
    }

    /// The current upstreams.
    pub fn upstreams(&self) -> Arc<Vec<SocketAddr>> {
        self.upstreams
            .read()
            .map(|u| Arc::clone(&u))
            .unwrap_or_default()
    }

    /// Number of cached answers.
    pub fn cache_len(&self) -> usize {
        self.cache.lock().map(|c| c.len()).unwrap_or(0)
    }

    fn cache_get(&self, key: &CacheKey, now: Instant) -> Option<Cached> {
        let cache = self.cache.lock().ok()?;
        cache.get(key).filter(|c| c.expires > now).cloned()
    }

    fn cache_put(&self, key: CacheKey, value: Cached, now: Instant) {
        let Ok(mut cache) = self.cache.lock() else {
            return;
        };
        if cache.len() >= self.config.cache_size && !cache.contains_key(&key) {
            cache.retain(|_, c| c.expires > now);
            // Still full: drop an arbitrary tenth, which is cheap and keeps
            // the bound without per-hit bookkeeping.
            if cache.len() >= self.config.cache_size {
                let drop: Vec<CacheKey> = cache
                    .keys()
                    .take((self.config.cache_size / 10).max(1))
                    .cloned()
                    .collect();
                for k in drop {
                    cache.remove(&k);
                }
            }
        }
        if self.config.cache_size > 0 {
            cache.insert(key, value);
        }
    }

    /// Answer `query` from the cache or upstream.
    pub async fn resolve(&self, query: &Query) -> Result<Cached, ForwardError> {
        let key: CacheKey = (
            LowerName::new(&query.name),
            query.query_type,
            query.query_class,
        );
        let now = Instant::now();
        if let Some(hit) = self.cache_get(&key, now) {
            self.metrics.cache_hits.inc();
            return Ok(hit);
        }
        self.metrics.cache_misses.inc();
        let _permit = self.inflight.try_acquire().map_err(|_| {
            self.metrics.upstream_busy.inc();
            ForwardError::Busy
        })?;
        let upstreams = self.upstreams();
        if upstreams.is_empty() {
            return Err(ForwardError::NoUpstreams);
        }
        let start = self.preferred.load(Ordering::Relaxed) % upstreams.len();
        let mut last = String::new();
        for i in 0..upstreams.len() {
            let idx = (start + i) % upstreams.len();
            let upstream = upstreams[idx];
            match exchange(upstream, query, self.config.timeout).await {
                Ok(msg)
                    if matches!(
                        msg.metadata.response_code,
                        ResponseCode::NoError | ResponseCode::NXDomain
                    ) =>
                {
                    self.preferred.store(idx, Ordering::Relaxed);
                    let cached = self.to_cached(msg, Instant::now());
                    if cached.expires > cached.stored {
                        self.cache_put(key, cached.clone(), cached.stored);
                    }
                    return Ok(cached);
                }
                Ok(msg) => {
                    self.metrics.upstream_failures.inc();
                    last = format!("{upstream}: {}", msg.metadata.response_code);
                }
                Err(e) => {
                    self.metrics.upstream_failures.inc();
                    tracing::debug!(%upstream, error = %e, "upstream failed");
                    last = format!("{upstream}: {e}");
                }
            }
        }
        Err(ForwardError::AllFailed(last))
    }

    fn to_cached(&self, msg: Message, now: Instant) -> Cached {
        let Message {
            metadata,
            answers,
            authorities,
            ..
        } = msg;
        let ttl = if answers.is_empty() {
            // Negative answer: RFC 2308, min(SOA TTL, SOA minimum).
            authorities
                .iter()
                .find_map(|r| match &r.data {
                    RData::SOA(soa) => Some(r.ttl.min(soa.minimum)),
                    _ => None,
                })
                .unwrap_or(0)
        } else {
            answers.iter().map(|r| r.ttl).min().unwrap_or(0)
        };
        let ttl = ttl.min(self.config.cache_max_ttl);
        Cached {
            rcode: metadata.response_code,
            answers,
            authorities,
            stored: now,
            expires: now + Duration::from_secs(u64::from(ttl)),
        }
    }
}

/// Errors of one exchange with one upstream.
#[derive(Debug, thiserror::Error)]
enum ExchangeError {
    #[error("timed out")]
    Timeout,
    #[error("{op}: {source}")]
    Io {
        op: &'static str,
        source: std::io::Error,
    },
    #[error("bad answer: {0}")]
    Proto(String),
}

fn io(op: &'static str) -> impl FnOnce(std::io::Error) -> ExchangeError {
    move |source| ExchangeError::Io { op, source }
}

fn build_query(query: &Query) -> Result<(u16, Vec<u8>), ExchangeError> {
    let mut msg = Message::query();
    msg.metadata.recursion_desired = true;
    msg.add_query(query.clone());
    let mut edns = Edns::new();
    edns.set_max_payload(1232);
    msg.set_edns(edns);
    let bytes = msg
        .to_vec()
        .map_err(|e| ExchangeError::Proto(e.to_string()))?;
    Ok((msg.metadata.id, bytes))
}

fn matches(resp: &Message, id: u16, query: &Query) -> bool {
    resp.metadata.id == id
        && resp.metadata.message_type == MessageType::Response
        && resp.metadata.op_code == OpCode::Query
        && resp.queries.len() == 1
        && LowerName::new(&resp.queries[0].name) == LowerName::new(&query.name)
        && resp.queries[0].query_type == query.query_type
}

async fn exchange(
    upstream: SocketAddr,
    query: &Query,
    timeout: Duration,
) -> Result<Message, ExchangeError> {
    let (id, bytes) = build_query(query)?;
    let udp = tokio::time::timeout(timeout, exchange_udp(upstream, id, &bytes, query))
        .await
        .map_err(|_| ExchangeError::Timeout)??;
    if !udp.metadata.truncation {
        return Ok(udp);
    }
    tokio::time::timeout(timeout, exchange_tcp(upstream, id, &bytes, query))
        .await
        .map_err(|_| ExchangeError::Timeout)?
}

async fn exchange_udp(
    upstream: SocketAddr,
    id: u16,
    bytes: &[u8],
    query: &Query,
) -> Result<Message, ExchangeError> {
    let local: SocketAddr = match upstream.ip() {
        IpAddr::V4(_) => (Ipv4Addr::UNSPECIFIED, 0).into(),
        IpAddr::V6(_) => (Ipv6Addr::UNSPECIFIED, 0).into(),
    };
    let sock = UdpSocket::bind(local).await.map_err(io("bind udp"))?;
    sock.connect(upstream).await.map_err(io("connect udp"))?;
    sock.send(bytes).await.map_err(io("send udp"))?;
    let mut buf = vec![0u8; 4096];
    loop {
        let n = match sock.recv(&mut buf).await {
            Ok(n) => n,
            // ICMP port unreachable from a stopped upstream.
            Err(e) if e.kind() == ErrorKind::ConnectionRefused => {
                return Err(ExchangeError::Io {
                    op: "receive udp",
                    source: e,
                });
            }
            Err(e) => return Err(io("receive udp")(e)),
        };
        // Ignore garbage and answers to other questions (spoofing).
        if let Ok(msg) = Message::from_vec(&buf[..n])
            && matches(&msg, id, query)
        {
            return Ok(msg);
        }
    }
}

async fn exchange_tcp(
    upstream: SocketAddr,
    id: u16,
    bytes: &[u8],
    query: &Query,
) -> Result<Message, ExchangeError> {
    let mut s = TcpStream::connect(upstream)
        .await
        .map_err(io("connect tcp"))?;
    let len =
        u16::try_from(bytes.len()).map_err(|_| ExchangeError::Proto("query too long".into()))?;
    let mut framed = Vec::with_capacity(bytes.len() + 2);
    framed.extend_from_slice(&len.to_be_bytes());
    framed.extend_from_slice(bytes);
    s.write_all(&framed).await.map_err(io("send tcp"))?;
    let mut lenbuf = [0u8; 2];
    s.read_exact(&mut lenbuf).await.map_err(io("receive tcp"))?;
    let mut buf = vec![0u8; usize::from(u16::from_be_bytes(lenbuf))];
    s.read_exact(&mut buf).await.map_err(io("receive tcp"))?;
    let msg = Message::from_vec(&buf).map_err(|e| ExchangeError::Proto(e.to_string()))?;
    if !matches(&msg, id, query) {
        return Err(ExchangeError::Proto(
            "answer does not match question".into(),
        ));
    }
    Ok(msg)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolv_conf_parsing() {
        let text = "# comment\nsearch lan\nnameserver 10.0.0.1\nnameserver  fe80::1%eth0\n\
                    nameserver 169.254.0.2\nnameserver bogus\nnameserver 10.0.0.1\noptions ndots:5\n";
        let own: SocketAddr = "169.254.0.2:53"
            .parse()
            .unwrap_or(SocketAddr::from(([0, 0, 0, 0], 0)));
        let got = parse_resolv_conf(text, 53, &[own]);
        let want: Vec<SocketAddr> = ["10.0.0.1:53", "[fe80::1]:53"]
            .iter()
            .filter_map(|s| s.parse().ok())
            .collect();
        assert_eq!(got, want);
    }
}
