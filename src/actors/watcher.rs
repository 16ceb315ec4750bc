//! S3WatcherActor: notices new chunk objects and drives Mechanism Y.
//!
//! It lists `stream_chunks/` after the last key it saw (any object store:
//! the listing is the store's LIST with `start-after`), then pipelines each
//! chunk through four stages, several chunks in flight at once:
//!
//! ```text
//! fetch + parse ──► pair table ──► detectors (one Apply per DetectorActor) ──► ready ──► tracker (Commit)
//!   GET, quarantine   totals after      pattern state, new detections            groups of chunks
//!                     the chunk
//! ```
//!
//! Order is kept at every stage: chunks are folded into the pair table,
//! applied and committed in key order. When commits fall behind, ready chunks
//! commit together.
//!
//! Every *epoch* starts from committed state: the watcher loads a snapshot
//! from the database, rebuilds its pair table ([`PairTotals`]) from it and
//! resets every detector with it. If anything downstream fails (a detector
//! crash, a stale commit, a database that keeps failing), the epoch ends,
//! uncommitted work is dropped, and a new epoch starts from what the database
//! holds, so nothing is applied twice and nothing is lost. The watcher's own
//! failures (it cannot list or read the store) restart the watcher itself.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use actix::prelude::*;
use bytes::Bytes;
use futures::FutureExt;
use futures::future::{LocalBoxFuture, join_all};
use futures::stream::{FuturesOrdered, StreamExt};
use tracing::{debug, info, warn};

use super::StageError;
use super::context::{PipelineContext, contain_async};
use super::detector::{Apply, DetectorActor, Reset};
use super::supervisor::Lifeline;
use super::tracker::{ChunkOutcome, Commit, TrackerActor};
use crate::db::{ChunkRecord, ChunkStatus, DbError};
use crate::detect::{Cents, DetectionKey, PairState, PairTotals, Snapshot};
use crate::input::transactions::{BadRow, ChunkParser, ParsedChunk, RejectReason};
use crate::layout;
use crate::store::StoreError;

/// Epochs are numbered process-wide, so a restarted watcher never reuses
/// the number of an epoch whose messages may still be queued.
static EPOCHS: AtomicU64 = AtomicU64::new(0);

const LIST_PAGE: usize = 1000;

pub struct WatcherActor {
    lifeline: Lifeline,
    detectors: Vec<Addr<DetectorActor>>,
    tracker: Addr<TrackerActor>,
}

impl WatcherActor {
    pub fn new(
        pipeline: Arc<PipelineContext>,
        detectors: Vec<Addr<DetectorActor>>,
        tracker: Addr<TrackerActor>,
    ) -> WatcherActor {
        WatcherActor {
            lifeline: Lifeline::new("watcher", pipeline),
            detectors,
            tracker,
        }
    }
}

impl Actor for WatcherActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        self.lifeline.wait_backoff(ctx);
        let y = MechanismY {
            pipeline: self.lifeline.pipeline.clone(),
            detectors: self.detectors.clone(),
            tracker: self.tracker.clone(),
            totals: RefCell::new(self.lifeline.pipeline.take_pair_totals()),
        };
        ctx.spawn(
            actix::fut::wrap_future::<_, Self>(contain_async(y.run())).map(|outcome, act, ctx| {
                let pipeline = act.lifeline.pipeline.clone();
                match outcome {
                    Ok(Ok(())) => pipeline
                        .progress
                        .watcher_stopped
                        .store(true, Ordering::Release),
                    Ok(Err(error)) => act.lifeline.fail(ctx, error.to_string()),
                    Err(panic) => act.lifeline.fail(ctx, panic),
                }
            }),
        );
    }
}

impl Supervised for WatcherActor {
    fn restarting(&mut self, _ctx: &mut Context<Self>) {
        self.lifeline.restarting();
    }
}

/// Why the watcher itself fails.
#[derive(Debug, thiserror::Error)]
enum WatchError {
    #[error("{0}")]
    Store(#[from] StoreError),
    #[error("{0}")]
    Db(#[from] DbError),
    #[error("{0}")]
    Injected(#[from] super::faults::InjectedFault),
    #[error("Mechanism Y cannot get past: {0}")]
    GaveUp(String),
}

/// How an epoch ends early.
enum EpochEnd {
    /// Something downstream failed: start a new epoch from committed state.
    Downstream(String),
    /// The watcher itself failed.
    Own(WatchError),
}

impl From<WatchError> for EpochEnd {
    fn from(error: WatchError) -> Self {
        EpochEnd::Own(error)
    }
}

impl From<StageError> for EpochEnd {
    fn from(error: StageError) -> Self {
        EpochEnd::Downstream(error.to_string())
    }
}

impl From<MailboxError> for EpochEnd {
    fn from(error: MailboxError) -> Self {
        EpochEnd::Downstream(format!("mailbox: {error}"))
    }
}

/// How soon to list again while a chunk sequence number is missing.
const GAP_RECHECK: Duration = Duration::from_millis(5);

/// Admits the chunker's objects in sequence order. The chunker has several
/// PUTs in flight, which may become visible out of order; listing past a
/// missing sequence number would skip it for good (listing starts after
/// the last key seen), so the gate holds later keys back until it appears.
/// A number missing for longer than the timeout (an object deleted by
/// hand, say) is reported and skipped. Keys of any other shape pass.
struct SequenceGate {
    expected: Option<u64>,
    gap_since: Option<Instant>,
    timeout: Duration,
}

impl SequenceGate {
    fn new(last_committed: Option<&str>, timeout: Duration) -> SequenceGate {
        let expected = match last_committed {
            None => Some(0),
            Some(key) => layout::chunk_seq(key).map(|seq| seq + 1),
        };
        SequenceGate {
            expected,
            gap_since: None,
            timeout,
        }
    }

    /// The keys that may go on now, and whether any were held back.
    fn admit(&mut self, keys: Vec<String>, now: Instant) -> (Vec<String>, bool) {
        let mut admitted = Vec::with_capacity(keys.len());
        for key in keys {
            if let Some(seq) = layout::chunk_seq(&key) {
                if let Some(expected) = self.expected
                    && seq > expected
                {
                    let since = *self.gap_since.get_or_insert(now);
                    if now.duration_since(since) < self.timeout {
                        return (admitted, true);
                    }
                    tracing::error!(
                        missing = expected,
                        found = seq,
                        "chunk sequence numbers missing; going on without them"
                    );
                }
                self.gap_since = None;
                self.expected = Some(self.expected.map_or(seq + 1, |e| e.max(seq + 1)));
            }
            admitted.push(key);
        }
        (admitted, false)
    }
}

/// A chunk after fetch and parse.
struct Fetched {
    key: Arc<str>,
    listed_at: Instant,
    /// The parsed chunk and its encoded state change.
    content: Result<(ParsedChunk, Bytes), RejectReason>,
}

struct MechanismY {
    pipeline: Arc<PipelineContext>,
    detectors: Vec<Addr<DetectorActor>>,
    tracker: Addr<TrackerActor>,
    /// Cumulative totals of every pair, as of the last dispatched chunk.
    totals: RefCell<PairTotals>,
}

impl MechanismY {
    async fn run(self) -> Result<(), WatchError> {
        let settings = &self.pipeline.settings;
        let mut failures = 0u32;
        loop {
            match self.run_epoch().await {
                Ok(()) => return Ok(()),
                Err(EpochEnd::Own(error)) => return Err(error),
                Err(EpochEnd::Downstream(reason)) => {
                    failures += 1;
                    if failures > settings.supervisor.max_restarts.max(1) * 4 {
                        return Err(WatchError::GaveUp(reason));
                    }
                    let delay = Duration::from_millis(
                        (settings.supervisor.backoff_initial_ms << failures.min(10))
                            .min(settings.supervisor.backoff_max_ms),
                    );
                    warn!(%reason, retry_in_ms = delay.as_millis() as u64,
                          "Mechanism Y resets to committed state");
                    tokio::select! {
                        _ = tokio::time::sleep(delay) => {}
                        _ = self.pipeline.lifecycle.stop_watcher.cancelled() => {}
                    }
                    if self.pipeline.lifecycle.stop_watcher.is_cancelled() {
                        // Nothing uncommitted is lost: it is re-read next run.
                        return Ok(());
                    }
                }
            }
        }
    }

    /// Loads committed state and hands it to every detector.
    async fn reset(&self, epoch: u64) -> Result<Option<Arc<str>>, EpochEnd> {
        let p = &self.pipeline;
        let names = &*p.names;
        let last = p
            .db("read last chunk", || p.state.last_chunk())
            .await
            .map_err(WatchError::from)?;
        let mut snapshot = Snapshot::default();
        p.state
            .scan_pairs(&mut |row| {
                snapshot.pairs.push(PairState {
                    merchant: names.merchant(row.merchant),
                    customer: names.customer(row.customer),
                    count: row.count,
                    amount: Cents(row.amount),
                    gender: row.gender,
                })
            })
            .await
            .map_err(|e| EpochEnd::Downstream(format!("loading state: {e}")))?;
        p.state
            .scan_emitted(&mut |row| {
                snapshot.emitted.push(DetectionKey {
                    pattern: row.pattern,
                    merchant: names.merchant(row.merchant),
                    customer: (!row.customer.is_empty()).then(|| names.customer(row.customer)),
                })
            })
            .await
            .map_err(|e| EpochEnd::Downstream(format!("loading detections: {e}")))?;
        debug!(
            epoch,
            pairs = snapshot.pairs.len(),
            emitted = snapshot.emitted.len(),
            "epoch snapshot"
        );
        self.totals.borrow_mut().restore(&snapshot);
        let snapshot = Arc::new(snapshot);
        let last: Option<Arc<str>> = last.map(Arc::from);
        let resets = self.detectors.iter().map(|detector| {
            detector.send(Reset {
                epoch,
                snapshot: snapshot.clone(),
                last_chunk: last.clone(),
            })
        });
        for answer in join_all(resets).await {
            answer??;
        }
        Ok(last)
    }

    async fn run_epoch(&self) -> Result<(), EpochEnd> {
        let p = &self.pipeline;
        let settings = &p.settings.watcher;
        let stop = &p.lifecycle.stop_watcher;
        if stop.is_cancelled() {
            return Ok(());
        }
        let epoch = EPOCHS.fetch_add(1, Ordering::Relaxed) + 1;
        let mut committed = self.reset(epoch).await?;
        info!(epoch, last_chunk = ?committed, "Mechanism Y epoch started");
        let mut cursor: Option<String> = committed.as_deref().map(str::to_string);
        let mut applied = committed.clone();
        let mut queue: VecDeque<(String, Instant)> = VecDeque::new();
        let mut fetching: FuturesOrdered<LocalBoxFuture<'static, Result<Fetched, WatchError>>> =
            FuturesOrdered::new();
        let mut detecting: FuturesOrdered<LocalBoxFuture<'static, Result<ChunkOutcome, EpochEnd>>> =
            FuturesOrdered::new();
        let mut ready: VecDeque<ChunkOutcome> = VecDeque::new();
        let mut committing: Option<LocalBoxFuture<'static, Result<Arc<str>, EpochEnd>>> = None;
        let mut next_list_at = Instant::now();
        let mut new_chunks = p.new_chunks.subscribe();
        let mut gate = SequenceGate::new(
            committed.as_deref(),
            Duration::from_millis(settings.gap_timeout_ms),
        );
        let poll_interval = Duration::from_millis(settings.poll_interval_ms);

        loop {
            let stopping = stop.is_cancelled();
            if stopping {
                queue.clear();
            }
            while fetching.len() + detecting.len() + ready.len() < settings.max_in_flight {
                let Some((key, listed_at)) = queue.pop_front() else {
                    break;
                };
                fetching.push_back(fetch(p.clone(), key, listed_at).boxed_local());
            }
            if committing.is_none() && !ready.is_empty() {
                let take = ready.len().min(settings.max_chunks_per_commit);
                let chunks: Vec<ChunkOutcome> = ready.drain(..take).collect();
                let request = self.tracker.send(Commit {
                    expected_last: committed.clone(),
                    chunks,
                });
                committing = Some(async move { Ok(request.await??.last) }.boxed_local());
            }
            let busy = !fetching.is_empty()
                || !detecting.is_empty()
                || !ready.is_empty()
                || committing.is_some();
            if stopping && !busy {
                return Ok(());
            }
            let want_list = !stopping
                && queue.is_empty()
                && fetching.len() + detecting.len() < settings.max_in_flight;
            tokio::select! {
                biased;
                Some(result) = fetching.next(), if !fetching.is_empty() => {
                    let fetched = result?;
                    detecting.push_back(self.dispatch(fetched, epoch, &mut applied)?);
                }
                Some(result) = detecting.next(), if !detecting.is_empty() => {
                    ready.push_back(result?);
                }
                result = async { committing.as_mut().expect("checked").await }, if committing.is_some() => {
                    committing = None;
                    committed = Some(result?);
                }
                _ = tokio::time::sleep_until(next_list_at.into()), if want_list => {
                    let listed = p
                        .store("list chunks", || {
                            p.objects.list(layout::CHUNK_PREFIX, cursor.as_deref(), LIST_PAGE)
                        })
                        .await
                        .map_err(WatchError::from)?;
                    let now = Instant::now();
                    let found = !listed.is_empty();
                    let (admitted, held) = gate.admit(listed, now);
                    if !found {
                        if !busy {
                            p.progress.idle_listings.fetch_add(1, Ordering::AcqRel);
                        }
                        next_list_at = now + poll_interval;
                    } else if admitted.is_empty() {
                        // A chunk PUT that started earlier is still in
                        // flight: look again very soon.
                        next_list_at = now + GAP_RECHECK;
                    } else {
                        cursor = admitted.last().cloned();
                        queue.extend(admitted.into_iter().map(|key| (key, now)));
                        next_list_at = if held { now + GAP_RECHECK } else { now };
                    }
                }
                changed = new_chunks.changed(), if want_list && next_list_at > Instant::now() => {
                    if changed.is_ok() {
                        next_list_at = Instant::now();
                    }
                }
                _ = stop.cancelled(), if !stopping => {}
            }
        }
    }

    /// Folds a parsed chunk into the pair table and sends the result to
    /// every detector (in chunk order: the request is queued before this
    /// returns); returns the future of the chunk's outcome.
    fn dispatch(
        &self,
        fetched: Fetched,
        epoch: u64,
        applied: &mut Option<Arc<str>>,
    ) -> Result<LocalBoxFuture<'static, Result<ChunkOutcome, EpochEnd>>, EpochEnd> {
        let p = &self.pipeline;
        p.faults.hit("watcher").map_err(WatchError::from)?;
        let seq = layout::chunk_seq(&fetched.key);
        let (parsed, encoded) = match fetched.content {
            Ok(content) => content,
            Err(reason) => {
                warn!(chunk = %fetched.key, %reason, "chunk rejected");
                let outcome = ChunkOutcome {
                    record: ChunkRecord {
                        name: fetched.key.to_string(),
                        seq,
                        status: ChunkStatus::Rejected,
                        rows: 0,
                        bad_rows: 0,
                        detections: 0,
                        reason: Some(reason.to_string()),
                    },
                    encoded_delta: None,
                    detections: Vec::new(),
                    detection_time: String::new(),
                    listed_at: fetched.listed_at,
                };
                return Ok(async move { Ok(outcome) }.boxed_local());
            }
        };
        let update = Arc::new(self.totals.borrow_mut().fold(&parsed.delta));
        let requests: Vec<_> = self
            .detectors
            .iter()
            .map(|detector| {
                detector.send(Apply {
                    epoch,
                    chunk: fetched.key.clone(),
                    previous: applied.clone(),
                    update: update.clone(),
                })
            })
            .collect();
        *applied = Some(fetched.key.clone());
        let record = ChunkRecord {
            name: fetched.key.to_string(),
            seq,
            status: ChunkStatus::Processed,
            rows: parsed.rows,
            bad_rows: parsed.bad_rows.len() as u64,
            detections: 0,
            reason: None,
        };
        let listed_at = fetched.listed_at;
        Ok(async move {
            let mut detections = Vec::new();
            for answer in join_all(requests).await {
                detections.extend(answer??);
            }
            let detection_time = crate::clock::now_ist();
            Ok(ChunkOutcome {
                record: ChunkRecord {
                    detections: detections.len() as u64,
                    ..record
                },
                encoded_delta: Some(encoded),
                detections,
                detection_time,
                listed_at,
            })
        }
        .boxed_local())
    }
}

/// GETs and parses a chunk, and writes its quarantine object (before the
/// chunk can commit, so a committed chunk always has one).
async fn fetch(
    pipeline: Arc<PipelineContext>,
    key: String,
    listed_at: Instant,
) -> Result<Fetched, WatchError> {
    let p = &*pipeline;
    crate::pause_points::reached("chunk-fetch");
    let body = match p.recent_chunks.take(&key) {
        Some(body) => Some(body),
        None => p.store("read chunk", || p.objects.get(&key)).await?,
    };
    let content = match body {
        None => Err(RejectReason::Vanished),
        Some(body) => {
            // Parsing is the heaviest step: it runs on the blocking pool so
            // that several chunks parse at once, beside this thread.
            let (names, data) = (p.names.clone(), body.clone());
            let max_record_bytes = p.settings.input.max_record_bytes;
            let parsed = tokio::task::spawn_blocking(move || {
                ChunkParser::new(max_record_bytes)
                    .parse(&data, &names)
                    .map(|mut chunk| {
                        let encoded = Bytes::from(std::mem::take(&mut chunk.encoded_delta));
                        (chunk, encoded)
                    })
            })
            .await
            .unwrap_or_else(|error| std::panic::resume_unwind(error.into_panic()));
            match &parsed {
                Ok((chunk, _)) if !chunk.bad_rows.is_empty() => {
                    let report = Bytes::from(bad_rows_report(&chunk.bad_rows));
                    let target = layout::bad_rows_key(&key);
                    p.store("write quarantine", || {
                        p.objects.put(&target, report.clone())
                    })
                    .await?;
                    info!(chunk = %key, bad_rows = chunk.bad_rows.len(), quarantine = %target,
                          "bad rows quarantined");
                }
                Err(_) => {
                    let target = layout::rejected_key(&key);
                    p.store("write quarantine", || p.objects.put(&target, body.clone()))
                        .await?;
                }
                Ok(_) => {}
            }
            parsed
        }
    };
    Ok(Fetched {
        key: Arc::from(key),
        listed_at,
        content,
    })
}

/// The quarantine object of a chunk's bad rows: `line,reason,raw_line`,
/// raw lines byte for byte.
fn bad_rows_report(bad_rows: &[BadRow]) -> Vec<u8> {
    let mut writer = csv::Writer::from_writer(Vec::new());
    let write = |writer: &mut csv::Writer<Vec<u8>>| -> csv::Result<()> {
        writer.write_record(["line", "reason", "raw_line"])?;
        for row in bad_rows {
            writer.write_record([
                row.line.to_string().as_bytes(),
                row.reason.to_string().as_bytes(),
                &row.raw,
            ])?;
        }
        writer.flush()?;
        Ok(())
    };
    write(&mut writer).expect("writing CSV to memory cannot fail");
    writer.into_inner().expect("flushed above")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::input::transactions::BadRowReason;

    #[test]
    fn quarantine_report_keeps_raw_bytes() {
        let report = bad_rows_report(&[BadRow {
            line: 7,
            reason: BadRowReason::InvalidUtf8,
            raw: b"a,\"b\xff".to_vec(),
        }]);
        assert_eq!(
            report,
            b"line,reason,raw_line\n7,invalid UTF-8,\"a,\"\"b\xff\"\n"
        );
    }
}
