//! The production backends end to end: the `txpipe` binary with the real
//! BankSim files read from S3, chunks and detection files in S3 (a real
//! S3-protocol server on 127.0.0.1) and state in PostgreSQL, against the
//! embedded run.

use crate::support;

use std::process::Command;

use support::outputs::Outputs;
use support::pg::TestDb;
use support::s3_server::S3TestServer;
use txpipe::actors::supervisor::RunMode;

fn txpipe(args: &[&str], server: &S3TestServer) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_txpipe"))
        .args(args)
        .envs(server.env())
        .env("RUST_LOG", "warn")
        .env("TXPIPE__HTTP__LISTEN", "")
        .output()
        .unwrap()
}

#[test]
fn banksim_through_s3_and_postgres_matches_the_embedded_run() {
    let Some((tx, net)) = support::banksim() else {
        return;
    };
    let Some(db) = TestDb::create() else { return };
    let server = S3TestServer::start("txpipe-data");
    support::configs::upload_inputs(&server, &tx, &net);
    let dir = tempfile::tempdir().unwrap();
    let config = support::configs::s3_postgres(dir.path(), &server, &db.url, "prod", "");
    let config = config.to_str().unwrap();

    let out = txpipe(&["migrate", "--config", config], &server);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let applied: i64 = db.query("SELECT count(*) FROM refinery_schema_history")[0].get(0);
    let files = std::fs::read_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/migrations/postgres"))
        .unwrap()
        .count() as i64;
    assert_eq!(applied, files, "every migration applied");
    let key_collations: Vec<String> = db
        .query(
            "SELECT coalesce(collation_name::text, 'default') FROM information_schema.columns \
             WHERE table_name IN ('pair_state', 'customer_importance') \
               AND column_name IN ('merchant', 'customer')",
        )
        .iter()
        .map(|row| row.get(0))
        .collect();
    assert_eq!(
        key_collations,
        vec!["C"; 4],
        "name keys compare as bytes (migration V4)"
    );

    let out = txpipe(&["run", "--config", config, "--exit-when-done"], &server);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let outputs = Outputs::read_postgres(&db.url, server.root().join("txpipe-data/prod"));
    outputs.check_finished(50);
    outputs.check_chunks_match_master(&tx, 10_000);

    let embedded_dir = tempfile::tempdir().unwrap();
    let settings = support::embedded_settings(embedded_dir.path(), &tx, &net);
    let report = txpipe::app::run(settings, RunMode::UntilDone, Vec::new()).unwrap();
    assert_eq!(report.exit_code, 0);
    let embedded = Outputs::read(embedded_dir.path());
    assert_eq!(
        outputs.emissions(),
        embedded.emissions(),
        "same detections, same chunks"
    );
    assert_eq!(outputs.pairs, embedded.pairs, "same cumulative state");
    assert_eq!(outputs.chunks, embedded.chunks);

    let status = txpipe(&["status", "--config", config], &server);
    let text = String::from_utf8_lossy(&status.stdout);
    assert!(
        text.contains("chunks processed    60 (0 rejected)"),
        "{text}"
    );
    assert!(text.contains("lag                 0 chunks"), "{text}");
    assert!(text.contains("detections PatId1 UPGRADE    70"), "{text}");
}
