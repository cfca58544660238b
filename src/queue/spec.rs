//! Job specs: what a user submits (a TOML or JSON file, or CLI flags), and
//! their validation. Every rejection names the field at fault.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// What a secret environment value reads as everywhere but on the agent.
pub const SECRET_REDACTED: &str = "<secret>";

/// How the job's process is started.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Command {
    /// An argv vector, run directly.
    Argv(Vec<String>),
    /// A shell string, run with `sh -c`.
    Shell(String),
}

/// A git source the agent checks out for the job.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GitSource {
    /// Repository URL or local path.
    pub repo: String,
    /// Branch, tag or commit.
    pub rev: String,
}

/// What GPUs the job needs; all of them on one host.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GpuRequest {
    /// Number of GPUs (0: a CPU job).
    #[serde(default)]
    pub count: u32,
    /// Minimum free memory per GPU, in MiB.
    #[serde(default)]
    pub min_memory_mib: u64,
    /// Model pattern: alternatives separated by `|`, matched as substrings
    /// case-insensitively (`"A100|H100"`).
    #[serde(default)]
    pub model: Option<String>,
}

impl GpuRequest {
    /// Whether a GPU model name matches the pattern (no pattern matches all).
    pub fn matches_model(&self, name: &str) -> bool {
        let name = name.to_ascii_lowercase();
        match &self.model {
            None => true,
            Some(p) => p
                .split('|')
                .map(|alt| alt.trim().to_ascii_lowercase())
                .any(|alt| !alt.is_empty() && name.contains(&alt)),
        }
    }
}

fn default_attempts() -> u32 {
    1
}

/// A job as submitted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JobSpec {
    /// A short human name.
    #[serde(default)]
    pub name: Option<String>,
    /// The project, for usage accounting.
    #[serde(default = "default_project")]
    pub project: String,
    /// The submitting user (the CLI fills in the OS user).
    #[serde(default)]
    pub user: Option<String>,
    /// The program.
    pub command: Command,
    /// Arguments rendered after the command as `--key value`, in key order.
    #[serde(default)]
    pub args: BTreeMap<String, String>,
    /// Extra environment variables.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Secret environment variables (API keys): given at submission and
    /// to the agent that runs an attempt, never returned by the API, shown
    /// or logged. Stored apart from the spec (`job_secrets`); a spec read
    /// back from the queue lists their names with the value
    /// [`SECRET_REDACTED`].
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub secret_env: BTreeMap<String, String>,
    /// Working directory on the agent (exclusive with `git`).
    #[serde(default)]
    pub workdir: Option<PathBuf>,
    /// Code to check out (exclusive with `workdir`).
    #[serde(default)]
    pub git: Option<GitSource>,
    /// GPUs needed.
    #[serde(default)]
    pub gpus: GpuRequest,
    /// Dataset inputs, `NAME@REF`, materialized on the agent.
    #[serde(default)]
    pub inputs: Vec<String>,
    /// Higher runs first.
    #[serde(default)]
    pub priority: i32,
    /// Attempts before the job is given up (failed or lost attempts retry).
    #[serde(default = "default_attempts")]
    pub max_attempts: u32,
    /// Wall-clock limit per attempt, in seconds.
    #[serde(default)]
    pub timeout_s: Option<u64>,
    /// Jobs that must succeed first.
    #[serde(default)]
    pub depends_on: Vec<i64>,
    /// Free-form labels.
    #[serde(default)]
    pub tags: Vec<String>,
    /// The job's idle policy (`crate::idle`): `off`, or
    /// `WINDOW:THRESHOLD:ACTION` (`30m:5%:stop`; parts may be left empty
    /// for the lab's or project's defaults). None: the defaults.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idle: Option<String>,
    /// How long after its start the idle policy arms at the latest
    /// (`15m`), unless the job uses its GPUs earlier.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idle_grace: Option<String>,
    /// Run on this SLURM cluster (`trainyard cluster add`) instead of the
    /// LAN's agents (`submit --on NAME`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on: Option<String>,
    /// Send the job to a cluster when the LAN has not placed it within a
    /// time (`submit --overflow-after 10m --overflow-to NAME`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub overflow: Option<Overflow>,
    /// Of a sweep: at most this many of its jobs run at once (`submit
    /// --sweep … --max-parallel K`): the LAN's scheduler starts no more,
    /// and on a cluster the sweep's job array is `--array 0-N%K`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_parallel: Option<u32>,
}

/// Where a LAN job goes when the LAN cannot place it in time.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Overflow {
    /// The cluster's name.
    pub cluster: String,
    /// Seconds queued on the LAN before it moves.
    pub after_s: u64,
}

fn default_project() -> String {
    "default".into()
}

/// A spec field that is not acceptable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid job spec: {field}: {reason}")]
pub struct SpecError {
    /// The field at fault (dotted path, e.g. `gpus.count`).
    pub field: String,
    /// What is wrong and what is expected.
    pub reason: String,
}

fn bad(field: &str, reason: impl Into<String>) -> SpecError {
    SpecError {
        field: field.into(),
        reason: reason.into(),
    }
}

/// The largest `gpus.min_memory_mib` accepted: the queue stores it as a
/// signed 64-bit SQLite integer.
pub const MAX_MEMORY_MIB: u64 = i64::MAX as u64;

/// Parse a memory size for `field` (the CLI's `--gpu-mem`) into MiB:
/// `40GB`, `40GiB`, `40G` (GiB) or `20000MiB`, `20000MB`, `20000` (MiB).
/// A size too large to count is refused, never wrapped around.
pub fn parse_memory_mib(field: &str, text: &str) -> Result<u64, SpecError> {
    let t = text.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let shape = || {
        bad(
            field,
            format!("{text:?} is not a size like 40GB or 20000MiB"),
        )
    };
    if num.is_empty() {
        return Err(shape());
    }
    let too_big = || {
        bad(
            field,
            format!("{text:?} is too large (at most {MAX_MEMORY_MIB} MiB)"),
        )
    };
    let n: u64 = num.parse().map_err(|e: std::num::ParseIntError| {
        if matches!(e.kind(), std::num::IntErrorKind::PosOverflow) {
            too_big()
        } else {
            shape()
        }
    })?;
    let factor = match unit.trim().to_ascii_lowercase().as_str() {
        "g" | "gb" | "gib" => 1024,
        "" | "m" | "mb" | "mib" => 1,
        _ => {
            return Err(bad(
                field,
                format!("unknown unit {unit:?} in {text:?} (use GB or MiB)"),
            ))
        }
    };
    match n.checked_mul(factor) {
        Some(mib) if mib <= MAX_MEMORY_MIB => Ok(mib),
        _ => Err(too_big()),
    }
}

/// The per-attempt time limit `d` given for `field` (the CLI's `--timeout`),
/// in whole seconds, under the same rule as a spec file's `timeout_s`: at
/// least one second (a shorter one is refused, not rounded up).
pub fn timeout_secs(field: &str, d: Duration) -> Result<u64, SpecError> {
    let secs = d.as_secs();
    check_timeout(field, secs)?;
    Ok(secs)
}

fn check_timeout(field: &str, secs: u64) -> Result<(), SpecError> {
    if secs == 0 {
        return Err(bad(field, "must be at least 1 second"));
    }
    Ok(())
}

/// A sweep grid: argument name → the values to try, one job per combination.
pub type SweepGrid = BTreeMap<String, Vec<String>>;

/// Parse sweep items `KEY=V1,V2,...` (the CLI's repeated `--sweep`) into a
/// grid. Errors name the key (`sweep.lr`): no `=`, an empty key, a key given
/// twice, or an empty value (`lr=`, `lr=1,,2`).
pub fn parse_sweep<'a>(items: impl IntoIterator<Item = &'a str>) -> Result<SweepGrid, SpecError> {
    let mut grid = SweepGrid::new();
    for item in items {
        let Some((k, v)) = item.split_once('=').filter(|(k, _)| !k.is_empty()) else {
            return Err(bad(
                "sweep",
                format!("expected KEY=V1,V2,..., got {item:?}"),
            ));
        };
        if grid.contains_key(k) {
            return Err(bad(
                &format!("sweep.{k}"),
                "given twice; list all its values in one KEY=V1,V2,...",
            ));
        }
        grid.insert(k.to_string(), v.split(',').map(str::to_string).collect());
    }
    check_grid(&grid)?;
    Ok(grid)
}

fn check_grid(grid: &SweepGrid) -> Result<(), SpecError> {
    for (k, values) in grid {
        if values.is_empty() || values.iter().any(|v| v.is_empty()) {
            return Err(bad(
                &format!("sweep.{k}"),
                "an empty value; give KEY=V1,V2,... with no empty values",
            ));
        }
    }
    Ok(())
}

impl JobSpec {
    /// Parse a spec file's text: TOML, or JSON when it starts with `{`.
    /// Errors name the field path (`gpus.count`, `inputs[1]`).
    pub fn parse(text: &str) -> Result<JobSpec, SpecError> {
        let spec: JobSpec = if text.trim_start().starts_with('{') {
            let mut de = serde_json::Deserializer::from_str(text);
            let spec: JobSpec = serde_path_to_error::deserialize(&mut de)
                .map_err(|e| bad(&json_field(&e), e.inner().to_string()))?;
            de.end().map_err(|e| bad("(json)", e.to_string()))?;
            spec
        } else {
            let de = toml::Deserializer::parse(text)
                .map_err(|e| bad("(toml)", toml_reason(text, &e)))?;
            serde_path_to_error::deserialize(de).map_err(|e| {
                let field = field_path(e.path(), e.inner().message());
                let field = if field.is_empty() {
                    "(toml)".into()
                } else {
                    field
                };
                bad(&field, toml_reason(text, e.inner()))
            })?
        };
        spec.validate()?;
        Ok(spec)
    }

    /// Check every field; the first problem found is returned.
    pub fn validate(&self) -> Result<(), SpecError> {
        match &self.command {
            Command::Argv(v) if v.is_empty() => return Err(bad("command", "empty argv")),
            Command::Argv(v) if v[0].trim().is_empty() => {
                return Err(bad("command[0]", "the program name is empty"))
            }
            Command::Shell(s) if s.trim().is_empty() => {
                return Err(bad("command", "empty shell command"))
            }
            _ => {}
        }
        if self.on.is_some() && self.overflow.is_some() {
            return Err(bad(
                "overflow",
                "a job sent to a cluster with `on` cannot also overflow to one",
            ));
        }
        if let Some(c) = &self.on {
            if c.trim().is_empty() {
                return Err(bad("on", "empty cluster name"));
            }
        }
        if self.max_parallel == Some(0) {
            return Err(bad(
                "max_parallel",
                "at least 1 (or leave it out: no limit)",
            ));
        }
        if let Some(o) = &self.overflow {
            if o.cluster.trim().is_empty() {
                return Err(bad("overflow.cluster", "empty cluster name"));
            }
        }
        if self.workdir.is_some() && self.git.is_some() {
            return Err(bad("workdir", "give either workdir or git, not both"));
        }
        if let Some(g) = &self.git {
            if g.repo.trim().is_empty() {
                return Err(bad("git.repo", "empty"));
            }
            if g.rev.trim().is_empty() {
                return Err(bad("git.rev", "empty (a branch, tag or commit)"));
            }
        }
        if self.gpus.count > 64 {
            return Err(bad("gpus.count", "more than 64 GPUs on one host"));
        }
        if self
            .gpus
            .model
            .as_deref()
            .is_some_and(|m| m.split('|').all(|a| a.trim().is_empty()))
        {
            return Err(bad("gpus.model", "empty pattern"));
        }
        if self.max_attempts == 0 {
            return Err(bad("max_attempts", "must be at least 1"));
        }
        if self.gpus.min_memory_mib > MAX_MEMORY_MIB {
            return Err(bad(
                "gpus.min_memory_mib",
                format!("at most {MAX_MEMORY_MIB} MiB"),
            ));
        }
        if let Some(t) = self.timeout_s {
            check_timeout("timeout_s", t)?;
        }
        if let Some(i) = &self.idle {
            crate::idle::Override::parse("idle", i).map_err(|e| bad("idle", e.reason))?;
        }
        if let Some(g) = &self.idle_grace {
            crate::idle::parse_grace("idle_grace", g).map_err(|e| bad("idle_grace", e.reason))?;
        }
        for (i, input) in self.inputs.iter().enumerate() {
            if let Err(e) = input.parse::<crate::store::DatasetRef>() {
                return Err(bad(&format!("inputs[{i}]"), e.to_string()));
            }
        }
        for k in self.args.keys() {
            if k.is_empty() || k.starts_with('-') || k.contains(char::is_whitespace) {
                return Err(bad(
                    &format!("args.{k}"),
                    "argument names are bare words (rendered as --name)",
                ));
            }
        }
        for k in self.env.keys() {
            if k.is_empty() || k.contains('=') || k.contains('\0') {
                return Err(bad(
                    &format!("env.{k}"),
                    "not a valid environment variable name",
                ));
            }
        }
        for (k, v) in &self.secret_env {
            if k.is_empty() || k.contains('=') || k.contains('\0') {
                return Err(bad(
                    &format!("secret_env.{k}"),
                    "not a valid environment variable name",
                ));
            }
            if self.env.contains_key(k) {
                return Err(bad(
                    &format!("secret_env.{k}"),
                    "also given in env: a variable is either secret or not",
                ));
            }
            if v.contains('\0') {
                return Err(bad(
                    &format!("secret_env.{k}"),
                    "the value contains a NUL byte",
                ));
            }
        }
        Ok(())
    }

    /// The full argv: the command plus `--key value` for each argument.
    /// A shell command gets the arguments appended, each shell-quoted.
    pub fn argv(&self) -> Vec<String> {
        let rendered = self
            .args
            .iter()
            .flat_map(|(k, v)| [format!("--{k}"), v.clone()]);
        match &self.command {
            Command::Argv(v) => v.iter().cloned().chain(rendered).collect(),
            Command::Shell(s) => {
                let mut line = s.clone();
                for a in rendered {
                    line.push(' ');
                    line.push_str(&shell_quote(&a));
                }
                vec!["sh".into(), "-c".into(), line]
            }
        }
    }

    /// Expand a sweep: one spec per combination of the given argument values
    /// (a grid), in a stable order. A key without values, or with an empty
    /// value, is refused naming it (`sweep.lr`).
    pub fn sweep(&self, grid: &SweepGrid) -> Result<Vec<JobSpec>, SpecError> {
        Ok(self.sweep_iter(grid)?.collect())
    }

    /// The jobs of a sweep one at a time, in the order of [`JobSpec::sweep`]
    /// (the grid's first key varies slowest), without holding them all: the
    /// daemon expands a 100,000-job sweep this way inside one transaction.
    pub fn sweep_iter<'a>(
        &'a self,
        grid: &'a SweepGrid,
    ) -> Result<impl Iterator<Item = JobSpec> + 'a, SpecError> {
        check_grid(grid)?;
        let total = sweep_len(grid);
        let axes: Vec<(&String, &Vec<String>)> = grid.iter().collect();
        Ok((0..total).map(move |mut i| {
            let mut s = self.clone();
            // Mixed-radix digits of i, the last key fastest.
            let mut picks = vec![0usize; axes.len()];
            for (d, (_, values)) in axes.iter().enumerate().rev() {
                picks[d] = (i % values.len() as u64) as usize;
                i /= values.len() as u64;
            }
            for ((k, values), p) in axes.iter().zip(picks) {
                s.args.insert((*k).clone(), values[p].clone());
            }
            s
        }))
    }
}

/// How many jobs a sweep grid makes (the product of its value counts; 1 for
/// an empty grid), saturating at `u64::MAX`.
pub fn sweep_len(grid: &SweepGrid) -> u64 {
    grid.values()
        .try_fold(1u64, |n, v| n.checked_mul(v.len() as u64))
        .unwrap_or(u64::MAX)
}

fn shell_quote(s: &str) -> String {
    if !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_./=:,@+".contains(&b))
    {
        s.to_string()
    } else {
        format!("'{}'", s.replace('\'', r"'\''"))
    }
}

/// The field a deserialization error is about: the path serde tracked
/// (`gpus.count`, `inputs[1]`), extended by the unknown or missing field the
/// message names, else (at the top level) the position.
fn field_path(path: &serde_path_to_error::Path, msg: &str) -> String {
    // "." is the top level, "?" a place serde could not name (a syntax error).
    let mut field = path.to_string();
    while field == "." || field == "?" || field.ends_with(".?") {
        let keep = field.len().saturating_sub(2);
        field.truncate(if field.len() <= 1 { 0 } else { keep });
    }
    for key in ["unknown field `", "missing field `"] {
        if let Some(name) = msg.split(key).nth(1).and_then(|r| r.split('`').next()) {
            // The path of an unknown field already ends with it.
            if field.rsplit('.').next() != Some(name) {
                if !field.is_empty() {
                    field.push('.');
                }
                field.push_str(name);
            }
        }
    }
    field
}

fn json_field(e: &serde_path_to_error::Error<serde_json::Error>) -> String {
    let field = field_path(e.path(), &e.inner().to_string());
    if field.is_empty() {
        let j = e.inner();
        format!("(json line {} column {})", j.line(), j.column())
    } else {
        field
    }
}

/// A TOML error's message with its line and column (TOML errors carry a byte
/// span; the full `Display` quotes the source, too long for one line).
fn toml_reason(text: &str, e: &toml::de::Error) -> String {
    let msg = e.message().trim();
    match e.span() {
        Some(span) => {
            let before = &text.as_bytes()[..span.start.min(text.len())];
            let line = before.iter().filter(|&&b| b == b'\n').count() + 1;
            let column = before.iter().rev().take_while(|&&b| b != b'\n').count() + 1;
            format!("{msg} at line {line} column {column}")
        }
        None => msg.to_string(),
    }
}

/// Parse an env file (`--env-file`): `KEY=VALUE` lines, optionally
/// prefixed by `export `, with `#` comments and blank lines; a value in
/// matching single or double quotes loses them. Errors name `origin:line`.
pub fn parse_env_file(text: &str, origin: &str) -> Result<Vec<(String, String)>, SpecError> {
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let line = line.strip_prefix("export ").unwrap_or(line).trim_start();
        let field = format!("{origin}:{}", i + 1);
        let Some((k, v)) = line.split_once('=') else {
            return Err(bad(&field, "expected KEY=VALUE"));
        };
        let k = k.trim();
        if k.is_empty() || !k.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
            return Err(bad(&field, format!("{k:?} is not a variable name")));
        }
        let v = v.trim();
        let v = match v.as_bytes() {
            [q @ (b'"' | b'\''), .., last] if q == last && v.len() >= 2 => &v[1..v.len() - 1],
            _ => v,
        };
        out.push((k.to_string(), v.to_string()));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    #[test]
    fn env_files_parse_and_errors_name_the_line() {
        let text = "# keys\nexport WANDB_API_KEY=abc\n\nHF_TOKEN='x y'\nEMPTY=\nQ=\"a=b\"\n";
        assert_eq!(
            super::parse_env_file(text, "s.env").unwrap(),
            vec![
                ("WANDB_API_KEY".to_string(), "abc".to_string()),
                ("HF_TOKEN".to_string(), "x y".to_string()),
                ("EMPTY".to_string(), String::new()),
                ("Q".to_string(), "a=b".to_string()),
            ]
        );
        let e = super::parse_env_file("A=1\nnot a pair\n", "s.env").unwrap_err();
        assert_eq!(e.field, "s.env:2");
        let e = super::parse_env_file("BAD-NAME=1\n", "s.env").unwrap_err();
        assert!(e.to_string().contains("s.env:1"), "{e}");
    }

    use super::*;

    #[test]
    fn parses_toml_and_json_and_renders_args() {
        let s = JobSpec::parse(
            r#"
            name = "train"
            command = ["python", "train.py"]
            args = { lr = "1e-3", epoch = "10" }
            gpus = { count = 2, min_memory_mib = 40000, model = "A100|H100" }
            inputs = ["imagenet@v2"]
            "#,
        )
        .unwrap();
        assert_eq!(
            s.argv(),
            ["python", "train.py", "--epoch", "10", "--lr", "1e-3"]
        );
        assert!(s.gpus.matches_model("NVIDIA A100-SXM4-80GB"));
        assert!(!s.gpus.matches_model("NVIDIA GeForce RTX 4090"));
        let j = JobSpec::parse(r#"{"command": "echo hi", "args": {"msg": "it's"}}"#).unwrap();
        assert_eq!(j.argv(), ["sh", "-c", "echo hi --msg 'it'\\''s'"]);
        assert_eq!(j.project, "default");
        assert_eq!(j.max_attempts, 1);
    }

    #[test]
    fn rejections_name_the_field() {
        let cases = [
            (r#"{"command": []}"#, "command"),
            (
                r#"{"command": ["x"], "gpus": {"count": 100}}"#,
                "gpus.count",
            ),
            (r#"{"command": ["x"], "max_attempts": 0}"#, "max_attempts"),
            (
                r#"{"command": ["x"], "inputs": ["ok@v1", "../bad"]}"#,
                "inputs[1]",
            ),
            (
                r#"{"command": ["x"], "workdir": "/a", "git": {"repo": "r", "rev": "main"}}"#,
                "workdir",
            ),
            (r#"{"command": ["x"], "gpu": {"count": 1}}"#, "gpu"),
            (r#"{"name": "x"}"#, "command"),
            (r#"{"command": ["x"], "args": {"--lr": "1"}}"#, "args.--lr"),
        ];
        for (text, field) in cases {
            let e = JobSpec::parse(text).unwrap_err();
            assert_eq!(e.field, field, "{text}: {e}");
        }
    }

    #[test]
    fn field_paths_are_named_in_json_and_toml() {
        let cases = [
            (
                r#"{"command": ["x"], "gpus": {"count": "two"}}"#,
                "gpus.count",
            ),
            (r#"{"command": ["x"], "gpus": {"cont": 1}}"#, "gpus.cont"),
            (r#"{"command": ["x"], "inputs": ["a", 1]}"#, "inputs[1]"),
            (r#"{"command": ["x"], "git": {"repo": "r"}}"#, "git.rev"),
            (r#"{"command": ["x"], "env": {"A": 1}}"#, "env.A"),
            (r#"{"command": 5}"#, "command"),
            (r#"{"command": ["x"], "timeout_s": -1}"#, "timeout_s"),
            (
                r#"{"command": ["x"], "gpus": {"min_memory_mib": 18446744073709551615}}"#,
                "gpus.min_memory_mib",
            ),
            ("command = [\"x\"]\n[gpus]\ncount = \"two\"\n", "gpus.count"),
            ("command = [\"x\"]\ntimeout_s = 0\n", "timeout_s"),
            ("command = [\"x\"]\n[git]\nrepo = \"r\"\n", "git.rev"),
        ];
        for (text, field) in cases {
            let e = JobSpec::parse(text).unwrap_err();
            assert_eq!(e.field, field, "{text}: {e}");
        }
        // A syntax error names the position.
        let e = JobSpec::parse("{\"command\": [\"x\"],,}").unwrap_err();
        assert!(e.field.starts_with("(json line 1 column"), "{e}");
        let e = JobSpec::parse("command = [\"x\"]\ngpus = {count = }\n").unwrap_err();
        assert_eq!(e.field, "(toml)", "{e}");
        assert!(e.reason.contains("line 2"), "{e}");
    }

    #[test]
    fn memory_sizes_never_wrap_around() {
        assert_eq!(parse_memory_mib("--gpu-mem", "40GB").unwrap(), 40 * 1024);
        assert_eq!(parse_memory_mib("--gpu-mem", "40GiB").unwrap(), 40 * 1024);
        assert_eq!(parse_memory_mib("--gpu-mem", "20000MiB").unwrap(), 20000);
        assert_eq!(parse_memory_mib("--gpu-mem", "20000").unwrap(), 20000);
        for text in [
            "18014398509481984GB",
            "9007199254740992GB",
            "99999999999999999999999",
            "9223372036854775808",
        ] {
            let e = parse_memory_mib("--gpu-mem", text).unwrap_err();
            assert_eq!(e.field, "--gpu-mem", "{text}: {e}");
            assert!(e.reason.contains("too large"), "{text}: {e}");
        }
        for text in ["", "GB", "40TB", "-1GB", "4 0GB"] {
            let e = parse_memory_mib("--gpu-mem", text).unwrap_err();
            assert_eq!(e.field, "--gpu-mem", "{text}: {e}");
        }
    }

    #[test]
    fn a_timeout_under_a_second_is_refused_from_flags_and_files_alike() {
        for d in [Duration::ZERO, Duration::from_millis(500)] {
            let e = timeout_secs("--timeout", d).unwrap_err();
            assert_eq!(e.field, "--timeout");
            assert_eq!(e.reason, "must be at least 1 second");
        }
        assert_eq!(
            timeout_secs("--timeout", Duration::from_secs(90)).unwrap(),
            90
        );
        let e = JobSpec::parse(r#"{"command": ["x"], "timeout_s": 0}"#).unwrap_err();
        assert_eq!(
            (e.field.as_str(), e.reason.as_str()),
            ("timeout_s", "must be at least 1 second")
        );
    }

    #[test]
    fn sweep_values_are_never_empty() {
        for (items, field) in [
            (vec!["lr="], "sweep.lr"),
            (vec!["lr=1,,2"], "sweep.lr"),
            (vec!["lr=1,"], "sweep.lr"),
            (vec!["lr=1", "lr=2"], "sweep.lr"),
            (vec!["=1"], "sweep"),
            (vec!["lr"], "sweep"),
        ] {
            let e = parse_sweep(items.iter().copied()).unwrap_err();
            assert_eq!(e.field, field, "{items:?}: {e}");
        }
        let grid = parse_sweep(["lr=1e-3,1e-4", "seed=1"]).unwrap();
        assert_eq!(grid["lr"], ["1e-3", "1e-4"]);
        let s = JobSpec::parse(r#"{"command": ["t"]}"#).unwrap();
        let mut empty = SweepGrid::new();
        empty.insert("lr".into(), vec![]);
        assert_eq!(s.sweep(&empty).unwrap_err().field, "sweep.lr");
    }

    #[test]
    fn sweep_is_a_grid() {
        let s = JobSpec::parse(r#"{"command": ["t"], "args": {"seed": "0"}}"#).unwrap();
        let mut grid = BTreeMap::new();
        grid.insert(
            "lr".to_string(),
            vec!["1e-3".to_string(), "1e-4".to_string()],
        );
        grid.insert(
            "seed".to_string(),
            vec!["1".to_string(), "2".to_string(), "3".to_string()],
        );
        let jobs = s.sweep(&grid).unwrap();
        assert_eq!(jobs.len(), 6);
        assert_eq!(jobs[5].args["lr"], "1e-4");
        assert_eq!(jobs[5].args["seed"], "3");
    }
}
