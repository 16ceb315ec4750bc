//! Shared helpers for the integration tests: datasets, a pipeline runner,
//! readers of the outputs, and the brute-force oracle.

pub mod child;
pub mod configs;
pub mod engine;
pub mod http;
pub mod oracle;
pub mod outputs;
pub mod pg;
pub mod s3_server;
pub mod s3pg;
pub mod tcp_proxy;

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use txpipe::config::Settings;

/// Runs the test `name` (its full name, `module::function`) alone in a
/// child process of this test binary, for tests that measure the process
/// itself (its resident memory), which the other tests running in this
/// process beside it would disturb. Returns `true` in the parent, which
/// has then checked that the child passed, and `false` in the child, which
/// then runs the test's body.
pub fn run_isolated(name: &str) -> bool {
    const VAR: &str = "TXPIPE_IT_ISOLATED";
    if std::env::var(VAR).is_ok_and(|v| v == name) {
        return false;
    }
    let output = std::process::Command::new(std::env::current_exe().unwrap())
        .args([name, "--exact", "--nocapture", "--test-threads=1"])
        .env(VAR, name)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    eprintln!("{stderr}");
    assert!(
        output.status.success() && stdout.contains("1 passed"),
        "{name} in a process of its own:\n{stdout}\n{stderr}"
    );
    true
}

/// Whether this is a CI run, where missing services and data fail tests.
pub fn ci() -> bool {
    std::env::var("CI").is_ok_and(|v| !v.is_empty() && v != "false" && v != "0")
}

fn cache_dir() -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("datasets");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// The real BankSim files, decompressed once into the test cache. `None`
/// when `../shared/data` is absent (a failure under `CI=true`).
pub fn banksim() -> Option<(PathBuf, PathBuf)> {
    static PATHS: OnceLock<Option<(PathBuf, PathBuf)>> = OnceLock::new();
    PATHS
        .get_or_init(|| {
            // TXPIPE_SHARED_DATA, else `shared/data` beside the checkout or
            // beside any folder above it (CI may clone somewhere deeper).
            let shared = std::env::var_os("TXPIPE_SHARED_DATA")
                .map(PathBuf::from)
                .unwrap_or_else(|| {
                    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
                    manifest
                        .ancestors()
                        .skip(1)
                        .map(|dir| dir.join("shared/data"))
                        .find(|dir| dir.join("banksim-transactions.csv.zst").is_file())
                        .unwrap_or_else(|| manifest.join("../shared/data"))
                });
            let tx = shared.join("banksim-transactions.csv.zst");
            let net = shared.join("banksim-network.csv.zst");
            if !tx.is_file() || !net.is_file() {
                assert!(
                    !ci(),
                    "CI=true but the BankSim data is missing from {}",
                    shared.display()
                );
                eprintln!("BankSim data not found in {}; skipping", shared.display());
                return None;
            }
            let dir = cache_dir();
            let out = |src: &Path, name: &str| {
                let target = dir.join(name);
                if !target.is_file() {
                    let data = zstd::decode_all(std::fs::File::open(src).unwrap()).unwrap();
                    let temp = dir.join(format!("{name}.{}.tmp", std::process::id()));
                    std::fs::write(&temp, data).unwrap();
                    std::fs::rename(&temp, &target).unwrap();
                }
                target
            };
            Some((
                out(&tx, "banksim-transactions.csv"),
                out(&net, "banksim-network.csv"),
            ))
        })
        .clone()
}

/// A generated dataset, cached by its parameters.
pub fn generated(rows: u64, customers: u32, merchants: u32, seed: u64) -> (PathBuf, PathBuf) {
    static GENERATING: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _one_at_a_time = GENERATING.lock().unwrap_or_else(|e| e.into_inner());
    let dir = cache_dir().join(format!("gen-{rows}-{customers}-{merchants}-{seed}"));
    let done = dir.join("done");
    if !done.is_file() {
        let temp = cache_dir().join(format!("gen-tmp-{}-{rows}-{seed}", std::process::id()));
        let _ = std::fs::remove_dir_all(&temp);
        txpipe::generate::generate(
            &txpipe::generate::GenerateOptions {
                rows,
                customers,
                merchants,
                seed,
            },
            &temp,
        )
        .unwrap();
        std::fs::write(temp.join("done"), b"").unwrap();
        let _ = std::fs::remove_dir_all(&dir);
        if std::fs::rename(&temp, &dir).is_err() {
            // Another test process won the race; use its copy.
            let _ = std::fs::remove_dir_all(&temp);
        }
    }
    (
        dir.join(txpipe::generate::TRANSACTIONS_FILE),
        dir.join(txpipe::generate::IMPORTANCE_FILE),
    )
}

/// Runs the `txpipe` binary to its end in `dir` with `args`: warnings only
/// in its log, no HTTP endpoints, then `env` on top.
pub fn txpipe(args: &[&str], dir: &Path, env: &[(&str, &str)]) -> std::process::Output {
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_txpipe"));
    command
        .args(args)
        .current_dir(dir)
        .env("RUST_LOG", "warn")
        .env("TXPIPE__HTTP__LISTEN", "");
    for (key, value) in env {
        command.env(key, value);
    }
    command.output().unwrap()
}

/// Embedded settings for a run in `dir`, in catch-up mode.
pub fn embedded_settings(dir: &Path, transactions: &Path, importance: &Path) -> Settings {
    let mut settings = Settings::load_with_env(None, []).unwrap();
    settings.source.transactions = transactions.display().to_string();
    settings.source.customer_importance = importance.display().to_string();
    settings.storage.root = dir.join("bucket");
    settings.database.url = format!("sqlite://{}", dir.join("state.sqlite").display());
    settings.chunker.interval_ms = 0;
    settings.watcher.poll_interval_ms = 20;
    settings.supervisor.backoff_initial_ms = 20;
    settings.supervisor.backoff_max_ms = 200;
    // Tests run many pipelines at once: no HTTP endpoints unless asked.
    settings.http.listen = String::new();
    settings
}

/// Runs the reference over a dataset.
pub fn reference(
    transactions: &Path,
    importance: &Path,
    chunk_rows: usize,
) -> Vec<oracle::Emission> {
    let rows = oracle::read_transactions(&std::fs::read(transactions).unwrap());
    let weights = oracle::read_weights(&std::fs::read(importance).unwrap());
    let mut emissions = oracle::evaluate(
        &rows,
        &weights,
        chunk_rows,
        txpipe::detect::Thresholds::SPEC,
    );
    emissions.sort();
    emissions
}

/// The outputs of an uninterrupted embedded run, checked against the
/// oracle: what faulty runs are compared with.
pub fn uninterrupted_run(
    transactions: &Path,
    importance: &Path,
    rows_per_chunk: u64,
    batch: u64,
) -> (tempfile::TempDir, outputs::Outputs) {
    let dir = tempfile::tempdir().unwrap();
    let mut settings = embedded_settings(dir.path(), transactions, importance);
    settings.chunker.rows_per_chunk = rows_per_chunk;
    settings.batch.size = batch;
    let report = txpipe::app::run(
        settings,
        txpipe::actors::supervisor::RunMode::UntilDone,
        Vec::new(),
    )
    .unwrap();
    assert_eq!(report.exit_code, 0, "{:?}", report.error);
    let outputs = outputs::Outputs::read(dir.path());
    outputs.check_finished(batch as usize);
    assert_eq!(
        outputs.emissions(),
        reference(transactions, importance, rows_per_chunk as usize)
    );
    (dir, outputs)
}

/// Faulty runs must end with exactly the reference's outputs.
pub fn assert_same_outputs(
    outputs: &outputs::Outputs,
    reference: &outputs::Outputs,
    transactions: &Path,
    rows_per_chunk: u64,
    batch: u64,
) {
    outputs.check_finished(batch as usize);
    outputs.check_chunks_match_master(transactions, rows_per_chunk as usize);
    assert_eq!(
        outputs.emissions(),
        reference.emissions(),
        "detections differ"
    );
    assert_eq!(outputs.pairs, reference.pairs, "cumulative state differs");
    assert_eq!(outputs.chunks, reference.chunks, "processed chunks differ");
}
