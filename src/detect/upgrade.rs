//! PatId1 (`UPGRADE`): at a merchant with more than 50,000 transactions, a
//! customer in the top decile by transaction count and the bottom decile by
//! weight.
//!
//! Ranks are SQL `PERCENT_RANK()` ascending, compared exactly:
//! `10 * less_n >= 9 * (|P| - 1)` and `10 * less_w <= |W| - 1`. Instead of
//! re-ranking every customer after every chunk, every merchant keeps
//!
//! - a Fenwick tree over the transaction counts of its customers, which
//!   gives the smallest count that is in the top decile in `O(log n)`, and
//! - one slot per customer with a weight at the merchant, in the weight
//!   table's rank order (weights never change), each with its count and
//!   whether it was emitted, so that the scan of the bottom decile (the only
//!   customers that can match) reads one array in order and stops at the
//!   decile's end.
//!
//! The [`ChunkUpdate`] brings each pair's count before and after the chunk
//! and its slot, so a pair costs a tree update and one array write; the
//! pattern is evaluated only for merchants past the size threshold that
//! the chunk touched.

use std::sync::Arc;

use rustc_hash::FxHashMap;

use super::fenwick::CountTree;
use super::{
    ChunkUpdate, Detection, DetectionKey, Evidence, MerchantId, NO_WEIGHT, Pattern, PatternEngine,
    Ratio, Shard, Snapshot, Thresholds, WeightTable,
};
use crate::table::{PREFETCH_AHEAD, prefetch_line};

pub struct UpgradeDetector {
    shard: Shard,
    thresholds: Thresholds,
    weights: Arc<WeightTable>,
    merchants: FxHashMap<MerchantId, Population>,
    touched: Vec<MerchantId>,
}

struct Population {
    /// `N(m)`.
    transactions: u64,
    /// `|P(m)|`.
    customers: u64,
    /// Multiset of `n(d, m)` over `P(m)`.
    counts: CountTree,
    /// One per customer with a weight at the merchant, in rank order.
    slots: Vec<Slot>,
    /// `|W(m)|`: slots with a count.
    present: u64,
}

#[derive(Clone, Copy)]
struct Slot {
    /// `n(c, m)`; 0 while the customer is not in `P(m)`.
    count: u64,
    /// First slot with the same weight (ties share a rank).
    group_start: u32,
    emitted: bool,
}

impl Population {
    fn new(merchant: MerchantId, weights: &WeightTable) -> Population {
        let ranked = weights.ranked(merchant);
        let mut slots: Vec<Slot> = Vec::with_capacity(ranked.len());
        for index in 0..ranked.len() {
            let group_start = if index > 0 && ranked[index - 1].1 == ranked[index].1 {
                slots[index - 1].group_start
            } else {
                index as u32
            };
            slots.push(Slot {
                count: 0,
                group_start,
                emitted: false,
            });
        }
        Population {
            transactions: 0,
            customers: 0,
            counts: CountTree::new(),
            slots,
            present: 0,
        }
    }

    /// `added` transactions took a customer's count from `before` (0: new)
    /// to `after`.
    #[inline]
    fn update(&mut self, added: u64, before: u64, after: u64, weight_slot: u32) {
        self.transactions += added;
        if before == 0 {
            self.customers += 1;
            self.counts.insert(after);
        } else {
            self.counts.replace(before, after);
        }
        if weight_slot != NO_WEIGHT {
            let slot = &mut self.slots[weight_slot as usize];
            if slot.count == 0 {
                self.present += 1;
            }
            slot.count = after;
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
            touched: Vec::new(),
        }
    }

    fn population(&mut self, merchant: MerchantId) -> &mut Population {
        let weights = &self.weights;
        self.merchants
            .entry(merchant)
            .or_insert_with(|| Population::new(merchant, weights))
    }

    fn evaluate(&mut self, merchant: MerchantId, out: &mut Vec<Detection>) {
        let population = self.merchants.get_mut(&merchant).expect("touched merchant");
        if population.transactions <= self.thresholds.upgrade_min_merchant_txns {
            return;
        }
        let customers = population.customers;
        let weighted = population.present;
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
            match population.counts.lower_bound(needed) {
                Some(value) => value + 1,
                None => return,
            }
        };
        let ranked = self.weights.ranked(merchant);
        // Walk W(m) from the lightest: less_w is the number of present
        // customers before a customer's weight group.
        let mut present_before = 0u64;
        let mut less_w = 0u64;
        for (index, &(customer, weight)) in ranked.iter().enumerate() {
            let slot = population.slots[index];
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
            population.slots[index].emitted = true;
            out.push(Detection {
                key: DetectionKey {
                    pattern: Pattern::Upgrade,
                    merchant,
                    customer: Some(customer),
                },
                evidence: Evidence {
                    txn_count: Some(slot.count),
                    weight: Some(weight),
                    txn_rank: Some(Ratio {
                        numerator: population.counts.count_below(slot.count),
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
        for pair in &snapshot.pairs {
            if !self.shard.owns(pair.merchant) || pair.count == 0 {
                continue;
            }
            let slot = self
                .weights
                .slot(pair.merchant, pair.customer)
                .unwrap_or(NO_WEIGHT);
            self.population(pair.merchant)
                .update(pair.count, 0, pair.count, slot);
        }
        for key in &snapshot.emitted {
            if key.pattern == Pattern::Upgrade
                && self.shard.owns(key.merchant)
                && let Some(customer) = key.customer
                && let Some(slot) = self.weights.slot(key.merchant, customer)
            {
                self.population(key.merchant).slots[slot as usize].emitted = true;
            }
        }
    }

    fn apply(&mut self, update: &ChunkUpdate, out: &mut Vec<Detection>) {
        self.touched.clear();
        let shard = self.shard;
        for (index, pair) in update.pairs.iter().enumerate() {
            // A big merchant's slots do not fit in cache: ask for the slot
            // of a pair a little ahead, so that its miss overlaps the work
            // on this one instead of stalling it.
            if let Some(ahead) = update.pairs.get(index + PREFETCH_AHEAD)
                && ahead.weight_slot != NO_WEIGHT
                && shard.owns(ahead.merchant)
                && let Some(population) = self.merchants.get(&ahead.merchant)
                && let Some(slot) = population.slots.get(ahead.weight_slot as usize)
            {
                prefetch_line(slot);
            }
            if !shard.owns(pair.merchant) {
                continue;
            }
            self.population(pair.merchant).update(
                u64::from(pair.added),
                pair.before(),
                pair.count,
                pair.weight_slot,
            );
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
