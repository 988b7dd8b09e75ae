//! The update agent: from the desired bundle to a gateway that booted it.
//!
//! ```text
//! idle ─▶ downloading ─▶ installing ─▶ waiting-for-reboot-window ─▶ rebooting
//!   ▲                                                                  │ (new boot)
//!   └──────────── ready ◀── verifying (booted version, marked good) ◀──┘
//!                          └─▶ rolled-back: not ready, no retry until the desired bundle changes
//! ```
//!
//! Every round the agent reads the desired bundle, asks RAUC which slot is
//! booted and what it carries, loads its own record from the data partition,
//! and [`decide`]s (a pure function, unit-tested) what to do next. The record
//! (`<data_dir>/agent.json`) remembers, for one desired bundle, that it was
//! installed and that a reboot was asked for in which boot (the kernel's
//! boot id), so that after the reboot, or after the pod restarted, the agent
//! knows whether the gateway came back on the new slot or was rolled back.
//! A rollback, a bundle RAUC refuses, and a download of the wrong size or
//! hash are recorded as blocked for that bundle: reported, and not tried
//! again until the desired bundle (version or hash) changes. So the agent
//! asks for at most one reboot per desired bundle: no reboot loop.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::agent_config::{AgentConfig, Window};
use crate::desired::{Desired, Sha256Digest};
use crate::download::{self, DownloadError, Downloader};
use crate::rauc::Rauc;

/// Name of the agent's record in `data_dir`.
pub const RECORD_FILE: &str = "agent.json";

/// Where the agent is in the update of one gateway.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Phase {
    /// Starting, or nothing to do yet.
    Idle,
    /// Fetching the bundle.
    Downloading,
    /// RAUC installs it into the other slot.
    Installing,
    /// Installed; the reboot window is closed.
    WaitingForRebootWindow,
    /// The reboot was asked for.
    Rebooting,
    /// The desired version is booted; waiting for the health gate to mark it good.
    Verifying,
    /// The desired version is booted and marked good.
    Ready,
    /// The download window is closed.
    WaitingForDownloadWindow,
    /// The gateway came back on the old slot.
    RolledBack,
    /// This bundle will not be tried again (refused, wrong hash...).
    Blocked,
    /// A step failed; it is retried.
    Retrying,
}

impl Phase {
    /// The name in logs and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Idle => "idle",
            Self::Downloading => "downloading",
            Self::Installing => "installing",
            Self::WaitingForRebootWindow => "waiting-for-reboot-window",
            Self::Rebooting => "rebooting",
            Self::Verifying => "verifying",
            Self::Ready => "ready",
            Self::WaitingForDownloadWindow => "waiting-for-download-window",
            Self::RolledBack => "rolled-back",
            Self::Blocked => "blocked",
            Self::Retrying => "retrying",
        }
    }

    /// Every phase, for the metrics.
    pub const ALL: [Phase; 11] = [
        Self::Idle,
        Self::Downloading,
        Self::Installing,
        Self::WaitingForRebootWindow,
        Self::Rebooting,
        Self::Verifying,
        Self::Ready,
        Self::WaitingForDownloadWindow,
        Self::RolledBack,
        Self::Blocked,
        Self::Retrying,
    ];
}

/// How far an installed bundle got.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Stage {
    /// RAUC installed it into the other slot; no reboot asked for yet.
    Installed,
    /// A reboot was asked for during the boot with this id.
    RebootRequested {
        /// The kernel's boot id when the reboot was asked for.
        boot_id: String,
    },
}

/// What the agent keeps on the data partition about one desired bundle.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Record {
    /// The bundle's version.
    pub version: String,
    /// The bundle's SHA-256.
    pub sha256: Sha256Digest,
    /// The slot that was booted when it was installed (RAUC's slot name).
    pub from_slot: String,
    /// The version that slot carried.
    #[serde(default)]
    pub from_version: Option<String>,
    /// How far it got; `None` before it was installed.
    #[serde(default)]
    pub stage: Option<Stage>,
    /// Why this bundle is not tried again, if it is not.
    #[serde(default)]
    pub blocked: Option<String>,
}

impl Record {
    /// Whether the record is about `desired`.
    pub fn is_for(&self, desired: &Desired) -> bool {
        self.version == desired.version && self.sha256 == desired.sha256
    }
}

/// The booted slot as far as the agent cares.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Booted {
    /// RAUC's slot name, e.g. `rootfs.1`.
    pub slot: String,
    /// The installed bundle's version.
    pub version: Option<String>,
    /// RAUC says good and (when configured) the health gate marked it good.
    pub good: bool,
}

/// What to do next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Next {
    /// The desired version runs and is marked good.
    Ready,
    /// The desired version runs; the health gate has not marked it good yet.
    AwaitHealthGate,
    /// Blocked for this bundle, with the reason.
    Blocked(String),
    /// The reboot into the new slot came back on the old one: record it.
    RolledBack(String),
    /// Fetch (and then install) the bundle.
    Download,
    /// Wait this many minutes for the download window.
    AwaitDownloadWindow(u16),
    /// Reboot now.
    Reboot,
    /// Wait this many minutes for the reboot window.
    AwaitRebootWindow(u16),
    /// A reboot was asked for in this boot; wait for it.
    AwaitReboot,
}

/// The agent's decision; no I/O.
pub fn decide(
    desired: &Desired,
    booted: &Booted,
    record: Option<&Record>,
    boot_id: &str,
    minute_of_day: u16,
    download_window: Window,
    reboot_window: Window,
) -> Next {
    if booted.version.as_deref() == Some(desired.version.as_str()) {
        return if booted.good {
            Next::Ready
        } else {
            Next::AwaitHealthGate
        };
    }
    if let Some(r) = record.filter(|r| r.is_for(desired)) {
        if let Some(reason) = &r.blocked {
            return Next::Blocked(reason.clone());
        }
        match &r.stage {
            Some(Stage::Installed) => {
                return match reboot_window.minutes_until_open(minute_of_day) {
                    0 => Next::Reboot,
                    m => Next::AwaitRebootWindow(m),
                };
            }
            Some(Stage::RebootRequested { boot_id: asked_in }) if asked_in == boot_id => {
                return Next::AwaitReboot;
            }
            Some(Stage::RebootRequested { .. }) => {
                return Next::RolledBack(format!(
                    "rolled back: after installing {} and rebooting, slot {} is booted with version {}; not retrying until the desired bundle changes",
                    desired.version,
                    booted.slot,
                    booted.version.as_deref().unwrap_or("unknown"),
                ));
            }
            None => {}
        }
    }
    match download_window.minutes_until_open(minute_of_day) {
        0 => Next::Download,
        m => Next::AwaitDownloadWindow(m),
    }
}

/// What `/readyz` and `/metrics` show; updated by the agent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Status {
    /// Where the agent is.
    pub phase: Phase,
    /// Ready: the desired version runs, marked good.
    pub ready: bool,
    /// One line saying why (not) ready.
    pub reason: String,
    /// The desired version.
    pub desired_version: Option<String>,
    /// The booted slot.
    pub booted_slot: Option<String>,
    /// The booted slot's version.
    pub booted_version: Option<String>,
    /// The last error, until a round succeeds.
    pub last_error: Option<String>,
    /// Bytes of the bundle on disk / its size, while downloading.
    pub download: Option<(u64, u64)>,
    /// RAUC's progress while installing.
    pub install_percent: Option<i32>,
}

impl Default for Status {
    fn default() -> Self {
        Self {
            phase: Phase::Idle,
            ready: false,
            reason: "starting".into(),
            desired_version: None,
            booted_slot: None,
            booted_version: None,
            last_error: None,
            download: None,
            install_percent: None,
        }
    }
}

/// The status shared between the agent and its HTTP endpoints.
pub type SharedStatus = Arc<Mutex<Status>>;

fn update(status: &SharedStatus, f: impl FnOnce(&mut Status)) {
    let mut s = status.lock().unwrap_or_else(PoisonError::into_inner);
    f(&mut s);
}

/// The agent's record file.
pub fn record_path(data_dir: &Path) -> PathBuf {
    data_dir.join(RECORD_FILE)
}

/// Read the record; missing or unreadable = none (logged).
pub fn load_record(data_dir: &Path) -> Option<Record> {
    let path = record_path(data_dir);
    let text = fs::read_to_string(&path).ok()?;
    match serde_json::from_str(&text) {
        Ok(r) => Some(r),
        Err(e) => {
            tracing::warn!(path = %path.display(), error = %e, "unreadable agent record; ignoring it");
            None
        }
    }
}

/// Write the record atomically.
pub fn save_record(data_dir: &Path, record: &Record) -> std::io::Result<()> {
    fs::create_dir_all(data_dir)?;
    let path = record_path(data_dir);
    let tmp = data_dir.join(format!(".{RECORD_FILE}.tmp"));
    let text = serde_json::to_string_pretty(record).map_err(std::io::Error::other)?;
    let mut f = fs::File::create(&tmp)?;
    f.write_all(text.as_bytes())?;
    f.sync_all()?;
    fs::rename(&tmp, &path)?;
    if let Ok(d) = fs::File::open(data_dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

/// Flush every file system write on the file system that holds `dir`
/// (syncfs(2)): RAUC's files as well as ours, since both live on /data.
pub fn sync_filesystem(dir: &Path) -> std::io::Result<()> {
    let d = fs::File::open(dir)
        .map_err(|e| std::io::Error::new(e.kind(), format!("{}: {e}", dir.display())))?;
    nix::unistd::syncfs(&d)
        .map_err(|e| std::io::Error::other(format!("syncfs {}: {e}", dir.display())))
}

/// Minutes after midnight UTC, now.
pub fn minute_of_day_utc() -> u16 {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    ((secs % 86_400) / 60) as u16
}

/// The downloader's options from the agent's config. A CA file that no
/// longer loads (it was checked with the config) is logged, and HTTPS then
/// fails verification rather than falling back to other roots.
fn download_options(config: &AgentConfig) -> download::Options {
    let ca_certs = if config.ca_file.as_os_str().is_empty() {
        None
    } else {
        match download::CaCerts::load(&config.ca_file) {
            Ok(certs) => Some(certs),
            Err(e) => {
                tracing::error!(error = %e, "cannot load ca_file; HTTPS downloads will fail");
                Some(download::CaCerts::none())
            }
        }
    };
    download::Options {
        connect_timeout: Duration::from_secs(config.connect_timeout_s),
        read_timeout: Duration::from_secs(config.read_timeout_s),
        bytes_per_second: config.bandwidth_bytes_per_s,
        ca_certs,
    }
}

/// What one round ended with: how long to wait before the next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pause {
    /// The usual poll interval.
    Poll,
    /// After a failure: the retry interval.
    Retry,
    /// A window opens in this many minutes (capped by the poll interval).
    Minutes(u16),
    /// Go on at once (a step finished and the next may follow).
    None,
}

/// The agent's parts.
#[derive(Debug)]
pub struct Agent {
    config: AgentConfig,
    status: SharedStatus,
    downloader: Arc<Mutex<Downloader>>,
    bus: zbus::Connection,
}

impl Agent {
    /// An agent with `config`, talking to RAUC and logind on `bus`,
    /// counting downloads in `counters`.
    pub fn with_counters(
        config: AgentConfig,
        bus: zbus::Connection,
        status: SharedStatus,
        counters: Arc<download::Counters>,
    ) -> Self {
        let downloader =
            Downloader::with_counters(config.data_dir.clone(), download_options(&config), counters);
        Self {
            config,
            status,
            downloader: Arc::new(Mutex::new(downloader)),
            bus,
        }
    }

    /// The download counters, for the metrics.
    pub fn counters(&self) -> Arc<download::Counters> {
        self.downloader
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .counters()
    }

    /// Use a new config (SIGHUP); the download settings apply from the next
    /// download on.
    pub fn reconfigure(&mut self, config: AgentConfig) {
        let counters = self.counters();
        let downloader =
            Downloader::with_counters(config.data_dir.clone(), download_options(&config), counters);
        self.downloader = Arc::new(Mutex::new(downloader));
        self.config = config;
    }

    /// How long to wait for `pause`.
    pub fn pause_duration(&self, pause: Pause) -> Duration {
        let poll = Duration::from_secs(self.config.poll_interval_s);
        match pause {
            Pause::Poll => poll,
            Pause::Retry => Duration::from_secs(self.config.retry_interval_s),
            Pause::Minutes(m) => poll.min(Duration::from_secs(u64::from(m) * 60)),
            Pause::None => Duration::ZERO,
        }
    }

    fn fail(&self, phase: Phase, error: String) -> Pause {
        tracing::error!(phase = phase.as_str(), error = %error, "update step failed; will retry");
        update(&self.status, |s| {
            s.phase = Phase::Retrying;
            s.ready = false;
            s.reason = format!("{}: {error}", phase.as_str());
            s.last_error = Some(error);
        });
        Pause::Retry
    }

    fn block(&self, record: Record, phase: Phase, reason: String) -> Pause {
        tracing::error!(version = %record.version, reason = %reason, "bundle blocked until the desired bundle changes");
        if let Err(e) = save_record(&self.config.data_dir, &record) {
            tracing::error!(error = %e, "cannot save the agent record");
        }
        update(&self.status, |s| {
            s.phase = phase;
            s.ready = false;
            s.reason = reason.clone();
            s.last_error = Some(reason);
        });
        Pause::Poll
    }

    fn set(&self, phase: Phase, ready: bool, reason: String) {
        update(&self.status, |s| {
            if s.phase != phase {
                tracing::info!(phase = phase.as_str(), ready, reason = %reason, "update phase");
            }
            s.phase = phase;
            s.ready = ready;
            s.reason = reason;
            if ready {
                s.last_error = None;
            }
        });
    }

    fn boot_id(&self) -> String {
        fs::read_to_string(&self.config.boot_id_file)
            .map(|s| s.trim().to_string())
            .unwrap_or_default()
    }

    fn gate_marked(&self, slot: &crate::rauc::Slot) -> bool {
        if self.config.health_gate_state_dir.as_os_str().is_empty() {
            return true;
        }
        match crate::slot::read_state(&self.config.health_gate_state_dir) {
            Ok(state) => state.last_good_slot.is_some_and(|good| {
                Some(good.as_str()) == slot.bootname.as_deref() || good == slot.name
            }),
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the health gate's state");
                false
            }
        }
    }

    /// One round: look, decide, act.
    pub async fn round(&mut self) -> Pause {
        let desired = match Desired::load(&self.config.desired_file) {
            Ok(d) => d,
            Err(e) => {
                let line = smarter_common::cli::error_line(&e);
                update(&self.status, |s| s.desired_version = None);
                return self.fail(Phase::Idle, format!("desired bundle: {line}"));
            }
        };
        update(&self.status, |s| {
            s.desired_version = Some(desired.version.clone())
        });
        let rauc = match Rauc::new(&self.bus).await {
            Ok(r) => r,
            Err(e) => return self.fail(Phase::Idle, e.to_string()),
        };
        let slot = match rauc.booted().await {
            Ok(s) => s,
            Err(e) => return self.fail(Phase::Idle, e.to_string()),
        };
        let booted = Booted {
            slot: slot.name.clone(),
            version: slot.bundle_version.clone(),
            good: slot.is_good() && self.gate_marked(&slot),
        };
        update(&self.status, |s| {
            s.booted_slot = Some(slot.name.clone());
            s.booted_version = slot.bundle_version.clone();
        });
        let record = load_record(&self.config.data_dir);
        let boot_id = self.boot_id();
        let next = decide(
            &desired,
            &booted,
            record.as_ref(),
            &boot_id,
            minute_of_day_utc(),
            self.config.download_window,
            self.config.reboot_window,
        );
        let data = self.config.data_dir.clone();
        match next {
            Next::Ready => {
                if record.is_some() {
                    // Done: the record and the bundle are no longer needed.
                    let _ = fs::remove_file(record_path(&data));
                    self.remove_bundles();
                }
                self.set(
                    Phase::Ready,
                    true,
                    format!(
                        "slot {} runs the desired version {}, marked good",
                        booted.slot, desired.version
                    ),
                );
                Pause::Poll
            }
            Next::AwaitHealthGate => {
                self.set(
                    Phase::Verifying,
                    false,
                    format!(
                        "slot {} runs {}; waiting for the health gate to mark it good",
                        booted.slot, desired.version
                    ),
                );
                Pause::Poll
            }
            Next::Blocked(reason) => {
                let phase = if reason.starts_with("rolled back") {
                    Phase::RolledBack
                } else {
                    Phase::Blocked
                };
                update(&self.status, |s| s.last_error = Some(reason.clone()));
                self.set(phase, false, reason);
                Pause::Poll
            }
            Next::RolledBack(reason) => {
                let Some(mut r) = record else {
                    return Pause::Poll;
                };
                r.blocked = Some(reason.clone());
                self.remove_bundles();
                self.block(r, Phase::RolledBack, reason)
            }
            Next::AwaitDownloadWindow(m) => {
                self.set(
                    Phase::WaitingForDownloadWindow,
                    false,
                    format!(
                        "{} is desired; the download window {} opens in {m} min",
                        desired.version, self.config.download_window
                    ),
                );
                Pause::Minutes(m)
            }
            Next::AwaitRebootWindow(m) => {
                self.set(
                    Phase::WaitingForRebootWindow,
                    false,
                    format!(
                        "{} is installed; the reboot window {} opens in {m} min",
                        desired.version, self.config.reboot_window
                    ),
                );
                Pause::Minutes(m)
            }
            Next::AwaitReboot => {
                self.set(
                    Phase::Rebooting,
                    false,
                    format!("{} is installed; the reboot was asked for", desired.version),
                );
                Pause::Poll
            }
            Next::Reboot => {
                let Some(mut r) = record else {
                    return Pause::Poll;
                };
                r.stage = Some(Stage::RebootRequested {
                    boot_id: boot_id.clone(),
                });
                // Recorded first: whatever happens next, the next boot is
                // judged against it, and no second reboot is asked for.
                if let Err(e) = save_record(&data, &r) {
                    return self.fail(
                        Phase::Rebooting,
                        format!("cannot save the agent record: {e}"),
                    );
                }
                self.set(
                    Phase::Rebooting,
                    false,
                    format!("rebooting into {}", desired.version),
                );
                match crate::logind::reboot(&self.bus).await {
                    Ok(()) => Pause::Poll,
                    Err(e) => {
                        r.stage = Some(Stage::Installed);
                        let _ = save_record(&data, &r);
                        self.fail(Phase::Rebooting, e.to_string())
                    }
                }
            }
            Next::Download => self.download_and_install(&desired, &slot, &rauc).await,
        }
    }

    async fn download_and_install(
        &mut self,
        desired: &Desired,
        slot: &crate::rauc::Slot,
        rauc: &Rauc,
    ) -> Pause {
        let mut record = Record {
            version: desired.version.clone(),
            sha256: desired.sha256,
            from_slot: slot.name.clone(),
            from_version: slot.bundle_version.clone(),
            stage: None,
            blocked: None,
        };
        let source = if self.config.streaming {
            // RAUC fetches (only what it needs of) the bundle and checks its
            // signature and verity tree; nothing is stored on the data partition.
            self.set(
                Phase::Installing,
                false,
                format!("RAUC streams {} from {}", desired.version, desired.url),
            );
            desired.url.clone()
        } else {
            match self.download(desired, &mut record).await {
                Ok(bundle) => bundle.to_string_lossy().into_owned(),
                Err(pause) => return pause,
            }
        };
        let status = Arc::clone(&self.status);
        let timeout = Duration::from_secs(self.config.install_timeout_s);
        let result = rauc
            .install(&source, timeout, &mut |p| {
                update(&status, |s| s.install_percent = Some(p.percent));
            })
            .await;
        update(&self.status, |s| s.install_percent = None);
        match result {
            Ok(()) => {
                // RAUC writes the new slot's status and its block-hash index
                // (what the next adaptive update matches against) into its data
                // directory on /data without syncing new files. A power cut
                // between here and the reboot lost the index on the emulated
                // gateway, and the next adaptive update then found nothing in the
                // booted slot and fetched the whole image. One syncfs of the data
                // file system, which holds our data_dir too, makes them durable.
                if let Err(e) = sync_filesystem(&self.config.data_dir) {
                    tracing::warn!(error = %e, "could not sync the data file system after the install");
                }
                record.stage = Some(Stage::Installed);
                if let Err(e) = save_record(&self.config.data_dir, &record) {
                    return self.fail(
                        Phase::Installing,
                        format!("cannot save the agent record: {e}"),
                    );
                }
                tracing::info!(version = %desired.version, "installed; the next step is the reboot");
                Pause::None
            }
            // Streaming: RAUC's failure may be the link dropping mid-stream,
            // which the next try mends; retried after retry_interval_s.
            Err(e @ crate::rauc::RaucError::InstallFailed { .. }) if self.config.streaming => {
                self.fail(Phase::Installing, e.to_string())
            }
            Err(e @ crate::rauc::RaucError::InstallFailed { .. }) => {
                record.blocked = Some(format!(
                    "{e}; not retrying until the desired bundle changes"
                ));
                let reason = record.blocked.clone().unwrap_or_default();
                self.remove_bundles();
                self.block(record, Phase::Blocked, reason)
            }
            Err(e) => self.fail(Phase::Installing, e.to_string()),
        }
    }

    /// Download and verify the desired bundle onto the data partition; the
    /// verified file's path, or the pause after a reported failure.
    async fn download(&mut self, desired: &Desired, record: &mut Record) -> Result<PathBuf, Pause> {
        self.set(
            Phase::Downloading,
            false,
            format!("downloading {} from {}", desired.version, desired.url),
        );
        let target = download::Target::from(desired);
        let downloader = Arc::clone(&self.downloader);
        let status = Arc::clone(&self.status);
        let fetched = tokio::task::spawn_blocking(move || {
            let mut d = downloader.lock().unwrap_or_else(PoisonError::into_inner);
            let mut last_log = 0u64;
            d.fetch(&target, &mut |p| {
                update(&status, |s| s.download = Some((p.have, p.size)));
                // A log line per tenth of the bundle.
                if p.have.saturating_sub(last_log) >= p.size / 10 || p.have == p.size {
                    last_log = p.have;
                    tracing::info!(have = p.have, size = p.size, "downloading");
                }
            })
        })
        .await;
        let bundle = match fetched {
            Ok(Ok(done)) => done.path,
            Ok(Err(e)) => {
                let line = smarter_common::cli::error_line(&e);
                return Err(
                    if matches!(
                        e,
                        DownloadError::WrongHash { .. }
                            | DownloadError::WrongSize { .. }
                            | DownloadError::WrongRange { .. }
                    ) {
                        record.blocked = Some(format!(
                            "download refused: {line}; not retrying until the desired bundle changes"
                        ));
                        let reason = record.blocked.clone().unwrap_or_default();
                        self.block(record.clone(), Phase::Blocked, reason)
                    } else {
                        self.fail(Phase::Downloading, line)
                    },
                );
            }
            Err(e) => return Err(self.fail(Phase::Downloading, format!("download task: {e}"))),
        };
        update(&self.status, |s| s.download = None);
        self.set(
            Phase::Installing,
            false,
            format!("RAUC installs {} ({})", desired.version, bundle.display()),
        );
        Ok(bundle)
    }

    fn remove_bundles(&self) {
        let Ok(entries) = fs::read_dir(&self.config.data_dir) else {
            return;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            if path.extension().is_some_and(|e| e == "raucb") {
                tracing::info!(path = %path.display(), "removing a bundle no longer needed");
                let _ = fs::remove_file(&path);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn desired(version: &str) -> Desired {
        Desired {
            version: version.into(),
            url: "http://h/b.raucb".into(),
            size: 10,
            sha256: Sha256Digest([7; 32]),
        }
    }

    fn booted(slot: &str, version: &str, good: bool) -> Booted {
        Booted {
            slot: slot.into(),
            version: Some(version.into()),
            good,
        }
    }

    fn record(version: &str, stage: Option<Stage>) -> Record {
        Record {
            version: version.into(),
            sha256: Sha256Digest([7; 32]),
            from_slot: "rootfs.0".into(),
            from_version: Some("1".into()),
            stage,
            blocked: None,
        }
    }

    fn any() -> Window {
        Window::ANY
    }

    fn window(s: &str) -> Window {
        Window::parse(s).unwrap_or(Window::ANY)
    }

    #[test]
    fn a_whole_update_then_ready() {
        let d = desired("2");
        let old = booted("rootfs.0", "1", true);
        assert_eq!(
            decide(&d, &old, None, "boot1", 600, any(), any()),
            Next::Download
        );
        let installed = record("2", Some(Stage::Installed));
        assert_eq!(
            decide(&d, &old, Some(&installed), "boot1", 600, any(), any()),
            Next::Reboot
        );
        let asked = record(
            "2",
            Some(Stage::RebootRequested {
                boot_id: "boot1".into(),
            }),
        );
        assert_eq!(
            decide(&d, &old, Some(&asked), "boot1", 600, any(), any()),
            Next::AwaitReboot
        );
        let new = booted("rootfs.1", "2", false);
        assert_eq!(
            decide(&d, &new, Some(&asked), "boot2", 600, any(), any()),
            Next::AwaitHealthGate
        );
        let new = booted("rootfs.1", "2", true);
        assert_eq!(
            decide(&d, &new, Some(&asked), "boot2", 600, any(), any()),
            Next::Ready
        );
        assert_eq!(
            decide(&d, &new, None, "boot3", 600, any(), any()),
            Next::Ready
        );
    }

    #[test]
    fn a_rollback_is_recorded_once_and_not_retried_until_the_desired_bundle_changes() {
        let d = desired("2");
        let old = booted("rootfs.0", "1", true);
        let asked = record(
            "2",
            Some(Stage::RebootRequested {
                boot_id: "boot1".into(),
            }),
        );
        let Next::RolledBack(reason) = decide(&d, &old, Some(&asked), "boot2", 0, any(), any())
        else {
            panic!("not a rollback");
        };
        assert!(
            reason.contains("rolled back") && reason.contains("rootfs.0"),
            "{reason}"
        );
        let mut blocked = asked.clone();
        blocked.blocked = Some(reason.clone());
        assert_eq!(
            decide(&d, &old, Some(&blocked), "boot3", 0, any(), any()),
            Next::Blocked(reason)
        );
        // A new version: a fresh start.
        assert_eq!(
            decide(
                &desired("3"),
                &old,
                Some(&blocked),
                "boot3",
                0,
                any(),
                any()
            ),
            Next::Download
        );
        // Same version, another hash (a rebuilt bundle): a fresh start too.
        let mut rebuilt = desired("2");
        rebuilt.sha256 = Sha256Digest([8; 32]);
        assert_eq!(
            decide(&rebuilt, &old, Some(&blocked), "boot3", 0, any(), any()),
            Next::Download
        );
    }

    #[test]
    fn windows_hold_downloads_and_reboots() {
        let d = desired("2");
        let old = booted("rootfs.0", "1", true);
        let night = window("22:00-04:00");
        assert_eq!(
            decide(&d, &old, None, "b", 21 * 60, night, any()),
            Next::AwaitDownloadWindow(60)
        );
        assert_eq!(
            decide(&d, &old, None, "b", 23 * 60, night, any()),
            Next::Download
        );
        let installed = record("2", Some(Stage::Installed));
        assert_eq!(
            decide(&d, &old, Some(&installed), "b", 12 * 60, any(), night),
            Next::AwaitRebootWindow(10 * 60)
        );
        assert_eq!(
            decide(&d, &old, Some(&installed), "b", 2 * 60, any(), night),
            Next::Reboot
        );
    }

    #[test]
    fn a_record_of_another_bundle_is_ignored() {
        let d = desired("3");
        let old = booted("rootfs.0", "1", true);
        let installed = record("2", Some(Stage::Installed));
        assert_eq!(
            decide(&d, &old, Some(&installed), "b", 0, any(), any()),
            Next::Download
        );
    }

    #[test]
    fn sync_filesystem_syncs_a_directory_and_names_a_missing_one() {
        let dir = std::env::temp_dir();
        assert!(sync_filesystem(&dir).is_ok());
        let missing = dir.join("smarter-update-no-such-dir-for-syncfs");
        let err = sync_filesystem(&missing)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(
            err.contains("smarter-update-no-such-dir-for-syncfs"),
            "{err}"
        );
    }

    #[test]
    fn records_round_trip() -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let r = record(
            "2",
            Some(Stage::RebootRequested {
                boot_id: "abc".into(),
            }),
        );
        save_record(dir.path(), &r)?;
        assert_eq!(load_record(dir.path()), Some(r));
        fs::write(record_path(dir.path()), "{")?;
        assert_eq!(load_record(dir.path()), None);
        Ok(())
    }
}
