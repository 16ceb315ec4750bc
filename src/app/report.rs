//! Human-readable summaries: the end of a run, and `txpipe status`.

use std::fmt::Write as _;

use super::RunReport;
use crate::db::lease::format_ms;
use crate::db::postgres::cluster::{ClusterView, ranges};
use crate::db::{LeaseRow, StatusReport};
use crate::detect::Pattern;

use crate::metrics::{cpu_seconds, peak_rss_bytes};

/// Machine-readable figures of a run (`txpipe run --report-json`), for
/// the benchmark harness.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
pub struct JsonReport {
    pub rows: u64,
    pub chunks: u64,
    pub bad_rows: u64,
    pub detections: [u64; 3],
    pub commits: u64,
    /// First chunk written to last commit durable.
    pub end_to_end_seconds: f64,
    pub transactions_per_second: f64,
    pub chunks_per_second: f64,
    /// First chunk written to last detection file written.
    pub to_last_file_seconds: f64,
    pub latency_p50_ms: f64,
    pub latency_p99_ms: f64,
    pub peak_rss_mb: f64,
    pub cpu_seconds: f64,
    /// CPU seconds between the first chunk and the last commit.
    pub window_cpu_seconds: f64,
    pub wall_seconds: f64,
}

impl JsonReport {
    pub fn new(report: &RunReport) -> JsonReport {
        let seconds = report.end_to_end.map_or(0.0, |d| d.as_secs_f64());
        let chunks = report.chunks_committed + report.chunks_rejected;
        let per_second = |n: u64| {
            if seconds > 0.0 {
                n as f64 / seconds
            } else {
                0.0
            }
        };
        JsonReport {
            rows: report.rows_committed,
            chunks,
            bad_rows: report.bad_rows,
            detections: report.detections,
            commits: report.commits,
            end_to_end_seconds: seconds,
            transactions_per_second: per_second(report.rows_committed),
            chunks_per_second: per_second(chunks),
            to_last_file_seconds: report.to_last_file.map_or(0.0, |d| d.as_secs_f64()),
            latency_p50_ms: report.latency_p50_ms.unwrap_or(0.0),
            latency_p99_ms: report.latency_p99_ms.unwrap_or(0.0),
            peak_rss_mb: peak_rss_bytes().unwrap_or(0) as f64 / (1024.0 * 1024.0),
            cpu_seconds: cpu_seconds().unwrap_or(0.0),
            window_cpu_seconds: report.window_cpu_seconds.unwrap_or(0.0),
            wall_seconds: report.elapsed.as_secs_f64(),
        }
    }
}

pub fn run_summary(report: &RunReport) -> String {
    let mut out = String::new();
    let seconds = report.elapsed.as_secs_f64();
    let end_to_end = report.end_to_end.map_or(seconds, |d| d.as_secs_f64());
    let rate = if end_to_end > 0.0 {
        report.rows_committed as f64 / end_to_end
    } else {
        0.0
    };
    let _ = writeln!(out, "rows chunked        {}", report.rows_chunked);
    let _ = writeln!(out, "chunks written      {}", report.chunks_written);
    let _ = writeln!(
        out,
        "chunks processed    {} ({} rejected) in {} commits",
        report.chunks_committed + report.chunks_rejected,
        report.chunks_rejected,
        report.commits
    );
    let _ = writeln!(out, "rows processed      {}", report.rows_committed);
    let _ = writeln!(out, "bad rows            {}", report.bad_rows);
    let _ = writeln!(out, "ignored objects     {}", report.objects_ignored);
    for pattern in Pattern::ALL {
        let _ = writeln!(
            out,
            "detections {} {:<10} {}",
            pattern.id(),
            pattern.action(),
            report.detections[pattern as usize]
        );
    }
    let _ = writeln!(out, "detection files     {}", report.batches_written);
    if let (Some(p50), Some(p99)) = (report.latency_p50_ms, report.latency_p99_ms) {
        let _ = writeln!(out, "chunk latency       p50 {p50:.1} ms, p99 {p99:.1} ms");
    }
    let _ = writeln!(out, "elapsed             {seconds:.2} s (start-up to exit)");
    let _ = writeln!(
        out,
        "throughput          {rate:.0} transactions/s (first chunk written to last commit, {end_to_end:.2} s)"
    );
    out
}

/// Who holds the ownership lease, and whether it is still live.
fn owner_line(report: &StatusReport) -> String {
    match &report.owner {
        None => "none (no process has run yet)".to_string(),
        Some(lease) if lease.expires_at_ms > report.now_ms => format!(
            "{} (epoch {}) holds the lease until {}",
            lease.holder(),
            lease.epoch,
            format_ms(lease.expires_at_ms)
        ),
        Some(lease) => format!(
            "none active (last: {}, epoch {}, lease ended {})",
            lease.holder(),
            lease.epoch,
            format_ms(lease.expires_at_ms)
        ),
    }
}

/// `txpipe status --json`: the same figures as [`status`], for scripts.
#[derive(Debug, serde::Serialize)]
pub struct StatusJson {
    pub chunks_produced: u64,
    pub rows_produced: u64,
    pub chunker_finished: bool,
    pub chunks_processed: u64,
    pub chunks_rejected: u64,
    /// Chunks produced and not yet processed.
    pub lag_chunks: u64,
    pub rows_processed: u64,
    pub bad_rows: u64,
    pub last_chunk: Option<String>,
    pub detections: std::collections::BTreeMap<&'static str, u64>,
    pub batches_written: u64,
    pub batches_pending: u64,
    pub detections_unbatched: u64,
    pub ignored_objects: u64,
    pub owner: Option<OwnerJson>,
    pub standbys: Vec<StandbyJson>,
    pub recent_restarts: Vec<RestartJson>,
}

#[derive(Debug, serde::Serialize)]
pub struct OwnerJson {
    pub host: String,
    pub pid: u32,
    pub epoch: u64,
    pub expires_at_ms: i64,
    /// Whether the lease is still live (an active owner).
    pub live: bool,
}

#[derive(Debug, serde::Serialize)]
pub struct StandbyJson {
    pub host: String,
    pub pid: u32,
    pub since_ms: i64,
}

#[derive(Debug, serde::Serialize)]
pub struct RestartJson {
    pub at: String,
    pub actor: String,
    pub restart: u32,
    pub reason: String,
}

impl StatusJson {
    pub fn new(report: &StatusReport) -> StatusJson {
        StatusJson {
            chunks_produced: report.chunks_produced,
            rows_produced: report.rows_produced,
            chunker_finished: report.chunker_finished,
            chunks_processed: report.chunks_processed,
            chunks_rejected: report.chunks_rejected,
            lag_chunks: report.lag_chunks(),
            rows_processed: report.rows_processed,
            bad_rows: report.bad_rows,
            last_chunk: report.last_chunk.clone(),
            detections: Pattern::ALL
                .iter()
                .map(|&pattern| (pattern.id(), report.detections_of(pattern)))
                .collect(),
            batches_written: report.batches_written,
            batches_pending: report.batches_pending,
            detections_unbatched: report.detections_unbatched,
            ignored_objects: report.ignored_objects,
            owner: report.owner.as_ref().map(|lease| OwnerJson {
                host: lease.host.clone(),
                pid: lease.pid,
                epoch: lease.epoch,
                expires_at_ms: lease.expires_at_ms,
                live: lease.expires_at_ms > report.now_ms,
            }),
            standbys: report
                .standbys
                .iter()
                .map(|s| StandbyJson {
                    host: s.host.clone(),
                    pid: s.pid,
                    since_ms: s.since_ms,
                })
                .collect(),
            recent_restarts: report
                .recent_restarts
                .iter()
                .map(|e| RestartJson {
                    at: e.at.clone(),
                    actor: e.actor.clone(),
                    restart: e.restart_count,
                    reason: e.reason.clone(),
                })
                .collect(),
        }
    }
}

pub fn status(report: &StatusReport) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "chunks produced     {}{}",
        report.chunks_produced,
        if report.chunker_finished {
            " (master file fully chunked)"
        } else {
            ""
        }
    );
    let _ = writeln!(
        out,
        "chunks processed    {} ({} rejected)",
        report.chunks_done(),
        report.chunks_rejected
    );
    let _ = writeln!(out, "lag                 {} chunks", report.lag_chunks());
    let _ = writeln!(out, "rows produced       {}", report.rows_produced);
    let _ = writeln!(out, "rows processed      {}", report.rows_processed);
    let _ = writeln!(out, "bad rows            {}", report.bad_rows);
    let _ = writeln!(
        out,
        "last chunk          {}",
        report.last_chunk.as_deref().unwrap_or("-")
    );
    for pattern in Pattern::ALL {
        let _ = writeln!(
            out,
            "detections {} {:<10} {}",
            pattern.id(),
            pattern.action(),
            report.detections_of(pattern)
        );
    }
    let _ = writeln!(
        out,
        "detection files     {} written, {} pending; {} detections wait for a full batch",
        report.batches_written, report.batches_pending, report.detections_unbatched
    );
    let _ = writeln!(
        out,
        "ignored objects     {} (not chunks, or duplicates of a sequence number; see ignored_objects)",
        report.ignored_objects
    );
    let _ = writeln!(out, "owner               {}", owner_line(report));
    if report.standbys.is_empty() {
        let _ = writeln!(out, "standbys            none");
    }
    for standby in &report.standbys {
        let _ = writeln!(
            out,
            "standby             {}/{} waiting since {}",
            standby.host,
            standby.pid,
            format_ms(standby.since_ms)
        );
    }
    if report.recent_restarts.is_empty() {
        let _ = writeln!(out, "recent restarts     none recorded");
    } else {
        let _ = writeln!(out, "recent restarts:");
        for event in &report.recent_restarts {
            let _ = writeln!(
                out,
                "  {} {} (restart #{}): {}",
                event.at, event.actor, event.restart_count, event.reason
            );
        }
    }
    out
}

/// A cluster's workers, key groups and leases, for `txpipe status`.
#[derive(Debug, serde::Serialize)]
pub struct ClusterJson {
    pub key_groups: u32,
    pub workers: Vec<WorkerJson>,
    /// `host/pid` of the worker running the chunker, if its lease is live.
    pub chunker: Option<String>,
    /// Per key group: owner (`host/pid`, if its lease is live), lease
    /// epoch, last applied chunk and lag behind the chunks produced.
    pub groups: Vec<GroupJson>,
}

#[derive(Debug, serde::Serialize)]
pub struct WorkerJson {
    pub id: String,
    pub host: String,
    pub pid: u32,
    pub started_ms: i64,
    pub expires_at_ms: i64,
    pub key_groups: Vec<u32>,
}

#[derive(Debug, serde::Serialize)]
pub struct GroupJson {
    pub key_group: u32,
    pub owner: Option<String>,
    pub epoch: u64,
    pub last_seq: Option<u64>,
    pub lag_chunks: u64,
}

impl ClusterJson {
    pub fn new(view: &ClusterView, chunks_produced: u64) -> ClusterJson {
        let live = |row: &LeaseRow| row.expires_at_ms > view.now_ms && !row.owner_id.is_empty();
        let groups: Vec<GroupJson> = (0..view.key_groups)
            .map(|g| {
                let lease = view.leases.get(&g);
                let last = view.progress.get(&g).copied().unwrap_or(-1);
                let done = u64::try_from(last + 1).unwrap_or(0);
                GroupJson {
                    key_group: g,
                    owner: lease.filter(|l| live(l)).map(LeaseRow::holder),
                    epoch: lease.map_or(0, |l| l.epoch),
                    last_seq: u64::try_from(last).ok(),
                    lag_chunks: chunks_produced.saturating_sub(done),
                }
            })
            .collect();
        let workers = view
            .workers
            .iter()
            .map(|w| WorkerJson {
                id: w.name.clone(),
                host: w.host.clone(),
                pid: w.pid,
                started_ms: w.acquired_at_ms,
                expires_at_ms: w.expires_at_ms,
                key_groups: view
                    .leases
                    .iter()
                    .filter(|(_, l)| live(l) && l.owner_id == w.owner_id)
                    .map(|(g, _)| *g)
                    .collect(),
            })
            .collect();
        ClusterJson {
            key_groups: view.key_groups,
            workers,
            chunker: view
                .chunker
                .as_ref()
                .filter(|l| live(l))
                .map(LeaseRow::holder),
            groups,
        }
    }
}

/// The cluster part of `txpipe status`.
pub fn cluster_status(cluster: &ClusterJson) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "cluster             {} workers, {} key groups; chunker on {}",
        cluster.workers.len(),
        cluster.key_groups,
        cluster.chunker.as_deref().unwrap_or("nobody")
    );
    for worker in &cluster.workers {
        let _ = writeln!(
            out,
            "worker              {}/{}: {} key groups ({}), up since {}, lease until {}",
            worker.host,
            worker.pid,
            worker.key_groups.len(),
            ranges(&worker.key_groups),
            format_ms(worker.started_ms),
            format_ms(worker.expires_at_ms)
        );
    }
    let unowned: Vec<u32> = cluster
        .groups
        .iter()
        .filter(|g| g.owner.is_none())
        .map(|g| g.key_group)
        .collect();
    let _ = writeln!(out, "unowned key groups  {}", ranges(&unowned));
    let _ = writeln!(out, "key group lag (chunks behind the chunker):");
    for row in cluster.groups.chunks(16) {
        let line: Vec<String> = row
            .iter()
            .map(|g| format!("{:>4}:{:<4}", g.key_group, g.lag_chunks))
            .collect();
        let _ = writeln!(out, " {}", line.join(" "));
    }
    out
}
