//! A master file much larger than the chunker's buffers streams from S3
//! through ranged GETs: it is cut into chunks without ever being held in
//! memory. (In a process of its own, so no other test disturbs the
//! process's memory figures.)

use crate::support;

use std::io::Write;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use aws_sdk_s3::config::Credentials;
use aws_sdk_s3::primitives::ByteStream;
use support::s3_server::S3TestServer;
use txpipe::config::Settings;
use txpipe::input::records::{ChunkCutter, read_header};
use txpipe::store::source::Sources;

const ROWS: u64 = 1_500_000;

fn resident_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let kb: u64 = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap();
    kb * 1024
}

#[test]
fn a_large_master_file_streams_from_s3_in_bounded_memory() {
    if support::run_isolated("s3_stream::a_large_master_file_streams_from_s3_in_bounded_memory") {
        return;
    }
    let server = S3TestServer::start("txpipe-input");
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("big.csv");
    {
        let mut file = std::io::BufWriter::new(std::fs::File::create(&path).unwrap());
        file.write_all(
            b"step,customer,age,gender,zipcodeOri,merchant,zipMerchant,category,amount,fraud\r\n",
        )
        .unwrap();
        for i in 0..ROWS {
            writeln!(
                file,
                "{},'C{:09}','4','F','28007','M{:04}','28007','es_transportation',12.34,0\r",
                i % 180,
                i % 40_000,
                i % 50
            )
            .unwrap();
        }
    }
    let size = std::fs::metadata(&path).unwrap().len();
    assert!(size > 100_000_000, "the file is large: {size} bytes");

    let mut settings = Settings::load_with_env(None, []).unwrap();
    settings.storage.endpoint = server.endpoint();
    settings.storage.path_style = true;
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let credentials =
        Credentials::new(server.access_key(), server.secret_key(), None, None, "test");
    let client = runtime.block_on(txpipe::store::s3::client_with(
        &settings.storage,
        Some(credentials),
    ));
    let upload = client.clone();
    let body_path = path.clone();
    txpipe::io_runtime::handle()
        .block_on(async move {
            upload
                .put_object()
                .bucket("txpipe-input")
                .key("master/big.csv")
                .body(ByteStream::from_path(&body_path).await.unwrap())
                .send()
                .await
        })
        .unwrap();
    std::fs::remove_file(&path).unwrap();

    // Sample the resident set while the file streams through the cutter.
    let before = resident_bytes();
    let peak = Arc::new(AtomicU64::new(before));
    let done = Arc::new(AtomicBool::new(false));
    let sampler = {
        let (peak, done) = (peak.clone(), done.clone());
        std::thread::spawn(move || {
            while !done.load(Ordering::Relaxed) {
                peak.fetch_max(resident_bytes(), Ordering::Relaxed);
                std::thread::sleep(std::time::Duration::from_millis(5));
            }
        })
    };
    let sources = Sources::with_s3_client(client);
    let location = "s3://txpipe-input/master/big.csv";
    let (header, offset) = read_header(sources.open_at(location, 0).unwrap(), 1 << 20)
        .unwrap()
        .unwrap();
    let mut cutter = ChunkCutter::new(
        sources.open_at(location, offset).unwrap(),
        offset,
        header,
        1 << 20,
    );
    let (mut rows, mut chunks) = (0, 0);
    // Resume half way, as the chunker does after a restart.
    let mut resume_at = None;
    loop {
        let cut = cutter.cut(10_000).unwrap();
        if cut.rows == 0 {
            break;
        }
        rows += cut.rows;
        chunks += 1;
        if chunks == 75 {
            resume_at = Some((cut.end_offset, rows));
            break;
        }
    }
    let (offset, done_rows) = resume_at.unwrap();
    let header = read_header(sources.open_at(location, 0).unwrap(), 1 << 20)
        .unwrap()
        .unwrap()
        .0;
    let mut cutter = ChunkCutter::new(
        sources.open_at(location, offset).unwrap(),
        offset,
        header,
        1 << 20,
    );
    rows = done_rows;
    loop {
        let cut = cutter.cut(10_000).unwrap();
        if cut.rows == 0 {
            assert_eq!(cut.end_offset, size);
            break;
        }
        rows += cut.rows;
        chunks += 1;
    }
    done.store(true, Ordering::Relaxed);
    sampler.join().unwrap();
    assert_eq!((rows, chunks), (ROWS, 150));
    let grew = peak.load(Ordering::Relaxed).saturating_sub(before);
    assert!(
        grew < 48 * 1024 * 1024,
        "memory grew by {} MB while streaming {} MB",
        grew >> 20,
        size >> 20
    );
}
