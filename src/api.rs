//! The wire types of the one HTTP API (`/api/v1`), shared by the server and
//! its clients (CLI, agents, the UI through its JSON). Only data lives here:
//! no behaviour, no IO. `docs/api.md` and `src/server/openapi.json` describe
//! the same shapes; a test keeps the routes and the OpenAPI paths in step.

use serde::{Deserialize, Serialize};

use crate::gpu::Gpu;
use crate::queue::{Assignment, AttemptInfo, Job, JobId, JobSpec, JobState, SweepGrid};
use crate::wandb::sync::SyncOutcome;

/// API version prefix.
pub const PREFIX: &str = "/api/v1";

/// The API's version, the number in [`PREFIX`]: `GET /health` reports it so
/// a client (the desktop app connecting to a lab daemon) can refuse a daemon
/// whose API it does not speak before it calls anything else.
pub const API_VERSION: u32 = 1;

fn api_v1() -> u32 {
    1
}

/// Header carrying an attempt's token on calls about that attempt.
pub const ATTEMPT_TOKEN_HEADER: &str = "x-trainyard-attempt-token";

/// Response header of log reads: the offset just after the bytes returned.
pub const LOG_OFFSET_HEADER: &str = "x-trainyard-log-offset";

/// Response header of log reads: `1` when the attempt has ended and every
/// byte of its log has been returned.
pub const LOG_DONE_HEADER: &str = "x-trainyard-log-done";

/// Response header of `GET /jobs`: the cursor of the next page (absent on
/// the last page). Pass it back as `cursor=`.
pub const NEXT_CURSOR_HEADER: &str = "x-trainyard-next-cursor";

/// Response header of `GET /jobs`: how many jobs match the filters, on all pages.
pub const TOTAL_HEADER: &str = "x-trainyard-total";

/// `GET /jobs/counts`: state name → number of jobs in it (every state present).
pub type JobCounts = std::collections::BTreeMap<String, u64>;

/// Every error response: `{"error": {"code": ..., "message": ...}}`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ErrorBody {
    /// The error.
    pub error: ErrorDetail,
}

/// An error's code and human message.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ErrorDetail {
    /// Machine-readable: `bad_request`, `unauthorized`, `not_found`,
    /// `conflict`, `stale_attempt`, `payload_too_large`, `internal`, ...
    pub code: String,
    /// What went wrong, naming the field, job or attempt at fault.
    pub message: String,
}

/// `GET /health`: no token needed.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Health {
    /// `trainyard` version of the daemon.
    pub version: String,
    /// The API version it serves ([`API_VERSION`]); daemons from before
    /// this field served version 1.
    #[serde(default = "api_v1")]
    pub api: u32,
    /// Whether API calls need a bearer token.
    pub auth_required: bool,
    /// Optional capabilities this daemon has (`runs`, …), so the UI shows
    /// only what works.
    #[serde(default)]
    pub features: Vec<String>,
}

/// `POST /jobs`: one or several specs, enqueued in one transaction; or one
/// spec and a sweep grid, expanded by the daemon into one job per
/// combination (at most `queue::MAX_BATCH`), also in one transaction.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SubmitRequest {
    /// The jobs; exactly one (the template) with `sweep`.
    pub jobs: Vec<JobSpec>,
    /// Argument name → values: one job per combination, each the template
    /// with `args` extended by one value per name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sweep: Option<SweepGrid>,
}

/// The ids given to submitted jobs, in request order.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SubmitResponse {
    /// Job ids.
    pub ids: Vec<JobId>,
}

/// `GET /jobs/{id}`: the job with its attempts.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct JobDetail {
    /// The job.
    #[serde(flatten)]
    pub job: Job,
    /// Its attempts, oldest first.
    pub attempt_log: Vec<AttemptInfo>,
}

/// What an agent reports about itself with every heartbeat.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentReport {
    /// Trainyard version of the agent.
    pub version: String,
    /// The agent's id (created once in its home): the daemon refuses a
    /// second live agent that reports the same name with another id.
    #[serde(default)]
    pub agent_id: String,
    /// Host name.
    pub hostname: String,
    /// `nvml`, `fake` or `none`.
    pub gpu_source: String,
    /// Why the GPU source is `none`, when it is.
    pub gpu_error: Option<String>,
    /// The GPUs now.
    pub gpus: Vec<Gpu>,
    /// How many CPU-only jobs it runs at once.
    pub cpu_slots: u32,
    /// Tokens of the attempts it holds (preparing or running).
    pub attempts: Vec<String>,
    /// PIDs of the processes it started (their GPU use is not foreign).
    pub pids: Vec<u32>,
    /// The agent is stopping: place nothing more on it (the jobs it stops
    /// come back to the queue). A later report without it makes it
    /// schedulable again.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub leaving: bool,
}

/// `POST /agents/{name}/samples`: the GPU samples an agent took since its
/// last batch the daemon accepted, oldest first.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SampleBatch {
    /// The agent's id (as in its reports).
    pub agent_id: String,
    /// The agent's wall clock when it sent the batch, ms since the epoch:
    /// the daemon moves the samples' times by the difference to its own
    /// clock, so they line up with assignments.
    pub sent_ms: i64,
    /// Samples the agent dropped (its buffer was full while the daemon was
    /// unreachable) since its last accepted batch.
    #[serde(default)]
    pub dropped: u64,
    /// The samples.
    pub samples: Vec<HostSample>,
}

/// Every GPU of a host at one moment.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HostSample {
    /// When, on the agent's wall clock, ms since the epoch.
    pub t_ms: i64,
    /// The time the sample stands for, ms: since the previous one.
    pub dt_ms: u32,
    /// Each GPU.
    pub gpus: Vec<GpuSample>,
    /// What each held attempt's processes did over `dt_ms` besides the
    /// GPU (the idle policy's "busy reading"); absent before the second
    /// sample of an attempt.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub groups: Vec<GroupSample>,
}

/// One attempt's processes (its process group and cgroup) over a
/// sample's interval.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GroupSample {
    /// The job.
    pub job: JobId,
    /// The attempt.
    pub attempt: u32,
    /// CPU use (user + system), % of one core.
    pub cpu_pct: f64,
    /// Bytes read and written through system calls, per second.
    pub io_bytes_per_s: u64,
}

/// One GPU in a [`HostSample`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GpuSample {
    /// Its UUID.
    pub uuid: String,
    /// Its NVML index.
    pub index: u32,
    /// Its model.
    pub name: String,
    /// Total memory, MiB.
    pub memory_total_mib: u64,
    /// Used memory, MiB.
    pub memory_used_mib: u64,
    /// Utilization, %.
    pub utilization_pct: Option<u32>,
    /// Temperature, °C.
    pub temperature_c: Option<u32>,
    /// Power, W.
    pub power_w: Option<u32>,
    /// The energy counter, mJ (absent where the GPU has none).
    #[serde(default)]
    pub energy_mj: Option<u64>,
    /// Energy used over `dt_ms`, mJ: the counter's increase, else power ×
    /// time.
    #[serde(default)]
    pub interval_energy_mj: Option<u64>,
    /// Its processes, each with the attempt it belongs to.
    #[serde(default)]
    pub processes: Vec<SampledProcess>,
}

/// A process on a GPU and the Trainyard attempt whose process group or
/// cgroup it is in (none: a foreign process).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SampledProcess {
    /// Its pid on the host.
    pub pid: u32,
    /// GPU memory it uses, MiB, when the driver says.
    #[serde(default)]
    pub used_mib: Option<u64>,
    /// The job of the attempt it belongs to.
    #[serde(default)]
    pub job: Option<JobId>,
    /// That attempt.
    #[serde(default)]
    pub attempt: Option<u32>,
}

/// The answer to a [`SampleBatch`].
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct SampleAck {
    /// GPU samples stored.
    pub stored: u64,
    /// GPU samples refused (older than the raw retention, or far ahead).
    pub refused: u64,
}

/// `GET /telemetry`: series of GPU samples or rollups.
pub use crate::telemetry::{Resolution, Series, Stat, TelemetryPoint, TelemetrySeries};

/// The daemon's answer to a heartbeat or a poll.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct AgentOrders {
    /// New attempts to run.
    pub assignments: Vec<Work>,
    /// Held attempts that are no longer current (cancelled, reassigned,
    /// expired): stop them now.
    pub stop: Vec<String>,
    /// Why, for those of `stop` the idle policy stopped: (token, reason),
    /// which the agent writes at the end of the attempt's log.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub stop_reasons: Vec<(String, String)>,
    /// How long a lease lasts, ms.
    pub lease_ms: u64,
}

/// `POST /agents/{name}/poll`: the report, and the longest wait in ms.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PollRequest {
    /// The agent's state.
    pub report: AgentReport,
    /// Longest time to hold the request when there is nothing to do.
    pub wait_ms: u64,
}

/// One attempt as the agent receives it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Work {
    /// Job, attempt, token, GPUs and lease.
    pub assignment: Assignment,
    /// What to run.
    pub spec: JobSpec,
}

/// `POST /jobs/{id}/attempts/{n}/start`: the process runs.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StartRequest {
    /// The git commit the attempt checked out, for jobs with a git source.
    #[serde(default)]
    pub commit: Option<String>,
}

/// `POST /jobs/{id}/attempts/{n}/finish`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FinishRequest {
    /// The exit code, when the process exited by itself.
    pub exit_code: Option<i32>,
    /// What stopped it otherwise (spawn failure, timeout, bad git rev...).
    pub error: Option<String>,
    /// The agent stopped it because the agent itself is stopping: the job
    /// goes back to the queue, and the attempt does not count against its
    /// attempts.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub requeue: bool,
}

/// An agent as the daemon sees it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AgentInfo {
    /// Its name.
    pub name: String,
    /// Its last report.
    pub report: AgentReport,
    /// Milliseconds since its last heartbeat or poll.
    pub last_seen_ms: u64,
    /// Whether it is within its lease (schedulable).
    pub alive: bool,
    /// GPU UUIDs held by Trainyard attempts, with the job holding each.
    pub held: Vec<HeldGpu>,
    /// GPUs whose memory is held while their utilization stays at 0 %
    /// (by a job or a foreign process), with since when; `flagged` once
    /// that lasted the lab's idle window ("memory held, idle").
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub memory_idle: Vec<MemoryIdle>,
}

/// A GPU whose memory is held at 0 % utilization.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemoryIdle {
    /// The GPU.
    pub uuid: String,
    /// Since when (the first such sample), ms since the epoch.
    pub since_ms: i64,
    /// For how long, ms, as of the latest sample.
    pub idle_ms: i64,
    /// Whether that is the lab's idle window or more.
    pub flagged: bool,
}

/// A GPU held by an attempt.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct HeldGpu {
    /// Where idle detection stands for the holding attempt (none: exempt,
    /// or no sample yet).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idle: Option<crate::idle::Status>,
    /// The GPU.
    pub uuid: String,
    /// The job holding it.
    pub job: JobId,
    /// Its user.
    pub user: String,
}

/// A change, pushed to `/events` subscribers as server-sent events (the
/// event name is the variant in snake case; the data is this JSON).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Event {
    /// A job changed state or reason.
    Job {
        /// The job.
        id: JobId,
        /// Its new state.
        state: JobState,
    },
    /// An agent connected, reported or went away.
    Agent {
        /// The agent.
        name: String,
    },
    /// An attempt's log grew.
    Log {
        /// The job.
        id: JobId,
        /// The attempt.
        attempt: u32,
        /// The log's new size.
        size: u64,
    },
    /// A schedule was added, changed, removed, or fired.
    Schedule {
        /// The schedule.
        name: String,
    },
    /// A run's sync state changed.
    Run {
        /// The wandb run id.
        id: String,
        /// Its sync outcome (`synced`, `unchanged`, `failed`).
        sync: SyncOutcome,
    },
    /// Idle detection of a job's running attempt changed phase (idle,
    /// busy, active again, warned).
    Idle {
        /// The job.
        id: JobId,
    },
    /// A notification for a `desktop` sink: the desktop app shows it
    /// natively.
    Notification {
        /// The notification event's id.
        id: i64,
        /// Its kind (`job_failed`, …).
        kind: String,
        /// One line.
        title: String,
        /// The facts and detail.
        body: String,
        /// Where to look in the UI.
        link: String,
    },
}

impl Event {
    /// The SSE event name.
    pub fn name(&self) -> &'static str {
        match self {
            Event::Job { .. } => "job",
            Event::Agent { .. } => "agent",
            Event::Log { .. } => "log",
            Event::Schedule { .. } => "schedule",
            Event::Run { .. } => "run",
            Event::Idle { .. } => "idle",
            Event::Notification { .. } => "notification",
        }
    }
}

/// A notification sink as `GET /notify/sinks` shows it: never its URL
/// beyond scheme and host.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NotifySink {
    /// Its name.
    pub name: String,
    /// `webhook`, `slack`, `discord`, `ntfy` or `desktop`.
    pub kind: crate::notify::SinkKind,
    /// Scheme and host of its URL (`https://hooks.slack.com/…`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// Event kinds it wants; empty: all.
    pub events: Vec<crate::notify::EventKind>,
    /// Only these users' jobs.
    pub users: Vec<String>,
    /// Only these projects' jobs.
    pub projects: Vec<String>,
    /// Only jobs with one of these tags.
    pub tags: Vec<String>,
    /// ntfy priority.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority: Option<u8>,
    /// `daily` or `weekly`: it gets a summary per period (and individual
    /// events only of the kinds `events` names).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub digest: Option<crate::notify::digest::Every>,
    /// `config` (config.toml) or `cli` (`notify add`).
    pub origin: crate::notify::Origin,
}

impl NotifySink {
    /// How a sink is shown.
    pub fn of(s: &crate::notify::Sink) -> NotifySink {
        NotifySink {
            name: s.name.clone(),
            kind: s.kind,
            url: s.shown_url(),
            events: s.rule.events.clone(),
            users: s.rule.users.clone(),
            projects: s.rule.projects.clone(),
            tags: s.rule.tags.clone(),
            priority: s.priority,
            digest: s.rule.digest,
            origin: s.origin,
        }
    }
}

/// `POST /notify/sinks`: add a sink.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AddSinkRequest {
    /// Its name (`[a-z0-9_-]`, up to 64).
    pub name: String,
    /// What it speaks.
    pub kind: crate::notify::SinkKind,
    /// Its URL (all kinds but `desktop`); a secret, never shown again.
    #[serde(default)]
    pub url: Option<String>,
    /// Event names; empty: all.
    #[serde(default)]
    pub events: Vec<String>,
    /// Only these users' jobs.
    #[serde(default)]
    pub users: Vec<String>,
    /// Only these projects' jobs.
    #[serde(default)]
    pub projects: Vec<String>,
    /// Only jobs with one of these tags.
    #[serde(default)]
    pub tags: Vec<String>,
    /// ntfy priority, 1..5.
    #[serde(default)]
    pub priority: Option<i64>,
    /// `daily` or `weekly`: a summary per period.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub digest: Option<String>,
}

/// `POST /notify/sinks/{name}/test`: the test message's event.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NotifyTestAnswer {
    /// The event's id (its delivery is in `GET /notify/log`).
    pub event_id: i64,
    /// The sink.
    pub sink: String,
}

/// `GET /notify/log`: deliveries, newest event first.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NotifyLog {
    /// The deliveries.
    pub deliveries: Vec<crate::notify::Delivery>,
}

/// One row of `GET /api/v1/usage`: GPU time in hours, energy in kWh.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UsageRow {
    /// `2026-11-30` (daily) or `2026-11` (monthly); absent for totals.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub period: Option<String>,
    /// The values of the `by` dimensions, in order (`-` for none; the
    /// totals row has `["total"]`).
    pub key: Vec<String>,
    /// GPU-hours allocated: each GPU from assignment to release.
    pub allocated_gpu_h: f64,
    /// GPU-hours used: utilization integrated over time.
    pub used_gpu_h: f64,
    /// GPU-hours allocated while under the idle threshold.
    pub idle_gpu_h: f64,
    /// Energy, kWh (the driver's counter, else power over time).
    pub energy_kwh: f64,
    /// Peak memory used on one GPU, MiB.
    pub peak_mem_mib: u64,
    /// Jobs counted.
    pub jobs: u64,
    /// wandb runs counted that did not come through the queue.
    pub runs: u64,
}

impl UsageRow {
    /// A report row on the wire.
    pub fn from_row(r: &crate::usage::Row) -> UsageRow {
        UsageRow {
            period: r.period.clone(),
            key: r.key.clone(),
            allocated_gpu_h: r.usage.allocated_h(),
            used_gpu_h: r.usage.used_h(),
            idle_gpu_h: r.usage.idle_h(),
            energy_kwh: r.usage.energy_kwh(),
            peak_mem_mib: r.usage.peak_mem_mib,
            jobs: r.jobs,
            runs: r.runs,
        }
    }
}

/// `GET /api/v1/usage`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UsageAnswer {
    /// The range's start (RFC 3339).
    pub since: String,
    /// The range's end, exclusive (RFC 3339).
    pub until: String,
    /// The time zone whose days and months the rows use.
    pub timezone: String,
    /// The dimensions of each row's `key`.
    pub by: Vec<crate::usage::Dim>,
    /// `total`, `daily` or `monthly`.
    pub period: crate::usage::Period,
    /// Rows sorted by period, then key.
    pub rows: Vec<UsageRow>,
    /// Everything counted once (with `by=tag` rows can add up to more).
    pub total: UsageRow,
    /// wandb runs counted as the job attempt that produced them.
    #[serde(default)]
    pub links: Vec<crate::usage::Link>,
    /// Two claims on one GPU at once (e.g. `wandb.init` twice on a host):
    /// the first claimant kept the time, the second was not counted for it.
    #[serde(default)]
    pub conflicts: Vec<crate::usage::Conflict>,
    /// The tag that leaves a job or run out of usage (`[usage]
    /// ignore_tag`, default `ignore-usage`), also when added later;
    /// absent when none is configured.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ignore_tag: Option<String>,
}

/// `POST /api/v1/jobs/{id}/tags`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TagRequest {
    /// Tags to add.
    #[serde(default)]
    pub add: Vec<String>,
    /// Tags to remove.
    #[serde(default)]
    pub remove: Vec<String>,
}

/// The answer to a [`TagRequest`] for a run
/// (`POST /api/v1/runs/{id}/tags`): the run's tags now, its own (from
/// wandb) first.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunTagAnswer {
    /// The run's id.
    pub run: String,
    /// Its tags.
    pub tags: Vec<String>,
}

/// The answer to a [`TagRequest`]: the job's tags now.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TagAnswer {
    /// The job.
    pub id: JobId,
    /// Its tags, sorted.
    pub tags: Vec<String>,
}
#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_carry_states_as_their_names() {
        let job = Event::Job {
            id: JobId(7),
            state: JobState::Succeeded,
        };
        let wire = serde_json::to_string(&job).unwrap();
        assert_eq!(wire, r#"{"type":"job","id":7,"state":"succeeded"}"#);
        assert_eq!(serde_json::from_str::<Event>(&wire).unwrap(), job);
        let run = Event::Run {
            id: "3k9x2a1b".into(),
            sync: SyncOutcome::Unchanged,
        };
        let wire = serde_json::to_string(&run).unwrap();
        assert_eq!(wire, r#"{"type":"run","id":"3k9x2a1b","sync":"unchanged"}"#);
        assert_eq!(serde_json::from_str::<Event>(&wire).unwrap(), run);
    }
}

/// A cluster as a GPU pool (`GET /clusters/pools`): what `sinfo` says of
/// its partition, or why it could not be asked.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ClusterPool {
    /// The cluster's name.
    pub cluster: String,
    /// Partition, GPU types, GPUs allocated and total.
    pub pool: Option<crate::cluster::slurm::Pool>,
    /// Why `sinfo` gave no answer.
    pub error: Option<String>,
}
