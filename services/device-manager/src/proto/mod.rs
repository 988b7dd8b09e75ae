//! Generated code for the kubelet device plugin API (see `proto/README.md`).

/// `v1beta1`: Registration (kubelet) and DevicePlugin (us) services.
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
