//! Generated messages of the kubelet device plugin API (see `proto/README.md`).
//! Only the messages: the services are served and called with smarter-h2;
//! the tonic client and server the tests' kubelet double uses are generated
//! beside it, in `tests/support/v1beta1_grpc.rs`.

/// `v1beta1`: the messages of the Registration (kubelet) and DevicePlugin
/// (us) services.
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
pub mod v1beta1;
