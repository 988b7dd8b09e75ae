//! `smarter-debug-agent`: parse flags, load config, run.

use std::path::Path;
use std::process::ExitCode;

use anyhow::Context;
use clap::Parser;
use smarter_common::cli::{CommonArgs, Startup};
use smarter_debug::agent::config::{Config, DEFAULT_CONFIG_PATH};

/// Gateway agent for remote debugging: dials out to smarter-comms and serves debug sessions.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Cli {
    #[command(flatten)]
    common: CommonArgs,
}

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
    let mut signals = smarter_common::signals::listen().context("installing signal handlers")?;
    tracing::info!(comms_address = ?config.comms_address, "started");
    let _ = signals.blocking_recv();
    Ok(())
}
