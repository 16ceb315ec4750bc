//! Opens the master transactions file and the lookup file for streaming
//! reads, from a local path or `s3://bucket/key`. Large files are never
//! loaded whole: callers read them through a fixed-size buffer.

use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};

use crate::config::Settings;

/// Opens sources; holds an S3 client if any source lives in S3.
#[derive(Clone, Default)]
pub struct Sources {
    s3: Option<aws_sdk_s3::Client>,
}

/// `s3://bucket/key` split in two.
pub fn parse_s3_url(location: &str) -> Option<(&str, &str)> {
    let rest = location.strip_prefix("s3://")?;
    let (bucket, key) = rest.split_once('/')?;
    (!bucket.is_empty() && !key.is_empty()).then_some((bucket, key))
}

impl Sources {
    /// S3 sources read through `client`.
    pub fn with_s3_client(client: aws_sdk_s3::Client) -> Sources {
        Sources { s3: Some(client) }
    }

    /// Builds an S3 client (from the storage settings' region, endpoint
    /// and the default credential chain) if a source needs one.
    pub async fn for_settings(settings: &Settings) -> Sources {
        let needs_s3 = [
            &settings.source.transactions,
            &settings.source.customer_importance,
        ]
        .iter()
        .any(|location| location.starts_with("s3://"));
        Sources {
            s3: if needs_s3 {
                Some(super::s3::client(&settings.storage).await)
            } else {
                None
            },
        }
    }

    /// A blocking reader positioned at `offset`. Call it from a blocking
    /// thread.
    pub fn open_at(&self, location: &str, offset: u64) -> io::Result<Box<dyn Read + Send>> {
        if location.starts_with("s3://") {
            let (bucket, key) = parse_s3_url(location).ok_or_else(|| {
                io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!("{location}: expected s3://bucket/key"),
                )
            })?;
            let client = self.s3.as_ref().ok_or_else(|| {
                io::Error::new(
                    io::ErrorKind::Unsupported,
                    format!("{location}: no S3 client configured"),
                )
            })?;
            return super::s3::open_object_at(client, bucket, key, offset);
        }
        // Only regular files: a FIFO would block the open until a writer
        // comes, and a device (`/dev/zero`) never ends.
        let metadata = std::fs::metadata(location)
            .map_err(|e| io::Error::new(e.kind(), format!("cannot open {location}: {e}")))?;
        if !metadata.is_file() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "{location} is not a regular file ({}); give the path of a file",
                    describe_file_type(&metadata.file_type())
                ),
            ));
        }
        let mut file = File::open(location)
            .map_err(|e| io::Error::new(e.kind(), format!("cannot open {location}: {e}")))?;
        if offset > 0 {
            file.seek(SeekFrom::Start(offset))?;
        }
        Ok(Box::new(file))
    }
}

fn describe_file_type(file_type: &std::fs::FileType) -> &'static str {
    use std::os::unix::fs::FileTypeExt as _;
    if file_type.is_dir() {
        "a directory"
    } else if file_type.is_fifo() {
        "a FIFO"
    } else if file_type.is_char_device() || file_type.is_block_device() {
        "a device"
    } else if file_type.is_socket() {
        "a socket"
    } else {
        "not a file"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_regular_files_open() {
        let sources = Sources::default();
        for (path, kind) in [("/dev/zero", "a device"), ("/tmp", "a directory")] {
            let error = sources.open_at(path, 0).err().unwrap().to_string();
            assert!(error.contains(kind), "{error}");
        }
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("fifo");
        assert!(
            std::process::Command::new("mkfifo")
                .arg(&fifo)
                .status()
                .unwrap()
                .success()
        );
        let error = sources
            .open_at(fifo.to_str().unwrap(), 0)
            .err()
            .unwrap()
            .to_string();
        assert!(error.contains("a FIFO"), "{error}");
    }

    #[test]
    fn parses_s3_urls() {
        assert_eq!(parse_s3_url("s3://b/k/x.csv"), Some(("b", "k/x.csv")));
        assert_eq!(parse_s3_url("s3://b/"), None);
        assert_eq!(parse_s3_url("s3:///k"), None);
        assert_eq!(parse_s3_url("/tmp/x"), None);
    }
}
