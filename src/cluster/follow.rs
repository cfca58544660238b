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
                            ca.slurm_state, ca.log_offset, a.state, ca.submitted_ns
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
                    })
                })
                .map_err(self.sql())?
                .collect::<rusqlite::Result<Vec<_>>>()
                .map_err(self.sql())?;
            Ok(rows)
        })
    }

    fn queued(&self, cluster: &str, now: i64) -> Result<Vec<JobId>, QueueError> {
        self.queue.read(|c| {
            let mut st = c
                .prepare_cached(concat!(
                    "SELECT id FROM jobs WHERE cluster = ?1 AND ",
                    crate::queue::startable_sql!(),
                    " ORDER BY priority DESC, id LIMIT ?3"
                ))
                .map_err(self.sql())?;
            let rows = st
                .query_map(params![cluster, now, SUBMIT_PER_POLL as i64], |r| {
                    Ok(JobId(r.get(0)?))
                })
                .map_err(self.sql())?
                .collect::<rusqlite::Result<Vec<_>>>()
                .map_err(self.sql())?;
            Ok(rows)
        })
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
        if live.is_empty() && queued.is_empty() {
            return Ok(report);
        }

        // 1. One squeue for every followed SLURM job, or a ping.
        let ids: Vec<&str> = live.iter().filter_map(|l| l.slurm_id.as_deref()).collect();
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
                        "-t".into(),
                        "all".into(),
                        "-j".into(),
                        ids.join(","),
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

        // 2. sacct for those squeue no longer lists.
        let missing: Vec<&str> = ids
            .iter()
            .copied()
            .filter(|id| !rows.contains_key(*id))
            .collect();
        let mut forgotten_why = None;
        if !missing.is_empty() {
            report.commands += 1;
            match runner.run(
                "sacct",
                &[
                    "-X".into(),
                    "-P".into(),
                    "-n".into(),
                    "-j".into(),
                    missing.join(","),
                    format!("--format={}", slurm::SACCT_FORMAT),
                ],
                None,
            ) {
                Ok(out) => {
                    for r in slurm::parse_sacct(&out) {
                        rows.entry(r.id.clone()).or_insert(r);
                    }
                }
                Err(e) => forgotten_why = Some(e.to_string()),
            }
        }

        // 3 and 4. Each followed attempt.
        let mut to_cancel = Vec::new();
        for l in &live {
            let Some(id) = &l.slurm_id else {
                self.resolve_unsubmitted(cluster, l, &mut report)?;
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

        // 5. Submit what waits.
        for job in queued {
            self.submit(cluster, job, &mut report)?;
        }
        Ok(report)
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
        report: &mut PollReport,
    ) -> Result<(), ClusterError> {
        report.commands += 1;
        let out = match cluster.runner().run(
            "squeue",
            &[
                "-h".into(),
                "-t".into(),
                "all".into(),
                format!("--name={}", l.name),
                "-O".into(),
                "JobID:|".into(),
            ],
            None,
        ) {
            Ok(o) => o,
            Err(e) if e.is_unreachable() => return Ok(()),
            Err(e) => return Err(e.into()),
        };
        match out
            .lines()
            .map(|s| s.trim().trim_end_matches('|'))
            .find(|s| !s.is_empty())
        {
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
            match self.queue.finish(&a.token, None, Some(msg)) {
                Ok(st) => report.changed.push((job, st)),
                Err(QueueError::StaleAttempt) => {}
                Err(e) => return Err(e.into()),
            }
            self.update(
                "UPDATE cluster_attempts SET done = 1 WHERE job_id = ?1 AND n = ?2",
                params![job.0, a.attempt],
            )?;
            Ok(())
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
}
