//! What smarter-dns shows on its optional `/metrics` endpoint (Prometheus
//! text format), with `/healthz` and `/readyz`, served by the shared server
//! in `smarter_common::metrics`.
//!
//! Recording is a relaxed atomic add. The answer latency histogram is fed
//! per receive batch on the UDP fast path: one monotonic clock read (vDSO,
//! no system call) when a batch arrives and one when its inline answers have
//! been sent, and every answer of the batch is recorded with that time in
//! one step. Forwarded answers are timed from their batch's arrival to
//! their own send.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

pub use smarter_common::metrics::{Counter, Gauge, Histogram};
use smarter_common::metrics::{Endpoints, Exposition, Readiness};

/// Upper bounds of the answer latency buckets, in seconds: local and cached
/// answers take tens of microseconds, forwarded ones a LAN or WAN round
/// trip, up to the upstream timeout (1.5 s by default) and beyond.
pub const ANSWER_BUCKETS: &[f64] = &[
    0.000_025, 0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1,
    0.25, 0.5, 1.0, 2.5, 5.0,
];

/// Every series of the server.
#[derive(Debug)]
pub struct Metrics {
    /// Questions received.
    pub queries: Counter,
    /// Questions answered from local records.
    pub local_answers: Counter,
    /// Forwarded questions answered from the cache.
    pub cache_hits: Counter,
    /// Forwarded questions not in the cache.
    pub cache_misses: Counter,
    /// Upstream exchanges that failed (timeout, error, SERVFAIL/REFUSED).
    pub upstream_failures: Counter,
    /// Questions refused because too many were in flight.
    pub upstream_busy: Counter,
    /// Zone transfers and other refused requests.
    pub refused: Counter,
    /// Attachment records currently loaded.
    pub records: Gauge,
    /// Distinct names currently served.
    pub names: Gauge,
    /// Time from receiving a question to sending its answer.
    pub answer_duration: Histogram,
    /// Sockets bound, records loaded and the records watch running.
    ready: AtomicBool,
}

impl Default for Metrics {
    fn default() -> Self {
        Self {
            queries: Counter::default(),
            local_answers: Counter::default(),
            cache_hits: Counter::default(),
            cache_misses: Counter::default(),
            upstream_failures: Counter::default(),
            upstream_busy: Counter::default(),
            refused: Counter::default(),
            records: Gauge::default(),
            names: Gauge::default(),
            answer_duration: Histogram::seconds(ANSWER_BUCKETS),
            ready: AtomicBool::new(false),
        }
    }
}

impl Metrics {
    /// `n` answers sent `took` after their question arrived.
    pub fn answered(&self, took: Duration, n: usize) {
        self.answer_duration
            .observe_n(took, u64::try_from(n).unwrap_or(u64::MAX));
    }

    /// Whether `/readyz` says ready: set once the sockets are bound and the
    /// records loaded, cleared when watching the records stops.
    pub fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::Relaxed);
    }

    /// Write every series.
    pub fn write(&self, out: &mut Exposition) {
        for (name, help, v) in [
            (
                "smarter_dns_queries_total",
                "Questions received.",
                &self.queries,
            ),
            (
                "smarter_dns_local_answers_total",
                "Questions answered from local records.",
                &self.local_answers,
            ),
            (
                "smarter_dns_cache_hits_total",
                "Forwarded questions answered from the cache.",
                &self.cache_hits,
            ),
            (
                "smarter_dns_cache_misses_total",
                "Forwarded questions sent upstream.",
                &self.cache_misses,
            ),
            (
                "smarter_dns_upstream_failures_total",
                "Failed upstream exchanges.",
                &self.upstream_failures,
            ),
            (
                "smarter_dns_upstream_busy_total",
                "Questions failed because too many were in flight.",
                &self.upstream_busy,
            ),
            (
                "smarter_dns_refused_total",
                "Refused requests (zone transfers, other opcodes).",
                &self.refused,
            ),
        ] {
            out.counter(name, help, v.get());
        }
        out.gauge(
            "smarter_dns_records",
            "Attachment records loaded.",
            self.records.get(),
        );
        out.gauge(
            "smarter_dns_names",
            "Distinct local names served.",
            self.names.get(),
        );
        out.histogram(
            "smarter_dns_answer_duration_seconds",
            "Time from receiving a question to sending its answer.",
            &self.answer_duration,
        );
    }

    /// Prometheus text exposition of the service's own series.
    pub fn render(&self) -> String {
        let mut out = Exposition::new();
        self.write(&mut out);
        out.finish()
    }
}

impl Endpoints for Metrics {
    fn metrics(&self, out: &mut Exposition) {
        self.write(out);
    }

    fn readiness(&self) -> Readiness {
        if self.ready.load(Ordering::Relaxed) {
            Readiness::ready(format!(
                "serving {} names from {} records",
                self.names.get(),
                self.records.get()
            ))
        } else {
            Readiness::not_ready("records not loaded or no longer watched")
        }
    }
}
