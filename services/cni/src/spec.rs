//! The CNI protocol (specification 1.1.0) without any I/O: commands and their
//! environment, versions, results per version and error objects.
//!
//! A runtime runs the plugin with `CNI_COMMAND` and friends in the
//! environment and the network configuration on stdin; the plugin prints a
//! result (ADD), nothing (DEL, CHECK, GC, STATUS), a version answer (VERSION)
//! or an error object, all JSON on stdout. This module turns the environment
//! into [`Env`], and [`CniResult`]/[`CniError`] into the JSON a given
//! `cniVersion` expects.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

/// The newest specification version this plugin implements.
pub const SPEC_VERSION: &str = "1.1.0";

/// Every `cniVersion` this plugin accepts in a network config and can
/// produce a result for. 0.3.0 and 0.3.1 share one result format.
pub const SUPPORTED_VERSIONS: &[&str] = &["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"];

/// Error codes defined by the specification.
pub mod code {
    /// Incompatible CNI version.
    pub const INCOMPATIBLE_VERSION: u32 = 1;
    /// Unsupported field in network configuration.
    pub const UNSUPPORTED_FIELD: u32 = 2;
    /// Container unknown or does not exist.
    pub const UNKNOWN_CONTAINER: u32 = 3;
    /// Invalid necessary environment variables.
    pub const INVALID_ENV: u32 = 4;
    /// I/O failure.
    pub const IO: u32 = 5;
    /// Failed to decode content.
    pub const DECODE: u32 = 6;
    /// Invalid network config.
    pub const INVALID_CONFIG: u32 = 7;
    /// Try again later.
    pub const TRY_AGAIN_LATER: u32 = 11;
    /// STATUS: the plugin is not available.
    pub const NOT_AVAILABLE: u32 = 50;
    /// STATUS: the plugin is not available due to limited resources.
    pub const LIMITED_RESOURCES: u32 = 51;
    /// First code of the plugin-specific range (we use it for generic
    /// internal failures such as netlink errors).
    pub const PLUGIN: u32 = 100;
}

/// A CNI error object: printed on stdout with a non-zero exit status.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("CNI error {code}: {msg}{}", if details.is_empty() { String::new() } else { format!(" ({details})") })]
pub struct CniError {
    /// Spec error code (see [`code`]).
    pub code: u32,
    /// Short message.
    pub msg: String,
    /// Longer explanation, may be empty.
    pub details: String,
}

impl CniError {
    /// A new error with empty details.
    pub fn new(code: u32, msg: impl Into<String>) -> Self {
        Self {
            code,
            msg: msg.into(),
            details: String::new(),
        }
    }

    /// Add details.
    #[must_use]
    pub fn with_details(mut self, details: impl Into<String>) -> Self {
        self.details = details.into();
        self
    }

    /// The JSON object for stdout, tagged with `cni_version`.
    pub fn to_json(&self, cni_version: &str) -> Value {
        let mut v = json!({ "cniVersion": cni_version, "code": self.code, "msg": self.msg });
        if !self.details.is_empty() {
            v["details"] = Value::String(self.details.clone());
        }
        v
    }
}

/// `CNI_COMMAND`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    /// Attach a container.
    Add,
    /// Detach a container.
    Del,
    /// Verify an attachment.
    Check,
    /// Release resources of attachments the runtime no longer knows.
    Gc,
    /// Is the plugin ready for ADD?
    Status,
    /// Which versions does the plugin support?
    Version,
}

impl Command {
    /// Parse the environment value.
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "ADD" => Self::Add,
            "DEL" => Self::Del,
            "CHECK" => Self::Check,
            "GC" => Self::Gc,
            "STATUS" => Self::Status,
            "VERSION" => Self::Version,
            _ => return None,
        })
    }

    /// The environment spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Add => "ADD",
            Self::Del => "DEL",
            Self::Check => "CHECK",
            Self::Gc => "GC",
            Self::Status => "STATUS",
            Self::Version => "VERSION",
        }
    }
}

/// The CNI environment of one invocation, validated for its command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Env {
    /// `CNI_COMMAND`.
    pub command: Command,
    /// `CNI_CONTAINERID` (required for ADD, DEL, CHECK).
    pub container_id: String,
    /// `CNI_NETNS` (required for ADD and CHECK; optional for DEL).
    pub netns: Option<PathBuf>,
    /// `CNI_IFNAME` (required for ADD, DEL, CHECK).
    pub ifname: String,
    /// `CNI_ARGS` as key/value pairs.
    pub args: BTreeMap<String, String>,
    /// `CNI_PATH`, split on `:`.
    pub path: Vec<PathBuf>,
}

impl Env {
    /// Read and validate the environment from a lookup function (the real
    /// process environment in production, a map in tests).
    pub fn from_lookup(get: impl Fn(&str) -> Option<String>) -> Result<Self, CniError> {
        let nonempty = |k: &str| get(k).filter(|v| !v.is_empty());
        let cmd = nonempty("CNI_COMMAND")
            .ok_or_else(|| CniError::new(code::INVALID_ENV, "CNI_COMMAND is not set"))?;
        let command = Command::parse(&cmd).ok_or_else(|| {
            CniError::new(code::INVALID_ENV, format!("unknown CNI_COMMAND {cmd:?}"))
        })?;
        let needs_attachment = matches!(command, Command::Add | Command::Del | Command::Check);
        let container_id = nonempty("CNI_CONTAINERID").unwrap_or_default();
        let ifname = nonempty("CNI_IFNAME").unwrap_or_default();
        let netns = nonempty("CNI_NETNS").map(PathBuf::from);
        if needs_attachment {
            if container_id.is_empty() {
                return Err(CniError::new(
                    code::INVALID_ENV,
                    "CNI_CONTAINERID is not set",
                ));
            }
            if !valid_container_id(&container_id) {
                return Err(CniError::new(
                    code::INVALID_ENV,
                    format!(
                        "CNI_CONTAINERID {container_id:?} has characters outside [A-Za-z0-9_.-]"
                    ),
                ));
            }
            if ifname.is_empty() {
                return Err(CniError::new(code::INVALID_ENV, "CNI_IFNAME is not set"));
            }
            if !valid_ifname(&ifname) {
                return Err(CniError::new(
                    code::INVALID_ENV,
                    format!("CNI_IFNAME {ifname:?} is not a valid interface name"),
                ));
            }
        }
        if matches!(command, Command::Add | Command::Check) && netns.is_none() {
            return Err(CniError::new(code::INVALID_ENV, "CNI_NETNS is not set"));
        }
        let args = parse_args(&get("CNI_ARGS").unwrap_or_default())?;
        let path = get("CNI_PATH")
            .unwrap_or_default()
            .split(':')
            .filter(|p| !p.is_empty())
            .map(PathBuf::from)
            .collect();
        Ok(Self {
            command,
            container_id,
            netns,
            ifname,
            args,
            path,
        })
    }

    /// Read the real process environment.
    pub fn from_process() -> Result<Self, CniError> {
        Self::from_lookup(|k| std::env::var(k).ok())
    }

    /// `K8S_POD_NAME` from `CNI_ARGS`.
    pub fn pod_name(&self) -> Option<&str> {
        self.args.get("K8S_POD_NAME").map(String::as_str)
    }

    /// `K8S_POD_NAMESPACE` from `CNI_ARGS`.
    pub fn pod_namespace(&self) -> Option<&str> {
        self.args.get("K8S_POD_NAMESPACE").map(String::as_str)
    }
}

/// Container ids: non-empty, alphanumerics plus `_`, `.` and `-`, starting
/// with an alphanumeric (the spec's rule).
pub fn valid_container_id(id: &str) -> bool {
    id.len() <= 256
        && id.chars().next().is_some_and(|c| c.is_ascii_alphanumeric())
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
}

/// Linux interface names: 1..=15 bytes, not `.`/`..`, no `/`, `:` or
/// whitespace.
pub fn valid_ifname(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 15
        && name != "."
        && name != ".."
        && !name
            .chars()
            .any(|c| c == '/' || c == ':' || c.is_whitespace() || c == '\0')
}

/// `CNI_ARGS`: `K1=V1;K2=V2`. An entry without `=` is a decode error.
pub fn parse_args(s: &str) -> Result<BTreeMap<String, String>, CniError> {
    let mut out = BTreeMap::new();
    for part in s.split(';').filter(|p| !p.is_empty()) {
        let (k, v) = part.split_once('=').ok_or_else(|| {
            CniError::new(
                code::INVALID_ENV,
                format!("CNI_ARGS entry {part:?} has no '='"),
            )
        })?;
        out.insert(k.to_string(), v.to_string());
    }
    Ok(out)
}

/// Whether `version` is one this plugin accepts.
pub fn is_supported(version: &str) -> bool {
    SUPPORTED_VERSIONS.contains(&version)
}

/// Parse `"a.b.c"` for ordering.
pub fn version_tuple(v: &str) -> Option<(u32, u32, u32)> {
    let mut it = v.split('.').map(str::parse::<u32>);
    let major = it.next()?.ok()?;
    let minor = it.next().unwrap_or(Ok(0)).ok()?;
    let patch = it.next().unwrap_or(Ok(0)).ok()?;
    if it.next().is_some() {
        return None;
    }
    Some((major, minor, patch))
}

/// Whether `version` is at least `min` (both `a.b.c`).
pub fn at_least(version: &str, min: &str) -> bool {
    match (version_tuple(version), version_tuple(min)) {
        (Some(a), Some(b)) => a >= b,
        _ => false,
    }
}

/// The VERSION answer.
pub fn version_answer(cni_version: &str) -> Value {
    let v = if is_supported(cni_version) {
        cni_version
    } else {
        SPEC_VERSION
    };
    json!({ "cniVersion": v, "supportedVersions": SUPPORTED_VERSIONS })
}

/// An interface in a result.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct Interface {
    /// Interface name.
    pub name: String,
    /// MAC address, `aa:bb:..`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mac: Option<String>,
    /// Path of the network namespace (only for container-side interfaces).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sandbox: Option<String>,
    /// MTU (1.1.0).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtu: Option<u32>,
}

/// An address in a result.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IpConfig {
    /// Address with prefix, `172.39.0.5/16`.
    pub address: String,
    /// Default gateway of this subnet.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway: Option<IpAddr>,
    /// Index into `interfaces`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interface: Option<usize>,
}

impl IpConfig {
    /// The address without prefix, if it parses.
    pub fn ip(&self) -> Option<IpAddr> {
        self.address.split('/').next()?.parse().ok()
    }
}

/// A route in a result.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Route {
    /// Destination, `0.0.0.0/0`.
    pub dst: String,
    /// Next hop.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gw: Option<IpAddr>,
}

/// DNS settings in a config or result.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct Dns {
    /// Name servers.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub nameservers: Vec<String>,
    /// Local domain.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub domain: Option<String>,
    /// Search domains.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub search: Vec<String>,
    /// resolv.conf options.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub options: Vec<String>,
}

impl Dns {
    /// Nothing set.
    pub fn is_empty(&self) -> bool {
        self.nameservers.is_empty()
            && self.domain.is_none()
            && self.search.is_empty()
            && self.options.is_empty()
    }
}

/// An ADD result in version-neutral form.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct CniResult {
    /// Interfaces created.
    pub interfaces: Vec<Interface>,
    /// Addresses assigned.
    pub ips: Vec<IpConfig>,
    /// Routes added in the container.
    pub routes: Vec<Route>,
    /// DNS settings.
    pub dns: Dns,
}

/// The on-the-wire shape shared by 0.3.x, 0.4.0 and 1.x results (1.x lacks
/// `ips[].version`, which we accept and ignore when reading).
#[derive(Debug, Deserialize)]
struct WireResult {
    #[serde(default)]
    interfaces: Vec<Interface>,
    #[serde(default)]
    ips: Vec<IpConfig>,
    #[serde(default)]
    routes: Vec<Route>,
    #[serde(default)]
    dns: Option<Dns>,
}

impl CniResult {
    /// Parse a result of any supported version (a `prevResult`, or the
    /// output of a delegated IPAM plugin).
    pub fn from_json(v: &Value) -> Result<Self, CniError> {
        let w: WireResult = serde_json::from_value(v.clone()).map_err(|e| {
            CniError::new(code::DECODE, "cannot decode result").with_details(e.to_string())
        })?;
        Ok(Self {
            interfaces: w.interfaces,
            ips: w.ips,
            routes: w.routes,
            dns: w.dns.unwrap_or_default(),
        })
    }

    /// The result JSON for `cni_version`.
    pub fn to_json(&self, cni_version: &str) -> Value {
        let legacy = !at_least(cni_version, "1.0.0");
        let with_mtu = at_least(cni_version, "1.1.0");
        let interfaces: Vec<Value> = self
            .interfaces
            .iter()
            .map(|i| {
                let mut i = i.clone();
                if !with_mtu {
                    i.mtu = None;
                }
                serde_json::to_value(i).unwrap_or(Value::Null)
            })
            .collect();
        let ips: Vec<Value> = self
            .ips
            .iter()
            .map(|ip| {
                let mut v = serde_json::to_value(ip).unwrap_or(Value::Null);
                if legacy {
                    let family = match ip.ip() {
                        Some(IpAddr::V6(_)) => "6",
                        _ => "4",
                    };
                    v["version"] = Value::String(family.into());
                }
                v
            })
            .collect();
        let mut out = json!({ "cniVersion": cni_version });
        if !interfaces.is_empty() {
            out["interfaces"] = Value::Array(interfaces);
        }
        out["ips"] = Value::Array(ips);
        if !self.routes.is_empty() {
            out["routes"] = serde_json::to_value(&self.routes).unwrap_or(Value::Null);
        }
        out["dns"] = serde_json::to_value(&self.dns).unwrap_or(Value::Null);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Result<Env, CniError> {
        let m: BTreeMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Env::from_lookup(|k| m.get(k).cloned())
    }

    #[test]
    fn add_needs_netns_ifname_and_id() {
        let base = [
            ("CNI_COMMAND", "ADD"),
            ("CNI_CONTAINERID", "abc"),
            ("CNI_IFNAME", "eth0"),
            ("CNI_NETNS", "/run/netns/x"),
        ];
        assert!(env(&base).is_ok());
        for skip in 1..base.len() {
            let partial: Vec<_> = base
                .iter()
                .enumerate()
                .filter(|(i, _)| *i != skip)
                .map(|(_, p)| *p)
                .collect();
            assert_eq!(env(&partial).map_err(|e| e.code), Err(code::INVALID_ENV));
        }
    }

    #[test]
    fn del_without_netns_is_fine() {
        let e = env(&[
            ("CNI_COMMAND", "DEL"),
            ("CNI_CONTAINERID", "abc"),
            ("CNI_IFNAME", "eth0"),
        ]);
        assert_eq!(e.map(|e| e.netns), Ok(None));
    }

    #[test]
    fn args_and_path_parse() -> Result<(), CniError> {
        let e = env(&[
            ("CNI_COMMAND", "ADD"),
            ("CNI_CONTAINERID", "abc"),
            ("CNI_IFNAME", "eth0"),
            ("CNI_NETNS", "/run/netns/x"),
            (
                "CNI_ARGS",
                "IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=cam-1",
            ),
            ("CNI_PATH", "/opt/cni/bin:/usr/lib/cni"),
        ])?;
        assert_eq!(e.pod_name(), Some("cam-1"));
        assert_eq!(e.pod_namespace(), Some("default"));
        assert_eq!(e.path.len(), 2);
        Ok(())
    }

    #[test]
    fn rejects_bad_command_id_ifname() {
        let bad = [
            [
                ("CNI_COMMAND", "FOO"),
                ("CNI_CONTAINERID", "a"),
                ("CNI_IFNAME", "eth0"),
            ],
            [
                ("CNI_COMMAND", "DEL"),
                ("CNI_CONTAINERID", "a/b"),
                ("CNI_IFNAME", "eth0"),
            ],
            [
                ("CNI_COMMAND", "DEL"),
                ("CNI_CONTAINERID", "a"),
                ("CNI_IFNAME", "averyveryverylongname"),
            ],
            [
                ("CNI_COMMAND", "DEL"),
                ("CNI_CONTAINERID", "a"),
                ("CNI_IFNAME", ".."),
            ],
        ];
        for b in bad {
            assert_eq!(env(&b).map_err(|e| e.code), Err(code::INVALID_ENV), "{b:?}");
        }
        assert!(env(&[("CNI_COMMAND", "GC")]).is_ok());
        assert!(env(&[("CNI_COMMAND", "VERSION")]).is_ok());
    }

    #[test]
    fn versions_compare() {
        assert!(at_least("1.1.0", "1.0.0"));
        assert!(at_least("0.4.0", "0.4.0"));
        assert!(!at_least("0.3.1", "0.4.0"));
        assert!(!at_least("banana", "0.4.0"));
    }

    #[test]
    fn result_roundtrip_across_versions() -> Result<(), CniError> {
        let r = CniResult {
            interfaces: vec![Interface {
                name: "eth0".into(),
                mac: Some("02:00:00:00:00:01".into()),
                sandbox: Some("/run/netns/x".into()),
                mtu: Some(1500),
            }],
            ips: vec![IpConfig {
                address: "172.39.0.5/16".into(),
                gateway: "172.39.0.1".parse().ok(),
                interface: Some(0),
            }],
            routes: vec![Route {
                dst: "0.0.0.0/0".into(),
                gw: "172.39.0.1".parse().ok(),
            }],
            dns: Dns::default(),
        };
        let old = r.to_json("0.3.1");
        assert_eq!(old["ips"][0]["version"], "4");
        assert!(old["interfaces"][0].get("mtu").is_none());
        let new = r.to_json("1.1.0");
        assert!(new["ips"][0].get("version").is_none());
        assert_eq!(new["interfaces"][0]["mtu"], 1500);
        assert_eq!(CniResult::from_json(&old)?.ips, r.ips);
        assert_eq!(CniResult::from_json(&new)?, r);
        Ok(())
    }
}
