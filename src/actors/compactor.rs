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

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use actix::prelude::*;
use tracing::{debug, info};

use super::context::{PipelineContext, Progress, contain_async};
use super::supervisor::Lifeline;
use crate::db::DbError;

/// Deltas folded per transaction when forced: bounds the memory of a fold
/// (and how long it holds SQLite's single writer).
const FORCED_SLICE: u64 = 256;

/// How long without commits counts as idle.
const IDLE_AFTER: Duration = Duration::from_millis(250);

pub struct CompactorActor {
    lifeline: Lifeline,
}

impl CompactorActor {
    pub fn new(pipeline: Arc<PipelineContext>) -> CompactorActor {
        CompactorActor {
            lifeline: Lifeline::new("compactor", pipeline),
        }
    }
}

#[derive(Debug, thiserror::Error)]
enum CompactError {
    #[error("{0}")]
    Db(#[from] DbError),
    #[error("{0}")]
    Injected(#[from] super::faults::InjectedFault),
}

impl Actor for CompactorActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        self.lifeline.wait_backoff(ctx);
        let pipeline = self.lifeline.pipeline.clone();
        ctx.spawn(
            actix::fut::wrap_future::<_, Self>(contain_async(run(pipeline))).map(
                |outcome, act, ctx| match outcome {
                    Ok(Ok(())) => {}
                    Ok(Err(error)) => act.lifeline.fail(ctx, error.to_string()),
                    Err(panic) => act.lifeline.fail(ctx, panic),
                },
            ),
        );
    }
}

impl Supervised for CompactorActor {
    fn restarting(&mut self, _ctx: &mut Context<Self>) {
        self.lifeline.restarting();
    }
}

async fn compact(p: &PipelineContext, max_chunks: u64) -> Result<u64, CompactError> {
    p.faults.hit("compactor")?;
    let started = Instant::now();
    // Runs on the I/O runtime, so this actor's thread stays free.
    let state = p.state.clone();
    let folded = p
        .db("compact state", || {
            let (state, fence) = (state.clone(), p.fence.clone());
            crate::io_runtime::run(async move { state.compact(&fence, max_chunks as usize).await })
        })
        .await?;
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
    /// Commits seen so far.
    seen: u64,
    last_commit: Instant,
}

impl Schedule {
    /// Takes the number of commits as of `now`. Called before every
    /// decision, so that commits that landed while a compaction ran count:
    /// otherwise the last commit would seem to date from before that
    /// compaction, a busy pipeline would look idle, and the compactions of
    /// a catch-up run would follow one another beside its commits.
    fn observe(&mut self, commits: u64, now: Instant) {
        if commits > self.seen {
            self.waiting += commits - self.seen;
            self.seen = commits;
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

async fn run(pipeline: Arc<PipelineContext>) -> Result<(), CompactError> {
    let p = &*pipeline;
    let every = p.settings.database.compact_every as u64;
    let mut commits = p.committed.subscribe();
    let mut schedule = Schedule {
        every,
        most: p.settings.database.compact_max_pending as u64,
        // What an earlier run left behind.
        waiting: p
            .db("count pending deltas", || p.state.pending_delta_count())
            .await?,
        seen: *commits.borrow_and_update(),
        last_commit: Instant::now(),
    };
    loop {
        if p.lifecycle.final_compact.is_cancelled() {
            // Leaving deltas behind is always safe (the next start reads
            // them and compacts them), so the final fold only takes what
            // fits in its share of the shutdown bound, in small slices so
            // that no single transaction overruns it.
            let budget = Duration::from_millis(p.settings.database.shutdown_compact_ms);
            let stop_at = Instant::now() + budget;
            let mut left_behind = true;
            while Instant::now() < stop_at {
                if compact(p, every).await? == 0 {
                    left_behind = false;
                    break;
                }
            }
            if left_behind {
                info!(
                    budget_ms = budget.as_millis() as u64,
                    "state compaction not finished at shutdown; the next start continues it"
                );
            }
            p.progress.compacted.store(true, Ordering::Release);
            return Ok(());
        }
        schedule.observe(*commits.borrow_and_update(), Instant::now());
        // Caught up: no chunk this process wrote is still on its way (in
        // catch-up mode the watcher is busy even when a commit is late).
        let progress = &p.progress;
        let caught_up = Progress::get(&progress.chunks_written)
            <= Progress::get(&progress.chunks_committed) + Progress::get(&progress.chunks_rejected);
        if let Some(slice) = schedule.due(caught_up, Instant::now()) {
            let folded = compact(p, slice).await?;
            schedule.compacted(folded);
            continue;
        }
        tokio::select! {
            changed = commits.changed() => {
                if changed.is_err() {
                    return Ok(());
                }
            }
            _ = tokio::time::sleep(IDLE_AFTER) => {}
            _ = p.lifecycle.final_compact.cancelled() => {}
        }
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
            seen: 100,
            last_commit: at,
        }
    }

    #[test]
    fn commits_during_a_compaction_postpone_the_next_one() {
        let start = Instant::now();
        let mut schedule = schedule(64, start);
        let quiet = start + IDLE_AFTER;
        schedule.observe(100, quiet);
        assert_eq!(schedule.due(true, quiet), Some(32), "idle with 64 waiting");
        schedule.compacted(32);
        // The compaction took three seconds, and four chunks committed
        // meanwhile: the pipeline is busy, not idle.
        let after = quiet + Duration::from_secs(3);
        schedule.observe(104, after);
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
        schedule.observe(130, later);
        assert_eq!(schedule.waiting, 1030);
        assert_eq!(schedule.due(false, later), Some(FORCED_SLICE));
        schedule.compacted(0);
        assert_eq!(schedule.waiting, 0, "nothing left to fold");
    }
}
