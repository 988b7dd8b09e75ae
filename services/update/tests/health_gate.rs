//! `smarter-update health-gate` run as the real binary. systemd cannot run in
//! this test environment (no PID 1 systemd, no D-Bus), so `systemctl` is a
//! small script on PATH that answers `is-active` from files; RAUC's
//! mark-good / mark-bad and the reboot are recorder scripts; the HTTP
//! endpoint is a real server on port 0 and the Docker runtime a real unix
//! socket answering `/_ping`.

// Helpers outside #[test] functions may panic too: this file is test code.
#![cfg(test)]

use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_smarter-update");

struct Gateway {
    dir: tempfile::TempDir,
}

fn write_exec(path: &Path, text: &str) {
    std::fs::write(path, text).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755))
        .unwrap_or_else(|e| panic!("chmod {}: {e}", path.display()));
}

impl Gateway {
    fn new(booted: &str) -> Self {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));
        let g = Self { dir };
        for d in ["bin", "units", "state"] {
            std::fs::create_dir(g.path(d)).unwrap_or_else(|e| panic!("mkdir {d}: {e}"));
        }
        let units = g.path("units");
        write_exec(
            &g.path("bin/systemctl"),
            &format!(
                "#!/bin/sh\n# test stand-in: is-active answers from {units}/<unit>\n[ \"$1\" = is-active ] || exit 1\nshift; [ \"$1\" = -- ] && shift\nrc=0\nfor u in \"$@\"; do\n  s=$(cat \"{units}/$u\" 2>/dev/null || echo inactive)\n  echo \"$s\"; [ \"$s\" = active ] || rc=3\ndone\nexit $rc\n",
                units = units.display()
            ),
        );
        let log = g.path("calls.log");
        for name in ["mark-good", "mark-bad", "reboot"] {
            write_exec(
                &g.path(&format!("bin/{name}")),
                &format!("#!/bin/sh\necho {name} >> {}\n", log.display()),
            );
        }
        write_exec(
            &g.path("bin/failing-mark-good"),
            "#!/bin/sh\necho 'rauc: D-Bus not available' >&2\nexit 1\n",
        );
        std::fs::write(
            g.path("cmdline"),
            format!("console=ttyAMA0 root=/dev/vda3 rauc.slot={booted} rw\n"),
        )
        .unwrap_or_else(|e| panic!("{e}"));
        std::fs::write(g.path("console"), "").unwrap_or_else(|e| panic!("{e}"));
        g
    }
    fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }
    fn unit(&self, name: &str, state: &str) {
        std::fs::write(self.path(&format!("units/{name}")), format!("{state}\n"))
            .unwrap_or_else(|e| panic!("{e}"));
    }
    fn last_good(&self, slot: &str) {
        std::fs::write(
            self.path("state/state.toml"),
            format!("last_good_slot = \"{slot}\"\n"),
        )
        .unwrap_or_else(|e| panic!("{e}"));
    }
    /// The config: each `key = value` line of `extra` adds or replaces a
    /// top-level key.
    fn config(&self, extra: &str) -> PathBuf {
        let b = |n: &str| format!("[\"{}\"]", self.path(&format!("bin/{n}")).display());
        let q = |rel: &str| format!("\"{}\"", self.path(rel).display());
        let mut keys: Vec<(String, String)> = [
            ("deadline_s", "1".to_string()),
            ("interval_ms", "100".to_string()),
            ("stable_s", "0".to_string()),
            ("check_timeout_ms", "500".to_string()),
            (
                "units",
                "[\"smarter-dns.service\", \"smarter-device-manager.service\"]".to_string(),
            ),
            ("mark_good", b("mark-good")),
            ("mark_bad", b("mark-bad")),
            ("reboot", b("reboot")),
            ("booted_slot", "\"cmdline\"".to_string()),
            ("cmdline", q("cmdline")),
            ("state_dir", q("state")),
            ("console", q("console")),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
        for line in extra.lines() {
            if let Some((k, v)) = line.split_once(" = ") {
                keys.retain(|(key, _)| key != k);
                keys.push((k.to_string(), v.to_string()));
            }
        }
        let mut text: String = keys.iter().map(|(k, v)| format!("{k} = {v}\n")).collect();
        text.push_str("[container_runtime]\nkind = \"none\"\n");
        let p = self.path("health-gate.toml");
        std::fs::write(&p, text).unwrap_or_else(|e| panic!("{e}"));
        p
    }
    fn run(&self, config: &Path) -> Output {
        let path = format!(
            "{}:{}",
            self.path("bin").display(),
            std::env::var("PATH").unwrap_or_default()
        );
        let out = Command::new(BIN)
            .args(["health-gate", "--config"])
            .arg(config)
            .env("PATH", path)
            .env_remove("RUST_LOG")
            .output()
            .unwrap_or_else(|e| panic!("run {BIN}: {e}"));
        eprintln!(
            "gate: {}\nstderr: {}\nconsole: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr),
            self.console()
        );
        out
    }
    fn calls(&self) -> Vec<String> {
        std::fs::read_to_string(self.path("calls.log"))
            .unwrap_or_default()
            .lines()
            .map(str::to_string)
            .collect()
    }
    fn console(&self) -> String {
        std::fs::read_to_string(self.path("console")).unwrap_or_default()
    }
    fn state(&self) -> String {
        std::fs::read_to_string(self.path("state/state.toml")).unwrap_or_default()
    }
}

/// An HTTP server on 127.0.0.1:0 answering every request with `status`.
fn http_server(status: u16) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap_or_else(|e| panic!("bind: {e}"));
    let port = listener
        .local_addr()
        .map(|a| a.port())
        .unwrap_or_else(|e| panic!("{e}"));
    std::thread::spawn(move || {
        for conn in listener.incoming().flatten() {
            let mut reader = BufReader::new(&conn);
            let mut line = String::new();
            while reader.read_line(&mut line).is_ok_and(|n| n > 2) {
                line.clear();
            }
            let _ = (&conn)
                .write_all(format!("HTTP/1.0 {status} X\r\nContent-Length: 0\r\n\r\n").as_bytes());
        }
    });
    format!("http://127.0.0.1:{port}/healthz")
}

#[test]
fn healthy_marks_the_slot_good_and_remembers_it() {
    let g = Gateway::new("B");
    g.unit("smarter-dns.service", "active");
    g.unit("smarter-device-manager.service", "active");
    let url = http_server(200);
    let out = g.run(&g.config(&format!("http = [\"{url}\"]")));
    assert_eq!(out.status.code(), Some(0));
    assert_eq!(g.calls(), ["mark-good"]);
    assert!(
        g.state().contains("last_good_slot = \"B\""),
        "{}",
        g.state()
    );
    assert!(
        g.console()
            .starts_with("smarter-health-gate: healthy after "),
        "{}",
        g.console()
    );
    assert!(g.console().contains("slot B marked good"));
}

#[test]
fn unhealthy_fresh_slot_reports_everything_then_mark_bad_and_reboot() {
    let g = Gateway::new("B");
    g.last_good("A");
    g.unit("smarter-dns.service", "failed");
    g.unit("smarter-device-manager.service", "active");
    let url = http_server(503);
    let started = Instant::now();
    let out = g.run(&g.config(&format!("http = [\"{url}\"]")));
    assert!(
        started.elapsed() >= Duration::from_secs(1),
        "deadline not honoured"
    );
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(g.calls(), ["mark-bad", "reboot"]);
    let console = g.console();
    for expected in [
        "UNHEALTHY: slot B after 1.",
        "2 check(s) failed",
        "  unit smarter-dns.service is failed, not active",
        &format!("  endpoint {url}: HTTP 503, not 200"),
        "slot B is not the known-good slot A: marking it bad and rebooting",
    ] {
        assert!(
            console.contains(expected),
            "missing {expected:?} in {console}"
        );
    }
    assert!(!console.contains("smarter-device-manager"), "{console}");
    // The journal (stderr under systemd) gets the same lines.
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("unit smarter-dns.service is failed, not active"),
        "{stderr}"
    );
    assert!(g.state().contains("last_good_slot = \"A\""));
}

#[test]
fn unhealthy_known_good_slot_is_never_rebooted() {
    let g = Gateway::new("A");
    g.last_good("A");
    g.unit("smarter-dns.service", "active");
    // smarter-device-manager.service has no state file: "inactive".
    let out = g.run(&g.config(""));
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(g.calls(), Vec::<String>::new());
    let console = g.console();
    assert!(
        console.contains("unit smarter-device-manager.service is inactive, not active"),
        "{console}"
    );
    assert!(
        console.contains("slot A is the known-good slot: not rebooting (no loop)"),
        "{console}"
    );
}

#[test]
fn unhealthy_first_boot_has_nothing_to_return_to() {
    let g = Gateway::new("A");
    let out = g.run(&g.config(""));
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(g.calls(), Vec::<String>::new());
    assert!(
        g.console().contains("no slot has been marked good yet"),
        "{}",
        g.console()
    );
    assert_eq!(g.state(), "");
}

#[test]
fn waits_for_a_unit_that_becomes_active_before_the_deadline() {
    let g = Gateway::new("B");
    g.last_good("A");
    g.unit("smarter-dns.service", "activating");
    g.unit("smarter-device-manager.service", "active");
    let config = g.config("deadline_s = 10");
    let units = g.path("units/smarter-dns.service");
    let flip = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(600));
        std::fs::write(units, "active\n")
    });
    let started = Instant::now();
    let out = g.run(&config);
    assert!(flip.join().is_ok_and(|r| r.is_ok()));
    assert_eq!(out.status.code(), Some(0));
    assert!(started.elapsed() >= Duration::from_millis(600));
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(g.calls(), ["mark-good"]);
    assert!(g.state().contains("last_good_slot = \"B\""));
}

/// A unit that crash-loops is `active` for moments between restarts; checks
/// that pass only now and then are not a healthy slot.
#[test]
fn a_crash_looping_unit_is_not_healthy() {
    let g = Gateway::new("B");
    g.last_good("A");
    g.unit("smarter-dns.service", "active");
    g.unit("smarter-device-manager.service", "active");
    let config = g.config("deadline_s = 3\nstable_s = 1");
    let units = g.path("units/smarter-dns.service");
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let stopped = std::sync::Arc::clone(&stop);
    let restarts = std::thread::spawn(move || {
        let mut n = 0u32;
        while !stopped.load(std::sync::atomic::Ordering::Relaxed) {
            let state = if n % 4 == 3 {
                "activating\n"
            } else {
                "active\n"
            };
            std::fs::write(&units, state)?;
            std::thread::sleep(Duration::from_millis(150));
            n += 1;
        }
        Ok::<(), std::io::Error>(())
    });
    let out = g.run(&config);
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    assert!(restarts.join().is_ok_and(|r| r.is_ok()));
    assert_ne!(
        out.status.code(),
        Some(0),
        "a crash-looping unit passed the gate"
    );
    assert_eq!(g.calls(), ["mark-bad", "reboot"]);
    // At the deadline the last round either failed (that failure is shown)
    // or passed too briefly (shown as such, with the failure that broke the
    // run): either way the console names the restarting unit.
    let console = g.console();
    assert!(
        console.contains("unit smarter-dns.service is activating"),
        "the console does not name the restarting unit: {console}"
    );
}

#[test]
fn booted_slot_from_rauc_status_json() {
    let g = Gateway::new("B");
    std::fs::write(g.path("cmdline"), "console=ttyAMA0\n").unwrap_or_else(|e| panic!("{e}"));
    write_exec(
        &g.path("bin/rauc-status"),
        "#!/bin/sh\necho '{\"compatible\":\"smarter-qemuarm64\",\"booted\":\"A\",\"boot_primary\":\"rootfs.0\",\"slots\":[]}'\n",
    );
    g.unit("smarter-dns.service", "active");
    g.unit("smarter-device-manager.service", "active");
    let rauc = g.path("bin/rauc-status");
    // "auto": no rauc.slot= on the command line, so rauc status decides.
    let out = g.run(&g.config(&format!(
        "rauc_status = [\"{}\"]\nbooted_slot = \"auto\"",
        rauc.display()
    )));
    assert_eq!(out.status.code(), Some(0));
    assert!(
        g.state().contains("last_good_slot = \"A\""),
        "{}",
        g.state()
    );
}

#[test]
fn docker_runtime_must_answer_ping() {
    let g = Gateway::new("B");
    g.last_good("A");
    g.unit("smarter-dns.service", "active");
    g.unit("smarter-device-manager.service", "active");
    let sock = g.path("docker.sock");
    let listener = UnixListener::bind(&sock).unwrap_or_else(|e| panic!("bind: {e}"));
    std::thread::spawn(move || {
        for conn in listener.incoming().flatten() {
            let mut reader = BufReader::new(&conn);
            let mut line = String::new();
            let _ = reader.read_line(&mut line);
            let ok = line.starts_with("GET /_ping ");
            while reader.read_line(&mut line).is_ok_and(|n| n > 2) {
                line.clear();
            }
            let answer = if ok {
                "HTTP/1.0 200 OK\r\n\r\nOK"
            } else {
                "HTTP/1.0 404 X\r\n\r\n"
            };
            let _ = (&conn).write_all(answer.as_bytes());
        }
    });
    let with_runtime = |socket: &Path| {
        let config = g.config("");
        let text = std::fs::read_to_string(&config)
            .unwrap_or_default()
            .replace(
                "kind = \"none\"",
                &format!("kind = \"docker\"\nsocket = \"{}\"", socket.display()),
            );
        std::fs::write(&config, text).unwrap_or_else(|e| panic!("{e}"));
        g.run(&config)
    };
    assert_eq!(with_runtime(&sock).status.code(), Some(0));
    assert_eq!(g.calls(), ["mark-good"]);

    // Now B is the known good slot; a missing runtime on A rolls back to B.
    std::fs::write(g.path("cmdline"), "rauc.slot=A\n").unwrap_or_else(|e| panic!("{e}"));
    let out = with_runtime(&g.path("missing.sock"));
    assert_eq!(out.status.code(), Some(1));
    assert!(
        g.console().contains(&format!(
            "container runtime docker at {}: cannot connect",
            g.path("missing.sock").display()
        )),
        "{}",
        g.console()
    );
    assert_eq!(g.calls(), ["mark-good", "mark-bad", "reboot"]);
}

#[test]
fn failed_mark_good_is_reported_and_not_remembered() {
    let g = Gateway::new("B");
    g.unit("smarter-dns.service", "active");
    g.unit("smarter-device-manager.service", "active");
    let config = g.config("");
    let text = std::fs::read_to_string(&config)
        .unwrap_or_default()
        .replace(
            &format!("mark_good = [\"{}\"]", g.path("bin/mark-good").display()),
            &format!(
                "mark_good = [\"{}\"]",
                g.path("bin/failing-mark-good").display()
            ),
        );
    std::fs::write(&config, text).unwrap_or_else(|e| panic!("{e}"));
    let out = g.run(&config);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        g.console().contains("marking slot B good failed"),
        "{}",
        g.console()
    );
    assert!(
        g.console().contains("rauc: D-Bus not available"),
        "{}",
        g.console()
    );
    assert_eq!(g.state(), "");
}

#[test]
fn bad_config_names_file_field_and_value() {
    let g = Gateway::new("A");
    let config = g.path("bad.toml");
    std::fs::write(&config, "deadline_s = 0\n").unwrap_or_else(|e| panic!("{e}"));
    let out = Command::new(BIN)
        .args(["health-gate", "--check-config", "--config"])
        .arg(&config)
        .output()
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&format!(
            "config {}: field `deadline_s`: invalid value \"0\"",
            config.display()
        )),
        "{stderr}"
    );
    let sample = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/health-gate.toml");
    let out = Command::new(BIN)
        .args(["health-gate", "--check-config", "--config"])
        .arg(&sample)
        .output()
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
