//! Self-test of the in-process S3 test server (tests/it/support/s3_server.rs) with the real
//! aws-sdk-s3 client: round trips, listing and pagination, SigV4, checksums and fault injection.

use crate::support::s3_server;

use std::time::{Duration, Instant};

use aws_sdk_s3::Client;
use aws_sdk_s3::config::retry::RetryConfig;
use aws_sdk_s3::config::timeout::TimeoutConfig;
use aws_sdk_s3::config::{Credentials, Region};
use aws_sdk_s3::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::ChecksumMode;
use futures::StreamExt;
use s3_server::{Faults, S3TestServer};

/// A client as production code would build one, but with explicit static credentials.
/// The SDK's default checksum settings (`WhenSupported` for both request calculation and
/// response validation) are kept on purpose: they work against s3s-fs 0.14.
fn client_with(server: &S3TestServer, retry: RetryConfig, timeouts: TimeoutConfig) -> Client {
    let config = aws_sdk_s3::Config::builder()
        .http_client(txpipe::store::s3::http_client())
        .credentials_provider(Credentials::new(
            server.access_key(),
            server.secret_key(),
            None,
            None,
            "s3-test-server",
        ))
        .region(Region::new("us-east-1"))
        .endpoint_url(server.endpoint())
        .force_path_style(true)
        .retry_config(retry)
        .timeout_config(timeouts)
        .build();
    Client::from_conf(config)
}

fn client(server: &S3TestServer) -> Client {
    client_with(server, RetryConfig::disabled(), TimeoutConfig::disabled())
}

async fn put(client: &Client, bucket: &str, key: &str, body: &[u8]) {
    client
        .put_object()
        .bucket(bucket)
        .key(key)
        .body(ByteStream::from(body.to_vec()))
        .send()
        .await
        .unwrap_or_else(|e| panic!("put {key}: {e:?}"));
}

async fn get(client: &Client, bucket: &str, key: &str) -> Vec<u8> {
    let out = client
        .get_object()
        .bucket(bucket)
        .key(key)
        .send()
        .await
        .unwrap_or_else(|e| panic!("get {key}: {e:?}"));
    out.body.collect().await.unwrap().into_bytes().to_vec()
}

/// Lists `prefix` page by page with explicit continuation tokens; returns the pages' keys.
async fn list_pages(
    client: &Client,
    bucket: &str,
    start_after: Option<&str>,
    max_keys: i32,
) -> Vec<Vec<String>> {
    let mut pages = Vec::new();
    let mut token: Option<String> = None;
    loop {
        let out = client
            .list_objects_v2()
            .bucket(bucket)
            .max_keys(max_keys)
            .set_start_after(start_after.map(str::to_owned))
            .set_continuation_token(token.clone())
            .send()
            .await
            .expect("list_objects_v2");
        let keys: Vec<String> = out
            .contents()
            .iter()
            .map(|o| o.key().unwrap().to_owned())
            .collect();
        assert!(keys.len() <= max_keys as usize);
        pages.push(keys);
        if out.is_truncated() == Some(true) {
            token = Some(
                out.next_continuation_token()
                    .expect("truncated page without a continuation token")
                    .to_owned(),
            );
        } else {
            assert!(out.next_continuation_token().is_none());
            break;
        }
        assert!(pages.len() < 100, "listing does not terminate");
    }
    pages
}

#[tokio::test]
async fn put_get_head_delete_round_trip() {
    let server = S3TestServer::start("roundtrip");
    let c = client(&server);
    let body = b"date,amount\n2024-01-01,12.50\n".repeat(1000);

    put(&c, server.bucket(), "in/part-0001.csv", &body).await;
    assert_eq!(get(&c, server.bucket(), "in/part-0001.csv").await, body);

    // The bucket is a plain directory under root(); the object is a plain file in it.
    let on_disk = std::fs::read(server.root().join("roundtrip/in/part-0001.csv")).unwrap();
    assert_eq!(on_disk, body);

    let head = c
        .head_object()
        .bucket(server.bucket())
        .key("in/part-0001.csv")
        .send()
        .await
        .unwrap();
    assert_eq!(head.content_length(), Some(body.len() as i64));

    let missing = c
        .get_object()
        .bucket(server.bucket())
        .key("nope")
        .send()
        .await
        .unwrap_err();
    assert_eq!(missing.raw_response().unwrap().status().as_u16(), 404);
    assert_eq!(missing.code(), Some("NoSuchKey"));

    c.delete_object()
        .bucket(server.bucket())
        .key("in/part-0001.csv")
        .send()
        .await
        .unwrap();
    assert!(!server.root().join("roundtrip/in/part-0001.csv").exists());

    assert!(server.requests() >= 5, "requests: {}", server.requests());
    assert_eq!(server.injected_faults(), 0);
}

/// GET bodies are streamed in large frames by the test server's own reader (not s3s-fs's): whole
/// objects, ranges that start and end inside frames, suffix ranges and an empty object all come
/// back byte for byte, with the stored checksum on whole-object GETs.
#[tokio::test]
async fn large_gets_and_ranges_return_the_exact_bytes() {
    let server = S3TestServer::start("largegets");
    let c = client(&server);
    let body: Vec<u8> = (0..2_600_000u32).map(|i| (i * 7 + i / 251) as u8).collect();
    put(&c, server.bucket(), "big.bin", &body).await;
    put(&c, server.bucket(), "empty.bin", b"").await;

    let whole = c
        .get_object()
        .bucket(server.bucket())
        .key("big.bin")
        .checksum_mode(ChecksumMode::Enabled)
        .send()
        .await
        .unwrap();
    assert!(whole.checksum_crc32().is_some());
    assert_eq!(whole.content_length(), Some(body.len() as i64));
    assert!(whole.body.collect().await.unwrap().into_bytes() == body);

    for (range, expected) in [
        ("bytes=0-0", &body[..1]),
        ("bytes=1048575-1048577", &body[1_048_575..1_048_578]),
        ("bytes=999999-2222222", &body[999_999..2_222_223]),
        ("bytes=2000000-", &body[2_000_000..]),
        ("bytes=-1500000", &body[body.len() - 1_500_000..]),
    ] {
        let out = c
            .get_object()
            .bucket(server.bucket())
            .key("big.bin")
            .range(range)
            .send()
            .await
            .unwrap_or_else(|e| panic!("{range}: {e:?}"));
        assert_eq!(out.content_length(), Some(expected.len() as i64), "{range}");
        let got = out.body.collect().await.unwrap().into_bytes();
        assert!(got == expected, "{range}: wrong bytes");
    }
    assert!(get(&c, server.bucket(), "empty.bin").await.is_empty());
}

/// Uploads without payload signing (`UNSIGNED-PAYLOAD`, what `storage.sign_payload = "never"`
/// sends) are accepted, still carry a CRC32 checksum the server verifies, and still need a valid
/// signature.
#[tokio::test]
async fn unsigned_payload_uploads_are_checked_by_their_checksum() {
    let server = S3TestServer::start("unsigned");
    let c = client(&server);
    let body = b"step,customer\n".repeat(50_000);
    let out = c
        .put_object()
        .bucket(server.bucket())
        .key("k.csv")
        .body(ByteStream::from(body.clone()))
        .customize()
        .disable_payload_signing()
        .send()
        .await
        .unwrap();
    assert!(out.checksum_crc32().is_some(), "the upload carried a CRC32");
    assert_eq!(get(&c, server.bucket(), "k.csv").await, body);

    // A wrong checksum is refused even though the payload is not signed.
    let err = c
        .put_object()
        .bucket(server.bucket())
        .key("bad.csv")
        .body(ByteStream::from(body.clone()))
        .checksum_crc32("AAAAAA==")
        .customize()
        .disable_payload_signing()
        .send()
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some("BadDigest"), "{err:?}");
}

#[tokio::test]
async fn default_flexible_checksums_work() {
    let server = S3TestServer::start("checksums");
    let c = client(&server);
    let body = vec![7u8; 300_000];

    // Default request checksum calculation (WhenSupported) sends CRC32 in an aws-chunked
    // trailer; the server checks it and returns it.
    let put_out = c
        .put_object()
        .bucket(server.bucket())
        .key("k")
        .body(ByteStream::from(body.clone()))
        .send()
        .await
        .expect("PUT with the default CRC32 checksum");
    assert!(put_out.checksum_crc32().is_some(), "{put_out:?}");
    assert!(put_out.e_tag().is_some());

    // GET with checksum mode on: the SDK validates the body against the stored CRC32.
    let get_out = c
        .get_object()
        .bucket(server.bucket())
        .key("k")
        .checksum_mode(ChecksumMode::Enabled)
        .send()
        .await
        .unwrap();
    assert_eq!(get_out.checksum_crc32(), put_out.checksum_crc32());
    let got = get_out.body.collect().await.unwrap().into_bytes();
    assert_eq!(got.as_ref(), body.as_slice());

    // A ranged GET carries no checksum and still works.
    let ranged = c
        .get_object()
        .bucket(server.bucket())
        .key("k")
        .range("bytes=10-19")
        .send()
        .await
        .unwrap();
    let got = ranged.body.collect().await.unwrap().into_bytes();
    assert_eq!(got.as_ref(), &body[10..20]);
}

#[tokio::test]
async fn streaming_put_sends_a_crc32_trailer_that_the_server_checks() {
    let server = S3TestServer::start("trailer");
    let c = client(&server);
    // A file-backed body is a streaming body: the SDK sends it aws-chunked with the CRC32 in
    // an `x-amz-checksum-crc32` trailer (in-memory bodies get a plain header instead).
    let body: Vec<u8> = (0..1_000_000u32).map(|i| (i % 251) as u8).collect();
    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(file.path(), &body).unwrap();
    let put_out = c
        .put_object()
        .bucket(server.bucket())
        .key("streamed")
        .body(ByteStream::from_path(file.path()).await.unwrap())
        .send()
        .await
        .expect("streaming PUT with a CRC32 trailer");
    assert!(put_out.checksum_crc32().is_some(), "{put_out:?}");
    let get_out = c
        .get_object()
        .bucket(server.bucket())
        .key("streamed")
        .checksum_mode(ChecksumMode::Enabled)
        .send()
        .await
        .unwrap();
    assert_eq!(get_out.checksum_crc32(), put_out.checksum_crc32());
    let got = get_out.body.collect().await.unwrap().into_bytes();
    assert!(got.as_ref() == body.as_slice());
}

#[tokio::test]
async fn multipart_upload_with_default_checksums() {
    let server = S3TestServer::start("multipart");
    let c = client(&server);
    let part_len = 5 * 1024 * 1024;
    let parts: Vec<Vec<u8>> = vec![vec![1u8; part_len], vec![2u8; part_len], vec![3u8; 1000]];

    let upload = c
        .create_multipart_upload()
        .bucket(server.bucket())
        .key("big")
        .send()
        .await
        .unwrap();
    let upload_id = upload.upload_id().unwrap();
    let mut completed = Vec::new();
    for (i, part) in parts.iter().enumerate() {
        let n = i as i32 + 1;
        let out = c
            .upload_part()
            .bucket(server.bucket())
            .key("big")
            .upload_id(upload_id)
            .part_number(n)
            .body(ByteStream::from(part.clone()))
            .send()
            .await
            .unwrap();
        completed.push(
            aws_sdk_s3::types::CompletedPart::builder()
                .part_number(n)
                .e_tag(out.e_tag().unwrap())
                .set_checksum_crc32(out.checksum_crc32().map(str::to_owned))
                .build(),
        );
    }
    c.complete_multipart_upload()
        .bucket(server.bucket())
        .key("big")
        .upload_id(upload_id)
        .multipart_upload(
            aws_sdk_s3::types::CompletedMultipartUpload::builder()
                .set_parts(Some(completed))
                .build(),
        )
        .send()
        .await
        .expect("complete multipart upload");
    let got = get(&c, server.bucket(), "big").await;
    assert!(got == parts.concat());
}

#[tokio::test]
async fn list_objects_v2_pagination_and_start_after() {
    let server = S3TestServer::start("listing");
    let c = client(&server);
    let keys: Vec<String> = (0..1005).map(|i| format!("obj-{i:04}")).collect();

    futures::stream::iter(keys.iter())
        .map(|k| {
            let c = c.clone();
            let bucket = server.bucket().to_owned();
            async move { put(&c, &bucket, k, k.as_bytes()).await }
        })
        .buffer_unordered(16)
        .collect::<Vec<()>>()
        .await;

    // Full listing: 1000 + 5 with a continuation token.
    let pages = list_pages(&c, server.bucket(), None, 1000).await;
    assert_eq!(
        pages.iter().map(Vec::len).collect::<Vec<_>>(),
        vec![1000, 5]
    );
    assert_eq!(pages.concat(), keys);

    // Default max_keys is 1000 too.
    let first = c
        .list_objects_v2()
        .bucket(server.bucket())
        .send()
        .await
        .unwrap();
    assert_eq!(first.key_count(), Some(1000));
    assert_eq!(first.is_truncated(), Some(true));

    // start_after alone.
    let pages = list_pages(&c, server.bucket(), Some("obj-0499"), 1000).await;
    assert_eq!(pages.len(), 1);
    assert_eq!(pages[0], keys[500..]);

    // start_after combined with continuation tokens.
    let pages = list_pages(&c, server.bucket(), Some("obj-0002"), 500).await;
    assert_eq!(
        pages.iter().map(Vec::len).collect::<Vec<_>>(),
        vec![500, 500, 2]
    );
    assert_eq!(pages.concat(), keys[3..]);

    // start_after a key that does not exist (between two keys), and past the end.
    let pages = list_pages(&c, server.bucket(), Some("obj-1000x"), 1000).await;
    assert_eq!(pages.concat(), keys[1001..]);
    let pages = list_pages(&c, server.bucket(), Some("zzz"), 1000).await;
    assert_eq!(pages, vec![Vec::<String>::new()]);

    // The SDK's own paginator agrees.
    let listed: Vec<String> = c
        .list_objects_v2()
        .bucket(server.bucket())
        .max_keys(1000)
        .into_paginator()
        .send()
        .try_collect()
        .await
        .unwrap()
        .iter()
        .flat_map(|p| p.contents().iter().map(|o| o.key().unwrap().to_owned()))
        .collect();
    assert_eq!(listed, keys);

    // Prefix + delimiter listing.
    put(&c, server.bucket(), "dir/a/1", b"x").await;
    put(&c, server.bucket(), "dir/b", b"x").await;
    let out = c
        .list_objects_v2()
        .bucket(server.bucket())
        .prefix("dir/")
        .delimiter("/")
        .send()
        .await
        .unwrap();
    let objects: Vec<_> = out.contents().iter().map(|o| o.key().unwrap()).collect();
    let prefixes: Vec<_> = out
        .common_prefixes()
        .iter()
        .map(|p| p.prefix().unwrap())
        .collect();
    assert_eq!(objects, vec!["dir/b"]);
    assert_eq!(prefixes, vec!["dir/a/"]);
}

#[tokio::test]
async fn slow_down_is_a_503_without_retries() {
    let server = S3TestServer::start("faults");
    let c = client(&server);
    server.set_faults(Faults {
        slow_down: 1.0,
        ..Faults::default()
    });

    let err = c
        .put_object()
        .bucket(server.bucket())
        .key("k")
        .body(ByteStream::from(vec![1u8; 100_000]))
        .send()
        .await
        .unwrap_err();
    assert!(matches!(err, SdkError::ServiceError(_)), "{err:?}");
    assert_eq!(err.raw_response().unwrap().status().as_u16(), 503);
    assert_eq!(err.code(), Some("SlowDown"));
    assert_eq!(err.message(), Some("Please reduce your request rate."));

    let err = c
        .get_object()
        .bucket(server.bucket())
        .key("k")
        .send()
        .await
        .unwrap_err();
    assert_eq!(err.raw_response().unwrap().status().as_u16(), 503);
    assert_eq!(err.code(), Some("SlowDown"));

    server.set_faults(Faults {
        internal_error: 1.0,
        ..Faults::default()
    });
    let err = c
        .list_objects_v2()
        .bucket(server.bucket())
        .send()
        .await
        .unwrap_err();
    assert_eq!(err.raw_response().unwrap().status().as_u16(), 500);
    assert_eq!(err.code(), Some("InternalError"));

    assert_eq!(server.requests(), 3);
    assert_eq!(server.injected_faults(), 3);

    // Faults off again: the rejected PUT left nothing behind, and the connection still works.
    server.set_faults(Faults::default());
    put(&c, server.bucket(), "k2", b"ok").await;
    assert!(!server.root().join("faults/k").exists());
    assert_eq!(get(&c, server.bucket(), "k2").await, b"ok");
    assert_eq!(server.injected_faults(), 3);
}

#[tokio::test]
async fn standard_retries_ride_out_30_percent_slow_down() {
    let server = S3TestServer::start("retries");
    let retry = RetryConfig::standard()
        .with_max_attempts(10)
        .with_initial_backoff(Duration::from_millis(20))
        .with_max_backoff(Duration::from_millis(200));
    let c = client_with(&server, retry, TimeoutConfig::disabled());
    server.set_faults(Faults {
        slow_down: 0.3,
        ..Faults::default()
    });

    for i in 0..50 {
        let key = format!("k-{i:02}");
        put(&c, server.bucket(), &key, key.as_bytes()).await;
    }
    let faults = server.injected_faults();
    assert!(faults > 0, "no faults were injected");
    assert_eq!(server.requests(), 50 + faults);

    server.set_faults(Faults::default());
    let pages = list_pages(&c, server.bucket(), None, 1000).await;
    assert_eq!(pages.concat().len(), 50);
    for i in 0..50 {
        let key = format!("k-{i:02}");
        assert_eq!(get(&c, server.bucket(), &key).await, key.as_bytes());
    }
}

#[tokio::test]
async fn mixed_faults_with_retries_still_deliver_every_object() {
    let server = S3TestServer::start("mixed");
    let retry = RetryConfig::standard()
        .with_max_attempts(10)
        .with_initial_backoff(Duration::from_millis(10))
        .with_max_backoff(Duration::from_millis(100));
    let timeouts = TimeoutConfig::builder()
        .operation_attempt_timeout(Duration::from_millis(500))
        .build();
    let c = client_with(&server, retry, timeouts);
    server.set_faults(Faults {
        internal_error: 0.1,
        slow_down: 0.1,
        hang: 0.05,
        ..Faults::default()
    });
    futures::stream::iter(0..40)
        .map(|i| {
            let c = c.clone();
            let bucket = server.bucket().to_owned();
            async move { put(&c, &bucket, &format!("m-{i:02}"), &[i as u8; 1000]).await }
        })
        .buffer_unordered(8)
        .collect::<Vec<()>>()
        .await;
    assert!(server.injected_faults() > 0);
    server.set_faults(Faults::default());
    for i in 0..40 {
        assert_eq!(
            get(&c, server.bucket(), &format!("m-{i:02}")).await,
            vec![i as u8; 1000]
        );
    }
}

#[tokio::test]
async fn hang_times_out_and_drop_does_not_wait_for_it() {
    let server = S3TestServer::start("hang");
    let timeouts = TimeoutConfig::builder()
        .operation_attempt_timeout(Duration::from_millis(300))
        .build();
    let c = client_with(&server, RetryConfig::disabled(), timeouts);
    server.set_faults(Faults {
        hang: 1.0,
        ..Faults::default()
    });

    let started = Instant::now();
    let err = c
        .put_object()
        .bucket(server.bucket())
        .key("k")
        .body(ByteStream::from_static(b"x"))
        .send()
        .await
        .unwrap_err();
    assert!(matches!(err, SdkError::TimeoutError(_)), "{err:?}");
    assert!(started.elapsed() < Duration::from_secs(5));
    assert_eq!(server.injected_faults(), 1);

    // The request is still hanging server-side; dropping the server must not wait 60 s.
    let started = Instant::now();
    drop(server);
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "drop took {:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn put_delay_slows_uploads_only() {
    let server = S3TestServer::start("delay");
    let c = client(&server);
    put(&c, server.bucket(), "k", b"v").await;
    server.set_faults(Faults {
        put_delay: Duration::from_millis(400),
        ..Faults::default()
    });

    let started = Instant::now();
    put(&c, server.bucket(), "k2", b"v").await;
    assert!(started.elapsed() >= Duration::from_millis(400));

    let started = Instant::now();
    assert_eq!(get(&c, server.bucket(), "k").await, b"v");
    assert!(started.elapsed() < Duration::from_millis(400));
    assert_eq!(server.injected_faults(), 0);
}

#[tokio::test]
async fn sigv4_is_enforced() {
    let server = S3TestServer::start("auth");
    let config = aws_sdk_s3::Config::builder()
        .http_client(txpipe::store::s3::http_client())
        .credentials_provider(Credentials::new(
            server.access_key(),
            "wrong-secret",
            None,
            None,
            "test",
        ))
        .region(Region::new("us-east-1"))
        .endpoint_url(server.endpoint())
        .force_path_style(true)
        .retry_config(RetryConfig::disabled())
        .build();
    let err = Client::from_conf(config)
        .put_object()
        .bucket(server.bucket())
        .key("k")
        .body(ByteStream::from_static(b"x"))
        .send()
        .await
        .unwrap_err();
    assert_eq!(err.raw_response().unwrap().status().as_u16(), 403);
    assert_eq!(err.code(), Some("SignatureDoesNotMatch"));
    assert!(!server.root().join("auth/k").exists());
}

/// The server works from a plain (non-async) test: it has its own runtime thread.
#[test]
fn usable_from_a_plain_test_and_env_is_complete() {
    let server = S3TestServer::start("plain");
    assert!(server.endpoint().starts_with("http://127.0.0.1:"));
    assert_eq!(server.bucket(), "plain");
    assert!(server.root().join("plain").is_dir());

    let env = server.env();
    let get_env = |k: &str| env.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
    assert_eq!(get_env("AWS_ACCESS_KEY_ID"), Some("txpipe-test"));
    assert_eq!(get_env("AWS_SECRET_ACCESS_KEY"), Some("txpipe-test-secret"));
    assert_eq!(get_env("AWS_REGION"), Some("us-east-1"));
    assert_eq!(get_env("AWS_EC2_METADATA_DISABLED"), Some("true"));

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let c = client(&server);
        put(&c, server.bucket(), "a", b"1").await;
        assert_eq!(get(&c, server.bucket(), "a").await, b"1");
    });
    drop(rt);
    let root = server.root().to_owned();
    drop(server);
    assert!(!root.exists(), "temp dir not removed");
}

#[test]
#[should_panic(expected = "not a valid S3 bucket name")]
fn invalid_bucket_names_are_refused_up_front() {
    let _ = S3TestServer::start("Q");
}
