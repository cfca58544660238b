//! `data status DIR` from a watch's record: when a snapshot watch that is
//! sure of its record (events flowing since its last snapshot, no
//! overflow, not polling, not just started) covers exactly DIR, and that
//! snapshot is still the dataset's latest version, only the recorded
//! paths are looked at ([`Store::status_touched`]), and of the version's
//! manifest only the runs that hold their entries (through the index the
//! rule keeps of it, [`ManifestIndex`]). Anything else — no
//! watch, a watch that is not sure, another version added since, another
//! dataset asked for, `--against`, no daemon serving the home (a stopped
//! daemon records nothing) — returns `None`, and the caller walks.

use std::path::Path;

use super::book::Book;
use super::Kind;
use crate::home::Home;
use crate::store::{ManifestIndex, ObjectId, Result, StatusReport, Store};

/// The status of `dir` from a watch's record, or `None` when no watch can
/// vouch for it (then walk: `Store::status`).
pub fn from_record(
    home: &Home,
    store: &Store,
    dir: &Path,
    name: Option<&str>,
) -> Option<Result<StatusReport>> {
    // The record is only kept while the daemon runs: a stopped or killed
    // daemon saw nothing since.
    if !crate::server::home_in_use(home) {
        return None;
    }
    let book = Book::open_existing(&home.watch_path())?;
    let canon = std::fs::canonicalize(dir).ok()?;
    let canon = canon.to_str()?;
    let watches = book.list().ok()?;
    let w = watches.into_iter().find(|w| {
        w.kind == Kind::Snapshot
            && !w.paused
            && w.path == canon
            && name.is_none_or(|n| w.dataset.as_deref() == Some(n))
    })?;
    let dataset = w.dataset.clone()?;
    let (clean, touched) = book.record(w.id).ok()??;
    let latest = store.log(&dataset).ok()?.into_iter().next()?;
    if latest.id.to_hex() != clean {
        return None;
    }
    let base: ObjectId = clean.parse().ok()?;
    tracing::debug!(
        watch = w.id,
        touched = touched.len(),
        "status from the watch record"
    );
    // The manifest's index, held for this very version: only the runs
    // holding the touched paths' entries are read (else all of it).
    let index = book
        .index(w.id, &clean)
        .ok()
        .flatten()
        .and_then(|b| ManifestIndex::decode(&b).ok());
    Some(store.status_touched(dir, &dataset, &base, &touched, index.as_ref()))
}
