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

const BOM: &[u8] = b"\xEF\xBB\xBF";

/// Normalizes a header name for lookup.
pub fn header_name(field: &[u8]) -> &[u8] {
    let field = field.strip_prefix(BOM).unwrap_or(field).trim_ascii();
    match field {
        [b'"', inner @ .., b'"'] => clean(inner),
        _ => clean(field),
    }
}

/// Finds each wanted column by name (first occurrence, ASCII case
/// insensitive). Returns the indices, or the names that are missing.
pub fn locate_columns<const N: usize>(
    header: &csv::ByteRecord,
    wanted: [&'static str; N],
) -> Result<[usize; N], Vec<&'static str>> {
    let mut found = [usize::MAX; N];
    for (index, field) in header.iter().enumerate() {
        let name = header_name(field);
        for (slot, want) in found.iter_mut().zip(wanted) {
            if *slot == usize::MAX && name.eq_ignore_ascii_case(want.as_bytes()) {
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
        Err(missing)
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

    #[test]
    fn header_names_lose_bom_and_case() {
        let header = csv::ByteRecord::from(vec!["\u{feff}Step", " \"customer\" ", "AMOUNT"]);
        assert_eq!(header_name(&header[0]), b"Step");
        assert_eq!(header_name(&header[1]), b"customer");
        assert_eq!(locate_columns(&header, ["amount", "step"]), Ok([2, 0]));
        assert_eq!(
            locate_columns(&header, ["merchant", "step"]),
            Err(vec!["merchant"])
        );
    }
}
