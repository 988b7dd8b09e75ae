//! Finding a pod's process: in containerd's task state files (k3s' default
//! runtime), else through the Docker Engine API (k3s with
//! `--docker`, as SMARTER gateways run it): the pod's containers carry the
//! kubelet's `io.kubernetes.pod.namespace` and `io.kubernetes.pod.name`
//! labels; any running container of the pod shares its namespaces
//! (the sandbox's network, IPC and UTS), and the first one listed that is
//! not the sandbox gives the application's mount and PID namespaces.

use std::path::Path;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Errors finding a pod.
#[derive(Debug, thiserror::Error)]
pub enum PodError {
    /// Talking to the container runtime failed.
    #[error("docker API at {path}: {message}")]
    Runtime {
        /// Socket.
        path: String,
        /// What went wrong.
        message: String,
    },
    /// No running container belongs to the pod.
    #[error("no running container for pod {namespace}/{pod}")]
    NotFound {
        /// Namespace.
        namespace: String,
        /// Pod.
        pod: String,
    },
}

fn percent_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

async fn get(socket: &Path, path: &str) -> Result<serde_json::Value, String> {
    let mut s = tokio::net::UnixStream::connect(socket)
        .await
        .map_err(|e| e.to_string())?;
    let req = format!("GET {path} HTTP/1.0\r\nHost: docker\r\nAccept: application/json\r\n\r\n");
    s.write_all(req.as_bytes())
        .await
        .map_err(|e| e.to_string())?;
    let mut resp = Vec::new();
    s.read_to_end(&mut resp).await.map_err(|e| e.to_string())?;
    let split = resp
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or("malformed HTTP response")?;
    let head = String::from_utf8_lossy(&resp[..split]);
    let status = head.split_whitespace().nth(1).unwrap_or("");
    if status != "200" {
        return Err(format!("GET {path}: HTTP {status}"));
    }
    serde_json::from_slice(&resp[split + 4..]).map_err(|e| format!("GET {path}: {e}"))
}

/// The host PID of a running process of pod `namespace/pod`.
pub async fn find_pid(socket: &Path, namespace: &str, pod: &str) -> Result<u32, PodError> {
    if !socket.exists() {
        // No Docker on this gateway: the pod is simply not there.
        return Err(PodError::NotFound {
            namespace: namespace.into(),
            pod: pod.into(),
        });
    }
    let rt = |message: String| PodError::Runtime {
        path: socket.display().to_string(),
        message,
    };
    let filters = serde_json::json!({
        "label": [
            format!("io.kubernetes.pod.namespace={namespace}"),
            format!("io.kubernetes.pod.name={pod}"),
        ],
        "status": ["running"],
    });
    let list = get(
        socket,
        &format!(
            "/containers/json?filters={}",
            percent_encode(&filters.to_string())
        ),
    )
    .await
    .map_err(rt)?;
    let containers = list.as_array().cloned().unwrap_or_default();
    // Prefer an application container over the pause/sandbox one.
    let is_sandbox =
        |c: &serde_json::Value| c["Labels"]["io.kubernetes.docker.type"] == "podsandbox";
    let mut ids: Vec<&serde_json::Value> = containers.iter().filter(|c| !is_sandbox(c)).collect();
    ids.extend(containers.iter().filter(|c| is_sandbox(c)));
    for c in ids {
        let Some(id) = c["Id"].as_str() else { continue };
        let info = get(socket, &format!("/containers/{}/json", percent_encode(id)))
            .await
            .map_err(rt)?;
        if let Some(pid) = info["State"]["Pid"].as_u64().filter(|p| *p > 0) {
            return Ok(pid as u32);
        }
    }
    Err(PodError::NotFound {
        namespace: namespace.into(),
        pod: pod.into(),
    })
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

    #[test]
    fn encoding() {
        assert_eq!(percent_encode("a=b c"), "a%3Db%20c");
    }
}
