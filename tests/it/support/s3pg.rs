//! A pipeline's place on S3 and PostgreSQL for tests that run `txpipe` as
//! processes (one, or a cluster's workers): a bucket on the S3 test server
//! with the inputs uploaded, a database of its own, a config file pointing
//! at both, and the environment that reaches the server. Suites add their
//! own settings to `env`.

use std::path::{Path, PathBuf};

use super::pg::TestDb;
use super::s3_server::S3TestServer;

pub struct S3Postgres {
    pub db: TestDb,
    pub server: S3TestServer,
    pub config: PathBuf,
    pub env: Vec<(String, String)>,
    prefix: String,
    _dir: tempfile::TempDir,
}

impl S3Postgres {
    /// The inputs `transactions` and `network` in bucket `txpipe-data`
    /// under `prefix`; `None` when PostgreSQL is missing (outside CI).
    pub fn start(transactions: &Path, network: &Path, prefix: &str) -> Option<S3Postgres> {
        let db = TestDb::create()?;
        let server = S3TestServer::start("txpipe-data");
        super::configs::upload_inputs(&server, transactions, network);
        let dir = tempfile::tempdir().unwrap();
        let config = super::configs::s3_postgres(dir.path(), &server, &db.url, prefix, "");
        let env = server.env();
        Some(S3Postgres {
            db,
            server,
            config,
            env,
            prefix: prefix.to_string(),
            _dir: dir,
        })
    }

    /// The prefix's directory on the test server's disk.
    pub fn bucket(&self) -> PathBuf {
        self.server.root().join("txpipe-data").join(&self.prefix)
    }
}
