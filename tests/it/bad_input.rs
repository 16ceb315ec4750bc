//! The bad input corpus (`tests/data/bad/`, outcomes in its README): every
//! case as a chunk object, and every case with a usable header as a master
//! file too. The pipeline never panics, each case gives its documented
//! outcome, and good rows beside bad ones still count.

use crate::support;

use std::path::{Path, PathBuf};
use std::time::Duration;

use txpipe::actors::supervisor::RunMode;

const HEADER: &str =
    "step,customer,age,gender,zipcodeOri,merchant,zipMerchant,category,amount,fraud\n";
const MISSING_ALL: &str = "header lacks column(s) customer, gender, merchant, category, amount";
const BAD_AMOUNT: &str = "bad amount: amount is not plain decimal notation";
const TOO_MANY_DIGITS: &str = "bad amount: amount has more than 15 digits before the point";
/// The default `input.max_record_bytes`.
const MAX_RECORD_BYTES: usize = 1 << 20;
const TEN_MEGABYTE_LINE: &str = "record of 10485808 bytes exceeds input.max_record_bytes (1048576)";
const UNCLOSED_QUOTE: &str = "unterminated quote: no closing quote within \
    input.max_record_bytes (1048576) or before the end of the input; the record ends at its \
    first line break (52 bytes)";

/// What a case must give.
#[derive(Debug)]
enum Outcome {
    Rejected(&'static str),
    /// Rows in the chunk and the quarantined `(line, reason)`s.
    Processed {
        rows: u64,
        bad: Vec<(u64, &'static str)>,
    },
}

fn processed(rows: u64, bad: &[(u64, &'static str)]) -> Outcome {
    Outcome::Processed {
        rows,
        bad: bad.to_vec(),
    }
}

fn corpus_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/bad")
}

/// The corpus, plus the 10 MB line, with each case's outcome.
fn corpus(scratch: &Path) -> Vec<(String, PathBuf, Outcome)> {
    use Outcome::Rejected;
    let long_line = scratch.join("18-ten-megabyte-line.csv");
    let good = "0,'C1','3','F','28007','M1','28007','es_food',10.00,0\n";
    let mut data =
        format!("{HEADER}{good}0,'C9','3','F','28007','M1','28007','es_food',").into_bytes();
    data.extend(std::iter::repeat_n(b'7', 10 * 1024 * 1024));
    data.extend_from_slice(b",0\n");
    data.extend_from_slice(good.replace("C1", "C2").as_bytes());
    std::fs::write(&long_line, data).unwrap();
    let expected: Vec<(&str, Outcome)> = vec![
        ("01-wrong-header.csv", Rejected(MISSING_ALL)),
        ("02-missing-header.csv", Rejected(MISSING_ALL)),
        (
            "03-missing-columns.csv",
            processed(3, &[(3, "expected 10 fields, found 9")]),
        ),
        (
            "04-extra-columns.csv",
            processed(3, &[(3, "expected 10 fields, found 11")]),
        ),
        (
            "05-blank-lines-only.csv",
            Rejected("empty object: no header line"),
        ),
        ("06-header-only.csv", processed(0, &[])),
        ("07-utf8-bom.csv", processed(3, &[])),
        ("08-crlf.csv", processed(3, &[])),
        ("09-quoted-commas.csv", processed(2, &[])),
        ("10-newlines-in-quotes.csv", processed(2, &[])),
        ("11-invalid-utf8.csv", processed(3, &[(3, "invalid UTF-8")])),
        ("12-negative-amount.csv", processed(3, &[(3, BAD_AMOUNT)])),
        (
            "13-non-numeric-amount.csv",
            processed(3, &[(3, BAD_AMOUNT)]),
        ),
        ("14-nan-amount.csv", processed(3, &[(3, BAD_AMOUNT)])),
        (
            "15-huge-exponent-amount.csv",
            processed(3, &[(3, BAD_AMOUNT)]),
        ),
        (
            "16-empty-customer.csv",
            processed(3, &[(3, "empty customer")]),
        ),
        (
            "17-empty-merchant.csv",
            processed(3, &[(3, "empty merchant")]),
        ),
        (
            "18-ten-megabyte-line.csv",
            processed(3, &[(3, TEN_MEGABYTE_LINE)]),
        ),
        (
            "19-binary-garbage.bin",
            Rejected("header is not valid UTF-8"),
        ),
        (
            "20-truncated-last-line.csv",
            processed(4, &[(5, "expected 10 fields, found 6")]),
        ),
        (
            "21-zero-bytes.csv",
            Rejected("empty object: no header line"),
        ),
        ("22-blank-lines-between-rows.csv", processed(2, &[])),
        ("23-whitespace-and-quotes.csv", processed(2, &[])),
        ("24-header-variants.csv", processed(2, &[])),
        ("25-cr-only-line-ends.csv", processed(3, &[])),
        (
            "26-unclosed-quote.csv",
            processed(4, &[(3, UNCLOSED_QUOTE)]),
        ),
        ("27-e-u-and-empty-genders.csv", processed(4, &[])),
        (
            "28-overlong-amount-digits.csv",
            processed(5, &[(3, TOO_MANY_DIGITS), (4, TOO_MANY_DIGITS)]),
        ),
        (
            "29-column-named-twice.csv",
            Rejected("header names column amount twice"),
        ),
        (
            "30-nul-in-names.csv",
            processed(
                5,
                &[
                    (3, "NUL in customer"),
                    (4, "NUL in merchant"),
                    (5, "NUL in category"),
                ],
            ),
        ),
    ];
    let files: Vec<String> = std::fs::read_dir(corpus_dir())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|name| name != "README.md")
        .collect();
    assert_eq!(
        files.len() + 1,
        expected.len(),
        "every corpus file has an expected outcome"
    );
    assert!(expected.len() >= 20);
    expected
        .into_iter()
        .map(|(name, outcome)| {
            let path = if name.starts_with("18-") {
                long_line.clone()
            } else {
                corpus_dir().join(name)
            };
            assert!(path.is_file(), "{name}");
            (name.to_string(), path, outcome)
        })
        .collect()
}

fn empty_inputs(dir: &Path) -> (PathBuf, PathBuf) {
    let tx = dir.join("empty-master.csv");
    let net = dir.join("net.csv");
    std::fs::write(&tx, HEADER).unwrap();
    std::fs::write(
        &net,
        "Source,Target,Weight,typeTrans,fraud\n'C1','M1',1.00,'es_food',0\n",
    )
    .unwrap();
    (tx, net)
}

struct ChunkRow {
    status: String,
    rows: u64,
    bad_rows: u64,
    reason: Option<String>,
}

fn chunk_rows(dir: &Path) -> Vec<(String, ChunkRow)> {
    let db = rusqlite::Connection::open(dir.join("state.sqlite")).unwrap();
    db.prepare("SELECT chunk_name, status, rows, bad_rows, reason FROM processed_chunks ORDER BY chunk_name")
        .unwrap()
        .query_map([], |r| {
            Ok((
                r.get(0)?,
                ChunkRow { status: r.get(1)?, rows: r.get::<_, i64>(2)? as u64, bad_rows: r.get::<_, i64>(3)? as u64, reason: r.get(4)? },
            ))
        })
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap()
}

/// `(line, reason, raw)` of a quarantine object.
fn quarantined(path: &Path) -> Vec<(u64, String, Vec<u8>)> {
    let data = std::fs::read(path).unwrap();
    let mut reader = csv::ReaderBuilder::new().from_reader(data.as_slice());
    reader
        .byte_records()
        .map(|r| {
            let r = r.unwrap();
            (
                std::str::from_utf8(&r[0]).unwrap().parse().unwrap(),
                String::from_utf8(r[1].to_vec()).unwrap(),
                r[2].to_vec(),
            )
        })
        .collect()
}

fn no_restarts(dir: &Path) {
    let db = rusqlite::Connection::open(dir.join("state.sqlite")).unwrap();
    let restarts: i64 = db
        .query_row("SELECT count(*) FROM restart_events", [], |r| r.get(0))
        .unwrap();
    assert_eq!(restarts, 0, "no actor failed (nothing panicked)");
}

#[test]
fn every_case_as_a_chunk_object_gives_its_documented_outcome() {
    let dir = tempfile::tempdir().unwrap();
    let cases = corpus(dir.path());
    let (tx, net) = empty_inputs(dir.path());
    let chunks = dir.path().join("bucket/stream_chunks");
    std::fs::create_dir_all(&chunks).unwrap();
    let mut keys = Vec::new();
    for (i, (name, path, _)) in cases.iter().enumerate() {
        let key = format!("chunk-{i:010}-{}", name.replace('.', "_"));
        std::fs::copy(path, chunks.join(&key)).unwrap();
        keys.push(format!("stream_chunks/{key}"));
    }
    let settings = support::embedded_settings(dir.path(), &tx, &net);
    let report = txpipe::app::run(settings, RunMode::UntilDone, Vec::new()).unwrap();
    assert_eq!(report.exit_code, 0, "{:?}", report.error);
    no_restarts(dir.path());
    let rows = chunk_rows(dir.path());
    assert_eq!(rows.len(), cases.len(), "every case recorded once");
    let mut good_rows = 0;
    for ((name, path, outcome), (key, (chunk, row))) in
        cases.iter().zip(keys.iter().zip(rows.iter()))
    {
        assert_eq!(key, chunk);
        let stem = key.trim_start_matches("stream_chunks/");
        match outcome {
            Outcome::Rejected(reason) => {
                assert_eq!(row.status, "rejected", "{name}");
                assert_eq!(row.reason.as_deref(), Some(*reason), "{name}");
                let copy = std::fs::read(
                    dir.path()
                        .join(format!("bucket/quarantine/{stem}.rejected.csv")),
                )
                .unwrap();
                assert!(
                    copy == std::fs::read(path).unwrap(),
                    "{name}: kept byte for byte"
                );
            }
            Outcome::Processed { rows, bad } => {
                assert_eq!(row.status, "processed", "{name}");
                assert_eq!(
                    (row.rows, row.bad_rows),
                    (*rows, bad.len() as u64),
                    "{name}"
                );
                good_rows += rows - bad.len() as u64;
                let report = dir
                    .path()
                    .join(format!("bucket/quarantine/{stem}.bad-rows.csv"));
                if bad.is_empty() {
                    assert!(!report.exists(), "{name}: nothing to quarantine");
                } else {
                    let lines = quarantined(&report);
                    let got: Vec<(u64, &str)> =
                        lines.iter().map(|(l, r, _)| (*l, r.as_str())).collect();
                    assert_eq!(&got, bad, "{name}");
                    assert!(
                        lines.iter().all(|(_, _, raw)| !raw.is_empty()),
                        "{name}: raw lines kept"
                    );
                    if name.starts_with("18-") {
                        let raw = &lines[0].2;
                        assert_eq!(raw.len(), MAX_RECORD_BYTES, "kept cut to the bound");
                        assert!(raw.starts_with(b"0,'C9','3','F','28007','M1'"));
                    }
                    if name.starts_with("11-") {
                        assert!(
                            lines[0].2.windows(2).any(|w| w == b"\xff\xfe"),
                            "invalid bytes kept as they were"
                        );
                    }
                }
            }
        }
    }
    let db = rusqlite::Connection::open(dir.path().join("state.sqlite")).unwrap();
    let counted: i64 = db
        .query_row("SELECT sum(txn_count) FROM pair_state", [], |r| r.get(0))
        .unwrap();
    assert_eq!(counted as u64, good_rows, "every good row counts, once");
    let names: Vec<(String, String)> = db
        .prepare("SELECT customer, merchant FROM pair_state ORDER BY 1, 2")
        .unwrap()
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    for expected in [("C,1", "M,1"), ("C1", "M\n1")] {
        assert!(
            names
                .iter()
                .any(|(c, m)| (c.as_str(), m.as_str()) == expected),
            "{expected:?} in {names:?}"
        );
    }
}

#[test]
fn every_case_with_a_header_works_as_a_master_file_too() {
    let scratch = tempfile::tempdir().unwrap();
    for (name, path, outcome) in corpus(scratch.path()) {
        let dir = tempfile::tempdir().unwrap();
        let (_, net) = empty_inputs(dir.path());
        let mut settings = support::embedded_settings(dir.path(), &path, &net);
        settings.chunker.rows_per_chunk = 2;
        let result = txpipe::app::run(settings, RunMode::UntilDone, Vec::new());
        match outcome {
            Outcome::Rejected(reason) => {
                // A master file without a usable header is a start-up error
                // that names the file, and what is wrong with its header.
                let error = format!("{:#}", result.unwrap_err());
                assert!(error.contains("master file"), "{name}: {error}");
                assert!(
                    error.contains(&path.display().to_string()),
                    "{name}: {error}"
                );
                if reason.starts_with("header") {
                    assert!(error.contains(reason), "{name}: {error}");
                }
            }
            Outcome::Processed { rows, bad } => {
                let report = result.unwrap();
                assert_eq!(report.exit_code, 0, "{name}: {:?}", report.error);
                assert_eq!(
                    (report.rows_chunked, report.rows_committed),
                    (rows, rows),
                    "{name}"
                );
                assert_eq!(report.bad_rows, bad.len() as u64, "{name}");
                no_restarts(dir.path());
            }
        }
    }
}

#[test]
fn a_chunk_deleted_between_listing_and_reading_is_recorded_as_rejected() {
    let dir = tempfile::tempdir().unwrap();
    let (tx, net) = empty_inputs(dir.path());
    let chunks = dir.path().join("bucket/stream_chunks");
    std::fs::create_dir_all(&chunks).unwrap();
    let doomed = chunks.join("chunk-0000000000-doomed.csv");
    std::fs::copy(corpus_dir().join("08-crlf.csv"), &doomed).unwrap();
    std::fs::copy(
        corpus_dir().join("07-utf8-bom.csv"),
        chunks.join("chunk-0000000001-kept.csv"),
    )
    .unwrap();
    let config = support::configs::embedded(dir.path(), &tx, &net, "");
    let mut running = support::child::spawn(
        &[
            "run",
            "--config",
            config.to_str().unwrap(),
            "--exit-when-done",
            "--pause-at",
            "chunk-fetch",
            "--pause-ms",
            "300",
        ],
        &[],
    );
    match running.wait_for(
        "pause point reached: chunk-fetch",
        1,
        Duration::from_secs(30),
    ) {
        support::child::Waited::Seen => std::fs::remove_file(&doomed).unwrap(),
        _ => panic!("{}", running.log.join("\n")),
    }
    let (status, log) = running.wait(Duration::from_secs(60));
    assert!(status.is_some_and(|s| s.success()), "{}", log.join("\n"));
    let rows = chunk_rows(dir.path());
    assert_eq!(rows.len(), 2);
    assert_eq!(rows[0].1.status, "rejected");
    assert_eq!(
        rows[0].1.reason.as_deref(),
        Some("object vanished between listing and reading")
    );
    assert_eq!(
        (rows[1].1.status.as_str(), rows[1].1.rows),
        ("processed", 3)
    );
}
