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
            let state = state.clone();
            crate::io_runtime::run(async move { state.compact(max_chunks as usize).await })
        })
        .await?;
    debug!(
        chunks = folded,
        took_ms = started.elapsed().as_secs_f64() * 1e3,
        "compacted"
    );
    Ok(folded)
}

async fn run(pipeline: Arc<PipelineContext>) -> Result<(), CompactError> {
    let p = &*pipeline;
    let every = p.settings.database.compact_every as u64;
    let most = p.settings.database.compact_max_pending as u64;
    let mut commits = p.committed.subscribe();
    let mut seen = *commits.borrow_and_update();
    // What an earlier run left behind (commits of this run may already be
    // counted in both, which only brings a compaction forward).
    let mut waiting = p
        .db("count pending deltas", || p.state.pending_delta_count())
        .await?;
    let mut last_commit = Instant::now();
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
        // Idle: no commit for a moment, and no chunk this process wrote is
        // still on its way (in catch-up mode the watcher is busy even when
        // a commit is late).
        let progress = &p.progress;
        let caught_up = Progress::get(&progress.chunks_written)
            <= Progress::get(&progress.chunks_committed) + Progress::get(&progress.chunks_rejected);
        let idle = caught_up && last_commit.elapsed() >= IDLE_AFTER;
        if waiting >= most || (idle && waiting >= every) {
            let slice = if waiting >= most {
                FORCED_SLICE.min(most)
            } else {
                every
            };
            let folded = compact(p, slice).await?;
            waiting = if folded == 0 {
                0
            } else {
                waiting.saturating_sub(folded)
            };
            continue;
        }
        tokio::select! {
            changed = commits.changed() => {
                if changed.is_err() {
                    return Ok(());
                }
                let now = *commits.borrow_and_update();
                waiting += now - seen;
                seen = now;
                last_commit = Instant::now();
            }
            _ = tokio::time::sleep(IDLE_AFTER) => {}
            _ = p.lifecycle.final_compact.cancelled() => {}
        }
    }
}
