//! Running the rules: [`Watcher`] keeps one thread per active rule (the
//! daemon calls [`Watcher::reconcile`] at start and after every change to
//! the rules); each thread probes its directory, drains its change source
//! (inotify events through `notify`, or a stat poll), and acts when
//! [`Pending::due`] says so.

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use fsnotify::event::{AccessKind, AccessMode, EventKind, ModifyKind};
use fsnotify::Watcher as _;

use super::book::{Book, WatchInfo, MAX_RECORDED};
use super::fs::{probe, FsKind, Probe};
use super::runs::{RuleCtx, RunWatch};
use super::{Kind, NewWatch, State, WatchError, RESCAN_EVERY};
use crate::home::Home;
use crate::store::{self, AddOptions, DatasetRef, Store, TreeStamp};

/// How often a rule's thread wakes when nothing happens.
const TICK: Duration = Duration::from_millis(200);
/// How often the directory is probed (there, mounted, same filesystem).
const PROBE_EVERY: Duration = Duration::from_secs(1);

/// Changes seen and not yet acted on.
#[derive(Debug, Clone)]
pub struct Pending {
    /// The first change since the last action.
    pub first: Instant,
    /// The latest change.
    pub last: Instant,
    /// Changes (events, or polls that differed) seen.
    pub changes: u64,
    /// What started it (`events`, `poll`, `start`, `rescan`, `returned`, …).
    pub cause: String,
    /// The marker file was written.
    pub marker: bool,
    /// Not before this (after a postponement).
    pub retry_at: Option<Instant>,
}

impl Pending {
    /// A pending change starting at `now`.
    pub fn new(now: Instant, cause: &str) -> Pending {
        Pending {
            first: now,
            last: now,
            changes: 1,
            cause: cause.to_string(),
            marker: false,
            retry_at: None,
        }
    }

    /// One more change at `now`.
    pub fn touch(&mut self, now: Instant) {
        self.last = now;
        self.changes += 1;
    }

    /// Whether to act at `now`, and the trigger to log. With a marker file
    /// the rule acts only once the marker was written (the quiet period
    /// and max-wait do not apply); otherwise when nothing changed for
    /// `quiet`, or when changes have gone on for `max_wait`.
    pub fn due(
        &self,
        now: Instant,
        quiet: Duration,
        max_wait: Duration,
        marker: Option<&str>,
    ) -> Option<String> {
        if self.retry_at.is_some_and(|t| now < t) {
            return None;
        }
        if let Some(m) = marker {
            return self
                .marker
                .then(|| format!("marker {m} written ({})", self.cause));
        }
        let since_last = now.saturating_duration_since(self.last);
        let since_first = now.saturating_duration_since(self.first);
        if since_last >= quiet {
            Some(format!(
                "{}: quiet for {} after {} change{}",
                self.cause,
                humantime::format_duration(quiet),
                self.changes,
                if self.changes == 1 { "" } else { "s" }
            ))
        } else if since_first >= max_wait {
            Some(format!(
                "{}: max-wait {} reached while still changing ({} changes)",
                self.cause,
                humantime::format_duration(max_wait),
                self.changes
            ))
        } else {
            None
        }
    }
}

/// The daemon's watches: the rule book and a thread per active rule.
pub struct Watcher {
    home: Home,
    book: Arc<Book>,
    running: Mutex<HashMap<i64, Running>>,
}

struct Running {
    stop: Arc<AtomicBool>,
    handle: std::thread::JoinHandle<()>,
}

impl Watcher {
    /// Open the home's `watch.db`. Starts nothing: call [`Watcher::reconcile`].
    pub fn open(home: &Home) -> Result<Watcher, crate::db::DbError> {
        let book = Book::open(&home.watch_path())?;
        Ok(Watcher {
            home: home.clone(),
            book: Arc::new(book),
            running: Mutex::new(HashMap::new()),
        })
    }

    /// The rule book.
    pub fn book(&self) -> &Book {
        &self.book
    }

    /// Add a rule (its push remote must be configured) and start it.
    pub fn add(&self, new: &NewWatch) -> Result<WatchInfo, WatchError> {
        if let Some(r) = &new.push {
            crate::remote::Remotes::load_home(&self.home)
                .and_then(|rs| rs.get(Some(r)).map(|_| ()))
                .map_err(|e| WatchError::Invalid {
                    field: "push",
                    reason: e.to_string(),
                })?;
        }
        let info = self.book.add(new, crate::db::now_ns())?;
        self.book.log(info.id, "add", "user", "ok", &info.path)?;
        self.reconcile();
        self.book.get(&info.id.to_string())
    }

    /// Start a thread for every active rule that has none, and stop those
    /// of paused or removed rules.
    pub fn reconcile(&self) {
        let rules = match self.book.list() {
            Ok(r) => r,
            Err(e) => {
                tracing::error!(error = %e, "cannot read the watch rules");
                return;
            }
        };
        let mut running = self.running.lock().unwrap_or_else(|p| p.into_inner());
        let active: HashSet<i64> = rules.iter().filter(|r| !r.paused).map(|r| r.id).collect();
        let gone: Vec<i64> = running
            .keys()
            .filter(|id| !active.contains(id))
            .copied()
            .collect();
        for id in gone {
            if let Some(r) = running.remove(&id) {
                r.stop.store(true, Ordering::Relaxed);
                let _ = r.handle.join();
            }
        }
        running.retain(|_, r| !r.handle.is_finished());
        for rule in rules.into_iter().filter(|r| !r.paused) {
            if running.contains_key(&rule.id) {
                continue;
            }
            let stop = Arc::new(AtomicBool::new(false));
            let (home, book, s) = (self.home.clone(), self.book.clone(), stop.clone());
            let id = rule.id;
            let spawned = std::thread::Builder::new()
                .name(format!("watch-{id}"))
                .spawn(move || Rule::new(home, book, rule, s).run());
            match spawned {
                Ok(handle) => {
                    running.insert(id, Running { stop, handle });
                }
                Err(e) => tracing::error!(watch = id, error = %e, "cannot start a watch thread"),
            }
        }
    }

    /// Stop every rule's thread (the daemon is stopping).
    pub fn stop_all(&self) {
        let mut running = self.running.lock().unwrap_or_else(|p| p.into_inner());
        for (_, r) in running.drain() {
            r.stop.store(true, Ordering::Relaxed);
            let _ = r.handle.join();
        }
    }
}

impl Drop for Watcher {
    fn drop(&mut self) {
        self.stop_all();
    }
}

/// Where changes come from.
enum Source {
    /// inotify (or the platform's) events.
    Events {
        _watcher: fsnotify::RecommendedWatcher,
        rx: mpsc::Receiver<fsnotify::Result<fsnotify::Event>>,
    },
    /// Stat polls.
    Poll {
        next: Instant,
        last: Option<TreeStamp>,
    },
    /// Nothing yet (the directory is missing).
    None,
}

/// One rule's thread state.
struct Rule {
    home: Home,
    book: Arc<Book>,
    info: WatchInfo,
    root: PathBuf,
    stop: Arc<AtomicBool>,
    source: Source,
    mode: String,
    fs_name: String,
    /// Why polling, when polling.
    poll_why: String,
    pending: Option<Pending>,
    /// Changed paths not yet written to the record.
    fresh: Vec<String>,
    recorded: usize,
    /// The record is complete since the watch began (events, no overflow).
    sure: bool,
    /// (mount point, filesystem) when last healthy.
    expected: Option<(bool, FsKind)>,
    missing: Option<String>,
    next_probe: Instant,
    next_rescan: Instant,
    shown: (State, String),
    /// Files in the dataset's latest version (snapshot rules): an empty
    /// directory while it has some is an unmounted one, not a return.
    last_files: Option<u64>,
    /// For wandb rules.
    runs: Option<RunWatch>,
}

impl Rule {
    fn new(home: Home, book: Arc<Book>, info: WatchInfo, stop: Arc<AtomicBool>) -> Rule {
        let now = Instant::now();
        Rule {
            root: PathBuf::from(&info.path),
            home,
            book,
            stop,
            source: Source::None,
            mode: String::new(),
            fs_name: String::new(),
            poll_why: String::new(),
            pending: Some(Pending::new(now, "start")),
            fresh: Vec::new(),
            recorded: 0,
            sure: false,
            expected: None,
            missing: None,
            next_probe: now,
            next_rescan: now + RESCAN_EVERY,
            shown: (State::Starting, String::new()),
            last_files: None,
            runs: None,
            info,
        }
    }

    fn book_log(&self, action: &str, trigger: &str, result: &str, detail: &str) {
        if let Err(e) = self.book.log(self.info.id, action, trigger, result, detail) {
            tracing::error!(watch = self.info.id, error = %e, "cannot write the watch log");
        }
    }

    fn show(&mut self, state: State, detail: &str) {
        if self.shown.0 == state && self.shown.1 == detail {
            return;
        }
        self.shown = (state, detail.to_string());
        if let Err(e) = self
            .book
            .set_state(self.info.id, state, detail, &self.mode, &self.fs_name)
        {
            tracing::error!(watch = self.info.id, error = %e, "cannot record the watch state");
        }
    }

    /// Idle; when polling, saying why.
    fn show_idle(&mut self) {
        let detail = if self.mode == "polling" {
            format!("polling: {}", self.poll_why)
        } else {
            String::new()
        };
        self.show(State::Idle, &detail);
    }

    fn unsure(&mut self) {
        if self.sure || self.recorded > 0 {
            self.sure = false;
            let _ = self.book.set_unsure(self.info.id);
        }
    }

    fn run(mut self) {
        let _ = self.book.set_unsure(self.info.id);
        if self.info.kind == Kind::Wandb {
            self.runs = Some(RunWatch::new(&self.info));
        } else if let (Ok(store), Some(ds)) = (Store::open(&self.home), &self.info.dataset) {
            self.last_files = store
                .log(ds)
                .ok()
                .and_then(|v| v.into_iter().next())
                .map(|v| v.files);
        }
        while !self.stop.load(Ordering::Relaxed) {
            let now = Instant::now();
            if now >= self.next_probe {
                self.next_probe = now + PROBE_EVERY;
                self.check_presence(now);
            }
            if self.missing.is_some() {
                std::thread::sleep(TICK);
                continue;
            }
            self.drain(now);
            if let Err(e) = self.flush_record() {
                tracing::warn!(watch = self.info.id, error = %e, "cannot write the change record");
            }
            if self.mode == "events" && now >= self.next_rescan {
                self.next_rescan = now + RESCAN_EVERY;
                self.change(now, "rescan");
            }
            match self.info.kind {
                Kind::Snapshot => self.snapshot_if_due(Instant::now()),
                Kind::Wandb => {
                    if let Some(mut rw) = self.runs.take() {
                        rw.tick(&mut self, Instant::now());
                        self.runs = Some(rw);
                    }
                }
            }
        }
        // Stopped (paused, removed, the daemon stopping): nothing is
        // recorded from here on.
        let _ = self.book.set_unsure(self.info.id);
    }

    /// Note a change at `now`.
    fn change(&mut self, now: Instant, cause: &str) {
        match &mut self.pending {
            Some(p) => p.touch(now),
            None => self.pending = Some(Pending::new(now, cause)),
        }
    }

    /// Probe the directory: note it going and coming back.
    fn check_presence(&mut self, now: Instant) {
        let p = probe(&self.root);
        let gone = match (&p, self.expected) {
            (Probe::Missing(why), _) => Some(why.clone()),
            (Probe::Present { empty: true, .. }, _) if self.last_files.is_some_and(|n| n > 0) => {
                Some(format!(
                    "{} is empty but the latest version of {} has {} files (unmounted or not \
                     yet mounted?); not snapshotting an empty directory",
                    self.root.display(),
                    self.info.dataset.as_deref().unwrap_or(""),
                    self.last_files.unwrap_or(0)
                ))
            }
            (
                Probe::Present {
                    mount_point, fs, ..
                },
                Some((was_mount, was_fs)),
            ) => {
                if was_mount && !mount_point {
                    Some(format!(
                        "{} is no longer a mount point (unmounted?); it was {}",
                        self.root.display(),
                        was_fs.name()
                    ))
                } else if *fs != was_fs && was_fs.needs_polling() {
                    Some(format!(
                        "{} is now on {}, not {} (unmounted?)",
                        self.root.display(),
                        fs.name(),
                        was_fs.name()
                    ))
                } else {
                    None
                }
            }
            _ => None,
        };
        match (gone, self.missing.take()) {
            (Some(why), None) => {
                self.book_log("missing", "probe", "paused", &why);
                self.source = Source::None;
                self.unsure();
                self.show(State::Missing, &why);
                self.missing = Some(why);
            }
            (Some(why), Some(before)) => {
                // Still away, but for another reason now (removed, then an
                // empty directory in its place): say so once.
                if why != before {
                    self.book_log("missing", "probe", "paused", &why);
                    self.show(State::Missing, &why);
                }
                self.missing = Some(why);
            }
            (None, was_missing) => {
                let Probe::Present {
                    fs, mount_point, ..
                } = p
                else {
                    return;
                };
                if was_missing.is_some() {
                    self.book_log(
                        "returned",
                        "probe",
                        "resumed",
                        &format!("{} is back ({})", self.root.display(), fs.name()),
                    );
                    self.change(now, "returned");
                }
                let changed_fs = self.expected.is_some_and(|(_, f)| f != fs);
                if self.expected.is_none() || mount_point {
                    self.expected = Some((mount_point, fs));
                }
                if was_missing.is_some() || changed_fs || matches!(self.source, Source::None) {
                    self.expected = Some((mount_point, fs));
                    self.fs_name = fs.name();
                    self.setup_source(now, fs);
                }
            }
        }
    }

    /// Start events, or polling where events cannot be trusted or were refused.
    fn setup_source(&mut self, now: Instant, fs: FsKind) {
        self.unsure();
        let why = if self.info.poll {
            Some("--poll".to_string())
        } else if fs.needs_polling() {
            Some(format!(
                "{} is on {}: other machines' writes raise no events here",
                self.root.display(),
                fs.name()
            ))
        } else {
            match self.start_events() {
                Ok(src) => {
                    self.source = src;
                    self.mode = "events".into();
                    self.poll_why.clear();
                    self.book_log(
                        "mode",
                        "start",
                        "events",
                        &format!("inotify on {}", fs.name()),
                    );
                    self.show(State::Idle, "");
                    // Events flow from here on: what changes next is recorded.
                    self.sure = true;
                    return;
                }
                Err(why) => Some(why),
            }
        };
        self.fall_back_to_polling(now, "start", why.unwrap_or_default());
    }

    /// Poll from now on; `trigger`: `start`, or `events` when the event
    /// source failed later (a new directory over the inotify limit).
    fn fall_back_to_polling(&mut self, now: Instant, trigger: &str, why: String) {
        self.unsure();
        self.source = Source::Poll {
            next: now,
            last: None,
        };
        self.mode = "polling".into();
        self.book_log(
            "mode",
            trigger,
            "polling",
            &format!(
                "every {}: {why}",
                humantime::format_duration(self.info.poll_interval())
            ),
        );
        self.poll_why = why;
        let why = self.poll_why.clone();
        self.show(State::Idle, &format!("polling: {why}"));
    }

    fn start_events(&self) -> Result<Source, String> {
        let (tx, rx) = mpsc::channel();
        let mut w = fsnotify::recommended_watcher(tx).map_err(|e| explain_notify(&e))?;
        w.watch(&self.root, fsnotify::RecursiveMode::Recursive)
            .map_err(|e| explain_notify(&e))?;
        Ok(Source::Events { _watcher: w, rx })
    }

    /// Take in what the source has: events, or a poll when one is due.
    fn drain(&mut self, now: Instant) {
        let mut fall_back = None;
        let mut changed: Vec<String> = Vec::new();
        let mut rescan = false;
        let mut marker = false;
        let mut any = 0u64;
        match &mut self.source {
            Source::None => {}
            Source::Events { rx, .. } => {
                let first = rx.recv_timeout(TICK);
                let mut handle = |ev: fsnotify::Result<fsnotify::Event>| match ev {
                    Ok(ev) => {
                        if ev.need_rescan() {
                            rescan = true;
                        }
                        if !counts(&ev.kind) {
                            return;
                        }
                        for p in &ev.paths {
                            let Ok(rel) = p.strip_prefix(&self.root) else {
                                continue;
                            };
                            let Some(rel) = rel.to_str() else { continue };
                            if rel.is_empty() || is_temp(rel) {
                                continue;
                            }
                            any += 1;
                            if self.info.when_file.as_deref() == Some(rel) {
                                marker = true;
                            }
                            changed.push(rel.to_string());
                        }
                    }
                    Err(e) => {
                        if matches!(e.kind, fsnotify::ErrorKind::MaxFilesWatch) {
                            fall_back = Some(explain_notify(&e));
                        } else {
                            rescan = true;
                            tracing::warn!(watch = self.info.id, error = %e, "watch error");
                        }
                    }
                };
                match first {
                    Ok(ev) => {
                        handle(ev);
                        while let Ok(ev) = rx.try_recv() {
                            handle(ev);
                        }
                    }
                    Err(mpsc::RecvTimeoutError::Timeout) => {}
                    Err(mpsc::RecvTimeoutError::Disconnected) => {
                        fall_back = Some("the event source stopped".into())
                    }
                }
            }
            Source::Poll { next, last } => {
                if now < *next {
                    std::thread::sleep(TICK);
                } else {
                    *next = now + self.info.poll_interval();
                    match store::tree_stamp(&self.root) {
                        Ok(stamp) => {
                            if last.is_some_and(|l| l != stamp) {
                                any = 1;
                            }
                            *last = Some(stamp);
                        }
                        Err(e) => {
                            tracing::debug!(watch = self.info.id, error = %e, "poll failed");
                            self.next_probe = now;
                        }
                    }
                }
            }
        }
        if let Some(why) = fall_back {
            self.fall_back_to_polling(now, "events", why);
            self.change(now, "mode change");
            return;
        }
        if rescan {
            self.unsure();
            self.change(now, "events overflowed (rescan)");
        }
        if any > 0 {
            let cause = if self.mode == "polling" {
                "poll"
            } else {
                "events"
            };
            match &mut self.pending {
                Some(p) => {
                    p.last = now;
                    p.changes += any;
                }
                None => {
                    let mut p = Pending::new(now, cause);
                    p.changes = any;
                    self.pending = Some(p);
                }
            }
            if marker {
                if let Some(p) = &mut self.pending {
                    p.marker = true;
                }
            }
            if self.sure {
                self.fresh.extend(changed);
            }
        }
    }

    /// Write the changed paths seen to the record.
    fn flush_record(&mut self) -> Result<(), crate::db::DbError> {
        if self.fresh.is_empty() {
            return Ok(());
        }
        if !self.sure || self.recorded + self.fresh.len() > MAX_RECORDED {
            self.fresh.clear();
            self.unsure();
            return Ok(());
        }
        self.fresh.sort_unstable();
        self.fresh.dedup();
        self.book.record_changes(self.info.id, &self.fresh)?;
        self.recorded += self.fresh.len();
        self.fresh.clear();
        Ok(())
    }

    fn snapshot_if_due(&mut self, now: Instant) {
        let Some(p) = &mut self.pending else {
            self.show_idle();
            return;
        };
        // A marker already there counts for a start, rescan or return.
        if let Some(m) = &self.info.when_file {
            if !p.marker && p.cause != "events" && p.cause != "poll" && self.root.join(m).is_file()
            {
                p.marker = true;
            }
        }
        let due = p.due(
            now,
            self.info.quiet(),
            self.info.max_wait(),
            self.info.when_file.as_deref(),
        );
        let Some(trigger) = due else {
            let detail = format!("{} change(s) since {}", p.changes, p.cause);
            let state = if p.retry_at.is_some() {
                State::Postponed
            } else {
                State::Pending
            };
            self.show(state, &detail);
            return;
        };
        self.show(State::Working, &trigger);
        // Whatever arrives from here on belongs to the next snapshot.
        let sure_before = self.sure;
        let pending = self.pending.take();
        let outcome = self.snapshot(&trigger);
        match outcome {
            Outcome::Done(version) => {
                // Changes drained during the snapshot stay in the record.
                let since = std::mem::take(&mut self.fresh);
                let sure = sure_before && self.sure;
                self.recorded = since.len();
                let index = version.as_deref().and_then(|v| self.index_of(v));
                if let Err(e) = self.book.set_clean(
                    self.info.id,
                    version.as_deref(),
                    &since,
                    sure,
                    index.as_deref(),
                ) {
                    tracing::error!(watch = self.info.id, error = %e, "cannot reset the record");
                }
                self.show_idle();
            }
            Outcome::Postponed(why) => {
                let mut p = pending.unwrap_or_else(|| Pending::new(now, "postponed"));
                let wait = (self.info.quiet() / 4).max(Duration::from_secs(1));
                p.retry_at = Some(Instant::now() + wait);
                p.last = Instant::now();
                self.pending = Some(p);
                self.show(State::Postponed, &why);
            }
            Outcome::Missing(why) => {
                self.pending = pending;
                self.missing = Some(why.clone());
                self.source = Source::None;
                self.unsure();
                self.show(State::Missing, &why);
            }
            Outcome::Failed(why) => {
                self.show(State::Failed, &why);
            }
        }
    }

    /// The encoded manifest index of `version`, if the rule does not hold
    /// it yet (`None` when it does, or when it cannot be built: then `data
    /// status` reads the whole manifest).
    fn index_of(&self, version: &str) -> Option<Vec<u8>> {
        if self
            .book
            .index_version(self.info.id)
            .ok()
            .flatten()
            .as_deref()
            == Some(version)
        {
            return None;
        }
        let built = (|| -> Result<Vec<u8>, String> {
            let id: store::ObjectId = version.parse().map_err(|e: store::ParseIdError| e.0)?;
            let store = Store::open(&self.home).map_err(|e| e.to_string())?;
            let ix = store.manifest_index(&id).map_err(|e| e.to_string())?;
            Ok(ix.encode())
        })();
        match built {
            Ok(b) => Some(b),
            Err(e) => {
                tracing::warn!(watch = self.info.id, error = %e, "cannot index the manifest");
                None
            }
        }
    }

    /// Snapshot the directory now.
    fn snapshot(&mut self, trigger: &str) -> Outcome {
        let name = self.info.dataset.clone().unwrap_or_default();
        let store = match Store::open(&self.home) {
            Ok(s) => s,
            Err(e) => {
                self.book_log("snapshot", trigger, "failed", &e.to_string());
                return Outcome::Failed(e.to_string());
            }
        };
        let latest = store.log(&name).ok().and_then(|v| v.into_iter().next());
        match probe(&self.root) {
            Probe::Missing(why) => {
                self.book_log("snapshot", trigger, "skipped", &why);
                return Outcome::Missing(why);
            }
            Probe::Present { empty: true, .. } => {
                return match &latest {
                    Some(v) if v.files > 0 => {
                        let why = format!(
                            "{} is empty but the latest version of {name} ({}) has {} files \
                             (unmounted or not yet mounted?); not snapshotting an empty \
                             directory",
                            self.root.display(),
                            v.id.short(),
                            v.files
                        );
                        self.book_log("snapshot", trigger, "skipped", &why);
                        Outcome::Missing(why)
                    }
                    _ => {
                        self.book_log("snapshot", trigger, "skipped", "the directory is empty");
                        Outcome::Done(None)
                    }
                };
            }
            Probe::Present { .. } => {}
        }
        let t0 = Instant::now();
        let r = store.add(
            &self.root,
            &AddOptions {
                name: Some(name.clone()),
                message: Some(format!("watch {}: {trigger}", self.info.id)),
                tag: None,
                author: None,
            },
            &crate::progress::NoProgress,
        );
        let secs = t0.elapsed().as_secs_f64();
        let r = match r {
            Ok(r) => r,
            Err(store::Error::FileChanged(p)) => {
                let why = format!(
                    "{} changed while it was hashed; trying again when writes stop",
                    p.display()
                );
                self.book_log("snapshot", trigger, "postponed", &why);
                return Outcome::Postponed(why);
            }
            Err(store::Error::Io { op, path, source })
                if source.kind() == std::io::ErrorKind::NotFound =>
            {
                let why = format!("{} vanished during the {op}; trying again", path.display());
                self.book_log("snapshot", trigger, "postponed", &why);
                return Outcome::Postponed(why);
            }
            Err(store::Error::NotFound(p)) => {
                let why = format!("{} is gone", p.display());
                self.book_log("snapshot", trigger, "skipped", &why);
                return Outcome::Missing(why);
            }
            Err(e) => {
                self.book_log("snapshot", trigger, "failed", &e.to_string());
                return Outcome::Failed(e.to_string());
            }
        };
        let version = r.version.to_hex();
        self.last_files = Some(r.files);
        if !r.created {
            self.book_log(
                "snapshot",
                trigger,
                "unchanged",
                &format!(
                    "{name}@{} ({} files, {} read, {secs:.2}s)",
                    r.version.short(),
                    r.files,
                    r.hashed_files
                ),
            );
            return Outcome::Done(Some(version));
        }
        self.book_log(
            "snapshot",
            trigger,
            "created",
            &format!(
                "{name}@{} ({} files, {} bytes, {} new bytes, {} read, {secs:.2}s)",
                r.version.short(),
                r.files,
                r.bytes,
                r.new_bytes,
                r.hashed_files
            ),
        );
        let vref = DatasetRef {
            dataset: name.clone(),
            reference: Some(version.clone()),
        };
        if let Some(f) = &self.info.tag_format {
            let n = store.log(&name).map(|v| v.len() as u64).unwrap_or(0);
            let tag = super::format_tag(f, jiff::Timestamp::now(), n);
            match store.tag(&vref, &tag, false) {
                Ok(_) => self.book_log("tag", "snapshot", "ok", &format!("{name}:{tag}")),
                Err(e) => self.book_log("tag", "snapshot", "failed", &e.to_string()),
            }
        }
        if let Some(remote) = self.info.push.clone() {
            self.push(&store, &remote, &vref);
        }
        Outcome::Done(Some(version))
    }

    fn push(&self, store: &Store, remote: &str, vref: &DatasetRef) {
        let result = (|| -> Result<String, String> {
            let r = crate::remote::Remote::named(&self.home, Some(remote))
                .map_err(|e| e.to_string())?;
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|e| e.to_string())?;
            let rep = rt
                .block_on(crate::remote::sync::push(
                    store,
                    &self.home,
                    &r,
                    std::slice::from_ref(vref),
                    crate::remote::sync::PushOptions {
                        jobs: 8,
                        force_tags: false,
                    },
                    &crate::progress::NoProgress,
                ))
                .map_err(|e| e.to_string())?;
            Ok(format!(
                "{}: {} objects, {} bytes, {} requests",
                rep.remote, rep.objects_sent, rep.bytes_sent, rep.requests
            ))
        })();
        match result {
            Ok(d) => self.book_log("push", "snapshot", "ok", &d),
            Err(e) => self.book_log("push", "snapshot", "failed", &format!("{remote}: {e}")),
        }
    }
}

/// What a wandb rule's turn ([`RunWatch::tick`]) sees of the rule.
impl RuleCtx for Rule {
    fn info(&self) -> &WatchInfo {
        &self.info
    }
    fn root(&self) -> &std::path::Path {
        &self.root
    }
    fn home(&self) -> &Home {
        &self.home
    }
    fn book(&self) -> &Book {
        &self.book
    }
    fn last_change(&self) -> Option<Instant> {
        self.pending.as_ref().map(|p| p.last)
    }
    fn take_pending(&mut self) -> Option<String> {
        self.pending.take().map(|p| p.cause)
    }
    fn log(&self, action: &str, trigger: &str, result: &str, detail: &str) {
        self.book_log(action, trigger, result, detail)
    }
    fn show(&mut self, state: State, detail: &str) {
        Rule::show(self, state, detail)
    }
}

enum Outcome {
    /// Recorded (or nothing to record): the directory equals this version.
    Done(Option<String>),
    Postponed(String),
    Missing(String),
    Failed(String),
}

/// Whether an event is a change to content or names (reads and opens are
/// not: the snapshot's own reads must not trigger another).
fn counts(kind: &EventKind) -> bool {
    match kind {
        EventKind::Access(AccessKind::Close(AccessMode::Write)) => true,
        EventKind::Access(_) => false,
        EventKind::Modify(ModifyKind::Metadata(_)) => true,
        EventKind::Other => false,
        _ => true,
    }
}

fn is_temp(rel: &str) -> bool {
    rel.rsplit('/')
        .next()
        .is_some_and(|n| n.starts_with(".trainyard-tmp-"))
}

/// Say why events are not available, naming the inotify limit when that is it.
fn explain_notify(e: &fsnotify::Error) -> String {
    match &e.kind {
        fsnotify::ErrorKind::MaxFilesWatch => {
            let read = |p: &str| {
                std::fs::read_to_string(p)
                    .ok()
                    .and_then(|s| s.trim().parse::<u64>().ok())
            };
            // The system's limit, and the user namespace's (a container's)
            // when that one is lower.
            let limit = match (
                read("/proc/sys/fs/inotify/max_user_watches"),
                read("/proc/sys/user/max_inotify_watches"),
            ) {
                (Some(sys), Some(ns)) if ns < sys => format!(
                    "user.max_inotify_watches = {ns} in this user namespace, \
                     fs.inotify.max_user_watches = {sys}"
                ),
                (Some(sys), _) => format!("fs.inotify.max_user_watches = {sys}"),
                (None, _) => "fs.inotify.max_user_watches = ?".to_string(),
            };
            format!(
                "the inotify watch limit is reached ({limit}); polling instead. \
                 Raise it with sysctl fs.inotify.max_user_watches=N"
            )
        }
        _ => format!("events unavailable ({e}); polling instead"),
    }
}
