//! Faults on the production backends (S3 + PostgreSQL) and failing
//! dependencies: injected actor panics and errors, a crash loop, PostgreSQL
//! connections killed and refused, an S3 server answering 500 / 503 /
//! nothing, and a local bucket that fills up or turns read-only.

use crate::support;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use support::child;
use support::outputs::Outputs;
use support::pg::TestDb;
use support::s3_server::{Faults, S3TestServer};

const ROWS_PER_CHUNK: u64 = 2_000;
const BATCH: u64 = 7;

fn dataset() -> (PathBuf, PathBuf) {
    support::generated(120_000, 3_000, 30, 31)
}

fn overrides(extra: &[(&str, &str)]) -> Vec<(String, String)> {
    let mut env = vec![
        (
            "TXPIPE__CHUNKER__ROWS_PER_CHUNK".to_string(),
            ROWS_PER_CHUNK.to_string(),
        ),
        ("TXPIPE__BATCH__SIZE".to_string(), BATCH.to_string()),
    ];
    env.extend(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())));
    env
}

fn restart_events(db: &TestDb) -> Vec<(String, String, i64)> {
    db.query("SELECT actor, reason, restart_count FROM restart_events ORDER BY id")
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect()
}

#[test]
fn s3_postgres_each_actor_killed_once_restarts_and_outputs_stay_exact() {
    if TestDb::create().is_none() {
        return;
    }
    let (tx, net) = dataset();
    let (_reference_dir, reference) = support::uninterrupted_run(&tx, &net, ROWS_PER_CHUNK, BATCH);
    let server = S3TestServer::start("txpipe-data");
    support::configs::upload_inputs(&server, &tx, &net);
    for (i, (fault, actor)) in [
        ("chunker:9:panic", "chunker"),
        ("watcher:6:error", "watcher"),
        ("detector-patid1-0:20:panic", "detector-patid1-0"),
        ("detector-patid2-0:5:panic", "detector-patid2-0"),
        ("detector-patid3-0:33:error", "detector-patid3-0"),
        ("tracker:3:panic", "tracker"),
        ("batch-writer:2:error", "batch-writer"),
        ("compactor:1:error", "compactor"),
    ]
    .into_iter()
    .enumerate()
    {
        let db = TestDb::create().unwrap();
        let dir = tempfile::tempdir().unwrap();
        let prefix = format!("actor-{i}");
        let config = support::configs::s3_postgres(dir.path(), &server, &db.url, &prefix, "");
        let mut env = server.env();
        env.extend(overrides(&[]));
        let running = child::spawn(
            &[
                "run",
                "--config",
                config.to_str().unwrap(),
                "--exit-when-done",
                "--inject-fault",
                fault,
            ],
            &env,
        );
        let (status, log) = running.wait(Duration::from_secs(120));
        assert!(
            status.is_some_and(|s| s.success()),
            "{fault}:\n{}",
            log.join("\n")
        );
        let restarted: Vec<&String> = log
            .iter()
            .filter(|l| l.contains("actor restarted"))
            .collect();
        assert_eq!(
            restarted.len(),
            1,
            "{fault}: one restart line:\n{}",
            log.join("\n")
        );
        assert!(
            restarted[0].contains(actor) && restarted[0].contains("restart=1"),
            "{}",
            restarted[0]
        );
        assert!(
            restart_events(&db)
                .iter()
                .any(|(a, r, n)| a == actor && r.contains("injected") && *n == 1),
            "{fault}: restart not recorded"
        );
        let outputs =
            Outputs::read_postgres(&db.url, server.root().join("txpipe-data").join(&prefix));
        support::assert_same_outputs(&outputs, &reference, &tx, ROWS_PER_CHUNK, BATCH);
    }
}

#[test]
fn s3_postgres_crash_loop_stops_with_a_clear_error_and_a_consistent_database() {
    let Some(db) = TestDb::create() else { return };
    let (tx, net) = dataset();
    let (_reference_dir, reference) = support::uninterrupted_run(&tx, &net, ROWS_PER_CHUNK, BATCH);
    let server = S3TestServer::start("txpipe-data");
    support::configs::upload_inputs(&server, &tx, &net);
    let dir = tempfile::tempdir().unwrap();
    let config = support::configs::s3_postgres(dir.path(), &server, &db.url, "loop", "");
    let config = config.to_str().unwrap();
    let mut env = server.env();
    env.extend(overrides(&[("TXPIPE__SUPERVISOR__MAX_RESTARTS", "2")]));
    let running = child::spawn(
        &[
            "run",
            "--config",
            config,
            "--exit-when-done",
            "--inject-fault",
            "detector-patid2-0:12:panic:repeat",
        ],
        &env,
    );
    let (status, log) = running.wait(Duration::from_secs(120));
    assert_eq!(status.and_then(|s| s.code()), Some(3), "{}", log.join("\n"));
    assert!(
        log.iter()
            .any(|l| l.contains("error: actor detector-patid2-0 restarted 3 times within")),
        "{}",
        log.join("\n")
    );
    // Whatever committed is whole: a clean run finishes the job exactly.
    let running = child::spawn(&["run", "--config", config, "--exit-when-done"], &env);
    let (status, log) = running.wait(Duration::from_secs(120));
    assert!(status.is_some_and(|s| s.success()), "{}", log.join("\n"));
    let outputs = Outputs::read_postgres(&db.url, server.root().join("txpipe-data/loop"));
    support::assert_same_outputs(&outputs, &reference, &tx, ROWS_PER_CHUNK, BATCH);
}

fn processed(db: &TestDb) -> i64 {
    let rows = db.query(
        "SELECT count(*) FROM information_schema.tables WHERE table_name = 'processed_chunks'",
    );
    if rows[0].get::<_, i64>(0) == 0 {
        return 0;
    }
    db.query("SELECT count(*) FROM processed_chunks")[0].get(0)
}

#[test]
fn postgres_connections_killed_and_refused_mid_run() {
    let Some(db) = TestDb::create() else { return };
    let (tx, net) = dataset();
    let (_reference_dir, reference) = support::uninterrupted_run(&tx, &net, ROWS_PER_CHUNK, BATCH);
    let proxy = support::tcp_proxy::TcpProxy::start("127.0.0.1:5432");
    let url = db
        .url
        .replace("127.0.0.1:5432", &format!("127.0.0.1:{}", proxy.port()));
    let dir = tempfile::tempdir().unwrap();
    let config = support::configs::embedded(dir.path(), &tx, &net, "");
    let env = overrides(&[
        ("TXPIPE__DATABASE__URL", &url),
        ("TXPIPE__CHUNKER__INTERVAL_MS", "60"),
    ]);
    let mut running = child::spawn(
        &[
            "run",
            "--config",
            config.to_str().unwrap(),
            "--exit-when-done",
        ],
        &env,
    );
    let deadline = Instant::now() + Duration::from_secs(60);
    while processed(&db) < 10 {
        assert!(Instant::now() < deadline && running.run_for(Duration::from_millis(20)).is_none());
    }
    assert!(
        db.terminate_connections() > 0,
        "the pipeline had connections to kill"
    );
    while processed(&db) < 25 {
        assert!(Instant::now() < deadline && running.run_for(Duration::from_millis(20)).is_none());
    }
    proxy.refuse();
    assert!(
        running.run_for(Duration::from_secs(3)).is_none(),
        "the pipeline waits for the database"
    );
    proxy.accept();
    let (status, log) = running.wait(Duration::from_secs(120));
    assert!(status.is_some_and(|s| s.success()), "{}", log.join("\n"));
    assert!(
        log.iter()
            .any(|l| l.contains("database call failed; retrying")),
        "{}",
        log.join("\n")
    );
    let outputs = Outputs::read_postgres(&db.url, dir.path().join("bucket"));
    support::assert_same_outputs(&outputs, &reference, &tx, ROWS_PER_CHUNK, BATCH);
}

#[test]
fn s3_errors_and_timeouts_are_retried_with_exact_outputs() {
    let Some(db) = TestDb::create() else { return };
    let (tx, net) = dataset();
    let (_reference_dir, reference) = support::uninterrupted_run(&tx, &net, ROWS_PER_CHUNK, BATCH);
    let server = S3TestServer::start("txpipe-data");
    support::configs::upload_inputs(&server, &tx, &net);
    let dir = tempfile::tempdir().unwrap();
    let config = support::configs::s3_postgres(dir.path(), &server, &db.url, "flaky", "");
    let mut env = server.env();
    env.extend(overrides(&[
        ("TXPIPE__STORAGE__REQUEST_TIMEOUT_MS", "1000"),
        ("TXPIPE__STORAGE__MAX_ATTEMPTS", "12"),
    ]));
    server.set_faults(Faults {
        internal_error: 0.15,
        slow_down: 0.15,
        hang: 0.01,
        ..Faults::default()
    });
    let running = child::spawn(
        &[
            "run",
            "--config",
            config.to_str().unwrap(),
            "--exit-when-done",
        ],
        &env,
    );
    let (status, log) = running.wait(Duration::from_secs(180));
    server.set_faults(Faults::default());
    assert!(status.is_some_and(|s| s.success()), "{}", log.join("\n"));
    assert!(
        server.injected_faults() > 10,
        "faults injected: {}",
        server.injected_faults()
    );
    assert!(
        log.iter()
            .any(|l| l.contains("object store call failed; retrying"))
    );
    let outputs = Outputs::read_postgres(&db.url, server.root().join("txpipe-data/flaky"));
    support::assert_same_outputs(&outputs, &reference, &tx, ROWS_PER_CHUNK, BATCH);
}
