//! `/etc/smarter/health-gate.toml`. Every key is optional; the sample with
//! every default is `services/update/config/health-gate.toml`.

use std::path::PathBuf;

use serde::Deserialize;
use smarter_common::config::{Invalid, Validate};

/// Default config path.
pub const DEFAULT_CONFIG_PATH: &str = "/etc/smarter/health-gate.toml";

/// How the booted slot is found.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SlotSource {
    /// `rauc.slot=` on the kernel command line, else `rauc status`.
    Auto,
    /// Only `rauc.slot=` on the kernel command line.
    Cmdline,
    /// Only the `booted` field of `rauc status --output-format=json`.
    Rauc,
}

/// Which container runtime must answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RuntimeKind {
    /// No runtime check.
    None,
    /// Docker: `GET /_ping` on its socket must answer 200.
    Docker,
    /// containerd: its socket must accept a connection.
    Containerd,
}

/// The container runtime check.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Runtime {
    /// `none`, `docker` or `containerd`.
    pub kind: RuntimeKind,
    /// The runtime's API socket.
    pub socket: PathBuf,
}

impl Default for Runtime {
    fn default() -> Self {
        Self {
            kind: RuntimeKind::Containerd,
            socket: PathBuf::from("/run/k3s/containerd/containerd.sock"),
        }
    }
}

/// The health gate's settings.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Seconds from the gate's start for everything to be healthy.
    pub deadline_s: u64,
    /// Milliseconds between two rounds of checks.
    pub interval_ms: u64,
    /// Seconds every check must keep passing, round after round, before the
    /// slot counts as healthy: a crash-looping unit is `active` for a moment
    /// between restarts, and must not be taken for a healthy one.
    pub stable_s: u64,
    /// Timeout of one HTTP or runtime check, milliseconds.
    pub check_timeout_ms: u64,
    /// systemd units that must be `active`.
    pub units: Vec<String>,
    /// `http://host:port/path` URLs that must answer 200.
    pub http: Vec<String>,
    /// The container runtime check.
    pub container_runtime: Runtime,
    /// The systemctl program asked about the units.
    pub systemctl: String,
    /// Command marking the booted slot good.
    pub mark_good: Vec<String>,
    /// Command marking the booted slot bad.
    pub mark_bad: Vec<String>,
    /// Command rebooting the gateway.
    pub reboot: Vec<String>,
    /// `auto`, `cmdline` or `rauc`.
    pub booted_slot: SlotSource,
    /// The kernel command line.
    pub cmdline: PathBuf,
    /// Command printing RAUC's status as JSON.
    pub rauc_status: Vec<String>,
    /// The gate's state (the slot it last marked good); on the data partition.
    pub state_dir: PathBuf,
    /// Where the verdict is printed for an operator ("" = nowhere).
    pub console: PathBuf,
}

fn argv(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

impl Default for Config {
    fn default() -> Self {
        Self {
            deadline_s: 300,
            interval_ms: 2000,
            stable_s: 30,
            check_timeout_ms: 2000,
            units: argv(&["k3s-agent.service"]),
            http: Vec::new(),
            container_runtime: Runtime::default(),
            systemctl: "systemctl".into(),
            mark_good: argv(&["rauc", "status", "mark-good"]),
            mark_bad: argv(&["rauc", "status", "mark-bad"]),
            reboot: argv(&["systemctl", "reboot"]),
            booted_slot: SlotSource::Auto,
            cmdline: PathBuf::from("/proc/cmdline"),
            rauc_status: argv(&["rauc", "status", "--output-format=json"]),
            state_dir: PathBuf::from("/data/smarter/health-gate"),
            console: PathBuf::from(smarter_common::console::DEFAULT_CONSOLE),
        }
    }
}

impl Validate for Config {
    fn validate(&self) -> Result<(), Invalid> {
        if self.deadline_s == 0 || self.deadline_s > 86_400 {
            return Err(Invalid::new(
                "deadline_s",
                self.deadline_s,
                "must be 1 to 86400 seconds",
            ));
        }
        if !(10..=60_000).contains(&self.interval_ms) {
            return Err(Invalid::new(
                "interval_ms",
                self.interval_ms,
                "must be 10 to 60000 milliseconds",
            ));
        }
        if self.stable_s >= self.deadline_s {
            return Err(Invalid::new(
                "stable_s",
                self.stable_s,
                "must be less than deadline_s (0 = one passing round is enough)",
            ));
        }
        if !(10..=60_000).contains(&self.check_timeout_ms) {
            return Err(Invalid::new(
                "check_timeout_ms",
                self.check_timeout_ms,
                "must be 10 to 60000 milliseconds",
            ));
        }
        for (i, unit) in self.units.iter().enumerate() {
            if unit.is_empty() || unit.starts_with('-') || unit.contains(char::is_whitespace) {
                return Err(Invalid::new(
                    format!("units[{i}]"),
                    unit,
                    "must be a systemd unit name such as smarter-dns.service",
                ));
            }
        }
        for (i, url) in self.http.iter().enumerate() {
            crate::checks::HttpUrl::parse(url)
                .map_err(|reason| Invalid::new(format!("http[{i}]"), url, reason))?;
        }
        for (field, cmd) in [
            ("mark_good", &self.mark_good),
            ("mark_bad", &self.mark_bad),
            ("reboot", &self.reboot),
            ("rauc_status", &self.rauc_status),
        ] {
            if cmd.first().is_none_or(|p| p.is_empty()) {
                return Err(Invalid::new(
                    field,
                    format!("{cmd:?}"),
                    "must be a command: a non-empty list, program first",
                ));
            }
        }
        if self.systemctl.is_empty() && !self.units.is_empty() {
            return Err(Invalid::new(
                "systemctl",
                "",
                "must name the systemctl program",
            ));
        }
        if self.state_dir.as_os_str().is_empty() {
            return Err(Invalid::new("state_dir", "", "must be a directory"));
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
        let text = include_str!("../config/health-gate.toml");
        let parsed: Result<Config, _> =
            smarter_common::config::parse(Path::new("health-gate.toml"), text);
        assert_eq!(parsed.ok(), Some(Config::default()));
    }

    #[test]
    fn bad_values_name_field_and_value() {
        let e = smarter_common::config::parse::<Config>(
            Path::new("/etc/smarter/health-gate.toml"),
            "http = [\"https://x/\"]\n",
        )
        .err()
        .map(|e| e.to_string());
        assert_eq!(
            e.as_deref(),
            Some(
                "config /etc/smarter/health-gate.toml: field `http[0]`: invalid value \"https://x/\": only http://host:port/path URLs are supported"
            )
        );
        let e = smarter_common::config::parse::<Config>(Path::new("g.toml"), "mark_good = []\n")
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(e.contains("field `mark_good`"), "{e}");
        let e = smarter_common::config::parse::<Config>(Path::new("g.toml"), "deadline = 3\n")
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(e.contains("deadline"), "{e}");
    }
}
