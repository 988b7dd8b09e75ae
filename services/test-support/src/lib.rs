//! What every SMARTER service's tests share, in one place so that each
//! crate's `tests/` holds only what is particular to that service.
//!
//! * [`require`]: a test whose peer (dnsmasq, OpenSSH, dockerd...) or
//!   privilege (root) is missing skips with the reason, or fails with it
//!   when `CI` or `SMARTER_REQUIRE_PEERS` is set, so CI never passes a test
//!   that did not run.
//! * [`netns`]: a named network namespace (and veth pairs into it) deleted
//!   on drop, also when the test panics.
//! * [`wait`]: waiting for a condition with a deadline, failing with an
//!   error that names what was awaited, instead of sleep loops.
//! * [`port`]: starting a peer that cannot report its address (dnsmasq,
//!   sshd, a child binary) on a port it picks and retries on "address in
//!   use", instead of binding a port, releasing it and hoping.
//! * [`process`]: a child process killed and reaped on drop.
//! * `generated` (feature `proto`): committed gRPC code is current.
//!
//! A dev-dependency only (`publish = false`); nothing here is built into a
//! service.

#[cfg(feature = "proto")]
pub mod generated;
pub mod netns;
pub mod port;
pub mod process;
pub mod require;
pub mod wait;

pub use netns::{Netns, NetnsError, Veth};
pub use port::{RefusedPort, StartError, listening, start_with_retry, stderr_text, wait_started};
pub use process::{ChildGuard, wait_exit};
pub use require::{have, is_root, peers_required, require_peer, require_root, skip};
#[cfg(feature = "tokio")]
pub use wait::wait_until_async;
pub use wait::{Ready, Timeout, wait_until};
