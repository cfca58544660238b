//! `watch.db`: the rules, their state, their log, the watcher's record of
//! changed paths (what `data status` reads) and the runs a wandb rule has
//! synced. One SQLite file in the home (`docs/watch.md`), WAL, migrated
//! by `db::migrate`; every state change is one statement or transaction.

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use rusqlite::{params, Connection, OptionalExtension};
use serde::Serialize;

use super::{parse_duration, Kind, NewWatch, State, WatchError};
use crate::db::{self, DbError};

const MIGRATIONS: &[&str] = &[
    // 1: rules, their log, the record of changed paths, synced runs
    "CREATE TABLE watches (
        id INTEGER PRIMARY KEY,
        path TEXT NOT NULL,
        kind TEXT NOT NULL,
        dataset TEXT,
        quiet_ms INTEGER NOT NULL,
        max_wait_ms INTEGER NOT NULL,
        when_file TEXT,
        push TEXT,
        tag_format TEXT,
        host TEXT,
        live_ms INTEGER,
        poll INTEGER NOT NULL,
        poll_interval_ms INTEGER NOT NULL,
        paused INTEGER NOT NULL DEFAULT 0,
        state TEXT NOT NULL DEFAULT 'starting',
        detail TEXT NOT NULL DEFAULT '',
        mode TEXT NOT NULL DEFAULT '',
        fs_type TEXT NOT NULL DEFAULT '',
        clean_version TEXT,
        sure INTEGER NOT NULL DEFAULT 0,
        created_ns INTEGER NOT NULL
    );
    CREATE TABLE watch_log (
        id INTEGER PRIMARY KEY,
        watch INTEGER NOT NULL,
        at_ns INTEGER NOT NULL,
        action TEXT NOT NULL,
        trigger TEXT NOT NULL,
        result TEXT NOT NULL,
        detail TEXT NOT NULL
    );
    CREATE INDEX watch_log_by_watch ON watch_log (watch, id);
    CREATE TABLE watch_changes (
        watch INTEGER NOT NULL,
        rel TEXT NOT NULL,
        PRIMARY KEY (watch, rel)
    ) WITHOUT ROWID;
    CREATE TABLE watch_runs (
        watch INTEGER NOT NULL,
        dir TEXT NOT NULL,
        state TEXT NOT NULL,
        synced_ns INTEGER NOT NULL,
        PRIMARY KEY (watch, dir)
    ) WITHOUT ROWID;",
    // 2: the index of the clean version's manifest (store::ManifestIndex),
    // so that `data status` reads only the touched paths' entries
    "CREATE TABLE watch_index (
        watch INTEGER PRIMARY KEY,
        version TEXT NOT NULL,
        idx BLOB NOT NULL
    );",
];

/// Paths the record keeps before it gives up being sure (then `data
/// status` walks).
pub const MAX_RECORDED: usize = 200_000;

/// A rule with its state, as `watch ls` and `GET /watches` show it.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct WatchInfo {
    /// Its id.
    pub id: i64,
    /// The watched directory.
    pub path: String,
    /// What it does.
    pub kind: Kind,
    /// The dataset (snapshot rules).
    pub dataset: Option<String>,
    /// Quiet period, seconds.
    pub quiet_s: f64,
    /// Max wait, seconds.
    pub max_wait_s: f64,
    /// Marker file.
    pub when_file: Option<String>,
    /// Remote pushed to.
    pub push: Option<String>,
    /// Tag format.
    pub tag_format: Option<String>,
    /// W&B server.
    pub host: Option<String>,
    /// Live interval, seconds.
    pub live_s: Option<f64>,
    /// Polling forced.
    pub poll: bool,
    /// Poll interval, seconds.
    pub poll_interval_s: f64,
    /// Paused by a user.
    pub paused: bool,
    /// Where it stands.
    pub state: State,
    /// What the state means now (why missing, why polling, …).
    pub detail: String,
    /// `events` or `polling` (empty before it started).
    pub mode: String,
    /// The filesystem type `statfs` reported.
    pub fs_type: String,
    /// The version the directory equalled at the last snapshot.
    pub clean_version: Option<String>,
    /// Whether the record of changed paths is complete since then.
    pub sure: bool,
    /// When it was added (ns since the epoch).
    pub created_ns: i64,
    /// Its newest log entry.
    pub last: Option<LogEntry>,
}

impl WatchInfo {
    /// The quiet period.
    pub fn quiet(&self) -> Duration {
        Duration::from_secs_f64(self.quiet_s)
    }
    /// The max wait.
    pub fn max_wait(&self) -> Duration {
        Duration::from_secs_f64(self.max_wait_s)
    }
    /// The poll interval.
    pub fn poll_interval(&self) -> Duration {
        Duration::from_secs_f64(self.poll_interval_s)
    }
}

/// One line of a watch's log: an action, what triggered it, what came of it.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct LogEntry {
    /// Its id (increasing).
    pub id: i64,
    /// The watch.
    pub watch: i64,
    /// When (ns since the epoch).
    pub at_ns: i64,
    /// `snapshot`, `push`, `tag`, `sync`, `index`, `mode`, `missing`, `returned`, `postpone`, …
    pub action: String,
    /// What caused it: `quiet 60s after 3 changes`, `marker _SUCCESS`, `max-wait`, `poll`, `rescan`, …
    pub trigger: String,
    /// `created`, `unchanged`, `postponed`, `failed`, `ok`, …
    pub result: String,
    /// Details: the version, counts, the error.
    pub detail: String,
}

/// The watch database.
#[derive(Debug)]
pub struct Book {
    path: PathBuf,
    conn: Mutex<Connection>,
}

const COLS: &str =
    "id, path, kind, dataset, quiet_ms, max_wait_ms, when_file, push, tag_format, host,
     live_ms, poll, poll_interval_ms, paused, state, detail, mode, fs_type, clean_version, sure,
     created_ns";

fn row_info(r: &rusqlite::Row<'_>) -> rusqlite::Result<WatchInfo> {
    let kind: String = r.get(2)?;
    let state: String = r.get(14)?;
    Ok(WatchInfo {
        id: r.get(0)?,
        path: r.get(1)?,
        kind: if kind == "wandb" {
            Kind::Wandb
        } else {
            Kind::Snapshot
        },
        dataset: r.get(3)?,
        quiet_s: r.get::<_, i64>(4)? as f64 / 1000.0,
        max_wait_s: r.get::<_, i64>(5)? as f64 / 1000.0,
        when_file: r.get(6)?,
        push: r.get(7)?,
        tag_format: r.get(8)?,
        host: r.get(9)?,
        live_s: r.get::<_, Option<i64>>(10)?.map(|v| v as f64 / 1000.0),
        poll: r.get::<_, i64>(11)? != 0,
        poll_interval_s: r.get::<_, i64>(12)? as f64 / 1000.0,
        paused: r.get::<_, i64>(13)? != 0,
        state: State::from_name(&state).unwrap_or(State::Failed),
        detail: r.get(15)?,
        mode: r.get(16)?,
        fs_type: r.get(17)?,
        clean_version: r.get(18)?,
        sure: r.get::<_, i64>(19)? != 0,
        created_ns: r.get(20)?,
        last: None,
    })
}

fn row_log(r: &rusqlite::Row<'_>) -> rusqlite::Result<LogEntry> {
    Ok(LogEntry {
        id: r.get(0)?,
        watch: r.get(1)?,
        at_ns: r.get(2)?,
        action: r.get(3)?,
        trigger: r.get(4)?,
        result: r.get(5)?,
        detail: r.get(6)?,
    })
}

fn ms(d: Duration) -> i64 {
    d.as_millis().min(i64::MAX as u128) as i64
}

/// Check a new rule and turn it into the columns; the path must be an
/// existing directory, given absolute.
fn validate(new: &NewWatch) -> Result<ValidRule, WatchError> {
    let bad = |field, reason: String| WatchError::Invalid { field, reason };
    if !new.path.is_absolute() {
        return Err(bad(
            "path",
            format!("{} is not absolute", new.path.display()),
        ));
    }
    let canon = std::fs::canonicalize(&new.path).map_err(|e| {
        bad(
            "path",
            format!(
                "{}: {e}; watch a directory that exists (it may vanish later)",
                new.path.display()
            ),
        )
    })?;
    if !canon.is_dir() {
        return Err(bad(
            "path",
            format!("{} is not a directory", canon.display()),
        ));
    }
    let path = canon
        .to_str()
        .ok_or_else(|| bad("path", format!("{} is not UTF-8", canon.display())))?
        .to_string();
    let kind = match (&new.snapshot, new.sync_wandb) {
        (Some(_), true) => {
            return Err(bad(
                "snapshot",
                "give --snapshot NAME or --sync-wandb, not both (add two watches)".into(),
            ))
        }
        (None, false) => {
            return Err(bad(
                "snapshot",
                "say what to do: --snapshot NAME or --sync-wandb".into(),
            ))
        }
        (Some(name), false) => {
            crate::store::validate_dataset_name(name)
                .map_err(|e| bad("snapshot", e.to_string()))?;
            Kind::Snapshot
        }
        (None, true) => Kind::Wandb,
    };
    let dur = |field, v: &Option<String>, default: Duration| -> Result<Duration, WatchError> {
        v.as_deref()
            .map_or(Ok(default), |s| parse_duration(field, s))
    };
    let quiet = dur("quiet", &new.quiet, super::DEFAULT_QUIET)?;
    let max_wait = dur("max_wait", &new.max_wait, super::DEFAULT_MAX_WAIT)?;
    if max_wait < quiet {
        return Err(bad(
            "max_wait",
            format!(
                "{} is shorter than the quiet period {}",
                humantime::format_duration(max_wait),
                humantime::format_duration(quiet)
            ),
        ));
    }
    let poll_interval = dur(
        "poll_interval",
        &new.poll_interval,
        super::DEFAULT_POLL_INTERVAL,
    )?;
    if poll_interval < Duration::from_millis(100) {
        return Err(bad("poll_interval", "must be at least 100ms".into()));
    }
    let live = new
        .live
        .as_deref()
        .map(|s| parse_duration("live", s))
        .transpose()?;
    if kind == Kind::Snapshot {
        for (field, set) in [("host", new.host.is_some()), ("live", live.is_some())] {
            if set {
                return Err(bad(field, "only a --sync-wandb watch takes it".into()));
            }
        }
    } else {
        for (field, set) in [
            ("when_file", new.when_file.is_some()),
            ("push", new.push.is_some()),
            ("tag_format", new.tag_format.is_some()),
        ] {
            if set {
                return Err(bad(field, "only a --snapshot watch takes it".into()));
            }
        }
    }
    if let Some(w) = &new.when_file {
        let ok = !w.is_empty()
            && !w.starts_with('/')
            && w.split('/').all(|c| !c.is_empty() && c != "." && c != "..");
        if !ok {
            return Err(bad(
                "when_file",
                format!("{w:?} must be a relative path inside the watched directory"),
            ));
        }
    }
    if let Some(f) = &new.tag_format {
        let sample = super::format_tag(f, jiff::Timestamp::UNIX_EPOCH, 1);
        crate::store::validate_tag_name(&sample).map_err(|e| {
            bad(
                "tag_format",
                format!("{f:?} gives tags like {sample:?}, which is not a tag name: {e}"),
            )
        })?;
    }
    Ok(ValidRule {
        path,
        kind,
        quiet,
        max_wait,
        poll_interval,
        live,
    })
}

struct ValidRule {
    path: String,
    kind: Kind,
    quiet: Duration,
    max_wait: Duration,
    poll_interval: Duration,
    live: Option<Duration>,
}

impl Book {
    /// Open (creating and migrating) `watch.db` at `path`.
    pub fn open(path: &Path) -> Result<Book, DbError> {
        let mut conn = db::open(path)?;
        db::migrate(&mut conn, path, MIGRATIONS)?;
        Ok(Book {
            path: path.to_path_buf(),
            conn: Mutex::new(conn),
        })
    }

    /// Open an existing `watch.db` only to read the record (`data
    /// status`); `None` if there is none.
    pub fn open_existing(path: &Path) -> Option<Book> {
        if !path.exists() {
            return None;
        }
        Book::open(path).ok()
    }

    fn conn(&self) -> std::sync::MutexGuard<'_, Connection> {
        // A panic while holding it leaves a connection that is still fine.
        self.conn.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn err(&self) -> impl FnOnce(rusqlite::Error) -> DbError + '_ {
        db::err(&self.path)
    }

    /// Add a rule (validated; the path canonicalized).
    pub fn add(&self, new: &NewWatch, now_ns: i64) -> Result<WatchInfo, WatchError> {
        let v = validate(new)?;
        let conn = self.conn();
        let existing: Option<(i64, Option<String>)> = conn
            .query_row(
                "SELECT id, dataset FROM watches WHERE path = ?1 AND kind = ?2
                 AND (dataset IS ?3)",
                params![v.path, v.kind.as_str(), new.snapshot],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()
            .map_err(self.err())?;
        if let Some((id, ds)) = existing {
            return Err(WatchError::Exists {
                id,
                what: ds.map_or("syncs wandb runs of".into(), |d| {
                    format!("snapshots {d} from")
                }),
                path: v.path,
            });
        }
        conn.execute(
            "INSERT INTO watches (path, kind, dataset, quiet_ms, max_wait_ms, when_file, push,
                tag_format, host, live_ms, poll, poll_interval_ms, created_ns)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13)",
            params![
                v.path,
                v.kind.as_str(),
                new.snapshot,
                ms(v.quiet),
                ms(v.max_wait),
                new.when_file,
                new.push,
                new.tag_format,
                new.host,
                v.live.map(ms),
                i64::from(new.poll),
                ms(v.poll_interval),
                now_ns
            ],
        )
        .map_err(self.err())?;
        let id = conn.last_insert_rowid();
        drop(conn);
        self.get(&id.to_string())
    }

    /// Every rule, by id, each with its newest log entry.
    pub fn list(&self) -> Result<Vec<WatchInfo>, WatchError> {
        let conn = self.conn();
        let mut st = conn
            .prepare(&format!("SELECT {COLS} FROM watches ORDER BY id"))
            .map_err(self.err())?;
        let mut out: Vec<WatchInfo> = st
            .query_map([], row_info)
            .map_err(self.err())?
            .collect::<Result<_, _>>()
            .map_err(self.err())?;
        let mut last = conn
            .prepare(
                "SELECT id, watch, at_ns, action, trigger, result, detail FROM watch_log
                 WHERE watch = ?1 ORDER BY id DESC LIMIT 1",
            )
            .map_err(self.err())?;
        for w in &mut out {
            w.last = last
                .query_row([w.id], row_log)
                .optional()
                .map_err(self.err())?;
        }
        Ok(out)
    }

    /// One rule, by id or by its path (the only rule of that path).
    pub fn get(&self, key: &str) -> Result<WatchInfo, WatchError> {
        let all = self.list()?;
        if let Ok(id) = key.parse::<i64>() {
            if let Some(w) = all.iter().find(|w| w.id == id) {
                return Ok(w.clone());
            }
        }
        let canon = std::fs::canonicalize(key)
            .ok()
            .and_then(|p| p.to_str().map(str::to_string));
        let mut of_path = all.into_iter().filter(|w| {
            w.path == key.trim_end_matches('/') || canon.as_deref() == Some(w.path.as_str())
        });
        match (of_path.next(), of_path.next()) {
            (Some(w), None) => Ok(w),
            (Some(_), Some(_)) => Err(WatchError::Invalid {
                field: "watch",
                reason: format!("several watches have the path {key}; name one by its id"),
            }),
            _ => Err(WatchError::Unknown(key.to_string())),
        }
    }

    /// Pause or resume a rule.
    pub fn set_paused(&self, id: i64, paused: bool) -> Result<(), WatchError> {
        let n = self
            .conn()
            .execute(
                "UPDATE watches SET paused = ?2, state = ?3, detail = '', sure = 0 WHERE id = ?1",
                params![
                    id,
                    i64::from(paused),
                    if paused { "paused" } else { "starting" }
                ],
            )
            .map_err(self.err())?;
        if n == 0 {
            return Err(WatchError::Unknown(id.to_string()));
        }
        self.log(
            id,
            if paused { "pause" } else { "resume" },
            "user",
            "ok",
            "",
        )?;
        Ok(())
    }

    /// Remove a rule, its log and its record.
    pub fn remove(&self, id: i64) -> Result<(), WatchError> {
        let mut conn = self.conn();
        let tx = conn.transaction().map_err(db::err(&self.path))?;
        let n = tx
            .execute("DELETE FROM watches WHERE id = ?1", [id])
            .map_err(db::err(&self.path))?;
        for t in ["watch_log", "watch_changes", "watch_runs", "watch_index"] {
            tx.execute(&format!("DELETE FROM {t} WHERE watch = ?1"), [id])
                .map_err(db::err(&self.path))?;
        }
        tx.commit().map_err(db::err(&self.path))?;
        if n == 0 {
            return Err(WatchError::Unknown(id.to_string()));
        }
        Ok(())
    }

    /// Record where a rule stands.
    pub fn set_state(
        &self,
        id: i64,
        state: State,
        detail: &str,
        mode: &str,
        fs_type: &str,
    ) -> Result<(), DbError> {
        self.conn()
            .execute(
                "UPDATE watches SET state = ?2, detail = ?3, mode = ?4, fs_type = ?5
                 WHERE id = ?1 AND paused = 0",
                params![id, state.as_str(), detail, mode, fs_type],
            )
            .map_err(self.err())?;
        Ok(())
    }

    /// Append to a rule's log.
    pub fn log(
        &self,
        id: i64,
        action: &str,
        trigger: &str,
        result: &str,
        detail: &str,
    ) -> Result<(), DbError> {
        tracing::info!(watch = id, action, trigger, result, detail, "watch");
        self.conn()
            .execute(
                "INSERT INTO watch_log (watch, at_ns, action, trigger, result, detail)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                params![id, db::now_ns(), action, trigger, result, detail],
            )
            .map_err(self.err())?;
        Ok(())
    }

    /// The log, newest first: of one rule or all, at most `limit` lines.
    pub fn logs(&self, id: Option<i64>, limit: usize) -> Result<Vec<LogEntry>, DbError> {
        let conn = self.conn();
        let mut st = conn
            .prepare(
                "SELECT id, watch, at_ns, action, trigger, result, detail FROM watch_log
                 WHERE ?1 IS NULL OR watch = ?1 ORDER BY id DESC LIMIT ?2",
            )
            .map_err(self.err())?;
        let rows = st
            .query_map(params![id, limit as i64], row_log)
            .map_err(self.err())?
            .collect::<Result<_, _>>()
            .map_err(self.err())?;
        Ok(rows)
    }

    /// Add paths to the record of what changed since the clean version.
    pub fn record_changes(&self, id: i64, rels: &[String]) -> Result<(), DbError> {
        if rels.is_empty() {
            return Ok(());
        }
        let mut conn = self.conn();
        let tx = conn.transaction().map_err(db::err(&self.path))?;
        {
            let mut put = tx
                .prepare_cached("INSERT OR IGNORE INTO watch_changes (watch, rel) VALUES (?1, ?2)")
                .map_err(db::err(&self.path))?;
            for r in rels {
                put.execute(params![id, r]).map_err(db::err(&self.path))?;
            }
        }
        tx.commit().map_err(db::err(&self.path))
    }

    /// The directory equals `version` except for `since` (paths changed
    /// while it was being snapshotted); `sure`: the record is complete.
    /// `index`: the encoded [`crate::store::ManifestIndex`] of `version`,
    /// or `None` to keep the one held if it is `version`'s (else none is
    /// kept).
    pub fn set_clean(
        &self,
        id: i64,
        version: Option<&str>,
        since: &[String],
        sure: bool,
        index: Option<&[u8]>,
    ) -> Result<(), DbError> {
        let mut conn = self.conn();
        let tx = conn.transaction().map_err(db::err(&self.path))?;
        tx.execute("DELETE FROM watch_changes WHERE watch = ?1", [id])
            .map_err(db::err(&self.path))?;
        match (version, index) {
            (Some(v), Some(ix)) => tx.execute(
                "INSERT OR REPLACE INTO watch_index (watch, version, idx) VALUES (?1, ?2, ?3)",
                params![id, v, ix],
            ),
            _ => tx.execute(
                "DELETE FROM watch_index WHERE watch = ?1 AND version IS NOT ?2",
                params![id, version],
            ),
        }
        .map_err(db::err(&self.path))?;
        tx.execute(
            "UPDATE watches SET clean_version = ?2, sure = ?3 WHERE id = ?1",
            params![id, version, i64::from(sure)],
        )
        .map_err(db::err(&self.path))?;
        {
            let mut put = tx
                .prepare_cached("INSERT OR IGNORE INTO watch_changes (watch, rel) VALUES (?1, ?2)")
                .map_err(db::err(&self.path))?;
            for r in since {
                put.execute(params![id, r]).map_err(db::err(&self.path))?;
            }
        }
        tx.commit().map_err(db::err(&self.path))
    }

    /// The record can no longer be trusted (overflow, restart, polling).
    pub fn set_unsure(&self, id: i64) -> Result<(), DbError> {
        self.conn()
            .execute("UPDATE watches SET sure = 0 WHERE id = ?1", [id])
            .map_err(self.err())?;
        Ok(())
    }

    /// The record of a rule: the clean version and the changed paths, if
    /// the rule is sure of it. `None` when it is not.
    pub fn record(&self, id: i64) -> Result<Option<(String, Vec<String>)>, DbError> {
        let conn = self.conn();
        let head: Option<(Option<String>, i64, String, i64)> = conn
            .query_row(
                "SELECT clean_version, sure, state, paused FROM watches WHERE id = ?1",
                [id],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
            )
            .optional()
            .map_err(self.err())?;
        let Some((Some(version), 1, state, 0)) = head else {
            return Ok(None);
        };
        if !matches!(state.as_str(), "idle" | "pending" | "working" | "postponed") {
            return Ok(None);
        }
        let mut st = conn
            .prepare("SELECT rel FROM watch_changes WHERE watch = ?1 ORDER BY rel")
            .map_err(self.err())?;
        let rels = st
            .query_map([id], |r| r.get::<_, String>(0))
            .map_err(self.err())?
            .collect::<Result<Vec<_>, _>>()
            .map_err(self.err())?;
        Ok(Some((version, rels)))
    }

    /// The version whose manifest index a rule holds, if any.
    pub fn index_version(&self, id: i64) -> Result<Option<String>, DbError> {
        self.conn()
            .query_row(
                "SELECT version FROM watch_index WHERE watch = ?1",
                [id],
                |r| r.get(0),
            )
            .optional()
            .map_err(self.err())
    }

    /// The encoded manifest index a rule holds for `version`, if it holds
    /// that version's.
    pub fn index(&self, id: i64, version: &str) -> Result<Option<Vec<u8>>, DbError> {
        self.conn()
            .query_row(
                "SELECT idx FROM watch_index WHERE watch = ?1 AND version = ?2",
                params![id, version],
                |r| r.get(0),
            )
            .optional()
            .map_err(self.err())
    }

    /// The state a wandb rule last synced a run directory in.
    pub fn run_synced(&self, id: i64, dir: &str) -> Result<Option<String>, DbError> {
        self.conn()
            .query_row(
                "SELECT state FROM watch_runs WHERE watch = ?1 AND dir = ?2",
                params![id, dir],
                |r| r.get(0),
            )
            .optional()
            .map_err(self.err())
    }

    /// Remember that a run directory was synced in `state`.
    pub fn mark_run(&self, id: i64, dir: &str, state: &str) -> Result<(), DbError> {
        self.conn()
            .execute(
                "INSERT OR REPLACE INTO watch_runs (watch, dir, state, synced_ns)
                 VALUES (?1, ?2, ?3, ?4)",
                params![id, dir, state, db::now_ns()],
            )
            .map_err(self.err())?;
        Ok(())
    }
}
