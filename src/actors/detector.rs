//! DetectorActor: one pattern over one shard of the merchants.
//!
//! The watcher folds every chunk into the pair table and sends the result
//! ([`Apply`]); the detector updates its in-memory state and answers with the
//! detections that hold for the first time. That state is only a cache of
//! committed state: the watcher opens every epoch with [`Reset`], carrying a
//! snapshot of the database, and an `Apply` from any other epoch, or one that
//! does not follow the chunk applied last, is refused. A panic while applying
//! is contained, answered with an error, and turns into a supervised restart;
//! the restarted actor refuses work until the next `Reset`.

use std::sync::Arc;

use actix::prelude::*;

use super::StageError;
use super::context::{PipelineContext, contain};
use super::supervisor::Lifeline;
use crate::detect::{ChunkUpdate, Detection, Pattern, PatternEngine, Shard, Snapshot, engine_for};

/// Replace all state with a committed snapshot and start epoch `epoch`.
#[derive(Message)]
#[rtype(result = "Result<(), StageError>")]
pub struct Reset {
    pub epoch: u64,
    pub snapshot: Arc<Snapshot>,
    /// The last committed chunk, which the snapshot includes.
    pub last_chunk: Option<Arc<str>>,
}

/// Apply one chunk, which must directly follow `previous`.
#[derive(Message)]
#[rtype(result = "Result<Vec<Detection>, StageError>")]
pub struct Apply {
    pub epoch: u64,
    pub chunk: Arc<str>,
    pub previous: Option<Arc<str>>,
    pub update: Arc<ChunkUpdate>,
}

pub struct DetectorActor {
    lifeline: Lifeline,
    pattern: Pattern,
    shard: Shard,
    engine: Box<dyn PatternEngine>,
    /// `None` until the first `Reset` after (re)start.
    epoch: Option<u64>,
    last_chunk: Option<Arc<str>>,
}

impl DetectorActor {
    pub fn new(pipeline: Arc<PipelineContext>, pattern: Pattern, shard: Shard) -> DetectorActor {
        let name = format!("detector-{}-{}", pattern.id().to_lowercase(), shard.index);
        let engine = engine_for(
            pattern,
            shard,
            pipeline.thresholds,
            pipeline.weights.clone(),
        );
        DetectorActor {
            lifeline: Lifeline::new(name, pipeline),
            pattern,
            shard,
            engine,
            epoch: None,
            last_chunk: None,
        }
    }

    fn fresh_engine(&self) -> Box<dyn PatternEngine> {
        let p = &self.lifeline.pipeline;
        engine_for(self.pattern, self.shard, p.thresholds, p.weights.clone())
    }
}

impl Actor for DetectorActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        self.lifeline.wait_backoff(ctx);
    }
}

impl Supervised for DetectorActor {
    fn restarting(&mut self, _ctx: &mut Context<Self>) {
        self.lifeline.restarting();
        self.epoch = None;
        self.last_chunk = None;
        self.engine = self.fresh_engine();
    }
}

impl Handler<Reset> for DetectorActor {
    type Result = Result<(), StageError>;

    fn handle(&mut self, msg: Reset, ctx: &mut Context<Self>) -> Self::Result {
        let engine = &mut self.engine;
        match contain(|| engine.restore(&msg.snapshot)) {
            Ok(()) => {
                self.epoch = Some(msg.epoch);
                self.last_chunk = msg.last_chunk;
                Ok(())
            }
            Err(reason) => {
                self.lifeline.fail(ctx, reason.clone());
                Err(StageError::crashed(&self.lifeline.name, reason))
            }
        }
    }
}

impl Handler<Apply> for DetectorActor {
    type Result = Result<Vec<Detection>, StageError>;

    fn handle(&mut self, msg: Apply, ctx: &mut Context<Self>) -> Self::Result {
        if self.epoch != Some(msg.epoch) {
            return Err(StageError::Stale(format!(
                "{} is not in epoch {}",
                self.lifeline.name, msg.epoch
            )));
        }
        if self.last_chunk != msg.previous {
            return Err(StageError::Stale(format!(
                "{} expected a chunk after {:?}, got one after {:?}",
                self.lifeline.name, self.last_chunk, msg.previous
            )));
        }
        let faults = &self.lifeline.pipeline.faults;
        let name = &self.lifeline.name;
        let engine = &mut self.engine;
        let outcome = contain(|| {
            faults.hit(name)?;
            let mut detections = Vec::new();
            engine.apply(&msg.update, &mut detections);
            Ok::<_, super::faults::InjectedFault>(detections)
        });
        match outcome {
            Ok(Ok(detections)) => {
                self.last_chunk = Some(msg.chunk);
                Ok(detections)
            }
            Ok(Err(error)) => {
                // The engine may be half way through the chunk: its state
                // is no longer a cache of anything, so start over.
                let reason = error.to_string();
                self.lifeline.fail(ctx, reason.clone());
                Err(StageError::crashed(&self.lifeline.name, reason))
            }
            Err(reason) => {
                self.lifeline.fail(ctx, reason.clone());
                Err(StageError::crashed(&self.lifeline.name, reason))
            }
        }
    }
}
