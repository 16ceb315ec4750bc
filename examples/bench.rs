//! Throughput benchmark: the whole pipeline in catch-up mode on real and
//! generated data, on both backends, plus paced-mode latency.
//!
//! ```text
//! cargo run --profile perf --example bench                    # every workload
//! cargo run --profile perf --example bench -- banksim-embedded paced-embedded
//! cargo run --profile perf --example bench -- --repeat 3 banksim-s3pg
//! ```
//!
//! Workloads: `banksim-embedded`, `banksim-s3pg`, `gen10m-embedded`,
//! `gen10m-s3pg`, `paced-embedded`, `paced-s3pg`. The S3 ones talk to a
//! real S3-protocol server (s3s-fs, SigV4) this process starts on
//! 127.0.0.1; PostgreSQL is the machine's server (a fresh database per
//! run). Each run is a child process (this binary in its `__run` mode), so
//! its peak RSS and CPU time are the pipeline's own. Reported per run:
//! transactions/s and chunks/s end to end (first chunk written to last
//! commit durable), per-chunk latency p50/p99 (chunk listed to its commit
//! durable), peak RSS and CPU time. Data lives in `target/bench-data/`;
//! a run's files are emptied when it ends and removed when the benchmark
//! ends (see `Leftovers`).
//! Cluster workloads `cluster1-gen10m`, `cluster2-gen10m` and
//! `cluster4-gen10m` run the 10M workload on S3 + PostgreSQL with
//! `cluster.enabled` and 1, 2 or 4 worker processes started at once (all on
//! this machine's cores): reported are the cluster's throughput over its
//! window (the longest worker's end to end) and its wall time (start to
//! the last exit, start-up and final compaction included), each worker's
//! peak RSS and the CPU seconds of all processes together (whole
//! processes, the set-up step `txpipe load-lookup` included), also per
//! million rows.
//! With `--repeat N` the workloads run in N rounds, one run of each per
//! round, and each line reports the median run.
//! `BENCH_PERF=FILE` records a `perf` profile of the pipeline process.
//! `--http` turns the run's HTTP endpoints on and scrapes `/metrics` and
//! `/api/state` every second (the cost of being watched); without it they
//! are off. The figures come from the run's metrics either way.

// The tests' S3 server; the benchmark uses only part of it (not the fault
// injection the tests drive), so only this inclusion allows unused items.
#[allow(dead_code)]
#[path = "../tests/it/support/s3_server.rs"]
mod s3_server;

use std::path::{Path, PathBuf};
use std::process::Command;

use aws_sdk_s3::config::Credentials;
use bytes::Bytes;
use txpipe::app::report::JsonReport;
use txpipe::store::ObjectStore;

const WORKLOADS: [&str; 9] = [
    "banksim-embedded",
    "banksim-s3pg",
    "gen10m-embedded",
    "gen10m-s3pg",
    "paced-embedded",
    "paced-s3pg",
    "cluster1-gen10m",
    "cluster2-gen10m",
    "cluster4-gen10m",
];

/// Workers of a cluster workload (`clusterN-...`), if it is one.
fn cluster_workers(workload: &str) -> Option<usize> {
    workload
        .strip_prefix("cluster")?
        .split('-')
        .next()?
        .parse()
        .ok()
}

/// One run of a workload: each process's report (one, or a cluster's
/// workers'), and the wall time from their start to the last exit.
struct Outcome {
    reports: Vec<JsonReport>,
    wall_seconds: f64,
    /// A cluster's `load-lookup` step: its CPU seconds and peak RSS (MB).
    loader: Option<(f64, f64)>,
}

fn data_dir() -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/bench-data");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// The real BankSim files, decompressed once.
fn banksim() -> (PathBuf, PathBuf) {
    let shared = std::env::var_os("TXPIPE_SHARED_DATA")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/data"));
    let out = |name: &str, target: &str| {
        let path = data_dir().join(target);
        if !path.is_file() {
            let source = shared.join(name);
            let file = std::fs::File::open(&source)
                .unwrap_or_else(|e| panic!("{}: {e} (set TXPIPE_SHARED_DATA)", source.display()));
            std::fs::write(&path, zstd::decode_all(file).unwrap()).unwrap();
        }
        path
    };
    (
        out("banksim-transactions.csv.zst", "banksim-transactions.csv"),
        out("banksim-network.csv.zst", "banksim-network.csv"),
    )
}

const GENERATED_ROWS: u64 = 10_000_000;

/// 10,000,000 generated rows, 100,000 customers, 1,000 merchants.
fn generated() -> (PathBuf, PathBuf) {
    let dir = data_dir().join("gen-10m");
    if !dir.join("done").is_file() {
        eprintln!(
            "generating 10,000,000 rows into {} (once) ...",
            dir.display()
        );
        let options = txpipe::generate::GenerateOptions {
            rows: GENERATED_ROWS,
            customers: 100_000,
            merchants: 1_000,
            seed: 10,
        };
        txpipe::generate::generate(&options, &dir).unwrap();
        std::fs::write(dir.join("done"), b"").unwrap();
    }
    (
        dir.join(txpipe::generate::TRANSACTIONS_FILE),
        dir.join(txpipe::generate::IMPORTANCE_FILE),
    )
}

struct Database {
    name: String,
}

const SERVER: &str = "postgres://postgres@127.0.0.1:5432";

fn psql(sql: &str) {
    let out = Command::new("psql")
        .args([&format!("{SERVER}/postgres"), "-qAtc", sql])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "psql {sql}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

impl Database {
    fn create() -> Database {
        static RUNS: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let name = format!(
            "txpipe_bench_{}_{}",
            std::process::id(),
            RUNS.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        );
        psql(&format!("CREATE DATABASE {name}"));
        Database { name }
    }

    fn url(&self) -> String {
        format!("{SERVER}/{}", self.name)
    }
}

impl Drop for Database {
    fn drop(&mut self) {
        psql(&format!(
            "DROP DATABASE IF EXISTS {} WITH (FORCE)",
            self.name
        ));
    }
}

fn upload(server: &s3_server::S3TestServer, files: &[(&Path, &str)]) {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let mut settings = txpipe::config::Settings::load_with_env(None, []).unwrap();
        settings.storage.endpoint = server.endpoint();
        settings.storage.path_style = true;
        let credentials = Credentials::new(
            server.access_key(),
            server.secret_key(),
            None,
            None,
            "bench",
        );
        let client = txpipe::store::s3::client_with(&settings.storage, Some(credentials)).await;
        let store = txpipe::store::s3::S3Store::new(client, server.bucket(), "");
        for (path, key) in files {
            store
                .put(key, Bytes::from(std::fs::read(path).unwrap()))
                .await
                .unwrap();
        }
    });
}

/// What a run leaves behind in files: its bucket and SQLite database, or
/// the S3 test server's directory, removed when this is dropped.
///
/// They are kept until the whole benchmark ends. On an ext4 file system
/// without a journal (as on the machines these figures come from) every
/// file creation skips the inodes freed in the last minutes, reading each
/// one's inode to check, so deleting a run's thousand chunk files just
/// before the next run made that run's own file writes several times
/// dearer: a cost of the benchmark's clean-up, not of the pipeline. A
/// PostgreSQL database is dropped at once: kept, its dirty pages would be
/// written out during the next run. For the same reason the files are
/// emptied (not removed) as soon as their run ends ([`empty_files`]).
struct Leftovers {
    _scratch: tempfile::TempDir,
    _server: Option<s3_server::S3TestServer>,
}

/// Runs one workload in child processes (one, or a cluster's workers)
/// and returns their reports.
fn run(workload: &str, leftovers: &mut Vec<Leftovers>) -> Outcome {
    let scratch = tempfile::tempdir_in(data_dir()).unwrap();
    let workers = cluster_workers(workload);
    let (tx, net) = if workload.contains("gen10m") {
        generated()
    } else {
        banksim()
    };
    let paced = workload.starts_with("paced");
    let interval = if paced { 1000 } else { 0 };
    let mut env: Vec<(String, String)> = Vec::new();
    let mut _server = None;
    let mut _database = None;
    let config = if workload.ends_with("s3pg") || workers.is_some() {
        let server = s3_server::S3TestServer::start("txpipe-bench");
        upload(
            &server,
            &[
                (&tx, "input/transactions.csv"),
                (&net, "input/customer_importance.csv"),
            ],
        );
        let database = Database::create();
        env.extend(server.env());
        let config = format!(
            r#"
[source]
transactions = "s3://txpipe-bench/input/transactions.csv"
customer_importance = "s3://txpipe-bench/input/customer_importance.csv"
[chunker]
interval_ms = {interval}
[storage]
kind = "s3"
bucket = "txpipe-bench"
prefix = "run"
endpoint = "{endpoint}"
path_style = true
# The test server speaks plain HTTP, where "auto" would sign every upload's
# SHA-256; a deployment talks TLS to S3, where "auto" does not.
sign_payload = "never"
[database]
url = "{url}"
[cluster]
enabled = {cluster}
[log]
level = "warn"
"#,
            endpoint = server.endpoint(),
            url = database.url(),
            cluster = workers.is_some(),
        );
        _server = Some(server);
        _database = Some(database);
        config
    } else {
        format!(
            r#"
[source]
transactions = "{tx}"
customer_importance = "{net}"
[chunker]
interval_ms = {interval}
[storage]
root = "{bucket}"
[database]
url = "sqlite://{db}"
[log]
level = "warn"
"#,
            tx = tx.display(),
            net = net.display(),
            bucket = scratch.path().join("bucket").display(),
            db = scratch.path().join("state.sqlite").display(),
        )
    };
    let config_path = scratch.path().join("bench.toml");
    std::fs::write(&config_path, config).unwrap();
    let started = std::time::Instant::now();
    // A cluster is set up with `txpipe load-lookup` (docs/scaling.md): the
    // workers then read the lookup table from the database.
    let loader = workers.map(|_| {
        let report_path = scratch.path().join("load.json");
        let status = pipeline_command()
            .arg("__load")
            .arg(&config_path)
            .arg(&report_path)
            .envs(env.iter().cloned())
            .status()
            .unwrap();
        assert!(status.success(), "{workload}: load-lookup failed");
        serde_json::from_slice::<(f64, f64)>(&std::fs::read(&report_path).unwrap()).unwrap()
    });
    let children: Vec<(std::process::Child, PathBuf)> = (0..workers.unwrap_or(1))
        .map(|i| {
            let report_path = scratch.path().join(format!("report-{i}.json"));
            let child = pipeline_command()
                .arg("__run")
                .arg(&config_path)
                .arg(&report_path)
                .envs(env.iter().cloned())
                .spawn()
                .unwrap();
            (child, report_path)
        })
        .collect();
    let mut reports = Vec::new();
    for (mut child, report_path) in children {
        let status = child.wait().unwrap();
        assert!(status.success(), "{workload} failed");
        reports.push(serde_json::from_slice(&std::fs::read(&report_path).unwrap()).unwrap());
    }
    let wall_seconds = started.elapsed().as_secs_f64();
    drop(_database);
    empty_files(scratch.path());
    if let Some(server) = &_server {
        empty_files(server.root());
    }
    leftovers.push(Leftovers {
        _scratch: scratch,
        _server,
    });
    Outcome {
        reports,
        wall_seconds,
        loader,
    }
}

/// The pipeline process: this binary, under `perf record` with
/// `BENCH_PERF=FILE` (a profile of the pipeline process only).
fn pipeline_command() -> Command {
    match std::env::var_os("BENCH_PERF") {
        Some(output) => {
            let mut perf = Command::new("perf");
            perf.args(["record", "-g", "-o"])
                .arg(output)
                .arg("--")
                .arg(std::env::current_exe().unwrap());
            perf
        }
        None => Command::new(std::env::current_exe().unwrap()),
    }
}

/// Truncates every file under `dir` to nothing, keeping the files.
///
/// A 10M-row run leaves gigabytes of chunks and database in the page
/// cache, partly still to be written out. Kept as they were, they slowed
/// the runs after them round after round (10M runs at 3.0 M/s, then
/// 1.4 M/s four rounds later): the kernel wrote them out and, once memory
/// filled, reclaimed them, on the same two cores. Emptied files free
/// their pages and blocks but not their inodes, so no later file creation
/// pays for recently deleted inodes either (see [`Leftovers`]).
fn empty_files(dir: &Path) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let entry = entry.unwrap();
        let path = entry.path();
        if entry.file_type().unwrap().is_dir() {
            empty_files(&path);
        } else {
            std::fs::OpenOptions::new()
                .write(true)
                .open(&path)
                .unwrap()
                .set_len(0)
                .unwrap();
        }
    }
}

/// The child: one pipeline run to completion, figures written as JSON.
///
/// With `BENCH_HTTP=1` (`--http`) the run serves its HTTP endpoints and a
/// thread scrapes `/metrics` and `/api/state` once a second, as Prometheus
/// and an open live page would; otherwise the server is off.
fn child(config: &Path, report: &Path) {
    let mut settings = txpipe::config::Settings::load(Some(config)).unwrap();
    let http = std::env::var("BENCH_HTTP").is_ok_and(|v| v == "1");
    settings.http.listen = if http { "127.0.0.1:0" } else { "" }.to_string();
    txpipe::app::init_logging(&settings);
    let outcome = txpipe::app::run_observed(
        settings,
        txpipe::actors::supervisor::RunMode::UntilDone,
        Vec::new(),
        |handle| {
            if let Some(addr) = handle.http {
                std::thread::spawn(move || scrape_every_second(addr));
            }
        },
    )
    .unwrap();
    assert_eq!(outcome.exit_code, 0, "{:?}", outcome.error);
    std::fs::write(
        report,
        serde_json::to_vec_pretty(&JsonReport::new(&outcome)).unwrap(),
    )
    .unwrap();
}

/// What Prometheus and an open live page ask of a run, until it ends.
fn scrape_every_second(addr: std::net::SocketAddr) {
    loop {
        std::thread::sleep(std::time::Duration::from_secs(1));
        for path in ["metrics", "api/state"] {
            let Ok(mut response) = ureq::get(&format!("http://{addr}/{path}")).call() else {
                return;
            };
            let _ = response.body_mut().read_to_string();
        }
    }
}

/// The child that loads a cluster's lookup table (`txpipe load-lookup`);
/// writes its CPU seconds and peak RSS in MB.
fn load_child(config: &Path, report: &Path) {
    let settings = txpipe::config::Settings::load(Some(config)).unwrap();
    txpipe::app::init_logging(&settings);
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime
        .block_on(txpipe::app::lookup::load_once(&settings))
        .unwrap();
    let figures = (
        txpipe::metrics::cpu_seconds().unwrap_or(0.0),
        txpipe::metrics::peak_rss_bytes().unwrap_or(0) as f64 / 1e6,
    );
    std::fs::write(report, serde_json::to_vec(&figures).unwrap()).unwrap();
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("__run") {
        child(Path::new(&args[1]), Path::new(&args[2]));
        return;
    }
    if args.first().map(String::as_str) == Some("__load") {
        load_child(Path::new(&args[1]), Path::new(&args[2]));
        return;
    }
    let mut repeat = 1;
    let mut chosen = Vec::new();
    let mut iter = args.iter();
    while let Some(arg) = iter.next() {
        match arg.as_str() {
            // Children serve HTTP and are scraped (see `child`).
            "--http" => {
                // SAFETY: set before any thread is started.
                unsafe { std::env::set_var("BENCH_HTTP", "1") }
            }
            "--repeat" => {
                repeat = iter
                    .next()
                    .and_then(|n| n.parse().ok())
                    .expect("--repeat N")
            }
            name if WORKLOADS.contains(&name) => chosen.push(name.to_string()),
            other => panic!(
                "unknown argument {other}; workloads: {}",
                WORKLOADS.join(", ")
            ),
        }
    }
    if chosen.is_empty() {
        chosen = WORKLOADS.iter().map(|w| w.to_string()).collect();
    }
    println!(
        "| workload | rows | transactions/s | chunks/s | end to end | latency p50 | latency p99 | peak RSS | CPU (window / run) |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|");
    let mut leftovers = Vec::new();
    // Rounds of one run per workload rather than all runs of a workload
    // in a row: this machine's speed drifts over minutes, and a drift
    // should weigh on every workload alike, or ratios between workloads
    // (the 10M target) measure the drift.
    let mut runs: Vec<Vec<Outcome>> = chosen.iter().map(|_| Vec::new()).collect();
    for _ in 0..repeat {
        for (workload, reports) in chosen.iter().zip(&mut runs) {
            reports.push(run(workload, &mut leftovers));
        }
    }
    let mut clusters = Vec::new();
    for (workload, outcomes) in chosen.iter().zip(runs) {
        if cluster_workers(workload).is_some() {
            clusters.push((workload, outcomes));
            continue;
        }
        let mut reports: Vec<JsonReport> = outcomes
            .into_iter()
            .map(|mut o| o.reports.remove(0))
            .collect();
        if repeat > 1 {
            let rates: Vec<String> = reports
                .iter()
                .map(|r| format!("{:.0}", r.transactions_per_second))
                .collect();
            eprintln!("{workload}: transactions/s per run: {}", rates.join(", "));
        }
        // The median run by throughput.
        reports.sort_by(|a, b| {
            a.transactions_per_second
                .total_cmp(&b.transactions_per_second)
        });
        let r = &reports[reports.len() / 2];
        println!(
            "| {workload} | {} | {:.0} | {:.1} | {:.2} s | {:.1} ms | {:.1} ms | {:.0} MB | {:.2} s / {:.2} s |",
            r.rows,
            r.transactions_per_second,
            r.chunks_per_second,
            r.end_to_end_seconds,
            r.latency_p50_ms,
            r.latency_p99_ms,
            r.peak_rss_mb,
            r.window_cpu_seconds,
            r.cpu_seconds
        );
    }
    if !clusters.is_empty() {
        println!();
        println!(
            "| workload | workers | rows | transactions/s (window) | window | wall | peak RSS per worker | load-lookup CPU / peak RSS | CPU s (all processes) | CPU s per M rows |"
        );
        println!("|---|---:|---:|---:|---:|---:|---|---:|---:|---:|");
    }
    for (workload, mut outcomes) in clusters {
        // The median run by wall time.
        outcomes.sort_by(|a, b| a.wall_seconds.total_cmp(&b.wall_seconds));
        if repeat > 1 {
            let walls: Vec<String> = outcomes
                .iter()
                .map(|o| format!("{:.1}", o.wall_seconds))
                .collect();
            eprintln!("{workload}: wall seconds per run: {}", walls.join(", "));
        }
        let o = &outcomes[outcomes.len() / 2];
        // Every worker commits every chunk's record (and again after a
        // rebalance): the rows are the master file's.
        let rows = GENERATED_ROWS;
        let (load_cpu, load_rss) = o.loader.unwrap_or((0.0, 0.0));
        let cpu: f64 = o.reports.iter().map(|r| r.cpu_seconds).sum::<f64>() + load_cpu;
        let rss: Vec<String> = o
            .reports
            .iter()
            .map(|r| format!("{:.0} MB", r.peak_rss_mb))
            .collect();
        // The workers start together: the cluster's window is the
        // longest worker's (its Mechanism Y start, or the first chunk, to
        // its last commit).
        let window = o
            .reports
            .iter()
            .map(|r| r.end_to_end_seconds)
            .fold(0.0, f64::max);
        println!(
            "| {workload} | {} | {rows} | {:.0} | {:.2} s | {:.1} s | {} | {:.1} s / {:.0} MB | {:.1} | {:.2} |",
            o.reports.len(),
            rows as f64 / window,
            window,
            o.wall_seconds,
            rss.join(", "),
            load_cpu,
            load_rss,
            cpu,
            cpu / (rows as f64 / 1e6)
        );
    }
}
