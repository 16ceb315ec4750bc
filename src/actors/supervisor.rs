//! SupervisorActor: starts the topology, starts Mechanism Y over from
//! committed state when one of its stages restarted, keeps the ownership
//! lease, notices when a catch-up run is done, and shuts everything down
//! in order.
//!
//! What it does, message by message:
//!
//! - [`Restarted`] (from any stage, after its backoff): for a member of
//!   Mechanism Y, a new generation — one [`Committed`] snapshot read from
//!   the database and sent to every member with [`Start`].
//! - [`Resync`] (a stage found the others out of step, e.g. a commit on
//!   top of a chunk the database does not have last): a new generation too,
//!   after a backoff; too many in a row stop the process.
//! - [`MasterChunked`] (from the chunker): in catch-up mode, asks the
//!   watcher to say when it is idle ([`WhenIdle`]) until the database has
//!   every chunk committed, then shuts down.
//! - A cluster heartbeat that lets key groups go or takes some: changes
//!   the share in place ([`resharing`]); one that loses groups starts a
//!   new generation.
//! - A signal: shuts down.
//!
//! Shutdown is a sequence of messages, each answered when done: [`Stop`]
//! to the chunker and [`Drain`] to the watcher (no new chunks; every
//! announced chunk committed), then [`Flush`] to the batch writer and
//! [`FinalCompact`] to the compactor, all within
//! `supervisor.shutdown_timeout_ms`.

mod resharing;
mod topology;

use resharing::CatchUp;
use topology::{CATCH_UP, Topology};

use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use tracing::{debug, error, info, warn};

use super::batch_writer::{BatchWriterActor, Flush};
use super::chunker::{ChunkerActor, Stop};
use super::committed::{Committed, Gained};
use super::compactor::{CompactorActor, FinalCompact};
use super::membership::{Beat, Rebalanced, rebalance};
pub use super::supervised::{
    EXIT_FATAL, EXIT_LOST_LEASE, EXIT_RESTART_LIMIT, EXIT_SHUTDOWN_TIMEOUT, EXIT_STANDBY_REFUSED,
};
use super::supervised::{Group, Mailbox, Restarted};
use super::tracker::Quiesce;
use super::watcher::{Drain, S3WatcherActor, WhenIdle};
use super::wiring::Wiring;
use crate::db::postgres::cluster::ranges;
use crate::db::{Claimant, Fence, Renewal};
use crate::detect::{Engine, WeightTable};
use crate::layout::chunk_seq;
use crate::metrics::Phase;
use crate::signals::Signals;
use std::collections::BTreeMap;

/// When the supervisor ends the run on its own.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RunMode {
    /// Until SIGINT/SIGTERM.
    Forever,
    /// Until the master file is chunked and everything is processed and
    /// written.
    UntilDone,
}

/// The chunker reached the end of the master file.
#[derive(Message)]
#[rtype(result = "()")]
pub struct MasterChunked;

/// The stages of `generation` disagree about committed state.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Resync {
    pub generation: u64,
    pub reason: String,
}

/// Logs the key groups a heartbeat found taken by another worker (at a
/// graceful stop too: a worker cut off until the others finished learns it
/// only then).
fn say_lost(lost: &[u32]) {
    if !lost.is_empty() {
        warn!(
            key_groups = %ranges(lost),
            "lost key groups to another worker (this one was paused or cut off past its \
             leases): it commits nothing more for them"
        );
    }
}

/// Stores a newly read lookup table in the database (if there is one to
/// store), then gives the detection engine over it.
pub type LookupLoad = futures::future::LocalBoxFuture<'static, anyhow::Result<Engine>>;

/// Starts the topology, watches it, and shuts it down.
pub struct SupervisorActor {
    wiring: Arc<Wiring>,
    signals: Signals,
    mode: RunMode,
    topology: Option<Topology>,
    /// Stores the lookup table while the chunker starts; Mechanism Y starts
    /// once it is stored (no commit without its lookup table).
    lookup: Option<LookupLoad>,
    engine: Option<Engine>,
    /// Mechanism Y's current generation.
    generation: u64,
    /// Resyncs since the last generation that committed anything.
    resyncs: u32,
    stopping: bool,
    /// A cluster worker's membership (`None`: a single process).
    cluster: Option<Membership>,
}

/// Reads committed state until it succeeds (the database may be away for
/// a while, and Mechanism Y has nothing to do without it): a single
/// process's, or a cluster worker's `share` (owner id, groups held), or
/// only the groups it `gained`.
async fn read_committed(
    wiring: &Wiring,
    generation: u64,
    engine: &Engine,
    share: Option<(&str, &BTreeMap<u32, u64>)>,
    gained: Option<Gained<'_>>,
) -> Arc<Committed> {
    loop {
        let read = match share {
            Some((owner, held)) => {
                Committed::load_share(wiring, generation, engine.clone(), owner, held, gained).await
            }
            None => Committed::load(wiring, generation, engine.clone()).await,
        };
        match read {
            Ok(committed) => return Arc::new(committed),
            Err(error) => {
                warn!(%error, "could not read committed state; trying again");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    }
}

/// What a cluster worker's supervisor holds of the cluster (see
/// [`super::membership`]).
struct Membership {
    me: Claimant,
    /// Key groups held, with their lease epochs: what the next generation
    /// applies.
    held: BTreeMap<u32, u64>,
    /// The chunker lease, while this worker runs the chunker.
    chunker: Option<Fence>,
    /// A heartbeat is under way.
    beating: bool,
    /// Key groups are being handed over or taken over in place
    /// ([`SupervisorActor::hand_over`], [`SupervisorActor::take_over`]):
    /// heartbeats go on renewing, but neither take nor let go meanwhile.
    resharing: bool,
    /// Start a generation after the heartbeat under way, changed or not.
    regenerate: bool,
    /// Catch-up mode: waiting for the end has begun.
    finishing: bool,
    /// Heartbeats started (the first takes no key group).
    beats: u64,
    /// A catch-up lane under way ([`SupervisorActor::start_lane`]).
    catch_up: Option<CatchUp>,
    /// Catch-up lanes started (their generations are numbered apart).
    lanes: u64,
    /// The lookup table of the key groups a generation applies, with that
    /// generation: a hand-over in place narrows it, and only the
    /// generation it belongs to.
    weights: (u64, Arc<WeightTable>),
}

impl SupervisorActor {
    pub fn new(
        wiring: Arc<Wiring>,
        signals: Signals,
        mode: RunMode,
        lookup: LookupLoad,
    ) -> SupervisorActor {
        SupervisorActor {
            wiring,
            signals,
            mode,
            topology: None,
            lookup: Some(lookup),
            engine: None,
            generation: 0,
            resyncs: 0,
            stopping: false,
            cluster: None,
        }
    }

    /// Makes this process a worker of a cluster (`cluster.enabled`), known
    /// to the others as `me`.
    pub fn in_cluster(mut self, me: Claimant) -> SupervisorActor {
        self.cluster = Some(Membership {
            me,
            held: BTreeMap::new(),
            chunker: None,
            beating: false,
            resharing: false,
            regenerate: false,
            finishing: false,
            beats: 0,
            weights: (0, Arc::default()),
            catch_up: None,
            lanes: 0,
        });
        self
    }

    /// One membership heartbeat (renew, rebalance, chunker lease); with
    /// `regenerate`, a new generation follows even if nothing changed.
    fn heartbeat(&mut self, ctx: &mut Context<Self>, regenerate: bool) {
        let Some(m) = self.cluster.as_mut() else {
            return;
        };
        m.regenerate |= regenerate;
        if m.beating || self.stopping {
            return;
        }
        m.beating = true;
        let (wiring, me, held, chunker) = (
            self.wiring.clone(),
            m.me.clone(),
            m.held.clone(),
            m.chunker.clone(),
        );
        let beat = Beat {
            stopping: false,
            may_take: m.beats > 0 && !m.resharing,
            // A running generation hands groups over in place; one that
            // is about to start simply loads fewer.
            defer_release: self.generation > 0 && !m.regenerate,
        };
        m.beats += 1;
        let beat = async move { rebalance(&wiring, &me, &held, chunker.as_ref(), beat).await };
        ctx.spawn(
            actix::fut::wrap_future::<_, Self>(beat)
                .map(|outcome, act, ctx| act.rebalanced(outcome, ctx)),
        );
    }

    fn rebalanced(&mut self, outcome: crate::db::DbResult<Rebalanced>, ctx: &mut Context<Self>) {
        let Some(m) = self.cluster.as_mut() else {
            return;
        };
        m.beating = false;
        if self.stopping {
            return;
        }
        let mut r = match outcome {
            Ok(r) => r,
            Err(error) => {
                warn!(%error, "cluster heartbeat failed; trying again");
                return;
            }
        };
        if m.resharing {
            // Still leased and held: the next heartbeat after the hand-over
            // under way looks at the share again.
            r.held.extend(r.to_release.drain(..));
        }
        say_lost(&r.lost);
        if !r.released.is_empty() {
            let mut released = r.released.clone();
            released.sort_unstable();
            info!(
                key_groups = %ranges(&released),
                held = r.held.len(),
                "key groups released to other workers"
            );
        }
        if !r.taken.is_empty() {
            let mut taken = r.taken.clone();
            taken.sort_unstable();
            info!(key_groups = %ranges(&taken), held = r.held.len(), "key groups taken");
        }
        let changed = r.held != m.held;
        m.held = r.held;
        let metrics = &self.wiring.metrics;
        metrics.key_groups_held.set(m.held.len() as i64);
        // Groups only handed over, or only taken while a generation runs
        // over a loaded share, need no new generation.
        let handing_over = r.lost.is_empty() && r.taken.is_empty() && !r.to_release.is_empty();
        let taking_over = r.lost.is_empty()
            && !r.taken.is_empty()
            && r.to_release.is_empty()
            && self.generation > 0
            && m.weights.0 == self.generation;
        let regenerate =
            std::mem::take(&mut m.regenerate) || (changed && !handing_over && !taking_over);
        let new_leader = m.chunker.is_none() && r.chunker.is_some();
        m.chunker = r.chunker;
        let finish = r.chunker_finished && self.mode == RunMode::UntilDone && !m.finishing;
        m.finishing |= finish;
        let owner = format!("{}/{} ({} key groups)", m.me.host, m.me.pid, m.held.len());
        self.wiring.metrics.health.set_owner(owner);
        if let Some(why) = r.chunker_lost {
            self.wiring.supervision.lost_lease(&why);
            return;
        }
        if !r.to_release.is_empty() {
            self.hand_over(ctx, r.to_release, regenerate);
        }
        if new_leader
            && let (Some(fence), Some(topology)) = (
                self.cluster.as_ref().and_then(|m| m.chunker.clone()),
                self.topology.as_mut(),
            )
        {
            topology.start_leader(&self.wiring, ctx.address(), fence);
        }
        if regenerate {
            self.new_generation(ctx, Duration::ZERO);
        } else if taking_over {
            self.take_over(ctx, r.taken.into_iter().collect());
        } else {
            self.watch_lane(ctx);
        }
        if finish {
            self.finish_when_done(ctx);
        }
    }

    /// A cluster generation's state is loaded: its weights are the ones a
    /// hand-over narrows; returns the start of its stages.
    fn generation_loaded(
        &mut self,
        committed: Arc<Committed>,
    ) -> Option<impl Future<Output = ()> + use<>> {
        if let Some(m) = self.cluster.as_mut() {
            m.weights = (committed.generation, committed.engine.weights().clone());
            let pairs = committed.engine.weights().len() as i64;
            self.wiring.metrics.lookup_pairs.set(pairs);
        }
        self.topology
            .as_ref()
            .map(|t| t.start_mechanism_y(committed))
    }

    /// Starts a new generation of Mechanism Y after `delay`.
    fn new_generation(&mut self, ctx: &mut Context<Self>, delay: Duration) {
        // Before the lookup table is loaded, nothing of Mechanism Y runs:
        // the first generation starts when it is.
        let Some(engine) = self.engine.clone() else {
            return;
        };
        if self.stopping {
            return;
        }
        self.generation += 1;
        let generation = self.generation;
        let wiring = self.wiring.clone();
        let tracker = self.topology.as_ref().map(|t| t.y.tracker.clone());
        // Its groups are in the share loaded now.
        let lane = self.abandon_lane();
        let share = self
            .cluster
            .as_ref()
            .map(|m| (m.me.owner_id.clone(), m.held.clone()));
        if let Some((_, held)) = &share {
            info!(
                generation,
                key_groups = held.len(),
                "Mechanism Y loads the committed state of its key groups"
            );
        }
        let load = async move {
            // No commit of the old generation (or of a catch-up lane) may
            // land while the snapshot is read (the snapshot check would only
            // retry).
            if let Some(lane) = lane {
                lane.await;
            }
            if let Some(tracker) = tracker {
                let _ = tracker.send(Quiesce).await;
            }
            tokio::time::sleep(delay).await;
            let share = share.as_ref().map(|(owner, held)| (owner.as_str(), held));
            let committed = read_committed(&wiring, generation, &engine, share, None).await;
            if let Some(seq) = committed.last_chunk.as_deref().and_then(chunk_seq) {
                wiring.metrics.committed_through(seq);
            }
            committed
        };
        ctx.spawn(
            actix::fut::wrap_future::<_, Self>(load).then(move |committed, act, _ctx| {
                let current = act.generation == generation && !act.stopping;
                let start = current.then(|| act.generation_loaded(committed)).flatten();
                actix::fut::wrap_future(async move {
                    if let Some(start) = start {
                        start.await;
                    }
                })
            }),
        );
    }

    fn begin_shutdown(&mut self, ctx: &mut Context<Self>, why: &'static str) {
        if self.stopping {
            return;
        }
        self.stopping = true;
        self.wiring.metrics.health.set_phase(Phase::Stopping);
        info!(
            reason = why,
            "shutting down: draining in-flight chunks and flushing detections"
        );
        // A catch-up lane stops where it is: its groups are released with
        // the others, at the positions it committed.
        let lane = self.abandon_lane();
        let Some(topology) = self.topology.as_ref() else {
            System::current().stop();
            return;
        };
        let drain = drain(
            topology.chunker.clone(),
            topology.y.watcher.clone(),
            topology.batch_writer.clone(),
            topology.compactor.clone(),
        );
        let wiring = self.wiring.clone();
        let timeout = Duration::from_millis(wiring.settings.supervisor.shutdown_timeout_ms);
        // A cluster worker lets its key groups and the chunker lease go
        // once its last commit is in: the others take them at once.
        let leave = self
            .cluster
            .as_ref()
            .map(|m| (m.me.clone(), m.held.clone(), m.chunker.clone()));
        let release = {
            let wiring = wiring.clone();
            async move {
                if let Some((me, held, chunker)) = leave {
                    let beat = Beat {
                        stopping: true,
                        ..Beat::default()
                    };
                    match rebalance(&wiring, &me, &held, chunker.as_ref(), beat).await {
                        Ok(left) => {
                            say_lost(&left.lost);
                            info!(key_groups = left.released.len(), "key groups released")
                        }
                        Err(error) => {
                            warn!(%error, "could not release the key groups; they expire by themselves")
                        }
                    }
                }
            }
        };
        let drain = async move {
            if let Some(lane) = lane {
                lane.await;
            }
            drain.await;
            release.await;
        };
        ctx.spawn(actix::fut::wrap_future(async move {
            let code = match tokio::time::timeout(timeout, drain).await {
                Ok(()) => 0,
                Err(_) => {
                    error!("shutdown timed out draining chunks, writing detection files or compacting state");
                    EXIT_SHUTDOWN_TIMEOUT
                }
            };
            record_restarts(&wiring).await;
            if code == 0 {
                info!("shutdown complete");
            }
            System::current().stop_with_code(code);
        }));
    }

    /// Catch-up mode: once the master file is chunked, waits for two idle
    /// listings and every chunk committed, then shuts down.
    fn finish_when_done(&mut self, ctx: &mut Context<Self>) {
        let Some(watcher) = self.topology.as_ref().map(|t| t.y.watcher.clone()) else {
            return;
        };
        let wiring = self.wiring.clone();
        ctx.spawn(
            actix::fut::wrap_future::<_, Self>(async move {
                loop {
                    let announced = match watcher.send(WhenIdle).await {
                        Ok(Ok(announced)) => announced,
                        // Mechanism Y started over: ask the new generation.
                        _ => {
                            tokio::time::sleep(Duration::from_millis(50)).await;
                            continue;
                        }
                    };
                    // Idle means done only if what the watcher announced
                    // last is what the database committed last (a
                    // generation that just failed is idle too).
                    match wiring.state.last_chunk().await {
                        Ok(last) if last.as_deref() == announced.as_deref() => {}
                        Ok(_) => {
                            tokio::time::sleep(Duration::from_millis(10)).await;
                            continue;
                        }
                        Err(error) => {
                            warn!(%error, "could not read progress; trying again");
                            continue;
                        }
                    }
                    match wiring.state.status(0).await {
                        Ok(status) if status.every_chunk_committed() => return,
                        Ok(status) => debug!(
                            produced = status.chunks_produced,
                            last_seq = ?status.last_seq,
                            "waiting for the chunker's last chunks to commit"
                        ),
                        Err(error) => warn!(%error, "could not read progress; trying again"),
                    }
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            })
            .map(|(), act, ctx| act.begin_shutdown(ctx, "all input processed")),
        );
    }
}

impl Actor for SupervisorActor {
    type Context = Context<Self>;

    fn stopped(&mut self, _ctx: &mut Context<Self>) {
        self.wiring.metrics.health.supervisor_stopped();
    }

    fn started(&mut self, ctx: &mut Context<Self>) {
        let topology = Topology::start(&self.wiring, ctx.address());
        info!(
            storage = %self.wiring.objects.describe(),
            detectors = topology.y.detectors.len(),
            "pipeline started"
        );
        self.topology = Some(topology);
        if let Some(lookup) = self.lookup.take() {
            ctx.spawn(
                actix::fut::wrap_future::<_, Self>(lookup).map(|loaded, act, ctx| match loaded {
                    Ok(engine) => {
                        act.wiring.metrics.detection_ready();
                        act.engine = Some(engine);
                        if act.cluster.is_some() {
                            // Take a share of the key groups first.
                            act.heartbeat(ctx, true);
                        } else {
                            act.new_generation(ctx, Duration::ZERO);
                        }
                    }
                    Err(error) => act
                        .wiring
                        .supervision
                        .fatal("lookup", format!("loading the lookup table: {error:#}")),
                }),
            );
        }
        ctx.run_interval(Duration::from_secs(1), |act, ctx| {
            if act.stopping {
                return;
            }
            if let Some(dead) = act
                .topology
                .as_ref()
                .and_then(|t| t.dead_stage(&act.wiring))
            {
                act.wiring
                    .supervision
                    .fatal(&dead, "actor stopped and cannot be restarted".to_string());
            }
            let wiring = act.wiring.clone();
            ctx.spawn(actix::fut::wrap_future(async move {
                record_restarts(&wiring).await
            }));
        });
        let signals = self.signals.clone();
        ctx.spawn(
            actix::fut::wrap_future(async move { signals.received().await }).map(
                |signal, act: &mut Self, ctx| {
                    if act.engine.is_none() {
                        info!(signal, "received signal during start-up; stopping");
                    } else {
                        info!(signal, "received signal");
                    }
                    act.begin_shutdown(ctx, "signal")
                },
            ),
        );
        ctx.spawn(actix::fut::wrap_future(keep_lease(self.wiring.clone())));
        if self.cluster.is_some() {
            let beat = Duration::from_millis(self.wiring.settings.cluster.heartbeat_ms);
            ctx.run_interval(beat, |act, ctx| {
                if act.engine.is_some() {
                    act.heartbeat(ctx, false);
                }
            });
        }
    }
}

impl Handler<Restarted> for SupervisorActor {
    type Result = ();

    fn handle(&mut self, msg: Restarted, ctx: &mut Context<Self>) {
        // A cluster worker's compactor learns its key groups from a
        // generation: it restarted without them.
        let compactor = self.cluster.is_some() && msg.actor == "compactor";
        if msg.actor.starts_with(CATCH_UP) {
            // Its stage restarted empty: the lane is given up, and a
            // generation loads its groups with the rest.
            warn!(actor = %msg.actor, "the catch-up lane failed; loading the whole share");
            self.new_generation(ctx, Duration::ZERO);
        } else if msg.group == Group::MechanismY || compactor {
            info!(
                actor = %msg.actor,
                "Mechanism Y starts over from committed state"
            );
            self.new_generation(ctx, Duration::ZERO);
        }
    }
}

impl Handler<Resync> for SupervisorActor {
    type Result = ();

    fn handle(&mut self, msg: Resync, ctx: &mut Context<Self>) {
        if self.is_lane(msg.generation) {
            warn!(reason = %msg.reason, "the catch-up lane failed; loading the whole share");
            self.heartbeat(ctx, true);
            return;
        }
        if msg.generation != self.generation {
            return; // that generation is already over
        }
        self.resyncs += 1;
        let policy = self.wiring.supervision.policy();
        if self.resyncs > policy.max_restarts.max(1) * 4 {
            self.wiring.supervision.stop_with(
                format!("Mechanism Y cannot get past: {}", msg.reason),
                EXIT_RESTART_LIMIT,
            );
            return;
        }
        let delay = self.wiring.supervision.backoff(self.resyncs);
        warn!(reason = %msg.reason, retry_in_ms = delay.as_millis() as u64,
              "Mechanism Y starts over from committed state");
        if self.cluster.is_some() {
            // Perhaps key groups were lost: learn which before loading.
            self.heartbeat(ctx, true);
        } else {
            self.new_generation(ctx, delay);
        }
    }
}

impl Handler<MasterChunked> for SupervisorActor {
    type Result = ();

    fn handle(&mut self, _msg: MasterChunked, ctx: &mut Context<Self>) {
        if self.mode == RunMode::UntilDone {
            if let Some(m) = self.cluster.as_mut()
                && std::mem::replace(&mut m.finishing, true)
            {
                return;
            }
            self.finish_when_done(ctx);
        }
    }
}

/// Renews the ownership lease every heartbeat. If the database says another
/// process took it over, the whole process stops at once; if the database
/// cannot be reached, it keeps trying (the fence, not the clock, keeps a
/// late writer out).
async fn keep_lease(wiring: Arc<Wiring>) {
    // A cluster worker's registration lives by the cluster's timing.
    let (ttl_ms, beat_ms) = match wiring.cluster {
        Some(_) => (
            wiring.settings.cluster.lease_ttl_ms,
            wiring.settings.cluster.heartbeat_ms,
        ),
        None => (
            wiring.settings.ownership.lease_ttl_ms,
            wiring.settings.ownership.heartbeat_ms,
        ),
    };
    let beat = Duration::from_millis(beat_ms);
    loop {
        tokio::time::sleep(beat).await;
        match wiring.state.renew_lease(&wiring.fence, ttl_ms).await {
            Ok(Renewal::Renewed { .. }) => {}
            Ok(Renewal::Lost { holder }) => {
                let message = match holder {
                    Some(holder) => format!(
                        "{} took it over at epoch {} (this process held epoch {})",
                        holder.holder(),
                        holder.epoch,
                        wiring.fence.epoch
                    ),
                    None => "the lease row is gone".to_string(),
                };
                wiring.supervision.lost_lease(&message);
                return;
            }
            Err(error) => warn!(%error, "could not renew the ownership lease; retrying"),
        }
    }
}

/// Stops the chunker and the watcher, waits until every announced chunk is
/// committed, then has the batch writer write everything and the compactor
/// fold what it can. A stage that restarts meanwhile is asked again.
async fn drain(
    chunker: Option<Mailbox<ChunkerActor>>,
    watcher: Mailbox<S3WatcherActor>,
    batch_writer: Option<Mailbox<BatchWriterActor>>,
    compactor: Mailbox<CompactorActor>,
) {
    let pause = Duration::from_millis(50);
    let stop_chunker = async {
        let Some(chunker) = chunker else { return };
        while chunker.send(Stop).await.is_err() {
            tokio::time::sleep(pause).await;
        }
    };
    let drain_watcher = async {
        while !matches!(watcher.send(Drain).await, Ok(Ok(()))) {
            tokio::time::sleep(pause).await;
        }
    };
    futures::join!(stop_chunker, drain_watcher);
    let flush = async {
        let Some(batch_writer) = batch_writer else {
            return;
        };
        while !matches!(batch_writer.send(Flush).await, Ok(Ok(()))) {
            tokio::time::sleep(pause).await;
        }
    };
    let compact = async {
        while !matches!(compactor.send(FinalCompact).await, Ok(Ok(()))) {
            tokio::time::sleep(pause).await;
        }
    };
    futures::join!(flush, compact);
}

async fn record_restarts(wiring: &Wiring) {
    for event in wiring.supervision.take_unrecorded() {
        if let Err(error) = wiring.state.record_restart(&event).await {
            warn!(%error, "could not record a restart event");
        }
    }
}
