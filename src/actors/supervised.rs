//! Supervision, written once: the restart policy ([`Supervision`]) and the
//! generic actor every stage runs in ([`Supervised`]).
//!
//! A stage is a [`Behaviour`]: immutable wiring (settings, stores, the
//! addresses of the next stages) plus a `State` it owns. `Supervised<B>`
//! is the actix actor around it. On start and on every restart it builds the
//! state in one place, [`Behaviour::pre_start`], from committed state
//! (ractor's `pre_start`), after waiting out the restart backoff. A stage
//! that fails (a contained panic, or an error it cannot get past) calls
//! [`Supervised::fail`]: one ERROR line, the actor stops, actix's
//! `Supervisor` restarts it in place (same mailbox, same address, so
//! senders never see a dead mailbox), the old state is dropped, the restart
//! is counted and logged once (`actor restarted`, actor name, reason,
//! restart count, backoff), and the [`SupervisorActor`] hears about it with
//! a [`Restarted`] message. An actor that restarts more than
//! `supervisor.max_restarts` times within `restart_window_ms` stops the
//! whole process with [`EXIT_RESTART_LIMIT`].
//!
//! Members of Mechanism Y (see [`Group`]) build no state on their own: their
//! state is a view of one committed snapshot, shared by all of them, which
//! the supervisor hands out with a `Start` message whenever any of them
//! restarted (a one-for-all restart, as Erlang/OTP calls it).
//!
//! [`SupervisorActor`]: super::supervisor::SupervisorActor

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use actix::prelude::*;
use futures::future::LocalBoxFuture;
use prometheus_client::metrics::gauge::Gauge;
use rustc_hash::FxHashMap;
use tracing::{error, warn};

use crate::config::SupervisorConfig;
use crate::db::RestartEvent;
use crate::metrics::{ActorState, GaugeUnit, Metrics};

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

/// Why a stage could not build its state or do its work.
#[derive(Clone, Debug)]
pub enum Failure {
    /// Restarting may help (a crash, a database that kept failing).
    Restart(String),
    /// No restart can help (the configuration or the input is wrong): the
    /// process stops with [`EXIT_FATAL`].
    Fatal(String),
}

impl<E: std::fmt::Display> From<E> for Failure {
    fn from(error: E) -> Self {
        Failure::Restart(error.to_string())
    }
}

/// Which restart strategy an actor is under.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Group {
    /// Restarts alone, rebuilding its own state (one-for-one).
    Alone,
    /// A member of Mechanism Y: its restart restarts all members from one
    /// committed snapshot (one-for-all).
    MechanismY,
}

/// What a stage is: its wiring (the struct itself, immutable) and the
/// state it owns.
pub trait Behaviour: Unpin + Sized + 'static {
    type State: Unpin + 'static;

    const GROUP: Group = Group::Alone;

    /// Builds the state from committed state, on start and after every
    /// restart. `Ok(None)`: the state comes later, with a message (members
    /// of Mechanism Y).
    fn pre_start(&self) -> LocalBoxFuture<'static, Result<Option<Self::State>, Failure>>;

    /// Runs once the state is built (e.g. to start the stage's own loop).
    fn post_start(_act: &mut Supervised<Self>, _ctx: &mut Context<Supervised<Self>>) {}
}

/// Tells the supervisor that an actor restarted and has waited out its
/// backoff.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Restarted {
    pub actor: String,
    pub group: Group,
}

/// A stage under supervision.
pub struct Supervised<B: Behaviour> {
    pub name: String,
    pub behaviour: B,
    /// `None` while the state is being built, or until a member of
    /// Mechanism Y receives its snapshot.
    pub state: Option<B::State>,
    supervision: Arc<Supervision>,
    supervisor: Recipient<Restarted>,
    failure: Option<String>,
    resume_after: Option<Duration>,
}

impl<B: Behaviour> Supervised<B> {
    /// Starts `behaviour` named `name` on a new arbiter (thread), under
    /// actix's supervisor, with a mailbox of `capacity` messages.
    pub fn start(
        name: String,
        behaviour: B,
        capacity: usize,
        supervision: Arc<Supervision>,
        supervisor: Recipient<Restarted>,
    ) -> Mailbox<Supervised<B>>
    where
        B: Send,
    {
        let queued = supervision.metrics.mailbox(&name, capacity);
        let addr = actix::Supervisor::start_in_arbiter(&Arbiter::new().handle(), move |ctx| {
            ctx.set_mailbox_capacity(capacity);
            Supervised {
                name,
                behaviour,
                state: None,
                supervision,
                supervisor,
                failure: None,
                resume_after: None,
            }
        });
        Mailbox { addr, queued }
    }

    /// Takes `state` as the actor's state (a member of Mechanism Y, given
    /// its snapshot): the actor is running.
    pub fn set_state(&mut self, state: B::State) {
        self.state = Some(state);
        self.report(ActorState::Running);
    }

    fn report(&self, state: ActorState) {
        self.supervision
            .metrics
            .health
            .actor_state(&self.name, state);
    }

    /// Records why the actor fails and stops it; actix restarts it.
    pub fn fail(&mut self, ctx: &mut Context<Self>, failure: Failure) {
        match failure {
            Failure::Restart(reason) => {
                if self.failure.is_none() {
                    error!(actor = %self.name, %reason, "actor failed");
                    self.failure = Some(reason);
                }
                ctx.stop();
            }
            Failure::Fatal(message) => self.supervision.fatal(&self.name, message),
        }
    }

    /// Builds the state with [`Behaviour::pre_start`], blocking the mailbox
    /// until it is there.
    fn build_state(&mut self, ctx: &mut Context<Self>) {
        let build = super::wiring::contain_async(self.behaviour.pre_start());
        ctx.wait(
            actix::fut::wrap_future::<_, Self>(build).map(|built, act, ctx| match built {
                Ok(Ok(Some(state))) => {
                    act.set_state(state);
                    B::post_start(act, ctx);
                }
                Ok(Ok(None)) => {}
                Ok(Err(failure)) => act.fail(ctx, failure),
                Err(panic) => act.fail(ctx, Failure::Restart(panic)),
            }),
        );
    }
}

impl<B: Behaviour> Actor for Supervised<B> {
    type Context = Context<Self>;

    fn stopped(&mut self, _ctx: &mut Context<Self>) {
        // Followed by `restarting` when actix restarts it; for good when
        // the process stops.
        self.report(ActorState::Stopped);
    }

    fn started(&mut self, ctx: &mut Context<Self>) {
        if self.resume_after.is_none() {
            self.report(ActorState::Starting);
        }
        match self.resume_after.take() {
            None => self.build_state(ctx),
            Some(backoff) => {
                let supervisor = self.supervisor.clone();
                let restarted = Restarted {
                    actor: self.name.clone(),
                    group: B::GROUP,
                };
                ctx.wait(
                    actix::fut::wrap_future::<_, Self>(async move {
                        tokio::time::sleep(backoff).await;
                        // Control, not data: the supervisor's mailbox is
                        // never the bottleneck, and a lost notice only
                        // matters if the supervisor is gone anyway.
                        let _ = supervisor.send(restarted).await;
                    })
                    .map(|(), act, ctx| {
                        act.report(ActorState::Starting);
                        act.build_state(ctx)
                    }),
                );
            }
        }
    }
}

/// Stops a stage for good, with its thread: a cluster worker's catch-up
/// lane that has caught up (see `SupervisorActor::start_lane`). No restart
/// follows, and nothing is reported as a failure.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Retire;

impl<B: Behaviour> Handler<Retire> for Supervised<B> {
    type Result = ();

    fn handle(&mut self, _msg: Retire, _ctx: &mut Context<Self>) {
        self.state = None;
        self.supervision.metrics.health.actor_retired(&self.name);
        // The arbiter is this actor's own: stopping it ends the actor
        // without actix's supervisor restarting it.
        Arbiter::current().stop();
    }
}

impl<B: Behaviour> actix::Supervised for Supervised<B> {
    fn restarting(&mut self, _ctx: &mut Context<Self>) {
        self.state = None;
        let reason = self
            .failure
            .take()
            .unwrap_or_else(|| "stopped unexpectedly".to_string());
        self.resume_after = Some(
            self.supervision
                .on_restart(&self.name, &reason)
                .unwrap_or(Duration::from_secs(3600)),
        );
    }
}

/// The address of a stage, counting what is sent to it: messages sent and
/// not yet answered (waiting in the bounded mailbox, being handled, or
/// waiting for room) are the actor's `txpipe_mailbox_messages` gauge.
/// Every message to a stage goes through [`Mailbox::send`]: a send is
/// queued at once, as with [`Addr::send`], and awaited for its answer.
pub struct Mailbox<A: Actor> {
    addr: Addr<A>,
    queued: Gauge,
}

impl<A: Actor> Clone for Mailbox<A> {
    fn clone(&self) -> Self {
        Mailbox {
            addr: self.addr.clone(),
            queued: self.queued.clone(),
        }
    }
}

impl<A: Actor> Mailbox<A> {
    /// Queues `msg` now; the future resolves with the actor's answer.
    pub fn send<M>(
        &self,
        msg: M,
    ) -> impl Future<Output = Result<M::Result, MailboxError>> + use<A, M>
    where
        M: Message + Send + 'static,
        M::Result: Send,
        A: Handler<M>,
        A::Context: actix::dev::ToEnvelope<A, M>,
    {
        // Off the count when answered, or when the send is dropped.
        let queued = GaugeUnit::new(&self.queued);
        let answer = self.addr.send(msg);
        async move {
            let answer = answer.await;
            drop(queued);
            answer
        }
    }

    /// Whether the actor is still there (not stopped for good).
    pub fn connected(&self) -> bool {
        self.addr.connected()
    }
}

/// Restart bookkeeping and the process's stop, shared by all actors.
pub struct Supervision {
    policy: SupervisorConfig,
    /// Where restarts and actor states are reported.
    pub metrics: Arc<Metrics>,
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
    pub fn new(policy: SupervisorConfig, metrics: Arc<Metrics>) -> Supervision {
        Supervision {
            policy,
            metrics,
            restarts: Mutex::default(),
            unrecorded: Mutex::default(),
            fatal: Mutex::default(),
        }
    }

    pub fn policy(&self) -> &SupervisorConfig {
        &self.policy
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
        self.metrics.restarted(actor, reason, total);
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
        let backoff = self.backoff(in_window);
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

    /// The exponential backoff after the `nth` failure in a row (from 1).
    pub fn backoff(&self, nth: u32) -> Duration {
        let exponent = nth.saturating_sub(1).min(20);
        Duration::from_millis(
            self.policy
                .backoff_initial_ms
                .saturating_mul(1 << exponent)
                .min(self.policy.backoff_max_ms),
        )
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

    /// Stops the process with `code` and `message` (e.g. a restart limit).
    pub fn stop_with(&self, message: String, code: i32) {
        let _ = self.stop_process(message, code);
    }

    /// Stops the actor system with `code`; only the first reason counts.
    /// Returns whether this was the first.
    fn stop_process(&self, message: String, code: i32) -> bool {
        let mut fatal = self.fatal.lock().unwrap_or_else(|e| e.into_inner());
        if fatal.is_some() {
            return false;
        }
        self.metrics.health.stopped_because(&message);
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
