//! What can be notified: [`EventKind`] (the names rules and `--events`
//! use) and [`Event`], the facts one notification carries. Data only: the
//! queue writes job events into the outbox with them, the sender formats
//! them per sink.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::queue::{JobId, JobState};

/// The kinds of event a rule can ask for. The names are the wire and
/// config names (`job_failed`, `idle_stopped`, …).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    /// A job exited 0.
    JobSucceeded,
    /// A job failed with no attempts left.
    JobFailed,
    /// A job was cancelled.
    JobCancelled,
    /// A job's agent stopped renewing its lease, with no attempts left.
    JobLost,
    /// A job's GPUs are idle and it will be stopped or requeued soon
    /// (emitted by the idle policy).
    IdleWarned,
    /// A job was stopped (or requeued) for holding idle GPUs (emitted by
    /// the idle policy).
    IdleStopped,
    /// A schedule submitted its job (emitted by schedules).
    ScheduleFired,
    /// A schedule's time passed without a submission (emitted by schedules).
    ScheduleMissed,
    /// Syncing a run to a W&B server failed.
    WandbSyncFailed,
    /// An agent stopped reporting for a lease.
    AgentLost,
    /// The store's or the logs' file system is nearly full.
    DiskLow,
    /// A test message (`trainyard notify test NAME`); goes only to the
    /// sink it was sent to.
    Test,
    /// A sink's summary of one period (`--digest daily|weekly`); goes
    /// only to that sink.
    Digest,
}

impl EventKind {
    /// Every kind a rule may name (all but [`EventKind::Test`]).
    pub const ALL: [EventKind; 11] = [
        EventKind::JobSucceeded,
        EventKind::JobFailed,
        EventKind::JobCancelled,
        EventKind::JobLost,
        EventKind::IdleWarned,
        EventKind::IdleStopped,
        EventKind::ScheduleFired,
        EventKind::ScheduleMissed,
        EventKind::WandbSyncFailed,
        EventKind::AgentLost,
        EventKind::DiskLow,
    ];

    /// The name (`job_failed`).
    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::JobSucceeded => "job_succeeded",
            EventKind::JobFailed => "job_failed",
            EventKind::JobCancelled => "job_cancelled",
            EventKind::JobLost => "job_lost",
            EventKind::IdleWarned => "idle_warned",
            EventKind::IdleStopped => "idle_stopped",
            EventKind::ScheduleFired => "schedule_fired",
            EventKind::ScheduleMissed => "schedule_missed",
            EventKind::WandbSyncFailed => "wandb_sync_failed",
            EventKind::AgentLost => "agent_lost",
            EventKind::DiskLow => "disk_low",
            EventKind::Test => "test",
            EventKind::Digest => "digest",
        }
    }

    /// Parse a name a rule may use; `test` and unknown names are `None`.
    pub fn from_name(s: &str) -> Option<EventKind> {
        EventKind::ALL.into_iter().find(|k| k.as_str() == s)
    }

    /// Parse a stored name (any kind, `test` included).
    pub(crate) fn stored(s: &str) -> Option<EventKind> {
        match s {
            "test" => return Some(EventKind::Test),
            "digest" => return Some(EventKind::Digest),
            _ => {}
        }
        EventKind::from_name(s)
    }

    /// The event a job's final state causes, if any.
    pub fn of_job_end(state: JobState) -> Option<EventKind> {
        match state {
            JobState::Succeeded => Some(EventKind::JobSucceeded),
            JobState::Failed => Some(EventKind::JobFailed),
            JobState::Cancelled => Some(EventKind::JobCancelled),
            JobState::Lost => Some(EventKind::JobLost),
            JobState::IdleStopped => Some(EventKind::IdleStopped),
            JobState::Queued | JobState::Assigned | JobState::Running => None,
        }
    }

    /// Whether it is bad news (sinks that have a priority or a colour use it).
    pub fn is_alarm(self) -> bool {
        !matches!(
            self,
            EventKind::JobSucceeded
                | EventKind::ScheduleFired
                | EventKind::Test
                | EventKind::Digest
        )
    }

    /// Every rule-usable name, comma-separated, for error messages.
    pub fn names() -> String {
        EventKind::ALL.map(EventKind::as_str).join(", ")
    }
}

impl fmt::Display for EventKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The facts of one notification: what happened, to which job, run, agent
/// or disk, and whose it is (what rules filter on). Stored as JSON in the
/// outbox; no secret ever goes in (a job's `secret_env` values never do,
/// nor its environment).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Event {
    /// The job, for job and idle events.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub job: Option<JobId>,
    /// The job's name, or its command line.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Who submitted it (the rule's `users`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// Its project (the rule's `projects`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub project: Option<String>,
    /// Its tags (the rule's `tags`).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub tags: Vec<String>,
    /// The job's state after the change.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub state: Option<JobState>,
    /// The last attempt's exit code.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i32>,
    /// The attempt number.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub attempt: Option<u32>,
    /// The agent (host) it ran on, or the agent that was lost.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub agent: Option<String>,
    /// GPUs it held.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gpus: Option<u32>,
    /// GPU-hours of the attempt (GPUs × run time).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gpu_hours: Option<f64>,
    /// Run time of the attempt, in seconds.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub runtime_s: Option<u64>,
    /// A wandb run id (sync events).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub run: Option<String>,
    /// Why, for humans: the job's reason, the sync error, the disk and how
    /// full it is.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    /// A digest's period and numbers (digest events only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub digest: Option<super::digest::Digest>,
}
