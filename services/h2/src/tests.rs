//! Unit tests of the server and client: raw HTTP/2 frames written and read
//! by hand over socket pairs, and seeded mutations fed to [`Conn`]. The
//! RFC 9113 walk-through is `tests/conformance.rs`.

use crate::client::*;
use crate::conn::Conn;
use crate::frame::*;
use crate::grpc::*;
use crate::hpack::*;
use crate::mux::*;
use crate::service::*;
use loona_hpack::{Decoder, Encoder};
use std::sync::Arc;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;

#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod client {
    //! A raw HTTP/2 client: frames written and read by hand.
    use super::*;

    pub(super) struct Client {
        pub(super) io: UnixStream,
        pub(super) enc: Encoder<'static>,
        pub(super) dec: Decoder<'static>,
    }

    #[derive(Debug, Clone, PartialEq, Eq)]
    pub(super) struct Frame {
        pub(super) ty: u8,
        pub(super) flags: u8,
        pub(super) stream: u32,
        pub(super) payload: Vec<u8>,
    }

    pub(super) fn raw(ty: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
        let mut f = (payload.len() as u32).to_be_bytes()[1..].to_vec();
        f.extend_from_slice(&[ty, flags]);
        f.extend_from_slice(&stream.to_be_bytes());
        f.extend_from_slice(payload);
        f
    }

    impl Client {
        /// Connect a server for `h` over a socket pair; send the
        /// preface and `settings`.
        pub(super) async fn start<H: Handler>(
            h: H,
            settings: &[(u16, u32)],
        ) -> (Self, Arc<StopSignal>, Mux<H>) {
            let (a, b) = std::os::unix::net::UnixStream::pair().unwrap();
            a.set_nonblocking(true).unwrap();
            let tx = Arc::new(StopSignal::default());
            let mux = Mux::start().unwrap();
            mux.serve_stream(b, Arc::new(h), Arc::clone(&tx)).unwrap();
            let mut c = Self {
                io: UnixStream::from_std(a).unwrap(),
                enc: Encoder::new(),
                dec: Decoder::new(),
            };
            let mut p = Vec::new();
            for (id, v) in settings {
                p.extend_from_slice(&id.to_be_bytes());
                p.extend_from_slice(&v.to_be_bytes());
            }
            let mut bytes = PREFACE.to_vec();
            bytes.extend(raw(SETTINGS, 0, 0, &p));
            c.send(&bytes).await;
            (c, tx, mux)
        }

        pub(super) async fn send(&mut self, b: &[u8]) {
            self.io.write_all(b).await.unwrap();
        }

        pub(super) fn request_headers(&mut self, path: &str, authority: &str) -> Vec<u8> {
            self.enc.encode([
                (&b":method"[..], &b"POST"[..]),
                (b":scheme", b"http"),
                (b":path", path.as_bytes()),
                (b":authority", authority.as_bytes()),
                (b"content-type", b"application/grpc"),
                (b"te", b"trailers"),
            ])
        }

        /// A whole unary request on `stream`.
        pub(super) async fn call(&mut self, stream: u32, path: &str, msg: &[u8]) {
            let h = self.request_headers(path, "/var/lib/kubelet/device-plugins/x.sock");
            let mut b = raw(HEADERS, END_HEADERS, stream, &h);
            b.extend(raw(DATA, END_STREAM, stream, &grpc_frame(msg)));
            self.send(&b).await;
        }

        /// Next frame, within 5 s; None at EOF.
        pub(super) async fn frame(&mut self) -> Option<Frame> {
            let mut h = [0u8; 9];
            let r = tokio::time::timeout(Duration::from_secs(5), self.io.read_exact(&mut h))
                .await
                .expect("no frame within 5 s");
            if r.is_err() {
                return None;
            }
            let len = (h[0] as usize) << 16 | (h[1] as usize) << 8 | h[2] as usize;
            let mut payload = vec![0; len];
            self.io.read_exact(&mut payload).await.unwrap();
            Some(Frame {
                ty: h[3],
                flags: h[4],
                stream: u32::from_be_bytes([h[5], h[6], h[7], h[8]]),
                payload,
            })
        }

        /// Next frame that is not SETTINGS (or its ACK) or
        /// WINDOW_UPDATE.
        pub(super) async fn next(&mut self) -> Option<Frame> {
            loop {
                let f = self.frame().await?;
                let skip = f.ty == SETTINGS || f.ty == WINDOW_UPDATE;
                if !skip {
                    return Some(f);
                }
            }
        }

        pub(super) fn headers(&mut self, f: &Frame) -> Vec<(String, String)> {
            assert_eq!(f.ty, HEADERS, "{f:?}");
            self.dec
                .decode(&f.payload)
                .unwrap()
                .into_iter()
                .map(|(n, v)| (String::from_utf8(n).unwrap(), String::from_utf8(v).unwrap()))
                .collect()
        }

        /// Read a whole unary response on `stream`: (message, status
        /// code, message).
        pub(super) async fn response(&mut self, stream: u32) -> (Vec<u8>, String, String) {
            let mut body = Vec::new();
            loop {
                let f = self.next().await.expect("EOF");
                assert_eq!(f.stream, stream, "{f:?}");
                match f.ty {
                    DATA => body.extend_from_slice(&f.payload),
                    HEADERS => {
                        let h = self.headers(&f);
                        if f.flags & END_STREAM != 0 {
                            let get = |k: &str| {
                                h.iter()
                                    .find(|(n, _)| n == k)
                                    .map(|(_, v)| v.clone())
                                    .unwrap_or_default()
                            };
                            let msg = if body.is_empty() {
                                vec![]
                            } else {
                                body[5..].to_vec()
                            };
                            return (msg, get("grpc-status"), get("grpc-message"));
                        }
                        assert!(h.contains(&(":status".into(), "200".into())), "{h:?}");
                        assert!(
                            h.contains(&("content-type".into(), "application/grpc".into())),
                            "{h:?}"
                        );
                    }
                    _ => panic!("unexpected {f:?}"),
                }
            }
        }
    }
}

use client::{Client, raw};

const UA: &str = "smarter-h2-test";
use std::time::Duration;

/// Echoes unary requests on `/t/Echo`, fails `/t/Fail`, watches `rx`
/// on `/t/Watch`.
struct Echo(Arc<Feed>);

impl Handler for Echo {
    fn call(&self, path: &str, msg: &[u8]) -> Call {
        match path {
            "/t/Echo" => Call::Reply(Ok(msg.to_vec())),
            "/t/Fail" => Call::Reply(Err(Status::new(
                Status::FAILED_PRECONDITION,
                "no such device: 100% gone\n",
            ))),
            "/t/Watch" => Call::Watch(Arc::clone(&self.0)),
            _ => Call::Reply(Err(Status::new(Status::UNIMPLEMENTED, path))),
        }
    }
}

/// Publishes `v<n>` on the echo handler's feed; closes it on drop.
struct Tx(Arc<Feed>);

impl Tx {
    fn send(&self, v: u32) -> Result<(), ()> {
        self.0.publish(format!("v{v}").into_bytes());
        Ok(())
    }
}

impl Drop for Tx {
    fn drop(&mut self) {
        self.0.close();
    }
}

fn echo() -> (Echo, Tx) {
    let feed = Arc::new(Feed::new(b"v0".to_vec()));
    (Echo(Arc::clone(&feed)), Tx(feed))
}

#[tokio::test]
async fn unary_with_a_socket_path_authority() {
    let (h, _tx) = echo();
    let (mut c, _stop, _t) = Client::start(h, &[]).await;
    // Our SETTINGS first: header table 0.
    let f = c.frame().await.unwrap();
    assert_eq!(f.ty, SETTINGS);
    assert_eq!(&f.payload[..6], &[0, 1, 0, 0, 0, 0]);
    c.call(1, "/t/Echo", b"hello").await;
    assert_eq!(
        c.response(1).await,
        (b"hello".to_vec(), "0".into(), "".into())
    );
    // Several calls, in order, on new streams.
    c.call(3, "/t/Echo", b"").await;
    assert_eq!(c.response(3).await.1, "0");
    c.call(5, "/t/Fail", b"x").await;
    assert_eq!(
        c.response(5).await,
        (vec![], "9".into(), "no such device: 100%25 gone%0A".into())
    );
    c.call(7, "/t/Nope", b"x").await;
    assert_eq!(c.response(7).await.1, "12");
}

#[tokio::test]
async fn settings_and_ping_are_acknowledged() {
    let (h, _tx) = echo();
    let (mut c, _stop, _t) = Client::start(h, &[(SETTINGS_INITIAL_WINDOW_SIZE, 1000)]).await;
    let mut acked = false;
    let mut ours = false;
    while !(acked && ours) {
        let f = c.frame().await.unwrap();
        if f.ty == WINDOW_UPDATE {
            continue;
        }
        assert_eq!(f.ty, SETTINGS);
        if f.flags & ACK != 0 {
            acked = true;
            assert!(f.payload.is_empty());
        } else {
            ours = true;
        }
    }
    c.send(&raw(PING, 0, 0, b"12345678")).await;
    let f = c.frame().await.unwrap();
    assert_eq!(
        (f.ty, f.flags, f.payload.as_slice()),
        (PING, ACK, &b"12345678"[..])
    );
    // A PING ACK is not answered.
    c.send(&raw(PING, ACK, 0, b"abcdefgh")).await;
    c.send(&raw(PING, 0, 0, b"zzzzzzzz")).await;
    assert_eq!(c.frame().await.unwrap().payload, b"zzzzzzzz");
}

#[tokio::test]
async fn headers_split_over_continuation_and_padded_frames() {
    let (h, _tx) = echo();
    let (mut c, _stop, _t) = Client::start(h, &[]).await;
    let block = c.request_headers("/t/Echo", "localhost");
    let (a, b) = block.split_at(block.len() / 2);
    let (b1, b2) = b.split_at(b.len() / 2);
    // HEADERS padded with priority, two CONTINUATIONs, padded DATA in
    // two pieces.
    let mut p = vec![3u8];
    p.extend_from_slice(&[0, 0, 0, 0, 16]);
    p.extend_from_slice(a);
    p.extend_from_slice(&[0, 0, 0]);
    let mut bytes = raw(HEADERS, PADDED | PRIORITY_FLAG, 1, &p);
    bytes.extend(raw(CONTINUATION, 0, 1, b1));
    bytes.extend(raw(CONTINUATION, END_HEADERS, 1, b2));
    let msg = grpc_frame(b"split body");
    let mut d = vec![2u8];
    d.extend_from_slice(&msg[..7]);
    d.extend_from_slice(&[0, 0]);
    bytes.extend(raw(DATA, PADDED, 1, &d));
    bytes.extend(raw(DATA, END_STREAM, 1, &msg[7..]));
    c.send(&bytes).await;
    assert_eq!(c.response(1).await.0, b"split body");
}

#[tokio::test]
async fn flow_control_holds_data_until_window_updates() {
    let (h, _tx) = echo();
    let (mut c, _stop, _t) = Client::start(h, &[(SETTINGS_INITIAL_WINDOW_SIZE, 4)]).await;
    c.call(1, "/t/Echo", b"0123456789").await;
    let f = c.next().await.unwrap();
    assert_eq!(f.ty, HEADERS);
    c.headers(&f);
    let f = c.next().await.unwrap();
    assert_eq!((f.ty, f.payload.len()), (DATA, 4));
    // Nothing more until the window opens: a PING proves the server
    // is idle rather than slow.
    c.send(&raw(PING, 0, 0, b"pingpong")).await;
    let f = c.next().await.unwrap();
    assert_eq!((f.ty, f.flags), (PING, ACK));
    c.send(&raw(WINDOW_UPDATE, 0, 1, &100u32.to_be_bytes()))
        .await;
    let f = c.next().await.unwrap();
    assert_eq!(f.ty, DATA);
    assert_eq!(f.payload, grpc_frame(b"0123456789")[4..]);
    let f = c.next().await.unwrap();
    assert_eq!(
        c.headers(&f),
        vec![("grpc-status".to_string(), "0".to_string())]
    );
    // The connection window limits too: 65,535 minus 10 used. A
    // larger window via SETTINGS applies to open streams.
}

#[tokio::test]
async fn watch_streams_every_change_and_ends_when_the_source_goes() {
    let (h, tx) = echo();
    let (mut c, _stop, _t) = Client::start(h, &[]).await;
    c.call(1, "/t/Watch", b"").await;
    let f = c.next().await.unwrap();
    c.headers(&f);
    let f = c.next().await.unwrap();
    assert_eq!(f.payload, grpc_frame(b"v0"));
    tx.send(7).unwrap();
    assert_eq!(c.next().await.unwrap().payload, grpc_frame(b"v7"));
    // A unary call meanwhile.
    c.call(3, "/t/Echo", b"u").await;
    assert_eq!(c.response(3).await.0, b"u");
    tx.send(8).unwrap();
    assert_eq!(c.next().await.unwrap().payload, grpc_frame(b"v8"));
    drop(tx);
    let f = c.next().await.unwrap();
    assert_eq!((f.stream, f.flags & END_STREAM), (1, END_STREAM));
    assert_eq!(
        c.headers(&f),
        vec![("grpc-status".to_string(), "0".to_string())]
    );
}

#[tokio::test]
async fn slow_watch_reader_gets_only_the_newest_value() {
    let (h, tx) = echo();
    // Window 7: exactly one 7-byte message ("v0" framed is 7 bytes).
    let (mut c, _stop, _t) = Client::start(h, &[(SETTINGS_INITIAL_WINDOW_SIZE, 7)]).await;
    c.call(1, "/t/Watch", b"").await;
    let f = c.next().await.unwrap();
    c.headers(&f);
    assert_eq!(c.next().await.unwrap().payload, grpc_frame(b"v0"));
    for v in 1..=5 {
        tx.send(v).unwrap();
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    c.send(&raw(WINDOW_UPDATE, 0, 1, &100u32.to_be_bytes()))
        .await;
    assert_eq!(c.next().await.unwrap().payload, grpc_frame(b"v5"));
}

#[tokio::test]
async fn stop_ends_watches_and_says_goaway() {
    let (h, _tx) = echo();
    let (mut c, stop, _mux) = Client::start(h, &[]).await;
    c.call(1, "/t/Watch", b"").await;
    let f = c.next().await.unwrap();
    c.headers(&f);
    c.next().await.unwrap();
    stop.stop();
    let f = c.next().await.unwrap();
    assert_eq!(
        c.headers(&f),
        vec![("grpc-status".to_string(), "0".to_string())]
    );
    let f = c.next().await.unwrap();
    assert_eq!(f.ty, GOAWAY);
    assert_eq!(&f.payload, &[0, 0, 0, 1, 0, 0, 0, 0]);
    assert!(c.next().await.is_none());
    released(&stop).await;
}

/// Wait until the server let go of `stop` (its connection is gone).
async fn released(stop: &Arc<StopSignal>) {
    for _ in 0..400 {
        if Arc::strong_count(stop) == 1 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    panic!("the server still holds the connection");
}

/// The GOAWAY error code a connection ends with after `bytes`.
async fn goaway_after(bytes: Vec<u8>) -> Option<u32> {
    let (h, _tx) = echo();
    let (mut c, stop, _mux) = Client::start(h, &[]).await;
    c.send(&bytes).await;
    let mut code = None;
    while let Some(f) = c.next().await {
        if f.ty == GOAWAY {
            code = Some(u32::from_be_bytes([
                f.payload[4],
                f.payload[5],
                f.payload[6],
                f.payload[7],
            ]));
        }
    }
    released(&stop).await;
    code
}

#[tokio::test]
async fn protocol_violations_end_the_connection_with_goaway() {
    let fs = H2Error::FrameSize as u32;
    let pr = H2Error::Protocol as u32;
    assert_eq!(goaway_after(raw(DATA, 0, 0, b"x")).await, Some(pr));
    assert_eq!(
        goaway_after(raw(HEADERS, END_HEADERS, 2, &[0x82])).await,
        Some(pr)
    );
    assert_eq!(goaway_after(raw(PING, 0, 0, b"short")).await, Some(fs));
    assert_eq!(
        goaway_after(raw(DATA, 0, 1, &vec![0; MAX_FRAME + 1])).await,
        Some(fs)
    );
    assert_eq!(goaway_after(raw(SETTINGS, 0, 0, &[0; 5])).await, Some(fs));
    assert_eq!(
        goaway_after(raw(PUSH_PROMISE, END_HEADERS, 1, &[0; 4])).await,
        Some(pr)
    );
    assert_eq!(
        goaway_after(raw(CONTINUATION, END_HEADERS, 1, &[0x82])).await,
        Some(pr)
    );
    assert_eq!(
        goaway_after(raw(WINDOW_UPDATE, 0, 0, &0u32.to_be_bytes())).await,
        Some(pr)
    );
    // An HPACK index past both tables.
    assert_eq!(
        goaway_after(raw(HEADERS, END_HEADERS, 1, &[0xff, 0x7f])).await,
        Some(H2Error::Compression as u32)
    );
    // Headers interrupted by another frame.
    let mut b = raw(HEADERS, 0, 1, &[0x83]);
    b.extend(raw(PING, 0, 0, b"12345678"));
    assert_eq!(goaway_after(b).await, Some(pr));
}

#[tokio::test]
async fn a_bad_preface_is_refused() {
    let (h, _tx) = echo();
    let (a, b) = std::os::unix::net::UnixStream::pair().unwrap();
    a.set_nonblocking(true).unwrap();
    let mux = Mux::start().unwrap();
    let stop = Arc::new(StopSignal::default());
    mux.serve_stream(b, Arc::new(h), Arc::clone(&stop)).unwrap();
    let mut a = UnixStream::from_std(a).unwrap();
    a.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut all = Vec::new();
    a.read_to_end(&mut all).await.unwrap();
    // Our SETTINGS and connection WINDOW_UPDATE, then GOAWAY
    // PROTOCOL_ERROR.
    let goaway = 9 + 18 + 9 + 4;
    assert_eq!(all[goaway + 3], GOAWAY, "{all:?}");
    assert_eq!(all[goaway + 9 + 7], H2Error::Protocol as u8, "{all:?}");
    released(&stop).await;
}

#[tokio::test]
async fn non_grpc_requests_get_415_and_compressed_ones_unimplemented() {
    let (h, _tx) = echo();
    let (mut c, _stop, _t) = Client::start(h, &[]).await;
    let block = c.enc.encode([
        (&b":method"[..], &b"GET"[..]),
        (b":path", b"/"),
        (b":scheme", b"http"),
    ]);
    c.send(&raw(HEADERS, END_HEADERS | END_STREAM, 1, &block))
        .await;
    let f = c.next().await.unwrap();
    assert_eq!(
        c.headers(&f),
        vec![(":status".to_string(), "415".to_string())]
    );
    let block = c.enc.encode([
        (&b":method"[..], &b"POST"[..]),
        (b":scheme", b"http"),
        (b":path", b"/t/Echo"),
        (b"content-type", b"application/grpc+proto"),
        (b"grpc-encoding", b"gzip"),
    ]);
    c.send(&raw(HEADERS, END_HEADERS, 3, &block)).await;
    assert_eq!(c.response(3).await.1, "12");
    let f = c.next().await.unwrap();
    assert_eq!((f.ty, f.stream), (RST_STREAM, 3));
    // A compressed message flag without grpc-encoding.
    let h = c.request_headers("/t/Echo", "x");
    let mut b = raw(HEADERS, END_HEADERS, 5, &h);
    b.extend(raw(DATA, END_STREAM, 5, &[1, 0, 0, 0, 1, 9]));
    c.send(&b).await;
    assert_eq!(c.response(5).await.1, "12");
    // Too many streams: the 17th open one is refused.
    for i in 0..(MAX_STREAMS as u32 + 1) {
        let h = c.request_headers("/t/Echo", "x");
        c.send(&raw(HEADERS, END_HEADERS, 7 + 2 * i, &h)).await;
    }
    let f = c.next().await.unwrap();
    assert_eq!((f.ty, f.stream), (RST_STREAM, 7 + 2 * MAX_STREAMS as u32));
}

#[tokio::test]
async fn the_client_calls_our_server_over_a_socket_file() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("s.sock");
    let listener = std::os::unix::net::UnixListener::bind(&sock).unwrap();
    let (h, _tx) = echo();
    let mux = Mux::start().unwrap();
    mux.listen(listener, Arc::new(h), Arc::default()).unwrap();
    let big = vec![7u8; 40_000];
    assert_eq!(call_unix(&sock, "/t/Echo", &big, UA).await.unwrap(), big);
    assert_eq!(call_unix(&sock, "/t/Echo", b"", UA).await.unwrap(), b"");
    match call_unix(&sock, "/t/Fail", b"x", UA).await {
        Err(CallError::Status(s)) => {
            assert_eq!(s, Status::new(9, "no such device: 100% gone\n"));
        }
        other => panic!("{other:?}"),
    }
    assert!(matches!(
        call_unix(&dir.path().join("none.sock"), "/t/Echo", b"", UA).await,
        Err(CallError::Io(_))
    ));
}

#[tokio::test]
async fn one_mux_task_serves_many_listeners_watches_and_stops() {
    // A lost wake-up shows as a hang: fail it in 20 s instead.
    tokio::time::timeout(Duration::from_secs(20), mux_serves_many())
        .await
        .expect("the mux stopped answering");
}

async fn mux_serves_many() {
    let dir = tempfile::tempdir().unwrap();
    let mux = Mux::start().unwrap();
    let mut socks = Vec::new();
    let mut stops = Vec::new();
    let (h, tx) = echo();
    let h = Arc::new(h);
    for i in 0..3 {
        let sock = dir.path().join(format!("{i}.sock"));
        let l = std::os::unix::net::UnixListener::bind(&sock).unwrap();
        let stop = Arc::new(StopSignal::default());
        mux.listen(l, Arc::clone(&h), Arc::clone(&stop)).unwrap();
        socks.push(sock);
        stops.push(stop);
    }
    for sock in &socks {
        assert_eq!(call_unix(sock, "/t/Echo", b"hi", UA).await.unwrap(), b"hi");
    }
    // A watch on socket 1: the feed's changes arrive; its stop ends it.
    let mut c = Client {
        io: UnixStream::connect(&socks[1]).await.unwrap(),
        enc: Encoder::new(),
        dec: Decoder::new(),
    };
    let mut hello = PREFACE.to_vec();
    hello.extend(raw(SETTINGS, 0, 0, &[]));
    c.send(&hello).await;
    c.call(1, "/t/Watch", b"").await;
    let f = c.next().await.unwrap();
    c.headers(&f);
    assert_eq!(c.next().await.unwrap().payload, grpc_frame(b"v0"));
    tx.send(5).unwrap();
    assert_eq!(c.next().await.unwrap().payload, grpc_frame(b"v5"));
    // After a quiet spell (no feed change, no new socket), a call on
    // the open connection is still answered: the mux re-armed its
    // wake-up for socket events.
    tokio::time::sleep(Duration::from_millis(50)).await;
    c.call(3, "/t/Echo", b"later").await;
    assert_eq!(c.response(3).await.0, b"later");
    let stop = &stops[1];
    stop.stop();
    let f = c.next().await.unwrap();
    assert_eq!(
        c.headers(&f),
        vec![("grpc-status".to_string(), "0".to_string())]
    );
    assert_eq!(c.next().await.unwrap().ty, GOAWAY);
    assert!(c.next().await.is_none());
    // Listener and connection have let go of the signal; the socket
    // no longer accepts; the others still serve.
    for _ in 0..200 {
        if Arc::strong_count(stop) == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(Arc::strong_count(stop), 1);
    assert!(call_unix(&socks[1], "/t/Echo", b"x", UA).await.is_err());
    assert_eq!(
        call_unix(&socks[2], "/t/Echo", b"x", UA).await.unwrap(),
        b"x"
    );
}

#[test]
fn hpack_integers_round_trip_through_the_decoder() {
    for v in [0usize, 14, 15, 16, 127, 128, 300, 70_000] {
        let mut b = Vec::new();
        hpack_literal(&mut b, b"x-len", &vec![b'a'; v]);
        hpack_indexed_name(&mut b, 31, b"application/grpc");
        let got = Decoder::new().decode(&b).unwrap_or_default();
        assert_eq!(got.len(), 2, "{v}");
        assert_eq!(got[0].1.len(), v);
        assert_eq!(got[1].0, b"content-type");
    }
}

#[test]
fn mutated_sessions_never_panic() {
    // A valid session (preface, SETTINGS, a unary call, a watch,
    // PING, WINDOW_UPDATE, RST_STREAM), then 20,000 seeded mutations
    // of it fed in random pieces: the state machine must answer or
    // close, never panic, and keep its output bounded.
    let mut enc = Encoder::new();
    let mut session = PREFACE.to_vec();
    session.extend(raw(SETTINGS, 0, 0, &[0, 4, 0, 0, 0, 10]));
    let h = enc.encode([
        (&b":method"[..], &b"POST"[..]),
        (b":scheme", b"http"),
        (b":path", b"/t/Echo"),
        (b"content-type", b"application/grpc"),
    ]);
    session.extend(raw(HEADERS, END_HEADERS, 1, &h));
    session.extend(raw(DATA, END_STREAM, 1, &grpc_frame(b"hello world")));
    let h = enc.encode([
        (&b":method"[..], &b"POST"[..]),
        (b":scheme", b"http"),
        (b":path", b"/t/Watch"),
        (b"content-type", b"application/grpc"),
    ]);
    session.extend(raw(HEADERS, END_HEADERS, 3, &h));
    session.extend(raw(DATA, END_STREAM, 3, &grpc_frame(b"")));
    session.extend(raw(PING, 0, 0, b"12345678"));
    session.extend(raw(WINDOW_UPDATE, 0, 3, &100u32.to_be_bytes()));
    session.extend(raw(RST_STREAM, 0, 3, &8u32.to_be_bytes()));
    let mut x: u64 = 0x2545_f491_4f6c_dd1d;
    let mut next = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let (h, tx) = echo();
    let h = Arc::new(h);
    // Unmutated, the session is served: the echo (its first 10 bytes:
    // the session's window is 10) and the watch's first message come
    // back, and the connection is not failed.
    let mut c = Conn::new(Arc::clone(&h));
    c.feed(&session);
    assert!(!c.fatal);
    let out = String::from_utf8_lossy(&c.out).into_owned();
    assert!(
        out.contains("hello") && !out.contains("world") && out.contains("v0"),
        "{out:?}"
    );
    for round in 0..20_000 {
        let mut bytes = session.clone();
        // Leave the preface intact in most rounds so frames get parsed.
        let from = if round % 10 == 0 { 0 } else { PREFACE.len() };
        for _ in 0..(1 + next() % 4) {
            let i = from + (next() as usize) % (bytes.len() - from);
            match next() % 3 {
                0 => bytes[i] = next() as u8,
                1 => bytes[i] ^= 1 << (next() % 8),
                _ => {
                    bytes.truncate(i.max(from + 1));
                }
            }
        }
        let mut c = Conn::new(Arc::clone(&h));
        let mut pos = 0;
        while pos < bytes.len() {
            let n = 1 + (next() as usize) % 64;
            let end = (pos + n).min(bytes.len());
            c.feed(&bytes[pos..end]);
            pos = end;
            if round % 7 == 0 {
                c.on_watch(true);
            }
            assert!(
                c.out.len() < 1 << 20,
                "round {round}: output grows unbounded"
            );
            assert!(c.buffered_input() <= crate::MAX_BUFFERED_INPUT);
            c.out.clear();
        }
        if round % 5 == 0 {
            c.on_stop();
        }
    }
    drop(tx);
}

#[test]
fn the_decoder_survives_random_blocks() {
    // loona-hpack is a dependency fed untrusted bytes: make sure junk
    // gives an error, never a panic.
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    for _ in 0..20_000 {
        let len = (next() % 64) as usize;
        let block: Vec<u8> = (0..len).map(|_| next() as u8).collect();
        let mut d = Decoder::new();
        let _ = d.decode_with_cb(&block, |_, _| {});
        let _ = d.decode_with_cb(&block, |_, _| {});
    }
}
