//! The GPUs attempts held, for usage accounting: from the live attempts,
//! and from the ledger (`gpu_holdings`) that keeps them when retention
//! deletes a finished job.

use std::collections::BTreeSet;

use super::{Queue, Result};
use crate::usage::{Holder, Holding};

/// When an attempt's hold on its GPUs began and ended, as SQL over
/// `attempts a` and `cluster_attempts ca` (LEFT JOINed), `$now` the end
/// of an attempt not ended yet:
/// a LAN attempt from its assignment to its release; a cluster attempt
/// as SLURM's accounting gives its allocation (`sacct`'s start, + its
/// elapsed time), else from when the follower saw it run to its end —
/// never its time pending in SLURM's queue (NULL: it never ran).
macro_rules! held_span {
    ($now:literal) => {
        concat!(
            "CASE WHEN ca.job_id IS NULL THEN a.assigned_ns
                  ELSE coalesce(ca.alloc_start_ns, a.started_ns) END AS start_ns,
             CASE WHEN ca.job_id IS NULL THEN coalesce(a.finished_ns, ",
            $now,
            ") ELSE coalesce(ca.alloc_end_ns, a.finished_ns, ",
            $now,
            ") END AS end_ns"
        )
    };
}

/// Run by retention for each job it deletes, before its attempts go: copy
/// the GPUs they held into the ledger.
pub(super) const KEEP_ON_PURGE: &str = concat!(
    "INSERT OR IGNORE INTO gpu_holdings
        (job_id, n, gpu, agent, user, project, tags, start_ns, end_ns)
    SELECT * FROM (
    SELECT a.job_id, a.n, g.value, a.agent, j.user, j.project,
           (SELECT coalesce(json_group_array(t.tag), '[]') FROM job_tags t WHERE t.job_id = j.id)
           AS tags, ",
    held_span!("j.finished_ns, a.assigned_ns"),
    "
    FROM attempts a JOIN jobs j ON j.id = a.job_id
         LEFT JOIN cluster_attempts ca ON ca.job_id = a.job_id AND ca.n = a.n,
         json_each(a.gpus) g
    WHERE a.job_id = ?1)
    WHERE start_ns IS NOT NULL"
);

/// An attempt's hold on its GPUs as telemetry attribution needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Held {
    /// The job.
    pub job: super::JobId,
    /// The attempt.
    pub attempt: u32,
    /// The agent it was given to.
    pub agent: String,
    /// GPU UUIDs it held.
    pub gpus: Vec<String>,
    /// Assignment (ns).
    pub assigned_ns: i64,
    /// Release (ns).
    pub finished_ns: i64,
}

impl Queue {
    /// Attempts that ended at or after `since_ns`, through the index on
    /// their end: the daemon's telemetry learns of attempts that began
    /// and ended between two sample batches from it.
    pub fn finished_since(&self, since_ns: i64) -> Result<Vec<Held>> {
        let conn = self.conn()?;
        let mut st = conn
            .prepare_cached(
                "SELECT job_id, n, agent, gpus, assigned_ns, finished_ns FROM attempts
                 WHERE finished_ns >= ?1 ORDER BY finished_ns",
            )
            .map_err(self.sql())?;
        let rows = st
            .query_map([since_ns], |r| {
                Ok(Held {
                    job: super::JobId(r.get(0)?),
                    attempt: r.get::<_, i64>(1)? as u32,
                    agent: r.get(2)?,
                    gpus: serde_json::from_str(&r.get::<_, String>(3)?).unwrap_or_default(),
                    assigned_ns: r.get(4)?,
                    finished_ns: r.get(5)?,
                })
            })
            .map_err(self.sql())?
            .collect::<rusqlite::Result<Vec<_>>>()
            .map_err(self.sql())?;
        Ok(rows)
    }

    /// Every GPU held by an attempt during `[since_ns, until_ns)`: one
    /// [`Holding`] per attempt and GPU, from assignment to release (to
    /// `now_ns` while it is still held). The host is the agent's name; the
    /// model is left for the caller, who knows the GPUs.
    pub fn holdings(&self, since_ns: i64, until_ns: i64, now_ns: i64) -> Result<Vec<Holding>> {
        let conn = self.conn()?;
        let mut st = conn
            .prepare_cached(concat!(
                "SELECT * FROM (
                 SELECT a.job_id, a.n, g.value, a.agent, j.user, j.project,
                        (SELECT coalesce(json_group_array(t.tag), '[]') FROM job_tags t
                         WHERE t.job_id = j.id), ",
                held_span!("?3"),
                ", CASE WHEN ca.job_id IS NULL THEN '' ELSE coalesce(j.gpu_model, '') END AS model
                 FROM attempts a JOIN jobs j ON j.id = a.job_id
                      LEFT JOIN cluster_attempts ca ON ca.job_id = a.job_id AND ca.n = a.n,
                      json_each(a.gpus) g
                 WHERE a.assigned_ns < ?2 AND coalesce(a.finished_ns, ?3) > ?1)
                 WHERE start_ns IS NOT NULL AND start_ns < ?2 AND end_ns > ?1
                 UNION ALL
                 SELECT job_id, n, gpu, agent, user, project, tags, start_ns, end_ns, ''
                 FROM gpu_holdings WHERE end_ns > ?1 AND start_ns < ?2"
            ))
            .map_err(self.sql())?;
        let rows = st
            .query_map(rusqlite::params![since_ns, until_ns, now_ns], |r| {
                let tags: String = r.get(6)?;
                Ok(Holding {
                    holder: Holder::Job {
                        job: r.get::<_, i64>(0)? as u64,
                        attempt: r.get(1)?,
                    },
                    gpu: r.get(2)?,
                    host: r.get(3)?,
                    // A cluster's GPUs: the model the job asked for (no
                    // agent reports them); the caller fills in the rest.
                    model: r.get(9)?,
                    user: r.get(4)?,
                    project: r.get(5)?,
                    // Sorted and deduplicated: a job's tags are a set.
                    tags: if tags == "[]" {
                        Vec::new()
                    } else {
                        serde_json::from_str::<BTreeSet<String>>(&tags)
                            .unwrap_or_default()
                            .into_iter()
                            .collect()
                    },
                    start_ms: r.get::<_, i64>(7)? / 1_000_000,
                    end_ms: r.get::<_, i64>(8)? / 1_000_000,
                })
            })
            .map_err(self.sql())?
            .collect::<rusqlite::Result<Vec<_>>>()
            .map_err(self.sql())?;
        Ok(rows)
    }
}
