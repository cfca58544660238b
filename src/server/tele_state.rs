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
    holds: Mutex<HashMap<(JobId, u32), Hold>>,
    stats: Mutex<Stats>,
}

impl TeleState {
    pub(crate) fn new(db: Telemetry) -> TeleState {
        TeleState {
            db,
            holds: Mutex::new(HashMap::new()),
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
    /// get their end time. Only in-flight attempts are listed (an index);
    /// one attempt is read per change.
    pub(super) fn holders(
        &self,
        queue: &Queue,
        agent: &str,
        now_ms: i64,
    ) -> Result<Vec<Holder>, QueueError> {
        let mut holds = self.holds.lock().unwrap_or_else(|p| p.into_inner());
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
                }
            }
        }
        for (key, h) in holds.iter_mut() {
            if h.until_ms.is_none() && !active.contains(key) {
                let end = attempt(key.0, key.1)?.and_then(|a| a.finished_ns);
                h.until_ms = Some(end.map_or(now_ms, |e| e / 1_000_000));
            }
        }
        // Samples older than the raw retention are refused anyway.
        let keep = now_ms - self.db.retention().raw.as_millis() as i64 - 60_000;
        holds.retain(|_, h| h.until_ms.is_none_or(|u| u >= keep));
        Ok(holds
            .iter()
            .filter(|(_, h)| h.agent == agent)
            .flat_map(|((job, n), h)| {
                h.gpus.iter().map(|uuid| Holder {
                    uuid: uuid.clone(),
                    job: job.0,
                    attempt: *n,
                    from_ms: h.from_ms,
                    until_ms: h.until_ms,
                })
            })
            .collect())
    }
}
