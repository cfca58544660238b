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
    let ms = 1_000_000;
    let mut holdings = c.queue.holdings(
        q.since_ms.saturating_mul(ms),
        q.until_ms.saturating_mul(ms),
        now_ms * ms,
    )?;
    // GPU models and host names from what the agents report.
    let (models, hosts) = {
        let agents = c.agents();
        let models: HashMap<String, String> = agents
            .values()
            .flat_map(|e| {
                e.report
                    .gpus
                    .iter()
                    .map(|g| (g.uuid.clone(), g.name.clone()))
            })
            .collect();
        let hosts: HashMap<String, String> = agents
            .iter()
            .map(|(name, e)| (name.clone(), e.report.hostname.clone()))
            .collect();
        (models, hosts)
    };
    for h in &mut holdings {
        if let Some(m) = models.get(&h.gpu) {
            h.model = m.clone();
        }
    }
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
    // Where the rollups end, read once for every holding.
    let marks = c.tele.db.watermarks()?;
    let mut accounted = Vec::with_capacity(holdings.len() + rec.runs_to_count.len());
    for h in &holdings {
        let span = (h.start_ms.max(q.since_ms), h.end_ms.min(q.until_ms));
        let m = measured(c, h, marks, span, now_ms)?;
        accounted.push((h, usage::account_measured(h, &m, window, &q.tz)?));
    }
    for (h, (samples, max_gap_ms)) in &rec.runs_to_count {
        let policy = Policy {
            max_gap_ms: *max_gap_ms,
            ..policy
        };
        accounted.push((h, usage::account(h, samples, window, &q.tz, &policy)?));
    }
    Ok(Found {
        report: usage::report(q, &c.lab.teams, accounted),
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
