//! Metrics every long-running service exposes, and the one small HTTP
//! server that serves them with its probes.
//!
//! * [`Counter`], [`Gauge`] and [`Histogram`]: plain atomics, so recording
//!   on a hot path is one or two relaxed atomic adds and never a lock or a
//!   system call. A histogram stores per-bucket counts and derives the
//!   cumulative `_bucket{le}` series and `_count` when rendered, so a scrape
//!   never sees a bucket smaller than the one before it.
//! * [`Exposition`]: writes the Prometheus text exposition format 0.0.4
//!   (`# HELP`, `# TYPE`, escaped help text and label values). Each service
//!   renders its own series with it; the server appends the standard
//!   `process_resident_memory_bytes` and `process_start_time_seconds`.
//! * [`serve`]: `GET /metrics`, `GET /healthz` (liveness: the process
//!   answers) and `GET /readyz` (readiness, as the service defines it through
//!   [`Endpoints::readiness`]); 404 for other paths, 405 for other methods.
//!   One request per connection, a bounded request head and a deadline for
//!   the whole exchange, so a slow or hostile client cannot pin it.
//!
//! Names follow Prometheus' conventions: `smarter_<service>_` prefix,
//! snake_case, base units (`_seconds`, `_bytes`), `_total` on counters.
//! See docs/decisions/0115-one-metrics-and-probe-server.md.

mod http;

use std::fmt::Write as _;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::Duration;

pub use http::{Endpoints, Limits, ListenError, Readiness, Running, serve, serve_with, start};

/// The content type of the text exposition format.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// A monotonically increasing count.
#[derive(Debug, Default)]
pub struct Counter(AtomicU64);

impl Counter {
    /// Add one.
    pub fn inc(&self) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }

    /// Add `n`.
    pub fn add(&self, n: u64) {
        self.0.fetch_add(n, Ordering::Relaxed);
    }

    /// The current value.
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// A value that goes up and down.
#[derive(Debug, Default)]
pub struct Gauge(AtomicI64);

impl Gauge {
    /// Set the value.
    pub fn set(&self, v: i64) {
        self.0.store(v, Ordering::Relaxed);
    }

    /// Set from a count, saturating.
    pub fn set_count(&self, n: usize) {
        self.set(i64::try_from(n).unwrap_or(i64::MAX));
    }

    /// The current value.
    pub fn get(&self) -> i64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// A distribution of durations: how many observations fell at or below each
/// bound, their sum and count. Observations are kept in nanoseconds (integer
/// atomics) and rendered in seconds.
#[derive(Debug)]
pub struct Histogram {
    /// Upper bounds in nanoseconds, strictly increasing.
    bounds: Box<[u64]>,
    /// Per-bucket (not cumulative) counts; the last one is `+Inf`.
    buckets: Box<[AtomicU64]>,
    sum_ns: AtomicU64,
}

impl Histogram {
    /// A histogram with these upper bounds in seconds. Bounds that are not
    /// finite, not positive or not increasing are dropped, so the buckets are
    /// always valid for Prometheus.
    pub fn seconds(bounds: &[f64]) -> Self {
        let mut ns: Vec<u64> = Vec::with_capacity(bounds.len());
        for b in bounds {
            if !b.is_finite() || *b <= 0.0 {
                continue;
            }
            // Rounded to whole nanoseconds; saturates far beyond any latency.
            #[allow(
                clippy::cast_possible_truncation,
                clippy::cast_sign_loss,
                reason = "finite, positive, and saturating by `as`"
            )]
            let v = (b * 1e9).round() as u64;
            if ns.last().is_none_or(|last| v > *last) {
                ns.push(v);
            }
        }
        let buckets = (0..=ns.len()).map(|_| AtomicU64::new(0)).collect();
        Self {
            bounds: ns.into_boxed_slice(),
            buckets,
            sum_ns: AtomicU64::new(0),
        }
    }

    /// Record one observation.
    pub fn observe(&self, d: Duration) {
        self.observe_n(d, 1);
    }

    /// Record `n` observations of the same duration (a batch of answers
    /// sent together): still two atomic adds.
    pub fn observe_n(&self, d: Duration, n: u64) {
        if n == 0 {
            return;
        }
        let ns = u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        let i = self.bounds.partition_point(|b| *b < ns);
        if let Some(bucket) = self.buckets.get(i) {
            bucket.fetch_add(n, Ordering::Relaxed);
        }
        self.sum_ns
            .fetch_add(ns.saturating_mul(n), Ordering::Relaxed);
    }

    /// Cumulative counts per bound (the last is `+Inf`, i.e. the count),
    /// and the sum in seconds.
    pub fn snapshot(&self) -> (Vec<(f64, u64)>, f64) {
        let mut out = Vec::with_capacity(self.buckets.len());
        let mut total = 0u64;
        for (i, b) in self.buckets.iter().enumerate() {
            total = total.saturating_add(b.load(Ordering::Relaxed));
            let le = self
                .bounds
                .get(i)
                .map_or(f64::INFINITY, |ns| nanos_to_seconds(*ns));
            out.push((le, total));
        }
        (out, nanos_to_seconds(self.sum_ns.load(Ordering::Relaxed)))
    }
}

#[allow(
    clippy::cast_precision_loss,
    reason = "sub-nanosecond precision is irrelevant to a latency sum"
)]
fn nanos_to_seconds(ns: u64) -> f64 {
    ns as f64 / 1e9
}

/// The kind of a metric family (`# TYPE`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Only goes up (name ends in `_total`).
    Counter,
    /// Goes up and down.
    Gauge,
    /// Buckets, sum and count.
    Histogram,
}

impl Kind {
    fn as_str(self) -> &'static str {
        match self {
            Kind::Counter => "counter",
            Kind::Gauge => "gauge",
            Kind::Histogram => "histogram",
        }
    }
}

/// A Prometheus text exposition being written.
#[derive(Debug, Default)]
pub struct Exposition {
    out: String,
}

impl Exposition {
    /// An empty exposition.
    pub fn new() -> Self {
        Self::default()
    }

    /// Start a family: its `# HELP` and `# TYPE` lines. Add samples with
    /// [`Exposition::sample`].
    pub fn family(&mut self, name: &str, kind: Kind, help: &str) -> &mut Self {
        debug_assert!(valid_name(name), "invalid metric name {name:?}");
        let _ = writeln!(
            self.out,
            "# HELP {name} {}\n# TYPE {name} {}",
            escape_help(help),
            kind.as_str()
        );
        self
    }

    /// One sample line: `name{labels} value`.
    pub fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: impl Value) -> &mut Self {
        self.out.push_str(name);
        write_labels(&mut self.out, labels, None);
        self.out.push(' ');
        value.write(&mut self.out);
        self.out.push('\n');
        self
    }

    /// A counter family with one unlabelled sample.
    pub fn counter(&mut self, name: &str, help: &str, value: u64) -> &mut Self {
        self.family(name, Kind::Counter, help)
            .sample(name, &[], value)
    }

    /// A gauge family with one unlabelled sample.
    pub fn gauge(&mut self, name: &str, help: &str, value: impl Value) -> &mut Self {
        self.family(name, Kind::Gauge, help)
            .sample(name, &[], value)
    }

    /// A histogram family: cumulative `name_bucket{le}`, `name_sum`,
    /// `name_count`.
    pub fn histogram(&mut self, name: &str, help: &str, h: &Histogram) -> &mut Self {
        self.family(name, Kind::Histogram, help);
        let (buckets, sum) = h.snapshot();
        let count = buckets.last().map_or(0, |(_, c)| *c);
        let bucket = format!("{name}_bucket");
        for (le, c) in buckets {
            let mut le_text = String::new();
            le.write(&mut le_text);
            self.out.push_str(&bucket);
            write_labels(&mut self.out, &[], Some(&le_text));
            let _ = writeln!(self.out, " {c}");
        }
        self.sample(&format!("{name}_sum"), &[], sum);
        self.sample(&format!("{name}_count"), &[], count)
    }

    /// The standard process metrics, where this system provides them:
    /// `process_resident_memory_bytes` (from `/proc/self/statm`) and
    /// `process_start_time_seconds`.
    pub fn process(&mut self) -> &mut Self {
        if let Some(rss) = resident_memory_bytes() {
            self.gauge(
                "process_resident_memory_bytes",
                "Resident memory size in bytes.",
                rss,
            );
        }
        if let Some(start) = start_time_seconds() {
            self.gauge(
                "process_start_time_seconds",
                "Start time of the process since the Unix epoch in seconds.",
                start,
            );
        }
        self
    }

    /// The text.
    pub fn finish(self) -> String {
        self.out
    }
}

/// A sample value as the text format writes it.
pub trait Value {
    /// Append the value.
    fn write(&self, out: &mut String);
}

impl Value for u64 {
    fn write(&self, out: &mut String) {
        let _ = write!(out, "{self}");
    }
}

impl Value for i64 {
    fn write(&self, out: &mut String) {
        let _ = write!(out, "{self}");
    }
}

impl Value for u8 {
    fn write(&self, out: &mut String) {
        let _ = write!(out, "{self}");
    }
}

impl Value for f64 {
    fn write(&self, out: &mut String) {
        if self.is_nan() {
            out.push_str("NaN");
        } else if self.is_infinite() {
            out.push_str(if *self > 0.0 { "+Inf" } else { "-Inf" });
        } else {
            let _ = write!(out, "{self}");
        }
    }
}

/// `[a-zA-Z_:][a-zA-Z0-9_:]*`
fn valid_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == ':')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
}

/// `{a="x",b="y"}` (nothing without labels), with `le` last when given.
fn write_labels(out: &mut String, labels: &[(&str, &str)], le: Option<&str>) {
    if labels.is_empty() && le.is_none() {
        return;
    }
    out.push('{');
    let mut first = true;
    for (k, v) in labels.iter().copied().chain(le.map(|le| ("le", le))) {
        debug_assert!(valid_name(k) && !k.contains(':'), "invalid label {k:?}");
        if !first {
            out.push(',');
        }
        first = false;
        out.push_str(k);
        out.push_str("=\"");
        out.push_str(&escape_label(v));
        out.push('"');
    }
    out.push('}');
}

/// Label values escape backslash, double quote and line feed.
pub fn escape_label(v: &str) -> String {
    let mut out = String::with_capacity(v.len());
    for c in v.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out
}

/// Help text escapes backslash and line feed (quotes stay as they are).
fn escape_help(v: &str) -> String {
    let mut out = String::with_capacity(v.len());
    for c in v.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out
}

fn page_size() -> Option<u64> {
    // SAFETY: sysconf has no preconditions; it returns -1 on error.
    let v = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    u64::try_from(v).ok().filter(|v| *v > 0)
}

/// Resident set size: the second field of `/proc/self/statm`, in pages.
pub fn resident_memory_bytes() -> Option<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    parse_statm_resident_pages(&statm)?.checked_mul(page_size()?)
}

fn parse_statm_resident_pages(statm: &str) -> Option<u64> {
    statm.split_whitespace().nth(1)?.parse().ok()
}

/// When the process started, in seconds since the Unix epoch: the boot time
/// (`btime` of `/proc/stat`) plus the start time in clock ticks of
/// `/proc/self/stat`. Read once: it never changes.
pub fn start_time_seconds() -> Option<f64> {
    static START: OnceLock<Option<f64>> = OnceLock::new();
    *START.get_or_init(|| {
        let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
        let boot = std::fs::read_to_string("/proc/stat").ok()?;
        // SAFETY: sysconf has no preconditions; it returns -1 on error.
        let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
        let ticks = u32::try_from(ticks).ok().filter(|t| *t > 0)?;
        start_time_from(&stat, &boot, ticks)
    })
}

fn start_time_from(stat: &str, proc_stat: &str, ticks_per_second: u32) -> Option<f64> {
    // The command name (field 2) may hold spaces and parentheses; fields
    // after its closing parenthesis start at field 3, so starttime (field
    // 22) is the 20th of them.
    let after = &stat[stat.rfind(')')? + 1..];
    let start_ticks: u64 = after.split_whitespace().nth(19)?.parse().ok()?;
    let btime: u64 = proc_stat
        .lines()
        .find_map(|l| l.strip_prefix("btime "))?
        .trim()
        .parse()
        .ok()?;
    #[allow(
        clippy::cast_precision_loss,
        reason = "seconds since the epoch and ticks since boot fit an f64 exactly for ages"
    )]
    Some(btime as f64 + start_ticks as f64 / f64::from(ticks_per_second))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_buckets_are_cumulative_and_count_matches_inf() {
        let h = Histogram::seconds(&[0.001, 0.01, 0.1, f64::NAN, 0.05, 1.0]);
        h.observe(Duration::from_micros(500));
        h.observe(Duration::from_millis(1)); // on the bound: le is inclusive
        h.observe(Duration::from_millis(50));
        h.observe_n(Duration::from_secs(3), 2);
        let (buckets, sum) = h.snapshot();
        let les: Vec<f64> = buckets.iter().map(|(le, _)| *le).collect();
        // NaN and the out-of-order 0.05 are dropped.
        assert_eq!(les, vec![0.001, 0.01, 0.1, 1.0, f64::INFINITY]);
        let counts: Vec<u64> = buckets.iter().map(|(_, c)| *c).collect();
        assert_eq!(counts, vec![2, 2, 3, 3, 5]);
        assert!((sum - 6.0515).abs() < 1e-9, "{sum}");
    }

    #[test]
    fn exposition_escapes_and_types() {
        let mut e = Exposition::new();
        e.family(
            "smarter_x_info",
            Kind::Gauge,
            "A \\ help\nline with \"quotes\".",
        )
        .sample("smarter_x_info", &[("v", "a\"b\\c\nd")], 1u64);
        e.counter("smarter_x_total", "Things.", 7);
        e.gauge("smarter_x_ratio", "Ratio.", f64::NEG_INFINITY);
        let h = Histogram::seconds(&[0.5]);
        h.observe(Duration::from_millis(250));
        e.histogram("smarter_x_seconds", "Latency.", &h);
        let text = e.finish();
        let expected = "\
# HELP smarter_x_info A \\\\ help\\nline with \"quotes\".
# TYPE smarter_x_info gauge
smarter_x_info{v=\"a\\\"b\\\\c\\nd\"} 1
# HELP smarter_x_total Things.
# TYPE smarter_x_total counter
smarter_x_total 7
# HELP smarter_x_ratio Ratio.
# TYPE smarter_x_ratio gauge
smarter_x_ratio -Inf
# HELP smarter_x_seconds Latency.
# TYPE smarter_x_seconds histogram
smarter_x_seconds_bucket{le=\"0.5\"} 1
smarter_x_seconds_bucket{le=\"+Inf\"} 1
smarter_x_seconds_sum 0.25
smarter_x_seconds_count 1
";
        assert_eq!(text, expected);
    }

    #[test]
    fn names_are_checked() {
        assert!(valid_name("smarter_dns_queries_total"));
        assert!(valid_name("a:b"));
        assert!(!valid_name("9lives"));
        assert!(!valid_name("smarter-dns"));
        assert!(!valid_name(""));
    }

    #[test]
    fn statm_and_stat_parse() {
        assert_eq!(
            parse_statm_resident_pages("2000 345 100 1 0 300 0\n"),
            Some(345)
        );
        assert_eq!(parse_statm_resident_pages("2000"), None);
        // A command name with a space and a parenthesis in it.
        let stat =
            "42 (my (odd) name) S 1 42 42 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 250 1000 20";
        let proc_stat = "cpu  1 2 3\nbtime 1700000000\nprocesses 5\n";
        assert_eq!(start_time_from(stat, proc_stat, 100), Some(1_700_000_002.5));
        assert_eq!(start_time_from("garbage", proc_stat, 100), None);
    }

    #[test]
    fn process_metrics_read_this_process() {
        let rss = resident_memory_bytes().unwrap_or(0);
        assert!(rss > 1024 * 1024, "resident memory {rss}");
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs_f64())
            .unwrap_or(0.0);
        let start = start_time_seconds().unwrap_or(0.0);
        // Started before now, and not before this test binary could exist
        // (a day is far more than any test run).
        assert!(
            start <= now + 1.0 && start > now - 86_400.0,
            "{start} vs {now}"
        );
    }
}
