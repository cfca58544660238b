//! Schedules: jobs submitted on a cron pattern in an IANA zone, or when a
//! new version (or a matching tag) of a dataset appears.
//!
//! A schedule lives in `queue.db` beside the jobs it submits
//! (`docs/schedule-format.md`). Each occurrence has an idempotency key —
//! (schedule, occurrence time) for cron, (schedule, version) for data — and
//! is recorded in the same transaction as the jobs it submitted and the
//! schedule's advanced watermark, so a crash or restart never fires an
//! occurrence twice and never loses one silently: occurrences that came due
//! while the daemon was down are fired or recorded as missed per the
//! catch-up policy. Every call takes `now` as an argument (the daemon
//! passes the system clock; tests pass whatever they need), so nothing
//! here sleeps or reads the clock. The module owns the schedule rules;
//! the server only calls [`Schedules::evaluate`] when one is due and
//! translates requests.

mod book;
pub mod plan;
pub mod rule;

#[cfg(test)]
mod tests;

pub use book::{Effects, Schedules, DATA_POLL};
pub use rule::{CronRule, Window};

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::queue::{JobId, JobSpec, JobState, QueueError, SpecError, SweepGrid};

/// What to do when an occurrence comes while the schedule's previous run
/// is still queued or running.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Overlap {
    /// Submit nothing; record the occurrence as skipped.
    #[default]
    Skip,
    /// Submit it; it starts only after the previous run has ended.
    Queue,
    /// Cancel the previous run, then submit.
    Replace,
}

/// What to do with cron occurrences that came due while the daemon was
/// down (more than [`plan::GRACE`] late).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CatchUp {
    /// Run none of them; record them as missed.
    #[default]
    Skip,
    /// Run the most recent one once (like systemd's `Persistent=true`).
    Once,
    /// Run every one, at most [`plan::CATCH_UP_CAP`] (the most recent).
    All,
}

macro_rules! names {
    ($t:ty { $($v:ident => $s:literal),* }) => {
        impl $t {
            /// The policy's name.
            pub fn as_str(self) -> &'static str {
                match self { $(<$t>::$v => $s),* }
            }
            /// Parse a name; `None` if unknown.
            pub fn from_name(s: &str) -> Option<$t> {
                match s { $($s => Some(<$t>::$v),)* _ => None }
            }
        }
        impl fmt::Display for $t {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}
names!(Overlap { Skip => "skip", Queue => "queue", Replace => "replace" });
names!(CatchUp { Skip => "skip", Once => "once", All => "all" });

/// What became of an occurrence.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// Its jobs were submitted.
    Fired,
    /// Nothing was submitted: the previous run was still going (overlap
    /// `skip`), or a newer version superseded it.
    Skipped,
    /// It came due while the daemon was down and the catch-up policy did
    /// not run it.
    Missed,
    /// Its jobs could not be submitted (the detail says why).
    Failed,
}

names!(Outcome { Fired => "fired", Skipped => "skipped", Missed => "missed", Failed => "failed" });

/// A schedule as `POST /schedules` and `trainyard schedule add` give it.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewSchedule {
    /// Its name: 1–48 letters, digits, `.`, `_` or `-`.
    pub name: String,
    /// A cron pattern (5 fields, or `@daily`…).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cron: Option<String>,
    /// The IANA zone of the pattern and the window [default: the lab's
    /// `[usage] timezone`, else the daemon's system zone].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tz: Option<String>,
    /// The overlap policy.
    #[serde(default)]
    pub overlap: Overlap,
    /// The catch-up policy (cron schedules).
    #[serde(default)]
    pub catch_up: CatchUp,
    /// A daily window `HH:MM-HH:MM` the fired jobs may start in.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub window: Option<String>,
    /// Fire when a new version of this dataset appears.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on_dataset: Option<String>,
    /// With `on_dataset`: fire when a tag matching this glob (`v*`)
    /// appears or moves, rather than on every new version.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tag_pattern: Option<String>,
    /// The job each occurrence submits (the template of a sweep).
    pub job: JobSpec,
    /// A sweep grid: each occurrence submits one job per combination.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sweep: Option<SweepGrid>,
}

/// A schedule as listed: its settings, next fire time and last outcome.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ScheduleInfo {
    /// Its name.
    pub name: String,
    /// The cron pattern (cron schedules).
    pub cron: Option<String>,
    /// The zone of the pattern and window.
    pub tz: String,
    /// The watched dataset (data schedules).
    pub on_dataset: Option<String>,
    /// The tag glob of a data schedule.
    pub tag_pattern: Option<String>,
    /// The overlap policy.
    pub overlap: Overlap,
    /// The catch-up policy.
    pub catch_up: CatchUp,
    /// The start window, `HH:MM-HH:MM`.
    pub window: Option<String>,
    /// Whether it is paused.
    pub paused: bool,
    /// Who added it (its jobs' user).
    pub user: String,
    /// When it was added (ns).
    pub created_ns: i64,
    /// Every occurrence up to here has been evaluated (ns).
    pub watermark_ns: i64,
    /// The next cron fire time (ns); none when paused or data-triggered.
    pub next_fire_ns: Option<i64>,
    /// The same in the schedule's zone (RFC 3339 with offset).
    pub next_fire: Option<String>,
    /// The latest occurrence.
    pub last: Option<Occurrence>,
    /// How many occurrences were missed in all.
    pub missed: u64,
    /// The job template (secret values shown as `<secret>`).
    pub job: JobSpec,
    /// The sweep grid, if any.
    pub sweep: Option<SweepGrid>,
}

/// One occurrence of a schedule.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Occurrence {
    /// Its idempotency key within the schedule: `cron <UTC time>`,
    /// `version <id>`, `tag <name> <id>`, `manual <UTC time>`.
    pub key: String,
    /// The occurrence's time (ns): the cron time, or when the version or
    /// tag was made, or when it was run by hand.
    pub at_ns: i64,
    /// The same in the schedule's zone.
    pub at: String,
    /// What became of it.
    pub outcome: Outcome,
    /// The jobs it submitted.
    pub jobs: Vec<JobId>,
    /// Where those jobs are now (the least advanced of them); none when
    /// retention forgot them or none were submitted.
    pub state: Option<JobState>,
    /// Why it was skipped, missed or failed; the triggering version.
    pub detail: Option<String>,
    /// When it was recorded (ns).
    pub recorded_ns: i64,
}

/// A fire time, as ns and in the schedule's zone.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FireTime {
    /// Nanoseconds since the epoch.
    pub at_ns: i64,
    /// RFC 3339 with the zone's offset.
    pub at: String,
}

/// `schedule show`: the schedule, its next fire times, its last runs and
/// its missed occurrences.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ScheduleDetail {
    /// The schedule.
    pub schedule: ScheduleInfo,
    /// The next 5 fire times (cron schedules that are not paused).
    pub next: Vec<FireTime>,
    /// The latest occurrences that fired, were skipped or failed, newest first.
    pub runs: Vec<Occurrence>,
    /// The latest missed occurrences, newest first.
    pub missed: Vec<Occurrence>,
}

/// What `schedule run` did.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RunAnswer {
    /// The schedule.
    pub name: String,
    /// The occurrence it made.
    pub occurrence: Occurrence,
}

/// Schedule errors; each names the field or schedule at fault.
#[derive(Debug, thiserror::Error)]
pub enum ScheduleError {
    /// The queue database failed.
    #[error(transparent)]
    Queue(#[from] QueueError),
    /// The job template was refused.
    #[error(transparent)]
    Spec(#[from] SpecError),
    /// A setting is not acceptable.
    #[error("invalid schedule: {field}: {reason}")]
    Invalid {
        /// The field (`cron`, `tz`, `window`, `on_dataset`, …).
        field: String,
        /// What is wrong and what is expected.
        reason: String,
    },
    /// No schedule has this name.
    #[error("no schedule {0:?} (trainyard schedule ls lists them)")]
    Unknown(String),
    /// The name is taken.
    #[error("a schedule named {0:?} exists already; remove it first (trainyard schedule rm {0}) or pick another name")]
    Exists(String),
    /// `schedule run` of a data schedule whose dataset has nothing to run on.
    #[error("schedule {name:?}: nothing to run: {reason}")]
    NothingToRun {
        /// The schedule.
        name: String,
        /// Why.
        reason: String,
    },
    /// The dataset store could not be read.
    #[error("dataset store: {0}")]
    Store(#[from] crate::store::Error),
}

impl ScheduleError {
    pub(crate) fn invalid(field: &str, reason: impl Into<String>) -> ScheduleError {
        ScheduleError::Invalid {
            field: field.to_string(),
            reason: reason.into(),
        }
    }
}

/// The longest schedule name: its jobs carry the tag `schedule:NAME`,
/// which must stay within a tag's 64 characters.
pub const MAX_NAME: usize = 48;

/// Check a schedule name: 1–48 of `[A-Za-z0-9._-]`, not starting with `.`
/// or `-`.
pub fn check_name(name: &str) -> Result<(), ScheduleError> {
    let ok = !name.is_empty()
        && name.len() <= MAX_NAME
        && !name.starts_with(['.', '-'])
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(ScheduleError::invalid(
            "name",
            format!(
                "{name:?}: use 1-{MAX_NAME} letters, digits, '.', '_' or '-', not starting with \
                 '.' or '-'"
            ),
        ))
    }
}

/// The tag every job of schedule `name` carries (`ps --tag schedule:NAME`).
pub fn job_tag(name: &str) -> String {
    format!("schedule:{name}")
}
