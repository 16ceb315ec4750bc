//! DetectorActor: one pattern over one shard of the merchants.
//!
//! The pair table sends every chunk's [`ChunkUpdate`] (the pairs the chunk
//! touched, with their cumulative totals) as [`Apply`]; the detector
//! updates the pattern state it owns and answers with the detections that
//! hold for the first time. Its state is built from the generation's
//! committed snapshot ([`DetectorState::restore`]); an `Apply` of another
//! generation, or one that does not follow the chunk applied last, is
//! refused. A panic while applying is contained and turns into a
//! supervised restart, which starts a new generation of Mechanism Y.
//!
//! Actor names are `detector-<pattern>-<shard>`, e.g. `detector-patid1-0`,
//! in logs, restart records and fault injection alike.

use std::sync::Arc;

use actix::prelude::*;
use futures::future::LocalBoxFuture;

use super::StageError;
use super::committed::{Committed, Reshare, Start};
use super::sequence::Chain;
use super::supervised::{Behaviour, Failure, Group, Supervised};
use super::wiring::{Wiring, contain};
use crate::detect::{ChunkUpdate, Detection, Engine, Pattern, PatternEngine, Shard};

pub type DetectorActor = Supervised<Detector>;

/// A detector's wiring: which pattern and shard it evaluates.
pub struct Detector {
    pub wiring: Arc<Wiring>,
    pub pattern: Pattern,
    pub shard: Shard,
}

impl Detector {
    /// The actor's name, as logs and restart records show it.
    pub fn name(pattern: Pattern, shard: Shard) -> String {
        format!("detector-{}-{}", pattern.id().to_lowercase(), shard.index)
    }
}

/// The pattern state a detector owns in one generation.
pub struct DetectorState {
    generation: u64,
    engine: Box<dyn PatternEngine>,
    chain: Chain,
}

impl DetectorState {
    /// The restart constructor: the pattern's state as of the committed
    /// chunk.
    pub fn restore(
        engine: &Engine,
        pattern: Pattern,
        shard: Shard,
        committed: &Committed,
    ) -> DetectorState {
        DetectorState {
            generation: committed.generation,
            engine: engine.detector(pattern, shard, &committed.snapshot),
            chain: Chain::after(committed.last_chunk.clone()),
        }
    }

    /// Goes on in `committed`'s generation with the key groups it gained:
    /// over the lookup table with their weights, their committed state
    /// added, chunks following from the generation's start.
    pub fn continue_with(&mut self, committed: &Committed) {
        self.engine.reweigh(committed.engine.weights());
        self.engine.merge(&committed.snapshot);
        self.generation = committed.generation;
        self.chain = Chain::after(committed.last_chunk.clone());
    }

    /// Applies one chunk that must follow the last one applied.
    pub fn apply(&mut self, msg: &Apply) -> Result<Vec<Detection>, String> {
        self.chain
            .follow(msg.previous.as_ref(), msg.chunk.clone())?;
        let mut detections = Vec::new();
        self.engine.apply(&msg.update, &mut detections);
        Ok(detections)
    }
}

impl Behaviour for Detector {
    type State = DetectorState;
    const GROUP: Group = Group::MechanismY;

    fn pre_start(&self) -> LocalBoxFuture<'static, Result<Option<DetectorState>, Failure>> {
        Box::pin(async { Ok(None) })
    }
}

/// Apply one chunk, which must directly follow `previous`.
#[derive(Message)]
#[rtype(result = "Result<Vec<Detection>, StageError>")]
pub struct Apply {
    pub generation: u64,
    pub chunk: Arc<str>,
    pub previous: Option<Arc<str>>,
    pub update: Arc<ChunkUpdate>,
}

impl Handler<Start> for DetectorActor {
    type Result = ();

    fn handle(&mut self, Start(committed): Start, ctx: &mut Context<Self>) {
        if !committed.supersedes(self.state.as_ref().map(|s| s.generation)) {
            return;
        }
        if let Some(continues) = &committed.continues {
            // Key groups taken over in place: add their state to what this
            // shard holds. A detector not in that generation (it restarted)
            // stays behind; the pair table's next Apply finds it stale and
            // the generation loads everything.
            let Some(state) = self
                .state
                .as_mut()
                .filter(|s| s.generation == continues.generation)
            else {
                return;
            };
            if let Err(panic) = contain(|| state.continue_with(&committed)) {
                self.fail(ctx, Failure::Restart(panic));
            }
            return;
        }
        let b = &self.behaviour;
        let built =
            contain(|| DetectorState::restore(&committed.engine, b.pattern, b.shard, &committed));
        match built {
            Ok(state) => self.set_state(state),
            Err(panic) => self.fail(ctx, Failure::Restart(panic)),
        }
    }
}

impl Handler<Reshare> for DetectorActor {
    type Result = ();

    fn handle(&mut self, msg: Reshare, ctx: &mut Context<Self>) {
        let wiring = self.behaviour.wiring.clone();
        let Some(state) = self
            .state
            .as_mut()
            .filter(|s| s.generation == msg.generation)
        else {
            return;
        };
        let handed_over = contain(|| {
            state.engine.forget(&msg.drops(&wiring));
            state.engine.reweigh(&msg.weights);
        });
        if let Err(panic) = handed_over {
            self.fail(ctx, Failure::Restart(panic));
        }
    }
}

impl Handler<Apply> for DetectorActor {
    type Result = Result<Vec<Detection>, StageError>;

    fn handle(&mut self, msg: Apply, ctx: &mut Context<Self>) -> Self::Result {
        let name = &self.name;
        let Some(state) = self
            .state
            .as_mut()
            .filter(|s| s.generation == msg.generation)
        else {
            return Err(StageError::Stale(format!(
                "{name} is not in generation {}",
                msg.generation
            )));
        };
        let faults = &self.behaviour.wiring.faults;
        let outcome = contain(|| {
            faults.hit(name).map_err(|e| e.to_string())?;
            Ok(state.apply(&msg))
        });
        match outcome {
            Ok(Ok(Ok(detections))) => Ok(detections),
            Ok(Ok(Err(stale))) => Err(StageError::Stale(format!("{name}: {stale}"))),
            // The engine may be half way through the chunk: its state is
            // no longer a view of anything, so start over.
            Ok(Err(reason)) | Err(reason) => {
                let crashed = StageError::crashed(name, reason.clone());
                self.fail(ctx, Failure::Restart(reason));
                Err(crashed)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::detect::{
        Cents, CustomerId, DetectionKey, Gender, MerchantId, PairUpdate, Snapshot, Thresholds,
        WeightTable,
    };

    fn child_update(count: u64) -> ChunkUpdate {
        ChunkUpdate {
            pairs: vec![PairUpdate {
                merchant: MerchantId(1),
                customer: CustomerId(2),
                added: 1,
                count,
                amount: Cents(100 * count as i64),
                gender: Gender::Female,
                weight_slot: crate::detect::NO_WEIGHT,
            }],
        }
    }

    fn apply(state: &mut DetectorState, chunk: &str, previous: Option<&str>, count: u64) -> usize {
        state
            .apply(&Apply {
                generation: 1,
                chunk: Arc::from(chunk),
                previous: previous.map(Arc::from),
                update: Arc::new(child_update(count)),
            })
            .unwrap()
            .len()
    }

    #[test]
    fn the_restart_constructor_starts_from_committed_state() {
        let engine = Engine::new(
            Thresholds::SPEC,
            Arc::new(WeightTable::from_entries(std::iter::empty())),
            [1, 1, 1],
        );
        let key = DetectionKey {
            pattern: Pattern::Child,
            merchant: MerchantId(1),
            customer: Some(CustomerId(2)),
        };
        // Nothing emitted yet: the 80th transaction of an average of 1.00
        // detects CHILD.
        let fresh = Committed {
            generation: 1,
            last_chunk: Some(Arc::from("c1")),
            ..Committed::default()
        };
        let mut state = DetectorState::restore(&engine, Pattern::Child, Shard::ALL, &fresh);
        assert_eq!(apply(&mut state, "c2", Some("c1"), 80), 1);
        // Emitted before the restart: never again.
        let emitted = Committed {
            generation: 1,
            last_chunk: Some(Arc::from("c1")),
            snapshot: Snapshot {
                pairs: Vec::new(),
                emitted: vec![key],
            },
            ..Committed::default()
        };
        let mut state = DetectorState::restore(&engine, Pattern::Child, Shard::ALL, &emitted);
        assert_eq!(apply(&mut state, "c2", Some("c1"), 80), 0);
        // A chunk that does not follow the committed one is refused.
        assert!(
            state
                .apply(&Apply {
                    generation: 1,
                    chunk: Arc::from("c9"),
                    previous: Some(Arc::from("c7")),
                    update: Arc::new(child_update(81)),
                })
                .is_err()
        );
    }
}
