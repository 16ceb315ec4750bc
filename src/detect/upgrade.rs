//! PatId1 (`UPGRADE`): at a merchant with more than 50,000 transactions, a
//! customer in the top decile by transaction count and the bottom decile by
//! weight.
//!
//! Ranks are SQL `PERCENT_RANK()` ascending, compared exactly:
//! `10 * less_n >= 9 * (|P| - 1)` and `10 * less_w <= |W| - 1`. Instead of
//! re-sorting every customer after every chunk, a big merchant keeps its
//! weighted customers ordered by weight (only the bottom decile can match,
//! so the scan stops there) and a Fenwick tree over transaction counts
//! (so `less_n` of a candidate costs `O(log n)`).

use std::collections::BTreeSet;
use std::sync::Arc;

use rustc_hash::{FxHashMap, FxHashSet};

use super::fenwick::CountTree;
use super::{
    ChunkDelta, CustomerId, Detection, DetectionKey, Evidence, MerchantId, Pattern, PatternEngine,
    Ratio, Shard, Snapshot, Thresholds, Weight, WeightTable,
};

pub struct UpgradeDetector {
    shard: Shard,
    thresholds: Thresholds,
    weights: Arc<WeightTable>,
    merchants: FxHashMap<MerchantId, Population>,
    emitted: FxHashSet<(MerchantId, CustomerId)>,
    touched: Vec<MerchantId>,
}

#[derive(Default)]
struct Population {
    /// `N(m)`.
    transactions: u64,
    /// `n(c, m)` for every customer of `P(m)`.
    counts: FxHashMap<CustomerId, u64>,
    /// Built once the merchant passes the size threshold.
    ranking: Option<Ranking>,
}

struct Ranking {
    /// Multiset of `n(d, m)` over `P(m)`.
    counts: CountTree,
    /// `W(m)` ordered by weight.
    weighted: BTreeSet<(Weight, CustomerId)>,
}

impl UpgradeDetector {
    pub fn new(shard: Shard, thresholds: Thresholds, weights: Arc<WeightTable>) -> Self {
        UpgradeDetector {
            shard,
            thresholds,
            weights,
            merchants: FxHashMap::default(),
            emitted: FxHashSet::default(),
            touched: Vec::new(),
        }
    }

    fn evaluate(&mut self, merchant: MerchantId, out: &mut Vec<Detection>) {
        let population = self.merchants.get_mut(&merchant).expect("touched merchant");
        if population.transactions <= self.thresholds.upgrade_min_merchant_txns {
            return;
        }
        let ranking = population
            .ranking
            .get_or_insert_with(|| Ranking::build(merchant, &population.counts, &self.weights));
        let customers = population.counts.len() as u64;
        let weighted = ranking.weighted.len() as u64;
        // With a single customer, pr_n is 0 by definition: nobody matches.
        if customers < 2 || weighted == 0 {
            return;
        }
        let mut less_w = 0u64;
        let mut group_weight: Option<Weight> = None;
        for (position, &(weight, customer)) in ranking.weighted.iter().enumerate() {
            if group_weight != Some(weight) {
                group_weight = Some(weight);
                less_w = position as u64;
                if 10 * less_w > weighted - 1 {
                    break;
                }
            }
            if self.emitted.contains(&(merchant, customer)) {
                continue;
            }
            let count = population.counts[&customer];
            let less_n = ranking.counts.count_below(count);
            if 10 * less_n >= 9 * (customers - 1) {
                out.push(Detection {
                    key: DetectionKey {
                        pattern: Pattern::Upgrade,
                        merchant,
                        customer: Some(customer),
                    },
                    evidence: Evidence {
                        txn_count: Some(count),
                        weight: Some(weight),
                        txn_rank: Some(Ratio {
                            numerator: less_n,
                            denominator: customers - 1,
                        }),
                        weight_rank: Some(Ratio {
                            numerator: less_w,
                            denominator: weighted - 1,
                        }),
                        ..Evidence::default()
                    },
                });
            }
        }
    }
}

impl Ranking {
    fn build(
        merchant: MerchantId,
        counts: &FxHashMap<CustomerId, u64>,
        weights: &WeightTable,
    ) -> Ranking {
        let mut ranking = Ranking {
            counts: CountTree::new(),
            weighted: BTreeSet::new(),
        };
        for (&customer, &count) in counts {
            ranking.counts.insert(count);
            if let Some(weight) = weights.get(merchant, customer) {
                ranking.weighted.insert((weight, customer));
            }
        }
        ranking
    }
}

impl PatternEngine for UpgradeDetector {
    fn pattern(&self) -> Pattern {
        Pattern::Upgrade
    }

    fn restore(&mut self, snapshot: &Snapshot) {
        self.merchants.clear();
        self.emitted.clear();
        for pair in snapshot
            .pairs
            .iter()
            .filter(|p| self.shard.owns(p.merchant))
        {
            let population = self.merchants.entry(pair.merchant).or_default();
            population.transactions += pair.count;
            population.counts.insert(pair.customer, pair.count);
        }
        for key in &snapshot.emitted {
            if key.pattern == Pattern::Upgrade
                && self.shard.owns(key.merchant)
                && let Some(customer) = key.customer
            {
                self.emitted.insert((key.merchant, customer));
            }
        }
    }

    fn apply(&mut self, delta: &ChunkDelta, out: &mut Vec<Detection>) {
        self.touched.clear();
        for pair in delta.pairs.iter().filter(|p| self.shard.owns(p.merchant)) {
            let population = self.merchants.entry(pair.merchant).or_default();
            population.transactions += u64::from(pair.count);
            let count = population.counts.entry(pair.customer).or_insert(0);
            let before = *count;
            *count += u64::from(pair.count);
            let after = *count;
            if let Some(ranking) = population.ranking.as_mut() {
                if before == 0 {
                    ranking.counts.insert(after);
                    if let Some(weight) = self.weights.get(pair.merchant, pair.customer) {
                        ranking.weighted.insert((weight, pair.customer));
                    }
                } else {
                    ranking.counts.replace(before, after);
                }
            }
            self.touched.push(pair.merchant);
        }
        self.touched.sort_unstable();
        self.touched.dedup();
        let touched = std::mem::take(&mut self.touched);
        for &merchant in &touched {
            let start = out.len();
            self.evaluate(merchant, out);
            for detection in &out[start..] {
                if let Some(customer) = detection.key.customer {
                    self.emitted.insert((merchant, customer));
                }
            }
        }
        self.touched = touched;
    }
}
