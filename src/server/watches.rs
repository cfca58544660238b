//! Watch handlers: `/watches` over `crate::watch`. Translation only; the
//! rules (when to snapshot, polling, missing volumes, wandb runs) live in
//! the watch module, whose threads the daemon runs.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::Json;
use serde::Deserialize;

use super::coord::Coord;
use super::error::{blocking, parse, ApiError, ApiResult};
use crate::watch::{LogEntry, NewWatch, WatchError, WatchInfo, Watcher};

impl From<WatchError> for ApiError {
    fn from(e: WatchError) -> ApiError {
        match e {
            WatchError::Invalid { .. } => ApiError::bad(e.to_string()),
            WatchError::Unknown(_) => {
                ApiError::new(StatusCode::NOT_FOUND, "not_found", e.to_string())
            }
            WatchError::Exists { .. } => {
                ApiError::new(StatusCode::CONFLICT, "conflict", e.to_string())
            }
            WatchError::Db(_) => {
                tracing::error!(error = %e, "watch database error");
                ApiError::internal(e.to_string())
            }
        }
    }
}

fn watcher(c: &Coord) -> ApiResult<&Watcher> {
    c.watches
        .get()
        .map(|w| w.as_ref())
        .ok_or_else(|| ApiError::internal("the watcher is not running"))
}

pub(crate) async fn list(State(c): State<Arc<Coord>>) -> ApiResult<Json<Vec<WatchInfo>>> {
    Ok(Json(
        blocking(&c, |c| Ok(watcher(c)?.book().list()?)).await?,
    ))
}

pub(crate) async fn add(
    State(c): State<Arc<Coord>>,
    body: Bytes,
) -> ApiResult<(StatusCode, Json<WatchInfo>)> {
    let new: NewWatch = parse(&body)?;
    let info = blocking(&c, move |c| Ok(watcher(c)?.add(&new)?)).await?;
    Ok((StatusCode::CREATED, Json(info)))
}

pub(crate) async fn show(
    State(c): State<Arc<Coord>>,
    Path(key): Path<String>,
) -> ApiResult<Json<WatchInfo>> {
    Ok(Json(
        blocking(&c, move |c| Ok(watcher(c)?.book().get(&key)?)).await?,
    ))
}

pub(crate) async fn remove(
    State(c): State<Arc<Coord>>,
    Path(key): Path<String>,
) -> ApiResult<StatusCode> {
    blocking(&c, move |c| {
        let w = watcher(c)?;
        let id = w.book().get(&key)?.id;
        w.book().remove(id)?;
        w.reconcile();
        Ok(())
    })
    .await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn set_paused(c: Arc<Coord>, key: String, paused: bool) -> ApiResult<Json<WatchInfo>> {
    let info = blocking(&c, move |c| {
        let w = watcher(c)?;
        let id = w.book().get(&key)?.id;
        w.book().set_paused(id, paused)?;
        w.reconcile();
        Ok(w.book().get(&id.to_string())?)
    })
    .await?;
    Ok(Json(info))
}

pub(crate) async fn pause(
    State(c): State<Arc<Coord>>,
    Path(key): Path<String>,
) -> ApiResult<Json<WatchInfo>> {
    set_paused(c, key, true).await
}

pub(crate) async fn resume(
    State(c): State<Arc<Coord>>,
    Path(key): Path<String>,
) -> ApiResult<Json<WatchInfo>> {
    set_paused(c, key, false).await
}

#[derive(Deserialize)]
pub(crate) struct LogQuery {
    #[serde(default)]
    limit: Option<usize>,
}

/// `GET /watches/log`: every watch's log, newest first.
pub(crate) async fn log_all(
    State(c): State<Arc<Coord>>,
    Query(q): Query<LogQuery>,
) -> ApiResult<Json<Vec<LogEntry>>> {
    let limit = q.limit.unwrap_or(200).clamp(1, 5000);
    Ok(Json(
        blocking(&c, move |c| {
            Ok(watcher(c)?
                .book()
                .logs(None, limit)
                .map_err(WatchError::from)?)
        })
        .await?,
    ))
}

/// `GET /watches/{id}/log`: one watch's log, newest first.
pub(crate) async fn log(
    State(c): State<Arc<Coord>>,
    Path(key): Path<String>,
    Query(q): Query<LogQuery>,
) -> ApiResult<Json<Vec<LogEntry>>> {
    let limit = q.limit.unwrap_or(200).clamp(1, 5000);
    Ok(Json(
        blocking(&c, move |c| {
            let w = watcher(c)?;
            let id = w.book().get(&key)?.id;
            Ok(w.book().logs(Some(id), limit).map_err(WatchError::from)?)
        })
        .await?,
    ))
}
