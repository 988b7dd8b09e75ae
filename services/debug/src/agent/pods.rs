//! Finding a pod's process: in containerd's task state files (k3s' default
//! runtime), else through the Docker Engine API (k3s with
//! `--docker`, as SMARTER gateways run it): the pod's containers carry the
//! kubelet's `io.kubernetes.pod.namespace` and `io.kubernetes.pod.name`
//! labels; any running container of the pod shares its namespaces
//! (the sandbox's network, IPC and UTS), and the first one listed that is
//! not the sandbox gives the application's mount and PID namespaces.

use std::collections::HashMap;
use std::path::Path;

use smarter_common::docker::{Docker, DockerError};

/// Errors finding a pod.
#[derive(Debug, thiserror::Error)]
pub enum PodError {
    /// Talking to the container runtime failed.
    #[error(transparent)]
    Docker(#[from] DockerError),
    /// No running container belongs to the pod.
    #[error("no running container for pod {namespace}/{pod}")]
    NotFound {
        /// Namespace.
        namespace: String,
        /// Pod.
        pod: String,
    },
}

/// The host PID of a running process of pod `namespace/pod`.
pub async fn find_pid(socket: &Path, namespace: &str, pod: &str) -> Result<u32, PodError> {
    let not_found = || PodError::NotFound {
        namespace: namespace.into(),
        pod: pod.into(),
    };
    if !socket.exists() {
        // No Docker on this gateway: the pod is simply not there.
        return Err(not_found());
    }
    // Per lookup: follows `docker_socket` when the settings are reloaded.
    let docker = Docker::new(socket);
    let filters = HashMap::from([
        (
            "label".to_string(),
            vec![
                format!("io.kubernetes.pod.namespace={namespace}"),
                format!("io.kubernetes.pod.name={pod}"),
            ],
        ),
        ("status".to_string(), vec!["running".to_string()]),
    ]);
    let containers = docker.list(filters).await?;
    // Prefer an application container over the pause/sandbox one.
    let is_sandbox = |c: &&smarter_common::docker::bollard::models::ContainerSummary| {
        c.labels
            .as_ref()
            .and_then(|l| l.get("io.kubernetes.docker.type"))
            .is_some_and(|t| t == "podsandbox")
    };
    let ids = containers
        .iter()
        .filter(|c| !is_sandbox(c))
        .chain(containers.iter().filter(is_sandbox))
        .filter_map(|c| c.id.as_deref());
    for id in ids {
        // Gone since the list: try the next one.
        let Some(info) = docker.inspect(id).await? else {
            continue;
        };
        let pid = info.state.and_then(|s| s.pid).unwrap_or(0);
        if let Ok(pid @ 1..) = u32::try_from(pid) {
            return Ok(pid);
        }
    }
    Err(not_found())
}

/// The host PID of a running container of pod `namespace/pod`, from
/// containerd's task state (`<dir>/<id>/config.json` is the OCI spec, whose
/// CRI annotations name the pod; `<dir>/<id>/init.pid` is the process).
/// This is how a k3s gateway with its embedded containerd is searched
/// without a gRPC client. Returns `None` when no task matches.
pub fn find_pid_containerd(dirs: &[std::path::PathBuf], namespace: &str, pod: &str) -> Option<u32> {
    let mut sandbox = None;
    for dir in dirs {
        let Ok(entries) = std::fs::read_dir(dir) else {
            continue;
        };
        for e in entries.flatten() {
            let task = e.path();
            let Ok(text) = std::fs::read(task.join("config.json")) else {
                continue;
            };
            let Ok(spec) = serde_json::from_slice::<serde_json::Value>(&text) else {
                continue;
            };
            let ann = &spec["annotations"];
            if ann["io.kubernetes.cri.sandbox-namespace"] != namespace
                || ann["io.kubernetes.cri.sandbox-name"] != pod
            {
                continue;
            }
            let Some(pid) = std::fs::read_to_string(task.join("init.pid"))
                .ok()
                .and_then(|s| s.trim().parse::<u32>().ok())
                .filter(|p| *p > 0 && Path::new(&format!("/proc/{p}")).exists())
            else {
                continue;
            };
            // Prefer an application container over the sandbox (pause).
            if ann["io.kubernetes.cri.container-type"] == "sandbox" {
                sandbox.get_or_insert(pid);
            } else {
                return Some(pid);
            }
        }
    }
    sandbox
}

#[cfg(test)]
mod tests {
    use super::*;

    fn task(dir: &Path, id: &str, ns: &str, pod: &str, kind: &str, pid: u32) {
        let t = dir.join(id);
        std::fs::create_dir_all(&t).unwrap();
        let spec = serde_json::json!({
            "ociVersion": "1.1.0",
            "annotations": {
                "io.kubernetes.cri.container-type": kind,
                "io.kubernetes.cri.sandbox-namespace": ns,
                "io.kubernetes.cri.sandbox-name": pod,
            }
        });
        std::fs::write(t.join("config.json"), spec.to_string()).unwrap();
        std::fs::write(t.join("init.pid"), pid.to_string()).unwrap();
    }

    #[tokio::test]
    async fn no_docker_socket_means_no_such_pod() {
        let d = tempfile::tempdir().unwrap();
        let e = find_pid(&d.path().join("docker.sock"), "apps", "web")
            .await
            .unwrap_err();
        assert!(matches!(e, PodError::NotFound { .. }), "{e}");
    }

    #[test]
    fn containerd_state_lookup() {
        let d = tempfile::tempdir().unwrap();
        let me = std::process::id();
        task(d.path(), "aaa", "apps", "web", "sandbox", 1);
        task(d.path(), "bbb", "apps", "web", "container", me);
        task(d.path(), "ccc", "apps", "db", "container", me);
        std::fs::create_dir_all(d.path().join("junk")).unwrap();
        let dirs = [d.path().to_path_buf(), d.path().join("missing")];
        assert_eq!(find_pid_containerd(&dirs, "apps", "web"), Some(me));
        assert_eq!(find_pid_containerd(&dirs, "apps", "nope"), None);
        std::fs::remove_dir_all(d.path().join("bbb")).unwrap();
        assert_eq!(
            find_pid_containerd(&dirs, "apps", "web"),
            Some(1),
            "falls back to the sandbox"
        );
    }
}
