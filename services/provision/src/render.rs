//! What a provisioning file turns into: k3s's agent config (the shape of
//! `deploy/k3s/agent/config.yaml`), the token file and the hostname. Pure
//! functions; [`crate::apply`] writes their output.

use std::collections::BTreeMap;

use crate::file::Provision;

/// Where k3s reads the token, as written into `config.yaml` (the gateway's
/// `/etc/rancher` is a symlink to `/data/etc/rancher`).
pub const TOKEN_FILE_ON_GATEWAY: &str = "/etc/rancher/k3s/smarter-token";

/// The default node labels, in order; a provisioning file's `node_labels`
/// replace the value of a key listed here or add a new key after them.
pub const DEFAULT_LABELS: &[(&str, &str)] = &[
    // The original SMARTER identity labels.
    ("smarter.type", "edge"),
    ("smarter.nodetype", "unknown"),
    ("smarter.nodemodel", "unknown"),
    ("smarter-build", "user-installed"),
    // What SMARTER runs on this node (the DaemonSets' node selectors).
    ("smarter-device-manager", "enabled"),
    ("smarter.cni", "deploy"),
    ("smarter.dns", "enabled"),
];

/// Only pods tolerating it (SMARTER's agents, edge apps) land on a gateway.
pub const EDGE_TAINT: &str = "smarter.type=edge:NoSchedule";

/// smarter-dns's address; the kubelet hands it to pods as their resolver.
pub const CLUSTER_DNS: &str = "169.254.0.2";

/// The node labels after merging the file's over [`DEFAULT_LABELS`].
pub fn labels(p: &Provision) -> Vec<(String, String)> {
    let mut extra: BTreeMap<&str, &str> = p
        .node_labels
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    let mut out: Vec<(String, String)> = DEFAULT_LABELS
        .iter()
        .map(|(k, v)| {
            let v = extra.remove(k).unwrap_or(v);
            (k.to_string(), v.to_string())
        })
        .collect();
    out.extend(
        extra
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.to_string())),
    );
    out
}

/// `/etc/rancher/k3s/config.yaml` for the k3s agent. Every value was
/// validated to a character set that needs no YAML escaping; they are
/// double-quoted anyway.
pub fn k3s_config(p: &Provision, source_sha256: &str) -> String {
    let mut y = String::new();
    y.push_str("# k3s agent configuration, written by smarter-provision from the boot\n");
    y.push_str(&format!(
        "# partition's smarter-provision.toml, sha256 {source_sha256}.\n"
    ));
    y.push_str("# Provisioning runs once (record: /data/smarter/provision/record.toml).\n");
    y.push_str(&format!(
        "server: \"{}\"\n",
        p.server.strip_suffix('/').unwrap_or(&p.server)
    ));
    y.push_str(&format!("token-file: \"{TOKEN_FILE_ON_GATEWAY}\"\n"));
    y.push_str(&format!("node-name: \"{}\"\n", p.node_name));
    y.push_str("node-label:\n");
    for (k, v) in labels(p) {
        y.push_str(&format!("  - \"{k}={v}\"\n"));
    }
    y.push_str("node-taint:\n");
    y.push_str(&format!("  - \"{EDGE_TAINT}\"\n"));
    y.push_str("kubelet-arg:\n");
    y.push_str(&format!("  - \"cluster-dns={CLUSTER_DNS}\"\n"));
    y.push_str("  - \"cluster-domain=cluster.local\"\n");
    y
}

/// The token file's content.
pub fn token_file(p: &Provision) -> String {
    format!("{}\n", p.token)
}

/// `/etc/hostname`'s content.
pub fn hostname_file(p: &Provision) -> String {
    format!("{}\n", p.node_name)
}
