//! One `tracing` set-up for every service: compact key=value lines on stderr.
//!
//! The filter comes from `--log-level` (a `tracing` filter directive such as
//! `info` or `smarter_dns=debug,info`); `RUST_LOG` overrides it when set, as
//! users of other Rust services expect.

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

/// The filter directive was not understood.
#[derive(Debug, thiserror::Error)]
#[error("invalid log level {directive:?}: {message}")]
pub struct LogError {
    /// What the user gave.
    pub directive: String,
    /// Why it was rejected.
    pub message: String,
}

/// Install the global subscriber. Call once, early in `main`.
pub fn init(directive: &str) -> Result<(), LogError> {
    let filter = match std::env::var("RUST_LOG") {
        Ok(env) if !env.is_empty() => EnvFilter::try_new(&env).map_err(|e| LogError {
            directive: env.clone(),
            message: e.to_string(),
        })?,
        _ => EnvFilter::try_new(directive).map_err(|e| LogError {
            directive: directive.to_string(),
            message: e.to_string(),
        })?,
    };
    // A second init (tests calling run() twice) is harmless: keep the first.
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        // Colour only on a terminal: `kubectl logs` and journald show raw escapes.
        .with_ansi(std::io::stderr().is_terminal())
        .with_target(false)
        .compact()
        .try_init();
    Ok(())
}
