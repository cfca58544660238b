//! The agent: a GPU host's worker. It reports its GPUs, long-polls the
//! daemon for attempts, prepares each one (git checkout, dataset inputs),
//! runs it with the process runner, ships its log, and reports the end,
//! retrying until the daemon hears it (a daemon restart loses nothing).
//!
//! The agent never decides placement; it runs what it is given on the GPUs
//! named, and stops what the daemon says is no longer current.

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::api::{AgentReport, FinishRequest, Work};
use crate::client::{Client, ClientError};
use crate::gpu::{Gpu, GpuSource};
use crate::queue::JobId;
use crate::store::{CheckoutOptions, DatasetRef, Store};
use crate::Home;

use super::run::{self, Outcome, RunSpec};

/// How an agent runs.
#[derive(Debug, Clone)]
pub struct AgentConfig {
    /// Its name (unique in the lab; the host name by default).
    pub name: String,
    /// Its home: the dataset store inputs come from, work directories, the
    /// git cache.
    pub home: Home,
    /// CPU-only jobs run at once.
    pub cpu_slots: u32,
    /// Time between SIGTERM and SIGKILL when stopping a job.
    pub grace: Duration,
    /// Keep each attempt's work directory after it ends.
    pub keep_work: bool,
}

struct Held {
    job: JobId,
    attempt: u32,
    cancel: Arc<AtomicBool>,
    pgid: Option<u32>,
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
            hostname: self.hostname.clone(),
            gpu_source: g.kind.to_string(),
            gpu_error: g.note.clone(),
            gpus: g.gpus.clone(),
            cpu_slots: self.cfg.cpu_slots,
            attempts: held.keys().cloned().collect(),
            pids: g.pids.clone(),
        }
    }

    fn stop(&self, tokens: &[String]) {
        let held = self.held();
        for t in tokens {
            if let Some(h) = held.get(t) {
                tracing::info!(
                    job = h.job.0,
                    attempt = h.attempt,
                    "stopping: the daemon says this attempt is no longer current"
                );
                h.cancel.store(true, Ordering::Relaxed);
            }
        }
    }

    fn lease(&self) -> Duration {
        Duration::from_millis(self.lease_ms.load(Ordering::Relaxed).max(300))
    }

    fn work_root(&self) -> PathBuf {
        self.cfg.home.root().join("agent").join(&self.cfg.name)
    }
}

/// Run the agent until `shutdown` completes; then stop its attempts
/// (SIGTERM, then SIGKILL) and report them ended.
pub async fn run(
    cfg: AgentConfig,
    client: Client,
    mut gpus: Box<dyn GpuSource>,
    shutdown: impl Future<Output = ()>,
) {
    let first = gpus.snapshot().unwrap_or_default();
    let agent = Arc::new(Agent {
        hostname: hostname(),
        held: Mutex::new(HashMap::new()),
        gpu: Mutex::new(GpuState {
            gpus: first,
            kind: gpus.kind(),
            note: gpus.note(),
            pids: Vec::new(),
        }),
        lease_ms: AtomicU64::new(30_000),
        client,
        cfg,
    });
    tracing::info!(agent = %agent.cfg.name, server = %agent.client.url(), gpus = gpus.kind(), "agent starting");
    let stop_sampler = Arc::new(AtomicBool::new(false));
    let sampler = {
        let a = agent.clone();
        let stop = stop_sampler.clone();
        std::thread::spawn(move || sample_gpus(&a, gpus.as_mut(), &stop))
    };
    let hb = tokio::spawn(heartbeat_loop(agent.clone()));
    tokio::select! {
        _ = poll_loop(agent.clone()) => {}
        _ = shutdown => {}
    }
    hb.abort();
    // Stop everything still running and let the attempt tasks report it.
    let tokens: Vec<String> = agent.held().keys().cloned().collect();
    agent.stop(&tokens);
    for _ in 0..200 {
        if agent.held().is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    stop_sampler.store(true, Ordering::Relaxed);
    let _ = tokio::task::spawn_blocking(move || sampler.join()).await;
    tracing::info!("agent stopped");
}

/// This host's name (the default agent name).
pub fn hostname() -> String {
    rustix::system::uname()
        .nodename()
        .to_string_lossy()
        .into_owned()
}

/// Sample the GPUs every 2 s on a plain thread (NVML calls block), and find
/// the processes in Trainyard's process groups (their GPU use is ours).
fn sample_gpus(a: &Agent, src: &mut dyn GpuSource, stop: &AtomicBool) {
    let mut warned = false;
    while !stop.load(Ordering::Relaxed) {
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
        let groups: Vec<u32> = a.held().values().filter_map(|h| h.pgid).collect();
        let pids = processes_in_groups(&groups);
        {
            let mut g = a.gpu.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(gpus) = gpus {
                g.gpus = gpus;
            }
            g.pids = pids;
        }
        for _ in 0..20 {
            if stop.load(Ordering::Relaxed) {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

fn processes_in_groups(groups: &[u32]) -> Vec<u32> {
    if groups.is_empty() {
        return Vec::new();
    }
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return groups.to_vec();
    };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .ok()
                .and_then(|s| {
                    // Fields after the command: state ppid pgrp ...
                    let rest = s.rsplit_once(") ")?.1;
                    rest.split(' ').nth(2)?.parse::<u32>().ok()
                })
                .is_some_and(|pg| groups.contains(&pg))
        })
        .collect()
}

async fn heartbeat_loop(a: Arc<Agent>) {
    let mut down = false;
    loop {
        match a.client.heartbeat(&a.cfg.name, &a.report()).await {
            Ok(o) => {
                if down {
                    tracing::info!("daemon reachable again");
                    down = false;
                }
                a.lease_ms.store(o.lease_ms, Ordering::Relaxed);
                a.stop(&o.stop);
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

async fn poll_loop(a: Arc<Agent>) {
    let mut backoff = Duration::from_millis(100);
    loop {
        let wait = (a.lease() / 3).min(Duration::from_secs(25));
        match a.client.poll(&a.cfg.name, a.report(), wait).await {
            Ok(orders) => {
                backoff = Duration::from_millis(100);
                a.lease_ms.store(orders.lease_ms, Ordering::Relaxed);
                a.stop(&orders.stop);
                for w in orders.assignments {
                    let token = w.assignment.token.clone();
                    let cancel = Arc::new(AtomicBool::new(false));
                    {
                        let mut held = a.held();
                        if held.contains_key(&token) {
                            continue;
                        }
                        held.insert(
                            token,
                            Held {
                                job: w.assignment.job,
                                attempt: w.assignment.attempt,
                                cancel: cancel.clone(),
                                pgid: None,
                            },
                        );
                    }
                    tokio::spawn(attempt(a.clone(), w, cancel));
                }
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
    let mut env: BTreeMap<String, String> = spec.env.clone();
    env.insert("TRAINYARD_JOB_ID".into(), job.to_string());
    env.insert("TRAINYARD_ATTEMPT".into(), w.assignment.attempt.to_string());
    env.insert("TRAINYARD_AGENT".into(), a.cfg.name.clone());
    let mut workdir = match &spec.workdir {
        Some(d) => d.clone(),
        None => dir.to_path_buf(),
    };
    if let Some(git) = &spec.git {
        let src = dir.join("src");
        let commit = super::git::checkout(&a.cfg.home.root().join("agent").join("git"), git, &src)
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
            let var: String = r
                .dataset
                .chars()
                .map(|c| {
                    if c.is_ascii_alphanumeric() {
                        c.to_ascii_uppercase()
                    } else {
                        '_'
                    }
                })
                .collect();
            env.insert(
                format!("TRAINYARD_INPUT_{var}"),
                target.to_string_lossy().into_owned(),
            );
            env.insert(
                format!("TRAINYARD_INPUT_{var}_VERSION"),
                rep.version.to_string(),
            );
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
        env,
        workdir,
        gpus,
        log: PathBuf::new(),
        timeout: spec.timeout_s.map(Duration::from_secs),
        grace: a.cfg.grace,
    })
}

/// Run one attempt from assignment to acknowledged end.
async fn attempt(a: Arc<Agent>, w: Work, cancel: Arc<AtomicBool>) {
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
    let started = prepared.and_then(|mut spec| {
        spec.log = log.clone();
        if cancel.load(Ordering::Relaxed) {
            return Err("cancelled before it started".into());
        }
        run::start(&spec).map_err(|e| e.to_string())
    });
    let mut sent = 0u64;
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
            }
            report_started(&a, job, n, &token, &cancel).await;
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
                Ok(Ok(Outcome::Cancelled)) => (
                    None,
                    Some(format!("attempt {n} was stopped (cancelled or reassigned)")),
                ),
                Ok(Err(e)) => (None, Some(e.to_string())),
                Err(e) => (None, Some(format!("waiting panicked: {e}"))),
            }
        }
    };
    // Ship the whole log, then report the end; both retry until heard.
    loop {
        let size = std::fs::metadata(&log).map(|m| m.len()).unwrap_or(0);
        sent = ship_log(&a, job, n, &token, &log, sent).await;
        if sent >= size {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let finish = FinishRequest { exit_code, error };
    let mut backoff = Duration::from_millis(100);
    loop {
        match a.client.finish(job, n, &token, &finish).await {
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
    a.held().remove(&token);
    if !a.cfg.keep_work {
        let _ = std::fs::remove_dir_all(&dir);
        let _ = std::fs::remove_file(&log);
    }
}

async fn report_started(a: &Agent, job: JobId, n: u32, token: &str, cancel: &AtomicBool) {
    let mut backoff = Duration::from_millis(50);
    loop {
        match a.client.started(job, n, token).await {
            Ok(()) => return,
            Err(e) if e.is_unreachable() => {
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(2));
            }
            Err(e) => {
                tracing::info!(job = job.0, attempt = n, error = %e, "start refused; stopping");
                cancel.store(true, Ordering::Relaxed);
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
        .open(log)
    {
        let _ = writeln!(f, "{line}");
    }
}
