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
}

/// Header block being assembled from HEADERS + CONTINUATION.
#[derive(Debug)]
pub(crate) struct Pending {
    stream: u32,
    end_stream: bool,
    block: Vec<u8>,
}

/// One connection's state; I/O is done by the [`Mux`].
pub(crate) struct Conn<H: Handler> {
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

impl<H: Handler> Conn<H> {
    pub(crate) fn new(handler: Arc<H>) -> Self {
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
    pub(crate) fn feed(&mut self, data: &[u8]) {
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

    pub(crate) fn on_headers(&mut self, flags: u8, sid: u32, p: &[u8]) -> Result<(), ConnError> {
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
        pending.block.extend_from_slice(p);
        if flags & END_HEADERS != 0 {
            self.header_block(sid, &pending.block, pending.end_stream)
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
    ) -> Result<(), ConnError> {
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

    pub(crate) fn on_data(&mut self, flags: u8, sid: u32, p: &[u8]) -> Result<(), ConnError> {
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
    pub(crate) fn finish_early(&mut self, i: usize, status: Status) {
        let s = self.streams.remove(i);
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
