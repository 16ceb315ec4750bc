//! What every actor shares, all of it immutable wiring: settings, the two
//! stores and the ownership fence, the name table, the metrics facility and
//! the supervision policy. Nothing
//! here carries control: work and control travel as messages. Plus the
//! two helpers every actor uses: panic containment and retries with
//! backoff.

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::{Duration, Instant};

use backon::{ExponentialBuilder, Retryable};
use futures::FutureExt;
use tracing::warn;

use super::faults::FaultPlan;
use super::supervised::Supervision;
use crate::config::Settings;
use crate::db::{DbError, Fence, StateStore};
use crate::metrics::{Backend, Metrics};
use crate::names::Names;
use crate::store::source::Sources;
use crate::store::{ObjectStore, StoreError};

pub struct Wiring {
    pub settings: Settings,
    pub objects: Arc<dyn ObjectStore>,
    /// Opens the master and lookup files (local or S3).
    pub sources: Sources,
    pub state: Arc<dyn StateStore>,
    /// The ownership lease this process runs under: every state change
    /// carries it, and the database refuses it once another process took
    /// the lease over.
    pub fence: Fence,
    pub names: Arc<Names>,
    /// The cluster's coordination tables, when this process is a worker
    /// of a cluster (`cluster.enabled`); `state` is the same database.
    pub cluster: Option<Arc<crate::db::postgres::PostgresStore>>,
    pub metrics: Arc<Metrics>,
    pub supervision: Arc<Supervision>,
    pub faults: FaultPlan,
    /// When Mechanism Y started (the detections' `YStartTime`).
    pub y_start_time: String,
}

/// Runs `work`, turning a panic into an error message.
pub fn contain<R>(work: impl FnOnce() -> R) -> Result<R, String> {
    std::panic::catch_unwind(AssertUnwindSafe(work)).map_err(|p| panic_message(p.as_ref()))
}

/// Awaits `work`, turning a panic into an error message.
pub async fn contain_async<F: Future>(work: F) -> Result<F::Output, String> {
    AssertUnwindSafe(work)
        .catch_unwind()
        .await
        .map_err(|p| panic_message(p.as_ref()))
}

pub fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    let text = payload
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "non-text panic payload".to_string());
    format!("panic: {text}")
}

fn backoff(max_attempts: u32) -> ExponentialBuilder {
    ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(100))
        .with_max_delay(Duration::from_secs(5))
        .with_jitter()
        .with_max_times(max_attempts.saturating_sub(1) as usize)
}

/// Retries a database call that failed transiently, with exponential
/// backoff, logging each retry.
pub async fn retry_db<T, F, Fut>(max_attempts: u32, what: &str, call: F) -> Result<T, DbError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, DbError>>,
{
    call.retry(backoff(max_attempts))
        .sleep(tokio::time::sleep)
        .when(DbError::is_transient)
        .notify(|error, delay| {
            warn!(operation = what, %error, retry_in_ms = delay.as_millis() as u64,
                  "database call failed; retrying");
        })
        .await
}

/// Retries an object store call that failed transiently, with exponential
/// backoff, logging each retry.
pub async fn retry_store<T, F, Fut>(max_attempts: u32, what: &str, call: F) -> Result<T, StoreError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, StoreError>>,
{
    call.retry(backoff(max_attempts))
        .sleep(tokio::time::sleep)
        .when(StoreError::is_transient)
        .notify(|error, delay| {
            warn!(operation = what, %error, retry_in_ms = delay.as_millis() as u64,
                  "object store call failed; retrying");
        })
        .await
}

/// One attempt of the store call `what` on `backend`: timed, and counted
/// when it failed transiently (the retry helpers then try again).
async fn measured<T, E>(
    metrics: &Metrics,
    backend: Backend,
    what: &'static str,
    is_transient: fn(&E) -> bool,
    attempt: impl Future<Output = Result<T, E>>,
) -> Result<T, E> {
    let started = Instant::now();
    let result = attempt.await;
    metrics.store_call(backend, what, started.elapsed());
    if result.as_ref().is_err_and(is_transient) {
        metrics.retried(backend, what);
    }
    result
}

impl Wiring {
    /// [`retry_db`] with the configured attempts, each attempt timed and
    /// each retry counted under `what`. A write the database refused
    /// because another process took the ownership lease over stops the
    /// whole process at once (see [`Supervision::lost_lease`]).
    pub async fn db<T, F, Fut>(&self, what: &'static str, mut call: F) -> Result<T, DbError>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, DbError>>,
    {
        let result = retry_db(self.settings.database.max_attempts, what, || {
            measured(
                &self.metrics,
                Backend::Database,
                what,
                DbError::is_transient,
                call(),
            )
        })
        .await;
        if let Err(DbError::Fenced(message)) = &result {
            self.supervision.lost_lease(message);
        }
        result
    }

    /// [`retry_store`] with the configured attempts, each attempt timed and
    /// each retry counted under `what`.
    pub async fn store<T, F, Fut>(&self, what: &'static str, mut call: F) -> Result<T, StoreError>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, StoreError>>,
    {
        retry_store(self.settings.storage.max_attempts, what, || {
            measured(
                &self.metrics,
                Backend::ObjectStore,
                what,
                StoreError::is_transient,
                call(),
            )
        })
        .await
    }
}
