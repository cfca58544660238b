//! The follower: what the daemon does for each cluster at each poll.
//!
//! One poll of a cluster, in order:
//! 1. one `squeue -h -t all -j ID,ID,…` for every SLURM job of the
//!    cluster that Trainyard still follows (or one `sinfo` when none is
//!    followed but jobs wait to be submitted): no answer → the cluster is
//!    marked unreachable, its in-flight jobs' reason says so, and nothing
//!    else changes (no state is invented);
//! 2. one `sacct` for the jobs `squeue` no longer lists (SLURM forgets a
//!    finished job after `MinJobAge`): without an answer they stay as they
//!    are, with a reason;
//! 3. each job's SLURM state → the attempt: running → `Queue::started`;
//!    ended → the rest of its output is copied, then `Queue::finish`
//!    (which requeues per the job's attempts: node failure, preemption,
//!    time limit and failures all count one attempt); cancelled in
//!    Trainyard but not in SLURM → one batched `scancel`;
//! 4. the output files of running jobs are copied on into the attempt logs;
//! 5. queued jobs of the cluster are assigned an attempt (recorded before
//!    `sbatch` runs, with the SLURM job name, so a daemon killed during
//!    `sbatch` finds the job again by name) and submitted.
//!
//! The attempt's lease never expires: the LAN's lease rule is for agents;
//! a cluster job ends only on what SLURM says.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use rusqlite::{params, OptionalExtension};

use super::runner::quote;
use super::slurm::{self, Outcome, QueueRow};
use super::{agent_name, Cluster, ClusterError, Clusters, RunError};
use crate::db::now_ns;
use crate::queue::{AttemptLogs, JobId, JobState, Queue, QueueError};

/// The first poll interval, and the one after any change.
pub const MIN_INTERVAL: Duration = Duration::from_secs(5);
/// The longest interval while nothing changes.
pub const MAX_INTERVAL: Duration = Duration::from_secs(60);
/// Jobs submitted per cluster per poll (the rest wait for the next one,
/// which comes at [`MIN_INTERVAL`] since this one changed something).
pub const SUBMIT_PER_POLL: usize = 200;
/// Queued jobs read per cluster per poll: enough for a few full job
/// arrays (a sweep's first attempts go out as one `sbatch`).
const QUEUED_PER_POLL: usize = 5 * slurm::ARRAY_MAX;
/// Output bytes copied per job per poll.
const LOG_PER_POLL: u64 = 1 << 20;
/// A cluster attempt's lease: it never expires.
const NO_EXPIRY: i64 = i64::MAX / 4;

/// The next interval: back to the minimum after a change, else doubled up
/// to the maximum.
pub fn next_interval(current: Duration, changed: bool) -> Duration {
    if changed {
        MIN_INTERVAL
    } else {
        (current * 2).min(MAX_INTERVAL)
    }
}

/// What one poll did.
#[derive(Debug, Default)]
pub struct PollReport {
    /// Jobs whose state changed, with the new state.
    pub changed: Vec<(JobId, JobState)>,
    /// Whether anything changed (a submission, a state, a cancel).
    pub activity: bool,
    /// Why the cluster did not answer, when it did not.
    pub unreachable: Option<String>,
    /// Commands run (for the benchmark and the logs).
    pub commands: u32,
}

/// A followed attempt as stored in `cluster_attempts`.
#[derive(Debug, Clone)]
struct Live {
    job: JobId,
    n: u32,
    token: String,
    name: String,
    slurm_id: Option<String>,
    output: String,
    slurm_state: Option<String>,
    log_offset: u64,
    attempt_state: String,
    submitted_ns: i64,
    /// Its task in a job array (`slurm_id` is then `BASE_TASK`).
    array_task: Option<u32>,
}

/// An ended cluster attempt whose allocation SLURM's accounting has not
/// given yet.
#[derive(Debug, Clone)]
struct Unaccounted {
    job: JobId,
    n: u32,
    slurm_id: String,
    finished_ns: i64,
}

/// How long after its end an attempt's allocation is asked of `sacct`
/// before its own span is kept instead.
const ACCOUNTING_PATIENCE_NS: i64 = 3600 * 1_000_000_000;
/// Ended attempts asked of `sacct` per poll.
const ACCOUNT_PER_POLL: i64 = 1000;

/// A queued job of a cluster, as the submission step groups them.
#[derive(Debug, Clone, Copy)]
struct Queued {
    id: JobId,
    sweep_first: Option<i64>,
    attempts: u32,
}

/// Follows clusters' jobs for one queue and its logs.
pub struct Follower<'a> {
    queue: &'a Queue,
    logs: &'a AttemptLogs,
}

impl<'a> Follower<'a> {
    /// A follower over `queue`, copying output into `logs`.
    pub fn new(queue: &'a Queue, logs: &'a AttemptLogs) -> Follower<'a> {
        Follower { queue, logs }
    }

    fn sql(&self) -> impl Fn(rusqlite::Error) -> QueueError + '_ {
        move |e| self.queue.sql_error(e)
    }

    /// Move the queued LAN jobs whose overflow time came (`now`, ns) to
    /// their cluster. Returns them with their cluster.
    pub fn overflow(&self, now: i64) -> Result<Vec<(JobId, String)>, ClusterError> {
        let due: Vec<(i64, String)> = self.queue.read(|c| {
            let mut st = c
                .prepare_cached(
                    "SELECT id, overflow_cluster FROM jobs
                     WHERE overflow_cluster IS NOT NULL AND overflow_at_ns <= ?1
                       AND cluster IS NULL AND state = 'queued'",
                )
                .map_err(self.sql())?;
            let rows = st
                .query_map([now], |r| Ok((r.get(0)?, r.get(1)?)))
                .map_err(self.sql())?
                .collect::<rusqlite::Result<Vec<_>>>()
                .map_err(self.sql())?;
            Ok::<_, QueueError>(rows)
        })?;
        if due.is_empty() {
            return Ok(Vec::new());
        }
        let moved = self.queue.transaction(|tx| {
            let mut moved = Vec::new();
            for (id, cluster) in &due {
                let n = tx
                    .execute(
                        "UPDATE jobs SET cluster = ?2,
                             reason = 'the LAN could not place it in time; sent to cluster ' || ?2
                         WHERE id = ?1 AND state = 'queued' AND cluster IS NULL",
                        params![id, cluster],
                    )
                    .map_err(self.sql())?;
                if n > 0 {
                    moved.push((JobId(*id), cluster.clone()));
                }
            }
            Ok::<_, QueueError>(moved)
        })?;
        for (id, c) in &moved {
            tracing::info!(job = id.0, cluster = c, "overflowed to the cluster");
        }
        Ok(moved)
    }

    fn live(&self, cluster: &str) -> Result<Vec<Live>, QueueError> {
        self.queue.read(|c| {
            let mut st = c
                .prepare_cached(
                    "SELECT ca.job_id, ca.n, ca.token, ca.name, ca.slurm_id, ca.output,
                            ca.slurm_state, ca.log_offset, a.state, ca.submitted_ns, ca.array_task
                     FROM cluster_attempts ca
                     JOIN attempts a ON a.job_id = ca.job_id AND a.n = ca.n
                     WHERE ca.cluster = ?1 AND ca.done = 0 ORDER BY ca.job_id, ca.n",
                )
                .map_err(self.sql())?;
            let rows = st
                .query_map([cluster], |r| {
                    Ok(Live {
                        job: JobId(r.get(0)?),
                        n: r.get::<_, i64>(1)? as u32,
                        token: r.get(2)?,
                        name: r.get(3)?,
                        slurm_id: r.get(4)?,
                        output: r.get(5)?,
                        slurm_state: r.get(6)?,
                        log_offset: r.get::<_, i64>(7)? as u64,
                        attempt_state: r.get(8)?,
                        submitted_ns: r.get(9)?,
                        array_task: r.get::<_, Option<i64>>(10)?.map(|t| t as u32),
                    })
                })
                .map_err(self.sql())?
                .collect::<rusqlite::Result<Vec<_>>>()
                .map_err(self.sql())?;
            Ok(rows)
        })
    }

    fn queued(&self, cluster: &str, now: i64) -> Result<Vec<Queued>, QueueError> {
        self.queue.read(|c| {
            let mut st = c
                .prepare_cached(concat!(
                    "SELECT id, sweep_first, attempts FROM jobs WHERE cluster = ?1 AND ",
                    crate::queue::startable_sql!(),
                    " ORDER BY priority DESC, id LIMIT ?3"
                ))
                .map_err(self.sql())?;
            let rows = st
                .query_map(params![cluster, now, QUEUED_PER_POLL as i64], |r| {
                    Ok(Queued {
                        id: JobId(r.get(0)?),
                        sweep_first: r.get(1)?,
                        attempts: r.get::<_, i64>(2)? as u32,
                    })
                })
                .map_err(self.sql())?
                .collect::<rusqlite::Result<Vec<_>>>()
                .map_err(self.sql())?;
            Ok(rows)
        })
    }

    /// End an attempt SLURM never got (its translation or `sbatch`
    /// failed) as failed with `msg`, and its cluster row as done.
    fn fail_unsubmitted(
        &self,
        job: JobId,
        attempt: u32,
        token: &str,
        msg: &str,
        report: &mut PollReport,
    ) -> Result<(), ClusterError> {
        match self.queue.finish(token, None, Some(msg)) {
            Ok(st) => report.changed.push((job, st)),
            Err(QueueError::StaleAttempt) => {}
            Err(e) => return Err(e.into()),
        }
        self.update(
            "UPDATE cluster_attempts SET done = 1 WHERE job_id = ?1 AND n = ?2",
            params![job.0, attempt],
        )?;
        Ok(())
    }

    fn update(&self, sql: &str, p: impl rusqlite::Params) -> Result<(), QueueError> {
        self.queue.transaction(|tx| {
            tx.execute(sql, p).map_err(self.sql())?;
            Ok(())
        })
    }

    /// Set the reason an in-flight job shows (only when it differs).
    fn set_reason(&self, job: JobId, reason: Option<&str>) -> Result<(), QueueError> {
        self.update(
            "UPDATE jobs SET reason = ?2 WHERE id = ?1 AND state IN ('assigned', 'running')
               AND reason IS NOT ?2",
            params![job.0, reason],
        )
    }

    /// One poll of `cluster` (see the module's description).
    pub fn poll(&self, cluster: &Cluster) -> Result<PollReport, ClusterError> {
        let runner = cluster.runner();
        let mut report = PollReport::default();
        let live = self.live(&cluster.name)?;
        let queued = self.queued(&cluster.name, now_ns())?;
        let unaccounted = self.unaccounted(&cluster.name)?;
        if live.is_empty() && queued.is_empty() {
            if !unaccounted.is_empty() {
                report.commands += 1;
                let ids: Vec<&str> = unaccounted.iter().map(|u| u.slurm_id.as_str()).collect();
                let answer = sacct(&runner, &ids);
                self.account(cluster, &unaccounted, &answer)?;
            }
            return Ok(report);
        }

        // 1. One squeue for every followed SLURM job, or a ping. A job
        // array is asked for by its base id; `-r` lists each of its tasks.
        let ids: Vec<&str> = live.iter().filter_map(|l| l.slurm_id.as_deref()).collect();
        let mut bases: Vec<&str> = ids
            .iter()
            .map(|id| id.split('_').next().unwrap_or(id))
            .collect();
        bases.sort_unstable();
        bases.dedup();
        let answer = if ids.is_empty() {
            report.commands += 1;
            runner
                .run("sinfo", &["-h".into(), "-o".into(), "%a".into()], None)
                .map(|_| Vec::new())
        } else {
            report.commands += 1;
            runner
                .run(
                    "squeue",
                    &[
                        "-h".into(),
                        "-r".into(),
                        "-t".into(),
                        "all".into(),
                        "-j".into(),
                        bases.join(","),
                        "-O".into(),
                        slurm::SQUEUE_FORMAT.into(),
                    ],
                    None,
                )
                .map(|out| slurm::parse_squeue(&out))
        };
        let mut rows: HashMap<String, QueueRow> = match answer {
            Ok(rows) => rows.into_iter().map(|r| (r.id.clone(), r)).collect(),
            Err(e) => return self.unreachable(cluster, &live, e, report),
        };
        let was_unreachable = Clusters::new(self.queue)
            .list()?
            .into_iter()
            .find(|c| c.cluster.name == cluster.name)
            .and_then(|c| c.unreachable)
            .is_some();
        if was_unreachable {
            tracing::info!(cluster = cluster.name, "cluster reachable again");
            report.activity = true;
            for l in &live {
                self.set_reason(l.job, None)?;
            }
        }
        Clusters::new(self.queue).set_reachability(&cluster.name, None)?;

        // 2. One sacct for those squeue no longer lists and for the ended
        // attempts whose allocation is not recorded yet.
        let missing: Vec<&str> = ids
            .iter()
            .copied()
            .filter(|id| !rows.contains_key(*id))
            .collect();
        let mut forgotten_why = None;
        let mut asked = missing.clone();
        asked.extend(unaccounted.iter().map(|u| u.slurm_id.as_str()));
        if !asked.is_empty() {
            report.commands += 1;
            let answer = sacct(&runner, &asked);
            match &answer {
                Ok(found) => {
                    for id in &missing {
                        if let Some(r) = found.get(*id) {
                            rows.entry(r.id.clone()).or_insert_with(|| r.clone());
                        }
                    }
                }
                Err(e) if !missing.is_empty() => forgotten_why = Some(e.to_string()),
                Err(_) => {}
            }
            self.account(cluster, &unaccounted, &answer)?;
        }

        // 3 and 4. Each followed attempt.
        let mut to_cancel = Vec::new();
        let mut by_name = HashMap::new();
        for l in &live {
            let Some(id) = &l.slurm_id else {
                self.resolve_unsubmitted(cluster, l, &mut by_name, &mut report)?;
                continue;
            };
            let Some(row) = rows.get(id) else {
                let why = format!(
                    "SLURM job {id} is no longer listed by squeue and sacct has no record of it{}; \
                     its end is unknown",
                    forgotten_why
                        .as_deref()
                        .map(|w| format!(" ({w})"))
                        .unwrap_or_default()
                );
                if l.attempt_state == "cancelled" {
                    self.mark_done(l)?;
                } else {
                    self.set_reason(l.job, Some(&why))?;
                }
                continue;
            };
            let state_changed = l.slurm_state.as_deref() != Some(row.state.as_str());
            if state_changed {
                self.update(
                    "UPDATE cluster_attempts SET slurm_state = ?3 WHERE job_id = ?1 AND n = ?2",
                    params![l.job.0, l.n, row.state],
                )?;
                report.activity = true;
            }
            if let Some(g) = row.alloc_gpus {
                self.update(
                    "UPDATE cluster_attempts SET alloc_gpus = ?3, elapsed_s = ?4
                     WHERE job_id = ?1 AND n = ?2",
                    params![l.job.0, l.n, g, row.elapsed_s.map(|e| e as i64)],
                )?;
            }
            let out = slurm::outcome(row);
            let cancelled_here = l.attempt_state == "cancelled";
            match out {
                Outcome::Waiting => {
                    if cancelled_here {
                        to_cancel.push(id.clone());
                        continue;
                    }
                    let why = format!(
                        "pending in SLURM job {id}{}",
                        if row.reason.is_empty() || row.reason == "None" {
                            String::new()
                        } else {
                            format!(" ({})", row.reason)
                        }
                    );
                    self.set_reason(l.job, Some(&why))?;
                }
                Outcome::Running => {
                    if cancelled_here {
                        to_cancel.push(id.clone());
                        continue;
                    }
                    if l.attempt_state == "assigned" {
                        match self.queue.started(&l.token, None) {
                            Ok(job) => {
                                report.changed.push((job, JobState::Running));
                                report.activity = true;
                                tracing::info!(job = job.0, slurm = %id, "cluster job running");
                            }
                            Err(QueueError::StaleAttempt) => {}
                            Err(e) => return Err(e.into()),
                        }
                    }
                    let on = if row.nodes.is_empty() {
                        String::new()
                    } else {
                        format!(" on {}", row.nodes)
                    };
                    self.set_reason(l.job, Some(&format!("running as SLURM job {id}{on}")))?;
                    self.copy_log(cluster, l)?;
                }
                Outcome::Ended { exit_code, error } => {
                    self.copy_log(cluster, l)?;
                    if !cancelled_here {
                        // An attempt that ended before a poll saw it run
                        // still ran: record its start first.
                        if l.attempt_state == "assigned"
                            && row.start != "N/A"
                            && !row.start.is_empty()
                        {
                            let _ = self.queue.started(&l.token, None);
                        }
                        match self.queue.finish(&l.token, exit_code, error.as_deref()) {
                            Ok(st) => {
                                tracing::info!(job = l.job.0, slurm = %id, state = %row.state, new = %st, "cluster job ended");
                                report.changed.push((l.job, st));
                            }
                            Err(QueueError::StaleAttempt) => {}
                            Err(e) => return Err(e.into()),
                        }
                    }
                    self.mark_done(l)?;
                    report.activity = true;
                }
                Outcome::Cancelled => {
                    self.copy_log(cluster, l)?;
                    if !cancelled_here {
                        // Cancelled by someone else in SLURM (scancel, an
                        // administrator): the attempt failed, with why.
                        let msg = format!("SLURM job {id} was cancelled outside Trainyard");
                        if l.attempt_state == "assigned"
                            && row.start != "N/A"
                            && !row.start.is_empty()
                        {
                            let _ = self.queue.started(&l.token, None);
                        }
                        match self.queue.finish(&l.token, None, Some(&msg)) {
                            Ok(st) => report.changed.push((l.job, st)),
                            Err(QueueError::StaleAttempt) => {}
                            Err(e) => return Err(e.into()),
                        }
                    }
                    self.mark_done(l)?;
                    report.activity = true;
                }
            }
        }
        if !to_cancel.is_empty() {
            report.commands += 1;
            match runner.run("scancel", &to_cancel, None) {
                Ok(_) => {
                    tracing::info!(cluster = cluster.name, jobs = ?to_cancel, "scancel sent");
                    report.activity = true;
                }
                Err(e) => tracing::warn!(cluster = cluster.name, error = %e, "scancel failed"),
            }
        }

        // 5. Submit what waits: the first attempts of a sweep's jobs as
        // job arrays, anything else one job at a time.
        for group in batches(&queued).into_iter().take(SUBMIT_PER_POLL) {
            if group.len() == 1 {
                self.submit(cluster, group[0], &mut report)?;
            } else {
                self.submit_array(cluster, &group, &mut report)?;
            }
        }
        Ok(report)
    }

    /// Submit `jobs` (first attempts of one sweep) as one job array; the
    /// members whose options or secrets differ from the first's go one
    /// at a time.
    fn submit_array(
        &self,
        cluster: &Cluster,
        jobs: &[JobId],
        report: &mut PollReport,
    ) -> Result<(), ClusterError> {
        let mut specs = Vec::with_capacity(jobs.len());
        for id in jobs {
            specs.push((*id, self.queue.get(*id)?.spec));
        }
        let secrets: BTreeMap<String, String> = if specs[0].1.secret_env.is_empty() {
            BTreeMap::new()
        } else {
            self.queue.secret_env(specs[0].0)?
        };
        let mut members: Vec<(JobId, &crate::queue::JobSpec)> = Vec::new();
        let mut alone = Vec::new();
        for (id, spec) in &specs {
            let same = slurm::same_options(cluster, &specs[0].1, spec)
                && (spec.secret_env.is_empty() && secrets.is_empty()
                    || self.queue.secret_env(*id)? == secrets);
            if same {
                members.push((*id, spec));
            } else {
                alone.push(*id);
            }
        }
        for id in alone {
            self.submit(cluster, id, report)?;
        }
        if members.len() == 1 {
            return self.submit(cluster, members[0].0, report);
        }
        let names: Vec<String> = secrets.keys().cloned().collect();
        // Assign first: the array holds exactly the jobs whose attempt
        // exists (one cancelled meanwhile is left out), task i the i-th.
        let mut tokens = Vec::with_capacity(members.len());
        for (job, spec) in &members {
            let gpus: Vec<String> = (0..spec.gpus.count)
                .map(|k| format!("slurm:{}/job{job}.1/gpu{k}", cluster.name))
                .collect();
            match self
                .queue
                .assign_at(*job, &agent_name(&cluster.name), &gpus, &[], NO_EXPIRY)
            {
                Ok(a) => tokens.push((*job, *spec, a)),
                Err(QueueError::BadState { .. }) => {}
                Err(e) => return Err(e.into()),
            }
        }
        if tokens.is_empty() {
            return Ok(());
        }
        report.activity = true;
        let assigned: Vec<(JobId, &crate::queue::JobSpec)> =
            tokens.iter().map(|(j, s, _)| (*j, *s)).collect();
        let translated =
            slurm::translate_array(cluster, &assigned, members[0].1.max_parallel, &names);
        // Each attempt recorded with the array's name and its task before
        // sbatch runs (a daemon killed during sbatch finds it by name).
        let name = match &translated {
            Ok(a) => a.submission.name.clone(),
            Err(_) => format!("ty-sweep-{}", assigned[0].0),
        };
        for (i, (job, spec, a)) in tokens.iter().enumerate() {
            self.update(
                "INSERT INTO cluster_attempts (job_id, n, cluster, token, name, output, gpus,
                                               submitted_ns, array_task)
                 VALUES (?1, ?2, ?3, ?4, ?5, '', ?6, ?7, ?8)",
                params![
                    job.0,
                    a.attempt,
                    cluster.name,
                    a.token,
                    name,
                    spec.gpus.count,
                    now_ns(),
                    i as i64
                ],
            )?;
            report.changed.push((*job, JobState::Assigned));
        }
        let fail_all = |msg: &str, report: &mut PollReport| -> Result<(), ClusterError> {
            for (job, _, a) in &tokens {
                self.fail_unsubmitted(*job, a.attempt, &a.token, msg, report)?;
            }
            Ok(())
        };
        let arr = match translated {
            Ok(a) => a,
            Err(e) => return fail_all(&e.to_string(), report),
        };
        let pairs: Vec<(String, String)> = secrets.into_iter().collect();
        let stdin = match slurm::secret_stdin(&pairs, &arr.submission.script) {
            Ok(s) => s,
            Err(e) => return fail_all(&e, report),
        };
        let mut args = vec![pairs.len().to_string()];
        args.extend(arr.submission.options.iter().cloned());
        report.commands += 1;
        match cluster
            .runner()
            .run_shell(&arr.submission.prelude, &args, Some(&stdin))
        {
            Ok(out) => match slurm::parse_submit(&out) {
                Some((dir, id)) => {
                    for (i, (job, _, a)) in tokens.iter().enumerate() {
                        let task = format!("{id}_{i}");
                        let output = format!("{}/{}", dir.trim_end_matches('/'), arr.output_of(i));
                        self.update(
                            "UPDATE cluster_attempts SET slurm_id = ?3, output = ?4
                             WHERE job_id = ?1 AND n = ?2",
                            params![job.0, a.attempt, task, output],
                        )?;
                        self.set_reason(*job, Some(&format!("submitted as SLURM job {task}")))?;
                    }
                    tracing::info!(
                        jobs = tokens.len(),
                        first = members[0].0 .0,
                        slurm = %id,
                        cluster = cluster.name,
                        "sweep submitted to SLURM as a job array"
                    );
                }
                None => return fail_all(&format!("sbatch gave no job id: {}", out.trim()), report),
            },
            Err(e) if e.is_unreachable() => {
                tracing::warn!(first = members[0].0 .0, error = %e, "sbatch got no answer");
            }
            Err(e) => return fail_all(&format!("sbatch refused the job array: {e}"), report),
        }
        Ok(())
    }

    fn unaccounted(&self, cluster: &str) -> Result<Vec<Unaccounted>, QueueError> {
        self.queue.read(|c| {
            let mut st = c
                .prepare_cached(
                    "SELECT ca.job_id, ca.n, ca.slurm_id, coalesce(a.finished_ns, 0)
                     FROM cluster_attempts ca
                     JOIN attempts a ON a.job_id = ca.job_id AND a.n = ca.n
                     WHERE ca.cluster = ?1 AND ca.done = 1 AND ca.accounted = 0
                       AND ca.slurm_id IS NOT NULL
                     ORDER BY a.finished_ns LIMIT ?2",
                )
                .map_err(self.sql())?;
            let rows = st
                .query_map(params![cluster, ACCOUNT_PER_POLL], |r| {
                    Ok(Unaccounted {
                        job: JobId(r.get(0)?),
                        n: r.get::<_, i64>(1)? as u32,
                        slurm_id: r.get(2)?,
                        finished_ns: r.get(3)?,
                    })
                })
                .map_err(self.sql())?
                .collect::<rusqlite::Result<Vec<_>>>()
                .map_err(self.sql())?;
            Ok(rows)
        })
    }

    /// Record the allocations `sacct` gave for ended attempts: GPUs from
    /// `AllocTRES` (gres/gpu), from its start for its elapsed time. The
    /// attempt then holds exactly those GPUs for that span (what usage
    /// counts, host `slurm:NAME`). Without accounting (sacct says it is
    /// disabled), or an hour after the end without an answer, the
    /// attempt's own span stays what counts.
    fn account(
        &self,
        cluster: &Cluster,
        unaccounted: &[Unaccounted],
        answer: &Result<HashMap<String, QueueRow>, RunError>,
    ) -> Result<(), QueueError> {
        let disabled = matches!(answer, Err(RunError::Failed { stderr, .. })
            if stderr.contains("accounting storage is disabled"));
        let now = now_ns();
        for u in unaccounted {
            let row = answer.as_ref().ok().and_then(|rows| rows.get(&u.slurm_id));
            let ended = row.is_some_and(|r| {
                matches!(
                    slurm::outcome(r),
                    Outcome::Ended { .. } | Outcome::Cancelled
                )
            });
            let alloc = row.filter(|_| ended).and_then(|r| {
                Some((
                    r.alloc_gpus?,
                    r.elapsed_s?,
                    slurm::epoch_ns(&r.start).unwrap_or(0),
                ))
            });
            match alloc {
                Some((gpus, elapsed, start)) => {
                    // A job that never started (cancelled while pending)
                    // held nothing.
                    let (gpus, start) = if start > 0 { (gpus, start) } else { (0, 0) };
                    let names: Vec<String> = (0..gpus)
                        .map(|k| format!("slurm:{}/job{}.{}/gpu{k}", cluster.name, u.job, u.n))
                        .collect();
                    let end = start.saturating_add((elapsed as i64).saturating_mul(1_000_000_000));
                    self.queue.transaction(|tx| {
                        tx.execute(
                            "UPDATE cluster_attempts SET alloc_gpus = ?3, elapsed_s = ?4,
                                 alloc_start_ns = ?5, alloc_end_ns = ?6, accounted = 1
                             WHERE job_id = ?1 AND n = ?2",
                            params![u.job.0, u.n, gpus, elapsed as i64, start, end],
                        )
                        .map_err(self.sql())?;
                        tx.execute(
                            "UPDATE attempts SET gpus = ?3 WHERE job_id = ?1 AND n = ?2",
                            params![
                                u.job.0,
                                u.n,
                                serde_json::to_string(&names).expect("strings serialize")
                            ],
                        )
                        .map_err(self.sql())?;
                        Ok::<_, QueueError>(())
                    })?;
                    tracing::debug!(job = u.job.0, slurm = %u.slurm_id, gpus, elapsed, "allocation from sacct");
                }
                None if disabled || now - u.finished_ns > ACCOUNTING_PATIENCE_NS => {
                    self.update(
                        "UPDATE cluster_attempts SET accounted = -1 WHERE job_id = ?1 AND n = ?2",
                        params![u.job.0, u.n],
                    )?;
                }
                None => {}
            }
        }
        Ok(())
    }

    fn mark_done(&self, l: &Live) -> Result<(), QueueError> {
        self.update(
            "UPDATE cluster_attempts SET done = 1 WHERE job_id = ?1 AND n = ?2",
            params![l.job.0, l.n],
        )
    }

    fn unreachable(
        &self,
        cluster: &Cluster,
        live: &[Live],
        e: RunError,
        mut report: PollReport,
    ) -> Result<PollReport, ClusterError> {
        let msg = e.to_string();
        let reason = format!("cluster unreachable: {msg}");
        tracing::warn!(cluster = cluster.name, error = %msg, "cluster unreachable");
        Clusters::new(self.queue).set_reachability(&cluster.name, Some(&msg))?;
        for l in live {
            if l.attempt_state != "cancelled" {
                self.set_reason(l.job, Some(&reason))?;
            }
        }
        report.unreachable = Some(msg);
        Ok(report)
    }

    /// An attempt recorded but whose `sbatch` answer was never recorded
    /// (the daemon stopped during it): find it by name, or end the
    /// attempt saying it was not submitted.
    fn resolve_unsubmitted(
        &self,
        cluster: &Cluster,
        l: &Live,
        by_name: &mut HashMap<String, Option<String>>,
        report: &mut PollReport,
    ) -> Result<(), ClusterError> {
        // The tasks of one array share a name: one lookup for all.
        let found = match by_name.get(&l.name) {
            Some(f) => f.clone(),
            None => {
                report.commands += 1;
                let out = match cluster.runner().run(
                    "squeue",
                    &[
                        "-h".into(),
                        "-t".into(),
                        "all".into(),
                        format!("--name={}", l.name),
                        "-O".into(),
                        "JobArrayID:|".into(),
                    ],
                    None,
                ) {
                    Ok(o) => o,
                    Err(e) if e.is_unreachable() => return Ok(()),
                    Err(e) => return Err(e.into()),
                };
                let f = out
                    .lines()
                    .map(|s| s.trim().trim_end_matches('|'))
                    .find(|s| !s.is_empty())
                    .map(str::to_string);
                by_name.insert(l.name.clone(), f.clone());
                f
            }
        };
        // An array's base id: its JobArrayID (`BASE_TASK`, or
        // `BASE_[2-4%2]` for the pending rest) before the `_`.
        let found = found.map(|id| match l.array_task {
            Some(t) => format!("{}_{t}", id.split('_').next().unwrap_or(&id)),
            None => id,
        });
        match found.as_deref() {
            Some(id) => {
                tracing::info!(
                    job = l.job.0,
                    slurm = id,
                    "found the SLURM job of an unrecorded submission"
                );
                self.update(
                    "UPDATE cluster_attempts SET slurm_id = ?3 WHERE job_id = ?1 AND n = ?2",
                    params![l.job.0, l.n, id],
                )?;
            }
            None if l.attempt_state == "cancelled" => self.mark_done(l)?,
            None => {
                // Younger than a minute: sbatch may still be on its way.
                if now_ns() - l.submitted_ns < 60_000_000_000 {
                    return Ok(());
                }
                let msg = "the daemon stopped before sbatch answered, and SLURM has no job of \
                           that name: not submitted";
                match self.queue.finish(&l.token, None, Some(msg)) {
                    Ok(st) => report.changed.push((l.job, st)),
                    Err(QueueError::StaleAttempt) => {}
                    Err(e) => return Err(e.into()),
                }
                self.mark_done(l)?;
            }
        }
        report.activity = true;
        Ok(())
    }

    fn submit(
        &self,
        cluster: &Cluster,
        job: JobId,
        report: &mut PollReport,
    ) -> Result<(), ClusterError> {
        let j = self.queue.get(job)?;
        let n = j.attempts + 1;
        let gpus: Vec<String> = (0..j.spec.gpus.count)
            .map(|k| format!("slurm:{}/job{job}.{n}/gpu{k}", cluster.name))
            .collect();
        let name = slurm::job_name(job, n, &j.spec);
        let a = match self
            .queue
            .assign_at(job, &agent_name(&cluster.name), &gpus, &[], NO_EXPIRY)
        {
            Ok(a) => a,
            // Cancelled between the read and now.
            Err(QueueError::BadState { .. }) => return Ok(()),
            Err(e) => return Err(e.into()),
        };
        self.update(
            "INSERT INTO cluster_attempts (job_id, n, cluster, token, name, output, gpus, submitted_ns)
             VALUES (?1, ?2, ?3, ?4, ?5, '', ?6, ?7)",
            params![job.0, a.attempt, cluster.name, a.token, name, j.spec.gpus.count, now_ns()],
        )?;
        report.changed.push((job, JobState::Assigned));
        report.activity = true;
        let secrets: BTreeMap<String, String> = if j.spec.secret_env.is_empty() {
            BTreeMap::new()
        } else {
            self.queue.secret_env(job)?
        };
        let names: Vec<String> = secrets.keys().cloned().collect();
        let fail = |msg: &str, report: &mut PollReport| -> Result<(), ClusterError> {
            self.fail_unsubmitted(job, a.attempt, &a.token, msg, report)
        };
        let sub = match slurm::translate(cluster, job, a.attempt, &j.spec, &names) {
            Ok(s) => s,
            Err(e) => return fail(&e.to_string(), report),
        };
        let pairs: Vec<(String, String)> = secrets.into_iter().collect();
        let stdin = match slurm::secret_stdin(&pairs, &sub.script) {
            Ok(s) => s,
            Err(e) => return fail(&e, report),
        };
        let mut args = vec![pairs.len().to_string()];
        args.extend(sub.options.iter().cloned());
        report.commands += 1;
        match cluster
            .runner()
            .run_shell(&sub.prelude, &args, Some(&stdin))
        {
            Ok(out) => match slurm::parse_submit(&out) {
                Some((dir, id)) => {
                    let output = format!("{}/{}", dir.trim_end_matches('/'), sub.output_name);
                    self.update(
                        "UPDATE cluster_attempts SET slurm_id = ?3, output = ?4
                         WHERE job_id = ?1 AND n = ?2",
                        params![job.0, a.attempt, id, output],
                    )?;
                    tracing::info!(job = job.0, attempt = a.attempt, slurm = %id, cluster = cluster.name, "submitted to SLURM");
                    self.set_reason(job, Some(&format!("submitted as SLURM job {id}")))?;
                }
                None => return fail(&format!("sbatch gave no job id: {}", out.trim()), report),
            },
            // Not known to be submitted: the attempt stays recorded and the
            // next poll looks the job up by name (then gives up after a
            // minute), so no job runs twice.
            Err(e) if e.is_unreachable() => {
                tracing::warn!(job = job.0, error = %e, "sbatch got no answer");
            }
            Err(e) => return fail(&format!("sbatch refused the job: {e}"), report),
        }
        Ok(())
    }

    /// Copy a job's output file on from the last offset into its attempt
    /// log: read directly when the cluster is this machine, else with one
    /// `tail` through ssh.
    fn copy_log(&self, cluster: &Cluster, l: &Live) -> Result<(), ClusterError> {
        if l.output.is_empty() {
            return Ok(());
        }
        let bytes = if cluster.ssh.is_none() {
            read_from(&l.output, l.log_offset, LOG_PER_POLL)
        } else {
            let script = format!(
                "tail -c +{} {} 2>/dev/null | head -c {}",
                l.log_offset + 1,
                quote(&l.output),
                LOG_PER_POLL
            );
            cluster
                .runner()
                .run_shell(&script, &[], None)
                .map(String::into_bytes)
                .unwrap_or_default()
        };
        if bytes.is_empty() {
            return Ok(());
        }
        match self.logs.append(l.job, l.n, l.log_offset, &bytes) {
            Ok(size) => self.update(
                "UPDATE cluster_attempts SET log_offset = ?3 WHERE job_id = ?1 AND n = ?2",
                params![l.job.0, l.n, size as i64],
            )?,
            Err(e) => {
                tracing::warn!(job = l.job.0, error = %e, "cannot copy a cluster job's output")
            }
        }
        Ok(())
    }

    /// The SLURM job id of an attempt, when submitted.
    pub fn slurm_id(&self, job: JobId, n: u32) -> Result<Option<String>, QueueError> {
        self.queue.read(|c| {
            c.query_row(
                "SELECT slurm_id FROM cluster_attempts WHERE job_id = ?1 AND n = ?2",
                params![job.0, n],
                |r| r.get(0),
            )
            .optional()
            .map(Option::flatten)
            .map_err(self.sql())
        })
    }
}

/// One `sacct` for `ids` (times as epoch seconds): its rows by id.
fn sacct(runner: &super::Runner, ids: &[&str]) -> Result<HashMap<String, QueueRow>, RunError> {
    runner
        .run(
            "env",
            &[
                slurm::SACCT_TIME_FORMAT.into(),
                "sacct".into(),
                "-X".into(),
                "-P".into(),
                "-n".into(),
                "-j".into(),
                ids.join(","),
                format!("--format={}", slurm::SACCT_FORMAT),
            ],
            None,
        )
        .map(|out| {
            slurm::parse_sacct(&out)
                .into_iter()
                .map(|r| (r.id.clone(), r))
                .collect()
        })
}

/// Group queued jobs into submissions, in queue order: the first attempts
/// of one sweep's jobs together (at most [`slurm::ARRAY_MAX`] a group),
/// every other job alone.
fn batches(queued: &[Queued]) -> Vec<Vec<JobId>> {
    let mut out: Vec<Vec<JobId>> = Vec::new();
    let mut open: HashMap<i64, usize> = HashMap::new();
    for q in queued {
        match q.sweep_first.filter(|_| q.attempts == 0) {
            Some(sweep) => match open.get(&sweep) {
                Some(&i) if out[i].len() < slurm::ARRAY_MAX => out[i].push(q.id),
                _ => {
                    open.insert(sweep, out.len());
                    out.push(vec![q.id]);
                }
            },
            None => out.push(vec![q.id]),
        }
    }
    out
}

fn read_from(path: &str, offset: u64, max: u64) -> Vec<u8> {
    use std::io::{Read, Seek, SeekFrom};
    let Ok(mut f) = std::fs::File::open(path) else {
        return Vec::new();
    };
    if f.seek(SeekFrom::Start(offset)).is_err() {
        return Vec::new();
    }
    let mut buf = Vec::new();
    let _ = f.take(max).read_to_end(&mut buf);
    buf
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn polls_back_off_from_5_to_60_seconds() {
        let mut i = MIN_INTERVAL;
        let mut seen = vec![i];
        for _ in 0..6 {
            i = next_interval(i, false);
            seen.push(i);
        }
        assert_eq!(
            seen.iter().map(|d| d.as_secs()).collect::<Vec<_>>(),
            vec![5, 10, 20, 40, 60, 60, 60]
        );
        assert_eq!(next_interval(MAX_INTERVAL, true), MIN_INTERVAL);
    }

    #[test]
    fn a_sweeps_first_attempts_group_into_arrays() {
        let q = |id: i64, sweep: Option<i64>, attempts: u32| Queued {
            id: JobId(id),
            sweep_first: sweep,
            attempts,
        };
        let b = batches(&[
            q(1, None, 0),
            q(2, Some(2), 0),
            q(3, Some(2), 0),
            q(4, Some(2), 1),
            q(9, Some(9), 0),
            q(5, Some(2), 0),
        ]);
        let ids: Vec<Vec<i64>> = b.iter().map(|g| g.iter().map(|j| j.0).collect()).collect();
        assert_eq!(ids, vec![vec![1], vec![2, 3, 5], vec![4], vec![9]]);
        let big: Vec<Queued> = (0..2500).map(|i| q(10 + i, Some(10), 0)).collect();
        let sizes: Vec<usize> = batches(&big).iter().map(Vec::len).collect();
        assert_eq!(sizes, vec![1000, 1000, 500]);
    }
}
