//! PatId2 (`CHILD`): a customer with at least 80 transactions at a merchant
//! whose average amount is strictly below 23.00, i.e. `s < 2300 * n` in
//! hundredths. Only pairs the chunk touched can change, so only they are
//! checked, on the totals the [`ChunkUpdate`] carries: the detector itself
//! only remembers what it has emitted.

use rustc_hash::FxHashSet;

use super::{
    ChunkUpdate, CustomerId, Detection, DetectionKey, Evidence, MerchantId, PairUpdate, Pattern,
    PatternEngine, Shard, Snapshot, Thresholds,
};

pub struct ChildDetector {
    shard: Shard,
    thresholds: Thresholds,
    emitted: FxHashSet<(MerchantId, CustomerId)>,
}

impl ChildDetector {
    pub fn new(shard: Shard, thresholds: Thresholds) -> Self {
        ChildDetector {
            shard,
            thresholds,
            emitted: FxHashSet::default(),
        }
    }

    fn holds(&self, pair: &PairUpdate) -> bool {
        pair.count >= self.thresholds.child_min_txns
            && i128::from(pair.amount.0)
                < i128::from(self.thresholds.child_max_avg_cents) * i128::from(pair.count)
    }
}

impl PatternEngine for ChildDetector {
    fn pattern(&self) -> Pattern {
        Pattern::Child
    }

    fn merge(&mut self, snapshot: &Snapshot) {
        for key in &snapshot.emitted {
            if key.pattern == Pattern::Child
                && self.shard.owns(key.merchant)
                && let Some(customer) = key.customer
            {
                self.emitted.insert((key.merchant, customer));
            }
        }
    }

    fn forget(&mut self, gone: &dyn Fn(MerchantId) -> bool) {
        self.emitted.retain(|(merchant, _)| !gone(*merchant));
    }

    fn apply(&mut self, update: &ChunkUpdate, out: &mut Vec<Detection>) {
        for pair in update.pairs.iter().filter(|p| self.shard.owns(p.merchant)) {
            if self.holds(pair) && self.emitted.insert((pair.merchant, pair.customer)) {
                out.push(Detection {
                    key: DetectionKey {
                        pattern: Pattern::Child,
                        merchant: pair.merchant,
                        customer: Some(pair.customer),
                    },
                    evidence: Evidence {
                        txn_count: Some(pair.count),
                        amount_sum: Some(pair.amount),
                        ..Evidence::default()
                    },
                });
            }
        }
    }
}
