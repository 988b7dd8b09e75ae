//! The SSH server embedded in the agent. It runs on one forwarded channel
//! (one developer connection), never on a socket. Its host key is the
//! agent's key, so the developer's `known_hosts` entry for the gateway is the
//! key comms enrolled (`GET /v1/gateways/NAME/known_hosts`).
//!
//! The developer proves their key to the agent; the agent asks comms whether
//! that key, arriving as that session, may open a session on the target named
//! by the user name (`NAMESPACE/POD`, or anything else for the host). It then
//! serves shells (with a PTY, recorded in asciinema v2 and shipped to comms),
//! commands (exit status propagated) and the `sftp` subsystem, and
//! disconnects when the grant or account expires.

use std::collections::HashMap;
use std::os::fd::OwnedFd;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use russh::client;
use russh::keys::PublicKey;
use russh::server::{self, Auth, ChannelOpenHandle, Msg, Session, VerifiedPublicKey};
use russh::{Channel, ChannelId, Disconnect, MethodKind, MethodSet};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;
use tokio::task::AbortHandle;

use crate::agent::process::{self, Namespaces, Spec};
use crate::agent::recording::Recording;
use crate::agent::{Agent, pods};
use crate::comms::store::now;
use crate::keys;
use crate::policy::Target;
use crate::proto::{AgentRequest, AuthorizeReply};

/// Serves one developer connection arriving on `channel` as session `session_id`.
pub async fn serve(agent: Arc<Agent>, session_id: i64, channel: Channel<client::Msg>) {
    let config = Arc::new(server::Config {
        methods: MethodSet::from(&[MethodKind::PublicKey][..]),
        keys: vec![agent.key.clone()],
        auth_rejection_time: Duration::from_millis(100),
        auth_rejection_time_initial: Some(Duration::ZERO),
        inactivity_timeout: None,
        nodelay: true,
        window_size: crate::transfer::WINDOW,
        maximum_packet_size: crate::transfer::MAX_PACKET,
        channel_buffer_size: crate::transfer::CHANNEL_BUFFER,
        preferred: russh::Preferred {
            cipher: crate::transfer::session_ciphers(agent.settings().session_aes_gcm_only),
            ..Default::default()
        },
        ..Default::default()
    });
    let handler = DebugSession {
        agent: agent.clone(),
        session_id,
        authorized: None,
        refusal: None,
        namespaces: None,
        channels: HashMap::new(),
        tasks: Vec::new(),
        recordings: Vec::new(),
    };
    match server::run_stream(config, channel.into_stream(), handler).await {
        Ok(running) => {
            if let Err(e) = running.await {
                tracing::debug!(session = session_id, error = %e, "session ended with error");
            }
        }
        Err(e) => tracing::warn!(session = session_id, error = %e, "session handshake failed"),
    }
    tracing::info!(session = session_id, "session closed");
}

#[derive(Debug, Default)]
struct Chan {
    pty: Option<(String, u32, u32)>,
    env: Vec<(String, String)>,
    stdin: Option<mpsc::Sender<Vec<u8>>>,
    master: Option<Arc<OwnedFd>>,
    recording: Option<SharedRecording>,
    started: bool,
}

/// Bytes read from a program's stdout at a time (sftp-server answers a read
/// with 32 KiB of data, so several answers travel as one message to the SSH
/// session). A session holds at most its event queue (10 messages) of these.
const OUTPUT_CHUNK: usize = 128 * 1024;

/// A recording; whoever takes it out ships it (so it ships exactly once).
type SharedRecording = Arc<Mutex<Option<Recording>>>;

struct DebugSession {
    agent: Arc<Agent>,
    session_id: i64,
    authorized: Option<AuthorizeReply>,
    /// Why the last public key was refused, told to the developer once
    /// through keyboard-interactive (see [`refusal_text`]).
    refusal: Option<String>,
    namespaces: Option<Arc<Namespaces>>,
    channels: HashMap<ChannelId, Chan>,
    tasks: Vec<AbortHandle>,
    recordings: Vec<SharedRecording>,
}

impl Drop for DebugSession {
    fn drop(&mut self) {
        // Ends every process of the session (children are kill_on_drop).
        for t in &self.tasks {
            t.abort();
        }
        // Ship what was recorded of shells cut off by a disconnect.
        for r in &self.recordings {
            if let Some(rec) = lock(r).take()
                && let Ok(rt) = tokio::runtime::Handle::try_current()
            {
                rt.spawn(ship_recording(
                    self.agent.clone(),
                    self.session_id,
                    rec.bytes().to_vec(),
                ));
            }
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    match m.lock() {
        Ok(g) => g,
        Err(p) => p.into_inner(),
    }
}

/// What the developer's ssh shows when the agent refuses them: one line,
/// no control characters, with a hint for the usual case (a grant scoped to
/// pods used for the host, or for another pod).
fn refusal_text(reason: &str) -> String {
    let clean: String = reason
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .take(300)
        .collect();
    let hint = if clean.starts_with("no grant covers target") {
        "; log in as NAMESPACE/POD (ssh NAMESPACE/POD@GATEWAY) for a pod your grant covers, or ask a \
         comms administrator for a wider grant"
    } else {
        ""
    };
    format!("smarter-debug agent refused the session: {clean}{hint}")
}

impl DebugSession {
    async fn authorize(&mut self, user: &str, key: &PublicKey) -> Result<(), String> {
        let req = AgentRequest::Authorize {
            session: self.session_id,
            fingerprint: keys::fingerprint(key),
            user: user.to_string(),
        };
        let out = self
            .agent
            .ask_comms(&req, &[])
            .await
            .map_err(|e| e.to_string())?;
        let reply: AuthorizeReply =
            serde_json::from_slice(&out).map_err(|e| format!("bad reply from comms: {e}"))?;
        if !reply.allowed {
            return Err(reply.reason.unwrap_or_else(|| "refused".into()));
        }
        let target = reply.target.clone().unwrap_or(Target::Host);
        let found = self.target_pid(&target).await.and_then(|pid| match pid {
            None => Ok(None),
            Some(pid) => Namespaces::of_pid(pid)
                .map(|ns| Some((pid, ns)))
                .map_err(|e| e.to_string()),
        });
        match found {
            Ok(Some((pid, ns))) => {
                tracing::info!(session = self.session_id, %target, pid, namespaces = ns.len(), "entering target namespaces");
                self.namespaces = Some(Arc::new(ns));
            }
            Ok(None) => {}
            Err(reason) => {
                let report = AgentRequest::Denied {
                    session: self.session_id,
                    reason: reason.clone(),
                };
                if let Err(e) = self.agent.ask_comms(&report, &[]).await {
                    tracing::warn!(error = %e, "could not report denial to comms");
                }
                return Err(reason);
            }
        }
        self.authorized = Some(reply);
        Ok(())
    }

    /// The process whose namespaces a session on `target` enters: a
    /// running container of the pod, or for the host `host_namespaces_pid`
    /// (PID 1 by default: the real host when the agent runs in a pod with
    /// `hostPID`; `None` when 0, i.e. stay in the agent's own namespaces).
    async fn target_pid(&self, target: &Target) -> Result<Option<u32>, String> {
        let config = self.agent.settings();
        let (namespace, pod) = match target {
            Target::Host => {
                return Ok((config.host_namespaces_pid != 0).then_some(config.host_namespaces_pid));
            }
            Target::Pod { namespace, pod } => (namespace, pod),
        };
        let (dirs, ns, name) = (
            config.containerd_state_dirs.clone(),
            namespace.clone(),
            pod.clone(),
        );
        let in_containerd =
            tokio::task::spawn_blocking(move || pods::find_pid_containerd(&dirs, &ns, &name))
                .await
                .ok()
                .flatten();
        match in_containerd {
            Some(pid) => Ok(Some(pid)),
            None => pods::find_pid(&config.docker_socket, namespace, pod)
                .await
                .map(Some)
                .map_err(|e| e.to_string()),
        }
    }

    fn spawn(&mut self, fut: impl Future<Output = ()> + Send + 'static) {
        let h = tokio::spawn(fut);
        self.tasks.push(h.abort_handle());
    }

    /// Starts the shell (`command = None`), a command, or the sftp server.
    fn start(
        &mut self,
        channel: ChannelId,
        command: Option<String>,
        sftp: bool,
        session: &mut Session,
    ) -> Result<(), String> {
        let handle = session.handle();
        let agent = self.agent.clone();
        let namespaces = self.namespaces.clone();
        let session_id = self.session_id;
        let developer = self
            .authorized
            .as_ref()
            .and_then(|a| a.developer.clone())
            .unwrap_or_default();
        let chan = self.channels.entry(channel).or_default();
        if chan.started {
            return Err("channel already running a program".into());
        }
        chan.started = true;
        let settings = agent.settings();
        let (program, args) = if sftp {
            (settings.sftp_server.clone(), vec![])
        } else {
            match &command {
                Some(c) => (settings.shell.clone(), vec!["-c".to_string(), c.clone()]),
                None => (settings.shell.clone(), vec!["-l".to_string()]),
            }
        };
        let mut env = chan.env.clone();
        env.push(("SMARTER_DEBUG_DEVELOPER".into(), developer.clone()));
        env.push(("SMARTER_DEBUG_SESSION".into(), session_id.to_string()));
        let pty = if sftp { None } else { chan.pty.clone() };
        if let Some((term, _, _)) = &pty {
            env.push(("TERM".into(), term.clone()));
        }
        let spec = Spec {
            program: &program,
            args,
            env,
            namespaces: namespaces.as_deref(),
        };
        let (stdin_tx, mut stdin_rx) = mpsc::channel::<Vec<u8>>(16);
        chan.stdin = Some(stdin_tx);
        tracing::info!(session = session_id, %developer, command = command.as_deref().unwrap_or(if sftp { "<sftp>" } else { "<shell>" }), pty = pty.is_some(), "starting");
        if let Some((term, cols, rows)) = pty {
            let p = process::spawn_pty(&spec, cols, rows).map_err(|e| e.to_string())?;
            let master = Arc::new(p.master);
            chan.master = Some(master.clone());
            let recording = command.is_none().then(|| {
                Arc::new(Mutex::new(Some(Recording::new(
                    cols,
                    rows,
                    now(),
                    &term,
                    &format!("session {session_id} by {developer}"),
                ))))
            });
            chan.recording = recording.clone();
            self.recordings.extend(recording.clone());
            let reader = master.try_clone().map_err(|e| e.to_string())?;
            let writer = master.try_clone().map_err(|e| e.to_string())?;
            self.spawn(async move {
                let mut w = tokio::fs::File::from_std(std::fs::File::from(writer));
                while let Some(data) = stdin_rx.recv().await {
                    if w.write_all(&data).await.is_err() {
                        break;
                    }
                }
            });
            let mut child = p.child;
            let group = p.group;
            self.spawn(async move {
                let _group = group;
                let mut r = tokio::fs::File::from_std(std::fs::File::from(reader));
                let mut buf = vec![0u8; 16 * 1024];
                loop {
                    match r.read(&mut buf).await {
                        Ok(0) | Err(_) => break, // EIO once the last slave fd closes
                        Ok(n) => {
                            if let Some(rec) = &recording
                                && let Some(r) = lock(rec).as_mut()
                            {
                                r.output(&buf[..n]);
                            }
                            if handle.data(channel, buf[..n].to_vec()).await.is_err() {
                                break;
                            }
                        }
                    }
                }
                let status = child
                    .wait()
                    .await
                    .ok()
                    .and_then(|s| s.code())
                    .unwrap_or(255);
                let _ = handle.exit_status_request(channel, status as u32).await;
                let _ = handle.eof(channel).await;
                let _ = handle.close(channel).await;
                if let Some(rec) = recording.as_ref().and_then(|r| lock(r).take()) {
                    // Detached: the session may end (and abort its tasks) meanwhile.
                    tokio::spawn(ship_recording(agent, session_id, rec.bytes().to_vec()));
                }
            });
        } else {
            let p = process::spawn_piped(&spec).map_err(|e| e.to_string())?;
            p.enlarge_pipes();
            let mut child = p.child;
            let group = p.group;
            let (Some(mut stdin), Some(mut stdout), Some(mut stderr)) =
                (child.stdin.take(), child.stdout.take(), child.stderr.take())
            else {
                return Err("child without pipes".into());
            };
            self.spawn(async move {
                while let Some(data) = stdin_rx.recv().await {
                    if stdin.write_all(&data).await.is_err() {
                        break;
                    }
                }
                // Dropping stdin closes the pipe: the program sees EOF.
            });
            let h2 = handle.clone();
            self.spawn(async move {
                let _group = group;
                let err_task = async {
                    let mut buf = vec![0u8; 16 * 1024];
                    while let Ok(n) = stderr.read(&mut buf).await {
                        if n == 0
                            || h2
                                .extended_data(channel, 1, buf[..n].to_vec())
                                .await
                                .is_err()
                        {
                            break;
                        }
                    }
                };
                let out_task = async {
                    // Each read fills a fresh buffer that is handed to russh
                    // as it is (no copy); russh cuts it into packets.
                    loop {
                        let mut buf = Vec::with_capacity(OUTPUT_CHUNK);
                        match stdout.read_buf(&mut buf).await {
                            Ok(0) | Err(_) => break,
                            Ok(_) => {
                                if handle.data(channel, buf).await.is_err() {
                                    break;
                                }
                            }
                        }
                    }
                };
                tokio::join!(err_task, out_task);
                let status = child
                    .wait()
                    .await
                    .ok()
                    .and_then(|s| s.code())
                    .unwrap_or(255);
                let _ = handle.exit_status_request(channel, status as u32).await;
                let _ = handle.eof(channel).await;
                let _ = handle.close(channel).await;
            });
        }
        Ok(())
    }
}

async fn ship_recording(agent: Arc<Agent>, session: i64, data: Vec<u8>) {
    let req = AgentRequest::Recording { session };
    match agent.ask_comms(&req, &data).await {
        Ok(_) => tracing::info!(session, bytes = data.len(), "recording shipped"),
        Err(e) => {
            // Keep it for the operator rather than lose it.
            let dir = agent.config.state_dir.join("recordings");
            let path = dir.join(format!("session-{session}.cast"));
            let saved = std::fs::create_dir_all(&dir).and_then(|()| std::fs::write(&path, &data));
            tracing::warn!(session, error = %e, kept = %path.display(), saved = saved.is_ok(), "shipping recording failed");
        }
    }
}

impl server::Handler for DebugSession {
    type Error = russh::Error;

    async fn auth_publickey(
        &mut self,
        user: &str,
        key: VerifiedPublicKey<'_>,
    ) -> Result<Auth, Self::Error> {
        match self.authorize(user, key.public_key).await {
            Ok(()) => Ok(Auth::Accept),
            Err(e) => {
                tracing::warn!(session = self.session_id, user, error = %e, "developer refused");
                // The key is proven and comms routed this developer here (they
                // hold a grant for this gateway), so the reason is theirs to
                // know: offer keyboard-interactive, whose instructions OpenSSH
                // prints, to tell them.
                self.refusal = Some(refusal_text(&e));
                Ok(Auth::Reject {
                    proceed_with_methods: Some(MethodSet::from(
                        &[MethodKind::PublicKey, MethodKind::KeyboardInteractive][..],
                    )),
                    partial_success: false,
                })
            }
        }
    }

    /// Never accepts: it only carries the reason the public key was refused
    /// (an info request without prompts), then rejects.
    async fn auth_keyboard_interactive<'a>(
        &'a mut self,
        _user: &str,
        _submethods: &str,
        response: Option<server::Response<'a>>,
    ) -> Result<Auth, Self::Error> {
        match (response, self.refusal.take()) {
            (None, Some(reason)) => Ok(Auth::Partial {
                name: "".into(),
                instructions: reason.into(),
                prompts: Vec::new().into(),
            }),
            _ => Ok(Auth::Reject {
                proceed_with_methods: Some(MethodSet::from(&[MethodKind::PublicKey][..])),
                partial_success: false,
            }),
        }
    }

    async fn auth_succeeded(&mut self, session: &mut Session) -> Result<(), Self::Error> {
        if let Some(ends_at) = self.authorized.as_ref().and_then(|a| a.ends_at) {
            let handle = session.handle();
            let id = self.session_id;
            self.spawn(async move {
                // Comms ends the session at `ends_at` (and audits why); this
                // is the backstop should comms not, one second later.
                let now_ms = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map(|d| d.as_millis() as i64)
                    .unwrap_or(0);
                let ms = (ends_at * 1000 + 1000 - now_ms).max(0) as u64;
                tokio::time::sleep(Duration::from_millis(ms)).await;
                tracing::info!(session = id, "grant or account expired; ending session");
                let _ = handle
                    .disconnect(
                        Disconnect::ByApplication,
                        "debug grant expired".into(),
                        String::new(),
                    )
                    .await;
            });
        }
        Ok(())
    }

    async fn channel_open_session(
        &mut self,
        channel: Channel<Msg>,
        reply: ChannelOpenHandle,
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        self.channels.insert(channel.id(), Chan::default());
        reply.accept().await;
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    async fn pty_request(
        &mut self,
        channel: ChannelId,
        term: &str,
        col_width: u32,
        row_height: u32,
        _pix_width: u32,
        _pix_height: u32,
        _modes: &[(russh::Pty, u32)],
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        let chan = self.channels.entry(channel).or_default();
        chan.pty = Some((term.to_string(), col_width.max(1), row_height.max(1)));
        session.channel_success(channel)?;
        Ok(())
    }

    async fn env_request(
        &mut self,
        channel: ChannelId,
        name: &str,
        value: &str,
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        // Only locale settings, as OpenSSH's default AcceptEnv.
        if name == "LANG" || name.starts_with("LC_") {
            self.channels
                .entry(channel)
                .or_default()
                .env
                .push((name.into(), value.into()));
        }
        Ok(())
    }

    async fn window_change_request(
        &mut self,
        channel: ChannelId,
        col_width: u32,
        row_height: u32,
        _pix_width: u32,
        _pix_height: u32,
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        if let Some(chan) = self.channels.get(&channel) {
            if let Some(m) = &chan.master {
                process::resize(m, col_width, row_height);
            }
            if let Some(rec) = &chan.recording
                && let Some(r) = lock(rec).as_mut()
            {
                r.resize(col_width, row_height);
            }
        }
        Ok(())
    }

    async fn shell_request(
        &mut self,
        channel: ChannelId,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        self.reply_start(channel, None, false, session)
    }

    async fn exec_request(
        &mut self,
        channel: ChannelId,
        data: &[u8],
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        let cmd = String::from_utf8_lossy(data).into_owned();
        self.reply_start(channel, Some(cmd), false, session)
    }

    async fn subsystem_request(
        &mut self,
        channel: ChannelId,
        name: &str,
        session: &mut Session,
    ) -> Result<(), Self::Error> {
        if name == "sftp" {
            self.reply_start(channel, None, true, session)
        } else {
            session.channel_failure(channel)?;
            Ok(())
        }
    }

    async fn data(
        &mut self,
        channel: ChannelId,
        data: &[u8],
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        let tx = self.channels.get(&channel).and_then(|c| c.stdin.clone());
        if let Some(tx) = tx {
            let _ = tx.send(data.to_vec()).await;
        }
        Ok(())
    }

    async fn channel_eof(
        &mut self,
        channel: ChannelId,
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        if let Some(c) = self.channels.get_mut(&channel)
            && c.master.is_none()
        {
            c.stdin = None;
        }
        Ok(())
    }

    async fn channel_close(
        &mut self,
        channel: ChannelId,
        _session: &mut Session,
    ) -> Result<(), Self::Error> {
        self.channels.remove(&channel);
        Ok(())
    }
}

impl DebugSession {
    fn reply_start(
        &mut self,
        channel: ChannelId,
        command: Option<String>,
        sftp: bool,
        session: &mut Session,
    ) -> Result<(), russh::Error> {
        match self.start(channel, command, sftp, session) {
            Ok(()) => session.channel_success(channel)?,
            Err(e) => {
                tracing::warn!(session = self.session_id, error = %e, "could not start program");
                let _ = session.extended_data(
                    channel,
                    1,
                    format!("smarter-debug-agent: {e}\r\n").into_bytes(),
                );
                session.channel_failure(channel)?;
            }
        }
        Ok(())
    }
}
