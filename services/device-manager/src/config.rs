//! The native TOML configuration.

use std::path::PathBuf;

use serde::Deserialize;
use smarter_common::config::{Invalid, Validate};

/// Default config file location.
pub const DEFAULT_CONFIG_PATH: &str = "/etc/smarter/device-manager.toml";
/// Where the kubelet looks for device plugin sockets.
pub const DEFAULT_PLUGIN_DIR: &str = "/var/lib/kubelet/device-plugins";
/// Device root scanned for nodes.
pub const DEFAULT_DEV_ROOT: &str = "/dev";
/// Sysfs root (udev properties, Jetson GPUs).
pub const DEFAULT_SYS_ROOT: &str = "/sys";

/// Top-level configuration.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Directory holding `kubelet.sock` and our plugin sockets.
    pub plugin_dir: PathBuf,
    /// Root of the device tree (`/dev`).
    pub dev_root: PathBuf,
    /// Root of sysfs (`/sys`).
    pub sys_root: PathBuf,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            plugin_dir: PathBuf::from(DEFAULT_PLUGIN_DIR),
            dev_root: PathBuf::from(DEFAULT_DEV_ROOT),
            sys_root: PathBuf::from(DEFAULT_SYS_ROOT),
        }
    }
}

impl Validate for Config {
    fn validate(&self) -> Result<(), Invalid> {
        for (field, path) in [
            ("plugin_dir", &self.plugin_dir),
            ("dev_root", &self.dev_root),
            ("sys_root", &self.sys_root),
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
