//! A kubelet double that speaks the real v1beta1 protocol over unix sockets:
//! it serves `Registration` on `<dir>/kubelet.sock` (checking version, name
//! and endpoint as the kubelet does), dials each plugin's endpoint, calls
//! `GetDevicePluginOptions`, consumes `ListAndWatch`, and calls `Allocate` and
//! `GetPreferredAllocation` on demand. [`FakeKubelet::restart`] does what a
//! kubelet restart does to the directory: it deletes every socket and
//! re-creates `kubelet.sock`.
#![allow(dead_code, unreachable_pub)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::v1beta1_grpc::{device_plugin_client, registration_server};
use hyper_util::rt::TokioIo;
use smarter_device_manager::proto::v1beta1 as pb;
use tokio::net::UnixListener;
use tokio::net::UnixStream;
use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;
use tokio_stream::StreamExt;
use tokio_stream::wrappers::UnixListenerStream;
use tonic::transport::{Channel, Endpoint};
use tonic::{Request, Response, Status};

/// A tonic gRPC channel over the unix socket `path` (the URI is a dummy;
/// the connector dials `path`): the kubelet double's client stack.
pub async fn connect_unix(path: &Path) -> Result<Channel, tonic::transport::Error> {
    let p = path.to_path_buf();
    Endpoint::from_static("http://[::1]:50051")
        .connect_timeout(Duration::from_secs(5))
        .connect_with_connector(tower::service_fn(move |_: tonic::transport::Uri| {
            let p = p.clone();
            async move { Ok::<_, std::io::Error>(TokioIo::new(UnixStream::connect(p).await?)) }
        }))
        .await
}

/// What the double knows about one registered resource.
#[derive(Debug, Clone, Default)]
pub struct Plugin {
    /// Endpoint from the latest Register.
    pub endpoint: String,
    /// Options from Register.
    pub options: Option<pb::DevicePluginOptions>,
    /// Options from GetDevicePluginOptions.
    pub served_options: Option<pb::DevicePluginOptions>,
    /// How many times it registered.
    pub registrations: u32,
    /// Latest ListAndWatch list: (ID, health).
    pub devices: Vec<(String, String)>,
    /// ListAndWatch messages received.
    pub updates: u32,
    /// When the latest list arrived.
    pub updated_at: Option<Instant>,
    /// ListAndWatch streams that ended (the plugin closed them).
    pub streams_ended: u32,
}

#[derive(Debug, Default)]
struct Inner {
    plugins: BTreeMap<String, Plugin>,
    refused: Vec<String>,
}

#[derive(Debug)]
struct State {
    dir: PathBuf,
    inner: Mutex<Inner>,
    generation: watch::Sender<u64>,
}

impl State {
    fn bump(&self) {
        self.generation.send_modify(|g| *g += 1);
    }
}

#[derive(Debug, Clone)]
struct Registration(Arc<State>);

fn valid_name(resource: &str) -> Result<(), String> {
    let (domain, name) = resource
        .split_once('/')
        .ok_or_else(|| format!("{resource}: not an extended resource name"))?;
    if domain.is_empty() || domain.ends_with("kubernetes.io") || resource.starts_with("requests.") {
        return Err(format!("{resource}: bad domain"));
    }
    let ok = !name.is_empty()
        && name.len() <= 63
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        && name.starts_with(|c: char| c.is_ascii_alphanumeric())
        && name.ends_with(|c: char| c.is_ascii_alphanumeric());
    if ok {
        Ok(())
    } else {
        Err(format!("{resource}: invalid name part"))
    }
}

#[tonic::async_trait]
impl registration_server::Registration for Registration {
    async fn register(
        &self,
        request: Request<pb::RegisterRequest>,
    ) -> Result<Response<pb::Empty>, Status> {
        let r = request.into_inner();
        let check = if r.version != "v1beta1" {
            Err(format!("unsupported version {}", r.version))
        } else if r.endpoint.contains('/') || r.endpoint.is_empty() {
            Err(format!("endpoint {} is not a basename", r.endpoint))
        } else {
            valid_name(&r.resource_name)
        };
        if let Err(e) = check {
            self.0
                .inner
                .lock()
                .map_err(|_| Status::internal("lock"))?
                .refused
                .push(e.clone());
            self.0.bump();
            return Err(Status::invalid_argument(e));
        }
        {
            let mut inner = self.0.inner.lock().map_err(|_| Status::internal("lock"))?;
            let p = inner.plugins.entry(r.resource_name.clone()).or_default();
            p.endpoint = r.endpoint.clone();
            p.options = r.options;
            p.registrations += 1;
        }
        self.0.bump();
        // Like the kubelet: dial the endpoint, get options, open ListAndWatch.
        let state = Arc::clone(&self.0);
        tokio::spawn(async move {
            let sock = state.dir.join(&r.endpoint);
            let Ok(ch) = connect_unix(&sock).await else {
                return;
            };
            let mut client = device_plugin_client::DevicePluginClient::new(ch);
            let Ok(opts) = client.get_device_plugin_options(pb::Empty {}).await else {
                return;
            };
            if let Ok(mut inner) = state.inner.lock() {
                inner
                    .plugins
                    .entry(r.resource_name.clone())
                    .or_default()
                    .served_options = Some(opts.into_inner());
            }
            let Ok(stream) = client.list_and_watch(pb::Empty {}).await else {
                return;
            };
            let mut stream = stream.into_inner();
            while let Some(Ok(msg)) = stream.next().await {
                if let Ok(mut inner) = state.inner.lock() {
                    let p = inner.plugins.entry(r.resource_name.clone()).or_default();
                    p.devices = msg
                        .devices
                        .iter()
                        .map(|d| (d.id.clone(), d.health.clone()))
                        .collect();
                    p.updates += 1;
                    p.updated_at = Some(Instant::now());
                }
                state.bump();
            }
            if let Ok(mut inner) = state.inner.lock() {
                inner
                    .plugins
                    .entry(r.resource_name.clone())
                    .or_default()
                    .streams_ended += 1;
            }
            state.bump();
        });
        Ok(Response::new(pb::Empty {}))
    }
}

/// The double.
#[derive(Debug)]
pub struct FakeKubelet {
    state: Arc<State>,
    server: Option<(oneshot::Sender<()>, JoinHandle<()>)>,
}

impl FakeKubelet {
    /// Serve Registration on `<dir>/kubelet.sock`.
    pub fn start(dir: &Path) -> std::io::Result<Self> {
        let state = Arc::new(State {
            dir: dir.to_path_buf(),
            inner: Mutex::new(Inner::default()),
            generation: watch::channel(0).0,
        });
        let mut k = Self {
            state,
            server: None,
        };
        k.listen()?;
        Ok(k)
    }

    fn listen(&mut self) -> std::io::Result<()> {
        let sock = self.state.dir.join("kubelet.sock");
        let _ = std::fs::remove_file(&sock);
        let listener = UnixListener::bind(&sock)?;
        let (tx, rx) = oneshot::channel();
        let svc =
            registration_server::RegistrationServer::new(Registration(Arc::clone(&self.state)));
        let task = tokio::spawn(async move {
            let _ = tonic::transport::Server::builder()
                .serve_with_incoming_shutdown(svc, UnixListenerStream::new(listener), async {
                    let _ = rx.await;
                })
                .await;
        });
        self.server = Some((tx, task));
        Ok(())
    }

    /// What a kubelet restart does: stop, delete every socket in the dir
    /// (not the checkpoint), listen on a new `kubelet.sock`.
    pub async fn restart(&mut self) -> std::io::Result<()> {
        if let Some((tx, task)) = self.server.take() {
            let _ = tx.send(());
            task.abort();
            let _ = task.await;
        }
        for e in std::fs::read_dir(&self.state.dir)?.flatten() {
            if e.file_name() != "kubelet_internal_checkpoint" && !e.path().is_dir() {
                std::fs::remove_file(e.path())?;
            }
        }
        self.listen()
    }

    /// A snapshot of one resource.
    pub fn plugin(&self, resource: &str) -> Option<Plugin> {
        self.state.inner.lock().ok()?.plugins.get(resource).cloned()
    }

    /// All resources seen.
    pub fn resources(&self) -> Vec<String> {
        self.state
            .inner
            .lock()
            .map(|i| i.plugins.keys().cloned().collect())
            .unwrap_or_default()
    }

    /// Registrations refused (bad version or name).
    pub fn refused(&self) -> Vec<String> {
        self.state
            .inner
            .lock()
            .map(|i| i.refused.clone())
            .unwrap_or_default()
    }

    /// Wait until `pred` holds for `resource`, or fail after `timeout`.
    pub async fn wait_for(
        &self,
        resource: &str,
        timeout: Duration,
        pred: impl Fn(&Plugin) -> bool,
    ) -> Result<Plugin, String> {
        let mut rx = self.state.generation.subscribe();
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            rx.borrow_and_update();
            if let Some(p) = self.plugin(resource)
                && pred(&p)
            {
                return Ok(p);
            }
            if tokio::time::timeout_at(deadline, rx.changed())
                .await
                .is_err()
            {
                return Err(format!(
                    "timed out after {timeout:?} waiting for {resource}; now: {:?}",
                    self.plugin(resource)
                ));
            }
        }
    }

    async fn client(
        &self,
        resource: &str,
    ) -> Result<device_plugin_client::DevicePluginClient<tonic::transport::Channel>, String> {
        let p = self
            .plugin(resource)
            .ok_or_else(|| format!("{resource} not registered"))?;
        let ch = connect_unix(&self.state.dir.join(&p.endpoint))
            .await
            .map_err(|e| e.to_string())?;
        Ok(device_plugin_client::DevicePluginClient::new(ch))
    }

    /// Allocate `ids` for one container.
    pub async fn allocate(
        &self,
        resource: &str,
        ids: &[&str],
    ) -> Result<pb::ContainerAllocateResponse, String> {
        let mut c = self.client(resource).await?;
        let resp = c
            .allocate(pb::AllocateRequest {
                container_requests: vec![pb::ContainerAllocateRequest {
                    devices_ids: ids.iter().map(|s| s.to_string()).collect(),
                }],
            })
            .await
            .map_err(|s| s.message().to_string())?;
        resp.into_inner()
            .container_responses
            .into_iter()
            .next()
            .ok_or_else(|| "no container response".to_string())
    }

    /// GetPreferredAllocation for one container.
    pub async fn preferred(
        &self,
        resource: &str,
        available: &[&str],
        must: &[&str],
        size: i32,
    ) -> Result<Vec<String>, String> {
        let mut c = self.client(resource).await?;
        let resp = c
            .get_preferred_allocation(pb::PreferredAllocationRequest {
                container_requests: vec![pb::ContainerPreferredAllocationRequest {
                    available_device_i_ds: available.iter().map(|s| s.to_string()).collect(),
                    must_include_device_i_ds: must.iter().map(|s| s.to_string()).collect(),
                    allocation_size: size,
                }],
            })
            .await
            .map_err(|s| s.message().to_string())?;
        Ok(resp
            .into_inner()
            .container_responses
            .into_iter()
            .next()
            .map(|c| c.device_i_ds)
            .unwrap_or_default())
    }
}

impl Drop for FakeKubelet {
    fn drop(&mut self) {
        if let Some((tx, task)) = self.server.take() {
            let _ = tx.send(());
            task.abort();
        }
    }
}
