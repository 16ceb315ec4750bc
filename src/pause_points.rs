//! Pause points for crash tests, inert unless the hidden `--pause-at POINT`
//! option of `txpipe run` names them. At an enabled point the process
//! prints `pause point reached: POINT` on stderr and sleeps `--pause-ms`,
//! so a test harness can SIGKILL it at exactly that moment: between a
//! chunk's pending key and its PUT, inside a commit transaction, between a
//! detection batch's assignment and its PUT, and so on.
//!
//! | point | where |
//! |---|---|
//! | `chunk-put` | chunker: pending key saved, chunk not yet PUT |
//! | `chunk-saved` | chunker: chunk PUT, position not yet advanced |
//! | `temp-written` | local store: temporary file written, not yet renamed |
//! | `chunk-fetch` | watcher: chunk listed, not yet read |
//! | `commit` | state store: everything written, transaction not yet committed |
//! | `batch-assigned` | batch writer: batch assigned, file not yet PUT |
//! | `batch-put` | batch writer: file PUT, batch not yet marked written |
//! | `lookup-load` | start-up: the lookup file is about to be read and loaded |
//!
//! Compiled only with the `test-hooks` feature (tests and examples);
//! without it, [`reached`] is an empty inline function.

#[cfg(feature = "test-hooks")]
use std::sync::OnceLock;
use std::time::Duration;

#[cfg(feature = "test-hooks")]
struct Enabled {
    points: Vec<String>,
    pause: Duration,
}

#[cfg(feature = "test-hooks")]
static ENABLED: OnceLock<Enabled> = OnceLock::new();

pub const ALL: [&str; 8] = [
    "chunk-put",
    "chunk-saved",
    "temp-written",
    "chunk-fetch",
    "commit",
    "batch-assigned",
    "batch-put",
    "lookup-load",
];

/// Enables `points` (or every point with `all`) for the whole process.
pub fn enable(points: Vec<String>, pause: Duration) -> Result<(), String> {
    for point in &points {
        if point != "all" && !ALL.contains(&point.as_str()) {
            return Err(format!(
                "unknown pause point {point:?}; known: all, {}",
                ALL.join(", ")
            ));
        }
    }
    #[cfg(feature = "test-hooks")]
    return ENABLED
        .set(Enabled { points, pause })
        .map_err(|_| "pause points are already enabled".to_string());
    #[cfg(not(feature = "test-hooks"))]
    {
        let _ = pause;
        Err("this build has no pause points (build with --features test-hooks)".to_string())
    }
}

/// Marks that the process reached `point`.
#[cfg(not(feature = "test-hooks"))]
#[inline(always)]
pub fn reached(_point: &'static str) {}

/// Marks that the process reached `point`.
#[cfg(feature = "test-hooks")]
#[inline]
pub fn reached(point: &'static str) {
    if let Some(enabled) = ENABLED.get()
        && enabled.points.iter().any(|p| p == point || p == "all")
    {
        eprintln!("pause point reached: {point}");
        std::thread::sleep(enabled.pause);
    }
}
