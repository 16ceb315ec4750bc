//! What both state stores must agree on, written once above the dialects.
//!
//! The dialects ([`super::sqlite`], [`super::postgres`]) run SQL and own
//! transactions, locking and fencing mechanics; everything that decides or
//! shapes data lives here, so the two databases cannot drift apart:
//!
//! - integer conversions between the API's unsigned counts and the
//!   databases' signed `BIGINT` columns ([`to_i64`], [`to_u64`]);
//! - reading a result row into the API's types, whichever driver produced
//!   it ([`Columns`] and the decoders below, one per row shape);
//! - a commit: its rows as columns ([`CommitRows`], the evidence → columns
//!   mapping) and the decision whether it may go ahead on top of what the
//!   database says the last chunk is ([`CommitRows::stale`]);
//! - batch assignment: which batches to create from the detections waiting
//!   ([`plan_batches`]);
//! - `status`: how the counts become a [`StatusReport`] ([`StatusRows`]).
//!
//! Lease decisions live beside these in [`super::lease`]. Data flows
//! through in one direction: the API's values are converted here into
//! column values, a dialect writes them; a dialect reads rows, the decoders
//! here turn them into the API's values.

use super::lease::LeaseRow;
use super::{
    Batch, ChunkerPosition, CommitBatch, CommitOutcome, DbError, DbResult, DetectionLine,
    LookupSource, RestartEvent, StandbyRow, StatusReport,
};

/// A count as a `BIGINT` column holds it (saturating: no count reaches it).
pub fn to_i64(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

/// A `BIGINT` count as the API gives it (a negative value cannot be a
/// count: it reads as 0).
pub fn to_u64(value: i64) -> u64 {
    u64::try_from(value).unwrap_or(0)
}

/// A process id as stored in a `BIGINT` column (0: none known).
fn to_pid(value: i64) -> u32 {
    u32::try_from(value).unwrap_or(0)
}

/// One result row of either driver, read by column index. Every integer
/// column of the schema is a 64-bit `BIGINT` (SQLite's `INTEGER`).
pub trait Columns {
    fn int(&self, index: usize) -> DbResult<i64>;
    fn opt_int(&self, index: usize) -> DbResult<Option<i64>>;
    fn text(&self, index: usize) -> DbResult<String>;
    fn opt_text(&self, index: usize) -> DbResult<Option<String>>;
    fn flag(&self, index: usize) -> DbResult<bool>;
}

/// A column that does not hold what the schema says: not transient.
pub fn decode_error(index: usize, error: impl std::fmt::Display) -> DbError {
    DbError::Failed(format!("column {index}: {error}"))
}

/// A row of [`super::sql::SELECT_LEASE`].
pub fn lease_row(row: &dyn Columns) -> DbResult<LeaseRow> {
    Ok(LeaseRow {
        name: row.text(0)?,
        owner_id: row.text(1)?,
        host: row.text(2)?,
        pid: to_pid(row.int(3)?),
        epoch: to_u64(row.int(4)?),
        acquired_at_ms: row.int(5)?,
        expires_at_ms: row.int(6)?,
    })
}

/// A row of [`super::sql::LIVE_STANDBYS`].
pub fn standby_row(row: &dyn Columns) -> DbResult<StandbyRow> {
    Ok(StandbyRow {
        lease: row.text(0)?,
        owner_id: row.text(1)?,
        host: row.text(2)?,
        pid: to_pid(row.int(3)?),
        since_ms: row.int(4)?,
        expires_at_ms: row.int(5)?,
    })
}

/// A row of [`super::sql::RECENT_RESTARTS`].
pub fn restart_event(row: &dyn Columns) -> DbResult<RestartEvent> {
    Ok(RestartEvent {
        actor: row.text(0)?,
        reason: row.text(1)?,
        restart_count: u32::try_from(row.int(2)?).unwrap_or(u32::MAX),
        at: row.text(3)?,
    })
}

/// A row of [`super::sql::LOOKUP_SOURCE`].
pub fn lookup_source(row: &dyn Columns) -> DbResult<LookupSource> {
    Ok(LookupSource {
        source: row.text(0)?,
        fingerprint: row.text(1)?,
        rows: to_u64(row.int(2)?),
        bad_rows: to_u64(row.int(3)?),
        pairs: to_u64(row.int(4)?),
    })
}

/// A row of [`super::sql::CHUNKER_POSITION`].
pub fn chunker_position(row: &dyn Columns) -> DbResult<ChunkerPosition> {
    Ok(ChunkerPosition {
        source: row.text(0)?,
        rows_per_chunk: to_u64(row.int(1)?),
        next_seq: to_u64(row.int(2)?),
        next_offset: to_u64(row.int(3)?),
        rows_emitted: to_u64(row.int(4)?),
        pending_keys: ChunkerPosition::pending_from_column(row.opt_text(5)?),
        last_key: row.opt_text(6)?,
        finished: row.flag(7)?,
    })
}

/// A row of [`super::sql::CHUNKER_PROGRESS`]: next sequence number, rows
/// emitted, finished.
pub fn chunker_progress(row: &dyn Columns) -> DbResult<(u64, u64, bool)> {
    Ok((to_u64(row.int(0)?), to_u64(row.int(1)?), row.flag(2)?))
}

/// A row of [`super::sql::CHUNK_KEYS_FROM`]: a claimed sequence number and
/// its key.
pub fn chunk_key(row: &dyn Columns) -> DbResult<(u64, String)> {
    Ok((to_u64(row.int(0)?), row.text(1)?))
}

/// A row of [`super::sql::UNWRITTEN_BATCHES`].
pub fn batch(row: &dyn Columns) -> DbResult<Batch> {
    Ok(Batch {
        batch_no: to_u64(row.int(0)?),
        key: row.text(1)?,
        detections: to_u64(row.int(2)?),
    })
}

/// A row of a batch's lines (`y_start_time, detection_time, patternId,
/// actionType, customer, merchant`).
pub fn detection_line(row: &dyn Columns) -> DbResult<DetectionLine> {
    Ok(DetectionLine {
        y_start_time: row.text(0)?,
        detection_time: row.text(1)?,
        pattern_id: row.text(2)?,
        action_type: row.text(3)?,
        customer: row.text(4)?,
        merchant: row.text(5)?,
    })
}

/// A row of [`super::sql::OUTBOX`]: detections waiting, oldest commit time.
pub fn outbox(row: &dyn Columns) -> DbResult<(u64, Option<String>)> {
    Ok((to_u64(row.int(0)?), row.opt_text(1)?))
}

/// A single text column (a chunk name, `max(chunk_name)`).
pub fn opt_name(row: &dyn Columns) -> DbResult<Option<String>> {
    row.opt_text(0)
}

/// A single count column.
pub fn count(row: &dyn Columns) -> DbResult<u64> {
    Ok(to_u64(row.int(0)?))
}

/// The values of one commit, owned (a commit runs on the database's own
/// thread or runtime) and laid out as columns: the PostgreSQL dialect binds
/// each column as one array, the SQLite dialect inserts row by row.
pub struct CommitRows {
    pub expected_last: Option<String>,
    /// The name of the batch's last chunk: if the database's last chunk is
    /// this one, an earlier attempt of this very commit went through.
    pub final_chunk: String,
    pub processed_at: String,
    pub deltas: DeltaColumns,
    pub chunks: ChunkColumns,
    pub detections: DetectionColumns,
}

#[derive(Default)]
pub struct DeltaColumns {
    pub chunk: Vec<String>,
    pub blob: Vec<Vec<u8>>,
}

/// `processed_chunks` columns.
#[derive(Default)]
pub struct ChunkColumns {
    pub name: Vec<String>,
    pub seq: Vec<Option<i64>>,
    pub status: Vec<&'static str>,
    pub rows: Vec<i64>,
    pub bad_rows: Vec<i64>,
    pub detections: Vec<i64>,
    pub reason: Vec<Option<String>>,
}

/// `detected_patterns` columns: the evidence of each detection as the
/// seeds' fields (`txn_count`, `avg_weight`, `avg_amount`, `txn_rank`,
/// `weight_rank`, `F`, `M`), the pattern's id and action, and where it
/// came from. `customer` and `merchant` hold names as they are.
#[derive(Default)]
pub struct DetectionColumns {
    pub customer: Vec<String>,
    pub merchant: Vec<String>,
    pub txn_count: Vec<Option<i64>>,
    pub avg_weight: Vec<Option<f64>>,
    pub avg_amount: Vec<Option<f64>>,
    pub txn_rank: Vec<Option<f64>>,
    pub weight_rank: Vec<Option<f64>>,
    pub female: Vec<Option<i64>>,
    pub male: Vec<Option<i64>>,
    pub pattern_id: Vec<&'static str>,
    pub action_type: Vec<&'static str>,
    pub chunk_name: Vec<String>,
    pub y_start_time: Vec<String>,
    pub detection_time: Vec<String>,
}

impl CommitRows {
    /// The rows of `batch`; `None` if it has no chunk (nothing to commit).
    pub fn of(batch: &CommitBatch<'_>) -> Option<CommitRows> {
        let final_chunk = batch.chunks.last()?.name.clone();
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
        let mut detections = DetectionColumns::default();
        for d in batch.detections {
            let e = &d.evidence;
            detections.customer.push(d.customer.to_string());
            detections.merchant.push(d.merchant.to_string());
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
            detections.y_start_time.push(d.y_start_time.to_string());
            detections.detection_time.push(d.detection_time.to_string());
        }
        Some(CommitRows {
            expected_last: batch.expected_last.map(str::to_string),
            final_chunk,
            processed_at: batch.processed_at.to_string(),
            deltas: DeltaColumns {
                chunk: batch.deltas.iter().map(|d| d.chunk.to_string()).collect(),
                blob: batch.deltas.iter().map(|d| d.blob.to_vec()).collect(),
            },
            chunks,
            detections,
        })
    }

    /// Whether the commit may go ahead, given the last chunk the database
    /// holds (read inside the commit's transaction, under its lock): `None`
    /// if that is the chunk the caller saw last; otherwise the outcome to
    /// report without writing anything.
    pub fn stale(&self, last: Option<String>) -> Option<CommitOutcome> {
        if last == self.expected_last {
            None
        } else if last.as_deref() == Some(self.final_chunk.as_str()) {
            Some(CommitOutcome::AlreadyCommitted)
        } else {
            Some(CommitOutcome::Conflict { last })
        }
    }
}

/// A detection batch to create: its row of `detection_batches`, and how
/// many of the oldest detections without a batch it takes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NewBatch {
    pub batch_no: i64,
    pub key: String,
    pub detections: i64,
}

/// The batches `assign_batches` creates: `unbatched` detections wait, the
/// highest batch number so far is `last_batch_no`. Full batches of `size`,
/// oldest detections first, and the remainder as one smaller batch only if
/// `include_partial` (at the end of a run); numbers follow on without gaps.
pub fn plan_batches(
    unbatched: u64,
    last_batch_no: u64,
    size: u64,
    include_partial: bool,
    stamp: &str,
) -> Vec<NewBatch> {
    if size == 0 {
        return Vec::new();
    }
    let mut sizes = vec![size; usize::try_from(unbatched / size).unwrap_or(usize::MAX)];
    if include_partial && !unbatched.is_multiple_of(size) {
        sizes.push(unbatched % size);
    }
    sizes
        .into_iter()
        .zip(last_batch_no + 1..)
        .map(|(detections, batch_no)| NewBatch {
            batch_no: to_i64(batch_no),
            key: crate::layout::batch_key(batch_no, stamp),
            detections: to_i64(detections),
        })
        .collect()
}

/// What `status` reads, each part decoded by this module; the dialect runs
/// the statements of [`super::sql`] (in one snapshot where it can).
pub struct StatusRows {
    /// [`chunker_progress`], if the chunker ever saved a position.
    pub chunker: Option<(u64, u64, bool)>,
    /// A row of [`super::sql::STATUS_COUNTS`].
    pub counts: StatusCounts,
    /// `(patternId, count)`, by pattern.
    pub detections: Vec<(String, u64)>,
    pub recent_restarts: Vec<RestartEvent>,
    /// The pipeline lease as stored (see [`owner`]).
    pub lease: Option<LeaseRow>,
    pub now_ms: i64,
    pub standbys: Vec<StandbyRow>,
}

/// The counters of [`super::sql::STATUS_COUNTS`], in its column order.
pub struct StatusCounts {
    pub chunks_processed: u64,
    pub chunks_rejected: u64,
    pub rows_processed: u64,
    pub bad_rows: u64,
    pub last_chunk: Option<String>,
    pub last_seq: Option<u64>,
    pub batches_written: u64,
    pub batches_pending: u64,
    pub detections_unbatched: u64,
    pub ignored_objects: u64,
}

/// A row of [`super::sql::STATUS_COUNTS`].
pub fn status_counts(row: &dyn Columns) -> DbResult<StatusCounts> {
    Ok(StatusCounts {
        chunks_processed: to_u64(row.int(0)?),
        chunks_rejected: to_u64(row.int(1)?),
        rows_processed: to_u64(row.int(2)?),
        bad_rows: to_u64(row.int(3)?),
        last_chunk: row.opt_text(4)?,
        last_seq: row.opt_int(5)?.map(to_u64),
        batches_written: to_u64(row.int(6)?),
        batches_pending: to_u64(row.int(7)?),
        detections_unbatched: to_u64(row.int(8)?),
        ignored_objects: to_u64(row.int(9)?),
    })
}

/// A row of [`super::sql::DETECTIONS_BY_PATTERN`].
pub fn pattern_count(row: &dyn Columns) -> DbResult<(String, u64)> {
    Ok((row.text(0)?, to_u64(row.int(1)?)))
}

/// The holder of a lease as `status` shows it: a row at epoch 0 is a
/// placeholder that nobody ever held (PostgreSQL creates one to lock it).
pub fn owner(lease: Option<LeaseRow>) -> Option<LeaseRow> {
    lease.filter(|row| row.epoch > 0)
}

impl StatusRows {
    pub fn report(self) -> StatusReport {
        let (chunks_produced, rows_produced, chunker_finished) =
            self.chunker.unwrap_or((0, 0, false));
        let c = self.counts;
        StatusReport {
            chunks_produced,
            rows_produced,
            chunker_finished,
            chunks_processed: c.chunks_processed,
            chunks_rejected: c.chunks_rejected,
            rows_processed: c.rows_processed,
            bad_rows: c.bad_rows,
            last_chunk: c.last_chunk,
            detections: self.detections,
            batches_written: c.batches_written,
            batches_pending: c.batches_pending,
            detections_unbatched: c.detections_unbatched,
            recent_restarts: self.recent_restarts,
            last_seq: c.last_seq,
            ignored_objects: c.ignored_objects,
            owner: owner(self.lease),
            now_ms: self.now_ms,
            standbys: self.standbys,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rows(expected_last: Option<&str>, final_chunk: &str) -> CommitRows {
        CommitRows {
            expected_last: expected_last.map(str::to_string),
            final_chunk: final_chunk.to_string(),
            processed_at: String::new(),
            deltas: DeltaColumns::default(),
            chunks: ChunkColumns::default(),
            detections: DetectionColumns::default(),
        }
    }

    #[test]
    fn a_commit_goes_ahead_only_on_top_of_the_last_chunk_it_saw() {
        assert_eq!(rows(Some("c1"), "c3").stale(Some("c1".into())), None);
        assert_eq!(rows(None, "c0").stale(None), None);
        assert_eq!(
            rows(Some("c1"), "c3").stale(Some("c3".into())),
            Some(CommitOutcome::AlreadyCommitted)
        );
        assert_eq!(
            rows(Some("c1"), "c3").stale(Some("c2".into())),
            Some(CommitOutcome::Conflict {
                last: Some("c2".into())
            })
        );
        assert_eq!(
            rows(Some("c1"), "c3").stale(None),
            Some(CommitOutcome::Conflict { last: None })
        );
    }

    #[test]
    fn batches_are_full_and_numbered_on_with_the_remainder_only_at_the_end() {
        let sizes = |plan: Vec<NewBatch>| -> Vec<(i64, i64)> {
            plan.iter().map(|b| (b.batch_no, b.detections)).collect()
        };
        assert_eq!(sizes(plan_batches(7, 4, 3, false, "s")), [(5, 3), (6, 3)]);
        assert_eq!(
            sizes(plan_batches(7, 4, 3, true, "s")),
            [(5, 3), (6, 3), (7, 1)]
        );
        assert_eq!(sizes(plan_batches(6, 0, 3, true, "s")), [(1, 3), (2, 3)]);
        assert!(plan_batches(2, 0, 3, false, "s").is_empty());
        assert!(plan_batches(0, 0, 3, true, "s").is_empty());
        assert!(plan_batches(5, 0, 0, true, "s").is_empty());
        assert_eq!(
            plan_batches(1, 8, 3, true, "s")[0].key,
            crate::layout::batch_key(9, "s")
        );
    }

    #[test]
    fn conversions_saturate_instead_of_wrapping() {
        assert_eq!(to_i64(u64::MAX), i64::MAX);
        assert_eq!(to_u64(-1), 0);
        assert_eq!(to_pid(-1), 0);
    }
}
