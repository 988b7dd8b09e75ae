//! Any bytes through smarter-dns's request path (decode, local lookup or
//! forward attempt, encode): must not panic, and every answer must parse,
//! be a response and echo the request id. When the UDP answer cache takes
//! the request and keeps the answer, replaying it for the same bytes must
//! give exactly the same answer.
#![no_main]

use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use hickory_proto::op::{Message, MessageType};
use hickory_proto::rr::Name;
use libfuzzer_sys::fuzz_target;
use smarter_dns::forward::{Forwarder, ForwarderConfig};
use smarter_dns::metrics::Metrics;
use smarter_dns::fastpath::{self, AnswerCache};
use smarter_dns::server::{Handler, ZoneHandle, answer_raw_valid};
use smarter_dns::zone::{Pod, Store};

struct Ctx {
    rt: tokio::runtime::Runtime,
    handler: Handler,
}

fn ctx() -> &'static Ctx {
    static CTX: OnceLock<Ctx> = OnceLock::new();
    CTX.get_or_init(|| {
        let mut store = Store::new(&Name::from_ascii("cluster.local.").unwrap(), 5);
        store.upsert_record(
            "a".into(),
            smarter_common::records::Record {
                version: smarter_common::records::VERSION,
                container_id: "a".into(),
                ifname: "eth0".into(),
                network: "smartnet".into(),
                pod_name: Some("camera".into()),
                namespace: Some("iot".into()),
                hostname: Some("camhost".into()),
                ips: vec!["172.39.0.5".parse().unwrap(), "fd00::5".parse().unwrap()],
            },
        );
        store.upsert_pod(Pod {
            id: "h".into(),
            name: Some("agent".into()),
            host_network: true,
            ..Pod::default()
        });
        let metrics = Arc::new(Metrics::default());
        let fwd = Forwarder::new(
            ForwarderConfig {
                timeout: Duration::from_millis(1),
                cache_size: 64,
                cache_max_ttl: 60,
                max_inflight: 4,
            },
            Vec::new(),
            Arc::clone(&metrics),
        );
        Ctx {
            rt: tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap(),
            handler: Handler::new(ZoneHandle::new(store), Arc::new(fwd), metrics),
        }
    })
}

fuzz_target!(|data: &[u8]| {
    let c = ctx();
    let src = SocketAddr::from(([127, 0, 0, 1], 5353));
    if let Some((resp, valid)) = c.rt.block_on(answer_raw_valid(&c.handler, data, src)) {
        let m = Message::from_vec(&resp).expect("answer must parse");
        assert_eq!(m.metadata.message_type, MessageType::Response);
        assert_eq!(m.metadata.id, u16::from_be_bytes([data[0], data[1]]));
        let mut key = [0u8; fastpath::KEY_MAX];
        if let Some(q) = fastpath::parse(data, &mut key) {
            let mut cache = AnswerCache::new();
            cache.insert(&key, q, data, &resp, valid);
            let mut out = Vec::new();
            let generation = c.handler.zone_generation();
            if cache.answer(&key, q, data, generation, &mut out).is_some() {
                assert_eq!(out, resp, "replayed answer differs");
            }
        }
    }
});
