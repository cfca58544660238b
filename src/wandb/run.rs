//! Folding decoded records into a [`Run`]: identity, config, summary, history,
//! system metrics, console output and files, the way wandb-core rebuilds a
//! run when it syncs one.
//!
//! A [`Run`] carries all the state needed to apply more records, so a
//! [`RunReader`] (or a caller keeping a `Run` and a resume offset) can read a
//! growing file incrementally. This module reads run directories but never
//! writes to them.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::proto::{self, RecordType};
use super::record;
use super::record::{Diagnostic, DiagnosticKind};
use super::value::Value;
use super::wire;
use super::{read_range_bytes, Error, LogRecord, Result};

/// Where a run stands, as far as its `.wandb` file tells.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RunState {
    /// No exit record (yet). The writer may still be running; if it is known
    /// to be gone, the run was killed (see [`Run::assume_writer_gone`]).
    #[default]
    Running,
    /// Exit record with exit code 0.
    Finished,
    /// Exit record with a non-zero exit code (the script failed or raised).
    Crashed,
    /// No exit record and the writer is gone (SIGKILL, OOM, power loss).
    Killed,
}

/// Console stream of a line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Stream {
    /// Standard output.
    Stdout,
    /// Standard error.
    Stderr,
}

/// One line of console output.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ConsoleLine {
    /// Which stream it came from.
    pub stream: Stream,
    /// When its first fragment was written (Unix seconds).
    pub timestamp: Option<f64>,
    /// The text, without the line ending. A carriage return restarts the line,
    /// so a progress bar leaves only its final state.
    pub text: String,
}

/// One history row (`wandb.log` call).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HistoryRow {
    /// The step (`_step`).
    pub step: i64,
    /// Seconds since the run started (`_runtime`), if logged.
    pub runtime: Option<f64>,
    /// Unix time of the row (`_timestamp`), if logged.
    pub timestamp: Option<f64>,
    /// All values, `_step`/`_runtime`/`_timestamp` included. Nested keys
    /// (`{"grp": {"sub": 1}}` logged, or key path `["grp","sub"]`) are nested objects.
    pub values: Values,
}

/// A history row's values by top-level key, sorted by key. The keys are
/// shared (`Arc<str>`) by the rows of a run, which logs the same keys on
/// every step, so a row costs one allocation for its top level instead of a
/// `String` per key and a tree of nodes.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Values(Vec<(Arc<str>, Value)>);

impl Values {
    fn find(&self, key: &str) -> Result<usize, usize> {
        self.0.binary_search_by(|(k, _)| (**k).cmp(key))
    }

    /// The value of a top-level key.
    pub fn get(&self, key: &str) -> Option<&Value> {
        self.find(key).ok().map(|i| &self.0[i].1)
    }

    /// Whether the row has a top-level key.
    pub fn contains_key(&self, key: &str) -> bool {
        self.find(key).is_ok()
    }

    /// Keys and values, sorted by key.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &Value)> {
        self.0.iter().map(|(k, v)| (&**k, v))
    }

    /// The number of top-level keys.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether the row has no values.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The values as a map (an object [`Value`]'s contents).
    pub fn to_map(&self) -> BTreeMap<String, Value> {
        self.iter()
            .map(|(k, v)| (k.to_owned(), v.clone()))
            .collect()
    }
}

impl std::ops::Index<&str> for Values {
    type Output = Value;

    /// The value of `key`; panics if the row has none (as a map's index does).
    fn index(&self, key: &str) -> &Value {
        self.get(key)
            .unwrap_or_else(|| panic!("no history value `{key}` in this row"))
    }
}

impl From<BTreeMap<String, Value>> for Values {
    fn from(m: BTreeMap<String, Value>) -> Values {
        Values(m.into_iter().map(|(k, v)| (Arc::from(k), v)).collect())
    }
}

impl Serialize for Values {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.collect_map(self.iter())
    }
}

impl<'de> Deserialize<'de> for Values {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Values, D::Error> {
        BTreeMap::<String, Value>::deserialize(d).map(Values::from)
    }
}

impl HistoryRow {
    /// The value at a key path, e.g. `&["grp", "sub"]`.
    pub fn get<S: AsRef<str>>(&self, path: &[S]) -> Option<&Value> {
        let (first, rest) = path.split_first()?;
        self.values.get(first.as_ref())?.pointer(rest)
    }

    /// Leaf values with dotted keys (`grp.sub`), as the W&B UI names metrics.
    /// Objects with a `_type` key (media, tables) are leaves.
    pub fn flat(&self) -> Vec<(String, &Value)> {
        let mut out = Vec::new();
        for (k, v) in self.values.iter() {
            flatten(k.to_owned(), v, &mut out);
        }
        out
    }
}

pub(crate) fn flatten<'a>(prefix: String, v: &'a Value, out: &mut Vec<(String, &'a Value)>) {
    match v {
        Value::Object(m) if !m.is_empty() && !m.contains_key("_type") => {
            for (k, inner) in m {
                flatten(format!("{prefix}.{k}"), inner, out);
            }
        }
        _ => out.push((prefix, v)),
    }
}

/// One system-metrics sample (StatsRecord). The W&B UI shows the keys with
/// a `system.` prefix.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SystemSample {
    /// When it was sampled (Unix seconds).
    pub timestamp: Option<f64>,
    /// Seconds since the run's start, computed from the exact timestamps
    /// (what wandb-core sends as `_runtime`); `None` before a run record.
    #[serde(default)]
    pub runtime: Option<f64>,
    /// Metrics by bare key: `cpu`, `memory_percent`, `disk./.usagePercent`, …
    pub values: BTreeMap<String, Value>,
}

/// Upload policy of a file named in a FilesRecord.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FilePolicy {
    /// Upload now.
    Now,
    /// Upload at the end of the run.
    End,
    /// Upload whenever it changes.
    Live,
    /// A value this reader does not know.
    Other(i32),
}

/// Kind of a file named in a FilesRecord.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FileKind {
    /// A user file.
    Other,
    /// A file wandb itself writes (`requirements.txt`, …).
    Wandb,
    /// Media.
    Media,
    /// Artifact content.
    Artifact,
    /// A value this reader does not know.
    Unknown(i32),
}

/// A file the run asked to upload, relative to the run's `files/` directory.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RunFile {
    /// Path relative to `files/`, `/`-separated.
    pub path: String,
    /// When to upload it.
    pub policy: FilePolicy,
    /// What it is.
    pub kind: FileKind,
}

/// A file found under a run directory's `files/`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DirFile {
    /// Path relative to `files/`, `/`-separated.
    pub path: String,
    /// Size in bytes (of the target, for a symlink); `None` for a dangling symlink.
    pub size: Option<u64>,
    /// `wandb.save()` leaves symlinks to the original file.
    pub symlink: bool,
}

/// System metadata (EnvironmentRecords merged).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Environment {
    /// Operating system.
    pub os: String,
    /// Python version.
    pub python: String,
    /// Program (script) path.
    pub program: String,
    /// Command-line arguments.
    pub args: Vec<String>,
    /// Host name.
    pub host: String,
    /// User name.
    pub username: String,
    /// Python executable.
    pub executable: String,
    /// Physical CPU count.
    pub cpu_count: u32,
    /// Logical CPU count.
    pub cpu_count_logical: u32,
    /// GPU model.
    pub gpu_type: String,
    /// GPU count.
    pub gpu_count: u32,
    /// CUDA version.
    pub cuda_version: String,
    /// When the process started (Unix seconds).
    pub started_at: Option<f64>,
    /// Every EnvironmentRecord field, merged, in the protobuf-JSON form
    /// wandb-core uploads as `wandb-metadata.json` (`wandb::meta`).
    #[serde(default)]
    pub metadata: BTreeMap<String, Value>,
}

/// An artifact the run logged (an `ArtifactRecord`: `wandb.Table`,
/// `run.log_artifact`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ArtifactRef {
    /// Artifact name (`run-<id>-<key>` for a table).
    pub name: String,
    /// Artifact type (`run_table`, `model`, …).
    pub kind: String,
    /// Content digest.
    pub digest: String,
}

/// A run as read from its `.wandb` file.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct Run {
    /// Run id.
    pub id: String,
    /// Entity; empty when not given offline.
    pub entity: String,
    /// Project.
    pub project: String,
    /// Display name.
    pub display_name: String,
    /// Group.
    pub group: String,
    /// Job type.
    pub job_type: String,
    /// Notes.
    pub notes: String,
    /// Host name.
    pub host: String,
    /// Sweep id.
    pub sweep_id: String,
    /// Tags.
    pub tags: Vec<String>,
    /// Start time (Unix seconds).
    pub start_time: Option<f64>,
    /// The start time exactly (seconds, nanoseconds).
    #[serde(default)]
    pub start_exact: Option<(i64, i32)>,
    /// Config, with updates and removals applied; nested key paths become
    /// nested objects. Includes wandb's own `_wandb` key.
    pub config: BTreeMap<String, Value>,
    /// Summary, all updates and removals applied in order.
    pub summary: BTreeMap<String, Value>,
    /// State.
    pub state: RunState,
    /// Exit code from the exit record.
    pub exit_code: Option<i32>,
    /// Runtime in seconds: the largest of the exit record's, the last
    /// `_runtime` seen in history or summary, and a resumed run's earlier runtime.
    pub runtime: Option<f64>,
    /// History rows in file order.
    pub history: Vec<HistoryRow>,
    /// System-metrics samples in file order.
    pub system: Vec<SystemSample>,
    /// Complete console lines, stdout and stderr interleaved in file order.
    pub console: Vec<ConsoleLine>,
    /// Files the run named in FilesRecords (last entry per path wins).
    pub files: Vec<RunFile>,
    /// Files under `files/` on disk (filled by [`read_run_dir`] / [`RunDir`]).
    pub files_on_disk: Vec<DirFile>,
    /// System metadata.
    pub environment: Environment,
    /// The client that wrote the file (HeaderRecord producer).
    pub producer: String,
    /// The client's `wandb` version (telemetry).
    pub cli_version: String,
    /// The run is being preempted (a preempting record was seen).
    pub preempting: bool,
    /// The run was started with `resume=` (one fragment of a run that may
    /// have others, in other directories).
    pub resume: bool,
    /// Artifacts the run logged, in file order (one per record).
    pub artifacts: Vec<ArtifactRef>,
    /// Records seen, by type name (`history`, `summary`, …, `unknown`).
    pub record_counts: BTreeMap<String, u64>,
    /// Problems stepped over, in file order (an incomplete tail is reported
    /// in [`Run::incomplete_tail`] instead, since it changes as the file grows).
    pub diagnostics: Vec<Diagnostic>,
    /// Offset of an incomplete record at the end of the file at the last read.
    pub incomplete_tail: Option<u64>,
    /// Console text after the last line ending, per stream.
    #[serde(skip)]
    partial: [Option<ConsoleLine>; 2],
    /// A `\r` ended the last fragment of a stream (it may start a `\r\n`).
    #[serde(skip)]
    pending_cr: [bool; 2],
    /// The history keys seen, shared by the rows ([`Values`]).
    #[serde(skip)]
    keys: rustc_hash::FxHashSet<Arc<str>>,
}

/// A [`Run`]'s state without its rows, for resuming a read later in another
/// process ([`Run::checkpoint`]). Config and summary travel as extended JSON
/// so `NaN`/`Infinity` survive.
#[derive(Serialize, Deserialize)]
struct Checkpoint<R> {
    run: R,
    config: String,
    summary: String,
    partial: [Option<ConsoleLine>; 2],
    pending_cr: [bool; 2],
}

impl Run {
    /// Everything needed to go on applying records later, as JSON, except
    /// the rows ([`Run::history`], [`Run::system`], [`Run::console`]): the
    /// caller stores those itself and takes them out first (they would be
    /// written here otherwise).
    pub fn checkpoint(&self) -> String {
        let ext = |m: &BTreeMap<String, Value>| Value::Object(m.clone()).to_extended_json();
        serde_json::to_string(&Checkpoint {
            run: self,
            config: ext(&self.config),
            summary: ext(&self.summary),
            partial: self.partial.clone(),
            pending_cr: self.pending_cr,
        })
        .expect("a Run serializes to JSON")
    }

    /// The run saved by [`Run::checkpoint`] (without rows).
    pub fn from_checkpoint(json: &str) -> std::result::Result<Run, String> {
        let cp: Checkpoint<Run> = serde_json::from_str(json).map_err(|e| e.to_string())?;
        let obj = |text: &str| match Value::parse(text) {
            Ok(Value::Object(m)) => Ok(m),
            Ok(_) => Err("not an object".to_string()),
            Err(e) => Err(e.to_string()),
        };
        let mut run = cp.run;
        run.config = obj(&cp.config)?;
        run.summary = obj(&cp.summary)?;
        run.partial = cp.partial;
        run.pending_cr = cp.pending_cr;
        Ok(run)
    }

    /// Marks a run without an exit record as killed: call this when the
    /// writer is known to be gone (its process died, the file stopped
    /// growing long ago).
    pub fn assume_writer_gone(&mut self) {
        if self.state == RunState::Running {
            self.state = RunState::Killed;
        }
    }

    /// Console text not yet ended by a newline (a live run's last line, or
    /// the end of a progress bar), per stream.
    pub fn console_tail(&self) -> impl Iterator<Item = &ConsoleLine> {
        self.partial.iter().flatten()
    }

    /// Metric keys logged in history, dotted, sorted, without the `_`-prefixed
    /// internal ones.
    pub fn history_keys(&self) -> Vec<String> {
        let mut keys: Vec<String> = self
            .history
            .iter()
            .flat_map(|r| r.flat().into_iter().map(|(k, _)| k))
            .filter(|k| !k.starts_with('_'))
            .collect();
        keys.sort();
        keys.dedup();
        keys
    }

    /// Applies one record.
    pub fn apply(&mut self, rec: &LogRecord) {
        let Some(rt) = &rec.record.record_type else {
            self.count("unknown", 1);
            return;
        };
        self.count(rt.name(), 1);
        let offset = rec.offset;
        match rt {
            RecordType::Run(r) => self.apply_run(r, offset),
            RecordType::Config(c) => self.apply_config(c, offset),
            RecordType::Summary(s) => self.apply_summary(s, offset),
            RecordType::History(h) => self.apply_history(h, offset),
            RecordType::Stats(s) => self.apply_stats(s, offset),
            RecordType::OutputRaw(o) => self.apply_output(o.output_type, o.timestamp, &o.line),
            RecordType::Output(o) => self.apply_output(o.output_type, o.timestamp, &o.line),
            RecordType::Files(f) => self.apply_files(f),
            RecordType::Exit(e) => {
                self.exit_code = Some(e.exit_code);
                self.state = if e.exit_code == 0 {
                    RunState::Finished
                } else {
                    RunState::Crashed
                };
                self.bump_runtime(f64::from(e.runtime));
            }
            RecordType::Header(h) => {
                if let Some(v) = &h.version_info {
                    self.producer.clone_from(&v.producer);
                }
            }
            RecordType::Telemetry(t) => {
                if !t.cli_version.is_empty() {
                    self.cli_version.clone_from(&t.cli_version);
                }
            }
            RecordType::Environment(e) => self.apply_environment(e),
            RecordType::Artifact(a) => self.artifacts.push(ArtifactRef {
                name: a.name.clone(),
                kind: a.r#type.clone(),
                digest: a.digest.clone(),
            }),
            RecordType::Preempting(_) => self.preempting = true,
            RecordType::Final(_) | RecordType::Footer(_) | RecordType::OutputLogger(_) => {}
        }
    }

    fn count(&mut self, name: &'static str, n: u64) {
        match self.record_counts.get_mut(name) {
            Some(c) => *c += n,
            None => {
                self.record_counts.insert(name.to_owned(), n);
            }
        }
    }

    fn bump_runtime(&mut self, secs: f64) {
        if secs.is_finite() && self.runtime.is_none_or(|r| secs > r) {
            self.runtime = Some(secs);
        }
    }

    fn apply_run(&mut self, r: &proto::RunRecord, offset: u64) {
        let set = |dst: &mut String, src: &String| {
            if !src.is_empty() {
                dst.clone_from(src);
            }
        };
        set(&mut self.id, &r.run_id);
        set(&mut self.entity, &r.entity);
        set(&mut self.project, &r.project);
        set(&mut self.display_name, &r.display_name);
        set(&mut self.group, &r.run_group);
        set(&mut self.job_type, &r.job_type);
        set(&mut self.notes, &r.notes);
        set(&mut self.host, &r.host);
        set(&mut self.sweep_id, &r.sweep_id);
        self.resume |= r.resume;
        if !r.tags.is_empty() {
            self.tags.clone_from(&r.tags);
        }
        if let Some(t) = r.start_time {
            self.start_time = Some(t.as_secs_f64());
            self.start_exact = Some((t.seconds, t.nanos));
        }
        if r.runtime > 0 {
            self.bump_runtime(f64::from(r.runtime));
        }
        if let Some(c) = &r.config {
            self.apply_config(c, offset);
        }
        if let Some(s) = &r.summary {
            self.apply_summary(s, offset);
        }
    }

    fn apply_config(&mut self, c: &proto::ConfigRecord, offset: u64) {
        for item in &c.update {
            let path = key_path(&item.key, &item.nested_key);
            if let Some(v) = self.parse_value(&path, &item.value_json, offset) {
                set_path(&mut self.config, &path, v);
            }
        }
        for item in &c.remove {
            remove_path(&mut self.config, &key_path(&item.key, &item.nested_key));
        }
    }

    fn apply_summary(&mut self, s: &proto::SummaryRecord, offset: u64) {
        for item in &s.update {
            let path = key_path(&item.key, &item.nested_key);
            if let Some(v) = self.parse_value(&path, &item.value_json, offset) {
                if path == ["_runtime"] {
                    if let Some(x) = v.as_f64() {
                        self.bump_runtime(x);
                    }
                }
                set_path(&mut self.summary, &path, v);
            }
        }
        for item in &s.remove {
            remove_path(&mut self.summary, &key_path(&item.key, &item.nested_key));
        }
    }

    fn apply_history(&mut self, h: &proto::HistoryRecord, offset: u64) {
        use proto::HistoryValue as H;
        use wire::Typed as T;
        let mut cells = Vec::with_capacity(h.item.len());
        for item in &h.item {
            let path = if item.nested_key.is_empty() {
                std::slice::from_ref(&item.key)
            } else {
                item.nested_key.as_slice()
            };
            let typed = item.value.as_ref().map(|v| match v {
                H::None(_) => T::None,
                H::Boolean(b) => T::Bool(*b),
                H::Integer(i) => T::Int(*i),
                H::Number(x) => T::Float(*x),
                H::Text(t) => T::Text(t),
                H::Json(j) => T::Json(j),
            });
            self.history_item(&mut cells, path, &item.value_json, typed, offset);
        }
        self.push_history(cells, h.step.map(|s| s.num));
    }

    /// A history record read in place (see `wire.rs`): the same as
    /// [`Run::apply_history`] without the decoded copies.
    fn apply_history_wire(&mut self, s: &wire::Scratch<'_>, step: wire::Step, offset: u64) {
        let mut cells = Vec::with_capacity(s.items.len());
        for item in &s.items {
            let path = s.key_path(item);
            self.history_item(&mut cells, path, item.value_json, item.typed, offset);
        }
        self.push_history(cells, step);
    }

    /// Parses one history item (its `value_json`, or the typed value when
    /// only that was written) into a cell of the row being built.
    fn history_item<'p, S: AsRef<str>>(
        &mut self,
        cells: &mut Vec<Cell<'p, S>>,
        path: &'p [S],
        json: &str,
        typed: Option<wire::Typed<'_>>,
        offset: u64,
    ) {
        use wire::Typed as T;
        let v = match typed {
            Some(t) if json.is_empty() => match t {
                T::None => Some(Value::Null),
                T::Bool(b) => Some(Value::Bool(b)),
                T::Int(i) => Some(Value::Int(i)),
                T::Float(x) => Some(Value::Float(x)),
                T::Text(t) => Some(Value::String(t.to_owned())),
                T::Json(j) => self.parse_value(path, j, offset),
            },
            _ => self.parse_value(path, json, offset),
        };
        if let (Some(v), Some((top, rest))) = (v, path.split_first()) {
            let key = self.intern(top.as_ref());
            cells.push((key, rest, v));
        }
    }

    /// The shared copy of a history key.
    fn intern(&mut self, key: &str) -> Arc<str> {
        if let Some(k) = self.keys.get(key) {
            return k.clone();
        }
        if self.keys.len() >= MAX_SHARED_KEYS {
            // a file that never repeats its keys: stop sharing the old ones
            self.keys.clear();
        }
        let k: Arc<str> = Arc::from(key);
        self.keys.insert(k.clone());
        k
    }

    /// Makes a row of the cells of one history record, applied in file
    /// order per top-level key (as [`set_path`] would apply them one by one).
    fn push_history<S: AsRef<str>>(&mut self, mut cells: Vec<Cell<'_, S>>, step: Option<i64>) {
        // stable: the cells of one key stay in file order
        cells.sort_by(|a, b| a.0.cmp(&b.0));
        let mut top: Vec<(Arc<str>, Value)> = Vec::with_capacity(cells.len());
        for (key, rest, v) in cells {
            let slot = match top.last_mut() {
                Some((k, slot)) if *k == key => slot,
                _ => {
                    top.push((key, Value::Null));
                    &mut top.last_mut().expect("pushed just above").1
                }
            };
            if rest.is_empty() {
                *slot = v;
            } else {
                if !matches!(slot, Value::Object(_)) {
                    *slot = Value::Object(BTreeMap::new());
                }
                if let Value::Object(m) = slot {
                    set_path(m, rest, v);
                }
            }
        }
        let values = Values(top);
        let number = |k: &str| values.get(k).and_then(Value::as_f64);
        let runtime = number("_runtime");
        let timestamp = number("_timestamp");
        let step = values
            .get("_step")
            .and_then(Value::as_i64)
            .unwrap_or_else(|| step.unwrap_or(0));
        if let Some(r) = runtime {
            self.bump_runtime(r);
        }
        self.history.push(HistoryRow {
            step,
            runtime,
            timestamp,
            values,
        });
    }

    fn apply_stats(&mut self, s: &proto::StatsRecord, offset: u64) {
        let mut values = BTreeMap::new();
        for item in &s.item {
            let path = [item.key.clone()];
            if let Some(v) = self.parse_value(&path, &item.value_json, offset) {
                values.insert(item.key.clone(), v);
            }
        }
        self.push_sample(values, s.timestamp);
    }

    /// A stats record read in place (see `wire.rs`).
    fn apply_stats_wire(&mut self, s: &wire::Scratch<'_>, ts: Option<(i64, i32)>, offset: u64) {
        let mut values = BTreeMap::new();
        for item in &s.items {
            if let Some(v) = self.parse_value(&[item.key], item.value_json, offset) {
                values.insert(item.key.to_owned(), v);
            }
        }
        let ts = ts.map(|(seconds, nanos)| proto::Timestamp { seconds, nanos });
        self.push_sample(values, ts);
    }

    fn push_sample(&mut self, values: BTreeMap<String, Value>, ts: Option<proto::Timestamp>) {
        let runtime = match (ts, self.start_exact) {
            (Some(t), Some((secs, nanos))) => {
                Some((t.seconds - secs) as f64 + f64::from(t.nanos - nanos) / 1e9)
            }
            _ => None,
        };
        self.system.push(SystemSample {
            timestamp: ts.map(|t| t.as_secs_f64()),
            runtime,
            values,
        });
    }

    /// Applies the records in `bytes`, the content of a `.wandb` file from
    /// absolute offset `base` on (as [`super::read_bytes`] takes it);
    /// `at_eof` says whether they reach the file's end (else a record cut at
    /// the end is not an incomplete tail). Records are decoded and applied one
    /// at a time, history, summary and stats records in place (`wire.rs`).
    /// The result is what decoding with [`super::read_bytes`] and applying
    /// each record with [`Run::apply`] gives, except that of several summary
    /// updates of one key path only the last is parsed (see
    /// `DeferredSummary`). [`Update::offset`] is where to go on.
    pub(crate) fn apply_bytes(
        &mut self,
        bytes: &[u8],
        base: u64,
        at_eof: bool,
    ) -> std::result::Result<Update, record::HeaderError> {
        let framed = record::deframe(bytes, base)?;
        let before_rows = self.history.len();
        let mut update = Update {
            offset: framed.resume_offset,
            ..Update::default()
        };
        self.incomplete_tail = None;
        let mut found = Vec::new();
        let mut framing = framed.diagnostics.iter().peekable();
        let mut fold = Fold::default();
        for raw in &framed.records {
            // keep diagnostics in file order
            while let Some(d) = framing.next_if(|d| d.offset < raw.offset) {
                found.push(d.clone());
            }
            match self.apply_payload(&raw.payload, raw.offset, &mut fold) {
                Ok(()) => update.records += 1,
                Err(e) => found.push(Diagnostic {
                    offset: raw.offset,
                    kind: DiagnosticKind::UndecodableRecord {
                        error: e.to_string(),
                    },
                }),
            }
        }
        fold.finish(self);
        found.extend(framing.cloned());
        for d in found {
            if d.kind == DiagnosticKind::IncompleteTail {
                if at_eof {
                    self.incomplete_tail = Some(d.offset);
                }
                continue;
            }
            update.diagnostics.push(d.clone());
            self.diagnostics.push(d);
        }
        update.history_rows = self.history.len() - before_rows;
        Ok(update)
    }

    /// Applies one record payload (a serialized `Record`) as [`Run::apply`]
    /// would apply its decoded form. History, summary and stats records are
    /// read in place ([`wire`]); summary updates are deferred to `fold`
    /// (see [`Fold`]). Returns the decoder's error for a payload that is not
    /// a `Record`.
    fn apply_payload<'a>(
        &mut self,
        payload: &'a [u8],
        offset: u64,
        fold: &mut Fold<'a>,
    ) -> std::result::Result<(), prost::DecodeError> {
        use prost::Message as _;
        let scratch = &mut fold.scratch;
        let fast = match wire::peek(payload) {
            wire::Peek::History(m) => wire::decode_history(m, scratch).map(|step| {
                self.apply_history_wire(scratch, step, offset);
                "history"
            }),
            wire::Peek::Stats(m) => wire::decode_stats(m, scratch).map(|ts| {
                self.apply_stats_wire(scratch, ts, offset);
                "stats"
            }),
            wire::Peek::Summary(m) => wire::decode_summary(m, scratch).map(|()| {
                let scratch = &fold.scratch;
                for item in &scratch.items {
                    let path = scratch.key_path(item);
                    if path == ["_runtime"] {
                        // the runtime is the largest seen, not the last: not deferred
                        if let Some(x) = Value::parse(item.value_json).ok().and_then(|v| v.as_f64())
                        {
                            self.bump_runtime(x);
                        }
                    }
                    fold.summary.defer(path, item.value_json, offset);
                }
                if !scratch.removed.is_empty() {
                    fold.summary.apply(self);
                    for item in &scratch.removed {
                        remove_path(&mut self.summary, scratch.key_path(item));
                    }
                }
                "summary"
            }),
            wire::Peek::Unknown => Some("unknown"),
            wire::Peek::Other => None,
        };
        match fast {
            Some(name) => {
                self.count(name, 1);
                Ok(())
            }
            None => {
                let record = proto::Record::decode(payload)?;
                if matches!(
                    record.record_type,
                    Some(RecordType::Run(_) | RecordType::Summary(_))
                ) {
                    // they change the summary: apply what was deferred first
                    fold.summary.apply(self);
                }
                self.apply(&LogRecord { offset, record });
                Ok(())
            }
        }
    }

    fn apply_output(&mut self, output_type: i32, ts: Option<proto::Timestamp>, text: &str) {
        let stream = if output_type == 0 {
            Stream::Stderr
        } else {
            Stream::Stdout
        };
        let i = stream as usize;
        let timestamp = ts.map(|t| t.as_secs_f64());
        for c in text.chars() {
            if std::mem::take(&mut self.pending_cr[i]) && c != '\n' {
                // a lone carriage return: the line starts over
                if let Some(p) = self.partial[i].as_mut() {
                    p.text.clear();
                }
            }
            match c {
                '\n' => {
                    let line = self.partial[i].take().unwrap_or(ConsoleLine {
                        stream,
                        timestamp,
                        text: String::new(),
                    });
                    self.console.push(line);
                }
                '\r' => self.pending_cr[i] = true,
                c => self.partial[i]
                    .get_or_insert_with(|| ConsoleLine {
                        stream,
                        timestamp,
                        text: String::new(),
                    })
                    .text
                    .push(c),
            }
        }
    }

    fn apply_files(&mut self, f: &proto::FilesRecord) {
        for item in &f.files {
            let policy = match item.policy {
                0 => FilePolicy::Now,
                1 => FilePolicy::End,
                2 => FilePolicy::Live,
                n => FilePolicy::Other(n),
            };
            let kind = match item.r#type {
                0 => FileKind::Other,
                1 => FileKind::Wandb,
                2 => FileKind::Media,
                3 => FileKind::Artifact,
                n => FileKind::Unknown(n),
            };
            let entry = RunFile {
                path: item.path.clone(),
                policy,
                kind,
            };
            match self.files.iter_mut().find(|e| e.path == item.path) {
                Some(e) => *e = entry,
                None => self.files.push(entry),
            }
        }
    }

    fn apply_environment(&mut self, e: &proto::EnvironmentRecord) {
        let env = &mut self.environment;
        for (dst, src) in [
            (&mut env.os, &e.os),
            (&mut env.python, &e.python),
            (&mut env.program, &e.program),
            (&mut env.host, &e.host),
            (&mut env.username, &e.username),
            (&mut env.executable, &e.executable),
            (&mut env.gpu_type, &e.gpu_type),
            (&mut env.cuda_version, &e.cuda_version),
        ] {
            if !src.is_empty() {
                dst.clone_from(src);
            }
        }
        if !e.args.is_empty() {
            env.args.clone_from(&e.args);
        }
        for (dst, src) in [
            (&mut env.cpu_count, e.cpu_count),
            (&mut env.cpu_count_logical, e.cpu_count_logical),
            (&mut env.gpu_count, e.gpu_count),
        ] {
            if src != 0 {
                *dst = src;
            }
        }
        if let Some(t) = e.started_at {
            env.started_at = Some(t.as_secs_f64());
        }
        super::meta::merge(&mut env.metadata, super::meta::environment_json(e));
    }

    fn parse_value<S: AsRef<str>>(&mut self, path: &[S], json: &str, offset: u64) -> Option<Value> {
        if path.len() > MAX_KEY_DEPTH {
            let mut key = dotted(&path[..8]);
            key.push_str(".…");
            self.diagnostics.push(Diagnostic {
                offset,
                kind: DiagnosticKind::BadValue {
                    key,
                    error: format!(
                        "key path has {} parts, more than the {MAX_KEY_DEPTH} accepted",
                        path.len()
                    ),
                },
            });
            return None;
        }
        match Value::parse(json) {
            Ok(v) => Some(v),
            Err(e) => {
                self.diagnostics.push(Diagnostic {
                    offset,
                    kind: DiagnosticKind::BadValue {
                        key: dotted(path),
                        error: e.to_string(),
                    },
                });
                None
            }
        }
    }
}

fn dotted<S: AsRef<str>>(path: &[S]) -> String {
    let parts: Vec<&str> = path.iter().map(AsRef::as_ref).collect();
    parts.join(".")
}

/// One history item on its way into a row: its interned top-level key,
/// the rest of its key path, and its value.
type Cell<'p, S> = (Arc<str>, &'p [S], Value);

/// At most this many distinct history keys are shared per run (see
/// [`Run::intern`]); wandb runs log tens to a few thousand.
const MAX_SHARED_KEYS: usize = 100_000;

/// Key paths longer than this are refused (with a diagnostic), so that
/// hostile input cannot build values nested deeply enough to overflow the
/// stack when dropped or printed. wandb's own paths have a few parts.
const MAX_KEY_DEPTH: usize = 64;

/// The key path of an item: `nested_key` when set, else `[key]` (what
/// wandb-core does).
fn key_path(key: &str, nested: &[String]) -> Vec<String> {
    if nested.is_empty() {
        vec![key.to_owned()]
    } else {
        nested.to_vec()
    }
}

/// Sets `path` in a tree of objects, replacing non-objects on the way.
fn set_path<S: AsRef<str>>(map: &mut BTreeMap<String, Value>, path: &[S], v: Value) {
    let Some((last, parents)) = path.split_last() else {
        return;
    };
    let mut cur = map;
    for key in parents {
        let key = key.as_ref();
        if !cur.contains_key(key) {
            cur.insert(key.to_owned(), Value::Object(BTreeMap::new()));
        }
        let Some(slot) = cur.get_mut(key) else {
            return; // inserted just above
        };
        if !matches!(slot, Value::Object(_)) {
            *slot = Value::Object(BTreeMap::new());
        }
        let Value::Object(next) = slot else {
            return; // made an object just above
        };
        cur = next;
    }
    cur.insert(last.as_ref().to_owned(), v);
}

/// Removes `path` from a tree of objects, if present.
fn remove_path<S: AsRef<str>>(map: &mut BTreeMap<String, Value>, path: &[S]) {
    let Some((last, parents)) = path.split_last() else {
        return;
    };
    let mut cur = map;
    for key in parents {
        match cur.get_mut(key.as_ref()) {
            Some(Value::Object(next)) => cur = next,
            _ => return,
        }
    }
    cur.remove(last.as_ref());
}

/// Per-window state of [`Run::apply_payload`]: the reusable buffers of the
/// in-place decoder, and the summary updates not applied yet.
#[derive(Default)]
pub(crate) struct Fold<'a> {
    scratch: wire::Scratch<'a>,
    summary: DeferredSummary<'a>,
}

impl Fold<'_> {
    /// Applies what is still deferred; call it at the end of a window.
    pub(crate) fn finish(&mut self, run: &mut Run) {
        self.summary.apply(run);
    }
}

/// Summary updates waiting to be applied, the last one per key path only.
///
/// wandb-core writes the whole changed summary after every history row, so
/// most summary values are overwritten within the same window; parsing only
/// the last one per key path halves the reader's work. Dropping an update
/// that a later update of the same path follows changes nothing: the later
/// one replaces the whole subtree at that path, and creates the same parent
/// objects. Updates are applied in the order of their last occurrence;
/// removals (which make that argument fail) first apply everything deferred.
/// A value that fails to parse is reported only when it is the last one.
#[derive(Default)]
struct DeferredSummary<'a> {
    /// Index into `slots` of the latest update of a one-part key path.
    single: rustc_hash::FxHashMap<&'a str, usize>,
    /// The same for longer key paths.
    nested: rustc_hash::FxHashMap<Vec<&'a str>, usize>,
    /// Updates in order (key path, `value_json`, record offset); `None`
    /// where a later update of the same path replaced it.
    slots: Vec<Option<(SummaryPath<'a>, &'a str, u64)>>,
}

enum SummaryPath<'a> {
    One(&'a str),
    Many(Vec<&'a str>),
}

impl<'a> DeferredSummary<'a> {
    fn defer(&mut self, path: &[&'a str], json: &'a str, offset: u64) {
        let at = self.slots.len();
        let (old, path) = match path {
            [one] => (self.single.insert(one, at), SummaryPath::One(one)),
            _ => (
                self.nested.insert(path.to_vec(), at),
                SummaryPath::Many(path.to_vec()),
            ),
        };
        if let Some(i) = old {
            self.slots[i] = None;
        }
        self.slots.push(Some((path, json, offset)));
    }

    fn apply(&mut self, run: &mut Run) {
        if self.slots.is_empty() {
            return;
        }
        self.single.clear();
        self.nested.clear();
        for (path, json, offset) in self.slots.drain(..).flatten() {
            let path = match &path {
                SummaryPath::One(one) => std::slice::from_ref(one),
                SummaryPath::Many(many) => many.as_slice(),
            };
            if let Some(v) = run.parse_value(path, json, offset) {
                set_path(&mut run.summary, path, v);
            }
        }
    }
}

/// What one [`RunReader::read_more`] call found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Update {
    /// Records read (of the types this reader does not declare too).
    pub records: usize,
    /// History rows added.
    pub history_rows: usize,
    /// New diagnostics (the incomplete tail excluded; see [`Run::incomplete_tail`]).
    pub diagnostics: Vec<Diagnostic>,
    /// The resume offset after this read.
    pub offset: u64,
    /// The file had shrunk below the resume offset, so it was read again
    /// from the start into a fresh [`Run`].
    pub restarted: bool,
}

/// Reads a `.wandb` file into a [`Run`], incrementally: each
/// [`read_more`](RunReader::read_more) reads only what was appended since
/// the last call.
#[derive(Debug, Clone)]
pub struct RunReader {
    path: PathBuf,
    offset: u64,
    run: Run,
    /// The last window's bytes; the buffer is reused from window to window.
    buf: Vec<u8>,
}

impl RunReader {
    /// A reader of the file at `path`; nothing is read yet.
    pub fn new(path: impl Into<PathBuf>) -> Self {
        RunReader {
            path: path.into(),
            offset: 0,
            run: Run::default(),
            buf: Vec::new(),
        }
    }

    /// Continues from an earlier reader's state: `run` as it was after the
    /// read that returned resume offset `offset`.
    pub fn resume(path: impl Into<PathBuf>, offset: u64, run: Run) -> Self {
        RunReader {
            path: path.into(),
            offset,
            run,
            buf: Vec::new(),
        }
    }

    /// Reads what was appended since the last call and applies it.
    pub fn read_more(&mut self) -> Result<Update> {
        self.read_some(None).map(|(update, _)| update)
    }

    /// Like [`read_more`](RunReader::read_more), but reads only about
    /// `max_bytes` more of the file (more when a single record is larger), so
    /// that a caller draining the rows after each call ([`RunReader::take_rows`])
    /// reads a long run with flat memory. Returns whether the end of the file
    /// was reached.
    pub fn read_some(&mut self, max_bytes: Option<u64>) -> Result<(Update, bool)> {
        let mut max = max_bytes;
        loop {
            let before = self.offset;
            let (update, at_eof) = self.read_window(max)?;
            if at_eof || self.offset > before || update.restarted {
                return Ok((update, at_eof));
            }
            // one record is larger than the window: widen it
            max = max.map(|m| m.saturating_mul(2));
        }
    }

    /// Takes the rows read so far out of the run (history, system samples,
    /// complete console lines), leaving everything else in place.
    pub fn take_rows(&mut self) -> (Vec<HistoryRow>, Vec<SystemSample>, Vec<ConsoleLine>) {
        (
            std::mem::take(&mut self.run.history),
            std::mem::take(&mut self.run.system),
            std::mem::take(&mut self.run.console),
        )
    }

    fn read_window(&mut self, max_bytes: Option<u64>) -> Result<(Update, bool)> {
        let mut restarted = false;
        let len = std::fs::metadata(&self.path)
            .map_err(|source| Error::Io {
                path: self.path.clone(),
                source,
            })?
            .len();
        if len < self.offset {
            tracing::warn!(path = %self.path.display(), len, offset = self.offset,
                "wandb run file shrank below the resume offset; reading it again from the start");
            self.offset = 0;
            self.run = Run::default();
            restarted = true;
        }
        let at_eof = read_range_bytes(&self.path, self.offset, max_bytes, &mut self.buf)?;
        let mut update = self
            .run
            .apply_bytes(&self.buf, self.offset, at_eof)
            .map_err(|source| Error::Header {
                path: self.path.clone(),
                source,
            })?;
        for d in &update.diagnostics {
            tracing::debug!(path = %self.path.display(), offset = d.offset, "{d}");
        }
        update.restarted = restarted;
        self.offset = update.offset;
        Ok((update, at_eof))
    }

    /// The run as read so far.
    pub fn run(&self) -> &Run {
        &self.run
    }

    /// The run as read so far, taking it out of the reader.
    pub fn into_run(self) -> Run {
        self.run
    }

    /// The offset the next [`read_more`](RunReader::read_more) starts from.
    pub fn offset(&self) -> u64 {
        self.offset
    }

    /// The file being read.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// Reads a whole `.wandb` file into a [`Run`].
pub fn read_run(path: &Path) -> Result<Run> {
    let mut reader = RunReader::new(path);
    reader.read_more()?;
    Ok(reader.into_run())
}

/// A wandb run directory (`offline-run-<time>-<id>` or `run-<time>-<id>`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunDir {
    /// The directory.
    pub dir: PathBuf,
    /// Its `run-<id>.wandb` file.
    pub wandb_file: PathBuf,
    /// The directory name starts with `offline-`.
    pub offline: bool,
}

impl RunDir {
    /// Finds the `.wandb` file of a run directory.
    pub fn open(dir: &Path) -> Result<RunDir> {
        let io = |source| Error::Io {
            path: dir.to_path_buf(),
            source,
        };
        let mut found = Vec::new();
        for entry in std::fs::read_dir(dir).map_err(io)? {
            let entry = entry.map_err(io)?;
            let name = entry.file_name();
            let name = name.to_string_lossy();
            if name.starts_with("run-") && name.ends_with(".wandb") {
                found.push(entry.path());
            }
        }
        found.sort();
        let wandb_file = match found.len() {
            0 => return Err(Error::NoRunFile { dir: dir.into() }),
            1 => found.remove(0),
            _ => {
                let names: Vec<String> = found
                    .iter()
                    .filter_map(|p| p.file_name())
                    .map(|n| n.to_string_lossy().into_owned())
                    .collect();
                return Err(Error::SeveralRunFiles {
                    dir: dir.into(),
                    names: names.join(", "),
                });
            }
        };
        let offline = dir
            .file_name()
            .is_some_and(|n| n.to_string_lossy().starts_with("offline-"));
        Ok(RunDir {
            dir: dir.into(),
            wandb_file,
            offline,
        })
    }

    /// A reader of the run's `.wandb` file.
    pub fn reader(&self) -> RunReader {
        RunReader::new(&self.wandb_file)
    }

    /// Files under `files/`, sorted by path; empty when there is no `files/`.
    /// Symlinks are reported, not followed into directories.
    pub fn files(&self) -> Result<Vec<DirFile>> {
        let root = self.dir.join("files");
        let mut out = Vec::new();
        if root.is_dir() {
            walk(&root, "", &mut out)?;
        }
        out.sort_by(|a, b| a.path.cmp(&b.path));
        Ok(out)
    }
}

fn walk(dir: &Path, prefix: &str, out: &mut Vec<DirFile>) -> Result<()> {
    let io = |source| Error::Io {
        path: dir.to_path_buf(),
        source,
    };
    for entry in std::fs::read_dir(dir).map_err(io)? {
        let entry = entry.map_err(io)?;
        let name = entry.file_name().to_string_lossy().into_owned();
        let rel = if prefix.is_empty() {
            name
        } else {
            format!("{prefix}/{name}")
        };
        let ft = entry.file_type().map_err(io)?;
        if ft.is_dir() {
            walk(&entry.path(), &rel, out)?;
        } else {
            let size = std::fs::metadata(entry.path()).ok().map(|m| m.len());
            out.push(DirFile {
                path: rel,
                size,
                symlink: ft.is_symlink(),
            });
        }
    }
    Ok(())
}

/// Reads a run directory: its `.wandb` file and the list of files under `files/`.
pub fn read_run_dir(dir: &Path) -> Result<Run> {
    let rd = RunDir::open(dir)?;
    let mut run = read_run(&rd.wandb_file)?;
    run.files_on_disk = rd.files()?;
    Ok(run)
}
