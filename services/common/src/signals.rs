//! Process signals as events on a channel.
//!
//! A dedicated thread owns a `signal_hook::iterator::Signals` and forwards
//! each signal as an [`Event`], so services react in normal code (async or
//! not) rather than inside a signal handler. SIGTERM, SIGINT and SIGQUIT mean
//! [`Event::Stop`]; SIGHUP means [`Event::Reload`].

use signal_hook::consts::{SIGHUP, SIGINT, SIGQUIT, SIGTERM};
use signal_hook::iterator::Signals;
use tokio::sync::mpsc;

/// What a signal asks the service to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    /// Shut down cleanly (SIGTERM, SIGINT, SIGQUIT).
    Stop,
    /// Re-read the configuration (SIGHUP).
    Reload,
}

/// The signal handlers could not be installed.
#[derive(Debug, thiserror::Error)]
pub enum SignalError {
    /// `sigaction` or the self-pipe failed.
    #[error("cannot install signal handlers: {0}")]
    Install(#[source] std::io::Error),
    /// The forwarding thread could not be started.
    #[error("cannot start signal thread: {0}")]
    Thread(#[source] std::io::Error),
}

/// Install handlers and return the receiving end of the event channel.
///
/// Works from both async code (`recv().await`) and plain threads
/// (`blocking_recv()`). The channel closes only if the process is exiting.
pub fn listen() -> Result<mpsc::UnboundedReceiver<Event>, SignalError> {
    let mut signals =
        Signals::new([SIGTERM, SIGINT, SIGQUIT, SIGHUP]).map_err(SignalError::Install)?;
    let (tx, rx) = mpsc::unbounded_channel();
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            for sig in signals.forever() {
                let event = if sig == SIGHUP {
                    Event::Reload
                } else {
                    Event::Stop
                };
                tracing::info!(signal = sig, ?event, "signal received");
                if tx.send(event).is_err() {
                    break;
                }
            }
        })
        .map_err(SignalError::Thread)?;
    Ok(rx)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn sighup_is_reload() -> Result<(), Box<dyn std::error::Error>> {
        let mut rx = listen()?;
        signal_hook::low_level::raise(SIGHUP)?;
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()?;
        let got =
            rt.block_on(async { tokio::time::timeout(Duration::from_secs(5), rx.recv()).await })?;
        assert_eq!(got, Some(Event::Reload));
        Ok(())
    }
}
