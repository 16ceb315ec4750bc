//! `txpipe demo`: generates a BankSim-like dataset under `var/demo/` (once)
//! and runs the whole pipeline on the embedded defaults, as fast as it can,
//! in a fresh bucket and database under `var/demo/`.

use std::path::{Path, PathBuf};

use super::RunReport;
use crate::actors::supervisor::RunMode;
use crate::config::Settings;
use crate::generate::{GenerateOptions, generate_observed};

pub const DEMO_DIR: &str = "var/demo";

pub struct Demo {
    pub report: RunReport,
    pub bucket: PathBuf,
    pub database: PathBuf,
}

pub fn options(rows: u64) -> GenerateOptions {
    GenerateOptions {
        rows,
        customers: (rows / 50).clamp(100, 100_000) as u32,
        merchants: (rows / 2_000).clamp(10, 1_000) as u32,
        seed: 42,
    }
}

/// Settings for the demo: the defaults, pointed at `dir`, in catch-up mode.
pub fn settings(mut settings: Settings, dir: &Path) -> Settings {
    let data = dir.join("data");
    settings.source.transactions = data
        .join(crate::generate::TRANSACTIONS_FILE)
        .display()
        .to_string();
    settings.source.customer_importance = data
        .join(crate::generate::IMPORTANCE_FILE)
        .display()
        .to_string();
    settings.storage.root = dir.join("bucket");
    settings.database.url = format!("sqlite://{}", dir.join("txpipe.sqlite").display());
    settings.chunker.interval_ms = 0;
    settings
}

pub fn run(base: Settings, rows: u64) -> anyhow::Result<Demo> {
    let dir = Path::new(DEMO_DIR);
    let data = dir.join("data");
    let marker = data.join(format!("generated-{rows}-rows"));
    if !marker.exists() {
        eprintln!(
            "generating {rows} BankSim-like transactions into {} ...",
            data.display()
        );
        let _ = std::fs::remove_dir_all(&data);
        let bar = super::progress::rows(rows, "generated");
        generate_observed(&options(rows), &data, &|done| bar.set_position(done))?;
        bar.finish();
        std::fs::write(&marker, b"")?;
    }
    // Each demo starts from an empty bucket and database.
    let _ = std::fs::remove_dir_all(dir.join("bucket"));
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(dir.join(format!("txpipe.sqlite{suffix}")));
    }
    let settings = settings(base, dir);
    let bucket = settings.storage.root.clone();
    let database = dir.join("txpipe.sqlite");
    // The bar follows the rows processed; a run that stops early leaves it
    // where it stopped.
    let bar = super::progress::rows(rows, "processed");
    let report = super::run_observed(settings, RunMode::UntilDone, Vec::new(), |handle| {
        super::progress::follow_processed(bar.clone(), handle.metrics)
    });
    match &report {
        Ok(report) if report.exit_code == 0 => {
            bar.set_position(report.rows_committed);
            bar.finish();
        }
        _ => bar.abandon(),
    }
    let report = report?;
    Ok(Demo {
        report,
        bucket,
        database,
    })
}
