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
//! - A cluster heartbeat that lets key groups go: hands them over in
//!   place ([`Hold`] the watcher, [`Reshare`] every stage, release, then
//!   [`Resume`]); one that takes or loses groups starts a new generation.
//! - A signal: shuts down.
//!
//! Shutdown is a sequence of messages, each answered when done: [`Stop`]
//! to the chunker and [`Drain`] to the watcher (no new chunks; every
//! announced chunk committed), then [`Flush`] to the batch writer and
//! [`FinalCompact`] to the compactor, all within
//! `supervisor.shutdown_timeout_ms`.

use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use futures::future::join_all;
use tracing::{debug, error, info, warn};

use super::batch_writer::{BatchWriter, BatchWriterActor, Flush};
use super::chunker::{Chunker, ChunkerActor, Stop};
use super::committed::{Committed, Gained, Reshare, Start};
use super::compactor::{Compactor, CompactorActor, FinalCompact};
use super::detector::{Detector, DetectorActor};
use super::membership::{Beat, Rebalanced, rebalance, release};
use super::pair_table::{PairTable, PairTableActor};
use super::reader::{Reader, ReaderActor};
pub use super::supervised::{
    EXIT_FATAL, EXIT_LOST_LEASE, EXIT_RESTART_LIMIT, EXIT_SHUTDOWN_TIMEOUT, EXIT_STANDBY_REFUSED,
};
use super::supervised::{Group, Mailbox, Restarted, Retire, Supervised};
use super::tracker::{Quiesce, Tracker, TrackerActor};
use super::watcher::{Drain, Hold, Resume, S3WatcherActor, Watcher, WhenIdle};
use super::wiring::Wiring;
use crate::db::postgres::cluster::ranges;
use crate::db::{Claimant, Fence, Renewal};
use crate::detect::{Engine, WeightTable, parts};
use crate::layout::chunk_seq;
use crate::metrics::Phase;
use crate::signals::Signals;
use std::collections::{BTreeMap, BTreeSet};

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

/// Addresses of the running topology. A cluster's worker runs the chunker
/// and the batch writer only while it holds the chunker lease; its
/// compactor compacts its own key groups.
pub struct Topology {
    pub chunker: Option<Mailbox<ChunkerActor>>,
    /// Mechanism Y's stages.
    pub y: Lane,
    pub batch_writer: Option<Mailbox<BatchWriterActor>>,
    pub compactor: Mailbox<CompactorActor>,
}

/// Mechanism Y's stages (watcher, reader, pair table, detectors, tracker)
/// of one lane: the worker's main lane, or a cluster worker's catch-up
/// lane for key groups taken over far behind (its stages' names start
/// with [`CATCH_UP`]).
pub struct Lane {
    pub watcher: Mailbox<S3WatcherActor>,
    pub reader: Mailbox<ReaderActor>,
    pub pair_table: Mailbox<PairTableActor>,
    pub detectors: Vec<Mailbox<DetectorActor>>,
    pub tracker: Mailbox<TrackerActor>,
}

/// The names of a catch-up lane's stages start with this.
pub const CATCH_UP: &str = "catch-up/";

impl Lane {
    /// Starts the stages, downstream first, named with `prefix`.
    fn start(
        spawner: &Spawner,
        wiring: &Arc<Wiring>,
        supervisor: &Addr<SupervisorActor>,
        prefix: &str,
        batch_writer: Option<Mailbox<BatchWriterActor>>,
        compactor: &Mailbox<CompactorActor>,
    ) -> Lane {
        let w = || wiring.clone();
        let name = |stage: &str| format!("{prefix}{stage}");
        let tracker = spawner.spawn(
            &name("tracker"),
            Tracker {
                wiring: w(),
                batch_writer,
                compactor: compactor.clone(),
                supervisor: supervisor.clone(),
            },
        );
        let detectors: Vec<_> = parts(shards(&wiring.settings))
            .map(|(pattern, shard)| {
                spawner.spawn(
                    &name(&Detector::name(pattern, shard)),
                    Detector {
                        wiring: w(),
                        pattern,
                        shard,
                    },
                )
            })
            .collect();
        let pair_table = spawner.spawn(
            &name("pair-table"),
            PairTable {
                wiring: w(),
                detectors: detectors.clone(),
                tracker: tracker.clone(),
                supervisor: supervisor.clone(),
                main_lane: prefix.is_empty(),
            },
        );
        let reader = spawner.spawn(
            &name("reader"),
            Reader {
                wiring: w(),
                pair_table: pair_table.clone(),
            },
        );
        let watcher = spawner.spawn(
            &name("watcher"),
            Watcher {
                wiring: w(),
                reader: reader.clone(),
            },
        );
        Lane {
            watcher,
            reader,
            pair_table,
            detectors,
            tracker,
        }
    }

    /// Hands a generation's snapshot to every stage, downstream first, so
    /// each is ready before work reaches it; a cluster worker's compactor
    /// (given for the main lane) learns the generation's key groups too.
    fn start_generation(
        &self,
        committed: Arc<Committed>,
        compactor: Option<&Mailbox<CompactorActor>>,
    ) -> impl Future<Output = ()> + use<> {
        let tracker = self.tracker.send(Start(committed.clone()));
        let compactor = compactor
            .filter(|_| committed.share.is_some())
            .map(|c| c.send(Start(committed.clone())));
        let detectors: Vec<_> = self
            .detectors
            .iter()
            .map(|d| d.send(Start(committed.clone())))
            .collect();
        let (pair_table, reader, watcher) = (
            self.pair_table.clone(),
            self.reader.clone(),
            self.watcher.clone(),
        );
        async move {
            // A member that is restarting misses its Start; its own restart
            // starts the next generation.
            let _ = tracker.await;
            if let Some(compactor) = compactor {
                let _ = compactor.await;
            }
            join_all(detectors).await;
            let _ = pair_table.send(Start(committed.clone())).await;
            let _ = reader.send(Start(committed.clone())).await;
            let _ = watcher.send(Start(committed)).await;
        }
    }

    /// Stops every stage for good (a catch-up lane that is done).
    fn retire(&self) -> impl Future<Output = ()> + use<> {
        let (watcher, reader, pair_table, detectors, tracker) = (
            self.watcher.clone(),
            self.reader.clone(),
            self.pair_table.clone(),
            self.detectors.clone(),
            self.tracker.clone(),
        );
        async move {
            let _ = watcher.send(Retire).await;
            let _ = reader.send(Retire).await;
            let _ = pair_table.send(Retire).await;
            join_all(detectors.iter().map(|d| d.send(Retire))).await;
            let _ = tracker.send(Retire).await;
        }
    }
}

impl Topology {
    /// Starts every stage on its own arbiter (thread), downstream first.
    fn start(wiring: &Arc<Wiring>, supervisor: Addr<SupervisorActor>) -> Topology {
        let spawner = Spawner::new(wiring, &supervisor);
        let single = wiring.cluster.is_none();
        let batch_writer = single.then(|| {
            spawner.spawn(
                "batch-writer",
                BatchWriter {
                    wiring: wiring.clone(),
                    fence: wiring.fence.clone(),
                },
            )
        });
        let compactor = spawner.spawn(
            "compactor",
            Compactor {
                wiring: wiring.clone(),
            },
        );
        let y = Lane::start(
            &spawner,
            wiring,
            &supervisor,
            "",
            batch_writer.clone(),
            &compactor,
        );
        let chunker = single.then(|| {
            spawner.spawn(
                "chunker",
                Chunker {
                    wiring: wiring.clone(),
                    fence: wiring.fence.clone(),
                    watcher: y.watcher.clone(),
                    supervisor: supervisor.clone(),
                },
            )
        });
        let mut edges = vec![
            ("chunker", "watcher".to_string()),
            ("watcher", "reader".to_string()),
            ("reader", "pair-table".to_string()),
        ];
        for (pattern, shard) in parts(shards(&wiring.settings)) {
            edges.push(("pair-table", Detector::name(pattern, shard)));
        }
        edges.push(("pair-table", "tracker".to_string()));
        if single {
            edges.push(("tracker", "batch-writer".to_string()));
        }
        edges.push(("tracker", "compactor".to_string()));
        wiring.metrics.health.set_edges(
            edges
                .into_iter()
                .map(|(from, to)| (from.to_string(), to))
                .collect(),
        );
        Topology {
            chunker,
            y,
            batch_writer,
            compactor,
        }
    }

    /// Hands a generation's snapshot to every member of Mechanism Y.
    fn start_mechanism_y(&self, committed: Arc<Committed>) -> impl Future<Output = ()> + use<> {
        self.y.start_generation(committed, Some(&self.compactor))
    }

    /// A cluster worker that took the chunker lease starts the chunker and
    /// the batch writer, both writing under that lease.
    fn start_leader(
        &mut self,
        wiring: &Arc<Wiring>,
        supervisor: Addr<SupervisorActor>,
        fence: Fence,
    ) {
        let spawner = Spawner::new(wiring, &supervisor);
        self.batch_writer = Some(spawner.spawn(
            "batch-writer",
            BatchWriter {
                wiring: wiring.clone(),
                fence: fence.clone(),
            },
        ));
        self.chunker = Some(spawner.spawn(
            "chunker",
            Chunker {
                wiring: wiring.clone(),
                fence,
                watcher: self.y.watcher.clone(),
                supervisor,
            },
        ));
    }

    /// The name of a stage that stopped for good, if one did.
    fn dead_stage(&self, wiring: &Wiring) -> Option<String> {
        let alive = |stage: Option<bool>| stage.unwrap_or(true);
        let named = [
            (
                "chunker",
                alive(self.chunker.as_ref().map(Mailbox::connected)),
            ),
            ("watcher", self.y.watcher.connected()),
            ("reader", self.y.reader.connected()),
            ("pair-table", self.y.pair_table.connected()),
            ("tracker", self.y.tracker.connected()),
            (
                "batch-writer",
                alive(self.batch_writer.as_ref().map(Mailbox::connected)),
            ),
            ("compactor", self.compactor.connected()),
        ];
        if let Some((name, _)) = named.iter().find(|(_, alive)| !alive) {
            return Some(name.to_string());
        }
        self.y
            .detectors
            .iter()
            .zip(parts(shards(&wiring.settings)))
            .find(|(d, _)| !d.connected())
            .map(|(_, (pattern, shard))| Detector::name(pattern, shard))
    }
}

/// Starts stages under supervision, each on its own arbiter, with the
/// configured mailbox capacity, reporting restarts to the supervisor.
struct Spawner {
    capacity: usize,
    supervision: Arc<super::supervised::Supervision>,
    restarted: Recipient<Restarted>,
}

impl Spawner {
    fn new(wiring: &Wiring, supervisor: &Addr<SupervisorActor>) -> Spawner {
        Spawner {
            capacity: wiring.settings.actors.mailbox_capacity,
            supervision: wiring.supervision.clone(),
            restarted: supervisor.clone().recipient(),
        }
    }

    fn spawn<B: super::supervised::Behaviour + Send>(
        &self,
        name: &str,
        behaviour: B,
    ) -> Mailbox<Supervised<B>> {
        Supervised::start(
            name.to_string(),
            behaviour,
            self.capacity,
            self.supervision.clone(),
            self.restarted.clone(),
        )
    }
}

/// Detector shards per pattern, from the configuration.
fn shards(settings: &crate::config::Settings) -> [u32; 3] {
    let d = &settings.detectors;
    [d.patid1, d.patid2, d.patid3]
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

/// A catch-up lane's generations: numbered apart from the main lane's, so
/// that a message of one is never taken for the other's.
const LANE_GENERATIONS: u64 = 1 << 40;

/// Key groups catching up on a lane of their own.
struct CatchUp {
    lane: Lane,
    generation: u64,
    gained: BTreeSet<u32>,
    /// Its merge into the main lane is under way.
    merging: bool,
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

/// How many chunks the least advanced of the `gained` groups is behind the
/// least advanced of the other groups `held` (0 when it holds no other).
async fn chunks_behind(
    wiring: &Wiring,
    held: &BTreeMap<u32, u64>,
    gained: &BTreeSet<u32>,
) -> crate::db::DbResult<i64> {
    let Some(cluster) = wiring.cluster.as_ref() else {
        return Ok(0);
    };
    let groups: Vec<u32> = held.keys().copied().collect();
    let positions = cluster.group_positions(&groups).await?;
    let least = |taken: bool| {
        positions
            .iter()
            .filter(|p| gained.contains(&p.group) == taken)
            .map(|p| p.last_seq)
            .min()
    };
    Ok(match (least(false), least(true)) {
        (Some(held), Some(taken)) => (held - taken).max(0),
        _ => 0,
    })
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

    /// Takes key groups over (`gained`, leased already) while a generation
    /// runs. Gained groups at most `watcher.max_in_flight` chunks behind
    /// the groups held are taken into the running generation at once
    /// ([`Self::take_over_in_place`]); groups further behind first catch up
    /// on a lane of their own ([`Self::start_lane`]), so that the groups
    /// held never wait for more than about that many chunks.
    fn take_over(&mut self, ctx: &mut Context<Self>, gained: BTreeSet<u32>) {
        let Some(m) = self.cluster.as_mut() else {
            return;
        };
        m.resharing = true;
        let (wiring, held) = (self.wiring.clone(), m.held.clone());
        let bound = self.wiring.settings.watcher.max_in_flight as i64;
        let (checking, gained_now) = (gained.clone(), gained);
        let behind = async move { chunks_behind(&wiring, &held, &checking).await };
        ctx.spawn(
            actix::fut::wrap_future::<_, Self>(behind).map(move |behind, act, ctx| match behind {
                Ok(behind) if behind > bound => act.start_lane(ctx, gained_now, behind),
                // Not far behind (or not known: then the wait is the price).
                _ => act.take_over_in_place(ctx, gained_now),
            }),
        );
    }

    /// Starts a catch-up lane for key groups taken far behind the others:
    /// Mechanism Y's stages once more ([`Lane`], named [`CATCH_UP`]…), in
    /// a generation of their own over the gained groups only (their state,
    /// weights and positions loaded as any share is), committing under
    /// those groups' fences while the main lane goes on with the groups
    /// held. Each heartbeat compares the two ([`Self::watch_lane`]); once
    /// the lane is within `watcher.max_in_flight` chunks, it is merged.
    fn start_lane(&mut self, ctx: &mut Context<Self>, gained: BTreeSet<u32>, behind: i64) {
        let (Some(m), Some(topology), Some(engine)) = (
            self.cluster.as_mut(),
            self.topology.as_ref(),
            self.engine.clone(),
        ) else {
            return;
        };
        m.lanes += 1;
        let generation = LANE_GENERATIONS + m.lanes;
        let groups: Vec<u32> = gained.iter().copied().collect();
        info!(
            key_groups = %ranges(&groups),
            chunks_behind = behind,
            "key groups taken far behind: a catch-up lane brings them up to the others"
        );
        let spawner = Spawner::new(&self.wiring, &ctx.address());
        let lane = Lane::start(
            &spawner,
            &self.wiring,
            &ctx.address(),
            CATCH_UP,
            None,
            &topology.compactor,
        );
        let held: BTreeMap<u32, u64> = gained.iter().map(|g| (*g, m.held[g])).collect();
        m.catch_up = Some(CatchUp {
            lane,
            generation,
            gained,
            merging: false,
        });
        let (wiring, owner) = (self.wiring.clone(), m.me.owner_id.clone());
        let load = async move {
            read_committed(&wiring, generation, &engine, Some((&owner, &held)), None).await
        };
        ctx.spawn(
            actix::fut::wrap_future::<_, Self>(load).then(move |committed, act, _ctx| {
                let start = act
                    .cluster
                    .as_ref()
                    .and_then(|m| m.catch_up.as_ref())
                    .filter(|c| c.generation == generation)
                    .map(|c| c.lane.start_generation(committed, None));
                actix::fut::wrap_future(async move {
                    if let Some(start) = start {
                        start.await;
                    }
                })
            }),
        );
    }

    /// At each heartbeat while a catch-up lane runs: once its groups are
    /// within `watcher.max_in_flight` chunks of the groups held (or past
    /// them), the lane holds still until its chunks in flight are
    /// committed, its stages are retired, and its groups are taken over in
    /// place, from the positions it committed.
    fn watch_lane(&mut self, ctx: &mut Context<Self>) {
        let Some(m) = self.cluster.as_mut() else {
            return;
        };
        let Some(lane) = m.catch_up.as_mut().filter(|c| !c.merging) else {
            return;
        };
        lane.merging = true;
        let (generation, watcher, retire) = (
            lane.generation,
            lane.lane.watcher.clone(),
            lane.lane.retire(),
        );
        let (wiring, held, gained) = (self.wiring.clone(), m.held.clone(), lane.gained.clone());
        let bound = self.wiring.settings.watcher.max_in_flight as i64;
        let work = async move {
            let close = matches!(chunks_behind(&wiring, &held, &gained).await, Ok(b) if b <= bound);
            if close {
                let _ = watcher.send(Hold { generation }).await;
                retire.await;
            }
            close
        };
        ctx.spawn(
            actix::fut::wrap_future::<_, Self>(work).map(move |close, act, ctx| {
                let Some(m) = act.cluster.as_mut() else {
                    return;
                };
                let Some(lane) = m.catch_up.as_mut().filter(|c| c.generation == generation) else {
                    return; // abandoned meanwhile
                };
                if !close {
                    lane.merging = false;
                    return;
                }
                let gained = std::mem::take(&mut lane.gained);
                m.catch_up = None;
                info!(
                    key_groups = gained.len(),
                    "the catch-up lane caught up; merging it"
                );
                act.take_over_in_place(ctx, gained);
            }),
        );
    }

    /// Gives a catch-up lane up (a full generation loads its groups now,
    /// or the worker stops): what it has committed stays, the rest is
    /// read again by whoever applies those groups next.
    fn abandon_lane(&mut self) -> Option<impl Future<Output = ()> + use<>> {
        let m = self.cluster.as_mut()?;
        let lane = m.catch_up.take()?;
        m.resharing = false;
        let quiesce = lane.lane.tracker.clone();
        let retire = lane.lane.retire();
        Some(async move {
            let _ = quiesce.send(Quiesce).await;
            retire.await;
        })
    }

    /// Takes key groups over (`gained`, leased already) without loading
    /// the share again: the watcher holds still until every announced chunk
    /// is committed (at most `watcher.max_in_flight`); only the gained
    /// groups' committed state and weights are read; and a generation that
    /// continues the running one starts ([`Committed::continues`]): the
    /// pair table and the detectors add the groups' state to what they
    /// hold, and chunks follow from the least advanced group's position,
    /// the groups held before skipping those they have. If the hold is
    /// interrupted (a stage restarted), a generation loads the whole share.
    fn take_over_in_place(&mut self, ctx: &mut Context<Self>, gained: BTreeSet<u32>) {
        let (Some(m), Some(topology), Some(engine)) = (
            self.cluster.as_mut(),
            self.topology.as_ref(),
            self.engine.clone(),
        ) else {
            return;
        };
        m.resharing = true;
        let continues = self.generation;
        self.generation += 1;
        let generation = self.generation;
        let groups: Vec<u32> = gained.iter().copied().collect();
        info!(
            generation,
            key_groups = %ranges(&groups),
            "Mechanism Y takes key groups over in place (loads only theirs)"
        );
        let (wiring, watcher) = (self.wiring.clone(), topology.y.watcher.clone());
        let (owner, held, weights) = (m.me.owner_id.clone(), m.held.clone(), m.weights.1.clone());
        let load = async move {
            if !matches!(
                watcher
                    .send(Hold {
                        generation: continues
                    })
                    .await,
                Ok(Ok(_))
            ) {
                return None;
            }
            let gained = Gained {
                groups: &gained,
                continues,
                weights: &weights,
            };
            let share = Some((owner.as_str(), &held));
            Some(read_committed(&wiring, generation, &engine, share, Some(gained)).await)
        };
        ctx.spawn(
            actix::fut::wrap_future::<_, Self>(load).then(move |committed, act, ctx| {
                if let Some(m) = act.cluster.as_mut() {
                    m.resharing = false;
                }
                let current = act.generation == generation && !act.stopping;
                let start = match committed {
                    Some(committed) if current => {
                        if let Some(share) = &committed.share {
                            // How long the groups held wait: the chunks the
                            // gained ones re-read before reaching them.
                            let seqs = share.groups.values().map(|g| g.last_seq);
                            let (from, to) = (seqs.clone().min(), seqs.max());
                            info!(
                                generation,
                                chunks_behind = to.zip(from).map_or(0, |(to, from)| to - from),
                                "key groups taken over; they resume from their own positions"
                            );
                        }
                        act.generation_loaded(committed)
                    }
                    // The hold was interrupted and no generation followed.
                    None if current => {
                        act.new_generation(ctx, Duration::ZERO);
                        None
                    }
                    _ => None,
                };
                actix::fut::wrap_future(async move {
                    if let Some(start) = start {
                        start.await;
                    }
                })
            }),
        );
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

    /// Lets key groups go (`letting`: group, epoch) without a new
    /// generation: the watcher holds still until every announced chunk is
    /// committed (at most `watcher.max_in_flight`), every stage drops the
    /// groups' state ([`Reshare`]), the leases are released, and the
    /// watcher goes on. The groups kept never reload or replay. If a new
    /// generation starts anyway (`regenerate`, or one interrupts the
    /// hold), the leases are just released: that generation loads the
    /// share without them.
    fn hand_over(&mut self, ctx: &mut Context<Self>, letting: Vec<(u32, u64)>, regenerate: bool) {
        let (Some(m), Some(topology)) = (self.cluster.as_mut(), self.topology.as_ref()) else {
            return;
        };
        m.resharing = true;
        let mut groups: Vec<u32> = letting.iter().map(|(g, _)| *g).collect();
        groups.sort_unstable();
        // In place only within a generation whose state is loaded (one
        // still loading has the groups in its share: its commits for them
        // are refused once they are released, and it starts over).
        let in_place = !regenerate && m.weights.0 == self.generation;
        let stages = in_place.then(|| {
            let gone = groups.iter().copied().collect();
            let reshare = Reshare::new(&self.wiring, self.generation, gone, &m.weights.1);
            m.weights.1 = reshare.weights.clone();
            let pairs = reshare.weights.len() as i64;
            self.wiring.metrics.lookup_pairs.set(pairs);
            (
                reshare,
                topology.y.watcher.clone(),
                topology.y.tracker.clone(),
                topology.compactor.clone(),
                topology.y.detectors.clone(),
                topology.y.pair_table.clone(),
                topology.y.reader.clone(),
            )
        });
        let (wiring, me) = (self.wiring.clone(), m.me.clone());
        let lookup_pairs = m.weights.1.len();
        let work = async move {
            let mut in_place = false;
            if let Some((reshare, watcher, tracker, compactor, detectors, pair_table, reader)) =
                stages
            {
                let generation = reshare.generation;
                if let Ok(Ok(_)) = watcher.send(Hold { generation }).await {
                    // Downstream first, as a generation starts.
                    let _ = tracker.send(reshare.clone()).await;
                    let _ = compactor.send(reshare.clone()).await;
                    join_all(detectors.iter().map(|d| d.send(reshare.clone()))).await;
                    let _ = pair_table.send(reshare.clone()).await;
                    let _ = reader.send(reshare.clone()).await;
                    in_place = true;
                }
                let released = release(&wiring, &me, &letting).await;
                if in_place {
                    let _ = watcher.send(Resume).await;
                }
                (in_place, released)
            } else {
                (false, release(&wiring, &me, &letting).await)
            }
        };
        ctx.spawn(actix::fut::wrap_future::<_, Self>(work).map(
            move |(in_place, released), act, _ctx| {
                if let Some(m) = act.cluster.as_mut() {
                    m.resharing = false;
                }
                let groups = ranges(&groups);
                match released {
                    Ok(()) if in_place => info!(
                        key_groups = %groups,
                        lookup_pairs,
                        "key groups handed over to other workers in place (no reload)"
                    ),
                    Ok(()) => info!(key_groups = %groups, "key groups released to other workers"),
                    Err(error) => warn!(
                        key_groups = %groups,
                        %error,
                        "could not release key groups; they expire by themselves"
                    ),
                }
            },
        ));
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
        let lane = self.cluster.as_ref().and_then(|m| m.catch_up.as_ref());
        if lane.is_some_and(|c| c.generation == msg.generation) {
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
