//! `smarter-dns`: parse flags, load config, run.

use std::net::SocketAddr;
use std::path::Path;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use smarter_common::cli::{CommonArgs, Startup};
use smarter_common::signals::Event;
use smarter_dns::config::{Config, DEFAULT_CONFIG_PATH};

/// Local DNS server so apps on one gateway find each other by name.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Cli {
    #[command(flatten)]
    common: CommonArgs,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Print the names (and PTR records) the records directory makes us
    /// serve, then exit.
    Records,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    smarter_common::cli::exit_code("smarter-dns", run(cli))
}

fn run(cli: Cli) -> anyhow::Result<()> {
    // hickory logs every request at info; keep that for debug sessions.
    let mut level = cli.common.log_level.clone();
    if !level.contains("hickory") {
        level.push_str(",hickory_server=warn");
    }
    smarter_common::logging::init(&level)?;
    let config: Config =
        match smarter_common::cli::startup(&cli.common, Path::new(DEFAULT_CONFIG_PATH))? {
            Startup::Checked => return Ok(()),
            Startup::Run(c) => c,
        };
    if let Some(Command::Records) = cli.command {
        let stdout = std::io::stdout();
        smarter_dns::service::print_records(&config, &mut stdout.lock())
            .context("printing records")?;
        return Ok(());
    }
    let kept = smarter_common::capabilities::retain_only(&[
        caps::Capability::CAP_NET_ADMIN,
        caps::Capability::CAP_NET_BIND_SERVICE,
    ])
    .context("dropping capabilities")?;
    if !kept.missing.is_empty() {
        tracing::warn!(missing = ?kept.missing, "running without some capabilities");
    }
    set_up_dummy(&config)?;
    let rt = if config.worker_threads == 1 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(config.worker_threads)
            .enable_all()
            .build()
    }
    .context("starting the async runtime")?;
    rt.block_on(serve(config, &cli.common))
}

/// Put the listen addresses that belong on a dummy link there (the cluster
/// DNS address), falling back to `lo` on kernels without dummy links.
fn set_up_dummy(config: &Config) -> anyhow::Result<()> {
    if config.dummy_interface.is_empty() {
        return Ok(());
    }
    let addrs: Vec<_> = config
        .listen
        .iter()
        .copied()
        .filter(smarter_dns::link::belongs_on_dummy)
        .collect();
    if addrs.is_empty() {
        return Ok(());
    }
    let mut iface = config.dummy_interface.as_str();
    match smarter_dns::link::ensure_dummy(iface, &addrs) {
        Err(smarter_dns::link::LinkError::NoDummySupport) => {
            tracing::warn!("kernel has no dummy interfaces; putting the cluster DNS address on lo");
            iface = smarter_dns::link::LOOPBACK;
            smarter_dns::link::ensure_dummy(iface, &addrs)
        }
        r => r,
    }
    .context("setting up the cluster DNS address")?;
    tracing::info!(interface = %iface, ?addrs, "cluster DNS address ready");
    Ok(())
}

type Bound = (
    Vec<(tokio::net::UdpSocket, tokio::net::TcpListener)>,
    Option<tokio::net::TcpListener>,
);

async fn bind_all(config: &Config) -> anyhow::Result<Bound> {
    let mut sockets = Vec::new();
    for ip in &config.listen {
        sockets.push(smarter_dns::service::bind(SocketAddr::new(
            *ip,
            config.port,
        ))?);
    }
    let metrics = match config.metrics_listen {
        Some(a) => Some(
            tokio::net::TcpListener::bind(a)
                .await
                .with_context(|| format!("binding metrics address {a}"))?,
        ),
        None => None,
    };
    Ok((sockets, metrics))
}

/// SIGHUP: read the config again. A config that does not load, or whose
/// cluster DNS address cannot be set up, is rejected with the reason and the
/// running one stays. `worker_threads` sizes the process's runtime and only
/// changes on a restart; every other setting applies when the server
/// restarts in-process with the new config.
fn reload(args: &CommonArgs, running: &Config) -> Option<Config> {
    let mut new: Config = smarter_common::cli::reload(args, Path::new(DEFAULT_CONFIG_PATH))?;
    if new.worker_threads != running.worker_threads {
        tracing::warn!(
            running = running.worker_threads,
            configured = new.worker_threads,
            "SIGHUP: worker_threads changes on restart only"
        );
        new.worker_threads = running.worker_threads;
    }
    if let Err(e) = set_up_dummy(&new) {
        tracing::error!(error = %smarter_common::cli::error_line(e.as_ref()), "SIGHUP: new config rejected; still running the old one");
        return None;
    }
    tracing::info!("SIGHUP: config reloaded; restarting the server with it");
    Some(new)
}

async fn serve(mut config: Config, args: &CommonArgs) -> anyhow::Result<()> {
    let mut signals = smarter_common::signals::listen().context("installing signal handlers")?;
    // The config the server ran with before a reload, to fall back to when
    // the new one's addresses cannot be bound.
    let mut previous: Option<Config> = None;
    loop {
        let (sockets, metrics) = match (bind_all(&config).await, previous.take()) {
            (Ok(bound), _) => bound,
            (Err(e), Some(old)) => {
                tracing::error!(error = %smarter_common::cli::error_line(e.as_ref()), "SIGHUP: new config rejected; still running the old one");
                config = old;
                bind_all(&config).await?
            }
            (Err(e), None) => return Err(e),
        };
        let running = smarter_dns::service::start(&config, sockets, metrics)?;
        tracing::info!(
            dns = ?running.dns_addrs,
            metrics = ?running.metrics_addr,
            records_dir = %config.records_dir.display(),
            "serving"
        );
        let mut next = None;
        let stop = async {
            while let Some(ev) = signals.recv().await {
                match ev {
                    Event::Stop => break,
                    Event::Reload => {
                        if let Some(new) = reload(args, &config) {
                            next = Some(new);
                            break;
                        }
                    }
                }
            }
        };
        running.run_until(stop).await?;
        match next {
            Some(new) => previous = Some(std::mem::replace(&mut config, new)),
            None => break,
        }
    }
    tracing::info!("stopped");
    Ok(())
}
