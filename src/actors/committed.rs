//! The committed state Mechanism Y starts from, and the message that hands
//! it out.
//!
//! Mechanism Y's stages (watcher, reader, pair table, detectors, tracker)
//! hold views of one cumulative state, over one lookup table. They must agree on which chunk
//! that state ends with, so they are started together: the supervisor
//! loads one [`Committed`] snapshot from the database (on start, and
//! whenever one of them restarted) and sends it to each with [`Start`],
//! under a new *generation* number. Each stage builds its state from it in
//! its restart constructor, and drops every message of an older
//! generation, so nothing a failed generation left in a mailbox is ever
//! applied.

use std::sync::Arc;

use actix::prelude::*;

use super::wiring::Wiring;
use crate::db::DbError;
use crate::detect::{Cents, DetectionKey, Engine, PairState, Snapshot};

/// Committed state as of the last committed chunk.
#[derive(Default)]
pub struct Committed {
    pub generation: u64,
    /// The last chunk committed (processed or rejected).
    pub last_chunk: Option<Arc<str>>,
    /// Cumulative pair state and the detections already emitted.
    pub snapshot: Snapshot,
    /// The detection engine over the loaded lookup table.
    pub engine: Engine,
}

impl Committed {
    /// Whether this snapshot replaces the state of generation `current`
    /// (`None`: no state yet). A `Start` of an older generation, delivered
    /// late, is ignored.
    pub fn supersedes(&self, current: Option<u64>) -> bool {
        current.is_none_or(|generation| generation <= self.generation)
    }

    /// Reads the committed state from the database: the last committed
    /// chunk, then the state, then the last chunk again. Commits write a
    /// chunk's state and its `processed_chunks` row in one transaction, so
    /// if the last chunk did not change, the state read in between is
    /// exactly the state as of that chunk; if it changed, read again.
    pub async fn load(
        wiring: &Wiring,
        generation: u64,
        engine: Engine,
    ) -> Result<Committed, DbError> {
        loop {
            let last = wiring
                .db("read last chunk", || wiring.state.last_chunk())
                .await?;
            let snapshot = Self::read_state(wiring).await?;
            let again = wiring
                .db("read last chunk", || wiring.state.last_chunk())
                .await?;
            if again == last {
                return Ok(Committed {
                    generation,
                    last_chunk: last.map(Arc::from),
                    snapshot,
                    engine,
                });
            }
        }
    }

    async fn read_state(w: &Wiring) -> Result<Snapshot, DbError> {
        let names = &*w.names;
        let mut snapshot = Snapshot::default();
        w.state
            .scan_pairs(&mut |row| {
                snapshot.pairs.push(PairState {
                    merchant: names.merchant(row.merchant),
                    customer: names.customer(row.customer),
                    count: row.count,
                    amount: Cents(row.amount),
                    gender: row.gender,
                })
            })
            .await?;
        w.state
            .scan_emitted(&mut |row| {
                snapshot.emitted.push(DetectionKey {
                    pattern: row.pattern,
                    merchant: names.merchant(row.merchant),
                    customer: (!row.customer.is_empty()).then(|| names.customer(row.customer)),
                })
            })
            .await?;
        Ok(snapshot)
    }
}

/// Start (or start over) from committed state, in its generation.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Start(pub Arc<Committed>);
