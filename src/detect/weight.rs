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

/// The lookup table `w(c, m)`, loaded once before detection starts.
#[derive(Clone, Debug, Default)]
pub struct WeightTable {
    weights: FxHashMap<(MerchantId, CustomerId), Weight>,
}

impl WeightTable {
    pub fn new() -> WeightTable {
        WeightTable::default()
    }

    /// Adds one CustomerImportance row (or an already aggregated group).
    pub fn add(&mut self, merchant: MerchantId, customer: CustomerId, sum: Cents, rows: u64) {
        let entry = self.weights.entry((merchant, customer)).or_insert(Weight {
            sum: Cents(0),
            rows: 0,
        });
        entry.sum = entry.sum.saturating_add(sum);
        entry.rows += rows;
    }

    #[inline]
    pub fn get(&self, merchant: MerchantId, customer: CustomerId) -> Option<Weight> {
        self.weights.get(&(merchant, customer)).copied()
    }

    pub fn len(&self) -> usize {
        self.weights.len()
    }

    pub fn is_empty(&self) -> bool {
        self.weights.is_empty()
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
        let mut table = WeightTable::new();
        table.add(MerchantId(1), CustomerId(2), Cents(1000), 1);
        table.add(MerchantId(1), CustomerId(2), Cents(2001), 1);
        let w = table.get(MerchantId(1), CustomerId(2)).unwrap();
        assert_eq!(w, Weight::new(Cents(3001), 2));
        assert!(table.get(MerchantId(2), CustomerId(1)).is_none());
    }
}
