//! The udev side of hotplug: whether a udev daemon runs, the udev monitor
//! (cargo feature `udev`, libudev through the `udev` crate) and the
//! properties its events carry.
//!
//! The monitor listens on the `"udev"` netlink source with no subsystem
//! filter: udev sends an event once it has finished a device (rules run,
//! `/dev/serial/by-id` links made, database written), so a rescan triggered
//! by it sees the device complete. Each event's `DEVNAME` is mapped under the
//! configured device root, and its properties (`ID_PATH`, `ID_SERIAL`,
//! `ID_VENDOR_ID`, whatever a udev rule set) are kept per device number and
//! used for matching ([`LiveInfo`]) even when the udev database is not
//! readable. Events without a device node (`bdi`, `usb` interfaces, …) are
//! skipped: rules only match nodes.
//!
//! The socket is non-blocking and registered with tokio ([`AsyncFd`]); it is
//! drained on each readiness, so a burst costs one rescan.
//!
//! [`AsyncFd`]: tokio::io::unix::AsyncFd

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, PoisonError};

use crate::config::Hotplug;
use crate::discover::{DeviceInfo, Kind};
use crate::scan::{self, SysfsInfo};

/// The hotplug source the service runs with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HotplugSource {
    /// The udev monitor (plus inotify on the device root as a fallback for
    /// nodes udev never announces).
    Udev,
    /// inotify on the device root and the udev database directory.
    Inotify,
}

impl fmt::Display for HotplugSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Udev => "udev",
            Self::Inotify => "inotify",
        })
    }
}

/// True when this build has the udev monitor (cargo feature `udev`).
pub const MONITOR_BUILT: bool = cfg!(feature = "udev");

/// udev's control socket: `control` next to the database directory
/// (`/run/udev/control` for `/run/udev/data`).
pub fn control_socket(udev_data_dir: &Path) -> PathBuf {
    udev_data_dir
        .parent()
        .unwrap_or(udev_data_dir)
        .join("control")
}

/// Does a udev daemon listen on `control`? `Err` says why not.
///
/// A socket file alone is not enough: one left behind by a udevd that died
/// refuses connections. udevd's socket is `SOCK_SEQPACKET`; connecting with a
/// stream socket to a live one fails with `EPROTOTYPE` (or works, for a
/// stream listener), a stale one with `ECONNREFUSED`.
pub fn udevd_running(control: &Path) -> Result<(), String> {
    use std::os::unix::fs::FileTypeExt;
    let meta =
        std::fs::symlink_metadata(control).map_err(|e| format!("{}: {e}", control.display()))?;
    if !meta.file_type().is_socket() {
        return Err(format!("{} is not a socket", control.display()));
    }
    match std::os::unix::net::UnixStream::connect(control) {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => Err(format!(
            "{} refuses connections (left by a udevd that stopped)",
            control.display()
        )),
        // EPROTOTYPE: a live SOCK_SEQPACKET listener; EACCES: someone's.
        Err(_) => Ok(()),
    }
}

/// Decide the hotplug source for `mode`; the string says why (for the log).
pub fn choose(mode: Hotplug, control: &Path) -> (HotplugSource, String) {
    let running = udevd_running(control);
    match (mode, MONITOR_BUILT, running) {
        (Hotplug::Inotify, _, _) => (HotplugSource::Inotify, "hotplug = inotify".into()),
        (Hotplug::Udev | Hotplug::Auto, false, _) => (
            HotplugSource::Inotify,
            "built without the udev feature (no libudev)".into(),
        ),
        (Hotplug::Udev, true, Ok(())) => (HotplugSource::Udev, "hotplug = udev".into()),
        (Hotplug::Udev, true, Err(why)) => (
            HotplugSource::Udev,
            format!("hotplug = udev, although no udev daemon seems to run ({why})"),
        ),
        (Hotplug::Auto, true, Ok(())) => (
            HotplugSource::Udev,
            format!("udev daemon listens on {}", control.display()),
        ),
        (Hotplug::Auto, true, Err(why)) => {
            (HotplugSource::Inotify, format!("no udev daemon: {why}"))
        }
    }
}

/// One udev event about a device node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UdevEvent {
    /// `add`, `remove`, `change`, `bind`, `unbind`, `move`, `online`, …
    pub action: String,
    /// The node under the configured device root.
    pub path: PathBuf,
    /// Block (`SUBSYSTEM=block`) or character device.
    pub kind: Kind,
    /// Device number from `MAJOR`/`MINOR`, when given.
    pub rdev: Option<u64>,
    /// Every property of the event.
    pub properties: BTreeMap<String, String>,
}

/// Map a `DEVNAME` (`/dev/ttyUSB0`, or `ttyUSB0` as the kernel writes it)
/// to the same node under `dev_root`.
pub fn map_devname(devname: &str, dev_root: &Path) -> PathBuf {
    let rel = devname
        .strip_prefix("/dev/")
        .unwrap_or(devname)
        .trim_start_matches('/');
    dev_root.join(rel)
}

/// The event for a device node, from its action and properties; `None`
/// without `DEVNAME` (no node, nothing a rule can match).
pub fn event_from_properties(
    action: &str,
    properties: BTreeMap<String, String>,
    dev_root: &Path,
) -> Option<UdevEvent> {
    let devname = properties.get("DEVNAME").filter(|d| !d.is_empty())?;
    let path = map_devname(devname, dev_root);
    let kind = if properties.get("SUBSYSTEM").map(String::as_str) == Some("block") {
        Kind::Block
    } else {
        Kind::Char
    };
    let num = |k: &str| properties.get(k).and_then(|v| v.parse::<u64>().ok());
    let rdev = num("MAJOR")
        .zip(num("MINOR"))
        .map(|(ma, mi)| scan::makedev(ma, mi));
    Some(UdevEvent {
        action: action.to_string(),
        path,
        kind,
        rdev,
        properties,
    })
}

/// Properties from udev events, by device, for matching.
#[derive(Debug, Default)]
pub struct EventProps {
    by_dev: Mutex<HashMap<(bool, u64), BTreeMap<String, String>>>,
}

impl EventProps {
    /// Keep the properties of a device that is there, forget a removed one.
    pub fn record(&self, ev: &UdevEvent) {
        let Some(rdev) = ev.rdev else { return };
        let key = (ev.kind == Kind::Block, rdev);
        let mut m = self.by_dev.lock().unwrap_or_else(PoisonError::into_inner);
        if ev.action == "remove" {
            m.remove(&key);
        } else {
            m.insert(key, ev.properties.clone());
        }
    }

    /// The latest event's properties for a device.
    pub fn get(&self, kind: Kind, rdev: u64) -> Option<BTreeMap<String, String>> {
        let key = (kind == Kind::Block, rdev);
        self.by_dev
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&key)
            .cloned()
    }

    /// Devices with known event properties.
    pub fn len(&self) -> usize {
        self.by_dev
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }

    /// No device has event properties.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Properties for matching: sysfs and the udev database ([`SysfsInfo`]),
/// then the latest udev event's properties on top (they are what udev knows
/// now, and arrive even when the database is not mounted).
#[derive(Debug, Clone)]
pub struct LiveInfo {
    /// sysfs and the udev database.
    pub base: SysfsInfo,
    /// Properties from udev events.
    pub events: std::sync::Arc<EventProps>,
}

impl DeviceInfo for LiveInfo {
    fn properties(&self, kind: Kind, rdev: u64) -> BTreeMap<String, String> {
        let mut p = self.base.properties(kind, rdev);
        if let Some(ev) = self.events.get(kind, rdev) {
            p.extend(ev);
        }
        p
    }
}

/// Errors of the udev monitor.
#[derive(Debug, thiserror::Error)]
pub enum MonitorError {
    /// This build has no udev monitor.
    #[error("built without the udev feature (no libudev)")]
    NotBuilt,
    /// libudev could not open or bind the netlink socket.
    #[error("cannot open the udev monitor (netlink source \"udev\"): {0}")]
    Open(#[source] std::io::Error),
    /// tokio could not register or poll the socket.
    #[error("cannot poll the udev monitor socket: {0}")]
    Poll(#[source] std::io::Error),
    /// Reading failed again and again.
    #[error("udev monitor socket keeps failing: {0}")]
    Read(#[source] std::io::Error),
}

/// What one wake of the monitor brought.
#[derive(Debug, Default)]
pub struct Batch {
    /// Events about device nodes.
    pub events: Vec<UdevEvent>,
    /// Events were lost (socket buffer overrun): rescan everything.
    pub lost: bool,
}

#[cfg(feature = "udev")]
pub use monitor::Monitor;

#[cfg(feature = "udev")]
mod monitor {
    use std::collections::BTreeMap;
    use std::io;
    use std::path::{Path, PathBuf};

    use tokio::io::unix::AsyncFd;

    use super::{Batch, MonitorError, event_from_properties};

    /// Consecutive read errors before the monitor is given up.
    const MAX_ERRORS: u32 = 64;

    /// The udev monitor socket, registered with tokio.
    pub struct Monitor {
        fd: AsyncFd<::udev::MonitorSocket>,
        dev_root: PathBuf,
    }

    impl std::fmt::Debug for Monitor {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.debug_struct("Monitor")
                .field("dev_root", &self.dev_root)
                .finish_non_exhaustive()
        }
    }

    impl Monitor {
        /// Listen to udev's events (all subsystems). Call inside a tokio
        /// runtime.
        pub fn new(dev_root: &Path) -> Result<Self, MonitorError> {
            let socket = ::udev::MonitorBuilder::new()
                .and_then(::udev::MonitorBuilder::listen)
                .map_err(MonitorError::Open)?;
            // SAFETY: the monitor socket owns its netlink fd from `listen`
            // until it is dropped (udev_monitor_unref closes it), and
            // `as_raw_fd` always returns that same fd; the AsyncFd owns the
            // socket, so the fd stays open while it is registered.
            let fd =
                unsafe { AsyncFd::register_with_interest(socket, tokio::io::Interest::READABLE) }
                    .map_err(|e| MonitorError::Poll(e.into()))?;
            Ok(Self {
                fd,
                dev_root: dev_root.to_path_buf(),
            })
        }

        /// Wait for events about device nodes and return all that are
        /// queued. Cancel-safe: nothing is read before the socket is ready.
        pub async fn next(&mut self) -> Result<Batch, MonitorError> {
            let mut errors = 0u32;
            loop {
                let mut guard = self.fd.readable().await.map_err(MonitorError::Poll)?;
                let mut batch = Batch::default();
                let drained = loop {
                    let Some(ev) = guard.get_inner().iter().next() else {
                        // libudev returns NULL with errno set.
                        let e = io::Error::last_os_error();
                        if e.kind() == io::ErrorKind::WouldBlock {
                            break true;
                        }
                        errors += 1;
                        if errors >= MAX_ERRORS {
                            return Err(MonitorError::Read(e));
                        }
                        // ENOBUFS: the kernel dropped messages.
                        tracing::warn!(error = %e, "udev monitor read error; rescanning");
                        batch.lost = true;
                        break false;
                    };
                    let props: BTreeMap<String, String> = ev
                        .properties()
                        .map(|p| {
                            (
                                p.name().to_string_lossy().into_owned(),
                                p.value().to_string_lossy().into_owned(),
                            )
                        })
                        .collect();
                    let action = props
                        .get("ACTION")
                        .cloned()
                        .unwrap_or_else(|| ev.event_type().to_string());
                    if let Some(e) = event_from_properties(&action, props, &self.dev_root) {
                        batch.events.push(e);
                    }
                };
                if drained {
                    guard.clear_ready();
                    errors = 0;
                }
                if !batch.events.is_empty() || batch.lost {
                    return Ok(batch);
                }
            }
        }
    }
}

/// Without the `udev` feature: a monitor that cannot be opened.
#[cfg(not(feature = "udev"))]
#[derive(Debug)]
pub struct Monitor(());

#[cfg(not(feature = "udev"))]
impl Monitor {
    /// Always [`MonitorError::NotBuilt`].
    pub fn new(_dev_root: &Path) -> Result<Self, MonitorError> {
        Err(MonitorError::NotBuilt)
    }

    /// Never yields.
    pub async fn next(&mut self) -> Result<Batch, MonitorError> {
        std::future::pending().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn props(kv: &[(&str, &str)]) -> BTreeMap<String, String> {
        kv.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn devname_maps_under_dev_root() {
        let root = Path::new("/host/dev");
        assert_eq!(
            map_devname("/dev/ttyUSB0", root),
            PathBuf::from("/host/dev/ttyUSB0")
        );
        assert_eq!(
            map_devname("snd/controlC0", root),
            PathBuf::from("/host/dev/snd/controlC0")
        );
    }

    #[test]
    fn events_need_a_node() {
        let root = Path::new("/dev");
        assert!(event_from_properties("add", props(&[("SUBSYSTEM", "bdi")]), root).is_none());
        let e = event_from_properties(
            "add",
            props(&[
                ("DEVNAME", "/dev/loop240"),
                ("SUBSYSTEM", "block"),
                ("MAJOR", "7"),
                ("MINOR", "240"),
                ("ID_PATH", "x"),
            ]),
            root,
        );
        let e = e.as_ref();
        assert_eq!(e.map(|e| e.kind), Some(Kind::Block));
        assert_eq!(e.and_then(|e| e.rdev), Some(scan::makedev(7, 240)));
        assert_eq!(
            e.map(|e| e.path.clone()),
            Some(PathBuf::from("/dev/loop240"))
        );
    }

    #[test]
    fn event_props_overlay_and_forget() {
        let root = Path::new("/dev");
        let ev = |action: &str| {
            event_from_properties(
                action,
                props(&[
                    ("DEVNAME", "/dev/ttyUSB3"),
                    ("SUBSYSTEM", "tty"),
                    ("MAJOR", "188"),
                    ("MINOR", "3"),
                    ("ID_SERIAL", "FTDI_X"),
                ]),
                root,
            )
        };
        let store = std::sync::Arc::new(EventProps::default());
        let info = LiveInfo {
            base: SysfsInfo {
                sys_root: PathBuf::from("/nonexistent/sys"),
                udev_data_dir: PathBuf::from("/nonexistent/udev"),
            },
            events: std::sync::Arc::clone(&store),
        };
        let rdev = scan::makedev(188, 3);
        assert!(info.properties(Kind::Char, rdev).is_empty());
        if let Some(e) = ev("add") {
            store.record(&e);
        }
        assert_eq!(info.properties(Kind::Char, rdev)["ID_SERIAL"], "FTDI_X");
        // A block device with the same number is another device.
        assert!(info.properties(Kind::Block, rdev).is_empty());
        if let Some(e) = ev("remove") {
            store.record(&e);
        }
        assert!(store.is_empty());
    }

    #[test]
    fn control_socket_liveness() -> std::io::Result<()> {
        let t = tempfile::tempdir()?;
        let control = control_socket(&t.path().join("data"));
        assert_eq!(control, t.path().join("control"));
        assert!(udevd_running(&control).is_err());
        std::fs::write(&control, "")?;
        assert!(
            udevd_running(&control).is_err_and(|e| e.contains("not a socket")),
            "{:?}",
            udevd_running(&control)
        );
        std::fs::remove_file(&control)?;
        // Bound then closed: a stale socket file.
        drop(std::os::unix::net::UnixListener::bind(&control)?);
        assert!(
            udevd_running(&control).is_err_and(|e| e.contains("refuses")),
            "{:?}",
            udevd_running(&control)
        );
        std::fs::remove_file(&control)?;
        let _live = std::os::unix::net::UnixListener::bind(&control)?;
        assert_eq!(udevd_running(&control), Ok(()));
        let (src, why) = choose(Hotplug::Auto, &control);
        if MONITOR_BUILT {
            assert_eq!(src, HotplugSource::Udev, "{why}");
        } else {
            assert_eq!(src, HotplugSource::Inotify, "{why}");
        }
        assert_eq!(choose(Hotplug::Inotify, &control).0, HotplugSource::Inotify);
        Ok(())
    }
}
