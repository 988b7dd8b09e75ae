//! smarter-comms TOML configuration.

use std::net::SocketAddr;
use std::path::PathBuf;

use serde::Deserialize;
use smarter_common::config::{Invalid, Validate};

/// Default config file location.
pub const DEFAULT_CONFIG_PATH: &str = "/etc/smarter/comms.toml";
/// Default SSH port (unprivileged, so comms needs no capabilities).
pub const DEFAULT_SSH_LISTEN: &str = "0.0.0.0:2222";
/// Default REST API address.
pub const DEFAULT_API_LISTEN: &str = "127.0.0.1:8080";
/// Default state directory.
pub const DEFAULT_STATE_DIR: &str = "/var/lib/smarter/comms";

/// Comms configuration.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// SSH endpoint for gateways and developers.
    pub ssh_listen: SocketAddr,
    /// REST API address.
    pub api_listen: SocketAddr,
    /// State directory: `comms.db` (SQLite), `host_key` (created at first
    /// start, public half in `host_key.pub`), `recordings/`.
    pub state_dir: PathBuf,
    /// Hex SHA-256 of the admin bearer token (`printf %s TOKEN | sha256sum`).
    /// Without it every API call except the OpenAPI document is refused.
    pub admin_token_sha256: Option<String>,
    /// PEM certificate chain for the API; with `tls_key` the API speaks HTTPS.
    pub tls_cert: Option<PathBuf>,
    /// PEM private key for `tls_cert`.
    pub tls_key: Option<PathBuf>,
    /// Delay before answering a failed SSH authentication, in milliseconds.
    pub auth_rejection_ms: u64,
    /// Live sessions one developer may have at once; 0 = unlimited.
    pub max_sessions_per_developer: usize,
    /// End a session after this many seconds without a byte either way; 0 = never.
    pub idle_timeout_secs: u64,
    /// Where comms' CPU has AES instructions, offer developers' clients only
    /// AES-GCM on the jump hop, which OpenSSH clients otherwise skip for
    /// ChaCha20-Poly1305, far costlier in comms. Agents' tunnels (told apart
    /// by their identification line) are offered every cipher: the agent
    /// picks AES-GCM where its CPU has AES instructions and ChaCha20-Poly1305
    /// where not (Raspberry Pi 4). False: developers get every cipher too,
    /// for clients without AES-GCM.
    pub aes_gcm_only: bool,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            ssh_listen: DEFAULT_SSH_LISTEN
                .parse()
                .unwrap_or(SocketAddr::from(([0, 0, 0, 0], 2222))),
            api_listen: DEFAULT_API_LISTEN
                .parse()
                .unwrap_or(SocketAddr::from(([127, 0, 0, 1], 8080))),
            state_dir: PathBuf::from(DEFAULT_STATE_DIR),
            admin_token_sha256: None,
            tls_cert: None,
            tls_key: None,
            auth_rejection_ms: 1000,
            max_sessions_per_developer: 8,
            idle_timeout_secs: 1800,
            aes_gcm_only: true,
        }
    }
}

impl Validate for Config {
    fn validate(&self) -> Result<(), Invalid> {
        if !self.state_dir.is_absolute() {
            return Err(Invalid::new(
                "state_dir",
                self.state_dir.display(),
                "must be an absolute path",
            ));
        }
        if let Some(h) = &self.admin_token_sha256
            && (h.len() != 64 || !h.bytes().all(|b| b.is_ascii_hexdigit()))
        {
            return Err(Invalid::new(
                "admin_token_sha256",
                h,
                "must be 64 hex digits (the SHA-256 of the token)",
            ));
        }
        if self.tls_cert.is_some() != self.tls_key.is_some() {
            return Err(Invalid::new(
                "tls_cert",
                format!("{:?}", self.tls_cert),
                "tls_cert and tls_key must be given together",
            ));
        }
        if self.auth_rejection_ms > 10_000 {
            return Err(Invalid::new(
                "auth_rejection_ms",
                self.auth_rejection_ms,
                "must be at most 10000",
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
        let path =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("config/smarter-comms.toml");
        let c: Config = smarter_common::config::load(&path).unwrap();
        assert_eq!(c.ssh_listen.port(), 2222);
    }

    #[test]
    fn bad_token_hash_is_refused() {
        let c = Config {
            admin_token_sha256: Some("abc".into()),
            ..Config::default()
        };
        assert!(c.validate().is_err());
    }
}
