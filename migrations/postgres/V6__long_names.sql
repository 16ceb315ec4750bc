-- A B-tree index entry holds at most about 2,700 bytes, so a name of that
-- length (which the contract allows) cannot be a key of pair_state,
-- customer_importance or detected_patterns. Such names (longer than 1,000
-- bytes, and the rare names beginning with U+0001) are stored in key
-- columns as U+0001 followed by the hex SHA-256 of the name, and the name
-- itself here. Reads turn the tokens back into names.
CREATE TABLE long_names (
    token TEXT PRIMARY KEY,
    name  TEXT NOT NULL
);
