//! smarter-comms TOML configuration.

use std::net::SocketAddr;
use std::path::PathBuf;

use serde::Deserialize;
use smarter_common::config::{Invalid, Validate};

/// Default config file location.
pub const DEFAULT_CONFIG_PATH: &str = "/etc/smarter/comms.toml";

/// Comms configuration.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// SSH endpoint for gateways and developers.
    pub ssh_listen: SocketAddr,
    /// REST API address.
    pub api_listen: SocketAddr,
    /// State directory (database, host key).
    pub state_dir: PathBuf,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            ssh_listen: SocketAddr::from(([0, 0, 0, 0], 2222)),
            api_listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            state_dir: PathBuf::from("/var/lib/smarter/comms"),
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
        Ok(())
    }
}
