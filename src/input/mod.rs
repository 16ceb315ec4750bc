//! CSV input: the master transactions file, chunk objects and the
//! CustomerImportance lookup file, all in BankSim format.
//!
//! [`records`] finds record boundaries within a bound on a record's size
//! (`input.max_record_bytes`): the chunker copies rows verbatim, quotes and
//! line endings included, and puts a [`placeholder`] line where a record
//! was too long or had an unterminated quote; [`transactions`] turns a
//! chunk into a [`crate::detect::ChunkDelta`] plus the bad rows to
//! quarantine; [`importance`] streams the lookup file into exact weights.
//! Field cleaning rules shared by all of them live in [`fields`].

pub mod fields;
pub mod importance;
pub mod placeholder;
pub mod records;
pub mod transactions;
