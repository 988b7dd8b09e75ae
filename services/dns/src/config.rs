//! The TOML configuration. Every key is optional; defaults are the `DEFAULT_*`
//! constants and are listed in the README and the sample config.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;

use serde::Deserialize;
use smarter_common::config::{Invalid, Validate};

/// Default config file location.
pub const DEFAULT_CONFIG_PATH: &str = "/etc/smarter/dns.toml";
/// The cluster DNS address given to the kubelet (the original contract).
pub const DEFAULT_CLUSTER_DNS: Ipv4Addr = Ipv4Addr::new(169, 254, 0, 2);
/// Cluster domain.
pub const DEFAULT_DOMAIN: &str = "cluster.local";
/// Dummy interface that carries the cluster DNS address.
pub const DEFAULT_DUMMY_INTERFACE: &str = "smarterdns0";
/// Host resolver configuration with the upstreams.
pub const DEFAULT_RESOLV_CONF: &str = "/etc/resolv.conf";
/// containerd's CRI socket under k3s.
pub const DEFAULT_CRI_SOCKET: &str = "/run/k3s/containerd/containerd.sock";
/// Docker Engine API socket.
pub const DEFAULT_DOCKER_SOCKET: &str = "/var/run/docker.sock";

/// Where pod metadata (hostname, labels, host-network pods) comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Runtime {
    /// Records only: pod names from smarter-cni.
    None,
    /// A CRI runtime (containerd) over its unix socket.
    Cri,
    /// The Docker Engine API over its unix socket.
    Docker,
}

/// Server configuration.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Directory of attachment records written by smarter-cni.
    pub records_dir: PathBuf,
    /// TTL of local answers, seconds.
    pub ttl: u32,
    /// Cluster domain of the `<name>.<ns>.svc.<domain>` forms.
    pub domain: String,
    /// Addresses to answer on (UDP and TCP). Only internal addresses:
    /// the cluster DNS address and the bridge address.
    pub listen: Vec<IpAddr>,
    /// Port to answer on.
    pub port: u16,
    /// Dummy interface to create and put the link-local `listen` addresses
    /// on; empty to manage no interface.
    pub dummy_interface: String,
    /// Host resolv.conf naming the upstream resolvers.
    pub resolv_conf: PathBuf,
    /// Port of the upstream resolvers.
    pub upstream_port: u16,
    /// Time to wait for one upstream before failing over, milliseconds.
    pub upstream_timeout_ms: u64,
    /// Maximum cached upstream answers.
    pub cache_size: usize,
    /// Longest time an upstream answer is cached, seconds.
    pub cache_max_ttl: u32,
    /// Maximum questions in flight upstream at once.
    pub max_inflight: usize,
    /// Address for the Prometheus `/metrics` endpoint; none when absent.
    pub metrics_listen: Option<SocketAddr>,
    /// Source of pod metadata.
    pub runtime: Runtime,
    /// CRI socket (runtime = "cri").
    pub cri_socket: PathBuf,
    /// Docker socket (runtime = "docker").
    pub docker_socket: PathBuf,
    /// Full re-list of pods from the runtime every this many seconds (finds
    /// host-network pods under CRI, repairs missed events).
    pub runtime_resync_s: u64,
    /// Threads answering queries: 1 runs everything on one thread (lowest
    /// latency, like dnsmasq); more use a multi-threaded runtime with one
    /// UDP socket per thread on each address (`SO_REUSEPORT`).
    pub worker_threads: usize,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            records_dir: PathBuf::from(smarter_common::records::DEFAULT_DIR),
            ttl: 5,
            domain: DEFAULT_DOMAIN.to_string(),
            listen: vec![IpAddr::V4(DEFAULT_CLUSTER_DNS)],
            port: 53,
            dummy_interface: DEFAULT_DUMMY_INTERFACE.to_string(),
            resolv_conf: PathBuf::from(DEFAULT_RESOLV_CONF),
            upstream_port: 53,
            upstream_timeout_ms: 1500,
            cache_size: 10_000,
            cache_max_ttl: 3600,
            max_inflight: 256,
            metrics_listen: None,
            runtime: Runtime::None,
            cri_socket: PathBuf::from(DEFAULT_CRI_SOCKET),
            docker_socket: PathBuf::from(DEFAULT_DOCKER_SOCKET),
            runtime_resync_s: 30,
            worker_threads: 1,
        }
    }
}

fn valid_domain(d: &str) -> bool {
    !d.is_empty()
        && d.len() <= 200
        && d.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
        })
}

impl Validate for Config {
    fn validate(&self) -> Result<(), Invalid> {
        for (field, path) in [
            ("records_dir", &self.records_dir),
            ("resolv_conf", &self.resolv_conf),
            ("cri_socket", &self.cri_socket),
            ("docker_socket", &self.docker_socket),
        ] {
            if !path.is_absolute() {
                return Err(Invalid::new(
                    field,
                    path.display(),
                    "must be an absolute path",
                ));
            }
        }
        if self.ttl > 86_400 {
            return Err(Invalid::new(
                "ttl",
                self.ttl,
                "must be at most 86400 seconds",
            ));
        }
        if !valid_domain(&self.domain) {
            return Err(Invalid::new(
                "domain",
                &self.domain,
                "must be a DNS name like cluster.local",
            ));
        }
        if self.listen.is_empty() {
            return Err(Invalid::new("listen", "[]", "needs at least one address"));
        }
        if let Some(ip) = self
            .listen
            .iter()
            .find(|ip| ip.is_unspecified() || ip.is_multicast())
        {
            return Err(Invalid::new(
                "listen",
                ip,
                "must be a specific internal address (never a wildcard: no open resolver)",
            ));
        }
        if self.dummy_interface.len() > 15
            || self.dummy_interface.contains(['/', ' '])
            || self.dummy_interface == "."
            || self.dummy_interface == ".."
        {
            return Err(Invalid::new(
                "dummy_interface",
                &self.dummy_interface,
                "must be a Linux interface name (at most 15 characters)",
            ));
        }
        if !(10..=30_000).contains(&self.upstream_timeout_ms) {
            return Err(Invalid::new(
                "upstream_timeout_ms",
                self.upstream_timeout_ms,
                "must be between 10 and 30000",
            ));
        }
        if self.cache_size > 10_000_000 {
            return Err(Invalid::new(
                "cache_size",
                self.cache_size,
                "must be at most 10000000",
            ));
        }
        if !(1..=100_000).contains(&self.max_inflight) {
            return Err(Invalid::new(
                "max_inflight",
                self.max_inflight,
                "must be between 1 and 100000",
            ));
        }
        if !(1..=64).contains(&self.worker_threads) {
            return Err(Invalid::new(
                "worker_threads",
                self.worker_threads,
                "must be between 1 and 64",
            ));
        }
        if !(1..=86_400).contains(&self.runtime_resync_s) {
            return Err(Invalid::new(
                "runtime_resync_s",
                self.runtime_resync_s,
                "must be between 1 and 86400",
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use smarter_common::config::{ConfigError, parse};
    use std::path::Path;

    #[test]
    fn sample_config_is_valid_and_shows_defaults() -> Result<(), ConfigError> {
        let p = Path::new(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/config/smarter-dns.toml"
        ));
        let text = std::fs::read_to_string(p).unwrap_or_default();
        let c: Config = parse(p, &text)?;
        let d = Config::default();
        assert_eq!(c.listen, d.listen);
        assert_eq!(c.ttl, d.ttl);
        assert_eq!(c.domain, d.domain);
        assert_eq!(c.runtime, d.runtime);
        Ok(())
    }

    #[test]
    fn wildcard_listen_is_rejected() {
        let p = Path::new("/x.toml");
        let r: Result<Config, _> = parse(p, "listen = [\"0.0.0.0\"]\n");
        assert!(r.is_err());
        let r: Result<Config, _> = parse(p, "listen = [\"::\"]\n");
        assert!(r.is_err());
        let r: Result<Config, _> = parse(p, "domain = \"bad domain\"\n");
        assert!(r.is_err());
        let r: Result<Config, _> = parse(p, "runtime = \"cri\"\n");
        assert!(r.is_ok());
    }
}
