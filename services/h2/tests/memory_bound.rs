//! The bound on what one connection can make the server hold
//! (`docs/decisions/0125-h2-crate-conformance-and-memory-bound.md`): the
//! limits are advertised, a client that respects them gets the largest
//! message through, and one that ignores them is stopped with the
//! RFC 9113 error before it gets past them.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::sync::Arc;

use smarter_h2::{
    Conn, Feed, MAX_BUFFERED_INPUT, MAX_HEADER_BLOCK, MAX_MESSAGE, MAX_STREAMS, RECV_WINDOW,
};
use support::*;

#[tokio::test]
async fn the_limits_are_advertised() {
    let p = Peer::handshake().await;
    let get = |id| {
        p.server_settings
            .iter()
            .find(|(i, _)| *i == id)
            .map(|(_, v)| *v)
    };
    assert_eq!(get(MAX_CONCURRENT_STREAMS), Some(MAX_STREAMS as u32));
    assert_eq!(get(MAX_HEADER_LIST_SIZE), Some(MAX_HEADER_BLOCK as u32));
    // The connection window: 65,535 (§6.9.2) plus the server's grant.
    assert_eq!(65_535 + p.conn_grant as usize, RECV_WINDOW);
}

#[tokio::test]
async fn a_client_ignoring_the_connection_window_gets_flow_control_error() {
    // Every stream the server allows, each sending request bytes that
    // never end: the server holds them (they are not a whole message
    // yet), so it hands back no connection window, and the byte past
    // RECV_WINDOW is a connection FLOW_CONTROL_ERROR (§6.9.1).
    let mut p = Peer::handshake().await;
    let streams: Vec<u32> = (0..MAX_STREAMS as u32).map(|i| 1 + 2 * i).collect();
    for &s in &streams {
        p.send(&frame(
            HEADERS,
            END_HEADERS,
            s,
            &block_of(&request("/t/Echo")),
        ))
        .await;
    }
    let chunk = vec![0u8; 16_384];
    let mut sent = 0usize;
    let mut i = 0;
    let mut bytes = Vec::new();
    while sent + chunk.len() <= RECV_WINDOW {
        bytes.extend(frame(DATA, 0, streams[i % streams.len()], &chunk));
        sent += chunk.len();
        i += 1;
    }
    // Up to the window exactly, then one byte more.
    let rest = RECV_WINDOW - sent;
    bytes.extend(frame(DATA, 0, streams[i % streams.len()], &chunk[..rest]));
    bytes.extend(frame(DATA, 0, streams[(i + 1) % streams.len()], &[0]));
    p.send(&bytes).await;
    loop {
        let f = p.next().await.expect("EOF before GOAWAY");
        if f.ty == WINDOW_UPDATE {
            assert_ne!(f.stream, 0, "connection credit for bytes still held: {f:?}");
        }
        assert_ne!(f.ty, RST_STREAM, "{f:?}");
        if f.ty == GOAWAY {
            assert_eq!(f.code(), FLOW_CONTROL_ERROR);
            break;
        }
    }
}

#[tokio::test]
async fn the_largest_message_gets_through_a_client_that_respects_the_windows() {
    let max = (1u32 << 31) - 1;
    let mut p = Peer::handshake_with(&[(INITIAL_WINDOW_SIZE, max)]).await;
    p.send(&frame(WINDOW_UPDATE, 0, 0, &(max - 65_535).to_be_bytes()))
        .await;
    let msg: Vec<u8> = (0..MAX_MESSAGE).map(|i| (i % 251) as u8).collect();
    let body = grpc(&msg);
    p.send(&frame(
        HEADERS,
        END_HEADERS,
        1,
        &block_of(&request("/t/Echo")),
    ))
    .await;
    // Send within both windows, taking the server's credit as it comes.
    let mut stream_window = 65_535usize;
    let mut conn_window = 65_535 + p.conn_grant as usize;
    let mut at = 0;
    while at < body.len() {
        let n = (body.len() - at)
            .min(16_384)
            .min(stream_window)
            .min(conn_window);
        if n == 0 {
            let f = p.next().await.expect("EOF while sending");
            if f.ty == WINDOW_UPDATE {
                let inc = u32::from_be_bytes(f.payload[..4].try_into().unwrap()) as usize;
                if f.stream == 0 {
                    conn_window += inc;
                } else {
                    stream_window += inc;
                }
            }
            assert_ne!(f.ty, GOAWAY, "{f:?}");
            continue;
        }
        let end = if at + n == body.len() { END_STREAM } else { 0 };
        p.send(&frame(DATA, end, 1, &body[at..at + n])).await;
        at += n;
        stream_window -= n;
        conn_window -= n;
    }
    let (echo, trailers) = p.response(1).await;
    assert_eq!(echo.len(), body.len());
    assert!(echo == body, "the echo differs");
    assert!(contains(&trailers, b"grpc-status"));
}

#[tokio::test]
async fn a_message_above_the_limit_is_resource_exhausted_and_its_window_returned() {
    let mut p = Peer::handshake().await;
    p.send(&frame(
        HEADERS,
        END_HEADERS,
        1,
        &block_of(&request("/t/Echo")),
    ))
    .await;
    // MAX_MESSAGE + 5 bytes fit (a whole largest message); one more does
    // not.
    let total = MAX_MESSAGE + 6;
    let mut sent = 0;
    let mut bytes = Vec::new();
    while sent < total {
        let n = (total - sent).min(16_384);
        bytes.extend(frame(DATA, 0, 1, &vec![0; n]));
        sent += n;
    }
    p.send(&bytes).await;
    let mut credit = 0usize;
    let mut status = None;
    let mut reset = false;
    while !(status.is_some() && reset && credit >= total) {
        let f = p.next().await.expect("EOF");
        assert_ne!(f.ty, GOAWAY, "{f:?}");
        match f.ty {
            WINDOW_UPDATE if f.stream == 0 => {
                credit += u32::from_be_bytes(f.payload[..4].try_into().unwrap()) as usize;
            }
            // Trailers-only: gRPC RESOURCE_EXHAUSTED (8).
            HEADERS if f.stream == 1 => {
                assert!(contains(&f.payload, b"grpc-status\x018"), "{f:?}");
                status = Some(8);
            }
            RST_STREAM if f.stream == 1 => {
                assert_eq!(f.code(), NO_ERROR);
                reset = true;
            }
            _ => {}
        }
    }
    // Everything the refused stream held was handed back.
    assert_eq!(credit, total);
    p.call(3, "/t/Echo", b"after").await;
    assert_eq!(p.response(3).await.0, grpc(b"after"));
}

/// Drives the state machine directly (no socket buffers in between) with
/// a client that opens every stream, fills each with request bytes and a
/// header block that never ends, in pieces that leave frames incomplete:
/// what it holds never exceeds MAX_BUFFERED_INPUT, and gets close to it.
#[test]
fn buffered_input_never_exceeds_the_bound() {
    let feed = Arc::new(Feed::new(b"v0".to_vec()));
    let mut c = Conn::new(Arc::new(Echo(feed)));
    let mut bytes = PREFACE.to_vec();
    bytes.extend(frame(SETTINGS, 0, 0, &[]));
    for i in 0..MAX_STREAMS as u32 {
        bytes.extend(frame(
            HEADERS,
            END_HEADERS,
            1 + 2 * i,
            &block_of(&request("/t/Echo")),
        ));
    }
    let chunk = vec![7u8; 16_384];
    let mut i = 0u32;
    for _ in 0..(RECV_WINDOW / chunk.len()) {
        bytes.extend(frame(DATA, 0, 1 + 2 * (i % MAX_STREAMS as u32), &chunk));
        i += 1;
    }
    let bodies = bytes.clone();
    // A header block on a new stream that grows to the limit, then the
    // start of one more frame.
    let stream = 1 + 2 * MAX_STREAMS as u32;
    bytes.extend(frame(HEADERS, 0, stream, &chunk[..1]));
    let mut block = 1;
    while block + chunk.len() <= MAX_HEADER_BLOCK {
        bytes.extend(frame(CONTINUATION, 0, stream, &chunk));
        block += chunk.len();
    }
    bytes.extend(&frame(CONTINUATION, 0, stream, &chunk)[..16_000]);
    let mut most = 0;
    for piece in bytes.chunks(4_093) {
        c.feed(piece);
        c.take_output();
        most = most.max(c.buffered_input());
        assert!(
            c.buffered_input() <= MAX_BUFFERED_INPUT,
            "{} > {MAX_BUFFERED_INPUT}",
            c.buffered_input()
        );
    }
    assert!(!c.is_closed(), "a client within the limits is served");
    assert!(
        most > RECV_WINDOW + MAX_HEADER_BLOCK - 16_384,
        "the test filled the bodies and the header block: {most}"
    );
    // With the bodies filling the window, one more byte of DATA ends the
    // connection with FLOW_CONTROL_ERROR.
    assert_eq!(i as usize * chunk.len(), RECV_WINDOW);
    let mut c = Conn::new(Arc::new(Echo(Arc::new(Feed::new(Vec::new())))));
    c.feed(&bodies);
    assert!(!c.is_closed());
    c.take_output();
    c.feed(&frame(DATA, 0, 1, &[0]));
    assert!(c.is_closed());
    let out = c.take_output();
    let goaway = frame(
        GOAWAY,
        0,
        0,
        &[0, 0, 0, 2 * MAX_STREAMS as u8 - 1, 0, 0, 0, 3],
    );
    assert!(contains(&out, &goaway), "{out:?}");
}
