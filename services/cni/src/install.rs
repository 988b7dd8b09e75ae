//! `smarter-cni install`: the DaemonSet mode.
//!
//! Copies the running binary into the CNI bin directory (atomically, only
//! when the content differs), writes the conflist atomically (our plugin
//! chained with the standard `portmap` plugin for hostPort, like the
//! original), then stays running: an inotify watch on the config file's
//! directory (ConfigMap updates are symlink swaps) and on the CNI conf
//! directory rewrites the conflist when the config changes or the file is
//! removed; SIGHUP does the same; SIGTERM/SIGINT stop.

use std::path::{Path, PathBuf};
use std::sync::mpsc;

use anyhow::Context;
use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify};
use serde_json::{Value, json};
use smarter_common::signals::Event;

use crate::config::Config;

/// The conflist for a config.
pub fn conflist(c: &Config) -> Value {
    let mut ipam = json!({ "subnet": c.subnet, "dataDir": c.data_dir });
    if let Some(gw) = c.gateway {
        ipam["gateway"] = json!(gw.to_string());
    }
    let mut ours = json!({
        "type": "smarter-cni",
        "bridge": c.bridge,
        "isGateway": true,
        "isDefaultGateway": true,
        "ipMasq": c.ip_masq,
        "denyInbound": c.deny_inbound,
        "hairpinMode": true,
        "ipam": ipam,
        "recordsDir": c.records_dir,
    });
    if let Some(mtu) = c.mtu {
        ours["mtu"] = json!(mtu);
    }
    if c.isolation {
        ours["isolation"] = json!({
            "enabled": true,
            "shared": c.isolation_shared,
            "allow": c.isolation_allow,
        });
    }
    let mut plugins = vec![ours];
    if c.portmap {
        plugins.push(json!({
            "type": "portmap",
            "snat": true,
            "capabilities": { "portMappings": true },
        }));
    }
    json!({ "cniVersion": c.cni_version, "name": c.network, "plugins": plugins })
}

/// Write `bytes` to `path` through a temporary file and a rename, unless the
/// file already holds exactly those bytes. Returns whether it wrote.
pub fn write_atomic(path: &Path, bytes: &[u8], mode: u32) -> anyhow::Result<bool> {
    use std::os::unix::fs::PermissionsExt;
    if std::fs::read(path).is_ok_and(|old| old == bytes) {
        return Ok(false);
    }
    let dir = path.parent().context("path has no parent directory")?;
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let name = path
        .file_name()
        .context("path has no file name")?
        .to_string_lossy();
    let tmp = dir.join(format!(".{name}.{}.tmp", std::process::id()));
    std::fs::write(&tmp, bytes).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(mode))
        .with_context(|| format!("chmod {}", tmp.display()))?;
    std::fs::rename(&tmp, path).map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        anyhow::anyhow!("renaming {} to {}: {e}", tmp.display(), path.display())
    })?;
    Ok(true)
}

/// One installation pass: binary and conflist.
pub fn install_once(c: &Config, binary: &Path) -> anyhow::Result<()> {
    let bin_dir = c.bin_dir();
    let exe = std::fs::read(binary).with_context(|| format!("reading {}", binary.display()))?;
    let target = bin_dir.join("smarter-cni");
    if write_atomic(&target, &exe, 0o755)? {
        tracing::info!(path = %target.display(), "installed plugin binary");
    }
    if c.portmap && !bin_dir.join("portmap").exists() {
        tracing::warn!(dir = %bin_dir.display(), "portmap plugin not found: hostPort will not work");
    }
    let list = conflist(c);
    let mut text = serde_json::to_vec_pretty(&list).context("serialising conflist")?;
    text.push(b'\n');
    let path = c.conf_dir.join(&c.conflist_name);
    if write_atomic(&path, &text, 0o644)? {
        tracing::info!(path = %path.display(), "wrote conflist");
    }
    Ok(())
}

enum Wake {
    Signal(Event),
    Changed,
}

/// Install, then keep the installation current until a stop signal.
pub fn run(initial: &Config, config_path: Option<&Path>) -> anyhow::Result<()> {
    let binary = std::env::current_exe().context("finding own executable")?;
    let mut config = initial.clone();
    install_once(&config, &binary)?;
    let (tx, rx) = mpsc::channel::<Wake>();
    let mut signals = smarter_common::signals::listen().context("installing signal handlers")?;
    let stx = tx.clone();
    std::thread::Builder::new()
        .name("signals-fwd".into())
        .spawn(move || {
            while let Some(ev) = signals.blocking_recv() {
                if stx.send(Wake::Signal(ev)).is_err() {
                    break;
                }
            }
        })
        .context("starting signal thread")?;
    let mut watched: Vec<PathBuf> = vec![config.conf_dir.clone()];
    if let Some(dir) = config_path.and_then(Path::parent) {
        watched.push(dir.to_path_buf());
    }
    let inotify = Inotify::init(InitFlags::IN_CLOEXEC).context("inotify_init")?;
    let flags = AddWatchFlags::IN_CLOSE_WRITE
        | AddWatchFlags::IN_MOVED_TO
        | AddWatchFlags::IN_MOVED_FROM
        | AddWatchFlags::IN_CREATE
        | AddWatchFlags::IN_DELETE;
    for dir in &watched {
        inotify
            .add_watch(dir.as_path(), flags)
            .with_context(|| format!("watching {}", dir.display()))?;
    }
    std::thread::Builder::new()
        .name("inotify".into())
        .spawn(move || {
            while let Ok(events) = inotify.read_events() {
                // Ignore our own temp files.
                let relevant = events.iter().any(|e| {
                    e.name
                        .as_ref()
                        .is_none_or(|n| !n.to_string_lossy().ends_with(".tmp"))
                });
                if relevant && tx.send(Wake::Changed).is_err() {
                    break;
                }
            }
        })
        .context("starting inotify thread")?;
    tracing::info!(dirs = ?watched, "installed; watching for changes");
    while let Ok(wake) = rx.recv() {
        match wake {
            Wake::Signal(Event::Stop) => break,
            Wake::Signal(Event::Reload) | Wake::Changed => {}
        }
        if let Some(p) = config_path {
            match smarter_common::config::load::<Config>(p) {
                Ok(c) => config = c,
                Err(e) => {
                    tracing::warn!(error = %e, "config invalid; keeping the previous one");
                    continue;
                }
            }
        }
        if let Err(e) = install_once(&config, &binary) {
            tracing::warn!(error = format!("{e:#}"), "reinstall failed");
        }
    }
    tracing::info!("stopping");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conflist_matches_golden() {
        let got =
            serde_json::to_string_pretty(&conflist(&Config::default())).unwrap_or_default() + "\n";
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata/default.conflist");
        if std::env::var_os("UPDATE_GOLDEN").is_some() {
            let _ = std::fs::write(&path, &got);
        }
        assert_eq!(got, std::fs::read_to_string(&path).unwrap_or_default());
    }

    #[test]
    fn conflist_parses_as_our_netconf() -> Result<(), crate::spec::CniError> {
        let list = conflist(&Config::default());
        let mut ours = list["plugins"][0].clone();
        ours["cniVersion"] = list["cniVersion"].clone();
        ours["name"] = list["name"].clone();
        let conf = crate::netconf::NetConf::parse(ours.to_string().as_bytes())?;
        assert_eq!(conf.bridge, "smartnet0");
        Ok(())
    }
}
