//! RFC 9113 walked through against the server, in the spirit of h2spec:
//! raw bytes over a socket pair, each test named after the section whose
//! requirement it checks, asserting the error code and whether it is a
//! stream error (RST_STREAM, the connection carries on) or a connection
//! error (GOAWAY, then close), as the RFC requires.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use support::*;

// §3.4 HTTP/2 connection preface.

#[tokio::test]
async fn s3_4_invalid_preface_is_a_connection_protocol_error() {
    let mut p = Peer::connect().await;
    p.send(b"PRI * HTTP/1.1\r\n\r\nSM\r\n\r\n").await;
    p.expect_connection_error(PROTOCOL_ERROR).await;
}

#[tokio::test]
async fn s3_4_first_frame_not_settings_is_a_connection_protocol_error() {
    let mut p = Peer::connect().await;
    let mut b = PREFACE.to_vec();
    b.extend(frame(PING, 0, 0, b"12345678"));
    p.send(&b).await;
    p.expect_connection_error(PROTOCOL_ERROR).await;
}

#[tokio::test]
async fn s3_4_server_preface_is_settings_first() {
    let mut p = Peer::connect().await;
    let mut b = PREFACE.to_vec();
    b.extend(frame(SETTINGS, 0, 0, &[]));
    p.send(&b).await;
    let f = p.next().await.unwrap();
    assert_eq!((f.ty, f.flags, f.stream), (SETTINGS, 0, 0), "{f:?}");
}

// §4.1 frame format, §4.2 frame size, §4.3 field compression.

#[tokio::test]
async fn s4_1_unknown_frame_types_and_flags_are_ignored() {
    let mut p = Peer::handshake().await;
    p.send(&frame(0xfa, 0xff, 0, b"whatever")).await;
    p.send(&frame(0xfb, 0, 1, b"on an idle stream too")).await;
    // Unknown flags on PING are ignored as well.
    p.send(&frame(PING, 0xf0, 0, b"flags!!!")).await;
    let f = p.next().await.unwrap();
    assert_eq!(
        (f.ty, f.flags & ACK, f.payload.as_slice()),
        (PING, ACK, &b"flags!!!"[..])
    );
    p.expect_alive().await;
}

#[tokio::test]
async fn s4_1_reserved_bit_in_the_stream_id_is_ignored() {
    let mut p = Peer::handshake().await;
    let mut b = frame(HEADERS, END_HEADERS, 1, &block_of(&request("/t/Echo")));
    b[5] |= 0x80;
    b.extend(frame(DATA, END_STREAM, 1, &grpc(b"r")));
    p.send(&b).await;
    let (body, _) = p.response(1).await;
    assert_eq!(body, grpc(b"r"));
}

#[tokio::test]
async fn s4_2_frame_above_max_frame_size_is_a_frame_size_error() {
    let mut p = Peer::handshake().await;
    p.send(&frame(HEADERS, END_HEADERS, 1, &vec![0; 16_385]))
        .await;
    p.expect_connection_error(FRAME_SIZE_ERROR).await;
}

#[tokio::test]
async fn s4_3_undecodable_field_block_is_a_compression_error() {
    let mut p = Peer::handshake().await;
    // Indexed field 127+: past the static table and an empty dynamic one.
    p.send(&frame(HEADERS, END_HEADERS | END_STREAM, 1, &[0xff, 0x7f]))
        .await;
    p.expect_connection_error(COMPRESSION_ERROR).await;
}

// §5.1 stream states.

#[tokio::test]
async fn s5_1_data_on_an_idle_stream_is_a_connection_protocol_error() {
    let mut p = Peer::handshake().await;
    p.send(&frame(DATA, 0, 1, &grpc(b"x"))).await;
    p.expect_connection_error(PROTOCOL_ERROR).await;
}

#[tokio::test]
async fn s5_1_rst_stream_on_an_idle_stream_is_a_connection_protocol_error() {
    let mut p = Peer::handshake().await;
    p.send(&frame(RST_STREAM, 0, 1, &8u32.to_be_bytes())).await;
    p.expect_connection_error(PROTOCOL_ERROR).await;
}

#[tokio::test]
async fn s5_1_window_update_on_an_idle_stream_is_a_connection_protocol_error() {
    let mut p = Peer::handshake().await;
    p.send(&frame(WINDOW_UPDATE, 0, 1, &100u32.to_be_bytes()))
        .await;
    p.expect_connection_error(PROTOCOL_ERROR).await;
}

#[tokio::test]
async fn s5_1_continuation_on_an_idle_stream_is_a_connection_protocol_error() {
    let mut p = Peer::handshake().await;
    p.send(&frame(
        CONTINUATION,
        END_HEADERS,
        1,
        &block_of(&request("/t/Echo")),
    ))
    .await;
    p.expect_connection_error(PROTOCOL_ERROR).await;
}

#[tokio::test]
async fn s5_1_priority_on_an_idle_stream_is_allowed() {
    let mut p = Peer::handshake().await;
    p.send(&frame(PRIORITY, 0, 3, &[0, 0, 0, 1, 16])).await;
    p.expect_alive().await;
    // And the stream can still be opened.
    p.call(3, "/t/Echo", b"after priority").await;
    assert_eq!(p.response(3).await.0, grpc(b"after priority"));
}

#[tokio::test]
async fn s5_1_data_on_a_half_closed_remote_stream_is_stream_closed() {
    let mut p = Peer::handshake().await;
    p.watch(1).await;
    p.send(&frame(DATA, 0, 1, &grpc(b"late"))).await;
    p.expect_stream_error(1, STREAM_CLOSED).await;
}

#[tokio::test]
async fn s5_1_headers_on_a_half_closed_remote_stream_is_stream_closed() {
    let mut p = Peer::handshake().await;
    p.watch(1).await;
    p.send(&frame(
        HEADERS,
        END_HEADERS | END_STREAM,
        1,
        &block(&[("x-trailer", "1")]),
    ))
    .await;
    p.expect_stream_error(1, STREAM_CLOSED).await;
}

#[tokio::test]
async fn s5_1_data_on_a_closed_stream_is_stream_closed() {
    let mut p = Peer::handshake().await;
    p.call(1, "/t/Echo", b"one").await;
    p.response(1).await;
    p.send(&frame(DATA, END_STREAM, 1, &grpc(b"again"))).await;
    p.expect_stream_error(1, STREAM_CLOSED).await;
}

#[tokio::test]
async fn s5_1_headers_on_a_closed_stream_is_a_connection_stream_closed() {
    let mut p = Peer::handshake().await;
    p.call(1, "/t/Echo", b"one").await;
    p.response(1).await;
    p.call(1, "/t/Echo", b"again").await;
    p.expect_connection_error(STREAM_CLOSED).await;
}

#[tokio::test]
async fn s5_1_frames_after_our_rst_stream_are_stream_errors_only() {
    // §5.1 closed: after RST_STREAM the peer may still have frames in
    // flight; they must not end the connection.
    let mut p = Peer::handshake().await;
    let mut b = frame(HEADERS, END_HEADERS, 1, &block_of(&request("/t/Echo")));
    b.extend(frame(RST_STREAM, 0, 1, &8u32.to_be_bytes()));
    b.extend(frame(WINDOW_UPDATE, 0, 1, &10u32.to_be_bytes()));
    b.extend(frame(PRIORITY, 0, 1, &[0, 0, 0, 0, 16]));
    p.send(&b).await;
    p.expect_alive().await;
}

// §5.1.1 stream identifiers.

#[tokio::test]
async fn s5_1_1_even_stream_id_from_a_client_is_a_connection_protocol_error() {
    let mut p = Peer::handshake().await;
    p.send(&frame(
        HEADERS,
        END_HEADERS | END_STREAM,
        2,
        &block_of(&request("/t/Echo")),
    ))
    .await;
    p.expect_connection_error(PROTOCOL_ERROR).await;
}

#[tokio::test]
async fn s5_1_1_decreasing_stream_id_is_a_connection_protocol_error() {
    let mut p = Peer::handshake().await;
    p.call(5, "/t/Echo", b"five").await;
    p.response(5).await;
    p.call(3, "/t/Echo", b"three").await;
    p.expect_connection_error(PROTOCOL_ERROR).await;
}

// §5.1.2 stream concurrency.

#[tokio::test]
async fn s5_1_2_streams_beyond_max_concurrent_streams_are_refused() {
    let mut p = Peer::handshake().await;
    let max = p
        .server_settings
        .iter()
        .find(|(id, _)| *id == MAX_CONCURRENT_STREAMS)
        .map(|(_, v)| *v)
        .expect("§6.5.2: the server limits concurrent streams");
    assert_eq!(max as usize, smarter_h2::MAX_STREAMS);
    // Open `max` streams whose requests are still coming, then one more.
    for i in 0..=max {
        let h = block_of(&request("/t/Echo"));
        p.send(&frame(HEADERS, END_HEADERS, 1 + 2 * i, &h)).await;
    }
    p.expect_stream_error(1 + 2 * max, REFUSED_STREAM).await;
}

// §5.3.1 stream dependencies.

#[tokio::test]
async fn s5_3_1_headers_depending_on_itself_is_a_stream_protocol_error() {
    let mut p = Peer::handshake().await;
    let mut payload = vec![0, 0, 0, 1, 16];
    payload.extend(block_of(&request("/t/Echo")));
    p.send(&frame(
        HEADERS,
        END_HEADERS | END_STREAM | PRIORITY_FLAG,
        1,
        &payload,
    ))
    .await;
    p.expect_stream_error(1, PROTOCOL_ERROR).await;
}

#[tokio::test]
async fn s5_3_1_priority_depending_on_itself_is_a_stream_protocol_error() {
    let mut p = Peer::handshake().await;
    p.send(&frame(PRIORITY, 0, 1, &[0, 0, 0, 1, 16])).await;
    p.expect_stream_error(1, PROTOCOL_ERROR).await;
}

// §6.1 DATA.

#[tokio::test]
async fn s6_1_data_on_stream_0_is_a_connection_protocol_error() {
    let mut p = Peer::handshake().await;
    p.send(&frame(DATA, 0, 0, b"x")).await;
    p.expect_connection_error(PROTOCOL_ERROR).await;
}

#[tokio::test]
async fn s6_1_padding_longer_than_the_payload_is_a_connection_protocol_error() {
    let mut p = Peer::handshake().await;
    p.send(&frame(
        HEADERS,
        END_HEADERS,
        1,
        &block_of(&request("/t/Echo")),
    ))
    .await;
    p.send(&frame(DATA, PADDED | END_STREAM, 1, &[9, 1, 2, 3]))
        .await;
    p.expect_connection_error(PROTOCOL_ERROR).await;
}

// §6.2 HEADERS.

#[tokio::test]
async fn s6_2_headers_on_stream_0_is_a_connection_protocol_error() {
    let mut p = Peer::handshake().await;
    p.send(&frame(
        HEADERS,
        END_HEADERS,
        0,
        &block_of(&request("/t/Echo")),
    ))
    .await;
    p.expect_connection_error(PROTOCOL_ERROR).await;
}

#[tokio::test]
async fn s6_2_padding_longer_than_the_payload_is_a_connection_protocol_error() {
    let mut p = Peer::handshake().await;
    let mut payload = vec![200];
    payload.extend(block_of(&request("/t/Echo")));
    p.send(&frame(HEADERS, END_HEADERS | PADDED, 1, &payload))
        .await;
    p.expect_connection_error(PROTOCOL_ERROR).await;
}

#[tokio::test]
async fn s6_2_padded_headers_with_priority_are_served() {
    let mut p = Peer::handshake().await;
    let mut payload = vec![3, 0, 0, 0, 0, 16];
    payload.extend(block_of(&request("/t/Echo")));
    payload.extend([0, 0, 0]);
    let mut b = frame(HEADERS, END_HEADERS | PADDED | PRIORITY_FLAG, 1, &payload);
    b.extend(frame(DATA, END_STREAM, 1, &grpc(b"padded")));
    p.send(&b).await;
    assert_eq!(p.response(1).await.0, grpc(b"padded"));
}

// §6.3 PRIORITY.

#[tokio::test]
async fn s6_3_priority_of_the_wrong_length_is_a_stream_frame_size_error() {
    let mut p = Peer::handshake().await;
    p.send(&frame(PRIORITY, 0, 1, &[0, 0, 0, 0])).await;
    p.expect_stream_error(1, FRAME_SIZE_ERROR).await;
}

#[tokio::test]
async fn s6_3_priority_on_stream_0_is_a_connection_protocol_error() {
    let mut p = Peer::handshake().await;
    p.send(&frame(PRIORITY, 0, 0, &[0, 0, 0, 1, 16])).await;
    p.expect_connection_error(PROTOCOL_ERROR).await;
}

// §6.4 RST_STREAM.

#[tokio::test]
async fn s6_4_rst_stream_on_stream_0_is_a_connection_protocol_error() {
    let mut p = Peer::handshake().await;
    p.send(&frame(RST_STREAM, 0, 0, &8u32.to_be_bytes())).await;
    p.expect_connection_error(PROTOCOL_ERROR).await;
}

#[tokio::test]
async fn s6_4_rst_stream_of_the_wrong_length_is_a_frame_size_error() {
    let mut p = Peer::handshake().await;
    p.watch(1).await;
    p.send(&frame(RST_STREAM, 0, 1, &[0, 0, 0])).await;
    p.expect_connection_error(FRAME_SIZE_ERROR).await;
}

#[tokio::test]
async fn s6_4_rst_stream_ends_a_watch_and_the_connection_carries_on() {
    let mut p = Peer::handshake().await;
    p.watch(1).await;
    p.send(&frame(RST_STREAM, 0, 1, &8u32.to_be_bytes())).await;
    p.expect_alive().await;
    // The reset stream gets nothing more, even when its feed changes.
    p.feed.publish(b"v1".to_vec());
    p.call(3, "/t/Echo", b"next").await;
    let mut body = Vec::new();
    loop {
        let f = p.next().await.unwrap();
        assert_ne!(f.stream, 1, "{f:?}");
        if f.stream == 3 && f.ty == DATA {
            body.extend(f.payload);
        } else if f.stream == 3 && f.ty == HEADERS && f.flags & END_STREAM != 0 {
            break;
        }
    }
    assert_eq!(body, grpc(b"next"));
}

// §6.5 SETTINGS.

#[tokio::test]
async fn s6_5_settings_are_acknowledged() {
    // The handshake checks the empty ACK; unknown settings are ignored
    // (§6.5.2).
    let mut p = Peer::handshake_with(&[(0xfe, 7), (INITIAL_WINDOW_SIZE, 100)]).await;
    p.send(&frame(
        SETTINGS,
        0,
        0,
        &settings(&[(MAX_FRAME_SIZE, 20_000)]),
    ))
    .await;
    let f = p.next().await.unwrap();
    assert_eq!((f.ty, f.flags, f.payload.len()), (SETTINGS, ACK, 0));
}

#[tokio::test]
async fn s6_5_settings_ack_with_a_payload_is_a_frame_size_error() {
    let mut p = Peer::handshake().await;
    p.send(&frame(SETTINGS, ACK, 0, &settings(&[(ENABLE_PUSH, 0)])))
        .await;
    p.expect_connection_error(FRAME_SIZE_ERROR).await;
}

#[tokio::test]
async fn s6_5_settings_on_a_stream_is_a_connection_protocol_error() {
    let mut p = Peer::handshake().await;
    p.send(&frame(SETTINGS, 0, 1, &settings(&[(ENABLE_PUSH, 0)])))
        .await;
    p.expect_connection_error(PROTOCOL_ERROR).await;
}

#[tokio::test]
async fn s6_5_settings_length_not_a_multiple_of_6_is_a_frame_size_error() {
    let mut p = Peer::handshake().await;
    p.send(&frame(SETTINGS, 0, 0, &[0, 2, 0, 0, 0])).await;
    p.expect_connection_error(FRAME_SIZE_ERROR).await;
}

#[tokio::test]
async fn s6_5_2_enable_push_above_1_is_a_connection_protocol_error() {
    let mut p = Peer::handshake().await;
    p.send(&frame(SETTINGS, 0, 0, &settings(&[(ENABLE_PUSH, 2)])))
        .await;
    p.expect_connection_error(PROTOCOL_ERROR).await;
}

#[tokio::test]
async fn s6_5_2_initial_window_size_above_2_31_minus_1_is_a_flow_control_error() {
    let mut p = Peer::handshake().await;
    p.send(&frame(
        SETTINGS,
        0,
        0,
        &settings(&[(INITIAL_WINDOW_SIZE, 1 << 31)]),
    ))
    .await;
    p.expect_connection_error(FLOW_CONTROL_ERROR).await;
}

#[tokio::test]
async fn s6_5_2_max_frame_size_below_the_initial_value_is_a_protocol_error() {
    let mut p = Peer::handshake().await;
    p.send(&frame(
        SETTINGS,
        0,
        0,
        &settings(&[(MAX_FRAME_SIZE, 16_383)]),
    ))
    .await;
    p.expect_connection_error(PROTOCOL_ERROR).await;
}

#[tokio::test]
async fn s6_5_2_max_frame_size_above_2_24_minus_1_is_a_protocol_error() {
    let mut p = Peer::handshake().await;
    p.send(&frame(
        SETTINGS,
        0,
        0,
        &settings(&[(MAX_FRAME_SIZE, 1 << 24)]),
    ))
    .await;
    p.expect_connection_error(PROTOCOL_ERROR).await;
}

// §6.6 PUSH_PROMISE.

#[tokio::test]
async fn s6_6_push_promise_from_a_client_is_a_connection_protocol_error() {
    let mut p = Peer::handshake().await;
    p.send(&frame(PUSH_PROMISE, END_HEADERS, 1, &[0, 0, 0, 2, 0x82]))
        .await;
    p.expect_connection_error(PROTOCOL_ERROR).await;
}

// §6.7 PING.

#[tokio::test]
async fn s6_7_ping_is_answered_with_an_ack_of_the_same_payload() {
    let mut p = Peer::handshake().await;
    p.send(&frame(PING, 0, 0, b"\x00\x01\x02\x03\x04\x05\x06\x07"))
        .await;
    let f = p.next().await.unwrap();
    assert_eq!(
        (f.ty, f.flags, f.stream, f.payload.as_slice()),
        (PING, ACK, 0, &b"\x00\x01\x02\x03\x04\x05\x06\x07"[..])
    );
}

#[tokio::test]
async fn s6_7_a_ping_ack_is_not_answered() {
    let mut p = Peer::handshake().await;
    p.send(&frame(PING, ACK, 0, b"unasked!")).await;
    p.send(&frame(PING, 0, 0, b"asked!!!")).await;
    let f = p.next().await.unwrap();
    assert_eq!(f.payload, b"asked!!!", "{f:?}");
}

#[tokio::test]
async fn s6_7_ping_of_the_wrong_length_is_a_frame_size_error() {
    let mut p = Peer::handshake().await;
    p.send(&frame(PING, 0, 0, b"1234567")).await;
    p.expect_connection_error(FRAME_SIZE_ERROR).await;
}

#[tokio::test]
async fn s6_7_ping_on_a_stream_is_a_connection_protocol_error() {
    let mut p = Peer::handshake().await;
    p.send(&frame(PING, 0, 1, b"12345678")).await;
    p.expect_connection_error(PROTOCOL_ERROR).await;
}

// §6.8 GOAWAY.

#[tokio::test]
async fn s6_8_goaway_on_a_stream_is_a_connection_protocol_error() {
    let mut p = Peer::handshake().await;
    p.send(&frame(GOAWAY, 0, 1, &[0; 8])).await;
    p.expect_connection_error(PROTOCOL_ERROR).await;
}

#[tokio::test]
async fn s6_8_after_the_clients_goaway_open_calls_still_complete() {
    let mut p = Peer::handshake().await;
    p.send(&frame(
        HEADERS,
        END_HEADERS,
        1,
        &block_of(&request("/t/Echo")),
    ))
    .await;
    p.send(&frame(GOAWAY, 0, 0, &[0, 0, 0, 0, 0, 0, 0, 0]))
        .await;
    p.send(&frame(DATA, END_STREAM, 1, &grpc(b"still"))).await;
    assert_eq!(p.response(1).await.0, grpc(b"still"));
}

#[tokio::test]
async fn s6_8_a_stopping_server_says_goaway_with_the_last_stream() {
    let mut p = Peer::handshake().await;
    p.watch(3).await;
    p.stop.stop();
    loop {
        let f = p.next().await.expect("EOF before GOAWAY");
        if f.ty == GOAWAY {
            assert_eq!(&f.payload[..4], &3u32.to_be_bytes());
            assert_eq!(f.code(), NO_ERROR);
            break;
        }
    }
    assert!(p.next().await.is_none());
}

// §6.9 WINDOW_UPDATE and flow control.

#[tokio::test]
async fn s6_9_window_update_of_0_on_the_connection_is_a_protocol_error() {
    let mut p = Peer::handshake().await;
    p.send(&frame(WINDOW_UPDATE, 0, 0, &0u32.to_be_bytes()))
        .await;
    p.expect_connection_error(PROTOCOL_ERROR).await;
}

#[tokio::test]
async fn s6_9_window_update_of_0_on_a_stream_is_a_stream_protocol_error() {
    let mut p = Peer::handshake().await;
    p.watch(1).await;
    p.send(&frame(WINDOW_UPDATE, 0, 1, &0u32.to_be_bytes()))
        .await;
    p.expect_stream_error(1, PROTOCOL_ERROR).await;
}

#[tokio::test]
async fn s6_9_window_update_of_the_wrong_length_is_a_frame_size_error() {
    let mut p = Peer::handshake().await;
    p.send(&frame(WINDOW_UPDATE, 0, 0, &[0, 0, 1])).await;
    p.expect_connection_error(FRAME_SIZE_ERROR).await;
}

#[tokio::test]
async fn s6_9_1_connection_window_above_2_31_minus_1_is_a_flow_control_error() {
    let mut p = Peer::handshake().await;
    let max = (1u32 << 31) - 1;
    p.send(&frame(WINDOW_UPDATE, 0, 0, &max.to_be_bytes()))
        .await;
    p.expect_connection_error(FLOW_CONTROL_ERROR).await;
}

#[tokio::test]
async fn s6_9_1_stream_window_above_2_31_minus_1_is_a_stream_flow_control_error() {
    let mut p = Peer::handshake().await;
    p.watch(1).await;
    let max = (1u32 << 31) - 1;
    p.send(&frame(WINDOW_UPDATE, 0, 1, &max.to_be_bytes()))
        .await;
    p.expect_stream_error(1, FLOW_CONTROL_ERROR).await;
}

#[tokio::test]
async fn s6_9_1_data_is_held_until_the_window_opens() {
    let mut p = Peer::handshake_with(&[(INITIAL_WINDOW_SIZE, 4)]).await;
    p.call(1, "/t/Echo", b"0123456789").await;
    let mut data = Vec::new();
    loop {
        let f = p.next().await.unwrap();
        if f.ty == DATA {
            data.extend(f.payload);
            break;
        }
    }
    assert_eq!(data.len(), 4, "§6.9.1: no more than the window");
    p.expect_alive().await;
    p.send(&frame(WINDOW_UPDATE, 0, 1, &100u32.to_be_bytes()))
        .await;
    let (rest, _) = p.response(1).await;
    data.extend(rest);
    assert_eq!(data, grpc(b"0123456789"));
}

#[tokio::test]
async fn s6_9_2_initial_window_size_overflowing_a_stream_is_a_flow_control_error() {
    let mut p = Peer::handshake().await;
    p.watch(1).await;
    // The stream's window: 65,535 minus the 7 bytes sent, now raised to
    // 2^31 - 8; growing the initial size by 100 overflows it.
    let up = (1u32 << 31) - 1 - 65_535;
    p.send(&frame(WINDOW_UPDATE, 0, 1, &up.to_be_bytes())).await;
    p.expect_alive().await;
    p.send(&frame(
        SETTINGS,
        0,
        0,
        &settings(&[(INITIAL_WINDOW_SIZE, 65_635)]),
    ))
    .await;
    p.expect_connection_error(FLOW_CONTROL_ERROR).await;
}

// §6.10 CONTINUATION.

#[tokio::test]
async fn s6_10_headers_split_over_continuation_are_served() {
    let mut p = Peer::handshake().await;
    let h = block_of(&request("/t/Echo"));
    let (a, rest) = h.split_at(10);
    let (b, c) = rest.split_at(10);
    let mut bytes = frame(HEADERS, 0, 1, a);
    bytes.extend(frame(CONTINUATION, 0, 1, b));
    bytes.extend(frame(CONTINUATION, END_HEADERS, 1, c));
    bytes.extend(frame(DATA, END_STREAM, 1, &grpc(b"cont")));
    p.send(&bytes).await;
    assert_eq!(p.response(1).await.0, grpc(b"cont"));
}

#[tokio::test]
async fn s6_10_a_frame_interleaved_in_a_header_block_is_a_protocol_error() {
    let mut p = Peer::handshake().await;
    let h = block_of(&request("/t/Echo"));
    let mut bytes = frame(HEADERS, 0, 1, &h[..10]);
    bytes.extend(frame(PING, 0, 0, b"12345678"));
    bytes.extend(frame(CONTINUATION, END_HEADERS, 1, &h[10..]));
    p.send(&bytes).await;
    p.expect_connection_error(PROTOCOL_ERROR).await;
}

#[tokio::test]
async fn s6_10_continuation_on_another_stream_is_a_protocol_error() {
    let mut p = Peer::handshake().await;
    let h = block_of(&request("/t/Echo"));
    let mut bytes = frame(HEADERS, 0, 1, &h[..10]);
    bytes.extend(frame(CONTINUATION, END_HEADERS, 3, &h[10..]));
    p.send(&bytes).await;
    p.expect_connection_error(PROTOCOL_ERROR).await;
}

#[tokio::test]
async fn s6_10_continuation_after_end_headers_is_a_protocol_error() {
    let mut p = Peer::handshake().await;
    let mut bytes = frame(HEADERS, END_HEADERS, 1, &block_of(&request("/t/Echo")));
    bytes.extend(frame(
        CONTINUATION,
        END_HEADERS,
        1,
        &block(&[("x-more", "1")]),
    ));
    p.send(&bytes).await;
    p.expect_connection_error(PROTOCOL_ERROR).await;
}

// §8.1 HTTP message framing, §8.1.1 malformed messages.

#[tokio::test]
async fn s8_1_trailers_without_end_stream_are_a_stream_protocol_error() {
    let mut p = Peer::handshake().await;
    let mut b = frame(HEADERS, END_HEADERS, 1, &block_of(&request("/t/Echo")));
    b.extend(frame(DATA, 0, 1, &grpc(b"x")));
    b.extend(frame(
        HEADERS,
        END_HEADERS,
        1,
        &block(&[("x-trailer", "1")]),
    ));
    p.send(&b).await;
    p.expect_stream_error(1, PROTOCOL_ERROR).await;
}

#[tokio::test]
async fn s8_1_pseudo_header_in_trailers_is_a_stream_protocol_error() {
    let mut p = Peer::handshake().await;
    let mut b = frame(HEADERS, END_HEADERS, 1, &block_of(&request("/t/Echo")));
    b.extend(frame(DATA, 0, 1, &grpc(b"x")));
    b.extend(frame(
        HEADERS,
        END_HEADERS | END_STREAM,
        1,
        &block(&[(":path", "/t/Echo")]),
    ));
    p.send(&b).await;
    p.expect_stream_error(1, PROTOCOL_ERROR).await;
}

#[tokio::test]
async fn s8_1_trailers_ending_the_request_are_served() {
    let mut p = Peer::handshake().await;
    let mut b = frame(HEADERS, END_HEADERS, 1, &block_of(&request("/t/Echo")));
    b.extend(frame(DATA, 0, 1, &grpc(b"with trailers")));
    b.extend(frame(
        HEADERS,
        END_HEADERS | END_STREAM,
        1,
        &block(&[("x-trailer", "1")]),
    ));
    p.send(&b).await;
    assert_eq!(p.response(1).await.0, grpc(b"with trailers"));
}

#[tokio::test]
async fn s8_1_1_data_disagreeing_with_content_length_is_a_stream_protocol_error() {
    let mut p = Peer::handshake().await;
    let mut fields = request("/t/Echo");
    fields.push(("content-length", "3".into()));
    let mut b = frame(HEADERS, END_HEADERS, 1, &block_of(&fields));
    b.extend(frame(DATA, END_STREAM, 1, &grpc(b"longer")));
    p.send(&b).await;
    p.expect_stream_error(1, PROTOCOL_ERROR).await;

    // Shorter than announced, too.
    let mut fields = request("/t/Echo");
    fields.push(("content-length", "100".into()));
    let mut b = frame(HEADERS, END_HEADERS, 3, &block_of(&fields));
    b.extend(frame(DATA, END_STREAM, 3, &grpc(b"short")));
    p.send(&b).await;
    p.expect_stream_error(3, PROTOCOL_ERROR).await;

    // And a matching one is served.
    let mut fields = request("/t/Echo");
    fields.push(("content-length", "7".into()));
    let mut b = frame(HEADERS, END_HEADERS, 5, &block_of(&fields));
    b.extend(frame(DATA, END_STREAM, 5, &grpc(b"ok")));
    p.send(&b).await;
    assert_eq!(p.response(5).await.0, grpc(b"ok"));
}

/// A request whose fields are `fields` gets a stream PROTOCOL_ERROR
/// (malformed, §8.1.1) and the connection carries on.
async fn malformed(fields: &[(&str, &str)]) {
    let mut p = Peer::handshake().await;
    let mut b = frame(HEADERS, END_HEADERS, 1, &block(fields));
    b.extend(frame(DATA, END_STREAM, 1, &grpc(b"x")));
    p.send(&b).await;
    p.expect_stream_error(1, PROTOCOL_ERROR).await;
    // The same connection serves a valid request next.
    p.call(3, "/t/Echo", b"valid").await;
    assert_eq!(p.response(3).await.0, grpc(b"valid"));
}

const M: (&str, &str) = (":method", "POST");
const S: (&str, &str) = (":scheme", "http");
const P: (&str, &str) = (":path", "/t/Echo");
const A: (&str, &str) = (":authority", "localhost");
const CT: (&str, &str) = ("content-type", "application/grpc");

// §8.2 HTTP fields.

#[tokio::test]
async fn s8_2_1_uppercase_field_name_is_malformed() {
    malformed(&[M, S, P, A, CT, ("X-Upper", "1")]).await;
}

#[tokio::test]
async fn s8_2_1_field_value_with_cr_lf_or_nul_is_malformed() {
    malformed(&[M, S, P, A, CT, ("x-v", "a\r\nb")]).await;
    malformed(&[M, S, P, A, CT, ("x-v", "a\0b")]).await;
    malformed(&[M, S, P, A, CT, ("x-v", " leading space")]).await;
}

#[tokio::test]
async fn s8_2_2_connection_specific_fields_are_malformed() {
    for name in [
        "connection",
        "keep-alive",
        "proxy-connection",
        "transfer-encoding",
        "upgrade",
    ] {
        malformed(&[M, S, P, A, CT, (name, "x")]).await;
    }
}

#[tokio::test]
async fn s8_2_2_te_other_than_trailers_is_malformed() {
    malformed(&[M, S, P, A, CT, ("te", "trailers, deflate")]).await;
}

// §8.3 HTTP control data (pseudo-header fields).

#[tokio::test]
async fn s8_3_pseudo_header_after_a_regular_field_is_malformed() {
    malformed(&[M, S, A, CT, P]).await;
}

#[tokio::test]
async fn s8_3_unknown_or_response_pseudo_headers_are_malformed() {
    malformed(&[M, S, P, A, (":unknown", "x"), CT]).await;
    malformed(&[M, S, P, A, (":status", "200"), CT]).await;
}

#[tokio::test]
async fn s8_3_1_missing_pseudo_headers_are_malformed() {
    malformed(&[S, P, A, CT]).await;
    malformed(&[M, P, A, CT]).await;
    malformed(&[M, S, A, CT]).await;
}

#[tokio::test]
async fn s8_3_1_duplicate_pseudo_headers_are_malformed() {
    malformed(&[M, S, P, P, A, CT]).await;
    malformed(&[M, M, S, P, A, CT]).await;
}

#[tokio::test]
async fn s8_3_1_empty_path_is_malformed() {
    malformed(&[M, S, (":path", ""), A, CT]).await;
}

#[tokio::test]
async fn s8_3_1_a_socket_path_as_authority_is_served() {
    // Kubelets before 1.26 send the socket path as :authority; §8.3.1
    // leaves :authority optional and a unix socket has none to check.
    let mut p = Peer::handshake().await;
    let h = block(&[
        M,
        S,
        P,
        (":authority", "/var/lib/kubelet/device-plugins/x.sock"),
        CT,
    ]);
    let mut b = frame(HEADERS, END_HEADERS, 1, &h);
    b.extend(frame(DATA, END_STREAM, 1, &grpc(b"old kubelet")));
    p.send(&b).await;
    let (body, trailers) = p.response(1).await;
    assert_eq!(body, grpc(b"old kubelet"));
    assert!(contains(&trailers, b"grpc-status"), "{trailers:?}");
}

// §10.5.1 limits on field block size, §4.3 / RFC 7541 §4.2 table size.

#[tokio::test]
async fn s10_5_1_a_field_block_beyond_max_header_list_size_ends_the_connection() {
    // A block that is not decoded leaves the HPACK state unknown, so the
    // connection cannot go on (§4.3); ENHANCE_YOUR_CALM says why.
    let mut p = Peer::handshake().await;
    let limit = p
        .server_settings
        .iter()
        .find(|(id, _)| *id == MAX_HEADER_LIST_SIZE)
        .map(|(_, v)| *v as usize)
        .expect("the server advertises SETTINGS_MAX_HEADER_LIST_SIZE");
    let chunk = vec![0u8; 16_384];
    let mut b = frame(HEADERS, 0, 1, &chunk);
    let mut sent = chunk.len();
    while sent <= limit {
        b.extend(frame(CONTINUATION, 0, 1, &chunk));
        sent += chunk.len();
    }
    p.send(&b).await;
    p.expect_connection_error(ENHANCE_YOUR_CALM).await;
}

#[tokio::test]
async fn s4_3_a_table_size_update_above_the_limit_is_a_compression_error() {
    // RFC 7541 §4.2: a size update above SETTINGS_HEADER_TABLE_SIZE (the
    // server's is 0, and never more than the 4,096 default) is a decoding
    // error. 0x3f 0xe2 0x1f: size update to 4,097.
    let mut p = Peer::handshake().await;
    let mut block = vec![0x3f, 0xe2, 0x1f];
    block.extend(block_of(&request("/t/Echo")));
    p.send(&frame(HEADERS, END_HEADERS | END_STREAM, 1, &block))
        .await;
    p.expect_connection_error(COMPRESSION_ERROR).await;
}
