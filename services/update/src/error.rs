//! The library's errors. Their messages are what the health gate prints on the console and in
//! the journal, so each names the file, command or value involved.

use std::path::PathBuf;
use std::process::ExitStatus;

/// What went wrong finding the booted slot, keeping the gate's state, or running a command.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A file operation failed.
    #[error("cannot {op} {}: {source}", path.display())]
    Io {
        /// What was tried: "read", "create", "write", "rename into", "sync".
        op: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The kernel command line names no slot.
    #[error("no rauc.slot= in {}", .0.display())]
    NoSlotOnCmdline(PathBuf),
    /// A configured command is empty ("rauc_status is empty", "empty command").
    #[error("{0}")]
    EmptyCommand(&'static str),
    /// A command could not be started.
    #[error("cannot run {command}: {source}")]
    Spawn {
        /// The command, as the message shows it.
        command: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A command ran and failed.
    #[error("{command} failed ({status}): {stderr}")]
    Failed {
        /// The command, as the message shows it.
        command: String,
        /// Its exit status.
        status: ExitStatus,
        /// What it wrote to stderr, trimmed.
        stderr: String,
    },
    /// `rauc status --output-format=json` printed something that is not JSON.
    #[error("not JSON: {0}")]
    NotJson(#[source] serde_json::Error),
    /// `rauc status` JSON without a `booted` slot.
    #[error("no \"booted\" field")]
    NoBooted,
    /// An error in the output of a command.
    #[error("{command}: {source}")]
    Output {
        /// The command.
        command: String,
        /// What was wrong with its output.
        #[source]
        source: Box<Error>,
    },
    /// Neither way of finding the booted slot worked.
    #[error("{cmdline}; {rauc}")]
    SlotUnknown {
        /// Why the kernel command line did not tell.
        cmdline: Box<Error>,
        /// Why `rauc status` did not tell.
        rauc: Box<Error>,
    },
    /// The gate's state file is not what the gate writes.
    #[error("{}: {message}", path.display())]
    InvalidState {
        /// The state file.
        path: PathBuf,
        /// The first line of the TOML parser's message.
        message: String,
    },
    /// The gate's state could not be serialised.
    #[error("cannot serialise state: {0}")]
    Serialise(#[source] toml::ser::Error),
}
