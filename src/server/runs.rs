//! Run handlers: the wandb run index over HTTP (list, show, history, scan).
//! `wandb::index` owns the behaviour; these translate only.

use std::path::PathBuf;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::Json;
use serde::Deserialize;

use super::coord::Coord;
use super::routes::{blocking, parse, ApiError, ApiResult};
use crate::wandb::index::{IndexError, RunDetail, RunIndex, RunSummary, ScanOptions, ScanReport};

impl From<IndexError> for ApiError {
    fn from(e: IndexError) -> ApiError {
        let (status, code) = match &e {
            IndexError::NotFound(_) => (StatusCode::NOT_FOUND, "not_found"),
            IndexError::BadRoot { .. } => (StatusCode::BAD_REQUEST, "bad_request"),
            _ => {
                tracing::error!(error = %e, "run index error");
                (StatusCode::INTERNAL_SERVER_ERROR, "internal")
            }
        };
        ApiError::new(status, code, e.to_string())
    }
}

fn open(c: &Coord) -> ApiResult<RunIndex> {
    Ok(RunIndex::open(&c.home.runs_path())?)
}

#[derive(Deserialize)]
pub(crate) struct ListQuery {
    project: Option<String>,
    state: Option<String>,
}

pub(crate) async fn list(
    State(c): State<Arc<Coord>>,
    Query(q): Query<ListQuery>,
) -> ApiResult<Json<Vec<RunSummary>>> {
    let runs = blocking(&c, move |c| {
        Ok(open(c)?.list(q.project.as_deref(), q.state.as_deref())?)
    })
    .await?;
    Ok(Json(runs))
}

pub(crate) async fn show(
    State(c): State<Arc<Coord>>,
    Path(id): Path<String>,
) -> ApiResult<Json<RunDetail>> {
    Ok(Json(blocking(&c, move |c| Ok(open(c)?.get(&id)?)).await?))
}

#[derive(Deserialize)]
pub(crate) struct HistoryQuery {
    #[serde(default)]
    keys: Option<String>,
}

pub(crate) async fn history(
    State(c): State<Arc<Coord>>,
    Path(id): Path<String>,
    Query(q): Query<HistoryQuery>,
) -> ApiResult<Json<serde_json::Value>> {
    let keys: Vec<String> = q
        .keys
        .unwrap_or_default()
        .split(',')
        .filter(|k| !k.is_empty())
        .map(str::to_string)
        .collect();
    let t = blocking(&c, move |c| Ok(open(c)?.history(&id, &keys)?)).await?;
    Ok(Json(t.numeric()))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ScanRequest {
    paths: Vec<PathBuf>,
}

pub(crate) async fn scan(
    State(c): State<Arc<Coord>>,
    body: Bytes,
) -> ApiResult<(StatusCode, Json<ScanReport>)> {
    let req: ScanRequest = parse(&body)?;
    if req.paths.is_empty() {
        return Err(ApiError::bad("paths: give at least one directory"));
    }
    if let Some(p) = req.paths.iter().find(|p| !p.is_absolute()) {
        return Err(ApiError::bad(format!(
            "paths: {} is not absolute",
            p.display()
        )));
    }
    let r = blocking(&c, move |c| {
        Ok(open(c)?.scan(&req.paths, ScanOptions::default())?)
    })
    .await?;
    Ok((StatusCode::OK, Json(r)))
}
