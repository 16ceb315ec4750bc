//! Per-merchant state of a detector, found from the merchant's id by one
//! array read instead of a hash probe: detectors look their merchant up
//! for every pair of every chunk.
//!
//! Ids come from the process-wide name table, which numbers customers and
//! merchants together, so the index holds four bytes per id up to the
//! largest merchant id seen, and the states themselves sit densely in a
//! second array, in order of first appearance.
//!
//! It also lists the merchants a chunk touched (each once), which every
//! detector needs after its pass over the chunk's pairs: a flag per entry
//! instead of one list entry per pair, sorted and deduplicated.

use super::MerchantId;

pub struct ByMerchant<T> {
    /// By merchant id: the entry's index in `entries`, or [`ABSENT`].
    position: Vec<u32>,
    entries: Vec<T>,
    /// Per entry: listed in `touched`.
    touched_flags: Vec<bool>,
    touched: Vec<MerchantId>,
}

const ABSENT: u32 = u32::MAX;

impl<T> Default for ByMerchant<T> {
    fn default() -> Self {
        ByMerchant {
            position: Vec::new(),
            entries: Vec::new(),
            touched_flags: Vec::new(),
            touched: Vec::new(),
        }
    }
}

impl<T> ByMerchant<T> {
    #[inline]
    fn index(&self, merchant: MerchantId) -> Option<usize> {
        match self.position.get(merchant.0 as usize) {
            Some(&position) if position != ABSENT => Some(position as usize),
            _ => None,
        }
    }

    #[inline]
    pub fn get(&self, merchant: MerchantId) -> Option<&T> {
        self.index(merchant).map(|index| &self.entries[index])
    }

    #[inline]
    pub fn get_mut(&mut self, merchant: MerchantId) -> Option<&mut T> {
        self.index(merchant).map(|index| &mut self.entries[index])
    }

    #[inline]
    pub fn get_or_insert_with(&mut self, merchant: MerchantId, make: impl FnOnce() -> T) -> &mut T {
        let index = self.index_or_insert(merchant, make);
        &mut self.entries[index]
    }

    /// [`ByMerchant::get_or_insert_with`], and lists the merchant among
    /// the touched ones.
    #[inline]
    pub fn touch(&mut self, merchant: MerchantId, make: impl FnOnce() -> T) -> &mut T {
        let index = self.index_or_insert(merchant, make);
        if !std::mem::replace(&mut self.touched_flags[index], true) {
            self.touched.push(merchant);
        }
        &mut self.entries[index]
    }

    /// Puts the merchants touched since the last call into `into`
    /// (replacing its contents), ascending, each once.
    pub fn take_touched(&mut self, into: &mut Vec<MerchantId>) {
        into.clear();
        std::mem::swap(into, &mut self.touched);
        for &merchant in into.iter() {
            let index = self
                .index(merchant)
                .expect("touched merchants have entries");
            self.touched_flags[index] = false;
        }
        into.sort_unstable();
    }

    #[inline]
    fn index_or_insert(&mut self, merchant: MerchantId, make: impl FnOnce() -> T) -> usize {
        match self.index(merchant) {
            Some(index) => index,
            None => self.insert(merchant, make()),
        }
    }

    #[cold]
    fn insert(&mut self, merchant: MerchantId, entry: T) -> usize {
        let id = merchant.0 as usize;
        if id >= self.position.len() {
            self.position.resize(id + 1, ABSENT);
        }
        let index = self.entries.len();
        self.position[id] = u32::try_from(index).expect("fewer than 2^32 merchants");
        self.entries.push(entry);
        self.touched_flags.push(false);
        index
    }

    /// Keeps the entries of the merchants `keep` accepts, in their order.
    /// Called between chunks (the touched list is empty then).
    pub fn retain(&mut self, mut keep: impl FnMut(MerchantId) -> bool) {
        let mut owner = vec![ABSENT; self.entries.len()];
        for (id, &position) in self.position.iter().enumerate() {
            if position != ABSENT && keep(MerchantId(id as u32)) {
                owner[position as usize] = id as u32;
            }
        }
        self.position.fill(ABSENT);
        self.touched.clear();
        self.touched_flags.clear();
        let entries = std::mem::take(&mut self.entries);
        for (entry, id) in entries.into_iter().zip(owner) {
            if id != ABSENT {
                self.position[id as usize] = self.entries.len() as u32;
                self.entries.push(entry);
                self.touched_flags.push(false);
            }
        }
        self.entries.shrink_to_fit();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_are_found_by_id_and_cleared() {
        let mut map: ByMerchant<u64> = ByMerchant::default();
        assert!(map.get(MerchantId(3)).is_none());
        *map.get_or_insert_with(MerchantId(70_000), || 1) += 10;
        *map.get_or_insert_with(MerchantId(3), || 2) += 20;
        *map.get_or_insert_with(MerchantId(70_000), || 100) += 1;
        assert_eq!(map.get(MerchantId(70_000)), Some(&12));
        assert_eq!(map.get(MerchantId(3)), Some(&22));
        assert_eq!(map.get(MerchantId(4)), None);
        assert_eq!(map.get(MerchantId(u32::MAX - 1)), None);
        *map.get_mut(MerchantId(3)).unwrap() = 5;
        assert_eq!(map.get(MerchantId(3)), Some(&5));
        map.retain(|_| false);
        assert_eq!(map.get(MerchantId(3)), None);
        assert_eq!(map.get(MerchantId(70_000)), None);
        assert_eq!(*map.get_or_insert_with(MerchantId(3), || 7), 7);
    }

    #[test]
    fn retain_keeps_the_accepted_merchants_found_by_id() {
        let mut map: ByMerchant<u64> = ByMerchant::default();
        for id in [5, 1, 9, 3] {
            map.get_or_insert_with(MerchantId(id), || u64::from(id) * 10);
        }
        map.retain(|m| m.0 != 1 && m.0 != 9);
        assert_eq!(map.get(MerchantId(5)), Some(&50));
        assert_eq!(map.get(MerchantId(3)), Some(&30));
        assert_eq!(map.get(MerchantId(1)), None);
        assert_eq!(map.get(MerchantId(9)), None);
        map.touch(MerchantId(9), || 7);
        map.touch(MerchantId(3), || 0);
        let mut touched = Vec::new();
        map.take_touched(&mut touched);
        assert_eq!(touched, [MerchantId(3), MerchantId(9)]);
        assert_eq!(map.get(MerchantId(9)), Some(&7));
    }

    #[test]
    fn touched_merchants_come_out_once_each_ascending() {
        let mut map: ByMerchant<u64> = ByMerchant::default();
        map.get_or_insert_with(MerchantId(1), || 0);
        for id in [9, 4, 9, 70_000, 4] {
            *map.touch(MerchantId(id), || 0) += 1;
        }
        let mut touched = vec![MerchantId(123)];
        map.take_touched(&mut touched);
        assert_eq!(touched, [MerchantId(4), MerchantId(9), MerchantId(70_000)]);
        assert_eq!(map.get(MerchantId(9)), Some(&2));
        map.take_touched(&mut touched);
        assert!(touched.is_empty(), "a new round starts empty");
        map.touch(MerchantId(9), || 0);
        map.take_touched(&mut touched);
        assert_eq!(touched, [MerchantId(9)]);
    }
}
