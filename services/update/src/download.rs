//! The resumable bundle download.
//!
//! A bundle is fetched into `<dir>/bundle.part` beside a small state file,
//! `<dir>/bundle.state.json`, that says what the partial file is a prefix of
//! (URL, size, SHA-256) and which version of the server's file it came from
//! (its `ETag` or `Last-Modified`). A download that stops (connection cut,
//! stall, reboot, the pod restarted) resumes from the partial file's length
//! with `Range: bytes=N-` and `If-Range`, so only the missing bytes travel
//! again:
//!
//! * `206 Partial Content` from byte N: appended.
//! * `200 OK` (the server ignores ranges, or its file changed and `If-Range`
//!   no longer matches): the partial file is truncated and the download
//!   starts again from byte 0.
//! * `416`: the partial file is not a prefix of the server's file: removed,
//!   and the next try starts from 0.
//! * other statuses, connection errors, stalls: an error; the partial file
//!   stays for the next try.
//!
//! Once the file has the expected size it is read back from disk and hashed;
//! only when the SHA-256 matches is it renamed to `<dir>/<sha256>.raucb` and
//! declared complete. A wrong hash removes the partial file and the state (a
//! wrong prefix can never become right by resuming). A different desired
//! bundle (another URL, size or hash) discards the old partial file.
//!
//! Before fetching, the free space of the data partition is compared with the
//! bytes still missing; a write that fails with "no space left" removes the
//! partial file, so a full data partition is given back to the running system
//! rather than left full.
//!
//! The bandwidth limit is a token bucket ([`crate::bandwidth`]); every byte
//! read from the network is counted in [`Counters`].

use std::fs::{self, File, OpenOptions};
use std::io::{self, ErrorKind, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::bandwidth::TokenBucket;
use crate::desired::Sha256Digest;

/// Name of the partial file in the download directory.
pub const PART_FILE: &str = "bundle.part";
/// Name of the state file beside it.
pub const STATE_FILE: &str = "bundle.state.json";

/// What to fetch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// `http://` or `https://` URL.
    pub url: String,
    /// Expected size in bytes.
    pub size: u64,
    /// Expected SHA-256.
    pub sha256: Sha256Digest,
}

impl From<&crate::desired::Desired> for Target {
    fn from(d: &crate::desired::Desired) -> Self {
        Self {
            url: d.url.clone(),
            size: d.size,
            sha256: d.sha256,
        }
    }
}

/// How downloads behave.
#[derive(Debug, Clone)]
pub struct Options {
    /// Time to connect (TCP and TLS).
    pub connect_timeout: Duration,
    /// Longest wait for any byte from the server.
    pub read_timeout: Duration,
    /// Bytes per second; 0 = unlimited.
    pub bytes_per_second: u64,
    /// The CAs HTTPS servers are checked against; `None` = the compiled-in
    /// Mozilla roots.
    pub ca_certs: Option<CaCerts>,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            connect_timeout: Duration::from_secs(30),
            read_timeout: Duration::from_secs(60),
            bytes_per_second: 0,
            ca_certs: None,
        }
    }
}

/// CA certificates trusted for HTTPS instead of the compiled-in roots (a
/// fleet's own bundle server with a private CA).
#[derive(Clone)]
pub struct CaCerts(Arc<Vec<ureq::tls::Certificate<'static>>>);

impl std::fmt::Debug for CaCerts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "CaCerts({} certificates)", self.0.len())
    }
}

impl CaCerts {
    /// Read the PEM certificates in `path`; a file with none is an error.
    pub fn load(path: &Path) -> Result<Self, DownloadError> {
        let pem = fs::read(path).map_err(|source| DownloadError::Io {
            op: "read",
            path: path.to_path_buf(),
            source,
        })?;
        let certs: Vec<_> = ureq::tls::parse_pem(&pem)
            .filter_map(|item| match item {
                Ok(ureq::tls::PemItem::Certificate(c)) => Some(c),
                _ => None,
            })
            .collect();
        if certs.is_empty() {
            return Err(DownloadError::NoCertificate {
                path: path.to_path_buf(),
            });
        }
        Ok(Self(Arc::new(certs)))
    }

    /// Trust nothing (every HTTPS server fails verification).
    pub fn none() -> Self {
        Self(Arc::new(Vec::new()))
    }

    /// How many certificates.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether there are none (never, once loaded).
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// Totals since the downloader was made; shared with the metrics.
#[derive(Debug, Default)]
pub struct Counters {
    /// Body bytes received from bundle servers.
    pub bytes_transferred: AtomicU64,
    /// Bundles downloaded and verified.
    pub completed: AtomicU64,
    /// Downloads that failed (any error).
    pub failed: AtomicU64,
}

/// Where a download stands, for progress reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Progress {
    /// Bytes of the bundle on disk.
    pub have: u64,
    /// The bundle's size.
    pub size: u64,
}

/// A finished download.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Complete {
    /// The verified bundle, `<dir>/<sha256>.raucb`.
    pub path: PathBuf,
    /// Body bytes this call received from the network (0 when the bundle
    /// was already there).
    pub transferred: u64,
    /// Bytes that were already on disk when this call started (resumed).
    pub resumed_from: u64,
}

/// Why a download did not finish.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DownloadError {
    /// A file operation in the download directory failed.
    #[error("cannot {op} {}: {source}", path.display())]
    Io {
        /// What was tried.
        op: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// The data partition cannot hold the bundle.
    #[error(
        "data partition full: {} needs {needed} more bytes, {available} available{}",
        dir.display(),
        if *.removed { "; partial download removed" } else { "" }
    )]
    DiskFull {
        /// The download directory.
        dir: PathBuf,
        /// Bytes still needed.
        needed: u64,
        /// Bytes free (for an unprivileged user) when it was noticed.
        available: u64,
        /// Whether the partial file was removed to give the space back.
        removed: bool,
    },
    /// The request could not be made or got no answer (DNS, connection,
    /// TLS, timeout).
    #[error("cannot GET {url}: {source}")]
    Request {
        /// The bundle's URL.
        url: String,
        /// Why.
        #[source]
        source: Box<ureq::Error>,
    },
    /// The server answered with a status that carries no bundle.
    #[error("GET {url}: HTTP {status}")]
    Status {
        /// The bundle's URL.
        url: String,
        /// The HTTP status.
        status: u16,
    },
    /// The transfer stopped before the end (connection cut, stall); the
    /// partial file is kept and the next try resumes.
    #[error("download of {url} interrupted at byte {have} of {size}: {source}; will resume")]
    Interrupted {
        /// The bundle's URL.
        url: String,
        /// Bytes on disk.
        have: u64,
        /// The bundle's size.
        size: u64,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// The server's file is not the size the desired bundle says.
    #[error(
        "{url} is {actual} bytes, the desired bundle is {expected} bytes; partial download removed"
    )]
    WrongSize {
        /// The bundle's URL.
        url: String,
        /// Size in the desired-bundle file.
        expected: u64,
        /// Size the server announced or sent.
        actual: u64,
    },
    /// The server answered a range request with a different range.
    #[error(
        "{url}: asked for bytes from {asked}, got Content-Range {content_range:?}; partial download removed"
    )]
    WrongRange {
        /// The bundle's URL.
        url: String,
        /// First byte asked for.
        asked: u64,
        /// What the server said.
        content_range: String,
    },
    /// The CA file holds no PEM certificate.
    #[error("{}: no PEM certificate (-----BEGIN CERTIFICATE-----) in it", path.display())]
    NoCertificate {
        /// The CA file.
        path: PathBuf,
    },
    /// The downloaded file's SHA-256 is not the desired one.
    #[error("{url}: SHA-256 is {actual}, the desired bundle's is {expected}; download removed")]
    WrongHash {
        /// The bundle's URL.
        url: String,
        /// SHA-256 in the desired-bundle file.
        expected: Sha256Digest,
        /// SHA-256 of what was downloaded.
        actual: Sha256Digest,
    },
}

impl DownloadError {
    /// Whether the next try may resume from the kept partial file (as
    /// opposed to an error that needs a new desired bundle or more space).
    pub fn resumable(&self) -> bool {
        matches!(
            self,
            Self::Request { .. } | Self::Status { .. } | Self::Interrupted { .. }
        )
    }
}

/// What the state file records about the partial file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct State {
    url: String,
    size: u64,
    sha256: Sha256Digest,
    /// The server's `ETag` for the file the partial one is a prefix of.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    etag: Option<String>,
    /// The server's `Last-Modified`, when it sent no `ETag`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    last_modified: Option<String>,
}

impl State {
    fn matches(&self, target: &Target) -> bool {
        self.url == target.url && self.size == target.size && self.sha256 == target.sha256
    }
}

/// Downloads bundles into one directory.
#[derive(Debug)]
pub struct Downloader {
    dir: PathBuf,
    agent: ureq::Agent,
    bucket: Option<TokenBucket>,
    counters: Arc<Counters>,
}

const CHUNK: usize = 64 * 1024;

impl Downloader {
    /// A downloader keeping its files in `dir` (created when missing).
    pub fn new(dir: impl Into<PathBuf>, options: Options) -> Self {
        Self::with_counters(dir, options, Arc::new(Counters::default()))
    }

    /// The same, adding to existing counters (a new config, same metrics).
    pub fn with_counters(
        dir: impl Into<PathBuf>,
        options: Options,
        counters: Arc<Counters>,
    ) -> Self {
        let roots = match &options.ca_certs {
            Some(certs) => ureq::tls::RootCerts::Specific(Arc::clone(&certs.0)),
            None => ureq::tls::RootCerts::WebPki,
        };
        let tls = ureq::tls::TlsConfig::builder().root_certs(roots).build();
        let config = ureq::Agent::config_builder()
            .tls_config(tls)
            .http_status_as_error(false)
            .timeout_connect(Some(options.connect_timeout))
            .timeout_recv_response(Some(options.read_timeout))
            .timeout_per_read(Some(options.read_timeout))
            .user_agent(concat!("smarter-update/", env!("CARGO_PKG_VERSION")))
            .build();
        Self {
            dir: dir.into(),
            agent: config.into(),
            bucket: (options.bytes_per_second > 0)
                .then(|| TokenBucket::new(options.bytes_per_second)),
            counters,
        }
    }

    /// The counters, to share with the metrics.
    pub fn counters(&self) -> Arc<Counters> {
        Arc::clone(&self.counters)
    }

    /// The directory holding partial and complete bundles.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Where the verified bundle for `target` is kept.
    pub fn bundle_path(&self, target: &Target) -> PathBuf {
        self.dir.join(format!("{}.raucb", target.sha256))
    }

    /// Fetch `target`, resuming a partial download of the same bundle, and
    /// verify its size and SHA-256. `progress` is called after every chunk.
    pub fn fetch(
        &mut self,
        target: &Target,
        progress: &mut dyn FnMut(Progress),
    ) -> Result<Complete, DownloadError> {
        let result = self.fetch_inner(target, progress);
        match &result {
            Ok(c) => {
                self.counters.completed.fetch_add(1, Ordering::Relaxed);
                tracing::info!(url = %target.url, path = %c.path.display(), transferred = c.transferred,
                    resumed_from = c.resumed_from, "bundle downloaded and verified");
            }
            Err(e) => {
                self.counters.failed.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(url = %target.url, error = %e, "download failed");
            }
        }
        result
    }

    fn fetch_inner(
        &mut self,
        target: &Target,
        progress: &mut dyn FnMut(Progress),
    ) -> Result<Complete, DownloadError> {
        fs::create_dir_all(&self.dir).map_err(|source| self.io("create", &self.dir, source))?;
        let done = self.bundle_path(target);
        if done.exists() {
            // Verified when it was renamed; verified again before use, since
            // the data partition may have been damaged since.
            match self.verify(target, &done) {
                Ok(()) => {
                    tracing::info!(path = %done.display(), "bundle already downloaded");
                    return Ok(Complete {
                        path: done,
                        transferred: 0,
                        resumed_from: target.size,
                    });
                }
                Err(e) => tracing::warn!(error = %e, "stored bundle is damaged; downloading again"),
            }
        }
        self.remove_other_bundles(&done);

        let part = self.dir.join(PART_FILE);
        let mut state = self.load_state(target);
        let mut have = match (&state, fs::metadata(&part)) {
            (Some(_), Ok(m)) if m.len() <= target.size => m.len(),
            _ => {
                self.discard(&part)?;
                state = None;
                0
            }
        };
        let resumed_from = have;
        let mut transferred = 0;
        if have > 0 {
            tracing::info!(url = %target.url, have, size = target.size, "resuming download");
        } else {
            tracing::info!(url = %target.url, size = target.size, "starting download");
        }

        // A server that answers a range with 200 restarts us from 0; one that
        // then cuts the connection is an ordinary interruption. The loop only
        // repeats for a 416 (partial file not a prefix: start over once).
        let mut attempts = 0;
        while have < target.size {
            attempts += 1;
            self.check_space(target.size - have, &part)?;
            let mut request = self.agent.get(&target.url);
            if have > 0 {
                request = request.header("Range", format!("bytes={have}-"));
                if let Some(validator) = state
                    .as_ref()
                    .and_then(|s| s.etag.as_ref().or(s.last_modified.as_ref()))
                {
                    request = request.header("If-Range", validator.as_str());
                }
            }
            let mut response = request.call().map_err(|source| DownloadError::Request {
                url: target.url.clone(),
                source: Box::new(source),
            })?;
            let status = response.status().as_u16();
            let header = |name: &str| {
                response
                    .headers()
                    .get(name)
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_string)
            };
            let etag = header("etag");
            let last_modified = header("last-modified");
            let length = header("content-length").and_then(|v| v.trim().parse::<u64>().ok());
            match status {
                206 if have > 0 => {
                    let range = header("content-range").unwrap_or_default();
                    match parse_content_range(&range) {
                        Some((start, total)) if start == have => {
                            if total.is_some_and(|t| t != target.size) {
                                self.discard(&part)?;
                                return Err(DownloadError::WrongSize {
                                    url: target.url.clone(),
                                    expected: target.size,
                                    actual: total.unwrap_or_default(),
                                });
                            }
                        }
                        _ => {
                            self.discard(&part)?;
                            return Err(DownloadError::WrongRange {
                                url: target.url.clone(),
                                asked: have,
                                content_range: range,
                            });
                        }
                    }
                }
                200 => {
                    if have > 0 {
                        tracing::info!(url = %target.url, have,
                            "server sent the whole file instead of the range: restarting from byte 0");
                        have = 0;
                    }
                    if let Some(len) = length.filter(|l| *l != target.size) {
                        self.discard(&part)?;
                        return Err(DownloadError::WrongSize {
                            url: target.url.clone(),
                            expected: target.size,
                            actual: len,
                        });
                    }
                }
                416 if attempts == 1 => {
                    tracing::warn!(url = %target.url, have,
                        "server refused the range (416): partial file is not a prefix of its file; starting over");
                    self.discard(&part)?;
                    state = None;
                    have = 0;
                    continue;
                }
                _ => {
                    return Err(DownloadError::Status {
                        url: target.url.clone(),
                        status,
                    });
                }
            }
            let new_state = State {
                url: target.url.clone(),
                size: target.size,
                sha256: target.sha256,
                etag,
                last_modified,
            };
            let mut file = self.open_part(&part, have)?;
            if state.as_ref() != Some(&new_state) {
                self.save_state(&new_state)?;
                state = Some(new_state);
            }
            let mut reader = response.body_mut().as_reader();
            let got = self.copy(target, &mut reader, &mut file, &part, have, progress)?;
            transferred += got.saturating_sub(have);
            have = got;
            if have < target.size {
                // The body ended early without an error from the reader.
                return Err(DownloadError::Interrupted {
                    url: target.url.clone(),
                    have,
                    size: target.size,
                    source: io::Error::new(
                        ErrorKind::UnexpectedEof,
                        "the server closed the body early",
                    ),
                });
            }
        }

        match self.verify(target, &part) {
            Ok(()) => {}
            Err(e @ DownloadError::WrongHash { .. }) => {
                self.discard(&part)?;
                return Err(e);
            }
            Err(e) => return Err(e),
        }
        fs::rename(&part, &done).map_err(|source| self.io("rename into", &done, source))?;
        self.remove_state();
        sync_dir(&self.dir);
        Ok(Complete {
            path: done,
            transferred,
            resumed_from,
        })
    }

    /// Copy the body into `file`, which holds `have` bytes; returns the
    /// bytes on disk afterwards.
    fn copy(
        &mut self,
        target: &Target,
        reader: &mut dyn Read,
        file: &mut File,
        part: &Path,
        mut have: u64,
        progress: &mut dyn FnMut(Progress),
    ) -> Result<u64, DownloadError> {
        let mut buf = vec![0u8; CHUNK];
        let mut unsynced = 0u64;
        loop {
            let want = match &self.bucket {
                Some(b) => buf.len().min(b.burst()),
                None => buf.len(),
            };
            let n = match reader.read(&mut buf[..want]) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(source) => {
                    let _ = file.sync_data();
                    return Err(DownloadError::Interrupted {
                        url: target.url.clone(),
                        have,
                        size: target.size,
                        source,
                    });
                }
            };
            self.counters
                .bytes_transferred
                .fetch_add(n as u64, Ordering::Relaxed);
            if have + n as u64 > target.size {
                self.discard(part)?;
                return Err(DownloadError::WrongSize {
                    url: target.url.clone(),
                    expected: target.size,
                    actual: have + n as u64,
                });
            }
            if let Err(source) = file.write_all(&buf[..n]) {
                return Err(self.write_failed(part, target.size - have, source));
            }
            have += n as u64;
            unsynced += n as u64;
            // Keep what arrived across a power cut, without syncing every chunk.
            if unsynced >= 8 << 20 {
                file.sync_data()
                    .map_err(|source| self.write_failed(part, target.size - have, source))?;
                unsynced = 0;
            }
            progress(Progress {
                have,
                size: target.size,
            });
            if let Some(bucket) = &mut self.bucket {
                bucket.take(n as u64);
            }
        }
        file.sync_data()
            .map_err(|source| self.write_failed(part, target.size - have, source))?;
        Ok(have)
    }

    fn write_failed(&self, part: &Path, needed: u64, source: io::Error) -> DownloadError {
        if source.kind() == ErrorKind::StorageFull || source.kind() == ErrorKind::QuotaExceeded {
            // Give the space back to the running system at once.
            let removed = fs::remove_file(part).is_ok();
            self.remove_state();
            tracing::error!(path = %part.display(), "data partition full while downloading; partial download removed");
            return DownloadError::DiskFull {
                dir: self.dir.clone(),
                needed,
                available: free_bytes(&self.dir).unwrap_or(0),
                removed,
            };
        }
        self.io("write", part, source)
    }

    fn check_space(&self, needed: u64, part: &Path) -> Result<(), DownloadError> {
        let Some(available) = free_bytes(&self.dir) else {
            return Ok(());
        };
        if available >= needed {
            return Ok(());
        }
        let removed = if part.exists() {
            self.discard(part)?;
            true
        } else {
            false
        };
        Err(DownloadError::DiskFull {
            dir: self.dir.clone(),
            needed,
            available,
            removed,
        })
    }

    fn open_part(&self, part: &Path, have: u64) -> Result<File, DownloadError> {
        let file = OpenOptions::new()
            .create(true)
            .write(true)
            .truncate(false)
            .open(part)
            .map_err(|source| self.io("open", part, source))?;
        file.set_len(have)
            .map_err(|source| self.io("truncate", part, source))?;
        let mut file = file;
        io::Seek::seek(&mut file, io::SeekFrom::Start(have))
            .map_err(|source| self.io("seek in", part, source))?;
        Ok(file)
    }

    /// Read `path` back and compare its size and SHA-256 with `target`.
    fn verify(&self, target: &Target, path: &Path) -> Result<(), DownloadError> {
        let mut file = File::open(path).map_err(|source| self.io("open", path, source))?;
        let mut hasher = Sha256::new();
        let mut buf = vec![0u8; CHUNK];
        let mut len = 0u64;
        loop {
            let n = match file.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(source) => return Err(self.io("read", path, source)),
            };
            hasher.update(&buf[..n]);
            len += n as u64;
        }
        if len != target.size {
            return Err(DownloadError::WrongSize {
                url: target.url.clone(),
                expected: target.size,
                actual: len,
            });
        }
        let mut actual = [0u8; 32];
        actual.copy_from_slice(&hasher.finalize());
        let actual = Sha256Digest(actual);
        if actual != target.sha256 {
            tracing::error!(url = %target.url, expected = %target.sha256, %actual,
                "downloaded bundle has the wrong SHA-256; removing it");
            return Err(DownloadError::WrongHash {
                url: target.url.clone(),
                expected: target.sha256,
                actual,
            });
        }
        Ok(())
    }

    fn load_state(&self, target: &Target) -> Option<State> {
        let path = self.dir.join(STATE_FILE);
        let text = fs::read_to_string(&path).ok()?;
        match serde_json::from_str::<State>(&text) {
            Ok(s) if s.matches(target) => Some(s),
            Ok(s) => {
                tracing::info!(old_url = %s.url, url = %target.url,
                    "partial download is of another bundle; discarding it");
                None
            }
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "unreadable download state; starting over");
                None
            }
        }
    }

    fn save_state(&self, state: &State) -> Result<(), DownloadError> {
        let path = self.dir.join(STATE_FILE);
        let tmp = self.dir.join(format!("{STATE_FILE}.tmp"));
        let text = serde_json::to_string_pretty(state).unwrap_or_default();
        let write = || -> io::Result<()> {
            let mut f = File::create(&tmp)?;
            f.write_all(text.as_bytes())?;
            f.sync_all()?;
            fs::rename(&tmp, &path)
        };
        write().map_err(|source| self.write_failed(&tmp, state.size, source))
    }

    fn remove_state(&self) {
        let _ = fs::remove_file(self.dir.join(STATE_FILE));
    }

    /// Remove the partial file and its state.
    fn discard(&self, part: &Path) -> Result<(), DownloadError> {
        self.remove_state();
        match fs::remove_file(part) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(()),
            Err(source) => Err(self.io("remove", part, source)),
        }
    }

    /// Only one bundle is kept: verified bundles of other versions go.
    fn remove_other_bundles(&self, keep: &Path) {
        let Ok(entries) = fs::read_dir(&self.dir) else {
            return;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            if path.extension().is_some_and(|e| e == "raucb") && path != keep {
                tracing::info!(path = %path.display(), "removing a bundle that is no longer desired");
                let _ = fs::remove_file(&path);
            }
        }
    }

    fn io(&self, op: &'static str, path: &Path, source: io::Error) -> DownloadError {
        DownloadError::Io {
            op,
            path: path.to_path_buf(),
            source,
        }
    }
}

/// Bytes an unprivileged user may still write on the file system of `dir`.
pub fn free_bytes(dir: &Path) -> Option<u64> {
    let st = nix::sys::statvfs::statvfs(dir).ok()?;
    #[allow(
        clippy::useless_conversion,
        reason = "the field types differ between targets"
    )]
    let (avail, frsize) = (
        u64::from(st.blocks_available()),
        u64::from(st.fragment_size()),
    );
    Some(avail.saturating_mul(frsize))
}

fn sync_dir(dir: &Path) {
    if let Ok(d) = File::open(dir) {
        let _ = d.sync_all();
    }
}

/// `bytes START-END/TOTAL` (TOTAL may be `*`) -> (START, TOTAL).
fn parse_content_range(value: &str) -> Option<(u64, Option<u64>)> {
    let rest = value.trim().strip_prefix("bytes")?.trim_start();
    let (range, total) = rest.split_once('/')?;
    let (start, end) = range.split_once('-')?;
    let start: u64 = start.trim().parse().ok()?;
    let end: u64 = end.trim().parse().ok()?;
    if end < start {
        return None;
    }
    let total = match total.trim() {
        "*" => None,
        t => Some(t.parse().ok()?),
    };
    Some((start, total))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_range() {
        assert_eq!(
            parse_content_range("bytes 100-199/200"),
            Some((100, Some(200)))
        );
        assert_eq!(parse_content_range("bytes 5-9/*"), Some((5, None)));
        assert_eq!(parse_content_range("bytes 9-5/10"), None);
        assert_eq!(parse_content_range("items 0-1/2"), None);
        assert_eq!(parse_content_range(""), None);
    }
}
