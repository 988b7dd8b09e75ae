//! `smarter-provision apply` and `check`, run as the real binary against a
//! temporary boot file and data directory.

// Helpers outside #[test] functions may panic too: this file is test code.
#![cfg(test)]

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const BIN: &str = env!("CARGO_BIN_EXE_smarter-provision");

fn testdata(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("testdata")
        .join(name)
}

struct Gateway {
    dir: tempfile::TempDir,
}

impl Gateway {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));
        let g = Self { dir };
        for d in ["boot", "data"] {
            std::fs::create_dir(g.path(d)).unwrap_or_else(|e| panic!("mkdir {d}: {e}"));
        }
        std::fs::write(g.path("console"), "").unwrap_or_else(|e| panic!("console: {e}"));
        g
    }
    fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }
    fn put(&self, testdata_name: &str) {
        std::fs::copy(
            testdata(testdata_name),
            self.path("boot/smarter-provision.toml"),
        )
        .unwrap_or_else(|e| panic!("copy {testdata_name}: {e}"));
    }
    fn apply_cmd(&self) -> Command {
        let mut c = Command::new(BIN);
        c.arg("apply")
            .arg("--file")
            .arg(self.path("boot/smarter-provision.toml"))
            .arg("--data-dir")
            .arg(self.path("data"))
            .arg("--console")
            .arg(self.path("console"));
        c
    }
    fn apply(&self) -> Output {
        let out = self
            .apply_cmd()
            .arg("--no-set-hostname")
            .output()
            .unwrap_or_else(|e| panic!("run {BIN}: {e}"));
        eprintln!(
            "apply: {}\nstdout: {}\nstderr: {}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        out
    }
    fn read(&self, rel: &str) -> String {
        std::fs::read_to_string(self.path(rel)).unwrap_or_else(|e| panic!("read {rel}: {e}"))
    }
    /// Every file under data/, relative, sorted.
    fn data_files(&self) -> Vec<String> {
        fn walk(dir: &Path, base: &Path, out: &mut Vec<String>) {
            for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
                let p = e.path();
                let rel = p
                    .strip_prefix(base)
                    .map(|r| r.display().to_string())
                    .unwrap_or_default();
                if p.is_dir() {
                    walk(&p, base, out);
                } else {
                    out.push(rel);
                }
            }
        }
        let mut out = Vec::new();
        walk(&self.path("data"), &self.path("data"), &mut out);
        out.sort();
        out
    }
}

#[test]
fn applies_once_with_token_0600_and_record_last() {
    let g = Gateway::new();
    g.put("labels.toml");
    let out = g.apply();
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(
        g.data_files(),
        [
            "etc/hostname",
            "etc/rancher/k3s/config.yaml",
            "etc/rancher/k3s/smarter-token",
            "smarter/provision/record.toml"
        ]
    );
    assert_eq!(
        g.read("data/etc/rancher/k3s/config.yaml"),
        std::fs::read_to_string(testdata("labels.config.yaml")).unwrap_or_default()
    );
    assert_eq!(
        g.read("data/etc/rancher/k3s/smarter-token"),
        "K10a5f0c2e1b7::server:3d1f6c\n"
    );
    let mode = std::fs::metadata(g.path("data/etc/rancher/k3s/smarter-token"))
        .map(|m| m.permissions().mode() & 0o777)
        .unwrap_or(0);
    assert_eq!(mode, 0o600);
    assert_eq!(g.read("data/etc/hostname"), "gw-0002.site-7\n");
    let record = g.read("data/smarter/provision/record.toml");
    assert!(
        record.contains("node_name = \"gw-0002.site-7\""),
        "{record}"
    );
    assert!(record.contains("source_sha256 = \"09ea65bc"), "{record}");
    assert!(!record.contains("3d1f6c"), "token in record: {record}");
    let console = g.read("console");
    assert!(
        console.starts_with(
            "smarter-provision: provisioned: node gw-0002.site-7 joins https://10.1.2.3:6443/"
        ),
        "{console}"
    );

    // Once only: a changed file is not applied again.
    g.put("minimal.toml");
    let out = g.apply();
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(g.read("data/smarter/provision/record.toml"), record);
    assert_eq!(g.read("data/etc/hostname"), "gw-0002.site-7\n");
}

#[test]
fn missing_file_exits_2_and_says_so() {
    let g = Gateway::new();
    let out = g.apply();
    assert_eq!(out.status.code(), Some(2));
    let console = g.read("console");
    assert!(console.contains("no provisioning file at"), "{console}");
    assert!(console.contains("boot/smarter-provision.toml"), "{console}");
    assert!(g.data_files().is_empty(), "{:?}", g.data_files());
}

#[test]
fn malformed_files_exit_3_name_file_field_value_and_apply_nothing() {
    let mut names: Vec<String> = std::fs::read_dir(testdata(""))
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_str().map(str::to_string))
        .filter(|n| n.starts_with("bad-") && n.ends_with(".toml"))
        .collect();
    names.sort();
    assert!(names.len() >= 8);
    for name in names {
        let g = Gateway::new();
        g.put(&name);
        let out = g.apply();
        assert_eq!(out.status.code(), Some(3), "{name}");
        let console = g.read("console");
        let expected = std::fs::read_to_string(testdata(&name.replace(".toml", ".error")))
            .unwrap_or_default()
            .trim_end()
            .replace(
                "/boot/smarter-provision.toml",
                &g.path("boot/smarter-provision.toml").display().to_string(),
            );
        assert_eq!(
            console,
            format!("smarter-provision: {expected}; nothing was applied\n"),
            "{name}"
        );
        assert!(g.data_files().is_empty(), "{name}: {:?}", g.data_files());
    }
}

#[test]
fn a_failing_step_leaves_the_previous_state_and_no_staging() {
    let g = Gateway::new();
    g.put("minimal.toml");
    // A previous (say, hand-made) k3s config, and an obstacle the hostname
    // rename cannot replace: a non-empty directory at data/etc/hostname.
    std::fs::create_dir_all(g.path("data/etc/rancher/k3s")).unwrap_or_else(|e| panic!("{e}"));
    std::fs::write(g.path("data/etc/rancher/k3s/config.yaml"), "old: true\n")
        .unwrap_or_else(|e| panic!("{e}"));
    std::fs::create_dir_all(g.path("data/etc/hostname/x")).unwrap_or_else(|e| panic!("{e}"));
    let out = g.apply();
    assert_eq!(out.status.code(), Some(4));
    let console = g.read("console");
    assert!(console.contains("etc/hostname"), "{console}");
    assert!(console.contains("nothing was applied"), "{console}");
    // The config written before the failing step was taken back.
    assert_eq!(g.read("data/etc/rancher/k3s/config.yaml"), "old: true\n");
    assert!(!g.path("data/etc/rancher/k3s/smarter-token").exists());
    assert!(!g.path("data/smarter/provision/record.toml").exists());
    assert!(!g.path("data/smarter/provision/.staging").exists());
    assert_eq!(g.data_files(), ["etc/rancher/k3s/config.yaml"]);

    // With the obstacle gone the next boot provisions completely.
    std::fs::remove_dir_all(g.path("data/etc/hostname")).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(g.apply().status.code(), Some(0));
    assert!(
        g.read("data/etc/rancher/k3s/config.yaml")
            .contains("node-name: \"gw-0001\"")
    );
    assert!(g.path("data/smarter/provision/record.toml").exists());
}

#[test]
fn a_stale_staging_dir_from_a_power_cut_is_discarded() {
    let g = Gateway::new();
    g.put("minimal.toml");
    std::fs::create_dir_all(g.path("data/smarter/provision/.staging"))
        .unwrap_or_else(|e| panic!("{e}"));
    std::fs::write(
        g.path("data/smarter/provision/.staging/config.yaml"),
        "half",
    )
    .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(g.apply().status.code(), Some(0));
    assert!(!g.path("data/smarter/provision/.staging").exists());
    assert!(
        g.read("data/etc/rancher/k3s/config.yaml")
            .contains("gw-0001")
    );
}

/// The running hostname is set with sethostname(2): done in a private UTS
/// namespace (`unshare --uts`) so the host keeps its name. Needs root.
#[test]
fn sets_the_hostname_in_a_uts_namespace() {
    if !smarter_test_support::require_root("a UTS namespace") {
        return;
    }
    let g = Gateway::new();
    g.put("minimal.toml");
    let cmd = g.apply_cmd();
    let mut args: Vec<String> = vec![BIN.to_string()];
    args.extend(cmd.get_args().map(|a| a.to_string_lossy().into_owned()));
    let out = Command::new("unshare")
        .arg("--uts")
        .arg("sh")
        .arg("-c")
        .arg("\"$@\" && cat /proc/sys/kernel/hostname")
        .arg("sh")
        .args(&args)
        .output()
        .unwrap_or_else(|e| panic!("unshare: {e}"));
    let stdout = String::from_utf8_lossy(&out.stdout);
    eprintln!("{}", String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{stdout}");
    assert_eq!(stdout.lines().last(), Some("gw-0001"));
}

#[test]
fn check_accepts_good_and_names_the_problem_in_bad_files() {
    let out = Command::new(BIN)
        .arg("check")
        .arg(testdata("minimal.toml"))
        .output();
    let out = out.unwrap_or_else(|e| panic!("{e}"));
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("provisioning file OK"));
    let out = Command::new(BIN)
        .arg("check")
        .arg(testdata("bad-node-name.toml"))
        .output();
    let out = out.unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("bad-node-name.toml: field `node_name`: invalid value \"Gateway_1\""),
        "{stderr}"
    );
}
