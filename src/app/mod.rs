//! The commands behind the CLI: start-up checks, running the supervised
//! pipeline, the demo, and reports.

pub mod demo;
pub mod lookup;
pub mod ownership;
pub mod report;
pub mod skip;

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use actix::{Actor, System};
use anyhow::Context as _;
use tracing::info;

use crate::actors::context::{Lifecycle, PipelineContext, Progress};
use crate::actors::faults::{FaultPlan, FaultRule};
use crate::actors::supervisor::{
    EXIT_FATAL, EXIT_LOST_LEASE, EXIT_STANDBY_REFUSED, RunMode, Supervision, SupervisorActor,
};
use crate::config::{LogFormat, Settings};
use crate::db::{Claimant, Fence, StateStore};
use crate::detect::{PairTotals, Thresholds};
use crate::names::Names;
use crate::signals::Signals;
use crate::store::source::Sources;
use ownership::Ownership;

/// Memory for chunk bodies kept between the chunker's PUT and the
/// watcher's read.
const RECENT_CHUNKS_BYTES: usize = 16 * 1024 * 1024;

/// How a run ended.
#[derive(Clone, Debug)]
pub struct RunReport {
    pub exit_code: i32,
    pub error: Option<String>,
    pub elapsed: Duration,
    pub chunks_written: u64,
    pub rows_chunked: u64,
    pub chunks_committed: u64,
    pub chunks_rejected: u64,
    pub rows_committed: u64,
    pub bad_rows: u64,
    /// Objects under `stream_chunks/` this run recorded as not applied.
    pub objects_ignored: u64,
    pub detections: [u64; 3],
    pub commits: u64,
    pub batches_written: u64,
    pub latencies_us: Vec<u64>,
    /// First chunk written to last commit (every detection durable).
    pub end_to_end: Option<Duration>,
    /// First chunk written to last detection file written.
    pub to_last_file: Option<Duration>,
    /// CPU seconds the process used between the first chunk and the last
    /// commit.
    pub window_cpu_seconds: Option<f64>,
}

impl RunReport {
    fn from_progress(
        progress: &Progress,
        exit_code: i32,
        error: Option<String>,
        elapsed: Duration,
    ) -> Self {
        let get = |counter: &std::sync::atomic::AtomicU64| counter.load(Ordering::Relaxed);
        RunReport {
            exit_code,
            error,
            elapsed,
            chunks_written: get(&progress.chunks_written),
            rows_chunked: get(&progress.rows_chunked),
            chunks_committed: get(&progress.chunks_committed),
            chunks_rejected: get(&progress.chunks_rejected),
            rows_committed: get(&progress.rows_committed),
            bad_rows: get(&progress.bad_rows),
            objects_ignored: get(&progress.objects_ignored),
            detections: [
                get(&progress.detections[0]),
                get(&progress.detections[1]),
                get(&progress.detections[2]),
            ],
            commits: get(&progress.commits),
            batches_written: get(&progress.batches_written),
            latencies_us: progress
                .latencies_us
                .lock()
                .map(|l| l.clone())
                .unwrap_or_default(),
            end_to_end: progress.first_chunk_at.get().and_then(|first| {
                Progress::read(&progress.last_commit_at)
                    .map(|last| last.saturating_duration_since(*first))
            }),
            window_cpu_seconds: progress.first_chunk_cpu.get().and_then(|first| {
                progress
                    .last_commit_cpu
                    .lock()
                    .ok()
                    .and_then(|last| last.map(|last| last - first))
            }),
            to_last_file: progress.first_chunk_at.get().and_then(|first| {
                Progress::read(&progress.last_file_at)
                    .map(|last| last.saturating_duration_since(*first))
            }),
        }
    }
}

/// Sets up logging from the configuration; `RUST_LOG` wins over
/// `log.level`. Safe to call more than once (later calls do nothing).
pub fn init_logging(settings: &Settings) {
    let filter = std::env::var("RUST_LOG")
        .ok()
        .and_then(|v| v.parse::<tracing_subscriber::EnvFilter>().ok())
        .unwrap_or_else(|| {
            settings
                .log
                .level
                .parse()
                .expect("validated with the configuration")
        });
    use std::io::IsTerminal as _;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    let _ = match settings.log.format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().try_init(),
    };
}

/// Everything checked before any actor starts, by the owner of the
/// pipeline lease: the master file's header, the object store, the chunker
/// position, and the lookup table (loaded into the database once).
pub async fn prepare(
    settings: Settings,
    faults: Vec<FaultRule>,
    state: Arc<dyn StateStore>,
    fence: Fence,
    signals: Signals,
) -> anyhow::Result<Arc<PipelineContext>> {
    let sources = Sources::for_settings(&settings).await;
    {
        let (sources, source) = (sources.clone(), settings.source.transactions.clone());
        let max_record_bytes = settings.input.max_record_bytes;
        tokio::task::spawn_blocking(move || {
            crate::actors::chunker::master_header(&sources, &source, max_record_bytes)
        })
        .await?
        .map_err(anyhow::Error::msg)?;
    }
    let objects = crate::store::open(&settings).await?;
    if let Some(position) = state.chunker_position().await? {
        crate::actors::chunker::check_position(
            &position,
            &settings.source.transactions,
            settings.chunker.rows_per_chunk,
        )
        .map_err(Mismatch)?;
    }
    let names = Arc::new(Names::new());
    let weights =
        Arc::new(lookup::ensure_loaded(&settings, &sources, &*state, &fence, &names).await?);
    info!(pairs = weights.len(), "lookup table ready");
    let pair_totals = PairTotals::new(&weights);
    let (doorbell, _) = tokio::sync::watch::channel(0);
    let (new_chunks, _) = tokio::sync::watch::channel(0);
    let (committed, _) = tokio::sync::watch::channel(0);
    Ok(Arc::new(PipelineContext {
        supervision: Supervision::new(settings.supervisor.clone()),
        settings,
        objects,
        sources,
        state,
        fence,
        names,
        weights,
        pair_totals: std::sync::Mutex::new(Some(pair_totals)),
        thresholds: Thresholds::SPEC,
        progress: Progress::default(),
        lifecycle: Lifecycle::new(signals),
        faults: FaultPlan::new(faults),
        y_start_time: crate::clock::now_ist(),
        doorbell,
        new_chunks,
        committed,
        recent_chunks: crate::actors::context::RecentChunks::new(RECENT_CHUNKS_BYTES),
    }))
}

/// The database belongs to another master file, chunk size or lookup file:
/// no restart can fix it (exit code 4).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct Mismatch(pub String);

/// A running pipeline, as seen from outside the actor system (tests use it
/// to stop a run part-way).
#[derive(Clone)]
pub struct RunHandle {
    pub system: System,
    pub pipeline: Arc<PipelineContext>,
}

/// Runs the supervised pipeline until it is done (`UntilDone`), a signal
/// arrives, or it fails.
pub fn run(settings: Settings, mode: RunMode, faults: Vec<FaultRule>) -> anyhow::Result<RunReport> {
    run_observed(settings, mode, faults, |_| {})
}

/// Like [`run`], handing `observe` a [`RunHandle`] once the actors start.
///
/// The life of a run: install the signal handlers, open the state store,
/// become the active owner (or wait as a standby), prepare, run the
/// supervised actors, and let the lease go when they stop (unless it was
/// lost, in which case it is not ours to release).
pub fn run_observed(
    settings: Settings,
    mode: RunMode,
    faults: Vec<FaultRule>,
    observe: impl FnOnce(RunHandle),
) -> anyhow::Result<RunReport> {
    let system = System::new();
    let started = Instant::now();
    let signals = system.block_on(async { Signals::install() })?;
    let state = system
        .block_on(crate::db::open(&settings))
        .context("start-up failed")?;
    let me = Claimant::this_process();
    let early_exit = |code: i32, error: Option<String>| {
        RunReport::from_progress(&Progress::default(), code, error, started.elapsed())
    };
    let fence = match system.block_on(ownership::acquire(&*state, &settings, &me, &signals))? {
        Ownership::Owner(fence) => fence,
        Ownership::Refused(message) => return Ok(early_exit(EXIT_STANDBY_REFUSED, Some(message))),
        Ownership::Stopped(_) => return Ok(early_exit(0, None)),
    };
    let prepared = system.block_on({
        let (state, fence, signals) = (state.clone(), fence.clone(), signals.clone());
        async move {
            tokio::select! {
                prepared = prepare(settings, faults, state, fence, signals.clone()) => prepared.map(Some),
                signal = signals.received() => {
                    info!(signal, "received signal during start-up; stopping");
                    Ok(None)
                }
            }
        }
    });
    let pipeline = match prepared {
        Ok(Some(pipeline)) => pipeline,
        Ok(None) => {
            release(&*state, &fence);
            return Ok(early_exit(0, None));
        }
        Err(error) => {
            release(&*state, &fence);
            if let Some(Mismatch(message)) = error.downcast_ref::<Mismatch>() {
                return Ok(early_exit(EXIT_FATAL, Some(message.clone())));
            }
            return Err(error.context("start-up failed"));
        }
    };
    let supervised = pipeline.clone();
    let handle = system.block_on(async move {
        SupervisorActor::new(supervised.clone(), mode).start();
        RunHandle {
            system: System::current(),
            pipeline: supervised,
        }
    });
    observe(handle);
    let exit_code = system.run_with_code()?;
    let elapsed = started.elapsed();
    if exit_code != EXIT_LOST_LEASE {
        release(&*state, &fence);
    }
    let error = pipeline.supervision.fatal_message();
    Ok(RunReport::from_progress(
        &pipeline.progress,
        exit_code,
        error,
        elapsed,
    ))
}

/// Lets the lease go so that a standby takes over at once. Runs on a
/// runtime of its own: called outside the actor system's (before it runs,
/// or after it is gone).
fn release(state: &dyn StateStore, fence: &Fence) {
    let released = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())
        .and_then(|runtime| {
            runtime
                .block_on(state.release_lease(fence))
                .map_err(|e| e.to_string())
        });
    if let Err(error) = released {
        tracing::warn!(%error, "could not release the ownership lease; it expires by itself");
    }
}
