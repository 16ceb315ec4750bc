//! The `txpipe` command line.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use txpipe::actors::faults::FaultRule;
use txpipe::actors::supervisor::RunMode;
use txpipe::app;
use txpipe::config::Settings;
use txpipe::generate::{GenerateOptions, generate_observed};

#[derive(Parser)]
#[command(
    name = "txpipe",
    version,
    about = "Detects business patterns in a stream of bank transactions, exactly once"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the supervised pipeline (Mechanism X and Mechanism Y).
    Run {
        /// Configuration file layered over the embedded defaults.
        #[arg(long)]
        config: Option<PathBuf>,
        /// Exit 0 once the master file is chunked, every chunk processed and
        /// every detection written (the final partial batch too).
        #[arg(long)]
        exit_when_done: bool,
        /// Exit with code 6 instead of waiting as a hot standby while another
        /// process holds the ownership lease.
        #[arg(long)]
        no_standby: bool,
        /// Test-only fault injection: ACTOR:N:panic|error[:repeat].
        #[arg(long, hide = true)]
        inject_fault: Vec<FaultRule>,
        /// Test-only: announce and pause at these points (see pause_points).
        #[arg(long, hide = true)]
        pause_at: Vec<String>,
        /// Write machine-readable figures of the run to this file.
        #[arg(long, hide = true)]
        report_json: Option<PathBuf>,
        /// Test-only: how long to pause at each pause point.
        #[arg(long, hide = true, default_value_t = 200)]
        pause_ms: u64,
    },
    /// Generate BankSim-like data into var/demo/ (once) and run the pipeline
    /// on the embedded defaults until done, in catch-up mode.
    Demo {
        /// Configuration file layered over the embedded defaults.
        #[arg(long)]
        config: Option<PathBuf>,
        /// Transactions to generate.
        #[arg(long, default_value_t = 1_000_000)]
        rows: u64,
    },
    /// Write deterministic BankSim-like data (transactions and network files).
    Generate {
        /// Transactions to write (data rows of transactions.csv).
        #[arg(long)]
        rows: u64,
        /// Distinct customers they are drawn from.
        #[arg(long)]
        customers: u32,
        /// Distinct merchants (drawn by a Zipf law: a few huge ones).
        #[arg(long)]
        merchants: u32,
        /// The same seed (and other arguments) always gives the same bytes.
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// Directory for transactions.csv and customer_importance.csv
        /// (created if missing).
        out_dir: PathBuf,
    },
    /// Record the next chunk as rejected without applying it: the way past
    /// a chunk the database refuses for a reason no retry fixes (the error
    /// names it). Refused while another process holds the ownership lease.
    SkipChunk {
        /// Configuration file layered over the embedded defaults.
        #[arg(long)]
        config: Option<PathBuf>,
        /// Why (kept in processed_chunks.reason).
        #[arg(long)]
        reason: String,
        /// The chunk's key, e.g. stream_chunks/chunk-0000000042-….csv.
        key: String,
    },
    /// Apply database migrations and exit.
    Migrate {
        /// Configuration file layered over the embedded defaults.
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// Load the CustomerImportance file into the database (once; nothing
    /// to do if it is there) and exit: a cluster's set-up step, so that no
    /// worker parses the file (each then reads the table from the
    /// database). Refused while a single pipeline runs.
    LoadLookup {
        /// Configuration file layered over the embedded defaults.
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// Print progress from the database: lag, bad rows, detections, restarts,
    /// the active owner and any standby. Changes nothing.
    Status {
        /// Configuration file layered over the embedded defaults.
        #[arg(long)]
        config: Option<PathBuf>,
        /// The status of the last `txpipe demo` in this directory (its
        /// database under var/demo/).
        #[arg(long)]
        demo: bool,
        /// Print the figures as one JSON object, for scripts.
        #[arg(long, conflicts_with = "watch")]
        json: bool,
        /// Refresh in place every SECONDS until interrupted.
        #[arg(long, value_name = "SECONDS", num_args = 0..=1, default_missing_value = "2")]
        watch: Option<f64>,
    },
}

fn load(config: Option<&std::path::Path>) -> anyhow::Result<Settings> {
    let settings = Settings::load(config)?;
    app::init_logging(&settings);
    Ok(settings)
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // Actors contain panics and restart; the panic itself goes to the log
    // as one line instead of a raw message on stderr.
    std::panic::set_hook(Box::new(|info| {
        if tracing::dispatcher::has_been_set() {
            tracing::error!(panic = %info, "panic");
        } else {
            eprintln!("panic: {info}");
        }
    }));
    match execute(cli.command) {
        Ok(code) => code,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}

fn execute(command: Command) -> anyhow::Result<ExitCode> {
    match command {
        Command::Run {
            config,
            exit_when_done,
            no_standby,
            inject_fault,
            pause_at,
            pause_ms,
            report_json,
        } => {
            let mut settings = load(config.as_deref())?;
            if no_standby {
                settings.ownership.standby = false;
            }
            if !inject_fault.is_empty() && !cfg!(feature = "test-hooks") {
                anyhow::bail!(
                    "this build has no fault injection (build with --features test-hooks)"
                );
            }
            if !pause_at.is_empty() {
                txpipe::pause_points::enable(pause_at, std::time::Duration::from_millis(pause_ms))
                    .map_err(anyhow::Error::msg)?;
            }
            let mode = if exit_when_done {
                RunMode::UntilDone
            } else {
                RunMode::Forever
            };
            let report = app::run(settings, mode, inject_fault)?;
            if let Some(error) = &report.error {
                eprintln!("error: {error}");
            }
            if report.exit_code == 0 && exit_when_done {
                eprint!("{}", app::report::run_summary(&report));
            }
            if let Some(path) = report_json {
                let json = serde_json::to_string_pretty(&app::report::JsonReport::new(&report))?;
                std::fs::write(&path, json)?;
            }
            Ok(ExitCode::from(report.exit_code.clamp(0, 255) as u8))
        }
        Command::Demo { config, rows } => {
            let settings = load(config.as_deref())?;
            let demo = app::demo::run(settings, rows)?;
            if let Some(error) = &demo.report.error {
                eprintln!("error: {error}");
            }
            println!("{}", app::report::run_summary(&demo.report));
            println!("outputs:");
            println!(
                "  chunks            {}/stream_chunks/",
                demo.bucket.display()
            );
            println!(
                "  detection files   {}/detected_patterns/",
                demo.bucket.display()
            );
            println!("  quarantine        {}/quarantine/", demo.bucket.display());
            println!(
                "  database          {} (tables detected_patterns, processed_chunks, ...)",
                demo.database.display()
            );
            println!("status of this run: txpipe status --demo");
            Ok(ExitCode::from(demo.report.exit_code.clamp(0, 255) as u8))
        }
        Command::Generate {
            rows,
            customers,
            merchants,
            seed,
            out_dir,
        } => {
            let bar = app::progress::rows(rows, "generated");
            let generated = generate_observed(
                &GenerateOptions {
                    rows,
                    customers,
                    merchants,
                    seed,
                },
                &out_dir,
                &|done| bar.set_position(done),
            );
            match &generated {
                Ok(_) => bar.finish(),
                Err(_) => bar.abandon(),
            }
            let generated = generated?;
            println!("{}", generated.transactions.display());
            println!("{}", generated.customer_importance.display());
            Ok(ExitCode::SUCCESS)
        }
        Command::SkipChunk {
            config,
            reason,
            key,
        } => {
            let settings = load(config.as_deref())?;
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            match runtime.block_on(app::skip::skip_chunk(&settings, &key, &reason))? {
                app::skip::Skipped::Recorded { seq } => {
                    println!("chunk {seq} ({key:?}) recorded as rejected; it will not be applied");
                    Ok(ExitCode::SUCCESS)
                }
                app::skip::Skipped::Busy(message) => {
                    eprintln!("error: {message}");
                    Ok(ExitCode::from(
                        txpipe::actors::supervisor::EXIT_STANDBY_REFUSED as u8,
                    ))
                }
            }
        }
        Command::LoadLookup { config } => {
            let settings = load(config.as_deref())?;
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            match runtime.block_on(app::lookup::load_once(&settings))? {
                app::lookup::LoadOnce::Loaded { pairs } => {
                    println!("lookup table loaded: {pairs} pairs")
                }
                app::lookup::LoadOnce::Present { pairs } => {
                    println!("lookup table already loaded: {pairs} pairs")
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Migrate { config } => {
            let settings = load(config.as_deref())?;
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            runtime.block_on(txpipe::db::open(&settings))?;
            println!("migrations applied");
            Ok(ExitCode::SUCCESS)
        }
        Command::Status {
            config,
            demo,
            json,
            watch,
        } => {
            let mut settings = load(config.as_deref())?;
            if demo {
                settings = app::demo::settings(settings, std::path::Path::new(app::demo::DEMO_DIR));
            }
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            runtime.block_on(async {
                let state = txpipe::db::open_existing(&settings).await?;
                // A cluster's workers, key groups and leases, after the rest.
                let cluster = match settings.cluster.enabled {
                    true => Some(
                        txpipe::db::postgres::PostgresStore::connect(&settings.database.url, 1)
                            .await?,
                    ),
                    false => None,
                };
                let cluster_of = async |produced: u64| -> anyhow::Result<_> {
                    Ok(match &cluster {
                        Some(cluster) => Some(app::report::ClusterJson::new(
                            &cluster.cluster_view().await?,
                            produced,
                        )),
                        None => None,
                    })
                };
                let Some(every) = watch else {
                    let report = state.status(5).await?;
                    let cluster = cluster_of(report.chunks_produced).await?;
                    if json {
                        let mut value =
                            serde_json::to_value(app::report::StatusJson::new(&report))?;
                        if let (Some(cluster), Some(object)) = (cluster, value.as_object_mut()) {
                            object.insert("cluster".into(), serde_json::to_value(cluster)?);
                        }
                        println!("{}", serde_json::to_string_pretty(&value)?);
                    } else {
                        print!("{}", app::report::status(&report));
                        if let Some(cluster) = cluster {
                            print!("{}", app::report::cluster_status(&cluster));
                        }
                    }
                    return anyhow::Ok(());
                };
                anyhow::ensure!(
                    every.is_finite() && every >= 0.1,
                    "--watch needs an interval of at least 0.1 seconds"
                );
                let every = std::time::Duration::from_secs_f64(every);
                print!("\x1b[2J");
                loop {
                    let report = state.status(5).await?;
                    let mut text = app::report::status(&report);
                    if let Some(cluster) = cluster_of(report.chunks_produced).await? {
                        text.push_str(&app::report::cluster_status(&cluster));
                    }
                    // Home, the report, then clear what an older, longer
                    // report left below it: refreshed in place.
                    print!("\x1b[H{}\x1b[J", text.replace('\n', "\x1b[K\n"));
                    println!(
                        "every {:.1} s, {}; Ctrl-C to stop\x1b[K",
                        every.as_secs_f64(),
                        chrono::Local::now().format("%H:%M:%S")
                    );
                    std::io::Write::flush(&mut std::io::stdout())?;
                    tokio::select! {
                        _ = tokio::time::sleep(every) => {}
                        _ = tokio::signal::ctrl_c() => return Ok(()),
                    }
                }
            })?;
            Ok(ExitCode::SUCCESS)
        }
    }
}
