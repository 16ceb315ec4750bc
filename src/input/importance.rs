//! Reads the CustomerImportance file (BankSim network format:
//! `Source,Target,Weight,typeTrans,fraud`) and folds it into one exact
//! weight per customer and merchant: the mean over all its rows, whatever
//! the transaction type.
//!
//! The file is streamed record by record ([`RawRecords`]) with the bound of
//! `input.max_record_bytes`, so memory holds one record and the aggregate,
//! whatever the file holds. Bad rows (wrong field count, invalid UTF-8, an
//! empty or NUL-holding Source or Target, a bad Weight, a record too long
//! or with an unterminated quote) are skipped and counted; an unterminated
//! quote is also logged, as it changes how the lines after it are read.

use std::io::Read;

use rustc_hash::FxHashMap;
use tracing::warn;

use super::fields::{ColumnError, clean, locate_columns};
use super::records::{Cause, Oversized, RawRecords};
use crate::detect::{Cents, CustomerId, MerchantId, parse_amount};
use crate::names::Names;

const REQUIRED_COLUMNS: [&str; 3] = ["source", "target", "weight"];

/// One aggregated lookup entry: `w = weight_sum / rows`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ImportanceRow {
    pub merchant: MerchantId,
    pub customer: CustomerId,
    pub weight_sum: Cents,
    pub rows: u64,
}

#[derive(Clone, Debug, Default)]
pub struct Importance {
    /// Data rows read, good and bad.
    pub rows: u64,
    pub bad_rows: u64,
    /// Aggregated entries, in order of first appearance.
    pub entries: Vec<ImportanceRow>,
}

#[derive(Debug, thiserror::Error)]
pub enum ImportanceError {
    #[error("CustomerImportance file is empty")]
    Empty,
    #[error("CustomerImportance {0}")]
    Columns(ColumnError),
    #[error("CustomerImportance header: {0}")]
    OversizedHeader(Oversized),
    #[error("reading CustomerImportance: {0}")]
    Read(#[from] std::io::Error),
    #[error("weights of customer {customer} at merchant {merchant} sum beyond the supported range")]
    Overflow { customer: String, merchant: String },
}

/// A good row's values, borrowed from its record.
struct Row<'r> {
    customer: &'r str,
    merchant: &'r str,
    weight: Cents,
}

/// The row in `record`'s fields, if it is a good one.
fn check_row<'r>(
    record: &'r csv::ByteRecord,
    header_fields: usize,
    [source, target, weight]: [usize; 3],
) -> Option<Row<'r>> {
    if record.len() != header_fields || std::str::from_utf8(record.as_slice()).is_err() {
        return None;
    }
    let name = |index: usize| {
        let value = clean(&record[index]);
        let usable = !value.is_empty() && memchr::memchr(0, value).is_none();
        // The whole record is valid UTF-8 (checked above), and so is a
        // field of it split at ASCII bytes.
        usable.then(|| std::str::from_utf8(value).ok()).flatten()
    };
    Some(Row {
        customer: name(source)?,
        merchant: name(target)?,
        weight: parse_amount(clean(&record[weight])).ok()?,
    })
}

/// Checks that a CustomerImportance file starts with a usable header (what
/// start-up checks before anything runs).
pub fn check_header<R: Read>(source: R, max_record_bytes: usize) -> Result<(), ImportanceError> {
    let mut records = RawRecords::new(source, max_record_bytes);
    header(&mut records, &mut csv::ByteRecord::new()).map(|_| ())
}

/// Reads the header: its number of fields and the required columns'
/// positions.
fn header<R: Read>(
    records: &mut RawRecords<R>,
    record: &mut csv::ByteRecord,
) -> Result<(usize, [usize; 3]), ImportanceError> {
    match records.next_into(record)? {
        None => return Err(ImportanceError::Empty),
        Some(header) => {
            if let Some(oversized) = header.oversized {
                return Err(ImportanceError::OversizedHeader(oversized));
            }
        }
    }
    let columns = locate_columns(record, REQUIRED_COLUMNS).map_err(ImportanceError::Columns)?;
    Ok((record.len(), columns))
}

/// Reads and aggregates a CustomerImportance file; names become ids of
/// `names`, so a file of millions of rows costs a few bytes per pair.
/// Records longer than `max_record_bytes` are bad rows.
pub fn read_importance<R: Read>(
    source: R,
    names: &Names,
    max_record_bytes: usize,
) -> Result<Importance, ImportanceError> {
    let mut records = RawRecords::new(source, max_record_bytes);
    let mut record = csv::ByteRecord::new();
    let (header_fields, columns) = header(&mut records, &mut record)?;
    let mut slots: FxHashMap<(u32, u32), usize> = FxHashMap::default();
    let mut summary = Importance::default();
    while let Some(raw) = records.next_into(&mut record)? {
        summary.rows += 1;
        if let Some(oversized) = raw.oversized
            && oversized.cause == Cause::UnterminatedQuote
        {
            warn!(line = raw.line, "CustomerImportance: {oversized}");
        }
        let Some(row) = check_row(&record, header_fields, columns) else {
            summary.bad_rows += 1;
            continue;
        };
        let customer = names.customer(row.customer);
        let merchant = names.merchant(row.merchant);
        let entries = &mut summary.entries;
        let slot = *slots.entry((merchant.0, customer.0)).or_insert_with(|| {
            entries.push(ImportanceRow {
                merchant,
                customer,
                weight_sum: Cents(0),
                rows: 0,
            });
            entries.len() - 1
        });
        let entry = &mut entries[slot];
        entry.weight_sum = Cents(entry.weight_sum.0.checked_add(row.weight.0).ok_or_else(
            || ImportanceError::Overflow {
                customer: names.name(customer.0).to_string(),
                merchant: names.name(merchant.0).to_string(),
            },
        )?);
        entry.rows += 1;
    }
    Ok(summary)
}

#[cfg(test)]
mod tests {
    use super::*;

    const BIG: usize = 1 << 20;

    #[test]
    fn averages_every_transaction_type_together() {
        let data = "Source,Target,Weight,typeTrans,fraud\r\n\
                    'C1','M1',4.55,'es_transportation',0\r\n\
                    'C1','M1',10.00,'es_food',0\r\n\
                    'C2','M1',1,'es_food',0\r\n\
                    'C2','',1,'es_food',0\r\n\
                    'C3','M1',-1,'es_food',0\r\n\
                    'C3','M1',1,'es_food'\r\n";
        let names = Names::new();
        let summary = read_importance(data.as_bytes(), &names, BIG).unwrap();
        assert_eq!(summary.rows, 6);
        assert_eq!(summary.bad_rows, 3);
        let entries: Vec<(&str, &str, i64, u64)> = summary
            .entries
            .iter()
            .map(|e| {
                (
                    names.name(e.merchant.0),
                    names.name(e.customer.0),
                    e.weight_sum.0,
                    e.rows,
                )
            })
            .collect();
        assert_eq!(entries, vec![("M1", "C1", 1455, 2), ("M1", "C2", 100, 1)]);
    }

    #[test]
    fn nul_names_long_records_unterminated_quotes_and_long_weights_are_bad_rows() {
        let long = "7".repeat(2000);
        let data = format!(
            "Source,Target,Weight,typeTrans,fraud\n\
             'C\u{0}1','M1',1,'es_food',0\n\
             'C1','M\0',1,'es_food',0\n\
             'C1','M1',{long},'es_food',0\n\
             'C1','M1',2,'es_\0food',0\n\
             'C2',\"'M1,1,'es_food',0\n\
             'C2','M1',3,'es_food',0\n\
             'C2','M1',000000000000000000000000001.00,'es_food',0\n"
        );
        let names = Names::new();
        let summary = read_importance(data.as_bytes(), &names, 1024).unwrap();
        // The last: leading zeros count among the 15 digits before the point.
        assert_eq!((summary.rows, summary.bad_rows), (7, 5));
        let entries: Vec<(&str, &str, i64)> = summary
            .entries
            .iter()
            .map(|e| {
                (
                    names.name(e.merchant.0),
                    names.name(e.customer.0),
                    e.weight_sum.0,
                )
            })
            .collect();
        assert_eq!(entries, vec![("M1", "C1", 200), ("M1", "C2", 300)]);
    }

    #[test]
    fn a_header_naming_a_column_twice_is_an_error() {
        let names = Names::new();
        let err =
            read_importance(&b"Source,Target,Weight,\"source\"\n"[..], &names, BIG).unwrap_err();
        assert_eq!(
            err.to_string(),
            "CustomerImportance header names column source twice"
        );
    }

    #[test]
    fn a_wrong_header_is_an_error() {
        let names = Names::new();
        let err = read_importance(&b"customer,merchant,amount\n"[..], &names, BIG).unwrap_err();
        assert_eq!(
            err.to_string(),
            "CustomerImportance header lacks column(s) source, target, weight"
        );
        assert!(matches!(
            read_importance(&b""[..], &names, BIG),
            Err(ImportanceError::Empty)
        ));
    }
}
