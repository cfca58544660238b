//! The sync ledger (`$TRAINYARD_HOME/sync.db`): per run directory and
//! server, what was sent — line counts per `file_stream` stream, whether the
//! final `complete` went out, which files were uploaded with which BLAKE3
//! hash — and what the last verification found. Format: `docs/sync-format.md`.
//!
//! The server's own line counts decide where streaming resumes (a request
//! that landed just before a kill -9 is never sent twice); the ledger decides
//! what need not be looked at again: a complete run whose file is unchanged
//! sends nothing, and an unchanged file is not uploaded twice.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use rusqlite::{params, Connection, OptionalExtension};
use serde::Serialize;

use super::api::RunPath;
use crate::db::{self, DbError};

const MIGRATIONS: &[&str] = &[
    "
CREATE TABLE runs (
    server TEXT NOT NULL,
    dir TEXT NOT NULL,
    entity TEXT NOT NULL,
    project TEXT NOT NULL,
    name TEXT NOT NULL,
    storage_id TEXT NOT NULL DEFAULT '',
    history_lines INTEGER NOT NULL DEFAULT 0,
    events_lines INTEGER NOT NULL DEFAULT 0,
    log_lines INTEGER NOT NULL DEFAULT 0,
    complete INTEGER NOT NULL DEFAULT 0,
    exit_code INTEGER,
    fingerprint TEXT NOT NULL DEFAULT '',
    state TEXT NOT NULL,
    error TEXT NOT NULL DEFAULT '',
    verified_at REAL,
    mismatches TEXT NOT NULL DEFAULT '[]',
    updated_at REAL NOT NULL,
    PRIMARY KEY (server, dir)
) WITHOUT ROWID;
CREATE TABLE files (
    server TEXT NOT NULL,
    dir TEXT NOT NULL,
    path TEXT NOT NULL,
    blake3 TEXT NOT NULL,
    size INTEGER NOT NULL,
    PRIMARY KEY (server, dir, path),
    FOREIGN KEY (server, dir) REFERENCES runs (server, dir) ON DELETE CASCADE
) WITHOUT ROWID;
",
    "
ALTER TABLE runs ADD COLUMN base_history INTEGER NOT NULL DEFAULT 0;
ALTER TABLE runs ADD COLUMN base_events INTEGER NOT NULL DEFAULT 0;
ALTER TABLE runs ADD COLUMN base_log INTEGER NOT NULL DEFAULT 0;
ALTER TABLE runs ADD COLUMN step_offset INTEGER NOT NULL DEFAULT 0;
",
];

/// One run's sync record against one server.
#[derive(Debug, Clone, Serialize)]
pub struct Entry {
    /// The server's base URL.
    pub server: String,
    /// The run directory.
    pub dir: PathBuf,
    /// Where the run is on the server.
    pub entity: String,
    /// Project on the server.
    pub project: String,
    /// Run id on the server.
    pub name: String,
    /// The server's storage id of the run.
    pub storage_id: String,
    /// History lines the server holds (as of the last request that succeeded).
    pub history_lines: u64,
    /// System-metric lines.
    pub events_lines: u64,
    /// Console lines.
    pub log_lines: u64,
    /// The final `complete` request went out after everything else.
    pub complete: bool,
    /// The exit code sent with it.
    pub exit_code: Option<i64>,
    /// The run file's fingerprint at the last complete sync.
    pub fingerprint: String,
    /// `partial`, `synced`, `mismatch` or `failed`.
    pub state: String,
    /// The last error, when `failed`.
    pub error: String,
    /// When the last verification ran (Unix seconds).
    pub verified_at: Option<f64>,
    /// What it found different.
    pub mismatches: Vec<String>,
    /// Files uploaded.
    pub files: u64,
    /// Last change (Unix seconds).
    pub updated_at: f64,
    /// Lines of each stream (history, events, console) the server held
    /// from earlier fragments of the run when this directory's first sync
    /// began: its lines go after them. 0 for a run in one directory.
    pub base: [u64; 3],
    /// Added to every `_step` of this directory's rows (a resumed fragment
    /// continues after the steps of the fragments before it).
    pub step_offset: i64,
}

impl Entry {
    /// Where the run is on the server.
    pub fn path(&self) -> RunPath {
        RunPath {
            entity: self.entity.clone(),
            project: self.project.clone(),
            name: self.name.clone(),
        }
    }
}

/// The ledger database.
pub struct Ledger {
    path: PathBuf,
    conn: Mutex<Connection>,
}

fn now() -> f64 {
    db::now_ns() as f64 / 1e9
}

impl Ledger {
    /// Opens (creating) the ledger at `path`.
    pub fn open(path: &Path) -> Result<Ledger, DbError> {
        let mut conn = db::open(path)?;
        db::migrate(&mut conn, path, MIGRATIONS)?;
        Ok(Ledger {
            path: path.to_path_buf(),
            conn: Mutex::new(conn),
        })
    }

    fn conn(&self) -> std::sync::MutexGuard<'_, Connection> {
        self.conn.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn err(&self) -> impl FnOnce(rusqlite::Error) -> DbError + '_ {
        db::err(&self.path)
    }

    /// The entry of `dir` on `server`.
    pub fn get(&self, server: &str, dir: &Path) -> Result<Option<Entry>, DbError> {
        let c = self.conn();
        let mut st = c
            .prepare_cached(&format!("{SELECT} WHERE r.server = ?1 AND r.dir = ?2"))
            .map_err(self.err())?;
        st.query_row(params![server, dir.to_string_lossy()], entry)
            .optional()
            .map_err(self.err())
    }

    /// Every entry, by directory then server.
    pub fn list(&self) -> Result<Vec<Entry>, DbError> {
        let c = self.conn();
        let mut st = c
            .prepare_cached(&format!("{SELECT} ORDER BY r.dir, r.server"))
            .map_err(self.err())?;
        let rows = st.query_map([], entry).map_err(self.err())?;
        rows.collect::<Result<_, _>>().map_err(self.err())
    }

    /// Other run directories already synced to the run `name` of `project`
    /// on `server` (resumed fragments of one run, or copies of it).
    pub fn others(
        &self,
        server: &str,
        project: &str,
        name: &str,
        dir: &Path,
    ) -> Result<Vec<PathBuf>, DbError> {
        let c = self.conn();
        let mut st = c
            .prepare_cached(
                "SELECT dir FROM runs WHERE server = ?1 AND project = ?2 AND name = ?3 AND dir != ?4",
            )
            .map_err(self.err())?;
        let rows = st
            .query_map(params![server, project, name, dir.to_string_lossy()], |r| {
                r.get::<_, String>(0).map(PathBuf::from)
            })
            .map_err(self.err())?;
        rows.collect::<Result<_, _>>().map_err(self.err())
    }

    /// A sync of `dir` to `path` on `server` begins: the entry exists and is
    /// `partial` until [`Ledger::complete`]. A different remote path (a new
    /// `--id`) starts the record over. `base` and `step_offset` are recorded
    /// only by the first sync of `dir` to `path`; later ones keep them, so a
    /// fragment's lines always go to the same place.
    pub fn begin(
        &self,
        server: &str,
        dir: &Path,
        path: &RunPath,
        storage_id: &str,
        base: [u64; 3],
        step_offset: i64,
    ) -> Result<(), DbError> {
        let mut c = self.conn();
        let tx = c.transaction().map_err(db::err(&self.path))?;
        let d = dir.to_string_lossy();
        let same: Option<bool> = tx
            .query_row(
                "SELECT entity = ?3 AND project = ?4 AND name = ?5 FROM runs WHERE server = ?1 AND dir = ?2",
                params![server, d, path.entity, path.project, path.name],
                |r| r.get(0),
            )
            .optional()
            .map_err(db::err(&self.path))?;
        if same == Some(false) {
            tx.execute(
                "DELETE FROM runs WHERE server = ?1 AND dir = ?2",
                params![server, d],
            )
            .map_err(db::err(&self.path))?;
        }
        tx.execute(
            "INSERT INTO runs (server, dir, entity, project, name, storage_id, state, updated_at,
                 base_history, base_events, base_log, step_offset)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, 'partial', ?7, ?8, ?9, ?10, ?11)
             ON CONFLICT (server, dir) DO UPDATE SET storage_id = excluded.storage_id,
                 complete = 0, state = 'partial', error = '', updated_at = excluded.updated_at",
            params![
                server,
                d,
                path.entity,
                path.project,
                path.name,
                storage_id,
                now(),
                base[0] as i64,
                base[1] as i64,
                base[2] as i64,
                step_offset
            ],
        )
        .map_err(db::err(&self.path))?;
        tx.commit().map_err(db::err(&self.path))
    }

    /// Every directory synced to the run `name` of `project` on `server`
    /// (the fragments of a resumed run), earliest base first.
    pub fn fragments(
        &self,
        server: &str,
        project: &str,
        name: &str,
    ) -> Result<Vec<Entry>, DbError> {
        let c = self.conn();
        let mut st = c
            .prepare_cached(&format!(
                "{SELECT} WHERE r.server = ?1 AND r.project = ?2 AND r.name = ?3
                 ORDER BY r.base_history, r.base_events, r.base_log, r.dir"
            ))
            .map_err(self.err())?;
        let rows = st
            .query_map(params![server, project, name], entry)
            .map_err(self.err())?;
        rows.collect::<Result<_, _>>().map_err(self.err())
    }

    /// The ledger's file (its directory holds the sync locks).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The server now holds this many lines of each stream.
    pub fn set_counts(
        &self,
        server: &str,
        dir: &Path,
        history: u64,
        events: u64,
        log: u64,
    ) -> Result<(), DbError> {
        self.conn()
            .prepare_cached(
                "UPDATE runs SET history_lines = ?3, events_lines = ?4, log_lines = ?5, updated_at = ?6
                 WHERE server = ?1 AND dir = ?2",
            )
            .and_then(|mut st| {
                st.execute(params![
                    server,
                    dir.to_string_lossy(),
                    history as i64,
                    events as i64,
                    log as i64,
                    now()
                ])
            })
            .map(|_| ())
            .map_err(self.err())
    }

    /// Files uploaded for `dir` on `server`: path → (BLAKE3 hex, size).
    pub fn files(
        &self,
        server: &str,
        dir: &Path,
    ) -> Result<HashMap<String, (String, u64)>, DbError> {
        let c = self.conn();
        let mut st = c
            .prepare_cached("SELECT path, blake3, size FROM files WHERE server = ?1 AND dir = ?2")
            .map_err(self.err())?;
        let rows = st
            .query_map(params![server, dir.to_string_lossy()], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    (r.get(1)?, r.get::<_, i64>(2)? as u64),
                ))
            })
            .map_err(self.err())?;
        rows.collect::<Result<_, _>>().map_err(self.err())
    }

    /// A file was uploaded.
    pub fn file_done(
        &self,
        server: &str,
        dir: &Path,
        path: &str,
        blake3: &str,
        size: u64,
    ) -> Result<(), DbError> {
        self.conn()
            .prepare_cached(
                "INSERT INTO files (server, dir, path, blake3, size) VALUES (?1, ?2, ?3, ?4, ?5)
                 ON CONFLICT (server, dir, path) DO UPDATE SET blake3 = excluded.blake3, size = excluded.size",
            )
            .and_then(|mut st| {
                st.execute(params![server, dir.to_string_lossy(), path, blake3, size as i64])
            })
            .map(|_| ())
            .map_err(self.err())
    }

    /// The final `complete` request was answered.
    pub fn complete(
        &self,
        server: &str,
        dir: &Path,
        exit_code: i64,
        fingerprint: &str,
    ) -> Result<(), DbError> {
        self.conn()
            .prepare_cached(
                "UPDATE runs SET complete = 1, exit_code = ?3, fingerprint = ?4, state = 'synced',
                     error = '', updated_at = ?5 WHERE server = ?1 AND dir = ?2",
            )
            .and_then(|mut st| {
                st.execute(params![
                    server,
                    dir.to_string_lossy(),
                    exit_code,
                    fingerprint,
                    now()
                ])
            })
            .map(|_| ())
            .map_err(self.err())
    }

    /// The last attempt failed (the entry keeps what was sent before).
    pub fn failed(&self, server: &str, dir: &Path, error: &str) -> Result<(), DbError> {
        self.conn()
            .prepare_cached(
                "UPDATE runs SET state = 'failed', error = ?3, updated_at = ?4 WHERE server = ?1 AND dir = ?2",
            )
            .and_then(|mut st| st.execute(params![server, dir.to_string_lossy(), error, now()]))
            .map(|_| ())
            .map_err(self.err())
    }

    /// A verification ran and found `mismatches` (none: the run is `synced`).
    pub fn verified(&self, server: &str, dir: &Path, mismatches: &[String]) -> Result<(), DbError> {
        let json = serde_json::to_string(mismatches).unwrap_or_else(|_| "[]".into());
        self.conn()
            .prepare_cached(
                "UPDATE runs SET verified_at = ?3, mismatches = ?4,
                     state = CASE WHEN state = 'failed' THEN state
                                  WHEN ?5 THEN 'mismatch'
                                  WHEN complete THEN 'synced' ELSE 'partial' END
                 WHERE server = ?1 AND dir = ?2",
            )
            .and_then(|mut st| {
                st.execute(params![
                    server,
                    dir.to_string_lossy(),
                    now(),
                    json,
                    !mismatches.is_empty()
                ])
            })
            .map(|_| ())
            .map_err(self.err())
    }

    /// Forgets `dir` on `server` (after the run was deleted there).
    pub fn remove(&self, server: &str, dir: &Path) -> Result<bool, DbError> {
        self.conn()
            .execute(
                "DELETE FROM runs WHERE server = ?1 AND dir = ?2",
                params![server, dir.to_string_lossy()],
            )
            .map(|n| n > 0)
            .map_err(self.err())
    }
}

const SELECT: &str = "SELECT r.server, r.dir, r.entity, r.project, r.name, r.storage_id,
    r.history_lines, r.events_lines, r.log_lines, r.complete, r.exit_code, r.fingerprint,
    r.state, r.error, r.verified_at, r.mismatches, r.updated_at,
    (SELECT count(*) FROM files f WHERE f.server = r.server AND f.dir = r.dir),
    r.base_history, r.base_events, r.base_log, r.step_offset
    FROM runs r";

fn entry(r: &rusqlite::Row<'_>) -> rusqlite::Result<Entry> {
    let mismatches: String = r.get(15)?;
    Ok(Entry {
        server: r.get(0)?,
        dir: PathBuf::from(r.get::<_, String>(1)?),
        entity: r.get(2)?,
        project: r.get(3)?,
        name: r.get(4)?,
        storage_id: r.get(5)?,
        history_lines: r.get::<_, i64>(6)? as u64,
        events_lines: r.get::<_, i64>(7)? as u64,
        log_lines: r.get::<_, i64>(8)? as u64,
        complete: r.get(9)?,
        exit_code: r.get(10)?,
        fingerprint: r.get(11)?,
        state: r.get(12)?,
        error: r.get(13)?,
        verified_at: r.get(14)?,
        mismatches: serde_json::from_str(&mismatches).unwrap_or_default(),
        updated_at: r.get(16)?,
        files: r.get::<_, i64>(17)? as u64,
        base: [
            r.get::<_, i64>(18)? as u64,
            r.get::<_, i64>(19)? as u64,
            r.get::<_, i64>(20)? as u64,
        ],
        step_offset: r.get(21)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A version-1 ledger (before resumed fragments) opens, migrates, and
    /// reads its runs as runs of one directory: base 0, no step shift.
    #[test]
    fn a_version_1_ledger_reads_as_single_directory_runs() {
        let tmp = tempfile::tempdir().expect("temp dir");
        let path = tmp.path().join("sync.db");
        {
            let mut conn = db::open(&path).expect("open");
            db::migrate(&mut conn, &path, &MIGRATIONS[..1]).expect("v1");
            conn.execute(
                "INSERT INTO runs (server, dir, entity, project, name, history_lines, complete,
                     state, updated_at) VALUES ('http://w', '/r', 'lab', 'p', 'id1', 30, 1, 'synced', 1.0)",
                [],
            )
            .expect("insert");
        }
        let l = Ledger::open(&path).expect("migrated");
        let e = l
            .get("http://w", Path::new("/r"))
            .expect("get")
            .expect("entry");
        assert_eq!((e.history_lines, e.base, e.step_offset), (30, [0; 3], 0));
        let path_ = RunPath {
            entity: "lab".into(),
            project: "p".into(),
            name: "id1".into(),
        };
        // a later sync of the same directory keeps what was recorded first
        l.begin("http://w", Path::new("/r"), &path_, "sid", [5, 6, 7], 9)
            .expect("begin");
        let e = l
            .get("http://w", Path::new("/r"))
            .expect("get")
            .expect("entry");
        assert_eq!((e.base, e.step_offset), ([0; 3], 0));
        // a new directory of the run records its own
        l.begin("http://w", Path::new("/r2"), &path_, "sid", [30, 2, 1], 30)
            .expect("begin");
        let frags = l.fragments("http://w", "p", "id1").expect("fragments");
        let got: Vec<_> = frags.iter().map(|e| (e.dir.clone(), e.base)).collect();
        assert_eq!(
            got,
            vec![
                (PathBuf::from("/r"), [0; 3]),
                (PathBuf::from("/r2"), [30, 2, 1])
            ]
        );
    }
}
