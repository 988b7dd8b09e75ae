//! The agent's `/healthz`, `/readyz` and `/metrics` (Prometheus text format),
//! served by a tiny HTTP handler: one `GET` per connection, enough for the
//! kubelet's probes and a scraper without an HTTP stack.
//!
//! * `/healthz`: 200 while the agent runs (liveness).
//! * `/readyz`: 200 when the booted slot runs the desired version and is
//!   marked good, else 503; the body is the one-line reason either way.
//! * `/metrics`: see [`render`].

use std::fmt::Write as _;
use std::sync::atomic::Ordering;
use std::sync::{Arc, PoisonError};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

use crate::agent::{Phase, SharedStatus};
use crate::download::Counters;

/// Escape a Prometheus label value.
fn label(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out
}

/// The metrics, all prefixed `smarter_update_`.
pub fn render(status: &SharedStatus, counters: &Counters) -> String {
    let s = status
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .clone();
    let mut out = String::new();
    let mut metric = |name: &str, kind: &str, help: &str, lines: &[String]| {
        let _ = writeln!(
            out,
            "# HELP smarter_update_{name} {help}\n# TYPE smarter_update_{name} {kind}"
        );
        for line in lines {
            let _ = writeln!(out, "smarter_update_{name}{line}");
        }
    };
    metric(
        "ready",
        "gauge",
        "1 when the booted slot runs the desired version and is marked good.",
        &[format!(" {}", u8::from(s.ready))],
    );
    let phases: Vec<String> = Phase::ALL
        .iter()
        .map(|p| format!("{{phase=\"{}\"}} {}", p.as_str(), u8::from(*p == s.phase)))
        .collect();
    metric(
        "phase",
        "gauge",
        "The agent's phase (1 = current).",
        &phases,
    );
    metric(
        "desired_info",
        "gauge",
        "The desired bundle version.",
        &s.desired_version
            .iter()
            .map(|v| format!("{{version=\"{}\"}} 1", label(v)))
            .collect::<Vec<_>>(),
    );
    metric(
        "booted_info",
        "gauge",
        "The booted slot and the version of the bundle it carries.",
        &s.booted_slot
            .iter()
            .map(|slot| {
                format!(
                    "{{slot=\"{}\",version=\"{}\"}} 1",
                    label(slot),
                    label(s.booted_version.as_deref().unwrap_or(""))
                )
            })
            .collect::<Vec<_>>(),
    );
    metric(
        "download_bytes_total",
        "counter",
        "Bundle bytes received from the network.",
        &[format!(
            " {}",
            counters.bytes_transferred.load(Ordering::Relaxed)
        )],
    );
    metric(
        "downloads_completed_total",
        "counter",
        "Bundles downloaded and verified.",
        &[format!(" {}", counters.completed.load(Ordering::Relaxed))],
    );
    metric(
        "downloads_failed_total",
        "counter",
        "Downloads that stopped with an error.",
        &[format!(" {}", counters.failed.load(Ordering::Relaxed))],
    );
    if let Some((have, size)) = s.download {
        metric(
            "download_progress_bytes",
            "gauge",
            "Bytes of the bundle being downloaded that are on disk.",
            &[format!(" {have}")],
        );
        metric(
            "download_size_bytes",
            "gauge",
            "Size of the bundle being downloaded.",
            &[format!(" {size}")],
        );
    }
    if let Some(p) = s.install_percent {
        metric(
            "install_progress_percent",
            "gauge",
            "RAUC's progress installing the bundle.",
            &[format!(" {p}")],
        );
    }
    metric(
        "last_error_info",
        "gauge",
        "The last error, until a step succeeds.",
        &s.last_error
            .iter()
            .map(|e| format!("{{error=\"{}\"}} 1", label(e)))
            .collect::<Vec<_>>(),
    );
    out
}

/// Serve the endpoints on `listener` until the task is dropped.
pub async fn serve(listener: TcpListener, status: SharedStatus, counters: Arc<Counters>) {
    loop {
        let mut stream = match listener.accept().await {
            Ok((s, _)) => s,
            Err(e) => {
                tracing::warn!(error = %e, "status endpoint: accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let status = Arc::clone(&status);
        let counters = Arc::clone(&counters);
        tokio::spawn(async move {
            let mut buf = vec![0u8; 2048];
            let mut len = 0;
            let read = tokio::time::timeout(Duration::from_secs(2), async {
                while len < buf.len() {
                    match stream.read(&mut buf[len..]).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => len += n,
                    }
                    if buf[..len].windows(4).any(|w| w == b"\r\n\r\n") {
                        break;
                    }
                }
            })
            .await;
            if read.is_err() {
                return;
            }
            let head = String::from_utf8_lossy(&buf[..len]);
            let mut parts = head.split_whitespace();
            let text = "text/plain; charset=utf-8";
            let (code, body, ctype) = match (parts.next(), parts.next()) {
                (Some("GET"), Some("/metrics")) => (
                    "200 OK",
                    render(&status, &counters),
                    "text/plain; version=0.0.4",
                ),
                (Some("GET"), Some("/healthz")) => ("200 OK", "ok\n".to_string(), text),
                (Some("GET"), Some("/readyz")) => {
                    let s = status.lock().unwrap_or_else(PoisonError::into_inner);
                    let code = if s.ready {
                        "200 OK"
                    } else {
                        "503 Service Unavailable"
                    };
                    (code, format!("{}\n", s.reason), text)
                }
                (Some("GET"), _) => ("404 Not Found", "not found\n".to_string(), text),
                _ => ("405 Method Not Allowed", "GET only\n".to_string(), text),
            };
            let response = format!(
                "HTTP/1.1 {code}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = stream.write_all(response.as_bytes()).await;
            let _ = stream.shutdown().await;
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::agent::Status;
    use std::sync::Mutex;

    #[test]
    fn metrics_name_versions_and_escape_errors() {
        let status = Arc::new(Mutex::new(Status {
            phase: Phase::RolledBack,
            ready: false,
            reason: "rolled back".into(),
            desired_version: Some("2026.12.1".into()),
            booted_slot: Some("rootfs.0".into()),
            booted_version: Some("2026.11.0".into()),
            last_error: Some("bad \"bundle\"\nline".into()),
            download: Some((5, 10)),
            install_percent: None,
        }));
        let counters = Counters::default();
        counters.bytes_transferred.store(1234, Ordering::Relaxed);
        let text = render(&status, &counters);
        for line in [
            "smarter_update_ready 0",
            "smarter_update_phase{phase=\"rolled-back\"} 1",
            "smarter_update_phase{phase=\"ready\"} 0",
            "smarter_update_desired_info{version=\"2026.12.1\"} 1",
            "smarter_update_booted_info{slot=\"rootfs.0\",version=\"2026.11.0\"} 1",
            "smarter_update_download_bytes_total 1234",
            "smarter_update_download_progress_bytes 5",
            "smarter_update_last_error_info{error=\"bad \\\"bundle\\\"\\nline\"} 1",
            "# TYPE smarter_update_download_bytes_total counter",
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "missing {line:?} in\n{text}"
            );
        }
        assert!(!text.contains("install_progress"));
    }
}
