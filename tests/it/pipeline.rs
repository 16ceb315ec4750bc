//! The whole pipeline on embedded defaults: generated data and the real
//! BankSim files, compared with the brute-force oracle, with every output
//! promise checked.

use crate::support;

use std::path::Path;

use support::outputs::Outputs;
use txpipe::actors::supervisor::RunMode;
use txpipe::app;

fn run_to_completion(settings: txpipe::config::Settings) -> app::RunReport {
    let report = app::run(settings, RunMode::UntilDone, Vec::new()).unwrap();
    assert_eq!(report.exit_code, 0, "run failed: {:?}", report.error);
    report
}

#[test]
fn generated_data_matches_the_oracle() {
    let (tx, net) = support::generated(300_000, 5_000, 60, 11);
    let dir = tempfile::tempdir().unwrap();
    let settings = support::embedded_settings(dir.path(), &tx, &net);
    let report = run_to_completion(settings);
    assert_eq!(report.rows_committed, 300_000);
    assert_eq!(report.chunks_committed, 30);

    let outputs = Outputs::read(dir.path());
    outputs.check_finished(50);
    outputs.check_chunks_match_master(&tx, 10_000);
    let expected = support::reference(&tx, &net, 10_000);
    for pattern in ["PatId1", "PatId2", "PatId3"] {
        assert!(
            expected.iter().any(|e| e.1 == pattern),
            "the dataset should make {pattern} fire"
        );
    }
    assert_eq!(outputs.emissions(), expected);
}

#[test]
fn banksim_matches_the_oracle() {
    let Some((tx, net)) = support::banksim() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let settings = support::embedded_settings(dir.path(), &tx, &net);
    let report = run_to_completion(settings);
    assert_eq!(report.rows_committed, 594_643);
    assert_eq!(report.bad_rows, 0);

    let outputs = Outputs::read(dir.path());
    outputs.check_finished(50);
    outputs.check_chunks_match_master(&tx, 10_000);
    let expected = support::reference(&tx, &net, 10_000);
    assert_eq!(outputs.emissions(), expected);
    let count = |p: &str| expected.iter().filter(|e| e.1 == p).count();
    // The oracle's verdict on BankSim, for the record (also in docs/patterns.md).
    assert_eq!(
        (count("PatId1"), count("PatId2"), count("PatId3")),
        (70, 86, 4)
    );
    let total: i64 = outputs.pairs.iter().map(|p| p.2).sum();
    assert_eq!(total, 594_643, "cumulative state counts every row once");
}

#[test]
fn detector_pools_and_small_chunks_give_the_same_detections() {
    let (tx, net) = support::generated(120_000, 2_000, 25, 5);
    let dir = tempfile::tempdir().unwrap();
    let mut settings = support::embedded_settings(dir.path(), &tx, &net);
    settings.detectors.patid1 = 3;
    settings.detectors.patid2 = 2;
    settings.detectors.patid3 = 4;
    settings.chunker.rows_per_chunk = 7_000;
    settings.batch.size = 7;
    run_to_completion(settings);
    let outputs = Outputs::read(dir.path());
    outputs.check_finished(7);
    assert_eq!(outputs.emissions(), support::reference(&tx, &net, 7_000));
}

fn write(path: &Path, text: &str) {
    std::fs::write(path, text).unwrap();
}

#[test]
fn bad_rows_are_quarantined_and_good_rows_still_count() {
    let dir = tempfile::tempdir().unwrap();
    let tx = dir.path().join("tx.csv");
    let net = dir.path().join("net.csv");
    write(
        &tx,
        "step,customer,age,gender,zipcodeOri,merchant,zipMerchant,category,amount,fraud\n\
         0,'C1','4','F','1','M1','1','es_food',10.00,0\n\
         0,'C2','4','M','1','M1','1','es_food',NaN,0\n\
         0,'C3','4','M','1','M1','1','es_food'\n\
         0,'C4','4','F','1','M1','1','es_food',5.5,0\n\
         0,'','4','F','1','M1','1','es_food',5.5,0\n",
    );
    write(
        &net,
        "Source,Target,Weight,typeTrans,fraud\n'C1','M1',10.00,'es_food',0\n",
    );
    let mut settings = support::embedded_settings(dir.path(), &tx, &net);
    settings.chunker.rows_per_chunk = 3;
    let report = run_to_completion(settings);
    assert_eq!((report.rows_committed, report.bad_rows), (5, 3));
    let outputs = Outputs::read(dir.path());
    outputs.check_finished(50);
    assert_eq!(
        outputs.chunks,
        vec![(0, "processed".into(), 3, 2), (1, "processed".into(), 2, 1)]
    );
    assert_eq!(
        outputs.pairs.len(),
        2,
        "C1 and C4 count, the bad rows do not"
    );

    let quarantine: Vec<String> = support_list(&dir.path().join("bucket/quarantine"));
    assert_eq!(
        quarantine.len(),
        2,
        "one quarantine object per chunk with bad rows"
    );
    let first =
        std::fs::read_to_string(dir.path().join("bucket/quarantine").join(&quarantine[0])).unwrap();
    assert_eq!(
        first,
        "line,reason,raw_line\n\
         3,bad amount: amount is not plain decimal notation,\"0,'C2','4','M','1','M1','1','es_food',NaN,0\"\n\
         4,\"expected 10 fields, found 8\",\"0,'C3','4','M','1','M1','1','es_food'\"\n"
    );
}

fn support_list(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    names
}

#[test]
fn a_missing_master_file_is_a_clear_start_up_error() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("nope.csv");
    let net = dir.path().join("net.csv");
    write(&net, "Source,Target,Weight,typeTrans,fraud\n");
    let settings = support::embedded_settings(dir.path(), &missing, &net);
    let error = app::run(settings, RunMode::UntilDone, Vec::new()).unwrap_err();
    let text = format!("{error:#}");
    assert!(text.contains("nope.csv"), "{text}");

    let tx = dir.path().join("tx.csv");
    write(&tx, "step,customer,amount\n1,C1,2\n");
    let settings = support::embedded_settings(dir.path(), &tx, &net);
    let text = format!(
        "{:#}",
        app::run(settings, RunMode::UntilDone, Vec::new()).unwrap_err()
    );
    assert!(
        text.contains("lacks column(s) gender, merchant, category"),
        "{text}"
    );

    write(
        &tx,
        "step,customer,age,gender,zipcodeOri,merchant,zipMerchant,category,amount,fraud\n",
    );
    let settings = support::embedded_settings(dir.path(), &tx, &dir.path().join("missing-net.csv"));
    let text = format!(
        "{:#}",
        app::run(settings, RunMode::UntilDone, Vec::new()).unwrap_err()
    );
    assert!(text.contains("missing-net.csv"), "{text}");
}

#[test]
fn unreadable_chunks_are_rejected_and_quarantined_whole() {
    let dir = tempfile::tempdir().unwrap();
    let tx = dir.path().join("tx.csv");
    let net = dir.path().join("net.csv");
    // A master file with no rows: every chunk comes from outside.
    write(
        &tx,
        "step,customer,age,gender,zipcodeOri,merchant,zipMerchant,category,amount,fraud\n",
    );
    write(&net, "Source,Target,Weight,typeTrans,fraud\n");
    let chunks = dir.path().join("bucket/stream_chunks");
    std::fs::create_dir_all(&chunks).unwrap();
    let header = "step,customer,age,gender,zipcodeOri,merchant,zipMerchant,category,amount,fraud\n";
    let good = format!("{header}0,'C1','4','F','1','M1','1','es_food',1.00,0\n");
    let objects: [(&str, &[u8]); 4] = [
        ("chunk-0000000000-a.csv", b"customer,amount\nC1,2\n"),
        ("chunk-0000000001-a.csv", b""),
        ("chunk-0000000002-a.csv", b"\x00\x01\x02\xff binary garbage"),
        ("chunk-0000000003-a.csv", good.as_bytes()),
    ];
    for (name, body) in objects {
        std::fs::write(chunks.join(name), body).unwrap();
    }
    let settings = support::embedded_settings(dir.path(), &tx, &net);
    let report = run_to_completion(settings);
    assert_eq!(
        (
            report.chunks_rejected,
            report.chunks_committed,
            report.rows_committed
        ),
        (3, 1, 1)
    );
    let db = rusqlite::Connection::open(dir.path().join("state.sqlite")).unwrap();
    let rows: Vec<(String, String, Option<String>)> = db
        .prepare("SELECT chunk_name, status, reason FROM processed_chunks ORDER BY chunk_name")
        .unwrap()
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    let summary: Vec<(&str, Option<&str>)> = rows
        .iter()
        .map(|r| (r.1.as_str(), r.2.as_deref()))
        .collect();
    assert_eq!(
        summary,
        vec![
            (
                "rejected",
                Some("header lacks column(s) gender, merchant, category")
            ),
            ("rejected", Some("empty object: no header line")),
            ("rejected", Some("header is not valid UTF-8")),
            ("processed", None),
        ]
    );
    let quarantined = support_list(&dir.path().join("bucket/quarantine"));
    assert_eq!(
        quarantined,
        vec![
            "chunk-0000000000-a.rejected.csv",
            "chunk-0000000001-a.rejected.csv",
            "chunk-0000000002-a.rejected.csv"
        ]
    );
    let copy = std::fs::read(
        dir.path()
            .join("bucket/quarantine/chunk-0000000002-a.rejected.csv"),
    )
    .unwrap();
    assert_eq!(
        copy, b"\x00\x01\x02\xff binary garbage",
        "rejected chunks are kept byte for byte"
    );
}
