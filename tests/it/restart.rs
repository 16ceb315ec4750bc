//! Restarts: the whole actor system stopped part-way and started again, and
//! single actors killed by injected faults, must give exactly the outputs
//! of an uninterrupted run.

use crate::support;

use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::Duration;

use support::outputs::Outputs;
use txpipe::actors::supervisor::{EXIT_RESTART_LIMIT, RunMode};
use txpipe::app;

const ROWS_PER_CHUNK: usize = 5_000;
const BATCH: usize = 7;

fn dataset() -> (PathBuf, PathBuf) {
    support::generated(150_000, 3_000, 30, 23)
}

/// The outputs of an uninterrupted run, computed once.
fn uninterrupted() -> &'static Outputs {
    static OUTPUTS: OnceLock<(tempfile::TempDir, Outputs)> = OnceLock::new();
    &OUTPUTS
        .get_or_init(|| {
            let dir = tempfile::tempdir().unwrap();
            let (tx, net) = dataset();
            let report = app::run(settings(dir.path()), RunMode::UntilDone, Vec::new()).unwrap();
            assert_eq!(report.exit_code, 0);
            let outputs = Outputs::read(dir.path());
            outputs.check_finished(BATCH);
            assert_eq!(
                outputs.emissions(),
                support::reference(&tx, &net, ROWS_PER_CHUNK)
            );
            assert!(
                outputs.files.len() >= 5,
                "enough detection files to exercise batching"
            );
            (dir, outputs)
        })
        .1
}

fn settings(dir: &Path) -> txpipe::config::Settings {
    let (tx, net) = dataset();
    let mut settings = support::embedded_settings(dir, &tx, &net);
    settings.chunker.rows_per_chunk = ROWS_PER_CHUNK as u64;
    settings.watcher.max_chunks_per_commit = 2;
    settings.batch.size = BATCH as u64;
    settings
}

/// Same detections (set and chunk of first detection), same cumulative
/// state, same chunks, and every output promise.
fn assert_same_as_uninterrupted(dir: &Path) {
    let expected = uninterrupted();
    let outputs = Outputs::read(dir);
    outputs.check_finished(BATCH);
    assert_eq!(outputs.emissions(), expected.emissions());
    assert_eq!(outputs.pairs, expected.pairs, "cumulative state differs");
    assert_eq!(outputs.chunks, expected.chunks);
    let (tx, _) = dataset();
    outputs.check_chunks_match_master(&tx, ROWS_PER_CHUNK);
}

/// Runs until `chunks` chunks are committed, then stops the actor system
/// abruptly: no draining, no final flush.
fn run_and_stop_after(dir: &Path, chunks: u64) {
    let report = app::run_observed(settings(dir), RunMode::UntilDone, Vec::new(), |handle| {
        std::thread::spawn(move || {
            // Bounded, in case the run ends first.
            let deadline = std::time::Instant::now() + Duration::from_secs(120);
            while handle.metrics.chunks_committed.get() < chunks
                && std::time::Instant::now() < deadline
            {
                std::thread::sleep(Duration::from_millis(1));
            }
            handle.system.stop_with_code(9);
        });
    })
    .unwrap();
    assert!(
        report.exit_code == 9 || report.exit_code == 0,
        "unexpected exit {:?}",
        report.error
    );
}

#[test]
fn stopping_the_whole_system_part_way_loses_and_repeats_nothing() {
    let dir = tempfile::tempdir().unwrap();
    for stop_after in [1, 4, 9, 17, 24] {
        run_and_stop_after(dir.path(), stop_after);
    }
    let report = app::run(settings(dir.path()), RunMode::UntilDone, Vec::new()).unwrap();
    assert_eq!(report.exit_code, 0, "{:?}", report.error);
    assert_same_as_uninterrupted(dir.path());
}

fn run_with_fault(fault: &str) -> (tempfile::TempDir, app::RunReport) {
    let dir = tempfile::tempdir().unwrap();
    let report = app::run(
        settings(dir.path()),
        RunMode::UntilDone,
        vec![fault.parse().unwrap()],
    )
    .unwrap();
    (dir, report)
}

fn restart_events(dir: &Path) -> Vec<(String, String, i64)> {
    let db = rusqlite::Connection::open(dir.join("state.sqlite")).unwrap();
    db.prepare("SELECT actor, reason, restart_count FROM restart_events ORDER BY id")
        .unwrap()
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
        .unwrap()
        .collect::<Result<Vec<_>, _>>()
        .unwrap()
}

#[test]
fn each_actor_killed_once_restarts_and_outputs_stay_exact() {
    for (fault, actor) in [
        ("chunker:7:panic", "chunker"),
        ("watcher:5:panic", "watcher"),
        ("detector-patid1-0:6:panic", "detector-patid1-0"),
        ("detector-patid2-0:3:error", "detector-patid2-0"),
        ("detector-patid3-0:12:panic", "detector-patid3-0"),
        ("tracker:4:panic", "tracker"),
        ("batch-writer:3:panic", "batch-writer"),
        ("chunker:3:error", "chunker"),
        ("compactor:1:panic", "compactor"),
        ("tracker:2:error", "tracker"),
    ] {
        let (dir, report) = run_with_fault(fault);
        assert_eq!(report.exit_code, 0, "{fault}: {:?}", report.error);
        let events = restart_events(dir.path());
        assert!(
            events
                .iter()
                .any(|(a, reason, count)| a == actor && *count == 1 && reason.contains("injected")),
            "{fault}: restart not recorded: {events:?}"
        );
        assert_same_as_uninterrupted(dir.path());
    }
}

#[test]
fn a_crash_loop_stops_the_process_with_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let mut settings = settings(dir.path());
    settings.supervisor.max_restarts = 2;
    let report = app::run(
        settings,
        RunMode::UntilDone,
        vec!["tracker:3:panic:repeat".parse().unwrap()],
    )
    .unwrap();
    assert_eq!(report.exit_code, EXIT_RESTART_LIMIT);
    let error = report.error.expect("an error message");
    assert!(error.contains("actor tracker restarted 3 times"), "{error}");
    // The database is consistent: what committed, committed whole, and a
    // later run finishes the job exactly.
    let report = app::run(
        settings_for_rerun(dir.path()),
        RunMode::UntilDone,
        Vec::new(),
    )
    .unwrap();
    assert_eq!(report.exit_code, 0);
    assert_same_as_uninterrupted(dir.path());
}

fn settings_for_rerun(dir: &Path) -> txpipe::config::Settings {
    settings(dir)
}

#[test]
fn state_left_uncompacted_at_shutdown_is_folded_by_the_next_start() {
    let dir = tempfile::tempdir().unwrap();
    let mut first = settings(dir.path());
    // No fold during the run, none at shutdown: every chunk's state change
    // stays a pending delta.
    first.database.compact_every = 10_000;
    first.database.compact_max_pending = 10_000;
    first.database.shutdown_compact_ms = 0;
    let report = app::run(first, RunMode::UntilDone, Vec::new()).unwrap();
    assert_eq!(report.exit_code, 0, "{:?}", report.error);
    let db = rusqlite::Connection::open(dir.path().join("state.sqlite")).unwrap();
    let count = |sql: &str| db.query_row(sql, [], |r| r.get::<_, i64>(0)).unwrap();
    let chunks = count("SELECT COUNT(*) FROM processed_chunks");
    assert_eq!(count("SELECT COUNT(*) FROM chunk_deltas"), chunks);
    assert_eq!(count("SELECT COUNT(*) FROM pair_state"), 0);
    drop(db);
    let report = app::run(settings(dir.path()), RunMode::UntilDone, Vec::new()).unwrap();
    assert_eq!(report.exit_code, 0, "{:?}", report.error);
    assert_same_as_uninterrupted(dir.path());
    let db = rusqlite::Connection::open(dir.path().join("state.sqlite")).unwrap();
    let left: i64 = db
        .query_row("SELECT COUNT(*) FROM chunk_deltas", [], |r| r.get(0))
        .unwrap();
    assert_eq!(left, 0, "the next start folds what was left");
}

/// Runs paced (one chunk a minute, so at most one cut per life) and stops
/// the system as soon as `chunks` chunk objects are written.
fn run_paced_and_stop_after_writes(dir: &Path, chunks: u64) {
    let mut settings = settings(dir);
    settings.chunker.interval_ms = 60_000;
    let report = app::run_observed(settings, RunMode::UntilDone, Vec::new(), |handle| {
        std::thread::spawn(move || {
            while handle.metrics.chunks_written.get() < chunks {
                std::thread::sleep(Duration::from_millis(1));
            }
            handle.system.stop_with_code(9);
        });
    })
    .unwrap();
    assert_eq!(report.exit_code, 9, "{:?}", report.error);
}

/// A life that dies with several chunk PUTs in flight leaves their keys
/// pending; the next life reuses them. If that life is paced, it cuts them
/// one per tick, and if it dies too before cutting them all, the keys it
/// has not reached yet must still be pending: their objects may already
/// exist, and a fresh key would put a second object for the same rows.
#[test]
fn pending_keys_survive_a_paced_life_that_dies_before_reaching_them() {
    let dir = tempfile::tempdir().unwrap();
    run_paced_and_stop_after_writes(dir.path(), 1);

    // As if the life just stopped had chosen keys for its next two chunks.
    let db = rusqlite::Connection::open(dir.path().join("state.sqlite")).unwrap();
    let (next_seq, pending): (i64, Option<String>) = db
        .query_row(
            "SELECT next_seq, pending_key FROM chunker_position WHERE id = 1",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap();
    let mut chosen: Vec<String> = pending
        .map(|keys| keys.lines().map(str::to_string).collect())
        .unwrap_or_default();
    while chosen.len() < 2 {
        let seq = next_seq as u64 + chosen.len() as u64;
        chosen.push(txpipe::layout::chunk_key(seq, "20000101T000000000Z"));
    }
    db.execute(
        "UPDATE chunker_position SET pending_key = ?1 WHERE id = 1",
        [chosen.join("\n")],
    )
    .unwrap();
    drop(db);

    // This life cuts and writes only the first of them before it dies.
    run_paced_and_stop_after_writes(dir.path(), 1);
    let report = app::run(settings(dir.path()), RunMode::UntilDone, Vec::new()).unwrap();
    assert_eq!(report.exit_code, 0, "{:?}", report.error);

    let outputs = Outputs::read(dir.path());
    for key in &chosen {
        let name = key.strip_prefix("stream_chunks/").unwrap();
        assert!(
            outputs.chunk_objects.iter().any(|o| o == name),
            "{name} was chosen before the crashes but not used: {:?}",
            outputs.chunk_objects
        );
    }
    assert_same_as_uninterrupted(dir.path());
}
