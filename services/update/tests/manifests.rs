//! The agent's Kubernetes manifests (deploy/kubernetes/update/) carry configs
//! the agent accepts: every `update-agent.toml` and `desired.toml` in their
//! ConfigMaps parses and validates as the binary would load it, and each
//! DaemonSet mounts the ConfigMaps it names at the paths its config uses.
#![allow(clippy::expect_used, clippy::panic)] // test harness

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use smarter_update::agent_config::AgentConfig;
use smarter_update::desired::Desired;

fn manifests() -> Vec<(PathBuf, serde_norway::Value)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy/kubernetes/update");
    let mut out = Vec::new();
    let mut paths: Vec<PathBuf> = std::fs::read_dir(&dir)
        .expect("deploy/kubernetes/update")
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    paths.sort();
    for path in paths {
        let text = std::fs::read_to_string(&path).expect("read manifest");
        for doc in serde_norway::Deserializer::from_str(&text) {
            let value = serde_norway::Value::deserialize(doc).expect("YAML");
            if !value.is_null() {
                out.push((path.clone(), value));
            }
        }
    }
    out
}

fn s<'a>(v: &'a serde_norway::Value, path: &[&str]) -> &'a serde_norway::Value {
    path.iter().fold(v, |v, k| &v[*k])
}

#[test]
fn the_configmaps_hold_configs_the_agent_accepts_and_the_daemonsets_mount_them() {
    let docs = manifests();
    let mut configs = BTreeMap::new();
    let mut desired = BTreeMap::new();
    for (path, doc) in &docs {
        if s(doc, &["kind"]).as_str() != Some("ConfigMap") {
            continue;
        }
        let name = s(doc, &["metadata", "name"])
            .as_str()
            .expect("name")
            .to_string();
        if let Some(text) = s(doc, &["data", "update-agent.toml"]).as_str() {
            let c: AgentConfig =
                smarter_common::config::parse(path, text).unwrap_or_else(|e| panic!("{name}: {e}"));
            configs.insert(name.clone(), c);
        }
        if let Some(text) = s(doc, &["data", "desired.toml"]).as_str() {
            let d = Desired::parse(path, text).unwrap_or_else(|e| panic!("{name}: {e}"));
            desired.insert(name, d);
        }
    }
    let daemonsets: Vec<_> = docs
        .iter()
        .filter(|(_, d)| s(d, &["kind"]).as_str() == Some("DaemonSet"))
        .collect();
    assert_eq!(daemonsets.len(), 2, "the stable and the canary ring");
    for (_, ds) in daemonsets {
        let name = s(ds, &["metadata", "name"]).as_str().expect("name");
        let spec = s(ds, &["spec", "template", "spec"]);
        let container = &spec["containers"][0];
        let args: Vec<&str> = container["args"]
            .as_sequence()
            .expect("args")
            .iter()
            .filter_map(|a| a.as_str())
            .collect();
        assert_eq!(args.first(), Some(&"agent"), "{name}");
        let config_path = args
            .iter()
            .find_map(|a| a.strip_prefix("--config="))
            .expect("--config");
        let mount_of = |volume: &str| {
            container["volumeMounts"]
                .as_sequence()
                .expect("mounts")
                .iter()
                .find(|m| m["name"].as_str() == Some(volume))
                .and_then(|m| m["mountPath"].as_str())
                .map(PathBuf::from)
        };
        let configmap_of = |volume: &str| {
            spec["volumes"]
                .as_sequence()
                .expect("volumes")
                .iter()
                .find(|v| v["name"].as_str() == Some(volume))
                .and_then(|v| v["configMap"]["name"].as_str())
                .map(str::to_string)
        };
        let config_cm = configmap_of("config").expect("config volume");
        let config = configs
            .get(&config_cm)
            .expect("config ConfigMap in the manifests");
        assert_eq!(
            mount_of("config").map(|m| m.join("update-agent.toml")),
            Some(PathBuf::from(config_path)),
            "{name}"
        );
        let desired_cm = configmap_of("desired").expect("desired volume");
        assert!(
            desired.contains_key(&desired_cm),
            "{name}: {desired_cm} missing"
        );
        assert_eq!(
            mount_of("desired").map(|m| m.join("desired.toml")),
            Some(config.desired_file.clone()),
            "{name}"
        );
        assert_eq!(mount_of("data"), Some(config.data_dir.clone()), "{name}");
        assert_eq!(
            mount_of("health-gate"),
            Some(config.health_gate_state_dir.clone()),
            "{name}"
        );
        // The probes hit the port the agent listens on.
        let port = config.listen.rsplit(':').next().expect("port");
        for probe in ["readinessProbe", "livenessProbe"] {
            let p = &container[probe]["httpGet"];
            assert_eq!(
                p["port"].as_u64().map(|p| p.to_string()).as_deref(),
                Some(port),
                "{name} {probe}"
            );
            assert_eq!(p["host"].as_str(), Some("127.0.0.1"), "{name} {probe}");
        }
        assert!(
            config.listen.starts_with("127.0.0.1:"),
            "{name}: host network, loopback only"
        );
    }
}
