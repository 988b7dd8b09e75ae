//! Any bytes into one server connection of smarter-h2 (`Conn`: frames,
//! HPACK decoding, stream states, flow control, header validation), fed
//! in pieces. Must not panic (overflow checks on); what the connection
//! holds of its input never exceeds `MAX_BUFFERED_INPUT`; its output is
//! always whole, well-formed frames; once it has failed the connection it
//! ignores further input.
//!
//! Input layout: byte 0 picks the piece size (1..=256) and, in its top
//! bit, whether the client preface and an empty SETTINGS come first (so
//! most runs fuzz frames rather than the preface); the rest is the bytes.
#![no_main]

use std::sync::Arc;

use libfuzzer_sys::fuzz_target;
use smarter_h2::{Call, Conn, Feed, Handler, MAX_BUFFERED_INPUT, Status};

struct Echo(Arc<Feed>);

impl Handler for Echo {
    fn call(&self, path: &str, msg: &[u8]) -> Call {
        match path {
            "/t/Echo" => Call::Reply(Ok(msg.to_vec())),
            "/t/Watch" => Call::Watch(Arc::clone(&self.0)),
            _ => Call::Reply(Err(Status::new(Status::NOT_FOUND, path))),
        }
    }
}

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// The output must be whole frames with a clear reserved bit.
fn check_frames(out: &[u8]) {
    let mut at = 0;
    while at < out.len() {
        let h = &out[at..];
        assert!(h.len() >= 9, "a torn frame header in the output");
        let len = usize::from(h[0]) << 16 | usize::from(h[1]) << 8 | usize::from(h[2]);
        assert_eq!(h[5] & 0x80, 0, "reserved bit set");
        assert!(h.len() >= 9 + len, "a torn frame payload in the output");
        at += 9 + len;
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&first, rest)) = data.split_first() else {
        return;
    };
    let piece = usize::from(first & 0x7f) * 2 + 1;
    let mut input = Vec::with_capacity(rest.len() + 33);
    if first & 0x80 != 0 {
        input.extend_from_slice(PREFACE);
        input.extend_from_slice(&[0, 0, 0, 4, 0, 0, 0, 0, 0]);
    }
    input.extend_from_slice(rest);

    let feed = Arc::new(Feed::new(b"v0".to_vec()));
    let mut c = Conn::new(Arc::new(Echo(Arc::clone(&feed))));
    check_frames(&c.take_output());
    for chunk in input.chunks(piece) {
        let closed = c.is_closed();
        c.feed(chunk);
        let out = c.take_output();
        if closed {
            assert!(out.is_empty(), "output after the connection failed");
        }
        check_frames(&out);
        assert!(c.buffered_input() <= MAX_BUFFERED_INPUT);
    }
});
