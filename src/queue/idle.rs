//! The queue's side of the idle policy (`crate::idle`): where detection
//! stands for an attempt, its decisions with their evidence, and ending
//! an attempt for idling — `stop` (the job becomes `idle_stopped`) or
//! `requeue` (the job goes back to the queue; the attempt does not count
//! against `max_attempts`). Each change is one transaction with its
//! notification (`idle_warned`, `idle_stopped`) in the outbox.

use rusqlite::{params, OptionalExtension, TransactionBehavior};

use super::{JobId, Queue, Result};
use crate::db::now_ns;
use crate::idle::{Evidence, Status};
use crate::notify::EventKind;

/// How an idle attempt ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IdleEnd {
    /// The job ends `idle_stopped`.
    Stop,
    /// The job is queued again, the attempt not counted.
    Requeue,
}

impl Queue {
    /// Write where idle detection stands for attempt `n` of `job` (only
    /// while it is in flight).
    pub fn set_idle_status(&self, job: JobId, n: u32, status: &Status) -> Result<()> {
        let conn = self.conn()?;
        let text = serde_json::to_string(status).expect("a status serializes");
        conn.prepare_cached(
            "UPDATE attempts SET idle_status = ?3
             WHERE job_id = ?1 AND n = ?2 AND state IN ('assigned', 'running')",
        )
        .map_err(self.sql())?
        .execute(params![job.0, n, text])
        .map_err(self.sql())?;
        Ok(())
    }

    fn push_evidence(
        &self,
        tx: &rusqlite::Transaction<'_>,
        job: JobId,
        n: u32,
        evidence: &Evidence,
        status: &Status,
    ) -> Result<bool> {
        let old: Option<Option<String>> = tx
            .query_row(
                "SELECT idle_evidence FROM attempts
                 WHERE job_id = ?1 AND n = ?2 AND state IN ('assigned', 'running')",
                params![job.0, n],
                |r| r.get(0),
            )
            .optional()
            .map_err(self.sql())?;
        let Some(old) = old else {
            return Ok(false);
        };
        let mut all: Vec<serde_json::Value> = old
            .and_then(|s| serde_json::from_str(&s).ok())
            .unwrap_or_default();
        all.push(serde_json::to_value(evidence).expect("evidence serializes"));
        tx.execute(
            "UPDATE attempts SET idle_evidence = ?3, idle_status = ?4 WHERE job_id = ?1 AND n = ?2",
            params![
                job.0,
                n,
                serde_json::Value::Array(all).to_string(),
                serde_json::to_string(status).expect("a status serializes")
            ],
        )
        .map_err(self.sql())?;
        Ok(true)
    }

    /// Record a decision that leaves the attempt running (a warning ahead
    /// of a stop, or the `notify` action) with its `idle_warned` event.
    /// `false` when the attempt is no longer in flight (nothing written).
    pub fn idle_warned(
        &self,
        job: JobId,
        n: u32,
        evidence: &Evidence,
        status: &Status,
        detail: &str,
    ) -> Result<bool> {
        let mut conn = self.conn()?;
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(self.sql())?;
        if !self.push_evidence(&tx, job, n, evidence, status)? {
            return Ok(false);
        }
        self.notify_idle(&tx, job, EventKind::IdleWarned, detail)?;
        tx.commit().map_err(self.sql())?;
        Ok(true)
    }

    /// End attempt `n` of `job` for idling, with `reason` (the job's
    /// reason and the attempt's error) and the evidence, and record
    /// `idle_stopped`. Returns the attempt's token (its agent must stop
    /// it), or `None` when it is no longer in flight (nothing changed).
    pub fn idle_stop(
        &self,
        job: JobId,
        n: u32,
        how: IdleEnd,
        evidence: &Evidence,
        status: &Status,
        reason: &str,
    ) -> Result<Option<String>> {
        let mut conn = self.conn()?;
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(self.sql())?;
        let token: Option<(String, i64)> = tx
            .query_row(
                "SELECT a.token, j.attempts FROM attempts a JOIN jobs j ON j.id = a.job_id
                 WHERE a.job_id = ?1 AND a.n = ?2 AND a.state IN ('assigned', 'running')",
                params![job.0, n],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()
            .map_err(self.sql())?;
        // Only the job's latest attempt: an older one is no longer current.
        let Some((token, _)) = token.filter(|(_, cur)| *cur == i64::from(n)) else {
            return Ok(None);
        };
        self.push_evidence(&tx, job, n, evidence, status)?;
        let now = now_ns();
        tx.execute(
            "UPDATE attempts SET state = 'idle_stopped', finished_ns = ?3, error = ?4
             WHERE job_id = ?1 AND n = ?2",
            params![job.0, n, now, reason],
        )
        .map_err(self.sql())?;
        match how {
            IdleEnd::Stop => {
                tx.execute(
                    "UPDATE jobs SET state = 'idle_stopped', reason = ?3, finished_ns = ?2 WHERE id = ?1",
                    params![job.0, now, reason],
                )
                .map_err(self.sql())?;
            }
            IdleEnd::Requeue => {
                // One more attempt: this one does not count as a failure.
                tx.execute(
                    "UPDATE jobs SET state = 'queued', reason = ?2, finished_ns = NULL,
                         max_attempts = max_attempts + 1
                     WHERE id = ?1",
                    params![job.0, reason],
                )
                .map_err(self.sql())?;
            }
        }
        self.notify_idle(&tx, job, EventKind::IdleStopped, reason)?;
        tx.commit().map_err(self.sql())?;
        tracing::info!(job = job.0, attempt = n, how = ?how, "{reason}");
        Ok(Some(token))
    }

    /// The reason each of `tokens` was stopped for idling (only those
    /// that were): what an agent appends to the attempt's log.
    pub fn idle_stop_reasons(&self, tokens: &[String]) -> Result<Vec<(String, String)>> {
        if tokens.is_empty() {
            return Ok(Vec::new());
        }
        let conn = self.conn()?;
        let mut st = conn
            .prepare_cached(
                "SELECT error FROM attempts WHERE token = ?1 AND state = 'idle_stopped'",
            )
            .map_err(self.sql())?;
        let mut out = Vec::new();
        for t in tokens {
            let r: Option<Option<String>> = st
                .query_row([t], |r| r.get(0))
                .optional()
                .map_err(self.sql())?;
            if let Some(reason) = r.flatten() {
                out.push((t.clone(), reason));
            }
        }
        Ok(out)
    }
}
