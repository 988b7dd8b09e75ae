//! `--version`, `--check-config` on the sample configs and `--hash-token` of the real binaries.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::Write;
use std::process::{Command, Stdio};

const COMMS: &str = env!("CARGO_BIN_EXE_smarter-comms");
const AGENT: &str = env!("CARGO_BIN_EXE_smarter-debug-agent");

fn sample(name: &str) -> String {
    format!("{}/config/{name}", env!("CARGO_MANIFEST_DIR"))
}

#[test]
fn version_and_sample_configs() {
    for (bin, cfg) in [
        (COMMS, "smarter-comms.toml"),
        (AGENT, "smarter-debug-agent.toml"),
    ] {
        let o = Command::new(bin).arg("--version").output().unwrap();
        assert!(o.status.success());
        assert!(String::from_utf8_lossy(&o.stdout).contains(env!("CARGO_PKG_VERSION")));
        let o = Command::new(bin)
            .args(["--check-config", "--config", &sample(cfg)])
            .output()
            .unwrap();
        assert!(
            o.status.success(),
            "{cfg}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
    }
}

#[test]
fn bad_config_names_the_field() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("agent.toml");
    std::fs::write(
        &cfg,
        "comms_address = \"x:1\"\ncomms_host_key = \"nope\"\ngateway_name = \"gw\"\n",
    )
    .unwrap();
    let o = Command::new(AGENT)
        .args(["--check-config", "--config"])
        .arg(&cfg)
        .output()
        .unwrap();
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("comms_host_key"));
}

#[test]
fn hash_token_matches_sha256() {
    let mut c = Command::new(COMMS)
        .arg("--hash-token")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    c.stdin
        .take()
        .unwrap()
        .write_all(b"example-token\n")
        .unwrap();
    let o = c.wait_with_output().unwrap();
    assert_eq!(
        String::from_utf8_lossy(&o.stdout).trim(),
        "4d1566a1d7df42a8517456d60ea06ed284e535cfe4c956aa6ee172dbcdf945f7"
    );
}
