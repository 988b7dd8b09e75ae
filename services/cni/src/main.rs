//! `smarter-cni`: a CNI plugin when run by a runtime (`CNI_COMMAND` set and
//! no arguments), the installer with `smarter-cni install`.

use std::io::{Read, Write};
use std::path::Path;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use smarter_cni::config::{Config, DEFAULT_CONFIG_PATH};
use smarter_common::cli::{CommonArgs, Startup};

/// Edge CNI plugin and installer for a private per-gateway network.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Cli {
    #[command(flatten)]
    common: CommonArgs,
    #[command(subcommand)]
    command: Option<Cmd>,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Copy this binary into the CNI bin directory, write the conflist and
    /// keep it current until SIGTERM (the DaemonSet mode).
    Install {
        /// The same flags, accepted after the subcommand too.
        #[command(flatten)]
        common: CommonArgs,
    },
}

fn main() -> ExitCode {
    if std::env::args_os().len() == 1 && std::env::var_os("CNI_COMMAND").is_some() {
        return plugin();
    }
    let cli = Cli::parse();
    smarter_common::cli::exit_code("smarter-cni", run(cli))
}

/// What the plugin needs: netlink and nftables/iptables (NET_ADMIN,
/// NET_RAW for iptables-legacy), entering network namespaces (SYS_ADMIN),
/// opening `/proc/<pid>/ns/net` of pods running as other users
/// (SYS_PTRACE). Tools it runs (`nft`, `iptables`, IPAM plugins) inherit at
/// most these.
const PLUGIN_CAPS: &[caps::Capability] = &[
    caps::Capability::CAP_NET_ADMIN,
    caps::Capability::CAP_NET_RAW,
    caps::Capability::CAP_SYS_ADMIN,
    caps::Capability::CAP_SYS_PTRACE,
];

fn plugin() -> ExitCode {
    let level = std::env::var("SMARTER_CNI_LOG").unwrap_or_else(|_| "warn".into());
    let _ = smarter_common::logging::init(&level);
    // Hardening must not break networking: log and go on if it fails.
    if let Err(e) = smarter_common::capabilities::retain_only(PLUGIN_CAPS) {
        tracing::warn!(error = %e, "cannot drop capabilities");
    }
    let mut stdin = Vec::new();
    let _ = std::io::stdin().read_to_end(&mut stdin);
    let outcome = smarter_cni::plugin::run_process(&stdin);
    if let Some(v) = outcome.stdout {
        let mut out = std::io::stdout().lock();
        let _ = serde_json::to_writer(&mut out, &v);
        let _ = out.write_all(b"\n");
        let _ = out.flush();
    }
    ExitCode::from(outcome.exit_code)
}

fn run(cli: Cli) -> anyhow::Result<()> {
    // Flags given after `install` win over those before it.
    let common = match &cli.command {
        Some(Cmd::Install { common })
            if common.config.is_some() || common.check_config || common.log_level != "info" =>
        {
            CommonArgs {
                config: common.config.clone().or(cli.common.config.clone()),
                check_config: common.check_config || cli.common.check_config,
                log_level: common.log_level.clone(),
            }
        }
        _ => cli.common.clone(),
    };
    smarter_common::logging::init(&common.log_level)?;
    let config: Config =
        match smarter_common::cli::startup(&common, Path::new(DEFAULT_CONFIG_PATH))? {
            Startup::Checked => return Ok(()),
            Startup::Run(c) => c,
        };
    // The installer only writes files it owns (as root): no capabilities.
    smarter_common::capabilities::retain_only(&[]).context("dropping capabilities")?;
    match cli.command {
        Some(Cmd::Install { .. }) => smarter_cni::install::run(&config, common.config_path()),
        None => {
            // Run without CNI_COMMAND and without a subcommand: say what we are,
            // like the reference plugins do.
            println!(
                "smarter-cni {}: CNI plugin, spec versions {}; run `smarter-cni install` for the installer",
                env!("CARGO_PKG_VERSION"),
                smarter_cni::spec::SUPPORTED_VERSIONS.join(", ")
            );
            Ok(())
        }
    }
}
