//! Schedules in `queue.db`: adding, listing, pausing, removing, and the
//! evaluation that fires occurrences. Each schedule's evaluation is one
//! transaction: the occurrences' records (keyed by their idempotency key),
//! the jobs they submit and the new watermark commit together or not at
//! all.

use std::collections::BTreeMap;
use std::time::Duration;

use jiff::tz::TimeZone;
use jiff::Timestamp;
use rusqlite::{params, Connection, OptionalExtension, Transaction};

use super::plan::{self, Decision};
use super::rule::{self, CronRule, Window};
use super::{
    check_name, job_tag, CatchUp, FireTime, NewSchedule, Occurrence, Outcome, Overlap,
    ScheduleDetail, ScheduleError, ScheduleInfo,
};
use crate::queue::{
    sweep_len, JobId, JobSpec, JobState, Queue, QueueError, StartRule, SweepGrid, MAX_BATCH,
    SECRET_REDACTED,
};
use crate::store::{self, Store};

type Result<T> = std::result::Result<T, ScheduleError>;

/// How often the daemon looks for new versions of watched datasets.
pub const DATA_POLL: Duration = Duration::from_secs(2);

/// How many missed cron occurrences one evaluation lists one by one; more
/// are recorded as one summary row.
const MISSED_LISTED: usize = 100;

/// How many runs and missed occurrences `show` lists.
const SHOWN: usize = 20;

/// What an evaluation or a run changed, for the daemon to announce: jobs
/// submitted, and jobs cancelled (overlap `replace`) with the agent that
/// must stop them.
#[derive(Debug, Default, Clone)]
pub struct Effects {
    /// Jobs submitted.
    pub submitted: Vec<JobId>,
    /// Jobs cancelled, with the agent that held them, if any.
    pub cancelled: Vec<(JobId, Option<String>)>,
    /// The schedules whose records changed.
    pub changed: Vec<String>,
}

impl Effects {
    fn merge(&mut self, o: Effects) {
        self.submitted.extend(o.submitted);
        self.cancelled.extend(o.cancelled);
        self.changed.extend(o.changed);
    }
}

/// A schedule row.
#[derive(Debug, Clone)]
struct Row {
    id: i64,
    name: String,
    spec: JobSpec,
    sweep: Option<SweepGrid>,
    cron: Option<String>,
    tz: String,
    dataset: Option<String>,
    tag_pattern: Option<String>,
    overlap: Overlap,
    catch_up: CatchUp,
    window: Option<String>,
    paused: bool,
    user: String,
    created_ns: i64,
    watermark_ns: i64,
}

const ROW_SELECT: &str = "SELECT id, name, spec, sweep, cron, tz, dataset, tag_pattern, overlap,
     catch_up, start_window, paused, user, created_ns, watermark_ns FROM schedules";

fn row_of(r: &rusqlite::Row<'_>) -> rusqlite::Result<Row> {
    let text = |i: usize| -> rusqlite::Result<String> { r.get(i) };
    let bad = |i: usize, what: String| {
        rusqlite::Error::FromSqlConversionFailure(
            i,
            rusqlite::types::Type::Text,
            format!("schedules: {what}").into(),
        )
    };
    let spec: JobSpec =
        serde_json::from_str(&text(2)?).map_err(|e| bad(2, format!("spec: {e}")))?;
    let sweep: Option<SweepGrid> = match r.get::<_, Option<String>>(3)? {
        Some(s) => Some(serde_json::from_str(&s).map_err(|e| bad(3, format!("sweep: {e}")))?),
        None => None,
    };
    let overlap = text(8)?;
    let catch_up = text(9)?;
    Ok(Row {
        id: r.get(0)?,
        name: text(1)?,
        spec,
        sweep,
        cron: r.get(4)?,
        tz: text(5)?,
        dataset: r.get(6)?,
        tag_pattern: r.get(7)?,
        overlap: Overlap::from_name(&overlap)
            .ok_or_else(|| bad(8, format!("overlap {overlap:?}")))?,
        catch_up: CatchUp::from_name(&catch_up)
            .ok_or_else(|| bad(9, format!("catch_up {catch_up:?}")))?,
        window: r.get(10)?,
        paused: r.get(11)?,
        user: text(12)?,
        created_ns: r.get(13)?,
        watermark_ns: r.get(14)?,
    })
}

fn ts(ns: i64) -> Timestamp {
    Timestamp::from_nanosecond(i128::from(ns)).unwrap_or(Timestamp::UNIX_EPOCH)
}

fn ns(t: Timestamp) -> i64 {
    i64::try_from(t.as_nanosecond()).unwrap_or(i64::MAX)
}

/// `t` in zone `tz`, RFC 3339 with the offset.
fn local(t: Timestamp, tz: &TimeZone) -> String {
    t.to_zoned(tz.clone())
        .strftime("%Y-%m-%dT%H:%M:%S%:z")
        .to_string()
}

fn tz_of(row: &Row) -> TimeZone {
    TimeZone::get(&row.tz).unwrap_or(TimeZone::UTC)
}

/// An occurrence row as read.
struct RawOccurrence {
    key: String,
    at_ns: i64,
    outcome: String,
    first: Option<i64>,
    count: i64,
    detail: Option<String>,
    recorded_ns: i64,
}

/// A data trigger's candidate: a version (or a tag on one) of the dataset.
#[derive(Debug, Clone)]
struct DataEvent {
    key: String,
    version: store::ObjectId,
    tag: Option<String>,
    at_ns: i64,
}

/// The versions (or matching tags) of a data schedule's dataset, oldest
/// first. A dataset that was removed has none.
fn data_events(store: &Store, dataset: &str, pattern: Option<&str>) -> Result<Vec<DataEvent>> {
    let versions = match store.log(dataset) {
        Ok(v) => v,
        Err(store::Error::UnknownDataset(_)) | Err(store::Error::NoVersions(_)) => {
            return Ok(Vec::new())
        }
        Err(e) => return Err(e.into()),
    };
    Ok(match pattern {
        None => versions
            .into_iter()
            .rev()
            .map(|v| DataEvent {
                key: format!("version {}", v.id.to_hex()),
                version: v.id,
                tag: None,
                at_ns: v.created_ns,
            })
            .collect(),
        Some(p) => {
            let mut tags: Vec<_> = store
                .tags(dataset)?
                .into_iter()
                .filter(|t| rule::glob_match(p, &t.name))
                .collect();
            tags.sort_by_key(|t| (t.created_ns, t.name.clone()));
            tags.into_iter()
                .map(|t| DataEvent {
                    key: format!("tag {} {}", t.name, t.version.to_hex()),
                    version: t.version,
                    tag: Some(t.name),
                    at_ns: t.created_ns,
                })
                .collect()
        }
    })
}

#[cfg(test)]
thread_local! {
    /// Test hook: fail an evaluation after its jobs are inserted and before
    /// its watermark moves (a crash at the worst moment).
    pub(super) static CRASH_BEFORE_WATERMARK: std::cell::Cell<bool> =
        const { std::cell::Cell::new(false) };
}

/// The schedules of a queue.
pub struct Schedules<'q> {
    queue: &'q Queue,
}

impl<'q> Schedules<'q> {
    /// The schedules kept in `queue`'s database.
    pub fn new(queue: &'q Queue) -> Schedules<'q> {
        Schedules { queue }
    }

    fn sql(&self) -> impl Fn(rusqlite::Error) -> ScheduleError + '_ {
        move |e| ScheduleError::Queue(self.queue.sql_error(e))
    }

    fn row(&self, conn: &Connection, name: &str) -> Result<Row> {
        conn.prepare_cached(&format!("{ROW_SELECT} WHERE name = ?1"))
            .map_err(self.sql())?
            .query_row([name], row_of)
            .optional()
            .map_err(self.sql())?
            .ok_or_else(|| ScheduleError::Unknown(name.to_string()))
    }

    fn rows(&self, conn: &Connection) -> Result<Vec<Row>> {
        let mut st = conn
            .prepare_cached(&format!("{ROW_SELECT} ORDER BY name"))
            .map_err(self.sql())?;
        let rows = st
            .query_map([], row_of)
            .map_err(self.sql())?
            .collect::<rusqlite::Result<_>>()
            .map_err(self.sql())?;
        Ok(rows)
    }

    /// Check and store a new schedule. `default_tz` is used when it names
    /// none; `store` is where `on_dataset` must exist. Versions (or tags)
    /// the dataset has now never fire it: only those that appear later.
    pub fn add(
        &self,
        new: NewSchedule,
        default_tz: &str,
        store: Option<&Store>,
        now: Timestamp,
    ) -> Result<ScheduleInfo> {
        check_name(&new.name)?;
        let tz_name = new.tz.clone().unwrap_or_else(|| default_tz.to_string());
        rule::zone("tz", &tz_name)?;
        match (&new.cron, &new.on_dataset) {
            (None, None) if new.window.is_some() => {
                return Err(ScheduleError::invalid(
                    "window",
                    "a window belongs to a schedule: give --cron PATTERN or --on-dataset NAME \
                     with it",
                ))
            }
            (None, None) => {
                return Err(ScheduleError::invalid(
                    "cron",
                    "a schedule needs a trigger: --cron PATTERN or --on-dataset NAME",
                ))
            }
            (Some(_), Some(_)) => {
                return Err(ScheduleError::invalid(
                    "on_dataset",
                    "give either --cron or --on-dataset, not both",
                ))
            }
            _ => {}
        }
        if let Some(c) = &new.cron {
            CronRule::parse(c, &tz_name)?;
        }
        if new.tag_pattern.is_some() && new.on_dataset.is_none() {
            return Err(ScheduleError::invalid(
                "tag_pattern",
                "a tag pattern needs --on-dataset NAME",
            ));
        }
        if let Some(p) = &new.tag_pattern {
            rule::check_tag_pattern(p)?;
        }
        if new.on_dataset.is_some() && new.catch_up != CatchUp::Skip {
            return Err(ScheduleError::invalid(
                "catch_up",
                "applies to --cron schedules; a data schedule fires for every new version \
                 whenever the daemon sees it",
            ));
        }
        let window = match &new.window {
            Some(w) => Some(Window::parse(w)?.to_string()),
            None => None,
        };
        let mut baseline = Vec::new();
        if let Some(ds) = &new.on_dataset {
            store::validate_dataset_name(ds)
                .map_err(|e| ScheduleError::invalid("on_dataset", e.to_string()))?;
            let store = store.ok_or_else(|| {
                ScheduleError::invalid("on_dataset", "the daemon has no dataset store")
            })?;
            match store.log(ds) {
                Ok(_) => {}
                Err(store::Error::UnknownDataset(_)) => {
                    return Err(ScheduleError::invalid(
                        "on_dataset",
                        format!(
                            "no dataset {ds:?} in the daemon's store (add it first: trainyard \
                             data add DIR --name {ds})"
                        ),
                    ))
                }
                Err(e) => return Err(e.into()),
            }
            baseline = data_events(store, ds, new.tag_pattern.as_deref())?;
        }
        new.job.validate()?;
        if let Some(grid) = &new.sweep {
            if let Some(first) = new.job.sweep_iter(grid)?.next() {
                first.validate()?;
            }
            let n = sweep_len(grid);
            if n > MAX_BATCH {
                return Err(ScheduleError::invalid(
                    "sweep",
                    format!("{n} jobs per occurrence is over the limit of {MAX_BATCH}"),
                ));
            }
        }
        let user = new.job.user.clone().unwrap_or_else(|| "unknown".into());
        let mut stored = new.job.clone();
        for v in stored.secret_env.values_mut() {
            *v = SECRET_REDACTED.to_string();
        }
        let now_ns = ns(now);
        self.queue.transaction(|tx| -> Result<()> {
            let exists: bool = tx
                .query_row(
                    "SELECT 1 FROM schedules WHERE name = ?1",
                    [&new.name],
                    |_| Ok(true),
                )
                .optional()
                .map_err(self.sql())?
                .unwrap_or(false);
            if exists {
                return Err(ScheduleError::Exists(new.name.clone()));
            }
            tx.execute(
                "INSERT INTO schedules (name, spec, sweep, cron, tz, dataset, tag_pattern, overlap,
                     catch_up, start_window, paused, user, created_ns, watermark_ns)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, 0, ?11, ?12, ?12)",
                params![
                    new.name,
                    serde_json::to_string(&stored).expect("specs serialize"),
                    new.sweep
                        .as_ref()
                        .map(|g| serde_json::to_string(g).expect("grids serialize")),
                    new.cron.as_deref().map(str::trim),
                    tz_name,
                    new.on_dataset,
                    new.tag_pattern,
                    new.overlap.as_str(),
                    new.catch_up.as_str(),
                    window,
                    user,
                    now_ns,
                ],
            )
            .map_err(self.sql())?;
            let id = tx.last_insert_rowid();
            for (k, v) in &new.job.secret_env {
                tx.execute(
                    "INSERT INTO schedule_secrets (schedule_id, name, value) VALUES (?1, ?2, ?3)",
                    params![id, k, v],
                )
                .map_err(self.sql())?;
            }
            self.baseline(tx, id, &baseline, now_ns)?;
            Ok(())
        })?;
        tracing::info!(schedule = %new.name, zone = %tz_name, "schedule added");
        self.info(&new.name, now)
    }

    /// Record data events as already seen: they never fire.
    fn baseline(
        &self,
        tx: &Transaction<'_>,
        id: i64,
        events: &[DataEvent],
        now: i64,
    ) -> Result<()> {
        let mut st = tx
            .prepare_cached(
                "INSERT OR IGNORE INTO schedule_occurrences
                     (schedule_id, key, at_ns, outcome, job_count, recorded_ns)
                 VALUES (?1, ?2, ?3, 'baseline', 0, ?4)",
            )
            .map_err(self.sql())?;
        for e in events {
            st.execute(params![id, e.key, e.at_ns, now])
                .map_err(self.sql())?;
        }
        Ok(())
    }

    /// Every schedule, by name.
    pub fn list(&self, now: Timestamp) -> Result<Vec<ScheduleInfo>> {
        self.queue.read(|conn| {
            self.rows(conn)?
                .into_iter()
                .map(|r| self.info_of(conn, r, now))
                .collect()
        })
    }

    /// One schedule.
    pub fn info(&self, name: &str, now: Timestamp) -> Result<ScheduleInfo> {
        self.queue.read(|conn| {
            let row = self.row(conn, name)?;
            self.info_of(conn, row, now)
        })
    }

    /// One schedule with its next 5 fire times, last runs and missed
    /// occurrences.
    pub fn show(&self, name: &str, now: Timestamp) -> Result<ScheduleDetail> {
        self.queue.read(|conn| {
            let row = self.row(conn, name)?;
            let tz = tz_of(&row);
            let next = match (&row.cron, row.paused) {
                (Some(c), false) => CronRule::parse(c, &row.tz)?
                    .upcoming(now.max(ts(row.watermark_ns)), 5)
                    .into_iter()
                    .map(|t| FireTime {
                        at_ns: ns(t),
                        at: local(t, &tz),
                    })
                    .collect(),
                _ => Vec::new(),
            };
            let runs = self.occurrences(
                conn,
                &row,
                "outcome IN ('fired', 'skipped', 'failed')",
                SHOWN,
            )?;
            let missed = self.occurrences(conn, &row, "outcome = 'missed'", SHOWN)?;
            Ok(ScheduleDetail {
                schedule: self.info_of(conn, row, now)?,
                next,
                runs,
                missed,
            })
        })
    }

    fn occurrences(
        &self,
        conn: &Connection,
        row: &Row,
        filter: &str,
        limit: usize,
    ) -> Result<Vec<Occurrence>> {
        let tz = tz_of(row);
        let mut st = conn
            .prepare_cached(&format!(
                "SELECT key, at_ns, outcome, job_first, job_count, detail, recorded_ns
                 FROM schedule_occurrences WHERE schedule_id = ?1 AND {filter}
                 ORDER BY seq DESC LIMIT ?2"
            ))
            .map_err(self.sql())?;
        let raw: Vec<RawOccurrence> = st
            .query_map(params![row.id, limit as i64], |r| {
                Ok(RawOccurrence {
                    key: r.get(0)?,
                    at_ns: r.get(1)?,
                    outcome: r.get(2)?,
                    first: r.get(3)?,
                    count: r.get(4)?,
                    detail: r.get(5)?,
                    recorded_ns: r.get(6)?,
                })
            })
            .map_err(self.sql())?
            .collect::<rusqlite::Result<_>>()
            .map_err(self.sql())?;
        raw.into_iter()
            .map(|o| {
                let jobs: Vec<JobId> = match o.first {
                    Some(f) => (f..f + o.count).map(JobId).collect(),
                    None => Vec::new(),
                };
                Ok(Occurrence {
                    key: o.key,
                    at: local(ts(o.at_ns), &tz),
                    at_ns: o.at_ns,
                    outcome: Outcome::from_name(&o.outcome).unwrap_or(Outcome::Failed),
                    state: match o.first {
                        Some(f) => self.summary_state(conn, f, o.count)?,
                        None => None,
                    },
                    jobs,
                    detail: o.detail,
                    recorded_ns: o.recorded_ns,
                })
            })
            .collect()
    }

    /// The least advanced state of jobs `[first, first + count)`: a live
    /// one if any, else a failure if any, else succeeded. `None` when
    /// retention forgot them all.
    fn summary_state(&self, conn: &Connection, first: i64, count: i64) -> Result<Option<JobState>> {
        let mut st = conn
            .prepare_cached("SELECT state FROM jobs WHERE id >= ?1 AND id < ?2")
            .map_err(self.sql())?;
        let states: Vec<String> = st
            .query_map([first, first + count], |r| r.get(0))
            .map_err(self.sql())?
            .collect::<rusqlite::Result<_>>()
            .map_err(self.sql())?;
        let states: Vec<JobState> = states
            .iter()
            .filter_map(|s| JobState::from_name(s))
            .collect();
        Ok(states
            .iter()
            .find(|s| !s.is_terminal())
            .or_else(|| states.iter().find(|s| **s != JobState::Succeeded))
            .or(states.first())
            .copied())
    }

    fn info_of(&self, conn: &Connection, row: Row, now: Timestamp) -> Result<ScheduleInfo> {
        let tz = tz_of(&row);
        let next = match (&row.cron, row.paused) {
            (Some(c), false) => {
                CronRule::parse(c, &row.tz)?.next_after(now.max(ts(row.watermark_ns)))
            }
            _ => None,
        };
        let last = self
            .occurrences(conn, &row, "outcome != 'baseline'", 1)?
            .pop();
        let missed: i64 = conn
            .prepare_cached(
                "SELECT count(*) FROM schedule_occurrences WHERE schedule_id = ?1 AND outcome = 'missed'",
            )
            .map_err(self.sql())?
            .query_row([row.id], |r| r.get(0))
            .map_err(self.sql())?;
        Ok(ScheduleInfo {
            name: row.name,
            cron: row.cron,
            tz: row.tz,
            on_dataset: row.dataset,
            tag_pattern: row.tag_pattern,
            overlap: row.overlap,
            catch_up: row.catch_up,
            window: row.window,
            paused: row.paused,
            user: row.user,
            created_ns: row.created_ns,
            watermark_ns: row.watermark_ns,
            next_fire_ns: next.map(ns),
            next_fire: next.map(|t| local(t, &tz)),
            last,
            missed: missed as u64,
            job: row.spec,
            sweep: row.sweep,
        })
    }

    /// Pause or resume a schedule. Resuming moves its watermark to `now`:
    /// what came due while it was paused is neither run nor missed, and
    /// the versions a data schedule's dataset gained meanwhile never fire.
    pub fn set_paused(
        &self,
        name: &str,
        paused: bool,
        store: Option<&Store>,
        now: Timestamp,
    ) -> Result<ScheduleInfo> {
        let row = self.queue.read(|conn| self.row(conn, name))?;
        let seen = match (&row.dataset, store, paused) {
            (Some(ds), Some(store), false) => data_events(store, ds, row.tag_pattern.as_deref())?,
            _ => Vec::new(),
        };
        self.queue.transaction(|tx| -> Result<()> {
            let row = self.row(tx, name)?;
            if row.paused == paused {
                return Ok(());
            }
            tx.execute(
                "UPDATE schedules SET paused = ?2,
                     watermark_ns = CASE WHEN ?2 THEN watermark_ns ELSE max(watermark_ns, ?3) END
                 WHERE id = ?1",
                params![row.id, paused, ns(now)],
            )
            .map_err(self.sql())?;
            if !paused {
                self.baseline(tx, row.id, &seen, ns(now))?;
            }
            Ok(())
        })?;
        tracing::info!(schedule = name, paused, "schedule paused or resumed");
        self.info(name, now)
    }

    /// Remove a schedule and its records. Its jobs stay in the queue.
    pub fn remove(&self, name: &str) -> Result<()> {
        self.queue.transaction(|tx| -> Result<()> {
            let row = self.row(tx, name)?;
            for table in ["schedule_occurrences", "schedule_secrets"] {
                tx.execute(
                    &format!("DELETE FROM {table} WHERE schedule_id = ?1"),
                    [row.id],
                )
                .map_err(self.sql())?;
            }
            tx.execute("DELETE FROM schedules WHERE id = ?1", [row.id])
                .map_err(self.sql())?;
            Ok(())
        })?;
        tracing::info!(schedule = name, "schedule removed");
        Ok(())
    }

    /// Fire a schedule now, by hand (`schedule run`), under its overlap
    /// policy. A data schedule runs on the newest version (or newest
    /// matching tag) of its dataset.
    pub fn run_now(
        &self,
        name: &str,
        store: Option<&Store>,
        now: Timestamp,
    ) -> Result<(Occurrence, Effects)> {
        let row = self.queue.read(|conn| self.row(conn, name))?;
        let event = match &row.dataset {
            Some(ds) => {
                let store = store.ok_or_else(|| ScheduleError::NothingToRun {
                    name: name.to_string(),
                    reason: "the daemon has no dataset store".into(),
                })?;
                let mut ev = data_events(store, ds, row.tag_pattern.as_deref())?
                    .pop()
                    .ok_or_else(|| ScheduleError::NothingToRun {
                        name: name.to_string(),
                        reason: format!(
                            "dataset {ds:?} has no {} yet",
                            if row.tag_pattern.is_some() {
                                "matching tag"
                            } else {
                                "version"
                            }
                        ),
                    })?;
                ev.at_ns = ns(now);
                Some(ev)
            }
            None => None,
        };
        let key = format!("manual {now}");
        let mut fx = Effects::default();
        let occ = self.queue.transaction(|tx| -> Result<Occurrence> {
            let row = self.row(tx, name)?;
            let (outcome, jobs, detail) =
                self.fire(tx, &row, &key, now, now, event.as_ref(), &mut fx)?;
            Ok(Occurrence {
                key: key.clone(),
                at_ns: ns(now),
                at: local(now, &tz_of(&row)),
                outcome,
                state: jobs.first().map(|_| JobState::Queued),
                jobs,
                detail,
                recorded_ns: ns(now),
            })
        })?;
        fx.changed.push(name.to_string());
        Ok((occ, fx))
    }

    /// Whether any active schedule watches a dataset (the evaluation then
    /// needs the store).
    pub fn watches_data(&self) -> Result<bool> {
        self.queue.read(|conn| {
            conn.prepare_cached(
                "SELECT EXISTS (SELECT 1 FROM schedules WHERE dataset IS NOT NULL AND NOT paused)",
            )
            .map_err(self.sql())?
            .query_row([], |r| r.get(0))
            .map_err(self.sql())
        })
    }

    /// When the next evaluation is due after `now`: the earliest next fire
    /// time of the active cron schedules, or `now + DATA_POLL` while a data
    /// schedule is active. `None`: no active schedule.
    pub fn next_due(&self, now: Timestamp) -> Result<Option<Timestamp>> {
        let rows = self.queue.read(|conn| self.rows(conn))?;
        let mut due: Option<Timestamp> = None;
        for row in rows.iter().filter(|r| !r.paused) {
            let t = match &row.cron {
                Some(c) => match CronRule::parse(c, &row.tz) {
                    Ok(rule) => rule.next_after(now.max(ts(row.watermark_ns))),
                    Err(_) => None,
                },
                None => now.checked_add(DATA_POLL).ok(),
            };
            due = match (due, t) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
        }
        Ok(due)
    }

    /// Evaluate every active schedule at `now`: fire the cron occurrences
    /// that came due since each one's watermark (or record them missed,
    /// per the catch-up policy) and the new versions of watched datasets
    /// in `store`. One transaction per schedule; a schedule that fails is
    /// logged and left for the next evaluation.
    pub fn evaluate(&self, store: Option<&Store>, now: Timestamp) -> Result<Effects> {
        let rows = self.queue.read(|conn| self.rows(conn))?;
        let mut fx = Effects::default();
        for row in rows.into_iter().filter(|r| !r.paused) {
            let events = match (&row.dataset, store) {
                (Some(ds), Some(store)) => {
                    match data_events(store, ds, row.tag_pattern.as_deref()) {
                        Ok(ev) => Some(ev),
                        Err(e) => {
                            tracing::warn!(schedule = %row.name, error = %e, "cannot read the watched dataset");
                            continue;
                        }
                    }
                }
                (Some(_), None) => continue,
                (None, _) => None,
            };
            match self.evaluate_one(&row.name, events, now) {
                Ok(one) => fx.merge(one),
                Err(e) => {
                    tracing::error!(schedule = %row.name, error = %e, "schedule evaluation failed")
                }
            }
        }
        Ok(fx)
    }

    fn evaluate_one(
        &self,
        name: &str,
        events: Option<Vec<DataEvent>>,
        now: Timestamp,
    ) -> Result<Effects> {
        let mut fx = Effects::default();
        let mut changed = false;
        self.queue.transaction(|tx| -> Result<()> {
            // Read again inside the transaction: the watermark and records
            // are those no other evaluation can change until commit.
            let row = self.row(tx, name)?;
            if row.paused {
                return Ok(());
            }
            changed = match events {
                Some(events) => self.evaluate_data(tx, &row, events, now, &mut fx)?,
                None => self.evaluate_cron(tx, &row, now, &mut fx)?,
            };
            #[cfg(test)]
            if CRASH_BEFORE_WATERMARK.with(|c| c.get()) {
                return Err(ScheduleError::invalid(
                    "(test)",
                    "crash before the watermark",
                ));
            }
            tx.execute(
                "UPDATE schedules SET watermark_ns = max(watermark_ns, ?2) WHERE id = ?1",
                params![row.id, ns(now)],
            )
            .map_err(self.sql())?;
            Ok(())
        })?;
        if changed {
            fx.changed.push(name.to_string());
        }
        Ok(fx)
    }

    fn seen(&self, tx: &Transaction<'_>, id: i64, key: &str) -> Result<bool> {
        Ok(tx
            .prepare_cached(
                "SELECT 1 FROM schedule_occurrences WHERE schedule_id = ?1 AND key = ?2",
            )
            .map_err(self.sql())?
            .query_row(params![id, key], |_| Ok(true))
            .optional()
            .map_err(self.sql())?
            .unwrap_or(false))
    }

    #[allow(clippy::too_many_arguments)]
    fn record(
        &self,
        tx: &Transaction<'_>,
        row: &Row,
        key: &str,
        at_ns: i64,
        outcome: Outcome,
        jobs: &[JobId],
        detail: Option<&str>,
        now: Timestamp,
    ) -> Result<()> {
        tx.prepare_cached(
            "INSERT INTO schedule_occurrences
                 (schedule_id, key, at_ns, outcome, job_first, job_count, detail, recorded_ns)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
        )
        .map_err(self.sql())?
        .execute(params![
            row.id,
            key,
            at_ns,
            outcome.as_str(),
            jobs.first().map(|j| j.0),
            jobs.len() as i64,
            detail,
            ns(now)
        ])
        .map_err(self.sql())?;
        Ok(())
    }

    fn evaluate_cron(
        &self,
        tx: &Transaction<'_>,
        row: &Row,
        now: Timestamp,
        fx: &mut Effects,
    ) -> Result<bool> {
        let Some(cron) = &row.cron else {
            return Ok(false);
        };
        let rule = CronRule::parse(cron, &row.tz)?;
        let wm = ts(row.watermark_ns);
        if now <= wm {
            return Ok(false);
        }
        let mut changed = false;
        let tz = tz_of(row);
        let (due, total) = rule.between(wm, now, MISSED_LISTED);
        let decisions = plan::decide(&due, now, row.catch_up);
        for (at, d) in due.iter().zip(decisions) {
            let key = format!("cron {at}");
            if self.seen(tx, row.id, &key)? {
                continue;
            }
            changed = true;
            match d {
                Decision::Missed => {
                    let detail = format!(
                        "came due while the daemon was down (catch-up {})",
                        row.catch_up
                    );
                    self.record(
                        tx,
                        row,
                        &key,
                        ns(*at),
                        Outcome::Missed,
                        &[],
                        Some(&detail),
                        now,
                    )?;
                }
                Decision::Fire => {
                    self.fire(tx, row, &key, *at, now, None, fx)?;
                }
            }
        }
        // Recorded last, so `show` lists it first among the missed.
        if total > due.len() {
            let key = format!("cron missed {wm}");
            if !self.seen(tx, row.id, &key)? {
                let more = if total >= rule::SCAN_LIMIT {
                    format!("at least {}", total - due.len())
                } else {
                    (total - due.len()).to_string()
                };
                let detail = format!(
                    "{more} more occurrences from {} on came due while the daemon was down \
                     (not listed one by one)",
                    local(wm, &tz)
                );
                self.record(
                    tx,
                    row,
                    &key,
                    ns(wm),
                    Outcome::Missed,
                    &[],
                    Some(&detail),
                    now,
                )?;
                changed = true;
            }
        }
        Ok(changed)
    }

    fn evaluate_data(
        &self,
        tx: &Transaction<'_>,
        row: &Row,
        events: Vec<DataEvent>,
        now: Timestamp,
        fx: &mut Effects,
    ) -> Result<bool> {
        let mut new = Vec::new();
        for e in events {
            if !self.seen(tx, row.id, &e.key)? {
                new.push(e);
            }
        }
        let Some(newest) = new.last().cloned() else {
            return Ok(false);
        };
        for e in &new {
            if row.overlap == Overlap::Queue || e.key == newest.key {
                self.fire(tx, row, &e.key, ts(e.at_ns), now, Some(e), fx)?;
            } else {
                let detail = format!(
                    "superseded by {}@{} which appeared by the same evaluation",
                    row.dataset.as_deref().unwrap_or(""),
                    newest
                        .tag
                        .clone()
                        .unwrap_or_else(|| newest.version.to_hex())
                );
                self.record(
                    tx,
                    row,
                    &e.key,
                    e.at_ns,
                    Outcome::Skipped,
                    &[],
                    Some(&detail),
                    now,
                )?;
            }
        }
        Ok(true)
    }

    /// Submit an occurrence's jobs under the overlap policy and the window,
    /// and record it. Returns the outcome, the jobs and the detail.
    #[allow(clippy::too_many_arguments)]
    fn fire(
        &self,
        tx: &Transaction<'_>,
        row: &Row,
        key: &str,
        at: Timestamp,
        now: Timestamp,
        event: Option<&DataEvent>,
        fx: &mut Effects,
    ) -> Result<(Outcome, Vec<JobId>, Option<String>)> {
        let tz = tz_of(row);
        let at_ns = event.map_or(ns(at), |e| e.at_ns);
        let trigger = event.map(|e| {
            format!(
                "{}@{}",
                row.dataset.as_deref().unwrap_or(""),
                e.version.to_hex()
            )
        });
        // The previous run: the latest occurrence that submitted jobs.
        let prev: Option<(i64, i64)> = tx
            .prepare_cached(
                "SELECT job_first, job_count FROM schedule_occurrences
                 WHERE schedule_id = ?1 AND outcome = 'fired' AND job_count > 0
                 ORDER BY seq DESC LIMIT 1",
            )
            .map_err(self.sql())?
            .query_row([row.id], |r| Ok((r.get(0)?, r.get(1)?)))
            .optional()
            .map_err(self.sql())?;
        let live: Vec<(i64, String)> = match prev {
            Some((first, count)) => tx
                .prepare_cached(
                    "SELECT id, state FROM jobs WHERE id >= ?1 AND id < ?2
                     AND state IN ('queued', 'assigned', 'running') ORDER BY id",
                )
                .map_err(self.sql())?
                .query_map([first, first + count], |r| Ok((r.get(0)?, r.get(1)?)))
                .map_err(self.sql())?
                .collect::<rusqlite::Result<_>>()
                .map_err(self.sql())?,
            None => Vec::new(),
        };
        let mut start = StartRule::default();
        if let Some((id, state)) = live.first() {
            match row.overlap {
                Overlap::Skip => {
                    let detail =
                        format!("the previous run (job {id}) is still {state} (overlap skip)");
                    self.record(
                        tx,
                        row,
                        key,
                        at_ns,
                        Outcome::Skipped,
                        &[],
                        Some(&detail),
                        now,
                    )?;
                    return Ok((Outcome::Skipped, Vec::new(), Some(detail)));
                }
                Overlap::Replace => {
                    let reason = format!(
                        "replaced by the next run of schedule {} (overlap replace)",
                        row.name
                    );
                    for (id, _) in &live {
                        let agent: Option<String> = tx
                            .query_row(
                                "SELECT a.agent FROM attempts a JOIN jobs j
                                     ON a.job_id = j.id AND a.n = j.attempts
                                 WHERE j.id = ?1 AND a.state IN ('assigned', 'running')",
                                [id],
                                |r| r.get(0),
                            )
                            .optional()
                            .map_err(self.sql())?;
                        self.queue.cancel_in(tx, JobId(*id), &reason)?;
                        fx.cancelled.push((JobId(*id), agent));
                    }
                }
                Overlap::Queue => {
                    if let Some((first, count)) = prev {
                        start.after = Some((first, count));
                        start.reason = Some(format!(
                            "waiting for the previous run of schedule {} (job {id}) to end",
                            row.name
                        ));
                    }
                }
            }
        }
        if let Some(w) = &row.window {
            let w = Window::parse(w)?;
            let (open, close) = w.bounds(now, &tz);
            start.not_after_ns = Some(ns(close));
            if open > now {
                start.not_before_ns = Some(ns(open));
                start.reason.get_or_insert_with(|| {
                    format!("waiting for its window {w} (opens {})", local(open, &tz))
                });
            }
        }
        // The jobs: the template with its secrets, tagged and told why.
        let mut spec = row.spec.clone();
        let secrets: BTreeMap<String, String> = tx
            .prepare_cached("SELECT name, value FROM schedule_secrets WHERE schedule_id = ?1")
            .map_err(self.sql())?
            .query_map([row.id], |r| Ok((r.get(0)?, r.get(1)?)))
            .map_err(self.sql())?
            .collect::<rusqlite::Result<_>>()
            .map_err(self.sql())?;
        spec.secret_env = secrets;
        let tag = job_tag(&row.name);
        if !spec.tags.contains(&tag) {
            spec.tags.push(tag);
        }
        if spec.name.is_none() {
            spec.name = Some(row.name.clone());
        }
        spec.user.get_or_insert_with(|| row.user.clone());
        spec.env
            .insert("TRAINYARD_SCHEDULE".into(), row.name.clone());
        spec.env.insert(
            "TRAINYARD_SCHEDULE_OCCURRENCE".into(),
            if key.starts_with("manual ") {
                "manual".into()
            } else {
                at.to_string()
            },
        );
        if let (Some(ds), Some(e), Some(t)) = (&row.dataset, event, &trigger) {
            let input = format!("{ds}@{}", e.version.to_hex());
            let same = |i: &String| i == ds || i.starts_with(&format!("{ds}@"));
            match spec.inputs.iter_mut().find(|i| same(i)) {
                Some(i) => *i = input,
                None => spec.inputs.push(input),
            }
            spec.env.insert("TRAINYARD_TRIGGER".into(), t.clone());
            if let Some(tag) = &e.tag {
                spec.env.insert("TRAINYARD_TRIGGER_TAG".into(), tag.clone());
            }
        }
        let specs: Vec<JobSpec> = match &row.sweep {
            Some(grid) => spec.sweep(grid)?,
            None => vec![spec],
        };
        // A job the queue refuses (a `depends_on` job retention forgot)
        // fails this occurrence, not the whole evaluation.
        tx.execute_batch("SAVEPOINT fire").map_err(self.sql())?;
        let mut ids = Vec::with_capacity(specs.len());
        let mut failure: Option<QueueError> = None;
        for s in &specs {
            let r = s
                .validate()
                .map_err(QueueError::from)
                .and_then(|()| self.queue.insert_job_with(tx, s, &start));
            match r {
                Ok(id) => ids.push(id),
                Err(e @ QueueError::Db(_)) => return Err(e.into()),
                Err(e) => {
                    failure = Some(e);
                    break;
                }
            }
        }
        if let Some(e) = failure {
            tx.execute_batch("ROLLBACK TO fire; RELEASE fire")
                .map_err(self.sql())?;
            let detail = format!("its jobs were refused: {e}");
            self.record(
                tx,
                row,
                key,
                at_ns,
                Outcome::Failed,
                &[],
                Some(&detail),
                now,
            )?;
            tracing::warn!(schedule = %row.name, error = %e, "schedule occurrence failed");
            return Ok((Outcome::Failed, Vec::new(), Some(detail)));
        }
        tx.execute_batch("RELEASE fire").map_err(self.sql())?;
        let detail = trigger.map(|t| match event.and_then(|e| e.tag.as_ref()) {
            Some(tag) => format!("triggered by {t} (tag {tag})"),
            None => format!("triggered by {t}"),
        });
        self.record(
            tx,
            row,
            key,
            at_ns,
            Outcome::Fired,
            &ids,
            detail.as_deref(),
            now,
        )?;
        tracing::info!(schedule = %row.name, occurrence = key, jobs = ids.len(), "schedule fired");
        fx.submitted.extend(ids.iter().copied());
        Ok((Outcome::Fired, ids, detail))
    }
}
