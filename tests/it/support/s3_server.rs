//! A real S3-protocol server for integration tests and benchmarks.
//!
//! [`S3TestServer`] serves a fresh temporary directory over HTTP on `127.0.0.1` with
//! [`s3s`] + [`s3s_fs`] (the same stack as the `s3s-fs` binary): SigV4 authentication,
//! path-style addressing, one bucket created at start. Requests pass through a fault-injection
//! layer first ([`Faults`]) that can answer with S3's own retryable errors (`500 InternalError`,
//! `503 SlowDown`), hang requests to provoke client timeouts, and delay uploads.
//!
//! The server runs on its own thread with its own tokio runtime, so it can be used from plain
//! `#[test]` functions as well as from inside another runtime (`#[tokio::test]`, a benchmark's
//! runtime): nothing here ever blocks on the caller's runtime. Dropping the server stops the
//! thread (hanging requests included) and removes the directory.
//!
//! Client settings that work against it (aws-sdk-s3 1.x): static credentials
//! [`S3TestServer::access_key`] / [`S3TestServer::secret_key`], region `us-east-1`,
//! `endpoint_url(server.endpoint())` and `force_path_style(true)`.
//!
//! Checksums: the SDK's defaults (`RequestChecksumCalculation::WhenSupported`,
//! `ResponseChecksumValidation::WhenSupported`) work as they are, checked with aws-sdk-s3 1.157:
//! an in-memory PUT body gets an `x-amz-checksum-crc32` header, a streaming one (e.g.
//! `ByteStream::from_path`) is sent aws-chunked with the CRC32 in a trailer; s3s decodes both,
//! s3s-fs verifies and stores the CRC32 and returns it on whole-object GETs, which the SDK then
//! validates. The one exception is below (multipart overwrite).
//!
//! Quirks of s3s-fs 0.14.1 worth knowing when reading test results:
//! - PUT is atomic for readers: the body is written to `root/.tmp.N.internal.part` and renamed
//!   onto `root/bucket/key` (no fsync). But `Content-MD5` and `x-amz-checksum-*` are verified
//!   *after* the rename, so a PUT answered with `400 BadDigest` has still replaced the object.
//! - Its bookkeeping (metadata, ETags, checksums, multipart parts, temp files) lives in dot-files
//!   directly under `root`, never under `root/bucket`, which holds exactly the objects' bytes.
//! - ListObjectsV2 rescans the whole bucket directory for every page and returns no ETags; its
//!   continuation token is simply the last key returned.
//! - Bucket names are validated like AWS does (3-63 chars, lowercase): `start` asserts that.
//! - GET returns the stored `x-amz-checksum-*` headers even without `x-amz-checksum-mode`.
//! - CompleteMultipartUpload does not refresh the stored checksum when it overwrites a key
//!   that was last written by a PutObject with a checksum: later GETs of that key then fail in
//!   the SDK with `ChecksumMismatch`. Clients that overwrite keys with multipart uploads need
//!   `response_checksum_validation(ResponseChecksumValidation::WhenRequired)` (and no
//!   `checksum_mode(Enabled)`), or must delete the key first. PUT over PUT is fine.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::service::Service;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto::Builder as ConnBuilder;
use s3s::auth::SimpleAuth;
use s3s::service::{S3Service, S3ServiceBuilder};
use tokio::sync::watch;

const ACCESS_KEY: &str = "txpipe-test";
const SECRET_KEY: &str = "txpipe-test-secret";
/// How long an injected hang lasts when the server is not stopped first.
const HANG_FOR: Duration = Duration::from_secs(60);
/// Seed of the per-request fault draws: request `n` always draws the same number.
const FAULT_SEED: u64 = 0x7478_7069_7065_5f73; // "txpipe_s"

/// Fault injection settings. Shares are probabilities per request, drawn in this order:
/// `internal_error`, then `slow_down`, then `hang`; their sum should not exceed 1.
#[derive(Clone, Copy, Debug, Default)]
pub struct Faults {
    /// Share (0.0..=1.0) of requests answered with HTTP 500 InternalError (S3 XML error body).
    pub internal_error: f64,
    /// Share of requests answered with HTTP 503 SlowDown (S3 XML error body, code "SlowDown").
    pub slow_down: f64,
    /// Share of requests that hang (never answered until the client gives up, for at most 60 s
    /// or until the server is dropped): simulates timeouts.
    pub hang: f64,
    /// Extra latency added before every PUT request (object upload, part upload, bucket creation)
    /// is handled.
    pub put_delay: Duration,
}

/// A running S3 server; see the module docs.
pub struct S3TestServer {
    endpoint: String,
    bucket: String,
    root: PathBuf,
    state: Arc<FaultState>,
    shutdown: watch::Sender<bool>,
    thread: Option<JoinHandle<()>>,
    // Dropped after the thread is joined (field order does not matter: Drop joins first).
    _dir: tempfile::TempDir,
}

impl S3TestServer {
    /// Starts a server on 127.0.0.1 (random free port) serving a fresh temp directory, with SigV4
    /// authentication (fixed access key "txpipe-test" / secret "txpipe-test-secret"), and creates
    /// `bucket`. Panics if any of that fails.
    pub fn start(bucket: &str) -> S3TestServer {
        assert!(
            is_valid_bucket_name(bucket),
            "{bucket:?} is not a valid S3 bucket name (3-63 chars of a-z, 0-9, '.', '-'); \
             s3s would reject every request with InvalidBucketName"
        );
        let dir = tempfile::Builder::new()
            .prefix("txpipe-s3-")
            .tempdir()
            .expect("create temp dir for the S3 test server");
        let root = dir
            .path()
            .canonicalize()
            .expect("canonicalize the S3 test server's root");
        // s3s-fs maps a bucket to a directory under the root.
        std::fs::create_dir(root.join(bucket)).expect("create the bucket directory");

        let fs = s3s_fs::FileSystem::new(&root).expect("open s3s-fs file system");
        let mut builder = S3ServiceBuilder::new(LargeReads {
            inner: fs,
            root: root.clone(),
        });
        builder.set_auth(SimpleAuth::from_single(ACCESS_KEY, SECRET_KEY));
        let state = Arc::new(FaultState::default());
        let service = FaultLayer {
            inner: builder.build(),
            state: Arc::clone(&state),
        };

        // Bind here, synchronously, so the port is known (and accepting) when `start` returns.
        let listener = std::net::TcpListener::bind(("127.0.0.1", 0)).expect("bind 127.0.0.1:0");
        listener
            .set_nonblocking(true)
            .expect("make the listener non-blocking");
        let addr: SocketAddr = listener.local_addr().expect("listener address");

        let (shutdown, shutdown_rx) = watch::channel(false);
        let thread = std::thread::Builder::new()
            .name(format!("s3-test-server-{}", addr.port()))
            .spawn(move || serve(listener, service, shutdown_rx))
            .expect("spawn the S3 test server thread");

        S3TestServer {
            endpoint: format!("http://{addr}"),
            bucket: bucket.to_owned(),
            root,
            state,
            shutdown,
            thread: Some(thread),
            _dir: dir,
        }
    }

    /// The base URL, e.g. `http://127.0.0.1:41234`.
    pub fn endpoint(&self) -> String {
        self.endpoint.clone()
    }

    pub fn bucket(&self) -> &str {
        &self.bucket
    }

    pub fn access_key(&self) -> &str {
        ACCESS_KEY
    }

    pub fn secret_key(&self) -> &str {
        SECRET_KEY
    }

    /// The directory served; the bucket's objects are the files under `root/bucket`.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Changes fault injection at runtime (applies to subsequent requests).
    pub fn set_faults(&self, faults: Faults) {
        *self.state.faults.lock().unwrap_or_else(|e| e.into_inner()) = faults;
    }

    /// Number of requests the server has received so far (all kinds, faulted ones included).
    pub fn requests(&self) -> u64 {
        self.state.requests.load(Ordering::SeqCst)
    }

    /// Number of requests answered with (or hung by) an injected fault.
    pub fn injected_faults(&self) -> u64 {
        self.state.injected.load(Ordering::SeqCst)
    }

    /// Env vars a child process needs to reach the server with the standard AWS credential chain:
    /// `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_REGION=us-east-1` and
    /// `AWS_EC2_METADATA_DISABLED=true`. The endpoint and bucket are not included.
    pub fn env(&self) -> Vec<(String, String)> {
        [
            ("AWS_ACCESS_KEY_ID", ACCESS_KEY),
            ("AWS_SECRET_ACCESS_KEY", SECRET_KEY),
            ("AWS_REGION", "us-east-1"),
            ("AWS_EC2_METADATA_DISABLED", "true"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
    }
}

impl Drop for S3TestServer {
    fn drop(&mut self) {
        let _ = self.shutdown.send(true);
        if let Some(thread) = self.thread.take() {
            // Only joins a plain thread: safe from inside a caller's runtime too.
            let _ = thread.join();
        }
    }
}

impl std::fmt::Debug for S3TestServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("S3TestServer")
            .field("endpoint", &self.endpoint)
            .field("bucket", &self.bucket)
            .field("root", &self.root)
            .finish_non_exhaustive()
    }
}

fn is_valid_bucket_name(name: &str) -> bool {
    let alnum = |c: u8| c.is_ascii_lowercase() || c.is_ascii_digit();
    let bytes = name.as_bytes();
    (3..=63).contains(&bytes.len())
        && bytes.iter().all(|&c| alnum(c) || c == b'.' || c == b'-')
        && alnum(bytes[0])
        && alnum(bytes[bytes.len() - 1])
}

/// The server thread: accept connections until shutdown, then drop every task still running
/// (open connections, hung requests).
fn serve(
    listener: std::net::TcpListener,
    service: FaultLayer,
    mut shutdown: watch::Receiver<bool>,
) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("s3-test-server-rt")
        .enable_all()
        .build()
        .expect("build the S3 test server runtime");
    runtime.block_on(async move {
        let listener =
            tokio::net::TcpListener::from_std(listener).expect("register the listener with tokio");
        let http = ConnBuilder::new(TokioExecutor::new());
        loop {
            let socket = tokio::select! {
                res = listener.accept() => match res {
                    Ok((socket, _)) => socket,
                    Err(_) => {
                        // e.g. EMFILE under a benchmark: back off instead of spinning.
                        tokio::time::sleep(Duration::from_millis(10)).await;
                        continue;
                    }
                },
                _ = shutdown.wait_for(|stop| *stop) => break,
            };
            let _ = socket.set_nodelay(true);
            let conn = http
                .serve_connection(TokioIo::new(socket), service.clone())
                .into_owned();
            tokio::spawn(async move {
                let _ = conn.await;
            });
        }
    });
    // Cancels connection tasks and hung requests; blocking file I/O gets a moment to finish
    // before the temp dir is removed.
    runtime.shutdown_timeout(Duration::from_secs(5));
}

#[derive(Debug, Default)]
struct FaultState {
    faults: Mutex<Faults>,
    requests: AtomicU64,
    injected: AtomicU64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Fault {
    InternalError,
    SlowDown,
    Hang,
}

impl FaultState {
    /// Counts the request and decides its fate. Deterministic in the request's ordinal.
    fn admit(&self) -> (u64, Option<Fault>, Faults) {
        let n = self.requests.fetch_add(1, Ordering::SeqCst);
        let faults = *self.faults.lock().unwrap_or_else(|e| e.into_inner());
        let draw = unit_f64(splitmix64(FAULT_SEED ^ n));
        let internal_until = faults.internal_error;
        let slow_until = internal_until + faults.slow_down;
        let hang_until = slow_until + faults.hang;
        let fault = if draw < internal_until {
            Some(Fault::InternalError)
        } else if draw < slow_until {
            Some(Fault::SlowDown)
        } else if draw < hang_until {
            Some(Fault::Hang)
        } else {
            None
        };
        if fault.is_some() {
            self.injected.fetch_add(1, Ordering::SeqCst);
        }
        (n, fault, faults)
    }
}

fn splitmix64(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Uniform in [0, 1).
fn unit_f64(x: u64) -> f64 {
    (x >> 11) as f64 / (1u64 << 53) as f64
}

/// The fault-injection layer: a hyper service wrapping the s3s service.
#[derive(Clone)]
struct FaultLayer {
    inner: S3Service,
    state: Arc<FaultState>,
}

impl Service<http::Request<Incoming>> for FaultLayer {
    type Response = http::Response<s3s::Body>;
    type Error = s3s::HttpError;
    type Future = std::pin::Pin<
        Box<dyn std::future::Future<Output = Result<Self::Response, Self::Error>> + Send>,
    >;

    fn call(&self, req: http::Request<Incoming>) -> Self::Future {
        let (n, fault, faults) = self.state.admit();
        let inner = self.inner.clone();
        Box::pin(async move {
            match fault {
                None => {
                    if req.method() != http::Method::PUT {
                        return hyper::service::Service::call(&inner, req).await;
                    }
                    if !faults.put_delay.is_zero() {
                        tokio::time::sleep(faults.put_delay).await;
                    }
                    // s3s-fs writes each body frame through tokio's file API, one blocking-pool
                    // round trip per frame (a few KiB off the socket). Handing it the whole body
                    // as one frame makes that one round trip per upload: the server then costs
                    // what it must (MD5 for the ETag, checksums, one write) and a benchmark
                    // measures txpipe rather than thread hand-offs inside the test server.
                    let (parts, body) = req.into_parts();
                    let body = match body.collect().await {
                        Ok(collected) => collected.to_bytes(),
                        Err(error) => return Err(s3s::HttpError::new(Box::new(error))),
                    };
                    inner
                        .call(http::Request::from_parts(parts, s3s::Body::from(body)))
                        .await
                }
                Some(Fault::Hang) => {
                    // Hold the request (and its connection) without answering.
                    tokio::time::sleep(HANG_FOR).await;
                    Ok(error_response(
                        &req,
                        n,
                        http::StatusCode::INTERNAL_SERVER_ERROR,
                        "InternalError",
                        "Injected hang ended without an answer.",
                    ))
                }
                Some(Fault::InternalError) => {
                    let req = drain(req).await;
                    Ok(error_response(
                        &req,
                        n,
                        http::StatusCode::INTERNAL_SERVER_ERROR,
                        "InternalError",
                        "We encountered an internal error. Please try again.",
                    ))
                }
                Some(Fault::SlowDown) => {
                    let req = drain(req).await;
                    Ok(error_response(
                        &req,
                        n,
                        http::StatusCode::SERVICE_UNAVAILABLE,
                        "SlowDown",
                        "Please reduce your request rate.",
                    ))
                }
            }
        })
    }
}

/// Reads and discards the request body so the client sees the error response rather than a
/// connection reset while it is still sending (and the connection stays reusable).
async fn drain(req: http::Request<Incoming>) -> http::Request<()> {
    let (parts, mut body) = req.into_parts();
    while let Some(frame) = body.frame().await {
        if frame.is_err() {
            break;
        }
    }
    http::Request::from_parts(parts, ())
}

/// An S3-style XML error, as AWS sends it.
fn error_response<B>(
    req: &http::Request<B>,
    n: u64,
    status: http::StatusCode,
    code: &str,
    message: &str,
) -> http::Response<s3s::Body> {
    let request_id = format!("TXPIPEFAULT{n:016X}");
    let resource = xml_escape(req.uri().path());
    let body = if req.method() == http::Method::HEAD {
        // HEAD errors carry no body; clients go by the status code.
        String::new()
    } else {
        format!(
            "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error><Code>{code}</Code><Message>{message}</Message><Resource>{resource}</Resource><RequestId>{request_id}</RequestId></Error>"
        )
    };
    http::Response::builder()
        .status(status)
        .header(http::header::CONTENT_TYPE, "application/xml")
        .header("x-amz-request-id", &request_id)
        .body(s3s::Body::from(body))
        .expect("valid error response")
}

fn xml_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// How many bytes a GET body frame reads from the object's file at once.
const GET_FRAME: usize = 1 << 20;

/// s3s-fs with GET bodies read in [`GET_FRAME`] pieces.
///
/// s3s-fs streams a GET body through tokio's file API 4 KiB at a time, one
/// blocking-pool round trip (two thread wake-ups) per 4 KiB: streaming the
/// 55 MB BankSim master file took more CPU than the pipeline reading it.
/// This wrapper lets s3s-fs answer (headers, ranges, ETag, checksums,
/// errors exactly as before), discards its unread body and streams the same
/// bytes from the object's file in large reads. Everything else is s3s-fs
/// unchanged.
struct LargeReads {
    inner: s3s_fs::FileSystem,
    root: PathBuf,
}

macro_rules! delegate_except_get_object {
    ($($method:ident: $input:ident => $output:ident;)*) => {
        // The attribute must see every method already written out, so the
        // macro produces the whole impl.
        #[async_trait::async_trait]
        impl s3s::S3 for LargeReads {
            $(
                async fn $method(
                    &self,
                    req: s3s::S3Request<s3s::dto::$input>,
                ) -> s3s::S3Result<s3s::S3Response<s3s::dto::$output>> {
                    s3s::S3::$method(&self.inner, req).await
                }
            )*

            async fn get_object(
                &self,
                req: s3s::S3Request<s3s::dto::GetObjectInput>,
            ) -> s3s::S3Result<s3s::S3Response<s3s::dto::GetObjectOutput>> {
                self.get_object_in_large_reads(req).await
            }
        }
    };
}

delegate_except_get_object! {
    create_bucket: CreateBucketInput => CreateBucketOutput;
    copy_object: CopyObjectInput => CopyObjectOutput;
    delete_bucket: DeleteBucketInput => DeleteBucketOutput;
    delete_object: DeleteObjectInput => DeleteObjectOutput;
    delete_objects: DeleteObjectsInput => DeleteObjectsOutput;
    get_bucket_location: GetBucketLocationInput => GetBucketLocationOutput;
    head_bucket: HeadBucketInput => HeadBucketOutput;
    head_object: HeadObjectInput => HeadObjectOutput;
    list_buckets: ListBucketsInput => ListBucketsOutput;
    list_objects: ListObjectsInput => ListObjectsOutput;
    list_objects_v2: ListObjectsV2Input => ListObjectsV2Output;
    put_object: PutObjectInput => PutObjectOutput;
    create_multipart_upload: CreateMultipartUploadInput => CreateMultipartUploadOutput;
    upload_part: UploadPartInput => UploadPartOutput;
    upload_part_copy: UploadPartCopyInput => UploadPartCopyOutput;
    list_parts: ListPartsInput => ListPartsOutput;
    complete_multipart_upload: CompleteMultipartUploadInput => CompleteMultipartUploadOutput;
    abort_multipart_upload: AbortMultipartUploadInput => AbortMultipartUploadOutput;
}

impl LargeReads {
    async fn get_object_in_large_reads(
        &self,
        req: s3s::S3Request<s3s::dto::GetObjectInput>,
    ) -> s3s::S3Result<s3s::S3Response<s3s::dto::GetObjectOutput>> {
        let path = self.root.join(&req.input.bucket).join(&req.input.key);
        let mut response = s3s::S3::get_object(&self.inner, req).await?;
        let output = &mut response.output;
        let length = output.content_length.unwrap_or(0).max(0) as u64;
        // "bytes FIRST-LAST/SIZE" when a range was asked for.
        let start = output
            .content_range
            .as_deref()
            .and_then(|range| range.strip_prefix("bytes "))
            .and_then(|range| range.split('-').next())
            .map_or(Ok(0), str::parse::<u64>)
            .map_err(|_| s3s::s3_error!(InternalError, "unexpected Content-Range"))?;
        // Opened before answering, so a vanished file is an error response
        // rather than a body that breaks off.
        let file = tokio::task::spawn_blocking(move || -> std::io::Result<std::fs::File> {
            use std::io::{Seek, SeekFrom};
            let mut file = std::fs::File::open(&path)?;
            file.seek(SeekFrom::Start(start))?;
            Ok(file)
        })
        .await
        .map_err(|e| s3s::s3_error!(e, InternalError))?
        .map_err(|e| s3s::s3_error!(e, InternalError))?;
        output.body = Some(s3s::dto::StreamingBlob::wrap(read_in_frames(file, length)));
        Ok(response)
    }
}

/// The next `length` bytes of `file`, in frames of up to [`GET_FRAME`].
fn read_in_frames(
    file: std::fs::File,
    length: u64,
) -> impl futures::Stream<Item = std::io::Result<bytes::Bytes>> + Send + Sync + 'static {
    futures::stream::try_unfold((file, length), |(mut file, left)| async move {
        if left == 0 {
            return Ok(None);
        }
        tokio::task::spawn_blocking(move || {
            use std::io::Read;
            let mut frame = vec![0; left.min(GET_FRAME as u64) as usize];
            file.read_exact(&mut frame)?;
            let read = frame.len() as u64;
            Ok(Some((bytes::Bytes::from(frame), (file, left - read))))
        })
        .await
        .map_err(std::io::Error::other)?
    })
}
