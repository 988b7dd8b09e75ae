//! The real binary against real network namespaces, bridges and nftables.
#![allow(clippy::panic)] // test harness: a failed setup step fails the test

mod common;

use std::collections::BTreeSet;
use std::path::Path;

use common::*;
use serde_json::{Value, json};

struct Net {
    conf: Value,
    _guard: NetworkGuard,
    _dir: tempfile::TempDir,
    data: std::path::PathBuf,
    records: std::path::PathBuf,
    bridge: String,
    gateway: String,
}

fn net(version: &str, subnet: &str, extra: Value) -> Net {
    let t = tag();
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));
    let name = format!("t{t}");
    let bridge = format!("smt{t}");
    let data = dir.path().join("ipam");
    let records = dir.path().join("records");
    let mut conf = json!({
        "cniVersion": version,
        "name": name,
        "type": "smarter-cni",
        "bridge": bridge,
        "ipam": { "subnet": subnet, "dataDir": data },
        "recordsDir": records,
    });
    if let (Some(c), Some(e)) = (conf.as_object_mut(), extra.as_object()) {
        for (k, v) in e {
            c.insert(k.clone(), v.clone());
        }
    }
    let gateway = subnet
        .split('/')
        .next()
        .map(|n| {
            let mut o: Vec<u8> = n.split('.').filter_map(|x| x.parse().ok()).collect();
            if let Some(l) = o.last_mut() {
                *l += 1;
            }
            o.iter().map(u8::to_string).collect::<Vec<_>>().join(".")
        })
        .unwrap_or_default();
    Net {
        _guard: NetworkGuard {
            network: name,
            bridge: bridge.clone(),
        },
        conf,
        _dir: dir,
        data,
        records,
        bridge,
        gateway,
    }
}

fn allocations(n: &Net) -> usize {
    let name = n.conf["name"].as_str().unwrap_or_default();
    std::fs::read_dir(n.data.join(name))
        .map(|d| {
            d.flatten()
                .filter(|e| {
                    e.file_name()
                        .to_string_lossy()
                        .parse::<std::net::Ipv4Addr>()
                        .is_ok()
                })
                .count()
        })
        .unwrap_or(0)
}

#[test]
fn add_ping_check_del_across_versions() {
    if !can_run() {
        return;
    }
    for version in ["0.3.1", "0.4.0", "1.0.0", "1.1.0"] {
        let n = net(version, "10.201.0.0/24", json!({}));
        let (a, b) = (
            Netns::new(&format!("cnia{}", tag())),
            Netns::new(&format!("cnib{}", tag())),
        );
        let mut ca = Call::new("ADD", "pod-a", Some(&a.path));
        ca.args = "K8S_POD_NAMESPACE=default;K8S_POD_NAME=cam-a";
        let (code, ra) = ca.run(&n.conf);
        assert_eq!(code, 0, "{version}: {ra}");
        assert_eq!(ra["cniVersion"], version);
        let (code, rb) = Call::new("ADD", "pod-b", Some(&b.path)).run(&n.conf);
        assert_eq!(code, 0, "{rb}");
        let (ipa, ipb) = (ip_of(&ra), ip_of(&rb));
        assert_ne!(ipa, ipb);
        if version == "0.3.1" {
            assert_eq!(ra["ips"][0]["version"], "4");
        } else if version == "1.1.0" {
            assert!(ra["ips"][0].get("version").is_none());
        }
        assert_eq!(
            ra["interfaces"][ra["ips"][0]["interface"].as_u64().unwrap_or(9) as usize]["sandbox"],
            a.path.display().to_string()
        );
        assert!(a.ping(&ipb), "{version}: pod a -> pod b {ipb}");
        assert!(b.ping(&ipa), "pod b -> pod a");
        assert!(a.ping(&n.gateway), "pod a -> bridge");
        assert!(a.ping(&ipa), "pod a -> itself");
        // The DNS record.
        let rec = smarter_common::records::read(&n.records.join("pod-a_eth0.json"))
            .unwrap_or_else(|e| panic!("record: {e}"));
        assert_eq!(rec.pod_name.as_deref(), Some("cam-a"));
        assert_eq!(rec.ips[0].to_string(), ipa);
        // Hairpin on, default route present.
        let veth = smarter_cni::native::host_veth_name("pod-a", "eth0");
        let hp = std::fs::read_to_string(format!("/sys/class/net/{veth}/brport/hairpin_mode"))
            .unwrap_or_default();
        assert_eq!(hp.trim(), "1");
        let routes = String::from_utf8_lossy(&a.exec(&["ip", "route"]).stdout).into_owned();
        assert!(
            routes.contains(&format!("default via {}", n.gateway)),
            "{routes}"
        );

        if version != "0.3.1" {
            let mut conf = n.conf.clone();
            conf["prevResult"] = ra.clone();
            let (code, out) = Call::new("CHECK", "pod-a", Some(&a.path)).run(&conf);
            assert_eq!(code, 0, "CHECK {out}");
            // Remove the veth behind the plugin's back: CHECK must fail.
            assert!(
                std::process::Command::new("ip")
                    .args(["link", "del", &veth])
                    .status()
                    .is_ok_and(|s| s.success())
            );
            let (code, out) = Call::new("CHECK", "pod-a", Some(&a.path)).run(&conf);
            assert_ne!(code, 0);
            assert!(
                out["msg"].as_str().unwrap_or_default().contains("missing"),
                "{out}"
            );
        } else {
            let (code, out) = Call::new("CHECK", "pod-a", Some(&a.path)).run(&n.conf);
            assert_eq!(
                (code, out["code"].as_u64()),
                (1, Some(1)),
                "0.3.1 has no CHECK"
            );
        }
        // DEL twice, the second with the namespace gone.
        for _ in 0..2 {
            let (code, out) = Call::new("DEL", "pod-a", Some(&a.path)).run(&n.conf);
            assert_eq!(code, 0, "DEL {out}");
            assert_eq!(out, Value::Null);
        }
        assert!(!host_link_exists(&veth));
        assert!(!n.records.join("pod-a_eth0.json").exists());
        assert_eq!(allocations(&n), 1);
        drop(b);
        let (code, _) = Call::new("DEL", "pod-b", None).run(&n.conf);
        assert_eq!(code, 0);
        assert_eq!(allocations(&n), 0);
    }
}

#[test]
fn fifty_parallel_adds_get_distinct_addresses_and_ping() {
    if !can_run() {
        return;
    }
    let n = net("1.1.0", "10.202.0.0/24", json!({}));
    let namespaces: Vec<Netns> = (0..50)
        .map(|i| Netns::new(&format!("cnip{i}{}", tag())))
        .collect();
    let results: Vec<(i32, Value)> = std::thread::scope(|s| {
        let handles: Vec<_> = namespaces
            .iter()
            .enumerate()
            .map(|(i, ns)| {
                let conf = &n.conf;
                s.spawn(move || {
                    let id = format!("par-{i}");
                    Call::new("ADD", &id, Some(&ns.path)).run(conf)
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap_or((-1, Value::Null)))
            .collect()
    });
    let ips: BTreeSet<String> = results
        .iter()
        .map(|(code, r)| {
            assert_eq!(*code, 0, "{r}");
            ip_of(r)
        })
        .collect();
    assert_eq!(ips.len(), 50, "distinct addresses");
    assert_eq!(allocations(&n), 50);
    let ips: Vec<String> = results.iter().map(|(_, r)| ip_of(r)).collect();
    std::thread::scope(|s| {
        for (i, ns) in namespaces.iter().enumerate() {
            let next = &ips[(i + 1) % ips.len()];
            let gw = &n.gateway;
            s.spawn(move || {
                assert!(ns.ping(gw), "pod {i} -> bridge");
                assert!(ns.ping(next), "pod {i} -> {next}");
            });
        }
    });
    for (i, ns) in namespaces.iter().enumerate() {
        let id = format!("par-{i}");
        assert_eq!(Call::new("DEL", &id, Some(&ns.path)).run(&n.conf).0, 0);
    }
    assert_eq!(allocations(&n), 0);
}

/// The bridge keeps one MAC while pods come and go. Left to the kernel, a
/// bridge takes the lowest MAC of its ports, so when that pod left, the
/// others' ARP entries for the gateway went stale and they lost DNS and
/// their default route for up to a minute (found by smarter-dns's
/// `cni_e2e` test).
#[test]
fn bridge_mac_stays_while_pods_come_and_go() {
    if !can_run() {
        return;
    }
    let n = net("1.1.0", "10.211.0.0/24", json!({}));
    let pods: Vec<Netns> = (0..4)
        .map(|i| Netns::new(&format!("cnim{i}{}", tag())))
        .collect();
    let sys = |f: &str| {
        std::fs::read_to_string(format!("/sys/class/net/{}/{f}", n.bridge))
            .unwrap_or_default()
            .trim()
            .to_string()
    };
    let mut mac = String::new();
    for (i, pod) in pods.iter().enumerate() {
        let id = format!("mac-{i}");
        let (code, r) = Call::new("ADD", &id, Some(&pod.path)).run(&n.conf);
        assert_eq!(code, 0, "{r}");
        if i == 0 {
            mac = sys("address");
            // 3 = NET_ADDR_SET: the kernel no longer picks it.
            assert_eq!(sys("addr_assign_type"), "3", "bridge MAC not pinned");
        }
        assert_eq!(sys("address"), mac, "bridge MAC changed on ADD {i}");
        assert!(pod.ping(&n.gateway), "pod {i} -> bridge");
    }
    // Every pod but the last leaves; the others keep reaching the gateway
    // through the MAC they have cached.
    for (i, pod) in pods.iter().enumerate().take(3) {
        let id = format!("mac-{i}");
        assert_eq!(Call::new("DEL", &id, Some(&pod.path)).run(&n.conf).0, 0);
        assert_eq!(sys("address"), mac, "bridge MAC changed on DEL {i}");
        for (j, other) in pods.iter().enumerate().skip(i + 1) {
            assert!(other.ping(&n.gateway), "pod {j} -> bridge after DEL {i}");
        }
    }
    assert_eq!(
        Call::new("DEL", "mac-3", Some(&pods[3].path))
            .run(&n.conf)
            .0,
        0
    );
}

fn state_snapshot(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    for e in walk(dir) {
        let data = std::fs::read(&e).unwrap_or_default();
        out.push((e.display().to_string(), data));
    }
    out.sort();
    out
}

fn walk(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            let p = e.path();
            if p.is_dir() {
                out.extend(walk(&p));
            } else {
                out.push(p);
            }
        }
    }
    out
}

#[test]
fn errors_give_spec_codes_and_change_nothing() {
    if !can_run() {
        return;
    }
    // A /29 with a range of one address.
    let n = net(
        "1.1.0",
        "10.203.0.0/29",
        json!({ "ipam": { "subnet": "10.203.0.0/29", "rangeStart": "10.203.0.2", "rangeEnd": "10.203.0.2" } }),
    );
    let mut conf = n.conf.clone();
    conf["ipam"]["dataDir"] = json!(n.data);
    let ns1 = Netns::new(&format!("cnie{}", tag()));
    let ns2 = Netns::new(&format!("cnie{}", tag()));
    let (code, r) = Call::new("ADD", "first", Some(&ns1.path)).run(&conf);
    assert_eq!(code, 0, "{r}");
    let before = state_snapshot(n.data.parent().unwrap_or(Path::new("/nonexistent")));
    let links_before =
        String::from_utf8_lossy(&ns2.exec(&["ip", "-o", "link"]).stdout).into_owned();

    // Exhausted subnet: 11, and no veth left in the namespace.
    let (code, r) = Call::new("ADD", "second", Some(&ns2.path)).run(&conf);
    assert_eq!((code, r["code"].as_u64()), (1, Some(11)), "{r}");
    // Unknown version.
    let mut bad = conf.clone();
    bad["cniVersion"] = json!("0.2.0");
    let (_, r) = Call::new("ADD", "second", Some(&ns2.path)).run(&bad);
    assert_eq!(r["code"], 1);
    // Missing CNI_NETNS.
    let (_, r) = Call::new("ADD", "second", None).run(&conf);
    assert_eq!(r["code"], 4);
    // Malformed config (raw bytes, not JSON).
    let mut cmd = Call::new("ADD", "second", Some(&ns2.path)).command(BIN, &conf);
    let mut child = cmd.spawn().unwrap_or_else(|e| panic!("{e}"));
    if let Some(mut w) = child.stdin.take() {
        use std::io::Write;
        let _ = w.write_all(b"{\"cniVersion\": ");
    }
    let out = child.wait_with_output().unwrap_or_else(|e| panic!("{e}"));
    let r: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
    assert_eq!(r["code"], 6, "{r}");
    // Invalid network config.
    let mut bad = conf.clone();
    bad["ipam"]["subnet"] = json!("10.203.0.0/40");
    assert_eq!(
        Call::new("ADD", "second", Some(&ns2.path)).run(&bad).1["code"],
        7
    );
    // Unsupported bridge field.
    let mut bad = conf.clone();
    bad["vlan"] = json!(7);
    assert_eq!(
        Call::new("ADD", "second", Some(&ns2.path)).run(&bad).1["code"],
        2
    );

    assert_eq!(
        state_snapshot(n.data.parent().unwrap_or(Path::new("/nonexistent"))),
        before
    );
    let links_after = String::from_utf8_lossy(&ns2.exec(&["ip", "-o", "link"]).stdout).into_owned();
    assert_eq!(links_before, links_after);
    assert!(!host_link_exists(&smarter_cni::native::host_veth_name(
        "second", "eth0"
    )));
    // STATUS reports the exhausted range as limited resources.
    let (code, r) = Call::new("STATUS", "", None).run(&conf);
    assert_eq!((code, r["code"].as_u64()), (1, Some(51)), "{r}");
    assert_eq!(Call::new("DEL", "first", Some(&ns1.path)).run(&conf).0, 0);
    let (code, r) = Call::new("STATUS", "", None).run(&conf);
    assert_eq!((code, r), (0, Value::Null));
}

#[test]
fn gc_frees_leaked_and_killed_adds() {
    if !can_run() {
        return;
    }
    let n = net("1.1.0", "10.204.0.0/24", json!({}));
    let keep = Netns::new(&format!("cnig{}", tag()));
    let leak = Netns::new(&format!("cnig{}", tag()));
    assert_eq!(Call::new("ADD", "keep", Some(&keep.path)).run(&n.conf).0, 0);
    assert_eq!(Call::new("ADD", "leak", Some(&leak.path)).run(&n.conf).0, 0);
    // Killed ADDs at points spread over a whole ADD (tens of ms in a debug
    // build): before, during and after allocation, veth creation, addressing.
    let delays_ms = [0u64, 1, 2, 4, 7, 10, 14, 18, 24, 30, 40, 55];
    let victims: Vec<Netns> = (0..delays_ms.len())
        .map(|i| Netns::new(&format!("cnik{i}{}", tag())))
        .collect();
    for (i, ns) in victims.iter().enumerate() {
        let id = format!("killed-{i}");
        let call = Call::new("ADD", &id, Some(&ns.path));
        let mut child = call
            .command(BIN, &n.conf)
            .spawn()
            .unwrap_or_else(|e| panic!("{e}"));
        if let Some(mut w) = child.stdin.take() {
            use std::io::Write;
            let _ = w.write_all(n.conf.to_string().as_bytes());
        }
        std::thread::sleep(std::time::Duration::from_millis(delays_ms[i]));
        let _ = child.kill();
        let _ = child.wait();
    }
    let ports_before = std::process::Command::new("ip")
        .args(["-o", "link", "show", "master", &n.bridge])
        .output()
        .map(|o| {
            o.stdout
                .split(|b| *b == b'\n')
                .filter(|l| !l.is_empty())
                .count()
        })
        .unwrap_or(0);
    eprintln!(
        "before GC: {} allocations, {ports_before} bridge ports (2 are live pods)",
        allocations(&n)
    );
    let mut gc = n.conf.clone();
    gc["cni.dev/valid-attachments"] = json!([{ "containerID": "keep", "ifname": "eth0" }]);
    let (code, r) = Call::new("GC", "", None).run(&gc);
    assert_eq!(code, 0, "{r}");
    assert_eq!(allocations(&n), 1, "only 'keep' holds an address");
    assert!(!host_link_exists(&smarter_cni::native::host_veth_name(
        "leak", "eth0"
    )));
    for i in 0..delays_ms.len() {
        assert!(!host_link_exists(&smarter_cni::native::host_veth_name(
            &format!("killed-{i}"),
            "eth0"
        )));
    }
    assert!(!n.records.join("leak_eth0.json").exists());
    assert!(n.records.join("keep_eth0.json").exists());
    // Only the kept pod's port is on the bridge.
    let ports = String::from_utf8_lossy(
        &std::process::Command::new("ip")
            .args(["-o", "link", "show", "master", &n.bridge])
            .output()
            .map(|o| o.stdout)
            .unwrap_or_default(),
    )
    .into_owned();
    assert_eq!(ports.lines().count(), 1, "{ports}");
    // GC needs 1.1.0.
    let mut old = gc.clone();
    old["cniVersion"] = json!("1.0.0");
    assert_eq!(Call::new("GC", "", None).run(&old).1["code"], 1);
    assert!(keep.ping(&n.gateway));
}

#[test]
fn tenant_isolation_blocks_and_allows_as_configured() {
    if !can_run() {
        return;
    }
    let n = net(
        "1.1.0",
        "10.205.0.0/24",
        json!({ "isolation": { "enabled": true, "allow": [["team-a", "shared-svc"]] } }),
    );
    let pods = [
        ("a1", "team-a"),
        ("a2", "team-a"),
        ("b1", "team-b"),
        ("s1", "shared-svc"),
    ];
    let namespaces: Vec<Netns> = pods
        .iter()
        .map(|(p, _)| Netns::new(&format!("cni{p}{}", tag())))
        .collect();
    let mut ips = Vec::new();
    for ((pod, kns), ns) in pods.iter().zip(&namespaces) {
        let mut c = Call::new("ADD", pod, Some(&ns.path));
        let args = format!("K8S_POD_NAMESPACE={kns};K8S_POD_NAME={pod}");
        c.args = &args;
        let (code, r) = c.run(&n.conf);
        assert_eq!(code, 0, "{r}");
        ips.push(ip_of(&r));
    }
    assert!(namespaces[0].ping(&ips[1]), "same namespace");
    assert!(!namespaces[0].ping(&ips[2]), "team-a -> team-b blocked");
    assert!(!namespaces[2].ping(&ips[0]), "team-b -> team-a blocked");
    assert!(namespaces[0].ping(&ips[3]), "allowed pair");
    assert!(namespaces[3].ping(&ips[1]), "allowed pair, other way");
    assert!(
        !namespaces[2].ping(&ips[3]),
        "team-b -> shared-svc not allowed"
    );
    assert!(
        namespaces[2].ping(&n.gateway),
        "the gateway is always reachable"
    );
    // DEL updates the rules: after b1 leaves, its address is no longer a pod.
    for ((pod, _), ns) in pods.iter().zip(&namespaces) {
        assert_eq!(Call::new("DEL", pod, Some(&ns.path)).run(&n.conf).0, 0);
    }
    let t = format!(
        "smarter-cni-{}",
        n.conf["name"].as_str().unwrap_or_default()
    );
    let listing = std::process::Command::new("nft")
        .args(["list", "table", "bridge", &t])
        .output()
        .map(|o| o.stdout)
        .unwrap_or_default();
    let listing = String::from_utf8_lossy(&listing);
    for ip in &ips {
        assert!(
            !listing.contains(ip.as_str()),
            "{ip} still in rules: {listing}"
        );
    }
}

#[test]
fn original_smarter_conflist_with_host_local_delegation() {
    if !can_run() {
        return;
    }
    // The original SMARTER plugin entry with only `type` changed.
    let n = net("0.3.1", "10.206.0.0/24", json!({}));
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let conf = json!({
        "cniVersion": "0.3.1",
        "name": n.conf["name"],
        "type": "smarter-cni",
        "bridge": n.bridge,
        "isDefaultGateway": true,
        "forceAddress": false,
        "ipMasq": true,
        "hairpinMode": true,
        "recordsDir": n.records,
        "ipam": {
            "type": "host-local",
            "subnet": "10.206.0.0/24",
            "gateway": "10.206.0.1",
            "dataDir": dir.path(),
        }
    });
    let a = Netns::new(&format!("cnih{}", tag()));
    let b = Netns::new(&format!("cnih{}", tag()));
    let (code, ra) = Call::new("ADD", "h-a", Some(&a.path)).run(&conf);
    assert_eq!(code, 0, "{ra}");
    let (code, rb) = Call::new("ADD", "h-b", Some(&b.path)).run(&conf);
    assert_eq!(code, 0, "{rb}");
    assert!(a.ping(&ip_of(&rb)));
    assert!(a.ping("10.206.0.1"));
    // CHECK (needs 0.4.0+) consults host-local too.
    let mut check = conf.clone();
    check["cniVersion"] = json!("1.0.0");
    check["prevResult"] = ra.clone();
    let (code, r) = Call::new("CHECK", "h-a", Some(&a.path)).run(&check);
    assert_eq!(code, 0, "{r}");
    // host-local's CHECK fails once its allocation is gone.
    let hl_file = dir
        .path()
        .join(n.conf["name"].as_str().unwrap_or_default())
        .join(ip_of(&ra));
    let saved = std::fs::read(&hl_file).unwrap_or_default();
    std::fs::remove_file(&hl_file).unwrap_or_else(|e| panic!("{e}"));
    assert_ne!(Call::new("CHECK", "h-a", Some(&a.path)).run(&check).0, 0);
    std::fs::write(&hl_file, saved).unwrap_or_else(|e| panic!("{e}"));
    // GC with a delegated IPAM still removes our leaked bridge ports.
    let c = Netns::new(&format!("cnih{}", tag()));
    assert_eq!(Call::new("ADD", "h-c", Some(&c.path)).run(&conf).0, 0);
    let mut gc = conf.clone();
    gc["cniVersion"] = json!("1.1.0");
    gc["cni.dev/valid-attachments"] = json!([
        { "containerID": "h-a", "ifname": "eth0" },
        { "containerID": "h-b", "ifname": "eth0" },
    ]);
    let (code, r) = Call::new("GC", "", None).run(&gc);
    assert_eq!(code, 0, "{r}");
    assert!(!host_link_exists(&smarter_cni::native::host_veth_name(
        "h-c", "eth0"
    )));
    assert!(a.ping(&ip_of(&rb)), "valid attachments untouched");
    assert_eq!(Call::new("DEL", "h-c", Some(&c.path)).run(&conf).0, 0);
    // host-local keeps its own files: one per address.
    let hl = dir.path().join(n.conf["name"].as_str().unwrap_or_default());
    assert!(hl.join(ip_of(&ra)).exists());
    for (id, ns) in [("h-a", &a), ("h-b", &b)] {
        assert_eq!(Call::new("DEL", id, Some(&ns.path)).run(&conf).0, 0);
    }
    assert!(!hl.join(ip_of(&ra)).exists(), "host-local released on DEL");
}

/// Removes the shared chains the reference portmap plugin leaves behind
/// (it keeps them for other containers), when they were not there before.
struct PortmapChains {
    existed: bool,
    ip6_nat_existed: bool,
}

impl PortmapChains {
    fn new() -> Self {
        let ipt = |args: &[&str]| {
            std::process::Command::new("iptables")
                .args(args)
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .status()
                .is_ok_and(|s| s.success())
        };
        Self {
            existed: ipt(&["-t", "nat", "-S", "CNI-HOSTPORT-DNAT"]),
            ip6_nat_existed: std::process::Command::new("nft")
                .args(["list", "table", "ip6", "nat"])
                .output()
                .is_ok_and(|o| o.status.success()),
        }
    }
}

impl Drop for PortmapChains {
    fn drop(&mut self) {
        let run = |prog: &str, args: &[&str]| {
            let _ = std::process::Command::new(prog)
                .args(args)
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .status();
        };
        if !self.existed {
            for (chain, rule) in [
                (
                    "PREROUTING",
                    vec![
                        "-m",
                        "addrtype",
                        "--dst-type",
                        "LOCAL",
                        "-j",
                        "CNI-HOSTPORT-DNAT",
                    ],
                ),
                (
                    "OUTPUT",
                    vec![
                        "-m",
                        "addrtype",
                        "--dst-type",
                        "LOCAL",
                        "-j",
                        "CNI-HOSTPORT-DNAT",
                    ],
                ),
                (
                    "POSTROUTING",
                    vec![
                        "-m",
                        "comment",
                        "--comment",
                        "CNI portfwd requiring masquerade",
                        "-j",
                        "CNI-HOSTPORT-MASQ",
                    ],
                ),
            ] {
                let mut args = vec!["-t", "nat", "-D", chain];
                args.extend(rule);
                run("iptables", &args);
            }
            for chain in [
                "CNI-HOSTPORT-DNAT",
                "CNI-HOSTPORT-MASQ",
                "CNI-HOSTPORT-SETMARK",
            ] {
                run("iptables", &["-t", "nat", "-F", chain]);
                run("iptables", &["-t", "nat", "-X", chain]);
            }
        }
        if !self.ip6_nat_existed {
            run("nft", &["delete", "table", "ip6", "nat"]);
        }
    }
}

#[test]
fn chained_portmap_maps_a_host_port_to_the_pod() {
    if !can_run() {
        return;
    }
    let _chains = PortmapChains::new();
    let n = net("1.0.0", "10.208.0.0/24", json!({}));
    let pod = Netns::new(&format!("cnim{}", tag()));
    let (code, ours) = Call::new("ADD", "pm-a", Some(&pod.path)).run(&n.conf);
    assert_eq!(code, 0, "{ours}");
    let pm_conf = json!({
        "cniVersion": "1.0.0",
        "name": n.conf["name"],
        "type": "portmap",
        "snat": true,
        "capabilities": { "portMappings": true },
        "runtimeConfig": { "portMappings": [{ "hostPort": 18081, "containerPort": 8081, "protocol": "tcp" }] },
        "prevResult": ours,
    });
    let call = Call::new("ADD", "pm-a", Some(&pod.path));
    let (code, chained) = call.run_bin("/usr/lib/cni/portmap", &pm_conf);
    assert_eq!(code, 0, "portmap accepts our result: {chained}");
    assert_eq!(chained["ips"], ours["ips"]);
    // A one-shot server in the pod; the host reaches it through the mapping.
    let server = pod
        .command("python3")
        .args(["-c",
            "import socket;s=socket.socket();s.setsockopt(socket.SOL_SOCKET,socket.SO_REUSEADDR,1);s.bind(('0.0.0.0',8081));s.listen(1);s.settimeout(15);c,_=s.accept();c.sendall(b'hello from pod');c.close()"])
        .spawn();
    let mut server = server.unwrap_or_else(|e| panic!("python3: {e}"));
    let target: std::net::SocketAddr = format!("{}:18081", n.gateway)
        .parse()
        .unwrap_or_else(|e| panic!("{e}"));
    let got = smarter_test_support::wait_until(
        format_args!("the pod's server through {target}"),
        std::time::Duration::from_secs(10),
        std::time::Duration::from_millis(50),
        || {
            let mut s =
                std::net::TcpStream::connect_timeout(&target, std::time::Duration::from_secs(1))
                    .ok()?;
            let mut got = String::new();
            let _ = std::io::Read::read_to_string(&mut s, &mut got);
            Some(got)
        },
    )
    .unwrap_or_default();
    let _ = server.kill();
    let _ = server.wait();
    let mut pm_del = pm_conf.clone();
    pm_del["prevResult"] = chained.clone();
    assert_eq!(
        Call::new("DEL", "pm-a", Some(&pod.path))
            .run_bin("/usr/lib/cni/portmap", &pm_del)
            .0,
        0
    );
    assert_eq!(Call::new("DEL", "pm-a", Some(&pod.path)).run(&n.conf).0, 0);
    assert_eq!(got, "hello from pod");
}

#[test]
fn add_succeeds_when_the_records_directory_is_unusable() {
    if !can_run() {
        return;
    }
    let n = net("1.1.0", "10.209.0.0/24", json!({}));
    // A regular file where the directory should be: every record write fails.
    let blocker = n.records.with_file_name("not-a-dir");
    std::fs::write(&blocker, b"x").unwrap_or_else(|e| panic!("{e}"));
    let mut conf = n.conf.clone();
    conf["recordsDir"] = json!(blocker.join("records"));
    let pod = Netns::new(&format!("cnir{}", tag()));
    let (code, r) = Call::new("ADD", "rec", Some(&pod.path)).run(&conf);
    assert_eq!(code, 0, "{r}");
    assert!(pod.ping(&n.gateway));
    assert_eq!(Call::new("DEL", "rec", Some(&pod.path)).run(&conf).0, 0);
}

#[test]
fn veth_name_collision_fails_the_add_without_harming_the_owner() {
    if !can_run() {
        return;
    }
    // Two container ids whose host veth names collide (32-bit hash).
    let mut seen = std::collections::HashMap::new();
    let (mut a, mut b) = (String::new(), String::new());
    for i in 0u32.. {
        let id = format!("coll{i}");
        let name = smarter_cni::native::host_veth_name(&id, "eth0");
        if let Some(prev) = seen.insert(name, id.clone()) {
            (a, b) = (prev, id);
            break;
        }
    }
    let n = net("1.1.0", "10.210.0.0/24", json!({}));
    let (pa, pb) = (
        Netns::new(&format!("cnica{}", tag())),
        Netns::new(&format!("cnicb{}", tag())),
    );
    assert_eq!(Call::new("ADD", &a, Some(&pa.path)).run(&n.conf).0, 0);
    let (code, r) = Call::new("ADD", &b, Some(&pb.path)).run(&n.conf);
    assert_eq!(code, 1);
    assert!(
        r["msg"]
            .as_str()
            .unwrap_or_default()
            .contains("already used"),
        "{r}"
    );
    assert!(pa.ping(&n.gateway), "the owner keeps its network");
    assert_eq!(allocations(&n), 1, "the failed ADD released its address");
    // The runtime's DEL after the failed ADD must not touch the owner either.
    assert_eq!(Call::new("DEL", &b, Some(&pb.path)).run(&n.conf).0, 0);
    assert!(pa.ping(&n.gateway), "the owner survives the other's DEL");
    assert_eq!(Call::new("DEL", &a, Some(&pa.path)).run(&n.conf).0, 0);
}

/// DEL hands the kernel's veth teardown to a forked child (see
/// `native::delete_link_detached`). When DEL exits the pair must already be
/// gone from both namespaces, and the child must hold nothing of the
/// runtime's or of the next ADD's: not the stdout pipe (a runtime reads it
/// to its end), not the IPAM lock. The child lives some 20 ms after DEL
/// exits, so the pipe check fails if the child kept the pipe open (checked
/// by removing the redirection).
#[test]
fn del_returns_with_the_pair_gone_and_holds_nothing() {
    use std::io::{Read, Write};
    use std::os::unix::fs::OpenOptionsExt;

    if !can_run() {
        return;
    }
    let n = net("1.1.0", "10.211.0.0/24", json!({}));
    let name = n.conf["name"].as_str().unwrap_or_default().to_string();
    let pod = Netns::new(&format!("cnid{}", tag()));
    for round in 0..3 {
        let id = format!("del{round}");
        let (code, r) = Call::new("ADD", &id, Some(&pod.path)).run(&n.conf);
        assert_eq!(code, 0, "ADD {round}: {r}");
        let veth = smarter_cni::native::host_veth_name(&id, "eth0");
        assert!(host_link_exists(&veth));

        let mut child = Call::new("DEL", &id, Some(&pod.path))
            .command(BIN, &n.conf)
            .spawn()
            .unwrap_or_else(|e| panic!("spawn DEL: {e}"));
        if let Some(mut w) = child.stdin.take() {
            let _ = w.write_all(n.conf.to_string().as_bytes());
        }
        let mut stdout = child.stdout.take().unwrap_or_else(|| panic!("no stdout"));
        let status = child.wait().unwrap_or_else(|e| panic!("wait DEL: {e}"));
        assert!(status.success(), "DEL {round}");
        // No writer left on the pipe: a read ends at once (EOF), it does
        // not block (EAGAIN) while a forked child still holds it.
        nix::fcntl::fcntl(
            &stdout,
            nix::fcntl::FcntlArg::F_SETFL(nix::fcntl::OFlag::O_NONBLOCK),
        )
        .unwrap_or_else(|e| panic!("fcntl: {e}"));
        let mut buf = [0u8; 64];
        match stdout.read(&mut buf) {
            Ok(0) => {}
            other => panic!("DEL's stdout still open after it exited: {other:?}"),
        }
        // The IPAM lock is free now.
        let lock = std::fs::OpenOptions::new()
            .write(true)
            .custom_flags(libc::O_CLOEXEC)
            .open(n.data.join(&name).join("lock"))
            .unwrap_or_else(|e| panic!("open lock: {e}"));
        match nix::fcntl::Flock::lock(lock, nix::fcntl::FlockArg::LockExclusiveNonblock) {
            Ok(l) => drop(l),
            Err((_, e)) => panic!("IPAM lock still held after DEL: {e}"),
        }
        // The pair is gone from both sides, and its name free for the
        // next pod in the same namespace.
        assert!(!host_link_exists(&veth), "host end left after DEL {round}");
        let inside = pod.exec(&["ip", "link", "show", "dev", "eth0"]);
        assert!(!inside.status.success(), "eth0 left in the pod");
        assert_eq!(allocations(&n), 0);
    }
    // DEL then an immediate ADD of the same attachment: the same host veth
    // name while the kernel may still be tearing the old one down.
    for _ in 0..3 {
        let (code, r) = Call::new("ADD", "again", Some(&pod.path)).run(&n.conf);
        assert_eq!(code, 0, "{r}");
        assert!(pod.ping(&n.gateway));
        assert_eq!(Call::new("DEL", "again", Some(&pod.path)).run(&n.conf).0, 0);
    }
}

/// Run `call` with `nft` replaced by a wrapper that logs each run to `log`
/// and then runs the real `nft`; exit code, result and stderr (the log).
fn run_counting_nft(call: &Call, conf: &Value, wrapper: &Path) -> (i32, Value, String) {
    use std::io::Write;
    let mut cmd = call.command(BIN, conf);
    cmd.env("SMARTER_CNI_NFT", wrapper);
    let mut child = cmd.spawn().unwrap_or_else(|e| panic!("spawn: {e}"));
    if let Some(mut w) = child.stdin.take() {
        let _ = w.write_all(conf.to_string().as_bytes());
    }
    let out = child
        .wait_with_output()
        .unwrap_or_else(|e| panic!("wait: {e}"));
    let text = String::from_utf8_lossy(&out.stdout);
    let v = serde_json::from_str(&text).unwrap_or(Value::Null);
    (
        out.status.code().unwrap_or(-1),
        v,
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// ADD skips `nft` when the rules it would write are the ones already
/// applied in this boot, and rewrites them when they are not: a changed
/// config, a marker from another boot, a new bridge. Each step fails if
/// the skip goes wrong in its direction (a needless run, or a missed one).
#[test]
fn rules_are_rewritten_only_when_they_changed() {
    if !can_run() {
        return;
    }
    let n = net("1.1.0", "10.212.0.0/24", json!({}));
    let name = n.conf["name"].as_str().unwrap_or_default().to_string();
    let table = format!("smarter-cni-{name}");
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let log = dir.path().join("runs");
    let wrapper = dir.path().join("nft");
    std::fs::write(
        &wrapper,
        format!(
            "#!/bin/sh\necho run >> {}\nexec nft \"$@\"\n",
            log.display()
        ),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    use std::os::unix::fs::PermissionsExt;
    let _ = std::fs::set_permissions(&wrapper, std::fs::Permissions::from_mode(0o755));
    let runs = || {
        std::fs::read_to_string(&log)
            .map(|s| s.lines().count())
            .unwrap_or(0)
    };
    let listing = || {
        let out = std::process::Command::new("nft")
            .args(["list", "table", "ip", &table])
            .output()
            .unwrap_or_else(|e| panic!("nft: {e}"));
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let pod = Netns::new(&format!("cnin{}", tag()));
    // ADD then DEL; the ADD's log.
    let cycle = |conf: &Value, id: &str| {
        let (code, r, log) =
            run_counting_nft(&Call::new("ADD", id, Some(&pod.path)), conf, &wrapper);
        assert_eq!(code, 0, "ADD {id}: {r} {log}");
        let (code, r, _) = run_counting_nft(&Call::new("DEL", id, Some(&pod.path)), conf, &wrapper);
        assert_eq!(code, 0, "DEL {id}: {r}");
        log
    };
    let nft = |args: &[&str]| {
        let out = std::process::Command::new("nft")
            .args(args)
            .output()
            .unwrap_or_else(|e| panic!("nft: {e}"));
        assert!(
            out.status.success(),
            "nft {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };

    cycle(&n.conf, "r1");
    assert_eq!(runs(), 1, "first ADD (new bridge) writes the rules");
    assert!(listing().contains("masquerade"), "{}", listing());
    assert!(listing().contains("chain forward"), "{}", listing());
    cycle(&n.conf, "r2");
    cycle(&n.conf, "r3");
    assert_eq!(runs(), 1, "unchanged rules: no nft");

    let mut changed = n.conf.clone();
    changed["denyInbound"] = json!(false);
    cycle(&changed, "r4");
    assert_eq!(runs(), 2, "changed config: rules rewritten");
    assert!(!listing().contains("chain forward"), "{}", listing());
    cycle(&changed, "r5");
    assert_eq!(runs(), 2, "unchanged again: no nft");

    // The marker of another boot: the kernel's tables are gone after a
    // reboot, whatever the marker says.
    let marker = n.data.join(&name).join("nft-applied");
    let text = std::fs::read_to_string(&marker).unwrap_or_else(|e| panic!("marker: {e}"));
    let (_, script) = text.split_once('\n').unwrap_or_else(|| panic!("{text}"));
    std::fs::write(&marker, format!("another-boot\n{script}")).unwrap_or_else(|e| panic!("{e}"));
    cycle(&changed, "r6");
    assert_eq!(runs(), 3, "marker from another boot: rules rewritten");

    // A new bridge (deleted behind our back) gets its rules again.
    assert!(
        std::process::Command::new("ip")
            .args(["link", "del", &n.bridge])
            .status()
            .is_ok_and(|s| s.success())
    );
    cycle(&changed, "r7");
    assert_eq!(runs(), 4, "new bridge: rules rewritten");

    // Rules removed or changed behind our back (this namespace is the
    // machine's, so no `nft flush ruleset` here: tests/uplink.rs does
    // that in a namespace of its own). Back to both chains first.
    cycle(&n.conf, "r8");
    assert_eq!(runs(), 5, "changed config: rules rewritten");
    // Someone else's tables come and go (other tests' networks do too):
    // ours are untouched, so no nft.
    let other = format!("smarter-test-other-{}", tag());
    nft(&["add", "table", "ip", &other]);
    nft(&["add", "chain", "ip", &other, "c"]);
    let log = cycle(&n.conf, "r9");
    nft(&["delete", "table", "ip", &other]);
    assert_eq!(
        runs(),
        5,
        "another table changed, ours did not: no nft ({log})"
    );
    assert!(!log.contains("WARN"), "{log}");

    nft(&["delete", "table", "ip", &table]);
    let log = cycle(&n.conf, "r10");
    assert_eq!(runs(), 6, "deleted table: rules rewritten");
    assert!(log.contains(&format!("table ip {table} is gone")), "{log}");
    assert!(listing().contains("masquerade"), "{}", listing());
    assert!(listing().contains("drop"), "{}", listing());
    let log = cycle(&n.conf, "r11");
    assert_eq!(runs(), 6, "restored and unchanged: no nft ({log})");

    nft(&["flush", "chain", "ip", &table, "forward"]);
    assert!(!listing().contains("drop"), "{}", listing());
    let log = cycle(&n.conf, "r12");
    assert_eq!(runs(), 7, "flushed chain: rules rewritten");
    assert!(
        log.contains("chain forward: 3 of 3 rules gone"),
        "the warning names what is missing: {log}"
    );
    assert!(listing().contains("drop"), "{}", listing());

    // Deleted and created again by someone else, the same rules: not the
    // table we wrote (its content cannot be compared cheaply), so written
    // again.
    let saved = listing();
    nft(&["delete", "table", "ip", &table]);
    let dir2 = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let file = dir2.path().join("saved.nft");
    std::fs::write(&file, &saved).unwrap_or_else(|e| panic!("{e}"));
    nft(&["-f", &file.display().to_string()]);
    let log = cycle(&n.conf, "r13");
    assert_eq!(runs(), 8, "re-created table: rules rewritten");
    assert!(log.contains("deleted and created again"), "{log}");

    // CHECK reads the same over netlink and names a missing table.
    let (code, r, _) =
        run_counting_nft(&Call::new("ADD", "r14", Some(&pod.path)), &n.conf, &wrapper);
    assert_eq!(code, 0, "{r}");
    let mut check = n.conf.clone();
    check["prevResult"] = r.clone();
    let (code, r, log) = run_counting_nft(
        &Call::new("CHECK", "r14", Some(&pod.path)),
        &check,
        &wrapper,
    );
    assert_eq!(code, 0, "CHECK: {r} {log}");
    nft(&["flush", "chain", "ip", &table, "postrouting"]);
    let (code, r, _) = run_counting_nft(
        &Call::new("CHECK", "r14", Some(&pod.path)),
        &check,
        &wrapper,
    );
    assert_ne!(code, 0, "{r}");
    assert_eq!(r["code"], 100, "{r}");
    assert!(
        r.to_string()
            .contains("chain postrouting: 1 of 1 rules gone"),
        "{r}"
    );
    nft(&["delete", "table", "ip", &table]);
    let (code, r, _) = run_counting_nft(
        &Call::new("CHECK", "r14", Some(&pod.path)),
        &check,
        &wrapper,
    );
    assert_ne!(code, 0, "{r}");
    assert_eq!(r["code"], 100, "{r}");
    assert!(r.to_string().contains("is missing"), "{r}");
    let (code, r, _) =
        run_counting_nft(&Call::new("DEL", "r14", Some(&pod.path)), &n.conf, &wrapper);
    assert_eq!(code, 0, "{r}");
}
