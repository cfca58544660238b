//! `/api/v1/clusters`: SLURM clusters (add, list, remove, test, the pool
//! each offers) over `crate::cluster`, and the follower loop that submits
//! and follows their jobs. Translation and timing only; the behaviour
//! lives in the cluster module.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;

use super::coord::Coord;
use super::error::{blocking, parse, ApiError, ApiResult};
use crate::api::ClusterPool;
use crate::cluster::{self, follow, Cluster, ClusterError, ClusterStatus, Clusters, TestReport};
use crate::db::now_ns;

impl From<ClusterError> for ApiError {
    fn from(e: ClusterError) -> ApiError {
        match e {
            ClusterError::Queue(q) => q.into(),
            ClusterError::Invalid { .. } => ApiError::bad(e.to_string()),
            ClusterError::Unknown(_) => {
                ApiError::new(StatusCode::NOT_FOUND, "not_found", e.to_string())
            }
            ClusterError::Exists(_) | ClusterError::Busy { .. } => {
                ApiError::new(StatusCode::CONFLICT, "conflict", e.to_string())
            }
            ClusterError::Run(r) => ApiError::new(
                StatusCode::BAD_GATEWAY,
                if r.is_unreachable() {
                    "cluster_unreachable"
                } else {
                    "cluster_error"
                },
                r.to_string(),
            ),
        }
    }
}

/// `GET /clusters`.
pub(crate) async fn list(State(c): State<Arc<Coord>>) -> ApiResult<Json<Vec<ClusterStatus>>> {
    Ok(Json(
        blocking(&c, |c| Ok(Clusters::new(&c.queue).list()?)).await?,
    ))
}

/// `POST /clusters`: a [`Cluster`], every field checked.
pub(crate) async fn add(
    State(c): State<Arc<Coord>>,
    body: Bytes,
) -> ApiResult<(StatusCode, Json<Cluster>)> {
    let new: Cluster = parse(&body)?;
    let added = blocking(&c, move |c| {
        Clusters::new(&c.queue).add(&new)?;
        Ok(new)
    })
    .await?;
    Ok((StatusCode::CREATED, Json(added)))
}

/// `DELETE /clusters/{name}`: refused (409) while jobs are queued or
/// running on it.
pub(crate) async fn remove(
    State(c): State<Arc<Coord>>,
    Path(name): Path<String>,
) -> ApiResult<StatusCode> {
    blocking(&c, move |c| Ok(Clusters::new(&c.queue).remove(&name)?)).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// `POST /clusters/{name}/test`: the client commands, the partition, its
/// GPUs.
pub(crate) async fn test(
    State(c): State<Arc<Coord>>,
    Path(name): Path<String>,
) -> ApiResult<Json<TestReport>> {
    Ok(Json(
        blocking(&c, move |c| {
            let cl = Clusters::new(&c.queue).get(&name)?;
            Ok(cluster::test(&cl))
        })
        .await?,
    ))
}

/// `GET /clusters/pools`: each cluster as a GPU pool, from `sinfo` (a
/// cluster that does not answer is listed with the error).
pub(crate) async fn pools(State(c): State<Arc<Coord>>) -> ApiResult<Json<Vec<ClusterPool>>> {
    Ok(Json(
        blocking(&c, |c| {
            let all = Clusters::new(&c.queue).list()?;
            Ok(all
                .into_iter()
                .map(|s| match cluster::pool(&s.cluster) {
                    Ok(p) => ClusterPool {
                        cluster: s.cluster.name,
                        pool: Some(p),
                        error: None,
                    },
                    Err(e) => ClusterPool {
                        cluster: s.cluster.name,
                        pool: None,
                        error: Some(e.to_string()),
                    },
                })
                .collect())
        })
        .await?,
    ))
}

/// Poll each cluster when its interval is due (5 s after a change, doubling
/// to 60 s while nothing changes), all of them at once when a job was
/// submitted or cancelled; move overflowing LAN jobs every second.
pub(crate) async fn follow_loop(coord: Arc<Coord>) {
    let mut due: HashMap<String, (Instant, Duration)> = HashMap::new();
    loop {
        let c = coord.clone();
        let step = tokio::task::spawn_blocking(move || {
            let f = follow::Follower::new(&c.queue, &c.logs);
            let moved = f.overflow(now_ns())?;
            let clusters = Clusters::new(&c.queue).list()?;
            Ok::<_, ClusterError>((moved, clusters))
        })
        .await;
        let (moved, clusters) = match step {
            Ok(Ok(v)) => v,
            Ok(Err(e)) => {
                tracing::error!(error = %e, "cluster follower failed");
                tokio::time::sleep(Duration::from_secs(5)).await;
                continue;
            }
            Err(e) => {
                tracing::error!(error = %e, "cluster follower panicked");
                tokio::time::sleep(Duration::from_secs(5)).await;
                continue;
            }
        };
        for (id, cl) in &moved {
            coord.job_event(*id, crate::queue::JobState::Queued);
            due.insert(cl.clone(), (Instant::now(), follow::MIN_INTERVAL));
        }
        due.retain(|name, _| clusters.iter().any(|c| &c.cluster.name == name));
        for s in clusters {
            let name = s.cluster.name.clone();
            let (at, interval) = *due
                .entry(name.clone())
                .or_insert((Instant::now(), follow::MIN_INTERVAL));
            if at > Instant::now() {
                continue;
            }
            let c = coord.clone();
            let cl = s.cluster;
            let r = tokio::task::spawn_blocking(move || {
                follow::Follower::new(&c.queue, &c.logs).poll(&cl)
            })
            .await;
            let changed = match r {
                Ok(Ok(report)) => {
                    for (id, st) in &report.changed {
                        coord.job_event(*id, *st);
                    }
                    if report.changed.iter().any(|(_, st)| st.is_terminal()) {
                        coord.wake_sched.notify_one();
                    }
                    report.activity
                }
                Ok(Err(e)) => {
                    tracing::error!(cluster = name, error = %e, "cluster poll failed");
                    false
                }
                Err(e) => {
                    tracing::error!(cluster = name, error = %e, "cluster poll panicked");
                    false
                }
            };
            let next = follow::next_interval(interval, changed);
            due.insert(name, (Instant::now() + next, next));
        }
        // Every second while clusters are followed; without any, only the
        // overflow check is left (it names a cluster, so it waits too).
        let tick = if due.is_empty() {
            Duration::from_secs(10)
        } else {
            Duration::from_secs(1)
        };
        let woken = tokio::time::timeout(tick, coord.wake_clusters.notified())
            .await
            .is_ok();
        if woken {
            for v in due.values_mut() {
                *v = (Instant::now(), follow::MIN_INTERVAL);
            }
        }
    }
}
