//! The agent: runs attempts on a GPU host. `worker` is the daemon connection
//! (long poll, heartbeats, log shipping, reporting ends), `run` the process
//! runner (process group, GPU visibility, timeout, cancel), `git` the job
//! sources. The agent talks to the daemon only through the HTTP API, the
//! agent embedded in `trainyard up` included.

pub mod git;
mod run;
mod worker;

pub use run::{start, Outcome, RunError, RunSpec, Running};
pub use worker::{hostname, run as run_agent, AgentConfig};
