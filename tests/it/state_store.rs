//! The state-store contract, run against both backends: SQLite (embedded)
//! and PostgreSQL (the machine's server, a fresh database per test).

use crate::support;

use std::sync::Arc;

use txpipe::db::lease::PIPELINE_LEASE;
use txpipe::db::postgres::PostgresStore;
use txpipe::db::sqlite::SqliteStore;
use txpipe::db::{
    ChunkRecord, ChunkStatus, ChunkerPosition, Claimant, CommitBatch, CommitOutcome, DbError,
    DeltaBlob, DetectionRecord, Fence, IgnoredObject, LeaseGrant, LookupSource, Renewal,
    StateStore, WeightRow,
};
use txpipe::detect::{Cents, Evidence, Gender, Pattern};

fn chunk(name: &str, seq: u64) -> ChunkRecord {
    ChunkRecord {
        name: name.to_string(),
        seq: Some(seq),
        status: ChunkStatus::Processed,
        rows: 10,
        bad_rows: 1,
        detections: 0,
        reason: None,
    }
}

/// An encoded chunk delta of `(merchant, customer, count, amount, gender)`.
fn delta(rows: &[(&str, &str, u32, i64, Gender)]) -> Vec<u8> {
    let names = txpipe::names::Names::new();
    let delta = txpipe::detect::ChunkDelta {
        pairs: rows
            .iter()
            .map(
                |&(m, c, count, amount, first_gender)| txpipe::detect::PairDelta {
                    merchant: names.merchant(m),
                    customer: names.customer(c),
                    count,
                    amount: Cents(amount),
                    first_gender,
                },
            )
            .collect(),
    };
    txpipe::db::delta::encode(&delta, &names)
}

fn detection<'a>(
    pattern: Pattern,
    customer: &'a str,
    merchant: &'a str,
    chunk: &'a str,
) -> DetectionRecord<'a> {
    DetectionRecord {
        pattern,
        merchant,
        customer,
        evidence: Evidence {
            txn_count: Some(80),
            amount_sum: Some(Cents(1000)),
            ..Evidence::default()
        },
        chunk_name: chunk,
        y_start_time: "2026-11-22T15:04:05.123+05:30",
        detection_time: "2026-11-22T15:04:06.000+05:30",
    }
}

async fn pairs(store: &dyn StateStore) -> Vec<(String, String, u64, i64, Gender)> {
    let mut out = Vec::new();
    store
        .scan_pairs(&mut |p| {
            out.push((
                p.merchant.to_string(),
                p.customer.to_string(),
                p.count,
                p.amount,
                p.gender,
            ))
        })
        .await
        .unwrap();
    out.sort_by(|a, b| (&a.0, &a.1).cmp(&(&b.0, &b.1)));
    out
}

fn claimant(name: &str) -> Claimant {
    Claimant {
        owner_id: format!("owner-{name}"),
        host: format!("host-{name}"),
        pid: 100,
    }
}

/// Takes the pipeline lease for a fresh claimant.
async fn owner(store: &dyn StateStore, name: &str) -> Fence {
    match store
        .acquire_lease(PIPELINE_LEASE, &claimant(name), 60_000, None)
        .await
        .unwrap()
    {
        LeaseGrant::Granted(fence) => fence,
        LeaseGrant::Held { holder, .. } => panic!("held by {holder:?}"),
    }
}

async fn contract(store: Arc<dyn StateStore>) {
    store.migrate().await.unwrap();
    store.migrate().await.unwrap();
    assert_eq!(store.last_chunk().await.unwrap(), None);
    let fence = owner(&*store, "a").await;
    let fence = &fence;

    // Lookup table: loaded in one go, replaced on reload.
    let source = LookupSource {
        source: "net.csv".into(),
        fingerprint: "f1".into(),
        rows: 3,
        bad_rows: 1,
        pairs: 2,
    };
    let weights = [
        WeightRow {
            merchant: "M1",
            customer: "C1",
            weight_sum: 300,
            rows: 2,
        },
        WeightRow {
            merchant: "M1",
            customer: "C2",
            weight_sum: 50,
            rows: 1,
        },
    ];
    store.load_lookup(fence, &source, &weights).await.unwrap();
    store.load_lookup(fence, &source, &weights).await.unwrap();
    assert_eq!(store.lookup_source().await.unwrap(), Some(source));
    let mut loaded = Vec::new();
    store
        .scan_weights(&mut |w| {
            loaded.push((
                w.merchant.to_string(),
                w.customer.to_string(),
                w.weight_sum,
                w.rows,
            ))
        })
        .await
        .unwrap();
    loaded.sort();
    assert_eq!(
        loaded,
        vec![
            ("M1".into(), "C1".into(), 300, 2),
            ("M1".into(), "C2".into(), 50, 1)
        ]
    );

    // Chunker position round trip.
    assert_eq!(store.chunker_position().await.unwrap(), None);
    let mut position = ChunkerPosition {
        source: "tx.csv".into(),
        rows_per_chunk: 10,
        next_seq: 0,
        next_offset: 80,
        rows_emitted: 0,
        pending_keys: vec![
            "stream_chunks/chunk-0000000000-x.csv".into(),
            "stream_chunks/chunk-0000000001-y.csv".into(),
        ],
        last_key: None,
        finished: false,
    };
    store.save_chunker_position(fence, &position).await.unwrap();
    assert_eq!(
        store.chunker_position().await.unwrap().as_ref(),
        Some(&position)
    );
    position.next_seq = 1;
    position.pending_keys.clear();
    position.finished = true;
    store.save_chunker_position(fence, &position).await.unwrap();
    assert_eq!(store.chunker_position().await.unwrap(), Some(position));
    // The pending keys claimed their sequence numbers for good.
    let claims = store.chunk_claims(0, 10).await.unwrap();
    assert_eq!(
        claims.keys,
        vec![
            (0, "stream_chunks/chunk-0000000000-x.csv".to_string()),
            (1, "stream_chunks/chunk-0000000001-y.csv".to_string())
        ]
    );
    assert_eq!(
        (claims.chunker_next_seq, claims.chunker_finished),
        (1, true)
    );
    assert_eq!(store.chunk_claims(1, 10).await.unwrap().keys.len(), 1);
    let stranger = IgnoredObject {
        key: "stream_chunks/zz.bin".into(),
        seq: None,
        reason: "not a chunk name".into(),
        quarantine_key: Some("quarantine/zz.bin.foreign".into()),
    };
    assert!(store.record_ignored(fence, &stranger).await.unwrap());
    assert!(
        !store.record_ignored(fence, &stranger).await.unwrap(),
        "recorded once"
    );

    // A commit of two chunks.
    let chunks = [chunk("c0", 0), chunk("c1", 1)];
    let first = delta(&[("M1", "C1", 2, 300, Gender::Female)]);
    let second = delta(&[("M1", "C2", 1, i64::MAX - 5, Gender::Male)]);
    let deltas = [
        DeltaBlob {
            chunk: "c0",
            blob: &first,
        },
        DeltaBlob {
            chunk: "c1",
            blob: &second,
        },
    ];
    let detections = [
        detection(Pattern::Child, "C1", "M1", "c1"),
        detection(Pattern::DeiNeeded, "", "M1", "c1"),
    ];
    let batch = CommitBatch {
        expected_last: None,
        chunks: &chunks,
        deltas: &deltas,
        detections: &detections,
        processed_at: "2026-11-22T15:04:07.000+05:30",
    };
    assert_eq!(
        store.commit(fence, &batch).await.unwrap(),
        CommitOutcome::Committed
    );
    // The same commit again (an answer lost, say) changes nothing.
    assert_eq!(
        store.commit(fence, &batch).await.unwrap(),
        CommitOutcome::AlreadyCommitted
    );
    assert_eq!(store.last_chunk().await.unwrap(), Some("c1".into()));

    // A commit on a stale view is refused and writes nothing.
    let stale_chunks = [chunk("c2", 2)];
    let stale = CommitBatch {
        expected_last: Some("c0"),
        chunks: &stale_chunks,
        ..batch.clone()
    };
    assert_eq!(
        store.commit(fence, &stale).await.unwrap(),
        CommitOutcome::Conflict {
            last: Some("c1".into())
        }
    );

    // The next commit adds to the pairs; the first gender stays; sums saturate.
    let third = delta(&[
        ("M1", "C1", 1, 5, Gender::Male),
        ("M1", "C2", 1, 100, Gender::Female),
    ]);
    let next_deltas = [DeltaBlob {
        chunk: "c2",
        blob: &third,
    }];
    let next = CommitBatch {
        expected_last: Some("c1"),
        chunks: &stale_chunks,
        deltas: &next_deltas,
        detections: &[],
        processed_at: "2026-11-22T15:04:08.000+05:30",
    };
    let cumulative = vec![
        ("M1".to_string(), "C1".to_string(), 3, 305, Gender::Female),
        (
            "M1".to_string(),
            "C2".to_string(),
            2,
            i64::MAX,
            Gender::Male,
        ),
    ];
    // Compacting two of the deltas first: state is the same whatever is
    // compacted and whatever is pending.
    assert_eq!(store.compact(fence, 2).await.unwrap(), 2);
    assert_eq!(
        store.commit(fence, &next).await.unwrap(),
        CommitOutcome::Committed
    );
    assert_eq!(pairs(&*store).await, cumulative);
    assert_eq!(store.pending_deltas().await.unwrap().len(), 1);
    assert_eq!(store.pending_delta_count().await.unwrap(), 1);
    assert_eq!(store.compact(fence, 10).await.unwrap(), 1);
    assert_eq!(store.pending_delta_count().await.unwrap(), 0);
    assert_eq!(
        store.compact(fence, 10).await.unwrap(),
        0,
        "nothing left to fold"
    );
    assert_eq!(pairs(&*store).await, cumulative);
    let mut compacted = Vec::new();
    store
        .scan_compacted_pairs(&mut |p| {
            compacted.push((
                p.merchant.to_string(),
                p.customer.to_string(),
                p.count,
                p.amount,
                p.gender,
            ))
        })
        .await
        .unwrap();
    compacted.sort_by(|a, b| (&a.0, &a.1).cmp(&(&b.0, &b.1)));
    assert_eq!(
        compacted, cumulative,
        "pair_state itself holds everything now"
    );
    let mut emitted = Vec::new();
    store
        .scan_emitted(&mut |e| {
            emitted.push((e.pattern, e.customer.to_string(), e.merchant.to_string()))
        })
        .await
        .unwrap();
    emitted.sort();
    assert_eq!(
        emitted,
        vec![
            (Pattern::Child, "C1".into(), "M1".into()),
            (Pattern::DeiNeeded, "".into(), "M1".into())
        ]
    );

    // Batches: nothing full yet with size 3; the partial batch on request.
    assert_eq!(store.outbox().await.unwrap().0, 2);
    assert_eq!(
        store.assign_batches(fence, 3, false, "S1").await.unwrap(),
        0
    );
    assert_eq!(
        store.assign_batches(fence, 1, false, "S1").await.unwrap(),
        2
    );
    let batches = store.unwritten_batches().await.unwrap();
    assert_eq!(batches.len(), 2);
    assert_eq!(batches[0].key, "detected_patterns/batch-0000000001-S1.csv");
    let lines = store.batch_lines(batches[0].batch_no).await.unwrap();
    assert_eq!(lines.len(), 1);
    // Ids follow insertion order: the CHILD detection came first.
    assert_eq!(
        (lines[0].pattern_id.as_str(), lines[0].action_type.as_str()),
        ("PatId2", "CHILD")
    );
    assert_eq!(lines[0].customer, "C1");
    store
        .mark_batch_written(fence, batches[0].batch_no, "now")
        .await
        .unwrap();
    assert_eq!(store.unwritten_batches().await.unwrap().len(), 1);
    assert_eq!(store.outbox().await.unwrap().0, 0);

    let report = store.status(5).await.unwrap();
    assert_eq!(
        (
            report.chunks_produced,
            report.chunks_processed,
            report.bad_rows
        ),
        (1, 3, 3)
    );
    assert_eq!(
        report.detections,
        vec![("PatId2".into(), 1), ("PatId3".into(), 1)]
    );
    assert_eq!((report.batches_written, report.batches_pending), (1, 1));
    assert!(report.chunker_finished);
    assert_eq!((report.last_seq, report.ignored_objects), (Some(2), 1));
    assert_eq!(report.owner.map(|o| o.host), Some("host-a".to_string()));

    let owner = leases(&*store, fence).await;
    long_names(&*store, &owner).await;
}

/// A name that compresses badly: `bytes` long.
fn incompressible_name(bytes: usize) -> String {
    let mut state = 0x2545_f491_4f6c_dd1du64;
    let mut name = String::from("C");
    while name.len() < bytes {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        name.push_str(&format!("{state:016x}"));
    }
    name.truncate(bytes);
    name
}

/// Names of any length the contract allows are stored and read back as
/// they are, on both backends (a PostgreSQL index entry holds at most about
/// 2,700 bytes), and so is a name that looks like the tokens standing for
/// long names.
async fn long_names(store: &dyn StateStore, fence: &Fence) {
    let long = incompressible_name(20_000);
    let marked = "\u{1}C9";
    let blob = delta(&[
        ("M9", long.as_str(), 80, 100, Gender::Male),
        ("M9", marked, 1, 5, Gender::Female),
    ]);
    let chunks = [chunk("c4", 4)];
    let deltas = [DeltaBlob {
        chunk: "c4",
        blob: &blob,
    }];
    let detections = [detection(Pattern::Child, &long, "M9", "c4")];
    let batch = CommitBatch {
        expected_last: Some("c3"),
        chunks: &chunks,
        deltas: &deltas,
        detections: &detections,
        processed_at: "2026-11-22T15:04:10.000+05:30",
    };
    assert_eq!(
        store.commit(fence, &batch).await.unwrap(),
        CommitOutcome::Committed
    );
    assert!(store.compact(fence, 10).await.unwrap() >= 1);
    let all = pairs(store).await;
    assert!(all.contains(&("M9".into(), long.clone(), 80, 100, Gender::Male)));
    assert!(all.contains(&("M9".into(), marked.into(), 1, 5, Gender::Female)));
    let mut emitted = Vec::new();
    store
        .scan_emitted(&mut |e| emitted.push(e.customer.to_string()))
        .await
        .unwrap();
    assert!(emitted.contains(&long));
    store.assign_batches(fence, 1, true, "S5").await.unwrap();
    let batches = store.unwritten_batches().await.unwrap();
    let lines = store
        .batch_lines(batches.last().unwrap().batch_no)
        .await
        .unwrap();
    assert_eq!(lines[0].customer, long);
    let source = LookupSource {
        source: "net2.csv".into(),
        fingerprint: "f2".into(),
        rows: 1,
        bad_rows: 0,
        pairs: 1,
    };
    let weights = [WeightRow {
        merchant: "M9",
        customer: &long,
        weight_sum: 7,
        rows: 1,
    }];
    store.load_lookup(fence, &source, &weights).await.unwrap();
    let mut loaded = Vec::new();
    store
        .scan_weights(&mut |w| loaded.push(w.customer.to_string()))
        .await
        .unwrap();
    assert_eq!(loaded, vec![long]);
}

/// The ownership lease: one holder; a second claimant waits and is listed
/// as a standby; a takeover bumps the epoch and fences the old holder out
/// of every write; a released lease is free at once.
async fn leases(store: &dyn StateStore, first: &Fence) -> Fence {
    let b = claimant("b");
    let LeaseGrant::Held { holder, .. } = store
        .acquire_lease(PIPELINE_LEASE, &b, 60_000, None)
        .await
        .unwrap()
    else {
        panic!("a live lease was granted twice");
    };
    assert_eq!(
        (holder.holder().as_str(), holder.epoch),
        ("host-a/100", first.epoch)
    );
    store
        .register_standby(PIPELINE_LEASE, &b, 60_000)
        .await
        .unwrap();
    let report = store.status(0).await.unwrap();
    assert_eq!(report.standbys.len(), 1);
    assert_eq!(report.standbys[0].host, "host-b");
    assert!(matches!(
        store.renew_lease(first, 30).await.unwrap(),
        Renewal::Renewed { .. }
    ));
    // Let a's lease run out (30 ms); b takes it over at the next epoch.
    tokio::time::sleep(std::time::Duration::from_millis(80)).await;
    let LeaseGrant::Granted(second) = store
        .acquire_lease(PIPELINE_LEASE, &b, 60_000, None)
        .await
        .unwrap()
    else {
        panic!("an expired lease was not taken over");
    };
    assert_eq!(second.epoch, first.epoch + 1);
    assert!(store.status(0).await.unwrap().standbys.is_empty());
    // a, paused past its lease, wakes up: every write is refused.
    fn fenced<T>(result: Result<T, DbError>) -> bool {
        matches!(result, Err(DbError::Fenced(_)))
    }
    let position = store.chunker_position().await.unwrap().unwrap();
    assert!(fenced(store.save_chunker_position(first, &position).await));
    assert!(fenced(store.compact(first, 10).await));
    assert!(fenced(store.assign_batches(first, 1, true, "S9").await));
    assert!(fenced(store.mark_batch_written(first, 2, "now").await));
    let chunks = [chunk("c3", 3)];
    let zombie = CommitBatch {
        expected_last: Some("c2"),
        chunks: &chunks,
        deltas: &[],
        detections: &[],
        processed_at: "2026-11-22T15:04:09.000+05:30",
    };
    assert!(fenced(store.commit(first, &zombie).await));
    assert_eq!(store.last_chunk().await.unwrap(), Some("c2".into()));
    match store.renew_lease(first, 60_000).await.unwrap() {
        Renewal::Lost { holder } => assert_eq!(holder.unwrap().host, "host-b"),
        Renewal::Renewed { .. } => panic!("a lost lease was renewed"),
    }
    // The new owner writes; a graceful stop frees the lease at once.
    assert_eq!(
        store.commit(&second, &zombie).await.unwrap(),
        CommitOutcome::Committed
    );
    store.release_lease(first).await.unwrap();
    assert!(
        matches!(
            store
                .acquire_lease(PIPELINE_LEASE, &claimant("c"), 60_000, None)
                .await
                .unwrap(),
            LeaseGrant::Held { .. }
        ),
        "releasing with a stale fence does nothing"
    );
    store.release_lease(&second).await.unwrap();
    let LeaseGrant::Granted(third) = store
        .acquire_lease(PIPELINE_LEASE, &claimant("c"), 60_000, None)
        .await
        .unwrap()
    else {
        panic!("a released lease was not free");
    };
    assert_eq!(third.epoch, second.epoch + 1);
    third
}

#[tokio::test]
async fn sqlite_keeps_the_contract() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("state.sqlite").display());
    contract(Arc::new(SqliteStore::open(&url).unwrap())).await;
}

/// A migrated SQLite store in a fresh directory, and its database file.
async fn fresh_sqlite() -> (tempfile::TempDir, std::path::PathBuf, SqliteStore, Fence) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.sqlite");
    let store = SqliteStore::open(&format!("sqlite://{}", path.display())).unwrap();
    store.migrate().await.unwrap();
    let fence = owner(&store, "a").await;
    (dir, path, store, fence)
}

/// Commits `count` chunks in sequence, each with a state change of `pairs`
/// new pairs.
async fn commit_chunks(store: &SqliteStore, fence: &Fence, count: u64, pairs: usize) {
    for seq in 0..count {
        let name = format!("c{seq:04}");
        let previous = seq.checked_sub(1).map(|p| format!("c{p:04}"));
        let rows: Vec<(String, String)> = (0..pairs)
            .map(|i| (format!("M{}", i % 7), format!("C{seq}-{i}")))
            .collect();
        let rows: Vec<(&str, &str, u32, i64, Gender)> = rows
            .iter()
            .map(|(m, c)| (m.as_str(), c.as_str(), 1, 100, Gender::Female))
            .collect();
        let chunks = [chunk(&name, seq)];
        let blob = delta(&rows);
        let deltas = [DeltaBlob {
            chunk: &name,
            blob: &blob,
        }];
        let batch = CommitBatch {
            expected_last: previous.as_deref(),
            chunks: &chunks,
            deltas: &deltas,
            detections: &[],
            processed_at: "2026-11-25T17:00:00.000+05:30",
        };
        assert_eq!(
            store.commit(fence, &batch).await.unwrap(),
            CommitOutcome::Committed
        );
    }
}

/// Commits never checkpoint the WAL themselves: a checkpoint (copying the
/// WAL into the database file and syncing it) inside a commit was the paced
/// mode's slowest chunk. While the WAL stays below 1,000 pages (see the
/// next test for beyond), the database file keeps the size it had before
/// the commits; the compaction's checkpoint copies the pages in.
#[tokio::test]
async fn sqlite_checkpoints_in_compaction_not_in_commits() {
    let (_dir, path, store, fence) = fresh_sqlite().await;
    let fence = &fence;
    let file_size = || std::fs::metadata(&path).unwrap().len();
    let before = file_size();
    commit_chunks(&store, fence, 50, 200).await;
    assert_eq!(file_size(), before, "commits did not checkpoint");
    assert_eq!(store.compact(fence, 100).await.unwrap(), 50);
    assert!(
        file_size() > before,
        "the compaction checkpointed the WAL into the database file"
    );
}

/// Past SQLite's usual WAL limit, commits leave the copying to a thread of
/// the store's own: the database file grows without any compaction.
#[tokio::test]
async fn sqlite_checkpoints_a_growing_wal_in_the_background() {
    let (_dir, path, store, fence) = fresh_sqlite().await;
    let fence = &fence;
    let file_size = || std::fs::metadata(&path).unwrap().len();
    let before = file_size();
    // About 100 kB of deltas per commit: the 1,000-page limit (4 MB) is
    // crossed after some forty commits.
    commit_chunks(&store, fence, 80, 5_000).await;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while file_size() <= before && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    assert!(
        file_size() > before,
        "the background checkpoint copied the WAL into the database file"
    );
}

#[tokio::test]
async fn postgres_keeps_the_contract() {
    let Some(db) = support::pg::TestDb::create() else {
        return;
    };
    let store = PostgresStore::connect(&db.url, 4).await.unwrap();
    contract(Arc::new(store)).await;
}

#[tokio::test]
async fn postgres_tls_follows_libpq_sslmodes() {
    let Some(db) = support::pg::TestDb::create() else {
        return;
    };
    let ssl: String = db.query("SHOW ssl")[0].get(0);
    // require: encrypted, certificate not checked (libpq's meaning).
    let store = PostgresStore::connect(&format!("{}?sslmode=require", db.url), 1)
        .await
        .unwrap();
    let result = store.migrate().await;
    if ssl == "on" {
        result.unwrap();
        // A pooled connection stays open after this call.
        store.last_chunk().await.unwrap();
        let encrypted: Option<bool> = db.query(
            "SELECT bool_or(s.ssl) FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid)
             WHERE a.datname = current_database() AND a.pid <> pg_backend_pid()",
        )[0]
        .get(0);
        assert_eq!(
            encrypted,
            Some(true),
            "the pipeline's connection is not encrypted"
        );
        // verify-full checks the certificate: a self-signed one for another
        // host name is refused with a clear error.
        let strict = PostgresStore::connect(&format!("{}?sslmode=verify-full", db.url), 1)
            .await
            .unwrap();
        let error = strict.last_chunk().await.unwrap_err().to_string();
        assert!(error.contains("certificate"), "{error}");
    } else {
        let error = result.unwrap_err().to_string();
        assert!(error.to_lowercase().contains("tls"), "{error}");
    }
    let wrong = PostgresStore::connect(&format!("{}?sslmode=sometimes", db.url), 1).await;
    assert!(
        wrong
            .err()
            .unwrap()
            .to_string()
            .contains("unsupported sslmode")
    );
}

#[tokio::test]
async fn an_unreachable_postgres_is_a_transient_error() {
    let store = PostgresStore::connect("postgres://postgres@127.0.0.1:1/none", 1)
        .await
        .unwrap();
    let error = store.last_chunk().await.unwrap_err();
    assert!(error.is_transient(), "{error}");
}
