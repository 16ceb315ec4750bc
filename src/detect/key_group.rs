//! Key groups: how the cumulative state is split between the workers of a
//! cluster.
//!
//! Every pattern looks at one merchant at a time (its pairs, its ranks, its
//! customers' genders), so the merchant decides where a pair's state lives:
//! `key_group = xxh3_64(merchant's UTF-8 bytes, seed 0) mod key_groups`.
//! XXH3 is a published, versioned algorithm (its output for a given input
//! is fixed by its specification), so a merchant stays in its key group
//! across txpipe versions; the test vectors below pin it. The count of key
//! groups is fixed when the database is created, like Flink's maximum
//! parallelism: changing it would move merchants between groups whose
//! state is stored apart.

use xxhash_rust::xxh3::xxh3_64;

/// The key group of `merchant` among `key_groups` (at least 1).
pub fn key_group(merchant: &str, key_groups: u32) -> u32 {
    (xxh3_64(merchant.as_bytes()) % u64::from(key_groups.max(1))) as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_hash_never_changes() {
        // Pinned: a change here would move every merchant of an existing
        // cluster's database to another key group.
        // XXH3-64 of the empty input, as its specification gives it.
        assert_eq!(xxh3_64(b""), 0x2d06_8005_38d3_94c2);
        let groups: Vec<u32> = ["'M1823072687'", "'M348934600'", "'M85975013'", "ü"]
            .iter()
            .map(|m| key_group(m, 128))
            .collect();
        assert_eq!(groups, PINNED);
    }

    const PINNED: [u32; 4] = [84, 62, 1, 110];

    #[test]
    fn every_merchant_has_one_group_within_range() {
        for n in [1, 2, 7, 128, 32768] {
            for m in ["a", "b", "'M1'", ""] {
                let g = key_group(m, n);
                assert!(g < n);
                assert_eq!(g, key_group(m, n));
            }
        }
        assert_eq!(key_group("anything", 0), 0, "0 groups is read as 1");
    }
}
