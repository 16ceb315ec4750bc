-- Chunk deltas are compact already and short-lived (compaction deletes
-- them): compressing them on every commit only costs CPU.
ALTER TABLE chunk_deltas ALTER COLUMN delta SET STORAGE EXTERNAL;
