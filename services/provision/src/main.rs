//! `smarter-provision`: apply the boot partition's provisioning file once, or
//! check a provisioning file.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use smarter_provision::apply::{self, ApplyError, KernelHostname, Layout, Options, Outcome};
use smarter_provision::file;

const PROGRAM: &str = "smarter-provision";

/// First-boot provisioning of a SMARTER gateway (k3s server, token, node name, labels).
#[derive(Debug, Parser)]
#[command(version)]
struct Cli {
    /// Log filter, e.g. `info` or `debug`; RUST_LOG overrides it.
    #[arg(long, value_name = "FILTER", default_value = "info", global = true)]
    log_level: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Apply the provisioning file once: k3s config, token, hostname, then the
    /// record. Exit status: 0 applied or already provisioned, 2 no file,
    /// 3 invalid file, 4 could not apply (everything undone).
    Apply {
        /// The provisioning file.
        #[arg(long, value_name = "PATH", default_value = file::DEFAULT_PATH)]
        file: PathBuf,
        /// Mount point of the data partition.
        #[arg(long, value_name = "DIR", default_value = apply::DEFAULT_DATA_DIR)]
        data_dir: PathBuf,
        /// Where failures are also printed for an operator ("" = nowhere).
        #[arg(long, value_name = "PATH", default_value = smarter_common::console::DEFAULT_CONSOLE)]
        console: PathBuf,
        /// Do not set the running hostname (it is still written to <data>/etc/hostname).
        #[arg(long)]
        no_set_hostname: bool,
    },
    /// Validate a provisioning file. Exit status: 0 valid, 1 not.
    Check {
        /// The file to check.
        file: PathBuf,
    },
    /// Print the k3s agent config a provisioning file turns into.
    Render {
        /// The provisioning file.
        file: PathBuf,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Err(e) = smarter_common::logging::init(&cli.log_level) {
        eprintln!("{PROGRAM}: error: {e}");
        return ExitCode::FAILURE;
    }
    match cli.command {
        Command::Apply {
            file,
            data_dir,
            console,
            no_set_hostname,
        } => run_apply(file, data_dir, &console, no_set_hostname),
        Command::Check { file } => smarter_common::cli::exit_code(PROGRAM, check(&file)),
        Command::Render { file } => smarter_common::cli::exit_code(PROGRAM, render(&file)),
    }
}

fn check(path: &std::path::Path) -> anyhow::Result<()> {
    let p = file::load(path)?;
    println!(
        "provisioning file OK: {} (node {}, server {})",
        path.display(),
        p.node_name,
        p.server
    );
    Ok(())
}

fn render(path: &std::path::Path) -> anyhow::Result<()> {
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    let p = file::parse(path, &String::from_utf8_lossy(&bytes))?;
    print!(
        "{}",
        smarter_provision::render::k3s_config(&p, &apply::sha256_hex(&bytes))
    );
    Ok(())
}

fn run_apply(
    file: PathBuf,
    data_dir: PathBuf,
    console: &std::path::Path,
    no_set_hostname: bool,
) -> ExitCode {
    // sethostname needs CAP_SYS_ADMIN; reading /boot and writing /data
    // whatever their modes needs CAP_DAC_OVERRIDE. Nothing else.
    let mut keep = vec![caps::Capability::CAP_DAC_OVERRIDE];
    if !no_set_hostname {
        keep.push(caps::Capability::CAP_SYS_ADMIN);
    }
    if let Err(e) = smarter_common::capabilities::retain_only(&keep) {
        tracing::warn!(error = %e, "cannot drop capabilities");
    }
    let opts = Options {
        source: file,
        layout: Layout { data_dir },
    };
    let mut kernel = KernelHostname;
    let hostname: Option<&mut dyn apply::Hostname> = if no_set_hostname {
        None
    } else {
        Some(&mut kernel)
    };
    let say = |line: &str| smarter_common::console::write_line(console, PROGRAM, line);
    match apply::apply(&opts, hostname) {
        Ok(Outcome::Applied(record)) => {
            let line = format!(
                "provisioned: node {} joins {}; record {}",
                record.node_name,
                record.server,
                opts.layout.record().display()
            );
            tracing::info!(node = %record.node_name, server = %record.server, sha256 = %record.source_sha256, "provisioned");
            say(&line);
            println!("{line}");
            ExitCode::SUCCESS
        }
        Ok(Outcome::AlreadyProvisioned { record }) => {
            tracing::info!(record = %record.display(), "already provisioned; nothing to do");
            ExitCode::SUCCESS
        }
        Err(e) => report(&e, &say),
    }
}

fn report(e: &ApplyError, say: &dyn Fn(&str) -> bool) -> ExitCode {
    let line = e.to_string();
    match e {
        ApplyError::NoFile { .. } => tracing::warn!("{line}"),
        _ => tracing::error!("{line}"),
    }
    say(&line);
    eprintln!("{PROGRAM}: {line}");
    ExitCode::from(e.exit_code())
}
