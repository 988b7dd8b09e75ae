//! `smarter-cni install` as a DaemonSet runs it: copies the binary, writes
#![allow(clippy::panic)] // test harness
//! the conflist, rewrites it when the TOML config changes or the file is
//! removed, and stops on SIGTERM.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_smarter-cni");

use smarter_test_support::ChildGuard as Kill;

/// Wait (bounded) until `f` holds; the bound only guards against a hang.
fn eventually(what: &str, f: impl FnMut() -> bool) {
    smarter_test_support::wait_until(what, Duration::from_secs(20), Duration::from_millis(20), f)
        .unwrap_or_else(|e| panic!("{e}"));
}

fn read_json(p: &Path) -> Option<Value> {
    serde_json::from_slice(&std::fs::read(p).ok()?).ok()
}

#[test]
fn installs_rewrites_on_change_and_stops_on_sigterm() -> Result<(), Box<dyn std::error::Error>> {
    let dir = tempfile::tempdir()?;
    let (bin_dir, conf_dir, cfg_dir) = (
        dir.path().join("bin"),
        dir.path().join("net.d"),
        dir.path().join("etc"),
    );
    std::fs::create_dir_all(&conf_dir)?;
    std::fs::create_dir_all(&cfg_dir)?;
    let cfg = cfg_dir.join("smarter-cni.toml");
    let write_cfg = |subnet: &str| {
        std::fs::write(
            &cfg,
            format!(
                "bin_dir = {:?}\nconf_dir = {:?}\nsubnet = {subnet:?}\n",
                bin_dir.display().to_string(),
                conf_dir.display().to_string()
            ),
        )
    };
    write_cfg("172.39.0.0/16")?;
    let child = Command::new(BIN)
        .args(["install", "--config", &cfg.display().to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()?;
    let mut child = Kill(child);
    let list = conf_dir.join("0-smarter-bridge.conflist");
    eventually("conflist written", || read_json(&list).is_some());
    let v = read_json(&list).unwrap_or_default();
    assert_eq!(v["name"], "smartnet");
    assert_eq!(v["plugins"][0]["type"], "smarter-cni");
    assert_eq!(v["plugins"][0]["bridge"], "smartnet0");
    assert_eq!(v["plugins"][1]["type"], "portmap");
    assert_eq!(v["plugins"][1]["capabilities"]["portMappings"], true);
    let installed = bin_dir.join("smarter-cni");
    assert_eq!(std::fs::read(&installed)?, std::fs::read(BIN)?);
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&installed)?.permissions().mode() & 0o777,
        0o755
    );

    // Config change: rewritten.
    write_cfg("10.77.0.0/16")?;
    eventually("conflist follows the config", || {
        read_json(&list).is_some_and(|v| v["plugins"][0]["ipam"]["subnet"] == "10.77.0.0/16")
    });
    // Removed behind our back: written again.
    std::fs::remove_file(&list)?;
    eventually("conflist restored", || list.exists());
    // An invalid config keeps the previous conflist.
    std::fs::write(&cfg, "subnet = 5\n")?;
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(
        read_json(&list).map(|v| v["plugins"][0]["ipam"]["subnet"].clone()),
        Some("10.77.0.0/16".into())
    );
    // No temp files left.
    let leftovers: Vec<_> = std::fs::read_dir(&conf_dir)?
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().ends_with(".tmp"))
        .collect();
    assert!(leftovers.is_empty());

    // SIGTERM: clean exit.
    let pid = i32::try_from(child.0.id())?;
    nix_kill(pid);
    eventually("exit on SIGTERM", || {
        matches!(child.0.try_wait(), Ok(Some(_)))
    });
    let status = child.0.wait()?;
    assert!(status.success(), "{status:?}");
    Ok(())
}

fn nix_kill(pid: i32) {
    let _ = Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status();
}

#[test]
fn check_config_accepts_sample_and_rejects_bad() {
    let sample = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/smarter-cni.toml");
    let ok = Command::new(BIN)
        .args(["--check-config", "--config", &sample.display().to_string()])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    assert!(ok);
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let bad = dir.path().join("bad.toml");
    let _ = std::fs::write(&bad, "subnet = \"10.0.0.0/99\"\n");
    let out = Command::new(BIN)
        .args(["--check-config", "--config", &bad.display().to_string()])
        .output()
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("subnet"));
}
