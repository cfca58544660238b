//! A wandb rule: index the runs under the watched path as they appear
//! (`runs.db`, through [`crate::wandb::index::RunIndex`]) and sync each to
//! the W&B server once it has ended — its exit record written, or judged
//! killed (no exit record and its file unchanged for the index's
//! `stale_after`). With `live`, running runs' new lines are streamed at
//! that interval (a live sync sends no `complete`, so the final sync
//! still finishes the run).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::book::{Book, WatchInfo};
use super::State;
use crate::home::Home;
use crate::wandb::index::{RunIndex, ScanOptions};
use crate::wandb::sync::{self, creds, ledger::Ledger, SyncOptions, SyncOutcome, Syncer};

/// What a wandb rule's turn needs of the rule's thread (the engine's
/// `Rule` implements it): its rule, home and book, its change source's
/// pending changes, and its state and log. The arrow goes one way: the
/// engine drives [`RunWatch::tick`], this module knows nothing of it.
pub(crate) trait RuleCtx {
    /// The rule.
    fn info(&self) -> &WatchInfo;
    /// The watched directory.
    fn root(&self) -> &Path;
    /// The home (`runs.db`, the sync ledger).
    fn home(&self) -> &Home;
    /// The rule book (what runs were synced in which state).
    fn book(&self) -> &Book;
    /// When the latest change not yet acted on was seen, if any.
    fn last_change(&self) -> Option<Instant>;
    /// Take the changes not yet acted on: what started them.
    fn take_pending(&mut self) -> Option<String>;
    /// Write one line to the rule's log.
    fn log(&self, action: &str, trigger: &str, result: &str, detail: &str);
    /// Record where the rule stands.
    fn show(&mut self, state: State, detail: &str);
}

/// A scan at least this often, so a killed run is noticed without events.
const SCAN_EVERY: Duration = Duration::from_secs(30);
/// After a change, wait this long for the writer to go on before a scan.
const SETTLE: Duration = Duration::from_secs(1);

pub(crate) struct RunWatch {
    next_scan: Instant,
    next_live: Option<Instant>,
}

impl RunWatch {
    pub fn new(info: &WatchInfo) -> RunWatch {
        let now = Instant::now();
        RunWatch {
            next_scan: now,
            next_live: info.live_s.map(|s| now + Duration::from_secs_f64(s)),
        }
    }

    /// One turn of a wandb rule.
    pub(crate) fn tick(&mut self, rule: &mut impl RuleCtx, now: Instant) {
        let rw = self;
        let settled = rule
            .last_change()
            .is_some_and(|last| now.saturating_duration_since(last) >= SETTLE);
        let live_due = rw.next_live.is_some_and(|t| now >= t);
        if !settled && now < rw.next_scan && !live_due {
            if rule.last_change().is_none() {
                rule.show(State::Idle, "");
            }
            return;
        }
        rw.next_scan = now + SCAN_EVERY;
        if live_due {
            rw.next_live = rule.info().live_s.map(|s| now + Duration::from_secs_f64(s));
        }
        scan_and_sync(rule, live_due);
    }
}

fn ended(state: &str) -> bool {
    matches!(state, "finished" | "crashed" | "killed")
}

/// Index the runs under the rule's path; sync those that ended (and,
/// when `live_due`, stream the running ones).
fn scan_and_sync(rule: &mut impl RuleCtx, live_due: bool) {
    let trigger = rule
        .take_pending()
        .unwrap_or_else(|| "periodic scan".to_string());
    rule.show(State::Working, "indexing runs");
    let index = match RunIndex::open(&rule.home().runs_path()) {
        Ok(i) => i,
        Err(e) => {
            rule.log("index", &trigger, "failed", &e.to_string());
            rule.show(State::Failed, &e.to_string());
            return;
        }
    };
    let root = rule.root().to_path_buf();
    let report = match index.scan(std::slice::from_ref(&root), ScanOptions::default()) {
        Ok(r) => r,
        Err(e) => {
            rule.log("index", &trigger, "failed", &e.to_string());
            rule.show(State::Failed, &e.to_string());
            return;
        }
    };
    for f in &report.errors {
        rule.log(
            "index",
            &trigger,
            "failed",
            &format!("{}: {}", f.dir, f.error),
        );
    }
    let mut finished: Vec<(PathBuf, String)> = Vec::new();
    let mut running: Vec<PathBuf> = Vec::new();
    for s in report.runs.iter().filter(|s| s.error.is_none()) {
        let state = match index.get(&s.dir) {
            Ok(d) => d.run.state,
            Err(_) => continue,
        };
        if s.outcome == Some(crate::wandb::index::Outcome::New) {
            rule.log(
                "index",
                &trigger,
                "new run",
                &format!("{} ({}, {})", s.id, state, s.dir),
            );
        }
        let synced = rule
            .book()
            .run_synced(rule.info().id, &s.dir)
            .ok()
            .flatten();
        if ended(&state) {
            if synced.as_deref() != Some(state.as_str()) {
                finished.push((PathBuf::from(&s.dir), state));
            }
        } else if live_due {
            running.push(PathBuf::from(&s.dir));
        }
    }
    if !running.is_empty() {
        sync_runs(rule, &running, "live", true);
    }
    if !finished.is_empty() {
        let dirs: Vec<PathBuf> = finished.iter().map(|(d, _)| d.clone()).collect();
        let ok = sync_runs(rule, &dirs, &trigger, false);
        for ((dir, state), ok) in finished.iter().zip(ok) {
            if ok {
                let _ = rule
                    .book()
                    .mark_run(rule.info().id, &dir.display().to_string(), state);
            }
        }
    }
    rule.show(State::Idle, "");
}

/// Sync `dirs`; which of them succeeded.
fn sync_runs(rule: &impl RuleCtx, dirs: &[PathBuf], trigger: &str, live: bool) -> Vec<bool> {
    let fail_all = |e: String| {
        for d in dirs {
            rule.log("sync", trigger, "failed", &format!("{}: {e}", d.display()));
        }
        vec![false; dirs.len()]
    };
    let server = match creds::resolve(rule.info().host.as_deref(), &creds::process_env) {
        Ok(s) => s,
        Err(e) => return fail_all(e.to_string()),
    };
    let ledger = match Ledger::open(&rule.home().sync_path()) {
        Ok(l) => Arc::new(l),
        Err(e) => return fail_all(e.to_string()),
    };
    let opts = SyncOptions {
        live,
        verify: !live,
        ..SyncOptions::default()
    };
    let syncer = match Syncer::new(server, ledger, opts, sync::Retry::default()) {
        Ok(s) => s,
        Err(e) => return fail_all(e.to_string()),
    };
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => return fail_all(e.to_string()),
    };
    let report = rt.block_on(syncer.sync_dirs(dirs, &crate::progress::NoProgress));
    report
        .runs
        .iter()
        .map(|r| {
            let what = if live { "sync-live" } else { "sync" };
            let where_ = r.path.clone().unwrap_or_default();
            match (r.outcome, &r.error) {
                (SyncOutcome::Failed, e) => {
                    rule.log(
                        what,
                        trigger,
                        "failed",
                        &format!("{}: {}", r.dir.display(), e.as_deref().unwrap_or("failed")),
                    );
                    false
                }
                (o, _) => {
                    let res = if o == SyncOutcome::Unchanged {
                        "unchanged"
                    } else {
                        "synced"
                    };
                    rule.log(
                        what,
                        trigger,
                        res,
                        &format!(
                            "{} → {} ({} history, {} system, {} console lines sent)",
                            r.dir.display(),
                            where_,
                            r.history_sent,
                            r.events_sent,
                            r.log_sent
                        ),
                    );
                    true
                }
            }
        })
        .collect()
}
