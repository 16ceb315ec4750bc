//! State stores: where committed state lives.
//!
//! The [`StateStore`] trait is the seam between the actors and a database.
//! Two implementations sit behind it: [`sqlite`] (the embedded default) and
//! `postgres` (production). Both keep the same tables (see `migrations/`) and
//! give the same guarantee: a [`CommitBatch`] (state changes of one or more
//! consecutive chunks, their `processed_chunks` rows and their new
//! detections) commits atomically, and only on top of the chunk the caller
//! saw last, so a chunk can never be applied twice.
//!
//! Every state-changing call carries the [`Fence`] of the ownership lease
//! (see [`lease`]) and is refused with [`DbError::Fenced`] inside its own
//! transaction when the caller no longer holds it, so two processes on one
//! bucket and database can never both write.
//!
//! Names are stored as text; ids exist only inside one process.
//!
//! Layers, top down: this trait; `rules` (what both databases must agree
//! on: commit decisions, batch numbering, the evidence → columns mapping,
//! row decoding, `status`), [`lease`] (who may write), `sql` (statements
//! both dialects run as written) and `scan` (large reads streamed back to
//! the caller); then the dialects, which keep only what differs: SQL text,
//! transactions, locking and fencing mechanics, and where calls run (SQLite
//! on a thread of its own, PostgreSQL on the I/O runtime).

pub mod delta;
pub mod lease;
pub mod postgres;
mod rules;
mod scan;
mod sql;
pub mod sqlite;

use std::sync::Arc;

use async_trait::async_trait;

use crate::config::{DatabaseKind, Settings};
use crate::detect::{Evidence, Gender, Pattern};
pub use lease::{Claimant, Fence, LeaseGrant, LeaseRow, Renewal, StandbyRow};

/// Where the chunker stands in the master file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChunkerPosition {
    pub source: String,
    pub rows_per_chunk: u64,
    /// Sequence number of the next chunk to write.
    pub next_seq: u64,
    /// Byte offset in the master file of the next data row.
    pub next_offset: u64,
    pub rows_emitted: u64,
    /// Keys chosen for chunks `next_seq`, `next_seq + 1`, ... whose PUTs
    /// may have started; any of them may already exist in the store.
    pub pending_keys: Vec<String>,
    /// Key of chunk `next_seq - 1`.
    pub last_key: Option<String>,
    /// The chunker reached the end of the master file.
    pub finished: bool,
}

impl ChunkerPosition {
    /// Checks that this saved position belongs to the master file `source`
    /// cut in chunks of `rows_per_chunk`.
    pub fn check(&self, source: &str, rows_per_chunk: u64) -> Result<(), String> {
        if self.source != source || self.rows_per_chunk != rows_per_chunk {
            return Err(format!(
                "the database holds the chunker position of {} with rows_per_chunk = {}, \
                 but the configuration says {} with rows_per_chunk = {}; \
                 use a fresh database and bucket for a different master file or chunk size",
                self.source, self.rows_per_chunk, source, rows_per_chunk
            ));
        }
        Ok(())
    }

    /// The `pending_key` column: the pending keys, one per line.
    pub fn pending_column(&self) -> Option<String> {
        (!self.pending_keys.is_empty()).then(|| self.pending_keys.join("\n"))
    }

    /// The pending keys with the sequence numbers they were chosen for.
    pub fn claimed_keys(&self) -> impl Iterator<Item = (u64, &str)> {
        (self.next_seq..).zip(self.pending_keys.iter().map(String::as_str))
    }

    pub fn pending_from_column(column: Option<String>) -> Vec<String> {
        column
            .map(|keys| keys.lines().map(str::to_string).collect())
            .unwrap_or_default()
    }
}

/// Which object is the chunk of each sequence number, as far as the
/// chunker has decided (see [`StateStore::chunk_claims`]).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ChunkClaims {
    /// `(seq, key)` the chunker chose, from the asked sequence number on,
    /// in order.
    pub keys: Vec<(u64, String)>,
    /// The chunker's next sequence number (0 before it saved a position).
    pub chunker_next_seq: u64,
    /// The chunker reached the end of the master file: sequence numbers
    /// from `chunker_next_seq` on will never be claimed by it.
    pub chunker_finished: bool,
}

/// An object under `stream_chunks/` that Mechanism Y does not apply.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IgnoredObject {
    pub key: String,
    /// The sequence number its name gives, if it has a chunk's shape.
    pub seq: Option<u64>,
    pub reason: String,
    /// Where a copy was put aside, if one was.
    pub quarantine_key: Option<String>,
}

/// What the lookup table was loaded from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LookupSource {
    pub source: String,
    pub fingerprint: String,
    pub rows: u64,
    pub bad_rows: u64,
    pub pairs: u64,
}

/// An aggregated CustomerImportance entry, as stored.
#[derive(Clone, Copy, Debug)]
pub struct WeightRow<'a> {
    pub merchant: &'a str,
    pub customer: &'a str,
    pub weight_sum: i64,
    pub rows: u64,
}

/// A pair's committed cumulative state, as stored.
#[derive(Clone, Copy, Debug)]
pub struct PairRow<'a> {
    pub merchant: &'a str,
    pub customer: &'a str,
    pub count: u64,
    pub amount: i64,
    pub gender: Gender,
}

/// A detection already emitted (customer is empty for PatId3).
#[derive(Clone, Copy, Debug)]
pub struct EmittedRow<'a> {
    pub pattern: Pattern,
    pub merchant: &'a str,
    pub customer: &'a str,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ChunkStatus {
    Processed,
    Rejected,
}

impl ChunkStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            ChunkStatus::Processed => "processed",
            ChunkStatus::Rejected => "rejected",
        }
    }
}

/// The `processed_chunks` row of one chunk.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ChunkRecord {
    pub name: String,
    pub seq: Option<u64>,
    pub status: ChunkStatus,
    pub rows: u64,
    pub bad_rows: u64,
    pub detections: u64,
    pub reason: Option<String>,
}

/// One chunk's state change, encoded by [`delta::encode`] or [`delta::encode_named`].
#[derive(Clone, Copy, Debug)]
pub struct DeltaBlob<'a> {
    pub chunk: &'a str,
    pub blob: &'a [u8],
}

/// A new detection with the seeds' fields.
#[derive(Clone, Debug)]
pub struct DetectionRecord<'a> {
    pub pattern: Pattern,
    pub merchant: &'a str,
    /// Empty for PatId3.
    pub customer: &'a str,
    pub evidence: Evidence,
    pub chunk_name: &'a str,
    pub y_start_time: &'a str,
    pub detection_time: &'a str,
}

/// Everything consecutive chunks change, committed in one transaction.
/// Their state changes go in as one blob per chunk (see [`delta`]).
#[derive(Clone, Debug)]
pub struct CommitBatch<'a> {
    /// The last chunk the caller knows to be committed; the commit only
    /// happens if that is still the last one.
    pub expected_last: Option<&'a str>,
    pub chunks: &'a [ChunkRecord],
    pub deltas: &'a [DeltaBlob<'a>],
    pub detections: &'a [DetectionRecord<'a>],
    pub processed_at: &'a str,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CommitOutcome {
    Committed,
    /// An earlier attempt of this very commit went through.
    AlreadyCommitted,
    /// Someone else moved on: the caller's view is stale.
    Conflict {
        last: Option<String>,
    },
}

/// A detection file: its key is fixed when detections are assigned to it,
/// before the object is written.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Batch {
    pub batch_no: u64,
    pub key: String,
    pub detections: u64,
}

/// One line of a detection file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DetectionLine {
    pub y_start_time: String,
    pub detection_time: String,
    pub pattern_id: String,
    pub action_type: String,
    pub customer: String,
    pub merchant: String,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RestartEvent {
    pub actor: String,
    pub reason: String,
    pub restart_count: u32,
    pub at: String,
}

/// What `txpipe status` prints.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StatusReport {
    pub chunks_produced: u64,
    pub rows_produced: u64,
    pub chunker_finished: bool,
    pub chunks_processed: u64,
    pub chunks_rejected: u64,
    pub rows_processed: u64,
    pub bad_rows: u64,
    pub last_chunk: Option<String>,
    pub detections: Vec<(String, u64)>,
    pub batches_written: u64,
    pub batches_pending: u64,
    pub detections_unbatched: u64,
    pub recent_restarts: Vec<RestartEvent>,
    /// Highest sequence number with a `processed_chunks` row.
    pub last_seq: Option<u64>,
    /// Objects under `stream_chunks/` recorded as not applied.
    pub ignored_objects: u64,
    /// The ownership lease, the database's time when it was read, and the
    /// processes waiting for it.
    pub owner: Option<LeaseRow>,
    pub now_ms: i64,
    pub standbys: Vec<StandbyRow>,
}

impl StatusReport {
    /// Chunks with a `processed_chunks` row, processed or rejected.
    pub fn chunks_done(&self) -> u64 {
        self.chunks_processed + self.chunks_rejected
    }

    /// Chunks produced and not yet processed.
    pub fn lag_chunks(&self) -> u64 {
        self.chunks_produced.saturating_sub(self.chunks_done())
    }

    /// Whether the chunker finished the master file and every chunk it
    /// wrote has a `processed_chunks` row.
    pub fn every_chunk_committed(&self) -> bool {
        self.chunker_finished
            && match self.chunks_produced {
                0 => true,
                produced => self.last_seq.is_some_and(|seq| seq + 1 >= produced),
            }
    }

    /// Detections of `pattern` (0 before the first).
    pub fn detections_of(&self, pattern: crate::detect::Pattern) -> u64 {
        self.detections
            .iter()
            .find(|(id, _)| id == pattern.id())
            .map_or(0, |(_, n)| *n)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum DbError {
    /// The database could not be reached or was busy; retrying may help.
    #[error("database unavailable: {0}")]
    Unavailable(String),
    #[error("database error: {0}")]
    Failed(String),
    /// The database holds state for a different master file or settings.
    #[error("{0}")]
    Mismatch(String),
    /// The caller no longer holds the ownership lease it writes under.
    #[error("fenced: {0}")]
    Fenced(String),
    /// A cluster worker no longer holds some key groups it writes (their
    /// leases passed to another worker): it drops them and goes on.
    #[error("key groups lost: {0}")]
    GroupsLost(String),
}

impl DbError {
    pub fn is_transient(&self) -> bool {
        matches!(self, DbError::Unavailable(_))
    }
}

pub type DbResult<T> = Result<T, DbError>;

/// The seam between actors and a database; see the module docs.
#[async_trait]
pub trait StateStore: Send + Sync {
    /// Applies pending migrations.
    async fn migrate(&self) -> DbResult<()>;

    async fn lookup_source(&self) -> DbResult<Option<LookupSource>>;
    /// Replaces the lookup table in one transaction.
    async fn load_lookup(
        &self,
        fence: &Fence,
        source: &LookupSource,
        rows: &[WeightRow<'_>],
    ) -> DbResult<()>;
    async fn scan_weights(
        &self,
        visit: &mut (dyn for<'r> FnMut(WeightRow<'r>) + Send),
    ) -> DbResult<()>;

    /// Takes `lease` for `me` if it is free (never held, expired or
    /// released, or its holder at `dead_epoch` is known to be dead), bumping
    /// its epoch; otherwise says who holds it. A granted `me` stops being
    /// listed as a standby.
    async fn acquire_lease(
        &self,
        lease: &str,
        me: &Claimant,
        ttl_ms: u64,
        dead_epoch: Option<u64>,
    ) -> DbResult<LeaseGrant>;
    /// Extends the lease by `ttl_ms` from now if `fence` still holds it.
    async fn renew_lease(&self, fence: &Fence, ttl_ms: u64) -> DbResult<Renewal>;
    /// Lets the lease go at once (a graceful stop), if `fence` holds it.
    async fn release_lease(&self, fence: &Fence) -> DbResult<()>;
    /// Lists `me` as waiting for `lease` for the next `ttl_ms`.
    async fn register_standby(&self, lease: &str, me: &Claimant, ttl_ms: u64) -> DbResult<()>;
    async fn remove_standby(&self, me: &Claimant) -> DbResult<()>;

    async fn chunker_position(&self) -> DbResult<Option<ChunkerPosition>>;
    /// Saves the position and claims the pending keys' sequence numbers
    /// (`chunk_keys`; a number once claimed keeps its key).
    async fn save_chunker_position(
        &self,
        fence: &Fence,
        position: &ChunkerPosition,
    ) -> DbResult<()>;
    /// Up to `limit` claimed keys from `from_seq` on, and where the chunker
    /// stands.
    async fn chunk_claims(&self, from_seq: u64, limit: usize) -> DbResult<ChunkClaims>;
    /// The `processed_chunks` names between `first` and `last` (inclusive).
    async fn processed_names_between(&self, first: &str, last: &str) -> DbResult<Vec<String>>;
    /// Records an object that is not applied; `false` if it was recorded
    /// before.
    async fn record_ignored(&self, fence: &Fence, object: &IgnoredObject) -> DbResult<bool>;

    /// The last chunk (by name) that is processed or rejected.
    async fn last_chunk(&self) -> DbResult<Option<String>>;
    /// The rows of `pair_state` (compacted state only).
    async fn scan_compacted_pairs(
        &self,
        visit: &mut (dyn for<'r> FnMut(PairRow<'r>) + Send),
    ) -> DbResult<()>;
    /// Encoded deltas of chunks not yet compacted, in chunk order.
    async fn pending_deltas(&self) -> DbResult<Vec<Vec<u8>>>;
    /// How many chunks' deltas wait to be compacted.
    async fn pending_delta_count(&self) -> DbResult<u64>;
    /// Folds up to `max_chunks` pending deltas, oldest first, into
    /// `pair_state` in one transaction. Returns how many it folded.
    async fn compact(&self, fence: &Fence, max_chunks: usize) -> DbResult<u64>;

    /// The cumulative state: `pair_state` with pending deltas added, read
    /// in one consistent snapshot (a compaction may run meanwhile).
    async fn scan_pairs(&self, visit: &mut (dyn for<'r> FnMut(PairRow<'r>) + Send))
    -> DbResult<()>;
    async fn scan_emitted(
        &self,
        visit: &mut (dyn for<'r> FnMut(EmittedRow<'r>) + Send),
    ) -> DbResult<()>;
    async fn commit(&self, fence: &Fence, batch: &CommitBatch<'_>) -> DbResult<CommitOutcome>;

    /// Assigns outbox detections, oldest first, to new batches of `size`
    /// (and the remainder to one smaller batch if `include_partial`).
    /// Returns how many batches were created.
    async fn assign_batches(
        &self,
        fence: &Fence,
        size: u64,
        include_partial: bool,
        stamp: &str,
    ) -> DbResult<u64>;
    /// Batches assigned but not yet written, oldest first.
    async fn unwritten_batches(&self) -> DbResult<Vec<Batch>>;
    async fn batch_lines(&self, batch_no: u64) -> DbResult<Vec<DetectionLine>>;
    async fn mark_batch_written(&self, fence: &Fence, batch_no: u64, at: &str) -> DbResult<()>;
    /// Detections waiting for a batch, and when the oldest was committed.
    async fn outbox(&self) -> DbResult<(u64, Option<String>)>;

    async fn record_restart(&self, event: &RestartEvent) -> DbResult<()>;

    /// Whether a cluster of workers (`cluster.enabled`) owns this database:
    /// then a single process must not run on it. Only PostgreSQL hosts
    /// clusters.
    async fn belongs_to_cluster(&self) -> DbResult<bool> {
        Ok(false)
    }
    async fn status(&self, recent_restarts: usize) -> DbResult<StatusReport>;
}

/// Opens the state store of an existing pipeline without changing or
/// creating anything (for `txpipe status`): a SQLite file must exist, and
/// no migration runs.
pub async fn open_existing(settings: &Settings) -> anyhow::Result<Arc<dyn StateStore>> {
    Ok(match DatabaseKind::of(&settings.database.url) {
        Some(DatabaseKind::Sqlite) => {
            let path = sqlite::path_of(&settings.database.url)?;
            if !path.is_file() {
                anyhow::bail!(
                    "no database at {} (database.url): nothing has run with this \
                     configuration yet, or the path is mistyped",
                    path.display()
                );
            }
            Arc::new(sqlite::SqliteStore::open(&settings.database.url)?)
        }
        Some(DatabaseKind::Postgres) => {
            Arc::new(postgres::PostgresStore::connect(&settings.database.url, 1).await?)
        }
        None => anyhow::bail!("unsupported database.url"),
    })
}

/// How long PostgreSQL lets one of our transactions sit idle before it ends
/// it: long enough for any pause between two statements of a healthy
/// transaction (a compaction merges deltas between its read and its write),
/// short enough that a frozen owner's locks do not hold the lease row, and
/// a standby's takeover, for long.
pub fn stalled_transaction_timeout(settings: &Settings) -> std::time::Duration {
    let ttl = match settings.cluster.enabled {
        true => settings.cluster.lease_ttl_ms,
        false => settings.ownership.lease_ttl_ms,
    };
    std::time::Duration::from_millis((ttl * 3).max(30_000))
}

/// Opens the state store a configuration selects and applies migrations.
pub async fn open(settings: &Settings) -> anyhow::Result<Arc<dyn StateStore>> {
    use backon::Retryable;
    // Processes started at once meet on a new SQLite file (one switches it
    // to WAL or migrates while the other opens it): a locked database at
    // this point is a moment's wait (up to about 10 s), not a failure.
    let backoff = backon::ExponentialBuilder::default()
        .with_min_delay(std::time::Duration::from_millis(50))
        .with_max_delay(std::time::Duration::from_secs(1))
        .with_max_times(14);
    (|| open_once(settings))
        .retry(backoff)
        .sleep(tokio::time::sleep)
        .when(|error| {
            error
                .downcast_ref::<DbError>()
                .is_some_and(DbError::is_transient)
        })
        .await
}

/// Opens the PostgreSQL database of a cluster (`cluster.enabled`) and
/// applies migrations: the same store as [`open`], typed for the cluster's
/// own calls.
pub async fn open_cluster(settings: &Settings) -> anyhow::Result<Arc<postgres::PostgresStore>> {
    use backon::Retryable;
    let backoff = backon::ExponentialBuilder::default()
        .with_min_delay(std::time::Duration::from_millis(50))
        .with_max_delay(std::time::Duration::from_secs(1))
        .with_max_times(14);
    let open = || async {
        let store = postgres::PostgresStore::connect_with(
            &settings.database.url,
            settings.database.pool_size,
            Some(stalled_transaction_timeout(settings)),
        )
        .await?;
        store.migrate().await?;
        Ok::<_, DbError>(Arc::new(store))
    };
    Ok(open
        .retry(backoff)
        .sleep(tokio::time::sleep)
        .when(DbError::is_transient)
        .await?)
}

async fn open_once(settings: &Settings) -> anyhow::Result<Arc<dyn StateStore>> {
    let store: Arc<dyn StateStore> = match DatabaseKind::of(&settings.database.url) {
        Some(DatabaseKind::Sqlite) => Arc::new(sqlite::SqliteStore::open(&settings.database.url)?),
        Some(DatabaseKind::Postgres) => Arc::new(
            postgres::PostgresStore::connect_with(
                &settings.database.url,
                settings.database.pool_size,
                Some(stalled_transaction_timeout(settings)),
            )
            .await?,
        ),
        None => anyhow::bail!("unsupported database.url"),
    };
    store.migrate().await?;
    Ok(store)
}
