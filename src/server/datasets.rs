//! Dataset handlers: the store's catalog over HTTP for the UI (list,
//! versions, diff, snapshot). The store stays the owner of all behaviour;
//! these translate only.

use std::path::PathBuf;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::Json;
use serde::Deserialize;

use super::coord::Coord;
use super::error::{blocking, parse, ApiError, ApiResult};
use crate::store::{self, AddOptions, DatasetRef, Store};

impl From<store::Error> for ApiError {
    fn from(e: store::Error) -> ApiError {
        use store::Error as E;
        let (status, code) = match &e {
            E::UnknownDataset(_)
            | E::NoVersions(_)
            | E::UnknownRef { .. }
            | E::UnknownTag { .. } => (StatusCode::NOT_FOUND, "not_found"),
            E::InvalidName { .. }
            | E::AmbiguousRef { .. }
            | E::NotFound(_)
            | E::UnsupportedFileType { .. }
            | E::FileChanged(_) => (StatusCode::BAD_REQUEST, "bad_request"),
            _ => {
                tracing::error!(error = %e, "store error");
                (StatusCode::INTERNAL_SERVER_ERROR, "internal")
            }
        };
        ApiError::new(status, code, e.to_string())
    }
}

fn open(c: &Coord) -> ApiResult<Store> {
    Ok(Store::open(&c.home)?)
}

fn dref(name: &str, reference: &str) -> ApiResult<DatasetRef> {
    format!("{name}@{reference}")
        .parse()
        .map_err(|e: store::Error| ApiError::from(e))
}

pub(crate) async fn list(State(c): State<Arc<Coord>>) -> ApiResult<Json<Vec<store::DatasetInfo>>> {
    Ok(Json(blocking(&c, |c| Ok(open(c)?.datasets()?)).await?))
}

pub(crate) async fn versions(
    State(c): State<Arc<Coord>>,
    Path(name): Path<String>,
) -> ApiResult<Json<Vec<store::VersionInfo>>> {
    Ok(Json(blocking(&c, move |c| Ok(open(c)?.log(&name)?)).await?))
}

#[derive(Deserialize)]
pub(crate) struct DiffQuery {
    a: String,
    b: String,
}

pub(crate) async fn diff(
    State(c): State<Arc<Coord>>,
    Path(name): Path<String>,
    Query(q): Query<DiffQuery>,
) -> ApiResult<Json<serde_json::Value>> {
    let v = blocking(&c, move |c| {
        let (ra, rb) = (dref(&name, &q.a)?, dref(&name, &q.b)?);
        let (a, b, changes) = open(c)?.diff(&ra, &rb)?;
        Ok(serde_json::json!({ "a": a, "b": b, "changes": changes }))
    })
    .await?;
    Ok(Json(v))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SnapshotRequest {
    path: PathBuf,
    #[serde(default)]
    message: Option<String>,
    #[serde(default)]
    tag: Option<String>,
}

pub(crate) async fn snapshot(
    State(c): State<Arc<Coord>>,
    Path(name): Path<String>,
    body: Bytes,
) -> ApiResult<(StatusCode, Json<store::AddReport>)> {
    let req: SnapshotRequest = parse(&body)?;
    if !req.path.is_absolute() {
        return Err(ApiError::bad(format!(
            "path: {} is not absolute",
            req.path.display()
        )));
    }
    let r = blocking(&c, move |c| {
        Ok(open(c)?.add(
            &req.path,
            &AddOptions {
                name: Some(name),
                message: req.message,
                tag: req.tag,
                author: None,
            },
            &crate::progress::NoProgress,
        )?)
    })
    .await?;
    Ok((StatusCode::CREATED, Json(r)))
}

/// One remote's view of a dataset, for the UI.
#[derive(serde::Serialize)]
pub(crate) struct RemoteState {
    name: String,
    url: String,
    /// `in_sync`, `behind` (local versions not pushed), `ahead` (versions
    /// only on the remote), `diverged`, `empty` or `error`.
    state: &'static str,
    detail: String,
    versions: Vec<String>,
    tags: std::collections::BTreeMap<String, String>,
}

/// Each configured remote's versions and tags of a dataset, compared with
/// the local versions. A remote that cannot be reached is reported, not fatal.
pub(crate) async fn remotes(
    State(c): State<Arc<Coord>>,
    Path(name): Path<String>,
) -> ApiResult<Json<Vec<RemoteState>>> {
    use crate::remote::{sync, Remote, Remotes};
    let n = name.clone();
    let local: std::collections::HashSet<String> = blocking(&c, move |c| {
        Ok(open(c)?
            .log(&n)?
            .into_iter()
            .map(|v| v.id.to_hex())
            .collect())
    })
    .await?;
    let cfg =
        Remotes::load(&c.home.remotes_path()).map_err(|e| ApiError::internal(e.to_string()))?;
    let mut out = Vec::new();
    for (rname, rc) in cfg.list() {
        let mut st = RemoteState {
            name: rname.clone(),
            url: rc.url.clone(),
            state: "error",
            detail: String::new(),
            versions: Vec::new(),
            tags: Default::default(),
        };
        let got = match Remote::open(rname, rc) {
            Ok(r) => sync::dataset_state(&r, &c.home, &name).await,
            Err(e) => Err(e),
        };
        match got {
            Ok((ids, tags)) => {
                st.versions = ids.iter().map(|i| i.to_hex()).collect();
                st.tags = tags;
                let remote: std::collections::HashSet<&String> = st.versions.iter().collect();
                let missing = local.iter().filter(|v| !remote.contains(v)).count();
                let extra = st.versions.iter().filter(|v| !local.contains(*v)).count();
                st.state = match (missing, extra, st.versions.is_empty()) {
                    (_, _, true) => "empty",
                    (0, 0, _) => "in_sync",
                    (_, 0, _) => "behind",
                    (0, _, _) => "ahead",
                    _ => "diverged",
                };
                st.detail = format!(
                    "{} of {} local versions pushed{}",
                    local.len() - missing,
                    local.len(),
                    if extra > 0 {
                        format!("; {extra} only on the remote")
                    } else {
                        String::new()
                    }
                );
            }
            Err(e) => st.detail = e.to_string(),
        }
        out.push(st);
    }
    Ok(Json(out))
}
