//! Pure translation between Trainyard and SLURM's command-line clients:
//! a job spec → `sbatch` options, a submit prelude and a batch script;
//! `squeue`, `sacct` and `sinfo` output → rows; SLURM job states →
//! what happens to the attempt. Nothing here runs a command or reads the
//! clock. The CLI's `--parsable` / `-O` / `-P` outputs are used: they are
//! the most stable contract across SLURM versions (the JSON shapes changed
//! between 22.05 and 23.11+).

use serde::{Deserialize, Serialize};

use super::runner::quote;
use super::Cluster;
use crate::queue::{Command, JobId, JobSpec};

/// The `squeue -O` fields the follower reads, `|`-separated. With `-r`
/// (one line per array task), `JobArrayID` is `BASE_TASK` for a task of a
/// job array (`123_4`, the id sacct and scancel take too) and the job id
/// for any other job.
pub const SQUEUE_FORMAT: &str =
    "JobArrayID:|,State:|,Reason:|,exit_code:|,StartTime:|,EndTime:|,NodeList:|,RestartCnt:|";

/// The most tasks in one job array: SLURM's default `MaxArraySize` (1001)
/// allows indices 0-1000; a larger sweep becomes several arrays.
pub const ARRAY_MAX: usize = 1000;

/// The `sacct --format` fields the follower reads (with `-P`).
pub const SACCT_FORMAT: &str = "JobID,State,ExitCode,ElapsedRaw,AllocTRES,Start,End";

/// What an attempt's SLURM job is submitted with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Submission {
    /// `sbatch` options (no secret, no shell expansion needed).
    pub options: Vec<String>,
    /// The shell prelude run through the runner: reads the secret values
    /// from stdin into the environment, makes the output directory, prints
    /// it, and execs `sbatch` with the options and the script on stdin.
    pub prelude: String,
    /// The batch script (never holds a secret value).
    pub script: String,
    /// The job name (`ty-JOB-ATTEMPT[-NAME]`), how a submission whose id
    /// was never recorded is found again.
    pub name: String,
    /// The output file's name inside the cluster directory.
    pub output_name: String,
    /// GPUs per attempt (for accounting).
    pub gpus: u32,
}

/// Why a spec cannot go to a cluster; names the field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("job {job} cannot run on cluster {cluster:?}: {field}: {reason}")]
pub struct TranslateError {
    /// The job.
    pub job: JobId,
    /// The cluster.
    pub cluster: String,
    /// The spec field at fault.
    pub field: String,
    /// Why, and what to do.
    pub reason: String,
}

/// The SLURM job name of an attempt: `ty-JOB-N`, then the spec's name
/// (letters, digits, `_`, `-`, `.`; at most 40 characters).
pub fn job_name(job: JobId, attempt: u32, spec: &JobSpec) -> String {
    let mut name = format!("ty-{job}-{attempt}");
    if let Some(n) = &spec.name {
        let clean: String = n
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.') {
                    c
                } else {
                    '_'
                }
            })
            .take(40)
            .collect();
        if !clean.is_empty() {
            name.push('-');
            name.push_str(&clean);
        }
    }
    name
}

/// The gres type for a model pattern through the cluster's map: the first
/// alternative of the pattern (`A100|H100`) that a map key names
/// (case-insensitively, either containing the other). `Ok(None)`: no
/// pattern, any GPU.
pub fn gres_type<'a>(cluster: &'a Cluster, model: Option<&str>) -> Result<Option<&'a str>, String> {
    let Some(pattern) = model else {
        return Ok(None);
    };
    for alt in pattern.split('|').map(|a| a.trim().to_ascii_lowercase()) {
        if alt.is_empty() {
            continue;
        }
        for (key, ty) in &cluster.gres_types {
            let k = key.to_ascii_lowercase();
            if k == alt || k.contains(&alt) || alt.contains(&k) {
                return Ok(Some(ty.as_str()));
            }
        }
    }
    Err(format!(
        "no gres type for the GPU model {pattern:?}; map it with `cluster add {} --gres-type \
         'MODEL=TYPE'` (known: {})",
        cluster.name,
        if cluster.gres_types.is_empty() {
            "none".to_string()
        } else {
            cluster
                .gres_types
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect::<Vec<_>>()
                .join(",")
        }
    ))
}

/// `--time` from a timeout: `H:MM:SS`, at least a minute (SLURM's unit).
pub fn time_limit(secs: u64) -> String {
    let secs = secs.max(60);
    format!("{}:{:02}:{:02}", secs / 3600, (secs / 60) % 60, secs % 60)
}

/// Translate attempt `attempt` of job `job` for `cluster`.
/// `secret_names` are the names of the job's secret variables (their values
/// go on stdin, see [`secret_stdin`]).
pub fn translate(
    cluster: &Cluster,
    job: JobId,
    attempt: u32,
    spec: &JobSpec,
    secret_names: &[String],
) -> Result<Submission, TranslateError> {
    let name = job_name(job, attempt, spec);
    let output_name = format!("ty-{job}-{attempt}.out");
    let options = options(cluster, job, spec, &name)?;
    let mut script = String::from("#!/bin/sh\n");
    script.push_str(&format!(
        "# Trainyard job {job}, attempt {attempt}, on cluster {}\n",
        cluster.name
    ));
    script.push_str(&body(cluster, job, attempt, spec)?);
    check_secret_names(cluster, job, secret_names)?;
    Ok(Submission {
        options,
        prelude: prelude(cluster, &output_name),
        script,
        name,
        output_name,
        gpus: spec.gpus.count,
    })
}

/// One SLURM job array for several jobs (the first attempts of a sweep's
/// jobs): array task `i` runs `members[i]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArraySubmission {
    /// What `sbatch` gets: the options (with `--array=0-N[%K]`), prelude
    /// and script; `output_name` holds SLURM's `%a` (the task index).
    pub submission: Submission,
    /// The jobs, in task order.
    pub members: Vec<JobId>,
}

impl ArraySubmission {
    /// The output file name of task `i` inside the cluster directory.
    pub fn output_of(&self, i: usize) -> String {
        self.submission.output_name.replace("%a", &i.to_string())
    }
}

/// Whether two jobs can share a job array: every `sbatch` option but the
/// job name is the same (GPUs, time limit, …). The secrets are compared by
/// the caller.
pub fn same_options(cluster: &Cluster, a: &JobSpec, b: &JobSpec) -> bool {
    let strip = |s: &JobSpec| {
        options(cluster, JobId(0), s, "")
            .map(|o| o.into_iter().skip(2).collect::<Vec<_>>())
            .ok()
    };
    matches!((strip(a), strip(b)), (Some(x), Some(y)) if x == y)
}

/// Translate the first attempts of `members` (jobs of one sweep with the
/// same options, see [`same_options`]) into one job array: `--array
/// 0-N[%K]` with K = `max_parallel`, a script whose `case` on
/// `SLURM_ARRAY_TASK_ID` runs member `i` for task `i` (its own args, env
/// and `TRAINYARD_JOB_ID`). At most [`ARRAY_MAX`] members.
pub fn translate_array(
    cluster: &Cluster,
    members: &[(JobId, &JobSpec)],
    max_parallel: Option<u32>,
    secret_names: &[String],
) -> Result<ArraySubmission, TranslateError> {
    let (first, spec) = *members.first().ok_or_else(|| TranslateError {
        job: JobId(0),
        cluster: cluster.name.clone(),
        field: "sweep".into(),
        reason: "an empty job array".into(),
    })?;
    let last = members.last().map_or(first, |m| m.0);
    if members.len() > ARRAY_MAX {
        return Err(TranslateError {
            job: first,
            cluster: cluster.name.clone(),
            field: "sweep".into(),
            reason: format!("{} jobs in one array (at most {ARRAY_MAX})", members.len()),
        });
    }
    let name = format!("ty-sweep-{first}-{last}");
    let output_name = format!("ty-sweep-{first}-{last}_%a.out");
    let mut options = options(cluster, first, spec, &name)?;
    options.push(match max_parallel {
        Some(k) => format!("--array=0-{}%{k}", members.len() - 1),
        None => format!("--array=0-{}", members.len() - 1),
    });
    let mut script = String::from("#!/bin/sh\n");
    script.push_str(&format!(
        "# Trainyard jobs {first}-{last} (one sweep, first attempts) as a job array on cluster {}\n\
         case \"${{SLURM_ARRAY_TASK_ID:-}}\" in\n",
        cluster.name
    ));
    for (i, (job, spec)) in members.iter().enumerate() {
        script.push_str(&format!("{i})\n"));
        for line in body(cluster, *job, 1, spec)?.lines() {
            script.push_str("  ");
            script.push_str(line);
            script.push('\n');
        }
        script.push_str("  ;;\n");
    }
    script.push_str(
        "*)\n  echo \"trainyard: no job for array task ${SLURM_ARRAY_TASK_ID:-(none)}\" >&2\n  exit 1\n  ;;\nesac\n",
    );
    check_secret_names(cluster, first, secret_names)?;
    Ok(ArraySubmission {
        submission: Submission {
            options,
            prelude: prelude(cluster, &output_name),
            script,
            name,
            output_name,
            gpus: spec.gpus.count,
        },
        members: members.iter().map(|m| m.0).collect(),
    })
}

/// The `sbatch` options of a job (`--parsable`, then `--job-name=NAME`,
/// then the rest, which jobs of one array share).
fn options(
    cluster: &Cluster,
    job: JobId,
    spec: &JobSpec,
    name: &str,
) -> Result<Vec<String>, TranslateError> {
    let err = |field: &str, reason: String| TranslateError {
        job,
        cluster: cluster.name.clone(),
        field: field.to_string(),
        reason,
    };
    for input in &spec.inputs {
        input
            .parse::<crate::store::DatasetRef>()
            .map_err(|e| err("inputs", format!("{input:?}: {e}")))?;
    }
    let mut options = vec![
        "--parsable".to_string(),
        format!("--job-name={name}"),
        // Trainyard requeues per the job's attempts, with a new attempt.
        "--no-requeue".to_string(),
        "--signal=B:USR1@90".to_string(),
        "--export=ALL".to_string(),
    ];
    if let Some(p) = &cluster.partition {
        options.push(format!("--partition={p}"));
    }
    if let Some(a) = &cluster.account {
        options.push(format!("--account={a}"));
    }
    if let Some(q) = &cluster.qos {
        options.push(format!("--qos={q}"));
    }
    if spec.gpus.count > 0 {
        let ty =
            gres_type(cluster, spec.gpus.model.as_deref()).map_err(|r| err("gpus.model", r))?;
        options.push(match ty {
            Some(t) => format!("--gres=gpu:{t}:{}", spec.gpus.count),
            None => format!("--gres=gpu:{}", spec.gpus.count),
        });
    }
    if let Some(t) = spec.timeout_s {
        options.push(format!("--time={}", time_limit(t)));
    }
    Ok(options)
}

/// The script lines that run one attempt: its environment, its working
/// directory or checkout, then `exec` of its command.
fn body(
    cluster: &Cluster,
    job: JobId,
    attempt: u32,
    spec: &JobSpec,
) -> Result<String, TranslateError> {
    let mut script = String::new();
    for (k, v) in &spec.env {
        if !valid_env_name(k) {
            return Err(TranslateError {
                job,
                cluster: cluster.name.clone(),
                field: "env".into(),
                reason: format!("{k:?} is not a variable name"),
            });
        }
        script.push_str(&format!("export {k}={}\n", quote(v)));
    }
    script.push_str(&format!(
        "export TRAINYARD_JOB_ID={job} TRAINYARD_ATTEMPT={attempt} TRAINYARD_CLUSTER={}\n",
        quote(&cluster.name)
    ));
    script.push_str(&inputs(cluster, job, attempt, spec)?);
    if let Some(w) = &spec.workdir {
        let w = w.to_string_lossy();
        script.push_str(&format!(
            "cd {} || {{ echo \"trainyard: cannot enter the job's workdir on the cluster\" >&2; exit 1; }}\n",
            quote(&w),
        ));
    } else if let Some(g) = &spec.git {
        script.push_str(&format!(
            "src=\"$SLURM_SUBMIT_DIR\"/src/{job}-{attempt}\n\
             rm -rf \"$src\"\n\
             git clone --quiet -- {repo} \"$src\" && cd \"$src\" && git checkout --quiet --detach {rev} \
             || {{ echo \"trainyard: cannot check out {rev} of {repo}\" >&2; exit 1; }}\n\
             export TRAINYARD_GIT_COMMIT=\"$(git rev-parse HEAD)\"\n\
             echo \"trainyard: running commit $TRAINYARD_GIT_COMMIT\" >&2\n",
            repo = quote(&g.repo),
            rev = quote(&g.rev),
        ));
    }
    let line = match &spec.command {
        Command::Shell(_) | Command::Argv(_) => spec
            .argv()
            .iter()
            .map(|a| quote(a))
            .collect::<Vec<_>>()
            .join(" "),
    };
    script.push_str(&format!("exec {line}\n"));
    Ok(script)
}

/// The script lines that stage a job's dataset inputs on the node, before
/// its command: the node's `trainyard` must be this version (formats and
/// flags may differ), then `trainyard data pull NAME@REF --out DIR` per
/// input, from the default remote of the cluster user's Trainyard home,
/// into `inputs/JOB-N/NAME` of the cluster directory. The job sees
/// `TRAINYARD_INPUTS` and `TRAINYARD_INPUT_<NAME>` as on an agent.
fn inputs(
    cluster: &Cluster,
    job: JobId,
    attempt: u32,
    spec: &JobSpec,
) -> Result<String, TranslateError> {
    if spec.inputs.is_empty() {
        return Ok(String::new());
    }
    let ours = env!("CARGO_PKG_VERSION");
    let mut s = format!(
        "ty_v=\"$(trainyard --version 2>/dev/null)\" || {{ echo \"trainyard: job {job} has dataset \
         inputs, but no trainyard binary is on the PATH of the cluster's batch jobs (see \
         docs/slurm.md)\" >&2; exit 1; }}\n\
         [ \"$ty_v\" = \"trainyard {ours}\" ] || {{ echo \"trainyard: the cluster has $ty_v; this job \
         was submitted by trainyard {ours}: install the same version there\" >&2; exit 1; }}\n\
         export TRAINYARD_INPUTS=\"$SLURM_SUBMIT_DIR\"/inputs/{job}-{attempt}\n\
         mkdir -p \"$TRAINYARD_INPUTS\"\n"
    );
    for input in &spec.inputs {
        let r: crate::store::DatasetRef = input.parse().map_err(|e| TranslateError {
            job,
            cluster: cluster.name.clone(),
            field: "inputs".into(),
            reason: format!("{input:?}: {e}"),
        })?;
        let var = r.env_var();
        s.push_str(&format!(
            "trainyard data pull {input} --out \"$TRAINYARD_INPUTS\"/{name} >&2 \
             || {{ echo \"trainyard: cannot pull dataset input \"{input_msg} >&2; exit 1; }}\n\
             export {var}=\"$TRAINYARD_INPUTS\"/{name}\n",
            input = quote(input),
            input_msg = quote(input),
            name = quote(&r.dataset),
        ));
    }
    Ok(s)
}

fn check_secret_names(
    cluster: &Cluster,
    job: JobId,
    secret_names: &[String],
) -> Result<(), TranslateError> {
    for n in secret_names {
        if !valid_env_name(n) {
            return Err(TranslateError {
                job,
                cluster: cluster.name.clone(),
                field: "secret_env".into(),
                reason: format!("{n:?} is not a variable name"),
            });
        }
    }
    Ok(())
}

/// The shell prelude of a submission: `$1` is how many secret variables
/// follow on stdin (name line, value line); the rest of stdin is the
/// script, read by sbatch.
fn prelude(cluster: &Cluster, output_name: &str) -> String {
    format!(
        "set -e\n\
         i=0\n\
         while [ \"$i\" -lt \"$1\" ]; do IFS= read -r k; IFS= read -r v; export \"$k=$v\"; i=$((i+1)); done\n\
         shift\n\
         d={dir}\n\
         mkdir -p \"$d\"\n\
         chmod 700 \"$d\"\n\
         cd \"$d\"\n\
         printf '%s\\n' \"$d\"\n\
         exec sbatch --output=\"$d\"/{out} \"$@\"\n",
        dir = cluster.dir_word(),
        out = quote(output_name),
    )
}

fn valid_env_name(k: &str) -> bool {
    !k.is_empty()
        && !k.as_bytes()[0].is_ascii_digit()
        && k.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

/// The stdin of a submission: each secret as a name line and a value line,
/// then the script. A value with a newline cannot be passed this way and is
/// refused, naming the variable.
pub fn secret_stdin(secrets: &[(String, String)], script: &str) -> Result<Vec<u8>, String> {
    let mut out = Vec::new();
    for (k, v) in secrets {
        if v.contains('\n') || v.contains('\r') {
            return Err(format!(
                "secret_env: {k}: a value with a line break cannot be passed to a cluster job"
            ));
        }
        out.extend_from_slice(k.as_bytes());
        out.push(b'\n');
        out.extend_from_slice(v.as_bytes());
        out.push(b'\n');
    }
    out.extend_from_slice(script.as_bytes());
    Ok(out)
}

/// The SLURM job id in `sbatch --parsable`'s answer (`ID` or
/// `ID;CLUSTER`), after the prelude's directory line. Returns (directory,
/// id).
pub fn parse_submit(out: &str) -> Option<(String, String)> {
    let mut lines = out.lines().map(str::trim).filter(|l| !l.is_empty());
    let dir = lines.next()?.to_string();
    let id = lines.next()?.split(';').next()?.trim().to_string();
    if id.is_empty() || !id.bytes().all(|b| b.is_ascii_digit() || b == b'_') {
        return None;
    }
    Some((dir, id))
}

/// One line of `squeue -O SQUEUE_FORMAT`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueueRow {
    /// The SLURM job id.
    pub id: String,
    /// Its state (`RUNNING`, `COMPLETED`, ...).
    pub state: String,
    /// Why it is in that state (`Resources`, `NonZeroExitCode`, ...).
    pub reason: String,
    /// The exit status: a wait status as squeue gives it (code << 8 |
    /// signal), or `code:signal` as sacct gives it, normalized to (code,
    /// signal).
    pub exit: Option<(i32, i32)>,
    /// Node list.
    pub nodes: String,
    /// Times SLURM restarted it.
    pub restarts: u32,
    /// Start and end times as SLURM prints them (`N/A` when unset).
    pub start: String,
    /// End time.
    pub end: String,
    /// GPUs allocated (sacct's AllocTRES), when known.
    pub alloc_gpus: Option<u32>,
    /// Elapsed seconds (sacct), when known.
    pub elapsed_s: Option<u64>,
}

/// Parse `squeue -h -O SQUEUE_FORMAT` output.
pub fn parse_squeue(out: &str) -> Vec<QueueRow> {
    out.lines()
        .filter(|l| !l.trim().is_empty())
        .filter_map(|l| {
            let f: Vec<&str> = l.split('|').map(str::trim).collect();
            if f.len() < 8 || f[0].is_empty() {
                return None;
            }
            let exit = f[3].parse::<i32>().ok().map(|w| (w >> 8, w & 0x7f));
            Some(QueueRow {
                id: f[0].to_string(),
                state: f[1].to_string(),
                reason: f[2].to_string(),
                exit,
                start: f[4].to_string(),
                end: f[5].to_string(),
                nodes: f[6].to_string(),
                restarts: f[7].parse().unwrap_or(0),
                alloc_gpus: None,
                elapsed_s: None,
            })
        })
        .collect()
}

/// Parse `sacct -X -P -n --format SACCT_FORMAT` output.
pub fn parse_sacct(out: &str) -> Vec<QueueRow> {
    out.lines()
        .filter(|l| !l.trim().is_empty())
        .filter_map(|l| {
            let f: Vec<&str> = l.split('|').map(str::trim).collect();
            if f.len() < 7 || f[0].is_empty() {
                return None;
            }
            let exit = f[2]
                .split_once(':')
                .and_then(|(c, s)| Some((c.parse::<i32>().ok()?, s.parse::<i32>().ok()?)));
            Some(QueueRow {
                id: f[0].to_string(),
                // "CANCELLED by 1000"
                state: f[1].split_whitespace().next().unwrap_or("").to_string(),
                reason: String::new(),
                exit,
                elapsed_s: f[3].parse().ok(),
                alloc_gpus: Some(tres_gpus(f[4])),
                start: f[5].to_string(),
                end: f[6].to_string(),
                nodes: String::new(),
                restarts: 0,
            })
        })
        .collect()
}

/// The environment `sacct` runs with: times as seconds since the epoch
/// (`Start`, `End`), whatever the cluster's time zone.
pub const SACCT_TIME_FORMAT: &str = "SLURM_TIME_FORMAT=%s";

/// A time `sacct` printed under [`SACCT_TIME_FORMAT`] (seconds since the
/// epoch) in ns; `None` for `Unknown`, `None`, `N/A`.
pub fn epoch_ns(s: &str) -> Option<i64> {
    s.trim()
        .parse::<i64>()
        .ok()
        .filter(|t| *t > 0)
        .map(|t| t.saturating_mul(1_000_000_000))
}

/// The GPUs in a TRES list (`cpu=1,gres/gpu=2,gres/gpu:a100=2,node=1`):
/// the untyped `gres/gpu` count, else the sum of typed ones.
pub fn tres_gpus(tres: &str) -> u32 {
    let mut plain = None;
    let mut typed = 0u32;
    for item in tres.split(',') {
        let Some((k, v)) = item.split_once('=') else {
            continue;
        };
        let n: u32 = v.trim().parse().unwrap_or(0);
        if k == "gres/gpu" {
            plain = Some(n);
        } else if k.starts_with("gres/gpu:") {
            typed += n;
        }
    }
    plain.unwrap_or(typed)
}

/// What a SLURM state means for the attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Not started yet (pending, configuring, requeued).
    Waiting,
    /// Its batch script runs (or is completing).
    Running,
    /// Ended: the exit code (`None`: killed by a signal or never ran) and
    /// the error that explains a failure (`None` with code 0: success).
    Ended {
        /// Exit code of the batch script.
        exit_code: Option<i32>,
        /// Why it did not succeed, when the exit code does not say it all.
        error: Option<String>,
    },
    /// Cancelled in SLURM.
    Cancelled,
}

/// Map a SLURM job state (and the row's exit status) to an outcome.
/// Failure states carry an error that names the SLURM job and the state,
/// so `show` says what SLURM said.
pub fn outcome(row: &QueueRow) -> Outcome {
    let code = row.exit.map(|(c, s)| if s != 0 { None } else { Some(c) });
    let ended = |error: Option<String>| Outcome::Ended {
        exit_code: code.flatten(),
        error,
    };
    let id = &row.id;
    match row.state.as_str() {
        "PENDING" | "CONFIGURING" | "REQUEUED" | "REQUEUE_HOLD" | "REQUEUE_FED"
        | "RESV_DEL_HOLD" | "RESIZING" | "POWER_UP_NODE" => Outcome::Waiting,
        "RUNNING" | "COMPLETING" | "SUSPENDED" | "STOPPED" | "SIGNALING" | "STAGE_OUT" => {
            Outcome::Running
        }
        "COMPLETED" => ended(None),
        "FAILED" => match code.flatten() {
            Some(c) if c != 0 => ended(None),
            _ => ended(Some(format!(
                "SLURM job {id} FAILED{}",
                reason_suffix(&row.reason)
            ))),
        },
        "CANCELLED" => Outcome::Cancelled,
        "TIMEOUT" => ended(Some(format!(
            "SLURM job {id} reached its time limit (TIMEOUT)"
        ))),
        "NODE_FAIL" => ended(Some(format!(
            "SLURM job {id} lost its node (NODE_FAIL){}",
            nodes_suffix(&row.nodes)
        ))),
        "PREEMPTED" => ended(Some(format!("SLURM job {id} was preempted (PREEMPTED)"))),
        "OUT_OF_MEMORY" => ended(Some(format!(
            "SLURM job {id} ran out of memory (OUT_OF_MEMORY)"
        ))),
        "BOOT_FAIL" | "DEADLINE" | "SPECIAL_EXIT" | "REVOKED" => ended(Some(format!(
            "SLURM job {id} ended {}{}",
            row.state,
            reason_suffix(&row.reason)
        ))),
        // A state this build does not know: wait and say so, never guess.
        _ => Outcome::Waiting,
    }
}

fn reason_suffix(r: &str) -> String {
    if r.is_empty() || r == "None" {
        String::new()
    } else {
        format!(" ({r})")
    }
}

fn nodes_suffix(n: &str) -> String {
    if n.is_empty() {
        String::new()
    } else {
        format!(" on {n}")
    }
}

/// A cluster as a GPU pool (`trainyard gpus`, `GET /gpus`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pool {
    /// The partition.
    pub partition: String,
    /// Partition availability (`up`, `down`, ...).
    pub state: String,
    /// Nodes in it.
    pub nodes: u32,
    /// GPUs per gres type (`a100`, or `gpu` when untyped).
    pub gpu_types: Vec<(String, u32)>,
    /// All GPUs.
    pub gpus_total: u32,
    /// GPUs allocated to jobs.
    pub gpus_allocated: u32,
}

/// The `sinfo` arguments of [`parse_sinfo`]: one line per node and
/// partition.
pub fn sinfo_args(c: &Cluster) -> Vec<String> {
    let mut a = vec![
        "-h".to_string(),
        "-N".to_string(),
        "-O".to_string(),
        "Partition:|,Available:|,NodeHost:|,StateLong:|,Gres:|,GresUsed:|".to_string(),
    ];
    if let Some(p) = &c.partition {
        a.push(format!("--partition={p}"));
    }
    a
}

/// Sum `sinfo` node lines into the pool of `partition` (the default one,
/// marked `*`, when `None`).
pub fn parse_sinfo(out: &str, partition: Option<&str>) -> Result<Pool, String> {
    let mut pool = Pool::default();
    let mut seen_nodes = std::collections::BTreeSet::new();
    let mut types: std::collections::BTreeMap<String, u32> = Default::default();
    let mut found = false;
    for l in out.lines().filter(|l| !l.trim().is_empty()) {
        let f: Vec<&str> = l.split('|').map(str::trim).collect();
        if f.len() < 6 {
            continue;
        }
        let (name, default) = match f[0].strip_suffix('*') {
            Some(n) => (n, true),
            None => (f[0], false),
        };
        let wanted = match partition {
            Some(p) => p == name,
            None => default,
        };
        if !wanted {
            continue;
        }
        found = true;
        pool.partition = name.to_string();
        pool.state = f[1].to_string();
        if !seen_nodes.insert(f[2].to_string()) {
            continue;
        }
        pool.nodes += 1;
        // Down or drained nodes' GPUs are not offered.
        let node_state = f[3].to_ascii_lowercase();
        let usable = !(node_state.starts_with("down")
            || node_state.starts_with("drain")
            || node_state.starts_with("fail")
            || node_state.contains("not_responding"));
        for (ty, n) in gres_gpus(f[4]) {
            if usable {
                *types.entry(ty).or_default() += n;
                pool.gpus_total += n;
            }
        }
        if usable {
            pool.gpus_allocated += gres_gpus(f[5]).iter().map(|(_, n)| n).sum::<u32>();
        }
    }
    if !found {
        return Err(match partition {
            Some(p) => format!("no partition {p:?} on the cluster (see `sinfo`)"),
            None => "the cluster has no default partition; give --partition".into(),
        });
    }
    pool.gpu_types = types.into_iter().collect();
    Ok(pool)
}

/// GPUs in a gres list (`gpu:a100:4(S:0-1),gpu:h100:2`, `gpu:4`,
/// `gpu:a100:1(IDX:0)`): (type, count) per item, `gpu` when untyped.
pub fn gres_gpus(gres: &str) -> Vec<(String, u32)> {
    let mut out = Vec::new();
    // Commas also appear inside parentheses: split only outside them.
    let mut depth = 0;
    let mut item = String::new();
    let mut items = Vec::new();
    for ch in gres.chars() {
        match ch {
            '(' => depth += 1,
            ')' => depth -= 1,
            ',' if depth == 0 => {
                items.push(std::mem::take(&mut item));
                continue;
            }
            _ => {}
        }
        item.push(ch);
    }
    items.push(item);
    for it in items {
        let it = it.split('(').next().unwrap_or("").trim();
        let parts: Vec<&str> = it.split(':').collect();
        if parts.first() != Some(&"gpu") {
            continue;
        }
        match parts.as_slice() {
            [_, n] => {
                if let Ok(n) = n.parse() {
                    out.push(("gpu".to_string(), n));
                }
            }
            [_, ty, n] => {
                if let Ok(n) = n.parse() {
                    out.push((ty.to_string(), n));
                }
            }
            _ => {}
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn cluster() -> Cluster {
        Cluster {
            name: "hpc".into(),
            partition: Some("gpu".into()),
            account: Some("lab-a".into()),
            qos: None,
            ssh: None,
            gres_types: BTreeMap::from([
                ("A100".to_string(), "a100".to_string()),
                ("H100".to_string(), "h100".to_string()),
            ]),
            dir: None,
        }
    }

    fn spec(json: &str) -> JobSpec {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn a_spec_becomes_options_and_a_script_without_secrets() {
        let s = spec(
            r#"{"name": "train big", "command": ["python", "train.py"], "args": {"lr": "1e-3"},
                "env": {"MODE": "a b"}, "secret_env": {"WANDB_API_KEY": "sekrit"},
                "gpus": {"count": 2, "model": "H100"}, "timeout_s": 5400, "workdir": "/scratch/x"}"#,
        );
        let sub = translate(&cluster(), JobId(12), 3, &s, &["WANDB_API_KEY".into()]).unwrap();
        assert_eq!(
            sub.options,
            vec![
                "--parsable",
                "--job-name=ty-12-3-train_big",
                "--no-requeue",
                "--signal=B:USR1@90",
                "--export=ALL",
                "--partition=gpu",
                "--account=lab-a",
                "--gres=gpu:h100:2",
                "--time=1:30:00",
            ]
        );
        assert!(sub.script.starts_with("#!/bin/sh\n"));
        assert!(sub.script.contains("export MODE='a b'\n"));
        assert!(sub.script.contains("cd /scratch/x ||"));
        assert!(sub.script.contains("exec python train.py --lr 1e-3\n"));
        assert!(!sub.script.contains("sekrit"));
        assert!(!sub.prelude.contains("sekrit"));
        assert!(sub.prelude.contains("\"$HOME\"/.trainyard-slurm/hpc"));
        let stdin =
            secret_stdin(&[("WANDB_API_KEY".into(), "sekrit".into())], &sub.script).unwrap();
        assert!(stdin.starts_with(b"WANDB_API_KEY\nsekrit\n#!/bin/sh\n"));
        assert!(secret_stdin(&[("K".into(), "a\nb".into())], "").is_err());
    }

    #[test]
    fn gpu_models_map_through_gres_types() {
        let c = cluster();
        assert_eq!(gres_type(&c, None), Ok(None));
        assert_eq!(gres_type(&c, Some("a100")), Ok(Some("a100")));
        assert_eq!(gres_type(&c, Some("V100|H100")), Ok(Some("h100")));
        let e = gres_type(&c, Some("V100")).unwrap_err();
        assert!(e.contains("A100=a100,H100=h100"), "{e}");
        let s = spec(r#"{"command": ["x"], "gpus": {"count": 1, "model": "V100"}}"#);
        let e = translate(&c, JobId(1), 1, &s, &[]).unwrap_err();
        assert_eq!(e.field, "gpus.model");
        let s = spec(r#"{"command": ["x"], "gpus": {"count": 4}}"#);
        let sub = translate(&c, JobId(1), 1, &s, &[]).unwrap();
        assert!(sub.options.contains(&"--gres=gpu:4".to_string()));
    }

    #[test]
    fn a_sweep_becomes_one_array_whose_tasks_run_their_own_job() {
        let c = cluster();
        let a = spec(
            r#"{"command": ["python", "t.py"], "args": {"lr": "1"}, "env": {"E": "x"},
                         "gpus": {"count": 1, "model": "A100"}, "timeout_s": 120}"#,
        );
        let b = spec(
            r#"{"command": ["python", "t.py"], "args": {"lr": "2"}, "env": {"E": "x"},
                         "gpus": {"count": 1, "model": "A100"}, "timeout_s": 120}"#,
        );
        assert!(same_options(&c, &a, &b));
        let other = spec(r#"{"command": ["python", "t.py"], "gpus": {"count": 2}}"#);
        assert!(!same_options(&c, &a, &other));
        let arr = translate_array(&c, &[(JobId(7), &a), (JobId(8), &b)], Some(1), &[]).unwrap();
        assert_eq!(arr.members, vec![JobId(7), JobId(8)]);
        let o = &arr.submission.options;
        assert_eq!(o[1], "--job-name=ty-sweep-7-8");
        assert!(o.contains(&"--array=0-1%1".to_string()), "{o:?}");
        assert!(o.contains(&"--gres=gpu:a100:1".to_string()), "{o:?}");
        let s = &arr.submission.script;
        assert!(
            s.contains("case \"${SLURM_ARRAY_TASK_ID:-}\" in\n0)\n"),
            "{s}"
        );
        let t0 = s.find("0)\n").unwrap();
        let t1 = s.find("1)\n").unwrap();
        assert!(s[t0..t1].contains("TRAINYARD_JOB_ID=7 ") && s[t0..t1].contains("--lr 1\n"));
        assert!(s[t1..].contains("TRAINYARD_JOB_ID=8 ") && s[t1..].contains("--lr 2\n"));
        assert!(s.contains("*)\n"), "an unknown task fails: {s}");
        assert_eq!(arr.output_of(1), "ty-sweep-7-8_1.out");
        assert!(arr.submission.prelude.contains("ty-sweep-7-8_%a.out"));
        let none = translate_array(&c, &[(JobId(7), &a), (JobId(8), &b)], None, &[]).unwrap();
        assert!(none.submission.options.contains(&"--array=0-1".to_string()));
    }

    #[test]
    fn dataset_inputs_are_pulled_on_the_node_by_the_same_trainyard() {
        let s = spec(r#"{"command": ["train"], "inputs": ["imagenet@v2", "coco"]}"#);
        let sub = translate(&cluster(), JobId(4), 2, &s, &[]).unwrap();
        let v = env!("CARGO_PKG_VERSION");
        let sc = &sub.script;
        assert!(
            sc.contains(&format!("[ \"$ty_v\" = \"trainyard {v}\" ]")),
            "{sc}"
        );
        assert!(sc.contains("trainyard data pull imagenet@v2 --out \"$TRAINYARD_INPUTS\"/imagenet"));
        assert!(sc.contains("export TRAINYARD_INPUT_COCO=\"$TRAINYARD_INPUTS\"/coco\n"));
        assert!(sc.contains("/inputs/4-2\n"), "{sc}");
        // Pulled before the command runs.
        assert!(sc.find("data pull coco").unwrap() < sc.find("exec train").unwrap());
        let bad = spec(r#"{"command": ["train"], "inputs": ["no such@x"]}"#);
        let e = translate(&cluster(), JobId(4), 1, &bad, &[]).unwrap_err();
        assert_eq!(e.field, "inputs");
    }

    #[test]
    fn time_limits_round_up_to_a_minute() {
        assert_eq!(time_limit(5), "0:01:00");
        assert_eq!(time_limit(3600 * 30 + 61), "30:01:01");
    }

    #[test]
    fn git_sources_are_checked_out_on_the_cluster() {
        let s = spec(r#"{"command": ["make"], "git": {"repo": "https://x/y.git", "rev": "v1"}}"#);
        let sub = translate(&cluster(), JobId(5), 1, &s, &[]).unwrap();
        assert!(sub
            .script
            .contains("git clone --quiet -- https://x/y.git \"$src\""));
        assert!(sub.script.contains("git checkout --quiet --detach v1"));
        assert!(sub.script.contains("TRAINYARD_GIT_COMMIT"));
    }

    #[test]
    fn squeue_and_sacct_rows_parse() {
        let rows = parse_squeue(
            "1|COMPLETED|None|0|2026-12-07T03:39:41|2026-12-07T03:39:42|vm|0|\n\
             2|FAILED|NonZeroExitCode|768|x|y|vm|0|\n\
             3|PENDING|Resources|0|N/A|N/A||0|\n",
        );
        assert_eq!(rows.len(), 3);
        assert_eq!(rows[1].exit, Some((3, 0)));
        assert_eq!(
            outcome(&rows[0]),
            Outcome::Ended {
                exit_code: Some(0),
                error: None
            }
        );
        assert_eq!(
            outcome(&rows[1]),
            Outcome::Ended {
                exit_code: Some(3),
                error: None
            }
        );
        assert_eq!(outcome(&rows[2]), Outcome::Waiting);
        let rows = parse_sacct(
            "7|CANCELLED by 0|0:15|12|billing=1,cpu=1,gres/gpu=2,node=1|a|b\n\
             8|TIMEOUT|0:0|60|cpu=1,gres/gpu:a100=1|a|b\n",
        );
        assert_eq!(rows[0].state, "CANCELLED");
        assert_eq!(rows[0].alloc_gpus, Some(2));
        assert_eq!(rows[1].alloc_gpus, Some(1));
        assert_eq!(outcome(&rows[0]), Outcome::Cancelled);
        match outcome(&rows[1]) {
            Outcome::Ended { error: Some(e), .. } => assert!(e.contains("time limit")),
            o => panic!("{o:?}"),
        }
    }

    #[test]
    fn every_named_state_maps() {
        let row = |s: &str| QueueRow {
            id: "9".into(),
            state: s.into(),
            reason: String::new(),
            exit: Some((0, 9)),
            nodes: "n1".into(),
            restarts: 0,
            start: String::new(),
            end: String::new(),
            alloc_gpus: None,
            elapsed_s: None,
        };
        assert_eq!(outcome(&row("PENDING")), Outcome::Waiting);
        assert_eq!(outcome(&row("RUNNING")), Outcome::Running);
        assert_eq!(outcome(&row("CANCELLED")), Outcome::Cancelled);
        for (s, word) in [
            ("NODE_FAIL", "node"),
            ("PREEMPTED", "preempted"),
            ("OUT_OF_MEMORY", "memory"),
            ("TIMEOUT", "time limit"),
            ("FAILED", "FAILED"),
        ] {
            match outcome(&row(s)) {
                Outcome::Ended {
                    exit_code: None,
                    error: Some(e),
                } => assert!(e.contains(word), "{s}: {e}"),
                o => panic!("{s}: {o:?}"),
            }
        }
        // An unknown state is never taken for an end.
        assert_eq!(outcome(&row("SOMETHING_NEW")), Outcome::Waiting);
    }

    #[test]
    fn submit_answers_parse() {
        assert_eq!(
            parse_submit("/home/a/.trainyard-slurm/hpc\n42\n"),
            Some(("/home/a/.trainyard-slurm/hpc".into(), "42".into()))
        );
        assert_eq!(
            parse_submit("/d\n42;hpc\n"),
            Some(("/d".into(), "42".into()))
        );
        assert_eq!(parse_submit("/d\nSubmitted batch job 4\n"), None);
    }

    #[test]
    fn sinfo_lines_sum_into_a_pool() {
        let out = "debug*|up|vm|mixed|gpu:a100:4(S:0),gpu:h100:2|gpu:a100:1(IDX:0),gpu:h100:0(IDX:N/A)|\n\
                   debug*|up|vm2|down*|gpu:a100:4|gpu:a100:0|\n\
                   other|up|vm3|idle|gpu:8|gpu:0|\n";
        let p = parse_sinfo(out, None).unwrap();
        assert_eq!(p.partition, "debug");
        assert_eq!(p.nodes, 2);
        assert_eq!(
            p.gpu_types,
            vec![("a100".to_string(), 4), ("h100".to_string(), 2)]
        );
        assert_eq!((p.gpus_total, p.gpus_allocated), (6, 1));
        let p = parse_sinfo(out, Some("other")).unwrap();
        assert_eq!(p.gpu_types, vec![("gpu".to_string(), 8)]);
        assert!(parse_sinfo(out, Some("nope")).unwrap_err().contains("nope"));
    }
}
