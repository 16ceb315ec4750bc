//! The S3 object store (AWS S3 or any S3-compatible store: MinIO, Garage,
//! Ceph) through `aws-sdk-s3`.
//!
//! Credentials come from the standard AWS chain (environment, profile, web
//! identity, container or instance role) and are never logged. Every call
//! has a per-attempt timeout; retries are txpipe's own (exponential backoff,
//! one log line per retry), so the SDK's retries are switched off. Listing
//! uses ListObjectsV2 with `start-after` and continuation tokens, so each
//! poll only reads keys newer than the last one seen. All calls run on the
//! process's I/O runtime.

use std::time::Duration;

use async_trait::async_trait;
use aws_config::BehaviorVersion;
use aws_config::retry::RetryConfig;
use aws_config::timeout::TimeoutConfig;
use aws_sdk_s3::Client;
use aws_sdk_s3::config::{Credentials, Region};
use aws_sdk_s3::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_sdk_s3::primitives::ByteStream;
use bytes::Bytes;

use super::{ObjectStore, Sized, StoreError, StoreResult};

/// What CopySource escapes: everything but unreserved characters and `/`.
const COPY_SOURCE: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
    .remove(b'/')
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'~');
use crate::config::StorageConfig;
use crate::io_runtime;

#[derive(Clone)]
pub struct S3Store {
    client: Client,
    bucket: String,
    /// Key prefix inside the bucket: empty or ending in `/`.
    prefix: String,
    /// See [`crate::config::PayloadSigning`].
    sign_payload: bool,
}

/// The HTTPS client of every S3 client (and of the credential providers):
/// the SDK's own, over rustls with the ring crypto provider.
pub fn http_client() -> aws_sdk_s3::config::SharedHttpClient {
    use aws_smithy_http_client::tls::{Provider, rustls_provider::CryptoMode};
    aws_smithy_http_client::Builder::new()
        .tls_provider(Provider::Rustls(CryptoMode::Ring))
        .build_https()
}

/// Builds an S3 client from the storage settings and the default
/// credential chain.
pub async fn client(storage: &StorageConfig) -> Client {
    client_with(storage, None).await
}

/// Like [`client`], with explicit credentials instead of the default chain
/// (tests and benchmarks talk to a local server this way).
pub async fn client_with(storage: &StorageConfig, credentials: Option<Credentials>) -> Client {
    let storage = storage.clone();
    io_runtime::run(async move {
        let timeouts = TimeoutConfig::builder()
            .connect_timeout(Duration::from_secs(5))
            .operation_attempt_timeout(Duration::from_millis(storage.request_timeout_ms))
            .build();
        let mut loader = aws_config::defaults(BehaviorVersion::latest())
            .http_client(http_client())
            .region(Region::new(storage.region.clone()))
            .timeout_config(timeouts)
            .retry_config(RetryConfig::disabled());
        if let Some(credentials) = credentials {
            loader = loader.credentials_provider(credentials);
        }
        let shared = loader.load().await;
        let mut config =
            aws_sdk_s3::config::Builder::from(&shared).force_path_style(storage.path_style);
        if !storage.endpoint.is_empty() {
            config = config.endpoint_url(&storage.endpoint);
        }
        Client::from_conf(config.build())
    })
    .await
}

fn normalize_prefix(prefix: &str) -> String {
    let prefix = prefix.trim_matches('/');
    if prefix.is_empty() {
        String::new()
    } else {
        format!("{prefix}/")
    }
}

/// Whether an S3 error is worth retrying, and its message.
fn classify<E>(
    operation: &str,
    key: &str,
    error: SdkError<E, aws_sdk_s3::config::http::HttpResponse>,
) -> StoreError
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
{
    let retryable = match &error {
        SdkError::TimeoutError(_) | SdkError::DispatchFailure(_) | SdkError::ResponseError(_) => {
            true
        }
        SdkError::ServiceError(service) => {
            let status = service.raw().status().as_u16();
            let code = service.err().code().unwrap_or_default();
            status >= 500
                || status == 429
                || matches!(
                    code,
                    "SlowDown" | "RequestTimeout" | "InternalError" | "ServiceUnavailable"
                )
        }
        _ => false,
    };
    let message = format!("{operation} {key:?}: {}", describe(&error));
    if retryable {
        StoreError::Unavailable(message)
    } else {
        StoreError::Failed(message)
    }
}

/// A one-line account of an S3 error: HTTP status, S3 error code and
/// message, or the transport failure.
fn describe<E>(error: &SdkError<E, aws_sdk_s3::config::http::HttpResponse>) -> String
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
{
    match error {
        SdkError::ServiceError(service) => {
            let status = service.raw().status().as_u16();
            let err = service.err();
            format!(
                "HTTP {status} {}: {}",
                err.code().unwrap_or("error"),
                err.message().unwrap_or("(no message)")
            )
        }
        SdkError::TimeoutError(_) => "request timed out".to_string(),
        other => DisplayErrorContext(other).to_string(),
    }
}

impl S3Store {
    pub async fn connect(storage: &StorageConfig) -> S3Store {
        S3Store::new(client(storage).await, &storage.bucket, &storage.prefix)
            .sign_payload(storage.sign_payload.signs(&storage.endpoint))
    }

    /// A store whose uploads sign their payload; see [`S3Store::sign_payload`].
    pub fn new(client: Client, bucket: &str, prefix: &str) -> S3Store {
        S3Store {
            client,
            bucket: bucket.to_string(),
            prefix: normalize_prefix(prefix),
            sign_payload: true,
        }
    }

    /// Whether uploads sign a SHA-256 of their body; without it they are
    /// still covered by their signed CRC32 checksum header.
    pub fn sign_payload(mut self, sign: bool) -> S3Store {
        self.sign_payload = sign;
        self
    }

    fn full_key(&self, key: &str) -> String {
        format!("{}{key}", self.prefix)
    }
}

#[async_trait]
impl ObjectStore for S3Store {
    fn describe(&self) -> String {
        format!("s3://{}/{}", self.bucket, self.prefix)
    }

    async fn put(&self, key: &str, body: Bytes) -> StoreResult<()> {
        let store = self.clone();
        let key = key.to_string();
        io_runtime::run(async move {
            let request = store
                .client
                .put_object()
                .bucket(&store.bucket)
                .key(store.full_key(&key))
                .content_type(if key.ends_with(".csv") {
                    "text/csv"
                } else {
                    "application/octet-stream"
                })
                .body(ByteStream::from(body));
            let sent = if store.sign_payload {
                request.send().await
            } else {
                request.customize().disable_payload_signing().send().await
            };
            sent.map(|_| ()).map_err(|e| classify("PUT", &key, e))
        })
        .await
    }

    async fn get(&self, key: &str) -> StoreResult<Option<Bytes>> {
        Ok(match self.get_at_most(key, u64::MAX).await? {
            Some(Sized::Body(body)) => Some(body),
            // No object is larger than u64::MAX bytes.
            Some(Sized::TooLarge { size }) => {
                return Err(StoreError::Failed(format!("GET {key:?}: {size} bytes")));
            }
            None => None,
        })
    }

    async fn get_at_most(&self, key: &str, limit: u64) -> StoreResult<Option<Sized>> {
        let store = self.clone();
        let key = key.to_string();
        io_runtime::run(async move {
            let response = store
                .client
                .get_object()
                .bucket(&store.bucket)
                .key(store.full_key(&key))
                .send()
                .await;
            let response = match response {
                Ok(response) => response,
                Err(SdkError::ServiceError(service)) if service.err().is_no_such_key() => {
                    return Ok(None);
                }
                Err(error) => return Err(classify("GET", &key, error)),
            };
            let size = response.content_length().map_or(0, |n| n.max(0) as u64);
            if size > limit {
                // Dropping the unread body closes the connection.
                return Ok(Some(Sized::TooLarge { size }));
            }
            let body =
                response.body.collect().await.map_err(|e| {
                    StoreError::Unavailable(format!("GET {key:?}: reading body: {e}"))
                })?;
            Ok(Some(Sized::Body(body.into_bytes())))
        })
        .await
    }

    async fn copy(&self, from: &str, to: &str) -> StoreResult<bool> {
        let store = self.clone();
        let (from, to) = (from.to_string(), to.to_string());
        io_runtime::run(async move {
            // CopySource is "bucket/key", URL-encoded (slashes kept).
            let source = format!(
                "{}/{}",
                store.bucket,
                percent_encoding::utf8_percent_encode(&store.full_key(&from), COPY_SOURCE)
            );
            let copied = store
                .client
                .copy_object()
                .bucket(&store.bucket)
                .key(store.full_key(&to))
                .copy_source(source)
                .send()
                .await;
            match copied {
                Ok(_) => Ok(true),
                Err(SdkError::ServiceError(service))
                    if service.raw().status().as_u16() == 404
                        || service.err().code() == Some("NoSuchKey") =>
                {
                    Ok(false)
                }
                Err(error) => Err(classify("COPY", &from, error)),
            }
        })
        .await
    }

    async fn list(
        &self,
        prefix: &str,
        start_after: Option<&str>,
        limit: usize,
    ) -> StoreResult<Vec<String>> {
        let store = self.clone();
        let prefix = self.full_key(prefix);
        let start_after = start_after.map(|key| self.full_key(key));
        io_runtime::run(async move {
            let mut keys = Vec::new();
            let mut token: Option<String> = None;
            loop {
                let page_size = (limit - keys.len()).min(1000) as i32;
                let page = store
                    .client
                    .list_objects_v2()
                    .bucket(&store.bucket)
                    .prefix(&prefix)
                    .set_start_after(start_after.clone())
                    .set_continuation_token(token.take())
                    .max_keys(page_size)
                    .send()
                    .await
                    .map_err(|e| classify("LIST", &prefix, e))?;
                for object in page.contents() {
                    if let Some(key) = object.key().and_then(|k| k.strip_prefix(&store.prefix)) {
                        keys.push(key.to_string());
                    }
                }
                token = page.next_continuation_token().map(str::to_string);
                if keys.len() >= limit || !page.is_truncated().unwrap_or(false) || token.is_none() {
                    break;
                }
            }
            keys.truncate(limit);
            Ok(keys)
        })
        .await
    }
}

/// A blocking reader of `s3://bucket/key` from byte `offset`, streaming the
/// object through a small buffer. Call it from a blocking thread.
pub fn open_object_at(
    client: &Client,
    bucket: &str,
    key: &str,
    offset: u64,
) -> std::io::Result<Box<dyn std::io::Read + Send>> {
    let request = client
        .get_object()
        .bucket(bucket)
        .key(key)
        .set_range((offset > 0).then(|| format!("bytes={offset}-")));
    let handle = io_runtime::handle();
    let response = match handle.block_on(async move { request.send().await }) {
        Ok(response) => response,
        // Reading from the very end (a chunker resuming a finished file):
        // S3 answers 416 to a range that starts at the object's size.
        Err(SdkError::ServiceError(service))
            if service.err().meta().code() == Some("InvalidRange") =>
        {
            return Ok(Box::new(std::io::empty()));
        }
        Err(error) => {
            return Err(std::io::Error::other(format!(
                "cannot read s3://{bucket}/{key}: {}",
                describe(&error)
            )));
        }
    };
    let reader = response.body.into_async_read();
    Ok(Box::new(tokio_util::io::SyncIoBridge::new_with_handle(
        reader, handle,
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefixes_end_in_one_slash() {
        assert_eq!(normalize_prefix(""), "");
        assert_eq!(normalize_prefix("/"), "");
        assert_eq!(normalize_prefix("txpipe"), "txpipe/");
        assert_eq!(normalize_prefix("/a/b/"), "a/b/");
    }
}
