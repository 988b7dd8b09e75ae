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

/// The settings of `config` that can change while comms runs: the session
/// limits, the admin token, the SSH authentication delay and, when the API
/// already speaks TLS, its certificate and key. Everything else (listen
/// addresses, state directory, turning TLS on or off) binds sockets or opens
/// files every live session shares, so it changes only on a restart.
struct Live {
    hub: Arc<ssh::Hub>,
    api: Arc<api::Api>,
    ssh_config: ssh::SharedConfig,
    tls: api::SharedTls,
    host_key: russh::keys::PrivateKey,
}

fn limits(config: &Config) -> ssh::Limits {
    ssh::Limits {
        max_sessions_per_developer: config.max_sessions_per_developer,
        idle_timeout: (config.idle_timeout_secs > 0)
            .then(|| Duration::from_secs(config.idle_timeout_secs)),
    }
}

impl Live {
    /// SIGHUP with a config that loaded: apply what can change now, keep the
    /// running value (and say so) for what needs a restart. A TLS
    /// certificate or key that cannot be used rejects the whole config.
    /// Returns the config now in force.
    fn apply(&self, running: &Config, mut new: Config) -> Config {
        let mut restart = Vec::new();
        if new.ssh_listen != running.ssh_listen {
            restart.push(format!("ssh_listen (running {})", running.ssh_listen));
            new.ssh_listen = running.ssh_listen;
        }
        if new.api_listen != running.api_listen {
            restart.push(format!("api_listen (running {})", running.api_listen));
            new.api_listen = running.api_listen;
        }
        if new.state_dir != running.state_dir {
            restart.push(format!(
                "state_dir (running {})",
                running.state_dir.display()
            ));
            new.state_dir = running.state_dir.clone();
        }
        if new.tls_cert.is_some() != running.tls_cert.is_some() {
            restart.push(format!(
                "tls_cert/tls_key (running {})",
                if running.tls_cert.is_some() {
                    "with TLS"
                } else {
                    "without TLS"
                }
            ));
            new.tls_cert = running.tls_cert.clone();
            new.tls_key = running.tls_key.clone();
        }
        let tls = match (&new.tls_cert, &new.tls_key) {
            (Some(c), Some(k)) => match api::tls_acceptor(c, k) {
                Ok(a) => Some(a),
                Err(reason) => {
                    tracing::error!(
                        error = %reason,
                        "SIGHUP: new config rejected; still running the old one"
                    );
                    return running.clone();
                }
            },
            _ => None,
        };
        if tls.is_some() {
            *self
                .tls
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner) = tls;
        }
        self.hub.set_limits(limits(&new));
        self.api.set_token(new.admin_token_sha256.as_deref());
        *self
            .ssh_config
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = ssh::server_configs(
            self.host_key.clone(),
            Duration::from_millis(new.auth_rejection_ms),
            new.aes_gcm_only,
        );
        if !restart.is_empty() {
            tracing::warn!(
                settings = %restart.join(", "),
                "SIGHUP: these settings change on restart only (a restart ends live sessions); \
                 kept the running values"
            );
        }
        tracing::info!(
            max_sessions_per_developer = new.max_sessions_per_developer,
            idle_timeout_secs = new.idle_timeout_secs,
            auth_rejection_ms = new.auth_rejection_ms,
            aes_gcm_only = new.aes_gcm_only,
            admin_token = new.admin_token_sha256.is_some(),
            tls_reloaded = new.tls_cert.is_some(),
            "SIGHUP: config applied"
        );
        new
    }
}

/// Runs comms until a stop signal.
///
/// On SIGHUP `reload` is asked for the config again: a config that does not
/// load is rejected with its reason (logged) and the running one stays;
/// otherwise what can change live is applied (see [`Live`]) and what needs a
/// restart is named in the log.
pub async fn run(
    config: Config,
    mut signals: UnboundedReceiver<Event>,
    reload: impl Fn() -> Option<Config>,
) -> Result<(), CommsError> {
    std::fs::create_dir_all(&config.state_dir).map_err(|source| CommsError::StateDir {
        path: config.state_dir.clone(),
        source,
    })?;
    let host_key = keys::load_or_create(&config.state_dir.join("host_key"))?;
    let store = Arc::new(store::Store::open(&config.state_dir.join("comms.db"))?);
    let hub = ssh::Hub::new(store, config.state_dir.join("recordings"), limits(&config));
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
    let live = Live {
        ssh_config: Arc::new(std::sync::Mutex::new(ssh::server_configs(
            host_key.clone(),
            Duration::from_millis(config.auth_rejection_ms),
            config.aes_gcm_only,
        ))),
        api: api::Api::new(hub.clone(), config.admin_token_sha256.as_deref()),
        tls: Arc::new(std::sync::Mutex::new(tls)),
        hub: hub.clone(),
        host_key,
    };
    tokio::spawn(hub.clone().watch_sessions());
    let ssh_task = ssh::serve(hub.clone(), live.ssh_config.clone(), ssh_listener);
    let api_task = api::serve(live.api.clone(), api_listener, live.tls.clone());
    let mut running = config;
    tokio::select! {
        r = ssh_task => r.map_err(|source| CommsError::Serve { what: "ssh", source }),
        r = api_task => r.map_err(|source| CommsError::Serve { what: "api", source }),
        _ = async {
            while let Some(ev) = signals.recv().await {
                match ev {
                    Event::Stop => break,
                    Event::Reload => {
                        if let Some(new) = reload() {
                            running = live.apply(&running, new);
                        }
                    }
                }
            }
        } => {
            tracing::info!("comms stopping");
            Ok(())
        }
    }
}
