//! Hand-written prost messages for the parts of `wandb_internal.Record` that
//! a `.wandb` reader needs.
//!
//! Field numbers come from the descriptors compiled into the `wandb` 0.31.0
//! Python package (`wandb/proto/wandb_internal_pb2.py`); `docs/wandb-format.md`
//! lists them. Only the fields the reader uses are declared: prost skips
//! every other field, so records from newer clients still decode, and record
//! types not declared here decode with `record_type == None`.
//!
//! This module holds plain data only; what the records mean is `run.rs`'s job.

/// `google.protobuf.Timestamp`: seconds and nanoseconds since the Unix epoch.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, prost::Message)]
pub struct Timestamp {
    /// Whole seconds since 1970-01-01T00:00:00Z.
    #[prost(int64, tag = "1")]
    pub seconds: i64,
    /// Nanoseconds within the second (0..1e9).
    #[prost(int32, tag = "2")]
    pub nanos: i32,
}

impl Timestamp {
    /// The time as fractional seconds since the Unix epoch.
    pub fn as_secs_f64(&self) -> f64 {
        self.seconds as f64 + f64::from(self.nanos) / 1e9
    }
}

/// `wandb_internal.Record`: one entry of the transaction log.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Record {
    /// Sequence number, starting at 1 (0 when the writer left it unset).
    #[prost(int64, tag = "1")]
    pub num: i64,
    /// The payload; `None` for record types this reader does not declare.
    #[prost(
        oneof = "RecordType",
        tags = "2, 3, 4, 5, 6, 7, 11, 13, 17, 18, 20, 21, 22, 23, 26, 27"
    )]
    pub record_type: Option<RecordType>,
    /// Writer-side identifier of the record, usually empty in the file.
    #[prost(string, tag = "19")]
    pub uuid: String,
}

/// The `record_type` oneof of [`Record`], restricted to the types the reader
/// interprets or must recognise.
#[derive(Clone, PartialEq, prost::Oneof)]
pub enum RecordType {
    /// One row of `wandb.log` history (field 2).
    #[prost(message, tag = "2")]
    History(HistoryRecord),
    /// Summary updates and removals (field 3).
    #[prost(message, tag = "3")]
    Summary(SummaryRecord),
    /// Legacy console output (field 4).
    #[prost(message, tag = "4")]
    Output(OutputRecord),
    /// Config updates after the run record (field 5).
    #[prost(message, tag = "5")]
    Config(ConfigRecord),
    /// Files under `files/` to upload (field 6).
    #[prost(message, tag = "6")]
    Files(FilesRecord),
    /// One system-metrics sample (field 7).
    #[prost(message, tag = "7")]
    Stats(StatsRecord),
    /// Client telemetry (field 11).
    #[prost(message, tag = "11")]
    Telemetry(TelemetryRecord),
    /// Raw console output as 0.31 writes it (field 13).
    #[prost(message, tag = "13")]
    OutputRaw(OutputRawRecord),
    /// The run's identity, initial config and settings (field 17).
    #[prost(message, tag = "17")]
    Run(RunRecord),
    /// The run ended (field 18).
    #[prost(message, tag = "18")]
    Exit(RunExitRecord),
    /// Legacy end marker (field 20); carries nothing the reader needs.
    #[prost(message, tag = "20")]
    Final(Empty),
    /// File header record: the producing client version (field 21).
    #[prost(message, tag = "21")]
    Header(HeaderRecord),
    /// Legacy footer (field 22); carries nothing the reader needs.
    #[prost(message, tag = "22")]
    Footer(Empty),
    /// The run is being preempted (field 23).
    #[prost(message, tag = "23")]
    Preempting(Empty),
    /// System metadata, merged by writer id (field 26).
    #[prost(message, tag = "26")]
    Environment(EnvironmentRecord),
    /// Output from the client's own logger (field 27).
    #[prost(message, tag = "27")]
    OutputLogger(OutputLoggerRecord),
}

impl RecordType {
    /// A short stable name of the record type (the protobuf field name).
    pub fn name(&self) -> &'static str {
        match self {
            RecordType::History(_) => "history",
            RecordType::Summary(_) => "summary",
            RecordType::Output(_) => "output",
            RecordType::Config(_) => "config",
            RecordType::Files(_) => "files",
            RecordType::Stats(_) => "stats",
            RecordType::Telemetry(_) => "telemetry",
            RecordType::OutputRaw(_) => "output_raw",
            RecordType::Run(_) => "run",
            RecordType::Exit(_) => "exit",
            RecordType::Final(_) => "final",
            RecordType::Header(_) => "header",
            RecordType::Footer(_) => "footer",
            RecordType::Preempting(_) => "preempting",
            RecordType::Environment(_) => "environment",
            RecordType::OutputLogger(_) => "output_logger",
        }
    }
}

/// A message whose fields the reader ignores (Final, Footer, Preempting).
#[derive(Clone, Copy, PartialEq, Eq, prost::Message)]
pub struct Empty {}

/// `RunRecord` (Record field 17).
#[derive(Clone, PartialEq, prost::Message)]
pub struct RunRecord {
    /// The run id (`id=` in `wandb.init`).
    #[prost(string, tag = "1")]
    pub run_id: String,
    /// Entity (user or team); empty when not given offline.
    #[prost(string, tag = "2")]
    pub entity: String,
    /// Project; `uncategorized` when not given.
    #[prost(string, tag = "3")]
    pub project: String,
    /// The config passed to `wandb.init`.
    #[prost(message, optional, tag = "4")]
    pub config: Option<ConfigRecord>,
    /// An initial summary (set when resuming).
    #[prost(message, optional, tag = "5")]
    pub summary: Option<SummaryRecord>,
    /// Group name.
    #[prost(string, tag = "6")]
    pub run_group: String,
    /// Job type.
    #[prost(string, tag = "7")]
    pub job_type: String,
    /// Display name (`name=` in `wandb.init`).
    #[prost(string, tag = "8")]
    pub display_name: String,
    /// Notes.
    #[prost(string, tag = "9")]
    pub notes: String,
    /// Tags.
    #[prost(string, repeated, tag = "10")]
    pub tags: Vec<String>,
    /// Sweep id, if the run belongs to a sweep.
    #[prost(string, tag = "12")]
    pub sweep_id: String,
    /// Host name.
    #[prost(string, tag = "13")]
    pub host: String,
    /// First step of a resumed run.
    #[prost(int64, tag = "14")]
    pub starting_step: i64,
    /// Start time.
    #[prost(message, optional, tag = "17")]
    pub start_time: Option<Timestamp>,
    /// The run was resumed.
    #[prost(bool, tag = "18")]
    pub resumed: bool,
    /// Seconds of runtime before this (resumed) segment.
    #[prost(int32, tag = "20")]
    pub runtime: i32,
    /// Git remote and commit.
    #[prost(message, optional, tag = "21")]
    pub git: Option<GitRepoRecord>,
    /// The run was forked from another.
    #[prost(bool, tag = "22")]
    pub forked: bool,
    /// The run was started with `resume=`.
    #[prost(bool, tag = "24")]
    pub resume: bool,
}

/// `GitRepoRecord`.
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct GitRepoRecord {
    /// Remote URL.
    #[prost(string, tag = "1")]
    pub remote_url: String,
    /// Commit hash.
    #[prost(string, tag = "2")]
    pub commit: String,
}

/// `ConfigRecord`: config updates and removals.
#[derive(Clone, PartialEq, prost::Message)]
pub struct ConfigRecord {
    /// Keys set.
    #[prost(message, repeated, tag = "1")]
    pub update: Vec<ConfigItem>,
    /// Keys removed.
    #[prost(message, repeated, tag = "2")]
    pub remove: Vec<ConfigItem>,
}

/// `ConfigItem`: a key (or key path) and its JSON value.
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct ConfigItem {
    /// Top-level key (used when `nested_key` is empty).
    #[prost(string, tag = "1")]
    pub key: String,
    /// Key path.
    #[prost(string, repeated, tag = "2")]
    pub nested_key: Vec<String>,
    /// The value as (extended) JSON.
    #[prost(string, tag = "16")]
    pub value_json: String,
}

/// `HistoryRecord`: one history row.
#[derive(Clone, PartialEq, prost::Message)]
pub struct HistoryRecord {
    /// The row's values, including `_step`, `_runtime` and `_timestamp`.
    #[prost(message, repeated, tag = "1")]
    pub item: Vec<HistoryItem>,
    /// The step (absent or empty for step 0).
    #[prost(message, optional, tag = "2")]
    pub step: Option<HistoryStep>,
}

/// `HistoryStep`.
#[derive(Clone, Copy, PartialEq, Eq, prost::Message)]
pub struct HistoryStep {
    /// Step number.
    #[prost(int64, tag = "1")]
    pub num: i64,
}

/// `HistoryItem`: a key path and its value.
#[derive(Clone, PartialEq, prost::Message)]
pub struct HistoryItem {
    /// Top-level key (used when `nested_key` is empty).
    #[prost(string, tag = "1")]
    pub key: String,
    /// Key path.
    #[prost(string, repeated, tag = "2")]
    pub nested_key: Vec<String>,
    /// The typed value (0.31, only with `x_history_value_encoding` = typed).
    #[prost(oneof = "HistoryValue", tags = "3, 4, 5, 6, 7, 8")]
    pub value: Option<HistoryValue>,
    /// The value as (extended) JSON; always written by 0.31.
    #[prost(string, tag = "16")]
    pub value_json: String,
}

/// The typed `value` oneof of [`HistoryItem`].
#[derive(Clone, PartialEq, prost::Oneof)]
pub enum HistoryValue {
    /// `google.protobuf.NullValue` (field 3).
    #[prost(int32, tag = "3")]
    None(i32),
    /// Boolean (field 4).
    #[prost(bool, tag = "4")]
    Boolean(bool),
    /// Integer, zigzag encoded (field 5).
    #[prost(sint64, tag = "5")]
    Integer(i64),
    /// Double (field 6).
    #[prost(double, tag = "6")]
    Number(f64),
    /// String (field 7).
    #[prost(string, tag = "7")]
    Text(String),
    /// Other JSON (field 8).
    #[prost(string, tag = "8")]
    Json(String),
}

/// `SummaryRecord`: summary updates and removals.
#[derive(Clone, PartialEq, prost::Message)]
pub struct SummaryRecord {
    /// Keys set.
    #[prost(message, repeated, tag = "1")]
    pub update: Vec<SummaryItem>,
    /// Keys removed.
    #[prost(message, repeated, tag = "2")]
    pub remove: Vec<SummaryItem>,
}

/// `SummaryItem`: a key path and its JSON value.
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct SummaryItem {
    /// Top-level key (used when `nested_key` is empty).
    #[prost(string, tag = "1")]
    pub key: String,
    /// Key path.
    #[prost(string, repeated, tag = "2")]
    pub nested_key: Vec<String>,
    /// The value as (extended) JSON.
    #[prost(string, tag = "16")]
    pub value_json: String,
}

/// `StatsRecord`: one system-metrics sample.
#[derive(Clone, PartialEq, prost::Message)]
pub struct StatsRecord {
    /// Always `SYSTEM` (0).
    #[prost(int32, tag = "1")]
    pub stats_type: i32,
    /// When the sample was taken.
    #[prost(message, optional, tag = "2")]
    pub timestamp: Option<Timestamp>,
    /// The metrics, with bare keys (`cpu`, `memory_percent`, ...).
    #[prost(message, repeated, tag = "3")]
    pub item: Vec<StatsItem>,
}

/// `StatsItem`.
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct StatsItem {
    /// Metric name.
    #[prost(string, tag = "1")]
    pub key: String,
    /// The value as (extended) JSON.
    #[prost(string, tag = "16")]
    pub value_json: String,
}

/// `OutputRecord` (legacy console output). Same fields as [`OutputRawRecord`].
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct OutputRecord {
    /// `STDERR` = 0, `STDOUT` = 1.
    #[prost(int32, tag = "1")]
    pub output_type: i32,
    /// When the text was written.
    #[prost(message, optional, tag = "2")]
    pub timestamp: Option<Timestamp>,
    /// The text.
    #[prost(string, tag = "3")]
    pub line: String,
}

/// `OutputRawRecord`: a fragment of console text, not split into lines.
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct OutputRawRecord {
    /// `STDERR` = 0, `STDOUT` = 1.
    #[prost(int32, tag = "1")]
    pub output_type: i32,
    /// When the text was written.
    #[prost(message, optional, tag = "2")]
    pub timestamp: Option<Timestamp>,
    /// The raw text (may hold `\n` and `\r`).
    #[prost(string, tag = "3")]
    pub line: String,
}

/// `OutputLoggerRecord`.
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct OutputLoggerRecord {
    /// One line.
    #[prost(string, tag = "1")]
    pub line: String,
}

/// `FilesRecord`: files under `files/` that the run wants uploaded.
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct FilesRecord {
    /// The files.
    #[prost(message, repeated, tag = "1")]
    pub files: Vec<FilesItem>,
}

/// `FilesItem`.
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct FilesItem {
    /// Path relative to `files/`.
    #[prost(string, tag = "1")]
    pub path: String,
    /// `NOW` = 0, `END` = 1, `LIVE` = 2.
    #[prost(int32, tag = "2")]
    pub policy: i32,
    /// `OTHER` = 0, `WANDB` = 1, `MEDIA` = 2, `ARTIFACT` = 3.
    #[prost(int32, tag = "3")]
    pub r#type: i32,
}

/// `RunExitRecord`.
#[derive(Clone, Copy, PartialEq, Eq, prost::Message)]
pub struct RunExitRecord {
    /// Process exit code (0 is omitted on the wire).
    #[prost(int32, tag = "1")]
    pub exit_code: i32,
    /// Whole seconds of runtime.
    #[prost(int32, tag = "2")]
    pub runtime: i32,
    /// Set when the run did not complete.
    #[prost(bool, tag = "3")]
    pub not_complete: bool,
}

/// `HeaderRecord`: the first record of a file.
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct HeaderRecord {
    /// Who wrote the file.
    #[prost(message, optional, tag = "1")]
    pub version_info: Option<VersionInfo>,
}

/// `VersionInfo`.
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct VersionInfo {
    /// The writer's version, e.g. `0.31.0+15f8cbc…`.
    #[prost(string, tag = "1")]
    pub producer: String,
    /// The oldest reader version meant to read the file.
    #[prost(string, tag = "2")]
    pub min_consumer: String,
}

/// `TelemetryRecord`, reduced to the version strings.
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct TelemetryRecord {
    /// Python version of the client.
    #[prost(string, tag = "4")]
    pub python_version: String,
    /// `wandb` version of the client.
    #[prost(string, tag = "5")]
    pub cli_version: String,
}

/// `EnvironmentRecord`, reduced to the scalar fields a run view shows.
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct EnvironmentRecord {
    /// Operating system.
    #[prost(string, tag = "1")]
    pub os: String,
    /// Python version.
    #[prost(string, tag = "2")]
    pub python: String,
    /// When the process started.
    #[prost(message, optional, tag = "3")]
    pub started_at: Option<Timestamp>,
    /// Command-line arguments.
    #[prost(string, repeated, tag = "5")]
    pub args: Vec<String>,
    /// The program (script) path.
    #[prost(string, tag = "6")]
    pub program: String,
    /// Root directory of the run.
    #[prost(string, tag = "11")]
    pub root: String,
    /// Host name.
    #[prost(string, tag = "12")]
    pub host: String,
    /// User name.
    #[prost(string, tag = "13")]
    pub username: String,
    /// Python executable.
    #[prost(string, tag = "14")]
    pub executable: String,
    /// Physical CPU count.
    #[prost(uint32, tag = "16")]
    pub cpu_count: u32,
    /// Logical CPU count.
    #[prost(uint32, tag = "17")]
    pub cpu_count_logical: u32,
    /// GPU model.
    #[prost(string, tag = "18")]
    pub gpu_type: String,
    /// GPU count.
    #[prost(uint32, tag = "19")]
    pub gpu_count: u32,
    /// CUDA version.
    #[prost(string, tag = "25")]
    pub cuda_version: String,
    /// Which writer produced this part of the metadata.
    #[prost(string, tag = "199")]
    pub writer_id: String,
}
