//! Per-pod sessions: a process in its own namespaces (made with `unshare`)
//! stands in for the pod, and a small Docker Engine API server on a unix
//! socket (real wire protocol: `/containers/json` with label filters,
//! `/containers/ID/json` with `State.Pid`) stands in for the runtime. Needs
//! root (setns); skips otherwise.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixListener;
use std::process::{Command, Stdio};

use common::*;

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%'
            && i + 2 < b.len()
            && let Ok(v) = u8::from_str_radix(&s[i + 1..i + 3], 16)
        {
            out.push(v);
            i += 3;
            continue;
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Serves the two Docker API calls the agent makes, for one pod `apps/web` at `pid`.
fn fake_docker(listener: UnixListener, pid: u32) {
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { return };
            let mut reader = BufReader::new(conn.try_clone().unwrap());
            let mut request_line = String::new();
            if reader.read_line(&mut request_line).is_err() {
                continue;
            }
            // Drain headers.
            loop {
                let mut l = String::new();
                if reader.read_line(&mut l).unwrap_or(0) == 0 || l == "\r\n" {
                    break;
                }
            }
            let path = percent_decode(request_line.split_whitespace().nth(1).unwrap_or(""));
            let body = if path.starts_with("/containers/json") {
                if path.contains("io.kubernetes.pod.namespace=apps")
                    && path.contains("io.kubernetes.pod.name=web")
                {
                    r#"[{"Id":"c0ffee","Labels":{"io.kubernetes.pod.namespace":"apps","io.kubernetes.pod.name":"web","io.kubernetes.docker.type":"container"}}]"#.to_string()
                } else {
                    "[]".to_string()
                }
            } else if path.starts_with("/containers/c0ffee/json") {
                format!(r#"{{"Id":"c0ffee","State":{{"Running":true,"Pid":{pid}}}}}"#)
            } else {
                let _ = conn.write_all(b"HTTP/1.0 404 Not Found\r\n\r\n{}");
                continue;
            };
            let _ = write!(
                conn,
                "HTTP/1.0 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            );
        }
    });
}

fn child_of(parent: u32) -> Option<u32> {
    for e in std::fs::read_dir("/proc").ok()?.flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        let after = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
        let ppid: u32 = after
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        if ppid == parent {
            return Some(pid);
        }
    }
    None
}

#[test]
fn pod_session_lands_in_the_pods_namespaces() {
    if !smarter_test_support::require_root("pod sessions (setns)") {
        return;
    }
    if !have_openssh() {
        return;
    }
    let (_pod, pod_pid) = standin_pod();

    let mut w = World::new();
    let sock = w.path("docker.sock");
    fake_docker(UnixListener::bind(&sock).unwrap(), pod_pid);
    let extra = format!(
        "docker_socket = \"{}\"\ncontainerd_state_dirs = []\n",
        sock.display()
    );
    check_pod_sessions(&mut w, &extra);
}

#[test]
fn pod_found_in_containerd_task_state() {
    if !smarter_test_support::require_root("pod sessions (setns)") {
        return;
    }
    if !have_openssh() {
        return;
    }
    let (_pod, pod_pid) = standin_pod();
    let mut w = World::new();
    // containerd's layout: <state>/<task id>/{config.json (OCI spec), init.pid}.
    let state = w.path("containerd-state");
    for (id, kind) in [("sandbox0", "sandbox"), ("app0", "container")] {
        let t = state.join(id);
        std::fs::create_dir_all(&t).unwrap();
        let spec = serde_json::json!({"ociVersion": "1.1.0", "annotations": {
            "io.kubernetes.cri.container-type": kind,
            "io.kubernetes.cri.sandbox-namespace": "apps",
            "io.kubernetes.cri.sandbox-name": "web"}});
        std::fs::write(t.join("config.json"), spec.to_string()).unwrap();
        std::fs::write(t.join("init.pid"), pod_pid.to_string()).unwrap();
    }
    let extra = format!(
        "docker_socket = \"{}\"\ncontainerd_state_dirs = [\"{}\"]\n",
        w.path("no-docker.sock").display(),
        state.display()
    );
    check_pod_sessions(&mut w, &extra);
}

/// The stand-in pod: own UTS, IPC, network, mount and PID namespaces.
fn standin_pod() -> (Proc, u32) {
    let mut pod = Proc(
        Command::new("unshare")
            .args([
                "--uts",
                "--ipc",
                "--net",
                "--mount",
                "--pid",
                "--fork",
                "--mount-proc",
                "--kill-child",
            ])
            .args([
                "sh",
                "-c",
                "hostname pod-standin && echo ready && exec sleep 120",
            ])
            .stdout(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let mut ready = [0u8; 6];
    pod.0
        .stdout
        .as_mut()
        .unwrap()
        .read_exact(&mut ready)
        .unwrap();
    assert_eq!(&ready, b"ready\n");
    let pod_pid = child_of(pod.0.id()).expect("pod process");
    (pod, pod_pid)
}

/// With an agent configured by `extra` finding pod apps/web: sessions land
/// in it, other pods and the host are refused, missing pods are reported.
fn check_pod_sessions(w: &mut World, extra: &str) {
    let key = w.start_agent("gateway-17", "agent", extra);
    w.enrol("gateway-17", &key);
    let erin = w.add_developer("erin", None);
    w.grant("erin", "gateway-17", Some("apps"), Some("web"), None);
    let alice = w.add_developer("alice", None);
    w.grant("alice", "gateway-17", None, None, None);
    w.wait_connected("gateway-17");

    // In the pod: its hostname, its network (only lo), its PID namespace.
    let o = w.ssh(
        &erin,
        &[
            "-l",
            "apps/web",
            "gateway-17",
            "hostname; cat /proc/net/dev | tail -n +3 | cut -d: -f1; cat /proc/1/comm",
        ],
    );
    assert!(o.status.success(), "{}", stderr(&o));
    let out = stdout(&o);
    let lines: Vec<&str> = out.lines().map(str::trim).collect();
    assert_eq!(lines, ["pod-standin", "lo", "sleep"], "{out}");
    w.wait_audit("session.start", "target pod apps/web");

    // The same developer cannot reach another pod or the host.
    let o = w.ssh(&erin, &["-l", "apps/db", "gateway-17", "true"]);
    assert_eq!(o.status.code(), Some(255));
    w.wait_audit("session.denied", "no grant covers target pod apps/db");

    // Granted, but no such pod running on the gateway: refused by the agent, audited.
    w.grant("erin", "gateway-17", Some("apps"), Some("gone"), None);
    let o = w.ssh(&erin, &["-l", "apps/gone", "gateway-17", "true"]);
    assert_eq!(o.status.code(), Some(255));
    w.wait_audit(
        "session.denied",
        "at agent: no running container for pod apps/gone",
    );

    // A host session is on the host.
    let o = w.ssh(&alice, &["gateway-17", "hostname"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_ne!(stdout(&o).trim(), "pod-standin");
}

#[test]
fn host_sessions_enter_the_configured_host_namespaces() {
    if !smarter_test_support::require_root("entering namespaces (setns)") {
        return;
    }
    if !have_openssh() {
        return;
    }
    // Stand-in for PID 1 of the real host as seen from an agent in a hostPID pod.
    let (_host, host_pid) = standin_pod();
    let mut w = World::new();
    let key = w.start_agent(
        "gateway-17",
        "agent",
        &format!("host_namespaces_pid = {host_pid}\n"),
    );
    w.enrol("gateway-17", &key);
    let alice = w.add_developer("alice", None);
    w.grant("alice", "gateway-17", None, None, None);
    w.wait_connected("gateway-17");
    let o = w.ssh(&alice, &["gateway-17", "hostname"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(stdout(&o).trim(), "pod-standin");
}
