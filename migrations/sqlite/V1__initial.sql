-- txpipe state, SQLite dialect (the embedded default).
-- Every chunk's state changes, its processed_chunks row and its new
-- detections are written in one transaction.

-- Mechanism X: where the chunker is in the master file.
CREATE TABLE chunker_position (
    id             INTEGER PRIMARY KEY CHECK (id = 1),
    source         TEXT    NOT NULL,
    rows_per_chunk INTEGER NOT NULL,
    next_seq       INTEGER NOT NULL,
    next_offset    INTEGER NOT NULL,
    rows_emitted   INTEGER NOT NULL,
    -- Key chosen for chunk next_seq before its PUT; re-used after a crash.
    pending_key    TEXT,
    last_key       TEXT,
    finished       INTEGER NOT NULL DEFAULT 0,
    updated_at     TEXT    NOT NULL
);

-- The CustomerImportance lookup, aggregated: w = weight_sum_cents / weight_rows.
CREATE TABLE lookup_source (
    id          INTEGER PRIMARY KEY CHECK (id = 1),
    source      TEXT    NOT NULL,
    fingerprint TEXT    NOT NULL,
    rows        INTEGER NOT NULL,
    bad_rows    INTEGER NOT NULL,
    pairs       INTEGER NOT NULL,
    loaded_at   TEXT    NOT NULL
);

CREATE TABLE customer_importance (
    merchant         TEXT    NOT NULL,
    customer         TEXT    NOT NULL,
    weight_sum_cents INTEGER NOT NULL,
    weight_rows      INTEGER NOT NULL,
    PRIMARY KEY (merchant, customer)
) WITHOUT ROWID;

-- Cumulative state per merchant/customer pair (the contract's n, s and
-- first gender); N(m), P(m), F(m) and M(m) derive from it.
CREATE TABLE pair_state (
    merchant     TEXT    NOT NULL,
    customer     TEXT    NOT NULL,
    txn_count    INTEGER NOT NULL,
    amount_cents INTEGER NOT NULL,
    gender       TEXT    NOT NULL,
    PRIMARY KEY (merchant, customer)
) WITHOUT ROWID;

CREATE TABLE processed_chunks (
    chunk_name   TEXT    PRIMARY KEY,
    seq          INTEGER,
    status       TEXT    NOT NULL CHECK (status IN ('processed', 'rejected')),
    rows         INTEGER NOT NULL,
    bad_rows     INTEGER NOT NULL,
    detections   INTEGER NOT NULL,
    reason       TEXT,
    processed_at TEXT    NOT NULL
);

-- One row per detection, ever. batch_no is NULL while the detection waits
-- in the outbox for its file.
CREATE TABLE detected_patterns (
    id             INTEGER PRIMARY KEY,
    customer       TEXT    NOT NULL,
    merchant       TEXT    NOT NULL,
    txn_count      INTEGER,
    avg_weight     REAL,
    avg_amount     REAL,
    txn_rank       REAL,
    weight_rank    REAL,
    F              INTEGER,
    M              INTEGER,
    patternId      TEXT    NOT NULL,
    actionType     TEXT    NOT NULL,
    chunk_name     TEXT    NOT NULL,
    processed_at   TEXT    NOT NULL,
    y_start_time   TEXT    NOT NULL,
    detection_time TEXT    NOT NULL,
    batch_no       INTEGER,
    UNIQUE (patternId, customer, merchant)
);

CREATE INDEX detected_patterns_outbox ON detected_patterns (id) WHERE batch_no IS NULL;
CREATE INDEX detected_patterns_batch ON detected_patterns (batch_no);

-- Detection files: assigned (key fixed) before the PUT, written after it.
CREATE TABLE detection_batches (
    batch_no   INTEGER PRIMARY KEY,
    object_key TEXT    NOT NULL UNIQUE,
    detections INTEGER NOT NULL,
    created_at TEXT    NOT NULL,
    written_at TEXT
);

CREATE TABLE restart_events (
    id            INTEGER PRIMARY KEY,
    actor         TEXT    NOT NULL,
    reason        TEXT    NOT NULL,
    restart_count INTEGER NOT NULL,
    at            TEXT    NOT NULL
);
