//! What an agent is told when it starts (its name, GPU inventory, job slots,
//! the job environment) and turning that into a ready agent: its identity
//! taken (locked) and its GPUs detected. `trainyard agent` and the daemon's
//! local agent (`crate::daemon`) both start from a [`Setup`].

use std::time::Duration;

use crate::gpu::{self, GpuError, GpuSource};
use crate::Home;

use super::identity::{Identity, IdentityError};
use super::worker::AgentConfig;

/// How to start an agent. `Default` is the desktop's local agent: the host
/// name, NVML, one CPU slot per CPU, a 10 s grace, cgroups when available.
#[derive(Debug, Clone)]
pub struct Setup {
    /// Its name, unique in the lab (the host name when `None`).
    pub name: Option<String>,
    /// A fake GPU inventory (`"2xA100-80GB"`, see `gpu::FakeGpus`) instead of
    /// NVML; only when asked for.
    pub fake_gpus: Option<String>,
    /// CPU-only jobs run at once (the number of CPUs when `None`).
    pub cpu_slots: Option<u32>,
    /// Time between SIGTERM and SIGKILL when a job is stopped.
    pub grace: Duration,
    /// Keep each attempt's work directory after it ends.
    pub keep_work: bool,
    /// Patterns of the agent's environment that jobs also see.
    pub pass_env: Vec<String>,
    /// Give each attempt its own cgroup where cgroup v2 allows it.
    pub cgroups: bool,
    /// A scripted trace for the fake GPUs (`--fake-gpu-trace`).
    pub fake_gpu_trace: Option<std::path::PathBuf>,
    /// How often the GPUs are sampled (`--sample-every`).
    pub sample_every: Duration,
}

impl Default for Setup {
    fn default() -> Setup {
        Setup {
            name: None,
            fake_gpus: None,
            cpu_slots: None,
            grace: Duration::from_secs(10),
            keep_work: false,
            pass_env: Vec::new(),
            cgroups: true,
            fake_gpu_trace: None,
            sample_every: Duration::from_secs(2),
        }
    }
}

/// An agent ready to run: pass `config` and `gpus` to [`super::run_agent`]
/// and keep `identity` until it returns.
pub struct Ready {
    /// How it runs.
    pub config: AgentConfig,
    /// Its GPU inventory.
    pub gpus: Box<dyn GpuSource>,
    /// Its identity, locked for as long as this is held.
    pub identity: Identity,
}

/// Why an agent could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    /// Its identity is held by another agent, or its files are unreadable.
    #[error(transparent)]
    Identity(#[from] IdentityError),
    /// The fake GPU inventory does not parse.
    #[error(transparent)]
    Gpus(#[from] GpuError),
}

impl Setup {
    /// Take the identity in `home` and detect the GPUs. Blocking (file
    /// locks, NVML).
    pub fn prepare(&self, home: &Home) -> Result<Ready, SetupError> {
        let name = self.name.clone().unwrap_or_else(super::hostname);
        let identity = Identity::take(home, &name)?;
        // Fake GPU UUIDs come from the identity: unique per agent, not per name.
        let gpus = gpu::detect_traced(
            self.fake_gpus.as_deref(),
            self.fake_gpu_trace.as_deref(),
            &identity.gpu_seed(),
        )?;
        let cpus = std::thread::available_parallelism()
            .map(|n| n.get() as u32)
            .unwrap_or(1);
        let config = AgentConfig {
            grace: self.grace,
            keep_work: self.keep_work,
            pass_env: self.pass_env.clone(),
            cgroups: self.cgroups,
            sample_every: self.sample_every,
            ..AgentConfig::new(&identity, home.clone(), self.cpu_slots.unwrap_or(cpus))
        };
        Ok(Ready {
            config,
            gpus,
            identity,
        })
    }

    /// [`Setup::prepare`] right after an agent of this process with the
    /// same identity stopped (the desktop lending its GPUs and taking them
    /// back): its identity lock can outlive it for a moment, as a child
    /// forked by another thread holds a copy of the lock's descriptor until
    /// it execs. Waits up to 5 s for a lock held by this process's pid;
    /// another process's is refused at once.
    pub fn prepare_again(&self, home: &Home) -> Result<Ready, SetupError> {
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        loop {
            match self.prepare(home) {
                Err(SetupError::Identity(IdentityError::Running { pid, .. }))
                    if pid == std::process::id().to_string()
                        && std::time::Instant::now() < deadline =>
                {
                    std::thread::sleep(Duration::from_millis(50));
                }
                r => return r,
            }
        }
    }
}
