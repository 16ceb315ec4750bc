//! txpipe's integration tests, as one test binary (`cargo test --test it`):
//! one module per suite, `support` shared by all of them. One binary links
//! the crate and its dependencies once instead of once per suite.
//!
//! Run one suite with `cargo test --test it MODULE::`, e.g.
//! `cargo test --test it faults::`, or one test by its full name.
//!
//! The suites share one process and run on parallel threads, so nothing
//! here may depend on process-wide state: runs of the pipeline get their
//! own directories, databases and S3 servers, and the `txpipe` binary runs
//! as child processes (pause points and injected faults are given to those
//! children on their command line). A test that measures the process
//! itself runs alone in a child process of this binary
//! ([`support::run_isolated`]).
//!
//! proptest keeps the seeds of past failures in
//! `tests/proptest-regressions/MODULE.txt`.

mod backends;
mod bad_input;
mod cli;
mod cluster;
mod crash;
mod deploy;
mod docs;
mod engine_props;
mod faults;
mod hostile_input;
mod operator;
mod ownership;
mod patterns;
mod pipeline;
mod postgres_pipeline;
mod restart;
mod s3_server_selftest;
mod s3_store;
mod s3_stream;
mod shutdown;
mod state_store;
mod storage_full;
mod support;
