//! GPU usage accounting: what each GPU was allocated to, how much of that
//! time it was used, and how much of it it sat idle while held.
//!
//! The inputs are facts, not estimates: a [`Holding`] is one GPU held by one
//! attempt from the scheduler's assignment to its release (or claimed by one
//! wandb run), and a GPU's [`Sample`]s are what its agent measured. From
//! them [`account`] computes, for each calendar day of the lab's time zone:
//!
//! - **allocated** GPU-time: the holding's span, exact to the millisecond;
//! - **used** GPU-time: utilization integrated over time (a sample's value
//!   holds until the next sample, for at most [`Policy::max_gap_ms`]; time no
//!   sample covers counts as allocated only);
//! - **idle-allocated** GPU-time: allocated time whose utilization was under
//!   [`Policy::idle_below_pct`];
//! - energy: from the driver's energy counter where both ends of an interval
//!   have it, else power integrated over time; and the peak memory used.
//!
//! [`report`] folds accounted holdings into rows by the chosen dimensions
//! and period. Everything here is pure: the daemon feeds it from the queue
//! and telemetry databases, tests feed it scripted truths.

pub mod reconcile;
mod when;

use std::cell::RefCell;
use std::collections::BTreeMap;

use rustc_hash::{FxHashMap, FxHashSet};

use jiff::civil::Date;
use jiff::tz::TimeZone;
use jiff::Timestamp;
use serde::{Deserialize, Serialize};

pub use self::reconcile::{links_of, reconcile, Conflict, Link, LinkOf, Reconciled, LINK_SLACK_MS};
pub use self::when::{parse_range, parse_since, parse_until, parse_zone};

/// Why a usage question cannot be answered as asked.
#[derive(Debug, thiserror::Error)]
pub enum UsageError {
    /// A date or time that does not parse.
    #[error("{field}: cannot read {value:?} as a date ({reason}); use YYYY-MM-DD, YYYY-MM, YYYY-MM-DDTHH:MM[:SS], an RFC 3339 time, `today`, `now`, or an age such as 7d or 12h")]
    BadDate {
        /// The flag or parameter (`--since`, `until`).
        field: String,
        /// What was given.
        value: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The range is empty the wrong way round.
    #[error("{} ({since}) is after {} ({until})", names[0], names[1])]
    SinceAfterUntil {
        /// What the two ends are called where they were given.
        names: [String; 2],
        /// The start, as given.
        since: String,
        /// The end, as given.
        until: String,
    },
    /// An IANA time zone name the system's zone database does not have.
    #[error("unknown time zone {zone:?} ({reason}); use an IANA name such as Europe/Berlin or Asia/Seoul")]
    UnknownZone {
        /// The name given.
        zone: String,
        /// The zone database's answer.
        reason: String,
    },
    /// A `--by` value that is not a dimension.
    #[error("unknown dimension {0:?} for --by; choose from project, user, team, host, model, tag")]
    UnknownDim(String),
    /// A date computation left the representable range.
    #[error("date arithmetic out of range: {0}")]
    Range(String),
}

/// How samples turn into used and idle time.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Policy {
    /// A GPU under this utilization (percent) is idle.
    pub idle_below_pct: f64,
    /// The longest a sample speaks for, in ms: past it, time is unknown
    /// (an agent that stopped reporting is not a GPU at 0 %).
    pub max_gap_ms: i64,
}

impl Default for Policy {
    fn default() -> Policy {
        Policy {
            idle_below_pct: 5.0,
            max_gap_ms: 10_000,
        }
    }
}

/// What held a GPU.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum Holder {
    /// An attempt of a Trainyard job.
    Job {
        /// The job.
        job: u64,
        /// The attempt number.
        attempt: u32,
    },
    /// A wandb run that did not come through the queue.
    Run {
        /// The run's id.
        run: String,
    },
}

/// One GPU held by one holder for a time: the unit of accounting.
#[derive(Debug, Clone, PartialEq)]
pub struct Holding {
    /// What held it.
    pub holder: Holder,
    /// The host the GPU is on.
    pub host: String,
    /// The GPU's UUID.
    pub gpu: String,
    /// The GPU's model name.
    pub model: String,
    /// Who submitted the job (or ran the run).
    pub user: String,
    /// The job's or run's project (empty when none).
    pub project: String,
    /// Its tags.
    pub tags: Vec<String>,
    /// From (ms since the epoch)...
    pub start_ms: i64,
    /// ...to (exclusive).
    pub end_ms: i64,
}

/// One measurement of one GPU.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Sample {
    /// When, ms since the epoch.
    pub t_ms: i64,
    /// Utilization, percent.
    pub util_pct: f64,
    /// Power draw, W, when the driver says.
    pub power_w: Option<f64>,
    /// The energy counter, mJ since the driver loaded, when supported.
    pub energy_mj: Option<u64>,
    /// Memory used, MiB.
    pub mem_used_mib: u64,
}

/// Accounted GPU time, in milliseconds and millijoules.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Usage {
    /// Allocated GPU-ms.
    pub allocated_ms: i64,
    /// Used GPU-ms (utilization-weighted).
    pub used_ms: f64,
    /// Idle-allocated GPU-ms.
    pub idle_ms: i64,
    /// Energy, mJ.
    pub energy_mj: f64,
    /// Peak memory used on one GPU, MiB.
    pub peak_mem_mib: u64,
}

impl Usage {
    /// Add another amount (peak memory: the larger).
    pub fn add(&mut self, o: &Usage) {
        self.allocated_ms += o.allocated_ms;
        self.used_ms += o.used_ms;
        self.idle_ms += o.idle_ms;
        self.energy_mj += o.energy_mj;
        self.peak_mem_mib = self.peak_mem_mib.max(o.peak_mem_mib);
    }

    /// Allocated GPU-hours.
    pub fn allocated_h(&self) -> f64 {
        self.allocated_ms as f64 / 3.6e6
    }
    /// Used GPU-hours.
    pub fn used_h(&self) -> f64 {
        self.used_ms / 3.6e6
    }
    /// Idle-allocated GPU-hours.
    pub fn idle_h(&self) -> f64 {
        self.idle_ms as f64 / 3.6e6
    }
    /// Energy, kWh.
    pub fn energy_kwh(&self) -> f64 {
        self.energy_mj / 3.6e9
    }
}

/// One holding's usage per calendar day, in date order: what [`account`]
/// and [`account_measured`] return. A holding touches a day or two, so a
/// small vector searched from its end beats a map (a year's report makes a
/// hundred thousand of these).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ByDay(Vec<(Date, Usage)>);

impl ByDay {
    /// The day's usage, added in date order (a day before the last is
    /// found by a search from the end).
    pub fn entry(&mut self, d: Date) -> &mut Usage {
        let i = match self.0.iter().rposition(|(x, _)| *x <= d) {
            Some(i) if self.0[i].0 == d => i,
            Some(i) => {
                self.0.insert(i + 1, (d, Usage::default()));
                i + 1
            }
            None => {
                self.0.insert(0, (d, Usage::default()));
                0
            }
        };
        &mut self.0[i].1
    }

    /// The day's usage, if the holding touched it.
    pub fn get(&self, d: &Date) -> Option<&Usage> {
        self.0.iter().find(|(x, _)| x == d).map(|(_, u)| u)
    }

    /// The days, in order.
    pub fn keys(&self) -> impl Iterator<Item = &Date> {
        self.0.iter().map(|(d, _)| d)
    }

    /// The usage of each day, in order.
    pub fn values(&self) -> impl Iterator<Item = &Usage> {
        self.0.iter().map(|(_, u)| u)
    }

    /// Days and their usage, in order.
    pub fn iter(&self) -> impl Iterator<Item = (&Date, &Usage)> {
        self.0.iter().map(|(d, u)| (d, u))
    }

    /// How many days.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// No day at all.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl std::ops::Index<&Date> for ByDay {
    type Output = Usage;
    fn index(&self, d: &Date) -> &Usage {
        match self.get(d) {
            Some(u) => u,
            None => panic!("no usage on {d}"),
        }
    }
}

/// A time zone's calendar days, remembered as they are computed: a report
/// over a year asks for the same few hundred days tens of thousands of
/// times, and converting an instant to a zoned date is the expensive part.
/// Not `Sync` (a report is computed on one thread).
pub struct Calendar {
    tz: TimeZone,
    /// Day start (ms) → the date and its end (the next day's start).
    known: RefCell<BTreeMap<i64, (Date, i64)>>,
}

impl Calendar {
    /// The days of `tz`.
    pub fn new(tz: TimeZone) -> Calendar {
        Calendar {
            tz,
            known: RefCell::new(BTreeMap::new()),
        }
    }

    /// The zone.
    pub fn tz(&self) -> &TimeZone {
        &self.tz
    }

    /// The day holding `t`: its date, start and end (ms).
    fn day_of(&self, t: i64) -> Result<(Date, i64, i64), UsageError> {
        if let Some((&start, &(date, end))) = self.known.borrow().range(..=t).next_back() {
            if t < end {
                return Ok((date, start, end));
            }
        }
        let range = |e: jiff::Error| UsageError::Range(e.to_string());
        let date = Timestamp::from_millisecond(t)
            .map_err(range)?
            .to_zoned(self.tz.clone())
            .date();
        // A day's first instant: midnight, or the first instant after a DST
        // gap that swallows midnight.
        let first = |d: Date| -> Result<i64, UsageError> {
            Ok(d.to_zoned(self.tz.clone())
                .map_err(range)?
                .timestamp()
                .as_millisecond())
        };
        let (start, end) = (first(date)?, first(date.tomorrow().map_err(range)?)?);
        self.known.borrow_mut().insert(start, (date, end));
        Ok((date, start, end))
    }

    /// The calendar days that `[from, to)` touches, each with the part of
    /// the span that falls in it (ms since the epoch, half open).
    fn days(&self, from: i64, to: i64) -> Result<Vec<(Date, i64, i64)>, UsageError> {
        let mut out = Vec::new();
        let mut t = from;
        while t < to {
            let (date, _, next) = self.day_of(t)?;
            let end = next.min(to);
            out.push((date, t, end));
            t = end;
        }
        Ok(out)
    }
}

/// Per-day spans of a day's tz.
type DaySpans = Vec<(Date, i64, i64)>;

/// The holding's allocated time per day within the window, with the day
/// spans and the clipped range; `None` when it lies outside the window.
#[allow(clippy::type_complexity)]
fn allocated(
    h: &Holding,
    window: (i64, i64),
    cal: &Calendar,
) -> Result<Option<(ByDay, DaySpans, i64, i64)>, UsageError> {
    let start = h.start_ms.max(window.0);
    let end = h.end_ms.min(window.1);
    if start >= end {
        return Ok(None);
    }
    let day_spans = cal.days(start, end)?;
    let mut out = ByDay(Vec::with_capacity(day_spans.len()));
    for (d, a, b) in &day_spans {
        out.entry(*d).allocated_ms += b - a;
    }
    Ok(Some((out, day_spans, start, end)))
}

/// GPU time already integrated by the telemetry store over
/// `[from_ms, to_ms)` for one holder: a raw sample's interval or a rollup
/// bucket.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Measured {
    /// From (ms since the epoch)...
    pub from_ms: i64,
    /// ...to (exclusive).
    pub to_ms: i64,
    /// Used GPU-ms in it.
    pub used_ms: f64,
    /// Idle GPU-ms in it.
    pub idle_ms: f64,
    /// Energy, mJ.
    pub energy_mj: f64,
    /// Peak memory used, MiB.
    pub peak_mem_mib: u64,
}

/// [`account`] for time the telemetry store already integrated: each
/// interval's amounts go to the days it overlaps (within the window) in
/// proportion to the overlap. Rollup buckets (1 or 15
/// minutes) never straddle a day of a real zone, whose offsets are whole
/// quarters of an hour.
pub fn account_measured(
    h: &Holding,
    measured: &[Measured],
    window: (i64, i64),
    cal: &Calendar,
) -> Result<ByDay, UsageError> {
    let Some((mut out, _, _, _)) = allocated(h, window, cal)? else {
        return Ok(ByDay::default());
    };
    // The store integrated each interval for this holder only: clip to the
    // window, never to the holding (a bucket that starts before the holding
    // holds only the holding's time).
    for m in measured {
        let len = (m.to_ms - m.from_ms).max(1) as f64;
        let (p, q) = (m.from_ms.max(window.0), m.to_ms.min(window.1));
        if p >= q {
            continue;
        }
        // Most intervals (a day's totals, a bucket) lie in one day.
        let (d0, _, end0) = cal.day_of(p)?;
        let one = [(d0, p, q)];
        let many;
        let parts: &[(Date, i64, i64)] = if q <= end0 {
            &one
        } else {
            many = cal.days(p, q)?;
            &many
        };
        for &(d, x, y) in parts {
            let f = (y - x) as f64 / len;
            let u = out.entry(d);
            u.used_ms += m.used_ms * f;
            u.idle_ms += (m.idle_ms * f).round() as i64;
            u.energy_mj += m.energy_mj * f;
            u.peak_mem_mib = u.peak_mem_mib.max(m.peak_mem_mib);
        }
    }
    Ok(out)
}

/// Account one holding over `[window.0, window.1)` (the query's range),
/// by day of `tz`. `samples` are the holding's GPU's, sorted by time; any
/// outside the holding are ignored (the one just before it speaks for its
/// start).
pub fn account(
    h: &Holding,
    samples: &[Sample],
    window: (i64, i64),
    cal: &Calendar,
    policy: &Policy,
) -> Result<ByDay, UsageError> {
    let Some((mut out, day_spans, start, end)) = allocated(h, window, cal)? else {
        return Ok(ByDay::default());
    };
    // Samples that speak for some of [start, end).
    let first = samples.partition_point(|s| s.t_ms + policy.max_gap_ms <= start);
    let last = samples.partition_point(|s| s.t_ms < end);
    let relevant = &samples[first..last];
    for (i, s) in relevant.iter().enumerate() {
        // The sample after it, inside the range or not, ends its say.
        let next = samples.get(first + i + 1);
        let covers_to = match next {
            Some(n) => n.t_ms.min(s.t_ms + policy.max_gap_ms),
            None => s.t_ms + policy.max_gap_ms,
        };
        let (a, b) = (s.t_ms.max(start), covers_to.min(end));
        if s.t_ms >= start && s.t_ms < end {
            for (d, _, _) in day_spans
                .iter()
                .filter(|(_, x, y)| s.t_ms >= *x && s.t_ms < *y)
            {
                let u = out.entry(*d);
                u.peak_mem_mib = u.peak_mem_mib.max(s.mem_used_mib);
            }
        }
        if a >= b {
            continue;
        }
        // Energy over the sample's whole interval, from the counter when
        // both ends have it (and it did not reset), else from power.
        let whole = (covers_to - s.t_ms) as f64;
        let counter = match (s.energy_mj, next.and_then(|n| n.energy_mj)) {
            (Some(e0), Some(e1)) if e1 >= e0 && next.is_some_and(|n| n.t_ms == covers_to) => {
                Some((e1 - e0) as f64)
            }
            _ => None,
        };
        for (d, x, y) in &day_spans {
            let (p, q) = (a.max(*x), b.min(*y));
            if p >= q {
                continue;
            }
            let dt = q - p;
            let u = out.entry(*d);
            u.used_ms += dt as f64 * s.util_pct.clamp(0.0, 100.0) / 100.0;
            if s.util_pct < policy.idle_below_pct {
                u.idle_ms += dt;
            }
            u.energy_mj += match counter {
                Some(e) if whole > 0.0 => e * dt as f64 / whole,
                _ => s.power_w.unwrap_or(0.0) * dt as f64,
            };
        }
    }
    Ok(out)
}

/// A dimension usage is broken down by.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Dim {
    /// The job's project.
    Project,
    /// The submitting user.
    User,
    /// The team of the project, else of the user (`[teams]`).
    Team,
    /// The host.
    Host,
    /// The GPU model.
    Model,
    /// Each tag (a holding with two tags counts in both rows).
    Tag,
}

impl Dim {
    /// Every dimension, in display order.
    pub const ALL: [Dim; 6] = [
        Dim::Project,
        Dim::User,
        Dim::Team,
        Dim::Host,
        Dim::Model,
        Dim::Tag,
    ];

    /// Its name on the command line and in JSON.
    pub fn name(self) -> &'static str {
        match self {
            Dim::Project => "project",
            Dim::User => "user",
            Dim::Team => "team",
            Dim::Host => "host",
            Dim::Model => "model",
            Dim::Tag => "tag",
        }
    }
}

impl std::str::FromStr for Dim {
    type Err = UsageError;
    fn from_str(s: &str) -> Result<Dim, UsageError> {
        Dim::ALL
            .into_iter()
            .find(|d| d.name() == s)
            .ok_or_else(|| UsageError::UnknownDim(s.to_string()))
    }
}

/// How rows are split in time.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Period {
    /// One row per key over the whole range.
    #[default]
    Total,
    /// One row per key and calendar day.
    Daily,
    /// One row per key and calendar month.
    Monthly,
}

/// Which users and projects belong to which team (the `[teams]` table:
/// `[teams.vision] users = ["ana"], projects = ["detr"]`). A project's
/// team wins over its submitter's.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Teams(pub BTreeMap<String, TeamMembers>);

/// One team's members.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TeamMembers {
    /// User names.
    #[serde(default)]
    pub users: Vec<String>,
    /// Project names.
    #[serde(default)]
    pub projects: Vec<String>,
}

impl Teams {
    /// The team a holding is billed to, if any.
    pub fn of(&self, user: &str, project: &str) -> Option<&str> {
        let find = |f: &dyn Fn(&TeamMembers) -> bool| {
            self.0.iter().find(|(_, m)| f(m)).map(|(t, _)| t.as_str())
        };
        (!project.is_empty())
            .then(|| find(&|m| m.projects.iter().any(|p| p == project)))
            .flatten()
            .or_else(|| find(&|m| m.users.iter().any(|u| u == user)))
    }
}

/// A usage question.
#[derive(Debug, Clone)]
pub struct Query {
    /// Break down by these, in order (none: one total row per period).
    pub by: Vec<Dim>,
    /// Range start, ms since the epoch.
    pub since_ms: i64,
    /// Range end (exclusive).
    pub until_ms: i64,
    /// Rows per day, month, or over the whole range.
    pub period: Period,
    /// The lab's time zone: days and months are its.
    pub tz: TimeZone,
    /// Holdings carrying this tag are left out (`ignore-usage`).
    pub ignore_tag: Option<String>,
    /// Only holdings in this scope (a digest sink's users, projects,
    /// tags); `None` counts all.
    pub only: Option<Scope>,
}

/// Whose holdings count: empty lists do not filter.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Scope {
    /// Only these users'.
    pub users: Vec<String>,
    /// Only these projects'.
    pub projects: Vec<String>,
    /// Only those with one of these tags.
    pub tags: Vec<String>,
}

impl Scope {
    /// Whether `h` is in the scope.
    pub fn covers(&self, h: &Holding) -> bool {
        let any = |want: &[String], have: &str| want.is_empty() || want.iter().any(|w| w == have);
        any(&self.users, &h.user)
            && any(&self.projects, &h.project)
            && (self.tags.is_empty() || h.tags.iter().any(|t| self.tags.contains(t)))
    }
}

/// One row of a usage report.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Row {
    /// `2026-11-30` (daily), `2026-11` (monthly), absent for totals.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub period: Option<String>,
    /// The values of the query's dimensions, in its order (`-` for none).
    pub key: Vec<String>,
    /// The GPU time.
    pub usage: Usage,
    /// Distinct jobs counted.
    pub jobs: u64,
    /// Distinct wandb runs counted (not through the queue).
    pub runs: u64,
}

/// A usage report: rows sorted by period then key, and the total.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Report {
    /// The dimensions of `key`.
    pub by: Vec<Dim>,
    /// The rows.
    pub rows: Vec<Row>,
    /// Everything counted once (with `--by tag`, rows may add up to more).
    pub total: Row,
}

#[derive(Default)]
struct Acc {
    usage: Usage,
    jobs: FxHashSet<u64>,
    runs: FxHashSet<String>,
}

impl Acc {
    fn add(&mut self, h: &Holding, u: &Usage) {
        self.usage.add(u);
        match &h.holder {
            Holder::Job { job, .. } => {
                self.jobs.insert(*job);
            }
            Holder::Run { run } => {
                if !self.runs.contains(run) {
                    self.runs.insert(run.clone());
                }
            }
        }
    }

    fn row(self, period: Option<String>, key: Vec<String>) -> Row {
        Row {
            period,
            key,
            usage: self.usage,
            jobs: self.jobs.len() as u64,
            runs: self.runs.len() as u64,
        }
    }
}

fn keys(h: &Holding, by: &[Dim], teams: &Teams) -> Vec<Vec<String>> {
    let or_dash = |s: &str| {
        if s.is_empty() {
            "-".to_string()
        } else {
            s.to_string()
        }
    };
    let mut out: Vec<Vec<String>> = vec![Vec::new()];
    for d in by {
        let values: Vec<String> = match d {
            Dim::Project => vec![or_dash(&h.project)],
            Dim::User => vec![or_dash(&h.user)],
            Dim::Team => vec![teams.of(&h.user, &h.project).unwrap_or("-").to_string()],
            Dim::Host => vec![or_dash(&h.host)],
            Dim::Model => vec![or_dash(&h.model)],
            Dim::Tag if h.tags.is_empty() => vec!["-".to_string()],
            Dim::Tag => h.tags.clone(),
        };
        out = out
            .into_iter()
            .flat_map(|k| {
                values.iter().map(move |v| {
                    let mut k = k.clone();
                    k.push(v.clone());
                    k
                })
            })
            .collect();
    }
    out
}

/// The first day of the period `d` is in (`None`: the whole range).
fn period_of(p: Period, d: Date) -> Option<Date> {
    match p {
        Period::Total => None,
        Period::Daily => Some(d),
        Period::Monthly => Some(d.first_of_month()),
    }
}

fn period_label(p: Period, d: Date) -> String {
    match p {
        Period::Monthly => format!("{:04}-{:02}", d.year(), d.month()),
        _ => d.to_string(),
    }
}

/// Fold accounted holdings (each with its per-day usage from [`account`])
/// into a report.
pub fn report<'a>(
    q: &Query,
    teams: &Teams,
    accounted: impl IntoIterator<Item = (&'a Holding, ByDay)>,
) -> Report {
    // Keys are interned, and computed once per distinct set of a holding's
    // attributes: a year's report folds a hundred thousand holding-days
    // into a few thousand rows.
    type Attrs<'h> = (&'h str, &'h str, &'h str, &'h str, &'h [String]);
    let mut by_attrs: FxHashMap<Attrs<'a>, Vec<usize>> = FxHashMap::default();
    let mut ids: FxHashMap<Vec<String>, usize> = FxHashMap::default();
    let mut names: Vec<Vec<String>> = Vec::new();
    let mut rows: FxHashMap<(Option<Date>, usize), Acc> = FxHashMap::default();
    let mut total = Acc::default();
    for (h, by_day) in accounted {
        if q.ignore_tag
            .as_deref()
            .is_some_and(|t| h.tags.iter().any(|x| x == t))
            || q.only.as_ref().is_some_and(|s| !s.covers(h))
        {
            continue;
        }
        let attrs = (
            h.user.as_str(),
            h.project.as_str(),
            h.host.as_str(),
            h.model.as_str(),
            h.tags.as_slice(),
        );
        let ks = by_attrs.entry(attrs).or_insert_with(|| {
            keys(h, &q.by, teams)
                .into_iter()
                .map(|k| {
                    *ids.entry(k).or_insert_with_key(|k| {
                        names.push(k.clone());
                        names.len() - 1
                    })
                })
                .collect()
        });
        for (d, u) in by_day.iter() {
            total.add(h, u);
            let p = period_of(q.period, *d);
            for k in ks.iter() {
                rows.entry((p, *k)).or_default().add(h, u);
            }
        }
    }
    let mut rows: Vec<((Option<Date>, usize), Acc)> = rows.into_iter().collect();
    rows.sort_by(|((pa, ka), _), ((pb, kb), _)| (pa, &names[*ka]).cmp(&(pb, &names[*kb])));
    Report {
        by: q.by.clone(),
        rows: rows
            .into_iter()
            .map(|((p, k), a)| a.row(p.map(|d| period_label(q.period, d)), names[k].clone()))
            .collect(),
        total: total.row(None, vec!["total".to_string()]),
    }
}

#[cfg(test)]
mod tests;
