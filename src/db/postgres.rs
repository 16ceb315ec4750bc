//! The production state store: PostgreSQL through a bb8 pool of
//! tokio-postgres connections (TLS with `sslmode=require`).
//!
//! Every call runs on the process's I/O runtime. A commit takes an advisory
//! transaction lock (one committer at a time, even across processes),
//! checks the last committed chunk, bulk-loads the pair deltas with binary
//! COPY into a temporary table and upserts them with
//! `INSERT ... ON CONFLICT DO UPDATE`, and inserts the chunks' rows and the
//! detections with one multi-row statement each. Lost connections and
//! server restarts are reported as transient so that callers retry.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use bb8::{CustomizeConnection, ErrorSink, Pool};
use bb8_postgres::PostgresConnectionManager;
use futures::{TryStreamExt, pin_mut};
use postgres_native_tls::MakeTlsConnector;
use tokio::sync::mpsc;
use tokio_postgres::Client;
use tokio_postgres::binary_copy::BinaryCopyInWriter;
use tokio_postgres::error::SqlState;
use tokio_postgres::types::{ToSql, Type};

use super::lease::{self, Decision};
use super::{
    Batch, ChunkClaims, ChunkerPosition, Claimant, CommitBatch, CommitOutcome, DbError, DbResult,
    DetectionLine, EmittedRow, Fence, IgnoredObject, LeaseGrant, LeaseRow, LookupSource, PairRow,
    Renewal, RestartEvent, StandbyRow, StateStore, StatusReport, WeightRow,
};
use crate::detect::{Gender, Pattern};
use crate::io_runtime;

mod embedded {
    refinery::embed_migrations!("migrations/postgres");
}

type Manager = PostgresConnectionManager<MakeTlsConnector>;

/// Advisory lock keys: commits, batch assignment, compaction, migrations.
const COMMIT_LOCK: i64 = 0x7478_7069_7065_0001;
const BATCH_LOCK: i64 = 0x7478_7069_7065_0002;
const COMPACT_LOCK: i64 = 0x7478_7069_7065_0003;
const MIGRATE_LOCK: i64 = 0x7478_7069_7065_0004;

/// The database's clock, in milliseconds since the Unix epoch.
const NOW_MS: &str = "(extract(epoch from clock_timestamp()) * 1000)::bigint";

const SELECT_LEASE: &str = "SELECT name, owner_id, host, pid, epoch, acquired_at_ms, expires_at_ms
                            FROM leases WHERE name = $1";

fn lease_row(row: &tokio_postgres::Row) -> LeaseRow {
    LeaseRow {
        name: row.get(0),
        owner_id: row.get(1),
        host: row.get(2),
        pid: u32::try_from(row.get::<_, i64>(3)).unwrap_or(0),
        epoch: to_u64(row.get(4)),
        acquired_at_ms: row.get(5),
        expires_at_ms: row.get(6),
    }
}

/// The transaction-scoped advisory lock of a lease: fenced transactions
/// hold it shared, a takeover exclusively.
const LEASE_LOCK_SHARED: &str = "SELECT pg_advisory_xact_lock_shared(hashtextextended($1, 0))";
const LEASE_LOCK_EXCLUSIVE: &str = "SELECT pg_advisory_xact_lock(hashtextextended($1, 0))";

/// Refuses the transaction unless `fence` still holds its lease.
///
/// Race-free under READ COMMITTED: the transaction first takes the lease's
/// advisory lock shared, then reads the lease row in a second statement
/// (with a snapshot taken after the lock). A takeover takes the same lock
/// exclusively before it bumps the epoch, so it waits for every fenced
/// transaction in flight, and every fenced transaction that starts after it
/// reads the new epoch. The lock lives in the server's lock table, so a
/// commit writes nothing to the lease row (a row lock would, on every
/// commit); heartbeats, plain updates of the expiry, do not wait for it.
/// Both statements go out together (tokio-postgres pipelines them).
async fn check_fence(tx: &tokio_postgres::Transaction<'_>, fence: &Fence) -> DbResult<()> {
    let name: [&(dyn ToSql + Sync); 1] = [&fence.lease];
    let (locked, row) = futures::join!(
        tx.execute(LEASE_LOCK_SHARED, &name),
        tx.query_opt(SELECT_LEASE, &name)
    );
    locked?;
    lease::check(fence, row?.map(|row| lease_row(&row)).as_ref()).map_err(DbError::Fenced)
}

#[derive(Clone)]
pub struct PostgresStore {
    pool: Pool<Manager>,
    last_connect_error: LastError,
}

/// Keeps the pool's last connection error: bb8 opens connections in the
/// background and only tells a waiting caller that it timed out.
#[derive(Clone, Debug, Default)]
struct LastError(Arc<Mutex<Option<String>>>);

impl ErrorSink<tokio_postgres::Error> for LastError {
    fn sink(&self, error: tokio_postgres::Error) {
        *self.0.lock().unwrap_or_else(|e| e.into_inner()) = Some(describe(&error));
    }

    fn boxed_clone(&self) -> Box<dyn ErrorSink<tokio_postgres::Error>> {
        Box::new(self.clone())
    }
}

/// Sets up every new connection: the temporary table the commits COPY
/// into, and how long a transaction may sit idle before the server ends it.
#[derive(Debug)]
struct SessionSetup {
    setup: String,
}

impl SessionSetup {
    fn new(idle_in_transaction: Option<Duration>) -> SessionSetup {
        let mut setup = "CREATE TEMP TABLE IF NOT EXISTS pair_delta (
                 merchant TEXT, customer TEXT, txn_count BIGINT, amount_cents BIGINT, gender TEXT
             ) ON COMMIT DELETE ROWS;"
            .to_string();
        if let Some(timeout) = idle_in_transaction {
            // A process frozen in the middle of a transaction (SIGSTOP, a
            // paused VM) would otherwise hold its locks, and with them the
            // ownership lease row, for as long as it stays frozen.
            setup.push_str(&format!(
                "SET idle_in_transaction_session_timeout = {};",
                timeout.as_millis()
            ));
        }
        SessionSetup { setup }
    }
}

impl CustomizeConnection<Client, tokio_postgres::Error> for SessionSetup {
    fn on_acquire<'a>(
        &'a self,
        client: &'a mut Client,
    ) -> Pin<Box<dyn Future<Output = Result<(), tokio_postgres::Error>> + Send + 'a>> {
        Box::pin(client.batch_execute(&self.setup))
    }
}

fn describe(error: &tokio_postgres::Error) -> String {
    match error.as_db_error() {
        Some(db) => format!("{} ({})", db.message(), db.code().code()),
        None => {
            let mut text = error.to_string();
            let mut source = std::error::Error::source(error);
            while let Some(cause) = source {
                text.push_str(": ");
                text.push_str(&cause.to_string());
                source = cause.source();
            }
            text
        }
    }
}

fn pg_error(error: tokio_postgres::Error) -> DbError {
    let transient = match error.code() {
        None => true, // I/O, closed connection, timeouts
        Some(code) => [
            SqlState::ADMIN_SHUTDOWN,
            SqlState::CRASH_SHUTDOWN,
            SqlState::CANNOT_CONNECT_NOW,
            SqlState::T_R_SERIALIZATION_FAILURE,
            SqlState::T_R_DEADLOCK_DETECTED,
            SqlState::TOO_MANY_CONNECTIONS,
            SqlState::CONNECTION_EXCEPTION,
            SqlState::CONNECTION_FAILURE,
            SqlState::CONNECTION_DOES_NOT_EXIST,
            SqlState::LOCK_NOT_AVAILABLE,
            SqlState::QUERY_CANCELED,
        ]
        .contains(code),
    };
    let message = describe(&error);
    if transient {
        DbError::Unavailable(message)
    } else {
        DbError::Failed(message)
    }
}

impl From<tokio_postgres::Error> for DbError {
    fn from(error: tokio_postgres::Error) -> Self {
        pg_error(error)
    }
}

impl From<bb8::RunError<tokio_postgres::Error>> for DbError {
    fn from(error: bb8::RunError<tokio_postgres::Error>) -> Self {
        match error {
            bb8::RunError::User(error) => pg_error(error),
            bb8::RunError::TimedOut => {
                DbError::Unavailable("timed out waiting for a database connection".into())
            }
        }
    }
}

impl PostgresStore {
    /// Runs a database call on the I/O runtime.
    async fn run<T: Send + 'static>(
        &self,
        work: impl Future<Output = DbResult<T>> + Send + 'static,
    ) -> DbResult<T> {
        io_runtime::run(work).await.map_err(|e| self.explain(e))
    }

    /// Adds the pool's last connection error to a connection timeout.
    fn explain(&self, error: DbError) -> DbError {
        match error {
            DbError::Unavailable(message) if message.starts_with("timed out waiting") => match self
                .last_connect_error
                .0
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .clone()
            {
                Some(cause) => {
                    let message = format!("{message}; last connection error: {cause}");
                    if cause.contains("certificate") || cause.contains("password") {
                        DbError::Failed(message)
                    } else {
                        DbError::Unavailable(message)
                    }
                }
                None => DbError::Unavailable(message),
            },
            other => other,
        }
    }
}

fn to_i64(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

fn to_u64(value: i64) -> u64 {
    u64::try_from(value).unwrap_or(0)
}

/// Longest name stored as itself in a key column (see `V6__long_names.sql`):
/// two such names and the rest of an index entry stay well below the
/// B-tree's limit of about 2,700 bytes.
const KEY_NAME_BYTES: usize = 1000;

/// Marks a token standing for a long name in a key column.
const TOKEN_MARK: char = '\u{1}';

/// A name as key columns hold it: itself, or a token for a long one (or for
/// one that begins with the token mark, so that a token is never a name).
fn key_name(name: &str) -> std::borrow::Cow<'_, str> {
    use sha2::Digest as _;
    if name.len() <= KEY_NAME_BYTES && !name.starts_with(TOKEN_MARK) {
        return std::borrow::Cow::Borrowed(name);
    }
    let digest = sha2::Sha256::digest(name.as_bytes());
    let mut token = String::with_capacity(65);
    token.push(TOKEN_MARK);
    for byte in digest.iter() {
        token.push_str(&format!("{byte:02x}"));
    }
    std::borrow::Cow::Owned(token)
}

/// Collects the `(token, name)` rows that long names need in `long_names`.
#[derive(Default)]
struct LongNames {
    tokens: Vec<String>,
    names: Vec<String>,
}

impl LongNames {
    /// The key column value of `name`, remembering it if it is a token.
    fn key<'a>(&mut self, name: &'a str) -> std::borrow::Cow<'a, str> {
        let key = key_name(name);
        if let std::borrow::Cow::Owned(token) = &key {
            self.tokens.push(token.clone());
            self.names.push(name.to_string());
        }
        key
    }

    /// Saves them in the transaction that writes their tokens.
    async fn save(
        &self,
        tx: &tokio_postgres::Transaction<'_>,
    ) -> Result<(), tokio_postgres::Error> {
        if !self.tokens.is_empty() {
            tx.execute(
                "INSERT INTO long_names (token, name)
                 SELECT * FROM UNNEST($1::text[], $2::text[]) ON CONFLICT DO NOTHING",
                &[&self.tokens, &self.names],
            )
            .await?;
        }
        Ok(())
    }
}

/// SQL that reads a key column as the name it stands for.
macro_rules! name_of {
    ($column:literal) => {
        concat!(
            "CASE WHEN starts_with(",
            $column,
            ", chr(1)) THEN (SELECT name FROM long_names WHERE token = ",
            $column,
            ") ELSE ",
            $column,
            " END"
        )
    };
}

/// Every pair of `pair_state`, names as they are.
const SELECT_PAIRS: &str = concat!(
    "SELECT ",
    name_of!("merchant"),
    ", ",
    name_of!("customer"),
    ", txn_count, amount_cents, gender FROM pair_state"
);

const UPSERT_PAIRS: &str = "\
INSERT INTO pair_state (merchant, customer, txn_count, amount_cents, gender)
SELECT merchant, customer, txn_count, amount_cents, gender FROM pair_delta
ON CONFLICT (merchant, customer) DO UPDATE SET
    txn_count = pair_state.txn_count + EXCLUDED.txn_count,
    amount_cents = CASE
        WHEN pair_state.amount_cents > 9223372036854775807 - EXCLUDED.amount_cents THEN 9223372036854775807
        ELSE pair_state.amount_cents + EXCLUDED.amount_cents
    END";

const INSERT_CHUNKS: &str = "\
INSERT INTO processed_chunks (chunk_name, seq, status, rows, bad_rows, detections, reason, processed_at)
SELECT name, seq, status, rows, bad_rows, detections, reason, $8
FROM UNNEST($1::text[], $2::bigint[], $3::text[], $4::bigint[], $5::bigint[], $6::bigint[], $7::text[])
    AS c(name, seq, status, rows, bad_rows, detections, reason)";

const INSERT_DETECTIONS: &str = "\
INSERT INTO detected_patterns (customer, merchant, txn_count, avg_weight, avg_amount, txn_rank,
    weight_rank, F, M, patternId, actionType, chunk_name, processed_at, y_start_time, detection_time)
SELECT customer, merchant, txn_count, avg_weight, avg_amount, txn_rank, weight_rank, f, m,
       pattern_id, action_type, chunk_name, $14, $15, detection_time
FROM UNNEST($1::text[], $2::text[], $3::bigint[], $4::float8[], $5::float8[], $6::float8[],
            $7::float8[], $8::bigint[], $9::bigint[], $10::text[], $11::text[], $12::text[], $13::text[])
    WITH ORDINALITY AS d(customer, merchant, txn_count, avg_weight, avg_amount, txn_rank, weight_rank,
                         f, m, pattern_id, action_type, chunk_name, detection_time, ord)
ORDER BY ord";

/// A commit, owned, so it can move to the I/O runtime.
struct OwnedCommit {
    expected_last: Option<String>,
    final_chunk: String,
    processed_at: String,
    delta_chunks: Vec<String>,
    delta_blobs: Vec<Vec<u8>>,
    chunks: ChunkColumns,
    detections: DetectionColumns,
    long_names: LongNames,
}

#[derive(Default)]
struct ChunkColumns {
    name: Vec<String>,
    seq: Vec<Option<i64>>,
    status: Vec<&'static str>,
    rows: Vec<i64>,
    bad_rows: Vec<i64>,
    detections: Vec<i64>,
    reason: Vec<Option<String>>,
}

#[derive(Default)]
struct DetectionColumns {
    customer: Vec<String>,
    merchant: Vec<String>,
    txn_count: Vec<Option<i64>>,
    avg_weight: Vec<Option<f64>>,
    avg_amount: Vec<Option<f64>>,
    txn_rank: Vec<Option<f64>>,
    weight_rank: Vec<Option<f64>>,
    female: Vec<Option<i64>>,
    male: Vec<Option<i64>>,
    pattern_id: Vec<&'static str>,
    action_type: Vec<&'static str>,
    chunk_name: Vec<String>,
    detection_time: Vec<String>,
}

impl OwnedCommit {
    fn from_batch(batch: &CommitBatch<'_>, final_chunk: &str) -> OwnedCommit {
        let mut chunks = ChunkColumns::default();
        for chunk in batch.chunks {
            chunks.name.push(chunk.name.clone());
            chunks.seq.push(chunk.seq.map(to_i64));
            chunks.status.push(chunk.status.as_str());
            chunks.rows.push(to_i64(chunk.rows));
            chunks.bad_rows.push(to_i64(chunk.bad_rows));
            chunks.detections.push(to_i64(chunk.detections));
            chunks.reason.push(chunk.reason.clone());
        }
        let mut long_names = LongNames::default();
        let mut detections = DetectionColumns::default();
        for d in batch.detections {
            let e = &d.evidence;
            detections
                .customer
                .push(long_names.key(d.customer).into_owned());
            detections
                .merchant
                .push(long_names.key(d.merchant).into_owned());
            detections.txn_count.push(e.txn_count.map(to_i64));
            detections.avg_weight.push(e.weight.map(|w| w.as_f64()));
            detections.avg_amount.push(e.avg_amount());
            detections.txn_rank.push(e.txn_rank.map(|r| r.as_f64()));
            detections
                .weight_rank
                .push(e.weight_rank.map(|r| r.as_f64()));
            detections.female.push(e.female.map(to_i64));
            detections.male.push(e.male.map(to_i64));
            detections.pattern_id.push(d.pattern.id());
            detections.action_type.push(d.pattern.action());
            detections.chunk_name.push(d.chunk_name.to_string());
            detections.detection_time.push(d.detection_time.to_string());
        }
        OwnedCommit {
            expected_last: batch.expected_last.map(str::to_string),
            final_chunk: final_chunk.to_string(),
            processed_at: batch.processed_at.to_string(),
            delta_chunks: batch.deltas.iter().map(|d| d.chunk.to_string()).collect(),
            delta_blobs: batch.deltas.iter().map(|d| d.blob.to_vec()).collect(),
            chunks,
            detections,
            long_names,
        }
    }
}

const SCAN_BATCH: usize = 4096;

/// TLS as libpq does it: `sslmode=prefer` (the default) and `require`
/// encrypt without checking the server's certificate; `verify-ca` checks
/// the certificate chain and `verify-full` also the host name, against the
/// system roots or `sslrootcert=FILE`. Returns the URL as tokio-postgres
/// understands it (which knows only disable / prefer / require).
fn tls_settings(url: &str) -> DbResult<(String, native_tls::TlsConnector)> {
    let (base, query) = url.split_once('?').unwrap_or((url, ""));
    let mut kept = Vec::new();
    let mut mode = "prefer".to_string();
    let mut root_cert = None;
    for parameter in query.split('&').filter(|p| !p.is_empty()) {
        match parameter.split_once('=') {
            Some(("sslmode", value)) => mode = value.to_string(),
            Some(("sslrootcert", path)) => root_cert = Some(path.to_string()),
            _ => kept.push(parameter.to_string()),
        }
    }
    let mut builder = native_tls::TlsConnector::builder();
    let wire_mode = match mode.as_str() {
        "disable" | "prefer" | "require" => {
            builder
                .danger_accept_invalid_certs(true)
                .danger_accept_invalid_hostnames(true);
            mode.as_str()
        }
        "verify-ca" => {
            builder.danger_accept_invalid_hostnames(true);
            "require"
        }
        "verify-full" => "require",
        other => {
            return Err(DbError::Failed(format!(
                "database.url: unsupported sslmode {other:?} (disable, prefer, require, verify-ca, verify-full)"
            )));
        }
    };
    if let Some(path) = root_cert {
        let pem = std::fs::read(&path)
            .map_err(|e| DbError::Failed(format!("sslrootcert {path}: {e}")))?;
        let certificate = native_tls::Certificate::from_pem(&pem)
            .map_err(|e| DbError::Failed(format!("sslrootcert {path}: {e}")))?;
        builder.add_root_certificate(certificate);
    }
    let connector = builder
        .build()
        .map_err(|e| DbError::Failed(format!("TLS setup: {e}")))?;
    kept.push(format!("sslmode={wire_mode}"));
    Ok((format!("{base}?{}", kept.join("&")), connector))
}

impl PostgresStore {
    /// Builds the pool; connections open lazily (the first call, usually
    /// the migrations, reports an unreachable server).
    pub async fn connect(url: &str, pool_size: u32) -> DbResult<PostgresStore> {
        PostgresStore::connect_with(url, pool_size, None).await
    }

    /// [`PostgresStore::connect`], with sessions whose transactions the
    /// server ends after `idle_in_transaction` without a statement.
    pub async fn connect_with(
        url: &str,
        pool_size: u32,
        idle_in_transaction: Option<Duration>,
    ) -> DbResult<PostgresStore> {
        let (url, connector) = tls_settings(url)?;
        let mut config: tokio_postgres::Config = url
            .parse()
            .map_err(|e| DbError::Failed(format!("invalid database.url: {e}")))?;
        // Like libpq: a password can come from the environment instead of
        // the URL (so it never sits in a configuration file).
        if config.get_password().is_none()
            && let Ok(password) = std::env::var("PGPASSWORD")
        {
            config.password(password);
        }
        let manager = PostgresConnectionManager::new(config, MakeTlsConnector::new(connector));
        let last_connect_error = LastError::default();
        let sink = last_connect_error.clone();
        let pool = io_runtime::run(async move {
            Pool::builder()
                .max_size(pool_size)
                .connection_timeout(Duration::from_secs(5))
                .test_on_check_out(false)
                .retry_connection(false)
                .error_sink(Box::new(sink))
                .connection_customizer(Box::new(SessionSetup::new(idle_in_transaction)))
                .build_unchecked(manager)
        })
        .await;
        Ok(PostgresStore {
            pool,
            last_connect_error,
        })
    }

    /// Streams the rows of `query` to `visit` in batches, with bounded
    /// memory, while the query runs on the I/O runtime.
    async fn scan<T: Send + 'static>(
        &self,
        query: &'static str,
        convert: fn(&tokio_postgres::Row) -> DbResult<T>,
        visit: &mut (dyn FnMut(&T) + Send),
    ) -> DbResult<()> {
        let (sender, mut receiver) = mpsc::channel::<DbResult<Vec<T>>>(4);
        let pool = self.pool.clone();
        let producer = io_runtime::handle().spawn(async move {
            let result = async {
                let connection = pool.get().await?;
                let rows = connection
                    .query_raw(query, std::iter::empty::<i64>())
                    .await?;
                pin_mut!(rows);
                let mut batch = Vec::with_capacity(SCAN_BATCH);
                while let Some(row) = rows.try_next().await? {
                    batch.push(convert(&row)?);
                    if batch.len() == SCAN_BATCH {
                        let full = std::mem::replace(&mut batch, Vec::with_capacity(SCAN_BATCH));
                        if sender.send(Ok(full)).await.is_err() {
                            return Ok(());
                        }
                    }
                }
                if !batch.is_empty() {
                    let _ = sender.send(Ok(batch)).await;
                }
                Ok::<(), DbError>(())
            }
            .await;
            if let Err(error) = result {
                let _ = sender.send(Err(error)).await;
            }
        });
        while let Some(batch) = receiver.recv().await {
            for item in &batch.map_err(|e| self.explain(e))? {
                visit(item);
            }
        }
        let _ = producer.await;
        Ok(())
    }
}

#[async_trait]
impl StateStore for PostgresStore {
    async fn migrate(&self) -> DbResult<()> {
        let pool = self.pool.clone();
        self.run(async move {
            let mut client = pool.dedicated_connection().await?;
            // Two processes started at once must not both apply the same
            // migration; the session lock ends with this connection.
            client
                .execute("SELECT pg_advisory_lock($1)", &[&MIGRATE_LOCK])
                .await?;
            embedded::migrations::runner()
                .run_async(&mut client)
                .await
                .map_err(|e| DbError::Failed(format!("migrations: {e}")))?;
            Ok(())
        })
        .await
    }

    async fn lookup_source(&self) -> DbResult<Option<LookupSource>> {
        let pool = self.pool.clone();
        self.run(async move {
            let connection = pool.get().await?;
            let row = connection
                .query_opt(
                    "SELECT source, fingerprint, rows, bad_rows, pairs FROM lookup_source WHERE id = 1",
                    &[],
                )
                .await?;
            Ok(row.map(|row| LookupSource {
                source: row.get(0),
                fingerprint: row.get(1),
                rows: to_u64(row.get(2)),
                bad_rows: to_u64(row.get(3)),
                pairs: to_u64(row.get(4)),
            }))
        })
        .await
    }

    async fn load_lookup(
        &self,
        fence: &Fence,
        source: &LookupSource,
        rows: &[WeightRow<'_>],
    ) -> DbResult<()> {
        let pool = self.pool.clone();
        let fence = fence.clone();
        let source = source.clone();
        let mut long = LongNames::default();
        let rows: Vec<(String, String, i64, i64)> = rows
            .iter()
            .map(|r| {
                (
                    long.key(r.merchant).into_owned(),
                    long.key(r.customer).into_owned(),
                    r.weight_sum,
                    to_i64(r.rows),
                )
            })
            .collect();
        self.run(async move {
            let mut connection = pool.get().await?;
            let tx = connection.transaction().await?;
            check_fence(&tx, &fence).await?;
            tx.execute("DELETE FROM customer_importance", &[]).await?;
            long.save(&tx).await?;
            let sink = tx
                .copy_in(
                    "COPY customer_importance (merchant, customer, weight_sum_cents, weight_rows) \
                     FROM STDIN (FORMAT binary)",
                )
                .await?;
            let writer = BinaryCopyInWriter::new(sink, &[Type::TEXT, Type::TEXT, Type::INT8, Type::INT8]);
            pin_mut!(writer);
            for (merchant, customer, sum, count) in &rows {
                writer.as_mut().write(&[merchant, customer, sum, count]).await?;
            }
            writer.finish().await?;
            tx.execute(
                "INSERT INTO lookup_source (id, source, fingerprint, rows, bad_rows, pairs, loaded_at)
                 VALUES (1, $1, $2, $3, $4, $5, $6)
                 ON CONFLICT (id) DO UPDATE SET source = EXCLUDED.source,
                     fingerprint = EXCLUDED.fingerprint, rows = EXCLUDED.rows,
                     bad_rows = EXCLUDED.bad_rows, pairs = EXCLUDED.pairs,
                     loaded_at = EXCLUDED.loaded_at",
                &[
                    &source.source,
                    &source.fingerprint,
                    &to_i64(source.rows),
                    &to_i64(source.bad_rows),
                    &to_i64(source.pairs),
                    &crate::clock::now_ist(),
                ],
            )
            .await?;
            tx.commit().await?;
            Ok(())
        })
        .await
    }

    async fn scan_weights(
        &self,
        visit: &mut (dyn for<'r> FnMut(WeightRow<'r>) + Send),
    ) -> DbResult<()> {
        self.scan(
            concat!(
                "SELECT ",
                name_of!("merchant"),
                ", ",
                name_of!("customer"),
                ", weight_sum_cents, weight_rows FROM customer_importance"
            ),
            |row| {
                Ok((
                    row.get::<_, String>(0),
                    row.get::<_, String>(1),
                    row.get::<_, i64>(2),
                    row.get::<_, i64>(3),
                ))
            },
            &mut |(merchant, customer, sum, rows): &(String, String, i64, i64)| {
                visit(WeightRow {
                    merchant,
                    customer,
                    weight_sum: *sum,
                    rows: to_u64(*rows),
                })
            },
        )
        .await
    }

    async fn chunker_position(&self) -> DbResult<Option<ChunkerPosition>> {
        let pool = self.pool.clone();
        self.run(async move {
            let connection = pool.get().await?;
            let row = connection
                .query_opt(
                    "SELECT source, rows_per_chunk, next_seq, next_offset, rows_emitted, pending_key,
                            last_key, finished
                     FROM chunker_position WHERE id = 1",
                    &[],
                )
                .await?;
            Ok(row.map(|row| ChunkerPosition {
                source: row.get(0),
                rows_per_chunk: to_u64(row.get(1)),
                next_seq: to_u64(row.get(2)),
                next_offset: to_u64(row.get(3)),
                rows_emitted: to_u64(row.get(4)),
                pending_keys: ChunkerPosition::pending_from_column(row.get(5)),
                last_key: row.get(6),
                finished: row.get(7),
            }))
        })
        .await
    }

    async fn save_chunker_position(
        &self,
        fence: &Fence,
        position: &ChunkerPosition,
    ) -> DbResult<()> {
        let pool = self.pool.clone();
        let fence = fence.clone();
        let p = position.clone();
        self.run(async move {
            let mut connection = pool.get().await?;
            let tx = connection.transaction().await?;
            let now = crate::clock::now_ist();
            let position_params: [&(dyn ToSql + Sync); 9] = [
                &p.source,
                &to_i64(p.rows_per_chunk),
                &to_i64(p.next_seq),
                &to_i64(p.next_offset),
                &to_i64(p.rows_emitted),
                &p.pending_column(),
                &p.last_key,
                &p.finished,
                &now,
            ];
            let (seqs, keys): (Vec<i64>, Vec<&str>) = p
                .claimed_keys()
                .map(|(seq, key)| (to_i64(seq), key))
                .unzip();
            // The fence check and both writes go out together: the writes
            // count only if the check passes, as the transaction commits
            // only then (the chunker waits for this before every PUT).
            let (fenced, saved, claimed) = futures::join!(
                check_fence(&tx, &fence),
                tx.execute(
                    "INSERT INTO chunker_position (id, source, rows_per_chunk, next_seq, next_offset,
                         rows_emitted, pending_key, last_key, finished, updated_at)
                     VALUES (1, $1, $2, $3, $4, $5, $6, $7, $8, $9)
                     ON CONFLICT (id) DO UPDATE SET source = EXCLUDED.source,
                         rows_per_chunk = EXCLUDED.rows_per_chunk, next_seq = EXCLUDED.next_seq,
                         next_offset = EXCLUDED.next_offset, rows_emitted = EXCLUDED.rows_emitted,
                         pending_key = EXCLUDED.pending_key, last_key = EXCLUDED.last_key,
                         finished = EXCLUDED.finished, updated_at = EXCLUDED.updated_at",
                    &position_params,
                ),
                async {
                    if seqs.is_empty() {
                        return Ok(0);
                    }
                    tx.execute(
                        "INSERT INTO chunk_keys (seq, chunk_name)
                         SELECT * FROM UNNEST($1::bigint[], $2::text[]) ON CONFLICT DO NOTHING",
                        &[&seqs, &keys],
                    )
                    .await
                }
            );
            fenced?;
            saved?;
            claimed?;
            tx.commit().await?;
            Ok(())
        })
        .await
    }

    async fn chunk_claims(&self, from_seq: u64, limit: usize) -> DbResult<ChunkClaims> {
        let pool = self.pool.clone();
        self.run(async move {
            let connection = pool.get().await?;
            let mut claims = ChunkClaims::default();
            if let Some(row) = connection
                .query_opt(
                    "SELECT next_seq, finished FROM chunker_position WHERE id = 1",
                    &[],
                )
                .await?
            {
                claims.chunker_next_seq = to_u64(row.get(0));
                claims.chunker_finished = row.get(1);
            }
            claims.keys = connection
                .query(
                    "SELECT seq, chunk_name FROM chunk_keys WHERE seq >= $1 ORDER BY seq LIMIT $2",
                    &[&to_i64(from_seq), &(limit as i64)],
                )
                .await?
                .iter()
                .map(|row| (to_u64(row.get(0)), row.get(1)))
                .collect();
            Ok(claims)
        })
        .await
    }

    async fn processed_names_between(&self, first: &str, last: &str) -> DbResult<Vec<String>> {
        let pool = self.pool.clone();
        let (first, last) = (first.to_string(), last.to_string());
        self.run(async move {
            let connection = pool.get().await?;
            Ok(connection
                .query(
                    "SELECT chunk_name FROM processed_chunks WHERE chunk_name BETWEEN $1 AND $2",
                    &[&first, &last],
                )
                .await?
                .iter()
                .map(|row| row.get(0))
                .collect())
        })
        .await
    }

    async fn record_ignored(&self, fence: &Fence, object: &IgnoredObject) -> DbResult<bool> {
        let pool = self.pool.clone();
        let (fence, object) = (fence.clone(), object.clone());
        self.run(async move {
            let mut connection = pool.get().await?;
            let tx = connection.transaction().await?;
            check_fence(&tx, &fence).await?;
            let inserted = tx
                .execute(
                    "INSERT INTO ignored_objects (object_key, seq, reason, quarantine_key, seen_at)
                     VALUES ($1, $2, $3, $4, $5) ON CONFLICT DO NOTHING",
                    &[
                        &object.key,
                        &object.seq.map(to_i64),
                        &object.reason,
                        &object.quarantine_key,
                        &crate::clock::now_ist(),
                    ],
                )
                .await?;
            tx.commit().await?;
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
        let pool = self.pool.clone();
        let (name, me) = (name.to_string(), me.clone());
        self.run(async move {
            let mut connection = pool.get().await?;
            let tx = connection.transaction().await?;
            // A row that does not exist cannot be locked: create it first
            // (expired, at epoch 0), then decide under the row lock like
            // any takeover. Of two processes doing this at once, one inserts
            // and the other waits for it and then finds the row.
            tx.execute(
                "INSERT INTO leases (name, owner_id, host, pid, epoch, acquired_at_ms, expires_at_ms)
                 VALUES ($1, '', '', 0, 0, 0, 0) ON CONFLICT (name) DO NOTHING",
                &[&name],
            )
            .await?;
            // Waits for the fenced transactions in flight (see
            // `check_fence`); held until this transaction ends.
            tx.execute(LEASE_LOCK_EXCLUSIVE, &[&name]).await?;
            let current = tx
                .query_one(&format!("{SELECT_LEASE} FOR UPDATE"), &[&name])
                .await
                .map(|row| lease_row(&row))?;
            let now: i64 = tx.query_one(&format!("SELECT {NOW_MS}"), &[]).await?.get(0);
            let epoch = match lease::decide(Some(&current), now, dead_epoch) {
                Decision::Held => return Ok(LeaseGrant::Held { holder: current, now_ms: now }),
                Decision::Create => 1,
                Decision::TakeOver { epoch } => epoch,
            };
            tx.execute(
                "UPDATE leases SET owner_id = $2, host = $3, pid = $4, epoch = $5,
                     acquired_at_ms = $6, expires_at_ms = $7
                 WHERE name = $1",
                &[
                    &name,
                    &me.owner_id,
                    &me.host,
                    &i64::from(me.pid),
                    &to_i64(epoch),
                    &now,
                    &now.saturating_add(to_i64(ttl_ms)),
                ],
            )
            .await?;
            tx.execute("DELETE FROM lease_standbys WHERE owner_id = $1", &[&me.owner_id])
                .await?;
            tx.commit().await?;
            Ok(LeaseGrant::Granted(Fence {
                lease: name,
                owner_id: me.owner_id,
                epoch,
            }))
        })
        .await
    }

    async fn renew_lease(&self, fence: &Fence, ttl_ms: u64) -> DbResult<Renewal> {
        let pool = self.pool.clone();
        let fence = fence.clone();
        self.run(async move {
            let connection = pool.get().await?;
            // Waits only for a takeover in progress (its row lock), never
            // for commits, and re-checks owner and epoch on the row version
            // a takeover leaves.
            let renewed = connection
                .query_opt(
                    &format!(
                        "UPDATE leases SET expires_at_ms = {NOW_MS} + $4
                         WHERE name = $1 AND owner_id = $2 AND epoch = $3
                         RETURNING expires_at_ms"
                    ),
                    &[
                        &fence.lease,
                        &fence.owner_id,
                        &to_i64(fence.epoch),
                        &to_i64(ttl_ms),
                    ],
                )
                .await?;
            Ok(match renewed {
                Some(row) => Renewal::Renewed {
                    expires_at_ms: row.get(0),
                },
                None => Renewal::Lost {
                    holder: connection
                        .query_opt(SELECT_LEASE, &[&fence.lease])
                        .await?
                        .map(|row| lease_row(&row)),
                },
            })
        })
        .await
    }

    async fn release_lease(&self, fence: &Fence) -> DbResult<()> {
        let pool = self.pool.clone();
        let fence = fence.clone();
        self.run(async move {
            let connection = pool.get().await?;
            connection
                .execute(
                    &format!(
                        "UPDATE leases SET expires_at_ms = {NOW_MS}
                         WHERE name = $1 AND owner_id = $2 AND epoch = $3"
                    ),
                    &[&fence.lease, &fence.owner_id, &to_i64(fence.epoch)],
                )
                .await?;
            Ok(())
        })
        .await
    }

    async fn register_standby(&self, name: &str, me: &Claimant, ttl_ms: u64) -> DbResult<()> {
        let pool = self.pool.clone();
        let (name, me) = (name.to_string(), me.clone());
        self.run(async move {
            let connection = pool.get().await?;
            connection
                .execute(
                    &format!(
                        "INSERT INTO lease_standbys (owner_id, lease, host, pid, since_ms, expires_at_ms)
                         VALUES ($1, $2, $3, $4, {NOW_MS}, {NOW_MS} + $5)
                         ON CONFLICT (owner_id) DO UPDATE SET expires_at_ms = EXCLUDED.expires_at_ms"
                    ),
                    &[&me.owner_id, &name, &me.host, &i64::from(me.pid), &to_i64(ttl_ms)],
                )
                .await?;
            Ok(())
        })
        .await
    }

    async fn remove_standby(&self, me: &Claimant) -> DbResult<()> {
        let pool = self.pool.clone();
        let owner_id = me.owner_id.clone();
        self.run(async move {
            let connection = pool.get().await?;
            connection
                .execute(
                    "DELETE FROM lease_standbys WHERE owner_id = $1",
                    &[&owner_id],
                )
                .await?;
            Ok(())
        })
        .await
    }

    async fn last_chunk(&self) -> DbResult<Option<String>> {
        let pool = self.pool.clone();
        self.run(async move {
            let connection = pool.get().await?;
            let row = connection
                .query_one("SELECT max(chunk_name) FROM processed_chunks", &[])
                .await?;
            Ok(row.get(0))
        })
        .await
    }

    async fn scan_pairs(
        &self,
        visit: &mut (dyn for<'r> FnMut(PairRow<'r>) + Send),
    ) -> DbResult<()> {
        // Pending deltas and pair_state from one snapshot (a compaction may
        // commit meanwhile), streamed in batches.
        enum Part {
            Deltas(Vec<Vec<u8>>),
            Pairs(Vec<(String, String, i64, i64, Gender)>),
        }
        let (sender, mut receiver) = mpsc::channel::<DbResult<Part>>(4);
        let pool = self.pool.clone();
        let producer = io_runtime::handle().spawn(async move {
            let result = async {
                let mut connection = pool.get().await?;
                let tx = connection
                    .build_transaction()
                    .isolation_level(tokio_postgres::IsolationLevel::RepeatableRead)
                    .read_only(true)
                    .start()
                    .await?;
                let deltas = tx
                    .query("SELECT delta FROM chunk_deltas ORDER BY chunk_name", &[])
                    .await?
                    .iter()
                    .map(|row| row.get::<_, Vec<u8>>(0))
                    .collect();
                if sender.send(Ok(Part::Deltas(deltas))).await.is_err() {
                    return Ok(());
                }
                let rows = tx
                    .query_raw(SELECT_PAIRS, std::iter::empty::<i64>())
                    .await?;
                pin_mut!(rows);
                let mut batch = Vec::with_capacity(SCAN_BATCH);
                while let Some(row) = rows.try_next().await? {
                    batch.push((
                        row.get::<_, String>(0),
                        row.get::<_, String>(1),
                        row.get::<_, i64>(2),
                        row.get::<_, i64>(3),
                        Gender::from_code(row.get::<_, &str>(4)),
                    ));
                    if batch.len() == SCAN_BATCH {
                        let full = std::mem::replace(&mut batch, Vec::with_capacity(SCAN_BATCH));
                        if sender.send(Ok(Part::Pairs(full))).await.is_err() {
                            return Ok(());
                        }
                    }
                }
                if !batch.is_empty() {
                    let _ = sender.send(Ok(Part::Pairs(batch))).await;
                }
                tx.commit().await?;
                Ok::<(), DbError>(())
            }
            .await;
            if let Err(error) = result {
                let _ = sender.send(Err(error)).await;
            }
        });
        let mut merged = super::delta::Merged::default();
        while let Some(part) = receiver.recv().await {
            match part.map_err(|e| self.explain(e))? {
                Part::Deltas(blobs) => {
                    for blob in blobs {
                        merged.add(&blob)?;
                    }
                }
                Part::Pairs(pairs) => {
                    for (merchant, customer, count, amount, gender) in &pairs {
                        merged.overlay_row(
                            PairRow {
                                merchant,
                                customer,
                                count: to_u64(*count),
                                amount: *amount,
                                gender: *gender,
                            },
                            &mut *visit,
                        );
                    }
                }
            }
        }
        let _ = producer.await;
        merged.finish(visit);
        Ok(())
    }

    async fn scan_compacted_pairs(
        &self,
        visit: &mut (dyn for<'r> FnMut(PairRow<'r>) + Send),
    ) -> DbResult<()> {
        self.scan(
            SELECT_PAIRS,
            |row| {
                Ok((
                    row.get::<_, String>(0),
                    row.get::<_, String>(1),
                    row.get::<_, i64>(2),
                    row.get::<_, i64>(3),
                    Gender::from_code(row.get::<_, &str>(4)),
                ))
            },
            &mut |(merchant, customer, count, amount, gender): &(
                String,
                String,
                i64,
                i64,
                Gender,
            )| {
                visit(PairRow {
                    merchant,
                    customer,
                    count: to_u64(*count),
                    amount: *amount,
                    gender: *gender,
                })
            },
        )
        .await
    }

    async fn pending_deltas(&self) -> DbResult<Vec<Vec<u8>>> {
        let pool = self.pool.clone();
        self.run(async move {
            let connection = pool.get().await?;
            let rows = connection
                .query("SELECT delta FROM chunk_deltas ORDER BY chunk_name", &[])
                .await?;
            Ok(rows.iter().map(|row| row.get(0)).collect())
        })
        .await
    }

    async fn pending_delta_count(&self) -> DbResult<u64> {
        let pool = self.pool.clone();
        self.run(async move {
            let connection = pool.get().await?;
            let row = connection
                .query_one("SELECT count(*) FROM chunk_deltas", &[])
                .await?;
            Ok(row.get::<_, i64>(0) as u64)
        })
        .await
    }

    async fn compact(&self, fence: &Fence, max_chunks: usize) -> DbResult<u64> {
        let pool = self.pool.clone();
        let fence = fence.clone();
        self.run(async move {
            let mut connection = pool.get().await?;
            let tx = connection.transaction().await?;
            check_fence(&tx, &fence).await?;
            // One compaction at a time. Commits go on meanwhile: they only
            // add deltas of later chunks, which this one does not read.
            tx.execute("SELECT pg_advisory_xact_lock($1)", &[&COMPACT_LOCK])
                .await?;
            let rows = tx
                .query(
                    "SELECT chunk_name, delta FROM chunk_deltas ORDER BY chunk_name LIMIT $1",
                    &[&(max_chunks as i64)],
                )
                .await?;
            let Some(last) = rows.last().map(|row| row.get::<_, String>(0)) else {
                return Ok(0);
            };
            let mut merged = super::delta::Merged::default();
            for row in &rows {
                merged.add(row.get::<_, &[u8]>(1))?;
            }
            let sink = tx
                .copy_in(
                    "COPY pair_delta (merchant, customer, txn_count, amount_cents, gender) \
                     FROM STDIN (FORMAT binary)",
                )
                .await?;
            let writer = BinaryCopyInWriter::new(
                sink,
                &[Type::TEXT, Type::TEXT, Type::INT8, Type::INT8, Type::TEXT],
            );
            pin_mut!(writer);
            let mut long = LongNames::default();
            for pair in merged.iter() {
                writer
                    .as_mut()
                    .write(&[
                        &&*long.key(pair.merchant),
                        &&*long.key(pair.customer),
                        &to_i64(pair.count),
                        &pair.amount,
                        &pair.gender.code(),
                    ])
                    .await?;
            }
            writer.finish().await?;
            long.save(&tx).await?;
            tx.execute(UPSERT_PAIRS, &[]).await?;
            tx.execute("DELETE FROM chunk_deltas WHERE chunk_name <= $1", &[&last])
                .await?;
            tx.commit().await?;
            Ok(rows.len() as u64)
        })
        .await
    }

    async fn scan_emitted(
        &self,
        visit: &mut (dyn for<'r> FnMut(EmittedRow<'r>) + Send),
    ) -> DbResult<()> {
        self.scan(
            concat!(
                "SELECT patternId, ",
                name_of!("merchant"),
                ", ",
                name_of!("customer"),
                " FROM detected_patterns"
            ),
            |row| {
                let id: &str = row.get(0);
                let pattern = Pattern::from_id(id)
                    .ok_or_else(|| DbError::Failed(format!("unknown patternId {id:?} in table")))?;
                Ok((pattern, row.get::<_, String>(1), row.get::<_, String>(2)))
            },
            &mut |(pattern, merchant, customer): &(Pattern, String, String)| {
                visit(EmittedRow {
                    pattern: *pattern,
                    merchant,
                    customer,
                })
            },
        )
        .await
    }

    async fn commit(&self, fence: &Fence, batch: &CommitBatch<'_>) -> DbResult<CommitOutcome> {
        let Some(final_chunk) = batch.chunks.last() else {
            return Ok(CommitOutcome::Committed);
        };
        let commit = OwnedCommit::from_batch(batch, &final_chunk.name);
        let pool = self.pool.clone();
        let fence = fence.clone();
        self.run(async move {
            let mut connection = pool.get().await?;
            let tx = connection.transaction().await?;
            // Lock, read and check the fence in one round trip (the lock
            // and read in the simple protocol with constant SQL; the fence
            // check pipelined beside it).
            let lock_and_read = format!(
                "SELECT pg_advisory_xact_lock({COMMIT_LOCK}); \
                 SELECT max(chunk_name) FROM processed_chunks"
            );
            let (replies, fenced) =
                futures::join!(tx.simple_query(&lock_and_read), check_fence(&tx, &fence));
            let replies = replies?;
            fenced?;
            let last: Option<String> = replies
                .iter()
                .filter_map(|reply| match reply {
                    tokio_postgres::SimpleQueryMessage::Row(row) => {
                        Some(row.get(0).map(str::to_string))
                    }
                    _ => None,
                })
                .nth(1)
                .flatten();
            if last != commit.expected_last {
                return Ok(if last.as_deref() == Some(commit.final_chunk.as_str()) {
                    CommitOutcome::AlreadyCommitted
                } else {
                    CommitOutcome::Conflict { last }
                });
            }
            // The three inserts go out together (tokio-postgres pipelines
            // concurrent queries on one connection).
            let deltas = async {
                if !commit.delta_chunks.is_empty() {
                    tx.execute(
                        "INSERT INTO chunk_deltas (chunk_name, delta)
                         SELECT * FROM UNNEST($1::text[], $2::bytea[])",
                        &[&commit.delta_chunks, &commit.delta_blobs],
                    )
                    .await?;
                }
                Ok::<(), tokio_postgres::Error>(())
            };
            let c = &commit.chunks;
            let chunk_params: [&(dyn ToSql + Sync); 8] = [
                &c.name,
                &c.seq,
                &c.status,
                &c.rows,
                &c.bad_rows,
                &c.detections,
                &c.reason,
                &commit.processed_at,
            ];
            let chunks = tx.execute(INSERT_CHUNKS, &chunk_params);
            let d = &commit.detections;
            let detections = async {
                if d.customer.is_empty() {
                    return Ok::<(), tokio_postgres::Error>(());
                }
                let params: [&(dyn ToSql + Sync); 15] = [
                    &d.customer,
                    &d.merchant,
                    &d.txn_count,
                    &d.avg_weight,
                    &d.avg_amount,
                    &d.txn_rank,
                    &d.weight_rank,
                    &d.female,
                    &d.male,
                    &d.pattern_id,
                    &d.action_type,
                    &d.chunk_name,
                    &d.detection_time,
                    &commit.processed_at,
                    &commit.processed_at,
                ];
                tx.execute(INSERT_DETECTIONS, &params).await?;
                commit.long_names.save(&tx).await?;
                Ok(())
            };
            futures::try_join!(deltas, chunks, detections)?;
            crate::pause_points::reached("commit");
            tx.commit().await?;
            Ok(CommitOutcome::Committed)
        })
        .await
    }

    async fn assign_batches(
        &self,
        fence: &Fence,
        size: u64,
        include_partial: bool,
        stamp: &str,
    ) -> DbResult<u64> {
        let pool = self.pool.clone();
        let fence = fence.clone();
        let stamp = stamp.to_string();
        self.run(async move {
            let mut connection = pool.get().await?;
            let tx = connection.transaction().await?;
            check_fence(&tx, &fence).await?;
            tx.execute("SELECT pg_advisory_xact_lock($1)", &[&BATCH_LOCK]).await?;
            let mut created = 0;
            loop {
                let row = tx
                    .query_one(
                        "SELECT count(*), max(id) FROM (
                             SELECT id FROM detected_patterns WHERE batch_no IS NULL ORDER BY id LIMIT $1) t",
                        &[&to_i64(size)],
                    )
                    .await?;
                let count = to_u64(row.get(0));
                let Some(max_id) = row.get::<_, Option<i64>>(1) else { break };
                if count < size && !include_partial {
                    break;
                }
                let batch_no: i64 = tx
                    .query_one("SELECT COALESCE(max(batch_no), 0) + 1 FROM detection_batches", &[])
                    .await?
                    .get(0);
                tx.execute(
                    "UPDATE detected_patterns SET batch_no = $1 WHERE batch_no IS NULL AND id <= $2",
                    &[&batch_no, &max_id],
                )
                .await?;
                tx.execute(
                    "INSERT INTO detection_batches (batch_no, object_key, detections, created_at)
                     VALUES ($1, $2, $3, $4)",
                    &[
                        &batch_no,
                        &crate::layout::batch_key(to_u64(batch_no), &stamp),
                        &to_i64(count),
                        &crate::clock::now_ist(),
                    ],
                )
                .await?;
                created += 1;
                if count < size {
                    break;
                }
            }
            tx.commit().await?;
            Ok(created)
        })
        .await
    }

    async fn unwritten_batches(&self) -> DbResult<Vec<Batch>> {
        let pool = self.pool.clone();
        self.run(async move {
            let connection = pool.get().await?;
            let rows = connection
                .query(
                    "SELECT batch_no, object_key, detections FROM detection_batches
                     WHERE written_at IS NULL ORDER BY batch_no",
                    &[],
                )
                .await?;
            Ok(rows
                .iter()
                .map(|row| Batch {
                    batch_no: to_u64(row.get(0)),
                    key: row.get(1),
                    detections: to_u64(row.get(2)),
                })
                .collect())
        })
        .await
    }

    async fn batch_lines(&self, batch_no: u64) -> DbResult<Vec<DetectionLine>> {
        let pool = self.pool.clone();
        self.run(async move {
            let connection = pool.get().await?;
            let rows = connection
                .query(
                    concat!(
                        "SELECT y_start_time, detection_time, patternId, actionType, ",
                        name_of!("customer"),
                        ", ",
                        name_of!("merchant"),
                        " FROM detected_patterns WHERE batch_no = $1 ORDER BY id"
                    ),
                    &[&to_i64(batch_no)],
                )
                .await?;
            Ok(rows
                .iter()
                .map(|row| DetectionLine {
                    y_start_time: row.get(0),
                    detection_time: row.get(1),
                    pattern_id: row.get(2),
                    action_type: row.get(3),
                    customer: row.get(4),
                    merchant: row.get(5),
                })
                .collect())
        })
        .await
    }

    async fn mark_batch_written(&self, fence: &Fence, batch_no: u64, at: &str) -> DbResult<()> {
        let pool = self.pool.clone();
        let fence = fence.clone();
        let at = at.to_string();
        self.run(async move {
            let mut connection = pool.get().await?;
            let tx = connection.transaction().await?;
            check_fence(&tx, &fence).await?;
            tx.execute(
                "UPDATE detection_batches SET written_at = $2 WHERE batch_no = $1",
                &[&to_i64(batch_no), &at],
            )
            .await?;
            tx.commit().await?;
            Ok(())
        })
        .await
    }

    async fn outbox(&self) -> DbResult<(u64, Option<String>)> {
        let pool = self.pool.clone();
        self.run(async move {
            let connection = pool.get().await?;
            let row = connection
                .query_one(
                    "SELECT count(*), min(processed_at) FROM detected_patterns WHERE batch_no IS NULL",
                    &[],
                )
                .await?;
            Ok((to_u64(row.get(0)), row.get(1)))
        })
        .await
    }

    async fn record_restart(&self, event: &RestartEvent) -> DbResult<()> {
        let pool = self.pool.clone();
        let event = event.clone();
        self.run(async move {
            let connection = pool.get().await?;
            connection
                .execute(
                    "INSERT INTO restart_events (actor, reason, restart_count, at) VALUES ($1, $2, $3, $4)",
                    &[&event.actor, &event.reason, &i64::from(event.restart_count), &event.at],
                )
                .await?;
            Ok(())
        })
        .await
    }

    async fn status(&self, recent_restarts: usize) -> DbResult<StatusReport> {
        let pool = self.pool.clone();
        self.run(async move {
            let connection = pool.get().await?;
            let mut report = StatusReport::default();
            if let Some(row) = connection
                .query_opt("SELECT next_seq, rows_emitted, finished FROM chunker_position WHERE id = 1", &[])
                .await?
            {
                report.chunks_produced = to_u64(row.get(0));
                report.rows_produced = to_u64(row.get(1));
                report.chunker_finished = row.get(2);
            }
            let row = connection
                .query_one(
                    "SELECT count(*) FILTER (WHERE status = 'processed'),
                            count(*) FILTER (WHERE status = 'rejected'),
                            COALESCE(sum(rows), 0)::bigint, COALESCE(sum(bad_rows), 0)::bigint,
                            max(chunk_name)
                     FROM processed_chunks",
                    &[],
                )
                .await?;
            report.chunks_processed = to_u64(row.get(0));
            report.chunks_rejected = to_u64(row.get(1));
            report.rows_processed = to_u64(row.get(2));
            report.bad_rows = to_u64(row.get(3));
            report.last_chunk = row.get(4);
            report.detections = connection
                .query(
                    "SELECT patternId, count(*) FROM detected_patterns GROUP BY patternId ORDER BY patternId",
                    &[],
                )
                .await?
                .iter()
                .map(|row| (row.get(0), to_u64(row.get(1))))
                .collect();
            let row = connection
                .query_one(
                    "SELECT count(written_at), count(*) - count(written_at) FROM detection_batches",
                    &[],
                )
                .await?;
            report.batches_written = to_u64(row.get(0));
            report.batches_pending = to_u64(row.get(1));
            report.detections_unbatched = to_u64(
                connection
                    .query_one("SELECT count(*) FROM detected_patterns WHERE batch_no IS NULL", &[])
                    .await?
                    .get(0),
            );
            report.recent_restarts = connection
                .query(
                    "SELECT actor, reason, restart_count, at FROM restart_events ORDER BY id DESC LIMIT $1",
                    &[&(recent_restarts as i64)],
                )
                .await?
                .iter()
                .map(|row| RestartEvent {
                    actor: row.get(0),
                    reason: row.get(1),
                    restart_count: u32::try_from(row.get::<_, i64>(2)).unwrap_or(u32::MAX),
                    at: row.get(3),
                })
                .collect();
            let row = connection
                .query_one(
                    &format!(
                        "SELECT (SELECT max(seq) FROM processed_chunks),
                                (SELECT count(*) FROM ignored_objects), {NOW_MS}"
                    ),
                    &[],
                )
                .await?;
            report.last_seq = row.get::<_, Option<i64>>(0).map(to_u64);
            report.ignored_objects = to_u64(row.get(1));
            report.now_ms = row.get(2);
            report.owner = connection
                .query_opt(SELECT_LEASE, &[&lease::PIPELINE_LEASE])
                .await?
                .map(|row| lease_row(&row))
                .filter(|row| row.epoch > 0);
            report.standbys = connection
                .query(
                    "SELECT lease, owner_id, host, pid, since_ms, expires_at_ms FROM lease_standbys
                     WHERE expires_at_ms > $1 ORDER BY since_ms",
                    &[&report.now_ms],
                )
                .await?
                .iter()
                .map(|row| StandbyRow {
                    lease: row.get(0),
                    owner_id: row.get(1),
                    host: row.get(2),
                    pid: u32::try_from(row.get::<_, i64>(3)).unwrap_or(0),
                    since_ms: row.get(4),
                    expires_at_ms: row.get(5),
                })
                .collect();
            Ok(report)
        })
        .await
    }
}
