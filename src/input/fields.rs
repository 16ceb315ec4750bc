//! How a raw CSV field becomes a value: surrounding whitespace is trimmed,
//! then one pair of single quotes is stripped (`'C1093826151'`). Header
//! names additionally lose a UTF-8 byte order mark and a pair of double
//! quotes that CSV quoting left behind, and are matched without regard to
//! ASCII case.

/// Trims ASCII whitespace, then strips one pair of wrapping single quotes.
#[inline]
pub fn clean(field: &[u8]) -> &[u8] {
    let field = field.trim_ascii();
    match field {
        [b'\'', inner @ .., b'\''] => inner,
        _ => field,
    }
}

/// The positions of the commas and line feeds of a byte string, in order,
/// found eight bytes at a time. A plain chunk line has a delimiter every
/// nine bytes or so, too dense for `memchr`'s vector search to pay off
/// (each call starts over); a word's delimiters come out of one mask here.
pub struct Delimiters<'a> {
    bytes: &'a [u8],
    /// Start of the next word to load.
    next: usize,
    /// Start of the word whose delimiters are pending.
    base: usize,
    /// The high bit of each pending delimiter byte of that word.
    pending: u64,
}

const LOW_SEVEN: u64 = u64::from_le_bytes([0x7f; 8]);
const COMMAS: u64 = u64::from_le_bytes([b','; 8]);
const LINE_FEEDS: u64 = u64::from_le_bytes([b'\n'; 8]);

/// The high bit of every zero byte of `word`, and nothing else (no carry
/// crosses bytes, so no false positives).
#[inline]
fn zero_bytes(word: u64) -> u64 {
    !(((word & LOW_SEVEN) + LOW_SEVEN) | word | LOW_SEVEN)
}

impl<'a> Delimiters<'a> {
    pub fn new(bytes: &'a [u8]) -> Delimiters<'a> {
        Delimiters {
            bytes,
            next: 0,
            base: 0,
            pending: 0,
        }
    }
}

impl Iterator for Delimiters<'_> {
    type Item = usize;

    #[inline]
    fn next(&mut self) -> Option<usize> {
        while self.pending == 0 {
            let rest = self
                .bytes
                .get(self.next..)
                .filter(|rest| !rest.is_empty())?;
            let word = match rest.first_chunk::<8>() {
                Some(word) => u64::from_le_bytes(*word),
                None => {
                    // The tail, padded with zeros: neither a comma nor a
                    // line feed.
                    let mut word = [0u8; 8];
                    word[..rest.len()].copy_from_slice(rest);
                    u64::from_le_bytes(word)
                }
            };
            self.base = self.next;
            self.next += rest.len().min(8);
            self.pending = zero_bytes(word ^ COMMAS) | zero_bytes(word ^ LINE_FEEDS);
        }
        let offset = self.pending.trailing_zeros() as usize / 8;
        self.pending &= self.pending - 1;
        Some(self.base + offset)
    }
}

const BOM: &[u8] = b"\xEF\xBB\xBF";

/// Normalizes a header name for lookup.
pub fn header_name(field: &[u8]) -> &[u8] {
    let field = field.strip_prefix(BOM).unwrap_or(field).trim_ascii();
    match field {
        [b'"', inner @ .., b'"'] => clean(inner),
        _ => clean(field),
    }
}

/// Why a header cannot be used.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ColumnError {
    /// Required columns the header does not name.
    #[error("header lacks column(s) {}", .0.join(", "))]
    Missing(Vec<&'static str>),
    /// A required column the header names more than once: which of them
    /// holds the value would be a guess.
    #[error("header names column {0} twice")]
    Duplicate(&'static str),
}

/// Finds each wanted column by name (ASCII case insensitive, see
/// [`header_name`]). Returns the indices, or the first wanted column named
/// twice, or else the names that are missing.
pub fn locate_columns<const N: usize>(
    header: &csv::ByteRecord,
    wanted: [&'static str; N],
) -> Result<[usize; N], ColumnError> {
    let mut found = [usize::MAX; N];
    for (index, field) in header.iter().enumerate() {
        let name = header_name(field);
        for (slot, want) in found.iter_mut().zip(wanted) {
            if name.eq_ignore_ascii_case(want.as_bytes()) {
                if *slot != usize::MAX {
                    return Err(ColumnError::Duplicate(want));
                }
                *slot = index;
            }
        }
    }
    let missing: Vec<&'static str> = wanted
        .iter()
        .zip(found)
        .filter(|(_, index)| *index == usize::MAX)
        .map(|(name, _)| *name)
        .collect();
    if missing.is_empty() {
        Ok(found)
    } else {
        Err(ColumnError::Missing(missing))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strips_whitespace_then_single_quotes() {
        assert_eq!(clean(b"'C1093826151'"), b"C1093826151");
        assert_eq!(clean(b"  'M1'  "), b"M1");
        assert_eq!(clean(b"' spaced '"), b" spaced ");
        assert_eq!(clean(b"plain"), b"plain");
        assert_eq!(clean(b"''"), b"");
        assert_eq!(clean(b"'"), b"'");
        assert_eq!(clean(b"'unbalanced"), b"'unbalanced");
    }

    proptest::proptest! {
        /// Every comma and line feed, in order, and nothing else.
        #[test]
        fn delimiters_are_the_commas_and_line_feeds(
            bytes in proptest::collection::vec(
                proptest::sample::select(vec![b',', b'\n', b'\r', b'a', 0u8, 0x80, 0xff, b'-']),
                0..100,
            )
        ) {
            let expected: Vec<usize> = (0..bytes.len())
                .filter(|&i| bytes[i] == b',' || bytes[i] == b'\n')
                .collect();
            proptest::prop_assert_eq!(Delimiters::new(&bytes).collect::<Vec<_>>(), expected);
        }
    }

    #[test]
    fn header_names_lose_bom_and_case() {
        let header = csv::ByteRecord::from(vec!["\u{feff}Step", " \"customer\" ", "AMOUNT"]);
        assert_eq!(header_name(&header[0]), b"Step");
        assert_eq!(header_name(&header[1]), b"customer");
        assert_eq!(locate_columns(&header, ["amount", "step"]), Ok([2, 0]));
        assert_eq!(
            locate_columns(&header, ["merchant", "step"]),
            Err(ColumnError::Missing(vec!["merchant"]))
        );
    }

    #[test]
    fn a_wanted_column_named_twice_is_refused() {
        for names in [
            vec!["amount", "customer", "amount"],
            vec!["Amount", "customer", "\"AMOUNT\""],
            vec!["\u{feff}amount", " amount "],
        ] {
            let header = csv::ByteRecord::from(names.clone());
            assert_eq!(
                locate_columns(&header, ["customer", "amount"]),
                Err(ColumnError::Duplicate("amount")),
                "{names:?}"
            );
        }
        // Columns nobody asked for may repeat.
        let header = csv::ByteRecord::from(vec!["x", "amount", "x"]);
        assert_eq!(locate_columns(&header, ["amount"]), Ok([1]));
        assert_eq!(
            ColumnError::Duplicate("amount").to_string(),
            "header names column amount twice"
        );
    }
}
