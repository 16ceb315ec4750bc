//! Loads the CustomerImportance file into the database once, and builds the
//! in-memory weight table.
//!
//! The file is fingerprinted (xxh3 of its bytes). Starting again with the
//! same file skips the load; a different file is refused once chunks have
//! been processed, because it would change what earlier chunks meant.
//!
//! Two steps: [`check`] runs before any actor starts (a refused file must
//! stop the process before anything is written); [`Plan::load`] runs while
//! the chunker already cuts chunks, and Mechanism Y starts once it is done
//! (its first commit must follow the lookup table's).

use std::io::Read;
use std::sync::Arc;

use anyhow::Context as _;
use tracing::info;
use xxhash_rust::xxh3::Xxh3;

use crate::config::Settings;
use crate::db::{Fence, LookupSource, StateStore, WeightRow};
use crate::detect::{Cents, WeightTable};
use crate::input::importance::{check_header, read_importance};
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
    if state.last_chunk().await?.is_some() {
        return Err(super::Mismatch(format!(
            "CustomerImportance file {location} differs from the one loaded before ({}); \
             chunks were already processed with the old weights. Use a fresh database \
             and bucket to change the lookup table",
            existing.source
        ))
        .into());
    }
    from_file(settings, sources).await
}

/// The file is read while the chunker starts; what can be checked at once
/// (it opens, it is a regular file, its header names the columns) is
/// checked now.
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

impl Plan {
    /// Builds the weight table, loading the file into the database first
    /// if that is the plan.
    pub async fn load(
        self,
        settings: &Settings,
        sources: &Sources,
        state: &dyn StateStore,
        fence: &Fence,
        names: &Arc<Names>,
    ) -> anyhow::Result<WeightTable> {
        match self {
            Plan::FromDatabase => weight_table(state, names).await,
            Plan::FromFile => load_file(settings, sources, state, fence, names).await,
        }
    }
}

/// Parses the lookup file, loads it into the database, and returns the
/// weight table.
async fn load_file(
    settings: &Settings,
    sources: &Sources,
    state: &dyn StateStore,
    fence: &Fence,
    names: &Arc<Names>,
) -> anyhow::Result<WeightTable> {
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
    let mut rows: Vec<WeightRow<'_>> = importance
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
    // instead of splitting pages all over it (10 s of the start-up of a
    // 10M-row file went to inserts in file order on SQLite).
    rows.sort_unstable_by(|a, b| (a.merchant, a.customer).cmp(&(b.merchant, b.customer)));
    let loaded = LookupSource {
        source: location,
        fingerprint,
        rows: importance.rows,
        bad_rows: importance.bad_rows,
        pairs: rows.len() as u64,
    };
    state.load_lookup(fence, &loaded, &rows).await?;
    info!(
        rows = loaded.rows,
        bad_rows = loaded.bad_rows,
        pairs = loaded.pairs,
        "lookup table loaded"
    );
    drop(rows);
    Ok(WeightTable::from_entries(
        importance
            .entries
            .into_iter()
            .map(|e| (e.merchant, e.customer, e.weight_sum, e.rows)),
    ))
}

pub async fn weight_table(state: &dyn StateStore, names: &Names) -> anyhow::Result<WeightTable> {
    let mut entries = Vec::new();
    state
        .scan_weights(&mut |row| {
            entries.push((
                names.merchant(row.merchant),
                names.customer(row.customer),
                Cents(row.weight_sum),
                row.rows,
            ))
        })
        .await?;
    Ok(WeightTable::from_entries(entries))
}
