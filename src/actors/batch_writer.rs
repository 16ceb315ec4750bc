//! BatchWriterActor: turns committed detections into files of exactly
//! `batch.size` under `detected_patterns/`.
//!
//! The outbox is the `detected_patterns` table itself: detections without a
//! batch number. Writing a file takes three steps: (1) in one transaction,
//! the oldest `batch.size` outbox detections get the next batch number and
//! the batch gets its object key; (2) the file is PUT under that key;
//! (3) the batch is marked written. After a crash between (1) and (3) the
//! same key is PUT again with the same lines, so every detection lands in
//! exactly one file. A partial batch is only written on graceful shutdown
//! ([`Flush`] from the supervisor), or after `batch.linger_ms` if that is
//! set.
//!
//! ```text
//! TrackerActor ──ChunksCommitted──► BatchWriterActor ──PUT──► detected_patterns/
//! SupervisorActor ──Flush──►┘   (and a timer every 500 ms)
//! ```
//!
//! Notices that arrive while a flush runs are folded into one more flush
//! after it, so a busy pipeline costs one flush at a time, not one per
//! commit.

use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;
use bytes::Bytes;
use futures::future::LocalBoxFuture;
use tokio::sync::oneshot;
use tracing::{debug, info};

use super::supervised::{Behaviour, Failure, Supervised};
use super::tracker::ChunksCommitted;
use super::wiring::{Wiring, contain_async};
use crate::db::{DbError, DetectionLine, Fence};
use crate::layout;
use crate::store::StoreError;

/// How often the outbox is checked even without a notice.
const IDLE_CHECK: Duration = Duration::from_millis(500);

pub type BatchWriterActor = Supervised<BatchWriter>;

/// The batch writer's wiring.
pub struct BatchWriter {
    pub wiring: Arc<Wiring>,
    /// The lease batches are assigned and marked written under: the
    /// ownership lease of a single process, the chunker's in a cluster.
    pub fence: Fence,
}

/// What the batch writer owns: whether a flush runs, whether another is
/// due after it, and since when a partial batch waits.
#[derive(Default)]
pub struct BatchWriterState {
    flushing: bool,
    again: bool,
    partial_since: Option<Instant>,
    /// Final flush requested: write the partial batch too, then answer.
    finishing: Vec<oneshot::Sender<()>>,
}

impl Behaviour for BatchWriter {
    type State = BatchWriterState;

    fn pre_start(&self) -> LocalBoxFuture<'static, Result<Option<BatchWriterState>, Failure>> {
        // The outbox is in the database: nothing to load.
        Box::pin(async { Ok(Some(BatchWriterState::default())) })
    }

    fn post_start(act: &mut BatchWriterActor, ctx: &mut Context<BatchWriterActor>) {
        ctx.run_interval(IDLE_CHECK, |act, ctx| act.flush(ctx));
        act.flush(ctx);
    }
}

/// Write every detection, the partial batch too; answer when done.
#[derive(Message)]
#[rtype(result = "Result<(), ()>")]
pub struct Flush;

#[derive(Debug, thiserror::Error)]
enum WriteError {
    #[error("{0}")]
    Store(#[from] StoreError),
    #[error("{0}")]
    Db(#[from] DbError),
    #[error("{0}")]
    Injected(#[from] super::faults::InjectedFault),
}

impl Handler<ChunksCommitted> for BatchWriterActor {
    type Result = ();

    fn handle(&mut self, _msg: ChunksCommitted, ctx: &mut Context<Self>) {
        self.flush(ctx);
    }
}

impl Handler<Flush> for BatchWriterActor {
    type Result = ResponseFuture<Result<(), ()>>;

    fn handle(&mut self, _msg: Flush, ctx: &mut Context<Self>) -> Self::Result {
        let (done, answer) = oneshot::channel();
        match self.state.as_mut() {
            Some(state) => state.finishing.push(done),
            None => return Box::pin(async { Err(()) }),
        }
        self.flush(ctx);
        Box::pin(async move { answer.await.map_err(|_| ()) })
    }
}

impl BatchWriterActor {
    /// Starts a flush, or notes that another is due after the one running.
    fn flush(&mut self, ctx: &mut Context<Self>) {
        let Some(state) = self.state.as_mut() else {
            return;
        };
        if state.flushing {
            state.again = true;
            return;
        }
        let linger = Duration::from_millis(self.behaviour.wiring.settings.batch.linger_ms);
        let linger_due =
            !linger.is_zero() && state.partial_since.is_some_and(|at| at.elapsed() >= linger);
        let finishing = std::mem::take(&mut state.finishing);
        let include_partial = linger_due || !finishing.is_empty();
        state.flushing = true;
        state.again = false;
        let (wiring, fence) = (self.behaviour.wiring.clone(), self.behaviour.fence.clone());
        let work = async move { flush(&wiring, &fence, include_partial).await };
        ctx.spawn(actix::fut::wrap_future::<_, Self>(contain_async(work)).map(
            move |outcome, act, ctx| {
                let waiting = match outcome {
                    Ok(Ok(waiting)) => waiting,
                    Ok(Err(error)) => return act.fail(ctx, Failure::Restart(error.to_string())),
                    Err(panic) => return act.fail(ctx, Failure::Restart(panic)),
                };
                let Some(state) = act.state.as_mut() else {
                    return;
                };
                state.flushing = false;
                state.partial_since = match (waiting, state.partial_since) {
                    (0, _) => None,
                    (_, Some(at)) => Some(at),
                    (_, None) => Some(Instant::now()),
                };
                if !finishing.is_empty() {
                    info!("detections flushed");
                }
                for done in finishing {
                    let _ = done.send(());
                }
                if state.again || !state.finishing.is_empty() {
                    act.flush(ctx);
                }
            },
        ));
    }
}

/// Assigns full batches (and the partial one if asked), writes every
/// batch not yet written, and returns how many detections still wait.
async fn flush(p: &Wiring, fence: &Fence, include_partial: bool) -> Result<u64, WriteError> {
    let size = p.settings.batch.size;
    let stamp = crate::clock::name_stamp(chrono::Utc::now());
    match &p.cluster {
        // A cluster numbers only detections of processed chunks (every key
        // group applied them), in a single process's order; the partial
        // batch waits until every chunk is processed.
        Some(cluster) => {
            let include_partial = include_partial
                && p.db("read progress", || p.state.status(0))
                    .await
                    .is_ok_and(|status| status.every_chunk_committed());
            p.db("assign batches", || {
                cluster.assign_cluster_batches(fence, size, include_partial, &stamp)
            })
            .await?;
        }
        None => {
            p.db("assign batches", || {
                p.state.assign_batches(fence, size, include_partial, &stamp)
            })
            .await?;
        }
    }
    let batches = p.db("list batches", || p.state.unwritten_batches()).await?;
    for batch in batches {
        p.faults.hit("batch-writer")?;
        let lines = p
            .db("read batch", || p.state.batch_lines(batch.batch_no))
            .await?;
        let body = Bytes::from(render(&lines));
        crate::pause_points::reached("batch-assigned");
        p.store("write detections", || {
            p.objects.put(&batch.key, body.clone())
        })
        .await?;
        crate::pause_points::reached("batch-put");
        let at = crate::clock::now_ist();
        p.db("mark batch written", || {
            p.state.mark_batch_written(fence, batch.batch_no, &at)
        })
        .await?;
        p.metrics.file_written();
        debug!(key = %batch.key, detections = lines.len(), "detection file written");
    }
    let (waiting, _) = p.db("read outbox", || p.state.outbox()).await?;
    Ok(waiting)
}

/// A detection file: the seeds' header, then one line per detection.
pub fn render(lines: &[DetectionLine]) -> Vec<u8> {
    let mut writer = csv::Writer::from_writer(Vec::new());
    let mut write = || -> csv::Result<()> {
        writer.write_record(layout::DETECTION_HEADER.split(','))?;
        for line in lines {
            writer.write_record([
                &line.y_start_time,
                &line.detection_time,
                &line.pattern_id,
                &line.action_type,
                &line.customer,
                &line.merchant,
            ])?;
        }
        writer.flush()?;
        Ok(())
    };
    write().expect("writing CSV to memory cannot fail");
    writer.into_inner().expect("flushed above")
}
