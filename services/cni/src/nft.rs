//! nftables rules for one network: masquerade of traffic leaving the subnet
//! and, optionally, tenant isolation between Kubernetes namespaces.
//!
//! The rules are generated here as an `nft -f` script (pure, golden-tested)
//! and applied by running the `nft` binary, see
//! `docs/decisions/0021-cni-nftables-via-nft.md`; what was written is read
//! back over netlink ([`observe`]) so that an ADD notices a table someone
//! else flushed, deleted or changed (`docs/decisions/0134`). Each script replaces the
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

use smarter_common::netlink::nftables::{Family, Nftables};

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

/// What the kernel held of a network's `ip` table right after this plugin
/// wrote it: the table's handle (a table deleted and created again has a
/// new one) and each rule's chain and handle, in order (a rule deleted,
/// flushed or replaced changes the list). Recorded in the marker after
/// every write; an ADD that finds the same is done without running `nft`
/// (docs/decisions/0134-cni-nft-rules-check.md).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct TableState {
    /// The table's handle.
    pub handle: u64,
    /// The table is dormant (its chains see no packets).
    #[serde(default)]
    pub dormant: bool,
    /// `(chain, rule handle)` of every rule, in the kernel's order.
    pub rules: Vec<(String, u64)>,
}

/// Read the network's `ip` table over netlink: `None` when it is absent.
/// Two requests (the table, then its rules), no process started.
pub fn observe(
    nft: &mut Nftables,
    network: &str,
) -> Result<Option<TableState>, smarter_common::netlink::NetlinkError> {
    let name = table_name(network);
    let Some(table) = nft.table(Family::Ip, &name)? else {
        return Ok(None);
    };
    let rules = nft
        .rules(Family::Ip, &name)?
        .into_iter()
        .map(|r| (r.chain, r.handle))
        .collect();
    Ok(Some(TableState {
        handle: table.handle,
        dormant: table.dormant(),
        rules,
    }))
}

/// How `found` differs from what was written (`written`), in words for
/// the log; `None` when they are the same. `table` names the table.
pub fn difference(
    table: &str,
    written: Option<&TableState>,
    found: Option<&TableState>,
) -> Option<String> {
    let (w, f) = match (written, found) {
        (None, None) => return None,
        (Some(_), None) => return Some(format!("table ip {table} is gone")),
        (None, Some(_)) => return Some(format!("table ip {table} appeared")),
        (Some(w), Some(f)) => (w, f),
    };
    if w.handle != f.handle {
        return Some(format!(
            "table ip {table} was deleted and created again (handle {} instead of {})",
            f.handle, w.handle
        ));
    }
    if f.dormant && !w.dormant {
        return Some(format!("table ip {table} was made dormant"));
    }
    let mut chains: Vec<&str> = w.rules.iter().map(|(c, _)| c.as_str()).collect();
    chains.extend(f.rules.iter().map(|(c, _)| c.as_str()));
    chains.sort_unstable();
    chains.dedup();
    let mut what = Vec::new();
    for chain in chains {
        let of = |s: &TableState| -> Vec<u64> {
            s.rules
                .iter()
                .filter(|(c, _)| c == chain)
                .map(|(_, h)| *h)
                .collect()
        };
        let (wh, fh) = (of(w), of(f));
        if wh == fh {
            continue;
        }
        let lost = wh.iter().filter(|h| !fh.contains(h)).count();
        let added = fh.iter().filter(|h| !wh.contains(h)).count();
        what.push(match (lost, added) {
            (0, 0) => format!("chain {chain}: rules reordered"),
            (l, 0) => format!("chain {chain}: {l} of {} rules gone", wh.len()),
            (0, a) => format!("chain {chain}: {a} rules added"),
            (l, a) => format!("chain {chain}: {l} of {} rules gone, {a} added", wh.len()),
        });
    }
    (!what.is_empty()).then(|| format!("table ip {table} changed: {}", what.join("; ")))
}

/// The marker an ADD compares with (docs/decisions/0126 and 0134): the
/// boot, the table as observed after the write (`None`: not observed), and
/// the script written. Stored as three parts: the boot id line, one line
/// `state <json>`, then the script.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Marker {
    /// `/proc/sys/kernel/random/boot_id` at the write.
    pub boot: String,
    /// The `ip` table right after the write; `Some(None)` when it was
    /// absent (nothing to masquerade or drop), `None` when it could not
    /// be read.
    pub state: Option<Option<TableState>>,
    /// The script written.
    pub script: String,
}

impl Marker {
    /// The file's text.
    pub fn render(&self) -> String {
        let state = self
            .state
            .as_ref()
            .and_then(|s| serde_json::to_string(s).ok())
            .unwrap_or_else(|| "unknown".to_string());
        format!("{}\nstate {state}\n{}", self.boot, self.script)
    }

    /// Read and parse the marker file at `path`; `None` when it is absent
    /// or unreadable, or holds anything else (see [`Marker::parse`]).
    pub fn read(path: &Path) -> Option<Self> {
        Self::parse(&std::fs::read_to_string(path).ok()?)
    }

    /// Parse a marker file; `None` for anything else (an older format, a
    /// torn write), which the caller treats as "rewrite".
    pub fn parse(text: &str) -> Option<Self> {
        let (boot, rest) = text.split_once('\n')?;
        let (state, script) = rest.split_once('\n')?;
        let state = state.strip_prefix("state ")?;
        Some(Self {
            boot: boot.to_string(),
            state: serde_json::from_str(state).ok(),
            script: script.to_string(),
        })
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    fn state(handle: u64, rules: &[(&str, u64)]) -> TableState {
        TableState {
            handle,
            dormant: false,
            rules: rules.iter().map(|(c, h)| (c.to_string(), *h)).collect(),
        }
    }

    #[test]
    fn differences_are_named() {
        let w = state(7, &[("postrouting", 2), ("forward", 4), ("forward", 5)]);
        let d = |f: Option<&TableState>| difference("smarter-cni-n", Some(&w), f);
        assert_eq!(d(Some(&w.clone())), None);
        assert_eq!(d(None).as_deref(), Some("table ip smarter-cni-n is gone"));
        assert_eq!(
            d(Some(&state(
                9,
                &[("postrouting", 2), ("forward", 4), ("forward", 5)]
            )))
            .as_deref(),
            Some("table ip smarter-cni-n was deleted and created again (handle 9 instead of 7)")
        );
        assert_eq!(
            d(Some(&state(7, &[("postrouting", 2)]))).as_deref(),
            Some("table ip smarter-cni-n changed: chain forward: 2 of 2 rules gone")
        );
        assert_eq!(
            d(Some(&state(
                7,
                &[("forward", 4), ("forward", 5), ("forward", 8)]
            )))
            .as_deref(),
            Some(
                "table ip smarter-cni-n changed: chain forward: 1 rules added; \
                 chain postrouting: 1 of 1 rules gone"
            )
        );
        let mut dormant = w.clone();
        dormant.dormant = true;
        assert_eq!(
            d(Some(&dormant)).as_deref(),
            Some("table ip smarter-cni-n was made dormant")
        );
        assert_eq!(difference("t", None, None), None);
    }

    #[test]
    fn the_marker_round_trips_and_rejects_other_text() {
        let m = Marker {
            boot: "b00t".into(),
            state: Some(Some(state(3, &[("forward", 4)]))),
            script: "add table ip t\ndelete table ip t\n".into(),
        };
        assert_eq!(Marker::parse(&m.render()), Some(m.clone()));
        let absent = Marker {
            state: Some(None),
            ..m.clone()
        };
        assert_eq!(Marker::parse(&absent.render()), Some(absent));
        let unknown = Marker { state: None, ..m };
        assert_eq!(Marker::parse(&unknown.render()), Some(unknown));
        // The format before the state line: boot id, then the script.
        assert_eq!(Marker::parse("b00t\nadd table ip t\n"), None);
        assert_eq!(Marker::parse(""), None);
    }

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
