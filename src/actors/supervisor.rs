//! Supervision: restart policy, the per-actor [`Lifeline`], and the
//! [`SupervisorActor`] that starts the topology and shuts it down.
//!
//! A failing actor (a contained panic, or an error it cannot get past)
//! records why and stops itself; actix's `Supervisor` then restarts it in
//! place, keeping its mailbox and address, so senders never see a dead
//! mailbox. On restart the actor reports to [`Supervision`], which logs one
//! line (actor, reason, restart count), picks an exponential backoff, and
//! stops the whole process with [`EXIT_RESTART_LIMIT`] when an actor
//! restarts more than `max_restarts` times within `restart_window_ms`. The
//! restarted actor waits out the backoff, then reloads committed state.

use std::collections::VecDeque;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use actix::prelude::*;
use rustc_hash::FxHashMap;
use tracing::{debug, error, info, warn};

use super::batch_writer::BatchWriterActor;
use super::chunker::ChunkerActor;
use super::compactor::CompactorActor;
use super::context::PipelineContext;
use super::detector::DetectorActor;
use super::tracker::TrackerActor;
use super::watcher::WatcherActor;
use crate::config::SupervisorConfig;
use crate::db::{Renewal, RestartEvent};
use crate::detect::{Pattern, Shard};

/// An actor restarted too often.
pub const EXIT_RESTART_LIMIT: i32 = 3;
/// An actor hit an error that a restart cannot fix.
pub const EXIT_FATAL: i32 = 4;
/// Graceful shutdown did not finish in time.
pub const EXIT_SHUTDOWN_TIMEOUT: i32 = 5;
/// Another process holds the ownership lease and `--no-standby` was given.
pub const EXIT_STANDBY_REFUSED: i32 = 6;
/// This process lost the ownership lease to another one while running.
pub const EXIT_LOST_LEASE: i32 = 7;

/// Restart bookkeeping shared by all actors.
pub struct Supervision {
    policy: SupervisorConfig,
    restarts: Mutex<FxHashMap<String, ActorRestarts>>,
    unrecorded: Mutex<Vec<RestartEvent>>,
    fatal: Mutex<Option<String>>,
}

#[derive(Default)]
struct ActorRestarts {
    total: u32,
    recent: VecDeque<Instant>,
}

impl Supervision {
    pub fn new(policy: SupervisorConfig) -> Supervision {
        Supervision {
            policy,
            restarts: Mutex::default(),
            unrecorded: Mutex::default(),
            fatal: Mutex::default(),
        }
    }

    /// Called when `actor` restarts. Returns the backoff to wait before it
    /// resumes, or `None` if the restart limit is exceeded, in which case
    /// the process is being stopped.
    pub fn on_restart(&self, actor: &str, reason: &str) -> Option<Duration> {
        let now = Instant::now();
        let window = Duration::from_millis(self.policy.restart_window_ms);
        let (total, in_window) = {
            let mut restarts = self.restarts.lock().unwrap_or_else(|e| e.into_inner());
            let entry = restarts.entry(actor.to_string()).or_default();
            entry.total += 1;
            entry.recent.push_back(now);
            while entry
                .recent
                .front()
                .is_some_and(|&at| now.duration_since(at) > window)
            {
                entry.recent.pop_front();
            }
            (entry.total, entry.recent.len() as u32)
        };
        self.unrecorded
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(RestartEvent {
                actor: actor.to_string(),
                reason: reason.to_string(),
                restart_count: total,
                at: crate::clock::now_ist(),
            });
        if in_window > self.policy.max_restarts {
            let message = format!(
                "actor {actor} restarted {in_window} times within {} ms (limit {}); last failure: {reason}",
                self.policy.restart_window_ms, self.policy.max_restarts
            );
            error!(
                actor,
                reason,
                restart = total,
                "restart limit exceeded; stopping"
            );
            let _ = self.stop_process(message, EXIT_RESTART_LIMIT);
            return None;
        }
        let exponent = in_window.saturating_sub(1).min(20);
        let backoff = Duration::from_millis(
            self.policy
                .backoff_initial_ms
                .saturating_mul(1 << exponent)
                .min(self.policy.backoff_max_ms),
        );
        warn!(
            actor,
            reason,
            restart = total,
            restarts_in_window = in_window,
            backoff_ms = backoff.as_millis() as u64,
            "actor restarted"
        );
        Some(backoff)
    }

    /// Stops the process at once: another process took the ownership lease
    /// over, so nothing this one still has in flight may be written (the
    /// database would refuse it anyway).
    pub fn lost_lease(&self, message: &str) {
        let first = self.stop_process(
            format!("lost the ownership lease: {message}"),
            EXIT_LOST_LEASE,
        );
        if first {
            error!(error = %message, "lost the ownership lease; stopping at once");
        }
    }

    /// Stops the process because of an error no restart can fix.
    pub fn fatal(&self, actor: &str, message: String) {
        error!(actor, error = %message, "fatal error; stopping");
        let _ = self.stop_process(format!("{actor}: {message}"), EXIT_FATAL);
    }

    /// Stops the actor system with `code`; only the first reason counts.
    /// Returns whether this was the first.
    fn stop_process(&self, message: String, code: i32) -> bool {
        let mut fatal = self.fatal.lock().unwrap_or_else(|e| e.into_inner());
        if fatal.is_some() {
            return false;
        }
        *fatal = Some(message);
        if let Some(system) = System::try_current() {
            system.stop_with_code(code);
        }
        true
    }

    /// Why the process was stopped, if it was.
    pub fn fatal_message(&self) -> Option<String> {
        self.fatal.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    pub fn take_unrecorded(&self) -> Vec<RestartEvent> {
        std::mem::take(&mut *self.unrecorded.lock().unwrap_or_else(|e| e.into_inner()))
    }
}

/// The part of every supervised actor that deals with failing and
/// restarting.
pub struct Lifeline {
    pub name: String,
    pub pipeline: Arc<PipelineContext>,
    failure: Option<String>,
    resume_after: Duration,
}

impl Lifeline {
    pub fn new(name: impl Into<String>, pipeline: Arc<PipelineContext>) -> Lifeline {
        Lifeline {
            name: name.into(),
            pipeline,
            failure: None,
            resume_after: Duration::ZERO,
        }
    }

    /// Records why the actor fails and stops it; the supervisor restarts it.
    pub fn fail<A>(&mut self, ctx: &mut Context<A>, reason: String)
    where
        A: Actor<Context = Context<A>>,
    {
        error!(actor = %self.name, %reason, "actor failed");
        self.failure.get_or_insert(reason);
        ctx.stop();
    }

    /// Call from `Supervised::restarting`.
    pub fn restarting(&mut self) {
        let reason = self
            .failure
            .take()
            .unwrap_or_else(|| "stopped unexpectedly".to_string());
        self.resume_after = self
            .pipeline
            .supervision
            .on_restart(&self.name, &reason)
            .unwrap_or(Duration::from_secs(3600));
    }

    /// Call from `started`: after a restart, holds the mailbox until the
    /// backoff has passed.
    pub fn wait_backoff<A>(&mut self, ctx: &mut Context<A>)
    where
        A: Actor<Context = Context<A>>,
    {
        let delay = std::mem::take(&mut self.resume_after);
        if !delay.is_zero() {
            ctx.wait(actix::fut::wrap_future(tokio::time::sleep(delay)));
        }
    }
}

/// Addresses of the running topology.
pub struct Topology {
    pub chunker: Addr<ChunkerActor>,
    pub watcher: Addr<WatcherActor>,
    pub detectors: Vec<Addr<DetectorActor>>,
    pub tracker: Addr<TrackerActor>,
    pub batch_writer: Addr<BatchWriterActor>,
    pub compactor: Addr<CompactorActor>,
}

impl Topology {
    /// Starts every actor on its own arbiter (thread), under actix's
    /// supervisor.
    pub fn start(pipeline: &Arc<PipelineContext>) -> Topology {
        let capacity = pipeline.settings.actors.mailbox_capacity;
        let mut detectors = Vec::new();
        for pattern in Pattern::ALL {
            let pool = match pattern {
                Pattern::Upgrade => pipeline.settings.detectors.patid1,
                Pattern::Child => pipeline.settings.detectors.patid2,
                Pattern::DeiNeeded => pipeline.settings.detectors.patid3,
            };
            for index in 0..pool {
                let p = pipeline.clone();
                detectors.push(Supervisor::start_in_arbiter(
                    &Arbiter::new().handle(),
                    move |ctx| {
                        ctx.set_mailbox_capacity(capacity);
                        DetectorActor::new(p, pattern, Shard::new(index, pool))
                    },
                ));
            }
        }
        let p = pipeline.clone();
        let tracker = Supervisor::start_in_arbiter(&Arbiter::new().handle(), move |ctx| {
            ctx.set_mailbox_capacity(capacity);
            TrackerActor::new(p)
        });
        let p = pipeline.clone();
        let (d, t) = (detectors.clone(), tracker.clone());
        let watcher = Supervisor::start_in_arbiter(&Arbiter::new().handle(), move |ctx| {
            ctx.set_mailbox_capacity(capacity);
            WatcherActor::new(p, d, t)
        });
        let p = pipeline.clone();
        let batch_writer = Supervisor::start_in_arbiter(&Arbiter::new().handle(), move |ctx| {
            ctx.set_mailbox_capacity(capacity);
            BatchWriterActor::new(p)
        });
        let p = pipeline.clone();
        let compactor = Supervisor::start_in_arbiter(&Arbiter::new().handle(), move |ctx| {
            ctx.set_mailbox_capacity(capacity);
            CompactorActor::new(p)
        });
        let p = pipeline.clone();
        let chunker = Supervisor::start_in_arbiter(&Arbiter::new().handle(), move |ctx| {
            ctx.set_mailbox_capacity(capacity);
            ChunkerActor::new(p)
        });
        Topology {
            chunker,
            watcher,
            detectors,
            tracker,
            batch_writer,
            compactor,
        }
    }

    fn dead_actor(&self) -> Option<String> {
        if !self.chunker.connected() {
            return Some("chunker".into());
        }
        if !self.watcher.connected() {
            return Some("watcher".into());
        }
        if !self.tracker.connected() {
            return Some("tracker".into());
        }
        if !self.batch_writer.connected() {
            return Some("batch-writer".into());
        }
        if !self.compactor.connected() {
            return Some("compactor".into());
        }
        self.detectors
            .iter()
            .position(|d| !d.connected())
            .map(|i| format!("detector #{i}"))
    }
}

/// When the supervisor ends the run on its own.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RunMode {
    /// Until SIGINT/SIGTERM.
    Forever,
    /// Until the master file is chunked and everything is processed and
    /// written.
    UntilDone,
}

/// Starts the topology, watches it, and shuts it down.
pub struct SupervisorActor {
    pipeline: Arc<PipelineContext>,
    mode: RunMode,
    topology: Option<Topology>,
    stopping: bool,
}

impl SupervisorActor {
    pub fn new(pipeline: Arc<PipelineContext>, mode: RunMode) -> SupervisorActor {
        SupervisorActor {
            pipeline,
            mode,
            topology: None,
            stopping: false,
        }
    }

    fn begin_shutdown(&mut self, ctx: &mut Context<Self>, why: &'static str) {
        if self.stopping {
            return;
        }
        self.stopping = true;
        info!(
            reason = why,
            "shutting down: draining in-flight chunks and flushing detections"
        );
        let pipeline = self.pipeline.clone();
        ctx.spawn(actix::fut::wrap_future(async move {
            let code = drain(&pipeline).await;
            record_restarts(&pipeline).await;
            if code == 0 {
                info!("shutdown complete");
            }
            System::current().stop_with_code(code);
        }));
    }
}

impl Actor for SupervisorActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Context<Self>) {
        self.topology = Some(Topology::start(&self.pipeline));
        info!(
            storage = %self.pipeline.objects.describe(),
            detectors = self.topology.as_ref().map_or(0, |t| t.detectors.len()),
            "pipeline started"
        );
        ctx.run_interval(Duration::from_secs(1), |act, ctx| {
            if act.stopping {
                return;
            }
            if let Some(dead) = act.topology.as_ref().and_then(Topology::dead_actor) {
                act.pipeline
                    .supervision
                    .fatal(&dead, "actor stopped and cannot be restarted".to_string());
            }
            let pipeline = act.pipeline.clone();
            ctx.spawn(actix::fut::wrap_future(async move {
                record_restarts(&pipeline).await
            }));
        });
        let signals = self.pipeline.lifecycle.signals.clone();
        ctx.spawn(
            actix::fut::wrap_future(async move {
                let signal = signals.received().await;
                info!(signal, "received signal");
            })
            .map(|_, act: &mut Self, ctx| act.begin_shutdown(ctx, "signal")),
        );
        ctx.spawn(actix::fut::wrap_future(keep_lease(self.pipeline.clone())));
        if self.mode == RunMode::UntilDone {
            let pipeline = self.pipeline.clone();
            ctx.spawn(
                actix::fut::wrap_future(async move { wait_until_done(&pipeline).await })
                    .map(|_, act: &mut Self, ctx| act.begin_shutdown(ctx, "all input processed")),
            );
        }
    }
}

/// Renews the ownership lease every heartbeat. If the database says another
/// process took it over, the whole process stops at once; if the database
/// cannot be reached, it keeps trying (the fence, not the clock, keeps a
/// late writer out).
async fn keep_lease(pipeline: Arc<PipelineContext>) {
    let ownership = &pipeline.settings.ownership;
    let beat = Duration::from_millis(ownership.heartbeat_ms);
    loop {
        tokio::time::sleep(beat).await;
        match pipeline
            .state
            .renew_lease(&pipeline.fence, ownership.lease_ttl_ms)
            .await
        {
            Ok(Renewal::Renewed { .. }) => {}
            Ok(Renewal::Lost { holder }) => {
                let message = match holder {
                    Some(holder) => format!(
                        "{} took it over at epoch {} (this process held epoch {})",
                        holder.holder(),
                        holder.epoch,
                        pipeline.fence.epoch
                    ),
                    None => "the lease row is gone".to_string(),
                };
                pipeline.supervision.lost_lease(&message);
                return;
            }
            Err(error) => warn!(%error, "could not renew the ownership lease; retrying"),
        }
    }
}

const POLL: Duration = Duration::from_millis(10);

/// Waits until the master file is fully chunked, two listings that started
/// after that found nothing new (the first may have started before the
/// last chunk appeared), and the database has every chunk the chunker
/// wrote committed (processed, or rejected if its object vanished).
async fn wait_until_done(pipeline: &PipelineContext) {
    let progress = &pipeline.progress;
    while !progress.chunker_finished.load(Ordering::Acquire) {
        tokio::time::sleep(POLL).await;
    }
    loop {
        let mark = progress.idle_listings.load(Ordering::Acquire);
        while progress.idle_listings.load(Ordering::Acquire) < mark + 2 {
            tokio::time::sleep(POLL).await;
        }
        match pipeline.state.status(0).await {
            Ok(status) if every_chunk_committed(&status) => return,
            Ok(status) => debug!(
                produced = status.chunks_produced,
                last_seq = ?status.last_seq,
                "waiting for the chunker's last chunks to commit"
            ),
            Err(error) => warn!(%error, "could not read progress; trying again"),
        }
    }
}

/// Whether every chunk the chunker wrote has a `processed_chunks` row.
fn every_chunk_committed(status: &crate::db::StatusReport) -> bool {
    status.chunker_finished
        && match status.chunks_produced {
            0 => true,
            produced => status.last_seq.is_some_and(|seq| seq + 1 >= produced),
        }
}

/// Stops the chunker and the watcher, waits for in-flight chunks to
/// commit, then has the batch writer write everything. Returns the exit
/// code.
async fn drain(pipeline: &PipelineContext) -> i32 {
    let deadline =
        Instant::now() + Duration::from_millis(pipeline.settings.supervisor.shutdown_timeout_ms);
    let lifecycle = &pipeline.lifecycle;
    let progress = &pipeline.progress;
    lifecycle.stop_chunker.cancel();
    lifecycle.stop_watcher.cancel();
    while !progress.watcher_stopped.load(Ordering::Acquire) {
        if Instant::now() > deadline {
            error!("shutdown timed out waiting for in-flight chunks");
            return EXIT_SHUTDOWN_TIMEOUT;
        }
        tokio::time::sleep(POLL).await;
    }
    lifecycle.final_flush.cancel();
    lifecycle.final_compact.cancel();
    while !progress.flushed.load(Ordering::Acquire) || !progress.compacted.load(Ordering::Acquire) {
        if Instant::now() > deadline {
            error!("shutdown timed out writing detection files or compacting state");
            return EXIT_SHUTDOWN_TIMEOUT;
        }
        tokio::time::sleep(POLL).await;
    }
    0
}

async fn record_restarts(pipeline: &PipelineContext) {
    for event in pipeline.supervision.take_unrecorded() {
        if let Err(error) = pipeline.state.record_restart(&event).await {
            warn!(%error, "could not record a restart event");
        }
    }
}
