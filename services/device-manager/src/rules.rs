//! Compiled rules and the naming rules shared with the original.
//!
//! [`compile`] turns [`RuleConfig`]s into [`Rule`]s, checking everything that
//! can be checked without looking at the host: regexes and globs compile,
//! `max_users` is at least 1, permissions are a set of `r`/`w`/`m`, paths are
//! absolute, and a pooled name is a valid extended-resource name of at most
//! 63 characters (the kubelet's limit), so errors surface at `--check-config`
//! and not at registration.

use std::collections::BTreeMap;

use regex::Regex;
use smarter_common::config::Invalid;

use crate::config::{IdSource, MountConfig, RuleConfig, Source};

/// The extended-resource domain of every resource we advertise.
pub const RESOURCE_DOMAIN: &str = "smarter-devices";
/// The kubelet's limit on the name part of an extended resource.
pub const MAX_NAME_LEN: usize = 63;

/// The original's sanitising: keep `[A-Za-z0-9_-]`, map the rest to `_`.
pub fn sanitize(rel: &str) -> String {
    rel.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// `smarter-devices/<name>`.
pub fn resource_name(name: &str) -> String {
    format!("{RESOURCE_DOMAIN}/{name}")
}

/// The socket file name for a resource: `smarter-<name>.sock`.
pub fn socket_name(name: &str) -> String {
    format!("smarter-{name}.sock")
}

/// Check a name part as the kubelet will: at most 63 characters of
/// `[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?`. The error says why.
pub fn check_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("must not be empty".into());
    }
    if name.len() > MAX_NAME_LEN {
        return Err(format!(
            "is {} characters; the kubelet allows at most {MAX_NAME_LEN} after `{RESOURCE_DOMAIN}/`",
            name.len()
        ));
    }
    let ok_inner = name
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    let ends_ok = name.starts_with(|c: char| c.is_ascii_alphanumeric())
        && name.ends_with(|c: char| c.is_ascii_alphanumeric());
    if !ok_inner || !ends_ok {
        return Err(
            "must be letters, digits, `-`, `_` or `.`, starting and ending with a letter or digit"
                .into(),
        );
    }
    Ok(())
}

/// What a rule matches.
#[derive(Debug, Clone)]
pub struct Matcher {
    /// Regex on the relative path.
    pub path: Option<Regex>,
    /// Glob on the relative path.
    pub glob: Option<glob::Pattern>,
    /// udev properties, each value a glob.
    pub udev: Vec<(String, glob::Pattern)>,
}

impl Matcher {
    /// Does the relative path pass the path matchers (regex and glob)?
    pub fn path_matches(&self, rel: &str) -> bool {
        self.path.as_ref().is_none_or(|r| r.is_match(rel))
            && self.glob.as_ref().is_none_or(|g| {
                g.matches_with(
                    rel,
                    glob::MatchOptions {
                        case_sensitive: true,
                        require_literal_separator: true,
                        require_literal_leading_dot: false,
                    },
                )
            })
    }

    /// Do the udev properties match (all given ones, missing = no match)?
    pub fn udev_matches(&self, props: &BTreeMap<String, String>) -> bool {
        self.udev
            .iter()
            .all(|(k, pat)| props.get(k).is_some_and(|v| pat.matches(v)))
    }
}

/// A bind mount, absolute paths.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountRule {
    /// Host side.
    pub host_path: String,
    /// Container side.
    pub container_path: String,
    /// Read-only.
    pub read_only: bool,
}

/// A compiled rule.
#[derive(Debug, Clone)]
pub struct Rule {
    /// Position in the config (for messages).
    pub index: usize,
    /// The config it came from; equal configs mean an unchanged rule.
    pub source_config: RuleConfig,
    /// What it matches.
    pub matcher: Matcher,
    /// Pooled resource name part, if pooled.
    pub pool: Option<String>,
    /// Concurrent users per device.
    pub max_users: u32,
    /// cgroup permissions.
    pub permissions: String,
    /// Container path template.
    pub container_path: Option<String>,
    /// Extra nodes per device (templates).
    pub with: Vec<String>,
    /// Env templates.
    pub env: BTreeMap<String, String>,
    /// Mounts.
    pub mounts: Vec<MountRule>,
    /// CDI kind.
    pub cdi_kind: Option<String>,
    /// ID source for pooled devices.
    pub id: IdSource,
    /// Where devices come from.
    pub source: Source,
}

impl Rule {
    /// Does this rule need udev properties to decide?
    pub fn needs_properties(&self) -> bool {
        !self.matcher.udev.is_empty()
    }
}

/// Compile and check all rules; `prefix` names the list in errors
/// (`rules` gives `rules[3].path`).
pub fn compile(configs: &[RuleConfig], prefix: &str) -> Result<Vec<Rule>, Invalid> {
    configs
        .iter()
        .enumerate()
        .map(|(i, c)| compile_one(i, c, &format!("{prefix}[{i}]")))
        .collect()
}

fn compile_one(index: usize, c: &RuleConfig, field: &str) -> Result<Rule, Invalid> {
    let f = |name: &str| format!("{field}.{name}");
    let path = match &c.path {
        Some(p) => {
            Some(Regex::new(p).map_err(|e| Invalid::new(f("path"), p, one_line(&e.to_string())))?)
        }
        None => None,
    };
    let glob = match &c.glob {
        Some(g) => {
            Some(glob::Pattern::new(g).map_err(|e| Invalid::new(f("glob"), g, e.msg.to_string()))?)
        }
        None => None,
    };
    let mut udev = Vec::new();
    for (k, v) in &c.udev {
        if k.is_empty() || !k.chars().all(|ch| ch.is_ascii_alphanumeric() || ch == '_') {
            return Err(Invalid::new(
                f("udev"),
                k,
                "property names are letters, digits and `_` (e.g. ID_VENDOR_ID)",
            ));
        }
        let pat = glob::Pattern::new(v)
            .map_err(|e| Invalid::new(format!("{field}.udev.{k}"), v, e.msg.to_string()))?;
        udev.push((k.clone(), pat));
    }
    if c.source == crate::config::Source::Dev && path.is_none() && glob.is_none() && udev.is_empty()
    {
        return Err(Invalid::new(
            field.to_string(),
            "",
            "a rule needs at least one of `path`, `glob` or `udev`",
        ));
    }
    if c.max_users == 0 {
        return Err(Invalid::new(
            f("max_users"),
            0,
            "must be at least 1 (how many containers may share a device)",
        ));
    }
    if c.max_users > 10_000 {
        return Err(Invalid::new(
            f("max_users"),
            c.max_users,
            "must be at most 10000",
        ));
    }
    let perms_ok = !c.permissions.is_empty()
        && c.permissions
            .chars()
            .all(|ch| matches!(ch, 'r' | 'w' | 'm'))
        && {
            let mut v: Vec<char> = c.permissions.chars().collect();
            v.sort_unstable();
            v.dedup();
            v.len() == c.permissions.len()
        };
    if !perms_ok {
        return Err(Invalid::new(
            f("permissions"),
            &c.permissions,
            "must be a combination of r, w and m, e.g. \"rw\" or \"rwm\"",
        ));
    }
    if let Some(name) = &c.name {
        check_name(name).map_err(|why| Invalid::new(f("name"), name, why))?;
    }
    if let Some(cp) = &c.container_path
        && !cp.starts_with('/')
    {
        return Err(Invalid::new(
            f("container_path"),
            cp,
            "must be an absolute path",
        ));
    }
    for (i, w) in c.with.iter().enumerate() {
        if w.is_empty() || w.starts_with('/') || w.split('/').any(|s| s == "..") {
            return Err(Invalid::new(
                format!("{field}.with[{i}]"),
                w,
                "must be a path relative to the device root, without `..`",
            ));
        }
    }
    for k in c.env.keys() {
        if k.is_empty() || k.contains('=') {
            return Err(Invalid::new(f("env"), k, "not a valid variable name"));
        }
    }
    let mut mounts = Vec::new();
    for (i, m) in c.mounts.iter().enumerate() {
        let MountConfig {
            host_path,
            container_path,
            read_only,
        } = m;
        for (name, p) in [("host_path", host_path), ("container_path", container_path)] {
            if !p.starts_with('/') {
                return Err(Invalid::new(
                    format!("{field}.mounts[{i}].{name}"),
                    p,
                    "must be an absolute path",
                ));
            }
        }
        mounts.push(MountRule {
            host_path: host_path.clone(),
            container_path: container_path.clone(),
            read_only: *read_only,
        });
    }
    if let Some(kind) = &c.cdi_kind {
        let ok = kind
            .split_once('/')
            .is_some_and(|(v, cl)| !v.is_empty() && !cl.is_empty() && !cl.contains('/'))
            && !kind.contains('=');
        if !ok {
            return Err(Invalid::new(
                f("cdi_kind"),
                kind,
                "must be `vendor/class`, e.g. \"smarter-devices.io/serial\"",
            ));
        }
    }
    Ok(Rule {
        index,
        source_config: c.clone(),
        matcher: Matcher { path, glob, udev },
        pool: c.name.clone(),
        max_users: c.max_users,
        permissions: c.permissions.clone(),
        container_path: c.container_path.clone(),
        with: c.with.clone(),
        env: c.env.clone(),
        mounts,
        cdi_kind: c.cdi_kind.clone(),
        id: c.id,
        source: c.source,
    })
}

fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// Trailing decimal digits of the last path component (`video10` → `10`).
pub fn trailing_number(rel: &str) -> &str {
    let last = rel.rsplit('/').next().unwrap_or(rel);
    let digits = last.chars().rev().take_while(char::is_ascii_digit).count();
    &last[last.len() - digits..]
}

/// Fill `{path}`, `{num}` and `{id}` in a template.
pub fn expand(template: &str, rel: &str, id: &str) -> String {
    template
        .replace("{path}", rel)
        .replace("{num}", trailing_number(rel))
        .replace("{id}", id)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::RuleConfig;

    #[test]
    fn sanitize_matches_original() {
        assert_eq!(sanitize("net/tun"), "net_tun");
        assert_eq!(sanitize("snd"), "snd");
        assert_eq!(sanitize("i2c-1"), "i2c-1");
        assert_eq!(sanitize("vcsm.cma"), "vcsm_cma");
        assert_eq!(sanitize("bus/usb/001/002"), "bus_usb_001_002");
        assert_eq!(sanitize("serial/by-id/usb-ÄB:1"), "serial_by-id_usb-_B_1");
    }

    #[test]
    fn names_and_sockets() {
        assert_eq!(resource_name("net_tun"), "smarter-devices/net_tun");
        assert_eq!(socket_name("net_tun"), "smarter-net_tun.sock");
        assert!(check_name(&"a".repeat(63)).is_ok());
        assert!(check_name(&"a".repeat(64)).is_err());
        assert!(check_name("_x").is_err());
        assert!(check_name("usb-serial").is_ok());
    }

    #[test]
    fn bad_rules_name_their_field() {
        let mut r = RuleConfig::from_devicematch("^tty(", 1);
        let e = compile(&[r.clone()], "rules").err().map(|e| e.to_string());
        assert!(
            e.as_deref().unwrap_or("").contains("rules[0].path"),
            "{e:?}"
        );
        r.path = Some("^x$".into());
        r.permissions = "rwx".into();
        let e = compile(&[r.clone()], "rules").err().map(|e| e.to_string());
        assert!(e.as_deref().unwrap_or("").contains("permissions"), "{e:?}");
        r.permissions = "rwm".into();
        r.container_path = Some("dev/x".into());
        assert!(compile(&[r], "rules").is_err());
    }

    #[test]
    fn unanchored_like_go() -> Result<(), Invalid> {
        let rules = compile(&[RuleConfig::from_devicematch("tty", 1)], "rules")?;
        assert!(rules[0].matcher.path_matches("ttyUSB0"));
        assert!(rules[0].matcher.path_matches("xttyz"));
        Ok(())
    }

    #[test]
    fn templates() {
        assert_eq!(trailing_number("video10"), "10");
        assert_eq!(trailing_number("snd"), "");
        assert_eq!(expand("media{num}", "video3", "x"), "media3");
        assert_eq!(expand("/dev/{path}:{id}", "a/b1", "k"), "/dev/a/b1:k");
    }
}
