//! Statements both dialects run as written.
//!
//! Both databases accept this text unchanged, so it is written once; the
//! dialects bind the parameters and decode the rows with [`super::rules`].
//! Parameters are written `$1`, `$2`, ... in the order they first appear:
//! PostgreSQL numbers them by their digits, SQLite by their order (to it
//! `$1` is a named parameter), and the two agree only in that order.
//!
//! Statements that differ (bulk loads, PostgreSQL's tokens for long names,
//! clocks, locks) stay in their dialect.

pub const SELECT_LEASE: &str = "SELECT name, owner_id, host, pid, epoch, acquired_at_ms, \
                                expires_at_ms FROM leases WHERE name = $1";

/// The standbys still waiting at `$1` (the database's time in ms).
pub const LIVE_STANDBYS: &str = "SELECT lease, owner_id, host, pid, since_ms, expires_at_ms \
                                 FROM lease_standbys WHERE expires_at_ms > $1 ORDER BY since_ms";

pub const REMOVE_STANDBY: &str = "DELETE FROM lease_standbys WHERE owner_id = $1";

pub const LOOKUP_SOURCE: &str =
    "SELECT source, fingerprint, rows, bad_rows, pairs FROM lookup_source WHERE id = 1";

pub const SAVE_LOOKUP_SOURCE: &str = "\
INSERT INTO lookup_source (id, source, fingerprint, rows, bad_rows, pairs, loaded_at)
VALUES (1, $1, $2, $3, $4, $5, $6)
ON CONFLICT (id) DO UPDATE SET source = excluded.source,
    fingerprint = excluded.fingerprint, rows = excluded.rows,
    bad_rows = excluded.bad_rows, pairs = excluded.pairs,
    loaded_at = excluded.loaded_at";

pub const CHUNKER_POSITION: &str = "\
SELECT source, rows_per_chunk, next_seq, next_offset, rows_emitted, pending_key, last_key, finished
FROM chunker_position WHERE id = 1";

pub const SAVE_CHUNKER_POSITION: &str = "\
INSERT INTO chunker_position (id, source, rows_per_chunk, next_seq, next_offset,
    rows_emitted, pending_key, last_key, finished, updated_at)
VALUES (1, $1, $2, $3, $4, $5, $6, $7, $8, $9)
ON CONFLICT (id) DO UPDATE SET source = excluded.source,
    rows_per_chunk = excluded.rows_per_chunk, next_seq = excluded.next_seq,
    next_offset = excluded.next_offset, rows_emitted = excluded.rows_emitted,
    pending_key = excluded.pending_key, last_key = excluded.last_key,
    finished = excluded.finished, updated_at = excluded.updated_at";

/// Next sequence number, rows emitted, finished.
pub const CHUNKER_PROGRESS: &str =
    "SELECT next_seq, rows_emitted, finished FROM chunker_position WHERE id = 1";

/// Claimed keys from sequence number `$1` on, at most `$2`.
pub const CHUNK_KEYS_FROM: &str =
    "SELECT seq, chunk_name FROM chunk_keys WHERE seq >= $1 ORDER BY seq LIMIT $2";

pub const PROCESSED_BETWEEN: &str =
    "SELECT chunk_name FROM processed_chunks WHERE chunk_name BETWEEN $1 AND $2";

pub const RECORD_IGNORED: &str = "\
INSERT INTO ignored_objects (object_key, seq, reason, quarantine_key, seen_at)
VALUES ($1, $2, $3, $4, $5) ON CONFLICT DO NOTHING";

pub const LAST_CHUNK: &str = "SELECT max(chunk_name) FROM processed_chunks";

pub const PENDING_DELTAS: &str = "SELECT delta FROM chunk_deltas ORDER BY chunk_name";

pub const PENDING_DELTA_COUNT: &str = "SELECT count(*) FROM chunk_deltas";

/// The oldest `$1` pending deltas, with their chunks' names.
pub const OLDEST_DELTAS: &str =
    "SELECT chunk_name, delta FROM chunk_deltas ORDER BY chunk_name LIMIT $1";

/// Forgets the deltas up to chunk `$1`, once compacted.
pub const DELETE_DELTAS_UP_TO: &str = "DELETE FROM chunk_deltas WHERE chunk_name <= $1";

/// What [`super::rules::plan_batches`] starts from: detections without a
/// batch, and the highest batch number so far.
pub const BATCH_PLAN_INPUT: &str = "\
SELECT (SELECT count(*) FROM detected_patterns WHERE batch_no IS NULL),
       (SELECT COALESCE(max(batch_no), 0) FROM detection_batches)";

/// Gives batch `$1` the `$2` oldest detections without a batch.
pub const ASSIGN_OLDEST: &str = "\
UPDATE detected_patterns SET batch_no = $1
WHERE id IN (SELECT id FROM detected_patterns WHERE batch_no IS NULL ORDER BY id LIMIT $2)";

pub const INSERT_BATCH: &str = "\
INSERT INTO detection_batches (batch_no, object_key, detections, created_at)
VALUES ($1, $2, $3, $4)";

pub const UNWRITTEN_BATCHES: &str = "\
SELECT batch_no, object_key, detections FROM detection_batches
WHERE written_at IS NULL ORDER BY batch_no";

/// Batch `$2` was written at `$1`.
pub const MARK_BATCH_WRITTEN: &str =
    "UPDATE detection_batches SET written_at = $1 WHERE batch_no = $2";

pub const OUTBOX: &str =
    "SELECT count(*), min(processed_at) FROM detected_patterns WHERE batch_no IS NULL";

pub const RECORD_RESTART: &str =
    "INSERT INTO restart_events (actor, reason, restart_count, at) VALUES ($1, $2, $3, $4)";

/// The counters of `status`, in [`super::rules::status_counts`]' order.
pub const STATUS_COUNTS: &str = "\
SELECT c.processed, c.rejected, c.row_total, c.bad_row_total, c.last_chunk, c.last_seq,
       b.written, b.pending, d.unbatched, i.ignored
FROM (SELECT count(*) FILTER (WHERE status = 'processed') AS processed,
             count(*) FILTER (WHERE status = 'rejected') AS rejected,
             CAST(COALESCE(sum(rows), 0) AS BIGINT) AS row_total,
             CAST(COALESCE(sum(bad_rows), 0) AS BIGINT) AS bad_row_total,
             max(chunk_name) AS last_chunk, max(seq) AS last_seq
      FROM processed_chunks) AS c,
     (SELECT count(written_at) AS written, count(*) - count(written_at) AS pending
      FROM detection_batches) AS b,
     (SELECT count(*) AS unbatched FROM detected_patterns WHERE batch_no IS NULL) AS d,
     (SELECT count(*) AS ignored FROM ignored_objects) AS i";

pub const DETECTIONS_BY_PATTERN: &str =
    "SELECT patternId, count(*) FROM detected_patterns GROUP BY patternId ORDER BY patternId";

/// The `$1` latest restarts, latest first.
pub const RECENT_RESTARTS: &str =
    "SELECT actor, reason, restart_count, at FROM restart_events ORDER BY id DESC LIMIT $1";

#[cfg(test)]
mod tests {
    use super::*;

    /// Every statement numbers its parameters in the order they first
    /// appear (see the module docs).
    #[test]
    fn parameters_are_numbered_in_order_of_appearance() {
        for statement in [
            SELECT_LEASE,
            LIVE_STANDBYS,
            REMOVE_STANDBY,
            LOOKUP_SOURCE,
            SAVE_LOOKUP_SOURCE,
            CHUNKER_POSITION,
            SAVE_CHUNKER_POSITION,
            CHUNKER_PROGRESS,
            CHUNK_KEYS_FROM,
            PROCESSED_BETWEEN,
            RECORD_IGNORED,
            LAST_CHUNK,
            PENDING_DELTAS,
            PENDING_DELTA_COUNT,
            OLDEST_DELTAS,
            DELETE_DELTAS_UP_TO,
            BATCH_PLAN_INPUT,
            ASSIGN_OLDEST,
            INSERT_BATCH,
            UNWRITTEN_BATCHES,
            MARK_BATCH_WRITTEN,
            OUTBOX,
            RECORD_RESTART,
            STATUS_COUNTS,
            DETECTIONS_BY_PATTERN,
            RECENT_RESTARTS,
        ] {
            let mut seen = 0;
            for (at, _) in statement.match_indices('$') {
                let digits: String = statement[at + 1..]
                    .chars()
                    .take_while(char::is_ascii_digit)
                    .collect();
                let number: usize = digits.parse().expect("a numbered parameter");
                assert!(
                    number <= seen + 1,
                    "${number} comes too early in {statement}"
                );
                seen = seen.max(number);
            }
        }
    }
}
