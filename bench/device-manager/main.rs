//! smarter-device-manager benchmark (not a test): run with
//!
//!     cargo bench -p smarter-device-manager --bench device-manager
//!
//! as root (mknod, and mount namespaces for the peer). It runs the release
//! binary against the kubelet double and prints: mknod → ListAndWatch latency
//! (median, p99 over 200 events), Allocate latency (median, p99 over 1,000
//! calls), resident memory with the default rules on this host's /dev and
//! with 1,000 matching nodes (pooled, and one resource per node as the
//! original's rules make), and the stripped binary size of every architecture
//! built in the target dir.
//!
//! Peer: set `SMARTER_DM_PEER` to an original (Go) smarter-device-manager
//! binary. It is run against the same kubelet double and the same nodes, in
//! a private mount namespace where the bench's temp dirs are bind-mounted
//! over the fixed paths it uses (`/dev`, `/var/lib/kubelet/device-plugins`),
//! and its RSS and Allocate latency are printed beside ours with the ratio.
//! Unset, the documented figure (DaemonSet memory limit 15 MiB raised to
//! 30 MiB) is printed and marked as not measured.
//!
//! `SMARTER_DM_BENCH_ONLY=memory` skips the hotplug part.
//! `SMARTER_DM_BENCH_HOLD=<secs>` keeps each process alive that long after
//! measuring (to inspect `/proc/<pid>`); `SMARTER_DM_WRAP="heaptrack -o f"`
//! runs our binary under a profiler (RSS figures are then the wrapper's).

#[path = "../../services/device-manager/tests/support/mod.rs"]
mod support;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use smarter_device_manager::proto::v1beta1 as pb;
use support::kubelet::connect_unix;
use support::{Env, FakeKubelet};

type R = Result<(), Box<dyn std::error::Error>>;

const T: Duration = Duration::from_secs(60);
/// The original DaemonSet's memory limit (raised from 15 MiB), documented.
const PEER_LIMIT_MIB: f64 = 30.0;
/// The original's default rules in its own conf.yaml format (same content as
/// our built-in defaults).
const DEFAULT_CONF_YAML: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/config/conf.yaml");

fn pct(v: &mut [Duration], p: f64) -> Duration {
    v.sort_unstable();
    let i = ((v.len() as f64 - 1.0) * p).round() as usize;
    v.get(i).copied().unwrap_or_default()
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// Resident memory of a process, from `/proc/<pid>/status`.
#[derive(Debug, Default, Clone, Copy)]
struct Mem {
    rss: u64,
    anon: u64,
    file: u64,
    threads: u64,
}

impl Mem {
    fn of(pid: u32) -> Self {
        let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
        let field = |name: &str| {
            s.lines()
                .find(|l| l.starts_with(name))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
                .unwrap_or(0)
        };
        Self {
            rss: field("VmRSS:"),
            anon: field("RssAnon:"),
            file: field("RssFile:"),
            threads: field("Threads:"),
        }
    }

    fn mib(self) -> f64 {
        self.rss as f64 / 1024.0
    }

    fn detail(self) -> String {
        format!(
            "{:.1} MiB (anon {:.1}, file {:.1}, {} threads)",
            self.mib(),
            self.anon as f64 / 1024.0,
            self.file as f64 / 1024.0,
            self.threads
        )
    }
}

fn env_secs(name: &str) -> Option<Duration> {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .map(Duration::from_secs)
}

async fn hold(what: &str, pid: u32) {
    if let Some(d) = env_secs("SMARTER_DM_BENCH_HOLD") {
        println!("  (holding {what} pid {pid} for {d:?})");
        tokio::time::sleep(d).await;
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> R {
    if !support::can_mknod("device-manager bench") {
        return Ok(());
    }
    let peer = std::env::var_os("SMARTER_DM_PEER").map(PathBuf::from);
    println!("smarter-device-manager benchmark");
    match &peer {
        Some(p) => println!("peer: {} (measured in this run)", p.display()),
        None => println!(
            "peer not measured (set SMARTER_DM_PEER to an original smarter-device-manager binary); \
             its documented DaemonSet memory limit is {PEER_LIMIT_MIB} MiB"
        ),
    }
    if std::env::var("SMARTER_DM_BENCH_ONLY").as_deref() != Ok("memory") {
        hotplug_and_allocate().await?;
    }
    memory(peer.as_deref()).await?;
    sizes(peer.as_deref());
    Ok(())
}

/// Start our binary (optionally under `SMARTER_DM_WRAP`).
fn spawn_ours(env: &mut Env, dev: &Path) -> std::io::Result<()> {
    let exe = env!("CARGO_BIN_EXE_smarter-device-manager");
    let wrap = std::env::var("SMARTER_DM_WRAP").unwrap_or_default();
    let mut words = wrap.split_whitespace();
    let mut cmd = match words.next() {
        Some(w) => {
            let mut c = Command::new(w);
            c.args(words).arg(exe);
            c
        }
        None => Command::new(exe),
    };
    let child = cmd
        .arg("--config")
        .arg(&env.config)
        .arg("--dev-root")
        .arg(dev)
        .arg("--sys-root")
        .arg(&env.sys)
        .arg("--plugin-dir")
        .arg(&env.plugins)
        .args(["--log-level", "warn"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&env.log)?)
        .spawn()?;
    env.child = Some(child);
    Ok(())
}

/// The peer, killed on drop.
struct Peer(Child);

impl Drop for Peer {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Start the original binary in a private mount namespace where `plugins`
/// is its fixed kubelet plugin dir and `dev` (if given) its `/dev`. Nothing
/// outside that namespace changes.
fn spawn_peer(
    exe: &Path,
    conf: &Path,
    plugins: &Path,
    dev: Option<&Path>,
    log: &Path,
) -> std::io::Result<Peer> {
    // A tmpfs over /var/lib (only in the namespace) gives a place for the
    // fixed plugin dir without creating it on the host.
    let mut script = String::from(
        "set -e; mount -t tmpfs none /var/lib; mkdir -p /var/lib/kubelet/device-plugins; \
         mount --bind \"$1\" /var/lib/kubelet/device-plugins; ",
    );
    if dev.is_some() {
        script.push_str("mount --bind \"$2\" /dev; ");
    }
    script.push_str("exec \"$3\" -config \"$4\" -logtostderr=true -v=0");
    let child = Command::new("unshare")
        .args(["--mount", "--propagation", "private", "--", "sh", "-c"])
        .arg(script)
        .arg("sh")
        .arg(plugins)
        .arg(dev.unwrap_or(Path::new("/dev")))
        .arg(exe)
        .arg(conf)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(log)?)
        .spawn()?;
    Ok(Peer(child))
}

async fn hotplug_and_allocate() -> R {
    let mut env = Env::new("dm.toml")?;
    // mknod'd nodes are never announced by udev: measure the inotify source
    // even where a udevd runs (auto would pick udev and see these nodes only
    // through its 40 ms fallback; tests/udev.rs measures real udev events).
    env.write_config(
        "health_interval_secs = 0\nhotplug = \"inotify\"\n[[rules]]\nname = \"bench\"\npath = \"^n[0-9]+$\"\nid = \"path\"\n",
    )?;
    env.mknod("n0", 240, 0)?;
    let k = FakeKubelet::start(&env.plugins)?;
    let dev = env.dev.clone();
    spawn_ours(&mut env, &dev)?;
    let res = "smarter-devices/bench";
    k.wait_for(res, T, |p| p.devices.len() == 1).await?;

    let mut lat = Vec::new();
    for i in 1..=200u32 {
        let id = format!("n{i}");
        let t0 = Instant::now();
        env.mknod(&id, 240, i)?;
        let p = k
            .wait_for(res, T, |p| {
                p.devices.iter().any(|(d, h)| *d == id && h == "Healthy")
            })
            .await?;
        lat.push(p.updated_at.map_or(t0.elapsed(), |u| u.duration_since(t0)));
    }
    let (med, p99) = (pct(&mut lat, 0.5), pct(&mut lat, 0.99));
    println!(
        "hotplug mknod -> ListAndWatch: median {:.2} ms, p99 {:.2} ms (target < 100 ms p99) | peer (original): never, it scans /dev once at start | ratio n/a",
        ms(med),
        ms(p99)
    );
    let ids: Vec<String> = (0..200).map(|i| format!("n{i}")).collect();
    let (med, p99) = allocate_latency(&env.plugins, &k, res, &ids).await?;
    println!(
        "Allocate (201-device pool, over gRPC/UDS): median {:.3} ms, p99 {:.3} ms (target < 1 ms)",
        ms(med),
        ms(p99)
    );
    Ok(())
}

/// Median and p99 of 1,000 Allocate calls on one connection, cycling `ids`.
async fn allocate_latency(
    plugins: &Path,
    k: &FakeKubelet,
    resource: &str,
    ids: &[String],
) -> Result<(Duration, Duration), Box<dyn std::error::Error>> {
    let plugin = k.plugin(resource).ok_or("not registered")?;
    let ch = connect_unix(&plugins.join(&plugin.endpoint)).await?;
    let mut c = support::v1beta1_grpc::device_plugin_client::DevicePluginClient::new(ch);
    let mut lat = Vec::new();
    for i in 0..1000usize {
        let id = ids.get(i % ids.len().max(1)).cloned().unwrap_or_default();
        let t0 = Instant::now();
        c.allocate(pb::AllocateRequest {
            container_requests: vec![pb::ContainerAllocateRequest {
                devices_ids: vec![id],
            }],
        })
        .await?;
        lat.push(t0.elapsed());
    }
    Ok((pct(&mut lat, 0.5), pct(&mut lat, 0.99)))
}

/// Wait until `n` resources registered and the last one's ListAndWatch
/// arrived; then let the process settle.
async fn wait_registered(k: &FakeKubelet, n: usize, last: Option<&str>) -> R {
    let end = Instant::now() + T;
    while k.resources().len() < n && Instant::now() < end {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    if let Some(last) = last {
        k.wait_for(last, T, |p| p.updates >= 1).await?;
    }
    Ok(())
}

/// Let the process finish what registration started before measuring.
async fn settle() {
    tokio::time::sleep(Duration::from_millis(1000)).await;
}

fn ratio(ours: f64, peer: Option<f64>) -> String {
    match peer {
        Some(p) if p > 0.0 => format!("ratio {:.2}", ours / p),
        _ => format!(
            "peer not measured; documented limit {PEER_LIMIT_MIB} MiB, ratio {:.2} to it",
            ours / PEER_LIMIT_MIB
        ),
    }
}

async fn memory(peer: Option<&Path>) -> R {
    // Default rules on this host's real /dev (read only), ours and the
    // peer's (its default conf.yaml, the same rules).
    let mut env = Env::new("dm.toml")?;
    env.write_config("# default rules\n")?;
    let k = FakeKubelet::start(&env.plugins)?;
    spawn_ours(&mut env, Path::new("/dev"))?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    settle().await;
    let n = k.resources().len();
    let pid = env.child.as_ref().map_or(0, Child::id);
    let ours = Mem::of(pid);
    hold("ours", pid).await;
    drop(k);
    drop(env);
    let peer_mem = match peer {
        Some(exe) => {
            let env = Env::new("conf.yaml")?;
            let k = FakeKubelet::start(&env.plugins)?;
            let p = spawn_peer(
                exe,
                Path::new(DEFAULT_CONF_YAML),
                &env.plugins,
                None,
                &env.log,
            )?;
            tokio::time::sleep(Duration::from_millis(500)).await;
            wait_registered(&k, n, None).await?;
            settle().await;
            let m = Mem::of(p.0.id());
            println!(
                "  peer registered {} resources (ours {n})",
                k.resources().len()
            );
            hold("peer", p.0.id()).await;
            Some(m)
        }
        None => None,
    };
    println!(
        "RSS, default rules on this host's /dev ({n} resources): ours {} (target < 8 MiB) | peer {} | {}",
        ours.detail(),
        peer_mem.map_or("not measured".to_string(), Mem::detail),
        ratio(ours.mib(), peer_mem.map(Mem::mib))
    );

    // 1,000 nodes pooled: ours only (the original cannot pool).
    let mut env = Env::new("dm.toml")?;
    env.write_config(
        "health_interval_secs = 0\n[[rules]]\nname = \"p\"\npath = \"^ttyUSB[0-9]+$\"\n",
    )?;
    for i in 0..1000u32 {
        env.mknod(&format!("ttyUSB{i}"), 188, i)?;
    }
    let k = FakeKubelet::start(&env.plugins)?;
    let t0 = Instant::now();
    let dev = env.dev.clone();
    spawn_ours(&mut env, &dev)?;
    k.wait_for("smarter-devices/p", T, |p| p.devices.len() == 1000)
        .await?;
    let up = t0.elapsed();
    settle().await;
    let pid = env.child.as_ref().map_or(0, Child::id);
    let ours = Mem::of(pid);
    hold("ours", pid).await;
    println!(
        "RSS, 1,000 nodes in one pooled resource: ours {} (listed in {:.0} ms) | peer: cannot pool (see one resource each) | {:.2} of the original's documented {PEER_LIMIT_MIB} MiB limit",
        ours.detail(),
        ms(up),
        ours.mib() / PEER_LIMIT_MIB
    );
    drop(k);
    drop(env);

    // 1,000 nodes, one resource each: what the original's rules make.
    let nodes = Env::new("conf.yaml")?;
    for i in 0..1000u32 {
        nodes.mknod(&format!("ttyUSB{i}"), 188, i)?;
    }
    let ours = separate_resources(&nodes.dev, None).await?;
    let peer_r = match peer {
        Some(exe) => Some(separate_resources(&nodes.dev, Some(exe)).await?),
        None => None,
    };
    let pm = peer_r.as_ref().map(|p| p.mem.mib());
    println!(
        "RSS, 1,000 nodes, one resource each (original rules): ours {} (registered in {:.0} ms) | peer {} | {}",
        ours.mem.detail(),
        ms(ours.up),
        peer_r
            .as_ref()
            .map_or("not measured".to_string(), |p| format!(
                "{} (registered in {:.0} ms)",
                p.mem.detail(),
                ms(p.up)
            )),
        ratio(ours.mem.mib(), pm)
    );
    println!(
        "RSS, the same after a kubelet restart (all re-registered): ours {} (in {:.0} ms) | peer {} | {}",
        ours.after_restart.detail(),
        ms(ours.reregistered),
        peer_r
            .as_ref()
            .map_or("not measured".to_string(), |p| format!(
                "{} (in {:.0} ms)",
                p.after_restart.detail(),
                ms(p.reregistered)
            )),
        ratio(
            ours.after_restart.mib(),
            peer_r.as_ref().map(|p| p.after_restart.mib())
        )
    );
    println!(
        "Allocate (one-device resource of 1,000, over gRPC/UDS): ours median {:.3} ms, p99 {:.3} ms | peer {} | {}",
        ms(ours.alloc.0),
        ms(ours.alloc.1),
        peer_r
            .as_ref()
            .map_or("not measured".to_string(), |p| format!(
                "median {:.3} ms, p99 {:.3} ms",
                ms(p.alloc.0),
                ms(p.alloc.1)
            )),
        peer_r.as_ref().map_or("ratio n/a".to_string(), |p| format!(
            "ratio {:.2} (median)",
            ours.alloc.0.as_secs_f64() / p.alloc.0.as_secs_f64().max(1e-9)
        )),
    );
    Ok(())
}

/// What one run over 1,000 one-node resources measured.
struct Separate {
    mem: Mem,
    up: Duration,
    alloc: (Duration, Duration),
    after_restart: Mem,
    reregistered: Duration,
}

/// Run ours (`peer` None) or the peer over the 1,000 nodes in `dev`, with
/// the original's per-node rule, against a fresh kubelet double: RSS once
/// all registered, Allocate latency, and RSS after a kubelet restart (every
/// socket deleted, `kubelet.sock` re-created) once all registered again.
async fn separate_resources(
    dev: &Path,
    peer: Option<&Path>,
) -> Result<Separate, Box<dyn std::error::Error>> {
    const LAST: &str = "smarter-devices/ttyUSB999";
    let mut env = Env::new("conf.yaml")?;
    env.write_config("- devicematch: ^ttyUSB[0-9]*$\n  nummaxdevices: 1\n")?;
    let mut k = FakeKubelet::start(&env.plugins)?;
    let t0 = Instant::now();
    let guard = match peer {
        Some(exe) => Some(spawn_peer(
            exe,
            &env.config,
            &env.plugins,
            Some(dev),
            &env.log,
        )?),
        None => {
            spawn_ours(&mut env, dev)?;
            None
        }
    };
    let pid = guard
        .as_ref()
        .map(|p| p.0.id())
        .or_else(|| env.child.as_ref().map(Child::id))
        .unwrap_or(0);
    wait_registered(&k, 1000, Some(LAST)).await?;
    let up = t0.elapsed();
    settle().await;
    let mem = Mem::of(pid);
    hold(if peer.is_some() { "peer" } else { "ours" }, pid).await;
    let alloc = allocate_latency(
        &env.plugins,
        &k,
        "smarter-devices/ttyUSB0",
        &["0".to_string()],
    )
    .await?;
    let t0 = Instant::now();
    k.restart().await?;
    let end = Instant::now() + T;
    loop {
        let names = k.resources();
        let again = names
            .iter()
            .filter(|n| {
                k.plugin(n)
                    .is_some_and(|p| p.registrations >= 2 && p.updates >= 2)
            })
            .count();
        if again >= 1000 || Instant::now() > end {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let reregistered = t0.elapsed();
    settle().await;
    let after_restart = Mem::of(pid);
    drop(guard);
    Ok(Separate {
        mem,
        up,
        alloc,
        after_restart,
        reregistered,
    })
}

fn sizes(peer: Option<&Path>) {
    let exe = Path::new(env!("CARGO_BIN_EXE_smarter-device-manager"));
    let Some(profile_dir) = exe.parent() else {
        return;
    };
    let target = profile_dir.parent().unwrap_or(profile_dir);
    let peer_size = peer
        .and_then(|p| std::fs::metadata(p).ok())
        .map(|m| m.len());
    let mut found = false;
    for (arch, dir) in [
        ("x86_64", target.join("release")),
        ("aarch64", target.join("aarch64-unknown-linux-gnu/release")),
        (
            "armv7",
            target.join("armv7-unknown-linux-gnueabihf/release"),
        ),
    ] {
        let p = dir.join("smarter-device-manager");
        if let Ok(m) = std::fs::metadata(&p) {
            found = true;
            let ours = m.len() as f64 / 1048576.0;
            let peer_text = match (arch, peer_size) {
                (a, Some(s)) if a == std::env::consts::ARCH => format!(
                    "peer (given binary, host arch) {:.2} MiB | ratio {:.2}",
                    s as f64 / 1048576.0,
                    m.len() as f64 / s as f64
                ),
                _ => "peer not measured".to_string(),
            };
            println!(
                "binary size {arch}: {ours:.2} MiB ({}) | {peer_text}",
                p.display()
            );
        }
    }
    if !found {
        println!("binary size: no release build found; build with cross/ first");
    }
}
