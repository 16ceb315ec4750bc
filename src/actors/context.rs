//! What every actor shares: settings, the two stores, the name table, the
//! lookup weights, progress counters, lifecycle signals, the supervision
//! hub and the fault plan. Plus the two helpers every actor uses: panic
//! containment and retries with backoff.

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use backon::{ExponentialBuilder, Retryable};
use futures::FutureExt;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::warn;

use super::faults::FaultPlan;
use super::supervisor::Supervision;
use crate::config::Settings;
use crate::db::{DbError, Fence, StateStore};
use crate::detect::{PairTotals, Thresholds, WeightTable};
use crate::names::Names;
use crate::store::source::Sources;
use crate::store::{ObjectStore, StoreError};

pub struct PipelineContext {
    pub settings: Settings,
    pub objects: Arc<dyn ObjectStore>,
    /// Opens the master and lookup files (local or S3).
    pub sources: Sources,
    pub state: Arc<dyn StateStore>,
    /// The ownership lease this process runs under: every state change
    /// carries it, and the database refuses it once another process took
    /// the lease over.
    pub fence: Fence,
    pub names: Arc<Names>,
    pub weights: Arc<WeightTable>,
    /// The pair table, seeded with the weight table's pairs during
    /// start-up (seconds for millions of pairs), so that the watcher need
    /// not seed it while chunks wait. The first watcher takes it; a
    /// restarted watcher seeds its own.
    pub pair_totals: Mutex<Option<PairTotals>>,
    pub thresholds: Thresholds,
    pub progress: Progress,
    pub lifecycle: Lifecycle,
    pub supervision: Supervision,
    pub faults: FaultPlan,
    /// When Mechanism Y started (the detections' `YStartTime`).
    pub y_start_time: String,
    /// Rung after every commit that added detections; the batch writer
    /// wakes on it. The outbox itself is in the database.
    pub doorbell: watch::Sender<u64>,
    /// Rung by the chunker after every chunk it writes, so the watcher
    /// lists at once instead of at its next poll. The listing stays the
    /// truth: chunks written by anyone else are found by polling.
    pub new_chunks: watch::Sender<u64>,
    /// Chunks committed so far; the compactor watches it.
    pub committed: watch::Sender<u64>,
    /// Chunks this process just wrote, so the watcher need not download
    /// what it has in memory (see [`RecentChunks`]).
    pub recent_chunks: RecentChunks,
}

/// The bodies of the last chunks the chunker wrote, bounded in bytes.
///
/// Objects are immutable once written, so the bytes the chunker PUT are
/// exactly what a GET would return: when the watcher lists a chunk this
/// process wrote moments ago, it takes the body from here and saves a
/// download. Anything not here (another process's chunks, older ones, or
/// after a restart) is read from the store as usual.
pub struct RecentChunks {
    budget: usize,
    entries: Mutex<std::collections::VecDeque<(String, bytes::Bytes)>>,
    /// The last keys the chunker claimed (saved as pending) in this process.
    claimed: Mutex<std::collections::VecDeque<String>>,
}

/// Claimed keys remembered for the watcher.
const CLAIMS_KEPT: usize = 256;

impl RecentChunks {
    pub fn new(budget: usize) -> RecentChunks {
        RecentChunks {
            budget,
            entries: Mutex::default(),
            claimed: Mutex::default(),
        }
    }

    /// Notes keys whose claims the database has just committed, so that the
    /// watcher need not ask for them (see `ChunkGate::note_claim`).
    pub fn claim<'a>(&self, keys: impl IntoIterator<Item = &'a str>) {
        let mut claimed = self.claimed.lock().unwrap_or_else(|e| e.into_inner());
        for key in keys {
            if !claimed.iter().any(|k| k == key) {
                claimed.push_back(key.to_string());
            }
        }
        while claimed.len() > CLAIMS_KEPT {
            claimed.pop_front();
        }
    }

    /// Whether this process's chunker claimed `key`.
    pub fn is_claimed(&self, key: &str) -> bool {
        let claimed = self.claimed.lock().unwrap_or_else(|e| e.into_inner());
        claimed.iter().rev().any(|k| k == key)
    }

    pub fn put(&self, key: &str, body: bytes::Bytes) {
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        entries.push_back((key.to_string(), body));
        let mut size: usize = entries.iter().map(|(_, b)| b.len()).sum();
        while size > self.budget
            && let Some((_, dropped)) = entries.pop_front()
        {
            size -= dropped.len();
        }
    }

    /// Takes a chunk's body out, if it is here.
    pub fn take(&self, key: &str) -> Option<bytes::Bytes> {
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        let position = entries.iter().position(|(k, _)| k == key)?;
        entries.remove(position).map(|(_, body)| body)
    }
}

/// Signals from the supervisor to the long-running loops, and the
/// process's stop signals.
pub struct Lifecycle {
    /// SIGINT, SIGTERM or SIGHUP arrived.
    pub signals: crate::signals::Signals,
    /// The chunker stops after the chunk it is writing.
    pub stop_chunker: CancellationToken,
    /// The watcher takes no new chunks, finishes those in flight and stops.
    pub stop_watcher: CancellationToken,
    /// The batch writer writes everything, the partial batch too, and stops.
    pub final_flush: CancellationToken,
    /// The compactor folds every waiting state change and stops.
    pub final_compact: CancellationToken,
}

impl Lifecycle {
    pub fn new(signals: crate::signals::Signals) -> Lifecycle {
        Lifecycle {
            signals,
            stop_chunker: CancellationToken::new(),
            stop_watcher: CancellationToken::new(),
            final_flush: CancellationToken::new(),
            final_compact: CancellationToken::new(),
        }
    }
}

/// Counters the supervisor and the summary read.
#[derive(Default)]
pub struct Progress {
    pub chunker_finished: AtomicBool,
    pub chunks_written: AtomicU64,
    pub rows_chunked: AtomicU64,
    /// Listings that found nothing new while nothing was in flight.
    pub idle_listings: AtomicU64,
    pub watcher_stopped: AtomicBool,
    pub chunks_committed: AtomicU64,
    pub chunks_rejected: AtomicU64,
    /// Objects under `stream_chunks/` recorded as not applied.
    pub objects_ignored: AtomicU64,
    pub rows_committed: AtomicU64,
    pub bad_rows: AtomicU64,
    pub detections: [AtomicU64; 3],
    pub commits: AtomicU64,
    pub batches_written: AtomicU64,
    pub flushed: AtomicBool,
    pub compacted: AtomicBool,
    /// Chunk object listed to its commit durable, in microseconds.
    pub latencies_us: Mutex<Vec<u64>>,
    /// When this process wrote its first chunk, committed last, and wrote
    /// its last detection file (for end-to-end throughput).
    pub first_chunk_at: OnceLock<Instant>,
    /// Process CPU seconds at the first chunk and at the last commit.
    pub first_chunk_cpu: OnceLock<f64>,
    pub last_commit_cpu: Mutex<Option<f64>>,
    pub last_commit_at: Mutex<Option<Instant>>,
    pub last_file_at: Mutex<Option<Instant>>,
}

const MAX_LATENCY_SAMPLES: usize = 1 << 20;

impl Progress {
    pub fn mark(slot: &Mutex<Option<Instant>>) {
        *slot.lock().unwrap_or_else(|e| e.into_inner()) = Some(Instant::now());
    }

    pub fn read(slot: &Mutex<Option<Instant>>) -> Option<Instant> {
        *slot.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn record_latency(&self, latency: Duration) {
        let mut samples = self.latencies_us.lock().unwrap_or_else(|e| e.into_inner());
        if samples.len() < MAX_LATENCY_SAMPLES {
            samples.push(latency.as_micros() as u64);
        }
    }

    pub fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }
}

/// Runs `work`, turning a panic into an error message.
pub fn contain<R>(work: impl FnOnce() -> R) -> Result<R, String> {
    std::panic::catch_unwind(AssertUnwindSafe(work)).map_err(|p| panic_message(p.as_ref()))
}

/// Awaits `work`, turning a panic into an error message.
pub async fn contain_async<F: Future>(work: F) -> Result<F::Output, String> {
    AssertUnwindSafe(work)
        .catch_unwind()
        .await
        .map_err(|p| panic_message(p.as_ref()))
}

pub fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    let text = payload
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "non-text panic payload".to_string());
    format!("panic: {text}")
}

fn backoff(max_attempts: u32) -> ExponentialBuilder {
    ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(100))
        .with_max_delay(Duration::from_secs(5))
        .with_jitter()
        .with_max_times(max_attempts.saturating_sub(1) as usize)
}

/// Retries a database call that failed transiently, with exponential
/// backoff, logging each retry.
pub async fn retry_db<T, F, Fut>(max_attempts: u32, what: &str, call: F) -> Result<T, DbError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, DbError>>,
{
    call.retry(backoff(max_attempts))
        .sleep(tokio::time::sleep)
        .when(DbError::is_transient)
        .notify(|error, delay| {
            warn!(operation = what, %error, retry_in_ms = delay.as_millis() as u64,
                  "database call failed; retrying");
        })
        .await
}

/// Retries an object store call that failed transiently, with exponential
/// backoff, logging each retry.
pub async fn retry_store<T, F, Fut>(max_attempts: u32, what: &str, call: F) -> Result<T, StoreError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, StoreError>>,
{
    call.retry(backoff(max_attempts))
        .sleep(tokio::time::sleep)
        .when(StoreError::is_transient)
        .notify(|error, delay| {
            warn!(operation = what, %error, retry_in_ms = delay.as_millis() as u64,
                  "object store call failed; retrying");
        })
        .await
}

impl PipelineContext {
    /// The seeded pair table if nobody took it yet, else a new one.
    pub fn take_pair_totals(&self) -> PairTotals {
        self.pair_totals
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take()
            .unwrap_or_else(|| PairTotals::new(&self.weights))
    }

    /// [`retry_db`] with the configured attempts. A write the database
    /// refused because another process took the ownership lease over stops
    /// the whole process at once (see [`Supervision::lost_lease`]).
    pub async fn db<T, F, Fut>(&self, what: &str, call: F) -> Result<T, DbError>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, DbError>>,
    {
        let result = retry_db(self.settings.database.max_attempts, what, call).await;
        if let Err(DbError::Fenced(message)) = &result {
            self.supervision.lost_lease(message);
        }
        result
    }

    /// [`retry_store`] with the configured attempts.
    pub async fn store<T, F, Fut>(&self, what: &str, call: F) -> Result<T, StoreError>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, StoreError>>,
    {
        retry_store(self.settings.storage.max_attempts, what, call).await
    }
}
