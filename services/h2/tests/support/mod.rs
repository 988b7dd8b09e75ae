//! A raw HTTP/2 peer for the conformance suite: frames and header blocks
//! are written byte by byte from RFC 9113 and RFC 7541, not with the
//! crate's own code, so a shared misreading cannot hide.
#![allow(
    dead_code,
    unreachable_pub,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic
)]

use std::sync::Arc;
use std::time::Duration;

use smarter_h2::{Call, Feed, Handler, Mux, Status, StopSignal};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;

pub const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

// Frame types (RFC 9113 §6).
pub const DATA: u8 = 0x0;
pub const HEADERS: u8 = 0x1;
pub const PRIORITY: u8 = 0x2;
pub const RST_STREAM: u8 = 0x3;
pub const SETTINGS: u8 = 0x4;
pub const PUSH_PROMISE: u8 = 0x5;
pub const PING: u8 = 0x6;
pub const GOAWAY: u8 = 0x7;
pub const WINDOW_UPDATE: u8 = 0x8;
pub const CONTINUATION: u8 = 0x9;

// Flags.
pub const ACK: u8 = 0x1;
pub const END_STREAM: u8 = 0x1;
pub const END_HEADERS: u8 = 0x4;
pub const PADDED: u8 = 0x8;
pub const PRIORITY_FLAG: u8 = 0x20;

// Settings (§6.5.2).
pub const HEADER_TABLE_SIZE: u16 = 0x1;
pub const ENABLE_PUSH: u16 = 0x2;
pub const MAX_CONCURRENT_STREAMS: u16 = 0x3;
pub const INITIAL_WINDOW_SIZE: u16 = 0x4;
pub const MAX_FRAME_SIZE: u16 = 0x5;
pub const MAX_HEADER_LIST_SIZE: u16 = 0x6;

// Error codes (§7).
pub const NO_ERROR: u32 = 0x0;
pub const PROTOCOL_ERROR: u32 = 0x1;
pub const FLOW_CONTROL_ERROR: u32 = 0x3;
pub const STREAM_CLOSED: u32 = 0x5;
pub const FRAME_SIZE_ERROR: u32 = 0x6;
pub const REFUSED_STREAM: u32 = 0x7;
pub const COMPRESSION_ERROR: u32 = 0x9;
pub const ENHANCE_YOUR_CALM: u32 = 0xb;

/// One frame as read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    pub ty: u8,
    pub flags: u8,
    pub stream: u32,
    pub payload: Vec<u8>,
}

impl Frame {
    /// The error code of a RST_STREAM or GOAWAY.
    pub fn code(&self) -> u32 {
        let at = if self.ty == GOAWAY { 4 } else { 0 };
        u32::from_be_bytes(self.payload[at..at + 4].try_into().unwrap())
    }
}

/// A frame's bytes (§4.1).
pub fn frame(ty: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let mut f = (payload.len() as u32).to_be_bytes()[1..].to_vec();
    f.extend_from_slice(&[ty, flags]);
    f.extend_from_slice(&stream.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

/// A SETTINGS payload.
pub fn settings(s: &[(u16, u32)]) -> Vec<u8> {
    let mut p = Vec::new();
    for (id, v) in s {
        p.extend_from_slice(&id.to_be_bytes());
        p.extend_from_slice(&v.to_be_bytes());
    }
    p
}

/// A header block of literal fields without indexing, new names, no
/// Huffman (RFC 7541 §6.2.2); names and values under 127 bytes.
pub fn block(fields: &[(&str, &str)]) -> Vec<u8> {
    let mut b = Vec::new();
    for (n, v) in fields {
        assert!(n.len() < 127 && v.len() < 127);
        b.push(0);
        b.push(n.len() as u8);
        b.extend_from_slice(n.as_bytes());
        b.push(v.len() as u8);
        b.extend_from_slice(v.as_bytes());
    }
    b
}

/// A valid gRPC request's fields for `path`.
pub fn request(path: &str) -> Vec<(&'static str, String)> {
    vec![
        (":method", "POST".into()),
        (":scheme", "http".into()),
        (":path", path.into()),
        (":authority", "localhost".into()),
        ("content-type", "application/grpc".into()),
        ("te", "trailers".into()),
    ]
}

/// [`block`] of owned fields.
pub fn block_of(fields: &[(&str, String)]) -> Vec<u8> {
    let f: Vec<(&str, &str)> = fields.iter().map(|(n, v)| (*n, v.as_str())).collect();
    block(&f)
}

/// A gRPC message (5-byte prefix).
pub fn grpc(msg: &[u8]) -> Vec<u8> {
    let mut m = vec![0];
    m.extend_from_slice(&(msg.len() as u32).to_be_bytes());
    m.extend_from_slice(msg);
    m
}

/// Echoes `/t/Echo`, watches a feed on `/t/Watch`.
pub struct Echo(pub Arc<Feed>);

impl Handler for Echo {
    fn call(&self, path: &str, msg: &[u8]) -> Call {
        match path {
            "/t/Echo" => Call::Reply(Ok(msg.to_vec())),
            "/t/Watch" => Call::Watch(Arc::clone(&self.0)),
            _ => Call::Reply(Err(Status::new(Status::UNIMPLEMENTED, path))),
        }
    }
}

/// A client connection to a fresh server.
pub struct Peer {
    pub io: UnixStream,
    pub stop: Arc<StopSignal>,
    pub feed: Arc<Feed>,
    /// The server's SETTINGS, as received.
    pub server_settings: Vec<(u16, u32)>,
    /// The connection window the server granted beyond 65,535.
    pub conn_grant: u32,
    _mux: Mux<Echo>,
}

impl Peer {
    /// Connected; nothing sent yet.
    pub async fn connect() -> Self {
        let (a, b) = std::os::unix::net::UnixStream::pair().unwrap();
        a.set_nonblocking(true).unwrap();
        let mux = Mux::start().unwrap();
        let stop = Arc::new(StopSignal::default());
        let feed = Arc::new(Feed::new(b"v0".to_vec()));
        mux.serve_stream(b, Arc::new(Echo(Arc::clone(&feed))), Arc::clone(&stop))
            .unwrap();
        Self {
            io: UnixStream::from_std(a).unwrap(),
            stop,
            feed,
            server_settings: Vec::new(),
            conn_grant: 0,
            _mux: mux,
        }
    }

    /// Connected, preface and `ours` SETTINGS sent, the server's SETTINGS
    /// acknowledged, ours acknowledged by the server (§3.4).
    pub async fn handshake_with(ours: &[(u16, u32)]) -> Self {
        let mut p = Self::connect().await;
        let mut hello = PREFACE.to_vec();
        hello.extend(frame(SETTINGS, 0, 0, &settings(ours)));
        p.send(&hello).await;
        let mut acked = false;
        let mut theirs = false;
        while !(acked && theirs) {
            let f = p.next().await.expect("EOF during the handshake");
            match (f.ty, f.flags & ACK) {
                (SETTINGS, 0) => {
                    assert_eq!(f.stream, 0);
                    assert_eq!(f.payload.len() % 6, 0);
                    for s in f.payload.chunks(6) {
                        p.server_settings.push((
                            u16::from_be_bytes([s[0], s[1]]),
                            u32::from_be_bytes([s[2], s[3], s[4], s[5]]),
                        ));
                    }
                    theirs = true;
                    p.send(&frame(SETTINGS, ACK, 0, &[])).await;
                }
                (SETTINGS, _) => {
                    assert!(f.payload.is_empty(), "§6.5: an ACK has no payload");
                    acked = true;
                }
                (WINDOW_UPDATE, _) if f.stream == 0 => {
                    p.conn_grant += u32::from_be_bytes(f.payload[..4].try_into().unwrap());
                }
                _ => panic!("unexpected during the handshake: {f:?}"),
            }
        }
        p
    }

    pub async fn handshake() -> Self {
        Self::handshake_with(&[]).await
    }

    pub async fn send(&mut self, b: &[u8]) {
        // The server may already have closed: a write error then is what
        // the following read checks.
        let _ = self.io.write_all(b).await;
    }

    /// Next frame within 5 s; None at EOF (or a reset connection).
    pub async fn next(&mut self) -> Option<Frame> {
        let mut h = [0u8; 9];
        let r = tokio::time::timeout(Duration::from_secs(5), self.io.read_exact(&mut h))
            .await
            .expect("no frame within 5 s");
        r.ok()?;
        let len = usize::from(h[0]) << 16 | usize::from(h[1]) << 8 | usize::from(h[2]);
        let mut payload = vec![0; len];
        self.io.read_exact(&mut payload).await.ok()?;
        Some(Frame {
            ty: h[3],
            flags: h[4],
            stream: u32::from_be_bytes([h[5], h[6], h[7], h[8]]) & 0x7fff_ffff,
            payload,
        })
    }

    /// A connection error (§5.4.1): GOAWAY with `code`, then the server
    /// closes.
    pub async fn expect_connection_error(&mut self, code: u32) {
        loop {
            match self.next().await {
                None => panic!("closed without GOAWAY (wanted code {code:#x})"),
                Some(f) if f.ty == GOAWAY => {
                    assert_eq!(f.stream, 0, "§6.8: GOAWAY is on stream 0");
                    assert_eq!(f.code(), code, "GOAWAY code: {f:?}");
                    break;
                }
                Some(f) if f.ty == RST_STREAM => {
                    panic!("stream error {f:?} where a connection error {code:#x} was due")
                }
                Some(_) => {}
            }
        }
        // §5.4.1: after GOAWAY for an error, the connection is closed.
        while let Some(f) = self.next().await {
            assert_ne!(f.ty, HEADERS, "no new responses after GOAWAY: {f:?}");
        }
    }

    /// A stream error (§5.4.2): RST_STREAM with `code` on `stream`, and
    /// the connection carries on (a PING is answered).
    pub async fn expect_stream_error(&mut self, stream: u32, code: u32) {
        loop {
            let f = self.next().await.expect("EOF where a stream error was due");
            if f.ty == GOAWAY {
                panic!("connection error {f:?} where a stream error {code:#x} was due");
            }
            if f.ty == RST_STREAM && f.stream == stream {
                assert_eq!(f.code(), code, "RST_STREAM code: {f:?}");
                break;
            }
        }
        self.expect_alive().await;
    }

    /// The connection still works: a PING is answered (§6.7).
    pub async fn expect_alive(&mut self) {
        self.send(&frame(PING, 0, 0, b"alive?!!")).await;
        loop {
            let f = self.next().await.expect("EOF: the connection is gone");
            assert_ne!(f.ty, GOAWAY, "connection error: {f:?}");
            if f.ty == PING && f.flags & ACK != 0 && f.payload == b"alive?!!" {
                return;
            }
        }
    }

    /// The response HEADERS and DATA of a unary call on `stream`, up to its
    /// trailers: (message bytes, trailer block).
    pub async fn response(&mut self, stream: u32) -> (Vec<u8>, Vec<u8>) {
        let mut body = Vec::new();
        loop {
            let f = self.next().await.expect("EOF before the response");
            assert_ne!(f.ty, GOAWAY, "{f:?}");
            assert_ne!(f.ty, RST_STREAM, "{f:?}");
            if f.stream != stream {
                continue;
            }
            match f.ty {
                DATA => body.extend_from_slice(&f.payload),
                HEADERS if f.flags & END_STREAM != 0 => return (body, f.payload),
                _ => {}
            }
        }
    }

    /// A unary call's HEADERS and DATA on `stream`.
    pub async fn call(&mut self, stream: u32, path: &str, msg: &[u8]) {
        let mut b = frame(HEADERS, END_HEADERS, stream, &block_of(&request(path)));
        b.extend(frame(DATA, END_STREAM, stream, &grpc(msg)));
        self.send(&b).await;
    }

    /// A watch opened on `stream`, its first message read: the stream is
    /// then half-closed (remote) and stays open.
    pub async fn watch(&mut self, stream: u32) {
        self.call(stream, "/t/Watch", b"").await;
        loop {
            let f = self
                .next()
                .await
                .expect("EOF before the watch's first message");
            assert_ne!(f.ty, GOAWAY, "{f:?}");
            if f.ty == DATA && f.stream == stream {
                return;
            }
        }
    }
}

/// Whether `needle` occurs in `hay`.
pub fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}
