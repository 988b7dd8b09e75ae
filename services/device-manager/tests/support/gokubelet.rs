//! A second kubelet double on grpc-go, the gRPC stack real kubelets use:
//! `tests/grpc-go/kubelet.go`, built once per test binary into the cargo
//! target dir with Debian's Go and grpc-go sources (GOPATH mode, offline)
//! and run as a child process. It dials plugins as kubelets before 1.26 did
//! (the socket path as the HTTP/2 `:authority`). Its events arrive as lines
//! on its stdout (read by a thread), commands go to its stdin; see the
//! comment at the top of `kubelet.go` for the line protocol.
#![allow(dead_code, unreachable_pub)]

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::time::{Duration, Instant};

use prost::Message;
use smarter_device_manager::proto::v1beta1 as pb;

/// Debian's GOPATH (golang-google-grpc-dev, golang-google-protobuf-dev).
const GOPATH: &str = "/usr/share/gocode";
const SOURCE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/grpc-go/kubelet.go");

/// One event line, split into its first two words and the rest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    pub kind: String,
    /// The resource name for per-resource events, else the second word.
    pub resource: String,
    pub rest: String,
}

impl Event {
    fn parse(line: &str) -> Self {
        let mut it = line.splitn(3, ' ');
        let mut next = || it.next().unwrap_or_default().to_owned();
        Self {
            kind: next(),
            resource: next(),
            rest: next(),
        }
    }

    /// The hex payload of `options`/`list`/`allocate`/`preferred`, decoded.
    pub fn decode<M: Message + Default>(&self) -> Result<M, String> {
        let bytes = unhex(&self.rest)?;
        M::decode(bytes.as_slice()).map_err(|e| format!("{}: {e}", self.kind))
    }

    /// `(code, message)` of `end`/`*-error` events.
    pub fn status(&self) -> (i32, String) {
        let (code, msg) = self.rest.split_once(' ').unwrap_or((&self.rest, ""));
        (code.parse().unwrap_or(-1), msg.to_owned())
    }
}

fn unhex(s: &str) -> Result<Vec<u8>, String> {
    if !s.len().is_multiple_of(2) {
        return Err(format!("odd hex length: {s:?}"));
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).map_err(|e| format!("hex {s:?}: {e}")))
        .collect()
}

/// Why the Go kubelet cannot run here, or `None` when it can.
fn missing() -> Option<String> {
    if Command::new("go").arg("version").output().is_err() {
        return Some("no `go` in PATH (apt-get install golang-go)".into());
    }
    for (dir, pkg) in [
        ("google.golang.org/grpc", "golang-google-grpc-dev"),
        (
            "google.golang.org/protobuf/encoding/protowire",
            "golang-google-protobuf-dev",
        ),
    ] {
        if !Path::new(GOPATH).join("src").join(dir).is_dir() {
            return Some(format!("no {GOPATH}/src/{dir} (apt-get install {pkg})"));
        }
    }
    None
}

/// Build `kubelet.go` into the target dir, once per version of the source
/// (the binary's name carries a hash of it).
fn build() -> Result<PathBuf, String> {
    use std::hash::{Hash, Hasher};
    let src = std::fs::read(SOURCE).map_err(|e| format!("{SOURCE}: {e}"))?;
    let mut h = std::hash::DefaultHasher::new();
    src.hash(&mut h);
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("gokubelet");
    let out = dir.join(format!("kubelet-{:016x}", h.finish()));
    if out.is_file() {
        return Ok(out);
    }
    std::fs::create_dir_all(&dir).map_err(|e| format!("mkdir {}: {e}", dir.display()))?;
    // Built under another name and renamed, so a concurrent test binary
    // never runs a half-written file.
    let tmp = dir.join(format!("kubelet.{}", std::process::id()));
    let o = Command::new("go")
        .args(["build", "-o"])
        .arg(&tmp)
        .arg(SOURCE)
        .env("GO111MODULE", "off")
        .env("GOPATH", GOPATH)
        .env("GOCACHE", dir.join("cache"))
        .env("GOFLAGS", "")
        .env("CGO_ENABLED", "0")
        .output()
        .map_err(|e| format!("go build: {e}"))?;
    if !o.status.success() {
        return Err(format!(
            "go build {SOURCE} failed: {}",
            String::from_utf8_lossy(&o.stderr)
        ));
    }
    std::fs::rename(&tmp, &out).map_err(|e| format!("rename to {}: {e}", out.display()))?;
    Ok(out)
}

/// The built Go kubelet, or `None` after printing `SKIP <test>: …` when Go
/// or the grpc-go sources are missing. With `CI` or `SMARTER_REQUIRE_PEERS`
/// set, a missing peer is an error instead, so CI cannot skip silently. A
/// build failure is always an error.
pub fn binary(test: &str) -> Result<Option<PathBuf>, String> {
    static BUILT: OnceLock<Built> = OnceLock::new();
    let built = BUILT.get_or_init(|| match missing() {
        Some(why) => Built::Missing(why),
        None => build().map_or_else(Built::Failed, Built::Ok),
    });
    match built {
        Built::Ok(p) => Ok(Some(p.clone())),
        Built::Failed(e) => Err(e.clone()),
        Built::Missing(why) => {
            if smarter_test_support::peers_required() {
                return Err(format!(
                    "{test}: the grpc-go kubelet is required (CI or SMARTER_REQUIRE_PEERS set) but {why}"
                ));
            }
            smarter_test_support::skip(format!("{test}: {why}"));
            Ok(None)
        }
    }
}

enum Built {
    Ok(PathBuf),
    /// Go or the grpc-go sources are not installed.
    Missing(String),
    /// They are, but the build failed.
    Failed(String),
}

#[derive(Debug, Default)]
struct Lines {
    events: Vec<Event>,
    /// The reader saw EOF (the process is gone).
    closed: bool,
}

/// The running Go kubelet (killed on drop).
#[derive(Debug)]
pub struct GoKubelet {
    child: Child,
    stdin: Mutex<ChildStdin>,
    lines: Arc<(Mutex<Lines>, Condvar)>,
    log: PathBuf,
}

/// How long one command or wait may take at most.
const T: Duration = Duration::from_secs(10);

impl GoKubelet {
    /// Start `bin` serving `<dir>/kubelet.sock`, its stderr going to `log`;
    /// returns once it listens.
    pub fn start(bin: &Path, dir: &Path, log: &Path) -> Result<Self, String> {
        let err = std::fs::File::create(log).map_err(|e| format!("{}: {e}", log.display()))?;
        let mut child = Command::new(bin)
            .arg(dir)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(err)
            .spawn()
            .map_err(|e| format!("spawn {}: {e}", bin.display()))?;
        let (Some(stdin), Some(stdout)) = (child.stdin.take(), child.stdout.take()) else {
            return Err("no pipes".into());
        };
        let lines = Arc::new((Mutex::new(Lines::default()), Condvar::new()));
        let l = Arc::clone(&lines);
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                let (m, cv) = &*l;
                if let Ok(mut g) = m.lock() {
                    g.events.push(Event::parse(&line));
                }
                cv.notify_all();
            }
            let (m, cv) = &*l;
            if let Ok(mut g) = m.lock() {
                g.closed = true;
            }
            cv.notify_all();
        });
        let k = Self {
            child,
            stdin: Mutex::new(stdin),
            lines,
            log: log.to_owned(),
        };
        k.wait_event(0, T, |e| e.kind == "ready")?;
        Ok(k)
    }

    /// A copy of every event so far.
    pub fn events(&self) -> Vec<Event> {
        self.lines
            .0
            .lock()
            .map(|g| g.events.clone())
            .unwrap_or_default()
    }

    /// How many events so far (a mark for [`GoKubelet::wait_event`]).
    pub fn mark(&self) -> usize {
        self.lines
            .0
            .lock()
            .map(|g| g.events.len())
            .unwrap_or_default()
    }

    /// Wait until `f` returns `Some` for all the events so far.
    pub fn wait_for<T>(
        &self,
        timeout: Duration,
        mut f: impl FnMut(&[Event]) -> Option<T>,
    ) -> Result<T, String> {
        let end = Instant::now() + timeout;
        let (m, cv) = &*self.lines;
        let mut g = m.lock().map_err(|e| e.to_string())?;
        loop {
            if let Some(t) = f(&g.events) {
                return Ok(t);
            }
            let now = Instant::now();
            if now >= end || g.closed {
                let why = if g.closed {
                    "kubelet exited"
                } else {
                    "timeout"
                };
                return Err(format!(
                    "{why}; events:\n{}\nstderr: {}",
                    g.events
                        .iter()
                        .map(|e| format!("  {} {} {:.200}", e.kind, e.resource, e.rest))
                        .collect::<Vec<_>>()
                        .join("\n"),
                    self.log_text()
                ));
            }
            g = cv.wait_timeout(g, end - now).map_err(|e| e.to_string())?.0;
        }
    }

    /// Wait for the first event at index `from` or later that matches `f`.
    pub fn wait_event(
        &self,
        from: usize,
        timeout: Duration,
        f: impl Fn(&Event) -> bool,
    ) -> Result<Event, String> {
        self.wait_for(timeout, |ev| ev.iter().skip(from).find(|e| f(e)).cloned())
    }

    /// Wait until the latest ListAndWatch list of `resource` (received at
    /// `from` or later) satisfies `f`; returns it.
    pub fn wait_list(
        &self,
        resource: &str,
        from: usize,
        timeout: Duration,
        f: impl Fn(&pb::ListAndWatchResponse) -> bool,
    ) -> Result<pb::ListAndWatchResponse, String> {
        self.wait_for(timeout, |ev| {
            let last = ev
                .iter()
                .skip(from)
                .rfind(|e| e.kind == "list" && e.resource == resource)?;
            last.decode().ok().filter(|l| f(l))
        })
    }

    /// Send one command line and wait for its answer: `<what> <resource>`
    /// or `<what>-error <resource>`.
    fn call(&self, what: &str, resource: &str, line: &str) -> Result<Event, String> {
        let mut stdin = self.stdin.lock().map_err(|e| e.to_string())?;
        let from = self.mark();
        writeln!(stdin, "{line}").map_err(|e| format!("stdin: {e}"))?;
        let err_kind = format!("{what}-error");
        self.wait_event(from, T, |e| {
            e.resource == resource && (e.kind == what || e.kind == err_kind)
        })
    }

    /// Allocate `ids` of `resource` for one container: the response, or
    /// the gRPC `(code, message)`.
    pub fn allocate(
        &self,
        resource: &str,
        ids: &[&str],
    ) -> Result<Result<pb::AllocateResponse, (i32, String)>, String> {
        let line = format!("allocate {resource} {}", ids.join(","));
        let e = self.call("allocate", resource, &line)?;
        if e.kind == "allocate" {
            e.decode().map(Ok)
        } else {
            Ok(Err(e.status()))
        }
    }

    /// GetPreferredAllocation of `size` from `available`.
    pub fn preferred(
        &self,
        resource: &str,
        available: &[&str],
        size: u32,
    ) -> Result<Result<pb::PreferredAllocationResponse, (i32, String)>, String> {
        let line = format!("preferred {resource} {} {size}", available.join(","));
        let e = self.call("preferred", resource, &line)?;
        if e.kind == "preferred" {
            e.decode().map(Ok)
        } else {
            Ok(Err(e.status()))
        }
    }

    /// A kubelet restart: connections closed, every socket deleted,
    /// `kubelet.sock` listening again. Returns the mark after `restarted`.
    pub fn restart(&self) -> Result<usize, String> {
        let mut stdin = self.stdin.lock().map_err(|e| e.to_string())?;
        let from = self.mark();
        writeln!(stdin, "restart").map_err(|e| format!("stdin: {e}"))?;
        drop(stdin);
        self.wait_for(T, |ev| {
            let i = ev.iter().skip(from).position(|e| e.kind == "restarted")?;
            Some(from + i + 1)
        })
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for GoKubelet {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!("---- grpc-go kubelet events ----");
            for e in self.events() {
                eprintln!("{} {} {:.300}", e.kind, e.resource, e.rest);
            }
            eprintln!("---- grpc-go kubelet stderr ----\n{}", self.log_text());
        }
    }
}
