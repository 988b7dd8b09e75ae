//! Random and mutated packets through the request path (decode, handler,
//! encode), without sockets: the handler never panics, every answer it
//! gives parses, echoes the request id and is a response. This is the
//! stable-toolchain counterpart of the cargo-fuzz target in `fuzz/`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hickory_proto::op::{Message, MessageType, Query, ResponseCode};
use hickory_proto::rr::{Name, RecordType};
use smarter_dns::fastpath::{self, AnswerCache};
use smarter_dns::forward::{Forwarder, ForwarderConfig};
use smarter_dns::metrics::Metrics;
use smarter_dns::server::{Handler, ZoneHandle, answer_raw, answer_raw_valid};
use smarter_dns::zone::{Pod, Store};

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

fn handler() -> Handler {
    let domain = Name::from_ascii("cluster.local.").unwrap_or_else(|_| Name::root());
    let mut store = Store::new(&domain, 5);
    let rec = |id: &str, pod: &str, ip: &str| smarter_common::records::Record {
        version: smarter_common::records::VERSION,
        container_id: id.into(),
        ifname: "eth0".into(),
        network: "smartnet".into(),
        pod_name: Some(pod.into()),
        namespace: Some("iot".into()),
        hostname: None,
        ips: ip.parse().into_iter().collect(),
    };
    store.upsert_record("a".into(), rec("a", "camera", "172.39.0.5"));
    store.upsert_record("b".into(), rec("b", "camera", "fd00::6"));
    store.upsert_pod(Pod {
        id: "h".into(),
        name: Some("agent".into()),
        host_network: true,
        ..Pod::default()
    });
    let metrics = Arc::new(Metrics::default());
    // No upstreams: forwarding fails fast with SERVFAIL, no network.
    let fwd = Forwarder::new(
        ForwarderConfig {
            timeout: Duration::from_millis(10),
            cache_size: 16,
            cache_max_ttl: 60,
            max_inflight: 4,
        },
        Vec::new(),
        Arc::clone(&metrics),
    );
    Handler::new(ZoneHandle::new(store), Arc::new(fwd), metrics)
}

fn seeds() -> Vec<Vec<u8>> {
    let names = [
        "camera.",
        "camera.iot.svc.cluster.local.",
        "agent.",
        "nothing.cluster.local.",
        "5.0.39.172.in-addr.arpa.",
        "example.com.",
        ".",
    ];
    let types = [
        RecordType::A,
        RecordType::AAAA,
        RecordType::PTR,
        RecordType::ANY,
        RecordType::AXFR,
        RecordType::IXFR,
        RecordType::TXT,
    ];
    let mut out = Vec::new();
    for n in names {
        for t in types {
            let mut m = Message::query();
            m.add_query(Query::query(
                Name::from_ascii(n).unwrap_or_else(|_| Name::root()),
                t,
            ));
            if let Ok(b) = m.to_vec() {
                out.push(b);
            }
        }
    }
    out
}

fn check(req: &[u8], resp: Option<Vec<u8>>) {
    let Some(resp) = resp else { return };
    let m = Message::from_vec(&resp);
    assert!(m.is_ok(), "unparsable answer {resp:02x?} to {req:02x?}");
    if let Ok(m) = m {
        assert_eq!(m.metadata.message_type, MessageType::Response);
        assert_eq!(m.metadata.id, u16::from_be_bytes([req[0], req[1]]));
    }
}

#[tokio::test]
async fn random_and_mutated_packets_are_answered_or_dropped_safely() {
    let h = handler();
    let src: SocketAddr = SocketAddr::from(([127, 0, 0, 1], 5353));
    let seeds = seeds();
    let mut rng = Rng(0x1234_5678_9abc_def1);
    let mut answered = 0usize;
    for i in 0..30_000usize {
        let mut p = match i % 3 {
            0 => (0..rng.below(300))
                .map(|_| rng.next() as u8)
                .collect::<Vec<u8>>(),
            1 => {
                let mut s = seeds[rng.below(seeds.len())].clone();
                for _ in 0..=rng.below(4) {
                    let k = rng.below(s.len());
                    s[k] = rng.next() as u8;
                }
                s
            }
            _ => {
                let s = &seeds[rng.below(seeds.len())];
                s[..rng.below(s.len() + 1)].to_vec()
            }
        };
        if p.len() < 2 {
            p.resize(2, 0);
        }
        let r = answer_raw(&h, &p, src).await;
        if r.is_some() {
            answered += 1;
        }
        check(&p, r);
    }
    // The mutations keep many packets valid: the handler really ran.
    assert!(answered > 1_000, "only {answered} packets were answered");
    // Every seed itself gets an answer.
    for s in &seeds {
        let r = answer_raw(&h, s, src).await;
        assert!(r.is_some());
        check(s, r);
    }
}

/// The UDP answer cache against the handler: for every packet it accepts
/// and every answer it keeps, replaying gives the handler's exact bytes.
#[tokio::test]
async fn replayed_answers_equal_the_handlers() {
    let h = handler();
    let src: SocketAddr = SocketAddr::from(([127, 0, 0, 1], 5353));
    let seeds = seeds();
    let mut rng = Rng(0x0fed_cba9_8765_4321);
    let mut key = [0u8; fastpath::KEY_MAX];
    let mut cache = AnswerCache::new();
    let (mut replayed, mut out) = (0usize, Vec::new());
    for i in 0..20_000usize {
        let mut p = seeds[rng.below(seeds.len())].clone();
        if i % 2 == 1 {
            // Mutate flags, id, type or the name's letters.
            let k = [0, 1, 2, 3, 12 + rng.below(p.len() - 12)][rng.below(5)];
            p[k] = rng.next() as u8;
        }
        let Some(q) = fastpath::parse(&p, &mut key) else {
            continue;
        };
        let Some((resp, valid)) = answer_raw_valid(&h, &p, src).await else {
            continue;
        };
        if cache
            .answer(&key, q, &p, h.zone_generation(), &mut out)
            .is_some()
        {
            replayed += 1;
            assert_eq!(out, resp, "replay differs for {p:02x?}");
        }
        cache.insert(&key, q, &p, &resp, valid);
    }
    assert!(replayed > 5_000, "only {replayed} replays");
}

/// A question whose name uses a compression pointer (here into the
/// header) must not be echoed: the pointer would then point into the
/// answer's own header. Found by cargo-fuzz; the first packet is its find.
#[tokio::test]
async fn compressed_question_gets_formerr_without_echo() {
    let h = handler();
    let src: SocketAddr = SocketAddr::from(([127, 0, 0, 1], 5353));
    let fuzzed: &[u8] = &[
        0x24, 0x00, 0x00, 0x00, 0x00, 0x01, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x09, 0x09, 0xcd,
        0x09, 0x09, 0x06, 0x06, 0x27, 0x06, 0x06, 0x06, 0x06, 0x06, 0x06, 0x06, 0x06, 0x06, 0x06,
        0x06, 0x06, 0x06, 0x04, 0x09, 0x09, 0x09, 0x09, 0x09, 0x09, 0x09, 0x02, 0x02, 0x02, 0x93,
        0x02, 0x02, 0x02, 0x02, 0xc0, 0x02, 0x02, 0x08, 0x08, 0x08, 0x08, 0x02, 0x02, 0x02, 0x02,
        0x09, 0x09, 0x09, 0x09, 0x09, 0x09, 0x09, 0x09, 0x09, 0x09, 0x09, 0x09, 0x01, 0xc3, 0xff,
        0xff, 0xff, 0x00, 0x01, 0x00, 0x09, 0x09, 0x09, 0x09, 0x70, 0x70, 0x70, 0x70, 0x09, 0x09,
        0x09, 0x09, 0x00, 0x00, 0x01, 0x9e, 0x32,
    ];
    // "camera" then a pointer to offset 2 (the flags), type A, class IN.
    let mut simple = vec![0x12, 0x34, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0, 6];
    simple.extend(b"camera");
    simple.extend([0xc0, 0x02, 0, 1, 0, 1]);
    for p in [fuzzed, &simple[..]] {
        let r = answer_raw(&h, p, src).await;
        check(p, r.clone());
        let m = Message::from_vec(&r.unwrap_or_default());
        assert!(m.is_ok(), "unparsable answer to {p:02x?}");
        if let Ok(m) = m {
            assert_eq!(m.metadata.response_code, ResponseCode::FormErr);
            assert!(m.queries.is_empty());
        }
    }
    // Uncompressed, the same question is answered.
    let mut plain = vec![0x12, 0x34, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0, 6];
    plain.extend(b"camera");
    plain.extend([0, 0, 1, 0, 1]);
    let m = Message::from_vec(&answer_raw(&h, &plain, src).await.unwrap_or_default());
    assert_eq!(m.map(|m| m.answers.len()).unwrap_or(0), 1);
}
