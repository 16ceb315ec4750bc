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
//!   table's rank order (weights never change), holding its count (two
//!   bytes: see `Population::slot_counts`), with a bitset of who was
//!   emitted beside it, so that the scan of the bottom decile (the only
//!   customers that can match) reads one array in order and stops at the
//!   decile's end.
//!
//! The [`ChunkUpdate`] brings each pair's count before and after the chunk
//! and its slot, so a pair costs a tree update and one array write; the
//! pattern is evaluated only for merchants past the size threshold that
//! the chunk touched.
//!
//! Most evaluations do not scan the bottom decile either. After one, every
//! present, unemitted slot before the decile's end has a count below the
//! top decile's threshold (`top`), or it would have been emitted. A slot
//! the next chunk did not touch keeps its count, so it can match only if
//! `top` fell or the decile's end moved past it. Each merchant therefore
//! remembers the `top` and end of its last evaluation: when `top` did not
//! fall, only the slots the chunk touched before the old end and the slots
//! between the old and the new end are checked. Bitsets over the slots
//! (who is present, where weight groups start) give the decile's end and a
//! customer's `less_w` by popcount, without reading the slots; when `top`
//! fell, the decile is scanned as before.

use std::sync::Arc;

use rustc_hash::FxHashMap;

use super::by_merchant::ByMerchant;
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
    merchants: ByMerchant<Population>,
    touched: Vec<MerchantId>,
    /// The chunk's slots that lie before their merchant's last decile end.
    touched_slots: Vec<(MerchantId, u32)>,
}

struct Population {
    /// `N(m)`.
    transactions: u64,
    /// `|P(m)|`.
    customers: u64,
    /// Multiset of `n(d, m)` over `P(m)`.
    counts: CountTree,
    /// `n(c, m)` of every customer with a weight at the merchant, in the
    /// weight table's rank order (0 while not in `P(m)`). Every pair of a
    /// chunk writes its count here, and a big merchant's counts do not fit
    /// in cache: two bytes each, so the array spans a quarter of the pages
    /// and cache lines eight would, and the write never waits for a
    /// read (whether the customer is new comes with the update; whether it
    /// was emitted is kept in `emitted_bits`). Counts from [`SATURATED`] on
    /// are kept exactly in `large_counts` (see [`Population::slot_count`]).
    slot_counts: Vec<u16>,
    large_counts: FxHashMap<u32, u64>,
    /// One bit per slot: the customer was emitted.
    emitted_bits: Vec<u64>,
    /// `|W(m)|`: slots with a count.
    present: u64,
    /// One bit per slot: the customer is in `W(m)`.
    present_bits: Vec<u64>,
    /// One bit per slot: the slot starts a weight group.
    group_bits: Vec<u64>,
    /// What the last evaluation established, unless the merchant was
    /// touched since without being evaluated.
    settled: Option<Settled>,
}

/// A slot count this large or larger lives in `Population::large_counts`.
const SATURATED: u16 = u16::MAX;

/// After an evaluation: every present, unemitted slot before `end` has a
/// count below `top`.
#[derive(Clone, Copy)]
struct Settled {
    top: u64,
    end: usize,
}

impl Population {
    fn new(merchant: MerchantId, weights: &WeightTable) -> Population {
        let ranked = weights.ranked(merchant);
        let mut group_bits = vec![0u64; ranked.len().div_ceil(64)];
        for index in 0..ranked.len() {
            // Ties share a rank: a group starts where the weight changes.
            if index == 0 || ranked[index - 1].1 != ranked[index].1 {
                set_bit(&mut group_bits, index);
            }
        }
        Population {
            transactions: 0,
            customers: 0,
            counts: CountTree::new(),
            slot_counts: vec![0; ranked.len()],
            large_counts: FxHashMap::default(),
            emitted_bits: vec![0u64; ranked.len().div_ceil(64)],
            present: 0,
            present_bits: vec![0u64; ranked.len().div_ceil(64)],
            group_bits,
            settled: None,
        }
    }

    /// Where the scan of the bottom decile by weight stops: at the first
    /// group start whose `less_w` is past a tenth of `|W(m)| - 1`, that is
    /// the first group start after the present slot that has
    /// `(|W(m)| - 1) / 10` present slots before it. Needs `present > 0`.
    fn decile_end(&self) -> usize {
        let last = select(&self.present_bits, (self.present - 1) / 10)
            .expect("present counts the set bits");
        next_set(&self.group_bits, last + 1, self.slot_counts.len())
    }

    /// The count of slot `index`.
    #[inline]
    fn slot_count(&self, index: usize) -> u64 {
        match self.slot_counts[index] {
            SATURATED => self.large_counts[&(index as u32)],
            small => u64::from(small),
        }
    }

    #[inline]
    fn set_slot_count(&mut self, index: usize, count: u64) {
        match u16::try_from(count) {
            Ok(small) if small < SATURATED => self.slot_counts[index] = small,
            _ => {
                self.slot_counts[index] = SATURATED;
                self.large_counts.insert(index as u32, count);
            }
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
            let index = weight_slot as usize;
            if before == 0 {
                self.present += 1;
                set_bit(&mut self.present_bits, index);
            }
            self.set_slot_count(index, after);
        }
    }
}

impl UpgradeDetector {
    pub fn new(shard: Shard, thresholds: Thresholds, weights: Arc<WeightTable>) -> Self {
        UpgradeDetector {
            shard,
            thresholds,
            weights,
            merchants: ByMerchant::default(),
            touched: Vec::new(),
            touched_slots: Vec::new(),
        }
    }

    fn population(&mut self, merchant: MerchantId) -> &mut Population {
        let weights = &self.weights;
        self.merchants
            .get_or_insert_with(merchant, || Population::new(merchant, weights))
    }

    /// Emits the matches of a merchant the chunk touched; `touched` are the
    /// chunk's slots at the merchant that lie before its last decile end,
    /// ascending.
    fn evaluate(
        &mut self,
        merchant: MerchantId,
        touched: &[(MerchantId, u32)],
        out: &mut Vec<Detection>,
    ) {
        let population = self.merchants.get_mut(merchant).expect("touched merchant");
        let settled_before = population.settled.take();
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
        let end = population.decile_end();
        let ranked = self.weights.ranked(merchant);
        let mut emit = |population: &mut Population, index: usize, less_w: u64| {
            set_bit(&mut population.emitted_bits, index);
            let count = population.slot_count(index);
            let (customer, weight) = ranked[index];
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
                        numerator: population.counts.count_below(count),
                        denominator: customers - 1,
                    }),
                    weight_rank: Some(Ratio {
                        numerator: less_w,
                        denominator: weighted - 1,
                    }),
                    ..Evidence::default()
                },
            });
        };
        match settled_before {
            Some(settled) if top >= settled.top => {
                // Only these can newly match (see the module docs).
                let newly_reached = settled.end.min(end)..end;
                let candidates = touched
                    .iter()
                    .map(|&(_, index)| index as usize)
                    .take_while(|&index| index < end)
                    .chain(newly_reached);
                for index in candidates {
                    if population.slot_count(index) < top || bit(&population.emitted_bits, index) {
                        continue;
                    }
                    let group_start = previous_set(&population.group_bits, index);
                    let less_w = rank(&population.present_bits, group_start);
                    emit(population, index, less_w);
                }
            }
            _ => {
                // Walk W(m) from the lightest: less_w is the number of
                // present customers before a customer's weight group.
                let mut present_before = 0u64;
                let mut less_w = 0u64;
                for index in 0..end {
                    let count = population.slot_count(index);
                    if bit(&population.group_bits, index) {
                        less_w = present_before;
                        debug_assert!(10 * less_w < weighted, "scan ends too late");
                    }
                    if count == 0 {
                        continue;
                    }
                    present_before += 1;
                    if count < top || bit(&population.emitted_bits, index) {
                        continue;
                    }
                    emit(population, index, less_w);
                }
                debug_assert!(
                    end == population.slot_counts.len() || 10 * present_before > weighted - 1,
                    "the decile ends at a group start past a tenth"
                );
            }
        }
        population.settled = Some(Settled { top, end });
    }
}

/// Sets bit `index` of a bitset.
fn set_bit(bits: &mut [u64], index: usize) {
    bits[index / 64] |= 1 << (index % 64);
}

fn bit(bits: &[u64], index: usize) -> bool {
    bits[index / 64] & (1 << (index % 64)) != 0
}

/// The last set bit at or before `index`; bit 0 must be set.
fn previous_set(bits: &[u64], index: usize) -> usize {
    let mut word_index = index / 64;
    let mut word = bits[word_index] & (!0u64 >> (63 - index % 64));
    while word == 0 {
        word_index -= 1;
        word = bits[word_index];
    }
    word_index * 64 + 63 - word.leading_zeros() as usize
}

/// How many bits before `index` are set.
fn rank(bits: &[u64], index: usize) -> u64 {
    let (word, bit) = (index / 64, index % 64);
    let whole: u64 = bits[..word].iter().map(|w| u64::from(w.count_ones())).sum();
    if bit == 0 {
        whole
    } else {
        whole + u64::from((bits[word] & ((1u64 << bit) - 1)).count_ones())
    }
}

/// The set bit with `before` set bits before it.
fn select(bits: &[u64], mut before: u64) -> Option<usize> {
    for (index, &word) in bits.iter().enumerate() {
        let ones = u64::from(word.count_ones());
        if before < ones {
            let mut word = word;
            for _ in 0..before {
                word &= word - 1;
            }
            return Some(index * 64 + word.trailing_zeros() as usize);
        }
        before -= ones;
    }
    None
}

/// The first set bit at or after `from`, or `len` if there is none before
/// `len`.
fn next_set(bits: &[u64], from: usize, len: usize) -> usize {
    let mut index = from / 64;
    let Some(&first) = bits.get(index) else {
        return len;
    };
    let mut word = first & (!0u64 << (from % 64));
    loop {
        if word != 0 {
            return (index * 64 + word.trailing_zeros() as usize).min(len);
        }
        index += 1;
        match bits.get(index) {
            Some(&next) => word = next,
            None => return len,
        }
    }
}

impl PatternEngine for UpgradeDetector {
    fn pattern(&self) -> Pattern {
        Pattern::Upgrade
    }

    fn merge(&mut self, snapshot: &Snapshot) {
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
                set_bit(
                    &mut self.population(key.merchant).emitted_bits,
                    slot as usize,
                );
            }
        }
    }

    fn forget(&mut self, gone: &dyn Fn(MerchantId) -> bool) {
        self.merchants.retain(|merchant| !gone(merchant));
    }

    fn reweigh(&mut self, weights: &Arc<WeightTable>) {
        self.weights = weights.clone();
    }

    fn apply(&mut self, update: &ChunkUpdate, out: &mut Vec<Detection>) {
        self.touched_slots.clear();
        let shard = self.shard;
        for (index, pair) in update.pairs.iter().enumerate() {
            // A big merchant's slots do not fit in cache: ask for the slot
            // of a pair a little ahead, so that its miss overlaps the work
            // on this one instead of stalling it.
            if let Some(ahead) = update.pairs.get(index + PREFETCH_AHEAD)
                && ahead.weight_slot != NO_WEIGHT
                && shard.owns(ahead.merchant)
                && let Some(population) = self.merchants.get(ahead.merchant)
                && let Some(count) = population.slot_counts.get(ahead.weight_slot as usize)
            {
                prefetch_line(count);
                if ahead.is_new() {
                    prefetch_line(&population.present_bits[ahead.weight_slot as usize / 64]);
                }
            }
            if !shard.owns(pair.merchant) {
                continue;
            }
            let weights = &self.weights;
            let population = self
                .merchants
                .touch(pair.merchant, || Population::new(pair.merchant, weights));
            population.update(
                u64::from(pair.added),
                pair.before(),
                pair.count,
                pair.weight_slot,
            );
            let before_settled_end = population
                .settled
                .is_some_and(|settled| (pair.weight_slot as usize) < settled.end);
            if pair.weight_slot != NO_WEIGHT && before_settled_end {
                self.touched_slots.push((pair.merchant, pair.weight_slot));
            }
        }
        self.merchants.take_touched(&mut self.touched);
        self.touched_slots.sort_unstable();
        self.touched_slots.dedup();
        let touched = std::mem::take(&mut self.touched);
        let touched_slots = std::mem::take(&mut self.touched_slots);
        let mut rest = touched_slots.as_slice();
        for &merchant in &touched {
            let here = rest.partition_point(|&(m, _)| m <= merchant);
            self.evaluate(merchant, &rest[..here], out);
            rest = &rest[here..];
        }
        self.touched = touched;
        self.touched_slots = touched_slots;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::detect::{Cents, CustomerId};
    use proptest::prelude::*;

    fn bitset(bits: &[bool]) -> Vec<u64> {
        let mut words = vec![0u64; bits.len().div_ceil(64)];
        for (index, _) in bits.iter().enumerate().filter(|(_, set)| **set) {
            set_bit(&mut words, index);
        }
        words
    }

    #[test]
    fn slot_counts_stay_exact_past_sixteen_bits() {
        let weights = WeightTable::from_entries([(MerchantId(1), CustomerId(2), Cents(5), 1)]);
        let mut population = Population::new(MerchantId(1), &weights);
        for count in [1, 65_534, 65_535, 65_536, 70_000, 1 << 40] {
            population.set_slot_count(0, count);
            assert_eq!(population.slot_count(0), count);
        }
    }

    proptest! {
        /// The bitset queries against counting bit by bit, over several
        /// words and at word edges.
        #[test]
        fn bitset_queries_equal_counting(bits in prop::collection::vec(any::<bool>(), 0..300)) {
            let words = bitset(&bits);
            for index in 0..=bits.len() {
                let counted = bits[..index].iter().filter(|set| **set).count() as u64;
                prop_assert_eq!(rank(&words, index), counted);
                let next = (index..bits.len()).find(|&i| bits[i]).unwrap_or(bits.len());
                prop_assert_eq!(next_set(&words, index, bits.len()), next);
                if index < bits.len() {
                    prop_assert_eq!(bit(&words, index), bits[index]);
                    if bits[0] {
                        let previous = (0..=index).rev().find(|&i| bits[i]).unwrap();
                        prop_assert_eq!(previous_set(&words, index), previous);
                    }
                }
            }
            let set: Vec<usize> = (0..bits.len()).filter(|&i| bits[i]).collect();
            for before in 0..=set.len() as u64 {
                prop_assert_eq!(select(&words, before), set.get(before as usize).copied());
            }
        }
    }
}
