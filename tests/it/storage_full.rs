//! A local bucket that fills up or turns read-only: the pipeline stops with
//! a clear error, nothing is marked processed or written that is not in the
//! bucket, and once there is room again a new run finishes exactly.
//! (The bucket is a small tmpfs; without the right to mount one, these
//! tests are skipped.)

use crate::support;

use std::path::{Path, PathBuf};
use std::process::Command;

use support::outputs::Outputs;
use txpipe::actors::supervisor::{EXIT_RESTART_LIMIT, RunMode};

const ROWS_PER_CHUNK: u64 = 2_000;
const BATCH: u64 = 7;

struct Tmpfs {
    dir: tempfile::TempDir,
}

impl Tmpfs {
    fn mount(size: &str) -> Option<Tmpfs> {
        let dir = tempfile::tempdir().unwrap();
        let status = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir.path())
            .output();
        match status {
            Ok(out) if out.status.success() => Some(Tmpfs { dir }),
            other => {
                assert!(
                    !support::ci(),
                    "CI=true but a tmpfs cannot be mounted: {other:?}"
                );
                eprintln!("cannot mount a tmpfs ({other:?}); skipping");
                None
            }
        }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    fn remount(&self, options: &str) {
        let out = Command::new("mount")
            .args(["-o", &format!("remount,{options}")])
            .arg(self.path())
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(self.dir.path()).status();
    }
}

fn dataset() -> (PathBuf, PathBuf) {
    support::generated(120_000, 3_000, 30, 31)
}

fn settings(state: &Path, bucket: &Path) -> txpipe::config::Settings {
    let (tx, net) = dataset();
    let mut settings = support::embedded_settings(state, &tx, &net);
    settings.storage.root = bucket.to_path_buf();
    settings.chunker.rows_per_chunk = ROWS_PER_CHUNK;
    settings.batch.size = BATCH;
    settings.supervisor.max_restarts = 2;
    settings
}

/// Nothing the database calls processed or written is missing from the
/// bucket, and every such object is complete.
fn assert_database_matches_bucket(state: &Path, bucket: &Path) {
    let db = rusqlite::Connection::open(state.join("state.sqlite")).unwrap();
    let chunks: Vec<(String, i64)> = db
        .prepare("SELECT chunk_name, rows FROM processed_chunks")
        .unwrap()
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    for (name, rows) in &chunks {
        let data = std::fs::read(bucket.join(name))
            .unwrap_or_else(|e| panic!("{name} processed but missing: {e}"));
        let lines = data
            .split(|&b| b == b'\n')
            .filter(|l| !l.is_empty())
            .count() as i64;
        assert_eq!(lines - 1, *rows, "{name} is incomplete");
    }
    let batches: Vec<(String, i64)> = db
        .prepare(
            "SELECT object_key, detections FROM detection_batches WHERE written_at IS NOT NULL",
        )
        .unwrap()
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    for (key, detections) in &batches {
        let data = std::fs::read_to_string(bucket.join(key))
            .unwrap_or_else(|e| panic!("{key} marked written but missing: {e}"));
        assert_eq!(
            data.lines().count() as i64 - 1,
            *detections,
            "{key} is incomplete"
        );
    }
}

fn finish_and_compare(state: &Path, bucket: &Path) {
    let (tx, net) = dataset();
    let (_reference_dir, reference) = support::uninterrupted_run(&tx, &net, ROWS_PER_CHUNK, BATCH);
    let report = txpipe::app::run(settings(state, bucket), RunMode::UntilDone, Vec::new()).unwrap();
    assert_eq!(report.exit_code, 0, "{:?}", report.error);
    // The outputs reader expects the bucket beside the database.
    let outputs = Outputs::read_with_bucket(state, bucket);
    support::assert_same_outputs(&outputs, &reference, &tx, ROWS_PER_CHUNK, BATCH);
}

#[test]
fn a_full_bucket_stops_the_pipeline_cleanly() {
    let Some(bucket) = Tmpfs::mount("1500k") else {
        return;
    };
    let state = tempfile::tempdir().unwrap();
    let report = txpipe::app::run(
        settings(state.path(), bucket.path()),
        RunMode::UntilDone,
        Vec::new(),
    )
    .unwrap();
    assert_eq!(report.exit_code, EXIT_RESTART_LIMIT);
    let error = report.error.unwrap();
    assert!(error.contains("No space left on device"), "{error}");
    assert!(
        report.chunks_committed > 0 && report.chunks_committed < 60,
        "stopped part-way: {}",
        report.chunks_committed
    );
    assert_database_matches_bucket(state.path(), bucket.path());
    bucket.remount("size=64m");
    finish_and_compare(state.path(), bucket.path());
}

#[test]
fn a_bucket_turning_read_only_stops_the_pipeline_cleanly() {
    let Some(bucket) = Tmpfs::mount("64m") else {
        return;
    };
    let state = tempfile::tempdir().unwrap();
    let mut paced = settings(state.path(), bucket.path());
    paced.chunker.interval_ms = 30;
    let report = txpipe::app::run_observed(paced, RunMode::UntilDone, Vec::new(), |handle| {
        let mount = bucket.path().to_path_buf();
        std::thread::spawn(move || {
            while handle.metrics.chunks_committed.get() < 12 {
                std::thread::sleep(std::time::Duration::from_millis(2));
            }
            let out = Command::new("mount")
                .args(["-o", "remount,ro"])
                .arg(&mount)
                .output()
                .unwrap();
            assert!(out.status.success(), "{out:?}");
        });
    })
    .unwrap();
    assert_eq!(report.exit_code, EXIT_RESTART_LIMIT);
    let error = report.error.unwrap();
    assert!(error.contains("Read-only file system"), "{error}");
    assert_database_matches_bucket(state.path(), bucket.path());
    bucket.remount("rw");
    finish_and_compare(state.path(), bucket.path());
}
