//! Hostile input through the whole pipeline: a record far past
//! `input.max_record_bytes` and an unterminated quote in the master file
//! (the real binary, its peak memory and its warnings), NUL bytes in names
//! on SQLite and PostgreSQL, a master header naming a column twice, and a
//! lookup file with an over-long record and a NUL.

use crate::support;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use support::outputs::Outputs;
use support::pg::TestDb;
use txpipe::actors::supervisor::RunMode;

const HEADER: &str =
    "step,customer,age,gender,zipcodeOri,merchant,zipMerchant,category,amount,fraud\n";
const LOOKUP_HEADER: &str = "Source,Target,Weight,typeTrans,fraud\n";

/// A good BankSim row of customer `C{n}` at one of 20 merchants.
fn row(n: u64) -> String {
    format!(
        "{},'C{n}','3','{}','28007','M{}','28007','es_food',{}.{:02},0\n",
        n % 180,
        if n.is_multiple_of(2) { 'F' } else { 'M' },
        n % 20,
        n % 90,
        n % 100
    )
}

/// A lookup file of a few good rows.
fn lookup(dir: &Path) -> PathBuf {
    let path = dir.join("network.csv");
    let mut data = String::from(LOOKUP_HEADER);
    for n in 0..20 {
        data.push_str(&format!("'C{n}','M{}',{n}.50,'es_food',0\n", n % 20));
    }
    std::fs::write(&path, data).unwrap();
    path
}

/// Sum of `rows` and `bad_rows` over the processed chunks.
fn counted(outputs: &Outputs) -> (u64, u64) {
    assert!(outputs.chunks.iter().all(|c| c.1 == "processed"));
    outputs
        .chunks
        .iter()
        .fold((0, 0), |(rows, bad), c| (rows + c.2, bad + c.3))
}

/// Transactions counted in the cumulative state.
fn transactions(outputs: &Outputs) -> i64 {
    outputs.pairs.iter().map(|p| p.2).sum()
}

/// `(line, reason, raw)` of every quarantined bad row, in chunk order.
fn quarantined(bucket: &Path) -> Vec<(u64, String, Vec<u8>)> {
    let mut names: Vec<PathBuf> = std::fs::read_dir(bucket.join("quarantine"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.to_string_lossy().ends_with(".bad-rows.csv"))
        .collect();
    names.sort();
    let mut rows = Vec::new();
    for name in names {
        let data = std::fs::read(name).unwrap();
        let mut reader = csv::ReaderBuilder::new().from_reader(data.as_slice());
        for record in reader.byte_records() {
            let record = record.unwrap();
            rows.push((
                std::str::from_utf8(&record[0]).unwrap().parse().unwrap(),
                String::from_utf8(record[1].to_vec()).unwrap(),
                record[2].to_vec(),
            ));
        }
    }
    rows
}

/// Runs `txpipe run --exit-when-done` on `config`, sampling its peak
/// resident memory (VmHWM) until it exits; returns the peak and the log.
fn run_binary(config: &Path, timeout: Duration) -> (u64, Vec<String>) {
    let mut running = support::child::spawn(
        &[
            "run",
            "--config",
            config.to_str().unwrap(),
            "--exit-when-done",
        ],
        &[],
    );
    let deadline = Instant::now() + timeout;
    let mut peak = 0;
    let status = loop {
        peak = peak.max(running.peak_rss().unwrap_or(0));
        if let Some(status) = running.run_for(Duration::from_millis(20)) {
            break status;
        }
        assert!(Instant::now() < deadline, "{}", running.log.join("\n"));
    };
    let log = running.log.clone();
    assert!(status.success(), "{status:?}\n{}", log.join("\n"));
    (peak, log)
}

const BIG_RECORD: u64 = 300 * 1024 * 1024;

/// A master file of `rows` good rows with one record of `BIG_RECORD` bytes
/// in place of row `at`, written in pieces (the test never holds it).
fn master_with_a_huge_record(path: &Path, rows: u64, at: u64) -> Vec<u8> {
    let mut file = std::io::BufWriter::new(std::fs::File::create(path).unwrap());
    file.write_all(HEADER.as_bytes()).unwrap();
    let start = b"0,'C999999','3','F','28007','M1','28007','es_food',".to_vec();
    for n in 0..rows {
        if n != at {
            file.write_all(row(n).as_bytes()).unwrap();
            continue;
        }
        file.write_all(&start).unwrap();
        let piece = vec![b'7'; 1 << 20];
        let mut left = BIG_RECORD - start.len() as u64 - 2;
        while left > 0 {
            let take = left.min(piece.len() as u64) as usize;
            file.write_all(&piece[..take]).unwrap();
            left -= take as u64;
        }
        file.write_all(b",0\n").unwrap();
    }
    file.flush().unwrap();
    start
}

#[test]
fn a_300_megabyte_record_is_quarantined_cut_short_in_bounded_memory() {
    let dir = tempfile::tempdir().unwrap();
    let master = dir.path().join("transactions.csv");
    let rows = 30_000;
    let start = master_with_a_huge_record(&master, rows, 12_345);
    let config = support::configs::embedded(dir.path(), &master, &lookup(dir.path()), "");
    let (peak, log) = run_binary(&config, Duration::from_secs(300));
    assert!(
        peak < 256 * 1024 * 1024,
        "peak RSS {} MB",
        peak / 1024 / 1024
    );
    assert!(
        log.iter()
            .any(|l| l.contains("WARN") && l.contains("over-long record")),
        "{}",
        log.join("\n")
    );
    let outputs = Outputs::read(dir.path());
    assert_eq!(counted(&outputs), (rows, 1), "every row counted once");
    assert_eq!(transactions(&outputs), rows as i64 - 1);
    let bad = quarantined(&dir.path().join("bucket"));
    assert_eq!(bad.len(), 1);
    let (line, reason, raw) = &bad[0];
    // Chunk 1 (rows 10,000 to 19,999) holds it on its line 2,347.
    assert_eq!(*line, 12_345 - 10_000 + 2);
    assert_eq!(
        reason,
        "record of 314572800 bytes exceeds input.max_record_bytes (1048576)"
    );
    assert!(raw.starts_with(&start) && raw.len() <= 1 << 20 && raw.len() > 1 << 19);
    assert!(raw[start.len()..].iter().all(|&b| b == b'7'));
}

#[test]
fn an_unterminated_quote_near_the_top_costs_one_row() {
    let dir = tempfile::tempdir().unwrap();
    let master = dir.path().join("transactions.csv");
    let rows: u64 = 100_000;
    let mut data = String::from(HEADER);
    for n in 0..rows {
        if n == 2 {
            // The quote opened before M2 is never closed.
            data.push_str("0,'C2','3','F','28007',\"'M2,'28007','es_food',1.00,0\n");
        } else {
            data.push_str(&row(n));
        }
    }
    assert!(data.len() > 5_000_000);
    std::fs::write(&master, &data).unwrap();
    let config = support::configs::embedded(dir.path(), &master, &lookup(dir.path()), "");
    let (_, log) = run_binary(&config, Duration::from_secs(300));
    let warnings: Vec<&String> = log
        .iter()
        .filter(|l| l.contains("WARN") && l.contains("unterminated quote"))
        .collect();
    assert_eq!(warnings.len(), 1, "{}", log.join("\n"));
    assert!(warnings[0].contains("data row 3"), "{}", warnings[0]);
    let outputs = Outputs::read(dir.path());
    assert_eq!(counted(&outputs), (rows, 1));
    assert_eq!(transactions(&outputs), rows as i64 - 1);
    let bad = quarantined(&dir.path().join("bucket"));
    assert_eq!(bad.len(), 1);
    assert_eq!(bad[0].0, 4, "line 4 of the first chunk");
    assert!(bad[0].1.starts_with("unterminated quote"), "{}", bad[0].1);
    assert_eq!(
        bad[0].2,
        b"0,'C2','3','F','28007',\"'M2,'28007','es_food',1.00,0"
    );
}

/// A master file with NUL bytes in a customer, a merchant and a category.
fn master_with_nul_names(dir: &Path) -> PathBuf {
    let path = dir.join("transactions.csv");
    let mut data = String::from(HEADER);
    for n in 0..300 {
        data.push_str(&row(n));
    }
    data.push_str("0,'C\u{0}1','3','F','28007','M1','28007','es_food',1.00,0\n");
    data.push_str("0,'C1','3','F','28007','M\u{0}1','28007','es_food',1.00,0\n");
    data.push_str("0,'C1','3','F','28007','M1','28007','es\u{0}food',1.00,0\n");
    std::fs::write(&path, data).unwrap();
    path
}

#[test]
fn nul_names_are_bad_rows_on_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    let master = master_with_nul_names(dir.path());
    let mut settings = support::embedded_settings(dir.path(), &master, &lookup(dir.path()));
    settings.chunker.rows_per_chunk = 100;
    let report = txpipe::app::run(settings, RunMode::UntilDone, Vec::new()).unwrap();
    assert_eq!(report.exit_code, 0, "{:?}", report.error);
    let outputs = Outputs::read(dir.path());
    assert_eq!(counted(&outputs), (303, 3));
    assert_eq!(transactions(&outputs), 300);
    let reasons: Vec<String> = quarantined(&dir.path().join("bucket"))
        .into_iter()
        .map(|(_, reason, _)| reason)
        .collect();
    assert_eq!(
        reasons,
        ["NUL in customer", "NUL in merchant", "NUL in category"]
    );
}

/// PostgreSQL keeps no NUL in text: a NUL name that got into the state
/// would fail the compaction that folds it into `pair_state`.
#[test]
fn nul_names_are_bad_rows_on_postgres_and_compaction_succeeds() {
    let Some(db) = TestDb::create() else { return };
    let dir = tempfile::tempdir().unwrap();
    let master = master_with_nul_names(dir.path());
    let mut settings = support::embedded_settings(dir.path(), &master, &lookup(dir.path()));
    settings.database.url = db.url.clone();
    settings.chunker.rows_per_chunk = 100;
    settings.database.compact_every = 1;
    let report = txpipe::app::run(settings, RunMode::UntilDone, Vec::new()).unwrap();
    assert_eq!(report.exit_code, 0, "{:?}", report.error);
    let outputs = Outputs::read_postgres(&db.url, dir.path().join("bucket"));
    assert_eq!(counted(&outputs), (303, 3));
    assert_eq!(transactions(&outputs), 300);
    let waiting: i64 = db.query("SELECT count(*) FROM chunk_deltas")[0].get(0);
    assert_eq!(waiting, 0, "every chunk folded into pair_state");
    let restarts: i64 = db.query("SELECT count(*) FROM restart_events")[0].get(0);
    assert_eq!(restarts, 0);
}

#[test]
fn a_master_header_naming_a_column_twice_stops_the_start_up() {
    let dir = tempfile::tempdir().unwrap();
    let master = dir.path().join("transactions.csv");
    let header = HEADER.replace("fraud", "\"AMOUNT\"");
    std::fs::write(&master, format!("{header}{}", row(1))).unwrap();
    let settings = support::embedded_settings(dir.path(), &master, &lookup(dir.path()));
    let error = format!(
        "{:#}",
        txpipe::app::run(settings, RunMode::UntilDone, Vec::new()).unwrap_err()
    );
    assert!(error.contains(&master.display().to_string()), "{error}");
    assert!(
        error.contains("header names column amount twice"),
        "{error}"
    );
}

#[test]
fn a_lookup_header_naming_a_column_twice_stops_the_start_up() {
    let dir = tempfile::tempdir().unwrap();
    let master = dir.path().join("transactions.csv");
    std::fs::write(&master, format!("{HEADER}{}", row(1))).unwrap();
    let network = dir.path().join("network.csv");
    std::fs::write(&network, "Source,Target,Weight,target\n'C1','M1',1.00,x\n").unwrap();
    let settings = support::embedded_settings(dir.path(), &master, &network);
    let error = format!(
        "{:#}",
        txpipe::app::run(settings, RunMode::UntilDone, Vec::new()).unwrap_err()
    );
    assert!(error.contains(&network.display().to_string()), "{error}");
    assert!(
        error.contains("header names column target twice"),
        "{error}"
    );
}

#[test]
fn a_lookup_file_with_an_over_long_record_and_a_nul_loads_its_good_rows() {
    let dir = tempfile::tempdir().unwrap();
    let master = dir.path().join("transactions.csv");
    std::fs::write(&master, format!("{HEADER}{}", row(1))).unwrap();
    let network = dir.path().join("network.csv");
    let mut file = std::io::BufWriter::new(std::fs::File::create(&network).unwrap());
    file.write_all(LOOKUP_HEADER.as_bytes()).unwrap();
    file.write_all(b"'C1','M1',1.00,'es_food',0\n").unwrap();
    // Good but for its length: an 8 MiB transaction type.
    file.write_all(b"'C2','M1',1.00,'").unwrap();
    for _ in 0..8 {
        file.write_all(&[b'x'; 1 << 20]).unwrap();
    }
    file.write_all(b"',0\n").unwrap();
    file.write_all(b"'C\x003','M1',1.00,'es_food',0\n").unwrap();
    file.write_all(b"'C4','\x00',1.00,'es_food',0\n").unwrap();
    file.write_all(b"'C5','M1',2.00,'es_food',0\n").unwrap();
    file.flush().unwrap();
    drop(file);
    let settings = support::embedded_settings(dir.path(), &master, &network);
    let report = txpipe::app::run(settings, RunMode::UntilDone, Vec::new()).unwrap();
    assert_eq!(report.exit_code, 0, "{:?}", report.error);
    let db = rusqlite::Connection::open(dir.path().join("state.sqlite")).unwrap();
    let loaded: (i64, i64, i64) = db
        .query_row("SELECT rows, bad_rows, pairs FROM lookup_source", [], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?))
        })
        .unwrap();
    assert_eq!(loaded, (5, 3, 2));
}
