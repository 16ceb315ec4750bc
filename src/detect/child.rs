//! PatId2 (`CHILD`): a customer with at least 80 transactions at a merchant
//! whose average amount is strictly below 23.00, i.e. `s < 2300 * n` in
//! hundredths. Only pairs the chunk touched can change, so only they are
//! checked.

use rustc_hash::{FxHashMap, FxHashSet};

use super::{
    Cents, ChunkDelta, CustomerId, Detection, DetectionKey, Evidence, MerchantId, Pattern,
    PatternEngine, Shard, Snapshot, Thresholds,
};

pub struct ChildDetector {
    shard: Shard,
    thresholds: Thresholds,
    totals: FxHashMap<(MerchantId, CustomerId), Totals>,
    emitted: FxHashSet<(MerchantId, CustomerId)>,
}

#[derive(Clone, Copy, Default)]
struct Totals {
    count: u64,
    amount: Cents,
}

impl ChildDetector {
    pub fn new(shard: Shard, thresholds: Thresholds) -> Self {
        ChildDetector {
            shard,
            thresholds,
            totals: FxHashMap::default(),
            emitted: FxHashSet::default(),
        }
    }

    fn holds(&self, totals: Totals) -> bool {
        totals.count >= self.thresholds.child_min_txns
            && i128::from(totals.amount.0)
                < i128::from(self.thresholds.child_max_avg_cents) * i128::from(totals.count)
    }
}

impl PatternEngine for ChildDetector {
    fn pattern(&self) -> Pattern {
        Pattern::Child
    }

    fn restore(&mut self, snapshot: &Snapshot) {
        self.totals.clear();
        self.emitted.clear();
        for pair in snapshot
            .pairs
            .iter()
            .filter(|p| self.shard.owns(p.merchant))
        {
            self.totals.insert(
                (pair.merchant, pair.customer),
                Totals {
                    count: pair.count,
                    amount: pair.amount,
                },
            );
        }
        for key in &snapshot.emitted {
            if key.pattern == Pattern::Child
                && self.shard.owns(key.merchant)
                && let Some(customer) = key.customer
            {
                self.emitted.insert((key.merchant, customer));
            }
        }
    }

    fn apply(&mut self, delta: &ChunkDelta, out: &mut Vec<Detection>) {
        for pair in delta.pairs.iter().filter(|p| self.shard.owns(p.merchant)) {
            let key = (pair.merchant, pair.customer);
            let totals = self.totals.entry(key).or_default();
            totals.count += u64::from(pair.count);
            totals.amount = totals.amount.saturating_add(pair.amount);
            let totals = *totals;
            if self.holds(totals) && self.emitted.insert(key) {
                out.push(Detection {
                    key: DetectionKey {
                        pattern: Pattern::Child,
                        merchant: pair.merchant,
                        customer: Some(pair.customer),
                    },
                    evidence: Evidence {
                        txn_count: Some(totals.count),
                        amount_sum: Some(totals.amount),
                        ..Evidence::default()
                    },
                });
            }
        }
    }
}
