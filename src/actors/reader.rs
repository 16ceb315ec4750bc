//! ReaderActor: reads and parses announced chunks, several at once.
//!
//! For each [`Fetch`] it GETs the chunk (or takes the body the chunker
//! handed over), rejects it unread if it is larger than
//! `watcher.max_chunk_bytes` (a server-side copy to `quarantine/`), parses
//! it on the blocking pool, writes the quarantine object of its bad rows
//! (before the chunk can commit, so a committed chunk always has one),
//! encodes its state change for the database, and sends the result to the
//! [`PairTableActor`] as [`Parsed`]. Chunks finish out of order; the pair
//! table puts them back in order by their announcement number.
//!
//! ```text
//! S3WatcherActor ──Fetch──► ReaderActor ──GET──► parse (blocking pool) ──Parsed──► PairTableActor
//! ```
//!
//! How many chunks are read at once is bounded by the watcher's permits
//! (`watcher.max_in_flight`), which travel with every chunk.

use std::sync::Arc;
use std::time::Instant;

use super::watcher::InFlight;
use actix::prelude::*;
use bytes::Bytes;
use futures::future::LocalBoxFuture;
use tracing::info;

use super::committed::{Reshare, Share, Start};
use super::pair_table::{PairTableActor, Parsed};
use super::supervised::{Behaviour, Failure, Group, Mailbox, Supervised};
use super::wiring::{Wiring, contain_async};
use crate::detect::ChunkDelta;
use crate::input::transactions::{BadRow, ChunkParser, ParsedChunk, RejectReason};
use crate::layout;
use crate::store::{Sized, StoreError};

pub type ReaderActor = Supervised<Reader>;

/// The reader's wiring.
pub struct Reader {
    pub wiring: Arc<Wiring>,
    pub pair_table: Mailbox<PairTableActor>,
}

/// The generation the reader works in.
pub struct ReaderState {
    generation: u64,
    /// In a cluster: the key groups whose rows are kept.
    share: Option<Arc<Share>>,
}

impl Behaviour for Reader {
    type State = ReaderState;
    const GROUP: Group = Group::MechanismY;

    fn pre_start(&self) -> LocalBoxFuture<'static, Result<Option<ReaderState>, Failure>> {
        Box::pin(async { Ok(None) })
    }
}

/// Read and parse one announced chunk.
#[derive(Message)]
#[rtype(result = "()")]
pub struct Fetch {
    pub generation: u64,
    /// Announcement number in the generation.
    pub number: u64,
    pub key: Arc<str>,
    /// The chunk announced before this one.
    pub previous: Option<Arc<str>>,
    pub listed_at: Instant,
    /// The body, if the chunker handed it over.
    pub body: Option<Bytes>,
    pub permit: InFlight,
}

/// A chunk after reading and parsing.
pub struct Content {
    pub chunk: ParsedChunk,
    /// The chunk's state change, encoded for the database (`db::delta`);
    /// empty in a cluster, which stores it per key group (`groups`).
    pub encoded: Bytes,
    /// In a cluster: the state change of each key group the generation
    /// applies this chunk to, encoded.
    pub groups: Vec<(u32, Bytes)>,
}

/// Keeps the rows of the key groups `share` applies chunk `seq` to, and
/// encodes each group's part: memory and state follow ownership. Every
/// worker parses every chunk; only its own groups' pairs go further.
fn keep_share(chunk: &mut ParsedChunk, share: &Share, seq: i64) -> Vec<(u32, Bytes)> {
    let merchants: Vec<&str> = chunk.names.merchants().collect();
    let group_of: Vec<u32> = merchants.iter().map(|m| share.group_of(m)).collect();
    // Per group: its pairs, its merchants renumbered, its names.
    #[derive(Default)]
    struct Part<'a> {
        delta: ChunkDelta,
        merchants: Vec<&'a str>,
        local: rustc_hash::FxHashMap<u32, u32>,
        pairs: Vec<(u32, &'a str)>,
    }
    let mut parts: std::collections::BTreeMap<u32, Part<'_>> = Default::default();
    let mut kept = ChunkDelta::default();
    for (pair, (merchant, customer)) in chunk.delta.pairs.iter().zip(chunk.names.pairs()) {
        let group = group_of[merchant as usize];
        if !share.applies(group, seq) {
            continue;
        }
        kept.pairs.push(*pair);
        let part = parts.entry(group).or_default();
        let next = part.merchants.len() as u32;
        let local = *part.local.entry(merchant).or_insert_with(|| {
            part.merchants.push(merchants[merchant as usize]);
            next
        });
        part.delta.pairs.push(*pair);
        part.pairs.push((local, customer));
    }
    let encoded = parts
        .into_iter()
        .map(|(group, part)| {
            let blob = crate::db::delta::encode_named(&part.delta, part.merchants, part.pairs);
            (group, Bytes::from(blob))
        })
        .collect();
    chunk.delta = kept;
    encoded
}

impl Handler<Start> for ReaderActor {
    type Result = ();

    fn handle(&mut self, Start(committed): Start, _ctx: &mut Context<Self>) {
        if committed.supersedes(self.state.as_ref().map(|s| s.generation)) {
            self.set_state(ReaderState {
                generation: committed.generation,
                share: committed.share.clone(),
            });
        }
    }
}

impl Handler<Reshare> for ReaderActor {
    type Result = ();

    fn handle(&mut self, msg: Reshare, _ctx: &mut Context<Self>) {
        if let Some(state) = self
            .state
            .as_mut()
            .filter(|s| s.generation == msg.generation)
        {
            state.share = msg.share(&state.share);
        }
    }
}

impl Handler<Fetch> for ReaderActor {
    type Result = ();

    fn handle(&mut self, fetch: Fetch, ctx: &mut Context<Self>) {
        let Some(share) = self
            .state
            .as_ref()
            .filter(|s| s.generation == fetch.generation)
            .map(|s| s.share.clone())
        else {
            return; // an older generation's: its permit goes with it
        };
        let wiring = self.behaviour.wiring.clone();
        let pair_table = self.behaviour.pair_table.clone();
        let work = async move {
            let content = read(&wiring, &fetch.key, fetch.body, share).await?;
            let parsed = Parsed {
                generation: fetch.generation,
                number: fetch.number,
                key: fetch.key,
                previous: fetch.previous,
                listed_at: fetch.listed_at,
                content,
                permit: fetch.permit,
            };
            // A closed mailbox means the pair table is restarting: a new
            // generation follows, and this chunk is read again.
            let _ = pair_table.send(parsed).await;
            Ok::<_, StoreError>(())
        };
        ctx.spawn(actix::fut::wrap_future::<_, Self>(contain_async(work)).map(
            |outcome, act, ctx| match outcome {
                Ok(Ok(())) => {}
                Ok(Err(error)) => act.fail(ctx, Failure::Restart(error.to_string())),
                Err(panic) => act.fail(ctx, Failure::Restart(panic)),
            },
        ));
    }
}

/// GETs and parses a chunk, and writes its quarantine object (before the
/// chunk can commit, so a committed chunk always has one).
async fn read(
    p: &Wiring,
    key: &str,
    handed_over: Option<Bytes>,
    share: Option<Arc<Share>>,
) -> Result<Result<Content, RejectReason>, StoreError> {
    let seq = crate::layout::chunk_seq(key).map_or(i64::MAX, |seq| seq as i64);
    crate::pause_points::reached("chunk-fetch");
    let limit = p.settings.watcher.max_chunk_bytes;
    let body = match handed_over {
        Some(body) => Some(Sized::Body(body)),
        None => {
            p.store("read chunk", || p.objects.get_at_most(key, limit))
                .await?
        }
    };
    let content = match body {
        None => Err(RejectReason::Vanished),
        Some(Sized::TooLarge { size }) => {
            // Quarantined by a copy inside the store: never in memory.
            let target = layout::rejected_key(key);
            p.store("quarantine chunk", || p.objects.copy(key, &target))
                .await?;
            Err(RejectReason::TooLarge { size, limit })
        }
        Some(Sized::Body(body)) => {
            // Parsing is the heaviest step: it runs on the blocking pool so
            // that several chunks parse at once, beside this thread.
            let (names, data) = (p.names.clone(), body.clone());
            let max_record_bytes = p.settings.input.max_record_bytes;
            let parsed = tokio::task::spawn_blocking(move || {
                ChunkParser::new(max_record_bytes)
                    .parse(&data, &names)
                    .map(|mut chunk| {
                        let (encoded, groups) = match share {
                            Some(share) => (Bytes::new(), keep_share(&mut chunk, &share, seq)),
                            None => {
                                let encoded = crate::db::delta::encode_named(
                                    &chunk.delta,
                                    chunk.names.merchants(),
                                    chunk.names.pairs(),
                                );
                                (Bytes::from(encoded), Vec::new())
                            }
                        };
                        // The names served the encoding only.
                        chunk.names = Default::default();
                        Content {
                            chunk,
                            encoded,
                            groups,
                        }
                    })
            })
            .await
            .unwrap_or_else(|error| std::panic::resume_unwind(error.into_panic()));
            match &parsed {
                Ok(Content { chunk, .. }) if !chunk.bad_rows.is_empty() => {
                    let report = Bytes::from(bad_rows_report(&chunk.bad_rows));
                    let target = layout::bad_rows_key(key);
                    p.store("write quarantine", || {
                        p.objects.put(&target, report.clone())
                    })
                    .await?;
                    info!(chunk = ?key, bad_rows = chunk.bad_rows.len(), quarantine = ?target,
                          "bad rows quarantined");
                }
                Err(_) => {
                    let target = layout::rejected_key(key);
                    p.store("write quarantine", || p.objects.put(&target, body.clone()))
                        .await?;
                }
                Ok(_) => {}
            }
            parsed
        }
    };
    Ok(content)
}

/// The quarantine object of a chunk's bad rows: `line,reason,raw_line`,
/// raw lines byte for byte.
fn bad_rows_report(bad_rows: &[BadRow]) -> Vec<u8> {
    let mut writer = csv::Writer::from_writer(Vec::new());
    let write = |writer: &mut csv::Writer<Vec<u8>>| -> csv::Result<()> {
        writer.write_record(["line", "reason", "raw_line"])?;
        for row in bad_rows {
            writer.write_record([
                row.line.to_string().as_bytes(),
                row.reason.to_string().as_bytes(),
                &row.raw,
            ])?;
        }
        writer.flush()?;
        Ok(())
    };
    write(&mut writer).expect("writing CSV to memory cannot fail");
    writer.into_inner().expect("flushed above")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::input::transactions::BadRowReason;
    use crate::names::Names;

    /// The reader encodes from the chunk's own names; the encoding is the
    /// one the process-wide ids give (which the state store's tests use).
    #[test]
    fn a_parsed_chunk_encodes_as_its_ids_do() {
        let chunk = "step,customer,age,gender,zipcodeOri,merchant,zipMerchant,category,amount,fraud\n\
                     0,'C1','4','F','1','M1','1','es_food',1.50,0\n\
                     0,'C2','4','M','1','M2','1','es_food',2,0\n\
                     0,'C1','4','F','1','M2','1','es_food',3,0\n\
                     0,'C1','4','F','1','M1','1','es_food',4,0\n";
        let names = Names::new();
        // Ids that do not follow the chunk's order of first appearance.
        names.customer("C2");
        names.merchant("M2");
        let parsed = ChunkParser::new(1 << 20)
            .parse(chunk.as_bytes(), &names)
            .unwrap();
        assert_eq!(parsed.delta.pairs.len(), 3);
        assert_eq!(
            crate::db::delta::encode_named(
                &parsed.delta,
                parsed.names.merchants(),
                parsed.names.pairs()
            ),
            crate::db::delta::encode(&parsed.delta, &names)
        );
    }

    /// A cluster worker keeps the pairs of the groups it applies the chunk
    /// to, and encodes each group's part so that the parts together are
    /// exactly what it kept.
    #[test]
    fn a_share_keeps_its_groups_rows_and_encodes_each_groups_part() {
        use crate::actors::committed::GroupStart;
        let mut chunk = String::from(
            "step,customer,age,gender,zipcodeOri,merchant,zipMerchant,category,amount,fraud\n",
        );
        for m in 0..40 {
            for c in 0..3 {
                chunk.push_str(&format!(
                    "0,'C{c}','4','F','1','M{m}','1','es_food',1.25,0\n"
                ));
            }
        }
        let names = Names::new();
        let parsed = ChunkParser::new(1 << 20)
            .parse(chunk.as_bytes(), &names)
            .unwrap();
        let key_groups = 8;
        // Group 0 applies chunk 5; group 1 has applied it already; the
        // others belong to other workers.
        let share = Share {
            key_groups,
            owner_id: "me".into(),
            groups: [
                (
                    0,
                    GroupStart {
                        epoch: 1,
                        last_seq: 4,
                    },
                ),
                (
                    1,
                    GroupStart {
                        epoch: 1,
                        last_seq: 5,
                    },
                ),
            ]
            .into_iter()
            .collect(),
        };
        let mut kept = parsed.clone();
        let parts = keep_share(&mut kept, &share, 5);
        let group_of = |m: &str| crate::detect::key_group::key_group(m, key_groups);
        // As the parser spells them (quotes and all, or not).
        let expected: Vec<String> = parsed
            .names
            .merchants()
            .filter(|m| group_of(m) == 0)
            .map(str::to_string)
            .collect();
        assert!(!expected.is_empty());
        assert_eq!(kept.delta.pairs.len(), expected.len() * 3);
        assert!(parts.iter().all(|(g, _)| *g == 0), "only group 0 applies");
        let mut decoded = Vec::new();
        for (_, blob) in &parts {
            crate::db::delta::for_each_pair(blob, &mut |row| {
                decoded.push((
                    row.merchant.to_string(),
                    row.customer.to_string(),
                    row.count,
                ))
            })
            .unwrap();
        }
        let mut merchants: Vec<String> = decoded.iter().map(|d| d.0.clone()).collect();
        merchants.dedup();
        assert_eq!(merchants, expected);
        assert!(decoded.iter().all(|d| d.2 == 1));
        // The rows counted stay the chunk's.
        assert_eq!(kept.rows, 120);
    }

    #[test]
    fn quarantine_report_keeps_raw_bytes() {
        let report = bad_rows_report(&[BadRow {
            line: 7,
            reason: BadRowReason::InvalidUtf8,
            raw: b"a,\"b\xff".to_vec(),
        }]);
        assert_eq!(
            report,
            b"line,reason,raw_line\n7,invalid UTF-8,\"a,\"\"b\xff\"\n"
        );
    }
}
