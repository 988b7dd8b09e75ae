//! The installer's TOML configuration (`smarter-cni install`). The plugin
//! itself is configured by the CNI network config on stdin, which the
//! installer writes from these settings.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use smarter_common::config::{Invalid, Validate};

use crate::ipam::Ipv4Net;

/// Default config file location.
pub const DEFAULT_CONFIG_PATH: &str = "/etc/smarter/cni.toml";
/// Bin directory used when `/usr/libexec/cni` does not exist.
pub const DEFAULT_BIN_DIR: &str = "/opt/cni/bin";
/// Bin directory preferred where it exists (some distributions' containerd).
pub const LIBEXEC_BIN_DIR: &str = "/usr/libexec/cni";

/// Installer configuration.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Where CNI plugin binaries go; unset: `/usr/libexec/cni` if it exists,
    /// else `/opt/cni/bin` (the original installer's rule).
    pub bin_dir: Option<PathBuf>,
    /// Where the network config list goes.
    pub conf_dir: PathBuf,
    /// File name of the conflist (the original's name by default).
    pub conflist_name: String,
    /// `cniVersion` written into the conflist.
    pub cni_version: String,
    /// CNI network name.
    pub network: String,
    /// Bridge name.
    pub bridge: String,
    /// Pod subnet.
    pub subnet: String,
    /// Gateway (bridge) address; unset: the subnet's first address.
    pub gateway: Option<Ipv4Addr>,
    /// MTU of bridge and veths; unset: kernel default.
    pub mtu: Option<u32>,
    /// Masquerade traffic leaving the subnet.
    pub ip_masq: bool,
    /// Drop new connections routed into the pods from other interfaces.
    pub deny_inbound: bool,
    /// IPAM state directory.
    pub data_dir: PathBuf,
    /// Directory of attachment records read by smarter-dns.
    pub records_dir: PathBuf,
    /// Chain the standard `portmap` plugin (hostPort) after ours.
    pub portmap: bool,
    /// Tenant isolation between Kubernetes namespaces.
    pub isolation: bool,
    /// With isolation: namespaces every namespace may reach.
    pub isolation_shared: Vec<String>,
    /// With isolation: pairs of namespaces that may talk to each other.
    pub isolation_allow: Vec<[String; 2]>,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            bin_dir: None,
            conf_dir: PathBuf::from("/etc/cni/net.d"),
            conflist_name: "0-smarter-bridge.conflist".into(),
            cni_version: "1.0.0".into(),
            network: "smartnet".into(),
            bridge: crate::netconf::DEFAULT_BRIDGE.into(),
            subnet: crate::netconf::DEFAULT_SUBNET.into(),
            gateway: None,
            mtu: None,
            ip_masq: true,
            deny_inbound: true,
            data_dir: PathBuf::from(crate::netconf::DEFAULT_DATA_DIR),
            records_dir: PathBuf::from(smarter_common::records::DEFAULT_DIR),
            portmap: true,
            isolation: false,
            isolation_shared: vec!["kube-system".into()],
            isolation_allow: Vec::new(),
        }
    }
}

impl Config {
    /// The bin directory to use.
    pub fn bin_dir(&self) -> PathBuf {
        match &self.bin_dir {
            Some(d) => d.clone(),
            None if Path::new(LIBEXEC_BIN_DIR).is_dir() => PathBuf::from(LIBEXEC_BIN_DIR),
            None => PathBuf::from(DEFAULT_BIN_DIR),
        }
    }
}

impl Validate for Config {
    fn validate(&self) -> Result<(), Invalid> {
        if let Some(d) = &self.bin_dir
            && !d.is_absolute()
        {
            return Err(Invalid::new(
                "bin_dir",
                d.display(),
                "must be an absolute path",
            ));
        }
        for (field, path) in [
            ("conf_dir", &self.conf_dir),
            ("data_dir", &self.data_dir),
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
        if !self.conflist_name.ends_with(".conflist") || self.conflist_name.contains('/') {
            return Err(Invalid::new(
                "conflist_name",
                &self.conflist_name,
                "must be a file name ending in .conflist",
            ));
        }
        if !crate::spec::is_supported(&self.cni_version) {
            return Err(Invalid::new(
                "cni_version",
                &self.cni_version,
                "must be one of 0.3.0, 0.3.1, 0.4.0, 1.0.0, 1.1.0",
            ));
        }
        if self.network.is_empty()
            || !self
                .network
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
        {
            return Err(Invalid::new(
                "network",
                &self.network,
                "must be [A-Za-z0-9_.-]+",
            ));
        }
        if !crate::spec::valid_ifname(&self.bridge) {
            return Err(Invalid::new(
                "bridge",
                &self.bridge,
                "must be a valid interface name",
            ));
        }
        let net: Ipv4Net = self
            .subnet
            .parse()
            .map_err(|e: String| Invalid::new("subnet", &self.subnet, e))?;
        if let Some(gw) = self.gateway
            && !net.contains(gw)
        {
            return Err(Invalid::new("gateway", gw, format!("must be inside {net}")));
        }
        if let Some(mtu) = self.mtu
            && !(68..=65535).contains(&mtu)
        {
            return Err(Invalid::new("mtu", mtu, "must be within 68..=65535"));
        }
        Ok(())
    }
}
