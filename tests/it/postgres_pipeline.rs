//! The pipeline with the PostgreSQL state store (and a local bucket): the
//! same exactly-once results as the embedded run.

use crate::support;

use support::outputs::Outputs;
use support::pg::TestDb;
use txpipe::actors::supervisor::RunMode;
use txpipe::app;

#[test]
fn postgres_run_matches_the_oracle_and_the_embedded_run() {
    let Some(db) = TestDb::create() else { return };
    let (tx, net) = support::generated(150_000, 3_000, 30, 23);
    let dir = tempfile::tempdir().unwrap();
    let mut settings = support::embedded_settings(dir.path(), &tx, &net);
    settings.database.url = db.url.clone();
    settings.batch.size = 7;
    let report = app::run(settings, RunMode::UntilDone, Vec::new()).unwrap();
    assert_eq!(report.exit_code, 0, "{:?}", report.error);
    let outputs = Outputs::read_postgres(&db.url, dir.path().join("bucket"));
    outputs.check_finished(7);
    outputs.check_chunks_match_master(&tx, 10_000);
    assert_eq!(outputs.emissions(), support::reference(&tx, &net, 10_000));

    let embedded_dir = tempfile::tempdir().unwrap();
    let mut settings = support::embedded_settings(embedded_dir.path(), &tx, &net);
    settings.batch.size = 7;
    app::run(settings, RunMode::UntilDone, Vec::new()).unwrap();
    let embedded = Outputs::read(embedded_dir.path());
    assert_eq!(outputs.pairs, embedded.pairs);
    assert_eq!(outputs.chunks, embedded.chunks);
    assert_eq!(outputs.emissions(), embedded.emissions());
}
