//! The little that every SMARTER service truly shares.
//!
//! * [`config`]: TOML loading with errors that name the file, line and field,
//!   plus validation hooks so `--check-config` catches bad values early.
//! * [`logging`]: one `tracing` set-up, key=value lines on stderr.
//! * [`signals`]: SIGTERM/SIGINT mean stop, SIGHUP means reload, delivered as
//!   events on a channel (signal-hook), never handled in a signal context.
//! * [`capabilities`]: drop every Linux capability a service does not need.
//! * [`records`]: the versioned per-attachment record that `smarter-cni`
//!   writes and `smarter-dns` reads.
//! * [`console`]: one line to `/dev/console` for what an operator must see
//!   at boot (first-boot provisioning, the health gate).
//! * [`metrics`]: counters, gauges and histograms on atomics, the
//!   Prometheus text format, and the one small `/metrics`, `/healthz`,
//!   `/readyz` server every long-running service uses.
//! * [`cli`]: the flags every binary shares (`--config`, `--check-config`,
//!   `--log-level`).
//! * `netlink` (feature `netlink`): the synchronous rtnetlink client of
//!   `smarter-cni` (bridge, veth, addresses, routes) and `smarter-dns` (its
//!   dummy interface), and its `nftables` reader (`smarter-cni` checks
//!   its table and rules with it); the one place a netlink socket is opened.
//! * `docker` (feature `docker`): the Docker Engine API client (`bollard`
//!   over the unix socket) of `smarter-dns` and `smarter-debug-agent`, with
//!   one error naming the socket, the call and the container.
//!
//! Nothing else belongs here: a module moves in only when a second service
//! needs it.

pub mod capabilities;
pub mod cli;
pub mod config;
pub mod console;
#[cfg(feature = "docker")]
pub mod docker;
pub mod logging;
pub mod metrics;
#[cfg(feature = "netlink")]
pub mod netlink;
pub mod records;
pub mod signals;
