//! The cluster's coordination and per-key-group state, in PostgreSQL (the
//! only dialect a cluster runs on: its workers meet in one server).
//!
//! Leases are rows of `leases`, with the rules of [`crate::db::lease`]:
//! `worker/OWNER_ID` (a worker's registration: host, pid, start, and the
//! expiry its heartbeats push forward), `key-group/N` and `chunker`. A key
//! group's lease is taken under the same exclusive advisory lock as the
//! ownership lease, so a takeover waits for every fenced commit in flight
//! and every later commit sees the new epoch.
//!
//! A commit ([`PostgresStore::commit_groups`]) runs alone among the
//! cluster's commits (an advisory transaction lock) and, inside its
//! transaction: checks that its worker still holds every key group it
//! writes at the epoch it loaded it with; checks each group's progress
//! against what the worker loaded (or finds this very commit already
//! there); writes the groups' state changes, detections and progress; then
//! records in `processed_chunks` every chunk of the commit that every key
//! group has now applied (the cluster's frontier).

use std::collections::BTreeMap;

use tokio_postgres::Transaction;

use super::{
    Connection, LongNames, NOW_MS, Param, PostgresStore, chunk_params, copy_merged, emitted,
    insert_detections, query_all, query_opt,
};
use crate::db::lease::{self, LeaseRow};
use crate::db::rules::{self, CommitRows, to_i64};
use crate::db::scan;
use crate::db::{
    ChunkRecord, Claimant, CommitBatch, CommitOutcome, DbError, DbResult, DetectionRecord,
    EmittedRow, PairRow,
};

/// The lease of key group `group`.
pub fn group_lease(group: u32) -> String {
    format!("key-group/{group}")
}

/// The lease that registers a worker.
pub fn worker_lease(owner_id: &str) -> String {
    format!("worker/{owner_id}")
}

/// The lease of the cluster's one chunker.
pub const CHUNKER_LEASE: &str = "chunker";

/// One commit of the cluster at a time (the frontier is computed under it).
const CLUSTER_COMMIT_LOCK: i64 = 0x7478_7069_7065_0005;
/// Joining: the cluster row and the key groups' rows are created once.
const JOIN_LOCK: i64 = 0x7478_7069_7065_0006;

/// Workers that start at once take turns at the lookup table: the first
/// reads the file and stores it, the others then read it from the
/// database (a session lock, released by [`LookupTurn::end`], or by the
/// server when the worker dies).
const LOOKUP_TURN_LOCK: i64 = 0x7478_7069_7065_0008;

/// This worker's turn at loading the lookup table (see
/// [`PostgresStore::lookup_turn`]).
pub struct LookupTurn {
    connection: Option<Connection>,
}

impl LookupTurn {
    /// Lets the next worker have its turn.
    pub async fn end(mut self) {
        if let Some(connection) = self.connection.take() {
            let _ = crate::io_runtime::run(async move {
                connection
                    .execute("SELECT pg_advisory_unlock($1)", &[&LOOKUP_TURN_LOCK])
                    .await
                    .map(drop)
                    .map_err(DbError::from)
            })
            .await;
        }
    }
}

impl Drop for LookupTurn {
    fn drop(&mut self) {
        // An error ended the turn early: unlock before the connection goes
        // back to the pool.
        if let Some(connection) = self.connection.take() {
            crate::io_runtime::handle().spawn(async move {
                let _ = connection
                    .execute("SELECT pg_advisory_unlock($1)", &[&LOOKUP_TURN_LOCK])
                    .await;
            });
        }
    }
}

/// What every worker of a cluster must agree on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClusterIdentity {
    pub key_groups: u32,
    pub master: String,
    pub rows_per_chunk: u64,
    pub lookup: String,
}

/// The cluster as one read sees it.
#[derive(Clone, Debug, Default)]
pub struct ClusterView {
    pub now_ms: i64,
    pub key_groups: u32,
    /// Workers whose registration has not expired, by owner id.
    pub workers: Vec<LeaseRow>,
    /// Each key group's lease, if it ever had one.
    pub leases: BTreeMap<u32, LeaseRow>,
    /// Each key group's last applied chunk (-1: none).
    pub progress: BTreeMap<u32, i64>,
    pub chunker: Option<LeaseRow>,
}

impl ClusterView {
    /// Whether `group`'s lease can be taken now.
    pub fn is_free(&self, group: u32) -> bool {
        self.leases
            .get(&group)
            .is_none_or(|row| row.expires_at_ms <= self.now_ms || row.owner_id.is_empty())
    }
}

/// A key group's committed position, as a worker loads it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GroupPosition {
    pub group: u32,
    pub last_seq: i64,
    pub last_chunk: Option<String>,
}

/// A state change of one key group from one chunk.
#[derive(Clone, Copy, Debug)]
pub struct GroupDelta<'a> {
    pub group: u32,
    pub seq: i64,
    pub chunk: &'a str,
    pub blob: &'a [u8],
}

/// Everything one worker commits for consecutive chunks.
#[derive(Clone, Debug)]
pub struct GroupCommit<'a> {
    pub owner_id: &'a str,
    /// Every key group the worker writes under, with its epoch.
    pub fences: &'a [(u32, u64)],
    /// Per key group of `fences`: the progress the database must hold.
    pub expected: &'a [(u32, i64)],
    /// The commit's last chunk: each group of `fences` moves to it.
    pub through_seq: i64,
    pub through_chunk: &'a str,
    pub chunks: &'a [ChunkRecord],
    pub deltas: &'a [GroupDelta<'a>],
    pub detections: &'a [DetectionRecord<'a>],
    /// The key group of each detection.
    pub detection_groups: &'a [u32],
    pub processed_at: &'a str,
}

const SELECT_LEASES: &str = "SELECT name, owner_id, host, pid, epoch, acquired_at_ms, \
                             expires_at_ms FROM leases";

impl PostgresStore {
    /// Creates the cluster's rows, or checks that this worker's settings
    /// are the ones it was created with.
    pub async fn join_cluster(&self, me: &ClusterIdentity) -> DbResult<()> {
        let me = me.clone();
        self.call(move |mut c| async move {
            let tx = c.transaction().await?;
            tx.execute("SELECT pg_advisory_xact_lock($1)", &[&JOIN_LOCK])
                .await?;
            let stored = tx
                .query_opt(
                    "SELECT key_groups, master, rows_per_chunk, lookup FROM cluster WHERE id = 1",
                    &[],
                )
                .await?;
            match stored {
                None if used_alone(&tx).await? => {
                    return Err(DbError::Mismatch(
                        "this database holds the state of a single process \
                         (cluster.enabled = false): a cluster cannot take it over; use a new \
                         database and bucket for a cluster"
                            .to_string(),
                    ));
                }
                Some(row) => {
                    let stored = ClusterIdentity {
                        key_groups: row.get::<_, i32>(0) as u32,
                        master: row.get(1),
                        rows_per_chunk: rules::to_u64(row.get(2)),
                        lookup: row.get(3),
                    };
                    check_identity(&stored, &me).map_err(DbError::Mismatch)?;
                }
                None => {
                    tx.execute(
                        "INSERT INTO cluster (id, key_groups, master, rows_per_chunk, lookup, created_at)
                         VALUES (1, $1, $2, $3, $4, $5)",
                        &[
                            &(me.key_groups as i32),
                            &me.master,
                            &to_i64(me.rows_per_chunk),
                            &me.lookup,
                            &crate::clock::now_ist(),
                        ],
                    )
                    .await?;
                    tx.execute(
                        "INSERT INTO group_progress (key_group)
                         SELECT generate_series(0, $1 - 1) ON CONFLICT DO NOTHING",
                        &[&(me.key_groups as i32)],
                    )
                    .await?;
                }
            }
            tx.commit().await?;
            Ok(())
        })
        .await
    }

    /// Waits for this worker's turn at the lookup table (see
    /// [`LookupTurn`]).
    pub async fn lookup_turn(&self) -> DbResult<LookupTurn> {
        let pool = self.pool.clone();
        let connection = self
            .run(async move {
                let connection = pool.get_owned().await?;
                connection
                    .execute("SELECT pg_advisory_lock($1)", &[&LOOKUP_TURN_LOCK])
                    .await?;
                Ok(connection)
            })
            .await?;
        Ok(LookupTurn {
            connection: Some(connection),
        })
    }

    /// Whether this database belongs to a cluster (a single process must
    /// not run on it).
    pub async fn is_cluster(&self) -> DbResult<bool> {
        self.call(|c| async move {
            Ok(c.query_opt("SELECT 1 FROM cluster WHERE id = 1", &[])
                .await?
                .is_some())
        })
        .await
    }

    /// Forgets the registrations of workers gone for more than `after_ms`
    /// (their rows would otherwise pile up, one per start).
    pub async fn forget_departed_workers(&self, after_ms: u64) -> DbResult<u64> {
        self.call(move |c| async move {
            Ok(c.execute(
                &format!(
                    "DELETE FROM leases WHERE name LIKE 'worker/%' AND expires_at_ms < {NOW_MS} - $1"
                ),
                &[&to_i64(after_ms)],
            )
            .await?)
        })
        .await
    }

    /// Workers, key group leases, progress and the chunker, as of now.
    pub async fn cluster_view(&self) -> DbResult<ClusterView> {
        self.call(|c| async move {
            let c = &*c;
            let now_ms: i64 = c.query_one(&format!("SELECT {NOW_MS}"), &[]).await?.get(0);
            let workers = format!(
                "{SELECT_LEASES} WHERE name LIKE 'worker/%' AND expires_at_ms > $1 ORDER BY owner_id"
            );
            let groups = format!("{SELECT_LEASES} WHERE name LIKE 'key-group/%'");
            let chunker = format!("{SELECT_LEASES} WHERE name = $1");
            let now: [Param; 1] = [&now_ms];
            let chunker_name: [Param; 1] = [&CHUNKER_LEASE];
            let (workers, groups, progress, chunker, count) = futures::try_join!(
                query_all(c, &workers, &now, rules::lease_row),
                query_all(c, &groups, &[], rules::lease_row),
                async { Ok(c.query("SELECT key_group, last_seq FROM group_progress", &[]).await?) },
                query_opt(c, &chunker, &chunker_name, rules::lease_row),
                async {
                    Ok(c.query_opt("SELECT key_groups FROM cluster WHERE id = 1", &[]).await?)
                },
            )?;
            Ok(ClusterView {
                now_ms,
                key_groups: count.map_or(0, |row| row.get::<_, i32>(0) as u32),
                workers: workers
                    .into_iter()
                    .map(|mut w| {
                        w.name = w.name.trim_start_matches("worker/").to_string();
                        w
                    })
                    .collect(),
                leases: groups
                    .into_iter()
                    .filter_map(|row| {
                        let group = row.name.strip_prefix("key-group/")?.parse().ok()?;
                        Some((group, row))
                    })
                    .collect(),
                progress: progress
                    .iter()
                    .map(|row| (row.get::<_, i32>(0) as u32, row.get::<_, i64>(1)))
                    .collect(),
                chunker,
            })
        })
        .await
    }

    /// Takes those of `groups` that are free (never held, expired or
    /// released), each at its next epoch. Returns what it took.
    pub async fn acquire_groups(
        &self,
        me: &Claimant,
        groups: Vec<u32>,
        ttl_ms: u64,
    ) -> DbResult<Vec<(u32, u64)>> {
        let me = me.clone();
        let lock_wait_ms = (ttl_ms / 4).max(50);
        self.call(move |mut c| async move {
            let tx = c.transaction().await?;
            let names: Vec<String> = groups.iter().map(|&g| group_lease(g)).collect();
            tx.execute(
                "INSERT INTO leases (name, owner_id, host, pid, epoch, acquired_at_ms, expires_at_ms)
                 SELECT n, '', '', 0, 0, 0, 0 FROM UNNEST($1::text[]) n
                 ON CONFLICT (name) DO NOTHING",
                &[&names],
            )
            .await?;
            let now: i64 = tx.query_one(&format!("SELECT {NOW_MS}"), &[]).await?.get(0);
            // Rows another worker is taking are skipped, not waited for.
            let free = tx
                .query(
                    &format!(
                        "{SELECT_LEASES} WHERE name = ANY($1) AND (expires_at_ms <= $2 OR owner_id = '')
                         ORDER BY name FOR UPDATE SKIP LOCKED"
                    ),
                    &[&names, &now],
                )
                .await?;
            let mut names = Vec::new();
            let mut epochs = Vec::new();
            let mut taken = Vec::new();
            for row in &free {
                let current = rules::lease_row(row)?;
                let lease::Decision::TakeOver { epoch } = lease::decide(Some(&current), now, None)
                else {
                    continue;
                };
                if let Some(group) = current
                    .name
                    .strip_prefix("key-group/")
                    .and_then(|g| g.parse().ok())
                {
                    taken.push((group, epoch));
                    names.push(current.name);
                    epochs.push(to_i64(epoch));
                }
            }
            if taken.is_empty() {
                return Ok(taken);
            }
            // Waits for the commits in flight under the old epochs (in name
            // order, as commits take them shared), but not for long: a
            // previous owner frozen inside a commit holds them until the
            // server ends its transaction, and this worker's heartbeat must
            // go on meanwhile. It tries again at the next one.
            tx.execute(
                &format!("SET LOCAL lock_timeout = {}", lock_wait_ms),
                &[],
            )
            .await?;
            tx.execute(
                "SELECT pg_advisory_xact_lock(hashtextextended(n, 0))
                 FROM (SELECT n FROM UNNEST($1::text[]) n ORDER BY n) s",
                &[&names],
            )
            .await?;
            tx.execute(
                "UPDATE leases l SET owner_id = $3, host = $4, pid = $5, epoch = t.epoch,
                     acquired_at_ms = $6, expires_at_ms = $7
                 FROM UNNEST($1::text[], $2::bigint[]) AS t(name, epoch)
                 WHERE l.name = t.name",
                &[
                    &names,
                    &epochs,
                    &me.owner_id,
                    &me.host,
                    &i64::from(me.pid),
                    &now,
                    &now.saturating_add(to_i64(ttl_ms)),
                ],
            )
            .await?;
            tx.commit().await?;
            Ok(taken)
        })
        .await
    }

    /// Extends the leases `me` holds among `held`; returns the groups of
    /// `held` it no longer holds at their epochs (lost to another worker).
    pub async fn renew_groups(
        &self,
        me: &Claimant,
        held: &[(u32, u64)],
        ttl_ms: u64,
    ) -> DbResult<Vec<u32>> {
        let owner = me.owner_id.clone();
        let held = held.to_vec();
        self.call(move |c| async move {
            let names: Vec<String> = held.iter().map(|&(g, _)| group_lease(g)).collect();
            let epochs: Vec<i64> = held.iter().map(|&(_, e)| to_i64(e)).collect();
            let renewed = c
                .query(
                    &format!(
                        "UPDATE leases l SET expires_at_ms = {NOW_MS} + $3
                         FROM UNNEST($1::text[], $2::bigint[]) AS h(name, epoch)
                         WHERE l.name = h.name AND l.epoch = h.epoch AND l.owner_id = $4
                         RETURNING l.name"
                    ),
                    &[&names, &epochs, &to_i64(ttl_ms), &owner],
                )
                .await?;
            let renewed: std::collections::HashSet<String> =
                renewed.iter().map(|row| row.get(0)).collect();
            Ok(held
                .iter()
                .filter(|&&(g, _)| !renewed.contains(&group_lease(g)))
                .map(|&(g, _)| g)
                .collect())
        })
        .await
    }

    /// Lets `held` go at once (a graceful stop, or a share to hand over).
    pub async fn release_groups(&self, me: &Claimant, held: &[(u32, u64)]) -> DbResult<()> {
        let owner = me.owner_id.clone();
        let held = held.to_vec();
        self.call(move |c| async move {
            let names: Vec<String> = held.iter().map(|&(g, _)| group_lease(g)).collect();
            let epochs: Vec<i64> = held.iter().map(|&(_, e)| to_i64(e)).collect();
            c.execute(
                "UPDATE leases l SET expires_at_ms = 0
                 FROM UNNEST($1::text[], $2::bigint[]) AS h(name, epoch)
                 WHERE l.name = h.name AND l.epoch = h.epoch AND l.owner_id = $3",
                &[&names, &epochs, &owner],
            )
            .await?;
            Ok(())
        })
        .await
    }

    /// The committed positions of `groups`.
    pub async fn group_positions(&self, groups: &[u32]) -> DbResult<Vec<GroupPosition>> {
        let groups: Vec<i32> = groups.iter().map(|&g| g as i32).collect();
        self.call(move |c| async move {
            let rows = c
                .query(
                    "SELECT key_group, last_seq, last_chunk FROM group_progress
                     WHERE key_group = ANY($1) ORDER BY key_group",
                    &[&groups],
                )
                .await?;
            Ok(rows
                .iter()
                .map(|row| GroupPosition {
                    group: row.get::<_, i32>(0) as u32,
                    last_seq: row.get(1),
                    last_chunk: row.get(2),
                })
                .collect())
        })
        .await
    }

    /// The cumulative state of `groups`: their compacted pairs with their
    /// pending deltas added, from one snapshot.
    pub async fn scan_group_pairs(
        &self,
        groups: &[u32],
        visit: &mut (dyn for<'r> FnMut(PairRow<'r>) + Send),
    ) -> DbResult<()> {
        let groups: Vec<i32> = groups.iter().map(|&g| g as i32).collect();
        self.scan_pair_parts(
            "SELECT delta FROM group_deltas WHERE key_group = ANY($1) ORDER BY key_group, seq",
            SELECT_GROUP_PAIRS,
            Some(groups),
            visit,
        )
        .await
    }

    /// The detections `groups` already emitted.
    pub async fn scan_group_emitted(
        &self,
        groups: &[u32],
        visit: &mut (dyn for<'r> FnMut(EmittedRow<'r>) + Send),
    ) -> DbResult<()> {
        let groups: Vec<i32> = groups.iter().map(|&g| g as i32).collect();
        self.scan_rows(
            SELECT_GROUP_EMITTED,
            Some(groups),
            emitted,
            scan::visit_emitted(visit),
        )
        .await
    }

    /// Commits one worker's chunks for its key groups (see the module
    /// docs); [`DbError::Fenced`] names the groups it lost.
    pub async fn commit_groups(&self, batch: &GroupCommit<'_>) -> DbResult<CommitOutcome> {
        let plain = CommitBatch {
            expected_last: None,
            chunks: batch.chunks,
            deltas: &[],
            detections: batch.detections,
            processed_at: batch.processed_at,
        };
        let Some(mut rows) = CommitRows::of(&plain) else {
            return Ok(CommitOutcome::Committed);
        };
        let mut long_names = LongNames::default();
        let d = &mut rows.detections;
        for name in d.customer.iter_mut().chain(d.merchant.iter_mut()) {
            long_names.replace(name);
        }
        let owned = OwnedCommit {
            owner_id: batch.owner_id.to_string(),
            fences: batch.fences.to_vec(),
            expected: batch.expected.to_vec(),
            through_seq: batch.through_seq,
            through_chunk: batch.through_chunk.to_string(),
            delta_group: batch.deltas.iter().map(|d| d.group as i32).collect(),
            delta_seq: batch.deltas.iter().map(|d| d.seq).collect(),
            delta_chunk: batch.deltas.iter().map(|d| d.chunk.to_string()).collect(),
            delta_blob: batch.deltas.iter().map(|d| d.blob.to_vec()).collect(),
            detection_groups: batch
                .detection_groups
                .iter()
                .map(|&g| Some(g as i32))
                .collect(),
        };
        self.call(move |c| commit_groups(c, owned, rows, long_names))
            .await
    }

    /// Gives the oldest detections of processed chunks, in the order a
    /// single process numbers them (chunk, pattern, merchant, customer),
    /// batches of `size` (and the rest one smaller batch if
    /// `include_partial`), under the chunker's fence.
    pub async fn assign_cluster_batches(
        &self,
        fence: &crate::db::Fence,
        size: u64,
        include_partial: bool,
        stamp: &str,
    ) -> DbResult<u64> {
        let (fence, stamp) = (fence.clone(), stamp.to_string());
        self.call(move |mut c| async move {
            let tx = c.transaction().await?;
            super::check_fence(&tx, &fence).await?;
            tx.execute("SELECT pg_advisory_xact_lock($1)", &[&super::BATCH_LOCK])
                .await?;
            let row = tx
                .query_one(
                    "SELECT (SELECT count(*) FROM detected_patterns d
                             JOIN processed_chunks p ON p.chunk_name = d.chunk_name
                             WHERE d.batch_no IS NULL),
                            (SELECT COALESCE(max(batch_no), 0) FROM detection_batches)",
                    &[],
                )
                .await?;
            let plan = rules::plan_batches(
                rules::to_u64(row.get(0)),
                rules::to_u64(row.get(1)),
                size,
                include_partial,
                &stamp,
            );
            let created_at = crate::clock::now_ist();
            for batch in &plan {
                tx.execute(
                    "UPDATE detected_patterns SET batch_no = $1 WHERE id IN (
                         SELECT d.id FROM detected_patterns d
                         JOIN processed_chunks p ON p.chunk_name = d.chunk_name
                         WHERE d.batch_no IS NULL
                         ORDER BY d.chunk_name COLLATE \"C\", d.patternId,
                                  d.merchant COLLATE \"C\", d.customer COLLATE \"C\"
                         LIMIT $2)",
                    &[&batch.batch_no, &batch.detections],
                )
                .await?;
                tx.execute(
                    crate::db::sql::INSERT_BATCH,
                    &[&batch.batch_no, &batch.key, &batch.detections, &created_at],
                )
                .await?;
            }
            tx.commit().await?;
            Ok(plan.len() as u64)
        })
        .await
    }
}

/// Whether a single process has used this database (it has chunks or a
/// chunker position of its own).
async fn used_alone(tx: &Transaction<'_>) -> DbResult<bool> {
    let row = tx
        .query_one(
            "SELECT EXISTS (SELECT 1 FROM processed_chunks) OR EXISTS (SELECT 1 FROM chunker_position)",
            &[],
        )
        .await?;
    Ok(row.get(0))
}

/// Whether a worker's settings match the cluster's; the message names the
/// setting that differs.
pub fn check_identity(stored: &ClusterIdentity, me: &ClusterIdentity) -> Result<(), String> {
    let differs = |setting: &str, stored: &dyn std::fmt::Display, mine: &dyn std::fmt::Display| {
        Err(format!(
            "this cluster's database was created with {setting} = {stored}, \
             but this worker has {setting} = {mine}; every worker of a cluster must use \
             the same {setting} (start a new database and bucket to change it)"
        ))
    };
    if stored.key_groups != me.key_groups {
        return differs("cluster.key_groups", &stored.key_groups, &me.key_groups);
    }
    if stored.master != me.master {
        return differs(
            "source.transactions",
            &format!("{:?}", stored.master),
            &format!("{:?}", me.master),
        );
    }
    if stored.rows_per_chunk != me.rows_per_chunk {
        return differs(
            "chunker.rows_per_chunk",
            &stored.rows_per_chunk,
            &me.rows_per_chunk,
        );
    }
    if stored.lookup != me.lookup {
        return differs(
            "source.customer_importance",
            &format!("{:?}", stored.lookup),
            &format!("{:?}", me.lookup),
        );
    }
    Ok(())
}

const SELECT_GROUP_PAIRS: &str = concat!(
    "SELECT ",
    name_of!("merchant"),
    ", ",
    name_of!("customer"),
    ", txn_count, amount_cents, gender FROM group_pairs WHERE key_group = ANY($1)"
);

const SELECT_GROUP_EMITTED: &str = concat!(
    "SELECT patternId, ",
    name_of!("merchant"),
    ", ",
    name_of!("customer"),
    " FROM detected_patterns WHERE key_group = ANY($1)"
);

/// A [`GroupCommit`] owned, to run on the I/O runtime.
struct OwnedCommit {
    owner_id: String,
    fences: Vec<(u32, u64)>,
    expected: Vec<(u32, i64)>,
    through_seq: i64,
    through_chunk: String,
    delta_group: Vec<i32>,
    delta_seq: Vec<i64>,
    delta_chunk: Vec<String>,
    delta_blob: Vec<Vec<u8>>,
    detection_groups: Vec<Option<i32>>,
}

/// Refuses the transaction unless the worker holds every group of
/// `fences` at its epoch (each lease's advisory lock held shared, in name
/// order, as a takeover takes it exclusively).
async fn check_group_fences(
    tx: &Transaction<'_>,
    owner: &str,
    fences: &[(u32, u64)],
) -> DbResult<()> {
    let names: Vec<String> = fences.iter().map(|&(g, _)| group_lease(g)).collect();
    tx.execute(
        "SELECT pg_advisory_xact_lock_shared(hashtextextended(n, 0))
         FROM (SELECT n FROM UNNEST($1::text[]) n ORDER BY n) s",
        &[&names],
    )
    .await?;
    let rows = tx
        .query(&format!("{SELECT_LEASES} WHERE name = ANY($1)"), &[&names])
        .await?;
    let held: BTreeMap<String, LeaseRow> = rows
        .iter()
        .map(|row| rules::lease_row(row).map(|l| (l.name.clone(), l)))
        .collect::<DbResult<_>>()?;
    // Lost groups by who holds them now, for one short message.
    let mut lost: BTreeMap<String, Vec<u32>> = BTreeMap::new();
    for &(g, epoch) in fences {
        match held.get(&group_lease(g)) {
            Some(row) if row.owner_id == owner && row.epoch == epoch => {}
            Some(row) if !row.owner_id.is_empty() => lost.entry(row.holder()).or_default().push(g),
            _ => lost.entry("nobody".to_string()).or_default().push(g),
        }
    }
    if lost.is_empty() {
        return Ok(());
    }
    let said: Vec<String> = lost
        .iter()
        .map(|(holder, groups)| format!("{} now held by {holder}", describe_groups(groups)))
        .collect();
    Err(DbError::GroupsLost(format!(
        "{}; commit refused",
        said.join("; ")
    )))
}

/// `key groups 3, 7-9` (of sorted groups).
pub fn describe_groups(groups: &[u32]) -> String {
    let noun = if groups.len() == 1 {
        "key group"
    } else {
        "key groups"
    };
    format!("{noun} {}", ranges(groups))
}

/// Sorted key groups as ranges: `0-41, 84, 90-95` (`none` if empty).
pub fn ranges(groups: &[u32]) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut i = 0;
    while i < groups.len() {
        let (start, mut end) = (groups[i], groups[i]);
        while i + 1 < groups.len() && groups[i + 1] == end + 1 {
            i += 1;
            end = groups[i];
        }
        parts.push(if start == end {
            start.to_string()
        } else {
            format!("{start}-{end}")
        });
        i += 1;
    }
    if parts.is_empty() {
        "none".to_string()
    } else {
        parts.join(", ")
    }
}

async fn commit_groups(
    mut connection: Connection,
    batch: OwnedCommit,
    rows: CommitRows,
    long_names: LongNames,
) -> DbResult<CommitOutcome> {
    let tx = connection.transaction().await?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&CLUSTER_COMMIT_LOCK])
        .await?;
    check_group_fences(&tx, &batch.owner_id, &batch.fences).await?;
    let groups: Vec<i32> = batch.fences.iter().map(|&(g, _)| g as i32).collect();
    let stored: BTreeMap<u32, i64> = tx
        .query(
            "SELECT key_group, last_seq FROM group_progress WHERE key_group = ANY($1)",
            &[&groups],
        )
        .await?
        .iter()
        .map(|row| (row.get::<_, i32>(0) as u32, row.get::<_, i64>(1)))
        .collect();
    let expected: BTreeMap<u32, i64> = batch.expected.iter().copied().collect();
    let after = |g: u32| {
        expected
            .get(&g)
            .copied()
            .unwrap_or(-1)
            .max(batch.through_seq)
    };
    if groups
        .iter()
        .all(|&g| stored.get(&(g as u32)) == Some(&after(g as u32)))
        && groups
            .iter()
            .any(|&g| expected.get(&(g as u32)) != Some(&after(g as u32)))
    {
        return Ok(CommitOutcome::AlreadyCommitted);
    }
    if let Some(&g) = groups
        .iter()
        .find(|&&g| stored.get(&(g as u32)) != expected.get(&(g as u32)))
    {
        return Ok(CommitOutcome::Conflict {
            last: Some(format!(
                "key group {g} at chunk {:?}, expected {:?}",
                stored.get(&(g as u32)),
                expected.get(&(g as u32))
            )),
        });
    }
    if !batch.delta_group.is_empty() {
        tx.execute(
            "INSERT INTO group_deltas (key_group, seq, chunk_name, delta)
             SELECT * FROM UNNEST($1::int[], $2::bigint[], $3::text[], $4::bytea[])",
            &[
                &batch.delta_group,
                &batch.delta_seq,
                &batch.delta_chunk,
                &batch.delta_blob,
            ],
        )
        .await?;
    }
    insert_detections(&tx, &rows, &batch.detection_groups, &long_names).await?;
    tx.execute(
        "UPDATE group_progress SET last_seq = $2, last_chunk = $3
         WHERE key_group = ANY($1) AND last_seq < $2",
        &[&groups, &batch.through_seq, &batch.through_chunk],
    )
    .await?;
    let frontier: Option<i64> = tx
        .query_one("SELECT min(last_seq) FROM group_progress", &[])
        .await?
        .get(0);
    let frontier = frontier.unwrap_or(-1);
    let [n, s, st, r, b, d, re, at] = chunk_params(&rows);
    let params: [Param; 9] = [n, s, st, r, b, d, re, at, &frontier];
    tx.execute(INSERT_PROCESSED_UP_TO, &params).await?;
    crate::pause_points::reached("commit");
    tx.commit().await?;
    Ok(CommitOutcome::Committed)
}

/// The commit's chunks that every key group has applied (`seq <= $9`), with
/// their detections counted over every group, unless recorded already.
const INSERT_PROCESSED_UP_TO: &str = concat!(
    "INSERT INTO processed_chunks (chunk_name, seq, status, rows, bad_rows, detections, reason, processed_at)
SELECT c.name, c.seq, c.status, c.rows, c.bad_rows,
       (SELECT count(*) FROM detected_patterns d WHERE d.chunk_name = c.name AND d.key_group IS NOT NULL),
       c.reason, $8
FROM ",
    commit_chunks!(),
    "
WHERE c.seq <= $9
ON CONFLICT (chunk_name) DO NOTHING"
);

impl PostgresStore {
    /// Deltas waiting to be compacted in `groups`.
    pub async fn pending_group_deltas(&self, groups: &[u32]) -> DbResult<u64> {
        let groups: Vec<i32> = groups.iter().map(|&g| g as i32).collect();
        self.call(move |c| async move {
            let row = c
                .query_one(
                    "SELECT count(*) FROM group_deltas WHERE key_group = ANY($1)",
                    &[&groups],
                )
                .await?;
            Ok(rules::to_u64(row.get(0)))
        })
        .await
    }

    /// Folds up to `max_deltas` of the oldest deltas of the key groups
    /// `fences` into `group_pairs` and deletes them, in one transaction
    /// fenced like a commit: only a group's owner compacts it. Returns how
    /// many deltas it folded.
    pub async fn compact_groups(
        &self,
        owner_id: &str,
        fences: &[(u32, u64)],
        max_deltas: usize,
    ) -> DbResult<u64> {
        let (owner, fences) = (owner_id.to_string(), fences.to_vec());
        self.call(move |c| compact_groups(c, owner, fences, max_deltas))
            .await
    }
}

async fn compact_groups(
    mut connection: Connection,
    owner: String,
    fences: Vec<(u32, u64)>,
    max_deltas: usize,
) -> DbResult<u64> {
    let tx = connection.transaction().await?;
    check_group_fences(&tx, &owner, &fences).await?;
    let groups: Vec<i32> = fences.iter().map(|&(g, _)| g as i32).collect();
    let rows = tx
        .query(
            "SELECT key_group, seq, delta FROM group_deltas WHERE key_group = ANY($1)
             ORDER BY key_group, seq LIMIT $2",
            &[&groups, &(max_deltas as i64)],
        )
        .await?;
    if rows.is_empty() {
        return Ok(0);
    }
    let mut merged: BTreeMap<i32, crate::db::delta::Merged> = BTreeMap::new();
    let (mut folded_groups, mut folded_seqs) = (Vec::new(), Vec::new());
    for row in &rows {
        let group: i32 = row.get(0);
        merged
            .entry(group)
            .or_default()
            .add(row.get::<_, &[u8]>(2))?;
        folded_groups.push(group);
        folded_seqs.push(row.get::<_, i64>(1));
    }
    tx.batch_execute(
        "CREATE TEMP TABLE IF NOT EXISTS group_pair_delta (
             key_group INTEGER, merchant TEXT, customer TEXT, txn_count BIGINT,
             amount_cents BIGINT, gender TEXT
         ) ON COMMIT DELETE ROWS",
    )
    .await?;
    copy_merged(
        &tx,
        "COPY group_pair_delta (key_group, merchant, customer, txn_count, amount_cents, gender) \
         FROM STDIN (FORMAT binary)",
        &merged
            .iter()
            .map(|(group, pairs)| (Some(*group), pairs))
            .collect::<Vec<_>>(),
    )
    .await?;
    tx.execute(
        "INSERT INTO group_pairs (key_group, merchant, customer, txn_count, amount_cents, gender)
         SELECT key_group, merchant, customer, txn_count, amount_cents, gender FROM group_pair_delta
         ON CONFLICT (key_group, merchant, customer) DO UPDATE SET
             txn_count = group_pairs.txn_count + EXCLUDED.txn_count,
             amount_cents = CASE
                 WHEN group_pairs.amount_cents > 9223372036854775807 - EXCLUDED.amount_cents
                 THEN 9223372036854775807
                 ELSE group_pairs.amount_cents + EXCLUDED.amount_cents
             END",
        &[],
    )
    .await?;
    tx.execute(
        "DELETE FROM group_deltas d USING UNNEST($1::int[], $2::bigint[]) AS f(key_group, seq)
         WHERE d.key_group = f.key_group AND d.seq = f.seq",
        &[&folded_groups, &folded_seqs],
    )
    .await?;
    tx.commit().await?;
    Ok(rows.len() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn identity() -> ClusterIdentity {
        ClusterIdentity {
            key_groups: 128,
            master: "s3://b/t.csv".into(),
            rows_per_chunk: 10_000,
            lookup: "s3://b/n.csv".into(),
        }
    }

    #[test]
    fn a_worker_with_other_settings_is_refused_naming_the_setting() {
        assert!(check_identity(&identity(), &identity()).is_ok());
        type Change = fn(&mut ClusterIdentity);
        let cases: [(Change, &str); 4] = [
            (|i| i.key_groups = 64, "cluster.key_groups"),
            (|i| i.master = "other.csv".into(), "source.transactions"),
            (|i| i.rows_per_chunk = 5, "chunker.rows_per_chunk"),
            (
                |i| i.lookup = "other.csv".into(),
                "source.customer_importance",
            ),
        ];
        for (change, setting) in cases {
            let mut me = identity();
            change(&mut me);
            let message = check_identity(&identity(), &me).unwrap_err();
            assert!(message.contains(setting), "{message}");
        }
    }

    #[test]
    fn groups_print_as_ranges() {
        assert_eq!(ranges(&[]), "none");
        assert_eq!(ranges(&[0, 1, 2, 5, 7, 8]), "0-2, 5, 7-8");
        assert_eq!(describe_groups(&[3]), "key group 3");
        assert_eq!(describe_groups(&[3, 4]), "key groups 3-4");
    }
}
