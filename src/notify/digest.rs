//! Digests: one summary message per sink and period ("3 jobs done,
//! 2.1 GPU-h, 1 stopped for idling") instead of, or besides, individual
//! events. Pure: periods in the lab's zone ([`period_of`], [`Period`]),
//! the counts of the jobs a sink's rule covers ([`Counts`]), and which
//! periods a sink is owed at an instant ([`owed`]). The daemon's digest
//! pass (`server::digest`) reads the jobs and GPU-hours and records each
//! digest through [`super::Outbox::record_digest`], which advances the
//! sink's mark in the same transaction: a period is digested once, and
//! one that ended while the daemon was down is digested when it is back.
//!
//! Time is always an argument (ns since the epoch): tests pass any clock.

use jiff::civil::Date;
use jiff::tz::TimeZone;
use jiff::Timestamp;
use serde::{Deserialize, Serialize};

use crate::queue::JobState;

/// How often a digest sink gets its summary.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Every {
    /// Each calendar day of the lab's zone, sent after midnight.
    Daily,
    /// Each ISO week (Monday to Sunday) of the lab's zone, sent after
    /// Monday's midnight.
    Weekly,
}

impl Every {
    /// Both.
    pub const ALL: [Every; 2] = [Every::Daily, Every::Weekly];
    /// The name (`daily`).
    pub fn as_str(self) -> &'static str {
        match self {
            Every::Daily => "daily",
            Every::Weekly => "weekly",
        }
    }
    /// Parse a name.
    pub fn from_name(s: &str) -> Option<Every> {
        Every::ALL.into_iter().find(|e| e.as_str() == s.trim())
    }
}

impl std::fmt::Display for Every {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One period of a digest: `[start_ns, end_ns)` and its label
/// (`2026-12-06`, or `2026-W49` for a week).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Period {
    /// Daily or weekly.
    pub every: Every,
    /// First instant (ns since the epoch).
    pub start_ns: i64,
    /// First instant after it.
    pub end_ns: i64,
    /// `2026-12-06` or `2026-W49`.
    pub label: String,
}

fn first_instant(d: Date, tz: &TimeZone) -> Option<i64> {
    // Midnight, or the first instant after a DST gap that swallows it.
    let ns = d.to_zoned(tz.clone()).ok()?.timestamp().as_nanosecond();
    i64::try_from(ns).ok()
}

/// The period of kind `every` holding instant `t_ns`, in `tz`.
pub fn period_of(every: Every, t_ns: i64, tz: &TimeZone) -> Option<Period> {
    let date = Timestamp::from_nanosecond(i128::from(t_ns))
        .ok()?
        .to_zoned(tz.clone())
        .date();
    let (first, next, label) = match every {
        Every::Daily => (date, date.tomorrow().ok()?, date.to_string()),
        Every::Weekly => {
            let back = i64::from(date.weekday().to_monday_zero_offset());
            let monday = date.checked_sub(jiff::Span::new().days(back)).ok()?;
            let week = monday.iso_week_date();
            (
                monday,
                monday.checked_add(jiff::Span::new().days(7)).ok()?,
                format!("{:04}-W{:02}", week.year(), week.week()),
            )
        }
    };
    Some(Period {
        every,
        start_ns: first_instant(first, tz)?,
        end_ns: first_instant(next, tz)?,
        label,
    })
}

/// At most this many past periods are digested when a daemon comes back
/// after a long stop (a month of days, half a year of weeks); older ones
/// are skipped with a warning.
pub const MAX_CATCH_UP: usize = 31;

/// What a sink is owed at `now_ns`, given its mark (the end of the last
/// period digested, or where digests started): every period that starts
/// at or after `through_ns` and has ended, oldest first, at most
/// [`MAX_CATCH_UP`] (the latest ones). The second value is how many
/// older periods were skipped.
pub fn owed(every: Every, through_ns: i64, now_ns: i64, tz: &TimeZone) -> (Vec<Period>, usize) {
    let mut out = Vec::new();
    let mut t = through_ns;
    while let Some(p) = period_of(every, t, tz) {
        if p.end_ns > now_ns || p.end_ns <= t {
            break;
        }
        // A mark inside a period (a sink's first period starts at its
        // start) still owes that whole period.
        t = p.end_ns;
        out.push(p);
    }
    let skipped = out.len().saturating_sub(MAX_CATCH_UP);
    out.drain(..skipped);
    (out, skipped)
}

/// A job that ended: what a digest counts and a rule filters on.
#[derive(Debug, Clone, PartialEq)]
pub struct JobEnd {
    /// Its final state.
    pub state: JobState,
    /// Its submitter.
    pub user: String,
    /// Its project.
    pub project: String,
    /// Its tags.
    pub tags: Vec<String>,
}

/// The numbers of one digest.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Counts {
    /// Jobs that succeeded.
    pub succeeded: u64,
    /// Jobs that failed.
    pub failed: u64,
    /// Jobs cancelled.
    pub cancelled: u64,
    /// Jobs lost with their agent.
    pub lost: u64,
    /// Jobs stopped for idling.
    pub idle_stopped: u64,
    /// Allocated GPU-hours in the period (the usage report's, without
    /// the ignore tag's jobs and runs).
    pub gpu_hours: f64,
    /// Used GPU-hours (utilization integrated).
    pub used_gpu_hours: f64,
    /// Allocated while idle.
    pub idle_gpu_hours: f64,
}

impl Counts {
    /// Count the jobs of `ends` that a sink's rule covers (`covers`: its
    /// users, projects and tags; its event kinds choose individual events,
    /// not what a digest counts).
    pub fn of_jobs(covers: impl Fn(&JobEnd) -> bool, ends: &[JobEnd]) -> Counts {
        let mut c = Counts::default();
        for e in ends.iter().filter(|e| covers(e)) {
            match e.state {
                JobState::Succeeded => c.succeeded += 1,
                JobState::Failed => c.failed += 1,
                JobState::Cancelled => c.cancelled += 1,
                JobState::Lost => c.lost += 1,
                JobState::IdleStopped => c.idle_stopped += 1,
                JobState::Queued | JobState::Assigned | JobState::Running => {}
            }
        }
        c
    }

    /// Jobs that ended, in every final state.
    pub fn ended(&self) -> u64 {
        self.succeeded + self.failed + self.cancelled + self.lost + self.idle_stopped
    }

    /// "3 jobs done, 2.1 GPU-h, 1 stopped for idling".
    pub fn headline(&self) -> String {
        let plural =
            |n: u64, one: &str, many: &str| format!("{n} {}", if n == 1 { one } else { many });
        let mut parts = vec![
            format!("{} done", plural(self.succeeded, "job", "jobs")),
            format!("{} failed", self.failed + self.lost),
        ];
        if self.cancelled > 0 {
            parts.push(format!("{} cancelled", self.cancelled));
        }
        parts.push(format!("{:.1} GPU-h", self.gpu_hours));
        if self.idle_stopped > 0 {
            parts.push(format!("{} stopped for idling", self.idle_stopped));
        }
        parts.join(", ")
    }
}

/// A digest as an event carries it: the period and its numbers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Digest {
    /// The period.
    pub period: Period,
    /// The numbers.
    #[serde(flatten)]
    pub counts: Counts,
}

#[cfg(test)]
mod tests {
    use super::*;

    const H: i64 = 3_600_000_000_000;

    fn ns(s: &str, tz: &TimeZone) -> i64 {
        let dt: jiff::civil::DateTime = s.parse().unwrap();
        dt.to_zoned(tz.clone()).unwrap().timestamp().as_nanosecond() as i64
    }

    #[test]
    fn days_and_weeks_are_the_zones() {
        let tz = TimeZone::get("Europe/Berlin").unwrap();
        let p = period_of(Every::Daily, ns("2026-12-06T23:30", &tz), &tz).unwrap();
        assert_eq!(p.label, "2026-12-06");
        assert_eq!(p.start_ns, ns("2026-12-06T00:00", &tz));
        assert_eq!(p.end_ns - p.start_ns, 24 * H);
        // The day clocks go forward has 23 hours.
        let dst = period_of(Every::Daily, ns("2026-03-29T12:00", &tz), &tz).unwrap();
        assert_eq!(dst.end_ns - dst.start_ns, 23 * H);
        // 2026-12-06 is a Sunday: its week began Monday the 30th of November.
        let w = period_of(Every::Weekly, ns("2026-12-06T23:30", &tz), &tz).unwrap();
        assert_eq!(w.start_ns, ns("2026-11-30T00:00", &tz));
        assert_eq!(w.end_ns, ns("2026-12-07T00:00", &tz));
        assert_eq!(w.label, "2026-W49");
        let w2 = period_of(Every::Weekly, ns("2026-12-07T00:00", &tz), &tz).unwrap();
        assert_eq!((w2.start_ns, w2.label.as_str()), (w.end_ns, "2026-W50"));
    }

    #[test]
    fn owed_periods_are_the_ended_ones_after_the_mark_capped() {
        let tz = TimeZone::UTC;
        let mark = ns("2026-12-01T00:00", &tz);
        let (none, _) = owed(Every::Daily, mark, ns("2026-12-01T23:59", &tz), &tz);
        assert!(none.is_empty(), "the day has not ended");
        let (one, _) = owed(Every::Daily, mark, ns("2026-12-02T00:00", &tz), &tz);
        assert_eq!(one.len(), 1);
        assert_eq!(one[0].label, "2026-12-01");
        // A mark inside a day (a sink added at noon) owes that day.
        let (noon, _) = owed(
            Every::Daily,
            ns("2026-12-01T12:00", &tz),
            ns("2026-12-03T01:00", &tz),
            &tz,
        );
        let labels: Vec<&str> = noon.iter().map(|p| p.label.as_str()).collect();
        assert_eq!(labels, ["2026-12-01", "2026-12-02"]);
        // Down for 40 days: the latest 31 only.
        let (many, skipped) = owed(Every::Daily, mark, ns("2027-01-10T08:00", &tz), &tz);
        assert_eq!((many.len(), skipped), (MAX_CATCH_UP, 9));
        assert_eq!(many.last().unwrap().label, "2027-01-09");
    }

    #[test]
    fn counts_follow_the_rules_users_projects_and_tags() {
        let end = |state, user: &str, project: &str, tags: &[&str]| JobEnd {
            state,
            user: user.into(),
            project: project.into(),
            tags: tags.iter().map(|t| t.to_string()).collect(),
        };
        let ends = [
            end(JobState::Succeeded, "ana", "detr", &[]),
            end(JobState::Succeeded, "ana", "detr", &["big"]),
            end(JobState::Failed, "bo", "detr", &[]),
            end(JobState::IdleStopped, "ana", "llm", &[]),
            end(JobState::Cancelled, "ana", "llm", &["big"]),
        ];
        let all = Counts::of_jobs(|_| true, &ends);
        assert_eq!(
            (all.succeeded, all.failed, all.idle_stopped, all.cancelled),
            (2, 1, 1, 1)
        );
        assert_eq!(all.ended(), 5);
        assert_eq!(Counts::of_jobs(|e| e.user == "ana", &ends).ended(), 4);
        let b = Counts::of_jobs(|e| e.tags.iter().any(|t| t == "big"), &ends);
        assert_eq!((b.succeeded, b.cancelled, b.ended()), (1, 1, 2));
        let c = Counts {
            succeeded: 3,
            gpu_hours: 2.08,
            idle_stopped: 1,
            ..Counts::default()
        };
        assert_eq!(
            c.headline(),
            "3 jobs done, 0 failed, 2.1 GPU-h, 1 stopped for idling"
        );
    }
}
