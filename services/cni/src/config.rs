//! The installer's TOML configuration (`smarter-cni install`). The plugin
//! itself is configured by the CNI network config on stdin.

use std::path::PathBuf;

use serde::Deserialize;
use smarter_common::config::{Invalid, Validate};

/// Default config file location.
pub const DEFAULT_CONFIG_PATH: &str = "/etc/smarter/cni.toml";

/// Installer configuration.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Where CNI plugin binaries go.
    pub bin_dir: PathBuf,
    /// Where the network config list goes.
    pub conf_dir: PathBuf,
    /// Directory of attachment records read by smarter-dns.
    pub records_dir: PathBuf,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            bin_dir: PathBuf::from("/opt/cni/bin"),
            conf_dir: PathBuf::from("/etc/cni/net.d"),
            records_dir: PathBuf::from(smarter_common::records::DEFAULT_DIR),
        }
    }
}

impl Validate for Config {
    fn validate(&self) -> Result<(), Invalid> {
        for (field, path) in [
            ("bin_dir", &self.bin_dir),
            ("conf_dir", &self.conf_dir),
            ("records_dir", &self.records_dir),
        ] {
            if !path.is_absolute() {
                return Err(Invalid::new(
                    field,
                    path.display(),
                    "must be an absolute path",
                ));
            }
        }
        Ok(())
    }
}
