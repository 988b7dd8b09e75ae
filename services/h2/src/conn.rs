//! One server connection's state machine (RFC 9113 §5, §6): bytes in,
//! frames handled, bytes out. No I/O here: the [`crate::Mux`] reads into
//! [`Conn::feed`] and writes what [`Conn::out`] holds, so tests and the
//! fuzz target drive it directly.

use std::borrow::Cow;
use std::sync::Arc;

use loona_hpack::Decoder;

use crate::frame::*;
use crate::grpc::{
    Status, grpc_frame, grpc_message, hpack_response, hpack_status, hpack_trailers,
    hpack_trailers_only,
};
use crate::hpack::decoder;
use crate::service::{Call, Feed, Handler};

/// One open stream.
#[derive(Debug)]
pub(crate) struct Stream {
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
    /// The request's `content-length`, checked against its DATA (RFC 9113
    /// §8.1.1).
    content_length: Option<u64>,
}

/// Header block being assembled from HEADERS + CONTINUATION.
#[derive(Debug)]
pub(crate) struct Pending {
    stream: u32,
    end_stream: bool,
    /// The HEADERS frame made the stream depend on itself (RFC 9113
    /// §5.3.1): reset once the block is decoded.
    self_dependent: bool,
    block: Vec<u8>,
}

/// One server connection's state machine, without I/O: give it what the
/// socket read with [`Conn::feed`], write what [`Conn::take_output`]
/// returns, close when [`Conn::is_closed`]. The [`crate::Mux`] drives one
/// per accepted connection; tests and the fuzz target drive it directly.
pub struct Conn<H: Handler> {
    pub(crate) handler: Arc<H>,
    pub(crate) hpack: Decoder<'static>,
    /// Bytes of an incomplete frame (empty while idle).
    pub(crate) inbuf: Vec<u8>,
    /// Bytes to write (freed once written).
    pub(crate) out: Vec<u8>,
    pub(crate) preface_seen: bool,
    pub(crate) settings_seen: bool,
    pub(crate) streams: Vec<Stream>,
    pub(crate) continuation: Option<Pending>,
    pub(crate) last_stream: u32,
    /// The last few stream ids opened, newest first: HEADERS on one of
    /// them is on a closed stream (STREAM_CLOSED), on any other id not
    /// above `last_stream` an unexpected id (PROTOCOL_ERROR, RFC 9113
    /// §5.1.1).
    pub(crate) recent: [u32; 4],
    pub(crate) conn_send_window: i64,
    pub(crate) conn_recv_window: i64,
    pub(crate) peer_initial_window: i64,
    pub(crate) peer_max_frame: usize,
    /// The watched feed and the version last seen.
    pub(crate) watch: Option<(Arc<Feed>, u64)>,
    /// GOAWAY sent: no new streams.
    pub(crate) goaway_sent: bool,
    /// A connection error was sent: close once `out` is written.
    pub(crate) fatal: bool,
}

impl<H: Handler> std::fmt::Debug for Conn<H> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Conn")
            .field("streams", &self.streams.len())
            .field("last_stream", &self.last_stream)
            .field("buffered_input", &self.buffered_input())
            .field("out", &self.out.len())
            .field("fatal", &self.fatal)
            .finish_non_exhaustive()
    }
}

impl<H: Handler> Conn<H> {
    /// A new server connection for `handler`; our SETTINGS are queued.
    pub fn new(handler: Arc<H>) -> Self {
        let mut c = Self {
            handler,
            hpack: decoder(),
            inbuf: Vec::new(),
            out: Vec::new(),
            preface_seen: false,
            settings_seen: false,
            streams: Vec::new(),
            continuation: None,
            last_stream: 0,
            recent: [0; 4],
            conn_send_window: DEFAULT_WINDOW,
            conn_recv_window: RECV_WINDOW as i64,
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
        // The connection window starts at 65,535 whatever SETTINGS say
        // (RFC 9113 §6.9.2): open it to RECV_WINDOW, the bound on what
        // this connection may make us buffer.
        let grow = (RECV_WINDOW as i64 - DEFAULT_WINDOW) as u32;
        c.frame(WINDOW_UPDATE, 0, 0, &grow.to_be_bytes());
        c
    }

    /// Bytes to write to the peer (taken: the connection forgets them).
    pub fn take_output(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.out)
    }

    /// A connection error was queued (GOAWAY): close once the output is
    /// written. Input is ignored from then on.
    pub fn is_closed(&self) -> bool {
        self.fatal
    }

    /// What the peer's input holds in memory now: the incomplete frame,
    /// the header block being assembled and the request bodies (their
    /// allocations, not just their lengths). Never above
    /// [`crate::MAX_BUFFERED_INPUT`].
    pub fn buffered_input(&self) -> usize {
        self.inbuf.capacity()
            + self.continuation.as_ref().map_or(0, |p| p.block.capacity())
            + self
                .streams
                .iter()
                .map(|s| s.body.capacity())
                .sum::<usize>()
    }

    /// Hand `n` bytes of connection receive window back to the peer.
    fn release(&mut self, n: usize) {
        if n > 0 {
            self.conn_recv_window += n as i64;
            self.frame(WINDOW_UPDATE, 0, 0, &(n as u32).to_be_bytes());
        }
    }

    /// Forget stream `i`, and hand back the window its request body held.
    fn remove_stream(&mut self, i: usize) -> Stream {
        let s = self.streams.remove(i);
        self.release(s.body.len());
        s
    }

    pub(crate) fn frame(&mut self, ty: u8, flags: u8, stream: u32, payload: &[u8]) {
        put_frame(&mut self.out, ty, flags, stream, payload);
    }

    pub(crate) fn rst(&mut self, stream: u32, code: H2Error) {
        self.frame(RST_STREAM, 0, stream, &(code as u32).to_be_bytes());
    }

    pub(crate) fn goaway(&mut self, code: H2Error) {
        let mut p = [0u8; 8];
        p[..4].copy_from_slice(&self.last_stream.to_be_bytes());
        p[4..].copy_from_slice(&(code as u32).to_be_bytes());
        self.frame(GOAWAY, 0, 0, &p);
        self.goaway_sent = true;
    }

    /// Take `data` from the socket: handle every complete frame, keep the
    /// rest. A connection error queues GOAWAY and marks the connection
    /// fatal.
    pub fn feed(&mut self, data: &[u8]) {
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
                // A copy of exactly the rest: the concatenation may have
                // room for much more.
                if used < buf.len() {
                    self.inbuf = buf[used..].to_vec();
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
    pub(crate) fn process(&mut self, buf: &[u8]) -> Result<usize, ConnError> {
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

    pub(crate) fn on_frame(
        &mut self,
        ty: u8,
        flags: u8,
        sid: u32,
        p: &[u8],
    ) -> Result<(), ConnError> {
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
                } else if dependency(p) == sid {
                    // RFC 9113 §5.3.1: a stream cannot depend on itself.
                    if let Some(i) = self.streams.iter().position(|s| s.id == sid) {
                        self.remove_stream(i);
                    }
                    self.rst(sid, H2Error::Protocol);
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
                if let Some(i) = self.streams.iter().position(|s| s.id == sid) {
                    self.remove_stream(i);
                }
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

    pub(crate) fn on_settings(&mut self, flags: u8, sid: u32, p: &[u8]) -> Result<(), ConnError> {
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

    pub(crate) fn on_window_update(&mut self, sid: u32, p: &[u8]) -> Result<(), ConnError> {
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
            if sid > self.last_stream {
                // RFC 9113 §5.1: idle streams take only HEADERS and
                // PRIORITY.
                return Err(err(H2Error::Protocol, "WINDOW_UPDATE on an idle stream"));
            }
            // A stream we already finished: allowed, ignored (§6.9).
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
            self.remove_stream(i);
            self.rst(sid, code);
            return Ok(());
        }
        self.pump(i);
        Ok(())
    }

    pub(crate) fn on_headers(&mut self, flags: u8, sid: u32, p: &[u8]) -> Result<(), ConnError> {
        if sid == 0 || sid.is_multiple_of(2) {
            return Err(err(H2Error::Protocol, "HEADERS on an invalid stream id"));
        }
        let mut p = strip_padding(flags, p)?;
        let mut self_dependent = false;
        if flags & PRIORITY_FLAG != 0 {
            let fields = p
                .get(..5)
                .ok_or(err(H2Error::FrameSize, "HEADERS priority fields missing"))?;
            self_dependent = dependency(fields) == sid;
            p = &p[5..];
        }
        let end_stream = flags & END_STREAM != 0;
        if flags & END_HEADERS != 0 {
            self.header_block(sid, p, end_stream, self_dependent)
        } else {
            self.continuation = Some(Pending {
                stream: sid,
                end_stream,
                self_dependent,
                block: p.to_vec(),
            });
            Ok(())
        }
    }

    pub(crate) fn on_continuation(
        &mut self,
        flags: u8,
        sid: u32,
        p: &[u8],
    ) -> Result<(), ConnError> {
        let Some(mut pending) = self.continuation.take() else {
            return Err(err(H2Error::Protocol, "CONTINUATION without HEADERS"));
        };
        if pending.block.len() + p.len() > MAX_HEADER_BLOCK {
            return Err(err(H2Error::EnhanceYourCalm, "header block too large"));
        }
        // Exactly what is needed: MAX_BUFFERED_INPUT counts allocations.
        pending.block.reserve_exact(p.len());
        pending.block.extend_from_slice(p);
        if flags & END_HEADERS != 0 {
            self.header_block(
                sid,
                &pending.block,
                pending.end_stream,
                pending.self_dependent,
            )
        } else {
            self.continuation = Some(pending);
            Ok(())
        }
    }

    /// A complete header block for stream `sid`.
    pub(crate) fn header_block(
        &mut self,
        sid: u32,
        block: &[u8],
        end_stream: bool,
        self_dependent: bool,
    ) -> Result<(), ConnError> {
        let open = self.streams.iter().position(|s| s.id == sid);
        // Always decode, whatever becomes of the stream: the HPACK table
        // must follow the client's (RFC 9113 §4.3).
        let mut head = Head::new(open.is_some());
        self.hpack
            .decode_with_cb(block, |name: Cow<'_, [u8]>, value: Cow<'_, [u8]>| {
                head.field(&name, &value);
            })
            .map_err(|_| err(H2Error::Compression, "HPACK decoding failed"))?;
        // A block that starts by shrinking the table to 0 (our SETTINGS
        // asked for that) leaves it empty for good: start from a fresh
        // decoder, so the emptied table's buffer is freed too.
        if block.first() == Some(&0x20) && block.get(1).is_none_or(|b| b & 0xe0 != 0x20) {
            self.hpack = decoder();
            self.hpack.set_max_table_size(0);
        }

        if let Some(i) = open {
            if !self.streams[i].recv_open {
                // RFC 9113 §5.1: half-closed (remote) takes no HEADERS.
                self.remove_stream(i);
                self.rst(sid, H2Error::StreamClosed);
                return Ok(());
            }
            // Trailers: they must end the stream and carry no
            // pseudo-header (§8.1); a malformed message is a stream
            // error (§8.1.1).
            if !end_stream || self_dependent || head.malformed.is_some() {
                tracing::debug!(stream = sid, why = head.malformed, "malformed trailers");
                self.remove_stream(i);
                self.rst(sid, H2Error::Protocol);
                return Ok(());
            }
            if let Some(why) = self.streams[i].length_mismatch(0, true) {
                tracing::debug!(stream = sid, why, "malformed request");
                self.remove_stream(i);
                self.rst(sid, H2Error::Protocol);
                return Ok(());
            }
            self.streams[i].recv_open = false;
            self.dispatch(i);
            return Ok(());
        }
        if sid <= self.last_stream {
            // §5.1: a closed stream takes no HEADERS; §5.1.1: a new
            // stream's id must exceed every id before it.
            return Err(if self.recent.contains(&sid) {
                err(H2Error::StreamClosed, "HEADERS on a closed stream")
            } else {
                err(H2Error::Protocol, "stream id not above the last one")
            });
        }
        self.last_stream = sid;
        self.recent.copy_within(..3, 1);
        self.recent[0] = sid;
        if self.goaway_sent {
            // After our GOAWAY only streams it counted are served.
            return Ok(());
        }
        let head = head.finish();
        let malformed = head.malformed.or(
            if end_stream && head.content_length.is_some_and(|n| n > 0) {
                Some("content-length without DATA")
            } else {
                None
            },
        );
        if self_dependent || malformed.is_some() {
            // §5.3.1 and §8.1.1: stream errors.
            tracing::debug!(stream = sid, why = malformed, "malformed request");
            self.rst(sid, H2Error::Protocol);
            return Ok(());
        }
        if self.streams.len() >= MAX_STREAMS {
            self.rst(sid, H2Error::RefusedStream);
            return Ok(());
        }
        if !head.method_post || !head.grpc_type {
            // Not gRPC: HTTP 415, as gRPC servers answer.
            self.headers_frame(sid, &hpack_status(b"415"), true);
            return Ok(());
        }
        let Some(path) = head.path else {
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
            content_length: head.content_length,
        });
        let i = self.streams.len() - 1;
        if head.encoded {
            self.finish_early(
                i,
                Status::new(Status::UNIMPLEMENTED, "compression is not supported"),
            );
        } else if end_stream {
            self.dispatch(i);
        }
        Ok(())
    }

    pub(crate) fn on_data(&mut self, flags: u8, sid: u32, p: &[u8]) -> Result<(), ConnError> {
        if sid == 0 {
            return Err(err(H2Error::Protocol, "DATA on stream 0"));
        }
        // Flow control counts the whole payload, padding included (RFC
        // 9113 §6.9). What a request body keeps is handed back when the
        // body is freed; the rest at once.
        let len = p.len();
        self.conn_recv_window -= len as i64;
        if self.conn_recv_window < 0 {
            return Err(err(
                H2Error::FlowControl,
                "DATA beyond the connection window",
            ));
        }
        let data = strip_padding(flags, p)?;
        let end_stream = flags & END_STREAM != 0;
        let Some(i) = self.streams.iter().position(|s| s.id == sid) else {
            if sid > self.last_stream {
                return Err(err(H2Error::Protocol, "DATA on an idle stream"));
            }
            self.release(len);
            self.rst(sid, H2Error::StreamClosed);
            return Ok(());
        };
        self.release(len - data.len());
        if !self.streams[i].recv_open {
            self.release(data.len());
            self.remove_stream(i);
            self.rst(sid, H2Error::StreamClosed);
            return Ok(());
        }
        if let Some(why) = self.streams[i].length_mismatch(data.len(), end_stream) {
            // §8.1.1: DATA that disagrees with content-length is malformed.
            tracing::debug!(stream = sid, why, "malformed request");
            self.release(data.len());
            self.remove_stream(i);
            self.rst(sid, H2Error::Protocol);
            return Ok(());
        }
        if self.streams[i].body.len() + data.len() > MAX_MESSAGE + 5 {
            self.release(data.len());
            self.finish_early(
                i,
                Status::new(
                    Status::RESOURCE_EXHAUSTED,
                    format!("request larger than {MAX_MESSAGE} bytes"),
                ),
            );
            return Ok(());
        }
        // Exactly what is needed: MAX_BUFFERED_INPUT counts allocations,
        // and a body is normally one frame.
        let body = &mut self.streams[i].body;
        body.reserve_exact(data.len());
        body.extend_from_slice(data);
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
    pub(crate) fn finish_early(&mut self, i: usize, status: Status) {
        let s = self.remove_stream(i);
        self.headers_frame(s.id, &hpack_trailers_only(&status), true);
        if s.recv_open {
            self.rst(s.id, H2Error::NoError);
        }
    }

    /// The request on stream `i` is complete: call the handler.
    pub(crate) fn dispatch(&mut self, i: usize) {
        let body = std::mem::take(&mut self.streams[i].body);
        let call = match grpc_message(&body) {
            Ok(msg) => self.handler.call(&self.streams[i].path, msg),
            Err(status) => Call::Reply(Err(status)),
        };
        self.release(body.len());
        drop(body);
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

    pub(crate) fn headers_frame(&mut self, sid: u32, block: &[u8], end_stream: bool) {
        let flags = END_HEADERS | if end_stream { END_STREAM } else { 0 };
        self.frame(HEADERS, flags, sid, block);
    }

    /// Send what stream `i` may send within the windows; finish it when
    /// done. Returns true when the stream was removed.
    pub(crate) fn pump(&mut self, i: usize) -> bool {
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

    pub(crate) fn pump_all(&mut self) {
        let mut i = 0;
        while i < self.streams.len() {
            if !self.pump(i) {
                i += 1;
            }
        }
    }

    pub(crate) fn watchers(&self) -> bool {
        self.streams.iter().any(|s| s.watching)
    }

    /// The watched value changed (`alive`) or its sender is gone.
    pub(crate) fn on_watch(&mut self, alive: bool) {
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
    pub(crate) fn on_stop(&mut self) {
        self.on_watch(false);
        if !self.goaway_sent {
            self.goaway(H2Error::NoError);
        }
    }

    /// Nothing left to do: close.
    pub(crate) fn done(&self, stopping: bool) -> bool {
        self.out.is_empty() && (self.fatal || (stopping && self.streams.is_empty()))
    }
}

impl Stream {
    /// Why `n` more bytes of DATA (the last when `end`) disagree with the
    /// request's `content-length`, if they do (RFC 9113 §8.1.1).
    fn length_mismatch(&self, n: usize, end: bool) -> Option<&'static str> {
        let want = self.content_length?;
        let got = (self.body.len() + n) as u64;
        if got > want {
            Some("more DATA than content-length")
        } else if end && got != want {
            Some("less DATA than content-length")
        } else {
            None
        }
    }
}

/// The stream a PRIORITY frame or HEADERS priority fields depend on.
fn dependency(fields: &[u8]) -> u32 {
    fields.get(..4).map_or(0, |b| {
        u32::from_be_bytes([b[0], b[1], b[2], b[3]]) & 0x7fff_ffff
    })
}

/// What a request's header block says, checked field by field as it is
/// decoded against RFC 9113 §8.2 and §8.3. A malformed block is a stream
/// error of type PROTOCOL_ERROR (§8.1.1).
#[derive(Debug, Default)]
struct Head {
    /// A trailer block: no pseudo-header may appear.
    trailers: bool,
    /// A regular field was seen: no pseudo-header may follow (§8.3).
    regular: bool,
    method: u8,
    scheme: u8,
    path_count: u8,
    authority: u8,
    method_post: bool,
    connect: bool,
    grpc_type: bool,
    encoded: bool,
    path: Option<Box<str>>,
    content_length: Option<u64>,
    malformed: Option<&'static str>,
}

impl Head {
    fn new(trailers: bool) -> Self {
        Self {
            trailers,
            ..Self::default()
        }
    }

    fn bad(&mut self, why: &'static str) {
        self.malformed.get_or_insert(why);
    }

    fn field(&mut self, name: &[u8], value: &[u8]) {
        // §8.2.1: no NUL, CR or LF in a value, no leading or trailing
        // space or tab.
        if value.iter().any(|&b| matches!(b, 0 | b'\n' | b'\r'))
            || value
                .first()
                .into_iter()
                .chain(value.last())
                .any(|&b| b == b' ' || b == b'\t')
        {
            self.bad("invalid character in a field value");
        }
        if let Some(pseudo) = name.strip_prefix(b":") {
            if self.trailers {
                return self.bad("pseudo-header in trailers");
            }
            if self.regular {
                return self.bad("pseudo-header after a regular field");
            }
            let count = match pseudo {
                b"method" => {
                    self.method_post = value == b"POST";
                    self.connect = value == b"CONNECT";
                    &mut self.method
                }
                b"scheme" => &mut self.scheme,
                b"path" => {
                    if value.is_empty() {
                        self.bad("empty :path");
                    }
                    self.path = std::str::from_utf8(value).ok().map(Box::from);
                    &mut self.path_count
                }
                // :authority is deliberately not looked at beyond this:
                // see the crate documentation.
                b"authority" => &mut self.authority,
                // :status is a response's; others are undefined (§8.3).
                _ => return self.bad("unknown pseudo-header"),
            };
            *count += 1;
            if *count > 1 {
                self.bad("duplicate pseudo-header");
            }
            return;
        }
        self.regular = true;
        // §8.2.1: names are lowercase tokens; §8.2.2: no
        // connection-specific fields, and `te` only as "trailers".
        if name.is_empty()
            || name
                .iter()
                .any(|&b| b <= 0x20 || b.is_ascii_uppercase() || b >= 0x7f)
        {
            return self.bad("invalid field name");
        }
        match name {
            b"connection" | b"proxy-connection" | b"keep-alive" | b"transfer-encoding"
            | b"upgrade" => self.bad("connection-specific field"),
            b"te" if value != b"trailers" => self.bad("te other than trailers"),
            b"content-type" => self.grpc_type = value.starts_with(b"application/grpc"),
            b"grpc-encoding" => self.encoded = value != b"identity",
            b"content-length" => {
                let n = std::str::from_utf8(value)
                    .ok()
                    .and_then(|v| v.parse::<u64>().ok());
                match (n, self.content_length) {
                    (None, _) => self.bad("invalid content-length"),
                    (Some(n), Some(m)) if n != m => self.bad("conflicting content-length"),
                    (Some(n), _) => self.content_length = Some(n),
                }
            }
            _ => {}
        }
    }

    /// The request's pseudo-headers are all there (§8.3.1): `:method`,
    /// and `:scheme` and `:path` unless it is a CONNECT.
    fn finish(mut self) -> Self {
        if self.method == 0 {
            self.bad("no :method");
        } else if !self.connect && (self.scheme == 0 || self.path_count == 0) {
            self.bad("no :scheme or :path");
        }
        self
    }
}
