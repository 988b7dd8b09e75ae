//! `smarter-update`: the boot health gate (`health-gate`).

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use smarter_common::cli::{CommonArgs, Startup};
use smarter_update::config::{Config, DEFAULT_CONFIG_PATH};
use smarter_update::gate::{self, Report, Verdict};

const PROGRAM: &str = "smarter-health-gate";

/// SMARTER gateway OS updates.
#[derive(Debug, Parser)]
#[command(version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Wait for the gateway to be healthy, then mark the booted slot good;
    /// otherwise report what failed and, on a fresh slot, mark it bad and
    /// reboot. Exit status: 0 marked good, 1 unhealthy (rolled back or
    /// reported), 2 healthy but marking good failed, or the config is unusable
    /// (with --check-config: 0 usable, 1 not).
    HealthGate {
        #[command(flatten)]
        common: CommonArgs,
    },
}

/// Console and journal (stderr, which the unit sends to the journal).
struct Lines {
    console: PathBuf,
}

impl Report for Lines {
    fn line(&mut self, error: bool, text: &str) {
        if error {
            tracing::error!("{text}");
        } else {
            tracing::info!("{text}");
        }
        smarter_common::console::write_line(&self.console, PROGRAM, text);
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::HealthGate { common } => health_gate(&common),
    }
}

fn health_gate(common: &CommonArgs) -> ExitCode {
    if let Err(e) = smarter_common::logging::init(&common.log_level) {
        eprintln!("{PROGRAM}: error: {e}");
        return ExitCode::from(2);
    }
    let config: Config = match smarter_common::cli::startup(common, Path::new(DEFAULT_CONFIG_PATH))
    {
        Ok(Startup::Checked) => return ExitCode::SUCCESS,
        Ok(Startup::Run(c)) => c,
        Err(e) => {
            let line = format!("{e}; the gate cannot run and marks nothing");
            eprintln!("{PROGRAM}: error: {line}");
            // A broken config is what an operator must see at the console.
            if !common.check_config {
                smarter_common::console::write_line(
                    Path::new(smarter_common::console::DEFAULT_CONSOLE),
                    PROGRAM,
                    &line,
                );
            }
            return ExitCode::from(if common.check_config { 1 } else { 2 });
        }
    };
    // No capabilities are dropped: the gate's work is done by the commands it
    // runs (rauc, systemctl), which need root's privileges.
    let mut lines = Lines {
        console: config.console.clone(),
    };
    match gate::run(&config, &mut lines) {
        Verdict::MarkedGood => ExitCode::SUCCESS,
        Verdict::RolledBack | Verdict::Unhealthy => ExitCode::from(1),
        Verdict::MarkGoodFailed => ExitCode::from(2),
    }
}
