//! smarter-debug-agent: the gateway side. Dials out to comms only (never
//! listens), logs in as `gateway:NAME` with its own key, pins comms' host
//! key, asks for a remote forward and keeps the tunnel up with keepalives
//! and exponential backoff. Every `forwarded-tcpip` channel comms opens is
//! one developer's SSH connection, served by the embedded SSH server in
//! [`session`].

pub mod config;
pub mod pods;
pub mod process;
pub mod recording;
pub mod session;

use std::sync::Arc;
use std::time::Duration;

use russh::client;
use russh::keys::{PrivateKey, PrivateKeyWithHashAlg, PublicKey};
use russh::{Channel, ChannelMsg};
use smarter_common::signals::Event;
use tokio::sync::mpsc::UnboundedReceiver;
use tokio::sync::{RwLock, oneshot};

use crate::keys;
use crate::proto::{self, AgentRequest};
use config::Config;

/// Errors of the agent.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// Key handling failed.
    #[error(transparent)]
    Key(#[from] keys::KeyError),
    /// Comms could not be asked.
    #[error("comms request failed: {0}")]
    Comms(String),
    /// `metrics_listen` could not be bound.
    #[error("metrics_listen: {0}")]
    Metrics(#[from] smarter_common::metrics::ListenError),
}

/// The tunnel's state for `/metrics` and `/readyz`.
#[derive(Debug, Default)]
pub struct TunnelStatus {
    up: std::sync::atomic::AtomicBool,
    connects: smarter_common::metrics::Counter,
    failures: smarter_common::metrics::Counter,
    last_error: std::sync::Mutex<String>,
}

impl TunnelStatus {
    fn connected(&self) {
        self.connects.inc();
        self.up.store(true, std::sync::atomic::Ordering::Relaxed);
    }

    fn down(&self, why: &str) {
        self.up.store(false, std::sync::atomic::Ordering::Relaxed);
        *self
            .last_error
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = why.to_string();
    }

    fn failed(&self, why: &str) {
        self.failures.inc();
        self.down(why);
    }
}

impl smarter_common::metrics::Endpoints for TunnelStatus {
    fn metrics(&self, out: &mut smarter_common::metrics::Exposition) {
        let up = self.up.load(std::sync::atomic::Ordering::Relaxed);
        out.gauge(
            "smarter_debug_agent_tunnel_up",
            "1 while the tunnel to comms is up.",
            u8::from(up),
        );
        out.counter(
            "smarter_debug_agent_tunnel_connects_total",
            "Tunnels to comms established.",
            self.connects.get(),
        );
        out.counter(
            "smarter_debug_agent_tunnel_failures_total",
            "Attempts to establish the tunnel to comms that failed.",
            self.failures.get(),
        );
    }

    /// Ready while the tunnel is up: only then can a developer reach the
    /// gateway, and a new agent version that cannot connect halts a rollout.
    fn readiness(&self) -> smarter_common::metrics::Readiness {
        if self.up.load(std::sync::atomic::Ordering::Relaxed) {
            smarter_common::metrics::Readiness::ready("tunnel to comms up")
        } else {
            let why = self
                .last_error
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .clone();
            smarter_common::metrics::Readiness::not_ready(if why.is_empty() {
                "connecting to comms".to_string()
            } else {
                format!("tunnel to comms down: {why}")
            })
        }
    }
}

/// How long the agent waits for comms to answer a request.
const COMMS_REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// What every session of this agent shares.
pub struct Agent {
    /// Configuration the tunnel was made with (its `tunnel_settings_differ`
    /// part changes only by reconnecting).
    pub config: Config,
    /// The latest valid config: what sessions and retries use
    /// ([`Agent::settings`]); SIGHUP replaces it without reconnecting.
    live: std::sync::RwLock<Config>,
    key: PrivateKey,
    comms_key: PublicKey,
    tunnel: RwLock<Option<Arc<client::Handle<Tunnel>>>>,
}

impl std::fmt::Debug for Agent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Agent")
            .field("gateway", &self.config.gateway_name)
            .finish()
    }
}

/// The settings that shape the tunnel to comms (its address and key, our
/// name and key, keepalives) and that `a` and `b` set differently: changing
/// any of them means reconnecting, which ends the sessions on the tunnel.
/// Everything else applies to the next session or retry as it is.
pub fn tunnel_settings_differ(a: &Config, b: &Config) -> Vec<&'static str> {
    let mut out = Vec::new();
    if a.comms_address != b.comms_address {
        out.push("comms_address");
    }
    if a.comms_host_key != b.comms_host_key {
        out.push("comms_host_key");
    }
    if a.gateway_name != b.gateway_name {
        out.push("gateway_name");
    }
    if a.state_dir != b.state_dir {
        out.push("state_dir");
    }
    if a.keepalive_secs != b.keepalive_secs {
        out.push("keepalive_secs");
    }
    out
}

impl Agent {
    /// The latest valid config (shell, sftp server, pod lookup, host
    /// namespaces, backoff): read when a session starts or a retry waits.
    pub fn settings(&self) -> Config {
        self.live
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// Sends `req` (with `body`) to comms over the tunnel and returns its stdout.
    pub async fn ask_comms(&self, req: &AgentRequest, body: &[u8]) -> Result<Vec<u8>, AgentError> {
        tokio::time::timeout(COMMS_REQUEST_TIMEOUT, self.ask_comms_inner(req, body))
            .await
            .map_err(|_| AgentError::Comms("comms did not answer in time".into()))?
    }

    async fn ask_comms_inner(
        &self,
        req: &AgentRequest,
        body: &[u8],
    ) -> Result<Vec<u8>, AgentError> {
        let handle = self
            .tunnel
            .read()
            .await
            .clone()
            .ok_or_else(|| AgentError::Comms("tunnel down".into()))?;
        let err = |e: russh::Error| AgentError::Comms(e.to_string());
        let mut ch: Channel<client::Msg> = handle.channel_open_session().await.map_err(err)?;
        ch.exec(true, req.to_command()).await.map_err(err)?;
        if req.has_body() {
            for chunk in body.chunks(32 * 1024) {
                ch.data_bytes(chunk.to_vec()).await.map_err(err)?;
            }
            ch.eof().await.map_err(err)?;
        }
        let mut out = Vec::new();
        let mut errout = Vec::new();
        let mut status = None;
        while let Some(msg) = ch.wait().await {
            match msg {
                ChannelMsg::Data { data } => out.extend_from_slice(&data),
                ChannelMsg::ExtendedData { data, .. } => errout.extend_from_slice(&data),
                ChannelMsg::ExitStatus { exit_status } => status = Some(exit_status),
                ChannelMsg::Close => break,
                _ => {}
            }
        }
        match status {
            Some(0) => Ok(out),
            _ => Err(AgentError::Comms(
                String::from_utf8_lossy(&errout).trim().to_string(),
            )),
        }
    }
}

/// The client side of the tunnel to comms.
#[derive(Debug)]
pub struct Tunnel {
    agent: Arc<Agent>,
    closed: Option<oneshot::Sender<()>>,
}

impl Drop for Tunnel {
    fn drop(&mut self) {
        if let Some(c) = self.closed.take() {
            let _ = c.send(());
        }
    }
}

impl client::Handler for Tunnel {
    type Error = russh::Error;

    async fn check_server_key(
        &mut self,
        key: &russh::keys::PublicKeyOrCertificate,
    ) -> Result<bool, Self::Error> {
        let ok = match key {
            russh::keys::PublicKeyOrCertificate::PublicKey { key, .. } => {
                key.key_data() == self.agent.comms_key.key_data()
            }
            _ => false,
        };
        if !ok {
            tracing::error!("comms host key does not match comms_host_key; refusing to connect");
        }
        Ok(ok)
    }

    async fn server_channel_open_forwarded_tcpip(
        &mut self,
        channel: Channel<client::Msg>,
        _connected_address: &str,
        _connected_port: u32,
        originator_address: &str,
        _originator_port: u32,
        reply: client::ChannelOpenHandle,
        _session: &mut client::Session,
    ) -> Result<(), Self::Error> {
        let Some(session_id) = proto::parse_originator(originator_address) else {
            tracing::warn!(
                originator_address,
                "forwarded channel without session id refused"
            );
            reply
                .reject(russh::ChannelOpenFailure::AdministrativelyProhibited)
                .await;
            return Ok(());
        };
        reply.accept().await;
        let agent = self.agent.clone();
        tokio::spawn(async move {
            session::serve(agent, session_id, channel).await;
        });
        Ok(())
    }
}

fn client_config(config: &Config) -> Arc<client::Config> {
    Arc::new(client::Config {
        // Tells comms this is a tunnel, not a developer (see `is_agent_id`).
        client_id: russh::SshId::Standard(std::borrow::Cow::Borrowed(
            crate::transfer::AGENT_SSH_ID,
        )),
        keepalive_interval: Some(Duration::from_secs(config.keepalive_secs)),
        keepalive_max: 3,
        inactivity_timeout: None,
        nodelay: true,
        window_size: crate::transfer::WINDOW,
        maximum_packet_size: crate::transfer::MAX_PACKET,
        channel_buffer_size: crate::transfer::CHANNEL_BUFFER,
        // The client's order decides the cipher, and comms runs our code too.
        preferred: russh::Preferred {
            cipher: crate::transfer::tunnel_ciphers(),
            ..Default::default()
        },
        ..Default::default()
    })
}

/// One connection: connect, authenticate, ask for the forward, wait until it drops.
async fn connect_once(agent: &Arc<Agent>) -> Result<oneshot::Receiver<()>, String> {
    let (closed_tx, closed_rx) = oneshot::channel();
    let handler = Tunnel {
        agent: agent.clone(),
        closed: Some(closed_tx),
    };
    let config = client_config(&agent.config);
    let socket = tokio::net::TcpStream::connect(agent.config.comms_address.as_str())
        .await
        .map_err(|e| format!("connecting to {}: {e}", agent.config.comms_address))?;
    if let Err(e) = socket.set_nodelay(true) {
        tracing::debug!(error = %e, "set_nodelay failed");
    }
    // russh reads each packet with two exact reads; buffered, about one recv per 64 KiB.
    let socket = tokio::io::BufReader::with_capacity(crate::transfer::READ_BUFFER, socket);
    let mut handle = client::connect_stream(config, socket, handler)
        .await
        .map_err(|e| format!("connecting to {}: {e}", agent.config.comms_address))?;
    let user = format!(
        "{}{}",
        crate::comms::ssh::GATEWAY_USER_PREFIX,
        agent.config.gateway_name
    );
    let auth = handle
        .authenticate_publickey(
            user,
            PrivateKeyWithHashAlg::new(Arc::new(agent.key.clone()), None),
        )
        .await
        .map_err(|e| format!("authenticating: {e}"))?;
    if !auth.success() {
        return Err(
            "comms refused our key (is this gateway enrolled with state_dir/agent_key.pub?)".into(),
        );
    }
    handle
        .tcpip_forward(agent.config.gateway_name.clone(), 22)
        .await
        .map_err(|e| format!("requesting forward: {e}"))?;
    *agent.tunnel.write().await = Some(Arc::new(handle));
    Ok(closed_rx)
}

/// Runs the agent until a stop signal. On SIGHUP `reload` is asked for the
/// config again: `None` (a broken file, logged) keeps everything as it is; a
/// config that changes a tunnel setting ([`tunnel_settings_differ`]) replaces
/// the running one by reconnecting with it, which ends the sessions on the
/// tunnel; any other change applies at once to new sessions and the next
/// retry, and live sessions go on.
pub async fn run(
    mut config: Config,
    mut signals: UnboundedReceiver<Event>,
    reload: impl Fn() -> Option<Config>,
) -> Result<(), AgentError> {
    let status = Arc::new(TunnelStatus::default());
    // Bound once: a new metrics_listen applies on restart (the tunnel's
    // reconnects keep the endpoint and its counters).
    let _metrics =
        smarter_common::metrics::start(&config.metrics_listen, Arc::clone(&status)).await?;
    loop {
        match run_with(config, &mut signals, &reload, &status).await? {
            Some(new) => {
                status.down("reconnecting with the new tunnel settings");
                config = new;
            }
            None => return Ok(()),
        }
    }
}

/// One life of the agent: `Ok(Some(config))` when a reload asks to start
/// again with that config, `Ok(None)` on a stop signal.
async fn run_with(
    config: Config,
    signals: &mut UnboundedReceiver<Event>,
    reload: &impl Fn() -> Option<Config>,
    status: &TunnelStatus,
) -> Result<Option<Config>, AgentError> {
    let key = keys::load_or_create(&config.state_dir.join("agent_key"))?;
    let comms_key = keys::parse_public(&config.comms_host_key)?;
    tracing::info!(
        gateway = %config.gateway_name,
        comms = %config.comms_address,
        key = %keys::public_line(key.public_key()),
        "agent started"
    );
    let agent = Arc::new(Agent {
        live: std::sync::RwLock::new(config.clone()),
        config,
        key,
        comms_key,
        tunnel: RwLock::new(None),
    });
    let me = agent.clone();
    let stop = async move {
        while let Some(ev) = signals.recv().await {
            match ev {
                Event::Stop => break,
                Event::Reload => {
                    let Some(new) = reload() else { continue };
                    let differ = tunnel_settings_differ(&me.config, &new);
                    if !differ.is_empty() {
                        tracing::info!(
                            settings = %differ.join(", "),
                            "SIGHUP: tunnel settings changed; reconnecting (ends the sessions on the tunnel)"
                        );
                        return Some(new);
                    }
                    if format!("{new:?}") == format!("{:?}", me.settings()) {
                        tracing::info!("SIGHUP: config unchanged");
                    } else {
                        *me.live
                            .write()
                            .unwrap_or_else(std::sync::PoisonError::into_inner) = new;
                        tracing::info!(
                            "SIGHUP: config applied without reconnecting (new sessions and retries use it)"
                        );
                    }
                }
            }
        }
        None
    };
    tokio::pin!(stop);
    let mut backoff = Duration::from_secs(1);
    loop {
        let attempt = connect_once(&agent);
        let result = tokio::select! {
            r = attempt => r,
            next = &mut stop => return Ok(next),
        };
        match result {
            Ok(closed) => {
                tracing::info!("tunnel to comms up");
                status.connected();
                backoff = Duration::from_secs(1);
                tokio::select! {
                    _ = closed => {}
                    next = &mut stop => return Ok(next),
                }
                *agent.tunnel.write().await = None;
                status.down("tunnel lost");
                tracing::warn!("tunnel to comms lost");
            }
            Err(e) => {
                status.failed(&e);
                tracing::warn!(error = %e, retry_in = ?backoff, "tunnel to comms failed");
            }
        }
        // Up to 50 % jitter, so a fleet does not reconnect in lockstep after a comms restart.
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos() as u64)
            .unwrap_or(0);
        let jitter = Duration::from_millis(nanos % (backoff.as_millis() as u64 / 2 + 1));
        tokio::select! {
            _ = tokio::time::sleep(backoff + jitter) => {}
            next = &mut stop => return Ok(next),
        }
        backoff = (backoff * 2).min(Duration::from_secs(agent.settings().max_backoff_secs));
    }
}
