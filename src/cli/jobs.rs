//! The queue commands: `submit`, `ps`, `show`, `logs`, `cancel`, `retry`,
//! `gpus`, `agents`. They talk to the daemon over its HTTP API and hold no logic of
//! their own beyond turning flags into a job spec and results into tables.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::Args;
use trainyard::api::JobDetail;
use trainyard::client::{Client, JobsQuery};
use trainyard::queue::{self, Command, GitSource, Job, JobId, JobOrder, JobSpec, JobState};
use trainyard::server::{self, Secret};

use super::output::{self, short};
use super::Ctx;

/// How to reach the daemon (queue commands).
#[derive(Debug, Args, Clone)]
pub struct DaemonArgs {
    /// The daemon's URL [default: the one in the home's daemon.json, else http://127.0.0.1:7171].
    #[arg(long, env = "TRAINYARD_URL", value_name = "URL", global = true)]
    pub server: Option<String>,
    /// Read the daemon token from this file [default: TRAINYARD_TOKEN, else the home's daemon.token].
    #[arg(long, value_name = "FILE", global = true)]
    pub token_file: Option<PathBuf>,
}

/// The daemon's URL and the token to send it.
fn endpoint(ctx: &Ctx, d: &DaemonArgs) -> anyhow::Result<(String, Option<Secret>)> {
    let (url, home_token) = server::local_daemon(&ctx.home);
    let url = d
        .server
        .clone()
        .or(url)
        .unwrap_or_else(|| format!("http://127.0.0.1:{}", server::DEFAULT_PORT));
    let token = if let Ok(t) = std::env::var("TRAINYARD_TOKEN") {
        Some(Secret::new(t.trim()))
    } else if let Some(f) = d.token_file.as_ref().or(home_token.as_ref()) {
        Some(server::read_token(f)?)
    } else {
        None
    };
    Ok((url, token))
}

pub(super) fn client(ctx: &Ctx, d: &DaemonArgs) -> anyhow::Result<Client> {
    let (url, token) = endpoint(ctx, d)?;
    Ok(Client::new(&url, token))
}

/// `trainyard ui`: the address that opens the web UI logged in.
pub fn ui(ctx: &Ctx, d: &DaemonArgs) -> anyhow::Result<ExitCode> {
    let (url, token) = endpoint(ctx, d)?;
    let Some(token) = token else {
        bail!(
            "no token for the daemon at {url}: set TRAINYARD_TOKEN or pass --token-file \
             (the daemon's home holds it in daemon.token)"
        );
    };
    // Check the daemon is there and takes this token before printing a link.
    rt()?.block_on(Client::new(&url, Some(token.clone())).agents())?;
    let login = server::ui_login_url(&url, &token);
    if ctx.json {
        println!("{}", serde_json::json!({ "url": login }));
    } else {
        println!("{login}");
    }
    Ok(ExitCode::SUCCESS)
}

pub(super) fn rt() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")
}

/// `trainyard submit`.
#[derive(Debug, Args)]
pub struct SubmitArgs {
    /// A job spec file (TOML, or JSON); flags override its fields.
    #[arg(short, long, value_name = "FILE")]
    file: Option<PathBuf>,
    /// A short name.
    #[arg(long)]
    name: Option<String>,
    /// Project, for usage accounting [default: "default"].
    #[arg(long)]
    project: Option<String>,
    /// Run COMMAND as one shell string (`sh -c`).
    #[arg(long)]
    shell: bool,
    /// An argument rendered as `--KEY VALUE` after the command (repeatable).
    #[arg(long = "arg", value_name = "KEY=VALUE")]
    args: Vec<String>,
    /// Sweep: one job per combination of values (repeatable: a grid), e.g.
    /// --sweep lr=1e-3,1e-4 --sweep seed=1,2,3 submits 6 jobs.
    #[arg(long, value_name = "KEY=V1,V2,...")]
    sweep: Vec<String>,
    /// With --sweep: at most K of the sweep's jobs run at once (on the LAN
    /// and, as `--array 0-N%K`, on a cluster).
    #[arg(long, value_name = "K", requires = "sweep")]
    max_parallel: Option<u32>,
    /// An environment variable for the job (repeatable). Shown by `show`,
    /// the UI and the API: use --secret-env or --env-file for keys.
    #[arg(long = "env", value_name = "KEY=VALUE")]
    env: Vec<String>,
    /// A secret environment variable for the job, its value taken from
    /// this command's environment (repeatable), e.g. --secret-env
    /// WANDB_API_KEY. The value goes only to the agent that runs the job:
    /// never in answers of the API, the UI, `show`, `ps` or logs.
    #[arg(long = "secret-env", value_name = "KEY")]
    secret_env: Vec<String>,
    /// Secret environment variables from a file of KEY=VALUE lines (mode
    /// 0600; `#` comments, `export ` allowed), handled like --secret-env.
    #[arg(long = "env-file", value_name = "FILE")]
    env_file: Vec<PathBuf>,
    /// Working directory on the agent [default: the current directory, unless --git].
    #[arg(long, value_name = "DIR", conflicts_with = "git")]
    workdir: Option<PathBuf>,
    /// Check out this git repository (URL or path) for the job.
    #[arg(long, value_name = "REPO", requires = "rev")]
    git: Option<String>,
    /// The branch, tag or commit of --git.
    #[arg(long, value_name = "REV")]
    rev: Option<String>,
    /// Number of GPUs, all on one host.
    #[arg(long, value_name = "N")]
    gpus: Option<u32>,
    /// Minimum free memory per GPU, e.g. 40GB or 20000MiB.
    #[arg(long, value_name = "SIZE")]
    gpu_mem: Option<String>,
    /// GPU model pattern, alternatives with '|', e.g. "A100|H100".
    #[arg(long, value_name = "PATTERN")]
    gpu_model: Option<String>,
    /// A dataset input NAME@REF, checked out on the agent (repeatable).
    #[arg(long = "input", value_name = "NAME@REF")]
    inputs: Vec<String>,
    /// Higher runs first.
    #[arg(long)]
    priority: Option<i32>,
    /// Attempts before the job is given up.
    #[arg(long, value_name = "N")]
    max_attempts: Option<u32>,
    /// Wall-clock limit per attempt, e.g. 2h or 90m.
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
    timeout: Option<Duration>,
    /// Start only after this job succeeded (repeatable).
    #[arg(long = "after", value_name = "JOB")]
    depends_on: Vec<i64>,
    /// A free-form label (repeatable).
    #[arg(long = "tag")]
    tags: Vec<String>,
    /// The idle policy for this job, WINDOW:THRESHOLD:ACTION: stop,
    /// requeue or notify when all its GPUs stay under THRESHOLD
    /// utilization for WINDOW, e.g. 30m:5%:stop; parts left empty keep the
    /// lab's defaults (`[idle]` in config.toml), e.g. ::requeue. `off`
    /// exempts the job.
    #[arg(long, value_name = "WINDOW:THRESHOLD:ACTION")]
    idle: Option<String>,
    /// Arm idle detection at the latest this long after the start (earlier
    /// if the job uses its GPUs), e.g. 15m [default: the lab's].
    #[arg(long, value_name = "DURATION")]
    idle_grace: Option<String>,
    /// Send the job to this SLURM cluster (`trainyard cluster add`)
    /// instead of the LAN's agents. Its working directory there is
    /// --workdir, else the --git checkout, else the cluster's directory
    /// (not the current one).
    #[arg(long, value_name = "NAME")]
    on: Option<String>,
    /// Send the job to a cluster if the LAN has not placed it within this
    /// time, e.g. 10m (the cluster of --overflow-to, or the only one).
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration, conflicts_with = "on")]
    overflow_after: Option<Duration>,
    /// The cluster of --overflow-after [default: the only cluster].
    #[arg(long, value_name = "NAME", requires = "overflow_after")]
    overflow_to: Option<String>,
    /// The command and its arguments (after `--`).
    #[arg(last = true, value_name = "COMMAND")]
    command: Vec<String>,
}

fn kv(s: &str, what: &str) -> anyhow::Result<(String, String)> {
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_string(), v.to_string())),
        _ => bail!("{what}: expected KEY=VALUE, got {s:?}"),
    }
}

/// An `--env-file`: private (like the token file), then parsed by the core.
fn read_env_file(path: &std::path::Path) -> anyhow::Result<Vec<(String, String)>> {
    use std::os::unix::fs::PermissionsExt;
    let meta = std::fs::metadata(path).with_context(|| format!("--env-file {}", path.display()))?;
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        bail!(
            "--env-file {}: mode {mode:o} lets others read these secrets; chmod 600 it",
            path.display()
        );
    }
    let text =
        std::fs::read_to_string(path).with_context(|| format!("--env-file {}", path.display()))?;
    Ok(trainyard::queue::parse_env_file(
        &text,
        &path.display().to_string(),
    )?)
}

/// The job (the template of a sweep) and the sweep grid (empty: one job).
pub(super) fn build_specs(a: SubmitArgs) -> anyhow::Result<(JobSpec, queue::SweepGrid)> {
    let mut spec = match &a.file {
        Some(f) => {
            let text =
                std::fs::read_to_string(f).with_context(|| format!("reading {}", f.display()))?;
            JobSpec::parse(&text).with_context(|| format!("in {}", f.display()))?
        }
        None => {
            if a.command.is_empty() {
                bail!("nothing to run: give a command after `--` (e.g. trainyard submit --gpus 1 -- python train.py) or --file SPEC");
            }
            JobSpec::parse(r#"{"command": ["true"]}"#).expect("a minimal spec parses")
        }
    };
    if !a.command.is_empty() {
        spec.command = if a.shell {
            Command::Shell(a.command.join(" "))
        } else {
            Command::Argv(a.command.clone())
        };
    }
    macro_rules! set {
        ($field:expr, $v:expr) => {
            if let Some(v) = $v {
                $field = v;
            }
        };
    }
    if a.name.is_some() {
        spec.name = a.name;
    }
    set!(spec.project, a.project);
    set!(spec.priority, a.priority);
    set!(spec.max_attempts, a.max_attempts);
    set!(spec.gpus.count, a.gpus);
    if a.max_parallel.is_some() {
        spec.max_parallel = a.max_parallel;
    }
    if let Some(m) = &a.gpu_mem {
        spec.gpus.min_memory_mib = queue::parse_memory_mib("--gpu-mem", m)?;
    }
    if a.gpu_model.is_some() {
        spec.gpus.model = a.gpu_model;
    }
    if let Some(t) = a.timeout {
        spec.timeout_s = Some(queue::timeout_secs("--timeout", t)?);
    }
    for s in &a.args {
        let (k, v) = kv(s, "--arg")?;
        spec.args.insert(k, v);
    }
    for s in &a.env {
        let (k, v) = kv(s, "--env")?;
        spec.env.insert(k, v);
    }
    for k in &a.secret_env {
        let v = std::env::var(k).with_context(|| {
            format!("--secret-env {k}: {k} is not set in this environment (export it first)")
        })?;
        spec.secret_env.insert(k.clone(), v);
    }
    for f in &a.env_file {
        spec.secret_env.extend(read_env_file(f)?);
    }
    spec.inputs.extend(a.inputs);
    spec.depends_on.extend(a.depends_on);
    spec.tags.extend(a.tags);
    if let Some(i) = &a.idle {
        spec.idle = trainyard::idle::Override::parse("--idle", i)?.text();
    }
    if let Some(g) = &a.idle_grace {
        trainyard::idle::parse_grace("--idle-grace", g)?;
        spec.idle_grace = Some(g.trim().to_string());
    }
    if let (Some(repo), Some(rev)) = (a.git, a.rev) {
        spec.git = Some(GitSource { repo, rev });
        spec.workdir = None;
    } else if let Some(w) = a.workdir {
        spec.workdir = Some(std::path::absolute(&w).unwrap_or(w));
    } else if spec.git.is_none() && spec.workdir.is_none() && a.on.is_none() && spec.on.is_none() {
        spec.workdir = Some(std::env::current_dir().context("the current directory")?);
    }
    if spec.user.is_none() {
        spec.user = Some(trainyard::user::current());
    }
    if let Some(on) = a.on {
        spec.on = Some(on);
    }
    let grid = queue::parse_sweep(a.sweep.iter().map(String::as_str))?;
    spec.validate()?;
    if let Some(first) = spec.sweep_iter(&grid)?.next() {
        first.validate()?;
    }
    // After the checks: an empty cluster is filled in by `submit` (the
    // daemon knows the clusters), and the daemon checks it all again.
    if let Some(after) = a.overflow_after {
        spec.overflow = Some(queue::Overflow {
            cluster: a.overflow_to.unwrap_or_default(),
            after_s: after.as_secs(),
        });
    }
    Ok((spec, grid))
}

/// Ids as `3 4 5`, or `3-5000` when there are many in a row.
fn id_list(ids: &[JobId]) -> String {
    let contiguous = ids.windows(2).all(|w| w[1].0 == w[0].0 + 1);
    match (ids.first(), ids.last()) {
        (Some(a), Some(b)) if ids.len() > 10 && contiguous => format!("{a}-{b}"),
        _ => ids
            .iter()
            .map(|i| i.to_string())
            .collect::<Vec<_>>()
            .join(" "),
    }
}

pub fn submit(ctx: &Ctx, d: &DaemonArgs, a: SubmitArgs) -> anyhow::Result<ExitCode> {
    let (mut spec, grid) = build_specs(a)?;
    let c = client(ctx, d)?;
    if let Some(o) = spec.overflow.as_mut().filter(|o| o.cluster.is_empty()) {
        let clusters = rt()?.block_on(c.clusters())?;
        match clusters.as_slice() {
            [one] => o.cluster = one.cluster.name.clone(),
            [] => bail!(
                "--overflow-after: no cluster to overflow to; add one with `trainyard cluster add NAME --slurm`"
            ),
            _ => bail!(
                "--overflow-after: several clusters ({}); name one with --overflow-to",
                clusters
                    .iter()
                    .map(|c| c.cluster.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        }
    }
    // A sweep travels as its template and grid: the daemon expands it, so
    // 100,000 combinations are one small request and one transaction.
    let ids = if grid.is_empty() {
        rt()?.block_on(c.submit(vec![spec]))?
    } else {
        rt()?.block_on(c.submit_sweep(spec, grid))?
    };
    if ctx.json {
        output::json(&serde_json::json!({ "ids": ids }))?;
    } else if ids.len() == 1 {
        println!("submitted job {}", ids[0]);
    } else {
        println!("submitted {} jobs: {}", ids.len(), id_list(&ids));
    }
    Ok(ExitCode::SUCCESS)
}

/// `trainyard ps`.
#[derive(Debug, Args)]
pub struct PsArgs {
    /// Show every job (page by page from the daemon), not just the first
    /// --limit active ones and the last 10 finished.
    #[arg(short, long)]
    all: bool,
    /// Only these states (comma separated: queued,running,failed,...).
    #[arg(long, value_delimiter = ',')]
    state: Vec<String>,
    /// Only this user's jobs.
    #[arg(long)]
    user: Option<String>,
    /// Only this project's jobs.
    #[arg(long)]
    project: Option<String>,
    /// Only jobs with this tag.
    #[arg(long)]
    tag: Option<String>,
    /// Show at most this many jobs of each kind (active, finished).
    #[arg(short = 'n', long, value_name = "N", default_value_t = 100)]
    limit: usize,
}

fn ago(ns: i64) -> String {
    let now = trainyard::db::now_ns();
    let secs = ((now - ns).max(0) / 1_000_000_000) as u64;
    humantime::format_duration(Duration::from_secs(secs)).to_string()
}

fn job_name(j: &Job) -> String {
    j.spec
        .name
        .clone()
        .unwrap_or_else(|| j.spec.argv().join(" "))
}

/// `host:0,1`: the host and the NVML indices of its GPUs (`host:2 GPUs`
/// for attempts recorded before indices were).
fn placement(agent: Option<&str>, uuids: &[String], indices: &[u32]) -> String {
    match agent {
        Some(a) if !indices.is_empty() => format!(
            "{a}:{}",
            indices
                .iter()
                .map(|i| i.to_string())
                .collect::<Vec<_>>()
                .join(",")
        ),
        Some(a) if !uuids.is_empty() => format!(
            "{a}:{} GPU{}",
            uuids.len(),
            if uuids.len() == 1 { "" } else { "s" }
        ),
        Some(a) => a.to_string(),
        None => "-".into(),
    }
}

/// Everything matching the query, page by page, up to `max` jobs.
async fn fetch(c: &Client, mut q: JobsQuery, max: usize) -> anyhow::Result<(Vec<Job>, u64)> {
    let mut jobs = Vec::new();
    q.limit = Some(max.clamp(1, queue::MAX_PAGE));
    loop {
        let page = c.jobs_page(&q).await?;
        jobs.extend(page.jobs);
        match page.next {
            Some(next) if jobs.len() < max => q.cursor = Some(next),
            _ => {
                jobs.truncate(max);
                return Ok((jobs, page.total));
            }
        }
    }
}

pub fn ps(ctx: &Ctx, d: &DaemonArgs, a: PsArgs) -> anyhow::Result<ExitCode> {
    let mut states = Vec::new();
    for s in &a.state {
        states
            .push(JobState::from_name(s).with_context(|| format!("--state: unknown state {s:?}"))?);
    }
    let c = client(ctx, d)?;
    let base = JobsQuery {
        user: a.user.clone(),
        project: a.project.clone(),
        tag: a.tag.clone(),
        ..JobsQuery::default()
    };
    let max = if a.all { usize::MAX } else { a.limit.max(1) };
    // Active jobs in scheduling order, then finished ones, newest first:
    // two short paged queries, whatever the length of the history.
    let (jobs, hidden) = rt()?.block_on(async {
        if !states.is_empty() {
            let (jobs, total) = fetch(
                &c,
                JobsQuery {
                    states: states.clone(),
                    ..base.clone()
                },
                max,
            )
            .await?;
            let hidden = total.saturating_sub(jobs.len() as u64);
            return anyhow::Ok((jobs, hidden));
        }
        let (mut jobs, active_total) = fetch(
            &c,
            JobsQuery {
                states: vec![JobState::Queued, JobState::Assigned, JobState::Running],
                ..base.clone()
            },
            max,
        )
        .await?;
        let shown_active = jobs.len() as u64;
        let (done, done_total) = fetch(
            &c,
            JobsQuery {
                order: JobOrder::Finished,
                ..base.clone()
            },
            if a.all { usize::MAX } else { 10 },
        )
        .await?;
        let hidden = active_total.saturating_sub(shown_active)
            + done_total.saturating_sub(done.len() as u64);
        jobs.extend(done);
        Ok((jobs, hidden))
    })?;
    if ctx.json {
        output::json(&jobs)?;
        return Ok(ExitCode::SUCCESS);
    }
    println!(
        "{:>6}  {:<10} {:<28} {:<10} {:<14} {:>9}  REASON",
        "ID", "STATE", "NAME", "USER", "HOST:GPUS", "TIME"
    );
    for j in &jobs {
        let place = placement(j.agent.as_deref(), &j.gpus, &j.gpu_indices);
        let time = match (j.state, j.started_ns, j.finished_ns) {
            (JobState::Running, Some(s), _) => ago(s),
            (_, Some(s), Some(f)) if f >= s => {
                humantime::format_duration(Duration::from_secs(((f - s) / 1_000_000_000) as u64))
                    .to_string()
            }
            (JobState::Queued, _, _) => ago(j.submitted_ns),
            _ => "-".into(),
        };
        println!(
            "{:>6}  {:<10} {:<28} {:<10} {:<14} {:>9}  {}",
            j.id.0,
            j.state.as_str(),
            short(&job_name(j), 28),
            short(j.spec.user.as_deref().unwrap_or("-"), 10),
            short(&place, 14),
            short(&time, 9),
            reason_of(j)
        );
    }
    if hidden > 0 {
        println!("({hidden} more jobs not shown; --all shows them, --state/--user/--tag narrow)");
    }
    Ok(ExitCode::SUCCESS)
}

/// What `ps` says of a job: the idle policy's line while it runs (idle
/// how long, and what happens when), else its reason.
fn reason_of(j: &Job) -> String {
    let now_ms = trainyard::db::now_ns() / 1_000_000;
    let idle = j
        .idle
        .as_ref()
        .filter(|_| j.state == JobState::Running)
        .and_then(|s| s.describe(now_ms));
    idle.or_else(|| j.reason.clone()).unwrap_or_default()
}

/// `trainyard show`.
#[derive(Debug, Args)]
pub struct ShowArgs {
    /// The job.
    job: i64,
}

fn time_of(ns: Option<i64>) -> String {
    ns.map(|ns| {
        humantime::format_rfc3339_seconds(
            std::time::UNIX_EPOCH + Duration::from_nanos(ns.max(0) as u64),
        )
        .to_string()
    })
    .unwrap_or_else(|| "-".into())
}

/// The commit an attempt ran (jobs with a git source), abbreviated.
fn attempt_commit(a: &queue::AttemptInfo) -> Option<String> {
    a.commit.as_ref().map(|c| c.chars().take(10).collect())
}

pub fn show(ctx: &Ctx, d: &DaemonArgs, a: ShowArgs) -> anyhow::Result<ExitCode> {
    let c = client(ctx, d)?;
    let detail: JobDetail = rt()?.block_on(c.job(JobId(a.job)))?;
    if ctx.json {
        output::json(&detail)?;
        return Ok(ExitCode::SUCCESS);
    }
    let j = &detail.job;
    let s = &j.spec;
    let field = |k: &str, v: String| println!("{k:<12} {v}");
    field("job", j.id.to_string());
    if let Some(n) = &s.name {
        field("name", n.clone());
    }
    field("state", j.state.to_string());
    if let Some(r) = &j.reason {
        field("reason", r.clone());
    }
    field("user", s.user.clone().unwrap_or_else(|| "-".into()));
    field("project", s.project.clone());
    field("command", s.argv().join(" "));
    if let Some(g) = &s.git {
        field("git", format!("{} @ {}", g.repo, g.rev));
    } else if let Some(w) = &s.workdir {
        field("workdir", w.display().to_string());
    }
    let mut gpus = if s.gpus.count == 0 {
        "none (CPU job)".to_string()
    } else {
        format!("{}", s.gpus.count)
    };
    if s.gpus.min_memory_mib > 0 {
        gpus.push_str(&format!(", ≥ {} MiB free each", s.gpus.min_memory_mib));
    }
    if let Some(m) = &s.gpus.model {
        gpus.push_str(&format!(", model {m}"));
    }
    field("gpus", gpus);
    if !s.inputs.is_empty() {
        field("inputs", s.inputs.join(" "));
    }
    if !s.env.is_empty() {
        field("env", s.env.keys().cloned().collect::<Vec<_>>().join(" "));
    }
    if !s.secret_env.is_empty() {
        let names: Vec<&str> = s.secret_env.keys().map(String::as_str).collect();
        field(
            "secret env",
            format!("{} (values never shown)", names.join(" ")),
        );
    }
    if !s.tags.is_empty() {
        field("tags", s.tags.join(" "));
    }
    if !s.depends_on.is_empty() {
        field(
            "after",
            s.depends_on
                .iter()
                .map(|d| d.to_string())
                .collect::<Vec<_>>()
                .join(" "),
        );
    }
    field("priority", s.priority.to_string());
    if let Some(t) = s.timeout_s {
        field(
            "timeout",
            humantime::format_duration(Duration::from_secs(t)).to_string(),
        );
    }
    field(
        "attempts",
        format!("{} of at most {}", j.attempts, s.max_attempts),
    );
    field("submitted", time_of(Some(j.submitted_ns)));
    if j.finished_ns.is_some() {
        field("finished", time_of(j.finished_ns));
    }
    if detail.attempt_log.is_empty() {
        return Ok(ExitCode::SUCCESS);
    }
    println!();
    println!(
        "{:>3}  {:<10} {:<20} {:<10} {:<20} {:>9}  {:>4}  ERROR",
        "#", "STATE", "HOST:GPUS", "COMMIT", "STARTED", "RAN", "EXIT"
    );
    for at in &detail.attempt_log {
        let ran = match (at.started_ns, at.finished_ns) {
            (Some(s), Some(f)) if f >= s => {
                humantime::format_duration(Duration::from_secs(((f - s) / 1_000_000_000) as u64))
                    .to_string()
            }
            (Some(s), None) => ago(s),
            _ => "-".into(),
        };
        println!(
            "{:>3}  {:<10} {:<20} {:<10} {:<20} {:>9}  {:>4}  {}",
            at.n,
            at.state.as_str(),
            short(&placement(Some(&at.agent), &at.gpus, &at.gpu_indices), 20),
            attempt_commit(at).unwrap_or_else(|| "-".into()),
            time_of(at.started_ns),
            short(&ran, 9),
            at.exit_code
                .map(|c| c.to_string())
                .unwrap_or_else(|| "-".into()),
            at.error.as_deref().unwrap_or("")
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// `trainyard logs`.
#[derive(Debug, Args)]
pub struct LogsArgs {
    /// The job.
    job: i64,
    /// This attempt [default: the latest].
    #[arg(long)]
    attempt: Option<u32>,
    /// Follow the output until the job ends (across retries).
    #[arg(short, long)]
    follow: bool,
}

pub fn logs(ctx: &Ctx, d: &DaemonArgs, a: LogsArgs) -> anyhow::Result<ExitCode> {
    let c = client(ctx, d)?;
    let id = JobId(a.job);
    rt()?.block_on(async {
        // Without --attempt, follow the latest attempt; when a retry starts a
        // new one, start over at its beginning.
        let mut current: Option<u32> = None;
        let mut offset = 0;
        let mut out = std::io::stdout();
        loop {
            let wait = if a.follow {
                Duration::from_secs(20)
            } else {
                Duration::ZERO
            };
            let chunk = c.log(id, a.attempt, offset, wait).await?;
            if current.is_some_and(|n| n != chunk.attempt) {
                current = Some(chunk.attempt);
                offset = 0;
                continue;
            }
            current = Some(chunk.attempt);
            out.write_all(&chunk.bytes)?;
            out.flush()?;
            offset = chunk.next;
            if !a.follow {
                if chunk.bytes.is_empty() || chunk.done {
                    break;
                }
                continue;
            }
            if chunk.done {
                if chunk.job_state.is_some_and(|s| s.is_terminal()) || a.attempt.is_some() {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
        }
        anyhow::Ok(())
    })?;
    Ok(ExitCode::SUCCESS)
}

/// `trainyard cancel` / `retry`.
#[derive(Debug, Args)]
pub struct JobsArgs {
    /// The jobs.
    #[arg(required = true)]
    jobs: Vec<i64>,
}

/// `trainyard tag`.
#[derive(Debug, Args)]
pub struct TagArgs {
    /// The job (its number), or a wandb run (its id or directory, as
    /// `trainyard runs ls` shows them).
    #[arg(value_name = "JOB|RUN")]
    target: String,
    /// The tags.
    #[arg(required = true)]
    tags: Vec<String>,
    /// Remove these tags instead of adding them.
    #[arg(long)]
    remove: bool,
}

pub fn tag(ctx: &Ctx, d: &DaemonArgs, a: TagArgs) -> anyhow::Result<ExitCode> {
    for t in &a.tags {
        trainyard::queue::check_tag(t)?;
    }
    let req = if a.remove {
        trainyard::api::TagRequest {
            remove: a.tags,
            ..Default::default()
        }
    } else {
        trainyard::api::TagRequest {
            add: a.tags,
            ..Default::default()
        }
    };
    let list = |tags: &[String]| {
        if tags.is_empty() {
            "(none)".to_string()
        } else {
            tags.join(", ")
        }
    };
    let c = client(ctx, d)?;
    // A number is a job; anything else a run.
    match a.target.parse::<i64>() {
        Ok(job) => {
            let r = rt()?.block_on(c.tag(JobId(job), &req))?;
            if ctx.json {
                output::json(&r)?;
            } else {
                println!("job {}: tags {}", r.id, list(&r.tags));
            }
        }
        Err(_) => {
            let r = rt()?.block_on(c.tag_run(&a.target, &req))?;
            if ctx.json {
                output::json(&r)?;
            } else {
                println!("run {}: tags {}", r.run, list(&r.tags));
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

pub fn cancel_or_retry(
    ctx: &Ctx,
    d: &DaemonArgs,
    a: JobsArgs,
    retry: bool,
) -> anyhow::Result<ExitCode> {
    let c = client(ctx, d)?;
    let rt = rt()?;
    let mut failed = false;
    let mut results = Vec::new();
    for j in a.jobs {
        let r = rt.block_on(async {
            if retry {
                c.retry(JobId(j)).await
            } else {
                c.cancel(JobId(j)).await
            }
        });
        match r {
            Ok(job) => {
                if !ctx.json {
                    println!("job {}: {}", job.id, job.state);
                }
                results.push(job);
            }
            Err(e) => {
                eprintln!("error: job {j}: {e}");
                failed = true;
            }
        }
    }
    if ctx.json {
        output::json(&results)?;
    }
    Ok(output::exit_code(failed))
}

pub fn gpus(ctx: &Ctx, d: &DaemonArgs) -> anyhow::Result<ExitCode> {
    let c = client(ctx, d)?;
    let agents = rt()?.block_on(c.agents())?;
    if ctx.json {
        output::json(&agents)?;
        return Ok(ExitCode::SUCCESS);
    }
    println!(
        "{:<16} {:>3}  {:<22} {:>17} {:>5} {:>5} {:>6}  HELD BY / PROCESSES",
        "HOST", "GPU", "MODEL", "MEMORY USED", "UTIL", "TEMP", "POWER"
    );
    for a in &agents {
        if a.report.gpus.is_empty() {
            let why = a.report.gpu_error.as_deref().unwrap_or("no GPUs");
            println!("{:<16} {:>3}  {}", short(&a.name, 16), "-", short(why, 70));
            continue;
        }
        for g in &a.report.gpus {
            let held = a.held.iter().find(|h| h.uuid == g.uuid);
            let foreign: Vec<String> = g
                .processes
                .iter()
                .filter(|p| !a.report.pids.contains(&p.pid))
                .map(|p| {
                    let mem = p.used_mib.map(|m| format!(", {m} MiB")).unwrap_or_default();
                    match &p.user {
                        Some(u) => format!("pid {} ({u}{mem})", p.pid),
                        None => format!("pid {}{mem}", p.pid),
                    }
                })
                .collect();
            let now_ms = trainyard::db::now_ns() / 1_000_000;
            let mut who = match held {
                Some(h) => {
                    let idle = h
                        .idle
                        .as_ref()
                        .and_then(|s| s.describe(now_ms))
                        .map(|d| format!(": {d}"))
                        .unwrap_or_default();
                    format!("job {} ({}){idle}", h.job, h.user)
                }
                None => "free".into(),
            };
            if !foreign.is_empty() {
                let list = format!("FOREIGN {}", foreign.join(", "));
                who = if held.is_some() {
                    format!("{who}; {list}")
                } else {
                    list
                };
            }
            if let Some(m) = a.memory_idle.iter().find(|m| m.uuid == g.uuid && m.flagged) {
                who = format!(
                    "{who} [memory held, idle {}]",
                    trainyard::idle::human_ms(m.idle_ms)
                );
            }
            let opt =
                |v: Option<u32>, unit: &str| v.map(|x| format!("{x}{unit}")).unwrap_or("-".into());
            println!(
                "{:<16} {:>3}  {:<22} {:>17} {:>5} {:>5} {:>6}  {}{}",
                short(&a.name, 16),
                g.index,
                short(&g.name, 22),
                format!("{} / {} MiB", g.memory_used_mib, g.memory_total_mib),
                opt(g.utilization_pct, "%"),
                opt(g.temperature_c, "C"),
                opt(g.power_w, "W"),
                who,
                if a.alive {
                    ""
                } else {
                    " (agent not seen recently)"
                }
            );
        }
    }
    if agents.is_empty() {
        println!("(no agents connected)");
    }
    // SLURM clusters, one pool each (what sinfo says of the partition).
    // An older daemon without the route shows none.
    let pools = rt()?.block_on(c.cluster_pools()).unwrap_or_default();
    for p in &pools {
        match (&p.pool, &p.error) {
            (Some(pool), _) => {
                let types: Vec<String> = pool
                    .gpu_types
                    .iter()
                    .map(|(t, n)| format!("{n}x {t}"))
                    .collect();
                println!(
                    "{:<16} pool  partition {} ({}), {}: {} idle, {} allocated of {}",
                    short(&format!("slurm:{}", p.cluster), 16),
                    pool.partition,
                    pool.state,
                    if types.is_empty() {
                        "no GPUs".to_string()
                    } else {
                        types.join(", ")
                    },
                    pool.gpus_total.saturating_sub(pool.gpus_allocated),
                    pool.gpus_allocated,
                    pool.gpus_total
                );
            }
            (None, e) => println!(
                "{:<16} pool  {}",
                short(&format!("slurm:{}", p.cluster), 16),
                output::clean(e.as_deref().unwrap_or("no answer"))
            ),
        }
    }
    Ok(ExitCode::SUCCESS)
}

pub fn agents(ctx: &Ctx, d: &DaemonArgs) -> anyhow::Result<ExitCode> {
    let c = client(ctx, d)?;
    let agents = rt()?.block_on(c.agents())?;
    if ctx.json {
        output::json(&agents)?;
        return Ok(ExitCode::SUCCESS);
    }
    println!(
        "{:<16} {:<16} {:<6} {:>4} {:>9} {:>8} {:>10}  VERSION",
        "NAME", "HOST", "GPUS", "N", "CPU SLOTS", "RUNNING", "LAST SEEN"
    );
    for a in &agents {
        println!(
            "{:<16} {:<16} {:<6} {:>4} {:>9} {:>8} {:>10}  {}",
            short(&a.name, 16),
            short(&a.report.hostname, 16),
            a.report.gpu_source,
            a.report.gpus.len(),
            a.report.cpu_slots,
            a.report.attempts.len(),
            if a.alive {
                format!("{:.1}s ago", a.last_seen_ms as f64 / 1000.0)
            } else {
                "GONE".to_string()
            },
            a.report.version
        );
    }
    Ok(ExitCode::SUCCESS)
}
