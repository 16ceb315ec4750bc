//! TrackerActor: commits chunks, exactly once, in order.
//!
//! It takes each chunk's outcome from the pair table ([`Evaluated`]: the
//! chunk's encoded state change, its `processed_chunks` row and its new
//! detections), puts outcomes back in announcement order, and writes them
//! in database transactions: one at a time, each on top of the chunk it
//! committed last, as many ready chunks together as
//! `watcher.max_chunks_per_commit` allows when commits fall behind. That
//! scheduling is [`CommitSchedule`], a pure rule set.
//!
//! ```text
//! PairTableActor ──Evaluated──► TrackerActor ──one transaction──► database
//!                                    │   (state change + processed_chunks + detections)
//!                                    ├──Committed──► BatchWriterActor
//!                                    └──Committed──► CompactorActor
//! ```
//!
//! The transaction only commits on top of the chunk the tracker believes
//! was committed last; if the database says otherwise, nothing is written
//! and the supervisor starts a new generation from what the database
//! holds. A commit retried after a lost answer finds its own chunks already
//! there and reports success without writing anything twice. Committed
//! detections wait in the outbox (detections without a file yet) for the
//! batch writer. Dropping a committed chunk's outcome returns its permit to
//! the watcher.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Instant;

use super::watcher::InFlight;
use actix::prelude::*;
use futures::future::LocalBoxFuture;
use tokio::sync::oneshot;

use super::batch_writer::BatchWriterActor;
use super::committed::{Committed, Reshare, Share, Start};
use super::compactor::CompactorActor;
use super::sequence::InOrder;
use super::supervised::{Behaviour, Failure, Group, Mailbox, Supervised};
use super::supervisor::{Resync, SupervisorActor};
use super::wiring::{Wiring, contain_async};
use crate::db::postgres::cluster::{GroupCommit, GroupDelta};
use crate::db::{
    ChunkRecord, ChunkStatus, CommitBatch, CommitOutcome, DbError, DeltaBlob, DetectionRecord,
};
use crate::detect::Detection;
use crate::layout::chunk_seq;
use crate::metrics::{DetectionView, RECENT_DETECTIONS};

pub type TrackerActor = Supervised<Tracker>;

/// The tracker's wiring.
pub struct Tracker {
    pub wiring: Arc<Wiring>,
    /// A cluster's worker has a batch writer only while it holds the
    /// chunker lease (and then the tracker does not notify it: it polls).
    pub batch_writer: Option<Mailbox<BatchWriterActor>>,
    pub compactor: Mailbox<CompactorActor>,
    pub supervisor: Addr<SupervisorActor>,
}

impl Behaviour for Tracker {
    type State = TrackerState;
    const GROUP: Group = Group::MechanismY;

    fn pre_start(&self) -> LocalBoxFuture<'static, Result<Option<TrackerState>, Failure>> {
        Box::pin(async { Ok(None) })
    }
}

/// The result of one chunk, ready to commit.
#[derive(Debug)]
pub struct ChunkOutcome {
    pub record: ChunkRecord,
    /// The chunk's state change, encoded (see `db::delta`); `None` for a
    /// rejected chunk.
    pub encoded_delta: Option<bytes::Bytes>,
    /// In a cluster: the state change of each key group, encoded.
    pub group_deltas: Vec<(u32, bytes::Bytes)>,
    pub detections: Vec<Detection>,
    pub detection_time: String,
    pub listed_at: Instant,
    /// The watcher's permit: returned when the outcome is dropped.
    pub permit: InFlight,
}

/// A chunk evaluated by every detector (or rejected).
#[derive(Message)]
#[rtype(result = "()")]
pub struct Evaluated {
    pub generation: u64,
    pub number: u64,
    pub outcome: ChunkOutcome,
}

/// Stop committing for the current generation (a new one is about to be
/// loaded); answered once no commit is under way.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Quiesce;

/// Chunks became durable; `detections` of them wait in the outbox.
#[derive(Message, Clone, Copy)]
#[rtype(result = "()")]
pub struct ChunksCommitted {
    pub chunks: u64,
    pub detections: u64,
}

/// When to commit what: outcomes arrive out of order and commit in order,
/// one transaction at a time, each on top of the last committed chunk.
#[derive(Debug)]
pub struct CommitSchedule<T> {
    order: InOrder<T>,
    ready: VecDeque<T>,
    /// The last chunk committed, which the next commit must follow.
    pub last: Option<Arc<str>>,
    committing: bool,
    max_chunks: usize,
}

impl<T> CommitSchedule<T> {
    pub fn new(last: Option<Arc<str>>, max_chunks: usize) -> CommitSchedule<T> {
        CommitSchedule {
            order: InOrder::new(0),
            ready: VecDeque::new(),
            last,
            committing: false,
            max_chunks: max_chunks.max(1),
        }
    }

    /// Takes outcome number `n`; a duplicate is handed back.
    pub fn arrived(&mut self, n: u64, outcome: T) -> Result<(), T> {
        self.order.push(n, outcome)?;
        while let Some(next) = self.order.pop() {
            self.ready.push_back(next);
        }
        Ok(())
    }

    /// The next group to commit, if no commit is under way: every ready
    /// outcome, up to the group limit.
    pub fn next_group(&mut self) -> Option<Vec<T>> {
        if self.committing || self.ready.is_empty() {
            return None;
        }
        self.committing = true;
        let take = self.ready.len().min(self.max_chunks);
        Some(self.ready.drain(..take).collect())
    }

    /// The commit under way is durable; `last` is its last chunk.
    pub fn committed(&mut self, last: Arc<str>) {
        self.committing = false;
        self.last = Some(last);
    }
}

/// What the tracker owns in one generation.
pub struct TrackerState {
    generation: u64,
    schedule: CommitSchedule<ChunkOutcome>,
    /// A new generation is being loaded: take nothing more, start no
    /// commit, and tell `waiters` when the commit under way is done.
    quiesced: bool,
    waiters: Vec<oneshot::Sender<()>>,
    /// In a cluster: the key groups committed, with their fences.
    share: Option<Arc<Share>>,
}

impl TrackerState {
    /// The restart constructor: commits go on after the committed chunk.
    pub fn restore(committed: &Committed, max_chunks: usize) -> TrackerState {
        TrackerState {
            generation: committed.generation,
            schedule: CommitSchedule::new(committed.last_chunk.clone(), max_chunks),
            quiesced: false,
            waiters: Vec::new(),
            share: committed.share.clone(),
        }
    }
}

impl Handler<Start> for TrackerActor {
    type Result = ();

    fn handle(&mut self, Start(committed): Start, _ctx: &mut Context<Self>) {
        if !committed.supersedes(self.state.as_ref().map(|s| s.generation)) {
            return;
        }
        let max_chunks = self.behaviour.wiring.settings.watcher.max_chunks_per_commit;
        self.set_state(TrackerState::restore(&committed, max_chunks));
    }
}

impl Handler<Reshare> for TrackerActor {
    type Result = ();

    /// Commits from now on fence, and advance, the new share's groups only.
    fn handle(&mut self, msg: Reshare, _ctx: &mut Context<Self>) {
        if let Some(state) = self
            .state
            .as_mut()
            .filter(|s| s.generation == msg.generation)
        {
            state.share = msg.share(&state.share);
        }
    }
}

impl Handler<Quiesce> for TrackerActor {
    type Result = ResponseFuture<()>;

    /// Answers once no commit of this generation is under way.
    fn handle(&mut self, _msg: Quiesce, _ctx: &mut Context<Self>) -> Self::Result {
        let Some(state) = self.state.as_mut() else {
            return Box::pin(async {});
        };
        state.quiesced = true;
        if !state.schedule.committing {
            return Box::pin(async {});
        }
        let (done, answer) = oneshot::channel();
        state.waiters.push(done);
        // Dropped unanswered when the tracker restarts or starts over:
        // then nothing is under way either.
        Box::pin(async move {
            let _ = answer.await;
        })
    }
}

impl Handler<Evaluated> for TrackerActor {
    type Result = ();

    fn handle(&mut self, msg: Evaluated, ctx: &mut Context<Self>) {
        let Some(state) = self
            .state
            .as_mut()
            .filter(|s| s.generation == msg.generation && !s.quiesced)
        else {
            return;
        };
        if state.schedule.arrived(msg.number, msg.outcome).is_ok() {
            self.commit_next(ctx);
        }
    }
}

/// Why a commit failed.
enum CommitFailure {
    /// A bug or an injected fault, or the database kept failing: restart
    /// the tracker (and with it, Mechanism Y).
    Crash(String),
    /// The database holds another last chunk than the tracker expected.
    Stale(String),
}

impl TrackerActor {
    /// Starts the next commit if one is due.
    fn commit_next(&mut self, ctx: &mut Context<Self>) {
        let Some(state) = self.state.as_mut().filter(|s| !s.quiesced) else {
            return;
        };
        let Some(group) = state.schedule.next_group() else {
            return;
        };
        let generation = state.generation;
        let expected_last = state.schedule.last.clone();
        let share = state.share.clone();
        let wiring = self.behaviour.wiring.clone();
        let name = self.name.clone();
        let work = async move {
            let outcome = commit(&wiring, &name, expected_last, share, &group).await;
            (outcome, group)
        };
        ctx.spawn(actix::fut::wrap_future::<_, Self>(contain_async(work)).map(
            move |done, act, ctx| {
                let (outcome, group) = match done {
                    Ok(done) => done,
                    Err(panic) => return act.fail(ctx, Failure::Restart(panic)),
                };
                match outcome {
                    Ok(last) => {
                        let notice = ChunksCommitted {
                            chunks: group.len() as u64,
                            detections: group.iter().map(|c| c.detections.len() as u64).sum(),
                        };
                        // Dropping the group returns the chunks' permits.
                        drop(group);
                        act.committed(generation, last, notice, ctx);
                    }
                    Err(CommitFailure::Stale(reason)) => {
                        if act.state.as_ref().map(|s| s.generation) == Some(generation) {
                            act.state = None;
                            let supervisor = act.behaviour.supervisor.clone();
                            ctx.spawn(actix::fut::wrap_future(async move {
                                let _ = supervisor.send(Resync { generation, reason }).await;
                            }));
                        }
                    }
                    Err(CommitFailure::Crash(reason)) => act.fail(ctx, Failure::Restart(reason)),
                }
            },
        ));
    }

    fn committed(
        &mut self,
        generation: u64,
        last: Arc<str>,
        notice: ChunksCommitted,
        ctx: &mut Context<Self>,
    ) {
        let batch_writer = self.behaviour.batch_writer.clone();
        let compactor = self.behaviour.compactor.clone();
        ctx.spawn(actix::fut::wrap_future(async move {
            if let Some(batch_writer) = batch_writer.filter(|_| notice.detections > 0) {
                let _ = batch_writer.send(notice).await;
            }
            let _ = compactor.send(notice).await;
        }));
        if let Some(state) = self.state.as_mut().filter(|s| s.generation == generation) {
            state.schedule.committed(last);
            if state.quiesced {
                for waiter in state.waiters.drain(..) {
                    let _ = waiter.send(());
                }
            } else {
                self.commit_next(ctx);
            }
        }
    }
}

/// Writes one group of consecutive chunks in one transaction; returns the
/// last chunk now committed.
async fn commit(
    pipeline: &Wiring,
    name: &str,
    expected_last: Option<Arc<str>>,
    share: Option<Arc<Share>>,
    group: &[ChunkOutcome],
) -> Result<Arc<str>, CommitFailure> {
    pipeline
        .faults
        .hit(name)
        .map_err(|e| CommitFailure::Crash(e.to_string()))?;
    let Some(last) = group.last() else {
        return Err(CommitFailure::Crash("empty commit".into()));
    };
    let last: Arc<str> = Arc::from(last.record.name.as_str());
    let names = &*pipeline.names;
    let deltas: Vec<DeltaBlob<'_>> = group
        .iter()
        .filter_map(|c| {
            c.encoded_delta.as_ref().map(|blob| DeltaBlob {
                chunk: &c.record.name,
                blob,
            })
        })
        .collect();
    let mut detections = Vec::new();
    let mut chunks = Vec::with_capacity(group.len());
    for chunk in group {
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
        expected_last: expected_last.as_deref(),
        chunks: &chunks,
        deltas: &deltas,
        detections: &detections,
        processed_at: &processed_at,
    };
    let started = Instant::now();
    let result = match (&share, &pipeline.cluster) {
        (Some(share), Some(cluster)) => {
            let expected = expected_last
                .as_deref()
                .and_then(chunk_seq)
                .map_or(-1, |seq| seq as i64);
            let Some(through_seq) = group.last().and_then(|c| c.record.seq) else {
                return Err(CommitFailure::Crash(format!(
                    "chunk {last:?} has no sequence number; a cluster applies numbered chunks only"
                )));
            };
            let deltas: Vec<GroupDelta<'_>> = group
                .iter()
                .flat_map(|c| {
                    let seq = c.record.seq.map_or(-1, |s| s as i64);
                    c.group_deltas.iter().map(move |(g, blob)| GroupDelta {
                        group: *g,
                        seq,
                        chunk: &c.record.name,
                        blob,
                    })
                })
                .collect();
            let detection_groups: Vec<u32> = detections
                .iter()
                .map(|d| share.group_of(d.merchant))
                .collect();
            let (fences, expected) = (share.fences(), share.progress_after(expected));
            let commit = GroupCommit {
                owner_id: &share.owner_id,
                fences: &fences,
                expected: &expected,
                through_seq: through_seq as i64,
                through_chunk: &last,
                chunks: &chunks,
                deltas: &deltas,
                detections: &detections,
                detection_groups: &detection_groups,
                processed_at: &processed_at,
            };
            pipeline
                .db("commit chunks", || cluster.commit_groups(&commit))
                .await
        }
        _ => {
            pipeline
                .db("commit chunks", || {
                    pipeline.state.commit(&pipeline.fence, &batch)
                })
                .await
        }
    };
    let outcome = match result {
        Ok(outcome) => outcome,
        // A worker that lost key groups drops them: the supervisor starts
        // a generation without them.
        Err(DbError::GroupsLost(reason)) => {
            tracing::warn!(%reason, "lost key groups: nothing of this commit was written");
            return Err(CommitFailure::Stale(reason));
        }
        Err(e) => {
            // Name the chunks: an error no retry fixes must say which
            // chunk the operator may have to skip (`txpipe skip-chunk`).
            let first = chunks.first().map_or("", |c| c.name.as_str());
            return Err(CommitFailure::Crash(format!(
                "commit of chunk {first:?} to {last:?}: {e}"
            )));
        }
    };
    match outcome {
        CommitOutcome::Committed => {}
        CommitOutcome::AlreadyCommitted => {
            tracing::info!(chunk = ?last, "commit had already gone through");
            return Ok(last);
        }
        CommitOutcome::Conflict { last: actual } => {
            return Err(CommitFailure::Stale(format!(
                "expected last committed chunk {expected_last:?}, database has {actual:?}"
            )));
        }
    }
    let metrics = &pipeline.metrics;
    let now = Instant::now();
    for chunk in group {
        let record = &chunk.record;
        match record.status {
            ChunkStatus::Processed => metrics.chunks_committed.inc(),
            ChunkStatus::Rejected => metrics.chunks_rejected.inc(),
        };
        metrics.rows_committed.inc_by(record.rows);
        metrics.bad_rows.inc_by(record.bad_rows);
        metrics.chunk_latency(now.duration_since(chunk.listed_at));
        for detection in &chunk.detections {
            metrics.detected(detection.key.pattern, 1);
        }
    }
    if let Some(seq) = group.last().and_then(|c| c.record.seq) {
        metrics.committed_through(seq);
    }
    // The page's last detections: only the newest few are copied.
    let newest = detections.len().saturating_sub(RECENT_DETECTIONS);
    metrics
        .health
        .detections_committed(detections[newest..].iter().map(|d| DetectionView {
            pattern: d.pattern.id(),
            action: d.pattern.action(),
            customer: d.customer.to_string(),
            merchant: d.merchant.to_string(),
            y_start_time: d.y_start_time.to_string(),
            detection_time: d.detection_time.to_string(),
        }));
    metrics.commit_done(started.elapsed());
    tracing::debug!(
        chunks = group.len(),
        deltas = deltas.len(),
        detections = detections.len(),
        took_ms = started.elapsed().as_secs_f64() * 1e3,
        "committed"
    );
    Ok(last)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commits_in_order_one_at_a_time_grouping_what_is_ready() {
        let mut schedule = CommitSchedule::new(None, 2);
        schedule.arrived(1, "b").unwrap();
        assert_eq!(schedule.next_group(), None, "0 has not arrived");
        schedule.arrived(0, "a").unwrap();
        schedule.arrived(2, "c").unwrap();
        assert_eq!(schedule.next_group(), Some(vec!["a", "b"]), "at most two");
        assert_eq!(schedule.next_group(), None, "one commit at a time");
        schedule.arrived(3, "d").unwrap();
        schedule.committed(Arc::from("b"));
        assert_eq!(schedule.last.as_deref(), Some("b"));
        assert_eq!(schedule.next_group(), Some(vec!["c", "d"]));
        schedule.committed(Arc::from("d"));
        assert_eq!(schedule.next_group(), None);
    }

    #[test]
    fn a_duplicate_outcome_is_refused() {
        let mut schedule = CommitSchedule::new(Some(Arc::from("x")), 8);
        schedule.arrived(0, "a").unwrap();
        assert_eq!(schedule.arrived(0, "again"), Err("again"));
        assert_eq!(schedule.next_group(), Some(vec!["a"]));
        assert_eq!(schedule.arrived(0, "late"), Err("late"));
    }

    #[test]
    fn the_restart_constructor_commits_after_the_committed_chunk() {
        let committed = Committed {
            generation: 7,
            last_chunk: Some(Arc::from("stream_chunks/chunk-0000000003-x.csv")),
            ..Committed::default()
        };
        let state = TrackerState::restore(&committed, 4);
        assert_eq!(state.generation, 7);
        assert_eq!(state.schedule.last, committed.last_chunk);
        assert_eq!(state.schedule.max_chunks, 4);
    }
}
