//! The actor topology (actix): Mechanism X and Mechanism Y as stages that
//! own their state and pass chunks along bounded mailboxes, under one
//! supervisor.
//!
//! ```text
//!                       ┌─────────────────────── SupervisorActor ───────────────────────┐
//!                       │ starts the stages, restarts them (backoff, limit), hands out  │
//!                       │ Mechanism Y's committed snapshot, keeps the lease, shuts down │
//!                       └────────────────────────────────────────────────────────────────┘
//!  Mechanism X
//!  master CSV ──► ChunkerActor ──PUT──► stream_chunks/
//!                      │ hints (claims, bodies)    │ LIST
//!  Mechanism Y         ▼                           ▼
//!               S3WatcherActor ──Fetch──► ReaderActor ──Parsed──► PairTableActor ──Apply──► DetectorActor × n
//!               (lists, gates)            (GET, parse)            (folds pairs)  ◄─detections─┘
//!                                                                       │ Evaluated
//!                                                                       ▼
//!                                   CompactorActor ◄─ChunksCommitted─ TrackerActor ──one transaction──► database
//!                                   (folds deltas)                        │ ChunksCommitted
//!                                                                         ▼
//!                                                detected_patterns/ ◄─PUT─ BatchWriterActor
//! ```
//!
//! One chunk's path, file by file: [`watcher`] lists it and announces it
//! with a permit of `watcher.max_in_flight`; [`reader`] reads and parses
//! it; [`pair_table`] folds it into the cumulative pair table in order and
//! sends the update to every [`detector`]; once they answered, [`tracker`]
//! commits it (state change, `processed_chunks` row, detections) in order
//! and drops its permit; [`batch_writer`] writes its detections to a file
//! of 50; [`compactor`] later folds its state change into `pair_state`.
//!
//! Every stage runs on its own arbiter (thread) inside the generic
//! [`supervised::Supervised`] actor: panics never escape a handler, a
//! failed stage restarts in place with a backoff, and its state is rebuilt
//! from committed state in one place. Mechanism Y's stages restart
//! together from one snapshot ([`committed`]), numbered by generation;
//! [`sequence`] keeps their order. Data only moves with `send().await` on
//! bounded mailboxes. What all stages share is immutable [`wiring`].
//!
//! The topology runs only in the process that holds the ownership lease
//! (`db::lease`): the supervisor renews it, every state change carries its
//! fence, and losing it stops the process at once. Which listed objects are
//! chunks is decided by [`chunk_gate`], a pure rule set the watcher feeds.

pub mod batch_writer;
pub mod chunk_gate;
pub mod chunker;
pub mod committed;
pub mod compactor;
pub mod detector;
pub mod faults;
pub mod membership;
pub mod pair_table;
pub mod reader;
pub mod sequence;
pub mod supervised;
pub mod supervisor;
pub mod tracker;
pub mod watcher;
pub mod wiring;

/// Why a stage could not handle a message.
#[derive(Clone, Debug, thiserror::Error)]
pub enum StageError {
    /// The actor failed and is being restarted.
    #[error("{actor} failed: {reason}")]
    Crashed { actor: String, reason: String },
    /// The message belongs to an older view of committed state.
    #[error("stale: {0}")]
    Stale(String),
}

impl StageError {
    pub fn crashed(actor: &str, reason: String) -> StageError {
        StageError::Crashed {
            actor: actor.to_string(),
            reason,
        }
    }
}
