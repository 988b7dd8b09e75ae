//! `smarter-debug-agent`: parse flags, load config, run.

use std::path::Path;
use std::process::ExitCode;

use anyhow::Context;
use caps::Capability;
use clap::Parser;
use smarter_common::cli::{CommonArgs, Startup};
use smarter_debug::agent::config::{Config, DEFAULT_CONFIG_PATH};

/// Gateway agent for remote debugging: dials out to smarter-comms and serves debug sessions.
#[derive(Debug, Parser)]
#[command(name = "smarter-debug-agent", version, about)]
struct Cli {
    #[command(flatten)]
    common: CommonArgs,
}

/// Capabilities kept (and so available to debug shells): entering a pod's
/// namespaces needs SYS_ADMIN + SYS_CHROOT (setns into mount/pid/...) and
/// SYS_PTRACE (opening another process' /proc/PID/ns); the rest are what a
/// root debugging shell on the gateway is expected to have.
const KEEP: &[Capability] = &[
    Capability::CAP_SYS_ADMIN,
    Capability::CAP_SYS_CHROOT,
    Capability::CAP_SYS_PTRACE,
    Capability::CAP_DAC_OVERRIDE,
    Capability::CAP_DAC_READ_SEARCH,
    Capability::CAP_FOWNER,
    Capability::CAP_CHOWN,
    Capability::CAP_KILL,
    Capability::CAP_SETUID,
    Capability::CAP_SETGID,
    Capability::CAP_NET_ADMIN,
    Capability::CAP_NET_RAW,
    Capability::CAP_SYS_RESOURCE,
];

fn main() -> ExitCode {
    let cli = Cli::parse();
    smarter_common::cli::exit_code("smarter-debug-agent", run(cli))
}

fn run(cli: Cli) -> anyhow::Result<()> {
    smarter_common::logging::init(&cli.common.log_level)?;
    let config: Config =
        match smarter_common::cli::startup(&cli.common, Path::new(DEFAULT_CONFIG_PATH))? {
            Startup::Checked => return Ok(()),
            Startup::Run(c) => c,
        };
    smarter_common::capabilities::retain_only(KEEP).context("dropping capabilities")?;
    let signals = smarter_common::signals::listen().context("installing signal handlers")?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting tokio runtime")?;
    let args = cli.common.clone();
    let reload =
        move || smarter_common::cli::reload::<Config>(&args, Path::new(DEFAULT_CONFIG_PATH));
    rt.block_on(smarter_debug::agent::run(config, signals, reload))?;
    Ok(())
}
