//! The comms SSH endpoint: gateways log in as `gateway:NAME` and ask for a
//! remote forward; developers log in with their own name and open a
//! `direct-tcpip` channel to host `NAME` (what `ssh -J` does). Comms checks
//! the developer, their key and grant, then bridges that channel into a
//! `forwarded-tcpip` channel on the gateway's connection. The bytes inside
//! are an SSH session between the developer and the agent: comms cannot read
//! them.
//!
//! The agent also runs small commands on comms over its own connection
//! (`exec` on a session channel), see [`crate::proto`].

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use russh::keys::PrivateKey;
use russh::server::{self, Auth, ChannelOpenHandle, Msg, Session, VerifiedPublicKey};
use russh::{
    Channel, ChannelId, ChannelMsg, ChannelOpenFailure, ChannelReadHalf, ChannelWriteHalf,
    MethodKind, MethodSet,
};
use tokio::sync::{Notify, oneshot};

use crate::comms::store::{Store, now};
use crate::keys;
use crate::policy::{self, Denial, Target};
use crate::proto::{self, AgentRequest, AuthorizeReply};

/// SSH user prefix with which agents log in.
pub const GATEWAY_USER_PREFIX: &str = "gateway:";

/// What a live session needs so it can be ended from outside.
#[derive(Debug)]
struct LiveSession {
    developer: String,
    gateway: String,
    target: Option<Target>,
    /// Fingerprints of the developer keys this session was authenticated
    /// with: the one that logged in to comms, and the one the agent checked.
    keys: Vec<String>,
    cancel: Option<oneshot::Sender<String>>,
}

/// A developer's SSH connection to comms, to end it when its key goes.
#[derive(Debug)]
struct DeveloperConn {
    developer: String,
    key: String,
    handle: server::Handle,
}

#[derive(Debug, Clone)]
struct GatewayConn {
    conn_id: u64,
    handle: server::Handle,
    address: String,
    port: u32,
}

/// State shared by all SSH connections and the REST API.
#[derive(Debug)]
pub struct Hub {
    /// Persistent state.
    pub store: Arc<Store>,
    gateways: Mutex<HashMap<String, GatewayConn>>,
    live: Mutex<HashMap<i64, LiveSession>>,
    developers: Mutex<HashMap<u64, DeveloperConn>>,
    changed: Notify,
    recordings_dir: PathBuf,
    next_conn: AtomicU64,
    limits: Mutex<Limits>,
}

/// Per-session limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Live sessions one developer may have at once (0 = unlimited).
    pub max_sessions_per_developer: usize,
    /// A session with no bytes either way for this long is ended.
    pub idle_timeout: Option<Duration>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    match m.lock() {
        Ok(g) => g,
        Err(p) => p.into_inner(),
    }
}

impl Hub {
    /// A hub over `store`, keeping recordings in `recordings_dir`.
    pub fn new(store: Arc<Store>, recordings_dir: PathBuf, limits: Limits) -> Arc<Hub> {
        Arc::new(Hub {
            store,
            gateways: Mutex::new(HashMap::new()),
            live: Mutex::new(HashMap::new()),
            developers: Mutex::new(HashMap::new()),
            changed: Notify::new(),
            recordings_dir,
            next_conn: AtomicU64::new(1),
            limits: Mutex::new(limits),
        })
    }

    /// Whether an agent for `gateway` is connected.
    pub fn gateway_connected(&self, gateway: &str) -> bool {
        lock(&self.gateways).contains_key(gateway)
    }

    /// How many gateways' agents are connected, and how many developer
    /// sessions are live.
    pub fn counts(&self) -> (usize, usize) {
        (lock(&self.gateways).len(), lock(&self.live).len())
    }

    /// The limits in force.
    pub fn limits(&self) -> Limits {
        *lock(&self.limits)
    }

    /// Replaces the limits (SIGHUP): new sessions get the new idle timeout,
    /// and the session cap applies from the next session opened.
    pub fn set_limits(&self, limits: Limits) {
        *lock(&self.limits) = limits;
    }

    /// Where recordings are stored.
    pub fn recordings_dir(&self) -> &std::path::Path {
        &self.recordings_dir
    }

    /// Tells the session watcher that grants or accounts changed.
    pub fn state_changed(&self) {
        self.changed.notify_one();
    }

    fn audit(
        &self,
        event: &str,
        dev: Option<&str>,
        gw: Option<&str>,
        session: Option<i64>,
        detail: &str,
    ) {
        if let Err(e) = self.store.audit(event, dev, gw, session, detail) {
            tracing::error!(error = %e, event, "audit write failed");
        }
    }

    /// Re-checks every live session and ends those no longer allowed;
    /// returns the earliest future expiry among them.
    fn sweep(&self) -> Option<i64> {
        self.drop_removed_gateways();
        let t = now();
        let mut next: Option<i64> = None;
        let mut ended = Vec::new();
        {
            let live = lock(&self.live);
            for (id, s) in live.iter() {
                if let Some(key) = self.deleted_key(&s.developer, &s.keys) {
                    ended.push((*id, format!("key {key} deleted")));
                    continue;
                }
                let verdict = self.check(&s.developer, &s.gateway, s.target.as_ref(), t);
                match verdict {
                    Ok(allowed) => {
                        if let Some(e) = allowed.ends_at {
                            next = Some(next.map_or(e, |n| n.min(e)));
                        }
                    }
                    Err(d) => ended.push((*id, d.to_string())),
                }
            }
        }
        let mut live = lock(&self.live);
        for (id, reason) in ended {
            if let Some(s) = live.get_mut(&id)
                && let Some(c) = s.cancel.take()
            {
                let _ = c.send(reason);
            }
        }
        drop(live);
        self.drop_developers_with_deleted_keys();
        next
    }

    /// The first of `keys` that is no longer one of `developer`'s keys. A
    /// store that cannot be read ends nothing (the grant check reports it).
    fn deleted_key<'a>(&self, developer: &str, keys: &'a [String]) -> Option<&'a String> {
        keys.iter()
            .find(|k| matches!(self.store.developer_has_key(developer, k), Ok(false)))
    }

    /// Disconnects developers logged in to comms with a key since deleted, so
    /// the connection cannot open new sessions. Their sessions were ended
    /// (and audited with the key) just before.
    fn drop_developers_with_deleted_keys(&self) {
        let gone: Vec<(u64, String, String, server::Handle)> = lock(&self.developers)
            .iter()
            .filter(|(_, d)| {
                matches!(
                    self.store.developer_has_key(&d.developer, &d.key),
                    Ok(false)
                )
            })
            .map(|(id, d)| (*id, d.developer.clone(), d.key.clone(), d.handle.clone()))
            .collect();
        for (id, developer, key, handle) in gone {
            lock(&self.developers).remove(&id);
            self.audit(
                "developer.disconnected",
                Some(&developer),
                None,
                None,
                &format!("key {key} deleted"),
            );
            tokio::spawn(async move {
                let _ = handle
                    .disconnect(
                        russh::Disconnect::ByApplication,
                        "your key was deleted from smarter-comms".into(),
                        String::new(),
                    )
                    .await;
            });
        }
    }

    fn check(
        &self,
        developer: &str,
        gateway: &str,
        target: Option<&Target>,
        t: i64,
    ) -> Result<policy::Allowed, Denial> {
        let dev = match self.store.developer(developer) {
            Ok(Some(d)) => d,
            Ok(None) => return Err(Denial::UnknownDeveloper),
            Err(e) => {
                tracing::error!(error = %e, "store read failed");
                return Err(Denial::NoGrant);
            }
        };
        let grants = self
            .store
            .grants(Some(developer), Some(gateway))
            .unwrap_or_default();
        policy::authorize(&dev, &grants, target, t)
    }

    /// Disconnects agents whose gateway was deleted.
    fn drop_removed_gateways(&self) {
        let gone: Vec<(String, server::Handle)> = lock(&self.gateways)
            .iter()
            .filter(|(name, _)| matches!(self.store.gateway(name), Ok(None)))
            .map(|(name, g)| (name.clone(), g.handle.clone()))
            .collect();
        for (name, handle) in gone {
            lock(&self.gateways).remove(&name);
            self.audit(
                "gateway.disconnected",
                None,
                Some(&name),
                None,
                "gateway removed",
            );
            tokio::spawn(async move {
                let _ = handle
                    .disconnect(
                        russh::Disconnect::ByApplication,
                        "gateway removed".into(),
                        String::new(),
                    )
                    .await;
            });
        }
    }

    /// Ends live sessions whose developer or grant is no longer valid:
    /// immediately after [`Hub::state_changed`], and at each expiry time.
    pub async fn watch_sessions(self: Arc<Self>) {
        loop {
            let next = self.sweep();
            let wait = match next {
                Some(at) => {
                    let now_ms = std::time::SystemTime::now()
                        .duration_since(std::time::UNIX_EPOCH)
                        .map(|d| d.as_millis() as i64)
                        .unwrap_or(0);
                    Duration::from_millis((at * 1000 - now_ms).max(0) as u64 + 20)
                }
                None => Duration::from_secs(3600),
            };
            tokio::select! {
                _ = self.changed.notified() => {}
                _ = tokio::time::sleep(wait) => {}
            }
        }
    }

    fn handle_agent_request(
        &self,
        gateway: &str,
        req: &AgentRequest,
        body: &[u8],
    ) -> Result<Vec<u8>, String> {
        match req {
            AgentRequest::Authorize {
                session,
                fingerprint,
                user,
            } => {
                let target = Target::from_user(user);
                let developer = {
                    let live = lock(&self.live);
                    match live.get(session) {
                        Some(s) if s.gateway == gateway => Some(s.developer.clone()),
                        _ => None,
                    }
                };
                let verdict = match &developer {
                    None => Err(Denial::NoSession),
                    Some(dev) => match self.store.developer_has_key(dev, fingerprint) {
                        Ok(true) => self.check(dev, gateway, Some(&target), now()),
                        _ => Err(Denial::WrongKey),
                    },
                };
                let reply = match verdict {
                    Ok(a) => {
                        if let Some(s) = lock(&self.live).get_mut(session) {
                            s.target = Some(target.clone());
                            if !s.keys.contains(fingerprint) {
                                s.keys.push(fingerprint.clone());
                            }
                        }
                        let _ = self.store.set_session_target(*session, &target.to_string());
                        self.audit(
                            "session.start",
                            developer.as_deref(),
                            Some(gateway),
                            Some(*session),
                            &format!("target {target}, grant {}", a.grant_id),
                        );
                        AuthorizeReply {
                            allowed: true,
                            developer: developer.clone(),
                            target: Some(target),
                            ends_at: a.ends_at,
                            reason: None,
                        }
                    }
                    Err(d) => {
                        self.audit(
                            "session.denied",
                            developer.as_deref(),
                            Some(gateway),
                            Some(*session),
                            &format!("at agent: {d} (user {user}, key {fingerprint})"),
                        );
                        AuthorizeReply {
                            allowed: false,
                            developer,
                            target: Some(target),
                            ends_at: None,
                            reason: Some(d.to_string()),
                        }
                    }
                };
                serde_json::to_vec(&reply).map_err(|e| e.to_string())
            }
            AgentRequest::Denied { session, reason } => {
                let developer = lock(&self.live)
                    .get(session)
                    .filter(|s| s.gateway == gateway)
                    .map(|s| s.developer.clone())
                    .ok_or_else(|| format!("session {session} is not live on gateway {gateway}"))?;
                self.audit(
                    "session.denied",
                    Some(&developer),
                    Some(gateway),
                    Some(*session),
                    &format!("at agent: {reason}"),
                );
                Ok(Vec::new())
            }
            AgentRequest::Recording { session } => {
                let owned = self
                    .store
                    .session(*session)
                    .ok()
                    .flatten()
                    .is_some_and(|s| s.gateway == gateway);
                if !owned {
                    return Err(format!("session {session} is not on gateway {gateway}"));
                }
                let name = format!("session-{session}.cast");
                let path = self.recordings_dir.join(&name);
                std::fs::create_dir_all(&self.recordings_dir)
                    .and_then(|()| std::fs::write(&path, body))
                    .map_err(|e| format!("writing {}: {e}", path.display()))?;
                let _ = self.store.set_session_recording(*session, &name);
                self.audit(
                    "session.recording",
                    None,
                    Some(gateway),
                    Some(*session),
                    &format!("{} bytes", body.len()),
                );
                Ok(b"stored\n".to_vec())
            }
        }
    }
}

/// The SSH server configurations for comms with `host_key`: one for
/// developers' connections, one for agents' tunnels. They differ only in
/// the ciphers offered (see [`ServerConfigs::for_client`]).
/// `aes_gcm_only`: see the comms config of that name.
pub fn server_configs(
    host_key: PrivateKey,
    auth_rejection: Duration,
    aes_gcm_only: bool,
) -> ServerConfigs {
    let config = |cipher| {
        Arc::new(server::Config {
            methods: MethodSet::from(&[MethodKind::PublicKey][..]),
            keys: vec![host_key.clone()],
            auth_rejection_time: auth_rejection,
            auth_rejection_time_initial: Some(Duration::ZERO),
            inactivity_timeout: None,
            keepalive_interval: Some(Duration::from_secs(30)),
            keepalive_max: 3,
            nodelay: true,
            window_size: crate::transfer::WINDOW,
            maximum_packet_size: crate::transfer::MAX_PACKET,
            channel_buffer_size: crate::transfer::CHANNEL_BUFFER,
            preferred: russh::Preferred {
                cipher,
                ..Default::default()
            },
            ..Default::default()
        })
    };
    ServerConfigs {
        developer: config(crate::transfer::session_ciphers(aes_gcm_only)),
        // Every cipher russh has: the agent's own order decides (AES-GCM
        // where its CPU has AES instructions, else ChaCha20-Poly1305).
        agent: config(crate::transfer::session_ciphers(false)),
    }
}

/// The two SSH server configurations comms serves with.
#[derive(Clone, Debug)]
pub struct ServerConfigs {
    /// For developers' clients (the `-J` jump hop).
    pub developer: Arc<server::Config>,
    /// For agents' tunnels.
    pub agent: Arc<server::Config>,
}

impl ServerConfigs {
    /// The configuration for a client that sent identification line `id`
    /// (`None`: none arrived in time). A client's cipher order decides and
    /// OpenSSH's puts ChaCha20-Poly1305 first, which costs comms far more
    /// than AES-GCM with AES instructions; `aes_gcm_only` therefore drops
    /// it for developers. Agents keep it, since a gateway without AES
    /// hardware (Raspberry Pi 4) would otherwise run AES in software.
    pub fn for_client(&self, id: Option<&[u8]>) -> &Arc<server::Config> {
        match id {
            Some(id) if crate::transfer::is_agent_id(id) => &self.agent,
            _ => &self.developer,
        }
    }
}

/// The SSH server configurations new connections get; SIGHUP may replace
/// them (connections already open keep the one they started with).
pub type SharedConfig = Arc<Mutex<ServerConfigs>>;

/// How long comms waits for a new client's identification line before it
/// picks the developers' configuration. OpenSSH, PuTTY and russh clients
/// send theirs as soon as they connect (RFC 4253 4.2 lets both sides send
/// at once), so this is only ever reached by a silent or odd client.
const CLIENT_ID_WAIT: Duration = Duration::from_secs(2);

/// The client's identification line (without its line end), read from
/// `socket` without consuming it: russh reads it again. `None` when the
/// connection closes, fails, or sends no line end within `wait` (an
/// identification line is at most 255 bytes; a longer one is returned cut).
pub async fn peek_client_id(socket: &tokio::net::TcpStream, wait: Duration) -> Option<Vec<u8>> {
    let deadline = tokio::time::Instant::now() + wait;
    let mut buf = [0u8; 255];
    loop {
        let n = tokio::time::timeout_at(deadline, socket.peek(&mut buf))
            .await
            .ok()?
            .ok()?;
        if n == 0 {
            return None;
        }
        if let Some(end) = buf[..n].iter().position(|&b| b == b'\n') {
            let line = &buf[..end];
            return Some(line.strip_suffix(b"\r").unwrap_or(line).to_vec());
        }
        if n == buf.len() {
            return Some(buf.to_vec());
        }
        // Part of a line: peek returns at once while data is queued, so
        // give the rest a moment to arrive rather than spin.
        if tokio::time::Instant::now() >= deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Accepts SSH connections on `listener` until it fails.
pub async fn serve(
    hub: Arc<Hub>,
    config: SharedConfig,
    listener: tokio::net::TcpListener,
) -> std::io::Result<()> {
    use russh::server::Server as _;
    let mut factory = Factory { hub };
    loop {
        let (socket, peer) = listener.accept().await?;
        let configs = lock(&config).clone();
        let handler = factory.new_client(Some(peer));
        tokio::spawn(async move {
            let id = peek_client_id(&socket, CLIENT_ID_WAIT).await;
            let config = configs.for_client(id.as_deref()).clone();
            tracing::debug!(
                %peer,
                client = %String::from_utf8_lossy(id.as_deref().unwrap_or(b"(none)")),
                agent = Arc::ptr_eq(&config, &configs.agent),
                "ssh client identified"
            );
            if config.nodelay
                && let Err(error) = socket.set_nodelay(true)
            {
                tracing::debug!(%peer, %error, "set_nodelay failed");
            }
            // russh reads each packet with two exact reads (length, then the
            // rest); a buffer turns those into one recv per 64 KiB or so.
            let socket = tokio::io::BufReader::with_capacity(crate::transfer::READ_BUFFER, socket);
            match server::run_stream(config, socket, handler).await {
                Ok(session) => {
                    if let Err(error) = session.await {
                        tracing::debug!(%peer, %error, "ssh connection ended with an error");
                    }
                }
                Err(error) => tracing::debug!(%peer, %error, "ssh connection setup failed"),
            }
        });
    }
}

struct Factory {
    hub: Arc<Hub>,
}

impl server::Server for Factory {
    type Handler = Conn;
    fn new_client(&mut self, peer: Option<SocketAddr>) -> Conn {
        Conn {
            hub: self.hub.clone(),
            id: self.hub.next_conn.fetch_add(1, Ordering::Relaxed),
            peer,
            role: Role::None,
            key: String::new(),
            uploads: HashMap::new(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Role {
    None,
    Gateway(String),
    Developer(String),
}

/// A request from the agent whose body is still arriving.
struct Upload {
    req: AgentRequest,
    body: Vec<u8>,
}

/// One SSH connection to comms.
pub struct Conn {
    hub: Arc<Hub>,
    id: u64,
    peer: Option<SocketAddr>,
    role: Role,
    /// Fingerprint of the key this connection authenticated with.
    key: String,
    uploads: HashMap<ChannelId, Upload>,
}

impl std::fmt::Debug for Conn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Conn")
            .field("id", &self.id)
            .field("role", &self.role)
            .finish()
    }
}

impl Drop for Conn {
    fn drop(&mut self) {
        if let Role::Developer(_) = &self.role {
            lock(&self.hub.developers).remove(&self.id);
        }
        if let Role::Gateway(name) = &self.role {
            let mut gws = lock(&self.hub.gateways);
            if gws.get(name).is_some_and(|g| g.conn_id == self.id) {
                gws.remove(name);
                drop(gws);
                self.hub
                    .audit("gateway.disconnected", None, Some(name), None, "");
            }
        }
    }
}

impl Conn {
    fn peer(&self) -> String {
        self.peer.map(|p| p.to_string()).unwrap_or_default()
    }

    async fn reply_to_agent(
        &self,
        channel: ChannelId,
        session: &mut Session,
        result: Result<Vec<u8>, String>,
    ) {
        let (status, out) = match result {
            Ok(out) => (0, out),
            Err(e) => (1, format!("{e}\n").into_bytes()),
        };
        if status == 0 {
            let _ = session.data(channel, out);
        } else {
            let _ = session.extended_data(channel, 1, out);
        }
        let _ = session.exit_status_request(channel, status);
        let _ = session.eof(channel);
        let _ = session.close(channel);
    }
}

impl server::Handler for Conn {
    type Error = russh::Error;

    async fn auth_publickey(
        &mut self,
        user: &str,
        key: VerifiedPublicKey<'_>,
    ) -> Result<Auth, Self::Error> {
        let fp = keys::fingerprint(key.public_key);
        let hub = &self.hub;
        if let Some(name) = user.strip_prefix(GATEWAY_USER_PREFIX) {
            match hub.store.gateway(name) {
                Ok(Some(g)) if g.fingerprint == fp => {
                    self.role = Role::Gateway(name.to_string());
                    return Ok(Auth::Accept);
                }
                Ok(Some(_)) => hub.audit(
                    "gateway.denied",
                    None,
                    Some(name),
                    None,
                    &format!("wrong key {fp} from {}", self.peer()),
                ),
                _ => hub.audit(
                    "gateway.denied",
                    None,
                    Some(name),
                    None,
                    &format!("unknown gateway, key {fp} from {}", self.peer()),
                ),
            }
            return Ok(Auth::reject());
        }
        let denial = match hub.store.developer(user) {
            Ok(Some(dev)) => match hub.store.developer_has_key(user, &fp) {
                Ok(true) => match policy::developer_active(&dev, now()) {
                    Ok(()) => {
                        self.role = Role::Developer(user.to_string());
                        self.key = fp;
                        return Ok(Auth::Accept);
                    }
                    Err(d) => d,
                },
                _ => Denial::WrongKey,
            },
            _ => Denial::UnknownDeveloper,
        };
        let known = !matches!(denial, Denial::UnknownDeveloper);
        hub.audit(
            "auth.denied",
            known.then_some(user),
            None,
            None,
            &format!("{denial}: user {user}, key {fp} from {}", self.peer()),
        );
        Ok(Auth::reject())
    }

    async fn auth_succeeded(&mut self, session: &mut Session) -> Result<(), Self::Error> {
        match &self.role {
            Role::Gateway(name) => {
                self.hub
                    .audit("gateway.connected", None, Some(name), None, &self.peer())
            }
            Role::Developer(name) => {
                lock(&self.hub.developers).insert(
                    self.id,
                    DeveloperConn {
                        developer: name.clone(),
                        key: self.key.clone(),
                        handle: session.handle(),
                    },
                );
                tracing::info!(developer = %name, key = %self.key, peer = %self.peer(), "developer logged in")
            }
            Role::None => {}
        }
        Ok(())
    }

    async fn tcpip_forward(
        &mut self,
        address: &str,
        port: &mut u32,
        session: &mut Session,
    ) -> Result<bool, Self::Error> {
        let Role::Gateway(name) = &self.role else {
            return Ok(false);
        };
        let conn = GatewayConn {
            conn_id: self.id,
            handle: session.handle(),
            address: address.to_string(),
            port: *port,
        };
        lock(&self.hub.gateways).insert(name.clone(), conn);
        tracing::info!(gateway = %name, "gateway tunnel ready");
        Ok(true)
    }

    async fn channel_open_session(
        &mut self,
        channel: Channel<Msg>,
        reply: ChannelOpenHandle,
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        if matches!(self.role, Role::Gateway(_)) {
            drop(channel);
            reply.accept().await;
        } else {
            reply
                .reject(ChannelOpenFailure::AdministrativelyProhibited)
                .await;
        }
        Ok(())
    }

    async fn exec_request(
        &mut self,
        channel: ChannelId,
        data: &[u8],
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        let Role::Gateway(gateway) = self.role.clone() else {
            let _ = session.channel_failure(channel);
            return Ok(());
        };
        let _ = session.channel_success(channel);
        match proto::parse_request(data) {
            Ok(req) if req.has_body() => {
                self.uploads.insert(
                    channel,
                    Upload {
                        req,
                        body: Vec::new(),
                    },
                );
            }
            Ok(req) => {
                let result = self.hub.handle_agent_request(&gateway, &req, &[]);
                self.reply_to_agent(channel, session, result).await;
            }
            Err(e) => self.reply_to_agent(channel, session, Err(e)).await,
        }
        Ok(())
    }

    async fn data(
        &mut self,
        channel: ChannelId,
        data: &[u8],
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        if let Some(u) = self.uploads.get_mut(&channel) {
            if u.body.len() + data.len() > proto::MAX_UPLOAD {
                self.uploads.remove(&channel);
                self.reply_to_agent(channel, session, Err("upload too large".into()))
                    .await;
            } else {
                u.body.extend_from_slice(data);
            }
        }
        Ok(())
    }

    async fn channel_close(
        &mut self,
        channel: ChannelId,
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        self.uploads.remove(&channel);
        Ok(())
    }

    async fn channel_eof(
        &mut self,
        channel: ChannelId,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        if let (Some(u), Role::Gateway(gw)) = (self.uploads.remove(&channel), &self.role) {
            let result = self.hub.handle_agent_request(gw, &u.req, &u.body);
            self.reply_to_agent(channel, session, result).await;
        }
        Ok(())
    }

    async fn channel_open_direct_tcpip(
        &mut self,
        channel: Channel<Msg>,
        host_to_connect: &str,
        _port_to_connect: u32,
        _originator_address: &str,
        _originator_port: u32,
        reply: ChannelOpenHandle,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        let Role::Developer(developer) = self.role.clone() else {
            reply
                .reject(ChannelOpenFailure::AdministrativelyProhibited)
                .await;
            return Ok(());
        };
        let hub = self.hub.clone();
        let gateway = host_to_connect.to_string();
        // The key this connection logged in with may have been deleted since.
        if hub
            .deleted_key(&developer, std::slice::from_ref(&self.key))
            .is_some()
        {
            hub.audit(
                "session.denied",
                Some(&developer),
                None,
                None,
                &format!(
                    "at comms: key {} deleted (requested host {gateway:?})",
                    self.key
                ),
            );
            reply
                .reject(refusal("your key was deleted from smarter-comms"))
                .await;
            return Ok(());
        }
        let verdict = match hub.store.gateway(&gateway) {
            Ok(Some(_)) => hub.check(&developer, &gateway, None, now()).and_then(|a| {
                lock(&hub.gateways)
                    .get(&gateway)
                    .cloned()
                    .map(|g| (a, g))
                    .ok_or(Denial::GatewayOffline)
            }),
            _ => Err(Denial::UnknownGateway),
        };
        let verdict = verdict.and_then(|ok| {
            let max = hub.limits().max_sessions_per_developer;
            let live = lock(&hub.live)
                .values()
                .filter(|s| s.developer == developer)
                .count();
            if max > 0 && live >= max {
                Err(Denial::TooManySessions(max))
            } else {
                Ok(ok)
            }
        });
        let gw = match verdict {
            Ok((_, gw)) => gw,
            Err(d) => {
                let known_gw = !matches!(d, Denial::UnknownGateway);
                hub.audit(
                    "session.denied",
                    Some(&developer),
                    known_gw.then_some(gateway.as_str()),
                    None,
                    &format!("at comms: {d} (requested host {gateway:?})"),
                );
                reply.reject(refusal_for(&d, &gateway)).await;
                return Ok(());
            }
        };
        let id = match hub.store.start_session(&developer, &gateway) {
            Ok(id) => id,
            Err(e) => {
                tracing::error!(error = %e, "recording session failed");
                reply.reject(ChannelOpenFailure::ResourceShortage).await;
                return Ok(());
            }
        };
        let (cancel_tx, cancel_rx) = oneshot::channel();
        lock(&hub.live).insert(
            id,
            LiveSession {
                developer: developer.clone(),
                gateway: gateway.clone(),
                target: None,
                keys: vec![self.key.clone()],
                cancel: Some(cancel_tx),
            },
        );
        hub.state_changed();
        let dev_handle = session.handle();
        tokio::spawn(bridge(
            hub, id, developer, gateway, channel, dev_handle, gw, reply, cancel_rx,
        ));
        Ok(())
    }
}

/// A refused channel open whose description the developer's ssh prints
/// (`channel 0: open failed: administratively prohibited: TEXT`).
fn refusal(text: &str) -> ChannelOpenFailure {
    ChannelOpenFailure::Other {
        code: ChannelOpenFailure::AdministrativelyProhibited.code(),
        reason: format!("smarter-comms: {text}"),
    }
}

/// What the developer is told when comms refuses to route them to
/// `gateway`: a short reason they can act on. An unknown gateway reads
/// exactly like a known one they hold no grant for, so the message tells
/// nobody which gateways exist; it names only the host they typed (when it
/// is a valid gateway name) and never another gateway.
pub fn refusal_for(denial: &Denial, gateway: &str) -> ChannelOpenFailure {
    let shown = if crate::comms::api::valid_name(gateway) {
        format!("gateway {gateway:?}")
    } else {
        "that gateway".to_string()
    };
    match denial {
        Denial::NoGrant | Denial::UnknownGateway => refusal(&format!(
            "you have no grant for {shown}; ask a comms administrator for one"
        )),
        Denial::GrantExpired => refusal(&format!(
            "your grant for {shown} has expired; ask a comms administrator to renew it"
        )),
        Denial::GatewayOffline => ChannelOpenFailure::Other {
            code: ChannelOpenFailure::ConnectFailed.code(),
            reason: format!(
                "smarter-comms: {shown} is not connected (its agent is offline); try again later"
            ),
        },
        Denial::TooManySessions(max) => refusal(&format!(
            "you already have {max} live sessions, the most allowed; end one and retry"
        )),
        Denial::DeveloperExpired => {
            refusal("your developer account has expired; ask a comms administrator")
        }
        Denial::WrongKey => refusal("your key is not registered with smarter-comms"),
        Denial::UnknownDeveloper | Denial::TargetNotGranted(_) | Denial::NoSession => {
            refusal("access denied")
        }
    }
}

#[allow(clippy::too_many_arguments)]
async fn bridge(
    hub: Arc<Hub>,
    id: i64,
    developer: String,
    gateway: String,
    dev_channel: Channel<Msg>,
    dev_handle: server::Handle,
    gw: GatewayConn,
    reply: ChannelOpenHandle,
    cancel: oneshot::Receiver<String>,
) {
    let opened = gw
        .handle
        .channel_open_forwarded_tcpip(
            gw.address.clone(),
            gw.port,
            proto::session_originator(id),
            0,
        )
        .await;
    let reason = match opened {
        Err(e) => {
            reply.reject(ChannelOpenFailure::ConnectFailed).await;
            format!("gateway refused channel: {e}")
        }
        Ok(gw_channel) => {
            reply.accept().await;
            let dev_id = dev_channel.id();
            let gw_id = gw_channel.id();
            let (dev_r, dev_w) = dev_channel.split();
            let (gw_r, gw_w) = gw_channel.split();
            let start = std::time::Instant::now();
            let last = AtomicU64::new(0);
            let (up, down) = (AtomicU64::new(0), AtomicU64::new(0));
            let copy = async {
                tokio::join!(
                    pump(dev_r, &gw_w, None, &up, &last, start),
                    pump(gw_r, &dev_w, Some(DEVELOPER_PACKET), &down, &last, start)
                )
            };
            let idle_timeout = hub.limits().idle_timeout;
            let idle = async {
                match idle_timeout {
                    None => std::future::pending::<()>().await,
                    Some(limit) => loop {
                        let quiet = start
                            .elapsed()
                            .saturating_sub(Duration::from_millis(last.load(Ordering::Relaxed)));
                        if quiet >= limit {
                            break;
                        }
                        tokio::time::sleep(limit - quiet).await;
                    },
                }
            };
            let bytes = || {
                format!(
                    "{} bytes up, {} down",
                    up.load(Ordering::Relaxed),
                    down.load(Ordering::Relaxed)
                )
            };
            // Comms' own reason first: ending a session for a deleted key also
            // disconnects the developer, which closes the copy too.
            let reason = tokio::select! {
                biased;
                r = cancel => match r {
                    Ok(why) => format!("ended by comms: {why} ({})", bytes()),
                    Err(_) => format!("ended by comms ({})", bytes()),
                },
                (a, b) = copy => match (a, b) {
                    (Ok(()), Ok(())) => format!("closed ({})", bytes()),
                    (Err(e), _) | (_, Err(e)) => format!("closed: {e} ({})", bytes()),
                },
                () = idle => format!("ended by comms: idle for {:?} ({})", idle_timeout.unwrap_or_default(), bytes()),
            };
            let _ = dev_handle.close(dev_id).await;
            let _ = gw.handle.close(gw_id).await;
            reason
        }
    };
    lock(&hub.live).remove(&id);
    let _ = hub.store.end_session(id, &reason);
    hub.audit(
        "session.end",
        Some(&developer),
        Some(&gateway),
        Some(id),
        &reason,
    );
}

/// The payload of the developer's channel packets: OpenSSH's client asks for
/// 32 KiB packets on the `direct-tcpip` channel `ssh -J` opens.
const DEVELOPER_PACKET: usize = 32 * 1024;

/// Polls `fut` once: its output if it is ready now, else `None` (the future
/// is dropped; nothing it had started is lost for an mpsc receive).
fn ready_now<F: Future>(fut: F) -> Option<F::Output> {
    let mut fut = std::pin::pin!(fut);
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    match fut.as_mut().poll(&mut cx) {
        std::task::Poll::Ready(out) => Some(out),
        std::task::Poll::Pending => None,
    }
}

/// Hands the data arriving on `from` on to `to` until EOF (then sends EOF
/// on `to`), counting bytes and noting the time of the last activity
/// (milliseconds since `start`).
///
/// Without `packet`, the buffers russh decrypted into are passed on as they
/// are (no copy). With it, data is sent in multiples of `packet` bytes while
/// more is already queued, and the rest as soon as nothing more is: the
/// agent's inner SSH packets are a little over 32 KiB, and passed on as they
/// come each would cost the developer's 32 KiB channel a full packet and a
/// 45-byte one. Nothing is held back waiting for data that has not arrived.
async fn pump(
    mut from: ChannelReadHalf,
    to: &ChannelWriteHalf<Msg>,
    packet: Option<usize>,
    count: &AtomicU64,
    last: &AtomicU64,
    start: std::time::Instant,
) -> Result<(), russh::Error> {
    let mut held: Vec<u8> = Vec::new();
    loop {
        let msg = if held.is_empty() {
            from.wait().await
        } else {
            match ready_now(from.wait()) {
                Some(msg) => msg,
                None => {
                    to.data_bytes(std::mem::take(&mut held)).await?;
                    continue;
                }
            }
        };
        let data = match msg {
            Some(ChannelMsg::Data { data }) => data,
            None | Some(ChannelMsg::Eof | ChannelMsg::Close) => break,
            // Window adjustments, requests: nothing to forward on a TCP-like channel.
            Some(_) => continue,
        };
        let n = data.len() as u64;
        match packet {
            Some(p) if !(held.is_empty() && data.len() % p == 0) => {
                held.extend_from_slice(&data);
                let whole = held.len() / p * p;
                if whole > 0 {
                    let rest = held.split_off(whole);
                    to.data_bytes(std::mem::replace(&mut held, rest)).await?;
                }
            }
            _ => to.data_bytes(data).await?,
        }
        count.fetch_add(n, Ordering::Relaxed);
        last.store(start.elapsed().as_millis() as u64, Ordering::Relaxed);
    }
    if !held.is_empty() {
        to.data_bytes(held).await?;
    }
    to.eof().await
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    async fn pair() -> std::io::Result<(tokio::net::TcpStream, tokio::net::TcpStream)> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let client = tokio::net::TcpStream::connect(listener.local_addr()?).await?;
        let (server, _) = listener.accept().await?;
        Ok((server, client))
    }

    #[tokio::test]
    async fn client_id_is_peeked_whole_and_left_for_russh() -> std::io::Result<()> {
        let (mut server, mut client) = pair().await?;
        // The line arrives in two parts; the first is not taken for all of it.
        client.write_all(b"SSH-2.0-smarter-").await?;
        let rest = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(50)).await;
            client.write_all(b"debug-agent_1\r\nKEX").await?;
            Ok::<_, std::io::Error>(client)
        });
        let id = peek_client_id(&server, Duration::from_secs(5)).await;
        assert_eq!(id.as_deref(), Some(&b"SSH-2.0-smarter-debug-agent_1"[..]));
        let _client = rest.await??;
        let mut unread = [0u8; 34];
        server.read_exact(&mut unread).await?;
        assert_eq!(&unread, b"SSH-2.0-smarter-debug-agent_1\r\nKEX");
        Ok(())
    }

    #[tokio::test]
    async fn silent_or_closed_clients_have_no_id() -> std::io::Result<()> {
        let (server, _client) = pair().await?;
        let since = std::time::Instant::now();
        assert_eq!(
            peek_client_id(&server, Duration::from_millis(100)).await,
            None
        );
        assert!(since.elapsed() >= Duration::from_millis(100));
        let (server, client) = pair().await?;
        drop(client);
        assert_eq!(peek_client_id(&server, Duration::from_secs(5)).await, None);
        // Half a line and then nothing: no id once the wait is over.
        let (server, mut client) = pair().await?;
        client.write_all(b"SSH-2.0-half").await?;
        assert_eq!(
            peek_client_id(&server, Duration::from_millis(100)).await,
            None
        );
        Ok(())
    }
}
