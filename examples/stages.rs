//! Per-stage cost of the detection path, on one thread, without actors,
//! files or databases: what each stage costs per row, and how that changes
//! between BankSim and the 10M-row workload.
//!
//! ```text
//! cargo run --profile perf --example stages                 # BankSim and 10M
//! cargo run --profile perf --example stages -- --repeat 5 gen10m
//! ```
//!
//! The pipeline benchmark (`examples/bench.rs`) measures the whole system,
//! where two cores share every stage and the machine's noise is ±15%; this
//! one times the stages one after another on data already in memory, so a
//! change to one stage shows up in its own line. Stages: `parse` (a chunk's
//! bytes to its pair delta and stored delta, as the watcher's parse tasks
//! do), `fold` (the cumulative pair table), and one line per detector.
//! Uses the files of `examples/bench.rs` (`target/bench-data/`), which
//! that benchmark creates.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use txpipe::detect::{
    ChunkDelta, Engine, Pattern, PatternEngine, Snapshot, Thresholds, WeightTable,
};
use txpipe::input::transactions::ChunkParser;
use txpipe::names::Names;

const CHUNK_ROWS: usize = 10_000;
/// `input.max_record_bytes` of the embedded defaults.
const MAX_RECORD_BYTES: usize = 1 << 20;

fn data_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("target/bench-data")
}

fn workload(name: &str) -> (PathBuf, PathBuf) {
    let dir = data_dir();
    let files = match name {
        "banksim" => (
            dir.join("banksim-transactions.csv"),
            dir.join("banksim-network.csv"),
        ),
        "gen10m" => (
            dir.join("gen-10m")
                .join(txpipe::generate::TRANSACTIONS_FILE),
            dir.join("gen-10m").join(txpipe::generate::IMPORTANCE_FILE),
        ),
        other => panic!("unknown workload {other}: banksim or gen10m"),
    };
    assert!(
        files.0.is_file() && files.1.is_file(),
        "{} missing: run `cargo run --profile perf --example bench -- {name}-embedded` once",
        files.0.display()
    );
    files
}

/// The master file cut as the chunker cuts it: the header, then
/// `CHUNK_ROWS` lines.
fn chunks(transactions: &Path) -> Vec<Vec<u8>> {
    let data = std::fs::read(transactions).unwrap();
    let header_end = memchr::memchr(b'\n', &data).unwrap() + 1;
    let (header, mut body) = data.split_at(header_end);
    let mut chunks = Vec::new();
    while !body.is_empty() {
        let end = memchr::memchr_iter(b'\n', body)
            .nth(CHUNK_ROWS - 1)
            .map_or(body.len(), |at| at + 1);
        let mut chunk = header.to_vec();
        chunk.extend_from_slice(&body[..end]);
        chunks.push(chunk);
        body = &body[end..];
    }
    chunks
}

fn weights(importance: &Path, names: &Names) -> WeightTable {
    let file = std::fs::File::open(importance).unwrap();
    let importance =
        txpipe::input::importance::read_importance(file, names, MAX_RECORD_BYTES).unwrap();
    WeightTable::from_entries(
        importance
            .entries
            .into_iter()
            .map(|e| (e.merchant, e.customer, e.weight_sum, e.rows)),
    )
}

struct Timings {
    parse: Duration,
    fold: Duration,
    detectors: Vec<(Pattern, Duration)>,
    detections: usize,
}

fn run(chunks: &[Vec<u8>], weights: &Arc<WeightTable>, names: &Names) -> Timings {
    let mut parser = ChunkParser::new(MAX_RECORD_BYTES);
    let started = Instant::now();
    let deltas: Vec<ChunkDelta> = chunks
        .iter()
        .map(|chunk| parser.parse(chunk, names).unwrap().delta)
        .collect();
    let parse = started.elapsed();

    // The pipeline's composition, one shard per pattern, timed part by part.
    let composition = Engine::new(Thresholds::default(), weights.clone(), [1, 1, 1]);
    let start = Snapshot::default();
    let mut totals = composition.pair_table(&start);
    let mut engines: Vec<(Box<dyn PatternEngine>, Duration)> = composition
        .parts()
        .map(|(pattern, shard)| (composition.detector(pattern, shard, &start), Duration::ZERO))
        .collect();
    let mut fold = Duration::ZERO;
    let mut out = Vec::new();
    for delta in &deltas {
        let started = Instant::now();
        let update = totals.fold(delta);
        fold += started.elapsed();
        for (engine, spent) in &mut engines {
            let started = Instant::now();
            engine.apply(&update, &mut out);
            *spent += started.elapsed();
        }
    }
    Timings {
        parse,
        fold,
        detectors: engines
            .into_iter()
            .map(|(engine, spent)| (engine.pattern(), spent))
            .collect(),
        detections: out.len(),
    }
}

fn main() {
    let mut repeat = 3;
    let mut names_wanted = Vec::new();
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        if arg == "--repeat" {
            repeat = args
                .next()
                .and_then(|n| n.parse().ok())
                .expect("--repeat N");
        } else {
            names_wanted.push(arg);
        }
    }
    if names_wanted.is_empty() {
        names_wanted = vec!["banksim".into(), "gen10m".into()];
    }
    println!("| workload | stage | ns per row (median of {repeat}) | runs |");
    println!("|---|---|---:|---|");
    for name in &names_wanted {
        let (transactions, importance) = workload(name);
        let names = Names::new();
        let weights = Arc::new(weights(&importance, &names));
        let chunks = chunks(&transactions);
        let rows = (chunks.len() * CHUNK_ROWS) as f64;
        let runs: Vec<Timings> = (0..repeat)
            .map(|_| run(&chunks, &weights, &names))
            .collect();
        let report = |stage: &str, pick: &dyn Fn(&Timings) -> Duration| {
            let mut per_row: Vec<f64> = runs
                .iter()
                .map(|t| pick(t).as_nanos() as f64 / rows)
                .collect();
            let shown: Vec<String> = per_row.iter().map(|ns| format!("{ns:.1}")).collect();
            per_row.sort_by(f64::total_cmp);
            println!(
                "| {name} | {stage} | {:.1} | {} |",
                per_row[per_row.len() / 2],
                shown.join(" / ")
            );
        };
        report("parse", &|t| t.parse);
        report("fold", &|t| t.fold);
        for (index, (pattern, _)) in runs[0].detectors.iter().enumerate() {
            report(pattern.id(), &|t| t.detectors[index].1);
        }
        report("fold + detectors", &|t| {
            t.fold + t.detectors.iter().map(|(_, d)| *d).sum::<Duration>()
        });
        eprintln!("{name}: {} detections per run", runs[0].detections);
    }
}
