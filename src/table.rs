//! A hash table for the two lookups that dominate a large catch-up run:
//! the pair table's (one probe per pair of every chunk, see
//! `detect::PairTotals`) and the short-name map's (one per distinct pair,
//! see `names`). Both tables are far larger than the CPU caches, so nearly
//! every probe waits for memory; profiles showed ~90% of the fold's time in
//! that wait.
//!
//! What this table adds over `hashbrown` is [`PrefetchTable::prefetch`]:
//! the caller names a key it will look up soon, and the table starts
//! loading the cache line where that key's probe begins. Callers walk a
//! batch of keys and prefetch a few keys ahead, so the misses overlap
//! instead of queueing. hashbrown hides where a key's probe starts, so it
//! cannot offer this.
//!
//! The layout makes one cache line answer most probes: keys and values sit
//! side by side in one array (no separate control bytes), linear probing
//! from the key's home slot. A table grows before it is seven eighths full
//! (as full as hashbrown lets its tables get), or, built with
//! [`PrefetchTable::sparse_with_capacity`], before it is half full: near
//! seven eighths, linear probes run several slots past the home slot, so
//! a table far larger than the caches, probed for every pair of every
//! chunk, pays twice its memory to make most probes end at home (the
//! pair table's fold took a quarter less time per row). Keys are `Copy`
//! values with one value reserved to mark a free slot
//! ([`TableKey::FREE`]); there is no removal (the tables only grow), and
//! [`PrefetchTable::retain`] rebuilds the table when it drops an entry.

use std::hash::BuildHasher;

use rustc_hash::FxBuildHasher;

/// A key of a [`PrefetchTable`].
pub trait TableKey: Copy + Eq + std::hash::Hash {
    /// The one value no real key takes: it marks a free slot.
    const FREE: Self;
}

impl TableKey for u64 {
    const FREE: u64 = u64::MAX;
}

impl TableKey for u128 {
    const FREE: u128 = u128::MAX;
}

pub struct PrefetchTable<K, V> {
    slots: Box<[(K, V)]>,
    /// `slots.len() - 1`; the length is a power of two.
    mask: usize,
    len: usize,
    /// The table grows before more than this many eighths of its slots
    /// are taken.
    fill_eighths: usize,
}

/// How full a table gets before it grows, in eighths.
const DENSE: usize = 7;
const SPARSE: usize = 4;

impl<K, V> std::fmt::Debug for PrefetchTable<K, V> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PrefetchTable")
            .field("len", &self.len)
            .field("slots", &self.slots.len())
            .finish()
    }
}

/// Starts loading the cache line of `value` (a hint: it never faults and
/// changes nothing the program can observe).
#[inline]
pub fn prefetch_line<T>(value: &T) {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::x86_64::{_MM_HINT_T0, _mm_prefetch};
        // SAFETY: a prefetch never faults, and the pointer comes from a
        // reference.
        unsafe { _mm_prefetch::<_MM_HINT_T0>((value as *const T).cast::<i8>()) }
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = value;
}

/// How many keys ahead callers walking a batch prefetch: enough for a
/// memory access to finish during the work on the keys in between.
pub const PREFETCH_AHEAD: usize = 16;

/// Slots per 64-byte cache line for the tables' 32-byte entries.
const LINE_SLOTS: usize = 2;

/// Smallest table, in slots.
const MIN_SLOTS: usize = 16;

impl<K: TableKey, V: Copy + Default> Default for PrefetchTable<K, V> {
    fn default() -> Self {
        PrefetchTable::with_capacity(0)
    }
}

impl<K: TableKey, V: Copy + Default> PrefetchTable<K, V> {
    /// A table that holds `capacity` keys without growing.
    pub fn with_capacity(capacity: usize) -> Self {
        PrefetchTable::for_keys(capacity, DENSE)
    }

    /// A table that holds `capacity` keys without growing and is kept at
    /// most half full (see the module docs).
    pub fn sparse_with_capacity(capacity: usize) -> Self {
        PrefetchTable::for_keys(capacity, SPARSE)
    }

    fn for_keys(capacity: usize, fill_eighths: usize) -> Self {
        let slots = (capacity.saturating_mul(8) / fill_eighths + 1).next_power_of_two();
        PrefetchTable::with_slots(slots.max(MIN_SLOTS), fill_eighths)
    }

    fn with_slots(slots: usize, fill_eighths: usize) -> Self {
        PrefetchTable {
            slots: vec![(K::FREE, V::default()); slots].into_boxed_slice(),
            mask: slots - 1,
            len: 0,
            fill_eighths,
        }
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    #[inline]
    fn home(&self, key: K) -> usize {
        FxBuildHasher.hash_one(key) as usize & self.mask
    }

    /// Starts loading the slots where `key`'s probe begins (two cache
    /// lines: at seven eighths full a probe reads about three slots): call
    /// it for a key some iterations before looking it up.
    #[inline]
    pub fn prefetch(&self, key: K) {
        let home = self.home(key);
        prefetch_line(&self.slots[home]);
        prefetch_line(&self.slots[(home + LINE_SLOTS) & self.mask]);
    }

    /// The slot holding `key`, or the free slot where it would go.
    #[inline]
    fn find(&self, key: K) -> usize {
        let mut index = self.home(key);
        loop {
            let probed = self.slots[index].0;
            if probed == key || probed == K::FREE {
                return index;
            }
            index = (index + 1) & self.mask;
        }
    }

    #[inline]
    pub fn get(&self, key: K) -> Option<&V> {
        let (found, value) = &self.slots[self.find(key)];
        (*found == key && key != K::FREE).then_some(value)
    }

    /// The value of `key`, inserted as `V::default()` if missing.
    ///
    /// # Panics
    ///
    /// If `key` is [`TableKey::FREE`], which callers rule out by
    /// construction.
    #[inline]
    pub fn get_or_default(&mut self, key: K) -> &mut V {
        assert!(key != K::FREE, "the free-slot marker is not a key");
        let mut index = self.find(key);
        if self.slots[index].0 != key {
            if (self.len + 1) * 8 > self.slots.len() * self.fill_eighths {
                self.grow();
                index = self.find(key);
            }
            self.slots[index].0 = key;
            self.len += 1;
        }
        &mut self.slots[index].1
    }

    fn grow(&mut self) {
        let mut grown = PrefetchTable::with_slots(self.slots.len() * 2, self.fill_eighths);
        for &(key, value) in self.slots.iter().filter(|(key, _)| *key != K::FREE) {
            *grown.get_or_default(key) = value;
        }
        *self = grown;
    }

    /// Keeps the entries for which `keep` returns true (it may change their
    /// values). Values change in place; only if an entry goes is the table
    /// rebuilt at its current size (linear probing has no tombstones), so
    /// that a large table that loses nothing never exists twice at once.
    pub fn retain(&mut self, mut keep: impl FnMut(K, &mut V) -> bool) {
        let mut dropped = Vec::new();
        for (index, (key, value)) in self.slots.iter_mut().enumerate() {
            if *key != K::FREE && !keep(*key, value) {
                dropped.push(index);
            }
        }
        if dropped.is_empty() {
            return;
        }
        let mut kept = PrefetchTable::with_slots(self.slots.len(), self.fill_eighths);
        let mut dropped = dropped.into_iter().peekable();
        for (index, &(key, value)) in self.slots.iter().enumerate() {
            if dropped.next_if_eq(&index).is_none() && key != K::FREE {
                *kept.get_or_default(key) = value;
            }
        }
        *self = kept;
    }

    /// Every entry, in no particular order.
    pub fn iter(&self) -> impl Iterator<Item = (K, &V)> {
        self.slots
            .iter()
            .filter(|(key, _)| *key != K::FREE)
            .map(|(key, value)| (*key, value))
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use proptest::prelude::*;

    use super::*;

    #[test]
    fn grows_and_keeps_every_entry() {
        let mut table: PrefetchTable<u64, u32> = PrefetchTable::default();
        for key in 0..10_000u64 {
            table.prefetch(key * 7);
            *table.get_or_default(key * 7) += key as u32 + 1;
        }
        assert_eq!(table.len(), 10_000);
        for key in 0..10_000u64 {
            assert_eq!(table.get(key * 7), Some(&(key as u32 + 1)));
            assert_eq!(table.get(key * 7 + 1), None);
        }
        assert_eq!(table.get(u64::FREE), None);
    }

    #[test]
    fn retain_rebuilds_with_the_kept_entries() {
        let mut table: PrefetchTable<u128, u32> = PrefetchTable::with_capacity(100);
        for key in 0..100u128 {
            *table.get_or_default(key << 64) = key as u32;
        }
        table.retain(|key, value| {
            *value += 1;
            (key >> 64) % 3 == 0
        });
        assert_eq!(table.len(), 34);
        for key in 0..100u128 {
            let expected = ((key % 3) == 0).then_some(key as u32 + 1);
            assert_eq!(table.get(key << 64).copied(), expected);
        }
    }

    #[test]
    fn a_sparse_table_grows_before_it_is_half_full() {
        let mut table: PrefetchTable<u64, u32> = PrefetchTable::sparse_with_capacity(1_000);
        assert!(table.slots.len() >= 2_000);
        for key in 0..50_000u64 {
            *table.get_or_default(key * 13) = key as u32;
            assert!(table.len() * 2 <= table.slots.len());
        }
        for key in 0..50_000u64 {
            assert_eq!(table.get(key * 13), Some(&(key as u32)));
        }
        table.retain(|_, value| {
            *value += 1;
            true
        });
        assert_eq!(table.len(), 50_000, "nothing dropped");
        assert_eq!(table.get(13), Some(&2));
        table.retain(|key, _| key % 2 == 0);
        assert_eq!(table.len(), 25_000);
        assert_eq!(table.get(26), Some(&3));
        assert_eq!(table.get(13), None);
        assert!(table.len() * 2 <= table.slots.len());
        let dense: PrefetchTable<u64, u32> = PrefetchTable::with_capacity(50_000);
        assert!(
            dense.slots.len() * 2 <= table.slots.len(),
            "sparse costs room"
        );
    }

    #[test]
    #[should_panic(expected = "free-slot marker")]
    fn the_free_marker_cannot_be_inserted() {
        let mut table: PrefetchTable<u64, u32> = PrefetchTable::default();
        table.get_or_default(u64::MAX);
    }

    proptest! {
        /// Same answers as a `HashMap` for any sequence of inserts and
        /// lookups, with keys crowded into few home slots.
        #[test]
        fn behaves_like_a_hash_map(ops in prop::collection::vec((0u64..64, any::<bool>(), 0u32..5), 0..400)) {
            let mut table: PrefetchTable<u64, u32> = PrefetchTable::default();
            let mut model: HashMap<u64, u32> = HashMap::new();
            for (key, insert, add) in ops {
                let key = key << 40;
                if insert {
                    *table.get_or_default(key) += add;
                    *model.entry(key).or_default() += add;
                }
                prop_assert_eq!(table.get(key), model.get(&key));
                prop_assert_eq!(table.len(), model.len());
            }
            let mut entries: Vec<(u64, u32)> = table.iter().map(|(k, v)| (k, *v)).collect();
            entries.sort();
            let mut expected: Vec<(u64, u32)> = model.into_iter().collect();
            expected.sort();
            prop_assert_eq!(entries, expected);
        }
    }
}
