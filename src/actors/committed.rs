//! The committed state Mechanism Y starts from, and the message that hands
//! it out.
//!
//! Mechanism Y's stages (watcher, reader, pair table, detectors, tracker)
//! hold views of one cumulative state, over one lookup table. They must
//! agree on which chunk that state ends with, so they are started
//! together: the supervisor loads one [`Committed`] snapshot from the
//! database (on start, and whenever one of them restarted) and sends it to
//! each with [`Start`], under a new *generation* number. Each stage builds
//! its state from it in its restart constructor, and drops every message
//! of an older generation, so nothing a failed generation left in a
//! mailbox is ever applied.
//!
//! A cluster worker's share changes in place, while its stages hold still
//! (the watcher's `Hold`): key groups let go travel as [`Reshare`] (each
//! stage drops theirs); key groups taken travel as a generation that
//! *continues* the running one ([`Committed::continues`]: the snapshot of
//! the gained groups only, which the stateful stages merge into theirs).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use actix::prelude::*;

use super::wiring::Wiring;
use crate::db::{DbError, StateStore};
use crate::detect::{
    Cents, DetectionKey, Engine, MerchantId, PairState, Snapshot, WeightTable, WeightTableBuilder,
};
use crate::names::Names;

/// Committed state as of the last committed chunk.
#[derive(Default)]
pub struct Committed {
    pub generation: u64,
    /// The last chunk committed (processed or rejected).
    pub last_chunk: Option<Arc<str>>,
    /// Cumulative pair state and the detections already emitted.
    pub snapshot: Snapshot,
    /// The detection engine over the lookup table: all of it, or in a
    /// cluster the weights of the share's key groups only.
    pub engine: Engine,
    /// In a cluster: the key groups this generation applies (`None`: a
    /// single process, which applies everything).
    pub share: Option<Arc<Share>>,
    /// In a cluster that takes key groups over in place: the generation
    /// this one continues. `snapshot` then holds only the gained groups'
    /// state, which the pair table and the detectors add to what they hold
    /// in that generation; the other stages start over as in any
    /// generation (they hold no state of the groups).
    pub continues: Option<Continues>,
}

/// A generation that goes on from another with key groups it gained.
#[derive(Clone, Debug)]
pub struct Continues {
    pub generation: u64,
    pub gained: BTreeSet<u32>,
}

/// Key groups a running generation takes over in place (see
/// [`Committed::load_share`]).
#[derive(Clone, Copy)]
pub struct Gained<'a> {
    pub groups: &'a BTreeSet<u32>,
    /// The generation that goes on with them.
    pub continues: u64,
    /// Its lookup table, to which the gained groups' weights are added.
    pub weights: &'a WeightTable,
}

/// The key groups one generation of a cluster's worker applies: those it
/// holds leases on, each with the epoch of its lease (every commit is
/// fenced by it) and the last chunk the group had applied when its state
/// was loaded. A generation starts after the least advanced of them and
/// applies a chunk's rows to a group only past that group's own position,
/// so a group taken over late catches up while the others skip what they
/// have.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Share {
    /// How many key groups the cluster has (`cluster.key_groups`).
    pub key_groups: u32,
    /// The worker's lease owner id.
    pub owner_id: String,
    pub groups: BTreeMap<u32, GroupStart>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GroupStart {
    pub epoch: u64,
    /// Sequence number of the last chunk the group had applied (-1: none).
    pub last_seq: i64,
}

impl Share {
    /// This share less the groups `gone`.
    pub fn without(&self, gone: &BTreeSet<u32>) -> Share {
        let mut kept = self.clone();
        kept.groups.retain(|group, _| !gone.contains(group));
        kept
    }

    /// Whether chunk `seq`'s rows of `group` are applied in this generation.
    pub fn applies(&self, group: u32, seq: i64) -> bool {
        self.groups
            .get(&group)
            .is_some_and(|start| seq > start.last_seq)
    }

    /// The group of `merchant`.
    pub fn group_of(&self, merchant: &str) -> u32 {
        crate::detect::key_group::key_group(merchant, self.key_groups)
    }

    /// `(group, epoch)` of every group held.
    pub fn fences(&self) -> Vec<(u32, u64)> {
        self.groups.iter().map(|(&g, s)| (g, s.epoch)).collect()
    }

    /// What each group's progress is after chunks up to `seq` (-1: none)
    /// were committed in this generation.
    pub fn progress_after(&self, seq: i64) -> Vec<(u32, i64)> {
        self.groups
            .iter()
            .map(|(&g, s)| (g, s.last_seq.max(seq)))
            .collect()
    }
}

impl Committed {
    /// Whether this snapshot replaces the state of generation `current`
    /// (`None`: no state yet). A `Start` of an older generation, delivered
    /// late, is ignored.
    pub fn supersedes(&self, current: Option<u64>) -> bool {
        current.is_none_or(|generation| generation <= self.generation)
    }

    /// Reads the committed state from the database: the last committed
    /// chunk, then the state, then the last chunk again. Commits write a
    /// chunk's state and its `processed_chunks` row in one transaction, so
    /// if the last chunk did not change, the state read in between is
    /// exactly the state as of that chunk; if it changed, read again.
    pub async fn load(
        wiring: &Wiring,
        generation: u64,
        engine: Engine,
    ) -> Result<Committed, DbError> {
        loop {
            let last = wiring
                .db("read last chunk", || wiring.state.last_chunk())
                .await?;
            let snapshot = Self::read_state(wiring, None).await?;
            let again = wiring
                .db("read last chunk", || wiring.state.last_chunk())
                .await?;
            if again == last {
                return Ok(Committed {
                    generation,
                    last_chunk: last.map(Arc::from),
                    snapshot,
                    engine,
                    share: None,
                    continues: None,
                });
            }
        }
    }

    /// Reads a cluster worker's committed state: the positions of the key
    /// groups it holds (`held`: group → lease epoch), and the state and
    /// weights of all of them, or with `gained` of the groups taken over
    /// only (the generation it continues holds the others'). Nobody else
    /// commits to them, and this worker's tracker is quiesced, so one read
    /// is consistent.
    pub async fn load_share(
        wiring: &Wiring,
        generation: u64,
        engine: Engine,
        owner_id: &str,
        held: &BTreeMap<u32, u64>,
        gained: Option<Gained<'_>>,
    ) -> Result<Committed, DbError> {
        let cluster = wiring
            .cluster
            .as_ref()
            .ok_or_else(|| DbError::Failed("not a cluster worker".into()))?;
        let groups: Vec<u32> = held.keys().copied().collect();
        let positions = wiring
            .db("read key groups", || cluster.group_positions(&groups))
            .await?;
        let last_chunk = match positions.iter().min_by_key(|p| p.last_seq) {
            Some(start) => start.last_chunk.clone(),
            // Nothing held: follow the cluster's frontier, applying nothing.
            None => {
                wiring
                    .db("read last chunk", || wiring.state.last_chunk())
                    .await?
            }
        };
        let share = Share {
            key_groups: wiring.settings.cluster.key_groups,
            owner_id: owner_id.to_string(),
            groups: positions
                .iter()
                .map(|p| {
                    let start = GroupStart {
                        epoch: held[&p.group],
                        last_seq: p.last_seq,
                    };
                    (p.group, start)
                })
                .collect(),
        };
        let loading: Vec<u32> = match &gained {
            Some(gained) => gained.groups.iter().copied().collect(),
            None => groups,
        };
        let snapshot = Self::read_state(wiring, Some(&loading)).await?;
        // Only the share's weights: memory follows ownership. No group (a
        // worker's first generation, before it takes any): no scan of the
        // whole table to keep nothing.
        let read = if loading.is_empty() {
            WeightTable::default()
        } else {
            read_weights(&*wiring.state, &wiring.names, |merchant| {
                loading.contains(&share.group_of(merchant))
            })
            .await?
        };
        let weights = match &gained {
            Some(gained) => gained.weights.with(read),
            None => read,
        };
        Ok(Committed {
            generation,
            last_chunk: last_chunk.map(Arc::from),
            snapshot,
            engine: engine.with_weights(Arc::new(weights)),
            share: Some(Arc::new(share)),
            continues: gained.map(|g| Continues {
                generation: g.continues,
                gained: g.groups.clone(),
            }),
        })
    }

    /// The pair state and emitted detections: all of them, or those of
    /// the key groups `groups`.
    async fn read_state(w: &Wiring, groups: Option<&[u32]>) -> Result<Snapshot, DbError> {
        let names = &*w.names;
        let mut snapshot = Snapshot::default();
        let mut pairs = |row: crate::db::PairRow<'_>| {
            snapshot.pairs.push(PairState {
                merchant: names.merchant(row.merchant),
                customer: names.customer(row.customer),
                count: row.count,
                amount: Cents(row.amount),
                gender: row.gender,
            })
        };
        match (groups, &w.cluster) {
            (Some(groups), Some(cluster)) => cluster.scan_group_pairs(groups, &mut pairs).await?,
            _ => w.state.scan_pairs(&mut pairs).await?,
        }
        let mut emitted = Vec::new();
        let mut visit = |row: crate::db::EmittedRow<'_>| {
            emitted.push(DetectionKey {
                pattern: row.pattern,
                merchant: names.merchant(row.merchant),
                customer: (!row.customer.is_empty()).then(|| names.customer(row.customer)),
            })
        };
        match (groups, &w.cluster) {
            (Some(groups), Some(cluster)) => cluster.scan_group_emitted(groups, &mut visit).await?,
            _ => w.state.scan_emitted(&mut visit).await?,
        }
        snapshot.emitted = emitted;
        Ok(snapshot)
    }
}

/// The lookup table of the merchants `keep` accepts (by name), read from
/// the database straight into the table: no list of millions of entries
/// beside it, and no name interned for a merchant left out.
pub async fn read_weights(
    state: &dyn StateStore,
    names: &Names,
    keep: impl Fn(&str) -> bool + Send + Sync,
) -> Result<WeightTable, DbError> {
    let mut table = WeightTableBuilder::default();
    // Rows mostly come merchant by merchant (they were stored in key
    // order): decide once per run of a merchant.
    let mut last: Option<(String, Option<MerchantId>)> = None;
    state
        .scan_weights(&mut |row| {
            let merchant = match &last {
                Some((name, merchant)) if name == row.merchant => *merchant,
                _ => {
                    let merchant = keep(row.merchant).then(|| names.merchant(row.merchant));
                    last = Some((row.merchant.to_string(), merchant));
                    merchant
                }
            };
            if let Some(merchant) = merchant {
                let customer = names.customer(row.customer);
                table.add(merchant, customer, Cents(row.weight_sum), row.rows);
            }
        })
        .await?;
    Ok(table.finish())
}

/// Whether a merchant is in one of the key groups `groups`.
fn in_groups<'a>(
    wiring: &'a Wiring,
    groups: &'a BTreeSet<u32>,
) -> impl Fn(MerchantId) -> bool + 'a {
    let (names, key_groups) = (&wiring.names, wiring.settings.cluster.key_groups);
    move |merchant| {
        let group = crate::detect::key_group::key_group(names.name(merchant.0), key_groups);
        groups.contains(&group)
    }
}

impl Continues {
    /// Whether a merchant is in a key group gained.
    pub fn gains<'a>(&'a self, wiring: &'a Wiring) -> impl Fn(MerchantId) -> bool + 'a {
        in_groups(wiring, &self.gained)
    }
}

/// Start (or start over) from committed state, in its generation.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Start(pub Arc<Committed>);

/// Hands key groups over in place, within a generation: each stage drops
/// what it holds of the groups gone and keeps the rest as it is (no
/// reload, no replay). Sent while the watcher holds still
/// (`super::watcher::Hold`), so no chunk is between stages; a stage in
/// another generation ignores it (its generation loads the new share).
#[derive(Clone, Message)]
#[rtype(result = "()")]
pub struct Reshare {
    pub generation: u64,
    /// The key groups handed over.
    pub gone: Arc<BTreeSet<u32>>,
    /// The lookup table of the groups kept (the detectors let the rest go).
    pub weights: Arc<WeightTable>,
}

impl Reshare {
    /// Hands the groups `gone` over within `generation`, whose detectors
    /// detect over `weights`.
    pub fn new(
        wiring: &Wiring,
        generation: u64,
        gone: BTreeSet<u32>,
        weights: &WeightTable,
    ) -> Reshare {
        let mut reshare = Reshare {
            generation,
            gone: Arc::new(gone),
            weights: Arc::default(),
        };
        let kept = {
            let drops = reshare.drops(wiring);
            weights.retain(|merchant| !drops(merchant))
        };
        reshare.weights = Arc::new(kept);
        reshare
    }

    /// The generation's share less the groups gone.
    pub fn share(&self, share: &Option<Arc<Share>>) -> Option<Arc<Share>> {
        share.as_ref().map(|s| Arc::new(s.without(&self.gone)))
    }

    /// Whether a merchant is in a group handed over.
    pub fn drops<'a>(&'a self, wiring: &'a Wiring) -> impl Fn(MerchantId) -> bool + 'a {
        in_groups(wiring, &self.gone)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_share_applies_a_chunk_to_a_group_only_past_its_position() {
        let share = Share {
            key_groups: 4,
            owner_id: "w".into(),
            groups: [
                (
                    0,
                    GroupStart {
                        epoch: 3,
                        last_seq: 9,
                    },
                ),
                (
                    2,
                    GroupStart {
                        epoch: 1,
                        last_seq: -1,
                    },
                ),
            ]
            .into_iter()
            .collect(),
        };
        assert!(!share.applies(0, 9) && share.applies(0, 10));
        assert!(share.applies(2, 0));
        assert!(!share.applies(1, 100), "not held");
        assert_eq!(share.fences(), vec![(0, 3), (2, 1)]);
        assert_eq!(share.progress_after(-1), vec![(0, 9), (2, -1)]);
        assert_eq!(share.progress_after(12), vec![(0, 12), (2, 12)]);
    }
}
