//! The embedded state store: one SQLite file in WAL mode.
//!
//! Calls run synchronously on the calling actor's thread (each actor has
//! its own), serialized by one connection mutex; SQLite allows a single
//! writer anyway. `synchronous = NORMAL` in WAL mode survives any crash of
//! the process; a power loss may lose the last commits but never leaves
//! them half applied. Copying the WAL into the database file (a checkpoint)
//! happens on a second connection, beside the commits: from a thread of the
//! store's own once the WAL grows past 1,000 pages, and after compactions.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use async_trait::async_trait;
use rusqlite::{Connection, OptionalExtension, TransactionBehavior, params};

use super::lease::{self, Decision};
use super::{
    Batch, ChunkClaims, ChunkerPosition, Claimant, CommitBatch, CommitOutcome, DbError, DbResult,
    DetectionLine, EmittedRow, Fence, IgnoredObject, LeaseGrant, LeaseRow, LookupSource, PairRow,
    Renewal, RestartEvent, StandbyRow, StateStore, StatusReport, WeightRow,
};
use crate::detect::{Gender, Pattern};

mod embedded {
    refinery::embed_migrations!("migrations/sqlite");
}

pub struct SqliteStore {
    connection: Mutex<Connection>,
    /// A second connection that only checkpoints the WAL (see `open`).
    checkpointer: Arc<Mutex<Connection>>,
    path: PathBuf,
}

/// WAL pages after which a commit asks the background checkpointer to copy
/// the WAL into the database file (SQLite's own default limit).
const BACKGROUND_CHECKPOINT_PAGES: i32 = 1_000;

/// WAL pages after which a commit checkpoints itself after all: a backstop,
/// ten times SQLite's default. The WAL only starts over once a checkpoint
/// has copied all of it before the next commit, which a background
/// checkpoint beside continuous commits rarely manages; then this one copies
/// the little that is left and lets the WAL start over.
const WAL_BACKSTOP_PAGES: i32 = 10_000;

fn db_error(error: rusqlite::Error) -> DbError {
    use rusqlite::ErrorCode::{DatabaseBusy, DatabaseLocked};
    match &error {
        rusqlite::Error::SqliteFailure(code, _)
            if matches!(code.code, DatabaseBusy | DatabaseLocked) =>
        {
            DbError::Unavailable(error.to_string())
        }
        _ => DbError::Failed(error.to_string()),
    }
}

impl From<rusqlite::types::FromSqlError> for DbError {
    fn from(error: rusqlite::types::FromSqlError) -> Self {
        DbError::Failed(error.to_string())
    }
}

impl From<rusqlite::Error> for DbError {
    fn from(error: rusqlite::Error) -> Self {
        db_error(error)
    }
}

const UPSERT_PAIR: &str = "\
INSERT INTO pair_state (merchant, customer, txn_count, amount_cents, gender)
VALUES (?1, ?2, ?3, ?4, ?5)
ON CONFLICT (merchant, customer) DO UPDATE SET
    txn_count = txn_count + excluded.txn_count,
    amount_cents = CASE
        WHEN amount_cents > 9223372036854775807 - excluded.amount_cents THEN 9223372036854775807
        ELSE amount_cents + excluded.amount_cents
    END";

const INSERT_DELTA: &str = "INSERT INTO chunk_deltas (chunk_name, delta) VALUES (?1, ?2)";

const INSERT_CHUNK: &str = "\
INSERT INTO processed_chunks (chunk_name, seq, status, rows, bad_rows, detections, reason, processed_at)
VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)";

const INSERT_DETECTION: &str = "\
INSERT INTO detected_patterns (customer, merchant, txn_count, avg_weight, avg_amount, txn_rank,
    weight_rank, F, M, patternId, actionType, chunk_name, processed_at, y_start_time, detection_time)
VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15)";

impl SqliteStore {
    /// Opens (creating if needed) the database of a `sqlite://PATH` URL.
    pub fn open(url: &str) -> DbResult<SqliteStore> {
        let path = path_of(url)?;
        let path = path.as_path();
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent).map_err(|e| {
                DbError::Failed(format!("cannot create directory {}: {e}", parent.display()))
            })?;
        }
        let mut connection = Connection::open(path)?;
        connection.busy_timeout(Duration::from_secs(10))?;
        connection.pragma_update(None, "journal_mode", "WAL")?;
        connection.pragma_update(None, "synchronous", "NORMAL")?;
        // 32 MB of page cache: compactions upsert into a table of millions
        // of pairs.
        connection.pragma_update(None, "cache_size", -32_768)?;
        connection.set_prepared_statement_cache_capacity(64);
        let checkpointer = Connection::open(path)?;
        checkpointer.busy_timeout(Duration::from_secs(10))?;
        let checkpointer = Arc::new(Mutex::new(checkpointer));
        // A checkpoint copies the WAL into the database file and syncs it:
        // 40 ms and more that SQLite would spend inside whichever commit
        // crossed its 1,000-page limit (the paced mode's p99 once; in
        // catch-up runs, a stall of the whole pipeline every few hundred
        // chunks). Commits ask a thread of ours to checkpoint instead, on
        // its own connection, beside them; `compact` checkpoints too.
        let (ask, asked) = crossbeam_channel::bounded::<()>(1);
        connection.wal_hook(Some(move |wal: &mut rusqlite::hooks::Wal, pages| {
            if pages >= WAL_BACKSTOP_PAGES {
                wal.checkpoint()?;
            } else if pages >= BACKGROUND_CHECKPOINT_PAGES {
                // One request waiting is enough.
                let _ = ask.try_send(());
            }
            Ok(())
        }))?;
        let background = checkpointer.clone();
        std::thread::Builder::new()
            .name("sqlite-checkpoint".into())
            .spawn(move || {
                // Ends when the committing connection, and its hook, go.
                while asked.recv().is_ok() {
                    if let Err(error) = passive_checkpoint(&background) {
                        tracing::warn!(%error, "background WAL checkpoint failed");
                    }
                }
            })
            .map_err(|e| DbError::Failed(format!("cannot start the checkpoint thread: {e}")))?;
        Ok(SqliteStore {
            connection: Mutex::new(connection),
            checkpointer,
            path: path.to_path_buf(),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn lock(&self) -> MutexGuard<'_, Connection> {
        // A panic while holding the lock leaves the connection usable: any
        // open transaction was rolled back when it was dropped.
        self.connection
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// The database file of a `sqlite://PATH` URL.
pub fn path_of(url: &str) -> DbResult<PathBuf> {
    url.strip_prefix("sqlite://")
        .filter(|path| !path.is_empty())
        .map(PathBuf::from)
        .ok_or_else(|| DbError::Failed(format!("not a sqlite://PATH URL: {url}")))
}

/// PASSIVE: copies what it can without waiting for, or blocking, the
/// commits that go on meanwhile on the other connection.
fn passive_checkpoint(checkpointer: &Mutex<Connection>) -> rusqlite::Result<()> {
    checkpointer
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
        .query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(()))
}

fn to_i64(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

fn to_u64(value: i64) -> u64 {
    u64::try_from(value).unwrap_or(0)
}

/// The database's clock, in milliseconds since the Unix epoch.
fn now_ms(connection: &Connection) -> DbResult<i64> {
    Ok(connection.query_row(
        "SELECT CAST((julianday('now') - 2440587.5) * 86400000.0 AS INTEGER)",
        [],
        |row| row.get(0),
    )?)
}

fn read_lease(connection: &Connection, name: &str) -> DbResult<Option<LeaseRow>> {
    Ok(connection
        .query_row(
            "SELECT name, owner_id, host, pid, epoch, acquired_at_ms, expires_at_ms
             FROM leases WHERE name = ?1",
            [name],
            |row| {
                Ok(LeaseRow {
                    name: row.get(0)?,
                    owner_id: row.get(1)?,
                    host: row.get(2)?,
                    pid: row.get(3)?,
                    epoch: to_u64(row.get(4)?),
                    acquired_at_ms: row.get(5)?,
                    expires_at_ms: row.get(6)?,
                })
            },
        )
        .optional()?)
}

/// Refuses the transaction unless `fence` still holds its lease. Inside a
/// write transaction (`BEGIN IMMEDIATE`), nobody can take the lease over
/// before this transaction ends: SQLite has one writer at a time.
fn check_fence(connection: &Connection, fence: &Fence) -> DbResult<()> {
    lease::check(fence, read_lease(connection, &fence.lease)?.as_ref()).map_err(DbError::Fenced)
}

#[async_trait]
impl StateStore for SqliteStore {
    async fn migrate(&self) -> DbResult<()> {
        // Two processes started at once must not both apply the same
        // migration: an exclusive lock on a file beside the database
        // serializes them (the second then finds nothing left to do).
        let lock_path = {
            let mut name = self.path.clone().into_os_string();
            name.push(".migrate-lock");
            PathBuf::from(name)
        };
        let lock = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(|e| DbError::Failed(format!("cannot open {}: {e}", lock_path.display())))?;
        lock.lock()
            .map_err(|e| DbError::Failed(format!("cannot lock {}: {e}", lock_path.display())))?;
        let mut connection = self.lock();
        embedded::migrations::runner()
            .run(&mut *connection)
            .map_err(|e| DbError::Failed(format!("migrations: {e}")))?;
        Ok(())
    }

    async fn lookup_source(&self) -> DbResult<Option<LookupSource>> {
        let connection = self.lock();
        Ok(connection
            .query_row(
                "SELECT source, fingerprint, rows, bad_rows, pairs FROM lookup_source WHERE id = 1",
                [],
                |row| {
                    Ok(LookupSource {
                        source: row.get(0)?,
                        fingerprint: row.get(1)?,
                        rows: to_u64(row.get(2)?),
                        bad_rows: to_u64(row.get(3)?),
                        pairs: to_u64(row.get(4)?),
                    })
                },
            )
            .optional()?)
    }

    async fn load_lookup(
        &self,
        fence: &Fence,
        source: &LookupSource,
        rows: &[WeightRow<'_>],
    ) -> DbResult<()> {
        let mut connection = self.lock();
        let tx = connection.transaction_with_behavior(TransactionBehavior::Immediate)?;
        check_fence(&tx, fence)?;
        tx.execute("DELETE FROM customer_importance", [])?;
        {
            let mut insert = tx.prepare(
                "INSERT INTO customer_importance (merchant, customer, weight_sum_cents, weight_rows)
                 VALUES (?1, ?2, ?3, ?4)",
            )?;
            for row in rows {
                insert.execute(params![
                    row.merchant,
                    row.customer,
                    row.weight_sum,
                    to_i64(row.rows)
                ])?;
            }
        }
        tx.execute(
            "INSERT INTO lookup_source (id, source, fingerprint, rows, bad_rows, pairs, loaded_at)
             VALUES (1, ?1, ?2, ?3, ?4, ?5, ?6)
             ON CONFLICT (id) DO UPDATE SET source = excluded.source,
                 fingerprint = excluded.fingerprint, rows = excluded.rows,
                 bad_rows = excluded.bad_rows, pairs = excluded.pairs,
                 loaded_at = excluded.loaded_at",
            params![
                source.source,
                source.fingerprint,
                to_i64(source.rows),
                to_i64(source.bad_rows),
                to_i64(source.pairs),
                crate::clock::now_ist()
            ],
        )?;
        tx.commit()?;
        Ok(())
    }

    async fn scan_weights(
        &self,
        visit: &mut (dyn for<'r> FnMut(WeightRow<'r>) + Send),
    ) -> DbResult<()> {
        let connection = self.lock();
        let mut statement = connection.prepare(
            "SELECT merchant, customer, weight_sum_cents, weight_rows FROM customer_importance",
        )?;
        let mut rows = statement.query([])?;
        while let Some(row) = rows.next()? {
            visit(WeightRow {
                merchant: row.get_ref(0)?.as_str()?,
                customer: row.get_ref(1)?.as_str()?,
                weight_sum: row.get(2)?,
                rows: to_u64(row.get(3)?),
            });
        }
        Ok(())
    }

    async fn chunker_position(&self) -> DbResult<Option<ChunkerPosition>> {
        let connection = self.lock();
        Ok(connection
            .query_row(
                "SELECT source, rows_per_chunk, next_seq, next_offset, rows_emitted, pending_key,
                        last_key, finished
                 FROM chunker_position WHERE id = 1",
                [],
                |row| {
                    Ok(ChunkerPosition {
                        source: row.get(0)?,
                        rows_per_chunk: to_u64(row.get(1)?),
                        next_seq: to_u64(row.get(2)?),
                        next_offset: to_u64(row.get(3)?),
                        rows_emitted: to_u64(row.get(4)?),
                        pending_keys: ChunkerPosition::pending_from_column(row.get(5)?),
                        last_key: row.get(6)?,
                        finished: row.get(7)?,
                    })
                },
            )
            .optional()?)
    }

    async fn save_chunker_position(
        &self,
        fence: &Fence,
        position: &ChunkerPosition,
    ) -> DbResult<()> {
        let mut connection = self.lock();
        let tx = connection.transaction_with_behavior(TransactionBehavior::Immediate)?;
        check_fence(&tx, fence)?;
        tx.execute(
            "INSERT INTO chunker_position (id, source, rows_per_chunk, next_seq, next_offset,
                 rows_emitted, pending_key, last_key, finished, updated_at)
             VALUES (1, ?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)
             ON CONFLICT (id) DO UPDATE SET source = excluded.source,
                 rows_per_chunk = excluded.rows_per_chunk, next_seq = excluded.next_seq,
                 next_offset = excluded.next_offset, rows_emitted = excluded.rows_emitted,
                 pending_key = excluded.pending_key, last_key = excluded.last_key,
                 finished = excluded.finished, updated_at = excluded.updated_at",
            params![
                position.source,
                to_i64(position.rows_per_chunk),
                to_i64(position.next_seq),
                to_i64(position.next_offset),
                to_i64(position.rows_emitted),
                position.pending_column(),
                position.last_key,
                position.finished,
                crate::clock::now_ist()
            ],
        )?;
        {
            let mut claim = tx.prepare_cached(
                "INSERT INTO chunk_keys (seq, chunk_name) VALUES (?1, ?2) ON CONFLICT DO NOTHING",
            )?;
            for (seq, key) in position.claimed_keys() {
                claim.execute(params![to_i64(seq), key])?;
            }
        }
        tx.commit()?;
        Ok(())
    }

    async fn chunk_claims(&self, from_seq: u64, limit: usize) -> DbResult<ChunkClaims> {
        let connection = self.lock();
        let mut claims = ChunkClaims::default();
        if let Some((next_seq, finished)) = connection
            .query_row(
                "SELECT next_seq, finished FROM chunker_position WHERE id = 1",
                [],
                |row| Ok((row.get::<_, i64>(0)?, row.get(1)?)),
            )
            .optional()?
        {
            claims.chunker_next_seq = to_u64(next_seq);
            claims.chunker_finished = finished;
        }
        let mut statement = connection.prepare_cached(
            "SELECT seq, chunk_name FROM chunk_keys WHERE seq >= ?1 ORDER BY seq LIMIT ?2",
        )?;
        claims.keys = statement
            .query_map(params![to_i64(from_seq), limit as i64], |row| {
                Ok((to_u64(row.get(0)?), row.get(1)?))
            })?
            .collect::<Result<_, _>>()?;
        Ok(claims)
    }

    async fn processed_names_between(&self, first: &str, last: &str) -> DbResult<Vec<String>> {
        let connection = self.lock();
        let mut statement = connection.prepare_cached(
            "SELECT chunk_name FROM processed_chunks WHERE chunk_name BETWEEN ?1 AND ?2",
        )?;
        let names = statement
            .query_map([first, last], |row| row.get(0))?
            .collect::<Result<_, _>>()?;
        Ok(names)
    }

    async fn record_ignored(&self, fence: &Fence, object: &IgnoredObject) -> DbResult<bool> {
        let mut connection = self.lock();
        let tx = connection.transaction_with_behavior(TransactionBehavior::Immediate)?;
        check_fence(&tx, fence)?;
        let inserted = tx.execute(
            "INSERT INTO ignored_objects (object_key, seq, reason, quarantine_key, seen_at)
             VALUES (?1, ?2, ?3, ?4, ?5) ON CONFLICT DO NOTHING",
            params![
                object.key,
                object.seq.map(to_i64),
                object.reason,
                object.quarantine_key,
                crate::clock::now_ist()
            ],
        )?;
        tx.commit()?;
        Ok(inserted == 1)
    }

    async fn acquire_lease(
        &self,
        name: &str,
        me: &Claimant,
        ttl_ms: u64,
        dead_epoch: Option<u64>,
    ) -> DbResult<LeaseGrant> {
        let mut connection = self.lock();
        let tx = connection.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let now = now_ms(&tx)?;
        let current = read_lease(&tx, name)?;
        let expires = now.saturating_add(to_i64(ttl_ms));
        let epoch = match lease::decide(current.as_ref(), now, dead_epoch) {
            Decision::Held => {
                let holder = current.expect("held leases exist");
                return Ok(LeaseGrant::Held {
                    holder,
                    now_ms: now,
                });
            }
            Decision::Create => 1,
            Decision::TakeOver { epoch } => epoch,
        };
        tx.execute(
            "INSERT INTO leases (name, owner_id, host, pid, epoch, acquired_at_ms, expires_at_ms)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)
             ON CONFLICT (name) DO UPDATE SET owner_id = excluded.owner_id,
                 host = excluded.host, pid = excluded.pid, epoch = excluded.epoch,
                 acquired_at_ms = excluded.acquired_at_ms, expires_at_ms = excluded.expires_at_ms",
            params![
                name,
                me.owner_id,
                me.host,
                me.pid,
                to_i64(epoch),
                now,
                expires
            ],
        )?;
        tx.execute(
            "DELETE FROM lease_standbys WHERE owner_id = ?1",
            [&me.owner_id],
        )?;
        tx.commit()?;
        Ok(LeaseGrant::Granted(Fence {
            lease: name.to_string(),
            owner_id: me.owner_id.clone(),
            epoch,
        }))
    }

    async fn renew_lease(&self, fence: &Fence, ttl_ms: u64) -> DbResult<Renewal> {
        let mut connection = self.lock();
        let tx = connection.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let current = read_lease(&tx, &fence.lease)?;
        if lease::check(fence, current.as_ref()).is_err() {
            return Ok(Renewal::Lost { holder: current });
        }
        let expires_at_ms = now_ms(&tx)?.saturating_add(to_i64(ttl_ms));
        tx.execute(
            "UPDATE leases SET expires_at_ms = ?2 WHERE name = ?1",
            params![fence.lease, expires_at_ms],
        )?;
        tx.commit()?;
        Ok(Renewal::Renewed { expires_at_ms })
    }

    async fn release_lease(&self, fence: &Fence) -> DbResult<()> {
        let connection = self.lock();
        let now = now_ms(&connection)?;
        connection.execute(
            "UPDATE leases SET expires_at_ms = ?4
             WHERE name = ?1 AND owner_id = ?2 AND epoch = ?3",
            params![fence.lease, fence.owner_id, to_i64(fence.epoch), now],
        )?;
        Ok(())
    }

    async fn register_standby(&self, name: &str, me: &Claimant, ttl_ms: u64) -> DbResult<()> {
        let connection = self.lock();
        let now = now_ms(&connection)?;
        connection.execute(
            "INSERT INTO lease_standbys (owner_id, lease, host, pid, since_ms, expires_at_ms)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6)
             ON CONFLICT (owner_id) DO UPDATE SET expires_at_ms = excluded.expires_at_ms",
            params![
                me.owner_id,
                name,
                me.host,
                me.pid,
                now,
                now.saturating_add(to_i64(ttl_ms))
            ],
        )?;
        Ok(())
    }

    async fn remove_standby(&self, me: &Claimant) -> DbResult<()> {
        let connection = self.lock();
        connection.execute(
            "DELETE FROM lease_standbys WHERE owner_id = ?1",
            [&me.owner_id],
        )?;
        Ok(())
    }

    async fn last_chunk(&self) -> DbResult<Option<String>> {
        let connection = self.lock();
        Ok(
            connection.query_row("SELECT max(chunk_name) FROM processed_chunks", [], |row| {
                row.get(0)
            })?,
        )
    }

    async fn scan_compacted_pairs(
        &self,
        visit: &mut (dyn for<'r> FnMut(PairRow<'r>) + Send),
    ) -> DbResult<()> {
        let connection = self.lock();
        let mut statement = connection.prepare(
            "SELECT merchant, customer, txn_count, amount_cents, gender FROM pair_state",
        )?;
        let mut rows = statement.query([])?;
        while let Some(row) = rows.next()? {
            visit(PairRow {
                merchant: row.get_ref(0)?.as_str()?,
                customer: row.get_ref(1)?.as_str()?,
                count: to_u64(row.get(2)?),
                amount: row.get(3)?,
                gender: Gender::from_code(row.get_ref(4)?.as_str()?),
            });
        }
        Ok(())
    }

    async fn scan_pairs(
        &self,
        visit: &mut (dyn for<'r> FnMut(PairRow<'r>) + Send),
    ) -> DbResult<()> {
        // One lock for both reads: nothing can compact in between.
        let connection = self.lock();
        let mut merged = super::delta::Merged::default();
        {
            let mut statement =
                connection.prepare("SELECT delta FROM chunk_deltas ORDER BY chunk_name")?;
            let mut rows = statement.query([])?;
            while let Some(row) = rows.next()? {
                merged.add(row.get_ref(0)?.as_blob()?)?;
            }
        }
        let mut statement = connection.prepare(
            "SELECT merchant, customer, txn_count, amount_cents, gender FROM pair_state",
        )?;
        let mut rows = statement.query([])?;
        while let Some(row) = rows.next()? {
            merged.overlay_row(
                PairRow {
                    merchant: row.get_ref(0)?.as_str()?,
                    customer: row.get_ref(1)?.as_str()?,
                    count: to_u64(row.get(2)?),
                    amount: row.get(3)?,
                    gender: Gender::from_code(row.get_ref(4)?.as_str()?),
                },
                &mut *visit,
            );
        }
        merged.finish(visit);
        Ok(())
    }

    async fn pending_deltas(&self) -> DbResult<Vec<Vec<u8>>> {
        let connection = self.lock();
        let mut statement =
            connection.prepare("SELECT delta FROM chunk_deltas ORDER BY chunk_name")?;
        let blobs = statement
            .query_map([], |row| row.get(0))?
            .collect::<Result<Vec<Vec<u8>>, _>>()?;
        Ok(blobs)
    }

    async fn pending_delta_count(&self) -> DbResult<u64> {
        let connection = self.lock();
        let count: i64 =
            connection.query_row("SELECT count(*) FROM chunk_deltas", [], |row| row.get(0))?;
        Ok(count as u64)
    }

    async fn compact(&self, fence: &Fence, max_chunks: usize) -> DbResult<u64> {
        let mut connection = self.lock();
        let tx = connection.transaction_with_behavior(TransactionBehavior::Immediate)?;
        check_fence(&tx, fence)?;
        let mut merged = super::delta::Merged::default();
        let mut last: Option<String> = None;
        let mut folded = 0u64;
        {
            let mut statement = tx.prepare(
                "SELECT chunk_name, delta FROM chunk_deltas ORDER BY chunk_name LIMIT ?1",
            )?;
            let mut rows = statement.query([max_chunks as i64])?;
            while let Some(row) = rows.next()? {
                last = Some(row.get(0)?);
                merged.add(row.get_ref(1)?.as_blob()?)?;
                folded += 1;
            }
        }
        let Some(last) = last else { return Ok(0) };
        {
            let mut upsert = tx.prepare_cached(UPSERT_PAIR)?;
            for pair in merged.sorted() {
                upsert.execute(params![
                    pair.merchant,
                    pair.customer,
                    to_i64(pair.count),
                    pair.amount,
                    pair.gender.code()
                ])?;
            }
        }
        tx.execute("DELETE FROM chunk_deltas WHERE chunk_name <= ?1", [&last])?;
        tx.commit()?;
        drop(connection);
        passive_checkpoint(&self.checkpointer)?;
        Ok(folded)
    }

    async fn scan_emitted(
        &self,
        visit: &mut (dyn for<'r> FnMut(EmittedRow<'r>) + Send),
    ) -> DbResult<()> {
        let connection = self.lock();
        let mut statement =
            connection.prepare("SELECT patternId, merchant, customer FROM detected_patterns")?;
        let mut rows = statement.query([])?;
        while let Some(row) = rows.next()? {
            let id = row.get_ref(0)?.as_str()?;
            let pattern = Pattern::from_id(id)
                .ok_or_else(|| DbError::Failed(format!("unknown patternId {id:?} in table")))?;
            visit(EmittedRow {
                pattern,
                merchant: row.get_ref(1)?.as_str()?,
                customer: row.get_ref(2)?.as_str()?,
            });
        }
        Ok(())
    }

    async fn commit(&self, fence: &Fence, batch: &CommitBatch<'_>) -> DbResult<CommitOutcome> {
        let Some(final_chunk) = batch.chunks.last() else {
            return Ok(CommitOutcome::Committed);
        };
        let mut connection = self.lock();
        let tx = connection.transaction_with_behavior(TransactionBehavior::Immediate)?;
        check_fence(&tx, fence)?;
        let last: Option<String> =
            tx.query_row("SELECT max(chunk_name) FROM processed_chunks", [], |row| {
                row.get(0)
            })?;
        if last.as_deref() != batch.expected_last {
            return Ok(if last.as_deref() == Some(final_chunk.name.as_str()) {
                CommitOutcome::AlreadyCommitted
            } else {
                CommitOutcome::Conflict { last }
            });
        }
        {
            let mut insert_delta = tx.prepare_cached(INSERT_DELTA)?;
            for delta in batch.deltas {
                insert_delta.execute(params![delta.chunk, delta.blob])?;
            }
            let mut insert_chunk = tx.prepare_cached(INSERT_CHUNK)?;
            for chunk in batch.chunks {
                insert_chunk.execute(params![
                    chunk.name,
                    chunk.seq.map(to_i64),
                    chunk.status.as_str(),
                    to_i64(chunk.rows),
                    to_i64(chunk.bad_rows),
                    to_i64(chunk.detections),
                    chunk.reason,
                    batch.processed_at
                ])?;
            }
            let mut insert_detection = tx.prepare_cached(INSERT_DETECTION)?;
            for detection in batch.detections {
                let e = &detection.evidence;
                insert_detection.execute(params![
                    detection.customer,
                    detection.merchant,
                    e.txn_count.map(to_i64),
                    e.weight.map(|w| w.as_f64()),
                    e.avg_amount(),
                    e.txn_rank.map(|r| r.as_f64()),
                    e.weight_rank.map(|r| r.as_f64()),
                    e.female.map(to_i64),
                    e.male.map(to_i64),
                    detection.pattern.id(),
                    detection.pattern.action(),
                    detection.chunk_name,
                    batch.processed_at,
                    detection.y_start_time,
                    detection.detection_time
                ])?;
            }
        }
        crate::pause_points::reached("commit");
        tx.commit()?;
        Ok(CommitOutcome::Committed)
    }

    async fn assign_batches(
        &self,
        fence: &Fence,
        size: u64,
        include_partial: bool,
        stamp: &str,
    ) -> DbResult<u64> {
        let mut connection = self.lock();
        let tx = connection.transaction_with_behavior(TransactionBehavior::Immediate)?;
        check_fence(&tx, fence)?;
        let mut created = 0;
        loop {
            let (count, max_id): (i64, Option<i64>) = tx.query_row(
                "SELECT count(*), max(id) FROM (
                     SELECT id FROM detected_patterns WHERE batch_no IS NULL ORDER BY id LIMIT ?1)",
                [to_i64(size)],
                |row| Ok((row.get(0)?, row.get(1)?)),
            )?;
            let count = to_u64(count);
            let Some(max_id) = max_id else { break };
            if count < size && !include_partial {
                break;
            }
            let batch_no: i64 = tx.query_row(
                "SELECT COALESCE(max(batch_no), 0) + 1 FROM detection_batches",
                [],
                |row| row.get(0),
            )?;
            tx.execute(
                "UPDATE detected_patterns SET batch_no = ?1 WHERE batch_no IS NULL AND id <= ?2",
                params![batch_no, max_id],
            )?;
            tx.execute(
                "INSERT INTO detection_batches (batch_no, object_key, detections, created_at)
                 VALUES (?1, ?2, ?3, ?4)",
                params![
                    batch_no,
                    crate::layout::batch_key(to_u64(batch_no), stamp),
                    to_i64(count),
                    crate::clock::now_ist()
                ],
            )?;
            created += 1;
            if count < size {
                break;
            }
        }
        tx.commit()?;
        Ok(created)
    }

    async fn unwritten_batches(&self) -> DbResult<Vec<Batch>> {
        let connection = self.lock();
        let mut statement = connection.prepare(
            "SELECT batch_no, object_key, detections FROM detection_batches
             WHERE written_at IS NULL ORDER BY batch_no",
        )?;
        let batches = statement
            .query_map([], |row| {
                Ok(Batch {
                    batch_no: to_u64(row.get(0)?),
                    key: row.get(1)?,
                    detections: to_u64(row.get(2)?),
                })
            })?
            .collect::<Result<Vec<_>, _>>()?;
        Ok(batches)
    }

    async fn batch_lines(&self, batch_no: u64) -> DbResult<Vec<DetectionLine>> {
        let connection = self.lock();
        let mut statement = connection.prepare_cached(
            "SELECT y_start_time, detection_time, patternId, actionType, customer, merchant
             FROM detected_patterns WHERE batch_no = ?1 ORDER BY id",
        )?;
        let lines = statement
            .query_map([to_i64(batch_no)], |row| {
                Ok(DetectionLine {
                    y_start_time: row.get(0)?,
                    detection_time: row.get(1)?,
                    pattern_id: row.get(2)?,
                    action_type: row.get(3)?,
                    customer: row.get(4)?,
                    merchant: row.get(5)?,
                })
            })?
            .collect::<Result<Vec<_>, _>>()?;
        Ok(lines)
    }

    async fn mark_batch_written(&self, fence: &Fence, batch_no: u64, at: &str) -> DbResult<()> {
        let mut connection = self.lock();
        let tx = connection.transaction_with_behavior(TransactionBehavior::Immediate)?;
        check_fence(&tx, fence)?;
        tx.execute(
            "UPDATE detection_batches SET written_at = ?2 WHERE batch_no = ?1",
            params![to_i64(batch_no), at],
        )?;
        tx.commit()?;
        Ok(())
    }

    async fn outbox(&self) -> DbResult<(u64, Option<String>)> {
        let connection = self.lock();
        let (count, oldest): (i64, Option<String>) = connection.query_row(
            "SELECT count(*), min(processed_at) FROM detected_patterns WHERE batch_no IS NULL",
            [],
            |row| Ok((row.get(0)?, row.get(1)?)),
        )?;
        Ok((to_u64(count), oldest))
    }

    async fn record_restart(&self, event: &RestartEvent) -> DbResult<()> {
        let connection = self.lock();
        connection.execute(
            "INSERT INTO restart_events (actor, reason, restart_count, at) VALUES (?1, ?2, ?3, ?4)",
            params![event.actor, event.reason, event.restart_count, event.at],
        )?;
        Ok(())
    }

    async fn status(&self, recent_restarts: usize) -> DbResult<StatusReport> {
        let connection = self.lock();
        let mut report = StatusReport::default();
        if let Some((next_seq, rows, finished)) = connection
            .query_row(
                "SELECT next_seq, rows_emitted, finished FROM chunker_position WHERE id = 1",
                [],
                |row| Ok((row.get::<_, i64>(0)?, row.get::<_, i64>(1)?, row.get(2)?)),
            )
            .optional()?
        {
            report.chunks_produced = to_u64(next_seq);
            report.rows_produced = to_u64(rows);
            report.chunker_finished = finished;
        }
        let (processed, rejected, rows, bad, last): (i64, i64, i64, i64, Option<String>) =
            connection.query_row(
                "SELECT count(*) FILTER (WHERE status = 'processed'),
                        count(*) FILTER (WHERE status = 'rejected'),
                        COALESCE(sum(rows), 0), COALESCE(sum(bad_rows), 0), max(chunk_name)
                 FROM processed_chunks",
                [],
                |row| {
                    Ok((
                        row.get(0)?,
                        row.get(1)?,
                        row.get(2)?,
                        row.get(3)?,
                        row.get(4)?,
                    ))
                },
            )?;
        report.chunks_processed = to_u64(processed);
        report.chunks_rejected = to_u64(rejected);
        report.rows_processed = to_u64(rows);
        report.bad_rows = to_u64(bad);
        report.last_chunk = last;
        let mut statement = connection.prepare(
            "SELECT patternId, count(*) FROM detected_patterns GROUP BY patternId ORDER BY patternId",
        )?;
        report.detections = statement
            .query_map([], |row| Ok((row.get(0)?, to_u64(row.get(1)?))))?
            .collect::<Result<Vec<_>, _>>()?;
        let (written, pending): (i64, i64) = connection.query_row(
            "SELECT count(written_at), count(*) - count(written_at) FROM detection_batches",
            [],
            |row| Ok((row.get(0)?, row.get(1)?)),
        )?;
        report.batches_written = to_u64(written);
        report.batches_pending = to_u64(pending);
        report.detections_unbatched = to_u64(connection.query_row(
            "SELECT count(*) FROM detected_patterns WHERE batch_no IS NULL",
            [],
            |row| row.get(0),
        )?);
        let mut statement = connection.prepare(
            "SELECT actor, reason, restart_count, at FROM restart_events ORDER BY id DESC LIMIT ?1",
        )?;
        report.recent_restarts = statement
            .query_map([recent_restarts as i64], |row| {
                Ok(RestartEvent {
                    actor: row.get(0)?,
                    reason: row.get(1)?,
                    restart_count: row.get(2)?,
                    at: row.get(3)?,
                })
            })?
            .collect::<Result<Vec<_>, _>>()?;
        report.last_seq = connection
            .query_row("SELECT max(seq) FROM processed_chunks", [], |row| {
                row.get::<_, Option<i64>>(0)
            })?
            .map(to_u64);
        report.ignored_objects = to_u64(connection.query_row(
            "SELECT count(*) FROM ignored_objects",
            [],
            |row| row.get(0),
        )?);
        report.now_ms = now_ms(&connection)?;
        report.owner = read_lease(&connection, lease::PIPELINE_LEASE)?;
        let mut statement = connection.prepare(
            "SELECT lease, owner_id, host, pid, since_ms, expires_at_ms FROM lease_standbys
             WHERE expires_at_ms > ?1 ORDER BY since_ms",
        )?;
        report.standbys = statement
            .query_map([report.now_ms], |row| {
                Ok(StandbyRow {
                    lease: row.get(0)?,
                    owner_id: row.get(1)?,
                    host: row.get(2)?,
                    pid: row.get(3)?,
                    since_ms: row.get(4)?,
                    expires_at_ms: row.get(5)?,
                })
            })?
            .collect::<Result<Vec<_>, _>>()?;
        Ok(report)
    }
}
