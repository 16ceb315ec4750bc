//! The cumulative pair table: `n(c, m)`, `s(c, m)` and the first gender of
//! every customer–merchant pair seen so far, plus the pair's weight slot.
//!
//! It is the only per-pair structure of the engine. Every chunk's
//! [`ChunkDelta`] is folded into it in chunk order, one lookup per pair, and
//! comes out as a [`ChunkUpdate`] that tells each detector the pair's
//! totals after the chunk and whether it is new. The detectors then only
//! keep per-merchant figures (and PatId1 its per-slot counts), so a chunk
//! costs one cache-missing lookup per pair instead of one per pair and
//! detector. Like every in-memory state it is a cache of committed state:
//! [`PairTotals::restore`] rebuilds it from a [`Snapshot`].
//!
//! Every pair of the weight table is entered (with a zero count) when the
//! table is built, so that a pair's weight slot is found by the same lookup
//! that finds its totals: looking it up in the weight table when the pair
//! first appears would cost a binary search per new pair. Building it is a
//! start-up cost, like loading the weights; restoring keeps those entries
//! and only resets their totals.

use super::{
    Cents, ChunkDelta, ChunkUpdate, CustomerId, Gender, MerchantId, NO_WEIGHT, PairUpdate,
    Snapshot, WeightTable,
};
use crate::table::{PREFETCH_AHEAD, PrefetchTable};

pub struct PairTotals {
    /// Keyed by [`pair_key`]: one `u64` hashes faster than a tuple.
    pairs: PrefetchTable<u64, Totals>,
    /// Pairs with at least one transaction.
    present: usize,
}

#[derive(Clone, Copy)]
struct Totals {
    count: u64,
    amount: Cents,
    weight_slot: u32,
    /// Meaningful once `count > 0`.
    gender: Gender,
}

impl Totals {
    const NONE: Totals = Totals {
        count: 0,
        amount: Cents(0),
        weight_slot: NO_WEIGHT,
        gender: Gender::Other,
    };
}

impl Default for Totals {
    fn default() -> Totals {
        Totals::NONE
    }
}

/// Ids come from the name table, which never hands out `u32::MAX`, so no
/// key is the table's free-slot marker.
#[inline]
fn pair_key(merchant: MerchantId, customer: CustomerId) -> u64 {
    (u64::from(merchant.0) << 32) | u64::from(customer.0)
}

impl PairTotals {
    /// An empty table holding every pair of `weights` with its slot (a
    /// cluster worker's weights hold its key groups' merchants only, and
    /// no other merchant's rows ever reach it).
    pub fn new(weights: &WeightTable) -> PairTotals {
        let mut pairs: PrefetchTable<u64, Totals> =
            PrefetchTable::sparse_with_capacity(weights.len());
        for (merchant, ranked) in weights.merchants() {
            for (slot, &(customer, _)) in ranked.iter().enumerate() {
                pairs
                    .get_or_default(pair_key(merchant, customer))
                    .weight_slot = slot as u32;
            }
        }
        PairTotals { pairs, present: 0 }
    }

    /// Number of pairs with at least one transaction.
    pub fn len(&self) -> usize {
        self.present
    }

    pub fn is_empty(&self) -> bool {
        self.present == 0
    }

    /// Replaces the table with the committed pairs of `snapshot`.
    pub fn restore(&mut self, snapshot: &Snapshot) {
        self.pairs.retain(|_, totals| {
            *totals = Totals {
                weight_slot: totals.weight_slot,
                ..Totals::NONE
            };
            totals.weight_slot != NO_WEIGHT
        });
        self.present = 0;
        self.add(snapshot);
    }

    /// Adds merchants the table holds nothing of (the key groups a cluster
    /// worker takes over): the pairs of `weights` whose merchant `new`
    /// accepts, then their committed pairs in `snapshot`.
    pub fn merge(
        &mut self,
        weights: &WeightTable,
        new: impl Fn(MerchantId) -> bool,
        snapshot: &Snapshot,
    ) {
        for (merchant, ranked) in weights.merchants().filter(|(m, _)| new(*m)) {
            for (slot, &(customer, _)) in ranked.iter().enumerate() {
                self.pairs
                    .get_or_default(pair_key(merchant, customer))
                    .weight_slot = slot as u32;
            }
        }
        self.add(snapshot);
    }

    /// Drops every pair of the merchants `gone` accepts (the key groups a
    /// cluster worker hands over).
    pub fn forget(&mut self, gone: impl Fn(MerchantId) -> bool) {
        let present = &mut self.present;
        self.pairs.retain(|key, totals| {
            let keep = !gone(MerchantId((key >> 32) as u32));
            if !keep && totals.count > 0 {
                *present -= 1;
            }
            keep
        });
    }

    /// Sets the committed totals of `snapshot`'s pairs, which the table
    /// holds with no transaction yet.
    fn add(&mut self, snapshot: &Snapshot) {
        for pair in snapshot.pairs.iter().filter(|pair| pair.count > 0) {
            let totals = self
                .pairs
                .get_or_default(pair_key(pair.merchant, pair.customer));
            *totals = Totals {
                count: pair.count,
                amount: pair.amount,
                gender: pair.gender,
                ..*totals
            };
            self.present += 1;
        }
    }

    /// Folds one chunk into the table and returns what it changed.
    pub fn fold(&mut self, delta: &ChunkDelta) -> ChunkUpdate {
        let present = &mut self.present;
        let table = &mut self.pairs;
        let pairs = delta
            .pairs
            .iter()
            .enumerate()
            .map(|(index, pair)| {
                if let Some(ahead) = delta.pairs.get(index + PREFETCH_AHEAD) {
                    table.prefetch(pair_key(ahead.merchant, ahead.customer));
                }
                let totals = table.get_or_default(pair_key(pair.merchant, pair.customer));
                if totals.count == 0 {
                    totals.gender = pair.first_gender;
                    *present += 1;
                }
                totals.count += u64::from(pair.count);
                totals.amount = totals.amount.saturating_add(pair.amount);
                PairUpdate {
                    merchant: pair.merchant,
                    customer: pair.customer,
                    added: pair.count,
                    count: totals.count,
                    amount: totals.amount,
                    gender: totals.gender,
                    weight_slot: totals.weight_slot,
                }
            })
            .collect();
        ChunkUpdate { pairs }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::detect::{PairDelta, PairState};

    fn delta(pairs: &[(u32, u32, u32, i64, Gender)]) -> ChunkDelta {
        ChunkDelta {
            pairs: pairs
                .iter()
                .map(|&(m, c, count, amount, first_gender)| PairDelta {
                    merchant: MerchantId(m),
                    customer: CustomerId(c),
                    count,
                    amount: Cents(amount),
                    first_gender,
                })
                .collect(),
        }
    }

    #[test]
    fn totals_accumulate_and_keep_the_first_gender() {
        let weights = WeightTable::from_entries([
            (MerchantId(1), CustomerId(10), Cents(500), 1),
            (MerchantId(1), CustomerId(11), Cents(100), 1),
        ]);
        let mut table = PairTotals::new(&weights);
        let first = table.fold(&delta(&[
            (1, 10, 2, 300, Gender::Female),
            (1, 12, 1, 50, Gender::Male),
        ]));
        assert_eq!(
            first.pairs,
            vec![
                PairUpdate {
                    merchant: MerchantId(1),
                    customer: CustomerId(10),
                    added: 2,
                    count: 2,
                    amount: Cents(300),
                    gender: Gender::Female,
                    weight_slot: 1,
                },
                PairUpdate {
                    merchant: MerchantId(1),
                    customer: CustomerId(12),
                    added: 1,
                    count: 1,
                    amount: Cents(50),
                    gender: Gender::Male,
                    weight_slot: NO_WEIGHT,
                },
            ]
        );
        assert!(first.pairs.iter().all(PairUpdate::is_new));
        let second = table.fold(&delta(&[(1, 10, 3, 1, Gender::Male)]));
        let update = second.pairs[0];
        assert_eq!(
            (update.added, update.count, update.amount),
            (3, 5, Cents(301))
        );
        assert_eq!(update.before(), 2);
        assert!(!update.is_new());
        assert_eq!(
            update.gender,
            Gender::Female,
            "the first row's gender stays"
        );
        assert_eq!(table.len(), 2);
    }

    #[test]
    fn restore_replaces_everything_with_the_snapshot() {
        let weights = WeightTable::from_entries([(MerchantId(1), CustomerId(10), Cents(5), 1)]);
        let mut table = PairTotals::new(&weights);
        table.fold(&delta(&[(2, 20, 1, 1, Gender::Male)]));
        table.restore(&Snapshot {
            pairs: vec![PairState {
                merchant: MerchantId(1),
                customer: CustomerId(10),
                count: 7,
                amount: Cents(70),
                gender: Gender::Male,
            }],
            emitted: Vec::new(),
        });
        assert_eq!(table.len(), 1);
        let update = table.fold(&delta(&[
            (1, 10, 1, 1, Gender::Female),
            (2, 20, 1, 1, Gender::Male),
        ]));
        assert_eq!(
            (update.pairs[0].count, update.pairs[0].amount),
            (8, Cents(71))
        );
        assert_eq!(update.pairs[0].gender, Gender::Male);
        assert_eq!(update.pairs[0].weight_slot, 0);
        assert!(
            update.pairs[1].is_new(),
            "pairs not in the snapshot start over"
        );
    }
}
