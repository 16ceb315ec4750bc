//! TrackerActor: commits chunks, exactly once.
//!
//! It receives groups of consecutive chunk outcomes from the watcher (the
//! chunks' encoded state changes, their `processed_chunks` rows and their
//! new detections) and writes each group in one database transaction.
//! The compactor later folds the committed state changes into
//! `pair_state` (see `db::delta`). The
//! transaction only commits on top of the chunk the watcher believes was
//! committed last; if that is not so, nothing is written and the watcher
//! resets to committed state. A commit retried after a lost answer finds
//! its own chunks already there and reports success without writing
//! anything twice. Committed detections wait in the outbox for the batch
//! writer, whose doorbell rings after every commit.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use actix::prelude::*;

use super::StageError;
use super::context::{PipelineContext, contain_async};
use super::supervisor::Lifeline;
use crate::db::{ChunkRecord, ChunkStatus, CommitBatch, CommitOutcome, DeltaBlob, DetectionRecord};
use crate::detect::Detection;

/// The result of one chunk, ready to commit.
#[derive(Debug)]
pub struct ChunkOutcome {
    pub record: ChunkRecord,
    /// The chunk's state change, encoded (see `db::delta`); `None` for a
    /// rejected chunk.
    pub encoded_delta: Option<bytes::Bytes>,
    pub detections: Vec<Detection>,
    pub detection_time: String,
    pub listed_at: Instant,
}

/// Commit consecutive chunks on top of `expected_last`.
#[derive(Message)]
#[rtype(result = "Result<CommitReceipt, StageError>")]
pub struct Commit {
    pub expected_last: Option<Arc<str>>,
    pub chunks: Vec<ChunkOutcome>,
}

#[derive(Debug)]
pub struct CommitReceipt {
    /// The last chunk now committed.
    pub last: Arc<str>,
}

pub struct TrackerActor {
    lifeline: Lifeline,
}

impl TrackerActor {
    pub fn new(pipeline: Arc<PipelineContext>) -> TrackerActor {
        TrackerActor {
            lifeline: Lifeline::new("tracker", pipeline),
        }
    }
}

impl Actor for TrackerActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        self.lifeline.wait_backoff(ctx);
    }
}

impl Supervised for TrackerActor {
    fn restarting(&mut self, _ctx: &mut Context<Self>) {
        self.lifeline.restarting();
    }
}

enum CommitFailure {
    /// A bug or an injected fault: restart the tracker.
    Crash(String),
    /// The database kept failing, or the watcher's view was stale.
    Stage(StageError),
}

impl Handler<Commit> for TrackerActor {
    type Result = AtomicResponse<Self, Result<CommitReceipt, StageError>>;

    fn handle(&mut self, msg: Commit, _ctx: &mut Context<Self>) -> Self::Result {
        let pipeline = self.lifeline.pipeline.clone();
        let name = self.lifeline.name.clone();
        let work = async move { contain_async(commit(&pipeline, &name, msg)).await };
        AtomicResponse::new(Box::pin(actix::fut::wrap_future::<_, Self>(work).map(
            |outcome, act, ctx| {
                let failure = match outcome {
                    Ok(Ok(receipt)) => return Ok(receipt),
                    Ok(Err(CommitFailure::Stage(error))) => return Err(error),
                    Ok(Err(CommitFailure::Crash(reason))) | Err(reason) => reason,
                };
                act.lifeline.fail(ctx, failure.clone());
                Err(StageError::crashed(&act.lifeline.name, failure))
            },
        )))
    }
}

async fn commit(
    pipeline: &PipelineContext,
    name: &str,
    msg: Commit,
) -> Result<CommitReceipt, CommitFailure> {
    pipeline
        .faults
        .hit(name)
        .map_err(|e| CommitFailure::Crash(e.to_string()))?;
    let last: Arc<str> = match msg.chunks.last() {
        Some(chunk) => Arc::from(chunk.record.name.as_str()),
        None => {
            return Err(CommitFailure::Stage(StageError::Failed(
                "empty commit".into(),
            )));
        }
    };
    let names = &*pipeline.names;
    let deltas: Vec<DeltaBlob<'_>> = msg
        .chunks
        .iter()
        .filter_map(|c| {
            c.encoded_delta.as_ref().map(|blob| DeltaBlob {
                chunk: &c.record.name,
                blob,
            })
        })
        .collect();
    let mut detections = Vec::new();
    let mut chunks = Vec::with_capacity(msg.chunks.len());
    for chunk in &msg.chunks {
        let start = detections.len();
        for detection in &chunk.detections {
            detections.push(DetectionRecord {
                pattern: detection.key.pattern,
                merchant: names.name(detection.key.merchant.0),
                customer: detection.key.customer.map_or("", |c| names.name(c.0)),
                evidence: detection.evidence,
                chunk_name: &chunk.record.name,
                y_start_time: &pipeline.y_start_time,
                detection_time: &chunk.detection_time,
            });
        }
        // Ids follow this order, so files are the same whatever the shard
        // count or the order shards answered in.
        detections[start..].sort_by(|a, b| {
            (a.pattern, a.merchant, a.customer).cmp(&(b.pattern, b.merchant, b.customer))
        });
        chunks.push(chunk.record.clone());
    }
    let processed_at = crate::clock::now_ist();
    let batch = CommitBatch {
        expected_last: msg.expected_last.as_deref(),
        chunks: &chunks,
        deltas: &deltas,
        detections: &detections,
        processed_at: &processed_at,
    };
    let started = Instant::now();
    let outcome = pipeline
        .db("commit chunks", || {
            pipeline.state.commit(&pipeline.fence, &batch)
        })
        .await
        .map_err(|e| {
            // Name the chunks: an error no retry fixes must say which
            // chunk the operator may have to skip (`txpipe skip-chunk`).
            let first = chunks.first().map_or("", |c| c.name.as_str());
            CommitFailure::Stage(StageError::Failed(format!(
                "commit of chunk {first:?} to {last:?}: {e}"
            )))
        })?;
    match outcome {
        CommitOutcome::Committed => {}
        CommitOutcome::AlreadyCommitted => {
            tracing::info!(chunk = ?last, "commit had already gone through");
            return Ok(CommitReceipt { last });
        }
        CommitOutcome::Conflict { last: actual } => {
            return Err(CommitFailure::Stage(StageError::Stale(format!(
                "expected last committed chunk {:?}, database has {actual:?}",
                msg.expected_last
            ))));
        }
    }
    let progress = &pipeline.progress;
    let now = Instant::now();
    for chunk in &msg.chunks {
        let record = &chunk.record;
        match record.status {
            ChunkStatus::Processed => progress.chunks_committed.fetch_add(1, Ordering::Relaxed),
            ChunkStatus::Rejected => progress.chunks_rejected.fetch_add(1, Ordering::Relaxed),
        };
        progress
            .rows_committed
            .fetch_add(record.rows, Ordering::Relaxed);
        progress
            .bad_rows
            .fetch_add(record.bad_rows, Ordering::Relaxed);
        progress.record_latency(now.duration_since(chunk.listed_at));
        for detection in &chunk.detections {
            progress.detections[detection.key.pattern as usize].fetch_add(1, Ordering::Relaxed);
        }
    }
    progress.commits.fetch_add(1, Ordering::Relaxed);
    crate::actors::context::Progress::mark(&progress.last_commit_at);
    *progress
        .last_commit_cpu
        .lock()
        .unwrap_or_else(|e| e.into_inner()) = crate::app::report::cpu_seconds();
    pipeline
        .committed
        .send_modify(|chunks| *chunks += msg.chunks.len() as u64);
    tracing::debug!(
        chunks = msg.chunks.len(),
        deltas = deltas.len(),
        detections = detections.len(),
        took_ms = started.elapsed().as_secs_f64() * 1e3,
        "committed"
    );
    if !detections.is_empty() {
        pipeline
            .doorbell
            .send_modify(|rung| *rung += detections.len() as u64);
    }
    Ok(CommitReceipt { last })
}
