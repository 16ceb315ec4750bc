//! Progress bars for the long commands a person runs at a terminal
//! (`txpipe generate`, `txpipe demo`): rows done, rate and time left, on
//! stderr, only when stderr is a terminal. In a pipe, a file or a CI log
//! nothing is drawn, so logs and scripts stay clean.

use std::io::IsTerminal as _;
use std::sync::Arc;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::metrics::Metrics;

/// A bar over `total` rows labelled `what`; hidden unless stderr is a
/// terminal.
pub fn rows(total: u64, what: &'static str) -> ProgressBar {
    if !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::stderr_with_hz(8));
    bar.set_style(
        ProgressStyle::with_template(
            "{msg:>10} [{bar:32.cyan/blue}] {human_pos}/{human_len} rows  {per_sec:>14}  ETA {eta}",
        )
        .expect("a valid template")
        .progress_chars("=> "),
    );
    bar.set_message(what);
    bar
}

/// Moves `bar` with the rows a running pipeline has processed until the
/// bar is finished (by whoever ran the pipeline).
pub fn follow_processed(bar: ProgressBar, metrics: Arc<Metrics>) {
    if bar.is_hidden() {
        return;
    }
    std::thread::spawn(move || {
        while !bar.is_finished() {
            bar.set_position(metrics.rows_committed.get());
            std::thread::sleep(Duration::from_millis(125));
        }
    });
}
