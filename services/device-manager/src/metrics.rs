//! `/metrics` (Prometheus text format) and `/healthz` on an optional local
//! address, served by a tiny HTTP/1.0-style handler: one request per
//! connection, `GET` only. Enough for a scraper and a liveness probe without
//! pulling in an HTTP stack.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, PoisonError};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

use crate::plugin::Shared;

/// Counters; gauges are computed from the registry at scrape time.
#[derive(Debug, Default)]
pub struct Metrics {
    registrations: AtomicU64,
    registration_failures: AtomicU64,
    allocations: AtomicU64,
    allocation_failures: AtomicU64,
    rescans: AtomicU64,
}

impl Metrics {
    /// A Register call succeeded.
    pub fn registered(&self) {
        self.registrations.fetch_add(1, Ordering::Relaxed);
    }
    /// A Register call failed.
    pub fn registration_failed(&self) {
        self.registration_failures.fetch_add(1, Ordering::Relaxed);
    }
    /// An Allocate call succeeded.
    pub fn allocated(&self) {
        self.allocations.fetch_add(1, Ordering::Relaxed);
    }
    /// An Allocate call was refused.
    pub fn allocation_failed(&self) {
        self.allocation_failures.fetch_add(1, Ordering::Relaxed);
    }
    /// A device-tree rescan ran.
    pub fn rescanned(&self) {
        self.rescans.fetch_add(1, Ordering::Relaxed);
    }
}

/// Render all metrics.
pub fn render(shared: &Shared) -> String {
    let m = &shared.metrics;
    let mut s = String::new();
    for (name, help, v) in [
        (
            "registrations_total",
            "Successful Register calls to the kubelet.",
            &m.registrations,
        ),
        (
            "registration_failures_total",
            "Failed Register calls.",
            &m.registration_failures,
        ),
        (
            "allocations_total",
            "Successful Allocate calls.",
            &m.allocations,
        ),
        (
            "allocation_failures_total",
            "Refused Allocate calls.",
            &m.allocation_failures,
        ),
        (
            "rescans_total",
            "Device tree rescans (events and health checks).",
            &m.rescans,
        ),
    ] {
        let _ = writeln!(
            s,
            "# HELP smarter_device_manager_{name} {help}\n# TYPE smarter_device_manager_{name} counter\nsmarter_device_manager_{name} {}",
            v.load(Ordering::Relaxed)
        );
    }
    let _ = writeln!(
        s,
        "# HELP smarter_device_manager_devices Devices per resource and health.\n# TYPE smarter_device_manager_devices gauge"
    );
    let reg = shared
        .registry
        .read()
        .unwrap_or_else(PoisonError::into_inner);
    for name in reg.names() {
        if let Some(res) = reg.get(name) {
            let healthy = res.devices.values().filter(|d| d.healthy).count();
            let unhealthy = res.devices.len() - healthy;
            let _ = writeln!(
                s,
                "smarter_device_manager_devices{{resource=\"smarter-devices/{name}\",health=\"Healthy\"}} {healthy}\nsmarter_device_manager_devices{{resource=\"smarter-devices/{name}\",health=\"Unhealthy\"}} {unhealthy}"
            );
        }
    }
    s
}

/// Serve `/metrics` and `/healthz` on `listener` until the task is dropped.
pub async fn serve(listener: TcpListener, shared: Arc<Shared>) {
    loop {
        let mut stream = match listener.accept().await {
            Ok((s, _)) => s,
            Err(e) => {
                // EMFILE and friends: do not spin.
                tracing::warn!(error = %e, "metrics accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                continue;
            }
        };
        let shared = Arc::clone(&shared);
        tokio::spawn(async move {
            let mut buf = vec![0u8; 2048];
            let mut len = 0;
            // Read until the end of the request head (or 2 KiB / 2 s).
            let read = tokio::time::timeout(std::time::Duration::from_secs(2), async {
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
            let (status, body, ctype) = match (parts.next(), parts.next()) {
                (Some("GET"), Some("/metrics")) => {
                    ("200 OK", render(&shared), "text/plain; version=0.0.4")
                }
                (Some("GET"), Some("/healthz")) => ("200 OK", "ok\n".to_string(), "text/plain"),
                (Some("GET"), _) => ("404 Not Found", "not found\n".to_string(), "text/plain"),
                _ => (
                    "405 Method Not Allowed",
                    "GET only\n".to_string(),
                    "text/plain",
                ),
            };
            let resp = format!(
                "HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = stream.write_all(resp.as_bytes()).await;
            let _ = stream.shutdown().await;
        });
    }
}
