//! The resources we advertise, their devices and health, and the decisions
//! the kubelet asks for (device lists, Allocate, GetPreferredAllocation).
//! No I/O: discovery results come in, answers go out.
//!
//! Health: a device seen by the latest scan is Healthy. A device that
//! vanished stays listed as Unhealthy (capacity is kept, allocatable drops)
//! and turns Healthy again when it comes back with the same key. Only a
//! config reload forgets devices and resources.
//!
//! Device IDs: a per-node resource (the original's kind) has IDs `0` to
//! `max_users - 1`, as the original; a pooled resource has the device key, or
//! `key.N` when a device may be shared.

use std::collections::{BTreeMap, BTreeSet};

use crate::discover::{Discovery, FoundDevice, NodeSpec};
use crate::rules::MountRule;

/// The kubelet's health strings.
pub const HEALTHY: &str = "Healthy";
/// The kubelet's health strings.
pub const UNHEALTHY: &str = "Unhealthy";

/// A device and whether it is present.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceState {
    /// What the last sighting found.
    pub found: FoundDevice,
    /// Present in the latest scan.
    pub healthy: bool,
}

/// One advertised resource.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResourceState {
    /// Rule index.
    pub rule: usize,
    /// Users per device.
    pub max_users: u32,
    /// cgroup permissions.
    pub permissions: String,
    /// Pooled naming of IDs.
    pub pooled: bool,
    /// Devices by key.
    pub devices: DeviceMap,
}

/// Devices of a resource by key, sorted: a vector, not a `BTreeMap`,
/// because most resources have one device and a B-tree leaf for these
/// values is 1.7 KiB (`docs/decisions/0016-own-http2-server.md`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DeviceMap(Vec<(String, DeviceState)>);

impl DeviceMap {
    fn find(&self, key: &str) -> Result<usize, usize> {
        self.0.binary_search_by(|(k, _)| k.as_str().cmp(key))
    }

    /// The device with `key`.
    pub fn get(&self, key: &str) -> Option<&DeviceState> {
        self.find(key).ok().map(|i| &self.0[i].1)
    }

    /// Add or replace.
    pub fn insert(&mut self, key: String, dev: DeviceState) {
        match self.find(&key) {
            Ok(i) => self.0[i].1 = dev,
            Err(i) => {
                // Most resources have one device: no spare capacity (a
                // first push would reserve four, 600 bytes).
                self.0.reserve_exact(1);
                self.0.insert(i, (key, dev));
            }
        }
    }

    /// Keep what `keep` says.
    pub fn retain(&mut self, mut keep: impl FnMut(&String, &DeviceState) -> bool) {
        self.0.retain(|(k, d)| keep(k, d));
    }

    /// Keys in order.
    pub fn keys(&self) -> impl Iterator<Item = &String> {
        self.0.iter().map(|(k, _)| k)
    }

    /// Devices in key order.
    pub fn values(&self) -> impl Iterator<Item = &DeviceState> {
        self.0.iter().map(|(_, d)| d)
    }

    /// Devices in key order, mutable.
    pub fn values_mut(&mut self) -> impl Iterator<Item = &mut DeviceState> {
        self.0.iter_mut().map(|(_, d)| d)
    }

    /// (key, device) in key order.
    pub fn iter(&self) -> impl Iterator<Item = (&String, &DeviceState)> {
        self.0.iter().map(|(k, d)| (k, d))
    }

    /// Number of devices.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// No devices.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl FromIterator<(String, DeviceState)> for DeviceMap {
    fn from_iter<I: IntoIterator<Item = (String, DeviceState)>>(it: I) -> Self {
        let mut m = Self::default();
        for (k, d) in it {
            m.insert(k, d);
        }
        m
    }
}

/// Why a scan result is applied.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// A device event or health check: vanished devices turn Unhealthy.
    Rescan,
    /// A new config: what the rules no longer produce is forgotten.
    Reload,
}

/// Resources that appeared or went away.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Changes {
    /// New resource names (start a server).
    pub added: Vec<String>,
    /// Removed resource names (stop the server).
    pub removed: Vec<String>,
    /// `(resource, device key)` whose nodes now have another major:minor
    /// (or path) than when last seen: a different device under the same ID.
    pub renumbered: Vec<(String, String)>,
}

/// One entry of a ListAndWatch list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Slot {
    /// Device ID as the kubelet sees it.
    pub id: String,
    /// Healthy or not.
    pub healthy: bool,
}

/// What one container gets.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Allocation {
    /// Nodes with permissions.
    pub nodes: Vec<(NodeSpec, String)>,
    /// Environment.
    pub env: BTreeMap<String, String>,
    /// Mounts.
    pub mounts: Vec<MountRule>,
    /// CDI names.
    pub cdi: Vec<String>,
}

/// Allocate could not be answered.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AllocError {
    /// We do not serve this resource (any more).
    #[error("unknown resource {0}")]
    UnknownResource(String),
    /// The kubelet asked for an ID we never advertised.
    #[error("resource {resource}: unknown device ID {id:?}")]
    UnknownId {
        /// Resource.
        resource: String,
        /// ID.
        id: String,
    },
    /// The device is gone right now.
    #[error("resource {resource}: device {id:?} is not present (Unhealthy)")]
    Unhealthy {
        /// Resource.
        resource: String,
        /// ID.
        id: String,
    },
}

/// All advertised resources.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Registry {
    resources: BTreeMap<String, ResourceState>,
}

/// The slot ID of `slot` on device `key`.
fn slot_id(res: &ResourceState, key: &str, slot: u32) -> String {
    if !res.pooled {
        slot.to_string()
    } else if res.max_users == 1 {
        key.to_string()
    } else {
        format!("{key}.{slot}")
    }
}

impl Registry {
    /// Resource names.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.resources.keys().map(String::as_str)
    }

    /// A resource's state.
    pub fn get(&self, name: &str) -> Option<&ResourceState> {
        self.resources.get(name)
    }

    /// Take in a discovery result.
    pub fn apply(&mut self, d: &Discovery, mode: Mode) -> Changes {
        let mut changes = Changes::default();
        if mode == Mode::Reload {
            let gone: Vec<String> = self
                .resources
                .keys()
                .filter(|n| !d.resources.contains_key(*n))
                .cloned()
                .collect();
            for n in gone {
                self.resources.remove(&n);
                changes.removed.push(n);
            }
        }
        for (name, spec) in &d.resources {
            let res = match self.resources.get_mut(name) {
                Some(r) => r,
                None => {
                    changes.added.push(name.clone());
                    self.resources.entry(name.clone()).or_insert(ResourceState {
                        rule: spec.rule,
                        max_users: spec.max_users,
                        permissions: spec.permissions.clone(),
                        pooled: spec.pooled,
                        devices: DeviceMap::default(),
                    })
                }
            };
            res.rule = spec.rule;
            res.max_users = spec.max_users;
            res.permissions.clone_from(&spec.permissions);
            res.pooled = spec.pooled;
            let seen: BTreeSet<&str> = spec.devices.iter().map(|d| d.key.as_str()).collect();
            if mode == Mode::Reload {
                res.devices.retain(|k, _| seen.contains(k.as_str()));
            }
            for dev in res.devices.values_mut() {
                dev.healthy = false;
            }
            for f in &spec.devices {
                if let Some(old) = res.devices.get(&f.key)
                    && old.found.nodes != f.nodes
                {
                    changes.renumbered.push((name.clone(), f.key.clone()));
                }
                res.devices.insert(
                    f.key.clone(),
                    DeviceState {
                        found: f.clone(),
                        healthy: true,
                    },
                );
            }
        }
        if mode == Mode::Rescan {
            for (name, res) in &mut self.resources {
                if !d.resources.contains_key(name) {
                    for dev in res.devices.values_mut() {
                        dev.healthy = false;
                    }
                }
            }
        }
        changes
    }

    /// The ListAndWatch list of a resource.
    pub fn slots(&self, name: &str) -> Option<Vec<Slot>> {
        let res = self.resources.get(name)?;
        let mut v = Vec::new();
        for (key, dev) in res.devices.iter() {
            for s in 0..res.max_users {
                v.push(Slot {
                    id: slot_id(res, key, s),
                    healthy: dev.healthy,
                });
            }
        }
        Some(v)
    }

    /// Device key of every slot ID of a resource.
    fn slot_keys(res: &ResourceState) -> BTreeMap<String, &str> {
        let mut m = BTreeMap::new();
        for key in res.devices.keys() {
            for s in 0..res.max_users {
                m.insert(slot_id(res, key, s), key.as_str());
            }
        }
        m
    }

    /// What a container gets for `ids` of resource `name`.
    pub fn allocate(&self, name: &str, ids: &[String]) -> Result<Allocation, AllocError> {
        let res = self
            .resources
            .get(name)
            .ok_or_else(|| AllocError::UnknownResource(name.to_string()))?;
        let keys = Self::slot_keys(res);
        let mut out = Allocation::default();
        let mut env_values: BTreeMap<String, Vec<String>> = BTreeMap::new();
        let mut done: BTreeSet<&str> = BTreeSet::new();
        for id in ids {
            let key = keys.get(id).ok_or_else(|| AllocError::UnknownId {
                resource: name.to_string(),
                id: id.clone(),
            })?;
            let Some(dev) = res.devices.get(key) else {
                continue;
            };
            if !dev.healthy {
                return Err(AllocError::Unhealthy {
                    resource: name.to_string(),
                    id: id.clone(),
                });
            }
            if !done.insert(key) {
                continue;
            }
            for n in &dev.found.nodes {
                if !out.nodes.iter().any(|(m, _)| m.host_path == n.host_path) {
                    out.nodes.push((n.clone(), res.permissions.clone()));
                }
            }
            for (k, v) in &dev.found.env {
                let vals = env_values.entry(k.clone()).or_default();
                if !vals.contains(v) {
                    vals.push(v.clone());
                }
            }
            for m in &dev.found.mounts {
                if !out.mounts.contains(m) {
                    out.mounts.push(m.clone());
                }
            }
            for c in &dev.found.cdi {
                if !out.cdi.contains(c) {
                    out.cdi.push(c.clone());
                }
            }
        }
        // Several devices with the same variable: a comma-separated list,
        // as NVIDIA_VISIBLE_DEVICES expects.
        out.env = env_values
            .into_iter()
            .map(|(k, v)| (k, v.join(",")))
            .collect();
        Ok(out)
    }

    /// GetPreferredAllocation for one container: the `must_include` IDs,
    /// then slots of the least-shared devices (fewest slots in use, counting
    /// those just picked), ties broken by ID. The kubelet treats it as a hint.
    pub fn preferred(
        &self,
        name: &str,
        available: &[String],
        must_include: &[String],
        size: usize,
    ) -> Vec<String> {
        let Some(res) = self.resources.get(name) else {
            return must_include.to_vec();
        };
        let keys = Self::slot_keys(res);
        let avail: BTreeSet<&str> = available.iter().map(String::as_str).collect();
        // In use = slots of the device that are not available.
        let mut used: BTreeMap<&str, u32> = BTreeMap::new();
        for (id, key) in &keys {
            if !avail.contains(id.as_str()) {
                *used.entry(key).or_default() += 1;
            }
        }
        let mut out: Vec<String> = Vec::new();
        for id in must_include {
            if !out.contains(id) {
                out.push(id.clone());
                if let Some(k) = keys.get(id) {
                    *used.entry(k).or_default() += 1;
                }
            }
        }
        while out.len() < size {
            let best = avail
                .iter()
                .filter(|id| !out.iter().any(|o| o == *id))
                .min_by_key(|id| {
                    let u = keys
                        .get(**id)
                        .map_or(u32::MAX, |k| used.get(k).copied().unwrap_or(0));
                    (u, **id)
                });
            let Some(id) = best else { break };
            if let Some(k) = keys.get(*id) {
                *used.entry(k).or_default() += 1;
            }
            out.push((*id).to_string());
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::discover::ResourceSpec;
    use std::path::PathBuf;

    fn dev(key: &str, path: &str) -> FoundDevice {
        FoundDevice {
            key: key.into(),
            nodes: vec![NodeSpec {
                host_path: PathBuf::from(path),
                container_path: path.into(),
                rdev: 1,
            }],
            env: [("DEV".to_string(), path.to_string())].into(),
            mounts: Vec::new(),
            cdi: Vec::new(),
        }
    }

    fn disc(pooled: bool, max: u32, devs: Vec<FoundDevice>) -> Discovery {
        let mut d = Discovery::default();
        d.resources.insert(
            "r".into(),
            ResourceSpec {
                name: "r".into(),
                rule: 0,
                max_users: max,
                permissions: "rw".into(),
                pooled,
                devices: devs,
            },
        );
        d
    }

    fn ids(v: &[Slot]) -> Vec<(String, bool)> {
        v.iter().map(|s| (s.id.clone(), s.healthy)).collect()
    }

    #[test]
    fn per_node_ids_like_original() {
        let mut r = Registry::default();
        let c = r.apply(&disc(false, 3, vec![dev("r", "/dev/x")]), Mode::Rescan);
        assert_eq!(c.added, ["r"]);
        let s = r.slots("r").unwrap_or_default();
        assert_eq!(
            ids(&s),
            [("0".into(), true), ("1".into(), true), ("2".into(), true)]
        );
    }

    #[test]
    fn vanish_unhealthy_then_back() {
        let mut r = Registry::default();
        r.apply(
            &disc(true, 1, vec![dev("a", "/a"), dev("b", "/b")]),
            Mode::Rescan,
        );
        r.apply(&disc(true, 1, vec![dev("b", "/b")]), Mode::Rescan);
        let s = r.slots("r").unwrap_or_default();
        assert_eq!(ids(&s), [("a".into(), false), ("b".into(), true)]);
        // The whole resource gone on a rescan: kept, all Unhealthy.
        let c = r.apply(&Discovery::default(), Mode::Rescan);
        assert!(c.removed.is_empty());
        assert!(r.slots("r").unwrap_or_default().iter().all(|s| !s.healthy));
        r.apply(
            &disc(true, 1, vec![dev("a", "/a"), dev("b", "/b")]),
            Mode::Rescan,
        );
        assert!(r.slots("r").unwrap_or_default().iter().all(|s| s.healthy));
        // Reload forgets.
        let c = r.apply(&Discovery::default(), Mode::Reload);
        assert_eq!(c.removed, ["r"]);
        assert!(r.slots("r").is_none());
    }

    #[test]
    fn changed_major_minor_is_reported() {
        let mut r = Registry::default();
        r.apply(&disc(false, 1, vec![dev("r", "/dev/x")]), Mode::Rescan);
        let mut moved = dev("r", "/dev/x");
        moved.nodes[0].rdev = 2;
        let c = r.apply(&disc(false, 1, vec![moved]), Mode::Rescan);
        assert_eq!(c.renumbered, [("r".to_string(), "r".to_string())]);
        let c = r.apply(&disc(false, 1, vec![dev("r", "/dev/x")]), Mode::Rescan);
        assert_eq!(c.renumbered.len(), 1);
        let c = r.apply(&disc(false, 1, vec![dev("r", "/dev/x")]), Mode::Rescan);
        assert!(c.renumbered.is_empty());
    }

    #[test]
    fn allocate_dedups_and_joins_env() {
        let mut r = Registry::default();
        r.apply(
            &disc(true, 2, vec![dev("a", "/a"), dev("b", "/b")]),
            Mode::Rescan,
        );
        let a = r
            .allocate("r", &["a.0".into(), "a.1".into(), "b.0".into()])
            .unwrap_or_default();
        assert_eq!(a.nodes.len(), 2);
        assert_eq!(a.nodes[0].1, "rw");
        assert_eq!(a.env["DEV"], "/a,/b");
        assert_eq!(
            r.allocate("r", &["zz".into()]),
            Err(AllocError::UnknownId {
                resource: "r".into(),
                id: "zz".into()
            })
        );
        r.apply(&disc(true, 2, vec![dev("b", "/b")]), Mode::Rescan);
        assert!(matches!(
            r.allocate("r", &["a.0".into()]),
            Err(AllocError::Unhealthy { .. })
        ));
    }

    #[test]
    fn preferred_least_shared() {
        let mut r = Registry::default();
        r.apply(
            &disc(
                true,
                2,
                vec![dev("a", "/a"), dev("b", "/b"), dev("c", "/c")],
            ),
            Mode::Rescan,
        );
        // a.0 and b.0 are taken: c is the least shared.
        let avail: Vec<String> = ["a.1", "b.1", "c.0", "c.1"].map(String::from).to_vec();
        assert_eq!(r.preferred("r", &avail, &[], 1), ["c.0"]);
        // Two: c.0 then (a.1, b.1, c.1 all used once) a.1 by ID.
        assert_eq!(r.preferred("r", &avail, &[], 2), ["c.0", "a.1"]);
        assert_eq!(r.preferred("r", &avail, &["b.1".into()], 2), ["b.1", "c.0"]);
    }

    #[test]
    fn renumbered_device_keeps_its_id() {
        use crate::config::RuleConfig;
        use crate::discover::{Inventory, Kind, StaticInfo, discover};
        let mut cfg = RuleConfig::from_devicematch("^ttyUSB[0-9]+$", 1);
        cfg.name = Some("serial".into());
        let rules = crate::rules::compile(&[cfg], "rules").unwrap_or_default();
        let link = "serial/by-id/usb-FTDI_A1-if00-port0";
        let before = Inventory::default()
            .with("ttyUSB0", Kind::Char, 188 << 8, None)
            .with(link, Kind::Char, 188 << 8, Some("ttyUSB0"));
        // Unplugged, then back as ttyUSB1 (another adapter took ttyUSB0).
        let after = Inventory::default()
            .with("ttyUSB0", Kind::Char, 188 << 8, None)
            .with("ttyUSB1", Kind::Char, (188 << 8) | 1, None)
            .with(link, Kind::Char, (188 << 8) | 1, Some("ttyUSB1"));
        let info = StaticInfo::default();
        let root = std::path::Path::new("/dev");
        let mut r = Registry::default();
        r.apply(&discover(&rules, &before, &info, root), Mode::Rescan);
        r.apply(
            &discover(&rules, &Inventory::default(), &info, root),
            Mode::Rescan,
        );
        assert_eq!(
            ids(&r.slots("serial").unwrap_or_default()),
            [("usb-FTDI_A1-if00-port0".into(), false)]
        );
        r.apply(&discover(&rules, &after, &info, root), Mode::Rescan);
        let slots = ids(&r.slots("serial").unwrap_or_default());
        assert!(
            slots.contains(&("usb-FTDI_A1-if00-port0".into(), true)),
            "{slots:?}"
        );
        let a = r
            .allocate("serial", &["usb-FTDI_A1-if00-port0".into()])
            .unwrap_or_default();
        assert_eq!(a.nodes[0].0.host_path, PathBuf::from("/dev/ttyUSB1"));
    }
}
