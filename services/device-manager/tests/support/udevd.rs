//! A real systemd-udevd for tests, and real kernel hotplug events from loop
//! devices (`/dev/loop-control`).
//!
//! [`Udevd::ensure`] uses a udevd that already runs (adding the test's rule
//! file to `/run/udev/rules.d` and reloading), or starts Debian's
//! `systemd-udevd` in the foreground as a child. Our own udevd runs in a
//! private mount namespace where the packaged rule directories are hidden
//! behind empty ones and `/etc/udev/rules.d` holds only the test's rules: it
//! is a real udevd answering real kernel events, but it leaves the devices
//! other tests on the machine create (veths, bridges) alone. Everything is
//! undone on drop, also when the test fails.
//!
//! [`LoopDev`] adds and removes `/dev/loopN` with `LOOP_CTL_ADD`/
//! `LOOP_CTL_REMOVE`: the kernel creates the node in devtmpfs and sends a real
//! `add`/`remove` uevent, which udevd turns into its own event.
#![allow(dead_code, unreachable_pub)]

use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// udev's control socket.
pub const CONTROL: &str = "/run/udev/control";
const RUN_DIR: &str = "/run/udev";
const LOOP_CTL_ADD: libc::c_ulong = 0x4C80;
const LOOP_CTL_REMOVE: libc::c_ulong = 0x4C81;

fn find_udevd() -> Option<PathBuf> {
    [
        "/lib/systemd/systemd-udevd",
        "/usr/lib/systemd/systemd-udevd",
        "/sbin/udevd",
    ]
    .iter()
    .map(PathBuf::from)
    .find(|p| p.exists())
}

/// Is a udevd listening on `/run/udev/control`? (A stale socket refuses.)
pub fn udevd_live() -> bool {
    std::os::unix::net::UnixStream::connect(CONTROL)
        .map(|_| true)
        .unwrap_or_else(|e| {
            Path::new(CONTROL).exists() && e.kind() != std::io::ErrorKind::ConnectionRefused
        })
}

/// A running udevd with the test's rules in effect.
#[derive(Debug)]
pub struct Udevd {
    /// Our own daemon, if we started one.
    child: Option<Child>,
    /// We made `/run/udev`: remove it afterwards.
    created_run_dir: bool,
    /// A rule file we added to a udevd that was already running.
    added_rule: Option<PathBuf>,
    tmp: tempfile::TempDir,
}

impl Udevd {
    /// Make sure a udevd runs with `rules` (udev rules text) loaded; `Err`
    /// says why a test must skip.
    pub fn ensure(rules: &str) -> Result<Self, String> {
        if !smarter_test_support::is_root() {
            return Err("not root (udevd, loop devices)".into());
        }
        let udevd = find_udevd().ok_or("no systemd-udevd: apt-get install udev")?;
        let tmp = tempfile::tempdir().map_err(|e| format!("tempdir: {e}"))?;
        if udevd_live() {
            let dir = Path::new(RUN_DIR).join("rules.d");
            std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
            let file = dir.join(format!("99-smarter-dm-test-{}.rules", std::process::id()));
            std::fs::write(&file, rules).map_err(|e| format!("{}: {e}", file.display()))?;
            let me = Self {
                child: None,
                created_run_dir: false,
                added_rule: Some(file),
                tmp,
            };
            reload()?;
            return Ok(me);
        }
        let created_run_dir = !Path::new(RUN_DIR).exists();
        // A socket left by a udevd that died would stop ours from binding.
        let _ = std::fs::remove_file(CONTROL);
        let rules_dir = tmp.path().join("rules");
        let empty = tmp.path().join("empty");
        for d in [&rules_dir, &empty] {
            std::fs::create_dir_all(d).map_err(|e| format!("{}: {e}", d.display()))?;
        }
        std::fs::write(rules_dir.join("99-smarter-dm-test.rules"), rules)
            .map_err(|e| format!("rules: {e}"))?;
        let mut hidden: Vec<PathBuf> = Vec::new();
        for d in [
            "/usr/lib/udev/rules.d",
            "/lib/udev/rules.d",
            "/usr/local/lib/udev/rules.d",
        ] {
            if let Ok(c) = std::fs::canonicalize(d)
                && !hidden.contains(&c)
            {
                hidden.push(c);
            }
        }
        let log = File::create(tmp.path().join("udevd.log")).map_err(|e| format!("log: {e}"))?;
        // unshare and sh both exec: the child's pid is udevd's.
        let script = r#"set -e
udevd="$1"; rules="$2"; empty="$3"; shift 3
for d in "$@"; do mount --bind "$empty" "$d"; done
mkdir -p /etc/udev/rules.d
mount --bind "$rules" /etc/udev/rules.d
exec "$udevd""#;
        let child = Command::new("unshare")
            .args([
                "--mount",
                "--propagation",
                "private",
                "sh",
                "-c",
                script,
                "sh",
            ])
            .arg(&udevd)
            .arg(&rules_dir)
            .arg(&empty)
            .args(&hidden)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .map_err(|e| format!("cannot start unshare/{}: {e}", udevd.display()))?;
        let mut me = Self {
            child: Some(child),
            created_run_dir,
            added_rule: None,
            tmp,
        };
        // Listening (None), or exited (its status).
        let exited = smarter_test_support::wait_until(
            "systemd-udevd to listen",
            Duration::from_secs(5),
            Duration::from_millis(10),
            || {
                if let Some(c) = me.child.as_mut()
                    && let Ok(Some(st)) = c.try_wait()
                {
                    return Some(Some(st));
                }
                udevd_live().then_some(None)
            },
        )
        .map_err(|e| format!("{e}: {}", me.log()))?;
        if let Some(st) = exited {
            me.child = None;
            return Err(format!("systemd-udevd exited ({st}): {}", me.log()));
        }
        Ok(me)
    }

    /// Did this guard start the daemon (rather than use a running one)?
    pub fn started_here(&self) -> bool {
        self.child.is_some()
    }

    /// udevd's stderr (our own daemon only).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.tmp.path().join("udevd.log")).unwrap_or_default()
    }
}

fn reload() -> Result<(), String> {
    let st = Command::new("udevadm")
        .args(["control", "--reload"])
        .status()
        .map_err(|e| format!("udevadm control --reload: {e}"))?;
    if st.success() {
        Ok(())
    } else {
        Err(format!("udevadm control --reload: {st}"))
    }
}

impl Drop for Udevd {
    fn drop(&mut self) {
        if let Some(f) = self.added_rule.take() {
            let _ = std::fs::remove_file(f);
            let _ = reload();
        }
        if let Some(mut c) = self.child.take() {
            if let Ok(pid) = i32::try_from(c.id()) {
                // SAFETY: kill(2) on our own child's pid.
                unsafe { libc::kill(pid, libc::SIGTERM) };
            }
            // Killed below when it has not stopped by then.
            let _ = smarter_test_support::wait_exit(&mut c, Duration::from_secs(3));
            let _ = c.kill();
            let _ = c.wait();
            if self.created_run_dir {
                let _ = std::fs::remove_dir_all(RUN_DIR);
            } else {
                let _ = std::fs::remove_file(CONTROL);
            }
        }
    }
}

/// `/dev/loopN`, added and removed through `/dev/loop-control`; removed on
/// drop if present.
#[derive(Debug)]
pub struct LoopDev {
    ctl: File,
    /// N.
    pub index: u32,
    present: bool,
}

impl LoopDev {
    /// A free index in `from..=255` (no `/sys/block/loopN`), not yet added.
    pub fn free(from: u32) -> Result<Self, String> {
        let ctl = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/loop-control")
            .map_err(|e| format!("/dev/loop-control: {e}"))?;
        let index = (from..=255)
            .find(|i| {
                !Path::new(&format!("/sys/block/loop{i}")).exists()
                    && !Path::new(&format!("/dev/loop{i}")).exists()
            })
            .ok_or_else(|| format!("no free loop index in {from}..=255"))?;
        Ok(Self {
            ctl,
            index,
            present: false,
        })
    }

    /// `loopN`.
    pub fn name(&self) -> String {
        format!("loop{}", self.index)
    }

    /// LOOP_CTL_ADD: the kernel creates `/dev/loopN` and sends `add`.
    pub fn add(&mut self) -> std::io::Result<()> {
        // SAFETY: ioctl on our open loop-control fd with an integer argument.
        let rc = unsafe {
            libc::ioctl(
                self.ctl.as_raw_fd(),
                LOOP_CTL_ADD as _,
                libc::c_ulong::from(self.index),
            )
        };
        if rc < 0 {
            return Err(std::io::Error::last_os_error());
        }
        self.present = true;
        Ok(())
    }

    /// LOOP_CTL_REMOVE: the kernel removes the node and sends `remove`
    /// (retried while something has the device open).
    pub fn remove(&mut self) -> std::io::Result<()> {
        let end = Instant::now() + Duration::from_secs(2);
        loop {
            // SAFETY: as in `add`.
            let rc = unsafe {
                libc::ioctl(
                    self.ctl.as_raw_fd(),
                    LOOP_CTL_REMOVE as _,
                    libc::c_ulong::from(self.index),
                )
            };
            if rc >= 0 {
                self.present = false;
                return Ok(());
            }
            let e = std::io::Error::last_os_error();
            if e.raw_os_error() != Some(libc::EBUSY) || Instant::now() > end {
                return Err(e);
            }
            std::thread::sleep(Duration::from_millis(2));
        }
    }
}

impl Drop for LoopDev {
    fn drop(&mut self) {
        if self.present {
            let _ = self.remove();
        }
    }
}
