//! Runtime metadata adds the hostname and app-name forms: against a fake CRI
//! runtime speaking the real runtime.v1 gRPC protocol on a unix socket, and
//! against the real dockerd (Docker mode).

mod common;

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use hickory_proto::op::ResponseCode;
use hickory_proto::rr::RecordType;
use smarter_dns::config::{Config, Runtime};
use smarter_dns::proto::runtime_v1 as cri;
use smarter_dns::proto::runtime_v1::runtime_service_server::{
    RuntimeService, RuntimeServiceServer,
};
use smarter_dns::service::{Running, bind, start};
use tonic::{Request, Response, Status};

const LIMIT: Duration = Duration::from_millis(50);

type EventSender = tokio::sync::mpsc::Sender<Result<cri::ContainerEventResponse, Status>>;

/// A CRI runtime holding sandboxes in memory; records the calls it gets.
#[derive(Clone, Default)]
struct FakeCri {
    sandboxes: Arc<Mutex<HashMap<String, cri::PodSandboxStatusResponse>>>,
    calls: Arc<Mutex<Vec<String>>>,
    subscribers: Arc<Mutex<Vec<EventSender>>>,
}

impl FakeCri {
    /// Send a sandbox event to every GetContainerEvents subscriber.
    async fn emit(&self, id: &str, kind: cri::ContainerEventType) {
        let status = self
            .sandboxes
            .lock()
            .ok()
            .and_then(|m| m.get(id).and_then(|r| r.status.clone()))
            .unwrap_or_else(|| cri::PodSandboxStatus {
                id: id.into(),
                ..Default::default()
            });
        let ev = cri::ContainerEventResponse {
            container_id: id.into(),
            container_event_type: kind as i32,
            created_at: 1,
            pod_sandbox_status: Some(status),
        };
        let subs: Vec<_> = self
            .subscribers
            .lock()
            .map(|s| s.clone())
            .unwrap_or_default();
        for s in subs {
            let _ = s.send(Ok(ev.clone())).await;
        }
    }
}

#[tonic::async_trait]
impl RuntimeService for FakeCri {
    type GetContainerEventsStream =
        tokio_stream::wrappers::ReceiverStream<Result<cri::ContainerEventResponse, Status>>;

    async fn get_container_events(
        &self,
        _request: Request<cri::GetEventsRequest>,
    ) -> Result<Response<Self::GetContainerEventsStream>, Status> {
        let (tx, rx) = tokio::sync::mpsc::channel(16);
        self.subscribers
            .lock()
            .map_err(|_| Status::internal("lock"))?
            .push(tx);
        self.calls
            .lock()
            .map_err(|_| Status::internal("lock"))?
            .push("GetContainerEvents".into());
        Ok(Response::new(tokio_stream::wrappers::ReceiverStream::new(
            rx,
        )))
    }

    async fn list_pod_sandbox(
        &self,
        request: Request<cri::ListPodSandboxRequest>,
    ) -> Result<Response<cri::ListPodSandboxResponse>, Status> {
        let want_ready = request
            .into_inner()
            .filter
            .and_then(|f| f.state)
            .map(|s| s.state == cri::PodSandboxState::SandboxReady as i32);
        self.calls
            .lock()
            .map_err(|_| Status::internal("lock"))?
            .push("ListPodSandbox".into());
        let map = self
            .sandboxes
            .lock()
            .map_err(|_| Status::internal("lock"))?;
        let items = map
            .values()
            .filter_map(|r| r.status.clone())
            .filter(|s| {
                want_ready.is_none() || (s.state == cri::PodSandboxState::SandboxReady as i32)
            })
            .map(|s| cri::PodSandbox {
                id: s.id,
                metadata: s.metadata,
                state: s.state,
                created_at: s.created_at,
                labels: s.labels,
                annotations: s.annotations,
                runtime_handler: s.runtime_handler,
            })
            .collect();
        Ok(Response::new(cri::ListPodSandboxResponse { items }))
    }

    async fn pod_sandbox_status(
        &self,
        request: Request<cri::PodSandboxStatusRequest>,
    ) -> Result<Response<cri::PodSandboxStatusResponse>, Status> {
        let id = request.into_inner().pod_sandbox_id;
        self.calls
            .lock()
            .map_err(|_| Status::internal("lock"))?
            .push(format!("PodSandboxStatus {id}"));
        let map = self
            .sandboxes
            .lock()
            .map_err(|_| Status::internal("lock"))?;
        map.get(&id)
            .cloned()
            .map(Response::new)
            .ok_or_else(|| Status::not_found(format!("sandbox {id} not found")))
    }
}

fn sandbox(
    id: &str,
    name: &str,
    ns: &str,
    hostname: &str,
    labels: &[(&str, &str)],
    ip: &str,
    host: bool,
) -> cri::PodSandboxStatusResponse {
    let mode = if host {
        cri::NamespaceMode::Node
    } else {
        cri::NamespaceMode::Pod
    };
    let info = serde_json::json!({"config": {"hostname": hostname, "metadata": {"name": name}}});
    cri::PodSandboxStatusResponse {
        status: Some(cri::PodSandboxStatus {
            id: id.into(),
            metadata: Some(cri::PodSandboxMetadata {
                name: name.into(),
                uid: format!("uid-{id}"),
                namespace: ns.into(),
                attempt: 0,
            }),
            state: cri::PodSandboxState::SandboxReady as i32,
            created_at: 1,
            network: Some(cri::PodSandboxNetworkStatus {
                ip: ip.into(),
                additional_ips: Vec::new(),
            }),
            linux: Some(cri::LinuxPodSandboxStatus {
                namespaces: Some(cri::Namespace {
                    options: Some(cri::NamespaceOption {
                        network: mode as i32,
                        ..Default::default()
                    }),
                }),
            }),
            labels: labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            annotations: HashMap::new(),
            runtime_handler: String::new(),
        }),
        info: [("info".to_string(), info.to_string())]
            .into_iter()
            .collect(),
    }
}

fn config(dir: &Path) -> Config {
    Config {
        records_dir: dir.join("records"),
        resolv_conf: dir.join("resolv.conf"),
        listen: vec![IpAddr::from([127, 0, 0, 1])],
        port: 0,
        dummy_interface: String::new(),
        cri_socket: dir.join("cri.sock"),
        ..Config::default()
    }
}

fn start_on(config: &Config) -> Result<(Running, SocketAddr), Box<dyn std::error::Error>> {
    let running = start(
        config,
        vec![bind(SocketAddr::new(config.listen[0], 0))?],
        None,
    )?;
    let addr = running.dns_addrs[0];
    Ok((running, addr))
}

async fn a(server: SocketAddr, name: &str) -> Vec<IpAddr> {
    match udp_query(server, name, RecordType::A, Duration::from_millis(200)).await {
        Ok(Some(m)) => addrs(&m),
        _ => Vec::new(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cri_metadata_adds_hostname_app_and_host_network_names() -> TestResult {
    let dir = tempfile::tempdir()?;
    let mut cfg = config(dir.path());
    cfg.runtime = Runtime::Cri;
    // Long resync: anything found after start comes from records or events.
    cfg.runtime_resync_s = 3600;
    let fake = FakeCri::default();
    {
        let mut m = fake.sandboxes.lock().map_err(|_| "lock")?;
        m.insert(
            "s1".into(),
            sandbox(
                "s1",
                "cam-7d9f",
                "iot",
                "camhost",
                &[("app", "camera")],
                "172.39.0.5",
                false,
            ),
        );
        m.insert(
            "h1".into(),
            sandbox(
                "h1",
                "agent-xyz",
                "kube-system",
                "gateway1",
                &[("name", "agent")],
                "",
                true,
            ),
        );
    }
    let listener = tokio::net::UnixListener::bind(&cfg.cri_socket)?;
    let server = tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(RuntimeServiceServer::new(fake.clone()))
            .serve_with_incoming(tokio_stream::wrappers::UnixListenerStream::new(listener)),
    );
    let (_running, dns) = start_on(&cfg)?;

    // The host-network pod comes from the initial list: 127.0.0.1 by app and pod name.
    let host = wait_until(Duration::from_secs(2), || async {
        a(dns, "agent.").await == vec![IpAddr::from([127, 0, 0, 1])]
    })
    .await;
    assert!(host.is_some(), "host-network pod not served");
    assert_eq!(
        a(dns, "agent-xyz.kube-system.svc.cluster.local.").await,
        vec![IpAddr::from([127, 0, 0, 1])]
    );
    // Its hostname is the node's, not a pod name.
    assert!(a(dns, "gateway1.").await.is_empty());

    // A record appears: hostname and app forms within 50 ms.
    write_record(
        &cfg.records_dir,
        &record("s1", "cam-7d9f", "iot", &["172.39.0.5"]),
    )?;
    let ip = IpAddr::from([172, 39, 0, 5]);
    let took = wait_until(LIMIT, || async {
        a(dns, "camhost.iot.svc.cluster.local.").await == vec![ip]
            && a(dns, "camera.").await == vec![ip]
    })
    .await;
    assert!(
        took.is_some(),
        "hostname/app names not served within 50 ms of the record"
    );
    for n in [
        "cam-7d9f.",
        "camhost.",
        "camera.svc.cluster.local.",
        "camera.cluster.local.",
        "camhost.iot.svc.cluster.local.",
    ] {
        assert_eq!(a(dns, n).await, vec![ip], "{n}");
    }
    assert!(
        fake.calls
            .lock()
            .map_err(|_| "lock")?
            .iter()
            .any(|c| c == "PodSandboxStatus s1"),
        "no PodSandboxStatus call for the new sandbox"
    );

    // Record removed: every form gone within 50 ms.
    smarter_common::records::remove(&cfg.records_dir, "s1", "eth0")?;
    let gone = wait_until(LIMIT, || async {
        rcode(
            &udp_query(dns, "camhost.iot.svc.cluster.local.", RecordType::A, LIMIT)
                .await
                .unwrap_or(None),
        ) == Some(ResponseCode::NXDomain)
            && a(dns, "camera.").await.is_empty()
    })
    .await;
    assert!(gone.is_some(), "names still served after the record went");

    // A host-network pod started later arrives through GetContainerEvents.
    let subscribed = wait_until(Duration::from_secs(2), || async {
        fake.calls
            .lock()
            .is_ok_and(|c| c.iter().any(|c| c == "GetContainerEvents"))
    })
    .await;
    assert!(subscribed.is_some(), "no GetContainerEvents subscription");
    fake.sandboxes.lock().map_err(|_| "lock")?.insert(
        "h2".into(),
        sandbox(
            "h2",
            "logger-abc",
            "kube-system",
            "gateway1",
            &[("app.kubernetes.io/name", "logger")],
            "",
            true,
        ),
    );
    fake.emit("h2", cri::ContainerEventType::ContainerStartedEvent)
        .await;
    let lo = vec![IpAddr::from([127, 0, 0, 1])];
    let started = wait_until(LIMIT, || async { a(dns, "logger.").await == lo }).await;
    assert!(
        started.is_some(),
        "host-network pod not served within 50 ms of its start event"
    );
    fake.sandboxes.lock().map_err(|_| "lock")?.remove("h2");
    fake.emit("h2", cri::ContainerEventType::ContainerStoppedEvent)
        .await;
    let stopped = wait_until(LIMIT, || async { a(dns, "logger.").await.is_empty() }).await;
    assert!(
        stopped.is_some(),
        "host-network pod still served after its stop event"
    );
    server.abort();
    Ok(())
}

/// A docker image with one static `pause` binary, removed on drop.
struct DockerFixture {
    image: String,
    containers: Vec<String>,
}

impl Drop for DockerFixture {
    fn drop(&mut self) {
        for c in &self.containers {
            let _ = Command::new("docker").args(["rm", "-f", c]).output();
        }
        let _ = Command::new("docker")
            .args(["rmi", "-f", &self.image])
            .output();
    }
}

fn sh(args: &[&str]) -> Result<String, Box<dyn std::error::Error>> {
    let out = Command::new(args[0]).args(&args[1..]).output()?;
    if !out.status.success() {
        return Err(format!("{args:?}: {}", String::from_utf8_lossy(&out.stderr)).into());
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn docker_mode_serves_running_containers_by_name_hostname_and_label() -> TestResult {
    if !require_root("docker containers")
        || !require_peer("docker", "docker.io")
        || !require_peer("cc", "gcc")
    {
        return Ok(());
    }
    if Command::new("docker")
        .arg("info")
        .output()
        .map(|o| !o.status.success())
        .unwrap_or(true)
    {
        skip("dockerd not running");
        return Ok(());
    }
    let dir = tempfile::tempdir()?;
    // Images cannot be pulled here: import a rootfs holding one static binary.
    let root = dir.path().join("rootfs");
    std::fs::create_dir_all(&root)?;
    let src = dir.path().join("pause.c");
    std::fs::write(
        &src,
        "#include <unistd.h>\nint main(void){for(;;)pause();}\n",
    )?;
    sh(&[
        "cc",
        "-static",
        "-O2",
        "-o",
        &root.join("pause").to_string_lossy(),
        &src.to_string_lossy(),
    ])?;
    let tar = dir.path().join("rootfs.tar");
    sh(&[
        "tar",
        "-C",
        &root.to_string_lossy(),
        "-cf",
        &tar.to_string_lossy(),
        ".",
    ])?;
    let tag = format!("smarter-dns-test-pause:{}", std::process::id());
    let mut fx = DockerFixture {
        image: tag.clone(),
        containers: Vec::new(),
    };
    sh(&["docker", "import", &tar.to_string_lossy(), &tag])?;
    let before = format!("sdt-before-{}", std::process::id());
    fx.containers.push(before.clone());
    sh(&[
        "docker",
        "run",
        "-d",
        "--name",
        &before,
        "--hostname",
        "beforehost",
        "--label",
        "app=early",
        &tag,
        "/pause",
    ])?;
    let before_ip: IpAddr = sh(&[
        "docker",
        "inspect",
        "-f",
        "{{.NetworkSettings.IPAddress}}",
        &before,
    ])?
    .parse()?;

    let mut cfg = config(dir.path());
    cfg.runtime = Runtime::Docker;
    let (_running, dns) = start_on(&cfg)?;
    // Listed at start.
    let listed = wait_until(Duration::from_secs(5), || async {
        a(dns, "early.").await == vec![before_ip]
    })
    .await;
    assert!(listed.is_some(), "running container not listed at start");
    assert_eq!(
        a(dns, &format!("{before}.default.svc.cluster.local.")).await,
        vec![before_ip]
    );
    assert_eq!(a(dns, "beforehost.").await, vec![before_ip]);

    // Started later: found through the event stream.
    let after = format!("sdt-after-{}", std::process::id());
    fx.containers.push(after.clone());
    sh(&[
        "docker",
        "run",
        "-d",
        "--name",
        &after,
        "--hostname",
        "afterhost",
        "--label",
        "app.kubernetes.io/name=late",
        &tag,
        "/pause",
    ])?;
    let after_ip: IpAddr = sh(&[
        "docker",
        "inspect",
        "-f",
        "{{.NetworkSettings.IPAddress}}",
        &after,
    ])?
    .parse()?;
    let seen = wait_until(Duration::from_secs(5), || async {
        a(dns, "late.cluster.local.").await == vec![after_ip]
            && a(dns, "afterhost.").await == vec![after_ip]
    })
    .await;
    assert!(seen.is_some(), "started container not served");

    // Host-network container: 127.0.0.1 by its label.
    let hostc = format!("sdt-host-{}", std::process::id());
    fx.containers.push(hostc.clone());
    sh(&[
        "docker",
        "run",
        "-d",
        "--name",
        &hostc,
        "--network",
        "host",
        "--label",
        "name=hostapp",
        &tag,
        "/pause",
    ])?;
    let host = wait_until(Duration::from_secs(5), || async {
        a(dns, "hostapp.").await == vec![IpAddr::from([127, 0, 0, 1])]
    })
    .await;
    assert!(
        host.is_some(),
        "host-network container not served as 127.0.0.1"
    );

    // Removed: gone.
    sh(&["docker", "rm", "-f", &after])?;
    let gone = wait_until(Duration::from_secs(5), || async {
        a(dns, "late.").await.is_empty()
    })
    .await;
    assert!(gone.is_some(), "removed container still served");
    Ok(())
}

/// Containers a fake dockerd knows: id → `GET /containers/{id}/json` body.
type FakeContainers = Arc<Mutex<HashMap<String, serde_json::Value>>>;

fn fake_container(id: &str, app: &str, ip: &str) -> serde_json::Value {
    serde_json::json!({
        "Id": id,
        "Name": format!("/{app}-pod"),
        "State": {"Running": true, "Pid": 1},
        "Config": {"Hostname": format!("{app}host"), "Labels": {"app": app}},
        "HostConfig": {"NetworkMode": "bridge"},
        "NetworkSettings": {"Networks": {"bridge": {"IPAddress": ip}}}
    })
}

/// A dockerd stand-in on `socket` speaking the Engine API's HTTP/1.1: list,
/// inspect, and an `/events` stream held open (sending nothing) until the
/// returned task is aborted, which closes every connection, as a stopping
/// dockerd does.
fn fake_dockerd(
    socket: &Path,
    containers: FakeContainers,
) -> Result<tokio::task::JoinHandle<()>, std::io::Error> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::UnixListener::bind(socket)?;
    Ok(tokio::spawn(async move {
        let mut conns = tokio::task::JoinSet::new();
        while let Ok((mut conn, _)) = listener.accept().await {
            let containers = Arc::clone(&containers);
            conns.spawn(async move {
                let mut head = Vec::new();
                let mut buf = [0u8; 1024];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match conn.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                let head = String::from_utf8_lossy(&head).into_owned();
                let path = head.split_whitespace().nth(1).unwrap_or("").to_string();
                let path = path.split('?').next().unwrap_or("");
                if path == "/events" {
                    let _ = conn
                        .write_all(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n\r\n")
                        .await;
                    // Held open until dockerd "stops".
                    let _ = conn.read(&mut buf).await;
                    std::future::pending::<()>().await;
                }
                let map = containers.lock().map(|m| m.clone()).unwrap_or_default();
                let (status, body) = if path == "/containers/json" {
                    let list: Vec<_> = map.keys().map(|id| serde_json::json!({"Id": id})).collect();
                    ("200 OK", serde_json::Value::from(list).to_string())
                } else if let Some(c) = path
                    .strip_prefix("/containers/")
                    .and_then(|p| p.strip_suffix("/json"))
                    .and_then(|id| map.get(id))
                {
                    ("200 OK", c.to_string())
                } else {
                    ("404 Not Found", r#"{"message":"no such container"}"#.to_string())
                };
                let _ = conn
                    .write_all(
                        format!(
                            "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
                            body.len()
                        )
                        .as_bytes(),
                    )
                    .await;
            });
        }
    }))
}

/// dockerd stops (the event stream ends), changes while it is down, and
/// starts again: the changes are served without any event, from the full
/// list smarter-dns makes once the stream is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn docker_mode_catches_up_after_dockerd_restarts() -> TestResult {
    let dir = tempfile::tempdir()?;
    let mut cfg = config(dir.path());
    cfg.runtime = Runtime::Docker;
    cfg.docker_socket = dir.path().join("docker.sock");
    // Long resync: only the reconnect can find what changed.
    cfg.runtime_resync_s = 3600;
    let containers = FakeContainers::default();
    containers.lock().map_err(|_| "lock")?.insert(
        "aaa111".into(),
        fake_container("aaa111", "alpha", "172.30.0.2"),
    );
    let dockerd = fake_dockerd(&cfg.docker_socket, Arc::clone(&containers))?;
    let (_running, dns) = start_on(&cfg)?;
    let alpha = vec![IpAddr::from([172, 30, 0, 2])];
    let listed = wait_until(Duration::from_secs(5), || async {
        a(dns, "alpha.").await == alpha
    })
    .await;
    assert!(listed.is_some(), "container not listed at start");

    // dockerd stops; while it is down alpha goes and beta comes.
    dockerd.abort();
    let _ = dockerd.await;
    std::fs::remove_file(&cfg.docker_socket)?;
    {
        let mut m = containers.lock().map_err(|_| "lock")?;
        m.remove("aaa111");
        m.insert(
            "bbb222".into(),
            fake_container("bbb222", "beta", "172.30.0.3"),
        );
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    // Down: still the old view (nothing to ask).
    assert_eq!(a(dns, "alpha.").await, alpha);
    let _dockerd = fake_dockerd(&cfg.docker_socket, Arc::clone(&containers))?;
    let beta = vec![IpAddr::from([172, 30, 0, 3])];
    let caught_up = wait_until(Duration::from_secs(6), || async {
        a(dns, "beta.").await == beta && a(dns, "alpha.").await.is_empty()
    })
    .await;
    assert!(
        caught_up.is_some(),
        "changes made while dockerd was down not served after it came back"
    );
    Ok(())
}
