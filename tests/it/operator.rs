//! What an operator sees of a running txpipe: `/metrics` scraped with a
//! real HTTP client and parsed with a parser crate, checked against the
//! database and the bucket; `/healthz` and `/readyz` through a restart
//! storm, a lookup load and a standby; the live page in headless Chromium;
//! progress bars under a pseudo-terminal; `txpipe status --json` and
//! `--watch`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use prometheus_parse::{Scrape, Value};

use crate::support::http::{free_port, get, parse, value};
use txpipe::actors::supervisor::{EXIT_RESTART_LIMIT, RunMode};

use crate::support::{self, child};

fn counter(scrape: &Scrape, metric: &str) -> u64 {
    value(scrape, metric, &[]).unwrap_or_else(|| panic!("{metric} missing")) as u64
}

/// Observations of the histogram `metric` (its `+Inf` bucket).
fn observations(scrape: &Scrape, metric: &str, labels: &[(&str, &str)]) -> u64 {
    scrape
        .samples
        .iter()
        .filter(|s| s.metric == metric)
        .filter(|s| labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
        .find_map(|s| match &s.value {
            Value::Histogram(buckets) => buckets
                .iter()
                .find(|b| b.less_than.is_infinite())
                .map(|b| b.count as u64),
            _ => None,
        })
        .unwrap_or_else(|| panic!("histogram {metric} {labels:?} missing"))
}

fn sql_u64(db: &rusqlite::Connection, sql: &str) -> u64 {
    db.query_row(sql, [], |row| row.get::<_, i64>(0)).unwrap() as u64
}

fn files_in(dir: &Path) -> u64 {
    std::fs::read_dir(dir).map_or(0, |entries| entries.count() as u64)
}

#[test]
fn metrics_scraped_after_a_banksim_run_match_the_database() {
    let Some((transactions, importance)) = support::banksim() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let mut settings = support::embedded_settings(dir.path(), &transactions, &importance);
    settings.http.listen = "127.0.0.1:0".to_string();
    let rows = std::fs::read(&transactions)
        .unwrap()
        .split(|b| *b == b'\n')
        .filter(|line| !line.is_empty())
        .count() as u64
        - 1;
    let chunks = rows.div_ceil(settings.chunker.rows_per_chunk);
    let batch = settings.batch.size;
    let (sender, scraped) = mpsc::channel();
    // Runs until every chunk is committed and every full batch written,
    // scrapes, then stops the pipeline (the final partial batch stays in
    // the outbox, as after a crash).
    let report = txpipe::app::run_observed(settings, RunMode::Forever, Vec::new(), |handle| {
        std::thread::spawn(move || {
            let addr = handle.http.expect("the HTTP server is on");
            let deadline = Instant::now() + Duration::from_secs(300);
            let text = loop {
                assert!(Instant::now() < deadline, "the run did not finish");
                let (status, text) = get(addr, "/metrics").unwrap();
                assert_eq!(status, 200);
                let scrape = parse(&text);
                let done = counter(&scrape, "txpipe_chunks_committed_total")
                    + counter(&scrape, "txpipe_chunks_rejected_total");
                let detections: u64 = ["PatId1", "PatId2", "PatId3"]
                    .iter()
                    .map(|p| {
                        value(&scrape, "txpipe_detections_total", &[("pattern", p)]).unwrap() as u64
                    })
                    .sum();
                let files = counter(&scrape, "txpipe_detection_files_written_total");
                if done == chunks && files == detections / batch as u64 {
                    break text;
                }
                std::thread::sleep(Duration::from_millis(100));
            };
            let _ = sender.send(text);
            handle.system.stop();
        });
    })
    .unwrap();
    let text = scraped.recv().expect("scraped");
    assert!(report.error.is_none(), "{:?}", report.error);
    let scrape = parse(&text);
    let db = rusqlite::Connection::open(dir.path().join("state.sqlite")).unwrap();

    // Counters against the database and the bucket.
    let committed = sql_u64(
        &db,
        "SELECT count(*) FROM processed_chunks WHERE status = 'processed'",
    );
    assert_eq!(committed, chunks);
    assert_eq!(counter(&scrape, "txpipe_chunks_committed_total"), committed);
    assert_eq!(
        counter(&scrape, "txpipe_chunks_rejected_total"),
        sql_u64(
            &db,
            "SELECT count(*) FROM processed_chunks WHERE status = 'rejected'"
        )
    );
    assert_eq!(counter(&scrape, "txpipe_chunks_written_total"), chunks);
    assert_eq!(
        files_in(&dir.path().join("bucket/stream_chunks")),
        chunks,
        "chunk objects"
    );
    assert_eq!(counter(&scrape, "txpipe_chunks_listed_total"), chunks);
    assert_eq!(counter(&scrape, "txpipe_rows_chunked_total"), rows);
    assert_eq!(
        counter(&scrape, "txpipe_rows_processed_total"),
        sql_u64(&db, "SELECT sum(rows) FROM processed_chunks")
    );
    assert_eq!(counter(&scrape, "txpipe_rows_processed_total"), rows);
    assert_eq!(
        counter(&scrape, "txpipe_bad_rows_total"),
        sql_u64(&db, "SELECT sum(bad_rows) FROM processed_chunks")
    );
    let mut all = 0;
    for pattern in ["PatId1", "PatId2", "PatId3"] {
        let in_db = sql_u64(
            &db,
            &format!("SELECT count(*) FROM detected_patterns WHERE patternId = '{pattern}'"),
        );
        assert!(in_db > 0, "BankSim has {pattern} detections");
        let exported = value(&scrape, "txpipe_detections_total", &[("pattern", pattern)]).unwrap();
        assert_eq!(exported as u64, in_db, "{pattern}");
        all += in_db;
    }
    let files = files_in(&dir.path().join("bucket/detected_patterns"));
    assert_eq!(files, all / 50);
    assert_eq!(
        counter(&scrape, "txpipe_detection_files_written_total"),
        files
    );
    let commits = counter(&scrape, "txpipe_commits_total");
    assert!(commits >= 1 && commits <= chunks, "{commits} commits");
    assert_eq!(value(&scrape, "txpipe_lag_chunks", &[]), Some(0.0));
    assert_eq!(
        value(&scrape, "txpipe_chunk_written_seq", &[]),
        Some(chunks as f64)
    );
    assert_eq!(
        value(&scrape, "txpipe_chunk_committed_seq", &[]),
        Some(chunks as f64)
    );
    assert_eq!(value(&scrape, "txpipe_ready", &[]), Some(1.0));
    assert_eq!(value(&scrape, "txpipe_healthy", &[]), Some(1.0));
    assert!(value(&scrape, "txpipe_pair_state_pairs", &[]).unwrap() > 1000.0);
    assert!(value(&scrape, "process_resident_memory_bytes", &[]).unwrap() > 1e6);
    assert!(value(&scrape, "process_cpu_seconds_total", &[]).unwrap() > 0.0);
    assert_eq!(
        value(&scrape, "txpipe_mailbox_capacity", &[("actor", "tracker")]),
        Some(32.0)
    );

    // Histograms have observations.
    assert_eq!(
        observations(&scrape, "txpipe_chunk_latency_seconds", &[]),
        chunks
    );
    assert_eq!(
        observations(&scrape, "txpipe_commit_duration_seconds", &[]),
        commits
    );
    assert_eq!(
        observations(
            &scrape,
            "txpipe_object_store_call_duration_seconds",
            &[("operation", "write chunk")]
        ),
        chunks
    );
    assert!(
        observations(
            &scrape,
            "txpipe_database_call_duration_seconds",
            &[("operation", "commit chunks")]
        ) >= commits
    );
    // The run report reads the same metrics.
    assert_eq!(report.rows_committed, rows);
    assert_eq!(report.commits, commits);
    assert!(report.latency_p99_ms.unwrap() >= report.latency_p50_ms.unwrap());
}

/// Reads the `url=http://…/` a child logged when its HTTP server started.
fn http_address(running: &mut child::Running) -> SocketAddr {
    match running.wait_for("serving metrics", 1, Duration::from_secs(60)) {
        child::Waited::Seen => {}
        _ => panic!("no HTTP server: {:?}", running.log),
    }
    let line = running
        .log
        .iter()
        .find(|l| l.contains("serving metrics"))
        .unwrap();
    let url = line.split("url=http://").nth(1).unwrap();
    url.trim_end_matches(|c: char| c == '/' || c.is_whitespace())
        .parse()
        .unwrap_or_else(|e| panic!("{line}: {e}"))
}

fn http_env(extra: &[(&str, &str)]) -> Vec<(String, String)> {
    [
        ("TXPIPE__HTTP__LISTEN", "127.0.0.1:0"),
        ("RUST_LOG", "info"),
    ]
    .iter()
    .chain(extra)
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect()
}

/// Polls `path` until `done` says so, returning every (status, body) seen.
fn poll_until(
    addr: SocketAddr,
    path: &str,
    timeout: Duration,
    mut done: impl FnMut(u16, &str) -> bool,
) -> Vec<(u16, String)> {
    let deadline = Instant::now() + timeout;
    let mut seen = Vec::new();
    while Instant::now() < deadline {
        if let Ok((status, body)) = get(addr, path) {
            let stop = done(status, &body);
            seen.push((status, body));
            if stop {
                return seen;
            }
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    panic!("{path} never reached the expected state; saw {seen:?}");
}

#[test]
fn healthz_turns_503_while_an_actor_restarts_past_the_limit() {
    let dir = tempfile::tempdir().unwrap();
    let (transactions, importance) = support::generated(200_000, 2_000, 50, 1);
    let mut settings = support::embedded_settings(dir.path(), &transactions, &importance);
    settings.http.listen = "127.0.0.1:0".to_string();
    settings.supervisor.max_restarts = 3;
    settings.supervisor.backoff_initial_ms = 200;
    settings.supervisor.backoff_max_ms = 400;
    let fault: txpipe::actors::faults::FaultRule = "tracker:3:panic:repeat".parse().unwrap();
    let (sender, seen) = mpsc::channel();
    let report = txpipe::app::run_observed(settings, RunMode::UntilDone, vec![fault], |handle| {
        let addr = handle.http.unwrap();
        std::thread::spawn(move || {
            let mut statuses = Vec::new();
            // Until the server goes away with the process's stop.
            while let Ok((status, body)) = get(addr, "/healthz") {
                statuses.push((status, body));
                std::thread::sleep(Duration::from_millis(10));
            }
            let _ = sender.send(statuses);
        });
    })
    .unwrap();
    assert_eq!(report.exit_code, EXIT_RESTART_LIMIT, "{:?}", report.error);
    let statuses = seen.recv().unwrap();
    assert_eq!(statuses.first().map(|s| s.0), Some(200), "healthy at first");
    let unhealthy: Vec<_> = statuses.iter().filter(|(s, _)| *s == 503).collect();
    assert!(!unhealthy.is_empty(), "never 503: {statuses:?}");
    let (_, body) = unhealthy[0];
    let json: serde_json::Value = serde_json::from_str(body).unwrap();
    assert_eq!(json["status"], "unhealthy");
    let reason = json["reason"].as_str().unwrap();
    assert!(
        reason.contains("tracker") && reason.contains("restarting"),
        "{reason}"
    );
    // Once unhealthy, it stays so until the process stops: every restart
    // fails again at once (the fault repeats) and the limit stops it.
    let first_503 = statuses.iter().position(|(s, _)| *s == 503).unwrap();
    let healthy_again = statuses[first_503..]
        .iter()
        .filter(|(s, _)| *s == 200)
        .count();
    assert!(
        healthy_again <= statuses.len() / 2,
        "mostly unhealthy after the first failure: {statuses:?}"
    );
}

#[test]
fn readyz_is_503_while_loading_and_standing_by_and_200_when_running() {
    let dir = tempfile::tempdir().unwrap();
    let (transactions, importance) = support::generated(50_000, 1_000, 20, 1);
    let config = support::configs::embedded(dir.path(), &transactions, &importance, "");
    let config = config.to_str().unwrap();
    let mut owner = child::spawn_in(
        dir.path(),
        &[
            "run",
            "--config",
            config,
            "--pause-at",
            "lookup-load",
            "--pause-ms",
            "1500",
        ],
        &http_env(&[("TXPIPE__CHUNKER__INTERVAL_MS", "200")]),
    );
    let addr = http_address(&mut owner);
    let seen = poll_until(addr, "/readyz", Duration::from_secs(60), |status, _| {
        status == 200
    });
    let loading = seen
        .iter()
        .find(|(status, body)| *status == 503 && body.contains("\"loading\""));
    assert!(loading.is_some(), "503 while loading: {seen:?}");
    assert_eq!(get(addr, "/healthz").unwrap().0, 200);

    // A second process waits as a standby: alive, not ready.
    let mut standby = child::spawn_in(
        dir.path(),
        &["run", "--config", config],
        &http_env(&[("TXPIPE__CHUNKER__INTERVAL_MS", "200")]),
    );
    let standby_addr = http_address(&mut standby);
    let seen = poll_until(
        standby_addr,
        "/readyz",
        Duration::from_secs(30),
        |_, body| body.contains("\"standby\""),
    );
    assert_eq!(seen.last().unwrap().0, 503);
    assert_eq!(get(standby_addr, "/healthz").unwrap().0, 200);
    let (_, metrics) = get(standby_addr, "/metrics").unwrap();
    assert_eq!(value(&parse(&metrics), "txpipe_ready", &[]), Some(0.0));
    standby.signal("TERM");
    owner.signal("TERM");
    let (status, log) = owner.wait(Duration::from_secs(60));
    assert!(status.is_some_and(|s| s.success()), "{log:?}");
    let (status, log) = standby.wait(Duration::from_secs(60));
    assert!(status.is_some_and(|s| s.success()), "{log:?}");
}

/// A W3C WebDriver session on a chromedriver this test starts.
struct Browser {
    driver: std::process::Child,
    base: String,
    session: String,
}

impl Browser {
    /// `None` (or a failure under CI) when chromium or chromedriver is
    /// missing.
    fn start() -> Option<Browser> {
        let found = |bin: &str| {
            Command::new(bin)
                .arg("--version")
                .output()
                .is_ok_and(|o| o.status.success())
        };
        if !found("chromedriver") || !found("chromium") {
            assert!(
                !support::ci(),
                "CI=true but chromium/chromedriver are missing (apt-get install -y chromium chromium-driver)"
            );
            eprintln!("skipped: chromium or chromedriver not installed");
            return None;
        }
        let port = free_port();
        let driver = Command::new("chromedriver")
            .arg(format!("--port={port}"))
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let base = format!("http://127.0.0.1:{port}");
        let deadline = Instant::now() + Duration::from_secs(30);
        while ureq::get(&format!("{base}/status")).call().is_err() {
            assert!(Instant::now() < deadline, "chromedriver did not start");
            std::thread::sleep(Duration::from_millis(100));
        }
        let capabilities = serde_json::json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": "/usr/bin/chromium",
                "args": ["--headless=new", "--no-sandbox", "--disable-gpu",
                         "--disable-dev-shm-usage", "--window-size=1440,900"]
            }
        }}});
        let mut browser = Browser {
            driver,
            base,
            session: String::new(),
        };
        let created = browser.post("/session", capabilities);
        browser.session = created["sessionId"].as_str().unwrap().to_string();
        Some(browser)
    }

    fn post(&self, path: &str, body: serde_json::Value) -> serde_json::Value {
        let mut response = ureq::post(&format!("{}{path}", self.base))
            .send_json(body)
            .unwrap_or_else(|e| panic!("WebDriver {path}: {e}"));
        let json: serde_json::Value = response.body_mut().read_json().unwrap();
        json["value"].clone()
    }

    fn open(&self, url: &str) {
        self.post(
            &format!("/session/{}/url", self.session),
            serde_json::json!({ "url": url }),
        );
    }

    /// Runs `script` in the page and returns what it returns.
    fn eval(&self, script: &str) -> serde_json::Value {
        self.post(
            &format!("/session/{}/execute/sync", self.session),
            serde_json::json!({ "script": script, "args": [] }),
        )
    }

    fn screenshot(&self, path: &Path) {
        let mut response = ureq::get(&format!(
            "{}/session/{}/screenshot",
            self.base, self.session
        ))
        .call()
        .unwrap();
        let json: serde_json::Value = response.body_mut().read_json().unwrap();
        use base64::Engine as _;
        let png = base64::engine::general_purpose::STANDARD
            .decode(json["value"].as_str().unwrap())
            .unwrap();
        assert!(png.starts_with(b"\x89PNG"), "a PNG");
        std::fs::write(path, png).unwrap();
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        if !self.session.is_empty() {
            let _ = ureq::delete(&format!("{}/session/{}", self.base, self.session)).call();
        }
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

/// Where tests keep what a person may want to look at afterwards (CI
/// keeps `target/test-artifacts/`).
fn artifacts() -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/test-artifacts");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

#[test]
fn the_live_page_renders_the_graph_the_chart_and_detections_in_chromium() {
    let Some(browser) = Browser::start() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let (transactions, importance) = support::generated(400_000, 5_000, 100, 1);
    let config = support::configs::embedded(dir.path(), &transactions, &importance, "");
    // Paced: a chunk of 2,000 rows every 100 ms, for a minute or so.
    let mut run = child::spawn_in(
        dir.path(),
        &["run", "--config", config.to_str().unwrap()],
        &http_env(&[
            ("TXPIPE__CHUNKER__INTERVAL_MS", "100"),
            ("TXPIPE__CHUNKER__ROWS_PER_CHUNK", "2000"),
        ]),
    );
    let addr = http_address(&mut run);
    browser.open(&format!("http://{addr}/"));
    // What the DOM shows, read as text, until the live numbers are there.
    let read = r#"
        const text = (sel) => { const e = document.querySelector(sel); return e ? e.textContent : null; };
        return {
          actors: [...document.querySelectorAll('#actor-graph g.actor')].map(g => ({
              name: g.dataset.actor, state: g.dataset.state, text: g.textContent })),
          edges: document.querySelectorAll('#actor-graph path.edge').length,
          points: Number(document.querySelector('#rate-chart')?.dataset.points || 0),
          inputLine: document.querySelector('#rate-input-line')?.getAttribute('points') || '',
          rateInput: text('#rate-input'),
          rateProcessed: text('#rate-processed'),
          detections: [...document.querySelectorAll('#detection-rows tr')].map(r => r.textContent),
          rows: text('#rows-processed .value'),
          det1: text('#det-PatId1 .value'),
          phase: text('#phase'),
          updated: text('#updated'),
          disconnected: !document.querySelector('#disconnected').hidden,
        };"#;
    let deadline = Instant::now() + Duration::from_secs(90);
    let page = loop {
        let page = browser.eval(read);
        let live = page["actors"].as_array().is_some_and(|a| a.len() >= 10)
            && page["points"].as_u64().unwrap_or(0) >= 5
            && page["detections"].as_array().is_some_and(|d| !d.is_empty())
            && page["det1"].as_str().is_some_and(|t| t.trim() != "0");
        if live {
            break page;
        }
        assert!(
            Instant::now() < deadline,
            "the page never showed live data: {page:#}"
        );
        std::thread::sleep(Duration::from_millis(500));
    };
    browser.screenshot(&artifacts().join("live-page.png"));

    // The graph: every stage, running, with its mailbox and restarts.
    let actors = page["actors"].as_array().unwrap();
    let names: Vec<&str> = actors.iter().map(|a| a["name"].as_str().unwrap()).collect();
    for stage in [
        "chunker",
        "watcher",
        "reader",
        "pair-table",
        "detector-patid1-0",
        "detector-patid2-0",
        "detector-patid3-0",
        "tracker",
        "batch-writer",
        "compactor",
    ] {
        assert!(names.contains(&stage), "{stage} missing from {names:?}");
    }
    for actor in actors {
        assert_eq!(actor["state"], "running", "{actor}");
        assert!(
            actor["text"].as_str().unwrap().contains("restarts 0"),
            "{actor}"
        );
    }
    assert!(page["edges"].as_u64().unwrap() >= 9);
    // The chart: points and current rates in rows/s.
    assert!(page["inputLine"].as_str().unwrap().split(' ').count() >= 5);
    assert!(
        page["rateInput"].as_str().unwrap().contains("rows/s"),
        "{page}"
    );
    assert!(
        page["rateProcessed"].as_str().unwrap().contains("rows/s"),
        "{page}"
    );
    // Detections as the database has them, with their pattern ids.
    let detections = page["detections"].as_array().unwrap();
    assert!(detections.len() <= 20);
    assert!(
        detections
            .iter()
            .all(|d| d.as_str().unwrap().contains("PatId")),
        "{detections:?}"
    );
    assert_eq!(page["phase"], "running");
    assert_eq!(page["disconnected"], false);
    assert!(page["updated"].as_str().unwrap().contains("updated"));
    let rows: u64 = page["rows"]
        .as_str()
        .unwrap()
        .replace(',', "")
        .trim()
        .parse()
        .unwrap();
    assert!(rows > 0);
    run.signal("TERM");
    let (status, log) = run.wait(Duration::from_secs(60));
    assert!(status.is_some_and(|s| s.success()), "{log:?}");
}

/// Runs `command` (a shell line) under a pseudo-terminal with `script`,
/// returning what the terminal showed.
fn under_pty(command: &str, dir: &Path) -> String {
    let output = Command::new("script")
        .args(["-qefc", command, "/dev/null"])
        .current_dir(dir)
        .env("TXPIPE__HTTP__LISTEN", "")
        .env("RUST_LOG", "warn")
        .output()
        .expect("script (util-linux) runs");
    assert!(output.status.success(), "{output:?}");
    String::from_utf8_lossy(&output.stdout).into_owned()
}

#[test]
fn progress_bars_show_on_a_terminal_and_stay_out_of_files() {
    let dir = tempfile::tempdir().unwrap();
    let bin = env!("CARGO_BIN_EXE_txpipe");
    let generate = format!(
        "{bin} generate --rows 200000 --customers 2000 --merchants 50 {}",
        dir.path().join("tty").display()
    );
    let shown = under_pty(&generate, dir.path());
    assert!(
        shown.contains("generated") && shown.contains("200,000/200,000 rows"),
        "{shown:?}"
    );
    assert!(shown.contains("ETA"), "{shown:?}");

    // stderr to a file: no bar, only what the command prints.
    let log = dir.path().join("stderr.log");
    let status = Command::new(bin)
        .args([
            "generate",
            "--rows",
            "200000",
            "--customers",
            "2000",
            "--merchants",
            "50",
        ])
        .arg(dir.path().join("file"))
        .env("RUST_LOG", "warn")
        .stderr(std::fs::File::create(&log).unwrap())
        .stdout(std::process::Stdio::null())
        .status()
        .unwrap();
    assert!(status.success());
    let stderr = std::fs::read_to_string(&log).unwrap();
    assert!(
        !stderr.contains("rows") && !stderr.contains('\x1b'),
        "{stderr:?}"
    );

    // The demo's bar follows the rows processed to the end.
    let demo = format!("{bin} demo --rows 30000");
    let shown = under_pty(&demo, dir.path());
    assert!(shown.contains("processed"), "{shown:?}");
    assert!(shown.contains("30,000/30,000 rows"), "{shown:?}");
}

#[test]
fn status_json_and_watch() {
    let dir = tempfile::tempdir().unwrap();
    let (transactions, importance) = support::generated(30_000, 600, 20, 1);
    let config = support::configs::embedded(dir.path(), &transactions, &importance, "");
    let config = config.to_str().unwrap();
    let bin = env!("CARGO_BIN_EXE_txpipe");
    let run = support::txpipe(
        &["run", "--config", config, "--exit-when-done"],
        dir.path(),
        &[],
    );
    assert!(run.status.success(), "{run:?}");

    let output = support::txpipe(&["status", "--config", config, "--json"], dir.path(), &[]);
    assert!(output.status.success(), "{output:?}");
    let status: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(status["chunks_produced"], 3);
    assert_eq!(status["chunks_processed"], 3);
    assert_eq!(status["lag_chunks"], 0);
    assert_eq!(status["rows_processed"], 30_000);
    assert_eq!(status["chunker_finished"], true);
    assert!(status["detections"]["PatId1"].is_u64());
    assert_eq!(status["owner"]["live"], false, "released at exit");

    // --watch refreshes in place until interrupted.
    let watch = Command::new(bin)
        .args(["status", "--config", config, "--watch", "0.2"])
        .env("RUST_LOG", "warn")
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    let _ = Command::new("kill")
        .args(["-INT", &watch.id().to_string()])
        .status();
    let out = watch.wait_with_output().unwrap();
    assert!(out.status.success(), "{out:?}");
    let shown = String::from_utf8_lossy(&out.stdout);
    let refreshes = shown.matches("\x1b[H").count();
    assert!(refreshes >= 3, "{refreshes} refreshes: {shown:?}");
    assert!(shown.contains("chunks processed    3"), "{shown:?}");
}

#[test]
fn a_port_in_use_or_a_bad_address_is_refused_naming_http_listen() {
    let dir = tempfile::tempdir().unwrap();
    let (transactions, importance) = support::generated(30_000, 600, 20, 1);
    let config = support::configs::embedded(dir.path(), &transactions, &importance, "");
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().to_string();
    for (listen, says) in [
        (port.as_str(), "could not listen"),
        (
            "localhost:9464",
            "must be empty (no HTTP server) or an address",
        ),
    ] {
        let output = support::txpipe(
            &[
                "run",
                "--config",
                config.to_str().unwrap(),
                "--exit-when-done",
            ],
            dir.path(),
            &[("TXPIPE__HTTP__LISTEN", listen)],
        );
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(1), "{listen}: {stderr}");
        assert!(
            stderr.contains("http.listen") && stderr.contains(says),
            "{listen}: {stderr}"
        );
    }
    // Nothing ran: no chunk was written.
    assert!(!dir.path().join("bucket/stream_chunks").exists());
}
