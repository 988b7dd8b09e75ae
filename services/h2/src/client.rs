//! The client side: one unary call over a fresh connection, as the device
//! manager makes to the kubelet's Registration service.

use std::io;

use loona_hpack::Decoder;
use tokio::net::UnixStream;

use crate::frame::*;
use crate::grpc::{Status, grpc_frame, grpc_message, percent_decode};
use crate::hpack::{decoder, hpack_indexed_name, hpack_literal};

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
/// `user_agent` is sent as `user-agent`. Used for the kubelet's Register,
/// once per resource and kubelet start: a client stack kept around for it
/// would cost more than it saves.
pub async fn call_unix(
    socket: &std::path::Path,
    path: &str,
    msg: &[u8],
    user_agent: &str,
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
    hpack_indexed_name(&mut h, 58, user_agent.as_bytes());
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
pub(crate) struct Reply {
    hpack: Decoder<'static>,
    body: Vec<u8>,
    http_status: Option<String>,
    grpc_status: Option<u32>,
    grpc_message: String,
    block: Option<Vec<u8>>,
    block_ends: bool,
    done: bool,
}

impl Default for Reply {
    fn default() -> Self {
        Self {
            hpack: decoder(),
            body: Vec::new(),
            http_status: None,
            grpc_status: None,
            grpc_message: String::new(),
            block: None,
            block_ends: false,
            done: false,
        }
    }
}

impl Reply {
    /// Handle the complete frames in `buf`, queueing ACKs in `answer`;
    /// returns the bytes used.
    pub(crate) fn process(&mut self, buf: &[u8], answer: &mut Vec<u8>) -> Result<usize, CallError> {
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

    pub(crate) fn frame(
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

    pub(crate) fn result(self) -> Result<Vec<u8>, CallError> {
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
pub(crate) fn read_into(io: &UnixStream, inbuf: &mut Vec<u8>) -> io::Result<usize> {
    let mut buf = [0u8; 4096];
    let n = io.try_read(&mut buf)?;
    inbuf.extend_from_slice(&buf[..n]);
    Ok(n)
}

pub(crate) async fn write_all(io: &UnixStream, mut b: &[u8]) -> io::Result<()> {
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
