//! A throw-away PostgreSQL database per test on the machine's server
//! (127.0.0.1:5432, user postgres, trust auth). Without a server the test
//! is skipped, except under `CI=true`, where it fails.

use std::sync::atomic::{AtomicU64, Ordering};

pub const SERVER: &str = "postgres://postgres@127.0.0.1:5432";

pub struct TestDb {
    pub name: String,
    pub url: String,
}

/// Runs `work` with a client of `url` on a thread of its own, so that it
/// works from sync and async tests alike (and from destructors).
fn with_client<T: Send + 'static>(
    url: String,
    work: impl AsyncFnOnce(&tokio_postgres::Client) -> T + Send + 'static,
) -> Result<T, tokio_postgres::Error> {
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async {
            let (client, connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls).await?;
            let driver = tokio::spawn(connection);
            let result = work(&client).await;
            drop(client);
            let _ = driver.await;
            Ok(result)
        })
    })
    .join()
    .unwrap()
}

fn admin<T: Send + 'static>(
    work: impl AsyncFnOnce(&tokio_postgres::Client) -> T + Send + 'static,
) -> Result<T, tokio_postgres::Error> {
    with_client(format!("{SERVER}/postgres"), work)
}

impl TestDb {
    /// Creates a fresh database, or `None` (skip) when no server runs and
    /// this is not CI.
    pub fn create() -> Option<TestDb> {
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let name = format!(
            "txpipe_test_{}_{}_{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .subsec_nanos()
        );
        let sql = format!("CREATE DATABASE {name}");
        let created = admin(async move |client| client.batch_execute(&sql).await);
        match created {
            Ok(Ok(())) => Some(TestDb {
                url: format!("{SERVER}/{name}"),
                name,
            }),
            Ok(Err(error)) => panic!("cannot create test database {name}: {error}"),
            Err(error) => {
                assert!(
                    !super::ci(),
                    "CI=true but PostgreSQL at {SERVER} is unreachable: {error}"
                );
                eprintln!("PostgreSQL at {SERVER} is unreachable ({error}); skipping");
                None
            }
        }
    }

    /// Runs SQL against this database (for assertions and fault injection).
    pub fn query(&self, sql: &str) -> Vec<tokio_postgres::Row> {
        let sql = sql.to_string();
        with_client(self.url.clone(), async move |client| {
            client.query(&sql, &[]).await.unwrap()
        })
        .unwrap()
    }

    /// Kills every other connection to this database.
    pub fn terminate_connections(&self) -> u64 {
        let name = self.name.clone();
        admin(async move |client| {
            let rows = client
                .query(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity
                     WHERE datname = $1 AND pid <> pg_backend_pid()",
                    &[&name],
                )
                .await
                .unwrap();
            rows.len() as u64
        })
        .unwrap()
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let name = self.name.clone();
        let _ = admin(async move |client| {
            client
                .batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                .await
        });
    }
}
