//! smarter-dns: a local, event-driven DNS server for the apps of one gateway.
//!
//! Background: the original SMARTER DNS was CoreDNS serving a hosts file that
//! a shell loop rebuilt every 30 s from `crictl`, reached through a UDP-only
//! iptables DNAT. This crate replaces it with one process:
//!
//! * [`zone`]: which local names exist (pod name, hostname, app name, in the
//!   four forms of the original) and what they answer; no I/O.
//! * [`watch`]: inotify on the records directory smarter-cni writes and on
//!   the host's resolv.conf; a record is served the moment it is renamed
//!   into place.
//! * [`forward`]: everything else goes to the host's upstreams, with a
//!   bounded cache, bounded in-flight queries and failover.
//! * [`server`]: the hickory-server request handler (UDP and TCP), refusing
//!   zone transfers.
//! * [`fastpath`]: the UDP loop's cache of encoded answers, replayed for
//!   repeated questions while they stay exactly what the handler would say;
//!   [`batch`]: `recvmmsg`/`sendmmsg`, many datagrams per system call.
//! * [`link`]: the dummy interface that carries the cluster DNS address
//!   (169.254.0.2), so no iptables redirect is needed.
//! * [`runtime`]: hostnames, app labels and host-network pods from CRI
//!   (containerd) or the Docker Engine API.
//! * [`service`]: wiring on pre-bound sockets, plus `/metrics`.
//!
//! Limitations: no DNSSEC, no zone transfers, no dynamic updates; answers
//! only on the configured internal addresses.

pub mod batch;
pub mod config;
pub mod fastpath;
pub mod forward;
pub mod link;
pub mod metrics;
pub mod proto;
pub mod runtime;
pub mod server;
pub mod service;
pub mod watch;
pub mod zone;
