//! The real binary in its own network namespace, queried with `dig` over
//! UDP and TCP: the dummy interface with 169.254.0.2, the bridge address,
//! nothing on an external address, forwarding to a dnsmasq upstream, and a
//! clean stop on SIGTERM. Needs root, `ip`, `dig` and `dnsmasq`.

mod common;

use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;
use smarter_test_support::{Netns, wait_until};

const BIN: &str = env!("CARGO_BIN_EXE_smarter-dns");

/// `dig` inside `ns`; its output whatever the status.
fn dig(ns: &Netns, args: &[&str]) -> Result<String, Box<dyn std::error::Error>> {
    let mut v = vec!["dig", "+tries=1", "+time=1"];
    v.extend_from_slice(args);
    let out = ns.exec(&v)?;
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

#[test]
fn binary_serves_cluster_dns_address_and_bridge_only() -> TestResult {
    if !require_root("network namespaces")
        || !require_peer("ip", "iproute2")
        || !require_peer("dig", "bind9-dnsutils")
        || !require_peer("dnsmasq", "dnsmasq")
    {
        return Ok(());
    }
    let ns = Netns::unique("smdns-bin")?;
    // A stand-in bridge (internal) and an external interface.
    ns.ip(&["link", "add", "smartnet0", "type", "bridge"])?;
    ns.ip(&["addr", "add", "172.39.0.1/16", "dev", "smartnet0"])?;
    ns.ip(&["link", "set", "smartnet0", "up"])?;
    ns.ip(&[
        "link", "add", "eth9", "type", "veth", "peer", "name", "eth9p",
    ])?;
    ns.ip(&["addr", "add", "192.0.2.10/24", "dev", "eth9"])?;
    ns.ip(&["link", "set", "eth9", "up"])?;
    ns.ip(&["link", "set", "eth9p", "up"])?;

    let up: SocketAddr = "127.0.0.2:53".parse()?;
    let _upstream = dnsmasq(up, "fwd.test", "10.0.0.1", Some(ns.name()))?;

    let dir = tempfile::tempdir()?;
    let records = dir.path().join("records");
    std::fs::write(dir.path().join("resolv.conf"), "nameserver 127.0.0.2\n")?;
    let cfg = dir.path().join("dns.toml");
    std::fs::write(
        &cfg,
        format!(
            "records_dir = \"{}\"\nresolv_conf = \"{}\"\nlisten = [\"169.254.0.2\", \"172.39.0.1\"]\nttl = 7\n",
            records.display(),
            dir.path().join("resolv.conf").display()
        ),
    )?;
    let child = ns
        .command(BIN)
        .arg("--config")
        .arg(&cfg)
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()?;
    let mut child = ChildGuard(child);

    write_record(
        &records,
        &record("c1", "camera", "iot", &["172.39.0.5", "fd00::5"]),
    )?;
    wait_until(
        "an answer on 169.254.0.2",
        Duration::from_secs(10),
        Duration::from_millis(5),
        || dig(&ns, &["@169.254.0.2", "+short", "camera"]).is_ok_and(|o| o.trim() == "172.39.0.5"),
    )?;

    // The dummy interface carries the cluster DNS address and is up; on a
    // kernel without dummy support, lo carries it.
    let dummy = ns.ip(&["link", "add", "probe0", "type", "dummy"]).is_ok();
    let iface = if dummy { "smarterdns0" } else { "lo" };
    let link = ns.ip(&["-o", "addr", "show", "dev", iface])?;
    assert!(link.contains("169.254.0.2/32"), "{link}");
    let state = ns.ip(&["-o", "link", "show", "dev", iface])?;
    assert!(state.contains(",UP"), "{state}");

    for server in ["@169.254.0.2", "@172.39.0.1"] {
        for proto in ["+notcp", "+tcp"] {
            for name in [
                "camera",
                "camera.iot.svc.cluster.local",
                "camera.svc.cluster.local",
                "camera.cluster.local",
            ] {
                let out = dig(&ns, &[server, proto, "+short", name])?;
                assert_eq!(out.trim(), "172.39.0.5", "{server} {proto} {name}");
            }
            let out = dig(&ns, &[server, proto, "+short", "camera", "AAAA"])?;
            assert_eq!(out.trim(), "fd00::5");
            let out = dig(&ns, &[server, proto, "+short", "-x", "172.39.0.5"])?;
            assert_eq!(out.trim(), "camera.iot.svc.cluster.local.");
            let out = dig(&ns, &[server, proto, "+short", "www.fwd.test"])?;
            assert_eq!(out.trim(), "10.0.0.1", "forwarded via {server} {proto}");
        }
    }
    // The short TTL is what we configured.
    let out = dig(&ns, &["@169.254.0.2", "+noall", "+answer", "camera"])?;
    assert!(out.split_whitespace().nth(1) == Some("7"), "{out}");
    // Zone transfer refused.
    let out = dig(&ns, &["@169.254.0.2", "cluster.local", "AXFR"])?;
    assert!(out.contains("Transfer failed"), "{out}");
    // Nothing answers on the external address.
    let out = dig(&ns, &["@192.0.2.10", "camera"])?;
    assert!(
        !out.contains("172.39.0.5") && !out.contains("status:"),
        "{out}"
    );
    let out = dig(&ns, &["@192.0.2.10", "+tcp", "camera"])?;
    assert!(!out.contains("status:"), "{out}");

    // Removal: NXDOMAIN.
    smarter_common::records::remove(&records, "c1", "eth0")?;
    wait_until(
        "NXDOMAIN for a removed record",
        Duration::from_secs(2),
        Duration::from_millis(5),
        || {
            dig(&ns, &["@169.254.0.2", "camera.iot.svc.cluster.local"])
                .is_ok_and(|o| o.contains("status: NXDOMAIN"))
        },
    )?;

    // SIGTERM stops it cleanly.
    child.signal(libc::SIGTERM)?;
    let status = child.wait_exit(Duration::from_secs(5))?;
    assert!(status.success(), "{status:?}");
    Ok(())
}

#[test]
fn records_command_prints_what_is_served() -> TestResult {
    let dir = tempfile::tempdir()?;
    let records = dir.path().join("records");
    write_record(&records, &record("c1", "camera", "iot", &["172.39.0.5"]))?;
    write_record(&records, &record("c2", "camera", "iot", &["172.39.0.6"]))?;
    std::fs::write(records.join("broken.json"), "{")?;
    let cfg = dir.path().join("dns.toml");
    std::fs::write(&cfg, format!("records_dir = \"{}\"\n", records.display()))?;
    let out = Command::new(BIN)
        .arg("--config")
        .arg(&cfg)
        .arg("records")
        .output()?;
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout)?;
    for line in [
        "camera. 172.39.0.5 172.39.0.6",
        "camera.iot.svc.cluster.local. 172.39.0.5 172.39.0.6",
        "camera.svc.cluster.local. 172.39.0.5 172.39.0.6",
        "camera.cluster.local. 172.39.0.5 172.39.0.6",
        "5.0.39.172.in-addr.arpa. PTR camera.iot.svc.cluster.local.",
    ] {
        assert!(
            text.lines().any(|l| l == line),
            "missing {line:?} in:\n{text}"
        );
    }
    Ok(())
}

#[test]
fn check_config_rejects_wildcard_listen() -> TestResult {
    let dir = tempfile::tempdir()?;
    let cfg = dir.path().join("dns.toml");
    std::fs::write(&cfg, "listen = [\"0.0.0.0\"]\n")?;
    let out = Command::new(BIN)
        .arg("--check-config")
        .arg("--config")
        .arg(&cfg)
        .output()?;
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("listen"), "{err}");
    Ok(())
}
