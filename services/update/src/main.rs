//! `smarter-update`: the boot health gate (`health-gate`) and the OS update
//! agent (`agent`).

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use smarter_common::cli::{CommonArgs, Startup};
use smarter_update::agent::{Agent, Pause, SharedStatus, Status};
use smarter_update::agent_config::{AgentConfig, DEFAULT_AGENT_CONFIG_PATH};
use smarter_update::config::{Config, DEFAULT_CONFIG_PATH};
use smarter_update::gate::{self, Report, Verdict};
use smarter_update::status;

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
    /// The OS update agent (a DaemonSet pod): download the desired bundle,
    /// have RAUC install it, reboot in the reboot window, and be ready once
    /// the desired version is booted and marked good. Serves /healthz,
    /// /readyz and /metrics. SIGHUP reloads the config, SIGTERM stops.
    /// Exit status: 0 stopped by a signal, 1 could not start (with
    /// --check-config: 0 usable, 1 not).
    Agent {
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
        Command::Agent { common } => agent(&common),
    }
}

fn agent(common: &CommonArgs) -> ExitCode {
    const AGENT: &str = "smarter-update-agent";
    if let Err(e) = smarter_common::logging::init(&common.log_level) {
        eprintln!("{AGENT}: error: {e}");
        return ExitCode::FAILURE;
    }
    let config: AgentConfig =
        match smarter_common::cli::startup(common, Path::new(DEFAULT_AGENT_CONFIG_PATH)) {
            Ok(Startup::Checked) => return ExitCode::SUCCESS,
            Ok(Startup::Run(c)) => c,
            Err(e) => {
                eprintln!("{AGENT}: error: {}", smarter_common::cli::error_line(&e));
                return ExitCode::FAILURE;
            }
        };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("{AGENT}: error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(run_agent(config, common));
    // A download in a blocking task must not hold up the exit.
    runtime.shutdown_timeout(Duration::from_secs(1));
    smarter_common::cli::exit_code(AGENT, result)
}

async fn run_agent(config: AgentConfig, common: &CommonArgs) -> anyhow::Result<()> {
    use smarter_common::signals::Event;
    let mut signals = smarter_common::signals::listen()?;
    let listener = tokio::net::TcpListener::bind(&config.listen)
        .await
        .with_context(|| format!("cannot listen on {}", config.listen))?;
    let listen = listener
        .local_addr()
        .with_context(|| format!("cannot listen on {}", config.listen))?;
    tracing::info!(%listen, desired_file = %config.desired_file.display(),
        data_dir = %config.data_dir.display(), "update agent starting: /healthz /readyz /metrics");
    let status: SharedStatus = Arc::new(Mutex::new(Status::default()));

    // The system bus (DBUS_SYSTEM_BUS_ADDRESS, else /run/dbus/system_bus_socket);
    // not ready until it answers.
    let counters = Arc::new(smarter_update::download::Counters::default());
    let server = tokio::spawn(status::serve(
        listener,
        Arc::clone(&status),
        Arc::clone(&counters),
    ));
    // The connect itself is bounded and raced against the signals: a bus socket
    // that accepts but never finishes the handshake (a wedged dbus-daemon) must
    // neither hang the agent nor make it deaf to SIGTERM.
    let connect_timeout = Duration::from_secs(config.connect_timeout_s);
    let mut reload_pending = false;
    let bus = loop {
        let outcome = tokio::select! {
            r = tokio::time::timeout(connect_timeout, zbus::Connection::system()) => r,
            event = signals.recv() => match event {
                Some(Event::Reload) => {
                    reload_pending = true;
                    continue;
                }
                Some(Event::Stop) | None => {
                    server.abort();
                    return Ok(());
                }
            },
        };
        let error = match outcome {
            Ok(Ok(bus)) => break bus,
            Ok(Err(e)) => e.to_string(),
            Err(_) => format!("no answer within {} s", connect_timeout.as_secs()),
        };
        tracing::error!(%error, "cannot connect to the system bus; retrying");
        if let Ok(mut s) = status.lock() {
            s.reason = format!("cannot connect to the system bus: {error}");
            s.last_error = Some(s.reason.clone());
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(config.retry_interval_s.min(30))) => {}
            event = signals.recv() => match event {
                Some(Event::Reload) => reload_pending = true,
                Some(Event::Stop) | None => {
                    server.abort();
                    return Ok(());
                }
            },
        }
    };
    let mut agent = Agent::with_counters(config, bus, Arc::clone(&status), counters);
    if reload_pending {
        reload_config(&mut agent, common);
    }
    loop {
        // A round is never cut short by SIGHUP (a download or install in flight
        // must not be abandoned while a new downloader starts on the same
        // files); the reload waits for the round's end. SIGTERM stops at once:
        // a partial download resumes at the next start.
        let mut reload = false;
        let pause = {
            let round = agent.round();
            tokio::pin!(round);
            loop {
                tokio::select! {
                    pause = &mut round => break Some(pause),
                    event = signals.recv() => match event {
                        Some(Event::Reload) => reload = true,
                        Some(Event::Stop) | None => break None,
                    },
                }
            }
        };
        let Some(mut pause) = pause else { break };
        if reload {
            reload_config(&mut agent, common);
            pause = Pause::None;
        }
        tokio::select! {
            _ = tokio::time::sleep(agent.pause_duration(pause)) => {}
            event = signals.recv() => match event {
                Some(Event::Reload) => reload_config(&mut agent, common),
                Some(Event::Stop) | None => break,
            },
        }
    }
    tracing::info!("update agent stopping");
    server.abort();
    Ok(())
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

/// SIGHUP: load the config again; a broken one is logged and the old one kept.
fn reload_config(agent: &mut Agent, common: &CommonArgs) {
    if let Some(config) =
        smarter_common::cli::reload::<AgentConfig>(common, Path::new(DEFAULT_AGENT_CONFIG_PATH))
    {
        tracing::info!("SIGHUP: config reloaded");
        agent.reconfigure(config);
    }
}
