//! Generated code for the CRI RuntimeService subset (see `proto/README.md`).

/// `runtime.v1`: the RuntimeService client (and server, for the test fake).
#[rustfmt::skip]
#[allow(
    missing_docs,
    unreachable_pub,
    missing_debug_implementations,
    clippy::all,
    clippy::pedantic,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic
)]
#[path = "runtime.v1.rs"]
pub mod runtime_v1;
