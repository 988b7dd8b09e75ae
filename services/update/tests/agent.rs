//! The real `smarter-update agent` binary end to end: a bundle server on
//! 127.0.0.1, a private `dbus-daemon` as the system bus (DBUS_SYSTEM_BUS_ADDRESS)
//! with stand-ins for RAUC and logind, the desired-bundle file, the boot id and
//! the health gate's state in temp files. A "reboot" is the test stopping the
//! agent, switching the stand-in RAUC's booted slot (or not: a rollback),
//! writing a new boot id and starting the agent again, as after a real one.
#![allow(clippy::expect_used, clippy::panic)] // test harness: a failed setup step fails the test

mod common;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::bundle_server::{Server, bundle, target};
use common::bus::{Bus, FakeRauc, Plan, Slots, private_bus, serve_logind, serve_rauc, slots};
use smarter_test_support::wait_until_async;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The agent process; killed when dropped.
struct AgentProcess {
    child: Child,
    port: u16,
    log: Arc<Mutex<Vec<String>>>,
}

impl Drop for AgentProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl AgentProcess {
    fn log(&self) -> String {
        self.log.lock().expect("lock").join("\n")
    }
}

fn start_agent(config: &Path, bus: &Bus) -> AgentProcess {
    start_agent_on(config, &bus.address)
}

/// The agent with `address` as its system bus.
fn start_agent_on(config: &Path, address: &str) -> AgentProcess {
    let mut child = Command::new(env!("CARGO_BIN_EXE_smarter-update"))
        .args(["agent", "--config"])
        .arg(config)
        .env("DBUS_SYSTEM_BUS_ADDRESS", address)
        .env_remove("RUST_LOG")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start smarter-update agent");
    let stderr = child.stderr.take().expect("stderr");
    let log = Arc::new(Mutex::new(Vec::new()));
    let (tx, rx) = mpsc::channel();
    let lines = Arc::clone(&log);
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if let Some(port) = line
                .split_whitespace()
                .find_map(|w| w.strip_prefix("listen="))
                .and_then(|a| a.rsplit(':').next())
                .and_then(|p| p.parse::<u16>().ok())
            {
                let _ = tx.send(port);
            }
            lines.lock().expect("lock").push(line);
        }
    });
    let port = rx
        .recv_timeout(Duration::from_secs(60))
        .unwrap_or_else(|_| {
            panic!(
                "the agent printed no listen address:\n{}",
                log.lock().expect("lock").join("\n")
            )
        });
    AgentProcess { child, port, log }
}

async fn get(port: u16, path: &str) -> (u16, String) {
    let Ok(mut stream) = tokio::net::TcpStream::connect(("127.0.0.1", port)).await else {
        return (0, String::new());
    };
    let request = format!("GET {path} HTTP/1.1\r\nHost: localhost\r\n\r\n");
    if stream.write_all(request.as_bytes()).await.is_err() {
        return (0, String::new());
    }
    let mut text = String::new();
    let _ = stream.read_to_string(&mut text).await;
    let code = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (code, body)
}

/// Wait (a generous bound, not a timing assertion) until `/readyz` answers
/// `code` with a body containing `needle`.
async fn wait_ready(agent: &AgentProcess, code: u16, needle: &str) -> String {
    let last = std::sync::Mutex::new((0, String::new()));
    let answered = wait_until_async(
        format_args!("/readyz to answer {code} with {needle:?}"),
        Duration::from_secs(90),
        Duration::from_millis(100),
        || async {
            let got = get(agent.port, "/readyz").await;
            let ok = (got.0 == code && got.1.contains(needle)).then(|| got.1.clone());
            if let Ok(mut l) = last.lock() {
                *l = got;
            }
            ok
        },
    )
    .await;
    answered.unwrap_or_else(|e| {
        panic!(
            "{e}; last {:?}; agent log:\n{}",
            last.lock().map(|l| l.clone()).unwrap_or_default(),
            agent.log()
        )
    })
}

async fn wait_for(what: &str, agent: &AgentProcess, mut check: impl FnMut() -> bool) {
    let done = wait_until_async(
        what,
        Duration::from_secs(90),
        Duration::from_millis(100),
        || std::future::ready(check()),
    )
    .await;
    if let Err(e) = done {
        panic!("{e}; agent log:\n{}", agent.log());
    }
}

/// Everything one gateway needs, in a temp dir.
struct Gateway {
    dir: tempfile::TempDir,
    installs: Arc<Mutex<Vec<(String, usize)>>>,
    rauc: zbus::Connection,
    reboots: Arc<Mutex<Vec<bool>>>,
    _logind: zbus::Connection,
}

impl Gateway {
    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn config(&self) -> PathBuf {
        self.path("update-agent.toml")
    }

    fn set_boot_id(&self, id: &str) {
        std::fs::write(self.path("boot_id"), format!("{id}\n")).expect("boot id");
    }

    fn set_gate_good(&self, slot: &str) {
        std::fs::write(
            self.path("health-gate/state.toml"),
            format!("last_good_slot = \"{slot}\"\n"),
        )
        .expect("gate state");
    }

    fn set_desired(&self, version: &str, server: &Server, bytes: &[u8], sha256: Option<&str>) {
        let t = target(server, bytes);
        let sha = sha256.map_or_else(|| t.sha256.to_string(), str::to_string);
        std::fs::write(
            self.path("desired.toml"),
            format!(
                "version = \"{version}\"\nurl = \"{}\"\nsize = {}\nsha256 = \"{sha}\"\n",
                t.url, t.size
            ),
        )
        .expect("desired");
    }

    /// The stand-in RAUC after a reboot: `booted` ("A" or "B") is booted,
    /// slot B carries `version_b`.
    async fn reboot_into(&self, booted: &str, version_b: &str) {
        let mut s: Slots = slots(booted, "2026.11.0", "good");
        if let Some((_, fields)) = s.iter_mut().find(|(n, _)| n == "rootfs.1") {
            fields.push(("bundle.version", version_b.to_string()));
        }
        let iface = self
            .rauc
            .object_server()
            .interface::<_, FakeRauc>("/")
            .await
            .expect("stand-in RAUC");
        let mut fake = iface.get_mut().await;
        fake.slots = s;
        fake.boot_slot = booted.into();
    }

    fn data_files(&self) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(self.path("data"))
            .map(|d| {
                d.flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default();
        names.sort();
        names
    }
}

async fn gateway(bus: &Bus, plan: Plan) -> Gateway {
    let dir = tempfile::tempdir().expect("tempdir");
    let (installs, rauc) = serve_rauc(bus, plan, slots("A", "2026.11.0", "good"), "A").await;
    let (reboots, logind) = serve_logind(bus).await;
    let gw = Gateway {
        dir,
        installs,
        rauc,
        reboots,
        _logind: logind,
    };
    std::fs::create_dir(gw.path("health-gate")).expect("gate dir");
    gw.set_gate_good("A");
    gw.set_boot_id("boot-1");
    std::fs::write(
        gw.config(),
        format!(
            "desired_file = \"{d}/desired.toml\"\ndata_dir = \"{d}/data\"\n\
             health_gate_state_dir = \"{d}/health-gate\"\nboot_id_file = \"{d}/boot_id\"\n\
             listen = \"127.0.0.1:0\"\npoll_interval_s = 1\nretry_interval_s = 1\n",
            d = gw.dir.path().display()
        ),
    )
    .expect("config");
    gw
}

const SIZE: usize = 256 * 1024;

/// A gateway on `bus` (see [`gateway`]) whose desired bundle, 2026.12.1 of
/// SIZE bytes, is served on 127.0.0.1: (bytes, server, gateway).
async fn desiring(bus: &Bus, plan: Plan) -> (Vec<u8>, Server, Gateway) {
    let bytes = bundle(SIZE);
    let server = Server::start(bytes.clone());
    let gw = gateway(bus, plan).await;
    gw.set_desired("2026.12.1", &server, &bytes, None);
    (bytes, server, gw)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_update_downloads_installs_reboots_and_becomes_ready_once_marked_good() {
    let Some(bus) = private_bus() else { return };
    let (bytes, server, gw) = desiring(&bus, Plan::Succeed("2026.12.1".into())).await;
    // Slow enough (about 2 s) for a SIGHUP to arrive mid-download.
    server.set(|b| b.throttle = Some(128 * 1024));

    let agent = start_agent(&gw.config(), &bus);
    wait_for("the download's start", &agent, || {
        agent.log().contains("starting download")
    })
    .await;
    signal(&agent, "-HUP");
    let reboots = gw.reboots.clone();
    wait_for("the reboot request", &agent, || {
        !reboots.lock().expect("lock").is_empty()
    })
    .await;
    assert!(
        agent.log().contains("SIGHUP: config reloaded"),
        "{}",
        agent.log()
    );
    let body = wait_ready(&agent, 503, "reboot").await;
    assert!(body.contains("2026.12.1"), "{body}");
    let sha = target(&server, &bytes).sha256.to_string();
    let bundle_path = gw.path("data").join(format!("{sha}.raucb"));
    assert_eq!(
        gw.installs.lock().expect("lock").as_slice(),
        &[(bundle_path.display().to_string(), 0)]
    );
    assert_eq!(gw.reboots.lock().expect("lock").as_slice(), &[false]);
    let (code, metrics) = get(agent.port, "/metrics").await;
    assert_eq!(code, 200);
    assert!(
        metrics.contains(&format!("smarter_update_download_bytes_total {SIZE}")),
        "{metrics}"
    );
    assert!(
        metrics.contains("smarter_update_desired_info{version=\"2026.12.1\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("smarter_update_phase{phase=\"rebooting\"} 1"),
        "{metrics}"
    );
    // The process series every service exposes (the shared server adds them).
    for family in [
        "process_resident_memory_bytes",
        "process_start_time_seconds",
    ] {
        assert!(
            metrics.contains(&format!("# TYPE {family} gauge\n{family} ")),
            "{metrics}"
        );
    }
    assert_eq!(get(agent.port, "/healthz").await.0, 200);
    let log = agent.log();
    for step in [
        "starting download",
        "bundle downloaded and verified",
        "asking RAUC to install",
        "RAUC installed the bundle",
        "asking logind to reboot the host",
    ] {
        assert!(log.contains(step), "no {step:?} in the log:\n{log}");
    }
    drop(agent);

    // The reboot: slot B booted with the new version, a new boot id; the
    // health gate has not marked B good yet.
    gw.reboot_into("B", "2026.12.1").await;
    gw.set_boot_id("boot-2");
    let agent = start_agent(&gw.config(), &bus);
    wait_ready(&agent, 503, "waiting for the health gate").await;
    gw.set_gate_good("B");
    let body = wait_ready(&agent, 200, "marked good").await;
    assert!(
        body.contains("rootfs.1") && body.contains("2026.12.1"),
        "{body}"
    );
    let (_, metrics) = get(agent.port, "/metrics").await;
    assert!(metrics.contains("smarter_update_ready 1"), "{metrics}");
    assert!(
        metrics.contains("smarter_update_booted_info{slot=\"rootfs.1\",version=\"2026.12.1\"} 1"),
        "{metrics}"
    );
    // Done: neither the bundle nor the record is kept.
    assert!(
        gw.data_files()
            .iter()
            .all(|f| !f.ends_with(".raucb") && f != "agent.json"),
        "{:?}",
        gw.data_files()
    );
    assert_eq!(gw.installs.lock().expect("lock").len(), 1);
    assert_eq!(gw.reboots.lock().expect("lock").len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rollback_is_reported_and_not_retried_until_the_desired_version_changes() {
    let Some(bus) = private_bus() else { return };
    let (bytes, server, gw) = desiring(&bus, Plan::Succeed("2026.12.1".into())).await;
    let agent = start_agent(&gw.config(), &bus);
    let reboots = gw.reboots.clone();
    wait_for("the reboot request", &agent, || {
        !reboots.lock().expect("lock").is_empty()
    })
    .await;
    drop(agent);

    // The new slot failed its health gate: the bootloader went back to A.
    gw.reboot_into("A", "2026.12.1").await;
    gw.set_boot_id("boot-2");
    let agent = start_agent(&gw.config(), &bus);
    let body = wait_ready(&agent, 503, "rolled back").await;
    assert!(
        body.contains("rootfs.0") && body.contains("2026.11.0"),
        "{body}"
    );
    let (_, metrics) = get(agent.port, "/metrics").await;
    assert!(
        metrics.contains("smarter_update_phase{phase=\"rolled-back\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("smarter_update_last_error_info{error=\"rolled back"),
        "{metrics}"
    );
    // Several more rounds (1 s apart) and another restart: no second try.
    tokio::time::sleep(Duration::from_secs(3)).await;
    drop(agent);
    let agent = start_agent(&gw.config(), &bus);
    wait_ready(&agent, 503, "rolled back").await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(gw.installs.lock().expect("lock").len(), 1);
    assert_eq!(gw.reboots.lock().expect("lock").len(), 1);

    // A new desired version: tried again.
    gw.set_desired("2026.12.2", &server, &bytes, None);
    let installs = gw.installs.clone();
    wait_for("a second install", &agent, || {
        installs.lock().expect("lock").len() == 2
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bundle_rauc_refuses_and_a_wrong_hash_are_reported_and_not_retried() {
    let Some(bus) = private_bus() else { return };
    let why = "signature verification failed";
    let (bytes, server, gw) = desiring(&bus, Plan::Fail(why.into())).await;
    let agent = start_agent(&gw.config(), &bus);
    let body = wait_ready(&agent, 503, why).await;
    assert!(body.contains("not retrying"), "{body}");
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(gw.installs.lock().expect("lock").len(), 1, "not retried");
    assert!(gw.reboots.lock().expect("lock").is_empty(), "no reboot");
    assert!(
        gw.data_files().iter().all(|f| !f.ends_with(".raucb")),
        "refused bundle removed: {:?}",
        gw.data_files()
    );

    // A desired hash the server's file does not have.
    let wrong = "0".repeat(64);
    gw.set_desired("2026.12.2", &server, &bytes, Some(&wrong));
    let body = wait_ready(&agent, 503, "SHA-256").await;
    assert!(
        body.contains("download refused") && body.contains("removed"),
        "{body}"
    );
    let sent = server.sent();
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(server.sent(), sent, "not downloaded again");
    assert_eq!(
        gw.installs.lock().expect("lock").len(),
        1,
        "nothing installed"
    );
    assert!(
        gw.data_files()
            .iter()
            .all(|f| !f.ends_with(".raucb") && !f.starts_with("bundle.")),
        "{:?}",
        gw.data_files()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_is_reported_while_the_agent_keeps_serving() {
    let Some(bus) = private_bus() else { return };
    let gw = gateway(&bus, Plan::Succeed("x".into())).await;
    // No desired file yet.
    let agent = start_agent(&gw.config(), &bus);
    let body = wait_ready(&agent, 503, "desired bundle").await;
    assert!(body.contains("desired.toml"), "{body}");
    // A malformed one names the field and value.
    std::fs::write(
        gw.path("desired.toml"),
        format!(
            "version = \"1\"\nurl = \"ftp://x/b\"\nsize = 1\nsha256 = \"{}\"\n",
            "0".repeat(64)
        ),
    )
    .expect("desired");
    wait_ready(&agent, 503, "ftp://x/b").await;
    // An unreachable server: retried, reported.
    let refused = smarter_test_support::RefusedPort::new().expect("a refused port");
    let port = refused.port();
    std::fs::write(
        gw.path("desired.toml"),
        format!(
            "version = \"1\"\nurl = \"http://127.0.0.1:{port}/b.raucb\"\nsize = 10\nsha256 = \"{}\"\n",
            "0".repeat(64)
        ),
    )
    .expect("desired");
    wait_ready(&agent, 503, "cannot GET").await;
    assert_eq!(get(agent.port, "/healthz").await.0, 200);
    assert!(gw.installs.lock().expect("lock").is_empty());

    // SIGHUP with a broken config: rejected, the old one kept.
    let good = std::fs::read_to_string(gw.config()).expect("config");
    std::fs::write(gw.config(), format!("{good}bandwidth_bytes_per_s = 5\n")).expect("config");
    signal(&agent, "-HUP");
    wait_for("the SIGHUP rejection", &agent, || {
        agent.log().contains("new config rejected")
    })
    .await;
    assert_eq!(get(agent.port, "/healthz").await.0, 200);
    // SIGTERM: a clean exit.
    let mut agent = agent;
    stops_on_sigterm(&mut agent, 60, "no exit after SIGTERM").await;
}

/// SIGTERM `agent` and assert it exits with status 0 within `secs`.
async fn stops_on_sigterm(agent: &mut AgentProcess, secs: u64, what: &str) {
    signal(agent, "-TERM");
    let status = wait_until_async(
        what,
        Duration::from_secs(secs),
        Duration::from_millis(50),
        || std::future::ready(agent.child.try_wait().ok().flatten()),
    )
    .await
    .unwrap_or_else(|e| panic!("{e}:\n{}", agent.log()));
    assert!(status.success(), "{status}: {}", agent.log());
}

fn signal(agent: &AgentProcess, which: &str) {
    let status = Command::new("kill")
        .arg(which)
        .arg(agent.child.id().to_string())
        .status()
        .expect("kill");
    assert!(status.success());
}

/// A window that opened `from` minutes from now and is `len` minutes long (UTC).
fn window_from_now(from: u64, len: u64) -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs()
        / 60;
    let hhmm = |m: u64| format!("{:02}:{:02}", (m % 1440) / 60, m % 60);
    format!("{}-{}", hhmm(now + from), hhmm(now + from + len))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn closed_windows_hold_the_download_and_the_reboot() {
    let Some(bus) = private_bus() else { return };
    let (_, server, gw) = desiring(&bus, Plan::Succeed("2026.12.1".into())).await;
    let config = std::fs::read_to_string(gw.config()).expect("config");
    // The download window opens in two hours: nothing is fetched.
    std::fs::write(
        gw.config(),
        format!(
            "{config}download_window = \"{}\"\n",
            window_from_now(120, 60)
        ),
    )
    .expect("config");
    let agent = start_agent(&gw.config(), &bus);
    let body = wait_ready(&agent, 503, "download window").await;
    assert!(body.contains("opens in"), "{body}");
    assert_eq!(server.sent(), 0);
    drop(agent);

    // Downloads any time, reboots only in a window two hours away: installed, no reboot.
    std::fs::write(
        gw.config(),
        format!("{config}reboot_window = \"{}\"\n", window_from_now(120, 60)),
    )
    .expect("config");
    let agent = start_agent(&gw.config(), &bus);
    let body = wait_ready(&agent, 503, "reboot window").await;
    assert!(body.contains("is installed"), "{body}");
    assert_eq!(gw.installs.lock().expect("lock").len(), 1);
    let (_, metrics) = get(agent.port, "/metrics").await;
    assert!(
        metrics.contains("smarter_update_phase{phase=\"waiting-for-reboot-window\"} 1"),
        "{metrics}"
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(
        gw.reboots.lock().expect("lock").is_empty(),
        "no reboot outside the window"
    );
}

/// A bus socket that accepts connections and never answers (a wedged
/// dbus-daemon): the agent reports it within `connect_timeout_s`, and SIGTERM
/// stops it even while a connect hangs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wedged_system_bus_is_reported_and_sigterm_still_stops_the_agent() {
    let dir = tempfile::tempdir().expect("tempdir");
    let sock = dir.path().join("bus");
    let listener = std::os::unix::net::UnixListener::bind(&sock).expect("bind the bus socket");
    let held = Arc::new(Mutex::new(Vec::new()));
    let accepted = Arc::clone(&held);
    std::thread::spawn(move || {
        for conn in listener.incoming().flatten() {
            accepted.lock().expect("lock").push(conn);
        }
    });
    let address = format!("unix:path={}", sock.display());
    let config = |timeout: u64| {
        let path = dir.path().join(format!("agent-{timeout}.toml"));
        std::fs::write(
            &path,
            format!(
                "desired_file = \"{d}/desired.toml\"\ndata_dir = \"{d}/data\"\n\
                 health_gate_state_dir = \"\"\nlisten = \"127.0.0.1:0\"\n\
                 connect_timeout_s = {timeout}\nretry_interval_s = 1\n",
                d = dir.path().display()
            ),
        )
        .expect("config");
        path
    };

    // A bounded connect: reported, retried, and the endpoints keep answering.
    let agent = start_agent_on(&config(1), &address);
    let body = wait_ready(&agent, 503, "no answer within 1 s").await;
    assert!(body.contains("cannot connect to the system bus"), "{body}");
    assert_eq!(get(agent.port, "/healthz").await.0, 200);
    drop(agent);

    // SIGTERM while the first connect is still waiting for the bus.
    held.lock().expect("lock").clear();
    let mut agent = start_agent_on(&config(3600), &address);
    wait_for("the agent's connect to the wedged bus", &agent, || {
        !held.lock().expect("lock").is_empty()
    })
    .await;
    stops_on_sigterm(
        &mut agent,
        10,
        "SIGTERM did not stop the agent while it waited for the bus",
    )
    .await;
}

/// With `streaming = true` the agent hands RAUC the bundle's URL and fetches
/// nothing itself; a failed stream is retried, not blocked.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_streaming_rauc_gets_the_url_and_the_agent_downloads_nothing() {
    let Some(bus) = private_bus() else { return };
    let (bytes, server, gw) = desiring(&bus, Plan::Succeed("2026.12.1".into())).await;
    let config = std::fs::read_to_string(gw.config()).expect("config");
    std::fs::write(gw.config(), format!("{config}streaming = true\n")).expect("config");
    let agent = start_agent(&gw.config(), &bus);
    let reboots = gw.reboots.clone();
    wait_for("the reboot request", &agent, || {
        !reboots.lock().expect("lock").is_empty()
    })
    .await;
    let url = target(&server, &bytes).url.to_string();
    assert_eq!(
        gw.installs.lock().expect("lock").as_slice(),
        &[(url, 0)],
        "{}",
        agent.log()
    );
    assert!(
        gw.data_files()
            .iter()
            .all(|f| !f.ends_with(".raucb") && !f.ends_with(".part")),
        "{:?}",
        gw.data_files()
    );
    let (_, metrics) = get(agent.port, "/metrics").await;
    assert!(
        metrics.contains("smarter_update_download_bytes_total 0"),
        "{metrics}"
    );
    assert!(
        agent.log().contains("RAUC streams 2026.12.1"),
        "{}",
        agent.log()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_stream_is_retried_not_blocked() {
    let Some(bus) = private_bus() else { return };
    let (_, _server, gw) =
        desiring(&bus, Plan::Fail("Transfer failed: connection reset".into())).await;
    let config = std::fs::read_to_string(gw.config()).expect("config");
    std::fs::write(gw.config(), format!("{config}streaming = true\n")).expect("config");
    let agent = start_agent(&gw.config(), &bus);
    let installs = gw.installs.clone();
    wait_for("a second streamed install", &agent, || {
        installs.lock().expect("lock").len() >= 2
    })
    .await;
    let body = wait_ready(&agent, 503, "connection reset").await;
    assert!(!body.contains("not retrying"), "{body}");
    assert!(gw.reboots.lock().expect("lock").is_empty());
}
