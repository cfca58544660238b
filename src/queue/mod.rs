//! The job queue: jobs, their attempts and leases, in SQLite (WAL), one
//! transaction per state change.
//!
//! States: queued → assigned → running → succeeded | failed | cancelled |
//! lost. A failed or lost attempt with attempts left puts the job back to
//! queued. Every call about an attempt (heartbeat, start, finish) presents the
//! attempt's token, so an agent that was cut off and comes back cannot finish
//! or overwrite an attempt that was reassigned. The queue knows datasets by
//! name only and knows nothing about GPUs beyond the ids it is told to record.

mod events;
mod holdings;
pub use holdings::Held;
mod idle;
mod list;
mod logs;
mod spec;
mod tags;

pub use idle::IdleEnd;
pub use list::{Cursor, JobFilter, JobOrder, JobPage, MAX_PAGE};
pub use logs::{AttemptLogs, LogChunk, LogError, MIN_LOG_CAP};
pub use spec::{
    parse_env_file, parse_memory_mib, parse_sweep, sweep_len, timeout_secs, Command, GitSource,
    GpuRequest, JobSpec, Overflow, SpecError, SweepGrid, MAX_MEMORY_MIB, SECRET_REDACTED,
};
pub use tags::check_tag;

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};

use rusqlite::{params, Connection, OptionalExtension, TransactionBehavior};
use serde::Serialize;

use crate::db::{self, now_ns, DbError};

/// A job's id.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, serde::Deserialize,
)]
pub struct JobId(pub i64);

impl fmt::Display for JobId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// Where a job is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JobState {
    /// Waiting for the scheduler.
    Queued,
    /// Given to an agent, not yet started.
    Assigned,
    /// Its process runs.
    Running,
    /// Exited 0.
    Succeeded,
    /// Failed with no attempts left.
    Failed,
    /// Cancelled by a user.
    Cancelled,
    /// Its agent vanished with no attempts left.
    Lost,
    /// Stopped by the idle policy (`stop`): its GPUs stayed idle for the
    /// window (the reason says so; the evidence is on the attempt).
    IdleStopped,
}

impl JobState {
    /// Every state, in the order of a job's life.
    pub const ALL: [JobState; 8] = [
        JobState::Queued,
        JobState::Assigned,
        JobState::Running,
        JobState::Succeeded,
        JobState::Failed,
        JobState::Cancelled,
        JobState::Lost,
        JobState::IdleStopped,
    ];
    /// The state's name.
    pub fn as_str(self) -> &'static str {
        match self {
            JobState::Queued => "queued",
            JobState::Assigned => "assigned",
            JobState::Running => "running",
            JobState::Succeeded => "succeeded",
            JobState::Failed => "failed",
            JobState::Cancelled => "cancelled",
            JobState::Lost => "lost",
            JobState::IdleStopped => "idle_stopped",
        }
    }
    /// Parse a state name (`queued`, `running`, ...); unknown names are `None`.
    pub fn from_name(s: &str) -> Option<JobState> {
        JobState::ALL.into_iter().find(|st| st.as_str() == s)
    }
    fn parse(s: &str) -> JobState {
        match s {
            "assigned" => JobState::Assigned,
            "running" => JobState::Running,
            "succeeded" => JobState::Succeeded,
            "failed" => JobState::Failed,
            "cancelled" => JobState::Cancelled,
            "lost" => JobState::Lost,
            "idle_stopped" => JobState::IdleStopped,
            _ => JobState::Queued,
        }
    }
    /// Whether the job will never run again (unless retried).
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            JobState::Succeeded
                | JobState::Failed
                | JobState::Cancelled
                | JobState::Lost
                | JobState::IdleStopped
        )
    }
}

impl fmt::Display for JobState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Where one attempt of a job is: assigned → running → succeeded | failed
/// | cancelled | lost | idle_stopped. Stored in `attempts.state` under these names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AttemptState {
    /// Given to an agent, not yet started.
    Assigned,
    /// Its process runs.
    Running,
    /// Exited 0.
    Succeeded,
    /// Exited non-zero, was killed, or could not start.
    Failed,
    /// Stopped because the job was cancelled.
    Cancelled,
    /// Its lease expired: the agent stopped renewing it.
    Lost,
    /// Stopped (or requeued) by the idle policy; not a failure.
    IdleStopped,
}

impl AttemptState {
    /// Every state, in the order of an attempt's life.
    pub const ALL: [AttemptState; 7] = [
        AttemptState::Assigned,
        AttemptState::Running,
        AttemptState::Succeeded,
        AttemptState::Failed,
        AttemptState::Cancelled,
        AttemptState::Lost,
        AttemptState::IdleStopped,
    ];
    /// The state's name.
    pub fn as_str(self) -> &'static str {
        match self {
            AttemptState::Assigned => "assigned",
            AttemptState::Running => "running",
            AttemptState::Succeeded => "succeeded",
            AttemptState::Failed => "failed",
            AttemptState::Cancelled => "cancelled",
            AttemptState::Lost => "lost",
            AttemptState::IdleStopped => "idle_stopped",
        }
    }
    /// Parse a state name (`assigned`, `running`, ...); unknown names are `None`.
    pub fn from_name(s: &str) -> Option<AttemptState> {
        AttemptState::ALL.into_iter().find(|st| st.as_str() == s)
    }
    /// Whether the attempt has ended (its process, if any, is gone).
    pub fn is_terminal(self) -> bool {
        !matches!(self, AttemptState::Assigned | AttemptState::Running)
    }
}

impl fmt::Display for AttemptState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(self.as_str())
    }
}

impl rusqlite::types::FromSql for AttemptState {
    fn column_result(v: rusqlite::types::ValueRef<'_>) -> rusqlite::types::FromSqlResult<Self> {
        let s = v.as_str()?;
        AttemptState::from_name(s).ok_or_else(|| {
            rusqlite::types::FromSqlError::Other(
                format!("attempts.state: {s:?} is not an attempt state").into(),
            )
        })
    }
}

/// Queue errors; each names the job or attempt at fault.
#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    /// The database failed.
    #[error(transparent)]
    Db(#[from] DbError),
    /// The spec was rejected.
    #[error(transparent)]
    Spec(#[from] SpecError),
    /// No such job.
    #[error("no job {0}")]
    UnknownJob(JobId),
    /// `depends_on` names a job that does not exist.
    #[error("invalid job spec: depends_on: no job {0}")]
    UnknownDependency(JobId),
    /// The action does not apply in the job's state.
    #[error("job {job} is {state}; cannot {action}")]
    BadState {
        /// The job.
        job: JobId,
        /// Its state.
        state: JobState,
        /// What was attempted.
        action: &'static str,
    },
    /// The token does not name the job's current attempt (it was reassigned,
    /// cancelled or expired).
    #[error(
        "attempt token is not current (the attempt was reassigned, cancelled or its lease expired)"
    )]
    StaleAttempt,
    /// A list cursor that this daemon did not hand out (or for another order).
    #[error("cursor: {cursor:?} is not a cursor of this listing; start again without one")]
    BadCursor {
        /// The cursor as given.
        cursor: String,
    },
    /// `on` or `overflow.cluster` names no cluster of `cluster add`.
    #[error(
        "invalid job spec: {field}: no cluster {name:?}; add it with `trainyard cluster add {name} --slurm`"
    )]
    UnknownCluster {
        /// `on` or `overflow.cluster`.
        field: &'static str,
        /// The name given.
        name: String,
    },
    /// One submission with more jobs than [`MAX_BATCH`].
    #[error(
        "too many jobs in one submission: {count} is over the limit of {limit}; split the sweep \
         (fewer values per key) or submit it in several parts"
    )]
    TooManyJobs {
        /// The jobs asked for.
        count: u64,
        /// [`MAX_BATCH`].
        limit: u64,
    },
}

/// The most jobs one submission (a sweep) may create. The batch is one
/// transaction, during which the queue serves nobody else: 250,000 inserts
/// take a few seconds, well under an attempt's lease.
pub const MAX_BATCH: u64 = 250_000;

type Result<T> = std::result::Result<T, QueueError>;

/// A job as stored.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct Job {
    /// Its id.
    pub id: JobId,
    /// What was submitted.
    pub spec: JobSpec,
    /// Its state.
    pub state: JobState,
    /// Attempts made so far.
    pub attempts: u32,
    /// Why it waits, failed or was lost, for humans.
    pub reason: Option<String>,
    /// Submission time (ns since the epoch).
    pub submitted_ns: i64,
    /// The exit code of the last finished attempt.
    pub exit_code: Option<i32>,
    /// The latest attempt's agent (the host it runs or ran on).
    pub agent: Option<String>,
    /// GPU UUIDs of the latest attempt.
    pub gpus: Vec<String>,
    /// The NVML indices of those GPUs on their host, in the same order.
    #[serde(default)]
    pub gpu_indices: Vec<u32>,
    /// When the latest attempt's process started (ns since the epoch).
    pub started_ns: Option<i64>,
    /// When the job reached a final state (ns since the epoch).
    pub finished_ns: Option<i64>,
    /// Where idle detection stands for the latest attempt.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idle: Option<crate::idle::Status>,
}

/// One attempt of a job, as recorded.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct AttemptInfo {
    /// Attempt number, from 1.
    pub n: u32,
    /// The agent it was given to.
    pub agent: String,
    /// GPU UUIDs it held.
    pub gpus: Vec<String>,
    /// Their NVML indices on the agent's host, in the same order.
    #[serde(default)]
    pub gpu_indices: Vec<u32>,
    /// Where it is.
    pub state: AttemptState,
    /// Assignment time (ns).
    pub assigned_ns: i64,
    /// Process start (ns).
    pub started_ns: Option<i64>,
    /// End (ns).
    pub finished_ns: Option<i64>,
    /// Exit code, when the process exited by itself.
    pub exit_code: Option<i32>,
    /// Why it did not succeed.
    pub error: Option<String>,
    /// The git commit it ran (jobs with a git source), as the agent
    /// resolved the job's rev; also the job's `TRAINYARD_GIT_COMMIT`.
    #[serde(default)]
    pub commit: Option<String>,
    /// Where idle detection stands (or stood when the attempt ended);
    /// none for exempt jobs and attempts the daemon has no sample of.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idle: Option<crate::idle::Status>,
    /// The idle policy's decisions on this attempt (warned, notified,
    /// stopped, requeued), each with its evidence.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub idle_evidence: Vec<crate::idle::Evidence>,
}

impl AttemptInfo {
    /// Whether the attempt is over: no longer assigned or running, so its
    /// process writes no more output.
    pub fn has_ended(&self) -> bool {
        self.state.is_terminal()
    }
}

/// An attempt in flight (assigned or running): what holds GPUs.
#[derive(Debug, Clone)]
pub struct Active {
    /// The job.
    pub job: JobId,
    /// Attempt number.
    pub attempt: u32,
    /// Its token.
    pub token: String,
    /// The agent.
    pub agent: String,
    /// GPU UUIDs it holds.
    pub gpus: Vec<String>,
    /// Whether its process has started.
    pub running: bool,
}

/// A placement decided by a scheduling pass, for [`Queue::assign_many`].
#[derive(Debug, Clone)]
pub struct Placed {
    /// The job.
    pub job: JobId,
    /// The agent.
    pub agent: String,
    /// GPU UUIDs.
    pub gpus: Vec<String>,
    /// Their NVML indices on the agent's host.
    pub indices: Vec<u32>,
}

/// What an agent receives for one attempt.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct Assignment {
    /// The job.
    pub job: JobId,
    /// Attempt number, from 1.
    pub attempt: u32,
    /// Secret naming this attempt; required for heartbeat/start/finish.
    pub token: String,
    /// The agent it is given to.
    pub agent: String,
    /// GPU UUIDs it may use.
    pub gpus: Vec<String>,
    /// The lease end (ns since the epoch): renew before it with heartbeats.
    pub lease_until_ns: i64,
}

/// The SQL condition under which a job of `jobs` may start now (`?2` is
/// now, ns): queued, every dependency succeeded, its not-before time has
/// passed, and no job of the range it runs after is still queued or
/// running. One text for the LAN's scheduling pass and the cluster
/// follower, so they never disagree on what may start.
macro_rules! startable_sql {
    () => {
        "state = 'queued' AND NOT EXISTS (
             SELECT 1 FROM deps d JOIN jobs j ON j.id = d.depends_on
             WHERE d.job_id = jobs.id AND j.state != 'succeeded')
           AND (not_before_ns IS NULL OR not_before_ns <= ?2)
           AND (after_first IS NULL OR NOT EXISTS (
             SELECT 1 FROM jobs p WHERE p.id >= jobs.after_first
               AND p.id < jobs.after_first + jobs.after_count
               AND p.state IN ('queued', 'assigned', 'running')))"
    };
}
pub(crate) use startable_sql;

const MIGRATIONS: &[&str] = &[
    "CREATE TABLE jobs (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        spec TEXT NOT NULL,
        project TEXT NOT NULL,
        user TEXT NOT NULL,
        priority INTEGER NOT NULL,
        state TEXT NOT NULL,
        reason TEXT,
        attempts INTEGER NOT NULL DEFAULT 0,
        max_attempts INTEGER NOT NULL,
        submitted_ns INTEGER NOT NULL,
        finished_ns INTEGER,
        exit_code INTEGER
    );
    CREATE INDEX jobs_by_state ON jobs(state, priority DESC, id);
    CREATE TABLE deps (
        job_id INTEGER NOT NULL REFERENCES jobs(id),
        depends_on INTEGER NOT NULL REFERENCES jobs(id),
        PRIMARY KEY (job_id, depends_on)
    );
    CREATE TABLE attempts (
        job_id INTEGER NOT NULL REFERENCES jobs(id),
        n INTEGER NOT NULL,
        token TEXT NOT NULL UNIQUE,
        agent TEXT NOT NULL,
        gpus TEXT NOT NULL,
        state TEXT NOT NULL,
        lease_until_ns INTEGER NOT NULL,
        assigned_ns INTEGER NOT NULL,
        started_ns INTEGER,
        finished_ns INTEGER,
        exit_code INTEGER,
        error TEXT,
        PRIMARY KEY (job_id, n)
    );",
    // 2: the GPU request as columns, so a scheduling pass reads no JSON.
    "ALTER TABLE jobs ADD COLUMN gpu_count INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE jobs ADD COLUMN gpu_min_mib INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE jobs ADD COLUMN gpu_model TEXT;
    UPDATE jobs SET gpu_count = coalesce(json_extract(spec, '$.gpus.count'), 0),
                    gpu_min_mib = coalesce(json_extract(spec, '$.gpus.min_memory_mib'), 0),
                    gpu_model = json_extract(spec, '$.gpus.model');
    CREATE INDEX deps_by_dependency ON deps(depends_on);
    CREATE INDEX attempts_in_flight ON attempts(job_id) WHERE state IN ('assigned', 'running');",
    // 3: listing a long history page by page (filters by user, project and
    // tag; finished jobs newest first), GPU indices per attempt, and a
    // finish time on every finished job (lost ones had none) for retention.
    "ALTER TABLE attempts ADD COLUMN gpu_indices TEXT NOT NULL DEFAULT '[]';
    CREATE TABLE job_tags (
        tag TEXT NOT NULL,
        job_id INTEGER NOT NULL REFERENCES jobs(id),
        PRIMARY KEY (tag, job_id)
    ) WITHOUT ROWID;
    INSERT OR IGNORE INTO job_tags (tag, job_id)
        SELECT t.value, j.id FROM jobs j, json_each(j.spec, '$.tags') t;
    UPDATE jobs SET finished_ns = coalesce(
            (SELECT max(a.finished_ns) FROM attempts a WHERE a.job_id = jobs.id), submitted_ns)
        WHERE finished_ns IS NULL AND state IN ('succeeded', 'failed', 'cancelled', 'lost');
    CREATE INDEX jobs_by_order ON jobs(priority DESC, id);
    CREATE INDEX jobs_by_user ON jobs(user, priority DESC, id);
    CREATE INDEX jobs_by_project ON jobs(project, priority DESC, id);
    CREATE INDEX jobs_by_finish ON jobs(finished_ns DESC, id DESC) WHERE finished_ns IS NOT NULL;",
    // 4: the exact git commit an attempt ran (resolved by the agent from
    // the job's --rev), reported with its start.
    "ALTER TABLE attempts ADD COLUMN git_commit TEXT;",
    // 5: secret environment values, apart from the spec, so that no
    // listing, answer or log that shows a spec can show them.
    "CREATE TABLE job_secrets (
        job_id INTEGER NOT NULL REFERENCES jobs(id),
        name TEXT NOT NULL,
        value TEXT NOT NULL,
        PRIMARY KEY (job_id, name)
    ) WITHOUT ROWID;",
    // 6: the usage ledger: each GPU an attempt held, kept when retention
    // deletes the job (GPU-hours outlive job history).
    "CREATE TABLE gpu_holdings (
        job_id INTEGER NOT NULL,
        n INTEGER NOT NULL,
        gpu TEXT NOT NULL,
        agent TEXT NOT NULL,
        user TEXT NOT NULL,
        project TEXT NOT NULL,
        tags TEXT NOT NULL,
        start_ns INTEGER NOT NULL,
        end_ns INTEGER NOT NULL,
        PRIMARY KEY (job_id, n, gpu)
    ) WITHOUT ROWID;
    CREATE INDEX gpu_holdings_by_end ON gpu_holdings(end_ns);
    CREATE INDEX attempts_by_finish ON attempts(finished_ns);",
    // 7: schedules (`crate::schedule`): recurring and data-triggered jobs,
    // each occurrence recorded once under its idempotency key, in the same
    // transaction as the jobs it submitted; and the start constraints a
    // fired job may carry (a window: not before / not after; a previous
    // run of its schedule that must end first).
    "CREATE TABLE schedules (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        name TEXT NOT NULL UNIQUE,
        spec TEXT NOT NULL,
        sweep TEXT,
        cron TEXT,
        tz TEXT NOT NULL,
        dataset TEXT,
        tag_pattern TEXT,
        overlap TEXT NOT NULL,
        catch_up TEXT NOT NULL,
        start_window TEXT,
        paused INTEGER NOT NULL DEFAULT 0,
        user TEXT NOT NULL,
        created_ns INTEGER NOT NULL,
        watermark_ns INTEGER NOT NULL
    );
    CREATE TABLE schedule_secrets (
        schedule_id INTEGER NOT NULL REFERENCES schedules(id) ON DELETE CASCADE,
        name TEXT NOT NULL,
        value TEXT NOT NULL,
        PRIMARY KEY (schedule_id, name)
    ) WITHOUT ROWID;
    CREATE TABLE schedule_occurrences (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        schedule_id INTEGER NOT NULL REFERENCES schedules(id) ON DELETE CASCADE,
        key TEXT NOT NULL,
        at_ns INTEGER NOT NULL,
        outcome TEXT NOT NULL,
        job_first INTEGER,
        job_count INTEGER NOT NULL DEFAULT 0,
        detail TEXT,
        recorded_ns INTEGER NOT NULL,
        UNIQUE (schedule_id, key)
    );
    CREATE INDEX schedule_occurrences_by_outcome ON schedule_occurrences(schedule_id, outcome, seq);
    ALTER TABLE jobs ADD COLUMN not_before_ns INTEGER;
    ALTER TABLE jobs ADD COLUMN not_after_ns INTEGER;
    ALTER TABLE jobs ADD COLUMN after_first INTEGER;
    ALTER TABLE jobs ADD COLUMN after_count INTEGER;
    CREATE INDEX jobs_by_not_after ON jobs(not_after_ns) WHERE not_after_ns IS NOT NULL;",
    // 8: the notification outbox (`crate::notify`): events written in the
    // transaction of the change that causes them, one delivery per (event,
    // sink), and the sinks added with `notify add` (their URLs are secrets,
    // like job_secrets' values).
    "CREATE TABLE notify_events (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        kind TEXT NOT NULL,
        created_ns INTEGER NOT NULL,
        body TEXT NOT NULL,
        routed INTEGER NOT NULL DEFAULT 0
    );
    CREATE INDEX notify_events_unrouted ON notify_events(id) WHERE routed = 0;
    CREATE TABLE notify_deliveries (
        event_id INTEGER NOT NULL REFERENCES notify_events(id),
        sink TEXT NOT NULL,
        state TEXT NOT NULL,
        attempts INTEGER NOT NULL DEFAULT 0,
        next_ns INTEGER NOT NULL,
        last_error TEXT,
        done_ns INTEGER,
        PRIMARY KEY (event_id, sink)
    ) WITHOUT ROWID;
    CREATE INDEX notify_deliveries_due ON notify_deliveries(next_ns) WHERE state = 'pending';
    CREATE TABLE notify_sinks (
        name TEXT PRIMARY KEY,
        kind TEXT NOT NULL,
        url TEXT,
        rule TEXT NOT NULL,
        priority INTEGER,
        created_ns INTEGER NOT NULL
    ) WITHOUT ROWID;",
    // 9: the idle policy (`crate::idle`): where detection stands for an
    // attempt (`idle_status`, JSON `idle::Status`, written when its phase
    // or idle run changes) and its decisions with their evidence
    // (`idle_evidence`, a JSON array of `idle::Evidence`). A job stopped
    // for idling is in the new state `idle_stopped` (states are text: no
    // row changes).
    "ALTER TABLE attempts ADD COLUMN idle_status TEXT;
    ALTER TABLE attempts ADD COLUMN idle_evidence TEXT;",
    // 10: SLURM clusters (`crate::cluster`): their settings, the cluster a
    // job is sent to (`on`, or its overflow target and when it moves), and
    // per attempt the SLURM job that runs it, so a restarted daemon
    // re-attaches by SLURM job id.
    "CREATE TABLE clusters (
        name TEXT PRIMARY KEY,
        kind TEXT NOT NULL,
        partition TEXT,
        account TEXT,
        qos TEXT,
        ssh TEXT,
        gres_types TEXT NOT NULL,
        dir TEXT,
        created_ns INTEGER NOT NULL,
        unreachable TEXT,
        checked_ns INTEGER
    ) WITHOUT ROWID;
    ALTER TABLE jobs ADD COLUMN cluster TEXT;
    ALTER TABLE jobs ADD COLUMN overflow_cluster TEXT;
    ALTER TABLE jobs ADD COLUMN overflow_at_ns INTEGER;
    CREATE INDEX jobs_by_cluster ON jobs(cluster, state) WHERE cluster IS NOT NULL;
    CREATE INDEX jobs_by_overflow ON jobs(overflow_at_ns) WHERE overflow_cluster IS NOT NULL;
    CREATE TABLE cluster_attempts (
        job_id INTEGER NOT NULL,
        n INTEGER NOT NULL,
        cluster TEXT NOT NULL,
        token TEXT NOT NULL,
        name TEXT NOT NULL,
        slurm_id TEXT,
        output TEXT NOT NULL,
        slurm_state TEXT,
        log_offset INTEGER NOT NULL DEFAULT 0,
        gpus INTEGER NOT NULL,
        alloc_gpus INTEGER,
        elapsed_s INTEGER,
        submitted_ns INTEGER NOT NULL,
        done INTEGER NOT NULL DEFAULT 0,
        PRIMARY KEY (job_id, n)
    ) WITHOUT ROWID;
    CREATE INDEX cluster_attempts_live ON cluster_attempts(cluster) WHERE done = 0;",
    // 11: notification digests (`crate::notify::digest`): per digest sink,
    // how often and the end of the last period digested (or where its
    // digests began). Moved in the transaction that writes the digest's
    // event, so a period is digested once.
    "CREATE TABLE notify_digest_marks (
        sink TEXT PRIMARY KEY,
        every TEXT NOT NULL,
        through_ns INTEGER NOT NULL
    ) WITHOUT ROWID;",
    // 12: sweeps as a whole: the first job of the sweep a job belongs to
    // (`sweep_first`; the jobs of one sweep have consecutive ids) and how
    // many of them may run at once (`max_parallel`), so a sweep sent to a
    // cluster becomes one job array (`--array 0-N%K`) and the LAN starts
    // no more than K; per cluster attempt, its task in that array, and its
    // allocation as SLURM's accounting (`sacct`) gives it — when it began
    // and ended — and whether that was recorded (`accounted`: 0 not yet,
    // 1 from sacct, -1 sacct has no record: the attempt's own span counts).
    "ALTER TABLE jobs ADD COLUMN sweep_first INTEGER;
    ALTER TABLE jobs ADD COLUMN max_parallel INTEGER;
    CREATE INDEX jobs_by_sweep ON jobs(sweep_first, state) WHERE sweep_first IS NOT NULL;
    ALTER TABLE cluster_attempts ADD COLUMN array_task INTEGER;
    ALTER TABLE cluster_attempts ADD COLUMN alloc_start_ns INTEGER;
    ALTER TABLE cluster_attempts ADD COLUMN alloc_end_ns INTEGER;
    ALTER TABLE cluster_attempts ADD COLUMN accounted INTEGER NOT NULL DEFAULT 0;
    CREATE INDEX cluster_attempts_unaccounted ON cluster_attempts(cluster)
        WHERE done = 1 AND accounted = 0;",
];

/// The schema version this build writes (`PRAGMA user_version` of
/// `queue.db`): the number of its migrations.
pub const SCHEMA: usize = MIGRATIONS.len();

/// When a job may start, beyond its dependencies: what a schedule puts on
/// the jobs it fires (`--window`, `--overlap queue`). Plain submissions
/// have none.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct StartRule {
    /// Not assigned before this time (ns).
    pub not_before_ns: Option<i64>,
    /// Cancelled, with `window_reason`, if still queued at this time (ns).
    pub not_after_ns: Option<i64>,
    /// Not assigned while a job with an id in `[first, first + count)` is
    /// queued, assigned or running (the previous run of its schedule).
    pub after: Option<(i64, i64)>,
    /// The reason the job waits, shown until the scheduler replaces it.
    pub reason: Option<String>,
}

/// A queued job as the scheduler needs it: no spec parsing.
#[derive(Debug, Clone)]
pub struct Pending {
    /// The job.
    pub id: JobId,
    /// Its GPU request.
    pub gpus: GpuRequest,
    /// The reason recorded last (written again only when it changes).
    pub reason: Option<String>,
}

/// The queue database. One connection, shared behind a mutex: the daemon is
/// the queue's only user and each call is one short transaction.
#[derive(Debug)]
pub struct Queue {
    path: PathBuf,
    conn: Mutex<Connection>,
}

fn new_token() -> String {
    crate::secret::random_hex(16)
}

impl Queue {
    /// Open (creating and migrating) the queue at `path`.
    pub fn open(path: &Path) -> Result<Queue> {
        let mut conn = db::open(path)?;
        db::migrate(&mut conn, path, MIGRATIONS)?;
        Ok(Queue {
            path: path.to_path_buf(),
            conn: Mutex::new(conn),
        })
    }

    fn sql(&self) -> impl Fn(rusqlite::Error) -> QueueError + '_ {
        move |e| QueueError::Db(db::err(&self.path)(e))
    }

    fn conn(&self) -> Result<MutexGuard<'_, Connection>> {
        // A panic while holding the lock leaves SQLite consistent (the
        // transaction rolls back on drop), so a poisoned lock is usable.
        Ok(self.conn.lock().unwrap_or_else(|p| p.into_inner()))
    }

    /// Validate and enqueue a job.
    pub fn submit(&self, spec: &JobSpec) -> Result<JobId> {
        Ok(self.submit_many(std::slice::from_ref(spec))?[0])
    }

    /// Validate and enqueue several jobs (a sweep) in one transaction: all or
    /// none. A job may depend on an earlier job of the same batch.
    pub fn submit_many(&self, specs: &[JobSpec]) -> Result<Vec<JobId>> {
        check_batch(specs.len() as u64)?;
        for (i, spec) in specs.iter().enumerate() {
            spec.validate().map_err(|mut e| {
                if specs.len() > 1 {
                    e.field = format!("[{i}].{}", e.field);
                }
                e
            })?;
        }
        self.insert_batch(specs.iter().cloned(), specs.len(), false)
    }

    /// Enqueue one job per combination of `grid` (each `args` of `template`
    /// extended by one value per key), in one transaction, expanding the
    /// grid here rather than in the request: a 100,000-job sweep is a few
    /// hundred bytes on the wire.
    pub fn submit_sweep(&self, template: &JobSpec, grid: &SweepGrid) -> Result<Vec<JobId>> {
        let count = sweep_len(grid);
        check_batch(count)?;
        template.validate()?;
        let mut jobs = template.sweep_iter(grid)?;
        // The grid only adds `args`, which validation does not restrict, so
        // the template's check holds for every job; the first is checked to
        // be sure.
        if let Some(first) = template.sweep_iter(grid)?.next() {
            first.validate()?;
        }
        self.insert_batch(&mut jobs, count as usize, true)
    }

    fn insert_batch(
        &self,
        specs: impl Iterator<Item = JobSpec>,
        n: usize,
        sweep: bool,
    ) -> Result<Vec<JobId>> {
        let mut conn = self.conn()?;
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(self.sql())?;
        let mut ids = Vec::with_capacity(n);
        for spec in specs {
            ids.push(self.insert_job(&tx, &spec)?);
        }
        if let (true, Some(first), Some(last)) = (sweep, ids.first(), ids.last()) {
            // One transaction: the sweep's ids are consecutive.
            tx.execute(
                "UPDATE jobs SET sweep_first = ?1 WHERE id BETWEEN ?1 AND ?2",
                [first.0, last.0],
            )
            .map_err(self.sql())?;
        }
        tx.commit().map_err(self.sql())?;
        tracing::info!(
            jobs = ids.len(),
            first = ids.first().map(|j| j.0),
            "jobs submitted"
        );
        Ok(ids)
    }

    fn insert_job(&self, tx: &rusqlite::Transaction<'_>, spec: &JobSpec) -> Result<JobId> {
        self.insert_job_with(tx, spec, &StartRule::default())
    }

    /// Run `f` in one `BEGIN IMMEDIATE` transaction of the queue database,
    /// committed when it returns `Ok`: what a schedule's occurrence needs to
    /// submit its jobs and record itself atomically.
    pub(crate) fn transaction<T, E: From<QueueError>>(
        &self,
        f: impl FnOnce(&rusqlite::Transaction<'_>) -> std::result::Result<T, E>,
    ) -> std::result::Result<T, E> {
        let mut conn = self.conn()?;
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(self.sql())?;
        let out = f(&tx)?;
        tx.commit().map_err(self.sql())?;
        Ok(out)
    }

    /// Read with the queue's connection (no transaction of its own).
    pub(crate) fn read<T, E: From<QueueError>>(
        &self,
        f: impl FnOnce(&Connection) -> std::result::Result<T, E>,
    ) -> std::result::Result<T, E> {
        let conn = self.conn()?;
        f(&conn)
    }

    /// The error of a failed statement on this queue's database.
    pub(crate) fn sql_error(&self, e: rusqlite::Error) -> QueueError {
        self.sql()(e)
    }

    /// Validate and insert one job with start constraints, inside `tx`.
    pub(crate) fn insert_job_with(
        &self,
        tx: &rusqlite::Transaction<'_>,
        spec: &JobSpec,
        rule: &StartRule,
    ) -> Result<JobId> {
        for d in &spec.depends_on {
            let exists: bool = tx
                .query_row("SELECT 1 FROM jobs WHERE id = ?1", [d], |_| Ok(true))
                .optional()
                .map_err(self.sql())?
                .unwrap_or(false);
            if !exists {
                return Err(QueueError::UnknownDependency(JobId(*d)));
            }
        }
        for (field, name) in [
            ("on", spec.on.as_ref()),
            (
                "overflow.cluster",
                spec.overflow.as_ref().map(|o| &o.cluster),
            ),
        ] {
            let Some(name) = name else { continue };
            let exists = tx
                .query_row("SELECT 1 FROM clusters WHERE name = ?1", [name], |_| Ok(()))
                .optional()
                .map_err(self.sql())?
                .is_some();
            if !exists {
                return Err(QueueError::UnknownCluster {
                    field,
                    name: name.clone(),
                });
            }
        }
        let user = spec.user.clone().unwrap_or_else(|| "unknown".into());
        // The stored spec names its secrets; their values go to job_secrets.
        let stored = if spec.secret_env.is_empty() {
            None
        } else {
            let mut s = spec.clone();
            for v in s.secret_env.values_mut() {
                *v = SECRET_REDACTED.to_string();
            }
            Some(s)
        };
        tx.prepare_cached(
            "INSERT INTO jobs (spec, project, user, priority, state, max_attempts, submitted_ns,
                               gpu_count, gpu_min_mib, gpu_model, not_before_ns, not_after_ns,
                               after_first, after_count, reason, cluster, overflow_cluster,
                               overflow_at_ns, max_parallel)
             VALUES (?1, ?2, ?3, ?4, 'queued', ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15,
                     ?16, ?17, ?18)",
        )
        .map_err(self.sql())?
        .execute(params![
            serde_json::to_string(stored.as_ref().unwrap_or(spec)).expect("specs serialize"),
            spec.project,
            user,
            spec.priority,
            spec.max_attempts,
            now_ns(),
            spec.gpus.count,
            spec.gpus.min_memory_mib as i64,
            spec.gpus.model,
            rule.not_before_ns,
            rule.not_after_ns,
            rule.after.map(|a| a.0),
            rule.after.map(|a| a.1),
            rule.reason,
            spec.on,
            spec.overflow.as_ref().map(|o| &o.cluster),
            spec.overflow.as_ref().map(|o| {
                now_ns().saturating_add((o.after_s as i64).saturating_mul(1_000_000_000))
            }),
            spec.max_parallel,
        ])
        .map_err(self.sql())?;
        let id = tx.last_insert_rowid();
        for (name, value) in &spec.secret_env {
            tx.prepare_cached("INSERT INTO job_secrets (job_id, name, value) VALUES (?1, ?2, ?3)")
                .map_err(self.sql())?
                .execute(params![id, name, value])
                .map_err(self.sql())?;
        }
        for t in &spec.tags {
            tx.prepare_cached("INSERT OR IGNORE INTO job_tags (tag, job_id) VALUES (?1, ?2)")
                .map_err(self.sql())?
                .execute(params![t, id])
                .map_err(self.sql())?;
        }
        for d in &spec.depends_on {
            tx.execute(
                "INSERT OR IGNORE INTO deps (job_id, depends_on) VALUES (?1, ?2)",
                [id, *d],
            )
            .map_err(self.sql())?;
        }
        Ok(JobId(id))
    }

    fn read_job(&self, conn: &Connection, id: JobId) -> Result<Job> {
        let row = conn
            .prepare_cached(&format!("{} WHERE j.id = ?1", list::JOB_SELECT))
            .map_err(self.sql())?
            .query_row([id.0], list::job_row)
            .optional()
            .map_err(self.sql())?
            .ok_or(QueueError::UnknownJob(id))?;
        list::job_of_row(row)
    }

    /// One job.
    pub fn get(&self, id: JobId) -> Result<Job> {
        let conn = self.conn()?;
        self.read_job(&conn, id)
    }

    /// Up to `limit` queued jobs whose dependencies have all succeeded, in
    /// scheduling order. Jobs whose dependency ended without success are
    /// failed here, with the reason, since they can never run.
    pub fn runnable(&self, limit: usize) -> Result<Vec<Pending>> {
        self.runnable_at(limit, now_ns())
    }

    /// [`Queue::runnable`] at `now` (ns): a job whose window opens later,
    /// or whose schedule's previous run has not ended, is not runnable yet.
    pub fn runnable_at(&self, limit: usize, now: i64) -> Result<Vec<Pending>> {
        let mut conn = self.conn()?;
        // Only jobs with a dependency that ended badly are touched: the scan
        // starts from those dependencies, not from the whole queue.
        let doomed: Vec<(i64, i64)> = conn
            .prepare_cached(
                "SELECT d.job_id, d.depends_on FROM jobs j
                 JOIN deps d ON d.depends_on = j.id
                 JOIN jobs w ON w.id = d.job_id AND w.state = 'queued'
                 WHERE j.state IN ('failed', 'cancelled', 'lost', 'idle_stopped')",
            )
            .map_err(self.sql())?
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
            .map_err(self.sql())?
            .collect::<rusqlite::Result<_>>()
            .map_err(self.sql())?;
        if !doomed.is_empty() {
            let tx = conn
                .transaction_with_behavior(TransactionBehavior::Immediate)
                .map_err(self.sql())?;
            for (job, dep) in &doomed {
                let failed = tx
                    .execute(
                        "UPDATE jobs SET state = 'failed', finished_ns = ?3,
                             reason = 'dependency ' || ?2 || ' did not succeed'
                         WHERE id = ?1 AND state = 'queued'",
                        params![job, dep, now_ns()],
                    )
                    .map_err(self.sql())?;
                if failed > 0 {
                    self.notify_job_end(&tx, JobId(*job))?;
                }
            }
            tx.commit().map_err(self.sql())?;
        }
        // A sweep with `max_parallel` K offers at most K minus its jobs in
        // flight (counted once per sweep, only for such sweeps).
        let mut st = conn
            .prepare_cached(concat!(
                "SELECT id, gpu_count, gpu_min_mib, gpu_model, reason, sweep_first, max_parallel,
                        CASE WHEN max_parallel IS NULL OR sweep_first IS NULL THEN 0 ELSE
                          (SELECT count(*) FROM jobs s WHERE s.sweep_first = jobs.sweep_first
                             AND s.state IN ('assigned', 'running')) END
                 FROM jobs WHERE cluster IS NULL AND ",
                startable_sql!(),
                " ORDER BY priority DESC, id LIMIT ?1"
            ))
            .map_err(self.sql())?;
        let mut room: std::collections::HashMap<i64, i64> = Default::default();
        let rows = st
            .query_map([limit as i64, now], |r| {
                let sweep: Option<i64> = r.get(5)?;
                let max: Option<i64> = r.get(6)?;
                let in_flight: i64 = r.get(7)?;
                Ok((
                    Pending {
                        id: JobId(r.get(0)?),
                        gpus: GpuRequest {
                            count: r.get::<_, i64>(1)? as u32,
                            min_memory_mib: r.get::<_, i64>(2)? as u64,
                            model: r.get(3)?,
                        },
                        reason: r.get(4)?,
                    },
                    sweep.zip(max).map(|(s, m)| (s, m - in_flight)),
                ))
            })
            .map_err(self.sql())?
            .collect::<rusqlite::Result<Vec<_>>>()
            .map_err(self.sql())?
            .into_iter()
            .filter_map(|(p, limit)| match limit {
                None => Some(p),
                Some((sweep, free)) => {
                    let left = room.entry(sweep).or_insert(free);
                    (*left > 0).then(|| {
                        *left -= 1;
                        p
                    })
                }
            })
            .collect();
        Ok(rows)
    }

    /// Record why a queued job waits (shown by `ps`).
    pub fn set_reason(&self, id: JobId, reason: &str) -> Result<()> {
        self.set_reasons(&[(id, reason.to_string())])
    }

    /// Record why several queued jobs wait, in one transaction.
    pub fn set_reasons(&self, reasons: &[(JobId, String)]) -> Result<()> {
        if reasons.is_empty() {
            return Ok(());
        }
        let mut conn = self.conn()?;
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(self.sql())?;
        {
            let mut st = tx
                .prepare_cached("UPDATE jobs SET reason = ?2 WHERE id = ?1 AND state = 'queued'")
                .map_err(self.sql())?;
            for (id, reason) in reasons {
                st.execute(params![id.0, reason]).map_err(self.sql())?;
            }
        }
        tx.commit().map_err(self.sql())
    }

    /// Whether any LAN job waits in the queue (startable now or later).
    pub fn any_queued(&self) -> Result<bool> {
        let conn = self.conn()?;
        conn.prepare_cached(
            "SELECT EXISTS(SELECT 1 FROM jobs WHERE state = 'queued' AND cluster IS NULL)",
        )
        .and_then(|mut st| st.query_row([], |r| r.get(0)))
        .map_err(self.sql())
    }

    /// Every attempt in flight (assigned or running): what holds GPUs now.
    pub fn active(&self) -> Result<Vec<Active>> {
        let conn = self.conn()?;
        let mut st = conn
            .prepare_cached(
                "SELECT job_id, n, token, agent, gpus, state FROM attempts
                 WHERE state IN ('assigned', 'running') ORDER BY job_id",
            )
            .map_err(self.sql())?;
        let rows = st
            .query_map([], |r| {
                Ok(Active {
                    job: JobId(r.get(0)?),
                    attempt: r.get::<_, i64>(1)? as u32,
                    token: r.get(2)?,
                    agent: r.get(3)?,
                    gpus: serde_json::from_str(&r.get::<_, String>(4)?).unwrap_or_default(),
                    running: r.get::<_, AttemptState>(5)? == AttemptState::Running,
                })
            })
            .map_err(self.sql())?
            .collect::<rusqlite::Result<_>>()
            .map_err(self.sql())?;
        Ok(rows)
    }

    /// The attempts of a job, oldest first.
    /// A job's secret environment values, for the agent that runs it (and
    /// for nothing else: every other reader sees [`SECRET_REDACTED`]).
    pub fn secret_env(&self, id: JobId) -> Result<BTreeMap<String, String>> {
        let conn = self.conn()?;
        let mut st = conn
            .prepare_cached("SELECT name, value FROM job_secrets WHERE job_id = ?1")
            .map_err(self.sql())?;
        let rows = st
            .query_map([id.0], |r| Ok((r.get(0)?, r.get(1)?)))
            .map_err(self.sql())?
            .collect::<rusqlite::Result<_>>()
            .map_err(self.sql())?;
        Ok(rows)
    }

    pub fn attempts(&self, id: JobId) -> Result<Vec<AttemptInfo>> {
        let conn = self.conn()?;
        let mut st = conn
            .prepare_cached(
                "SELECT n, agent, gpus, state, assigned_ns, started_ns, finished_ns, exit_code, error,
                        gpu_indices, git_commit, idle_status, idle_evidence
                 FROM attempts WHERE job_id = ?1 ORDER BY n",
            )
            .map_err(self.sql())?;
        let rows = st
            .query_map([id.0], |r| {
                Ok(AttemptInfo {
                    n: r.get::<_, i64>(0)? as u32,
                    agent: r.get(1)?,
                    gpus: serde_json::from_str(&r.get::<_, String>(2)?).unwrap_or_default(),
                    state: r.get(3)?,
                    assigned_ns: r.get(4)?,
                    started_ns: r.get(5)?,
                    finished_ns: r.get(6)?,
                    exit_code: r.get(7)?,
                    error: r.get(8)?,
                    gpu_indices: serde_json::from_str(&r.get::<_, String>(9)?).unwrap_or_default(),
                    commit: r.get(10)?,
                    idle: r
                        .get::<_, Option<String>>(11)?
                        .and_then(|s| serde_json::from_str(&s).ok()),
                    idle_evidence: r
                        .get::<_, Option<String>>(12)?
                        .and_then(|s| serde_json::from_str(&s).ok())
                        .unwrap_or_default(),
                })
            })
            .map_err(self.sql())?
            .collect::<rusqlite::Result<_>>()
            .map_err(self.sql())?;
        Ok(rows)
    }

    /// The job and attempt number a token names, whatever the attempt's
    /// state (log uploads from an attempt that just ended are still its own).
    pub fn attempt_of(&self, token: &str) -> Result<(JobId, u32)> {
        let conn = self.conn()?;
        let mut st = conn
            .prepare_cached("SELECT job_id, n FROM attempts WHERE token = ?1")
            .map_err(self.sql())?;
        let row = st
            .query_row([token], |r| {
                Ok((JobId(r.get(0)?), r.get::<_, i64>(1)? as u32))
            })
            .optional()
            .map_err(self.sql())?;
        row.ok_or(QueueError::StaleAttempt)
    }

    /// Give a queued job to `agent` with `gpus`, leased for `lease_ns`.
    pub fn assign(
        &self,
        id: JobId,
        agent: &str,
        gpus: &[String],
        lease_ns: i64,
    ) -> Result<Assignment> {
        self.assign_at(id, agent, gpus, &[], lease_ns)
    }

    /// [`Queue::assign`], recording also the GPUs' NVML indices on the
    /// agent's host (what `ps` and `show` print).
    pub fn assign_at(
        &self,
        id: JobId,
        agent: &str,
        gpus: &[String],
        indices: &[u32],
        lease_ns: i64,
    ) -> Result<Assignment> {
        let mut conn = self.conn()?;
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(self.sql())?;
        let a = self.assign_in(&tx, id, agent, gpus, indices, lease_ns)?;
        tx.commit().map_err(self.sql())?;
        Ok(a)
    }

    /// Several assignments (a scheduling pass's) in one transaction: one
    /// commit per pass, not one per job. A job that is no longer queued
    /// (cancelled since it was read) gets `None`; any other error undoes all.
    pub fn assign_many(&self, batch: &[Placed], lease_ns: i64) -> Result<Vec<Option<Assignment>>> {
        if batch.is_empty() {
            return Ok(Vec::new());
        }
        let mut conn = self.conn()?;
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(self.sql())?;
        let mut out = Vec::with_capacity(batch.len());
        for p in batch {
            match self.assign_in(&tx, p.job, &p.agent, &p.gpus, &p.indices, lease_ns) {
                Ok(a) => out.push(Some(a)),
                Err(QueueError::BadState { .. }) => out.push(None),
                Err(e) => return Err(e),
            }
        }
        tx.commit().map_err(self.sql())?;
        Ok(out)
    }

    fn assign_in(
        &self,
        tx: &rusqlite::Transaction<'_>,
        id: JobId,
        agent: &str,
        gpus: &[String],
        indices: &[u32],
        lease_ns: i64,
    ) -> Result<Assignment> {
        let (state, attempts): (String, i64) = tx
            .prepare_cached("SELECT state, attempts FROM jobs WHERE id = ?1")
            .map_err(self.sql())?
            .query_row([id.0], |r| Ok((r.get(0)?, r.get(1)?)))
            .optional()
            .map_err(self.sql())?
            .ok_or(QueueError::UnknownJob(id))?;
        let state = JobState::parse(&state);
        if state != JobState::Queued {
            return Err(QueueError::BadState {
                job: id,
                state,
                action: "assign it",
            });
        }
        let n = attempts + 1;
        let now = now_ns();
        let a = Assignment {
            job: id,
            attempt: n as u32,
            token: new_token(),
            agent: agent.to_string(),
            gpus: gpus.to_vec(),
            lease_until_ns: now + lease_ns,
        };
        tx.prepare_cached(
            "INSERT INTO attempts (job_id, n, token, agent, gpus, state, lease_until_ns, assigned_ns,
                                   gpu_indices)
             VALUES (?1, ?2, ?3, ?4, ?5, 'assigned', ?6, ?7, ?8)",
        )
        .map_err(self.sql())?
        .execute(params![
            id.0,
            n,
            a.token,
            agent,
            serde_json::to_string(gpus).expect("strings serialize"),
            a.lease_until_ns,
            now,
            serde_json::to_string(indices).expect("numbers serialize")
        ])
        .map_err(self.sql())?;
        tx.prepare_cached(
            "UPDATE jobs SET state = 'assigned', attempts = ?2, reason = NULL WHERE id = ?1",
        )
        .map_err(self.sql())?
        .execute(params![id.0, n])
        .map_err(self.sql())?;
        Ok(a)
    }

    /// The current attempt for `token`, inside a transaction: (job, n).
    fn current(
        &self,
        tx: &rusqlite::Transaction<'_>,
        token: &str,
    ) -> Result<(JobId, i64, JobState)> {
        let row: Option<(i64, i64, String, i64)> = tx
            .query_row(
                "SELECT a.job_id, a.n, j.state, j.attempts FROM attempts a JOIN jobs j ON j.id = a.job_id
                 WHERE a.token = ?1 AND a.state IN ('assigned', 'running')",
                [token],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
            )
            .optional()
            .map_err(self.sql())?;
        match row {
            Some((job, n, state, attempts)) if n == attempts => {
                Ok((JobId(job), n, JobState::parse(&state)))
            }
            _ => Err(QueueError::StaleAttempt),
        }
    }

    /// Renew an attempt's lease.
    pub fn heartbeat(&self, token: &str, lease_ns: i64) -> Result<i64> {
        let mut conn = self.conn()?;
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(self.sql())?;
        let (job, n, _) = self.current(&tx, token)?;
        let until = now_ns() + lease_ns;
        tx.execute(
            "UPDATE attempts SET lease_until_ns = ?3 WHERE job_id = ?1 AND n = ?2",
            params![job.0, n, until],
        )
        .map_err(self.sql())?;
        tx.commit().map_err(self.sql())?;
        Ok(until)
    }

    /// Renew the leases of several attempts in one transaction. Returns the
    /// tokens that are not current (the holder must stop them).
    pub fn renew(&self, tokens: &[String], lease_ns: i64) -> Result<Vec<String>> {
        if tokens.is_empty() {
            return Ok(Vec::new());
        }
        let mut conn = self.conn()?;
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(self.sql())?;
        let until = now_ns() + lease_ns;
        let mut stale = Vec::new();
        for t in tokens {
            match self.current(&tx, t) {
                Ok((job, n, _)) => {
                    tx.execute(
                        "UPDATE attempts SET lease_until_ns = ?3 WHERE job_id = ?1 AND n = ?2",
                        params![job.0, n, until],
                    )
                    .map_err(self.sql())?;
                }
                Err(QueueError::StaleAttempt) => stale.push(t.clone()),
                Err(e) => return Err(e),
            }
        }
        tx.commit().map_err(self.sql())?;
        Ok(stale)
    }

    /// The attempt's process started.
    pub fn started(&self, token: &str, commit: Option<&str>) -> Result<JobId> {
        let mut conn = self.conn()?;
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(self.sql())?;
        let (job, n, _) = self.current(&tx, token)?;
        let now = now_ns();
        tx.execute(
            "UPDATE attempts SET state = 'running', started_ns = ?3, git_commit = ?4
             WHERE job_id = ?1 AND n = ?2",
            params![job.0, n, now, commit],
        )
        .map_err(self.sql())?;
        tx.execute("UPDATE jobs SET state = 'running' WHERE id = ?1", [job.0])
            .map_err(self.sql())?;
        tx.commit().map_err(self.sql())?;
        Ok(job)
    }

    /// End an attempt (with its exit code, or an error that prevented a
    /// start). Returns the job's new state: succeeded, queued again (attempts
    /// left), or failed.
    pub fn finish(
        &self,
        token: &str,
        exit_code: Option<i32>,
        error: Option<&str>,
    ) -> Result<JobState> {
        self.finish_as(token, exit_code, error, false)
    }

    /// An attempt its agent stopped because the agent itself is stopping
    /// (`trainyard up` or an agent shutting down, a desktop taking its
    /// GPUs back from the lab): the attempt ends failed with `error`, but
    /// the job goes back to the queue and the attempt does not count
    /// against `max_attempts`, as a node drain requeues in SLURM.
    pub fn finish_requeued(&self, token: &str, error: &str) -> Result<JobState> {
        self.finish_as(token, None, Some(error), true)
    }

    fn finish_as(
        &self,
        token: &str,
        exit_code: Option<i32>,
        error: Option<&str>,
        requeue: bool,
    ) -> Result<JobState> {
        let mut conn = self.conn()?;
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(self.sql())?;
        let (job, n, _) = self.current(&tx, token)?;
        let ok = exit_code == Some(0) && error.is_none();
        let now = now_ns();
        tx.execute(
            "UPDATE attempts SET state = ?3, finished_ns = ?4, exit_code = ?5, error = ?6
             WHERE job_id = ?1 AND n = ?2",
            params![
                job.0,
                n,
                if ok {
                    AttemptState::Succeeded
                } else {
                    AttemptState::Failed
                }
                .as_str(),
                now,
                exit_code,
                error
            ],
        )
        .map_err(self.sql())?;
        let max: i64 = tx
            .query_row(
                "SELECT max_attempts FROM jobs WHERE id = ?1",
                [job.0],
                |r| r.get(0),
            )
            .map_err(self.sql())?;
        let reason = error.map(str::to_string).or_else(|| match exit_code {
            Some(0) => None,
            Some(c) => Some(format!("attempt {n} exited with code {c}")),
            None => Some(format!("attempt {n} was killed by a signal")),
        });
        if requeue && !ok {
            tx.execute(
                "UPDATE jobs SET max_attempts = max_attempts + 1 WHERE id = ?1",
                [job.0],
            )
            .map_err(self.sql())?;
        }
        let new_state = if ok {
            JobState::Succeeded
        } else if requeue || n < max {
            JobState::Queued
        } else {
            JobState::Failed
        };
        tx.execute(
            "UPDATE jobs SET state = ?2, reason = ?3, exit_code = ?4,
                 finished_ns = CASE WHEN ?2 = 'queued' THEN NULL ELSE ?5 END
             WHERE id = ?1",
            params![job.0, new_state.as_str(), reason, exit_code, now],
        )
        .map_err(self.sql())?;
        self.notify_job_end(&tx, job)?;
        tx.commit().map_err(self.sql())?;
        tracing::info!(job = job.0, attempt = n, state = %new_state, "attempt finished");
        Ok(new_state)
    }

    /// Cancel a job. Returns the token of the attempt in flight, if any, so
    /// the caller can tell its agent to kill it.
    pub fn cancel(&self, id: JobId) -> Result<Option<String>> {
        let mut conn = self.conn()?;
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(self.sql())?;
        let token = self.cancel_in(&tx, id, "cancelled by user")?;
        tx.commit().map_err(self.sql())?;
        Ok(token)
    }

    /// Cancel job `id` inside `tx` with `reason`; the token of its attempt
    /// in flight, if any.
    pub(crate) fn cancel_in(
        &self,
        tx: &rusqlite::Transaction<'_>,
        id: JobId,
        reason: &str,
    ) -> Result<Option<String>> {
        let job = self.read_job(tx, id)?;
        if job.state.is_terminal() {
            return Err(QueueError::BadState {
                job: id,
                state: job.state,
                action: "cancel it",
            });
        }
        let token: Option<String> = tx
            .query_row(
                "SELECT token FROM attempts WHERE job_id = ?1 AND n = ?2 AND state IN ('assigned', 'running')",
                [id.0, job.attempts as i64],
                |r| r.get(0),
            )
            .optional()
            .map_err(self.sql())?;
        let now = now_ns();
        tx.execute(
            "UPDATE attempts SET state = 'cancelled', finished_ns = ?2
             WHERE job_id = ?1 AND state IN ('assigned', 'running')",
            params![id.0, now],
        )
        .map_err(self.sql())?;
        tx.execute(
            "UPDATE jobs SET state = 'cancelled', reason = ?3, finished_ns = ?2 WHERE id = ?1",
            params![id.0, now, reason],
        )
        .map_err(self.sql())?;
        self.notify_job_end(tx, id)?;
        Ok(token)
    }

    /// Cancel the queued jobs whose start window closed before `now` (ns)
    /// without their getting GPUs, each with a reason saying so. Returns
    /// them.
    pub fn expire_windows(&self, now: i64) -> Result<Vec<JobId>> {
        let mut conn = self.conn()?;
        // The common case, nothing to expire, takes no write lock.
        let any: bool = conn
            .prepare_cached(
                "SELECT EXISTS (SELECT 1 FROM jobs
                 WHERE not_after_ns IS NOT NULL AND not_after_ns <= ?1 AND state = 'queued')",
            )
            .map_err(self.sql())?
            .query_row([now], |r| r.get(0))
            .map_err(self.sql())?;
        if !any {
            return Ok(Vec::new());
        }
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(self.sql())?;
        let due: Vec<(i64, i64)> = {
            let mut st = tx
                .prepare(
                    "SELECT id, not_after_ns FROM jobs
                     WHERE not_after_ns IS NOT NULL AND not_after_ns <= ?1 AND state = 'queued'",
                )
                .map_err(self.sql())?;
            let rows = st
                .query_map([now], |r| Ok((r.get(0)?, r.get(1)?)))
                .map_err(self.sql())?
                .collect::<rusqlite::Result<_>>()
                .map_err(self.sql())?;
            rows
        };
        for (id, until) in &due {
            let closed = jiff::Timestamp::from_nanosecond(i128::from(*until))
                .map(|t| t.to_string())
                .unwrap_or_else(|_| until.to_string());
            tx.execute(
                "UPDATE jobs SET state = 'cancelled', finished_ns = ?2,
                     reason = 'its start window closed at ' || ?3 || ' before it could get GPUs'
                 WHERE id = ?1 AND state = 'queued'",
                params![id, now, closed],
            )
            .map_err(self.sql())?;
        }
        tx.commit().map_err(self.sql())?;
        Ok(due.into_iter().map(|(id, _)| JobId(id)).collect())
    }

    /// Put a failed, lost, cancelled or idle-stopped job back in the queue
    /// with one more attempt.
    pub fn retry(&self, id: JobId) -> Result<()> {
        let conn = self.conn()?;
        let job = self.read_job(&conn, id)?;
        if !matches!(
            job.state,
            JobState::Failed | JobState::Lost | JobState::Cancelled | JobState::IdleStopped
        ) {
            return Err(QueueError::BadState {
                job: id,
                state: job.state,
                action: "retry it",
            });
        }
        conn.execute(
            "UPDATE jobs SET state = 'queued', reason = 'retried', finished_ns = NULL,
                 max_attempts = max(max_attempts, attempts + 1),
                 not_before_ns = NULL, not_after_ns = NULL WHERE id = ?1",
            [id.0],
        )
        .map_err(self.sql())?;
        Ok(())
    }

    /// Mark attempts whose lease ended before `now_ns` as lost; their jobs go
    /// back to the queue if attempts are left, else become lost. Returns the
    /// affected jobs.
    pub fn expire_leases(&self, now_ns: i64) -> Result<Vec<(JobId, JobState)>> {
        let mut conn = self.conn()?;
        // The common case, nothing expired, takes no write lock.
        let any: bool = conn
            .prepare_cached(
                "SELECT EXISTS (SELECT 1 FROM attempts
                 WHERE state IN ('assigned', 'running') AND lease_until_ns < ?1)",
            )
            .map_err(self.sql())?
            .query_row([now_ns], |r| r.get(0))
            .map_err(self.sql())?;
        if !any {
            return Ok(Vec::new());
        }
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(self.sql())?;
        let expired: Vec<(i64, i64, i64, String)> = {
            let mut st = tx
                .prepare(
                    "SELECT a.job_id, a.n, j.max_attempts, a.agent FROM attempts a JOIN jobs j ON j.id = a.job_id
                     WHERE a.state IN ('assigned', 'running') AND a.lease_until_ns < ?1",
                )
                .map_err(self.sql())?;
            let rows = st
                .query_map([now_ns], |r| {
                    Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?))
                })
                .map_err(self.sql())?
                .collect::<rusqlite::Result<_>>()
                .map_err(self.sql())?;
            rows
        };
        let mut out = Vec::new();
        for (job, n, max, agent) in expired {
            tx.execute(
                "UPDATE attempts SET state = 'lost', finished_ns = ?3, error = 'lease expired'
                 WHERE job_id = ?1 AND n = ?2",
                params![job, n, now_ns],
            )
            .map_err(self.sql())?;
            let state = if n < max {
                JobState::Queued
            } else {
                JobState::Lost
            };
            tx.execute(
                "UPDATE jobs SET state = ?2, reason = ?3,
                     finished_ns = CASE WHEN ?2 = 'lost' THEN ?4 ELSE NULL END
                 WHERE id = ?1",
                params![
                    job,
                    state.as_str(),
                    format!("attempt {n} lost: agent {agent} stopped renewing its lease"),
                    now_ns
                ],
            )
            .map_err(self.sql())?;
            self.notify_job_end(&tx, JobId(job))?;
            out.push((JobId(job), state));
        }
        tx.commit().map_err(self.sql())?;
        Ok(out)
    }
}

fn check_batch(count: u64) -> Result<()> {
    if count > MAX_BATCH {
        return Err(QueueError::TooManyJobs {
            count,
            limit: MAX_BATCH,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests;
