//! Graceful shutdown and backpressure. SIGTERM / SIGINT: no new chunks,
//! in-flight chunks finish, the partial batch is written, exit 0 quickly,
//! and the next start continues seamlessly. A slow object store with a fast
//! chunker: memory stays bounded and nothing is dropped.

use crate::support;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use support::child;
use support::outputs::Outputs;

const ROWS_PER_CHUNK: u64 = 2_000;
const BATCH: u64 = 7;
/// Documented in docs/delivery.md: graceful shutdown takes well under a second
/// on this data; `supervisor.shutdown_timeout_ms` (30 s) is the hard bound.
const SHUTDOWN_BOUND: Duration = Duration::from_secs(5);

fn dataset() -> (PathBuf, PathBuf) {
    support::generated(120_000, 3_000, 30, 31)
}

fn count(dir: &Path, sql: &str) -> i64 {
    let Ok(db) = rusqlite::Connection::open(dir.join("state.sqlite")) else {
        return 0;
    };
    db.query_row(sql, [], |r| r.get(0)).unwrap_or(0)
}

/// Starts a paced run, waits for `chunks` commits, sends `signal`, and
/// checks a clean, quick exit with nothing left in the outbox.
fn stop_gracefully(dir: &Path, config: &Path, env: &[(String, String)], chunks: i64, signal: &str) {
    let mut running = child::spawn(&["run", "--config", config.to_str().unwrap()], env);
    let deadline = Instant::now() + Duration::from_secs(60);
    while count(dir, "SELECT count(*) FROM processed_chunks") < chunks {
        assert!(Instant::now() < deadline, "no progress");
        assert!(
            running.run_for(Duration::from_millis(20)).is_none(),
            "{}",
            running.log.join("\n")
        );
    }
    let asked = Instant::now();
    running.signal(signal);
    let (status, log) = running.wait(Duration::from_secs(40));
    let took = asked.elapsed();
    assert!(
        status.is_some_and(|s| s.success()),
        "{signal}:\n{}",
        log.join("\n")
    );
    assert!(took < SHUTDOWN_BOUND, "{signal}: shutdown took {took:?}");
    assert!(
        log.iter().any(|l| l.contains("shutdown complete")),
        "{}",
        log.join("\n")
    );
    assert_eq!(
        count(
            dir,
            "SELECT count(*) FROM detected_patterns WHERE batch_no IS NULL"
        ),
        0,
        "partial batch flushed"
    );
    assert_eq!(
        count(
            dir,
            "SELECT count(*) FROM detection_batches WHERE written_at IS NULL"
        ),
        0,
        "every batch written"
    );
}

#[test]
fn sigterm_and_sigint_drain_flush_and_the_next_start_continues() {
    let (tx, net) = dataset();
    let (_reference_dir, reference) = support::uninterrupted_run(&tx, &net, ROWS_PER_CHUNK, BATCH);
    let dir = tempfile::tempdir().unwrap();
    let config = support::configs::embedded(dir.path(), &tx, &net, "");
    let env = vec![
        (
            "TXPIPE__CHUNKER__ROWS_PER_CHUNK".to_string(),
            ROWS_PER_CHUNK.to_string(),
        ),
        ("TXPIPE__BATCH__SIZE".to_string(), BATCH.to_string()),
        ("TXPIPE__CHUNKER__INTERVAL_MS".to_string(), "40".to_string()),
        ("RUST_LOG".to_string(), "info".to_string()),
    ];
    stop_gracefully(dir.path(), &config, &env, 15, "TERM");
    let after_first = count(dir.path(), "SELECT count(*) FROM processed_chunks");
    stop_gracefully(dir.path(), &config, &env, after_first + 15, "INT");
    let running = child::spawn(
        &[
            "run",
            "--config",
            config.to_str().unwrap(),
            "--exit-when-done",
        ],
        &env,
    );
    let (status, log) = running.wait(Duration::from_secs(120));
    assert!(status.is_some_and(|s| s.success()), "{}", log.join("\n"));

    let outputs = Outputs::read(dir.path());
    // Each graceful stop wrote one partial file, the end one more.
    outputs.check_finished_with(BATCH as usize, 3);
    outputs.check_chunks_match_master(&tx, ROWS_PER_CHUNK as usize);
    assert_eq!(outputs.emissions(), reference.emissions());
    assert_eq!(outputs.pairs, reference.pairs);
    assert_eq!(outputs.chunks, reference.chunks);
}

/// Peak resident memory of a child, polled until it exits.
fn run_measuring_peak_rss(args: &[&str], env: &[(String, String)]) -> (u64, Vec<String>) {
    let mut running = child::spawn(args, env);
    let mut peak = 0;
    loop {
        if let Some(rss) = running.peak_rss() {
            peak = peak.max(rss);
        }
        if let Some(status) = running.run_for(Duration::from_millis(10)) {
            assert!(status.success(), "{}", running.log.join("\n"));
            return (peak, running.log);
        }
    }
}

/// Documented in docs/delivery.md.
const SLOW_STORE_RSS_BOUND: u64 = 256 * 1024 * 1024;

#[test]
fn a_slow_object_store_keeps_memory_bounded_and_drops_nothing() {
    let Some(db) = support::pg::TestDb::create() else {
        return;
    };
    let (tx, net) = support::banksim().unwrap_or_else(|| support::generated(600_000, 4_000, 50, 3));
    let server = support::s3_server::S3TestServer::start("txpipe-data");
    support::configs::upload_inputs(&server, &tx, &net);
    server.set_faults(support::s3_server::Faults {
        put_delay: Duration::from_millis(25),
        ..Default::default()
    });
    let dir = tempfile::tempdir().unwrap();
    let config = support::configs::s3_postgres(dir.path(), &server, &db.url, "slow", "");
    let (peak, _) = run_measuring_peak_rss(
        &[
            "run",
            "--config",
            config.to_str().unwrap(),
            "--exit-when-done",
        ],
        &server.env(),
    );
    eprintln!("peak RSS with a slow store: {} MB", peak >> 20);
    assert!(
        peak > 0 && peak < SLOW_STORE_RSS_BOUND,
        "peak RSS {} MB",
        peak >> 20
    );
    let outputs = Outputs::read_postgres(&db.url, server.root().join("txpipe-data/slow"));
    outputs.check_finished(50);
    outputs.check_chunks_match_master(&tx, 10_000);
    assert_eq!(
        outputs.emissions(),
        support::reference(&tx, &net, 10_000),
        "nothing dropped"
    );
}
