//! The coordinator: the daemon's state between requests (the queue, the
//! agents it has heard from, the event channel) and the scheduling pass that
//! turns queued jobs into assignments. All blocking (SQLite) work here runs on
//! blocking threads; the async handlers call it through `spawn_blocking`.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::{broadcast, Notify};

use crate::api::{AgentInfo, AgentOrders, AgentReport, Event, HeldGpu, Work};
use crate::db::now_ns;
use crate::queue::{Active, AttemptLogs, JobId, JobState, Placed, Queue, QueueError};
use crate::sched::{self, HostView};
use crate::schedule::{Effects, ScheduleError, Schedules};

use super::Retention;

/// How many queued jobs one scheduling pass looks at.
const PASS_WINDOW: usize = 512;

pub(crate) struct AgentEntry {
    pub report: AgentReport,
    pub last_seen: Instant,
    pub wake: Arc<Notify>,
    /// `agent_lost` was recorded for its current silence.
    pub lost_notified: bool,
}

/// An agent name held by a live agent of another identity.
#[derive(Debug, thiserror::Error)]
#[error(
    "the agent name {name:?} is taken by a live agent on host {holder:?} (heard from {}s ago); \
     this agent (host {reporter:?}) has another identity: start it with --agent-name OTHER",
    seen_ago.as_secs()
)]
pub(crate) struct NameTaken {
    pub name: String,
    pub holder: String,
    pub seen_ago: Duration,
    pub reporter: String,
}

/// Shared daemon state.
pub(crate) struct Coord {
    pub queue: Queue,
    pub home: crate::Home,
    /// Attempt logs (`logs/` in the home), capped per `retention`.
    pub logs: AttemptLogs,
    pub retention: Retention,
    pub lease: Duration,
    pub agents: Mutex<HashMap<String, AgentEntry>>,
    pub events: broadcast::Sender<Event>,
    pub wake_sched: Notify,
    /// Wakes the cluster follower (a job was submitted or cancelled).
    pub wake_clusters: Notify,
    /// The lab's settings (`config.toml`), read at start.
    pub lab: crate::config::LabConfig,
    /// GPU telemetry history and the metrics counters.
    pub tele: super::tele_state::TeleState,
    /// Wakes the schedule evaluator (a schedule was added or resumed).
    pub wake_schedules: Notify,
    /// The home's dataset store, opened on first use (data schedules).
    store: std::sync::OnceLock<crate::store::Store>,
    /// Notification sinks, the outbox and its sender.
    pub notify: Arc<crate::notify::Notifier>,
    /// The idle policy's trackers of running attempts.
    pub idle: super::idle_watch::IdleWatch,
    /// The watch rules and their threads (set by `Server::bind`).
    pub watches: std::sync::OnceLock<Arc<crate::watch::Watcher>>,
}

impl Coord {
    pub fn new(
        queue: Queue,
        home: crate::Home,
        lease: Duration,
        retention: Retention,
        telemetry: crate::telemetry::Telemetry,
        lab: crate::config::LabConfig,
        notify: Arc<crate::notify::Notifier>,
    ) -> Coord {
        Coord {
            tele: super::tele_state::TeleState::new(telemetry),
            logs: AttemptLogs::new(home.logs_dir(), retention.max_log_bytes),
            retention,
            home,
            queue,
            lease,
            agents: Mutex::new(HashMap::new()),
            events: broadcast::channel(1024).0,
            wake_sched: Notify::new(),
            wake_clusters: Notify::new(),
            wake_schedules: Notify::new(),
            store: std::sync::OnceLock::new(),
            lab,
            notify,
            idle: super::idle_watch::IdleWatch::default(),
            watches: std::sync::OnceLock::new(),
        }
    }

    /// The schedules kept in the queue's database.
    pub fn schedules(&self) -> Schedules<'_> {
        Schedules::new(&self.queue)
    }

    /// The home's dataset store; `None` (logged) while it cannot be opened.
    pub fn store(&self) -> Option<&crate::store::Store> {
        if let Some(s) = self.store.get() {
            return Some(s);
        }
        match crate::store::Store::open(&self.home) {
            Ok(s) => Some(self.store.get_or_init(|| s)),
            Err(e) => {
                tracing::warn!(error = %e, "cannot open the dataset store");
                None
            }
        }
    }

    /// The zone of a schedule that names none: the lab's (`[usage]
    /// timezone`), else the system's, else UTC.
    pub fn default_zone(&self) -> String {
        self.lab
            .usage
            .timezone
            .clone()
            .or_else(|| {
                jiff::tz::TimeZone::try_system()
                    .ok()
                    .and_then(|z| z.iana_name().map(str::to_string))
            })
            .unwrap_or_else(|| "UTC".into())
    }

    /// Announce what a schedule evaluation or run did: job and schedule
    /// events, a stop for the agents of replaced jobs, a scheduling pass.
    pub fn announce(&self, fx: &Effects) {
        for (id, agent) in &fx.cancelled {
            if let Some(a) = agent {
                self.wake_agent(a);
            }
            self.job_event(*id, JobState::Cancelled);
        }
        for id in &fx.submitted {
            self.job_event(*id, JobState::Queued);
        }
        let mut names: Vec<&String> = fx.changed.iter().collect();
        names.dedup();
        for name in names {
            self.emit(Event::Schedule { name: name.clone() });
        }
        if !fx.submitted.is_empty() || !fx.cancelled.is_empty() {
            self.wake_sched.notify_one();
        }
    }

    /// Evaluate the schedules at `now` and announce what fired; returns
    /// when the next evaluation is due (`None`: no active schedule).
    pub fn evaluate_schedules(
        &self,
        now: jiff::Timestamp,
    ) -> Result<Option<jiff::Timestamp>, ScheduleError> {
        let schedules = self.schedules();
        let any_data = schedules.watches_data()?;
        let store = if any_data { self.store() } else { None };
        let fx = schedules.evaluate(store, now)?;
        self.announce(&fx);
        schedules.next_due(now)
    }

    pub fn lease_ns(&self) -> i64 {
        self.lease.as_nanos() as i64
    }

    pub fn emit(&self, e: Event) {
        // No subscribers is fine.
        let _ = self.events.send(e);
    }

    pub fn job_event(&self, id: JobId, state: JobState) {
        if state.is_terminal() {
            // The queue wrote its notification with the state change.
            self.notify.wake();
        }
        self.emit(Event::Job { id, state });
    }

    /// Record a notification event (blocking: SQLite); a failure is
    /// logged, never the caller's failure.
    pub fn notify(&self, kind: crate::notify::EventKind, event: &crate::notify::Event) {
        if let Err(e) = self.notify.record(kind, event) {
            tracing::error!(error = %e, kind = %kind, "cannot record a notification");
        }
    }

    /// Record `agent_lost` for each agent silent for a lease, once per
    /// silence.
    fn notice_lost_agents(&self) {
        let lost: Vec<(String, String, u64)> = {
            let mut agents = self.agents();
            agents
                .iter_mut()
                .filter(|(_, e)| !e.lost_notified && e.last_seen.elapsed() >= self.lease)
                .map(|(name, e)| {
                    e.lost_notified = true;
                    (
                        name.clone(),
                        e.report.hostname.clone(),
                        e.last_seen.elapsed().as_secs(),
                    )
                })
                .collect()
        };
        for (name, host, silent) in lost {
            tracing::warn!(agent = name, host, silent_s = silent, "agent lost");
            self.notify(
                crate::notify::EventKind::AgentLost,
                &crate::notify::Event {
                    agent: Some(name.clone()),
                    detail: Some(format!(
                        "The agent {name} (host {host}) has not reported for {silent} s; \
                         its GPUs are not scheduled until it is back."
                    )),
                    ..Default::default()
                },
            );
        }
    }

    pub fn agents(&self) -> std::sync::MutexGuard<'_, HashMap<String, AgentEntry>> {
        self.agents.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Each live agent's name → the host name it reports (job holdings name
    /// the agent; wandb runs the host).
    pub fn agent_hosts(&self) -> HashMap<String, String> {
        self.agents()
            .iter()
            .map(|(name, e)| (name.clone(), e.report.hostname.clone()))
            .collect()
    }

    /// Wake an agent's pending poll (after an assignment or a cancel).
    pub fn wake_agent(&self, name: &str) {
        if let Some(a) = self.agents().get(name) {
            a.wake.notify_one();
        }
    }

    /// Record an agent's report; returns its wake-up handle.
    /// Record an agent's report. A live agent (heard from within the
    /// lease) keeps its name: a report under that name with another agent
    /// id is refused, naming the host that holds it. A silent one's name is
    /// free for whoever reports next.
    pub fn report(&self, name: &str, report: AgentReport) -> Result<Arc<Notify>, NameTaken> {
        let mut agents = self.agents();
        if let Some(e) = agents.get(name) {
            let age = e.last_seen.elapsed();
            if e.report.agent_id != report.agent_id && age < self.lease {
                return Err(NameTaken {
                    name: name.to_string(),
                    holder: e.report.hostname.clone(),
                    seen_ago: age,
                    reporter: report.hostname,
                });
            }
            if e.report.agent_id != report.agent_id {
                tracing::warn!(
                    agent = name,
                    from = %e.report.hostname,
                    to = %report.hostname,
                    "agent name taken over by another agent (the previous one was silent for a lease)"
                );
            }
        }
        let new = !agents.contains_key(name);
        let e = agents
            .entry(name.to_string())
            .or_insert_with(|| AgentEntry {
                report: AgentReport::default(),
                last_seen: Instant::now(),
                wake: Arc::new(Notify::new()),
                lost_notified: false,
            });
        let changed = e.report.gpus != report.gpus
            || e.report.cpu_slots != report.cpu_slots
            || e.report.leaving != report.leaving;
        e.report = report;
        e.last_seen = Instant::now();
        e.lost_notified = false;
        let wake = e.wake.clone();
        drop(agents);
        if new {
            tracing::info!(agent = name, "agent connected");
        }
        self.emit(Event::Agent {
            name: name.to_string(),
        });
        if new || changed {
            self.wake_sched.notify_one();
        }
        Ok(wake)
    }

    /// What an agent should do now: renew the leases it holds, learn which
    /// of its attempts to stop, and receive new assignments.
    pub fn orders(&self, name: &str, held: &[String]) -> Result<AgentOrders, QueueError> {
        let stop = self.queue.renew(held, self.lease_ns())?;
        let known: HashSet<&str> = held.iter().map(String::as_str).collect();
        let mut assignments = Vec::new();
        for a in self.queue.active()? {
            if a.agent == name && !a.running && !known.contains(a.token.as_str()) {
                let mut job = self.queue.get(a.job)?;
                // Only the agent that runs it gets the secret values.
                if !job.spec.secret_env.is_empty() {
                    job.spec.secret_env = self.queue.secret_env(a.job)?;
                }
                assignments.push(Work {
                    assignment: crate::queue::Assignment {
                        job: a.job,
                        attempt: a.attempt,
                        token: a.token,
                        agent: a.agent,
                        gpus: a.gpus,
                        lease_until_ns: now_ns() + self.lease_ns(),
                    },
                    spec: job.spec,
                });
            }
        }
        // A delivered assignment's lease starts now, after the agent sent
        // this request: the agent measures its lease rule from that moment.
        let delivered: Vec<String> = assignments
            .iter()
            .map(|w| w.assignment.token.clone())
            .collect();
        self.queue.renew(&delivered, self.lease_ns())?;
        let stop_reasons = self.queue.idle_stop_reasons(&stop)?;
        Ok(AgentOrders {
            assignments,
            stop,
            stop_reasons,
            lease_ms: self.lease.as_millis() as u64,
        })
    }

    /// Every agent, with what Trainyard holds on it.
    pub fn agent_infos(&self) -> Result<Vec<AgentInfo>, QueueError> {
        let active = self.queue.active()?;
        let mut users: HashMap<JobId, String> = HashMap::new();
        for a in &active {
            if let std::collections::hash_map::Entry::Vacant(e) = users.entry(a.job) {
                e.insert(self.queue.get(a.job)?.spec.user.unwrap_or_default());
            }
        }
        let window_ms = self
            .lab
            .idle
            .policy_for(&crate::idle::JobIdle::default())
            .ok()
            .flatten()
            .map_or(30 * 60_000, |p| p.window_ms);
        let agents = self.agents();
        let mut out: Vec<AgentInfo> = agents
            .iter()
            .map(|(name, e)| AgentInfo {
                name: name.clone(),
                report: e.report.clone(),
                last_seen_ms: e.last_seen.elapsed().as_millis() as u64,
                alive: e.last_seen.elapsed() < self.lease,
                held: active
                    .iter()
                    .filter(|a| &a.agent == name)
                    .flat_map(|a| {
                        a.gpus.iter().map(|g| HeldGpu {
                            idle: self.idle.status(a.job, a.attempt),
                            uuid: g.clone(),
                            job: a.job,
                            user: users.get(&a.job).cloned().unwrap_or_default(),
                        })
                    })
                    .collect(),
                memory_idle: self.idle.memory_idle(name, window_ms),
            })
            .collect();
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    fn host_views(&self, active: &[Active]) -> Vec<HostView> {
        let agents = self.agents();
        let mut views: Vec<HostView> = agents
            .iter()
            .filter(|(_, e)| e.last_seen.elapsed() < self.lease && !e.report.leaving)
            .map(|(name, e)| {
                let mine = active.iter().filter(|a| &a.agent == name);
                let cpu_busy = mine.clone().filter(|a| a.gpus.is_empty()).count() as u32;
                HostView {
                    agent: name.clone(),
                    gpus: e.report.gpus.clone(),
                    held: mine.flat_map(|a| a.gpus.iter().cloned()).collect(),
                    own_pids: e.report.pids.clone(),
                    cpu_free: e.report.cpu_slots.saturating_sub(cpu_busy),
                }
            })
            .collect();
        views.sort_by(|a, b| a.agent.cmp(&b.agent));
        views
    }

    /// One scheduling pass: expire leases, then place queued jobs in order
    /// (priority, then submission) on live agents, reserving GPUs for a
    /// blocked job that would fit once Trainyard's own attempts end.
    ///
    /// Returns whether the queue has work in it (LAN jobs queued, assigned
    /// or running): the scheduling loop passes every second then, and only
    /// every quarter lease otherwise (submissions and finishes wake it).
    pub fn schedule(&self) -> Result<bool, QueueError> {
        let t0 = Instant::now();
        self.notice_lost_agents();
        let now = now_ns();
        for (id, state) in self.queue.expire_leases(now)? {
            tracing::warn!(job = id.0, %state, "attempt lease expired");
            self.job_event(id, state);
        }
        for id in self.queue.expire_windows(now)? {
            tracing::info!(
                job = id.0,
                "start window closed before the job got GPUs; cancelled"
            );
            self.job_event(id, JobState::Cancelled);
        }
        let active = self.queue.active()?;
        let mut hosts = self.host_views(&active);
        let jobs = self.queue.runnable_at(PASS_WINDOW, now)?;
        let read_us = t0.elapsed().as_micros() as u64;
        let considered = jobs.len();
        let mut planned = Vec::new();
        let mut changed = Vec::new();
        for job in jobs {
            let req = &job.gpus;
            match sched::place(req, &hosts) {
                Ok(p) => {
                    let indices: Vec<u32> = hosts
                        .iter()
                        .find(|h| h.agent == p.agent)
                        .map(|h| {
                            p.gpus
                                .iter()
                                .filter_map(|u| h.gpus.iter().find(|g| &g.uuid == u))
                                .map(|g| g.index)
                                .collect()
                        })
                        .unwrap_or_default();
                    if let Some(h) = hosts.iter_mut().find(|h| h.agent == p.agent) {
                        h.held.extend(p.gpus.iter().cloned());
                        if p.gpus.is_empty() {
                            h.cpu_free = h.cpu_free.saturating_sub(1);
                        }
                    }
                    planned.push(Placed {
                        job: job.id,
                        agent: p.agent,
                        gpus: p.gpus,
                        indices,
                    });
                }
                Err(why) => {
                    let why = if let Some(never) = sched::unsatisfiable(req, &hosts) {
                        never
                    } else {
                        match sched::reserve(req, &hosts) {
                            Some(r) => {
                                let n = r.gpus.len();
                                if let Some(h) = hosts.iter_mut().find(|h| h.agent == r.agent) {
                                    h.held.extend(r.gpus);
                                }
                                format!(
                                    "waiting for GPUs on {} ({n} of {} reserved): {why}",
                                    r.agent, req.count
                                )
                            }
                            None => format!("waiting for GPUs: {why}"),
                        }
                    };
                    // Write only changes: a pass over a long queue stays read-only.
                    if job.reason.as_deref() != Some(&why) {
                        changed.push((job.id, why));
                    }
                }
            }
        }
        // One transaction for the whole pass's assignments.
        let placed_us = t0.elapsed().as_micros() as u64;
        let mut assigned = 0usize;
        for a in self
            .queue
            .assign_many(&planned, self.lease_ns())?
            .into_iter()
            // None: cancelled between the read and now.
            .flatten()
        {
            tracing::info!(job = a.job.0, agent = %a.agent, gpus = ?a.gpus, "assigned");
            self.wake_agent(&a.agent);
            self.job_event(a.job, JobState::Assigned);
            assigned += 1;
        }
        self.queue.set_reasons(&changed)?;
        for (id, _) in &changed {
            self.job_event(*id, JobState::Queued);
        }
        tracing::debug!(
            considered,
            assigned,
            reasons = changed.len(),
            elapsed_us = t0.elapsed().as_micros() as u64,
            read_us,
            placed_us,
            "scheduling pass"
        );
        Ok(!active.is_empty() || considered > 0 || self.queue.any_queued()?)
    }

    /// Apply the retention settings once: forget finished jobs beyond the
    /// count or age kept, and delete their logs. Returns how many went.
    pub fn apply_retention(&self) -> Result<usize, QueueError> {
        let r = &self.retention;
        let before = r
            .keep_for
            .map(|d| now_ns().saturating_sub(d.as_nanos().min(i64::MAX as u128) as i64));
        let gone = self.queue.purge_finished(r.keep_jobs, before, 1000)?;
        // Delivered and dead notifications are kept as long as finished jobs.
        if let Err(e) = self.notify.outbox().purge(before.unwrap_or(i64::MIN)) {
            tracing::warn!(error = %e, "cannot purge old notifications");
        }
        for id in &gone {
            if let Err(e) = self.logs.remove_job(*id) {
                tracing::warn!(job = id.0, error = %e, "cannot remove a purged job's logs");
            }
        }
        Ok(gone.len())
    }
}
