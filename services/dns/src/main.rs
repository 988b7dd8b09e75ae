//! `smarter-dns`: parse flags, load config, run.

use std::path::Path;
use std::process::ExitCode;

use anyhow::Context;
use clap::Parser;
use smarter_common::cli::{CommonArgs, Startup};
use smarter_dns::config::{Config, DEFAULT_CONFIG_PATH};

/// Local DNS server so apps on one gateway find each other by name.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Cli {
    #[command(flatten)]
    common: CommonArgs,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    smarter_common::cli::exit_code("smarter-dns", run(cli))
}

fn run(cli: Cli) -> anyhow::Result<()> {
    smarter_common::logging::init(&cli.common.log_level)?;
    let config: Config =
        match smarter_common::cli::startup(&cli.common, Path::new(DEFAULT_CONFIG_PATH))? {
            Startup::Checked => return Ok(()),
            Startup::Run(c) => c,
        };
    let mut signals = smarter_common::signals::listen().context("installing signal handlers")?;
    tracing::info!(records_dir = ?config.records_dir, "started");
    let _ = signals.blocking_recv();
    Ok(())
}
