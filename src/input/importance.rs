//! Reads the CustomerImportance file (BankSim network format:
//! `Source,Target,Weight,typeTrans,fraud`) and folds it into one exact
//! weight per customer and merchant: the mean over all its rows, whatever
//! the transaction type. Bad rows are skipped and counted.

use std::io::Read;

use rustc_hash::FxHashMap;

use super::fields::{clean, locate_columns};
use crate::detect::{Cents, parse_amount};

const REQUIRED_COLUMNS: [&str; 3] = ["source", "target", "weight"];

/// Per customer of one merchant: (sum of weights, rows).
type CustomerTotals = FxHashMap<Box<str>, (i64, u64)>;

/// One aggregated lookup entry: `w = weight_sum / rows`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ImportanceRow {
    pub customer: String,
    pub merchant: String,
    pub weight_sum: Cents,
    pub rows: u64,
}

#[derive(Clone, Debug, Default)]
pub struct Importance {
    /// Data rows read, good and bad.
    pub rows: u64,
    pub bad_rows: u64,
    /// Aggregated entries, sorted by merchant then customer.
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

/// Reads and aggregates a CustomerImportance file.
pub fn read_importance<R: Read>(source: R) -> Result<Importance, ImportanceError> {
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
    let mut totals: FxHashMap<Box<str>, CustomerTotals> = FxHashMap::default();
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
        let customer = std::str::from_utf8(customer).expect("checked");
        let merchant = std::str::from_utf8(merchant).expect("checked");
        let per_merchant = match totals.get_mut(merchant) {
            Some(map) => map,
            None => totals.entry(merchant.into()).or_default(),
        };
        let entry = match per_merchant.get_mut(customer) {
            Some(entry) => entry,
            None => per_merchant.entry(customer.into()).or_insert((0, 0)),
        };
        entry.0 = entry
            .0
            .checked_add(weight.0)
            .ok_or_else(|| ImportanceError::Overflow {
                customer: customer.to_string(),
                merchant: merchant.to_string(),
            })?;
        entry.1 += 1;
    }
    summary.entries = totals
        .into_iter()
        .flat_map(|(merchant, customers)| {
            customers
                .into_iter()
                .map(move |(customer, (sum, rows))| ImportanceRow {
                    customer: customer.into(),
                    merchant: merchant.to_string(),
                    weight_sum: Cents(sum),
                    rows,
                })
        })
        .collect();
    summary
        .entries
        .sort_unstable_by(|a, b| (&a.merchant, &a.customer).cmp(&(&b.merchant, &b.customer)));
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
        let summary = read_importance(data.as_bytes()).unwrap();
        assert_eq!(summary.rows, 6);
        assert_eq!(summary.bad_rows, 3);
        assert_eq!(
            summary.entries,
            vec![
                ImportanceRow {
                    customer: "C1".into(),
                    merchant: "M1".into(),
                    weight_sum: Cents(1455),
                    rows: 2
                },
                ImportanceRow {
                    customer: "C2".into(),
                    merchant: "M1".into(),
                    weight_sum: Cents(100),
                    rows: 1
                },
            ]
        );
    }

    #[test]
    fn a_wrong_header_is_an_error() {
        let err = read_importance(&b"customer,merchant,amount\n"[..]).unwrap_err();
        assert_eq!(
            err.to_string(),
            "CustomerImportance header lacks column(s) source, target, weight"
        );
        assert!(matches!(
            read_importance(&b""[..]),
            Err(ImportanceError::Empty)
        ));
    }
}
