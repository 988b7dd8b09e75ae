//! smarter-comms: the cloud side. An SSH endpoint that agents dial into and
//! developers jump through ([`ssh`]), a REST API to manage who may reach
//! which gateway ([`api`]), and the SQLite state behind both ([`store`]).

pub mod api;
pub mod config;
pub mod ssh;
pub mod store;

use std::sync::Arc;
use std::time::Duration;

use smarter_common::signals::Event;
use tokio::sync::mpsc::UnboundedReceiver;

use crate::keys;
use config::Config;

/// Errors that stop comms.
#[derive(Debug, thiserror::Error)]
pub enum CommsError {
    /// State directory could not be created.
    #[error("creating state directory {path}: {source}")]
    StateDir {
        /// Directory.
        path: std::path::PathBuf,
        /// Cause.
        source: std::io::Error,
    },
    /// Binding a listener failed.
    #[error("binding {what} on {addr}: {source}")]
    Bind {
        /// Which listener.
        what: &'static str,
        /// Address.
        addr: std::net::SocketAddr,
        /// Cause.
        source: std::io::Error,
    },
    /// Key error.
    #[error(transparent)]
    Key(#[from] keys::KeyError),
    /// Store error.
    #[error(transparent)]
    Store(#[from] store::StoreError),
    /// TLS configuration.
    #[error("API TLS: {0}")]
    Tls(String),
    /// A server stopped.
    #[error("{what} server failed: {source}")]
    Serve {
        /// Which server.
        what: &'static str,
        /// Cause.
        source: std::io::Error,
    },
}

/// Runs comms until a stop signal.
///
/// Comms applies its config at start only: its listeners, host key, store and
/// limits are shared by every live session, and a restart in the process would
/// end them all, so that is left to the operator. On SIGHUP `reload` is asked
/// for the config again, and the log says whether it is valid and, if it
/// changed, that a restart applies it.
pub async fn run(
    config: Config,
    mut signals: UnboundedReceiver<Event>,
    reload: impl Fn() -> Option<Config>,
) -> Result<(), CommsError> {
    let running = format!("{config:?}");
    std::fs::create_dir_all(&config.state_dir).map_err(|source| CommsError::StateDir {
        path: config.state_dir.clone(),
        source,
    })?;
    let host_key = keys::load_or_create(&config.state_dir.join("host_key"))?;
    let store = Arc::new(store::Store::open(&config.state_dir.join("comms.db"))?);
    let limits = ssh::Limits {
        max_sessions_per_developer: config.max_sessions_per_developer,
        idle_timeout: (config.idle_timeout_secs > 0)
            .then(|| Duration::from_secs(config.idle_timeout_secs)),
    };
    let hub = ssh::Hub::new(store, config.state_dir.join("recordings"), limits);
    let ssh_listener = tokio::net::TcpListener::bind(config.ssh_listen)
        .await
        .map_err(|source| CommsError::Bind {
            what: "ssh",
            addr: config.ssh_listen,
            source,
        })?;
    let api_listener = tokio::net::TcpListener::bind(config.api_listen)
        .await
        .map_err(|source| CommsError::Bind {
            what: "api",
            addr: config.api_listen,
            source,
        })?;
    let tls = match (&config.tls_cert, &config.tls_key) {
        (Some(c), Some(k)) => Some(api::tls_acceptor(c, k).map_err(CommsError::Tls)?),
        _ => None,
    };
    if config.admin_token_sha256.is_none() {
        tracing::warn!("admin_token_sha256 not set: the REST API refuses every admin call");
    }
    tracing::info!(
        ssh_listen = %config.ssh_listen,
        api_listen = %config.api_listen,
        tls = tls.is_some(),
        host_key = %keys::fingerprint(host_key.public_key()),
        "comms started"
    );
    let ssh_config = ssh::server_config(host_key, Duration::from_millis(config.auth_rejection_ms));
    let api = api::Api::new(hub.clone(), config.admin_token_sha256.as_deref());
    tokio::spawn(hub.clone().watch_sessions());
    let ssh_task = ssh::serve(hub.clone(), ssh_config, ssh_listener);
    let api_task = api::serve(api, api_listener, tls);
    tokio::select! {
        r = ssh_task => r.map_err(|source| CommsError::Serve { what: "ssh", source }),
        r = api_task => r.map_err(|source| CommsError::Serve { what: "api", source }),
        _ = async {
            while let Some(ev) = signals.recv().await {
                match ev {
                    Event::Stop => break,
                    Event::Reload => match reload() {
                        Some(new) if format!("{new:?}") != running => tracing::warn!(
                            "SIGHUP: the config is valid and changed; smarter-comms applies it on \
                             restart only (a restart ends live sessions)"
                        ),
                        Some(_) => tracing::info!("SIGHUP: config valid and unchanged"),
                        None => {}
                    },
                }
            }
        } => {
            tracing::info!("comms stopping");
            Ok(())
        }
    }
}
