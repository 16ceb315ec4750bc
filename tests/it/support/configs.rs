//! Configuration files for runs of the `txpipe` binary in tests.

use std::path::{Path, PathBuf};

use aws_sdk_s3::config::Credentials;
use bytes::Bytes;
use txpipe::store::ObjectStore;

use super::s3_server::S3TestServer;

/// Embedded defaults in `dir` (bucket `dir/bucket`, database
/// `dir/state.sqlite`), catch-up mode, plus `extra` TOML.
pub fn embedded(dir: &Path, transactions: &Path, importance: &Path, extra: &str) -> PathBuf {
    let path = dir.join("txpipe.toml");
    std::fs::write(
        &path,
        format!(
            r#"
[source]
transactions = "{tx}"
customer_importance = "{net}"
[chunker]
interval_ms = 0
[storage]
root = "{bucket}"
[database]
url = "sqlite://{db}"
[watcher]
poll_interval_ms = 20
[supervisor]
backoff_initial_ms = 20
backoff_max_ms = 200
{extra}
"#,
            tx = transactions.display(),
            net = importance.display(),
            bucket = dir.join("bucket").display(),
            db = dir.join("state.sqlite").display(),
        ),
    )
    .unwrap();
    path
}

/// S3 (the test server, inputs under `input/`) and PostgreSQL, plus
/// `extra` TOML. Credentials come from `server.env()`, never from here.
pub fn s3_postgres(
    dir: &Path,
    server: &S3TestServer,
    database_url: &str,
    prefix: &str,
    extra: &str,
) -> PathBuf {
    let path = dir.join("production.toml");
    std::fs::write(
        &path,
        format!(
            r#"
[source]
transactions = "s3://{bucket}/input/transactions.csv"
customer_importance = "s3://{bucket}/input/customer_importance.csv"
[chunker]
interval_ms = 0
[storage]
kind = "s3"
bucket = "{bucket}"
prefix = "{prefix}"
endpoint = "{endpoint}"
path_style = true
request_timeout_ms = 2000
[database]
url = "{database_url}"
[watcher]
poll_interval_ms = 20
[supervisor]
backoff_initial_ms = 20
backoff_max_ms = 200
{extra}
"#,
            bucket = server.bucket(),
            endpoint = server.endpoint(),
        ),
    )
    .unwrap();
    path
}

/// Uploads the master and lookup files to `input/` in the server's bucket.
pub fn upload_inputs(server: &S3TestServer, transactions: &Path, importance: &Path) {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let mut settings = txpipe::config::Settings::load_with_env(None, []).unwrap();
        settings.storage.endpoint = server.endpoint();
        settings.storage.path_style = true;
        let credentials =
            Credentials::new(server.access_key(), server.secret_key(), None, None, "test");
        let client = txpipe::store::s3::client_with(&settings.storage, Some(credentials)).await;
        let store = txpipe::store::s3::S3Store::new(client, server.bucket(), "");
        for (path, key) in [
            (transactions, "input/transactions.csv"),
            (importance, "input/customer_importance.csv"),
        ] {
            store
                .put(key, Bytes::from(std::fs::read(path).unwrap()))
                .await
                .unwrap();
        }
    });
}
