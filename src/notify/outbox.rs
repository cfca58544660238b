//! The durable side of notifications, in `queue.db` (tables
//! `notify_events`, `notify_deliveries`, `notify_sinks`; see
//! `docs/queue-format.md`): events are appended (a job's end by the queue,
//! in the transaction of the state change; others here), routed once to
//! the sinks whose rules match (one delivery per (event, sink), the
//! primary key, so routing twice adds nothing), then each delivery is
//! pending until sent, retried with backoff, or dead.
//!
//! Its own connection: the queue's stays the daemon's for jobs, and WAL
//! lets both write in turn.

use std::path::{Path, PathBuf};

use rusqlite::{params, Connection, OptionalExtension, TransactionBehavior};
use serde::{Deserialize, Serialize};

use super::digest::{Every, Period};
use super::event::{Event, EventKind};
use super::sink::{Origin, Rule, Sink, SinkKind};
use super::NotifyError;
use crate::db::{self, now_ns};
use crate::secret::Secret;

/// Where a delivery is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DeliveryState {
    /// Not sent yet, or failed and waiting for its next try.
    Pending,
    /// The sink accepted it.
    Delivered,
    /// Given up on after the last try (the dead-letter list).
    Dead,
}

impl DeliveryState {
    /// The stored name.
    pub fn as_str(self) -> &'static str {
        match self {
            DeliveryState::Pending => "pending",
            DeliveryState::Delivered => "delivered",
            DeliveryState::Dead => "dead",
        }
    }
    /// Parse a stored name.
    pub fn from_name(s: &str) -> Option<DeliveryState> {
        [
            DeliveryState::Pending,
            DeliveryState::Delivered,
            DeliveryState::Dead,
        ]
        .into_iter()
        .find(|d| d.as_str() == s)
    }
}

/// A delivery due now, with its event.
#[derive(Debug, Clone)]
pub struct Due {
    /// The event's id.
    pub event_id: i64,
    /// The sink's name.
    pub sink: String,
    /// Tries so far.
    pub attempts: u32,
    /// The event's kind.
    pub kind: EventKind,
    /// When it happened (ns since the epoch).
    pub created_ns: i64,
    /// Its facts.
    pub event: Event,
}

/// One line of `notify log`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Delivery {
    /// The event's id.
    pub event_id: i64,
    /// Its kind.
    pub kind: String,
    /// The job, if it is about one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job: Option<i64>,
    /// The sink.
    pub sink: String,
    /// Where the delivery is.
    pub state: DeliveryState,
    /// Tries so far.
    pub attempts: u32,
    /// When the event happened (ns since the epoch).
    pub created_ns: i64,
    /// When it was delivered or given up (ns).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub done_ns: Option<i64>,
    /// When the next try is due (pending ones, ns).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_ns: Option<i64>,
    /// The last failure, with URLs shown as scheme and host only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
}

/// The outbox.
#[derive(Debug)]
pub struct Outbox {
    path: PathBuf,
    conn: std::sync::Mutex<Connection>,
}

/// A `notify_sinks` row: name, kind, url, rule, priority.
type SinkRow = (String, String, Option<String>, String, Option<i64>);

/// Events routed per transaction.
const ROUTE_BATCH: i64 = 256;

impl Outbox {
    /// Open the outbox in an existing, migrated `queue.db` (the queue
    /// opens and migrates it first).
    pub fn open(path: &Path) -> Result<Outbox, NotifyError> {
        let conn = db::open(path)?;
        Ok(Outbox {
            path: path.to_path_buf(),
            conn: std::sync::Mutex::new(conn),
        })
    }

    fn sql(&self) -> impl Fn(rusqlite::Error) -> NotifyError + '_ {
        move |e| NotifyError::Db(db::err(&self.path)(e))
    }

    fn conn(&self) -> std::sync::MutexGuard<'_, Connection> {
        // SQLite rolls back on a panic, so a poisoned lock is usable.
        self.conn.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Append an event (routed later by [`Outbox::route`]). Returns its id.
    pub fn record(&self, kind: EventKind, event: &Event) -> Result<i64, NotifyError> {
        let conn = self.conn();
        insert_event(&conn, kind, event).map_err(self.sql())
    }

    /// Append an event for one sink only (a test message): the event and
    /// its delivery in one transaction, already routed.
    pub fn record_for(
        &self,
        kind: EventKind,
        event: &Event,
        sink: &str,
    ) -> Result<i64, NotifyError> {
        let mut conn = self.conn();
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(self.sql())?;
        let id = insert_for_sink(&tx, kind, event, sink).map_err(self.sql())?;
        tx.commit().map_err(self.sql())?;
        Ok(id)
    }

    /// Route unrouted events to the sinks whose rules match: one pending
    /// delivery per (event, sink), and the event marked routed, in one
    /// transaction per batch. Returns how many deliveries were added.
    pub fn route(&self, sinks: &[Sink]) -> Result<usize, NotifyError> {
        let mut added = 0;
        loop {
            let mut conn = self.conn();
            // Most passes find nothing to route: look before taking the
            // write lock (the sender runs a pass every second).
            let pending: bool = conn
                .prepare_cached("SELECT EXISTS(SELECT 1 FROM notify_events WHERE routed = 0)")
                .and_then(|mut st| st.query_row([], |r| r.get(0)))
                .map_err(self.sql())?;
            if !pending {
                return Ok(added);
            }
            let tx = conn
                .transaction_with_behavior(TransactionBehavior::Immediate)
                .map_err(self.sql())?;
            let rows: Vec<(i64, String, String)> = {
                let mut st = tx
                    .prepare_cached(
                        "SELECT id, kind, body FROM notify_events WHERE routed = 0
                         ORDER BY id LIMIT ?1",
                    )
                    .map_err(self.sql())?;
                let rows = st
                    .query_map([ROUTE_BATCH], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
                    .map_err(self.sql())?
                    .collect::<rusqlite::Result<_>>()
                    .map_err(self.sql())?;
                rows
            };
            if rows.is_empty() {
                return Ok(added);
            }
            let now = now_ns();
            for (id, kind, body) in &rows {
                let (Some(kind), Ok(event)) =
                    (EventKind::stored(kind), serde_json::from_str::<Event>(body))
                else {
                    tracing::warn!(event = id, kind, "unreadable notification event; skipped");
                    continue;
                };
                for s in sinks.iter().filter(|s| s.rule.matches(kind, &event)) {
                    added += tx
                        .prepare_cached(
                            "INSERT OR IGNORE INTO notify_deliveries (event_id, sink, state, next_ns)
                             VALUES (?1, ?2, 'pending', ?3)",
                        )
                        .map_err(self.sql())?
                        .execute(params![id, s.name, now])
                        .map_err(self.sql())?;
                }
            }
            let last = rows.last().map(|r| r.0).unwrap_or(0);
            tx.execute(
                "UPDATE notify_events SET routed = 1 WHERE routed = 0 AND id <= ?1",
                [last],
            )
            .map_err(self.sql())?;
            tx.commit().map_err(self.sql())?;
        }
    }

    /// Pending deliveries due by `now_ns`, oldest first, at most `limit`.
    pub fn due(&self, now_ns: i64, limit: usize) -> Result<Vec<Due>, NotifyError> {
        let conn = self.conn();
        let mut st = conn
            .prepare_cached(
                "SELECT d.event_id, d.sink, d.attempts, e.kind, e.created_ns, e.body
                 FROM notify_deliveries d JOIN notify_events e ON e.id = d.event_id
                 WHERE d.state = 'pending' AND d.next_ns <= ?1
                 ORDER BY d.next_ns, d.event_id LIMIT ?2",
            )
            .map_err(self.sql())?;
        let rows: Vec<(i64, String, i64, String, i64, String)> = st
            .query_map(params![now_ns, limit as i64], |r| {
                Ok((
                    r.get(0)?,
                    r.get(1)?,
                    r.get(2)?,
                    r.get(3)?,
                    r.get(4)?,
                    r.get(5)?,
                ))
            })
            .map_err(self.sql())?
            .collect::<rusqlite::Result<_>>()
            .map_err(self.sql())?;
        Ok(rows
            .into_iter()
            .filter_map(|(event_id, sink, attempts, kind, created_ns, body)| {
                Some(Due {
                    event_id,
                    sink,
                    attempts: attempts as u32,
                    kind: EventKind::stored(&kind)?,
                    created_ns,
                    event: serde_json::from_str(&body).ok()?,
                })
            })
            .collect())
    }

    /// When the next pending delivery is due (ns), if any.
    pub fn next_due(&self) -> Result<Option<i64>, NotifyError> {
        let conn = self.conn();
        let next = conn
            .prepare_cached("SELECT min(next_ns) FROM notify_deliveries WHERE state = 'pending'")
            .map_err(self.sql())?
            .query_row([], |r| r.get(0))
            .map_err(self.sql())?;
        Ok(next)
    }

    /// The sink accepted the delivery.
    pub fn delivered(&self, event_id: i64, sink: &str) -> Result<(), NotifyError> {
        let conn = self.conn();
        conn.prepare_cached(
            "UPDATE notify_deliveries SET state = 'delivered', attempts = attempts + 1,
                 done_ns = ?3, last_error = NULL
             WHERE event_id = ?1 AND sink = ?2 AND state = 'pending'",
        )
        .map_err(self.sql())?
        .execute(params![event_id, sink, now_ns()])
        .map_err(self.sql())?;
        Ok(())
    }

    /// A try failed with `error` (already redacted): try again at `next_ns`,
    /// or (None) give up: the delivery is dead.
    pub fn failed(
        &self,
        event_id: i64,
        sink: &str,
        error: &str,
        next_ns: Option<i64>,
    ) -> Result<(), NotifyError> {
        let conn = self.conn();
        let now = now_ns();
        conn.prepare_cached(
            "UPDATE notify_deliveries SET attempts = attempts + 1, last_error = ?3,
                 state = CASE WHEN ?4 IS NULL THEN 'dead' ELSE 'pending' END,
                 next_ns = coalesce(?4, next_ns),
                 done_ns = CASE WHEN ?4 IS NULL THEN ?5 ELSE NULL END
             WHERE event_id = ?1 AND sink = ?2 AND state = 'pending'",
        )
        .map_err(self.sql())?
        .execute(params![event_id, sink, error, next_ns, now])
        .map_err(self.sql())?;
        Ok(())
    }

    /// Give up on every pending delivery to `sink` (it was removed).
    pub fn abandon(&self, sink: &str, why: &str) -> Result<usize, NotifyError> {
        let conn = self.conn();
        conn.execute(
            "UPDATE notify_deliveries SET state = 'dead', last_error = ?2, done_ns = ?3
             WHERE sink = ?1 AND state = 'pending'",
            params![sink, why, now_ns()],
        )
        .map_err(self.sql())
    }

    /// Deliveries, newest event first: all, or those in `state`; at most
    /// `limit`.
    pub fn log(
        &self,
        state: Option<DeliveryState>,
        limit: usize,
    ) -> Result<Vec<Delivery>, NotifyError> {
        let conn = self.conn();
        let mut st = conn
            .prepare_cached(
                "SELECT d.event_id, e.kind, json_extract(e.body, '$.job'), d.sink, d.state,
                        d.attempts, e.created_ns, d.done_ns, d.next_ns, d.last_error
                 FROM notify_deliveries d JOIN notify_events e ON e.id = d.event_id
                 WHERE ?1 IS NULL OR d.state = ?1
                 ORDER BY d.event_id DESC, d.sink LIMIT ?2",
            )
            .map_err(self.sql())?;
        let rows = st
            .query_map(
                params![state.map(DeliveryState::as_str), limit as i64],
                |r| {
                    let state: String = r.get(4)?;
                    let state = DeliveryState::from_name(&state).unwrap_or(DeliveryState::Dead);
                    Ok(Delivery {
                        event_id: r.get(0)?,
                        kind: r.get(1)?,
                        job: r.get(2)?,
                        sink: r.get(3)?,
                        state,
                        attempts: r.get::<_, i64>(5)? as u32,
                        created_ns: r.get(6)?,
                        done_ns: r.get(7)?,
                        next_ns: (state == DeliveryState::Pending)
                            .then(|| r.get(8))
                            .transpose()?,
                        last_error: r.get(9)?,
                    })
                },
            )
            .map_err(self.sql())?
            .collect::<rusqlite::Result<_>>()
            .map_err(self.sql())?;
        Ok(rows)
    }

    /// Sinks added with `notify add`, with their URLs.
    pub fn sinks(&self) -> Result<Vec<Sink>, NotifyError> {
        let conn = self.conn();
        let mut st = conn
            .prepare_cached(
                "SELECT name, kind, url, rule, priority FROM notify_sinks ORDER BY name",
            )
            .map_err(self.sql())?;
        let rows: Vec<SinkRow> = st
            .query_map([], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?))
            })
            .map_err(self.sql())?
            .collect::<rusqlite::Result<_>>()
            .map_err(self.sql())?;
        let mut out = Vec::new();
        for (name, kind, url, rule, priority) in rows {
            let Some(kind) = SinkKind::from_name(&kind) else {
                tracing::warn!(sink = name, kind, "stored sink of an unknown kind; skipped");
                continue;
            };
            let rule: Rule = match serde_json::from_str(&rule) {
                Ok(r) => r,
                Err(e) => {
                    tracing::warn!(sink = name, error = %e, "stored sink with an unreadable rule; skipped");
                    continue;
                }
            };
            out.push(Sink {
                name,
                kind,
                url: url.map(Secret::new),
                rule,
                priority: priority.map(|p| p.clamp(1, 5) as u8),
                origin: Origin::Cli,
            });
        }
        Ok(out)
    }

    /// Store a sink made with `notify add`; a name already stored is
    /// refused.
    pub fn add_sink(&self, s: &Sink) -> Result<(), NotifyError> {
        let conn = self.conn();
        let n = conn
            .execute(
                "INSERT OR IGNORE INTO notify_sinks (name, kind, url, rule, priority, created_ns)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                params![
                    s.name,
                    s.kind.as_str(),
                    s.url.as_ref().map(Secret::expose),
                    serde_json::to_string(&s.rule).expect("rules serialize"),
                    s.priority,
                    now_ns()
                ],
            )
            .map_err(self.sql())?;
        if n == 0 {
            return Err(NotifyError::SinkExists {
                name: s.name.clone(),
            });
        }
        Ok(())
    }

    /// Remove a stored sink (and its digest mark); false if there was
    /// none of that name.
    pub fn remove_sink(&self, name: &str) -> Result<bool, NotifyError> {
        let conn = self.conn();
        let n = conn
            .execute("DELETE FROM notify_sinks WHERE name = ?1", [name])
            .map_err(self.sql())?;
        conn.execute("DELETE FROM notify_digest_marks WHERE sink = ?1", [name])
            .map_err(self.sql())?;
        Ok(n > 0)
    }

    /// A digest sink's mark: how often, and the end of the last period
    /// digested (or where its digests began).
    pub fn digest_mark(&self, sink: &str) -> Result<Option<(Every, i64)>, NotifyError> {
        let conn = self.conn();
        let row: Option<(String, i64)> = conn
            .query_row(
                "SELECT every, through_ns FROM notify_digest_marks WHERE sink = ?1",
                [sink],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()
            .map_err(self.sql())?;
        Ok(row.and_then(|(e, t)| Some((Every::from_name(&e)?, t))))
    }

    /// Set a sink's mark: its digests (`every`) cover periods from the one
    /// holding `through_ns` on (a new digest sink, or one whose `every`
    /// changed).
    pub fn set_digest_mark(
        &self,
        sink: &str,
        every: Every,
        through_ns: i64,
    ) -> Result<(), NotifyError> {
        let conn = self.conn();
        conn.execute(
            "INSERT INTO notify_digest_marks (sink, every, through_ns) VALUES (?1, ?2, ?3)
             ON CONFLICT (sink) DO UPDATE SET every = ?2, through_ns = ?3",
            params![sink, every.as_str(), through_ns],
        )
        .map_err(self.sql())?;
        Ok(())
    }

    /// Record `sink`'s digest of `period` if its mark is still at or
    /// before the period's start: the event, its delivery to that sink
    /// and the mark moved to the period's end, in one transaction. `None`
    /// when the period was digested already (nothing is written).
    pub fn record_digest(
        &self,
        sink: &str,
        period: &Period,
        event: &Event,
    ) -> Result<Option<i64>, NotifyError> {
        let mut conn = self.conn();
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(self.sql())?;
        let moved = tx
            .execute(
                "UPDATE notify_digest_marks SET through_ns = ?3
                 WHERE sink = ?1 AND every = ?2 AND through_ns < ?3",
                params![sink, period.every.as_str(), period.end_ns],
            )
            .map_err(self.sql())?;
        if moved == 0 {
            return Ok(None);
        }
        let id = insert_for_sink(&tx, EventKind::Digest, event, sink).map_err(self.sql())?;
        tx.commit().map_err(self.sql())?;
        Ok(Some(id))
    }

    /// Forget delivered and dead deliveries that ended before `before_ns`,
    /// and events left with no delivery that are routed and as old.
    /// Returns how many deliveries went.
    pub fn purge(&self, before_ns: i64) -> Result<usize, NotifyError> {
        let mut conn = self.conn();
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(self.sql())?;
        let n = tx
            .execute(
                "DELETE FROM notify_deliveries WHERE state != 'pending' AND done_ns < ?1",
                [before_ns],
            )
            .map_err(self.sql())?;
        tx.execute(
            "DELETE FROM notify_events WHERE routed = 1 AND created_ns < ?1
             AND NOT EXISTS (SELECT 1 FROM notify_deliveries d WHERE d.event_id = notify_events.id)",
            [before_ns],
        )
        .map_err(self.sql())?;
        tx.commit().map_err(self.sql())?;
        Ok(n)
    }

    /// The id of the latest event, if any (tests and `notify test` wait
    /// on deliveries after it).
    pub fn last_event(&self) -> Result<Option<i64>, NotifyError> {
        let conn = self.conn();
        conn.query_row("SELECT max(id) FROM notify_events", [], |r| r.get(0))
            .optional()
            .map(Option::flatten)
            .map_err(self.sql())
    }
}

/// Append one event on `conn` (the queue calls this inside the transaction
/// of a job's state change).
pub(crate) fn insert_event(
    conn: &Connection,
    kind: EventKind,
    event: &Event,
) -> rusqlite::Result<i64> {
    conn.prepare_cached("INSERT INTO notify_events (kind, created_ns, body) VALUES (?1, ?2, ?3)")?
        .execute(params![
            kind.as_str(),
            now_ns(),
            serde_json::to_string(event).expect("events serialize")
        ])?;
    Ok(conn.last_insert_rowid())
}

/// An event already routed to one sink (a test message, a digest): the
/// event and its one pending delivery, in the caller's transaction.
fn insert_for_sink(
    conn: &Connection,
    kind: EventKind,
    event: &Event,
    sink: &str,
) -> rusqlite::Result<i64> {
    let id = insert_event(conn, kind, event)?;
    conn.execute("UPDATE notify_events SET routed = 1 WHERE id = ?1", [id])?;
    conn.execute(
        "INSERT OR IGNORE INTO notify_deliveries (event_id, sink, state, next_ns)
         VALUES (?1, ?2, 'pending', ?3)",
        params![id, sink, now_ns()],
    )?;
    Ok(id)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::queue::{JobSpec, Queue};

    const SEC: i64 = 1_000_000_000;

    fn sink(name: &str, events: &[EventKind]) -> Sink {
        Sink {
            name: name.into(),
            kind: SinkKind::Webhook,
            url: Some(Secret::new("http://127.0.0.1:9/hook")),
            rule: Rule {
                events: events.to_vec(),
                ..Rule::default()
            },
            priority: None,
            origin: Origin::Config,
        }
    }

    /// A job's end is an event written by the queue itself; a failure with
    /// attempts left, an assignment or a start is none.
    #[test]
    fn job_ends_become_events_once_routed_per_sink_and_settled() {
        let d = tempfile::tempdir().unwrap();
        let path = d.path().join("queue.db");
        let q = Queue::open(&path).unwrap();
        let o = Outbox::open(&path).unwrap();
        let spec = |j: &str| JobSpec::parse(j).unwrap();
        let ok = q
            .submit(&spec(
                r#"{"command": ["true"], "name": "ok", "project": "detr"}"#,
            ))
            .unwrap();
        let flaky = q
            .submit(&spec(r#"{"command": ["false"], "max_attempts": 2}"#))
            .unwrap();
        let a = q.assign(ok, "h", &["GPU-1".into()], 30 * SEC).unwrap();
        q.started(&a.token, None).unwrap();
        q.finish(&a.token, Some(0), None).unwrap();
        let b = q.assign(flaky, "h", &[], 30 * SEC).unwrap();
        q.finish(&b.token, Some(1), None).unwrap(); // requeued: no event
        q.cancel(flaky).unwrap();
        let sinks = [
            sink("all", &[]),
            sink("failures", &[EventKind::JobFailed, EventKind::JobCancelled]),
        ];
        assert_eq!(
            o.route(&sinks).unwrap(),
            3,
            "ok → all; cancel → all, failures"
        );
        assert_eq!(o.route(&sinks).unwrap(), 0, "routing again adds nothing");
        let due = o.due(now_ns(), 10).unwrap();
        let got: Vec<(EventKind, &str)> = due.iter().map(|d| (d.kind, d.sink.as_str())).collect();
        assert_eq!(
            got,
            [
                (EventKind::JobSucceeded, "all"),
                (EventKind::JobCancelled, "all"),
                (EventKind::JobCancelled, "failures")
            ]
        );
        let e = &due[0].event;
        assert_eq!(
            (e.job, e.name.as_deref(), e.project.as_deref(), e.gpus),
            (Some(ok), Some("ok"), Some("detr"), Some(1))
        );
        // Delivered, retried, dead.
        o.delivered(due[0].event_id, "all").unwrap();
        o.delivered(due[0].event_id, "all").unwrap(); // no effect twice
        let later = now_ns() + 60 * SEC;
        o.failed(due[1].event_id, "all", "HTTP 500", Some(later))
            .unwrap();
        o.failed(due[2].event_id, "failures", "HTTP 404", None)
            .unwrap();
        assert!(o.due(now_ns(), 10).unwrap().is_empty());
        assert_eq!(o.next_due().unwrap(), Some(later));
        assert_eq!(o.due(later, 10).unwrap().len(), 1);
        let log = o.log(None, 10).unwrap();
        let states: Vec<(&str, DeliveryState, u32)> = log
            .iter()
            .map(|l| (l.sink.as_str(), l.state, l.attempts))
            .collect();
        assert_eq!(
            states,
            [
                ("all", DeliveryState::Pending, 1),
                ("failures", DeliveryState::Dead, 1),
                ("all", DeliveryState::Delivered, 1)
            ]
        );
        assert_eq!(o.log(Some(DeliveryState::Dead), 10).unwrap().len(), 1);
        // Retention forgets what ended, keeps what is pending.
        assert_eq!(o.purge(now_ns() + SEC).unwrap(), 2);
        assert_eq!(o.log(None, 10).unwrap().len(), 1);
    }

    #[test]
    fn stored_sinks_keep_their_url_and_rule_and_names_are_unique() {
        let d = tempfile::tempdir().unwrap();
        let path = d.path().join("queue.db");
        let _q = Queue::open(&path).unwrap();
        let o = Outbox::open(&path).unwrap();
        let mut s = sink("team", &[EventKind::JobFailed]);
        s.origin = Origin::Cli;
        s.rule.users = vec!["ana".into()];
        o.add_sink(&s).unwrap();
        assert!(matches!(
            o.add_sink(&s),
            Err(NotifyError::SinkExists { .. })
        ));
        let back = o.sinks().unwrap();
        assert_eq!(back.len(), 1);
        assert_eq!(
            back[0].url.as_ref().unwrap().expose(),
            "http://127.0.0.1:9/hook"
        );
        assert_eq!(back[0].rule, s.rule);
        assert_eq!(back[0].origin, Origin::Cli);
        // A test event goes to its one sink, already routed.
        let id = o
            .record_for(EventKind::Test, &Event::default(), "team")
            .unwrap();
        assert_eq!(o.route(&[sink("other", &[])]).unwrap(), 0);
        let due = o.due(now_ns(), 10).unwrap();
        assert_eq!((due[0].event_id, due[0].sink.as_str()), (id, "team"));
        assert!(o.remove_sink("team").unwrap());
        assert!(!o.remove_sink("team").unwrap());
        assert_eq!(o.abandon("team", "the sink was removed").unwrap(), 1);
    }

    #[test]
    fn a_period_is_digested_once_and_moves_the_mark() {
        let d = tempfile::tempdir().unwrap();
        let path = d.path().join("queue.db");
        let _q = Queue::open(&path).unwrap();
        let o = Outbox::open(&path).unwrap();
        assert_eq!(o.digest_mark("d").unwrap(), None);
        o.set_digest_mark("d", Every::Daily, 100).unwrap();
        let p = Period {
            every: Every::Daily,
            start_ns: 0,
            end_ns: 1000,
            label: "1970-01-01".into(),
        };
        let id = o.record_digest("d", &p, &Event::default()).unwrap();
        assert!(id.is_some());
        assert_eq!(o.record_digest("d", &p, &Event::default()).unwrap(), None);
        assert_eq!(o.digest_mark("d").unwrap(), Some((Every::Daily, 1000)));
        // A period of another kind than the mark's is not the sink's.
        let w = Period {
            every: Every::Weekly,
            end_ns: 5000,
            ..p.clone()
        };
        assert_eq!(o.record_digest("d", &w, &Event::default()).unwrap(), None);
        let due = o.due(now_ns(), 10).unwrap();
        assert_eq!(due.len(), 1);
        assert_eq!(
            (Some(due[0].event_id), due[0].sink.as_str(), due[0].kind),
            (id, "d", EventKind::Digest)
        );
        // Routing never sends a digest to another sink.
        assert_eq!(o.route(&[sink("other", &[])]).unwrap(), 0);
        o.remove_sink("d").unwrap();
        assert_eq!(o.digest_mark("d").unwrap(), None);
    }
}
