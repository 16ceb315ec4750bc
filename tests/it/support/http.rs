//! A running txpipe's HTTP endpoints, as the tests reach them: a GET, the
//! `/metrics` exposition parsed with a parser crate, and a free port to
//! have a process listen on.

use std::net::SocketAddr;
use std::time::Duration;

use prometheus_parse::{Scrape, Value};

/// A port on 127.0.0.1 nothing listens on now.
pub fn free_port() -> u16 {
    let socket = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    socket.local_addr().unwrap().port()
}

/// GET `path`: status and body (any status, not only 2xx).
pub fn get(addr: SocketAddr, path: &str) -> Result<(u16, String), ureq::Error> {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(5)))
        .build()
        .into();
    let mut response = agent.get(&format!("http://{addr}{path}")).call()?;
    let status = response.status().as_u16();
    Ok((status, response.body_mut().read_to_string()?))
}

/// The `/metrics` exposition, parsed.
pub fn parse(exposition: &str) -> Scrape {
    Scrape::parse(exposition.lines().map(|l| Ok(l.to_string()))).expect("a valid exposition")
}

/// The value of the sample `metric` whose labels include `labels`.
pub fn value(scrape: &Scrape, metric: &str, labels: &[(&str, &str)]) -> Option<f64> {
    scrape
        .samples
        .iter()
        .filter(|s| s.metric == metric)
        .find(|s| labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
        .map(|s| match &s.value {
            Value::Counter(v) | Value::Gauge(v) | Value::Untyped(v) => *v,
            Value::Histogram(buckets) => buckets.iter().map(|b| b.count).fold(0.0, f64::max),
            Value::Summary(_) => f64::NAN,
        })
}
