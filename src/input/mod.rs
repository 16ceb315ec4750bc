//! CSV input: the master transactions file, chunk objects and the
//! CustomerImportance lookup file, all in BankSim format.
//!
//! [`records`] finds record boundaries (the chunker copies rows verbatim,
//! quotes and line endings included); [`transactions`] turns a chunk into a
//! [`crate::detect::ChunkDelta`] plus the bad rows to quarantine;
//! [`importance`] aggregates the lookup file into exact weights. Field
//! cleaning rules shared by all of them live in [`fields`].

pub mod fields;
pub mod importance;
pub mod records;
pub mod transactions;
