//! smarter-device-manager benchmark (not a test): run with
//!
//!     cargo bench -p smarter-device-manager --bench device-manager
//!
//! as root (mknod). It runs the release binary against the kubelet double and
//! prints: mknod → ListAndWatch latency (median, p99 over 200 events),
//! Allocate latency (median, p99 over 1,000 calls), resident memory with the
//! default rules on this host's /dev and with 1,000 matching nodes (pooled,
//! and one resource per node as the original's rules make), and the stripped
//! binary size of every architecture built in the target dir.
//!
//! Peer: the original Go smarter-device-manager cannot be built or fetched
//! here, and it has no hotplug at all (it scans /dev once at start), so its
//! figures are the documented ones (DaemonSet memory limit 15 MiB raised to
//! 30 MiB; hotplug never), printed as such and not as measurements.

#[path = "../../services/device-manager/tests/support/mod.rs"]
mod support;

use std::path::Path;
use std::time::{Duration, Instant};

use smarter_device_manager::plugin::connect_unix;
use smarter_device_manager::proto::v1beta1 as pb;
use support::{Env, FakeKubelet};

type R = Result<(), Box<dyn std::error::Error>>;

const T: Duration = Duration::from_secs(30);

fn pct(v: &mut [Duration], p: f64) -> Duration {
    v.sort_unstable();
    let i = ((v.len() as f64 - 1.0) * p).round() as usize;
    v.get(i).copied().unwrap_or_default()
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> R {
    if !support::can_mknod("device-manager bench") {
        return Ok(());
    }
    println!("smarter-device-manager benchmark");
    hotplug_and_allocate().await?;
    memory().await?;
    sizes();
    Ok(())
}

async fn hotplug_and_allocate() -> R {
    let mut env = Env::new("dm.toml")?;
    env.write_config(
        "health_interval_secs = 0\n[[rules]]\nname = \"bench\"\npath = \"^n[0-9]+$\"\nid = \"path\"\n",
    )?;
    env.mknod("n0", 240, 0)?;
    let k = FakeKubelet::start(&env.plugins)?;
    env.spawn(&["--log-level", "warn"])?;
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
        "hotplug mknod -> ListAndWatch: median {:.2} ms, p99 {:.2} ms (target < 100 ms p99) | peer (original): never, no hotplug | ratio n/a",
        med.as_secs_f64() * 1e3,
        p99.as_secs_f64() * 1e3
    );

    let plugin = k.plugin(res).ok_or("not registered")?;
    let ch = connect_unix(&env.plugins.join(&plugin.endpoint)).await?;
    let mut c = pb::device_plugin_client::DevicePluginClient::new(ch);
    let mut lat = Vec::new();
    for i in 0..1000u32 {
        let id = format!("n{}", i % 200);
        let t0 = Instant::now();
        c.allocate(pb::AllocateRequest {
            container_requests: vec![pb::ContainerAllocateRequest {
                devices_ids: vec![id],
            }],
        })
        .await?;
        lat.push(t0.elapsed());
    }
    let (med, p99) = (pct(&mut lat, 0.5), pct(&mut lat, 0.99));
    println!(
        "Allocate (201-device pool, over gRPC/UDS): median {:.3} ms, p99 {:.3} ms (target < 1 ms) | peer: not measurable here",
        med.as_secs_f64() * 1e3,
        p99.as_secs_f64() * 1e3
    );
    Ok(())
}

async fn settle_rss(env: &Env) -> u64 {
    tokio::time::sleep(Duration::from_millis(500)).await;
    env.child.as_ref().map_or(0, |c| rss_kib(c.id()))
}

async fn memory() -> R {
    const PEER_MIB: f64 = 30.0;
    // Default rules on this host's real /dev (read only).
    let mut env = Env::new("dm.toml")?;
    env.write_config("# default rules\n")?;
    env.dev = "/dev".into();
    let k = FakeKubelet::start(&env.plugins)?;
    env.spawn(&["--log-level", "warn"])?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let n = k.resources().len();
    let rss = settle_rss(&env).await;
    println!(
        "RSS, default rules on this host's /dev ({n} resources): {:.1} MiB (target < 8 MiB) | peer (original DaemonSet limit, documented): {PEER_MIB} MiB | ratio {:.2}",
        mib(rss),
        mib(rss) / PEER_MIB
    );
    drop(k);
    drop(env);

    for (label, config, prefix) in [
        (
            "1,000 nodes in one pooled resource",
            "[[rules]]\nname = \"p\"\npath = \"^ttyUSB[0-9]+$\"\n",
            true,
        ),
        (
            "1,000 nodes, one resource each (original rules)",
            "[[rules]]\npath = \"^ttyUSB[0-9]+$\"\n",
            false,
        ),
    ] {
        let mut env = Env::new("dm.toml")?;
        env.write_config(&format!("health_interval_secs = 0\n{config}"))?;
        for i in 0..1000u32 {
            env.mknod(&format!("ttyUSB{i}"), 188, i)?;
        }
        let k = FakeKubelet::start(&env.plugins)?;
        let t0 = Instant::now();
        env.spawn(&["--log-level", "warn"])?;
        if prefix {
            k.wait_for("smarter-devices/p", T, |p| p.devices.len() == 1000)
                .await?;
        } else {
            k.wait_for("smarter-devices/ttyUSB999", T, |p| p.updates >= 1)
                .await?;
            let end = Instant::now() + T;
            while k.resources().len() < 1000 && Instant::now() < end {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        let up = t0.elapsed();
        let rss = settle_rss(&env).await;
        println!(
            "RSS, {label}: {:.1} MiB (all registered in {:.0} ms) | peer (documented limit): {PEER_MIB} MiB | ratio {:.2}",
            mib(rss),
            up.as_secs_f64() * 1e3,
            mib(rss) / PEER_MIB
        );
    }
    Ok(())
}

fn sizes() {
    let exe = Path::new(env!("CARGO_BIN_EXE_smarter-device-manager"));
    let Some(profile_dir) = exe.parent() else {
        return;
    };
    let target = profile_dir.parent().unwrap_or(profile_dir);
    let mut found = false;
    for (arch, dir) in [
        ("host (this build)", profile_dir.to_path_buf()),
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
            println!(
                "binary size {arch}: {:.2} MiB ({}) | peer: original image is a static Go binary, not measurable here",
                m.len() as f64 / 1048576.0,
                p.display()
            );
        }
    }
    if !found {
        println!("binary size: no release build found; build with cross/ first");
    }
}
