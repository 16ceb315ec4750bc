//! Drives the pure engine (no actors, no database, no files) over CSV text
//! held in memory: chunks go through the real chunk parser and then through
//! the three pattern engines, sharded as asked.

use std::collections::BTreeMap;
use std::sync::Arc;

use txpipe::detect::key_group::key_group;
use txpipe::detect::{
    Cents, CustomerId, DetectionKey, Engine, MerchantId, PairState, Snapshot, Thresholds,
    WeightTable,
};
use txpipe::input::importance::read_importance;
use txpipe::input::transactions::ChunkParser;
use txpipe::names::Names;

use super::oracle::Emission;

/// `input.max_record_bytes` of the embedded defaults.
const MAX_RECORD_BYTES: usize = 1 << 20;

pub const HEADER: &str =
    "step,customer,age,gender,zipcodeOri,merchant,zipMerchant,category,amount,fraud";

/// One BankSim-format transaction line.
pub fn row(customer: &str, merchant: &str, gender: &str, amount: &str) -> String {
    format!("0,'{customer}','3','{gender}','28007','{merchant}','28007','es_food',{amount},0")
}

/// A CustomerImportance file from `(customer, merchant, weight)`.
pub fn network(weights: &[(&str, &str, &str)]) -> String {
    let mut text = String::from("Source,Target,Weight,typeTrans,fraud\n");
    for (c, m, w) in weights {
        text.push_str(&format!("'{c}','{m}',{w},'es_food',0\n"));
    }
    text
}

/// Applies `rows` in chunks of `chunk_rows` and returns every emission.
pub fn run(
    rows: &[String],
    network: &str,
    chunk_rows: usize,
    thresholds: Thresholds,
    shards: u32,
) -> Vec<Emission> {
    run_interrupted(rows, network, chunk_rows, thresholds, shards, None)
}

/// What happens to the engine after a chunk in [`run_interrupted`].
#[derive(Clone, Copy, Debug)]
pub enum Interruption {
    /// Every engine and the pair table are thrown away and rebuilt from a
    /// snapshot of the state committed so far, as the pipeline does at a
    /// new generation.
    Restart,
    /// The merchants of one of two key groups are handed over and taken
    /// back: their state is dropped, then merged in again from the
    /// committed snapshot of theirs alone, as a cluster worker does when
    /// its key groups change.
    HandOver,
}

/// Like [`run`], but interrupted after one chunk (`at`, if any).
pub fn run_interrupted(
    rows: &[String],
    network: &str,
    chunk_rows: usize,
    thresholds: Thresholds,
    shards: u32,
    at: Option<(usize, Interruption)>,
) -> Vec<Emission> {
    let names = Names::new();
    let entries = read_importance(network.as_bytes(), &names, MAX_RECORD_BYTES)
        .unwrap()
        .entries;
    let table = WeightTable::from_entries(
        entries
            .into_iter()
            .map(|e| (e.merchant, e.customer, e.weight_sum, e.rows)),
    );
    let table = Arc::new(table);
    // The pipeline's composition, all parts in this thread.
    let composition = Engine::new(thresholds, table, [shards; 3]);
    let mut engine = composition.local(&Snapshot::default());
    // What the state store would hold: cumulative pairs and emitted keys.
    let mut committed: BTreeMap<(MerchantId, CustomerId), PairState> = BTreeMap::new();
    let mut emitted: Vec<DetectionKey> = Vec::new();
    let mut parser = ChunkParser::new(MAX_RECORD_BYTES);
    let mut out = Vec::new();
    for (k, chunk) in rows.chunks(chunk_rows.max(1)).enumerate() {
        let mut text = String::from(HEADER);
        for line in chunk {
            text.push_str("\r\n");
            text.push_str(line);
        }
        let parsed = parser.parse(text.as_bytes(), &names).unwrap();
        let detections = engine.apply(&parsed.delta);
        for pair in &parsed.delta.pairs {
            let state = committed
                .entry((pair.merchant, pair.customer))
                .or_insert(PairState {
                    merchant: pair.merchant,
                    customer: pair.customer,
                    count: 0,
                    amount: Cents(0),
                    gender: pair.first_gender,
                });
            state.count += u64::from(pair.count);
            state.amount = state.amount.saturating_add(pair.amount);
        }
        for d in detections {
            emitted.push(d.key);
            out.push((
                k as u64,
                d.key.pattern.id(),
                d.key
                    .customer
                    .map_or(String::new(), |c| names.name(c.0).to_string()),
                names.name(d.key.merchant.0).to_string(),
            ));
        }
        match at {
            Some((after, Interruption::Restart)) if after == k => {
                let snapshot = Snapshot {
                    pairs: committed.values().copied().collect(),
                    emitted: emitted.clone(),
                };
                engine = composition.local(&snapshot);
            }
            Some((after, Interruption::HandOver)) if after == k => {
                let moved = |m: MerchantId| key_group(names.name(m.0), 2) == 1;
                let snapshot = Snapshot {
                    pairs: committed
                        .values()
                        .filter(|p| moved(p.merchant))
                        .copied()
                        .collect(),
                    emitted: emitted
                        .iter()
                        .filter(|k| moved(k.merchant))
                        .copied()
                        .collect(),
                };
                // As a worker does, the weights follow the groups: narrowed
                // while they are away, widened before they come back.
                engine.forget(&moved);
                engine.reweigh(Arc::new(composition.weights().retain(|m| !moved(m))));
                engine.reweigh(composition.weights().clone());
                engine.merge(&moved, &snapshot);
            }
            _ => {}
        }
    }
    out.sort();
    out
}

/// The oracle over the same input.
pub fn oracle(
    rows: &[String],
    network: &str,
    chunk_rows: usize,
    thresholds: Thresholds,
) -> Vec<Emission> {
    let mut text = String::from(HEADER);
    for line in rows {
        text.push('\n');
        text.push_str(line);
    }
    let txns = super::oracle::read_transactions(text.as_bytes());
    let weights = super::oracle::read_weights(network.as_bytes());
    let mut out = super::oracle::evaluate(&txns, &weights, chunk_rows, thresholds);
    out.sort();
    out
}
