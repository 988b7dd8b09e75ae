//! The update agent's settings, `/etc/smarter/update-agent.toml`. Every key is
//! optional; the sample with every default is
//! `services/update/config/update-agent.toml`.

use std::fmt;
use std::path::PathBuf;

use serde::Deserialize;
use smarter_common::config::{Invalid, Validate};

/// Default config path.
pub const DEFAULT_AGENT_CONFIG_PATH: &str = "/etc/smarter/update-agent.toml";

/// Default address of the agent's HTTP endpoints: loopback only, so that on
/// the host network (as the DaemonSet runs it) nothing listens on the
/// gateway's external interfaces; the kubelet probes 127.0.0.1.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:9479";

/// A daily time window in UTC, `"HH:MM-HH:MM"`; the end is exclusive and a
/// window may wrap past midnight (`"22:00-04:00"`). `""` means any time.
#[derive(Clone, Copy, PartialEq, Eq, Default)]
pub struct Window {
    /// `None` = any time; else (start, end) in minutes after midnight UTC.
    span: Option<(u16, u16)>,
}

impl Window {
    /// Any time of day.
    pub const ANY: Self = Self { span: None };

    /// Parse `"HH:MM-HH:MM"` or `""`.
    pub fn parse(text: &str) -> Result<Self, String> {
        let text = text.trim();
        if text.is_empty() {
            return Ok(Self::ANY);
        }
        let bad = || format!("{text:?} is not a window \"HH:MM-HH:MM\" (UTC) or \"\" (any time)");
        let (a, b) = text.split_once('-').ok_or_else(bad)?;
        let start = minutes(a).ok_or_else(bad)?;
        let end = minutes(b).ok_or_else(bad)?;
        if start == end {
            return Err(format!(
                "{text:?} is empty (start = end); write \"\" for any time"
            ));
        }
        Ok(Self {
            span: Some((start, end)),
        })
    }

    /// Whether `minute_of_day` (0..1440, UTC) falls inside the window.
    pub fn contains(&self, minute_of_day: u16) -> bool {
        match self.span {
            None => true,
            Some((start, end)) if start < end => (start..end).contains(&minute_of_day),
            Some((start, end)) => minute_of_day >= start || minute_of_day < end,
        }
    }

    /// Minutes from `minute_of_day` until the window opens (0 when inside).
    pub fn minutes_until_open(&self, minute_of_day: u16) -> u16 {
        match self.span {
            _ if self.contains(minute_of_day) => 0,
            None => 0,
            Some((start, _)) => (start + 1440 - minute_of_day) % 1440,
        }
    }
}

fn minutes(hhmm: &str) -> Option<u16> {
    let (h, m) = hhmm.trim().split_once(':')?;
    if h.is_empty() || h.len() > 2 || m.len() != 2 {
        return None;
    }
    let h: u16 = h.parse().ok()?;
    let m: u16 = m.parse().ok()?;
    match (h, m) {
        (24, 0) => Some(1440),
        (0..=23, 0..=59) => Some(h * 60 + m),
        _ => None,
    }
}

impl fmt::Display for Window {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.span {
            None => Ok(()),
            Some((s, e)) => write!(f, "{:02}:{:02}-{:02}:{:02}", s / 60, s % 60, e / 60, e % 60),
        }
    }
}

impl fmt::Debug for Window {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Window({:?})", self.to_string())
    }
}

impl<'de> Deserialize<'de> for Window {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        Self::parse(&text).map_err(serde::de::Error::custom)
    }
}

/// The update agent's settings.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AgentConfig {
    /// The desired-bundle file (the ConfigMap's mount).
    pub desired_file: PathBuf,
    /// Where bundles are downloaded: a directory on the data partition.
    pub data_dir: PathBuf,
    /// Download bandwidth limit in bytes per second; 0 = unlimited.
    pub bandwidth_bytes_per_s: u64,
    /// When downloads may run (UTC); `""` = any time.
    pub download_window: Window,
    /// When the gateway may reboot into a new slot (UTC); `""` = any time.
    pub reboot_window: Window,
    /// Seconds to wait for a TCP (and TLS) connection.
    pub connect_timeout_s: u64,
    /// Seconds without a byte from the server before a download counts as
    /// stalled (and is resumed later).
    pub read_timeout_s: u64,
    /// Seconds between two tries after a failed step.
    pub retry_interval_s: u64,
    /// Seconds between two looks at the desired bundle and the booted slot.
    pub poll_interval_s: u64,
    /// Seconds RAUC may take to install a bundle.
    pub install_timeout_s: u64,
    /// The health gate's state directory: the booted slot counts as good
    /// only when the gate recorded it as the slot it last marked good
    /// (besides RAUC's boot status). Empty = RAUC's boot status alone.
    pub health_gate_state_dir: PathBuf,
    /// The kernel's boot id (tells a reboot from a restart of the pod).
    pub boot_id_file: PathBuf,
    /// Address of `/healthz`, `/readyz` and `/metrics`.
    pub listen: String,
    /// PEM file of the CAs that HTTPS bundle servers are checked against,
    /// instead of the compiled-in Mozilla roots; empty = those roots.
    pub ca_file: PathBuf,
    /// Hand RAUC the bundle's URL instead of downloading it: RAUC streams a
    /// verity bundle over HTTP(S) and, for an adaptive bundle, fetches only
    /// the blocks the gateway does not already have. Needs a RAUC built with
    /// streaming; its `[streaming]` settings (TLS, proxy) then apply.
    pub streaming: bool,
}

impl Default for AgentConfig {
    fn default() -> Self {
        Self {
            desired_file: PathBuf::from(crate::desired::DEFAULT_DESIRED_PATH),
            data_dir: PathBuf::from("/data/smarter/update"),
            bandwidth_bytes_per_s: 0,
            download_window: Window::ANY,
            reboot_window: Window::ANY,
            connect_timeout_s: 30,
            read_timeout_s: 60,
            retry_interval_s: 300,
            poll_interval_s: 60,
            install_timeout_s: 3600,
            health_gate_state_dir: PathBuf::from("/data/smarter/health-gate"),
            boot_id_file: PathBuf::from("/proc/sys/kernel/random/boot_id"),
            listen: DEFAULT_LISTEN.into(),
            ca_file: PathBuf::new(),
            streaming: false,
        }
    }
}

impl Validate for AgentConfig {
    fn validate(&self) -> Result<(), Invalid> {
        for (field, path) in [
            ("desired_file", &self.desired_file),
            ("data_dir", &self.data_dir),
        ] {
            if !path.is_absolute() {
                return Err(Invalid::new(
                    field,
                    path.display(),
                    "must be an absolute path",
                ));
            }
        }
        if self.bandwidth_bytes_per_s != 0 && self.bandwidth_bytes_per_s < 1024 {
            return Err(Invalid::new(
                "bandwidth_bytes_per_s",
                self.bandwidth_bytes_per_s,
                "must be 0 (unlimited) or at least 1024 bytes per second",
            ));
        }
        for (field, value) in [
            ("connect_timeout_s", self.connect_timeout_s),
            ("read_timeout_s", self.read_timeout_s),
        ] {
            if !(1..=3600).contains(&value) {
                return Err(Invalid::new(field, value, "must be 1 to 3600 seconds"));
            }
        }
        if !(1..=86_400).contains(&self.retry_interval_s) {
            return Err(Invalid::new(
                "retry_interval_s",
                self.retry_interval_s,
                "must be 1 to 86400 seconds",
            ));
        }
        if !(1..=86_400).contains(&self.poll_interval_s) {
            return Err(Invalid::new(
                "poll_interval_s",
                self.poll_interval_s,
                "must be 1 to 86400 seconds",
            ));
        }
        if !(10..=86_400).contains(&self.install_timeout_s) {
            return Err(Invalid::new(
                "install_timeout_s",
                self.install_timeout_s,
                "must be 10 to 86400 seconds",
            ));
        }
        if self.listen.parse::<std::net::SocketAddr>().is_err() {
            return Err(Invalid::new(
                "listen",
                &self.listen,
                "must be an address and port such as 127.0.0.1:9479",
            ));
        }
        // With streaming RAUC fetches the bundle itself: settings of the agent's
        // own downloader would be silently ignored, so they are refused.
        if self.streaming && self.bandwidth_bytes_per_s != 0 {
            return Err(Invalid::new(
                "bandwidth_bytes_per_s",
                self.bandwidth_bytes_per_s,
                "must be 0 with streaming = true: RAUC fetches the bundle, the agent cannot limit it",
            ));
        }
        if self.streaming && !self.ca_file.as_os_str().is_empty() {
            return Err(Invalid::new(
                "ca_file",
                self.ca_file.display(),
                "must be \"\" with streaming = true: RAUC checks the server (its system.conf [streaming] tls-ca)",
            ));
        }
        if !self.ca_file.as_os_str().is_empty() {
            if !self.ca_file.is_absolute() {
                return Err(Invalid::new(
                    "ca_file",
                    self.ca_file.display(),
                    "must be an absolute path (or \"\" for the built-in roots)",
                ));
            }
            if let Err(e) = crate::download::CaCerts::load(&self.ca_file) {
                return Err(Invalid::new(
                    "ca_file",
                    self.ca_file.display(),
                    format!("must be a PEM file of CA certificates: {e}"),
                ));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    #[test]
    fn sample_file_is_the_defaults() {
        let text = include_str!("../config/update-agent.toml");
        let parsed: Result<AgentConfig, _> =
            smarter_common::config::parse(Path::new("update-agent.toml"), text);
        assert_eq!(parsed.ok(), Some(AgentConfig::default()));
    }

    fn error(text: &str) -> String {
        smarter_common::config::parse::<AgentConfig>(
            Path::new("/etc/smarter/update-agent.toml"),
            text,
        )
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default()
    }

    #[test]
    fn bad_values_name_file_field_and_value() {
        let e = error("reboot_window = \"25:00-03:00\"\n");
        assert!(e.contains("/etc/smarter/update-agent.toml"), "{e}");
        assert!(
            e.contains("reboot_window") && e.contains("25:00-03:00"),
            "{e}"
        );
        let e = error("bandwidth_bytes_per_s = 10\n");
        assert!(
            e.contains("field `bandwidth_bytes_per_s`: invalid value \"10\""),
            "{e}"
        );
        let e = error("data_dir = \"data\"\n");
        assert!(e.contains("field `data_dir`"), "{e}");
        let e = error("read_timeout_s = 0\n");
        assert!(e.contains("field `read_timeout_s`"), "{e}");
        let e = error("ca_file = \"/nonexistent/ca.pem\"\n");
        assert!(
            e.contains("field `ca_file`") && e.contains("/nonexistent/ca.pem"),
            "{e}"
        );
        let e = error("streaming = true\nbandwidth_bytes_per_s = 4096\n");
        assert!(
            e.contains("field `bandwidth_bytes_per_s`") && e.contains("streaming"),
            "{e}"
        );
        let e = error("streaming = true\nca_file = \"/etc/ca.pem\"\n");
        assert!(
            e.contains("field `ca_file`") && e.contains("streaming"),
            "{e}"
        );
        let e = error("bandwidth = 1\n");
        assert!(e.contains("bandwidth"), "{e}");
    }

    #[test]
    fn windows() {
        let w = |s: &str| Window::parse(s).unwrap_or(Window::ANY);
        assert!(w("").contains(0) && w("").contains(1439));
        let night = w("22:00-04:00");
        assert_eq!(night.to_string(), "22:00-04:00");
        assert!(night.contains(23 * 60) && night.contains(0) && night.contains(3 * 60 + 59));
        assert!(!night.contains(4 * 60) && !night.contains(12 * 60));
        assert_eq!(night.minutes_until_open(21 * 60), 60);
        assert_eq!(night.minutes_until_open(5 * 60), 17 * 60);
        let day = w("09:30-24:00");
        assert!(day.contains(9 * 60 + 30) && day.contains(1439) && !day.contains(0));
        for bad in ["9-10", "10:00", "10:00-10:00", "24:01-01:00", "ab:cd-01:00"] {
            assert!(Window::parse(bad).is_err(), "{bad}");
        }
    }
}
