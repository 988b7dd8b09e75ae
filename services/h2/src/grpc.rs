//! gRPC over HTTP/2 (the "gRPC over HTTP2" protocol document): message
//! framing (a 5-byte prefix: compressed flag, length), statuses and their
//! percent-encoded messages, and the response and trailer header blocks.

use crate::hpack::{hpack_indexed_name, hpack_literal};

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

    pub(crate) fn ok() -> Self {
        Self::new(Self::OK, "")
    }
}

/// The one gRPC message of a unary request body.
pub(crate) fn grpc_message(body: &[u8]) -> Result<&[u8], Status> {
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

pub(crate) fn grpc_frame(msg: &[u8]) -> Vec<u8> {
    let mut f = Vec::with_capacity(5 + msg.len());
    f.push(0);
    f.extend_from_slice(&(msg.len() as u32).to_be_bytes());
    f.extend_from_slice(msg);
    f
}

/// Static table: 8 is `:status: 200`, 31 is `content-type`, 8's name is
/// `:status`.
pub(crate) fn hpack_status(code: &[u8]) -> Vec<u8> {
    let mut b = Vec::new();
    hpack_indexed_name(&mut b, 8, code);
    b
}

pub(crate) fn hpack_response() -> Vec<u8> {
    let mut b = vec![0x88];
    hpack_indexed_name(&mut b, 31, b"application/grpc");
    b
}

pub(crate) fn hpack_trailers(status: &Status) -> Vec<u8> {
    let mut b = Vec::new();
    push_status(&mut b, status);
    b
}

pub(crate) fn hpack_trailers_only(status: &Status) -> Vec<u8> {
    let mut b = hpack_response();
    push_status(&mut b, status);
    b
}

pub(crate) fn push_status(b: &mut Vec<u8>, status: &Status) {
    hpack_literal(b, b"grpc-status", status.code.to_string().as_bytes());
    if !status.message.is_empty() {
        hpack_literal(b, b"grpc-message", &percent_encode(&status.message));
    }
}

/// `grpc-message` encoding: printable ASCII except `%` as is, the rest
/// as `%XX`; at most 1 KiB of message.
pub(crate) fn percent_encode(s: &str) -> Vec<u8> {
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

/// Undo `grpc-message` percent-encoding (invalid escapes are kept).
pub(crate) fn percent_decode(v: &[u8]) -> String {
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
