//! ChunkerActor (Mechanism X): cuts the master file into chunk objects
//! under `stream_chunks/`, `rows_per_chunk` data rows each (header
//! repeated), one every `interval_ms`.
//!
//! Its position (next sequence number and byte offset) is durable. Keys
//! are chosen and saved as *pending* a block of `max_in_flight` at a time,
//! always before their PUTs; the position advances after each PUT and is
//! saved with the next block (one write per block, not per chunk, so the
//! chunker does not queue behind commits on the state store), at a stop
//! and at the end. A crash re-PUTs the chunks written since the last save
//! under the same keys with the same rows, so no chunk is ever written
//! under two names and no row is skipped or repeated. Reading and cutting
//! run on a blocking thread so a large master file streams through a fixed
//! buffer.
//!
//! No master record longer than `input.max_record_bytes` is held whole: a
//! record that is too long, or whose double quote is never closed, takes
//! its row in the chunk as a placeholder line
//! ([`crate::input::placeholder`]) that the watcher quarantines as a bad
//! row, and is reported here with a warning.
//!
//! ```text
//! master CSV ──► ChunkerActor ──PUT──► stream_chunks/
//!                    ├──ChunksClaimed / ChunkWritten (hints)──► S3WatcherActor
//!                    └──MasterChunked──► SupervisorActor
//! ```
//!
//! Its state (position and an open reader at it) is built from the saved
//! position on every start and restart ([`Chunking::open`]); the cutting
//! loop owns it. [`Stop`] drops the loop's stop guard: the loop ends after
//! the chunks it is writing, and the answer comes when it has.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use actix::prelude::*;
use bytes::Bytes;
use futures::FutureExt;
use futures::future::LocalBoxFuture;
use futures::stream::{FuturesOrdered, StreamExt};
use tokio::sync::oneshot;
use tracing::{debug, info, warn};

use super::supervised::{Behaviour, Failure, Mailbox, Supervised};
use super::supervisor::{MasterChunked, SupervisorActor};
use super::watcher::{ChunkWritten, ChunksClaimed, S3WatcherActor};
use super::wiring::{Wiring, contain_async};
use crate::db::{ChunkerPosition, DbError, Fence};
use crate::input::records::{Cause, ChunkCutter, Cut, CutShort, master_header};
use crate::layout;
use crate::store::StoreError;

pub type ChunkerActor = Supervised<Chunker>;

/// The chunker's wiring.
pub struct Chunker {
    pub wiring: Arc<Wiring>,
    /// The lease the chunker writes under: the ownership lease of a single
    /// process, the cluster's chunker lease in a cluster.
    pub fence: Fence,
    pub watcher: Mailbox<S3WatcherActor>,
    pub supervisor: Addr<SupervisorActor>,
}

/// The chunker's state: before its loop starts, what the loop will own;
/// then the loop's stop guard and who waits for it to end.
pub enum ChunkerState {
    Ready(Box<Chunking>),
    Running {
        stop: Option<oneshot::Sender<()>>,
        ended: bool,
        waiters: Vec<oneshot::Sender<()>>,
    },
}

impl Behaviour for Chunker {
    type State = ChunkerState;

    fn pre_start(&self) -> LocalBoxFuture<'static, Result<Option<ChunkerState>, Failure>> {
        let wiring = self.wiring.clone();
        Box::pin(async move {
            let chunking = Chunking::open(&wiring).await.map_err(|e| match e {
                ChunkerError::Fatal(message) => Failure::Fatal(message),
                other => Failure::Restart(other.to_string()),
            })?;
            Ok(Some(ChunkerState::Ready(Box::new(chunking))))
        })
    }

    fn post_start(act: &mut ChunkerActor, ctx: &mut Context<ChunkerActor>) {
        let Some(ChunkerState::Ready(chunking)) = act.state.take() else {
            return;
        };
        let (stop, stopped) = oneshot::channel();
        let links = Links {
            wiring: act.behaviour.wiring.clone(),
            fence: act.behaviour.fence.clone(),
            watcher: act.behaviour.watcher.clone(),
            supervisor: act.behaviour.supervisor.clone(),
        };
        act.state = Some(ChunkerState::Running {
            stop: Some(stop),
            ended: false,
            waiters: Vec::new(),
        });
        ctx.spawn(
            actix::fut::wrap_future::<_, ChunkerActor>(contain_async(run(
                links, *chunking, stopped,
            )))
            .map(|outcome, act, ctx| match outcome {
                Ok(Ok(())) => {
                    if let Some(ChunkerState::Running { ended, waiters, .. }) = act.state.as_mut() {
                        *ended = true;
                        for waiter in waiters.drain(..) {
                            let _ = waiter.send(());
                        }
                    }
                }
                Ok(Err(ChunkerError::Fatal(message))) => act.fail(ctx, Failure::Fatal(message)),
                Ok(Err(error)) => act.fail(ctx, Failure::Restart(error.to_string())),
                Err(panic) => act.fail(ctx, Failure::Restart(panic)),
            }),
        );
    }
}

/// Stop after the chunks being written; answer when the loop has ended.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Stop;

impl Handler<Stop> for ChunkerActor {
    type Result = ResponseFuture<()>;

    fn handle(&mut self, _msg: Stop, _ctx: &mut Context<Self>) -> Self::Result {
        let Some(ChunkerState::Running {
            stop,
            ended,
            waiters,
        }) = self.state.as_mut()
        else {
            return Box::pin(async {});
        };
        // Dropping the guard is the stop signal.
        stop.take();
        if *ended {
            return Box::pin(async {});
        }
        let (waiter, answer) = oneshot::channel();
        waiters.push(waiter);
        Box::pin(async move {
            let _ = answer.await;
        })
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ChunkerError {
    #[error("{0}")]
    Store(#[from] StoreError),
    #[error("{0}")]
    Db(#[from] DbError),
    #[error("reading the master file: {0}")]
    Read(#[from] std::io::Error),
    #[error("{0}")]
    Injected(#[from] super::faults::InjectedFault),
    /// Restarting cannot help: the configuration or the file is wrong.
    #[error("{0}")]
    Fatal(String),
}

type Cutter = ChunkCutter<Box<dyn std::io::Read + Send>>;

async fn cut_next(cutter: Cutter, rows: u64) -> Result<(Cutter, Cut), ChunkerError> {
    let mut cutter = cutter;
    let (cutter, cut) = tokio::task::spawn_blocking(move || {
        let cut = cutter.cut(rows);
        (cutter, cut)
    })
    .await
    .map_err(|e| ChunkerError::Fatal(format!("cutting thread failed: {e}")))?;
    Ok((cutter, cut?))
}

/// What the cutting loop owns: the saved position and a reader at it.
pub struct Chunking {
    source: String,
    position: ChunkerPosition,
    cutter: Cutter,
}

impl Chunking {
    /// Reads the master file's header and the saved position, and opens
    /// the master file there.
    pub async fn open(p: &Wiring) -> Result<Chunking, ChunkerError> {
        let source = p.settings.source.transactions.clone();
        let rows_per_chunk = p.settings.chunker.rows_per_chunk;
        let max_record_bytes = p.settings.input.max_record_bytes;
        let (header, data_offset) = {
            let (sources, source) = (p.sources.clone(), source.clone());
            tokio::task::spawn_blocking(move || {
                let reader = sources.open_at(&source, 0).map_err(|e| e.to_string())?;
                master_header(reader, &source, max_record_bytes)
            })
            .await
            .map_err(|e| ChunkerError::Fatal(e.to_string()))?
            .map_err(ChunkerError::Fatal)?
        };
        let saved = p
            .db("read chunker position", || p.state.chunker_position())
            .await?;
        let position = resume_position(saved, &source, rows_per_chunk, data_offset)
            .map_err(ChunkerError::Fatal)?;
        let reader = {
            let (sources, source, offset) =
                (p.sources.clone(), source.clone(), position.next_offset);
            tokio::task::spawn_blocking(move || sources.open_at(&source, offset))
                .await
                .map_err(|e| ChunkerError::Fatal(e.to_string()))??
        };
        let max_chunk_bytes =
            usize::try_from(p.settings.watcher.max_chunk_bytes).unwrap_or(usize::MAX);
        Ok(Chunking::at(
            source,
            position,
            header,
            reader,
            max_record_bytes,
            max_chunk_bytes,
        ))
    }

    /// The loop's state from a resume position and the master file opened
    /// at its offset: the I/O-free half of [`Chunking::open`].
    fn at(
        source: String,
        position: ChunkerPosition,
        header: Vec<u8>,
        reader: Box<dyn std::io::Read + Send>,
        max_record_bytes: usize,
        max_chunk_bytes: usize,
    ) -> Chunking {
        let cutter = ChunkCutter::new(reader, position.next_offset, header, max_record_bytes)
            .with_max_chunk_bytes(max_chunk_bytes);
        Chunking {
            source,
            position,
            cutter,
        }
    }
}

/// Where cutting resumes: the saved position if there is one (refused when
/// it belongs to another master file or chunk size), else the first data
/// row of a master file nobody has chunked yet.
fn resume_position(
    saved: Option<ChunkerPosition>,
    source: &str,
    rows_per_chunk: u64,
    data_offset: u64,
) -> Result<ChunkerPosition, String> {
    match saved {
        Some(position) => {
            position.check(source, rows_per_chunk)?;
            Ok(position)
        }
        None => Ok(ChunkerPosition {
            source: source.to_string(),
            rows_per_chunk,
            next_seq: 0,
            next_offset: data_offset,
            rows_emitted: 0,
            pending_keys: Vec::new(),
            last_key: None,
            finished: false,
        }),
    }
}

/// Where the loop reports to.
struct Links {
    wiring: Arc<Wiring>,
    fence: Fence,
    watcher: Mailbox<S3WatcherActor>,
    supervisor: Addr<SupervisorActor>,
}

async fn run(
    links: Links,
    chunking: Chunking,
    mut stop: oneshot::Receiver<()>,
) -> Result<(), ChunkerError> {
    let pipeline = links.wiring.clone();
    let p = &*pipeline;
    let Chunking {
        source,
        mut position,
        mut cutter,
    } = chunking;
    let rows_per_chunk = p.settings.chunker.rows_per_chunk;
    let interval = Duration::from_millis(p.settings.chunker.interval_ms);
    p.metrics.chunker_at(position.next_seq);
    info!(
        next_seq = position.next_seq,
        offset = position.next_offset,
        "chunker resumes"
    );
    let window = p.settings.chunker.max_in_flight;
    // The stop guard was dropped (or sent): finish what is in flight.
    let mut stopping = false;
    // Keys a previous run chose for the next chunks: the same chunks get
    // the same keys again.
    let mut reused: VecDeque<String> = std::mem::take(&mut position.pending_keys).into();
    let mut in_flight: VecDeque<InFlight> = VecDeque::new();
    let mut puts: FuturesOrdered<LocalBoxFuture<'static, Result<(String, Bytes), StoreError>>> =
        FuturesOrdered::new();
    let mut next_seq = position.next_seq;
    let mut cut_all = false;
    // `claims`: keys were chosen that are not durable yet, so the position
    // must be saved before their PUTs; `unsaved`: the position advanced
    // since it was last saved, which may wait for the next save.
    let mut claims = !reused.is_empty();
    let mut unsaved = false;
    let mut next_tick = Instant::now();
    loop {
        // Cut more chunks and fix their keys while the window has room
        // (one per tick when paced).
        let mut fresh: Vec<(String, Bytes)> = Vec::new();
        stopping |= !matches!(stop.try_recv(), Err(oneshot::error::TryRecvError::Empty));
        while !cut_all && !stopping && in_flight.len() < window && Instant::now() >= next_tick {
            let cut;
            (cutter, cut) = cut_next(cutter, rows_per_chunk).await?;
            if cut.rows == 0 {
                cut_all = true;
                break;
            }
            if cut.too_large {
                return Err(ChunkerError::Fatal(format!(
                    "chunk {next_seq} would be larger than watcher.max_chunk_bytes ({}) \
                     (more than {} bytes after {} of its rows), and Mechanism Y rejects such \
                     chunks unread; lower chunker.rows_per_chunk or raise \
                     watcher.max_chunk_bytes",
                    p.settings.watcher.max_chunk_bytes,
                    cut.body.len(),
                    cut.rows
                )));
            }
            let key = match reused.pop_front() {
                Some(key) => key,
                None => {
                    // Claim the keys of the next `window` chunks in one
                    // write, rather than one write per chunk.
                    let stamp = crate::clock::name_stamp(chrono::Utc::now());
                    reused.extend(
                        (next_seq..next_seq + window as u64)
                            .map(|seq| layout::chunk_key(seq, &stamp)),
                    );
                    claims = true;
                    reused.pop_front().expect("a block of at least one key")
                }
            };
            let first_row = next_seq * rows_per_chunk;
            for short in &cut.oversized {
                report_cut_short(&source, &key, first_row, short);
            }
            in_flight.push_back(InFlight {
                key: key.clone(),
                rows: cut.rows,
                end_offset: cut.end_offset,
            });
            fresh.push((key, Bytes::from(cut.body)));
            next_seq += 1;
            next_tick += interval;
        }
        // One write records both the chunks done and a new block of keys;
        // a key is always durable before its PUT starts. Keys chosen but
        // not cut yet stay pending too: the rest of a block, and a previous
        // life's keys, whose objects may exist already (pacing cuts one per
        // tick). A stop saves the position if it advanced.
        let stopped = stopping && in_flight.is_empty();
        if claims || (stopped && unsaved) {
            position.pending_keys = in_flight
                .iter()
                .map(|c| c.key.clone())
                .chain(reused.iter().cloned())
                .collect();
            position.finished = false;
            p.db("save chunker position", || {
                p.state.save_chunker_position(&links.fence, &position)
            })
            .await?;
            let _ = links
                .watcher
                .send(ChunksClaimed(position.pending_keys.clone()))
                .await;
            claims = false;
            unsaved = false;
        }
        for (key, body) in fresh {
            p.faults.hit("chunker")?;
            crate::pause_points::reached("chunk-put");
            let pipeline = pipeline.clone();
            puts.push_back(
                async move {
                    pipeline
                        .store("write chunk", || pipeline.objects.put(&key, body.clone()))
                        .await?;
                    Ok((key, body))
                }
                .boxed_local(),
            );
        }
        if in_flight.is_empty() {
            if cut_all {
                finish(p, &links.fence, &mut position).await?;
                let _ = links.supervisor.send(MasterChunked).await;
                return Ok(());
            }
            if stopped {
                return Ok(());
            }
        }
        let can_cut = !cut_all && in_flight.len() < window;
        tokio::select! {
            Some(put) = puts.next(), if !puts.is_empty() => {
                let (key, body) = put?;
                // PUTs complete in order here; the position follows them.
                let done = in_flight.pop_front().expect("one per PUT");
                crate::pause_points::reached("chunk-saved");
                let seq = position.next_seq;
                position.next_seq += 1;
                position.next_offset = done.end_offset;
                position.rows_emitted += done.rows;
                position.last_key = Some(done.key.clone());
                // Saved with the next block of claims, at a stop or at the
                // end; a crash before re-PUTs these chunks, identically.
                unsaved = true;
                p.metrics.chunk_written(seq, done.rows);
                debug!(chunk = %done.key, rows = done.rows, "chunk written");
                let _ = links.watcher.send(ChunkWritten { key, body }).await;
            }
            _ = tokio::time::sleep_until(next_tick.into()), if can_cut && !stopping => {}
            _ = &mut stop, if !stopping => stopping = true,
        }
    }
}

/// Logs a master record that its chunk holds as a placeholder: where it is
/// in the master file (byte offset, data row) and in the chunk (line).
fn report_cut_short(source: &str, key: &str, first_row: u64, short: &CutShort) {
    let oversized = &short.oversized;
    let row = first_row + short.row + 1;
    match oversized.cause {
        Cause::UnterminatedQuote => warn!(
            master = %source, offset = short.offset, row, chunk = %key, line = short.line,
            "unterminated quote in the master file at byte {}, data row {row}: {oversized}",
            short.offset
        ),
        Cause::TooLong => warn!(
            master = %source, offset = short.offset, row, chunk = %key, line = short.line,
            "over-long record in the master file at byte {}, data row {row}: {oversized}",
            short.offset
        ),
    }
}

/// A chunk whose PUT has started.
struct InFlight {
    key: String,
    rows: u64,
    end_offset: u64,
}

/// Records that the master file is fully chunked.
async fn finish(
    p: &Wiring,
    fence: &Fence,
    position: &mut ChunkerPosition,
) -> Result<(), ChunkerError> {
    if !position.finished || !position.pending_keys.is_empty() {
        position.finished = true;
        position.pending_keys.clear();
        p.db("save chunker position", || {
            p.state.save_chunker_position(fence, position)
        })
        .await?;
    }
    info!(
        chunks = position.next_seq,
        rows = position.rows_emitted,
        "master file fully chunked"
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const HEADER: &str = "customer,gender,merchant,category,amount\n";
    const ROWS: [&str; 5] = [
        "C1,F,M1,food,1\n",
        "C2,F,M1,food,2\n",
        "C3,M,M1,food,3\n",
        "C4,M,M2,food,4\n",
        "C5,F,M2,food,5\n",
    ];

    fn master() -> Vec<u8> {
        [HEADER]
            .iter()
            .chain(&ROWS)
            .copied()
            .collect::<String>()
            .into_bytes()
    }

    /// The restart constructor's I/O-free half on an in-memory master
    /// file: what the first cut after a (re)start holds.
    fn first_cut(saved: Option<ChunkerPosition>) -> Result<(Chunking, Cut), String> {
        let master = master();
        let (header, data_offset) = master_header(&master[..], "master.csv", 1024)?;
        let position = resume_position(saved, "master.csv", 2, data_offset)?;
        let offset = usize::try_from(position.next_offset).unwrap();
        let reader: Box<dyn std::io::Read + Send> =
            Box::new(std::io::Cursor::new(master[offset..].to_vec()));
        let mut chunking = Chunking::at(
            "master.csv".into(),
            position,
            header,
            reader,
            1024,
            usize::MAX,
        );
        let cut = chunking.cutter.cut(2).map_err(|e| e.to_string())?;
        Ok((chunking, cut))
    }

    #[test]
    fn the_restart_constructor_resumes_at_the_saved_position() {
        // Nothing saved: the first data row, sequence 0.
        let (fresh, cut) = first_cut(None).unwrap();
        assert_eq!(fresh.position.next_seq, 0);
        assert_eq!(cut.body, [HEADER, ROWS[0], ROWS[1]].concat().as_bytes());
        // Two chunks done and the key of the third chosen before a crash:
        // the third chunk holds the next rows, under the same key.
        let after_two = [HEADER, ROWS[0], ROWS[1], ROWS[2], ROWS[3]].concat().len() as u64;
        let saved = ChunkerPosition {
            source: "master.csv".into(),
            rows_per_chunk: 2,
            next_seq: 2,
            next_offset: after_two,
            rows_emitted: 4,
            pending_keys: vec!["stream_chunks/2-x.csv".into()],
            last_key: Some("stream_chunks/1-x.csv".into()),
            finished: false,
        };
        let (resumed, cut) = first_cut(Some(saved.clone())).unwrap();
        assert_eq!(resumed.position.next_seq, 2);
        assert_eq!(resumed.position.pending_keys, saved.pending_keys);
        assert_eq!(cut.rows, 1);
        assert_eq!(cut.body, [HEADER, ROWS[4]].concat().as_bytes());
        assert_eq!(cut.end_offset, master().len() as u64);
        // A position saved for another chunk size is refused, naming it.
        let other = ChunkerPosition {
            rows_per_chunk: 3,
            ..saved
        };
        let refused = first_cut(Some(other)).err().unwrap();
        assert!(refused.contains("rows_per_chunk"), "{refused}");
    }
}
