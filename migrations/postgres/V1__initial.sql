-- txpipe state, PostgreSQL dialect (production).
-- Every chunk's state changes, its processed_chunks row and its new
-- detections are written in one transaction.

-- Mechanism X: where the chunker is in the master file.
CREATE TABLE chunker_position (
    id             SMALLINT    PRIMARY KEY CHECK (id = 1),
    source         TEXT        NOT NULL,
    rows_per_chunk BIGINT      NOT NULL,
    next_seq       BIGINT      NOT NULL,
    next_offset    BIGINT      NOT NULL,
    rows_emitted   BIGINT      NOT NULL,
    -- Key chosen for chunk next_seq before its PUT; re-used after a crash.
    pending_key    TEXT,
    last_key       TEXT,
    finished       BOOLEAN     NOT NULL DEFAULT FALSE,
    updated_at     TEXT        NOT NULL
);

-- The CustomerImportance lookup, aggregated: w = weight_sum_cents / weight_rows.
CREATE TABLE lookup_source (
    id          SMALLINT PRIMARY KEY CHECK (id = 1),
    source      TEXT     NOT NULL,
    fingerprint TEXT     NOT NULL,
    rows        BIGINT   NOT NULL,
    bad_rows    BIGINT   NOT NULL,
    pairs       BIGINT   NOT NULL,
    loaded_at   TEXT     NOT NULL
);

CREATE TABLE customer_importance (
    merchant         TEXT   NOT NULL,
    customer         TEXT   NOT NULL,
    weight_sum_cents BIGINT NOT NULL,
    weight_rows      BIGINT NOT NULL,
    PRIMARY KEY (merchant, customer)
);

-- Cumulative state per merchant/customer pair (the contract's n, s and
-- first gender); N(m), P(m), F(m) and M(m) derive from it.
CREATE TABLE pair_state (
    merchant     TEXT   NOT NULL,
    customer     TEXT   NOT NULL,
    txn_count    BIGINT NOT NULL,
    amount_cents BIGINT NOT NULL,
    gender       TEXT   NOT NULL,
    PRIMARY KEY (merchant, customer)
);

CREATE TABLE processed_chunks (
    chunk_name   TEXT   PRIMARY KEY,
    seq          BIGINT,
    status       TEXT   NOT NULL CHECK (status IN ('processed', 'rejected')),
    rows         BIGINT NOT NULL,
    bad_rows     BIGINT NOT NULL,
    detections   BIGINT NOT NULL,
    reason       TEXT,
    processed_at TEXT   NOT NULL
);

-- One row per detection, ever. batch_no is NULL while the detection waits
-- in the outbox for its file.
CREATE TABLE detected_patterns (
    id             BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    customer       TEXT   NOT NULL,
    merchant       TEXT   NOT NULL,
    txn_count      BIGINT,
    avg_weight     DOUBLE PRECISION,
    avg_amount     DOUBLE PRECISION,
    txn_rank       DOUBLE PRECISION,
    weight_rank    DOUBLE PRECISION,
    F              BIGINT,
    M              BIGINT,
    patternId      TEXT   NOT NULL,
    actionType     TEXT   NOT NULL,
    chunk_name     TEXT   NOT NULL,
    processed_at   TEXT   NOT NULL,
    y_start_time   TEXT   NOT NULL,
    detection_time TEXT   NOT NULL,
    batch_no       BIGINT,
    UNIQUE (patternId, customer, merchant)
);

CREATE INDEX detected_patterns_outbox ON detected_patterns (id) WHERE batch_no IS NULL;
CREATE INDEX detected_patterns_batch ON detected_patterns (batch_no);

-- Detection files: assigned (key fixed) before the PUT, written after it.
CREATE TABLE detection_batches (
    batch_no   BIGINT PRIMARY KEY,
    object_key TEXT   NOT NULL UNIQUE,
    detections BIGINT NOT NULL,
    created_at TEXT   NOT NULL,
    written_at TEXT
);

CREATE TABLE restart_events (
    id            BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    actor         TEXT   NOT NULL,
    reason        TEXT   NOT NULL,
    restart_count BIGINT NOT NULL,
    at            TEXT   NOT NULL
);
