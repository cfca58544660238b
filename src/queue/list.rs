//! Reading the queue page by page (a lab's history is 100,000 jobs; no
//! caller ever gets them all at once) and forgetting old finished jobs
//! (retention). Pages are keyset-paginated: a cursor names the last row
//! returned, so a page costs the same at any depth and jobs submitted or
//! finished meanwhile neither repeat nor shift rows.

use std::collections::BTreeMap;

use rusqlite::types::Value;
use rusqlite::{params_from_iter, OptionalExtension, TransactionBehavior};

use super::{Job, JobId, JobState, Queue, QueueError, Result, SpecError};

/// The most jobs one page holds.
pub const MAX_PAGE: usize = 5_000;

/// The columns of a [`Job`], with its latest attempt; callers append
/// `WHERE`/`ORDER BY` on `j` (jobs) and `a` (attempts).
pub(super) const JOB_SELECT: &str =
    "SELECT j.id, j.spec, j.state, j.attempts, j.reason, j.submitted_ns, j.exit_code, j.finished_ns,
            a.agent, a.gpus, a.started_ns, a.gpu_indices, j.priority, a.idle_status
     FROM jobs j LEFT JOIN attempts a ON a.job_id = j.id AND a.n = j.attempts";

/// One row of [`JOB_SELECT`], unparsed.
pub(super) type JobRow = (
    i64,
    String,
    String,
    i64,
    Option<String>,
    i64,
    Option<i32>,
    Option<i64>,
    Option<String>,
    Option<String>,
    Option<i64>,
    Option<String>,
    Option<String>,
);

pub(super) fn job_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<JobRow> {
    Ok((
        r.get(0)?,
        r.get(1)?,
        r.get(2)?,
        r.get(3)?,
        r.get(4)?,
        r.get(5)?,
        r.get(6)?,
        r.get(7)?,
        r.get(8)?,
        r.get(9)?,
        r.get(10)?,
        r.get(11)?,
        r.get(13)?,
    ))
}

pub(super) fn job_of_row(row: JobRow) -> Result<Job> {
    let id = JobId(row.0);
    Ok(Job {
        id,
        spec: serde_json::from_str(&row.1).map_err(|e| {
            QueueError::Spec(SpecError {
                field: format!("(stored spec of job {id})"),
                reason: e.to_string(),
            })
        })?,
        state: JobState::parse(&row.2),
        attempts: row.3 as u32,
        reason: row.4,
        submitted_ns: row.5,
        exit_code: row.6,
        finished_ns: row.7,
        agent: row.8,
        gpus: row
            .9
            .map(|g| serde_json::from_str(&g).unwrap_or_default())
            .unwrap_or_default(),
        started_ns: row.10,
        gpu_indices: row
            .11
            .map(|g| serde_json::from_str(&g).unwrap_or_default())
            .unwrap_or_default(),
        idle: row.12.and_then(|s| serde_json::from_str(&s).ok()),
    })
}

/// Which jobs a listing holds. Empty fields do not filter.
#[derive(Debug, Clone, Default)]
pub struct JobFilter {
    /// Any of these states.
    pub states: Vec<JobState>,
    /// Submitted by this user.
    pub user: Option<String>,
    /// In this project.
    pub project: Option<String>,
    /// With this tag.
    pub tag: Option<String>,
    /// The id, or a case-insensitive substring of the spec (name, command,
    /// arguments), user or project.
    pub text: Option<String>,
}

/// The order of a listing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JobOrder {
    /// Scheduling order: priority (higher first), then submission.
    Queue,
    /// Finished jobs only, most recently finished first.
    Finished,
}

impl JobOrder {
    /// Parse `queue` or `finished`.
    pub fn from_name(s: &str) -> Option<JobOrder> {
        match s {
            "queue" => Some(JobOrder::Queue),
            "finished" => Some(JobOrder::Finished),
            _ => None,
        }
    }
    /// The order's name in the API (`queue`, `finished`).
    pub fn as_str(self) -> &'static str {
        match self {
            JobOrder::Queue => "queue",
            JobOrder::Finished => "finished",
        }
    }
    fn tag(self) -> char {
        match self {
            JobOrder::Queue => 'q',
            JobOrder::Finished => 'f',
        }
    }
}

/// Where the next page starts: the sort key of the last row returned.
/// Written `q.PRIORITY.ID` or `f.FINISHED_NS.ID`; opaque to clients.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cursor {
    order: JobOrder,
    key: i64,
    id: i64,
}

impl Cursor {
    /// Parse a cursor for a listing in `order`.
    pub fn parse(text: &str, order: JobOrder) -> Result<Cursor> {
        let bad = || QueueError::BadCursor {
            cursor: text.to_string(),
        };
        let mut parts = text.split('.');
        let (Some(t), Some(k), Some(i), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(bad());
        };
        if t.len() != 1 || !t.starts_with(order.tag()) {
            return Err(bad());
        }
        Ok(Cursor {
            order,
            key: k.parse().map_err(|_| bad())?,
            id: i.parse().map_err(|_| bad())?,
        })
    }
}

impl std::fmt::Display for Cursor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}.{}", self.order.tag(), self.key, self.id)
    }
}

/// One page of a listing.
#[derive(Debug, Clone)]
pub struct JobPage {
    /// The jobs, in the listing's order.
    pub jobs: Vec<Job>,
    /// Where the next page starts; `None` on the last page.
    pub next: Option<Cursor>,
    /// How many jobs match the filter, on all pages.
    pub total: u64,
}

const TERMINAL: [JobState; 5] = [
    JobState::Succeeded,
    JobState::Failed,
    JobState::Cancelled,
    JobState::Lost,
    JobState::IdleStopped,
];

/// The `WHERE` terms (on `j`) and their parameters for a filter, for a
/// page in `order` or (`count`) the number of jobs such pages hold.
///
/// Finished jobs are exactly those with a `finished_ns` (schema 3). A page
/// of them is read along `jobs_by_finish` (`+j.state` keeps the planner
/// from sorting every finished job found by `jobs_by_state` instead); their
/// count needs no `finished_ns` and is answered from `jobs_by_state` alone.
fn filter_sql(f: &JobFilter, order: JobOrder, count: bool) -> (Vec<String>, Vec<Value>) {
    let mut terms = Vec::new();
    let mut params = Vec::new();
    let mut states = f.states.clone();
    let finished_page = order == JobOrder::Finished && !count;
    if finished_page {
        terms.push("j.finished_ns IS NOT NULL".to_string());
    }
    if states.is_empty() && order == JobOrder::Finished {
        states = TERMINAL.to_vec();
    }
    if !states.is_empty() {
        terms.push(format!(
            "{}j.state IN ({})",
            if finished_page { "+" } else { "" },
            vec!["?"; states.len()].join(", ")
        ));
        params.extend(states.iter().map(|s| Value::Text(s.as_str().into())));
    }
    if let Some(u) = &f.user {
        terms.push("j.user = ?".into());
        params.push(Value::Text(u.clone()));
    }
    if let Some(p) = &f.project {
        terms.push("j.project = ?".into());
        params.push(Value::Text(p.clone()));
    }
    if let Some(t) = &f.tag {
        terms.push("j.id IN (SELECT job_id FROM job_tags WHERE tag = ?)".into());
        params.push(Value::Text(t.clone()));
    }
    if let Some(q) = f.text.as_deref().map(str::trim).filter(|q| !q.is_empty()) {
        let like = format!(
            "%{}%",
            q.replace('\\', "\\\\")
                .replace('%', "\\%")
                .replace('_', "\\_")
        );
        match q.parse::<i64>() {
            Ok(id) => {
                terms.push(
                    "(j.id = ? OR j.spec LIKE ? ESCAPE '\\' OR j.user LIKE ? ESCAPE '\\')".into(),
                );
                params.push(Value::Integer(id));
            }
            Err(_) => terms.push("(j.spec LIKE ? ESCAPE '\\' OR j.user LIKE ? ESCAPE '\\')".into()),
        }
        params.push(Value::Text(like.clone()));
        params.push(Value::Text(like));
    }
    (terms, params)
}

fn where_clause(terms: &[String]) -> String {
    if terms.is_empty() {
        String::new()
    } else {
        format!(" WHERE {}", terms.join(" AND "))
    }
}

impl Queue {
    /// One page of the jobs matching `filter`, in `order`, after `after`
    /// (from the start when `None`); `limit` is capped at [`MAX_PAGE`].
    /// `JobOrder::Finished` lists only finished jobs.
    pub fn page(
        &self,
        filter: &JobFilter,
        order: JobOrder,
        after: Option<Cursor>,
        limit: usize,
    ) -> Result<JobPage> {
        let limit = limit.clamp(1, MAX_PAGE);
        let conn = self.conn()?;
        let (count_terms, count_params) = filter_sql(filter, order, true);
        let total: i64 = conn
            .prepare_cached(&format!(
                "SELECT count(*) FROM jobs j{}",
                where_clause(&count_terms)
            ))
            .map_err(self.sql())?
            .query_row(params_from_iter(count_params.iter()), |r| r.get(0))
            .map_err(self.sql())?;
        let (mut terms, mut params) = filter_sql(filter, order, false);
        if let Some(c) = after {
            // `k <= ?` first: the index range starts at the cursor.
            terms.push(match order {
                JobOrder::Queue => "j.priority <= ? AND (j.priority < ? OR j.id > ?)".into(),
                JobOrder::Finished => {
                    "j.finished_ns <= ? AND (j.finished_ns < ? OR j.id < ?)".into()
                }
            });
            params.extend([
                Value::Integer(c.key),
                Value::Integer(c.key),
                Value::Integer(c.id),
            ]);
        }
        let order_by = match order {
            JobOrder::Queue => "j.priority DESC, j.id",
            JobOrder::Finished => "j.finished_ns DESC, j.id DESC",
        };
        let sql = format!(
            "{JOB_SELECT}{} ORDER BY {order_by} LIMIT {}",
            where_clause(&terms),
            limit + 1
        );
        let mut st = conn.prepare_cached(&sql).map_err(self.sql())?;
        let mut keys = Vec::new();
        let rows: Vec<JobRow> = st
            .query_map(params_from_iter(params.iter()), |r| {
                let priority: i64 = r.get(12)?;
                let row = job_row(r)?;
                keys.push(priority);
                Ok(row)
            })
            .map_err(self.sql())?
            .collect::<rusqlite::Result<_>>()
            .map_err(self.sql())?;
        let more = rows.len() > limit;
        let mut jobs = Vec::with_capacity(limit.min(rows.len()));
        for row in rows.into_iter().take(limit) {
            jobs.push(job_of_row(row)?);
        }
        let next = match (more, jobs.last()) {
            (true, Some(last)) => Some(Cursor {
                order,
                key: match order {
                    JobOrder::Queue => keys[jobs.len() - 1],
                    JobOrder::Finished => last.finished_ns.unwrap_or(0),
                },
                id: last.id.0,
            }),
            _ => None,
        };
        Ok(JobPage {
            jobs,
            next,
            total: total as u64,
        })
    }

    /// How many jobs are in each state, among those matching `filter` (its
    /// `states` ignored). Every state is present, with 0 when none.
    pub fn counts(&self, filter: &JobFilter) -> Result<BTreeMap<String, u64>> {
        let f = JobFilter {
            states: Vec::new(),
            ..filter.clone()
        };
        let (terms, params) = filter_sql(&f, JobOrder::Queue, true);
        let conn = self.conn()?;
        let mut st = conn
            .prepare_cached(&format!(
                "SELECT j.state, count(*) FROM jobs j{} GROUP BY j.state",
                where_clause(&terms)
            ))
            .map_err(self.sql())?;
        let mut out: BTreeMap<String, u64> = JobState::ALL
            .into_iter()
            .map(|s| (s.as_str().to_string(), 0))
            .collect();
        let rows = st
            .query_map(params_from_iter(params.iter()), |r| {
                Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?))
            })
            .map_err(self.sql())?;
        for row in rows {
            let (state, n) = row.map_err(self.sql())?;
            out.insert(state, n as u64);
        }
        Ok(out)
    }

    /// Forget finished jobs (with their attempts, tags and dependency
    /// edges) beyond the newest `keep` finished ones or finished before
    /// `before_ns`, at most `batch` per transaction so the queue is never
    /// held long. A job that an unfinished job depends on is kept. Returns
    /// the ids removed; their logs are the caller's to delete.
    pub fn purge_finished(
        &self,
        keep: Option<u64>,
        before_ns: Option<i64>,
        batch: usize,
    ) -> Result<Vec<JobId>> {
        if keep.is_none() && before_ns.is_none() {
            return Ok(Vec::new());
        }
        let mut removed = Vec::new();
        loop {
            let mut conn = self.conn()?;
            // The newest finished job beyond `keep`: it and everything older go.
            let boundary: Option<(i64, i64)> = match keep {
                Some(k) => conn
                    .prepare_cached(
                        "SELECT finished_ns, id FROM jobs WHERE finished_ns IS NOT NULL
                         ORDER BY finished_ns DESC, id DESC LIMIT 1 OFFSET ?1",
                    )
                    .map_err(self.sql())?
                    .query_row([k as i64], |r| Ok((r.get(0)?, r.get(1)?)))
                    .optional()
                    .map_err(self.sql())?,
                None => None,
            };
            let (bf, bi) = match (boundary, before_ns) {
                (Some((f, _)), Some(b)) if b > f => (b, i64::MAX),
                (Some(fi), _) => fi,
                (None, Some(b)) => (b, i64::MAX),
                (None, None) => break,
            };
            let tx = conn
                .transaction_with_behavior(TransactionBehavior::Immediate)
                .map_err(self.sql())?;
            let ids: Vec<i64> = {
                let mut st = tx
                    .prepare_cached(
                        "SELECT j.id FROM jobs j
                         WHERE j.finished_ns IS NOT NULL
                           AND j.state IN ('succeeded', 'failed', 'cancelled', 'lost', 'idle_stopped')
                           AND (j.finished_ns < ?1 OR (j.finished_ns = ?1 AND j.id <= ?2))
                           AND NOT EXISTS (SELECT 1 FROM deps d JOIN jobs w ON w.id = d.job_id
                                           WHERE d.depends_on = j.id
                                             AND w.state IN ('queued', 'assigned', 'running'))
                         ORDER BY j.finished_ns, j.id LIMIT ?3",
                    )
                    .map_err(self.sql())?;
                let rows = st
                    .query_map(rusqlite::params![bf, bi, batch as i64], |r| r.get(0))
                    .map_err(self.sql())?
                    .collect::<rusqlite::Result<_>>()
                    .map_err(self.sql())?;
                rows
            };
            for id in &ids {
                for sql in [
                    super::holdings::KEEP_ON_PURGE,
                    "DELETE FROM cluster_attempts WHERE job_id = ?1",
                    "DELETE FROM attempts WHERE job_id = ?1",
                    "DELETE FROM deps WHERE job_id = ?1 OR depends_on = ?1",
                    "DELETE FROM job_tags WHERE job_id = ?1",
                    "DELETE FROM job_secrets WHERE job_id = ?1",
                    "DELETE FROM jobs WHERE id = ?1",
                ] {
                    tx.prepare_cached(sql)
                        .map_err(self.sql())?
                        .execute([id])
                        .map_err(self.sql())?;
                }
            }
            tx.commit().map_err(self.sql())?;
            drop(conn);
            let n = ids.len();
            removed.extend(ids.into_iter().map(JobId));
            if n < batch {
                break;
            }
        }
        if !removed.is_empty() {
            tracing::info!(jobs = removed.len(), "finished jobs removed by retention");
        }
        Ok(removed)
    }
}
