//! The provisioning file: `smarter-provision.toml` at the root of the boot
//! partition. This module is the one definition of its format; the flasher
//! validates with it before writing a byte and the gateway validates with it
//! before applying anything.
//!
//! ```toml
//! version = 1
//! server = "https://k3s.example.com:6443"   # https URL of the k3s server
//! token = "K10...::server:..."              # join token
//! node_name = "gw-0001"                     # RFC 1123 DNS subdomain
//! [node_labels]                             # merged over the default labels
//! "smarter.dns" = "enabled"
//! ```

use std::collections::BTreeMap;
use std::path::Path;

use serde::Deserialize;
use smarter_common::config::{ConfigError, Invalid, Validate};

/// File name at the root of the boot partition.
pub const FILE_NAME: &str = "smarter-provision.toml";
/// Where the gateway finds it (the boot partition is mounted at `/boot`).
pub const DEFAULT_PATH: &str = "/boot/smarter-provision.toml";
/// Linux's limit on a hostname (`HOST_NAME_MAX`); the node name is one.
pub const HOSTNAME_MAX: usize = 64;
/// The only format version this build understands.
pub const VERSION: u32 = 1;

/// A parsed provisioning file. Construct it with [`parse`] or [`load`], which
/// validate every field.
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Provision {
    /// Format version; must be [`VERSION`].
    pub version: u32,
    /// `https://host[:port]` of the k3s server.
    pub server: String,
    /// The join token (the server's `node-token`). Never logged or printed.
    pub token: String,
    /// Kubernetes node name, also the gateway's hostname.
    pub node_name: String,
    /// Labels added to (or replacing the value of) the default node labels.
    #[serde(default)]
    pub node_labels: BTreeMap<String, String>,
}

// Hand-written so the token never reaches a log line.
impl std::fmt::Debug for Provision {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Provision")
            .field("version", &self.version)
            .field("server", &self.server)
            .field("token", &"<redacted>")
            .field("node_name", &self.node_name)
            .field("node_labels", &self.node_labels)
            .finish()
    }
}

/// Read and validate the provisioning file at `path`. Errors name the file,
/// the field and the value (except the token's value, which is never shown).
pub fn load(path: &Path) -> Result<Provision, ConfigError> {
    smarter_common::config::load(path)
}

/// Parse and validate provisioning text; `path` is only used in messages.
pub fn parse(path: &Path, text: &str) -> Result<Provision, ConfigError> {
    smarter_common::config::parse(path, text)
}

impl Validate for Provision {
    fn validate(&self) -> Result<(), Invalid> {
        if self.version != VERSION {
            return Err(Invalid::new(
                "version",
                self.version,
                format!("this smarter-provision understands version {VERSION} only"),
            ));
        }
        check_server(&self.server)
            .map_err(|reason| Invalid::new("server", &self.server, reason))?;
        check_token(&self.token).map_err(|reason| Invalid::new("token", "<redacted>", reason))?;
        check_dns_subdomain(&self.node_name)
            .and_then(|()| {
                if self.node_name.len() > HOSTNAME_MAX {
                    Err(format!(
                        "is {} characters long; it is also the gateway's hostname, at most {HOSTNAME_MAX}",
                        self.node_name.len()
                    ))
                } else {
                    Ok(())
                }
            })
            .map_err(|reason| Invalid::new("node_name", &self.node_name, reason))?;
        for (key, value) in &self.node_labels {
            check_label_key(key)
                .map_err(|reason| Invalid::new(format!("node_labels.\"{key}\""), key, reason))?;
            check_label_value(value)
                .map_err(|reason| Invalid::new(format!("node_labels.\"{key}\""), value, reason))?;
        }
        Ok(())
    }
}

/// `https://host[:port][/]`: what k3s's `server:` accepts and nothing that
/// could break the YAML it is written into.
fn check_server(server: &str) -> Result<(), String> {
    let rest = server
        .strip_prefix("https://")
        .ok_or("must be an https:// URL of the k3s server, e.g. https://k3s.example.com:6443")?;
    let authority = rest.strip_suffix('/').unwrap_or(rest);
    if authority.contains(['/', '?', '#', '@']) {
        return Err("must be https://host[:port] with no path, query or user".into());
    }
    let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
        let (addr, after) = v6
            .split_once(']')
            .ok_or("IPv6 address is missing its closing ]")?;
        addr.parse::<std::net::Ipv6Addr>()
            .map_err(|_| format!("{addr:?} is not an IPv6 address"))?;
        let port = match after {
            "" => None,
            p => Some(p.strip_prefix(':').ok_or("expected :port after ]")?),
        };
        return check_port(port);
    } else {
        match authority.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (authority, None),
        }
    };
    if host.is_empty() {
        return Err("has no host".into());
    }
    if host.parse::<std::net::Ipv4Addr>().is_err() {
        check_dns_subdomain(&host.to_ascii_lowercase())
            .map_err(|r| format!("host {host:?}: {r}"))?;
    }
    check_port(port)
}

fn check_port(port: Option<&str>) -> Result<(), String> {
    match port {
        None => Ok(()),
        Some(p) => match p.parse::<u16>() {
            Ok(n) if n > 0 => Ok(()),
            _ => Err(format!("port {p:?} is not a number from 1 to 65535")),
        },
    }
}

fn check_token(token: &str) -> Result<(), String> {
    if token.is_empty() {
        return Err(
            "must not be empty: use the server's /var/lib/rancher/k3s/server/node-token".into(),
        );
    }
    if !token.chars().all(|c| c.is_ascii_graphic()) {
        return Err("must be printable ASCII without spaces or line breaks".into());
    }
    Ok(())
}

/// RFC 1123 DNS subdomain, as Kubernetes requires of node names.
pub fn check_dns_subdomain(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("must not be empty".into());
    }
    if name.len() > 253 {
        return Err(format!("is {} characters long; at most 253", name.len()));
    }
    for label in name.split('.') {
        check_dns_label(label)?;
    }
    Ok(())
}

fn check_dns_label(label: &str) -> Result<(), String> {
    if label.is_empty() || label.len() > 63 {
        return Err("each dot-separated part must be 1 to 63 characters".into());
    }
    if !label
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
    {
        return Err("only lowercase letters, digits, '-' and '.' are allowed (RFC 1123)".into());
    }
    if label.starts_with('-') || label.ends_with('-') {
        return Err("a part must start and end with a letter or digit (RFC 1123)".into());
    }
    Ok(())
}

/// `[prefix/]name`, Kubernetes label key syntax.
fn check_label_key(key: &str) -> Result<(), String> {
    let name = match key.rsplit_once('/') {
        Some((prefix, name)) => {
            check_dns_subdomain(prefix).map_err(|r| format!("label key prefix {prefix:?}: {r}"))?;
            name
        }
        None => key,
    };
    if name.is_empty() {
        return Err("label key has an empty name".into());
    }
    check_label_name(name).map_err(|r| format!("label key: {r}"))
}

fn check_label_value(value: &str) -> Result<(), String> {
    if value.is_empty() {
        return Ok(());
    }
    check_label_name(value).map_err(|r| format!("label value: {r}"))
}

/// Up to 63 of `[A-Za-z0-9._-]`, starting and ending alphanumeric.
fn check_label_name(s: &str) -> Result<(), String> {
    if s.len() > 63 {
        return Err(format!("is {} characters long; at most 63", s.len()));
    }
    if !s
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
    {
        return Err("only letters, digits, '-', '_' and '.' are allowed".into());
    }
    let first_last_ok = |b: Option<u8>| b.is_some_and(|b| b.is_ascii_alphanumeric());
    if !first_last_ok(s.bytes().next()) || !first_last_ok(s.bytes().last()) {
        return Err("must start and end with a letter or digit".into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
version = 1
server = "https://k3s.example.com:6443"
token = "K10abc::server:secret"
node_name = "gw-0001"
[node_labels]
"smarter.dns" = "enabled"
"example.com/site" = "lab-1"
"#;

    fn err(text: &str) -> String {
        match parse(Path::new("/boot/smarter-provision.toml"), text) {
            Ok(p) => format!("unexpectedly valid: {p:?}"),
            Err(e) => e.to_string(),
        }
    }

    fn with(field: &str, value: &str) -> String {
        GOOD.lines()
            .map(|l| {
                if l.starts_with(&format!("{field} =")) {
                    format!("{field} = {value}")
                } else {
                    l.to_string()
                }
            })
            .collect::<Vec<_>>()
            .join("\n")
    }

    #[test]
    fn good_file_parses() {
        let p = parse(Path::new("x"), GOOD).map_err(|e| e.to_string());
        assert!(p.is_ok(), "{p:?}");
    }

    #[test]
    fn servers() {
        for ok in [
            "https://k3s.example.com:6443",
            "https://k3s:6443/",
            "https://10.0.0.1:6443",
            "https://[fd00::1]:6443",
            "https://K3S.Example.com",
        ] {
            assert_eq!(check_server(ok), Ok(()), "{ok}");
        }
        for bad in [
            "http://k3s:6443",
            "https://",
            "https://k3s:0",
            "https://k3s:99999",
            "https://k3s:6443/path",
            "https://user@k3s",
            "https://k3s server",
            "https://[zz::1]:6443",
            "k3s:6443",
        ] {
            assert!(check_server(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn bad_server_names_field_and_value() {
        let e = err(&with("server", "\"http://k3s:6443\""));
        assert!(e.starts_with("config /boot/smarter-provision.toml: field `server`: invalid value \"http://k3s:6443\""), "{e}");
    }

    #[test]
    fn token_is_never_shown() {
        let e = err(&with("token", "\"has space\""));
        assert!(e.contains("field `token`"), "{e}");
        assert!(!e.contains("has space"), "{e}");
        let e = err(&with("token", "\"\""));
        assert!(e.contains("must not be empty"), "{e}");
        let p = parse(Path::new("x"), GOOD).map(|p| format!("{p:?}"));
        assert!(p.as_deref().is_ok_and(|s| !s.contains("secret")), "{p:?}");
    }

    #[test]
    fn node_names() {
        for ok in ["gw-0001", "a", "gw.site-1.example"] {
            assert_eq!(check_dns_subdomain(ok), Ok(()), "{ok}");
        }
        for bad in [
            "",
            "GW",
            "gw_1",
            "-gw",
            "gw-",
            "a..b",
            &"a".repeat(64),
            "gw 1",
        ] {
            assert!(check_dns_subdomain(bad).is_err(), "{bad}");
        }
        let e = err(&with("node_name", "\"Gateway_1\""));
        assert!(
            e.contains("field `node_name`: invalid value \"Gateway_1\""),
            "{e}"
        );
    }

    #[test]
    fn labels() {
        assert_eq!(check_label_key("smarter.dns"), Ok(()));
        assert_eq!(check_label_key("example.com/site"), Ok(()));
        assert!(check_label_key("Example.com/site").is_err());
        assert!(check_label_key("a/").is_err());
        assert!(check_label_key("-x").is_err());
        assert_eq!(check_label_value(""), Ok(()));
        assert!(check_label_value("a=b").is_err());
        let e = err(&format!("{GOOD}\"bad key!\" = \"x\"\n"));
        assert!(e.contains("field `node_labels.\"bad key!\"`"), "{e}");
        let e = err(&format!("{GOOD}\"ok\" = \"-bad\"\n"));
        assert!(e.contains("invalid value \"-bad\""), "{e}");
    }

    #[test]
    fn unknown_field_and_version() {
        let e = err(&format!("nodename = \"x\"\n{GOOD}"));
        assert!(e.contains("nodename"), "{e}");
        let e = err(&with("version", "2"));
        assert!(e.contains("field `version`: invalid value \"2\""), "{e}");
        let e = err("version = 1\n");
        assert!(e.contains("missing field `server`"), "{e}");
    }
}
