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
use super::chunk_gate::{ChunkGate, Ignored, Stop, Verdict};
use super::context::{PipelineContext, contain_async};
use super::detector::{Apply, DetectorActor, Reset};
use super::supervisor::Lifeline;
use super::tracker::{ChunkOutcome, Commit, TrackerActor};
use crate::db::{ChunkRecord, ChunkStatus, DbError, IgnoredObject};
use crate::detect::{Cents, DetectionKey, PairState, PairTotals, Snapshot};
use crate::input::transactions::{BadRow, ChunkParser, ParsedChunk, RejectReason};
use crate::layout;
use crate::store::{Sized, StoreError};

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

/// How soon to list again while a chunk sequence number is missing: a
/// chunk PUT that started earlier is usually about to become visible.
const GAP_RECHECK: Duration = Duration::from_millis(5);

/// Claims read at once (more than a listing page, so that one read covers
/// every key of a page).
const CLAIMS_PAGE: usize = 2 * LIST_PAGE;

/// What one listing found.
#[derive(Default)]
struct Listing {
    /// Keys to apply, in order.
    applied: Vec<String>,
    /// A key waits (a missing sequence number, or one not yet claimed).
    held: bool,
    /// An ignored object was recorded for the first time.
    recorded: bool,
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
        let mut gate = ChunkGate::new(
            committed.as_deref(),
            Duration::from_millis(settings.gap_timeout_ms),
        );
        let mut held_since: Option<Instant> = None;
        let sweep_interval = Duration::from_millis(settings.sweep_interval_ms);
        let mut next_sweep_at = Instant::now();
        let mut sweep_position: Option<String> = None;
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
                    let listing = self.list(&mut gate, cursor.as_deref()).await?;
                    let now = Instant::now();
                    if let Some(last) = listing.applied.last() {
                        cursor = Some(last.clone());
                    }
                    let found = !listing.applied.is_empty();
                    queue.extend(listing.applied.into_iter().map(|key| (key, now)));
                    if found || !listing.held {
                        held_since = None;
                    }
                    next_list_at = if listing.held {
                        // Look again very soon while a chunk is about to
                        // appear (a PUT in flight), then at the polling pace
                        // (a number the chunker may claim much later).
                        let since = *held_since.get_or_insert(now);
                        now + if now.duration_since(since) < poll_interval {
                            GAP_RECHECK
                        } else {
                            poll_interval
                        }
                    } else if found {
                        now
                    } else {
                        now + poll_interval
                    };
                    if !found && !listing.held && !listing.recorded && !busy {
                        p.progress.idle_listings.fetch_add(1, Ordering::AcqRel);
                    }
                }
                _ = tokio::time::sleep_until(next_sweep_at.into()), if !stopping => {
                    self.sweep(&mut gate, committed.as_deref(), &mut sweep_position).await?;
                    next_sweep_at = Instant::now() + sweep_interval;
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

    /// Lists `stream_chunks/` after `cursor` (the last applied key) and
    /// lets the gate decide every key; ignored objects are set aside and
    /// recorded here. Pages that hold only ignored keys are listed past at
    /// once, so no number of strangers can hide a chunk behind them.
    async fn list(&self, gate: &mut ChunkGate, cursor: Option<&str>) -> Result<Listing, EpochEnd> {
        let p = &self.pipeline;
        let mut listing = Listing::default();
        let mut page_after = cursor.map(str::to_string);
        let mut claims_fresh = false;
        loop {
            let keys = p
                .store("list chunks", || {
                    p.objects
                        .list(layout::CHUNK_PREFIX, page_after.as_deref(), LIST_PAGE)
                })
                .await
                .map_err(WatchError::from)?;
            let now = Instant::now();
            // Chunks this process's chunker claimed: no need to ask.
            for key in &keys {
                if let Some(seq) = layout::chunk_seq(key)
                    && seq >= gate.expected()
                    && p.recent_chunks.is_claimed(key)
                {
                    gate.note_claim(seq, key);
                }
            }
            let mut decided = 0;
            let applied_before = listing.applied.len();
            let stop = loop {
                let admission = gate.admit(&keys[decided..], now, claims_fresh);
                decided += admission.consumed;
                for verdict in admission.verdicts {
                    match verdict {
                        Verdict::Apply(key) => listing.applied.push(key),
                        Verdict::Ignore { key, why } => {
                            listing.recorded |= self.set_aside(&key, &why).await?;
                        }
                    }
                }
                if admission.stop != Stop::NeedClaims {
                    break admission.stop;
                }
                let from = gate.expected();
                let claims = p
                    .db("read chunk claims", || {
                        p.state.chunk_claims(from, CLAIMS_PAGE)
                    })
                    .await
                    .map_err(WatchError::from)?;
                gate.update_claims(claims);
                claims_fresh = true;
            };
            listing.held = stop == Stop::Held;
            let page_was_full = keys.len() == LIST_PAGE;
            if stop == Stop::Done && page_was_full && listing.applied.len() == applied_before {
                page_after = keys.last().cloned();
                continue;
            }
            return Ok(listing);
        }
    }

    /// Looks for objects that appeared among the chunks already committed
    /// (the listing, which goes on after the last applied key, never sees
    /// them), one page of keys per call: every key up to `committed` that
    /// `processed_chunks` does not name was never applied, and is set
    /// aside. `position` is where the sweep stands; it starts over once it
    /// reaches `committed`, so the cost is one LIST and one query per call
    /// however long the bucket's history.
    async fn sweep(
        &self,
        gate: &mut ChunkGate,
        committed: Option<&str>,
        position: &mut Option<String>,
    ) -> Result<(), EpochEnd> {
        let Some(committed) = committed else {
            return Ok(());
        };
        let p = &self.pipeline;
        let mut keys = p
            .store("sweep chunks", || {
                p.objects
                    .list(layout::CHUNK_PREFIX, position.as_deref(), LIST_PAGE)
            })
            .await
            .map_err(WatchError::from)?;
        let page_was_full = keys.len() == LIST_PAGE;
        keys.retain(|key| key.as_str() <= committed);
        let (Some(first), Some(last)) = (keys.first(), keys.last()) else {
            *position = None;
            return Ok(());
        };
        let applied: std::collections::HashSet<String> = p
            .db("read processed chunk names", || {
                p.state.processed_names_between(first, last)
            })
            .await
            .map_err(WatchError::from)?
            .into_iter()
            .collect();
        for key in keys.iter().filter(|key| !applied.contains(*key)) {
            if let Some(Verdict::Ignore { key, why }) = gate.passed_over(key) {
                self.set_aside(&key, &why).await?;
            }
        }
        *position = (page_was_full && last.as_str() < committed).then(|| last.clone());
        Ok(())
    }

    /// Copies an object that is not applied to `quarantine/` and records
    /// it (once: the first time says so in a WARN line). Returns whether it
    /// was new.
    async fn set_aside(&self, key: &str, why: &Ignored) -> Result<bool, EpochEnd> {
        let p = &self.pipeline;
        let name = key.strip_prefix(layout::CHUNK_PREFIX).unwrap_or(key);
        let target = format!("{}{name}.{}", layout::QUARANTINE_PREFIX, why.kind());
        let copied = match p
            .store("quarantine object", || p.objects.copy(key, &target))
            .await
        {
            Ok(true) => Some(target),
            Ok(false) => None,
            Err(error) if !error.is_transient() => {
                // A name too long for a quarantine key, say: the object
                // stays where it is, and the record says why.
                warn!(object = ?key, %error, "could not copy an ignored object to quarantine");
                None
            }
            Err(error) => return Err(WatchError::from(error).into()),
        };
        let record = IgnoredObject {
            key: key.to_string(),
            seq: layout::chunk_seq(key),
            reason: why.reason(),
            quarantine_key: copied,
        };
        let new = p
            .db("record ignored object", || {
                p.state.record_ignored(&p.fence, &record)
            })
            .await
            .map_err(WatchError::from)?;
        if new {
            p.progress.objects_ignored.fetch_add(1, Ordering::Relaxed);
            warn!(object = ?key, reason = %record.reason, quarantine = ?record.quarantine_key,
                  "object under stream_chunks/ is not applied");
        }
        Ok(new)
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
                warn!(chunk = ?fetched.key, %reason, "chunk rejected");
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
    let limit = p.settings.watcher.max_chunk_bytes;
    let body = match p.recent_chunks.take(&key) {
        Some(body) => Some(Sized::Body(body)),
        None => {
            p.store("read chunk", || p.objects.get_at_most(&key, limit))
                .await?
        }
    };
    let content = match body {
        None => Err(RejectReason::Vanished),
        Some(Sized::TooLarge { size }) => {
            // Quarantined by a copy inside the store: never in memory.
            let target = layout::rejected_key(&key);
            p.store("quarantine chunk", || p.objects.copy(&key, &target))
                .await?;
            Err(RejectReason::TooLarge { size, limit })
        }
        Some(Sized::Body(body)) => {
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
                    info!(chunk = ?key, bad_rows = chunk.bad_rows.len(), quarantine = ?target,
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
