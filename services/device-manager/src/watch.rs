//! inotify watchers: the device tree (hotplug) and the plugin directory
//! (kubelet restarts, our sockets deleted); [`Hotplug`] joins the device
//! tree watcher with the udev monitor.
//!
//! The device tree watcher watches every directory a scan found (inotify is
//! not recursive); the service adds new ones after each scan and rescans once
//! more when it did, so nodes created in a brand-new directory (udev's
//! `serial/by-id`) are not missed.

use std::collections::{HashMap, HashSet};
use std::ffi::OsString;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use inotify::{EventMask, EventStream, Inotify, WatchDescriptor, WatchMask, Watches};
use tokio_stream::StreamExt;

use crate::udev_monitor::{EventProps, HotplugSource, Monitor};

/// Errors setting up inotify.
#[derive(Debug, thiserror::Error)]
pub enum WatchError {
    /// inotify_init failed.
    #[error("cannot create inotify instance: {0}")]
    Init(#[source] io::Error),
    /// inotify_add_watch failed.
    #[error("cannot watch {path}: {source}")]
    Add {
        /// The path.
        path: PathBuf,
        /// OS error.
        source: io::Error,
    },
}

fn stream(buf: usize) -> Result<(EventStream<Vec<u8>>, Watches), WatchError> {
    let inotify = Inotify::init().map_err(WatchError::Init)?;
    let stream = inotify
        .into_event_stream(vec![0u8; buf])
        .map_err(WatchError::Init)?;
    let watches = stream.watches();
    Ok((stream, watches))
}

/// Watches the device tree.
#[derive(Debug)]
pub struct DevWatcher {
    stream: EventStream<Vec<u8>>,
    watches: Watches,
    by_wd: HashMap<WatchDescriptor, PathBuf>,
    watched: HashSet<PathBuf>,
}

const DEV_MASK: WatchMask = WatchMask::CREATE
    .union(WatchMask::DELETE)
    .union(WatchMask::MOVED_FROM)
    .union(WatchMask::MOVED_TO);

impl DevWatcher {
    /// A watcher with no directories yet.
    pub fn new() -> Result<Self, WatchError> {
        let (stream, watches) = stream(16 * 1024)?;
        Ok(Self {
            stream,
            watches,
            by_wd: HashMap::new(),
            watched: HashSet::new(),
        })
    }

    /// Watch these directories too; true when any was new. Directories that
    /// vanished in the meantime are skipped.
    pub fn watch_dirs(&mut self, dirs: &[PathBuf]) -> bool {
        let mut new = false;
        for d in dirs {
            if self.watched.contains(d) {
                continue;
            }
            match self.watches.add(d, DEV_MASK) {
                Ok(wd) => {
                    self.by_wd.insert(wd, d.clone());
                    self.watched.insert(d.clone());
                    new = true;
                }
                Err(e) => tracing::debug!(dir = %d.display(), error = %e, "cannot watch"),
            }
        }
        new
    }

    /// Wait for the next change, then swallow everything already queued so
    /// a burst costs one rescan. `None` if the inotify stream ended.
    pub async fn changed(&mut self) -> Option<usize> {
        let first = self.stream.next().await?;
        let mut n = usize::from(self.note(first));
        while let Ok(Some(ev)) = tokio::time::timeout(Duration::ZERO, self.stream.next()).await {
            n += usize::from(self.note(ev));
        }
        Some(n)
    }

    fn note(&mut self, ev: io::Result<inotify::Event<OsString>>) -> bool {
        match ev {
            Ok(ev) => {
                if ev.mask.contains(EventMask::IGNORED)
                    && let Some(p) = self.by_wd.remove(&ev.wd)
                {
                    self.watched.remove(&p);
                }
                true
            }
            Err(e) => {
                // Overflow or a read error: a rescan covers it.
                tracing::warn!(error = %e, "inotify read error on device tree");
                true
            }
        }
    }
}

/// How long a device-tree change waits for a udev event before it rescans
/// on its own (udev source only). udev announces a kernel device a few ms
/// after devtmpfs made its node, once its links and properties exist; a node
/// udev never announces (made by hand, or udev's events do not reach this
/// network namespace) is rescanned after this.
pub const UDEV_GRACE: Duration = Duration::from_millis(40);

/// Why the device tree should be rescanned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    /// inotify events (inotify source).
    Inotify(usize),
    /// udev events about device nodes (or lost events).
    Udev(usize),
    /// inotify events no udev event followed within [`UDEV_GRACE`].
    InotifyUnannounced,
    /// The udev monitor failed; now inotify only.
    UdevFailed,
}

/// Hotplug events from the chosen source: the udev monitor with inotify on
/// the device tree as a late fallback, or inotify alone.
#[derive(Debug)]
pub struct Hotplug {
    dev: DevWatcher,
    monitor: Option<Monitor>,
    props: Arc<EventProps>,
    pending: Option<tokio::time::Instant>,
}

impl Hotplug {
    /// Start watching with `source`. A udev monitor that cannot be opened
    /// is logged and inotify is used. Call inside a tokio runtime.
    pub fn new(
        source: HotplugSource,
        dev_root: &Path,
        props: Arc<EventProps>,
    ) -> Result<Self, WatchError> {
        let monitor = match source {
            HotplugSource::Inotify => None,
            HotplugSource::Udev => match Monitor::new(dev_root) {
                Ok(m) => Some(m),
                Err(e) => {
                    tracing::warn!(error = %e, "udev monitor unavailable; hotplug falls back to inotify");
                    None
                }
            },
        };
        Ok(Self {
            dev: DevWatcher::new()?,
            monitor,
            props,
            pending: None,
        })
    }

    /// The source in use now.
    pub fn source(&self) -> HotplugSource {
        if self.monitor.is_some() {
            HotplugSource::Udev
        } else {
            HotplugSource::Inotify
        }
    }

    /// Should the udev database directory be watched too? Only without the
    /// monitor: its events already say when udev has finished a device.
    pub fn watches_udev_data(&self) -> bool {
        self.monitor.is_none()
    }

    /// Watch these device-tree directories too; true when any was new.
    pub fn watch_dirs(&mut self, dirs: &[PathBuf]) -> bool {
        self.dev.watch_dirs(dirs)
    }

    /// Wait until the device tree should be rescanned. `None` if the inotify
    /// stream ended. Cancel-safe.
    pub async fn changed(&mut self) -> Option<Change> {
        loop {
            let pending = self.pending;
            tokio::select! {
                n = self.dev.changed() => {
                    let n = n?;
                    if self.monitor.is_none() {
                        return Some(Change::Inotify(n));
                    }
                    if self.pending.is_none() {
                        self.pending = Some(tokio::time::Instant::now() + UDEV_GRACE);
                    }
                }
                r = async {
                    match self.monitor.as_mut() {
                        Some(m) => m.next().await,
                        None => std::future::pending().await,
                    }
                } => match r {
                    Ok(batch) => {
                        self.pending = None;
                        for ev in &batch.events {
                            tracing::debug!(
                                action = %ev.action,
                                node = %ev.path.display(),
                                properties = ev.properties.len(),
                                "udev event"
                            );
                            self.props.record(ev);
                        }
                        return Some(Change::Udev(batch.events.len()));
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "udev monitor failed; hotplug falls back to inotify");
                        self.monitor = None;
                        self.pending = None;
                        return Some(Change::UdevFailed);
                    }
                },
                () = async {
                    match pending {
                        Some(at) => tokio::time::sleep_until(at).await,
                        None => std::future::pending().await,
                    }
                } => {
                    self.pending = None;
                    return Some(Change::InotifyUnannounced);
                }
            }
        }
    }
}

/// Something the kubelet did in the plugin directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PluginDirEvent {
    /// `kubelet.sock` appeared: the kubelet (re)started.
    KubeletCreated,
    /// A file was deleted (maybe one of our sockets).
    Deleted(OsString),
}

/// Watches the plugin directory.
#[derive(Debug)]
pub struct PluginDirWatcher {
    stream: EventStream<Vec<u8>>,
}

impl PluginDirWatcher {
    /// Watch `dir` (it must exist).
    pub fn new(dir: &Path) -> Result<Self, WatchError> {
        let (stream, mut watches) = stream(4096)?;
        watches
            .add(
                dir,
                WatchMask::CREATE | WatchMask::DELETE | WatchMask::MOVED_TO | WatchMask::MOVED_FROM,
            )
            .map_err(|source| WatchError::Add {
                path: dir.to_path_buf(),
                source,
            })?;
        Ok(Self { stream })
    }

    /// The next relevant event; `None` if the stream ended.
    pub async fn next(&mut self) -> Option<PluginDirEvent> {
        loop {
            let ev = match self.stream.next().await? {
                Ok(ev) => ev,
                Err(e) => {
                    tracing::warn!(error = %e, "inotify read error on plugin dir");
                    // Be safe: treat it as a kubelet restart.
                    return Some(PluginDirEvent::KubeletCreated);
                }
            };
            let Some(name) = ev.name else { continue };
            if ev.mask.intersects(EventMask::CREATE | EventMask::MOVED_TO) {
                if name == crate::plugin::KUBELET_SOCKET {
                    return Some(PluginDirEvent::KubeletCreated);
                }
            } else if ev
                .mask
                .intersects(EventMask::DELETE | EventMask::MOVED_FROM)
            {
                return Some(PluginDirEvent::Deleted(name));
            }
        }
    }
}

/// Watches the config file, so an edited file or an updated ConfigMap
/// (kubelet swaps the `..data` symlink) reloads it like SIGHUP does; a pod
/// built `FROM scratch` has no `kill` to send one.
#[derive(Debug)]
pub struct ConfigWatcher {
    stream: EventStream<Vec<u8>>,
    name: OsString,
}

impl ConfigWatcher {
    /// Watch the directory holding `file`.
    pub fn new(file: &Path) -> Result<Self, WatchError> {
        let dir = match file.parent() {
            Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
            _ => PathBuf::from("."),
        };
        let name = file.file_name().map(OsString::from).unwrap_or_default();
        let (stream, mut watches) = stream(4096)?;
        watches
            .add(
                &dir,
                WatchMask::CLOSE_WRITE | WatchMask::MOVED_TO | WatchMask::CREATE,
            )
            .map_err(|source| WatchError::Add { path: dir, source })?;
        Ok(Self { stream, name })
    }

    /// Wait until the file (or a ConfigMap's `..data`) changed, then let a
    /// burst of writes settle for 50 ms. `None` if the stream ended.
    pub async fn changed(&mut self) -> Option<()> {
        loop {
            let ev = self.stream.next().await?;
            let relevant = match &ev {
                Ok(e) => e
                    .name
                    .as_ref()
                    .is_some_and(|n| *n == self.name || n == "..data"),
                Err(_) => true,
            };
            if relevant {
                break;
            }
        }
        while let Ok(Some(_)) =
            tokio::time::timeout(Duration::from_millis(50), self.stream.next()).await
        {}
        Some(())
    }
}
