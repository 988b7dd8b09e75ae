//! smarter-debug-agent TOML configuration.

use std::path::PathBuf;

use serde::Deserialize;
use smarter_common::config::{Invalid, Validate};

/// Default config file location.
pub const DEFAULT_CONFIG_PATH: &str = "/etc/smarter/debug-agent.toml";
/// Default sftp server run for the `sftp` subsystem (Debian's openssh-sftp-server).
pub const DEFAULT_SFTP_SERVER: &str = "/usr/lib/openssh/sftp-server";

/// Agent configuration.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// `host:port` of the comms SSH endpoint.
    pub comms_address: String,
    /// Comms' SSH host key (OpenSSH public key line, from comms'
    /// `state_dir/host_key.pub`). The agent refuses any other key.
    pub comms_host_key: String,
    /// This gateway's name as enrolled at comms (what developers type as host).
    pub gateway_name: String,
    /// State directory: `agent_key` (created at first start, public half in
    /// `agent_key.pub`, which is what comms enrols), `recordings/` pending upload.
    pub state_dir: PathBuf,
    /// Seconds between keepalives on the tunnel; three missed ones drop it.
    pub keepalive_secs: u64,
    /// Longest wait between reconnection attempts, in seconds (backoff doubles from 1 s).
    pub max_backoff_secs: u64,
    /// Shell for interactive sessions and commands (`shell -c CMD`).
    pub shell: PathBuf,
    /// Program serving the `sftp` subsystem (also used by modern `scp`).
    pub sftp_server: PathBuf,
    /// Docker Engine API socket used to find a pod's process (its
    /// `io.kubernetes.pod.namespace`/`io.kubernetes.pod.name` labels).
    pub docker_socket: PathBuf,
    /// containerd task state directories searched first for a pod's process
    /// (k3s' embedded containerd, then a stand-alone one).
    pub containerd_state_dirs: Vec<PathBuf>,
    /// Host sessions run in the namespaces of this process: 1 (default) is
    /// the real host when the agent runs in a pod with `hostPID: true`; 0
    /// keeps them in the agent's own namespaces (agent installed on the host).
    pub host_namespaces_pid: u32,
    /// `ip:port` for `/metrics`, `/healthz` and `/readyz` (plain HTTP); empty
    /// = none. Keep it on loopback: the DaemonSet runs on the host network,
    /// where the kubelet's probes reach 127.0.0.1 and nothing else may listen.
    pub metrics_listen: String,
    /// Where the gateway's CPU has AES instructions, offer developers' SSH
    /// clients only AES-GCM for the session (much cheaper here than
    /// ChaCha20-Poly1305, which OpenSSH clients otherwise pick). Set false
    /// for clients that lack AES-GCM (OpenSSH before 6.2, PuTTY before 0.76).
    pub session_aes_gcm_only: bool,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            comms_address: "comms.example.com:2222".into(),
            comms_host_key: String::new(),
            gateway_name: String::new(),
            state_dir: PathBuf::from("/var/lib/smarter/debug-agent"),
            keepalive_secs: 15,
            max_backoff_secs: 30,
            shell: PathBuf::from("/bin/sh"),
            sftp_server: PathBuf::from(DEFAULT_SFTP_SERVER),
            docker_socket: PathBuf::from("/var/run/docker.sock"),
            containerd_state_dirs: vec![
                PathBuf::from("/run/k3s/containerd/io.containerd.runtime.v2.task/k8s.io"),
                PathBuf::from("/run/containerd/io.containerd.runtime.v2.task/k8s.io"),
            ],
            host_namespaces_pid: 1,
            metrics_listen: String::new(),
            session_aes_gcm_only: true,
        }
    }
}

impl Validate for Config {
    fn validate(&self) -> Result<(), Invalid> {
        if !self.comms_address.contains(':') {
            return Err(Invalid::new(
                "comms_address",
                &self.comms_address,
                "must be host:port",
            ));
        }
        if crate::keys::parse_public(&self.comms_host_key).is_err() {
            return Err(Invalid::new(
                "comms_host_key",
                &self.comms_host_key,
                "must be an OpenSSH public key line (comms' host_key.pub)",
            ));
        }
        if self.gateway_name.is_empty() || !crate::comms::api::valid_name(&self.gateway_name) {
            return Err(Invalid::new(
                "gateway_name",
                &self.gateway_name,
                "must match [a-z0-9][a-z0-9._-]{0,62}",
            ));
        }
        for (field, p) in [
            ("state_dir", &self.state_dir),
            ("shell", &self.shell),
            ("sftp_server", &self.sftp_server),
            ("docker_socket", &self.docker_socket),
        ] {
            if !p.is_absolute() {
                return Err(Invalid::new(field, p.display(), "must be an absolute path"));
            }
        }
        if !self.metrics_listen.is_empty()
            && self.metrics_listen.parse::<std::net::SocketAddr>().is_err()
        {
            return Err(Invalid::new(
                "metrics_listen",
                &self.metrics_listen,
                "must be ip:port, e.g. 127.0.0.1:9466, or empty",
            ));
        }
        if self.keepalive_secs == 0 || self.max_backoff_secs == 0 {
            return Err(Invalid::new(
                "keepalive_secs",
                self.keepalive_secs,
                "keepalive_secs and max_backoff_secs must be > 0",
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sample_config_is_valid() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("config/smarter-debug-agent.toml");
        let c: Config = smarter_common::config::load(&path).unwrap();
        assert_eq!(c.gateway_name, "gateway-17");
    }

    #[test]
    fn host_key_required() {
        assert!(Config::default().validate().is_err());
    }
}
