//! `GET /jobs/{id}/runs` and `GET /runs/{id}/jobs`: which wandb runs a
//! job's attempts produced, and which attempt produced a run, as the usage
//! reconciliation links them (`usage::links_of`). This reads the holdings
//! around the job's or the run's time from the queue and the run index, and
//! translates.

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::Json;

use super::coord::Coord;
use super::error::{blocking, ApiResult};
use crate::queue::JobId;
use crate::usage::{self, Link, LinkOf, LINK_SLACK_MS};
use crate::wandb::index::RunIndex;
use crate::wandb::usage::run_holdings;

const MS: i64 = 1_000_000;

/// `GET /jobs/{id}/runs`: the runs its attempts produced.
pub(crate) async fn job_runs(
    State(c): State<Arc<Coord>>,
    Path(id): Path<i64>,
) -> ApiResult<Json<Vec<Link>>> {
    Ok(Json(
        blocking(&c, move |c| {
            c.queue.get(JobId(id))?;
            let attempts = c.queue.attempts(JobId(id))?;
            let now_ms = jiff::Timestamp::now().as_millisecond();
            let (Some(since), Some(until)) = (
                attempts.iter().map(|a| a.assigned_ns / MS).min(),
                attempts
                    .iter()
                    .map(|a| a.finished_ns.map_or(now_ms, |f| f / MS + 1))
                    .max(),
            ) else {
                return Ok(Vec::new());
            };
            links(
                c,
                (since, until.max(since + 1)),
                now_ms,
                LinkOf::Job(id as u64),
            )
        })
        .await?,
    ))
}

/// `GET /runs/{id}/jobs`: the job attempts that produced the run.
pub(crate) async fn run_jobs(
    State(c): State<Arc<Coord>>,
    Path(id): Path<String>,
) -> ApiResult<Json<Vec<Link>>> {
    Ok(Json(
        blocking(&c, move |c| {
            let run = RunIndex::open(&c.home.runs_path())?.get(&id)?.run;
            let Some(start_ms) = run.start_time.map(|s| (s * 1000.0).round() as i64) else {
                return Ok(Vec::new());
            };
            // A producing attempt starts at most LINK_SLACK_MS after the
            // run and ends after it started: it overlaps this window.
            let window = (start_ms - LINK_SLACK_MS, start_ms + LINK_SLACK_MS + 1);
            let now_ms = jiff::Timestamp::now().as_millisecond();
            links(c, window, now_ms, LinkOf::Run(&run.id))
        })
        .await?,
    ))
}

/// The links of `of` among the job and run holdings that overlap
/// `[since_ms, until_ms)`.
fn links(
    c: &Coord,
    (since_ms, until_ms): (i64, i64),
    now_ms: i64,
    of: LinkOf<'_>,
) -> ApiResult<Vec<Link>> {
    let jobs = c.queue.holdings(
        since_ms.saturating_mul(MS),
        until_ms.saturating_mul(MS),
        now_ms.saturating_mul(MS),
    )?;
    let runs = RunIndex::open(&c.home.runs_path())
        .and_then(|index| run_holdings(&index, since_ms, until_ms))?
        .into_iter()
        .map(|r| r.holding)
        .collect();
    let hosts = c.agent_hosts();
    Ok(usage::links_of(
        &jobs,
        runs,
        &|agent: &str| hosts.get(agent).cloned(),
        of,
    ))
}
