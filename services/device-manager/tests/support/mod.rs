//! Shared test harness: temp device/sys/plugin dirs, mknod, the real binary
//! as a child process (killed on drop), and the kubelet double.
#![allow(dead_code, unreachable_pub)]

pub mod gokubelet;
pub mod kubelet;
pub mod udevd;
/// The tonic client and server of v1beta1, over the library's messages
/// (generated; see `tests/proto_current.rs`).
#[rustfmt::skip]
#[allow(
    missing_docs,
    unreachable_pub,
    missing_debug_implementations,
    clippy::all,
    clippy::pedantic,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic
)]
pub mod v1beta1_grpc;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

pub use kubelet::FakeKubelet;

/// What a test returns.
pub type R = Result<(), Box<dyn std::error::Error>>;
/// How long a test waits for something that should happen at once.
pub const T: Duration = Duration::from_secs(10);
/// Our hotplug latency requirement: a device appears or goes within this bound.
pub const HOTPLUG: Duration = Duration::from_millis(100);

/// `id` is listed Healthy in the plugin's last ListAndWatch.
pub fn healthy(p: &kubelet::Plugin, id: &str) -> bool {
    p.devices.iter().any(|(i, h)| i == id && h == "Healthy")
}

/// `id` is listed Unhealthy in the plugin's last ListAndWatch.
pub fn unhealthy(p: &kubelet::Plugin, id: &str) -> bool {
    p.devices.iter().any(|(i, h)| i == id && h == "Unhealthy")
}

/// With `ttyUSB0` listed Healthy in `pool`, add, remove and re-add
/// `ttyUSB1` (188:1) by mknod: it must turn Healthy, Unhealthy (still
/// listed, `ttyUSB0` untouched) and Healthy again, each within [`HOTPLUG`].
/// `label` starts the printed latencies.
pub async fn hotplug_cycle(env: &Env, k: &FakeKubelet, pool: &str, label: &str) -> R {
    let t0 = std::time::Instant::now();
    env.mknod("ttyUSB1", 188, 1)?;
    k.wait_for(pool, T, |p| healthy(p, "ttyUSB1")).await?;
    let add = t0.elapsed();
    let t0 = std::time::Instant::now();
    std::fs::remove_file(env.dev.join("ttyUSB1"))?;
    let p = k.wait_for(pool, T, |p| unhealthy(p, "ttyUSB1")).await?;
    let remove = t0.elapsed();
    assert!(healthy(&p, "ttyUSB0"));
    let t0 = std::time::Instant::now();
    env.mknod("ttyUSB1", 188, 1)?;
    k.wait_for(pool, T, |p| healthy(p, "ttyUSB1")).await?;
    let readd = t0.elapsed();
    println!("{label}: add {add:?}, remove {remove:?}, re-add {readd:?}");
    for (what, d) in [("add", add), ("remove", remove), ("re-add", readd)] {
        assert!(d < HOTPLUG, "{what} took {d:?}");
    }
    Ok(())
}

/// Make a character device node, or say why not.
pub fn mknod(path: &Path, major: u32, minor: u32) -> std::io::Result<()> {
    use std::os::unix::ffi::OsStrExt;
    if let Some(p) = path.parent() {
        std::fs::create_dir_all(p)?;
    }
    let c = std::ffi::CString::new(path.as_os_str().as_bytes())
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
    let dev = libc::makedev(major, minor);
    // SAFETY: `c` is a valid NUL-terminated path that outlives the call.
    let rc = unsafe { libc::mknod(c.as_ptr(), libc::S_IFCHR | 0o600, dev) };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// True when this process may make device nodes; prints why not otherwise.
pub fn can_mknod(test: &str) -> bool {
    let Ok(t) = tempfile::tempdir() else {
        return false;
    };
    match mknod(&t.path().join("probe"), 1, 3) {
        Ok(()) => true,
        Err(e) => {
            smarter_test_support::skip(format!(
                "{test}: cannot mknod ({e}); run as root (CI does)"
            ));
            false
        }
    }
}

/// The binary under test, with its temp dirs.
#[derive(Debug)]
pub struct Env {
    pub tmp: tempfile::TempDir,
    pub dev: PathBuf,
    pub sys: PathBuf,
    pub plugins: PathBuf,
    pub config: PathBuf,
    pub child: Option<Child>,
    pub log: PathBuf,
}

impl Env {
    /// Temp dirs; the config file is written by [`Env::write_config`].
    pub fn new(config_name: &str) -> std::io::Result<Self> {
        let tmp = tempfile::tempdir()?;
        let dev = tmp.path().join("dev");
        let sys = tmp.path().join("sys");
        let plugins = tmp.path().join("device-plugins");
        for d in [&dev, &sys, &plugins] {
            std::fs::create_dir_all(d)?;
        }
        let config = tmp.path().join(config_name);
        let log = tmp.path().join("log");
        Ok(Self {
            tmp,
            dev,
            sys,
            plugins,
            config,
            child: None,
            log,
        })
    }

    pub fn write_config(&self, text: &str) -> std::io::Result<()> {
        // Atomic, as a ConfigMap update is.
        let t = self.config.with_extension("tmp");
        std::fs::write(&t, text)?;
        std::fs::rename(&t, &self.config)
    }

    pub fn mknod(&self, rel: &str, major: u32, minor: u32) -> std::io::Result<()> {
        mknod(&self.dev.join(rel), major, minor)
    }

    /// Start the binary.
    pub fn spawn(&mut self, extra: &[&str]) -> std::io::Result<()> {
        let (dev, sys) = (self.dev.clone(), self.sys.clone());
        self.spawn_on(&dev, &sys, extra)
    }

    /// Start the binary on another device and sysfs root (e.g. the real
    /// /dev and /sys).
    pub fn spawn_on(&mut self, dev: &Path, sys: &Path, extra: &[&str]) -> std::io::Result<()> {
        let log = std::fs::File::create(&self.log)?;
        let child = Command::new(env!("CARGO_BIN_EXE_smarter-device-manager"))
            .arg("--config")
            .arg(&self.config)
            .arg("--dev-root")
            .arg(dev)
            .arg("--sys-root")
            .arg(sys)
            .arg("--plugin-dir")
            .arg(&self.plugins)
            .args(extra)
            .env("RUST_LOG", "debug")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()?;
        self.child = Some(child);
        Ok(())
    }

    pub fn signal(&self, sig: i32) {
        if let Some(c) = &self.child
            && let Ok(pid) = i32::try_from(c.id())
        {
            // SAFETY: plain kill(2) on our own child's pid.
            unsafe { libc::kill(pid, sig) };
        }
    }

    /// Wait for exit (after a signal), at most `timeout`.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let st = smarter_test_support::wait_exit(self.child.as_mut()?, timeout).ok()?;
        self.child = None;
        Some(st)
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Wait until the log contains `needle`; false after `timeout`.
    pub fn wait_log(&self, needle: &str, timeout: Duration) -> bool {
        smarter_test_support::wait_until(
            format_args!("{needle:?} in the log"),
            timeout,
            Duration::from_millis(10),
            || self.log_text().contains(needle),
        )
        .is_ok()
    }
}

impl Drop for Env {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        if std::thread::panicking() {
            eprintln!("---- smarter-device-manager log ----\n{}", self.log_text());
        }
    }
}
