//! The line a chunk object holds in place of a master-file record that was
//! not kept whole ([`super::records::Oversized`]: too long, or an
//! unterminated quote).
//!
//! The chunker writes it ([`write()`]) so that the chunk keeps one row per
//! master record, as the contract's chunking needs; the chunk parser reads
//! it back ([`read()`]) as a bad row whose reason says what happened and
//! whose raw line, kept in quarantine, is the record's prefix.
//!
//! It is one CSV record, every field double-quoted:
//!
//! ```text
//! "\xFFtxpipe-placeholder","too-long","314572800","1048576","0,'C1',..."
//! ```
//!
//! marker, cause (`too-long` or `unterminated-quote`), the record's length
//! in bytes, the bound that applied, and as much of the record's start as
//! keeps the whole line within that bound (so a parser with the same bound
//! reads it whole). The marker starts with byte 0xFF, which no UTF-8 text
//! holds: read by any rule the line is a bad row (invalid UTF-8), never a
//! good one. A master record that imitates a placeholder gains nothing: it
//! is a bad row either way.

use super::records::{Cause, Oversized};

/// The first field of a placeholder.
pub const MARKER: &[u8] = b"\xFFtxpipe-placeholder";

fn cause_name(cause: Cause) -> &'static str {
    match cause {
        Cause::TooLong => "too-long",
        Cause::UnterminatedQuote => "unterminated-quote",
    }
}

/// Appends the placeholder line of a record, of which `prefix` is the start
/// (at most `oversized.limit` bytes; it is cut further to fit).
pub fn write(out: &mut Vec<u8>, oversized: &Oversized, prefix: &[u8]) {
    let cause = cause_name(oversized.cause);
    let (length, limit) = (oversized.length.to_string(), oversized.limit.to_string());
    // Each field costs its bytes, a second byte per double quote, and its
    // two quotes; four commas separate the five fields.
    let fixed = [MARKER.len(), cause.len(), length.len(), limit.len(), 0]
        .iter()
        .map(|len| len + 2)
        .sum::<usize>()
        + 4;
    let mut budget = oversized.limit.saturating_sub(fixed);
    let kept = prefix
        .iter()
        .take_while(|&&byte| {
            let cost = if byte == b'"' { 2 } else { 1 };
            let fits = cost <= budget;
            budget = budget.saturating_sub(cost);
            fits
        })
        .count();
    let mut writer = csv::WriterBuilder::new()
        .quote_style(csv::QuoteStyle::Always)
        .from_writer(out);
    writer
        .write_record([
            MARKER,
            cause.as_bytes(),
            length.as_bytes(),
            limit.as_bytes(),
            &prefix[..kept],
        ])
        .and_then(|()| writer.flush().map_err(csv::Error::from))
        .expect("writing CSV to memory cannot fail");
}

/// The placeholder in a record's fields, if they are one: why the record
/// was cut short, and its prefix.
pub fn read(fields: &csv::ByteRecord) -> Option<(Oversized, &[u8])> {
    if fields.len() != 5 || &fields[0] != MARKER {
        return None;
    }
    let cause = match &fields[1] {
        b"too-long" => Cause::TooLong,
        b"unterminated-quote" => Cause::UnterminatedQuote,
        _ => return None,
    };
    let number = |field: &[u8]| std::str::from_utf8(field).ok()?.parse::<u64>().ok();
    let (length, limit) = (number(&fields[2])?, number(&fields[3])?);
    let limit = usize::try_from(limit).ok()?;
    let prefix = &fields[4];
    let consistent = prefix.len() <= limit
        && prefix.len() as u64 <= length
        && (cause == Cause::UnterminatedQuote || length > limit as u64);
    consistent.then_some((
        Oversized {
            cause,
            length,
            limit,
        },
        prefix,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::input::records::RawRecords;

    fn round_trip(oversized: Oversized, prefix: &[u8]) -> (Vec<u8>, Oversized, Vec<u8>) {
        let mut line = Vec::new();
        write(&mut line, &oversized, prefix);
        let mut records = RawRecords::new(line.as_slice(), oversized.limit);
        let mut fields = csv::ByteRecord::new();
        let record = records.next_into(&mut fields).unwrap().unwrap();
        assert_eq!(record.oversized, None, "a placeholder is within its bound");
        let (read_back, kept) = read(&fields).expect("a placeholder");
        (line.clone(), read_back, kept.to_vec())
    }

    #[test]
    fn fits_its_bound_and_reads_back() {
        let oversized = Oversized {
            cause: Cause::TooLong,
            length: 314_572_800,
            limit: 1024,
        };
        let prefix = vec![b'7'; 1024];
        let (line, read_back, kept) = round_trip(oversized, &prefix);
        assert_eq!(read_back, oversized);
        assert!(line.len() <= 1024 + 1, "{}", line.len());
        assert!(line.starts_with(b"\"\xFFtxpipe-placeholder\",\"too-long\",\"314572800\""));
        assert_eq!(kept, prefix[..kept.len()]);
        assert!(kept.len() > 900);
    }

    #[test]
    fn quotes_commas_and_line_breaks_in_the_prefix_survive() {
        let oversized = Oversized {
            cause: Cause::UnterminatedQuote,
            length: 2000,
            limit: 1024,
        };
        let mut prefix = b"0,\"'C1\r\n".repeat(200);
        prefix.truncate(1024);
        let (line, read_back, kept) = round_trip(oversized, &prefix);
        assert_eq!(read_back, oversized);
        assert!(line.len() <= 1024 + 1);
        assert_eq!(kept, prefix[..kept.len()]);
    }

    #[test]
    fn only_a_consistent_placeholder_is_one() {
        let record = |fields: &[&[u8]]| csv::ByteRecord::from(fields.to_vec());
        assert!(read(&record(&[MARKER, b"too-long", b"20", b"10", b"abc"])).is_some());
        for fields in [
            // Too long, yet within its bound.
            &[MARKER, b"too-long", b"5", b"10", b"abc"][..],
            // A prefix longer than the bound.
            &[MARKER, b"unterminated-quote", b"20", b"2", b"abc"],
            &[MARKER, b"other", b"20", b"10", b"abc"],
            &[MARKER, b"too-long", b"x", b"10", b"abc"],
            &[b"txpipe-placeholder", b"too-long", b"20", b"10", b"abc"],
            &[MARKER, b"too-long", b"20", b"10"],
        ] {
            assert_eq!(read(&record(fields)), None, "{fields:?}");
        }
    }
}
