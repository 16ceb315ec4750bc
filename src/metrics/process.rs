//! The process's own figures, read from `/proc` when asked (at a scrape,
//! by the live page, at the end of a run): resident memory, CPU time and
//! start time, under the names Prometheus's client libraries use
//! (`process_resident_memory_bytes`, `process_cpu_seconds_total`,
//! `process_start_time_seconds`), so standard dashboards find them.

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;

/// Encodes the `process_*` metrics at each scrape.
#[derive(Debug)]
pub struct ProcessCollector {
    start_time_seconds: f64,
}

impl ProcessCollector {
    pub fn new() -> ProcessCollector {
        let uptime = uptime_seconds().unwrap_or(0.0);
        ProcessCollector {
            start_time_seconds: crate::clock::unix_seconds() - uptime,
        }
    }
}

impl Collector for ProcessCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        if let Some(bytes) = resident_bytes() {
            let gauge = ConstGauge::new(bytes as i64);
            gauge.encode(encoder.encode_descriptor(
                "process_resident_memory_bytes",
                "Resident memory size in bytes",
                None,
                gauge.metric_type(),
            )?)?;
        }
        if let Some(seconds) = cpu_seconds() {
            let counter = ConstCounter::new(seconds);
            counter.encode(encoder.encode_descriptor(
                "process_cpu_seconds",
                "Total user and system CPU time spent in seconds",
                None,
                counter.metric_type(),
            )?)?;
        }
        let start = ConstGauge::new(self.start_time_seconds);
        start.encode(encoder.encode_descriptor(
            "process_start_time_seconds",
            "Start time of the process since unix epoch in seconds",
            None,
            start.metric_type(),
        )?)?;
        Ok(())
    }
}

/// A `kB` field of `/proc/self/status`, in bytes.
fn status_kb(field: &str) -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let kb: u64 = status
        .lines()
        .find(|l| l.starts_with(field))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()?;
    Some(kb * 1024)
}

/// Resident-set high-water mark of this process, in bytes.
pub fn peak_rss_bytes() -> Option<u64> {
    status_kb("VmHWM:")
}

/// Resident set of this process now, in bytes.
pub fn resident_bytes() -> Option<u64> {
    status_kb("VmRSS:")
}

/// Fields of `/proc/self/stat` after the command name (in parentheses).
fn stat_fields() -> Option<Vec<String>> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    Some(
        stat.rsplit_once(')')?
            .1
            .split_whitespace()
            .map(str::to_string)
            .collect(),
    )
}

/// USER_HZ, the unit of `/proc`'s CPU times: 100 on Linux.
const TICKS_PER_SECOND: f64 = 100.0;

/// CPU time (user + system) this process used, in seconds.
pub fn cpu_seconds() -> Option<f64> {
    let fields = stat_fields()?;
    let ticks: f64 = fields.get(11)?.parse::<f64>().ok()? + fields.get(12)?.parse::<f64>().ok()?;
    Some(ticks / TICKS_PER_SECOND)
}

/// How long this process has run, from its start time in `/proc`.
fn uptime_seconds() -> Option<f64> {
    let started_ticks: f64 = stat_fields()?.get(19)?.parse().ok()?;
    let uptime = std::fs::read_to_string("/proc/uptime").ok()?;
    let system_uptime: f64 = uptime.split_whitespace().next()?.parse().ok()?;
    Some((system_uptime - started_ticks / TICKS_PER_SECOND).max(0.0))
}
