//! The TOML configuration.

use std::path::PathBuf;

use serde::Deserialize;
use smarter_common::config::{Invalid, Validate};

/// Default config file location.
pub const DEFAULT_CONFIG_PATH: &str = "/etc/smarter/dns.toml";

/// Server configuration.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Directory of attachment records written by smarter-cni.
    pub records_dir: PathBuf,
    /// TTL of local answers, seconds.
    pub ttl: u32,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            records_dir: PathBuf::from(smarter_common::records::DEFAULT_DIR),
            ttl: 5,
        }
    }
}

impl Validate for Config {
    fn validate(&self) -> Result<(), Invalid> {
        if !self.records_dir.is_absolute() {
            return Err(Invalid::new(
                "records_dir",
                self.records_dir.display(),
                "must be an absolute path",
            ));
        }
        if self.ttl > 86_400 {
            return Err(Invalid::new(
                "ttl",
                self.ttl,
                "must be at most 86400 seconds",
            ));
        }
        Ok(())
    }
}
