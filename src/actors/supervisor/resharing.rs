//! How a cluster worker's share of key groups changes while it runs,
//! without loading the share again.
//!
//! Every change begins by holding the watcher still ([`Hold`]: it answers
//! once every chunk it announced is committed, at most
//! `watcher.max_in_flight`), so no chunk is between stages:
//!
//! - **Letting groups go** ([`SupervisorActor::hand_over`]): every stage
//!   drops theirs ([`Reshare`]), the leases are released, the watcher
//!   resumes.
//! - **Taking groups close behind** ([`SupervisorActor::take_over_in_place`]):
//!   only the gained groups' state and weights are read, and a generation
//!   that continues the running one starts from the least advanced group.
//! - **Taking groups far behind** ([`SupervisorActor::start_lane`]): they
//!   first catch up on a lane of their own while the main lane goes on,
//!   and join it in place once close ([`SupervisorActor::watch_lane`]).
//!
//! Heartbeats go on renewing meanwhile but neither take nor let go
//! (`Membership::resharing`); a group lost, a stage's restart or a stop
//! ends any of these in a full generation (or the stop).
//!
//! ```text
//!  heartbeat ─► rebalanced ─┬─ to release ─► hand_over: Hold ─► Reshare ─► release ─► Resume
//!                           └─ taken ─► take_over ─┬─ close: take_over_in_place: Hold ─► load gained ─► Start(continues)
//!                                                  └─ far: start_lane ─► … watch_lane ─► Hold lane ─► Retire ─► take_over_in_place
//! ```

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use actix::prelude::*;
use futures::future::join_all;
use tracing::{info, warn};

use super::topology::{CATCH_UP, Lane, Spawner};
use super::{SupervisorActor, read_committed};
use crate::actors::committed::{Gained, Reshare};
use crate::actors::membership::release;
use crate::actors::tracker::Quiesce;
use crate::actors::watcher::{Hold, Resume};
use crate::actors::wiring::Wiring;
use crate::db::postgres::cluster::ranges;

/// A catch-up lane's generations: numbered apart from the main lane's, so
/// that a message of one is never taken for the other's.
const LANE_GENERATIONS: u64 = 1 << 40;

/// Key groups catching up on a lane of their own.
pub(super) struct CatchUp {
    lane: Lane,
    generation: u64,
    gained: BTreeSet<u32>,
    /// Its merge into the main lane is under way.
    merging: bool,
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

impl SupervisorActor {
    /// Whether `generation` is the running catch-up lane's.
    pub(super) fn is_lane(&self, generation: u64) -> bool {
        let lane = self.cluster.as_ref().and_then(|m| m.catch_up.as_ref());
        lane.is_some_and(|c| c.generation == generation)
    }

    /// Takes key groups over (`gained`, leased already) while a generation
    /// runs. Gained groups at most `watcher.max_in_flight` chunks behind
    /// the groups held are taken into the running generation at once
    /// ([`Self::take_over_in_place`]); groups further behind first catch up
    /// on a lane of their own ([`Self::start_lane`]), so that the groups
    /// held never wait for more than about that many chunks.
    pub(super) fn take_over(&mut self, ctx: &mut Context<Self>, gained: BTreeSet<u32>) {
        let Some(m) = self.cluster.as_mut() else {
            return;
        };
        m.resharing = true;
        let (wiring, held) = (self.wiring.clone(), m.held.clone());
        let bound = self.wiring.settings.watcher.max_in_flight as i64;
        let checking = gained.clone();
        let behind = async move { chunks_behind(&wiring, &held, &checking).await };
        ctx.spawn(
            actix::fut::wrap_future::<_, Self>(behind).map(move |behind, act, ctx| match behind {
                Ok(behind) if behind > bound => act.start_lane(ctx, gained, behind),
                // Not far behind (or not known: then the wait is the price).
                _ => act.take_over_in_place(ctx, gained),
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
    pub(super) fn start_lane(
        &mut self,
        ctx: &mut Context<Self>,
        gained: BTreeSet<u32>,
        behind: i64,
    ) {
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
        let catching_up = gained.len() as i64;
        self.wiring.metrics.key_groups_catching_up.set(catching_up);
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
    pub(super) fn watch_lane(&mut self, ctx: &mut Context<Self>) {
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
                act.wiring.metrics.key_groups_catching_up.set(0);
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
    pub(super) fn abandon_lane(&mut self) -> Option<impl Future<Output = ()> + use<>> {
        let m = self.cluster.as_mut()?;
        let lane = m.catch_up.take()?;
        m.resharing = false;
        self.wiring.metrics.key_groups_catching_up.set(0);
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
    pub(super) fn take_over_in_place(&mut self, ctx: &mut Context<Self>, gained: BTreeSet<u32>) {
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

    /// Lets key groups go (`letting`: group, epoch) without a new
    /// generation: the watcher holds still until every announced chunk is
    /// committed (at most `watcher.max_in_flight`), every stage drops the
    /// groups' state ([`Reshare`]), the leases are released, and the
    /// watcher goes on. The groups kept never reload or replay. If a new
    /// generation starts anyway (`regenerate`, or one interrupts the
    /// hold), the leases are just released: that generation loads the
    /// share without them.
    pub(super) fn hand_over(
        &mut self,
        ctx: &mut Context<Self>,
        letting: Vec<(u32, u64)>,
        regenerate: bool,
    ) {
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
}
