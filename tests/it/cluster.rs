//! Key-group sharded workers on S3 and PostgreSQL, as real processes:
//! three workers paced through a run while one is SIGKILLed, a fourth
//! joins and one stops gracefully, then the cluster restarted with one and
//! then two workers; a worker frozen (SIGSTOP) past its leases while its key
//! groups move; a worker cut off from PostgreSQL; a worker started with
//! settings the cluster was not created with. Every run ends with the
//! outputs of one uninterrupted single process: the same detections (and
//! the chunk each was found in), the same `processed_chunks`, chunk objects
//! and detection files.

use crate::support;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use support::child::{self, Running, Waited, expect_line, finish, said};
use support::http;
use support::outputs::Outputs;
use support::s3pg::S3Postgres;

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

/// A cluster's bucket (the S3 test server) and database.
struct Cluster {
    place: S3Postgres,
}

impl Cluster {
    fn start(interval_ms: u64) -> Option<Cluster> {
        let (tx, net) = dataset();
        let mut place = S3Postgres::start(&tx, &net, "cluster")?;
        for (key, value) in [
            ("RUST_LOG", "info".to_string()),
            (
                "TXPIPE__CHUNKER__ROWS_PER_CHUNK",
                ROWS_PER_CHUNK.to_string(),
            ),
            ("TXPIPE__BATCH__SIZE", BATCH.to_string()),
            ("TXPIPE__CHUNKER__INTERVAL_MS", interval_ms.to_string()),
            ("TXPIPE__CLUSTER__ENABLED", "true".to_string()),
            ("TXPIPE__CLUSTER__LEASE_TTL_MS", TTL_MS.to_string()),
            ("TXPIPE__CLUSTER__HEARTBEAT_MS", HEARTBEAT_MS.to_string()),
            ("TXPIPE__WATCHER__SWEEP_INTERVAL_MS", "300".to_string()),
        ] {
            place.env.push((key.to_string(), value));
        }
        Some(Cluster { place })
    }

    fn worker(&self, until_done: bool, extra_env: &[(&str, &str)]) -> Running {
        self.worker_with(until_done, extra_env, &[])
    }

    /// A worker with more arguments to `txpipe run`.
    fn worker_with(&self, until_done: bool, extra_env: &[(&str, &str)], more: &[&str]) -> Running {
        let mut args = vec!["run", "--config", self.place.config.to_str().unwrap()];
        if until_done {
            args.push("--exit-when-done");
        }
        args.extend(more);
        let mut env = self.place.env.clone();
        env.extend(
            extra_env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string())),
        );
        child::spawn(&args, &env)
    }

    fn processed(&self) -> i64 {
        self.place.db.query("SELECT count(*) FROM processed_chunks")[0].get(0)
    }

    fn status(&self, json: bool) -> String {
        let mut args = vec!["status", "--config", self.place.config.to_str().unwrap()];
        if json {
            args.push("--json");
        }
        let output = std::process::Command::new(env!("CARGO_BIN_EXE_txpipe"))
            .args(&args)
            .envs(self.place.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .output()
            .unwrap();
        assert!(output.status.success(), "{output:?}");
        String::from_utf8(output.stdout).unwrap()
    }

    /// The outputs must be those of one uninterrupted single process,
    /// detection files line for line.
    fn assert_exact(&self) {
        let outputs = Outputs::read_postgres(&self.place.db.url, self.place.bucket());
        let reference = reference();
        support::assert_same_outputs(&outputs, &reference, &dataset().0, ROWS_PER_CHUNK, BATCH);
        let lines = |o: &Outputs| -> Vec<Vec<(String, String, String)>> {
            o.files
                .iter()
                .map(|(_, lines)| {
                    lines
                        .iter()
                        .map(|l| (l.pattern.clone(), l.customer.clone(), l.merchant.clone()))
                        .collect()
                })
                .collect()
        };
        assert_eq!(lines(&outputs), lines(&reference), "detection files differ");
    }
}

fn stop(running: Running) -> Vec<String> {
    running.signal("TERM");
    finish(running)
}

/// Waits until the live workers hold `shares` key groups (in any order),
/// reading their logs meanwhile: what they logged before is read then.
fn settle(cluster: &Cluster, shares: &[usize], workers: &mut [&mut Running]) {
    let mut want = shares.to_vec();
    want.sort_unstable();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let status: serde_json::Value = serde_json::from_str(&cluster.status(true)).unwrap();
        let mut got: Vec<usize> = status["cluster"]["workers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|w| w["key_groups"].as_array().unwrap().len())
            .collect();
        got.sort_unstable();
        for worker in workers.iter_mut() {
            worker.run_for(Duration::from_millis(25));
        }
        if got == want {
            return;
        }
        assert!(Instant::now() < deadline, "no shares {want:?}: {got:?}");
    }
}

/// A gauge's value on the `/metrics` of a worker listening on `listen`.
fn gauge(listen: &str, name: &str) -> Option<f64> {
    let (_, body) = http::get(listen.parse().unwrap(), "/metrics").ok()?;
    http::value(&http::parse(&body), name, &[])
}

/// Waits until `processed_chunks` grows past `from`, reading the
/// workers' logs meanwhile (shown if it does not).
fn wait_for_progress(
    cluster: &Cluster,
    from: i64,
    timeout: Duration,
    workers: &mut [&mut Running],
) {
    let deadline = Instant::now() + timeout;
    while cluster.processed() <= from {
        if Instant::now() >= deadline {
            let logs: Vec<String> = workers.iter().map(|w| w.log.join("\n")).collect();
            panic!(
                "no progress past {from} chunks:\n{}",
                logs.join("\n-----\n")
            );
        }
        for worker in workers.iter_mut() {
            worker.run_for(Duration::from_millis(10));
        }
    }
}

#[test]
fn workers_killed_joining_stopping_and_restarted_give_the_outputs_of_one_process() {
    let Some(cluster) = Cluster::start(200) else {
        return;
    };
    let mut workers: Vec<Running> = (0..3).map(|_| cluster.worker(true, &[])).collect();
    for worker in &mut workers {
        expect_line(worker, "key groups taken", Duration::from_secs(30));
    }
    wait_for_progress(
        &cluster,
        3,
        Duration::from_secs(30),
        &mut workers.iter_mut().collect::<Vec<_>>(),
    );
    // Three workers share 128 key groups; status shows them.
    let text = cluster.status(false);
    assert!(
        text.contains("cluster             3 workers, 128 key groups"),
        "{text}"
    );
    // SIGKILL one: its key groups move once its leases expire.
    let killed = workers.remove(0);
    let killed_pid = killed.pid();
    let log = killed.kill();
    assert!(said(&log, "joined the cluster"), "{}", log.join("\n"));
    // A fourth joins.
    let mut fourth = cluster.worker(true, &[]);
    expect_line(&mut fourth, "key groups taken", Duration::from_secs(30));
    let at = cluster.processed();
    let mut all: Vec<&mut Running> = workers.iter_mut().collect();
    all.push(&mut fourth);
    wait_for_progress(&cluster, at, Duration::from_secs(30), &mut all);
    // One stops gracefully: it releases its key groups at once.
    let stopped = workers.remove(0);
    let log = stop(stopped);
    assert!(said(&log, "key groups released"), "{}", log.join("\n"));
    // Within about two lease periods every live worker owns a fair share
    // and nobody owns the dead worker's groups.
    let deadline = Instant::now() + Duration::from_millis(4 * TTL_MS + 2_000);
    loop {
        let status: serde_json::Value = serde_json::from_str(&cluster.status(true)).unwrap();
        let workers = status["cluster"]["workers"].as_array().unwrap().clone();
        let shares: Vec<usize> = workers
            .iter()
            .map(|w| w["key_groups"].as_array().unwrap().len())
            .collect();
        let pids: Vec<u64> = workers.iter().map(|w| w["pid"].as_u64().unwrap()).collect();
        if shares == [64, 64] && !pids.contains(&u64::from(killed_pid)) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no fair share: {shares:?} {pids:?}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    // The cluster stops (mid-run), then goes on with one worker, stops
    // again, and finishes with two.
    stop(workers.remove(0));
    stop(fourth);
    let before = cluster.processed();
    assert!(before < 40, "the run ended too early to test restarts");
    let mut one = cluster.worker(true, &[]);
    expect_line(&mut one, "key groups taken", Duration::from_secs(30));
    wait_for_progress(&cluster, before, Duration::from_secs(30), &mut [&mut one]);
    stop(one);
    let pair = [cluster.worker(true, &[]), cluster.worker(true, &[])];
    let logs: Vec<Vec<String>> = pair.into_iter().map(finish).collect();
    assert!(
        logs.iter().any(|l| said(l, "chunker lease taken")),
        "one of them ran the chunker"
    );
    cluster.assert_exact();
}

/// A worker frozen past its leases while its key groups move to another
/// commits nothing for them when it thaws: it says it lost them and takes
/// its share again. A frozen worker that holds an open transaction holds
/// the others back until the server ends it; such a try is undone and
/// repeated. Paced slowly enough (12 s of chunks) that the thawed worker
/// rejoins before the end.
#[test]
fn a_frozen_worker_commits_nothing_for_the_key_groups_it_lost_and_rejoins() {
    let Some(cluster) = Cluster::start(300) else {
        return;
    };
    let mut leader = cluster.worker(true, &[]);
    expect_line(&mut leader, "chunker lease taken", Duration::from_secs(30));
    let mut frozen = cluster.worker(true, &[]);
    expect_line(&mut frozen, "key groups taken", Duration::from_secs(30));
    settle(&cluster, &[64, 64], &mut [&mut leader, &mut frozen]);
    wait_for_progress(&cluster, 2, Duration::from_secs(30), &mut [&mut leader]);
    let mut tries = 0;
    loop {
        tries += 1;
        frozen.signal("STOP");
        let bound = Duration::from_millis(TTL_MS + 4 * HEARTBEAT_MS + 2_000);
        match leader.wait_for("held=128", 1, bound) {
            Waited::Seen => break,
            Waited::Exited(status) => panic!("{status}: {}", leader.log.join("\n")),
            Waited::TimedOut if tries < 5 => {
                frozen.signal("CONT");
                std::thread::sleep(Duration::from_millis(500));
            }
            Waited::TimedOut => panic!("no takeover in {tries} tries"),
        }
    }
    // The leader goes on with every key group while the other is frozen.
    let at = cluster.processed();
    wait_for_progress(&cluster, at, Duration::from_secs(60), &mut [&mut leader]);
    frozen.signal("CONT");
    expect_line(&mut frozen, "lost key groups", Duration::from_secs(30));
    let log = finish(frozen);
    assert!(
        log.iter()
            .filter(|l| l.contains("key groups taken"))
            .count()
            >= 2,
        "it rejoined:\n{}",
        log.join("\n")
    );
    finish(leader);
    cluster.assert_exact();
}

/// A worker whose PostgreSQL connection stops forwarding (a TCP proxy
/// that closes every connection and refuses new ones) loses its key
/// groups to the other worker; when the network comes back it commits
/// nothing for them and takes its share again.
#[test]
fn a_worker_cut_off_from_postgres_loses_its_key_groups_and_outputs_stay_exact() {
    let Some(cluster) = Cluster::start(150) else {
        return;
    };
    let mut leader = cluster.worker(true, &[]);
    expect_line(&mut leader, "chunker lease taken", Duration::from_secs(30));
    let proxy = support::tcp_proxy::TcpProxy::start("127.0.0.1:5432");
    let url = cluster
        .place
        .db
        .url
        .replace("127.0.0.1:5432", &format!("127.0.0.1:{}", proxy.port()));
    assert_ne!(
        url, cluster.place.db.url,
        "the test database is on 127.0.0.1:5432"
    );
    let mut cut = cluster.worker(true, &[("TXPIPE__DATABASE__URL", &url)]);
    expect_line(&mut cut, "key groups taken", Duration::from_secs(30));
    settle(&cluster, &[64, 64], &mut [&mut leader, &mut cut]);
    wait_for_progress(
        &cluster,
        2,
        Duration::from_secs(30),
        &mut [&mut leader, &mut cut],
    );
    proxy.refuse();
    expect_line(&mut leader, "held=128", Duration::from_secs(30));
    let at = cluster.processed();
    wait_for_progress(
        &cluster,
        at,
        Duration::from_secs(30),
        &mut [&mut leader, &mut cut],
    );
    proxy.accept();
    expect_line(&mut cut, "lost key groups", Duration::from_secs(60));
    finish(cut);
    finish(leader);
    cluster.assert_exact();
}

#[test]
fn a_worker_with_other_key_groups_master_or_lookup_is_refused_naming_the_setting() {
    let Some(cluster) = Cluster::start(0) else {
        return;
    };
    let first = cluster.worker(true, &[]);
    finish(first);
    // The same bytes under other names: the cluster was created with the
    // others, which is what counts.
    let (tx, net) = dataset();
    let dir = tempfile::tempdir().unwrap();
    let (other_tx, other_net) = (
        dir.path().join("elsewhere.csv"),
        dir.path().join("other_importance.csv"),
    );
    std::fs::copy(&tx, &other_tx).unwrap();
    std::fs::copy(&net, &other_net).unwrap();
    for (key, value, named) in [
        (
            "TXPIPE__CLUSTER__KEY_GROUPS",
            "64".to_string(),
            "cluster.key_groups",
        ),
        (
            "TXPIPE__SOURCE__TRANSACTIONS",
            other_tx.display().to_string(),
            "source.transactions",
        ),
        (
            "TXPIPE__SOURCE__CUSTOMER_IMPORTANCE",
            other_net.display().to_string(),
            "source.customer_importance",
        ),
    ] {
        let refused = cluster.worker(true, &[(key, &value)]);
        let (status, log) = refused.wait(Duration::from_secs(60));
        assert_eq!(
            status.and_then(|s| s.code()),
            Some(4),
            "{key}:\n{}",
            log.join("\n")
        );
        assert!(said(&log, named), "{key} not named:\n{}", log.join("\n"));
    }
    // A single process on the cluster's database is refused too.
    let alone = cluster.worker(true, &[("TXPIPE__CLUSTER__ENABLED", "false")]);
    let (status, log) = alone.wait(Duration::from_secs(60));
    assert_eq!(status.and_then(|s| s.code()), Some(4), "{}", log.join("\n"));
    assert!(said(&log, "belongs to a cluster"), "{}", log.join("\n"));
}

#[test]
fn a_cluster_does_not_take_over_a_single_process_database() {
    let Some(cluster) = Cluster::start(0) else {
        return;
    };
    let alone = cluster.worker(true, &[("TXPIPE__CLUSTER__ENABLED", "false")]);
    finish(alone);
    let worker = cluster.worker(true, &[]);
    let (status, log) = worker.wait(Duration::from_secs(60));
    assert_eq!(status.and_then(|s| s.code()), Some(4), "{}", log.join("\n"));
    assert!(
        said(&log, "state of a single process"),
        "{}",
        log.join("\n")
    );
}

/// `txpipe load-lookup` stores the lookup table once, before any worker
/// starts: the workers then read it from the database and none parses the
/// file; a second load finds it there.
#[test]
fn the_lookup_table_is_loaded_once_before_the_workers() {
    let Some(cluster) = Cluster::start(0) else {
        return;
    };
    let config = cluster.place.config.to_str().unwrap().to_string();
    let load = || {
        let output = std::process::Command::new(env!("CARGO_BIN_EXE_txpipe"))
            .args(["load-lookup", "--config", &config])
            .envs(
                cluster
                    .place
                    .env
                    .iter()
                    .map(|(k, v)| (k.as_str(), v.as_str())),
            )
            .output()
            .unwrap();
        assert!(output.status.success(), "{output:?}");
        String::from_utf8(output.stdout).unwrap()
    };
    assert!(load().starts_with("lookup table loaded:"));
    assert!(load().starts_with("lookup table already loaded:"));
    let workers = [cluster.worker(true, &[]), cluster.worker(true, &[])];
    for log in workers.into_iter().map(finish) {
        assert!(said(&log, "lookup table ready"), "{}", log.join("\n"));
        assert!(
            !said(&log, "lookup table loaded"),
            "a worker parsed the file:\n{}",
            log.join("\n")
        );
    }
    cluster.assert_exact();
}

/// A worker that hands key groups to a joining one does it in place: it
/// holds still until its chunks in flight are committed, drops the groups'
/// state and goes on with the rest, without loading or replaying anything
/// after it. The outputs stay exact.
#[test]
fn a_worker_hands_key_groups_over_in_place_without_reloading_the_rest() {
    let Some(cluster) = Cluster::start(200) else {
        return;
    };
    let mut first = cluster.worker(true, &[]);
    expect_line(&mut first, "key groups taken", Duration::from_secs(30));
    wait_for_progress(&cluster, 3, Duration::from_secs(30), &mut [&mut first]);
    let mut second = cluster.worker(true, &[]);
    expect_line(&mut second, "key groups taken", Duration::from_secs(30));
    expect_line(
        &mut first,
        "handed over to other workers in place",
        Duration::from_secs(30),
    );
    settle(&cluster, &[64, 64], &mut [&mut first, &mut second]);
    let at = cluster.processed();
    assert!(at < 40, "the run ended too early to test a hand-over");
    let log = finish(first);
    let second_log = finish(second);
    let handed = log
        .iter()
        .position(|l| l.contains("handed over to other workers in place"))
        .unwrap();
    // Memory follows ownership, the lookup table's too: the weights the
    // first worker keeps and those the second loaded are the whole table,
    // split.
    let pairs = |log: &[String], needle: &str| -> Vec<u64> {
        log.iter()
            .filter(|l| l.contains(needle))
            .filter_map(|l| {
                l.split("lookup_pairs=")
                    .nth(1)?
                    .split(' ')
                    .next()?
                    .parse()
                    .ok()
            })
            .collect()
    };
    let started = "Mechanism Y started from committed state";
    let whole = pairs(&log, started).into_iter().max().unwrap();
    let kept = *pairs(&log, "handed over to other workers in place")
        .last()
        .unwrap();
    let taken = *pairs(&second_log, started).last().unwrap();
    assert!(0 < kept && kept < whole, "kept {kept} of {whole}");
    assert_eq!(kept + taken, whole, "the two shares' weights");
    assert!(
        !log[handed..]
            .iter()
            .any(|l| l.contains("loads the committed state of its key groups")),
        "the worker reloaded after handing groups over:\n{}",
        log.join("\n")
    );
    cluster.assert_exact();
}

/// A worker that gains key groups (a worker died, then another stopped)
/// loads only theirs and goes on: no load of its whole share. Groups taken
/// far behind (more than `watcher.max_in_flight` chunks, here 2) catch up
/// on a lane of their own and then join the running generation; groups
/// close behind resume from their own positions in it while the groups
/// held skip the chunks they have. Outputs stay exact.
#[test]
fn a_worker_takes_key_groups_over_in_place_loading_only_theirs() {
    let Some(cluster) = Cluster::start(300) else {
        return;
    };
    let env = [("TXPIPE__WATCHER__MAX_IN_FLIGHT", "2")];
    let listen = format!("127.0.0.1:{}", http::free_port());
    let first_env = [env[0], ("TXPIPE__HTTP__LISTEN", listen.as_str())];
    let mut first = cluster.worker(true, &first_env);
    expect_line(&mut first, "chunker lease taken", Duration::from_secs(30));
    let mut second = cluster.worker(true, &env);
    let mut third = cluster.worker(true, &env);
    expect_line(&mut second, "key groups taken", Duration::from_secs(30));
    expect_line(&mut third, "key groups taken", Duration::from_secs(30));
    let mut all = [&mut first, &mut second, &mut third];
    settle(&cluster, &[42, 43, 43], &mut all);
    let at = cluster.processed();
    wait_for_progress(&cluster, at, Duration::from_secs(30), &mut all);
    // Killed: the others take its groups once its leases expire, several
    // chunks behind where they are.
    third.kill();
    settle(&cluster, &[64, 64], &mut [&mut first, &mut second]);
    // Stopped: it lets its groups go at once.
    let second_log = stop(second);
    settle(&cluster, &[128], &mut [&mut first]);
    let at = cluster.processed();
    assert!(at < 40, "the run ended too early to test take-overs");
    // Its metrics say so once its heartbeat took them (the catch-up lane,
    // if any, is merged within a few heartbeats).
    let deadline = Instant::now() + Duration::from_secs(10);
    while gauge(&listen, "txpipe_key_groups_held") != Some(128.0)
        || gauge(&listen, "txpipe_key_groups_catching_up") != Some(0.0)
    {
        assert!(Instant::now() < deadline, "key group gauges never settled");
        first.run_for(Duration::from_millis(100));
    }
    let log = finish(first);
    let both = || log.iter().chain(&second_log);
    let lanes = both()
        .filter(|l| l.contains("a catch-up lane brings them up"))
        .count();
    let merged = both()
        .filter(|l| l.contains("the catch-up lane caught up"))
        .count();
    assert!(lanes > 0, "no catch-up lane:\n{}", log.join("\n"));
    assert!(merged > 0, "no lane merged:\n{}", log.join("\n"));
    // Merged when close: the groups held then wait for a few chunks only
    // (the lane started 6 or 7 behind). Some slack for the chunks written
    // while the lane holds still and is retired. A merge that the worker's
    // stop interrupted resumes nothing.
    let mut resumed_merges = 0;
    for log in [&log, &second_log] {
        let merges = log
            .iter()
            .enumerate()
            .filter(|(_, l)| l.contains("lane caught up"));
        for (i, _) in merges {
            let after = &log[i..];
            let Some(resumed) = after.iter().find(|l| l.contains("resume from their own")) else {
                let stopped = after.iter().any(|l| l.contains("shutting down"));
                assert!(stopped, "a merge that never resumed:\n{}", log.join("\n"));
                continue;
            };
            let behind = resumed.split("chunks_behind=").nth(1).unwrap().trim();
            let behind: i64 = behind.parse().unwrap();
            assert!(behind <= 4, "merged {behind} chunks behind: {resumed}");
            resumed_merges += 1;
        }
    }
    assert!(resumed_merges > 0, "no lane merged:\n{}", log.join("\n"));
    let in_place = "takes key groups over in place";
    let took = log.iter().position(|l| l.contains(in_place));
    let took = took.unwrap_or_else(|| panic!("no take-over in place:\n{}", log.join("\n")));
    assert!(
        !log[took..]
            .iter()
            .any(|l| l.contains("loads the committed state of its key groups")),
        "the worker loaded its whole share after taking groups over:\n{}",
        log.join("\n")
    );
    cluster.assert_exact();
}

/// A catch-up lane that fails (its tracker crashes on its first commit) is
/// given up: the worker loads its whole share in a new generation, and the
/// outputs stay exact.
#[test]
fn a_failed_catch_up_lane_gives_way_to_a_full_load() {
    let Some(cluster) = Cluster::start(300) else {
        return;
    };
    let env = [("TXPIPE__WATCHER__MAX_IN_FLIGHT", "1")];
    let fault = ["--inject-fault", "catch-up/tracker:1:panic"];
    let mut first = cluster.worker_with(true, &env, &fault);
    expect_line(&mut first, "chunker lease taken", Duration::from_secs(30));
    let mut second = cluster.worker(true, &env);
    expect_line(&mut second, "key groups taken", Duration::from_secs(30));
    settle(&cluster, &[64, 64], &mut [&mut first, &mut second]);
    let at = cluster.processed();
    wait_for_progress(
        &cluster,
        at,
        Duration::from_secs(30),
        &mut [&mut first, &mut second],
    );
    second.kill();
    expect_line(
        &mut first,
        "a catch-up lane brings them up",
        Duration::from_secs(30),
    );
    expect_line(
        &mut first,
        "the catch-up lane failed",
        Duration::from_secs(30),
    );
    expect_line(
        &mut first,
        "loads the committed state of its key groups",
        Duration::from_secs(30),
    );
    finish(first);
    cluster.assert_exact();
}
