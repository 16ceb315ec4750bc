-- Scale-out (cluster.enabled, docs/scaling.md): several workers on one
-- bucket and database, each owning key groups. The single-process tables
-- above stay as they are; a cluster keeps its state per key group here.
-- Leases (workers, key groups, the chunker) are rows of `leases`:
-- 'worker/OWNER_ID', 'key-group/N', 'chunker'.

-- What every worker of the cluster must agree on; written by the first.
CREATE TABLE cluster (
    id             SMALLINT PRIMARY KEY CHECK (id = 1),
    key_groups     INTEGER  NOT NULL,
    master         TEXT     NOT NULL,
    rows_per_chunk BIGINT   NOT NULL,
    lookup         TEXT     NOT NULL,
    created_at     TEXT     NOT NULL
);

-- Each key group's progress: the last chunk it applied (-1: none yet).
-- A chunk is processed (processed_chunks) once every key group applied it.
CREATE TABLE group_progress (
    key_group  INTEGER PRIMARY KEY,
    last_seq   BIGINT  NOT NULL DEFAULT -1,
    last_chunk TEXT
);

-- Each key group's state changes, one blob per chunk that touched it
-- (the db::delta encoding), committed with the group's progress.
CREATE TABLE group_deltas (
    key_group  INTEGER NOT NULL,
    seq        BIGINT  NOT NULL,
    chunk_name TEXT    NOT NULL,
    delta      BYTEA   NOT NULL,
    PRIMARY KEY (key_group, seq)
);
ALTER TABLE group_deltas ALTER COLUMN delta SET STORAGE EXTERNAL;

-- Each key group's compacted state (its owner folds group_deltas in).
CREATE TABLE group_pairs (
    key_group    INTEGER NOT NULL,
    merchant     TEXT    COLLATE "C" NOT NULL,
    customer     TEXT    COLLATE "C" NOT NULL,
    txn_count    BIGINT  NOT NULL,
    amount_cents BIGINT  NOT NULL,
    gender       TEXT    NOT NULL,
    PRIMARY KEY (key_group, merchant, customer)
);

-- A cluster's detections say which key group found them (NULL for a
-- single process).
ALTER TABLE detected_patterns ADD COLUMN key_group INTEGER;
CREATE INDEX detected_patterns_key_group ON detected_patterns (key_group)
    WHERE key_group IS NOT NULL;
-- The frontier counts a processed chunk's detections over every group.
CREATE INDEX detected_patterns_group_chunk ON detected_patterns (chunk_name)
    WHERE key_group IS NOT NULL;
