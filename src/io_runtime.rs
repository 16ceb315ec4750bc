//! One multi-threaded tokio runtime per process for network clients (the S3
//! client and the PostgreSQL pool).
//!
//! Actors run on single-threaded arbiters. A pooled connection is driven by
//! the runtime that opened it, so if arbiters opened connections, a busy
//! arbiter would stall every other actor's queries on its connections.
//! Running all network I/O here keeps the clients' background tasks on
//! threads that do nothing else.

use std::future::Future;
use std::sync::OnceLock;

use tokio::runtime::{Builder, Handle, Runtime};

static RUNTIME: OnceLock<Runtime> = OnceLock::new();

pub fn handle() -> Handle {
    RUNTIME
        .get_or_init(|| {
            Builder::new_multi_thread()
                .worker_threads(2)
                .thread_name("txpipe-io")
                .enable_all()
                .build()
                .expect("cannot start the I/O runtime")
        })
        .handle()
        .clone()
}

/// Runs `work` on the I/O runtime and waits for it; a panic in `work`
/// resumes in the caller, where actors contain it.
pub async fn run<F>(work: F) -> F::Output
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    match handle().spawn(work).await {
        Ok(output) => output,
        Err(error) if error.is_panic() => std::panic::resume_unwind(error.into_panic()),
        Err(error) => panic!("I/O task cancelled: {error}"),
    }
}
