//! What the process is doing, for probes and people: its phase (starting,
//! standing by, loading, running, stopping), each actor's state and
//! restarts, the last restarts and detections, and a per-second history of
//! input and processing rates.
//!
//! The supervisor and the generic `Supervised` actor report here; the
//! tracker adds the detections it committed. `/healthz`, `/readyz` and the
//! live page read it. Nothing here feeds back into the pipeline.

use std::collections::VecDeque;
use std::sync::Mutex;

use serde::Serialize;

/// Where the process is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Phase {
    /// Opening the database, not yet the owner.
    Starting,
    /// Another process holds the ownership lease; waiting as a hot standby.
    Standby,
    /// The owner, checking inputs and loading the lookup table.
    Loading,
    /// Mechanism Y runs.
    Running,
    /// Shutting down.
    Stopping,
}

/// An actor's state as the page shows it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ActorState {
    /// Building its state (or, for a member of Mechanism Y, waiting for
    /// its snapshot).
    Starting,
    Running,
    /// Failed; waiting out its backoff before it builds its state again.
    Restarting,
    /// Stopped for good (the process is stopping).
    Stopped,
}

#[derive(Clone, Debug, Serialize)]
pub struct ActorView {
    pub name: String,
    /// "X" (Mechanism X) or "Y".
    pub stage: &'static str,
    pub state: ActorState,
    pub capacity: usize,
    pub restarts: u32,
    pub last_reason: Option<String>,
}

#[derive(Clone, Debug, Serialize)]
pub struct RestartView {
    pub at: String,
    pub actor: String,
    pub reason: String,
    pub restart: u32,
}

#[derive(Clone, Debug, Serialize)]
pub struct DetectionView {
    pub pattern: &'static str,
    pub action: &'static str,
    pub customer: String,
    pub merchant: String,
    pub y_start_time: String,
    pub detection_time: String,
}

/// Rows per second chunked (input) and committed (processed) in one
/// second.
#[derive(Clone, Copy, Debug, Serialize)]
pub struct RatePoint {
    pub t_ms: i64,
    pub input: f64,
    pub processed: f64,
}

const RECENT_RESTARTS: usize = 10;
pub const RECENT_DETECTIONS: usize = 20;
/// Five minutes of one point per second.
const RATE_POINTS: usize = 300;

#[derive(Default)]
struct Inner {
    phase: Option<Phase>,
    owner: Option<String>,
    actors: Vec<ActorView>,
    edges: Vec<(String, String)>,
    supervisor_stopped: bool,
    stopped_because: Option<String>,
    restarts: VecDeque<RestartView>,
    detections: VecDeque<DetectionView>,
    rates: VecDeque<RatePoint>,
    /// Rows chunked and committed at the last rate sample.
    last_sample: Option<(i64, u64, u64)>,
}

#[derive(Default)]
pub struct Health {
    inner: Mutex<Inner>,
}

impl Health {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn set_phase(&self, phase: Phase) {
        let mut inner = self.lock();
        // Stopping is final.
        if inner.phase != Some(Phase::Stopping) {
            inner.phase = Some(phase);
        }
    }

    pub fn phase(&self) -> Phase {
        self.lock().phase.unwrap_or(Phase::Starting)
    }

    /// The ownership lease this process holds, as "holder (epoch n)".
    pub fn set_owner(&self, owner: String) {
        self.lock().owner = Some(owner);
    }

    pub fn owner(&self) -> Option<String> {
        self.lock().owner.clone()
    }

    /// The process is stopping because of `why` (a restart limit, a fatal
    /// error, a lost lease).
    pub fn stopped_because(&self, why: &str) {
        let mut inner = self.lock();
        inner.stopped_because.get_or_insert_with(|| why.to_string());
        inner.phase = Some(Phase::Stopping);
    }

    pub fn supervisor_stopped(&self) {
        self.lock().supervisor_stopped = true;
    }

    /// The pipeline's edges, for the actor graph.
    pub fn set_edges(&self, edges: Vec<(String, String)>) {
        self.lock().edges = edges;
    }

    pub fn edges(&self) -> Vec<(String, String)> {
        self.lock().edges.clone()
    }

    pub(super) fn actor_registered(&self, name: &str, capacity: usize) {
        let mut inner = self.lock();
        if let Some(actor) = inner.actors.iter_mut().find(|a| a.name == name) {
            actor.capacity = capacity;
            return;
        }
        inner.actors.push(ActorView {
            name: name.to_string(),
            stage: if name == "chunker" { "X" } else { "Y" },
            state: ActorState::Starting,
            capacity,
            restarts: 0,
            last_reason: None,
        });
    }

    /// An actor stopped for good on purpose (a catch-up lane's stage that
    /// is done): it leaves the view, and never makes the process unhealthy.
    pub fn actor_retired(&self, name: &str) {
        self.lock().actors.retain(|a| a.name != name);
    }

    pub fn actor_state(&self, name: &str, state: ActorState) {
        if let Some(actor) = self.lock().actors.iter_mut().find(|a| a.name == name) {
            actor.state = state;
        }
    }

    pub(super) fn restarted(&self, name: &str, reason: &str, restart: u32) {
        let mut inner = self.lock();
        if let Some(actor) = inner.actors.iter_mut().find(|a| a.name == name) {
            actor.state = ActorState::Restarting;
            actor.restarts = restart;
            actor.last_reason = Some(reason.to_string());
        }
        inner.restarts.push_front(RestartView {
            at: crate::clock::now_ist(),
            actor: name.to_string(),
            reason: reason.to_string(),
            restart,
        });
        inner.restarts.truncate(RECENT_RESTARTS);
    }

    pub fn actors(&self) -> Vec<ActorView> {
        self.lock().actors.clone()
    }

    pub fn recent_restarts(&self) -> Vec<RestartView> {
        self.lock().restarts.iter().cloned().collect()
    }

    /// Detections just committed, oldest first.
    pub fn detections_committed(&self, detections: impl IntoIterator<Item = DetectionView>) {
        let mut inner = self.lock();
        for detection in detections {
            inner.detections.push_front(detection);
        }
        inner.detections.truncate(RECENT_DETECTIONS);
    }

    /// The last detections, newest first.
    pub fn recent_detections(&self) -> Vec<DetectionView> {
        self.lock().detections.iter().cloned().collect()
    }

    /// Records the rates since the last sample, given the running totals.
    pub fn sample_rates(&self, now_ms: i64, rows_chunked: u64, rows_processed: u64) {
        let mut inner = self.lock();
        if let Some((at, chunked, processed)) = inner.last_sample {
            let seconds = (now_ms - at) as f64 / 1000.0;
            if seconds <= 0.0 {
                return;
            }
            inner.rates.push_back(RatePoint {
                t_ms: now_ms,
                input: rows_chunked.saturating_sub(chunked) as f64 / seconds,
                processed: rows_processed.saturating_sub(processed) as f64 / seconds,
            });
            while inner.rates.len() > RATE_POINTS {
                inner.rates.pop_front();
            }
        }
        inner.last_sample = Some((now_ms, rows_chunked, rows_processed));
    }

    pub fn rates(&self) -> Vec<RatePoint> {
        self.lock().rates.iter().copied().collect()
    }

    /// `/readyz`: the lookup table is loaded, the stores answered and this
    /// process is the active owner (the phase is `Running` only then).
    pub fn ready(&self) -> bool {
        self.lock().phase == Some(Phase::Running)
    }

    /// `/healthz`: why the process is not healthy, if it is not. Healthy
    /// while the supervisor and every actor are alive; a standby or a
    /// process still starting is healthy (it is doing what it should).
    pub fn unhealthy(&self) -> Option<String> {
        let inner = self.lock();
        if let Some(why) = &inner.stopped_because {
            return Some(format!("stopping: {why}"));
        }
        if inner.supervisor_stopped {
            return Some("the supervisor stopped".to_string());
        }
        inner.actors.iter().find_map(|actor| match actor.state {
            ActorState::Restarting => Some(format!(
                "actor {} is restarting (restart {}): {}",
                actor.name,
                actor.restarts,
                actor.last_reason.as_deref().unwrap_or("")
            )),
            ActorState::Stopped if inner.phase != Some(Phase::Stopping) => {
                Some(format!("actor {} stopped", actor.name))
            }
            _ => None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn healthy_until_an_actor_restarts_ready_only_while_running() {
        let health = Health::default();
        assert!(health.unhealthy().is_none());
        assert!(!health.ready());
        health.set_phase(Phase::Standby);
        assert!(!health.ready());
        assert!(health.unhealthy().is_none(), "a standby is healthy");
        health.actor_registered("reader", 32);
        health.set_phase(Phase::Running);
        health.actor_state("reader", ActorState::Running);
        assert!(health.ready());
        health.restarted("reader", "panic: boom", 1);
        let why = health.unhealthy().unwrap();
        assert!(why.contains("reader") && why.contains("boom"), "{why}");
        health.actor_state("reader", ActorState::Running);
        assert!(health.unhealthy().is_none());
        health.stopped_because("restart limit");
        assert!(!health.ready());
        assert!(health.unhealthy().unwrap().contains("restart limit"));
        health.set_phase(Phase::Running);
        assert_eq!(health.phase(), Phase::Stopping, "stopping is final");
    }

    #[test]
    fn a_retired_actor_leaves_the_view_and_never_makes_the_process_unhealthy() {
        let health = Health::default();
        health.set_phase(Phase::Running);
        health.actor_registered("catch-up/reader", 32);
        health.actor_state("catch-up/reader", ActorState::Stopped);
        assert!(health.unhealthy().is_some(), "stopped by accident");
        health.actor_retired("catch-up/reader");
        assert!(health.unhealthy().is_none());
        assert!(health.actors().is_empty());
    }

    #[test]
    fn rates_are_per_second_differences() {
        let health = Health::default();
        health.sample_rates(1_000, 0, 0);
        health.sample_rates(2_000, 10_000, 5_000);
        health.sample_rates(4_000, 30_000, 25_000);
        let rates = health.rates();
        assert_eq!(rates.len(), 2);
        assert_eq!((rates[0].input, rates[0].processed), (10_000.0, 5_000.0));
        assert_eq!((rates[1].input, rates[1].processed), (10_000.0, 10_000.0));
    }
}
