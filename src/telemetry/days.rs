//! Daily totals per GPU and holder, in the lab's time zone: what a usage
//! report over months reads instead of every quarter-hour bucket.
//!
//! The `days` table is derived from `m15` only, like `m15` from `m1`: a
//! compaction step recomputes whole local days from the quarters rolled up
//! so far (the last day may be partial) and moves the `days_done`
//! watermark; quarters rolled up again (late samples) lower `days_redo`.
//! Rows of days that end at or before `days_done` are final. The zone is
//! recorded in `settings`; opening with another zone drops the table's rows
//! and rebuilds them from the quarters (two years are kept). A zone whose
//! day boundaries are not whole quarters of an hour gets no daily table:
//! quarter buckets would straddle its days, so readers fall back to them.

use std::collections::HashMap;
use std::sync::Arc;

use jiff::tz::TimeZone;
use jiff::Timestamp;
use rusqlite::{params, OptionalExtension, Transaction};

use super::{
    floor, lower_mark, mark, mark_or, set_mark, Result, Telemetry, TelemetryError, M15_DONE,
    PER_GPU, QUARTER_MS,
};

/// Everything before this (ms) is in `days`.
pub(super) const DAYS_DONE: &str = "days_done";
/// The start of the earliest day to recompute.
pub(super) const DAYS_REDO: &str = "days_redo";
/// The `settings` key of the zone the days are in.
const DAYS_ZONE: &str = "days_zone";
/// The most days one step recomputes (bounds a transaction).
const STEP_DAYS: i64 = 31;

/// One GPU's day (or the part of it rolled up so far) for one holder.
#[derive(Debug, Clone, PartialEq)]
pub struct DayRow {
    /// The GPU's UUID.
    pub uuid: Arc<str>,
    /// The day's start, ms since the epoch.
    pub day_ms: i64,
    /// The day's end (the next day's start).
    pub end_ms: i64,
    /// The job (0: no holder).
    pub job: i64,
    /// The attempt.
    pub attempt: u32,
    /// Time the samples covered, ms.
    pub covered_ms: i64,
    /// Utilization integrated over time, ms.
    pub used_ms: i64,
    /// Time under the idle threshold, ms.
    pub idle_ms: i64,
    /// Energy, mJ, where the samples had it.
    pub energy_mj: Option<i64>,
    /// Peak memory used, MiB.
    pub mem_max_mib: i64,
}

/// Whole days of a zone that the daily table answers for.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct DayCover {
    /// The first day's start...
    pub from_ms: i64,
    /// ...and the last day's end: `[from_ms, to_ms)` is whole days.
    pub to_ms: i64,
    /// The rows of held GPUs in it.
    pub rows: Vec<DayRow>,
}

/// The start of the day of `tz` holding `t_ms`, and of the next day.
fn day_bounds(tz: &TimeZone, t_ms: i64) -> Result<(i64, i64)> {
    let bad = |e: jiff::Error| TelemetryError::BadQuery(format!("day of {t_ms} ms: {e}"));
    let z = Timestamp::from_millisecond(t_ms)
        .map_err(bad)?
        .to_zoned(tz.clone());
    let start = z.start_of_day().map_err(bad)?;
    let next = start.tomorrow().map_err(bad)?.start_of_day().map_err(bad)?;
    Ok((
        start.timestamp().as_millisecond(),
        next.timestamp().as_millisecond(),
    ))
}

/// Whether every day boundary of `tz` over the two years around now is a
/// whole quarter of an hour (all of today's zones; not local mean times).
fn quarter_aligned(tz: &TimeZone) -> bool {
    let now = Timestamp::now().as_millisecond();
    let mut t = now - 730 * 86_400_000;
    while t < now + 30 * 86_400_000 {
        match day_bounds(tz, t) {
            Ok((a, b)) if a % QUARTER_MS == 0 && b % QUARTER_MS == 0 => t = b,
            _ => return false,
        }
    }
    true
}

impl Telemetry {
    /// Keep daily totals in `tz` (the lab's zone). With another zone than
    /// the table's, its rows are dropped and rebuilt by compaction.
    pub fn with_day_zone(mut self, tz: &TimeZone) -> Result<Telemetry> {
        let name = tz
            .iana_name()
            .filter(|_| quarter_aligned(tz))
            .map(str::to_string);
        let mut conn = self.conn();
        let tx = conn.transaction().map_err(self.sql())?;
        let stored: Option<String> = tx
            .query_row(
                "SELECT value FROM settings WHERE name = ?1",
                [DAYS_ZONE],
                |r| r.get(0),
            )
            .optional()
            .map_err(self.sql())?;
        if stored != name {
            tx.execute("DELETE FROM days", []).map_err(self.sql())?;
            tx.execute(
                "DELETE FROM marks WHERE name IN (?1, ?2)",
                [DAYS_DONE, DAYS_REDO],
            )
            .map_err(self.sql())?;
            match &name {
                Some(n) => tx.execute(
                    "INSERT INTO settings (name, value) VALUES (?1, ?2)
                     ON CONFLICT (name) DO UPDATE SET value = ?2",
                    [DAYS_ZONE, n],
                ),
                None => tx.execute("DELETE FROM settings WHERE name = ?1", [DAYS_ZONE]),
            }
            .map_err(self.sql())?;
            if let Some(n) = &name {
                tracing::info!(zone = %n, "telemetry: daily totals (re)built in this zone");
            }
        }
        tx.commit().map_err(self.sql())?;
        drop(conn);
        self.day_zone = name.map(|_| tz.clone());
        Ok(self)
    }

    /// Recompute the days of the quarters rolled up since the last step,
    /// a month at a time; returns the rows written.
    pub(super) fn compact_days(&self) -> Result<(u64, u32)> {
        let Some(tz) = &self.day_zone else {
            return Ok((0, 0));
        };
        let (mut rows, mut steps) = (0u64, 0u32);
        loop {
            let mut conn = self.conn();
            let tx = conn
                .transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)
                .map_err(self.sql())?;
            let ready = mark(&tx, M15_DONE).map_err(self.sql())?;
            let done = mark(&tx, DAYS_DONE).map_err(self.sql())?;
            let redo = mark_or(&tx, DAYS_REDO, i64::MAX).map_err(self.sql())?;
            let start = if done == 0 {
                match tx
                    .query_row("SELECT min(t) FROM m15", [], |r| r.get::<_, Option<i64>>(0))
                    .map_err(self.sql())?
                {
                    Some(t) => t * QUARTER_MS,
                    None => break,
                }
            } else {
                done.min(redo)
            };
            if start >= ready {
                break;
            }
            let (first, _) = day_bounds(tz, start)?;
            let end = ready.min(first + STEP_DAYS * 86_400_000);
            rows += self.replace_days(&tx, tz, first, end)?;
            set_mark(&tx, DAYS_DONE, done.max(end)).map_err(self.sql())?;
            self.advance_redo(&tx, DAYS_REDO, redo, end, done)?;
            tx.commit().map_err(self.sql())?;
            steps += 1;
        }
        Ok((rows, steps))
    }

    /// Replace the days from `first` (a day's start) with the quarters in
    /// `[first, end)`.
    fn replace_days(
        &self,
        tx: &Transaction<'_>,
        tz: &TimeZone,
        first: i64,
        end: i64,
    ) -> Result<u64> {
        tx.execute(
            "DELETE FROM days WHERE day >= ?1 AND day < ?2",
            [first, end],
        )
        .map_err(self.sql())?;
        let mut insert = tx
            .prepare_cached(&format!(
                "INSERT INTO days (day, gpu, job, attempt, day_end, cov, used, idle, energy, m_max)
                 SELECT ?1, gpu, job, attempt, ?2, sum(cov), sum(used), sum(idle), sum(energy),
                        max(m_max)
                 FROM m15 WHERE {PER_GPU} AND t >= ?3 AND t < ?4
                 GROUP BY gpu, job, attempt"
            ))
            .map_err(self.sql())?;
        let mut n = 0u64;
        let mut d = first;
        while d < end {
            let (a, b) = day_bounds(tz, d)?;
            n += insert
                .execute(params![a, b, a / QUARTER_MS, b.min(end) / QUARTER_MS])
                .map_err(self.sql())? as u64;
            d = b;
        }
        Ok(n)
    }

    /// The quarters of `[start, ..)` are being rolled up again: so are
    /// their days.
    pub(super) fn redo_days_from(&self, tx: &Transaction<'_>, start: i64) -> Result<()> {
        if self.day_zone.is_some() && start < mark(tx, DAYS_DONE).map_err(self.sql())? {
            lower_mark(tx, DAYS_REDO, floor(start, QUARTER_MS)).map_err(self.sql())?;
        }
        Ok(())
    }

    /// The held GPUs' days of `tz` that lie wholly in `[since_ms,
    /// until_ms)` and are final, or `None` when the table is not kept in
    /// `tz` (the caller reads quarters instead).
    pub fn day_rows(
        &self,
        tz: &TimeZone,
        since_ms: i64,
        until_ms: i64,
    ) -> Result<Option<DayCover>> {
        let Some(kept) = &self.day_zone else {
            return Ok(None);
        };
        if kept.iana_name() != tz.iana_name() {
            return Ok(None);
        }
        let conn = self.conn();
        let done = mark(&conn, DAYS_DONE).map_err(self.sql())?;
        let (a, b) = day_bounds(tz, since_ms)?;
        let from = if a == since_ms { a } else { b };
        let limit = until_ms.min(done);
        let (last, next) = day_bounds(tz, limit)?;
        let to = if next == limit { next } else { last };
        if from >= to {
            return Ok(Some(DayCover {
                from_ms: from,
                to_ms: from,
                rows: Vec::new(),
            }));
        }
        // GPU ids to UUIDs once, not a join and a string per row.
        let uuids: HashMap<i64, Arc<str>> = self
            .gpus(&conn)?
            .into_iter()
            .map(|(id, g)| (id, Arc::from(g.uuid)))
            .collect();
        let mut st = conn
            .prepare_cached(
                "SELECT gpu, day, day_end, job, attempt, cov, used, idle, energy, m_max
                 FROM days WHERE day >= ?1 AND day < ?2 AND job != 0",
            )
            .map_err(self.sql())?;
        let rows = st
            .query_map([from, to], |r| {
                Ok(DayRow {
                    uuid: uuids
                        .get(&r.get::<_, i64>(0)?)
                        .cloned()
                        .unwrap_or_else(|| Arc::from("")),
                    day_ms: r.get(1)?,
                    end_ms: r.get(2)?,
                    job: r.get(3)?,
                    attempt: r.get(4)?,
                    covered_ms: r.get(5)?,
                    used_ms: r.get(6)?,
                    idle_ms: r.get(7)?,
                    energy_mj: r.get(8)?,
                    mem_max_mib: r.get(9)?,
                })
            })
            .map_err(self.sql())?
            .collect::<rusqlite::Result<Vec<_>>>()
            .map_err(self.sql())?;
        Ok(Some(DayCover {
            from_ms: from,
            to_ms: to,
            rows,
        }))
    }
}
