//! The service in-process on 127.0.0.1:0: local names appear and disappear
//! within 50 ms of their record, forwarding to dnsmasq with failover and
//! resolv.conf reloads, zone transfers refused, malformed packets survived.

mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use common::*;
use hickory_proto::op::{Message, ResponseCode};
use hickory_proto::rr::RecordType;
use smarter_dns::config::Config;
use smarter_dns::service::{Running, bind, start};

const LIMIT: Duration = Duration::from_millis(50);

fn config(dir: &Path) -> Config {
    Config {
        records_dir: dir.join("records"),
        resolv_conf: dir.join("resolv.conf"),
        listen: vec![
            "127.0.0.1"
                .parse()
                .unwrap_or(std::net::IpAddr::from([127, 0, 0, 1])),
        ],
        port: 0,
        dummy_interface: String::new(),
        upstream_timeout_ms: 300,
        ..Config::default()
    }
}

fn start_on(config: &Config) -> Result<(Running, SocketAddr), Box<dyn std::error::Error>> {
    let sockets = vec![bind(SocketAddr::new(config.listen[0], 0))?];
    let running = start(config, sockets, None)?;
    let addr = running.dns_addrs[0];
    Ok((running, addr))
}

async fn a(server: SocketAddr, name: &str) -> Vec<std::net::IpAddr> {
    match udp_query(server, name, RecordType::A, Duration::from_millis(200)).await {
        Ok(Some(m)) => addrs(&m),
        _ => Vec::new(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn record_resolvable_within_50ms_and_gone_within_50ms() -> TestResult {
    let dir = tempfile::tempdir()?;
    let cfg = config(dir.path());
    let (_running, server) = start_on(&cfg)?;
    let ip: std::net::IpAddr = "172.39.0.5".parse()?;
    let names = [
        "camera.",
        "camera.iot.svc.cluster.local.",
        "camera.svc.cluster.local.",
        "camera.cluster.local.",
    ];
    for round in 0..3 {
        write_record(
            &cfg.records_dir,
            &record("c1", "camera", "iot", &["172.39.0.5", "fd00::5"]),
        )?;
        let took = wait_until(LIMIT, || async {
            a(server, names[round % 4]).await == vec![ip]
        })
        .await;
        assert!(took.is_some(), "round {round}: not resolvable within 50 ms");
        for n in names {
            assert_eq!(a(server, n).await, vec![ip], "{n}");
        }
        let m = tcp_query(server, "camera.", RecordType::AAAA).await?;
        assert_eq!(addrs(&m), vec!["fd00::5".parse::<std::net::IpAddr>()?]);
        assert!(m.metadata.authoritative);
        let m = udp_query(
            server,
            "5.0.39.172.in-addr.arpa.",
            RecordType::PTR,
            LIMIT * 4,
        )
        .await?;
        assert_eq!(
            m.map(|m| m
                .answers
                .iter()
                .map(|r| r.data.to_string())
                .collect::<Vec<_>>()),
            Some(vec!["camera.iot.svc.cluster.local.".to_string()])
        );
        smarter_common::records::remove(&cfg.records_dir, "c1", "eth0")?;
        let gone = wait_until(LIMIT, || async {
            rcode(
                &udp_query(
                    server,
                    "camera.iot.svc.cluster.local.",
                    RecordType::A,
                    LIMIT,
                )
                .await
                .unwrap_or(None),
            ) == Some(ResponseCode::NXDomain)
        })
        .await;
        assert!(
            gone.is_some(),
            "round {round}: still resolvable 50 ms after removal"
        );
    }
    // Two pods, one name: two addresses.
    write_record(
        &cfg.records_dir,
        &record("w1", "web", "default", &["172.39.0.6"]),
    )?;
    write_record(
        &cfg.records_dir,
        &record("w2", "web", "default", &["172.39.0.7"]),
    )?;
    let both = wait_until(LIMIT, || async {
        a(server, "web.default.svc.cluster.local.").await.len() == 2
    })
    .await;
    assert!(both.is_some());
    Ok(())
}

/// How long a wait for the records watch may take on a loaded machine (the
/// bound is 50 ms; the measured figure is printed).
const SLACK: Duration = Duration::from_secs(2);

/// Waits until `name` resolves to `ip`; prints and returns the time it took
/// from `since` (when the record was written).
async fn resolves_after(
    server: SocketAddr,
    name: &str,
    ip: std::net::IpAddr,
    since: std::time::Instant,
    what: &str,
) -> Option<Duration> {
    let took = wait_until(SLACK, || async { a(server, name).await == vec![ip] }).await;
    let took = took.map(|_| since.elapsed());
    match took {
        Some(t) => eprintln!(
            "{what}: {name} resolvable {:.1} ms after its record was written (bound 50 ms{})",
            t.as_secs_f64() * 1000.0,
            if t > LIMIT {
                "; over it, loaded machine?"
            } else {
                ""
            }
        ),
        None => eprintln!("{what}: {name} not resolvable {SLACK:?} after its record was written"),
    }
    took
}

/// A records directory deleted and made again while the server runs (a node
/// cleanup, an operator's `rm -rf`): its old names go, and records written
/// into the new directory resolve within the same bound; a directory moved
/// away is let go of the same way.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_directory_deleted_or_moved_and_made_again() -> TestResult {
    let dir = tempfile::tempdir()?;
    let cfg = config(dir.path());
    let (_running, server) = start_on(&cfg)?;
    let ip: std::net::IpAddr = "172.39.0.9".parse()?;
    write_record(
        &cfg.records_dir,
        &record("c1", "old", "iot", &["172.39.0.8"]),
    )?;
    assert!(
        wait_until(SLACK, || async { !a(server, "old.").await.is_empty() })
            .await
            .is_some()
    );
    let mut previous = "old".to_string();
    for round in 0..3 {
        if round == 2 {
            std::fs::rename(&cfg.records_dir, dir.path().join("records.old"))?;
        } else {
            std::fs::remove_dir_all(&cfg.records_dir)?;
        }
        let gone = wait_until(SLACK, || async {
            a(server, &format!("{previous}.")).await.is_empty()
        })
        .await;
        assert!(
            gone.is_some(),
            "round {round}: names of the removed directory still served"
        );
        std::fs::create_dir(&cfg.records_dir)?;
        let name = format!("new{round}");
        let written = std::time::Instant::now();
        write_record(
            &cfg.records_dir,
            &record(&format!("n{round}"), &name, "iot", &["172.39.0.9"]),
        )?;
        let took = resolves_after(
            server,
            &format!("{name}."),
            ip,
            written,
            "re-created directory",
        )
        .await;
        assert!(
            took.is_some(),
            "round {round}: a record in the re-created directory never resolved"
        );
        if round == 2 {
            // Writes into the moved-away directory are no longer ours.
            write_record(
                &dir.path().join("records.old"),
                &record("s1", "stale", "iot", &["172.39.0.10"]),
            )?;
            tokio::time::sleep(LIMIT).await;
            assert!(a(server, "stale.").await.is_empty());
        }
        previous = name;
    }
    Ok(())
}

/// The same when a directory above the records directory goes: smarter-cni
/// makes the whole path again with the next record (`rm -rf /run/smarter`
/// on a node cleanup), or that directory is moved away.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn directory_above_the_records_deleted_or_moved_and_made_again() -> TestResult {
    let dir = tempfile::tempdir()?;
    let mut cfg = config(dir.path());
    let top = dir.path().join("run");
    cfg.records_dir = top.join("smarter/cni/records");
    let (_running, server) = start_on(&cfg)?;
    let ip: std::net::IpAddr = "172.39.0.19".parse()?;
    let mut previous: Option<String> = None;
    for round in 0..4 {
        match round {
            0 => {}
            3 => std::fs::rename(&top, dir.path().join("run.old"))?,
            _ => std::fs::remove_dir_all(&top)?,
        }
        if let Some(p) = &previous {
            let gone = wait_until(SLACK, || async {
                a(server, &format!("{p}.")).await.is_empty()
            })
            .await;
            assert!(
                gone.is_some(),
                "round {round}: names of the removed tree still served"
            );
        }
        let name = format!("deep{round}");
        let written = std::time::Instant::now();
        // records::write makes the missing directories, as smarter-cni does.
        write_record(
            &cfg.records_dir,
            &record(&format!("d{round}"), &name, "iot", &["172.39.0.19"]),
        )?;
        let took =
            resolves_after(server, &format!("{name}."), ip, written, "re-created path").await;
        assert!(
            took.is_some(),
            "round {round}: a record under a re-created path never resolved"
        );
        previous = Some(name);
    }
    // Writes into the moved-away tree are no longer ours.
    write_record(
        &dir.path().join("run.old/smarter/cni/records"),
        &record("s2", "stale", "iot", &["172.39.0.10"]),
    )?;
    tokio::time::sleep(LIMIT).await;
    assert!(a(server, "stale.").await.is_empty());
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zone_transfers_refused_and_garbage_survived() -> TestResult {
    let dir = tempfile::tempdir()?;
    let cfg = config(dir.path());
    write_record(
        &cfg.records_dir,
        &record("c1", "camera", "iot", &["172.39.0.5"]),
    )?;
    let (_running, server) = start_on(&cfg)?;
    let m = tcp_query(server, "cluster.local.", RecordType::AXFR).await?;
    assert_eq!(m.metadata.response_code, ResponseCode::Refused);
    let m = tcp_query(server, "cluster.local.", RecordType::IXFR).await?;
    assert_eq!(m.metadata.response_code, ResponseCode::Refused);

    // Malformed and truncated packets over UDP and TCP.
    let (_, good) = query_bytes("camera.", RecordType::A)?;
    let sock = tokio::net::UdpSocket::bind("127.0.0.1:0").await?;
    let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    for i in 0..2000usize {
        let mut p: Vec<u8> = match i % 4 {
            0 => good[..i % good.len()].to_vec(),
            1 => (0..(next() % 600) as usize).map(|_| next() as u8).collect(),
            2 => {
                let mut g = good.clone();
                let k = (next() as usize) % g.len();
                g[k] ^= next() as u8 | 1;
                g
            }
            _ => {
                // A "response" and a header claiming huge counts.
                let mut g = good.clone();
                g[2] |= 0x80;
                g[5] = 0xff;
                g
            }
        };
        if p.is_empty() {
            p.push(0);
        }
        sock.send_to(&p, server).await?;
    }
    // A truncated TCP message, then a closed connection.
    {
        use tokio::io::AsyncWriteExt;
        let mut s = tokio::net::TcpStream::connect(server).await?;
        s.write_all(&[0, 40, 1, 2, 3]).await?;
    }
    // Still answering correctly.
    let ok = wait_until(Duration::from_secs(2), || async {
        a(server, "camera.").await
            == vec![
                "172.39.0.5"
                    .parse::<std::net::IpAddr>()
                    .unwrap_or(std::net::IpAddr::from([0, 0, 0, 0])),
            ]
    })
    .await;
    assert!(ok.is_some(), "server stopped answering after garbage");
    let m = tcp_query(server, "camera.", RecordType::A).await?;
    assert_eq!(addrs(&m).len(), 1);
    // A header with an unparsable body gets FORMERR.
    let mut bad = good.clone();
    bad.truncate(14);
    sock.send_to(&bad, server).await?;
    let mut buf = [0u8; 512];
    let (n, _) = tokio::time::timeout(Duration::from_secs(2), sock.recv_from(&mut buf)).await??;
    let mut got = None;
    // Earlier garbage may have produced replies; read until ours.
    let want_id = u16::from_be_bytes([bad[0], bad[1]]);
    let mut n = n;
    for _ in 0..3000 {
        if let Ok(m) = hickory_proto::op::Message::from_vec(&buf[..n])
            && m.metadata.id == want_id
            && m.metadata.response_code == ResponseCode::FormErr
        {
            got = Some(m);
            break;
        }
        match tokio::time::timeout(Duration::from_millis(500), sock.recv_from(&mut buf)).await {
            Ok(Ok((k, _))) => n = k,
            _ => break,
        }
    }
    assert!(got.is_some(), "no FORMERR for a truncated question");
    Ok(())
}

/// A dnsmasq upstream on 127.0.0.1 answering `*.fwd.test` with 10.0.0.1,
/// once it answers: (its port, the process guard).
async fn fwd_upstream() -> Result<(u16, ChildGuard), Box<dyn std::error::Error>> {
    let (mut guards, port) = dnsmasqs(&[(LO1, "10.0.0.1")], "fwd.test")?;
    let upstream = guards.pop().ok_or("no dnsmasq")?;
    Ok((port, upstream))
}

const LO1: std::net::IpAddr = std::net::IpAddr::V4(std::net::Ipv4Addr::new(127, 0, 0, 1));

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwards_caches_and_fails_over_to_dnsmasq() -> TestResult {
    if !require_peer("dnsmasq", "dnsmasq") {
        return Ok(());
    }
    let dir = tempfile::tempdir()?;
    let (mut upstreams, port) = dnsmasqs(
        &[(LO1, "10.0.0.1"), ("127.0.0.2".parse()?, "10.0.0.2")],
        "fwd.test",
    )?;
    let _second = upstreams.pop();
    let mut first = upstreams.pop();
    std::fs::write(
        dir.path().join("resolv.conf"),
        "nameserver 127.0.0.1\nnameserver 127.0.0.2\n",
    )?;
    let mut cfg = config(dir.path());
    cfg.upstream_port = port;
    cfg.metrics_listen = None;
    let (_running, server) = start_on(&cfg)?;

    let one = a(server, "a.fwd.test.").await;
    assert_eq!(one, vec!["10.0.0.1".parse::<std::net::IpAddr>()?]);
    let tcp = tcp_query(server, "b.fwd.test.", RecordType::A).await?;
    assert_eq!(addrs(&tcp), vec!["10.0.0.1".parse::<std::net::IpAddr>()?]);
    assert!(!tcp.metadata.authoritative);

    // Upstream 1 stops: answers now come from upstream 2; cached names
    // still answer as before.
    drop(first.take());
    assert_eq!(
        a(server, "c.fwd.test.").await,
        vec!["10.0.0.2".parse::<std::net::IpAddr>()?]
    );
    assert_eq!(
        a(server, "a.fwd.test.").await,
        vec!["10.0.0.1".parse::<std::net::IpAddr>()?]
    );

    // Local names keep working with every upstream gone.
    write_record(
        &cfg.records_dir,
        &record("c1", "camera", "iot", &["172.39.0.5"]),
    )?;
    drop(_second);
    let local = wait_until(LIMIT, || async { a(server, "camera.").await.len() == 1 }).await;
    assert!(local.is_some());
    let m = udp_query(server, "d.fwd.test.", RecordType::A, Duration::from_secs(3)).await?;
    assert_eq!(rcode(&m), Some(ResponseCode::ServFail));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resolv_conf_change_switches_upstream() -> TestResult {
    if !require_peer("dnsmasq", "dnsmasq") {
        return Ok(());
    }
    let dir = tempfile::tempdir()?;
    let (_upstreams, port) = dnsmasqs(
        &[(LO1, "10.0.1.1"), ("127.0.0.3".parse()?, "10.0.1.3")],
        "rc.test",
    )?;
    let rc = dir.path().join("resolv.conf");
    std::fs::write(&rc, "nameserver 127.0.0.1\n")?;
    let mut cfg = config(dir.path());
    cfg.upstream_port = port;
    let (_running, server) = start_on(&cfg)?;
    assert_eq!(
        a(server, "a.rc.test.").await,
        vec!["10.0.1.1".parse::<std::net::IpAddr>()?]
    );
    // Replace resolv.conf the way resolvconf does: write a temp file, rename.
    let tmp = dir.path().join("resolv.conf.new");
    std::fs::write(&tmp, "nameserver 127.0.0.3\n")?;
    std::fs::rename(&tmp, &rc)?;
    let mut n = 0u32;
    let switched = wait_until(Duration::from_secs(2), || {
        n += 1;
        let name = format!("n{n}.rc.test.");
        async move {
            a(server, &name).await
                == vec![
                    "10.0.1.3"
                        .parse::<std::net::IpAddr>()
                        .unwrap_or(std::net::IpAddr::from([0, 0, 0, 0])),
                ]
        }
    })
    .await;
    assert!(
        switched.is_some(),
        "upstream not switched after resolv.conf changed"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_endpoint_counts_queries_and_records() -> TestResult {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let dir = tempfile::tempdir()?;
    let cfg = config(dir.path());
    write_record(
        &cfg.records_dir,
        &record("c1", "camera", "iot", &["172.39.0.5"]),
    )?;
    write_record(
        &cfg.records_dir,
        &record("c2", "web", "iot", &["172.39.0.6"]),
    )?;
    let metrics = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let running = start(
        &cfg,
        vec![bind(SocketAddr::new(cfg.listen[0], 0))?],
        Some(metrics),
    )?;
    let server = running.dns_addrs[0];
    let maddr = running.metrics_addr.ok_or("no metrics address")?;
    for _ in 0..3 {
        assert_eq!(a(server, "camera.").await.len(), 1);
    }
    tcp_query(server, "cluster.local.", RecordType::AXFR).await?;
    let get = |path: &'static str| async move {
        let mut s = tokio::net::TcpStream::connect(maddr).await?;
        s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes())
            .await?;
        let mut body = String::new();
        s.read_to_string(&mut body).await?;
        Ok::<_, std::io::Error>(body)
    };
    // An answer is timed just after it was sent, so the client may read it
    // a moment before it is counted: wait (a generous bound) for all four.
    let mut body = String::new();
    for _ in 0..100 {
        body = get("/metrics").await?;
        if body.contains("\nsmarter_dns_answer_duration_seconds_count 4\n") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(body.starts_with("HTTP/1.1 200 OK"), "{body}");
    for line in [
        "smarter_dns_queries_total 4",
        "smarter_dns_local_answers_total 3",
        "smarter_dns_refused_total 1",
        "smarter_dns_records 2",
        "smarter_dns_names 8",
        "# TYPE smarter_dns_answer_duration_seconds histogram",
        "smarter_dns_answer_duration_seconds_bucket{le=\"+Inf\"} 4",
        "smarter_dns_answer_duration_seconds_count 4",
        "# TYPE process_resident_memory_bytes gauge",
        "# TYPE process_start_time_seconds gauge",
    ] {
        assert!(
            body.lines().any(|l| l == line),
            "missing {line:?} in\n{body}"
        );
    }
    // Buckets from 25 us to 5 s, cumulative, and the sum is a duration.
    let buckets: Vec<(f64, u64)> = body
        .lines()
        .filter_map(|l| l.strip_prefix("smarter_dns_answer_duration_seconds_bucket{le=\""))
        .filter_map(|l| l.split_once("\"} "))
        .map(|(le, n)| {
            (
                le.parse().unwrap_or(f64::INFINITY),
                n.parse().unwrap_or(u64::MAX),
            )
        })
        .collect();
    assert_eq!(buckets.first().map(|b| b.0), Some(0.000_025), "{body}");
    assert_eq!(
        buckets.iter().rev().nth(1).map(|b| b.0),
        Some(5.0),
        "{body}"
    );
    assert!(
        buckets
            .windows(2)
            .all(|w| w[0].0 < w[1].0 && w[0].1 <= w[1].1),
        "{buckets:?}"
    );
    let sum: f64 = body
        .lines()
        .find_map(|l| l.strip_prefix("smarter_dns_answer_duration_seconds_sum "))
        .and_then(|v| v.parse().ok())
        .ok_or("no sum")?;
    assert!(sum > 0.0 && sum < 4.0 * 5.0, "{sum}");
    let ready = get("/readyz").await?;
    assert!(ready.starts_with("HTTP/1.1 200 OK"), "{ready}");
    assert!(
        ready.ends_with("serving 8 names from 2 records\n"),
        "{ready}"
    );
    assert!(get("/healthz").await?.starts_with("HTTP/1.1 200 OK"));
    let mut s = tokio::net::TcpStream::connect(maddr).await?;
    s.write_all(b"GET /other HTTP/1.1\r\n\r\n").await?;
    let mut body = String::new();
    s.read_to_string(&mut body).await?;
    assert!(body.starts_with("HTTP/1.1 404"), "{body}");
    Ok(())
}

/// A forwarded answer (sent by its own task after the upstream answered)
/// is timed too: the answer histogram counts it, with a time no shorter than
/// the upstream exchange could take and no longer than the upstream timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwarded_answers_are_timed() -> TestResult {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    if !require_peer("dnsmasq", "dnsmasq") {
        return Ok(());
    }
    let dir = tempfile::tempdir()?;
    let (port, _upstream) = fwd_upstream().await?;
    std::fs::write(dir.path().join("resolv.conf"), "nameserver 127.0.0.1\n")?;
    let mut cfg = config(dir.path());
    cfg.upstream_port = port;
    let metrics = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let running = start(
        &cfg,
        vec![bind(SocketAddr::new(cfg.listen[0], 0))?],
        Some(metrics),
    )?;
    let server = running.dns_addrs[0];
    let maddr = running.metrics_addr.ok_or("no metrics address")?;
    assert_eq!(
        a(server, "t.fwd.test.").await,
        vec![std::net::IpAddr::from([10, 0, 0, 1])]
    );
    let mut body = String::new();
    for _ in 0..100 {
        let mut s = tokio::net::TcpStream::connect(maddr).await?;
        s.write_all(b"GET /metrics HTTP/1.1\r\n\r\n").await?;
        body.clear();
        s.read_to_string(&mut body).await?;
        if body.contains("\nsmarter_dns_answer_duration_seconds_count 1\n") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for line in [
        "smarter_dns_cache_misses_total 1",
        "smarter_dns_answer_duration_seconds_count 1",
        // Below the upstream timeout (300 ms here): answered, not timed out.
        "smarter_dns_answer_duration_seconds_bucket{le=\"0.5\"} 1",
    ] {
        assert!(
            body.lines().any(|l| l == line),
            "missing {line:?} in\n{body}"
        );
    }
    // An exchange with a process over loopback takes more than 25 us.
    assert!(
        body.lines()
            .any(|l| l == "smarter_dns_answer_duration_seconds_bucket{le=\"0.000025\"} 0"),
        "{body}"
    );
    Ok(())
}

/// One raw UDP exchange: the answer's bytes.
async fn raw_exchange(
    server: SocketAddr,
    query: &[u8],
) -> Result<Vec<u8>, Box<dyn std::error::Error>> {
    let s = tokio::net::UdpSocket::bind("127.0.0.1:0").await?;
    s.send_to(query, server).await?;
    let mut buf = vec![0u8; 4096];
    let (n, _) = tokio::time::timeout(Duration::from_secs(3), s.recv_from(&mut buf)).await??;
    buf.truncate(n);
    Ok(buf)
}

/// A plain question: id, RD, one question, optionally an EDNS OPT record
/// without options.
fn raw_query(id: u16, labels: &[&str], qtype: u16, edns: bool) -> Vec<u8> {
    let mut q = id.to_be_bytes().to_vec();
    q.extend([0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, u8::from(edns)]);
    for l in labels {
        q.push(u8::try_from(l.len()).unwrap_or(63));
        q.extend(l.as_bytes());
    }
    q.extend([0, (qtype >> 8) as u8, qtype as u8, 0, 1]);
    if edns {
        q.extend([0, 0, 41, 0x04, 0xd0, 0, 0, 0, 0, 0, 0]);
    }
    q
}

fn ttls(answer: &[u8]) -> Result<Vec<u32>, Box<dyn std::error::Error>> {
    let m = Message::from_vec(answer)?;
    Ok(m.answers.iter().map(|r| r.ttl).collect())
}

/// Repeated questions are answered from the UDP loop's cache of encoded
/// answers: byte for byte what the handler said, with the new id; another
/// spelling of the name is answered for itself; forwarded answers still
/// age by the second.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repeated_questions_replay_exact_answers() -> TestResult {
    if !require_peer("dnsmasq", "dnsmasq") {
        return Ok(());
    }
    let dir = tempfile::tempdir()?;
    let (port, _upstream) = fwd_upstream().await?;
    std::fs::write(dir.path().join("resolv.conf"), "nameserver 127.0.0.1\n")?;
    let mut cfg = config(dir.path());
    cfg.upstream_port = port;
    write_record(
        &cfg.records_dir,
        &record("c1", "camera", "iot", &["172.39.0.5"]),
    )?;
    let (_running, server) = start_on(&cfg)?;
    let ready = wait_until(Duration::from_secs(2), || async {
        a(server, "camera.").await.len() == 1
    })
    .await;
    assert!(ready.is_some());

    for edns in [false, true] {
        for (name, qtype) in [
            (&["camera", "iot", "svc", "cluster", "local"][..], 1),
            (&["camera"][..], 28),                    // NODATA with SOA
            (&["nobody", "cluster", "local"][..], 1), // NXDOMAIN
            (&["5", "0", "39", "172", "in-addr", "arpa"][..], 12),
        ] {
            let first = raw_exchange(server, &raw_query(1, name, qtype, edns)).await?;
            for id in [2u16, 3] {
                let again = raw_exchange(server, &raw_query(id, name, qtype, edns)).await?;
                assert_eq!(again[..2], id.to_be_bytes(), "{name:?}");
                assert_eq!(again[2..], first[2..], "{name:?} edns {edns}");
            }
            let upper: Vec<String> = name.iter().map(|l| l.to_uppercase()).collect();
            let upper: Vec<&str> = upper.iter().map(String::as_str).collect();
            for _ in 0..2 {
                let q = raw_query(4, &upper, qtype, edns);
                let other = raw_exchange(server, &q).await?;
                let qend = q.len() - if edns { 11 } else { 0 };
                assert_eq!(other[2..4], first[2..4], "{upper:?} edns {edns}");
                assert_eq!(other[12..qend], q[12..qend], "question echoed as asked");
                let (a, b) = (Message::from_vec(&first)?, Message::from_vec(&other)?);
                assert_eq!(a.answers.len(), b.answers.len(), "{upper:?}");
                assert_eq!(a.authorities.len(), b.authorities.len(), "{upper:?}");
            }
        }
    }

    // Forwarded: the TTL the upstream gave (300) counts down while cached,
    // replayed or not.
    let q = raw_query(9, &["t", "fwd", "test"], 1, false);
    let t0 = ttls(&raw_exchange(server, &q).await?)?;
    assert_eq!(t0, vec![300]);
    assert_eq!(ttls(&raw_exchange(server, &q).await?)?, vec![300]);
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let t2 = ttls(&raw_exchange(server, &q).await?)?;
    assert!(t2[0] <= 298, "TTL did not age: {t2:?}");
    Ok(())
}
