//! The actor topology (actix), Vector-style: a source, transforms and sinks
//! around one supervisor.
//!
//! ```text
//!                      ┌──────────────── SupervisorActor ────────────────┐
//!                      │ restarts, backoff, restart limit, shutdown      │
//!                      └─────────────────────────────────────────────────┘
//!  master CSV ─► ChunkerActor ─PUT─► stream_chunks/ ◄─LIST/GET─ S3WatcherActor
//!                (Mechanism X)                                    │ Apply (bounded mailboxes)
//!                                                                 ▼
//!                                          DetectorActor × (PatId1, PatId2, PatId3) × shards
//!                                                                 │ detections
//!                                                                 ▼
//!                                                    TrackerActor ─ one transaction per chunk group:
//!                                                                 │   pair state + processed_chunks
//!                                                                 │   + detections (outbox)
//!                                                                 ▼ doorbell
//!                                 detected_patterns/ ◄─PUT─ BatchWriterActor
//! ```
//!
//! Every actor runs on its own arbiter (thread). Panics never escape a
//! handler: they are caught, turned into a failure, and the actor is
//! restarted in place by actix's `Supervisor` (see [`supervisor`]). Data
//! only moves with `send().await` on bounded mailboxes, and the watcher
//! keeps at most `watcher.max_in_flight` chunks between listing and commit.
//!
//! The topology runs only in the process that holds the ownership lease
//! (`db::lease`): the supervisor renews it, every state change carries its
//! fence, and losing it stops the process at once. Which listed objects are
//! chunks is decided by [`chunk_gate`], a pure rule set the watcher feeds.

pub mod batch_writer;
pub mod chunk_gate;
pub mod chunker;
pub mod compactor;
pub mod context;
pub mod detector;
pub mod faults;
pub mod supervisor;
pub mod tracker;
pub mod watcher;

/// Why a stage could not handle a message.
#[derive(Clone, Debug, thiserror::Error)]
pub enum StageError {
    /// The actor failed and is being restarted.
    #[error("{actor} failed: {reason}")]
    Crashed { actor: String, reason: String },
    /// The message belongs to an older view of committed state.
    #[error("stale: {0}")]
    Stale(String),
    /// The stage could not do its work (e.g. the database kept failing).
    #[error("{0}")]
    Failed(String),
}

impl StageError {
    pub fn crashed(actor: &str, reason: String) -> StageError {
        StageError::Crashed {
            actor: actor.to_string(),
            reason,
        }
    }
}
