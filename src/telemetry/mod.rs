//! GPU telemetry history: the daemon's own SQLite file (`telemetry.db` in
//! the home) with the samples agents ship, rolled up as they age: raw
//! samples for an hour, 1-minute min/mean/max for 30 days, 15-minute for two
//! years (`docs/telemetry-format.md`). `query` reads series back at the
//! resolution a time range calls for; `metrics` writes the Prometheus text
//! exposition format.
//!
//! Every row names the job and attempt that held the GPU when the sample
//! was taken, as the queue's assignments say (the caller passes them in as
//! [`Holder`]s): this module never imports the queue, and never guesses a
//! holder from processes. Time is an argument (`now_ms`) everywhere, so
//! tests move a clock by hand.
//!
//! Compaction is a sequence of steps, each one transaction: aggregate the
//! next range of a finer table into the coarser one (replacing what that
//! range had), move the watermark, commit; then delete what retention lets
//! go, never what has not been rolled up. Replaying a step gives the same
//! rows, so a crash between steps loses nothing and doubles nothing.

mod days;
pub mod metrics;
mod query;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use rusqlite::{params, Connection, OptionalExtension, TransactionBehavior};

use crate::db::{self, DbError};

pub use days::{DayCover, DayRow};
pub use query::{Resolution, Series, Stat, TelemetryPoint, TelemetryQuery, TelemetrySeries};

/// A sample counts as idle when its utilization is below this, percent.
pub const IDLE_BELOW_PCT: u32 = 5;

/// One minute, ms: the first rollup's bucket.
pub const MINUTE_MS: i64 = 60_000;

/// Fifteen minutes, ms: the second rollup's bucket.
pub const QUARTER_MS: i64 = 15 * MINUTE_MS;

/// The schema, one migration per version (`PRAGMA user_version`).
const MIGRATIONS: &[&str] = &[
    // 1: GPUs, raw samples, 1-minute and 15-minute rollups, watermarks.
    "CREATE TABLE gpus (
        id INTEGER PRIMARY KEY,
        host TEXT NOT NULL,
        uuid TEXT NOT NULL,
        idx INTEGER NOT NULL,
        model TEXT NOT NULL,
        mem_total INTEGER NOT NULL,
        first_ms INTEGER NOT NULL,
        last_ms INTEGER NOT NULL,
        UNIQUE (host, uuid)
    );
    CREATE TABLE raw (
        gpu INTEGER NOT NULL,
        t INTEGER NOT NULL,
        dt INTEGER NOT NULL,
        job INTEGER NOT NULL,
        attempt INTEGER NOT NULL,
        util INTEGER,
        mem INTEGER NOT NULL,
        temp INTEGER,
        power INTEGER,
        energy INTEGER,
        de INTEGER,
        others INTEGER NOT NULL,
        PRIMARY KEY (gpu, t)
    ) WITHOUT ROWID;
    CREATE TABLE m1 (
        gpu INTEGER NOT NULL,
        t INTEGER NOT NULL,
        job INTEGER NOT NULL,
        attempt INTEGER NOT NULL,
        cov INTEGER NOT NULL,
        used INTEGER NOT NULL,
        idle INTEGER NOT NULL,
        u_min INTEGER, u_max INTEGER,
        m_min INTEGER NOT NULL, m_mean INTEGER NOT NULL, m_max INTEGER NOT NULL,
        c_min INTEGER, c_mean INTEGER, c_max INTEGER,
        p_min INTEGER, p_mean INTEGER, p_max INTEGER,
        energy INTEGER,
        others INTEGER NOT NULL,
        PRIMARY KEY (gpu, t, job, attempt)
    ) WITHOUT ROWID;
    CREATE TABLE m15 (
        gpu INTEGER NOT NULL,
        t INTEGER NOT NULL,
        job INTEGER NOT NULL,
        attempt INTEGER NOT NULL,
        cov INTEGER NOT NULL,
        used INTEGER NOT NULL,
        idle INTEGER NOT NULL,
        u_min INTEGER, u_max INTEGER,
        m_min INTEGER NOT NULL, m_mean INTEGER NOT NULL, m_max INTEGER NOT NULL,
        c_min INTEGER, c_mean INTEGER, c_max INTEGER,
        p_min INTEGER, p_mean INTEGER, p_max INTEGER,
        energy INTEGER,
        others INTEGER NOT NULL,
        PRIMARY KEY (gpu, t, job, attempt)
    ) WITHOUT ROWID;
    CREATE TABLE marks (
        name TEXT PRIMARY KEY,
        ms INTEGER NOT NULL
    ) WITHOUT ROWID;",
    // 2: daily totals per GPU and holder in the lab's zone (days.rs), and
    // the settings they were built with.
    "CREATE TABLE days (
        day INTEGER NOT NULL,
        gpu INTEGER NOT NULL,
        job INTEGER NOT NULL,
        attempt INTEGER NOT NULL,
        day_end INTEGER NOT NULL,
        cov INTEGER NOT NULL,
        used INTEGER NOT NULL,
        idle INTEGER NOT NULL,
        energy INTEGER,
        m_max INTEGER NOT NULL,
        PRIMARY KEY (day, gpu, job, attempt)
    ) WITHOUT ROWID;
    CREATE TABLE settings (
        name TEXT PRIMARY KEY,
        value TEXT NOT NULL
    ) WITHOUT ROWID;",
];

/// The columns of a rollup row, in table order.
const ROLLUP_COLUMNS: &str = "gpu, t, job, attempt, cov, used, idle, u_min, u_max, m_min, m_mean, \
     m_max, c_min, c_mean, c_max, p_min, p_mean, p_max, energy, others";

/// A time range over every GPU as one index seek per GPU: the tables are
/// keyed by (gpu, t), so a bare `t` range would scan them whole.
const PER_GPU: &str = "gpu IN (SELECT id FROM gpus)";

/// Raw samples in `[from, to)` ms as 1-minute rollup rows.
fn raw_to_m1(from: &str, to: &str) -> String {
    format!(
        "SELECT gpu, t / {MINUTE_MS} AS b, job, attempt,
            sum(dt), sum(coalesce(util, 0) * dt) / 100,
            sum(CASE WHEN util < {IDLE_BELOW_PCT} THEN dt ELSE 0 END),
            min(util), max(util),
            min(mem), CAST(round(sum(mem * dt) * 1.0 / sum(dt)) AS INTEGER), max(mem),
            min(temp), CAST(round(sum(temp * dt) * 1.0 / sum(CASE WHEN temp IS NOT NULL THEN dt END)) AS INTEGER), max(temp),
            min(power),
            CAST(round(sum(power * dt) * 1.0 / sum(CASE WHEN power IS NOT NULL THEN dt END)) AS INTEGER),
            max(power),
            sum(de), max(others)
         FROM raw WHERE {PER_GPU} AND t >= {from} AND t < {to}
         GROUP BY gpu, b, job, attempt"
    )
}

/// Rows shaped like `m1` from `source` (a table or subquery) folded into
/// buckets of `factor` of theirs.
fn fold(source: &str, factor: i64) -> String {
    format!(
        "SELECT gpu, t / {factor} AS b, job, attempt,
            sum(cov), sum(used), sum(idle), min(u_min), max(u_max),
            min(m_min), CAST(round(sum(m_mean * cov) * 1.0 / sum(cov)) AS INTEGER), max(m_max),
            min(c_min), CAST(round(sum(c_mean * cov) * 1.0 / sum(CASE WHEN c_mean IS NOT NULL THEN cov END)) AS INTEGER),
            max(c_max), min(p_min),
            CAST(round(sum(p_mean * cov) * 1.0 / sum(CASE WHEN p_mean IS NOT NULL THEN cov END)) AS INTEGER),
            max(p_max), sum(energy), max(others)
         FROM ({source}) GROUP BY gpu, b, job, attempt"
    )
}

/// How long each resolution is kept, and when a minute is final enough to
/// roll up.
#[derive(Debug, Clone)]
pub struct Retention {
    /// Raw samples (1 hour).
    pub raw: Duration,
    /// 1-minute rollups (30 days).
    pub minute: Duration,
    /// 15-minute rollups (2 years, 730 days).
    pub quarter: Duration,
    /// A minute is rolled up this long after it ended (1 minute), so
    /// samples still in an agent's buffer usually land before; later ones
    /// make the daemon roll the minute up again.
    pub settle: Duration,
}

impl Default for Retention {
    fn default() -> Retention {
        Retention {
            raw: Duration::from_secs(3600),
            minute: Duration::from_secs(30 * 86_400),
            quarter: Duration::from_secs(730 * 86_400),
            settle: Duration::from_secs(60),
        }
    }
}

/// Telemetry could not be stored or read.
#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    /// The database.
    #[error(transparent)]
    Db(#[from] DbError),
    /// A query that cannot be answered as asked.
    #[error("{0}")]
    BadQuery(String),
}

type Result<T> = std::result::Result<T, TelemetryError>;

/// A GPU as the samples name it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GpuInfo {
    /// The agent that reports it (unique in the lab).
    pub host: String,
    /// Its UUID.
    pub uuid: String,
    /// Its NVML index on the host.
    pub index: u32,
    /// Its model name.
    pub model: String,
    /// Its total memory, MiB.
    pub mem_total_mib: u64,
}

/// One sample of one GPU, in the daemon's clock.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Sample {
    /// When it was taken, ms since the epoch.
    pub t_ms: i64,
    /// The time it stands for, ms: `(t_ms - dt_ms, t_ms]`.
    pub dt_ms: u32,
    /// Utilization, %.
    pub util_pct: Option<u32>,
    /// Memory used, MiB.
    pub mem_used_mib: u64,
    /// Temperature, °C.
    pub temp_c: Option<u32>,
    /// Power, W.
    pub power_w: Option<u32>,
    /// The energy counter, mJ.
    pub energy_mj: Option<u64>,
    /// Energy used over `dt_ms`, mJ.
    pub interval_energy_mj: Option<u64>,
    /// Processes on the GPU that are not the holding attempt's (foreign
    /// ones, or another attempt's).
    pub others: u32,
}

/// An attempt's hold on a GPU, from the queue's assignment: `job` and
/// `attempt` held `uuid` on the host from `from_ms` until `until_ms`
/// (`None`: still holds it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Holder {
    /// The GPU.
    pub uuid: String,
    /// The job.
    pub job: i64,
    /// The attempt.
    pub attempt: u32,
    /// Assignment, ms since the epoch.
    pub from_ms: i64,
    /// End, ms since the epoch.
    pub until_ms: Option<i64>,
}

/// The hold on `uuid` at `t_ms`, if an attempt held it.
fn hold_at<'a>(holders: &'a [Holder], uuid: &str, t_ms: i64) -> Option<&'a Holder> {
    holders
        .iter()
        .find(|h| h.uuid == uuid && h.from_ms <= t_ms && h.until_ms.is_none_or(|u| t_ms < u))
}

/// Which attempt held `uuid` at `t_ms`: `(0, 0)` for none.
pub fn holder_at(holders: &[Holder], uuid: &str, t_ms: i64) -> (i64, u32) {
    hold_at(holders, uuid, t_ms).map_or((0, 0), |h| (h.job, h.attempt))
}

/// What an ingest kept and refused.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct IngestReport {
    /// Samples stored (a repeated one replaces the first).
    pub stored: u64,
    /// Samples refused: older than the raw retention (their minute may be
    /// rolled up already without them), or more than 5 minutes ahead.
    pub refused: u64,
}

/// What one compaction did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CompactReport {
    /// 1-minute rows written.
    pub minute_rows: u64,
    /// 15-minute rows written.
    pub quarter_rows: u64,
    /// Daily rows written.
    pub day_rows: u64,
    /// Rows deleted by retention (all tables).
    pub deleted: u64,
    /// Transactions committed.
    pub steps: u32,
}

/// Watermark names in `marks`: everything before `m1_done` (ms) is in
/// `m1`, before `m15_done` in `m15`; `*_redo` is the start of the earliest
/// bucket to roll up again because samples arrived late.
const M1_DONE: &str = "m1_done";
const M15_DONE: &str = "m15_done";
const M1_REDO: &str = "m1_redo";
const M15_REDO: &str = "m15_redo";

/// The most one compaction step rolls up (bounds a transaction after a
/// long pause).
const STEP_MS: i64 = 6 * 3600 * 1000;

/// The telemetry database.
pub struct Telemetry {
    path: PathBuf,
    conn: Mutex<Connection>,
    retention: Retention,
    /// The zone daily totals are kept in, if any ([`Telemetry::with_day_zone`]).
    day_zone: Option<jiff::tz::TimeZone>,
}

fn floor(t: i64, step: i64) -> i64 {
    t.div_euclid(step) * step
}

fn ms(d: Duration) -> i64 {
    d.as_millis().min(i64::MAX as u128) as i64
}

impl Telemetry {
    /// Open (creating and migrating) the database at `path`.
    pub fn open(path: &Path, retention: Retention) -> Result<Telemetry> {
        let mut conn = db::open(path)?;
        db::migrate(&mut conn, path, MIGRATIONS)?;
        Ok(Telemetry {
            path: path.to_path_buf(),
            conn: Mutex::new(conn),
            retention,
            day_zone: None,
        })
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The retention in force.
    pub fn retention(&self) -> &Retention {
        &self.retention
    }

    fn conn(&self) -> MutexGuard<'_, Connection> {
        // A panic while holding the lock leaves SQLite consistent (the
        // transaction rolls back on drop), so a poisoned lock is usable.
        self.conn.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn sql(&self) -> impl Fn(rusqlite::Error) -> TelemetryError + '_ {
        move |e| TelemetryError::Db(db::err(&self.path)(e))
    }

    /// Store samples of GPUs of one host, each with the attempt that held
    /// its GPU at its time (from `holders`), in one transaction.
    pub fn ingest(
        &self,
        samples: &[(GpuInfo, Sample)],
        holders: &[Holder],
        now_ms: i64,
    ) -> Result<IngestReport> {
        let oldest = floor(now_ms - ms(self.retention.raw), MINUTE_MS) + MINUTE_MS;
        let newest = now_ms + 5 * MINUTE_MS;
        let mut report = IngestReport::default();
        let mut conn = self.conn();
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(self.sql())?;
        let m1_done = mark(&tx, M1_DONE).map_err(self.sql())?;
        let mut redo = i64::MAX;
        {
            let mut upsert = tx
                .prepare_cached(
                    "INSERT INTO gpus (host, uuid, idx, model, mem_total, first_ms, last_ms)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?6)
                     ON CONFLICT (host, uuid) DO UPDATE SET idx = ?3, model = ?4,
                        mem_total = ?5, last_ms = max(last_ms, ?6)
                     RETURNING id",
                )
                .map_err(self.sql())?;
            let mut insert = tx
                .prepare_cached(
                    "INSERT OR REPLACE INTO raw
                     (gpu, t, dt, job, attempt, util, mem, temp, power, energy, de, others)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)",
                )
                .map_err(self.sql())?;
            let mut seen: HashMap<(String, String), i64> = HashMap::new();
            for (g, s) in samples {
                if s.t_ms < oldest || s.t_ms > newest {
                    report.refused += 1;
                    continue;
                }
                let key = (g.host.clone(), g.uuid.clone());
                let id = match seen.get(&key) {
                    Some(id) => *id,
                    None => {
                        // Once per GPU and batch: keeps its model, memory
                        // and last sample time current.
                        let id: i64 = upsert
                            .query_row(
                                params![
                                    g.host,
                                    g.uuid,
                                    g.index,
                                    g.model,
                                    g.mem_total_mib as i64,
                                    s.t_ms
                                ],
                                |r| r.get(0),
                            )
                            .map_err(self.sql())?;
                        seen.insert(key, id);
                        id
                    }
                };
                let hold = hold_at(holders, &g.uuid, s.t_ms);
                let (job, attempt) = hold.map_or((0, 0), |h| (h.job, h.attempt));
                // A holder's first sample counts from its assignment on,
                // so its time never exceeds the time it held the GPU.
                let dt = hold.map_or(s.dt_ms as i64, |h| (s.dt_ms as i64).min(s.t_ms - h.from_ms));
                // The interval's energy, in proportion.
                let de = s.interval_energy_mj.map(|e| {
                    if dt < s.dt_ms as i64 {
                        (e as i64) * dt / (s.dt_ms as i64).max(1)
                    } else {
                        e as i64
                    }
                });
                insert
                    .execute(params![
                        id,
                        s.t_ms,
                        dt,
                        job,
                        attempt,
                        s.util_pct,
                        s.mem_used_mib as i64,
                        s.temp_c,
                        s.power_w,
                        s.energy_mj.map(|e| e as i64),
                        de,
                        s.others,
                    ])
                    .map_err(self.sql())?;
                report.stored += 1;
                if s.t_ms < m1_done {
                    redo = redo.min(floor(s.t_ms, MINUTE_MS));
                }
            }
        }
        if redo != i64::MAX {
            lower_mark(&tx, M1_REDO, redo).map_err(self.sql())?;
        }
        tx.commit().map_err(self.sql())?;
        Ok(report)
    }

    /// Brings the stored samples of `h.uuid` on `host` in line with the
    /// hold as the queue now knows it. Samples are attributed when they
    /// arrive, from the holds known then; an attempt that began and ended
    /// between two batches, or whose end the daemon learnt after samples
    /// from past it arrived, was attributed wrongly. Unheld samples inside
    /// `[from, until)` are claimed (the first one clipped to begin at the
    /// assignment), and samples given to the attempt outside it are freed.
    /// Minutes already rolled up from changed samples are redone. Returns
    /// the samples changed.
    pub fn reattribute(&self, host: &str, h: &Holder) -> Result<u64> {
        let mut conn = self.conn();
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(self.sql())?;
        let gpu: Option<i64> = tx
            .query_row(
                "SELECT id FROM gpus WHERE host = ?1 AND uuid = ?2",
                params![host, h.uuid],
                |r| r.get(0),
            )
            .optional()
            .map_err(self.sql())?;
        let Some(gpu) = gpu else {
            return Ok(0);
        };
        let until = h.until_ms.unwrap_or(i64::MAX);
        let first: Option<i64> = tx
            .query_row(
                "SELECT min(t) FROM raw WHERE gpu = ?1 AND (
                    (t >= ?2 AND t < ?3 AND job = 0)
                    OR (job = ?4 AND attempt = ?5 AND (t < ?2 OR t >= ?3)))",
                params![gpu, h.from_ms, until, h.job, h.attempt],
                |r| r.get(0),
            )
            .map_err(self.sql())?;
        let Some(first) = first else {
            return Ok(0);
        };
        let claimed = tx
            .execute(
                "UPDATE raw SET job = ?4, attempt = ?5, dt = min(dt, t - ?2),
                    de = CASE WHEN t - ?2 < dt THEN de * (t - ?2) / max(dt, 1) ELSE de END
                 WHERE gpu = ?1 AND t >= ?2 AND t < ?3 AND job = 0",
                params![gpu, h.from_ms, until, h.job, h.attempt],
            )
            .map_err(self.sql())?;
        let freed = tx
            .execute(
                "UPDATE raw SET job = 0, attempt = 0
                 WHERE gpu = ?1 AND job = ?4 AND attempt = ?5 AND (t < ?2 OR t >= ?3)",
                params![gpu, h.from_ms, until, h.job, h.attempt],
            )
            .map_err(self.sql())?;
        if first < mark(&tx, M1_DONE).map_err(self.sql())? {
            lower_mark(&tx, M1_REDO, floor(first, MINUTE_MS)).map_err(self.sql())?;
        }
        tx.commit().map_err(self.sql())?;
        Ok((claimed + freed) as u64)
    }

    /// Roll up what is due and apply retention, one transaction per step.
    pub fn compact(&self, now_ms: i64) -> Result<CompactReport> {
        let mut report = CompactReport::default();
        // Minutes, from raw samples.
        let settled = floor(now_ms - ms(self.retention.settle), MINUTE_MS);
        loop {
            let mut conn = self.conn();
            let tx = conn
                .transaction_with_behavior(TransactionBehavior::Immediate)
                .map_err(self.sql())?;
            let done = mark(&tx, M1_DONE).map_err(self.sql())?;
            let redo = mark_or(&tx, M1_REDO, i64::MAX).map_err(self.sql())?;
            let start = if done == 0 {
                // The first compaction starts at the oldest sample.
                match tx
                    .query_row("SELECT min(t) FROM raw", [], |r| r.get::<_, Option<i64>>(0))
                    .map_err(self.sql())?
                {
                    Some(t) => floor(t, MINUTE_MS),
                    None => break,
                }
            } else {
                done.min(redo)
            };
            if start >= settled {
                break;
            }
            let end = settled.min(start + STEP_MS);
            report.minute_rows += self.replace_range(&tx, "m1", start, end, MINUTE_MS, None)?;
            set_mark(&tx, M1_DONE, done.max(end)).map_err(self.sql())?;
            self.advance_redo(&tx, M1_REDO, redo, end, done)?;
            // Quarters already rolled up from these minutes are redone.
            let m15_done = mark(&tx, M15_DONE).map_err(self.sql())?;
            if start < m15_done {
                lower_mark(&tx, M15_REDO, floor(start, QUARTER_MS)).map_err(self.sql())?;
            }
            tx.commit().map_err(self.sql())?;
            report.steps += 1;
        }
        // Quarters, from whole quarters of minutes.
        loop {
            let mut conn = self.conn();
            let tx = conn
                .transaction_with_behavior(TransactionBehavior::Immediate)
                .map_err(self.sql())?;
            let m1_done = mark(&tx, M1_DONE).map_err(self.sql())?;
            let ready = floor(m1_done, QUARTER_MS);
            let done = mark(&tx, M15_DONE).map_err(self.sql())?;
            let redo = mark_or(&tx, M15_REDO, i64::MAX).map_err(self.sql())?;
            let start = if done == 0 {
                match tx
                    .query_row("SELECT min(t) FROM m1", [], |r| r.get::<_, Option<i64>>(0))
                    .map_err(self.sql())?
                {
                    Some(t) => floor(t * MINUTE_MS, QUARTER_MS),
                    None => break,
                }
            } else {
                done.min(redo)
            };
            if start >= ready {
                break;
            }
            let end = ready.min(start + 4 * STEP_MS);
            let src = format!(
                "SELECT * FROM m1 WHERE {PER_GPU} AND t >= {} AND t < {}",
                start / MINUTE_MS,
                end / MINUTE_MS
            );
            report.quarter_rows +=
                self.replace_range(&tx, "m15", start, end, QUARTER_MS, Some(&src))?;
            self.redo_days_from(&tx, start)?;
            set_mark(&tx, M15_DONE, done.max(end)).map_err(self.sql())?;
            self.advance_redo(&tx, M15_REDO, redo, end, done)?;
            tx.commit().map_err(self.sql())?;
            report.steps += 1;
        }
        // Days, from quarters.
        let (day_rows, day_steps) = self.compact_days()?;
        report.day_rows += day_rows;
        report.steps += day_steps;
        // Retention: never past what has been rolled up.
        let r = &self.retention;
        let mut conn = self.conn();
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(self.sql())?;
        let m1_done = mark(&tx, M1_DONE).map_err(self.sql())?;
        let m15_done = mark(&tx, M15_DONE).map_err(self.sql())?;
        let raw_before = (now_ms - ms(r.raw)).min(m1_done);
        let m1_before = floor((now_ms - ms(r.minute)).min(m15_done), MINUTE_MS) / MINUTE_MS;
        let m15_before = floor(now_ms - ms(r.quarter), QUARTER_MS) / QUARTER_MS;
        report.deleted += tx
            .execute(
                &format!("DELETE FROM raw WHERE {PER_GPU} AND t < ?1"),
                [raw_before],
            )
            .map_err(self.sql())? as u64;
        report.deleted += tx
            .execute(
                &format!("DELETE FROM m1 WHERE {PER_GPU} AND t < ?1"),
                [m1_before],
            )
            .map_err(self.sql())? as u64;
        report.deleted += tx
            .execute(
                &format!("DELETE FROM m15 WHERE {PER_GPU} AND t < ?1"),
                [m15_before],
            )
            .map_err(self.sql())? as u64;
        // A day goes with its last quarter.
        report.deleted += tx
            .execute(
                "DELETE FROM days WHERE day < ?1 AND day_end <= ?1",
                [m15_before * QUARTER_MS],
            )
            .map_err(self.sql())? as u64;
        tx.commit().map_err(self.sql())?;
        report.steps += 1;
        Ok(report)
    }

    /// After rolling up `[.., end)`: a redo that started before `end` goes
    /// on from `end` while that is before the old watermark `done`, else it
    /// is finished.
    fn advance_redo(
        &self,
        tx: &rusqlite::Transaction<'_>,
        name: &str,
        redo: i64,
        end: i64,
        done: i64,
    ) -> Result<()> {
        if redo < end {
            if end < done {
                set_mark(tx, name, end).map_err(self.sql())?;
            } else {
                tx.execute("DELETE FROM marks WHERE name = ?1", [name])
                    .map_err(self.sql())?;
            }
        }
        Ok(())
    }

    /// Replace the rows of rollup `table` for buckets in `[start, end)` ms
    /// with the aggregate of the finer level (raw samples when `source` is
    /// `None`).
    fn replace_range(
        &self,
        tx: &rusqlite::Transaction<'_>,
        table: &str,
        start: i64,
        end: i64,
        bucket_ms: i64,
        source: Option<&str>,
    ) -> Result<u64> {
        tx.execute(
            &format!("DELETE FROM {table} WHERE {PER_GPU} AND t >= ?1 AND t < ?2"),
            [start / bucket_ms, end / bucket_ms],
        )
        .map_err(self.sql())?;
        let select = match source {
            None => raw_to_m1(&start.to_string(), &end.to_string()),
            Some(src) => fold(src, QUARTER_MS / MINUTE_MS),
        };
        let n = tx
            .execute(
                &format!("INSERT INTO {table} ({ROLLUP_COLUMNS}) {select}"),
                [],
            )
            .map_err(self.sql())?;
        Ok(n as u64)
    }

    /// The GPU ids and descriptions, for queries.
    fn gpus(&self, conn: &Connection) -> Result<Vec<(i64, GpuInfo)>> {
        let mut st = conn
            .prepare_cached(
                "SELECT id, host, uuid, idx, model, mem_total FROM gpus ORDER BY host, idx, uuid",
            )
            .map_err(self.sql())?;
        let rows = st
            .query_map([], |r| {
                Ok((
                    r.get(0)?,
                    GpuInfo {
                        host: r.get(1)?,
                        uuid: r.get(2)?,
                        index: r.get(3)?,
                        model: r.get(4)?,
                        mem_total_mib: r.get::<_, i64>(5)? as u64,
                    },
                ))
            })
            .map_err(self.sql())?
            .collect::<rusqlite::Result<_>>()
            .map_err(self.sql())?;
        Ok(rows)
    }

    /// Every GPU's model name by UUID, as its samples last named it.
    pub fn models(&self) -> Result<HashMap<String, String>> {
        let conn = self.conn();
        Ok(self
            .gpus(&conn)?
            .into_iter()
            .map(|(_, g)| (g.uuid, g.model))
            .collect())
    }

    /// The watermarks: (everything before this is in `m1`, in `m15`), ms.
    pub fn watermarks(&self) -> Result<(i64, i64)> {
        let conn = self.conn();
        Ok((
            mark(&conn, M1_DONE).map_err(self.sql())?,
            mark(&conn, M15_DONE).map_err(self.sql())?,
        ))
    }

    /// Rows in each table: (raw, m1, m15).
    pub fn counts(&self) -> Result<(u64, u64, u64)> {
        let conn = self.conn();
        let n = |t: &str| -> Result<u64> {
            conn.query_row(&format!("SELECT count(*) FROM {t}"), [], |r| {
                r.get::<_, i64>(0)
            })
            .map(|n| n as u64)
            .map_err(self.sql())
        };
        Ok((n("raw")?, n("m1")?, n("m15")?))
    }

    /// Bytes of pages each table (with its indexes) occupies, from SQLite's
    /// `dbstat`, largest first (for size measurements).
    pub fn table_bytes(&self) -> Result<Vec<(String, u64)>> {
        let conn = self.conn();
        let mut st = conn
            .prepare("SELECT name, sum(pgsize) FROM dbstat GROUP BY name ORDER BY 2 DESC")
            .map_err(self.sql())?;
        let rows = st
            .query_map([], |r| Ok((r.get(0)?, r.get::<_, i64>(1)? as u64)))
            .map_err(self.sql())?
            .collect::<rusqlite::Result<_>>()
            .map_err(self.sql())?;
        Ok(rows)
    }

    /// Checkpoint the WAL into the database file (for size measurements).
    pub fn checkpoint(&self) -> Result<()> {
        self.conn()
            .execute_batch("PRAGMA wal_checkpoint(TRUNCATE);")
            .map_err(self.sql())
    }
}

fn mark_or(conn: &Connection, name: &str, default: i64) -> rusqlite::Result<i64> {
    Ok(conn
        .query_row("SELECT ms FROM marks WHERE name = ?1", [name], |r| r.get(0))
        .optional()?
        .unwrap_or(default))
}

fn mark(conn: &Connection, name: &str) -> rusqlite::Result<i64> {
    mark_or(conn, name, 0)
}

fn set_mark(conn: &Connection, name: &str, ms: i64) -> rusqlite::Result<()> {
    conn.execute(
        "INSERT INTO marks (name, ms) VALUES (?1, ?2) ON CONFLICT (name) DO UPDATE SET ms = ?2",
        params![name, ms],
    )
    .map(|_| ())
}

fn lower_mark(conn: &Connection, name: &str, ms: i64) -> rusqlite::Result<()> {
    conn.execute(
        "INSERT INTO marks (name, ms) VALUES (?1, ?2)
         ON CONFLICT (name) DO UPDATE SET ms = min(ms, ?2)",
        params![name, ms],
    )
    .map(|_| ())
}

#[cfg(test)]
mod tests;
