//! Scans: large reads streamed from where the database runs to the caller.
//!
//! A scan's query runs where its dialect runs queries (SQLite's own thread,
//! PostgreSQL's I/O runtime), never on the caller's thread, and the caller's
//! visitor runs on the caller's thread. Between them, owned rows travel in
//! batches of [`BATCH`] over a channel of a few batches, so memory stays
//! bounded whatever the table's size and the query never waits long for a
//! slow visitor. Dropping the receiver (the caller gave up) stops the
//! producer at its next batch.
//!
//! The cumulative pair state is read the same way by both dialects: the
//! pending deltas first, then the compacted pairs, both from one snapshot;
//! [`merge_pairs`] overlays them on the caller's side.

use tokio::sync::mpsc;

use super::delta::Merged;
use super::rules::to_u64;
use super::{DbResult, EmittedRow, PairRow, WeightRow};
use crate::detect::{Gender, Pattern};

/// Rows a batch holds.
const BATCH: usize = 4096;

/// The producer's end of a scan.
pub struct Sink<T> {
    sender: mpsc::Sender<Message<T>>,
    batch: Vec<T>,
}

/// The caller's end of a scan.
pub type Rows<T> = mpsc::Receiver<Message<T>>;

/// Rows, then the end of the scan: rows that stop without an end (the
/// producer vanished) are an error, never a short but complete answer.
pub enum Message<T> {
    Rows(Vec<T>),
    End(DbResult<Vec<T>>),
}

/// A scan's two ends.
pub fn channel<T>() -> (Sink<T>, Rows<T>) {
    let (sender, receiver) = mpsc::channel(4);
    (
        Sink {
            sender,
            batch: Vec::with_capacity(BATCH),
        },
        receiver,
    )
}

impl<T> Sink<T> {
    /// Adds a row; returns a full batch to send, if this one filled it.
    fn push(&mut self, row: T) -> Option<Vec<T>> {
        self.batch.push(row);
        (self.batch.len() == BATCH)
            .then(|| std::mem::replace(&mut self.batch, Vec::with_capacity(BATCH)))
    }

    /// Adds a row from a thread outside any async runtime; `false` once the
    /// caller stopped listening.
    pub fn push_blocking(&mut self, row: T) -> bool {
        match self.push(row) {
            Some(full) => self.sender.blocking_send(Message::Rows(full)).is_ok(),
            None => true,
        }
    }

    /// Adds a row from an async task; `false` once the caller stopped
    /// listening.
    pub async fn push_async(&mut self, row: T) -> bool {
        match self.push(row) {
            Some(full) => self.sender.send(Message::Rows(full)).await.is_ok(),
            None => true,
        }
    }

    /// Sends what is left, or the error that ended the scan.
    pub fn finish_blocking(mut self, result: DbResult<()>) {
        let last = self.last(result);
        let _ = self.sender.blocking_send(last);
    }

    /// [`Sink::finish_blocking`] from an async task.
    pub async fn finish_async(mut self, result: DbResult<()>) {
        let last = self.last(result);
        let _ = self.sender.send(last).await;
    }

    fn last(&mut self, result: DbResult<()>) -> Message<T> {
        Message::End(result.map(|()| std::mem::take(&mut self.batch)))
    }
}

/// Hands every row to `visit`, in order; the first error ends the scan.
pub async fn visit_all<T>(mut rows: Rows<T>, mut visit: impl FnMut(&T)) -> DbResult<()> {
    loop {
        let (batch, last) = next(&mut rows).await?;
        batch.iter().for_each(&mut visit);
        if last {
            return Ok(());
        }
    }
}

/// The next batch, and whether it is the last.
async fn next<T>(rows: &mut Rows<T>) -> DbResult<(Vec<T>, bool)> {
    match rows.recv().await {
        Some(Message::Rows(batch)) => Ok((batch, false)),
        Some(Message::End(last)) => Ok((last?, true)),
        None => Err(super::DbError::Failed(
            "a scan ended before its last row (its database task stopped)".into(),
        )),
    }
}

/// A row of `customer_importance`, owned.
pub type OwnedWeight = (String, String, i64, i64);

pub fn visit_weights(
    visit: &mut (dyn for<'r> FnMut(WeightRow<'r>) + Send),
) -> impl FnMut(&OwnedWeight) + '_ {
    |(merchant, customer, sum, rows)| {
        visit(WeightRow {
            merchant,
            customer,
            weight_sum: *sum,
            rows: to_u64(*rows),
        })
    }
}

/// A row of `pair_state`, owned.
pub type OwnedPair = (String, String, i64, i64, Gender);

fn pair_row(pair: &OwnedPair) -> PairRow<'_> {
    let (merchant, customer, count, amount, gender) = pair;
    PairRow {
        merchant,
        customer,
        count: to_u64(*count),
        amount: *amount,
        gender: *gender,
    }
}

pub fn visit_pairs(
    visit: &mut (dyn for<'r> FnMut(PairRow<'r>) + Send),
) -> impl FnMut(&OwnedPair) + '_ {
    |pair| visit(pair_row(pair))
}

/// A row of `detected_patterns`' keys, owned.
pub type OwnedEmitted = (Pattern, String, String);

pub fn visit_emitted(
    visit: &mut (dyn for<'r> FnMut(EmittedRow<'r>) + Send),
) -> impl FnMut(&OwnedEmitted) + '_ {
    |(pattern, merchant, customer)| {
        visit(EmittedRow {
            pattern: *pattern,
            merchant,
            customer,
        })
    }
}

/// The patternId column as a [`Pattern`].
pub fn pattern(id: &str) -> DbResult<Pattern> {
    Pattern::from_id(id)
        .ok_or_else(|| super::DbError::Failed(format!("unknown patternId {id:?} in table")))
}

/// A part of the cumulative pair state: all pending deltas come before the
/// first compacted pair.
pub enum PairPart {
    Delta(Vec<u8>),
    Pair(OwnedPair),
}

/// The cumulative state: each compacted pair with the pending deltas added,
/// then the pairs only the deltas hold.
pub async fn merge_pairs(
    rows: Rows<PairPart>,
    visit: &mut (dyn for<'r> FnMut(PairRow<'r>) + Send),
) -> DbResult<()> {
    let mut rows = rows;
    let mut merged = Merged::default();
    loop {
        let (batch, last) = next(&mut rows).await?;
        for part in batch {
            match part {
                PairPart::Delta(blob) => merged.add(&blob)?,
                PairPart::Pair(pair) => merged.overlay_row(pair_row(&pair), &mut *visit),
            }
        }
        if last {
            break;
        }
    }
    merged.finish(visit);
    Ok(())
}
