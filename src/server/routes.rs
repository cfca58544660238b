//! The HTTP handlers of `/api/v1`: translate requests to coordinator and
//! queue calls and their results to JSON. No scheduling logic lives here.

use std::convert::Infallible;
use std::io::{Read, Seek, SeekFrom, Write};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::middleware;
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use tokio_stream::wrappers::BroadcastStream;
use tokio_stream::{Stream, StreamExt};

use super::coord::Coord;
use super::error::{blocking, parse, ApiError, ApiResult};
use super::guard::{self, Guard};
use crate::api::{
    self, AgentReport, Event, FinishRequest, Health, JobDetail, PollRequest, SubmitRequest,
    SubmitResponse,
};
use crate::queue::{JobId, JobState, QueueError};

/// The OpenAPI document, served at `/api/v1/openapi.json`.
pub(crate) const OPENAPI: &str = include_str!("openapi.json");

/// Longest log chunk returned by one read.
const LOG_CHUNK: u64 = 1 << 20;

fn valid_agent_name(name: &str) -> ApiResult<()> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(ApiError::bad(format!(
            "invalid agent name {name:?}: use 1-64 letters, digits, '.', '_' or '-'"
        )))
    }
}

pub(crate) fn router(coord: Arc<Coord>, guard: Arc<Guard>) -> Router {
    let api = Router::new()
        .route("/health", get(health))
        .route("/openapi.json", get(openapi))
        .route("/jobs", get(list_jobs).post(submit))
        .route("/jobs/{id}", get(job))
        .route("/jobs/{id}/cancel", post(cancel))
        .route("/jobs/{id}/retry", post(retry))
        .route("/jobs/{id}/log", get(read_log))
        .route("/jobs/{id}/attempts/{n}/start", post(started))
        .route("/jobs/{id}/attempts/{n}/finish", post(finish))
        .route("/jobs/{id}/attempts/{n}/log", post(append_log))
        .route("/agents", get(agents))
        .route("/agents/{name}/heartbeat", post(heartbeat))
        .route("/agents/{name}/poll", post(poll))
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
        .route("/runs/{id}/sync", post(super::runs::sync_run))
        .fallback(not_found)
        .layer(middleware::from_fn_with_state(
            guard.clone(),
            guard::admit_api,
        ));
    Router::new()
        .nest(api::PREFIX, api)
        .fallback(super::ui::serve)
        .layer(middleware::from_fn_with_state(guard, guard::admit))
        .with_state(coord)
}

async fn not_found(uri: axum::http::Uri) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "not_found",
        format!("no API route {}", uri.path()),
    )
}

/// What `GET /health` lists in `features`.
const FEATURES: &[&str] = &["datasets", "remotes", "runs", "wandb_sync"];

async fn health() -> Json<Health> {
    Json(Health {
        version: env!("CARGO_PKG_VERSION").to_string(),
        auth_required: true,
        features: FEATURES.iter().map(|f| f.to_string()).collect(),
    })
}

async fn openapi() -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "application/json")], OPENAPI)
}

async fn submit(
    State(c): State<Arc<Coord>>,
    body: Bytes,
) -> ApiResult<(StatusCode, Json<SubmitResponse>)> {
    let req: SubmitRequest = parse(&body)?;
    if req.jobs.is_empty() {
        return Err(ApiError::bad("invalid request body: jobs: no jobs given"));
    }
    let ids = blocking(&c, move |c| Ok(c.queue.submit_many(&req.jobs)?)).await?;
    for id in &ids {
        c.job_event(*id, JobState::Queued);
    }
    c.wake_sched.notify_one();
    Ok((StatusCode::CREATED, Json(SubmitResponse { ids })))
}

#[derive(Deserialize)]
struct ListQuery {
    /// Comma-separated states.
    state: Option<String>,
}

async fn list_jobs(
    State(c): State<Arc<Coord>>,
    Query(q): Query<ListQuery>,
) -> ApiResult<Json<Vec<crate::queue::Job>>> {
    let mut states = Vec::new();
    for s in q
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
    Ok(Json(
        blocking(&c, move |c| Ok(c.queue.list(&states)?)).await?,
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
    Ok(Json(job))
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
    let stop = blocking(&c, move |c| Ok(c.queue.renew(&held, c.lease_ns())?)).await?;
    Ok(Json(api::AgentOrders {
        assignments: Vec::new(),
        stop,
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
) -> ApiResult<StatusCode> {
    let id = JobId(id);
    blocking(&c, move |c| {
        let token = check_attempt(c, id, n, &headers)?;
        c.queue.started(&token)?;
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
        c.queue
            .finish(&token, req.exit_code, req.error.as_deref())?;
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
        let dir = c.logs.join(id.to_string());
        let path = dir.join(format!("{n}.log"));
        let io = |e: std::io::Error| ApiError::internal(format!("log {}: {e}", path.display()));
        let _g = c.log_lock.lock().unwrap_or_else(|p| p.into_inner());
        std::fs::create_dir_all(&dir).map_err(io)?;
        // Owner-only, like the rest of the home: a job's output may print secrets.
        let mut f = std::os::unix::fs::OpenOptionsExt::mode(
            std::fs::OpenOptions::new().create(true).append(true),
            0o600,
        )
        .open(&path)
        .map_err(io)?;
        let size = f.metadata().map_err(io)?.len();
        if q.offset > size {
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                "log_gap",
                format!(
                    "log offset {} is past the end of the daemon's copy ({size} bytes)",
                    q.offset
                ),
            ));
        }
        let skip = (size - q.offset) as usize;
        if skip < body.len() {
            f.write_all(&body[skip..]).map_err(io)?;
        }
        Ok(size.max(q.offset + body.len() as u64))
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
    let ended = info.is_some_and(|a| !matches!(a.state.as_str(), "assigned" | "running"))
        || (info.is_none() && job.state.is_terminal());
    let path = c.logs.join(id.to_string()).join(format!("{n}.log"));
    let mut bytes = Vec::new();
    let mut size = 0;
    if let Ok(mut f) = std::fs::File::open(&path) {
        let io = |e: std::io::Error| ApiError::internal(format!("log {}: {e}", path.display()));
        size = f.metadata().map_err(io)?.len();
        if offset < size {
            f.seek(SeekFrom::Start(offset)).map_err(io)?;
            f.take(LOG_CHUNK).read_to_end(&mut bytes).map_err(io)?;
        }
    }
    Ok(LogChunk {
        attempt: n,
        done: ended && offset + bytes.len() as u64 >= size,
        bytes,
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
            let len = chunk.bytes.len() as u64;
            let mut resp = chunk.bytes.into_response();
            let h = resp.headers_mut();
            let num = |v: u64| HeaderValue::from_str(&v.to_string()).expect("digits");
            h.insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/plain; charset=utf-8"),
            );
            h.insert(api::LOG_OFFSET_HEADER, num(q.offset + len));
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
