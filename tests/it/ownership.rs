//! One active owner per bucket and database, with real processes: two
//! `txpipe run` started at once (SQLite, and S3 + PostgreSQL), a hot standby
//! taking over from a SIGKILLed owner, a SIGSTOPped owner fenced out after
//! its lease passed on, `--no-standby`, and strangers in `stream_chunks/`
//! (duplicates of a sequence number, foreign names) during a paced run.
//! Every run must end with exactly the outputs of one uninterrupted run.

use crate::support;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use support::child::{self, Running, Waited, expect_line, finish, said};
use support::outputs::Outputs;
use support::s3pg::S3Postgres;
use txpipe::actors::supervisor::RunMode;

const ROWS_PER_CHUNK: u64 = 2_000;
const BATCH: u64 = 5;
const TTL_MS: u64 = 2_000;
const HEARTBEAT_MS: u64 = 400;

/// 80,000 rows: 40 chunks.
fn dataset() -> (PathBuf, PathBuf) {
    support::generated(80_000, 3_000, 30, 41)
}

fn reference() -> Outputs {
    let (tx, net) = dataset();
    support::uninterrupted_run(&tx, &net, ROWS_PER_CHUNK, BATCH).1
}

/// Settings for every child, through the environment; `interval_ms` 0 is
/// catch-up mode.
fn overrides(interval_ms: u64) -> Vec<(String, String)> {
    vec![
        (
            "RUST_LOG".into(),
            "info,txpipe::actors::chunker=debug".into(),
        ),
        (
            "TXPIPE__CHUNKER__ROWS_PER_CHUNK".into(),
            ROWS_PER_CHUNK.to_string(),
        ),
        ("TXPIPE__BATCH__SIZE".into(), BATCH.to_string()),
        (
            "TXPIPE__CHUNKER__INTERVAL_MS".into(),
            interval_ms.to_string(),
        ),
        ("TXPIPE__OWNERSHIP__LEASE_TTL_MS".into(), TTL_MS.to_string()),
        (
            "TXPIPE__OWNERSHIP__HEARTBEAT_MS".into(),
            HEARTBEAT_MS.to_string(),
        ),
        ("TXPIPE__WATCHER__SWEEP_INTERVAL_MS".into(), "300".into()),
    ]
}

fn run(config: &Path, env: &[(String, String)], extra: &[&str]) -> Running {
    let mut args = vec![
        "run",
        "--config",
        config.to_str().unwrap(),
        "--exit-when-done",
    ];
    args.extend_from_slice(extra);
    child::spawn(&args, env)
}

fn status(config: &Path, env: &[(String, String)]) -> String {
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_txpipe"))
        .args(["status", "--config", config.to_str().unwrap()])
        .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .output()
        .unwrap();
    assert!(output.status.success(), "{output:?}");
    String::from_utf8(output.stdout).unwrap()
}

/// A pipeline on S3 (the test server, inputs uploaded, prefix `prod`) and a
/// fresh PostgreSQL database, run with `overrides(interval_ms)`.
fn s3_postgres(interval_ms: u64) -> Option<S3Postgres> {
    let (tx, net) = dataset();
    let mut s3pg = S3Postgres::start(&tx, &net, "prod")?;
    s3pg.env.extend(overrides(interval_ms));
    Some(s3pg)
}

/// The outputs must be those of one uninterrupted run.
fn assert_exact(s3pg: &S3Postgres) {
    let outputs = Outputs::read_postgres(&s3pg.db.url, s3pg.bucket());
    support::assert_same_outputs(&outputs, &reference(), &dataset().0, ROWS_PER_CHUNK, BATCH);
}

/// Starts the owner, waits until it holds the lease, then starts a second
/// process and waits until it reports standby.
fn owner_and_standby(config: &Path, env: &[(String, String)]) -> (Running, Running) {
    let mut owner = run(config, env, &[]);
    expect_line(
        &mut owner,
        "ownership lease acquired",
        Duration::from_secs(30),
    );
    let mut standby = run(config, env, &[]);
    expect_line(
        &mut standby,
        "holds the lease until",
        Duration::from_secs(30),
    );
    (owner, standby)
}

/// Two processes started at once: one runs, the other reports standby and
/// takes over once the first is done; the outputs are those of one run.
fn two_at_once(config: &Path, env: &[(String, String)]) -> [Vec<String>; 2] {
    let first = run(config, env, &[]);
    let second = run(config, env, &[]);
    let logs = [finish(first), finish(second)];
    let standbys = logs
        .iter()
        .filter(|log| said(log, "standby: ") && said(log, "holds the lease until"))
        .count();
    assert_eq!(
        standbys,
        1,
        "exactly one waited:\n{}",
        logs.concat().join("\n")
    );
    logs
}

#[test]
fn two_processes_started_at_once_on_sqlite_give_the_outputs_of_one() {
    let (tx, net) = dataset();
    let dir = tempfile::tempdir().unwrap();
    let config = support::configs::embedded(dir.path(), &tx, &net, "");
    two_at_once(&config, &overrides(20));
    let outputs = Outputs::read(dir.path());
    support::assert_same_outputs(&outputs, &reference(), &tx, ROWS_PER_CHUNK, BATCH);
}

#[test]
fn two_processes_started_at_once_on_s3_and_postgres_give_the_outputs_of_one() {
    let Some(s3pg) = s3_postgres(20) else {
        return;
    };
    two_at_once(&s3pg.config, &s3pg.env);
    assert_exact(&s3pg);
}

#[test]
fn a_hot_standby_takes_over_from_a_killed_owner_within_one_lease() {
    let (tx, net) = dataset();
    let dir = tempfile::tempdir().unwrap();
    let config = support::configs::embedded(dir.path(), &tx, &net, "");
    let env = overrides(100);
    let (mut owner, mut standby) = owner_and_standby(&config, &env);
    let text = status(&config, &[]);
    assert!(
        text.contains(&format!("/{} (epoch 1) holds the lease", owner.pid())),
        "{text}"
    );
    assert!(
        text.contains(&format!("/{} waiting since", standby.pid())),
        "{text}"
    );
    // Mid-run: some chunks committed, most not.
    expect_line(&mut owner, "chunk written", Duration::from_secs(30));
    std::thread::sleep(Duration::from_millis(800));
    let killed_at = Instant::now();
    owner.kill();
    expect_line(
        &mut standby,
        "ownership lease acquired",
        Duration::from_secs(30),
    );
    let takeover = killed_at.elapsed();
    assert!(
        takeover < Duration::from_millis(TTL_MS + HEARTBEAT_MS),
        "took over after {takeover:?}"
    );
    let log = finish(standby);
    assert!(said(&log, "epoch=2"), "{}", log.join("\n"));
    let outputs = Outputs::read(dir.path());
    support::assert_same_outputs(&outputs, &reference(), &tx, ROWS_PER_CHUNK, BATCH);
}

/// SIGSTOPs the owner mid-run until the standby takes its lease over and
/// commits, then SIGCONTs it: it must stop at once (exit 7, one clear line)
/// without writing anything. Returns the number of chunks committed when
/// the owner was frozen.
///
/// A process frozen inside a write transaction holds the database's locks
/// (SQLite's single writer; PostgreSQL's row lock on the lease until the
/// server ends the idle transaction): then the standby cannot take over
/// until it thaws. Such a try is undone (SIGCONT) and repeated later.
fn freeze_until_taken_over(config: &Path, env: &[(String, String)], committed: impl Fn() -> usize) {
    let (mut owner, mut standby) = owner_and_standby(config, env);
    expect_line(&mut owner, "chunk written", Duration::from_secs(30));
    let mut tries = 0;
    loop {
        tries += 1;
        std::thread::sleep(Duration::from_millis(300));
        owner.signal("STOP");
        let stopped_at = Instant::now();
        let bound = Duration::from_millis(TTL_MS + 3 * HEARTBEAT_MS + 1_000);
        match standby.wait_for("ownership lease acquired", 1, bound) {
            Waited::Seen => {
                assert!(stopped_at.elapsed() < bound);
                break;
            }
            Waited::Exited(status) => panic!("{status}: {}", standby.log.join("\n")),
            Waited::TimedOut if tries < 5 => owner.signal("CONT"),
            Waited::TimedOut => panic!("no takeover in {tries} tries"),
        }
    }
    // The new owner goes on committing while the old one is frozen. If the
    // old one froze inside a commit on PostgreSQL, its open transaction
    // holds row locks the new owner's commit waits for until the server
    // ends it (after max(3 × TTL, 30 s) idle); and the suites share two
    // cores. Hence a bound well past 30 s.
    let frozen_at = committed();
    let deadline = Instant::now() + Duration::from_secs(60);
    while committed() == frozen_at && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(committed() > frozen_at, "the new owner committed nothing");
    owner.signal("CONT");
    let (code, log) = owner.wait(Duration::from_secs(30));
    assert_eq!(
        code.and_then(|c| c.code()),
        Some(7),
        "exit code of a process that lost its lease:\n{}",
        log.join("\n")
    );
    let lost: Vec<&String> = log
        .iter()
        .filter(|line| line.contains("lost the ownership lease; stopping at once"))
        .collect();
    assert_eq!(lost.len(), 1, "one clear line:\n{}", log.join("\n"));
    let log = finish(standby);
    assert!(said(&log, "epoch=2"), "{}", log.join("\n"));
}

#[test]
fn a_frozen_owner_whose_lease_passed_on_writes_nothing_more_on_sqlite() {
    let (tx, net) = dataset();
    let dir = tempfile::tempdir().unwrap();
    let config = support::configs::embedded(dir.path(), &tx, &net, "");
    freeze_until_taken_over(&config, &overrides(100), || {
        Outputs::read(dir.path()).chunks.len()
    });
    let outputs = Outputs::read(dir.path());
    support::assert_same_outputs(&outputs, &reference(), &tx, ROWS_PER_CHUNK, BATCH);
}

#[test]
fn a_frozen_owner_whose_lease_passed_on_writes_nothing_more_on_postgres() {
    let Some(s3pg) = s3_postgres(100) else {
        return;
    };
    freeze_until_taken_over(&s3pg.config, &s3pg.env, || {
        let count: i64 = s3pg.db.query("SELECT count(*) FROM processed_chunks")[0].get(0);
        count as usize
    });
    assert_exact(&s3pg);
}

#[test]
fn no_standby_exits_with_code_6_and_says_who_holds_the_lease() {
    let (tx, net) = dataset();
    let dir = tempfile::tempdir().unwrap();
    let config = support::configs::embedded(dir.path(), &tx, &net, "");
    let env = overrides(100);
    let mut owner = run(&config, &env, &[]);
    expect_line(
        &mut owner,
        "ownership lease acquired",
        Duration::from_secs(30),
    );
    let refused = run(&config, &env, &["--no-standby"]);
    let (code, log) = refused.wait(Duration::from_secs(30));
    assert_eq!(code.and_then(|c| c.code()), Some(6), "{}", log.join("\n"));
    assert!(
        said(&log, "standby: ") && said(&log, &format!("/{} holds the lease until", owner.pid())),
        "{}",
        log.join("\n")
    );
    owner.signal("TERM");
    let (code, log) = owner.wait(Duration::from_secs(30));
    assert!(code.is_some_and(|c| c.success()), "{}", log.join("\n"));
    let text = status(&config, &[]);
    assert!(text.contains("owner               none active"), "{text}");
}

/// Objects nobody expected, dropped while a paced run goes on: a second
/// object for a sequence number already applied, an impostor for a number
/// the chunker has not reached (named to sort before the real chunk), and
/// foreign names (one sorts after every chunk). None is applied, each is
/// recorded and quarantined once, and every real chunk is still processed.
#[test]
fn strangers_in_stream_chunks_are_set_aside_and_hide_nothing() {
    let (tx, net) = dataset();
    let dir = tempfile::tempdir().unwrap();
    let config = support::configs::embedded(dir.path(), &tx, &net, "");
    let env = overrides(100);
    let mut owner = run(&config, &env, &[]);
    expect_line(&mut owner, "chunk written", Duration::from_secs(30));
    std::thread::sleep(Duration::from_millis(500));
    let chunks = dir.path().join("bucket/stream_chunks");
    let first = std::fs::read_dir(&chunks)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .find(|name| name.starts_with("chunk-0000000000-"))
        .unwrap();
    let body = std::fs::read(chunks.join(&first)).unwrap();
    let strangers = [
        "chunk-0000000000-29991231T000000000Z.csv".to_string(),
        "chunk-0000000035-20000101T000000000Z.csv".to_string(),
        "zz-binary.bin".to_string(),
        "notes.txt".to_string(),
    ];
    std::fs::write(chunks.join(&strangers[0]), &body).unwrap();
    std::fs::write(chunks.join(&strangers[1]), &body).unwrap();
    std::fs::write(chunks.join(&strangers[2]), [0u8, 159, 146, 150, 255, 10, 0]).unwrap();
    std::fs::write(chunks.join(&strangers[3]), "hello\n").unwrap();
    let log = finish(owner);
    for name in &strangers {
        let warned = log
            .iter()
            .filter(|l| l.contains("is not applied") && l.contains(name.as_str()))
            .count();
        assert_eq!(warned, 1, "{name}:\n{}", log.join("\n"));
    }
    let db = rusqlite::Connection::open(dir.path().join("state.sqlite")).unwrap();
    let recorded: Vec<(String, Option<i64>, String, Option<String>)> = db
        .prepare(
            "SELECT object_key, seq, reason, quarantine_key FROM ignored_objects ORDER BY object_key",
        )
        .unwrap()
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    let keys: Vec<&str> = recorded.iter().map(|r| r.0.as_str()).collect();
    assert_eq!(
        keys,
        vec![
            "stream_chunks/chunk-0000000000-29991231T000000000Z.csv",
            "stream_chunks/chunk-0000000035-20000101T000000000Z.csv",
            "stream_chunks/notes.txt",
            "stream_chunks/zz-binary.bin",
        ]
    );
    assert!(
        recorded[0].2.contains("duplicate of sequence number 0"),
        "{recorded:?}"
    );
    assert!(
        recorded[1].2.contains("duplicate of sequence number 35"),
        "{recorded:?}"
    );
    assert!(recorded[3].2.contains("not a chunk name"), "{recorded:?}");
    for (key, _, _, quarantine) in &recorded {
        let quarantine = quarantine.as_deref().expect("copied aside");
        let copy = std::fs::read(dir.path().join("bucket").join(quarantine)).unwrap();
        let original = std::fs::read(dir.path().join("bucket").join(key)).unwrap();
        assert_eq!(copy, original, "{quarantine}");
    }
    // The strangers are still in stream_chunks/ (txpipe deletes nothing);
    // compare the real chunks with an uninterrupted run.
    for name in &strangers {
        std::fs::remove_file(chunks.join(name)).unwrap();
    }
    let outputs = Outputs::read(dir.path());
    support::assert_same_outputs(&outputs, &reference(), &tx, ROWS_PER_CHUNK, BATCH);
    let text = status(&config, &[]);
    assert!(text.contains("ignored objects     4"), "{text}");
}

/// A master of three chunks of 2 rows, and a database with nothing yet.
fn tiny_master(dir: &Path) -> (PathBuf, PathBuf) {
    let tx = dir.join("tx.csv");
    let net = dir.join("net.csv");
    let mut master = String::from(
        "step,customer,age,gender,zipcodeOri,merchant,zipMerchant,category,amount,fraud\n",
    );
    for i in 0..6 {
        master.push_str(&format!("0,'C{i}','4','F','1','M1','1','es_food',1.00,0\n"));
    }
    std::fs::write(&tx, master).unwrap();
    std::fs::write(&net, "Source,Target,Weight,typeTrans,fraud\n").unwrap();
    (tx, net)
}

fn tiny_settings(dir: &Path) -> txpipe::config::Settings {
    let (tx, net) = tiny_master(dir);
    let mut settings = support::embedded_settings(dir, &tx, &net);
    settings.chunker.rows_per_chunk = 2;
    settings.watcher.gap_timeout_ms = 200;
    settings.watcher.max_chunk_bytes = 1 << 20;
    settings
}

/// `(seq, status, rows, reason)` of every processed chunk.
fn chunk_rows(dir: &Path) -> Vec<(i64, String, i64, Option<String>)> {
    let db = rusqlite::Connection::open(dir.join("state.sqlite")).unwrap();
    db.prepare("SELECT seq, status, rows, reason FROM processed_chunks ORDER BY seq")
        .unwrap()
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap()
}

#[test]
fn a_chunk_object_larger_than_the_bound_is_rejected_unread() {
    let dir = tempfile::tempdir().unwrap();
    let settings = tiny_settings(dir.path());
    let chunks = dir.path().join("bucket/stream_chunks");
    std::fs::create_dir_all(&chunks).unwrap();
    // A third-party chunk for number 3 (the chunker stops at 2): 2 MiB.
    let huge = vec![b'x'; 2 << 20];
    std::fs::write(chunks.join("chunk-0000000003-x.csv"), &huge).unwrap();
    let report = txpipe::app::run(settings, RunMode::UntilDone, Vec::new()).unwrap();
    assert_eq!(report.exit_code, 0, "{:?}", report.error);
    let rows = chunk_rows(dir.path());
    assert_eq!(rows.len(), 4, "{rows:?}");
    assert_eq!(
        rows[3],
        (
            3,
            "rejected".to_string(),
            0,
            Some("object of 2097152 bytes is larger than watcher.max_chunk_bytes (1048576)".into())
        )
    );
    let copy = std::fs::read(
        dir.path()
            .join("bucket/quarantine/chunk-0000000003-x.rejected.csv"),
    )
    .unwrap();
    assert_eq!(copy, huge, "quarantined whole, by copy");
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(12))]

    /// Random bytes under any kind of name (a duplicate of a chunk's
    /// number, a number the chunker never reaches, a foreign name) never
    /// panic, never wedge the run, and never keep a real chunk from being
    /// applied.
    #[test]
    fn random_objects_never_panic_wedge_or_hide_real_chunks(
        body in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..3000),
        kind in 0..3usize,
        stamp in "[0-9A-Za-z]{1,12}",
    ) {
        let dir = tempfile::tempdir().unwrap();
        let settings = tiny_settings(dir.path());
        let chunks = dir.path().join("bucket/stream_chunks");
        std::fs::create_dir_all(&chunks).unwrap();
        let name = match kind {
            0 => format!("chunk-0000000001-{stamp}.csv"),
            1 => format!("chunk-0000000003-{stamp}"),
            _ => format!("zz-{stamp}.bin"),
        };
        std::fs::write(chunks.join(&name), &body).unwrap();
        let started = Instant::now();
        let report = txpipe::app::run(settings, RunMode::UntilDone, Vec::new()).unwrap();
        proptest::prop_assert_eq!(report.exit_code, 0, "{:?}", report.error);
        proptest::prop_assert!(started.elapsed() < Duration::from_secs(30));
        let db = rusqlite::Connection::open(dir.path().join("state.sqlite")).unwrap();
        let restarts: i64 = db
            .query_row("SELECT count(*) FROM restart_events", [], |r| r.get(0))
            .unwrap();
        proptest::prop_assert_eq!(restarts, 0, "nothing failed");
        let rows = chunk_rows(dir.path());
        let real: Vec<_> = rows.iter().filter(|r| r.0 < 3).collect();
        proptest::prop_assert_eq!(real.len(), 3);
        proptest::prop_assert!(real.iter().all(|r| r.1 == "processed" && r.2 == 2), "{:?}", rows);
        let ignored: i64 = db
            .query_row("SELECT count(*) FROM ignored_objects", [], |r| r.get(0))
            .unwrap();
        proptest::prop_assert_eq!(ignored, if kind == 1 { 0 } else { 1 });
    }
}

/// The same rules through S3 and PostgreSQL: a foreign object and a
/// duplicate are copied aside inside the store (CopyObject) and recorded;
/// every real chunk is applied.
#[test]
fn strangers_in_an_s3_bucket_are_copied_aside_and_recorded_in_postgres() {
    let Some(s3pg) = s3_postgres(0) else {
        return;
    };
    let bucket = s3pg.bucket();
    let chunks = bucket.join("stream_chunks");
    std::fs::create_dir_all(&chunks).unwrap();
    let evil = "zz-evil\nname.bin";
    std::fs::write(chunks.join(evil), b"\x00\x01binary").unwrap();
    std::fs::write(
        chunks.join("chunk-0000000000-00000000T000000000Z.csv"),
        b"not the chunker's",
    )
    .unwrap();
    let log = finish(run(&s3pg.config, &s3pg.env, &[]));
    let warned: Vec<&String> = log
        .iter()
        .filter(|l| l.contains("is not applied"))
        .collect();
    assert_eq!(warned.len(), 2, "{}", log.join("\n"));
    assert!(
        warned.iter().any(|l| l.contains(r"zz-evil\nname.bin")),
        "the key is escaped in the log line: {warned:?}"
    );
    let rows = s3pg
        .db
        .query("SELECT object_key, quarantine_key FROM ignored_objects ORDER BY object_key");
    assert_eq!(rows.len(), 2);
    for row in &rows {
        let key: String = row.get(0);
        let quarantine: Option<String> = row.get(1);
        let quarantine = quarantine.unwrap_or_else(|| panic!("{key:?} not copied"));
        let copy = std::fs::read(bucket.join(&quarantine)).unwrap();
        let original = std::fs::read(bucket.join(&key)).unwrap();
        assert_eq!(copy, original, "{quarantine:?}");
    }
    for name in [evil, "chunk-0000000000-00000000T000000000Z.csv"] {
        std::fs::remove_file(chunks.join(name)).unwrap();
    }
    assert_exact(&s3pg);
}
