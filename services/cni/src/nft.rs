//! nftables rules for one network: masquerade of traffic leaving the subnet
//! and, optionally, tenant isolation between Kubernetes namespaces.
//!
//! The rules are generated here as an `nft -f` script (pure, golden-tested)
//! and applied by running the `nft` binary, see
//! `docs/decisions/0021-cni-nftables-via-nft.md`. Each script replaces the
//! network's tables as a whole in one kernel transaction (create, delete,
//! recreate), so the result never depends on what was there before and a
//! concurrent reader never sees a half-built table:
//!
//! - `table ip smarter-cni-<net>`: `postrouting` NAT chain masquerading
//!   packets from the subnet to anything outside it (not multicast), and a
//!   `forward` chain dropping new connections routed into the bridge from
//!   any other interface (pods stay invisible from outside; replies and
//!   port mappings pass).
//! - `table bridge smarter-cni-<net>`: with isolation on, a `forward` chain
//!   on the bridge that drops frames between pods of different namespaces,
//!   except allowed pairs and shared namespaces. Bridge-family rules see
//!   pod-to-pod frames without `br_netfilter`.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::Write as _;
use std::net::Ipv4Addr;
use std::path::Path;
use std::process::{Command, Stdio};

use crate::ipam::Ipv4Net;
use crate::netconf::IsolationConf;

/// Table name for a network.
pub fn table_name(network: &str) -> String {
    format!("smarter-cni-{network}")
}

/// What the rules depend on.
#[derive(Debug, Clone)]
pub struct Rules<'a> {
    /// CNI network name.
    pub network: &'a str,
    /// The pod subnet.
    pub subnet: Ipv4Net,
    /// Bridge name.
    pub bridge: &'a str,
    /// Masquerade outbound traffic.
    pub masquerade: bool,
    /// Drop new connections routed into the pods from other interfaces
    /// (port mappings, being DNAT, still pass).
    pub deny_inbound: bool,
    /// Isolation settings; `enabled: false` removes the bridge table.
    pub isolation: &'a IsolationConf,
    /// Pod addresses by namespace (`""` for pods without one).
    pub pods: BTreeMap<String, Vec<Ipv4Addr>>,
}

fn elements(ips: &[Ipv4Addr]) -> String {
    ips.iter()
        .map(Ipv4Addr::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

impl Rules<'_> {
    /// The `nft -f` script that makes the kernel state match.
    pub fn script(&self) -> String {
        let t = table_name(self.network);
        let mut s = String::new();
        // "add" is idempotent; then delete so the definition below starts
        // from nothing. All in one transaction.
        let _ = writeln!(s, "add table ip {t}\ndelete table ip {t}");
        if self.masquerade || self.deny_inbound {
            let net = self.subnet.network();
            let br = self.bridge;
            let _ = writeln!(s, "table ip {t} {{");
            if self.masquerade {
                let _ = writeln!(
                    s,
                    "\tchain postrouting {{\n\t\ttype nat hook postrouting priority srcnat; policy accept;\n\t\tip saddr {net} ip daddr != {net} ip daddr != 224.0.0.0/4 masquerade\n\t}}"
                );
            }
            if self.deny_inbound {
                let _ = writeln!(
                    s,
                    "\tchain forward {{\n\t\ttype filter hook forward priority filter; policy accept;\n\t\toifname {br:?} iifname != {br:?} ct state established,related accept\n\t\toifname {br:?} iifname != {br:?} ct status dnat accept\n\t\toifname {br:?} iifname != {br:?} drop\n\t}}"
                );
            }
            let _ = writeln!(s, "}}");
        }
        let _ = writeln!(s, "add table bridge {t}\ndelete table bridge {t}");
        if self.isolation.enabled {
            let _ = writeln!(s, "table bridge {t} {{");
            let index: BTreeMap<&str, usize> = self
                .pods
                .keys()
                .enumerate()
                .map(|(i, ns)| (ns.as_str(), i))
                .collect();
            let all: Vec<Ipv4Addr> = self.pods.values().flatten().copied().collect();
            let _ = writeln!(s, "\tset pods {{\n\t\ttype ipv4_addr");
            if !all.is_empty() {
                let _ = writeln!(s, "\t\telements = {{ {} }}", elements(&all));
            }
            let _ = writeln!(s, "\t}}");
            for (ns, ips) in &self.pods {
                let i = index.get(ns.as_str()).copied().unwrap_or_default();
                let _ = writeln!(
                    s,
                    "\tset ns{i} {{\n\t\ttype ipv4_addr\n\t\tcomment {:?}",
                    format!("namespace {ns}")
                );
                if !ips.is_empty() {
                    let _ = writeln!(s, "\t\telements = {{ {} }}", elements(ips));
                }
                let _ = writeln!(s, "\t}}");
            }
            let _ = writeln!(
                s,
                "\tchain forward {{\n\t\ttype filter hook forward priority filter; policy accept;"
            );
            for ns in &self.isolation.shared {
                if let Some(i) = index.get(ns.as_str()) {
                    let _ = writeln!(s, "\t\tip saddr @ns{i} accept\n\t\tip daddr @ns{i} accept");
                }
            }
            for [a, b] in &self.isolation.allow {
                if let (Some(i), Some(j)) = (index.get(a.as_str()), index.get(b.as_str())) {
                    let _ = writeln!(
                        s,
                        "\t\tip saddr @ns{i} ip daddr @ns{j} accept\n\t\tip saddr @ns{j} ip daddr @ns{i} accept"
                    );
                }
            }
            for i in index.values() {
                let _ = writeln!(
                    s,
                    "\t\tip saddr @ns{i} ip daddr @pods ip daddr != @ns{i} drop"
                );
            }
            let _ = writeln!(s, "\t}}\n}}");
        }
        s
    }
}

/// The script that removes everything of `network`.
pub fn remove_script(network: &str) -> String {
    let t = table_name(network);
    format!(
        "add table ip {t}\ndelete table ip {t}\nadd table bridge {t}\ndelete table bridge {t}\n"
    )
}

/// Running `nft` failed.
#[derive(Debug, thiserror::Error)]
pub enum NftError {
    /// The binary could not be run.
    #[error("cannot run {nft}: {source}")]
    Spawn {
        /// The binary.
        nft: String,
        /// The OS error.
        source: std::io::Error,
    },
    /// nft rejected the script.
    #[error("{nft} -f - failed: {stderr}")]
    Rejected {
        /// The binary.
        nft: String,
        /// What nft said.
        stderr: String,
    },
}

/// Apply a script with `nft -f -`.
pub fn apply(nft: &Path, script: &str) -> Result<(), NftError> {
    let name = nft.display().to_string();
    let mut child = Command::new(nft)
        .args(["-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|source| NftError::Spawn {
            nft: name.clone(),
            source,
        })?;
    if let Some(mut stdin) = child.stdin.take() {
        let _ = stdin.write_all(script.as_bytes());
    }
    let out = child.wait_with_output().map_err(|source| NftError::Spawn {
        nft: name.clone(),
        source,
    })?;
    if out.status.success() {
        Ok(())
    } else {
        Err(NftError::Rejected {
            nft: name,
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        })
    }
}

/// Run `nft` with arguments and return stdout (for CHECK and tests).
pub fn list(nft: &Path, args: &[&str]) -> Result<String, NftError> {
    let name = nft.display().to_string();
    let out = Command::new(nft)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|source| NftError::Spawn {
            nft: name.clone(),
            source,
        })?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(NftError::Rejected {
            nft: name,
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masquerade_only() -> Result<(), String> {
        let iso = IsolationConf::default();
        let r = Rules {
            network: "smartnet",
            subnet: "172.39.0.0/16".parse()?,
            bridge: "smartnet0",
            masquerade: true,
            deny_inbound: true,
            isolation: &iso,
            pods: BTreeMap::new(),
        };
        crate::golden("nft-masquerade.nft", &r.script());
        Ok(())
    }

    #[test]
    fn isolation_with_allow_and_shared() -> Result<(), String> {
        let iso = IsolationConf {
            enabled: true,
            allow: vec![["a".into(), "b".into()], ["a".into(), "gone".into()]],
            shared: vec!["kube-system".into()],
        };
        let mut pods = BTreeMap::new();
        pods.insert(
            "a".to_string(),
            vec!["172.39.0.2".parse().map_err(|_| "ip")?],
        );
        pods.insert(
            "b".to_string(),
            vec!["172.39.0.3".parse().map_err(|_| "ip")?],
        );
        pods.insert(
            "c".to_string(),
            vec![
                "172.39.0.4".parse().map_err(|_| "ip")?,
                "172.39.0.5".parse().map_err(|_| "ip")?,
            ],
        );
        pods.insert(
            "kube-system".to_string(),
            vec!["172.39.0.6".parse().map_err(|_| "ip")?],
        );
        let r = Rules {
            network: "smartnet",
            subnet: "172.39.0.0/16".parse()?,
            bridge: "smartnet0",
            masquerade: false,
            deny_inbound: false,
            isolation: &iso,
            pods,
        };
        crate::golden("nft-isolation.nft", &r.script());
        Ok(())
    }
}
