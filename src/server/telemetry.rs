//! The daemon's side of telemetry: agents' sample batches into
//! `telemetry.db` (each sample given the attempt that held its GPU at its
//! time, from the queue's assignments), `GET /telemetry` over it, the
//! periodic compaction, and `GET /metrics` (the DCGM exporter's GPU gauges
//! from the agents' latest reports, the queue's own metrics) on the API's
//! listener or on a metrics-only one (`--metrics-bind`).
//!
//! Who may scrape `/metrics`: the Host and cross-origin rules of `guard`
//! always; the token too, unless the request came over loopback or to the
//! metrics-only listener, which serves nothing else.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{ConnectInfo, Path, Query, Request, State};
use axum::http::{header, HeaderMap, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde::Deserialize;

use super::coord::Coord;
use super::error::{blocking, parse, ApiError, ApiResult};
use super::guard::{self, Guard, Refusal};
use super::{Server, ServerError};
use crate::api::{Event, SampleAck, SampleBatch};
use crate::db::now_ns;
use crate::queue::{JobFilter, JobId, QueueError};
use crate::telemetry::metrics::{self, Exposition, GpuMetric, Kind};
use crate::telemetry::{
    GpuInfo, Resolution, Sample, TelemetryError, TelemetryQuery, TelemetrySeries,
};

/// How often the daemon rolls up and applies telemetry retention.
const COMPACT_EVERY: Duration = Duration::from_secs(60);

impl From<TelemetryError> for ApiError {
    fn from(e: TelemetryError) -> ApiError {
        match e {
            TelemetryError::BadQuery(m) => ApiError::bad(m),
            TelemetryError::Db(e) => {
                tracing::error!(error = %e, "telemetry database error");
                ApiError::internal(e.to_string())
            }
        }
    }
}

/// `POST /agents/{name}/samples`: store a batch, each GPU sample with the
/// attempt the queue says held its GPU then.
pub(crate) async fn ingest(
    State(c): State<Arc<Coord>>,
    Path(name): Path<String>,
    body: Bytes,
) -> ApiResult<Json<SampleAck>> {
    super::error::valid_agent_name(&name)?;
    let batch: SampleBatch = parse(&body)?;
    {
        let agents = c.agents.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(e) = agents.get(&name) {
            if e.report.agent_id != batch.agent_id && e.last_seen.elapsed() < c.lease {
                return Err(ApiError::new(
                    StatusCode::CONFLICT,
                    crate::agent::NAME_TAKEN,
                    format!(
                        "the agent name {name:?} is taken by a live agent on host {:?} with another identity",
                        e.report.hostname
                    ),
                ));
            }
        }
    }
    let ack = blocking(&c, move |c| {
        let now_ms = now_ns() / 1_000_000;
        // The agent's clock to the daemon's: samples line up with
        // assignments even when the two clocks differ.
        let shift = now_ms - batch.sent_ms;
        let holders = c.tele.holders(&c.queue, &name, now_ms)?;
        let mut rows = Vec::new();
        for hs in &batch.samples {
            let t_ms = hs.t_ms + shift;
            for g in &hs.gpus {
                let (job, attempt) = crate::telemetry::holder_at(&holders, &g.uuid, t_ms);
                let others = g
                    .processes
                    .iter()
                    .filter(|p| !(job != 0 && p.job == Some(JobId(job)) && p.attempt == Some(attempt)))
                    .count() as u32;
                rows.push((
                    GpuInfo {
                        host: name.clone(),
                        uuid: g.uuid.clone(),
                        index: g.index,
                        model: g.name.clone(),
                        mem_total_mib: g.memory_total_mib,
                    },
                    Sample {
                        t_ms,
                        dt_ms: hs.dt_ms,
                        util_pct: g.utilization_pct,
                        mem_used_mib: g.memory_used_mib,
                        temp_c: g.temperature_c,
                        power_w: g.power_w,
                        energy_mj: g.energy_mj,
                        interval_energy_mj: g.interval_energy_mj,
                        others,
                    },
                ));
            }
        }
        let r = c.tele.db.ingest(&rows, &holders, now_ms)?;
        let shifted: Vec<(i64, &crate::api::HostSample)> =
            batch.samples.iter().map(|hs| (hs.t_ms + shift, hs)).collect();
        let fx = c
            .idle
            .observe(&c.queue, &c.lab.idle, &name, &holders, &shifted)?;
        let mut s = c.tele.stats();
        s.samples_stored += r.stored;
        s.samples_refused += r.refused;
        s.samples_dropped += batch.dropped;
        if batch.dropped > 0 {
            tracing::warn!(agent = %name, dropped = batch.dropped, "an agent dropped GPU samples while the daemon was unreachable");
        }
        Ok((
            SampleAck {
                stored: r.stored,
                refused: r.refused,
            },
            fx,
        ))
    })
    .await?;
    let (ack, fx) = ack;
    for a in &fx.agents {
        c.wake_agent(a);
    }
    for (id, state) in &fx.jobs {
        c.job_event(*id, *state);
    }
    if !fx.jobs.is_empty() {
        c.wake_sched.notify_one();
    }
    if fx.notified {
        c.notify.wake();
    }
    for id in fx.changed {
        if !fx.jobs.iter().any(|(j, _)| *j == id) {
            c.emit(Event::Idle { id });
        }
    }
    Ok(Json(ack))
}

impl From<QueueError> for TelemetryError {
    fn from(e: QueueError) -> TelemetryError {
        TelemetryError::BadQuery(e.to_string())
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct TelemetryParams {
    host: Option<String>,
    gpu: Option<String>,
    job: Option<i64>,
    since: Option<String>,
    until: Option<String>,
    resolution: Option<String>,
}

/// A time parameter: ms since the epoch, an RFC 3339 time, `now`, or a
/// duration before now (`90s`, `1h`, `7d`).
fn parse_time(what: &str, v: &str, now_ms: i64) -> ApiResult<i64> {
    let v = v.trim();
    if v == "now" {
        return Ok(now_ms);
    }
    if let Ok(ms) = v.parse::<i64>() {
        return Ok(ms);
    }
    if let Ok(t) = humantime::parse_rfc3339_weak(v) {
        if let Ok(d) = t.duration_since(std::time::UNIX_EPOCH) {
            return Ok(d.as_millis() as i64);
        }
    }
    if let Ok(d) = humantime::parse_duration(v) {
        return Ok(now_ms - d.as_millis().min(i64::MAX as u128) as i64);
    }
    Err(ApiError::bad(format!(
        "{what}: {v:?} is not a time: give ms since the epoch, an RFC 3339 time \
         (2026-03-01T12:00:00Z), now, or a duration before now (90s, 1h, 7d)"
    )))
}

/// `GET /telemetry?host=&gpu=&job=&since=&until=&resolution=`.
pub(crate) async fn query(
    State(c): State<Arc<Coord>>,
    Query(p): Query<TelemetryParams>,
) -> ApiResult<Json<TelemetrySeries>> {
    let now_ms = now_ns() / 1_000_000;
    let resolution = match p.resolution.as_deref().filter(|r| !r.is_empty()) {
        None => None,
        Some(r) => Some(
            Resolution::from_name(r)
                .ok_or_else(|| ApiError::bad(format!("resolution: {r:?} is not raw, 1m or 15m")))?,
        ),
    };
    let since = p
        .since
        .as_deref()
        .map(|v| parse_time("since", v, now_ms))
        .transpose()?;
    let until = p
        .until
        .as_deref()
        .map(|v| parse_time("until", v, now_ms))
        .transpose()?;
    let answer = blocking(&c, move |c| {
        let mut q = TelemetryQuery {
            host: p.host.filter(|h| !h.is_empty()),
            gpu: p.gpu.filter(|g| !g.is_empty()),
            job: p.job,
            only: None,
            since_ms: since.unwrap_or(now_ms - 3_600_000),
            until_ms: until.unwrap_or(now_ms),
            resolution,
        };
        if let Some(job) = p.job {
            // The GPUs its attempts held, over their time (unless a range
            // is given).
            let attempts = c.queue.attempts(JobId(job))?;
            q.only = Some(
                attempts
                    .iter()
                    .flat_map(|a| a.gpus.iter().map(|g| (a.agent.clone(), g.clone())))
                    .collect(),
            );
            if since.is_none() {
                if let Some(first) = attempts.iter().map(|a| a.assigned_ns).min() {
                    q.since_ms = first / 1_000_000;
                }
            }
            if until.is_none() && !attempts.is_empty() {
                let running = attempts.iter().any(|a| a.finished_ns.is_none());
                let last = attempts.iter().filter_map(|a| a.finished_ns).max();
                q.until_ms = match (running, last) {
                    (false, Some(l)) => l / 1_000_000 + 1,
                    _ => now_ms,
                };
            }
        }
        Ok(c.tele.db.query(&q, now_ms)?)
    })
    .await?;
    Ok(Json(answer))
}

/// Roll telemetry up and apply its retention every minute.
pub(crate) async fn compact_loop(c: Arc<Coord>) {
    loop {
        let c2 = c.clone();
        match tokio::task::spawn_blocking(move || c2.tele.db.compact(now_ns() / 1_000_000)).await {
            Ok(Ok(r)) => tracing::debug!(
                minute_rows = r.minute_rows,
                quarter_rows = r.quarter_rows,
                deleted = r.deleted,
                steps = r.steps,
                "telemetry compacted"
            ),
            Ok(Err(e)) => tracing::error!(error = %e, "telemetry compaction failed"),
            Err(e) => tracing::error!(error = %e, "telemetry compaction panicked"),
        }
        tokio::time::sleep(COMPACT_EVERY).await;
    }
}

/// Count first starts and attempt ends from the daemon's events.
pub(crate) async fn stats_loop(c: Arc<Coord>) {
    let mut rx = c.events.subscribe();
    loop {
        let id = match rx.recv().await {
            Ok(Event::Job { id, .. }) => id,
            Ok(_) => continue,
            Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                tracing::warn!(missed = n, "the metrics counters missed job events");
                continue;
            }
            Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
        };
        let c2 = c.clone();
        let _ = tokio::task::spawn_blocking(move || count_job(&c2, id)).await;
    }
}

fn count_job(c: &Coord, id: JobId) {
    let (Ok(job), Ok(attempts)) = (c.queue.get(id), c.queue.attempts(id)) else {
        return;
    };
    let mut s = c.tele.stats();
    let since = s.started_ns;
    let (mut counted, mut start_seen) = s.seen.get(&id).copied().unwrap_or((0, false));
    for a in &attempts {
        if a.n == 1 && !start_seen {
            if let Some(t) = a.started_ns {
                start_seen = true;
                if t >= since {
                    s.submit_to_start
                        .observe((t - job.submitted_ns).max(0) as f64 / 1e9);
                }
            }
        }
        let ended = !matches!(a.state.as_str(), "assigned" | "running");
        if ended && a.n > counted {
            counted = a.n;
            if a.finished_ns.is_some_and(|f| f >= since) {
                *s.outcomes.entry(a.state.as_str().to_string()).or_insert(0) += 1;
            }
        }
    }
    s.seen.insert(id, (counted, start_seen));
    // Bounded: the oldest jobs are forgotten first.
    while s.seen.len() > 200_000 {
        s.seen.pop_first();
    }
}

/// The whole exposition, from the agents' latest reports and the queue.
fn exposition(c: &Coord) -> Result<String, QueueError> {
    let active = c.queue.active()?;
    let counts = c.queue.counts(&JobFilter::default())?;
    let mut out = Exposition::new();
    {
        let agents = c.agents.lock().unwrap_or_else(|p| p.into_inner());
        let mut names: Vec<&String> = agents.keys().collect();
        names.sort();
        let alive = |n: &str| agents[n].last_seen.elapsed() < c.lease;
        let mut gpus = Vec::new();
        for name in names.iter().filter(|n| alive(n)) {
            let e = &agents[name.as_str()];
            for g in &e.report.gpus {
                let job = active
                    .iter()
                    .find(|a| &a.agent == *name && a.gpus.contains(&g.uuid))
                    .map(|a| a.job.to_string());
                gpus.push(GpuMetric {
                    hostname: &e.report.hostname,
                    gpu: g,
                    job,
                });
            }
        }
        metrics::dcgm(&mut out, &gpus);
        out.family(
            "trainyard_agents_up",
            Kind::Gauge,
            "Agents heard from within the lease.",
        );
        out.sample(
            "trainyard_agents_up",
            &[],
            names.iter().filter(|n| alive(n)).count() as f64,
        );
        out.family(
            "trainyard_agent_up",
            Kind::Gauge,
            "1 if the agent was heard from within the lease, else 0.",
        );
        for name in &names {
            out.sample(
                "trainyard_agent_up",
                &[
                    ("agent", name),
                    ("Hostname", &agents[name.as_str()].report.hostname),
                ],
                if alive(name) { 1.0 } else { 0.0 },
            );
        }
    }
    out.family("trainyard_jobs", Kind::Gauge, "Jobs in the queue by state.");
    for (state, n) in &counts {
        out.sample("trainyard_jobs", &[("state", state)], *n as f64);
    }
    let s = c.tele.stats();
    out.family(
        "trainyard_submit_to_start_seconds",
        Kind::Histogram,
        "Time from a job's submission to its first attempt's start, for jobs started since the daemon started.",
    );
    out.histogram("trainyard_submit_to_start_seconds", &[], &s.submit_to_start);
    out.family(
        "trainyard_attempts_total",
        Kind::Counter,
        "Attempts that ended since the daemon started, by outcome.",
    );
    for outcome in ["succeeded", "failed", "cancelled", "lost"] {
        let n = s.outcomes.get(outcome).copied().unwrap_or(0);
        out.sample(
            "trainyard_attempts_total",
            &[("outcome", outcome)],
            n as f64,
        );
    }
    out.family(
        "trainyard_telemetry_samples_total",
        Kind::Counter,
        "GPU samples from agents since the daemon started: stored, refused (too old), dropped (by agents whose buffer was full).",
    );
    for (what, n) in [
        ("stored", s.samples_stored),
        ("refused", s.samples_refused),
        ("dropped", s.samples_dropped),
    ] {
        out.sample(
            "trainyard_telemetry_samples_total",
            &[("result", what)],
            n as f64,
        );
    }
    Ok(out.finish())
}

/// Who may scrape: the guard's rules, less the token over loopback or on
/// the metrics-only listener.
fn admit(
    g: &Guard,
    headers: &HeaderMap,
    peer: Option<SocketAddr>,
    open: bool,
) -> Result<(), Refusal> {
    match g.check(&Method::GET, headers, true, Some("/metrics")) {
        Err(Refusal::Token { .. }) if open || peer.is_some_and(|p| p.ip().is_loopback()) => Ok(()),
        r => r,
    }
}

async fn serve_metrics(c: Arc<Coord>, g: Arc<Guard>, open: bool, req: Request) -> Response {
    let peer = req
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|ci| ci.0);
    if let Err(refusal) = admit(&g, req.headers(), peer, open) {
        tracing::warn!(path = "/metrics", ?peer, refusal = ?refusal, "request refused");
        return refusal.into_error().into_response();
    }
    match blocking(&c, |c| Ok(exposition(c)?)).await {
        Ok(text) => ([(header::CONTENT_TYPE, metrics::CONTENT_TYPE)], text).into_response(),
        Err(e) => e.into_response(),
    }
}

/// `GET /metrics` for the API's listener: the token is needed beyond
/// loopback.
pub(crate) fn metrics_routes(c: Arc<Coord>, g: Arc<Guard>) -> Router<Arc<Coord>> {
    Router::new().route(
        "/metrics",
        get(move |req: Request| serve_metrics(c.clone(), g.clone(), false, req)),
    )
}

/// A listener that serves only `GET /metrics` (no token; the Host and
/// cross-origin rules still apply).
pub struct MetricsServer {
    listener: tokio::net::TcpListener,
    app: Router,
    addr: SocketAddr,
}

impl Server {
    /// Bind a metrics-only listener (`--metrics-bind`) beside the API's.
    pub async fn bind_metrics(&self, addr: SocketAddr) -> Result<MetricsServer, ServerError> {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|source| ServerError::Bind { addr, source })?;
        let addr = listener.local_addr().map_err(ServerError::Serve)?;
        let guard = Arc::new(self.guard.rebound(addr));
        let (c, g) = (self.coord.clone(), guard.clone());
        let app = Router::new()
            .route(
                "/metrics",
                get(move |req: Request| serve_metrics(c.clone(), g.clone(), true, req)),
            )
            .layer(axum::middleware::from_fn_with_state(guard, guard::admit));
        Ok(MetricsServer {
            listener,
            app,
            addr,
        })
    }
}

impl MetricsServer {
    /// The bound address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Serve until `shutdown` completes.
    pub async fn serve(
        self,
        shutdown: impl std::future::Future<Output = ()> + Send + 'static,
    ) -> Result<(), ServerError> {
        tracing::info!(addr = %self.addr, "metrics listening");
        axum::serve(
            self.listener,
            self.app.into_make_service_with_connect_info::<SocketAddr>(),
        )
        .with_graceful_shutdown(shutdown)
        .await
        .map_err(ServerError::Serve)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_parse_in_every_documented_form() {
        let now = 1_000_000_000_000;
        assert_eq!(parse_time("since", "now", now).unwrap(), now);
        assert_eq!(parse_time("since", "1h", now).unwrap(), now - 3_600_000);
        assert_eq!(parse_time("since", "42", now).unwrap(), 42);
        assert_eq!(
            parse_time("since", "2026-03-01T00:00:00Z", now).unwrap(),
            1_772_323_200_000
        );
        let e = parse_time("until", "yesterday", now).unwrap_err();
        assert!(format!("{e:?}").contains("until"));
    }
}
