//! Which slot is booted, and which slot the gate last marked good.

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde::{Deserialize, Serialize};

use crate::Error;
use crate::config::SlotSource;

/// `rauc.slot=X` from a kernel command line.
pub fn from_cmdline(cmdline: &str) -> Option<String> {
    cmdline
        .split_whitespace()
        .filter_map(|w| w.strip_prefix("rauc.slot="))
        .next_back()
        .filter(|s| !s.is_empty())
        .map(str::to_string)
}

/// The `booted` field of `rauc status --output-format=json`.
pub fn from_rauc_json(json: &str) -> Result<String, Error> {
    let v: serde_json::Value = serde_json::from_str(json).map_err(Error::NotJson)?;
    v.get("booted")
        .and_then(|b| b.as_str())
        .filter(|s| !s.is_empty())
        .map(str::to_string)
        .ok_or(Error::NoBooted)
}

/// Find the booted slot; the error says what was tried.
pub fn booted(source: SlotSource, cmdline: &Path, rauc_status: &[String]) -> Result<String, Error> {
    let by_cmdline = || -> Result<String, Error> {
        let text = fs::read_to_string(cmdline).map_err(|source| Error::Io {
            op: "read",
            path: cmdline.to_path_buf(),
            source,
        })?;
        from_cmdline(&text).ok_or_else(|| Error::NoSlotOnCmdline(cmdline.to_path_buf()))
    };
    let by_rauc = || -> Result<String, Error> {
        let (program, args) = rauc_status
            .split_first()
            .ok_or(Error::EmptyCommand("rauc_status is empty"))?;
        let out = Command::new(program)
            .args(args)
            .output()
            .map_err(|source| Error::Spawn {
                command: program.clone(),
                source,
            })?;
        if !out.status.success() {
            return Err(Error::Failed {
                command: rauc_status.join(" "),
                status: out.status,
                stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
            });
        }
        from_rauc_json(&String::from_utf8_lossy(&out.stdout)).map_err(|e| Error::Output {
            command: rauc_status.join(" "),
            source: Box::new(e),
        })
    };
    match source {
        SlotSource::Cmdline => by_cmdline(),
        SlotSource::Rauc => by_rauc(),
        SlotSource::Auto => by_cmdline().or_else(|a| {
            by_rauc().map_err(|b| Error::SlotUnknown {
                cmdline: Box::new(a),
                rauc: Box::new(b),
            })
        }),
    }
}

/// The gate's persistent state.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct State {
    /// The slot the gate last marked good.
    pub last_good_slot: Option<String>,
    /// When, RFC 3339 UTC or seconds since the epoch.
    #[serde(default)]
    pub marked_at: Option<String>,
}

/// `<state_dir>/state.toml`.
pub fn state_path(state_dir: &Path) -> PathBuf {
    state_dir.join("state.toml")
}

/// Read the state; a missing file is the empty state.
pub fn read_state(state_dir: &Path) -> Result<State, Error> {
    let path = state_path(state_dir);
    match fs::read_to_string(&path) {
        Ok(text) => toml::from_str(&text).map_err(|e| Error::InvalidState {
            message: e.message().lines().next().unwrap_or("invalid").to_string(),
            path,
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(State::default()),
        Err(source) => Err(Error::Io {
            op: "read",
            path,
            source,
        }),
    }
}

/// Write the state atomically (temporary file, fsync, rename, fsync dir).
pub fn write_state(state_dir: &Path, state: &State) -> Result<(), Error> {
    let err = |op: &'static str, p: &Path, source: std::io::Error| Error::Io {
        op,
        path: p.to_path_buf(),
        source,
    };
    fs::create_dir_all(state_dir).map_err(|e| err("create", state_dir, e))?;
    let path = state_path(state_dir);
    let tmp = state_dir.join(".state.toml.tmp");
    let text = toml::to_string(state).map_err(Error::Serialise)?;
    let mut f = fs::File::create(&tmp).map_err(|e| err("create", &tmp, e))?;
    f.write_all(format!("# Written by smarter-update health-gate.\n{text}").as_bytes())
        .and_then(|()| f.sync_all())
        .map_err(|e| err("write", &tmp, e))?;
    fs::rename(&tmp, &path).map_err(|e| err("rename into", &path, e))?;
    fs::File::open(state_dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| err("sync", state_dir, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cmdline() {
        assert_eq!(
            from_cmdline("console=ttyAMA0 root=/dev/vda3 rauc.slot=B rw\n").as_deref(),
            Some("B")
        );
        assert_eq!(from_cmdline("root=/dev/vda2"), None);
        assert_eq!(from_cmdline("rauc.slot="), None);
    }

    #[test]
    fn rauc_json() {
        let json = r#"{"compatible":"smarter-qemuarm64","variant":"","booted":"A","boot_primary":"rootfs.0","slots":[{"rootfs.0":{"class":"rootfs","bootname":"A","state":"booted"}}]}"#;
        assert_eq!(from_rauc_json(json).ok().as_deref(), Some("A"));
        assert_eq!(
            from_rauc_json("{}").err().map(|e| e.to_string()).as_deref(),
            Some("no \"booted\" field")
        );
        assert!(matches!(from_rauc_json("nope"), Err(Error::NotJson(_))));
    }

    #[test]
    fn state_round_trip() {
        let Ok(dir) = tempfile::tempdir() else { return };
        let d = dir.path().join("gate");
        assert_eq!(read_state(&d).ok(), Some(State::default()));
        let s = State {
            last_good_slot: Some("B".into()),
            marked_at: Some("2026-12-06T20:00:00Z".into()),
        };
        assert!(write_state(&d, &s).is_ok());
        assert_eq!(read_state(&d).ok(), Some(s));
    }
}
