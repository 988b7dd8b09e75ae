//! The metrics and probe server over real TCP on 127.0.0.1: what a scraper
//! and the kubelet's probes see, and what a slow or oversized client gets.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use smarter_common::metrics::{
    Counter, Endpoints, Exposition, Histogram, Kind, Limits, Readiness, serve_with,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

#[derive(Debug)]
struct Service {
    requests: Counter,
    latency: Histogram,
    ready: AtomicBool,
}

impl Endpoints for Service {
    fn metrics(&self, out: &mut Exposition) {
        out.counter(
            "smarter_test_requests_total",
            "Requests \"served\".",
            self.requests.get(),
        );
        out.family("smarter_test_info", Kind::Gauge, "Build info.")
            .sample("smarter_test_info", &[("version", "1.0\"\\\n")], 1u64);
        out.histogram("smarter_test_latency_seconds", "Latency.", &self.latency);
    }

    fn readiness(&self) -> Readiness {
        if self.ready.load(Ordering::Relaxed) {
            Readiness::ready("serving")
        } else {
            Readiness::not_ready("records not loaded yet")
        }
    }
}

async fn start(limits: Limits) -> (SocketAddr, Arc<Service>, tokio::task::JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let service = Arc::new(Service {
        requests: Counter::default(),
        latency: Histogram::seconds(&[0.0001, 0.001, 0.01, 0.1, 1.0]),
        ready: AtomicBool::new(false),
    });
    let task = tokio::spawn(serve_with(listener, Arc::clone(&service), limits));
    (addr, service, task)
}

/// Send `request` as is and read the whole answer: (status, headers, body).
async fn exchange(addr: SocketAddr, request: &[u8]) -> (u16, String, String) {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(request).await.unwrap();
    let mut raw = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut raw))
        .await
        .expect("answer within 10 s")
        .unwrap();
    split(&raw)
}

fn split(raw: &[u8]) -> (u16, String, String) {
    let text = String::from_utf8(raw.to_vec()).unwrap();
    let (head, body) = text.split_once("\r\n\r\n").expect("a head");
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("a status code");
    let content_length: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("Content-Length: "))
        .and_then(|v| v.parse().ok())
        .expect("Content-Length");
    assert_eq!(
        content_length,
        body.len(),
        "Content-Length matches the body"
    );
    (status, head.to_string(), body.to_string())
}

async fn get(addr: SocketAddr, path: &str) -> (u16, String, String) {
    exchange(
        addr,
        format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nUser-Agent: test\r\n\r\n").as_bytes(),
    )
    .await
}

/// One parsed sample: name, labels, value.
type Sample = (String, BTreeMap<String, String>, f64);

/// Parse the text format strictly enough to catch what Prometheus rejects:
/// every sample belongs to a family declared by `# TYPE` (histograms through
/// `_bucket`, `_sum`, `_count`), a family is declared once, label values
/// unescape, values parse.
fn parse_exposition(text: &str) -> (BTreeMap<String, String>, Vec<Sample>) {
    let mut types = BTreeMap::new();
    let mut helps = BTreeMap::new();
    let mut samples = Vec::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# HELP ") {
            let (name, _) = rest.split_once(' ').expect("help text");
            assert!(
                helps.insert(name.to_string(), ()).is_none(),
                "HELP twice: {name}"
            );
            continue;
        }
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').expect("a type");
            assert!(
                ["counter", "gauge", "histogram", "summary", "untyped"].contains(&kind),
                "{line}"
            );
            assert!(helps.contains_key(name), "TYPE before HELP for {name}");
            assert!(
                types.insert(name.to_string(), kind.to_string()).is_none(),
                "TYPE twice: {name}"
            );
            continue;
        }
        assert!(!line.starts_with('#'), "stray comment {line}");
        let (series, value) = line.rsplit_once(' ').expect("name and value");
        let value: f64 = match value {
            "+Inf" => f64::INFINITY,
            "-Inf" => f64::NEG_INFINITY,
            v => v.parse().unwrap_or_else(|_| panic!("value in {line}")),
        };
        let (name, labels) = match series.split_once('{') {
            None => (series.to_string(), BTreeMap::new()),
            Some((name, rest)) => (
                name.to_string(),
                parse_labels(rest.strip_suffix('}').unwrap()),
            ),
        };
        let family = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|s| {
                name.strip_suffix(s)
                    .filter(|f| types.get(*f).is_some_and(|k| k == "histogram"))
            })
            .unwrap_or(&name)
            .to_string();
        let kind = types
            .get(&family)
            .unwrap_or_else(|| panic!("no TYPE for {name}"));
        if kind == "counter" {
            assert!(name.ends_with("_total"), "counter {name} without _total");
        }
        samples.push((name, labels, value));
    }
    (types, samples)
}

fn parse_labels(s: &str) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let mut chars = s.chars().peekable();
    while chars.peek().is_some() {
        let key: String = chars.by_ref().take_while(|c| *c != '=').collect();
        assert_eq!(chars.next(), Some('"'), "quoted value for {key}");
        let mut value = String::new();
        loop {
            match chars.next().expect("closing quote") {
                '"' => break,
                '\\' => match chars.next().expect("escape") {
                    'n' => value.push('\n'),
                    c @ ('\\' | '"') => value.push(c),
                    c => panic!("bad escape \\{c}"),
                },
                c => value.push(c),
            }
        }
        out.insert(key, value);
        if chars.peek() == Some(&',') {
            chars.next();
        }
    }
    out
}

#[tokio::test]
async fn metrics_parse_back_with_monotonic_buckets_and_process_series() {
    let (addr, service, task) = start(Limits::default()).await;
    service.requests.add(41);
    service.requests.inc();
    for us in [50, 500, 5_000, 50_000, 500_000, 5_000_000] {
        service.latency.observe(Duration::from_micros(us));
    }
    service.latency.observe_n(Duration::from_micros(80), 3);
    let (status, head, body) = get(addr, "/metrics").await;
    assert_eq!(status, 200, "{head}\n{body}");
    assert!(
        head.contains("Content-Type: text/plain; version=0.0.4"),
        "{head}"
    );
    let (types, samples) = parse_exposition(&body);
    assert_eq!(types["smarter_test_latency_seconds"], "histogram");
    assert_eq!(types["process_resident_memory_bytes"], "gauge");
    let value = |name: &str| {
        samples
            .iter()
            .find(|(n, _, _)| n == name)
            .map(|(_, _, v)| *v)
            .unwrap_or_else(|| panic!("no {name} in\n{body}"))
    };
    assert_eq!(value("smarter_test_requests_total"), 42.0);
    assert!(value("process_resident_memory_bytes") > 1_000_000.0);
    assert!(value("process_start_time_seconds") > 1_600_000_000.0);
    let info = samples
        .iter()
        .find(|(n, _, _)| n == "smarter_test_info")
        .unwrap();
    assert_eq!(info.1["version"], "1.0\"\\\n", "label value round-trips");

    let buckets: Vec<(f64, f64)> = samples
        .iter()
        .filter(|(n, _, _)| n == "smarter_test_latency_seconds_bucket")
        .map(|(_, l, v)| {
            let le = match l["le"].as_str() {
                "+Inf" => f64::INFINITY,
                le => le.parse().unwrap(),
            };
            (le, *v)
        })
        .collect();
    assert_eq!(buckets.len(), 6, "{body}");
    for pair in buckets.windows(2) {
        assert!(pair[0].0 < pair[1].0, "le increasing: {buckets:?}");
        assert!(pair[0].1 <= pair[1].1, "cumulative counts: {buckets:?}");
    }
    assert_eq!(
        buckets.iter().map(|b| b.1).collect::<Vec<_>>(),
        vec![4.0, 5.0, 6.0, 7.0, 8.0, 9.0]
    );
    assert_eq!(buckets.last().unwrap().0, f64::INFINITY);
    assert_eq!(value("smarter_test_latency_seconds_count"), 9.0);
    let sum = value("smarter_test_latency_seconds_sum");
    assert!((sum - 5.55579).abs() < 1e-9, "{sum}");
    task.abort();
}

#[tokio::test]
async fn probes_answer_and_readiness_follows_the_service() {
    let (addr, service, task) = start(Limits::default()).await;
    assert_eq!(get(addr, "/healthz").await.0, 200);
    assert_eq!(get(addr, "/healthz").await.2, "ok\n");
    let (status, _, body) = get(addr, "/readyz").await;
    assert_eq!((status, body.as_str()), (503, "records not loaded yet\n"));
    service.ready.store(true, Ordering::Relaxed);
    let (status, _, body) = get(addr, "/readyz?verbose").await;
    assert_eq!((status, body.as_str()), (200, "serving\n"));
    task.abort();
}

#[tokio::test]
async fn other_paths_404_other_methods_405_garbage_400() {
    let (addr, _, task) = start(Limits::default()).await;
    assert_eq!(get(addr, "/").await.0, 404);
    assert_eq!(get(addr, "/metrics/extra").await.0, 404);
    let (status, head, _) =
        exchange(addr, b"POST /metrics HTTP/1.1\r\nContent-Length: 0\r\n\r\n").await;
    assert_eq!(status, 405);
    assert!(head.contains("Allow: GET"), "{head}");
    assert_eq!(
        exchange(addr, b"DELETE /readyz HTTP/1.0\r\n\r\n").await.0,
        405
    );
    assert_eq!(exchange(addr, b"SSH-2.0-OpenSSH_9.2\r\n\r\n").await.0, 400);
    task.abort();
}

#[tokio::test]
async fn an_oversized_request_gets_431_without_waiting_for_the_rest() {
    let limits = Limits {
        max_request_bytes: 1024,
        ..Limits::default()
    };
    let (addr, _, task) = start(limits).await;
    let mut request = b"GET /metrics HTTP/1.1\r\nX-Padding: ".to_vec();
    request.extend(std::iter::repeat_n(b'a', 4096));
    let mut s = TcpStream::connect(addr).await.unwrap();
    // The server may close before taking everything: a failed write is fine.
    let _ = s.write_all(&request).await;
    let mut raw = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut raw))
        .await
        .expect("answered at once");
    let (status, _, _) = split(&raw);
    assert_eq!(status, 431);
    // Still serving.
    assert_eq!(get(addr, "/healthz").await.0, 200);
    task.abort();
}

#[tokio::test]
async fn a_slow_loris_is_cut_off_and_does_not_pin_the_server() {
    let limits = Limits {
        read_timeout: Duration::from_millis(400),
        max_connections: 2,
        ..Limits::default()
    };
    let (addr, _, task) = start(limits).await;
    // Two trickling clients take every slot: one byte every 100 ms, never
    // finishing the head.
    let started = Instant::now();
    let loris = |addr| async move {
        let s = TcpStream::connect(addr).await.unwrap();
        let (mut rx, mut tx) = s.into_split();
        // Read while trickling, so the answer is taken as soon as it comes.
        let reader = tokio::spawn(async move {
            let mut raw = Vec::new();
            let _ = rx.read_to_end(&mut raw).await;
            raw
        });
        for b in b"GET /metrics HTTP/1.1\r\nX-Slow: "
            .iter()
            .cycle()
            .take(100)
        {
            if reader.is_finished() || tx.write_all(&[*b]).await.is_err() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        reader.await.unwrap()
    };
    let (a, a2, b) = tokio::join!(
        tokio::spawn(loris(addr)),
        tokio::spawn(loris(addr)),
        tokio::spawn(async move {
            // A well-behaved client queued behind them is served once their
            // deadline has passed, not after they finish trickling (10 s).
            tokio::time::sleep(Duration::from_millis(100)).await;
            let t = Instant::now();
            let answer = get(addr, "/healthz").await;
            (answer, t.elapsed())
        }),
    );
    let ((status, _, _), waited) = b.unwrap();
    assert_eq!(status, 200);
    assert!(waited < Duration::from_secs(3), "waited {waited:?}");
    for raw in [a.unwrap(), a2.unwrap()] {
        assert_eq!(split(&raw).0, 408);
    }
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "the loris was cut off after {:?}",
        started.elapsed()
    );
    task.abort();
}

#[tokio::test]
async fn start_binds_serves_and_stops_when_dropped() {
    let service = Arc::new(Service {
        requests: Counter::default(),
        latency: Histogram::seconds(&[1.0]),
        ready: AtomicBool::new(true),
    });
    assert!(
        smarter_common::metrics::start("", Arc::clone(&service))
            .await
            .unwrap()
            .is_none()
    );
    let running = smarter_common::metrics::start("127.0.0.1:0", Arc::clone(&service))
        .await
        .unwrap()
        .expect("a server");
    let addr = running.local_addr();
    assert_eq!(get(addr, "/readyz").await.0, 200);
    drop(running);
    // The listener goes with the task (a moment after the abort).
    smarter_test_support::wait_until_async(
        format_args!("{addr} to stop listening after the drop"),
        Duration::from_secs(1),
        Duration::from_millis(10),
        || async { TcpStream::connect(addr).await.is_err() },
    )
    .await
    .unwrap();
    let taken = smarter_common::metrics::start(&addr.to_string(), Arc::clone(&service)).await;
    assert!(taken.is_ok(), "the port is free again");
}
