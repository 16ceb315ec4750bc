//! Object stores: the bucket that chunks, detection files and quarantine
//! objects live in.
//!
//! [`ObjectStore`] is the seam: the chunker PUTs chunk objects, the watcher
//! LISTs and GETs them, the batch writer PUTs detection files. A PUT is
//! atomic (an object is either absent or complete) and PUTting the same key
//! twice with the same body is harmless, which is what makes retries and
//! crash recovery exact. [`local`] keeps objects as files under a directory;
//! `s3` speaks the S3 protocol.
//!
//! [`source`] opens the master and lookup files for streaming reads.

pub mod local;
pub mod s3;
pub mod source;

use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;

use crate::config::{Settings, StorageKind};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The store did not answer or asked to slow down; retrying may help.
    #[error("object store unavailable: {0}")]
    Unavailable(String),
    /// The store refused (no space, read-only, permissions, bad key).
    #[error("object store error: {0}")]
    Failed(String),
}

impl StoreError {
    pub fn is_transient(&self) -> bool {
        matches!(self, StoreError::Unavailable(_))
    }
}

pub type StoreResult<T> = Result<T, StoreError>;

/// An object read with a size limit.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Sized {
    Body(Bytes),
    /// Larger than the limit: not read.
    TooLarge {
        size: u64,
    },
}

#[async_trait]
pub trait ObjectStore: Send + Sync {
    /// Where the store points, for logs (never includes credentials).
    fn describe(&self) -> String;

    /// Writes an object atomically, replacing any object with that key.
    async fn put(&self, key: &str, body: Bytes) -> StoreResult<()>;

    /// Reads a whole object; `None` if it does not exist.
    async fn get(&self, key: &str) -> StoreResult<Option<Bytes>>;

    /// Reads a whole object if it has at most `limit` bytes; a larger one
    /// is not read at all (memory stays bounded whatever the bucket holds).
    async fn get_at_most(&self, key: &str, limit: u64) -> StoreResult<Option<Sized>>;

    /// Copies an object inside the store (server-side where the store can,
    /// so the body never passes through this process); `false` if `from`
    /// does not exist.
    async fn copy(&self, from: &str, to: &str) -> StoreResult<bool>;

    /// Keys that start with `prefix` and sort after `start_after`, in
    /// ascending order, at most `limit` of them.
    async fn list(
        &self,
        prefix: &str,
        start_after: Option<&str>,
        limit: usize,
    ) -> StoreResult<Vec<String>>;
}

/// Opens the object store a configuration selects.
pub async fn open(settings: &Settings) -> anyhow::Result<Arc<dyn ObjectStore>> {
    match settings.storage.kind {
        StorageKind::Local => Ok(Arc::new(local::LocalStore::open(
            &settings.storage.root,
            settings.storage.fsync,
        )?)),
        StorageKind::S3 => Ok(Arc::new(s3::S3Store::connect(&settings.storage).await)),
    }
}
