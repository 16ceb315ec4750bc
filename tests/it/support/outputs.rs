//! Reads what a run left behind (database tables and bucket objects) and
//! checks the promises users rely on.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use rusqlite::Connection;

use super::oracle::Emission;

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct TableDetection {
    pub pattern: String,
    pub customer: String,
    pub merchant: String,
    pub chunk_seq: u64,
    pub batch_no: Option<i64>,
}

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct FileLine {
    pub y_start_time: String,
    pub detection_time: String,
    pub pattern: String,
    pub action: String,
    pub customer: String,
    pub merchant: String,
}

#[derive(Debug)]
pub struct Outputs {
    pub table: Vec<TableDetection>,
    /// Detection files in key order, with their lines.
    pub files: Vec<(String, Vec<FileLine>)>,
    /// `(merchant, customer, n, s, gender)` sorted.
    pub pairs: Vec<(String, String, i64, i64, String)>,
    /// `(seq, status, rows, bad_rows)` sorted by seq.
    pub chunks: Vec<(u64, String, u64, u64)>,
    pub chunk_objects: Vec<String>,
    pub bucket: PathBuf,
}

fn list(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = match std::fs::read_dir(dir) {
        Ok(entries) => entries
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect(),
        Err(_) => Vec::new(),
    };
    names.sort();
    names
}

impl Outputs {
    /// Reads a run directory laid out by `embedded_settings`.
    pub fn read(dir: &Path) -> Outputs {
        let tables = Tables::sqlite(&dir.join("state.sqlite"));
        Outputs::read_from(dir.join("bucket"), tables)
    }

    /// Reads `state/state.sqlite` and a bucket directory elsewhere.
    pub fn read_with_bucket(state: &Path, bucket: &Path) -> Outputs {
        Outputs::read_from(
            bucket.to_path_buf(),
            Tables::sqlite(&state.join("state.sqlite")),
        )
    }

    /// Reads the tables of a PostgreSQL database and a bucket directory.
    pub fn read_postgres(url: &str, bucket: PathBuf) -> Outputs {
        Outputs::read_from(bucket, Tables::postgres(url))
    }

    fn read_from(bucket: PathBuf, tables: Tables) -> Outputs {
        let Tables {
            table,
            pairs,
            chunks,
        } = tables;
        let files = list(&bucket.join("detected_patterns"))
            .into_iter()
            .map(|name| {
                let data = std::fs::read(bucket.join("detected_patterns").join(&name)).unwrap();
                let mut reader = csv::Reader::from_reader(data.as_slice());
                let header: Vec<String> = reader
                    .headers()
                    .unwrap()
                    .iter()
                    .map(str::to_string)
                    .collect();
                assert_eq!(
                    header.join(","),
                    "YStartTime,detectionTime,patternId,ActionType,customerName,MerchantId",
                    "header of {name}"
                );
                let lines = reader
                    .records()
                    .map(|r| {
                        let r = r.unwrap();
                        FileLine {
                            y_start_time: r[0].to_string(),
                            detection_time: r[1].to_string(),
                            pattern: r[2].to_string(),
                            action: r[3].to_string(),
                            customer: r[4].to_string(),
                            merchant: r[5].to_string(),
                        }
                    })
                    .collect();
                (name, lines)
            })
            .collect();
        Outputs {
            table,
            files,
            pairs,
            chunks,
            chunk_objects: list(&bucket.join("stream_chunks")),
            bucket,
        }
    }

    /// `(chunk, pattern, customer, merchant)` of every detection in the
    /// table, sorted.
    pub fn emissions(&self) -> Vec<Emission> {
        let mut out: Vec<Emission> = self
            .table
            .iter()
            .map(|d| {
                let pattern: &'static str = match d.pattern.as_str() {
                    "PatId1" => "PatId1",
                    "PatId2" => "PatId2",
                    "PatId3" => "PatId3",
                    other => panic!("unknown pattern {other}"),
                };
                (d.chunk_seq, pattern, d.customer.clone(), d.merchant.clone())
            })
            .collect();
        out.sort();
        out
    }

    /// Every promise about a finished run: each detection in exactly one
    /// table row and one file line, files of exactly `batch_size` except at
    /// most one (the last), chunks contiguous and each processed once.
    pub fn check_finished(&self, batch_size: usize) {
        self.check_finished_with(batch_size, 1);
    }

    /// Like [`Outputs::check_finished`], allowing `short_files` files below
    /// the batch size (each graceful shutdown writes one).
    pub fn check_finished_with(&self, batch_size: usize, short_files: usize) {
        let keys: Vec<(String, String, String)> = self
            .table
            .iter()
            .map(|d| (d.pattern.clone(), d.customer.clone(), d.merchant.clone()))
            .collect();
        let unique: BTreeSet<_> = keys.iter().cloned().collect();
        assert_eq!(
            unique.len(),
            keys.len(),
            "duplicate detections in the table"
        );
        assert!(
            self.table.iter().all(|d| d.batch_no.is_some()),
            "detections left in the outbox"
        );

        let mut in_files: BTreeMap<(String, String, String), usize> = BTreeMap::new();
        for (name, lines) in &self.files {
            for line in lines {
                let action = match line.pattern.as_str() {
                    "PatId1" => "UPGRADE",
                    "PatId2" => "CHILD",
                    "PatId3" => "DEI-NEEDED",
                    other => panic!("{name}: unknown pattern {other}"),
                };
                assert_eq!(line.action, action, "{name}");
                assert!(
                    is_ist(&line.y_start_time),
                    "{name}: YStartTime {:?}",
                    line.y_start_time
                );
                assert!(
                    is_ist(&line.detection_time),
                    "{name}: detectionTime {:?}",
                    line.detection_time
                );
                *in_files
                    .entry((
                        line.pattern.clone(),
                        line.customer.clone(),
                        line.merchant.clone(),
                    ))
                    .or_default() += 1;
            }
        }
        let duplicated: Vec<_> = in_files.iter().filter(|(_, n)| **n > 1).collect();
        assert!(
            duplicated.is_empty(),
            "detections in more than one file line: {duplicated:?}"
        );
        let file_set: BTreeSet<_> = in_files.keys().cloned().collect();
        assert_eq!(file_set, unique, "files and table disagree");

        let sizes: Vec<usize> = self.files.iter().map(|(_, lines)| lines.len()).collect();
        let short: Vec<usize> = sizes.iter().copied().filter(|&n| n != batch_size).collect();
        assert!(
            short.len() <= short_files,
            "more than {short_files} file(s) not of batch size {batch_size}: {sizes:?}"
        );
        assert!(
            short.iter().all(|&n| n < batch_size && n > 0),
            "odd file sizes {sizes:?}"
        );
        if short_files == 1
            && let Some(&n) = short.first()
        {
            assert_eq!(
                sizes.last(),
                Some(&n),
                "the short file is not the last one: {sizes:?}"
            );
        }

        let seqs: Vec<u64> = self.chunks.iter().map(|c| c.0).collect();
        assert_eq!(
            seqs,
            (0..seqs.len() as u64).collect::<Vec<_>>(),
            "processed chunks not contiguous"
        );
        let object_seqs: Vec<u64> = self
            .chunk_objects
            .iter()
            .map(|name| name["chunk-".len().."chunk-".len() + 10].parse().unwrap())
            .collect();
        assert_eq!(
            object_seqs, seqs,
            "chunk objects and processed chunks differ"
        );
    }

    /// The data rows of all chunk objects, in order, equal the master
    /// file's data rows: no gap, no duplicate.
    pub fn check_chunks_match_master(&self, master: &Path, rows_per_chunk: usize) {
        let master_rows = data_lines(&std::fs::read(master).unwrap());
        let mut chunk_rows = Vec::new();
        for (i, name) in self.chunk_objects.iter().enumerate() {
            let rows =
                data_lines(&std::fs::read(self.bucket.join("stream_chunks").join(name)).unwrap());
            if i + 1 < self.chunk_objects.len() {
                assert_eq!(
                    rows.len(),
                    rows_per_chunk,
                    "chunk {name} has {} rows",
                    rows.len()
                );
            }
            chunk_rows.extend(rows);
        }
        assert_eq!(
            chunk_rows.len(),
            master_rows.len(),
            "row count of chunks vs master"
        );
        assert!(
            chunk_rows == master_rows,
            "chunk rows differ from the master file's rows"
        );
    }
}

/// The data lines of a CSV without quoted newlines (header dropped, line
/// ends normalized, blank lines skipped).
fn data_lines(data: &[u8]) -> Vec<Vec<u8>> {
    data.split(|&b| b == b'\n')
        .map(|line| line.strip_suffix(b"\r").unwrap_or(line).to_vec())
        .filter(|line| !line.is_empty())
        .skip(1)
        .collect()
}

/// `2026-11-22T15:04:05.123+05:30`
pub fn is_ist(text: &str) -> bool {
    text.len() == 29
        && text.ends_with("+05:30")
        && chrono::DateTime::parse_from_rfc3339(text).is_ok()
        && text.as_bytes()[19] == b'.'
}

/// The three tables the checks need, from either backend.
struct Tables {
    table: Vec<TableDetection>,
    pairs: Vec<(String, String, i64, i64, String)>,
    chunks: Vec<(u64, String, u64, u64)>,
}

const DETECTIONS_SQL: &str = "SELECT d.patternId, d.customer, d.merchant, c.seq, d.batch_no
     FROM detected_patterns d JOIN processed_chunks c ON c.chunk_name = d.chunk_name
     ORDER BY d.id";
const PAIRS_SQL: &str =
    "SELECT merchant, customer, txn_count, amount_cents, gender FROM pair_state ORDER BY 1, 2";
const CHUNKS_SQL: &str = "SELECT seq, status, rows, bad_rows FROM processed_chunks ORDER BY seq";

impl Tables {
    fn sqlite(path: &Path) -> Tables {
        let db = Connection::open(path).unwrap();
        let table = db
            .prepare(DETECTIONS_SQL)
            .unwrap()
            .query_map([], |r| {
                Ok(TableDetection {
                    pattern: r.get(0)?,
                    customer: r.get(1)?,
                    merchant: r.get(2)?,
                    chunk_seq: r.get::<_, i64>(3)? as u64,
                    batch_no: r.get(4)?,
                })
            })
            .unwrap()
            .collect::<Result<Vec<_>, _>>()
            .unwrap();
        let pairs = db
            .prepare(PAIRS_SQL)
            .unwrap()
            .query_map([], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?))
            })
            .unwrap()
            .collect::<Result<Vec<_>, _>>()
            .unwrap();
        let chunks = db
            .prepare(CHUNKS_SQL)
            .unwrap()
            .query_map([], |r| {
                Ok((
                    r.get::<_, i64>(0)? as u64,
                    r.get(1)?,
                    r.get::<_, i64>(2)? as u64,
                    r.get::<_, i64>(3)? as u64,
                ))
            })
            .unwrap()
            .collect::<Result<Vec<_>, _>>()
            .unwrap();
        Tables {
            table,
            pairs,
            chunks,
        }
    }

    fn postgres(url: &str) -> Tables {
        let url = url.to_string();
        std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(async {
                let (client, connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
                    .await
                    .unwrap();
                let driver = tokio::spawn(connection);
                let table = client
                    .query(DETECTIONS_SQL, &[])
                    .await
                    .unwrap()
                    .iter()
                    .map(|r| TableDetection {
                        pattern: r.get(0),
                        customer: r.get(1),
                        merchant: r.get(2),
                        chunk_seq: r.get::<_, i64>(3) as u64,
                        batch_no: r.get(4),
                    })
                    .collect();
                // Sort like SQLite's BINARY collation, whatever the database's.
                let mut pairs: Vec<(String, String, i64, i64, String)> = client
                    .query(PAIRS_SQL, &[])
                    .await
                    .unwrap()
                    .iter()
                    .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3), r.get(4)))
                    .collect();
                // A cluster keeps its state per key group, partly as
                // deltas: read it as the workers do.
                let key_groups: Option<i32> = client
                    .query_opt("SELECT key_groups FROM cluster", &[])
                    .await
                    .unwrap()
                    .map(|r| r.get(0));
                if let Some(key_groups) = key_groups {
                    let store = txpipe::db::postgres::PostgresStore::connect(&url, 1)
                        .await
                        .unwrap();
                    let groups: Vec<u32> = (0..key_groups as u32).collect();
                    let found = std::sync::Mutex::new(Vec::new());
                    store
                        .scan_group_pairs(&groups, &mut |row| {
                            found.lock().unwrap().push((
                                row.merchant.to_string(),
                                row.customer.to_string(),
                                row.count as i64,
                                row.amount,
                                row.gender.code().to_string(),
                            ))
                        })
                        .await
                        .unwrap();
                    pairs.extend(found.into_inner().unwrap());
                }
                pairs.sort();
                let chunks = client
                    .query(CHUNKS_SQL, &[])
                    .await
                    .unwrap()
                    .iter()
                    .map(|r| {
                        (
                            r.get::<_, i64>(0) as u64,
                            r.get(1),
                            r.get::<_, i64>(2) as u64,
                            r.get::<_, i64>(3) as u64,
                        )
                    })
                    .collect();
                drop(client);
                let _ = driver.await;
                Tables {
                    table,
                    pairs,
                    chunks,
                }
            })
        })
        .join()
        .unwrap()
    }
}
