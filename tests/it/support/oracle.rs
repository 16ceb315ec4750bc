//! A brute-force evaluator of `../shared/spec/patterns.md`, written
//! independently of the engine: after every chunk it recomputes all state
//! from all rows so far and evaluates every pattern literally. Slow, simple,
//! and the reference the engine and the pipeline are compared against.

use std::cmp::Ordering;
use std::collections::{BTreeMap, BTreeSet, HashMap};

use txpipe::detect::Thresholds;

/// A good transaction row.
#[derive(Clone, Debug)]
pub struct Txn {
    pub customer: String,
    pub merchant: String,
    pub gender: String,
    pub cents: i64,
}

/// `(chunk index, pattern id, customer or "", merchant)`.
pub type Emission = (u64, &'static str, String, String);

fn clean(field: &str) -> &str {
    let field = field.trim();
    if field.len() >= 2 && field.starts_with('\'') && field.ends_with('\'') {
        &field[1..field.len() - 1]
    } else {
        field
    }
}

/// Amount per the contract, or `None` for a bad amount.
pub fn cents(text: &str) -> Option<i64> {
    let (int, frac) = match text.split_once('.') {
        Some((i, f)) => (i, Some(f)),
        None => (text, None),
    };
    if int.is_empty() || !int.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    if let Some(f) = frac
        && (f.is_empty() || !f.bytes().all(|b| b.is_ascii_digit()))
    {
        return None;
    }
    if int.len() > 15 {
        return None;
    }
    let int: i64 = if int.trim_start_matches('0').is_empty() {
        0
    } else {
        int.trim_start_matches('0').parse().ok()?
    };
    let f = frac.unwrap_or("").as_bytes();
    let d = |i: usize| f.get(i).map_or(0, |b| i64::from(b - b'0'));
    Some(int * 100 + d(0) * 10 + d(1) + i64::from(d(2) >= 5))
}

/// Reads a transactions file: one entry per data row, `None` for bad rows.
pub fn read_transactions(data: &[u8]) -> Vec<Option<Txn>> {
    let mut reader = csv::ReaderBuilder::new()
        .has_headers(false)
        .flexible(true)
        .from_reader(data);
    let mut records = reader.byte_records();
    let header = records.next().expect("header").expect("csv");
    let names: Vec<String> = header
        .iter()
        .map(|f| {
            let f = String::from_utf8_lossy(f)
                .trim_start_matches('\u{feff}')
                .to_string();
            clean(&f).trim_matches('"').to_ascii_lowercase()
        })
        .collect();
    let col = |n: &str| names.iter().position(|h| h == n).expect("column");
    let (c, g, m, k, a) = (
        col("customer"),
        col("gender"),
        col("merchant"),
        col("category"),
        col("amount"),
    );
    records
        .map(|r| {
            let r = r.expect("csv");
            if r.len() != names.len() {
                return None;
            }
            let text = std::str::from_utf8(r.as_slice()).ok()?;
            let _ = text;
            let field = |i: usize| clean(std::str::from_utf8(&r[i]).unwrap()).to_string();
            let (customer, merchant, category) = (field(c), field(m), field(k));
            if customer.is_empty() || merchant.is_empty() || category.is_empty() {
                return None;
            }
            Some(Txn {
                customer,
                merchant,
                gender: field(g),
                cents: cents(&field(a))?,
            })
        })
        .collect()
}

/// Reads a CustomerImportance file into `(customer, merchant) -> (sum, rows)`.
pub fn read_weights(data: &[u8]) -> HashMap<(String, String), (i64, u64)> {
    let mut reader = csv::ReaderBuilder::new()
        .has_headers(false)
        .flexible(true)
        .from_reader(data);
    let mut records = reader.records();
    let header = records.next().expect("header").expect("csv");
    let names: Vec<String> = header
        .iter()
        .map(|f| clean(f).to_ascii_lowercase())
        .collect();
    let col = |n: &str| names.iter().position(|h| h == n).expect("column");
    let (s, t, w) = (col("source"), col("target"), col("weight"));
    let mut weights = HashMap::new();
    for r in records {
        let r = r.expect("csv");
        if r.len() != names.len() {
            continue;
        }
        let (c, m) = (clean(&r[s]).to_string(), clean(&r[t]).to_string());
        let Some(v) = cents(clean(&r[w])) else {
            continue;
        };
        if c.is_empty() || m.is_empty() {
            continue;
        }
        let e = weights.entry((c, m)).or_insert((0i64, 0u64));
        e.0 += v;
        e.1 += 1;
    }
    weights
}

fn cmp_weight(a: (i64, u64), b: (i64, u64)) -> Ordering {
    (i128::from(a.0) * i128::from(b.1)).cmp(&(i128::from(b.0) * i128::from(a.1)))
}

/// Evaluates the contract after every chunk of `chunk_rows` rows.
pub fn evaluate(
    rows: &[Option<Txn>],
    weights: &HashMap<(String, String), (i64, u64)>,
    chunk_rows: usize,
    t: Thresholds,
) -> Vec<Emission> {
    #[derive(Default)]
    struct Pair {
        n: u64,
        s: i128,
        gender: String,
    }
    let mut state: BTreeMap<String, BTreeMap<String, Pair>> = BTreeMap::new();
    let mut emitted: BTreeSet<(&'static str, String, String)> = BTreeSet::new();
    let mut out = Vec::new();
    for (k, chunk) in rows.chunks(chunk_rows.max(1)).enumerate() {
        for txn in chunk.iter().flatten() {
            let pair = state
                .entry(txn.merchant.clone())
                .or_default()
                .entry(txn.customer.clone())
                .or_insert_with(|| Pair {
                    gender: txn.gender.clone(),
                    ..Pair::default()
                });
            pair.n += 1;
            pair.s += i128::from(txn.cents);
        }
        let mut emit = |pattern: &'static str, c: &str, m: &str| {
            if emitted.insert((pattern, c.to_string(), m.to_string())) {
                out.push((k as u64, pattern, c.to_string(), m.to_string()));
            }
        };
        for (m, customers) in &state {
            let big_n: u64 = customers.values().map(|p| p.n).sum();
            let p_len = customers.len() as u64;
            if big_n > t.upgrade_min_merchant_txns {
                let mut counts: Vec<u64> = customers.values().map(|p| p.n).collect();
                counts.sort_unstable();
                let mut w_m: Vec<(i64, u64)> = customers
                    .keys()
                    .filter_map(|c| weights.get(&(c.clone(), m.clone())).copied())
                    .collect();
                w_m.sort_by(|a, b| cmp_weight(*a, *b));
                let w_len = w_m.len() as u64;
                for (c, pair) in customers {
                    let Some(&wc) = weights.get(&(c.clone(), m.clone())) else {
                        continue;
                    };
                    let less_n = counts.partition_point(|&x| x < pair.n) as u64;
                    let less_w =
                        w_m.partition_point(|&x| cmp_weight(x, wc) == Ordering::Less) as u64;
                    let pr_n_ok = p_len > 1 && 10 * less_n >= 9 * (p_len - 1);
                    // Written as in the contract, not simplified.
                    #[allow(clippy::int_plus_one)]
                    let pr_w_ok = 10 * less_w <= w_len - 1;
                    if pr_n_ok && pr_w_ok {
                        emit("PatId1", c, m);
                    }
                }
            }
            for (c, pair) in customers {
                if pair.n >= t.child_min_txns
                    && pair.s < i128::from(t.child_max_avg_cents) * i128::from(pair.n)
                {
                    emit("PatId2", c, m);
                }
            }
            let female = customers.values().filter(|p| p.gender == "F").count() as u64;
            let male = customers.values().filter(|p| p.gender == "M").count() as u64;
            if female > t.dei_min_female && female < male {
                emit("PatId3", "", m);
            }
        }
    }
    out
}
