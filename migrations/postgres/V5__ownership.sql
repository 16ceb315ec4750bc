-- One active owner per bucket and database, and which object is the chunk
-- of each sequence number.

-- Ownership leases. Today there is one, 'pipeline'; the scale-out design
-- adds one per key group and one for the chunker. epoch grows on every
-- change of owner and is the fencing token: every state-changing
-- transaction checks, inside itself, that its owner still holds the lease
-- at the epoch it was granted. Times are milliseconds since the Unix epoch
-- by the database's clock (expiry only decides when a standby may take
-- over; the epoch alone decides which writes are accepted).
CREATE TABLE leases (
    name           TEXT    PRIMARY KEY,
    owner_id       TEXT    NOT NULL,
    host           TEXT    NOT NULL,
    pid            BIGINT  NOT NULL,
    epoch          BIGINT  NOT NULL,
    acquired_at_ms BIGINT  NOT NULL,
    expires_at_ms  BIGINT  NOT NULL
);

-- Processes waiting as hot standbys, refreshed while they wait.
CREATE TABLE lease_standbys (
    owner_id      TEXT    PRIMARY KEY,
    lease         TEXT    NOT NULL,
    host          TEXT    NOT NULL,
    pid           BIGINT  NOT NULL,
    since_ms      BIGINT  NOT NULL,
    expires_at_ms BIGINT  NOT NULL
);

-- The key the chunker chose for each sequence number, saved before the
-- chunk's PUT: the one object Mechanism Y applies for that number.
CREATE TABLE chunk_keys (
    seq        BIGINT PRIMARY KEY,
    chunk_name TEXT    NOT NULL UNIQUE
);

-- Objects under stream_chunks/ that are not applied: names that are not
-- chunk names, and second objects for a sequence number already taken.
CREATE TABLE ignored_objects (
    object_key     TEXT PRIMARY KEY,
    seq            BIGINT,
    reason         TEXT NOT NULL,
    quarantine_key TEXT,
    seen_at        TEXT NOT NULL
);
