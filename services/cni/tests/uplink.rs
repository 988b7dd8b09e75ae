//! A whole gateway in network namespaces: a "host" namespace runs the plugin
//! (bridge, nftables and all live there) and has an uplink to an "outside"
//! namespace. Shows that pods reach the outside masqueraded, that the outside
//! cannot open connections to pods, that both hold again on the next ADD
//! after the rules were flushed behind the plugin's back, and that
//! unplugging the uplink changes nothing inside.
#![allow(clippy::panic)] // test harness

mod common;

use std::process::Stdio;
use std::time::Duration;

use common::*;
use serde_json::json;
use smarter_test_support::{ChildGuard, wait_until};

const SERVER: &str = "import socket,sys\ns=socket.socket();s.setsockopt(socket.SOL_SOCKET,socket.SO_REUSEADDR,1)\ns.bind((sys.argv[1],int(sys.argv[2])));s.listen(4);s.settimeout(20)\nwhile True:\n c,a=s.accept();c.sendall(a[0].encode());c.close()";
const CLIENT: &str = "import socket,sys\ns=socket.create_connection((sys.argv[1],int(sys.argv[2])),timeout=1)\nprint(s.recv(100).decode())";

fn server(ns: &Netns, ip: &str, port: u16) -> ChildGuard {
    let child = ns
        .command("python3")
        .args(["-c", SERVER, ip, &port.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("python3: {e}"));
    ChildGuard(child)
}

/// Connect from `ns` and return what the server said (its view of our
/// address), retrying for about `tries` times 50 ms while the server starts.
fn connect(ns: &Netns, ip: &str, port: u16, tries: u32) -> Option<String> {
    let poll = Duration::from_millis(50);
    wait_until(format_args!("{ip}:{port}"), poll * tries, poll, || {
        let out = ns.exec(&["python3", "-c", CLIENT, ip, &port.to_string()]);
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
    })
    .ok()
}

fn ip_in(ns: &Netns, args: &[&str]) {
    let mut full = vec!["ip"];
    full.extend_from_slice(args);
    let out = ns.exec(&full);
    assert!(
        out.status.success(),
        "ip {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn pods_reach_out_masqueraded_are_unreachable_from_outside_and_survive_uplink_loss() {
    if !can_run() {
        return;
    }
    let t = tag();
    let host = Netns::new(&format!("cnihost{t}"));
    let outside = Netns::new(&format!("cniout{t}"));
    let (up, peer) = (format!("up{t}"), format!("upo{t}"));
    ip_in(
        &host,
        &[
            "link",
            "add",
            &up,
            "type",
            "veth",
            "peer",
            "name",
            &peer,
            "netns",
            &outside.name,
        ],
    );
    ip_in(&host, &["addr", "add", "10.251.0.2/24", "dev", &up]);
    ip_in(&host, &["link", "set", &up, "up"]);
    ip_in(&host, &["route", "add", "default", "via", "10.251.0.1"]);
    ip_in(&outside, &["addr", "add", "10.251.0.1/24", "dev", &peer]);
    ip_in(&outside, &["link", "set", &peer, "up"]);

    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let conf = json!({
        "cniVersion": "1.1.0",
        "name": format!("up{t}"),
        "type": "smarter-cni",
        "ipam": { "subnet": "10.252.0.0/24", "dataDir": dir.path().join("ipam") },
        "recordsDir": dir.path().join("records"),
    });
    let pods: Vec<Netns> = (0..2)
        .map(|i| Netns::new(&format!("cniup{i}{t}")))
        .collect();
    let mut ips = Vec::new();
    for (i, p) in pods.iter().enumerate() {
        let id = format!("up-{i}");
        let (code, r) = Call::new("ADD", &id, Some(&p.path)).run_in(&host.name, &conf);
        assert_eq!(code, 0, "{r}");
        ips.push(ip_of(&r));
    }
    // The default bridge name lives only inside the host namespace.
    assert!(
        host.exec(&["ip", "link", "show", "smartnet0"])
            .status
            .success()
    );

    // Outbound: the outside sees the gateway's uplink address, not the pod's.
    let _srv = server(&outside, "10.251.0.1", 9000);
    assert_eq!(
        connect(&pods[0], "10.251.0.1", 9000, 100).as_deref(),
        Some("10.251.0.2")
    );

    // Inbound: even with a route to the pod subnet, the outside cannot
    // connect to a pod; the host itself can (the server is there).
    ip_in(
        &outside,
        &["route", "add", "10.252.0.0/24", "via", "10.251.0.2"],
    );
    let _pod_srv = server(&pods[0], "0.0.0.0", 9001);
    assert!(connect(&host, &ips[0], 9001, 100).is_some(), "host -> pod");
    assert_eq!(
        connect(&outside, &ips[0], 9001, 2),
        None,
        "outside -> pod must be dropped"
    );
    // Control: a config with `denyInbound: false` (applied by the next ADD)
    // lets the same connection through, so the drop above is our rule.
    let mut open = conf.clone();
    open["denyInbound"] = json!(false);
    let extra = Netns::new(&format!("cniupx{t}"));
    assert_eq!(
        Call::new("ADD", "up-x", Some(&extra.path))
            .run_in(&host.name, &open)
            .0,
        0
    );
    assert!(
        connect(&outside, &ips[0], 9001, 20).is_some(),
        "control: open config lets it in"
    );
    assert_eq!(
        Call::new("DEL", "up-x", Some(&extra.path))
            .run_in(&host.name, &open)
            .0,
        0
    );
    assert_eq!(
        Call::new("ADD", "up-x", Some(&extra.path))
            .run_in(&host.name, &conf)
            .0,
        0
    );
    assert_eq!(connect(&outside, &ips[0], 9001, 2), None, "closed again");
    assert_eq!(
        Call::new("DEL", "up-x", Some(&extra.path))
            .run_in(&host.name, &conf)
            .0,
        0
    );

    // Rules removed behind the plugin's back (a firewall reload's
    // `nft flush ruleset`, or our table deleted): the outside gets in, and
    // the next ADD notices and writes the rules again, so it is shut out
    // again and pods are masqueraded again.
    let table = format!("smarter-cni-up{t}");
    let readd = |what: &str| {
        assert_eq!(
            Call::new("ADD", "up-x", Some(&extra.path))
                .run_in(&host.name, &conf)
                .0,
            0,
            "ADD after {what}"
        );
        let listing = host.exec(&["nft", "list", "table", "ip", &table]);
        let listing = String::from_utf8_lossy(&listing.stdout);
        assert!(listing.contains("masquerade"), "after {what}: {listing}");
        assert!(listing.contains("drop"), "after {what}: {listing}");
        assert_eq!(
            connect(&outside, &ips[0], 9001, 2),
            None,
            "outside -> pod dropped again after {what}"
        );
        assert_eq!(
            connect(&pods[0], "10.251.0.1", 9000, 20).as_deref(),
            Some("10.251.0.2"),
            "masqueraded again after {what}"
        );
        assert_eq!(
            Call::new("DEL", "up-x", Some(&extra.path))
                .run_in(&host.name, &conf)
                .0,
            0
        );
    };
    for (what, args) in [
        ("nft flush ruleset", vec!["nft", "flush", "ruleset"]),
        (
            "nft delete table",
            vec!["nft", "delete", "table", "ip", &table],
        ),
    ] {
        assert!(host.exec(&args).status.success(), "{what}");
        assert!(
            connect(&outside, &ips[0], 9001, 20).is_some(),
            "control: after {what} the outside gets in"
        );
        readd(what);
    }

    // Unplug the uplink: nothing inside changes.
    ip_in(&host, &["link", "del", &up]);
    assert!(pods[0].ping(&ips[1]));
    assert!(pods[1].ping("10.252.0.1"));
    let mut check = conf.clone();
    check["prevResult"] =
        json!({ "cniVersion": "1.1.0", "ips": [{ "address": format!("{}/24", ips[0]) }] });
    let (code, r) = Call::new("CHECK", "up-0", Some(&pods[0].path)).run_in(&host.name, &check);
    assert_eq!(code, 0, "{r}");
    for (i, p) in pods.iter().enumerate() {
        let id = format!("up-{i}");
        assert_eq!(
            Call::new("DEL", &id, Some(&p.path))
                .run_in(&host.name, &conf)
                .0,
            0
        );
    }
}
