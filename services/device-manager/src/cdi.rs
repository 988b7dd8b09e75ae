//! CDI spec files for rules with `cdi_kind`, so that the CDI names Allocate
//! returns resolve in runtimes with CDI enabled (containerd `enable_cdi`,
//! CRI-O). One file per kind in `cdi_spec_dir` (e.g. `/var/run/cdi`), named
//! `smarter-<vendor>_<class>.json`, listing the devices present now, written
//! atomically and only when its content changes; files of kinds that are gone
//! are removed. Files stay when we stop, so the kubelet can restart
//! containers of running pods meanwhile. The spec building is pure;
//! [`CdiWriter`] does the I/O.
//!
//! Format: CDI `cdiVersion` 0.5.0 (the first with `deviceNodes[].hostPath`),
//! so runtimes from containerd 1.7 / CRI-O 1.27 on accept it.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use serde_json::{Value, json};

use crate::registry::Registry;

/// The CDI version we write.
pub const CDI_VERSION: &str = "0.5.0";

/// The spec (JSON text) of every CDI kind used by the registry's resources,
/// keyed by kind. Only present (Healthy) devices are listed.
pub fn specs(reg: &Registry) -> BTreeMap<String, String> {
    let mut by_kind: BTreeMap<String, Vec<Value>> = BTreeMap::new();
    for name in reg.names() {
        let Some(res) = reg.get(name) else { continue };
        for dev in res.devices.values().filter(|d| d.healthy) {
            for cdi_name in &dev.found.cdi {
                let Some((kind, dev_name)) = cdi_name.split_once('=') else {
                    continue;
                };
                let nodes: Vec<Value> = dev
                    .found
                    .nodes
                    .iter()
                    .map(|n| {
                        json!({
                            "path": n.container_path,
                            "hostPath": n.host_path.to_string_lossy(),
                            "permissions": res.permissions,
                        })
                    })
                    .collect();
                let env: Vec<String> = dev
                    .found
                    .env
                    .iter()
                    .map(|(k, v)| format!("{k}={v}"))
                    .collect();
                let mounts: Vec<Value> = dev
                    .found
                    .mounts
                    .iter()
                    .map(|m| {
                        let mut options = vec!["bind"];
                        if m.read_only {
                            options.push("ro");
                        }
                        json!({
                            "hostPath": m.host_path,
                            "containerPath": m.container_path,
                            "options": options,
                        })
                    })
                    .collect();
                let mut edits = serde_json::Map::new();
                edits.insert("deviceNodes".into(), Value::from(nodes));
                if !env.is_empty() {
                    edits.insert("env".into(), Value::from(env));
                }
                if !mounts.is_empty() {
                    edits.insert("mounts".into(), Value::from(mounts));
                }
                by_kind.entry(kind.to_string()).or_default().push(json!({
                    "name": dev_name,
                    "containerEdits": Value::Object(edits),
                }));
            }
        }
    }
    by_kind
        .into_iter()
        .map(|(kind, devices)| {
            let spec = json!({ "cdiVersion": CDI_VERSION, "kind": kind, "devices": devices });
            let text = serde_json::to_string_pretty(&spec).unwrap_or_default() + "\n";
            (kind, text)
        })
        .collect()
}

/// The file name of a kind's spec.
pub fn file_name(kind: &str) -> String {
    format!("smarter-{}.json", kind.replace('/', "_"))
}

/// Keeps the spec files in one directory in line with the registry.
#[derive(Debug)]
pub struct CdiWriter {
    dir: PathBuf,
    written: BTreeMap<String, String>,
}

impl CdiWriter {
    /// Write into `dir` (created when missing).
    pub fn new(dir: &Path) -> Self {
        Self {
            dir: dir.to_path_buf(),
            written: BTreeMap::new(),
        }
    }

    /// Bring the files in line with `reg`. Errors are logged, not fatal: the
    /// DeviceSpecs Allocate returns keep pods working without CDI.
    pub fn sync(&mut self, reg: &Registry) {
        let now = specs(reg);
        if let Err(e) = std::fs::create_dir_all(&self.dir) {
            tracing::warn!(dir = %self.dir.display(), error = %e, "cannot create CDI spec dir");
            return;
        }
        for (kind, text) in &now {
            if self.written.get(kind) == Some(text) {
                continue;
            }
            let path = self.dir.join(file_name(kind));
            let tmp = self.dir.join(format!(".{}.tmp", file_name(kind)));
            let r = std::fs::write(&tmp, text).and_then(|()| std::fs::rename(&tmp, &path));
            match r {
                Ok(()) => {
                    tracing::debug!(kind = %kind, path = %path.display(), "CDI spec written");
                    self.written.insert(kind.clone(), text.clone());
                }
                Err(e) => {
                    tracing::warn!(path = %path.display(), error = %e, "cannot write CDI spec")
                }
            }
        }
        let gone: BTreeSet<String> = self
            .written
            .keys()
            .filter(|k| !now.contains_key(*k))
            .cloned()
            .collect();
        for kind in gone {
            let path = self.dir.join(file_name(&kind));
            match std::fs::remove_file(&path) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => {
                    tracing::warn!(path = %path.display(), error = %e, "cannot remove CDI spec")
                }
            }
            self.written.remove(&kind);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::discover::{Discovery, FoundDevice, NodeSpec, ResourceSpec};
    use crate::registry::Mode;
    use crate::rules::MountRule;

    fn registry(devs: &[(&str, &str)]) -> Registry {
        let mut d = Discovery::default();
        d.resources.insert(
            "serial".into(),
            ResourceSpec {
                name: "serial".into(),
                rule: 0,
                max_users: 1,
                permissions: "rwm".into(),
                pooled: true,
                devices: devs
                    .iter()
                    .map(|(key, host)| FoundDevice {
                        key: (*key).into(),
                        nodes: vec![NodeSpec {
                            host_path: PathBuf::from(host),
                            container_path: "/dev/ttyUSB0".into(),
                            rdev: 1,
                        }],
                        env: [("PORT".to_string(), "/dev/ttyUSB0".to_string())].into(),
                        mounts: vec![MountRule {
                            host_path: "/etc/a".into(),
                            container_path: "/etc/b".into(),
                            read_only: true,
                        }],
                        cdi: vec![format!("smarter.io/serial={key}")],
                    })
                    .collect(),
            },
        );
        let mut r = Registry::default();
        r.apply(&d, Mode::Rescan);
        r
    }

    #[test]
    fn spec_lists_present_devices() -> Result<(), Box<dyn std::error::Error>> {
        let s = specs(&registry(&[("A1", "/dev/ttyUSB1")]));
        let v: Value = serde_json::from_str(&s["smarter.io/serial"])?;
        assert_eq!(v["cdiVersion"], "0.5.0");
        assert_eq!(v["kind"], "smarter.io/serial");
        let dev = &v["devices"][0];
        assert_eq!(dev["name"], "A1");
        let node = &dev["containerEdits"]["deviceNodes"][0];
        assert_eq!(node["path"], "/dev/ttyUSB0");
        assert_eq!(node["hostPath"], "/dev/ttyUSB1");
        assert_eq!(node["permissions"], "rwm");
        assert_eq!(dev["containerEdits"]["env"][0], "PORT=/dev/ttyUSB0");
        assert_eq!(
            dev["containerEdits"]["mounts"][0]["options"],
            json!(["bind", "ro"])
        );
        assert_eq!(
            file_name("smarter.io/serial"),
            "smarter-smarter.io_serial.json"
        );
        Ok(())
    }

    #[test]
    fn writer_writes_updates_and_removes() -> Result<(), Box<dyn std::error::Error>> {
        let t = tempfile::tempdir()?;
        let mut w = CdiWriter::new(t.path());
        let path = t.path().join("smarter-smarter.io_serial.json");
        w.sync(&registry(&[("A1", "/dev/ttyUSB1"), ("B2", "/dev/ttyUSB2")]));
        assert!(std::fs::read_to_string(&path)?.contains("\"B2\""));
        w.sync(&registry(&[("A1", "/dev/ttyUSB1")]));
        assert!(!std::fs::read_to_string(&path)?.contains("\"B2\""));
        w.sync(&Registry::default());
        assert!(!path.exists());
        Ok(())
    }
}
