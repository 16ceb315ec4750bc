//! CompactorActor: folds committed state changes into `pair_state`.
//!
//! Commits store each chunk's state change as one blob (`chunk_deltas`),
//! which keeps the per-chunk transaction small. This actor merges the
//! waiting blobs and upserts the result into `pair_state` in one
//! transaction, then deletes them: `database.compact_every` at a time once
//! that many wait and the pipeline is idle (paced mode, between chunks),
//! in larger slices once `database.compact_max_pending` wait whatever
//! happens, and at shutdown as many as fit in
//! `database.shutdown_compact_ms` (the rest waits for the next start).
//! It never changes the cumulative state, only where it is kept, so it can
//! fail or be repeated at any point. On PostgreSQL it runs beside the
//! commits; on SQLite the single writer serializes them.
//!
//! ```text
//! TrackerActor ──ChunksCommitted──► CompactorActor ──fold──► pair_state
//! SupervisorActor ──FinalCompact──►┘   (and a timer every 250 ms)
//! ```

use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;
use futures::future::LocalBoxFuture;
use tracing::{debug, info};

use super::committed::{Reshare, Share, Start};
use super::supervised::{Behaviour, Failure, Supervised};
use super::tracker::ChunksCommitted;
use super::wiring::{Wiring, contain_async};
use crate::db::DbError;

/// Deltas folded per transaction when forced: bounds the memory of a fold
/// (and how long it holds SQLite's single writer).
const FORCED_SLICE: u64 = 256;

/// The first slice of the final fold, before its cost is known.
const FIRST_FINAL_SLICE: u64 = 32;

/// The next slice of the final fold with `remaining` of its budget left,
/// after a slice of `last = (chunks, took)`: as many chunks as the last
/// slice's pace fits in half of what remains (a slice must not overrun the
/// shutdown bound: a large state folds slowly), at most [`FORCED_SLICE`];
/// none when not even one chunk fits.
fn final_slice(remaining: Duration, last: Option<(u64, Duration)>) -> Option<u64> {
    let Some((chunks, took)) = last else {
        return (!remaining.is_zero()).then_some(FIRST_FINAL_SLICE);
    };
    let per_chunk = took.as_secs_f64() / chunks.max(1) as f64;
    let fits = if per_chunk > 0.0 {
        (remaining.as_secs_f64() / 2.0 / per_chunk).floor()
    } else {
        f64::MAX
    };
    (fits >= 1.0).then(|| (fits as u64).min(FORCED_SLICE))
}

/// How long without commits counts as idle.
const IDLE_AFTER: Duration = Duration::from_millis(250);

pub type CompactorActor = Supervised<Compactor>;

/// The compactor's wiring.
pub struct Compactor {
    pub wiring: Arc<Wiring>,
}

/// What the compactor owns: its schedule.
pub struct CompactorState {
    schedule: Schedule,
    compacting: bool,
    /// In a cluster: the key groups this worker owns (from the latest
    /// generation), the only ones it compacts.
    share: Option<(u64, Arc<Share>)>,
}

impl Behaviour for Compactor {
    type State = CompactorState;

    fn pre_start(&self) -> LocalBoxFuture<'static, Result<Option<CompactorState>, Failure>> {
        let w = self.wiring.clone();
        Box::pin(async move {
            // What an earlier run (or life) left behind.
            let waiting = w
                .db("count pending deltas", || w.state.pending_delta_count())
                .await?;
            let settings = &w.settings.database;
            Ok(Some(CompactorState {
                schedule: Schedule::new(
                    settings.compact_every as u64,
                    settings.compact_max_pending as u64,
                    waiting,
                ),
                compacting: false,
                share: None,
            }))
        })
    }

    fn post_start(_act: &mut CompactorActor, ctx: &mut Context<CompactorActor>) {
        ctx.run_interval(IDLE_AFTER, |act, ctx| act.maybe_compact(ctx));
    }
}

/// Fold what waits, within `database.shutdown_compact_ms`; answer when
/// done (the rest waits for the next start).
#[derive(Message)]
#[rtype(result = "Result<(), ()>")]
pub struct FinalCompact;

#[derive(Debug, thiserror::Error)]
enum CompactError {
    #[error("{0}")]
    Db(#[from] DbError),
    #[error("{0}")]
    Injected(#[from] super::faults::InjectedFault),
}

impl Handler<ChunksCommitted> for CompactorActor {
    type Result = ();

    fn handle(&mut self, msg: ChunksCommitted, ctx: &mut Context<Self>) {
        if let Some(state) = self.state.as_mut() {
            state.schedule.observe(msg.chunks, Instant::now());
        }
        self.maybe_compact(ctx);
    }
}

impl Handler<Start> for CompactorActor {
    type Result = ();

    /// A cluster worker's new generation: compact its key groups now.
    fn handle(&mut self, Start(committed): Start, _ctx: &mut Context<Self>) {
        let Some(state) = self.state.as_mut() else {
            return;
        };
        if let Some(share) = &committed.share
            && state
                .share
                .as_ref()
                .is_none_or(|(generation, _)| *generation <= committed.generation)
        {
            state.share = Some((committed.generation, share.clone()));
        }
    }
}

impl Handler<Reshare> for CompactorActor {
    type Result = ();

    /// Key groups handed over are their new owner's to compact.
    fn handle(&mut self, msg: Reshare, _ctx: &mut Context<Self>) {
        if let Some(state) = self.state.as_mut()
            && let Some((generation, share)) = state.share.as_mut()
            && *generation == msg.generation
        {
            *share = Arc::new(share.without(&msg.gone));
        }
    }
}

impl Handler<FinalCompact> for CompactorActor {
    type Result = AtomicResponse<Self, Result<(), ()>>;

    fn handle(&mut self, _msg: FinalCompact, _ctx: &mut Context<Self>) -> Self::Result {
        let wiring = self.behaviour.wiring.clone();
        let share = self.share();
        let work = async move {
            // Leaving deltas behind is always safe (the next start reads
            // them and compacts them), so the final fold only takes what
            // fits in its share of the shutdown bound, in slices of bounded
            // memory so that no single transaction overruns it. A pair
            // touched by several chunks is written once per slice, so the
            // slices are as large as that bound allows.
            let budget = Duration::from_millis(wiring.settings.database.shutdown_compact_ms);
            let stop_at = Instant::now() + budget;
            let mut last = None;
            while let Some(slice) =
                final_slice(stop_at.saturating_duration_since(Instant::now()), last)
            {
                let started = Instant::now();
                let folded = compact(&wiring, share.as_deref(), slice).await?;
                if folded == 0 {
                    return Ok(());
                }
                last = Some((folded, started.elapsed()));
            }
            info!(
                budget_ms = budget.as_millis() as u64,
                "state compaction not finished at shutdown; the next start continues it"
            );
            Ok::<_, CompactError>(())
        };
        AtomicResponse::new(Box::pin(
            actix::fut::wrap_future::<_, Self>(contain_async(work)).map(|outcome, act, ctx| {
                match outcome {
                    Ok(Ok(())) => Ok(()),
                    Ok(Err(error)) => {
                        act.fail(ctx, Failure::Restart(error.to_string()));
                        Err(())
                    }
                    Err(panic) => {
                        act.fail(ctx, Failure::Restart(panic));
                        Err(())
                    }
                }
            }),
        ))
    }
}

impl CompactorActor {
    /// Compacts a slice if one is due and none is running.
    /// The key groups to compact, in a cluster.
    fn share(&self) -> Option<Arc<Share>> {
        self.state
            .as_ref()
            .and_then(|s| s.share.as_ref())
            .map(|(_, share)| share.clone())
    }

    fn maybe_compact(&mut self, ctx: &mut Context<Self>) {
        let wiring = self.behaviour.wiring.clone();
        let share = self.share();
        let Some(state) = self.state.as_mut() else {
            return;
        };
        // Caught up: no chunk this process wrote is still on its way (in
        // catch-up mode the watcher is busy even when a commit is late).
        let caught_up = wiring.metrics.chunks_on_their_way() == 0;
        if state.compacting {
            return;
        }
        let Some(slice) = state.schedule.due(caught_up, Instant::now()) else {
            return;
        };
        state.compacting = true;
        ctx.wait(
            actix::fut::wrap_future::<_, Self>(contain_async(async move {
                compact(&wiring, share.as_deref(), slice).await
            }))
            .map(|outcome, act, ctx| match outcome {
                Ok(Ok(folded)) => {
                    if let Some(state) = act.state.as_mut() {
                        state.compacting = false;
                        state.schedule.compacted(folded);
                    }
                }
                Ok(Err(error)) => act.fail(ctx, Failure::Restart(error.to_string())),
                Err(panic) => act.fail(ctx, Failure::Restart(panic)),
            }),
        );
    }
}

/// Folds up to `max_chunks` chunks' deltas; in a cluster, those of the
/// worker's key groups (a chunk has a delta per group it touched).
async fn compact(p: &Wiring, share: Option<&Share>, max_chunks: u64) -> Result<u64, CompactError> {
    p.faults.hit("compactor")?;
    let started = Instant::now();
    let folded = match (share, &p.cluster) {
        (Some(share), Some(cluster)) => {
            let fences = share.fences();
            let deltas = (max_chunks as usize).saturating_mul(fences.len().max(1));
            let folded = p
                .db("compact key groups", || {
                    cluster.compact_groups(&share.owner_id, &fences, deltas)
                })
                .await;
            match folded {
                // Chunks, as the schedule counts them.
                Ok(folded) => folded.div_ceil(fences.len().max(1) as u64),
                // Groups that moved are their new owner's to compact; the
                // next generation brings this worker's new share.
                Err(DbError::GroupsLost(reason)) => {
                    debug!(%reason, "compaction skipped: key groups moved");
                    0
                }
                Err(error) => return Err(error.into()),
            }
        }
        // A cluster worker before its first generation: nothing is its own.
        (None, Some(_)) => 0,
        _ => {
            // Runs on the I/O runtime, so this actor's thread stays free.
            let state = p.state.clone();
            p.db("compact state", || {
                let (state, fence) = (state.clone(), p.fence.clone());
                crate::io_runtime::run(
                    async move { state.compact(&fence, max_chunks as usize).await },
                )
            })
            .await?
        }
    };
    debug!(
        chunks = folded,
        took_ms = started.elapsed().as_secs_f64() * 1e3,
        "compacted"
    );
    Ok(folded)
}

/// When to compact, from what the compactor sees: how many commits there
/// have been and whether the pipeline has caught up.
struct Schedule {
    every: u64,
    most: u64,
    /// Deltas waiting to be folded (an estimate: commits of this run may be
    /// counted twice at start, which only brings a compaction forward).
    waiting: u64,
    last_commit: Instant,
}

impl Schedule {
    fn new(every: u64, most: u64, waiting: u64) -> Schedule {
        Schedule {
            every,
            most,
            waiting,
            last_commit: Instant::now(),
        }
    }

    /// Takes `chunks` committed at `now`. Commits that land while a
    /// compaction runs count too (their notices wait in the mailbox):
    /// otherwise the last commit would seem to date from before that
    /// compaction, a busy pipeline would look idle, and the compactions of
    /// a catch-up run would follow one another beside its commits.
    fn observe(&mut self, chunks: u64, now: Instant) {
        if chunks > 0 {
            self.waiting += chunks;
            self.last_commit = now;
        }
    }

    /// How many deltas to fold now, if any: `most` forces a slice whatever
    /// happens; otherwise `every` once the pipeline is idle (caught up, and
    /// no commit for [`IDLE_AFTER`]).
    fn due(&self, caught_up: bool, now: Instant) -> Option<u64> {
        let idle = caught_up && now.duration_since(self.last_commit) >= IDLE_AFTER;
        if self.waiting >= self.most {
            Some(FORCED_SLICE.min(self.most))
        } else if idle && self.waiting >= self.every {
            Some(self.every)
        } else {
            None
        }
    }

    fn compacted(&mut self, folded: u64) {
        self.waiting = if folded == 0 {
            0
        } else {
            self.waiting.saturating_sub(folded)
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn schedule(waiting: u64, at: Instant) -> Schedule {
        Schedule {
            every: 32,
            most: 1024,
            waiting,
            last_commit: at,
        }
    }

    #[test]
    fn final_slices_follow_the_pace_of_the_last_one_within_the_budget() {
        let ms = Duration::from_millis;
        assert_eq!(final_slice(ms(15_000), None), Some(FIRST_FINAL_SLICE));
        assert_eq!(final_slice(Duration::ZERO, None), None);
        // Fast folds take the largest slices.
        assert_eq!(
            final_slice(ms(15_000), Some((32, ms(100)))),
            Some(FORCED_SLICE)
        );
        // 40 ms a chunk with 4 s left: half of it fits 50 chunks.
        assert_eq!(final_slice(ms(4_000), Some((32, ms(1_280)))), Some(50));
        // Not even one chunk fits in half of what is left.
        assert_eq!(final_slice(ms(50), Some((32, ms(1_280)))), None);
    }

    #[test]
    fn commits_during_a_compaction_postpone_the_next_one() {
        let start = Instant::now();
        let mut schedule = schedule(64, start);
        let quiet = start + IDLE_AFTER;
        schedule.observe(0, quiet);
        assert_eq!(schedule.due(true, quiet), Some(32), "idle with 64 waiting");
        schedule.compacted(32);
        // The compaction took three seconds, and four chunks committed
        // meanwhile: the pipeline is busy, not idle.
        let after = quiet + Duration::from_secs(3);
        schedule.observe(4, after);
        assert_eq!(schedule.waiting, 36);
        assert_eq!(schedule.due(true, after), None);
        assert_eq!(schedule.due(true, after + IDLE_AFTER), Some(32));
    }

    #[test]
    fn busy_pipelines_compact_only_when_too_much_waits() {
        let start = Instant::now();
        let mut schedule = schedule(1000, start);
        let later = start + Duration::from_secs(10);
        assert_eq!(schedule.due(false, later), None, "not caught up");
        schedule.observe(30, later);
        assert_eq!(schedule.waiting, 1030);
        assert_eq!(schedule.due(false, later), Some(FORCED_SLICE));
        schedule.compacted(0);
        assert_eq!(schedule.waiting, 0, "nothing left to fold");
    }
}
