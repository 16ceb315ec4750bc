//! txpipe: detects business patterns in a stream of bank transactions.
pub mod detect;
pub mod input;
pub mod names;
