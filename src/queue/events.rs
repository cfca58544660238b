//! The queue's side of notifications: a job's end is written to the
//! notification outbox (`notify_events`, see `crate::notify::outbox`) in
//! the transaction that ends the job, so a crash can lose neither the
//! state change nor its notification. Only the facts rules and messages
//! need go in; never the spec's environment or secret values.

use super::{JobId, Queue, Result};
use crate::notify::{self, EventKind};

impl Queue {
    /// Append the notification of job `id`'s end, if its state (as the
    /// transaction now has it) is final. Inside `tx`.
    pub(super) fn notify_job_end(&self, tx: &rusqlite::Transaction<'_>, id: JobId) -> Result<()> {
        let job = self.read_job(tx, id)?;
        let Some(kind) = EventKind::of_job_end(job.state) else {
            return Ok(());
        };
        // A job stopped for idling is announced by `notify_idle`, with
        // its evidence's summary.
        if kind == EventKind::IdleStopped {
            return Ok(());
        }
        self.insert_job_event(tx, &job, kind, job.reason.clone())
    }

    /// Append an idle event (`idle_warned`, `idle_stopped`) of job `id`
    /// with `detail`. Inside `tx`.
    pub(super) fn notify_idle(
        &self,
        tx: &rusqlite::Transaction<'_>,
        id: JobId,
        kind: EventKind,
        detail: &str,
    ) -> Result<()> {
        let job = self.read_job(tx, id)?;
        self.insert_job_event(tx, &job, kind, Some(detail.to_string()))
    }

    fn insert_job_event(
        &self,
        tx: &rusqlite::Transaction<'_>,
        job: &super::Job,
        kind: EventKind,
        detail: Option<String>,
    ) -> Result<()> {
        let id = job.id;
        let runtime_s = match (job.started_ns, job.finished_ns) {
            (Some(s), Some(f)) if f > s => Some(((f - s) / 1_000_000_000) as u64),
            _ => None,
        };
        let gpus = job.gpus.len() as u32;
        let name = job
            .spec
            .name
            .clone()
            .unwrap_or_else(|| notify::format::clip(&job.spec.argv().join(" "), 200));
        let event = notify::Event {
            job: Some(id),
            name: Some(name),
            user: job.spec.user.clone(),
            project: Some(job.spec.project.clone()),
            tags: job.spec.tags.clone(),
            state: Some(job.state),
            exit_code: job.exit_code,
            attempt: (job.attempts > 0).then_some(job.attempts),
            agent: job.agent.clone(),
            gpus: Some(gpus),
            gpu_hours: runtime_s
                .filter(|_| gpus > 0)
                .map(|s| gpus as f64 * s as f64 / 3600.0),
            runtime_s,
            run: None,
            detail,
            digest: None,
        };
        notify::outbox::insert_event(tx, kind, &event).map_err(self.sql())?;
        Ok(())
    }
}

impl Queue {
    /// The jobs that reached a final state in `[since_ns, until_ns)`, for
    /// digests (jobs retention has deleted are not among them).
    pub fn job_ends(&self, since_ns: i64, until_ns: i64) -> Result<Vec<notify::digest::JobEnd>> {
        let conn = self.conn()?;
        let mut st = conn
            .prepare_cached(
                "SELECT j.state, coalesce(j.user, ''), j.project,
                        (SELECT coalesce(json_group_array(t.tag), '[]') FROM job_tags t
                         WHERE t.job_id = j.id)
                 FROM jobs j
                 WHERE j.finished_ns >= ?1 AND j.finished_ns < ?2",
            )
            .map_err(self.sql())?;
        let rows = st
            .query_map(rusqlite::params![since_ns, until_ns], |r| {
                let state: String = r.get(0)?;
                let tags: String = r.get(3)?;
                Ok((state, r.get(1)?, r.get(2)?, tags))
            })
            .map_err(self.sql())?
            .collect::<rusqlite::Result<Vec<(String, String, String, String)>>>()
            .map_err(self.sql())?;
        Ok(rows
            .into_iter()
            .filter_map(|(state, user, project, tags)| {
                Some(notify::digest::JobEnd {
                    state: super::JobState::from_name(&state)?,
                    user,
                    project,
                    tags: serde_json::from_str(&tags).unwrap_or_default(),
                })
            })
            .collect())
    }
}
