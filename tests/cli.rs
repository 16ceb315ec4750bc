//! The `txpipe` binary as users run it.

mod support;

use std::path::Path;
use std::process::{Command, Output};

fn txpipe(args: &[&str], dir: &Path, env: &[(&str, &str)]) -> Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_txpipe"));
    command.args(args).current_dir(dir).env("RUST_LOG", "warn");
    for (key, value) in env {
        command.env(key, value);
    }
    command.output().unwrap()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[test]
fn generate_run_and_status() {
    let dir = tempfile::tempdir().unwrap();
    let out = txpipe(
        &[
            "generate",
            "--rows",
            "25000",
            "--customers",
            "500",
            "--merchants",
            "20",
            "--seed",
            "3",
            "var/data",
        ],
        dir.path(),
        &[],
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let lines = std::fs::read_to_string(dir.path().join("var/data/transactions.csv")).unwrap();
    assert_eq!(lines.lines().count(), 25_001);

    // The embedded defaults point at var/data, var/bucket and var/txpipe.sqlite.
    let out = txpipe(
        &["run", "--exit-when-done"],
        dir.path(),
        &[("TXPIPE__CHUNKER__INTERVAL_MS", "0")],
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let summary = text(&out.stderr);
    assert!(summary.contains("rows processed      25000"), "{summary}");
    assert!(dir.path().join("var/bucket/stream_chunks").is_dir());
    assert!(dir.path().join("var/txpipe.sqlite").is_file());

    let out = txpipe(&["status"], dir.path(), &[]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let status = text(&out.stdout);
    assert!(
        status.contains("chunks produced     3 (master file fully chunked)"),
        "{status}"
    );
    assert!(
        status.contains("chunks processed    3 (0 rejected)"),
        "{status}"
    );
    assert!(status.contains("lag                 0 chunks"), "{status}");

    // A second run has nothing left to do and finishes at once.
    let out = txpipe(
        &["run", "--exit-when-done"],
        dir.path(),
        &[("TXPIPE__CHUNKER__INTERVAL_MS", "0")],
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(text(&out.stderr).contains("rows processed      0"));
}

#[test]
fn configuration_errors_name_the_key() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("bad.toml"),
        "[chunker]\nrows_per_chunks = 5\n",
    )
    .unwrap();
    let out = txpipe(&["run", "--config", "bad.toml"], dir.path(), &[]);
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("rows_per_chunks"),
        "{}",
        text(&out.stderr)
    );

    let out = txpipe(&["run"], dir.path(), &[("TXPIPE__BATCH__SIZE", "0")]);
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("batch.size"),
        "{}",
        text(&out.stderr)
    );

    let out = txpipe(&["run"], dir.path(), &[]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("var/data/transactions.csv"),
        "{}",
        text(&out.stderr)
    );
}
