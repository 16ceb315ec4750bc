//! BatchWriterActor: turns committed detections into files of exactly
//! `batch.size` under `detected_patterns/`.
//!
//! The outbox is the `detected_patterns` table itself: detections without a
//! batch number. Writing a file takes three steps: (1) in one transaction,
//! the oldest `batch.size` outbox detections get the next batch number and
//! the batch gets its object key; (2) the file is PUT under that key;
//! (3) the batch is marked written. After a crash between (1) and (3) the
//! same key is PUT again with the same lines, so every detection lands in
//! exactly one file. A partial batch is only written on graceful shutdown,
//! or after `batch.linger_ms` if that is set.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use actix::prelude::*;
use bytes::Bytes;
use tracing::{debug, info};

use super::context::{PipelineContext, contain_async};
use super::supervisor::Lifeline;
use crate::db::{DbError, DetectionLine};
use crate::layout;
use crate::store::StoreError;

/// How often the outbox is checked even without a doorbell.
const IDLE_CHECK: Duration = Duration::from_millis(500);

pub struct BatchWriterActor {
    lifeline: Lifeline,
}

impl BatchWriterActor {
    pub fn new(pipeline: Arc<PipelineContext>) -> BatchWriterActor {
        BatchWriterActor {
            lifeline: Lifeline::new("batch-writer", pipeline),
        }
    }
}

#[derive(Debug, thiserror::Error)]
enum WriteError {
    #[error("{0}")]
    Store(#[from] StoreError),
    #[error("{0}")]
    Db(#[from] DbError),
    #[error("{0}")]
    Injected(#[from] super::faults::InjectedFault),
}

impl Actor for BatchWriterActor {
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

impl Supervised for BatchWriterActor {
    fn restarting(&mut self, _ctx: &mut Context<Self>) {
        self.lifeline.restarting();
    }
}

async fn run(pipeline: Arc<PipelineContext>) -> Result<(), WriteError> {
    let p = &*pipeline;
    let mut doorbell = p.doorbell.subscribe();
    let linger = Duration::from_millis(p.settings.batch.linger_ms);
    let mut partial_since: Option<Instant> = None;
    loop {
        let final_flush = p.lifecycle.final_flush.is_cancelled();
        let linger_due =
            !linger.is_zero() && partial_since.is_some_and(|at| at.elapsed() >= linger);
        let waiting = flush(p, final_flush || linger_due).await?;
        if final_flush {
            p.progress.flushed.store(true, Ordering::Release);
            info!("detections flushed");
            return Ok(());
        }
        partial_since = match (waiting, partial_since) {
            (0, _) => None,
            (_, Some(at)) => Some(at),
            (_, None) => Some(Instant::now()),
        };
        let wait = if linger.is_zero() {
            IDLE_CHECK
        } else {
            linger.min(IDLE_CHECK)
        };
        tokio::select! {
            changed = doorbell.changed() => {
                if changed.is_err() {
                    return Ok(());
                }
            }
            _ = p.lifecycle.final_flush.cancelled() => {}
            _ = tokio::time::sleep(wait) => {}
        }
    }
}

/// Assigns full batches (and the partial one if asked), writes every
/// batch not yet written, and returns how many detections still wait.
async fn flush(p: &PipelineContext, include_partial: bool) -> Result<u64, WriteError> {
    let size = p.settings.batch.size;
    let stamp = crate::clock::name_stamp(chrono::Utc::now());
    p.db("assign batches", || {
        p.state
            .assign_batches(&p.fence, size, include_partial, &stamp)
    })
    .await?;
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
            p.state.mark_batch_written(&p.fence, batch.batch_no, &at)
        })
        .await?;
        p.progress.batches_written.fetch_add(1, Ordering::Relaxed);
        crate::actors::context::Progress::mark(&p.progress.last_file_at);
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
