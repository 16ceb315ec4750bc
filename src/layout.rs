//! Where things live in the bucket. Chunk and batch names carry a
//! zero-padded sequence number first, so listing order is sequence order,
//! and a UTC stamp after it, so names are unique across runs.
//!
//! ```text
//! stream_chunks/chunk-0000000042-20261122T093405123Z.csv
//! detected_patterns/batch-0000000007-20261122T093406001Z.csv
//! quarantine/chunk-0000000042-20261122T093405123Z.bad-rows.csv
//! quarantine/chunk-0000000043-20261122T093406123Z.rejected.csv
//! ```

pub const CHUNK_PREFIX: &str = "stream_chunks/";
pub const DETECTION_PREFIX: &str = "detected_patterns/";
pub const QUARANTINE_PREFIX: &str = "quarantine/";

/// Header of every detection file.
pub const DETECTION_HEADER: &str =
    "YStartTime,detectionTime,patternId,ActionType,customerName,MerchantId";

pub fn chunk_key(seq: u64, stamp: &str) -> String {
    format!("{CHUNK_PREFIX}chunk-{seq:010}-{stamp}.csv")
}

/// The sequence number of a chunk written by the chunker, if the key has
/// the chunker's shape.
pub fn chunk_seq(key: &str) -> Option<u64> {
    let rest = key.strip_prefix(CHUNK_PREFIX)?.strip_prefix("chunk-")?;
    let digits = rest.get(..10)?;
    if rest.as_bytes().get(10) != Some(&b'-') {
        return None;
    }
    digits.parse().ok()
}

pub fn batch_key(batch_no: u64, stamp: &str) -> String {
    format!("{DETECTION_PREFIX}batch-{batch_no:010}-{stamp}.csv")
}

fn chunk_file_stem(chunk_key: &str) -> &str {
    let name = chunk_key.rsplit('/').next().unwrap_or(chunk_key);
    name.strip_suffix(".csv").unwrap_or(name)
}

/// Quarantine object listing a chunk's bad rows.
pub fn bad_rows_key(chunk_key: &str) -> String {
    format!(
        "{QUARANTINE_PREFIX}{}.bad-rows.csv",
        chunk_file_stem(chunk_key)
    )
}

/// Quarantine copy of a chunk rejected whole.
pub fn rejected_key(chunk_key: &str) -> String {
    format!(
        "{QUARANTINE_PREFIX}{}.rejected.csv",
        chunk_file_stem(chunk_key)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_sort_by_sequence_and_parse_back() {
        let a = chunk_key(9, "20261122T093405123Z");
        let b = chunk_key(10, "20251122T093405123Z");
        assert!(a < b);
        assert_eq!(a, "stream_chunks/chunk-0000000009-20261122T093405123Z.csv");
        assert_eq!(chunk_seq(&a), Some(9));
        assert_eq!(chunk_seq("stream_chunks/other.csv"), None);
        assert_eq!(
            bad_rows_key(&a),
            "quarantine/chunk-0000000009-20261122T093405123Z.bad-rows.csv"
        );
        assert_eq!(
            rejected_key("stream_chunks/odd name"),
            "quarantine/odd name.rejected.csv"
        );
        assert_eq!(
            batch_key(3, "X"),
            "detected_patterns/batch-0000000003-X.csv"
        );
    }
}
