//! The daemon's telemetry state between requests: the telemetry store,
//! the attempts' holds on GPUs (from the queue) and the metrics counters.
//! Kept apart from the handlers in `telemetry` so that `coord` holds it
//! without importing a handler module.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Mutex;

use crate::db::now_ns;
use crate::queue::{JobId, Queue, QueueError};
use crate::telemetry::metrics::Histogram;
use crate::telemetry::{Holder, Telemetry};

/// Buckets of the submit-to-start histogram, seconds.
pub(super) const START_BUCKETS: [f64; 12] = [
    0.1, 0.5, 1.0, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0, 14_400.0, 86_400.0,
];

/// Attempt ends by outcome, and the first starts, as the daemon saw them
/// since it started (Prometheus counters: they restart with the process).
pub(super) struct Stats {
    pub(super) started_ns: i64,
    pub(super) submit_to_start: Histogram,
    pub(super) outcomes: BTreeMap<String, u64>,
    /// Per job: the highest attempt whose end was counted, and whether its
    /// first start was.
    pub(super) seen: BTreeMap<JobId, (u32, bool)>,
    pub(super) samples_stored: u64,
    pub(super) samples_refused: u64,
    pub(super) samples_dropped: u64,
}

/// One attempt's hold on its GPUs, as the queue says.
#[derive(Debug, Clone)]
struct Hold {
    agent: String,
    gpus: Vec<String>,
    from_ms: i64,
    until_ms: Option<i64>,
}

/// The daemon's telemetry state.
pub(crate) struct TeleState {
    pub db: Telemetry,
    holds: Mutex<Holds>,
    stats: Mutex<Stats>,
}

/// The holds known, and up to when the queue's ended attempts were read.
#[derive(Default)]
struct Holds {
    by_attempt: HashMap<(JobId, u32), Hold>,
    swept_ns: Option<i64>,
}

impl TeleState {
    pub(crate) fn new(db: Telemetry) -> TeleState {
        TeleState {
            db,
            holds: Mutex::new(Holds::default()),
            stats: Mutex::new(Stats {
                started_ns: now_ns(),
                submit_to_start: Histogram::new(&START_BUCKETS),
                outcomes: BTreeMap::new(),
                seen: BTreeMap::new(),
                samples_stored: 0,
                samples_refused: 0,
                samples_dropped: 0,
            }),
        }
    }

    pub(super) fn stats(&self) -> std::sync::MutexGuard<'_, Stats> {
        self.stats.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The holds of `agent`'s GPUs, brought up to date with the queue: new
    /// attempts in flight are added with their assignment time, ended ones
    /// get their end time, and attempts that began and ended since the
    /// last call (shorter than a sample batch) are added too. Only
    /// in-flight attempts and those ended since the last call are read
    /// (two indexes). Where a hold is new or its end became known, the
    /// samples already stored for its GPUs are attributed again.
    pub(super) fn holders(
        &self,
        queue: &Queue,
        agent: &str,
        now_ms: i64,
    ) -> Result<Vec<Holder>, QueueError> {
        let mut guard = self.holds.lock().unwrap_or_else(|p| p.into_inner());
        let Holds {
            by_attempt: holds,
            swept_ns,
        } = &mut *guard;
        let now = now_ms * 1_000_000;
        let raw_ms = self.db.retention().raw.as_millis() as i64;
        // Ends are written with the daemon's clock; a little overlap
        // between reads costs nothing (known holds are skipped).
        let since = swept_ns.unwrap_or(now - (raw_ms + 60_000) * 1_000_000) - 5_000_000_000;
        let ended = queue.finished_since(since)?;
        *swept_ns = Some(now);
        let mut changed: Vec<(JobId, u32)> = Vec::new();
        for e in ended {
            let key = (e.job, e.attempt);
            let until = Some(e.finished_ns / 1_000_000);
            match holds.get_mut(&key) {
                Some(h) if h.until_ms.is_none() => {
                    h.until_ms = until;
                    changed.push(key);
                }
                Some(_) => {}
                None => {
                    holds.insert(
                        key,
                        Hold {
                            agent: e.agent,
                            gpus: e.gpus,
                            from_ms: e.assigned_ns / 1_000_000,
                            until_ms: until,
                        },
                    );
                    changed.push(key);
                }
            }
        }
        let active: HashSet<(JobId, u32)> = queue
            .active()?
            .into_iter()
            .map(|a| (a.job, a.attempt))
            .collect();
        let attempt =
            |job: JobId, n: u32| -> Result<Option<crate::queue::AttemptInfo>, QueueError> {
                match queue.attempts(job) {
                    Ok(all) => Ok(all.into_iter().find(|a| a.n == n)),
                    Err(QueueError::UnknownJob(_)) => Ok(None),
                    Err(e) => Err(e),
                }
            };
        for key in &active {
            if !holds.contains_key(key) {
                if let Some(a) = attempt(key.0, key.1)? {
                    holds.insert(
                        *key,
                        Hold {
                            agent: a.agent,
                            gpus: a.gpus,
                            from_ms: a.assigned_ns / 1_000_000,
                            until_ms: None,
                        },
                    );
                    changed.push(*key);
                }
            }
        }
        for (key, h) in holds.iter_mut() {
            if h.until_ms.is_none() && !active.contains(key) {
                let end = attempt(key.0, key.1)?.and_then(|a| a.finished_ns);
                h.until_ms = Some(end.map_or(now_ms, |e| e / 1_000_000));
                changed.push(*key);
            }
        }
        for key in changed {
            let Some(h) = holds.get(&key) else { continue };
            for holder in Self::holders_of(key, h) {
                // A failure here leaves the attribution as it was, which
                // the next change of the hold retries; it must not refuse
                // the batch.
                if let Err(e) = self.db.reattribute(&h.agent, &holder) {
                    tracing::warn!(job = key.0 .0, attempt = key.1, error = %e, "cannot attribute stored GPU samples again");
                }
            }
        }
        // Samples older than the raw retention are refused anyway.
        let keep = now_ms - self.db.retention().raw.as_millis() as i64 - 60_000;
        holds.retain(|_, h| h.until_ms.is_none_or(|u| u >= keep));
        Ok(holds
            .iter()
            .filter(|(_, h)| h.agent == agent)
            .flat_map(|(key, h)| Self::holders_of(*key, h))
            .collect())
    }

    /// One [`Holder`] per GPU of a hold.
    fn holders_of((job, n): (JobId, u32), h: &Hold) -> impl Iterator<Item = Holder> + '_ {
        h.gpus.iter().map(move |uuid| Holder {
            uuid: uuid.clone(),
            job: job.0,
            attempt: n,
            from_ms: h.from_ms,
            until_ms: h.until_ms,
        })
    }
}
