//! Pod metadata from the container runtime: hostnames, application labels
//! and host-network pods, which the CNI records cannot tell.
//!
//! Two sources, chosen by config:
//!
//! * **CRI** (containerd, k3s): `RuntimeService.ListPodSandbox` once at
//!   start and on every resync, and `PodSandboxStatus` (verbose) for each
//!   sandbox the moment its record appears, so the hostname and app-name
//!   forms arrive together with the pod name. The hostname comes from
//!   containerd's verbose info (`config.hostname`), host networking from the
//!   sandbox's network namespace mode (`NODE`). Host-network pods have no
//!   CNI record: they are found through the `GetContainerEvents` stream
//!   (sandbox start/stop events) and, with runtimes that lack it, by the list
//!   at start and at each resync (`runtime_resync_s`).
//!   Pod addresses come only from the records (the runtime's view of a
//!   sandbox lags its CNI teardown).
//! * **Docker**: the Engine API over its unix socket, through `bollard`:
//!   `GET /containers/json` at start, then the `GET /events` stream (start,
//!   die, destroy) with a `GET /containers/{id}/json` per started container:
//!   fully event-driven. When dockerd stops the stream ends; it is opened
//!   again after 2 s, followed by a full list (events may have been missed).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use futures_util::StreamExt;
use hyper_util::rt::TokioIo;
use smarter_common::docker::bollard::models::ContainerInspectResponse;
use smarter_common::docker::bollard::query_parameters::EventsOptions;
use tokio::net::UnixStream;
use tokio::sync::mpsc;
use tonic::transport::{Channel, Endpoint};

use crate::proto::runtime_v1 as cri;
use crate::proto::runtime_v1::runtime_service_client::RuntimeServiceClient;
use crate::watch::LocalNames;
use crate::zone::{Pod, app_name};

/// Talking to the runtime failed.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    /// The CRI endpoint could not be set up.
    #[error("CRI socket {}: {source}", path.display())]
    Connect {
        /// The socket.
        path: PathBuf,
        /// Why it failed.
        source: tonic::transport::Error,
    },
    /// A CRI call failed.
    #[error("CRI {call}: {status}")]
    Cri {
        /// The RPC.
        call: &'static str,
        /// The gRPC status.
        status: Box<tonic::Status>,
    },
    /// A Docker Engine API call failed.
    #[error(transparent)]
    Docker(#[from] smarter_common::docker::DockerError),
}

/// Application name from a label map.
fn app_from(labels: &HashMap<String, String>) -> Option<String> {
    app_name(|k| labels.get(k).map(String::as_str))
}

/// A CRI client over a unix socket.
#[derive(Debug, Clone)]
pub struct Cri {
    client: RuntimeServiceClient<Channel>,
}

impl Cri {
    /// A client for the CRI socket at `path`. Connects lazily (and
    /// reconnects) on calls, so a runtime that starts after us is fine.
    pub fn connect(path: &Path) -> Result<Self, RuntimeError> {
        let p = path.to_path_buf();
        let channel = Endpoint::try_from("http://[::1]:50051")
            .map_err(|source| RuntimeError::Connect {
                path: path.to_path_buf(),
                source,
            })?
            .connect_timeout(Duration::from_secs(5))
            .connect_with_connector_lazy(tower::service_fn(move |_: tonic::transport::Uri| {
                let p = p.clone();
                async move { Ok::<_, std::io::Error>(TokioIo::new(UnixStream::connect(p).await?)) }
            }));
        Ok(Self {
            client: RuntimeServiceClient::new(channel),
        })
    }

    /// Every ready pod sandbox.
    pub async fn list(&self) -> Result<Vec<Pod>, RuntimeError> {
        let req = cri::ListPodSandboxRequest {
            filter: Some(cri::PodSandboxFilter {
                state: Some(cri::PodSandboxStateValue {
                    state: cri::PodSandboxState::SandboxReady as i32,
                }),
                ..Default::default()
            }),
        };
        let items = self
            .client
            .clone()
            .list_pod_sandbox(req)
            .await
            .map_err(|s| RuntimeError::Cri {
                call: "ListPodSandbox",
                status: Box::new(s),
            })?
            .into_inner()
            .items;
        let mut pods = Vec::new();
        for item in items {
            if let Some(p) = self.pod(&item.id).await? {
                pods.push(p);
            }
        }
        Ok(pods)
    }

    /// Stream sandbox lifecycle events (`GetContainerEvents`) into `tx` as
    /// `("start" | "die", sandbox id)` until the stream ends. Events of
    /// ordinary containers are skipped: only sandboxes carry names.
    pub async fn events(
        &self,
        tx: mpsc::UnboundedSender<(String, String)>,
    ) -> Result<(), RuntimeError> {
        let err = |s: tonic::Status| RuntimeError::Cri {
            call: "GetContainerEvents",
            status: Box::new(s),
        };
        let mut stream = self
            .client
            .clone()
            .get_container_events(cri::GetEventsRequest {})
            .await
            .map_err(err)?
            .into_inner();
        while let Some(ev) = stream.message().await.map_err(err)? {
            let Some(status) = ev.pod_sandbox_status else {
                continue;
            };
            if ev.container_id != status.id {
                continue;
            }
            let action = match cri::ContainerEventType::try_from(ev.container_event_type) {
                Ok(
                    cri::ContainerEventType::ContainerCreatedEvent
                    | cri::ContainerEventType::ContainerStartedEvent,
                ) => "start",
                Ok(_) => "die",
                Err(_) => continue,
            };
            if tx.send((action.to_string(), ev.container_id)).is_err() {
                break;
            }
        }
        Ok(())
    }

    /// One sandbox, `None` when it is gone or not ready.
    pub async fn pod(&self, id: &str) -> Result<Option<Pod>, RuntimeError> {
        let req = cri::PodSandboxStatusRequest {
            pod_sandbox_id: id.to_string(),
            verbose: true,
        };
        let resp = match self.client.clone().pod_sandbox_status(req).await {
            Ok(r) => r.into_inner(),
            Err(s) if s.code() == tonic::Code::NotFound => return Ok(None),
            Err(s) => {
                return Err(RuntimeError::Cri {
                    call: "PodSandboxStatus",
                    status: Box::new(s),
                });
            }
        };
        Ok(pod_from_cri(id, &resp))
    }
}

/// Turn a `PodSandboxStatus` answer into a [`Pod`].
pub fn pod_from_cri(id: &str, resp: &cri::PodSandboxStatusResponse) -> Option<Pod> {
    let status = resp.status.as_ref()?;
    if status.state != cri::PodSandboxState::SandboxReady as i32 {
        return None;
    }
    let meta = status.metadata.clone().unwrap_or_default();
    let host_network = status
        .linux
        .as_ref()
        .and_then(|l| l.namespaces.as_ref())
        .and_then(|n| n.options.as_ref())
        .is_some_and(|o| o.network == cri::NamespaceMode::Node as i32);
    // containerd: info["info"] is JSON with config.hostname.
    let hostname = resp
        .info
        .get("info")
        .and_then(|j| serde_json::from_str::<serde_json::Value>(j).ok())
        .and_then(|v| v.pointer("/config/hostname")?.as_str().map(str::to_string))
        .filter(|h| !h.is_empty());
    Some(Pod {
        id: id.to_string(),
        name: Some(meta.name).filter(|n| !n.is_empty()),
        namespace: Some(meta.namespace).filter(|n| !n.is_empty()),
        hostname,
        app: app_from(&status.labels),
        host_network,
        // Under CRI, addresses come only from smarter-cni's records: a
        // sandbox being torn down is still READY for a moment after its
        // record is removed, and must not be served from the runtime's view.
        ips: Vec::new(),
    })
}

/// The event stream's filter: container start, die and destroy.
fn docker_event_filters() -> HashMap<String, Vec<String>> {
    HashMap::from([
        ("type".to_string(), vec!["container".to_string()]),
        (
            "event".to_string(),
            ["start", "die", "destroy"].map(String::from).to_vec(),
        ),
    ])
}

/// Turn `GET /containers/{id}/json` into a [`Pod`]; `None` when not running.
pub fn pod_from_docker(c: &ContainerInspectResponse) -> Option<Pod> {
    let id = c.id.clone()?;
    if c.state.as_ref().and_then(|s| s.running) != Some(true) {
        return None;
    }
    let config = c.config.as_ref();
    let labels = config.and_then(|c| c.labels.clone()).unwrap_or_default();
    // Pods run by cri-dockerd carry their Kubernetes names in labels.
    let name = labels.get("io.kubernetes.pod.name").cloned().or_else(|| {
        c.name
            .as_deref()
            .map(|n| n.trim_start_matches('/').to_string())
    });
    let namespace = labels.get("io.kubernetes.pod.namespace").cloned();
    let host_network = c
        .host_config
        .as_ref()
        .and_then(|h| h.network_mode.as_deref())
        == Some("host");
    let mut ips = Vec::new();
    let networks = c
        .network_settings
        .as_ref()
        .and_then(|n| n.networks.as_ref());
    for net in networks.into_iter().flat_map(HashMap::values) {
        for ip in [&net.ip_address, &net.global_ipv6_address] {
            if let Some(ip) = ip.as_deref().and_then(|i| i.parse().ok()) {
                ips.push(ip);
            }
        }
    }
    let hostname = config
        .and_then(|c| c.hostname.as_deref())
        .filter(|h| !h.is_empty() && !host_network)
        .map(str::to_string);
    Some(Pod {
        id,
        name,
        namespace,
        hostname,
        app: app_from(&labels),
        host_network,
        ips: if host_network { Vec::new() } else { ips },
    })
}

/// Docker as a pod metadata source.
#[derive(Debug, Clone)]
pub struct Docker {
    api: smarter_common::docker::Docker,
}

impl Docker {
    /// The daemon at `socket` (a connection per request).
    pub fn new(socket: &Path) -> Self {
        Self {
            api: smarter_common::docker::Docker::new(socket),
        }
    }

    /// One container, `None` when gone or not running.
    pub async fn pod(&self, id: &str) -> Result<Option<Pod>, RuntimeError> {
        Ok(self
            .api
            .inspect(id)
            .await?
            .as_ref()
            .and_then(pod_from_docker))
    }

    /// Every running container.
    pub async fn list(&self) -> Result<Vec<Pod>, RuntimeError> {
        let containers = self.api.list(HashMap::new()).await?;
        let mut pods = Vec::new();
        for id in containers.into_iter().filter_map(|c| c.id) {
            if let Some(p) = self.pod(&id).await? {
                pods.push(p);
            }
        }
        Ok(pods)
    }

    /// Stream container start/die/destroy events as `(action, id)` into
    /// `tx` until the stream ends (dockerd stopped or restarted).
    pub async fn events(
        &self,
        tx: mpsc::UnboundedSender<(String, String)>,
    ) -> Result<(), RuntimeError> {
        let options = EventsOptions {
            filters: Some(docker_event_filters()),
            ..Default::default()
        };
        let mut stream = self.api.client()?.events(Some(options));
        while let Some(ev) = stream.next().await {
            let ev = ev.map_err(self.api.error("events", None))?;
            let id = ev.actor.and_then(|a| a.id);
            if let (Some(a), Some(id)) = (ev.action, id)
                && tx.send((a, id)).is_err()
            {
                break;
            }
        }
        Ok(())
    }
}

/// Which runtime to ask.
#[derive(Debug, Clone)]
pub enum Source {
    /// A CRI runtime.
    Cri(Cri),
    /// Docker.
    Docker(Docker),
}

impl Source {
    async fn list(&self) -> Result<Vec<Pod>, RuntimeError> {
        match self {
            Self::Cri(c) => c.list().await,
            Self::Docker(d) => d.list().await,
        }
    }

    async fn pod(&self, id: &str) -> Result<Option<Pod>, RuntimeError> {
        match self {
            Self::Cri(c) => c.pod(id).await,
            Self::Docker(d) => d.pod(id).await,
        }
    }

    async fn events(
        &self,
        tx: mpsc::UnboundedSender<(String, String)>,
    ) -> Result<(), RuntimeError> {
        match self {
            Self::Cri(c) => c.events(tx).await,
            Self::Docker(d) => d.events(tx).await,
        }
    }
}

/// Keep runtime metadata in `names` current: a full list now and every
/// `resync`, a lookup for each sandbox id received on `new_ids` (sent by
/// the records watcher when a record appears) and, for Docker, its event
/// stream. Errors are logged and retried at the next resync.
pub async fn run(
    source: Source,
    names: LocalNames,
    mut new_ids: mpsc::UnboundedReceiver<String>,
    resync: Duration,
) {
    let (ev_tx, mut ev_rx) = mpsc::unbounded_channel::<(String, String)>();
    {
        let source = source.clone();
        let tx = ev_tx.clone();
        tokio::spawn(async move {
            loop {
                match source.events(tx.clone()).await {
                    Err(RuntimeError::Cri { status, .. })
                        if status.code() == tonic::Code::Unimplemented =>
                    {
                        tracing::info!(
                            "runtime has no GetContainerEvents; relying on records and resyncs"
                        );
                        break;
                    }
                    Err(error) => tracing::warn!(%error, "runtime event stream failed; retrying"),
                    Ok(()) => tracing::debug!("runtime event stream ended; reconnecting"),
                }
                if tx.is_closed() {
                    break;
                }
                tokio::time::sleep(Duration::from_secs(2)).await;
                // Events may have been missed: ask for a full list.
                if tx.send(("resync".into(), String::new())).is_err() {
                    break;
                }
            }
        });
    }
    drop(ev_tx);
    let mut tick = tokio::time::interval(resync);
    loop {
        tokio::select! {
            _ = tick.tick() => full_sync(&source, &names).await,
            Some(id) = new_ids.recv() => lookup(&source, &names, &id).await,
            Some((action, id)) = ev_rx.recv() => match action.as_str() {
                "start" => lookup(&source, &names, &id).await,
                "die" | "destroy" => names.update(|s| { s.remove_pod(&id); }),
                _ => full_sync(&source, &names).await,
            },
            else => break,
        }
    }
}

async fn full_sync(source: &Source, names: &LocalNames) {
    match source.list().await {
        Ok(pods) => {
            tracing::debug!(pods = pods.len(), "runtime sync");
            names.update(|s| s.replace_pods(pods));
        }
        Err(error) => tracing::warn!(%error, "cannot list pods"),
    }
}

async fn lookup(source: &Source, names: &LocalNames, id: &str) {
    match source.pod(id).await {
        Ok(Some(p)) => names.update(|s| s.upsert_pod(p)),
        Ok(None) => names.update(|s| {
            s.remove_pod(id);
        }),
        Err(error) => tracing::warn!(id, %error, "cannot get pod metadata"),
    }
}
