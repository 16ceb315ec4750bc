//! The operator's HTTP endpoints, served by actix-web on `http.listen`:
//!
//! | path          | what                                                          |
//! |---------------|---------------------------------------------------------------|
//! | `/metrics`    | every metric, Prometheus text format 0.0.4                    |
//! | `/healthz`    | liveness: 200 while the supervisor and every actor are alive, |
//! |               | 503 and a JSON reason otherwise                               |
//! | `/readyz`     | readiness: 200 once the lookup table is loaded, the stores    |
//! |               | answered and this process is the active owner; 503 while it   |
//! |               | starts, stands by or stops                                    |
//! | `/api/state`  | what the live page shows, as JSON                             |
//! | `/`           | the live page (`page.html`, one self-contained file)         |
//!
//! All of it reads the run's [`Metrics`]; nothing here can change the
//! pipeline. The server runs on a thread and actix system of its own, so
//! it answers from the moment the process starts (a standby answers
//! `/readyz` with 503) until the run is over, whatever the pipeline's
//! actors are doing, and a slow client never takes a pipeline thread. A
//! one-second ticker on the same thread samples the input and processing
//! rates for the page's chart. Dropping the [`WebServer`] stops it.

use std::net::SocketAddr;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use actix_web::dev::ServerHandle;
use actix_web::http::StatusCode;
use actix_web::{App, HttpResponse, HttpServer, web};
use anyhow::Context as _;
use serde::Serialize;
use tracing::info;

use crate::metrics::{ActorState, DetectionView, Metrics, Phase, RatePoint, RestartView};

/// The page, compiled into the binary.
const PAGE: &str = include_str!("page.html");

/// A running HTTP server; dropping it stops the server and joins its
/// thread.
pub struct WebServer {
    addr: SocketAddr,
    handle: ServerHandle,
    thread: Option<JoinHandle<()>>,
}

impl WebServer {
    /// Binds `listen` and serves `metrics` from a thread of its own.
    /// Fails if the address cannot be bound (in use, not local).
    pub fn start(listen: &str, metrics: Arc<Metrics>) -> anyhow::Result<WebServer> {
        let (bound, started) = std::sync::mpsc::channel();
        let listen = listen.to_string();
        let thread = std::thread::Builder::new()
            .name("txpipe-http".into())
            .spawn(move || {
                let system = actix_rt::System::new();
                system.block_on(async move {
                    let data = web::Data::from(metrics.clone());
                    let server = HttpServer::new(move || {
                        App::new()
                            .app_data(data.clone())
                            .route("/", web::get().to(page))
                            .route("/metrics", web::get().to(exposition))
                            .route("/healthz", web::get().to(healthz))
                            .route("/readyz", web::get().to(readyz))
                            .route("/api/state", web::get().to(state))
                    })
                    .workers(1)
                    .disable_signals()
                    .shutdown_timeout(1)
                    .bind(&listen);
                    let server = match server {
                        Ok(server) => server,
                        Err(error) => {
                            let _ = bound.send(Err(error));
                            return;
                        }
                    };
                    let addr = server.addrs()[0];
                    let server = server.run();
                    let _ = bound.send(Ok((addr, server.handle())));
                    actix_rt::spawn(sample_rates(metrics));
                    let _ = server.await;
                });
            })
            .context("could not start the HTTP server's thread")?;
        let (addr, handle) = started
            .recv()
            .context("the HTTP server's thread ended before it listened")?
            .context("could not listen")?;
        info!(url = %format!("http://{addr}/"), "serving metrics, health probes and the live page");
        Ok(WebServer {
            addr,
            handle,
            thread: Some(thread),
        })
    }

    /// The address the server listens on (its port when `:0` was asked).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Drop for WebServer {
    fn drop(&mut self) {
        futures::executor::block_on(self.handle.stop(true));
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// One point of the rate chart per second.
async fn sample_rates(metrics: Arc<Metrics>) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tick.tick().await;
        metrics.health.sample_rates(
            crate::clock::unix_ms(),
            metrics.rows_chunked.get(),
            metrics.rows_committed.get(),
        );
    }
}

async fn page() -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/html; charset=utf-8")
        .insert_header(("Cache-Control", "no-store"))
        .body(PAGE)
}

async fn exposition(metrics: web::Data<Metrics>) -> HttpResponse {
    HttpResponse::Ok()
        .content_type(prometheus_client::encoding::prometheus_text::CONTENT_TYPE)
        .body(metrics.exposition())
}

#[derive(Serialize)]
struct Probe {
    status: &'static str,
    phase: Phase,
    #[serde(skip_serializing_if = "Option::is_none")]
    reason: Option<String>,
}

fn probe(code: StatusCode, probe: Probe) -> HttpResponse {
    HttpResponse::build(code)
        .insert_header(("Cache-Control", "no-store"))
        .json(probe)
}

async fn healthz(metrics: web::Data<Metrics>) -> HttpResponse {
    let phase = metrics.health.phase();
    match metrics.health.unhealthy() {
        None => probe(
            StatusCode::OK,
            Probe {
                status: "ok",
                phase,
                reason: None,
            },
        ),
        Some(reason) => probe(
            StatusCode::SERVICE_UNAVAILABLE,
            Probe {
                status: "unhealthy",
                phase,
                reason: Some(reason),
            },
        ),
    }
}

async fn readyz(metrics: web::Data<Metrics>) -> HttpResponse {
    let phase = metrics.health.phase();
    if metrics.health.ready() {
        return probe(
            StatusCode::OK,
            Probe {
                status: "ready",
                phase,
                reason: None,
            },
        );
    }
    let reason = match phase {
        Phase::Starting => "starting: opening the database",
        Phase::Standby => "standing by: another process is the active owner",
        Phase::Loading => "loading: checking the inputs and loading the lookup table",
        Phase::Running => "running",
        Phase::Stopping => "stopping",
    };
    probe(
        StatusCode::SERVICE_UNAVAILABLE,
        Probe {
            status: "not ready",
            phase,
            reason: Some(reason.to_string()),
        },
    )
}

#[derive(Serialize)]
struct StateView {
    version: &'static str,
    now_ms: i64,
    uptime_seconds: f64,
    phase: Phase,
    ready: bool,
    healthy: bool,
    health_reason: Option<String>,
    owner: Option<String>,
    actors: Vec<ActorRow>,
    edges: Vec<(String, String)>,
    totals: Totals,
    lag_chunks: u64,
    in_flight: i64,
    pair_state_pairs: i64,
    latency_ms: Latency,
    rss_bytes: Option<u64>,
    cpu_seconds: Option<f64>,
    rates: Vec<RatePoint>,
    restarts: Vec<RestartView>,
    detections: Vec<DetectionView>,
}

#[derive(Serialize)]
struct ActorRow {
    name: String,
    stage: &'static str,
    state: ActorState,
    mailbox: u64,
    capacity: usize,
    restarts: u32,
    last_reason: Option<String>,
}

#[derive(Serialize)]
struct Totals {
    rows_chunked: u64,
    rows_processed: u64,
    chunks_written: u64,
    chunks_committed: u64,
    chunks_rejected: u64,
    bad_rows: u64,
    objects_ignored: u64,
    commits: u64,
    detection_files: u64,
    detections: std::collections::BTreeMap<&'static str, u64>,
}

#[derive(Serialize)]
struct Latency {
    p50: Option<f64>,
    p99: Option<f64>,
}

/// The live page's data, read from the metrics in one go.
fn view(m: &Metrics) -> StateView {
    let health = &m.health;
    let unhealthy = health.unhealthy();
    let detections = m.detections();
    StateView {
        version: env!("CARGO_PKG_VERSION"),
        now_ms: crate::clock::unix_ms(),
        uptime_seconds: m.uptime().as_secs_f64(),
        phase: health.phase(),
        ready: health.ready(),
        healthy: unhealthy.is_none(),
        health_reason: unhealthy,
        owner: health.owner(),
        actors: health
            .actors()
            .into_iter()
            .map(|a| ActorRow {
                mailbox: m.mailbox_fill(&a.name),
                name: a.name,
                stage: a.stage,
                state: a.state,
                capacity: a.capacity,
                restarts: a.restarts,
                last_reason: a.last_reason,
            })
            .collect(),
        edges: health.edges(),
        totals: Totals {
            rows_chunked: m.rows_chunked.get(),
            rows_processed: m.rows_committed.get(),
            chunks_written: m.chunks_written.get(),
            chunks_committed: m.chunks_committed.get(),
            chunks_rejected: m.chunks_rejected.get(),
            bad_rows: m.bad_rows.get(),
            objects_ignored: m.objects_ignored.get(),
            commits: m.commits.get(),
            detection_files: m.files_written.get(),
            detections: crate::detect::Pattern::ALL
                .iter()
                .map(|p| (p.id(), detections[*p as usize]))
                .collect(),
        },
        lag_chunks: m.lag_chunks(),
        in_flight: m.in_flight.get(),
        pair_state_pairs: m.pair_state_pairs.get(),
        latency_ms: {
            let [p50, p99] = m.latency_ms([50.0, 99.0]);
            Latency { p50, p99 }
        },
        rss_bytes: crate::metrics::resident_bytes(),
        cpu_seconds: crate::metrics::cpu_seconds(),
        rates: health.rates(),
        restarts: health.recent_restarts(),
        detections: health.recent_detections(),
    }
}

async fn state(metrics: web::Data<Metrics>) -> HttpResponse {
    HttpResponse::Ok()
        .insert_header(("Cache-Control", "no-store"))
        .json(view(&metrics))
}
