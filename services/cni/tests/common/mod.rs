//! Test harness: drive the real binary exactly as a runtime does (CNI
//! environment + stdin), and guards that remove every namespace, bridge,
//! rule and directory a test creates, even when it fails.
#![allow(dead_code, unreachable_pub)]

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};

use serde_json::Value;

pub const BIN: &str = env!("CARGO_BIN_EXE_smarter-cni");

/// Root, and the tools we need: else print why and skip (or fail, under
/// CI).
pub fn can_run() -> bool {
    smarter_test_support::require_root("network namespaces, bridges, nftables")
        && smarter_test_support::require_peer("ip", "iproute2")
        && smarter_test_support::require_peer("nft", "nftables")
        && smarter_test_support::require_peer("ping", "iputils-ping")
}

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// A short unique tag for names (interface names are at most 15 bytes).
pub fn tag() -> String {
    let n = COUNTER.fetch_add(1, Ordering::SeqCst);
    format!("{:x}{n:x}", std::process::id() % 0xffff)
}

/// One plugin invocation.
#[derive(Debug, Clone)]
pub struct Call<'a> {
    pub command: &'a str,
    pub container_id: &'a str,
    pub netns: Option<&'a Path>,
    pub ifname: &'a str,
    pub args: &'a str,
    pub path: &'a str,
}

impl<'a> Call<'a> {
    pub fn new(command: &'a str, container_id: &'a str, netns: Option<&'a Path>) -> Self {
        Self {
            command,
            container_id,
            netns,
            ifname: "eth0",
            args: "",
            path: "/usr/lib/cni",
        }
    }

    pub fn command(&self, bin: &str, conf: &Value) -> Command {
        let mut cmd = Command::new(bin);
        cmd.env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("CNI_COMMAND", self.command)
            .env("CNI_CONTAINERID", self.container_id)
            .env("CNI_IFNAME", self.ifname)
            .env("CNI_PATH", self.path)
            .env("CNI_ARGS", self.args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        if let Some(ns) = self.netns {
            cmd.env("CNI_NETNS", ns);
        }
        let _ = conf;
        cmd
    }

    /// Run `bin` (ours or a reference plugin) and return exit code and
    /// parsed stdout (`Null` when empty).
    pub fn run_bin(&self, bin: &str, conf: &Value) -> (i32, Value) {
        let mut child = match self.command(bin, conf).spawn() {
            Ok(c) => c,
            Err(e) => panic!("spawn {bin}: {e}"),
        };
        if let Some(mut w) = child.stdin.take() {
            let _ = w.write_all(conf.to_string().as_bytes());
        }
        let out = match child.wait_with_output() {
            Ok(o) => o,
            Err(e) => panic!("wait {bin}: {e}"),
        };
        let text = String::from_utf8_lossy(&out.stdout);
        let v = if text.trim().is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text)
                .unwrap_or_else(|e| panic!("bad JSON from {bin}: {e}: {text}"))
        };
        if !out.status.success() {
            eprintln!(
                "{bin} {}: stderr: {}",
                self.command,
                String::from_utf8_lossy(&out.stderr)
            );
        }
        (out.status.code().unwrap_or(-1), v)
    }

    pub fn run(&self, conf: &Value) -> (i32, Value) {
        self.run_bin(BIN, conf)
    }

    /// Run our binary inside network namespace `netns` (as if that were the
    /// host), through `ip netns exec`.
    pub fn run_in(&self, netns: &str, conf: &Value) -> (i32, Value) {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let wrapper = dir.path().join("in-netns");
        let script = format!("#!/bin/sh\nexec ip netns exec {netns} {BIN}\n");
        std::fs::write(&wrapper, script).unwrap_or_else(|e| panic!("{e}"));
        use std::os::unix::fs::PermissionsExt;
        let _ = std::fs::set_permissions(&wrapper, std::fs::Permissions::from_mode(0o755));
        self.run_bin(&wrapper.display().to_string(), conf)
    }
}

/// A network namespace (smarter-test-support's, deleted on drop), with
/// its name and path at hand as the plugin's callers need them.
pub struct Netns {
    pub name: String,
    pub path: PathBuf,
    ns: smarter_test_support::Netns,
}

impl Netns {
    pub fn new(name: &str) -> Self {
        let ns = smarter_test_support::Netns::new(name)
            .unwrap_or_else(|e| panic!("network namespace {name}: {e}"));
        Self {
            name: ns.name().to_string(),
            path: ns.path().to_path_buf(),
            ns,
        }
    }

    /// `program` run inside the namespace.
    pub fn command(&self, program: &str) -> Command {
        self.ns.command(program)
    }

    pub fn exec(&self, args: &[&str]) -> std::process::Output {
        self.ns.exec(args).unwrap_or_else(|e| panic!("{e}"))
    }

    pub fn ping(&self, ip: &str) -> bool {
        self.exec(&["ping", "-c", "1", "-W", "1", "-q", ip])
            .status
            .success()
    }
}

/// Removes a network's bridge, nft tables and iptables accepts on drop.
pub struct NetworkGuard {
    pub network: String,
    pub bridge: String,
}

impl Drop for NetworkGuard {
    fn drop(&mut self) {
        let _ = smarter_cni::native::remove_network(&self.network, &self.bridge);
    }
}

/// Whether a link exists in the host namespace.
pub fn host_link_exists(name: &str) -> bool {
    Command::new("ip")
        .args(["link", "show", "dev", name])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

pub fn ip_of(result: &Value) -> String {
    result["ips"][0]["address"]
        .as_str()
        .and_then(|a| a.split('/').next())
        .unwrap_or_default()
        .to_string()
}
