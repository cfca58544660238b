//! The HTTP handlers of `/api/v1`: translate requests to coordinator and
//! queue calls and their results to JSON. No scheduling logic lives here.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::{Body, Bytes};
use axum::extract::{Path, Query, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use serde::Deserialize;
use tokio_stream::wrappers::BroadcastStream;
use tokio_stream::{Stream, StreamExt};

use super::coord::Coord;
use super::error::{blocking, parse, valid_agent_name, ApiError, ApiResult};
use super::guard::{self, Guard};
use super::schedules as sch;
use crate::api::{
    self, AgentReport, Event, FinishRequest, Health, JobDetail, PollRequest, SubmitRequest,
    SubmitResponse,
};
use crate::queue::{Cursor, JobFilter, JobId, JobOrder, JobState, QueueError, MAX_PAGE};

/// The OpenAPI document, served at `/api/v1/openapi.json`.
pub(crate) const OPENAPI: &str = include_str!("openapi.json");

/// Longest log chunk returned by one read.
const LOG_CHUNK: u64 = 1 << 20;

/// The largest body `POST /jobs` reads. A sweep sent as a template and its
/// grid (`"sweep"`) is a few hundred bytes for any number of jobs; this
/// bounds lists of jobs spelled out one by one (~100,000 small specs).
pub(crate) const SUBMIT_BODY_LIMIT: usize = 32 << 20;

/// The largest body of every other route: axum's default, 2 MiB (an agent
/// ships its log in chunks of at most 1 MiB).
pub(crate) const BODY_LIMIT: usize = 2 << 20;

/// Jobs per page of `GET /jobs` when `limit` is not given.
pub(crate) const DEFAULT_PAGE: usize = 500;

/// A submission larger than this is announced by one `job` event (for its
/// last job) rather than one per job, so a sweep does not flood `/events`.
const EVENTS_PER_BATCH: usize = 1000;

fn mib(n: usize) -> String {
    format!("{} MiB", n >> 20)
}

pub(crate) fn router(coord: Arc<Coord>, guard: Arc<Guard>) -> Router {
    let api = Router::new()
        .route("/health", get(health))
        .route("/openapi.json", get(openapi))
        .route("/jobs", get(list_jobs).post(submit))
        .route("/jobs/counts", get(job_counts))
        .route("/jobs/{id}", get(job))
        .route("/jobs/{id}/cancel", post(cancel))
        .route("/jobs/{id}/retry", post(retry))
        .route("/jobs/{id}/tags", post(tag))
        .route("/jobs/{id}/log", get(read_log))
        .route("/jobs/{id}/runs", get(super::links::job_runs))
        .route("/jobs/{id}/attempts/{n}/start", post(started))
        .route("/jobs/{id}/attempts/{n}/finish", post(finish))
        .route("/jobs/{id}/attempts/{n}/log", post(append_log))
        .route("/agents", get(agents))
        .route("/agents/{name}/heartbeat", post(heartbeat))
        .route("/agents/{name}/poll", post(poll))
        .route("/agents/{name}/samples", post(super::telemetry::ingest))
        .route("/telemetry", get(super::telemetry::query))
        .route("/events", get(events))
        .route("/datasets", get(super::datasets::list))
        .route("/datasets/{name}/versions", get(super::datasets::versions))
        .route("/datasets/{name}/diff", get(super::datasets::diff))
        .route("/datasets/{name}/snapshot", post(super::datasets::snapshot))
        .route("/datasets/{name}/remotes", get(super::datasets::remotes))
        .route("/runs", get(super::runs::list))
        .route("/runs/scan", post(super::runs::scan))
        .route("/runs/{id}", get(super::runs::show))
        .route("/runs/{id}/history", get(super::runs::history))
        .route("/runs/{id}/jobs", get(super::links::run_jobs))
        .route("/runs/{id}/sync", post(super::runs::sync_run))
        .route("/runs/{id}/tags", post(super::runs::tag))
        .route("/usage", get(super::usage::usage))
        .route("/schedules", get(sch::list).post(sch::add))
        .route("/schedules/{name}", get(sch::show).delete(sch::remove))
        .route("/schedules/{name}/pause", post(sch::pause))
        .route("/schedules/{name}/resume", post(sch::resume))
        .route("/schedules/{name}/run", post(sch::run))
        .route(
            "/watches",
            get(super::watches::list).post(super::watches::add),
        )
        .route("/watches/log", get(super::watches::log_all))
        .route(
            "/watches/{id}",
            get(super::watches::show).delete(super::watches::remove),
        )
        .route("/watches/{id}/pause", post(super::watches::pause))
        .route("/watches/{id}/resume", post(super::watches::resume))
        .route("/watches/{id}/log", get(super::watches::log))
        .route(
            "/notify/sinks",
            get(super::notify::sinks).post(super::notify::add),
        )
        .route("/notify/sinks/{name}", delete(super::notify::remove))
        .route("/notify/sinks/{name}/test", post(super::notify::test))
        .route("/notify/log", get(super::notify::log))
        .route(
            "/clusters",
            get(super::clusters::list).post(super::clusters::add),
        )
        .route("/clusters/pools", get(super::clusters::pools))
        .route("/clusters/{name}", delete(super::clusters::remove))
        .route("/clusters/{name}/test", post(super::clusters::test))
        .fallback(not_found)
        .layer(middleware::from_fn(explain_body_limit))
        .layer(middleware::from_fn_with_state(
            guard.clone(),
            guard::admit_api,
        ));
    Router::new()
        .nest(api::PREFIX, api)
        .merge(super::telemetry::metrics_routes(
            coord.clone(),
            guard.clone(),
        ))
        .fallback(super::ui::serve)
        .layer(middleware::from_fn_with_state(guard, guard::admit))
        .with_state(coord)
}

/// A body over a route's limit is refused by axum with a plain-text 413;
/// say instead, as JSON, which limit it was and what to do.
async fn explain_body_limit(req: Request, next: Next) -> Response {
    let what = format!("{} {}", req.method(), req.uri().path());
    let resp = next.run(req).await;
    let json = resp
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/json"));
    if resp.status() != StatusCode::PAYLOAD_TOO_LARGE || json {
        return resp;
    }
    ApiError::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        "payload_too_large",
        format!(
            "the request body of {what} is over its limit of {}; send it in smaller requests",
            mib(BODY_LIMIT)
        ),
    )
    .into_response()
}

async fn not_found(uri: axum::http::Uri) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "not_found",
        format!("no API route {}", uri.path()),
    )
}

/// What `GET /health` lists in `features`: `usage` (`GET /usage`, and the
/// job-run links of `GET /jobs/{id}/runs` and `GET /runs/{id}/jobs`) and
/// `telemetry` (`GET /telemetry`) tell the UI it may show those.
const FEATURES: &[&str] = &[
    "datasets",
    "remotes",
    "runs",
    "schedules",
    "watches",
    "wandb_sync",
    "notify",
    "usage",
    "telemetry",
];

async fn health() -> Json<Health> {
    Json(Health {
        version: env!("CARGO_PKG_VERSION").to_string(),
        api: crate::api::API_VERSION,
        auth_required: true,
        features: FEATURES.iter().map(|f| f.to_string()).collect(),
    })
}

async fn openapi() -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "application/json")], OPENAPI)
}

/// Read a body of at most `limit` bytes, or refuse it naming the limit.
async fn read_body(body: Body, limit: usize, what: &str, advice: &str) -> ApiResult<Vec<u8>> {
    let mut stream = body.into_data_stream();
    let mut buf = Vec::new();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| ApiError::bad(format!("reading the request body: {e}")))?;
        if buf.len() + chunk.len() > limit {
            return Err(ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "payload_too_large",
                format!(
                    "the request body of {what} is over its limit of {}; {advice}",
                    mib(limit)
                ),
            ));
        }
        buf.extend_from_slice(&chunk);
    }
    Ok(buf)
}

async fn submit(
    State(c): State<Arc<Coord>>,
    body: Body,
) -> ApiResult<(StatusCode, Json<SubmitResponse>)> {
    let body = read_body(
        body,
        SUBMIT_BODY_LIMIT,
        "POST /api/v1/jobs",
        "send a sweep as one job and its grid ({\"jobs\": [TEMPLATE], \"sweep\": {\"KEY\": \
         [VALUES]}}, which `trainyard submit --sweep` does), or the jobs in several requests",
    )
    .await?;
    let req: SubmitRequest = parse(&body)?;
    drop(body);
    if req.jobs.is_empty() {
        return Err(ApiError::bad("invalid request body: jobs: no jobs given"));
    }
    let ids = match req.sweep {
        Some(grid) => {
            let [template] = <[_; 1]>::try_from(req.jobs).map_err(|jobs: Vec<_>| {
                ApiError::bad(format!(
                    "invalid request body: jobs: a sweep takes exactly one job (its template), \
                     got {}",
                    jobs.len()
                ))
            })?;
            blocking(&c, move |c| Ok(c.queue.submit_sweep(&template, &grid)?)).await?
        }
        None => blocking(&c, move |c| Ok(c.queue.submit_many(&req.jobs)?)).await?,
    };
    let announce = if ids.len() > EVENTS_PER_BATCH {
        &ids[ids.len() - 1..]
    } else {
        &ids[..]
    };
    for id in announce {
        c.job_event(*id, JobState::Queued);
    }
    c.wake_sched.notify_one();
    c.wake_clusters.notify_one();
    Ok((StatusCode::CREATED, Json(SubmitResponse { ids })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ListQuery {
    /// Comma-separated states.
    state: Option<String>,
    user: Option<String>,
    project: Option<String>,
    tag: Option<String>,
    /// Text search: the id, or a substring of the spec or user.
    q: Option<String>,
    /// `queue` (default) or `finished`.
    order: Option<String>,
    limit: Option<usize>,
    cursor: Option<String>,
}

fn nonempty(s: Option<String>) -> Option<String> {
    s.filter(|s| !s.is_empty())
}

impl ListQuery {
    fn filter(&mut self) -> ApiResult<JobFilter> {
        let mut states = Vec::new();
        for s in self
            .state
            .iter()
            .flat_map(|s| s.split(','))
            .filter(|s| !s.is_empty())
        {
            states.push(JobState::from_name(s).ok_or_else(|| {
                ApiError::bad(format!(
                    "state: unknown state {s:?} (queued, assigned, running, succeeded, failed, cancelled, lost)"
                ))
            })?);
        }
        Ok(JobFilter {
            states,
            user: nonempty(self.user.take()),
            project: nonempty(self.project.take()),
            tag: nonempty(self.tag.take()),
            text: nonempty(self.q.take()),
        })
    }
}

/// One page of jobs: the body is the JSON array of jobs (as before
/// pagination); `x-trainyard-next-cursor` (absent on the last page) and a
/// `Link: <...>; rel="next"` name the next page, `x-trainyard-total` counts
/// the jobs matching the filters on all pages.
async fn list_jobs(
    State(c): State<Arc<Coord>>,
    uri: axum::http::Uri,
    Query(mut q): Query<ListQuery>,
) -> ApiResult<Response> {
    let filter = q.filter()?;
    let order = match q.order.as_deref() {
        None | Some("") => JobOrder::Queue,
        Some(o) => JobOrder::from_name(o).ok_or_else(|| {
            ApiError::bad(format!("order: unknown order {o:?} (queue, finished)"))
        })?,
    };
    if order == JobOrder::Finished {
        if let Some(s) = filter.states.iter().find(|s| !s.is_terminal()) {
            return Err(ApiError::bad(format!(
                "state: {s} jobs have not finished; order=finished lists succeeded, failed, \
                 cancelled and lost jobs"
            )));
        }
    }
    let limit = match q.limit {
        None => DEFAULT_PAGE,
        Some(n @ 1..=MAX_PAGE) => n,
        Some(n) => {
            return Err(ApiError::bad(format!(
                "limit: {n} is not between 1 and {MAX_PAGE}; follow the next cursor for more"
            )))
        }
    };
    let cursor = match q.cursor.as_deref().filter(|c| !c.is_empty()) {
        Some(t) => Some(Cursor::parse(t, order)?),
        None => None,
    };
    let page = blocking(&c, move |c| {
        Ok(c.queue.page(&filter, order, cursor, limit)?)
    })
    .await?;
    let mut resp = Json(page.jobs).into_response();
    let h = resp.headers_mut();
    h.insert(
        api::TOTAL_HEADER,
        HeaderValue::from_str(&page.total.to_string()).expect("digits"),
    );
    if let Some(next) = page.next {
        let next = next.to_string();
        // The same query with the cursor replaced.
        let mut query: Vec<String> = uri
            .query()
            .unwrap_or("")
            .split('&')
            .filter(|p| !p.is_empty() && !p.starts_with("cursor="))
            .map(str::to_string)
            .collect();
        query.push(format!("cursor={next}"));
        let link = format!(
            "<{}{}?{}>; rel=\"next\"",
            api::PREFIX,
            "/jobs",
            query.join("&")
        );
        if let Ok(v) = HeaderValue::from_str(&link) {
            h.insert(header::LINK, v);
        }
        h.insert(
            api::NEXT_CURSOR_HEADER,
            HeaderValue::from_str(&next).expect("cursor is ascii"),
        );
    }
    Ok(resp)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CountsQuery {
    user: Option<String>,
    project: Option<String>,
    tag: Option<String>,
    q: Option<String>,
}

/// How many jobs are in each state (with the filters of `GET /jobs`).
async fn job_counts(
    State(c): State<Arc<Coord>>,
    Query(q): Query<CountsQuery>,
) -> ApiResult<Json<api::JobCounts>> {
    let filter = JobFilter {
        states: Vec::new(),
        user: nonempty(q.user),
        project: nonempty(q.project),
        tag: nonempty(q.tag),
        text: nonempty(q.q),
    };
    Ok(Json(
        blocking(&c, move |c| Ok(c.queue.counts(&filter)?)).await?,
    ))
}

async fn job(State(c): State<Arc<Coord>>, Path(id): Path<i64>) -> ApiResult<Json<JobDetail>> {
    let id = JobId(id);
    Ok(Json(
        blocking(&c, move |c| {
            Ok(JobDetail {
                job: c.queue.get(id)?,
                attempt_log: c.queue.attempts(id)?,
            })
        })
        .await?,
    ))
}

async fn cancel(
    State(c): State<Arc<Coord>>,
    Path(id): Path<i64>,
) -> ApiResult<Json<crate::queue::Job>> {
    let id = JobId(id);
    let job = blocking(&c, move |c| {
        let before = c.queue.get(id)?;
        c.queue.cancel(id)?;
        if let Some(agent) = &before.agent {
            c.wake_agent(agent);
        }
        Ok(c.queue.get(id)?)
    })
    .await?;
    c.job_event(id, job.state);
    c.wake_sched.notify_one();
    // A cluster job's SLURM job is cancelled by the follower.
    c.wake_clusters.notify_one();
    Ok(Json(job))
}

/// Add and remove tags (also of jobs retention deleted whose GPU-hours
/// are still counted).
async fn tag(
    State(c): State<Arc<Coord>>,
    Path(id): Path<i64>,
    body: Bytes,
) -> ApiResult<Json<api::TagAnswer>> {
    let id = JobId(id);
    let req: api::TagRequest = parse(&body)?;
    let tags = blocking(&c, move |c| Ok(c.queue.tag(id, &req.add, &req.remove)?)).await?;
    Ok(Json(api::TagAnswer { id, tags }))
}

async fn retry(
    State(c): State<Arc<Coord>>,
    Path(id): Path<i64>,
) -> ApiResult<Json<crate::queue::Job>> {
    let id = JobId(id);
    let job = blocking(&c, move |c| {
        c.queue.retry(id)?;
        Ok(c.queue.get(id)?)
    })
    .await?;
    c.job_event(id, job.state);
    c.wake_sched.notify_one();
    Ok(Json(job))
}

async fn agents(State(c): State<Arc<Coord>>) -> ApiResult<Json<Vec<api::AgentInfo>>> {
    Ok(Json(blocking(&c, |c| Ok(c.agent_infos()?)).await?))
}

async fn heartbeat(
    State(c): State<Arc<Coord>>,
    Path(name): Path<String>,
    body: Bytes,
) -> ApiResult<Json<api::AgentOrders>> {
    valid_agent_name(&name)?;
    let report: AgentReport = parse(&body)?;
    let held = report.attempts.clone();
    c.report(&name, report).map_err(name_taken)?;
    let (stop, stop_reasons) = blocking(&c, move |c| {
        let stop = c.queue.renew(&held, c.lease_ns())?;
        let reasons = c.queue.idle_stop_reasons(&stop)?;
        Ok((stop, reasons))
    })
    .await?;
    Ok(Json(api::AgentOrders {
        assignments: Vec::new(),
        stop,
        stop_reasons,
        lease_ms: c.lease.as_millis() as u64,
    }))
}

fn name_taken(e: super::coord::NameTaken) -> ApiError {
    ApiError::new(
        StatusCode::CONFLICT,
        crate::agent::NAME_TAKEN,
        e.to_string(),
    )
}

/// Long poll: answer at once when the agent has something to do, else wait
/// (at most a third of the lease) for an assignment or a cancel.
async fn poll(
    State(c): State<Arc<Coord>>,
    Path(name): Path<String>,
    body: Bytes,
) -> ApiResult<Json<api::AgentOrders>> {
    valid_agent_name(&name)?;
    let req: PollRequest = parse(&body)?;
    let held = req.report.attempts.clone();
    let wake = c.report(&name, req.report).map_err(name_taken)?;
    let wait = Duration::from_millis(req.wait_ms).min(c.lease / 3);
    let deadline = Instant::now() + wait;
    loop {
        let n = name.clone();
        let h = held.clone();
        let orders = blocking(&c, move |c| Ok(c.orders(&n, &h)?)).await?;
        let now = Instant::now();
        if !orders.assignments.is_empty() || !orders.stop.is_empty() || now >= deadline {
            return Ok(Json(orders));
        }
        let _ = tokio::time::timeout(deadline - now, wake.notified()).await;
    }
}

/// The attempt a token names must be the one in the path.
fn check_attempt(c: &Coord, id: JobId, n: u32, headers: &HeaderMap) -> ApiResult<String> {
    let token = headers
        .get(api::ATTEMPT_TOKEN_HEADER)
        .and_then(|v| v.to_str().ok())
        .ok_or_else(|| ApiError::bad(format!("missing header {}", api::ATTEMPT_TOKEN_HEADER)))?;
    let (job, attempt) = c.queue.attempt_of(token)?;
    if job != id || attempt != n {
        return Err(QueueError::StaleAttempt.into());
    }
    Ok(token.to_string())
}

async fn started(
    State(c): State<Arc<Coord>>,
    Path((id, n)): Path<(i64, u32)>,
    headers: HeaderMap,
    body: Bytes,
) -> ApiResult<StatusCode> {
    let id = JobId(id);
    let req: api::StartRequest = if body.is_empty() {
        api::StartRequest::default()
    } else {
        parse(&body)?
    };
    if let Some(commit) = &req.commit {
        if commit.len() != 40 || !commit.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(ApiError::bad(format!(
                "commit: {commit:?} is not a full git commit id"
            )));
        }
    }
    blocking(&c, move |c| {
        let token = check_attempt(c, id, n, &headers)?;
        c.queue.started(&token, req.commit.as_deref())?;
        Ok(())
    })
    .await?;
    c.job_event(id, JobState::Running);
    Ok(StatusCode::NO_CONTENT)
}

async fn finish(
    State(c): State<Arc<Coord>>,
    Path((id, n)): Path<(i64, u32)>,
    headers: HeaderMap,
    body: Bytes,
) -> ApiResult<Json<crate::queue::Job>> {
    let id = JobId(id);
    let req: FinishRequest = parse(&body)?;
    let job = blocking(&c, move |c| {
        let token = check_attempt(c, id, n, &headers)?;
        match (req.requeue, req.error.as_deref()) {
            (true, Some(why)) if req.exit_code != Some(0) => {
                c.queue.finish_requeued(&token, why)?
            }
            _ => c
                .queue
                .finish(&token, req.exit_code, req.error.as_deref())?,
        };
        Ok(c.queue.get(id)?)
    })
    .await?;
    c.job_event(id, job.state);
    c.wake_sched.notify_one();
    Ok(Json(job))
}

#[derive(Deserialize)]
struct AppendQuery {
    offset: u64,
}

/// Append to an attempt's log at `offset`. Idempotent: bytes the daemon
/// already has are skipped, so an agent may resend after a lost answer.
async fn append_log(
    State(c): State<Arc<Coord>>,
    Path((id, n)): Path<(i64, u32)>,
    Query(q): Query<AppendQuery>,
    headers: HeaderMap,
    body: Bytes,
) -> ApiResult<Json<serde_json::Value>> {
    let id = JobId(id);
    let size = blocking(&c, move |c| {
        check_attempt(c, id, n, &headers)?;
        Ok(c.logs.append(id, n, q.offset, &body)?)
    })
    .await?;
    c.emit(Event::Log {
        id,
        attempt: n,
        size,
    });
    Ok(Json(serde_json::json!({ "size": size })))
}

#[derive(Deserialize)]
struct LogQuery {
    attempt: Option<u32>,
    #[serde(default)]
    offset: u64,
    #[serde(default)]
    wait_ms: u64,
}

struct LogChunk {
    attempt: u32,
    bytes: Vec<u8>,
    /// The logical offset after `bytes` (a dropped head makes it differ
    /// from `offset + bytes.len()`).
    next: u64,
    done: bool,
    job_state: JobState,
}

fn read_chunk(c: &Coord, id: JobId, attempt: Option<u32>, offset: u64) -> ApiResult<LogChunk> {
    let job = c.queue.get(id)?;
    let attempts = c.queue.attempts(id)?;
    let n = attempt.unwrap_or(job.attempts);
    let info = attempts.iter().find(|a| a.n == n);
    if attempt.is_some() && info.is_none() {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("job {id} has no attempt {n}"),
        ));
    }
    let chunk = c.logs.read(id, n, offset, LOG_CHUNK)?;
    Ok(LogChunk {
        attempt: n,
        done: chunk.done(job.state, info),
        next: chunk.next,
        bytes: chunk.bytes,
        job_state: job.state,
    })
}

/// Read an attempt's log from `offset` (the latest attempt by default),
/// waiting up to `wait_ms` for new bytes.
async fn read_log(
    State(c): State<Arc<Coord>>,
    Path(id): Path<i64>,
    Query(q): Query<LogQuery>,
) -> ApiResult<Response> {
    let id = JobId(id);
    let deadline = Instant::now() + Duration::from_millis(q.wait_ms.min(60_000));
    loop {
        let mut rx = c.events.subscribe();
        let (attempt, offset) = (q.attempt, q.offset);
        let chunk = blocking(&c, move |c| read_chunk(c, id, attempt, offset)).await?;
        if !chunk.bytes.is_empty() || chunk.done || Instant::now() >= deadline {
            let next = chunk.next;
            let mut resp = chunk.bytes.into_response();
            let h = resp.headers_mut();
            let num = |v: u64| HeaderValue::from_str(&v.to_string()).expect("digits");
            h.insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/plain; charset=utf-8"),
            );
            h.insert(api::LOG_OFFSET_HEADER, num(next));
            h.insert(api::LOG_DONE_HEADER, num(chunk.done as u64));
            h.insert("x-trainyard-log-attempt", num(chunk.attempt as u64));
            h.insert(
                "x-trainyard-job-state",
                HeaderValue::from_static(chunk.job_state.as_str()),
            );
            return Ok(resp);
        }
        // Wait for this job's log or state to change.
        let wait = async {
            loop {
                match rx.recv().await {
                    Ok(Event::Log { id: j, .. }) | Ok(Event::Job { id: j, .. }) if j == id => {
                        return
                    }
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
                    _ => {}
                }
            }
        };
        let _ = tokio::time::timeout_at(deadline.into(), wait).await;
    }
}

/// Server-sent events: every change, as JSON, for live views.
async fn events(
    State(c): State<Arc<Coord>>,
) -> Sse<impl Stream<Item = Result<SseEvent, Infallible>>> {
    let stream = BroadcastStream::new(c.events.subscribe()).map(|r| {
        Ok(match r {
            Ok(e) => SseEvent::default()
                .event(e.name())
                .json_data(&e)
                .unwrap_or_else(|_| SseEvent::default().event("error")),
            // A slow reader missed events: tell it to refresh everything.
            Err(_) => SseEvent::default().event("lagged").data("refresh"),
        })
    });
    Sse::new(stream).keep_alive(KeepAlive::default())
}
