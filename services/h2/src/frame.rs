//! HTTP/2 framing (RFC 9113 §4 and §6): the preface, frame types, flags,
//! settings identifiers and error codes, and the few helpers that write a
//! frame or strip a frame's padding. The limits this server enforces are
//! here too, beside the frame sizes they bound.

/// The client connection preface.
pub(crate) const PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
/// Length of a frame header.
pub(crate) const FRAME_HEADER: usize = 9;
/// The largest frame we accept (the protocol default; we never raise it).
pub(crate) const MAX_FRAME: usize = 16_384;
/// Streams one connection may have open at once, advertised in
/// SETTINGS_MAX_CONCURRENT_STREAMS (the kubelet uses one or two); one more
/// is refused with REFUSED_STREAM (RFC 9113 §5.1.2).
pub const MAX_STREAMS: usize = 16;
/// The largest request message. The largest request a kubelet sends us is
/// GetPreferredAllocation naming every device of a resource: about 64 KiB
/// for 1,000 devices, so 1 MiB leaves 16 times that. A larger one is
/// answered with gRPC RESOURCE_EXHAUSTED and the stream reset.
pub const MAX_MESSAGE: usize = 1 << 20;
/// The connection's receive window, and so the most request bytes it can
/// make us buffer across all its streams: one largest message and 64 KiB
/// for calls beside it. Credit is handed back only when a request body is
/// freed; a client that sends beyond it gets FLOW_CONTROL_ERROR (RFC 9113
/// §6.9.1).
pub const RECV_WINDOW: usize = MAX_MESSAGE + (64 << 10);
/// The largest header block (all HEADERS + CONTINUATION payloads),
/// advertised in SETTINGS_MAX_HEADER_LIST_SIZE.
pub const MAX_HEADER_BLOCK: usize = 64 << 10;
/// The largest HPACK dynamic table a peer may make us keep: the protocol's
/// default SETTINGS_HEADER_TABLE_SIZE. We advertise 0, but a client may use
/// the default until it has our SETTINGS (RFC 7541 §4.2); a size update
/// above this is a decoding error, so the table cannot grow past it.
pub(crate) const MAX_HPACK_TABLE: usize = 4_096;
/// The most of its input one connection can make us hold: request bodies
/// (at most [`RECV_WINDOW`] in all), one header block being assembled, and
/// an incomplete frame. On top come the HPACK table (at most 4 KiB, the
/// protocol default, until the client applies our 0), a few hundred bytes
/// of state per stream, and output: reading stops while 64 KiB of it waits.
pub const MAX_BUFFERED_INPUT: usize = RECV_WINDOW + MAX_HEADER_BLOCK + FRAME_HEADER + MAX_FRAME;
/// Stop reading while this much output waits for the peer to read.
pub(crate) const OUT_HIGH_WATER: usize = 64 << 10;
/// HTTP/2's initial flow-control window.
pub(crate) const DEFAULT_WINDOW: i64 = 65_535;
/// Largest flow-control window.
pub(crate) const MAX_WINDOW: i64 = (1 << 31) - 1;

// Frame types (RFC 9113 §6).
pub(crate) const DATA: u8 = 0x0;
pub(crate) const HEADERS: u8 = 0x1;
pub(crate) const PRIORITY: u8 = 0x2;
pub(crate) const RST_STREAM: u8 = 0x3;
pub(crate) const SETTINGS: u8 = 0x4;
pub(crate) const PUSH_PROMISE: u8 = 0x5;
pub(crate) const PING: u8 = 0x6;
pub(crate) const GOAWAY: u8 = 0x7;
pub(crate) const WINDOW_UPDATE: u8 = 0x8;
pub(crate) const CONTINUATION: u8 = 0x9;

// Flags.
pub(crate) const END_STREAM: u8 = 0x1;
pub(crate) const ACK: u8 = 0x1;
pub(crate) const END_HEADERS: u8 = 0x4;
pub(crate) const PADDED: u8 = 0x8;
pub(crate) const PRIORITY_FLAG: u8 = 0x20;

// Settings.
pub(crate) const SETTINGS_HEADER_TABLE_SIZE: u16 = 0x1;
pub(crate) const SETTINGS_ENABLE_PUSH: u16 = 0x2;
pub(crate) const SETTINGS_MAX_CONCURRENT_STREAMS: u16 = 0x3;
pub(crate) const SETTINGS_INITIAL_WINDOW_SIZE: u16 = 0x4;
pub(crate) const SETTINGS_MAX_FRAME_SIZE: u16 = 0x5;
pub(crate) const SETTINGS_MAX_HEADER_LIST_SIZE: u16 = 0x6;

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

/// A protocol error that ends the connection with GOAWAY.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("HTTP/2 {code:?}: {why}")]
pub struct ConnError {
    /// Code sent in GOAWAY.
    pub code: H2Error,
    /// What went wrong.
    pub why: &'static str,
}

pub(crate) fn err(code: H2Error, why: &'static str) -> ConnError {
    ConnError { code, why }
}

/// Append one frame to `out`.
pub(crate) fn put_frame(out: &mut Vec<u8>, ty: u8, flags: u8, stream: u32, payload: &[u8]) {
    let len = payload.len() as u32;
    out.extend_from_slice(&len.to_be_bytes()[1..]);
    out.push(ty);
    out.push(flags);
    out.extend_from_slice(&(stream & 0x7fff_ffff).to_be_bytes());
    out.extend_from_slice(payload);
}

pub(crate) fn strip_padding(flags: u8, p: &[u8]) -> Result<&[u8], ConnError> {
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
