//! inotify watchers: the device tree (hotplug) and the plugin directory
//! (kubelet restarts, our sockets deleted).
//!
//! The device tree watcher watches every directory a scan found (inotify is
//! not recursive); the service adds new ones after each scan and rescans once
//! more when it did, so nodes created in a brand-new directory (udev's
//! `serial/by-id`) are not missed.

use std::collections::{HashMap, HashSet};
use std::ffi::OsString;
use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

use inotify::{EventMask, EventStream, Inotify, WatchDescriptor, WatchMask, Watches};
use tokio_stream::StreamExt;

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
