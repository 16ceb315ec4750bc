//! The commands behind the CLI: start-up checks, running the supervised
//! pipeline, the demo, and reports.

pub mod demo;
pub mod lookup;
pub mod ownership;
pub mod progress;
pub mod report;
pub mod skip;
pub mod web;

use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::{Actor, System};
use anyhow::Context as _;
use tracing::info;

use crate::actors::faults::{FaultPlan, FaultRule};
use crate::actors::supervised::{EXIT_FATAL, EXIT_LOST_LEASE, EXIT_STANDBY_REFUSED, Supervision};
use crate::actors::supervisor::{LookupLoad, RunMode, SupervisorActor};
use crate::actors::wiring::Wiring;
use crate::config::{LogFormat, Settings};
use crate::db::postgres::cluster::ClusterIdentity;
use crate::db::{Claimant, Fence, StateStore};
use crate::detect::{Engine, Thresholds, WeightTable};
use crate::metrics::Metrics;
use crate::names::Names;
use crate::signals::Signals;
use crate::store::source::Sources;
use ownership::Ownership;

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
    /// Chunk listed → committed, 50th and 99th percentiles, in ms.
    pub latency_p50_ms: Option<f64>,
    pub latency_p99_ms: Option<f64>,
    /// First chunk written to last commit (every detection durable).
    pub end_to_end: Option<Duration>,
    /// First chunk written to last detection file written.
    pub to_last_file: Option<Duration>,
    /// CPU seconds the process used between the first chunk and the last
    /// commit.
    pub window_cpu_seconds: Option<f64>,
}

impl RunReport {
    fn from_metrics(
        metrics: &Metrics,
        exit_code: i32,
        error: Option<String>,
        elapsed: Duration,
    ) -> Self {
        let [latency_p50_ms, latency_p99_ms] = metrics.latency_ms([50.0, 99.0]);
        RunReport {
            exit_code,
            error,
            elapsed,
            chunks_written: metrics.chunks_written.get(),
            rows_chunked: metrics.rows_chunked.get(),
            chunks_committed: metrics.chunks_committed.get(),
            chunks_rejected: metrics.chunks_rejected.get(),
            rows_committed: metrics.rows_committed.get(),
            bad_rows: metrics.bad_rows.get(),
            objects_ignored: metrics.objects_ignored.get(),
            detections: metrics.detections(),
            commits: metrics.commits.get(),
            batches_written: metrics.files_written.get(),
            latency_p50_ms,
            latency_p99_ms,
            end_to_end: metrics.end_to_end(),
            window_cpu_seconds: metrics.window_cpu_seconds(),
            to_last_file: metrics.to_last_file(),
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
/// position, and whether the lookup file is the one loaded before. Returns
/// the wiring and the lookup table's load, which runs beside the chunker.
pub async fn prepare(
    settings: Settings,
    faults: Vec<FaultRule>,
    state: Arc<dyn StateStore>,
    fence: Fence,
    metrics: Arc<Metrics>,
    cluster: Option<Arc<crate::db::postgres::PostgresStore>>,
) -> anyhow::Result<(Arc<Wiring>, LookupLoad)> {
    let sources = Sources::for_settings(&settings).await;
    {
        let (sources, source) = (sources.clone(), settings.source.transactions.clone());
        let max_record_bytes = settings.input.max_record_bytes;
        tokio::task::spawn_blocking(move || {
            let reader = sources.open_at(&source, 0).map_err(|e| e.to_string())?;
            crate::input::records::master_header(reader, &source, max_record_bytes)
        })
        .await?
        .map_err(anyhow::Error::msg)?;
    }
    let objects = crate::store::open(&settings).await?;
    if let Some(cluster) = &cluster {
        let me = ClusterIdentity {
            key_groups: settings.cluster.key_groups,
            master: settings.source.transactions.clone(),
            rows_per_chunk: settings.chunker.rows_per_chunk,
            lookup: settings.source.customer_importance.clone(),
        };
        match cluster.join_cluster(&me).await {
            Err(crate::db::DbError::Mismatch(message)) => return Err(Mismatch(message).into()),
            joined => joined?,
        }
    } else if state.belongs_to_cluster().await? {
        return Err(Mismatch(
            "this database belongs to a cluster of workers: run with cluster.enabled = true \
             (TXPIPE__CLUSTER__ENABLED=true), as its other workers do"
                .to_string(),
        )
        .into());
    }
    if let Some(position) = state.chunker_position().await? {
        position
            .check(
                &settings.source.transactions,
                settings.chunker.rows_per_chunk,
            )
            .map_err(Mismatch)?;
    }
    // Workers of a cluster take turns: the first parses the file and
    // stores it, the others read it from the database.
    let turn = match &cluster {
        Some(cluster) => Some(cluster.lookup_turn().await?),
        None => None,
    };
    let plan = lookup::check(&settings, &sources, &*state).await?;
    // Stored already: the others read it side by side.
    let turn = match (turn, &plan) {
        (Some(turn), lookup::Plan::FromDatabase) => {
            turn.end().await;
            None
        }
        (turn, _) => turn,
    };
    let names = Arc::new(Names::new());
    let mut lookup = match (&cluster, plan) {
        // A worker reads its key groups' weights with each generation
        // (`Committed::load_share`): memory follows ownership.
        (Some(_), lookup::Plan::FromDatabase) => lookup::Loaded {
            weights: WeightTable::default(),
            store: None,
        },
        (_, plan) => plan.read(&settings, &sources, &*state, &names).await?,
    };
    if let Some(turn) = turn {
        if let Some(pending) = lookup.store.take() {
            pending.store(&*state, &fence).await?;
        }
        turn.end().await;
    }
    let weights = match &cluster {
        Some(_) => {
            info!("lookup table ready; each generation reads its key groups' weights");
            WeightTable::default()
        }
        None => {
            info!(pairs = lookup.weights.len(), "lookup table ready");
            metrics.lookup_pairs.set(lookup.weights.len() as i64);
            lookup.weights
        }
    };
    let d = &settings.detectors;
    let engine = Engine::new(
        Thresholds::SPEC,
        Arc::new(weights),
        [d.patid1, d.patid2, d.patid3],
    );
    let wiring = Arc::new(Wiring {
        supervision: Arc::new(Supervision::new(
            settings.supervisor.clone(),
            metrics.clone(),
        )),
        settings,
        objects,
        sources,
        state,
        fence,
        names,
        cluster,
        metrics,
        faults: FaultPlan::new(faults),
        y_start_time: crate::clock::now_ist(),
    });
    let w = wiring.clone();
    let store = lookup.store;
    let load: LookupLoad = Box::pin(async move {
        if let Some(pending) = store {
            pending.store(&*w.state, &w.fence).await?;
        }
        Ok(engine)
    });
    Ok((wiring, load))
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
    pub metrics: Arc<Metrics>,
    /// Where the HTTP endpoints listen (`http.listen`), if they do.
    pub http: Option<std::net::SocketAddr>,
}

/// Runs the supervised pipeline until it is done (`UntilDone`), a signal
/// arrives, or it fails.
pub fn run(settings: Settings, mode: RunMode, faults: Vec<FaultRule>) -> anyhow::Result<RunReport> {
    run_observed(settings, mode, faults, |_| {})
}

/// Like [`run`], handing `observe` a [`RunHandle`] once the actors start.
///
/// The life of a run: start the HTTP endpoints, install the signal
/// handlers, open the state store, become the active owner (or wait as a
/// standby), prepare, run the supervised actors, and let the lease go when
/// they stop (unless it was lost, in which case it is not ours to
/// release). The run's [`Metrics`] exist from the first step, so probes
/// and the page answer throughout.
pub fn run_observed(
    settings: Settings,
    mode: RunMode,
    faults: Vec<FaultRule>,
    observe: impl FnOnce(RunHandle),
) -> anyhow::Result<RunReport> {
    let metrics = Arc::new(Metrics::new());
    let web = match settings.http.address() {
        Some(listen) => Some(
            web::WebServer::start(listen, metrics.clone())
                .with_context(|| format!("http.listen = {listen:?}"))?,
        ),
        None => None,
    };
    let http = web.as_ref().map(web::WebServer::addr);
    let system = System::new();
    let started = Instant::now();
    let signals = system.block_on(async { Signals::install() })?;
    let (state, cluster): (Arc<dyn StateStore>, _) = if settings.cluster.enabled {
        let cluster = system
            .block_on(crate::db::open_cluster(&settings))
            .context("start-up failed")?;
        (cluster.clone(), Some(cluster))
    } else {
        let state = system
            .block_on(crate::db::open(&settings))
            .context("start-up failed")?;
        (state, None)
    };
    let me = Claimant::this_process();
    let early_exit = |code: i32, error: Option<String>| {
        RunReport::from_metrics(&metrics, code, error, started.elapsed())
    };
    let fence = if cluster.is_some() {
        // A worker registers itself: its own lease, which only it holds.
        system
            .block_on(ownership::register_worker(
                &*state,
                &settings,
                &me,
                &metrics.health,
            ))
            .context("start-up failed")?
    } else {
        match system.block_on(ownership::acquire(
            &*state,
            &settings,
            &me,
            &signals,
            &metrics.health,
        ))? {
            Ownership::Owner(fence) => fence,
            Ownership::Refused(message) => {
                return Ok(early_exit(EXIT_STANDBY_REFUSED, Some(message)));
            }
            Ownership::Stopped(_) => return Ok(early_exit(0, None)),
        }
    };
    let prepared = system.block_on({
        let (state, fence, signals) = (state.clone(), fence.clone(), signals.clone());
        let metrics = metrics.clone();
        let cluster = cluster.clone();
        async move {
            // A worker's registration stays live while it starts.
            let registered = {
                let (state, settings, fence) = (state.clone(), settings.clone(), fence.clone());
                let worker = cluster.is_some();
                async move {
                    match worker {
                        true => ownership::keep_registered(&*state, &settings, &fence).await,
                        false => std::future::pending().await,
                    }
                }
            };
            tokio::select! {
                prepared = prepare(settings, faults, state, fence, metrics, cluster) => prepared.map(Some),
                () = registered => unreachable!("renewing never ends"),
                signal = signals.received() => {
                    info!(signal, "received signal during start-up; stopping");
                    Ok(None)
                }
            }
        }
    });
    let (pipeline, lookup) = match prepared {
        Ok(Some(prepared)) => prepared,
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
        let metrics = supervised.metrics.clone();
        let supervisor = SupervisorActor::new(supervised.clone(), signals, mode, lookup);
        match supervised.cluster {
            Some(_) => supervisor.in_cluster(me).start(),
            None => supervisor.start(),
        };
        RunHandle {
            system: System::current(),
            metrics,
            http,
        }
    });
    observe(handle);
    let exit_code = system.run_with_code()?;
    let elapsed = started.elapsed();
    if exit_code != EXIT_LOST_LEASE {
        release(&*state, &fence);
    }
    let error = pipeline.supervision.fatal_message();
    drop(web);
    Ok(RunReport::from_metrics(
        &pipeline.metrics,
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
