//! The attachment record: how `smarter-cni` tells `smarter-dns` about pods.
//!
//! One small JSON file per network attachment (container id + interface) in
//! a records directory (default [`DEFAULT_DIR`]). The CNI plugin writes it on
//! ADD and removes it on DEL/GC; the DNS server watches the directory with
//! inotify. Files are written to a hidden temporary name in the same
//! directory and renamed into place, so a reader never sees a partial record
//! and an inotify `IN_MOVED_TO` marks a complete one.
//!
//! Format version 1 (`"version": 1`), e.g. `/run/smarter/cni/records/3f2a…_eth0.json`:
//!
//! ```json
//! {
//!   "version": 1,
//!   "container_id": "3f2a9c…",
//!   "ifname": "eth0",
//!   "network": "smartnet",
//!   "pod_name": "camera-7d9f",
//!   "namespace": "default",
//!   "ips": ["172.39.0.5"]
//! }
//! ```
//!
//! `pod_name`, `namespace` and `hostname` may be absent (a runtime that does
//! not pass `CNI_ARGS`). Readers ignore fields they do not know, so fields can
//! be added without a version bump; a change that breaks old readers bumps
//! [`VERSION`], and readers reject versions they do not know.

use std::ffi::OsStr;
use std::io::Write;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// The record format version this module writes and reads.
pub const VERSION: u32 = 1;

/// Where records live unless configured otherwise.
pub const DEFAULT_DIR: &str = "/run/smarter/cni/records";

/// Suffix of complete record files.
pub const SUFFIX: &str = ".json";

/// One network attachment of one pod sandbox.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    /// Format version, [`VERSION`] when written by this module.
    pub version: u32,
    /// The runtime's container (sandbox) id, `CNI_CONTAINERID`.
    pub container_id: String,
    /// Interface name inside the container, `CNI_IFNAME`.
    pub ifname: String,
    /// CNI network name (`name` in the network config).
    pub network: String,
    /// Pod name from `K8S_POD_NAME`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_name: Option<String>,
    /// Pod namespace from `K8S_POD_NAMESPACE`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// The pod's hostname, when the writer knows it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hostname: Option<String>,
    /// Addresses assigned to the attachment.
    pub ips: Vec<IpAddr>,
}

/// Reading or writing a record failed.
#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    /// An id or interface name would escape the directory or is empty.
    #[error("record key {value:?} in {field} is not a safe file name component")]
    BadKey {
        /// `container_id` or `ifname`.
        field: &'static str,
        /// The rejected value.
        value: String,
    },
    /// File system operation failed.
    #[error("record {path}: cannot {op}: {source}")]
    Io {
        /// The file or directory involved.
        path: PathBuf,
        /// What we were doing (`create`, `rename`...).
        op: &'static str,
        /// The OS error.
        source: std::io::Error,
    },
    /// The file is not a valid record.
    #[error("record {path}: invalid JSON: {source}")]
    Json {
        /// The file involved.
        path: PathBuf,
        /// The parser's error.
        source: serde_json::Error,
    },
    /// A record of a version this build does not understand.
    #[error("record {path}: unsupported version {version} (this build reads version {VERSION})")]
    Version {
        /// The file involved.
        path: PathBuf,
        /// The version it declared.
        version: u32,
    },
}

fn check_key(field: &'static str, value: &str) -> Result<(), RecordError> {
    let ok = !value.is_empty()
        && value.len() <= 128
        && !value.starts_with('.')
        && value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'@'));
    if ok {
        Ok(())
    } else {
        Err(RecordError::BadKey {
            field,
            value: value.to_string(),
        })
    }
}

/// File name of the record for one attachment, e.g. `abc123_eth0.json`.
pub fn file_name(container_id: &str, ifname: &str) -> Result<String, RecordError> {
    check_key("container_id", container_id)?;
    check_key("ifname", ifname)?;
    Ok(format!("{container_id}_{ifname}{SUFFIX}"))
}

impl Record {
    /// Serialise to the on-disk form.
    pub fn to_json(&self) -> Vec<u8> {
        // Serialising plain strings, numbers and addresses cannot fail.
        serde_json::to_vec_pretty(self).unwrap_or_default()
    }

    /// Parse and version-check a record; `path` is used in errors only.
    pub fn from_json(path: &Path, bytes: &[u8]) -> Result<Self, RecordError> {
        let rec: Record = serde_json::from_slice(bytes).map_err(|source| RecordError::Json {
            path: path.to_path_buf(),
            source,
        })?;
        if rec.version != VERSION {
            return Err(RecordError::Version {
                path: path.to_path_buf(),
                version: rec.version,
            });
        }
        Ok(rec)
    }

    /// All the names this record answers to before any domain is appended:
    /// the pod name and the hostname when different.
    pub fn names(&self) -> Vec<&str> {
        let mut names: Vec<&str> = Vec::new();
        for n in [self.pod_name.as_deref(), self.hostname.as_deref()]
            .into_iter()
            .flatten()
        {
            if !n.is_empty() && !names.contains(&n) {
                names.push(n);
            }
        }
        names
    }
}

/// Write `record` into `dir` atomically (temp file, fsync, rename).
/// Creates `dir` if needed. Returns the final path.
pub fn write(dir: &Path, record: &Record) -> Result<PathBuf, RecordError> {
    let name = file_name(&record.container_id, &record.ifname)?;
    std::fs::create_dir_all(dir).map_err(|source| RecordError::Io {
        path: dir.to_path_buf(),
        op: "create directory",
        source,
    })?;
    let path = dir.join(&name);
    let tmp = dir.join(format!(".{name}.{}.tmp", std::process::id()));
    let io = |op: &'static str, p: &Path| {
        let p = p.to_path_buf();
        move |source| RecordError::Io {
            path: p,
            op,
            source,
        }
    };
    let mut f = std::fs::File::create(&tmp).map_err(io("create", &tmp))?;
    let written = f.write_all(&record.to_json()).and_then(|()| f.sync_all());
    if let Err(source) = written {
        let _ = std::fs::remove_file(&tmp);
        return Err(RecordError::Io {
            path: tmp,
            op: "write",
            source,
        });
    }
    if let Err(source) = std::fs::rename(&tmp, &path) {
        let _ = std::fs::remove_file(&tmp);
        return Err(RecordError::Io {
            path,
            op: "rename into place",
            source,
        });
    }
    Ok(path)
}

/// Remove the record of one attachment. Missing is not an error (DEL is
/// idempotent).
pub fn remove(dir: &Path, container_id: &str, ifname: &str) -> Result<(), RecordError> {
    let path = dir.join(file_name(container_id, ifname)?);
    match std::fs::remove_file(&path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(RecordError::Io {
            path,
            op: "remove",
            source,
        }),
    }
}

/// Whether a directory entry name is a complete record file (not a temp file).
pub fn is_record_file(name: &OsStr) -> bool {
    let name = name.to_string_lossy();
    !name.starts_with('.') && name.ends_with(SUFFIX)
}

/// Read one record file.
pub fn read(path: &Path) -> Result<Record, RecordError> {
    let bytes = std::fs::read(path).map_err(|source| RecordError::Io {
        path: path.to_path_buf(),
        op: "read",
        source,
    })?;
    Record::from_json(path, &bytes)
}

/// Read every record in `dir`. A missing directory is empty. Files that fail
/// to parse are returned as errors beside the good ones, so one bad file
/// never hides the others.
pub fn read_dir(dir: &Path) -> Result<Vec<Result<Record, RecordError>>, RecordError> {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(source) => {
            return Err(RecordError::Io {
                path: dir.to_path_buf(),
                op: "list",
                source,
            });
        }
    };
    let mut paths = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|source| RecordError::Io {
            path: dir.to_path_buf(),
            op: "list",
            source,
        })?;
        if is_record_file(&entry.file_name()) {
            paths.push(entry.path());
        }
    }
    paths.sort();
    Ok(paths.iter().map(|p| read(p)).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Record {
        Record {
            version: VERSION,
            container_id: "abc123".into(),
            ifname: "eth0".into(),
            network: "smartnet".into(),
            pod_name: Some("camera".into()),
            namespace: Some("default".into()),
            hostname: None,
            ips: vec!["172.39.0.5".parse().unwrap_or(IpAddr::from([0, 0, 0, 0]))],
        }
    }

    #[test]
    fn write_read_remove_roundtrip() -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let sub = dir.path().join("records");
        let path = write(&sub, &sample())?;
        assert_eq!(path.file_name(), Some(OsStr::new("abc123_eth0.json")));
        let all = read_dir(&sub)?;
        assert_eq!(all.len(), 1);
        assert_eq!(all.into_iter().next().transpose()?, Some(sample()));
        // No temp files left behind.
        assert_eq!(std::fs::read_dir(&sub)?.count(), 1);
        remove(&sub, "abc123", "eth0")?;
        remove(&sub, "abc123", "eth0")?;
        assert!(read_dir(&sub)?.is_empty());
        Ok(())
    }

    #[test]
    fn rejects_path_escapes() {
        assert!(file_name("../etc", "eth0").is_err());
        assert!(file_name("abc", "a/b").is_err());
        assert!(file_name("", "eth0").is_err());
        assert!(file_name(".hidden", "eth0").is_err());
    }

    #[test]
    fn rejects_unknown_version_and_bad_json() {
        let p = Path::new("/r/x.json");
        let v2 = br#"{"version":2,"container_id":"a","ifname":"e","network":"n","ips":[]}"#;
        assert!(matches!(
            Record::from_json(p, v2),
            Err(RecordError::Version { version: 2, .. })
        ));
        assert!(matches!(
            Record::from_json(p, b"{"),
            Err(RecordError::Json { .. })
        ));
    }

    #[test]
    fn ignores_unknown_fields() -> Result<(), RecordError> {
        let p = Path::new("/r/x.json");
        let j = br#"{"version":1,"container_id":"a","ifname":"e","network":"n","ips":["fd00::1"],"future":true}"#;
        let r = Record::from_json(p, j)?;
        assert_eq!(r.ips.len(), 1);
        Ok(())
    }

    #[test]
    fn names_deduplicated() {
        let mut r = sample();
        r.hostname = Some("camera".into());
        assert_eq!(r.names(), vec!["camera"]);
        r.hostname = Some("cam-host".into());
        assert_eq!(r.names(), vec!["camera", "cam-host"]);
    }

    #[test]
    fn temp_files_are_not_records() {
        assert!(!is_record_file(OsStr::new(".abc_eth0.json.12.tmp")));
        assert!(is_record_file(OsStr::new("abc_eth0.json")));
    }
}
