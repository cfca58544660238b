//! The agent: a GPU host's worker. It reports its GPUs, long-polls the
//! daemon for attempts, prepares each one (git checkout, dataset inputs),
//! runs it with the process runner, ships its log, and reports the end,
//! retrying until the daemon hears it (a daemon restart loses nothing).
//!
//! The agent never decides placement; it runs what it is given on the GPUs
//! named, and stops what the daemon says is no longer current.
//!
//! Two rules keep an attempt from ever overlapping its own retry:
//! - every attempt with a process is recorded in the agent's home
//!   (`record`); a restarted agent stops what its previous run left behind
//!   before it takes new work;
//! - an agent that cannot renew an attempt's lease stops the attempt itself
//!   once [`LEASE_STOP`] of the lease has passed since the last renewal that
//!   succeeded (measured on the monotonic clock from when that request was
//!   sent), with at most [`LEASE_GRACE`] of the lease between SIGTERM and
//!   SIGKILL, so it is dead before the daemon can expire the lease.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::future::Future;
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::api::{AgentReport, FinishRequest, Work};
use crate::client::{Client, ClientError};
use crate::gpu::{Gpu, GpuSource};
use crate::queue::JobId;
use crate::store::{CheckoutOptions, DatasetRef, Store};
use crate::Home;

use super::activity;
use super::cgroup::{self, Cgroups};
use super::identity::Identity;
use super::record::{self, AttemptRecord, RecordedEnd, Records};
use super::run::{self, Outcome, RunSpec, StopFlag};
use super::telemetry::{SampleBuffer, Sampler};

/// The share of the lease after the last successful renewal at which an
/// agent that cannot reach its daemon starts stopping its attempts.
pub const LEASE_STOP: f64 = 0.6;

/// The API error code for an agent name held by a live agent of another
/// identity.
pub const NAME_TAKEN: &str = "agent_name_taken";
/// The share of the lease an attempt stopped for that reason gets between
/// SIGTERM and SIGKILL (at most; `--grace` when shorter). With
/// [`LEASE_STOP`] the process is dead by 0.8 of the lease, before the
/// daemon, whose lease started no earlier than the request was sent, can
/// expire it and start the next attempt.
pub const LEASE_GRACE: f64 = 0.2;

/// How an agent runs.
#[derive(Debug, Clone)]
pub struct AgentConfig {
    /// Its name (unique in the lab; the host name by default).
    pub name: String,
    /// Its id (see [`super::identity`]): a second agent that registers the
    /// same name with another id is refused while this one is alive.
    pub id: String,
    /// Its home: the dataset store inputs come from, work directories, the
    /// git cache.
    pub home: Home,
    /// CPU-only jobs run at once.
    pub cpu_slots: u32,
    /// Time between SIGTERM and SIGKILL when stopping a job.
    pub grace: Duration,
    /// Keep each attempt's work directory after it ends.
    pub keep_work: bool,
    /// Patterns of the agent's environment variables that jobs also see,
    /// beyond the base set of `env::BASE` (`TRAINYARD_TOKEN` never).
    pub pass_env: Vec<String>,
    /// Put each attempt in its own cgroup when cgroup v2 allows it (else, or
    /// when false, process groups only).
    pub cgroups: bool,
    /// How often the GPUs are sampled (2 s).
    pub sample_every: Duration,
    /// Samples kept while the daemon is unreachable (an hour at 2 s); the
    /// oldest go first.
    pub sample_buffer: usize,
}

impl AgentConfig {
    /// A configuration with the defaults: 10 s grace, work directories
    /// removed, no extra environment, cgroups when available.
    pub fn new(identity: &Identity, home: Home, cpu_slots: u32) -> AgentConfig {
        AgentConfig {
            name: identity.name.clone(),
            id: identity.id.clone(),
            home,
            cpu_slots,
            grace: Duration::from_secs(10),
            keep_work: false,
            pass_env: Vec::new(),
            cgroups: true,
            sample_every: Duration::from_secs(2),
            sample_buffer: 1800,
        }
    }
}

struct Held {
    job: JobId,
    attempt: u32,
    cancel: Arc<StopFlag>,
    pgid: Option<u32>,
    cgroup: Option<PathBuf>,
    /// When the last request that renewed this attempt's lease was sent.
    renewed: Instant,
    /// Stopped because its lease could not be renewed.
    lease_stopped: bool,
    /// Why the daemon stopped it, when it said (the idle policy).
    stop_reason: Option<String>,
}

struct GpuState {
    gpus: Vec<Gpu>,
    kind: &'static str,
    note: Option<String>,
    pids: Vec<u32>,
}

struct Agent {
    cfg: AgentConfig,
    client: Client,
    held: Mutex<HashMap<String, Held>>,
    gpu: Mutex<GpuState>,
    lease_ms: AtomicU64,
    hostname: String,
    records: Records,
    cgroups: Option<Cgroups>,
    /// Tokens of attempts a previous run of this agent left behind: stopped,
    /// never run again even if the daemon delivers them.
    retired: Mutex<HashSet<String>>,
    /// GPU samples waiting to be shipped.
    samples: Arc<SampleBuffer>,
    /// The agent is stopping: what it stops now goes back to the queue.
    shutting_down: AtomicBool,
}

impl Agent {
    fn held(&self) -> std::sync::MutexGuard<'_, HashMap<String, Held>> {
        self.held.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn report(&self) -> AgentReport {
        let held = self.held();
        let g = self.gpu.lock().unwrap_or_else(|p| p.into_inner());
        AgentReport {
            version: env!("CARGO_PKG_VERSION").to_string(),
            agent_id: self.cfg.id.clone(),
            hostname: self.hostname.clone(),
            gpu_source: g.kind.to_string(),
            gpu_error: g.note.clone(),
            gpus: g.gpus.clone(),
            cpu_slots: self.cfg.cpu_slots,
            attempts: held.keys().cloned().collect(),
            pids: g.pids.clone(),
            leaving: self.shutting_down.load(Ordering::SeqCst),
        }
    }

    fn stop(&self, tokens: &[String], reasons: &[(String, String)]) {
        let mut held = self.held();
        for t in tokens {
            if let Some(h) = held.get_mut(t) {
                if let Some((_, r)) = reasons.iter().find(|(rt, _)| rt == t) {
                    h.stop_reason.get_or_insert_with(|| r.clone());
                }
                tracing::info!(
                    job = h.job.0,
                    attempt = h.attempt,
                    "stopping: the daemon says this attempt is no longer current"
                );
                h.cancel.request();
            }
        }
    }

    /// A request sent at `sent` that named `included` succeeded: the leases
    /// of those not in `stop` were renewed no earlier than `sent`.
    fn renewed(&self, sent: Instant, included: &[String], stop: &[String]) {
        let mut held = self.held();
        for t in included {
            if stop.contains(t) {
                continue;
            }
            if let Some(h) = held.get_mut(t) {
                h.renewed = h.renewed.max(sent);
            }
        }
    }

    fn lease(&self) -> Duration {
        Duration::from_millis(self.lease_ms.load(Ordering::Relaxed).max(300))
    }

    fn work_root(&self) -> PathBuf {
        work_root(&self.cfg)
    }
}

fn work_root(cfg: &AgentConfig) -> PathBuf {
    cfg.home.agent_dir(&cfg.name)
}

/// Run the agent until `shutdown` completes; then stop its attempts
/// (SIGTERM, then SIGKILL) and report them ended.
pub async fn run(
    cfg: AgentConfig,
    client: Client,
    mut gpus: Box<dyn GpuSource>,
    shutdown: impl Future<Output = ()>,
) -> Result<(), AgentError> {
    let first = gpus.snapshot().unwrap_or_default();
    let cgroups = if cfg.cgroups {
        match Cgroups::detect() {
            Ok(c) => {
                tracing::info!(cgroup = %c.base().display(), "job containment: one cgroup v2 per attempt");
                c.sweep_stale();
                Some(c)
            }
            Err(e) => {
                tracing::info!(reason = %e, "job containment: process groups only (a job that calls setsid can escape a cancel)");
                None
            }
        }
    } else {
        tracing::info!("job containment: process groups only (--no-cgroup)");
        None
    };
    let agent = Arc::new(Agent {
        records: Records::new(work_root(&cfg).join("attempts")),
        cgroups,
        retired: Mutex::new(HashSet::new()),
        samples: Arc::new(SampleBuffer::new(cfg.sample_buffer)),
        hostname: hostname(),
        held: Mutex::new(HashMap::new()),
        gpu: Mutex::new(GpuState {
            gpus: first,
            kind: gpus.kind(),
            note: gpus.note(),
            pids: Vec::new(),
        }),
        lease_ms: AtomicU64::new(30_000),
        shutting_down: AtomicBool::new(false),
        client,
        cfg,
    });
    tracing::info!(agent = %agent.cfg.name, server = %agent.client.url(), gpus = gpus.kind(), "agent starting");
    // What a previous run left behind is stopped before anything new runs.
    recover(&agent).await;
    // Dropping the sender stops the sampler (at once, not at its next tick).
    let (stop_sampler, stop) = std::sync::mpsc::channel::<()>();
    let sampler = {
        let a = agent.clone();
        std::thread::spawn(move || sample_gpus(&a, gpus.as_mut(), &stop))
    };
    let ship = tokio::spawn(super::telemetry::ship_loop(
        agent.client.clone(),
        agent.cfg.name.clone(),
        agent.cfg.id.clone(),
        agent.samples.clone(),
        super::telemetry::ship_every(agent.cfg.sample_every),
    ));
    let hb = tokio::spawn(heartbeat_loop(agent.clone()));
    let watch = tokio::spawn(lease_watch(agent.clone()));
    let result = tokio::select! {
        r = poll_loop(agent.clone()) => r,
        _ = shutdown => Ok(()),
    };
    hb.abort();
    watch.abort();
    ship.abort();
    // Stop everything still running and let the attempt tasks report it:
    // the daemon queues those jobs again (the agent left, they did not fail).
    // First tell the daemon it is leaving, so that it places nothing more
    // here (a requeued job would come straight back); best effort.
    agent.shutting_down.store(true, Ordering::SeqCst);
    let _ = tokio::time::timeout(
        Duration::from_secs(2),
        agent.client.heartbeat(&agent.cfg.name, &agent.report()),
    )
    .await;
    let tokens: Vec<String> = agent.held().keys().cloned().collect();
    agent.stop(&tokens, &[]);
    for _ in 0..200 {
        if agent.held().is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    drop(stop_sampler);
    let _ = tokio::task::spawn_blocking(move || sampler.join()).await;
    tracing::info!("agent stopped");
    result
}

/// Why an agent stopped by itself.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// The daemon has a live agent of this name with another identity.
    #[error("{message}")]
    NameTaken {
        /// The daemon's explanation (which host holds the name).
        message: String,
    },
}

/// This host's name (the default agent name).
pub fn hostname() -> String {
    rustix::system::uname()
        .nodename()
        .to_string_lossy()
        .into_owned()
}

/// Sample the GPUs every `sample_every` on a plain thread (NVML calls
/// block), find the processes in Trainyard's process groups and cgroups
/// (their GPU use is ours, each attempt's its own), and buffer the sample
/// for shipping.
fn sample_gpus(a: &Agent, src: &mut dyn GpuSource, stop: &std::sync::mpsc::Receiver<()>) {
    let every = a.cfg.sample_every.max(Duration::from_millis(50));
    let mut warned = false;
    let mut sampler = Sampler::default();
    let mut meter = activity::GroupMeter::default();
    let mut users: HashMap<u32, String> = HashMap::new();
    let mut last: Option<Instant> = None;
    let mut next = Instant::now();
    loop {
        let taken = Instant::now();
        let t_ms = crate::db::now_ns() / 1_000_000;
        let gpus = match src.snapshot() {
            Ok(g) => {
                warned = false;
                Some(g)
            }
            Err(e) => {
                if !warned {
                    tracing::warn!(error = %e, "GPU snapshot failed");
                    warned = true;
                }
                None
            }
        };
        let mut groups: Vec<(u32, Owner)> = Vec::new();
        let mut cgroups: Vec<(PathBuf, Owner)> = Vec::new();
        for h in a.held().values() {
            if let Some(pg) = h.pgid {
                groups.push((pg, (h.job, h.attempt)));
            }
            if let Some(cg) = &h.cgroup {
                cgroups.push((cg.clone(), (h.job, h.attempt)));
            }
        }
        let owners = owners(&groups, &cgroups);
        let mut pids: Vec<u32> = owners.keys().copied().collect();
        pids.sort_unstable();
        let mut gpus = gpus;
        if let Some(gpus) = &mut gpus {
            name_foreign(gpus, &owners, &mut users);
        }
        {
            let mut g = a.gpu.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(gpus) = &gpus {
                g.gpus = gpus.clone();
            }
            g.pids = pids;
        }
        if let Some(gpus) = gpus.filter(|g| !g.is_empty()) {
            let dt = last.map_or(every, |l| taken - l);
            let mut sample = sampler.sample(&gpus, &owners, t_ms, dt);
            sample.groups = meter.sample(&owners, sample.dt_ms, activity::read);
            a.samples.push(sample);
            last = Some(taken);
        }
        // On a fixed grid, so the interval does not drift by the work.
        next += every;
        let now = Instant::now();
        if next < now {
            next = now + every;
        }
        // Asleep until the next sample or the stop, whichever comes first.
        match stop.recv_timeout(next.saturating_duration_since(Instant::now())) {
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
            Ok(()) | Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => return,
        }
    }
}

/// Name the user of each GPU process that is not Trainyard's (`users`
/// caches uid → name), so `gpus` and the GPUs page can say whose it is.
fn name_foreign(gpus: &mut [Gpu], owners: &HashMap<u32, Owner>, users: &mut HashMap<u32, String>) {
    use std::os::unix::fs::MetadataExt;
    for g in gpus {
        for p in &mut g.processes {
            if owners.contains_key(&p.pid) {
                continue;
            }
            let Ok(m) = std::fs::metadata(format!("/proc/{}", p.pid)) else {
                continue;
            };
            let uid = m.uid();
            let name = users.entry(uid).or_insert_with(|| {
                nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(uid))
                    .ok()
                    .flatten()
                    .map_or_else(|| format!("uid{uid}"), |u| u.name)
            });
            p.user = Some(name.clone());
        }
    }
}

/// The attempt (job, attempt number) a process belongs to.
type Owner = (JobId, u32);

/// The processes of each held attempt, by PID: those in its process group
/// and those in its cgroup.
fn owners(groups: &[(u32, Owner)], cgroups: &[(PathBuf, Owner)]) -> HashMap<u32, Owner> {
    let mut out = HashMap::new();
    for (pid, pgrp) in processes_in_groups(&groups.iter().map(|g| g.0).collect::<Vec<_>>()) {
        if let Some((_, owner)) = groups.iter().find(|g| g.0 == pgrp) {
            out.insert(pid, *owner);
        }
    }
    for (dir, owner) in cgroups {
        for pid in cgroup::procs(dir) {
            out.insert(pid, *owner);
        }
    }
    out
}

/// The processes whose process group is one of `groups`, with their group.
fn processes_in_groups(groups: &[u32]) -> Vec<(u32, u32)> {
    if groups.is_empty() {
        return Vec::new();
    }
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return groups.iter().map(|g| (*g, *g)).collect();
    };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter_map(|pid| {
            let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
            // Fields after the command: state ppid pgrp ...
            let rest = s.rsplit_once(") ")?.1;
            let pg = rest.split(' ').nth(2)?.parse::<u32>().ok()?;
            groups.contains(&pg).then_some((pid, pg))
        })
        .collect()
}

async fn heartbeat_loop(a: Arc<Agent>) {
    let mut down = false;
    loop {
        let report = a.report();
        let sent = Instant::now();
        match a.client.heartbeat(&a.cfg.name, &report).await {
            Ok(o) => {
                if down {
                    tracing::info!("daemon reachable again");
                    down = false;
                }
                a.lease_ms.store(o.lease_ms, Ordering::Relaxed);
                a.renewed(sent, &report.attempts, &o.stop);
                a.stop(&o.stop, &o.stop_reasons);
            }
            Err(e) => {
                if !down {
                    tracing::warn!(error = %e, "heartbeat failed; retrying");
                    down = true;
                }
            }
        }
        tokio::time::sleep((a.lease() / 4).min(Duration::from_secs(2))).await;
    }
}

async fn poll_loop(a: Arc<Agent>) -> Result<(), AgentError> {
    let mut backoff = Duration::from_millis(100);
    loop {
        let wait = (a.lease() / 3).min(Duration::from_secs(25));
        let report = a.report();
        let included = report.attempts.clone();
        let sent = Instant::now();
        match a.client.poll(&a.cfg.name, report, wait).await {
            Ok(orders) => {
                backoff = Duration::from_millis(100);
                a.lease_ms.store(orders.lease_ms, Ordering::Relaxed);
                a.renewed(sent, &included, &orders.stop);
                a.stop(&orders.stop, &orders.stop_reasons);
                for w in orders.assignments {
                    let token = w.assignment.token.clone();
                    if a.retired
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .contains(&token)
                    {
                        continue;
                    }
                    let cancel = Arc::new(StopFlag::default());
                    {
                        let mut held = a.held();
                        if held.contains_key(&token) {
                            continue;
                        }
                        // The daemon renews an assignment's lease when it
                        // delivers it, after this request was sent.
                        held.insert(
                            token,
                            Held {
                                job: w.assignment.job,
                                attempt: w.assignment.attempt,
                                cancel: cancel.clone(),
                                pgid: None,
                                cgroup: None,
                                renewed: sent,
                                lease_stopped: false,
                                stop_reason: None,
                            },
                        );
                    }
                    tokio::spawn(attempt(a.clone(), w, cancel));
                }
            }
            Err(ClientError::Api { code, message, .. }) if code == NAME_TAKEN => {
                tracing::error!(%message, "the daemon refused this agent's name");
                return Err(AgentError::NameTaken { message });
            }
            Err(ClientError::Unauthorized { url, message }) => {
                tracing::error!(%url, %message, "the daemon refused this agent's token; retrying in 10 s");
                tokio::time::sleep(Duration::from_secs(10)).await;
            }
            Err(e) => {
                tracing::warn!(error = %e, "poll failed; retrying");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2)
                    .min((a.lease() / 4).clamp(Duration::from_millis(100), Duration::from_secs(2)));
            }
        }
    }
}

/// Everything an attempt needs before its process starts, or the message
/// that explains (in its log) why it cannot start.
fn prepare(a: &Agent, w: &Work, dir: &Path) -> Result<RunSpec, String> {
    let spec = &w.spec;
    let job = w.assignment.job;
    std::fs::create_dir_all(dir)
        .map_err(|e| format!("cannot create the work directory {}: {e}", dir.display()))?;
    // The job's own variables, then Trainyard's, over a clean base.
    let mut env: BTreeMap<String, String> = spec.env.clone();
    env.extend(spec.secret_env.clone());
    env.insert("TRAINYARD_JOB_ID".into(), job.to_string());
    env.insert("TRAINYARD_ATTEMPT".into(), w.assignment.attempt.to_string());
    env.insert("TRAINYARD_AGENT".into(), a.cfg.name.clone());
    let mut workdir = match &spec.workdir {
        Some(d) => d.clone(),
        None => dir.to_path_buf(),
    };
    if let Some(git) = &spec.git {
        let src = dir.join("src");
        let commit = super::git::checkout(&a.cfg.home.agent_git_cache(), git, &src)
            .map_err(|e| e.to_string())?;
        env.insert("TRAINYARD_GIT_COMMIT".into(), commit.to_string());
        workdir = src;
    }
    if !spec.inputs.is_empty() {
        let store = Store::open(&a.cfg.home).map_err(|e| format!("dataset inputs: {e}"))?;
        let inputs = dir.join("inputs");
        for input in &spec.inputs {
            let r: DatasetRef = input
                .parse()
                .map_err(|e| format!("dataset input {input:?}: {e}"))?;
            let target = inputs.join(&r.dataset);
            let rep = store
                .checkout(&r, &target, CheckoutOptions::default(), &crate::progress::NoProgress)
                .map_err(|e| {
                    format!(
                        "dataset input {input} is not available on agent {}: {e} (add or pull it into this host's store)",
                        a.cfg.name
                    )
                })?;
            let var = r.env_var();
            env.insert(var.clone(), target.to_string_lossy().into_owned());
            env.insert(format!("{var}_VERSION"), rep.version.to_string());
        }
        env.insert(
            "TRAINYARD_INPUTS".into(),
            inputs.to_string_lossy().into_owned(),
        );
    }
    // GPU UUIDs to NVML indices, as this host numbers them now.
    let g = a.gpu.lock().unwrap_or_else(|p| p.into_inner());
    let mut gpus = Vec::new();
    for uuid in &w.assignment.gpus {
        let gpu = g
            .gpus
            .iter()
            .find(|x| &x.uuid == uuid)
            .ok_or_else(|| format!("assigned GPU {uuid} is not on agent {}", a.cfg.name))?;
        gpus.push((gpu.index, uuid.clone()));
    }
    Ok(RunSpec {
        argv: spec.argv(),
        base_env: super::env::base_env(std::env::vars_os(), &a.cfg.pass_env),
        env,
        workdir,
        gpus,
        log: PathBuf::new(),
        timeout: spec.timeout_s.map(Duration::from_secs),
        grace: a.cfg.grace,
        cgroup: None,
    })
}

/// Run one attempt from assignment to acknowledged end.
async fn attempt(a: Arc<Agent>, w: Work, cancel: Arc<StopFlag>) {
    let job = w.assignment.job;
    let n = w.assignment.attempt;
    let token = w.assignment.token.clone();
    let root = a.work_root();
    let dir = root.join(format!("{job}-{n}"));
    let log = root.join(format!("{job}-{n}.log"));
    let _ = std::fs::create_dir_all(&root);
    tracing::info!(job = job.0, attempt = n, gpus = ?w.assignment.gpus, "attempt received");

    let prepared = {
        let (a2, w2, d2) = (a.clone(), w.clone(), dir.clone());
        tokio::task::spawn_blocking(move || prepare(&a2, &w2, &d2))
            .await
            .unwrap_or_else(|e| Err(format!("preparing panicked: {e}")))
    };
    let mut rec = AttemptRecord {
        job,
        attempt: n,
        token: token.clone(),
        pid: None,
        start_ticks: None,
        cgroup: None,
        end: None,
    };
    let mut commit = None;
    let started = prepared.and_then(|mut spec| {
        spec.log = log.clone();
        commit = spec.env.get("TRAINYARD_GIT_COMMIT").cloned();
        if cancel.requested() {
            return Err("cancelled before it started".into());
        }
        start_recorded(&a, &mut spec, &mut rec)
    });
    let mut sent = 0u64;
    let mut requeue = false;
    let (exit_code, error) = match started {
        Err(msg) => {
            tracing::warn!(job = job.0, attempt = n, "{msg}");
            append_line(&log, &format!("trainyard: {msg}"));
            (None, Some(msg))
        }
        Ok(mut running) => {
            let pid = running.pid();
            if let Some(h) = a.held().get_mut(&token) {
                h.pgid = Some(pid);
                h.cgroup = running.cgroup().map(Path::to_path_buf);
            }
            report_started(&a, job, n, &token, commit.as_deref(), &cancel).await;
            let c2 = cancel.clone();
            let mut waiter = tokio::task::spawn_blocking(move || running.wait(&c2));
            let outcome = loop {
                tokio::select! {
                    r = &mut waiter => break r,
                    _ = tokio::time::sleep(Duration::from_millis(200)) => {
                        sent = ship_log(&a, job, n, &token, &log, sent).await;
                    }
                }
            };
            let lease_stopped = a.held().get(&token).is_some_and(|h| h.lease_stopped);
            match outcome {
                Ok(Ok(Outcome::Exited(c))) => (Some(c), None),
                Ok(Ok(Outcome::Signaled(s))) => {
                    (None, Some(format!("attempt {n} was killed by signal {s}")))
                }
                Ok(Ok(Outcome::TimedOut)) => {
                    let msg = format!(
                        "attempt {n} timed out after {} s and was stopped",
                        w.spec.timeout_s.unwrap_or(0)
                    );
                    append_line(&log, &format!("trainyard: {msg}"));
                    (None, Some(msg))
                }
                Ok(Ok(Outcome::Cancelled)) if lease_stopped => {
                    let msg = format!(
                        "attempt {n} was stopped by agent {}: it could not reach the daemon to renew the lease ({} s)",
                        a.cfg.name,
                        a.lease().as_secs_f64()
                    );
                    append_line(&log, &format!("trainyard: {msg}"));
                    (None, Some(msg))
                }
                Ok(Ok(Outcome::Cancelled)) => {
                    match a.held().get(&token).and_then(|h| h.stop_reason.clone()) {
                        Some(reason) => {
                            append_line(&log, &format!("trainyard: {reason}"));
                            (None, Some(reason))
                        }
                        None if a.shutting_down.load(Ordering::SeqCst) => {
                            let msg = format!(
                                "attempt {n} was stopped: its agent {} shut down; the job is queued again",
                                a.cfg.name
                            );
                            append_line(&log, &format!("trainyard: {msg}"));
                            requeue = true;
                            (None, Some(msg))
                        }
                        None => (
                            None,
                            Some(format!("attempt {n} was stopped (cancelled or reassigned)")),
                        ),
                    }
                }
                Ok(Err(e)) => (None, Some(e.to_string())),
                Err(e) => (None, Some(format!("waiting panicked: {e}"))),
            }
        }
    };
    if rec.pid.is_some() || rec.cgroup.is_some() {
        // The process is gone; what is left to do is telling the daemon.
        rec.end = Some(RecordedEnd {
            exit_code,
            error: error.clone(),
        });
        if let Err(e) = a.records.write(&rec) {
            tracing::warn!(job = job.0, attempt = n, error = %e, "cannot record the attempt's end");
        }
    }
    report_end(&a, job, n, &token, &log, sent, (exit_code, error, requeue)).await;
    a.held().remove(&token);
    finish_local(&a, job, n, &dir, &log);
}

/// Start the process with its record in place: the record names the cgroup
/// before the spawn and the process group leader right after it.
fn start_recorded(
    a: &Agent,
    spec: &mut RunSpec,
    rec: &mut AttemptRecord,
) -> Result<run::Running, String> {
    let (job, n) = (rec.job, rec.attempt);
    if let Some(cg) = &a.cgroups {
        let name = format!("trainyard-{}-{job}-{n}", std::process::id());
        match cg.create(&name) {
            Ok(dir) => {
                rec.cgroup = Some(dir.clone());
                spec.cgroup = Some(dir);
            }
            Err(e) => {
                tracing::warn!(job = job.0, attempt = n, cgroup = %cg.path(&name).display(), error = %e, "cannot create the attempt's cgroup; using its process group only")
            }
        }
    }
    let fail = |rec: &AttemptRecord, msg: String| {
        if let Some(dir) = &rec.cgroup {
            cgroup::destroy(dir);
        }
        let _ = a.records.remove(job, n);
        msg
    };
    if let Err(e) = a.records.write(rec) {
        return Err(fail(
            rec,
            format!("cannot record attempt {n} before starting it: {e}"),
        ));
    }
    let running = run::start(spec).map_err(|e| fail(rec, e.to_string()))?;
    rec.pid = Some(running.pid());
    rec.start_ticks = record::start_ticks(running.pid());
    rec.cgroup = running.cgroup().map(Path::to_path_buf);
    if let Err(e) = a.records.write(rec) {
        tracing::warn!(job = job.0, attempt = n, error = %e, "cannot record the attempt's process; a crash of this agent would leave it running");
    }
    Ok(running)
}

/// Ship the whole log from `sent` on, then report the end; both retry
/// until the daemon hears them (or says the attempt is no longer current).
/// Then the attempt's record is removed.
#[allow(clippy::too_many_arguments)]
async fn report_end(
    a: &Agent,
    job: JobId,
    n: u32,
    token: &str,
    log: &Path,
    mut sent: u64,
    (exit_code, error, requeue): (Option<i32>, Option<String>, bool),
) {
    loop {
        let size = std::fs::metadata(log).map(|m| m.len()).unwrap_or(0);
        sent = ship_log(a, job, n, token, log, sent).await;
        if sent >= size {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let finish = FinishRequest {
        exit_code,
        error,
        requeue,
    };
    let mut backoff = Duration::from_millis(100);
    loop {
        match a.client.finish(job, n, token, &finish).await {
            Ok(j) => {
                tracing::info!(job = job.0, attempt = n, state = %j.state, "attempt reported");
                break;
            }
            Err(e) if e.is_unreachable() => {
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(2));
            }
            Err(e) => {
                // Stale (cancelled or reassigned): the daemon has moved on.
                tracing::info!(job = job.0, attempt = n, error = %e, "end not recorded");
                break;
            }
        }
    }
    if let Err(e) = a.records.remove(job, n) {
        tracing::warn!(job = job.0, attempt = n, error = %e, "cannot remove the attempt's record");
    }
}

/// Remove the attempt's work directory and local log (unless kept).
fn finish_local(a: &Agent, job: JobId, n: u32, dir: &Path, log: &Path) {
    if !a.cfg.keep_work {
        let _ = std::fs::remove_dir_all(dir);
        let _ = std::fs::remove_file(log);
    }
    tracing::debug!(job = job.0, attempt = n, "attempt done");
}

/// Stop the processes of the attempts a previous run of this agent left
/// behind (it was killed or crashed): SIGTERM, SIGKILL after the grace
/// period. Their records are marked ended with the reason, for [`run`] to
/// report. Blocking. `trainyard up` calls it before its server starts, so a
/// requeued attempt cannot start on another agent while they live; [`run`]
/// calls it again before it takes work. Returns how many were stopped.
pub fn stop_left_behind(cfg: &AgentConfig) -> usize {
    let records = Records::new(work_root(cfg).join("attempts"));
    let mut live = Vec::new();
    for (path, r) in records.load() {
        match r {
            Ok(r) if r.end.is_none() => live.push(r),
            Ok(_) => {}
            Err(e) => {
                tracing::warn!(error = %e, "discarding a damaged attempt record");
                Records::discard(&path);
            }
        }
    }
    if live.is_empty() {
        return 0;
    }
    tracing::warn!(
        attempts = live.len(),
        "this agent's previous run left attempts; stopping them before taking work"
    );
    let left = record::stop_orphans(&live, cfg.grace);
    for r in &left {
        tracing::error!(job = r.job.0, attempt = r.attempt, pid = ?r.pid, cgroup = ?r.cgroup, "an attempt left by the previous run could not be stopped");
    }
    let root = work_root(cfg);
    for mut r in live {
        let msg = format!(
            "attempt {} was stopped: agent {} restarted while it ran (its previous run was killed or crashed)",
            r.attempt, cfg.name
        );
        append_line(
            &root.join(format!("{}-{}.log", r.job, r.attempt)),
            &format!("trainyard: {msg}"),
        );
        r.end = Some(RecordedEnd {
            exit_code: None,
            error: Some(msg),
        });
        if let Err(e) = records.write(&r) {
            tracing::warn!(job = r.job.0, attempt = r.attempt, error = %e, "cannot record the attempt's end");
        }
    }
    left.len()
}

/// Before taking work: stop what a previous run left ([`stop_left_behind`]),
/// then report those attempts ended in the background; their tokens are
/// never run again, even if the daemon delivers them.
async fn recover(a: &Arc<Agent>) {
    let cfg = a.cfg.clone();
    let _ = tokio::task::spawn_blocking(move || stop_left_behind(&cfg)).await;
    let recs: Vec<AttemptRecord> = a
        .records
        .load()
        .into_iter()
        .filter_map(|(_, r)| r.ok())
        .collect();
    if recs.is_empty() {
        return;
    }
    {
        let mut retired = a.retired.lock().unwrap_or_else(|p| p.into_inner());
        retired.extend(recs.iter().map(|r| r.token.clone()));
    }
    let root = a.work_root();
    for r in recs {
        let a = a.clone();
        let root = root.clone();
        tokio::spawn(async move {
            let (job, n) = (r.job, r.attempt);
            let log = root.join(format!("{job}-{n}.log"));
            let (exit_code, error) = match r.end {
                Some(end) => (end.exit_code, end.error),
                None => (
                    None,
                    Some(format!(
                        "attempt {n} could not be stopped when its agent restarted"
                    )),
                ),
            };
            // From offset 0: the daemon keeps only bytes beyond its copy.
            report_end(&a, job, n, &r.token, &log, 0, (exit_code, error, false)).await;
            finish_local(&a, job, n, &root.join(format!("{job}-{n}")), &log);
        });
    }
}

/// Stop the attempts whose lease could not be renewed for [`LEASE_STOP`] of
/// the lease (the daemon is unreachable, or does not answer).
async fn lease_watch(a: Arc<Agent>) {
    loop {
        // A twentieth of the lease (50 ms to 1 s): precise enough for a
        // stop at LEASE_STOP of it, without waking 20 times a second idle.
        let tick = (a.lease() / 20).clamp(Duration::from_millis(50), Duration::from_secs(1));
        tokio::time::sleep(tick).await;
        let lease = a.lease();
        let limit = lease.mul_f64(LEASE_STOP);
        let grace = lease.mul_f64(LEASE_GRACE);
        let mut held = a.held();
        for h in held.values_mut() {
            if !h.lease_stopped && h.renewed.elapsed() >= limit {
                tracing::warn!(
                    job = h.job.0,
                    attempt = h.attempt,
                    since_renewal_ms = h.renewed.elapsed().as_millis() as u64,
                    lease_ms = lease.as_millis() as u64,
                    "stopping: the lease could not be renewed and the daemon will requeue this attempt"
                );
                h.lease_stopped = true;
                h.cancel.request_within(grace);
            }
        }
    }
}

async fn report_started(
    a: &Agent,
    job: JobId,
    n: u32,
    token: &str,
    commit: Option<&str>,
    cancel: &StopFlag,
) {
    let mut backoff = Duration::from_millis(50);
    loop {
        match a.client.started(job, n, token, commit).await {
            Ok(()) => return,
            Err(e) if e.is_unreachable() => {
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(2));
            }
            Err(e) => {
                tracing::info!(job = job.0, attempt = n, error = %e, "start refused; stopping");
                cancel.request();
                return;
            }
        }
    }
}

/// Send the log from `sent` on; returns the new acknowledged offset.
async fn ship_log(a: &Agent, job: JobId, n: u32, token: &str, log: &Path, sent: u64) -> u64 {
    let chunk = {
        let log = log.to_path_buf();
        tokio::task::spawn_blocking(move || -> std::io::Result<Vec<u8>> {
            let mut f = std::fs::File::open(&log)?;
            f.seek(SeekFrom::Start(sent))?;
            let mut buf = Vec::new();
            f.take(1 << 20).read_to_end(&mut buf)?;
            Ok(buf)
        })
        .await
    };
    let bytes = match chunk {
        Ok(Ok(b)) if !b.is_empty() => b,
        _ => return sent,
    };
    let len = bytes.len() as u64;
    match a.client.append_log(job, n, token, sent, bytes).await {
        Ok(_) => sent + len,
        Err(e) if e.is_unreachable() => sent,
        Err(e) => {
            tracing::warn!(job = job.0, attempt = n, error = %e, "log upload refused; giving up on this log");
            u64::MAX
        }
    }
}

fn append_line(log: &Path, line: &str) {
    if let Ok(mut f) = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(log)
    {
        let _ = writeln!(f, "{line}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn processes_in_an_attempts_process_group_are_that_attempts() {
        use std::os::unix::process::CommandExt;
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .process_group(0)
            .spawn()
            .unwrap();
        let pid = child.id();
        let owners = owners(&[(pid, (JobId(4), 2))], &[]);
        let _ = child.kill();
        let _ = child.wait();
        assert_eq!(owners.get(&pid), Some(&(JobId(4), 2)));
        // This test's own process is in another group: foreign.
        assert!(!owners.contains_key(&std::process::id()));
    }
}
