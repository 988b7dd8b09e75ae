//! `smarter-comms`: parse flags, load config, run.

use std::path::Path;
use std::process::ExitCode;

use anyhow::Context;
use clap::Parser;
use smarter_common::cli::{CommonArgs, Startup};
use smarter_debug::comms::config::{Config, DEFAULT_CONFIG_PATH};

/// Cloud endpoint for remote debugging: developers reach gateways through it with ssh.
#[derive(Debug, Parser)]
#[command(name = "smarter-comms", version, about)]
struct Cli {
    #[command(flatten)]
    common: CommonArgs,
    /// Print the SHA-256 to put in `admin_token_sha256` for the token read from stdin, then exit.
    #[arg(long)]
    hash_token: bool,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    smarter_common::cli::exit_code("smarter-comms", run(cli))
}

fn run(cli: Cli) -> anyhow::Result<()> {
    if cli.hash_token {
        let mut token = String::new();
        std::io::stdin()
            .read_line(&mut token)
            .context("reading token from stdin")?;
        println!(
            "{}",
            smarter_debug::comms::api::token_hash_hex(token.trim_end_matches(['\r', '\n']))
        );
        return Ok(());
    }
    smarter_common::logging::init(&cli.common.log_level)?;
    let config: Config =
        match smarter_common::cli::startup(&cli.common, Path::new(DEFAULT_CONFIG_PATH))? {
            Startup::Checked => return Ok(()),
            Startup::Run(c) => c,
        };
    // Comms needs no privilege: its port is above 1024 and its files are its own.
    smarter_common::capabilities::retain_only(&[]).context("dropping capabilities")?;
    let signals = smarter_common::signals::listen().context("installing signal handlers")?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting tokio runtime")?;
    let args = cli.common.clone();
    let reload =
        move || smarter_common::cli::reload::<Config>(&args, Path::new(DEFAULT_CONFIG_PATH));
    rt.block_on(smarter_debug::comms::run(config, signals, reload))?;
    Ok(())
}
