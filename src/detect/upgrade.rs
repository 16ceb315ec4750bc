//! PatId1 (`UPGRADE`): at a merchant with more than 50,000 transactions, a
//! customer in the top decile by transaction count and the bottom decile by
//! weight.
//!
//! Ranks are SQL `PERCENT_RANK()` ascending, compared exactly:
//! `10 * less_n >= 9 * (|P| - 1)` and `10 * less_w <= |W| - 1`. Instead of
//! re-ranking every customer after every chunk, a big merchant keeps
//!
//! - a Fenwick tree over the transaction counts of its customers, which
//!   gives the smallest count that is in the top decile in `O(log n)`, and
//! - every customer with a weight at the merchant, sorted by weight once
//!   (weights never change), each with its count and whether it was
//!   emitted, so that the scan of the bottom decile (the only customers
//!   that can match) reads one array in order and stops at the decile's
//!   end, and a count update is one hash lookup.

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
    /// `n(c, m)` for every customer of `P(m)`, with the customer's place in
    /// the ranking, so that a count update costs one hash lookup.
    counts: FxHashMap<CustomerId, Tally>,
    /// Built once the merchant passes the size threshold.
    ranking: Option<Ranking>,
}

#[derive(Clone, Copy)]
struct Tally {
    count: u64,
    /// Index into `Ranking::by_weight`; `NO_SLOT` while the merchant has no
    /// ranking or the customer has no weight at it.
    slot: u32,
}

const NO_SLOT: u32 = u32::MAX;

struct Ranking {
    /// Multiset of `n(d, m)` over `P(m)`.
    counts: CountTree,
    /// Every customer with a weight at the merchant, ordered by weight once
    /// and for all (weights never change); `W(m)` is those with a count.
    by_weight: Vec<Slot>,
    /// Where each weighted customer sits in `by_weight` (read when a
    /// customer first appears at the merchant, then kept in its `Tally`).
    slot_of: FxHashMap<CustomerId, u32>,
    /// `|W(m)|`.
    present: u64,
}

#[derive(Clone, Copy)]
struct Slot {
    weight: Weight,
    customer: CustomerId,
    /// First slot with the same weight (ties share a rank).
    group_start: u32,
    /// `n(c, m)`; 0 while the customer is not in `P(m)`.
    count: u64,
    emitted: bool,
}

impl Ranking {
    fn build(
        merchant: MerchantId,
        counts: &mut FxHashMap<CustomerId, Tally>,
        weights: &WeightTable,
        emitted: &FxHashSet<(MerchantId, CustomerId)>,
    ) -> Ranking {
        let mut tree = CountTree::new();
        for tally in counts.values() {
            tree.insert(tally.count);
        }
        let mut by_weight: Vec<Slot> = weights
            .customers_of(merchant)
            .map(|(customer, weight)| Slot {
                weight,
                customer,
                group_start: 0,
                count: counts.get(&customer).map_or(0, |tally| tally.count),
                emitted: emitted.contains(&(merchant, customer)),
            })
            .collect();
        by_weight
            .sort_unstable_by(|a, b| a.weight.cmp(&b.weight).then(a.customer.cmp(&b.customer)));
        let mut slot_of = FxHashMap::default();
        slot_of.reserve(by_weight.len());
        for index in 0..by_weight.len() {
            by_weight[index].group_start =
                if index > 0 && by_weight[index - 1].weight == by_weight[index].weight {
                    by_weight[index - 1].group_start
                } else {
                    index as u32
                };
            slot_of.insert(by_weight[index].customer, index as u32);
        }
        for (customer, tally) in counts.iter_mut() {
            tally.slot = slot_of.get(customer).copied().unwrap_or(NO_SLOT);
        }
        let present = by_weight.iter().filter(|slot| slot.count > 0).count() as u64;
        Ranking {
            counts: tree,
            by_weight,
            slot_of,
            present,
        }
    }

    /// A customer's count changed from `before` (0: new) to `tally.count`;
    /// a newcomer's place in `by_weight` is looked up once, into its tally.
    fn update(&mut self, customer: CustomerId, tally: &mut Tally, before: u64) {
        if before == 0 {
            self.counts.insert(tally.count);
            tally.slot = self.slot_of.get(&customer).copied().unwrap_or(NO_SLOT);
        } else {
            self.counts.replace(before, tally.count);
        }
        if tally.slot != NO_SLOT {
            let slot = &mut self.by_weight[tally.slot as usize];
            if slot.count == 0 {
                self.present += 1;
            }
            slot.count = tally.count;
        }
    }
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
        let ranking = population.ranking.get_or_insert_with(|| {
            Ranking::build(
                merchant,
                &mut population.counts,
                &self.weights,
                &self.emitted,
            )
        });
        let customers = population.counts.len() as u64;
        let weighted = ranking.present;
        // With a single customer, pr_n is 0 by definition: nobody matches.
        if customers < 2 || weighted == 0 {
            return;
        }
        // pr_n(c) >= 0.9  <=>  less_n(c) >= ceil(9 (|P| - 1) / 10), which
        // holds exactly for counts from `top` on.
        let needed = (9 * (customers - 1)).div_ceil(10);
        let top = if needed == 0 {
            1
        } else {
            match ranking.counts.lower_bound(needed) {
                Some(value) => value + 1,
                None => return,
            }
        };
        // Walk W(m) from the lightest: less_w is the number of present
        // customers before a customer's weight group.
        let mut present_before = 0u64;
        let mut less_w = 0u64;
        for index in 0..ranking.by_weight.len() {
            let slot = ranking.by_weight[index];
            if slot.group_start as usize == index {
                less_w = present_before;
                if 10 * less_w > weighted - 1 {
                    break;
                }
            }
            if slot.count == 0 {
                continue;
            }
            present_before += 1;
            if slot.emitted || slot.count < top {
                continue;
            }
            ranking.by_weight[index].emitted = true;
            self.emitted.insert((merchant, slot.customer));
            out.push(Detection {
                key: DetectionKey {
                    pattern: Pattern::Upgrade,
                    merchant,
                    customer: Some(slot.customer),
                },
                evidence: Evidence {
                    txn_count: Some(slot.count),
                    weight: Some(slot.weight),
                    txn_rank: Some(Ratio {
                        numerator: ranking.counts.count_below(slot.count),
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
            population.counts.insert(
                pair.customer,
                Tally {
                    count: pair.count,
                    slot: NO_SLOT,
                },
            );
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
            let tally = population.counts.entry(pair.customer).or_insert(Tally {
                count: 0,
                slot: NO_SLOT,
            });
            let before = tally.count;
            tally.count += u64::from(pair.count);
            if let Some(ranking) = population.ranking.as_mut() {
                ranking.update(pair.customer, tally, before);
            }
            self.touched.push(pair.merchant);
        }
        self.touched.sort_unstable();
        self.touched.dedup();
        let touched = std::mem::take(&mut self.touched);
        for &merchant in &touched {
            self.evaluate(merchant, out);
        }
        self.touched = touched;
    }
}
