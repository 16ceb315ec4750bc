//! A directory that plays the bucket: key `a/b.csv` is file `ROOT/a/b.csv`.
//!
//! A PUT writes a temporary file under `ROOT/.txpipe-tmp/` and renames it
//! into place, so readers never see a partial object. With `fsync`, the
//! file and its directory are flushed before the PUT returns. Listing reads
//! the one directory the prefix names (keys are one level deep).

use std::io::ErrorKind;
use std::path::{Component, Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use async_trait::async_trait;
use bytes::Bytes;

use super::{ObjectStore, Sized, StoreError, StoreResult};

const TEMP_DIR: &str = ".txpipe-tmp";

pub struct LocalStore {
    root: PathBuf,
    fsync: bool,
    temp_counter: AtomicU64,
}

fn io_error(what: &str, path: &Path, error: std::io::Error) -> StoreError {
    let message = format!("{what} {path:?}: {error}");
    match error.kind() {
        ErrorKind::Interrupted | ErrorKind::TimedOut | ErrorKind::WouldBlock => {
            StoreError::Unavailable(message)
        }
        _ => StoreError::Failed(message),
    }
}

impl LocalStore {
    pub fn open(root: &Path, fsync: bool) -> StoreResult<LocalStore> {
        let temp_dir = root.join(TEMP_DIR);
        std::fs::create_dir_all(&temp_dir)
            .map_err(|e| io_error("cannot create bucket directory", root, e))?;
        remove_stale_temporaries(&temp_dir);
        Ok(LocalStore {
            root: root.to_path_buf(),
            fsync,
            temp_counter: AtomicU64::new(0),
        })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    fn path_of(&self, key: &str) -> StoreResult<PathBuf> {
        let relative = Path::new(key);
        let clean = !key.is_empty()
            && relative
                .components()
                .all(|c| matches!(c, Component::Normal(name) if name != TEMP_DIR));
        if !clean {
            return Err(StoreError::Failed(format!("invalid object key {key:?}")));
        }
        Ok(self.root.join(relative))
    }

    fn write_atomically(&self, path: &Path, mut body: &[u8]) -> StoreResult<()> {
        self.write_atomically_from(path, &mut body)
    }

    /// Streams `body` into a temporary file and renames it into place, so
    /// an object is complete or absent.
    fn write_atomically_from(&self, path: &Path, body: &mut dyn std::io::Read) -> StoreResult<()> {
        let parent = path.parent().expect("keys have a parent: the root");
        std::fs::create_dir_all(parent).map_err(|e| io_error("cannot create", parent, e))?;
        let temp = self.root.join(TEMP_DIR).join(format!(
            "{}-{}.tmp",
            std::process::id(),
            self.temp_counter.fetch_add(1, Ordering::Relaxed)
        ));
        let result = (|| {
            let mut file = std::fs::File::create(&temp)?;
            std::io::copy(body, &mut file)?;
            if self.fsync {
                file.sync_all()?;
            }
            drop(file);
            crate::pause_points::reached("temp-written");
            std::fs::rename(&temp, path)?;
            if self.fsync {
                std::fs::File::open(parent)?.sync_all()?;
            }
            Ok(())
        })();
        result.map_err(|e| {
            let _ = std::fs::remove_file(&temp);
            io_error("cannot write", path, e)
        })
    }
}

/// Temporary files a killed process left behind. Only old ones go: a live
/// process sharing the bucket may be writing the young ones.
fn remove_stale_temporaries(temp_dir: &Path) {
    const STALE: std::time::Duration = std::time::Duration::from_secs(3600);
    let Ok(entries) = std::fs::read_dir(temp_dir) else {
        return;
    };
    for entry in entries.flatten() {
        let old = entry
            .metadata()
            .and_then(|m| m.modified())
            .ok()
            .and_then(|modified| modified.elapsed().ok())
            .is_some_and(|age| age > STALE);
        if old {
            let _ = std::fs::remove_file(entry.path());
        }
    }
}

#[async_trait]
impl ObjectStore for LocalStore {
    fn describe(&self) -> String {
        format!("local directory {}", self.root.display())
    }

    async fn put(&self, key: &str, body: Bytes) -> StoreResult<()> {
        let path = self.path_of(key)?;
        self.write_atomically(&path, &body)
    }

    async fn get(&self, key: &str) -> StoreResult<Option<Bytes>> {
        let path = self.path_of(key)?;
        match std::fs::read(&path) {
            Ok(data) => Ok(Some(Bytes::from(data))),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(None),
            Err(e) => Err(io_error("cannot read", &path, e)),
        }
    }

    async fn get_at_most(&self, key: &str, limit: u64) -> StoreResult<Option<Sized>> {
        use std::io::Read as _;
        let path = self.path_of(key)?;
        let file = match std::fs::File::open(&path) {
            Ok(file) => file,
            Err(e) if e.kind() == ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io_error("cannot read", &path, e)),
        };
        let size = file
            .metadata()
            .map_err(|e| io_error("cannot read", &path, e))?
            .len();
        if size > limit {
            return Ok(Some(Sized::TooLarge { size }));
        }
        // The file may grow after the size was read: never read past the
        // limit.
        let mut body = Vec::with_capacity(size as usize);
        file.take(limit + 1)
            .read_to_end(&mut body)
            .map_err(|e| io_error("cannot read", &path, e))?;
        if body.len() as u64 > limit {
            return Ok(Some(Sized::TooLarge {
                size: body.len() as u64,
            }));
        }
        Ok(Some(Sized::Body(Bytes::from(body))))
    }

    async fn copy(&self, from: &str, to: &str) -> StoreResult<bool> {
        let (source, target) = (self.path_of(from)?, self.path_of(to)?);
        let mut reader = match std::fs::File::open(&source) {
            Ok(file) => file,
            Err(e) if e.kind() == ErrorKind::NotFound => return Ok(false),
            Err(e) => return Err(io_error("cannot read", &source, e)),
        };
        self.write_atomically_from(&target, &mut reader)?;
        Ok(true)
    }

    async fn list(
        &self,
        prefix: &str,
        start_after: Option<&str>,
        limit: usize,
    ) -> StoreResult<Vec<String>> {
        let (dir_part, name_prefix) = match prefix.rfind('/') {
            Some(slash) => (&prefix[..=slash], &prefix[slash + 1..]),
            None => ("", prefix),
        };
        let dir = self.root.join(dir_part);
        let entries = match std::fs::read_dir(&dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(io_error("cannot list", &dir, e)),
        };
        let mut keys = Vec::new();
        for entry in entries {
            let entry = entry.map_err(|e| io_error("cannot list", &dir, e))?;
            let Ok(name) = entry.file_name().into_string() else {
                continue;
            };
            if !name.starts_with(name_prefix) || name == TEMP_DIR {
                continue;
            }
            let is_file = entry.file_type().map(|t| t.is_file()).unwrap_or(false);
            if !is_file {
                continue;
            }
            let key = format!("{dir_part}{name}");
            if start_after.is_none_or(|after| key.as_str() > after) {
                keys.push(key);
            }
        }
        keys.sort_unstable();
        keys.truncate(limit);
        Ok(keys)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn bounded_reads_and_copies_never_hold_a_large_object() {
        let dir = tempfile::tempdir().unwrap();
        let store = LocalStore::open(dir.path(), false).unwrap();
        store
            .put("p/big", Bytes::from(vec![7u8; 5000]))
            .await
            .unwrap();
        assert_eq!(
            store.get_at_most("p/big", 4999).await.unwrap(),
            Some(Sized::TooLarge { size: 5000 })
        );
        assert_eq!(
            store.get_at_most("p/big", 5000).await.unwrap(),
            Some(Sized::Body(Bytes::from(vec![7u8; 5000])))
        );
        assert_eq!(store.get_at_most("p/none", 10).await.unwrap(), None);
        assert!(store.copy("p/big", "q/big.copy").await.unwrap());
        assert_eq!(store.get("q/big.copy").await.unwrap().unwrap().len(), 5000);
        assert!(!store.copy("p/none", "q/none").await.unwrap());
    }

    #[tokio::test]
    async fn put_get_list_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let store = LocalStore::open(dir.path(), true).unwrap();
        for key in ["p/b", "p/a", "p/c", "q/a"] {
            store.put(key, Bytes::from(key.to_string())).await.unwrap();
        }
        assert_eq!(store.get("p/a").await.unwrap().unwrap(), Bytes::from("p/a"));
        assert_eq!(store.get("p/zz").await.unwrap(), None);
        assert_eq!(
            store.list("p/", None, 10).await.unwrap(),
            vec!["p/a", "p/b", "p/c"]
        );
        assert_eq!(store.list("p/", Some("p/a"), 1).await.unwrap(), vec!["p/b"]);
        assert_eq!(store.list("p/b", None, 10).await.unwrap(), vec!["p/b"]);
        assert!(store.list("nothing/", None, 10).await.unwrap().is_empty());
        store.put("p/a", Bytes::from("again")).await.unwrap();
        assert_eq!(
            store.get("p/a").await.unwrap().unwrap(),
            Bytes::from("again")
        );
    }

    #[tokio::test]
    async fn refuses_keys_outside_the_root() {
        let dir = tempfile::tempdir().unwrap();
        let store = LocalStore::open(dir.path(), false).unwrap();
        for key in ["../x", "/etc/passwd", "", ".txpipe-tmp/x", "a/../../b"] {
            assert!(store.put(key, Bytes::new()).await.is_err(), "{key}");
        }
    }

    #[tokio::test]
    async fn an_unwritable_bucket_is_a_clear_permanent_error() {
        let dir = tempfile::tempdir().unwrap();
        let store = LocalStore::open(dir.path(), false).unwrap();
        // A file where the key's directory should be: even root cannot
        // write through it.
        std::fs::write(dir.path().join("p"), b"in the way").unwrap();
        let error = store.put("p/x", Bytes::from("x")).await.unwrap_err();
        assert!(!error.is_transient());
        assert!(error.to_string().contains("cannot create"), "{error}");
    }
}
