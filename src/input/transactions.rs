//! Parses one chunk object (BankSim transactions CSV) into the pair delta the
//! detectors consume, plus the bad rows to quarantine.
//!
//! The header locates the columns by name. Every data row must have as many
//! fields as the header, be valid UTF-8, have a non-empty customer, merchant
//! and category without NUL bytes and a plain-decimal amount, and be no
//! longer than `input.max_record_bytes`; any other row is a bad row, kept
//! with its line number and reason (verbatim, or cut to the bound), and the
//! rest of the chunk still counts. A chunker's placeholder line (see
//! [`super::placeholder`]) is a bad row with the placeholder's reason. A
//! chunk whose header lacks a required column or names one twice (or that
//! is empty, or not text at all) cannot be read and is rejected whole.

use std::fmt;

use rustc_hash::FxHashMap;

use super::fields::{ColumnError, Delimiters, clean, locate_columns};
use super::placeholder;
use super::records::{Cause, Oversized, RawRecord, RawRecords};
use crate::detect::{
    Cents, ChunkDelta, CustomerId, Gender, MerchantId, PairDelta, ParseAmountError, parse_amount,
};
use crate::names::{self, Names};
use crate::table::{PREFETCH_AHEAD, PrefetchTable};

/// Columns a transactions file must have; others are ignored.
pub const REQUIRED_COLUMNS: [&str; 5] = ["customer", "gender", "merchant", "category", "amount"];

/// Why a row takes no part in any pattern.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BadRowReason {
    FieldCount {
        expected: usize,
        found: usize,
    },
    InvalidUtf8,
    EmptyField(&'static str),
    /// A NUL byte in a name: no database can key on it.
    NulInField(&'static str),
    Amount(ParseAmountError),
    /// Not kept whole: too long, or an unterminated quote.
    Oversized(Oversized),
}

impl fmt::Display for BadRowReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BadRowReason::FieldCount { expected, found } => {
                write!(f, "expected {expected} fields, found {found}")
            }
            BadRowReason::InvalidUtf8 => f.write_str("invalid UTF-8"),
            BadRowReason::EmptyField(column) => write!(f, "empty {column}"),
            BadRowReason::NulInField(column) => write!(f, "NUL in {column}"),
            BadRowReason::Amount(error) => write!(f, "bad amount: {error}"),
            BadRowReason::Oversized(oversized) => write!(f, "{oversized}"),
        }
    }
}

/// A row kept for the quarantine object.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BadRow {
    pub line: u64,
    pub reason: BadRowReason,
    pub raw: Vec<u8>,
}

/// Why a whole chunk was rejected.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RejectReason {
    #[error("empty object: no header line")]
    Empty,
    #[error("header is not valid UTF-8")]
    HeaderNotUtf8,
    #[error("{0}")]
    Columns(ColumnError),
    #[error("header: {0}")]
    OversizedHeader(Oversized),
    #[error("object vanished between listing and reading")]
    Vanished,
    /// Not read: larger than `watcher.max_chunk_bytes`.
    #[error("object of {size} bytes is larger than watcher.max_chunk_bytes ({limit})")]
    TooLarge { size: u64, limit: u64 },
}

/// A chunk folded into a pair delta.
#[derive(Clone, Debug, Default)]
pub struct ParsedChunk {
    pub delta: ChunkDelta,
    /// The names of `delta`'s pairs, as the chunk spells them.
    pub names: PairNames,
    /// Data rows, good and bad.
    pub rows: u64,
    pub bad_rows: Vec<BadRow>,
}

/// The names behind a chunk's pairs, in the order of its delta's pairs:
/// each merchant once, then per pair the chunk-local number of its
/// merchant and its customer's name. The delta holds process-wide ids;
/// whoever stores the delta by name (the state store's encoding,
/// `db::delta`) reads the names here, copied once from the chunk, instead
/// of resolving every id through the shared name table.
#[derive(Clone, Debug, Default)]
pub struct PairNames {
    text: String,
    /// Chunk-local merchant number → its span in `text`.
    merchants: Vec<(u32, u32)>,
    /// Per pair: its merchant's chunk-local number and its customer's span.
    pairs: Vec<(u32, u32, u32)>,
}

impl PairNames {
    fn with_capacity(pairs: usize) -> PairNames {
        PairNames {
            text: String::with_capacity(pairs * 12),
            merchants: Vec::new(),
            pairs: Vec::with_capacity(pairs),
        }
    }

    fn span(&mut self, name: &str) -> (u32, u32) {
        let start = self.text.len();
        self.text.push_str(name);
        // A chunk is far below 4 GiB (`watcher.max_chunk_bytes`).
        (start as u32, self.text.len() as u32)
    }

    /// Adds the next merchant (numbered from 0 in the order added).
    fn merchant(&mut self, name: &str) {
        let span = self.span(name);
        self.merchants.push(span);
    }

    /// Adds the next pair.
    fn pair(&mut self, merchant: u32, customer: &str) {
        let (start, end) = self.span(customer);
        self.pairs.push((merchant, start, end));
    }

    fn get(&self, (start, end): (u32, u32)) -> &str {
        &self.text[start as usize..end as usize]
    }

    /// The merchants, by chunk-local number.
    pub fn merchants(&self) -> impl ExactSizeIterator<Item = &str> {
        self.merchants.iter().map(|&span| self.get(span))
    }

    /// Per pair, in the delta's order: its merchant's chunk-local number
    /// and its customer.
    pub fn pairs(&self) -> impl ExactSizeIterator<Item = (u32, &str)> {
        self.pairs
            .iter()
            .map(|&(merchant, start, end)| (merchant, self.get((start, end))))
    }
}

/// Column positions, found from a header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Schema {
    pub fields: usize,
    customer: usize,
    gender: usize,
    merchant: usize,
    category: usize,
    amount: usize,
}

impl Schema {
    pub fn from_header(header: &csv::ByteRecord) -> Result<Schema, RejectReason> {
        if std::str::from_utf8(header.as_slice()).is_err() {
            return Err(RejectReason::HeaderNotUtf8);
        }
        let [customer, gender, merchant, category, amount] =
            locate_columns(header, REQUIRED_COLUMNS).map_err(RejectReason::Columns)?;
        Ok(Schema {
            fields: header.len(),
            customer,
            gender,
            merchant,
            category,
            amount,
        })
    }
}

/// One good row, borrowed from the chunk.
struct Row<'r> {
    customer: &'r str,
    merchant: &'r str,
    gender: Gender,
    amount: i64,
}

fn check_row<'r>(schema: &Schema, fields: &'r csv::ByteRecord) -> Result<Row<'r>, BadRowReason> {
    if fields.len() != schema.fields {
        return Err(BadRowReason::FieldCount {
            expected: schema.fields,
            found: fields.len(),
        });
    }
    if std::str::from_utf8(fields.as_slice()).is_err() {
        return Err(BadRowReason::InvalidUtf8);
    }
    let text = |index: usize, column: &'static str| -> Result<&'r str, BadRowReason> {
        let value = clean(&fields[index]);
        if value.is_empty() {
            return Err(BadRowReason::EmptyField(column));
        }
        if memchr::memchr(0, value).is_some() {
            return Err(BadRowReason::NulInField(column));
        }
        // The whole record was checked above; a field of valid UTF-8 split
        // at ASCII bytes is valid too.
        std::str::from_utf8(value).map_err(|_| BadRowReason::InvalidUtf8)
    };
    let customer = text(schema.customer, "customer")?;
    let merchant = text(schema.merchant, "merchant")?;
    text(schema.category, "category")?;
    let amount = parse_amount(clean(&fields[schema.amount])).map_err(BadRowReason::Amount)?;
    Ok(Row {
        customer,
        merchant,
        gender: Gender::from_field(clean(&fields[schema.gender])),
        amount: amount.0,
    })
}

/// Turns chunks into deltas. Keeps its scratch space between chunks.
pub struct ChunkParser {
    fields: csv::ByteRecord,
    slots: FxHashMap<(u32, u32), usize>,
    /// Merchant id → chunk-local number (for [`PairNames`]).
    local_merchants: FxHashMap<u32, u32>,
    bounds: Vec<(usize, usize)>,
    /// `input.max_record_bytes`: longer rows are bad rows, cut to this.
    max_record: usize,
}

/// Whether a chunk body is plain: no double quotes, no NUL, valid UTF-8,
/// and every CR part of a CRLF. Then records are exactly its non-empty
/// lines and fields exactly the text between commas, so the fast path below
/// gives what the general CSV reader would, several times faster. (A NUL
/// makes a row bad only in a name; the general path checks where it is.)
fn is_plain(body: &[u8]) -> bool {
    memchr::memchr2(b'"', 0, body).is_none()
        && memchr::memchr_iter(b'\r', body).count()
            == memchr::memmem::find_iter(body, b"\r\n").count()
        && std::str::from_utf8(body).is_ok()
}

impl ChunkParser {
    /// A parser for chunks whose records may be `max_record_bytes` long.
    pub fn new(max_record_bytes: usize) -> Self {
        ChunkParser {
            fields: csv::ByteRecord::new(),
            slots: FxHashMap::default(),
            local_merchants: FxHashMap::default(),
            bounds: Vec::new(),
            max_record: max_record_bytes.max(1),
        }
    }

    pub fn parse(&mut self, data: &[u8], names: &Names) -> Result<ParsedChunk, RejectReason> {
        let mut records = RawRecords::new(data, self.max_record);
        match next_in_memory(&mut records, &mut self.fields) {
            None => return Err(RejectReason::Empty),
            Some(RawRecord {
                oversized: Some(oversized),
                ..
            }) => return Err(RejectReason::OversizedHeader(oversized)),
            Some(_) => {}
        }
        let schema = Schema::from_header(&self.fields)?;
        let body_start = (records.offset() as usize).min(data.len());
        let body = &data[body_start..];
        if is_plain(body) {
            let first_line = 1 + memchr::memchr_iter(b'\n', &data[..body_start]).count() as u64;
            Ok(self.parse_plain(body, first_line, &schema, names))
        } else {
            Ok(self.parse_general(records, &schema, names))
        }
    }

    /// Any CSV, one record at a time ([`RawRecords`]).
    fn parse_general(
        &mut self,
        mut records: RawRecords<&[u8]>,
        schema: &Schema,
        names: &Names,
    ) -> ParsedChunk {
        let mut parsed = ParsedChunk::default();
        self.slots.clear();
        self.local_merchants.clear();
        while let Some(record) = next_in_memory(&mut records, &mut self.fields) {
            parsed.rows += 1;
            let checked = match record.oversized {
                Some(oversized) => Err((BadRowReason::Oversized(oversized), record.raw)),
                None => match placeholder::read(&self.fields) {
                    Some((oversized, prefix)) => Err((BadRowReason::Oversized(oversized), prefix)),
                    None => check_row(schema, &self.fields).map_err(|reason| (reason, record.raw)),
                },
            };
            let row = match checked {
                Ok(row) => row,
                Err((reason, raw)) => {
                    parsed.bad_rows.push(BadRow {
                        line: record.line,
                        reason,
                        raw: raw.to_vec(),
                    });
                    continue;
                }
            };
            let merchant = names.merchant(row.merchant);
            let customer = names.customer(row.customer);
            let (pairs, pair_names) = (&mut parsed.delta.pairs, &mut parsed.names);
            let local_merchants = &mut self.local_merchants;
            let slot = *self
                .slots
                .entry((merchant.0, customer.0))
                .or_insert_with(|| {
                    let next = local_merchants.len() as u32;
                    let local = *local_merchants.entry(merchant.0).or_insert_with(|| {
                        pair_names.merchant(row.merchant);
                        next
                    });
                    pair_names.pair(local, row.customer);
                    pairs.push(PairDelta {
                        merchant,
                        customer,
                        count: 0,
                        amount: Cents(0),
                        first_gender: row.gender,
                    });
                    pairs.len() - 1
                });
            let pair = &mut pairs[slot];
            pair.count += 1;
            pair.amount = pair.amount.saturating_add(Cents(row.amount));
        }
        parsed
    }

    /// A plain body (see [`is_plain`]): lines and commas, no per-row
    /// allocation, each distinct name's id looked up once per chunk, all of
    /// them under one lock ([`Names::ids`]).
    ///
    /// Two passes. The first splits and checks the lines and gives every
    /// good row an integer pair key: its customer's name packed into a
    /// `u128` (see [`names::pack`]) with the chunk-local number of its
    /// merchant in two spare bytes. The second folds rows by that key in a
    /// [`PrefetchTable`], asking for the slot of the row
    /// [`PREFETCH_AHEAD`] rows on: a chunk of 10,000 distinct pairs does
    /// not fit in cache, and a fold that waited for each row's slot would
    /// stall on one cache miss per row.
    fn parse_plain(
        &mut self,
        body: &[u8],
        first_line: u64,
        schema: &Schema,
        names: &Names,
    ) -> ParsedChunk {
        struct Row<'d> {
            key: u128,
            customer: &'d [u8],
            amount: Cents,
            merchant: u32,
            gender: Gender,
        }
        struct Fold<'d> {
            customer: &'d [u8],
            amount: Cents,
            merchant: u32,
            count: u32,
            gender: Gender,
        }
        let mut parsed = ParsedChunk::default();
        let mut rows: Vec<Row<'_>> = Vec::with_capacity(body.len() / 64 + 16);
        // Merchants in order of first appearance, and their local numbers.
        let mut merchants: Vec<&str> = Vec::new();
        let mut merchant_numbers: FxHashMap<u128, u32> = FxHashMap::default();
        let mut long_merchants: FxHashMap<&[u8], u32> = FxHashMap::default();
        let mut long_pairs: FxHashMap<(u32, &[u8]), u128> = FxHashMap::default();
        let mut line_number = first_line;
        let mut line_start = 0;
        let mut field_start = 0;
        let max_record = self.max_record;
        // Field bounds within `body`, for the current line.
        let bounds = &mut self.bounds;
        bounds.clear();
        let mut delimiters = Delimiters::new(body);
        loop {
            let line_feed = match delimiters.next() {
                Some(comma) if body[comma] == b',' => {
                    bounds.push((field_start, comma));
                    field_start = comma + 1;
                    continue;
                }
                Some(line_feed) => line_feed,
                // The last line need not end in a line feed.
                None if line_start < body.len() => body.len(),
                None => break,
            };
            let mut line_end = line_feed;
            if line_end > line_start && body[line_end - 1] == b'\r' {
                line_end -= 1;
            }
            bounds.push((field_start.min(line_end), line_end));
            let line = &body[line_start..line_end];
            let this_line = line_number;
            line_number += 1;
            line_start = line_feed + 1;
            field_start = line_start;
            // The line's row, if it is a good one; the bounds are cleared
            // for the next line whatever it was.
            let row = 'line: {
                if line.is_empty() {
                    break 'line None;
                }
                parsed.rows += 1;
                let field = |index: usize| {
                    let (from, to) = bounds[index];
                    clean(&body[from..to])
                };
                let checked = if line.len() > max_record {
                    Err(BadRowReason::Oversized(Oversized {
                        cause: Cause::TooLong,
                        length: line.len() as u64,
                        limit: max_record,
                    }))
                } else if bounds.len() != schema.fields {
                    Err(BadRowReason::FieldCount {
                        expected: schema.fields,
                        found: bounds.len(),
                    })
                } else if field(schema.customer).is_empty() {
                    Err(BadRowReason::EmptyField("customer"))
                } else if field(schema.merchant).is_empty() {
                    Err(BadRowReason::EmptyField("merchant"))
                } else if field(schema.category).is_empty() {
                    Err(BadRowReason::EmptyField("category"))
                } else {
                    parse_amount(field(schema.amount)).map_err(BadRowReason::Amount)
                };
                let amount = match checked {
                    Ok(amount) => amount,
                    Err(reason) => {
                        parsed.bad_rows.push(BadRow {
                            line: this_line,
                            reason,
                            raw: line[..line.len().min(max_record)].to_vec(),
                        });
                        break 'line None;
                    }
                };
                let (merchant, customer) = (field(schema.merchant), field(schema.customer));
                let next = merchants.len() as u32;
                let number = match names::pack(merchant) {
                    Some(packed) => *merchant_numbers.entry(packed).or_insert(next),
                    None => *long_merchants.entry(merchant).or_insert(next),
                };
                if number == next {
                    merchants.push(text(merchant));
                }
                let merchant = number;
                let key = match names::pack(customer) {
                    Some(packed) if customer.len() <= PAIR_KEY_NAME_MAX && merchant <= 0xFFFF => {
                        packed | u128::from(merchant) << PAIR_KEY_MERCHANT_SHIFT
                    }
                    _ => {
                        let next = LONG_PAIR_TAG | long_pairs.len() as u128;
                        *long_pairs.entry((merchant, customer)).or_insert(next)
                    }
                };
                Some(Row {
                    key,
                    customer,
                    amount,
                    merchant,
                    gender: Gender::from_field(field(schema.gender)),
                })
            };
            bounds.clear();
            rows.extend(row);
        }
        // Fold number + 1 per pair key (0: not seen yet).
        let mut table: PrefetchTable<u128, u32> = PrefetchTable::with_capacity(rows.len());
        let mut folds: Vec<Fold<'_>> = Vec::with_capacity(rows.len());
        for (index, row) in rows.iter().enumerate() {
            if let Some(ahead) = rows.get(index + PREFETCH_AHEAD) {
                table.prefetch(ahead.key);
            }
            let fold = table.get_or_default(row.key);
            if *fold == 0 {
                folds.push(Fold {
                    customer: row.customer,
                    amount: Cents(0),
                    merchant: row.merchant,
                    count: 0,
                    gender: row.gender,
                });
                *fold = folds.len() as u32;
            }
            let fold = &mut folds[*fold as usize - 1];
            fold.count += 1;
            fold.amount = fold.amount.saturating_add(row.amount);
        }
        drop(rows);
        let mut merchant_ids = Vec::new();
        names.ids(&merchants, &mut merchant_ids);
        let customers: Vec<&str> = folds.iter().map(|fold| text(fold.customer)).collect();
        let mut customer_ids = Vec::new();
        names.ids(&customers, &mut customer_ids);
        parsed.names = PairNames::with_capacity(folds.len());
        for merchant in &merchants {
            parsed.names.merchant(merchant);
        }
        for (fold, customer) in folds.iter().zip(&customers) {
            parsed.names.pair(fold.merchant, customer);
        }
        parsed.delta.pairs = folds
            .iter()
            .zip(customer_ids)
            .map(|(fold, customer_id)| {
                let merchant = fold.merchant as usize;
                PairDelta {
                    merchant: MerchantId(merchant_ids[merchant]),
                    customer: CustomerId(customer_id),
                    count: fold.count,
                    amount: fold.amount,
                    first_gender: fold.gender,
                }
            })
            .collect();
        parsed
    }
}

/// The next record of a chunk in memory, which reading cannot fail.
fn next_in_memory<'r>(
    records: &'r mut RawRecords<&[u8]>,
    fields: &mut csv::ByteRecord,
) -> Option<RawRecord<'r>> {
    records
        .next_into(fields)
        .expect("reading from memory cannot fail")
}

/// Text of a field of a plain body, which is valid UTF-8 (checked by
/// [`is_plain`]) and whose fields end at ASCII bytes.
fn text(bytes: &[u8]) -> &str {
    std::str::from_utf8(bytes).expect("checked by is_plain")
}

/// A plain row's pair key is its customer's packed name (bytes 0 to 12 for
/// names of up to 13 bytes, the length in byte 15) with the merchant's
/// chunk-local number in bytes 13 and 14. Other pairs get a chunk-local
/// number tagged with a top byte no packed name has.
const PAIR_KEY_NAME_MAX: usize = 13;
const PAIR_KEY_MERCHANT_SHIFT: u32 = 8 * PAIR_KEY_NAME_MAX as u32;
const LONG_PAIR_TAG: u128 = 0xFF << 120;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::detect::Cents;

    const BIG: usize = 1 << 20;

    const HEADER: &str =
        "step,customer,age,gender,zipcodeOri,merchant,zipMerchant,category,amount,fraud\r\n";

    fn parse(data: &str) -> (ParsedChunk, Names) {
        let names = Names::new();
        let parsed = ChunkParser::new(BIG)
            .parse(data.as_bytes(), &names)
            .unwrap();
        (parsed, names)
    }

    fn reasons(parsed: &ParsedChunk) -> Vec<(u64, String)> {
        parsed
            .bad_rows
            .iter()
            .map(|b| (b.line, b.reason.to_string()))
            .collect()
    }

    /// The parser's pair names say what the name table says of the
    /// delta's ids, on the plain path and on the general one.
    #[test]
    fn pair_names_match_the_delta_on_both_paths() {
        let plain = format!(
            "{HEADER}0,'C1','4','F','28007','M1','28007','es_food',1,0\r\n\
             0,'C2','4','M','28007','M2','28007','es_food',1,0\r\n\
             0,'C1','4','M','28007','M2','28007','es_food',1,0\r\n\
             0,'C1','4','M','28007','M1','28007','es_food',1,0\r\n"
        );
        let quoted = format!(
            "{HEADER}0,\"C,1\",'4','F','28007','M1','28007','es_food',1,0\r\n\
             0,'C2','4','M','28007',\"M\"\"2\",'28007','es_food',1,0\r\n\
             0,\"C,1\",'4','M','28007',\"M\"\"2\",'28007','es_food',1,0\r\n"
        );
        for data in [plain, quoted] {
            let (parsed, names) = parse(&data);
            let merchants: Vec<&str> = parsed.names.merchants().collect();
            let pairs: Vec<(u32, &str)> = parsed.names.pairs().collect();
            assert_eq!(pairs.len(), parsed.delta.pairs.len());
            assert!(parsed.delta.pairs.len() >= 3);
            for (pair, (merchant, customer)) in parsed.delta.pairs.iter().zip(pairs) {
                assert_eq!(merchants[merchant as usize], names.name(pair.merchant.0));
                assert_eq!(customer, names.name(pair.customer.0));
            }
        }
    }

    #[test]
    fn folds_rows_per_pair_in_first_seen_order() {
        let data = format!(
            "{HEADER}0,'C1','4','F','28007','M1','28007','es_food',10.50,0\r\n\
             0,'C2','4','M','28007','M1','28007','es_food',1,0\r\n\
             1,'C1','4','M','28007','M1','28007','es_food',0.005,0\r\n"
        );
        let (parsed, names) = parse(&data);
        assert_eq!(parsed.rows, 3);
        assert!(parsed.bad_rows.is_empty());
        let pairs = &parsed.delta.pairs;
        assert_eq!(pairs.len(), 2);
        assert_eq!(names.name(pairs[0].customer.0), "C1");
        assert_eq!(names.name(pairs[0].merchant.0), "M1");
        assert_eq!((pairs[0].count, pairs[0].amount), (2, Cents(1051)));
        // Gender comes from the pair's first row, not the later 'M'.
        assert_eq!(pairs[0].first_gender, Gender::Female);
        assert_eq!(pairs[1].first_gender, Gender::Male);
    }

    #[test]
    fn columns_are_found_by_name_with_quoted_headers_and_crlf() {
        let data = "\"amount\",\"merchant\",\"category\",\"gender\",\"customer\",extra\r\n\
                    7.25,'M9','food','E','C9',x\r\n";
        let (parsed, names) = parse(data);
        assert_eq!(parsed.delta.pairs.len(), 1);
        let pair = parsed.delta.pairs[0];
        assert_eq!(names.name(pair.customer.0), "C9");
        assert_eq!(pair.amount, Cents(725));
        assert_eq!(pair.first_gender, Gender::Other);
    }

    #[test]
    fn quoted_fields_keep_commas_and_newlines() {
        let data =
            format!("{HEADER}0,\"'C,1'\",'4','U','1',\"'M\n1'\",'1','es_food',\"3.00\",0\r\n");
        let (parsed, names) = parse(&data);
        assert!(parsed.bad_rows.is_empty(), "{:?}", parsed.bad_rows);
        assert_eq!(names.name(parsed.delta.pairs[0].customer.0), "C,1");
        assert_eq!(names.name(parsed.delta.pairs[0].merchant.0), "M\n1");
    }

    #[test]
    fn every_bad_row_reason_is_reported_with_its_line() {
        let data = format!(
            "{HEADER}\
             0,'C1','4','F','1','M1','1','es_food',1.00\r\n\
             0,'C1','4','F','1','M1','1','es_food',1.00,0,extra\r\n\
             0,'','4','F','1','M1','1','es_food',1.00,0\r\n\
             0,'C1','4','F','1',  ,'1','es_food',1.00,0\r\n\
             0,'C1','4','F','1','M1','1','',1.00,0\r\n\
             0,'C1','4','F','1','M1','1','es_food',-1.00,0\r\n\
             0,'C1','4','F','1','M1','1','es_food',NaN,0\r\n\
             0,'C1','4','F','1','M1','1','es_food',1e400,0\r\n\
             0,'C1','4','F','1','M1','1','es_food',,0\r\n\
             0,'C1','4','F','1','M1','1','es_food',1234567890123456,0\r\n\
             0,'C1','4','F','1','M1','1','es_food',2.00,0\r\n"
        );
        let (parsed, _) = parse(&data);
        assert_eq!(parsed.rows, 11);
        assert_eq!(
            reasons(&parsed),
            vec![
                (2, "expected 10 fields, found 9".to_string()),
                (3, "expected 10 fields, found 11".to_string()),
                (4, "empty customer".to_string()),
                (5, "empty merchant".to_string()),
                (6, "empty category".to_string()),
                (
                    7,
                    "bad amount: amount is not plain decimal notation".to_string()
                ),
                (
                    8,
                    "bad amount: amount is not plain decimal notation".to_string()
                ),
                (
                    9,
                    "bad amount: amount is not plain decimal notation".to_string()
                ),
                (10, "bad amount: amount is empty".to_string()),
                (
                    11,
                    "bad amount: amount has more than 15 digits before the point".to_string()
                ),
            ]
        );
        assert_eq!(
            parsed.bad_rows[0].raw,
            b"0,'C1','4','F','1','M1','1','es_food',1.00"
        );
        // The good row still counts.
        assert_eq!(parsed.delta.pairs.len(), 1);
        assert_eq!(parsed.delta.pairs[0].amount, Cents(200));
    }

    #[test]
    fn invalid_utf8_is_a_bad_row_kept_verbatim() {
        let mut data = HEADER.as_bytes().to_vec();
        data.extend_from_slice(b"0,'C\xff1','4','F','1','M1','1','es_food',1.00,0\r\n");
        let names = Names::new();
        let parsed = ChunkParser::new(BIG).parse(&data, &names).unwrap();
        assert_eq!(parsed.bad_rows.len(), 1);
        assert_eq!(parsed.bad_rows[0].reason, BadRowReason::InvalidUtf8);
        assert_eq!(
            parsed.bad_rows[0].raw,
            b"0,'C\xff1','4','F','1','M1','1','es_food',1.00,0"
        );
    }

    #[test]
    fn unreadable_chunks_are_rejected() {
        let names = Names::new();
        let mut parser = ChunkParser::new(BIG);
        assert_eq!(parser.parse(b"", &names).unwrap_err(), RejectReason::Empty);
        assert_eq!(
            parser.parse(b"\r\n\r\n", &names).unwrap_err(),
            RejectReason::Empty
        );
        assert_eq!(
            parser
                .parse(b"step,customer,gender\n1,2,3\n", &names)
                .unwrap_err(),
            RejectReason::Columns(ColumnError::Missing(vec!["merchant", "category", "amount"]))
        );
        assert!(parser.parse(b"\x00\x9f\x92\x96binary", &names).is_err());
    }

    #[test]
    fn a_nul_in_a_name_is_a_bad_row_wherever_else_it_may_be() {
        let data = format!(
            "{HEADER}\
             0,'C\u{0}1','4','F','1','M1','1','es_food',1.00,0\r\n\
             0,'C1','4','F','1','M\0','1','es_food',1.00,0\r\n\
             0,'C1','4','F','1','M1','1','es\0food',1.00,0\r\n\
             \0,'C1','4','F','1','M1','1','es_food',2.00,0\r\n"
        );
        let (parsed, names) = parse(&data);
        assert_eq!(parsed.rows, 4);
        assert_eq!(
            reasons(&parsed),
            vec![
                (2, "NUL in customer".to_string()),
                (3, "NUL in merchant".to_string()),
                (4, "NUL in category".to_string()),
            ]
        );
        // A NUL in a column no pattern reads does not matter.
        assert_eq!(parsed.delta.pairs.len(), 1);
        assert_eq!(names.name(parsed.delta.pairs[0].customer.0), "C1");
        // Short names pack into integer keys on the fast path: a body with
        // a NUL anywhere takes the general path, which looks at names.
        assert!(!is_plain(b"0,C\x001,M1\n"));
    }

    #[test]
    fn a_header_naming_a_column_twice_is_rejected() {
        let names = Names::new();
        for header in [
            "customer,gender,merchant,category,amount,amount\n",
            "customer,gender,merchant,category,\"Amount\",AMOUNT\n",
        ] {
            let data = format!("{header}C1,F,M1,food,1.00,2.00\n");
            let error = ChunkParser::new(BIG)
                .parse(data.as_bytes(), &names)
                .unwrap_err();
            assert_eq!(error.to_string(), "header names column amount twice");
        }
    }

    /// `(line, reason, raw length)` of each bad row of `data` with a bound of
    /// `limit`.
    fn bad_rows(data: &[u8], limit: usize) -> Vec<(u64, String, usize)> {
        let names = Names::new();
        let parsed = ChunkParser::new(limit).parse(data, &names).unwrap();
        parsed
            .bad_rows
            .iter()
            .map(|b| (b.line, b.reason.to_string(), b.raw.len()))
            .collect()
    }

    #[test]
    fn a_row_past_the_bound_is_bad_and_kept_cut_to_it() {
        let row = "0,'C1','4','F','1','M1','1','es_food',1.00,0\r\n";
        let long = format!(
            "0,'C2','4','F','1','M1','1','es_food',1{},0\r\n",
            "0".repeat(300)
        );
        let expected = vec![(
            3,
            "record of 341 bytes exceeds input.max_record_bytes (200)".to_string(),
            200,
        )];
        // The plain fast path, and the general path (a quote elsewhere).
        let plain = format!("{HEADER}{row}{long}{row}");
        assert!(is_plain(&plain.as_bytes()[HEADER.len()..]));
        assert_eq!(bad_rows(plain.as_bytes(), 200), expected);
        let general =
            format!("{HEADER}{row}{long}\"0\",'C3','4','F','1','M1','1','es_food',1.00,0\r\n");
        assert_eq!(bad_rows(general.as_bytes(), 200), expected);
        let error = ChunkParser::new(50)
            .parse(plain.as_bytes(), &Names::new())
            .unwrap_err();
        assert_eq!(
            error.to_string(),
            "header: record of 78 bytes exceeds input.max_record_bytes (50)"
        );
    }

    #[test]
    fn an_unterminated_quote_costs_one_row() {
        let data = format!(
            "{HEADER}\
             0,'C1','4','F','1',\"'M1,'1','es_food',1.00,0\r\n\
             0,'C2','4','F','1','M1','1','es_food',1.00,0\r\n\
             0,'C3','4','F','1','M1','1','es_food',1.00,0\r\n"
        );
        let found = bad_rows(data.as_bytes(), BIG);
        assert_eq!(found.len(), 1);
        assert_eq!((found[0].0, found[0].2), (2, 44));
        assert!(
            found[0].1.starts_with("unterminated quote"),
            "{}",
            found[0].1
        );
        let (parsed, _) = parse(&data);
        assert_eq!((parsed.rows, parsed.delta.pairs.len()), (3, 2));
    }

    #[test]
    fn a_placeholder_is_a_bad_row_with_its_reason_and_prefix() {
        let oversized = Oversized {
            cause: Cause::TooLong,
            length: 314_572_800,
            limit: 1024,
        };
        let mut data = HEADER.as_bytes().to_vec();
        data.extend_from_slice(b"0,'C1','4','F','1','M1','1','es_food',1.00,0\r\n");
        placeholder::write(
            &mut data,
            &oversized,
            b"0,'C2','4','F','1','M1','1','es_food',7777",
        );
        data.extend_from_slice(b"0,'C3','4','F','1','M1','1','es_food',1.00,0\r\n");
        let names = Names::new();
        let parsed = ChunkParser::new(1024).parse(&data, &names).unwrap();
        assert_eq!(parsed.rows, 3);
        assert_eq!(parsed.delta.pairs.len(), 2);
        assert_eq!(
            parsed.bad_rows,
            vec![BadRow {
                line: 3,
                reason: BadRowReason::Oversized(oversized),
                raw: b"0,'C2','4','F','1','M1','1','es_food',7777".to_vec(),
            }]
        );
        assert_eq!(
            parsed.bad_rows[0].reason.to_string(),
            "record of 314572800 bytes exceeds input.max_record_bytes (1024)"
        );
    }

    /// The plain fast path and the general CSV reader agree on every plain
    /// body: rows, bad rows (line, reason, raw bytes) and folded pairs.
    mod plain_equals_general {
        use super::*;
        use proptest::prelude::*;

        fn field() -> impl Strategy<Value = String> {
            prop_oneof![
                Just(String::new()),
                Just("'C1'".to_string()),
                Just(" 'C2' ".to_string()),
                Just("M1".to_string()),
                Just("'M2'".to_string()),
                Just("F".to_string()),
                Just("'M'".to_string()),
                Just("E".to_string()),
                Just("10.00".to_string()),
                Just("22.995".to_string()),
                Just("-1".to_string()),
                Just("1e4".to_string()),
                Just("  ".to_string()),
                Just("'".to_string()),
                Just("é".to_string()),
                // Around the longest names that pack into a pair key (13
                // bytes) and into a name key (15 bytes).
                Just("C123456789012".to_string()),
                Just("'C1234567890123'".to_string()),
                Just("'C12345678901234'".to_string()),
                Just("C123456789012345".to_string()),
                Just("'C123456789012346'".to_string()),
            ]
        }

        fn line() -> impl Strategy<Value = String> {
            prop_oneof![
                4 => prop::collection::vec(field(), 5..=5).prop_map(|f| f.join(",")),
                1 => prop::collection::vec(field(), 0..8).prop_map(|f| f.join(",")),
            ]
        }

        fn resolve(parsed: &ParsedChunk, names: &Names) -> Vec<(String, String, u32, i64, Gender)> {
            parsed
                .delta
                .pairs
                .iter()
                .map(|p| {
                    (
                        names.name(p.merchant.0).to_string(),
                        names.name(p.customer.0).to_string(),
                        p.count,
                        p.amount.0,
                        p.first_gender,
                    )
                })
                .collect()
        }

        proptest! {
            #[test]
            fn on_random_plain_bodies(
                lines in prop::collection::vec(line(), 0..40),
                crlf in any::<bool>(),
                tail in any::<bool>(),
                limit in prop_oneof![Just(BIG), 45usize..80],
            ) {
                let end = if crlf { "\r\n" } else { "\n" };
                let mut data = format!("customer,merchant,gender,amount,category{end}");
                data.push_str(&lines.join(end));
                if tail {
                    data.push_str(end);
                }
                let data = data.as_bytes();
                let names = Names::new();
                let mut parser = ChunkParser::new(limit);
                let mut records = RawRecords::new(data, limit);
                next_in_memory(&mut records, &mut parser.fields).unwrap();
                let schema = Schema::from_header(&parser.fields).unwrap();
                let body_start = (records.offset() as usize).min(data.len());
                prop_assert!(is_plain(&data[body_start..]));
                let first_line = 1 + memchr::memchr_iter(b'\n', &data[..body_start]).count() as u64;
                let plain = parser.parse_plain(&data[body_start..], first_line, &schema, &names);
                let general = parser.parse_general(records, &schema, &names);
                prop_assert_eq!(plain.rows, general.rows);
                prop_assert_eq!(&plain.bad_rows, &general.bad_rows);
                prop_assert_eq!(resolve(&plain, &names), resolve(&general, &names));
            }
        }
    }

    /// Past 65,536 merchants in one chunk a pair key no longer has room
    /// for the merchant's number: those pairs fold by name instead.
    #[test]
    fn a_chunk_with_more_merchants_than_pair_keys_hold_folds_exactly() {
        let mut data = String::from("customer,merchant,gender,amount,category\n");
        for merchant in 0..70_000 {
            data.push_str(&format!("C1,M{merchant},F,1.00,food\n"));
        }
        data.push_str("C1,M69999,F,2.00,food\nC2,M69999,M,3.00,food\nC1,M7,F,4.00,food\n");
        let names = Names::new();
        let parsed = ChunkParser::new(BIG)
            .parse(data.as_bytes(), &names)
            .unwrap();
        assert_eq!(parsed.rows, 70_003);
        assert_eq!(parsed.delta.pairs.len(), 70_001);
        let pair = |merchant: &str, customer: &str| {
            let found: Vec<(u32, i64)> = parsed
                .delta
                .pairs
                .iter()
                .filter(|p| {
                    names.name(p.merchant.0) == merchant && names.name(p.customer.0) == customer
                })
                .map(|p| (p.count, p.amount.0))
                .collect();
            found
        };
        assert_eq!(pair("M69999", "C1"), vec![(2, 300)]);
        assert_eq!(pair("M69999", "C2"), vec![(1, 300)]);
        assert_eq!(pair("M7", "C1"), vec![(2, 500)]);
        assert_eq!(pair("M0", "C1"), vec![(1, 100)]);
    }

    #[test]
    fn header_only_and_bom_are_fine() {
        let data = format!("\u{feff}{HEADER}");
        let (parsed, _) = parse(&data);
        assert_eq!(parsed.rows, 0);
        let data = format!("\u{feff}{HEADER}0,'C1','4','F','1','M1','1','es_food',1.00,0");
        let (parsed, _) = parse(&data);
        assert_eq!(
            parsed.rows, 1,
            "a truncated last line without CRLF is still a row"
        );
        assert!(parsed.bad_rows.is_empty());
    }
}
