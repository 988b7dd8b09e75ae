//! Counters exposed on the optional `/metrics` endpoint (Prometheus text
//! format) and printed nowhere else.

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};

/// A monotonically increasing counter.
#[derive(Debug, Default)]
pub struct Counter(AtomicU64);

impl Counter {
    /// Add one.
    pub fn inc(&self) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }

    /// Current value.
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// A value that goes up and down.
#[derive(Debug, Default)]
pub struct Gauge(AtomicU64);

impl Gauge {
    /// Set the value.
    pub fn set(&self, v: u64) {
        self.0.store(v, Ordering::Relaxed);
    }

    /// Current value.
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// Every counter of the server.
#[derive(Debug, Default)]
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
}

impl Metrics {
    /// Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let counters = [
            (
                "smarter_dns_queries_total",
                "Questions received.",
                self.queries.get(),
            ),
            (
                "smarter_dns_local_answers_total",
                "Questions answered from local records.",
                self.local_answers.get(),
            ),
            (
                "smarter_dns_cache_hits_total",
                "Forwarded questions answered from the cache.",
                self.cache_hits.get(),
            ),
            (
                "smarter_dns_cache_misses_total",
                "Forwarded questions sent upstream.",
                self.cache_misses.get(),
            ),
            (
                "smarter_dns_upstream_failures_total",
                "Failed upstream exchanges.",
                self.upstream_failures.get(),
            ),
            (
                "smarter_dns_upstream_busy_total",
                "Questions failed because too many were in flight.",
                self.upstream_busy.get(),
            ),
            (
                "smarter_dns_refused_total",
                "Refused requests (zone transfers, other opcodes).",
                self.refused.get(),
            ),
        ];
        for (name, help, v) in counters {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} counter\n{name} {v}"
            );
        }
        let gauges = [
            (
                "smarter_dns_records",
                "Attachment records loaded.",
                self.records.get(),
            ),
            (
                "smarter_dns_names",
                "Distinct local names served.",
                self.names.get(),
            ),
        ];
        for (name, help, v) in gauges {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {v}");
        }
        out
    }
}
