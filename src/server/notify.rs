//! `/api/v1/notify`: notification sinks (list, add, remove, test) and the
//! delivery log with its dead letters. `crate::notify` owns the
//! behaviour; these translate. A sink's URL goes in with `POST
//! /notify/sinks` and never comes out beyond its scheme and host.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::Json;
use serde::Deserialize;
use tokio::sync::broadcast;

use super::coord::Coord;
use super::error::{blocking, parse, ApiError, ApiResult};
use crate::api::{self, AddSinkRequest, Event, NotifyLog, NotifySink, NotifyTestAnswer};
use crate::notify::{self, config as ncfg, DeliveryState, NotifyError, Origin, Rule, Sink};
use crate::secret::Secret;

impl From<NotifyError> for ApiError {
    fn from(e: NotifyError) -> ApiError {
        let (status, code) = match &e {
            NotifyError::UnknownSink { .. } => (StatusCode::NOT_FOUND, "not_found"),
            NotifyError::SinkExists { .. } | NotifyError::ConfigSink { .. } => {
                (StatusCode::CONFLICT, "conflict")
            }
            NotifyError::Db(_) => {
                tracing::error!(error = %e, "notification outbox error");
                (StatusCode::INTERNAL_SERVER_ERROR, "internal")
            }
            _ => (StatusCode::BAD_REQUEST, "bad_request"),
        };
        ApiError::new(status, code, e.to_string())
    }
}

/// What a `desktop` sink delivers through: the daemon's event channel, as
/// `notification` events (shown by the desktop shell). Delivered when
/// someone listens.
pub(crate) fn desktop_out(events: broadcast::Sender<Event>) -> notify::send::DesktopOut {
    Box::new(move |n: notify::send::DesktopNotice| {
        events
            .send(Event::Notification {
                id: n.id,
                kind: n.kind.as_str().to_string(),
                title: n.title,
                body: n.body,
                link: n.link,
            })
            .is_ok()
    })
}

/// `GET /notify/sinks`.
pub(crate) async fn sinks(State(c): State<Arc<Coord>>) -> Json<Vec<NotifySink>> {
    Json(c.notify.sinks().iter().map(NotifySink::of).collect())
}

/// `POST /notify/sinks`: checks the name, URL, events and priority, naming
/// the field at fault (`url` shown as scheme and host only).
pub(crate) async fn add(
    State(c): State<Arc<Coord>>,
    body: Bytes,
) -> ApiResult<(StatusCode, Json<NotifySink>)> {
    let req: AddSinkRequest = parse(&body)?;
    drop(body);
    notify::sink::check_name(&req.name)?;
    let events = ncfg::parse_events("events", &req.events)?;
    let priority = ncfg::check_priority("priority", req.priority)?;
    let digest = ncfg::parse_digest("digest", req.digest.as_deref())?;
    let url = req.url.filter(|u| !u.trim().is_empty());
    ncfg::check_sink_url("url", req.kind, url.as_deref())?;
    let sink = Sink {
        name: req.name,
        kind: req.kind,
        url: url.map(|u| Secret::new(u.trim())),
        rule: Rule {
            events,
            users: req.users,
            projects: req.projects,
            tags: req.tags,
            digest,
        },
        priority,
        origin: Origin::Cli,
    };
    let shown = NotifySink::of(&sink);
    blocking(&c, move |c| Ok(c.notify.add(sink)?)).await?;
    Ok((StatusCode::CREATED, Json(shown)))
}

/// `DELETE /notify/sinks/{name}`.
pub(crate) async fn remove(
    State(c): State<Arc<Coord>>,
    Path(name): Path<String>,
) -> ApiResult<StatusCode> {
    blocking(&c, move |c| Ok(c.notify.remove(&name)?)).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// `POST /notify/sinks/{name}/test`: queue a test message to that sink.
pub(crate) async fn test(
    State(c): State<Arc<Coord>>,
    Path(name): Path<String>,
) -> ApiResult<(StatusCode, Json<NotifyTestAnswer>)> {
    let sink = name.clone();
    let event_id = blocking(&c, move |c| Ok(c.notify.test(&name)?)).await?;
    Ok((
        StatusCode::ACCEPTED,
        Json(NotifyTestAnswer { event_id, sink }),
    ))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct LogQuery {
    /// `pending`, `delivered` or `dead`.
    state: Option<String>,
    limit: Option<usize>,
}

/// `GET /notify/log`: deliveries, newest event first (`state=dead`: the
/// dead letters).
pub(crate) async fn log(
    State(c): State<Arc<Coord>>,
    Query(q): Query<LogQuery>,
) -> ApiResult<Json<NotifyLog>> {
    let state = match q.state.as_deref().filter(|s| !s.is_empty()) {
        None => None,
        Some(s) => Some(DeliveryState::from_name(s).ok_or_else(|| {
            ApiError::bad(format!(
                "state: {s:?} is not a delivery state (pending, delivered, dead)"
            ))
        })?),
    };
    let limit = q.limit.unwrap_or(200).clamp(1, 5000);
    let deliveries = blocking(&c, move |c| Ok(c.notify.outbox().log(state, limit)?)).await?;
    Ok(Json(api::NotifyLog { deliveries }))
}
