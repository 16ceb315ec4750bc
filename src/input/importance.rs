//! Reads the CustomerImportance file (BankSim network format:
//! `Source,Target,Weight,typeTrans,fraud`) and folds it into one exact
//! weight per customer and merchant: the mean over all its rows, whatever
//! the transaction type. Bad rows are skipped and counted.

use std::io::Read;

use rustc_hash::FxHashMap;

use super::fields::{clean, locate_columns};
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
    #[error("CustomerImportance header lacks column(s) {}", .0.join(", "))]
    MissingColumns(Vec<&'static str>),
    #[error("reading CustomerImportance: {0}")]
    Read(#[from] csv::Error),
    #[error("weights of customer {customer} at merchant {merchant} sum beyond the supported range")]
    Overflow { customer: String, merchant: String },
}

/// Reads and aggregates a CustomerImportance file; names become ids of
/// `names`, so a file of millions of rows costs a few bytes per pair.
pub fn read_importance<R: Read>(source: R, names: &Names) -> Result<Importance, ImportanceError> {
    let mut reader = csv::ReaderBuilder::new()
        .has_headers(false)
        .flexible(true)
        .from_reader(source);
    let mut record = csv::ByteRecord::new();
    if !reader.read_byte_record(&mut record)? {
        return Err(ImportanceError::Empty);
    }
    let header_fields = record.len();
    let [source_col, target_col, weight_col] =
        locate_columns(&record, REQUIRED_COLUMNS).map_err(ImportanceError::MissingColumns)?;
    let mut slots: FxHashMap<(u32, u32), usize> = FxHashMap::default();
    let mut summary = Importance::default();
    while reader.read_byte_record(&mut record)? {
        summary.rows += 1;
        let good = record.len() == header_fields && std::str::from_utf8(record.as_slice()).is_ok();
        let (customer, merchant, weight) = if good {
            (
                clean(&record[source_col]),
                clean(&record[target_col]),
                parse_amount(clean(&record[weight_col])),
            )
        } else {
            (
                &b""[..],
                &b""[..],
                Err(crate::detect::ParseAmountError::Empty),
            )
        };
        let (Ok(weight), false, false) = (weight, customer.is_empty(), merchant.is_empty()) else {
            summary.bad_rows += 1;
            continue;
        };
        // Valid UTF-8 was checked for the whole record above.
        let customer = names.customer(std::str::from_utf8(customer).expect("checked"));
        let merchant = names.merchant(std::str::from_utf8(merchant).expect("checked"));
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
        entry.weight_sum = Cents(entry.weight_sum.0.checked_add(weight.0).ok_or_else(|| {
            ImportanceError::Overflow {
                customer: names.name(customer.0).to_string(),
                merchant: names.name(merchant.0).to_string(),
            }
        })?);
        entry.rows += 1;
    }
    Ok(summary)
}

#[cfg(test)]
mod tests {
    use super::*;

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
        let summary = read_importance(data.as_bytes(), &names).unwrap();
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
    fn a_wrong_header_is_an_error() {
        let names = Names::new();
        let err = read_importance(&b"customer,merchant,amount\n"[..], &names).unwrap_err();
        assert_eq!(
            err.to_string(),
            "CustomerImportance header lacks column(s) source, target, weight"
        );
        assert!(matches!(
            read_importance(&b""[..], &names),
            Err(ImportanceError::Empty)
        ));
    }
}
