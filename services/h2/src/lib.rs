//! smarter-h2: a small HTTP/2 server for gRPC over unix sockets: exactly
//! what the kubelet's device-plugin client needs, and no more; and the
//! one-call client the device manager uses to register with the kubelet.
//!
//! Why not hyper/h2 (which tonic uses): the kubelet keeps one HTTP/2
//! connection open per resource for ListAndWatch, and the original device
//! manager's rules make one resource per device node. h2 allocates about
//! 34 KiB per connection (fixed 16 KiB write, 8 KiB read and 4 KiB HPACK
//! buffers), so 1,000 nodes cost 35 MiB. Here an idle connection holds no
//! buffer at all: input is read into a stack buffer and only an incomplete
//! frame is kept, output is freed as soon as the socket took it. And
//! kubelets before 1.26 send the socket *path* as `:authority`
//! (kubernetes/kubernetes#112597), which h2 refuses with RST_STREAM; a unix
//! socket has no authority to check, so it is ignored here. See
//! `docs/decisions/0016-own-http2-server.md` and
//! `docs/decisions/0125-h2-crate-conformance-and-memory-bound.md`.
//!
//! Modules, by concern:
//! * `frame`: framing constants, error codes, limits, frame writing;
//! * `hpack`: the encoder side of HPACK (decoding is `loona-hpack`'s);
//! * `grpc`: gRPC message framing and statuses;
//! * `conn`: one connection's state machine, no I/O;
//! * `mux`: the epoll multiplexer that drives every connection from one
//!   tokio task;
//! * `client`: one unary call over a fresh connection.
//!
//! What is implemented (RFC 9113 server side, RFC 7541 via `loona-hpack`
//! for decoding): the preface, SETTINGS (with ACK), PING, WINDOW_UPDATE and
//! send-side flow control per stream and connection, HEADERS with
//! CONTINUATION, padding and priority fields, DATA, RST_STREAM, GOAWAY
//! (graceful on stop, with an error code on a protocol violation). gRPC:
//! unary calls and server-streaming "watch" calls whose messages come from
//! a [`Feed`] (only the newest value is ever queued, so a slow reader costs
//! at most one message). Not implemented, because no kubelet uses them:
//! server push, request compression (answered with UNIMPLEMENTED), client
//! streaming, priorities (parsed and ignored).

mod client;
mod conn;
mod frame;
mod grpc;
mod hpack;
mod mux;
mod service;

pub use client::{CallError, call_unix};
pub use conn::Conn;
pub use frame::{
    ConnError, H2Error, MAX_BUFFERED_INPUT, MAX_HEADER_BLOCK, MAX_MESSAGE, MAX_STREAMS, RECV_WINDOW,
};
pub use grpc::Status;
pub use mux::Mux;
pub use service::{Call, Feed, Handler, StopSignal};

#[cfg(test)]
mod tests;
