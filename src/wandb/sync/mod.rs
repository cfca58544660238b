//! Syncing runs to a W&B server (a self-hosted wandb/local, or any server
//! speaking its API), the way `wandb sync` does it, but idempotent,
//! resumable and verified.
//!
//! For one run directory: read the `.wandb` file in windows (memory stays
//! flat in the run's length) → `UpsertBucket` with config, tags, name →
//! `RunResumeStatus` tells how many history, events and console lines the
//! server already holds → only the lines after those go out in `file_stream`
//! requests of at most a few MiB, the ledger recording each → the config
//! again if it changed → files (`CreateRunFiles`, then a PUT per file with
//! the returned headers and no credentials), only those whose BLAKE3 differs
//! from what the ledger says was uploaded → the final `file_stream` with the
//! summary, `uploaded`, `complete` and the exit code (1 when the run has no
//! exit record, as `wandb sync` does) → verification: the server's line
//! counts, summary, state and file list against the local run.
//!
//! Resumed runs (wandb's `resume=` fragments, one directory each) are merged
//! into one server run as `wandb sync` does: each directory's lines go after
//! those the server held when its first sync began (recorded in the ledger),
//! its steps shifted past the server's last one. Syncs of one server run
//! hold a per-run file lock, so they never interleave, in one process or
//! several. Artifacts are not synced; they are reported per run.
//!
//! Layers: `creds` (server URL and API key), `api` (the protocol, retries),
//! `lines` (what the wire content looks like), `ledger` (what was sent).
//! This module reads run directories and never writes into them.

pub mod api;
pub mod creds;
pub mod ledger;
pub mod lines;

use std::collections::{BTreeMap, HashMap};
use std::path::{Component, Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use futures_util::StreamExt;
use serde::Serialize;
use serde_json::json;

use self::api::{Api, RemoteRun, RunPath, UpsertFields};
use self::ledger::Ledger;
use super::{RunDir, RunReader, Value};
use crate::db::DbError;
use crate::progress::Progress;

pub use self::api::Retry;
pub use self::creds::{KeySource, Server};

/// Errors of the sync. Messages name the server, the run and what to do.
#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    /// No server URL anywhere.
    #[error("no wandb server given: pass --host URL, set WANDB_BASE_URL, or run `wandb login --host URL` (it writes base_url to ~/.config/wandb/settings)")]
    NoHost,
    /// The server URL is not an http(s) URL.
    #[error("{url:?} (from {from}) is not a server URL; give one like http://wandb.lab:8080 with --host")]
    BadHost {
        /// The value.
        url: String,
        /// Where it came from.
        from: String,
    },
    /// No API key for the server.
    #[error("no API key for {host}: {hint}")]
    NoKey {
        /// The server's host:port.
        host: String,
        /// What to do.
        hint: String,
    },
    /// A wandb settings file or netrc could not be read.
    #[error("cannot read {path}: {source}")]
    ReadConfig {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The netrc holding the key is readable by others.
    #[error("{path} holds the API key but is readable by others (mode {mode:o}); run `chmod 600 {path}`")]
    NetrcTooOpen {
        /// The file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// The HTTP client could not be built.
    #[error("HTTP client: {0}")]
    Client(String),
    /// The server could not be reached (after retries).
    #[error("cannot reach the wandb server {host} ({what}): {error}")]
    Unreachable {
        /// host:port.
        host: String,
        /// The request.
        what: String,
        /// The transport error.
        error: String,
    },
    /// 401/403 from the server.
    #[error("the API key for {host} was rejected (from {source_of_key}): HTTP {status} {message}; check the key with `wandb login --host http://{host} --relogin`")]
    KeyRejected {
        /// host:port.
        host: String,
        /// Where the key came from.
        source_of_key: String,
        /// The status.
        status: u16,
        /// The server's message.
        message: String,
    },
    /// 409: the run id was used by a run deleted since.
    #[error("{host}: {message}")]
    PreviouslyDeleted {
        /// host:port.
        host: String,
        /// The server's message.
        message: String,
    },
    /// Another directory was already synced to the same run.
    #[error("run {path} on {host} was already synced from {other}, and {dir} is not a resumed fragment of it (its run record has no resume flag), so its rows would repeat the run's (a copy of the run?). Sync it as its own run with `trainyard sync wandb {dir} --id NEWID`")]
    SyncedFromElsewhere {
        /// host:port.
        host: String,
        /// project/id.
        path: String,
        /// The directory synced before.
        other: PathBuf,
        /// This directory.
        dir: PathBuf,
    },
    /// The same, with the run and the way out.
    #[error("{host} refuses run {path}: it was created there before and deleted, and a deleted run's id cannot be used again. Sync it as a new run with `trainyard sync wandb {dir} --id NEWID` (for example --id {suggestion}), or leave it")]
    DeletedRun {
        /// host:port.
        host: String,
        /// entity/project/id.
        path: String,
        /// The run directory.
        dir: PathBuf,
        /// A fresh id to offer.
        suggestion: String,
    },
    /// Another error status from the server (after retries for 5xx).
    #[error("wandb server {host} answered {what} with HTTP {status}: {message}")]
    Server {
        /// host:port.
        host: String,
        /// The request.
        what: String,
        /// The status.
        status: u16,
        /// The server's message.
        message: String,
    },
    /// A GraphQL error.
    #[error("wandb server {host} refused {op}: {message}")]
    GraphQl {
        /// host:port.
        host: String,
        /// The operation.
        op: String,
        /// The errors' messages.
        message: String,
    },
    /// An answer this client cannot use.
    #[error("wandb server {host} gave an unusable answer to {what}: {error}")]
    BadAnswer {
        /// host:port.
        host: String,
        /// The request.
        what: String,
        /// What was wrong.
        error: String,
    },
    /// An upload URL's host could not be reached.
    #[error("cannot upload {file}: the upload URL the server handed out points at {url_host}, which is unreachable from here ({error}). wandb/local builds upload URLs from its HOST setting; start it with HOST set to an address this machine can reach (e.g. -e HOST=http://{base_host})")]
    UploadUnreachable {
        /// The file.
        file: String,
        /// The upload URL's host.
        url_host: String,
        /// The server's host.
        base_host: String,
        /// The transport error.
        error: String,
    },
    /// An upload was refused.
    #[error("upload of {file} to {url_host} refused: HTTP {status} {message}{}", if url_host != base_host { format!(" (the URL's host differs from the server's, {base_host}: check wandb/local's HOST setting)") } else { String::new() })]
    UploadRefused {
        /// The file.
        file: String,
        /// The upload URL's host.
        url_host: String,
        /// The server's host.
        base_host: String,
        /// The status.
        status: u16,
        /// The storage's message.
        message: String,
    },
    /// The run could not be read.
    #[error(transparent)]
    Read(#[from] super::Error),
    /// The run file has no run record (so no id).
    #[error("{file} holds no run record, so the run has no id; nothing to sync")]
    NoRunRecord {
        /// The `.wandb` file.
        file: PathBuf,
    },
    /// A file of the run could not be read.
    #[error("cannot read {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The ledger failed.
    #[error(transparent)]
    Db(#[from] DbError),
    /// `--delete` of a run this machine never synced, without a place to look.
    #[error("{dir} was never synced to {host} from this machine; pass --entity and --project to delete run {id} there anyway")]
    NotSynced {
        /// host:port.
        host: String,
        /// The run directory.
        dir: PathBuf,
        /// The run id.
        id: String,
    },
    /// `--delete` of a run the server does not have.
    #[error("{host} has no run {path}; nothing to delete (the ledger entry, if any, was cleared)")]
    NotOnServer {
        /// host:port.
        host: String,
        /// entity/project/id.
        path: String,
    },
}

/// How to sync.
#[derive(Debug, Clone)]
pub struct SyncOptions {
    /// Entity to sync into (default: the run's, else the server's default).
    pub entity: Option<String>,
    /// Project (default: the run's, else `uncategorized`).
    pub project: Option<String>,
    /// Sync under this run id instead of the run's own (one run only).
    pub id: Option<String>,
    /// Verify after syncing.
    pub verify: bool,
    /// Look at runs the ledger says are fully synced and unchanged.
    pub force: bool,
    /// Runs synced at once.
    pub jobs: usize,
    /// Uploads at once per run.
    pub uploads: usize,
    /// Bytes of the run file read per window.
    pub window: u64,
    /// Bytes of lines per `file_stream` request, at most (about).
    pub request_bytes: usize,
    /// A live sync of a running run (the watcher's `--live`): stream the
    /// lines the server lacks and stop there — no files, no final
    /// `complete` request, no verification; the ledger keeps the run
    /// incomplete, so the sync after it ends finishes it.
    pub live: bool,
}

impl Default for SyncOptions {
    fn default() -> Self {
        SyncOptions {
            entity: None,
            project: None,
            id: None,
            verify: true,
            force: false,
            jobs: 4,
            uploads: 8,
            window: 1 << 20,
            request_bytes: 4 << 20,
            live: false,
        }
    }
}

/// What a sync did with one run (`RunReport::outcome`, and the `run`
/// event of the daemon API).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SyncOutcome {
    /// Lines, files or the final state were sent (and verified unless
    /// verification was off).
    Synced,
    /// The ledger says the run was synced and has not changed: nothing sent.
    Unchanged,
    /// Only compared with the server's copy (`--verify`); nothing sent.
    Verified,
    /// The sync stopped with an error (`RunReport::error`).
    Failed,
}

/// What happened to one run.
#[derive(Debug, Clone, Serialize)]
pub struct RunReport {
    /// The run directory.
    pub dir: PathBuf,
    /// entity/project/id on the server, once known.
    pub path: Option<String>,
    /// What the sync did.
    pub outcome: SyncOutcome,
    /// History lines sent now.
    pub history_sent: u64,
    /// System-metric lines sent now.
    pub events_sent: u64,
    /// Console lines sent now.
    pub log_sent: u64,
    /// Files uploaded now.
    pub files_uploaded: u64,
    /// Files named by the run but missing on disk (skipped, as wandb does).
    pub files_missing: Vec<String>,
    /// The exit code sent.
    pub exit_code: Option<i64>,
    /// Artifacts the run logged that were not synced (`name (type)`);
    /// each is also a mismatch, so the run does not count as fully synced.
    pub artifacts_not_synced: Vec<String>,
    /// Differences the verification found.
    pub mismatches: Vec<String>,
    /// Reader notes (damage stepped over, an incomplete tail).
    pub notes: Vec<String>,
    /// Why it failed.
    pub error: Option<String>,
}

impl RunReport {
    fn new(dir: &Path) -> RunReport {
        RunReport {
            dir: dir.to_path_buf(),
            path: None,
            outcome: SyncOutcome::Failed,
            history_sent: 0,
            events_sent: 0,
            log_sent: 0,
            files_uploaded: 0,
            files_missing: Vec::new(),
            exit_code: None,
            artifacts_not_synced: Vec::new(),
            mismatches: Vec::new(),
            notes: Vec::new(),
            error: None,
        }
    }
}

/// What a sync of several runs did.
#[derive(Debug, Clone, Serialize)]
pub struct SyncReport {
    /// The server.
    pub server: String,
    /// One per run, in the order given.
    pub runs: Vec<RunReport>,
    /// HTTP requests made.
    pub requests: u64,
}

impl SyncReport {
    /// Runs that failed or did not verify.
    pub fn failures(&self) -> impl Iterator<Item = &RunReport> {
        self.runs
            .iter()
            .filter(|r| r.error.is_some() || !r.mismatches.is_empty())
    }
}

/// Syncs runs to one server, recording what was sent in a ledger.
pub struct Syncer {
    api: Api,
    ledger: Arc<Ledger>,
    opts: SyncOptions,
    requests: Arc<AtomicU64>,
}

/// The local side of a run, as the verification compares it.
#[derive(Debug, Default)]
struct Local {
    /// Lines of earlier fragments before this directory's, per stream.
    base: [u64; 3],
    /// A later fragment of the run was synced after this one: the summary,
    /// state and files on the server are that fragment's.
    superseded: bool,
    history: u64,
    events: u64,
    log: u64,
    summary: String,
    exit_code: i64,
    files: Vec<LocalFile>,
}

#[derive(Debug)]
struct LocalFile {
    name: String,
    bytes: bytes::Bytes,
    blake3: String,
}

/// Lines waiting to go out, per stream, starting at the server's count.
#[derive(Default)]
struct Pending {
    /// Lines of earlier fragments of the run, per stream: this directory's
    /// line `i` is the server's line `base + i`.
    base: [u64; 3],
    /// Lines of this directory the server holds, per stream (history, events, log).
    have: [u64; 3],
    /// Local lines seen, per stream.
    seen: [u64; 3],
    lines: [Vec<String>; 3],
    bytes: usize,
    /// Lines sent by this sync, per stream.
    sent: [u64; 3],
}

const STREAMS: [&str; 3] = [lines::HISTORY, lines::EVENTS, lines::OUTPUT];

impl Pending {
    fn push(&mut self, stream: usize, line: String) {
        let i = self.seen[stream];
        self.seen[stream] += 1;
        if i >= self.have[stream] + self.lines[stream].len() as u64 {
            self.bytes += line.len() + 16;
            self.lines[stream].push(line);
        }
    }

    fn is_empty(&self) -> bool {
        self.lines.iter().all(Vec::is_empty)
    }

    /// The request body for pending lines, about `max_bytes` of them at
    /// most (at least one line), taking them out.
    fn take_body(&mut self, max_bytes: usize) -> (serde_json::Value, [u64; 3]) {
        let mut files = serde_json::Map::new();
        let mut n = [0u64; 3];
        let mut budget = max_bytes.max(1);
        for (s, name) in STREAMS.iter().enumerate() {
            let mut take = 0;
            let mut size = 0;
            for l in &self.lines[s] {
                let b = l.len() + 16;
                if budget == 0 || (take > 0 && b > budget) {
                    break;
                }
                take += 1;
                size += b;
                budget = budget.saturating_sub(b);
            }
            if take == 0 {
                continue;
            }
            let content: Vec<String> = self.lines[s].drain(..take).collect();
            self.bytes -= size;
            n[s] = take as u64;
            files.insert(
                (*name).to_string(),
                json!({"offset": self.base[s] + self.have[s], "content": content}),
            );
        }
        (json!({ "files": files }), n)
    }
}

/// One window's worth of rows, as wire lines.
struct Window {
    history: Vec<String>,
    events: Vec<String>,
    log: Vec<String>,
    log_text: Vec<super::ConsoleLine>,
    eof: bool,
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    tokio::task::spawn_blocking(f)
        .await
        .expect("a blocking sync task panicked")
}

/// Reads on until the run record names the run, keeping the rows in the
/// reader (they become lines once the step shift is known).
async fn read_until_named(
    mut reader: RunReader,
    window: u64,
) -> Result<(RunReader, bool), SyncError> {
    blocking(move || {
        let mut eof = false;
        while !eof && reader.run().id.is_empty() {
            eof = reader.read_some(Some(window))?.1;
        }
        Ok((reader, eof))
    })
    .await
}

/// Reads on until the reader holds a history row (or the file ends),
/// keeping the rows.
async fn read_until_history(
    mut reader: RunReader,
    window: u64,
    mut eof: bool,
) -> Result<(RunReader, bool), SyncError> {
    blocking(move || {
        while !eof && reader.run().history.is_empty() {
            eof = reader.read_some(Some(window))?.1;
        }
        Ok((reader, eof))
    })
    .await
}

/// Reads one window and turns its rows into wire lines.
fn next_window(
    reader: &mut RunReader,
    window: u64,
    keep_text: bool,
    shift: i64,
) -> Result<Window, SyncError> {
    let (_, eof) = reader.read_some(Some(window))?;
    Ok(take_window(reader, keep_text, shift, eof))
}

/// The rows the reader holds, as wire lines.
fn take_window(reader: &mut RunReader, keep_text: bool, shift: i64, eof: bool) -> Window {
    let start = reader.run().start_time;
    let (h, s, c) = reader.take_rows();
    Window {
        history: h.iter().map(|r| lines::history_line(r, shift)).collect(),
        events: s.iter().map(|x| lines::events_line(x, start)).collect(),
        log: c.iter().map(lines::console_line).collect(),
        log_text: if keep_text { c } else { Vec::new() },
        eof,
    }
}

/// Reads the rest of the file on a blocking thread, window by window, into
/// a channel of two (the rows the reader already holds first); the thread
/// ends at the end of the file, on an error (returned by the handle, with
/// the reader otherwise), or when the receiver is dropped.
fn spawn_reader(
    mut reader: RunReader,
    window: u64,
    keep_text: bool,
    shift: i64,
    eof: bool,
) -> (
    tokio::sync::mpsc::Receiver<Window>,
    tokio::task::JoinHandle<Result<RunReader, SyncError>>,
) {
    let (tx, rx) = tokio::sync::mpsc::channel(2);
    let done = tokio::task::spawn_blocking(move || {
        let first = take_window(&mut reader, keep_text, shift, eof);
        if tx.blocking_send(first).is_err() || eof {
            return Ok(reader);
        }
        loop {
            let w = next_window(&mut reader, window, keep_text, shift)?;
            let eof = w.eof;
            if tx.blocking_send(w).is_err() || eof {
                break;
            }
        }
        Ok(reader)
    });
    (rx, done)
}

fn feed(w: Window, pending: &mut Pending, log_text: &mut Vec<super::ConsoleLine>) {
    for l in w.history {
        pending.push(0, l);
    }
    for l in w.events {
        pending.push(1, l);
    }
    for l in w.log {
        pending.push(2, l);
    }
    log_text.extend(w.log_text);
}

/// The run file's size and mtime and the files under `files/` (name, size,
/// mtime): what "unchanged since the last sync" compares.
fn fingerprint(rd: &RunDir) -> Result<String, SyncError> {
    use std::os::unix::fs::MetadataExt;
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| SyncError::Io { path, source }
    };
    let m = std::fs::metadata(&rd.wandb_file).map_err(io(&rd.wandb_file))?;
    let mut h = blake3::Hasher::new();
    h.update(format!("{}:{}:{}\n", m.len(), m.mtime(), m.mtime_nsec()).as_bytes());
    for f in rd.files()? {
        let p = rd.dir.join("files").join(&f.path);
        let (len, t, ns) = std::fs::metadata(&p)
            .map(|m| (m.len(), m.mtime(), m.mtime_nsec()))
            .unwrap_or((0, 0, 0));
        h.update(format!("{}\0{len}:{t}:{ns}\n", f.path).as_bytes());
    }
    Ok(h.finalize().to_hex()[..32].to_string())
}

/// The directories by the run they hold (the id at the end of a wandb run
/// directory's name, or `id` for all when given), each group in start-time
/// order (the `YYYYMMDD_HHMMSS` after `run-`), with their places in `dirs`.
fn run_groups(dirs: &[PathBuf], id: Option<&str>) -> Vec<Vec<(usize, PathBuf)>> {
    let name = |d: &Path| {
        d.file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default()
    };
    let mut groups: Vec<(String, Vec<(usize, PathBuf)>)> = Vec::new();
    for (i, d) in dirs.iter().enumerate() {
        let n = name(d);
        let key = match id {
            Some(id) => id.to_string(),
            None => n.rsplit('-').next().unwrap_or_default().to_string(),
        };
        match groups.iter_mut().find(|(k, _)| *k == key) {
            Some((_, g)) => g.push((i, d.clone())),
            None => groups.push((key, vec![(i, d.clone())])),
        }
    }
    let when = |d: &Path| {
        let n = name(d);
        n.split_once("run-")
            .map(|(_, t)| t.to_string())
            .unwrap_or(n)
    };
    groups
        .into_iter()
        .map(|(_, mut g)| {
            g.sort_by_key(|(_, d)| when(d));
            g
        })
        .collect()
}

/// Adds the server's config keys that the local config lacks (a resumed
/// fragment keeps what earlier fragments set, as `wandb sync` does).
fn merge_server_config(local: &mut Value, server: Option<&str>) {
    let (Value::Object(mine), Some(Ok(Value::Object(theirs)))) = (local, server.map(Value::parse))
    else {
        return;
    };
    for (k, v) in theirs {
        mine.entry(k).or_insert(v);
    }
}

/// The first step of a fragment that resumes `remote`: one past the last
/// `_step` the server holds (its history tail, else its summary), as
/// wandb-core's resume computes it.
fn starting_step(remote: &RemoteRun) -> i64 {
    let last_step = |line: &str| {
        Value::parse(line)
            .ok()
            .and_then(|v| v.pointer(&["_step"]).and_then(Value::as_i64))
    };
    let from_tail = remote.history_tail.as_deref().and_then(|t| {
        let lines: Vec<String> = serde_json::from_str(t).ok()?;
        lines.last().and_then(|l| last_step(l))
    });
    let from_summary = remote.summary.as_deref().and_then(last_step);
    match from_tail.or(from_summary) {
        Some(s) => s + 1,
        None => i64::try_from(remote.history_lines).unwrap_or(0),
    }
}

/// A fresh 8-character run id, like wandb's.
pub fn new_run_id() -> String {
    const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
    let mut raw = [0u8; 8];
    let _ = getrandom::fill(&mut raw);
    raw.iter()
        .map(|b| ALPHABET[*b as usize % ALPHABET.len()] as char)
        .collect()
}

/// A path named by a FilesRecord, if it stays inside `files/`.
fn safe_rel(path: &str) -> Option<PathBuf> {
    let p = Path::new(path);
    if path.is_empty()
        || !p
            .components()
            .all(|c| matches!(c, Component::Normal(_) | Component::CurDir))
    {
        return None;
    }
    Some(p.to_path_buf())
}

impl Syncer {
    /// A syncer for `server`, recording in `ledger`.
    pub fn new(
        server: Server,
        ledger: Arc<Ledger>,
        opts: SyncOptions,
        retry: Retry,
    ) -> Result<Syncer, SyncError> {
        Ok(Syncer {
            api: Api::new(server, retry)?,
            ledger,
            opts,
            requests: Arc::new(AtomicU64::new(0)),
        })
    }

    /// The server's base URL.
    pub fn server_url(&self) -> &str {
        &self.api.server().base_url
    }

    fn host(&self) -> String {
        self.api.server().netloc()
    }

    /// Syncs run directories, `opts.jobs` at a time; one failing run does
    /// not stop the others. `progress` counts runs.
    pub async fn sync_dirs(&self, dirs: &[PathBuf], progress: &dyn Progress) -> SyncReport {
        self.for_each(dirs, progress, false).await
    }

    /// Verifies run directories against the server without sending anything.
    pub async fn verify_dirs(&self, dirs: &[PathBuf], progress: &dyn Progress) -> SyncReport {
        self.for_each(dirs, progress, true).await
    }

    async fn for_each(
        &self,
        dirs: &[PathBuf],
        progress: &dyn Progress,
        verify_only: bool,
    ) -> SyncReport {
        progress.phase(
            if verify_only {
                "verifying runs"
            } else {
                "syncing runs"
            },
            Some(dirs.len() as u64),
        );
        // Directories of one run (wandb's resumed fragments, named
        // `…-<id>`) go one after the other in start-time order, as `wandb
        // sync` does; different runs go `jobs` at a time.
        let groups = run_groups(dirs, self.opts.id.as_deref());
        let nested: Vec<Vec<(usize, RunReport)>> = futures_util::stream::iter(groups)
            .map(|group| async move {
                let mut out = Vec::with_capacity(group.len());
                for (i, d) in group {
                    let mut report = RunReport::new(&d);
                    let r = self.one(&d, &mut report, verify_only).await;
                    if let Err(e) = r {
                        tracing::warn!(dir = %d.display(), error = %e, "sync failed");
                        if !verify_only {
                            let _ =
                                self.ledger
                                    .failed(self.server_url(), &report.dir, &e.to_string());
                        }
                        report.outcome = SyncOutcome::Failed;
                        report.error = Some(e.to_string());
                    }
                    progress.inc(1);
                    out.push((i, report));
                }
                out
            })
            .buffer_unordered(self.opts.jobs.max(1))
            .collect()
            .await;
        let mut runs: Vec<(usize, RunReport)> = nested.into_iter().flatten().collect();
        progress.finish();
        runs.sort_by_key(|(i, _)| *i);
        SyncReport {
            server: self.server_url().to_string(),
            runs: runs.into_iter().map(|(_, r)| r).collect(),
            requests: self.requests.load(Ordering::Relaxed),
        }
    }

    fn count(&self, n: u64) {
        self.requests.fetch_add(n, Ordering::Relaxed);
    }

    /// Waits for, then holds, this machine's lock on the server run
    /// `path` (a file in `sync-locks/` beside the ledger, locked with
    /// `flock`; the kernel drops it when the holder dies). Every sync of a
    /// run directory holds the lock of the run it goes to from before it
    /// asks the ledger or the server what is there until it is done, so two
    /// syncs (in one process or several) never send rows of one run at once.
    async fn lock_run(&self, server: &str, path: &RunPath) -> Result<std::fs::File, SyncError> {
        let dir = self
            .ledger
            .path()
            .parent()
            .unwrap_or(Path::new("."))
            .join("sync-locks");
        let key = blake3::hash(format!("{server}\0{}\0{}", path.project, path.name).as_bytes());
        let file = dir.join(format!("{}.lock", &key.to_hex()[..32]));
        blocking(move || {
            let io = |source| SyncError::Io {
                path: file.clone(),
                source,
            };
            use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
            // private like the rest of the home: 0700, files 0600
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(&dir)
                .map_err(|source| SyncError::Io {
                    path: dir.clone(),
                    source,
                })?;
            let f = std::fs::OpenOptions::new()
                .create(true)
                .truncate(false)
                .write(true)
                .mode(0o600)
                .open(&file)
                .map_err(io)?;
            rustix::fs::flock(&f, rustix::fs::FlockOperation::LockExclusive)
                .map_err(|e| io(e.into()))?;
            Ok(f)
        })
        .await
    }

    async fn one(
        &self,
        dir: &Path,
        report: &mut RunReport,
        verify_only: bool,
    ) -> Result<(), SyncError> {
        let dir = std::fs::canonicalize(dir).map_err(|source| SyncError::Io {
            path: dir.to_path_buf(),
            source,
        })?;
        report.dir = dir.clone();
        let mut run = RunSync {
            syncer: self,
            server: self.server_url().to_string(),
            dir,
            verify_only,
            pending: Pending::default(),
            log_text: Vec::new(),
        };
        run.sync(report).await
    }

    async fn flush(
        &self,
        server: &str,
        dir: &Path,
        path: &RunPath,
        pending: &mut Pending,
    ) -> Result<(), SyncError> {
        let (body, n) = pending.take_body(self.opts.request_bytes);
        self.count(1);
        self.api.file_stream(path, &body).await?;
        for (s, k) in n.iter().enumerate() {
            pending.have[s] += k;
            pending.sent[s] += k;
        }
        let [h, e, l] = [0, 1, 2].map(|s| pending.base[s] + pending.have[s]);
        self.ledger.set_counts(server, dir, h, e, l)?;
        Ok(())
    }

    /// Uploads the files whose hash the ledger does not have; returns their names.
    async fn upload(
        &self,
        server: &str,
        dir: &Path,
        path: &RunPath,
        files: &[LocalFile],
    ) -> Result<Vec<String>, SyncError> {
        let known = self.ledger.files(server, dir)?;
        let todo: Vec<&LocalFile> = files
            .iter()
            .filter(|f| known.get(&f.name).is_none_or(|(h, _)| *h != f.blake3))
            .collect();
        if todo.is_empty() {
            return Ok(Vec::new());
        }
        let names: Vec<String> = todo.iter().map(|f| f.name.clone()).collect();
        self.count(1);
        let (urls, headers) = self.api.create_run_files(path, &names).await?;
        let by_name: HashMap<&str, &LocalFile> =
            todo.iter().map(|f| (f.name.as_str(), *f)).collect();
        let headers = &headers;
        let results: Vec<Result<Option<String>, SyncError>> = futures_util::stream::iter(urls)
            .map(|u| {
                let file = by_name.get(u.name.as_str()).copied();
                async move {
                    let (Some(url), Some(file)) = (u.url, file) else {
                        return Ok(None);
                    };
                    self.count(1);
                    self.api
                        .upload(&file.name, &url, headers, file.bytes.clone())
                        .await?;
                    self.ledger.file_done(
                        server,
                        dir,
                        &file.name,
                        &file.blake3,
                        file.bytes.len() as u64,
                    )?;
                    Ok(Some(file.name.clone()))
                }
            })
            .buffer_unordered(self.opts.uploads.max(1))
            .collect()
            .await;
        let mut done = Vec::new();
        for r in results {
            if let Some(n) = r? {
                done.push(n);
            }
        }
        done.sort();
        Ok(done)
    }

    /// Deletes the run of `dir` on the server and forgets it in the ledger.
    /// Without a ledger entry, `opts.entity`/`opts.project` say where it is.
    pub async fn delete(&self, dir: &Path) -> Result<String, SyncError> {
        let dir = std::fs::canonicalize(dir).map_err(|source| SyncError::Io {
            path: dir.to_path_buf(),
            source,
        })?;
        let server = self.server_url().to_string();
        let path = match self.ledger.get(&server, &dir)? {
            Some(e) => e.path(),
            None => {
                let d = dir.clone();
                let run = blocking(move || -> Result<_, SyncError> {
                    let rd = RunDir::open(&d)?;
                    let mut reader = rd.reader();
                    while reader.run().id.is_empty() {
                        let (_, eof) = reader.read_some(Some(1 << 20))?;
                        if eof {
                            break;
                        }
                    }
                    Ok(reader.into_run())
                })
                .await?;
                let id = self.opts.id.clone().unwrap_or(run.id.clone());
                let entity = self.opts.entity.clone().ok_or(SyncError::NotSynced {
                    host: self.host(),
                    dir: dir.clone(),
                    id: id.clone(),
                })?;
                RunPath {
                    entity,
                    project: self.opts.project.clone().unwrap_or(run.project),
                    name: id,
                }
            }
        };
        self.count(1);
        let Some(remote) = self.api.run_state(&path).await? else {
            self.ledger.remove(&server, &dir)?;
            return Err(SyncError::NotOnServer {
                host: self.host(),
                path: path.to_string(),
            });
        };
        self.count(1);
        self.api.delete_run(&remote.id).await?;
        self.ledger.remove(&server, &dir)?;
        Ok(path.to_string())
    }
}
/// Where one directory's sync goes on the server, and what it started from.
struct Target {
    /// The server run.
    path: RunPath,
    /// The config the first upsert sent (`None` when only verifying).
    config_sent: Option<String>,
    /// The server's config before this sync (a resumed fragment keeps its
    /// keys).
    server_config: Option<String>,
    /// How far this fragment's steps move up.
    shift: i64,
}

/// The sync (or verification) of one run directory, step by step.
struct RunSync<'s> {
    syncer: &'s Syncer,
    server: String,
    /// The directory, canonical.
    dir: PathBuf,
    verify_only: bool,
    /// The lines not yet sent, and the counts per stream.
    pending: Pending,
    /// The console lines read, when the run has no `output.log` of its own
    /// (the file is then made from them).
    log_text: Vec<super::ConsoleLine>,
}

impl RunSync<'_> {
    /// Open → skip a run the ledger says is synced and unchanged → read until
    /// the run is named → lock the server run → begin (or find what to
    /// verify) → stream the lines → the local side → complete → verify.
    async fn sync(&mut self, report: &mut RunReport) -> Result<(), SyncError> {
        let (rd, fp) = open_run_dir(&self.dir).await?;
        let prior = self.syncer.ledger.get(&self.server, &self.dir)?;
        if !self.verify_only
            && !self.syncer.opts.force
            && still_synced(prior.as_ref(), self.syncer.opts.id.as_deref(), &fp, report)
        {
            return Ok(());
        }
        let has_output_log = rd.dir.join("files").join(lines::OUTPUT).is_file();
        let (reader, eof) = read_head(&rd, self.syncer.opts.window).await?;
        let wanted = self.wanted(reader.run());
        // One sync of a server run at a time, on this machine: the fragments
        // of a resumed run (and copies of a run) go one after the other, so
        // each sees what the one before left on the server.
        let _lock = self.syncer.lock_run(&self.server, &wanted).await?;
        let prior = self.syncer.ledger.get(&self.server, &self.dir)?;
        let target = if self.verify_only {
            self.verify_target(prior.as_ref(), wanted)?
        } else {
            self.begin(reader.run(), prior.as_ref(), wanted, report)
                .await?
        };
        report.path = Some(target.path.to_string());
        let run = self.stream(reader, eof, !has_output_log, &target).await?;
        report.notes = run.diagnostics.iter().map(ToString::to_string).collect();
        if let Some(off) = run.incomplete_tail {
            report
                .notes
                .push(format!("incomplete tail at offset {off}"));
        }
        if self.syncer.opts.live && !self.verify_only {
            report.outcome = SyncOutcome::Synced;
            return Ok(());
        }
        let mut local = self.local(&rd, &run, has_output_log, report).await?;
        if self.verify_only {
            report.outcome = SyncOutcome::Verified;
        } else {
            self.complete(&target, &run, &local, &fp, report).await?;
        }
        self.verify(&target.path, &run, &mut local, prior.is_some(), report)
            .await
    }

    /// The server run this directory goes to: the options' entity, project
    /// and id, else the run's own (project `uncategorized` when it has none).
    fn wanted(&self, run: &super::Run) -> RunPath {
        let opts = &self.syncer.opts;
        RunPath {
            entity: opts.entity.clone().unwrap_or_else(|| run.entity.clone()),
            project: opts
                .project
                .clone()
                .or_else(|| Some(run.project.clone()).filter(|p| !p.is_empty()))
                .unwrap_or_else(|| "uncategorized".into()),
            name: opts.id.clone().unwrap_or_else(|| run.id.clone()),
        }
    }

    /// What a verification compares with: the server run the ledger names
    /// (else `wanted`, when it names an entity), from the line base and
    /// step shift its sync recorded.
    fn verify_target(
        &mut self,
        prior: Option<&ledger::Entry>,
        wanted: RunPath,
    ) -> Result<Target, SyncError> {
        let path = match prior {
            Some(p) => p.path(),
            None if !wanted.entity.is_empty() => wanted,
            None => {
                return Err(SyncError::NotSynced {
                    host: self.syncer.host(),
                    dir: self.dir.clone(),
                    id: wanted.name,
                })
            }
        };
        if let Some(p) = prior {
            self.pending.base = p.base;
        }
        Ok(Target {
            path,
            config_sent: None,
            server_config: None,
            shift: prior.map_or(0, |p| p.step_offset),
        })
    }

    /// Begin a sync: refuse a run id that another directory synced (unless
    /// this is a resumed fragment), upsert the run (a resumed fragment's
    /// config merged into the server's), ask the server how many lines it
    /// holds, and record in the ledger where this directory's lines and
    /// steps start (from an earlier sync of it, else after what the server
    /// held).
    async fn begin(
        &mut self,
        run: &super::Run,
        prior: Option<&ledger::Entry>,
        wanted: RunPath,
        report: &mut RunReport,
    ) -> Result<Target, SyncError> {
        let syncer = self.syncer;
        let prior_same = prior.filter(|p| p.project == wanted.project && p.name == wanted.name);
        let others =
            syncer
                .ledger
                .others(&self.server, &wanted.project, &wanted.name, &self.dir)?;
        if let Some(other) = others.into_iter().next() {
            // wandb's resumed fragments are merged; anything else with
            // the same id would overlap the rows already there
            if !run.resume {
                return Err(SyncError::SyncedFromElsewhere {
                    host: syncer.host(),
                    path: format!("{}/{}", wanted.project, wanted.name),
                    other,
                    dir: self.dir.clone(),
                });
            }
        }
        // A resumed fragment continues the server's run: its config is
        // merged into the server's, its lines and steps go after the
        // server's, as `wandb sync` does.
        let before = if run.resume {
            syncer.count(1);
            syncer.api.resume_status(&wanted).await?
        } else {
            None
        };
        let server_config = before.as_ref().and_then(|b| b.config.clone());
        let mut config0 = lines::wandb_config(run);
        merge_server_config(&mut config0, server_config.as_deref());
        let config0 = config0.to_extended_json();
        let fields = UpsertFields {
            display_name: Some(run.display_name.clone()),
            notes: Some(run.notes.clone()),
            group: Some(run.group.clone()),
            job_type: Some(run.job_type.clone()),
            host: Some(run.host.clone()),
            program: Some(run.environment.program.clone()),
            // no tags: leave the server's alone (someone may have set
            // some there), as `wandb sync` does
            tags: Some(run.tags.clone()).filter(|t| !t.is_empty()),
            config: Some(config0.clone()),
            sweep: Some(run.sweep_id.clone()),
        };
        syncer.count(1);
        let bucket = syncer
            .api
            .upsert(&wanted, &fields)
            .await
            .map_err(|e| match e {
                SyncError::PreviouslyDeleted { host, .. } => SyncError::DeletedRun {
                    host,
                    path: wanted.to_string(),
                    dir: self.dir.clone(),
                    suggestion: new_run_id(),
                },
                e => e,
            })?;
        let path = bucket.path;
        report.path = Some(path.to_string());
        syncer.count(1);
        let remote = syncer.api.resume_status(&path).await?.unwrap_or_default();
        let (base, shift) = match (prior_same, &before) {
            (Some(p), _) => (p.base, p.step_offset),
            (None, Some(b)) => {
                // as wandb-core: the fragment's steps move up so that it
                // starts after the server's last step, never down (a
                // fragment that skips steps keeps its own)
                let first = run.history.first().map_or(0, |r| r.step);
                (
                    [b.history_lines, b.events_lines, b.log_lines],
                    (starting_step(b) - first).max(0),
                )
            }
            (None, None) => ([0; 3], 0),
        };
        syncer
            .ledger
            .begin(&self.server, &self.dir, &path, &bucket.id, base, shift)?;
        self.pending.base = base;
        self.pending.have = [
            remote.history_lines.saturating_sub(base[0]),
            remote.events_lines.saturating_sub(base[1]),
            remote.log_lines.saturating_sub(base[2]),
        ];
        Ok(Target {
            path,
            config_sent: Some(config0),
            server_config,
            shift,
        })
    }

    /// Stream the rows the server lacks. A blocking thread reads the
    /// windows, at most two ahead, while the requests for the ones before
    /// are in flight; a run that ended adds its console tail. Returns the
    /// run read to its end, its summary's `_step` shifted.
    async fn stream(
        &mut self,
        reader: RunReader,
        eof: bool,
        keep_text: bool,
        t: &Target,
    ) -> Result<super::Run, SyncError> {
        let request_bytes = self.syncer.opts.request_bytes;
        let (mut rx, done) = spawn_reader(reader, self.syncer.opts.window, keep_text, t.shift, eof);
        loop {
            if self.verify_only {
                self.pending.lines = Default::default();
                self.pending.bytes = 0;
            } else {
                while self.pending.bytes >= request_bytes {
                    self.syncer
                        .flush(&self.server, &self.dir, &t.path, &mut self.pending)
                        .await?;
                }
            }
            match rx.recv().await {
                Some(w) => feed(w, &mut self.pending, &mut self.log_text),
                None => break,
            }
        }
        let idle = done.await.expect("a blocking sync task panicked")?;
        let mut run = idle.into_run();
        if t.shift != 0 {
            if let Some(Value::Int(step)) = run.summary.get_mut("_step") {
                *step += t.shift;
            }
        }
        if run.exit_code.is_some() {
            let tails: Vec<_> = run.console_tail().cloned().collect();
            for line in tails {
                self.pending.push(2, lines::console_line(&line));
                self.log_text.push(line);
            }
        }
        while !self.verify_only && !self.pending.is_empty() {
            self.syncer
                .flush(&self.server, &self.dir, &t.path, &mut self.pending)
                .await?;
        }
        self.pending.lines = Default::default();
        Ok(run)
    }

    /// The local side the verification compares: line counts, summary, exit
    /// code (1 without an exit record) and the files, collected on a
    /// blocking thread (those missing are reported).
    async fn local(
        &mut self,
        rd: &RunDir,
        run: &super::Run,
        has_output_log: bool,
        report: &mut RunReport,
    ) -> Result<Local, SyncError> {
        let files = {
            let rd = rd.clone();
            let run = run.clone();
            let console_lines = self.pending.seen[2];
            let log_text = std::mem::take(&mut self.log_text);
            let (files, missing) = blocking(move || {
                collect_files(&rd, &run, has_output_log, console_lines, &log_text)
            })
            .await?;
            report.files_missing = missing;
            files
        };
        let exit_code = i64::from(run.exit_code.unwrap_or(1));
        report.exit_code = Some(exit_code);
        Ok(Local {
            base: self.pending.base,
            superseded: false,
            history: self.pending.seen[0],
            events: self.pending.seen[1],
            log: self.pending.seen[2],
            summary: lines::summary_json(run),
            exit_code,
            files,
        })
    }

    /// Complete a sync: the config again if it changed, the files whose
    /// hash the ledger lacks, then the final request (summary, uploaded
    /// files, `complete`, exit code); only after its answer does the ledger
    /// mark the run complete.
    async fn complete(
        &self,
        t: &Target,
        run: &super::Run,
        local: &Local,
        fp: &str,
        report: &mut RunReport,
    ) -> Result<(), SyncError> {
        let syncer = self.syncer;
        let mut config = lines::wandb_config(run);
        if let Some(b) = &t.server_config {
            merge_server_config(&mut config, Some(b));
        }
        let config = config.to_extended_json();
        if t.config_sent.as_deref() != Some(config.as_str()) {
            syncer.count(1);
            let fields = UpsertFields {
                config: Some(config),
                ..UpsertFields::default()
            };
            syncer.api.upsert(&t.path, &fields).await?;
        }
        let uploaded = syncer
            .upload(&self.server, &self.dir, &t.path, &local.files)
            .await?;
        report.files_uploaded = uploaded.len() as u64;
        let n_uploaded = uploaded.len();
        let body = json!({
            "files": {lines::SUMMARY: {"offset": 0, "content": [local.summary]}},
            "uploaded": uploaded,
            "complete": true,
            "exitcode": local.exit_code,
        });
        syncer.count(1);
        syncer.api.file_stream(&t.path, &body).await?;
        syncer
            .ledger
            .complete(&self.server, &self.dir, local.exit_code, fp)?;
        let sent = self.pending.sent;
        tracing::info!(run = %t.path, host = %syncer.host(), history = sent[0],
            events = sent[1], console = sent[2], files = n_uploaded,
            exit_code = local.exit_code, "run synced");
        report.history_sent = sent[0];
        report.events_sent = sent[1];
        report.log_sent = sent[2];
        report.outcome = SyncOutcome::Synced;
        Ok(())
    }

    /// Artifacts are not synced (yet): say so, run by run, and let the
    /// verification (and so the exit status) count them as differences.
    /// With verification on (or only verifying), compare the server's run
    /// with the local side; record what was found in the ledger.
    async fn verify(
        &self,
        path: &RunPath,
        run: &super::Run,
        local: &mut Local,
        had_prior: bool,
        report: &mut RunReport,
    ) -> Result<(), SyncError> {
        let syncer = self.syncer;
        report.artifacts_not_synced = run
            .artifacts
            .iter()
            .map(|a| format!("{} ({})", a.name, a.kind))
            .collect();
        let left_out: Vec<String> = report
            .artifacts_not_synced
            .iter()
            .map(|a| format!("artifact {a} was not synced: trainyard does not sync artifacts yet"))
            .collect();
        if syncer.opts.verify || self.verify_only {
            let mine: u64 = local.base.iter().sum();
            local.superseded = syncer
                .ledger
                .fragments(&self.server, &path.project, &path.name)?
                .iter()
                .any(|e| {
                    e.dir != self.dir
                        && e.base.iter().sum::<u64>() > mine
                        && e.base.iter().zip(local.base).all(|(a, b)| *a >= b)
                });
            syncer.count(1);
            let state = syncer.api.run_state(path).await?;
            report.mismatches = compare(local, state.as_ref(), path);
        }
        report.mismatches.extend(left_out);
        let verified = syncer.opts.verify || self.verify_only || !report.mismatches.is_empty();
        if verified && (had_prior || !self.verify_only) {
            syncer
                .ledger
                .verified(&self.server, &self.dir, &report.mismatches)?;
        }
        Ok(())
    }
}

/// A run directory and its fingerprint, each found on a blocking thread.
async fn open_run_dir(dir: &Path) -> Result<(RunDir, String), SyncError> {
    let rd = {
        let d = dir.to_path_buf();
        blocking(move || RunDir::open(&d)).await?
    };
    let fp = {
        let rd = rd.clone();
        blocking(move || fingerprint(&rd)).await?
    };
    Ok((rd, fp))
}

/// Whether the ledger says `prior` is fully synced from this very content
/// (same fingerprint, and the same run id when one is forced): then nothing
/// is sent, and `report` says what the last sync and verification found.
fn still_synced(
    prior: Option<&ledger::Entry>,
    id: Option<&str>,
    fp: &str,
    report: &mut RunReport,
) -> bool {
    let Some(p) = prior else {
        return false;
    };
    let same_id = id.is_none_or(|id| id == p.name);
    if !(p.complete && p.fingerprint == fp && same_id) {
        return false;
    }
    report.outcome = SyncOutcome::Unchanged;
    report.path = Some(p.path().to_string());
    report.exit_code = p.exit_code;
    // what the last verification found still holds
    report.mismatches.clone_from(&p.mismatches);
    true
}

/// Reads until the run record names the run (a resumed fragment: until its
/// first history row too, which its step shift depends on), keeping the
/// rows in the reader. Returns it and whether the file ended.
async fn read_head(rd: &RunDir, window: u64) -> Result<(RunReader, bool), SyncError> {
    let (mut reader, mut eof) = read_until_named(rd.reader(), window).await?;
    if reader.run().resume {
        (reader, eof) = read_until_history(reader, window, eof).await?;
    }
    if reader.run().id.is_empty() {
        return Err(SyncError::NoRunRecord {
            file: rd.wandb_file.clone(),
        });
    }
    Ok((reader, eof))
}

/// The files a sync uploads: the generated ones, `output.log`, and those the
/// run's FilesRecords name (inside `files/`, symlinks followed, missing ones
/// skipped and returned).
fn collect_files(
    rd: &RunDir,
    run: &super::Run,
    has_output_log: bool,
    console_lines: u64,
    log_text: &[super::ConsoleLine],
) -> Result<(Vec<LocalFile>, Vec<String>), SyncError> {
    let root = rd.dir.join("files");
    let mut out: BTreeMap<String, bytes::Bytes> = BTreeMap::new();
    let mut missing = Vec::new();
    out.insert(lines::METADATA.into(), lines::metadata_json(run).into());
    out.insert(lines::CONFIG_YAML.into(), lines::config_yaml(run).into());
    out.insert(lines::SUMMARY.into(), lines::summary_json(run).into());
    let mut on_disk: Vec<String> = run.files.iter().map(|f| f.path.clone()).collect();
    // output.log goes up when the run printed something (wandb-core writes
    // it from the console records; without any it uploads none)
    if console_lines > 0 {
        if has_output_log {
            on_disk.push(lines::OUTPUT.into());
        } else {
            out.insert(lines::OUTPUT.into(), lines::output_log(log_text).into());
        }
    }
    for name in on_disk {
        if out.contains_key(&name) {
            continue;
        }
        let Some(rel) = safe_rel(&name) else {
            tracing::warn!(file = %name, "a FilesRecord names a path outside files/; skipped");
            missing.push(name);
            continue;
        };
        let p = root.join(rel);
        match std::fs::read(&p) {
            Ok(b) => {
                out.insert(name, b.into());
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                tracing::warn!(file = %p.display(), "named by the run but missing (or a broken symlink); skipped");
                missing.push(name);
            }
            Err(e) if e.kind() == std::io::ErrorKind::IsADirectory => missing.push(name),
            Err(source) => return Err(SyncError::Io { path: p, source }),
        }
    }
    let files = out
        .into_iter()
        .map(|(name, bytes)| LocalFile {
            blake3: blake3::hash(&bytes).to_hex().to_string(),
            name,
            bytes,
        })
        .collect();
    Ok((files, missing))
}

/// Compares the local run with the server's; one line per difference.
fn compare(local: &Local, remote: Option<&RemoteRun>, path: &RunPath) -> Vec<String> {
    use base64::Engine as _;
    use md5::Digest as _;
    let Some(r) = remote else {
        return vec![format!("the server has no run {path}")];
    };
    let mut out = Vec::new();
    for (what, server, here) in [
        ("history", r.history_lines, local.base[0] + local.history),
        (
            "system metrics",
            r.events_lines,
            local.base[1] + local.events,
        ),
        ("console", r.log_lines, local.base[2] + local.log),
    ] {
        let short = if local.superseded {
            server < here
        } else {
            server != here
        };
        if short {
            out.push(format!(
                "{what}: the server has {server} lines, the run {here}"
            ));
        }
    }
    if local.superseded {
        // the summary, state and files are the later fragment's
        return out;
    }
    let expected = if local.exit_code == 0 {
        "finished"
    } else {
        "failed"
    };
    match r.state.as_deref() {
        Some(s) if s == expected || (expected == "failed" && s == "crashed") => {}
        Some(s) => out.push(format!(
            "state: the server says {s}, expected {expected} (exit code {})",
            local.exit_code
        )),
        None => {}
    }
    match r.summary.as_deref().map(Value::parse) {
        Some(Ok(Value::Object(server))) => {
            let here = match Value::parse(&local.summary) {
                Ok(Value::Object(m)) => m,
                _ => BTreeMap::new(),
            };
            for (k, v) in &here {
                match server.get(k) {
                    None => out.push(format!("summary: `{k}` is missing on the server")),
                    Some(s) if !same_value(s, v) => out.push(format!(
                        "summary: `{k}` is {s} on the server, {v} in the run"
                    )),
                    _ => {}
                }
            }
        }
        Some(_) => out.push("summary: the server's summary is not a JSON object".into()),
        None => out.push("summary: the server has none".into()),
    }
    let remote_files: HashMap<&str, &api::RemoteFile> =
        r.files.iter().map(|f| (f.name.as_str(), f)).collect();
    for f in &local.files {
        match remote_files.get(f.name.as_str()) {
            None => out.push(format!("file `{}` is missing on the server", f.name)),
            Some(rf) => {
                let len = f.bytes.len() as u64;
                if rf.size.is_some_and(|s| s != len) {
                    out.push(format!(
                        "file `{}`: the server has {} bytes, the run {len}",
                        f.name,
                        rf.size.unwrap_or(0)
                    ));
                } else if let Some(m) = &rf.md5 {
                    let here = base64::engine::general_purpose::STANDARD
                        .encode(md5::Md5::digest(&f.bytes));
                    if *m != here {
                        out.push(format!("file `{}`: content differs (MD5)", f.name));
                    }
                }
            }
        }
    }
    out
}

/// Equal as wandb values: NaN equals NaN, 1 equals 1.0.
fn same_value(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Float(x), Value::Float(y)) => x == y || (x.is_nan() && y.is_nan()),
        (Value::Int(i), Value::Float(x)) | (Value::Float(x), Value::Int(i)) => *i as f64 == *x,
        (Value::Array(x), Value::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(a, b)| same_value(a, b))
        }
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len()
                && x.iter()
                    .all(|(k, v)| y.get(k).is_some_and(|w| same_value(v, w)))
        }
        _ => a == b,
    }
}

/// A run and where it stands on one server (or on none), for `sync status`.
#[derive(Debug, Clone, Serialize)]
pub struct StatusRow {
    /// The wandb run id.
    pub run_id: String,
    /// The run directory.
    pub dir: String,
    /// Project (on the server when synced, else the run's).
    pub project: String,
    /// The server's base URL; `None` when never synced.
    pub server: Option<String>,
    /// `not synced`, `partial`, `synced`, `changed` (the run changed since
    /// it was synced), `mismatch` (verification found differences), `failed`.
    pub state: String,
    /// History lines the server holds, as of the last sync.
    pub history_lines: Option<u64>,
    /// History rows of the run, as indexed.
    pub history_rows: u64,
    /// Files uploaded.
    pub files: Option<u64>,
    /// Last sync activity (Unix seconds).
    pub updated_at: Option<f64>,
    /// The last error or the mismatches.
    pub detail: String,
}

/// The state of a ledger entry, `changed` when the run moved on since.
fn entry_state(e: &ledger::Entry) -> (String, String) {
    let detail = if !e.error.is_empty() {
        e.error.clone()
    } else {
        e.mismatches.join("; ")
    };
    if e.state == "synced" && e.complete {
        let now = RunDir::open(&e.dir)
            .ok()
            .and_then(|rd| fingerprint(&rd).ok());
        if now.is_some_and(|fp| fp != e.fingerprint) {
            return (
                "changed".into(),
                "the run changed since it was synced".into(),
            );
        }
    }
    (e.state.clone(), detail)
}

/// Every indexed run with its sync state per server (runs never synced
/// once, with `server: None`), plus ledger entries of runs not indexed.
pub fn status(
    index: &super::index::RunIndex,
    ledger: &Ledger,
    host: Option<&str>,
) -> Result<Vec<StatusRow>, SyncError> {
    let host = host.map(|h| h.trim_end_matches('/'));
    let mut by_dir: HashMap<PathBuf, Vec<ledger::Entry>> = HashMap::new();
    for e in ledger.list()? {
        if host.is_none_or(|h| h == e.server) {
            by_dir.entry(e.dir.clone()).or_default().push(e);
        }
    }
    let runs = index
        .list(None, None)
        .map_err(|e| SyncError::Client(e.to_string()))?;
    let mut out = Vec::new();
    let row = |e: &ledger::Entry, run_id: &str, rows: u64| {
        let (state, detail) = entry_state(e);
        StatusRow {
            run_id: run_id.to_string(),
            dir: e.dir.display().to_string(),
            project: e.project.clone(),
            server: Some(e.server.clone()),
            state,
            history_lines: Some(e.history_lines),
            history_rows: rows,
            files: Some(e.files),
            updated_at: Some(e.updated_at),
            detail,
        }
    };
    for r in &runs {
        let dir = PathBuf::from(&r.dir);
        match by_dir.remove(&dir) {
            Some(entries) => {
                for e in &entries {
                    out.push(row(e, &r.id, r.history_rows));
                }
            }
            None => out.push(StatusRow {
                run_id: r.id.clone(),
                dir: r.dir.clone(),
                project: r.project.clone(),
                server: None,
                state: "not synced".into(),
                history_lines: None,
                history_rows: r.history_rows,
                files: None,
                updated_at: None,
                detail: String::new(),
            }),
        }
    }
    let mut rest: Vec<_> = by_dir.into_values().flatten().collect();
    rest.sort_by(|a, b| a.dir.cmp(&b.dir));
    for e in &rest {
        out.push(row(e, &e.name, 0));
    }
    Ok(out)
}

/// Sync states per run directory, for listings of the run index.
pub fn states(ledger: &Ledger) -> Result<HashMap<String, Vec<super::index::SyncState>>, SyncError> {
    let mut out: HashMap<String, Vec<super::index::SyncState>> = HashMap::new();
    for e in ledger.list()? {
        let (state, detail) = entry_state(&e);
        out.entry(e.dir.display().to_string())
            .or_default()
            .push(super::index::SyncState {
                server: e.server.clone(),
                state,
                detail,
            });
    }
    Ok(out)
}
