//! Harness for end-to-end tests: real comms and agent binaries on loopback,
//! Debian's OpenSSH client as the developer.
#![allow(dead_code, unreachable_pub)]

use std::io::{BufRead, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Output, Stdio};
use std::time::{Duration, Instant};

pub const TOKEN: &str = "test-admin-token";

/// Whether the OpenSSH client tools are here; prints why not (fails under
/// CI).
pub fn have_openssh() -> bool {
    ["ssh", "ssh-keygen", "scp"]
        .into_iter()
        .all(|tool| require_peer(tool, "openssh-client"))
        && require_peer("/usr/lib/openssh/sftp-server", "openssh-sftp-server")
}

pub fn sha256_hex(s: &str) -> String {
    let out = Command::new("sha256sum")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .and_then(|mut c| {
            c.stdin.take().unwrap().write_all(s.as_bytes())?;
            c.wait_with_output()
        })
        .unwrap();
    String::from_utf8(out.stdout).unwrap()[..64].to_string()
}

/// A child process killed when dropped.
pub use smarter_test_support::ChildGuard as Proc;
use smarter_test_support::{listening, require_peer, start_with_retry, wait_started, wait_until};

/// Waits for `child` to exit; fails with `what` if it still runs 5 s after
/// `since`.
pub fn wait_exit(child: &mut Proc, since: Instant, what: &str) -> ExitStatus {
    let left = Duration::from_secs(5).saturating_sub(since.elapsed());
    child
        .wait_exit(left)
        .unwrap_or_else(|e| panic!("{what}: {e}"))
}

pub fn wait_for(what: &str, timeout: Duration, f: impl FnMut() -> bool) {
    wait_until(what, timeout, Duration::from_millis(50), f).unwrap_or_else(|e| panic!("{e}"));
}

/// Minimal HTTP/1.1 client: returns (status, body).
pub fn http(
    port: u16,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<&str>,
) -> (u16, String) {
    http_ct(port, method, path, token, body, "application/json")
}

pub fn http_ct(
    port: u16,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<&str>,
    content_type: &str,
) -> (u16, String) {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut req = format!("{method} {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n");
    if let Some(t) = token {
        req += &format!("Authorization: Bearer {t}\r\n");
    }
    let body = body.unwrap_or("");
    if !body.is_empty() || method == "POST" || method == "PATCH" {
        req += &format!(
            "Content-Type: {content_type}\r\nContent-Length: {}\r\n",
            body.len()
        );
    }
    req += "\r\n";
    req += body;
    s.write_all(req.as_bytes()).unwrap();
    let mut resp = Vec::new();
    s.read_to_end(&mut resp).unwrap();
    let text = String::from_utf8_lossy(&resp).into_owned();
    let status: u16 = text.split_whitespace().nth(1).unwrap().parse().unwrap();
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body)
}

pub fn json(
    port: u16,
    method: &str,
    path: &str,
    body: Option<serde_json::Value>,
) -> (u16, serde_json::Value) {
    let b = body.map(|b| b.to_string());
    let (status, text) = http(port, method, path, Some(TOKEN), b.as_deref());
    let v = if text.is_empty() {
        serde_json::Value::Null
    } else {
        serde_json::from_str(&text).unwrap_or(serde_json::Value::String(text))
    };
    (status, v)
}

pub fn keygen(dir: &Path, name: &str) -> PathBuf {
    let path = dir.join(name);
    let st = Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-C", name, "-f"])
        .arg(&path)
        .status()
        .unwrap();
    assert!(st.success());
    path
}

/// Comms, an agent and a developer key, all in one temp dir.
pub struct World {
    pub dir: tempfile::TempDir,
    pub ssh_port: u16,
    pub api_port: u16,
    pub comms: Option<Proc>,
    pub agents: Vec<Proc>,
    pub comms_extra: String,
    /// `LogLevel` of the developer's ssh client: ERROR keeps test output
    /// quiet; OpenSSH's default INFO shows why comms refused a channel.
    pub ssh_log_level: &'static str,
    /// Options put first in the developer's ssh config (so they win over
    /// the defaults below them), e.g. `BatchMode no`.
    pub ssh_options: &'static str,
}

impl World {
    pub fn new() -> World {
        World::with_comms_config(|_| String::new())
    }

    /// [`World::new`] after [`World::standard_setup`], or `None` without the
    /// OpenSSH tools ([`have_openssh`]; under CI that fails the test).
    pub fn standard() -> Option<World> {
        World::standard_with_comms_config(|_| String::new())
    }

    /// [`World::with_comms_config`] after [`World::standard_setup`], or
    /// `None` without the OpenSSH tools (as [`World::standard`]).
    pub fn standard_with_comms_config(extra: impl FnOnce(&Path) -> String) -> Option<World> {
        if !have_openssh() {
            return None;
        }
        let mut w = World::with_comms_config(extra);
        w.standard_setup();
        Some(w)
    }

    /// Like [`World::new`], with extra comms config lines made from the temp dir path.
    pub fn with_comms_config(extra: impl FnOnce(&Path) -> String) -> World {
        let dir = tempfile::tempdir().unwrap();
        let comms_extra = extra(dir.path());
        let mut w = World {
            dir,
            // Picked when comms first starts.
            ssh_port: 0,
            api_port: 0,
            comms: None,
            agents: Vec::new(),
            comms_extra,
            ssh_log_level: "ERROR",
            ssh_options: "",
        };
        w.start_comms();
        w
    }

    pub fn path(&self, p: &str) -> PathBuf {
        self.dir.path().join(p)
    }

    /// Start comms: on the ports it had when it ran before, or else on a
    /// picked pair (ssh, ssh + 1) retried while comms says one is in use.
    pub fn start_comms(&mut self) {
        if self.ssh_port != 0 {
            self.spawn_comms();
            let port = self.api_port;
            wait_for("comms API", Duration::from_secs(20), || {
                TcpStream::connect(("127.0.0.1", port)).is_ok()
            });
            return;
        }
        let ((), port) = start_with_retry("smarter-comms", 10, |port| {
            (self.ssh_port, self.api_port) = (port, port + 1);
            let log = self.path("comms.log");
            let comms = self.spawn_comms();
            let pid = comms.0.id();
            let started = wait_started(
                &mut comms.0,
                "smarter-comms",
                Duration::from_secs(20),
                // Its own sockets: another test's comms may hold the ports.
                || listening(pid, port) && listening(pid, port + 1),
                // The log is appended to: this attempt's last line says why.
                |_| {
                    let text = std::fs::read_to_string(&log).unwrap_or_default();
                    text.lines().last().unwrap_or("").to_string()
                },
            );
            if started.is_err() {
                self.comms = None;
            }
            started
        })
        .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(port, self.ssh_port);
    }

    fn spawn_comms(&mut self) -> &mut Proc {
        let cfg = self.path("comms.toml");
        std::fs::write(
            &cfg,
            format!(
                "ssh_listen = \"127.0.0.1:{}\"\napi_listen = \"127.0.0.1:{}\"\nstate_dir = \"{}\"\nadmin_token_sha256 = \"{}\"\nauth_rejection_ms = 50\n{}",
                self.ssh_port,
                self.api_port,
                self.path("comms").display(),
                sha256_hex(TOKEN),
                self.comms_extra
            ),
        )
        .unwrap();
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.path("comms.log"))
            .unwrap();
        self.comms.insert(spawn_with_config(
            env!("CARGO_BIN_EXE_smarter-comms"),
            &cfg,
            log,
        ))
    }

    pub fn stop_comms(&mut self) {
        self.comms = None;
    }

    pub fn comms_host_key(&self) -> String {
        std::fs::read_to_string(self.path("comms/host_key.pub"))
            .unwrap()
            .trim()
            .to_string()
    }

    /// Starts an agent for `gateway` with its own state dir; returns its public key.
    pub fn start_agent(&mut self, gateway: &str, state: &str, extra: &str) -> String {
        let (pubkey, _) = self.spawn_agent(gateway, state, extra);
        wait_for("agent key", Duration::from_secs(20), || pubkey.exists());
        std::fs::read_to_string(pubkey).unwrap().trim().to_string()
    }

    /// [`World::start_agent`] with `/metrics` on a port the agent binds
    /// itself (picked, retried while the agent says it is in use): its
    /// public key and that port.
    pub fn start_agent_with_metrics(&mut self, gateway: &str, state: &str) -> (String, u16) {
        let (pubkey, port) = start_with_retry("smarter-debug-agent's metrics", 10, |port| {
            let extra = format!("metrics_listen = \"127.0.0.1:{port}\"\n");
            let log = self.path(&format!("{state}.log"));
            let (pubkey, agent) = self.spawn_agent(gateway, state, &extra);
            let pid = agent.0.id();
            let started = wait_started(
                &mut agent.0,
                "smarter-debug-agent's metrics",
                Duration::from_secs(20),
                || listening(pid, port),
                |_| std::fs::read_to_string(&log).unwrap_or_default(),
            );
            if started.is_err() {
                self.agents.pop();
            }
            started.map(|()| pubkey)
        })
        .unwrap_or_else(|e| panic!("{e}"));
        wait_for("agent key", Duration::from_secs(20), || pubkey.exists());
        let key = std::fs::read_to_string(pubkey).unwrap().trim().to_string();
        (key, port)
    }

    /// Spawns an agent; returns where its public key will be, and it.
    fn spawn_agent(&mut self, gateway: &str, state: &str, extra: &str) -> (PathBuf, &mut Proc) {
        let state_dir = self.path(state);
        // Host sessions stay in the test's namespaces unless a test says otherwise.
        let host_ns = if extra.contains("host_namespaces_pid") {
            ""
        } else {
            "host_namespaces_pid = 0\n"
        };
        let cfg = self.path(&format!("{state}.toml"));
        std::fs::write(
            &cfg,
            format!(
                "comms_address = \"127.0.0.1:{}\"\ncomms_host_key = \"{}\"\ngateway_name = \"{gateway}\"\nstate_dir = \"{}\"\nkeepalive_secs = 2\nmax_backoff_secs = 1\n{host_ns}{extra}",
                self.ssh_port,
                self.comms_host_key(),
                state_dir.display()
            ),
        )
        .unwrap();
        let log = std::fs::File::create(self.path(&format!("{state}.log"))).unwrap();
        let i = self.agents.len();
        self.agents.push(spawn_with_config(
            env!("CARGO_BIN_EXE_smarter-debug-agent"),
            &cfg,
            log,
        ));
        (state_dir.join("agent_key.pub"), &mut self.agents[i])
    }

    /// Enrols `gateway` with its agent, adds developer `dev` with a key and a
    /// host-wide grant; writes ssh config and known_hosts. Returns nothing;
    /// use [`World::ssh`].
    pub fn standard_setup(&mut self) {
        let key = self.start_agent("gateway-17", "agent", "");
        self.enrol("gateway-17", &key);
        self.add_developer("alice", None);
        self.grant("alice", "gateway-17", None, None, None);
        self.wait_connected("gateway-17");
    }

    pub fn enrol(&mut self, gateway: &str, key: &str) {
        let (st, v) = json(
            self.api_port,
            "POST",
            "/v1/gateways",
            Some(serde_json::json!({"name": gateway, "public_key": key})),
        );
        assert_eq!(st, 201, "{v}");
        let (st, kh) = http(
            self.api_port,
            "GET",
            &format!("/v1/gateways/{gateway}/known_hosts"),
            Some(TOKEN),
            None,
        );
        assert_eq!(st, 200);
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.path("known_hosts"))
            .unwrap();
        f.write_all(kh.as_bytes()).unwrap();
        writeln!(f, "[127.0.0.1]:{} {}", self.ssh_port, self.comms_host_key()).unwrap();
    }

    /// Adds a developer with a fresh key pair `<name>` in the temp dir.
    pub fn add_developer(&mut self, name: &str, expires_at: Option<i64>) -> PathBuf {
        let (st, v) = json(
            self.api_port,
            "POST",
            "/v1/developers",
            Some(serde_json::json!({"name": name, "expires_at": expires_at})),
        );
        assert_eq!(st, 201, "{v}");
        let key = keygen(self.dir.path(), name);
        let public = std::fs::read_to_string(key.with_extension("pub")).unwrap();
        let (st, v) = json(
            self.api_port,
            "POST",
            &format!("/v1/developers/{name}/keys"),
            Some(serde_json::json!({"public_key": public})),
        );
        assert_eq!(st, 201, "{v}");
        key
    }

    pub fn grant(
        &self,
        dev: &str,
        gw: &str,
        ns: Option<&str>,
        pod: Option<&str>,
        expires_at: Option<i64>,
    ) -> i64 {
        let (st, v) = json(
            self.api_port,
            "POST",
            "/v1/grants",
            Some(
                serde_json::json!({"developer": dev, "gateway": gw, "namespace": ns, "pod": pod, "expires_at": expires_at}),
            ),
        );
        assert_eq!(st, 201, "{v}");
        v["id"].as_i64().unwrap()
    }

    pub fn wait_connected(&self, gateway: &str) {
        let port = self.api_port;
        wait_for("gateway connected", Duration::from_secs(30), || {
            let (_, v) = json(port, "GET", &format!("/v1/gateways/{gateway}"), None);
            v["connected"] == true
        });
    }

    fn ssh_config(&self, identity: &Path, user: &str) -> PathBuf {
        let cfg = self.path(&format!(
            "ssh_config_{}_{user}",
            identity.file_name().unwrap().to_string_lossy()
        ));
        std::fs::write(
            &cfg,
            format!(
                "Host comms\n  HostName 127.0.0.1\n  Port {}\n  User {user}\nHost *\n{}  IdentityFile {}\n  IdentitiesOnly yes\n  UserKnownHostsFile {}\n  StrictHostKeyChecking yes\n  BatchMode yes\n  ConnectTimeout 10\n  LogLevel {}\n",
                self.ssh_port,
                self.ssh_options,
                identity.display(),
                self.path("known_hosts").display(),
                self.ssh_log_level
            ),
        )
        .unwrap();
        cfg
    }

    /// `ssh -F cfg -J comms ARGS...` as developer with key `identity`.
    pub fn ssh_cmd(&self, identity: &Path, args: &[&str]) -> Command {
        let user = identity.file_name().unwrap().to_string_lossy().to_string();
        self.ssh_cmd_as(identity, &user, args)
    }

    /// Like [`World::ssh_cmd`] but logging in to comms as `user`.
    pub fn ssh_cmd_as(&self, identity: &Path, user: &str, args: &[&str]) -> Command {
        let mut c = Command::new("ssh");
        c.arg("-F")
            .arg(self.ssh_config(identity, user))
            .args(["-J", "comms"])
            .args(args);
        c.stdin(Stdio::null());
        c
    }

    pub fn ssh(&self, identity: &Path, args: &[&str]) -> Output {
        self.ssh_cmd(identity, args).output().unwrap()
    }

    /// Opens a session on `gateway` as developer `identity` that prints
    /// `started` and then holds for 30 s; returns once `started` is read.
    /// Dropping the process ends the developer's side.
    pub fn hold_session(&self, identity: &Path, gateway: &str) -> Proc {
        let mut c = self.ssh_cmd(identity, &[gateway, "echo started; exec sleep 30"]);
        c.stdout(Stdio::piped());
        let mut child = Proc(c.spawn().unwrap());
        let mut line = String::new();
        std::io::BufReader::new(child.0.stdout.as_mut().unwrap())
            .read_line(&mut line)
            .unwrap();
        assert_eq!(line, "started\n");
        child
    }

    pub fn scp(&self, identity: &Path, args: &[&str]) -> Output {
        Command::new("scp")
            .arg("-F")
            .arg(self.ssh_config(identity, &identity.file_name().unwrap().to_string_lossy()))
            .args(["-J", "comms"])
            .args(args)
            .stdin(Stdio::null())
            .output()
            .unwrap()
    }

    /// Waits for the first session with a recording; returns the recording
    /// (asciinema v2 text).
    pub fn wait_recording(&self) -> String {
        let id = wait_until(
            "a session with a recording",
            Duration::from_secs(10),
            Duration::from_millis(50),
            || {
                let (_, v) = json(self.api_port, "GET", "/v1/sessions", None);
                v.as_array()?
                    .iter()
                    .find(|s| !s["recording"].is_null())
                    .and_then(|s| s["id"].as_i64())
            },
        )
        .unwrap_or_else(|e| panic!("no recording shipped: {e}"));
        let (st, cast) = http(
            self.api_port,
            "GET",
            &format!("/v1/sessions/{id}/recording"),
            Some(TOKEN),
            None,
        );
        assert_eq!(st, 200);
        cast
    }

    /// The sessions comms lists as live.
    pub fn live_sessions(&self) -> Vec<serde_json::Value> {
        let (_, live) = json(self.api_port, "GET", "/v1/sessions?live=true", None);
        live.as_array().unwrap().clone()
    }

    pub fn audit(&self) -> Vec<serde_json::Value> {
        let (st, v) = json(self.api_port, "GET", "/v1/audit", None);
        assert_eq!(st, 200);
        v.as_array().unwrap().clone()
    }

    /// Waits for an audit entry with `event` whose detail contains `needle`.
    pub fn wait_audit(&self, event: &str, needle: &str) -> serde_json::Value {
        wait_until(
            format_args!("an audit entry {event} containing {needle:?}"),
            Duration::from_secs(10),
            Duration::from_millis(50),
            || {
                self.audit().into_iter().find(|e| {
                    e["event"] == event && e["detail"].as_str().unwrap_or("").contains(needle)
                })
            },
        )
        .unwrap_or_else(|e| panic!("{e}; log: {:#?}", self.audit()))
    }
}

/// `bin --config cfg`, its stderr (the log) to `log`.
fn spawn_with_config(bin: &str, cfg: &Path, log: std::fs::File) -> Proc {
    let child = Command::new(bin)
        .arg("--config")
        .arg(cfg)
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap_or_else(|e| panic!("{bin}: {e}"));
    Proc(child)
}

pub fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}
