//! What smarter-device-manager shows on `/metrics` and `/readyz`, served by
//! the shared server in `smarter_common::metrics` on `metrics_address`.
//!
//! Ready means: the first scan has been applied and every resource it
//! offers is registered with the kubelet (a node without matching devices
//! has nothing to register and is ready). A kubelet restart or a deleted
//! socket makes the resource unregistered until it registers again.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use smarter_common::metrics::{Counter, Endpoints, Exposition, Kind, Readiness};

use crate::plugin::Shared;

/// Counters and the registration state; device gauges are computed from the
/// registry at scrape time.
#[derive(Debug, Default)]
pub struct Metrics {
    registrations: Counter,
    registration_failures: Counter,
    allocations: Counter,
    allocation_failures: Counter,
    rescans: Counter,
    /// Resources whose last Register call succeeded and still stands.
    registered: Mutex<BTreeSet<String>>,
    /// The first scan has been applied.
    started: AtomicBool,
}

impl Metrics {
    /// A Register call for `resource` succeeded.
    pub fn registered(&self, resource: &str) {
        self.registrations.inc();
        self.registered
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(resource.to_string());
    }
    /// A Register call failed.
    pub fn registration_failed(&self, resource: &str) {
        self.registration_failures.inc();
        self.unregistered(resource);
    }
    /// `resource` must register again (kubelet restart, socket deleted) or
    /// is gone.
    pub fn unregistered(&self, resource: &str) {
        self.registered
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(resource);
    }
    /// An Allocate call succeeded.
    pub fn allocated(&self) {
        self.allocations.inc();
    }
    /// An Allocate call was refused.
    pub fn allocation_failed(&self) {
        self.allocation_failures.inc();
    }
    /// A device-tree rescan ran.
    pub fn rescanned(&self) {
        self.rescans.inc();
    }
    /// The first scan has been applied: readiness now follows registration.
    pub fn started(&self) {
        self.started.store(true, Ordering::Relaxed);
    }
}

/// Write every series of the service.
pub fn write(shared: &Shared, out: &mut Exposition) {
    let m = &shared.metrics;
    for (name, help, v) in [
        (
            "smarter_device_manager_registrations_total",
            "Successful Register calls to the kubelet.",
            &m.registrations,
        ),
        (
            "smarter_device_manager_registration_failures_total",
            "Failed Register calls.",
            &m.registration_failures,
        ),
        (
            "smarter_device_manager_allocations_total",
            "Successful Allocate calls.",
            &m.allocations,
        ),
        (
            "smarter_device_manager_allocation_failures_total",
            "Refused Allocate calls.",
            &m.allocation_failures,
        ),
        (
            "smarter_device_manager_rescans_total",
            "Device tree rescans (events and health checks).",
            &m.rescans,
        ),
    ] {
        out.counter(name, help, v.get());
    }
    let registered = m
        .registered
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .len();
    out.gauge(
        "smarter_device_manager_registered_resources",
        "Resources currently registered with the kubelet.",
        i64::try_from(registered).unwrap_or(i64::MAX),
    );
    out.family(
        "smarter_device_manager_devices",
        Kind::Gauge,
        "Devices per resource and health.",
    );
    let reg = shared
        .registry
        .read()
        .unwrap_or_else(PoisonError::into_inner);
    for name in reg.names() {
        if let Some(res) = reg.get(name) {
            let healthy = res.devices.values().filter(|d| d.healthy).count();
            let unhealthy = res.devices.len() - healthy;
            let resource = format!("smarter-devices/{name}");
            for (health, n) in [("Healthy", healthy), ("Unhealthy", unhealthy)] {
                out.sample(
                    "smarter_device_manager_devices",
                    &[("resource", &resource), ("health", health)],
                    u64::try_from(n).unwrap_or(u64::MAX),
                );
            }
        }
    }
}

/// Render all series (tests and tools; the server uses [`write`]).
pub fn render(shared: &Shared) -> String {
    let mut out = Exposition::new();
    write(shared, &mut out);
    out.finish()
}

/// Ready when started and every offered resource is registered.
pub fn readiness(shared: &Shared) -> Readiness {
    let m = &shared.metrics;
    if !m.started.load(Ordering::Relaxed) {
        return Readiness::not_ready("scanning the device tree");
    }
    let reg = shared
        .registry
        .read()
        .unwrap_or_else(PoisonError::into_inner);
    let registered = m.registered.lock().unwrap_or_else(PoisonError::into_inner);
    let offered: Vec<&str> = reg.names().collect();
    let waiting: Vec<&str> = offered
        .iter()
        .copied()
        .filter(|n| !registered.contains(*n))
        .collect();
    match (offered.len(), waiting.as_slice()) {
        (0, _) => Readiness::ready("no device matches a rule; nothing to register"),
        (n, []) => Readiness::ready(format!("{n} resources registered with the kubelet")),
        (n, w) => Readiness::not_ready(format!(
            "{} of {n} resources not registered with the kubelet yet (e.g. smarter-devices/{})",
            w.len(),
            w[0]
        )),
    }
}

struct Probe(Arc<Shared>);

impl Endpoints for Probe {
    fn metrics(&self, out: &mut Exposition) {
        write(&self.0, out);
    }
    fn readiness(&self) -> Readiness {
        readiness(&self.0)
    }
}

/// Serve `/metrics`, `/healthz` and `/readyz` on `addr` (empty: nowhere)
/// until the returned handle is dropped.
pub async fn start(
    addr: &str,
    shared: Arc<Shared>,
) -> Result<Option<smarter_common::metrics::Running>, smarter_common::metrics::ListenError> {
    smarter_common::metrics::start(addr, Arc::new(Probe(shared))).await
}
