//! One kubelet device plugin per resource: a `DevicePlugin` gRPC server on
//! `<plugin_dir>/smarter-<name>.sock`, registered with the kubelet's
//! `Registration` service on `kubelet.sock`.
//!
//! Each resource has one task ([`spawn`]) that owns at most one server at a
//! time, so there are never two servers for one resource: it serves first,
//! then registers (retrying with exponential backoff), and on
//! [`Ctl::SocketDeleted`] stops the old server before binding a new one; on
//! [`Ctl::KubeletRestarted`] it registers again (re-serving first if the
//! kubelet deleted our socket). [`Ctl::Stop`] ends the server and removes the
//! socket.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::Duration;

use tokio::sync::{Notify, Semaphore};
use tokio::task::JoinHandle;

use crate::metrics::Metrics;
use crate::proto::v1beta1 as pb;
use crate::registry::{HEALTHY, Registry, Slot, UNHEALTHY};
use crate::rules;
use smarter_h2::{self as grpc, Call, Status};

/// Our `user-agent` in calls to the kubelet.
const USER_AGENT: &str = concat!("smarter-device-manager/", env!("CARGO_PKG_VERSION"));
/// The kubelet's Register method.
const REGISTER: &str = "/v1beta1.Registration/Register";
/// The API version we speak.
pub const API_VERSION: &str = "v1beta1";
/// The kubelet's registration socket name in the plugin dir.
pub const KUBELET_SOCKET: &str = "kubelet.sock";
/// First registration retry delay.
pub const BACKOFF_INITIAL: Duration = Duration::from_millis(100);
/// Longest registration retry delay.
pub const BACKOFF_MAX: Duration = Duration::from_secs(30);
/// Dial timeout towards the kubelet (the original's 5 s).
pub const DIAL_TIMEOUT: Duration = Duration::from_secs(5);
/// Registrations in flight at once. Each holds a client HTTP/2 connection
/// (about 30 KiB of buffers); 1,000 at once leave the heap fragmented for
/// good, a few at a time register 1,000 resources about as fast. See
/// `docs/decisions/0015-plugin-memory.md`.
pub const REGISTER_CONCURRENCY: usize = 4;

static REGISTERING: Semaphore = Semaphore::const_new(REGISTER_CONCURRENCY);

/// State shared by the service and every plugin server.
#[derive(Debug, Default)]
pub struct Shared {
    /// Resources, devices, health.
    pub registry: RwLock<Registry>,
    /// Current ListAndWatch list per resource.
    lists: Mutex<BTreeMap<String, Arc<grpc::Feed>>>,
    /// Counters for `/metrics`.
    pub metrics: Metrics,
    /// The task serving every plugin socket (started on first use).
    mux: std::sync::OnceLock<grpc::Mux<PluginService>>,
}

impl Shared {
    /// Push the registry's current lists to every ListAndWatch stream, and
    /// drop the channels of removed resources (which ends their streams).
    pub fn publish(&self) {
        let reg = self.registry.read().unwrap_or_else(PoisonError::into_inner);
        let mut lists = self.lists.lock().unwrap_or_else(PoisonError::into_inner);
        lists.retain(|name, feed| {
            let keep = reg.get(name).is_some();
            if !keep {
                feed.close();
            }
            keep
        });
        for name in reg.names() {
            let msg = list_message(&reg.slots(name).unwrap_or_default());
            match lists.get(name) {
                Some(feed) => feed.publish(msg),
                None => {
                    lists.insert(name.to_string(), Arc::new(grpc::Feed::new(msg)));
                }
            }
        }
    }

    /// Send every resource's devices as Unhealthy (before shutting down, so
    /// the kubelet stops admitting pods to them at once).
    pub fn publish_all_unhealthy(&self) {
        let reg = self.registry.read().unwrap_or_else(PoisonError::into_inner);
        let lists = self.lists.lock().unwrap_or_else(PoisonError::into_inner);
        for (name, feed) in lists.iter() {
            let mut slots = reg.slots(name).unwrap_or_default();
            slots.iter_mut().for_each(|s| s.healthy = false);
            feed.publish(list_message(&slots));
        }
    }

    fn mux(&self) -> std::io::Result<&grpc::Mux<PluginService>> {
        if let Some(m) = self.mux.get() {
            return Ok(m);
        }
        let m = grpc::Mux::start()?;
        Ok(self.mux.get_or_init(|| m))
    }

    fn subscribe(&self, name: &str) -> Option<Arc<grpc::Feed>> {
        let lists = self.lists.lock().unwrap_or_else(PoisonError::into_inner);
        lists.get(name).cloned()
    }
}

/// The encoded ListAndWatch message for `slots`.
fn list_message(slots: &[Slot]) -> Vec<u8> {
    prost::Message::encode_to_vec(&to_proto_list(slots))
}

/// The options we give in Register and GetDevicePluginOptions.
pub fn options() -> pb::DevicePluginOptions {
    pb::DevicePluginOptions {
        pre_start_required: false,
        get_preferred_allocation_available: true,
    }
}

/// The `DevicePlugin` service for one resource, served by [`grpc`].
#[derive(Debug)]
pub struct PluginService {
    name: String,
    shared: Arc<Shared>,
}

fn to_proto_list(slots: &[Slot]) -> pb::ListAndWatchResponse {
    pb::ListAndWatchResponse {
        devices: slots
            .iter()
            .map(|s| pb::Device {
                id: s.id.clone(),
                health: if s.healthy { HEALTHY } else { UNHEALTHY }.to_string(),
                topology: None,
            })
            .collect(),
    }
}

/// The service's gRPC path prefix.
const SERVICE: &str = "/v1beta1.DevicePlugin/";

fn decode<M: prost::Message + Default>(msg: &[u8]) -> Result<M, Status> {
    M::decode(msg).map_err(|e| {
        Status::new(
            Status::INVALID_ARGUMENT,
            format!("cannot decode {}: {e}", std::any::type_name::<M>()),
        )
    })
}

fn reply<M: prost::Message>(r: Result<M, Status>) -> Call {
    Call::Reply(r.map(|m| m.encode_to_vec()))
}

impl grpc::Handler for PluginService {
    fn call(&self, path: &str, msg: &[u8]) -> Call {
        let method = path.strip_prefix(SERVICE).unwrap_or_default();
        match method {
            "GetDevicePluginOptions" => reply(Ok(options())),
            "ListAndWatch" => match self.shared.subscribe(&self.name) {
                Some(rx) => Call::Watch(rx),
                None => Call::Reply(Err(Status::new(
                    Status::NOT_FOUND,
                    format!("resource {} is gone", self.name),
                ))),
            },
            "GetPreferredAllocation" => reply(decode(msg).map(|r| self.preferred(&r))),
            "Allocate" => reply(decode(msg).and_then(|r| self.allocate(&r))),
            "PreStartContainer" => reply(Ok(pb::PreStartContainerResponse {})),
            _ => Call::Reply(Err(Status::new(
                Status::UNIMPLEMENTED,
                format!("unknown method {path}"),
            ))),
        }
    }
}

impl PluginService {
    fn preferred(
        &self,
        request: &pb::PreferredAllocationRequest,
    ) -> pb::PreferredAllocationResponse {
        let reg = self
            .shared
            .registry
            .read()
            .unwrap_or_else(PoisonError::into_inner);
        let container_responses = request
            .container_requests
            .iter()
            .map(|c| pb::ContainerPreferredAllocationResponse {
                device_i_ds: reg.preferred(
                    &self.name,
                    &c.available_device_i_ds,
                    &c.must_include_device_i_ds,
                    usize::try_from(c.allocation_size).unwrap_or(0),
                ),
            })
            .collect();
        pb::PreferredAllocationResponse {
            container_responses,
        }
    }

    fn allocate(&self, request: &pb::AllocateRequest) -> Result<pb::AllocateResponse, Status> {
        let reg = self
            .shared
            .registry
            .read()
            .unwrap_or_else(PoisonError::into_inner);
        let mut container_responses = Vec::new();
        for c in &request.container_requests {
            let a = match reg.allocate(&self.name, &c.devices_ids) {
                Ok(a) => a,
                Err(e) => {
                    self.shared.metrics.allocation_failed();
                    tracing::warn!(resource = %self.name, ids = ?c.devices_ids, error = %e, "Allocate refused");
                    return Err(Status::new(Status::FAILED_PRECONDITION, e.to_string()));
                }
            };
            tracing::info!(resource = %self.name, ids = ?c.devices_ids, nodes = a.nodes.len(), "Allocate");
            container_responses.push(pb::ContainerAllocateResponse {
                envs: a.env.into_iter().collect(),
                mounts: a
                    .mounts
                    .into_iter()
                    .map(|m| pb::Mount {
                        container_path: m.container_path,
                        host_path: m.host_path,
                        read_only: m.read_only,
                    })
                    .collect(),
                devices: a
                    .nodes
                    .into_iter()
                    .map(|(n, permissions)| pb::DeviceSpec {
                        container_path: n.container_path,
                        host_path: n.host_path.to_string_lossy().into_owned(),
                        permissions,
                    })
                    .collect(),
                annotations: Default::default(),
                cdi_devices: a
                    .cdi
                    .into_iter()
                    .map(|name| pb::CdiDevice { name })
                    .collect(),
            });
        }
        self.shared.metrics.allocated();
        Ok(pb::AllocateResponse {
            container_responses,
        })
    }
}

/// Failures talking to sockets.
#[derive(Debug, thiserror::Error)]
pub enum PluginError {
    /// Binding our socket failed.
    #[error("cannot listen on {path}: {source}")]
    Bind {
        /// Socket path.
        path: PathBuf,
        /// OS error.
        source: std::io::Error,
    },
    /// Removing a stale socket failed.
    #[error("cannot remove stale socket {path}: {source}")]
    RemoveStale {
        /// Socket path.
        path: PathBuf,
        /// OS error.
        source: std::io::Error,
    },
    /// Dialling a unix socket failed.
    #[error("cannot connect to {path}: {message}")]
    Connect {
        /// Socket path.
        path: PathBuf,
        /// Transport error.
        message: String,
    },
    /// The kubelet refused the registration.
    #[error("kubelet at {path} refused registration of {resource}: {message}")]
    Register {
        /// kubelet.sock.
        path: PathBuf,
        /// Resource name.
        resource: String,
        /// gRPC status message.
        message: String,
    },
}

/// Register `resource` (name part) served on `endpoint` with the kubelet.
pub async fn register(kubelet_sock: &Path, endpoint: &str, name: &str) -> Result<(), PluginError> {
    // Never closed, so acquiring cannot fail; if it did, register anyway.
    let _permit = REGISTERING.acquire().await.ok();
    // Boxed after the permit: with 1,000 resources waiting for one, their
    // call states would otherwise all be allocated at once, and the heap
    // left fragmented after.
    Box::pin(register_now(kubelet_sock, endpoint, name)).await
}

async fn register_now(kubelet_sock: &Path, endpoint: &str, name: &str) -> Result<(), PluginError> {
    let req = pb::RegisterRequest {
        version: API_VERSION.to_string(),
        endpoint: endpoint.to_string(),
        resource_name: rules::resource_name(name),
        options: Some(options()),
    };
    let refused = |message: String| PluginError::Register {
        path: kubelet_sock.to_path_buf(),
        resource: rules::resource_name(name),
        message,
    };
    let msg = prost::Message::encode_to_vec(&req);
    let call = grpc::call_unix(kubelet_sock, REGISTER, &msg, USER_AGENT);
    match tokio::time::timeout(DIAL_TIMEOUT, call).await {
        Err(_) => Err(refused("timed out".into())),
        Ok(Ok(_)) => Ok(()),
        Ok(Err(grpc::CallError::Status(s))) => Err(refused(s.message)),
        Ok(Err(grpc::CallError::Io(e))) => Err(PluginError::Connect {
            path: kubelet_sock.to_path_buf(),
            message: e.to_string(),
        }),
        Ok(Err(e)) => Err(refused(e.to_string())),
    }
}

/// The server for one resource: its listening socket, served with every
/// other resource's by the one [`grpc::Mux`] task, and the stop signal its
/// connections watch.
#[derive(Debug)]
struct Server {
    stop: Arc<grpc::StopSignal>,
}

impl Server {
    /// Bind `socket` (removing a stale one) and serve it.
    fn start(socket: &Path, svc: &Arc<PluginService>) -> Result<Self, PluginError> {
        match std::fs::remove_file(socket) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(source) => {
                return Err(PluginError::RemoveStale {
                    path: socket.to_path_buf(),
                    source,
                });
            }
        }
        let bind_err = |source| PluginError::Bind {
            path: socket.to_path_buf(),
            source,
        };
        let listener = std::os::unix::net::UnixListener::bind(socket).map_err(bind_err)?;
        let stop = Arc::new(grpc::StopSignal::default());
        svc.shared
            .mux()
            .and_then(|m| m.listen(listener, Arc::clone(svc), Arc::clone(&stop)))
            .map_err(bind_err)?;
        Ok(Self { stop })
    }

    /// Close the listener, end every ListAndWatch stream and close every
    /// connection gracefully (HTTP/2 GOAWAY); stop waiting after 2 s.
    async fn stop(self) {
        let Self { stop } = self;
        stop.stop();
        // The listener and each connection hold a clone until closed.
        // Stopping is rare: polling the count is simpler than a notifier.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(2);
        while Arc::strong_count(&stop) > 1 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
}

/// What the service tells a plugin task.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ctl {
    /// `kubelet.sock` was created: register again.
    KubeletRestarted,
    /// Our socket vanished: serve anew, then register.
    SocketDeleted,
    /// Stop serving and remove the socket.
    Stop,
}

impl Ctl {
    fn bit(self) -> u8 {
        match self {
            Ctl::KubeletRestarted => 1,
            Ctl::SocketDeleted => 2,
            Ctl::Stop => 4,
        }
    }
}

/// A control mailbox: pending messages as bits and a wake-up. Messages
/// coalesce, strongest first (Stop covers everything, a deleted socket
/// covers a kubelet restart, as both re-register). Smaller than a tokio
/// channel, which counts with one task per resource.
#[derive(Debug, Default)]
struct Mailbox {
    bits: AtomicU8,
    wake: Notify,
}

/// Sends [`Ctl`] to a plugin task; dropping it stops the task.
#[derive(Debug)]
pub struct CtlSender(Arc<Mailbox>);

impl CtlSender {
    /// Tell the task `m`.
    pub fn send(&self, m: Ctl) {
        self.0.bits.fetch_or(m.bit(), Ordering::AcqRel);
        self.0.wake.notify_one();
    }
}

impl Drop for CtlSender {
    fn drop(&mut self) {
        self.send(Ctl::Stop);
    }
}

#[derive(Debug)]
struct CtlReceiver(Arc<Mailbox>);

impl CtlReceiver {
    async fn recv(&self) -> Ctl {
        loop {
            let bits = self.0.bits.swap(0, Ordering::AcqRel);
            for m in [Ctl::Stop, Ctl::SocketDeleted, Ctl::KubeletRestarted] {
                if bits & m.bit() != 0 {
                    return m;
                }
            }
            self.0.wake.notified().await;
        }
    }
}

/// The handle of one resource's task.
#[derive(Debug)]
pub struct PluginHandle {
    /// Send control messages.
    pub ctl: CtlSender,
    /// The task; it ends after [`Ctl::Stop`].
    pub task: JoinHandle<()>,
    /// The socket it serves.
    pub socket: PathBuf,
}

/// Start the task that serves and registers resource `name`.
pub fn spawn(name: &str, plugin_dir: &Path, shared: Arc<Shared>) -> PluginHandle {
    let mailbox = Arc::new(Mailbox::default());
    let socket = plugin_dir.join(rules::socket_name(name));
    let svc = Arc::new(PluginService {
        name: name.to_string(),
        shared,
    });
    let task = tokio::spawn(plugin_task(
        svc,
        socket.clone(),
        plugin_dir.join(KUBELET_SOCKET),
        CtlReceiver(Arc::clone(&mailbox)),
    ));
    PluginHandle {
        ctl: CtlSender(mailbox),
        task,
        socket,
    }
}

/// The next control message, or None once `until` passes.
async fn next_ctl(ctl: &CtlReceiver, until: Option<tokio::time::Instant>) -> Option<Ctl> {
    match until {
        // Boxed: only backoffs have a deadline; the idle wait, where 1,000
        // resource tasks spend their lives, has none.
        Some(t) => tokio::select! {
            m = ctl.recv() => Some(m),
            () = Box::pin(tokio::time::sleep_until(t)) => None,
        },
        None => Some(ctl.recv().await),
    }
}

/// What a resource task keeps between control messages. Boxed, with the
/// serving and registering in a boxed future: the idle task (where 1,000
/// resource tasks spend their lives) then holds little more than its
/// mailbox wait.
#[derive(Debug)]
struct TaskState {
    socket: PathBuf,
    kubelet_sock: PathBuf,
    endpoint: String,
    server: Option<Server>,
    need_register: bool,
    backoff: Duration,
}

async fn plugin_task(
    svc: Arc<PluginService>,
    socket: PathBuf,
    kubelet_sock: PathBuf,
    ctl: CtlReceiver,
) {
    let mut st = Box::new(TaskState {
        endpoint: rules::socket_name(&svc.name),
        socket,
        kubelet_sock,
        server: None,
        need_register: true,
        backoff: BACKOFF_INITIAL,
    });
    while Box::pin(activate(&svc, &ctl, &mut st)).await {
        match ctl.recv().await {
            Ctl::KubeletRestarted => {
                svc.shared.metrics.unregistered(&svc.name);
                st.need_register = true;
                st.backoff = BACKOFF_INITIAL;
            }
            Ctl::SocketDeleted => {
                tracing::info!(resource = %svc.name, socket = %st.socket.display(), "our socket was deleted");
                svc.shared.metrics.unregistered(&svc.name);
                st.need_register = true;
                st.backoff = BACKOFF_INITIAL;
            }
            Ctl::Stop => break,
        }
    }
    svc.shared.metrics.unregistered(&svc.name);
    if let Some(s) = st.server.take() {
        Box::pin(s.stop()).await;
    }
    match std::fs::remove_file(&st.socket) {
        Ok(()) => {
            tracing::info!(resource = %svc.name, socket = %st.socket.display(), "stopped, socket removed")
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => tracing::warn!(socket = %st.socket.display(), error = %e, "cannot remove socket"),
    }
}

/// Serve (again, when not serving or our socket vanished), then register
/// if needed, retrying with backoff. False when told to stop.
async fn activate(svc: &Arc<PluginService>, ctl: &CtlReceiver, st: &mut TaskState) -> bool {
    let name = svc.name.as_str();
    loop {
        if st.server.is_none() || !st.socket.exists() {
            if let Some(s) = st.server.take() {
                s.stop().await;
            }
            match Server::start(&st.socket, svc) {
                Ok(s) => {
                    tracing::info!(resource = %name, socket = %st.socket.display(), "serving");
                    st.server = Some(s);
                    st.need_register = true;
                }
                Err(e) => {
                    tracing::error!(resource = %name, error = %e, retry_ms = st.backoff.as_millis() as u64, "cannot serve");
                    let until = tokio::time::Instant::now() + st.backoff;
                    match next_ctl(ctl, Some(until)).await {
                        Some(Ctl::Stop) => return false,
                        Some(_) => st.need_register = true,
                        None => {}
                    }
                    st.backoff = (st.backoff * 2).min(BACKOFF_MAX);
                    continue;
                }
            }
        }
        if !st.need_register {
            return true;
        }
        // A Stop (SIGTERM) must not wait for a slow kubelet.
        let result = tokio::select! {
            r = register(&st.kubelet_sock, &st.endpoint, name) => r,
            m = ctl.recv() => match m {
                Ctl::Stop => return false,
                Ctl::KubeletRestarted | Ctl::SocketDeleted => continue,
            },
        };
        match result {
            Ok(()) => {
                tracing::info!(resource = %rules::resource_name(name), endpoint = %st.endpoint, "registered with kubelet");
                svc.shared.metrics.registered(name);
                st.need_register = false;
                return true;
            }
            Err(e) => {
                svc.shared.metrics.registration_failed(name);
                tracing::warn!(resource = %name, error = %e, retry_ms = st.backoff.as_millis() as u64, "registration failed");
                let until = tokio::time::Instant::now() + st.backoff;
                st.backoff = (st.backoff * 2).min(BACKOFF_MAX);
                // A kubelet restart cuts the wait short.
                if next_ctl(ctl, Some(until)).await == Some(Ctl::Stop) {
                    return false;
                }
            }
        }
    }
}
