//! A cluster worker's membership: which key groups it holds, whether it
//! runs the chunker, and how it gets to a fair share.
//!
//! Every `cluster.heartbeat_ms` the supervisor runs one [`rebalance`]:
//!
//! 1. renew the leases of the key groups held; those that passed to
//!    another worker (this one was paused or cut off past their expiry)
//!    are *lost*;
//! 2. read the cluster: live workers (registrations not expired), every
//!    key group's lease;
//! 3. compute this worker's fair share ([`fair_share`]: the key groups
//!    divided evenly among live workers, ordered by owner id) and release
//!    the groups above it at once, or take free groups (never held,
//!    expired or released) up to it;
//! 4. renew the chunker lease, or take it if it is free.
//!
//! A worker counts in the shares from its registration, renewed while it
//! starts (`app::ownership::register_worker`), and its first heartbeat
//! takes nothing: workers started together see each other before any of
//! them takes, and none takes every key group for a moment (holding, and
//! loading, the whole state) only to hand most of them over. A starting
//! worker's share waits for it; if it dies starting, its registration
//! expires after `cluster.lease_ttl_ms` and the others take the share.
//!
//! Nothing here decides correctness: a worker that thinks it holds a group
//! it lost is refused at its next commit (the epoch moved), and the
//! supervisor then starts a generation without the group. Timing only
//! decides how fast key groups move: a joining worker gets its share
//! within two heartbeats (the others release, it takes), a leaving one's
//! groups are free at once (it releases them), a dead one's after its
//! leases expire.

use std::collections::BTreeMap;

use tracing::{debug, info, warn};

use super::wiring::Wiring;
use crate::db::postgres::cluster::{CHUNKER_LEASE, ClusterView};
use crate::db::{Claimant, DbError, DbResult, Fence, LeaseGrant, Renewal};

/// How many key groups worker number `index` of `workers` should hold:
/// an even split, the first `key_groups % workers` taking one more.
pub fn fair_share(key_groups: u32, workers: usize, index: usize) -> usize {
    let (groups, workers) = (key_groups as usize, workers.max(1));
    groups / workers + usize::from(index < groups % workers)
}

/// What to release and what to try to take, given the groups held and
/// the cluster as read. Releases the highest-numbered groups; takes free
/// groups starting from this worker's own stretch of the ring, so that
/// workers looking at once mostly ask for different groups.
pub fn plan(
    view: &ClusterView,
    owner_id: &str,
    held: &BTreeMap<u32, u64>,
    stopping: bool,
) -> (Vec<u32>, Vec<u32>) {
    if stopping {
        return (held.keys().copied().collect(), Vec::new());
    }
    let mut ids: Vec<&str> = view.workers.iter().map(|w| w.name.as_str()).collect();
    if !ids.contains(&owner_id) {
        ids.push(owner_id);
        ids.sort_unstable();
    }
    let index = ids.iter().position(|id| *id == owner_id).unwrap_or(0);
    let target = fair_share(view.key_groups, ids.len(), index);
    if held.len() > target {
        let release = held
            .keys()
            .rev()
            .take(held.len() - target)
            .copied()
            .collect();
        return (release, Vec::new());
    }
    let groups = view.key_groups.max(1);
    let start = (index as u64 * u64::from(groups) / ids.len() as u64) as u32;
    let take = (0..groups)
        .map(|i| (start + i) % groups)
        .filter(|g| !held.contains_key(g) && view.is_free(*g))
        .take(target - held.len())
        .collect();
    (Vec::new(), take)
}

/// The outcome of one heartbeat.
#[derive(Debug, Default)]
pub struct Rebalanced {
    /// Key groups held now, with their epochs.
    pub held: BTreeMap<u32, u64>,
    pub lost: Vec<u32>,
    pub released: Vec<u32>,
    /// Key groups above the fair share that are still leased, with their
    /// epochs: the supervisor hands them over in place ([`release`] once
    /// its stages dropped them). Only with `defer_release`.
    pub to_release: Vec<(u32, u64)>,
    pub taken: Vec<u32>,
    /// The chunker lease, if this worker holds it now.
    pub chunker: Option<Fence>,
    /// The chunker lease passed to another worker (why).
    pub chunker_lost: Option<String>,
    /// The chunker finished the master file.
    pub chunker_finished: bool,
}

/// What one heartbeat may do.
#[derive(Clone, Copy, Debug, Default)]
pub struct Beat {
    /// Let every key group and the chunker lease go.
    pub stopping: bool,
    /// Take free key groups (not at a worker's first heartbeat).
    pub may_take: bool,
    /// Leave groups above the fair share leased (in `to_release`) for the
    /// supervisor to hand over in place.
    pub defer_release: bool,
}

/// One heartbeat of membership (see the module docs).
pub async fn rebalance(
    w: &Wiring,
    me: &Claimant,
    held: &BTreeMap<u32, u64>,
    chunker: Option<&Fence>,
    beat: Beat,
) -> DbResult<Rebalanced> {
    let Beat {
        stopping,
        may_take,
        defer_release,
    } = beat;
    let Some(cluster) = w.cluster.as_ref() else {
        return Err(DbError::Failed("not a cluster worker".into()));
    };
    let ttl = w.settings.cluster.lease_ttl_ms;
    let held_list: Vec<(u32, u64)> = held.iter().map(|(&g, &e)| (g, e)).collect();
    let lost = w
        .db("renew key group leases", || {
            cluster.renew_groups(me, &held_list, ttl)
        })
        .await?;
    let mut now_held: BTreeMap<u32, u64> = held.clone();
    for group in &lost {
        now_held.remove(group);
    }
    let mut out = Rebalanced {
        lost,
        ..Rebalanced::default()
    };
    // The chunker lease before anything that may wait.
    match (chunker, stopping) {
        (Some(fence), true) => {
            if let Err(error) = w.state.release_lease(fence).await {
                warn!(%error, "could not release the chunker lease; it expires by itself");
            }
        }
        (Some(fence), false) => match w.state.renew_lease(fence, ttl).await {
            Ok(Renewal::Renewed { .. }) => out.chunker = Some(fence.clone()),
            Ok(Renewal::Lost { holder }) => {
                out.chunker_lost = Some(match holder {
                    Some(holder) => format!(
                        "the chunker lease passed to {} at epoch {} (this worker held epoch {})",
                        holder.holder(),
                        holder.epoch,
                        fence.epoch
                    ),
                    None => "the chunker lease is gone".to_string(),
                })
            }
            // Unreachable for now: keep it; the fence decides.
            Err(error) => {
                warn!(%error, "could not renew the chunker lease; retrying");
                out.chunker = Some(fence.clone());
            }
        },
        (None, true) => {}
        (None, false) => {
            // Not for long: a frozen chunker inside a transaction holds the
            // lease's lock until the server ends it; this heartbeat must
            // go on renewing meanwhile (the try is rolled back).
            let bound = std::time::Duration::from_millis((ttl / 4).max(50));
            let grant =
                tokio::time::timeout(bound, w.state.acquire_lease(CHUNKER_LEASE, me, ttl, None))
                    .await;
            if let Ok(Ok(LeaseGrant::Granted(fence))) = grant {
                info!(
                    epoch = fence.epoch,
                    "chunker lease taken: this worker runs the chunker"
                );
                out.chunker = Some(fence);
            }
        }
    }
    let view = w.db("read the cluster", || cluster.cluster_view()).await?;
    let (release, mut take) = plan(&view, &me.owner_id, &now_held, stopping);
    if !may_take {
        take.clear();
    }
    if !release.is_empty() {
        let letting: Vec<(u32, u64)> = release.iter().map(|g| (*g, now_held[g])).collect();
        for group in &release {
            now_held.remove(group);
        }
        if defer_release && !stopping {
            out.to_release = letting;
        } else {
            self::release(w, me, &letting).await?;
            out.released = release;
        }
    }
    if !take.is_empty() {
        // Once, not retried: a group whose previous owner is still inside
        // a commit is tried again at the next heartbeat.
        let taken = match cluster.acquire_groups(me, take.clone(), ttl).await {
            Ok(taken) => taken,
            Err(error) => {
                debug!(%error, "could not take key groups now; trying at the next heartbeat");
                Vec::new()
            }
        };
        out.taken = taken.iter().map(|(g, _)| *g).collect();
        now_held.extend(taken);
    }
    out.held = now_held;
    // One registration per start stays behind; a day's worth is plenty to
    // read in `txpipe status` history, not more.
    if let Err(error) = cluster.forget_departed_workers(24 * 3600 * 1000).await {
        debug!(%error, "could not forget departed workers");
    }
    out.chunker_finished = w
        .db("read the chunker's progress", || w.state.chunk_claims(0, 0))
        .await
        .is_ok_and(|claims| claims.chunker_finished);
    Ok(out)
}

/// Lets key groups go (`(group, epoch)`): other workers may take them at
/// once.
pub async fn release(w: &Wiring, me: &Claimant, letting: &[(u32, u64)]) -> DbResult<()> {
    let Some(cluster) = w.cluster.as_ref() else {
        return Err(DbError::Failed("not a cluster worker".into()));
    };
    w.db("release key groups", || cluster.release_groups(me, letting))
        .await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::db::LeaseRow;

    fn view(workers: &[&str], key_groups: u32, taken: &[u32]) -> ClusterView {
        let lease = |name: &str| LeaseRow {
            name: name.into(),
            owner_id: "x".into(),
            host: "h".into(),
            pid: 1,
            epoch: 1,
            acquired_at_ms: 0,
            expires_at_ms: 100,
        };
        ClusterView {
            now_ms: 50,
            key_groups,
            workers: workers.iter().map(|w| lease(w)).collect(),
            leases: taken.iter().map(|&g| (g, lease("g"))).collect(),
            ..ClusterView::default()
        }
    }

    #[test]
    fn shares_are_even_and_cover_every_group() {
        for workers in 1..=9 {
            let total: usize = (0..workers).map(|i| fair_share(128, workers, i)).sum();
            assert_eq!(total, 128);
            let shares: Vec<usize> = (0..workers).map(|i| fair_share(128, workers, i)).collect();
            assert!(shares.iter().max().unwrap() - shares.iter().min().unwrap() <= 1);
        }
        assert_eq!(fair_share(2, 3, 2), 0, "more workers than groups");
    }

    #[test]
    fn a_worker_above_its_share_releases_and_one_below_takes_free_groups() {
        let held: BTreeMap<u32, u64> = (0..8).map(|g| (g, 1)).collect();
        let (release, take) = plan(&view(&["a", "b"], 8, &[]), "a", &held, false);
        assert_eq!(release, vec![7, 6, 5, 4]);
        assert!(take.is_empty());
        // b holds nothing; 0..3 are taken by a, 4..7 free.
        let (release, take) = plan(
            &view(&["a", "b"], 8, &[0, 1, 2, 3]),
            "b",
            &BTreeMap::new(),
            false,
        );
        assert!(release.is_empty());
        assert_eq!(take, vec![4, 5, 6, 7]);
        // Stopping lets everything go.
        let (release, _) = plan(&view(&["a"], 8, &[]), "a", &held, true);
        assert_eq!(release.len(), 8);
    }

    #[test]
    fn a_worker_missing_from_the_view_counts_itself() {
        let (_, take) = plan(&view(&["b"], 4, &[]), "a", &BTreeMap::new(), false);
        assert_eq!(take.len(), 2);
    }
}
