//! Tagging jobs after submission. A job's tags live in its spec, in
//! `job_tags` (for filters) and in the usage ledger (`gpu_holdings`), so a
//! tag such as `ignore-usage` takes effect retroactively, even for a job
//! that retention already deleted.

use rusqlite::{params, OptionalExtension, TransactionBehavior};

use super::{JobId, JobSpec, Queue, QueueError, Result, SpecError};

/// A tag users can type and filters can match: 1 to 64 characters, no
/// whitespace, control characters or commas.
pub fn check_tag(tag: &str) -> std::result::Result<(), SpecError> {
    let bad = |reason: &str| SpecError {
        field: "tags".into(),
        reason: format!("{tag:?}: {reason}"),
    };
    if tag.is_empty() || tag.chars().count() > 64 {
        return Err(bad("a tag has 1 to 64 characters"));
    }
    if tag
        .chars()
        .any(|c| c.is_whitespace() || c.is_control() || c == ',')
    {
        return Err(bad("a tag has no spaces, control characters or commas"));
    }
    Ok(())
}

impl Queue {
    /// Add and remove tags of job `id`; answers its tags now (sorted). A job
    /// deleted by retention can still be tagged while its GPU holdings are
    /// in the usage ledger.
    pub fn tag(&self, id: JobId, add: &[String], remove: &[String]) -> Result<Vec<String>> {
        for t in add.iter().chain(remove) {
            check_tag(t)?;
        }
        let mut conn = self.conn()?;
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(self.sql())?;
        let spec: Option<String> = tx
            .query_row("SELECT spec FROM jobs WHERE id = ?1", [id.0], |r| r.get(0))
            .optional()
            .map_err(self.sql())?;
        let ledger: Option<String> = tx
            .query_row(
                "SELECT tags FROM gpu_holdings WHERE job_id = ?1 LIMIT 1",
                [id.0],
                |r| r.get(0),
            )
            .optional()
            .map_err(self.sql())?;
        let stored = |s: &str| {
            serde_json::from_str::<JobSpec>(s).map_err(|e| {
                QueueError::Spec(SpecError {
                    field: format!("(stored spec of job {id})"),
                    reason: e.to_string(),
                })
            })
        };
        let current: Vec<String> = match (&spec, &ledger) {
            (Some(s), _) => stored(s)?.tags,
            (None, Some(t)) => serde_json::from_str(t).unwrap_or_default(),
            (None, None) => return Err(QueueError::UnknownJob(id)),
        };
        let mut tags: Vec<String> = current
            .into_iter()
            .chain(add.iter().cloned())
            .filter(|t| !remove.contains(t))
            .collect();
        tags.sort();
        tags.dedup();
        let tags_json = serde_json::to_string(&tags).expect("strings serialize");
        if let Some(s) = spec {
            let mut spec = stored(&s)?;
            spec.tags = tags.clone();
            tx.execute(
                "UPDATE jobs SET spec = ?2 WHERE id = ?1",
                params![id.0, serde_json::to_string(&spec).expect("specs serialize")],
            )
            .map_err(self.sql())?;
            tx.execute("DELETE FROM job_tags WHERE job_id = ?1", [id.0])
                .map_err(self.sql())?;
            for t in &tags {
                tx.execute(
                    "INSERT INTO job_tags (tag, job_id) VALUES (?1, ?2)",
                    params![t, id.0],
                )
                .map_err(self.sql())?;
            }
        }
        tx.execute(
            "UPDATE gpu_holdings SET tags = ?2 WHERE job_id = ?1",
            params![id.0, tags_json],
        )
        .map_err(self.sql())?;
        tx.commit().map_err(self.sql())?;
        Ok(tags)
    }
}
