//! The `txpipe` binary as users run it.

use crate::support;
use crate::support::txpipe;

use std::path::Path;
use std::process::Command;

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

/// `txpipe demo` works in var/demo/, apart from the embedded defaults'
/// var/: it says how to see its status, and `status --demo` reads its
/// database while plain `status` still reads var/.
#[test]
fn demo_then_status_of_the_demo() {
    let dir = tempfile::tempdir().unwrap();
    let out = txpipe(&["demo", "--rows", "30000"], dir.path(), &[]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let summary = text(&out.stdout);
    assert!(summary.contains("rows processed      30000"), "{summary}");
    assert!(
        summary.contains("status of this run: txpipe status --demo"),
        "{summary}"
    );
    assert!(dir.path().join("var/demo/txpipe.sqlite").is_file());

    let out = txpipe(&["status", "--demo"], dir.path(), &[]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let status = text(&out.stdout);
    assert!(
        status.contains("chunks processed    3 (0 rejected)"),
        "{status}"
    );
    assert!(status.contains("lag                 0 chunks"), "{status}");

    // Without --demo, status reads the embedded defaults' database, which
    // the demo never touched (and status creates nothing).
    let out = txpipe(&["status"], dir.path(), &[]);
    assert!(!out.status.success());
    assert!(!dir.path().join("var/txpipe.sqlite").exists());
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

/// A small generated dataset in `dir/var/data` (the embedded defaults'
/// paths).
fn small_dataset(dir: &Path) {
    let out = txpipe(
        &[
            "generate",
            "--rows",
            "6000",
            "--customers",
            "300",
            "--merchants",
            "10",
            "--seed",
            "5",
            "var/data",
        ],
        dir,
        &[],
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
}

const CATCH_UP: (&str, &str) = ("TXPIPE__CHUNKER__INTERVAL_MS", "0");

/// Every exit code of docs/operations.md's table that a run can give, from the
/// binary itself (3, the restart limit, is in tests/it/faults.rs and
/// tests/it/restart.rs; 6 and 7 in tests/it/ownership.rs).
#[test]
fn exit_codes_mean_what_the_readme_says() {
    let dir = tempfile::tempdir().unwrap();
    small_dataset(dir.path());
    // 2: usage.
    let out = txpipe(&["run", "--no-such-flag"], dir.path(), &[]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    // 0: done.
    let out = txpipe(&["run", "--exit-when-done"], dir.path(), &[CATCH_UP]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    // 4: the database belongs to another chunk size, master or lookup file.
    let out = txpipe(
        &["run", "--exit-when-done"],
        dir.path(),
        &[CATCH_UP, ("TXPIPE__CHUNKER__ROWS_PER_CHUNK", "500")],
    );
    assert_eq!(out.status.code(), Some(4), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("rows_per_chunk = 500"),
        "{}",
        text(&out.stderr)
    );
    std::fs::copy(
        dir.path().join("var/data/transactions.csv"),
        dir.path().join("other.csv"),
    )
    .unwrap();
    let out = txpipe(
        &["run", "--exit-when-done"],
        dir.path(),
        &[CATCH_UP, ("TXPIPE__SOURCE__TRANSACTIONS", "other.csv")],
    );
    assert_eq!(out.status.code(), Some(4), "{}", text(&out.stderr));
    let lookup = dir.path().join("var/data/customer_importance.csv");
    let mut changed = std::fs::read(&lookup).unwrap();
    changed.extend_from_slice(b"'C1','M1','1.00','es_food',0\n");
    std::fs::write(dir.path().join("net2.csv"), changed).unwrap();
    let out = txpipe(
        &["run", "--exit-when-done"],
        dir.path(),
        &[
            CATCH_UP,
            ("TXPIPE__SOURCE__CUSTOMER_IMPORTANCE", "net2.csv"),
        ],
    );
    assert_eq!(out.status.code(), Some(4), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("CustomerImportance"),
        "{}",
        text(&out.stderr)
    );
    // 5: a graceful stop that cannot drain in time (a chunk read held up
    // for longer than the shutdown bound).
    let fresh = tempfile::tempdir().unwrap();
    small_dataset(fresh.path());
    let mut running = support::child::spawn_in(
        fresh.path(),
        &["run", "--pause-at", "chunk-fetch", "--pause-ms", "4000"],
        &[
            (
                "TXPIPE__SUPERVISOR__SHUTDOWN_TIMEOUT_MS".into(),
                "500".into(),
            ),
            ("TXPIPE__DATABASE__SHUTDOWN_COMPACT_MS".into(), "100".into()),
            ("TXPIPE__CHUNKER__INTERVAL_MS".into(), "0".into()),
        ],
    );
    match running.wait_for(
        "pause point reached: chunk-fetch",
        1,
        std::time::Duration::from_secs(30),
    ) {
        support::child::Waited::Seen => running.signal("TERM"),
        _ => panic!("{}", running.log.join("\n")),
    }
    let (status, log) = running.wait(std::time::Duration::from_secs(30));
    assert_eq!(status.and_then(|s| s.code()), Some(5), "{}", log.join("\n"));
}

/// Inputs and URLs that cannot work are refused at start-up with a message
/// that says why, and `status` never creates anything.
#[test]
fn unusable_inputs_and_urls_are_refused_and_status_creates_nothing() {
    let dir = tempfile::tempdir().unwrap();
    small_dataset(dir.path());
    for url in [
        "sqlite://:memory:",
        "sqlite://",
        "sqlite://file::memory:?cache=shared",
    ] {
        let out = txpipe(
            &["run", "--exit-when-done"],
            dir.path(),
            &[CATCH_UP, ("TXPIPE__DATABASE__URL", url)],
        );
        assert_eq!(out.status.code(), Some(1), "{url}: {}", text(&out.stderr));
        assert!(
            text(&out.stderr).contains("database.url"),
            "{}",
            text(&out.stderr)
        );
    }
    let fifo = dir.path().join("master.fifo");
    assert!(
        Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .unwrap()
            .success()
    );
    let out = txpipe(
        &["run", "--exit-when-done"],
        dir.path(),
        &[
            CATCH_UP,
            ("TXPIPE__SOURCE__TRANSACTIONS", fifo.to_str().unwrap()),
        ],
    );
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("is not a regular file (a FIFO)"),
        "{}",
        text(&out.stderr)
    );
    let out = txpipe(
        &["run", "--exit-when-done"],
        dir.path(),
        &[
            CATCH_UP,
            ("TXPIPE__SOURCE__CUSTOMER_IMPORTANCE", "/dev/zero"),
        ],
    );
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("(a device)"),
        "{}",
        text(&out.stderr)
    );

    let out = txpipe(
        &["status"],
        dir.path(),
        &[("TXPIPE__DATABASE__URL", "sqlite://typo/state.sqlite")],
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("no database at"),
        "{}",
        text(&out.stderr)
    );
    assert!(
        !dir.path().join("typo").exists(),
        "status created a directory"
    );
}

/// SIGTERM or SIGHUP while the lookup table loads takes the graceful path:
/// exit 0, a log line, and the next run starts normally.
#[test]
fn a_signal_during_start_up_stops_gracefully() {
    for signal in ["TERM", "HUP"] {
        let dir = tempfile::tempdir().unwrap();
        small_dataset(dir.path());
        let mut running = support::child::spawn_in(
            dir.path(),
            &["run", "--pause-at", "lookup-load", "--pause-ms", "1500"],
            &[("RUST_LOG".into(), "info".into())],
        );
        match running.wait_for(
            "pause point reached: lookup-load",
            1,
            std::time::Duration::from_secs(30),
        ) {
            support::child::Waited::Seen => running.signal(signal),
            _ => panic!("{}", running.log.join("\n")),
        }
        let (status, log) = running.wait(std::time::Duration::from_secs(30));
        assert_eq!(
            status.and_then(|s| s.code()),
            Some(0),
            "{signal}: {}",
            log.join("\n")
        );
        assert!(
            log.iter()
                .any(|l| l.contains("received signal during start-up")),
            "{signal}: {}",
            log.join("\n")
        );
        let out = txpipe(&["run", "--exit-when-done"], dir.path(), &[CATCH_UP]);
        assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    }
}

/// The way past a chunk the database would refuse: `skip-chunk` records the
/// next chunk as rejected with the operator's reason, only the next one,
/// and the pipeline then goes on after it.
#[test]
fn skip_chunk_records_the_next_chunk_as_rejected() {
    let dir = tempfile::tempdir().unwrap();
    small_dataset(dir.path());
    let out = txpipe(
        &["run", "--exit-when-done"],
        dir.path(),
        &[CATCH_UP, ("TXPIPE__CHUNKER__ROWS_PER_CHUNK", "2000")],
    );
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let skip = |key: &str| {
        txpipe(
            &["skip-chunk", "--reason", "refused by the database", key],
            dir.path(),
            &[("TXPIPE__CHUNKER__ROWS_PER_CHUNK", "2000")],
        )
    };
    let out = skip("stream_chunks/chunk-0000000007-x.csv");
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("only sequence number 3 can be skipped"),
        "{}",
        text(&out.stderr)
    );
    let out = skip("stream_chunks/chunk-0000000003-x.csv");
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    let db = rusqlite::Connection::open(dir.path().join("var/txpipe.sqlite")).unwrap();
    let (status, reason): (String, String) = db
        .query_row(
            "SELECT status, reason FROM processed_chunks WHERE seq = 3",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap();
    assert_eq!(status, "rejected");
    assert_eq!(reason, "skipped by the operator: refused by the database");
}
