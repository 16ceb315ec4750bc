//! A counting Fenwick tree over small positive integers: how many values of
//! a multiset are below `v`, in `O(log max)`. PatId1 keeps one per big
//! merchant over the transaction counts `n(d, m)` of its customers.

#[derive(Clone, Debug, Default)]
pub struct CountTree {
    /// 1-based Fenwick array; index `v` covers values `v - lowbit(v) + 1 ..= v`.
    tree: Vec<u64>,
    total: u64,
}

impl CountTree {
    pub fn new() -> CountTree {
        CountTree {
            tree: vec![0; 64],
            total: 0,
        }
    }

    /// Number of values in the multiset.
    #[cfg(test)]
    pub fn len(&self) -> u64 {
        self.total
    }

    pub fn insert(&mut self, value: u64) {
        self.add(value, 1);
    }

    /// Replaces one occurrence of `from` by `to`.
    ///
    /// The update paths of two values join at the first node that covers
    /// both, and from there on the -1 and the +1 cancel, so only the nodes
    /// before the join are written. A count that grows by a few (most
    /// pairs of a chunk) shares all but a node or two of its path, where
    /// two separate updates would each climb the whole tree.
    pub fn replace(&mut self, from: u64, to: u64) {
        assert!(from > 0 && to > 0, "counts start at 1");
        let to = usize::try_from(to).expect("count fits in memory");
        if to >= self.tree.len() {
            self.grow(to);
        }
        let len = self.tree.len();
        let (mut down, mut up) = (usize::try_from(from).expect("a value of the tree"), to);
        // Advancing the smaller index never steps over the join: both paths
        // rise, so the smaller one lands on the join if there is one.
        while down != up && down.min(up) < len {
            if down < up {
                self.tree[down] = self.tree[down].wrapping_sub(1);
                down += down & down.wrapping_neg();
            } else {
                self.tree[up] = self.tree[up].wrapping_add(1);
                up += up & up.wrapping_neg();
            }
        }
    }

    /// How many values are strictly below `value`.
    pub fn count_below(&self, value: u64) -> u64 {
        let mut index = usize::try_from(value.saturating_sub(1))
            .unwrap_or(usize::MAX)
            .min(self.tree.len() - 1);
        let mut count = 0;
        while index > 0 {
            count += self.tree[index];
            index &= index - 1;
        }
        count
    }

    /// The smallest value `v` such that at least `k` values are `<= v`
    /// (`k >= 1`); `None` if the multiset holds fewer than `k` values.
    pub fn lower_bound(&self, k: u64) -> Option<u64> {
        if k == 0 || k > self.total {
            return None;
        }
        // Binary lifting: the largest index whose prefix sum stays below k.
        let mut index = 0usize;
        let mut remaining = k;
        let mut step = (self.tree.len() - 1).next_power_of_two();
        while step > 0 {
            let next = index + step;
            if next < self.tree.len() && self.tree[next] < remaining {
                index = next;
                remaining -= self.tree[next];
            }
            step >>= 1;
        }
        Some(index as u64 + 1)
    }

    fn add(&mut self, value: u64, delta: i64) {
        assert!(value > 0, "counts start at 1");
        let value = usize::try_from(value).expect("count fits in memory");
        if value >= self.tree.len() {
            self.grow(value);
        }
        let mut index = value;
        while index < self.tree.len() {
            self.tree[index] = self.tree[index].wrapping_add_signed(delta);
            index += index & index.wrapping_neg();
        }
        self.total = self.total.wrapping_add_signed(delta);
    }

    /// Doubles the capacity until `value` fits, rebuilding from the
    /// per-value frequencies.
    fn grow(&mut self, value: usize) {
        let old_len = self.tree.len();
        let mut frequencies = vec![0u64; old_len];
        for (v, slot) in frequencies.iter_mut().enumerate().skip(1) {
            *slot = self.count_below(v as u64 + 1) - self.count_below(v as u64);
        }
        let mut new_len = old_len.max(2);
        while new_len <= value {
            new_len *= 2;
        }
        self.tree = vec![0; new_len];
        let total = self.total;
        self.total = 0;
        for (v, &f) in frequencies.iter().enumerate().skip(1) {
            if f > 0 {
                self.add(v as u64, f as i64);
            }
        }
        debug_assert_eq!(self.total, total);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn matches_a_naive_count(ops in proptest::collection::vec((1u64..300, 1u64..300), 1..200)) {
            let mut tree = CountTree::new();
            let mut values = Vec::new();
            for (i, &(a, b)) in ops.iter().enumerate() {
                if i % 3 == 2 && !values.is_empty() {
                    let slot = (a as usize) % values.len();
                    tree.replace(values[slot], b);
                    values[slot] = b;
                } else {
                    tree.insert(a);
                    values.push(a);
                }
                for probe in [1, a, b, 150, 301, 10_000] {
                    let naive = values.iter().filter(|&&v| v < probe).count() as u64;
                    prop_assert_eq!(tree.count_below(probe), naive);
                }
                let mut sorted = values.clone();
                sorted.sort_unstable();
                for k in [1u64, 2, a % 50, values.len() as u64, values.len() as u64 + 1] {
                    let naive = (k >= 1 && k as usize <= sorted.len()).then(|| sorted[k as usize - 1]);
                    prop_assert_eq!(tree.lower_bound(k), naive, "k = {}", k);
                }
            }
            prop_assert_eq!(tree.len(), values.len() as u64);
        }
    }
}
