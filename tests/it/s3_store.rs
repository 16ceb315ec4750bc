//! The S3 object store against a real S3-protocol server (s3s-fs with SigV4
//! authentication on 127.0.0.1), never a mock of the client: round trips,
//! pagination past 1,000 keys, start-after, retries through injected
//! 500 / 503 SlowDown / hung requests, and streaming reads of sources.

use crate::support;

use std::io::Read;
use std::time::Duration;

use aws_sdk_s3::config::Credentials;
use bytes::Bytes;
use support::s3_server::{Faults, S3TestServer};
use txpipe::actors::wiring::retry_store;
use txpipe::config::{Settings, StorageKind};
use txpipe::store::ObjectStore;
use txpipe::store::s3::{S3Store, client_with};

fn storage(server: &S3TestServer, prefix: &str) -> txpipe::config::StorageConfig {
    let mut settings = Settings::load_with_env(None, []).unwrap();
    settings.storage.kind = StorageKind::S3;
    settings.storage.bucket = server.bucket().to_string();
    settings.storage.prefix = prefix.to_string();
    settings.storage.endpoint = server.endpoint();
    settings.storage.path_style = true;
    settings.storage.request_timeout_ms = 1_000;
    settings.storage
}

async fn client(server: &S3TestServer) -> aws_sdk_s3::Client {
    let credentials =
        Credentials::new(server.access_key(), server.secret_key(), None, None, "test");
    client_with(&storage(server, ""), Some(credentials)).await
}

async fn store(server: &S3TestServer, prefix: &str) -> S3Store {
    S3Store::new(client(server).await, server.bucket(), prefix)
}

/// `storage.sign_payload = "never"`: uploads skip the payload hash and still land intact.
#[tokio::test]
async fn unsigned_uploads_round_trip() {
    let server = S3TestServer::start("txpipe-unsigned");
    let store = store(&server, "").await.sign_payload(false);
    let body = Bytes::from("step,customer\n".repeat(70_000));
    store
        .put("stream_chunks/c.csv", body.clone())
        .await
        .unwrap();
    assert_eq!(store.get("stream_chunks/c.csv").await.unwrap(), Some(body));
}

#[tokio::test]
async fn round_trip_under_a_prefix() {
    let server = S3TestServer::start("txpipe-data");
    let store = store(&server, "run-1").await;
    store
        .put("stream_chunks/b.csv", Bytes::from("b"))
        .await
        .unwrap();
    store
        .put("stream_chunks/a.csv", Bytes::from("a"))
        .await
        .unwrap();
    store
        .put("detected_patterns/x.csv", Bytes::from("x"))
        .await
        .unwrap();
    assert_eq!(
        store.get("stream_chunks/a.csv").await.unwrap(),
        Some(Bytes::from("a"))
    );
    assert_eq!(store.get("stream_chunks/none.csv").await.unwrap(), None);
    assert_eq!(
        store.list("stream_chunks/", None, 10).await.unwrap(),
        vec!["stream_chunks/a.csv", "stream_chunks/b.csv"]
    );
    // Keys live under the prefix in the bucket.
    assert!(
        server
            .root()
            .join("txpipe-data/run-1/stream_chunks/a.csv")
            .is_file()
    );
    // Overwriting the same key is harmless (retried PUTs rely on it).
    store
        .put("stream_chunks/a.csv", Bytes::from("a"))
        .await
        .unwrap();
    assert_eq!(
        store.list("stream_chunks/", None, 10).await.unwrap().len(),
        2
    );
    assert!(store.describe().starts_with("s3://txpipe-data/run-1/"));
}

#[tokio::test]
async fn listing_pages_past_1000_keys_and_starts_after_a_key() {
    let server = S3TestServer::start("txpipe-data");
    let store = store(&server, "").await;
    let keys: Vec<String> = (0..1_205)
        .map(|i| format!("stream_chunks/chunk-{i:010}.csv"))
        .collect();
    use futures::StreamExt;
    let puts = futures::stream::iter(keys.iter())
        .map(|key| retry_store(5, "put", || store.put(key, Bytes::from_static(b"h\n"))))
        .buffer_unordered(16);
    for result in puts.collect::<Vec<_>>().await {
        result.unwrap();
    }
    let all = store.list("stream_chunks/", None, 5_000).await.unwrap();
    assert_eq!(all, keys, "every key, in order, across pages");
    let after = store
        .list("stream_chunks/", Some(&keys[999]), 5_000)
        .await
        .unwrap();
    assert_eq!(after, keys[1_000..].to_vec());
    let limited = store
        .list("stream_chunks/", Some(&keys[10]), 3)
        .await
        .unwrap();
    assert_eq!(limited, keys[11..14].to_vec());
    assert!(
        store
            .list("stream_chunks/", Some(&keys[1_204]), 10)
            .await
            .unwrap()
            .is_empty()
    );
}

#[tokio::test]
async fn transient_errors_and_timeouts_are_retried_and_nothing_is_lost() {
    let server = S3TestServer::start("txpipe-data");
    let store = store(&server, "").await;
    server.set_faults(Faults {
        internal_error: 0.1,
        slow_down: 0.15,
        hang: 0.02,
        ..Faults::default()
    });
    for i in 0..40 {
        let key = format!("detected_patterns/batch-{i:010}.csv");
        let body = Bytes::from(format!("line {i}\n"));
        retry_store(12, "put", || store.put(&key, body.clone()))
            .await
            .unwrap();
    }
    let listed = retry_store(12, "list", || store.list("detected_patterns/", None, 100))
        .await
        .unwrap();
    assert_eq!(listed.len(), 40);
    for (i, key) in listed.iter().enumerate() {
        let body = retry_store(12, "get", || store.get(key)).await.unwrap();
        assert_eq!(body, Some(Bytes::from(format!("line {i}\n"))));
    }
    assert!(
        server.injected_faults() > 5,
        "faults were injected: {}",
        server.injected_faults()
    );
    server.set_faults(Faults::default());
}

#[tokio::test]
async fn errors_that_retrying_cannot_fix_are_permanent() {
    let server = S3TestServer::start("txpipe-data");
    let wrong = Credentials::new(server.access_key(), "not-the-secret", None, None, "test");
    let client = client_with(&storage(&server, ""), Some(wrong)).await;
    let store = S3Store::new(client, server.bucket(), "");
    let error = store.put("a", Bytes::from("a")).await.unwrap_err();
    assert!(!error.is_transient(), "{error}");
    assert!(
        !error.to_string().contains("not-the-secret"),
        "secrets never appear in errors"
    );
    let missing = S3Store::new(self::client(&server).await, "no-such-bucket", "");
    let error = missing.list("stream_chunks/", None, 10).await.unwrap_err();
    assert!(!error.is_transient(), "{error}");
    assert!(error.to_string().contains("NoSuchBucket"), "{error}");
}

#[tokio::test]
async fn sources_stream_from_s3_with_ranged_reads() {
    let server = S3TestServer::start("txpipe-input");
    let client = client(&server).await;
    let (tx, _) = support::generated(60_000, 1_000, 20, 5);
    let data = std::fs::read(&tx).unwrap();
    S3Store::new(client.clone(), server.bucket(), "")
        .put("banksim/transactions.csv", Bytes::from(data.clone()))
        .await
        .unwrap();
    let location = "s3://txpipe-input/banksim/transactions.csv";
    let opened = tokio::task::spawn_blocking(move || {
        let sources = txpipe::store::source::Sources::with_s3_client(client);
        let mut whole = Vec::new();
        sources
            .open_at(location, 0)
            .unwrap()
            .read_to_end(&mut whole)
            .unwrap();
        let mut tail = Vec::new();
        sources
            .open_at(location, 1_000_000)
            .unwrap()
            .read_to_end(&mut tail)
            .unwrap();
        let missing = sources
            .open_at("s3://txpipe-input/nope.csv", 0)
            .err()
            .unwrap();
        // A resumed chunker at the very end of the file reads nothing.
        let mut end = Vec::new();
        let size = whole.len() as u64;
        sources
            .open_at(location, size)
            .unwrap()
            .read_to_end(&mut end)
            .unwrap();
        assert!(end.is_empty());
        (whole, tail, missing.to_string())
    })
    .await
    .unwrap();
    assert!(opened.0 == data, "whole object read back");
    assert!(opened.1 == data[1_000_000..], "ranged read from an offset");
    assert!(
        opened.2.contains("s3://txpipe-input/nope.csv"),
        "{}",
        opened.2
    );
}

#[tokio::test]
async fn slow_puts_are_only_slow() {
    let server = S3TestServer::start("txpipe-data");
    let store = store(&server, "").await;
    server.set_faults(Faults {
        put_delay: Duration::from_millis(300),
        ..Faults::default()
    });
    let started = std::time::Instant::now();
    store.put("a", Bytes::from("a")).await.unwrap();
    assert!(started.elapsed() >= Duration::from_millis(300));
}
