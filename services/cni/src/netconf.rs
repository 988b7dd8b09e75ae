//! The network configuration a runtime passes on stdin.
//!
//! Field names follow the reference `bridge` plugin where the meaning is the
//! same, so the original SMARTER conflist works with only its `type`
//! changed. Defaults differ from `bridge` where SMARTER's network needs it:
//! a bare `{"cniVersion":"1.1.0","name":"smartnet","type":"smarter-cni"}`
//! gives the original SMARTER network (bridge `smartnet0`, 172.39.0.0/16,
//! gateway .1, default route, masquerade, hairpin).

use std::net::Ipv4Addr;
use std::path::PathBuf;

use serde::Deserialize;
use serde_json::{Map, Value};

use crate::ipam::Ipv4Net;
use crate::spec::{self, CniError, Dns, code};

/// Default bridge name (the original's).
pub const DEFAULT_BRIDGE: &str = "smartnet0";
/// Default subnet (the original's).
pub const DEFAULT_SUBNET: &str = "172.39.0.0/16";
/// Default IPAM state directory.
pub const DEFAULT_DATA_DIR: &str = "/var/lib/smarter/cni/networks";
/// Default Docker Engine socket.
pub const DEFAULT_DOCKER_SOCKET: &str = "/var/run/docker.sock";

/// Fields of the reference `bridge` plugin that this plugin does not
/// implement: set to anything but their "off" value they give error 2.
const UNSUPPORTED_BRIDGE_FIELDS: &[&str] = &[
    "vlan",
    "vlanTrunk",
    "promiscMode",
    "macspoofchk",
    "enabledad",
    "preserveDefaultVlan",
    "disableContainerInterface",
    "portIsolation",
    "isolation_mode",
];

/// How the plugin attaches containers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Bridge + veth over netlink.
    #[default]
    Native,
    /// Docker user-defined network (k3s `--docker`).
    Docker,
}

/// Per-namespace tenant isolation.
#[derive(Debug, Clone, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct IsolationConf {
    /// Turn isolation on.
    #[serde(default)]
    pub enabled: bool,
    /// Pairs of namespaces that may talk to each other (both directions).
    #[serde(default)]
    pub allow: Vec<[String; 2]>,
    /// Namespaces that may talk to every namespace (e.g. `kube-system`).
    #[serde(default)]
    pub shared: Vec<String>,
}

/// Docker mode settings.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DockerConf {
    /// Docker Engine API socket.
    #[serde(default = "default_docker_socket")]
    pub socket: PathBuf,
    /// User-defined network name; defaults to the CNI network `name`.
    #[serde(default)]
    pub network: Option<String>,
}

fn default_docker_socket() -> PathBuf {
    PathBuf::from(DEFAULT_DOCKER_SOCKET)
}

impl Default for DockerConf {
    fn default() -> Self {
        Self {
            socket: default_docker_socket(),
            network: None,
        }
    }
}

/// One entry of `cni.dev/valid-attachments` (GC).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Attachment {
    /// Container id.
    #[serde(rename = "containerID")]
    pub container_id: String,
    /// Interface name.
    pub ifname: String,
}

/// The IPAM section as written.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawIpam {
    #[serde(rename = "type", default)]
    kind: Option<String>,
    subnet: Option<String>,
    gateway: Option<Ipv4Addr>,
    range_start: Option<Ipv4Addr>,
    range_end: Option<Ipv4Addr>,
    data_dir: Option<PathBuf>,
    #[serde(flatten)]
    other: Map<String, Value>,
}

/// IPAM: built in, or delegated to another plugin.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ipam {
    /// Our own file-backed allocator.
    Builtin(BuiltinIpam),
    /// Exec this plugin from `CNI_PATH` with the same config.
    Delegate(String),
}

/// Settings of the built-in IPAM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BuiltinIpam {
    /// Subnet addresses come from.
    pub subnet: Ipv4Net,
    /// Gateway (bridge address).
    pub gateway: Ipv4Addr,
    /// First address handed out.
    pub range_start: Ipv4Addr,
    /// Last address handed out.
    pub range_end: Ipv4Addr,
    /// State directory; allocations live in `<data_dir>/<network name>/`.
    pub data_dir: PathBuf,
}

/// A parsed, validated network configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct NetConf {
    /// `cniVersion`.
    pub cni_version: String,
    /// Network name.
    pub name: String,
    /// `type` (our binary name, or whatever the runtime used).
    pub plugin_type: String,
    /// Attachment mode.
    pub mode: Mode,
    /// Bridge name.
    pub bridge: String,
    /// Give the bridge the gateway address.
    pub is_gateway: bool,
    /// Add a default route via the gateway in the container.
    pub is_default_gateway: bool,
    /// Masquerade traffic leaving the subnet.
    pub ip_masq: bool,
    /// Drop new connections routed into the pods from other interfaces.
    pub deny_inbound: bool,
    /// Let a pod reach itself through the bridge.
    pub hairpin_mode: bool,
    /// MTU of bridge and veth; `None` keeps the kernel default.
    pub mtu: Option<u32>,
    /// IPAM.
    pub ipam: Ipam,
    /// DNS settings copied into the result.
    pub dns: Dns,
    /// Directory of DNS records.
    pub records_dir: PathBuf,
    /// Tenant isolation.
    pub isolation: IsolationConf,
    /// Docker mode settings.
    pub docker: DockerConf,
    /// `prevResult` (chained plugins, CHECK and DEL).
    pub prev_result: Option<Value>,
    /// `cni.dev/valid-attachments` (GC).
    pub valid_attachments: Option<Vec<Attachment>>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawConf {
    cni_version: String,
    #[serde(default)]
    name: String,
    #[serde(rename = "type", default)]
    plugin_type: String,
    #[serde(default)]
    mode: Mode,
    bridge: Option<String>,
    is_gateway: Option<bool>,
    is_default_gateway: Option<bool>,
    ip_masq: Option<bool>,
    deny_inbound: Option<bool>,
    hairpin_mode: Option<bool>,
    #[serde(default)]
    force_address: bool,
    mtu: Option<u32>,
    ipam: Option<RawIpam>,
    dns: Option<Dns>,
    records_dir: Option<PathBuf>,
    #[serde(default)]
    isolation: IsolationConf,
    #[serde(default)]
    docker: DockerConf,
    prev_result: Option<Value>,
    #[serde(rename = "cni.dev/valid-attachments")]
    valid_attachments: Option<Vec<Attachment>>,
    #[serde(flatten)]
    other: Map<String, Value>,
}

fn is_off(v: &Value) -> bool {
    match v {
        Value::Null => true,
        Value::Bool(b) => !b,
        Value::Number(n) => n.as_f64() == Some(0.0),
        Value::String(s) => s.is_empty(),
        Value::Array(a) => a.is_empty(),
        Value::Object(o) => o.is_empty(),
    }
}

fn invalid(msg: impl Into<String>) -> CniError {
    CniError::new(code::INVALID_CONFIG, msg)
}

/// Only the `cniVersion` of a config, for VERSION and for tagging errors
/// when the rest does not parse.
pub fn peek_version(stdin: &[u8]) -> Option<String> {
    #[derive(Deserialize)]
    struct V {
        #[serde(rename = "cniVersion")]
        cni_version: String,
    }
    serde_json::from_slice::<V>(stdin)
        .ok()
        .map(|v| v.cni_version)
}

impl NetConf {
    /// Parse and validate stdin.
    pub fn parse(stdin: &[u8]) -> Result<Self, CniError> {
        let raw: RawConf = serde_json::from_slice(stdin).map_err(|e| {
            CniError::new(code::DECODE, "cannot decode network configuration")
                .with_details(e.to_string())
        })?;
        if !spec::is_supported(&raw.cni_version) {
            return Err(CniError::new(
                code::INCOMPATIBLE_VERSION,
                format!("unsupported cniVersion {:?}", raw.cni_version),
            )
            .with_details(format!(
                "supported: {}",
                spec::SUPPORTED_VERSIONS.join(", ")
            )));
        }
        if raw.name.is_empty() {
            return Err(invalid("network name is missing"));
        }
        for field in UNSUPPORTED_BRIDGE_FIELDS {
            if let Some(v) = raw.other.get(*field)
                && !is_off(v)
            {
                return Err(CniError::new(
                    code::UNSUPPORTED_FIELD,
                    format!("field {field:?} is not supported by smarter-cni"),
                ));
            }
        }
        let _ = raw.force_address; // accepted: the bridge always gets the gateway address
        let bridge = raw.bridge.unwrap_or_else(|| DEFAULT_BRIDGE.to_string());
        if !spec::valid_ifname(&bridge) {
            return Err(invalid(format!(
                "bridge name {bridge:?} is not a valid interface name"
            )));
        }
        if let Some(mtu) = raw.mtu
            && !(68..=65535).contains(&mtu)
        {
            return Err(invalid(format!("mtu {mtu} is outside 68..=65535")));
        }
        let is_default_gateway = raw.is_default_gateway.unwrap_or(true);
        let is_gateway = raw.is_gateway.unwrap_or(true) || is_default_gateway;
        let ipam = parse_ipam(raw.ipam.unwrap_or_default())?;
        let conf = Self {
            cni_version: raw.cni_version,
            name: raw.name,
            plugin_type: raw.plugin_type,
            mode: raw.mode,
            bridge,
            is_gateway,
            is_default_gateway,
            ip_masq: raw.ip_masq.unwrap_or(true),
            deny_inbound: raw.deny_inbound.unwrap_or(true),
            hairpin_mode: raw.hairpin_mode.unwrap_or(true),
            mtu: raw.mtu,
            ipam,
            dns: raw.dns.unwrap_or_default(),
            records_dir: raw
                .records_dir
                .unwrap_or_else(|| PathBuf::from(smarter_common::records::DEFAULT_DIR)),
            isolation: raw.isolation,
            docker: raw.docker,
            prev_result: raw.prev_result,
            valid_attachments: raw.valid_attachments,
        };
        if !conf
            .name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
        {
            return Err(invalid(format!(
                "network name {:?} has characters outside [A-Za-z0-9_.-]",
                conf.name
            )));
        }
        Ok(conf)
    }
}

fn parse_ipam(raw: RawIpam) -> Result<Ipam, CniError> {
    match raw.kind.as_deref() {
        None | Some("") | Some("smarter-cni") => {}
        Some(other) => return Ok(Ipam::Delegate(other.to_string())),
    }
    for field in ["ranges", "routes", "resolvConf"] {
        if raw.other.get(field).is_some_and(|v| !is_off(v)) {
            return Err(CniError::new(
                code::UNSUPPORTED_FIELD,
                format!("ipam field {field:?} is not supported by the built-in IPAM"),
            )
            .with_details("use subnet/gateway/rangeStart/rangeEnd, or ipam.type host-local"));
        }
    }
    let subnet_s = raw.subnet.unwrap_or_else(|| DEFAULT_SUBNET.to_string());
    let subnet: Ipv4Net = subnet_s
        .parse()
        .map_err(|e| invalid(format!("ipam.subnet {subnet_s:?}: {e}")))?;
    if subnet.prefix() > 30 {
        return Err(invalid(format!(
            "ipam.subnet {subnet} is too small (need /30 or larger)"
        )));
    }
    let subnet = subnet.network();
    let gateway = raw.gateway.unwrap_or_else(|| subnet.nth(1));
    if !subnet.contains(gateway) || gateway == subnet.addr() || gateway == subnet.broadcast() {
        return Err(invalid(format!(
            "ipam.gateway {gateway} is not a host address of {subnet}"
        )));
    }
    let range_start = raw.range_start.unwrap_or_else(|| subnet.nth(1));
    let range_end = raw
        .range_end
        .unwrap_or_else(|| Ipv4Addr::from(u32::from(subnet.broadcast()) - 1));
    for (field, ip) in [("rangeStart", range_start), ("rangeEnd", range_end)] {
        if !subnet.contains(ip) || ip == subnet.addr() || ip == subnet.broadcast() {
            return Err(invalid(format!(
                "ipam.{field} {ip} is not a host address of {subnet}"
            )));
        }
    }
    if u32::from(range_start) > u32::from(range_end) {
        return Err(invalid(format!(
            "ipam.rangeStart {range_start} is after rangeEnd {range_end}"
        )));
    }
    Ok(Ipam::Builtin(BuiltinIpam {
        subnet,
        gateway,
        range_start,
        range_end,
        data_dir: raw
            .data_dir
            .unwrap_or_else(|| PathBuf::from(DEFAULT_DATA_DIR)),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bare_config_gets_smarter_defaults() -> Result<(), CniError> {
        let c =
            NetConf::parse(br#"{"cniVersion":"1.1.0","name":"smartnet","type":"smarter-cni"}"#)?;
        assert_eq!(c.bridge, "smartnet0");
        assert!(c.is_gateway && c.is_default_gateway && c.ip_masq && c.hairpin_mode);
        let Ipam::Builtin(b) = c.ipam else {
            return Err(invalid("expected builtin"));
        };
        assert_eq!(b.subnet.to_string(), "172.39.0.0/16");
        assert_eq!(b.gateway, Ipv4Addr::new(172, 39, 0, 1));
        assert_eq!(b.range_end, Ipv4Addr::new(172, 39, 255, 254));
        Ok(())
    }

    #[test]
    fn errors_have_spec_codes() {
        let cases: &[(&[u8], u32)] = &[
            (b"{", code::DECODE),
            (br#"{"cniVersion":"0.2.0","name":"n","type":"t"}"#, code::INCOMPATIBLE_VERSION),
            (br#"{"cniVersion":"9.9.9","name":"n","type":"t"}"#, code::INCOMPATIBLE_VERSION),
            (br#"{"cniVersion":"1.0.0","type":"t"}"#, code::INVALID_CONFIG),
            (br#"{"cniVersion":"1.0.0","name":"n","vlan":5}"#, code::UNSUPPORTED_FIELD),
            (br#"{"cniVersion":"1.0.0","name":"n","ipam":{"subnet":"10.0.0.0/33"}}"#, code::INVALID_CONFIG),
            (br#"{"cniVersion":"1.0.0","name":"n","ipam":{"subnet":"10.0.0.0/24","gateway":"10.0.1.1"}}"#, code::INVALID_CONFIG),
            (br#"{"cniVersion":"1.0.0","name":"n","ipam":{"ranges":[[{"subnet":"10.0.0.0/24"}]]}}"#, code::UNSUPPORTED_FIELD),
            (br#"{"cniVersion":"1.0.0","name":"n","mtu":20}"#, code::INVALID_CONFIG),
        ];
        for (input, want) in cases {
            let got = NetConf::parse(input).map(|_| ()).map_err(|e| e.code);
            assert_eq!(got, Err(*want), "{}", String::from_utf8_lossy(input));
        }
    }

    #[test]
    fn vlan_zero_is_accepted_and_delegation_detected() -> Result<(), CniError> {
        let c = NetConf::parse(
            br#"{"cniVersion":"0.3.1","name":"n","vlan":0,"ipam":{"type":"host-local","subnet":"10.1.0.0/16"}}"#,
        )?;
        assert_eq!(c.ipam, Ipam::Delegate("host-local".into()));
        Ok(())
    }
}
