//! S3WatcherActor: notices new chunk objects and announces them, in order.
//!
//! It lists `stream_chunks/` after the last chunk it announced (the store's
//! LIST with `start-after`), lets the [`ChunkGate`] decide which listed
//! objects are chunks, sets aside those that are not (a server-side copy
//! under `quarantine/` and an `ignored_objects` row), and sends each chunk
//! to the [`ReaderActor`] as a [`Fetch`]. That is all it does; reading,
//! folding, detecting and committing are the next stages' work.
//!
//! ```text
//! stream_chunks/ ──LIST──► S3WatcherActor ──Fetch{n, key, previous, permit}──► ReaderActor
//!       ▲                    ▲    ▲
//!  ChunkerActor ─hints───────┘    └── Drain / WhenIdle / Hold from the supervisor
//! ```
//!
//! Every announced chunk carries a *permit* of a semaphore of
//! `watcher.max_in_flight`: the tracker drops it when the chunk is
//! committed (or a failed generation drops it with the message), so at most
//! that many chunks are between listing and commit, and waiting for every
//! permit is waiting for every announced chunk to be done.
//!
//! The chunker's hints (keys it claimed, chunks it just wrote, with their
//! bodies) only save work: a listing at once instead of at the next poll,
//! a claim not read from the database, a GET not made. The listing stays
//! the truth, so chunks written by anyone else are found by polling.
//!
//! The listing runs as one task that owns the watcher's state (gate,
//! cursor, hints); the actor's handlers pass messages to it. Its state is
//! built from the [`Committed`] snapshot of each generation
//! ([`Listing::restore`]).

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;
use bytes::Bytes;
use futures::future::LocalBoxFuture;
use prometheus_client::metrics::gauge::Gauge;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, oneshot};
use tracing::{info, warn};

use super::chunk_gate::{ChunkGate, Ignored, Stop, Verdict};
use super::committed::{Committed, Start};
use super::reader::{Fetch, ReaderActor};
use super::supervised::{Behaviour, Failure, Group, Mailbox, Supervised};
use super::wiring::{Wiring, contain_async};
use crate::db::{DbError, IgnoredObject};
use crate::layout;
use crate::metrics::GaugeUnit;
use crate::store::StoreError;

pub type S3WatcherActor = Supervised<Watcher>;

/// The watcher's wiring.
pub struct Watcher {
    pub wiring: Arc<Wiring>,
    pub reader: Mailbox<ReaderActor>,
}

/// The running listing of one generation.
pub struct WatcherState {
    generation: u64,
    control: mpsc::Sender<Control>,
    task: SpawnHandle,
}

impl Behaviour for Watcher {
    type State = WatcherState;
    const GROUP: Group = Group::MechanismY;

    fn pre_start(&self) -> LocalBoxFuture<'static, Result<Option<WatcherState>, Failure>> {
        Box::pin(async { Ok(None) })
    }
}

/// Keys this process's chunker claimed (saved before their PUTs).
#[derive(Message)]
#[rtype(result = "()")]
pub struct ChunksClaimed(pub Vec<String>);

/// A chunk this process's chunker has just written, with its body.
#[derive(Message)]
#[rtype(result = "()")]
pub struct ChunkWritten {
    pub key: String,
    pub body: Bytes,
}

/// Announce no more chunks; answer once every announced chunk is done.
#[derive(Message)]
#[rtype(result = "Result<(), Interrupted>")]
pub struct Drain;

/// Answer after two listings that started after this message found
/// nothing new, with nothing in flight; the answer is the last chunk
/// announced, which the asker can check is committed.
#[derive(Message)]
#[rtype(result = "Result<Option<Arc<str>>, Interrupted>")]
pub struct WhenIdle;

/// Announce nothing more until [`Resume`]; answer once every chunk
/// announced in `generation` is committed, with the last of them. While
/// the topology holds still, its stages can change their key groups in
/// place (`super::committed::Reshare`).
#[derive(Message)]
#[rtype(result = "Result<Option<Arc<str>>, Interrupted>")]
pub struct Hold {
    pub generation: u64,
}

/// Announce again after a [`Hold`].
#[derive(Message)]
#[rtype(result = "()")]
pub struct Resume;

/// The watcher started over (a new generation) or is not running: ask
/// again.
#[derive(Debug)]
pub struct Interrupted;

enum Control {
    Claimed(Vec<String>),
    Written { key: String, body: Bytes },
    Drain(oneshot::Sender<()>),
    WhenIdle(oneshot::Sender<Option<Arc<str>>>),
    Hold(oneshot::Sender<Option<Arc<str>>>),
    Resume,
}

/// Hints queued for the listing task; more are dropped (they only save
/// work).
const CONTROL_CAPACITY: usize = 256;

impl Handler<Start> for S3WatcherActor {
    type Result = ();

    fn handle(&mut self, Start(committed): Start, ctx: &mut Context<Self>) {
        if !committed.supersedes(self.state.as_ref().map(|s| s.generation)) {
            return;
        }
        if let Some(old) = self.state.take() {
            ctx.cancel_future(old.task);
        }
        let (control, inbox) = mpsc::channel(CONTROL_CAPACITY);
        let listing = Listing::restore(
            self.behaviour.wiring.clone(),
            self.behaviour.reader.clone(),
            &committed,
        );
        let task = ctx.spawn(
            actix::fut::wrap_future::<_, Self>(contain_async(listing.run(inbox))).map(
                |outcome, act, ctx| match outcome {
                    Ok(Ok(())) => {}
                    Ok(Err(error)) => act.fail(ctx, Failure::Restart(error.to_string())),
                    Err(panic) => act.fail(ctx, Failure::Restart(panic)),
                },
            ),
        );
        info!(
            generation = committed.generation,
            last_chunk = ?committed.last_chunk,
            lookup_pairs = committed.engine.weights().len(),
            "Mechanism Y started from committed state"
        );
        self.set_state(WatcherState {
            generation: committed.generation,
            control,
            task,
        });
    }
}

/// A chunk's place among the `max_in_flight` announced and not yet
/// committed: it travels with the chunk and is dropped when the chunk is
/// committed (or abandoned), counted by the `txpipe_chunks_in_flight`
/// gauge.
#[derive(Debug)]
pub struct InFlight {
    _permit: OwnedSemaphorePermit,
    _counted: GaugeUnit,
}

impl InFlight {
    fn new(permit: OwnedSemaphorePermit, gauge: &Gauge) -> InFlight {
        InFlight {
            _permit: permit,
            _counted: GaugeUnit::new(gauge),
        }
    }
}

impl S3WatcherActor {
    /// Passes a hint on; drops it if the listing is busy or not running.
    fn hint(&self, control: Control) {
        if let Some(state) = &self.state {
            let _ = state.control.try_send(control);
        }
    }

    /// Passes a request on and answers when the listing does.
    fn request<T: Send + 'static>(
        &self,
        make: impl FnOnce(oneshot::Sender<T>) -> Control,
        when_stopped: Result<T, Interrupted>,
    ) -> ResponseFuture<Result<T, Interrupted>> {
        let Some(state) = &self.state else {
            return Box::pin(async move { when_stopped });
        };
        let (reply, answer) = oneshot::channel();
        let control = state.control.clone();
        let request = make(reply);
        Box::pin(async move {
            control.send(request).await.map_err(|_| Interrupted)?;
            answer.await.map_err(|_| Interrupted)
        })
    }
}

impl Handler<ChunksClaimed> for S3WatcherActor {
    type Result = ();

    fn handle(&mut self, ChunksClaimed(keys): ChunksClaimed, _ctx: &mut Context<Self>) {
        self.hint(Control::Claimed(keys));
    }
}

impl Handler<ChunkWritten> for S3WatcherActor {
    type Result = ();

    fn handle(&mut self, msg: ChunkWritten, _ctx: &mut Context<Self>) {
        self.hint(Control::Written {
            key: msg.key,
            body: msg.body,
        });
    }
}

impl Handler<Drain> for S3WatcherActor {
    type Result = ResponseFuture<Result<(), Interrupted>>;

    fn handle(&mut self, _msg: Drain, _ctx: &mut Context<Self>) -> Self::Result {
        // Not running: nothing is in flight.
        self.request(Control::Drain, Ok(()))
    }
}

impl Handler<Hold> for S3WatcherActor {
    type Result = ResponseFuture<Result<Option<Arc<str>>, Interrupted>>;

    fn handle(&mut self, msg: Hold, _ctx: &mut Context<Self>) -> Self::Result {
        if self.state.as_ref().map(|s| s.generation) != Some(msg.generation) {
            return Box::pin(async { Err(Interrupted) });
        }
        self.request(Control::Hold, Err(Interrupted))
    }
}

impl Handler<Resume> for S3WatcherActor {
    type Result = ();

    fn handle(&mut self, _msg: Resume, _ctx: &mut Context<Self>) {
        if let Some(state) = &self.state {
            // Waits for room: a resume must not be dropped like a hint.
            let control = state.control.clone();
            actix::spawn(async move {
                let _ = control.send(Control::Resume).await;
            });
        }
    }
}

impl Handler<WhenIdle> for S3WatcherActor {
    type Result = ResponseFuture<Result<Option<Arc<str>>, Interrupted>>;

    fn handle(&mut self, _msg: WhenIdle, _ctx: &mut Context<Self>) -> Self::Result {
        self.request(Control::WhenIdle, Err(Interrupted))
    }
}

/// Why the listing fails (the watcher restarts).
#[derive(Debug, thiserror::Error)]
enum WatchError {
    #[error("{0}")]
    Store(#[from] StoreError),
    #[error("{0}")]
    Db(#[from] DbError),
    #[error("{0}")]
    Injected(#[from] super::faults::InjectedFault),
}

const LIST_PAGE: usize = 1000;

/// How soon to list again while a chunk sequence number is missing: a
/// chunk PUT that started earlier is usually about to become visible.
const GAP_RECHECK: Duration = Duration::from_millis(5);

/// Claims read at once (more than a listing page, so that one read covers
/// every key of a page).
const CLAIMS_PAGE: usize = 2 * LIST_PAGE;

/// Claimed keys remembered from the chunker's hints.
const CLAIMS_KEPT: usize = 256;

/// Memory for chunk bodies the chunker handed over.
const BODIES_BYTES: usize = 16 * 1024 * 1024;

/// What one listing found.
#[derive(Default)]
struct Found {
    /// Keys to apply, in order.
    applied: Vec<String>,
    /// A key waits (a missing sequence number, or one not yet claimed).
    held: bool,
    /// An ignored object was recorded for the first time.
    recorded: bool,
}

/// Where the watcher stands in a generation: which chunk comes next and
/// how the next announcement is numbered.
pub struct Position {
    pub generation: u64,
    pub gate: ChunkGate,
    /// Where the next LIST starts: the last key applied.
    pub cursor: Option<String>,
    /// The chunk announced last.
    pub previous: Option<Arc<str>>,
    /// Number of the next announcement in this generation.
    pub next_number: u64,
}

impl Position {
    /// The restart constructor: listing goes on after the last committed
    /// chunk, and announcements are numbered from 0.
    pub fn restore(committed: &Committed, gap_timeout: Duration) -> Position {
        Position {
            generation: committed.generation,
            gate: ChunkGate::new(committed.last_chunk.as_deref(), gap_timeout),
            cursor: committed.last_chunk.as_deref().map(str::to_string),
            previous: committed.last_chunk.clone(),
            next_number: 0,
        }
    }
}

/// The watcher's state in one generation, owned by the listing task.
pub struct Listing {
    wiring: Arc<Wiring>,
    reader: Mailbox<ReaderActor>,
    at: Position,
    permits: Arc<Semaphore>,
    in_flight_limit: u32,
    queue: VecDeque<(String, Instant)>,
    bodies: VecDeque<(String, Bytes)>,
    claimed: VecDeque<String>,
    /// Listings that found nothing with nothing in flight.
    idle_listings: u64,
    idle_waiters: Vec<(u64, oneshot::Sender<Option<Arc<str>>>)>,
    draining: Option<oneshot::Sender<()>>,
    /// Held: announce nothing; answer the holder once nothing is in flight.
    holding: Option<Held>,
}

enum Held {
    Waiting(oneshot::Sender<Option<Arc<str>>>),
    Still,
}

impl Listing {
    /// The listing of a generation, from committed state: it goes on after
    /// the last committed chunk.
    pub fn restore(
        wiring: Arc<Wiring>,
        reader: Mailbox<ReaderActor>,
        committed: &Committed,
    ) -> Listing {
        let settings = &wiring.settings.watcher;
        let in_flight_limit = settings.max_in_flight.min(Semaphore::MAX_PERMITS) as u32;
        Listing {
            at: Position::restore(committed, Duration::from_millis(settings.gap_timeout_ms)),
            permits: Arc::new(Semaphore::new(in_flight_limit as usize)),
            in_flight_limit,
            queue: VecDeque::new(),
            bodies: VecDeque::new(),
            claimed: VecDeque::new(),
            idle_listings: 0,
            idle_waiters: Vec::new(),
            draining: None,
            holding: None,
            wiring,
            reader,
        }
    }

    fn in_flight(&self) -> u32 {
        self.in_flight_limit - self.permits.available_permits() as u32
    }

    async fn run(mut self, mut inbox: mpsc::Receiver<Control>) -> Result<(), WatchError> {
        let settings = self.wiring.settings.watcher.clone();
        let poll_interval = Duration::from_millis(settings.poll_interval_ms);
        let sweep_interval = Duration::from_millis(settings.sweep_interval_ms);
        let mut next_list_at = Instant::now();
        let mut next_sweep_at = Instant::now();
        let mut sweep_position: Option<String> = None;
        let mut held_since: Option<Instant> = None;
        loop {
            if self.draining.is_some() {
                self.queue.clear();
                if self.in_flight() == 0 {
                    if let Some(done) = self.draining.take() {
                        let _ = done.send(());
                    }
                    return Ok(());
                }
            }
            // Held: once nothing is in flight, tell the holder.
            if matches!(self.holding, Some(Held::Waiting(_)))
                && self.in_flight() == 0
                && let Some(Held::Waiting(holder)) = self.holding.replace(Held::Still)
            {
                let _ = holder.send(self.at.previous.clone());
            }
            let permits = self.permits.clone();
            let want_list = self.draining.is_none()
                && self.queue.is_empty()
                && self.in_flight() < self.in_flight_limit;
            tokio::select! {
                biased;
                control = inbox.recv() => match control {
                    Some(control) => {
                        if self.take(control) {
                            next_list_at = Instant::now();
                        }
                    }
                    None => return Ok(()),
                },
                permit = permits.clone().acquire_owned(),
                    if !self.queue.is_empty() && self.holding.is_none() => {
                    let permit = permit.expect("the semaphore is never closed");
                    let (key, listed_at) = self.queue.pop_front().expect("checked");
                    if !self.announce(key, listed_at, permit).await? {
                        // The reader is restarting: a new generation follows.
                        return Ok(());
                    }
                }
                _ = permits.acquire_many(self.in_flight_limit),
                    if self.draining.is_some() || matches!(self.holding, Some(Held::Waiting(_))) => {}
                // Someone waits for an idle listing: list as soon as the
                // last chunk in flight is committed.
                _ = permits.acquire_many(self.in_flight_limit),
                    if !self.idle_waiters.is_empty() && self.in_flight() > 0 => {
                    next_list_at = Instant::now();
                }
                _ = tokio::time::sleep_until(next_list_at.into()), if want_list => {
                    let found = self.list().await?;
                    let now = Instant::now();
                    if let Some(last) = found.applied.last() {
                        self.at.cursor = Some(last.clone());
                    }
                    let any = !found.applied.is_empty();
                    self.queue.extend(found.applied.into_iter().map(|key| (key, now)));
                    if any || !found.held {
                        held_since = None;
                    }
                    next_list_at = if found.held {
                        // Look again very soon while a chunk is about to
                        // appear (a PUT in flight), then at the polling pace
                        // (a number the chunker may claim much later).
                        let since = *held_since.get_or_insert(now);
                        now + if now.duration_since(since) < poll_interval {
                            GAP_RECHECK
                        } else {
                            poll_interval
                        }
                    } else if any {
                        now
                    } else {
                        now + poll_interval
                    };
                    if !any && !found.held && !found.recorded && self.in_flight() == 0 {
                        self.idle_listings += 1;
                        let idle = self.idle_listings;
                        for (_, waiter) in self.idle_waiters.extract_if(.., |(at, _)| *at <= idle) {
                            let _ = waiter.send(self.at.previous.clone());
                        }
                        if !self.idle_waiters.is_empty() {
                            next_list_at = now;
                        }
                    }
                }
                _ = tokio::time::sleep_until(next_sweep_at.into()), if self.draining.is_none() => {
                    self.sweep(&mut sweep_position).await?;
                    next_sweep_at = Instant::now() + sweep_interval;
                }
            }
        }
    }

    /// Takes a message from the actor; returns whether to list at once.
    fn take(&mut self, control: Control) -> bool {
        match control {
            Control::Claimed(keys) => {
                for key in keys {
                    if !self.claimed.contains(&key) {
                        self.claimed.push_back(key);
                    }
                }
                while self.claimed.len() > CLAIMS_KEPT {
                    self.claimed.pop_front();
                }
                false
            }
            Control::Written { key, body } => {
                self.bodies.push_back((key, body));
                let mut size: usize = self.bodies.iter().map(|(_, b)| b.len()).sum();
                while size > BODIES_BYTES
                    && let Some((_, dropped)) = self.bodies.pop_front()
                {
                    size -= dropped.len();
                }
                true
            }
            Control::Drain(done) => {
                self.draining = Some(done);
                false
            }
            Control::Hold(holder) => {
                self.holding = Some(Held::Waiting(holder));
                false
            }
            Control::Resume => {
                self.holding = None;
                true
            }
            Control::WhenIdle(waiter) => {
                self.idle_waiters.push((self.idle_listings + 2, waiter));
                true
            }
        }
    }

    /// Sends one chunk to the reader. Returns `false` if the reader is
    /// gone (restarting).
    async fn announce(
        &mut self,
        key: String,
        listed_at: Instant,
        permit: OwnedSemaphorePermit,
    ) -> Result<bool, WatchError> {
        self.wiring.faults.hit("watcher")?;
        let body = self
            .bodies
            .iter()
            .position(|(k, _)| *k == key)
            .and_then(|at| self.bodies.remove(at))
            .map(|(_, body)| body);
        let key: Arc<str> = Arc::from(key);
        let fetch = Fetch {
            generation: self.at.generation,
            number: self.at.next_number,
            key: key.clone(),
            previous: self.at.previous.replace(key),
            listed_at,
            body,
            permit: InFlight::new(permit, &self.wiring.metrics.in_flight),
        };
        self.at.next_number += 1;
        self.wiring.metrics.chunks_listed.inc();
        Ok(self.reader.send(fetch).await.is_ok())
    }

    /// Lists `stream_chunks/` after `cursor` (the last applied key) and
    /// lets the gate decide every key; ignored objects are set aside and
    /// recorded here. Pages that hold only ignored keys are listed past at
    /// once, so no number of strangers can hide a chunk behind them.
    async fn list(&mut self) -> Result<Found, WatchError> {
        let p = self.wiring.clone();
        let mut listing = Found::default();
        let mut page_after = self.at.cursor.clone();
        let mut claims_fresh = false;
        loop {
            let keys = p
                .store("list chunks", || {
                    p.objects
                        .list(layout::CHUNK_PREFIX, page_after.as_deref(), LIST_PAGE)
                })
                .await?;
            let now = Instant::now();
            // Chunks this process's chunker claimed: no need to ask.
            for key in &keys {
                if let Some(seq) = layout::chunk_seq(key)
                    && seq >= self.at.gate.expected()
                    && self.claimed.iter().rev().any(|k| k == key)
                {
                    self.at.gate.note_claim(seq, key);
                }
            }
            let mut decided = 0;
            let applied_before = listing.applied.len();
            let stop = loop {
                let admission = self.at.gate.admit(&keys[decided..], now, claims_fresh);
                decided += admission.consumed;
                for verdict in admission.verdicts {
                    match verdict {
                        Verdict::Apply(key) => listing.applied.push(key),
                        Verdict::Ignore { key, why } => {
                            listing.recorded |= self.set_aside(&key, &why).await?;
                        }
                    }
                }
                if admission.stop != Stop::NeedClaims {
                    break admission.stop;
                }
                let from = self.at.gate.expected();
                let claims = p
                    .db("read chunk claims", || {
                        p.state.chunk_claims(from, CLAIMS_PAGE)
                    })
                    .await?;
                self.at.gate.update_claims(claims);
                claims_fresh = true;
            };
            listing.held = stop == Stop::Held;
            let page_was_full = keys.len() == LIST_PAGE;
            if stop == Stop::Done && page_was_full && listing.applied.len() == applied_before {
                page_after = keys.last().cloned();
                continue;
            }
            return Ok(listing);
        }
    }

    /// Looks for objects that appeared among the chunks already committed
    /// (the listing, which goes on after the last applied key, never sees
    /// them), one page of keys per call: every key up to `committed` that
    /// `processed_chunks` does not name was never applied, and is set
    /// aside. `position` is where the sweep stands; it starts over once it
    /// reaches `committed`, so the cost is one LIST and one query per call
    /// however long the bucket's history.
    async fn sweep(&mut self, position: &mut Option<String>) -> Result<(), WatchError> {
        let p = self.wiring.clone();
        let Some(committed) = p.db("read last chunk", || p.state.last_chunk()).await? else {
            return Ok(());
        };
        let mut keys = p
            .store("sweep chunks", || {
                p.objects
                    .list(layout::CHUNK_PREFIX, position.as_deref(), LIST_PAGE)
            })
            .await?;
        let page_was_full = keys.len() == LIST_PAGE;
        keys.retain(|key| key.as_str() <= committed.as_str());
        let (Some(first), Some(last)) = (keys.first(), keys.last()) else {
            *position = None;
            return Ok(());
        };
        let applied: std::collections::HashSet<String> = p
            .db("read processed chunk names", || {
                p.state.processed_names_between(first, last)
            })
            .await?
            .into_iter()
            .collect();
        for key in keys.iter().filter(|key| !applied.contains(*key)) {
            if let Some(Verdict::Ignore { key, why }) = self.at.gate.passed_over(key) {
                self.set_aside(&key, &why).await?;
            }
        }
        *position = (page_was_full && last.as_str() < committed.as_str()).then(|| last.clone());
        Ok(())
    }

    /// Copies an object that is not applied to `quarantine/` and records
    /// it (once: the first time says so in a WARN line). Returns whether it
    /// was new.
    async fn set_aside(&self, key: &str, why: &Ignored) -> Result<bool, WatchError> {
        let p = self.wiring.clone();
        let name = key.strip_prefix(layout::CHUNK_PREFIX).unwrap_or(key);
        let target = format!("{}{name}.{}", layout::QUARANTINE_PREFIX, why.kind());
        let copied = match p
            .store("quarantine object", || p.objects.copy(key, &target))
            .await
        {
            Ok(true) => Some(target),
            Ok(false) => None,
            Err(error) if !error.is_transient() => {
                // A name too long for a quarantine key, say: the object
                // stays where it is, and the record says why.
                warn!(object = ?key, %error, "could not copy an ignored object to quarantine");
                None
            }
            Err(error) => return Err(error.into()),
        };
        let record = IgnoredObject {
            key: key.to_string(),
            seq: layout::chunk_seq(key),
            reason: why.reason(),
            quarantine_key: copied,
        };
        let new = p
            .db("record ignored object", || {
                p.state.record_ignored(&p.fence, &record)
            })
            .await?;
        if new {
            p.metrics.objects_ignored.inc();
            warn!(object = ?key, reason = %record.reason, quarantine = ?record.quarantine_key,
                  "object under stream_chunks/ is not applied");
        }
        Ok(new)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_restart_constructor_lists_after_the_committed_chunk() {
        let committed = Committed {
            generation: 3,
            last_chunk: Some(Arc::from(
                "stream_chunks/chunk-0000000041-20261201T000000000Z.csv",
            )),
            ..Committed::default()
        };
        let at = Position::restore(&committed, Duration::from_secs(1));
        assert_eq!(at.generation, 3);
        assert_eq!(at.cursor.as_deref(), committed.last_chunk.as_deref());
        assert_eq!(at.previous, committed.last_chunk);
        assert_eq!(at.next_number, 0);
        assert_eq!(at.gate.expected(), 42, "the next sequence number");
        let fresh = Position::restore(&Committed::default(), Duration::from_secs(1));
        assert_eq!((fresh.cursor, fresh.gate.expected()), (None, 0));
    }
}
