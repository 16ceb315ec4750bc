//! The one place where txpipe counts and times what it does, and what an
//! operator sees of a running process.
//!
//! Actors report facts here (a chunk written, a commit done, a file
//! written, an actor restarting) and never read them back to decide
//! anything that matters for correctness. Everything lives in one
//! Prometheus registry per run ([`Metrics::registry`], the
//! `prometheus-client` crate: a registry per run, not a process-wide
//! recorder, because tests run several pipelines in one process). Its
//! readers all see the same figures:
//!
//! - `GET /metrics` (the text exposition, `app::web`), for Prometheus;
//! - the live page and `GET /api/state`, through [`Metrics::view`];
//! - the run summary and the benchmark's report (`app::RunReport`), which
//!   read the counters and take latency percentiles from the histograms'
//!   buckets the way Prometheus's `histogram_quantile` does;
//! - `/healthz` and `/readyz`, through [`Health`].
//!
//! Counters and gauges are atomics; a histogram observation takes a short
//! lock, once per commit, chunk or store call, never per row.

mod health;
mod process;

use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::{Family, MetricConstructor};
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::detect::Pattern;
pub use health::{
    ActorState, ActorView, DetectionView, Health, Phase, RECENT_DETECTIONS, RatePoint, RestartView,
};
pub use process::{cpu_seconds, peak_rss_bytes, resident_bytes};

/// A moment of the run: when, and how much CPU the process had used by
/// then.
#[derive(Clone, Copy, Debug)]
pub struct Mark {
    pub at: Instant,
    pub cpu_seconds: Option<f64>,
}

impl Mark {
    fn now() -> Mark {
        Mark {
            at: Instant::now(),
            cpu_seconds: cpu_seconds(),
        }
    }
}

/// One unit of a gauge, held while something is there: added when made,
/// taken off when dropped, whichever way its holder ends (a message in a
/// mailbox, a chunk in flight).
#[derive(Debug)]
pub struct GaugeUnit(Gauge);

impl GaugeUnit {
    pub fn new(gauge: &Gauge) -> GaugeUnit {
        gauge.inc();
        GaugeUnit(gauge.clone())
    }
}

impl Drop for GaugeUnit {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// `{pattern="PatId1"}`
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PatternLabel {
    pattern: &'static str,
}

/// `{operation="commit chunks"}`: the names actors give their store calls.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OperationLabel {
    pub operation: &'static str,
}

/// `{backend="database", operation="commit chunks"}`
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RetryLabel {
    pub backend: &'static str,
    pub operation: &'static str,
}

/// Which store a call went to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    Database,
    ObjectStore,
}

impl Backend {
    fn label(self) -> &'static str {
        match self {
            Backend::Database => "database",
            Backend::ObjectStore => "object_store",
        }
    }
}

/// `{actor="reader"}`
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ActorLabel {
    pub actor: String,
}

/// `{actor="reader", reason="panic"}`
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RestartLabel {
    pub actor: String,
    pub reason: &'static str,
}

/// Buckets of the store call histograms: 100 µs to about 52 s, doubling.
#[derive(Clone)]
struct CallBuckets;

impl MetricConstructor<Histogram> for CallBuckets {
    fn new_metric(&self) -> Histogram {
        Histogram::new(exponential_buckets(0.0001, 2.0, 20))
    }
}

/// The chunk latency histogram's name in the exposition, and its help.
const LATENCY_FAMILY: &str = "txpipe_chunk_latency_seconds";
const LATENCY_HELP: &str = "From a chunk listed by the watcher to its commit durable";

/// Counters, gauges, histograms and the health of one pipeline run.
pub struct Metrics {
    registry: Registry,
    /// The chunk latency histogram alone (the same one as in `registry`),
    /// for percentiles without encoding everything.
    latency_only: Registry,
    started: Instant,
    /// Mechanism X: rows written into chunk objects (the input).
    pub rows_chunked: Counter,
    pub chunks_written: Counter,
    pub chunks_listed: Counter,
    pub chunks_committed: Counter,
    pub chunks_rejected: Counter,
    /// Objects under `stream_chunks/` recorded as not applied.
    pub objects_ignored: Counter,
    /// Rows of committed chunks (the processing).
    pub rows_committed: Counter,
    pub bad_rows: Counter,
    detections: [Counter; 3],
    pub commits: Counter,
    pub files_written: Counter,
    commit_duration: Histogram,
    /// Chunk listed → its commit durable.
    chunk_latency: Histogram,
    store_calls: Family<OperationLabel, Histogram, CallBuckets>,
    db_calls: Family<OperationLabel, Histogram, CallBuckets>,
    retries: Family<RetryLabel, Counter>,
    restarts: Family<RestartLabel, Counter>,
    /// Chunks the chunker has written in all (its next sequence number).
    written_seq: Gauge,
    /// Chunks committed in all (the last committed sequence number + 1).
    committed_seq: Gauge,
    lag: Gauge,
    pub in_flight: Gauge,
    mailbox: Family<ActorLabel, Gauge>,
    mailbox_capacity: Family<ActorLabel, Gauge>,
    /// Pairs in the in-memory cumulative pair table.
    pub pair_state_pairs: Gauge,
    /// Pairs of the lookup table held in memory.
    pub lookup_pairs: Gauge,
    /// A cluster worker's key groups (leased), and those of them catching
    /// up on a lane of their own.
    pub key_groups_held: Gauge,
    pub key_groups_catching_up: Gauge,
    last_commit_timestamp: Gauge<f64, std::sync::atomic::AtomicU64>,
    ready: Gauge,
    healthy: Gauge,
    /// Phases, actors, recent restarts and detections.
    pub health: Health,
    first_chunk: OnceLock<Mark>,
    /// When Mechanism Y could start (the lookup table loaded).
    detection_ready: OnceLock<Mark>,
    last_commit: Mutex<Option<Mark>>,
    last_file: Mutex<Option<Instant>>,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut root = Registry::default();
        // The process_* metrics keep their standard names, unprefixed.
        root.register_collector(Box::new(process::ProcessCollector::new()));
        let registry = root.sub_registry_with_prefix("txpipe");
        macro_rules! register {
            ($name:literal, $help:expr, $metric:expr) => {{
                let metric = $metric;
                registry.register($name, $help, metric.clone());
                metric
            }};
        }
        let rows_chunked = register!(
            "rows_chunked",
            "Rows written into chunk objects by the chunker (Mechanism X)",
            Counter::default()
        );
        let chunks_written = register!(
            "chunks_written",
            "Chunk objects written by the chunker",
            Counter::default()
        );
        let chunks_listed = register!(
            "chunks_listed",
            "Chunks the watcher listed and announced",
            Counter::default()
        );
        let chunks_committed = register!(
            "chunks_committed",
            "Chunks applied and committed",
            Counter::default()
        );
        let chunks_rejected = register!(
            "chunks_rejected",
            "Chunks recorded as rejected (too large, unreadable, skipped)",
            Counter::default()
        );
        let objects_ignored = register!(
            "objects_ignored",
            "Objects under stream_chunks/ recorded as not applied",
            Counter::default()
        );
        let rows_committed = register!(
            "rows_processed",
            "Rows of committed chunks, bad rows included",
            Counter::default()
        );
        let bad_rows = register!("bad_rows", "Rows quarantined as bad", Counter::default());
        let detections_family = register!(
            "detections",
            "Detections committed, by pattern",
            Family::<PatternLabel, Counter>::default()
        );
        let detections = Pattern::ALL
            .map(|p| detections_family.get_or_create_owned(&PatternLabel { pattern: p.id() }));
        let commits = register!(
            "commits",
            "Commit transactions (one or more chunks each)",
            Counter::default()
        );
        let files_written = register!(
            "detection_files_written",
            "Detection files written under detected_patterns/",
            Counter::default()
        );
        let commit_duration = register!(
            "commit_duration_seconds",
            "Duration of a commit transaction, retries included",
            Histogram::new(exponential_buckets(0.0001, 1.5, 30))
        );
        let chunk_latency = register!(
            "chunk_latency_seconds",
            LATENCY_HELP,
            Histogram::new(exponential_buckets(0.0005, 1.25, 56))
        );
        let store_calls = register!(
            "object_store_call_duration_seconds",
            "Duration of one object store call (one attempt), by operation",
            Family::new_with_constructor(CallBuckets)
        );
        let db_calls = register!(
            "database_call_duration_seconds",
            "Duration of one database call (one attempt), by operation",
            Family::new_with_constructor(CallBuckets)
        );
        let retries = register!(
            "retries",
            "Store call attempts that failed transiently (retried up to database.max_attempts / storage.max_attempts), by backend and operation",
            Family::default()
        );
        let restarts = register!(
            "actor_restarts",
            "Actor restarts, by actor and reason class (panic, error, stopped)",
            Family::default()
        );
        let written_seq = register!(
            "chunk_written_seq",
            "Chunks the chunker has written in all (its next sequence number)",
            Gauge::default()
        );
        let committed_seq = register!(
            "chunk_committed_seq",
            "Chunks committed in all (the last committed sequence number + 1)",
            Gauge::default()
        );
        let lag = register!(
            "lag_chunks",
            "Chunks written and not yet committed (written - committed)",
            Gauge::default()
        );
        let in_flight = register!(
            "chunks_in_flight",
            "Chunks announced by the watcher and not yet committed",
            Gauge::default()
        );
        let mailbox = register!(
            "mailbox_messages",
            "Messages sent to an actor and not yet answered (queued, in work or waiting for room)",
            Family::default()
        );
        let mailbox_capacity = register!(
            "mailbox_capacity",
            "Capacity of an actor's bounded mailbox",
            Family::default()
        );
        let pair_state_pairs = register!(
            "pair_state_pairs",
            "Customer-merchant pairs in the in-memory cumulative state",
            Gauge::default()
        );
        let lookup_pairs = register!(
            "lookup_pairs",
            "Customer-merchant pairs of the lookup table held in memory (a cluster \
             worker: those of its key groups' merchants)",
            Gauge::default()
        );
        let key_groups_held = register!(
            "key_groups_held",
            "Key groups this cluster worker holds leases on",
            Gauge::default()
        );
        let key_groups_catching_up = register!(
            "key_groups_catching_up",
            "Key groups this cluster worker took far behind, catching up on a lane of their own",
            Gauge::default()
        );
        let last_commit_timestamp = register!(
            "last_commit_timestamp_seconds",
            "Unix time of the last commit",
            Gauge::<f64, std::sync::atomic::AtomicU64>::default()
        );
        let ready = register!(
            "ready",
            "1 when /readyz answers 200: lookup table loaded, stores answered, active owner",
            Gauge::default()
        );
        let healthy = register!(
            "healthy",
            "1 when /healthz answers 200: the supervisor and every actor alive",
            Gauge::default()
        );
        let mut latency_only = Registry::default();
        latency_only.register(LATENCY_FAMILY, LATENCY_HELP, chunk_latency.clone());
        let metrics = Metrics {
            registry: root,
            latency_only,
            started: Instant::now(),
            rows_chunked,
            chunks_written,
            chunks_listed,
            chunks_committed,
            chunks_rejected,
            objects_ignored,
            rows_committed,
            bad_rows,
            detections,
            commits,
            files_written,
            commit_duration,
            chunk_latency,
            store_calls,
            db_calls,
            retries,
            restarts,
            written_seq,
            committed_seq,
            lag,
            in_flight,
            mailbox,
            mailbox_capacity,
            pair_state_pairs,
            lookup_pairs,
            key_groups_held,
            key_groups_catching_up,
            last_commit_timestamp,
            ready,
            healthy,
            health: Health::default(),
            first_chunk: OnceLock::new(),
            detection_ready: OnceLock::new(),
            last_commit: Mutex::default(),
            last_file: Mutex::default(),
        };
        metrics.refresh_health();
        metrics
    }

    /// Since this run's metrics were created (the process started).
    pub fn uptime(&self) -> Duration {
        self.started.elapsed()
    }

    /// The registry, in the Prometheus text format (version 0.0.4).
    pub fn exposition(&self) -> String {
        self.refresh_health();
        let mut text = String::with_capacity(16 * 1024);
        prometheus_client::encoding::prometheus_text::encode(&mut text, &self.registry)
            .expect("writing to a String does not fail");
        text
    }

    /// Brings the `ready` and `healthy` gauges in line with [`Health`].
    fn refresh_health(&self) {
        self.ready.set(i64::from(self.health.ready()));
        self.healthy
            .set(i64::from(self.health.unhealthy().is_none()));
    }

    /// The chunker's PUT of chunk `seq`, of `rows` rows, is done.
    pub fn chunk_written(&self, seq: u64, rows: u64) {
        self.first_chunk.get_or_init(Mark::now);
        self.chunks_written.inc();
        self.rows_chunked.inc_by(rows);
        self.chunker_at(seq + 1);
    }

    /// The chunker's next chunk is `next_seq` (on start, and per chunk).
    pub fn chunker_at(&self, next_seq: u64) {
        self.written_seq.set(next_seq as i64);
        self.update_lag();
    }

    /// Chunks up to `seq` are committed (on start, and per commit).
    /// Chunk `seq` is committed. Never moves back: a generation that
    /// starts over, or a cluster worker's catch-up lane, commits chunks
    /// behind the highest committed.
    pub fn committed_through(&self, seq: u64) {
        let next = seq as i64 + 1;
        if next > self.committed_seq.get() {
            self.committed_seq.set(next);
        }
        self.update_lag();
    }

    fn update_lag(&self) {
        self.lag
            .set((self.written_seq.get() - self.committed_seq.get()).max(0));
    }

    /// Chunks written and not yet committed.
    pub fn lag_chunks(&self) -> u64 {
        self.lag.get().max(0) as u64
    }

    /// The lookup table is loaded: Mechanism Y can start.
    pub fn detection_ready(&self) {
        self.detection_ready.get_or_init(Mark::now);
        self.health.set_phase(Phase::Running);
    }

    /// Where the detection window starts: the first chunk written, or
    /// Mechanism Y's start if that came later (start-up is not in it).
    fn window_start(&self) -> Option<Mark> {
        let first = *self.first_chunk.get()?;
        Some(match self.detection_ready.get() {
            Some(ready) if ready.at > first.at => *ready,
            _ => first,
        })
    }

    /// Detections of `pattern` committed.
    pub fn detected(&self, pattern: Pattern, n: u64) {
        self.detections[pattern as usize].inc_by(n);
    }

    pub fn detections(&self) -> [u64; 3] {
        self.detections.each_ref().map(Counter::get)
    }

    /// A chunk listed `latency` ago is committed now.
    pub fn chunk_latency(&self, latency: Duration) {
        self.chunk_latency.observe(latency.as_secs_f64());
    }

    /// A commit transaction that took `took` (retries included) is durable.
    pub fn commit_done(&self, took: Duration) {
        self.commits.inc();
        self.commit_duration.observe(took.as_secs_f64());
        *lock(&self.last_commit) = Some(Mark::now());
        self.last_commit_timestamp.set(crate::clock::unix_seconds());
    }

    /// A detection file is written and marked so.
    pub fn file_written(&self) {
        self.files_written.inc();
        *lock(&self.last_file) = Some(Instant::now());
    }

    /// One attempt of a store call named `operation` took `took`.
    pub fn store_call(&self, backend: Backend, operation: &'static str, took: Duration) {
        let family = match backend {
            Backend::Database => &self.db_calls,
            Backend::ObjectStore => &self.store_calls,
        };
        family
            .get_or_create(&OperationLabel { operation })
            .observe(took.as_secs_f64());
    }

    /// A store call named `operation` failed transiently and is retried.
    pub fn retried(&self, backend: Backend, operation: &'static str) {
        self.retries
            .get_or_create(&RetryLabel {
                backend: backend.label(),
                operation,
            })
            .inc();
    }

    /// `actor` restarted because of `reason`.
    pub fn restarted(&self, actor: &str, reason: &str, restart: u32) {
        self.restarts
            .get_or_create(&RestartLabel {
                actor: actor.to_string(),
                reason: reason_class(reason),
            })
            .inc();
        self.health.restarted(actor, reason, restart);
    }

    /// A stage named `actor` with a mailbox of `capacity` starts: returns
    /// the gauge its senders keep up to date (see `actors::Mailbox`).
    pub fn mailbox(&self, actor: &str, capacity: usize) -> Gauge {
        let label = ActorLabel {
            actor: actor.to_string(),
        };
        self.mailbox_capacity
            .get_or_create(&label)
            .set(capacity as i64);
        self.health.actor_registered(actor, capacity);
        self.mailbox.get_or_create_owned(&label)
    }

    /// Messages sent to `actor` and not yet answered.
    pub fn mailbox_fill(&self, actor: &str) -> u64 {
        self.mailbox
            .get(&ActorLabel {
                actor: actor.to_string(),
            })
            .map_or(0, |g| g.get().max(0) as u64)
    }

    /// Chunks written by this process that are not committed (or rejected)
    /// yet.
    pub fn chunks_on_their_way(&self) -> u64 {
        self.chunks_written
            .get()
            .saturating_sub(self.chunks_committed.get() + self.chunks_rejected.get())
    }

    /// Listed → committed latency at each of `percentiles` (0–100), in
    /// milliseconds, from the histogram's buckets (one encoding of that
    /// histogram alone for all of them).
    pub fn latency_ms<const N: usize>(&self, percentiles: [f64; N]) -> [Option<f64>; N] {
        let mut text = String::new();
        prometheus_client::encoding::prometheus_text::encode(&mut text, &self.latency_only)
            .expect("writing to a String does not fail");
        percentiles.map(|percentile| {
            histogram_quantile(&text, LATENCY_FAMILY, percentile / 100.0)
                .map(|seconds| seconds * 1000.0)
        })
    }

    /// Window start (see [`Metrics::window_start`]) → last commit (every
    /// detection durable).
    pub fn end_to_end(&self) -> Option<Duration> {
        let first = self.window_start()?;
        let last = (*lock(&self.last_commit))?;
        Some(last.at.saturating_duration_since(first.at))
    }

    /// Window start → last detection file written.
    pub fn to_last_file(&self) -> Option<Duration> {
        let first = self.window_start()?;
        let last = (*lock(&self.last_file))?;
        Some(last.saturating_duration_since(first.at))
    }

    /// CPU seconds the process used between the window's start and the
    /// last commit.
    pub fn window_cpu_seconds(&self) -> Option<f64> {
        let first = self.window_start()?.cpu_seconds?;
        let last = (*lock(&self.last_commit))?.cpu_seconds?;
        Some(last - first)
    }
}

/// The class of a restart's reason, for the `reason` label (a bounded
/// set; the full text is in the log and in `restart_events`).
fn reason_class(reason: &str) -> &'static str {
    if reason.starts_with("panic") {
        "panic"
    } else if reason.starts_with("stopped") {
        "stopped"
    } else {
        "error"
    }
}

/// The `quantile` (0–1) of the classic histogram `family` in a text
/// exposition, as Prometheus's `histogram_quantile` computes it: find the
/// bucket the rank falls in and interpolate linearly inside it. `None`
/// without observations.
pub fn histogram_quantile(exposition: &str, family: &str, quantile: f64) -> Option<f64> {
    let prefix = format!("{family}_bucket{{");
    let mut buckets: Vec<(f64, f64)> = exposition
        .lines()
        .filter_map(|line| line.strip_prefix(&prefix))
        .filter_map(|rest| {
            let (labels, value) = rest.rsplit_once("} ")?;
            let le = labels.split(',').find_map(|l| l.strip_prefix("le=\""))?;
            let le = le.trim_end_matches('"');
            let bound = if le == "+Inf" {
                f64::INFINITY
            } else {
                le.parse().ok()?
            };
            Some((bound, value.trim().parse().ok()?))
        })
        .collect();
    buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
    let total = buckets.last()?.1;
    if total <= 0.0 {
        return None;
    }
    let rank = quantile.clamp(0.0, 1.0) * total;
    let mut below = (0.0, 0.0);
    for &(bound, count) in &buckets {
        if count >= rank {
            if bound.is_infinite() {
                // Above the highest finite bound: the best answer is it.
                return Some(below.0);
            }
            let in_bucket = count - below.1;
            let fraction = if in_bucket > 0.0 {
                (rank - below.1) / in_bucket
            } else {
                1.0
            };
            return Some(below.0 + (bound - below.0) * fraction);
        }
        below = (bound, count);
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn latency_percentiles_come_from_the_histogram_buckets() {
        let metrics = Metrics::default();
        assert_eq!(metrics.latency_ms([99.0]), [None]);
        for ms in 1..=100 {
            metrics.chunk_latency(Duration::from_millis(ms));
        }
        // Buckets grow by 25%: interpolation inside one is within that.
        let [p50, p99] = metrics.latency_ms([50.0, 99.0]).map(Option::unwrap);
        assert!((40.0..=62.5).contains(&p50), "{p50}");
        assert!((79.2..=123.8).contains(&p99), "{p99}");
        assert!(p50 < p99);
    }

    #[test]
    fn quantiles_interpolate_inside_a_bucket_as_prometheus_does() {
        let text = "\
# TYPE x histogram
x_bucket{le=\"1.0\"} 0
x_bucket{le=\"2.0\"} 10
x_bucket{le=\"4.0\"} 20
x_bucket{le=\"+Inf\"} 20
x_sum 50
x_count 20
";
        assert_eq!(histogram_quantile(text, "x", 0.25), Some(1.5));
        assert_eq!(histogram_quantile(text, "x", 0.75), Some(3.0));
        assert_eq!(histogram_quantile(text, "x", 1.0), Some(4.0));
        assert_eq!(histogram_quantile(text, "y", 0.5), None);
        let empty = "x_bucket{le=\"1.0\"} 0\nx_bucket{le=\"+Inf\"} 0\n";
        assert_eq!(histogram_quantile(empty, "x", 0.5), None);
    }

    #[test]
    fn lag_is_written_minus_committed() {
        let metrics = Metrics::default();
        metrics.chunk_written(0, 10);
        metrics.chunk_written(1, 10);
        metrics.chunk_written(2, 10);
        metrics.committed_through(0);
        assert_eq!(metrics.lag_chunks(), 2);
        metrics.committed_through(2);
        assert_eq!(metrics.lag_chunks(), 0);
        assert_eq!(metrics.rows_chunked.get(), 30);
        assert_eq!(metrics.chunks_on_their_way(), 3);
    }

    #[test]
    fn the_exposition_follows_prometheus_naming() {
        let metrics = Metrics::default();
        metrics.detected(Pattern::Upgrade, 2);
        metrics.retried(Backend::Database, "commit chunks");
        metrics.restarted("reader", "panic: injected", 1);
        metrics.store_call(
            Backend::ObjectStore,
            "write chunk",
            Duration::from_millis(3),
        );
        let text = metrics.exposition();
        for line in [
            "txpipe_detections_total{pattern=\"PatId1\"} 2",
            "txpipe_detections_total{pattern=\"PatId2\"} 0",
            "txpipe_retries_total{backend=\"database\",operation=\"commit chunks\"} 1",
            "txpipe_actor_restarts_total{actor=\"reader\",reason=\"panic\"} 1",
            "txpipe_object_store_call_duration_seconds_count{operation=\"write chunk\"} 1",
            "txpipe_rows_processed_total 0",
            "# TYPE txpipe_chunk_latency_seconds histogram",
            "# TYPE process_resident_memory_bytes gauge",
            "# TYPE process_cpu_seconds_total counter",
        ] {
            assert!(text.contains(line), "{line:?} missing from\n{text}");
        }
    }
}
