//! PairTableActor: folds chunks into the cumulative pair table, in order,
//! and has the detectors evaluate them.
//!
//! It takes [`Parsed`] chunks from the reader, puts them back in
//! announcement order ([`InOrder`]), checks that each follows the chunk it
//! folded last ([`Chain`]), folds its delta into the pair table it owns
//! ([`PairTotals`]: every pair's count, amount and first gender), and sends
//! the resulting [`ChunkUpdate`] to every [`DetectorActor`] as [`Apply`].
//! It does not wait for their answers before folding the next chunk: the
//! requests sit in the detectors' mailboxes in chunk order. Once every
//! detector has answered, the chunk's outcome goes to the
//! [`TrackerActor`] as [`Evaluated`].
//!
//! ```text
//! ReaderActor ──Parsed──► PairTableActor ──Apply──► DetectorActor × n
//!                                │  ◄──detections──┘
//!                                └──Evaluated──► TrackerActor
//! ```
//!
//! A rejected chunk (vanished, too large, unreadable) folds nothing and
//! goes to the tracker at once, still in its place in the order.

use std::sync::Arc;
use std::time::Instant;

use super::watcher::InFlight;
use actix::prelude::*;
use futures::future::{LocalBoxFuture, join_all};
use tracing::warn;

use super::committed::{Committed, Reshare, Start};
use super::detector::{Apply, DetectorActor};
use super::reader::Content;
use super::sequence::{Chain, InOrder};
use super::supervised::{Behaviour, Failure, Group, Mailbox, Supervised};
use super::supervisor::{Resync, SupervisorActor};
use super::tracker::{ChunkOutcome, Evaluated, TrackerActor};
use super::wiring::Wiring;
use crate::db::{ChunkRecord, ChunkStatus};
use crate::detect::{Engine, MerchantId, PairTotals};
use crate::input::transactions::RejectReason;
use crate::layout;

pub type PairTableActor = Supervised<PairTable>;

/// The pair table's wiring.
pub struct PairTable {
    pub wiring: Arc<Wiring>,
    pub detectors: Vec<Mailbox<DetectorActor>>,
    pub tracker: Mailbox<TrackerActor>,
    pub supervisor: Addr<SupervisorActor>,
    /// The worker's main lane, whose table size is the pair-state gauge
    /// (not a cluster worker's catch-up lane, which holds a few groups
    /// for a while).
    pub main_lane: bool,
}

impl PairTable {
    fn report_size(&self, totals: &PairTotals) {
        if self.main_lane {
            self.wiring
                .metrics
                .pair_state_pairs
                .set(totals.len() as i64);
        }
    }
}

/// What the pair table owns in one generation.
pub struct PairTableState {
    generation: u64,
    totals: PairTotals,
    order: InOrder<Parsed>,
    /// Every chunk, in announcement order.
    chain: Chain,
    /// The last chunk the detectors applied (rejected chunks never reach
    /// them): the predecessor named in the next `Apply`.
    applied: Option<Arc<str>>,
}

impl PairTableState {
    /// The restart constructor: the pair table as of the committed chunk.
    pub fn restore(engine: &Engine, committed: &Committed) -> PairTableState {
        PairTableState {
            generation: committed.generation,
            // A cluster worker's engine holds its key groups' weights only,
            // so its table holds their weighted pairs and no others.
            totals: engine.pair_table(&committed.snapshot),
            order: InOrder::new(0),
            chain: Chain::after(committed.last_chunk.clone()),
            applied: committed.last_chunk.clone(),
        }
    }

    /// Goes on in `committed`'s generation with the key groups it gained:
    /// their committed pairs are added (the others' stay as they are), and
    /// chunks follow from its start (the least advanced group's position).
    pub fn continue_with(&mut self, committed: &Committed, gains: &dyn Fn(MerchantId) -> bool) {
        let weights = committed.engine.weights();
        self.totals.merge(weights, gains, &committed.snapshot);
        self.generation = committed.generation;
        self.order = InOrder::new(0);
        self.chain = Chain::after(committed.last_chunk.clone());
        self.applied = committed.last_chunk.clone();
    }
}

impl Behaviour for PairTable {
    type State = PairTableState;
    const GROUP: Group = Group::MechanismY;

    fn pre_start(&self) -> LocalBoxFuture<'static, Result<Option<PairTableState>, Failure>> {
        Box::pin(async { Ok(None) })
    }
}

/// A chunk read and parsed (or rejected) by the reader.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Parsed {
    pub generation: u64,
    pub number: u64,
    pub key: Arc<str>,
    pub previous: Option<Arc<str>>,
    pub listed_at: Instant,
    pub content: Result<Content, RejectReason>,
    pub permit: InFlight,
}

impl Handler<Start> for PairTableActor {
    type Result = ();

    fn handle(&mut self, Start(committed): Start, ctx: &mut Context<Self>) {
        if !committed.supersedes(self.state.as_ref().map(|s| s.generation)) {
            return;
        }
        if let Some(continues) = &committed.continues {
            // Key groups taken over in place: add theirs to the table held.
            let wiring = self.behaviour.wiring.clone();
            let held = self.state.as_mut();
            let Some(state) = held.filter(|s| s.generation == continues.generation) else {
                // Nothing to add them to (this table restarted meanwhile):
                // the generation must load everything.
                let resync = Resync {
                    generation: committed.generation,
                    reason: format!(
                        "the pair table is not in generation {}",
                        continues.generation
                    ),
                };
                let supervisor = self.behaviour.supervisor.clone();
                ctx.spawn(actix::fut::wrap_future(async move {
                    let _ = supervisor.send(resync).await;
                }));
                return;
            };
            let gains = continues.gains(&wiring);
            match super::wiring::contain(|| state.continue_with(&committed, &gains)) {
                Ok(()) => self.behaviour.report_size(&state.totals),
                Err(panic) => self.fail(ctx, Failure::Restart(panic)),
            }
            return;
        }
        match super::wiring::contain(|| PairTableState::restore(&committed.engine, &committed)) {
            Ok(state) => {
                self.behaviour.report_size(&state.totals);
                self.set_state(state);
            }
            Err(panic) => self.fail(ctx, Failure::Restart(panic)),
        }
    }
}

impl Handler<Reshare> for PairTableActor {
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
        match super::wiring::contain(|| state.totals.forget(msg.drops(&wiring))) {
            Ok(()) => self.behaviour.report_size(&state.totals),
            Err(panic) => self.fail(ctx, Failure::Restart(panic)),
        }
    }
}

impl Handler<Parsed> for PairTableActor {
    type Result = ();

    fn handle(&mut self, parsed: Parsed, ctx: &mut Context<Self>) {
        let Some(state) = self.state.as_mut() else {
            return;
        };
        if parsed.generation != state.generation {
            return;
        }
        if state.order.push(parsed.number, parsed).is_err() {
            return;
        }
        while let Some(parsed) = self.state.as_mut().and_then(|s| s.order.pop()) {
            if let Err(failure) = self.evaluate(parsed, ctx) {
                self.fail(ctx, failure);
                return;
            }
        }
    }
}

impl PairTableActor {
    /// Folds one chunk (in order) and sends it to the detectors; the
    /// outcome goes on to the tracker once they answered.
    fn evaluate(&mut self, parsed: Parsed, ctx: &mut Context<Self>) -> Result<(), Failure> {
        let state = self.state.as_mut().expect("checked by the caller");
        let generation = state.generation;
        if let Err(reason) = state
            .chain
            .follow(parsed.previous.as_ref(), parsed.key.clone())
        {
            self.resync(reason, ctx);
            return Ok(());
        }
        let seq = layout::chunk_seq(&parsed.key);
        let tracker = self.behaviour.tracker.clone();
        let Parsed {
            number,
            key,
            listed_at,
            content,
            permit,
            ..
        } = parsed;
        let content = match content {
            Ok(content) => content,
            Err(reason) => {
                warn!(chunk = ?key, %reason, "chunk rejected");
                let outcome = ChunkOutcome {
                    record: ChunkRecord {
                        name: key.to_string(),
                        seq,
                        status: ChunkStatus::Rejected,
                        rows: 0,
                        bad_rows: 0,
                        detections: 0,
                        reason: Some(reason.to_string()),
                    },
                    encoded_delta: None,
                    group_deltas: Vec::new(),
                    detections: Vec::new(),
                    detection_time: String::new(),
                    listed_at,
                    permit,
                };
                let evaluated = Evaluated {
                    generation,
                    number,
                    outcome,
                };
                ctx.spawn(actix::fut::wrap_future(async move {
                    let _ = tracker.send(evaluated).await;
                }));
                return Ok(());
            }
        };
        let update = Arc::new(super::wiring::contain(|| {
            state.totals.fold(&content.chunk.delta)
        })?);
        self.behaviour.report_size(&state.totals);
        let previous = state.applied.replace(key.clone());
        // Queued in every detector's mailbox now, in chunk order.
        let requests: Vec<_> = self
            .behaviour
            .detectors
            .iter()
            .map(|detector| {
                detector.send(Apply {
                    generation,
                    chunk: key.clone(),
                    previous: previous.clone(),
                    update: update.clone(),
                })
            })
            .collect();
        let record = ChunkRecord {
            name: key.to_string(),
            seq,
            status: ChunkStatus::Processed,
            rows: content.chunk.rows,
            bad_rows: content.chunk.bad_rows.len() as u64,
            detections: 0,
            reason: None,
        };
        let (encoded, group_deltas) = (content.encoded, content.groups);
        let work = async move {
            let mut detections = Vec::new();
            for answer in join_all(requests).await {
                match answer {
                    Ok(Ok(found)) => detections.extend(found),
                    Ok(Err(error)) => return Err(error),
                    // The detector is restarting: a new generation follows.
                    Err(_) => return Ok(()),
                }
            }
            let outcome = ChunkOutcome {
                record: ChunkRecord {
                    detections: detections.len() as u64,
                    ..record
                },
                encoded_delta: Some(encoded),
                group_deltas,
                detections,
                detection_time: crate::clock::now_ist(),
                listed_at,
                permit,
            };
            let _ = tracker
                .send(Evaluated {
                    generation,
                    number,
                    outcome,
                })
                .await;
            Ok(())
        };
        ctx.spawn(
            actix::fut::wrap_future::<_, Self>(work).map(move |outcome, act, ctx| {
                if let Err(error) = outcome
                    && act.state.as_ref().map(|s| s.generation) == Some(generation)
                {
                    // A detector that crashed is restarted, and its restart
                    // starts a new generation; any other refusal means the
                    // stages disagree about the last chunk.
                    if let super::StageError::Stale(reason) = error {
                        act.resync(reason, ctx);
                    }
                }
            }),
        );
        Ok(())
    }

    /// The stages disagree on committed state: ask the supervisor for a
    /// new generation, and drop this one's work meanwhile.
    fn resync(&mut self, reason: String, ctx: &mut Context<Self>) {
        let Some(state) = self.state.take() else {
            return;
        };
        let supervisor = self.behaviour.supervisor.clone();
        ctx.spawn(actix::fut::wrap_future(async move {
            let _ = supervisor
                .send(Resync {
                    generation: state.generation,
                    reason,
                })
                .await;
        }));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::detect::{
        Cents, ChunkDelta, CustomerId, Gender, MerchantId, PairDelta, PairState, Snapshot,
        Thresholds, WeightTable,
    };

    #[test]
    fn the_restart_constructor_folds_on_top_of_committed_pairs() {
        let engine = Engine::new(
            Thresholds::SPEC,
            Arc::new(WeightTable::from_entries(std::iter::empty())),
            [1, 1, 1],
        );
        let (merchant, customer) = (MerchantId(1), CustomerId(2));
        let committed = Committed {
            generation: 5,
            last_chunk: Some(Arc::from("c7")),
            snapshot: Snapshot {
                pairs: vec![PairState {
                    merchant,
                    customer,
                    count: 10,
                    amount: Cents(1000),
                    gender: Gender::Male,
                }],
                emitted: Vec::new(),
            },
            ..Committed::default()
        };
        let mut state = PairTableState::restore(&engine, &committed);
        assert_eq!(state.generation, 5);
        assert_eq!(state.applied.as_deref(), Some("c7"));
        assert!(
            state
                .chain
                .follow(Some(&Arc::from("c7")), Arc::from("c8"))
                .is_ok()
        );
        let update = state.totals.fold(&ChunkDelta {
            pairs: vec![PairDelta {
                merchant,
                customer,
                count: 2,
                amount: Cents(300),
                first_gender: Gender::Female,
            }],
        });
        let pair = update.pairs[0];
        assert_eq!((pair.count, pair.amount), (12, Cents(1300)));
        assert_eq!(pair.gender, Gender::Male, "the first gender ever stays");
    }
}
