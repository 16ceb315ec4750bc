//! Opens the master transactions file and the lookup file for streaming
//! reads, from a local path (or, with the S3 backend, `s3://bucket/key`).

use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};

/// A blocking reader positioned at `offset`. Large files are never loaded
/// whole: callers read them through a fixed-size buffer.
pub fn open_at(location: &str, offset: u64) -> io::Result<Box<dyn Read + Send>> {
    if location.starts_with("s3://") {
        return Err(io::Error::new(
            io::ErrorKind::Unsupported,
            format!("{location}: s3:// sources need storage.kind = \"s3\""),
        ));
    }
    let mut file = File::open(location)
        .map_err(|e| io::Error::new(e.kind(), format!("cannot open {location}: {e}")))?;
    if offset > 0 {
        file.seek(SeekFrom::Start(offset))?;
    }
    Ok(Box::new(file))
}
