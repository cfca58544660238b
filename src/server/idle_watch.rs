//! The daemon's side of the idle policy: one `idle::Tracker` per running
//! attempt, fed by the agents' sample batches (each GPU sample given to
//! the attempt that held its GPU then, with the attempt's process-group
//! activity), and the queue changes its decisions make (evidence,
//! `idle_warned`, `idle_stopped`, the stop or requeue). Translation
//! only: the rules are `crate::idle`'s. Trackers live in memory: a
//! restarted daemon starts each attempt's window again (it never stops a
//! job on evidence it did not see).

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;

use crate::api::HostSample;
use crate::idle::{self, Action, Decision, IdleConfig, JobIdle, Observation, Tracker};
use crate::queue::{IdleEnd, JobId, JobState, Queue, QueueError};
use crate::telemetry::Holder;

struct Entry {
    agent: String,
    /// `None`: exempt (or a policy that cannot be resolved, logged once).
    tracker: Option<Tracker>,
    /// The status as last written to the queue.
    written: Option<idle::Status>,
}

/// A decision or status change to write: the attempt, the sample's
/// time, the decision, the status and the policy.
type Todo = (
    (JobId, u32),
    i64,
    Option<Decision>,
    idle::Status,
    idle::Policy,
);

/// What the idle policy changed, for the caller to announce.
#[derive(Debug, Default)]
pub(crate) struct IdleEffects {
    /// Jobs whose state changed (stopped, requeued).
    pub jobs: Vec<(JobId, JobState)>,
    /// Agents that must stop an attempt.
    pub agents: Vec<String>,
    /// Whether notification events were written.
    pub notified: bool,
    /// Jobs whose idle status changed (for live views).
    pub changed: Vec<JobId>,
}

/// The trackers of the running attempts.
#[derive(Default)]
pub(crate) struct IdleWatch {
    trackers: Mutex<HashMap<(JobId, u32), Entry>>,
    /// (agent, GPU) → (first, latest) sample time of its memory held at
    /// 0 % utilization, without a break.
    memory: Mutex<HashMap<(String, String), (i64, i64)>>,
}

/// "when" as an RFC 3339 time to the second, for messages.
fn at(ms: i64) -> String {
    jiff::Timestamp::from_millisecond(ms)
        .map(|t| t.round(jiff::Unit::Second).unwrap_or(t).to_string())
        .unwrap_or_else(|_| ms.to_string())
}

fn rule(p: &idle::Policy) -> String {
    format!(
        "{}:{}%:{}",
        idle::human_ms(p.window_ms).replace(' ', ""),
        p.threshold_pct,
        p.action
    )
}

impl IdleWatch {
    /// Feed `agent`'s samples (times already on the daemon's clock) to
    /// the trackers of the attempts holding its GPUs, and carry out what
    /// they decide. Blocking (SQLite); the trackers' lock is never held
    /// across a query.
    pub(crate) fn observe(
        &self,
        queue: &Queue,
        cfg: &IdleConfig,
        agent: &str,
        holders: &[Holder],
        samples: &[(i64, &HostSample)],
    ) -> Result<IdleEffects, QueueError> {
        let live: HashSet<(JobId, u32)> = holders
            .iter()
            .filter(|h| h.until_ms.is_none())
            .map(|h| (JobId(h.job), h.attempt))
            .collect();
        self.watch_memory(agent, samples);
        // Each running attempt's observations, in time order.
        let mut seen: Vec<((JobId, u32), Observation)> = Vec::new();
        for (t_ms, hs) in samples {
            let mut by: HashMap<(JobId, u32), Vec<Option<u32>>> = HashMap::new();
            for g in &hs.gpus {
                let (job, attempt) = crate::telemetry::holder_at(holders, &g.uuid, *t_ms);
                if job != 0 && live.contains(&(JobId(job), attempt)) {
                    by.entry((JobId(job), attempt))
                        .or_default()
                        .push(g.utilization_pct);
                }
            }
            let mut by: Vec<_> = by.into_iter().collect();
            by.sort_by_key(|(k, _)| *k);
            for ((job, n), util_pct) in by {
                let group = hs.groups.iter().find(|g| g.job == job && g.attempt == n);
                seen.push((
                    (job, n),
                    Observation {
                        t_ms: *t_ms,
                        util_pct,
                        cpu_pct: group.map(|g| g.cpu_pct),
                        io_bytes_per_s: group.map(|g| g.io_bytes_per_s),
                    },
                ));
            }
        }
        // New attempts' policies, read without the lock.
        let missing: Vec<(JobId, u32)> = {
            let mut trackers = self.trackers.lock().unwrap_or_else(|p| p.into_inner());
            trackers.retain(|k, e| e.agent != agent || live.contains(k));
            let mut m: Vec<_> = seen
                .iter()
                .map(|(k, _)| *k)
                .filter(|k| !trackers.contains_key(k))
                .collect();
            m.sort();
            m.dedup();
            m
        };
        let mut fresh = Vec::new();
        for (job, n) in missing {
            if let Some(e) = new_entry(queue, cfg, agent, job, n)? {
                fresh.push(((job, n), e));
            }
        }
        // Observe under the lock; act after it.
        let mut todo: Vec<Todo> = Vec::new();
        {
            let mut trackers = self.trackers.lock().unwrap_or_else(|p| p.into_inner());
            for (k, e) in fresh {
                trackers.entry(k).or_insert(e);
            }
            for (key, o) in &seen {
                let Some(e) = trackers.get_mut(key) else {
                    continue;
                };
                let Some(tr) = e.tracker.as_mut() else {
                    continue;
                };
                let decision = tr.observe(o);
                let status = tr.status();
                if decision.is_some() || changed(e.written.as_ref(), &status) {
                    e.written = Some(status.clone());
                    todo.push((*key, o.t_ms, decision, status, *tr.policy()));
                }
            }
        }
        let mut fx = IdleEffects::default();
        for ((job, n), t_ms, decision, status, policy) in todo {
            self.carry_out(
                queue, agent, job, n, t_ms, decision, &status, &policy, &mut fx,
            )?;
        }
        Ok(fx)
    }

    fn watch_memory(&self, agent: &str, samples: &[(i64, &HostSample)]) {
        let mut memory = self.memory.lock().unwrap_or_else(|p| p.into_inner());
        for (t_ms, hs) in samples {
            for g in &hs.gpus {
                let key = (agent.to_string(), g.uuid.clone());
                if g.memory_used_mib > 0 && g.utilization_pct == Some(0) {
                    let e = memory.entry(key).or_insert((*t_ms, *t_ms));
                    e.1 = e.1.max(*t_ms);
                } else {
                    memory.remove(&key);
                }
            }
        }
    }

    /// Write a decision (and the status) to the queue.
    #[allow(clippy::too_many_arguments)]
    fn carry_out(
        &self,
        queue: &Queue,
        agent: &str,
        job: JobId,
        n: u32,
        t_ms: i64,
        decision: Option<Decision>,
        status: &idle::Status,
        policy: &idle::Policy,
        fx: &mut IdleEffects,
    ) -> Result<(), QueueError> {
        match decision {
            None => {
                queue.set_idle_status(job, n, status)?;
                fx.changed.push(job);
            }
            Some(Decision::Warn {
                act_at_ms,
                evidence,
            }) => {
                let what = match policy.action {
                    Action::Requeue => "requeued",
                    _ => "stopped",
                };
                let detail = format!(
                    "job {job}'s GPUs have been idle (under {}%) since {}; it will be {what} at {} (in {}) unless it uses them (policy {})",
                    policy.threshold_pct,
                    at(evidence.idle_since_ms),
                    at(act_at_ms),
                    idle::human_ms(act_at_ms - t_ms),
                    rule(policy),
                );
                if queue.idle_warned(job, n, &evidence, status, &detail)? {
                    fx.notified = true;
                    fx.changed.push(job);
                }
            }
            Some(Decision::Act {
                action: Action::Notify,
                evidence,
            }) => {
                let detail = format!(
                    "job {job}'s GPUs have been idle (under {}%) for {} since {} (policy {}: notify only)",
                    policy.threshold_pct,
                    idle::human_ms(t_ms - evidence.idle_since_ms),
                    at(evidence.idle_since_ms),
                    rule(policy),
                );
                if queue.idle_warned(job, n, &evidence, status, &detail)? {
                    fx.notified = true;
                    fx.changed.push(job);
                }
            }
            Some(Decision::Act { action, evidence }) => {
                let (how, what) = match action {
                    Action::Requeue => (IdleEnd::Requeue, "requeued"),
                    _ => (IdleEnd::Stop, "stopped"),
                };
                let reason = format!(
                    "attempt {n} {what} for idling: its GPUs stayed under {}% utilization for {} (idle since {}; policy {})",
                    policy.threshold_pct,
                    idle::human_ms(policy.window_ms),
                    at(evidence.idle_since_ms),
                    rule(policy),
                );
                if queue
                    .idle_stop(job, n, how, &evidence, status, &reason)?
                    .is_some()
                {
                    fx.notified = true;
                    fx.agents.push(agent.to_string());
                    fx.jobs.push((
                        job,
                        match how {
                            IdleEnd::Stop => JobState::IdleStopped,
                            IdleEnd::Requeue => JobState::Queued,
                        },
                    ));
                }
            }
        }
        Ok(())
    }
}

impl IdleWatch {
    /// Where idle detection stands for attempt `n` of `job`, if tracked.
    pub(crate) fn status(&self, job: JobId, n: u32) -> Option<idle::Status> {
        let trackers = self.trackers.lock().unwrap_or_else(|p| p.into_inner());
        trackers
            .get(&(job, n))
            .and_then(|e| e.tracker.as_ref())
            .map(Tracker::status)
    }

    /// `agent`'s GPUs whose memory is held at 0 %, flagged after
    /// `window_ms`.
    pub(crate) fn memory_idle(&self, agent: &str, window_ms: i64) -> Vec<crate::api::MemoryIdle> {
        let memory = self.memory.lock().unwrap_or_else(|p| p.into_inner());
        let mut out: Vec<crate::api::MemoryIdle> = memory
            .iter()
            .filter(|((a, _), _)| a == agent)
            .map(|((_, uuid), (since, last))| crate::api::MemoryIdle {
                uuid: uuid.clone(),
                since_ms: *since,
                idle_ms: last - since,
                flagged: last - since >= window_ms,
            })
            .collect();
        out.sort_by(|a, b| a.uuid.cmp(&b.uuid));
        out
    }
}

/// Whether the status differs from the written one in what people see
/// (the phase and the idle run), not just the latest sample's time.
fn changed(written: Option<&idle::Status>, now: &idle::Status) -> bool {
    match written {
        None => true,
        Some(w) => w.phase != now.phase || w.idle_since_ms != now.idle_since_ms,
    }
}

/// A tracker for attempt `n` of `job`, once its process has started
/// (`None` before); exempt attempts get an entry without one.
fn new_entry(
    queue: &Queue,
    cfg: &IdleConfig,
    agent: &str,
    job: JobId,
    n: u32,
) -> Result<Option<Entry>, QueueError> {
    let j = match queue.get(job) {
        Ok(j) => j,
        Err(QueueError::UnknownJob(_)) => return Ok(None),
        Err(e) => return Err(e),
    };
    let Some(started_ns) = queue
        .attempts(job)?
        .into_iter()
        .find(|a| a.n == n)
        .and_then(|a| a.started_ns)
    else {
        return Ok(None);
    };
    let policy = cfg
        .policy_for(&JobIdle {
            project: &j.spec.project,
            tags: &j.spec.tags,
            idle: j.spec.idle.as_deref(),
            grace: j.spec.idle_grace.as_deref(),
        })
        .unwrap_or_else(|e| {
            // Specs and the config were checked when they were read.
            tracing::warn!(job = job.0, error = %e, "idle policy cannot be resolved; the job is left alone");
            None
        });
    Ok(Some(Entry {
        agent: agent.to_string(),
        tracker: policy.map(|p| Tracker::new(p, started_ns / 1_000_000)),
        written: None,
    }))
}
