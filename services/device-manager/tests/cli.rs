//! `--check-config`, `--version` and `list` of the real binary.

use std::process::Command;

type R = Result<(), Box<dyn std::error::Error>>;

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_smarter-device-manager"))
}

/// Run `--check-config` on `text` saved as `name`; (success, stdout+stderr).
fn check(name: &str, text: &str) -> Result<(bool, String), Box<dyn std::error::Error>> {
    let t = tempfile::tempdir()?;
    let p = t.path().join(name);
    std::fs::write(&p, text)?;
    std::fs::create_dir_all(t.path().join("dev"))?;
    let out = bin()
        .arg("--check-config")
        .arg("--config")
        .arg(&p)
        .arg("--dev-root")
        .arg(t.path().join("dev"))
        .output()?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok((out.status.success(), text))
}

#[test]
fn broken_configs_give_clear_errors() -> R {
    let long = "n".repeat(64);
    let cases: Vec<(&str, String, &str)> = vec![
        (
            "c.toml",
            "[[rules]]\npath = \"^tty(\"\n".into(),
            "rules[0].path",
        ),
        (
            "c.toml",
            "[[rules]]\npath = \"x\"\ncount = 1\n".into(),
            "unknown field `count`",
        ),
        (
            "c.toml",
            format!("[[rules]]\nname = \"{long}\"\npath = \"x\"\n"),
            "at most 63",
        ),
        (
            "c.toml",
            "[[rules]]\npath = \"x\"\nmax_users = 0\n".into(),
            "rules[0].max_users",
        ),
        (
            "c.toml",
            "[[rules]]\npath = \"x\"\npermissions = \"rwx\"\n".into(),
            "rules[0].permissions",
        ),
        (
            "c.toml",
            "[[rules]]\nmax_users = 2\n".into(),
            "at least one of",
        ),
        (
            "conf.yaml",
            "- devicematch: \"^a[\"\n  nummaxdevices: 1\n".into(),
            "[0].devicematch",
        ),
        (
            "conf.yaml",
            "- devicematch: ^a$\n  nummaxdevices: 0\n".into(),
            "[0].nummaxdevices",
        ),
        (
            "conf.yaml",
            "- devicematch: ^a$\n  numaxdevices: 1\n".into(),
            "numaxdevices",
        ),
    ];
    for (name, text, want) in cases {
        let (ok, out) = check(name, &text)?;
        assert!(!ok, "{text:?} was accepted: {out}");
        assert!(out.contains(want), "{text:?}: want {want:?} in {out}");
        assert_eq!(out.trim().lines().count(), 1, "one line: {out}");
    }
    Ok(())
}

#[test]
fn sample_configs_check_ok() -> R {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("config");
    for f in ["smarter-device-manager.toml", "conf.yaml"] {
        let out = bin()
            .arg("--check-config")
            .arg("--config")
            .arg(dir.join(f))
            .output()?;
        assert!(
            out.status.success(),
            "{f}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(String::from_utf8_lossy(&out.stdout).starts_with("config OK"));
    }
    let out = bin().arg("--version").output()?;
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("smarter-device-manager "));
    Ok(())
}

#[test]
fn list_shows_matches_and_too_long_names() -> R {
    let t = tempfile::tempdir()?;
    let dev = t.path().join("dev");
    std::fs::create_dir_all(dev.join("snd"))?;
    // Directories and links need no root; device nodes do, so use a dir rule.
    std::fs::create_dir_all(dev.join(format!("x{}", "y".repeat(70))))?;
    let cfg = t.path().join("c.toml");
    std::fs::write(
        &cfg,
        "[[rules]]\npath = \"^snd$\"\n[[rules]]\npath = \"^x\"\n",
    )?;
    let out = bin()
        .arg("--config")
        .arg(&cfg)
        .arg("--dev-root")
        .arg(&dev)
        .arg("list")
        .output()?;
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    // An empty directory holds no node: no device, so no resource.
    assert!(text.contains("no resources match"), "{text}");
    if support_mknod(&dev.join("snd/controlC0")) {
        let out = bin()
            .arg("--config")
            .arg(&cfg)
            .arg("--dev-root")
            .arg(&dev)
            .arg("list")
            .output()?;
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            text.contains("smarter-devices/snd  rule=0 max_users=1"),
            "{text}"
        );
        assert!(
            text.contains("/snd/controlC0 -> /dev/snd/controlC0 (116:0)"),
            "{text}"
        );
        std::fs::create_dir_all(dev.join(format!("x{}", "y".repeat(70))).join("n"))?;
        support_mknod(&dev.join(format!("x{}/n/node", "y".repeat(70))));
        let out = bin()
            .arg("--check-config")
            .arg("--config")
            .arg(&cfg)
            .arg("--dev-root")
            .arg(&dev)
            .output()?;
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success());
        assert!(err.contains("at most 63"), "{err}");
    }
    Ok(())
}

fn support_mknod(path: &std::path::Path) -> bool {
    use std::os::unix::ffi::OsStrExt;
    let Ok(c) = std::ffi::CString::new(path.as_os_str().as_bytes()) else {
        return false;
    };
    // SAFETY: `c` is a valid NUL-terminated path that outlives the call.
    let rc = unsafe { libc::mknod(c.as_ptr(), libc::S_IFCHR | 0o600, libc::makedev(116, 0)) };
    if rc != 0 {
        smarter_test_support::skip("part of list test: cannot mknod (not root)");
    }
    rc == 0
}
