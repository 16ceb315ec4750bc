//! Configuration: `config/default.toml` (compiled in) is the base layer, a
//! file given with `--config` goes on top, and environment variables named
//! `TXPIPE__SECTION__KEY` override both. Unknown keys and invalid values are
//! refused at start-up with a message that names the key.

use std::path::{Path, PathBuf};

use config::{Config, Environment, File, FileFormat};
use serde::Deserialize;

/// The embedded defaults, identical to `config/default.toml`.
pub const DEFAULT_TOML: &str = include_str!("../config/default.toml");

/// Most key groups a cluster may have (`cluster.key_groups`).
pub const MAX_KEY_GROUPS: u32 = 32768;

/// Prefix of environment overrides (`TXPIPE__CHUNKER__INTERVAL_MS=0`).
pub const ENV_PREFIX: &str = "TXPIPE";

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    pub source: SourceConfig,
    pub input: InputConfig,
    pub chunker: ChunkerConfig,
    pub storage: StorageConfig,
    pub database: DatabaseConfig,
    pub batch: BatchConfig,
    pub watcher: WatcherConfig,
    pub detectors: DetectorsConfig,
    pub actors: ActorsConfig,
    pub supervisor: SupervisorConfig,
    pub ownership: OwnershipConfig,
    pub cluster: ClusterConfig,
    pub http: HttpConfig,
    pub log: LogConfig,
}

/// The operator's HTTP endpoints (`app::web`): Prometheus metrics, health
/// probes and the live page.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpConfig {
    /// `host:port` to listen on; empty: no HTTP server.
    pub listen: String,
}

impl HttpConfig {
    /// The address to listen on, or `None` when the server is off.
    pub fn address(&self) -> Option<&str> {
        let listen = self.listen.trim();
        (!listen.is_empty()).then_some(listen)
    }
}

/// One active process per bucket and database (see `db::lease`).
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OwnershipConfig {
    /// How long the ownership lease lasts without a heartbeat.
    pub lease_ttl_ms: u64,
    /// How often the owner renews it, and how often a standby asks for it.
    pub heartbeat_ms: u64,
    /// Wait as a hot standby while another process holds the lease
    /// (`false`: exit with code 6 instead; `txpipe run --no-standby`).
    pub standby: bool,
}

/// Several workers sharing one bucket and one PostgreSQL database, each
/// owning a share of the key groups (see `cluster`).
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterConfig {
    /// `false`: one active process with hot standbys (`ownership`).
    pub enabled: bool,
    /// How many key groups the state is split into; fixed when the
    /// database is created.
    pub key_groups: u32,
    /// How long a worker's and a key group's lease lasts without a
    /// heartbeat.
    pub lease_ttl_ms: u64,
    /// How often a worker renews its leases and rebalances.
    pub heartbeat_ms: u64,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SourceConfig {
    pub transactions: String,
    pub customer_importance: String,
}

/// Bounds on what one input record may cost.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InputConfig {
    /// Longest record (bytes, without its line terminator) of the master
    /// file, a chunk object or the lookup file that is held in memory; a
    /// longer one is a bad row kept cut to this length.
    pub max_record_bytes: usize,
}

/// Smallest `input.max_record_bytes`: room for a BankSim row many times
/// over, and for the placeholder line that stands for a longer record.
pub const MIN_RECORD_BYTES: usize = 1024;
/// Largest `input.max_record_bytes` (1 GiB).
pub const MAX_RECORD_BYTES: usize = 1 << 30;

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChunkerConfig {
    pub rows_per_chunk: u64,
    pub interval_ms: u64,
    pub max_in_flight: usize,
}

#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum StorageKind {
    Local,
    S3,
}

/// Whether S3 uploads sign a SHA-256 of their body (SigV4 payload signing).
///
/// Every upload carries a CRC32 checksum header, which is signed and which
/// the store verifies, so the body is protected either way; signing the
/// payload adds a second hash of every byte on both ends.
#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum PayloadSigning {
    /// Sign over plain `http://` endpoints, not over TLS (which already
    /// protects the bytes in transit), as the AWS SDKs for Java and Python do.
    Auto,
    Always,
    Never,
}

impl PayloadSigning {
    /// Whether uploads to `endpoint` ("" = AWS, always TLS) sign the payload.
    pub fn signs(self, endpoint: &str) -> bool {
        match self {
            PayloadSigning::Always => true,
            PayloadSigning::Never => false,
            PayloadSigning::Auto => endpoint
                .get(..7)
                .is_some_and(|scheme| scheme.eq_ignore_ascii_case("http://")),
        }
    }
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StorageConfig {
    pub kind: StorageKind,
    pub root: PathBuf,
    pub fsync: bool,
    pub bucket: String,
    pub prefix: String,
    pub region: String,
    pub endpoint: String,
    pub path_style: bool,
    pub sign_payload: PayloadSigning,
    pub request_timeout_ms: u64,
    pub max_attempts: u32,
}

#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DatabaseConfig {
    pub url: String,
    pub pool_size: u32,
    pub max_attempts: u32,
    pub compact_every: usize,
    pub compact_max_pending: usize,
    pub shutdown_compact_ms: u64,
}

impl std::fmt::Debug for DatabaseConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DatabaseConfig")
            .field("url", &redact_url(&self.url))
            .field("pool_size", &self.pool_size)
            .field("max_attempts", &self.max_attempts)
            .field("compact_every", &self.compact_every)
            .field("compact_max_pending", &self.compact_max_pending)
            .field("shutdown_compact_ms", &self.shutdown_compact_ms)
            .finish()
    }
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BatchConfig {
    pub size: u64,
    pub linger_ms: u64,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WatcherConfig {
    pub poll_interval_ms: u64,
    pub gap_timeout_ms: u64,
    pub sweep_interval_ms: u64,
    pub max_chunk_bytes: u64,
    pub max_in_flight: usize,
    pub max_chunks_per_commit: usize,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DetectorsConfig {
    pub patid1: u32,
    pub patid2: u32,
    pub patid3: u32,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ActorsConfig {
    pub mailbox_capacity: usize,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SupervisorConfig {
    pub max_restarts: u32,
    pub restart_window_ms: u64,
    pub backoff_initial_ms: u64,
    pub backoff_max_ms: u64,
    pub shutdown_timeout_ms: u64,
}

#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogConfig {
    pub level: String,
    pub format: LogFormat,
}

/// Whether a `sqlite://` path names a database file (not SQLite's
/// in-memory or temporary databases, which vanish with the process).
fn sqlite_path_is_a_file(path: &str) -> bool {
    !path.trim().is_empty()
        && path != ":memory:"
        && !path.starts_with("file:")
        && !path.contains("mode=memory")
        && !path.ends_with('/')
}

#[derive(Debug, thiserror::Error)]
pub enum SettingsError {
    #[error("configuration: {0}")]
    Load(#[from] config::ConfigError),
    #[error("configuration file {0} does not exist")]
    MissingFile(PathBuf),
    #[error("configuration: invalid value for `{key}`: {message}")]
    Invalid { key: &'static str, message: String },
}

impl Settings {
    /// Loads defaults, then `file` if given, then the environment.
    pub fn load(file: Option<&Path>) -> Result<Settings, SettingsError> {
        Settings::load_with_env(file, std::env::vars())
    }

    /// Like [`Settings::load`] with an explicit environment (for tests).
    pub fn load_with_env(
        file: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Settings, SettingsError> {
        let mut builder =
            Config::builder().add_source(File::from_str(DEFAULT_TOML, FileFormat::Toml));
        if let Some(path) = file {
            if !path.is_file() {
                return Err(SettingsError::MissingFile(path.to_path_buf()));
            }
            builder = builder.add_source(File::from(path).format(FileFormat::Toml));
        }
        let overrides = env
            .into_iter()
            .filter(|(name, _)| name.starts_with(&format!("{ENV_PREFIX}__")))
            .collect();
        builder = builder.add_source(
            Environment::with_prefix(ENV_PREFIX)
                .prefix_separator("__")
                .separator("__")
                .try_parsing(true)
                .source(Some(overrides)),
        );
        let settings: Settings = builder.build()?.try_deserialize()?;
        settings.validate()?;
        Ok(settings)
    }

    fn validate(&self) -> Result<(), SettingsError> {
        fn check(ok: bool, key: &'static str, message: &str) -> Result<(), SettingsError> {
            if ok {
                Ok(())
            } else {
                Err(SettingsError::Invalid {
                    key,
                    message: message.to_string(),
                })
            }
        }
        check(
            !self.source.transactions.is_empty(),
            "source.transactions",
            "must not be empty",
        )?;
        check(
            self.http
                .address()
                .is_none_or(|a| a.parse::<std::net::SocketAddr>().is_ok()),
            "http.listen",
            "must be empty (no HTTP server) or an address with a port, e.g. 127.0.0.1:9464",
        )?;
        check(
            !self.source.customer_importance.is_empty(),
            "source.customer_importance",
            "must not be empty",
        )?;
        check(
            (MIN_RECORD_BYTES..=MAX_RECORD_BYTES).contains(&self.input.max_record_bytes),
            "input.max_record_bytes",
            "must be between 1024 and 1073741824",
        )?;
        check(
            self.chunker.rows_per_chunk >= 1,
            "chunker.rows_per_chunk",
            "must be at least 1",
        )?;
        check(
            self.chunker.rows_per_chunk <= 10_000_000,
            "chunker.rows_per_chunk",
            "must be at most 10000000",
        )?;
        check(
            (1..=64).contains(&self.chunker.max_in_flight),
            "chunker.max_in_flight",
            "must be between 1 and 64",
        )?;
        check(self.batch.size >= 1, "batch.size", "must be at least 1")?;
        check(
            self.batch.size <= 100_000,
            "batch.size",
            "must be at most 100000",
        )?;
        match self.storage.kind {
            StorageKind::Local => check(
                !self.storage.root.as_os_str().is_empty(),
                "storage.root",
                "must name a directory when storage.kind = \"local\"",
            )?,
            StorageKind::S3 => {
                check(
                    !self.storage.bucket.is_empty(),
                    "storage.bucket",
                    "must name a bucket when storage.kind = \"s3\"",
                )?;
                check(
                    !self.storage.region.is_empty(),
                    "storage.region",
                    "must not be empty",
                )?;
            }
        }
        check(
            self.storage.max_attempts >= 1,
            "storage.max_attempts",
            "must be at least 1",
        )?;
        check(
            self.storage.request_timeout_ms >= 1,
            "storage.request_timeout_ms",
            "must be at least 1",
        )?;
        check(
            DatabaseKind::of(&self.database.url).is_some(),
            "database.url",
            "must start with sqlite:// or postgres://",
        )?;
        if let Some(path) = self.database.url.strip_prefix("sqlite://") {
            check(
                sqlite_path_is_a_file(path),
                "database.url",
                "sqlite:// must be followed by the path of a database file \
                 (an in-memory database would forget every commit when the process ends)",
            )?;
        }
        check(
            self.ownership.lease_ttl_ms >= 100,
            "ownership.lease_ttl_ms",
            "must be at least 100",
        )?;
        check(
            self.ownership.heartbeat_ms >= 10
                && self.ownership.heartbeat_ms.saturating_mul(2) <= self.ownership.lease_ttl_ms,
            "ownership.heartbeat_ms",
            "must be at least 10 and at most half of ownership.lease_ttl_ms",
        )?;
        check(
            (1..=MAX_KEY_GROUPS).contains(&self.cluster.key_groups),
            "cluster.key_groups",
            "must be between 1 and 32768",
        )?;
        check(
            !self.cluster.enabled
                || DatabaseKind::of(&self.database.url) == Some(DatabaseKind::Postgres),
            "cluster.enabled",
            "needs a PostgreSQL database.url (postgres://...): the workers of a cluster \
             coordinate through it; the embedded SQLite file serves one process",
        )?;
        check(
            self.cluster.lease_ttl_ms >= 100,
            "cluster.lease_ttl_ms",
            "must be at least 100",
        )?;
        check(
            self.cluster.heartbeat_ms >= 10
                && self.cluster.heartbeat_ms.saturating_mul(2) <= self.cluster.lease_ttl_ms,
            "cluster.heartbeat_ms",
            "must be at least 10 and at most half of cluster.lease_ttl_ms",
        )?;
        check(
            (1..=256).contains(&self.database.pool_size),
            "database.pool_size",
            "must be between 1 and 256",
        )?;
        check(
            self.database.max_attempts >= 1,
            "database.max_attempts",
            "must be at least 1",
        )?;
        check(
            self.database.compact_every >= 1,
            "database.compact_every",
            "must be at least 1",
        )?;
        check(
            self.database.compact_max_pending >= self.database.compact_every,
            "database.compact_max_pending",
            "must be at least database.compact_every",
        )?;
        check(
            self.database.shutdown_compact_ms < self.supervisor.shutdown_timeout_ms,
            "database.shutdown_compact_ms",
            "must be less than supervisor.shutdown_timeout_ms",
        )?;
        check(
            self.watcher.max_chunk_bytes >= 1 << 20,
            "watcher.max_chunk_bytes",
            "must be at least 1048576",
        )?;
        check(
            self.watcher.sweep_interval_ms >= 100,
            "watcher.sweep_interval_ms",
            "must be at least 100",
        )?;
        check(
            self.watcher.max_in_flight >= 1,
            "watcher.max_in_flight",
            "must be at least 1",
        )?;
        check(
            self.watcher.max_chunks_per_commit >= 1,
            "watcher.max_chunks_per_commit",
            "must be at least 1",
        )?;
        for (key, value) in [
            ("detectors.patid1", self.detectors.patid1),
            ("detectors.patid2", self.detectors.patid2),
            ("detectors.patid3", self.detectors.patid3),
        ] {
            check((1..=64).contains(&value), key, "must be between 1 and 64")?;
        }
        check(
            self.actors.mailbox_capacity >= 1,
            "actors.mailbox_capacity",
            "must be at least 1",
        )?;
        check(
            self.watcher.max_in_flight <= self.actors.mailbox_capacity,
            "watcher.max_in_flight",
            "must not exceed actors.mailbox_capacity (chunks in flight wait in detector mailboxes)",
        )?;
        check(
            self.supervisor.backoff_initial_ms <= self.supervisor.backoff_max_ms,
            "supervisor.backoff_initial_ms",
            "must not exceed supervisor.backoff_max_ms",
        )?;
        check(
            self.supervisor.restart_window_ms >= 1,
            "supervisor.restart_window_ms",
            "must be at least 1",
        )?;
        if let Err(e) = self.log.level.parse::<tracing_subscriber::EnvFilter>() {
            return Err(SettingsError::Invalid {
                key: "log.level",
                message: e.to_string(),
            });
        }
        Ok(())
    }
}

/// Which state store a database URL selects.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DatabaseKind {
    Sqlite,
    Postgres,
}

impl DatabaseKind {
    pub fn of(url: &str) -> Option<DatabaseKind> {
        if url.starts_with("sqlite://") {
            Some(DatabaseKind::Sqlite)
        } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            Some(DatabaseKind::Postgres)
        } else {
            None
        }
    }
}

/// Hides a password in a URL (`postgres://user:secret@host` becomes
/// `postgres://user:***@host`), for logs and status output.
pub fn redact_url(url: &str) -> String {
    let Some(scheme_end) = url.find("://") else {
        return url.to_string();
    };
    let rest = &url[scheme_end + 3..];
    let authority_end = rest.find(['/', '?']).unwrap_or(rest.len());
    let authority = &rest[..authority_end];
    match (authority.rfind('@'), authority.find(':')) {
        (Some(at), Some(colon)) if colon < at => format!(
            "{}{}:***{}",
            &url[..scheme_end + 3],
            &authority[..colon],
            &rest[at..]
        ),
        _ => url.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payload_signing_auto_signs_only_over_plain_http() {
        assert!(PayloadSigning::Auto.signs("http://127.0.0.1:9000"));
        assert!(PayloadSigning::Auto.signs("HTTP://minio.internal"));
        assert!(!PayloadSigning::Auto.signs("https://minio.internal:9000"));
        assert!(!PayloadSigning::Auto.signs(""), "AWS itself: always TLS");
        assert!(PayloadSigning::Always.signs("https://s3.amazonaws.com"));
        assert!(!PayloadSigning::Never.signs("http://127.0.0.1:9000"));
        let settings = load(None, &[("TXPIPE__STORAGE__SIGN_PAYLOAD", "never")]).unwrap();
        assert_eq!(settings.storage.sign_payload, PayloadSigning::Never);
        assert!(load(None, &[("TXPIPE__STORAGE__SIGN_PAYLOAD", "sometimes")]).is_err());
    }

    fn load(file: Option<&str>, env: &[(&str, &str)]) -> Result<Settings, SettingsError> {
        let dir = tempfile::tempdir().unwrap();
        let path = file.map(|text| {
            let path = dir.path().join("txpipe.toml");
            std::fs::write(&path, text).unwrap();
            path
        });
        let env = env.iter().map(|(k, v)| (k.to_string(), v.to_string()));
        Settings::load_with_env(path.as_deref(), env)
    }

    #[test]
    fn defaults_are_the_embedded_profile() {
        let settings = load(None, &[]).unwrap();
        assert_eq!(settings.chunker.rows_per_chunk, 10_000);
        assert_eq!(settings.chunker.interval_ms, 1_000);
        assert_eq!(settings.storage.kind, StorageKind::Local);
        assert_eq!(settings.batch.size, 50);
        assert!(settings.database.url.starts_with("sqlite://"));
        assert_eq!(settings.input.max_record_bytes, 1 << 20);
    }

    #[test]
    fn the_record_bound_is_configurable_within_sane_limits() {
        let settings = load(None, &[("TXPIPE__INPUT__MAX_RECORD_BYTES", "4096")]).unwrap();
        assert_eq!(settings.input.max_record_bytes, 4096);
        let settings = load(Some("[input]\nmax_record_bytes = 1024\n"), &[]).unwrap();
        assert_eq!(settings.input.max_record_bytes, 1024);
        for value in ["1023", "0", "1073741825", "lots"] {
            let err = load(None, &[("TXPIPE__INPUT__MAX_RECORD_BYTES", value)]).unwrap_err();
            assert!(
                err.to_string().contains("input.max_record_bytes"),
                "{value}: {err}"
            );
        }
    }

    #[test]
    fn file_then_environment_override() {
        let settings = load(
            Some("[chunker]\nrows_per_chunk = 500\ninterval_ms = 5\n[detectors]\npatid2 = 3\n"),
            &[
                ("TXPIPE__CHUNKER__INTERVAL_MS", "0"),
                ("TXPIPE__BATCH__SIZE", "7"),
            ],
        )
        .unwrap();
        assert_eq!(settings.chunker.rows_per_chunk, 500);
        assert_eq!(settings.chunker.interval_ms, 0);
        assert_eq!(settings.batch.size, 7);
        assert_eq!(settings.detectors.patid2, 3);
    }

    #[test]
    fn unknown_keys_are_refused_by_name() {
        let err = load(Some("[chunker]\nrows_per_chunck = 5\n"), &[]).unwrap_err();
        assert!(err.to_string().contains("rows_per_chunck"), "{err}");
        let err = load(None, &[("TXPIPE__BATCH__SIZZE", "5")]).unwrap_err();
        assert!(err.to_string().contains("sizze"), "{err}");
        let err = load(Some("[nonsense]\nx = 1\n"), &[]).unwrap_err();
        assert!(err.to_string().contains("nonsense"), "{err}");
    }

    #[test]
    fn invalid_values_are_refused_by_name() {
        let err = load(None, &[("TXPIPE__CHUNKER__ROWS_PER_CHUNK", "0")]).unwrap_err();
        assert!(err.to_string().contains("chunker.rows_per_chunk"), "{err}");
        let err = load(None, &[("TXPIPE__BATCH__SIZE", "many")]).unwrap_err();
        assert!(err.to_string().contains("batch.size"), "{err}");
        let err = load(None, &[("TXPIPE__STORAGE__KIND", "ftp")]).unwrap_err();
        assert!(err.to_string().contains("storage.kind"), "{err}");
        let err = load(None, &[("TXPIPE__DATABASE__URL", "mysql://x")]).unwrap_err();
        assert!(err.to_string().contains("database.url"), "{err}");
        let err = load(None, &[("TXPIPE__STORAGE__KIND", "s3")]).unwrap_err();
        assert!(err.to_string().contains("storage.bucket"), "{err}");
        let err = load(None, &[("TXPIPE__DATABASE__SHUTDOWN_COMPACT_MS", "30000")]).unwrap_err();
        assert!(
            err.to_string().contains("database.shutdown_compact_ms"),
            "{err}"
        );
    }

    #[test]
    fn missing_config_file_is_an_error() {
        let err = Settings::load_with_env(Some(Path::new("/nonexistent/x.toml")), []).unwrap_err();
        assert!(err.to_string().contains("/nonexistent/x.toml"));
    }

    #[test]
    fn passwords_are_redacted() {
        assert_eq!(
            redact_url("postgres://app:s3cret@db:5432/txpipe?sslmode=require"),
            "postgres://app:***@db:5432/txpipe?sslmode=require"
        );
        assert_eq!(
            redact_url("postgres://app@db/txpipe"),
            "postgres://app@db/txpipe"
        );
        assert_eq!(redact_url("sqlite://var/x.sqlite"), "sqlite://var/x.sqlite");
    }
}

#[cfg(test)]
mod production_profile {
    use super::*;

    #[test]
    fn the_production_profile_is_valid() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/production.toml");
        let settings = Settings::load_with_env(Some(&path), []).unwrap();
        assert_eq!(settings.storage.kind, StorageKind::S3);
        assert_eq!(
            DatabaseKind::of(&settings.database.url),
            Some(DatabaseKind::Postgres)
        );
    }
}
