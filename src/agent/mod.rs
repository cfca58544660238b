//! The agent: runs attempts on a GPU host. This part is the process runner;
//! the daemon connection (long-poll, heartbeats, log streaming) comes with
//! the HTTP API.

mod run;

pub use run::{start, Outcome, RunError, RunSpec, Running};
