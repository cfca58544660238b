//! Run handlers: the wandb run index over HTTP (list, show, history, scan)
//! with each run's sync state, and syncing a run to a W&B server.
//! `wandb::index` and `wandb::sync` own the behaviour; these translate only.

use std::path::PathBuf;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::Json;
use serde::Deserialize;

use super::coord::Coord;
use super::error::{blocking, parse, ApiError, ApiResult};
use crate::progress::NoProgress;
use crate::wandb::index::{IndexError, RunDetail, RunIndex, RunSummary, ScanOptions, ScanReport};
use crate::wandb::sync::{self, creds, ledger::Ledger, RunReport, SyncError, SyncOptions, Syncer};

impl From<IndexError> for ApiError {
    fn from(e: IndexError) -> ApiError {
        let (status, code) = match &e {
            IndexError::NotFound(_) => (StatusCode::NOT_FOUND, "not_found"),
            IndexError::BadRoot { .. } | IndexError::OwnTag { .. } => {
                (StatusCode::BAD_REQUEST, "bad_request")
            }
            _ => {
                tracing::error!(error = %e, "run index error");
                (StatusCode::INTERNAL_SERVER_ERROR, "internal")
            }
        };
        ApiError::new(status, code, e.to_string())
    }
}

impl From<SyncError> for ApiError {
    fn from(e: SyncError) -> ApiError {
        let status = match &e {
            SyncError::NoHost
            | SyncError::BadHost { .. }
            | SyncError::NoKey { .. }
            | SyncError::NetrcTooOpen { .. } => StatusCode::BAD_REQUEST,
            SyncError::Db(_) | SyncError::Client(_) => {
                tracing::error!(error = %e, "sync error");
                StatusCode::INTERNAL_SERVER_ERROR
            }
            _ => StatusCode::BAD_GATEWAY,
        };
        let code = if status == StatusCode::BAD_REQUEST {
            "bad_request"
        } else if status == StatusCode::BAD_GATEWAY {
            "sync_failed"
        } else {
            "internal"
        };
        ApiError::new(status, code, e.to_string())
    }
}

fn open(c: &Coord) -> ApiResult<RunIndex> {
    Ok(RunIndex::open(&c.home.runs_path())?)
}

/// Fills in each run's sync state from the ledger.
fn with_sync(c: &Coord, runs: &mut [RunSummary]) -> ApiResult<()> {
    let ledger = Ledger::open(&c.home.sync_path()).map_err(SyncError::from)?;
    let mut states = sync::states(&ledger)?;
    for r in runs {
        r.sync = states.remove(&r.dir).unwrap_or_default();
    }
    Ok(())
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
        let mut runs = open(c)?.list(q.project.as_deref(), q.state.as_deref())?;
        with_sync(c, &mut runs)?;
        Ok(runs)
    })
    .await?;
    Ok(Json(runs))
}

pub(crate) async fn show(
    State(c): State<Arc<Coord>>,
    Path(id): Path<String>,
) -> ApiResult<Json<RunDetail>> {
    Ok(Json(
        blocking(&c, move |c| {
            let mut d = open(c)?.get(&id)?;
            with_sync(c, std::slice::from_mut(&mut d.run))?;
            Ok(d)
        })
        .await?,
    ))
}

/// `POST /runs/{id}/tags`: add and remove tags of a run (an ignore tag
/// takes it out of the usage report, retroactively).
pub(crate) async fn tag(
    State(c): State<Arc<Coord>>,
    Path(id): Path<String>,
    body: Bytes,
) -> ApiResult<Json<crate::api::RunTagAnswer>> {
    let req: crate::api::TagRequest = parse(&body)?;
    for t in req.add.iter().chain(&req.remove) {
        crate::queue::check_tag(t).map_err(crate::queue::QueueError::from)?;
    }
    let (run, tags) = blocking(&c, move |c| Ok(open(c)?.tag(&id, &req.add, &req.remove)?)).await?;
    Ok(Json(crate::api::RunTagAnswer { run, tags }))
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct SyncRequest {
    /// The server; default: the daemon's WANDB_BASE_URL or wandb settings.
    host: Option<String>,
    entity: Option<String>,
    project: Option<String>,
    #[serde(default)]
    force: bool,
}

/// `POST /runs/{id}/sync`: syncs one run to a W&B server with the
/// daemon's credentials (environment or ~/.netrc) and returns the report.
pub(crate) async fn sync_run(
    State(c): State<Arc<Coord>>,
    Path(id): Path<String>,
    body: Bytes,
) -> ApiResult<Json<RunReport>> {
    let req: SyncRequest = if body.is_empty() {
        SyncRequest::default()
    } else {
        parse(&body)?
    };
    let dir = {
        let id = id.clone();
        blocking(&c, move |c| Ok(PathBuf::from(open(c)?.get(&id)?.run.dir))).await?
    };
    let server = creds::resolve(req.host.as_deref(), &creds::process_env)?;
    let ledger = Arc::new(Ledger::open(&c.home.sync_path()).map_err(SyncError::from)?);
    let opts = SyncOptions {
        entity: req.entity,
        project: req.project,
        force: req.force,
        ..SyncOptions::default()
    };
    let syncer = Syncer::new(server, ledger, opts, sync::Retry::default())?;
    let mut report = syncer.sync_dirs(&[dir], &NoProgress).await;
    let report = report.runs.remove(0);
    if report.outcome == sync::SyncOutcome::Failed {
        let event = crate::notify::Event {
            run: Some(id.clone()),
            detail: report.error.clone(),
            ..Default::default()
        };
        let cc = c.clone();
        let _ = tokio::task::spawn_blocking(move || {
            cc.notify(crate::notify::EventKind::WandbSyncFailed, &event)
        })
        .await;
    }
    c.emit(crate::api::Event::Run {
        id,
        sync: report.outcome,
    });
    Ok(Json(report))
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
