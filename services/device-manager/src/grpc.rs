//! A small HTTP/2 server for gRPC over a unix socket: exactly what the
//! kubelet's device-plugin client needs, and no more.
//!
//! Why not hyper/h2 (which tonic uses): the kubelet keeps one HTTP/2
//! connection open per resource for ListAndWatch, and the original's rules
//! make one resource per device node. h2 allocates about 34 KiB per
//! connection (fixed 16 KiB write, 8 KiB read and 4 KiB HPACK buffers), so
//! 1,000 nodes cost 35 MiB. Here an idle connection holds no buffer at all:
//! input is read into a stack buffer and only an incomplete frame is kept,
//! output is freed as soon as the socket took it. And kubelets before 1.26
//! send the socket *path* as `:authority` (kubernetes/kubernetes#112597),
//! which h2 refuses with RST_STREAM; a unix socket has no authority to
//! check, so it is ignored here. See `docs/decisions/0016-own-http2-server.md`.
//!
//! What is implemented (RFC 9113 server side, RFC 7541 via `loona-hpack` for
//! decoding): the preface, SETTINGS (with ACK), PING, WINDOW_UPDATE and
//! send-side flow control per stream and connection, HEADERS with
//! CONTINUATION, padding and priority fields, DATA, RST_STREAM, GOAWAY
//! (graceful on stop, with an error code on a protocol violation). gRPC:
//! unary calls and server-streaming "watch" calls whose messages come from a
//! `tokio::sync::watch` channel (only the newest value is ever queued, so a
//! slow reader costs at most one message). Not implemented, because no
//! kubelet uses them: server push, request compression (answered with
//! UNIMPLEMENTED), client streaming, priorities (parsed and ignored).

use std::borrow::Cow;
use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::Poll;

use loona_hpack::Decoder;
use tokio::net::UnixStream;
use tokio::sync::Notify;

/// The client connection preface.
const PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
/// Length of a frame header.
const FRAME_HEADER: usize = 9;
/// The largest frame we accept (the protocol default; we never raise it).
const MAX_FRAME: usize = 16_384;
/// Streams one connection may have open (the kubelet uses one or two).
pub const MAX_STREAMS: usize = 16;
/// The largest request message (gRPC's usual default: 4 MiB).
pub const MAX_MESSAGE: usize = 4 << 20;
/// The largest header block (all HEADERS + CONTINUATION payloads).
const MAX_HEADER_BLOCK: usize = 64 << 10;
/// Stop reading while this much output waits for the peer to read.
const OUT_HIGH_WATER: usize = 64 << 10;
/// HTTP/2's initial flow-control window.
const DEFAULT_WINDOW: i64 = 65_535;
/// Largest flow-control window.
const MAX_WINDOW: i64 = (1 << 31) - 1;

// Frame types (RFC 9113 §6).
const DATA: u8 = 0x0;
const HEADERS: u8 = 0x1;
const PRIORITY: u8 = 0x2;
const RST_STREAM: u8 = 0x3;
const SETTINGS: u8 = 0x4;
const PUSH_PROMISE: u8 = 0x5;
const PING: u8 = 0x6;
const GOAWAY: u8 = 0x7;
const WINDOW_UPDATE: u8 = 0x8;
const CONTINUATION: u8 = 0x9;

// Flags.
const END_STREAM: u8 = 0x1;
const ACK: u8 = 0x1;
const END_HEADERS: u8 = 0x4;
const PADDED: u8 = 0x8;
const PRIORITY_FLAG: u8 = 0x20;

// Settings.
const SETTINGS_HEADER_TABLE_SIZE: u16 = 0x1;
const SETTINGS_ENABLE_PUSH: u16 = 0x2;
const SETTINGS_MAX_CONCURRENT_STREAMS: u16 = 0x3;
const SETTINGS_INITIAL_WINDOW_SIZE: u16 = 0x4;
const SETTINGS_MAX_FRAME_SIZE: u16 = 0x5;
const SETTINGS_MAX_HEADER_LIST_SIZE: u16 = 0x6;

/// HTTP/2 error codes (RFC 9113 §7).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u32)]
pub enum H2Error {
    /// Graceful.
    NoError = 0x0,
    /// Protocol violation.
    Protocol = 0x1,
    /// Our fault.
    Internal = 0x2,
    /// Window violation.
    FlowControl = 0x3,
    /// Frame on a closed stream.
    StreamClosed = 0x5,
    /// Bad frame length.
    FrameSize = 0x6,
    /// Too many streams.
    RefusedStream = 0x7,
    /// HPACK failure.
    Compression = 0x9,
    /// The peer is abusive (header block too large).
    EnhanceYourCalm = 0xb,
}

/// A gRPC status: code (0 is OK) and message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Status {
    /// gRPC status code.
    pub code: u32,
    /// Human-readable message (sent percent-encoded in `grpc-message`).
    pub message: String,
}

impl Status {
    /// OK.
    pub const OK: u32 = 0;
    /// Internal.
    pub const INTERNAL: u32 = 13;
    /// Invalid argument.
    pub const INVALID_ARGUMENT: u32 = 3;
    /// Not found.
    pub const NOT_FOUND: u32 = 5;
    /// Failed precondition.
    pub const FAILED_PRECONDITION: u32 = 9;
    /// Resource exhausted.
    pub const RESOURCE_EXHAUSTED: u32 = 8;
    /// Unimplemented.
    pub const UNIMPLEMENTED: u32 = 12;

    /// A status with `code` and `message`.
    pub fn new(code: u32, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }

    fn ok() -> Self {
        Self::new(Self::OK, "")
    }
}

/// The message a watch call streams: its newest encoded value, a version
/// that counts changes, and a wake-up. One per resource, shared by every
/// connection watching it; encoded once per change, not per connection.
#[derive(Debug)]
pub struct Feed {
    state: std::sync::Mutex<FeedState>,
}

#[derive(Debug)]
struct FeedState {
    version: u64,
    msg: Vec<u8>,
    closed: bool,
}

impl Feed {
    /// A feed whose first message is `msg`.
    pub fn new(msg: Vec<u8>) -> Self {
        Self {
            state: std::sync::Mutex::new(FeedState {
                version: 0,
                msg,
                closed: false,
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, FeedState> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Make `msg` the newest message (if it differs) and wake the watchers.
    pub fn publish(&self, msg: Vec<u8>) {
        {
            let mut st = self.lock();
            if st.closed || st.msg == msg {
                return;
            }
            st.msg = msg;
            st.version += 1;
        }
        MUX_WAKE.notify_waiters();
    }

    /// End every watch of this feed (with status OK).
    pub fn close(&self) {
        self.lock().closed = true;
        MUX_WAKE.notify_waiters();
    }

    /// The newest message.
    pub fn current(&self) -> Vec<u8> {
        self.lock().msg.clone()
    }

    fn version(&self) -> (u64, bool) {
        let st = self.lock();
        (st.version, st.closed)
    }
}

/// What a call turns into.
#[derive(Debug)]
pub enum Call {
    /// A unary reply: the encoded response message, or an error status.
    Reply(Result<Vec<u8>, Status>),
    /// A server stream: send the feed's message now and on every change;
    /// end with OK when it closes.
    Watch(Arc<Feed>),
}

/// The service behind one socket.
pub trait Handler: Send + Sync + 'static {
    /// Handle a call to `path` (e.g. `/v1beta1.DevicePlugin/Allocate`)
    /// with the encoded request message `msg`. All watch calls on one
    /// connection share the first one's feed (one socket serves one
    /// resource, so they are the same anyway).
    fn call(&self, path: &str, msg: &[u8]) -> Call;
}

/// A protocol error that ends the connection with GOAWAY.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("HTTP/2 {code:?}: {why}")]
pub struct ConnError {
    /// Code sent in GOAWAY.
    pub code: H2Error,
    /// What went wrong.
    pub why: &'static str,
}

fn err(code: H2Error, why: &'static str) -> ConnError {
    ConnError { code, why }
}

/// One open stream.
#[derive(Debug)]
struct Stream {
    id: u32,
    /// The client may still send DATA.
    recv_open: bool,
    path: Box<str>,
    /// Request body received so far (freed once dispatched).
    body: Vec<u8>,
    /// How much DATA we may still send on it.
    send_window: i64,
    /// Response DATA payload (gRPC framed) not yet sent past `sent`.
    out: Vec<u8>,
    sent: usize,
    /// A watch stream: send the newest value whenever `dirty`.
    watching: bool,
    dirty: bool,
    /// Trailers to send once `out` is drained; then the stream is done.
    end: Option<Status>,
}

/// Header block being assembled from HEADERS + CONTINUATION.
#[derive(Debug)]
struct Pending {
    stream: u32,
    end_stream: bool,
    block: Vec<u8>,
}

/// One connection's state; I/O is done by the [`Mux`].
struct Conn<H: Handler> {
    handler: Arc<H>,
    hpack: Decoder<'static>,
    /// Bytes of an incomplete frame (empty while idle).
    inbuf: Vec<u8>,
    /// Bytes to write (freed once written).
    out: Vec<u8>,
    preface_seen: bool,
    settings_seen: bool,
    streams: Vec<Stream>,
    continuation: Option<Pending>,
    last_stream: u32,
    conn_send_window: i64,
    conn_recv_window: i64,
    peer_initial_window: i64,
    peer_max_frame: usize,
    /// The watched feed and the version last seen.
    watch: Option<(Arc<Feed>, u64)>,
    /// GOAWAY sent: no new streams.
    goaway_sent: bool,
    /// A connection error was sent: close once `out` is written.
    fatal: bool,
}

impl<H: Handler> Conn<H> {
    fn new(handler: Arc<H>) -> Self {
        let mut c = Self {
            handler,
            hpack: Decoder::new(),
            inbuf: Vec::new(),
            out: Vec::new(),
            preface_seen: false,
            settings_seen: false,
            streams: Vec::new(),
            continuation: None,
            last_stream: 0,
            conn_send_window: DEFAULT_WINDOW,
            conn_recv_window: DEFAULT_WINDOW,
            peer_initial_window: DEFAULT_WINDOW,
            peer_max_frame: MAX_FRAME,
            watch: None,
            goaway_sent: false,
            fatal: false,
        };
        // Our SETTINGS. A zero HPACK table: the client then stores no
        // headers for us to mirror, so the decoder's table stays empty.
        let mut p = Vec::with_capacity(18);
        for (id, v) in [
            (SETTINGS_HEADER_TABLE_SIZE, 0u32),
            (SETTINGS_MAX_CONCURRENT_STREAMS, MAX_STREAMS as u32),
            (SETTINGS_MAX_HEADER_LIST_SIZE, MAX_HEADER_BLOCK as u32),
        ] {
            p.extend_from_slice(&id.to_be_bytes());
            p.extend_from_slice(&v.to_be_bytes());
        }
        c.frame(SETTINGS, 0, 0, &p);
        c
    }

    fn frame(&mut self, ty: u8, flags: u8, stream: u32, payload: &[u8]) {
        put_frame(&mut self.out, ty, flags, stream, payload);
    }

    fn rst(&mut self, stream: u32, code: H2Error) {
        self.frame(RST_STREAM, 0, stream, &(code as u32).to_be_bytes());
    }

    fn goaway(&mut self, code: H2Error) {
        let mut p = [0u8; 8];
        p[..4].copy_from_slice(&self.last_stream.to_be_bytes());
        p[4..].copy_from_slice(&(code as u32).to_be_bytes());
        self.frame(GOAWAY, 0, 0, &p);
        self.goaway_sent = true;
    }

    /// Take `data` from the socket: handle every complete frame, keep the
    /// rest. A connection error queues GOAWAY and marks the connection
    /// fatal.
    fn feed(&mut self, data: &[u8]) {
        if self.fatal {
            return;
        }
        let result = if self.inbuf.is_empty() {
            self.process(data).map(|used| {
                if used < data.len() {
                    self.inbuf.extend_from_slice(&data[used..]);
                }
            })
        } else {
            let mut buf = std::mem::take(&mut self.inbuf);
            buf.extend_from_slice(data);
            self.process(&buf).map(|used| {
                buf.drain(..used);
                if !buf.is_empty() {
                    self.inbuf = buf;
                }
            })
        };
        if let Err(e) = result {
            tracing::debug!(error = %e, "closing connection");
            self.goaway(e.code);
            self.fatal = true;
            self.inbuf = Vec::new();
        }
    }

    /// Handle the complete frames at the start of `buf`; returns the bytes
    /// used.
    fn process(&mut self, buf: &[u8]) -> Result<usize, ConnError> {
        let mut pos = 0;
        if !self.preface_seen {
            let n = buf.len().min(PREFACE.len());
            if buf[..n] != PREFACE[..n] {
                return Err(err(H2Error::Protocol, "not an HTTP/2 client preface"));
            }
            if n < PREFACE.len() {
                return Ok(0);
            }
            self.preface_seen = true;
            pos = PREFACE.len();
        }
        while buf.len() - pos >= FRAME_HEADER {
            let h = &buf[pos..pos + FRAME_HEADER];
            let len = usize::from(h[0]) << 16 | usize::from(h[1]) << 8 | usize::from(h[2]);
            if len > MAX_FRAME {
                return Err(err(
                    H2Error::FrameSize,
                    "frame larger than SETTINGS_MAX_FRAME_SIZE",
                ));
            }
            if buf.len() - pos - FRAME_HEADER < len {
                break;
            }
            let (ty, flags) = (h[3], h[4]);
            let stream = u32::from_be_bytes([h[5], h[6], h[7], h[8]]) & 0x7fff_ffff;
            let payload = &buf[pos + FRAME_HEADER..pos + FRAME_HEADER + len];
            pos += FRAME_HEADER + len;
            self.on_frame(ty, flags, stream, payload)?;
            if self.fatal {
                break;
            }
        }
        Ok(pos)
    }

    fn on_frame(&mut self, ty: u8, flags: u8, sid: u32, p: &[u8]) -> Result<(), ConnError> {
        if !self.settings_seen {
            if ty != SETTINGS || flags & ACK != 0 {
                return Err(err(H2Error::Protocol, "first frame is not SETTINGS"));
            }
            self.settings_seen = true;
        }
        if let Some(pending) = &self.continuation
            && (ty != CONTINUATION || sid != pending.stream)
        {
            return Err(err(H2Error::Protocol, "header block interrupted"));
        }
        match ty {
            DATA => self.on_data(flags, sid, p),
            HEADERS => self.on_headers(flags, sid, p),
            CONTINUATION => self.on_continuation(flags, sid, p),
            PRIORITY => {
                if sid == 0 {
                    return Err(err(H2Error::Protocol, "PRIORITY on stream 0"));
                }
                if p.len() != 5 {
                    self.rst(sid, H2Error::FrameSize);
                }
                Ok(())
            }
            RST_STREAM => {
                if sid == 0 {
                    return Err(err(H2Error::Protocol, "RST_STREAM on stream 0"));
                }
                if p.len() != 4 {
                    return Err(err(H2Error::FrameSize, "RST_STREAM length"));
                }
                if sid > self.last_stream {
                    return Err(err(H2Error::Protocol, "RST_STREAM on an idle stream"));
                }
                self.streams.retain(|s| s.id != sid);
                Ok(())
            }
            SETTINGS => self.on_settings(flags, sid, p),
            PUSH_PROMISE => Err(err(H2Error::Protocol, "PUSH_PROMISE from a client")),
            PING => {
                if sid != 0 {
                    return Err(err(H2Error::Protocol, "PING on a stream"));
                }
                if p.len() != 8 {
                    return Err(err(H2Error::FrameSize, "PING length"));
                }
                if flags & ACK == 0 {
                    self.frame(PING, ACK, 0, p);
                }
                Ok(())
            }
            GOAWAY => {
                if sid != 0 {
                    return Err(err(H2Error::Protocol, "GOAWAY on a stream"));
                }
                // The client will close once its calls are done; keep
                // serving them.
                Ok(())
            }
            WINDOW_UPDATE => self.on_window_update(sid, p),
            // Unknown frame types are ignored (RFC 9113 §4.1).
            _ => Ok(()),
        }
    }

    fn on_settings(&mut self, flags: u8, sid: u32, p: &[u8]) -> Result<(), ConnError> {
        if sid != 0 {
            return Err(err(H2Error::Protocol, "SETTINGS on a stream"));
        }
        if flags & ACK != 0 {
            return if p.is_empty() {
                Ok(())
            } else {
                Err(err(H2Error::FrameSize, "SETTINGS ACK with a payload"))
            };
        }
        if !p.len().is_multiple_of(6) {
            return Err(err(H2Error::FrameSize, "SETTINGS length"));
        }
        for s in p.chunks_exact(6) {
            let id = u16::from_be_bytes([s[0], s[1]]);
            let v = u32::from_be_bytes([s[2], s[3], s[4], s[5]]);
            match id {
                SETTINGS_ENABLE_PUSH if v > 1 => {
                    return Err(err(H2Error::Protocol, "SETTINGS_ENABLE_PUSH not 0 or 1"));
                }
                SETTINGS_INITIAL_WINDOW_SIZE => {
                    let v = i64::from(v);
                    if v > MAX_WINDOW {
                        return Err(err(
                            H2Error::FlowControl,
                            "SETTINGS_INITIAL_WINDOW_SIZE too large",
                        ));
                    }
                    let delta = v - self.peer_initial_window;
                    self.peer_initial_window = v;
                    for st in &mut self.streams {
                        st.send_window += delta;
                        if st.send_window > MAX_WINDOW {
                            return Err(err(H2Error::FlowControl, "stream window overflow"));
                        }
                    }
                }
                SETTINGS_MAX_FRAME_SIZE => {
                    if !(16_384..=16_777_215).contains(&v) {
                        return Err(err(
                            H2Error::Protocol,
                            "SETTINGS_MAX_FRAME_SIZE out of range",
                        ));
                    }
                    self.peer_max_frame = v as usize;
                }
                // The peer's table size, stream and header-list limits
                // concern what we send: we never index, open streams or
                // send big header blocks.
                _ => {}
            }
        }
        self.frame(SETTINGS, ACK, 0, &[]);
        self.pump_all();
        Ok(())
    }

    fn on_window_update(&mut self, sid: u32, p: &[u8]) -> Result<(), ConnError> {
        if p.len() != 4 {
            return Err(err(H2Error::FrameSize, "WINDOW_UPDATE length"));
        }
        let inc = i64::from(u32::from_be_bytes([p[0], p[1], p[2], p[3]]) & 0x7fff_ffff);
        if sid == 0 {
            if inc == 0 {
                return Err(err(H2Error::Protocol, "WINDOW_UPDATE of 0"));
            }
            self.conn_send_window += inc;
            if self.conn_send_window > MAX_WINDOW {
                return Err(err(H2Error::FlowControl, "connection window overflow"));
            }
            self.pump_all();
            return Ok(());
        }
        let Some(i) = self.streams.iter().position(|s| s.id == sid) else {
            // A stream we already finished: allowed, ignored.
            return Ok(());
        };
        let s = &mut self.streams[i];
        s.send_window += inc;
        if inc == 0 || s.send_window > MAX_WINDOW {
            let code = if inc == 0 {
                H2Error::Protocol
            } else {
                H2Error::FlowControl
            };
            self.streams.remove(i);
            self.rst(sid, code);
            return Ok(());
        }
        self.pump(i);
        Ok(())
    }

    fn on_headers(&mut self, flags: u8, sid: u32, p: &[u8]) -> Result<(), ConnError> {
        if sid == 0 || sid.is_multiple_of(2) {
            return Err(err(H2Error::Protocol, "HEADERS on an invalid stream id"));
        }
        let mut p = strip_padding(flags, p)?;
        if flags & PRIORITY_FLAG != 0 {
            p = p
                .get(5..)
                .ok_or(err(H2Error::FrameSize, "HEADERS priority fields missing"))?;
        }
        let end_stream = flags & END_STREAM != 0;
        if flags & END_HEADERS != 0 {
            self.header_block(sid, p, end_stream)
        } else {
            self.continuation = Some(Pending {
                stream: sid,
                end_stream,
                block: p.to_vec(),
            });
            Ok(())
        }
    }

    fn on_continuation(&mut self, flags: u8, sid: u32, p: &[u8]) -> Result<(), ConnError> {
        let Some(mut pending) = self.continuation.take() else {
            return Err(err(H2Error::Protocol, "CONTINUATION without HEADERS"));
        };
        if pending.block.len() + p.len() > MAX_HEADER_BLOCK {
            return Err(err(H2Error::EnhanceYourCalm, "header block too large"));
        }
        pending.block.extend_from_slice(p);
        if flags & END_HEADERS != 0 {
            self.header_block(sid, &pending.block, pending.end_stream)
        } else {
            self.continuation = Some(pending);
            Ok(())
        }
    }

    /// A complete header block for stream `sid`.
    fn header_block(&mut self, sid: u32, block: &[u8], end_stream: bool) -> Result<(), ConnError> {
        // Always decode: the HPACK table must follow the client's.
        let mut method_post = false;
        let mut grpc_type = false;
        let mut path: Option<Box<str>> = None;
        let mut encoded = false;
        self.hpack
            .decode_with_cb(block, |name: Cow<'_, [u8]>, value: Cow<'_, [u8]>| {
                match &*name {
                    b":method" => method_post = &*value == b"POST",
                    b":path" => path = std::str::from_utf8(&value).ok().map(Box::from),
                    b"content-type" => grpc_type = value.starts_with(b"application/grpc"),
                    b"grpc-encoding" => encoded = &*value != b"identity",
                    // :authority is deliberately not looked at: see the
                    // module documentation.
                    _ => {}
                }
            })
            .map_err(|_| err(H2Error::Compression, "HPACK decoding failed"))?;
        // A block that starts by shrinking the table to 0 (our SETTINGS
        // asked for that) leaves it empty for good: start from a fresh
        // decoder, so the emptied table's buffer is freed too.
        if block.first() == Some(&0x20) && block.get(1).is_none_or(|b| b & 0xe0 != 0x20) {
            self.hpack = Decoder::new();
            self.hpack.set_max_table_size(0);
        }

        if let Some(i) = self.streams.iter().position(|s| s.id == sid) {
            // Trailers from the client: they must end the stream.
            if !end_stream || !self.streams[i].recv_open {
                self.streams.remove(i);
                self.rst(sid, H2Error::Protocol);
                return Ok(());
            }
            self.streams[i].recv_open = false;
            self.dispatch(i);
            return Ok(());
        }
        if sid <= self.last_stream {
            return Err(err(H2Error::StreamClosed, "HEADERS on a closed stream"));
        }
        self.last_stream = sid;
        if self.goaway_sent {
            // After our GOAWAY only streams it counted are served.
            return Ok(());
        }
        if self.streams.len() >= MAX_STREAMS {
            self.rst(sid, H2Error::RefusedStream);
            return Ok(());
        }
        if !method_post || !grpc_type {
            // Not gRPC: HTTP 415, as gRPC servers answer.
            self.headers_frame(sid, &hpack_status(b"415"), true);
            return Ok(());
        }
        let Some(path) = path else {
            self.rst(sid, H2Error::Protocol);
            return Ok(());
        };
        // One at a time is the kubelet's pattern: no spare slots (a first
        // push reserves four).
        self.streams.reserve_exact(1);
        self.streams.push(Stream {
            id: sid,
            recv_open: !end_stream,
            path,
            body: Vec::new(),
            send_window: self.peer_initial_window,
            out: Vec::new(),
            sent: 0,
            watching: false,
            dirty: false,
            end: None,
        });
        let i = self.streams.len() - 1;
        if encoded {
            self.finish_early(
                i,
                Status::new(Status::UNIMPLEMENTED, "compression is not supported"),
            );
        } else if end_stream {
            self.dispatch(i);
        }
        Ok(())
    }

    fn on_data(&mut self, flags: u8, sid: u32, p: &[u8]) -> Result<(), ConnError> {
        if sid == 0 {
            return Err(err(H2Error::Protocol, "DATA on stream 0"));
        }
        // Flow control counts the whole payload, padding included. We hand
        // the credit back at once: bodies are bounded by MAX_MESSAGE.
        let len = p.len() as i64;
        self.conn_recv_window -= len;
        if self.conn_recv_window < 0 {
            return Err(err(
                H2Error::FlowControl,
                "DATA beyond the connection window",
            ));
        }
        if len > 0 {
            self.frame(WINDOW_UPDATE, 0, 0, &(len as u32).to_be_bytes());
            self.conn_recv_window += len;
        }
        let data = strip_padding(flags, p)?;
        let end_stream = flags & END_STREAM != 0;
        let Some(i) = self.streams.iter().position(|s| s.id == sid) else {
            if sid > self.last_stream {
                return Err(err(H2Error::Protocol, "DATA on an idle stream"));
            }
            self.rst(sid, H2Error::StreamClosed);
            return Ok(());
        };
        if !self.streams[i].recv_open {
            self.streams.remove(i);
            self.rst(sid, H2Error::StreamClosed);
            return Ok(());
        }
        if self.streams[i].body.len() + data.len() > MAX_MESSAGE + 5 {
            self.finish_early(
                i,
                Status::new(
                    Status::RESOURCE_EXHAUSTED,
                    format!("request larger than {MAX_MESSAGE} bytes"),
                ),
            );
            return Ok(());
        }
        self.streams[i].body.extend_from_slice(data);
        if end_stream {
            self.streams[i].recv_open = false;
            self.dispatch(i);
        } else if len > 0 {
            self.frame(WINDOW_UPDATE, 0, sid, &(len as u32).to_be_bytes());
        }
        Ok(())
    }

    /// Answer stream `i` with `status` before its request is complete and
    /// reset it (the client need not send the rest).
    fn finish_early(&mut self, i: usize, status: Status) {
        let s = self.streams.remove(i);
        self.headers_frame(s.id, &hpack_trailers_only(&status), true);
        if s.recv_open {
            self.rst(s.id, H2Error::NoError);
        }
    }

    /// The request on stream `i` is complete: call the handler.
    fn dispatch(&mut self, i: usize) {
        let body = std::mem::take(&mut self.streams[i].body);
        let call = match grpc_message(&body) {
            Ok(msg) => self.handler.call(&self.streams[i].path, msg),
            Err(status) => Call::Reply(Err(status)),
        };
        let sid = self.streams[i].id;
        match call {
            Call::Reply(Err(status)) => {
                self.streams.remove(i);
                self.headers_frame(sid, &hpack_trailers_only(&status), true);
            }
            Call::Reply(Ok(msg)) => {
                self.headers_frame(sid, &hpack_response(), false);
                let s = &mut self.streams[i];
                s.out = grpc_frame(&msg);
                s.end = Some(Status::ok());
                self.pump(i);
            }
            Call::Watch(feed) => {
                self.headers_frame(sid, &hpack_response(), false);
                if self.watch.is_none() {
                    let (seen, _) = feed.version();
                    self.watch = Some((feed, seen));
                }
                let s = &mut self.streams[i];
                s.watching = true;
                s.dirty = true;
                self.pump(i);
            }
        }
    }

    fn headers_frame(&mut self, sid: u32, block: &[u8], end_stream: bool) {
        let flags = END_HEADERS | if end_stream { END_STREAM } else { 0 };
        self.frame(HEADERS, flags, sid, block);
    }

    /// Send what stream `i` may send within the windows; finish it when
    /// done. Returns true when the stream was removed.
    fn pump(&mut self, i: usize) -> bool {
        loop {
            let s = &mut self.streams[i];
            if s.watching && s.dirty && s.sent == 0 {
                // Not started yet and already stale: send the newest.
                s.out = Vec::new();
            }
            if s.sent < s.out.len() {
                let n = (s.out.len() - s.sent)
                    .min(usize::try_from(self.conn_send_window.min(s.send_window)).unwrap_or(0))
                    .min(self.peer_max_frame);
                if n == 0 {
                    return false;
                }
                let (sid, from) = (s.id, s.sent);
                s.sent += n;
                s.send_window -= n as i64;
                self.conn_send_window -= n as i64;
                let chunk = std::mem::take(&mut self.streams[i].out);
                self.frame(DATA, 0, sid, &chunk[from..from + n]);
                self.streams[i].out = chunk;
                continue;
            }
            s.out = Vec::new();
            s.sent = 0;
            if s.watching && s.dirty {
                s.dirty = false;
                if let Some((feed, _)) = &self.watch {
                    self.streams[i].out = grpc_frame(&feed.current());
                    continue;
                }
            }
            if let Some(status) = s.end.take() {
                let sid = s.id;
                self.streams.remove(i);
                self.headers_frame(sid, &hpack_trailers(&status), true);
                return true;
            }
            return false;
        }
    }

    fn pump_all(&mut self) {
        let mut i = 0;
        while i < self.streams.len() {
            if !self.pump(i) {
                i += 1;
            }
        }
    }

    fn watchers(&self) -> bool {
        self.streams.iter().any(|s| s.watching)
    }

    /// The watched value changed (`alive`) or its sender is gone.
    fn on_watch(&mut self, alive: bool) {
        if let Some((feed, seen)) = &mut self.watch {
            // Seen now: the dirty flags remember what is still to send.
            *seen = feed.version().0;
        }
        for s in self.streams.iter_mut().filter(|s| s.watching) {
            if alive {
                s.dirty = true;
            } else {
                s.watching = false;
                s.dirty = false;
                s.end = Some(Status::ok());
            }
        }
        if !alive {
            self.watch = None;
        }
        self.pump_all();
    }

    /// Graceful stop: end the watch streams, send GOAWAY.
    fn on_stop(&mut self) {
        self.on_watch(false);
        if !self.goaway_sent {
            self.goaway(H2Error::NoError);
        }
    }

    /// Nothing left to do: close.
    fn done(&self, stopping: bool) -> bool {
        self.out.is_empty() && (self.fatal || (stopping && self.streams.is_empty()))
    }
}

/// Append one frame to `out`.
fn put_frame(out: &mut Vec<u8>, ty: u8, flags: u8, stream: u32, payload: &[u8]) {
    let len = payload.len() as u32;
    out.extend_from_slice(&len.to_be_bytes()[1..]);
    out.push(ty);
    out.push(flags);
    out.extend_from_slice(&(stream & 0x7fff_ffff).to_be_bytes());
    out.extend_from_slice(payload);
}

fn strip_padding(flags: u8, p: &[u8]) -> Result<&[u8], ConnError> {
    if flags & PADDED == 0 {
        return Ok(p);
    }
    let (&pad, rest) = p
        .split_first()
        .ok_or(err(H2Error::FrameSize, "padded frame without a pad length"))?;
    rest.len()
        .checked_sub(usize::from(pad))
        .map(|n| &rest[..n])
        .ok_or(err(H2Error::Protocol, "padding longer than the payload"))
}

/// The one gRPC message of a unary request body.
fn grpc_message(body: &[u8]) -> Result<&[u8], Status> {
    let Some((head, msg)) = body.split_at_checked(5) else {
        return Err(Status::new(Status::INTERNAL, "missing request message"));
    };
    if head[0] != 0 {
        return Err(Status::new(
            Status::UNIMPLEMENTED,
            "compressed messages are not supported",
        ));
    }
    let len = u32::from_be_bytes([head[1], head[2], head[3], head[4]]) as usize;
    if len != msg.len() {
        return Err(Status::new(
            Status::INTERNAL,
            "request body is not exactly one message",
        ));
    }
    Ok(msg)
}

fn grpc_frame(msg: &[u8]) -> Vec<u8> {
    let mut f = Vec::with_capacity(5 + msg.len());
    f.push(0);
    f.extend_from_slice(&(msg.len() as u32).to_be_bytes());
    f.extend_from_slice(msg);
    f
}

/// HPACK integer with an `n`-bit prefix whose other bits are `first`.
fn hpack_int(out: &mut Vec<u8>, first: u8, n: u8, mut v: usize) {
    let max = (1usize << n) - 1;
    if v < max {
        out.push(first | v as u8);
        return;
    }
    out.push(first | max as u8);
    v -= max;
    while v >= 128 {
        out.push((v % 128) as u8 | 0x80);
        v /= 128;
    }
    out.push(v as u8);
}

fn hpack_string(out: &mut Vec<u8>, s: &[u8]) {
    hpack_int(out, 0, 7, s.len());
    out.extend_from_slice(s);
}

/// Literal header field without indexing, name by static-table index (we
/// never add to the client's table).
fn hpack_indexed_name(out: &mut Vec<u8>, index: usize, value: &[u8]) {
    hpack_int(out, 0, 4, index);
    hpack_string(out, value);
}

/// Literal header field without indexing, new name.
fn hpack_literal(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.push(0);
    hpack_string(out, name);
    hpack_string(out, value);
}

/// Static table: 8 is `:status: 200`, 31 is `content-type`, 8's name is
/// `:status`.
fn hpack_status(code: &[u8]) -> Vec<u8> {
    let mut b = Vec::new();
    hpack_indexed_name(&mut b, 8, code);
    b
}

fn hpack_response() -> Vec<u8> {
    let mut b = vec![0x88];
    hpack_indexed_name(&mut b, 31, b"application/grpc");
    b
}

fn hpack_trailers(status: &Status) -> Vec<u8> {
    let mut b = Vec::new();
    push_status(&mut b, status);
    b
}

fn hpack_trailers_only(status: &Status) -> Vec<u8> {
    let mut b = hpack_response();
    push_status(&mut b, status);
    b
}

fn push_status(b: &mut Vec<u8>, status: &Status) {
    hpack_literal(b, b"grpc-status", status.code.to_string().as_bytes());
    if !status.message.is_empty() {
        hpack_literal(b, b"grpc-message", &percent_encode(&status.message));
    }
}

/// `grpc-message` encoding: printable ASCII except `%` as is, the rest
/// as `%XX`; at most 1 KiB of message.
fn percent_encode(s: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(s.len());
    for &b in s.as_bytes().iter().take(1024) {
        if (0x20..=0x7e).contains(&b) && b != b'%' {
            out.push(b);
        } else {
            out.extend_from_slice(format!("%{b:02X}").as_bytes());
        }
    }
    out
}

/// Why a client call failed.
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    /// Connecting or talking to the socket failed.
    #[error("{0}")]
    Io(#[from] io::Error),
    /// The server broke the protocol or closed early.
    #[error("{0}")]
    Protocol(&'static str),
    /// The server answered with an HTTP status other than 200 (not gRPC).
    #[error("HTTP status {0}")]
    Http(String),
    /// A gRPC error status.
    #[error("gRPC status {}: {}", .0.code, .0.message)]
    Status(Status),
}

/// One unary gRPC call over a new connection to the unix socket `socket`
/// (HTTP/2 with prior knowledge, as grpc-go and tonic do): send `msg` to
/// `path`, return the response message. The connection is closed after.
/// Used for the kubelet's Register, once per resource and kubelet start:
/// a client stack kept around for it would cost more than it saves.
pub async fn call_unix(
    socket: &std::path::Path,
    path: &str,
    msg: &[u8],
) -> Result<Vec<u8>, CallError> {
    let io = UnixStream::connect(socket).await?;
    let mut out = PREFACE.to_vec();
    let mut settings = Vec::with_capacity(12);
    for (id, v) in [
        (SETTINGS_HEADER_TABLE_SIZE, 0u32),
        (SETTINGS_ENABLE_PUSH, 0),
    ] {
        settings.extend_from_slice(&id.to_be_bytes());
        settings.extend_from_slice(&v.to_be_bytes());
    }
    put_frame(&mut out, SETTINGS, 0, 0, &settings);
    // Static table: 3 `:method: POST`, 6 `:scheme: http`, names 4 `:path`,
    // 1 `:authority`, 31 `content-type`, 58 `user-agent`.
    let mut h = vec![0x83, 0x86];
    hpack_indexed_name(&mut h, 4, path.as_bytes());
    hpack_indexed_name(&mut h, 1, b"localhost");
    hpack_indexed_name(&mut h, 31, b"application/grpc");
    hpack_literal(&mut h, b"te", b"trailers");
    hpack_indexed_name(
        &mut h,
        58,
        concat!("smarter-device-manager/", env!("CARGO_PKG_VERSION")).as_bytes(),
    );
    put_frame(&mut out, HEADERS, END_HEADERS, 1, &h);
    let body = grpc_frame(msg);
    if body.len() as i64 > DEFAULT_WINDOW {
        return Err(CallError::Protocol(
            "request larger than the initial window",
        ));
    }
    let mut chunks = body.chunks(MAX_FRAME).peekable();
    while let Some(c) = chunks.next() {
        let flags = if chunks.peek().is_none() {
            END_STREAM
        } else {
            0
        };
        put_frame(&mut out, DATA, flags, 1, c);
    }
    write_all(&io, &out).await?;

    let mut reply = Reply::default();
    let mut inbuf: Vec<u8> = Vec::new();
    loop {
        io.readable().await?;
        match read_into(&io, &mut inbuf) {
            Ok(0) => {
                return Err(CallError::Protocol("connection closed before the reply"));
            }
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            Err(e) => return Err(e.into()),
        }
        let mut answer = Vec::new();
        let used = reply.process(&inbuf, &mut answer)?;
        inbuf.drain(..used);
        if !answer.is_empty() {
            write_all(&io, &answer).await?;
        }
        if reply.done {
            break;
        }
    }
    // Polite close: GOAWAY, then drop the socket.
    let mut bye = Vec::new();
    put_frame(&mut bye, GOAWAY, 0, 0, &[0; 8]);
    let _ = io.try_write(&bye);
    reply.result()
}

/// The client side of one call's reply (stream 1).
#[derive(Default)]
struct Reply {
    hpack: Decoder<'static>,
    body: Vec<u8>,
    http_status: Option<String>,
    grpc_status: Option<u32>,
    grpc_message: String,
    block: Option<Vec<u8>>,
    block_ends: bool,
    done: bool,
}

impl Reply {
    /// Handle the complete frames in `buf`, queueing ACKs in `answer`;
    /// returns the bytes used.
    fn process(&mut self, buf: &[u8], answer: &mut Vec<u8>) -> Result<usize, CallError> {
        let mut pos = 0;
        while buf.len() - pos >= FRAME_HEADER && !self.done {
            let hd = &buf[pos..pos + FRAME_HEADER];
            let len = usize::from(hd[0]) << 16 | usize::from(hd[1]) << 8 | usize::from(hd[2]);
            if len > MAX_FRAME {
                return Err(CallError::Protocol(
                    "frame larger than SETTINGS_MAX_FRAME_SIZE",
                ));
            }
            if buf.len() - pos - FRAME_HEADER < len {
                break;
            }
            let (ty, flags) = (hd[3], hd[4]);
            let sid = u32::from_be_bytes([hd[5], hd[6], hd[7], hd[8]]) & 0x7fff_ffff;
            let p = &buf[pos + FRAME_HEADER..pos + FRAME_HEADER + len];
            pos += FRAME_HEADER + len;
            self.frame(ty, flags, sid, p, answer)?;
        }
        Ok(pos)
    }

    fn frame(
        &mut self,
        ty: u8,
        flags: u8,
        sid: u32,
        p: &[u8],
        answer: &mut Vec<u8>,
    ) -> Result<(), CallError> {
        let bad = |e: ConnError| CallError::Protocol(e.why);
        match ty {
            SETTINGS if flags & ACK == 0 => put_frame(answer, SETTINGS, ACK, 0, &[]),
            PING if flags & ACK == 0 => put_frame(answer, PING, ACK, 0, p),
            GOAWAY => {
                let last = p.get(..4).map_or(0, |b| {
                    u32::from_be_bytes([b[0], b[1], b[2], b[3]]) & 0x7fff_ffff
                });
                if last < 1 {
                    return Err(CallError::Protocol(
                        "server sent GOAWAY before taking the call",
                    ));
                }
            }
            RST_STREAM if sid == 1 => {
                return Err(CallError::Protocol("server reset the stream"));
            }
            HEADERS | CONTINUATION if sid == 1 => {
                let mut p = p;
                if ty == HEADERS {
                    p = strip_padding(flags, p).map_err(bad)?;
                    if flags & PRIORITY_FLAG != 0 {
                        p = p.get(5..).ok_or(CallError::Protocol("HEADERS too short"))?;
                    }
                    self.block_ends = flags & END_STREAM != 0;
                } else if self.block.is_none() {
                    return Err(CallError::Protocol("CONTINUATION without HEADERS"));
                }
                let b = self.block.get_or_insert_with(Vec::new);
                b.extend_from_slice(p);
                if b.len() > MAX_HEADER_BLOCK {
                    return Err(CallError::Protocol("header block too large"));
                }
                if flags & END_HEADERS != 0 {
                    let b = self.block.take().unwrap_or_default();
                    let (mut http, mut grpc, mut message) = (None, None, None);
                    self.hpack
                        .decode_with_cb(&b, |name, value| match &*name {
                            b":status" => {
                                http = Some(String::from_utf8_lossy(&value).into_owned());
                            }
                            b"grpc-status" => {
                                grpc = std::str::from_utf8(&value)
                                    .ok()
                                    .and_then(|v| v.parse().ok());
                            }
                            b"grpc-message" => message = Some(percent_decode(&value)),
                            _ => {}
                        })
                        .map_err(|_| CallError::Protocol("HPACK decoding failed"))?;
                    self.http_status = http.or(self.http_status.take());
                    self.grpc_status = grpc.or(self.grpc_status);
                    if let Some(m) = message {
                        self.grpc_message = m;
                    }
                    self.done |= self.block_ends;
                }
            }
            DATA if sid == 1 => {
                let d = strip_padding(flags, p).map_err(bad)?;
                if self.body.len() + d.len() > MAX_MESSAGE + 5 {
                    return Err(CallError::Protocol("reply too large"));
                }
                self.body.extend_from_slice(d);
                self.done |= flags & END_STREAM != 0;
            }
            _ => {}
        }
        Ok(())
    }

    fn result(self) -> Result<Vec<u8>, CallError> {
        match self.http_status.as_deref() {
            Some("200") => {}
            Some(other) => return Err(CallError::Http(other.to_string())),
            None => return Err(CallError::Protocol("reply without :status")),
        }
        match self.grpc_status {
            Some(0) => grpc_message(&self.body)
                .map(<[u8]>::to_vec)
                .map_err(|_| CallError::Protocol("reply is not one gRPC message")),
            Some(code) => Err(CallError::Status(Status::new(code, self.grpc_message))),
            None => Err(CallError::Protocol("reply without grpc-status")),
        }
    }
}

/// Read once through a stack buffer (not one kept in the future's state)
/// and append to `inbuf`.
fn read_into(io: &UnixStream, inbuf: &mut Vec<u8>) -> io::Result<usize> {
    let mut buf = [0u8; 4096];
    let n = io.try_read(&mut buf)?;
    inbuf.extend_from_slice(&buf[..n]);
    Ok(n)
}

async fn write_all(io: &UnixStream, mut b: &[u8]) -> io::Result<()> {
    while !b.is_empty() {
        io.writable().await?;
        match io.try_write(b) {
            Ok(n) => b = &b[n..],
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Undo `grpc-message` percent-encoding (invalid escapes are kept).
fn percent_decode(v: &[u8]) -> String {
    let mut out = Vec::with_capacity(v.len());
    let mut i = 0;
    while i < v.len() {
        if v[i] == b'%'
            && let Some(h) = v.get(i + 1..i + 3)
            && let Ok(h) = std::str::from_utf8(h)
            && let Ok(b) = u8::from_str_radix(h, 16)
        {
            out.push(b);
            i += 3;
            continue;
        }
        out.push(v[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Wakes every [`Mux`] when a [`Feed`] changes or a [`StopSignal`] fires;
/// each then looks at all its connections.
static MUX_WAKE: Notify = Notify::const_new();

enum MuxMsg<H: Handler> {
    Listen(MuxListener<H>),
    /// Boxed: the channel's blocks are sized for the largest message.
    Adopt(Box<MuxConn<H>>),
}

struct MuxListener<H> {
    fd: std::os::unix::net::UnixListener,
    /// In the epoll set for EPOLLIN (off for 100 ms after accept failed).
    armed: bool,
    handler: Arc<H>,
    stop: Arc<StopSignal>,
}

struct MuxConn<H: Handler> {
    io: std::os::unix::net::UnixStream,
    conn: Conn<H>,
    stop: Arc<StopSignal>,
    stopping: bool,
    /// The epoll events it is registered for now.
    events: u32,
}

/// Serves many listening sockets and their connections from ONE task,
/// with an epoll set of its own.
///
/// Why: the kubelet keeps a connection open to every resource's socket,
/// and the original's rules make one resource per device node. A task per
/// listener and per connection cost about 0.9 KiB each in task cells, and
/// a tokio registration costs 256 bytes per socket; here a connection
/// costs its [`Conn`] state (a few hundred bytes, no buffers while idle)
/// and a listener its socket. Only the epoll fd is registered with tokio;
/// when it is readable, `epoll_wait` names the sockets to drive (level
/// triggered), so a wake-up costs what the ready sockets need. A [`Feed`]
/// change or a stop signal looks at every connection.
#[derive(Debug)]
pub struct Mux<H: Handler> {
    tx: tokio::sync::mpsc::UnboundedSender<MuxMsg<H>>,
}

impl<H: Handler> std::fmt::Debug for MuxMsg<H> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            MuxMsg::Listen(l) => write!(f, "Listen({:?})", l.fd),
            MuxMsg::Adopt(_) => write!(f, "Adopt"),
        }
    }
}

impl<H: Handler> Mux<H> {
    /// Start the serving task on the current tokio runtime.
    pub fn start() -> io::Result<Self> {
        let poller = Epoll::new()?;
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(mux_task(rx, poller));
        Ok(Self { tx })
    }

    /// Serve `listener` (made non-blocking here) with `handler` until
    /// `stop` fires: then the listener is closed and its connections end.
    /// The listener and each connection hold a clone of `stop` until
    /// closed.
    pub fn listen(
        &self,
        listener: std::os::unix::net::UnixListener,
        handler: Arc<H>,
        stop: Arc<StopSignal>,
    ) -> io::Result<()> {
        listener.set_nonblocking(true)?;
        self.tx
            .send(MuxMsg::Listen(MuxListener {
                fd: listener,
                armed: true,
                handler,
                stop,
            }))
            .map_err(|_| io::Error::other("the connection task has ended"))
    }

    /// Serve one already connected stream (made non-blocking here), as if
    /// accepted on a listener.
    pub fn serve_stream(
        &self,
        io: std::os::unix::net::UnixStream,
        handler: Arc<H>,
        stop: Arc<StopSignal>,
    ) -> io::Result<()> {
        io.set_nonblocking(true)?;
        self.tx
            .send(MuxMsg::Adopt(Box::new(MuxConn::new(io, handler, stop))))
            .map_err(|_| io::Error::other("the connection task has ended"))
    }
}

/// An epoll set, itself watched by tokio.
struct Epoll {
    fd: tokio::io::unix::AsyncFd<std::os::fd::OwnedFd>,
}

impl Epoll {
    fn new() -> io::Result<Self> {
        // SAFETY: plain syscall; the result is checked.
        let raw = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
        if raw < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `raw` is a new fd that nothing else owns.
        let owned = unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(raw) };
        // SAFETY: the OwnedFd owns the epoll fd, and the AsyncFd owns the
        // OwnedFd: the fd is neither replaced nor closed while registered.
        let fd = unsafe {
            tokio::io::unix::AsyncFd::register_with_interest(owned, tokio::io::Interest::READABLE)
        }
        .map_err(io::Error::from)?;
        Ok(Self { fd })
    }

    fn ctl(
        &self,
        op: libc::c_int,
        fd: std::os::fd::RawFd,
        events: u32,
        slot: usize,
    ) -> io::Result<()> {
        let mut ev = libc::epoll_event {
            events,
            u64: slot as u64,
        };
        let epfd = std::os::fd::AsRawFd::as_raw_fd(self.fd.get_ref());
        // SAFETY: `ev` outlives the call; both fds are open (the caller
        // owns `fd`).
        let rc = unsafe { libc::epoll_ctl(epfd, op, fd, &mut ev) };
        if rc < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(())
        }
    }

    /// Slots with events now (none when the set is quiet).
    fn ready(&self, out: &mut Vec<usize>) -> io::Result<usize> {
        const BATCH: usize = 64;
        let mut evs = [libc::epoll_event { events: 0, u64: 0 }; BATCH];
        let epfd = std::os::fd::AsRawFd::as_raw_fd(self.fd.get_ref());
        // SAFETY: `evs` has room for BATCH events; timeout 0 never blocks.
        let n = unsafe { libc::epoll_wait(epfd, evs.as_mut_ptr(), BATCH as libc::c_int, 0) };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        let n = n as usize;
        out.extend(evs[..n].iter().map(|e| e.u64 as usize));
        Ok(n)
    }
}

enum MuxEntry<H: Handler> {
    Listener(MuxListener<H>),
    /// Boxed: a slot is as large as its largest variant, and there are as
    /// many listeners as connections.
    Conn(Box<MuxConn<H>>),
}

/// The mux's sockets: slots reused through a free list; a slot's index is
/// its epoll data.
struct Slab<H: Handler> {
    slots: Vec<Option<MuxEntry<H>>>,
    free: Vec<usize>,
    epoll: Epoll,
}

const CONN_READ: u32 = (libc::EPOLLIN | libc::EPOLLRDHUP) as u32;
const CONN_WRITE: u32 = libc::EPOLLOUT as u32;

impl<H: Handler> Slab<H> {
    fn insert(&mut self, entry: MuxEntry<H>) -> io::Result<usize> {
        let i = self.free.pop().unwrap_or(self.slots.len());
        let (fd, events) = match &entry {
            MuxEntry::Listener(l) => (std::os::fd::AsRawFd::as_raw_fd(&l.fd), libc::EPOLLIN as u32),
            MuxEntry::Conn(c) => (std::os::fd::AsRawFd::as_raw_fd(&c.io), c.events),
        };
        if let Err(e) = self.epoll.ctl(libc::EPOLL_CTL_ADD, fd, events, i) {
            self.free.push(i);
            return Err(e);
        }
        match self.slots.get_mut(i) {
            Some(s) => *s = Some(entry),
            None => self.slots.push(Some(entry)),
        }
        Ok(i)
    }

    fn remove(&mut self, i: usize) {
        if let Some(s) = self.slots.get_mut(i)
            && let Some(entry) = s.take()
        {
            let fd = match &entry {
                MuxEntry::Listener(l) => std::os::fd::AsRawFd::as_raw_fd(&l.fd),
                MuxEntry::Conn(c) => std::os::fd::AsRawFd::as_raw_fd(&c.io),
            };
            // Closing would remove it too; say so before the fd number can
            // be reused.
            let _ = self.epoll.ctl(libc::EPOLL_CTL_DEL, fd, 0, i);
            drop(entry);
            self.free.push(i);
        }
    }

    /// Make progress on slot `i`; new connections go to `accepted`.
    fn drive(&mut self, i: usize, accepted: &mut Vec<MuxConn<H>>) {
        let Some(Some(entry)) = self.slots.get_mut(i) else {
            return;
        };
        let keep = match entry {
            MuxEntry::Listener(l) => {
                let open = !l.stop.is_stopped();
                let fd = std::os::fd::AsRawFd::as_raw_fd(&l.fd);
                if open && !l.armed {
                    l.armed = self
                        .epoll
                        .ctl(libc::EPOLL_CTL_MOD, fd, libc::EPOLLIN as u32, i)
                        .is_ok();
                }
                if open && l.armed && accept_all(l, accepted).is_err() {
                    // Out of fds and the like. The listener would stay
                    // readable and spin the task: take it out of the set
                    // and look again in 100 ms.
                    l.armed = self.epoll.ctl(libc::EPOLL_CTL_MOD, fd, 0, i).is_err();
                    tokio::spawn(async {
                        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                        MUX_WAKE.notify_waiters();
                    });
                }
                open
            }
            MuxEntry::Conn(c) => {
                let keep = c.drive();
                let want = c.wanted_events();
                if keep && want != c.events {
                    let fd = std::os::fd::AsRawFd::as_raw_fd(&c.io);
                    match self.epoll.ctl(libc::EPOLL_CTL_MOD, fd, want, i) {
                        Ok(()) => {
                            if let Some(Some(MuxEntry::Conn(c))) = self.slots.get_mut(i) {
                                c.events = want;
                            }
                            true
                        }
                        Err(_) => false,
                    }
                } else {
                    keep
                }
            }
        };
        if !keep {
            self.remove(i);
        }
    }
}

async fn mux_task<H: Handler>(
    mut rx: tokio::sync::mpsc::UnboundedReceiver<MuxMsg<H>>,
    epoll: Epoll,
) {
    let mut slab = Slab {
        slots: Vec::new(),
        free: Vec::new(),
        epoll,
    };
    let mut wake = Box::pin(MUX_WAKE.notified());
    let mut adopted = Vec::new();
    std::future::poll_fn(|cx| {
        let mut todo = Vec::new();
        loop {
            match rx.poll_recv(cx) {
                Poll::Ready(Some(MuxMsg::Listen(l))) => match slab.insert(MuxEntry::Listener(l)) {
                    Ok(i) => todo.push(i),
                    Err(e) => tracing::warn!(error = %e, "cannot watch a plugin socket"),
                },
                Poll::Ready(Some(MuxMsg::Adopt(c))) => adopted.push(c),
                // Every sender is gone: the service has ended.
                Poll::Ready(None) => return Poll::Ready(()),
                Poll::Pending => break,
            }
        }
        for c in adopted.drain(..) {
            match slab.insert(MuxEntry::Conn(c)) {
                Ok(i) => todo.push(i),
                Err(e) => tracing::warn!(error = %e, "cannot watch a connection"),
            }
        }
        // A Feed changed or a stop fired: look at everything. Registered
        // again before looking, so a change after the look wakes us.
        let mut all = false;
        while wake.as_mut().poll(cx).is_ready() {
            wake.set(MUX_WAKE.notified());
            all = true;
        }
        // Sockets with events. Level-triggered: what is left unread is
        // reported again; once the set is quiet, tokio's readiness is
        // cleared and the next event wakes us. At most 32 rounds per poll,
        // then yield (and come back at once) so other tasks get a turn.
        let mut rounds = 0;
        loop {
            rounds += 1;
            if rounds > 32 {
                cx.waker().wake_by_ref();
                break;
            }
            match slab.epoll.fd.poll_read_ready(cx) {
                Poll::Ready(Ok(mut guard)) => match slab.epoll.ready(&mut todo) {
                    Ok(0) => {
                        // Poll again so that the next event wakes us.
                        guard.clear_ready();
                        continue;
                    }
                    Ok(_) => {
                        // Drive these first: the set may report them again.
                        drive_all(&mut slab, &mut todo, all);
                        all = false;
                        continue;
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "epoll_wait failed");
                        guard.clear_ready();
                        continue;
                    }
                },
                Poll::Ready(Err(e)) => tracing::warn!(error = %e, "epoll readiness failed"),
                Poll::Pending => {}
            }
            break;
        }
        drive_all(&mut slab, &mut todo, all);
        Poll::Pending
    })
    .await;
}

/// Drive the slots in `todo` (every slot when `all`), then the
/// connections they accepted.
fn drive_all<H: Handler>(slab: &mut Slab<H>, todo: &mut Vec<usize>, all: bool) {
    if all {
        *todo = (0..slab.slots.len()).collect();
    } else {
        todo.sort_unstable();
        todo.dedup();
    }
    let mut accepted = Vec::new();
    for i in todo.drain(..) {
        slab.drive(i, &mut accepted);
    }
    // New connections: a first drive sends our SETTINGS.
    while let Some(c) = accepted.pop() {
        match slab.insert(MuxEntry::Conn(Box::new(c))) {
            Ok(i) => slab.drive(i, &mut accepted),
            Err(e) => tracing::warn!(error = %e, "cannot watch a connection"),
        }
    }
}

/// Accept every pending connection on `l`; Err when accepting failed
/// (other than "no more for now").
fn accept_all<H: Handler>(l: &MuxListener<H>, conns: &mut Vec<MuxConn<H>>) -> Result<(), ()> {
    loop {
        match l.fd.accept() {
            Ok((io, _)) => {
                if let Err(e) = io.set_nonblocking(true) {
                    tracing::warn!(error = %e, "cannot serve an accepted connection");
                    continue;
                }
                conns.push(MuxConn::new(
                    io,
                    Arc::clone(&l.handler),
                    Arc::clone(&l.stop),
                ));
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => {
                tracing::warn!(error = %e, "accept failed");
                return Err(());
            }
        }
    }
}

impl<H: Handler> MuxConn<H> {
    fn new(io: std::os::unix::net::UnixStream, handler: Arc<H>, stop: Arc<StopSignal>) -> Self {
        Self {
            io,
            conn: Conn::new(handler),
            stop,
            stopping: false,
            events: CONN_READ,
        }
    }

    /// Make all the progress possible without blocking; false when the
    /// connection is done.
    fn drive(&mut self) -> bool {
        loop {
            if !self.stopping && self.stop.is_stopped() {
                self.stopping = true;
                self.conn.on_stop();
            }
            if self.conn.watchers()
                && let Some((feed, seen)) = &self.conn.watch
            {
                match feed.version() {
                    (_, true) => self.conn.on_watch(false),
                    (v, false) if v != *seen => self.conn.on_watch(true),
                    _ => {}
                }
            }
            if write_std(&self.io, &mut self.conn).is_err() {
                return false;
            }
            if self.conn.done(self.stopping) {
                return false;
            }
            if !self.wants_read() {
                return true;
            }
            match read_std(&self.io, &mut self.conn) {
                Ok(0) => return false,
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return true,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => return false,
            }
        }
    }

    fn wants_read(&self) -> bool {
        self.conn.out.len() < OUT_HIGH_WATER && !self.conn.fatal
    }

    /// Read while there is room for output; write while output waits.
    fn wanted_events(&self) -> u32 {
        let mut e = 0;
        if self.wants_read() {
            e |= CONN_READ;
        }
        if !self.conn.out.is_empty() {
            e |= CONN_WRITE;
        }
        e
    }
}

/// Read once into a stack buffer and feed the connection. Ok(0) is EOF.
fn read_std<H: Handler>(io: &std::os::unix::net::UnixStream, c: &mut Conn<H>) -> io::Result<usize> {
    let mut buf = [0u8; 8192];
    let n = std::io::Read::read(&mut &*io, &mut buf)?;
    if n > 0 {
        c.feed(&buf[..n]);
    }
    Ok(n)
}

/// Write what the socket takes; free the buffer once empty.
fn write_std<H: Handler>(io: &std::os::unix::net::UnixStream, c: &mut Conn<H>) -> io::Result<()> {
    while !c.out.is_empty() {
        match std::io::Write::write(&mut &*io, &c.out) {
            Ok(n) => {
                c.out.drain(..n);
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    c.out = Vec::new();
    Ok(())
}

/// Tells a server's connections to stop; its strong count tells how many
/// are still open. Lighter than a watch channel, which counts with one
/// server per resource.
#[derive(Debug, Default)]
pub struct StopSignal {
    stopped: AtomicBool,
}

impl StopSignal {
    /// Stop every connection holding this signal.
    pub fn stop(&self) {
        self.stopped.store(true, Ordering::Release);
        MUX_WAKE.notify_waiters();
    }

    /// [`StopSignal::stop`] was called.
    pub fn is_stopped(&self) -> bool {
        self.stopped.load(Ordering::Acquire)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use loona_hpack::Encoder;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

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
        // Our SETTINGS, then GOAWAY PROTOCOL_ERROR.
        assert_eq!(all[9 + 18 + 3], GOAWAY, "{all:?}");
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
        assert_eq!(call_unix(&sock, "/t/Echo", &big).await.unwrap(), big);
        assert_eq!(call_unix(&sock, "/t/Echo", b"").await.unwrap(), b"");
        match call_unix(&sock, "/t/Fail", b"x").await {
            Err(CallError::Status(s)) => {
                assert_eq!(s, Status::new(9, "no such device: 100% gone\n"));
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            call_unix(&dir.path().join("none.sock"), "/t/Echo", b"").await,
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
            assert_eq!(call_unix(sock, "/t/Echo", b"hi").await.unwrap(), b"hi");
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
        assert!(call_unix(&socks[1], "/t/Echo", b"x").await.is_err());
        assert_eq!(call_unix(&socks[2], "/t/Echo", b"x").await.unwrap(), b"x");
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
            (b":path", b"/t/Echo"),
            (b"content-type", b"application/grpc"),
        ]);
        session.extend(raw(HEADERS, END_HEADERS, 1, &h));
        session.extend(raw(DATA, END_STREAM, 1, &grpc_frame(b"hello world")));
        let h = enc.encode([
            (&b":method"[..], &b"POST"[..]),
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
}
