//! Delegated IPAM: run another IPAM plugin (e.g. `host-local`) found in
//! `CNI_PATH`, exactly as a runtime runs a plugin: same environment with
//! `CNI_COMMAND` set, the whole network config on stdin, result or error
//! JSON on stdout.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use serde_json::Value;

use crate::spec::{self, CniError, CniResult, code};

/// Find `plugin` in the `CNI_PATH` directories.
pub fn find(plugin: &str, path: &[PathBuf]) -> Result<PathBuf, CniError> {
    if plugin.contains('/') || plugin.is_empty() || plugin == "." || plugin == ".." {
        return Err(CniError::new(
            code::INVALID_CONFIG,
            format!("ipam.type {plugin:?} is not a plugin name"),
        ));
    }
    path.iter()
        .map(|d| d.join(plugin))
        .find(|p| p.is_file())
        .ok_or_else(|| {
            CniError::new(
                code::INVALID_CONFIG,
                format!("IPAM plugin {plugin:?} not found in CNI_PATH"),
            )
            .with_details(format!("searched {path:?}"))
        })
}

/// Run `plugin` with `command` (`ADD`, `DEL`, `CHECK`, `GC`), passing our
/// environment through. Returns its stdout parsed as JSON (`Null` when it
/// printed nothing).
pub fn exec(
    plugin: &Path,
    command: &str,
    env: &spec::Env,
    stdin: &[u8],
) -> Result<Value, CniError> {
    let mut cmd = Command::new(plugin);
    cmd.env("CNI_COMMAND", command)
        .env("CNI_CONTAINERID", &env.container_id)
        .env("CNI_IFNAME", &env.ifname)
        .env(
            "CNI_ARGS",
            env.args
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect::<Vec<_>>()
                .join(";"),
        )
        .env(
            "CNI_PATH",
            std::env::join_paths(&env.path).unwrap_or_default(),
        )
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    match &env.netns {
        Some(ns) => cmd.env("CNI_NETNS", ns),
        None => cmd.env_remove("CNI_NETNS"),
    };
    let io_err = |e: std::io::Error| {
        CniError::new(
            code::IO,
            format!("cannot run IPAM plugin {}", plugin.display()),
        )
        .with_details(e.to_string())
    };
    let mut child = cmd.spawn().map_err(io_err)?;
    if let Some(mut w) = child.stdin.take() {
        w.write_all(stdin).map_err(io_err)?;
    }
    let out = child.wait_with_output().map_err(io_err)?;
    let text = String::from_utf8_lossy(&out.stdout);
    let value: Value = if text.trim().is_empty() {
        Value::Null
    } else {
        serde_json::from_str(&text).map_err(|e| {
            CniError::new(
                code::DECODE,
                format!("IPAM plugin {} printed invalid JSON", plugin.display()),
            )
            .with_details(e.to_string())
        })?
    };
    if out.status.success() {
        return Ok(value);
    }
    // Pass the delegate's own error through, code and all.
    let code = value
        .get("code")
        .and_then(Value::as_u64)
        .and_then(|c| u32::try_from(c).ok())
        .unwrap_or(code::PLUGIN);
    let msg = value
        .get("msg")
        .and_then(Value::as_str)
        .unwrap_or("IPAM plugin failed")
        .to_string();
    let details = value
        .get("details")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string();
    Err(CniError::new(code, format!("{}: {msg}", plugin.display())).with_details(details))
}

/// ADD through the delegate: its result, parsed.
pub fn add(plugin: &Path, env: &spec::Env, stdin: &[u8]) -> Result<CniResult, CniError> {
    CniResult::from_json(&exec(plugin, "ADD", env, stdin)?)
}
