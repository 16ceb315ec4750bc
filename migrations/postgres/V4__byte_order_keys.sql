-- Merchant and customer names are identifiers, not words to sort for
-- people: compare them byte by byte. Under a database's default collation
-- (often C.UTF-8 or en_US.UTF-8) every key comparison of these primary
-- keys calls the C library's strcoll, which is what a compaction's upsert
-- into millions of pair_state rows spends much of its time on; "C" compares
-- bytes. Equality is unchanged (the names are the same strings), and no
-- query orders by these columns.
ALTER TABLE pair_state
    ALTER COLUMN merchant TYPE TEXT COLLATE "C",
    ALTER COLUMN customer TYPE TEXT COLLATE "C";
ALTER TABLE customer_importance
    ALTER COLUMN merchant TYPE TEXT COLLATE "C",
    ALTER COLUMN customer TYPE TEXT COLLATE "C";
