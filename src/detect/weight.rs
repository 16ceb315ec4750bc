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
#[derive(Clone, Debug, Default)]
pub struct WeightTable {
    by_merchant: FxHashMap<MerchantId, Vec<(CustomerId, Weight)>>,
    len: usize,
}

impl WeightTable {
    /// Builds the table from `(merchant, customer, weight sum, rows)`;
    /// entries of the same pair are added together.
    pub fn from_entries(
        entries: impl IntoIterator<Item = (MerchantId, CustomerId, Cents, u64)>,
    ) -> WeightTable {
        let mut by_merchant: FxHashMap<MerchantId, Vec<(CustomerId, Weight)>> =
            FxHashMap::default();
        for (merchant, customer, sum, rows) in entries {
            by_merchant
                .entry(merchant)
                .or_default()
                .push((customer, Weight { sum, rows }));
        }
        let mut len = 0;
        for customers in by_merchant.values_mut() {
            customers.sort_unstable_by_key(|&(customer, _)| customer);
            customers.dedup_by(|later, earlier| {
                let same = later.0 == earlier.0;
                if same {
                    earlier.1.sum = earlier.1.sum.saturating_add(later.1.sum);
                    earlier.1.rows += later.1.rows;
                }
                same
            });
            customers.shrink_to_fit();
            len += customers.len();
        }
        WeightTable { by_merchant, len }
    }

    /// Every customer with a weight at `merchant`.
    pub fn customers_of(
        &self,
        merchant: MerchantId,
    ) -> impl Iterator<Item = (CustomerId, Weight)> + '_ {
        self.by_merchant
            .get(&merchant)
            .into_iter()
            .flat_map(|customers| customers.iter().copied())
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
        let customers: Vec<_> = table.customers_of(MerchantId(1)).collect();
        assert_eq!(
            customers,
            vec![
                (CustomerId(2), Weight::new(Cents(3001), 2)),
                (CustomerId(3), Weight::new(Cents(5), 1)),
            ]
        );
        assert_eq!(table.customers_of(MerchantId(2)).count(), 0);
    }
}
