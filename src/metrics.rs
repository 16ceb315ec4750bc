//! The one place where txpipe counts and times what it does.
//!
//! Actors report facts here (a chunk written, a commit done, a file
//! written) and never read them back to decide anything that matters for
//! correctness. Readers are the run summary, the benchmark harness (through
//! the run report) and tests that wait for progress; an exporter (Prometheus)
//! can read the same figures.
//!
//! Everything is lock-free counters, except the latency histogram and the
//! three time marks, which are touched once per commit or file.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;

use crate::detect::Pattern;

/// A monotonic counter.
#[derive(Debug, Default)]
pub struct Counter(AtomicU64);

impl Counter {
    #[inline]
    pub fn add(&self, n: u64) {
        self.0.fetch_add(n, Ordering::Relaxed);
    }

    #[inline]
    pub fn inc(&self) {
        self.add(1);
    }

    #[inline]
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Acquire)
    }
}

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

/// Counters and timings of one pipeline run.
pub struct Metrics {
    pub rows_chunked: Counter,
    pub chunks_written: Counter,
    pub chunks_listed: Counter,
    pub chunks_committed: Counter,
    pub chunks_rejected: Counter,
    /// Objects under `stream_chunks/` recorded as not applied.
    pub objects_ignored: Counter,
    pub rows_committed: Counter,
    pub bad_rows: Counter,
    detections: [Counter; 3],
    pub commits: Counter,
    pub files_written: Counter,
    /// Chunk listed → its commit durable, in microseconds.
    latency_us: Mutex<Histogram<u64>>,
    first_chunk: OnceLock<Mark>,
    /// When Mechanism Y could start (the lookup table loaded).
    detection_ready: OnceLock<Mark>,
    last_commit: Mutex<Option<Mark>>,
    last_file: Mutex<Option<Instant>>,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics {
            rows_chunked: Counter::default(),
            chunks_written: Counter::default(),
            chunks_listed: Counter::default(),
            chunks_committed: Counter::default(),
            chunks_rejected: Counter::default(),
            objects_ignored: Counter::default(),
            rows_committed: Counter::default(),
            bad_rows: Counter::default(),
            detections: Default::default(),
            commits: Counter::default(),
            files_written: Counter::default(),
            // One microsecond to one hour, three significant digits.
            latency_us: Mutex::new(
                Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("valid bounds"),
            ),
            first_chunk: OnceLock::new(),
            detection_ready: OnceLock::new(),
            last_commit: Mutex::default(),
            last_file: Mutex::default(),
        }
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

impl Metrics {
    /// The chunker's PUT of a chunk of `rows` rows is done.
    pub fn chunk_written(&self, rows: u64) {
        self.first_chunk.get_or_init(Mark::now);
        self.chunks_written.inc();
        self.rows_chunked.add(rows);
    }

    /// The lookup table is loaded: Mechanism Y can start.
    pub fn detection_ready(&self) {
        self.detection_ready.get_or_init(Mark::now);
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
        self.detections[pattern as usize].add(n);
    }

    pub fn detections(&self) -> [u64; 3] {
        [
            self.detections[0].get(),
            self.detections[1].get(),
            self.detections[2].get(),
        ]
    }

    /// A chunk listed at `listed_at` is committed now.
    pub fn chunk_latency(&self, latency: Duration) {
        let micros = (latency.as_micros() as u64).max(1);
        lock(&self.latency_us).saturating_record(micros);
    }

    /// A commit transaction is durable.
    pub fn commit_done(&self) {
        self.commits.inc();
        *lock(&self.last_commit) = Some(Mark::now());
    }

    /// A detection file is written and marked so.
    pub fn file_written(&self) {
        self.files_written.inc();
        *lock(&self.last_file) = Some(Instant::now());
    }

    /// Chunks this process wrote that are not committed (or rejected) yet.
    pub fn chunks_on_their_way(&self) -> u64 {
        self.chunks_written
            .get()
            .saturating_sub(self.chunks_committed.get() + self.chunks_rejected.get())
    }

    /// Listed → committed latency at `percentile`, in milliseconds.
    pub fn latency_ms(&self, percentile: f64) -> Option<f64> {
        let histogram = lock(&self.latency_us);
        (!histogram.is_empty()).then(|| histogram.value_at_percentile(percentile) as f64 / 1000.0)
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

/// Resident-set high-water mark of this process, in bytes.
pub fn peak_rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let kb: u64 = status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()?;
    Some(kb * 1024)
}

/// CPU time (user + system) this process used, in seconds.
pub fn cpu_seconds() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the command name, which is in parentheses.
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let ticks: f64 = fields.get(11)?.parse::<f64>().ok()? + fields.get(12)?.parse::<f64>().ok()?;
    // USER_HZ is 100 on Linux.
    Some(ticks / 100.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn latency_percentiles_come_from_the_histogram() {
        let metrics = Metrics::default();
        assert_eq!(metrics.latency_ms(99.0), None);
        for ms in 1..=100 {
            metrics.chunk_latency(Duration::from_millis(ms));
        }
        let p50 = metrics.latency_ms(50.0).unwrap();
        let p99 = metrics.latency_ms(99.0).unwrap();
        assert!((49.9..=50.1).contains(&p50), "{p50}");
        assert!((98.9..=99.1).contains(&p99), "{p99}");
    }

    #[test]
    fn chunks_on_their_way_counts_written_not_yet_committed() {
        let metrics = Metrics::default();
        metrics.chunk_written(10);
        metrics.chunk_written(10);
        metrics.chunks_committed.inc();
        assert_eq!(metrics.chunks_on_their_way(), 1);
        metrics.chunks_rejected.inc();
        assert_eq!(metrics.chunks_on_their_way(), 0);
        assert_eq!(metrics.rows_chunked.get(), 20);
    }
}
