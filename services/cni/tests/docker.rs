//! Docker mode against the running dockerd: two sandbox containers (an
//! image imported from a tarball holding a static busybox, no pulls) are
//! attached by the real binary and resolve each other by pod-name alias
//! through Docker's embedded DNS.
#![allow(clippy::panic)] // test harness: a failed setup step fails the test

mod common;

use std::process::{Command, Stdio};

use common::*;
use serde_json::{Value, json};

const IMAGE: &str = "smarter-cni-test-busybox:latest";

fn docker(args: &[&str]) -> (bool, String) {
    match Command::new("docker")
        .args(args)
        .stderr(Stdio::inherit())
        .output()
    {
        Ok(o) => (
            o.status.success(),
            String::from_utf8_lossy(&o.stdout).trim().to_string(),
        ),
        Err(_) => (false, String::new()),
    }
}

fn docker_usable() -> bool {
    if !Command::new("docker")
        .args(["info"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
    {
        smarter_test_support::skip("dockerd is not reachable (start it: dockerd &)");
        return false;
    }
    let busybox = std::path::Path::new("/bin/busybox");
    if !busybox.exists() {
        panic!("/bin/busybox missing (Debian: busybox-static)");
    }
    true
}

/// Import a FROM-scratch image holding only a static busybox.
fn build_image() {
    if docker(&["image", "inspect", IMAGE]).0 {
        return;
    }
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let bin = dir.path().join("bin");
    std::fs::create_dir_all(&bin).unwrap_or_else(|e| panic!("{e}"));
    std::fs::copy("/bin/busybox", bin.join("busybox")).unwrap_or_else(|e| panic!("{e}"));
    let tar = dir.path().join("rootfs.tar");
    let ok = Command::new("tar")
        .args([
            "-C",
            &dir.path().display().to_string(),
            "-cf",
            &tar.display().to_string(),
            "bin",
        ])
        .status()
        .is_ok_and(|s| s.success());
    assert!(ok, "tar");
    let (ok, _) = docker(&["import", &tar.display().to_string(), IMAGE]);
    assert!(ok, "docker import");
}

struct Cleanup {
    containers: Vec<String>,
    network: String,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        for c in &self.containers {
            let _ = Command::new("docker")
                .args(["rm", "-f", c])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
        for args in [["network", "rm", &self.network], ["image", "rm", IMAGE]] {
            let _ = Command::new("docker")
                .args(args)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
    }
}

fn sandbox(name: &str, guard: &mut Cleanup) -> (String, std::path::PathBuf) {
    guard.containers.push(name.to_string());
    let (ok, id) = docker(&[
        "run",
        "-d",
        "--network",
        "none",
        "--name",
        name,
        IMAGE,
        "/bin/busybox",
        "sleep",
        "300",
    ]);
    assert!(ok, "docker run {name}");
    let (_, pid) = docker(&["inspect", "-f", "{{.State.Pid}}", &id]);
    (id, std::path::PathBuf::from(format!("/proc/{pid}/ns/net")))
}

#[test]
fn docker_mode_attaches_with_alias_and_detaches() {
    if !can_run() || !docker_usable() {
        return;
    }
    let t = tag();
    let network = format!("smcni{t}");
    let mut guard = Cleanup {
        containers: Vec::new(),
        network: network.clone(),
    };
    build_image();
    let records = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let conf = json!({
        "cniVersion": "1.1.0",
        "name": network,
        "type": "smarter-cni",
        "mode": "docker",
        "ipam": { "subnet": "10.207.0.0/24" },
        "recordsDir": records.path(),
    });
    let (ida, nsa) = sandbox(&format!("smcni-a{t}"), &mut guard);
    let (idb, nsb) = sandbox(&format!("smcni-b{t}"), &mut guard);
    let mut results = Vec::new();
    for (id, ns, pod) in [(&ida, &nsa, "poda"), (&idb, &nsb, "podb")] {
        let mut c = Call::new("ADD", id, Some(ns));
        let args = format!("K8S_POD_NAMESPACE=default;K8S_POD_NAME={pod}");
        c.args = &args;
        let (code, r) = c.run(&conf);
        assert_eq!(code, 0, "{r}");
        assert!(ip_of(&r).starts_with("10.207.0."), "{r}");
        assert_eq!(r["ips"][0]["gateway"], "10.207.0.1");
        results.push(r);
    }
    // Docker's embedded DNS answers for the alias.
    let (ok, out) = docker(&[
        "exec",
        &guard.containers[0],
        "/bin/busybox",
        "nslookup",
        "podb",
        "127.0.0.11",
    ]);
    assert!(
        ok && out.contains(&ip_of(&results[1])),
        "nslookup podb: {out}"
    );
    let (ok, _) = docker(&[
        "exec",
        &guard.containers[1],
        "/bin/busybox",
        "ping",
        "-c",
        "1",
        "-W",
        "2",
        "poda",
    ]);
    assert!(ok, "podb pings poda by name");
    // The record for smarter-dns is written in this mode too.
    assert!(records.path().join(format!("{ida}_eth0.json")).exists());
    // CHECK, DEL twice, CHECK fails afterwards.
    assert_eq!(Call::new("CHECK", &ida, Some(&nsa)).run(&conf).0, 0);
    for _ in 0..2 {
        let (code, r) = Call::new("DEL", &ida, Some(&nsa)).run(&conf);
        assert_eq!((code, r), (0, Value::Null));
    }
    assert_ne!(Call::new("CHECK", &ida, Some(&nsa)).run(&conf).0, 0);
    assert!(!records.path().join(format!("{ida}_eth0.json")).exists());
    let (code, r) = Call::new("STATUS", "", None).run(&conf);
    assert_eq!((code, r), (0, Value::Null));
    // GC: podb is no longer valid; it is disconnected and its record goes.
    let mut gc = conf.clone();
    gc["cni.dev/valid-attachments"] = json!([]);
    let (code, r) = Call::new("GC", "", None).run(&gc);
    assert_eq!((code, r), (0, Value::Null));
    let (_, nets) = docker(&["inspect", "-f", "{{json .NetworkSettings.Networks}}", &idb]);
    assert!(!nets.contains(&network), "{nets}");
    assert!(!records.path().join(format!("{idb}_eth0.json")).exists());
}
