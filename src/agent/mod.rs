//! The agent: runs attempts on a GPU host. `worker` is the daemon connection
//! (long poll, heartbeats, log shipping, reporting ends, the lease rule),
//! `run` the process runner (clean environment, process group and cgroup,
//! GPU visibility, timeout, cancel), `env` the job environment, `cgroup`
//! cgroup v2 containment, `record` the per-attempt files that let a
//! restarted agent stop what its previous run left, `identity` its name and
//! the id kept in its home, `setup` what an agent is started with, `git`
//! the job sources, `telemetry` the GPU samples it buffers and ships to the
//! daemon, `handle` an agent run as a task of this process (the daemon's
//! local agent, the desktop's agent lent to a lab).
//! The agent talks to the daemon only through the HTTP API, the agent
//! embedded in `trainyard up` included.

pub mod activity;
pub mod cgroup;
pub mod env;
pub mod git;
mod handle;
pub mod identity;
mod record;
mod run;
mod setup;
pub mod telemetry;
mod worker;

pub use handle::Handle;
pub use identity::{Identity, IdentityError};
pub use run::{start, Outcome, RunError, RunSpec, Running, StopFlag};
pub use setup::{Ready, Setup, SetupError};
pub use worker::{
    hostname, run as run_agent, stop_left_behind, AgentConfig, AgentError, LEASE_GRACE, LEASE_STOP,
    NAME_TAKEN,
};
