//! What would bollard cost smarter-cni's Docker mode? The plugin is a
//! process that lives for one CNI call, so what counts is the fixed cost of
//! a client in a fresh process: per iteration, (a) the plugin's own
//! synchronous client (`smarter_cni::docker::Docker`) made and asked for one
//! `GET /containers/{id}/json`, against (b) a current-thread tokio runtime
//! built, a bollard client made and the same inspect (as the plugin would
//! have to do it), and (c) the runtime and bollard client made, no request
//! (the part no daemon latency hides). The two clients alternate in blocks
//! so that load from elsewhere on the machine falls on both alike.
//!
//! Not a test: `cargo bench -p smarter-cni --bench docker-client [rounds]`
//! (root, running dockerd; creates and removes one container from an image
//! imported from `/bin/busybox`, nothing is pulled).

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use bollard::query_parameters::InspectContainerOptions;
use smarter_cni::docker::Docker;

const SOCKET: &str = "/var/run/docker.sock";
const IMAGE: &str = "smarter-cni-bench-busybox:latest";
const BLOCK: usize = 50;

fn sh(args: &[&str]) -> Result<String, String> {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .map_err(|e| format!("{args:?}: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// A created (not started) container of an image holding only busybox.
fn container() -> Result<String, String> {
    if sh(&["docker", "image", "inspect", IMAGE]).is_err() {
        let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
        let bin = dir.path().join("bin");
        std::fs::create_dir_all(&bin).map_err(|e| e.to_string())?;
        std::fs::copy("/bin/busybox", bin.join("busybox")).map_err(|e| e.to_string())?;
        let tar = dir.path().join("rootfs.tar");
        let (d, t) = (dir.path().display().to_string(), tar.display().to_string());
        sh(&["tar", "-C", &d, "-cf", &t, "bin"])?;
        sh(&["docker", "import", &t, IMAGE])?;
    }
    sh(&["docker", "create", IMAGE, "/bin/busybox", "true"])
}

fn sync_inspect(id: &str) -> Result<(), String> {
    let d = Docker::new(Path::new(SOCKET));
    let v = d
        .request("GET", &format!("/containers/{id}/json"), None)
        .map_err(|e| e.to_string())?;
    if v["Id"].as_str() != Some(id) {
        return Err(format!("inspect answered {v}"));
    }
    Ok(())
}

fn bollard_client() -> Result<(tokio::runtime::Runtime, bollard::Docker), String> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    let d = bollard::Docker::connect_with_unix(SOCKET, 30, bollard::API_DEFAULT_VERSION)
        .map_err(|e| e.to_string())?;
    Ok((rt, d))
}

fn bollard_inspect(id: &str) -> Result<(), String> {
    let (rt, d) = bollard_client()?;
    let c = rt
        .block_on(d.inspect_container(id, None::<InspectContainerOptions>))
        .map_err(|e| e.to_string())?;
    if c.id.as_deref() != Some(id) {
        return Err(format!("inspect answered {:?}", c.id));
    }
    Ok(())
}

fn bollard_construct(_: &str) -> Result<(), String> {
    bollard_client().map(drop)
}

fn stats(name: &str, mut t: Vec<Duration>) {
    t.sort();
    let us = |d: Duration| d.as_secs_f64() * 1e6;
    let pick = |q: f64| t[((t.len() - 1) as f64 * q) as usize];
    println!(
        "{name:<40} n={:<5} median {:>8.1} µs  p10 {:>8.1}  p90 {:>8.1}  p99 {:>8.1}",
        t.len(),
        us(pick(0.5)),
        us(pick(0.1)),
        us(pick(0.9)),
        us(pick(0.99)),
    );
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg").unwrap_or_default()
}

fn main() -> Result<(), String> {
    let rounds: usize = std::env::args()
        .skip(1)
        .find(|a| !a.starts_with('-'))
        .and_then(|a| a.parse().ok())
        .unwrap_or(20);
    let id = container()?;
    println!("load before: {}", loadavg().trim());
    type Case = (&'static str, fn(&str) -> Result<(), String>);
    let cases: [Case; 3] = [
        ("sync client + inspect", sync_inspect),
        ("current-thread rt + bollard + inspect", bollard_inspect),
        ("current-thread rt + bollard, no request", bollard_construct),
    ];
    let mut times: Vec<Vec<Duration>> = vec![Vec::new(); cases.len()];
    // Warm-up: the daemon's caches and our page faults.
    for (_, f) in &cases {
        for _ in 0..BLOCK {
            f(&id)?;
        }
    }
    let result = (|| {
        for _ in 0..rounds {
            for (i, (_, f)) in cases.iter().enumerate() {
                for _ in 0..BLOCK {
                    let t = Instant::now();
                    f(&id)?;
                    times[i].push(t.elapsed());
                }
            }
        }
        Ok::<_, String>(())
    })();
    let _ = sh(&["docker", "rm", "-f", &id]);
    result?;
    println!("load after:  {}", loadavg().trim());
    for ((name, _), t) in cases.iter().zip(times) {
        stats(name, t);
    }
    Ok(())
}
