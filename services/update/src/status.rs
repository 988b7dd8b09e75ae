//! The agent's `/healthz`, `/readyz` and `/metrics` (Prometheus text format),
//! served by the shared server in `smarter_common::metrics`.
//!
//! * `/healthz`: 200 while the agent runs (liveness).
//! * `/readyz`: 200 when the booted slot runs the desired version and is
//!   marked good, else 503; the body is the one-line reason either way.
//! * `/metrics`: see [`render`], plus the process metrics every service has.

use std::sync::atomic::Ordering;
use std::sync::{Arc, PoisonError};

use smarter_common::metrics::{Endpoints, Exposition, Kind, Readiness};
use tokio::net::TcpListener;

use crate::agent::{Phase, SharedStatus};
use crate::download::Counters;

/// The metrics, all prefixed `smarter_update_`.
pub fn render(status: &SharedStatus, counters: &Counters) -> String {
    let mut out = Exposition::new();
    write(&mut out, status, counters);
    out.finish()
}

fn write(out: &mut Exposition, status: &SharedStatus, counters: &Counters) {
    let s = status
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .clone();
    out.gauge(
        "smarter_update_ready",
        "1 when the booted slot runs the desired version and is marked good.",
        u8::from(s.ready),
    );
    out.family(
        "smarter_update_phase",
        Kind::Gauge,
        "The agent's phase (1 = current).",
    );
    for p in Phase::ALL {
        out.sample(
            "smarter_update_phase",
            &[("phase", p.as_str())],
            u8::from(p == s.phase),
        );
    }
    out.family(
        "smarter_update_desired_info",
        Kind::Gauge,
        "The desired bundle version.",
    );
    if let Some(v) = &s.desired_version {
        out.sample("smarter_update_desired_info", &[("version", v)], 1u8);
    }
    out.family(
        "smarter_update_booted_info",
        Kind::Gauge,
        "The booted slot and the version of the bundle it carries.",
    );
    if let Some(slot) = &s.booted_slot {
        let version = s.booted_version.as_deref().unwrap_or("");
        out.sample(
            "smarter_update_booted_info",
            &[("slot", slot), ("version", version)],
            1u8,
        );
    }
    out.counter(
        "smarter_update_download_bytes_total",
        "Bundle bytes received from the network.",
        counters.bytes_transferred.load(Ordering::Relaxed),
    );
    out.counter(
        "smarter_update_downloads_completed_total",
        "Bundles downloaded and verified.",
        counters.completed.load(Ordering::Relaxed),
    );
    out.counter(
        "smarter_update_downloads_failed_total",
        "Downloads that stopped with an error.",
        counters.failed.load(Ordering::Relaxed),
    );
    if let Some((have, size)) = s.download {
        out.gauge(
            "smarter_update_download_progress_bytes",
            "Bytes of the bundle being downloaded that are on disk.",
            have,
        );
        out.gauge(
            "smarter_update_download_size_bytes",
            "Size of the bundle being downloaded.",
            size,
        );
    }
    if let Some(p) = s.install_percent {
        out.gauge(
            "smarter_update_install_progress_percent",
            "RAUC's progress installing the bundle.",
            i64::from(p),
        );
    }
    out.family(
        "smarter_update_last_error_info",
        Kind::Gauge,
        "The last error, until a step succeeds.",
    );
    if let Some(e) = &s.last_error {
        out.sample("smarter_update_last_error_info", &[("error", e)], 1u8);
    }
}

/// What the shared server asks the agent.
#[derive(Debug)]
struct Agent {
    status: SharedStatus,
    counters: Arc<Counters>,
}

impl Endpoints for Agent {
    fn metrics(&self, out: &mut Exposition) {
        write(out, &self.status, &self.counters);
    }

    fn readiness(&self) -> Readiness {
        let s = self.status.lock().unwrap_or_else(PoisonError::into_inner);
        Readiness {
            ready: s.ready,
            reason: s.reason.clone(),
        }
    }
}

/// Serve the endpoints on `listener` until the task is dropped.
pub async fn serve(listener: TcpListener, status: SharedStatus, counters: Arc<Counters>) {
    smarter_common::metrics::serve(listener, Arc::new(Agent { status, counters })).await;
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
