//! Loads the CustomerImportance file into the database once, and builds the
//! in-memory weight table.
//!
//! The file is fingerprinted (xxh3 of its bytes). Starting again with the
//! same file skips the load; a different file is refused once chunks have
//! been processed, because it would change what earlier chunks meant.
//!
//! Three steps: [`check`] (a refused file must stop the process before
//! anything is written) and [`Plan::read`] (the weight table, which
//! Mechanism Y needs) run before any actor starts; [`Pending::store`]
//! writes a newly read file into the database while the chunker and
//! Mechanism Y start, and Mechanism Y's first generation waits for it, so
//! that no commit exists without the lookup table it was made with.

use std::io::Read;
use std::sync::Arc;

use anyhow::Context as _;
use tracing::info;
use xxhash_rust::xxh3::Xxh3;

use crate::config::Settings;
use crate::db::{Fence, LookupSource, StateStore, WeightRow};
use crate::detect::WeightTable;
use crate::input::importance::{ImportanceRow, check_header, read_importance};
use crate::names::Names;
use crate::store::source::Sources;

/// Hashes everything read through it.
struct Fingerprinting<R> {
    inner: R,
    hasher: Xxh3,
    bytes: u64,
}

impl<R: Read> Read for Fingerprinting<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        self.bytes += n as u64;
        Ok(n)
    }
}

impl<R> Fingerprinting<R> {
    fn new(inner: R) -> Self {
        Fingerprinting {
            inner,
            hasher: Xxh3::new(),
            bytes: 0,
        }
    }

    fn fingerprint(&self) -> String {
        format!("xxh3:{:016x}:{}", self.hasher.digest(), self.bytes)
    }
}

/// Where the weight table comes from.
pub enum Plan {
    /// The same file is loaded already: read the weights from the database.
    FromDatabase,
    /// Parse the file and load it into the database.
    FromFile,
}

/// Decides where the weights come from, and refuses a lookup file other
/// than the one chunks were already processed with.
pub async fn check(
    settings: &Settings,
    sources: &Sources,
    state: &dyn StateStore,
) -> anyhow::Result<Plan> {
    let location = settings.source.customer_importance.clone();
    let Some(existing) = state.lookup_source().await? else {
        return from_file(settings, sources).await;
    };
    let (path, reading) = (location.clone(), sources.clone());
    let fingerprint = tokio::task::spawn_blocking(move || -> anyhow::Result<String> {
        let mut reader = Fingerprinting::new(reading.open_at(&path, 0)?);
        std::io::copy(&mut reader, &mut std::io::sink())?;
        Ok(reader.fingerprint())
    })
    .await??;
    if fingerprint == existing.fingerprint {
        info!(pairs = existing.pairs, "lookup table already loaded");
        return Ok(Plan::FromDatabase);
    }
    // A cluster's workers share one lookup table: one with another file
    // would detect with other weights.
    if settings.cluster.enabled {
        return Err(super::Mismatch(format!(
            "CustomerImportance file {location} (source.customer_importance) differs from \
             the one this cluster loaded ({}); every worker of a cluster must use the same \
             lookup file",
            existing.source
        ))
        .into());
    }
    if state.last_chunk().await?.is_some() {
        return Err(super::Mismatch(format!(
            "CustomerImportance file {location} (source.customer_importance) differs from \
             the one loaded before ({}); chunks were already processed with the old \
             weights. Use a fresh database and bucket to change the lookup table",
            existing.source
        ))
        .into());
    }
    from_file(settings, sources).await
}

/// The file will be read: check at once what can be (it opens, it is a
/// regular file, its header names the columns).
async fn from_file(settings: &Settings, sources: &Sources) -> anyhow::Result<Plan> {
    let (path, sources) = (settings.source.customer_importance.clone(), sources.clone());
    let max_record_bytes = settings.input.max_record_bytes;
    tokio::task::spawn_blocking(move || -> anyhow::Result<()> {
        check_header(sources.open_at(&path, 0)?, max_record_bytes)
            .with_context(|| format!("CustomerImportance file {path}"))
    })
    .await??;
    Ok(Plan::FromFile)
}

/// The weight table, and the lookup rows still to store in the database.
pub struct Loaded {
    pub weights: WeightTable,
    pub store: Option<Pending>,
}

impl Plan {
    /// Builds the weight table: from the database, or by parsing the file
    /// (whose rows are then still to be stored, see [`Pending`]).
    pub async fn read(
        self,
        settings: &Settings,
        sources: &Sources,
        state: &dyn StateStore,
        names: &Arc<Names>,
    ) -> anyhow::Result<Loaded> {
        match self {
            Plan::FromDatabase => Ok(Loaded {
                weights: weight_table(state, names).await?,
                store: None,
            }),
            Plan::FromFile => read_file(settings, sources, names).await,
        }
    }
}

/// Parses the lookup file into the weight table and the rows to store.
async fn read_file(
    settings: &Settings,
    sources: &Sources,
    names: &Arc<Names>,
) -> anyhow::Result<Loaded> {
    let location = settings.source.customer_importance.clone();
    let max_record_bytes = settings.input.max_record_bytes;
    crate::pause_points::reached("lookup-load");
    let (importance, fingerprint) = tokio::task::spawn_blocking({
        let (location, sources, names) = (location.clone(), sources.clone(), names.clone());
        move || -> anyhow::Result<_> {
            let mut reader = Fingerprinting::new(sources.open_at(&location, 0)?);
            let importance = read_importance(&mut reader, &names, max_record_bytes)
                .with_context(|| format!("CustomerImportance file {location}"))?;
            std::io::copy(&mut reader, &mut std::io::sink())?;
            Ok((importance, reader.fingerprint()))
        }
    })
    .await??;
    let weights = WeightTable::from_entries(
        importance
            .entries
            .iter()
            .map(|e| (e.merchant, e.customer, e.weight_sum, e.rows)),
    );
    let source = LookupSource {
        source: location,
        fingerprint,
        rows: importance.rows,
        bad_rows: importance.bad_rows,
        pairs: importance.entries.len() as u64,
    };
    Ok(Loaded {
        weights,
        store: Some(Pending {
            source,
            entries: importance.entries,
            names: names.clone(),
        }),
    })
}

/// Lookup rows parsed but not yet in the database. They are stored while
/// the chunker and Mechanism Y start; Mechanism Y's commits wait for them
/// (a commit must never exist without the lookup table it was made with).
pub struct Pending {
    source: LookupSource,
    entries: Vec<ImportanceRow>,
    names: Arc<Names>,
}

impl Pending {
    pub async fn store(self, state: &dyn StateStore, fence: &Fence) -> anyhow::Result<()> {
        let names = &self.names;
        let mut rows: Vec<WeightRow<'_>> = self
            .entries
            .iter()
            .map(|entry| WeightRow {
                merchant: names.name(entry.merchant.0),
                customer: names.name(entry.customer.0),
                weight_sum: entry.weight_sum.0,
                rows: entry.rows,
            })
            .collect();
        // In primary-key order, every insert appends to the table's B-tree
        // instead of splitting pages all over it (10 s of the start-up of
        // a 10M-row file went to inserts in file order on SQLite).
        rows.sort_unstable_by(|a, b| (a.merchant, a.customer).cmp(&(b.merchant, b.customer)));
        state.load_lookup(fence, &self.source, &rows).await?;
        info!(
            rows = self.source.rows,
            bad_rows = self.source.bad_rows,
            pairs = self.source.pairs,
            "lookup table loaded"
        );
        Ok(())
    }
}

/// What `txpipe load-lookup` did.
pub enum LoadOnce {
    Loaded { pairs: u64 },
    Present { pairs: u64 },
}

/// Stores the lookup file in the database unless it is there (`txpipe
/// load-lookup`). A cluster's workers then read the table from the
/// database: none pays for parsing the file (its peak memory and CPU).
/// It writes under a lease of its own: in a cluster, a worker's kind of
/// registration, in the workers' turn at the lookup table; for a single
/// process, the ownership lease (refused while a pipeline runs).
pub async fn load_once(settings: &Settings) -> anyhow::Result<LoadOnce> {
    use crate::db::lease::PIPELINE_LEASE;
    use crate::db::{Claimant, LeaseGrant};
    let me = Claimant::this_process();
    let (state, turn, lease): (Arc<dyn StateStore>, _, String) = if settings.cluster.enabled {
        let cluster = crate::db::open_cluster(settings).await?;
        let turn = cluster.lookup_turn().await?;
        // Not a `worker/` lease: the workers must not count it in shares.
        let lease = format!("lookup-loader/{}", me.owner_id);
        (cluster, Some(turn), lease)
    } else {
        (
            crate::db::open(settings).await?,
            None,
            PIPELINE_LEASE.to_string(),
        )
    };
    let ttl = settings
        .ownership
        .lease_ttl_ms
        .max(settings.cluster.lease_ttl_ms);
    let fence = match state.acquire_lease(&lease, &me, ttl, None).await? {
        LeaseGrant::Granted(fence) => fence,
        LeaseGrant::Held { holder, .. } => {
            anyhow::bail!("{}; stop it first", holder.standby_message())
        }
    };
    let sources = Sources::for_settings(settings).await;
    let outcome = async {
        let plan = check(settings, &sources, &*state).await?;
        if let Plan::FromDatabase = plan {
            let pairs = state.lookup_source().await?.map_or(0, |s| s.pairs);
            return anyhow::Ok(LoadOnce::Present { pairs });
        }
        let names = Arc::new(Names::new());
        let loaded = plan.read(settings, &sources, &*state, &names).await?;
        let pairs = loaded.weights.len() as u64;
        if let Some(pending) = loaded.store {
            pending.store(&*state, &fence).await?;
        }
        anyhow::Ok(LoadOnce::Loaded { pairs })
    }
    .await;
    let _ = state.release_lease(&fence).await;
    if let Some(turn) = turn {
        turn.end().await;
    }
    outcome
}

/// The whole lookup table, read from the database.
pub async fn weight_table(state: &dyn StateStore, names: &Names) -> anyhow::Result<WeightTable> {
    Ok(crate::actors::committed::read_weights(state, names, |_| true).await?)
}
