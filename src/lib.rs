//! txpipe: detects business patterns in a stream of bank transactions.
pub mod actors;
pub mod app;
pub mod clock;
pub mod config;
pub mod db;
pub mod detect;
pub mod generate;
pub mod input;
pub mod io_runtime;
pub mod layout;
pub mod metrics;
pub mod names;
pub mod pause_points;
pub mod signals;
pub mod store;
pub mod table;
