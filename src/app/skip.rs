//! `txpipe skip-chunk`: the operator's way past a chunk that the database
//! refuses for a reason no retry fixes.
//!
//! Data that a database cannot store never reaches a commit (one definition
//! of a good row, names keyed the same way on both backends), but an
//! operator still needs a way out of anything unforeseen that would stop
//! every start at the same chunk. This records the next chunk as
//! `rejected` with the operator's reason, exactly as if Mechanism Y had
//! rejected it: it is never applied, and the pipeline goes on after it.
//! It takes the ownership lease like a run does (refusing while another
//! process is active), and commits only on top of the last committed chunk.

use anyhow::{Context as _, bail};

use crate::config::Settings;
use crate::db::lease::PIPELINE_LEASE;
use crate::db::{ChunkRecord, ChunkStatus, Claimant, CommitBatch, CommitOutcome, LeaseGrant};
use crate::layout;

/// What happened.
#[derive(Debug)]
pub enum Skipped {
    Recorded {
        seq: u64,
    },
    /// Another process holds the lease: the message says who.
    Busy(String),
}

pub async fn skip_chunk(settings: &Settings, key: &str, reason: &str) -> anyhow::Result<Skipped> {
    let Some(seq) = layout::chunk_seq(key) else {
        bail!("{key:?} is not a chunk key (stream_chunks/chunk-SEQUENCE-…)");
    };
    // A cluster's chunk is processed once every key group applied it; a
    // skip would have to move every group's position under its lease.
    if settings.cluster.enabled {
        bail!(
            "skip-chunk does not work on a cluster (cluster.enabled = true) yet: stop every \
             worker, then move the key groups' positions in group_progress past the chunk \
             and record it in processed_chunks by hand"
        );
    }
    let state = crate::db::open(settings).await?;
    let me = Claimant::this_process();
    let fence = match state
        .acquire_lease(PIPELINE_LEASE, &me, settings.ownership.lease_ttl_ms, None)
        .await?
    {
        LeaseGrant::Granted(fence) => fence,
        LeaseGrant::Held { holder, .. } => {
            return Ok(Skipped::Busy(format!(
                "{}; stop it first",
                holder.standby_message()
            )));
        }
    };
    let result = async {
        let last = state.last_chunk().await?;
        let expected = last
            .as_deref()
            .and_then(layout::chunk_seq)
            .map_or(0, |seq| seq + 1);
        if seq != expected {
            bail!(
                "{key:?} is not the next chunk: the last committed chunk is {last:?}, \
                 so only sequence number {expected} can be skipped"
            );
        }
        let record = ChunkRecord {
            name: key.to_string(),
            seq: Some(seq),
            status: ChunkStatus::Rejected,
            rows: 0,
            bad_rows: 0,
            detections: 0,
            reason: Some(format!("skipped by the operator: {reason}")),
        };
        let batch = CommitBatch {
            expected_last: last.as_deref(),
            chunks: std::slice::from_ref(&record),
            deltas: &[],
            detections: &[],
            processed_at: &crate::clock::now_ist(),
        };
        match state.commit(&fence, &batch).await? {
            CommitOutcome::Committed | CommitOutcome::AlreadyCommitted => {
                Ok(Skipped::Recorded { seq })
            }
            CommitOutcome::Conflict { last } => bail!("the last committed chunk moved to {last:?}"),
        }
    }
    .await;
    state
        .release_lease(&fence)
        .await
        .context("releasing the ownership lease")?;
    result
}
