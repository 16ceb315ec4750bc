//! The running topology: which stages exist and how they are started.
//!
//! Every stage runs on its own arbiter (thread) under supervision
//! ([`Spawner`]). Mechanism Y's stages make a [`Lane`]: the worker's main
//! lane always, and in a cluster a catch-up lane for a while when key
//! groups are taken far behind ([`super::resharing`]). The chunker and the
//! batch writer run once per process, or in a cluster only in the worker
//! that holds the chunker lease ([`Topology::start_leader`]).

use std::sync::Arc;

use actix::prelude::*;
use futures::future::join_all;

use super::SupervisorActor;
use crate::actors::batch_writer::{BatchWriter, BatchWriterActor};
use crate::actors::chunker::{Chunker, ChunkerActor};
use crate::actors::committed::{Committed, Start};
use crate::actors::compactor::{Compactor, CompactorActor};
use crate::actors::detector::{Detector, DetectorActor};
use crate::actors::pair_table::{PairTable, PairTableActor};
use crate::actors::reader::{Reader, ReaderActor};
use crate::actors::supervised::{Mailbox, Restarted, Retire, Supervised};
use crate::actors::tracker::{Tracker, TrackerActor};
use crate::actors::watcher::{S3WatcherActor, Watcher};
use crate::actors::wiring::Wiring;
use crate::db::Fence;
use crate::detect::parts;

/// Addresses of the running topology. A cluster's worker runs the chunker
/// and the batch writer only while it holds the chunker lease; its
/// compactor compacts its own key groups.
pub struct Topology {
    pub chunker: Option<Mailbox<ChunkerActor>>,
    /// Mechanism Y's stages.
    pub y: Lane,
    pub batch_writer: Option<Mailbox<BatchWriterActor>>,
    pub compactor: Mailbox<CompactorActor>,
}

/// Mechanism Y's stages (watcher, reader, pair table, detectors, tracker)
/// of one lane: the worker's main lane, or a cluster worker's catch-up
/// lane for key groups taken over far behind (its stages' names start
/// with [`CATCH_UP`]).
pub struct Lane {
    pub watcher: Mailbox<S3WatcherActor>,
    pub reader: Mailbox<ReaderActor>,
    pub pair_table: Mailbox<PairTableActor>,
    pub detectors: Vec<Mailbox<DetectorActor>>,
    pub tracker: Mailbox<TrackerActor>,
}

/// The names of a catch-up lane's stages start with this.
pub const CATCH_UP: &str = "catch-up/";

impl Lane {
    /// Starts the stages, downstream first, named with `prefix`.
    pub(super) fn start(
        spawner: &Spawner,
        wiring: &Arc<Wiring>,
        supervisor: &Addr<SupervisorActor>,
        prefix: &str,
        batch_writer: Option<Mailbox<BatchWriterActor>>,
        compactor: &Mailbox<CompactorActor>,
    ) -> Lane {
        let w = || wiring.clone();
        let name = |stage: &str| format!("{prefix}{stage}");
        let tracker = spawner.spawn(
            &name("tracker"),
            Tracker {
                wiring: w(),
                batch_writer,
                compactor: compactor.clone(),
                supervisor: supervisor.clone(),
            },
        );
        let detectors: Vec<_> = parts(shards(&wiring.settings))
            .map(|(pattern, shard)| {
                spawner.spawn(
                    &name(&Detector::name(pattern, shard)),
                    Detector {
                        wiring: w(),
                        pattern,
                        shard,
                    },
                )
            })
            .collect();
        let pair_table = spawner.spawn(
            &name("pair-table"),
            PairTable {
                wiring: w(),
                detectors: detectors.clone(),
                tracker: tracker.clone(),
                supervisor: supervisor.clone(),
                main_lane: prefix.is_empty(),
            },
        );
        let reader = spawner.spawn(
            &name("reader"),
            Reader {
                wiring: w(),
                pair_table: pair_table.clone(),
            },
        );
        let watcher = spawner.spawn(
            &name("watcher"),
            Watcher {
                wiring: w(),
                reader: reader.clone(),
            },
        );
        Lane {
            watcher,
            reader,
            pair_table,
            detectors,
            tracker,
        }
    }

    /// Hands a generation's snapshot to every stage, downstream first, so
    /// each is ready before work reaches it; a cluster worker's compactor
    /// (given for the main lane) learns the generation's key groups too.
    pub(super) fn start_generation(
        &self,
        committed: Arc<Committed>,
        compactor: Option<&Mailbox<CompactorActor>>,
    ) -> impl Future<Output = ()> + use<> {
        let tracker = self.tracker.send(Start(committed.clone()));
        let compactor = compactor
            .filter(|_| committed.share.is_some())
            .map(|c| c.send(Start(committed.clone())));
        let detectors: Vec<_> = self
            .detectors
            .iter()
            .map(|d| d.send(Start(committed.clone())))
            .collect();
        let (pair_table, reader, watcher) = (
            self.pair_table.clone(),
            self.reader.clone(),
            self.watcher.clone(),
        );
        async move {
            // A member that is restarting misses its Start; its own restart
            // starts the next generation.
            let _ = tracker.await;
            if let Some(compactor) = compactor {
                let _ = compactor.await;
            }
            join_all(detectors).await;
            let _ = pair_table.send(Start(committed.clone())).await;
            let _ = reader.send(Start(committed.clone())).await;
            let _ = watcher.send(Start(committed)).await;
        }
    }

    /// Stops every stage for good (a catch-up lane that is done).
    pub(super) fn retire(&self) -> impl Future<Output = ()> + use<> {
        let (watcher, reader, pair_table, detectors, tracker) = (
            self.watcher.clone(),
            self.reader.clone(),
            self.pair_table.clone(),
            self.detectors.clone(),
            self.tracker.clone(),
        );
        async move {
            let _ = watcher.send(Retire).await;
            let _ = reader.send(Retire).await;
            let _ = pair_table.send(Retire).await;
            join_all(detectors.iter().map(|d| d.send(Retire))).await;
            let _ = tracker.send(Retire).await;
        }
    }
}

impl Topology {
    /// Starts every stage on its own arbiter (thread), downstream first.
    pub(super) fn start(wiring: &Arc<Wiring>, supervisor: Addr<SupervisorActor>) -> Topology {
        let spawner = Spawner::new(wiring, &supervisor);
        let single = wiring.cluster.is_none();
        let batch_writer = single.then(|| {
            spawner.spawn(
                "batch-writer",
                BatchWriter {
                    wiring: wiring.clone(),
                    fence: wiring.fence.clone(),
                },
            )
        });
        let compactor = spawner.spawn(
            "compactor",
            Compactor {
                wiring: wiring.clone(),
            },
        );
        let y = Lane::start(
            &spawner,
            wiring,
            &supervisor,
            "",
            batch_writer.clone(),
            &compactor,
        );
        let chunker = single.then(|| {
            spawner.spawn(
                "chunker",
                Chunker {
                    wiring: wiring.clone(),
                    fence: wiring.fence.clone(),
                    watcher: y.watcher.clone(),
                    supervisor: supervisor.clone(),
                },
            )
        });
        let mut edges = vec![
            ("chunker", "watcher".to_string()),
            ("watcher", "reader".to_string()),
            ("reader", "pair-table".to_string()),
        ];
        for (pattern, shard) in parts(shards(&wiring.settings)) {
            edges.push(("pair-table", Detector::name(pattern, shard)));
        }
        edges.push(("pair-table", "tracker".to_string()));
        if single {
            edges.push(("tracker", "batch-writer".to_string()));
        }
        edges.push(("tracker", "compactor".to_string()));
        wiring.metrics.health.set_edges(
            edges
                .into_iter()
                .map(|(from, to)| (from.to_string(), to))
                .collect(),
        );
        Topology {
            chunker,
            y,
            batch_writer,
            compactor,
        }
    }

    /// Hands a generation's snapshot to every member of Mechanism Y.
    pub(super) fn start_mechanism_y(
        &self,
        committed: Arc<Committed>,
    ) -> impl Future<Output = ()> + use<> {
        self.y.start_generation(committed, Some(&self.compactor))
    }

    /// A cluster worker that took the chunker lease starts the chunker and
    /// the batch writer, both writing under that lease.
    pub(super) fn start_leader(
        &mut self,
        wiring: &Arc<Wiring>,
        supervisor: Addr<SupervisorActor>,
        fence: Fence,
    ) {
        let spawner = Spawner::new(wiring, &supervisor);
        self.batch_writer = Some(spawner.spawn(
            "batch-writer",
            BatchWriter {
                wiring: wiring.clone(),
                fence: fence.clone(),
            },
        ));
        self.chunker = Some(spawner.spawn(
            "chunker",
            Chunker {
                wiring: wiring.clone(),
                fence,
                watcher: self.y.watcher.clone(),
                supervisor,
            },
        ));
    }

    /// The name of a stage that stopped for good, if one did.
    pub(super) fn dead_stage(&self, wiring: &Wiring) -> Option<String> {
        let alive = |stage: Option<bool>| stage.unwrap_or(true);
        let named = [
            (
                "chunker",
                alive(self.chunker.as_ref().map(Mailbox::connected)),
            ),
            ("watcher", self.y.watcher.connected()),
            ("reader", self.y.reader.connected()),
            ("pair-table", self.y.pair_table.connected()),
            ("tracker", self.y.tracker.connected()),
            (
                "batch-writer",
                alive(self.batch_writer.as_ref().map(Mailbox::connected)),
            ),
            ("compactor", self.compactor.connected()),
        ];
        if let Some((name, _)) = named.iter().find(|(_, alive)| !alive) {
            return Some(name.to_string());
        }
        self.y
            .detectors
            .iter()
            .zip(parts(shards(&wiring.settings)))
            .find(|(d, _)| !d.connected())
            .map(|(_, (pattern, shard))| Detector::name(pattern, shard))
    }
}

/// Starts stages under supervision, each on its own arbiter, with the
/// configured mailbox capacity, reporting restarts to the supervisor.
pub(super) struct Spawner {
    capacity: usize,
    supervision: Arc<crate::actors::supervised::Supervision>,
    restarted: Recipient<Restarted>,
}

impl Spawner {
    pub(super) fn new(wiring: &Wiring, supervisor: &Addr<SupervisorActor>) -> Spawner {
        Spawner {
            capacity: wiring.settings.actors.mailbox_capacity,
            supervision: wiring.supervision.clone(),
            restarted: supervisor.clone().recipient(),
        }
    }

    pub(super) fn spawn<B: crate::actors::supervised::Behaviour + Send>(
        &self,
        name: &str,
        behaviour: B,
    ) -> Mailbox<Supervised<B>> {
        Supervised::start(
            name.to_string(),
            behaviour,
            self.capacity,
            self.supervision.clone(),
            self.restarted.clone(),
        )
    }
}

/// Detector shards per pattern, from the configuration.
pub(super) fn shards(settings: &crate::config::Settings) -> [u32; 3] {
    let d = &settings.detectors;
    [d.patid1, d.patid2, d.patid3]
}
