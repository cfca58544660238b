//! `GET /api/v1/usage`: GPU-hours from the queue's holdings, the indexed
//! wandb runs and the GPUs' samples. `usage` owns the accounting and the
//! reconciliation; this reads the query and the databases and translates.

use std::collections::HashMap;
use std::sync::Arc;

use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::Json;
use jiff::Timestamp;
use serde::Deserialize;

use super::coord::Coord;
use super::error::{blocking, ApiError, ApiResult};
use crate::api::{UsageAnswer, UsageRow};
use crate::telemetry::{Resolution, TelemetryQuery};
use crate::usage::{self, Dim, Period, Policy, UsageError};
use crate::wandb::index::RunIndex;
use crate::wandb::usage::run_holdings;

impl From<UsageError> for ApiError {
    fn from(e: UsageError) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, "bad_request", e.to_string())
    }
}

/// The query string.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct UsageQuery {
    /// Comma-separated dimensions.
    by: Option<String>,
    since: Option<String>,
    until: Option<String>,
    period: Option<Period>,
    /// Overrides the lab's zone.
    timezone: Option<String>,
}

/// The default range: the last 30 days.
const DEFAULT_SPAN_MS: i64 = 30 * 24 * 3600 * 1000;

pub(crate) async fn usage(
    State(c): State<Arc<Coord>>,
    Query(q): Query<UsageQuery>,
) -> ApiResult<Json<UsageAnswer>> {
    Ok(Json(blocking(&c, move |c| answer(c, &q)).await?))
}

fn answer(c: &Coord, q: &UsageQuery) -> ApiResult<UsageAnswer> {
    let by = match q.by.as_deref().map(str::trim) {
        None | Some("") => Vec::new(),
        Some(s) => s
            .split(',')
            .map(|d| d.trim().parse::<Dim>())
            .collect::<Result<Vec<_>, _>>()?,
    };
    let tz = match &q.timezone {
        Some(z) => usage::parse_zone(z)?,
        None => c.lab.zone()?,
    };
    let now = Timestamp::now();
    let (since, until) = usage::parse_range(
        ["since", "until"],
        q.since.as_deref(),
        q.until.as_deref(),
        &tz,
        now,
        now.as_millisecond() - DEFAULT_SPAN_MS,
    )?;
    let query = usage::Query {
        by,
        since_ms: since,
        until_ms: until,
        period: q.period.unwrap_or_default(),
        tz,
        ignore_tag: c.lab.ignore_tag().map(str::to_string),
        only: None,
    };
    let found = report(c, &query, now.as_millisecond())?;
    let report = found.report;
    let stamp = |ms: i64| {
        Timestamp::from_millisecond(ms)
            .map(|t| t.to_string())
            .unwrap_or_default()
    };
    Ok(UsageAnswer {
        since: stamp(since),
        until: stamp(until),
        timezone: query.tz.iana_name().unwrap_or("system").to_string(),
        by: query.by.clone(),
        period: query.period,
        rows: report.rows.iter().map(UsageRow::from_row).collect(),
        total: UsageRow::from_row(&report.total),
        links: found.links,
        conflicts: found.conflicts,
        ignore_tag: query.ignore_tag.clone(),
    })
}

/// What a usage question found: the report, the runs counted as the jobs
/// that produced them, and overlapping claims on one GPU.
pub(crate) struct Found {
    pub report: usage::Report,
    pub links: Vec<usage::Link>,
    pub conflicts: Vec<usage::Conflict>,
}

/// Account every holding in the query's range: the queue's attempts, and
/// the indexed wandb runs that did not come through it.
pub(crate) fn report(c: &Coord, q: &usage::Query, now_ms: i64) -> ApiResult<Found> {
    let t0 = std::time::Instant::now();
    let ms = 1_000_000;
    let mut holdings = c.queue.holdings(
        q.since_ms.saturating_mul(ms),
        q.until_ms.saturating_mul(ms),
        now_ms * ms,
    )?;
    // GPU models and host names from what the agents report.
    let models: HashMap<String, String> = c
        .agents()
        .values()
        .flat_map(|e| {
            e.report
                .gpus
                .iter()
                .map(|g| (g.uuid.clone(), g.name.clone()))
        })
        .collect();
    let hosts = c.agent_hosts();
    // GPUs no agent reports now: as their samples named them.
    let known = c.tele.db.models()?;
    for h in &mut holdings {
        if let Some(m) = models.get(&h.gpu).or_else(|| known.get(&h.gpu)) {
            h.model = m.clone();
        }
    }
    let queue_us = t0.elapsed().as_micros() as u64;
    let runs = RunIndex::open(&c.home.runs_path())
        .and_then(|index| run_holdings(&index, q.since_ms, q.until_ms))?;
    let runs: Vec<(usage::Holding, (Vec<usage::Sample>, i64))> = runs
        .into_iter()
        .map(|r| (r.holding, (r.samples, r.max_gap_ms)))
        .collect();
    let rec = usage::reconcile(&holdings, runs, &|agent: &str| hosts.get(agent).cloned());
    // The telemetry store's threshold (5 %), for runs too.
    let policy = Policy::default();
    let window = (q.since_ms, q.until_ms);
    let runs_us = t0.elapsed().as_micros() as u64;
    // Where the rollups end, read once for every holding.
    let marks = c.tele.db.watermarks()?;
    // Whole days of the range come from the daily totals in one read; only
    // the holdings that reach past them (the range's first and last day,
    // today) read finer buckets.
    let cover = c
        .tele
        .db
        .day_rows(&q.tz, q.since_ms, q.until_ms)?
        .unwrap_or_default();
    let mut daily: rustc_hash::FxHashMap<(i64, u32, &str), Vec<usage::Measured>> =
        Default::default();
    for r in &cover.rows {
        daily
            .entry((r.job, r.attempt, &*r.uuid))
            .or_default()
            .push(usage::Measured {
                from_ms: r.day_ms,
                to_ms: r.end_ms,
                used_ms: r.used_ms as f64,
                idle_ms: r.idle_ms as f64,
                energy_mj: r.energy_mj.unwrap_or(0) as f64,
                peak_mem_mib: r.mem_max_mib.max(0) as u64,
            });
    }
    let days_us = t0.elapsed().as_micros() as u64;
    let mut fine = 0usize;
    let cal = usage::Calendar::new(q.tz.clone());
    let mut accounted = Vec::with_capacity(holdings.len() + rec.runs_to_count.len());
    for h in &holdings {
        let (from, to) = (h.start_ms.max(q.since_ms), h.end_ms.min(q.until_ms));
        let (cf, ct) = (cover.from_ms, cover.to_ms);
        let mut m = Vec::new();
        if cf < ct && from < ct && cf < to {
            for part in [(from, to.min(cf)), (from.max(ct), to)] {
                if part.0 < part.1 {
                    fine += 1;
                    m.extend(measured(c, h, marks, part, now_ms)?);
                }
            }
            if let usage::Holder::Job { job, attempt } = &h.holder {
                if let Some(days) = daily.get(&(*job as i64, *attempt, h.gpu.as_str())) {
                    m.extend(days.iter().cloned());
                }
            }
        } else {
            fine += 1;
            m = measured(c, h, marks, (from, to), now_ms)?;
        }
        accounted.push((h, usage::account_measured(h, &m, window, &cal)?));
    }
    for (h, (samples, max_gap_ms)) in &rec.runs_to_count {
        let policy = Policy {
            max_gap_ms: *max_gap_ms,
            ..policy
        };
        accounted.push((h, usage::account(h, samples, window, &cal, &policy)?));
    }
    let accounted_us = t0.elapsed().as_micros() as u64;
    let report = usage::report(q, &c.lab.teams, accounted);
    tracing::debug!(
        holdings = holdings.len(),
        day_rows = cover.rows.len(),
        fine,
        queue_us,
        runs_us,
        days_us,
        accounted_us,
        report_us = t0.elapsed().as_micros() as u64,
        "usage report"
    );
    Ok(Found {
        report,
        links: rec.links,
        conflicts: rec.conflicts,
    })
}

/// What the telemetry store integrated for a job holding over
/// `[from, to)`: 15-minute buckets where those are complete, then minute
/// buckets, then raw samples (the compaction watermarks `(m1, m15)` say
/// where).
fn measured(
    c: &Coord,
    h: &usage::Holding,
    (m1, m15): (i64, i64),
    (from, to): (i64, i64),
    now_ms: i64,
) -> ApiResult<Vec<usage::Measured>> {
    let usage::Holder::Job { job, attempt } = &h.holder else {
        return Ok(Vec::new());
    };
    let mut out = Vec::new();
    for (a, b, res) in [
        (from, to.min(m15), Resolution::Quarter),
        (from.max(m15), to.min(m1), Resolution::Minute),
        (from.max(m1), to, Resolution::Raw),
    ] {
        if a >= b {
            continue;
        }
        // Buckets are found by their start: from the one holding `a`.
        let step = res.step_ms();
        let since = if step > 0 { a - a.rem_euclid(step) } else { a };
        let q = TelemetryQuery {
            gpu: Some(h.gpu.clone()),
            job: Some(*job as i64),
            since_ms: since,
            until_ms: b,
            resolution: Some(res),
            ..Default::default()
        };
        for s in c.tele.db.query(&q, now_ms)?.series {
            for p in s.points {
                if p.job != Some(*job as i64) || p.attempt != Some(*attempt) {
                    continue;
                }
                let span = if step > 0 { step } else { p.covered_ms };
                out.push(usage::Measured {
                    from_ms: p.t_ms,
                    to_ms: p.t_ms + span.max(1),
                    used_ms: p.used_ms as f64,
                    idle_ms: p.idle_ms as f64,
                    energy_mj: p.energy_mj.unwrap_or(0) as f64,
                    peak_mem_mib: p.mem_used_mib.max.max(0.0) as u64,
                });
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    //! The daily totals answer exactly as the quarters they are made of.

    use super::*;
    use crate::queue::{JobSpec, Queue};
    use crate::telemetry::{GpuInfo, Holder, Sample, Telemetry};
    use jiff::tz::TimeZone;

    const HOUR: i64 = 3_600_000;
    const DAY: i64 = 24 * HOUR;

    #[test]
    fn a_report_from_daily_totals_equals_one_from_quarters() {
        let dir = tempfile::tempdir().unwrap();
        let home = crate::Home::at(dir.path());
        home.ensure().unwrap();
        let berlin = TimeZone::get("Europe/Berlin").unwrap();
        // Three Berlin days, the last one ending an hour ago, and two jobs:
        // one across the first midnight, one ending in the last day.
        let now = Timestamp::now().as_millisecond();
        let (today, _) = {
            let z = Timestamp::from_millisecond(now - HOUR)
                .unwrap()
                .to_zoned(berlin.clone())
                .start_of_day()
                .unwrap();
            (z.timestamp().as_millisecond(), ())
        };
        let first = today - 3 * DAY;
        let start = first - 5 * HOUR;
        let jobs = [
            ("ana", "GPU-a", first - 4 * HOUR, first + 20 * HOUR, 80),
            ("ben", "GPU-b", first + 2 * HOUR, today - 7 * HOUR, 3),
        ];
        let queue = Queue::open(&home.queue_path()).unwrap();
        let mut holders = Vec::new();
        for (user, gpu, from, to, _) in jobs {
            let spec: JobSpec = serde_json::from_value(serde_json::json!({
                "command": ["true"], "user": user, "gpus": {"count": 1}
            }))
            .unwrap();
            let id = queue.submit(&spec).unwrap();
            let a = queue
                .assign(id, "node", &[gpu.to_string()], HOUR * 1_000_000)
                .unwrap();
            queue.started(&a.token, None).unwrap();
            queue.finish(&a.token, Some(0), None).unwrap();
            let conn = rusqlite::Connection::open(home.queue_path()).unwrap();
            conn.execute(
                "UPDATE attempts SET assigned_ns = ?2, started_ns = ?2, finished_ns = ?3
                 WHERE job_id = ?1",
                rusqlite::params![id.0, from * 1_000_000, to * 1_000_000],
            )
            .unwrap();
            holders.push(Holder {
                uuid: gpu.into(),
                job: id.0,
                attempt: 1,
                from_ms: from,
                until_ms: Some(to),
            });
        }
        // Both GPUs sampled every minute, an hour at a time.
        let tele = Telemetry::open(&home.telemetry_path(), Default::default())
            .unwrap()
            .with_day_zone(&berlin)
            .unwrap();
        let mut h = start;
        while h < now - HOUR {
            let mut batch = Vec::new();
            for (i, (_, gpu, from, to, util)) in jobs.iter().enumerate() {
                let mut t = h + 60_000;
                while t <= h + HOUR {
                    let held = *from < t && t <= *to;
                    let u = if held {
                        util + (t / 60_000 % 7) as u32
                    } else {
                        0
                    };
                    batch.push((
                        GpuInfo {
                            host: "node".into(),
                            uuid: gpu.to_string(),
                            index: i as u32,
                            model: "H100".into(),
                            mem_total_mib: 81_559,
                        },
                        Sample {
                            t_ms: t - 1,
                            dt_ms: 60_000,
                            util_pct: Some(u),
                            mem_used_mib: if held { 1000 + u as u64 } else { 0 },
                            power_w: Some(100 + u),
                            interval_energy_mj: Some(u64::from(100 + u) * 60_000),
                            ..Default::default()
                        },
                    ));
                    t += 60_000;
                }
            }
            tele.ingest(&batch, &holders, h + HOUR).unwrap();
            tele.compact(h + HOUR + 60_000).unwrap();
            h += HOUR;
        }
        let lab: crate::config::LabConfig =
            toml::from_str("[usage]\ntimezone = \"Europe/Berlin\"\n").unwrap();
        let coord = |t: Telemetry| {
            Coord::new(
                Queue::open(&home.queue_path()).unwrap(),
                home.clone(),
                std::time::Duration::from_secs(30),
                Default::default(),
                t,
                lab.clone(),
                Arc::new(
                    crate::notify::Notifier::new(
                        crate::notify::Outbox::open(&home.queue_path()).unwrap(),
                        Vec::new(),
                        Default::default(),
                        "http://127.0.0.1:1",
                        Vec::new(),
                    )
                    .unwrap(),
                ),
            )
        };
        let query = usage::Query {
            by: vec![usage::Dim::User],
            since_ms: start,
            until_ms: now,
            period: Period::Daily,
            tz: berlin.clone(),
            ignore_tag: None,
            only: None,
        };
        // Three whole days come from the daily totals.
        let cover = tele.day_rows(&berlin, start, now).unwrap().unwrap();
        assert_eq!(
            (cover.from_ms, cover.to_ms, cover.rows.len()),
            (first, today, 4)
        );
        let days = report(&coord(tele), &query, now).unwrap().report;
        // The same files without daily totals: every holding reads quarters.
        let plain = Telemetry::open(&home.telemetry_path(), Default::default()).unwrap();
        let quarters = report(&coord(plain), &query, now).unwrap().report;
        assert_eq!(days.rows.len(), 5, "{:#?}", days.rows);
        let close = |a: &usage::Row, b: &usage::Row| {
            (
                a.period.as_deref(),
                &a.key,
                a.usage.allocated_ms,
                a.usage.idle_ms,
                a.usage.peak_mem_mib,
                a.jobs,
            ) == (
                b.period.as_deref(),
                &b.key,
                b.usage.allocated_ms,
                b.usage.idle_ms,
                b.usage.peak_mem_mib,
                b.jobs,
            ) && (a.usage.used_ms - b.usage.used_ms).abs() < 1.0
                && (a.usage.energy_mj - b.usage.energy_mj).abs() < 1.0
        };
        for (a, b) in days.rows.iter().zip(&quarters.rows) {
            assert!(close(a, b), "{a:#?}\n!=\n{b:#?}");
        }
        assert!(close(&days.total, &quarters.total));
        assert_eq!(
            days.total.usage.allocated_ms,
            24 * HOUR + (3 * DAY - 9 * HOUR)
        );
        // Ben's GPU sat under 5 % two minutes in seven.
        let ben = (3 * DAY - 9 * HOUR) as f64 * 2.0 / 7.0;
        assert!((days.total.usage.idle_ms as f64 - ben).abs() < 2.0 * HOUR as f64);
    }
}
