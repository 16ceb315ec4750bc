//! A chunk's state change as the state stores keep it: one compact blob
//! per chunk in `chunk_deltas`, committed with the chunk's
//! `processed_chunks` row and detections.
//!
//! Committing a blob costs the same whatever the number of pairs, where
//! upserting every touched pair would cost a row each. The blobs are later
//! folded into `pair_state` by a *compaction* (one transaction that upserts
//! the merged pairs of many chunks and deletes their blobs), off the
//! per-chunk path. The cumulative state is always `pair_state` plus the
//! blobs not yet compacted, so a crash at any point loses nothing and a
//! compaction repeated after a crash changes nothing.
//!
//! Format (postcard): a version byte, the chunk's merchant names, then per
//! pair the merchant's index, the customer's name, the count, the amount in
//! hundredths and the gender letter.

use rustc_hash::FxHashMap;
use serde::{Deserialize, Serialize};

use super::{DbError, DbResult, PairRow};
use crate::detect::{ChunkDelta, Gender};
use crate::names::Names;
use lasso::{Key, Rodeo, Spur};

const VERSION: u8 = 1;

#[derive(Serialize, Deserialize)]
struct Encoded<'a> {
    version: u8,
    #[serde(borrow)]
    merchants: Vec<&'a str>,
    #[serde(borrow)]
    pairs: Vec<EncodedPair<'a>>,
}

#[derive(Serialize, Deserialize)]
struct EncodedPair<'a> {
    merchant: u32,
    customer: &'a str,
    count: u32,
    amount: i64,
    gender: u8,
}

fn gender_byte(gender: Gender) -> u8 {
    gender.code().as_bytes()[0]
}

/// Encodes a chunk's delta with the names behind its ids: merchants
/// numbered in order of first appearance among the pairs, as the parser
/// numbers them, so this is [`encode_named`]'s encoding.
pub fn encode(delta: &ChunkDelta, names: &Names) -> Vec<u8> {
    let mut merchant_index: FxHashMap<u32, u32> = FxHashMap::default();
    let mut merchants = Vec::new();
    let pairs: Vec<(u32, &str)> = delta
        .pairs
        .iter()
        .map(|pair| {
            let merchant = *merchant_index.entry(pair.merchant.0).or_insert_with(|| {
                merchants.push(names.name(pair.merchant.0));
                merchants.len() as u32 - 1
            });
            (merchant, names.name(pair.customer.0))
        })
        .collect();
    encode_named(delta, merchants, pairs)
}

/// Encodes a chunk's delta from the names its chunk spelled: `merchants`
/// in the order of their chunk-local numbers, then per pair of `delta`, in
/// order, its merchant's number and its customer (what the parser gives,
/// `input::transactions::PairNames`), so no id is looked up.
pub fn encode_named<'a>(
    delta: &ChunkDelta,
    merchants: impl IntoIterator<Item = &'a str>,
    pairs: impl IntoIterator<Item = (u32, &'a str)>,
) -> Vec<u8> {
    let pairs: Vec<EncodedPair<'a>> = delta
        .pairs
        .iter()
        .zip(pairs)
        .map(|(pair, (merchant, customer))| EncodedPair {
            merchant,
            customer,
            count: pair.count,
            amount: pair.amount.0,
            gender: gender_byte(pair.first_gender),
        })
        .collect();
    debug_assert_eq!(pairs.len(), delta.pairs.len(), "a name for every pair");
    postcard::to_allocvec(&Encoded {
        version: VERSION,
        merchants: merchants.into_iter().collect(),
        pairs,
    })
    .expect("encoding to memory cannot fail")
}

/// Calls `visit` for every pair of an encoded delta, in order.
pub fn for_each_pair(blob: &[u8], visit: &mut dyn FnMut(PairRow<'_>)) -> DbResult<()> {
    let encoded: Encoded<'_> = postcard::from_bytes(blob)
        .map_err(|e| DbError::Failed(format!("undecodable chunk delta: {e}")))?;
    if encoded.version != VERSION {
        return Err(DbError::Failed(format!(
            "unknown chunk delta version {}",
            encoded.version
        )));
    }
    for pair in &encoded.pairs {
        let merchant = encoded
            .merchants
            .get(pair.merchant as usize)
            .ok_or_else(|| DbError::Failed("corrupt chunk delta: merchant index".into()))?;
        visit(PairRow {
            merchant,
            customer: pair.customer,
            count: u64::from(pair.count),
            amount: pair.amount,
            gender: Gender::from_code(std::str::from_utf8(&[pair.gender]).unwrap_or("O")),
        });
    }
    Ok(())
}

/// Pairs folded from consecutive deltas: counts and amounts added, the
/// gender of each pair's first appearance kept. Names are interned once
/// in a table of its own (single-threaded, so turning an id back into a
/// name is an array index), so folding allocates per distinct name, not
/// per row.
#[derive(Default)]
pub struct Merged {
    names: Rodeo,
    index: FxHashMap<(u32, u32), usize>,
    pairs: Vec<MergedPair>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct MergedPair {
    merchant: u32,
    customer: u32,
    count: u64,
    amount: i64,
    gender: Gender,
}

impl Merged {
    /// Folds one encoded delta in (deltas must come in chunk order).
    pub fn add(&mut self, blob: &[u8]) -> DbResult<()> {
        let (names, index, pairs) = (&mut self.names, &mut self.index, &mut self.pairs);
        for_each_pair(blob, &mut |row| {
            let merchant = names.get_or_intern(row.merchant).into_usize() as u32;
            let customer = names.get_or_intern(row.customer).into_usize() as u32;
            let slot = *index.entry((merchant, customer)).or_insert_with(|| {
                pairs.push(MergedPair {
                    merchant,
                    customer,
                    count: 0,
                    amount: 0,
                    gender: row.gender,
                });
                pairs.len() - 1
            });
            let pair = &mut pairs[slot];
            pair.count += row.count;
            pair.amount = pair.amount.saturating_add(row.amount);
        })
    }

    fn name(&self, id: u32) -> &str {
        let key = Spur::try_from_usize(id as usize).expect("id from this table");
        self.names.resolve(&key)
    }

    fn row(&self, pair: &MergedPair) -> PairRow<'_> {
        PairRow {
            merchant: self.name(pair.merchant),
            customer: self.name(pair.customer),
            count: pair.count,
            amount: pair.amount,
            gender: pair.gender,
        }
    }

    /// The merged pairs in first-appearance order.
    pub fn iter(&self) -> impl Iterator<Item = PairRow<'_>> {
        self.pairs.iter().map(|pair| self.row(pair))
    }

    /// The merged pairs in key order (merchant, then customer): upserts in
    /// this order touch each B-tree page once.
    pub fn sorted(&self) -> impl Iterator<Item = PairRow<'_>> {
        let mut rows: Vec<PairRow<'_>> = self.iter().collect();
        rows.sort_unstable_by(|a, b| (a.merchant, a.customer).cmp(&(b.merchant, b.customer)));
        rows.into_iter()
    }

    /// Visits one compacted row with its pending change (if any) added.
    pub fn overlay_row(&mut self, row: PairRow<'_>, visit: &mut dyn FnMut(PairRow<'_>)) {
        let id = |name: &str| self.names.get(name).map(|key| key.into_usize() as u32);
        let key = id(row.merchant).zip(id(row.customer));
        match key.and_then(|key| self.index.remove(&key)) {
            Some(slot) => {
                let pending = &mut self.pairs[slot];
                visit(PairRow {
                    count: row.count + pending.count,
                    amount: row.amount.saturating_add(pending.amount),
                    ..row
                });
                pending.count = 0;
            }
            None => visit(row),
        }
    }

    /// Visits the pairs that only exist in pending changes.
    pub fn finish(self, visit: &mut dyn FnMut(PairRow<'_>)) {
        for pair in self.pairs.iter().filter(|p| p.count > 0) {
            visit(self.row(pair));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::detect::{Cents, PairDelta};

    fn delta(names: &Names, rows: &[(&str, &str, u32, i64, Gender)]) -> ChunkDelta {
        ChunkDelta {
            pairs: rows
                .iter()
                .map(|&(m, c, count, amount, first_gender)| PairDelta {
                    merchant: names.merchant(m),
                    customer: names.customer(c),
                    count,
                    amount: Cents(amount),
                    first_gender,
                })
                .collect(),
        }
    }

    #[test]
    fn round_trips_and_merges_in_order() {
        let names = Names::new();
        let first = encode(
            &delta(
                &names,
                &[
                    ("M1", "C1", 2, 300, Gender::Female),
                    ("M2", "C1", 1, 5, Gender::Other),
                ],
            ),
            &names,
        );
        let second = encode(
            &delta(
                &names,
                &[
                    ("M1", "C1", 1, i64::MAX, Gender::Male),
                    ("M1", "C2", 4, 10, Gender::Male),
                ],
            ),
            &names,
        );
        let mut merged = Merged::default();
        merged.add(&first).unwrap();
        merged.add(&second).unwrap();
        let row = |p: PairRow<'_>| {
            (
                p.merchant.to_string(),
                p.customer.to_string(),
                p.count,
                p.amount,
                p.gender,
            )
        };
        let pairs: Vec<_> = merged.iter().map(row).collect();
        let expected = vec![
            (
                "M1".to_string(),
                "C1".to_string(),
                3,
                i64::MAX,
                Gender::Female,
            ),
            ("M2".to_string(), "C1".to_string(), 1, 5, Gender::Other),
            ("M1".to_string(), "C2".to_string(), 4, 10, Gender::Male),
        ];
        assert_eq!(pairs, expected);
        let sorted: Vec<_> = merged.sorted().map(row).collect();
        assert_eq!(
            sorted,
            vec![
                expected[0].clone(),
                expected[2].clone(),
                expected[1].clone()
            ]
        );
    }

    #[test]
    fn overlay_adds_pending_changes_to_compacted_rows() {
        let names = Names::new();
        let pending = encode(
            &delta(
                &names,
                &[
                    ("M1", "C1", 1, 5, Gender::Male),
                    ("M9", "C9", 2, 7, Gender::Female),
                ],
            ),
            &names,
        );
        let mut merged = Merged::default();
        merged.add(&pending).unwrap();
        let mut seen = Vec::new();
        let mut visit = |row: PairRow<'_>| {
            seen.push((
                row.merchant.to_string(),
                row.customer.to_string(),
                row.count,
                row.amount,
                row.gender,
            ))
        };
        for (merchant, customer, count, amount, gender) in [
            ("M1", "C1", 10, 100, Gender::Female),
            ("M1", "C2", 1, 1, Gender::Other),
        ] {
            merged.overlay_row(
                PairRow {
                    merchant,
                    customer,
                    count,
                    amount,
                    gender,
                },
                &mut visit,
            );
        }
        merged.finish(&mut visit);
        assert_eq!(
            seen,
            vec![
                ("M1".into(), "C1".into(), 11, 105, Gender::Female),
                ("M1".into(), "C2".into(), 1, 1, Gender::Other),
                ("M9".into(), "C9".into(), 2, 7, Gender::Female),
            ]
        );
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        assert!(for_each_pair(b"\x07garbage", &mut |_| {}).is_err());
        assert!(for_each_pair(b"", &mut |_| {}).is_err());
    }
}
