//! What an evaluation does with the cron occurrences that came due since
//! the schedule's watermark: fire them or record them missed, per the
//! catch-up policy. Pure: the occurrences and `now` are arguments.

use jiff::{SignedDuration, Timestamp};

use super::CatchUp;

/// An occurrence this much late or less is on time (the daemon was up and
/// evaluated it, only a little late); a later one was missed (the daemon
/// was down, or the machine asleep).
pub const GRACE: SignedDuration = SignedDuration::from_secs(60);

/// `--catch-up all` runs at most this many missed occurrences (the most
/// recent); older ones are recorded as missed.
pub const CATCH_UP_CAP: usize = 10;

/// What becomes of one occurrence.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Submit its job (subject to the overlap policy).
    Fire,
    /// Record it as missed; submit nothing.
    Missed,
}

/// Whether an occurrence at `at` is on time at `now`.
pub fn on_time(at: Timestamp, now: Timestamp) -> bool {
    now.duration_since(at) <= GRACE
}

/// Decide each occurrence (oldest first) under `policy`:
/// - `skip`: on-time occurrences fire, missed ones are recorded missed;
/// - `once`: as `skip`, but when only missed ones came due, the most recent
///   of them fires (systemd's `Persistent=true`);
/// - `all`: every missed occurrence fires too, the most recent
///   [`CATCH_UP_CAP`] of them; older ones are recorded missed.
pub fn decide(occurrences: &[Timestamp], now: Timestamp, policy: CatchUp) -> Vec<Decision> {
    let missed: Vec<usize> = (0..occurrences.len())
        .filter(|&i| !on_time(occurrences[i], now))
        .collect();
    let any_on_time = missed.len() < occurrences.len();
    let fire_missed: Vec<usize> = match policy {
        CatchUp::Skip => Vec::new(),
        CatchUp::Once if any_on_time => Vec::new(),
        CatchUp::Once => missed.last().copied().into_iter().collect(),
        CatchUp::All => missed.iter().rev().take(CATCH_UP_CAP).copied().collect(),
    };
    (0..occurrences.len())
        .map(|i| {
            if on_time(occurrences[i], now) || fire_missed.contains(&i) {
                Decision::Fire
            } else {
                Decision::Missed
            }
        })
        .collect()
}
