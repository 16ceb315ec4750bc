//! CustomerImportance weights: exact means of `Weight` per customer and
//! merchant, over every transaction type.

use std::cmp::Ordering;

use rustc_hash::FxHashMap;

use super::{Cents, CustomerId, MerchantId};

/// `w(c, m) = sum / rows`, kept as an exact fraction so that ranks never
/// depend on floating-point rounding.
#[derive(Clone, Copy, Debug)]
pub struct Weight {
    pub sum: Cents,
    pub rows: u64,
}

impl Weight {
    pub fn new(sum: Cents, rows: u64) -> Weight {
        assert!(rows > 0, "a weight needs at least one row");
        Weight { sum, rows }
    }

    /// The mean in currency units, for reporting only.
    pub fn as_f64(self) -> f64 {
        self.sum.0 as f64 / 100.0 / self.rows as f64
    }
}

impl PartialEq for Weight {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}

impl Eq for Weight {}

impl PartialOrd for Weight {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Weight {
    fn cmp(&self, other: &Self) -> Ordering {
        // a/b vs c/d with positive denominators: compare a*d with c*b.
        // |sum| <= i64::MAX and rows <= u64::MAX/2 fit in i128 products.
        let left = i128::from(self.sum.0) * other.rows as i128;
        let right = i128::from(other.sum.0) * self.rows as i128;
        left.cmp(&right)
    }
}

/// The lookup table `w(c, m)`, loaded once before detection starts,
/// grouped by merchant (PatId1 ranks a merchant's customers together) and
/// kept as sorted arrays: a few bytes per pair, for millions of pairs.
///
/// Each merchant's customers are kept in *rank order* (by weight, ties by
/// customer id): a customer's index in that order is its **slot**, fixed
/// for the life of the table because weights never change. PatId1 keeps its
/// per-customer figures in arrays indexed by slot.
#[derive(Clone, Debug, Default)]
pub struct WeightTable {
    by_merchant: FxHashMap<MerchantId, MerchantWeights>,
    len: usize,
}

#[derive(Clone, Debug, Default)]
struct MerchantWeights {
    /// Rank order: ascending weight, then customer id.
    ranked: Vec<(CustomerId, Weight)>,
    /// `(customer, slot)` sorted by customer, to find a customer's slot.
    slots: Vec<(CustomerId, u32)>,
}

impl WeightTable {
    /// Builds the table from `(merchant, customer, weight sum, rows)`;
    /// entries of the same pair are added together.
    pub fn from_entries(
        entries: impl IntoIterator<Item = (MerchantId, CustomerId, Cents, u64)>,
    ) -> WeightTable {
        let mut builder = WeightTableBuilder::default();
        for (merchant, customer, sum, rows) in entries {
            builder.add(merchant, customer, sum, rows);
        }
        builder.finish()
    }
}

/// Builds a [`WeightTable`] one entry at a time, so that a caller reading
/// millions of entries (from the database) keeps no list of them beside
/// the table.
#[derive(Default)]
pub struct WeightTableBuilder {
    by_customer: FxHashMap<MerchantId, Vec<(CustomerId, Weight)>>,
}

impl WeightTableBuilder {
    pub fn add(&mut self, merchant: MerchantId, customer: CustomerId, sum: Cents, rows: u64) {
        self.by_customer
            .entry(merchant)
            .or_default()
            .push((customer, Weight { sum, rows }));
    }

    pub fn finish(self) -> WeightTable {
        let by_customer = self.by_customer;
        let mut len = 0;
        let by_merchant = by_customer
            .into_iter()
            .map(|(merchant, mut customers)| {
                customers.sort_unstable_by_key(|&(customer, _)| customer);
                customers.dedup_by(|later, earlier| {
                    let same = later.0 == earlier.0;
                    if same {
                        earlier.1.sum = earlier.1.sum.saturating_add(later.1.sum);
                        earlier.1.rows += later.1.rows;
                    }
                    same
                });
                len += customers.len();
                let mut ranked = customers;
                ranked.sort_unstable_by(|a, b| a.1.cmp(&b.1).then(a.0.cmp(&b.0)));
                ranked.shrink_to_fit();
                let mut slots: Vec<(CustomerId, u32)> = ranked
                    .iter()
                    .enumerate()
                    .map(|(slot, &(customer, _))| (customer, slot as u32))
                    .collect();
                slots.sort_unstable_by_key(|&(customer, _)| customer);
                (merchant, MerchantWeights { ranked, slots })
            })
            .collect();
        WeightTable { by_merchant, len }
    }
}

impl WeightTable {
    /// Every customer with a weight at `merchant`, in rank order: the
    /// index of an entry is its slot.
    pub fn ranked(&self, merchant: MerchantId) -> &[(CustomerId, Weight)] {
        self.by_merchant
            .get(&merchant)
            .map_or(&[], |weights| weights.ranked.as_slice())
    }

    /// Every merchant with its customers in rank order.
    pub fn merchants(&self) -> impl Iterator<Item = (MerchantId, &[(CustomerId, Weight)])> + '_ {
        self.by_merchant
            .iter()
            .map(|(&merchant, weights)| (merchant, weights.ranked.as_slice()))
    }

    /// The customer's slot at `merchant`; `None` when `w(c, m)` is
    /// undefined.
    pub fn slot(&self, merchant: MerchantId, customer: CustomerId) -> Option<u32> {
        let slots = &self.by_merchant.get(&merchant)?.slots;
        slots
            .binary_search_by_key(&customer, |&(c, _)| c)
            .ok()
            .map(|index| slots[index].1)
    }

    /// The table of the merchants `keep` accepts, their entries (and so
    /// their slots) unchanged: a cluster worker that hands key groups over
    /// keeps the weights of the rest.
    pub fn retain(&self, keep: impl Fn(MerchantId) -> bool) -> WeightTable {
        let by_merchant: FxHashMap<MerchantId, MerchantWeights> = self
            .by_merchant
            .iter()
            .filter(|(merchant, _)| keep(**merchant))
            .map(|(&merchant, weights)| (merchant, weights.clone()))
            .collect();
        let len = by_merchant.values().map(|w| w.ranked.len()).sum();
        WeightTable { by_merchant, len }
    }

    /// This table and the merchants of `other` it does not hold (a cluster
    /// worker that takes key groups over adds their weights to those of
    /// the groups it has).
    pub fn with(&self, other: WeightTable) -> WeightTable {
        let mut table = self.clone();
        for (merchant, weights) in other.by_merchant {
            if let std::collections::hash_map::Entry::Vacant(entry) =
                table.by_merchant.entry(merchant)
            {
                table.len += weights.ranked.len();
                entry.insert(weights);
            }
        }
        table
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compares_exact_fractions() {
        let third = Weight::new(Cents(100), 3);
        let also_third = Weight::new(Cents(200), 6);
        let bit_more = Weight::new(Cents(3334), 100);
        assert_eq!(third, also_third);
        assert!(third < bit_more);
        assert!(Weight::new(Cents(i64::MAX), 1) > Weight::new(Cents(i64::MAX - 1), 1));
    }

    #[test]
    fn averages_over_all_rows() {
        let table = WeightTable::from_entries([
            (MerchantId(1), CustomerId(2), Cents(1000), 1),
            (MerchantId(1), CustomerId(3), Cents(5), 1),
            (MerchantId(1), CustomerId(2), Cents(2001), 1),
        ]);
        assert_eq!(table.len(), 2);
        assert_eq!(
            table.ranked(MerchantId(1)),
            [
                (CustomerId(3), Weight::new(Cents(5), 1)),
                (CustomerId(2), Weight::new(Cents(3001), 2)),
            ]
        );
        assert_eq!(table.slot(MerchantId(1), CustomerId(2)), Some(1));
        assert_eq!(table.slot(MerchantId(1), CustomerId(3)), Some(0));
        assert_eq!(table.slot(MerchantId(1), CustomerId(4)), None);
        assert!(table.ranked(MerchantId(2)).is_empty());
        assert_eq!(table.slot(MerchantId(2), CustomerId(2)), None);
    }

    #[test]
    fn retaining_merchants_keeps_their_slots() {
        let table = WeightTable::from_entries([
            (MerchantId(1), CustomerId(2), Cents(9), 1),
            (MerchantId(1), CustomerId(3), Cents(5), 1),
            (MerchantId(2), CustomerId(2), Cents(1), 1),
        ]);
        let kept = table.retain(|m| m == MerchantId(1));
        assert_eq!(kept.len(), 2);
        assert_eq!(kept.ranked(MerchantId(1)), table.ranked(MerchantId(1)));
        assert_eq!(kept.slot(MerchantId(1), CustomerId(2)), Some(1));
        assert!(kept.ranked(MerchantId(2)).is_empty());
        let back = kept.with(table.retain(|m| m == MerchantId(2)));
        assert_eq!(back.len(), 3);
        assert_eq!(back.ranked(MerchantId(2)), table.ranked(MerchantId(2)));
        assert_eq!(back.ranked(MerchantId(1)), table.ranked(MerchantId(1)));
    }
}
