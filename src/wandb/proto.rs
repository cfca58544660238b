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
        tags = "2, 3, 4, 5, 6, 7, 8, 11, 13, 17, 18, 20, 21, 22, 23, 26, 27"
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
    /// An artifact the run logged (field 8): a `wandb.Table`, `log_artifact`.
    #[prost(message, tag = "8")]
    Artifact(ArtifactRecord),
    /// Raw console output as 0.31 writes it (field 13).
    #[prost(message, tag = "13")]
    OutputRaw(OutputRawRecord),
    /// The run's identity, initial config and settings (field 17).
    /// Boxed, like the environment: one or two per run, much larger than
    /// the history and summary records that make up the rest.
    #[prost(message, boxed, tag = "17")]
    Run(Box<RunRecord>),
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
    /// System metadata, merged by writer id (field 26). Boxed: it is by far
    /// the largest record type, and two per run do not justify the size of
    /// every other record.
    #[prost(message, boxed, tag = "26")]
    Environment(Box<EnvironmentRecord>),
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
            RecordType::Artifact(_) => "artifact",
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

/// `ArtifactRecord`, reduced to what names the artifact.
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct ArtifactRecord {
    /// Artifact type (`run_table`, `model`, `dataset`, …).
    #[prost(string, tag = "4")]
    pub r#type: String,
    /// Artifact (collection) name.
    #[prost(string, tag = "5")]
    pub name: String,
    /// Content digest.
    #[prost(string, tag = "6")]
    pub digest: String,
    /// Aliases (`latest`, …).
    #[prost(string, repeated, tag = "11")]
    pub aliases: Vec<String>,
}

/// `EnvironmentRecord` (0.31.0 descriptor): everything `wandb-metadata.json`
/// is made of. `_info` (200) is left out.
#[derive(Clone, PartialEq, prost::Message)]
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
    /// Docker image.
    #[prost(string, tag = "4")]
    pub docker: String,
    /// Command-line arguments.
    #[prost(string, repeated, tag = "5")]
    pub args: Vec<String>,
    /// The program (script) path.
    #[prost(string, tag = "6")]
    pub program: String,
    /// The program relative to the git root.
    #[prost(string, tag = "7")]
    pub code_path: String,
    /// The program relative to the working directory.
    #[prost(string, tag = "8")]
    pub code_path_local: String,
    /// Git remote and commit.
    #[prost(message, optional, tag = "9")]
    pub git: Option<GitRepoRecord>,
    /// User e-mail.
    #[prost(string, tag = "10")]
    pub email: String,
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
    /// Colab notebook URL.
    #[prost(string, tag = "15")]
    pub colab: String,
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
    /// Disks by mount path.
    #[prost(btree_map = "string, message", tag = "20")]
    pub disk: std::collections::BTreeMap<String, DiskInfo>,
    /// Memory.
    #[prost(message, optional, tag = "21")]
    pub memory: Option<MemoryInfo>,
    /// CPU model.
    #[prost(message, optional, tag = "22")]
    pub cpu: Option<CpuInfo>,
    /// Apple silicon.
    #[prost(message, optional, tag = "23")]
    pub apple: Option<AppleInfo>,
    /// NVIDIA GPUs.
    #[prost(message, repeated, tag = "24")]
    pub gpu_nvidia: Vec<GpuNvidiaInfo>,
    /// CUDA version.
    #[prost(string, tag = "25")]
    pub cuda_version: String,
    /// AMD GPUs.
    #[prost(message, repeated, tag = "26")]
    pub gpu_amd: Vec<GpuAmdInfo>,
    /// SLURM environment.
    #[prost(btree_map = "string, string", tag = "27")]
    pub slurm: std::collections::BTreeMap<String, String>,
    /// AWS Trainium.
    #[prost(message, optional, tag = "28")]
    pub trainium: Option<TrainiumInfo>,
    /// Google TPU.
    #[prost(message, optional, tag = "29")]
    pub tpu: Option<TpuInfo>,
    /// CoreWeave.
    #[prost(message, optional, tag = "30")]
    pub coreweave: Option<CoreWeaveInfo>,
    /// Which writer produced this part of the metadata.
    #[prost(string, tag = "199")]
    pub writer_id: String,
}

/// `DiskInfo`.
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct DiskInfo {
    /// Bytes in all.
    #[prost(uint64, tag = "1")]
    pub total: u64,
    /// Bytes used.
    #[prost(uint64, tag = "2")]
    pub used: u64,
}

/// `MemoryInfo`.
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct MemoryInfo {
    /// Bytes in all.
    #[prost(uint64, tag = "1")]
    pub total: u64,
}

/// `CpuInfo`.
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct CpuInfo {
    /// Physical cores.
    #[prost(uint32, tag = "1")]
    pub count: u32,
    /// Logical cores.
    #[prost(uint32, tag = "2")]
    pub count_logical: u32,
    /// Model name.
    #[prost(string, tag = "3")]
    pub model: String,
}

/// `AppleInfo`.
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct AppleInfo {
    /// Chip name.
    #[prost(string, tag = "1")]
    pub name: String,
    /// Efficiency cores.
    #[prost(uint32, tag = "2")]
    pub ecpu_cores: u32,
    /// Performance cores.
    #[prost(uint32, tag = "3")]
    pub pcpu_cores: u32,
    /// GPU cores.
    #[prost(uint32, tag = "4")]
    pub gpu_cores: u32,
    /// Memory (GB).
    #[prost(uint32, tag = "5")]
    pub memory_gb: u32,
    /// Swap bytes.
    #[prost(uint64, tag = "6")]
    pub swap_total_bytes: u64,
    /// RAM bytes.
    #[prost(uint64, tag = "7")]
    pub ram_total_bytes: u64,
    /// Mac model.
    #[prost(string, tag = "8")]
    pub mac_model: String,
}

/// `GpuNvidiaInfo`.
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct GpuNvidiaInfo {
    /// Model name.
    #[prost(string, tag = "1")]
    pub name: String,
    /// Memory bytes.
    #[prost(uint64, tag = "2")]
    pub memory_total: u64,
    /// CUDA cores.
    #[prost(uint32, tag = "3")]
    pub cuda_cores: u32,
    /// Architecture (`Hopper`, …).
    #[prost(string, tag = "4")]
    pub architecture: String,
    /// GPU UUID.
    #[prost(string, tag = "5")]
    pub uuid: String,
    /// PCI bus id.
    #[prost(string, tag = "6")]
    pub pci_bus_id: String,
    /// NUMA node.
    #[prost(uint32, tag = "7")]
    pub numa_node: u32,
}

/// `GpuAmdInfo`: thirteen strings.
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct GpuAmdInfo {
    /// id.
    #[prost(string, tag = "1")]
    pub id: String,
    /// uniqueId.
    #[prost(string, tag = "2")]
    pub unique_id: String,
    /// vbiosVersion.
    #[prost(string, tag = "3")]
    pub vbios_version: String,
    /// performanceLevel.
    #[prost(string, tag = "4")]
    pub performance_level: String,
    /// gpuOverdrive.
    #[prost(string, tag = "5")]
    pub gpu_overdrive: String,
    /// gpuMemoryOverdrive.
    #[prost(string, tag = "6")]
    pub gpu_memory_overdrive: String,
    /// maxPower.
    #[prost(string, tag = "7")]
    pub max_power: String,
    /// series.
    #[prost(string, tag = "8")]
    pub series: String,
    /// model.
    #[prost(string, tag = "9")]
    pub model: String,
    /// vendor.
    #[prost(string, tag = "10")]
    pub vendor: String,
    /// sku.
    #[prost(string, tag = "11")]
    pub sku: String,
    /// sclkRange.
    #[prost(string, tag = "12")]
    pub sclk_range: String,
    /// mclkRange.
    #[prost(string, tag = "13")]
    pub mclk_range: String,
}

/// `TrainiumInfo`.
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct TrainiumInfo {
    /// name.
    #[prost(string, tag = "1")]
    pub name: String,
    /// vendor.
    #[prost(string, tag = "2")]
    pub vendor: String,
    /// neuronDeviceCount.
    #[prost(uint32, tag = "3")]
    pub neuron_device_count: u32,
    /// neuroncorePerDeviceCount.
    #[prost(uint32, tag = "4")]
    pub neuroncore_per_device_count: u32,
}

/// `TPUInfo`.
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct TpuInfo {
    /// name.
    #[prost(string, tag = "1")]
    pub name: String,
    /// hbmGib.
    #[prost(uint32, tag = "2")]
    pub hbm_gib: u32,
    /// devicesPerChip.
    #[prost(uint32, tag = "3")]
    pub devices_per_chip: u32,
    /// count.
    #[prost(uint32, tag = "4")]
    pub count: u32,
}

/// `CoreWeaveInfo`.
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct CoreWeaveInfo {
    /// clusterName.
    #[prost(string, tag = "1")]
    pub cluster_name: String,
    /// orgId.
    #[prost(string, tag = "2")]
    pub org_id: String,
    /// region.
    #[prost(string, tag = "3")]
    pub region: String,
}
