//! The production state store: PostgreSQL through a bb8 pool of
//! tokio-postgres connections (TLS as libpq's `sslmode` says).
//!
//! Every call runs on the process's I/O runtime ([`PostgresStore::call`]
//! takes a pooled connection there and hands it to the call's work; scans
//! stream their rows back in batches, see [`super::scan`]). What the two
//! databases must agree on (commit decisions, batch numbering, row
//! decoding, `status`) is in [`super::rules`] and the statements they share
//! in [`super::sql`]; this file keeps PostgreSQL's own mechanics: advisory
//! locks, the fence check under the lease's shared lock, pipelined
//! statements, bulk loads with binary COPY and `UNNEST` arrays, and tokens
//! for names too long for an index.
//!
//! A commit takes an advisory transaction lock (one committer at a time,
//! even across processes), checks the fence and the last committed chunk in
//! one round trip, and inserts the chunks' deltas, rows and detections with
//! one multi-row statement each. Lost connections and server restarts are
//! reported as transient so that callers retry.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use bb8::{CustomizeConnection, ErrorSink, Pool, PooledConnection};
use bb8_postgres::PostgresConnectionManager;
use futures::{TryStreamExt, pin_mut};
use postgres_native_tls::MakeTlsConnector;
use tokio_postgres::binary_copy::BinaryCopyInWriter;
use tokio_postgres::error::SqlState;
use tokio_postgres::types::{ToSql, Type};
use tokio_postgres::{Client, GenericClient, Row, RowStream};

use super::lease::{self, Decision};
use super::rules::{self, Columns, CommitRows, to_i64};
use super::scan::{self, PairPart, Rows, Sink};
use super::sql;
use super::{
    Batch, ChunkClaims, ChunkerPosition, Claimant, CommitBatch, CommitOutcome, DbError, DbResult,
    DetectionLine, EmittedRow, Fence, IgnoredObject, LeaseGrant, LookupSource, PairRow, Renewal,
    RestartEvent, StateStore, StatusReport, WeightRow,
};
use crate::detect::Gender;
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
const LOOKUP_LOCK: i64 = 0x7478_7069_7065_0007;

/// The database's clock, in milliseconds since the Unix epoch.
const NOW_MS: &str = "(extract(epoch from clock_timestamp()) * 1000)::bigint";

/// A pooled connection, owned by the work it was taken for.
type Connection = PooledConnection<'static, Manager>;

type Param<'a> = &'a (dyn ToSql + Sync);

impl Columns for Row {
    fn int(&self, index: usize) -> DbResult<i64> {
        get(self, index)
    }
    fn opt_int(&self, index: usize) -> DbResult<Option<i64>> {
        get(self, index)
    }
    fn text(&self, index: usize) -> DbResult<String> {
        get(self, index)
    }
    fn opt_text(&self, index: usize) -> DbResult<Option<String>> {
        get(self, index)
    }
    fn flag(&self, index: usize) -> DbResult<bool> {
        get(self, index)
    }
}

/// Decodes the rows of `sql` with one of [`rules`]' decoders.
async fn query_all<T>(
    client: &impl GenericClient,
    sql: &str,
    params: &[Param<'_>],
    decode: fn(&dyn Columns) -> DbResult<T>,
) -> DbResult<Vec<T>> {
    let rows = client.query(sql, params).await?;
    rows.iter().map(|row| decode(row)).collect()
}

/// The row of `sql`, if it has one, decoded.
async fn query_opt<T>(
    client: &impl GenericClient,
    sql: &str,
    params: &[Param<'_>],
    decode: fn(&dyn Columns) -> DbResult<T>,
) -> DbResult<Option<T>> {
    let row = client.query_opt(sql, params).await?;
    row.as_ref().map(|row| decode(row)).transpose()
}

/// The row of a query that always has one (an aggregate), decoded.
async fn query_one<T>(
    client: &impl GenericClient,
    sql: &str,
    params: &[Param<'_>],
    decode: fn(&dyn Columns) -> DbResult<T>,
) -> DbResult<T> {
    decode(&client.query_one(sql, params).await?)
}

/// Sends every row of `rows`, converted, to `sink`; `false` once the caller
/// stopped listening.
async fn forward<T>(
    rows: RowStream,
    sink: &mut Sink<T>,
    convert: fn(&Row) -> DbResult<T>,
) -> DbResult<bool> {
    pin_mut!(rows);
    while let Some(row) = rows.try_next().await? {
        if !sink.push_async(convert(&row)?).await {
            return Ok(false);
        }
    }
    Ok(true)
}

/// Column `index` of a scanned row.
fn get<'r, T: tokio_postgres::types::FromSql<'r>>(row: &'r Row, index: usize) -> DbResult<T> {
    row.try_get(index)
        .map_err(|e| rules::decode_error(index, e))
}

fn pair(row: &Row) -> DbResult<scan::OwnedPair> {
    Ok((
        get(row, 0)?,
        get(row, 1)?,
        get(row, 2)?,
        get(row, 3)?,
        Gender::from_code(get(row, 4)?),
    ))
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
    let name: [Param; 1] = [&fence.lease];
    let (locked, row) = futures::join!(
        tx.execute(LEASE_LOCK_SHARED, &name),
        query_opt(tx, sql::SELECT_LEASE, &name, rules::lease_row)
    );
    locked?;
    lease::check(fence, row?.as_ref()).map_err(DbError::Fenced)
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

impl PostgresStore {
    /// Runs `work` on the I/O runtime with a connection of the pool (the
    /// work owns it, and it goes back to the pool when the work ends).
    async fn call<T, W, F>(&self, work: W) -> DbResult<T>
    where
        T: Send + 'static,
        W: FnOnce(Connection) -> F + Send + 'static,
        F: Future<Output = DbResult<T>> + Send + 'static,
    {
        let pool = self.pool.clone();
        self.run(async move { work(pool.get_owned().await?).await })
            .await
    }

    /// Runs a scan's producer on the I/O runtime with a connection of the
    /// pool; it ends the scan with [`Sink::finish_async`].
    fn scan<T, P, F>(&self, produce: P) -> Rows<T>
    where
        T: Send + 'static,
        P: FnOnce(Connection, Sink<T>) -> F + Send + 'static,
        F: Future<Output = ()> + Send + 'static,
    {
        let (sink, rows) = scan::channel();
        let pool = self.pool.clone();
        io_runtime::handle().spawn(async move {
            match pool.get_owned().await {
                Ok(connection) => produce(connection, sink).await,
                Err(error) => sink.finish_async(Err(error.into())).await,
            }
        });
        rows
    }

    /// Streams every row of `query`, each made owned by `convert`, to
    /// `visit`. With `groups`, the query reads those key groups (`$1`).
    async fn scan_rows<T: Send + 'static>(
        &self,
        query: &'static str,
        groups: Option<Vec<i32>>,
        convert: fn(&Row) -> DbResult<T>,
        visit: impl FnMut(&T),
    ) -> DbResult<()> {
        let rows = self.scan(move |connection, mut sink| async move {
            let result = async {
                let rows = connection.query_raw(query, scan_params(&groups)).await?;
                forward(rows, &mut sink, convert).await.map(drop)
            }
            .await;
            sink.finish_async(result).await;
        });
        scan::visit_all(rows, visit)
            .await
            .map_err(|e| self.explain(e))
    }

    /// The cumulative pair state: compacted pairs (`pairs`) with the
    /// pending deltas (`deltas`) added, from one snapshot (a compaction may
    /// commit meanwhile). With `groups`, both queries read those key
    /// groups (`$1`).
    async fn scan_pair_parts(
        &self,
        deltas: &'static str,
        pairs: &'static str,
        groups: Option<Vec<i32>>,
        visit: &mut (dyn for<'r> FnMut(PairRow<'r>) + Send),
    ) -> DbResult<()> {
        let parts = self.scan(move |mut connection, mut sink| async move {
            let result = async {
                let tx = connection
                    .build_transaction()
                    .isolation_level(tokio_postgres::IsolationLevel::RepeatableRead)
                    .read_only(true)
                    .start()
                    .await?;
                let found = tx.query_raw(deltas, scan_params(&groups)).await?;
                if forward(found, &mut sink, |row| Ok(PairPart::Delta(get(row, 0)?))).await? {
                    let found = tx.query_raw(pairs, scan_params(&groups)).await?;
                    forward(found, &mut sink, |row| Ok(PairPart::Pair(pair(row)?))).await?;
                }
                tx.commit().await?;
                Ok(())
            }
            .await;
            sink.finish_async(result).await;
        });
        scan::merge_pairs(parts, visit)
            .await
            .map_err(|e| self.explain(e))
    }
}

/// A scan's parameters: none, or the key groups it reads as `$1`.
fn scan_params(groups: &Option<Vec<i32>>) -> Vec<Param<'_>> {
    groups.iter().map(|groups| groups as Param).collect()
}

/// A detection's key as [`scan::visit_emitted`] takes it.
fn emitted(row: &Row) -> DbResult<(crate::detect::Pattern, String, String)> {
    Ok((scan::pattern(get(row, 0)?)?, get(row, 1)?, get(row, 2)?))
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

    /// Turns a name into its key column value in place.
    fn replace(&mut self, name: &mut String) {
        if let std::borrow::Cow::Owned(token) = key_name(name) {
            self.tokens.push(token.clone());
            self.names.push(std::mem::replace(name, token));
        }
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

/// The commit's chunks as rows `c(name, seq, status, rows, bad_rows,
/// detections, reason)`, from the parameters of [`chunk_params`].
macro_rules! commit_chunks {
    () => {
        "UNNEST($1::text[], $2::bigint[], $3::text[], $4::bigint[], $5::bigint[], $6::bigint[], $7::text[])
    AS c(name, seq, status, rows, bad_rows, detections, reason)"
    };
}

const INSERT_CHUNKS: &str = concat!(
    "INSERT INTO processed_chunks (chunk_name, seq, status, rows, bad_rows, detections, reason, processed_at)
SELECT name, seq, status, rows, bad_rows, detections, reason, $8
FROM ",
    commit_chunks!()
);

/// The parameters of [`commit_chunks`] (`$1` to `$7`) and the time the
/// chunks were processed (`$8`).
fn chunk_params(rows: &CommitRows) -> [Param<'_>; 8] {
    let c = &rows.chunks;
    [
        &c.name,
        &c.seq,
        &c.status,
        &c.rows,
        &c.bad_rows,
        &c.detections,
        &c.reason,
        &rows.processed_at,
    ]
}

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
}

/// Detections in one statement, each with its key group (NULL for a single
/// process's).
const INSERT_DETECTIONS: &str = "\
INSERT INTO detected_patterns (customer, merchant, txn_count, avg_weight, avg_amount, txn_rank,
    weight_rank, F, M, patternId, actionType, chunk_name, processed_at, y_start_time, detection_time,
    key_group)
SELECT customer, merchant, txn_count, avg_weight, avg_amount, txn_rank, weight_rank, f, m,
       pattern_id, action_type, chunk_name, $15, y_start_time, detection_time, key_group
FROM UNNEST($1::text[], $2::text[], $3::bigint[], $4::float8[], $5::float8[], $6::float8[],
            $7::float8[], $8::bigint[], $9::bigint[], $10::text[], $11::text[], $12::text[],
            $13::text[], $14::text[], $16::int[])
    WITH ORDINALITY AS d(customer, merchant, txn_count, avg_weight, avg_amount, txn_rank, weight_rank,
                         f, m, pattern_id, action_type, chunk_name, y_start_time, detection_time,
                         key_group, ord)
ORDER BY ord";

/// Inserts the detections of `rows` (their names already key columns'
/// values) and the long names they use; `key_groups` has each detection's
/// key group in a cluster, `None` for a single process's.
async fn insert_detections(
    tx: &tokio_postgres::Transaction<'_>,
    rows: &CommitRows,
    key_groups: &[Option<i32>],
    long_names: &LongNames,
) -> Result<(), tokio_postgres::Error> {
    let d = &rows.detections;
    if d.customer.is_empty() {
        return Ok(());
    }
    let params: [Param; 16] = [
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
        &d.y_start_time,
        &d.detection_time,
        &rows.processed_at,
        &key_groups,
    ];
    tx.execute(INSERT_DETECTIONS, &params).await?;
    long_names.save(tx).await
}

/// Commits `rows` (see [`StateStore::commit`]); the detections' names are
/// already key columns' values (see [`LongNames`]).
async fn commit(
    mut connection: Connection,
    fence: Fence,
    rows: CommitRows,
    long_names: LongNames,
) -> DbResult<CommitOutcome> {
    let tx = connection.transaction().await?;
    // Lock, read and check the fence in one round trip (the lock and read
    // in the simple protocol with constant SQL; the fence check pipelined
    // beside it).
    let lock_and_read = format!(
        "SELECT pg_advisory_xact_lock({COMMIT_LOCK}); {}",
        sql::LAST_CHUNK
    );
    let (replies, fenced) =
        futures::join!(tx.simple_query(&lock_and_read), check_fence(&tx, &fence));
    let replies = replies?;
    fenced?;
    let last: Option<String> = replies
        .iter()
        .filter_map(|reply| match reply {
            tokio_postgres::SimpleQueryMessage::Row(row) => Some(row.get(0).map(str::to_string)),
            _ => None,
        })
        .nth(1)
        .flatten();
    if let Some(outcome) = rows.stale(last) {
        return Ok(outcome);
    }
    // The three inserts go out together (tokio-postgres pipelines
    // concurrent queries on one connection).
    let deltas = async {
        if !rows.deltas.chunk.is_empty() {
            tx.execute(
                "INSERT INTO chunk_deltas (chunk_name, delta)
                 SELECT * FROM UNNEST($1::text[], $2::bytea[])",
                &[&rows.deltas.chunk, &rows.deltas.blob],
            )
            .await?;
        }
        Ok::<(), tokio_postgres::Error>(())
    };
    let chunk_params = chunk_params(&rows);
    let chunks = tx.execute(INSERT_CHUNKS, &chunk_params);
    // A single process's detections have no key group.
    let no_groups = vec![None; rows.detections.customer.len()];
    let detections = insert_detections(&tx, &rows, &no_groups, &long_names);
    futures::try_join!(deltas, chunks, detections)?;
    crate::pause_points::reached("commit");
    tx.commit().await?;
    Ok(CommitOutcome::Committed)
}

async fn compact(mut connection: Connection, fence: Fence, max_chunks: usize) -> DbResult<u64> {
    let tx = connection.transaction().await?;
    check_fence(&tx, &fence).await?;
    // One compaction at a time. Commits go on meanwhile: they only add
    // deltas of later chunks, which this one does not read.
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&COMPACT_LOCK])
        .await?;
    let rows = tx
        .query(sql::OLDEST_DELTAS, &[&(max_chunks as i64)])
        .await?;
    let Some(last) = rows.last().map(|row| row.get::<_, String>(0)) else {
        return Ok(0);
    };
    let mut merged = super::delta::Merged::default();
    for row in &rows {
        merged.add(row.get::<_, &[u8]>(1))?;
    }
    copy_merged(
        &tx,
        "COPY pair_delta (merchant, customer, txn_count, amount_cents, gender) \
         FROM STDIN (FORMAT binary)",
        &[(None, &merged)],
    )
    .await?;
    tx.execute(UPSERT_PAIRS, &[]).await?;
    tx.execute(sql::DELETE_DELTAS_UP_TO, &[&last]).await?;
    tx.commit().await?;
    Ok(rows.len() as u64)
}

/// Writes merged pairs into a session table by binary COPY (`copy`, whose
/// columns are the pairs' key group when they carry one, then merchant,
/// customer, count, amount and gender), long names as their tokens, and
/// saves those long names in the same transaction. Compaction's first
/// step, for a single process's pairs and a cluster's key groups alike.
async fn copy_merged(
    tx: &tokio_postgres::Transaction<'_>,
    copy: &str,
    parts: &[(Option<i32>, &super::delta::Merged)],
) -> DbResult<()> {
    let grouped = parts.first().is_some_and(|(group, _)| group.is_some());
    let pair_types = [Type::TEXT, Type::TEXT, Type::INT8, Type::INT8, Type::TEXT];
    let types: Vec<Type> = grouped
        .then_some(Type::INT4)
        .into_iter()
        .chain(pair_types)
        .collect();
    let writer = BinaryCopyInWriter::new(tx.copy_in(copy).await?, &types);
    pin_mut!(writer);
    let mut long = LongNames::default();
    for (group, merged) in parts {
        for pair in merged.iter() {
            let (merchant, customer) = (long.key(pair.merchant), long.key(pair.customer));
            let (count, gender) = (to_i64(pair.count), pair.gender.code());
            let [m, c, n, a, g]: [Param<'_>; 5] =
                [&&*merchant, &&*customer, &count, &pair.amount, &gender];
            match &group {
                Some(group) => writer.as_mut().write(&[group, m, c, n, a, g]).await?,
                None => writer.as_mut().write(&[m, c, n, a, g]).await?,
            }
        }
    }
    writer.finish().await?;
    long.save(tx).await?;
    Ok(())
}

async fn acquire_lease(
    mut connection: Connection,
    name: String,
    me: Claimant,
    ttl_ms: u64,
    dead_epoch: Option<u64>,
) -> DbResult<LeaseGrant> {
    let tx = connection.transaction().await?;
    // A row that does not exist cannot be locked: create it first (expired,
    // at epoch 0), then decide under the row lock like any takeover. Of two
    // processes doing this at once, one inserts and the other waits for it
    // and then finds the row.
    tx.execute(
        "INSERT INTO leases (name, owner_id, host, pid, epoch, acquired_at_ms, expires_at_ms)
         VALUES ($1, '', '', 0, 0, 0, 0) ON CONFLICT (name) DO NOTHING",
        &[&name],
    )
    .await?;
    // Waits for the fenced transactions in flight (see `check_fence`); held
    // until this transaction ends.
    tx.execute(LEASE_LOCK_EXCLUSIVE, &[&name]).await?;
    let select = format!("{} FOR UPDATE", sql::SELECT_LEASE);
    let current = query_one(&tx, &select, &[&name], rules::lease_row).await?;
    let now: i64 = tx.query_one(&format!("SELECT {NOW_MS}"), &[]).await?.get(0);
    let epoch = match lease::decide(Some(&current), now, dead_epoch) {
        Decision::Held => {
            return Ok(LeaseGrant::Held {
                holder: current,
                now_ms: now,
            });
        }
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
    tx.execute(sql::REMOVE_STANDBY, &[&me.owner_id]).await?;
    tx.commit().await?;
    Ok(LeaseGrant::Granted(Fence {
        lease: name,
        owner_id: me.owner_id,
        epoch,
    }))
}

async fn assign_batches(
    mut connection: Connection,
    fence: Fence,
    size: u64,
    include_partial: bool,
    stamp: String,
) -> DbResult<u64> {
    let tx = connection.transaction().await?;
    check_fence(&tx, &fence).await?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&BATCH_LOCK])
        .await?;
    let (unbatched, last_batch_no) = query_one(&tx, sql::BATCH_PLAN_INPUT, &[], |row| {
        Ok((rules::to_u64(row.int(0)?), rules::to_u64(row.int(1)?)))
    })
    .await?;
    let plan = rules::plan_batches(unbatched, last_batch_no, size, include_partial, &stamp);
    let created_at = crate::clock::now_ist();
    for batch in &plan {
        tx.execute(sql::ASSIGN_OLDEST, &[&batch.batch_no, &batch.detections])
            .await?;
        tx.execute(
            sql::INSERT_BATCH,
            &[&batch.batch_no, &batch.key, &batch.detections, &created_at],
        )
        .await?;
    }
    tx.commit().await?;
    Ok(plan.len() as u64)
}

async fn status(connection: Connection, recent_restarts: usize) -> DbResult<StatusReport> {
    let c = &*connection;
    let now_ms: i64 = c.query_one(&format!("SELECT {NOW_MS}"), &[]).await?.get(0);
    let limit: [Param; 1] = [&(recent_restarts as i64)];
    let now: [Param; 1] = [&now_ms];
    let lease_name: [Param; 1] = [&lease::PIPELINE_LEASE];
    // One round trip: tokio-postgres pipelines the statements.
    let (chunker, counts, detections, recent_restarts, lease, standbys) = futures::try_join!(
        query_opt(c, sql::CHUNKER_PROGRESS, &[], rules::chunker_progress),
        query_one(c, sql::STATUS_COUNTS, &[], rules::status_counts),
        query_all(c, sql::DETECTIONS_BY_PATTERN, &[], rules::pattern_count),
        query_all(c, sql::RECENT_RESTARTS, &limit, rules::restart_event),
        query_opt(c, sql::SELECT_LEASE, &lease_name, rules::lease_row),
        query_all(c, sql::LIVE_STANDBYS, &now, rules::standby_row),
    )?;
    Ok(rules::StatusRows {
        chunker,
        counts,
        detections,
        recent_restarts,
        lease,
        now_ms,
        standbys,
    }
    .report())
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
        self.call(
            |c| async move { query_opt(&*c, sql::LOOKUP_SOURCE, &[], rules::lookup_source).await },
        )
        .await
    }

    async fn load_lookup(
        &self,
        fence: &Fence,
        source: &LookupSource,
        rows: &[WeightRow<'_>],
    ) -> DbResult<()> {
        let (fence, source) = (fence.clone(), source.clone());
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
        self.call(move |mut connection| async move {
            let tx = connection.transaction().await?;
            check_fence(&tx, &fence).await?;
            // Workers of a cluster started at once all find no lookup table
            // and read the file: the first stores it, the others find it.
            tx.execute("SELECT pg_advisory_xact_lock($1)", &[&LOOKUP_LOCK])
                .await?;
            let stored = query_opt(&tx, sql::LOOKUP_SOURCE, &[], rules::lookup_source).await?;
            if stored.is_some_and(|stored| stored.fingerprint == source.fingerprint) {
                return Ok(());
            }
            tx.execute("DELETE FROM customer_importance", &[]).await?;
            long.save(&tx).await?;
            let sink = tx
                .copy_in(
                    "COPY customer_importance (merchant, customer, weight_sum_cents, weight_rows) \
                     FROM STDIN (FORMAT binary)",
                )
                .await?;
            let writer =
                BinaryCopyInWriter::new(sink, &[Type::TEXT, Type::TEXT, Type::INT8, Type::INT8]);
            pin_mut!(writer);
            for (merchant, customer, sum, count) in &rows {
                writer
                    .as_mut()
                    .write(&[merchant, customer, sum, count])
                    .await?;
            }
            writer.finish().await?;
            tx.execute(
                sql::SAVE_LOOKUP_SOURCE,
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
        self.scan_rows(
            concat!(
                "SELECT ",
                name_of!("merchant"),
                ", ",
                name_of!("customer"),
                ", weight_sum_cents, weight_rows FROM customer_importance"
            ),
            None,
            |row| Ok((get(row, 0)?, get(row, 1)?, get(row, 2)?, get(row, 3)?)),
            scan::visit_weights(visit),
        )
        .await
    }

    async fn chunker_position(&self) -> DbResult<Option<ChunkerPosition>> {
        self.call(|c| async move {
            query_opt(&*c, sql::CHUNKER_POSITION, &[], rules::chunker_position).await
        })
        .await
    }

    async fn save_chunker_position(
        &self,
        fence: &Fence,
        position: &ChunkerPosition,
    ) -> DbResult<()> {
        let (fence, p) = (fence.clone(), position.clone());
        self.call(move |mut connection| async move {
            let tx = connection.transaction().await?;
            let now = crate::clock::now_ist();
            let position_params: [Param; 9] = [
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
                tx.execute(sql::SAVE_CHUNKER_POSITION, &position_params),
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
        self.call(move |c| async move {
            let (from, limit) = (to_i64(from_seq), limit as i64);
            let range: [Param; 2] = [&from, &limit];
            let (progress, keys) = futures::try_join!(
                query_opt(&*c, sql::CHUNKER_PROGRESS, &[], rules::chunker_progress),
                query_all(&*c, sql::CHUNK_KEYS_FROM, &range, rules::chunk_key),
            )?;
            let (chunker_next_seq, _, chunker_finished) = progress.unwrap_or_default();
            Ok(ChunkClaims {
                keys,
                chunker_next_seq,
                chunker_finished,
            })
        })
        .await
    }

    async fn processed_names_between(&self, first: &str, last: &str) -> DbResult<Vec<String>> {
        let (first, last) = (first.to_string(), last.to_string());
        self.call(move |c| async move {
            query_all(&*c, sql::PROCESSED_BETWEEN, &[&first, &last], |row| {
                row.text(0)
            })
            .await
        })
        .await
    }

    async fn record_ignored(&self, fence: &Fence, object: &IgnoredObject) -> DbResult<bool> {
        let (fence, object) = (fence.clone(), object.clone());
        self.call(move |mut connection| async move {
            let tx = connection.transaction().await?;
            check_fence(&tx, &fence).await?;
            let inserted = tx
                .execute(
                    sql::RECORD_IGNORED,
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
        let (name, me) = (name.to_string(), me.clone());
        self.call(move |c| acquire_lease(c, name, me, ttl_ms, dead_epoch))
            .await
    }

    async fn renew_lease(&self, fence: &Fence, ttl_ms: u64) -> DbResult<Renewal> {
        let fence = fence.clone();
        self.call(move |c| async move {
            // Waits only for a takeover in progress (its row lock), never
            // for commits, and re-checks owner and epoch on the row version
            // a takeover leaves.
            let renewed = c
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
                    holder: query_opt(&*c, sql::SELECT_LEASE, &[&fence.lease], rules::lease_row)
                        .await?,
                },
            })
        })
        .await
    }

    async fn release_lease(&self, fence: &Fence) -> DbResult<()> {
        let fence = fence.clone();
        self.call(move |c| async move {
            c.execute(
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
        let (name, me) = (name.to_string(), me.clone());
        self.call(move |c| async move {
            c.execute(
                &format!(
                    "INSERT INTO lease_standbys (owner_id, lease, host, pid, since_ms, expires_at_ms)
                     VALUES ($1, $2, $3, $4, {NOW_MS}, {NOW_MS} + $5)
                     ON CONFLICT (owner_id) DO UPDATE SET expires_at_ms = EXCLUDED.expires_at_ms"
                ),
                &[
                    &me.owner_id,
                    &name,
                    &me.host,
                    &i64::from(me.pid),
                    &to_i64(ttl_ms),
                ],
            )
            .await?;
            Ok(())
        })
        .await
    }

    async fn remove_standby(&self, me: &Claimant) -> DbResult<()> {
        let owner_id = me.owner_id.clone();
        self.call(move |c| async move {
            c.execute(sql::REMOVE_STANDBY, &[&owner_id]).await?;
            Ok(())
        })
        .await
    }

    async fn last_chunk(&self) -> DbResult<Option<String>> {
        self.call(|c| async move { query_one(&*c, sql::LAST_CHUNK, &[], rules::opt_name).await })
            .await
    }

    async fn scan_pairs(
        &self,
        visit: &mut (dyn for<'r> FnMut(PairRow<'r>) + Send),
    ) -> DbResult<()> {
        self.scan_pair_parts(sql::PENDING_DELTAS, SELECT_PAIRS, None, visit)
            .await
    }

    async fn scan_compacted_pairs(
        &self,
        visit: &mut (dyn for<'r> FnMut(PairRow<'r>) + Send),
    ) -> DbResult<()> {
        self.scan_rows(SELECT_PAIRS, None, pair, scan::visit_pairs(visit))
            .await
    }

    async fn pending_deltas(&self) -> DbResult<Vec<Vec<u8>>> {
        self.call(|c| async move {
            let rows = c.query(sql::PENDING_DELTAS, &[]).await?;
            Ok(rows.iter().map(|row| row.get(0)).collect())
        })
        .await
    }

    async fn pending_delta_count(&self) -> DbResult<u64> {
        self.call(
            |c| async move { query_one(&*c, sql::PENDING_DELTA_COUNT, &[], rules::count).await },
        )
        .await
    }

    async fn compact(&self, fence: &Fence, max_chunks: usize) -> DbResult<u64> {
        let fence = fence.clone();
        self.call(move |c| compact(c, fence, max_chunks)).await
    }

    async fn scan_emitted(
        &self,
        visit: &mut (dyn for<'r> FnMut(EmittedRow<'r>) + Send),
    ) -> DbResult<()> {
        self.scan_rows(
            concat!(
                "SELECT patternId, ",
                name_of!("merchant"),
                ", ",
                name_of!("customer"),
                " FROM detected_patterns"
            ),
            None,
            emitted,
            scan::visit_emitted(visit),
        )
        .await
    }

    async fn commit(&self, fence: &Fence, batch: &CommitBatch<'_>) -> DbResult<CommitOutcome> {
        let Some(mut rows) = CommitRows::of(batch) else {
            return Ok(CommitOutcome::Committed);
        };
        let mut long_names = LongNames::default();
        let d = &mut rows.detections;
        for name in d.customer.iter_mut().chain(d.merchant.iter_mut()) {
            long_names.replace(name);
        }
        let fence = fence.clone();
        self.call(move |c| commit(c, fence, rows, long_names)).await
    }

    async fn assign_batches(
        &self,
        fence: &Fence,
        size: u64,
        include_partial: bool,
        stamp: &str,
    ) -> DbResult<u64> {
        let (fence, stamp) = (fence.clone(), stamp.to_string());
        self.call(move |c| assign_batches(c, fence, size, include_partial, stamp))
            .await
    }

    async fn unwritten_batches(&self) -> DbResult<Vec<Batch>> {
        self.call(
            |c| async move { query_all(&*c, sql::UNWRITTEN_BATCHES, &[], rules::batch).await },
        )
        .await
    }

    async fn batch_lines(&self, batch_no: u64) -> DbResult<Vec<DetectionLine>> {
        self.call(move |c| async move {
            query_all(
                &*c,
                concat!(
                    "SELECT y_start_time, detection_time, patternId, actionType, ",
                    name_of!("customer"),
                    ", ",
                    name_of!("merchant"),
                    // A single process inserts a chunk's detections in
                    // this order, so its ids follow it; a cluster's
                    // workers insert them in any order (key_group set).
                    " FROM detected_patterns WHERE batch_no = $1 ORDER BY ",
                    "CASE WHEN key_group IS NULL THEN id END, chunk_name COLLATE \"C\", ",
                    "patternId, merchant COLLATE \"C\", customer COLLATE \"C\""
                ),
                &[&to_i64(batch_no)],
                rules::detection_line,
            )
            .await
        })
        .await
    }

    async fn mark_batch_written(&self, fence: &Fence, batch_no: u64, at: &str) -> DbResult<()> {
        let (fence, at) = (fence.clone(), at.to_string());
        self.call(move |mut connection| async move {
            let tx = connection.transaction().await?;
            check_fence(&tx, &fence).await?;
            tx.execute(sql::MARK_BATCH_WRITTEN, &[&at, &to_i64(batch_no)])
                .await?;
            tx.commit().await?;
            Ok(())
        })
        .await
    }

    async fn outbox(&self) -> DbResult<(u64, Option<String>)> {
        self.call(|c| async move { query_one(&*c, sql::OUTBOX, &[], rules::outbox).await })
            .await
    }

    async fn belongs_to_cluster(&self) -> DbResult<bool> {
        self.is_cluster().await
    }

    async fn record_restart(&self, event: &RestartEvent) -> DbResult<()> {
        let event = event.clone();
        self.call(move |c| async move {
            c.execute(
                sql::RECORD_RESTART,
                &[
                    &event.actor,
                    &event.reason,
                    &i64::from(event.restart_count),
                    &event.at,
                ],
            )
            .await?;
            Ok(())
        })
        .await
    }

    async fn status(&self, recent_restarts: usize) -> DbResult<StatusReport> {
        self.call(move |c| status(c, recent_restarts)).await
    }
}

// After `name_of!`, which it uses.
pub mod cluster;
