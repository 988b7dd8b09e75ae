//! Deciding which resources and devices the rules make of a host's device
//! tree. No I/O here: the tree comes in as an [`Inventory`] (made by
//! [`crate::scan`]) and udev properties through the [`DeviceInfo`] trait, so
//! every case is a unit test.
//!
//! Semantics:
//! * Each entry is claimed by the **first** rule that matches it.
//! * A rule without `name` makes one resource per match, named after the
//!   sanitized path (the original's behaviour); its devices are that one
//!   match, shared `max_users` times.
//! * A rule with `name` pools every match into one resource; each match is a
//!   device with a stable key (by-id link, serial, or path).
//! * A matched directory is one device made of every node below it.
//! * A matched symlink (`serial/by-id/…`) is resolved: the DeviceSpec's host
//!   path is the real node (the kubelet ignores symlinks), the container path
//!   is the link's path unless the rule says otherwise.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use crate::config::{IdSource, Source};
use crate::rules::{self, MountRule, Rule};

/// What kind of entry a path is (after resolving a symlink).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Character device.
    Char,
    /// Block device.
    Block,
    /// Directory.
    Dir,
}

/// One entry of the device tree.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// Path relative to the device root, `/`-separated.
    pub rel: String,
    /// Kind of the entry, or of its target for a symlink.
    pub kind: Kind,
    /// Device number (major:minor encoded as by the kernel), 0 for dirs.
    pub rdev: u64,
    /// For a symlink: the relative path of the real entry.
    pub target: Option<String>,
}

impl Entry {
    /// The real entry's relative path.
    pub fn real(&self) -> &str {
        self.target.as_deref().unwrap_or(&self.rel)
    }

    /// Is this (or its target) a device node?
    pub fn is_node(&self) -> bool {
        matches!(self.kind, Kind::Char | Kind::Block)
    }
}

/// The device tree and sysfs facts a scan found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Inventory {
    /// Entries by relative path.
    pub entries: BTreeMap<String, Entry>,
    /// Jetson GPU numbers found as `gpu.N` in `<sys>/devices`.
    pub jetson_gpus: Vec<String>,
}

impl Inventory {
    /// Add an entry (builder for tests).
    pub fn with(mut self, rel: &str, kind: Kind, rdev: u64, target: Option<&str>) -> Self {
        self.entries.insert(
            rel.to_string(),
            Entry {
                rel: rel.to_string(),
                kind,
                rdev,
                target: target.map(str::to_string),
            },
        );
        self
    }
}

/// udev properties of a device node, by kind and number.
pub trait DeviceInfo {
    /// Properties such as `SUBSYSTEM`, `ID_VENDOR_ID`, `ID_SERIAL`.
    fn properties(&self, kind: Kind, rdev: u64) -> BTreeMap<String, String>;
}

/// A [`DeviceInfo`] backed by a map, for tests and for `list` without udev.
#[derive(Debug, Clone, Default)]
pub struct StaticInfo(pub BTreeMap<u64, BTreeMap<String, String>>);

impl DeviceInfo for StaticInfo {
    fn properties(&self, _kind: Kind, rdev: u64) -> BTreeMap<String, String> {
        self.0.get(&rdev).cloned().unwrap_or_default()
    }
}

/// One node given to a container.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct NodeSpec {
    /// Real node on the host (symlinks resolved).
    pub host_path: PathBuf,
    /// Where the container sees it.
    pub container_path: String,
    /// Device number when found.
    pub rdev: u64,
}

/// One device: what a container gets for one of its slots.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FoundDevice {
    /// Stable key, unique within the resource, at most 48 characters.
    pub key: String,
    /// Nodes (one, or several for directories and `with`).
    pub nodes: Vec<NodeSpec>,
    /// Environment for the container.
    pub env: BTreeMap<String, String>,
    /// Bind mounts.
    pub mounts: Vec<MountRule>,
    /// Fully-qualified CDI device names.
    pub cdi: Vec<String>,
}

/// A resource and the devices currently behind it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResourceSpec {
    /// Name part after `smarter-devices/`.
    pub name: String,
    /// Index of the rule that made it.
    pub rule: usize,
    /// Concurrent users per device.
    pub max_users: u32,
    /// cgroup permissions for every node.
    pub permissions: String,
    /// Pooled (device IDs from keys) or per-node (IDs `0..max_users`).
    pub pooled: bool,
    /// Devices present now.
    pub devices: Vec<FoundDevice>,
}

/// The outcome of applying the rules.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Discovery {
    /// Resources by name.
    pub resources: BTreeMap<String, ResourceSpec>,
    /// Matches that could not become resources, e.g. a name over 63 chars.
    pub problems: Vec<String>,
}

/// Longest device key; room is left for a `.slot` suffix within 63.
const MAX_KEY_LEN: usize = 48;
/// Directories whose links give stable device IDs.
const BY_ID_DIRS: &[&str] = &["serial/by-id/", "v4l/by-id/", "input/by-id/", "disk/by-id/"];
/// Nodes the original passes with `nvidia-gpu` (`-pass-device-specs`).
const NVIDIA_NODES: &[&str] = &[
    "nvidiactl",
    "nvidia-uvm",
    "nvidia-uvm-tools",
    "nvidia-modeset",
];

/// Apply `rules` to the tree in `inv` under `dev_root`.
pub fn discover(
    rules: &[Rule],
    inv: &Inventory,
    info: &dyn DeviceInfo,
    dev_root: &Path,
) -> Discovery {
    let mut out = Discovery::default();
    let mut claimed: BTreeSet<&str> = BTreeSet::new();
    let by_id = by_id_links(inv);
    for rule in rules {
        match rule.source {
            Source::JetsonGpu => jetson(rule, inv, dev_root, &mut out),
            Source::Dev => {
                for entry in inv.entries.values() {
                    if claimed.contains(entry.rel.as_str())
                        || !rule.matcher.path_matches(&entry.rel)
                    {
                        continue;
                    }
                    if rule.needs_properties() {
                        if !entry.is_node() {
                            continue;
                        }
                        let props = info.properties(entry.kind, entry.rdev);
                        if !rule.matcher.udev_matches(&props) {
                            continue;
                        }
                    }
                    let Some(mut device) = build_device(rule, entry, inv, dev_root) else {
                        continue;
                    };
                    claimed.insert(entry.rel.as_str());
                    match &rule.pool {
                        None => {
                            let name = rules::sanitize(&entry.rel);
                            if let Err(why) = rules::check_name(&name) {
                                out.problems.push(format!(
                                    "rule {}: /{} gives resource name `{}` which {why}; skipped (use a pooled `name`)",
                                    rule.index, entry.rel, name
                                ));
                                continue;
                            }
                            if out.resources.contains_key(&name) {
                                continue;
                            }
                            device.key = name.clone();
                            finish_device(rule, &mut device, &entry.rel);
                            out.resources.insert(
                                name.clone(),
                                ResourceSpec {
                                    name,
                                    rule: rule.index,
                                    max_users: rule.max_users,
                                    permissions: rule.permissions.clone(),
                                    pooled: false,
                                    devices: vec![device],
                                },
                            );
                        }
                        Some(pool) => {
                            device.key = pooled_key(rule, entry, info, &by_id);
                            let res =
                                out.resources
                                    .entry(pool.clone())
                                    .or_insert_with(|| ResourceSpec {
                                        name: pool.clone(),
                                        rule: rule.index,
                                        max_users: rule.max_users,
                                        permissions: rule.permissions.clone(),
                                        pooled: true,
                                        devices: Vec::new(),
                                    });
                            if res.rule != rule.index {
                                out.problems.push(format!(
                                    "rule {}: pool `{pool}` already belongs to rule {}; /{} skipped",
                                    rule.index, res.rule, entry.rel
                                ));
                                continue;
                            }
                            // The same real node reached twice (node and link): keep one.
                            let host = &device.nodes;
                            if res.devices.iter().any(|d| &d.nodes == host) {
                                continue;
                            }
                            let mut key = device.key.clone();
                            let mut n = 2;
                            while res.devices.iter().any(|d| d.key == key) {
                                key = format!("{}-{n}", device.key);
                                n += 1;
                            }
                            device.key = key;
                            finish_device(rule, &mut device, &entry.rel);
                            res.devices.push(device);
                        }
                    }
                }
            }
        }
    }
    for r in out.resources.values_mut() {
        r.devices.sort_by(|a, b| a.key.cmp(&b.key));
    }
    out
}

fn jetson(rule: &Rule, inv: &Inventory, dev_root: &Path, out: &mut Discovery) {
    for n in &inv.jetson_gpus {
        let name = format!("nvidia-gpu{n}");
        if out.resources.contains_key(&name) {
            continue;
        }
        let nodes = NVIDIA_NODES
            .iter()
            .filter_map(|rel| inv.entries.get(*rel).filter(|e| e.is_node()))
            .map(|e| NodeSpec {
                host_path: dev_root.join(e.real()),
                container_path: format!("/dev/{}", e.rel),
                rdev: e.rdev,
            })
            .collect();
        let mut env = BTreeMap::new();
        env.insert("NVIDIA_VISIBLE_DEVICES".to_string(), n.clone());
        let mut device = FoundDevice {
            key: name.clone(),
            nodes,
            env,
            mounts: Vec::new(),
            cdi: Vec::new(),
        };
        finish_device(rule, &mut device, &name);
        out.resources.insert(
            name.clone(),
            ResourceSpec {
                name,
                rule: rule.index,
                max_users: rule.max_users,
                permissions: rule.permissions.clone(),
                pooled: false,
                devices: vec![device],
            },
        );
    }
}

/// Nodes of one matched entry (and its `with` companions); `None` when a
/// companion is missing or the entry holds no node.
fn build_device(
    rule: &Rule,
    entry: &Entry,
    inv: &Inventory,
    dev_root: &Path,
) -> Option<FoundDevice> {
    let mut nodes = Vec::new();
    let base_container = rule
        .container_path
        .as_ref()
        .map(|t| rules::expand(t, &entry.rel, ""))
        .unwrap_or_else(|| format!("/dev/{}", entry.rel));
    match entry.kind {
        Kind::Char | Kind::Block => nodes.push(NodeSpec {
            host_path: dev_root.join(entry.real()),
            container_path: base_container,
            rdev: entry.rdev,
        }),
        Kind::Dir => {
            let prefix = format!("{}/", entry.real());
            for e in inv.entries.values() {
                if e.target.is_none()
                    && e.is_node()
                    && let Some(rest) = e.rel.strip_prefix(&prefix)
                {
                    nodes.push(NodeSpec {
                        host_path: dev_root.join(&e.rel),
                        container_path: format!("{base_container}/{rest}"),
                        rdev: e.rdev,
                    });
                }
            }
            if nodes.is_empty() {
                return None;
            }
        }
    }
    for w in &rule.with {
        let rel = rules::expand(w, &entry.rel, "");
        let e = inv.entries.get(&rel).filter(|e| e.is_node())?;
        nodes.push(NodeSpec {
            host_path: dev_root.join(e.real()),
            container_path: format!("/dev/{rel}"),
            rdev: e.rdev,
        });
    }
    Some(FoundDevice {
        key: String::new(),
        nodes,
        env: BTreeMap::new(),
        mounts: Vec::new(),
        cdi: Vec::new(),
    })
}

/// Env, mounts and CDI once the key is known.
fn finish_device(rule: &Rule, device: &mut FoundDevice, rel: &str) {
    for (k, v) in &rule.env {
        device
            .env
            .insert(k.clone(), rules::expand(v, rel, &device.key));
    }
    device.mounts = rule.mounts.clone();
    if let Some(kind) = &rule.cdi_kind {
        device.cdi = vec![format!("{kind}={}", device.key)];
    }
}

/// real node → first by-id link name pointing at it.
fn by_id_links(inv: &Inventory) -> BTreeMap<String, String> {
    let mut m = BTreeMap::new();
    for e in inv.entries.values() {
        if let Some(t) = &e.target
            && let Some(dir) = BY_ID_DIRS.iter().find(|d| e.rel.starts_with(**d))
            && let Some(name) = e.rel.strip_prefix(dir)
        {
            m.entry(t.clone()).or_insert_with(|| name.to_string());
        }
    }
    m
}

fn pooled_key(
    rule: &Rule,
    entry: &Entry,
    info: &dyn DeviceInfo,
    by_id: &BTreeMap<String, String>,
) -> String {
    let raw = match rule.id {
        IdSource::Path => entry.rel.clone(),
        IdSource::Auto => {
            if entry.target.is_some() && BY_ID_DIRS.iter().any(|d| entry.rel.starts_with(d)) {
                entry
                    .rel
                    .rsplit('/')
                    .next()
                    .unwrap_or(&entry.rel)
                    .to_string()
            } else if let Some(link) = by_id.get(entry.real()) {
                link.clone()
            } else if entry.is_node() {
                let props = info.properties(entry.kind, entry.rdev);
                props
                    .get("ID_SERIAL")
                    .or_else(|| props.get("ID_SERIAL_SHORT"))
                    .cloned()
                    .unwrap_or_else(|| entry.rel.clone())
            } else {
                entry.rel.clone()
            }
        }
    };
    fit_key(&rules::sanitize(&raw))
}

/// Keys longer than 48 characters keep their head and get a hash tail.
pub fn fit_key(key: &str) -> String {
    if key.len() <= MAX_KEY_LEN {
        return key.to_string();
    }
    // FNV-1a: stable across runs and architectures.
    let mut h: u32 = 0x811c_9dc5;
    for b in key.bytes() {
        h ^= u32::from(b);
        h = h.wrapping_mul(0x0100_0193);
    }
    format!("{}-{h:08x}", &key[..MAX_KEY_LEN - 9])
}

/// Human-readable listing (used by `smarter-device-manager list` and the
/// golden tests).
pub fn render(d: &Discovery) -> String {
    use std::fmt::Write as _;
    let mut s = String::new();
    for r in d.resources.values() {
        let _ = writeln!(
            s,
            "{}  rule={} max_users={} permissions={}{}",
            rules::resource_name(&r.name),
            r.rule,
            r.max_users,
            r.permissions,
            if r.pooled { " pooled" } else { "" }
        );
        for dev in &r.devices {
            let _ = writeln!(s, "  device {}", dev.key);
            for n in &dev.nodes {
                let _ = writeln!(
                    s,
                    "    {} -> {} ({}:{})",
                    n.host_path.display(),
                    n.container_path,
                    crate::scan::major(n.rdev),
                    crate::scan::minor(n.rdev)
                );
            }
            for (k, v) in &dev.env {
                let _ = writeln!(s, "    env {k}={v}");
            }
            for m in &dev.mounts {
                let _ = writeln!(
                    s,
                    "    mount {} -> {}{}",
                    m.host_path,
                    m.container_path,
                    if m.read_only { " (ro)" } else { "" }
                );
            }
            for n in &dev.cdi {
                let _ = writeln!(s, "    cdi {n}");
            }
        }
    }
    for p in &d.problems {
        let _ = writeln!(s, "problem: {p}");
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::RuleConfig;
    use crate::rules::compile;

    fn rules(cfgs: Vec<RuleConfig>) -> Vec<Rule> {
        compile(&cfgs, "rules").unwrap_or_default()
    }

    fn pi() -> Inventory {
        Inventory::default()
            .with("snd", Kind::Dir, 0, None)
            .with("snd/controlC0", Kind::Char, 116 << 8, None)
            .with("snd/pcmC0D0p", Kind::Char, (116 << 8) | 16, None)
            .with("ttyUSB0", Kind::Char, 188 << 8, None)
            .with("ttyUSB1", Kind::Char, (188 << 8) | 1, None)
            .with(
                "serial/by-id/usb-FTDI_FT232R_A50285BI-if00-port0",
                Kind::Char,
                188 << 8,
                Some("ttyUSB0"),
            )
            .with("net", Kind::Dir, 0, None)
            .with("net/tun", Kind::Char, (10 << 8) | 200, None)
            .with("video0", Kind::Char, 81 << 8, None)
            .with("media0", Kind::Char, 239 << 8, None)
    }

    #[test]
    fn original_per_node_resources() {
        let r = rules(vec![
            RuleConfig::from_devicematch("^snd$", 20),
            RuleConfig::from_devicematch("^ttyUSB[0-9]*$", 1),
            RuleConfig::from_devicematch("^net/tun$", 1),
        ]);
        let d = discover(&r, &pi(), &StaticInfo::default(), Path::new("/dev"));
        let names: Vec<&str> = d.resources.keys().map(String::as_str).collect();
        assert_eq!(names, ["net_tun", "snd", "ttyUSB0", "ttyUSB1"]);
        let snd = &d.resources["snd"];
        assert_eq!(snd.max_users, 20);
        assert!(!snd.pooled);
        assert_eq!(snd.devices[0].nodes.len(), 2);
        assert_eq!(snd.devices[0].nodes[0].container_path, "/dev/snd/controlC0");
        assert_eq!(
            d.resources["net_tun"].devices[0].nodes[0].host_path,
            PathBuf::from("/dev/net/tun")
        );
    }

    #[test]
    fn pooled_by_udev_with_stable_ids() {
        let mut cfg = RuleConfig::from_devicematch("^ttyUSB", 1);
        cfg.name = Some("usb-serial".into());
        cfg.udev.insert("ID_VENDOR_ID".into(), "0403".into());
        let mut info = StaticInfo::default();
        for (rdev, serial) in [(188 << 8, "A50285BI"), ((188 << 8) | 1, "XYZ")] {
            let mut p = BTreeMap::new();
            p.insert("ID_VENDOR_ID".to_string(), "0403".to_string());
            p.insert("ID_SERIAL".to_string(), format!("FTDI_{serial}"));
            info.0.insert(rdev, p);
        }
        let d = discover(&rules(vec![cfg]), &pi(), &info, Path::new("/dev"));
        let pool = &d.resources["usb-serial"];
        let keys: Vec<&str> = pool.devices.iter().map(|d| d.key.as_str()).collect();
        // ttyUSB0 has a by-id link; ttyUSB1 falls back to its serial.
        assert_eq!(keys, ["FTDI_XYZ", "usb-FTDI_FT232R_A50285BI-if00-port0"]);
    }

    #[test]
    fn udev_mismatch_excludes() {
        let mut cfg = RuleConfig::from_devicematch("^ttyUSB", 1);
        cfg.udev.insert("ID_VENDOR_ID".into(), "10c4".into());
        let d = discover(
            &rules(vec![cfg]),
            &pi(),
            &StaticInfo::default(),
            Path::new("/dev"),
        );
        assert!(d.resources.is_empty());
    }

    #[test]
    fn glob_on_by_id_resolves_link() {
        let mut cfg = RuleConfig::from_devicematch("x", 1);
        cfg.path = None;
        cfg.glob = Some("serial/by-id/*FTDI*".into());
        cfg.name = Some("ftdi".into());
        cfg.permissions = "rwm".into();
        let d = discover(
            &rules(vec![cfg]),
            &pi(),
            &StaticInfo::default(),
            Path::new("/d"),
        );
        let dev = &d.resources["ftdi"].devices[0];
        assert_eq!(dev.nodes[0].host_path, PathBuf::from("/d/ttyUSB0"));
        assert_eq!(
            dev.nodes[0].container_path,
            "/dev/serial/by-id/usb-FTDI_FT232R_A50285BI-if00-port0"
        );
        assert_eq!(d.resources["ftdi"].permissions, "rwm");
    }

    #[test]
    fn multi_node_with_container_path_env_cdi() {
        let mut cfg = RuleConfig::from_devicematch("^video[0-9]+$", 2);
        cfg.name = Some("camera".into());
        cfg.with = vec!["media{num}".into()];
        cfg.container_path = Some("/dev/cam{num}".into());
        cfg.env.insert("CAMERA".into(), "/dev/cam{num}".into());
        cfg.cdi_kind = Some("smarter.io/camera".into());
        cfg.id = IdSource::Path;
        let d = discover(
            &rules(vec![cfg]),
            &pi(),
            &StaticInfo::default(),
            Path::new("/dev"),
        );
        let dev = &d.resources["camera"].devices[0];
        assert_eq!(dev.key, "video0");
        assert_eq!(dev.nodes.len(), 2);
        assert_eq!(dev.nodes[0].container_path, "/dev/cam0");
        assert_eq!(dev.nodes[1].container_path, "/dev/media0");
        assert_eq!(dev.env["CAMERA"], "/dev/cam0");
        assert_eq!(dev.cdi, ["smarter.io/camera=video0"]);
    }

    #[test]
    fn missing_companion_means_no_device() {
        let mut cfg = RuleConfig::from_devicematch("^video[0-9]+$", 1);
        cfg.with = vec!["media9".into()];
        let d = discover(
            &rules(vec![cfg]),
            &pi(),
            &StaticInfo::default(),
            Path::new("/dev"),
        );
        assert!(d.resources.is_empty());
    }

    #[test]
    fn first_rule_claims_entry() {
        let d = discover(
            &rules(vec![
                RuleConfig::from_devicematch("^ttyUSB0$", 3),
                RuleConfig::from_devicematch("^ttyUSB", 1),
            ]),
            &pi(),
            &StaticInfo::default(),
            Path::new("/dev"),
        );
        assert_eq!(d.resources["ttyUSB0"].max_users, 3);
        assert_eq!(d.resources["ttyUSB1"].max_users, 1);
    }

    #[test]
    fn too_long_name_is_a_problem() {
        let long = format!("x{}", "y".repeat(70));
        let inv = Inventory::default().with(&long, Kind::Char, 1, None);
        let d = discover(
            &rules(vec![RuleConfig::from_devicematch("^x", 1)]),
            &inv,
            &StaticInfo::default(),
            Path::new("/dev"),
        );
        assert!(d.resources.is_empty());
        assert!(d.problems[0].contains("at most 63"), "{:?}", d.problems);
    }

    #[test]
    fn jetson_gpus() {
        let mut inv = pi().with("nvidiactl", Kind::Char, 195 << 8, None);
        inv.jetson_gpus = vec!["0".into()];
        let d = discover(
            &rules(vec![RuleConfig::from_devicematch("nvidia-gpu", 10)]),
            &inv,
            &StaticInfo::default(),
            Path::new("/dev"),
        );
        let g = &d.resources["nvidia-gpu0"];
        assert_eq!(g.max_users, 10);
        assert_eq!(g.devices[0].env["NVIDIA_VISIBLE_DEVICES"], "0");
        assert_eq!(g.devices[0].nodes[0].container_path, "/dev/nvidiactl");
    }

    #[test]
    fn long_keys_fit() {
        let k = fit_key(&"a".repeat(100));
        assert_eq!(k.len(), 48);
        assert_eq!(k, fit_key(&"a".repeat(100)));
        assert_ne!(k, fit_key(&"a".repeat(101)));
    }
}
