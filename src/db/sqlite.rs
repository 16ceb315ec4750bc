//! The embedded state store: one SQLite file in WAL mode, served by a
//! thread of its own.
//!
//! The store's thread owns the connection. Each call of [`StateStore`]
//! becomes a job (a boxed closure) sent over a channel to that thread, and
//! its answer comes back over a oneshot channel the calling task awaits, so
//! no async worker ever blocks on the database; the jobs run one at a time,
//! as SQLite allows a single writer anyway. Scans stream their rows back in
//! batches (see [`super::scan`]). What the two databases must agree on
//! (commit decisions, batch numbering, row decoding, `status`) is in
//! [`super::rules`] and the statements they share in [`super::sql`]; this
//! file keeps SQLite's own: transactions (`BEGIN IMMEDIATE`, which makes
//! the fence check race-free), row-by-row inserts, and the WAL.
//!
//! `synchronous = NORMAL` in WAL mode survives any crash of the process; a
//! power loss may lose the last commits but never leaves them half
//! applied. Copying the WAL into the database file (a checkpoint) happens
//! on a second connection, beside the commits: from a thread of the
//! store's own once the WAL grows past 1,000 pages, and after compactions.

use std::panic::AssertUnwindSafe;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use rusqlite::{Connection, Params, TransactionBehavior, params};

use super::lease::{self, Decision};
use super::rules::{self, Columns, CommitRows, to_i64, to_u64};
use super::scan::{self, PairPart, Rows, Sink};
use super::sql;
use super::{
    Batch, ChunkClaims, ChunkerPosition, Claimant, CommitBatch, CommitOutcome, DbError, DbResult,
    DetectionLine, EmittedRow, Fence, IgnoredObject, LeaseGrant, LeaseRow, LookupSource, PairRow,
    Renewal, RestartEvent, StateStore, StatusReport, WeightRow,
};
use crate::detect::Gender;

mod embedded {
    refinery::embed_migrations!("migrations/sqlite");
}

/// Work for the store's thread, on its connection.
type Job = Box<dyn FnOnce(&mut Connection) + Send>;

pub struct SqliteStore {
    /// To the thread that owns the connection; it ends when this goes.
    jobs: crossbeam_channel::Sender<Job>,
    worker: Option<std::thread::JoinHandle<()>>,
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

/// The database's clock, in milliseconds since the Unix epoch.
const NOW_MS: &str = "SELECT CAST((julianday('now') - 2440587.5) * 86400000.0 AS INTEGER)";

const SELECT_PAIRS: &str =
    "SELECT merchant, customer, txn_count, amount_cents, gender FROM pair_state";

impl Columns for rusqlite::Row<'_> {
    fn int(&self, index: usize) -> DbResult<i64> {
        Ok(self.get(index)?)
    }
    fn opt_int(&self, index: usize) -> DbResult<Option<i64>> {
        Ok(self.get(index)?)
    }
    fn text(&self, index: usize) -> DbResult<String> {
        Ok(self.get(index)?)
    }
    fn opt_text(&self, index: usize) -> DbResult<Option<String>> {
        Ok(self.get(index)?)
    }
    fn flag(&self, index: usize) -> DbResult<bool> {
        Ok(self.get(index)?)
    }
}

/// Decodes the rows of `sql` with one of [`rules`]' decoders.
fn query_all<T>(
    connection: &Connection,
    sql: &str,
    params: impl Params,
    decode: fn(&dyn Columns) -> DbResult<T>,
) -> DbResult<Vec<T>> {
    let mut statement = connection.prepare_cached(sql)?;
    let mut rows = statement.query(params)?;
    let mut decoded = Vec::new();
    while let Some(row) = rows.next()? {
        decoded.push(decode(row)?);
    }
    Ok(decoded)
}

/// The first row of `sql`, if any, decoded.
fn query_opt<T>(
    connection: &Connection,
    sql: &str,
    params: impl Params,
    decode: fn(&dyn Columns) -> DbResult<T>,
) -> DbResult<Option<T>> {
    let mut statement = connection.prepare_cached(sql)?;
    let mut rows = statement.query(params)?;
    rows.next()?.map(|row| decode(row)).transpose()
}

/// The row of a query that always has one (an aggregate).
fn query_one<T>(
    connection: &Connection,
    sql: &str,
    params: impl Params,
    decode: fn(&dyn Columns) -> DbResult<T>,
) -> DbResult<T> {
    query_opt(connection, sql, params, decode)?
        .ok_or_else(|| DbError::Failed(format!("no row from {sql}")))
}

fn stopped() -> DbError {
    DbError::Failed("the SQLite thread has stopped".into())
}

impl SqliteStore {
    /// Opens (creating if needed) the database of a `sqlite://PATH` URL,
    /// and starts the store's thread.
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
        let backstop = checkpointer.clone();
        connection.wal_hook(Some(move |_: &mut rusqlite::hooks::Wal, pages| {
            if pages >= WAL_BACKSTOP_PAGES {
                // On the checkpointer's connection, after the background
                // checkpoint in progress if there is one (on this one, it
                // would be refused as busy). The commit is in the WAL
                // already: an error here must not report it as failed.
                if let Err(error) = passive_checkpoint(&backstop) {
                    tracing::warn!(%error, "WAL backstop checkpoint failed");
                }
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
        let (jobs, queue) = crossbeam_channel::unbounded::<Job>();
        let worker = std::thread::Builder::new()
            .name("sqlite".into())
            .spawn(move || {
                let mut connection = connection;
                // Ends when the store, and with it the sender, goes.
                while let Ok(job) = queue.recv() {
                    job(&mut connection);
                }
            })
            .map_err(|e| DbError::Failed(format!("cannot start the SQLite thread: {e}")))?;
        Ok(SqliteStore {
            jobs,
            worker: Some(worker),
            checkpointer,
            path: path.to_path_buf(),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Runs `work` on the store's thread and waits for its answer. A panic
    /// in `work` resumes in the caller (any open transaction was rolled
    /// back as it unwound, so the connection stays usable).
    async fn call<T: Send + 'static>(
        &self,
        work: impl FnOnce(&mut Connection) -> DbResult<T> + Send + 'static,
    ) -> DbResult<T> {
        let (reply, answer) = tokio::sync::oneshot::channel();
        self.jobs
            .send(Box::new(move |connection| {
                let _ = reply.send(std::panic::catch_unwind(AssertUnwindSafe(|| {
                    work(connection)
                })));
            }))
            .map_err(|_| stopped())?;
        match answer.await {
            Ok(Ok(result)) => result,
            Ok(Err(panic)) => std::panic::resume_unwind(panic),
            Err(_) => Err(stopped()),
        }
    }

    /// Runs a scan on the store's thread; its rows come back in batches.
    fn stream<T: Send + 'static>(
        &self,
        produce: impl FnOnce(&Connection, &mut Sink<T>) -> DbResult<()> + Send + 'static,
    ) -> DbResult<Rows<T>> {
        let (mut sink, rows) = scan::channel();
        self.jobs
            .send(Box::new(move |connection| {
                let result =
                    std::panic::catch_unwind(AssertUnwindSafe(|| produce(connection, &mut sink)))
                        .unwrap_or_else(|_| Err(DbError::Failed("a scan panicked".into())));
                sink.finish_blocking(result);
            }))
            .map_err(|_| stopped())?;
        Ok(rows)
    }

    /// Streams every row of `sql` (no parameters), each made owned by
    /// `convert`.
    fn stream_rows<T: Send + 'static>(
        &self,
        sql: &'static str,
        convert: fn(&rusqlite::Row<'_>) -> DbResult<T>,
    ) -> DbResult<Rows<T>> {
        self.stream(move |connection, sink| {
            let mut statement = connection.prepare(sql)?;
            let mut rows = statement.query([])?;
            while let Some(row) = rows.next()? {
                if !sink.push_blocking(convert(row)?) {
                    break;
                }
            }
            Ok(())
        })
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

fn now_ms(connection: &Connection) -> DbResult<i64> {
    Ok(connection.query_row(NOW_MS, [], |row| row.get(0))?)
}

fn read_lease(connection: &Connection, name: &str) -> DbResult<Option<LeaseRow>> {
    query_opt(connection, sql::SELECT_LEASE, [name], rules::lease_row)
}

/// Opens a write transaction and refuses it unless `fence` still holds its
/// lease. Inside a write transaction (`BEGIN IMMEDIATE`), nobody can take
/// the lease over before it ends: SQLite has one writer at a time.
fn fenced<'c>(
    connection: &'c mut Connection,
    fence: &Fence,
) -> DbResult<rusqlite::Transaction<'c>> {
    let tx = connection.transaction_with_behavior(TransactionBehavior::Immediate)?;
    lease::check(fence, read_lease(&tx, &fence.lease)?.as_ref()).map_err(DbError::Fenced)?;
    Ok(tx)
}

impl Drop for SqliteStore {
    /// Closes the connection before the store is gone, as closing the last
    /// connection of a WAL database checkpoints it and removes the WAL.
    fn drop(&mut self) {
        let (closed, _) = crossbeam_channel::bounded(0);
        drop(std::mem::replace(&mut self.jobs, closed));
        if let Some(worker) = self.worker.take()
            && worker.thread().id() != std::thread::current().id()
        {
            let _ = worker.join();
        }
    }
}

/// Two processes started at once must not both apply the same migration:
/// an exclusive lock on a file beside the database serializes them (the
/// second then finds nothing left to do).
fn migrate(connection: &mut Connection, path: &Path) -> DbResult<()> {
    let lock_path = {
        let mut name = path.to_path_buf().into_os_string();
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
    embedded::migrations::runner()
        .run(connection)
        .map_err(|e| DbError::Failed(format!("migrations: {e}")))?;
    Ok(())
}

/// Lookup rows, owned (they move to the store's thread): the names of all
/// rows in one buffer, and per row where its merchant and customer end,
/// its weight sum and its row count.
struct LookupRows {
    names: String,
    rows: Vec<(usize, usize, i64, i64)>,
}

impl LookupRows {
    fn of(rows: &[WeightRow<'_>]) -> LookupRows {
        let mut names = String::new();
        let mut ends = Vec::with_capacity(rows.len());
        for row in rows {
            names.push_str(row.merchant);
            let merchant_end = names.len();
            names.push_str(row.customer);
            ends.push((merchant_end, names.len(), row.weight_sum, to_i64(row.rows)));
        }
        LookupRows { names, rows: ends }
    }
}

fn load_lookup(
    connection: &mut Connection,
    fence: &Fence,
    source: &LookupSource,
    lookup: &LookupRows,
) -> DbResult<()> {
    let tx = fenced(connection, fence)?;
    tx.execute("DELETE FROM customer_importance", [])?;
    {
        let mut insert = tx.prepare(
            "INSERT INTO customer_importance (merchant, customer, weight_sum_cents, weight_rows)
             VALUES (?1, ?2, ?3, ?4)",
        )?;
        let mut start = 0;
        for &(merchant_end, customer_end, sum, count) in &lookup.rows {
            let merchant = &lookup.names[start..merchant_end];
            let customer = &lookup.names[merchant_end..customer_end];
            insert.execute(params![merchant, customer, sum, count])?;
            start = customer_end;
        }
    }
    tx.execute(
        sql::SAVE_LOOKUP_SOURCE,
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

fn save_chunker_position(
    connection: &mut Connection,
    fence: &Fence,
    position: &ChunkerPosition,
) -> DbResult<()> {
    let tx = fenced(connection, fence)?;
    tx.execute(
        sql::SAVE_CHUNKER_POSITION,
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

fn acquire_lease(
    connection: &mut Connection,
    name: String,
    me: Claimant,
    ttl_ms: u64,
    dead_epoch: Option<u64>,
) -> DbResult<LeaseGrant> {
    let tx = connection.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let now = now_ms(&tx)?;
    let current = read_lease(&tx, &name)?;
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
            now.saturating_add(to_i64(ttl_ms))
        ],
    )?;
    tx.execute(sql::REMOVE_STANDBY, [&me.owner_id])?;
    tx.commit()?;
    Ok(LeaseGrant::Granted(Fence {
        lease: name,
        owner_id: me.owner_id,
        epoch,
    }))
}

fn renew_lease(connection: &mut Connection, fence: &Fence, ttl_ms: u64) -> DbResult<Renewal> {
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

fn compact(
    connection: &mut Connection,
    checkpointer: &Mutex<Connection>,
    fence: &Fence,
    max_chunks: usize,
) -> DbResult<u64> {
    let tx = fenced(connection, fence)?;
    let mut merged = super::delta::Merged::default();
    let mut last: Option<String> = None;
    let mut folded = 0u64;
    {
        let mut statement = tx.prepare(sql::OLDEST_DELTAS)?;
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
    tx.execute(sql::DELETE_DELTAS_UP_TO, [&last])?;
    tx.commit()?;
    passive_checkpoint(checkpointer)?;
    Ok(folded)
}

fn commit(
    connection: &mut Connection,
    fence: &Fence,
    rows: &CommitRows,
) -> DbResult<CommitOutcome> {
    let tx = fenced(connection, fence)?;
    let last = query_one(&tx, sql::LAST_CHUNK, [], rules::opt_name)?;
    if let Some(outcome) = rows.stale(last) {
        return Ok(outcome);
    }
    {
        let mut insert_delta = tx.prepare_cached(INSERT_DELTA)?;
        for (chunk, blob) in rows.deltas.chunk.iter().zip(&rows.deltas.blob) {
            insert_delta.execute(params![chunk, blob])?;
        }
        let c = &rows.chunks;
        let mut insert_chunk = tx.prepare_cached(INSERT_CHUNK)?;
        for (i, name) in c.name.iter().enumerate() {
            insert_chunk.execute(params![
                name,
                c.seq[i],
                c.status[i],
                c.rows[i],
                c.bad_rows[i],
                c.detections[i],
                c.reason[i],
                rows.processed_at
            ])?;
        }
        let d = &rows.detections;
        let mut insert_detection = tx.prepare_cached(INSERT_DETECTION)?;
        for (i, customer) in d.customer.iter().enumerate() {
            insert_detection.execute(params![
                customer,
                d.merchant[i],
                d.txn_count[i],
                d.avg_weight[i],
                d.avg_amount[i],
                d.txn_rank[i],
                d.weight_rank[i],
                d.female[i],
                d.male[i],
                d.pattern_id[i],
                d.action_type[i],
                d.chunk_name[i],
                rows.processed_at,
                d.y_start_time[i],
                d.detection_time[i]
            ])?;
        }
    }
    crate::pause_points::reached("commit");
    tx.commit()?;
    Ok(CommitOutcome::Committed)
}

fn assign_batches(
    connection: &mut Connection,
    fence: &Fence,
    size: u64,
    include_partial: bool,
    stamp: &str,
) -> DbResult<u64> {
    let tx = fenced(connection, fence)?;
    let (unbatched, last_batch_no) = query_one(&tx, sql::BATCH_PLAN_INPUT, [], |row| {
        Ok((to_u64(row.int(0)?), to_u64(row.int(1)?)))
    })?;
    let plan = rules::plan_batches(unbatched, last_batch_no, size, include_partial, stamp);
    let created_at = crate::clock::now_ist();
    for batch in &plan {
        tx.execute(
            sql::ASSIGN_OLDEST,
            params![batch.batch_no, batch.detections],
        )?;
        tx.execute(
            sql::INSERT_BATCH,
            params![batch.batch_no, batch.key, batch.detections, created_at],
        )?;
    }
    tx.commit()?;
    Ok(plan.len() as u64)
}

fn status(connection: &Connection, recent_restarts: usize) -> DbResult<StatusReport> {
    let now_ms = now_ms(connection)?;
    Ok(rules::StatusRows {
        chunker: query_opt(
            connection,
            sql::CHUNKER_PROGRESS,
            [],
            rules::chunker_progress,
        )?,
        counts: query_one(connection, sql::STATUS_COUNTS, [], rules::status_counts)?,
        detections: query_all(
            connection,
            sql::DETECTIONS_BY_PATTERN,
            [],
            rules::pattern_count,
        )?,
        recent_restarts: query_all(
            connection,
            sql::RECENT_RESTARTS,
            [recent_restarts as i64],
            rules::restart_event,
        )?,
        lease: read_lease(connection, lease::PIPELINE_LEASE)?,
        now_ms,
        standbys: query_all(connection, sql::LIVE_STANDBYS, [now_ms], rules::standby_row)?,
    }
    .report())
}

fn pair(row: &rusqlite::Row<'_>) -> DbResult<scan::OwnedPair> {
    Ok((
        row.get(0)?,
        row.get(1)?,
        row.get(2)?,
        row.get(3)?,
        Gender::from_code(row.get_ref(4)?.as_str()?),
    ))
}

#[async_trait]
impl StateStore for SqliteStore {
    async fn migrate(&self) -> DbResult<()> {
        let path = self.path.clone();
        self.call(move |connection| migrate(connection, &path))
            .await
    }

    async fn lookup_source(&self) -> DbResult<Option<LookupSource>> {
        self.call(|c| query_opt(c, sql::LOOKUP_SOURCE, [], rules::lookup_source))
            .await
    }

    async fn load_lookup(
        &self,
        fence: &Fence,
        source: &LookupSource,
        rows: &[WeightRow<'_>],
    ) -> DbResult<()> {
        let (fence, source) = (fence.clone(), source.clone());
        let rows = LookupRows::of(rows);
        self.call(move |c| load_lookup(c, &fence, &source, &rows))
            .await
    }

    async fn scan_weights(
        &self,
        visit: &mut (dyn for<'r> FnMut(WeightRow<'r>) + Send),
    ) -> DbResult<()> {
        let rows = self.stream_rows(
            "SELECT merchant, customer, weight_sum_cents, weight_rows FROM customer_importance",
            |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?, row.get(3)?)),
        )?;
        scan::visit_all(rows, scan::visit_weights(visit)).await
    }

    async fn chunker_position(&self) -> DbResult<Option<ChunkerPosition>> {
        self.call(|c| query_opt(c, sql::CHUNKER_POSITION, [], rules::chunker_position))
            .await
    }

    async fn save_chunker_position(
        &self,
        fence: &Fence,
        position: &ChunkerPosition,
    ) -> DbResult<()> {
        let (fence, position) = (fence.clone(), position.clone());
        self.call(move |c| save_chunker_position(c, &fence, &position))
            .await
    }

    async fn chunk_claims(&self, from_seq: u64, limit: usize) -> DbResult<ChunkClaims> {
        self.call(move |c| {
            let progress = query_opt(c, sql::CHUNKER_PROGRESS, [], rules::chunker_progress)?;
            let (chunker_next_seq, _, chunker_finished) = progress.unwrap_or_default();
            Ok(ChunkClaims {
                keys: query_all(
                    c,
                    sql::CHUNK_KEYS_FROM,
                    params![to_i64(from_seq), limit as i64],
                    rules::chunk_key,
                )?,
                chunker_next_seq,
                chunker_finished,
            })
        })
        .await
    }

    async fn processed_names_between(&self, first: &str, last: &str) -> DbResult<Vec<String>> {
        let (first, last) = (first.to_string(), last.to_string());
        self.call(move |c| query_all(c, sql::PROCESSED_BETWEEN, [first, last], |row| row.text(0)))
            .await
    }

    async fn record_ignored(&self, fence: &Fence, object: &IgnoredObject) -> DbResult<bool> {
        let (fence, object) = (fence.clone(), object.clone());
        self.call(move |c| {
            let tx = fenced(c, &fence)?;
            let inserted = tx.execute(
                sql::RECORD_IGNORED,
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
        })
        .await
    }

    async fn acquire_lease(
        &self,
        name: &str,
        me: &Claimant,
        ttl_ms: u64,
        dead_epoch: Option<u64>,
    ) -> DbResult<LeaseGrant> {
        let (name, me) = (name.to_string(), me.clone());
        self.call(move |c| acquire_lease(c, name, me, ttl_ms, dead_epoch))
            .await
    }

    async fn renew_lease(&self, fence: &Fence, ttl_ms: u64) -> DbResult<Renewal> {
        let fence = fence.clone();
        self.call(move |c| renew_lease(c, &fence, ttl_ms)).await
    }

    async fn release_lease(&self, fence: &Fence) -> DbResult<()> {
        let fence = fence.clone();
        self.call(move |c| {
            let now = now_ms(c)?;
            c.execute(
                "UPDATE leases SET expires_at_ms = ?4
                 WHERE name = ?1 AND owner_id = ?2 AND epoch = ?3",
                params![fence.lease, fence.owner_id, to_i64(fence.epoch), now],
            )?;
            Ok(())
        })
        .await
    }

    async fn register_standby(&self, name: &str, me: &Claimant, ttl_ms: u64) -> DbResult<()> {
        let (name, me) = (name.to_string(), me.clone());
        self.call(move |c| {
            let now = now_ms(c)?;
            c.execute(
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
        })
        .await
    }

    async fn remove_standby(&self, me: &Claimant) -> DbResult<()> {
        let owner_id = me.owner_id.clone();
        self.call(move |c| Ok(c.execute(sql::REMOVE_STANDBY, [owner_id]).map(drop)?))
            .await
    }

    async fn last_chunk(&self) -> DbResult<Option<String>> {
        self.call(|c| query_one(c, sql::LAST_CHUNK, [], rules::opt_name))
            .await
    }

    async fn scan_compacted_pairs(
        &self,
        visit: &mut (dyn for<'r> FnMut(PairRow<'r>) + Send),
    ) -> DbResult<()> {
        let rows = self.stream_rows(SELECT_PAIRS, pair)?;
        scan::visit_all(rows, scan::visit_pairs(visit)).await
    }

    async fn scan_pairs(
        &self,
        visit: &mut (dyn for<'r> FnMut(PairRow<'r>) + Send),
    ) -> DbResult<()> {
        // Both reads in one job: nothing can compact in between.
        let parts = self.stream(|connection, sink| {
            let mut deltas = connection.prepare(sql::PENDING_DELTAS)?;
            let mut rows = deltas.query([])?;
            while let Some(row) = rows.next()? {
                if !sink.push_blocking(PairPart::Delta(row.get(0)?)) {
                    return Ok(());
                }
            }
            let mut pairs = connection.prepare(SELECT_PAIRS)?;
            let mut rows = pairs.query([])?;
            while let Some(row) = rows.next()? {
                if !sink.push_blocking(PairPart::Pair(pair(row)?)) {
                    break;
                }
            }
            Ok(())
        })?;
        scan::merge_pairs(parts, visit).await
    }

    async fn pending_deltas(&self) -> DbResult<Vec<Vec<u8>>> {
        self.call(|c| {
            let mut statement = c.prepare(sql::PENDING_DELTAS)?;
            let blobs = statement
                .query_map([], |row| row.get(0))?
                .collect::<Result<Vec<Vec<u8>>, _>>()?;
            Ok(blobs)
        })
        .await
    }

    async fn pending_delta_count(&self) -> DbResult<u64> {
        self.call(|c| query_one(c, sql::PENDING_DELTA_COUNT, [], rules::count))
            .await
    }

    async fn compact(&self, fence: &Fence, max_chunks: usize) -> DbResult<u64> {
        let (fence, checkpointer) = (fence.clone(), self.checkpointer.clone());
        self.call(move |c| compact(c, &checkpointer, &fence, max_chunks))
            .await
    }

    async fn scan_emitted(
        &self,
        visit: &mut (dyn for<'r> FnMut(EmittedRow<'r>) + Send),
    ) -> DbResult<()> {
        let rows = self.stream_rows(
            "SELECT patternId, merchant, customer FROM detected_patterns",
            |row| {
                Ok((
                    scan::pattern(row.get_ref(0)?.as_str()?)?,
                    row.get(1)?,
                    row.get(2)?,
                ))
            },
        )?;
        scan::visit_all(rows, scan::visit_emitted(visit)).await
    }

    async fn commit(&self, fence: &Fence, batch: &CommitBatch<'_>) -> DbResult<CommitOutcome> {
        let Some(rows) = CommitRows::of(batch) else {
            return Ok(CommitOutcome::Committed);
        };
        let fence = fence.clone();
        self.call(move |c| commit(c, &fence, &rows)).await
    }

    async fn assign_batches(
        &self,
        fence: &Fence,
        size: u64,
        include_partial: bool,
        stamp: &str,
    ) -> DbResult<u64> {
        let (fence, stamp) = (fence.clone(), stamp.to_string());
        self.call(move |c| assign_batches(c, &fence, size, include_partial, &stamp))
            .await
    }

    async fn unwritten_batches(&self) -> DbResult<Vec<Batch>> {
        self.call(|c| query_all(c, sql::UNWRITTEN_BATCHES, [], rules::batch))
            .await
    }

    async fn batch_lines(&self, batch_no: u64) -> DbResult<Vec<DetectionLine>> {
        self.call(move |c| {
            query_all(
                c,
                "SELECT y_start_time, detection_time, patternId, actionType, customer, merchant
                 FROM detected_patterns WHERE batch_no = ?1 ORDER BY id",
                [to_i64(batch_no)],
                rules::detection_line,
            )
        })
        .await
    }

    async fn mark_batch_written(&self, fence: &Fence, batch_no: u64, at: &str) -> DbResult<()> {
        let (fence, at) = (fence.clone(), at.to_string());
        self.call(move |c| {
            let tx = fenced(c, &fence)?;
            tx.execute(sql::MARK_BATCH_WRITTEN, params![at, to_i64(batch_no)])?;
            tx.commit()?;
            Ok(())
        })
        .await
    }

    async fn outbox(&self) -> DbResult<(u64, Option<String>)> {
        self.call(|c| query_one(c, sql::OUTBOX, [], rules::outbox))
            .await
    }

    async fn record_restart(&self, event: &RestartEvent) -> DbResult<()> {
        let event = event.clone();
        self.call(move |c| {
            c.execute(
                sql::RECORD_RESTART,
                params![event.actor, event.reason, event.restart_count, event.at],
            )?;
            Ok(())
        })
        .await
    }

    async fn status(&self, recent_restarts: usize) -> DbResult<StatusReport> {
        self.call(move |c| status(c, recent_restarts)).await
    }
}
