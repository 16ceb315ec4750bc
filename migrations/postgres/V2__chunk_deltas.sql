-- Each chunk's state change as one compact blob, committed with the chunk;
-- compactions fold them into pair_state. Cumulative state = pair_state
-- plus the blobs still here.
CREATE TABLE chunk_deltas (
    chunk_name TEXT  PRIMARY KEY,
    delta      BYTEA NOT NULL
);
