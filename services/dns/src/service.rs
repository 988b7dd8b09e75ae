//! Wiring: sockets, the watchers, the server and the metrics and probe
//! endpoint (`/metrics`, `/healthz`, `/readyz`).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hickory_proto::rr::Name;
use socket2::{Domain, Protocol, Socket, Type};
use tokio::net::{TcpListener, UdpSocket};

use crate::config::{Config, Runtime};
use crate::forward::{Forwarder, ForwarderConfig};
use crate::metrics::Metrics;
use crate::runtime::{Cri, Docker, Source};
use crate::server::{Handler, serve};
use crate::watch::{LocalNames, WatchConfig, Watcher};

/// Starting or running the service failed.
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    /// A listening socket could not be set up.
    #[error("cannot {op} {addr}: {source}")]
    Socket {
        /// What we were doing.
        op: &'static str,
        /// The address concerned.
        addr: SocketAddr,
        /// The OS error.
        source: std::io::Error,
    },
    /// The cluster domain is not a DNS name.
    #[error("domain {0:?} is not a DNS name")]
    Domain(String),
    /// Watching the records directory failed.
    #[error(transparent)]
    Watch(#[from] crate::watch::WatchError),
    /// The container runtime client could not be set up.
    #[error(transparent)]
    Runtime(#[from] crate::runtime::RuntimeError),
    /// The DNS server stopped with an error.
    #[error("dns server: {0}")]
    Server(String),
}

/// Bind a UDP socket and a TCP listener on `addr`. `IP_FREEBIND` lets us
/// bind an address that is not (yet) configured, e.g. the bridge address
/// before smarter-cni creates the bridge: the socket starts receiving as
/// soon as the address appears.
pub fn bind(addr: SocketAddr) -> Result<(UdpSocket, TcpListener), ServiceError> {
    let err = |op| move |source| ServiceError::Socket { op, addr, source };
    let domain = Domain::for_address(addr);
    let udp = Socket::new(domain, Type::DGRAM, Some(Protocol::UDP))
        .map_err(err("create udp socket for"))?;
    set_common(&udp, addr).map_err(err("configure udp socket for"))?;
    // More sockets may join this address (one per worker thread).
    udp.set_reuse_port(true)
        .map_err(err("configure udp socket for"))?;
    udp.bind(&addr.into()).map_err(err("bind udp"))?;
    // With port 0 (tests), TCP takes the same port as UDP.
    let addr = udp
        .local_addr()
        .ok()
        .and_then(|a| a.as_socket())
        .unwrap_or(addr);
    let tcp = Socket::new(domain, Type::STREAM, Some(Protocol::TCP))
        .map_err(err("create tcp socket for"))?;
    set_common(&tcp, addr).map_err(err("configure tcp socket for"))?;
    tcp.set_reuse_address(true)
        .map_err(err("configure tcp socket for"))?;
    tcp.bind(&addr.into()).map_err(err("bind tcp"))?;
    tcp.listen(1024).map_err(err("listen on"))?;
    let udp = UdpSocket::from_std(udp.into()).map_err(err("register udp"))?;
    let tcp = TcpListener::from_std(tcp.into()).map_err(err("register tcp"))?;
    Ok((udp, tcp))
}

/// Another UDP socket on the address of an existing one (`SO_REUSEPORT`):
/// the kernel spreads clients over the sockets, one per worker thread.
pub fn bind_udp_again(addr: SocketAddr) -> Result<UdpSocket, ServiceError> {
    let err = |op| move |source| ServiceError::Socket { op, addr, source };
    let udp = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))
        .map_err(err("create udp socket for"))?;
    set_common(&udp, addr).map_err(err("configure udp socket for"))?;
    udp.set_reuse_port(true)
        .map_err(err("configure udp socket for"))?;
    udp.bind(&addr.into()).map_err(err("bind udp"))?;
    UdpSocket::from_std(udp.into()).map_err(err("register udp"))
}

fn set_common(s: &Socket, addr: SocketAddr) -> std::io::Result<()> {
    s.set_nonblocking(true)?;
    s.set_cloexec(true)?;
    match addr {
        SocketAddr::V4(_) => s.set_freebind_v4(true)?,
        SocketAddr::V6(_) => {
            s.set_only_v6(true)?;
            s.set_freebind_v6(true)?;
        }
    }
    Ok(())
}

/// The running parts of the service.
pub struct Running {
    /// Bound DNS addresses (UDP and TCP share them).
    pub dns_addrs: Vec<SocketAddr>,
    /// Bound metrics address.
    pub metrics_addr: Option<SocketAddr>,
    /// Local names (for the runtime sources).
    pub names: LocalNames,
    server: hickory_server::Server<Handler>,
    tasks: tokio::task::JoinSet<()>,
}

impl std::fmt::Debug for Running {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Running")
            .field("dns_addrs", &self.dns_addrs)
            .field("metrics_addr", &self.metrics_addr)
            .finish_non_exhaustive()
    }
}

impl Running {
    /// Wait for `stop`, then shut the server down.
    pub async fn run_until(
        mut self,
        stop: impl std::future::Future<Output = ()>,
    ) -> Result<(), ServiceError> {
        tokio::select! {
            () = stop => {}
            r = self.server.block_until_done() => {
                return r.map_err(|e| ServiceError::Server(e.to_string()));
            }
        }
        self.tasks.abort_all();
        let _ = self.server.shutdown_gracefully().await;
        Ok(())
    }
}

/// Start everything on already-bound sockets. Must run inside a tokio
/// runtime.
pub fn start(
    config: &Config,
    sockets: Vec<(UdpSocket, TcpListener)>,
    metrics_listener: Option<TcpListener>,
) -> Result<Running, ServiceError> {
    let metrics = Arc::new(Metrics::default());
    let mut domain = Name::from_ascii(&config.domain)
        .map_err(|_| ServiceError::Domain(config.domain.clone()))?;
    domain.set_fqdn(true);
    let names = LocalNames::new(domain, config.ttl, Arc::clone(&metrics));
    let forwarder = Arc::new(Forwarder::new(
        ForwarderConfig {
            timeout: Duration::from_millis(config.upstream_timeout_ms),
            cache_size: config.cache_size,
            cache_max_ttl: config.cache_max_ttl,
            max_inflight: config.max_inflight,
        },
        Vec::new(),
        Arc::clone(&metrics),
    ));
    let dns_addrs: Vec<SocketAddr> = sockets
        .iter()
        .filter_map(|(u, _)| u.local_addr().ok())
        .collect();
    let mut tasks = tokio::task::JoinSet::new();
    let new_ids = match config.runtime {
        Runtime::None => None,
        kind => {
            let source = match kind {
                Runtime::Docker => Source::Docker(Docker::new(&config.docker_socket)),
                _ => Source::Cri(Cri::connect(&config.cri_socket)?),
            };
            let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
            let resync = Duration::from_secs(config.runtime_resync_s);
            tasks.spawn(crate::runtime::run(source, names.clone(), rx, resync));
            Some(tx)
        }
    };
    let watcher = Watcher::start(
        WatchConfig {
            records_dir: config.records_dir.clone(),
            resolv_conf: Some(config.resolv_conf.clone()),
            upstream_port: config.upstream_port,
            own_addresses: dns_addrs.clone(),
            new_ids,
        },
        names.clone(),
        Arc::clone(&forwarder),
    )?;
    // Sockets bound (they came bound) and records loaded (Watcher::start
    // loads them): ready until the watch stops, when answers would go stale.
    metrics.set_ready(true);
    let watched = Arc::clone(&metrics);
    tasks.spawn(async move {
        if let Err(error) = watcher.run().await {
            tracing::error!(%error, "watching records stopped");
        }
        watched.set_ready(false);
    });
    let metrics_addr = metrics_listener.as_ref().and_then(|l| l.local_addr().ok());
    if let Some(l) = metrics_listener {
        tasks.spawn(smarter_common::metrics::serve(l, Arc::clone(&metrics)));
    }
    let handler = Handler::new(names.zone(), forwarder, metrics);
    let (udp, tcp): (Vec<_>, Vec<_>) = sockets.into_iter().unzip();
    for u in udp {
        if let Ok(addr) = u.local_addr() {
            for _ in 1..config.worker_threads {
                let extra = bind_udp_again(addr)?;
                tasks.spawn(crate::server::serve_udp(extra, handler.clone()));
            }
        }
        tasks.spawn(crate::server::serve_udp(u, handler.clone()));
    }
    let server = serve(handler, tcp);
    Ok(Running {
        dns_addrs,
        metrics_addr,
        names,
        server,
        tasks,
    })
}

/// Print what the records directory currently makes us serve.
pub fn print_records(config: &Config, out: &mut impl std::io::Write) -> std::io::Result<()> {
    let mut domain = Name::from_ascii(&config.domain).unwrap_or_else(|_| Name::root());
    domain.set_fqdn(true);
    let mut store = crate::zone::Store::new(&domain, config.ttl);
    store.replace_records(crate::watch::load_records(&config.records_dir));
    let zone = store.zone();
    for (name, ips) in zone.entries() {
        let ips: Vec<String> = ips.iter().map(ToString::to_string).collect();
        writeln!(out, "{name} {}", ips.join(" "))?;
    }
    for (ip, name) in zone.reverse_entries() {
        writeln!(out, "{} PTR {name}", hickory_proto::rr::Name::from(ip))?;
    }
    Ok(())
}
