//! The process-wide name table: customer and merchant names become small
//! integer ids once, so that the engine hashes and stores `u32`s instead of
//! strings.
//!
//! Ids are a cache, never persisted: the state store keeps names, and every
//! actor maps names to ids through the same table when it (re)loads state.
//! The table only grows, so an id handed out is valid for the life of the
//! process, whatever actors restart.
//!
//! Two layers: lasso's concurrent interner owns the ids and the names behind
//! them, and in front of it a map from short names (packed into one
//! integer, see [`pack`]) to their ids answers the chunk parsers, which ask
//! for thousands of ids per chunk from several threads at once. A parser
//! looks a whole chunk's names up under one read lock ([`Names::ids`]);
//! only names the map has not seen yet go to the interner, and are then
//! added to the map under one write lock. The map holds exactly the ids
//! the interner gave, so either path yields the same id for a name.

use std::sync::RwLock;

use lasso::{Key, Spur, ThreadedRodeo};
use rustc_hash::FxBuildHasher;

use crate::detect::{CustomerId, MerchantId};
use crate::table::{PREFETCH_AHEAD, PrefetchTable};

/// Longest name [`pack`] takes: 15 bytes and a length byte fill a `u128`.
pub const PACKED_MAX: usize = 15;

/// A name of at most [`PACKED_MAX`] bytes as one integer: its bytes in
/// order, then zeros, its length in the top byte. Different names give
/// different integers, and hashing or comparing one takes a few
/// instructions instead of a string compare through a pointer (BankSim's
/// ids, `C1093826151`, are 11 bytes).
#[inline]
pub fn pack(name: &[u8]) -> Option<u128> {
    if name.len() > PACKED_MAX {
        return None;
    }
    let mut bytes = [0u8; 16];
    bytes[..name.len()].copy_from_slice(name);
    bytes[PACKED_MAX] = name.len() as u8;
    Some(u128::from_le_bytes(bytes))
}

/// Names are short ids from the operator's own input files: FxHash rather
/// than the default SipHash, whose protection against crafted collisions
/// buys nothing here.
#[derive(Debug)]
pub struct Names {
    table: ThreadedRodeo<Spur, FxBuildHasher>,
    /// Packed short name → the id `table` gave it. A packed name's top
    /// byte is at most `PACKED_MAX`, so none is the free-slot marker.
    short: RwLock<PrefetchTable<u128, u32>>,
}

impl Default for Names {
    fn default() -> Names {
        Names {
            table: ThreadedRodeo::with_hasher(FxBuildHasher),
            short: RwLock::default(),
        }
    }
}

impl Names {
    pub fn new() -> Names {
        Names::default()
    }

    #[inline]
    pub fn customer(&self, name: &str) -> CustomerId {
        CustomerId(self.id(name))
    }

    #[inline]
    pub fn merchant(&self, name: &str) -> MerchantId {
        MerchantId(self.id(name))
    }

    #[inline]
    fn id(&self, name: &str) -> u32 {
        self.table.get_or_intern(name).into_usize() as u32
    }

    /// The ids of `names`, in order, into `ids` (cleared first): one read
    /// lock for the lot, the interner only for names not seen by this
    /// method before (and for names too long to pack).
    pub fn ids(&self, names: &[&str], ids: &mut Vec<u32>) {
        ids.clear();
        let keys: Vec<Option<u128>> = names.iter().map(|name| pack(name.as_bytes())).collect();
        let mut unknown: Vec<(usize, &str)> = Vec::new();
        {
            let short = self
                .short
                .read()
                .unwrap_or_else(|poison| poison.into_inner());
            for (index, key) in keys.iter().enumerate() {
                if let Some(Some(ahead)) = keys.get(index + PREFETCH_AHEAD) {
                    short.prefetch(*ahead);
                }
                match key.and_then(|key| short.get(key)) {
                    Some(&id) => ids.push(id),
                    None => {
                        ids.push(u32::MAX);
                        unknown.push((index, names[index]));
                    }
                }
            }
        }
        if unknown.is_empty() {
            return;
        }
        let mut learned = Vec::with_capacity(unknown.len());
        for (index, name) in unknown {
            let id = self.id(name);
            ids[index] = id;
            if let Some(key) = pack(name.as_bytes()) {
                learned.push((key, id));
            }
        }
        if !learned.is_empty() {
            let mut short = self
                .short
                .write()
                .unwrap_or_else(|poison| poison.into_inner());
            for (key, id) in learned {
                *short.get_or_default(key) = id;
            }
        }
    }

    /// The name behind an id handed out by this table.
    pub fn name(&self, id: u32) -> &str {
        let key = Spur::try_from_usize(id as usize).expect("id from this table");
        self.table.resolve(&key)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn packing_is_exact_up_to_fifteen_bytes() {
        assert_eq!(pack(b""), pack(b""));
        assert_ne!(pack(b""), pack(b"\0"), "length is part of the key");
        assert_ne!(pack(b"C1"), pack(b"C1\0"));
        assert_ne!(pack(b"C12"), pack(b"C21"));
        assert!(pack(b"123456789012345").is_some());
        assert_eq!(pack(b"1234567890123456"), None);
    }

    #[test]
    fn batch_ids_equal_single_ids_for_short_and_long_names() {
        let names = Names::new();
        let early = names.customer("C100");
        let long = "a customer name well past fifteen bytes";
        let batch = ["M1", "C100", long, "M1", "", "C200"];
        let mut ids = Vec::new();
        names.ids(&batch, &mut ids);
        assert_eq!(ids[1], early.0, "a name interned before keeps its id");
        assert_eq!(ids[0], ids[3]);
        for (name, id) in batch.iter().zip(&ids) {
            assert_eq!(names.name(*id), *name);
            assert_eq!(names.customer(name).0, *id);
        }
        let mut again = Vec::new();
        let reversed: Vec<&str> = batch.iter().rev().copied().collect();
        names.ids(&reversed, &mut again);
        again.reverse();
        assert_eq!(
            again, ids,
            "the second lookup goes through the short-name map"
        );
    }

    #[test]
    fn concurrent_batches_agree() {
        let names = Names::new();
        let batch: Vec<String> = (0..2_000).map(|i| format!("C{}", i % 700)).collect();
        let results: Vec<Vec<u32>> = std::thread::scope(|scope| {
            let workers: Vec<_> = (0..4)
                .map(|_| {
                    scope.spawn(|| {
                        let mut ids = Vec::new();
                        let batch: Vec<&str> = batch.iter().map(String::as_str).collect();
                        names.ids(&batch, &mut ids);
                        ids
                    })
                })
                .collect();
            workers.into_iter().map(|w| w.join().unwrap()).collect()
        });
        for ids in &results {
            assert_eq!(ids, &results[0]);
        }
        for (name, id) in batch.iter().zip(&results[0]) {
            assert_eq!(names.name(*id), name);
        }
    }
}
