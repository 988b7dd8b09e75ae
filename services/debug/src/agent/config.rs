//! smarter-debug-agent TOML configuration.

use std::path::PathBuf;

use serde::Deserialize;
use smarter_common::config::{Invalid, Validate};

/// Default config file location.
pub const DEFAULT_CONFIG_PATH: &str = "/etc/smarter/debug-agent.toml";

/// Agent configuration.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// `host:port` of the comms SSH endpoint.
    pub comms_address: String,
    /// State directory (the agent's key, pinned host key).
    pub state_dir: PathBuf,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            comms_address: "comms.example.com:2222".into(),
            state_dir: PathBuf::from("/var/lib/smarter/debug-agent"),
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
