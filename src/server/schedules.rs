//! Schedule handlers: `/schedules` over `crate::schedule`. Translation
//! only; the rules (cron, catch-up, overlap, windows, data triggers) live
//! in the schedule module.

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;

use super::coord::Coord;
use super::error::{blocking, parse, ApiError, ApiResult};
use crate::api::Event;
use crate::schedule::{NewSchedule, RunAnswer, ScheduleDetail, ScheduleError, ScheduleInfo};

impl From<ScheduleError> for ApiError {
    fn from(e: ScheduleError) -> ApiError {
        match e {
            ScheduleError::Queue(q) => q.into(),
            ScheduleError::Spec(_) | ScheduleError::Invalid { .. } => ApiError::bad(e.to_string()),
            ScheduleError::Unknown(_) => {
                ApiError::new(StatusCode::NOT_FOUND, "not_found", e.to_string())
            }
            ScheduleError::Exists(_) | ScheduleError::NothingToRun { .. } => {
                ApiError::new(StatusCode::CONFLICT, "conflict", e.to_string())
            }
            ScheduleError::Store(_) => {
                tracing::error!(error = %e, "store error");
                ApiError::internal(e.to_string())
            }
        }
    }
}

fn now() -> jiff::Timestamp {
    jiff::Timestamp::now()
}

pub(crate) async fn list(State(c): State<Arc<Coord>>) -> ApiResult<Json<Vec<ScheduleInfo>>> {
    Ok(Json(
        blocking(&c, |c| Ok(c.schedules().list(now())?)).await?,
    ))
}

pub(crate) async fn add(
    State(c): State<Arc<Coord>>,
    body: Bytes,
) -> ApiResult<(StatusCode, Json<ScheduleInfo>)> {
    let new: NewSchedule = parse(&body)?;
    let info = blocking(&c, move |c| {
        let store = if new.on_dataset.is_some() {
            c.store()
        } else {
            None
        };
        Ok(c.schedules().add(new, &c.default_zone(), store, now())?)
    })
    .await?;
    c.emit(Event::Schedule {
        name: info.name.clone(),
    });
    c.wake_schedules.notify_one();
    Ok((StatusCode::CREATED, Json(info)))
}

pub(crate) async fn show(
    State(c): State<Arc<Coord>>,
    Path(name): Path<String>,
) -> ApiResult<Json<ScheduleDetail>> {
    Ok(Json(
        blocking(&c, move |c| Ok(c.schedules().show(&name, now())?)).await?,
    ))
}

pub(crate) async fn remove(
    State(c): State<Arc<Coord>>,
    Path(name): Path<String>,
) -> ApiResult<StatusCode> {
    let n = name.clone();
    blocking(&c, move |c| Ok(c.schedules().remove(&n)?)).await?;
    c.emit(Event::Schedule { name });
    Ok(StatusCode::NO_CONTENT)
}

async fn set_paused(c: Arc<Coord>, name: String, paused: bool) -> ApiResult<Json<ScheduleInfo>> {
    let info = blocking(&c, move |c| {
        let store = c.store();
        Ok(c.schedules().set_paused(&name, paused, store, now())?)
    })
    .await?;
    c.emit(Event::Schedule {
        name: info.name.clone(),
    });
    c.wake_schedules.notify_one();
    Ok(Json(info))
}

pub(crate) async fn pause(
    State(c): State<Arc<Coord>>,
    Path(name): Path<String>,
) -> ApiResult<Json<ScheduleInfo>> {
    set_paused(c, name, true).await
}

pub(crate) async fn resume(
    State(c): State<Arc<Coord>>,
    Path(name): Path<String>,
) -> ApiResult<Json<ScheduleInfo>> {
    set_paused(c, name, false).await
}

/// Fire a schedule now, under its overlap policy.
pub(crate) async fn run(
    State(c): State<Arc<Coord>>,
    Path(name): Path<String>,
) -> ApiResult<Json<RunAnswer>> {
    let answer = blocking(&c, move |c| {
        let (occurrence, fx) = c.schedules().run_now(&name, c.store(), now())?;
        c.announce(&fx);
        Ok(RunAnswer { name, occurrence })
    })
    .await?;
    Ok(Json(answer))
}
