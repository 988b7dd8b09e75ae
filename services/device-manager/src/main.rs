//! `smarter-device-manager`: parse flags, load config, run.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, bail};
use clap::{Parser, Subcommand};
use smarter_common::cli::CommonArgs;
use smarter_device_manager::config::{self, Config};
use smarter_device_manager::discover::{self, Discovery};
use smarter_device_manager::{rules, scan, service};

/// Kubelet device plugin exposing host devices as `smarter-devices/*` resources.
///
/// `--config` takes our TOML file or the original's conf.yaml list.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Cli {
    #[command(flatten)]
    common: CommonArgs,
    /// Device root to scan (overrides `dev_root`; default /dev).
    #[arg(long, value_name = "DIR", global = true)]
    dev_root: Option<PathBuf>,
    /// Sysfs root (overrides `sys_root`; default /sys).
    #[arg(long, value_name = "DIR", global = true)]
    sys_root: Option<PathBuf>,
    /// Kubelet device-plugins directory (overrides `plugin_dir`; default
    /// /var/lib/kubelet/device-plugins; k3s < 1.18:
    /// /var/lib/rancher/k3s/agent/kubelet/device-plugins).
    #[arg(long, value_name = "DIR", global = true)]
    plugin_dir: Option<PathBuf>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Print the resources and devices the rules match on this host.
    List,
}

fn main() -> ExitCode {
    tune_malloc();
    let cli = Cli::parse();
    smarter_common::cli::exit_code("smarter-device-manager", run(cli))
}

fn load(cli: &Cli) -> anyhow::Result<Config> {
    let mut c = config::load_or_default(cli.common.config_path())?;
    if let Some(d) = &cli.dev_root {
        c.dev_root.clone_from(d);
    }
    if let Some(d) = &cli.sys_root {
        c.sys_root.clone_from(d);
    }
    if let Some(d) = &cli.plugin_dir {
        c.plugin_dir.clone_from(d);
    }
    Ok(c)
}

fn discover_host(c: &Config) -> anyhow::Result<Discovery> {
    let rules =
        rules::compile(&c.effective_rules(), "rules").map_err(|e| anyhow::anyhow!("{e}"))?;
    let (inv, _) = scan::scan(&c.dev_root, &c.sys_root);
    let info = scan::SysfsInfo {
        sys_root: c.sys_root.clone(),
        udev_data_dir: c.udev_data_dir.clone(),
    };
    Ok(discover::discover(&rules, &inv, &info, &c.dev_root))
}

fn run(cli: Cli) -> anyhow::Result<()> {
    smarter_common::logging::init(&cli.common.log_level)?;
    let config = load(&cli)?;
    let shown = cli.common.config_path().map_or_else(
        || "built-in defaults".to_string(),
        |p| p.display().to_string(),
    );
    if cli.common.check_config {
        // Names that only the host can tell (per-node rules) are checked too.
        let d = discover_host(&config)?;
        if !d.problems.is_empty() {
            bail!("config {shown}: {}", d.problems.join("; "));
        }
        println!("config OK: {shown}");
        return Ok(());
    }
    if let Some(Command::List) = cli.command {
        return list(&config);
    }
    // Everything below works unprivileged: drop every capability.
    smarter_common::capabilities::retain_only(&[]).context("dropping capabilities")?;
    let signals = smarter_common::signals::listen().context("installing signal handlers")?;
    let path = cli.common.config_path().map(Path::to_path_buf);
    let default = Path::new(config::DEFAULT_CONFIG_PATH);
    let watched = path
        .clone()
        .or_else(|| default.exists().then(|| default.to_path_buf()))
        .filter(|_| config.watch_config);
    let overrides = (cli.dev_root, cli.sys_root, cli.plugin_dir);
    let reload: service::Reloader = Box::new(move || {
        let mut c = config::load_or_default(path.as_deref()).map_err(|e| e.to_string())?;
        if let Some(d) = &overrides.0 {
            c.dev_root.clone_from(d);
        }
        if let Some(d) = &overrides.1 {
            c.sys_root.clone_from(d);
        }
        if let Some(d) = &overrides.2 {
            c.plugin_dir.clone_from(d);
        }
        Ok(c)
    });
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting tokio")?
        .block_on(service::run(config, watched, reload, signals))?;
    Ok(())
}

/// glibc malloc tuned for a small resident set
/// (`docs/decisions/0125-h2-crate-conformance-and-memory-bound.md`):
/// * one arena instead of one per thread (up to 8 per core): with a few
///   threads, more arenas only keep more free memory resident (1,000
///   one-node resources with their kubelet connections open: 7.5 MiB
///   resident with it, 9.8 MiB without);
/// * blocks of 4 KiB and more get their own mapping (`M_MMAP_THRESHOLD`)
///   and the heap grows by exactly what it needs (`M_TOP_PAD` 0), so the
///   large, short-lived buffers of a scan or of a ListAndWatch answer
///   listing 1,000 devices are returned to the kernel when freed instead of
///   staying in the heap. Without the two: 0.2 MiB more anonymous memory
///   with the default rules, 0.3 MiB more with 1,000 pooled nodes, each
///   alone recovering part of it. glibc falls back to the heap when a
///   mapping fails.
fn tune_malloc() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets glibc tunables; it is called first thing
    // in main, before any other thread exists.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 1);
        libc::mallopt(libc::M_MMAP_THRESHOLD, 4096);
        libc::mallopt(libc::M_TOP_PAD, 0);
    }
}

fn list(c: &Config) -> anyhow::Result<()> {
    let d = discover_host(c)?;
    if d.resources.is_empty() {
        println!("no resources match under {}", c.dev_root.display());
    }
    print!("{}", discover::render(&d));
    Ok(())
}
