//! The run index: wandb run directories found on this machine, read with
//! [`RunReader`] and kept in one SQLite file
//! (`$TRAINYARD_HOME/runs.db`, format in `docs/runs-format.md`).
//!
//! Rows (history, system samples, console lines) are stored one cell per
//! (run, stream, key, row) with numbers as SQLite REALs, so reading a few
//! metrics of a long run touches only their cells. Everything else about a run
//! is kept together with a checkpoint of the reader, so a run whose file grew
//! is read from the offset where the last scan stopped, and an unchanged one
//! (same size, mtime and `files/` mtime) is not opened at all.
//!
//! Invariant: a run's rows and its resume offset change in one transaction,
//! and only if the offset is still the one the read started from, so two
//! scanners (the CLI and the daemon) never store a row twice.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rusqlite::{params, Connection, OptionalExtension, TransactionBehavior};
use serde::Serialize;

use super::run::flatten;
use super::{
    ConsoleLine, Diagnostic, DirFile, Environment, HistoryRow, Run, RunDir, RunFile, RunReader,
    RunState, SystemSample, Value,
};
use crate::db::{self, DbError};

/// Which series a row belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Series {
    /// `wandb.log` rows, by step.
    History = 0,
    /// System-metrics samples (`system.*`), by time.
    System = 1,
}

/// The index could not be used.
#[derive(Debug, thiserror::Error)]
pub enum IndexError {
    /// The database failed.
    #[error(transparent)]
    Db(#[from] DbError),
    /// A run could not be read.
    #[error(transparent)]
    Read(#[from] super::Error),
    /// A scan root does not exist or is not a directory.
    #[error("cannot scan {path}: {reason}")]
    BadRoot {
        /// The root given.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// No indexed run has this id or directory.
    #[error("no run {0:?} in the index; `trainyard runs ls` lists runs, `trainyard runs scan DIR` adds them")]
    NotFound(String),
    /// A tag to remove that the run's own files carry.
    #[error("run {run}: the tag {tag:?} is the run's own (from wandb); only tags added with `trainyard tag` can be removed")]
    OwnTag {
        /// The run.
        run: String,
        /// The tag.
        tag: String,
    },
    /// The stored reader checkpoint of a run is unreadable (written by a
    /// different version); the run is read again from the start.
    #[error("run index entry for {dir} is damaged: {reason}")]
    Damaged {
        /// The run directory.
        dir: String,
        /// Why.
        reason: String,
    },
}

type Result<T, E = IndexError> = std::result::Result<T, E>;

const MIGRATIONS: &[&str] = &[
    "CREATE TABLE runs (
        rid INTEGER PRIMARY KEY,
        dir TEXT NOT NULL UNIQUE,
        wandb_file TEXT NOT NULL,
        run_id TEXT NOT NULL,
        entity TEXT NOT NULL,
        project TEXT NOT NULL,
        name TEXT NOT NULL,
        state TEXT NOT NULL,
        exit_code INTEGER,
        start_time REAL,
        runtime REAL,
        tags TEXT NOT NULL,
        summary TEXT NOT NULL,
        config TEXT NOT NULL,
        meta TEXT NOT NULL,
        history_rows INTEGER NOT NULL,
        system_rows INTEGER NOT NULL,
        console_lines INTEGER NOT NULL,
        file_size INTEGER NOT NULL,
        file_mtime_ns INTEGER NOT NULL,
        files_mtime_ns INTEGER NOT NULL,
        resume_offset INTEGER NOT NULL,
        checkpoint TEXT NOT NULL,
        indexed_at REAL NOT NULL
    );
    CREATE INDEX runs_by_id ON runs(run_id);
    CREATE INDEX runs_by_project ON runs(project, start_time);
    CREATE TABLE keys (kid INTEGER PRIMARY KEY, name TEXT NOT NULL UNIQUE);
    CREATE TABLE run_keys (
        rid INTEGER NOT NULL REFERENCES runs(rid) ON DELETE CASCADE,
        series INTEGER NOT NULL,
        kid INTEGER NOT NULL REFERENCES keys(kid),
        cells INTEGER NOT NULL,
        PRIMARY KEY (rid, series, kid)
    ) WITHOUT ROWID;
    CREATE TABLE rows (
        rid INTEGER NOT NULL REFERENCES runs(rid) ON DELETE CASCADE,
        series INTEGER NOT NULL,
        seq INTEGER NOT NULL,
        step INTEGER,
        runtime REAL,
        ts REAL,
        PRIMARY KEY (rid, series, seq)
    ) WITHOUT ROWID;
    CREATE TABLE cells (
        rid INTEGER NOT NULL REFERENCES runs(rid) ON DELETE CASCADE,
        series INTEGER NOT NULL,
        kid INTEGER NOT NULL,
        seq INTEGER NOT NULL,
        num REAL,
        json TEXT,
        PRIMARY KEY (rid, series, kid, seq)
    ) WITHOUT ROWID;
    CREATE TABLE console (
        rid INTEGER NOT NULL REFERENCES runs(rid) ON DELETE CASCADE,
        seq INTEGER NOT NULL,
        stderr INTEGER NOT NULL,
        ts REAL,
        text TEXT NOT NULL,
        PRIMARY KEY (rid, seq)
    ) WITHOUT ROWID;",
    // 2: tags added here (`trainyard tag RUN TAG`), by run id so they
    // outlive a re-index of the run's files, which rewrites `runs.tags`.
    "CREATE TABLE local_tags (
        run_id TEXT NOT NULL,
        tag TEXT NOT NULL,
        PRIMARY KEY (run_id, tag)
    ) WITHOUT ROWID;",
];

/// How a scan treats what it finds.
#[derive(Debug, Clone, Copy)]
pub struct ScanOptions {
    /// A run without an exit record whose file has not changed for this
    /// long is taken to be killed (its writer is gone): wandb writes system
    /// metrics every few seconds while a run lives.
    pub stale_after: Duration,
}

impl Default for ScanOptions {
    fn default() -> Self {
        ScanOptions {
            stale_after: Duration::from_secs(15 * 60),
        }
    }
}

/// What indexing one run directory did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// First time indexed.
    New,
    /// Read further (or its state changed).
    Updated,
    /// Nothing to do.
    Unchanged,
}

/// One run directory's result in a scan.
#[derive(Debug, Clone, Serialize)]
pub struct Scanned {
    /// The run directory.
    pub dir: String,
    /// The run id (empty on error).
    pub id: String,
    /// What happened.
    pub outcome: Option<Outcome>,
    /// History rows added.
    pub rows_added: u64,
    /// Why it failed.
    pub error: Option<String>,
}

/// A scan's result.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ScanReport {
    /// Run directories found.
    pub found: usize,
    /// Newly indexed.
    pub new: usize,
    /// Read further.
    pub updated: usize,
    /// Unchanged.
    pub unchanged: usize,
    /// Directories that could not be indexed, with the reason.
    pub errors: Vec<ScanFailure>,
    /// Every run directory, in the order found.
    pub runs: Vec<Scanned>,
}

/// A run directory that could not be indexed.
#[derive(Debug, Clone, Serialize)]
pub struct ScanFailure {
    /// The directory.
    pub dir: String,
    /// Why.
    pub error: String,
}

/// Sync state of a run against one server (filled by the sync ledger).
#[derive(Debug, Clone, Serialize)]
pub struct SyncState {
    /// The server's base URL.
    pub server: String,
    /// `synced`, `partial`, `failed`, …
    pub state: String,
    /// Details for people.
    pub detail: String,
}

/// A run in listings.
#[derive(Debug, Clone, Serialize)]
pub struct RunSummary {
    /// The wandb run id.
    pub id: String,
    /// The run directory.
    pub dir: String,
    /// Entity (empty for offline runs that did not set one).
    pub entity: String,
    /// Project.
    pub project: String,
    /// Display name.
    pub name: String,
    /// `running`, `finished`, `crashed` or `killed`.
    pub state: String,
    /// Exit code.
    pub exit_code: Option<i32>,
    /// Start (Unix seconds).
    pub start_time: Option<f64>,
    /// Runtime, seconds.
    pub runtime: Option<f64>,
    /// Tags.
    pub tags: Vec<String>,
    /// History rows.
    pub history_rows: u64,
    /// System-metric samples.
    pub system_rows: u64,
    /// History metric keys (dotted, without `_`-prefixed internal ones).
    pub keys: Vec<String>,
    /// Summary.
    pub summary: BTreeMap<String, Value>,
    /// Host the run ran on (the run record's, else the environment's).
    pub host: String,
    /// GPU model (environment record; empty when none was seen).
    pub gpu: String,
    /// GPUs the run's host had.
    pub gpu_count: u32,
    /// Sync state per server.
    pub sync: Vec<SyncState>,
}

/// Which runs [`RunIndex::list_filtered`] returns; every field that is set
/// must hold.
#[derive(Debug, Clone, Default)]
pub struct ListFilter {
    /// Only this project.
    pub project: Option<String>,
    /// Only this state.
    pub state: Option<String>,
    /// Only runs carrying every one of these tags.
    pub tags: Vec<String>,
    /// Only runs started at or after this time (Unix seconds).
    pub since: Option<f64>,
    /// Only runs started before this time (Unix seconds).
    pub until: Option<f64>,
    /// Only runs on this host.
    pub host: Option<String>,
}

/// Everything the index knows about a run.
#[derive(Debug, Clone, Serialize)]
pub struct RunDetail {
    /// The listing fields.
    #[serde(flatten)]
    pub run: RunSummary,
    /// Config (wandb's own `_wandb` key included).
    pub config: BTreeMap<String, Value>,
    /// Group, job type, notes, host and the like.
    pub meta: RunMeta,
    /// System metric keys, `system.`-prefixed.
    pub system_keys: Vec<String>,
    /// Console lines stored.
    pub console_lines: u64,
}

/// The rest of a run's identity, as stored.
#[derive(Debug, Clone, Default, Serialize, serde::Deserialize)]
pub struct RunMeta {
    /// Group.
    pub group: String,
    /// Job type.
    pub job_type: String,
    /// Notes.
    pub notes: String,
    /// Host.
    pub host: String,
    /// Sweep id.
    pub sweep_id: String,
    /// System metadata.
    pub environment: Environment,
    /// Files under `files/`.
    pub files: Vec<DirFile>,
    /// Files the run asked to upload.
    pub upload_files: Vec<RunFile>,
    /// The client that wrote it.
    pub producer: String,
    /// The client's version.
    pub cli_version: String,
    /// Problems the reader stepped over.
    pub diagnostics: Vec<Diagnostic>,
    /// Offset of an incomplete record at the end of the file.
    pub incomplete_tail: Option<u64>,
    /// Records read, by type.
    pub record_counts: BTreeMap<String, u64>,
    /// The `.wandb` file's size when last read.
    pub file_size: u64,
}

/// Columns of a run's history (or system samples), aligned by row.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Table {
    /// `_step` per row (the sample number for system metrics).
    pub steps: Vec<i64>,
    /// `_runtime` per row.
    pub runtime: Vec<Option<f64>>,
    /// `_timestamp` per row.
    pub timestamps: Vec<Option<f64>>,
    /// The requested keys, each with one cell per row (`None` where the row
    /// lacks it).
    pub columns: Vec<(String, Vec<Option<Value>>)>,
}

impl Table {
    /// Numeric view for charts: `{steps, runtime, series: {key: [number|null]}}`.
    pub fn numeric(&self) -> serde_json::Value {
        let series: serde_json::Map<String, serde_json::Value> = self
            .columns
            .iter()
            .map(|(k, cells)| {
                let nums: Vec<Option<f64>> = cells
                    .iter()
                    .map(|c| c.as_ref().and_then(Value::as_f64).filter(|x| x.is_finite()))
                    .collect();
                (k.clone(), serde_json::json!(nums))
            })
            .collect();
        serde_json::json!({
            "steps": self.steps,
            "runtime": self.runtime,
            "series": series,
        })
    }
}

/// Finds run directories under `root` (or `root` itself): `offline-run-*`
/// and `run-*` directories holding a `run-*.wandb` file. Hidden directories
/// and symlinks (wandb's `latest-run`) are not followed.
pub fn find_run_dirs(root: &Path) -> Result<Vec<PathBuf>> {
    let meta = std::fs::metadata(root).map_err(|e| IndexError::BadRoot {
        path: root.into(),
        reason: e.to_string(),
    })?;
    if !meta.is_dir() {
        return Err(IndexError::BadRoot {
            path: root.into(),
            reason: "not a directory".into(),
        });
    }
    let mut out = Vec::new();
    walk(root, 0, &mut out);
    out.sort();
    Ok(out)
}

fn is_run_dir_name(name: &str) -> bool {
    name.starts_with("offline-run-") || name.starts_with("run-")
}

fn walk(dir: &Path, depth: usize, out: &mut Vec<PathBuf>) {
    let name = dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    if is_run_dir_name(&name) && RunDir::open(dir).is_ok() {
        out.push(dir.to_path_buf());
        return;
    }
    if depth >= 8 {
        return;
    }
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let n = e.file_name();
        let n = n.to_string_lossy();
        if n.starts_with('.') || n == "node_modules" || n == "__pycache__" {
            continue;
        }
        if e.file_type().is_ok_and(|t| t.is_dir()) {
            walk(&e.path(), depth + 1, out);
        }
    }
}

fn mtime_ns(meta: &std::fs::Metadata) -> i64 {
    meta.modified()
        .ok()
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_nanos() as i64)
}

fn now_s() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

fn ext_json(m: &BTreeMap<String, Value>) -> String {
    Value::Object(m.clone()).to_extended_json()
}

fn parse_obj(text: &str) -> BTreeMap<String, Value> {
    match Value::parse(text) {
        Ok(Value::Object(m)) => m,
        _ => BTreeMap::new(),
    }
}

fn state_name(s: RunState) -> &'static str {
    match s {
        RunState::Running => "running",
        RunState::Finished => "finished",
        RunState::Crashed => "crashed",
        RunState::Killed => "killed",
    }
}

/// What is stored about a run between scans, to decide whether to read it.
struct Stored {
    rid: i64,
    file_size: i64,
    file_mtime_ns: i64,
    files_mtime_ns: i64,
    resume_offset: i64,
    checkpoint: String,
    state: String,
    history_rows: i64,
    system_rows: i64,
    console_lines: i64,
}

impl Stored {
    /// Whether the run's files are as they were at the last scan.
    fn has(&self, stamp: &Stamp) -> bool {
        self.file_size == stamp.size
            && self.file_mtime_ns == stamp.mtime
            && self.files_mtime_ns == stamp.files_mtime
    }
}

/// What says whether a run changed since the last scan: its file's size and
/// mtime and the mtime of its `files/`; and whether the file is stale (its
/// writer presumably gone).
struct Stamp {
    size: i64,
    mtime: i64,
    files_mtime: i64,
    stale: bool,
}

impl Stamp {
    fn of(rd: &RunDir, opts: ScanOptions) -> Result<Stamp> {
        let meta = std::fs::metadata(&rd.wandb_file).map_err(|source| super::Error::Io {
            path: rd.wandb_file.clone(),
            source,
        })?;
        let files_mtime = std::fs::metadata(rd.dir.join("files"))
            .map(|m| mtime_ns(&m))
            .unwrap_or(0);
        let stale = SystemTime::now()
            .duration_since(meta.modified().unwrap_or(UNIX_EPOCH))
            .is_ok_and(|age| age >= opts.stale_after);
        Ok(Stamp {
            size: meta.len() as i64,
            mtime: mtime_ns(&meta),
            files_mtime,
            stale,
        })
    }
}

/// What one read of a run found: the run as it is stored (its series taken
/// out; a stale one assumed killed), the new rows, the checkpoint and
/// offset to resume from, and whether it was read from the start.
struct Read {
    run: Run,
    history: Vec<HistoryRow>,
    system: Vec<SystemSample>,
    console: Vec<ConsoleLine>,
    checkpoint: String,
    offset: u64,
    from_start: bool,
}

impl Read {
    /// Reads what was appended since `stored`'s offset (from its
    /// checkpoint), or the whole run when there is none or it is unusable.
    fn new(rd: &RunDir, key: &str, stored: Option<&Stored>, stale: bool) -> Result<Read> {
        let mut reader = match stored {
            Some(s) => match Run::from_checkpoint(&s.checkpoint) {
                Ok(run) => RunReader::resume(&rd.wandb_file, s.resume_offset as u64, run),
                Err(reason) => {
                    tracing::warn!(
                        "{}",
                        IndexError::Damaged {
                            dir: key.to_string(),
                            reason
                        }
                    );
                    RunReader::new(&rd.wandb_file)
                }
            },
            None => RunReader::new(&rd.wandb_file),
        };
        let resumed = stored
            .is_some_and(|s| reader.offset() == s.resume_offset as u64 && reader.offset() > 0);
        let update = reader.read_more()?;
        let mut run = reader.run().clone();
        let history = std::mem::take(&mut run.history);
        let system = std::mem::take(&mut run.system);
        let console = std::mem::take(&mut run.console);
        run.files_on_disk = rd.files()?;
        let checkpoint = run.checkpoint();
        if stale {
            run.assume_writer_gone();
        }
        Ok(Read {
            run,
            history,
            system,
            console,
            checkpoint,
            offset: update.offset,
            from_start: !resumed || update.restarted,
        })
    }
}

/// Writes one run's rows and their cells in a transaction, keeping the key
/// ids seen and counting the cells per (series, key) for `run_keys`.
struct CellWriter<'a, 't> {
    index: &'a RunIndex,
    tx: &'t rusqlite::Transaction<'t>,
    rid: i64,
    key_id: rusqlite::CachedStatement<'t>,
    row_ins: rusqlite::CachedStatement<'t>,
    cell_ins: rusqlite::CachedStatement<'t>,
    kids: HashMap<String, i64>,
    counts: HashMap<(u8, i64), i64>,
}

impl<'a, 't> CellWriter<'a, 't> {
    fn new(
        index: &'a RunIndex,
        tx: &'t rusqlite::Transaction<'t>,
        rid: i64,
    ) -> Result<CellWriter<'a, 't>> {
        Ok(CellWriter {
            index,
            tx,
            rid,
            key_id: index.db(tx.prepare_cached(
                "INSERT INTO keys (name) VALUES (?1)
                 ON CONFLICT(name) DO UPDATE SET name = excluded.name RETURNING kid",
            ))?,
            row_ins: index.db(tx.prepare_cached(
                "INSERT INTO rows (rid, series, seq, step, runtime, ts) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            ))?,
            cell_ins: index.db(tx.prepare_cached(
                "INSERT INTO cells (rid, series, kid, seq, num, json) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            ))?,
            kids: HashMap::new(),
            counts: HashMap::new(),
        })
    }

    /// One row of a series.
    fn row(
        &mut self,
        series: Series,
        seq: i64,
        step: Option<i64>,
        runtime: Option<f64>,
        ts: Option<f64>,
    ) -> Result<()> {
        self.index.db(self.row_ins.execute(params![
            self.rid,
            series as u8,
            seq,
            step,
            runtime,
            ts
        ]))?;
        Ok(())
    }

    /// The cells of row `seq`: finite numbers as REALs, anything else as
    /// extended JSON.
    fn cells(&mut self, series: Series, seq: i64, cells: Vec<(String, &Value)>) -> Result<()> {
        let series = series as u8;
        for (k, v) in cells {
            let kid = match self.kids.get(&k) {
                Some(id) => *id,
                None => {
                    let id: i64 = self.index.db(self.key_id.query_row([&k], |r| r.get(0)))?;
                    self.kids.insert(k, id);
                    id
                }
            };
            let (num, json) = match v {
                Value::Int(i) => (Some(*i as f64), None),
                Value::Float(x) if x.is_finite() => (Some(*x), None),
                other => (None, Some(other.to_extended_json())),
            };
            self.index.db(self
                .cell_ins
                .execute(params![self.rid, series, kid, seq, num, json]))?;
            *self.counts.entry((series, kid)).or_default() += 1;
        }
        Ok(())
    }

    /// Adds the cells written to the run's per-key counts.
    fn count_keys(self) -> Result<()> {
        let mut rk = self.index.db(self.tx.prepare_cached(
            "INSERT INTO run_keys (rid, series, kid, cells) VALUES (?1, ?2, ?3, ?4)
             ON CONFLICT(rid, series, kid) DO UPDATE SET cells = cells + excluded.cells",
        ))?;
        for ((series, kid), n) in self.counts {
            self.index
                .db(rk.execute(params![self.rid, series, kid, n]))?;
        }
        Ok(())
    }
}

/// The run index (one SQLite connection; cheap to share behind an `Arc`).
pub struct RunIndex {
    path: PathBuf,
    conn: Mutex<Connection>,
}

impl RunIndex {
    /// Opens (creating or migrating) the index at `path`.
    pub fn open(path: &Path) -> Result<RunIndex> {
        let mut conn = db::open(path)?;
        db::migrate(&mut conn, path, MIGRATIONS)?;
        Ok(RunIndex {
            path: path.to_path_buf(),
            conn: Mutex::new(conn),
        })
    }

    fn conn(&self) -> std::sync::MutexGuard<'_, Connection> {
        self.conn.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn db<T>(&self, r: rusqlite::Result<T>) -> Result<T> {
        r.map_err(|e| IndexError::Db(db::err(&self.path)(e)))
    }

    /// Finds run directories under each root and indexes them. One run that
    /// cannot be read is reported and does not stop the others; a root that
    /// does not exist is an error.
    pub fn scan(&self, roots: &[PathBuf], opts: ScanOptions) -> Result<ScanReport> {
        let mut dirs = Vec::new();
        for root in roots {
            dirs.extend(find_run_dirs(root)?);
        }
        let mut report = ScanReport {
            found: dirs.len(),
            ..ScanReport::default()
        };
        for dir in dirs {
            let shown = dir.display().to_string();
            match self.index_dir(&dir, opts) {
                Ok(s) => {
                    match s.outcome {
                        Some(Outcome::New) => report.new += 1,
                        Some(Outcome::Updated) => report.updated += 1,
                        _ => report.unchanged += 1,
                    }
                    report.runs.push(s);
                }
                Err(e) => {
                    tracing::warn!(dir = %shown, error = %e, "run not indexed");
                    report.errors.push(ScanFailure {
                        dir: shown.clone(),
                        error: e.to_string(),
                    });
                    report.runs.push(Scanned {
                        dir: shown,
                        id: String::new(),
                        outcome: None,
                        rows_added: 0,
                        error: Some(e.to_string()),
                    });
                }
            }
        }
        Ok(report)
    }

    fn stored(&self, dir: &str) -> Result<Option<Stored>> {
        let conn = self.conn();
        self.db(conn
            .query_row(
                "SELECT rid, file_size, file_mtime_ns, files_mtime_ns, resume_offset, checkpoint,
                        state, history_rows, system_rows, console_lines
                 FROM runs WHERE dir = ?1",
                [dir],
                |r| {
                    Ok(Stored {
                        rid: r.get(0)?,
                        file_size: r.get(1)?,
                        file_mtime_ns: r.get(2)?,
                        files_mtime_ns: r.get(3)?,
                        resume_offset: r.get(4)?,
                        checkpoint: r.get(5)?,
                        state: r.get(6)?,
                        history_rows: r.get(7)?,
                        system_rows: r.get(8)?,
                        console_lines: r.get(9)?,
                    })
                },
            )
            .optional())
    }

    /// Indexes one run directory: reads only what was appended since the
    /// last scan, or nothing if the run is unchanged.
    pub fn index_dir(&self, dir: &Path, opts: ScanOptions) -> Result<Scanned> {
        let dir = std::path::absolute(dir).unwrap_or_else(|_| dir.to_path_buf());
        let rd = RunDir::open(&dir)?;
        let key = dir.display().to_string();
        let stamp = Stamp::of(&rd, opts)?;
        let stored = self.stored(&key)?;
        if let Some(s) = stored.as_ref().filter(|s| s.has(&stamp)) {
            return self.unchanged(key, s, stamp.stale);
        }
        // Read what is new, outside any lock.
        let read = Read::new(&rd, &key, stored.as_ref(), stamp.stale)?;

        let mut conn = self.conn();
        let tx = self.db(conn.transaction_with_behavior(TransactionBehavior::Immediate))?;
        // Someone else may have indexed it meanwhile: go again from the top.
        let now: Option<(i64, i64)> = self.db(tx
            .query_row(
                "SELECT rid, resume_offset FROM runs WHERE dir = ?1",
                [&key],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional())?;
        if now != stored.as_ref().map(|s| (s.rid, s.resume_offset)) {
            drop(tx);
            drop(conn);
            return self.index_dir(&dir, opts);
        }
        // The rows' sequence numbers go on from the stored counts, unless
        // the run was read again from the start.
        let base = match (&stored, read.from_start) {
            (Some(s), false) => [s.history_rows, s.system_rows, s.console_lines],
            _ => [0; 3],
        };
        let rid = self.upsert_run(&tx, &key, &rd, &read, &stamp, base)?;
        if read.from_start {
            for t in ["rows", "cells", "console", "run_keys"] {
                self.db(tx.execute(&format!("DELETE FROM {t} WHERE rid = ?1"), [rid]))?;
            }
        }
        self.insert_rows(&tx, rid, base, &read)?;
        self.db(tx.commit())?;
        Ok(Scanned {
            dir: key,
            id: read.run.id,
            outcome: Some(if stored.is_some() {
                Outcome::Updated
            } else {
                Outcome::New
            }),
            rows_added: read.history.len() as u64,
            error: None,
        })
    }

    /// An unchanged run: nothing is read; a running one whose file has gone
    /// stale is marked killed.
    fn unchanged(&self, key: String, s: &Stored, stale: bool) -> Result<Scanned> {
        let conn = self.conn();
        let mut outcome = Outcome::Unchanged;
        if s.state == "running" && stale {
            self.db(conn.execute(
                "UPDATE runs SET state = 'killed' WHERE rid = ?1 AND state = 'running'",
                [s.rid],
            ))?;
            outcome = Outcome::Updated;
        }
        let id = self.db(conn.query_row(
            "SELECT run_id FROM runs WHERE rid = ?1",
            [s.rid],
            |r| r.get(0),
        ))?;
        Ok(Scanned {
            dir: key,
            id,
            outcome: Some(outcome),
            rows_added: 0,
            error: None,
        })
    }

    /// Inserts or updates the run's row (everything but its series) and
    /// returns its row id.
    fn upsert_run(
        &self,
        tx: &rusqlite::Transaction<'_>,
        key: &str,
        rd: &RunDir,
        read: &Read,
        stamp: &Stamp,
        base: [i64; 3],
    ) -> Result<i64> {
        let run = &read.run;
        let meta = RunMeta {
            group: run.group.clone(),
            job_type: run.job_type.clone(),
            notes: run.notes.clone(),
            host: run.host.clone(),
            sweep_id: run.sweep_id.clone(),
            environment: run.environment.clone(),
            files: run.files_on_disk.clone(),
            upload_files: run.files.clone(),
            producer: run.producer.clone(),
            cli_version: run.cli_version.clone(),
            diagnostics: run.diagnostics.clone(),
            incomplete_tail: run.incomplete_tail,
            record_counts: run.record_counts.clone(),
            file_size: stamp.size as u64,
        };
        let values = params![
            key,
            rd.wandb_file.display().to_string(),
            run.id,
            run.entity,
            run.project,
            run.display_name,
            state_name(run.state),
            run.exit_code,
            run.start_time,
            run.runtime,
            serde_json::to_string(&run.tags).unwrap_or_else(|_| "[]".into()),
            ext_json(&run.summary),
            ext_json(&run.config),
            serde_json::to_string(&meta).expect("meta serializes"),
            base[0] + read.history.len() as i64,
            base[1] + read.system.len() as i64,
            base[2] + read.console.len() as i64,
            stamp.size,
            stamp.mtime,
            stamp.files_mtime,
            read.offset as i64,
            read.checkpoint,
            now_s(),
        ];
        self.db(tx.query_row(
            "INSERT INTO runs (dir, wandb_file, run_id, entity, project, name, state, exit_code,
                start_time, runtime, tags, summary, config, meta, history_rows, system_rows,
                console_lines, file_size, file_mtime_ns, files_mtime_ns, resume_offset,
                checkpoint, indexed_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17,
                ?18, ?19, ?20, ?21, ?22, ?23)
             ON CONFLICT(dir) DO UPDATE SET wandb_file = excluded.wandb_file,
                run_id = excluded.run_id, entity = excluded.entity, project = excluded.project,
                name = excluded.name, state = excluded.state, exit_code = excluded.exit_code,
                start_time = excluded.start_time, runtime = excluded.runtime,
                tags = excluded.tags, summary = excluded.summary, config = excluded.config,
                meta = excluded.meta, history_rows = excluded.history_rows,
                system_rows = excluded.system_rows, console_lines = excluded.console_lines,
                file_size = excluded.file_size, file_mtime_ns = excluded.file_mtime_ns,
                files_mtime_ns = excluded.files_mtime_ns, resume_offset = excluded.resume_offset,
                checkpoint = excluded.checkpoint, indexed_at = excluded.indexed_at
             RETURNING rid",
            values,
            |r| r.get(0),
        ))
    }

    /// Inserts the new history rows, system samples (a row each, one cell per
    /// flattened key) and console lines, numbered on from `base`, and adds
    /// their cells to the per-key counts.
    fn insert_rows(
        &self,
        tx: &rusqlite::Transaction<'_>,
        rid: i64,
        base: [i64; 3],
        read: &Read,
    ) -> Result<()> {
        let mut w = CellWriter::new(self, tx, rid)?;
        for (i, row) in read.history.iter().enumerate() {
            let seq = base[0] + i as i64;
            w.row(
                Series::History,
                seq,
                Some(row.step),
                row.runtime,
                row.timestamp,
            )?;
            let cells: Vec<(String, &Value)> = row
                .flat()
                .into_iter()
                .filter(|(k, _)| !matches!(k.as_str(), "_step" | "_runtime" | "_timestamp"))
                .collect();
            w.cells(Series::History, seq, cells)?;
        }
        for (i, s) in read.system.iter().enumerate() {
            let seq = base[1] + i as i64;
            w.row(Series::System, seq, Some(seq), None, s.timestamp)?;
            let mut cells = Vec::new();
            for (k, v) in &s.values {
                flatten(k.clone(), v, &mut cells);
            }
            w.cells(Series::System, seq, cells)?;
        }
        let mut con_ins = self.db(tx.prepare_cached(
            "INSERT INTO console (rid, seq, stderr, ts, text) VALUES (?1, ?2, ?3, ?4, ?5)",
        ))?;
        for (i, l) in read.console.iter().enumerate() {
            let stderr = l.stream == super::Stream::Stderr;
            self.db(con_ins.execute(params![
                rid,
                base[2] + i as i64,
                stderr,
                l.timestamp,
                l.text
            ]))?;
        }
        w.count_keys()
    }

    /// Resolves a run id (or run directory) to the index's row id. Several
    /// directories with one run id (a resumed run): the latest start wins.
    pub fn resolve(&self, key: &str) -> Result<i64> {
        let conn = self.conn();
        let abs = std::path::absolute(key)
            .map(|p| p.display().to_string())
            .unwrap_or_else(|_| key.to_string());
        self.db(conn
            .query_row(
                "SELECT rid FROM runs WHERE run_id = ?1 OR dir = ?1 OR dir = ?2
                 ORDER BY dir = ?1 OR dir = ?2 DESC, start_time DESC, rid DESC LIMIT 1",
                params![key, abs],
                |r| r.get(0),
            )
            .optional())?
            .ok_or_else(|| IndexError::NotFound(key.to_string()))
    }

    fn keys_of(&self, conn: &Connection, rid: i64, series: Series) -> Result<Vec<String>> {
        let mut st = self.db(conn.prepare_cached(
            "SELECT k.name FROM run_keys rk JOIN keys k ON k.kid = rk.kid
             WHERE rk.rid = ?1 AND rk.series = ?2 ORDER BY k.name",
        ))?;
        let names = self.db(st
            .query_map(params![rid, series as u8], |r| r.get::<_, String>(0))
            .and_then(|it| it.collect::<rusqlite::Result<Vec<_>>>()))?;
        Ok(names)
    }

    fn summary_row(r: &rusqlite::Row) -> rusqlite::Result<(i64, RunSummary)> {
        let tags: String = r.get(10)?;
        let summary: String = r.get(11)?;
        Ok((
            r.get(0)?,
            RunSummary {
                id: r.get(1)?,
                dir: r.get(2)?,
                entity: r.get(3)?,
                project: r.get(4)?,
                name: r.get(5)?,
                state: r.get(6)?,
                exit_code: r.get(7)?,
                start_time: r.get(8)?,
                runtime: r.get(9)?,
                tags: serde_json::from_str(&tags).unwrap_or_default(),
                summary: parse_obj(&summary),
                history_rows: r.get::<_, i64>(12)? as u64,
                system_rows: r.get::<_, i64>(13)? as u64,
                keys: Vec::new(),
                host: r.get::<_, Option<String>>(14)?.unwrap_or_default(),
                gpu: r.get::<_, Option<String>>(15)?.unwrap_or_default(),
                gpu_count: r.get::<_, Option<u32>>(16)?.unwrap_or(0),
                sync: Vec::new(),
            },
        ))
    }

    /// Runs in the index, newest first, optionally of one project and state.
    pub fn list(&self, project: Option<&str>, state: Option<&str>) -> Result<Vec<RunSummary>> {
        self.list_filtered(&ListFilter {
            project: project.map(str::to_string),
            state: state.map(str::to_string),
            ..ListFilter::default()
        })
    }

    /// Runs in the index that pass `f`, newest first.
    pub fn list_filtered(&self, f: &ListFilter) -> Result<Vec<RunSummary>> {
        let conn = self.conn();
        let tags = serde_json::to_string(&f.tags).unwrap_or_else(|_| "[]".into());
        let mut st = self.db(conn.prepare_cached(&format!(
            "SELECT {SUMMARY_COLS} FROM runs
             WHERE (?1 IS NULL OR project = ?1) AND (?2 IS NULL OR state = ?2)
               AND NOT EXISTS (SELECT 1 FROM json_each(?3) w
                               WHERE w.value NOT IN (SELECT value FROM json_each({TAGS})))
               AND (?4 IS NULL OR start_time >= ?4) AND (?5 IS NULL OR start_time < ?5)
               AND (?6 IS NULL OR {HOST} = ?6)
             ORDER BY start_time DESC, rid DESC"
        )))?;
        let rows = self.db(st
            .query_map(
                params![f.project, f.state, tags, f.since, f.until, f.host],
                Self::summary_row,
            )
            .and_then(|it| it.collect::<rusqlite::Result<Vec<_>>>()))?;
        let mut out = Vec::with_capacity(rows.len());
        for (rid, mut s) in rows {
            s.keys = self.user_keys(&conn, rid)?;
            out.push(s);
        }
        Ok(out)
    }

    fn user_keys(&self, conn: &Connection, rid: i64) -> Result<Vec<String>> {
        Ok(self
            .keys_of(conn, rid, Series::History)?
            .into_iter()
            .filter(|k| !k.starts_with('_'))
            .collect())
    }

    /// One run, by id or directory.
    pub fn get(&self, key: &str) -> Result<RunDetail> {
        let rid = self.resolve(key)?;
        let conn = self.conn();
        let (run, config, meta, console_lines) = self.db(conn.query_row(
            &format!("SELECT {SUMMARY_COLS}, config, meta, console_lines FROM runs WHERE rid = ?1"),
            [rid],
            |r| {
                let (_, s) = Self::summary_row(r)?;
                Ok((
                    s,
                    r.get::<_, String>(17)?,
                    r.get::<_, String>(18)?,
                    r.get::<_, i64>(19)?,
                ))
            },
        ))?;
        let mut run = run;
        run.keys = self.user_keys(&conn, rid)?;
        let system_keys = self
            .keys_of(&conn, rid, Series::System)?
            .into_iter()
            .map(|k| format!("system.{k}"))
            .collect();
        Ok(RunDetail {
            run,
            config: parse_obj(&config),
            meta: serde_json::from_str(&meta).unwrap_or_default(),
            system_keys,
            console_lines: console_lines as u64,
        })
    }

    /// Add and remove tags of a run (by id or directory), kept beside the
    /// run's own: a re-index keeps them. Only tags added here can be
    /// removed; the run's own come from its files. Returns the run's id and
    /// its tags now.
    pub fn tag(
        &self,
        key: &str,
        add: &[String],
        remove: &[String],
    ) -> Result<(String, Vec<String>)> {
        let rid = self.resolve(key)?;
        let mut conn = self.conn();
        let tx = self.db(conn.transaction())?;
        let (run_id, own): (String, String) = self.db(tx.query_row(
            "SELECT run_id, tags FROM runs WHERE rid = ?1",
            [rid],
            |r| Ok((r.get(0)?, r.get(1)?)),
        ))?;
        let own: Vec<String> = serde_json::from_str(&own).unwrap_or_default();
        if let Some(t) = remove.iter().find(|t| own.contains(t)) {
            return Err(IndexError::OwnTag {
                run: run_id,
                tag: t.clone(),
            });
        }
        for t in add {
            self.db(tx.execute(
                "INSERT OR IGNORE INTO local_tags (run_id, tag) VALUES (?1, ?2)",
                params![run_id, t],
            ))?;
        }
        for t in remove {
            self.db(tx.execute(
                "DELETE FROM local_tags WHERE run_id = ?1 AND tag = ?2",
                params![run_id, t],
            ))?;
        }
        let tags: String = self.db(tx.query_row(
            &format!("SELECT {TAGS} FROM runs WHERE rid = ?1"),
            [rid],
            |r| r.get(0),
        ))?;
        self.db(tx.commit())?;
        Ok((run_id, serde_json::from_str(&tags).unwrap_or_default()))
    }

    /// Columns of a run's history (or, for `system.`-prefixed keys, system
    /// samples; the two cannot be mixed). No keys: every user metric.
    ///
    /// A key with `*` (any run of characters, dots included) or `?` (one
    /// character) is a glob, replaced by the run's keys that match it, in
    /// order: `system.*` is every system metric, `train/*` every metric
    /// under `train/`. A glob that matches nothing stays as it is (an empty
    /// column the caller can report).
    pub fn history(&self, key: &str, keys: &[String]) -> Result<Table> {
        let rid = self.resolve(key)?;
        let conn = self.conn();
        let keys: Vec<String> = if keys.iter().any(|k| is_glob(k)) {
            let mut all: Vec<String> = self.user_keys(&conn, rid)?;
            all.extend(
                self.keys_of(&conn, rid, Series::System)?
                    .into_iter()
                    .map(|k| format!("system.{k}")),
            );
            let mut out: Vec<String> = Vec::new();
            for k in keys {
                if !is_glob(k) {
                    out.push(k.clone());
                    continue;
                }
                let hits: Vec<&String> = all.iter().filter(|a| glob_match(k, a)).collect();
                if hits.is_empty() {
                    out.push(k.clone());
                }
                for h in hits {
                    if !out.contains(h) {
                        out.push(h.clone());
                    }
                }
            }
            out
        } else {
            keys.to_vec()
        };
        let keys = &keys[..];
        let system = !keys.is_empty() && keys.iter().all(|k| k.starts_with("system."));
        let series = if system {
            Series::System
        } else {
            Series::History
        };
        let wanted: Vec<String> = if keys.is_empty() {
            self.user_keys(&conn, rid)?
        } else if system {
            keys.iter()
                .map(|k| k["system.".len()..].to_string())
                .collect()
        } else {
            keys.to_vec()
        };
        let mut table = Table::default();
        {
            let mut st = self.db(conn.prepare_cached(
                "SELECT step, runtime, ts FROM rows WHERE rid = ?1 AND series = ?2 ORDER BY seq",
            ))?;
            let mut rows = self.db(st.query(params![rid, series as u8]))?;
            while let Some(r) = self.db(rows.next())? {
                table
                    .steps
                    .push(self.db(r.get::<_, Option<i64>>(0))?.unwrap_or(0));
                table.runtime.push(self.db(r.get(1))?);
                table.timestamps.push(self.db(r.get(2))?);
            }
        }
        let n = table.steps.len();
        let mut st = self.db(conn.prepare_cached(
            "SELECT c.seq, c.num, c.json FROM cells c JOIN keys k ON k.kid = c.kid
             WHERE c.rid = ?1 AND c.series = ?2 AND k.name = ?3 ORDER BY c.seq",
        ))?;
        for k in wanted {
            let mut col: Vec<Option<Value>> = vec![None; n];
            let mut rows = self.db(st.query(params![rid, series as u8, k]))?;
            while let Some(r) = self.db(rows.next())? {
                let seq = self.db(r.get::<_, i64>(0))? as usize;
                let num: Option<f64> = self.db(r.get(1))?;
                let json: Option<String> = self.db(r.get(2))?;
                let v = match (num, json) {
                    (Some(x), _) if x.fract() == 0.0 && x.abs() < 9.0e15 => Value::Int(x as i64),
                    (Some(x), _) => Value::Float(x),
                    (None, Some(j)) => Value::parse(&j).unwrap_or(Value::String(j)),
                    (None, None) => Value::Null,
                };
                if let Some(slot) = col.get_mut(seq) {
                    *slot = Some(v);
                }
            }
            let name = if system { format!("system.{k}") } else { k };
            table.columns.push((name, col));
        }
        Ok(table)
    }

    /// A run's console lines from line `from` (stdout and stderr in order).
    pub fn console(&self, key: &str, from: u64, limit: u64) -> Result<Vec<(bool, String)>> {
        let rid = self.resolve(key)?;
        let conn = self.conn();
        let mut st = self.db(conn.prepare_cached(
            "SELECT stderr, text FROM console WHERE rid = ?1 AND seq >= ?2 ORDER BY seq LIMIT ?3",
        ))?;
        let lines = self.db(st
            .query_map(params![rid, from as i64, limit as i64], |r| {
                Ok((r.get(0)?, r.get(1)?))
            })
            .and_then(|it| it.collect::<rusqlite::Result<Vec<_>>>()))?;
        Ok(lines)
    }
}

/// A run's tags: the run's own (wandb's, in order), then those added here
/// (a macro, for `concat!`).
macro_rules! tags_sql {
    () => {
        "CASE WHEN EXISTS (SELECT 1 FROM local_tags l WHERE l.run_id = runs.run_id) \
         THEN (SELECT json_group_array(v) FROM ( \
             SELECT value AS v FROM json_each(runs.tags) \
             UNION ALL SELECT tag FROM local_tags l WHERE l.run_id = runs.run_id \
                 AND l.tag NOT IN (SELECT value FROM json_each(runs.tags)))) \
         ELSE runs.tags END"
    };
}
const TAGS: &str = tags_sql!();

const SUMMARY_COLS: &str = concat!(
    "rid, run_id, dir, entity, project, name, state, exit_code, start_time, runtime, ",
    tags_sql!(),
    ", summary, history_rows, system_rows, ",
    "COALESCE(NULLIF(json_extract(meta, '$.host'), ''), json_extract(meta, '$.environment.host')), ",
    "json_extract(meta, '$.environment.gpu_type'), json_extract(meta, '$.environment.gpu_count')"
);

/// Whether a metric key given to [`RunIndex::history`] is a glob.
fn is_glob(k: &str) -> bool {
    k.contains(['*', '?'])
}

/// Matches `name` against `pattern` (`*` any run of characters, `?` one).
pub fn glob_match(pattern: &str, name: &str) -> bool {
    let p: Vec<char> = pattern.chars().collect();
    let n: Vec<char> = name.chars().collect();
    let (mut pi, mut ni) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while ni < n.len() {
        match p.get(pi) {
            Some('*') => {
                star = Some((pi, ni));
                pi += 1;
            }
            Some(c) if *c == '?' || *c == n[ni] => {
                pi += 1;
                ni += 1;
            }
            _ => match star {
                Some((sp, sn)) => {
                    pi = sp + 1;
                    ni = sn + 1;
                    star = Some((sp, sn + 1));
                }
                None => return false,
            },
        }
    }
    p[pi..].iter().all(|c| *c == '*')
}

/// The host of a run, in SQL (the run record's, else the environment's).
const HOST: &str =
    "COALESCE(NULLIF(json_extract(meta, '$.host'), ''), json_extract(meta, '$.environment.host'))";
