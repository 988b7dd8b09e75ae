//! Applying a provisioning file on the gateway, once.
//!
//! Everything is rendered into a staging directory on the data partition
//! first; only when every file is staged are they renamed into place, then
//! the hostname is set, then the record is written (atomically, last). Any
//! failure before the record undoes what was renamed (the previous files come
//! back) and removes the staging directory, so the data partition holds either
//! the old state or the complete new one plus its record: never a
//! half-provisioned gateway. A power cut in the middle of the commit leaves no
//! record, so the next boot applies again from the start; applying is
//! idempotent.

use std::fs;
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::Serialize;
use sha2::{Digest, Sha256};
use smarter_common::config::ConfigError;

use crate::file::{self, Provision};
use crate::render;

/// Default mount point of the data partition.
pub const DEFAULT_DATA_DIR: &str = "/data";

/// Paths under the data partition, all derived from its mount point.
#[derive(Debug, Clone)]
pub struct Layout {
    /// Mount point of the data partition (`/data`).
    pub data_dir: PathBuf,
}

impl Layout {
    /// `<data>/etc/rancher/k3s` (the gateway's `/etc/rancher/k3s`).
    pub fn k3s_dir(&self) -> PathBuf {
        self.data_dir.join("etc/rancher/k3s")
    }
    /// k3s's agent config.
    pub fn k3s_config(&self) -> PathBuf {
        self.k3s_dir().join("config.yaml")
    }
    /// The join token, mode 0600.
    pub fn token(&self) -> PathBuf {
        self.k3s_dir().join("smarter-token")
    }
    /// The persistent hostname (the gateway's `/etc/hostname` links here).
    pub fn hostname(&self) -> PathBuf {
        self.data_dir.join("etc/hostname")
    }
    /// Provisioning's own directory.
    pub fn provision_dir(&self) -> PathBuf {
        self.data_dir.join("smarter/provision")
    }
    /// Present = provisioned.
    pub fn record(&self) -> PathBuf {
        self.provision_dir().join("record.toml")
    }
    /// Where files are rendered before they are renamed into place.
    pub fn staging(&self) -> PathBuf {
        self.provision_dir().join(".staging")
    }
}

/// Sets the running system's hostname; a trait so tests pass a recorder.
pub trait Hostname {
    /// The current hostname.
    fn get(&self) -> std::io::Result<String>;
    /// Set it.
    fn set(&mut self, name: &str) -> std::io::Result<()>;
}

/// The kernel's hostname (`sethostname(2)`, needs CAP_SYS_ADMIN).
#[derive(Debug, Default)]
pub struct KernelHostname;

impl Hostname for KernelHostname {
    fn get(&self) -> std::io::Result<String> {
        fs::read_to_string("/proc/sys/kernel/hostname").map(|s| s.trim_end().to_string())
    }
    fn set(&mut self, name: &str) -> std::io::Result<()> {
        // SAFETY: the pointer and length describe `name`'s live bytes; the
        // kernel copies them and does not keep the pointer.
        let rc = unsafe { libc::sethostname(name.as_ptr().cast(), name.len()) };
        if rc == 0 {
            Ok(())
        } else {
            Err(std::io::Error::last_os_error())
        }
    }
}

/// What `apply` needs.
#[derive(Debug, Clone)]
pub struct Options {
    /// The provisioning file (`/boot/smarter-provision.toml`).
    pub source: PathBuf,
    /// Where the data partition is mounted.
    pub layout: Layout,
}

/// What was recorded in `record.toml` (never the token).
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct Record {
    /// Record format version.
    pub version: u32,
    /// When it was applied, RFC 3339 UTC.
    pub applied_at: String,
    /// The provisioning file applied.
    pub source: String,
    /// sha256 of that file's bytes.
    pub source_sha256: String,
    /// The k3s server.
    pub server: String,
    /// Node name and hostname.
    pub node_name: String,
    /// The node labels k3s was given, `key=value`.
    pub node_labels: Vec<String>,
    /// The files written.
    pub files: Vec<String>,
}

/// What `apply` did.
#[derive(Debug)]
pub enum Outcome {
    /// The file was applied and the record written.
    Applied(Record),
    /// A record exists: nothing was done.
    AlreadyProvisioned {
        /// The record found.
        record: PathBuf,
    },
}

/// Why `apply` did not provision. Exit codes: [`ApplyError::exit_code`].
#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    /// No provisioning file: the gateway boots unprovisioned.
    #[error(
        "no provisioning file at {path}: the gateway is not provisioned (write one with smarter-flash, or copy it to the boot partition, and reboot)"
    )]
    NoFile {
        /// Where we looked.
        path: PathBuf,
    },
    /// The file is malformed; its message names the file, field and value.
    #[error("{0}; nothing was applied")]
    Invalid(#[source] ConfigError),
    /// A file operation failed; everything was undone.
    #[error("cannot {op} {path}: {source}; nothing was applied")]
    Io {
        /// What we tried.
        op: &'static str,
        /// On which path.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The hostname could not be set; everything was undone.
    #[error("cannot set the hostname to {name:?}: {source}; nothing was applied")]
    Hostname {
        /// The node name.
        name: String,
        /// The OS error.
        source: std::io::Error,
    },
}

impl ApplyError {
    /// `smarter-provision apply`'s exit status: 2 no file, 3 invalid file,
    /// 4 could not apply (I/O or hostname). Success (applied or already
    /// provisioned) is 0.
    pub fn exit_code(&self) -> u8 {
        match self {
            ApplyError::NoFile { .. } => 2,
            ApplyError::Invalid(_) => 3,
            ApplyError::Io { .. } | ApplyError::Hostname { .. } => 4,
        }
    }
}

fn io(op: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> ApplyError {
    let path = path.to_path_buf();
    move |source| ApplyError::Io { op, path, source }
}

/// Apply `opts.source` once. `hostname` is `None` to leave the running
/// hostname alone (the file under /data is still written).
pub fn apply(opts: &Options, hostname: Option<&mut dyn Hostname>) -> Result<Outcome, ApplyError> {
    let layout = &opts.layout;
    let record_path = layout.record();
    if record_path.exists() {
        return Ok(Outcome::AlreadyProvisioned {
            record: record_path,
        });
    }
    let bytes = match fs::read(&opts.source) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(ApplyError::NoFile {
                path: opts.source.clone(),
            });
        }
        Err(e) => return Err(io("read", &opts.source)(e)),
    };
    let text = String::from_utf8_lossy(&bytes);
    let p = file::parse(&opts.source, &text).map_err(ApplyError::Invalid)?;
    let sha = sha256_hex(&bytes);

    let staging = layout.staging();
    let result = stage_and_commit(opts, &p, &sha, &staging, hostname);
    // The staging directory never outlives a run, whatever happened.
    if staging.exists()
        && let Err(e) = fs::remove_dir_all(&staging)
    {
        tracing::warn!(path = %staging.display(), error = %e, "cannot remove staging directory");
    }
    result.map(Outcome::Applied)
}

/// One file to put in place.
struct Item {
    staged: PathBuf,
    target: PathBuf,
    backup: PathBuf,
}

fn stage_and_commit(
    opts: &Options,
    p: &Provision,
    sha: &str,
    staging: &Path,
    mut hostname: Option<&mut dyn Hostname>,
) -> Result<Record, ApplyError> {
    let layout = &opts.layout;
    // A leftover from a power cut: start from scratch.
    if staging.exists() {
        fs::remove_dir_all(staging).map_err(io("remove stale staging directory", staging))?;
    }
    create_dir_mode(&layout.provision_dir(), 0o755)?;
    create_dir_mode(staging, 0o700)?;
    fs::create_dir(staging.join("backup")).map_err(io("create", &staging.join("backup")))?;

    let files: [(&str, String, u32, PathBuf); 3] = [
        (
            "config.yaml",
            render::k3s_config(p, sha),
            0o644,
            layout.k3s_config(),
        ),
        (
            "smarter-token",
            render::token_file(p),
            0o600,
            layout.token(),
        ),
        (
            "hostname",
            render::hostname_file(p),
            0o644,
            layout.hostname(),
        ),
    ];
    let mut items = Vec::new();
    for (name, content, mode, target) in files {
        let staged = staging.join(name);
        write_file(&staged, content.as_bytes(), mode)?;
        items.push(Item {
            staged,
            target,
            backup: staging.join("backup").join(name),
        });
    }
    fsync_dir(staging)?;

    // Commit: rename into place, remembering what to undo.
    let mut done: Vec<&Item> = Vec::new();
    let mut old_hostname: Option<String> = None;
    let result = (|| {
        create_dir_mode(&layout.k3s_dir(), 0o755)?;
        for item in &items {
            if let Some(dir) = item.target.parent() {
                create_dir_mode(dir, 0o755)?;
            }
            if let Ok(meta) = fs::symlink_metadata(&item.target) {
                if meta.is_dir() {
                    return Err(ApplyError::Io {
                        op: "replace",
                        path: item.target.clone(),
                        source: std::io::Error::other("it is a directory, not a file"),
                    });
                }
                fs::rename(&item.target, &item.backup).map_err(io("move aside", &item.target))?;
            }
            done.push(item);
            fs::rename(&item.staged, &item.target).map_err(io("rename into", &item.target))?;
            if let Some(dir) = item.target.parent() {
                fsync_dir(dir)?;
            }
        }
        if let Some(h) = hostname.as_mut() {
            old_hostname = h.get().ok();
            h.set(&p.node_name).map_err(|source| ApplyError::Hostname {
                name: p.node_name.clone(),
                source,
            })?;
            tracing::info!(hostname = %p.node_name, "hostname set");
        }
        let record = Record {
            version: 1,
            applied_at: rfc3339_utc(SystemTime::now()),
            source: opts.source.display().to_string(),
            source_sha256: sha.to_string(),
            server: p.server.clone(),
            node_name: p.node_name.clone(),
            node_labels: render::labels(p)
                .into_iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect(),
            files: items
                .iter()
                .map(|i| i.target.display().to_string())
                .collect(),
        };
        let text = toml::to_string(&record).map_err(|e| ApplyError::Io {
            op: "serialise",
            path: layout.record(),
            source: std::io::Error::other(e.to_string()),
        })?;
        let staged_record = staging.join("record.toml");
        write_file(
            &staged_record,
            format!("# Written by smarter-provision apply. Present = provisioned; delete it to provision again.\n{text}").as_bytes(),
            0o644,
        )?;
        fs::rename(&staged_record, layout.record()).map_err(io("rename into", &layout.record()))?;
        fsync_dir(&layout.provision_dir())?;
        Ok(record)
    })();

    if result.is_err() {
        // Undo in reverse: remove what we put in place, restore the old.
        for item in done.iter().rev() {
            let _ = fs::remove_file(&item.target);
            if fs::symlink_metadata(&item.backup).is_ok()
                && let Err(e) = fs::rename(&item.backup, &item.target)
            {
                tracing::error!(path = %item.target.display(), error = %e, "cannot restore previous file");
            }
        }
        if let (Some(old), Some(h)) = (old_hostname, hostname.as_mut())
            && let Err(e) = h.set(&old)
        {
            tracing::warn!(hostname = %old, error = %e, "cannot restore the hostname; it reverts at the next boot");
        }
    }
    result
}

fn create_dir_mode(dir: &Path, mode: u32) -> Result<(), ApplyError> {
    if dir.is_dir() {
        return Ok(());
    }
    fs::DirBuilder::new()
        .recursive(true)
        .mode(mode)
        .create(dir)
        .map_err(io("create directory", dir))
}

fn write_file(path: &Path, content: &[u8], mode: u32) -> Result<(), ApplyError> {
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .map_err(io("create", path))?;
    // The umask may have narrowed the mode; set it exactly.
    f.set_permissions(fs::Permissions::from_mode(mode))
        .map_err(io("chmod", path))?;
    f.write_all(content).map_err(io("write", path))?;
    f.sync_all().map_err(io("sync", path))
}

fn fsync_dir(dir: &Path) -> Result<(), ApplyError> {
    fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io("sync directory", dir))
}

/// Lowercase hex sha256.
pub fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// `YYYY-MM-DDTHH:MM:SSZ`.
pub fn rfc3339_utc(t: SystemTime) -> String {
    let secs = t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let days = i64::try_from(secs / 86_400).unwrap_or(0);
    let rem = secs % 86_400;
    // Civil date from days since 1970-01-01 (proleptic Gregorian).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn dates() {
        assert_eq!(rfc3339_utc(UNIX_EPOCH), "1970-01-01T00:00:00Z");
        assert_eq!(
            rfc3339_utc(UNIX_EPOCH + Duration::from_secs(1_700_000_000)),
            "2023-11-14T22:13:20Z"
        );
        assert_eq!(
            rfc3339_utc(UNIX_EPOCH + Duration::from_secs(951_782_400)),
            "2000-02-29T00:00:00Z"
        );
    }
}
