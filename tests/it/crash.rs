//! Crash safety, process level: `txpipe run --exit-when-done` as a child
//! process, SIGKILLed at 18 moments spread over a run of 60 chunks (seeded
//! random delays, and kills at announced pause points: during chunk writes,
//! inside commit transactions, in the middle of detection-file flushes),
//! restarted each time. The final outputs must equal an uninterrupted
//! run's, on both backends.

use crate::support;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use support::child::{self, Waited};
use support::outputs::Outputs;
use support::s3pg::S3Postgres;
use txpipe::actors::supervisor::RunMode;

const ROWS_PER_CHUNK: u64 = 2_000;
const BATCH: usize = 2;
const KILLS: usize = 18;
const PAUSE_MS: u64 = 50;

fn dataset() -> (PathBuf, PathBuf) {
    // 120,000 rows in chunks of 2,000: 60 chunks.
    support::generated(120_000, 3_000, 30, 31)
}

/// Settings layered over the test configurations (their own sections
/// cannot repeat, so these go through the environment).
fn overrides() -> Vec<(String, String)> {
    vec![
        (
            "TXPIPE__CHUNKER__ROWS_PER_CHUNK".into(),
            ROWS_PER_CHUNK.to_string(),
        ),
        ("TXPIPE__BATCH__SIZE".into(), BATCH.to_string()),
        // Paced, so that 18 short lives do not finish the job.
        ("TXPIPE__CHUNKER__INTERVAL_MS".into(), "150".into()),
    ]
}

/// The uninterrupted run every crashed run is compared with.
fn reference() -> Outputs {
    let (tx, net) = dataset();
    let dir = tempfile::tempdir().unwrap();
    let mut settings = support::embedded_settings(dir.path(), &tx, &net);
    settings.chunker.rows_per_chunk = ROWS_PER_CHUNK;
    settings.batch.size = BATCH as u64;
    let report = txpipe::app::run(settings, RunMode::UntilDone, Vec::new()).unwrap();
    assert_eq!(report.exit_code, 0);
    let outputs = Outputs::read(dir.path());
    assert_eq!(outputs.chunks.len(), 60);
    assert_eq!(
        outputs.emissions(),
        support::reference(&tx, &net, ROWS_PER_CHUNK as usize)
    );
    outputs
}

/// Kills and restarts the pipeline `KILLS` times, then lets it finish.
/// Returns how many kills landed at each pause point.
fn crash_loop(
    config: &Path,
    env: &[(String, String)],
    points: &[&'static str],
    seed: u64,
) -> BTreeMap<&'static str, usize> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let config = config.to_str().unwrap();
    let pause = PAUSE_MS.to_string();
    let args = [
        "run",
        "--config",
        config,
        "--exit-when-done",
        "--pause-at",
        "all",
        "--pause-ms",
        &pause,
    ];
    let mut landed: BTreeMap<&'static str, usize> = BTreeMap::new();
    let mut kills = 0;
    let mut attempts = 0;
    let mut pause_kills = 0;
    while kills < KILLS {
        attempts += 1;
        assert!(
            attempts < KILLS * 4,
            "the run finished before {KILLS} kills: {landed:?}"
        );
        let mut running = child::spawn(&args, env);
        if rng.random_bool(0.3) {
            // A random moment.
            let delay = Duration::from_millis(rng.random_range(150..1_200));
            if let Some(status) = running.run_for(delay) {
                panic!(
                    "finished early ({status}) after {kills} kills:\n{}",
                    running.log.join("\n")
                );
            }
            kills += 1;
            *landed.entry("random").or_default() += 1;
        } else {
            // Inside the window of a pause point, each in turn (a point
            // not reached in time is tried again next life).
            let point = points[pause_kills % points.len()];
            let occurrence = rng.random_range(1..4);
            match running.wait_for(
                &format!("pause point reached: {point}"),
                occurrence,
                Duration::from_secs(4),
            ) {
                Waited::Seen => {
                    std::thread::sleep(Duration::from_millis(rng.random_range(0..PAUSE_MS / 2)));
                    *landed.entry(point).or_default() += 1;
                    pause_kills += 1;
                }
                Waited::Exited(status) => panic!(
                    "exited ({status}) waiting for {point}:\n{}",
                    running.log.join("\n")
                ),
                // Not reached in time (no batch was due, say): kill anyway.
                Waited::TimedOut => *landed.entry("late").or_default() += 1,
            }
            kills += 1;
        }
        let log = running.kill();
        assert!(
            !log.iter().any(|l| l.contains("panic")),
            "a run panicked:\n{}",
            log.join("\n")
        );
    }
    let running = child::spawn(&["run", "--config", config, "--exit-when-done"], env);
    let (status, log) = running.wait(Duration::from_secs(120));
    assert!(
        status.is_some_and(|s| s.success()),
        "final run failed:\n{}",
        log.join("\n")
    );
    landed
}

fn assert_same(outputs: &Outputs, reference: &Outputs) {
    outputs.check_finished(BATCH);
    let (tx, _) = dataset();
    outputs.check_chunks_match_master(&tx, ROWS_PER_CHUNK as usize);
    assert_eq!(
        outputs.emissions(),
        reference.emissions(),
        "detections differ"
    );
    assert_eq!(
        outputs.pairs, reference.pairs,
        "cumulative state differs (a chunk counted twice?)"
    );
    assert_eq!(outputs.chunks, reference.chunks);
}

#[test]
fn embedded_survives_sigkill_at_any_moment() {
    let reference = reference();
    let (tx, net) = dataset();
    let dir = tempfile::tempdir().unwrap();
    let config = support::configs::embedded(dir.path(), &tx, &net, "");
    let points = [
        "chunk-put",
        "chunk-saved",
        "temp-written",
        "chunk-fetch",
        "commit",
        "batch-assigned",
        "batch-put",
    ];
    let landed = crash_loop(&config, &overrides(), &points, 7);
    eprintln!("kills: {landed:?}");
    for point in ["chunk-put", "commit", "batch-assigned"] {
        assert!(
            landed.contains_key(point),
            "no kill during {point}: {landed:?}"
        );
    }
    assert_same(&Outputs::read(dir.path()), &reference);
}

/// A loop of kills at pause points ([`crash_loop`], [`cluster_crash_loop`]).
type KillLoop =
    fn(&Path, &[(String, String)], &[&'static str], u64) -> BTreeMap<&'static str, usize>;

#[test]
fn s3_and_postgres_survive_sigkill_at_any_moment() {
    s3_postgres_survive_sigkill("crash", &[], crash_loop, 11);
}

/// A run on the S3 test server and PostgreSQL (bucket prefix `prefix`,
/// `extra` settings) driven through `kills` at the pause points: the
/// chunk's and the commit's moments are hit, and the outputs are those of
/// an uninterrupted run.
fn s3_postgres_survive_sigkill(prefix: &str, extra: &[(&str, &str)], kills: KillLoop, seed: u64) {
    let (tx, net) = dataset();
    let Some(mut place) = S3Postgres::start(&tx, &net, prefix) else {
        return;
    };
    let reference = reference();
    let points = [
        "chunk-put",
        "chunk-saved",
        "chunk-fetch",
        "commit",
        "batch-assigned",
        "batch-put",
    ];
    place.env.extend(overrides());
    place
        .env
        .extend(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())));
    let landed = kills(&place.config, &place.env, &points, seed);
    eprintln!("kills: {landed:?}");
    for point in ["chunk-put", "commit", "batch-assigned"] {
        assert!(
            landed.contains_key(point),
            "no kill during {point}: {landed:?}"
        );
    }
    assert_same(
        &Outputs::read_postgres(&place.db.url, place.bucket()),
        &reference,
    );
}

/// [`crash_loop`] for a cluster of two workers: each kill hits whichever
/// worker reaches the moment first (the chunker and the detection files
/// run in one of them, commits in both), and the killed one is started
/// again while the other goes on. Returns how many kills landed where.
fn cluster_crash_loop(
    config: &Path,
    env: &[(String, String)],
    points: &[&'static str],
    seed: u64,
) -> BTreeMap<&'static str, usize> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let config = config.to_str().unwrap();
    let pause = PAUSE_MS.to_string();
    let args = [
        "run",
        "--config",
        config,
        "--exit-when-done",
        "--pause-at",
        "all",
        "--pause-ms",
        &pause,
    ];
    let mut workers = [child::spawn(&args, env), child::spawn(&args, env)];
    let mut landed: BTreeMap<&'static str, usize> = BTreeMap::new();
    for kill in 0..KILLS {
        let victim = if rng.random_bool(0.3) {
            let delay = Duration::from_millis(rng.random_range(150..1_200));
            for worker in &mut workers {
                if let Some(status) = worker.run_for(delay / 2) {
                    panic!(
                        "finished early ({status}) after {kill} kills:\n{}",
                        worker.log.join("\n")
                    );
                }
            }
            *landed.entry("random").or_default() += 1;
            rng.random_range(0..2)
        } else {
            let point = points[kill % points.len()];
            let needle = format!("pause point reached: {point}");
            let deadline = std::time::Instant::now() + Duration::from_secs(4);
            let mut victim = None;
            while victim.is_none() && std::time::Instant::now() < deadline {
                for (i, worker) in workers.iter_mut().enumerate() {
                    match worker.wait_for(&needle, 1, Duration::from_millis(20)) {
                        Waited::Seen => {
                            victim = Some(i);
                            break;
                        }
                        Waited::Exited(status) => panic!(
                            "exited ({status}) waiting for {point}:\n{}",
                            worker.log.join("\n")
                        ),
                        Waited::TimedOut => {}
                    }
                }
            }
            match victim {
                Some(i) => {
                    std::thread::sleep(Duration::from_millis(rng.random_range(0..PAUSE_MS / 2)));
                    *landed.entry(point).or_default() += 1;
                    i
                }
                None => {
                    *landed.entry("late").or_default() += 1;
                    rng.random_range(0..2)
                }
            }
        };
        let fresh = child::spawn(&args, env);
        let log = std::mem::replace(&mut workers[victim], fresh).kill();
        assert!(
            !log.iter().any(|l| l.contains("panic")),
            "a worker panicked:\n{}",
            log.join("\n")
        );
    }
    for worker in workers {
        let (status, log) = worker.wait(Duration::from_secs(180));
        assert!(
            status.is_some_and(|s| s.success()),
            "a worker failed at the end:\n{}",
            log.join("\n")
        );
    }
    landed
}

#[test]
fn a_cluster_of_two_workers_survives_sigkill_at_any_moment() {
    let cluster = [
        ("TXPIPE__CLUSTER__ENABLED", "true"),
        ("TXPIPE__CLUSTER__LEASE_TTL_MS", "1000"),
        ("TXPIPE__CLUSTER__HEARTBEAT_MS", "200"),
    ];
    s3_postgres_survive_sigkill("cluster", &cluster, cluster_crash_loop, 13);
}
