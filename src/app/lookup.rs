//! Loads the CustomerImportance file into the database once, and builds the
//! in-memory weight table from the database.
//!
//! The file is fingerprinted (xxh3 of its bytes). Starting again with the
//! same file skips the load; a different file is refused once chunks have
//! been processed, because it would change what earlier chunks meant.

use std::io::Read;
use std::sync::Arc;

use anyhow::Context as _;
use tracing::info;
use xxhash_rust::xxh3::Xxh3;

use crate::config::Settings;
use crate::db::{Fence, LookupSource, StateStore, WeightRow};
use crate::detect::{Cents, WeightTable};
use crate::input::importance::read_importance;
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

/// Loads the lookup file into the database unless it is there already, and
/// returns the weight table.
pub async fn ensure_loaded(
    settings: &Settings,
    sources: &Sources,
    state: &dyn StateStore,
    fence: &Fence,
    names: &Arc<Names>,
) -> anyhow::Result<WeightTable> {
    let location = settings.source.customer_importance.clone();
    let max_record_bytes = settings.input.max_record_bytes;
    let existing = state.lookup_source().await?;
    if let Some(existing) = &existing {
        let (path, sources) = (location.clone(), sources.clone());
        let fingerprint = tokio::task::spawn_blocking(move || -> anyhow::Result<String> {
            let mut reader = Fingerprinting::new(sources.open_at(&path, 0)?);
            std::io::copy(&mut reader, &mut std::io::sink())?;
            Ok(reader.fingerprint())
        })
        .await??;
        if fingerprint == existing.fingerprint {
            info!(pairs = existing.pairs, "lookup table already loaded");
            return weight_table(state, names).await;
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
    }
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
