//! Event sources that keep the local names and upstreams current: inotify
//! on the records directory (a record is served as soon as smarter-cni
//! renames it into place and forgotten as soon as it is removed) and on the
//! host's resolv.conf (upstreams are re-read when it changes). No polling.

use std::ffi::OsStr;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use futures_util::{FutureExt, StreamExt};
use hickory_proto::rr::Name;
use inotify::{EventMask, Inotify, WatchDescriptor, WatchMask};
use smarter_common::records;

use crate::forward::{Forwarder, read_resolv_conf};
use crate::metrics::Metrics;
use crate::server::ZoneHandle;
use crate::zone::Store;

/// Watching failed to start.
#[derive(Debug, thiserror::Error)]
pub enum WatchError {
    /// An inotify or directory operation failed.
    #[error("{path}: cannot {op}: {source}")]
    Io {
        /// The path involved.
        path: PathBuf,
        /// What we were doing.
        op: &'static str,
        /// The OS error.
        source: std::io::Error,
    },
}

/// The store of local names and the zone built from it, updated together.
#[derive(Debug, Clone)]
pub struct LocalNames {
    zone: ZoneHandle,
    metrics: Arc<Metrics>,
}

impl LocalNames {
    /// An empty set of local names under `domain`.
    pub fn new(domain: Name, ttl: u32, metrics: Arc<Metrics>) -> Self {
        Self {
            zone: ZoneHandle::new(Store::new(&domain, ttl)),
            metrics,
        }
    }

    /// The zone handle the server reads.
    pub fn zone(&self) -> ZoneHandle {
        self.zone.clone()
    }

    /// Change the store (which updates the zone in place).
    pub fn update(&self, f: impl FnOnce(&mut Store)) {
        let counts = self.zone.update(|store| {
            f(store);
            (store.record_count(), store.zone().name_count())
        });
        if let Some((records, names)) = counts {
            self.metrics.records.set_count(records);
            self.metrics.names.set_count(names);
        }
    }
}

/// Every readable record in `dir`, keyed by file name; bad files are logged
/// and skipped.
pub fn load_records(dir: &Path) -> Vec<(String, records::Record)> {
    let mut out = Vec::new();
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(error) => {
            tracing::warn!(dir = %dir.display(), %error, "cannot list records");
            return out;
        }
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        if !records::is_record_file(&name) {
            continue;
        }
        match records::read(&entry.path()) {
            Ok(r) => out.push((name.to_string_lossy().into_owned(), r)),
            Err(error) => tracing::warn!(%error, "skipping record"),
        }
    }
    out
}

const RECORDS_MASK: WatchMask = WatchMask::MOVED_TO
    .union(WatchMask::CLOSE_WRITE)
    .union(WatchMask::DELETE)
    .union(WatchMask::MOVED_FROM)
    .union(WatchMask::MOVE_SELF);

/// On every directory above the records directory: the next directory on
/// the way down appearing (created, or moved into place), or this one being
/// moved away. Its deletion ends the watch with IGNORED. MASK_ADD because the
/// same directory may also be watched for resolv.conf.
const ANCESTOR_MASK: WatchMask = WatchMask::CREATE
    .union(WatchMask::MOVED_TO)
    .union(WatchMask::MOVE_SELF)
    .union(WatchMask::ONLYDIR)
    .union(WatchMask::MASK_ADD);

/// Every directory above `dir`, from the root down, each with the name of
/// the next component on the way to `dir`.
fn ancestors(dir: &Path) -> Vec<(PathBuf, std::ffi::OsString)> {
    let mut out: Vec<(PathBuf, std::ffi::OsString)> = dir
        .ancestors()
        .zip(dir.ancestors().skip(1))
        .filter(|(_, parent)| !parent.as_os_str().is_empty())
        .filter_map(|(child, parent)| {
            child
                .file_name()
                .map(|name| (parent.to_path_buf(), name.to_os_string()))
        })
        .collect();
    out.reverse();
    out
}

/// The watches that find the records directory again: one on each directory
/// above it and one on the directory itself (when it exists).
///
/// A records directory deleted and made again (a node cleanup, an operator's
/// `rm -rf`, of it or of a directory above it; smarter-cni re-creates the
/// whole path with the next record) is a new inode the old watch no longer
/// sees, and a directory above it moved away takes the watched inode along.
/// So any change on the way down re-runs [`Tree::establish`], which watches
/// whatever is at each path now, top down so nothing created in between is
/// missed.
#[derive(Debug)]
struct Tree {
    records: Option<WatchDescriptor>,
    /// Watched directories above the records directory, with the name of the
    /// next component on the way down.
    ancestors: Vec<(WatchDescriptor, std::ffi::OsString)>,
}

impl Tree {
    /// Watch every directory on the way to `dir`, then `dir`. Returns
    /// whether the records directory's watch changed (it appeared, went
    /// away, or is a new directory), i.e. whether to read it again.
    fn establish(&mut self, watches: &mut inotify::Watches, dir: &Path) -> bool {
        for (parent, child) in ancestors(dir) {
            match watches.add(&parent, ANCESTOR_MASK) {
                Ok(wd) => {
                    if !self.ancestors.iter().any(|(w, c)| *w == wd && *c == child) {
                        self.ancestors.push((wd, child));
                    }
                }
                // Not there: its creation in the directory above brings us
                // back, and nothing below it can be there either.
                Err(error) if error.kind() == std::io::ErrorKind::NotFound => break,
                // Not ours to watch (permissions): the ones below still help.
                Err(error) => {
                    tracing::debug!(dir = %parent.display(), %error, "cannot watch");
                }
            }
        }
        let now = watches.add(dir, RECORDS_MASK).ok();
        if now == self.records {
            return false;
        }
        // The old directory was deleted (its watch is gone already) or moved
        // away (its watch would still report changes that are no longer ours).
        if let Some(old) = self.records.take() {
            let _ = watches.remove(old);
        }
        match &now {
            Some(_) => {
                tracing::info!(dir = %dir.display(), "watching the records directory")
            }
            None => {
                tracing::warn!(dir = %dir.display(), "records directory went away; waiting for it to come back")
            }
        }
        self.records = now;
        true
    }

    /// Whether `ev` means the records directory may be somewhere else now.
    fn moved(&mut self, ev: &inotify::Event<std::ffi::OsString>) -> bool {
        if Some(&ev.wd) == self.records.as_ref() {
            return ev
                .mask
                .intersects(EventMask::IGNORED | EventMask::MOVE_SELF);
        }
        if ev.mask.contains(EventMask::IGNORED) {
            let before = self.ancestors.len();
            self.ancestors.retain(|(w, _)| *w != ev.wd);
            return self.ancestors.len() != before;
        }
        self.ancestors.iter().any(|(w, child)| {
            *w == ev.wd
                && (ev.mask.contains(EventMask::MOVE_SELF)
                    || (ev.mask.contains(EventMask::ISDIR) && ev.name.as_ref() == Some(child)))
        })
    }
}

/// What to watch.
#[derive(Debug, Clone)]
pub struct WatchConfig {
    /// The records directory (created if missing).
    pub records_dir: PathBuf,
    /// The host's resolv.conf, if upstreams come from it.
    pub resolv_conf: Option<PathBuf>,
    /// Port of upstream resolvers.
    pub upstream_port: u16,
    /// Our own listening sockets, never used as upstreams.
    pub own_addresses: Vec<SocketAddr>,
    /// Told the sandbox id of every record that appears (runtime lookup).
    pub new_ids: Option<tokio::sync::mpsc::UnboundedSender<String>>,
}

/// A started watch: the initial state is loaded, events are queued from
/// the moment this returns.
#[derive(Debug)]
pub struct Watcher {
    inotify: Inotify,
    tree: Tree,
    resolv_wds: Vec<(WatchDescriptor, Vec<std::ffi::OsString>)>,
    ctx: Ctx,
}

impl Watcher {
    /// Start watching, then load the records and upstreams (in that order,
    /// so no change between the two is lost).
    pub fn start(
        config: WatchConfig,
        names: LocalNames,
        forwarder: Arc<Forwarder>,
    ) -> Result<Self, WatchError> {
        let dir = &config.records_dir;
        let err = |path: &Path, op| {
            let path = path.to_path_buf();
            move |source| WatchError::Io { path, op, source }
        };
        std::fs::create_dir_all(dir).map_err(err(dir, "create directory"))?;
        let inotify = Inotify::init().map_err(err(dir, "initialise inotify"))?;
        let mut tree = Tree {
            records: None,
            ancestors: Vec::new(),
        };
        tree.establish(&mut inotify.watches(), dir);
        if tree.records.is_none() {
            // Just created, so this is a real failure (permissions, limits).
            inotify
                .watches()
                .add(dir, RECORDS_MASK)
                .map_err(err(dir, "watch"))?;
        }
        let mut resolv_wds: Vec<(WatchDescriptor, Vec<std::ffi::OsString>)> = Vec::new();
        if let Some(rc) = &config.resolv_conf {
            // Watch the directory (resolv.conf is usually replaced, not
            // rewritten) of the file and, for a symlink, of its target.
            let mut paths = vec![rc.clone()];
            if let Ok(target) = std::fs::canonicalize(rc)
                && target != *rc
            {
                paths.push(target);
            }
            for p in paths {
                let (Some(parent), Some(file)) = (p.parent(), p.file_name()) else {
                    continue;
                };
                let mask = WatchMask::MOVED_TO
                    | WatchMask::CLOSE_WRITE
                    | WatchMask::CREATE
                    | WatchMask::DELETE;
                // MASK_ADD: the records directory's parent may be this same
                // directory; its watch must keep the parent's events.
                match inotify.watches().add(parent, mask | WatchMask::MASK_ADD) {
                    Ok(wd) => match resolv_wds.iter_mut().find(|(w, _)| *w == wd) {
                        Some((_, files)) => files.push(file.to_os_string()),
                        None => resolv_wds.push((wd, vec![file.to_os_string()])),
                    },
                    Err(error) => {
                        tracing::warn!(path = %parent.display(), %error, "cannot watch resolv.conf directory");
                    }
                }
            }
        }
        let ctx = Ctx {
            config,
            names,
            forwarder,
        };
        ctx.rescan_records();
        ctx.reload_upstreams();
        Ok(Self {
            inotify,
            tree,
            resolv_wds,
            ctx,
        })
    }

    /// Process events until the inotify stream ends.
    pub async fn run(self) -> Result<(), WatchError> {
        let Self {
            inotify,
            mut tree,
            resolv_wds,
            ctx: me,
        } = self;
        let config = &me.config;
        let mut stream = inotify
            .into_event_stream(vec![0u8; 16 * 1024])
            .map_err(|source| WatchError::Io {
                path: config.records_dir.clone(),
                op: "read inotify events",
                source,
            })?;
        while let Some(first) = stream.next().await {
            let mut batch = vec![first];
            while let Some(Some(more)) = stream.next().now_or_never() {
                batch.push(more);
            }
            let mut rescan = false;
            let mut resolv = false;
            // The records directory, or a directory above it, went away or
            // appeared: watch whatever is there now.
            let mut rewatch = false;
            let mut changes: Vec<(EventMask, std::ffi::OsString)> = Vec::new();
            for ev in batch {
                let ev = match ev {
                    Ok(ev) => ev,
                    Err(error) => {
                        tracing::warn!(%error, "inotify read failed; rescanning");
                        rescan = true;
                        continue;
                    }
                };
                if ev.mask.contains(EventMask::Q_OVERFLOW) {
                    rescan = true;
                    rewatch = true;
                    resolv = true;
                    continue;
                }
                if tree.moved(&ev) {
                    rewatch = true;
                } else if Some(&ev.wd) == tree.records.as_ref()
                    && let Some(name) = &ev.name
                {
                    changes.push((ev.mask, name.clone()));
                }
                if let Some((_, files)) = resolv_wds.iter().find(|(w, _)| *w == ev.wd)
                    && ev.name.as_ref().is_some_and(|n| files.contains(n))
                {
                    resolv = true;
                }
            }
            // Whatever the directory holds now (nothing, if it is gone)
            // replaces what we served, read after the watch is in place.
            if rewatch && tree.establish(&mut stream.watches(), &config.records_dir) {
                rescan = true;
            }
            if rescan {
                me.rescan_records();
            } else if !changes.is_empty() {
                me.names.update(|store| {
                    for (mask, name) in &changes {
                        me.record_event(store, *mask, name);
                    }
                });
            }
            if resolv {
                me.reload_upstreams();
            }
        }
        Ok(())
    }
}

#[derive(Debug)]
struct Ctx {
    config: WatchConfig,
    names: LocalNames,
    forwarder: Arc<Forwarder>,
}

impl Ctx {
    fn rescan_records(&self) {
        let all = load_records(&self.config.records_dir);
        tracing::info!(records = all.len(), dir = %self.config.records_dir.display(), "loaded records");
        self.names.update(|s| s.replace_records(all));
    }

    fn reload_upstreams(&self) {
        if let Some(rc) = &self.config.resolv_conf {
            self.forwarder.set_upstreams(read_resolv_conf(
                rc,
                self.config.upstream_port,
                &self.config.own_addresses,
            ));
        }
    }

    fn record_event(&self, store: &mut Store, mask: EventMask, name: &OsStr) -> bool {
        if !records::is_record_file(name) {
            return false;
        }
        let key = name.to_string_lossy().into_owned();
        if mask.intersects(EventMask::DELETE | EventMask::MOVED_FROM) {
            tracing::debug!(record = %key, "record removed");
            return store.remove_record(&key);
        }
        let path = self.config.records_dir.join(name);
        match records::read(&path) {
            Ok(r) => {
                tracing::debug!(record = %key, "record added");
                if let Some(tx) = &self.config.new_ids {
                    let _ = tx.send(r.container_id.clone());
                }
                store.upsert_record(key, r);
                true
            }
            // Gone again before we read it: the DELETE event follows.
            Err(records::RecordError::Io { source, .. })
                if source.kind() == std::io::ErrorKind::NotFound =>
            {
                false
            }
            Err(error) => {
                tracing::warn!(%error, "skipping record");
                store.remove_record(&key)
            }
        }
    }
}
